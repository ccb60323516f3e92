/* memblock: where a device's first data comes from: a raw image file
 * (image.c), an image in a format qemu reads, or an NBD server.
 */
#ifndef MEMBLOCK_SOURCE_H
#define MEMBLOCK_SOURCE_H

#include <stdatomic.h>
#include <stdint.h>

#include "store.h"

/* What to load: file (with format, NULL or "raw" for a raw file), or
 * uri; at most one of file and uri.
 */
struct source_spec {
  const char *file;
  const char *format;
  const char *uri;
};

struct source;

extern struct source *source_open (const struct source_spec *spec,
                                   const char *what, uint64_t *size);
extern int source_load (struct source *src, struct store *s,
                        const char *what, _Atomic uint64_t *done);
extern void source_close (struct source *src);

#endif /* MEMBLOCK_SOURCE_H */
