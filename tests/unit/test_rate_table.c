/*
 * test_rate_table -- plugins/common/rate_table.c: the GCRA step every
 * backend's rate() must agree with (rhema_gcra_step), the checks of a
 * query, and the in-memory table of the memory and file plugins (n
 * mismatch, keys at rest swept, max_keys eviction, count, growth, threads).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "rate_table.h"

#define HOUR 3600000000ull

/* A query of key over n windows at now (the windows are the caller's). */
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

static void step_fresh_key(void **state)
{
    (void)state;
    const struct rhema_rate_window w[2] = {{10, 0}, {100, 50}};
    struct rhema_rate_query q = query("k", w, 2, 1000);
    assert_int_equal(rhema_gcra_step(&q, NULL), 1100); /* at rest once both tats passed */
    assert_int_equal(q.allowed, 1);
    assert_int_equal(q.tat_us[0], 1010);
    assert_int_equal(q.tat_us[1], 1100);
    /* stored tats in the past are the same as none */
    const int64_t past[2] = {5, 999};
    q = query("k", w, 2, 1000);
    assert_int_equal(rhema_gcra_step(&q, past), 1100);
    assert_int_equal(q.allowed, 1);
    assert_int_equal(q.tat_us[0], 1010);
}

/* Tolerance 0: a tat at now conforms, one a microsecond later does not. */
static void step_tolerance_zero(void **state)
{
    (void)state;
    const struct rhema_rate_window w[1] = {{10, 0}};
    int64_t tat[1] = {1000};
    struct rhema_rate_query q = query("k", w, 1, 1000);
    rhema_gcra_step(&q, tat);
    assert_int_equal(q.allowed, 1);
    assert_int_equal(q.tat_us[0], 1010);
    tat[0] = 1001;
    q = query("k", w, 1, 1000);
    assert_int_equal(rhema_gcra_step(&q, tat), 1001);
    assert_int_equal(q.allowed, 0);
    assert_int_equal(q.tat_us[0], 1001); /* unchanged */
}

/* A tat far ahead is refused, left as it is, and keeps the key from resting. */
static void step_tat_far_in_the_future(void **state)
{
    (void)state;
    const struct rhema_rate_window w[2] = {{HOUR, 100}, {10, 1000000}};
    const int64_t tat[2] = {1000 + 1000000000000ll, 500};
    struct rhema_rate_query q = query("k", w, 2, 1000);
    assert_int_equal(rhema_gcra_step(&q, tat), tat[0]);
    assert_int_equal(q.allowed, 0);
    assert_int_equal(q.tat_us[0], tat[0]);
    assert_int_equal(q.tat_us[1], 1000); /* at rest: now, and not moved by the refusal */
}

/* b + 1 back to back with tolerance b intervals, then one per interval. */
static void step_burst_then_refill(void **state)
{
    (void)state;
    const struct rhema_rate_window w[1] = {{100, 300}};
    int64_t tat[1] = {0}, now = 1000000;
    int allowed = 0, i;
    for (i = 0; i < 10; i++) {
        struct rhema_rate_query q = query("k", w, 1, now);
        rhema_gcra_step(&q, i ? tat : NULL);
        allowed += q.allowed;
        tat[0] = q.tat_us[0];
    }
    assert_int_equal(allowed, 4);
    assert_int_equal(tat[0], now + 400);
    now += 100; /* one interval later: exactly one more */
    struct rhema_rate_query q = query("k", w, 1, now);
    rhema_gcra_step(&q, tat);
    assert_int_equal(q.allowed, 1);
    assert_int_equal(q.tat_us[0], now + 400);
    tat[0] = q.tat_us[0];
    q = query("k", w, 1, now);
    rhema_gcra_step(&q, tat);
    assert_int_equal(q.allowed, 0);
}

/* One window refusing refuses the request and moves none of the others. */
static void step_all_or_nothing(void **state)
{
    (void)state;
    const struct rhema_rate_window w[3] = {{10, 0}, {10, 5}, {HOUR, HOUR}};
    const int64_t tat[3] = {900, 1006, 1000 + HOUR};
    struct rhema_rate_query q = query("k", w, 3, 1000);
    rhema_gcra_step(&q, tat);
    assert_int_equal(q.allowed, 0);
    assert_int_equal(q.tat_us[0], 1000);
    assert_int_equal(q.tat_us[1], 1006);
    assert_int_equal(q.tat_us[2], 1000 + HOUR);
    const int64_t ok[3] = {900, 1005, 1000 + HOUR};
    q = query("k", w, 3, 1000);
    rhema_gcra_step(&q, ok);
    assert_int_equal(q.allowed, 1);
    assert_int_equal(q.tat_us[0], 1010);
    assert_int_equal(q.tat_us[1], 1015);
    assert_int_equal(q.tat_us[2], 1000 + 2 * HOUR);
}

static void query_checks(void **state)
{
    (void)state;
    char key[RHEMA_RATE_KEY_MAX + 2];
    const struct rhema_rate_window w[5] = {{1, 0}, {1, 0}, {1, 0}, {1, 0}, {1, 0}};
    const struct rhema_rate_window edge[1] = {{RHEMA_RATE_SPAN_MAX, RHEMA_RATE_SPAN_MAX}};
    const struct rhema_rate_window zero[2] = {{1, 0}, {0, 0}};
    const struct rhema_rate_window wide_iv[1] = {{RHEMA_RATE_SPAN_MAX + 1, 0}};
    const struct rhema_rate_window wide_tol[1] = {{1, RHEMA_RATE_SPAN_MAX + 1}};
    struct rhema_rate_query q;
    memset(key, 'k', RHEMA_RATE_KEY_MAX);
    key[RHEMA_RATE_KEY_MAX] = '\0';
    q = query(key, edge, 1, RHEMA_RATE_NOW_MAX);
    assert_null(rhema_rate_query_invalid(&q)); /* every bound itself is fine */
    q = query(key, w, 4, 0);
    assert_null(rhema_rate_query_invalid(&q));
    assert_non_null(rhema_rate_query_invalid(NULL));
    q.size = RHEMA_RATE_QUERY_SIZE_2 - 1;
    assert_non_null(strstr(rhema_rate_query_invalid(&q), "minor 2"));
    key[RHEMA_RATE_KEY_MAX] = 'k';
    key[RHEMA_RATE_KEY_MAX + 1] = '\0';
    q = query(key, w, 1, 0);
    assert_non_null(strstr(rhema_rate_query_invalid(&q), "key"));
    q = query("", w, 1, 0);
    assert_non_null(rhema_rate_query_invalid(&q));
    q = query(NULL, w, 1, 0);
    assert_non_null(rhema_rate_query_invalid(&q));
    q = query("k", w, 0, 0);
    assert_non_null(strstr(rhema_rate_query_invalid(&q), "windows"));
    q = query("k", w, 5, 0);
    assert_non_null(rhema_rate_query_invalid(&q));
    q = query("k", NULL, 1, 0);
    assert_non_null(rhema_rate_query_invalid(&q));
    q = query("k", zero, 2, 0);
    assert_non_null(strstr(rhema_rate_query_invalid(&q), "interval"));
    q = query("k", wide_iv, 1, 0);
    assert_non_null(rhema_rate_query_invalid(&q));
    q = query("k", wide_tol, 1, 0);
    assert_non_null(rhema_rate_query_invalid(&q));
    q = query("k", w, 1, -1);
    assert_non_null(strstr(rhema_rate_query_invalid(&q), "now"));
    q = query("k", w, 1, RHEMA_RATE_NOW_MAX + 1);
    assert_non_null(rhema_rate_query_invalid(&q));
}

static int apply(struct rhema_rate_table *t, const char *key, const struct rhema_rate_window *w,
                 size_t n, int64_t now, struct rhema_rate_query *out)
{
    const char *why = NULL;
    *out = query(key, w, n, now);
    assert_int_equal(rhema_rate_table_apply(t, out, &why), 0);
    assert_null(why);
    return out->allowed;
}

/* A key's state is kept; the same key with another n is a new party. */
static void table_keeps_state_and_n_mismatch(void **state)
{
    (void)state;
    const struct rhema_rate_window w[2] = {{HOUR, 0}, {HOUR, 0}};
    struct rhema_rate_table *t = rhema_rate_table_new(0);
    struct rhema_rate_query q;
    const char *why = NULL;
    assert_non_null(t);
    assert_int_equal(apply(t, "a", w, 1, 1000, &q), 1);
    assert_int_equal(apply(t, "a", w, 1, 1001, &q), 0);
    assert_int_equal(q.tat_us[0], 1000 + HOUR);
    assert_int_equal(apply(t, "b", w, 1, 1002, &q), 1); /* another key, its own state */
    assert_int_equal(apply(t, "a", w, 2, 1003, &q), 1);
    assert_int_equal(q.tat_us[0], 1003 + HOUR);
    assert_int_equal(q.tat_us[1], 1003 + HOUR);
    assert_int_equal(apply(t, "a", w, 2, 1004, &q), 0);
    assert_int_equal(apply(t, "a", w, 1, 1005, &q), 1); /* and back: fresh again */
    assert_int_equal(rhema_rate_table_count(t), 2);
    /* a malformed query is refused with a reason and stores nothing */
    q = query("c", w, 0, 1006);
    assert_int_equal(rhema_rate_table_apply(t, &q, &why), RHEMA_EINVAL);
    assert_non_null(why);
    assert_int_equal(rhema_rate_table_count(t), 2);
    rhema_rate_table_free(t);
}

/* A key at rest counts as absent, and is swept as the table grows. */
static void table_sweeps_keys_at_rest(void **state)
{
    (void)state;
    const struct rhema_rate_window w[1] = {{10, 0}};
    const struct rhema_rate_window slow[1] = {{HOUR, 0}};
    struct rhema_rate_table *t = rhema_rate_table_new(0);
    struct rhema_rate_query q;
    char key[16];
    int i;
    for (i = 0; i < 31; i++) {
        snprintf(key, sizeof key, "idle%d", i);
        assert_int_equal(apply(t, key, w, 1, 1000, &q), 1); /* at rest from 1010 */
    }
    assert_int_equal(apply(t, "busy", slow, 1, 1000, &q), 1);
    assert_int_equal(rhema_rate_table_count(t), 32);
    assert_int_equal(apply(t, "idle0", w, 1, 1005, &q), 0); /* not yet at rest */
    assert_int_equal(apply(t, "idle0", w, 1, 1010, &q), 1); /* at rest: allowed */
    /* the 33rd key, once the others rest, sweeps them: busy and it remain */
    assert_int_equal(apply(t, "new", w, 1, 2000, &q), 1);
    assert_int_equal(rhema_rate_table_count(t), 2);
    assert_int_equal(apply(t, "busy", slow, 1, 2001, &q), 0); /* its state survived */
    rhema_rate_table_free(t);
}

/* A full table forgets the key that rests first, and only that one. */
static void table_max_keys_evicts_the_first_to_rest(void **state)
{
    (void)state;
    const struct rhema_rate_window w[4][1] = {{{1000, 0}}, {{4000, 0}}, {{2000, 0}}, {{3000, 0}}};
    struct rhema_rate_table *t = rhema_rate_table_new(4);
    struct rhema_rate_query q;
    const char *keys[4] = {"r1000", "r4000", "r2000", "r3000"};
    int i;
    for (i = 0; i < 4; i++)
        assert_int_equal(apply(t, keys[i], w[i], 1, 100, &q), 1);
    assert_int_equal(rhema_rate_table_count(t), 4);
    assert_int_equal(apply(t, "fifth", w[1], 1, 200, &q), 1);
    assert_int_equal(rhema_rate_table_count(t), 4);
    /* r1000 was forgotten (fresh again); the others still refuse */
    for (i = 1; i < 4; i++)
        assert_int_equal(apply(t, keys[i], w[i], 1, 300, &q), 0);
    assert_int_equal(apply(t, "fifth", w[1], 1, 300, &q), 0);
    assert_int_equal(apply(t, "r1000", w[0], 1, 300, &q), 1);
    assert_int_equal(rhema_rate_table_count(t), 4);
    rhema_rate_table_free(t);
}

/* Thousands of keys (the table rehashes) keep their states. */
static void table_grows(void **state)
{
    (void)state;
    const struct rhema_rate_window w[1] = {{HOUR, 0}};
    struct rhema_rate_table *t = rhema_rate_table_new(0);
    struct rhema_rate_query q;
    char key[16];
    int i;
    for (i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "k%d", i);
        assert_int_equal(apply(t, key, w, 1, 1000 + i, &q), 1);
    }
    assert_int_equal(rhema_rate_table_count(t), 5000);
    for (i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "k%d", i);
        assert_int_equal(apply(t, key, w, 1, 10000, &q), 0);
        assert_int_equal(q.tat_us[0], 1000 + i + (int64_t)HOUR);
    }
    rhema_rate_table_free(t);
}

#define THREADS 4
#define CALLS 2000

struct race {
    struct rhema_rate_table *t;
    int allowed[THREADS];
    int index;
    pthread_mutex_t mu;
};

static void *hammer(void *arg)
{
    struct race *r = arg;
    const struct rhema_rate_window w[1] = {{HOUR, 99 * HOUR}};
    pthread_mutex_lock(&r->mu);
    int me = r->index++;
    pthread_mutex_unlock(&r->mu);
    for (int i = 0; i < CALLS; i++) {
        struct rhema_rate_query q = query("shared", w, 1, 1000); /* one instant: exact */
        if (rhema_rate_table_apply(r->t, &q, NULL) == 0 && q.allowed == 1)
            r->allowed[me]++;
    }
    return NULL;
}

/* Threads on one key: exactly tolerance / interval + 1 allowed in all. */
static void table_threads_exact(void **state)
{
    (void)state;
    struct race r;
    pthread_t th[THREADS];
    int i, total = 0;
    memset(&r, 0, sizeof r);
    pthread_mutex_init(&r.mu, NULL);
    r.t = rhema_rate_table_new(0);
    for (i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, hammer, &r), 0);
    for (i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        total += r.allowed[i];
    }
    assert_int_equal(total, 100);
    rhema_rate_table_free(r.t);
    pthread_mutex_destroy(&r.mu);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(step_fresh_key),
        cmocka_unit_test(step_tolerance_zero),
        cmocka_unit_test(step_tat_far_in_the_future),
        cmocka_unit_test(step_burst_then_refill),
        cmocka_unit_test(step_all_or_nothing),
        cmocka_unit_test(query_checks),
        cmocka_unit_test(table_keeps_state_and_n_mismatch),
        cmocka_unit_test(table_sweeps_keys_at_rest),
        cmocka_unit_test(table_max_keys_evicts_the_first_to_rest),
        cmocka_unit_test(table_grows),
        cmocka_unit_test(table_threads_exact),
    };
    return cmocka_run_group_tests_name("rate_table", tests, NULL, NULL);
}
