/*
 * rhema balancing strategy plugins: pick one endpoint of a service.
 *
 * The host keeps, per service, the healthy endpoints of the registry and
 * hands the strategy an immutable snapshot of them through update()
 * whenever membership or health changes.  pick() is called from every
 * worker thread at once, concurrently with update() from another thread:
 * a strategy must be lock-free or nearly so (an atomic snapshot pointer, or
 * a read-write lock that pick takes for reading).
 *
 * Load statistics are kept by the host: each endpoint carries a pointer to
 * a struct rhema_endpoint_load that the host updates atomically (in-flight
 * requests: incremented when an endpoint is picked, decremented on
 * feedback; an EWMA of observed latency).  The pointers stay valid until
 * the next update() or destroy().
 */
#ifndef RHEMA_BALANCER_H
#define RHEMA_BALANCER_H

#include <stdatomic.h>

#include <rhema/plugin.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rhema_balancer rhema_balancer; /* an instance, one per service (plugin-defined) */

/* Host-kept, live load of an endpoint; read with atomic loads. */
struct rhema_endpoint_load {
    atomic_uint inflight;      /* picked and not yet reported back */
    atomic_ullong ewma_ns;     /* EWMA of observed latency (alpha 1/8); 0: no sample yet */
    atomic_ullong samples;     /* latency samples observed */
    atomic_ullong failures;    /* feedback with ok = 0 */
};

struct rhema_endpoint {
    const char *id;      /* the service instance id (service_id) */
    const char *address; /* host:port */
    uint32_t weight;     /* >= 1 */
    struct rhema_endpoint_load *load; /* host-owned */
};

struct rhema_pick_ctx {
    const char *client_addr; /* the caller's address, or NULL */
    const void *key;         /* a hash key (select?key=), or NULL: client_addr is the key */
    size_t key_len;
    uint64_t random;         /* a uniform random number drawn by the host for this pick */
};

struct rhema_balancer_plugin {
    struct rhema_plugin base; /* kind RHEMA_KIND_BALANCER */

    /* An instance for one service, configured from the plugin's group. */
    int (*create)(const struct rhema_host *host, const struct rhema_cfg *cfg,
                  rhema_balancer **out, char **err);
    void (*destroy)(rhema_balancer *b);
    /*
     * Replace the endpoint set (n may be 0).  eps and its strings are valid
     * during the call only (copy them); the load pointers until the next
     * update() or destroy() -- so update() must not return while a pick
     * that could still read the previous set's load pointers is running
     * (the host may free them right after).  Called from one thread at a
     * time.
     */
    int (*update)(rhema_balancer *b, const struct rhema_endpoint *eps, size_t n);
    /*
     * Pick an endpoint: *index into the array of the latest update().
     * RHEMA_ENOTFOUND when there is none.  Any thread, concurrently.
     */
    int (*pick)(rhema_balancer *b, const struct rhema_pick_ctx *ctx, size_t *index);
    /*
     * Optional: the outcome of a request sent to the endpoint at index
     * (latency in ns, ok 0/1), after the host updated its load.  Any thread.
     */
    void (*feedback)(rhema_balancer *b, size_t index, uint64_t latency_ns, int ok);
    /* --- minor 0 ends here --- */
};

#ifdef __cplusplus
}
#endif
#endif /* RHEMA_BALANCER_H */
