/*
 * test_maintenance -- core/maintenance.c: backup names, pruning (old
 * backups go, the newest and every other file stay), the data-size limit,
 * and the retention cleanup of sessions on the memory plugin.
 *
 * Old sessions: data_retention_days is at least 1, and a session's
 * updated_at is set by the store to "now", so the test makes sessions old
 * by rewriting their stored record with an updated_at in 2020 (the status
 * index is untouched: only the timestamp changes) -- what a store that ran
 * for years would hold.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <ftw.h>
#include <limits.h>
#include <time.h>

#include <cmocka.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <pthread.h>

#include "config.h"
#include "server.h"
#include "maintenance.h"
#include "plugin.h"
#include "session.h"
#include "util.h"

#define DAY_MS 86400000ull
/* 2026-01-31T00:00:00Z */
#define NOW_MS 1769817600000ull

/* ---- names ---- */

static void names_parse(void **state)
{
    char backend[65];
    uint64_t ms = 0;
    (void)state;
    assert_int_equal(rhema_backup_name_parse("rhema-sqlite-20260131T000000Z.bak", backend, &ms), 0);
    assert_string_equal(backend, "sqlite");
    assert_int_equal(ms, NOW_MS);
    assert_int_equal(rhema_backup_name_parse("rhema-my-store-20260130T235959Z-3.bak", backend,
                                             &ms), 0);
    assert_string_equal(backend, "my-store");
    assert_int_equal(ms, NOW_MS - 1000);
    assert_int_equal(rhema_backup_name_parse("rhema-sqlite-20260131T000000Z.bak.tmp", NULL, NULL), -1);
    assert_int_equal(rhema_backup_name_parse("rhema--20260131T000000Z.bak", NULL, NULL), -1);
    assert_int_equal(rhema_backup_name_parse("rhema-sqlite-2026013T000000Z.bak", NULL, NULL), -1);
    assert_int_equal(rhema_backup_name_parse("rhema-sqlite-20261331T000000Z.bak", NULL, NULL), -1);
    assert_int_equal(rhema_backup_name_parse("notes.txt", NULL, NULL), -1);
    assert_int_equal(rhema_backup_name_parse("rhema-sqlite-20260131T000000Z-.bak", NULL, NULL), -1);
}

/* ---- pruning ---- */

static char tmpdir[256];

static void touch(const char *name, const char *text)
{
    char path[512];
    FILE *f;
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int exists(const char *name)
{
    char path[512];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    return stat(path, &st) == 0;
}

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(p);
}

static int tmp_setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "%s/rhema-maint-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

static int tmp_teardown(void **state)
{
    (void)state;
    nftw(tmpdir, rm_cb, 8, FTW_DEPTH | FTW_PHYS);
    return 0;
}

static void prune_removes_old_keeps_newest_and_others(void **state)
{
    char path[512], *err = NULL;
    size_t pruned = 99, n = 0;
    struct rhema_backup_file *v = NULL;
    (void)state;
    touch("rhema-sqlite-20260101T000000Z.bak", "old");        /* 30 days */
    touch("rhema-sqlite-20260120T120000Z.bak", "old too");    /* 10.5 days */
    touch("rhema-sqlite-20260120T120000Z-2.bak", "same second");
    touch("rhema-sqlite-20260128T000000Z.bak", "recent");     /* 3 days */
    touch("rhema-sqlite-20260130T000000Z.bak", "newest");
    touch("rhema-file-20250101T000000Z.bak", "another backend");
    touch("rhema-sqlite-20250101T000000Z.bak.tmp", "a leftover");
    touch("notes.txt", "not a backup");
    snprintf(path, sizeof path, "%s/rhema-sqlite-20260102T000000Z.bak", tmpdir);
    assert_int_equal(mkdir(path, 0750), 0); /* a file backend's backup is a directory */
    snprintf(path, sizeof path, "%s/rhema-sqlite-20260102T000000Z.bak/COUNTER", tmpdir);
    touch("rhema-sqlite-20260102T000000Z.bak/COUNTER", "1\n");

    assert_int_equal(rhema_backup_list(tmpdir, "sqlite", &v, &n, &err), 0);
    assert_int_equal(n, 6);
    assert_string_equal(v[0].name, "rhema-sqlite-20260130T000000Z.bak");
    assert_string_equal(v[2].name, "rhema-sqlite-20260120T120000Z-2.bak"); /* same second: later */
    assert_true(v[4].is_dir && v[4].bytes == 2);
    free(v);

    assert_int_equal(rhema_backup_prune(tmpdir, "sqlite", 7, NOW_MS, &pruned, &err), 0);
    assert_int_equal(pruned, 4);
    assert_false(exists("rhema-sqlite-20260101T000000Z.bak"));
    assert_false(exists("rhema-sqlite-20260102T000000Z.bak"));
    assert_false(exists("rhema-sqlite-20260120T120000Z.bak"));
    assert_false(exists("rhema-sqlite-20260120T120000Z-2.bak"));
    assert_true(exists("rhema-sqlite-20260128T000000Z.bak"));
    assert_true(exists("rhema-sqlite-20260130T000000Z.bak"));
    assert_true(exists("rhema-file-20250101T000000Z.bak"));
    assert_true(exists("rhema-sqlite-20250101T000000Z.bak.tmp"));
    assert_true(exists("notes.txt"));

    /* everything old: the newest one stays anyway */
    assert_int_equal(rhema_backup_prune(tmpdir, "sqlite", 1, NOW_MS + 400 * DAY_MS, &pruned, &err),
                     0);
    assert_int_equal(pruned, 1);
    assert_true(exists("rhema-sqlite-20260130T000000Z.bak"));
    assert_false(exists("rhema-sqlite-20260128T000000Z.bak"));
    assert_true(exists("rhema-file-20250101T000000Z.bak"));

    /* a missing directory is an empty list, not an error */
    snprintf(path, sizeof path, "%s/nope", tmpdir);
    assert_int_equal(rhema_backup_prune(path, "sqlite", 1, NOW_MS, &pruned, &err), 0);
    assert_int_equal(pruned, 0);
    free(err);
}

/* ---- a server around the memory plugin ---- */

struct fixture {
    struct rhema_config cfg;
    struct rhema_server srv;
    struct rhema_plugin_registry *reg;
    rhema_storage_conn *conn;
    struct rhema_store st;
    struct event_base *base;
};

static struct fixture *fixture_new(const char *const *overrides, size_t n)
{
    struct fixture *f = calloc(1, sizeof *f);
    const struct rhema_loaded_plugin *p;
    const char *dir = getenv("RHEMA_PLUGIN_DIR");
    char *err = NULL;
    assert_non_null(f);
    assert_int_equal(rhema_config_load(&f->cfg, NULL, overrides, n, NULL, &err), 0);
    assert_int_equal(rhema_plugins_new(&f->reg), 0);
    if (rhema_plugin_load(f->reg, "memory", dir ? dir : "plugins/.libs", RHEMA_KIND_STORAGE, &p,
                          &err) != 0)
        fail_msg("load memory: %s", err ? err : "?");
    f->srv.cfg = &f->cfg;
    f->srv.storage_plugin = p;
    f->srv.storage = &p->vt.storage;
    assert_int_equal(f->srv.storage->open(rhema_host_get(), NULL, &f->srv.storage_inst, &err), 0);
    assert_int_equal(f->srv.storage->connect(f->srv.storage_inst, &f->conn, &err), 0);
    rhema_store_init(&f->st, f->srv.storage, f->conn);
    f->base = event_base_new();
    assert_non_null(f->base);
    return f;
}

static void fixture_free(struct fixture *f)
{
    rhema_store_release(&f->st);
    f->srv.storage->disconnect(f->conn);
    f->srv.storage->close(f->srv.storage_inst);
    event_base_free(f->base);
    rhema_plugins_free(f->reg);
    rhema_config_release(&f->cfg);
    free(f);
}

static void raw_put(struct fixture *f, const char *ns, const char *key, const char *val)
{
    struct rhema_storage_write w = {.size = sizeof(struct rhema_storage_write),
                                    .op = RHEMA_WRITE_PUT,
                                    .ns = ns,
                                    .key = key,
                                    .value = val,
                                    .value_len = strlen(val)};
    assert_int_equal(f->srv.storage->put(f->conn, &w), 0);
}

static void size_limit(void **state)
{
    static const char *const ov[] = {"persistence.max_data_size_bytes=100"};
    struct fixture *f = fixture_new(ov, 1);
    struct rhema_maintenance *m = NULL;
    char *err = NULL;
    (void)state;
    /* 1 + 59 bytes stored before the start: the first reading sees them */
    raw_put(f, "t", "k", "01234567890123456789012345678901234567890123456789012345678");
    assert_int_equal(rhema_maintenance_start(&f->srv, f->base, &m, &err), 0);
    assert_int_equal(rhema_maintenance_data_size(m), 60);
    assert_int_equal(rhema_maintenance_over_limit(m, 0), 0);
    assert_int_equal(rhema_maintenance_over_limit(m, 40), 0); /* exactly at the limit */
    assert_int_equal(rhema_maintenance_over_limit(m, 41), 1);
    assert_int_equal(rhema_maintenance_over_limit(m, SIZE_MAX), 1);
    rhema_maintenance_account(m, 30); /* accepted writes since the reading count */
    assert_int_equal(rhema_maintenance_over_limit(m, 10), 0);
    assert_int_equal(rhema_maintenance_over_limit(m, 11), 1);
    rhema_maintenance_account(m, -90);
    assert_int_equal(rhema_maintenance_data_size(m), 0);
    assert_int_equal(rhema_maintenance_over_limit(m, 100), 0);
    assert_int_equal(rhema_maintenance_over_limit(NULL, SIZE_MAX), 0);
    rhema_maintenance_stop(m);

    /* no limit configured: never over */
    fixture_free(f);
    f = fixture_new(NULL, 0);
    raw_put(f, "t", "k", "v");
    assert_int_equal(rhema_maintenance_start(&f->srv, f->base, &m, &err), 0);
    assert_int_equal(rhema_maintenance_over_limit(m, SIZE_MAX), 0);
    rhema_maintenance_stop(m);
    fixture_free(f);
    free(err);
}

/* ---- cleanup ---- */

static void make_session(struct fixture *f, const char *id, const char *status, int old)
{
    char body[256], rerr[RHEMA_ERRMSG_MAX];
    json_t *in, *valid = NULL;
    struct rhema_record rec = {0};
    int created = 0;
    snprintf(body, sizeof body,
             "{\"topic\":\"t\",\"participants\":[\"agent-1\"],\"status\":\"%s\"}", status);
    in = json_loads(body, 0, NULL);
    assert_non_null(in);
    assert_int_equal(rhema_session_validate(in, id, &valid, rerr), 0);
    assert_int_equal(rhema_session_put(&f->st, id, valid, 0, &rec, &created, rerr), 0);
    json_decref(in);
    json_decref(valid);
    rhema_record_release(&rec);
    if (old) {
        struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
        json_t *stored;
        char *text;
        assert_int_equal(f->srv.storage->get(f->conn, "sessions", id, &v), 0);
        stored = json_loadb(v.data, v.len, 0, NULL);
        assert_non_null(stored);
        json_object_set_new(stored, "updated_at", json_string("2020-01-01T00:00:00.000Z"));
        text = json_dumps(stored, JSON_COMPACT | JSON_PRESERVE_ORDER);
        raw_put(f, "sessions", id, text);
        free(text);
        json_decref(stored);
    }
}

static int exists_session(struct fixture *f, const char *id)
{
    struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
    int rc = f->srv.storage->get(f->conn, "sessions", id, &v);
    assert_true(rc == 0 || rc == RHEMA_ENOTFOUND);
    return rc == 0;
}

static int index_has(struct fixture *f, const char *ns, const char *key)
{
    struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
    return f->srv.storage->get(f->conn, ns, key, &v) == 0;
}

static int hook_calls;
static uint64_t hook_cutoff;

static int hook(void *arg, const struct rhema_storage_plugin *vt, rhema_storage_conn *conn,
                uint64_t cutoff_ms, size_t *removed, char **err)
{
    (void)arg, (void)vt, (void)conn, (void)err;
    hook_calls++;
    hook_cutoff = cutoff_ms;
    *removed = 3;
    return 0;
}

/* What a background job's done() reported. */
struct bg_result {
    int calls, rc;
    char path[PATH_MAX];
};

static void on_bg_result(void *arg, int rc, const char *path)
{
    struct bg_result *d = arg;
    d->calls++;
    d->rc = rc;
    snprintf(d->path, sizeof d->path, "%s", path ? path : "");
}

/* Run the loop until r's job reported, 10 s at most. */
static void run_until_done(struct event_base *base, const struct bg_result *r)
{
    for (int i = 0; i < 400 && r->calls == 0; i++) {
        struct timeval step = {0, 25000};
        event_base_loopexit(base, &step);
        event_base_dispatch(base);
    }
}

static void cleanup_removes_old_finished_sessions(void **state)
{
    static const char *const ov[] = {"persistence.data_retention_days=30"};
    struct fixture *f = fixture_new(ov, 1);
    struct rhema_maintenance *m = NULL;
    size_t removed = 0;
    char *err = NULL;
    uint64_t before;
    (void)state;
    make_session(f, "done-old", "Completed", 1);
    make_session(f, "cancel-old", "Cancelled", 1);
    make_session(f, "active-old", "Active", 1);
    make_session(f, "paused-old", "Paused", 1);
    make_session(f, "done-new", "Completed", 0);
    make_session(f, "cancel-new", "Cancelled", 0);
    assert_true(index_has(f, "sessions.status", "Completed/done-old"));
    assert_true(index_has(f, "sessions.participant", "agent-1/done-old"));
    assert_true(index_has(f, "sessions.access", "done-old"));

    /* through the building block, with an explicit cutoff */
    assert_int_equal(rhema_cleanup_sessions(f->srv.storage, f->conn,
                                            rhema_realtime_ms() - 30 * DAY_MS, &removed, &err), 0);
    assert_int_equal(removed, 2);
    assert_false(exists_session(f, "done-old"));
    assert_false(exists_session(f, "cancel-old"));
    assert_true(exists_session(f, "active-old"));
    assert_true(exists_session(f, "paused-old"));
    assert_true(exists_session(f, "done-new"));
    assert_true(exists_session(f, "cancel-new"));
    /* the indexes and access records went with them */
    assert_false(index_has(f, "sessions.status", "Completed/done-old"));
    assert_false(index_has(f, "sessions.status", "Cancelled/cancel-old"));
    assert_false(index_has(f, "sessions.participant", "agent-1/done-old"));
    assert_false(index_has(f, "sessions.access", "done-old"));
    assert_true(index_has(f, "sessions.status", "Completed/done-new"));
    assert_true(index_has(f, "sessions.status", "Active/active-old"));

    /* through the maintenance run: data_retention_days and the hooks */
    make_session(f, "done-old-2", "Completed", 1);
    assert_int_equal(rhema_maintenance_start(&f->srv, f->base, &m, &err), 0);
    assert_int_equal(rhema_maintenance_add_cleanup(m, "test entries", hook, NULL), 0);
    before = rhema_realtime_ms();
    assert_int_equal(rhema_maintenance_cleanup_now(m, &removed, &err), 0);
    assert_int_equal(removed, 1 + 3);
    assert_int_equal(hook_calls, 1);
    assert_true(hook_cutoff <= before - 30 * DAY_MS + 1000 && hook_cutoff + 1000 >= before - 30 * DAY_MS);
    assert_false(exists_session(f, "done-old-2"));
    assert_true(exists_session(f, "done-new"));
    /* nothing left to remove: a second run removes nothing */
    assert_int_equal(rhema_maintenance_cleanup_now(m, &removed, &err), 0);
    assert_int_equal(removed, 3);

    /* the same job on the background thread, as the timer runs it */
    make_session(f, "done-old-3", "Completed", 1);
    struct bg_result r = {0};
    assert_int_equal(rhema_maintenance_cleanup_start(m, on_bg_result, &r), 0);
    assert_int_equal(rhema_maintenance_backup_start(m, on_bg_result, &r), RHEMA_ECONFLICT);
    assert_int_equal(rhema_maintenance_add_cleanup(m, "late", hook, NULL), RHEMA_ECONFLICT);
    run_until_done(f->base, &r);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.path[0], '\0');
    assert_int_equal(hook_calls, 3);
    assert_false(exists_session(f, "done-old-3"));
    assert_int_equal(rhema_maintenance_backup_running(m), 0);
    rhema_maintenance_stop(m);
    fixture_free(f);
    free(err);
}

/* Many old sessions: the status index is paged through. */
static void cleanup_pages_through_many(void **state)
{
    struct fixture *f = fixture_new(NULL, 0);
    size_t removed = 0, i;
    char *err = NULL, id[32];
    (void)state;
    for (i = 0; i < 600; i++) {
        snprintf(id, sizeof id, "s%04zu", i);
        make_session(f, id, i % 3 == 0 ? "Active" : "Completed", 1);
    }
    assert_int_equal(rhema_cleanup_sessions(f->srv.storage, f->conn, rhema_realtime_ms(),
                                            &removed, &err), 0);
    assert_int_equal(removed, 400);
    assert_true(exists_session(f, "s0000"));
    assert_false(exists_session(f, "s0001"));
    assert_false(exists_session(f, "s0599"));
    fixture_free(f);
    free(err);
}

static void backup_create_names_and_writes(void **state)
{
    struct fixture *f = fixture_new(NULL, 0);
    char path[512], path2[512], dir[512], *err = NULL;
    struct stat st;
    (void)state;
    snprintf(dir, sizeof dir, "%s/deep/backups", tmpdir);
    raw_put(f, "t", "k", "v");
    assert_int_equal(rhema_backup_create(f->srv.storage, f->conn, "memory", dir, NOW_MS, path,
                                         sizeof path, &err), 0);
    assert_non_null(strstr(path, "/deep/backups/rhema-memory-20260131T000000Z.bak"));
    assert_int_equal(stat(dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0750);
    assert_int_equal(stat(path, &st), 0);
    assert_true(st.st_size > 0);
    /* the same second again: a "-2" name, not an overwrite */
    assert_int_equal(rhema_backup_create(f->srv.storage, f->conn, "memory", dir, NOW_MS, path2,
                                         sizeof path2, &err), 0);
    assert_non_null(strstr(path2, "rhema-memory-20260131T000000Z-2.bak"));
    assert_int_equal(rhema_backup_name_parse(strrchr(path2, '/') + 1, NULL, NULL), 0);
    fixture_free(f);
    free(err);
}

/* ---- the background backup: the main loop keeps running while it copies ---- */

/* A storage whose backup() waits at a gate the test opens. */
static struct rhema_storage_plugin slow_vt;
static const struct rhema_storage_plugin *real_vt;
static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cond = PTHREAD_COND_INITIALIZER;
static int gate_open, backup_entered;

static int slow_backup(rhema_storage_conn *c, const char *path, char **err)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 20; /* bounded: a broken test ends, it does not hang */
    pthread_mutex_lock(&gate_lock);
    backup_entered = 1;
    pthread_cond_broadcast(&gate_cond);
    while (!gate_open)
        if (pthread_cond_timedwait(&gate_cond, &gate_lock, &until) != 0)
            break;
    pthread_mutex_unlock(&gate_lock);
    return real_vt->backup(c, path, err);
}


static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    ++*(int *)arg;
}

static void backup_runs_off_the_main_thread(void **state)
{
    char ov_dir[600];
    snprintf(ov_dir, sizeof ov_dir, "persistence.backup_directory=%s/bg", tmpdir);
    const char *const ov[] = {ov_dir};
    struct fixture *f = fixture_new(ov, 1);
    struct rhema_maintenance *m = NULL;
    struct bg_result d = {0}, d2 = {0};
    struct timeval tick = {0, 10000}, span = {0, 300000};
    struct stat st;
    char *err = NULL;
    int ticks = 0;
    (void)state;

    real_vt = f->srv.storage;
    slow_vt = *real_vt;
    slow_vt.backup = slow_backup;
    f->srv.storage = &slow_vt;
    gate_open = backup_entered = 0;
    raw_put(f, "t", "k", "v");
    assert_int_equal(rhema_maintenance_start(&f->srv, f->base, &m, &err), 0);

    assert_int_equal(rhema_maintenance_backup_start(m, on_bg_result, &d), 0);
    assert_int_equal(rhema_maintenance_backup_running(m), 1);
    assert_int_equal(rhema_maintenance_backup_start(m, on_bg_result, &d2), RHEMA_ECONFLICT);

    /* the backup is stuck at the gate; the loop's timers still fire */
    struct event *t = event_new(f->base, -1, EV_PERSIST, on_tick, &ticks);
    assert_non_null(t);
    event_add(t, &tick);
    event_base_loopexit(f->base, &span);
    event_base_dispatch(f->base);
    pthread_mutex_lock(&gate_lock);
    assert_int_equal(backup_entered, 1);
    gate_open = 1;
    pthread_cond_broadcast(&gate_cond);
    pthread_mutex_unlock(&gate_lock);
    assert_true(ticks >= 5); /* 300 ms of 10 ms ticks: far fewer only if the loop was blocked */
    assert_int_equal(d.calls, 0);
    assert_int_equal(rhema_maintenance_backup_running(m), 1);

    /* done() on the main thread, once */
    run_until_done(f->base, &d);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.rc, 0);
    assert_int_equal(d2.calls, 0);
    assert_non_null(strstr(d.path, "/bg/rhema-memory-"));
    assert_int_equal(stat(d.path, &st), 0);
    assert_int_equal(rhema_maintenance_backup_running(m), 0);

    /* stop waits for a running backup and reports it */
    assert_int_equal(rhema_maintenance_backup_start(m, on_bg_result, &d2), 0);
    rhema_maintenance_stop(m);
    assert_int_equal(d2.calls, 1);
    assert_int_equal(d2.rc, 0);
    assert_int_equal(stat(d2.path, &st), 0);
    assert_string_not_equal(d.path, d2.path);

    event_free(t);
    f->srv.storage = real_vt;
    fixture_free(f);
    free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(names_parse),
        cmocka_unit_test_setup_teardown(prune_removes_old_keeps_newest_and_others, tmp_setup,
                                        tmp_teardown),
        cmocka_unit_test_setup_teardown(backup_create_names_and_writes, tmp_setup, tmp_teardown),
        cmocka_unit_test(size_limit),
        cmocka_unit_test(cleanup_removes_old_finished_sessions),
        cmocka_unit_test(cleanup_pages_through_many),
        cmocka_unit_test_setup_teardown(backup_runs_off_the_main_thread, tmp_setup, tmp_teardown),
    };
    evthread_use_pthreads(); /* before any base: the backup thread activates an event */
    return cmocka_run_group_tests_name("maintenance", tests, NULL, NULL);
}
