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
 *
 * Growing the structs: struct rhema_endpoint and struct rhema_pick_ctx
 * begin with their size as the host built them.  A later minor version
 * appends members; a plugin reads a member only when size covers it, and
 * steps through the endpoint array with rhema_endpoint_at() (the stride is
 * the first element's size, the same for every element), never eps[i].
 *
 * The header compiles as C11 and as C++11 (std::atomic has the layout of
 * the C11 _Atomic type on the compilers rhema supports).
 */
#ifndef RHEMA_BALANCER_H
#define RHEMA_BALANCER_H

#include <stddef.h>

#include <rhema/plugin.h>

#ifdef __cplusplus
#include <atomic>
#define RHEMA_ATOMIC(T) std::atomic<T>
extern "C" {
#else
#include <stdatomic.h>
#define RHEMA_ATOMIC(T) _Atomic(T)
#endif

/*
 * The minor version of the balancer vtable and of struct rhema_endpoint and
 * struct rhema_pick_ctx (minor 0 ends at feedback()).
 */
#define RHEMA_BALANCER_ABI_MINOR 0

typedef struct rhema_balancer rhema_balancer; /* an instance, one per service (plugin-defined) */

/* Host-kept, live load of an endpoint; read with atomic loads. */
struct rhema_endpoint_load {
    RHEMA_ATOMIC(unsigned) inflight;         /* picked and not yet reported back */
    RHEMA_ATOMIC(unsigned long long) ewma_ns; /* EWMA of latency (alpha 1/8); 0: no sample yet */
    RHEMA_ATOMIC(unsigned long long) samples; /* latency samples observed */
    RHEMA_ATOMIC(unsigned long long) failures; /* feedback with ok = 0 */
};

struct rhema_endpoint {
    uint32_t size;       /* sizeof the element as the host built it: the array's stride */
    const char *id;      /* the service instance id (service_id) */
    const char *address; /* host:port */
    uint32_t weight;     /* >= 1 */
    struct rhema_endpoint_load *load; /* host-owned */
    /* --- minor 0 ends here --- */
};

/* The smallest size a host passes: every member of minor 0. */
#define RHEMA_ENDPOINT_SIZE_0 \
    ((uint32_t)(offsetof(struct rhema_endpoint, load) + sizeof(struct rhema_endpoint_load *)))

/* Element i of an endpoint array handed to update(). */
static inline const struct rhema_endpoint *rhema_endpoint_at(const struct rhema_endpoint *eps,
                                                             size_t i)
{
    return (const struct rhema_endpoint *)(const void *)((const char *)eps + i * eps->size);
}

struct rhema_pick_ctx {
    uint32_t size;           /* sizeof the struct as the host built it */
    const char *client_addr; /* the caller's address, or NULL */
    const void *key;         /* a hash key (select?key=), or NULL: client_addr is the key */
    size_t key_len;
    uint64_t random;         /* a uniform random number drawn by the host for this pick */
    /* --- minor 0 ends here --- */
};

struct rhema_balancer_plugin {
    struct rhema_plugin base; /* kind RHEMA_KIND_BALANCER */

    /* An instance for one service, configured from the plugin's group. */
    int (*create)(const struct rhema_host *host, const struct rhema_cfg *cfg,
                  rhema_balancer **out, char **err);
    void (*destroy)(rhema_balancer *b);
    /*
     * Replace the endpoint set (n may be 0; else refuse with RHEMA_EINVAL
     * a NULL eps or a first element whose size is below
     * RHEMA_ENDPOINT_SIZE_0).  eps and its strings are valid
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

/* The header of a balancer vtable: .base = RHEMA_BALANCER_PLUGIN_HEADER("mine", "1.0", "..."). */
#define RHEMA_BALANCER_PLUGIN_HEADER(NAME, VERSION, DESC)                                          \
    RHEMA_PLUGIN_HEADER(struct rhema_balancer_plugin, RHEMA_KIND_BALANCER,                         \
                        RHEMA_BALANCER_ABI_MINOR, NAME, VERSION, DESC)

#ifdef __cplusplus
}
#endif
#endif /* RHEMA_BALANCER_H */
