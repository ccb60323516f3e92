/* memblock: the control socket, control=PATH.
 *
 * A Unix stream socket at PATH, one JSON-RPC 2.0 object per line each
 * way; rpc.c answers each line.  Design notes and invariants:
 *
 *   K1  The socket file is only ever ours and never wider than 0600.
 *       control_check (from .get_ready, before nbdkit forks) refuses an
 *       existing PATH that is not a socket or that a live server
 *       answers on, removes a stale one (connect says ECONNREFUSED),
 *       then binds with the socket's inode already 0600 (fchmod before
 *       bind, so the file never has a wider mode, and no process-wide
 *       umask is touched) and checks the result.  Binding before the
 *       fork, as nbdkit does with -U, means the socket is there when
 *       nbdkit returns or runs --run, and a failure to bind stops the
 *       start-up with an error instead of a daemon exiting alone.
 *       control_stop removes PATH only if it is still the socket we
 *       made (same device and inode).
 *   K2  One accept thread, started from .after_fork (threads do not
 *       survive the fork), hands each client to a thread of its own, so
 *       a slow client or one in job_wait holds up nobody else.  At most
 *       CONTROL_MAX_CLIENTS are served at once; one more gets an EBUSY
 *       error line and is closed.  Every thread runs with all signals
 *       blocked, so nbdkit's main thread takes SIGTERM and SIGINT.
 *   K3  Only a peer whose uid (SO_PEERCRED) is 0 or our euid is served;
 *       another gets an EACCES error line and is closed.  The 0600 mode
 *       already keeps others out: this is belt and braces.
 *   K4  A line is at most CONTROL_MAX_LINE bytes without its newline: a
 *       longer one gets a -32600 error and the client is dropped, so a
 *       client's buffer never exceeds CONTROL_MAX_LINE + 1 bytes.  A
 *       client that goes away mid-line is dropped without a reply.
 *       Anything else in a complete line is rpc.c's to answer, and the
 *       connection goes on.
 *   K5  Client threads are joinable and joined (by the accept thread
 *       when it needs their slot, and by control_stop), so no code of
 *       this file runs after control_stop returns and nbdkit unloads the
 *       plugin.  A client thread closes its own socket, under
 *       control_lock, so control_stop's shutdown never hits a reused
 *       descriptor.  control_stop waits for a client blocked in
 *       job_wait until its job ends (jobs are not cancelled).
 *
 * control_lock guards the slots only; the data path never sees it.
 */

#define _GNU_SOURCE             /* struct ucred */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "config.h"
#include "control.h"
#include "rpc.h"

/* Clients served at once. */
#define CONTROL_MAX_CLIENTS 16

/* Longest request line, without its newline. */
#define CONTROL_MAX_LINE ((size_t) 1 << 20)

/* Bytes read at a time, and a client buffer's first size. */
#define CONTROL_READ_CHUNK ((size_t) 64 << 10)

/* One client's thread. */
struct control_client {
  bool used;                    /* thread started and not yet joined */
  bool done;                    /* thread ended: join it */
  int fd;                       /* its socket, -1 once the thread closed it */
  pthread_t thread;
};

/* The listening socket, -1 if none. */
static int control_fd = -1;

/* A pipe control_stop writes to wake the accept thread. */
static int control_wake[2] = { -1, -1 };

/* Whether config.control is a socket we made, and which (K1). */
static bool control_bound;
static dev_t control_dev;
static ino_t control_ino;

/* The accept thread, if started. */
static bool control_running;
static pthread_t control_thread;

/* Guards control_clients. */
static pthread_mutex_t control_lock = PTHREAD_MUTEX_INITIALIZER;
static struct control_client control_clients[CONTROL_MAX_CLIENTS];

/* Fill a Unix socket address for path (config.c checked its length). */
static void
control_addr (const char *path, struct sockaddr_un *addr)
{
  memset (addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  snprintf (addr->sun_path, sizeof addr->sun_path, "%s", path);
}

/* Whether a server listens on the socket at path: 1 yes, 0 no (stale),
 * -1 after an error line.
 */
static int
control_probe (const char *path)
{
  struct sockaddr_un addr;
  int fd, r;

  fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd == -1) {
    nbdkit_error ("control=%s: socket: %m", path);
    return -1;
  }
  control_addr (path, &addr);
  r = connect (fd, (struct sockaddr *) &addr, sizeof addr);
  if (r == 0 || errno == EAGAIN || errno == EINPROGRESS)
    r = 1;                      /* accepted, or its backlog is full */
  else if (errno == ECONNREFUSED)
    r = 0;
  else {
    nbdkit_error ("control=%s: connect: %m", path);
    r = -1;
  }
  close (fd);
  return r;
}

/* Make PATH free for our socket, or say why not (K1). */
static int
control_clear (const char *path)
{
  struct stat st;
  int r;

  if (lstat (path, &st) == -1) {
    if (errno == ENOENT)
      return 0;
    nbdkit_error ("control=%s: %m", path);
    return -1;
  }
  if (!S_ISSOCK (st.st_mode)) {
    nbdkit_error ("control=%s: exists and is not a socket; remove it or "
                  "choose another path", path);
    return -1;
  }
  r = control_probe (path);
  if (r == -1)
    return -1;
  if (r == 1) {
    nbdkit_error ("control=%s: another server is listening on this socket",
                  path);
    return -1;
  }
  if (unlink (path) == -1 && errno != ENOENT) {
    nbdkit_error ("control=%s: cannot remove the stale socket: %m", path);
    return -1;
  }
  nbdkit_debug ("control=%s: removed a stale socket", path);
  return 0;
}

/* Bind and listen on path, mode 0600 from the start (K1). */
static int
control_bind (const char *path)
{
  struct sockaddr_un addr;
  struct stat st;
  int fd;

  fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd == -1) {
    nbdkit_error ("control=%s: socket: %m", path);
    return -1;
  }
  /* Linux gives the new file the socket inode's mode, less the umask. */
  if (fchmod (fd, 0600) == -1) {
    nbdkit_error ("control=%s: fchmod: %m", path);
    close (fd);
    return -1;
  }
  control_addr (path, &addr);
  if (bind (fd, (struct sockaddr *) &addr, sizeof addr) == -1) {
    nbdkit_error ("control=%s: bind: %m", path);
    close (fd);
    return -1;
  }
  if (lstat (path, &st) == -1) {
    nbdkit_error ("control=%s: lstat: %m", path);
    close (fd);
    return -1;
  }
  if ((st.st_mode & 0177) != 0) {
    nbdkit_error ("control=%s: the socket was made with mode %03o, not "
                  "0600", path, (unsigned) (st.st_mode & 0777));
    unlink (path);
    close (fd);
    return -1;
  }
  if (listen (fd, SOMAXCONN) == -1) {
    nbdkit_error ("control=%s: listen: %m", path);
    unlink (path);
    close (fd);
    return -1;
  }
  control_fd = fd;
  control_bound = true;
  control_dev = st.st_dev;
  control_ino = st.st_ino;
  return 0;
}

/* Check config.control and claim it. */
int
control_check (void)
{
  if (config.control == NULL)
    return 0;
  if (control_clear (config.control) == -1 ||
      control_bind (config.control) == -1)
    return -1;
  nbdkit_debug ("control=%s: listening", config.control);
  return 0;
}

/* Close the listening socket and remove its file if still ours. */
static void
control_unbind (void)
{
  struct stat st;

  if (control_fd >= 0) {
    close (control_fd);
    control_fd = -1;
  }
  if (control_bound) {
    if (lstat (config.control, &st) == 0 &&
        st.st_dev == control_dev && st.st_ino == control_ino &&
        unlink (config.control) == -1)
      nbdkit_error ("control=%s: unlink: %m", config.control);
    control_bound = false;
  }
}

/* Send all of buf, len bytes; -1 if the client went away. */
static int
control_send (int fd, const char *buf, size_t len)
{
  ssize_t n;

  while (len > 0) {
    n = send (fd, buf, len, MSG_NOSIGNAL);
    if (n == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    buf += n;
    len -= n;
  }
  return 0;
}

/* Send one reply line (reply has no newline; it is freed). */
static int
control_send_line (int fd, char *reply)
{
  size_t len = strlen (reply);
  char *line = realloc (reply, len + 2);
  int r;

  if (line == NULL) {
    free (reply);
    return -1;
  }
  line[len] = '\n';
  line[len + 1] = '\0';
  r = control_send (fd, line, len + 1);
  free (line);
  return r;
}

/* Send an error line with id null to a client and close it. */
static void
control_refuse (int fd, int code, const char *message, int errnum)
{
  char *line = rpc_error_line (code, message, errnum);

  if (line != NULL)
    control_send_line (fd, line);
  close (fd);
}

/* Answer the complete lines in buf[0..*used) and keep the partial one
 * at the front.  *scanned bytes were already searched for a newline.
 * -1 to drop the client.
 */
static int
control_lines (int fd, char *buf, size_t *used, size_t *scanned)
{
  size_t start = 0;
  char *nl, *reply;

  while ((nl = memchr (buf + *scanned, '\n', *used - *scanned)) != NULL) {
    *nl = '\0';
    if (rpc_handle (buf + start, nl - (buf + start), &reply) == -1) {
      nbdkit_error ("control: cannot answer a request: %m");
      return -1;
    }
    if (reply != NULL && control_send_line (fd, reply) == -1)
      return -1;
    start = nl + 1 - buf;
    *scanned = start;
  }
  memmove (buf, buf + start, *used - start);
  *used -= start;
  *scanned = *used;
  return 0;
}

/* A client's thread: read lines, answer each (K4). */
static void *
control_client_thread (void *arg)
{
  struct control_client *c = arg;
  int fd = c->fd;
  size_t used = 0, scanned = 0, cap = CONTROL_READ_CHUNK, want;
  char *buf = malloc (cap), *p;
  ssize_t n;

  if (buf == NULL)
    nbdkit_error ("control: malloc: %m");
  while (buf != NULL) {
    if (used == cap) {
      if (cap == CONTROL_MAX_LINE + 1) {
        nbdkit_debug ("control: request line over %zu bytes: client dropped",
                      CONTROL_MAX_LINE);
        p = rpc_error_line (RPC_INVALID_REQUEST,
                            "request line over 1 MiB", 0);
        if (p != NULL)
          control_send_line (fd, p);
        break;
      }
      want = cap * 2 < CONTROL_MAX_LINE + 1 ? cap * 2 : CONTROL_MAX_LINE + 1;
      if ((p = realloc (buf, want)) == NULL) {
        nbdkit_error ("control: realloc: %m");
        break;
      }
      buf = p;
      cap = want;
    }
    n = recv (fd, buf + used, cap - used, 0);
    if (n == -1 && errno == EINTR)
      continue;
    if (n <= 0) {
      if (used > 0)
        nbdkit_debug ("control: client left in the middle of a request");
      break;
    }
    used += n;
    if (control_lines (fd, buf, &used, &scanned) == -1)
      break;
  }
  free (buf);

  pthread_mutex_lock (&control_lock);
  close (fd);
  c->fd = -1;
  c->done = true;
  pthread_mutex_unlock (&control_lock);
  return NULL;
}

/* Join the client threads that ended; call with control_lock held (a
 * done thread no longer needs it).
 */
static void
control_reap (void)
{
  size_t i;

  for (i = 0; i < CONTROL_MAX_CLIENTS; i++) {
    if (control_clients[i].used && control_clients[i].done) {
      pthread_join (control_clients[i].thread, NULL);
      control_clients[i].used = false;
    }
  }
}

/* Serve a new client on a thread of its own, or refuse it (K2, K3). */
static void
control_admit (int fd)
{
  struct ucred cred;
  socklen_t len = sizeof cred;
  struct control_client *c = NULL;
  size_t i;
  int err;

  if (getsockopt (fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == -1) {
    nbdkit_debug ("control: SO_PEERCRED: %m");
    close (fd);
    return;
  }
  if (cred.uid != 0 && cred.uid != geteuid ()) {
    nbdkit_debug ("control: refused a client of uid %u", (unsigned) cred.uid);
    control_refuse (fd, RPC_REFUSED, "control socket: permission denied: "
                    "only root and the server's user may manage it", EACCES);
    return;
  }

  pthread_mutex_lock (&control_lock);
  control_reap ();
  for (i = 0; i < CONTROL_MAX_CLIENTS && c == NULL; i++)
    if (!control_clients[i].used)
      c = &control_clients[i];
  if (c == NULL) {
    pthread_mutex_unlock (&control_lock);
    nbdkit_debug ("control: refused a client: %d already connected",
                  CONTROL_MAX_CLIENTS);
    control_refuse (fd, RPC_REFUSED, "control socket: too many clients "
                    "connected; try again later", EBUSY);
    return;
  }
  c->used = true;
  c->done = false;
  c->fd = fd;
  /* This thread blocks every signal; the new one inherits that (K2). */
  err = pthread_create (&c->thread, NULL, control_client_thread, c);
  if (err != 0)
    c->used = false;
  pthread_mutex_unlock (&control_lock);
  if (err != 0) {
    errno = err;
    nbdkit_error ("control: pthread_create: %m");
    control_refuse (fd, RPC_INTERNAL_ERROR, "control socket: cannot start "
                    "a thread for this client", err);
    return;
  }
  nbdkit_debug ("control: client connected (uid %u)", (unsigned) cred.uid);
}

/* The accept thread: until control_stop writes to control_wake. */
static void *
control_accept_thread (void *arg)
{
  struct pollfd fds[2] = {
    { .fd = control_fd, .events = POLLIN },
    { .fd = control_wake[0], .events = POLLIN },
  };
  bool logged = false;
  int fd;

  (void) arg;
  for (;;) {
    if (poll (fds, 2, -1) == -1) {
      if (errno == EINTR)
        continue;
      nbdkit_error ("control: poll: %m");
      break;
    }
    if (fds[1].revents != 0)
      break;
    if (fds[0].revents == 0)
      continue;
    fd = accept4 (control_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd == -1) {
      if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED)
        continue;
      /* Out of descriptors or memory: say so once, and wait a little
       * instead of spinning; control_stop still wakes us.
       */
      if (!logged)
        nbdkit_error ("control=%s: accept: %m", config.control);
      logged = true;
      if (poll (&fds[1], 1, 100) > 0)
        break;
      continue;
    }
    logged = false;
    control_admit (fd);
  }
  return NULL;
}

/* Start the accept thread, with every signal blocked (K2). */
int
control_start (void)
{
  sigset_t all, old;
  int err;

  if (control_fd == -1)
    return 0;
  if (pipe2 (control_wake, O_CLOEXEC) == -1) {
    nbdkit_error ("control=%s: pipe2: %m", config.control);
    control_unbind ();
    return -1;
  }
  sigfillset (&all);
  pthread_sigmask (SIG_SETMASK, &all, &old);
  err = pthread_create (&control_thread, NULL, control_accept_thread, NULL);
  pthread_sigmask (SIG_SETMASK, &old, NULL);
  if (err != 0) {
    errno = err;
    nbdkit_error ("control=%s: pthread_create: %m", config.control);
    control_unbind ();
    return -1;
  }
  control_running = true;
  return 0;
}

/* Stop serving: the accept thread, the socket file, then every client
 * (K5).
 */
void
control_stop (void)
{
  size_t i;

  if (control_running) {
    if (write (control_wake[1], "", 1) == -1)
      nbdkit_error ("control: write: %m");
    pthread_join (control_thread, NULL);
    control_running = false;
  }
  for (i = 0; i < 2; i++) {
    if (control_wake[i] >= 0)
      close (control_wake[i]);
    control_wake[i] = -1;
  }
  control_unbind ();

  /* No new client now: wake the ones still reading or writing. */
  pthread_mutex_lock (&control_lock);
  for (i = 0; i < CONTROL_MAX_CLIENTS; i++)
    if (control_clients[i].used && control_clients[i].fd >= 0)
      shutdown (control_clients[i].fd, SHUT_RDWR);
  pthread_mutex_unlock (&control_lock);
  for (i = 0; i < CONTROL_MAX_CLIENTS; i++) {
    if (control_clients[i].used) {
      pthread_join (control_clients[i].thread, NULL);
      control_clients[i].used = false;
    }
  }
}
