/* memblock: JSON-RPC 2.0 requests of the control socket (json-c). */
#ifndef MEMBLOCK_RPC_H
#define MEMBLOCK_RPC_H

#include <stddef.h>

/* Error codes: JSON-RPC's own, and the one memblock uses for a call
 * that manage.c or job.c refused.
 */
#define RPC_PARSE_ERROR      (-32700)
#define RPC_INVALID_REQUEST  (-32600)
#define RPC_METHOD_NOT_FOUND (-32601)
#define RPC_INVALID_PARAMS   (-32602)
#define RPC_INTERNAL_ERROR   (-32603)
#define RPC_REFUSED          (-32000)

/* Answer one request line: line[len] must be '\0' and the line holds
 * no newline.  *reply receives the reply as one line of JSON, without
 * its newline, to be freed by the caller; NULL if none is due (a
 * notification).  Returns 0, or -1 with errno if no reply could be
 * made (out of memory).
 */
extern int rpc_handle (const char *line, size_t len, char **reply);

/* An error reply with id null and, if errnum is not 0, data.errno
 * (for what control.c refuses itself); NULL if out of memory.
 */
extern char *rpc_error_line (int code, const char *message, int errnum);

/* The name of an errno value ("ENOENT"), for data.errno. */
extern const char *rpc_errno_name (int errnum);

#endif /* MEMBLOCK_RPC_H */
