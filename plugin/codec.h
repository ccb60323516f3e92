/* memblock: compressed units of a store (zstd, lz4, same-filled, raw). */
#ifndef MEMBLOCK_CODEC_H
#define MEMBLOCK_CODEC_H

#include <stddef.h>

/* How a store keeps its data. */
enum codec {
  CODEC_NONE,                   /* raw pages in the store's arena */
  CODEC_ZSTD,
  CODEC_LZ4,
};

/* Bytes in a compressed unit: four 4 KiB pages. */
#define CODEC_UNIT ((size_t) 16384)

extern const char *codec_name (enum codec c);
extern int codec_parse (const char *s, enum codec *c);
extern const void *codec_pack (enum codec c, const unsigned char *in);
extern int codec_unpack (const void *blob, unsigned char *out);
extern size_t codec_size (const void *blob);
extern size_t codec_max_size (void);

#endif /* MEMBLOCK_CODEC_H */
