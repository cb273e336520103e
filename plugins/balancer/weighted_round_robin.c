/*
 * weighted_round_robin -- nginx's smooth weighted round robin, precomputed.
 *
 * nginx's algorithm: on each pick every endpoint's current weight grows by
 * its weight, the largest current weight wins and drops by the total.  For
 * weights {5, 1, 1} that gives a a b a c a a: exact shares over a period
 * of W = sum of weights picks, and the heavy endpoint's picks spread out
 * rather than bunched.  Run per pick it is O(n) and needs a lock.
 *
 * Here update() runs it once over a whole period and stores the sequence;
 * a pick is a relaxed fetch-add on a shared turn counter and a load of
 * schedule[turn % len]: O(1), lock-free, and the same sequence nginx
 * would give (weights reduced by their gcd first, which does not change
 * it).  The precomputation costs O(len * n) once per update (about 1 ms
 * for 1000 endpoints of weight 1; 30-60 ms for 1000 endpoints whose
 * weights sum to 65536).
 *
 * The period is bounded by `schedule_max` (default 65536 slots, and never
 * less than n): above it the weights are scaled to fit, each rounded to
 * the nearest slot and at least 1, so an endpoint's share is off by at most
 * half a slot of the period (under 1% for a weight of 50 slots or more).
 *
 * Configuration (distributed.load_balancing.weighted_round_robin):
 *   schedule_max = 65536;   # slots of the precomputed period, 1024 .. 16777216
 *
 * Snapshots: guard.h.
 */
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <rhema/balancer.h>

#include "../common/balancer_check.h"

#include "guard.h"

#define PLUGIN_NAME "weighted_round_robin"
#define SCHEDULE_MAX_DEFAULT 65536
#define SCHEDULE_MAX_MIN 1024
#define SCHEDULE_MAX_MAX (1 << 24)

/* ---- the strategy ---- */

struct snap {
    size_t n;
    size_t len;         /* picks in one period */
    uint32_t *schedule; /* len endpoint indexes */
};

struct rhema_balancer {
    struct guard g; /* the current struct snap (guard.h) */
    _Alignas(64) atomic_uint_fast64_t turn; /* written by every pick: its own cache line */
    _Alignas(64) size_t schedule_max;
};

static void snap_free(struct snap *s)
{
    if (s == NULL)
        return;
    free(s->schedule);
    free(s);
}

static uint64_t gcd64(uint64_t a, uint64_t b)
{
    while (b != 0) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* The weights of one period (reduced, or scaled to fit max), in w; returns their sum. */
static uint64_t period_weights(const struct rhema_endpoint *eps, size_t n, size_t max, uint64_t *w)
{
    uint64_t g = 0, total = 0, sum = 0;

    for (size_t i = 0; i < n; i++) {
        g = gcd64(rhema_endpoint_at(eps, i)->weight, g);
        total += rhema_endpoint_at(eps, i)->weight;
    }
    for (size_t i = 0; i < n; i++) {
        w[i] = rhema_endpoint_at(eps, i)->weight / g;
        sum += w[i];
    }
    if (sum <= max)
        return sum;
    sum = 0;
    for (size_t i = 0; i < n; i++) {
        /* nearest slot count, at least one: the endpoint stays in the rotation */
        uint64_t s = (uint64_t)(((double)rhema_endpoint_at(eps, i)->weight * (double)max) / (double)total + 0.5);
        w[i] = s == 0 ? 1 : s;
        sum += w[i];
    }
    return sum;
}

/* nginx's smooth weighted round robin over one period of the weights w. */
static void smooth_schedule(const uint64_t *w, size_t n, uint64_t total, int64_t *cur,
                            uint32_t *out)
{
    memset(cur, 0, n * sizeof *cur);
    for (uint64_t t = 0; t < total; t++) {
        size_t best = 0;
        for (size_t i = 0; i < n; i++) {
            cur[i] += (int64_t)w[i];
            if (cur[i] > cur[best])
                best = i;
        }
        cur[best] -= (int64_t)total;
        out[t] = (uint32_t)best;
    }
}

static int wrr_create(const struct rhema_host *host, const struct rhema_cfg *cfg,
                      rhema_balancer **out, char **err)
{
    rhema_balancer *b;
    int64_t max = SCHEDULE_MAX_DEFAULT;
    int rc = host->cfg_int(cfg, "schedule_max", &max);

    if (rc == RHEMA_EINVAL)
        return host->set_error(err, RHEMA_EINVAL, "%s: schedule_max must be an integer",
                               host->cfg_where(cfg, "schedule_max"));
    if (max < SCHEDULE_MAX_MIN || max > SCHEDULE_MAX_MAX)
        return host->set_error(err, RHEMA_EINVAL, "%s: schedule_max %" PRId64 " is not in %d .. %d",
                               host->cfg_where(cfg, "schedule_max"), max, SCHEDULE_MAX_MIN,
                               SCHEDULE_MAX_MAX);
    b = aligned_alloc(64, (sizeof *b + 63) / 64 * 64);
    if (b == NULL)
        return host->set_error(err, RHEMA_ENOMEM, PLUGIN_NAME ": out of memory");
    memset(b, 0, sizeof *b);
    b->schedule_max = (size_t)max;
    *out = b;
    return 0;
}

static void wrr_destroy(rhema_balancer *b)
{
    if (b == NULL)
        return;
    snap_free(guard_current(&b->g));
    free(b);
}

static int wrr_update(rhema_balancer *b, const struct rhema_endpoint *eps, size_t n)
{
    struct snap *s;
    uint64_t *w = NULL, total = 0;
    int64_t *cur = NULL;

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
        w = malloc(n * sizeof *w);
        cur = malloc(n * sizeof *cur);
        if (w == NULL || cur == NULL)
            goto nomem;
        total = period_weights(eps, n, b->schedule_max > n ? b->schedule_max : n, w);
        s->schedule = malloc(total * sizeof *s->schedule);
        if (s->schedule == NULL)
            goto nomem;
        smooth_schedule(w, n, total, cur, s->schedule);
        s->len = (size_t)total;
    }
    free(w);
    free(cur);
    snap_free(guard_publish(&b->g, s));
    return 0;
nomem:
    free(w);
    free(cur);
    snap_free(s);
    return RHEMA_ENOMEM;
}

static int wrr_pick(rhema_balancer *b, const struct rhema_pick_ctx *ctx, size_t *index)
{
    atomic_uint *held;
    struct snap *s = guard_enter(&b->g, &held);
    int rc = RHEMA_ENOTFOUND;

    (void)ctx;
    if (s != NULL && s->n > 0) {
        uint64_t t = atomic_fetch_add_explicit(&b->turn, 1, memory_order_relaxed);
        *index = s->schedule[t % s->len];
        rc = 0;
    }
    guard_leave(held);
    return rc;
}

static const struct rhema_balancer_plugin wrr_plugin = {
    .base = RHEMA_BALANCER_PLUGIN_HEADER(PLUGIN_NAME, "1.0.0",
                                         "smooth weighted round robin (nginx), precomputed"),
    .create = wrr_create,
    .destroy = wrr_destroy,
    .update = wrr_update,
    .pick = wrr_pick,
    .feedback = NULL,
};

/* Exported whatever -fvisibility the build uses: the one symbol the loader looks up. */
RHEMA_EXPORT int rhema_plugin_init(const struct rhema_host *host, const struct rhema_plugin **out)
{
    (void)host;
    *out = &wrr_plugin.base;
    return 0;
}
