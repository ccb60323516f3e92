/* memblock: a device with a volatile write cache that loses power on
 * command (:volatile, the control socket's power_cut).
 */
#ifndef MEMBLOCK_VOLATILE_H
#define MEMBLOCK_VOLATILE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct device;

/* What a power cut keeps of the unflushed writes. */
enum vol_keep { VOL_KEEP_NONE, VOL_KEEP_ALL, VOL_KEEP_RANDOM };

/* How to cut: now, or when the after_writes-th write from now
 * completes (0: now).
 */
struct vol_cut {
  enum vol_keep keep;
  uint64_t seed;
  unsigned unit;                /* 512 or 4096 */
  uint64_t after_writes;
};

/* What a cut did. */
struct vol_result {
  uint64_t writes_kept, writes_partial, writes_lost;
  uint64_t bytes_kept, bytes_lost;
  uint64_t writes_untracked;    /* past the log's limit: not classified */
};

/* A volatile device's counts, for power_cut_status and device_list. */
struct vol_status {
  uint64_t unflushed_writes, unflushed_bytes;
  uint64_t writes, flushes, cuts;
  uint64_t spare_bytes;         /* pages the cache keeps across flushes */
  bool armed;
  uint64_t armed_after;         /* writes still to come before the cut */
  enum vol_keep armed_keep;
  struct vol_result last;       /* what the last cut did */
};

struct vol;

extern struct vol *vol_create (void);
extern void vol_destroy (struct vol *v);
extern int vol_attach (struct device *dev);
extern unsigned vol_generation (const struct vol *v);
extern bool vol_refused (const struct vol *v, unsigned generation);
extern int vol_wrote (struct device *dev, const void *buf, uint64_t count,
                      uint64_t offset, int op, bool fua, bool *cut_now);
extern void vol_cut_armed (struct device *dev);
extern int vol_flush (struct device *dev, unsigned generation);
extern int vol_power_cut (struct device *dev, const struct vol_cut *cut,
                          struct vol_result *res);
extern void vol_status (const struct device *dev, struct vol_status *st);
extern void vol_stop (void);
extern const char *vol_keep_name (enum vol_keep k);
extern int vol_keep_parse (const char *s, enum vol_keep *k);

/* The kinds of write vol_wrote is told of. */
enum { VOL_WRITE, VOL_ZERO, VOL_TRIM };

#endif /* MEMBLOCK_VOLATILE_H */
