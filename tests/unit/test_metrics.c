/*
 * test_metrics -- the exposition writer (label escaping, numbers, the two
 * formats' counter names and end) and the per-worker counters summed into
 * exact counts and consistent histograms.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "metrics/metrics.h"

/* Label values are escaped as both formats want: backslash, quote, newline. */
static void test_label_escaping(void **state)
{
    static const char *const k[] = {"a", "b"};
    static const char *const v[] = {"back\\slash \"quoted\"\nnext", "plain"};
    struct rhema_expo e;
    (void)state;
    rhema_expo_init(&e, 0);
    rhema_expo_sample_u64(&e, "m", "", 2, k, v, 7);
    assert_false(e.oom);
    assert_string_equal(e.text, "m{a=\"back\\\\slash \\\"quoted\\\"\\nnext\",b=\"plain\"} 7\n");
    assert_int_equal(e.series, 1);
    rhema_expo_release(&e);
}

/* A counter's TYPE line: "x_total" in the text format, "x" in OpenMetrics, which ends with # EOF.
 */
static void test_formats(void **state)
{
    struct rhema_expo t, o;
    (void)state;
    rhema_expo_init(&t, 0);
    rhema_expo_init(&o, 1);
    rhema_expo_family(&t, "x", "counter", "help with \\ and\nnewline \"q\"");
    rhema_expo_sample(&t, "x", "_total", 0, NULL, NULL, 3);
    rhema_expo_finish(&t);
    rhema_expo_family(&o, "x", "counter", "h \"q\"");
    rhema_expo_sample(&o, "x", "_total", 0, NULL, NULL, 3);
    rhema_expo_family(&o, "g", "gauge", "h");
    rhema_expo_sample(&o, "g", "", 0, NULL, NULL, 0.25);
    rhema_expo_finish(&o);
    assert_string_equal(t.text, "# HELP x_total help with \\\\ and\\nnewline \"q\"\n"
                                "# TYPE x_total counter\n"
                                "x_total 3\n");
    assert_string_equal(o.text, "# HELP x h \\\"q\\\"\n# TYPE x counter\nx_total 3.0\n"
                                "# HELP g h\n# TYPE g gauge\ng 0.25\n# EOF\n");
    rhema_expo_release(&t);
    rhema_expo_release(&o);
}

/* Numbers: the shortest form that reads back, fixed notation in the usual range. */
static void test_numbers(void **state)
{
    static const struct {
        double v;
        const char *text;
    } cases[] = {{10, "m 10\n"},
                 {0.0005, "m 0.0005\n"},
                 {2.5, "m 2.5\n"},
                 {1e21, "m 1e+21\n"},
                 {0.1 + 0.2, "m 0.30000000000000004\n"},
                 {1.0 / 0.0, "m +Inf\n"},
                 {123456789, "m 123456789\n"},
                 {1e-7, "m 1e-07\n"}};
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        struct rhema_expo e;
        rhema_expo_init(&e, 0);
        rhema_expo_sample(&e, "m", "", 0, NULL, NULL, cases[i].v);
        assert_string_equal(e.text, cases[i].text);
        rhema_expo_release(&e);
    }
}

static unsigned slot_of(const void *route)
{
    return (unsigned)(uintptr_t)route; /* the tests pass the slot itself as the route */
}

static size_t count_lines(const char *text, const char *prefix, uint64_t *last_value)
{
    size_t n = 0, plen = strlen(prefix);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, prefix, plen) == 0) {
            n++;
            *last_value = strtoull(strchr(p, ' ') + 1, NULL, 10);
        }
    return n;
}

/*
 * Two workers' blocks and the shared one sum to exact counts; buckets are
 * cumulative and end with +Inf = _count = the requests.
 */
static void test_counters_summed(void **state)
{
    static const char *const names[] = {"unmatched", "/v1/things/{id}", "/health"};
    struct rhema_metrics_block *b0, *b1;
    struct rhema_expo e;
    uint64_t v = 0, prev = 0;
    (void)state;
    assert_int_equal(rhema_metrics_open(2, 3, slot_of), 0);
    assert_int_not_equal(rhema_metrics_open(2, 3, slot_of), 0); /* once */
    b0 = rhema_metrics_thread_enter(0);
    b1 = rhema_metrics_thread_enter(1);
    assert_non_null(b0);
    assert_non_null(b1);
    assert_ptr_not_equal(b0, b1);
    assert_null(rhema_metrics_thread_enter(2)); /* no such worker */
    for (int i = 0; i < 5; i++)
        rhema_metrics_reply(b0, (void *)(uintptr_t)1, 1u /* GET */, 200, 300000u * (unsigned)i);
    for (int i = 0; i < 2; i++)
        rhema_metrics_reply(b1, (void *)(uintptr_t)1, 1u, 200, 20000000000ull);
    rhema_metrics_reply(b1, (void *)(uintptr_t)1, 8u /* PUT */, 409, 1000);
    rhema_metrics_reply(b1, NULL, 1u, 404, 1000);
    rhema_metrics_request_started(b0);
    rhema_metrics_storage(RHEMA_MOP_GET, 1000, 0);
    rhema_metrics_storage(RHEMA_MOP_PUT, 1000, 1);

    rhema_expo_init(&e, 0);
    rhema_metrics_write(&e, names, "memory");
    assert_false(e.oom);
    assert_int_equal(count_lines(e.text,
                                 "rhema_http_requests_total{route=\"/v1/things/{id}\","
                                 "method=\"GET\",code=\"200\"} ",
                                 &v),
                     1);
    assert_int_equal(v, 7);
    assert_int_equal(count_lines(e.text,
                                 "rhema_http_requests_total{route=\"/v1/things/{id}\","
                                 "method=\"PUT\",code=\"409\"} ",
                                 &v),
                     1);
    assert_int_equal(v, 1);
    assert_int_equal(count_lines(e.text,
                                 "rhema_http_requests_total{route=\"unmatched\","
                                 "method=\"GET\",code=\"404\"} ",
                                 &v),
                     1);
    assert_int_equal(v, 1);
    assert_int_equal(count_lines(e.text, "rhema_http_requests_total{route=\"/health\"", &v), 0);
    /* the histogram of the route: monotonic, +Inf = count = 8 */
    for (unsigned i = 0; i < RHEMA_METRICS_BUCKETS; i++) {
        char prefix[160], le[32];
        snprintf(le, sizeof le, "%g", rhema_metrics_bucket_le[i]);
        if (!strchr(le, '.') && !strchr(le, 'e'))
            strcat(le, ".0");
        snprintf(prefix, sizeof prefix,
                 "rhema_http_request_duration_seconds_bucket{route=\"/v1/things/{id}\",le=\"%s\"} ",
                 le);
        assert_int_equal(count_lines(e.text, prefix, &v), 1);
        assert_true(v >= prev);
        prev = v;
    }
    assert_int_equal(prev, 6); /* 5 fast ones and the 409; the two 20 s ones above 10 s */
    assert_int_equal(count_lines(e.text,
                                 "rhema_http_request_duration_seconds_bucket{route=\"/v1/"
                                 "things/{id}\",le=\"+Inf\"} ",
                                 &v),
                     1);
    assert_int_equal(v, 8);
    assert_int_equal(count_lines(e.text,
                                 "rhema_http_request_duration_seconds_count{route=\"/v1/"
                                 "things/{id}\"} ",
                                 &v),
                     1);
    assert_int_equal(v, 8);
    /* bucket 0.0005 holds the 0, 0.3 ms and the 1 us ones */
    assert_int_equal(count_lines(e.text,
                                 "rhema_http_request_duration_seconds_bucket{route=\"/v1/"
                                 "things/{id}\",le=\"0.0005\"} ",
                                 &v),
                     1);
    assert_int_equal(v, 3);
    /* in flight: 1 started, 9 answered -> never negative */
    assert_int_equal(count_lines(e.text, "rhema_http_requests_in_flight ", &v), 1);
    assert_int_equal(v, 0);
    /* storage: counted in this thread's block (the last entered) */
    assert_int_equal(count_lines(e.text,
                                 "rhema_storage_errors_total{backend=\"memory\","
                                 "operation=\"put\"} ",
                                 &v),
                     1);
    assert_int_equal(v, 1);
    assert_int_equal(count_lines(e.text,
                                 "rhema_storage_errors_total{backend=\"memory\","
                                 "operation=\"get\"} ",
                                 &v),
                     1);
    assert_int_equal(v, 0);
    assert_int_equal(count_lines(e.text,
                                 "rhema_storage_operation_duration_seconds_count{backend="
                                 "\"memory\",operation=\"get\"} ",
                                 &v),
                     1);
    assert_int_equal(v, 1);
    rhema_expo_release(&e);
    rhema_metrics_close();
    assert_false(rhema_metrics_enabled());
    rhema_metrics_reply(NULL, NULL, 1u, 200, 1); /* off: a no-op */
    rhema_metrics_storage(RHEMA_MOP_GET, 1, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_label_escaping),
        cmocka_unit_test(test_formats),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_counters_summed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
