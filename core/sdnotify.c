/*
 * sdnotify -- sd_notify(3) by hand, and the watchdog (see sdnotify.h).
 */
#include "rhema_build.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/event.h>

#include "log.h"
#include "sdnotify.h"
#include "server.h"
#include "util.h"

static atomic_int warned; /* a notify socket that does not work is said once */

int rhema_sd_notifyf(const char *fmt, ...)
{
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    char msg[1024];
    va_list ap;
    if (!path || !*path)
        return 0;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t plen = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || plen >= sizeof sa.sun_path || plen < 2 || n < 0) {
        if (!atomic_exchange(&warned, 1))
            rhema_log(RHEMA_LOG_WARN, "systemd",
                      "NOTIFY_SOCKET '%s' is not an absolute path or an @abstract name; "
                      "systemd is not told of this daemon's state",
                      path);
        return -1;
    }
    memcpy(sa.sun_path, path, plen);
    socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen);
    if (path[0] == '@')
        sa.sun_path[0] = '\0'; /* the abstract namespace: no terminating NUL counted */
    else
        salen++;
    size_t len = (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ssize_t sent = -1;
    int e = 0;
    if (fd >= 0) {
        sent = sendto(fd, msg, len, MSG_NOSIGNAL, (struct sockaddr *)&sa, salen);
        e = errno;
        close(fd);
    } else {
        e = errno;
    }
    if (sent != (ssize_t)len) {
        if (!atomic_exchange(&warned, 1))
            rhema_log(RHEMA_LOG_WARN, "systemd", "cannot notify %s: %s", path, strerror(e));
        return -1;
    }
    return 1;
}

uint64_t rhema_sd_watchdog_usec(void)
{
    const char *usec = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");
    char *end;
    if (!usec || !*usec)
        return 0;
    if (pid && *pid) { /* meant for another process (say, the one before a daemonize) */
        errno = 0;
        long long p = strtoll(pid, &end, 10);
        if (errno || *end || p != (long long)getpid())
            return 0;
    }
    errno = 0;
    unsigned long long v = strtoull(usec, &end, 10);
    if (errno || *end || v == 0 || usec[0] == '-')
        return 0;
    return (uint64_t)v;
}

/*
 * The watchdog is petted from the main thread, the one whose event base
 * renews the leader lease, writes this node's heartbeat, runs the health
 * checks, key rotation and backups: if that loop hangs the node keeps its
 * lease on paper while doing nothing as leader, which is exactly what a
 * restart should end.  But the main loop alone would go on petting while a
 * worker is wedged (a deadlock, a storage call that never returns, a
 * loop): its connections hang, the listening socket it shares still takes
 * new ones, and /health/live, answered by whichever worker accepts, can
 * still say 200.  So each half period the main thread posts a ping to every
 * worker's mailbox and pets only while every worker has run the ping
 * before, within one whole watchdog period.  A worker blocked for a whole
 * period (WatchdogSec=60s in etc/rhemad.service) is wedged by any measure:
 * requests time out after service.request_timeout_seconds, and the
 * storage plugins bound their calls well below that.  Busy is not wedged:
 * a worker that serves requests runs its mailbox between them.
 */
struct ping {
    struct rhema_mail mail;
    atomic_int delivered;
    int posted;
    uint64_t posted_ns;
    int stalled; /* said in the log for this ping already */
};

static struct {
    struct rhema_server *srv;
    struct event *timer;
    struct ping *pings;
    int n;
    uint64_t period_ns;
} wd;

static void ping_delivered(struct rhema_mail *m)
{
    struct ping *p = (struct ping *)(void *)((char *)m - offsetof(struct ping, mail));
    atomic_store(&p->delivered, 1);
}

static void watchdog_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    uint64_t now = rhema_monotonic_ns();
    int alive = 1;
    for (int i = 0; i < wd.n; i++) {
        struct ping *p = &wd.pings[i];
        if (p->posted && !atomic_load(&p->delivered)) {
            if (now - p->posted_ns >= wd.period_ns) {
                alive = 0;
                if (!p->stalled++)
                    rhema_log(RHEMA_LOG_ERROR, "systemd",
                              "worker %d has not run its event loop for %.1f s: "
                              "no longer petting the watchdog",
                              i, (double)(now - p->posted_ns) / 1e9);
            }
            continue; /* still in its mailbox: never post a mail twice */
        }
        if (p->stalled)
            rhema_log(RHEMA_LOG_NOTICE, "systemd", "worker %d runs again", i);
        p->stalled = 0;
        atomic_store(&p->delivered, 0);
        p->posted = 1;
        p->posted_ns = now;
        p->mail.deliver = ping_delivered;
        rhema_mailbox_post(&wd.srv->workers[i].mailbox, &p->mail);
    }
    if (alive)
        rhema_sd_notifyf("WATCHDOG=1\n");
}

int rhema_sd_watchdog_start(struct rhema_server *srv, struct event_base *base)
{
    uint64_t usec = rhema_sd_watchdog_usec();
    if (!usec || !getenv("NOTIFY_SOCKET"))
        return 0;
    wd.srv = srv;
    wd.n = srv->nworkers;
    wd.period_ns = usec * 1000u;
    if (!(wd.pings = calloc((size_t)(wd.n ? wd.n : 1), sizeof *wd.pings)) ||
        !(wd.timer = event_new(base, -1, EV_PERSIST, watchdog_tick, NULL))) {
        free(wd.pings);
        wd.pings = NULL;
        return -1;
    }
    struct timeval tv = {.tv_sec = (time_t)(usec / 2 / 1000000u),
                         .tv_usec = (suseconds_t)(usec / 2 % 1000000u)};
    event_add(wd.timer, &tv);
    rhema_log(RHEMA_LOG_INFO, "systemd",
              "watchdog: every %.3f s (half of WATCHDOG_USEC=%" PRIu64 ")", (double)usec / 2e6,
              usec);
    watchdog_tick(-1, 0, NULL); /* the first at once: systemd counts from the start */
    return 0;
}

void rhema_sd_watchdog_stop(void)
{
    if (wd.timer)
        event_free(wd.timer);
    wd.timer = NULL;
}

void rhema_sd_watchdog_free(void)
{
    rhema_sd_watchdog_stop();
    free(wd.pings);
    wd.pings = NULL;
    wd.n = 0;
}
