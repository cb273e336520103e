/*
 * test_util -- the error setters of core/util.c: rhema_set_error() replaces
 * a message already there and returns the code; rhema_set_errbuf() fills
 * at most RHEMA_ERRMSG_MAX bytes and never ends on half a UTF-8 sequence.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <rhema/plugin.h>

#include "util.h"

/* A deadline is now + ns on the clock asked for, normalised (tv_nsec < 1e9). */
static void deadline_after_adds_and_normalises(void **state)
{
    (void)state;
    static const uint64_t cases[] = {0, 1, 999999999u, 1000000000u, 1500000000u, 61999999999ull};
    static const clockid_t clocks[] = {CLOCK_REALTIME, CLOCK_MONOTONIC};
    for (size_t c = 0; c < 2; c++)
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            struct timespec before, at, after;
            clock_gettime(clocks[c], &before);
            rhema_deadline_after(clocks[c], cases[i], &at);
            clock_gettime(clocks[c], &after);
            assert_true(at.tv_nsec >= 0 && at.tv_nsec < 1000000000L);
            int64_t b = (int64_t)before.tv_sec * 1000000000 + before.tv_nsec;
            int64_t a = (int64_t)after.tv_sec * 1000000000 + after.tv_nsec;
            int64_t d = (int64_t)at.tv_sec * 1000000000 + at.tv_nsec;
            assert_true(d >= b + (int64_t)cases[i]); /* read no earlier than before */
            assert_true(d <= a + (int64_t)cases[i]); /* nor later than after */
        }
}

static void set_error_replaces_and_returns_code(void **state)
{
    (void)state;
    char *err = NULL;
    assert_int_equal(rhema_set_error(&err, RHEMA_EINVAL, "field '%s': bad", "x"), RHEMA_EINVAL);
    assert_string_equal(err, "field 'x': bad");
    assert_int_equal(rhema_set_error(&err, RHEMA_EIO, "second %d", 2), RHEMA_EIO);
    assert_string_equal(err, "second 2"); /* the first one was freed (LeakSanitizer) */
    free(err);
    assert_int_equal(rhema_set_error(NULL, RHEMA_ENOMEM, "nobody listens"), RHEMA_ENOMEM);
}

static void set_errbuf_fits_and_returns_code(void **state)
{
    (void)state;
    char err[RHEMA_ERRMSG_MAX];
    assert_int_equal(rhema_set_errbuf(err, RHEMA_ENOTFOUND, "session '%s' not found", "s1"),
                     RHEMA_ENOTFOUND);
    assert_string_equal(err, "session 's1' not found");
    assert_int_equal(rhema_set_errbuf(NULL, RHEMA_EINVAL, "x"), RHEMA_EINVAL);
}

/* A 2-, 3- and 4-byte character across the cut at every offset: never half of one. */
static void set_errbuf_cuts_at_a_character(void **state)
{
    (void)state;
    static const char *const chars[] = {"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"};
    char in[RHEMA_ERRMSG_MAX + 16], err[RHEMA_ERRMSG_MAX];
    for (size_t c = 0; c < 3; c++) {
        size_t w = strlen(chars[c]);
        for (size_t pad = RHEMA_ERRMSG_MAX - 6; pad < RHEMA_ERRMSG_MAX; pad++) {
            memset(in, 'a', pad);
            memcpy(in + pad, chars[c], w);
            memset(in + pad + w, 'b', 8);
            in[pad + w + 8] = '\0';
            rhema_set_errbuf(err, RHEMA_EINVAL, "%s", in);
            size_t n = strlen(err);
            assert_true(n < RHEMA_ERRMSG_MAX);
            if (pad + w <= RHEMA_ERRMSG_MAX - 1) /* the character fits: kept whole */
                assert_memory_equal(err + pad, chars[c], w);
            else /* it does not: cut before it */
                assert_int_equal(n, pad);
        }
    }
}

/* The cached second of rhema_time_format: right across seconds, days and a leap day. */
static void time_format_matches_gmtime(void **state)
{
    (void)state;
    static const uint64_t ms[] = {0, 999, 1000, 1764979199999ull, 1764979200000ull,
                                  1764979200001ull, 1709164800123ull, 1709164799999ull,
                                  1709164800123ull, 253402300799999ull};
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
        char got[RHEMA_TIME_MAX], want[RHEMA_TIME_MAX];
        time_t secs = (time_t)(ms[i] / 1000);
        struct tm tm;
        gmtime_r(&secs, &tm);
        snprintf(want, sizeof want, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 (unsigned)(ms[i] % 1000));
        rhema_time_format(ms[i], got);
        assert_string_equal(got, want);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(deadline_after_adds_and_normalises),
        cmocka_unit_test(set_error_replaces_and_returns_code),
        cmocka_unit_test(set_errbuf_fits_and_returns_code),
        cmocka_unit_test(set_errbuf_cuts_at_a_character),
        cmocka_unit_test(time_format_matches_gmtime),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
