/*
 * Unit tests for core/ai/cache.c: hits and misses, TTL, the LRU bounded by
 * bytes and by count, the real byte accounting, max_entry_bytes, the
 * refresh of an entry, and single flight (waiters woken once with the
 * leader's answer, cancel_wait, drop_owner).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ai/cache.h"

#define S 1000000000ull

static struct rhema_ai_cache *mk(uint64_t ttl_s, size_t size, size_t entry, size_t count)
{
    struct rhema_ai_cache_limits lim = {ttl_s * S, size, entry, count};
    struct rhema_ai_cache *c = NULL;
    char *err = NULL;
    assert_int_equal(rhema_ai_cache_new(&lim, &c, &err), 0);
    assert_non_null(c);
    return c;
}

static void key_of(const char *body, const char *scope, unsigned char k[RHEMA_AI_CACHE_KEY_LEN])
{
    rhema_ai_cache_key("chat/completions", scope, body, strlen(body), k);
}

/* Lead k's flight and store a response of n body bytes at time t. */
static enum rhema_ai_cache_stored put(struct rhema_ai_cache *c, const unsigned char *k, size_t n,
                                      uint64_t t)
{
    struct rhema_ai_cache_waiter w = {0};
    struct rhema_ai_cache_resp *hit = NULL, *p;
    uint64_t age;
    char *body = calloc(1, n + 1);
    enum rhema_ai_cache_stored r;
    memset(body, 'x', n);
    assert_int_equal(rhema_ai_cache_lookup(c, k, 1, t, &w, &hit, &age), RHEMA_AIC_LEAD);
    p = rhema_ai_cache_resp_new(200, "application/json", "up", "", -1, body, n);
    free(body);
    r = rhema_ai_cache_complete(c, k, p, 1, t);
    rhema_ai_cache_resp_unref(p);
    return r;
}

/* 1 when k is a hit at time t (and *len its body's length). */
static int hit_at(struct rhema_ai_cache *c, const unsigned char *k, uint64_t t, uint64_t *age)
{
    struct rhema_ai_cache_waiter w = {0};
    struct rhema_ai_cache_resp *hit = NULL;
    uint64_t a = 0;
    enum rhema_ai_cache_verdict v = rhema_ai_cache_lookup(c, k, 0, t, &w, &hit, &a);
    if (v == RHEMA_AIC_HIT) {
        rhema_ai_cache_resp_unref(hit);
        if (age)
            *age = a;
        return 1;
    }
    assert_int_equal(v, RHEMA_AIC_LEAD);
    rhema_ai_cache_complete(c, k, NULL, 0, t); /* end the flight the miss began */
    return 0;
}

static void test_key(void **state)
{
    unsigned char a[32], b[32], c[32], d[32];
    (void)state;
    key_of("{\"model\":\"m\"}", "key:A", a);
    key_of("{\"model\":\"m\"}", "key:A", b);
    key_of("{\"model\":\"m\"}", "key:B", c);
    rhema_ai_cache_key("embeddings", "key:A", "{\"model\":\"m\"}", 13, d);
    assert_memory_equal(a, b, 32);
    assert_memory_not_equal(a, c, 32); /* another tenant */
    assert_memory_not_equal(a, d, 32); /* another route */
}

static void test_hit_ttl(void **state)
{
    struct rhema_ai_cache *c = mk(10, 1 << 20, 1 << 16, 100);
    struct rhema_ai_cache_stats st;
    unsigned char k[32], k2[32];
    uint64_t age = 99;
    (void)state;
    key_of("a", "s", k);
    key_of("b", "s", k2);
    assert_int_equal(hit_at(c, k, 1 * S, NULL), 0);
    assert_int_equal(put(c, k, 100, 1 * S), RHEMA_AIC_STORED);
    assert_int_equal(hit_at(c, k, 4 * S + 1, &age), 1);
    assert_int_equal(age, 3);
    assert_int_equal(hit_at(c, k2, 4 * S, NULL), 0);
    assert_int_equal(hit_at(c, k, 11 * S - 1, NULL), 1);
    assert_int_equal(hit_at(c, k, 11 * S, NULL), 0); /* expired: dropped */
    rhema_ai_cache_stats(c, &st);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.bytes, 0);
    assert_int_equal(st.expirations, 1);
    assert_int_equal(st.hits, 2);
    assert_int_equal(st.stores, 1);
    assert_int_equal(st.flights, 0);
    rhema_ai_cache_free(c);
}

static void test_bytes_lru(void **state)
{
    struct rhema_ai_cache *c;
    struct rhema_ai_cache_stats st;
    unsigned char a[32], b[32], d[32];
    size_t one;
    (void)state;
    key_of("A", "s", a);
    key_of("B", "s", b);
    key_of("C", "s", d);
    /* the real size of one entry of 1000 body bytes */
    c = mk(100, 1 << 20, 1 << 20, 100);
    assert_int_equal(put(c, a, 1000, S), RHEMA_AIC_STORED);
    rhema_ai_cache_stats(c, &st);
    one = st.bytes;
    assert_true(one >= 1000 + 32 + sizeof(struct rhema_ai_cache_resp));
    assert_true(one < 1000 + 512);
    rhema_ai_cache_free(c);
    /* room for two: A, B, C stored -> A evicted */
    c = mk(100, 2 * one + one / 2, 1 << 20, 100);
    assert_int_equal(put(c, a, 1000, S), RHEMA_AIC_STORED);
    assert_int_equal(put(c, b, 1000, S), RHEMA_AIC_STORED);
    assert_int_equal(put(c, d, 1000, S), RHEMA_AIC_STORED);
    rhema_ai_cache_stats(c, &st);
    assert_int_equal(st.entries, 2);
    assert_int_equal(st.bytes, 2 * one);
    assert_int_equal(st.evictions, 1);
    assert_int_equal(hit_at(c, b, 2 * S, NULL), 1);
    assert_int_equal(hit_at(c, d, 2 * S, NULL), 1);
    assert_int_equal(hit_at(c, a, 2 * S, NULL), 0);
    /* B is now the least recently used but one: touch B, store A -> C goes */
    assert_int_equal(hit_at(c, b, 3 * S, NULL), 1);
    assert_int_equal(put(c, a, 1000, 3 * S), RHEMA_AIC_STORED);
    assert_int_equal(hit_at(c, d, 4 * S, NULL), 0);
    assert_int_equal(hit_at(c, b, 4 * S, NULL), 1);
    assert_int_equal(hit_at(c, a, 4 * S, NULL), 1);
    /* a refresh replaces, it does not add */
    assert_int_equal(put(c, a, 1000, 5 * S), RHEMA_AIC_STORED);
    rhema_ai_cache_stats(c, &st);
    assert_int_equal(st.entries, 2);
    assert_int_equal(st.bytes, 2 * one);
    rhema_ai_cache_free(c);
}

static void test_limits(void **state)
{
    struct rhema_ai_cache *c = mk(100, 1 << 20, 2048, 2);
    struct rhema_ai_cache_stats st;
    unsigned char a[32], b[32], d[32];
    (void)state;
    key_of("A", "s", a);
    key_of("B", "s", b);
    key_of("C", "s", d);
    assert_int_equal(put(c, a, 4000, S), RHEMA_AIC_TOO_LARGE); /* over max_entry_bytes */
    assert_int_equal(hit_at(c, a, S, NULL), 0);
    assert_int_equal(put(c, a, 100, S), RHEMA_AIC_STORED);
    assert_int_equal(put(c, b, 100, S), RHEMA_AIC_STORED);
    assert_int_equal(put(c, d, 100, S), RHEMA_AIC_STORED); /* max_entries 2: A goes */
    rhema_ai_cache_stats(c, &st);
    assert_int_equal(st.entries, 2);
    assert_int_equal(st.too_large, 1);
    assert_int_equal(hit_at(c, a, S, NULL), 0);
    rhema_ai_cache_free(c);
}

struct waiter {
    struct rhema_ai_cache_waiter w; /* first */
    int woken, abandoned;
    struct rhema_ai_cache_resp *resp;
};

static void wake(struct rhema_ai_cache_waiter *w, struct rhema_ai_cache_resp *resp)
{
    struct waiter *x = (struct waiter *)(void *)w;
    x->woken++;
    x->resp = resp;
}

static void abandon(struct rhema_ai_cache_waiter *w)
{
    ((struct waiter *)(void *)w)->abandoned++;
}

static void test_single_flight(void **state)
{
    struct rhema_ai_cache *c = mk(100, 1 << 20, 1 << 16, 100);
    struct rhema_ai_cache_stats st;
    struct rhema_ai_cache_resp *hit = NULL, *p;
    struct waiter ws[4] = {0}, lead = {0};
    unsigned char k[32];
    uint64_t age;
    int other = 7;
    (void)state;
    key_of("q", "s", k);
    for (int i = 0; i < 4; i++) {
        ws[i].w.wake = wake;
        ws[i].w.abandon = abandon;
        ws[i].w.owner = i == 3 ? (void *)&other : (void *)c;
    }
    assert_int_equal(rhema_ai_cache_lookup(c, k, 0, S, &lead.w, &hit, &age), RHEMA_AIC_LEAD);
    for (int i = 0; i < 4; i++)
        assert_int_equal(rhema_ai_cache_lookup(c, k, i == 2, S, &ws[i].w, &hit, &age),
                         RHEMA_AIC_FOLLOW); /* a refresh joins the running flight too */
    assert_int_equal(rhema_ai_cache_cancel_wait(c, &ws[1].w), 1);
    rhema_ai_cache_drop_owner(c, &other);
    assert_int_equal(ws[3].abandoned, 1);
    /* an error: not stored, but the waiters get it */
    p = rhema_ai_cache_resp_new(502, "application/json", "", "u 502", -1, "{}", 2);
    assert_int_equal(rhema_ai_cache_complete(c, k, p, 0, S), RHEMA_AIC_NOT_ASKED);
    rhema_ai_cache_resp_unref(p);
    assert_int_equal(ws[0].woken, 1);
    assert_int_equal(ws[2].woken, 1);
    assert_int_equal(ws[1].woken, 0);
    assert_int_equal(ws[3].woken, 0);
    assert_ptr_equal(ws[0].resp, ws[2].resp);
    assert_int_equal(ws[0].resp->status, 502);
    assert_string_equal(ws[0].resp->attempts, "u 502");
    assert_int_equal(rhema_ai_cache_cancel_wait(c, &ws[0].w), 0); /* claimed */
    rhema_ai_cache_resp_unref(ws[0].resp);
    rhema_ai_cache_resp_unref(ws[2].resp);
    rhema_ai_cache_stats(c, &st);
    assert_int_equal(st.flights, 0);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.collapsed, 4);
    /* the next one leads again */
    assert_int_equal(rhema_ai_cache_lookup(c, k, 0, S, &lead.w, &hit, &age), RHEMA_AIC_LEAD);
    rhema_ai_cache_complete(c, k, NULL, 0, S);
    rhema_ai_cache_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key),
        cmocka_unit_test(test_hit_ttl),
        cmocka_unit_test(test_bytes_lru),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_single_flight),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
