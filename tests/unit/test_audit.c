/*
 * test_audit -- the audit log's chain (core/audit_chain.c): lines sealed in
 * order verify, and an edit, a deletion, a move, a cut line, a forged start
 * or a file cut short is refused at the line where it shows; the per-log
 * HMAC key file; and the writer (core/audit.c) end to end on a temporary
 * file: what it writes verifies, across a reopen too.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <rhema/plugin.h>
#include <sodium.h>

#include "audit.h"
#include "audit_chain.h"
#include "config.h"
#include "util.h"

#define NLINES 6

/* NLINES sealed lines: an "audit.opened" first, then numbered events. */
struct log {
    char *buf;
    size_t len, cap;
    char *line[NLINES];
    size_t line_len[NLINES];
};

static void make_log(struct log *l, struct rhema_audit_chain *c)
{
    size_t start[NLINES];
    memset(l, 0, sizeof *l);
    for (int i = 0; i < NLINES; i++) {
        json_t *o = i == 0 ? json_pack("{s:s,s:s}", "type", "event", "event", "audit.opened")
                           : json_pack("{s:s,s:i}", "type", "event", "n", i);
        start[i] = l->len;
        assert_int_equal(rhema_audit_seal(c, o, &l->buf, &l->len, &l->cap), 0);
        json_decref(o);
    }
    for (int i = 0; i < NLINES; i++) {
        size_t end = i + 1 < NLINES ? start[i + 1] : l->len;
        l->line[i] = l->buf + start[i];
        l->line_len[i] = end - start[i] - 1; /* without the newline */
        assert_int_equal(l->line[i][l->line_len[i]], '\n');
    }
}

/*
 * What the chain tests start from (cmocka setup / teardown): a log of
 * NLINES lines sealed on a fresh chain c (which goes on after them), a
 * fresh verifier v, and room for its messages.
 */
struct fx {
    struct rhema_audit_chain c;
    struct log l;
    struct rhema_audit_verifier v;
    char why[RHEMA_ERRMSG_MAX];
};

static int fx_setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    rhema_audit_chain_init(&f->c);
    make_log(&f->l, &f->c);
    rhema_audit_verifier_init(&f->v);
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    struct fx *f = *state;
    free(f->l.buf);
    free(f);
    return 0;
}

/* Line i of l to verifier v, complete; file_start as given. */
static int feed(struct rhema_audit_verifier *v, const struct log *l, int i, int file_start,
                int *continued, char why[RHEMA_ERRMSG_MAX])
{
    return rhema_audit_verify_line(v, l->line[i], l->line_len[i], 1, file_start, continued, why);
}

/*
 * Feed lines (indexes into l, -1 ends) to a fresh verifier: the 1-based
 * position of the first line refused, 0 when all pass; why filled.
 */
static int run(const struct log *l, const int *order, char why[RHEMA_ERRMSG_MAX])
{
    struct rhema_audit_verifier v;
    rhema_audit_verifier_init(&v);
    for (int k = 0; order[k] >= 0; k++)
        if (feed(&v, l, order[k], k == 0, NULL, why) != 0)
            return k + 1;
    return 0;
}

static void intact_chain_verifies(void **state)
{
    struct fx *f = *state;
    assert_int_equal(f->c.seq, NLINES);
    assert_int_equal(run(&f->l, (int[]){0, 1, 2, 3, 4, 5, -1}, f->why), 0);
    /* each line names its predecessor's hash, the first the zero hash */
    assert_non_null(strstr(f->l.line[0], "\"seq\":1,\"prev\":\"0000000000"));
}

static void deleted_moved_lines_refused(void **state)
{
    struct fx *f = *state;
    assert_int_equal(run(&f->l, (int[]){0, 1, 3, 4, 5, -1}, f->why), 3); /* 2 deleted */
    assert_non_null(strstr(f->why, "seq 4 after seq 2"));
    assert_int_equal(run(&f->l, (int[]){0, 1, 3, 2, 4, 5, -1}, f->why), 3); /* 2 and 3 swapped */
    assert_int_equal(run(&f->l, (int[]){0, 1, 2, 3, 3, 4, -1}, f->why), 5); /* 3 repeated */
    assert_int_equal(run(&f->l, (int[]){1, 2, 3, -1}, f->why), 1);          /* the start deleted */
    assert_non_null(strstr(f->why, "audit.opened"));
}

static void edited_line_refused(void **state)
{
    struct fx *f = *state;
    char *n = strstr(f->l.line[3], "\"n\":3");
    assert_non_null(n);
    n[4] = '7';
    assert_int_equal(run(&f->l, (int[]){0, 1, 2, 3, 4, 5, -1}, f->why), 4);
    assert_non_null(strstr(f->why, "edited"));
    n[4] = '3';
    /* a prev that does not match: same seq, other chain */
    struct rhema_audit_chain c2;
    struct log other;
    rhema_audit_chain_init(&c2);
    c2.last[0] = '1';
    make_log(&other, &c2);
    assert_int_equal(feed(&f->v, &f->l, 0, 1, NULL, f->why), 0);
    assert_int_equal(feed(&f->v, &other, 1, 0, NULL, f->why), RHEMA_ECORRUPT);
    assert_non_null(strstr(f->why, "prev"));
    /* a forged first line: seq 1 with a prev that is not zero */
    rhema_audit_verifier_init(&f->v);
    assert_int_equal(feed(&f->v, &other, 0, 1, NULL, f->why), RHEMA_ECORRUPT);
    free(other.buf);
}

static void cut_and_garbage_refused(void **state)
{
    struct fx *f = *state;
    struct rhema_audit_verifier *v = &f->v;
    const struct log *l = &f->l;
    char *why = f->why;
    assert_int_equal(feed(v, l, 0, 1, NULL, why), 0);
    assert_int_equal(rhema_audit_verify_line(v, l->line[1], l->line_len[1] / 2, 0, 0, NULL, why),
                     RHEMA_ECORRUPT);
    assert_non_null(strstr(why, "cut"));
    assert_int_equal(rhema_audit_verify_line(v, l->line[1], l->line_len[1] - 3, 1, 0, NULL, why),
                     RHEMA_ECORRUPT);
    assert_int_equal(rhema_audit_verify_line(v, "[1]", 3, 1, 0, NULL, why), RHEMA_ECORRUPT);
    assert_int_equal(rhema_audit_verify_line(v, "", 0, 1, 0, NULL, why), RHEMA_ECORRUPT);
    assert_int_equal(rhema_audit_verify_line(v, "{\"seq\":2}", 9, 1, 0, NULL, why), RHEMA_ECORRUPT);
    /* still where it was: the good next line passes */
    assert_int_equal(feed(v, l, 1, 0, NULL, why), 0);
}

static void chain_continues_across_files(void **state)
{
    struct fx *f = *state;
    const struct log *a = &f->l;
    struct log b;
    int continued = 0;
    make_log(&b, &f->c); /* the second file: seq 7.., first prev = a's last hash */
    /* the second file alone: its start is taken on trust, and said so */
    assert_int_equal(feed(&f->v, &b, 0, 1, &continued, f->why), 0);
    assert_int_equal(continued, 1);
    /* both: the link is checked; the first must end with its close record */
    rhema_audit_verifier_init(&f->v);
    for (int i = 0; i < NLINES; i++)
        assert_int_equal(feed(&f->v, a, i, i == 0, NULL, f->why), 0);
    assert_int_equal(rhema_audit_verify_file_end(&f->v, f->why), RHEMA_ECORRUPT);
    assert_int_equal(feed(&f->v, &b, 0, 1, NULL, f->why), 0);
    /* the files given out of order */
    rhema_audit_verifier_init(&f->v);
    for (int i = 0; i < NLINES; i++)
        assert_int_equal(feed(&f->v, &b, i, i == 0, NULL, f->why), 0);
    assert_int_equal(feed(&f->v, a, 0, 1, NULL, f->why), RHEMA_ECORRUPT);
    free(b.buf);
}

static void hmac_key_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/test_audit.XXXXXX", path[256], *err = NULL;
    unsigned char k1[RHEMA_AUDIT_HMAC_KEY], k2[RHEMA_AUDIT_HMAC_KEY];
    char h1[RHEMA_AUDIT_HMAC_TEXT], h2[RHEMA_AUDIT_HMAC_TEXT];
    struct stat st;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/k", dir);
    assert_int_equal(rhema_audit_key_load(path, 0, k1, &err), RHEMA_EIO); /* absent */
    free(err);
    err = NULL;
    assert_int_equal(rhema_audit_key_load(path, 1, k1, &err), 0);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(rhema_audit_key_load(path, 1, k2, &err), 0); /* read, not made again */
    assert_memory_equal(k1, k2, sizeof k1);
    rhema_audit_hmac(k1, "s1", 2, h1);
    assert_int_equal(strncmp(h1, "hmac-sha256:", 12), 0);
    assert_int_equal(strlen(h1), 12 + 64);
    k2[0] ^= 1;
    rhema_audit_hmac(k2, "s1", 2, h2);
    assert_string_not_equal(h1, h2);
    FILE *f = fopen(path, "w");
    fputs("not hex\n", f);
    fclose(f);
    assert_int_equal(rhema_audit_key_load(path, 1, k1, &err), RHEMA_ECORRUPT);
    free(err);
    unlink(path);
    rmdir(dir);
}

/* A submitted write, called back by the writer thread. */
struct submitted {
    struct rhema_audit_wait wait;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int done, rc;
};

static void submitted_done(struct rhema_audit_wait *w, int rc)
{
    struct submitted *s = (struct submitted *)(void *)w;
    pthread_mutex_lock(&s->lock);
    s->done = 1;
    s->rc = rc;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

/* Verify a whole file with the verifier: the count of lines, or -(line) of the first refused. */
static long verify_path(const char *path, struct rhema_audit_verifier *v, int first)
{
    char why[RHEMA_ERRMSG_MAX], *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long no = 0;
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    while ((n = getline(&line, &cap, f)) > 0) {
        no++;
        int complete = line[n - 1] == '\n';
        if (rhema_audit_verify_line(v, line, (size_t)(complete ? n - 1 : n), complete, no == 1,
                                    NULL, why) != 0) {
            no = -no;
            break;
        }
    }
    (void)first;
    free(line);
    fclose(f);
    return no;
}

static void writer_end_to_end(void **state)
{
    (void)state;
    char dir[] = "/tmp/test_audit.XXXXXX", file[256], rotated[256], o1[300], *err = NULL;
    struct rhema_config cfg;
    struct rhema_audit_verifier v;
    assert_non_null(mkdtemp(dir));
    snprintf(file, sizeof file, "%s/audit.log", dir);
    snprintf(rotated, sizeof rotated, "%s/audit.log.1", dir);
    snprintf(o1, sizeof o1, "security.audit.file=%s", file);
    const char *const ov[] = {"security.audit.enabled=true", o1, "persistence.backend=memory"};
    assert_int_equal(rhema_config_load(&cfg, NULL, ov, 3, NULL, &err), 0);
    assert_int_equal(rhema_audit_open(&cfg, &err), 0);
    assert_true(rhema_audit_enabled());
    const char *roles = "ops";
    struct rhema_audit_request a = {.request_id = "r1",
                                    .key_id = "k1",
                                    .roles = roles,
                                    .client = "127.0.0.1:9",
                                    .method = "PUT",
                                    .route = "/v1/sessions/{id}",
                                    .param = "secret-id",
                                    .body = "{\"x\":1}",
                                    .bytes_in = 7};
    char why[RHEMA_ERRMSG_MAX];
    assert_int_equal(rhema_audit_request_begin(&a, 1, why), 0); /* durable on return */
    {
        /* the same without blocking: called back once durable */
        struct submitted sub = {.wait.done = submitted_done,
                                .lock = PTHREAD_MUTEX_INITIALIZER,
                                .cond = PTHREAD_COND_INITIALIZER};
        assert_int_equal(rhema_audit_request_submit(&a, &sub.wait), 0);
        pthread_mutex_lock(&sub.lock);
        while (!sub.done)
            pthread_cond_wait(&sub.cond, &sub.lock);
        pthread_mutex_unlock(&sub.lock);
        assert_int_equal(sub.rc, 0);
    }
    a.status = 201;
    a.bytes_out = 12;
    rhema_audit_request_end(&a);
    assert_int_equal(
        rhema_audit_event("auth.key_created", "r1", "k1", json_pack("{s:s}", "name", "ops")), 0);
    assert_int_equal(rename(file, rotated), 0);
    rhema_audit_reopen();
    for (int i = 0; i < 50; i++)
        rhema_audit_request_end(&a);
    rhema_audit_close();
    assert_false(rhema_audit_enabled());
    rhema_config_release(&cfg);

    rhema_audit_verifier_init(&v);
    long n1 = verify_path(rotated, &v, 1);
    assert_true(n1 >= 5); /* opened, begin x2, end, event (and maybe some of the 50) */
    assert_int_equal(rhema_audit_verify_file_end(&v, why), 0);
    long n2 = verify_path(file, &v, 0);
    assert_true(n2 >= 2);
    assert_int_equal(n1 + n2, 1 + 4 + 50 + 2 + 1); /* opened, 4, 50, closed+opened, closed */
    /* nothing in clear */
    FILE *f = fopen(rotated, "r");
    char text[8192];
    size_t len = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[len] = '\0';
    assert_null(strstr(text, "secret-id"));
    assert_null(strstr(text, "\\\"x\\\""));
    assert_non_null(strstr(text, "\"key_id\":\"k1\",\"roles\":[\"ops\"]"));
    assert_non_null(strstr(text, "auth.key_created"));

    char key[300];
    snprintf(key, sizeof key, "%s.key", file);
    unlink(file);
    unlink(rotated);
    unlink(key);
    rmdir(dir);
}

/*
 * Records from many threads, each appending to a buffer of its own: every
 * record reaches the file exactly once, each thread's in the order it
 * wrote them, blocking and called-back writes among them; threads that
 * exited leave nothing behind, and a second open in the same process
 * (buffers of live and exited threads) starts clean.  The file ends with
 * the close record and its chain verifies.
 */
#define T_THREADS 4
#define T_RECORDS 3000

struct producer {
    int no;
    int failed;
};

static void *produce(void *arg)
{
    struct producer *pr = arg;
    char id[32], why[RHEMA_ERRMSG_MAX];
    struct rhema_audit_request a = {.key_id = "k", .client = "127.0.0.1:9", .method = "GET",
                                    .route = "/v1/sessions/{id}", .status = 200};
    for (int i = 0; i < T_RECORDS; i++) {
        snprintf(id, sizeof id, "t%d-%05d", pr->no, i);
        a.request_id = id;
        if (i % 500 == 7) { /* a write: its begin record is durable on return */
            if (rhema_audit_request_begin(&a, 1, why) != 0)
                pr->failed++;
        } else if (i % 500 == 9) {
            struct submitted sub = {.wait.done = submitted_done,
                                    .lock = PTHREAD_MUTEX_INITIALIZER,
                                    .cond = PTHREAD_COND_INITIALIZER};
            if (rhema_audit_request_submit(&a, &sub.wait) != 0) {
                pr->failed++;
                continue;
            }
            pthread_mutex_lock(&sub.lock);
            while (!sub.done)
                pthread_cond_wait(&sub.cond, &sub.lock);
            pthread_mutex_unlock(&sub.lock);
            pr->failed += sub.rc != 0;
        } else {
            rhema_audit_request_end(&a);
        }
    }
    return NULL;
}

static void one_run(const char *file, long *lines)
{
    char o1[300], *err = NULL, why[RHEMA_ERRMSG_MAX];
    struct rhema_config cfg;
    struct rhema_audit_verifier v;
    pthread_t th[T_THREADS];
    struct producer pr[T_THREADS];
    snprintf(o1, sizeof o1, "security.audit.file=%s", file);
    const char *const ov[] = {"security.audit.enabled=true", o1, "security.audit.fsync=false",
                              "persistence.backend=memory"};
    assert_int_equal(rhema_config_load(&cfg, NULL, ov, 4, NULL, &err), 0);
    assert_int_equal(rhema_audit_open(&cfg, &err), 0);
    for (int k = 0; k < T_THREADS; k++) {
        pr[k] = (struct producer){.no = k};
        assert_int_equal(pthread_create(&th[k], NULL, produce, &pr[k]), 0);
    }
    for (int k = 0; k < T_THREADS; k++) {
        pthread_join(th[k], NULL);
        assert_int_equal(pr[k].failed, 0);
    }
    rhema_audit_request_end(&(struct rhema_audit_request){.request_id = "main", .method = "GET"});
    rhema_audit_flush();
    assert_int_equal(rhema_audit_queued(), 0);
    rhema_audit_close();
    rhema_config_release(&cfg);

    /* each thread's records, once each, in order */
    int next[T_THREADS] = {0};
    char *line = NULL, last[256] = "";
    size_t cap = 0;
    ssize_t n;
    long count = 0;
    FILE *f = fopen(file, "r");
    assert_non_null(f);
    while ((n = getline(&line, &cap, f)) > 0) {
        count++;
        snprintf(last, sizeof last, "%s", line);
        if (strstr(line, "\"audit.opened\"")) /* a run begins (the file holds them all) */
            memset(next, 0, sizeof next);
        assert_null(strstr(line, "\"closed\"")); /* queued while the log was closed */
        const char *r = strstr(line, "\"request_id\":\"t");
        if (!r)
            continue;
        int t = -1, i = -1;
        assert_int_equal(sscanf(r, "\"request_id\":\"t%d-%d\"", &t, &i), 2);
        assert_true(t >= 0 && t < T_THREADS);
        assert_int_equal(i, next[t]);
        next[t]++;
    }
    free(line);
    fclose(f);
    for (int k = 0; k < T_THREADS; k++)
        assert_int_equal(next[k], T_RECORDS);
    assert_non_null(strstr(last, "\"audit.closed\""));
    rhema_audit_verifier_init(&v);
    assert_int_equal(verify_path(file, &v, 1), count);
    assert_int_equal(rhema_audit_verify_file_end(&v, why), 0);
    *lines = count;
}

static void threads_records_once_in_order(void **state)
{
    (void)state;
    char dir[] = "/tmp/test_audit.XXXXXX", file[256], key[300];
    long first = 0, second = 0;
    assert_non_null(mkdtemp(dir));
    snprintf(file, sizeof file, "%s/audit.log", dir);
    snprintf(key, sizeof key, "%s.key", file);
    one_run(file, &first);
    assert_int_equal(first, 1 + T_THREADS * T_RECORDS + 1 + 1); /* opened, records, main, closed */
    /* queued while closed: never written */
    rhema_audit_request_end(&(struct rhema_audit_request){.request_id = "closed", .method = "GET"});
    one_run(file, &second); /* the chain goes on in the same file */
    assert_int_equal(second, 2 * first);
    unlink(file);
    unlink(key);
    rmdir(dir);
}

/*
 * The hashes come from OpenSSL with per-thread contexts and a cached keyed
 * state: each must equal libsodium's one-shot answer, for messages of every
 * length around the block size, and a change of key must not reuse the
 * previous key's state (in either direction).
 */
static void hashes_match_libsodium(void **state)
{
    (void)state;
    unsigned char k1[RHEMA_AUDIT_HMAC_KEY], k2[RHEMA_AUDIT_HMAC_KEY], msg[300];
    unsigned char h[32];
    char got[RHEMA_AUDIT_HMAC_TEXT], want[RHEMA_AUDIT_HMAC_TEXT], hex[65];
    randombytes_buf(k1, sizeof k1);
    memcpy(k2, k1, sizeof k2);
    k2[31] ^= 0x80;
    randombytes_buf(msg, sizeof msg);
    for (size_t n = 0; n <= sizeof msg; n += (n < 70 ? 1 : 23)) {
        crypto_hash_sha256(h, msg, n);
        sodium_bin2hex(hex, sizeof hex, h, sizeof h);
        rhema_audit_sha256_hex(msg, n, got);
        assert_string_equal(got, hex);
        for (int round = 0; round < 4; round++) {
            const unsigned char *k = (round & 1) ? k2 : k1;
            crypto_auth_hmacsha256(h, msg, n, k);
            memcpy(want, "hmac-sha256:", 12);
            sodium_bin2hex(want + 12, sizeof want - 12, h, sizeof h);
            rhema_audit_hmac(k, msg, n, got);
            assert_string_equal(got, want);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(intact_chain_verifies, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(deleted_moved_lines_refused, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(edited_line_refused, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(cut_and_garbage_refused, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(chain_continues_across_files, fx_setup, fx_teardown),
        cmocka_unit_test(hmac_key_file),
        cmocka_unit_test(hashes_match_libsodium),
        cmocka_unit_test(writer_end_to_end),
        cmocka_unit_test(threads_records_once_in_order),
    };
    if (sodium_init() < 0)
        return 1;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
