/* memblock: loading a device from a raw image file. */
#ifndef MEMBLOCK_IMAGE_H
#define MEMBLOCK_IMAGE_H

#include <stdatomic.h>
#include <stdint.h>

#include "store.h"

extern int image_open (const char *path, const char *what, uint64_t *size);
extern int image_load (int fd, uint64_t size, struct store *s,
                       const char *what, _Atomic uint64_t *done);

#endif /* MEMBLOCK_IMAGE_H */
