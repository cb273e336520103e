/*
 * sdnotify -- the systemd service manager protocol (sd_notify(3)), by hand:
 * one datagram of "KEY=value" lines to the AF_UNIX socket named by
 * $NOTIFY_SOCKET (a path, or "@name" in the abstract namespace).  Without
 * $NOTIFY_SOCKET every call does nothing, so rhemad runs the same outside
 * systemd.  No libsystemd: the protocol is a few lines and stable.
 *
 * And the watchdog: with $WATCHDOG_USEC set (and $WATCHDOG_PID unset or
 * ours), a timer on the main thread's event base sends WATCHDOG=1 every
 * half period while the main loop and every worker are alive (sdnotify.c
 * says why both).
 */
#ifndef RHEMA_CORE_SDNOTIFY_H
#define RHEMA_CORE_SDNOTIFY_H

#include <stdint.h>

struct event_base;
struct rhema_server;

/*
 * Send the lines of fmt (printf-style; lines end in '\n').  1 sent, 0 no
 * $NOTIFY_SOCKET, -1 when it could not be sent (logged once as a warning).
 * Any thread.
 */
int rhema_sd_notifyf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The watchdog period in microseconds from $WATCHDOG_USEC, 0 when off. */
uint64_t rhema_sd_watchdog_usec(void);

/*
 * Start the watchdog timer on base (the main thread's), after the workers
 * run.  0, or -1 when the timer cannot be made.  Does nothing when the
 * watchdog is off.  stop: before the workers' mailboxes are released and
 * the base freed; the memory of pings still in a mailbox is freed by
 * rhema_sd_watchdog_free() after the workers stopped.
 */
int rhema_sd_watchdog_start(struct rhema_server *srv, struct event_base *base);
void rhema_sd_watchdog_stop(void);
void rhema_sd_watchdog_free(void);

#endif /* RHEMA_CORE_SDNOTIFY_H */
