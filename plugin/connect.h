/* memblock: connect strings, NAME[:ro|:rw][:size=SIZE][:from=SOURCE]
 * [:temp][:volatile][:compress=C][:format=FMT][:file=PATH|:persist=PATH|:nbd=URI].
 */
#ifndef MEMBLOCK_CONNECT_H
#define MEMBLOCK_CONNECT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CONNECT_NAME_MAX 256
#define CONNECT_FORMAT_MAX 16

/* Where a connect string came from, for error messages. */
enum connect_origin {
  CONNECT_CONFIG,               /* a name=... parameter */
  CONNECT_CLIENT,               /* an NBD export name */
};

struct connect {
  char name[CONNECT_NAME_MAX + 1];
  int readonly;                 /* -1 not given, 0 :rw, 1 :ro */
  int64_t size;                 /* -1 not given */
  char from[CONNECT_NAME_MAX + 1];  /* source of a clone; "" if none */
  bool temp;                    /* freed when its last connection closes */
  bool vol;                     /* :volatile: a volatile write cache */
  int compress;                 /* -1 not given, else an enum codec */
  char *file;                   /* image to load (config only), or NULL */
  char *persist;                /* load at start, save at exit (config
                                   only; absolute), or NULL */
  char format[CONNECT_FORMAT_MAX + 1];  /* :file='s format; "" raw */
  char *uri;                    /* NBD server to load from (config
                                   only), or NULL */
};

extern int connect_parse (const char *str, enum connect_origin origin,
                          struct connect *c);
extern bool connect_creates (const struct connect *c);
extern void connect_free (struct connect *c);
extern int connect_check_format (const char *format, const char *what);
extern const char *connect_quote (const char *s, char *buf, size_t len);

/* Enough room for connect_quote of any string. */
#define CONNECT_QUOTE_MAX 96

#endif /* MEMBLOCK_CONNECT_H */
