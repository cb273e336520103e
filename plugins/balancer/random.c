/*
 * random -- pick an endpoint at random, in proportion to its weight.
 *
 * The host draws a uniform 64-bit number for every pick (ctx->random); the
 * strategy maps it onto the endpoints through Vose's alias table, built on
 * each update(): one column per endpoint, each column a threshold and an
 * alias, so a pick is one multiply, one compare and two loads whatever the
 * number of endpoints (O(1)).  With equal weights the table is skipped and
 * the number is mapped straight onto [0, n).  Shares are exact to 2^-32.
 *
 * Snapshots: guard.h (an atomic snapshot pointer with epoch-counted
 * readers: picks never wait).
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <rhema/balancer.h>

#include "../common/balancer_check.h"

#include "guard.h"

#define PLUGIN_NAME "random"

/* ---- the strategy ---- */

struct snap {
    size_t n;
    int weighted;     /* 0: all weights equal, the table is unused */
    uint32_t *thresh; /* column i keeps i when (uint32_t)r < thresh[i], else alias[i] */
    uint32_t *alias;
};

struct rhema_balancer {
    struct guard g; /* the current struct snap (guard.h) */
    const struct rhema_host *host;
};

static void snap_free(struct snap *s)
{
    if (s == NULL)
        return;
    free(s->thresh);
    free(s->alias);
    free(s);
}

/* [0, n) from the high 32 bits of r (n < 2^32). */
static size_t range32(uint64_t r, size_t n)
{
    return (size_t)(((r >> 32) * (uint64_t)n) >> 32);
}

/* Vose's alias method with integer arithmetic: column i has capacity W (the total weight). */
static int build_alias(struct snap *s, const struct rhema_endpoint *eps)
{
    size_t n = s->n, n_small = 0, n_large = 0;
    uint64_t total = 0;
    uint64_t *scaled = malloc(n * sizeof *scaled);
    size_t *small = malloc(n * sizeof *small), *large = malloc(n * sizeof *large);
    int rc = RHEMA_ENOMEM;

    s->thresh = malloc(n * sizeof *s->thresh);
    s->alias = malloc(n * sizeof *s->alias);
    if (!scaled || !small || !large || !s->thresh || !s->alias)
        goto out;
    for (size_t i = 0; i < n; i++)
        total += rhema_endpoint_at(eps, i)->weight;
    /* column capacity: total; endpoint i brings weight * n of it */
    for (size_t i = 0; i < n; i++) {
        scaled[i] = (uint64_t)rhema_endpoint_at(eps, i)->weight * n;
        if (scaled[i] < total)
            small[n_small++] = i;
        else
            large[n_large++] = i;
    }
    while (n_small > 0 && n_large > 0) {
        size_t l = small[--n_small], g = large[n_large - 1];
        double t = (double)scaled[l] / (double)total * 4294967296.0;
        s->thresh[l] = t >= 4294967295.0 ? UINT32_MAX : (uint32_t)t;
        s->alias[l] = (uint32_t)g;
        scaled[g] -= total - scaled[l];
        if (scaled[g] < total) {
            n_large--;
            small[n_small++] = g;
        }
    }
    /* what is left is full (exactly, in integers): keep itself always */
    while (n_large > 0) {
        size_t g = large[--n_large];
        s->thresh[g] = UINT32_MAX;
        s->alias[g] = (uint32_t)g;
    }
    while (n_small > 0) { /* only by rounding; cannot happen with exact integers */
        size_t l = small[--n_small];
        s->thresh[l] = UINT32_MAX;
        s->alias[l] = (uint32_t)l;
    }
    rc = 0;
out:
    free(scaled);
    free(small);
    free(large);
    return rc;
}

static int rnd_create(const struct rhema_host *host, const struct rhema_cfg *cfg,
                      rhema_balancer **out, char **err)
{
    rhema_balancer *b;

    (void)cfg; /* no settings */
    b = aligned_alloc(64, (sizeof *b + 63) / 64 * 64);
    if (b == NULL)
        return host->set_error(err, RHEMA_ENOMEM, PLUGIN_NAME ": out of memory");
    memset(b, 0, sizeof *b);
    b->host = host;
    *out = b;
    return 0;
}

static void rnd_destroy(rhema_balancer *b)
{
    if (b == NULL)
        return;
    snap_free(guard_current(&b->g));
    free(b);
}

static int rnd_update(rhema_balancer *b, const struct rhema_endpoint *eps, size_t n)
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
    for (size_t i = 1; i < n; i++)
        if (rhema_endpoint_at(eps, i)->weight != eps->weight)
            s->weighted = 1;
    if (s->weighted && build_alias(s, eps) != 0) {
        snap_free(s);
        return RHEMA_ENOMEM;
    }
    snap_free(guard_publish(&b->g, s));
    return 0;
}

static int rnd_pick(rhema_balancer *b, const struct rhema_pick_ctx *ctx, size_t *index)
{
    atomic_uint *held;
    struct snap *s = guard_enter(&b->g, &held);
    uint64_t r = ctx ? ctx->random : 0;
    int rc = RHEMA_ENOTFOUND;

    if (s != NULL && s->n > 0) {
        size_t col = range32(r, s->n);
        if (s->weighted && (uint32_t)r >= s->thresh[col])
            col = s->alias[col];
        *index = col;
        rc = 0;
    }
    guard_leave(held);
    return rc;
}

static const struct rhema_balancer_plugin random_plugin = {
    .base = RHEMA_BALANCER_PLUGIN_HEADER(PLUGIN_NAME, "1.0.0",
                                         "weighted random (alias table, O(1) per pick)"),
    .create = rnd_create,
    .destroy = rnd_destroy,
    .update = rnd_update,
    .pick = rnd_pick,
    .feedback = NULL,
};

/* Exported whatever -fvisibility the build uses: the one symbol the loader looks up. */
RHEMA_EXPORT int rhema_plugin_init(const struct rhema_host *host, const struct rhema_plugin **out)
{
    (void)host;
    *out = &random_plugin.base;
    return 0;
}
