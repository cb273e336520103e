/*
 * ai/policy -- backoff, circuit breaker, retry budget (see policy.h).
 */
#include "ai/policy.h"

uint64_t rhema_ai_backoff_ms(unsigned retry, uint64_t base_ms, uint64_t max_ms, uint64_t rnd)
{
    uint64_t d = base_ms;
    for (unsigned i = 1; i < retry && d < max_ms; i++)
        d *= 2;
    if (d > max_ms)
        d = max_ms;
    return d / 2 + (d - d / 2 ? rnd % (d - d / 2 + 1) : 0);
}

int rhema_ai_breaker_allow(struct rhema_ai_breaker *b, uint64_t now_ns, int *probe)
{
    int st = atomic_load(&b->state);
    *probe = 0;
    if (st == RHEMA_AI_CLOSED)
        return 1;
    if (st == RHEMA_AI_HALF_OPEN) /* a probe is out: wait for it */
        return 0;
    if (now_ns < atomic_load(&b->open_until_ns))
        return 0;
    /* open, and its time passed: the first to get here sends the probe */
    if (!atomic_compare_exchange_strong(&b->state, &st, RHEMA_AI_HALF_OPEN))
        return 0;
    *probe = 1;
    return 1;
}

void rhema_ai_breaker_record(struct rhema_ai_breaker *b, int ok, uint64_t now_ns,
                             unsigned threshold, uint64_t open_ns)
{
    if (ok) {
        atomic_store(&b->failures, 0);
        atomic_store(&b->state, RHEMA_AI_CLOSED);
        return;
    }
    unsigned f = atomic_fetch_add(&b->failures, 1) + 1;
    if (f >= threshold || atomic_load(&b->state) == RHEMA_AI_HALF_OPEN) {
        atomic_store(&b->open_until_ns, now_ns + open_ns);
        atomic_store(&b->state, RHEMA_AI_OPEN);
    }
}

void rhema_ai_breaker_release(struct rhema_ai_breaker *b)
{
    int st = RHEMA_AI_HALF_OPEN;
    /* back to open with its time passed: the next caller probes */
    atomic_compare_exchange_strong(&b->state, &st, RHEMA_AI_OPEN);
}

enum rhema_ai_breaker_state rhema_ai_breaker_state(struct rhema_ai_breaker *b, uint64_t now_ns)
{
    int st = atomic_load(&b->state);
    if (st == RHEMA_AI_OPEN && now_ns >= atomic_load(&b->open_until_ns))
        return RHEMA_AI_HALF_OPEN;
    return (enum rhema_ai_breaker_state)st;
}

void rhema_ai_budget_init(struct rhema_ai_budget *b, unsigned percent, unsigned reserve)
{
    b->cap_milli = (long long)reserve * 1000;
    b->deposit_milli = (long long)percent * 10;
    atomic_store(&b->milli, b->cap_milli);
}

void rhema_ai_budget_deposit(struct rhema_ai_budget *b)
{
    long long v = atomic_load(&b->milli), n;
    do {
        n = v + b->deposit_milli;
        if (n > b->cap_milli)
            n = b->cap_milli;
        if (n == v)
            return;
    } while (!atomic_compare_exchange_weak(&b->milli, &v, n));
}

int rhema_ai_budget_withdraw(struct rhema_ai_budget *b)
{
    long long v = atomic_load(&b->milli);
    do {
        if (v < 1000)
            return 0;
    } while (!atomic_compare_exchange_weak(&b->milli, &v, v - 1000));
    return 1;
}
