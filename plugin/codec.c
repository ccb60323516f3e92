/* memblock: compressed units of a store (zstd, lz4, same-filled, raw).
 *
 * A unit of CODEC_UNIT bytes is packed into one malloc'd blob, the
 * smallest form that holds it:
 *
 *   same   every 8-byte word of the unit is the same (as in zram's "same
 *          pages"): the blob holds that word;
 *   zstd   zstd level 1, or
 *   lz4    lz4 (the store's codec chooses which);
 *   raw    the unit as it is, when compression would save less than an
 *          eighth: data that does not compress is never grown.
 *
 * Compression contexts are per thread, made on first use and freed when
 * the thread exits: no lock, and no context is made per call.
 */

#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <lz4.h>
#include <zstd.h>

#include "codec.h"

#define CODEC_ZSTD_LEVEL 1
/* Compressed output larger than this is kept raw instead. */
#define CODEC_MAX_PACKED (CODEC_UNIT - CODEC_UNIT / 8)
/* What malloc adds to each allocation (its chunk header). */
#define CODEC_MALLOC_OVERHEAD 8

enum blob_kind { BLOB_SAME, BLOB_RAW, BLOB_ZSTD, BLOB_LZ4 };

struct blob {
  uint32_t len;                 /* bytes of data[] */
  uint8_t kind;                 /* enum blob_kind */
  unsigned char data[];
};

/* One thread's contexts and scratch output. */
struct codec_thread {
  ZSTD_CCtx *zc;
  ZSTD_DCtx *zd;
  void *lz4_state;
  unsigned char out[CODEC_UNIT + 1024];   /* >= both codecs' bound */
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

/* A new blob of kind holding len bytes from p; NULL with errno. */
static void *
codec_blob (enum blob_kind kind, const void *p, size_t len)
{
  struct blob *b = malloc (sizeof *b + len);

  if (b == NULL)
    return NULL;
  b->len = len;
  b->kind = kind;
  memcpy (b->data, p, len);
  return b;
}

/* Pack the CODEC_UNIT bytes at in with codec c (zstd or lz4); NULL
 * with errno on failure.
 */
void *
codec_pack (enum codec c, const unsigned char *in)
{
  struct codec_thread *t;
  uint64_t word;
  size_t n;

  memcpy (&word, in, sizeof word);
  if (memcmp (in, in + sizeof word, CODEC_UNIT - sizeof word) == 0 &&
      memcmp (in, &word, sizeof word) == 0)
    return codec_blob (BLOB_SAME, &word, sizeof word);
  if ((t = codec_thread ()) == NULL)
    return NULL;
  if (c == CODEC_ZSTD) {
    n = ZSTD_compress2 (t->zc, t->out, sizeof t->out, in, CODEC_UNIT);
    if (!ZSTD_isError (n) && n <= CODEC_MAX_PACKED)
      return codec_blob (BLOB_ZSTD, t->out, n);
  }
  else {
    int r = LZ4_compress_fast_extState (t->lz4_state, (const char *) in,
                                        (char *) t->out, CODEC_UNIT,
                                        sizeof t->out, 1);
    if (r > 0 && (size_t) r <= CODEC_MAX_PACKED)
      return codec_blob (BLOB_LZ4, t->out, r);
  }
  return codec_blob (BLOB_RAW, in, CODEC_UNIT);
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

/* Bytes of memory blob holds, the allocator's own overhead included. */
size_t
codec_held (const void *blob)
{
  return malloc_usable_size ((void *) blob) + CODEC_MALLOC_OVERHEAD;
}

/* The most codec_held can return for one unit. */
size_t
codec_max_held (void)
{
  /* malloc rounds a request up to 16 bytes past its header. */
  return sizeof (struct blob) + CODEC_UNIT + 16 + CODEC_MALLOC_OVERHEAD;
}

/* Free a blob (NULL is fine). */
void
codec_free (void *blob)
{
  free (blob);
}
