/* memblock: the devices declared with name=, made at start-up.
 *
 * The .get_ready callback makes every declared device, and loads its
 * :file= image, before nbdkit accepts a connection.  A clone needs its
 * source made first, but sources may be declared in any order: the
 * devices are made in as many passes as the longest chain of clones
 * needs, then put in the table in the order of declaration (the first
 * one is the default export).  A source never declared, or a cycle of
 * clones, stops nbdkit with one line naming it.
 *
 * A device with :persist=PATH is loaded from PATH like :file= when
 * PATH exists, and starts empty (with :size=) when it does not; either
 * way PATH's directory must exist and be writable, since the device is
 * saved there at exit (save.c), and an existing PATH must be a regular
 * file.  The path is kept in the device (dev->persist) for that save.
 */

#include <errno.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "config.h"
#include "declare.h"
#include "source.h"
#include "volatile.h"
#include "registry.h"

/* The index of the declared device called name, or -1. */
static ssize_t
declare_index (const char *name)
{
  for (size_t i = 0; i < config.ndevices; i++)
    if (strcmp (config.devices[i].name, name) == 0)
      return i;
  return -1;
}

/* Whether the source chain from c comes back to c: print the cycle
 * into buf if so.
 */
static bool
declare_cycle (const struct connect *c, char *buf, size_t len)
{
  const struct connect *at = c;
  size_t o = 0, steps;

  for (steps = 0; steps <= config.ndevices; steps++) {
    ssize_t next = at->from[0] ? declare_index (at->from) : -1;

    o += snprintf (buf + o, o < len ? len - o : 0, "%s%s",
                   steps ? " -> " : "", at->name);
    if (next == -1)
      return false;
    if (&config.devices[next] == c) {
      snprintf (buf + o, o < len ? len - o : 0, " -> %s", c->name);
      return true;
    }
    at = &config.devices[next];
  }
  return false;
}

/* Check c's :persist= path at start-up: its directory must be there
 * and writable, and the path, if it exists, a regular file.  1 if the
 * path exists (load it), 0 if not (start empty), -1 after logging why.
 */
static int
declare_persist (const struct connect *c, const char *what)
{
  char path[4096];
  const char *dir;
  struct stat st;
  int exists;

  if (snprintf (path, sizeof path, "%s", c->persist) >= (int) sizeof path) {
    nbdkit_error ("%s: persist=%s: the path is too long", what, c->persist);
    return -1;
  }
  if (stat (c->persist, &st) == 0) {
    if (!S_ISREG (st.st_mode)) {
      nbdkit_error ("%s: persist=%s: %s", what, c->persist,
                    S_ISDIR (st.st_mode) ? "is a directory, not an image"
                    : "is not a regular file");
      return -1;
    }
    exists = 1;
  }
  else if (errno == ENOENT)
    exists = 0;
  else {
    nbdkit_error ("%s: persist=%s: %m", what, c->persist);
    return -1;
  }
  dir = dirname (path);          /* the path is absolute (connect.c) */
  /* A missing directory or a file on the way failed the stat above. */
  if (access (dir, W_OK | X_OK) == -1) {
    nbdkit_error ("%s: persist=%s: the directory %s, where the device is "
                  "saved at exit: %m", what, c->persist, dir);
    return -1;
  }
  return exists;
}

/* Make declared device i into made[i] if its source (if any) is made:
 * 1 if made, 0 if its source is not made yet, -1 after logging an error.
 */
static int
declare_device (size_t i, struct device **made)
{
  const struct connect *c = &config.devices[i];
  char what[CONNECT_NAME_MAX + 16];
  struct device *src = NULL;
  uint64_t size = c->size == -1 ? config.size : (uint64_t) c->size;
  uint64_t file_size = 0;
  struct source_spec spec = { .file = c->file, .uri = c->uri,
                              .format = c->format[0] ? c->format : NULL };
  struct source *image = NULL;

  snprintf (what, sizeof what, "name=%s", c->name);
  if (c->from[0]) {
    ssize_t j = declare_index (c->from);

    if (j == -1 || (src = made[j]) == NULL)
      return 0;
    if (!src->readonly) {
      nbdkit_error ("%s: from=%s: the source of a clone must be read-only "
                    "(declare it name=%s:ro)", what, c->from, c->from);
      return -1;
    }
  }
  if (c->persist) {
    switch (declare_persist (c, what)) {
    case -1: return -1;
    case 1: spec.file = c->persist; break;
    }
  }
  if (spec.file || spec.uri) {
    if ((image = source_open (&spec, what, &file_size)) == NULL)
      return -1;
    if (c->size != -1 && file_size > size) {
      nbdkit_error ("%s: the image (%" PRIu64 " bytes) is larger than "
                    ":size=%" PRIu64, what, file_size, size);
      source_close (image);
      return -1;
    }
    if (c->size == -1)
      size = file_size;
  }
  made[i] = registry_make (c->name, size, c->readonly == 1, c->temp, src,
                           c->compress);
  if (made[i] == NULL) {
    source_close (image);
    return -1;
  }
  if (c->persist && (made[i]->persist = strdup (c->persist)) == NULL) {
    nbdkit_error ("%s: strdup: %m", what);
    source_close (image);
    registry_destroy (made[i]);
    made[i] = NULL;
    return -1;
  }
  if ((image && source_load (image, made[i]->store, what, NULL) == -1) ||
      (c->vol && vol_attach (made[i]) == -1)) {
    registry_destroy (made[i]);
    made[i] = NULL;
    return -1;
  }
  return 1;
}

/* Log why the declared devices left unmade in made could not be made:
 * a source never declared, or a cycle.
 */
static void
declare_explain (struct device **made)
{
  char cycle[512];
  size_t i;

  /* With every source declared, following sources through what is left
   * must come round to one of them.
   */
  for (i = 0; i < config.ndevices; i++) {
    const struct connect *c = &config.devices[i];

    if (!made[i] && declare_index (c->from) == -1) {
      nbdkit_error ("name=%s: from=%s: no such device (declare it with "
                    "name=%s:ro)", c->name, c->from, c->from);
      return;
    }
  }
  for (i = 0; i < config.ndevices; i++) {
    const struct connect *c = &config.devices[i];

    if (!made[i] && declare_cycle (c, cycle, sizeof cycle)) {
      nbdkit_error ("name=%s: from=%s: clones cannot form a cycle (%s)",
                    c->name, c->from, cycle);
      return;
    }
  }
}

/* Make the declared devices and put them in the table (the second half
 * of the .get_ready callback's work, after registry_init); on failure
 * the table stays empty.
 */
int
declare_devices (void)
{
  struct device **made = calloc (config.ndevices, sizeof *made);
  size_t *order = calloc (config.ndevices, sizeof *order);
  size_t i, left = config.ndevices, before;
  int r = -1;

  if (made == NULL || order == NULL) {
    nbdkit_error ("calloc: %m");
    goto out;
  }
  do {
    before = left;
    for (i = 0; i < config.ndevices; i++) {
      int got;

      if (made[i])
        continue;
      if ((got = declare_device (i, made)) == -1)
        goto out;
      if (got == 1)
        order[config.ndevices - left--] = i;
    }
  } while (left > 0 && left < before);
  if (left > 0) {
    declare_explain (made);
    goto out;
  }
  for (i = 0; i < config.ndevices; i++)
    registry_add (made[i]);
  r = 0;
 out:
  /* On failure, clones before their sources: the reverse of making. */
  for (i = config.ndevices - left; r == -1 && i-- > 0; )
    registry_destroy (made[order[i]]);
  free (order);
  free (made);
  return r;
}
