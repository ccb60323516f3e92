/* memblock: the control socket (control=PATH), a Unix socket speaking
 * JSON-RPC 2.0 one line at a time (rpc.c).
 */
#ifndef MEMBLOCK_CONTROL_H
#define MEMBLOCK_CONTROL_H

/* From .get_ready, before nbdkit forks: check config.control (an
 * existing file that is not a stale socket is an error; a stale socket
 * is removed) and claim it: bind and listen, mode 0600, so that it is
 * there as soon as nbdkit has started.  0, or -1 after one error line.
 */
extern int control_check (void);

/* From .after_fork: start the thread serving the socket.  0 or -1. */
extern int control_start (void);

/* From .unload: close and remove the socket, end its threads.  Safe to
 * call whether or not control_check or control_start ran.
 */
extern void control_stop (void);

#endif /* MEMBLOCK_CONTROL_H */
