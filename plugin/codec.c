/* memblock: compressed units of a store (zstd, lz4, same-filled, raw).
 *
 * A unit of CODEC_UNIT bytes is packed into one blob, the smallest form
 * that holds it:
 *
 *   same   every 8-byte word of the unit is the same (as in zram's "same
 *          pages"): the blob holds that word;
 *   zstd   zstd level 1, or
 *   lz4    lz4 (the store's codec chooses which);
 *   raw    the unit as it is, when compression would save less than an
 *          eighth: data that does not compress is never grown.
 *
 * Compression contexts are per thread, made on first use and freed when
 * the thread exits: no lock, and no context is made per call.  A blob
 * is packed into the thread's own buffer; the caller copies it where it
 * keeps it (pool.c).
 */

#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <lz4.h>
#include <zstd.h>

#include "codec.h"

#define CODEC_ZSTD_LEVEL 1
/* Compressed output larger than this is kept raw instead. */
#define CODEC_MAX_PACKED (CODEC_UNIT - CODEC_UNIT / 8)
/* Room for compressed output: at least both codecs' bound for a unit. */
#define CODEC_OUT (CODEC_UNIT + 1024)

enum blob_kind { BLOB_SAME, BLOB_RAW, BLOB_ZSTD, BLOB_LZ4 };

struct blob {
  uint32_t len;                 /* bytes of data[] */
  uint8_t kind;                 /* enum blob_kind */
  unsigned char data[];
};

/* One thread's contexts, and room for the blob it packed last. */
struct codec_thread {
  ZSTD_CCtx *zc;
  ZSTD_DCtx *zd;
  void *lz4_state;
  uint32_t scratch[(sizeof (struct blob) + CODEC_OUT + 3) / 4];
};

static pthread_key_t codec_key;
static pthread_once_t codec_once = PTHREAD_ONCE_INIT;

/* Thread exit: free the thread's contexts. */
static void
codec_thread_free (void *p)
{
  struct codec_thread *t = p;

  ZSTD_freeCCtx (t->zc);
  ZSTD_freeDCtx (t->zd);
  free (t->lz4_state);
  free (t);
}

/* Create the thread-local key once. */
static void
codec_key_init (void)
{
  pthread_key_create (&codec_key, codec_thread_free);
}

/* This thread's contexts, made on first use; NULL with errno on failure. */
static struct codec_thread *
codec_thread (void)
{
  struct codec_thread *t;

  pthread_once (&codec_once, codec_key_init);
  t = pthread_getspecific (codec_key);
  if (t != NULL)
    return t;
  t = calloc (1, sizeof *t);
  if (t == NULL)
    return NULL;
  t->zc = ZSTD_createCCtx ();
  t->zd = ZSTD_createDCtx ();
  t->lz4_state = malloc (LZ4_sizeofState ());
  if (t->zc == NULL || t->zd == NULL || t->lz4_state == NULL ||
      pthread_setspecific (codec_key, t) != 0) {
    codec_thread_free (t);
    errno = ENOMEM;
    return NULL;
  }
  ZSTD_CCtx_setParameter (t->zc, ZSTD_c_compressionLevel, CODEC_ZSTD_LEVEL);
  return t;
}

/* The name of a codec, as compress= takes it. */
const char *
codec_name (enum codec c)
{
  switch (c) {
  case CODEC_ZSTD: return "zstd";
  case CODEC_LZ4:  return "lz4";
  default:         return "none";
  }
}

/* Parse "zstd", "lz4" or "none" into *c; -1 if none of them. */
int
codec_parse (const char *s, enum codec *c)
{
  if (strcmp (s, "zstd") == 0)
    *c = CODEC_ZSTD;
  else if (strcmp (s, "lz4") == 0)
    *c = CODEC_LZ4;
  else if (strcmp (s, "none") == 0)
    *c = CODEC_NONE;
  else
    return -1;
  return 0;
}

/* Make the thread's blob one of kind holding len bytes (already in
 * its data if p is NULL, else copied from p).
 */
static const void *
codec_blob (struct codec_thread *t, enum blob_kind kind, const void *p,
            size_t len)
{
  struct blob *b = (struct blob *) t->scratch;

  b->len = len;
  b->kind = kind;
  if (p)
    memcpy (b->data, p, len);
  return b;
}

/* Pack the CODEC_UNIT bytes at in with codec c (zstd or lz4) into this
 * thread's blob, valid until its next codec_pack; NULL with errno on
 * failure.
 */
const void *
codec_pack (enum codec c, const unsigned char *in)
{
  struct codec_thread *t = codec_thread ();
  unsigned char *out;
  uint64_t word;
  size_t n;

  if (t == NULL)
    return NULL;
  out = ((struct blob *) t->scratch)->data;
  memcpy (&word, in, sizeof word);
  if (memcmp (in, in + sizeof word, CODEC_UNIT - sizeof word) == 0 &&
      memcmp (in, &word, sizeof word) == 0)
    return codec_blob (t, BLOB_SAME, &word, sizeof word);
  if (c == CODEC_ZSTD) {
    n = ZSTD_compress2 (t->zc, out, CODEC_OUT, in, CODEC_UNIT);
    if (!ZSTD_isError (n) && n <= CODEC_MAX_PACKED)
      return codec_blob (t, BLOB_ZSTD, NULL, n);
  }
  else {
    int r = LZ4_compress_fast_extState (t->lz4_state, (const char *) in,
                                        (char *) out, CODEC_UNIT,
                                        CODEC_OUT, 1);
    if (r > 0 && (size_t) r <= CODEC_MAX_PACKED)
      return codec_blob (t, BLOB_LZ4, NULL, r);
  }
  return codec_blob (t, BLOB_RAW, in, CODEC_UNIT);
}

/* Unpack blob into the CODEC_UNIT bytes at out; -1/EIO if it is corrupt. */
int
codec_unpack (const void *blob, unsigned char *out)
{
  const struct blob *b = blob;
  struct codec_thread *t;
  size_t i;

  switch (b->kind) {
  case BLOB_SAME:
    for (i = 0; i < CODEC_UNIT; i += b->len)
      memcpy (out + i, b->data, b->len);
    return 0;
  case BLOB_RAW:
    memcpy (out, b->data, CODEC_UNIT);
    return 0;
  case BLOB_ZSTD:
    if ((t = codec_thread ()) == NULL)
      return -1;
    if (ZSTD_decompressDCtx (t->zd, out, CODEC_UNIT, b->data, b->len)
        == CODEC_UNIT)
      return 0;
    break;
  case BLOB_LZ4:
    if (LZ4_decompress_safe ((const char *) b->data, (char *) out, b->len,
                             CODEC_UNIT) == (int) CODEC_UNIT)
      return 0;
    break;
  }
  errno = EIO;
  return -1;
}

/* Bytes of blob. */
size_t
codec_size (const void *blob)
{
  return offsetof (struct blob, data) + ((const struct blob *) blob)->len;
}

/* The most codec_size can return. */
size_t
codec_max_size (void)
{
  return offsetof (struct blob, data) + CODEC_UNIT;
}
