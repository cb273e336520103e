/*
 * log -- text or JSON log lines to stderr or a file, with levels.
 *
 * Thread safe: each line is formatted into a buffer and written with one
 * write(2).  rhema_log_open() may be called again (SIGHUP) to change the
 * level, format or file; in-flight writers see either the old or new file.
 */
#ifndef RHEMA_CORE_LOG_H
#define RHEMA_CORE_LOG_H

#include <stdarg.h>

#include <rhema/plugin.h> /* RHEMA_LOG_* levels */

#include "config.h"

/* Open (or re-open) the log: level, format, file ("" or NULL: stderr). */
int rhema_log_open(int level, enum rhema_log_format format, const char *file, char **err);
void rhema_log_close(void);
/*
 * Open the log file again by its name, level and format unchanged (SIGUSR1,
 * after logrotate moved it); 0 and nothing done when logging to stderr.
 */
int rhema_log_reopen(char **err);
void rhema_log_set_level(int level);

/* The name of a level ("info"), as logging.level spells it. */
const char *rhema_log_level_name(int level);

/*
 * While on, error and warning lines also go to stderr when the log is a
 * file: rhemad turns it on until it is up, so that a failed start is seen.
 */
void rhema_log_tee_stderr(int on);

/*
 * The process has let go of its terminal (a daemon, stderr is /dev/null
 * next): from now on "no log file" means syslog (facility daemon, ident
 * rhemad; journald under systemd), here and on every later reopen.
 */
void rhema_log_detach(void);

/* Log a message from subsystem `who` (a module or plugin name). */
void rhema_log(int level, const char *who, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void rhema_vlog(int level, const char *who, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

/*
 * One access-log line (info level, subsystem "access").  On a thread that
 * batches (below) the line is kept and 1 returned when it is the first one
 * pending: the thread must call rhema_log_flush() before it sleeps.
 * Otherwise the line is written at once and 0 returned.
 */
int rhema_log_access(const char *request_id, const char *peer, const char *method,
                     const char *uri, int status, size_t bytes_out, double ms);
/*
 * This thread batches its access lines (on), or writes the pending ones
 * and stops (off).  rhema_log_flush() writes this thread's pending lines
 * with one write(2); any other line of the thread writes them first.
 */
void rhema_log_batch(int on);
void rhema_log_flush(void);

#endif /* RHEMA_CORE_LOG_H */
