/* memblock: the devices declared with name=, made at start-up. */
#ifndef MEMBLOCK_DECLARE_H
#define MEMBLOCK_DECLARE_H

extern int declare_devices (void);

#endif /* MEMBLOCK_DECLARE_H */
