/*
 * metrics_bench -- the cost of counting one reply and one storage call in a
 * worker's own metrics block (core/metrics/metrics.c), without the clock
 * reads around them, in a tight loop on one thread.  Built and run by
 * bench/run-metrics.sh against the build's librhemacore.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "metrics/metrics.h"

static unsigned slot_of(const void *route)
{
    return (unsigned)(uintptr_t)route;
}

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 20000000L;
    struct rhema_metrics_block *b;
    uint64_t t0, t1, t2, t3;
    if (n <= 0 || rhema_metrics_open(2, 64, slot_of) != 0 || !(b = rhema_metrics_thread_enter(0))) {
        fprintf(stderr, "metrics_bench: setup failed\n");
        return 1;
    }
    t0 = now_ns();
    for (long i = 0; i < n; i++) {
        rhema_metrics_request_started(b);
        rhema_metrics_reply(b, (void *)(uintptr_t)(i & 31), 1u, 200,
                            300000u + (uint64_t)(i & 1023));
    }
    t1 = now_ns();
    for (long i = 0; i < n; i++)
        rhema_metrics_storage(RHEMA_MOP_GET, 20000u + (uint64_t)(i & 1023), 0);
    t2 = now_ns();
    for (long i = 0; i < n; i++)
        (void)now_ns();
    t3 = now_ns();
    printf("%.1f ns to count a reply (started + reply), %.1f ns a storage call, "
           "%.1f ns a clock read\n",
           (double)(t1 - t0) / (double)n, (double)(t2 - t1) / (double)n,
           (double)(t3 - t2) / (double)n);
    rhema_metrics_close();
    return 0;
}
