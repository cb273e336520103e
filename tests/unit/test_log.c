/*
 * test_log -- core/log.c folds repeated lines as syslogd does: a line equal
 * to the one before it (level, module, message) is counted, and the count
 * is written as "last message repeated N times" before the next different
 * line, or when the log is closed (issue 17, item 4).
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
    static char buf[1 << 16];
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(repeats_are_folded),
        cmocka_unit_test(a_pending_count_is_written_at_close),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
