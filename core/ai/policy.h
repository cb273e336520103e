/*
 * ai/policy -- the gateway's reliability arithmetic, free of I/O so that
 * unit tests reach it: exponential backoff with jitter, the circuit
 * breaker of an upstream and the retry budget.  The breaker and the budget
 * are shared by every worker thread: plain atomics, no lock.
 */
#ifndef RHEMA_CORE_AI_POLICY_H
#define RHEMA_CORE_AI_POLICY_H

#include <stdatomic.h>
#include <stdint.h>

/*
 * The delay before retry number `retry` (1, 2, ...): base * 2^(retry-1),
 * capped at max, with "equal jitter" (half fixed, half drawn from rnd), so
 * that clients who failed together do not come back together.
 */
uint64_t rhema_ai_backoff_ms(unsigned retry, uint64_t base_ms, uint64_t max_ms, uint64_t rnd);

enum rhema_ai_breaker_state { RHEMA_AI_CLOSED = 0, RHEMA_AI_OPEN = 1, RHEMA_AI_HALF_OPEN = 2 };

/* Per upstream; zero-initialised is closed. */
struct rhema_ai_breaker {
    atomic_uint failures;          /* consecutive */
    atomic_int state;              /* enum rhema_ai_breaker_state */
    atomic_ullong open_until_ns;   /* when OPEN: the earliest half-open probe */
};

/*
 * May a request go to this upstream now?  1: yes -- and when the open time
 * has passed, the caller got the one half-open probe (*probe = 1); 0: no.
 */
int rhema_ai_breaker_allow(struct rhema_ai_breaker *b, uint64_t now_ns, int *probe);
/*
 * The outcome of a request allowed above: a success closes the breaker; a
 * failure counts, and the threshold-th consecutive one (or a failed probe)
 * opens it for open_ns.  A probe that ended otherwise (cancelled) gives the
 * probe back with rhema_ai_breaker_release().
 */
void rhema_ai_breaker_record(struct rhema_ai_breaker *b, int ok, uint64_t now_ns,
                             unsigned threshold, uint64_t open_ns);
void rhema_ai_breaker_release(struct rhema_ai_breaker *b);
/* The state as of now_ns (OPEN past its time reads as HALF_OPEN: a probe may go). */
enum rhema_ai_breaker_state rhema_ai_breaker_state(struct rhema_ai_breaker *b, uint64_t now_ns);

/*
 * The retry budget (Finagle's, as a token bucket): every request deposits
 * percent/100 of a token, every retry withdraws one; the bucket starts
 * with, and holds at most, `reserve` tokens.  So retries stay below
 * percent% of the traffic once the reserve is spent, and a failing
 * upstream sees at most that much more load, not N times as much.
 */
struct rhema_ai_budget {
    atomic_llong milli;  /* tokens x 1000 */
    long long cap_milli;
    long long deposit_milli;
};
void rhema_ai_budget_init(struct rhema_ai_budget *b, unsigned percent, unsigned reserve);
void rhema_ai_budget_deposit(struct rhema_ai_budget *b);
/* 1 when a retry may go (and a token was taken), 0 when the budget is spent. */
int rhema_ai_budget_withdraw(struct rhema_ai_budget *b);

#endif /* RHEMA_CORE_AI_POLICY_H */
