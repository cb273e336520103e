/*
 * round_robin -- endpoints in turn, ignoring weights.
 *
 * One shared counter per instance, advanced with a relaxed fetch-add by
 * every pick (O(1)); the endpoint is the counter modulo the number of
 * endpoints of the latest update().  The strategy keeps nothing but that
 * number, in an atomic, so update() is one store and there is nothing to
 * reclaim.  Over k picks each of n endpoints gets k/n picks, +-1, whatever
 * the number of threads.  After an update the turn continues where it was
 * (modulo the new n) rather than restarting at endpoint 0, so that
 * frequent health flaps do not pile requests onto the first endpoints.
 */
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <rhema/balancer.h>

#include "../common/balancer_check.h"

#define PLUGIN_NAME "round_robin"

struct rhema_balancer {
    _Alignas(64) atomic_size_t n; /* endpoints of the latest update(); read by every pick */
    _Alignas(64) atomic_uint_fast64_t turn; /* written by every pick: its own cache line */
};

static int rr_create(const struct rhema_host *host, const struct rhema_cfg *cfg,
                     rhema_balancer **out, char **err)
{
    rhema_balancer *b;

    (void)cfg; /* no settings */
    b = aligned_alloc(64, (sizeof *b + 63) / 64 * 64);
    if (b == NULL)
        return host->set_error(err, RHEMA_ENOMEM, PLUGIN_NAME ": out of memory");
    memset(b, 0, sizeof *b);
    *out = b;
    return 0;
}

static void rr_destroy(rhema_balancer *b)
{
    free(b);
}

static int rr_update(rhema_balancer *b, const struct rhema_endpoint *eps, size_t n)
{
    if (!rhema_endpoints_valid(eps, n))
        return RHEMA_EINVAL;
    atomic_store_explicit(&b->n, n, memory_order_release);
    return 0;
}

static int rr_pick(rhema_balancer *b, const struct rhema_pick_ctx *ctx, size_t *index)
{
    size_t n = atomic_load_explicit(&b->n, memory_order_acquire);

    (void)ctx;
    if (n == 0)
        return RHEMA_ENOTFOUND;
    *index = (size_t)(atomic_fetch_add_explicit(&b->turn, 1, memory_order_relaxed) % n);
    return 0;
}

static const struct rhema_balancer_plugin round_robin_plugin = {
    .base =
        RHEMA_BALANCER_PLUGIN_HEADER(PLUGIN_NAME, "1.0.0", "endpoints in turn, weights ignored"),
    .create = rr_create,
    .destroy = rr_destroy,
    .update = rr_update,
    .pick = rr_pick,
    .feedback = NULL,
};

/* Exported whatever -fvisibility the build uses: the one symbol the loader looks up. */
RHEMA_EXPORT int rhema_plugin_init(const struct rhema_host *host, const struct rhema_plugin **out)
{
    (void)host;
    *out = &round_robin_plugin.base;
    return 0;
}
