/*
 * guard -- the snapshot swap shared by the balancer plugins (private to
 * plugins/balancer; each plugin includes it, nothing is exported).
 *
 * update() builds an immutable snapshot and publishes it behind an atomic
 * pointer; pick() announces itself in a per-thread-slot reader counter of
 * the current epoch parity, and update() waits for the previous parity to
 * drain before it frees the old snapshot (a two-epoch grace period, as
 * userspace RCU does).  Picks never wait; update() waits at most for the
 * picks already running -- which is also what balancer.h asks of update().
 */
#ifndef RHEMA_BALANCER_GUARD_H
#define RHEMA_BALANCER_GUARD_H

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>

#define GUARD_SLOTS 64 /* reader counters, one cache line each; threads hash onto them */

struct guard_slot {
    _Alignas(64) atomic_uint readers[2]; /* picks running, by epoch parity */
};

struct guard {
    struct guard_slot slot[GUARD_SLOTS];
    atomic_uint epoch;
    _Atomic(void *) cur; /* the plugin's current snapshot */
};

/* A reader slot for the calling thread: threads rarely share a cache line. */
static inline unsigned guard_slot_of_thread(void)
{
    uint64_t h = (uint64_t)(uintptr_t)pthread_self() * 0x9E3779B97F4A7C15ull;
    return (unsigned)(h >> 58);
}

/* Enter a pick: the current snapshot, stable until guard_leave(*held). */
static inline void *guard_enter(struct guard *g, atomic_uint **held)
{
    struct guard_slot *s = &g->slot[guard_slot_of_thread()];
    for (;;) {
        unsigned e = atomic_load(&g->epoch);
        atomic_uint *r = &s->readers[e & 1];
        atomic_fetch_add(r, 1);
        if (atomic_load(&g->epoch) == e) {
            *held = r;
            return atomic_load(&g->cur);
        }
        atomic_fetch_sub_explicit(r, 1, memory_order_release); /* raced an update: again */
    }
}

static inline void guard_leave(atomic_uint *held)
{
    atomic_fetch_sub_explicit(held, 1, memory_order_release);
}

/*
 * Publish s and return the previous snapshot once no pick can still be
 * reading it (the caller frees it).  A pick that read the old epoch has
 * either raised that parity's counter before the epoch moved (we wait for
 * it) or sees the new epoch on its re-check and starts again.
 */
static inline void *guard_publish(struct guard *g, void *s)
{
    void *old = atomic_exchange(&g->cur, s);
    unsigned e = atomic_fetch_add(&g->epoch, 1);
    for (unsigned i = 0; i < GUARD_SLOTS; i++)
        while (atomic_load_explicit(&g->slot[i].readers[e & 1], memory_order_acquire) != 0)
            sched_yield();
    return old;
}

/* The current snapshot, for destroy() (no pick may run then). */
static inline void *guard_current(struct guard *g) { return atomic_load(&g->cur); }

#endif /* RHEMA_BALANCER_GUARD_H */
