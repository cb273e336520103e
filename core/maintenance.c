/*
 * maintenance -- scheduled backups, pruning, retention cleanup and the
 * data-size gauge, timed on the main thread (see maintenance.h).  A
 * scheduled backup or cleanup runs on a thread of its own, with its own
 * storage connection, so that copying or pruning a large database never
 * delays the main thread's lease renewals and heartbeats.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "server.h"
#include "agents.h"
#include "log.h"
#include "maintenance.h"
#include "session.h"
#include "util.h"

#define WHO "maintenance"
#define MS_PER_HOUR 3600000ull
#define MS_PER_DAY 86400000ull
#define BACKUP_FIRST_DELAY_MS 5000u  /* no backup in the first seconds after startup */
#define CLEANUP_FIRST_DELAY_MS 30000u
#define BG_RETRY_MS 60000u           /* a job due while the other one runs: retry then */
#define TS_LEN 16                    /* yyyymmddThhmmssZ */

struct cleanup_hook {
    char name[64];
    rhema_maintenance_cleanup_fn fn;
    void *arg;
};

struct rhema_maintenance {
    struct rhema_server *srv;
    struct event_base *base;
    rhema_storage_conn *conn; /* the main thread's own connection */
    struct event *backup_ev, *cleanup_ev, *gauge_ev, *agents_ev;
    _Atomic uint64_t size_bytes; /* the last stats(NULL) reading */
    _Atomic int64_t delta;       /* account()ed since that reading */
    _Atomic int64_t limit;       /* max_data_size_bytes, 0: none */
    _Atomic uint64_t runs[RHEMA_MAINTENANCE_KINDS][2]; /* by kind, [0] ok [1] failed */
    _Atomic uint64_t last_ms[RHEMA_MAINTENANCE_KINDS]; /* when the last run ended, 0: never */
    atomic_int last_failed[RHEMA_MAINTENANCE_KINDS];
    struct cleanup_hook *hooks;
    size_t n_hooks;
    /* the background backup: started and joined on the main thread only */
    struct event *bg_done_ev; /* activated by the job's thread when it ends */
    pthread_t bg_thread;
    int bg_running;
    int bg_cleanup;   /* the job: 1 retention cleanup, 0 backup */
    int bg_scheduled; /* started by its timer: re-arm that when done */
    int bg_rc;
    char bg_path[PATH_MAX];
    rhema_maintenance_backup_fn bg_done_fn;
    void *bg_done_arg;
};

/* ---- backup names ---- */

static int all_digits(const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return n > 0;
}

static int num(const char *s, size_t n)
{
    int v = 0;
    size_t i;
    for (i = 0; i < n; i++)
        v = v * 10 + (s[i] - '0');
    return v;
}

int rhema_backup_name_parse(const char *name, char backend[65], uint64_t *taken_ms)
{
    size_t len = name != NULL ? strlen(name) : 0, end, blen;
    const char *ts;
    struct tm tm;
    time_t t;

    if (len < 6 + 1 + 1 + TS_LEN + 4 || strncmp(name, "rhema-", 6) != 0 ||
        strcmp(name + len - 4, ".bak") != 0)
        return -1;
    end = len - 4; /* name[..end) is "rhema-<backend>-<ts>[-N]" */
    if (name[end - 1] != 'Z') {
        size_t i = end;
        while (i > 0 && name[i - 1] >= '0' && name[i - 1] <= '9')
            i--;
        if (i == end || i == 0 || name[i - 1] != '-')
            return -1;
        end = i - 1;
    }
    if (end < 6 + 2 + TS_LEN || name[end - TS_LEN - 1] != '-')
        return -1;
    ts = name + end - TS_LEN;
    if (!all_digits(ts, 8) || ts[8] != 'T' || !all_digits(ts + 9, 6) || ts[15] != 'Z')
        return -1;
    blen = (size_t)(ts - 1 - (name + 6));
    if (blen == 0 || blen > 64)
        return -1;
    memset(&tm, 0, sizeof tm);
    tm.tm_year = num(ts, 4) - 1900;
    tm.tm_mon = num(ts + 4, 2) - 1;
    tm.tm_mday = num(ts + 6, 2);
    tm.tm_hour = num(ts + 9, 2);
    tm.tm_min = num(ts + 11, 2);
    tm.tm_sec = num(ts + 13, 2);
    if (tm.tm_mon < 0 || tm.tm_mon > 11 || tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 ||
        tm.tm_min > 59 || tm.tm_sec > 60)
        return -1;
    t = timegm(&tm);
    if (t < 0)
        return -1;
    if (backend != NULL) {
        memcpy(backend, name + 6, blen);
        backend[blen] = '\0';
    }
    if (taken_ms != NULL)
        *taken_ms = (uint64_t)t * 1000u;
    return 0;
}

/* Total size of the regular files under path (nftw state: one thread at a time). */
static _Thread_local uint64_t tree_bytes;

static int tree_size_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)path, (void)ftw;
    if (flag == FTW_F && S_ISREG(st->st_mode))
        tree_bytes += (uint64_t)st->st_size;
    return 0;
}

static int rm_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path) == 0 || errno == ENOENT ? 0 : -1;
}

/* N of a "...Z-N.bak" name, 1 for "...Z.bak": the order within one second. */
static long name_seq(const char *name)
{
    size_t len = strlen(name);
    const char *p = name + len - 4; /* ".bak" */
    while (p > name && p[-1] >= '0' && p[-1] <= '9')
        p--;
    if (p > name + 1 && p[-1] == '-' && p[-2] == 'Z')
        return strtol(p, NULL, 10);
    return 1;
}

static int backup_cmp(const void *a, const void *b)
{
    const struct rhema_backup_file *x = a, *y = b;
    long sx, sy;
    if (x->taken_ms != y->taken_ms)
        return x->taken_ms < y->taken_ms ? 1 : -1; /* newest first */
    sx = name_seq(x->name);
    sy = name_seq(y->name);
    if (sx != sy)
        return sx < sy ? 1 : -1; /* "-2" was made after the plain name */
    return strcmp(x->name, y->name);
}

int rhema_backup_list(const char *dir, const char *backend, struct rhema_backup_file **out,
                      size_t *n, char **err)
{
    struct rhema_backup_file *v = NULL, *nv;
    size_t cnt = 0, cap = 0;
    DIR *d;
    struct dirent *de;

    *out = NULL;
    *n = 0;
    d = opendir(dir);
    if (d == NULL) {
        if (errno == ENOENT)
            return 0;
        return rhema_set_error(err, RHEMA_EIO, "backup directory %s: %s", dir, strerror(errno));
    }
    while ((de = readdir(d)) != NULL) {
        struct rhema_backup_file f;
        char path[PATH_MAX];
        struct stat st;
        memset(&f, 0, sizeof f);
        if (strlen(de->d_name) >= sizeof f.name ||
            rhema_backup_name_parse(de->d_name, f.backend, &f.taken_ms) != 0 ||
            (backend != NULL && strcmp(f.backend, backend) != 0))
            continue;
        snprintf(f.name, sizeof f.name, "%s", de->d_name);
        if (snprintf(path, sizeof path, "%s/%s", dir, de->d_name) >= (int)sizeof path ||
            lstat(path, &st) != 0 || !(S_ISREG(st.st_mode) || S_ISDIR(st.st_mode)))
            continue;
        f.is_dir = S_ISDIR(st.st_mode);
        if (f.is_dir) {
            tree_bytes = 0;
            nftw(path, tree_size_cb, 8, FTW_PHYS);
            f.bytes = tree_bytes;
        } else {
            f.bytes = (uint64_t)st.st_size;
        }
        if (cnt == cap) {
            cap = cap ? cap * 2 : 16;
            nv = realloc(v, cap * sizeof *v);
            if (nv == NULL) {
                free(v);
                closedir(d);
                return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
            }
            v = nv;
        }
        v[cnt++] = f;
    }
    closedir(d);
    if (cnt > 1)
        qsort(v, cnt, sizeof *v, backup_cmp);
    *out = v;
    *n = cnt;
    return 0;
}

int rhema_backup_prune(const char *dir, const char *backend, int retention_days, uint64_t now_ms,
                       size_t *pruned, char **err)
{
    struct rhema_backup_file *v = NULL;
    size_t n = 0, i, count = 0;
    uint64_t keep = (uint64_t)(retention_days > 0 ? retention_days : 0) * MS_PER_DAY;
    uint64_t cutoff = now_ms > keep ? now_ms - keep : 0;
    int rc = rhema_backup_list(dir, backend, &v, &n, err), first_err = 0;

    if (pruned != NULL)
        *pruned = 0;
    if (rc != 0)
        return rc;
    for (i = 1; i < n; i++) { /* v[0], the newest, is never removed */
        char path[PATH_MAX];
        int bad;
        if (v[i].taken_ms >= cutoff)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, v[i].name);
        bad = v[i].is_dir ? nftw(path, rm_cb, 8, FTW_DEPTH | FTW_PHYS) != 0 : unlink(path) != 0;
        if (bad) {
            if (first_err == 0)
                first_err = rhema_set_error(err, RHEMA_EIO, "remove %s: %s", path, strerror(errno));
            continue;
        }
        rhema_log(RHEMA_LOG_INFO, WHO, "pruned backup %s (older than %d days)", path,
                  retention_days);
        count++;
    }
    free(v);
    if (pruned != NULL)
        *pruned = count;
    return first_err;
}

/* mkdir -p with mode 0750.  0 or errno. */
static int make_dirs(const char *path)
{
    char buf[PATH_MAX], *p;
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return ENAMETOOLONG;
    for (p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(buf, 0750) != 0 && errno != EEXIST)
                return errno;
            *p = saved;
            if (saved == '\0')
                break;
        }
    }
    return 0;
}

int rhema_backup_create(const struct rhema_storage_plugin *vt, rhema_storage_conn *conn,
                        const char *backend, const char *dir, uint64_t now_ms, char *path_out,
                        size_t cap, char **err)
{
    char path[PATH_MAX], ts[TS_LEN + 1], tmp[PATH_MAX + 8];
    time_t t = (time_t)(now_ms / 1000u);
    struct tm tm;
    struct stat st;
    char *perr = NULL;
    int e, rc, i;

    if (vt->backup == NULL)
        return rhema_set_error(err, RHEMA_ENOTSUP, "storage '%s' cannot make backups", backend);
    if (dir == NULL || dir[0] == '\0')
        return rhema_set_error(err, RHEMA_EINVAL, "no backup directory");
    if ((e = make_dirs(dir)) != 0)
        return rhema_set_error(err, RHEMA_EIO, "cannot create the backup directory %s: %s", dir,
                               strerror(e));
    gmtime_r(&t, &tm);
    strftime(ts, sizeof ts, "%Y%m%dT%H%M%SZ", &tm);
    for (i = 1;; i++) {
        int n = i == 1 ? snprintf(path, sizeof path, "%s/rhema-%s-%s.bak", dir, backend, ts)
                       : snprintf(path, sizeof path, "%s/rhema-%s-%s-%d.bak", dir, backend, ts, i);
        if (n >= (int)sizeof path)
            return rhema_set_error(err, RHEMA_EINVAL, "backup path too long");
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        if (lstat(path, &st) != 0 && errno == ENOENT && lstat(tmp, &st) != 0 && errno == ENOENT)
            break;
        if (i >= 1000)
            return rhema_set_error(err, RHEMA_EIO, "too many backups in %s for %s", dir, ts);
    }
    rc = vt->backup(conn, path, &perr);
    if (rc != 0) {
        rhema_set_error(err, rc, "backup to %s: %s", path, perr ? perr : rhema_strerror(rc));
        free(perr);
        return rc;
    }
    free(perr);
    if (path_out != NULL && cap > 0)
        snprintf(path_out, cap, "%s", path);
    return 0;
}

/*
 * Retention cleanup on conn: every hook in registration order, the
 * sessions' first (rhema_maintenance_start registers it).  Any thread
 * (reads m->srv, m->hooks).
 */
/* ---- the running part ---- */

static uint64_t interval_ms(int hours)
{
    return (uint64_t)(hours > 0 ? hours : 1) * MS_PER_HOUR;
}

static void arm(struct event *ev, uint64_t ms)
{
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000u), .tv_usec = (suseconds_t)(ms % 1000u) * 1000};
    evtimer_add(ev, &tv);
}

/*
 * Read the data size; returns when to read it next, in ms.  stats(NULL)
 * walks every entry on most backends (a COUNT and SUM over the table), so
 * on a large store the reading is spaced to GAUGE_COST_FACTOR times what it
 * took (at most GAUGE_MAX_MS): it then costs at most 2% of a core, and
 * account() keeps the gauge true between readings.
 */
#define GAUGE_COST_FACTOR 50u
#define GAUGE_MAX_MS 60000u

static uint64_t gauge_refresh(struct rhema_maintenance *m)
{
    struct rhema_storage_stats st = {0};
    uint64_t t0 = rhema_monotonic_ns();
    int rc = m->srv->storage->stats(m->conn, NULL, &st);
    uint64_t next = (rhema_monotonic_ns() - t0) / 1000000u * GAUGE_COST_FACTOR;
    next = next < RHEMA_MAINTENANCE_GAUGE_MS ? RHEMA_MAINTENANCE_GAUGE_MS
                                             : next > GAUGE_MAX_MS ? GAUGE_MAX_MS : next;
    if (rc != 0) {
        rhema_log(RHEMA_LOG_WARN, WHO, "data size: stats failed, keeping the last reading: %s",
                  m->srv->storage->errmsg(m->conn));
        return next;
    }
    atomic_store(&m->size_bytes, st.bytes);
    atomic_store(&m->delta, 0);
    return next;
}

static void on_gauge(evutil_socket_t fd, short what, void *arg)
{
    struct rhema_maintenance *m = arg;
    (void)fd, (void)what;
    arm(m->gauge_ev, gauge_refresh(m));
}

/*
 * The agent timeouts (agents.h, rhema_agent_sweep): every
 * agent_timeout_seconds / 4, between AGENT_SWEEP_MIN_MS and _MAX_MS, on the
 * main thread's connection, at most AGENT_SWEEP_BATCH transitions of each
 * kind per pass so that a mass timeout never holds the main thread long.
 */
#define AGENT_SWEEP_MIN_MS 250u
#define AGENT_SWEEP_MAX_MS 15000u
#define AGENT_SWEEP_BATCH 256u

static uint64_t agent_sweep_every_ms(const struct rhema_config *cfg)
{
    uint64_t ms = (uint64_t)cfg->agent_timeout_seconds * 1000u / 4u;
    return ms < AGENT_SWEEP_MIN_MS ? AGENT_SWEEP_MIN_MS
                                   : ms > AGENT_SWEEP_MAX_MS ? AGENT_SWEEP_MAX_MS : ms;
}

static void on_agents(evutil_socket_t fd, short what, void *arg)
{
    struct rhema_maintenance *m = arg;
    struct rhema_store st;
    char err[RHEMA_ERRMSG_MAX];
    size_t offline = 0, failed = 0;
    (void)fd, (void)what;
    rhema_store_init(&st, m->srv->storage, m->conn);
    st.keep_transitions = (uint64_t)m->srv->cfg->agent_transitions_retained;
    st.feed = m->srv->feed; /* the transitions are agent.status events (opened before the loop) */
    int rc = rhema_agent_sweep(&st, (uint64_t)m->srv->cfg->agent_timeout_seconds * 1000u,
                               rhema_realtime_ms(), AGENT_SWEEP_BATCH, &offline, &failed, err);
    if (rc)
        rhema_log(RHEMA_LOG_WARN, WHO, "agent timeouts: %s", err);
    if (offline || failed)
        rhema_log(RHEMA_LOG_INFO, WHO, "agent timeouts: %zu agent(s) Offline, %zu Failed",
                  offline, failed);
    rhema_store_release(&st);
}

/* Back up on conn and prune, logging both.  Any thread (reads only m->srv). */
/* A run of kind ended (failed or not): counted, and remembered for GET /health. */
static void count_run(struct rhema_maintenance *m, int kind, int failed)
{
    atomic_fetch_add(&m->runs[kind][failed], 1);
    atomic_store(&m->last_failed[kind], failed);
    atomic_store(&m->last_ms[kind], rhema_realtime_ms());
}

static int backup_on(struct rhema_maintenance *m, rhema_storage_conn *conn, char *path_out,
                     size_t cap, char **err)
{
    const struct rhema_config *cfg = m->srv->cfg;
    const char *backend = m->srv->storage_plugin->name;
    char path[PATH_MAX];
    size_t pruned = 0;
    uint64_t t0 = rhema_monotonic_ns();
    char *perr = NULL;
    int rc = rhema_backup_create(m->srv->storage, conn, backend, cfg->backup_directory,
                                 rhema_realtime_ms(), path, sizeof path, err);
    count_run(m, RHEMA_MAINTENANCE_BACKUP, rc != 0);
    if (rc != 0) {
        rhema_log(RHEMA_LOG_ERROR, WHO, "backup failed: %s", err && *err ? *err : "?");
        return rc;
    }
    rhema_log(RHEMA_LOG_NOTICE, WHO, "backup written: %s (%llu ms)", path,
              (unsigned long long)((rhema_monotonic_ns() - t0) / 1000000u));
    if (path_out != NULL && cap > 0)
        snprintf(path_out, cap, "%s", path);
    if (rhema_backup_prune(cfg->backup_directory, backend, cfg->backup_retention_days,
                           rhema_realtime_ms(), &pruned, &perr) != 0)
        rhema_log(RHEMA_LOG_WARN, WHO, "pruning old backups: %s", perr ? perr : "?");
    else if (pruned > 0)
        rhema_log(RHEMA_LOG_NOTICE, WHO, "pruned %zu backup(s) older than %d days from %s",
                  pruned, cfg->backup_retention_days, cfg->backup_directory);
    free(perr);
    return 0;
}

/*
 * Retention cleanup on conn: every hook in registration order, the
 * sessions' first (rhema_maintenance_start registers it).  Any thread
 * (reads m->srv, m->hooks).
 */
static int cleanup_on(struct rhema_maintenance *m, rhema_storage_conn *conn, size_t *removed,
                      char **err)
{
    const struct rhema_config *cfg = m->srv->cfg;
    uint64_t keep = (uint64_t)cfg->data_retention_days * MS_PER_DAY, now = rhema_realtime_ms();
    uint64_t cutoff = now > keep ? now - keep : 0;
    size_t n = 0, total = 0, i;
    int rc, first = 0;

    for (i = 0; i < m->n_hooks; i++) {
        char *herr = NULL;
        n = 0;
        rc = m->hooks[i].fn(m->hooks[i].arg, m->srv->storage, conn, cutoff, &n, &herr);
        total += n;
        if (rc != 0) {
            rhema_log(RHEMA_LOG_ERROR, WHO, "cleanup of %s: %s (%zu removed before it)",
                      m->hooks[i].name, herr ? herr : rhema_strerror(rc), n);
            if (first == 0) {
                first = rc;
                if (err != NULL) {
                    free(*err);
                    *err = herr;
                    herr = NULL;
                }
            }
        } else {
            rhema_log(RHEMA_LOG_NOTICE, WHO, "cleanup: removed %zu %s", n, m->hooks[i].name);
        }
        free(herr);
    }
    if (removed != NULL)
        *removed = total;
    count_run(m, RHEMA_MAINTENANCE_CLEANUP, first != 0);
    return first;
}

void rhema_maintenance_last(struct rhema_maintenance *m, int kind, int *failed, uint64_t *at_ms)
{
    *failed = m ? atomic_load(&m->last_failed[kind]) : 0;
    *at_ms = m ? atomic_load(&m->last_ms[kind]) : 0;
}

void rhema_maintenance_runs(struct rhema_maintenance *m,
                            uint64_t runs[RHEMA_MAINTENANCE_KINDS][2])
{
    for (int k = 0; k < RHEMA_MAINTENANCE_KINDS; k++)
        for (int f = 0; f < 2; f++)
            runs[k][f] = m ? atomic_load_explicit(&m->runs[k][f], memory_order_relaxed) : 0;
}

int rhema_maintenance_cleanup_now(struct rhema_maintenance *m, size_t *removed, char **err)
{
    return cleanup_on(m, m->conn, removed, err);
}

/*
 * The background job (a backup or a cleanup, one at a time): a thread with
 * its own connection, which tells the main thread through bg_done_ev.
 */
static void *bg_thread_main(void *arg)
{
    struct rhema_maintenance *m = arg;
    rhema_storage_conn *conn = NULL;
    char *err = NULL;
    int rc = m->srv->storage->connect(m->srv->storage_inst, &conn, &err);

    m->bg_path[0] = '\0';
    if (rc != 0) {
        count_run(m, m->bg_cleanup ? RHEMA_MAINTENANCE_CLEANUP : RHEMA_MAINTENANCE_BACKUP, 1);
        rhema_log(RHEMA_LOG_ERROR, WHO, "%s failed: storage connect: %s",
                  m->bg_cleanup ? "cleanup" : "backup", err ? err : rhema_strerror(rc));
    } else {
        if (m->bg_cleanup)
            rc = cleanup_on(m, conn, NULL, &err);
        else
            rc = backup_on(m, conn, m->bg_path, sizeof m->bg_path, &err);
        m->srv->storage->disconnect(conn);
    }
    free(err);
    m->bg_rc = rc;
    event_active(m->bg_done_ev, EV_READ, 0); /* thread-safe: evthread_use_pthreads() */
    return NULL;
}

/* Join the job's thread (it has ended, or is about to), report, re-arm its timer. */
static void bg_finish(struct rhema_maintenance *m)
{
    pthread_join(m->bg_thread, NULL);
    m->bg_running = 0;
    if (m->bg_done_fn != NULL)
        m->bg_done_fn(m->bg_done_arg, m->bg_rc,
                      m->bg_rc == 0 && !m->bg_cleanup ? m->bg_path : NULL);
    if (m->bg_scheduled && m->bg_cleanup)
        arm(m->cleanup_ev, interval_ms(m->srv->cfg->cleanup_interval_hours));
    else if (m->bg_scheduled)
        arm(m->backup_ev, interval_ms(m->srv->cfg->backup_interval_hours));
}

static void on_bg_done(evutil_socket_t fd, short what, void *arg)
{
    struct rhema_maintenance *m = arg;
    (void)fd, (void)what;
    if (m->bg_running)
        bg_finish(m);
}

static int bg_start(struct rhema_maintenance *m, int cleanup, int scheduled,
                    rhema_maintenance_backup_fn done, void *arg)
{
    int e;
    if (m->bg_running)
        return RHEMA_ECONFLICT;
    m->bg_cleanup = cleanup;
    m->bg_scheduled = scheduled;
    m->bg_done_fn = done;
    m->bg_done_arg = arg;
    m->bg_rc = 0;
    e = pthread_create(&m->bg_thread, NULL, bg_thread_main, m);
    if (e != 0) {
        rhema_log(RHEMA_LOG_ERROR, WHO, "%s failed: cannot start its thread: %s",
                  cleanup ? "cleanup" : "backup", strerror(e));
        return RHEMA_ENOMEM;
    }
    m->bg_running = 1;
    return 0;
}

int rhema_maintenance_backup_start(struct rhema_maintenance *m, rhema_maintenance_backup_fn done,
                                   void *arg)
{
    return bg_start(m, 0, 0, done, arg);
}

int rhema_maintenance_cleanup_start(struct rhema_maintenance *m,
                                    rhema_maintenance_backup_fn done, void *arg)
{
    return bg_start(m, 1, 0, done, arg);
}

int rhema_maintenance_backup_running(const struct rhema_maintenance *m)
{
    return m != NULL && m->bg_running;
}

static void on_backup(evutil_socket_t fd, short what, void *arg)
{
    struct rhema_maintenance *m = arg;
    (void)fd, (void)what;
    if (bg_start(m, 0, 1, NULL, NULL) != 0) /* the other job runs, or no thread */
        arm(m->backup_ev, BG_RETRY_MS);
}

static void on_cleanup(evutil_socket_t fd, short what, void *arg)
{
    struct rhema_maintenance *m = arg;
    (void)fd, (void)what;
    if (bg_start(m, 1, 1, NULL, NULL) != 0)
        arm(m->cleanup_ev, BG_RETRY_MS);
}

int rhema_maintenance_add_cleanup(struct rhema_maintenance *m, const char *name,
                                  rhema_maintenance_cleanup_fn fn, void *arg)
{
    struct cleanup_hook *h;
    if (m->bg_running && m->bg_cleanup)
        return RHEMA_ECONFLICT; /* the cleanup thread reads the hooks */
    h = realloc(m->hooks, (m->n_hooks + 1) * sizeof *h);
    if (h == NULL)
        return RHEMA_ENOMEM;
    m->hooks = h;
    snprintf(h[m->n_hooks].name, sizeof h[m->n_hooks].name, "%s", name ? name : "hook");
    h[m->n_hooks].fn = fn;
    h[m->n_hooks].arg = arg;
    m->n_hooks++;
    return 0;
}

int rhema_maintenance_start(struct rhema_server *srv, struct event_base *base,
                            struct rhema_maintenance **out, char **err)
{
    const struct rhema_config *cfg = srv->cfg;
    struct rhema_maintenance *m = calloc(1, sizeof *m);
    char *perr = NULL;
    int rc;

    if (m == NULL)
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    m->srv = srv;
    m->base = base;
    if (rhema_maintenance_add_cleanup(m, "Completed/Cancelled session(s)", rhema_session_cleanup,
                                      NULL) != 0) {
        free(m);
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    }
    atomic_init(&m->size_bytes, 0);
    atomic_init(&m->delta, 0);
    atomic_init(&m->limit, cfg->max_data_size_bytes);
    rc = srv->storage->connect(srv->storage_inst, &m->conn, &perr);
    if (rc != 0) {
        rhema_set_error(err, rc, "maintenance: storage connect: %s",
                        perr ? perr : rhema_strerror(rc));
        free(perr);
        free(m->hooks);
        free(m);
        return rc;
    }
    m->gauge_ev = evtimer_new(base, on_gauge, m);
    m->backup_ev = evtimer_new(base, on_backup, m);
    m->cleanup_ev = evtimer_new(base, on_cleanup, m);
    m->bg_done_ev = event_new(base, -1, 0, on_bg_done, m);
    m->agents_ev = event_new(base, -1, EV_PERSIST, on_agents, m);
    if (m->gauge_ev == NULL || m->backup_ev == NULL || m->cleanup_ev == NULL ||
        m->bg_done_ev == NULL || m->agents_ev == NULL) {
        rhema_maintenance_stop(m);
        return rhema_set_error(err, RHEMA_ENOMEM, "maintenance: cannot create timers");
    }
    arm(m->gauge_ev, gauge_refresh(m)); /* the limit holds from the first request on */
    arm(m->agents_ev, agent_sweep_every_ms(cfg));

    if (cfg->enable_backups) {
        struct rhema_backup_file *v = NULL;
        size_t n = 0;
        uint64_t now = rhema_realtime_ms(), delay = BACKUP_FIRST_DELAY_MS;
        if (srv->storage->backup == NULL) {
            rhema_log(RHEMA_LOG_WARN, WHO,
                      "persistence.enable_backups is set, but storage '%s' cannot make backups",
                      srv->storage_plugin->name);
        } else {
            if (rhema_backup_list(cfg->backup_directory, srv->storage_plugin->name, &v, &n,
                                  NULL) == 0 && n > 0) {
                uint64_t due = v[0].taken_ms + interval_ms(cfg->backup_interval_hours);
                if (due > now + delay)
                    delay = due - now;
            }
            free(v);
            arm(m->backup_ev, delay);
            rhema_log(RHEMA_LOG_INFO, WHO,
                      "backups every %d h into %s (next in %llu s), kept %d days",
                      cfg->backup_interval_hours, cfg->backup_directory,
                      (unsigned long long)(delay / 1000u), cfg->backup_retention_days);
        }
    }
    if (cfg->enable_cleanup) {
        uint64_t every = interval_ms(cfg->cleanup_interval_hours);
        arm(m->cleanup_ev, every < CLEANUP_FIRST_DELAY_MS ? every : CLEANUP_FIRST_DELAY_MS);
        rhema_log(RHEMA_LOG_INFO, WHO, "retention cleanup every %d h of what is older than %d days",
                  cfg->cleanup_interval_hours, cfg->data_retention_days);
    }
    if (cfg->max_data_size_bytes > 0)
        rhema_log(RHEMA_LOG_INFO, WHO, "data size limit %lld bytes (now %llu)",
                  (long long)cfg->max_data_size_bytes,
                  (unsigned long long)atomic_load(&m->size_bytes));
    *out = m;
    return 0;
}

void rhema_maintenance_stop(struct rhema_maintenance *m)
{
    if (m == NULL)
        return;
    if (m->bg_running) { /* a half-written backup is worth less than the wait */
        rhema_log(RHEMA_LOG_NOTICE, WHO, "waiting for the running %s to finish",
                  m->bg_cleanup ? "cleanup" : "backup");
        bg_finish(m);
    }
    if (m->bg_done_ev != NULL)
        event_free(m->bg_done_ev);
    if (m->gauge_ev != NULL)
        event_free(m->gauge_ev);
    if (m->agents_ev != NULL)
        event_free(m->agents_ev);
    if (m->backup_ev != NULL)
        event_free(m->backup_ev);
    if (m->cleanup_ev != NULL)
        event_free(m->cleanup_ev);
    if (m->conn != NULL)
        m->srv->storage->disconnect(m->conn);
    free(m->hooks);
    free(m);
}

/* ---- the gauge, from any thread ---- */

uint64_t rhema_maintenance_data_size(const struct rhema_maintenance *m)
{
    struct rhema_maintenance *mm = (struct rhema_maintenance *)m; /* atomics need non-const */
    int64_t d;
    uint64_t size;
    if (m == NULL)
        return 0;
    size = atomic_load(&mm->size_bytes);
    d = atomic_load(&mm->delta);
    if (d < 0 && (uint64_t)(-d) > size)
        return 0;
    return d < 0 ? size - (uint64_t)(-d) : size + (uint64_t)d;
}

int rhema_maintenance_over_limit(const struct rhema_maintenance *m, size_t incoming_bytes)
{
    struct rhema_maintenance *mm = (struct rhema_maintenance *)m;
    int64_t limit;
    uint64_t size;
    if (m == NULL)
        return 0;
    limit = atomic_load(&mm->limit);
    if (limit <= 0)
        return 0;
    size = rhema_maintenance_data_size(m);
    if (incoming_bytes > (uint64_t)limit)
        return 1;
    return size > (uint64_t)limit - incoming_bytes;
}

void rhema_maintenance_account(struct rhema_maintenance *m, int64_t delta_bytes)
{
    if (m != NULL)
        atomic_fetch_add(&m->delta, delta_bytes);
}
