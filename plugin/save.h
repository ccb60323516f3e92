/* memblock: saving a device's data to a file as a sparse raw image. */
#ifndef MEMBLOCK_SAVE_H
#define MEMBLOCK_SAVE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "manage.h"

/* Refuse a save of device name (as given) to path before any work:
 * a path that is not absolute, too long, or (without overwrite) exists.
 * 0, or -1 with err filled.
 */
extern int save_check (const char *name, const char *path, bool overwrite,
                       struct manage_err *err);

/* Write the frozen view f to path as a sparse raw image of f->size
 * bytes, through path.tmp, fsync and rename, so that path is never a
 * partial image.  *done_bytes counts the bytes of the device dealt with
 * so far (for progress); *data_bytes (if not NULL) gets the bytes of
 * data written.  0, or -1 with err filled and nothing left behind.
 */
extern int save_image (const struct manage_frozen *f, const char *path,
                       bool overwrite, _Atomic uint64_t *done_bytes,
                       uint64_t *data_bytes, struct manage_err *err);

/* At unload: wait for running save jobs, then save every device with a
 * :persist= path there, logging what was saved or why not.
 */
extern void save_persist_all (void);

#endif /* MEMBLOCK_SAVE_H */
