/*
 * least_connections -- the endpoint with the fewest requests in flight per
 * unit of weight, as nginx least_conn, counting the request about to be sent
 * as half: (2 inflight_a + 1) w_b < (2 inflight_b + 1) w_a (see better()).
 *
 * Finding the true minimum is a scan of every endpoint per pick; at 1000
 * endpoints that is microseconds and, with many threads, every thread
 * herds onto the same minimum.  So a pick samples: the power of d choices
 * (Mitzenmacher; Envoy and Finagle do the same) -- d random candidates
 * (d = `choices`, default 2, the first two distinct), the least loaded of
 * them wins: O(d) per pick whatever n.  With d = 2 the most loaded
 * endpoint exceeds the mean by O(log log n) instead of the O(log n / log
 * log n) of a random pick, and no endpoint is ever starved: only the most
 * loaded one of each pair loses.  When n <= d every endpoint is compared.
 * Shares follow the weights: a steady state has inflight_i proportional to
 * w_i, so picks are too (within 0.5% in the conformance suite).
 *
 * The in-flight counters are the host's (struct rhema_endpoint_load),
 * read with relaxed atomic loads: a pick sees counts a few requests old
 * under contention, which sampling tolerates.
 *
 * Configuration (distributed.load_balancing.least_connections):
 *   choices = 2;   # candidates per pick, 1 (random) .. 16
 *
 * The snapshot, the `choices` setting and the pick: dchoices.h.
 */
#define PLUGIN_NAME "least_connections"
#define PLUGIN_DESCRIPTION "fewest in-flight requests per weight (power of d choices)"

#include "dchoices.h"

/*
 * a is strictly less loaded than b, relative to their weights: (inflight + 1/2) / weight, the
 * divisor of Webster's (Sainte-Lague) apportionment.  Plain inflight / weight (nginx) lets an
 * endpoint of small weight sit half a request above its share on average -- 12% too many picks
 * for weight 1 of {1, 2, 3, 4} at 40 requests in flight -- and (inflight + 1) / weight as much
 * below; the half is unbiased.
 */
static int better(const struct snap *s, size_t a, size_t b)
{
    uint64_t ia = atomic_load_explicit(&s->load[a]->inflight, memory_order_relaxed);
    uint64_t ib = atomic_load_explicit(&s->load[b]->inflight, memory_order_relaxed);

    return (2 * ia + 1) * s->weight[b] < (2 * ib + 1) * s->weight[a];
}
