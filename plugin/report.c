/* memblock: error messages, to the log or to a control client.
 *
 * The checks that refuse a device (registry.c, config.c, image.c) say
 * why in one line.  For a client's connect or a start-up declaration
 * that line goes to nbdkit's log.  For a control-socket request it must
 * go back to the caller instead: the thread serving the request points
 * report_capture at its struct manage_err, and the first line reported
 * meanwhile lands there (and in the debug log).
 */

#include <errno.h>
#include <stdio.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "report.h"

/* Where this thread's reports go, or NULL for the log. */
static _Thread_local struct manage_err *report_to;

/* Send this thread's reports to err until report_capture (NULL). */
void
report_capture (struct manage_err *err)
{
  report_to = err;
  if (err) {
    err->errnum = 0;
    err->msg[0] = '\0';
  }
}

/* Report one error line, formatted like nbdkit_error (%m included). */
void
report_error (const char *fmt, ...)
{
  int err = errno;
  va_list ap;

  va_start (ap, fmt);
  if (report_to == NULL)
    nbdkit_verror (fmt, ap);
  else if (report_to->msg[0] == '\0') {
    vsnprintf (report_to->msg, sizeof report_to->msg, fmt, ap);
    nbdkit_debug ("control: %s", report_to->msg);
  }
  va_end (ap);
  errno = err;
}
