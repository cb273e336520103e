/*
 * least_response_time -- the endpoint expected to answer soonest: the
 * lowest host-kept EWMA of observed latency times the requests in flight
 * (counting the one about to be sent as half), per unit of weight:
 * ewma_a (2 inflight_a + 1) w_b < ewma_b (2 inflight_b + 1) w_a.
 *
 * Why the product rather than the EWMA alone with in-flight as a mere
 * tie-break: EWMAs are never equal, so a pure EWMA order sends every pick
 * of every thread to the endpoint that happens to be a few microseconds
 * faster until its EWMA catches up -- herding, then oscillation.  Scaling
 * by the requests in flight (Finagle's and linkerd's "peak EWMA"
 * cost) makes the choice self-correcting: at equal latency it spreads
 * picks like least_connections, and an endpoint k times slower settles at
 * about 1/k^2 of the picks of the others.  In-flight breaks ties (equal
 * costs: the fewer in flight per weight); two idle endpoints compare by
 * EWMA per weight.  An endpoint without a latency sample
 * yet (ewma_ns 0) is compared with the other candidate on in-flight per
 * weight alone, as least_connections would, so a new endpoint is tried
 * but not flooded.
 *
 * Like least_connections it samples: the best of `choices` random
 * candidates (default 2, the first two distinct), O(d) per pick; when
 * n <= d every endpoint is compared.
 *
 * Configuration (distributed.load_balancing.least_response_time):
 *   choices = 2;   # candidates per pick, 1 (random) .. 16
 *
 * The snapshot, the `choices` setting and the pick: dchoices.h.
 */
#define PLUGIN_NAME "least_response_time"
#define PLUGIN_DESCRIPTION "lowest EWMA latency x in-flight per weight (power of d choices)"

#include "dchoices.h"

/*
 * a is expected to answer strictly sooner than b, relative to their weights: cost
 * ewma * (inflight + 1/2) / weight (the half as in least_connections: unbiased shares for
 * unequal weights).  Equal costs: fewer in flight per weight.
 */
static int better(const struct snap *s, size_t a, size_t b)
{
    const struct rhema_endpoint_load *la = s->load[a], *lb = s->load[b];
    uint64_t ia = atomic_load_explicit(&la->inflight, memory_order_relaxed);
    uint64_t ib = atomic_load_explicit(&lb->inflight, memory_order_relaxed);
    uint64_t ea = atomic_load_explicit(&la->ewma_ns, memory_order_relaxed);
    uint64_t eb = atomic_load_explicit(&lb->ewma_ns, memory_order_relaxed);
    uint64_t qa = (2 * ia + 1) * s->weight[b], qb = (2 * ib + 1) * s->weight[a];

    if (ea != 0 && eb != 0) { /* no latency known for one of them: least connections */
        double ca = (double)ea * (double)qa, cb = (double)eb * (double)qb;
        if (ca != cb)
            return ca < cb;
    }
    return qa < qb;
}
