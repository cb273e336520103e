/*
 * Unit tests for core/ai/policy.c: exponential backoff with jitter, the
 * circuit breaker (closed, open, one half-open probe, closed or open
 * again) and the retry budget; and Retry-After parsing of core/ai/client.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ai/client.h"
#include "ai/policy.h"

#define S 1000000000ull

static void test_backoff(void **state)
{
    (void)state;
    /* rnd 0: the fixed half; a huge rnd stays within the whole */
    assert_int_equal(rhema_ai_backoff_ms(1, 100, 5000, 0), 50);
    assert_int_equal(rhema_ai_backoff_ms(2, 100, 5000, 0), 100);
    assert_int_equal(rhema_ai_backoff_ms(3, 100, 5000, 0), 200);
    assert_int_equal(rhema_ai_backoff_ms(30, 100, 5000, 0), 2500); /* capped */
    for (uint64_t r = 0; r < 5000; r += 7) {
        uint64_t d = rhema_ai_backoff_ms(4, 100, 5000, r * 2654435761u);
        assert_true(d >= 400 && d <= 800);
    }
    assert_int_equal(rhema_ai_backoff_ms(200, 100, 5000, UINT64_MAX) <= 5000, 1);
    /* jitter: different draws give different delays */
    assert_int_not_equal(rhema_ai_backoff_ms(3, 100, 5000, 1), rhema_ai_backoff_ms(3, 100, 5000, 77));
}

static void test_breaker(void **state)
{
    struct rhema_ai_breaker b = {0};
    int probe;
    (void)state;
    assert_int_equal(rhema_ai_breaker_allow(&b, 1 * S, &probe), 1);
    assert_int_equal(probe, 0);
    rhema_ai_breaker_record(&b, 0, 1 * S, 3, 10 * S);
    rhema_ai_breaker_record(&b, 0, 1 * S, 3, 10 * S);
    assert_int_equal(rhema_ai_breaker_state(&b, 1 * S), RHEMA_AI_CLOSED);
    rhema_ai_breaker_record(&b, 1, 1 * S, 3, 10 * S); /* a success resets the count */
    for (int i = 0; i < 3; i++)
        rhema_ai_breaker_record(&b, 0, 2 * S, 3, 10 * S);
    assert_int_equal(rhema_ai_breaker_state(&b, 2 * S), RHEMA_AI_OPEN);
    assert_int_equal(rhema_ai_breaker_allow(&b, 11 * S, &probe), 0); /* open until 12 s */
    assert_int_equal(rhema_ai_breaker_state(&b, 12 * S), RHEMA_AI_HALF_OPEN);
    assert_int_equal(rhema_ai_breaker_allow(&b, 12 * S, &probe), 1);
    assert_int_equal(probe, 1);
    assert_int_equal(rhema_ai_breaker_allow(&b, 12 * S, &probe), 0); /* one probe at a time */
    rhema_ai_breaker_record(&b, 0, 13 * S, 3, 10 * S);                /* the probe failed */
    assert_int_equal(rhema_ai_breaker_allow(&b, 14 * S, &probe), 0);
    assert_int_equal(rhema_ai_breaker_allow(&b, 23 * S, &probe), 1);
    rhema_ai_breaker_release(&b); /* cancelled: the next caller probes */
    assert_int_equal(rhema_ai_breaker_allow(&b, 23 * S, &probe), 1);
    assert_int_equal(probe, 1);
    rhema_ai_breaker_record(&b, 1, 24 * S, 3, 10 * S);
    assert_int_equal(rhema_ai_breaker_state(&b, 24 * S), RHEMA_AI_CLOSED);
    assert_int_equal(rhema_ai_breaker_allow(&b, 24 * S, &probe), 1);
    assert_int_equal(probe, 0);
}

static void test_budget(void **state)
{
    struct rhema_ai_budget b;
    int n = 0;
    (void)state;
    rhema_ai_budget_init(&b, 20, 3);
    while (rhema_ai_budget_withdraw(&b))
        n++;
    assert_int_equal(n, 3); /* the reserve */
    for (int i = 0; i < 4; i++)
        rhema_ai_budget_deposit(&b);
    assert_int_equal(rhema_ai_budget_withdraw(&b), 0); /* 0.8 of a token */
    rhema_ai_budget_deposit(&b);
    assert_int_equal(rhema_ai_budget_withdraw(&b), 1); /* 5 requests at 20%: one retry */
    assert_int_equal(rhema_ai_budget_withdraw(&b), 0);
    for (int i = 0; i < 1000; i++)
        rhema_ai_budget_deposit(&b);
    n = 0;
    while (rhema_ai_budget_withdraw(&b))
        n++;
    assert_int_equal(n, 3); /* capped at the reserve */
    rhema_ai_budget_init(&b, 0, 0);
    rhema_ai_budget_deposit(&b);
    assert_int_equal(rhema_ai_budget_withdraw(&b), 0);
}

static void test_retry_after(void **state)
{
    (void)state;
    assert_int_equal(rhema_ai_retry_after_parse("120", 0), 120);
    assert_int_equal(rhema_ai_retry_after_parse(" 0\r\n", 0), 0);
    assert_int_equal(rhema_ai_retry_after_parse("-1", 0), -1);
    assert_int_equal(rhema_ai_retry_after_parse("12abc", 0), -1);
    assert_int_equal(rhema_ai_retry_after_parse("soon", 0), -1);
    /* Wed, 21 Oct 2015 07:28:00 GMT = 1445412480 */
    assert_int_equal(rhema_ai_retry_after_parse("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470), 10);
    assert_int_equal(rhema_ai_retry_after_parse("Wed, 21 Oct 2015 07:28:00 GMT", 1445412490), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_breaker),
        cmocka_unit_test(test_budget),
        cmocka_unit_test(test_retry_after),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
