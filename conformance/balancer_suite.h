/*
 * balancer_suite -- the balancing strategy conformance suite.
 *
 * One reusable list of checks that every balancer plugin must pass: the
 * in-tree round_robin, least_connections, weighted_round_robin,
 * least_response_time, random and ip_hash (tests/conformance/
 * test_balancer) and any third-party strategy.  It shares its report
 * types with the storage suite (storage_suite.h).
 *
 * The suite creates its own instances with the given configuration group
 * (cfg may be NULL) and plays the host: it owns the endpoint arrays and
 * their load counters, increments an endpoint's in-flight count when it
 * is picked, and on a simulated completion decrements it and folds the
 * latency into ewma_ns (alpha 1/8), as the daemon does.  Checks:
 *   - header: kind, size, name, no NULL required method;
 *   - empty: pick before any update, and after update(n = 0), is
 *     RHEMA_ENOTFOUND;
 *   - latest_update: after 10 endpoints then 3, no index >= 3 over 10k
 *     picks, and each of the 3 is picked;
 *   - uniform: 4 endpoints of weight 1 under simulated load (one pick per
 *     tick, each request lasting 40 ticks +-25%): each share within 2%
 *     (relative) of 1/4 over 1M picks (1M rather than 100k so that a random
 *     strategy is 6 standard deviations inside the bound, not 2);
 *   - weights: weights {1, 2, 3, 4}, the same way: the shares follow the
 *     weights within 2%, or (a strategy that ignores weights) are uniform
 *     within 2%; which of the two is required for the in-tree strategies
 *     (round_robin ignores weights, the five others honour them), either
 *     is accepted from a third-party one and the detail says which;
 *   - slow_endpoint: one of 4 endpoints answers 10 times slower; a
 *     load-aware strategy (least_connections, least_response_time) must
 *     give it under half of a fair share; others report their share;
 *   - hash_determinism (strategies whose name contains "hash"): 1000 keys
 *     and 1000 client addresses each map to the same endpoint on repeated
 *     picks and in a fresh instance given the same endpoints in reverse
 *     order (compared by id); with neither key nor address, ctx->random
 *     spreads picks over every endpoint;
 *   - hash_disruption: 100k keys on 100 endpoints; remove one: the fraction
 *     of keys that moved is at most 1.5 x 1/100, and of the keys that were
 *     not on the removed endpoint at most 0.5% moved; add a 101st: at most
 *     1.5 x 1/101 moved;
 *   - concurrent_update: 4 threads pick while a fifth calls update() 1000
 *     times (or as many as fit in 3 s: ip_hash rebuilds a 1 MiB table per
 *     update; at least 10), alternating large (64 .. 128) and small (0 .. 8) sets, each
 *     with fresh load counters, the previous ones freed as soon as
 *     update() returns (as the ABI allows: run under ASan/TSan to catch a
 *     strategy that reads them later).  Every pick is checked against the
 *     sets that were in force at some moment during it: updates completed
 *     before it started, up to the one in progress when it ended: an index
 *     >= the largest of those sizes, ENOTFOUND when none was empty, or
 *     success when all were empty, fails;
 *   - concurrent_feedback (when feedback is not NULL): 4 threads pick and
 *     report outcomes at once.
 *
 * Passing checks that measure something (shares, disruption, picks per
 * second under contention) put the measurement in `detail`; failures say
 * what went wrong.  A failing check never stops the run, except that
 * nothing can run when the header is unusable or create() fails.  About
 * a second per strategy (3 s under TSan).
 *
 * Threads: call from one thread; the suite starts and joins its own.
 */
#ifndef RHEMA_CONFORMANCE_BALANCER_SUITE_H
#define RHEMA_CONFORMANCE_BALANCER_SUITE_H

#include <rhema/balancer.h>
#include <rhema/plugin.h>

#include "storage_suite.h" /* RHEMA_CONF_*, rhema_conf_report_fn, rhema_conf_totals */

/*
 * Run every check against new instances of `vt` created with `host` and
 * `cfg`, reporting each through report(ctx, ...) and adding to *totals
 * (when not NULL; not zeroed first).  Returns 0 when no check failed, else
 * the number of failed checks.
 */
int rhema_conformance_balancer(const struct rhema_balancer_plugin *vt,
                               const struct rhema_host *host, const struct rhema_cfg *cfg,
                               rhema_conf_report_fn report, void *ctx,
                               struct rhema_conf_totals *totals);

#endif /* RHEMA_CONFORMANCE_BALANCER_SUITE_H */
