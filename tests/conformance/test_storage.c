/*
 * test_storage -- run the storage conformance suite against real plugins,
 * loaded through the real loader and configured through the real config.
 *
 * Prints TAP (checks are discovered at run time, so the plan comes last)
 * and exits non-zero when any check fails.
 *
 * Environment:
 *   RHEMA_PLUGIN_DIR              where storage_<name>.so live (required)
 *   RHEMA_CONFORMANCE_BACKENDS    backends to test, separated by spaces or
 *                                 commas (default "memory sqlite")
 *   RHEMA_CONFORMANCE_OVERRIDES   extra "section.key=value" overrides,
 *                                 separated by ';', applied for every
 *                                 backend (e.g. the postgres conninfo)
 *
 * The sqlite backend gets persistence.sqlite.path=<tmpdir>/conf.db, plus
 * sqlite-only checks: durability and lease epochs across close and open,
 * the parent directory created, a bad `synchronous` refused with its
 * file:line, a backup that opens as a database holding the data, and the
 * background checkpointer (checkpoint_pages); and, when built with SQLite
 * (which they open directly), rate()'s file (`<path>-rate`): the table
 * rhema_rate of an earlier version dropped, one limit for processes
 * sharing the file, a process killed while it holds the file's lock
 * blocks nobody, a truncated or garbage file reinitialized, and a full
 * table (rate_max_keys) forgetting the key that rests first; and its
 * read cache: another instance's writes and deletes (another process
 * sharing the file), and those of a program writing with SQLite itself,
 * are seen at once, a key read absent and then written too, so after every
 * connection closed (SQLite made -shm anew), and a cached value with a TTL
 * stops being answered when it expires.
 * The file backend gets the checks of its read cache: a get() of a value
 * it holds answers while another holder keeps the directory's exclusive
 * flock (a writer in its fsyncs), but not once that holder has moved the
 * generation (another process committing); and another instance's writes
 * (another process sharing the directory) are seen, deletes too.
 * The memory backend gets a check of its hash index: 5,000 keys (several
 * growths of the table) found by get() and get_many(), deleted ones not,
 * and so again after a restore.
 * The postgres and redis backends, when built with their client libraries,
 * get the same look at the server: a schema made before rate() gains its
 * table and rows at rest are purged (postgres); a state lives under the
 * prefix and expires at its rest instant (redis).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef RHEMA_HAVE_SQLITE
#include <sqlite3.h>
#endif
#ifdef RHEMA_HAVE_HIREDIS
#include <hiredis/hiredis.h>
#endif
#ifdef RHEMA_HAVE_LIBPQ
#include <libpq-fe.h>
#endif

#include <rhema/storage.h>

#include "config.h"
#include "plugin.h"
#include "storage_suite.h"
#include "util.h"

static unsigned tap_n, tap_failed;
static char tmpdir[512];

/* One TAP line; detail goes after "# SKIP" or on "#" lines after a failure. */
static void tap(const char *backend, const char *test, int ok, const char *detail)
{
    tap_n++;
    if (ok == RHEMA_CONF_SKIP) {
        printf("ok %u - %s: %s # SKIP %s\n", tap_n, backend, test, detail ? detail : "");
    } else if (ok == RHEMA_CONF_PASS) {
        printf("ok %u - %s: %s\n", tap_n, backend, test);
    } else {
        tap_failed++;
        printf("not ok %u - %s: %s\n", tap_n, backend, test);
        if (detail != NULL && detail[0] != '\0')
            printf("# %s\n", detail);
    }
    fflush(stdout);
}

static void report(void *ctx, const char *test, int ok, const char *detail)
{
    tap(ctx, test, ok, detail);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Split s at any of `seps` into a NULL-terminated array of strdup'd pieces. */
static char **split(const char *s, const char *seps, size_t *n)
{
    char *copy = strdup(s != NULL ? s : ""), *tok, *save = NULL;
    char **v = NULL;
    size_t cnt = 0;
    if (copy == NULL)
        return NULL;
    for (tok = strtok_r(copy, seps, &save); tok != NULL; tok = strtok_r(NULL, seps, &save)) {
        char **nv = realloc(v, (cnt + 2) * sizeof *v);
        if (nv == NULL)
            break;
        v = nv;
        v[cnt++] = strdup(tok);
        v[cnt] = NULL;
    }
    free(copy);
    *n = cnt;
    return v;
}

static void strv_free(char **v)
{
    size_t i;
    for (i = 0; v != NULL && v[i] != NULL; i++)
        free(v[i]);
    free(v);
}

/*
 * Load the configuration with the env overrides, then `extra` (n_extra of
 * them).  Returns 0 or reports a failed test `what`.
 */
static int load_config(struct rhema_config *cfg, const char *backend, const char *what,
                       const char *const *extra, size_t n_extra)
{
    size_t n_env = 0, i, n = 0;
    char **env = split(getenv("RHEMA_CONFORMANCE_OVERRIDES"), ";", &n_env);
    const char **all = calloc(n_env + n_extra + 1, sizeof *all);
    char *err = NULL, msg[1024];
    int rc;
    if (all == NULL) {
        strv_free(env);
        tap(backend, what, RHEMA_CONF_FAIL, "out of memory");
        return -1;
    }
    for (i = 0; i < n_env; i++)
        all[n++] = env[i];
    for (i = 0; i < n_extra; i++)
        all[n++] = extra[i];
    rc = rhema_config_load(cfg, NULL, all, n, NULL, &err);
    free(all);
    strv_free(env);
    if (rc != 0) {
        snprintf(msg, sizeof msg, "rhema_config_load: %s", err ? err : rhema_strerror(rc));
        free(err);
        tap(backend, what, RHEMA_CONF_FAIL, msg);
        return -1;
    }
    return 0;
}

/* The storage vtable of a loaded plugin, loading it on first use. */
static const struct rhema_storage_plugin *load_backend(struct rhema_plugin_registry *reg,
                                                       const char *backend)
{
    const struct rhema_loaded_plugin *lp = NULL;
    char *err = NULL, msg[1024];
    const char *dir = getenv("RHEMA_PLUGIN_DIR");
    int rc = rhema_plugin_load(reg, backend, dir, RHEMA_KIND_STORAGE, &lp, &err);
    if (rc != 0) {
        snprintf(msg, sizeof msg, "RHEMA_PLUGIN_DIR=%s: %s", dir ? dir : "(unset)",
                 err ? err : rhema_strerror(rc));
        free(err);
        tap(backend, "load", RHEMA_CONF_FAIL, msg);
        return NULL;
    }
    tap(backend, "load", RHEMA_CONF_PASS, "");
    return &lp->vt.storage;
}

/* ---- sqlite-only checks ---- */

#define SQ_FAIL(...)                                                                              \
    do {                                                                                          \
        snprintf(msg, sizeof msg, __VA_ARGS__);                                                   \
        goto out;                                                                                 \
    } while (0)

/*
 * Open an instance with `overrides`, put data and take a lease, close,
 * reopen, and check that data, versions and the lease epoch survived.
 */
static void sqlite_durability(const struct rhema_storage_plugin *vt, const char *path_override)
{
    const struct rhema_host *host = rhema_host_get();
    const char *ov[] = {path_override};
    struct rhema_config cfg;
    const struct rhema_cfg *group;
    rhema_storage_instance *inst = NULL;
    rhema_storage_conn *c = NULL;
    struct rhema_storage_write w = {.size = sizeof(struct rhema_storage_write),
                                    .op = RHEMA_WRITE_PUT,
                                    .ns = "durable",
                                    .key = "k",
                                    .value = "v\0v",
                                    .value_len = 3};
    struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
    struct rhema_lease_info li;
    char *err = NULL, msg[1024] = "";
    uint64_t ver = 0, epoch = 0;
    int rc, round;

    if (load_config(&cfg, "sqlite", "durability across close and open", ov, 1) != 0)
        return;
    group = rhema_config_plugin_group(&cfg, RHEMA_KIND_STORAGE, "sqlite");
    for (round = 0; round < 2; round++) {
        rc = vt->open(host, group, &inst, &err);
        if (rc != 0)
            SQ_FAIL("open (round %d): %s: %s", round, rhema_strerror(rc), err ? err : "");
        rc = vt->connect(inst, &c, &err);
        if (rc != 0)
            SQ_FAIL("connect (round %d): %s: %s", round, rhema_strerror(rc), err ? err : "");
        if (round == 0) {
            if ((rc = vt->put(c, &w)) != 0)
                SQ_FAIL("put: %s: %s", rhema_strerror(rc), vt->errmsg(c));
            ver = w.new_version;
            rc = vt->lease(c, "durable-lease", "first", 60000, RHEMA_LEASE_ACQUIRE, &li);
            if (rc == 0)
                rc = vt->lease(c, "durable-lease", "first", 0, RHEMA_LEASE_RELEASE, NULL);
            if (rc != 0)
                SQ_FAIL("lease: %s: %s", rhema_strerror(rc), vt->errmsg(c));
            epoch = li.epoch;
        } else {
            if ((rc = vt->get(c, "durable", "k", &v)) != 0)
                SQ_FAIL("get after reopen: %s: %s", rhema_strerror(rc), vt->errmsg(c));
            if (v.len != 3 || memcmp(v.data, "v\0v", 3) != 0 || v.version != ver)
                SQ_FAIL("after reopen: %zu bytes, version %llu; want 3 bytes, version %llu",
                        v.len, (unsigned long long)v.version, (unsigned long long)ver);
            if ((rc = vt->put(c, &w)) != 0 || w.new_version <= ver)
                SQ_FAIL("put after reopen: %s, version %llu after %llu", rhema_strerror(rc),
                        (unsigned long long)w.new_version, (unsigned long long)ver);
            rc = vt->lease(c, "durable-lease", "second", 60000, RHEMA_LEASE_ACQUIRE, &li);
            if (rc != 0 || li.epoch <= epoch)
                SQ_FAIL("lease after reopen: %s, epoch %llu after %llu", rhema_strerror(rc),
                        (unsigned long long)li.epoch, (unsigned long long)epoch);
            vt->lease(c, "durable-lease", "second", 0, RHEMA_LEASE_RELEASE, NULL);
            vt->del(c, "durable", "k", RHEMA_VERSION_ANY);
        }
        vt->disconnect(c);
        c = NULL;
        vt->close(inst);
        inst = NULL;
    }
out:
    if (c != NULL)
        vt->disconnect(c);
    if (inst != NULL)
        vt->close(inst);
    free(err);
    rhema_config_release(&cfg);
    tap("sqlite", "durability across close and open", msg[0] ? RHEMA_CONF_FAIL : RHEMA_CONF_PASS,
        msg);
}

/* A bad `synchronous` is refused, naming where it was set. */
static void sqlite_bad_synchronous(const struct rhema_storage_plugin *vt, const char *path_override)
{
    const char *ov[] = {path_override, "persistence.sqlite.synchronous=sometimes"};
    struct rhema_config cfg;
    const struct rhema_cfg *group;
    rhema_storage_instance *inst = NULL;
    char *err = NULL, msg[1024] = "", where[512];
    int rc;

    if (load_config(&cfg, "sqlite", "bad synchronous refused", ov, 2) != 0)
        return;
    group = rhema_config_plugin_group(&cfg, RHEMA_KIND_STORAGE, "sqlite");
    snprintf(where, sizeof where, "%s", rhema_cfg_where(group, "synchronous"));
    rc = vt->open(rhema_host_get(), group, &inst, &err);
    if (rc == 0) {
        vt->close(inst);
        snprintf(msg, sizeof msg, "open accepted synchronous=sometimes");
    } else if (rc != RHEMA_EINVAL) {
        snprintf(msg, sizeof msg, "open returned %s, want EINVAL", rhema_strerror(rc));
    } else if (err == NULL || strstr(err, "synchronous") == NULL || strstr(err, where) == NULL) {
        snprintf(msg, sizeof msg, "message '%s' lacks 'synchronous' or '%s'", err ? err : "",
                 where);
    }
    free(err);
    rhema_config_release(&cfg);
    tap("sqlite", "bad synchronous refused", msg[0] ? RHEMA_CONF_FAIL : RHEMA_CONF_PASS, msg);
}

/*
 * The parent directories of path are created (mode 0750 before the umask),
 * and a backup opens as a database that holds the data.
 */
static void sqlite_dirs_and_backup(const struct rhema_storage_plugin *vt)
{
    char ov_path[700], ov_backup[700], dir[600], backup[600], msg[1024] = "", *err = NULL;
    const char *ov[1];
    struct rhema_config cfg;
    rhema_storage_instance *inst = NULL;
    rhema_storage_conn *c = NULL;
    struct rhema_storage_write w = {.size = sizeof(struct rhema_storage_write),
                                    .op = RHEMA_WRITE_PUT,
                                    .ns = "bk",
                                    .key = "k",
                                    .value = "v",
                                    .value_len = 1};
    struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
    struct stat st;
    int rc, have_cfg = 0;

    snprintf(dir, sizeof dir, "%s/deep/er", tmpdir);
    snprintf(ov_path, sizeof ov_path, "persistence.sqlite.path=%s/conf.db", dir);
    snprintf(backup, sizeof backup, "%s/backup.db", tmpdir);
    snprintf(ov_backup, sizeof ov_backup, "persistence.sqlite.path=%s", backup);

    ov[0] = ov_path;
    if (load_config(&cfg, "sqlite", "parent directory and backup", ov, 1) != 0)
        return;
    have_cfg = 1;
    rc = vt->open(rhema_host_get(), rhema_config_plugin_group(&cfg, RHEMA_KIND_STORAGE, "sqlite"),
                  &inst, &err);
    if (rc != 0)
        SQ_FAIL("open: %s: %s", rhema_strerror(rc), err ? err : "");
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        SQ_FAIL("%s was not created", dir);
    if ((st.st_mode & 07777 & ~0750) != 0)
        SQ_FAIL("%s has mode %o, want 0750 or narrower", dir, (unsigned)(st.st_mode & 07777));
    if ((rc = vt->connect(inst, &c, &err)) != 0)
        SQ_FAIL("connect: %s: %s", rhema_strerror(rc), err ? err : "");
    if ((rc = vt->put(c, &w)) != 0)
        SQ_FAIL("put: %s: %s", rhema_strerror(rc), vt->errmsg(c));
    if ((rc = vt->backup(c, backup, &err)) != 0)
        SQ_FAIL("backup: %s: %s", rhema_strerror(rc), err ? err : vt->errmsg(c));
    vt->disconnect(c);
    c = NULL;
    vt->close(inst);
    inst = NULL;
    rhema_config_release(&cfg);
    have_cfg = 0;

    /* the backup is a database of its own */
    ov[0] = ov_backup;
    if (load_config(&cfg, "sqlite", "parent directory and backup", ov, 1) != 0)
        return;
    have_cfg = 1;
    rc = vt->open(rhema_host_get(), rhema_config_plugin_group(&cfg, RHEMA_KIND_STORAGE, "sqlite"),
                  &inst, &err);
    if (rc == 0)
        rc = vt->connect(inst, &c, &err);
    if (rc != 0)
        SQ_FAIL("opening the backup: %s: %s", rhema_strerror(rc), err ? err : "");
    rc = vt->get(c, "bk", "k", &v);
    if (rc != 0 || v.len != 1 || memcmp(v.data, "v", 1) != 0 || v.version != w.new_version)
        SQ_FAIL("the backup lacks the data: %s", rhema_strerror(rc));
out:
    if (c != NULL)
        vt->disconnect(c);
    if (inst != NULL)
        vt->close(inst);
    if (have_cfg)
        rhema_config_release(&cfg);
    free(err);
    tap("sqlite", "parent directory and backup", msg[0] ? RHEMA_CONF_FAIL : RHEMA_CONF_PASS, msg);
}

static int count_threads(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static long long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_size : 0;
}

/*
 * Open a database of its own with `checkpoint` pages, write `n` values of
 * 4 KiB through one connection, and report what happened meanwhile: the
 * threads the instance added, the largest WAL seen, the database file's
 * size before close.  Then reopen and check every value.  0 or a message.
 */
static int sqlite_write_through_wal(const struct rhema_storage_plugin *vt, const char *checkpoint,
                                    int n, int *threads_added, long long *wal_max,
                                    long long *db_size, char *msg, size_t cap)
{
    char ov_path[700], ov_ckpt[100], db[600], wal[620], key[32], *err = NULL;
    const char *ov[] = {ov_path, ov_ckpt};
    static char value[4096];
    struct rhema_config cfg;
    rhema_storage_instance *inst = NULL;
    rhema_storage_conn *c = NULL;
    struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
    int rc = 0, i, round, before;

    snprintf(db, sizeof db, "%s/ckpt-%s.db", tmpdir, checkpoint);
    snprintf(wal, sizeof wal, "%s-wal", db);
    snprintf(ov_path, sizeof ov_path, "persistence.sqlite.path=%s", db);
    snprintf(ov_ckpt, sizeof ov_ckpt, "persistence.sqlite.checkpoint_pages=%s", checkpoint);
    msg[0] = '\0';
    if (load_config(&cfg, "sqlite", "background checkpoints", ov, 2) != 0)
        return -1;
    *wal_max = 0;
    for (round = 0; round < 2 && !msg[0]; round++) {
        before = count_threads();
        rc = vt->open(rhema_host_get(),
                      rhema_config_plugin_group(&cfg, RHEMA_KIND_STORAGE, "sqlite"), &inst, &err);
        if (rc == 0)
            rc = vt->connect(inst, &c, &err);
        if (rc != 0) {
            snprintf(msg, cap, "open/connect (round %d): %s: %s", round, rhema_strerror(rc),
                     err ? err : "");
            break;
        }
        for (i = 0; i < n && !msg[0]; i++) {
            snprintf(key, sizeof key, "k%06d", i);
            if (round == 0) {
                struct rhema_storage_write w = {.size = sizeof(struct rhema_storage_write),
                                                .op = RHEMA_WRITE_PUT,
                                                .ns = "ckpt",
                                                .key = key,
                                                .value = value,
                                                .value_len = sizeof value};
                memset(value, 'a' + i % 26, sizeof value);
                if ((rc = vt->put(c, &w)) != 0)
                    snprintf(msg, cap, "put %s: %s: %s", key, rhema_strerror(rc), vt->errmsg(c));
                if (file_size(wal) > *wal_max)
                    *wal_max = file_size(wal);
            } else if ((rc = vt->get(c, "ckpt", key, &v)) != 0 || v.len != sizeof value ||
                       ((const char *)v.data)[0] != 'a' + i % 26 ||
                       ((const char *)v.data)[sizeof value - 1] != 'a' + i % 26) {
                snprintf(msg, cap, "after reopen, %s: %s, %zu bytes", key, rhema_strerror(rc),
                         rc == 0 ? v.len : 0);
            }
        }
        if (round == 0) {
            *threads_added = count_threads() - before;
            *db_size = file_size(db);
        }
        vt->disconnect(c);
        c = NULL;
        vt->close(inst);
        inst = NULL;
    }
    free(err);
    rhema_config_release(&cfg);
    return msg[0] ? -1 : 0;
}

/*
 * checkpoint_pages: past it a checkpointer thread (started on first use)
 * copies the WAL into the database while the connection keeps writing, the
 * WAL stays bounded, and everything written is there after a reopen; 0
 * leaves checkpoints to SQLite (no thread); a negative value is refused.
 */
static void sqlite_checkpointer(const struct rhema_storage_plugin *vt)
{
    const char *test = "background checkpoints";
    const int n = 1500; /* 6 MiB of values */
    char msg[1024] = "", *err = NULL, where[512];
    int added = 0, rc;
    long long wal_max = 0, db_size = 0;

    if (sqlite_write_through_wal(vt, "16", n, &added, &wal_max, &db_size, msg, sizeof msg) != 0)
        goto out;
    if (added != 1)
        snprintf(msg, sizeof msg,
                 "checkpoint_pages=16: %d threads added, want 1 (the checkpointer)", added);
    else if (db_size < 3 << 20)
        snprintf(msg, sizeof msg,
                 "checkpoint_pages=16: database file %lld bytes after 6 MiB written: not "
                 "checkpointed while open",
                 db_size);
    else if (wal_max > 3 << 20)
        snprintf(msg, sizeof msg, "checkpoint_pages=16: the WAL grew to %lld bytes", wal_max);
    if (msg[0])
        goto out;
    if (sqlite_write_through_wal(vt, "0", 300, &added, &wal_max, &db_size, msg, sizeof msg) != 0)
        goto out;
    if (added != 0) {
        snprintf(msg, sizeof msg, "checkpoint_pages=0: %d threads added, want none", added);
        goto out;
    }
    {
        char ov_path[700];
        const char *ov[] = {ov_path, "persistence.sqlite.checkpoint_pages=-1"};
        struct rhema_config cfg;
        const struct rhema_cfg *group;
        rhema_storage_instance *inst = NULL;
        snprintf(ov_path, sizeof ov_path, "persistence.sqlite.path=%s/ckpt-bad.db", tmpdir);
        if (load_config(&cfg, "sqlite", test, ov, 2) != 0)
            return;
        group = rhema_config_plugin_group(&cfg, RHEMA_KIND_STORAGE, "sqlite");
        snprintf(where, sizeof where, "%s", rhema_cfg_where(group, "checkpoint_pages"));
        rc = vt->open(rhema_host_get(), group, &inst, &err);
        if (rc == 0) {
            vt->close(inst);
            snprintf(msg, sizeof msg, "open accepted checkpoint_pages=-1");
        } else if (rc != RHEMA_EINVAL || err == NULL || strstr(err, "checkpoint_pages") == NULL ||
                   strstr(err, where) == NULL) {
            snprintf(msg, sizeof msg,
                     "checkpoint_pages=-1: %s: '%s' (want EINVAL naming it and %s)",
                     rhema_strerror(rc), err ? err : "", where);
        }
        rhema_config_release(&cfg);
    }
out:
    free(err);
    tap("sqlite", test, msg[0] ? RHEMA_CONF_FAIL : RHEMA_CONF_PASS, msg);
}

/* ---- sqlite-only checks of rate() ---- */

#ifdef RHEMA_HAVE_SQLITE
#define RATE_HOUR_US 3600000000ull
#define RATE_PROCS 3       /* processes sharing one database file */
#define RATE_PROC_CALLS 40 /* calls each makes */
#define RATE_PROC_BURST 9  /* tolerance in intervals: exactly 10 allowed in all */
#define RATE_FULL_CALLS 3000
#define RATE_FULL_KEYS 16 /* rate_max_keys of the eviction check */
#define RATE_SLOT_SIZE 312 /* plugins/common/rate_file.h: a header page, then the slots */

/* An unconditional put of a text value (ttl_ms 0: none), for the read caches' checks. */
static int put_value(const struct rhema_storage_plugin *vt, rhema_storage_conn *c, const char *ns,
                     const char *key, const char *value, uint64_t ttl_ms)
{
    struct rhema_storage_write w = {.size = sizeof w,
                                    .op = RHEMA_WRITE_PUT,
                                    .ns = ns,
                                    .key = key,
                                    .value = value,
                                    .value_len = strlen(value),
                                    .ttl_ms = ttl_ms,
                                    .expected_version = RHEMA_VERSION_ANY};
    return vt->put(c, &w);
}

/*
 * Load the configuration with the overrides ov (where names the place in
 * messages), open backend's instance and connect; 0, or -1 with a message
 * in msg (and nothing left to release).
 */
static int open_backend(const struct rhema_storage_plugin *vt, struct rhema_config *cfg,
                        const char *backend, const char *what, const char *const *ov, size_t n_ov,
                        const char *where, rhema_storage_instance **inst, rhema_storage_conn **c,
                        char *msg, size_t cap)
{
    char *err = NULL;
    int rc;
    *inst = NULL;
    *c = NULL;
    if (load_config(cfg, backend, what, ov, n_ov) != 0) {
        snprintf(msg, cap, "configuration");
        return -1;
    }
    rc = vt->open(rhema_host_get(), rhema_config_plugin_group(cfg, RHEMA_KIND_STORAGE, backend),
                  inst, &err);
    if (rc == 0 && (rc = vt->connect(*inst, c, &err)) != 0) {
        vt->close(*inst);
        *inst = NULL;
    }
    if (rc != 0) {
        snprintf(msg, cap, "open/connect %s: %s: %s", where, rhema_strerror(rc), err ? err : "");
        free(err);
        rhema_config_release(cfg);
        return -1;
    }
    return 0;
}

/* Open an instance on db (with rate_max_keys when > 0) and connect; 0 or a message in msg. */
static int sq_open_keys(const struct rhema_storage_plugin *vt, struct rhema_config *cfg,
                        const char *db, int max_keys, rhema_storage_instance **inst,
                        rhema_storage_conn **c, char *msg, size_t cap)
{
    char ov_path[700], ov_keys[100];
    const char *ov[] = {ov_path, ov_keys};
    snprintf(ov_path, sizeof ov_path, "persistence.sqlite.path=%s", db);
    snprintf(ov_keys, sizeof ov_keys, "persistence.sqlite.rate_max_keys=%d", max_keys);
    return open_backend(vt, cfg, "sqlite", "rate", ov, max_keys > 0 ? 2 : 1, db, inst, c, msg,
                        cap);
}

static int sq_open_at(const struct rhema_storage_plugin *vt, struct rhema_config *cfg,
                      const char *db, rhema_storage_instance **inst, rhema_storage_conn **c,
                      char *msg, size_t cap)
{
    return sq_open_keys(vt, cfg, db, 0, inst, c, msg, cap);
}

static void sq_close_at(const struct rhema_storage_plugin *vt, struct rhema_config *cfg,
                        rhema_storage_instance *inst, rhema_storage_conn *c)
{
    vt->disconnect(c);
    vt->close(inst);
    rhema_config_release(cfg);
}

static int rate_once(const struct rhema_storage_plugin *vt, rhema_storage_conn *c, const char *key,
                     uint64_t interval, uint64_t tolerance, int64_t now, struct rhema_rate_query *q)
{
    static struct rhema_rate_window w;
    w.interval_us = interval;
    w.tolerance_us = tolerance;
    memset(q, 0, sizeof *q);
    q->size = sizeof *q;
    q->key = key;
    q->windows = &w;
    q->n = 1;
    q->now_us = now != 0 ? now : (int64_t)(rhema_host_get()->realtime_ns() / 1000u);
    return vt->rate(c, q);
}

/* One value of a query on db (opened by sqlite3 itself); -1 on error. */
static long long sq_query(const char *db, const char *sql)
{
    sqlite3 *h = NULL;
    sqlite3_stmt *st = NULL;
    long long v = -1;
    if (sqlite3_open_v2(db, &h, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(h, sql, -1, &st, NULL) == SQLITE_OK) {
        int rc = sqlite3_step(st);
        v = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : rc == SQLITE_DONE ? 0 : -1;
    }
    sqlite3_finalize(st);
    sqlite3_close(h);
    return v;
}

/*
 * The table rhema_rate (and its index) that an earlier version kept rate()
 * state in is dropped when the plugin opens the database, and the state
 * lives in <db>-rate, mode 0600.
 */
static void sqlite_rate_old_table(const struct rhema_storage_plugin *vt)
{
    struct rhema_config cfg;
    rhema_storage_instance *inst = NULL;
    rhema_storage_conn *c = NULL;
    struct rhema_rate_query q;
    struct stat st;
    char db[600], rfile[620], msg[1024] = "";
    int rc;
    snprintf(db, sizeof db, "%s/rate-old.db", tmpdir);
    snprintf(rfile, sizeof rfile, "%s-rate", db);
    if (sq_open_at(vt, &cfg, db, &inst, &c, msg, sizeof msg) != 0)
        goto out;
    sq_close_at(vt, &cfg, inst, c);
    if (sq_query(db, "CREATE TABLE rhema_rate(key TEXT NOT NULL PRIMARY KEY, n INTEGER NOT NULL,"
                     " t0 INTEGER NOT NULL, t1 INTEGER NOT NULL, t2 INTEGER NOT NULL,"
                     " t3 INTEGER NOT NULL, rest INTEGER NOT NULL, ok INTEGER NOT NULL)"
                     " WITHOUT ROWID") != 0 ||
        sq_query(db, "CREATE INDEX rhema_rate_rest ON rhema_rate(rest)") != 0 ||
        sq_query(db, "INSERT INTO rhema_rate VALUES ('old', 1, 1, 1, 1, 1, 1, 1)") != 0 ||
        sq_query(db, "SELECT count(*) FROM sqlite_master WHERE name LIKE 'rhema_rate%'") != 2) {
        snprintf(msg, sizeof msg, "could not make a database with the old rhema_rate table");
        goto out;
    }
    if (sq_open_at(vt, &cfg, db, &inst, &c, msg, sizeof msg) != 0)
        goto out;
    if ((rc = rate_once(vt, c, "old-db", RATE_HOUR_US, 0, 0, &q)) != 0 || q.allowed != 1)
        snprintf(msg, sizeof msg, "rate on a database of an earlier version: %s, allowed %d: %s",
                 rhema_strerror(rc), q.allowed, vt->errmsg(c));
    sq_close_at(vt, &cfg, inst, c);
    if (!msg[0] &&
        sq_query(db, "SELECT count(*) FROM sqlite_master WHERE name LIKE 'rhema_rate%'") != 0)
        snprintf(msg, sizeof msg, "rhema_rate or its index is still in the database");
    else if (!msg[0] && (stat(rfile, &st) != 0 || !S_ISREG(st.st_mode)))
        snprintf(msg, sizeof msg, "no rate file %s", rfile);
    else if (!msg[0] && (st.st_mode & 0777) != 0600)
        snprintf(msg, sizeof msg, "%s has mode %o, want 600", rfile, (unsigned)(st.st_mode & 0777));
out:
    tap("sqlite", "rate: an earlier version's rhema_rate table is dropped, the state in <db>-rate",
        msg[0] ? RHEMA_CONF_FAIL : RHEMA_CONF_PASS, msg);
}

/*
 * RATE_PROCS processes, each with its own instance and connection on one
 * database file, at once on one key: exactly RATE_PROC_BURST + 1 allowed.
 */
static void sqlite_rate_processes(const struct rhema_storage_plugin *vt)
{
    struct rhema_config cfg;
    rhema_storage_instance *inst = NULL;
    rhema_storage_conn *c = NULL;
    struct rhema_rate_query q;
    char db[600], msg[1024] = "";
    pid_t pid[RATE_PROCS];
    int go[2], i, started = 0, total = 0, failed = 0;
    snprintf(db, sizeof db, "%s/rate-procs.db", tmpdir);
    if (sq_open_at(vt, &cfg, db, &inst, &c, msg, sizeof msg) != 0) /* creates the schema */
        goto out;
    sq_close_at(vt, &cfg, inst, c);
    if (pipe(go) != 0) {
        snprintf(msg, sizeof msg, "pipe: %s", strerror(errno));
        goto out;
    }
    fflush(stdout);
    for (i = 0; i < RATE_PROCS; i++) {
        pid[i] = fork();
        if (pid[i] < 0)
            break;
        if (pid[i] == 0) {
            char b, m[256];
            int n = 0, k, rc = 0;
            close(go[1]);
            if (sq_open_at(vt, &cfg, db, &inst, &c, m, sizeof m) != 0)
                _exit(200);
            (void)!read(go[0], &b, 1); /* EOF when the parent closes it: all start together */
            for (k = 0; k < RATE_PROC_CALLS && rc == 0; k++) {
                rc =
                    rate_once(vt, c, "shared", RATE_HOUR_US, RATE_PROC_BURST * RATE_HOUR_US, 0, &q);
                n += rc == 0 && q.allowed == 1;
            }
            if (rc != 0)
                fprintf(stderr, "# child %d: %s: %s\n", i, rhema_strerror(rc), vt->errmsg(c));
            sq_close_at(vt, &cfg, inst, c);
            _exit(rc != 0 ? 201 : n);
        }
        started++;
    }
    close(go[0]);
    close(go[1]);
    for (i = 0; i < started; i++) {
        int st = 0;
        if (waitpid(pid[i], &st, 0) != pid[i] || !WIFEXITED(st) || WEXITSTATUS(st) > 100)
            failed++;
        else
            total += WEXITSTATUS(st);
    }
    if (started != RATE_PROCS || failed)
        snprintf(msg, sizeof msg, "%d of %d processes started, %d failed", started, RATE_PROCS,
                 failed);
    else if (total != RATE_PROC_BURST + 1)
        snprintf(msg, sizeof msg, "%d requests allowed across %d processes, want exactly %d", total,
                 RATE_PROCS, RATE_PROC_BURST + 1);
out:
    tap("sqlite", "rate: processes sharing the file share one limit",
        msg[0] ? RHEMA_CONF_FAIL : RHEMA_CONF_PASS, msg);
}

/*
 * A process killed (SIGKILL) while it holds the rate file's lock leaves it
 * unlocked: the kernel drops an OFD lock with its last descriptor.  A
 * child takes the lock, the parent checks that it is held, kills the
 * child, and then a rate() (in another child, bounded by alarm()) must
 * answer.
 */
static void sqlite_rate_crashed_holder(const struct rhema_storage_plugin *vt)
{
    struct rhema_config cfg;
    rhema_storage_instance *inst = NULL;
    rhema_storage_conn *c = NULL;
    struct rhema_rate_query q;
    struct flock fl;
    char db[600], rfile[620], msg[1024] = "", b;
    int ready[2], fd = -1, st = 0;
    pid_t holder = -1, caller;
    snprintf(db, sizeof db, "%s/rate-crash.db", tmpdir);
    snprintf(rfile, sizeof rfile, "%s-rate", db);
    if (sq_open_at(vt, &cfg, db, &inst, &c, msg, sizeof msg) != 0) /* makes the rate file */
        goto out;
    sq_close_at(vt, &cfg, inst, c);
    if (pipe(ready) != 0) {
        snprintf(msg, sizeof msg, "pipe: %s", strerror(errno));
        goto out;
    }
    fflush(stdout);
    holder = fork();
    if (holder == 0) {
        struct flock w = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
        int hfd = open(rfile, O_RDWR);
        if (hfd < 0 || fcntl(hfd, F_OFD_SETLKW, &w) != 0)
            _exit(1);
        (void)!write(ready[1], "x", 1);
        for (;;)
            pause();
    }
    close(ready[1]);
    if (holder < 0 || read(ready[0], &b, 1) != 1) {
        close(ready[0]);
        snprintf(msg, sizeof msg, "the child could not take the lock");
        goto out;
    }
    close(ready[0]);
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    if ((fd = open(rfile, O_RDWR)) < 0 || fcntl(fd, F_OFD_GETLK, &fl) != 0 ||
        fl.l_type == F_UNLCK) {
        snprintf(msg, sizeof msg, "the child's lock on %s is not seen", rfile);
        goto out;
    }
    kill(holder, SIGKILL);
    waitpid(holder, NULL, 0);
    holder = -1;
    fflush(stdout);
    caller = fork();
    if (caller == 0) {
        char m[256];
        alarm(60); /* a lock left behind would block forever */
        if (sq_open_at(vt, &cfg, db, &inst, &c, m, sizeof m) != 0)
            _exit(2);
        int rc = rate_once(vt, c, "after-crash", RATE_HOUR_US, 0, 0, &q);
        _exit(rc == 0 && q.allowed == 1 ? 0 : 3);
    }
    if (caller < 0 || waitpid(caller, &st, 0) != caller)
        snprintf(msg, sizeof msg, "fork/wait of the caller failed");
    else if (WIFSIGNALED(st))
        snprintf(msg, sizeof msg, "rate() after the holder was killed: signal %d (blocked?)",
                 WTERMSIG(st));
    else if (WEXITSTATUS(st) != 0)
        snprintf(msg, sizeof msg, "rate() after the holder was killed failed (%d)",
                 WEXITSTATUS(st));
out:
    if (holder > 0) {
        kill(holder, SIGKILL);
        waitpid(holder, NULL, 0);
    }
    if (fd >= 0)
        close(fd);
    tap("sqlite", "rate: a process killed holding the rate file's lock blocks nobody",
        msg[0] ? RHEMA_CONF_FAIL : RHEMA_CONF_PASS, msg);
}

/* Replace the rate file by `len` bytes of `fill` (0: cut it to its first len bytes). */
static int spoil(const char *rfile, size_t len, int fill)
{
    char buf[4096];
    int fd = open(rfile, fill ? O_WRONLY | O_TRUNC : O_WRONLY);
    if (fd < 0)
        return -1;
    memset(buf, fill, sizeof buf);
    for (size_t done = 0; fill && done < len; done += sizeof buf)
        if (write(fd, buf, len - done < sizeof buf ? len - done : sizeof buf) < 0)
            break;
    if (!fill && ftruncate(fd, (off_t)len) != 0) {
        close(fd);
        return -1;
    }
    return close(fd);
}

/*
 * A rate file cut short (its header kept), or overwritten with garbage of its own size, is
 * reinitialized at open: rate() works, the party starts afresh, and the
 * file has its size again.
 */
static void sqlite_rate_spoilt_file(const struct rhema_storage_plugin *vt)
{
    struct rhema_config cfg;
    rhema_storage_instance *inst = NULL;
    rhema_storage_conn *c = NULL;
    struct rhema_rate_query q;
    char db[600], rfile[620], msg[1024] = "";
    long long size = 0;
    int rc, round;
    snprintf(db, sizeof db, "%s/rate-spoilt.db", tmpdir);
    snprintf(rfile, sizeof rfile, "%s-rate", db);
    for (round = 0; round < 3 && !msg[0]; round++) {
        if (sq_open_at(vt, &cfg, db, &inst, &c, msg, sizeof msg) != 0)
            break;
        /* tolerance 0: a second call within the hour is refused unless the state was reset */
        rc = rate_once(vt, c, "spoilt", RATE_HOUR_US, 0, 0, &q);
        if (rc != 0 || q.allowed != 1)
            snprintf(msg, sizeof msg, "round %d: first call: %s, allowed %d: %s", round,
                     rhema_strerror(rc), q.allowed, vt->errmsg(c));
        else if ((rc = rate_once(vt, c, "spoilt", RATE_HOUR_US, 0, 0, &q)) != 0 || q.allowed != 0)
            snprintf(msg, sizeof msg, "round %d: second call: %s, allowed %d (want refused)",
                     round, rhema_strerror(rc), q.allowed);
        sq_close_at(vt, &cfg, inst, c);
        if (round == 0)
            size = file_size(rfile);
        if (!msg[0] && round < 2 &&
            spoil(rfile, round == 0 ? 4096 + 100 : (size_t)size, round == 0 ? 0 : 0x5a) != 0)
            snprintf(msg, sizeof msg, "could not spoil %s: %s", rfile, strerror(errno));
    }
    if (!msg[0] && (size <= 4096 || file_size(rfile) != size))
        snprintf(msg, sizeof msg, "%s is %lld bytes after reinitialization, was %lld", rfile,
                 file_size(rfile), size);
    tap("sqlite", "rate: a truncated or garbage rate file is reinitialized",
        msg[0] ? RHEMA_CONF_FAIL : RHEMA_CONF_PASS, msg);
}

/*
 * rate_max_keys sets the table's size: with 16 slots, RATE_FULL_CALLS new
 * parties at once each take the slot of a party that rests sooner than
 * "kept" (whose tat runs a day ahead), so "kept" is never forgotten: a
 * second call of it is still refused.  The file is one header page and 16
 * slots.
 */
static void sqlite_rate_full(const struct rhema_storage_plugin *vt)
{
    struct rhema_config cfg;
    rhema_storage_instance *inst = NULL;
    rhema_storage_conn *c = NULL;
    struct rhema_rate_query q;
    char db[600], rfile[620], key[32], msg[1024] = "";
    int64_t now = (int64_t)(rhema_host_get()->realtime_ns() / 1000u);
    int i, rc = 0, allowed = 0;
    snprintf(db, sizeof db, "%s/rate-full.db", tmpdir);
    snprintf(rfile, sizeof rfile, "%s-rate", db);
    if (sq_open_keys(vt, &cfg, db, RATE_FULL_KEYS, &inst, &c, msg, sizeof msg) != 0)
        goto out;
    rc = rate_once(vt, c, "kept", 24 * RATE_HOUR_US, 0, now, &q);
    for (i = 0; i < RATE_FULL_CALLS && rc == 0; i++) {
        snprintf(key, sizeof key, "party-%d", i);
        rc = rate_once(vt, c, key, RATE_HOUR_US, 0, now, &q);
        allowed += rc == 0 && q.allowed == 1;
    }
    if (rc != 0)
        snprintf(msg, sizeof msg, "rate: %s: %s", rhema_strerror(rc), vt->errmsg(c));
    else if (allowed != RATE_FULL_CALLS)
        snprintf(msg, sizeof msg, "%d of %d new parties allowed", allowed, RATE_FULL_CALLS);
    else if ((rc = rate_once(vt, c, "kept", 24 * RATE_HOUR_US, 0, now + 1, &q)) != 0 ||
             q.allowed != 0)
        snprintf(msg, sizeof msg, "\"kept\" was forgotten (allowed %d, %s)", q.allowed,
                 rhema_strerror(rc));
    else if ((rc = rate_once(vt, c, "party-0", RATE_HOUR_US, 0, now + 1, &q)) != 0 ||
             q.allowed != 1)
        snprintf(msg, sizeof msg, "party-0 was remembered in a full table of %d (allowed %d)",
                 RATE_FULL_KEYS, q.allowed);
    else if (file_size(rfile) != 4096 + RATE_FULL_KEYS * RATE_SLOT_SIZE)
        snprintf(msg, sizeof msg, "%s is %lld bytes, want %d", rfile, file_size(rfile),
                 4096 + RATE_FULL_KEYS * RATE_SLOT_SIZE);
    sq_close_at(vt, &cfg, inst, c);
out:
    tap("sqlite", "rate: rate_max_keys bounds the table, a full one forgets what rests first",
        msg[0] ? RHEMA_CONF_FAIL : RHEMA_CONF_PASS, msg);
}
/*
 * Settings of the rate file refused at open with EINVAL, naming the key
 * and where it was set: rate_max_keys out of 16..16777216 (or not an
 * integer), and path ':memory:' (each connection would get a database of
 * its own).
 */
static void sqlite_rate_bad_settings(const struct rhema_storage_plugin *vt)
{
    static const char *const bad[][2] = {
        {"persistence.sqlite.rate_max_keys=15", "rate_max_keys"},
        {"persistence.sqlite.rate_max_keys=16777217", "rate_max_keys"},
        {"persistence.sqlite.rate_max_keys=\"many\"", "rate_max_keys"},
        {"persistence.sqlite.path=\":memory:\"", "path"},
    };
    char ov_path[700], msg[1024] = "";
    snprintf(ov_path, sizeof ov_path, "persistence.sqlite.path=%s/rate-bad.db", tmpdir);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0] && !msg[0]; i++) {
        const char *ov[] = {ov_path, bad[i][0]};
        struct rhema_config cfg;
        rhema_storage_instance *inst = NULL;
        char *err = NULL, where[512];
        if (load_config(&cfg, "sqlite", "rate: bad rate settings refused", ov, 2) != 0)
            return;
        const struct rhema_cfg *group = rhema_config_plugin_group(&cfg, RHEMA_KIND_STORAGE, "sqlite");
        snprintf(where, sizeof where, "%s", rhema_cfg_where(group, bad[i][1]));
        int rc = vt->open(rhema_host_get(), group, &inst, &err);
        if (rc == 0) {
            vt->close(inst);
            snprintf(msg, sizeof msg, "open accepted %s", bad[i][0]);
        } else if (rc != RHEMA_EINVAL || err == NULL || strstr(err, bad[i][1]) == NULL ||
                   strstr(err, where) == NULL) {
            snprintf(msg, sizeof msg, "%s: %s: '%s' (want EINVAL naming %s and %s)", bad[i][0],
                     rhema_strerror(rc), err ? err : "", bad[i][1], where);
        }
        free(err);
        rhema_config_release(&cfg);
    }
    tap("sqlite", "rate: bad rate settings refused", msg[0] ? RHEMA_CONF_FAIL : RHEMA_CONF_PASS,
        msg);
}

/* get ns "rc" key on c gives want (NULL: not found); else a message in msg. */
static int rc_expect(const struct rhema_storage_plugin *vt, rhema_storage_conn *c, const char *key,
                     const char *want, const char *when, char *msg, size_t cap)
{
    struct rhema_storage_value v = {.size = sizeof v};
    int rc = vt->get(c, "rc", key, &v);
    if (want == NULL && rc == RHEMA_ENOTFOUND)
        return 0;
    if (want != NULL && rc == 0 && v.len == strlen(want) && memcmp(v.data, want, v.len) == 0)
        return 0;
    snprintf(msg, cap, "%s: get(%s) gave %s '%.*s', want %s", when, key, rhema_strerror(rc),
             rc == 0 ? (int)v.len : 0, rc == 0 ? (const char *)v.data : "",
             want ? want : "not found");
    return -1;
}

/*
 * The read cache answers reads from memory at one state of the database
 * (the wal-index header): whoever changes the database -- another
 * instance, SQLite itself -- must be seen by the next get().  Each round
 * reads first, so that the value is cached when the change comes.
 */
static void sqlite_read_cache(const struct rhema_storage_plugin *vt)
{
    struct rhema_config cfg1, cfg2;
    rhema_storage_instance *in1 = NULL, *in2 = NULL;
    rhema_storage_conn *c1 = NULL, *c2 = NULL;
    char db[600], msg[1024] = "", val[64], sql[256];
    const char *test = "read cache: another instance's writes and deletes are seen";
    int rc;
    char ov_path[700];
    /* no checkpointer: its connection would keep -shm for the reconnect check */
    const char *ov[] = {ov_path, "persistence.sqlite.checkpoint_pages=0"};
    snprintf(db, sizeof db, "%s/read-cache.db", tmpdir);
    snprintf(ov_path, sizeof ov_path, "persistence.sqlite.path=%s", db);
    if (open_backend(vt, &cfg1, "sqlite", "read cache", ov, 2, db, &in1, &c1, msg, sizeof msg) !=
            0 ||
        open_backend(vt, &cfg2, "sqlite", "read cache", ov, 2, db, &in2, &c2, msg, sizeof msg) != 0)
        goto out;
    if ((rc = put_value(vt, c1, "rc", "k", "one", 0)) != 0) {
        snprintf(msg, sizeof msg, "put: %s", rhema_strerror(rc));
        goto out;
    }
    char cur[64] = "one";
    for (int round = 0; round < 3 && !msg[0]; round++) {
        snprintf(val, sizeof val, "two-%d", round);
        if (rc_expect(vt, c1, "k", cur, "before", msg, sizeof msg) != 0) /* cached now */
            break;
        if ((rc = put_value(vt, c2, "rc", "k", val, 0)) != 0)
            snprintf(msg, sizeof msg, "put on the second instance: %s", rhema_strerror(rc));
        else
            rc_expect(vt, c1, "k", val, "after the second instance's put", msg, sizeof msg);
        snprintf(cur, sizeof cur, "%s", val);
    }
    if (!msg[0] && rc_expect(vt, c1, "gone", NULL, "a missing key", msg, sizeof msg) == 0) {
        if ((rc = put_value(vt, c2, "rc", "gone", "here", 0)) != 0)
            snprintf(msg, sizeof msg, "put on the second instance: %s", rhema_strerror(rc));
        else if (rc_expect(vt, c1, "gone", "here", "a key read absent, then put by the second "
                           "instance", msg, sizeof msg) == 0 &&
                 (rc = vt->del(c2, "rc", "gone", RHEMA_VERSION_ANY)) != 0)
            snprintf(msg, sizeof msg, "del on the second instance: %s", rhema_strerror(rc));
        else if (!msg[0])
            rc_expect(vt, c1, "gone", NULL, "after the second instance's delete", msg, sizeof msg);
    }
    if (!msg[0] && rc_expect(vt, c1, "mine", NULL, "a missing key", msg, sizeof msg) == 0) {
        if ((rc = put_value(vt, c1, "rc", "mine", "m1", 0)) != 0)
            snprintf(msg, sizeof msg, "put: %s", rhema_strerror(rc));
        else if (rc_expect(vt, c1, "mine", "m1", "own put of a key read absent", msg,
                           sizeof msg) == 0 &&
                 rc_expect(vt, c2, "mine", "m1", "the other instance", msg, sizeof msg) == 0 &&
                 (rc = put_value(vt, c1, "rc", "mine", "m2", 0)) == 0)
            rc_expect(vt, c2, "mine", "m2", "the other instance, after a second put", msg,
                      sizeof msg);
    }
    tap("sqlite", test, msg[0] ? RHEMA_CONF_FAIL : RHEMA_CONF_PASS, msg);

    test = "read cache: a change made with SQLite itself is seen";
    if (msg[0])
        goto out;
    const char *steps[][2] = {
        {"UPDATE kv SET value = CAST('raw' AS BLOB), version = version + 1000 WHERE ns = 'rc' "
         "AND key = 'k'", "raw"},
        {"DELETE FROM kv WHERE ns = 'rc' AND key = 'k'", NULL},
        {"INSERT INTO kv(ns, key, value, version) VALUES ('rc', 'k', CAST('back' AS BLOB), "
         "5000000)", "back"},
    };
    for (size_t i = 0; i < sizeof steps / sizeof steps[0] && !msg[0]; i++) {
        if (rc_expect(vt, c1, "k", i == 0 ? "two-2" : steps[i - 1][1], "before", msg,
                      sizeof msg) != 0)
            break;
        snprintf(sql, sizeof sql, "%s", steps[i][0]);
        if (sq_query(db, sql) != 0)
            snprintf(msg, sizeof msg, "%s: failed", sql);
        else
            rc_expect(vt, c1, "k", steps[i][1], sql, msg, sizeof msg);
    }
    tap("sqlite", test, msg[0] ? RHEMA_CONF_FAIL : RHEMA_CONF_PASS, msg);

    test = "read cache: after every connection closed, the next one reads the new state";
    if (msg[0])
        goto out;
    {
        /*
         * With no connection left, SQLite removes -shm; a cache still at
         * the old file's header would never see a change again.
         */
        char *err = NULL;
        if ((rc = put_value(vt, c1, "rc", "k", "before", 0)) != 0 ||
            rc_expect(vt, c1, "k", "before", "cached", msg, sizeof msg) != 0) {
            if (!msg[0])
                snprintf(msg, sizeof msg, "put: %s", rhema_strerror(rc));
        } else {
            vt->disconnect(c1);
            c1 = NULL;
            if ((rc = put_value(vt, c2, "rc", "k", "after", 0)) != 0)
                snprintf(msg, sizeof msg, "put on the second instance: %s", rhema_strerror(rc));
            sq_close_at(vt, &cfg2, in2, c2); /* the last connection: -shm goes */
            c2 = NULL;
            if (!msg[0] && (rc = vt->connect(in1, &c1, &err)) != 0)
                snprintf(msg, sizeof msg, "connect again: %s: %s", rhema_strerror(rc),
                         err ? err : "");
            else if (!msg[0] &&
                     rc_expect(vt, c1, "k", "after", "connected again", msg, sizeof msg) == 0 &&
                     open_backend(vt, &cfg2, "sqlite", "read cache", ov, 2, db, &in2, &c2, msg,
                                  sizeof msg) == 0) {
                /* the new -shm's header moves; the old one's would not */
                if ((rc = put_value(vt, c2, "rc", "k", "later", 0)) != 0)
                    snprintf(msg, sizeof msg, "put: %s", rhema_strerror(rc));
                else
                    rc_expect(vt, c1, "k", "later", "a write after the reconnect", msg,
                              sizeof msg);
            }
            free(err);
        }
    }
    tap("sqlite", test, msg[0] ? RHEMA_CONF_FAIL : RHEMA_CONF_PASS, msg);

    test = "read cache: a cached value stops at its TTL";
    if (msg[0])
        goto out;
    if ((rc = put_value(vt, c1, "rc", "ttl", "brief", 1000)) != 0)
        snprintf(msg, sizeof msg, "put with a TTL: %s", rhema_strerror(rc));
    else if (rc_expect(vt, c1, "ttl", "brief", "within its TTL", msg, sizeof msg) == 0 &&
             rc_expect(vt, c1, "ttl", "brief", "within its TTL, again", msg, sizeof msg) == 0) {
        struct timespec nap = {1, 200000000};
        nanosleep(&nap, NULL);
        rc_expect(vt, c1, "ttl", NULL, "1.2 s after a put with a 1 s TTL", msg, sizeof msg);
    }
out:
    tap("sqlite", test, msg[0] ? RHEMA_CONF_FAIL : RHEMA_CONF_PASS, msg);
    if (c2)
        sq_close_at(vt, &cfg2, in2, c2);
    if (c1)
        sq_close_at(vt, &cfg1, in1, c1);
    else if (in1) /* connect again failed */
        sq_close_at(vt, &cfg1, in1, NULL);
}
#endif /* RHEMA_HAVE_SQLITE */

/* ---- rate() on the server backends: what only the server shows ---- */

#if defined(RHEMA_HAVE_HIREDIS) || defined(RHEMA_HAVE_LIBPQ)
/* Open `backend` with the env overrides plus `extra`; 0 or a message. */
static int srv_open(const struct rhema_storage_plugin *vt, const char *backend,
                    struct rhema_config *cfg, const char *extra, rhema_storage_instance **inst,
                    rhema_storage_conn **c, char *msg, size_t cap)
{
    const char *ov[1] = {extra};
    char *err = NULL;
    int rc;
    *inst = NULL;
    *c = NULL;
    if (load_config(cfg, backend, "rate", ov, extra != NULL) != 0) {
        snprintf(msg, cap, "configuration");
        return -1;
    }
    rc = vt->open(rhema_host_get(), rhema_config_plugin_group(cfg, RHEMA_KIND_STORAGE, backend),
                  inst, &err);
    if (rc == 0 && (rc = vt->connect(*inst, c, &err)) != 0) {
        vt->close(*inst);
        *inst = NULL;
    }
    if (rc != 0) {
        snprintf(msg, cap, "open/connect: %s: %s", rhema_strerror(rc), err ? err : "");
        free(err);
        rhema_config_release(cfg);
        return -1;
    }
    return 0;
}

static int srv_rate(const struct rhema_storage_plugin *vt, rhema_storage_conn *c, const char *key,
                    uint64_t interval, struct rhema_rate_query *q)
{
    static struct rhema_rate_window w;
    w.interval_us = interval;
    w.tolerance_us = 0;
    memset(q, 0, sizeof *q);
    q->size = sizeof *q;
    q->key = key;
    q->windows = &w;
    q->n = 1;
    q->now_us = (int64_t)(rhema_host_get()->realtime_ns() / 1000u);
    return vt->rate(c, q);
}
#endif

#if defined(RHEMA_HAVE_HIREDIS) || defined(RHEMA_HAVE_LIBPQ)
/*
 * watch() after a lost channel: the server side of the plugin's listening
 * connection is killed (as a server restart would end it) by kill(), which
 * the backend's own check supplies; the plugin must reconnect by itself and
 * call notify() once it is back, and a sequenced batch made after that must
 * be notified again.  Bounded by WATCH_LOST_MS per wait; never a timing
 * assertion: a failure only when the notification never comes.
 */
#define WATCH_LOST_MS 10000

struct watch_ctr {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned long n;
};

static void watch_ctr_notify(void *arg)
{
    struct watch_ctr *w = arg;
    pthread_mutex_lock(&w->mu);
    w->n++;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static unsigned long watch_ctr_get(struct watch_ctr *w)
{
    unsigned long n;
    pthread_mutex_lock(&w->mu);
    n = w->n;
    pthread_mutex_unlock(&w->mu);
    return n;
}

/* 1 when the count went above `after` within WATCH_LOST_MS. */
static int watch_ctr_wait(struct watch_ctr *w, unsigned long after)
{
    struct timespec until;
    int more;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += WATCH_LOST_MS / 1000;
    pthread_mutex_lock(&w->mu);
    while (w->n <= after && pthread_cond_timedwait(&w->cv, &w->mu, &until) == 0)
        ;
    more = w->n > after;
    pthread_mutex_unlock(&w->mu);
    return more;
}

/*
 * Open the backend, watch(), kill its listening connection with kill(arg)
 * (0 or a message in msg), wait for the notify of the reconnect, then
 * for that of a sequenced batch.  One TAP line.
 */
static void watch_lost_channel(const struct rhema_storage_plugin *vt, const char *backend,
                               int (*kill)(void *arg, char *msg, size_t cap), void *arg)
{
    struct rhema_config cfg;
    rhema_storage_instance *inst = NULL;
    rhema_storage_conn *c = NULL;
    struct watch_ctr ctr = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    char msg[1024] = "", ns[64], *err = NULL;
    unsigned long before;
    int rc, watching = 0, opened = 0;

    if (vt->base.abi_minor < 3 || vt->watch == NULL) {
        tap(backend, "watch: notify after the channel was lost", RHEMA_CONF_SKIP, "no watch()");
        return;
    }
    snprintf(ns, sizeof ns, "wlost%ld", (long)getpid());
    if (srv_open(vt, backend, &cfg, NULL, &inst, &c, msg, sizeof msg) != 0)
        goto out;
    opened = 1;
    if ((rc = vt->watch(inst, watch_ctr_notify, &ctr, &err)) != 0) {
        snprintf(msg, sizeof msg, "watch: %s: %s", rhema_strerror(rc), err ? err : "");
        free(err);
        goto out;
    }
    watching = 1;
    before = watch_ctr_get(&ctr);
    if (kill(arg, msg, sizeof msg) != 0)
        goto out;
    if (!watch_ctr_wait(&ctr, before)) {
        snprintf(msg, sizeof msg, "no notify within %d ms of the listening connection's loss",
                 WATCH_LOST_MS);
        goto out;
    }
    {
        struct rhema_storage_write w[2] = {
            {.size = sizeof w[0], .op = RHEMA_WRITE_PUT, .ns = ns, .key = "k", .value = "v",
             .value_len = 1},
            {.size = sizeof w[0], .op = RHEMA_WRITE_PUT, .ns = ns, .key = "rec/", .value = "e",
             .value_len = 1, .flags = RHEMA_WRITE_SEQUENCED}};
        char rec[64];
        before = watch_ctr_get(&ctr);
        if ((rc = vt->batch(c, w, 2)) != 0) {
            snprintf(msg, sizeof msg, "batch: %s: %s", rhema_strerror(rc), vt->errmsg(c));
            goto out;
        }
        if (!watch_ctr_wait(&ctr, before))
            snprintf(msg, sizeof msg, "no notify within %d ms of a batch after the reconnect",
                     WATCH_LOST_MS);
        snprintf(rec, sizeof rec, "rec/%020llu", (unsigned long long)w[1].new_version);
        (void)vt->del(c, ns, "k", RHEMA_VERSION_ANY);
        (void)vt->del(c, ns, rec, RHEMA_VERSION_ANY);
    }
out:
    if (watching)
        vt->unwatch(inst);
    if (opened) {
        vt->disconnect(c);
        vt->close(inst);
        rhema_config_release(&cfg);
    }
    tap(backend, "watch: notify after the channel was lost",
        msg[0] ? RHEMA_CONF_FAIL : RHEMA_CONF_PASS, msg);
}
#endif

#ifdef RHEMA_HAVE_HIREDIS
static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* One integer reply of a command with one key argument; -2 on error. */
static long long rd_int(redisContext *ctx, const char *cmd, const char *key)
{
    redisReply *r = redisCommand(ctx, "%s %s", cmd, key);
    long long v = r != NULL && r->type == REDIS_REPLY_INTEGER ? r->integer : -2;
    if (r != NULL)
        freeReplyObject(r);
    return v;
}

/*
 * A rate() state lives under the configured prefix as P"rate/"key, expires
 * at its rest instant (PEXPIREAT), and is gone once that passed.
 */
static void redis_rate_keys(const struct rhema_storage_plugin *vt)
{
    struct rhema_config cfg;
    rhema_storage_instance *inst = NULL;
    rhema_storage_conn *c = NULL;
    struct rhema_rate_query q;
    const char *host = "127.0.0.1";
    int64_t port = 6379;
    redisContext *ctx = NULL;
    char prefix[64], ov[128], key[160], msg[1024] = "";
    long long ttl;
    int rc, tls = 0, skip = 0;
    snprintf(prefix, sizeof prefix, "rtest%ld:", (long)getpid());
    snprintf(ov, sizeof ov, "persistence.redis.prefix=%s", prefix);
    if (srv_open(vt, "redis", &cfg, ov, &inst, &c, msg, sizeof msg) != 0)
        goto out;
    const struct rhema_cfg *g = rhema_config_plugin_group(&cfg, RHEMA_KIND_STORAGE, "redis");
    rhema_host_get()->cfg_string(g, "host", &host);
    rhema_host_get()->cfg_int(g, "port", &port);
    if (rhema_host_get()->cfg_bool(g, "tls", &tls) == 0 && tls) {
        /* this check reads the keys over its own hiredis (0.14: TCP only) */
        skip = 1;
        snprintf(msg, sizeof msg, "the server takes TLS; this check needs plain TCP");
        goto close;
    }
    ctx = redisConnect(host, (int)port);
    if (ctx == NULL || ctx->err) {
        snprintf(msg, sizeof msg, "redisConnect %s:%lld: %s", host, (long long)port,
                 ctx ? ctx->errstr : "out of memory");
        goto close;
    }
    if ((rc = srv_rate(vt, c, "long", 3600000000ull, &q)) != 0 ||
        (rc = srv_rate(vt, c, "short", 30000, &q)) != 0) {
        snprintf(msg, sizeof msg, "rate: %s: %s", rhema_strerror(rc), vt->errmsg(c));
        goto close;
    }
    snprintf(key, sizeof key, "%srate/long", prefix);
    ttl = rd_int(ctx, "PTTL", key);
    /* PEXPIREAT rounds the rest instant up to the ms: 1 ms over, never under */
    if (ttl <= 3000000 || ttl > 3600001) {
        snprintf(msg, sizeof msg, "PTTL %s is %lld ms, want its rest instant, about 1 h", key, ttl);
        goto close;
    }
    if (rd_int(ctx, "EXISTS", "rate/long") != 0) {
        snprintf(msg, sizeof msg, "a rate key outside the prefix");
        goto close;
    }
    sleep_ms(200); /* "short" rests 30 ms after it was set */
    snprintf(key, sizeof key, "%srate/short", prefix);
    if (rd_int(ctx, "EXISTS", key) != 0)
        snprintf(msg, sizeof msg, "%s still exists 200 ms after its rest instant", key);
    snprintf(key, sizeof key, "%srate/long", prefix);
    rd_int(ctx, "DEL", key);
close:
    if (ctx != NULL)
        redisFree(ctx);
    vt->disconnect(c);
    vt->close(inst);
    rhema_config_release(&cfg);
out:
    tap("redis", "rate: state under the prefix, gone at rest",
        skip ? RHEMA_CONF_SKIP : msg[0] ? RHEMA_CONF_FAIL : RHEMA_CONF_PASS, msg);
}
#endif

#ifdef RHEMA_HAVE_HIREDIS
struct redis_at {
    const char *host;
    int64_t port;
};

/* CLIENT KILL TYPE pubsub: ends the plugin's subscriber connection. */
static int redis_kill_pubsub(void *arg, char *msg, size_t cap)
{
    struct redis_at *at = arg;
    redisContext *ctx = redisConnect(at->host, (int)at->port);
    redisReply *r;
    int ok;
    if (ctx == NULL || ctx->err) {
        snprintf(msg, cap, "redisConnect: %s", ctx ? ctx->errstr : "out of memory");
        redisFree(ctx);
        return -1;
    }
    r = redisCommand(ctx, "CLIENT KILL TYPE pubsub");
    ok = r != NULL && r->type == REDIS_REPLY_INTEGER && r->integer >= 1;
    if (!ok)
        snprintf(msg, cap, "CLIENT KILL TYPE pubsub: %s",
                 r == NULL                         ? ctx->errstr
                 : r->type == REDIS_REPLY_ERROR ? r->str
                                                   : "no client killed");
    if (r != NULL)
        freeReplyObject(r);
    redisFree(ctx);
    return ok ? 0 : -1;
}

static void redis_watch_lost(const struct rhema_storage_plugin *vt)
{
    struct rhema_config cfg;
    struct redis_at at = {"127.0.0.1", 6379};
    const char *none[1] = {NULL};
    int tls = 0;
    if (load_config(&cfg, "redis", "watch", none, 0) != 0)
        return;
    const struct rhema_cfg *g = rhema_config_plugin_group(&cfg, RHEMA_KIND_STORAGE, "redis");
    rhema_host_get()->cfg_string(g, "host", &at.host);
    rhema_host_get()->cfg_int(g, "port", &at.port);
    rhema_host_get()->cfg_bool(g, "tls", &tls);
    if (tls) {
        rhema_config_release(&cfg);
        tap("redis", "watch: notify after the channel was lost", RHEMA_CONF_SKIP,
            "the server takes TLS; this check needs plain TCP (to kill the subscriber)");
        return;
    }
    watch_lost_channel(vt, "redis", redis_kill_pubsub, &at);
    rhema_config_release(&cfg);
}
#endif

#ifdef RHEMA_HAVE_LIBPQ
/* One integer of a query, or -1 (msg says why when it is set). */
static long long pg_int(PGconn *pg, const char *sql)
{
    PGresult *r = PQexec(pg, sql);
    long long v = -1;
    if (r != NULL && PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
        v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    else if (r != NULL && PQresultStatus(r) == PGRES_COMMAND_OK)
        v = 0;
    PQclear(r);
    return v;
}

/*
 * A schema made before rate() gains its table at open; rows at rest are
 * purged (3000 keys of a 1 us interval leave fewer rows than one purge
 * period of calls) and a row not at rest stays.
 */
static void postgres_rate_table(const struct rhema_storage_plugin *vt)
{
    struct rhema_config cfg;
    rhema_storage_instance *inst = NULL;
    rhema_storage_conn *c = NULL;
    struct rhema_rate_query q;
    const char *conninfo = "", *schema = "rhema";
    PGconn *pg = NULL;
    char sql[512], key[64], tag[32], msg[1024] = "";
    long long rows;
    int i, rc = 0;
    snprintf(tag, sizeof tag, "purge%ld-", (long)getpid());
    if (srv_open(vt, "postgres", &cfg, NULL, &inst, &c, msg, sizeof msg) != 0)
        goto out;
    const struct rhema_cfg *g = rhema_config_plugin_group(&cfg, RHEMA_KIND_STORAGE, "postgres");
    rhema_host_get()->cfg_string(g, "conninfo", &conninfo);
    rhema_host_get()->cfg_string(g, "schema", &schema);
    vt->disconnect(c);
    vt->close(inst);
    pg = PQconnectdb(conninfo);
    if (PQstatus(pg) != CONNECTION_OK) {
        snprintf(msg, sizeof msg, "PQconnectdb: %s", PQerrorMessage(pg));
        rhema_config_release(&cfg);
        goto out;
    }
    snprintf(sql, sizeof sql, "DROP TABLE \"%s\".rate", schema);
    if (pg_int(pg, sql) != 0) {
        snprintf(msg, sizeof msg, "%s: %s", sql, PQerrorMessage(pg));
        rhema_config_release(&cfg);
        goto out;
    }
    rhema_config_release(&cfg);
    if (srv_open(vt, "postgres", &cfg, NULL, &inst, &c, msg, sizeof msg) != 0)
        goto out;
    rc = srv_rate(vt, c, "kept", 3600000000ull, &q);
    for (i = 0; i < 3000 && rc == 0; i++) {
        snprintf(key, sizeof key, "%s%d", tag, i);
        rc = srv_rate(vt, c, key, 1, &q);
    }
    if (rc != 0)
        snprintf(msg, sizeof msg, "rate on a schema made before rate(): %s: %s", rhema_strerror(rc),
                 vt->errmsg(c));
    vt->disconnect(c);
    vt->close(inst);
    rhema_config_release(&cfg);
    if (msg[0])
        goto out;
    snprintf(sql, sizeof sql, "SELECT count(*) FROM \"%s\".rate WHERE key LIKE '%s%%'", schema,
             tag);
    rows = pg_int(pg, sql);
    if (rows < 0 || rows >= 1024)
        snprintf(msg, sizeof msg, "%lld rows left of 3000 keys at rest, want 0..1023", rows);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM \"%s\".rate WHERE key = 'kept'", schema);
    if (!msg[0] && pg_int(pg, sql) != 1)
        snprintf(msg, sizeof msg, "the purge deleted a row that was not at rest");
out:
    PQfinish(pg);
    tap("postgres", "rate: an existing schema gains the table, rows at rest purged",
        msg[0] ? RHEMA_CONF_FAIL : RHEMA_CONF_PASS, msg);
}
#endif

#ifdef RHEMA_HAVE_LIBPQ
/* pg_terminate_backend() of the plugin's LISTEN connection. */
static int pg_kill_listener(void *arg, char *msg, size_t cap)
{
    PGconn *pg = PQconnectdb(arg);
    long long n;
    if (PQstatus(pg) != CONNECTION_OK) {
        snprintf(msg, cap, "PQconnectdb: %s", PQerrorMessage(pg));
        PQfinish(pg);
        return -1;
    }
    n = pg_int(pg, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                   "WHERE query LIKE 'LISTEN %' AND pid <> pg_backend_pid()");
    PQfinish(pg);
    if (n < 1) {
        snprintf(msg, cap, "no LISTEN connection to terminate (%lld)", n);
        return -1;
    }
    return 0;
}

static void postgres_watch_lost(const struct rhema_storage_plugin *vt)
{
    struct rhema_config cfg;
    const char *conninfo = "", *none[1] = {NULL};
    char *copy;
    if (load_config(&cfg, "postgres", "watch", none, 0) != 0)
        return;
    rhema_host_get()->cfg_string(rhema_config_plugin_group(&cfg, RHEMA_KIND_STORAGE, "postgres"),
                                 "conninfo", &conninfo);
    copy = strdup(conninfo);
    rhema_config_release(&cfg);
    if (copy == NULL)
        return;
    watch_lost_channel(vt, "postgres", pg_kill_listener, copy);
    free(copy);
}
#endif


/* ---- the memory backend's hash index ---- */

/*
 * get() and the preconditions find a key through a hash table that grows
 * by doubling beside the skip list: every key put in batches past several
 * growths is found, a deleted one is not, by get() and by get_many(), and
 * so after a restore rebuilt the table.
 */
static int mem_check_keys(const struct rhema_storage_plugin *vt, rhema_storage_conn *c, int n,
                          const char *when, char *msg, size_t cap)
{
    char key[32], val[32];
    for (int i = 0; i < n; i++) {
        struct rhema_storage_value v[2] = {{.size = sizeof v[0]}, {.size = sizeof v[1]}};
        const char *nss[2] = {"hx", "hx"}, *keys[2] = {key, "absent"};
        int rcs[2] = {-1, -1};
        snprintf(key, sizeof key, "k%06d", (i * 7919) % n);
        snprintf(val, sizeof val, "v%06d", (i * 7919) % n);
        int gone = ((i * 7919) % n) % 3 == 0, rc = vt->get(c, "hx", key, &v[0]);
        if (gone ? rc != RHEMA_ENOTFOUND
                 : (rc != 0 || v[0].len != strlen(val) || memcmp(v[0].data, val, v[0].len) != 0)) {
            snprintf(msg, cap, "%s: get(%s): %s, want %s", when, key, rhema_strerror(rc),
                     gone ? "not found" : val);
            return -1;
        }
        rc = vt->get_many(c, nss, keys, 2, v, rcs);
        if (rc != 0 || rcs[0] != (gone ? RHEMA_ENOTFOUND : 0) || rcs[1] != RHEMA_ENOTFOUND) {
            snprintf(msg, cap, "%s: get_many(%s, absent): %s, %d %d", when, key,
                     rhema_strerror(rc), rcs[0], rcs[1]);
            return -1;
        }
    }
    return 0;
}

static void memory_hash_index(const struct rhema_storage_plugin *vt)
{
    enum { N = 5000, CHUNK = 500 };
    struct rhema_config cfg;
    rhema_storage_instance *inst = NULL;
    rhema_storage_conn *c = NULL;
    static struct rhema_storage_write w[CHUNK];
    static char keys[CHUNK][32], vals[CHUNK][32];
    char msg[1024] = "", *err = NULL, snap[600];
    int rc = 0;
    if (open_backend(vt, &cfg, "memory", "hash index", NULL, 0, "memory", &inst, &c, msg,
                     sizeof msg) != 0)
        goto out;
    for (int op = 0; op < 2 && !msg[0]; op++) /* puts, then a delete of every third key */
        for (int base = 0; base < N && !msg[0]; base += CHUNK) {
            size_t m = 0;
            for (int i = base; i < base + CHUNK; i++) {
                int k = (i * 7919) % N;
                if (op == 1 && k % 3 != 0)
                    continue;
                snprintf(keys[m], sizeof keys[m], "k%06d", k);
                snprintf(vals[m], sizeof vals[m], "v%06d", k);
                w[m] = (struct rhema_storage_write){.size = sizeof w[m],
                                                    .op = op ? RHEMA_WRITE_DEL : RHEMA_WRITE_PUT,
                                                    .ns = "hx",
                                                    .key = keys[m],
                                                    .value = op ? NULL : vals[m],
                                                    .value_len = op ? 0 : strlen(vals[m]),
                                                    .expected_version = RHEMA_VERSION_ANY};
                m++;
            }
            if ((rc = vt->batch(c, w, m)) != 0)
                snprintf(msg, sizeof msg, "batch of %zu %s: %s", m, op ? "deletes" : "puts",
                         rhema_strerror(rc));
        }
    if (msg[0] || mem_check_keys(vt, c, N, "after the writes", msg, sizeof msg) != 0)
        goto out;
    snprintf(snap, sizeof snap, "%s/hash-index.snap", tmpdir);
    if ((rc = vt->backup(c, snap, &err)) != 0 || (rc = vt->restore(inst, snap, &err)) != 0)
        snprintf(msg, sizeof msg, "backup and restore: %s: %s", rhema_strerror(rc),
                 err ? err : "");
    else
        mem_check_keys(vt, c, N, "after a restore", msg, sizeof msg);
out:
    tap("memory", "hash index: 5,000 keys found, deleted ones not, after a restore too",
        msg[0] ? RHEMA_CONF_FAIL : RHEMA_CONF_PASS, msg);
    free(err);
    if (c) {
        vt->disconnect(c);
        vt->close(inst);
        rhema_config_release(&cfg);
    }
}

/* ---- main ---- */

/* Run the suite on one backend, plus its own checks. */

/* ---- the file backend's read cache ---- */

static int fl_open_dir(const struct rhema_storage_plugin *vt, struct rhema_config *cfg,
                       const char *dir, rhema_storage_instance **inst, rhema_storage_conn **c,
                       char *msg, size_t cap)
{
    char ov_dir[700];
    const char *ov[] = {ov_dir};
    snprintf(ov_dir, sizeof ov_dir, "persistence.file.directory=%s", dir);
    return open_backend(vt, cfg, "file", "read cache", ov, 1, dir, inst, c, msg, cap);
}

/* A get() on a thread of its own, so that the test can see whether it waits. */
struct bg_get {
    const struct rhema_storage_plugin *vt;
    rhema_storage_conn *c;
    const char *key;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done, rc;
    char value[64];
};

static void *bg_get_main(void *arg)
{
    struct bg_get *g = arg;
    struct rhema_storage_value v;
    int rc = g->vt->get(g->c, "fc", g->key, &v);
    pthread_mutex_lock(&g->mu);
    if (rc == 0)
        snprintf(g->value, sizeof g->value, "%.*s", (int)v.len, (const char *)v.data);
    g->rc = rc;
    g->done = 1;
    pthread_cond_signal(&g->cv);
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

/* Wait up to ms for the get to finish: 1 when it did. */
static int bg_wait(struct bg_get *g, int ms)
{
    struct timespec ts;
    rhema_deadline_after(CLOCK_REALTIME, (uint64_t)ms * 1000000u, &ts);
    pthread_mutex_lock(&g->mu);
    while (!g->done && pthread_cond_timedwait(&g->cv, &g->mu, &ts) == 0)
        ;
    int done = g->done;
    pthread_mutex_unlock(&g->mu);
    return done;
}

static void file_read_cache(const struct rhema_storage_plugin *vt)
{
    const char *test = "read cache: get() does not wait for a writer's flock";
    char dir[600], lockpath[700], msg[1024] = "";
    struct rhema_config cfg, cfg2;
    rhema_storage_instance *inst = NULL, *inst2 = NULL;
    rhema_storage_conn *c = NULL, *c2 = NULL, *cg = NULL;
    struct rhema_storage_value v;
    char *err = NULL;
    int rc, hfd = -1;

    snprintf(dir, sizeof dir, "%s/file-cache", tmpdir);
    snprintf(lockpath, sizeof lockpath, "%s/LOCK", dir);
    if (fl_open_dir(vt, &cfg, dir, &inst, &c, msg, sizeof msg) != 0)
        goto out;
    if ((rc = vt->connect(inst, &cg, &err)) != 0) {
        snprintf(msg, sizeof msg, "connect: %s: %s", rhema_strerror(rc), err ? err : "");
        goto out;
    }
    if ((rc = put_value(vt, c, "fc", "k", "one", 0)) != 0) {
        snprintf(msg, sizeof msg, "put: %s: %s", rhema_strerror(rc), vt->errmsg(c));
        goto out;
    }
    if ((rc = vt->get(c, "fc", "none", &v)) != RHEMA_ENOTFOUND) { /* absent: cached too */
        snprintf(msg, sizeof msg, "get of a missing key: %s", rhema_strerror(rc));
        goto out;
    }
    /* another holder of the exclusive flock (a writer in its fsyncs) */
    hfd = open(lockpath, O_RDWR | O_CLOEXEC);
    if (hfd < 0 || flock(hfd, LOCK_EX) != 0) {
        snprintf(msg, sizeof msg, "open/flock %s: %s", lockpath, strerror(errno));
        goto out;
    }
    {
        struct bg_get g = {.vt = vt, .c = cg, .key = "k", .mu = PTHREAD_MUTEX_INITIALIZER,
                           .cv = PTHREAD_COND_INITIALIZER};
        pthread_t th;
        pthread_create(&th, NULL, bg_get_main, &g);
        int done = bg_wait(&g, 10000); /* generous: it does not wait at all */
        if (!done)
            snprintf(msg, sizeof msg, "get() of a cached value waited for the exclusive flock");
        else if (g.rc != 0 || strcmp(g.value, "one") != 0)
            snprintf(msg, sizeof msg, "get() under the flock: %s, '%s'", rhema_strerror(g.rc),
                     g.value);
        if (!done)
            flock(hfd, LOCK_UN); /* let it finish */
        pthread_join(th, NULL);
        if (done && !msg[0]) {
            struct bg_get g2 = {.vt = vt, .c = cg, .key = "none",
                                .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
            pthread_create(&th, NULL, bg_get_main, &g2);
            done = bg_wait(&g2, 10000);
            if (!done)
                snprintf(msg, sizeof msg, "get() of a key known absent waited for the flock");
            else if (g2.rc != RHEMA_ENOTFOUND)
                snprintf(msg, sizeof msg, "get() of a missing key under the flock: %s",
                         rhema_strerror(g2.rc));
            if (!done)
                flock(hfd, LOCK_UN);
            pthread_join(th, NULL);
        }
    }
    tap("file", test, msg[0] ? RHEMA_CONF_FAIL : RHEMA_CONF_PASS, msg);
    test = "read cache: a holder that moved the generation is waited for";
    if (msg[0])
        goto out;
    {
        /* as another process does when it commits: the header's generation moves */
        unsigned char hdr[48];
        uint64_t gen = 0;
        if (pread(hfd, hdr, sizeof hdr, 0) != (ssize_t)sizeof hdr) {
            snprintf(msg, sizeof msg, "read LOCK: %s", strerror(errno));
            goto out;
        }
        for (int i = 7; i >= 0; i--)
            gen = gen << 8 | hdr[8 + i];
        gen++;
        for (int i = 0; i < 8; i++)
            hdr[8 + i] = (unsigned char)(gen >> (8 * i));
        if (pwrite(hfd, hdr, sizeof hdr, 0) != (ssize_t)sizeof hdr) {
            snprintf(msg, sizeof msg, "write LOCK: %s", strerror(errno));
            goto out;
        }
        struct bg_get g = {.vt = vt, .c = cg, .key = "k", .mu = PTHREAD_MUTEX_INITIALIZER,
                           .cv = PTHREAD_COND_INITIALIZER};
        pthread_t th;
        pthread_create(&th, NULL, bg_get_main, &g);
        /* a slow machine only makes an early answer less likely */
        if (bg_wait(&g, 300))
            snprintf(msg, sizeof msg, "get() answered from the cache while another process "
                                      "held the lock and had moved the generation");
        flock(hfd, LOCK_UN);
        if (!bg_wait(&g, 30000))
            snprintf(msg, sizeof msg, "get() did not answer once the lock was released");
        else if (!msg[0] && (g.rc != 0 || strcmp(g.value, "one") != 0))
            snprintf(msg, sizeof msg, "get() after the release: %s, '%s'", rhema_strerror(g.rc),
                     g.value);
        pthread_join(th, NULL);
    }
    tap("file", test, msg[0] ? RHEMA_CONF_FAIL : RHEMA_CONF_PASS, msg);
    test = "read cache: another instance's writes and deletes are seen";
    if (msg[0])
        goto out;
    if (fl_open_dir(vt, &cfg2, dir, &inst2, &c2, msg, sizeof msg) != 0)
        goto out;
    for (int round = 0; round < 3 && !msg[0]; round++) {
        char val[32];
        snprintf(val, sizeof val, "two-%d", round);
        if ((rc = vt->get(c, "fc", "k", &v)) != 0) /* cached on the first instance */
            snprintf(msg, sizeof msg, "get: %s", rhema_strerror(rc));
        else if ((rc = put_value(vt, c2, "fc", "k", val, 0)) != 0)
            snprintf(msg, sizeof msg, "put on the second instance: %s", rhema_strerror(rc));
        else if ((rc = vt->get(c, "fc", "k", &v)) != 0 || v.len != strlen(val) ||
                 memcmp(v.data, val, v.len) != 0)
            snprintf(msg, sizeof msg, "round %d: the first instance read %s '%.*s', want '%s'",
                     round, rhema_strerror(rc), rc == 0 ? (int)v.len : 0,
                     rc == 0 ? (const char *)v.data : "", val);
    }
    if (!msg[0]) {
        if ((rc = vt->del(c2, "fc", "k", RHEMA_VERSION_ANY)) != 0)
            snprintf(msg, sizeof msg, "del on the second instance: %s", rhema_strerror(rc));
        else if ((rc = vt->get(c, "fc", "k", &v)) != RHEMA_ENOTFOUND)
            snprintf(msg, sizeof msg, "after a delete by the second instance get() gave %s",
                     rhema_strerror(rc));
        else if ((rc = put_value(vt, c, "fc", "k", "three", 0)) != 0 ||
                 (rc = vt->get(c2, "fc", "k", &v)) != 0 || v.len != 5 ||
                 memcmp(v.data, "three", 5) != 0)
            snprintf(msg, sizeof msg, "the second instance did not read the first's write: %s",
                     rhema_strerror(rc));
    }
out:
    tap("file", test, msg[0] ? RHEMA_CONF_FAIL : RHEMA_CONF_PASS, msg);
    if (hfd >= 0)
        close(hfd);
    free(err);
    if (cg)
        vt->disconnect(cg);
    if (c2) {
        vt->disconnect(c2);
        vt->close(inst2);
        rhema_config_release(&cfg2);
    }
    if (c) {
        vt->disconnect(c);
        vt->close(inst);
        rhema_config_release(&cfg);
    }
}

static void run_backend(struct rhema_plugin_registry *reg, const char *backend)
{
    const struct rhema_storage_plugin *vt = load_backend(reg, backend);
    struct rhema_config cfg;
    struct rhema_conf_totals t = {0, 0, 0};
    const struct rhema_cfg *group;
    char path_override[700], *err = NULL;
    const char *ov[1];
    size_t n_ov = 0;

    if (vt == NULL)
        return;
    if (strcmp(backend, "sqlite") == 0) {
        snprintf(path_override, sizeof path_override, "persistence.sqlite.path=%s/conf.db",
                 tmpdir);
        ov[n_ov++] = path_override;
    }
    if (load_config(&cfg, backend, "config", ov, n_ov) != 0)
        return;
    group = rhema_config_plugin_group(&cfg, RHEMA_KIND_STORAGE, backend);
    rhema_conformance_storage(vt, rhema_host_get(), group, report, (void *)backend, &t);
    if (group != NULL) {
        int rc = rhema_config_unread_keys(group, &err);
        tap(backend, "every configuration key read", rc == 0 ? RHEMA_CONF_PASS : RHEMA_CONF_FAIL,
            err ? err : "");
        free(err);
    }
    rhema_config_release(&cfg);
    printf("# %s: %u passed, %u failed, %u skipped\n", backend, t.passed, t.failed, t.skipped);

    if (strcmp(backend, "file") == 0)
        file_read_cache(vt);
    if (strcmp(backend, "memory") == 0)
        memory_hash_index(vt);
    if (strcmp(backend, "sqlite") == 0) {
        sqlite_durability(vt, path_override);
        sqlite_bad_synchronous(vt, path_override);
        sqlite_dirs_and_backup(vt);
        sqlite_checkpointer(vt);
#ifdef RHEMA_HAVE_SQLITE
        sqlite_rate_old_table(vt);
        sqlite_rate_processes(vt);
        sqlite_rate_crashed_holder(vt);
        sqlite_rate_spoilt_file(vt);
        sqlite_rate_full(vt);
        sqlite_read_cache(vt);
        sqlite_rate_bad_settings(vt);
#endif
    }
#ifdef RHEMA_HAVE_HIREDIS
    if (strcmp(backend, "redis") == 0) {
        redis_rate_keys(vt);
        redis_watch_lost(vt);
    }
#endif
#ifdef RHEMA_HAVE_LIBPQ
    if (strcmp(backend, "postgres") == 0) {
        postgres_rate_table(vt);
        postgres_watch_lost(vt);
    }
#endif
}

int main(void)
{
    struct rhema_plugin_registry *reg = NULL;
    const char *list = getenv("RHEMA_CONFORMANCE_BACKENDS");
    const char *base = getenv("TMPDIR");
    char **backends;
    size_t n = 0, i;

    if (list == NULL || list[0] == '\0')
        list = "memory sqlite";
    snprintf(tmpdir, sizeof tmpdir, "%s/rhema-test-storage-XXXXXX",
             base != NULL && base[0] != '\0' ? base : "/tmp");
    if (mkdtemp(tmpdir) == NULL) {
        printf("Bail out! mkdtemp %s: %s\n", tmpdir, strerror(errno));
        return 1;
    }
    if (rhema_plugins_new(&reg) != 0) {
        printf("Bail out! rhema_plugins_new failed\n");
        return 1;
    }
    backends = split(list, " ,\t", &n);
    for (i = 0; i < n; i++)
        run_backend(reg, backends[i]);
    strv_free(backends);
    rhema_plugins_free(reg);
    nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);

    printf("1..%u\n", tap_n);
    if (tap_failed != 0)
        printf("# %u of %u checks failed\n", tap_failed, tap_n);
    return tap_failed != 0 || tap_n == 0;
}
