/* memblock: error messages, to the log or to a control client. */
#ifndef MEMBLOCK_REPORT_H
#define MEMBLOCK_REPORT_H

#include <stdarg.h>

#include "manage.h"

extern void report_error (const char *fmt, ...)
  __attribute__ ((format (printf, 1, 2)));
extern void report_capture (struct manage_err *err);

#endif /* MEMBLOCK_REPORT_H */
