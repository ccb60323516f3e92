/* memblock: sizes and amounts of memory in human form, for the export
 * descriptions and the log.
 */

#include <inttypes.h>
#include <stdio.h>

#include "human.h"

static const char human_units[][4] = {
  "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"
};

/* Human form of a size: "16 MiB" when exact, else "1000 bytes". */
void
human_format_size (uint64_t size, char *buf, size_t len)
{
  int u = -1;

  while (u < 5 && size >= 1024 && size % 1024 == 0) {
    size /= 1024;
    u++;
  }
  if (u < 0)
    snprintf (buf, len, "%" PRIu64 " bytes", size);
  else
    snprintf (buf, len, "%" PRIu64 " %s", size, human_units[u]);
}

/* Human form of an amount of memory: "14 MiB", "1.3 GiB". */
void
human_format_amount (uint64_t bytes, char *buf, size_t len)
{
  int u = -1;
  double v = bytes;

  while (u < 5 && v >= 1024) {
    v /= 1024;
    u++;
  }
  if (u < 0)
    snprintf (buf, len, "%" PRIu64 " bytes", bytes);
  else if (bytes % ((uint64_t) 1024 << (10 * u)) == 0)
    snprintf (buf, len, "%.0f %s", v, human_units[u]);
  else
    snprintf (buf, len, "%.1f %s", v, human_units[u]);
}
