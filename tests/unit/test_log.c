/*
 * test_log -- core/log.c folds repeated lines as syslogd does: a line equal
 * to the one before it (level, module, message) is counted, and the count
 * is written as "last message repeated N times" before the next different
 * line, or when the log is closed (issue 17, item 4).  A thread that
 * batches its access lines writes them when it flushes, when its buffer
 * is full and before any other line of its own, in order (issue 14).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <rhema/plugin.h>

#include "log.h"

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

static void log_to(char path[64], enum rhema_log_format format)
{
    char *err = NULL;
    snprintf(path, 64, "/tmp/test_log.XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(rhema_log_open(RHEMA_LOG_INFO, format, path, &err), 0);
}

static void repeats_are_folded(void **state)
{
    (void)state;
    char path[64];
    log_to(path, RHEMA_LOG_FORMAT_TEXT);
    for (int i = 0; i < 100; i++)
        rhema_log(RHEMA_LOG_WARN, "http", "accept: %s", "Too many open files");
    rhema_log(RHEMA_LOG_WARN, "http", "accept: %s", "something else");
    rhema_log(RHEMA_LOG_WARN, "web", "accept: %s", "something else"); /* another module */
    rhema_log(RHEMA_LOG_ERROR, "web", "accept: %s", "something else"); /* another level */
    rhema_log_close();
    const char *text = slurp(path);
    assert_int_equal(count(text, "accept: Too many open files"), 1);
    assert_int_equal(count(text, "[warn] http: last message repeated 99 times\n"), 1);
    assert_int_equal(count(text, "something else"), 3);
    assert_true(strstr(text, "repeated 99 times") < strstr(text, "something else"));
    unlink(path);
}

static void a_pending_count_is_written_at_close(void **state)
{
    (void)state;
    char path[64];
    log_to(path, RHEMA_LOG_FORMAT_JSON);
    for (int i = 0; i < 3; i++)
        rhema_log(RHEMA_LOG_WARN, "main", "same");
    for (int i = 0; i < 3; i++) /* a notice (a reload's line, say) is never folded */
        rhema_log(RHEMA_LOG_NOTICE, "main", "reload");
    rhema_log_close();
    const char *text = slurp(path);
    assert_int_equal(count(text, "\"msg\":\"same\""), 1);
    assert_int_equal(count(text, "\"level\":\"warn\",\"module\":\"main\","
                                 "\"msg\":\"last message repeated 2 times\"}\n"),
                     1);
    assert_int_equal(count(text, "\"msg\":\"reload\""), 3);
    unlink(path);
}

static void log_request(int n)
{
    char id[32], uri[64];
    snprintf(id, sizeof id, "req-%d", n);
    snprintf(uri, sizeof uri, "/v1/sessions/s%d", n);
    (void)rhema_log_access(id, "127.0.0.1:1", "GET", uri, 200, 10, 0.5);
}

static void batched_access_lines_wait_for_the_flush(void **state)
{
    (void)state;
    char path[64];
    log_to(path, RHEMA_LOG_FORMAT_TEXT);
    rhema_log_batch(1);
    assert_int_equal(rhema_log_access("req-1", "127.0.0.1:1", "GET", "/a", 200, 1, 0.1), 1);
    assert_int_equal(rhema_log_access("req-2", "127.0.0.1:1", "GET", "/b", 200, 1, 0.1), 0);
    assert_int_equal(count(slurp(path), "access: req-"), 0); /* pending */
    rhema_log_flush();
    const char *text = slurp(path);
    assert_int_equal(count(text, "access: req-"), 2);
    assert_true(strstr(text, "req-1") < strstr(text, "req-2"));
    /* the first line after a flush is a first line again */
    assert_int_equal(rhema_log_access("req-3", "127.0.0.1:1", "GET", "/c", 200, 1, 0.1), 1);
    rhema_log_batch(0); /* writes what is pending */
    assert_int_equal(count(slurp(path), "access: req-3 127.0.0.1:1 \"GET /c\" 200 1 0.100ms\n"), 1);
    /* not batching: written at once */
    assert_int_equal(rhema_log_access("req-4", "127.0.0.1:1", "GET", "/d", 200, 1, 0.1), 0);
    assert_int_equal(count(slurp(path), "access: req-4"), 1);
    rhema_log_close();
    unlink(path);
}

static void a_threads_lines_keep_their_order(void **state)
{
    (void)state;
    char path[64], want[32];
    log_to(path, RHEMA_LOG_FORMAT_JSON);
    rhema_log_batch(1);
    log_request(1);
    rhema_log(RHEMA_LOG_WARN, "http", "between"); /* writes req-1 first */
    log_request(2);
    const char *text = slurp(path);
    assert_int_equal(count(text, "\"request_id\":\"req-1\""), 1);
    assert_int_equal(count(text, "\"request_id\":\"req-2\""), 0);
    assert_true(strstr(text, "req-1") < strstr(text, "between"));
    /* a full buffer is written, in order, without a flush: 2,000 lines of ~190 bytes */
    for (int i = 3; i <= 2000; i++)
        log_request(i);
    text = slurp(path);
    assert_true(count(text, "\"module\":\"access\"") > 1000);
    rhema_log_batch(0);
    text = slurp(path);
    assert_int_equal(count(text, "\"module\":\"access\""), 2000);
    const char *at = text;
    for (int i = 1; i <= 2000; i++) { /* each once, in the order logged */
        snprintf(want, sizeof want, "\"req-%d\"", i);
        const char *p = strstr(at, want);
        assert_non_null(p);
        at = p;
    }
    rhema_log_close();
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(repeats_are_folded),
        cmocka_unit_test(a_pending_count_is_written_at_close),
        cmocka_unit_test(batched_access_lines_wait_for_the_flush),
        cmocka_unit_test(a_threads_lines_keep_their_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
