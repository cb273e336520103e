/*
 * test_rate_file -- plugins/common/rate_file.c: rate() state in a shared
 * memory-mapped file.  It must agree step by step with the in-memory
 * table (rhema_rate_table_apply, whose step is the reference), refuse the
 * same malformed queries, forget the key that rests first when a
 * neighbourhood is full, share one limit between handles, threads and
 * processes, survive a process killed while it holds the lock, and
 * reinitialize a file that is not its layout (with a warning).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rate_file.h"
#include "rate_table.h"

#define HOUR 3600000000ll
#define NOW 1700000000000000ll

static char dir[256];
static int warnings;

static void fake_vlog(int level, const char *plugin, const char *fmt, va_list ap)
{
    (void)plugin;
    (void)fmt;
    (void)ap;
    if (level == RHEMA_LOG_WARN)
        warnings++;
}

static struct rhema_host fake_host;

static int setup(void **state)
{
    (void)state;
    const char *base = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/rhema-test-rate-file-XXXXXX", base && base[0] ? base : "/tmp");
    if (mkdtemp(dir) == NULL)
        return -1;
    fake_host.vlog = fake_vlog;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void path_of(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", dir, name);
}

static struct rhema_rate_file *open_file(const char *name, size_t capacity)
{
    char path[300], err[512];
    struct rhema_rate_file *f = NULL;
    path_of(path, sizeof path, name);
    int rc = rhema_rate_file_open(path, capacity, &fake_host, "test", &f, err, sizeof err);
    if (rc != 0)
        fail_msg("open %s: %s", path, err);
    return f;
}

static struct rhema_rate_query query(const char *key, const struct rhema_rate_window *w, size_t n,
                                     int64_t now)
{
    struct rhema_rate_query q;
    memset(&q, 0, sizeof q);
    q.size = sizeof q;
    q.key = key;
    q.windows = w;
    q.n = n;
    q.now_us = now;
    q.allowed = -1;
    return q;
}

/* One call of a 1-window limit (interval, burst intervals of tolerance): allowed or -1. */
static int call1(struct rhema_rate_file *f, const char *key, int64_t interval, int64_t burst,
                 int64_t now)
{
    const struct rhema_rate_window w = {(uint64_t)interval, (uint64_t)(burst * interval)};
    struct rhema_rate_query q = query(key, &w, 1, now);
    const char *why = NULL;
    return rhema_rate_file_apply(f, &q, &why) == 0 ? q.allowed : -1;
}

/* A random walk of keys, windows, n and time gives the same answers as the in-memory table. */
static void agrees_with_table(void **state)
{
    (void)state;
    struct rhema_rate_file *f = open_file("agree", 4096);
    struct rhema_rate_table *t = rhema_rate_table_new(0);
    const struct rhema_rate_window w[3] = {{1000, 3000}, {10000, 0}, {7, 70}};
    unsigned seed = 12345;
    int64_t now = NOW;
    int allowed = 0, refused = 0;
    for (int i = 0; i < 20000; i++) {
        char key[16];
        snprintf(key, sizeof key, "k%u", (unsigned)(rand_r(&seed) % 40));
        size_t n = 1 + (size_t)(rand_r(&seed) % 3); /* sometimes another n: a new party */
        now += rand_r(&seed) % 900;
        struct rhema_rate_query a = query(key, w, n, now), b = query(key, w, n, now);
        const char *wa = NULL, *wb = NULL;
        assert_int_equal(rhema_rate_file_apply(f, &a, &wa), 0);
        assert_int_equal(rhema_rate_table_apply(t, &b, &wb), 0);
        assert_int_equal(a.allowed, b.allowed);
        for (size_t k = 0; k < n; k++)
            assert_int_equal(a.tat_us[k], b.tat_us[k]);
        allowed += a.allowed == 1;
        refused += a.allowed == 0;
    }
    assert_true(allowed > 1000 && refused > 1000); /* both paths were taken */
    rhema_rate_table_free(t);
    rhema_rate_file_close(f);
}

/* Malformed queries: EINVAL with the table's why, nothing stored. */
static void invalid_queries(void **state)
{
    (void)state;
    struct rhema_rate_file *f = open_file("invalid", 64);
    struct rhema_rate_table *t = rhema_rate_table_new(0);
    const struct rhema_rate_window ok = {10, 0}, zero = {0, 0},
                                    huge = {(uint64_t)1 << 51, 0};
    char longkey[RHEMA_RATE_KEY_MAX + 2];
    memset(longkey, 'x', sizeof longkey - 1);
    longkey[sizeof longkey - 1] = '\0';
    struct rhema_rate_query qs[] = {
        query("", &ok, 1, NOW),       query(longkey, &ok, 1, NOW), query("k", &ok, 0, NOW),
        query("k", &ok, 5, NOW),      query("k", NULL, 1, NOW),    query("k", &zero, 1, NOW),
        query("k", &huge, 1, NOW),    query("k", &ok, 1, -1),
        query("k", &ok, 1, ((int64_t)1 << 52) + 1),
    };
    struct rhema_rate_query old = query("k", &ok, 1, NOW);
    old.size = RHEMA_RATE_QUERY_SIZE_2 - 1;
    for (size_t i = 0; i <= sizeof qs / sizeof qs[0]; i++) {
        struct rhema_rate_query a = i < sizeof qs / sizeof qs[0] ? qs[i] : old, b = a;
        const char *wa = NULL, *wb = NULL;
        assert_int_equal(rhema_rate_file_apply(f, &a, &wa), RHEMA_EINVAL);
        assert_int_equal(rhema_rate_table_apply(t, &b, &wb), RHEMA_EINVAL);
        assert_non_null(wa);
        assert_string_equal(wa, wb);
    }
    assert_int_equal(rhema_rate_file_live(f, NOW), 0);
    rhema_rate_table_free(t);
    rhema_rate_file_close(f);
}

/*
 * Keys at rest are forgotten and their slots reused: with 16 slots, a
 * thousand parties one after another, each at rest before the next comes,
 * never refuse each other and leave at most one live key.
 */
static void at_rest_reused(void **state)
{
    (void)state;
    struct rhema_rate_file *f = open_file("rest", 16);
    for (int i = 0; i < 1000; i++) {
        char key[16];
        snprintf(key, sizeof key, "p%d", i);
        assert_int_equal(call1(f, key, 10, 0, NOW + 10 * i), 1);
        assert_int_equal(call1(f, key, 10, 0, NOW + 10 * i), 0); /* remembered while live */
    }
    assert_int_equal(rhema_rate_file_live(f, NOW + 10 * 999), 1);
    rhema_rate_file_close(f);
}

/*
 * A full neighbourhood (16 slots = RHEMA_RATE_FILE_PROBE: every key meets
 * every slot) gives a new key the slot of the key that rests first.
 */
static void full_forgets_first_to_rest(void **state)
{
    (void)state;
    struct rhema_rate_file *f = open_file("full", 16);
    char key[16];
    for (int i = 0; i < 16; i++) { /* key i rests at NOW + (i + 1) hours */
        snprintf(key, sizeof key, "k%d", i);
        assert_int_equal(call1(f, key, (i + 1) * HOUR, 0, NOW), 1);
    }
    assert_int_equal(rhema_rate_file_live(f, NOW), 16);
    assert_int_equal(call1(f, "newcomer", HOUR * 100, 0, NOW + 1), 1);
    assert_int_equal(rhema_rate_file_live(f, NOW + 1), 16);
    assert_int_equal(call1(f, "newcomer", HOUR * 100, 0, NOW + 2), 0); /* stored */
    /* k0 (resting first) was forgotten: allowed again; k1..k15 still refused */
    for (int i = 15; i >= 1; i--) {
        snprintf(key, sizeof key, "k%d", i);
        assert_int_equal(call1(f, key, (i + 1) * HOUR, 0, NOW + 2), 0);
    }
    assert_int_equal(call1(f, "k0", HOUR, 0, NOW + 2), 1);
    rhema_rate_file_close(f);
}

struct shared_arg {
    struct rhema_rate_file *f;
    int allowed;
};

static void *hammer(void *p)
{
    struct shared_arg *a = p;
    for (int i = 0; i < 20000; i++)
        a->allowed += call1(a->f, "shared", HOUR, 39999, NOW) == 1;
    return NULL;
}

/* Two handles on one file (two open file descriptions), two threads each: one limit. */
static void handles_and_threads_share(void **state)
{
    (void)state;
    struct rhema_rate_file *f1 = open_file("threads", 1024), *f2 = open_file("threads", 1024);
    struct shared_arg a[4] = {{f1, 0}, {f1, 0}, {f2, 0}, {f2, 0}};
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, hammer, &a[i]), 0);
    int total = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        total += a[i].allowed;
    }
    /* burst 39999: exactly 40000 of the 80000 in the hour; a step that was not
     * atomic across the handles would lose updates and let more through */
    assert_int_equal(total, 40000);
    rhema_rate_file_close(f1);
    rhema_rate_file_close(f2);
}

/*
 * Three processes, each with its own handle, at once on one key: exactly
 * burst + 1 (a few hundred thousand steps: without the lock between
 * processes, lost updates let more through).
 */
static void processes_share(void **state)
{
    (void)state;
    struct rhema_rate_file *f = open_file("procs", 1024); /* creates it */
    rhema_rate_file_close(f);
    int go[2], total = 0;
    pid_t pid[3];
    assert_int_equal(pipe(go), 0);
    for (int i = 0; i < 3; i++) {
        pid[i] = fork();
        assert_true(pid[i] >= 0);
        if (pid[i] == 0) {
            char b;
            close(go[1]);
            struct rhema_rate_file *cf = open_file("procs", 1024);
            (void)!read(go[0], &b, 1);
            int n = 0;
            for (int k = 0; k < 40000; k++)
                n += call1(cf, "shared", HOUR, 59999, NOW) == 1;
            rhema_rate_file_close(cf);
            /* the exit status holds 8 bits: report through the pipe-less file of counts */
            char cpath[300], line[32];
            snprintf(cpath, sizeof cpath, "%s/count-%d", dir, i);
            FILE *out = fopen(cpath, "w");
            snprintf(line, sizeof line, "%d\n", n);
            _exit(out != NULL && fputs(line, out) >= 0 && fclose(out) == 0 ? 0 : 1);
        }
    }
    close(go[0]);
    close(go[1]);
    for (int i = 0; i < 3; i++) {
        int st = 0;
        assert_int_equal(waitpid(pid[i], &st, 0), pid[i]);
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), 0);
        char cpath[300];
        int n = -1;
        snprintf(cpath, sizeof cpath, "%s/count-%d", dir, i);
        FILE *in = fopen(cpath, "r");
        assert_non_null(in);
        assert_int_equal(fscanf(in, "%d", &n), 1);
        fclose(in);
        total += n;
    }
    assert_int_equal(total, 60000);
}

/*
 * A process killed while it holds the lock blocks nobody: the child takes
 * the OFD lock on the file and waits; once the lock is seen held, the
 * child is killed, and a step (in another child, bounded by alarm) ends.
 */
static void killed_holder_blocks_nobody(void **state)
{
    (void)state;
    char path[300], b;
    path_of(path, sizeof path, "crash");
    struct rhema_rate_file *f = open_file("crash", 64);
    int ready[2];
    assert_int_equal(pipe(ready), 0);
    pid_t holder = fork();
    assert_true(holder >= 0);
    if (holder == 0) {
        struct flock w = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
        int fd = open(path, O_RDWR);
        if (fd < 0 || fcntl(fd, F_OFD_SETLKW, &w) != 0)
            _exit(1);
        (void)!write(ready[1], "x", 1);
        for (;;)
            pause();
    }
    close(ready[1]);
    assert_int_equal(read(ready[0], &b, 1), 1);
    close(ready[0]);
    struct flock probe = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(fcntl(fd, F_OFD_GETLK, &probe), 0);
    assert_int_not_equal(probe.l_type, F_UNLCK); /* the child holds it */
    close(fd);
    kill(holder, SIGKILL);
    assert_int_equal(waitpid(holder, NULL, 0), holder);
    pid_t caller = fork();
    assert_true(caller >= 0);
    if (caller == 0) {
        alarm(60);
        struct rhema_rate_file *cf = open_file("crash", 64);
        _exit(call1(cf, "after", HOUR, 0, NOW) == 1 ? 0 : 1);
    }
    int st = 0;
    assert_int_equal(waitpid(caller, &st, 0), caller);
    assert_true(WIFEXITED(st)); /* not SIGALRM: the lock was not left behind */
    assert_int_equal(WEXITSTATUS(st), 0);
    assert_int_equal(call1(f, "after", HOUR, 0, NOW), 0); /* this handle sees the child's step */
    rhema_rate_file_close(f);
}

static void write_bytes(const char *path, size_t len, int fill, int keep)
{
    char buf[4096];
    int fd = open(path, keep ? O_WRONLY : O_WRONLY | O_TRUNC);
    assert_true(fd >= 0);
    if (keep) {
        assert_int_equal(ftruncate(fd, (off_t)len), 0);
    } else {
        memset(buf, fill, sizeof buf);
        for (size_t done = 0; done < len; done += sizeof buf)
            assert_true(write(fd, buf, len - done < sizeof buf ? len - done : sizeof buf) > 0);
    }
    close(fd);
}

static long long size_of(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

/*
 * Not this layout -> reinitialized with a warning, at open: cut short,
 * garbage, another version (the header's version field), a truncated
 * header; and while open: a header overwritten is seen at the next step.
 */
static void spoilt_files_reinitialized(void **state)
{
    (void)state;
    char path[300];
    path_of(path, sizeof path, "spoilt");
    struct rhema_rate_file *f = open_file("spoilt", 64);
    long long full = size_of(path);
    assert_int_equal(full, RHEMA_RATE_FILE_HEADER_SIZE + 64 * RHEMA_RATE_FILE_SLOT_SIZE);
    assert_int_equal(call1(f, "k", HOUR, 0, NOW), 1);
    rhema_rate_file_close(f);
    for (int kind = 0; kind < 4; kind++) {
        switch (kind) {
        case 0: write_bytes(path, (size_t)full - 100, 0, 1); break; /* cut short */
        case 1: write_bytes(path, (size_t)full, 0xa5, 0); break;    /* garbage */
        case 2: {                                                   /* version 99 */
            int fd = open(path, O_WRONLY);
            uint32_t v = 99;
            assert_true(fd >= 0);
            assert_int_equal(pwrite(fd, &v, sizeof v, 8), (ssize_t)sizeof v);
            close(fd);
            break;
        }
        case 3: write_bytes(path, 10, 0, 1); break; /* a truncated header */
        }
        int before = warnings;
        f = open_file("spoilt", 64);
        assert_int_equal(warnings, before + 1);
        assert_int_equal(size_of(path), full);
        assert_int_equal(call1(f, "k", HOUR, 0, NOW), 1); /* the state started afresh */
        assert_int_equal(call1(f, "k", HOUR, 0, NOW), 0);
        rhema_rate_file_close(f);
    }
    /* while open: the header overwritten by someone else, seen (and mended) at the next step */
    f = open_file("spoilt", 64);
    assert_int_equal(call1(f, "k", HOUR, 0, NOW), 0); /* a valid file keeps its state */
    int fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, "garbage!", 8, 0), 8);
    close(fd);
    int before = warnings;
    assert_int_equal(call1(f, "k", HOUR, 0, NOW), 1); /* reinitialized: afresh */
    assert_int_equal(warnings, before + 1);
    assert_int_equal(call1(f, "k", HOUR, 0, NOW), 0);
    assert_int_equal(size_of(path), full);
    rhema_rate_file_close(f);
}

/*
 * Another capacity: the opener's setting wins (reinitialized, a warning),
 * and a handle already open follows the new size instead of fighting.
 */
static void capacity_changes(void **state)
{
    (void)state;
    char path[300];
    path_of(path, sizeof path, "cap");
    struct rhema_rate_file *a = open_file("cap", 16);
    assert_int_equal(call1(a, "k", HOUR, 0, NOW), 1);
    int before = warnings;
    struct rhema_rate_file *b = open_file("cap", 32);
    assert_int_equal(warnings, before + 1);
    assert_int_equal(size_of(path), RHEMA_RATE_FILE_HEADER_SIZE + 32 * RHEMA_RATE_FILE_SLOT_SIZE);
    assert_int_equal(call1(b, "k", HOUR, 0, NOW), 1); /* reset by the new size */
    assert_int_equal(call1(a, "k", HOUR, 0, NOW), 0); /* a follows b's table */
    assert_int_equal(rhema_rate_file_capacity(a), 32);
    assert_int_equal(warnings, before + 1);
    rhema_rate_file_close(a);
    rhema_rate_file_close(b);
}

/* Bad arguments and unsafe paths: refused, with a message. */
static void open_refusals(void **state)
{
    (void)state;
    char path[300], link[300], err[512] = "";
    struct rhema_rate_file *f = NULL;
    struct stat st;
    path_of(path, sizeof path, "mode");
    assert_int_equal(rhema_rate_file_open(path, 8, NULL, "t", &f, err, sizeof err), RHEMA_EINVAL);
    assert_null(f);
    assert_non_null(strstr(err, "capacity"));
    assert_int_equal(rhema_rate_file_open(path, RHEMA_RATE_FILE_CAPACITY_MAX + 1, NULL, "t", &f,
                                          err, sizeof err),
                     RHEMA_EINVAL);
    mode_t old = umask(0);
    assert_int_equal(rhema_rate_file_open(path, 16, NULL, "t", &f, err, sizeof err), 0);
    umask(old);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    rhema_rate_file_close(f);
    f = NULL;
    path_of(link, sizeof link, "link");
    assert_int_equal(symlink(path, link), 0);
    assert_int_equal(rhema_rate_file_open(link, 16, NULL, "t", &f, err, sizeof err), RHEMA_EIO);
    assert_null(f);
    assert_non_null(strstr(err, "symbolic link")); /* O_NOFOLLOW: ELOOP */
    assert_int_equal(rhema_rate_file_open(dir, 16, NULL, "t", &f, err, sizeof err), RHEMA_EIO);
    assert_null(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(agrees_with_table),
        cmocka_unit_test(invalid_queries),
        cmocka_unit_test(at_rest_reused),
        cmocka_unit_test(full_forgets_first_to_rest),
        cmocka_unit_test(handles_and_threads_share),
        cmocka_unit_test(processes_share),
        cmocka_unit_test(killed_holder_blocks_nobody),
        cmocka_unit_test(spoilt_files_reinitialized),
        cmocka_unit_test(capacity_changes),
        cmocka_unit_test(open_refusals),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
