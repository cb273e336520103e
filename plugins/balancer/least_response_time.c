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
 * Snapshots: guard.h; update()
 * returns only once no pick can still read the previous load pointers.
 */
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <rhema/balancer.h>

#include "guard.h"

#define PLUGIN_NAME "least_response_time"
#define CHOICES_DEFAULT 2
#define CHOICES_MAX 16
#define SCAN_MAX 8 /* up to this many endpoints, compare them all: exact, and cheap */

/* ---- the strategy ---- */

struct snap {
    size_t n;
    struct rhema_endpoint_load **load; /* host-owned, valid until the next update() */
    uint32_t *weight;
};

struct rhema_balancer {
    struct guard g; /* the current struct snap (guard.h) */
    _Alignas(64) unsigned choices;
};

/* An endpoint given without load statistics counts as idle. */
static struct rhema_endpoint_load no_load;

static void snap_free(struct snap *s)
{
    if (s == NULL)
        return;
    free(s->load);
    free(s->weight);
    free(s);
}

/* [0, n) from the high 32 bits of r (n < 2^32). */
static size_t range32(uint64_t r, size_t n)
{
    return (size_t)(((r >> 32) * (uint64_t)n) >> 32);
}

/* splitmix64's finaliser: more independent bits out of the host's number. */
static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

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

static int lrt_create(const struct rhema_host *host, const struct rhema_cfg *cfg,
                     rhema_balancer **out, char **err)
{
    rhema_balancer *b;
    int64_t choices = CHOICES_DEFAULT;
    int rc = host->cfg_int(cfg, "choices", &choices);

    if (rc == RHEMA_EINVAL)
        return host->set_error(err, RHEMA_EINVAL, "%s: choices must be an integer",
                               host->cfg_where(cfg, "choices"));
    if (choices < 1 || choices > CHOICES_MAX)
        return host->set_error(err, RHEMA_EINVAL, "%s: choices %" PRId64 " is not in 1 .. %d",
                               host->cfg_where(cfg, "choices"), choices, CHOICES_MAX);
    b = aligned_alloc(64, (sizeof *b + 63) / 64 * 64);
    if (b == NULL)
        return host->set_error(err, RHEMA_ENOMEM, PLUGIN_NAME ": out of memory");
    memset(b, 0, sizeof *b);
    b->choices = (unsigned)choices;
    *out = b;
    return 0;
}

static void lrt_destroy(rhema_balancer *b)
{
    if (b == NULL)
        return;
    snap_free(guard_current(&b->g));
    free(b);
}

static int lrt_update(rhema_balancer *b, const struct rhema_endpoint *eps, size_t n)
{
    struct snap *s;

    if (!rhema_endpoints_valid(eps, n) || n > UINT32_MAX)
        return RHEMA_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (rhema_endpoint_at(eps, i)->weight == 0)
            return RHEMA_EINVAL;
    s = calloc(1, sizeof *s);
    if (s == NULL)
        return RHEMA_ENOMEM;
    s->n = n;
    if (n > 0) {
        s->load = malloc(n * sizeof *s->load);
        s->weight = malloc(n * sizeof *s->weight);
        if (s->load == NULL || s->weight == NULL) {
            snap_free(s);
            return RHEMA_ENOMEM;
        }
        for (size_t i = 0; i < n; i++) {
            s->load[i] = rhema_endpoint_at(eps, i)->load != NULL ? rhema_endpoint_at(eps, i)->load : &no_load;
            s->weight[i] = rhema_endpoint_at(eps, i)->weight;
        }
    }
    /* returns once no pick reads the old load pointers: the host may free them then */
    snap_free(guard_publish(&b->g, s));
    return 0;
}

/*
 * n <= choices: the best of all, scanned from a random start (ties go to
 * the first seen, so they spread).  Otherwise the best of `choices`
 * random candidates, the first two always distinct.
 */
static int lrt_pick(rhema_balancer *b, const struct rhema_pick_ctx *ctx, size_t *index)
{
    atomic_uint *held;
    struct snap *s = guard_enter(&b->g, &held);
    uint64_t r = ctx != NULL ? ctx->random : 0;
    size_t n, best;

    if (s == NULL || s->n == 0) {
        guard_leave(held);
        return RHEMA_ENOTFOUND;
    }
    n = s->n;
    best = range32(r, n);
    if (n <= b->choices || n <= SCAN_MAX) {
        for (size_t k = 1, i = best; k < n; k++) {
            if (++i == n)
                i = 0;
            if (better(s, i, best))
                best = i;
        }
    } else if (b->choices > 1) {
        size_t c = best + 1 + range32(mix64(r), n - 1);
        if (c >= n)
            c -= n;
        if (better(s, c, best))
            best = c;
        for (unsigned k = 2; k < b->choices; k++) {
            c = range32(mix64(r + k * 0x9E3779B97F4A7C15ull), n);
            if (better(s, c, best))
                best = c;
        }
    }
    *index = best;
    guard_leave(held);
    return 0;
}

static const struct rhema_balancer_plugin lrt_plugin = {
    .base = RHEMA_PLUGIN_HEADER(struct rhema_balancer_plugin, RHEMA_KIND_BALANCER, PLUGIN_NAME,
                                "1.0.0", "lowest EWMA latency x in-flight per weight (power of d choices)"),
    .create = lrt_create,
    .destroy = lrt_destroy,
    .update = lrt_update,
    .pick = lrt_pick,
    .feedback = NULL, /* the host keeps the load; nothing more to learn */
};

/* Exported whatever -fvisibility the build uses: the one symbol the loader looks up. */
__attribute__((visibility("default"))) int rhema_plugin_init(const struct rhema_host *host,
                                                             const struct rhema_plugin **out)
{
    (void)host;
    *out = &lrt_plugin.base;
    return 0;
}
