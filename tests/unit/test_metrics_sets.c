/*
 * test_metrics_sets -- the counter sets of metrics.h (issue 11): a worker
 * adds to its own copy, any other thread to the shared one, a read sums
 * them; histograms put a duration in the first bucket whose bound it does
 * not pass; out-of-range indexes and a closed registry change nothing; the
 * built-in set of the subsystems (rhema_metrics_count / _observe).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "metrics/metrics.h"

static unsigned slot_of(const void *route)
{
    (void)route;
    return 0;
}

static int setup(void **state)
{
    (void)state;
    return rhema_metrics_open(2, 1, slot_of);
}

static int teardown(void **state)
{
    (void)state;
    rhema_metrics_close();
    return 0;
}

struct job {
    struct rhema_metrics_set *set;
    int worker; /* -1: not a worker (the shared copy) */
    unsigned n;
};

static void *adder(void *arg)
{
    struct job *j = arg;
    if (j->worker >= 0)
        assert_non_null(rhema_metrics_thread_enter(j->worker));
    for (unsigned i = 0; i < j->n; i++) {
        rhema_metrics_set_add(j->set, 1, 1);
        rhema_metrics_set_observe(j->set, 0, 2000000); /* 2 ms: the 0.0025 bucket */
    }
    return NULL;
}

static void test_workers_and_shared_summed(void **state)
{
    (void)state;
    struct rhema_metrics_set *s = rhema_metrics_set_new(3, 1);
    struct job jobs[4] = {{s, 0, 1000}, {s, 1, 2000}, {s, -1, 300}, {s, -1, 400}};
    pthread_t t[4];
    uint64_t counts[RHEMA_METRICS_BUCKETS + 1], sum;
    assert_non_null(s);
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, adder, &jobs[i]), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(rhema_metrics_set_get(s, 1), 3700);
    assert_int_equal(rhema_metrics_set_get(s, 0), 0);
    assert_int_equal(rhema_metrics_set_get(s, 2), 0);
    assert_int_equal(rhema_metrics_set_hist(s, 0, counts, &sum), 3700);
    assert_int_equal(counts[2], 3700); /* le 0.0025 */
    assert_int_equal(counts[1] + counts[3], 0);
    assert_int_equal(sum, 3700ull * 2000000);
    rhema_metrics_set_free(s);
}

static void test_bounds_and_buckets(void **state)
{
    (void)state;
    struct rhema_metrics_set *s = rhema_metrics_set_new(2, 2);
    uint64_t counts[RHEMA_METRICS_BUCKETS + 1], sum;
    assert_non_null(s);
    rhema_metrics_set_add(s, 2, 5);      /* past the counters: ignored */
    rhema_metrics_set_observe(s, 2, 1);  /* past the histograms: ignored */
    rhema_metrics_set_add(NULL, 0, 1);   /* metrics off: a no-op */
    assert_int_equal(rhema_metrics_set_get(s, 0) + rhema_metrics_set_get(s, 1), 0);
    assert_int_equal(rhema_metrics_set_get(s, 2), 0);
    rhema_metrics_set_observe(s, 1, 500000);       /* exactly 0.5 ms: the first bucket */
    rhema_metrics_set_observe(s, 1, 500001);       /* just past it: the second */
    rhema_metrics_set_observe(s, 1, 20000000000ull); /* 20 s: past every bound (+Inf) */
    assert_int_equal(rhema_metrics_set_hist(s, 1, counts, &sum), 3);
    assert_int_equal(counts[0], 1);
    assert_int_equal(counts[1], 1);
    assert_int_equal(counts[RHEMA_METRICS_BUCKETS], 1);
    assert_int_equal(rhema_metrics_set_hist(s, 0, counts, &sum), 0);
    assert_int_equal(rhema_metrics_set_hist(s, 5, counts, &sum), 0);
    rhema_metrics_set_free(s);
}

static void test_builtin_set(void **state)
{
    (void)state;
    const struct rhema_metrics_set *b = rhema_metrics_builtin();
    uint64_t counts[RHEMA_METRICS_BUCKETS + 1], sum;
    assert_non_null(b);
    uint64_t before = rhema_metrics_set_get(b, RHEMA_MX_AUTH_FORBIDDEN);
    rhema_metrics_count(RHEMA_MX_AUTH_FORBIDDEN, 1);
    rhema_metrics_count(RHEMA_MX_AUDIT_BYTES, 1234);
    rhema_metrics_observe(RHEMA_MXH_TLS_HANDSHAKE, 3000000);
    assert_int_equal(rhema_metrics_set_get(b, RHEMA_MX_AUTH_FORBIDDEN), before + 1);
    assert_int_equal(rhema_metrics_set_get(b, RHEMA_MX_AUDIT_BYTES), 1234);
    assert_int_equal(rhema_metrics_set_hist(b, RHEMA_MXH_TLS_HANDSHAKE, counts, &sum), 1);
    assert_int_equal(counts[3], 1); /* le 0.005 */
    assert_string_equal(rhema_metrics_tls_result_name(0), "ok");
    assert_string_equal(rhema_metrics_tls_result_name(RHEMA_MX_TLS_RESULTS - 1), "aborted");
    assert_string_equal(rhema_metrics_tls_result_name(RHEMA_MX_TLS_RESULTS), "?");
}

static void test_closed_registry(void **state)
{
    (void)state;
    rhema_metrics_close();
    assert_null(rhema_metrics_builtin());
    assert_null(rhema_metrics_set_new(1, 1));
    rhema_metrics_count(RHEMA_MX_AUTH_OK, 1); /* no registry: a no-op, no crash */
    assert_int_equal(rhema_metrics_open(2, 1, slot_of), 0);
    assert_int_equal(rhema_metrics_set_get(rhema_metrics_builtin(), RHEMA_MX_AUTH_OK), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_workers_and_shared_summed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bounds_and_buckets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_builtin_set, setup, teardown),
        cmocka_unit_test_setup_teardown(test_closed_registry, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
