/*
 * dchoices.h -- the machinery shared by the load-aware strategies
 * (least_connections, least_response_time): a guarded snapshot of the
 * endpoints' load pointers and weights, the `choices` setting, and a pick
 * that keeps the best of d random candidates (the power of d choices) or,
 * for few endpoints, of all of them.
 *
 * The including file defines PLUGIN_NAME and PLUGIN_DESCRIPTION, includes
 * this header, and then defines the order:
 *   static int better(const struct snap *s, size_t a, size_t b);
 * 1 when endpoint a is strictly preferable to b.  Everything else,
 * rhema_plugin_init() included, is here.
 *
 * Snapshots: guard.h; update() returns only once no pick can still read the
 * previous load pointers.
 */
#ifndef RHEMA_BALANCER_DCHOICES_H
#define RHEMA_BALANCER_DCHOICES_H

#include <inttypes.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <rhema/balancer.h>

#include "../common/balancer_check.h"

#include "guard.h"

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

static int better(const struct snap *s, size_t a, size_t b);

static int dc_create(const struct rhema_host *host, const struct rhema_cfg *cfg,
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

static void dc_destroy(rhema_balancer *b)
{
    if (b == NULL)
        return;
    snap_free(guard_current(&b->g));
    free(b);
}

static int dc_update(rhema_balancer *b, const struct rhema_endpoint *eps, size_t n)
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
            const struct rhema_endpoint *e = rhema_endpoint_at(eps, i);
            s->load[i] = e->load != NULL ? e->load : &no_load;
            s->weight[i] = e->weight;
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
static int dc_pick(rhema_balancer *b, const struct rhema_pick_ctx *ctx, size_t *index)
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

static const struct rhema_balancer_plugin dc_plugin = {
    .base = RHEMA_BALANCER_PLUGIN_HEADER(PLUGIN_NAME, "1.0.0", PLUGIN_DESCRIPTION),
    .create = dc_create,
    .destroy = dc_destroy,
    .update = dc_update,
    .pick = dc_pick,
    .feedback = NULL, /* the host keeps the load and the latency; nothing more to learn */
};

/* Exported whatever -fvisibility the build uses: the one symbol the loader looks up. */
RHEMA_EXPORT int rhema_plugin_init(const struct rhema_host *host, const struct rhema_plugin **out)
{
    (void)host;
    *out = &dc_plugin.base;
    return 0;
}

#endif /* RHEMA_BALANCER_DCHOICES_H */
