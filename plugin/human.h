/* memblock: sizes and amounts of memory in human form. */
#ifndef MEMBLOCK_HUMAN_H
#define MEMBLOCK_HUMAN_H

#include <stddef.h>
#include <stdint.h>

extern void human_format_size (uint64_t size, char *buf, size_t len);
extern void human_format_amount (uint64_t bytes, char *buf, size_t len);

#endif /* MEMBLOCK_HUMAN_H */
