/*
 * balancer_bench -- ns per pick of each balancing strategy, through the
 * plugin loaded with the real loader, at 10, 100 and 1000 endpoints on one
 * and two threads; and the key disruption of ip_hash when 1 of 100
 * endpoints leaves.  Run by bench/run-balancers.sh; see bench/README.md.
 *
 *   balancer_bench -P PLUGIN_DIR [-t SECONDS_PER_CELL] [-r REPS]
 *
 * Prints lines the script formats:
 *   ROW strategy endpoints threads ns_per_pick target PASS|FAIL|-
 *   DISRUPTION fraction target PASS|FAIL
 * Each thread picks with its own context (a fresh 8-byte key and random
 * number per pick, precomputed in a ring of 4096 so that generating them
 * costs nothing) and plays the host's part for the load-aware strategies:
 * increments the picked endpoint's in-flight count and decrements it
 * 32 picks later.  ns per pick = thread-seconds / picks (so on two threads
 * it is the cost seen by each thread, contention included); the best of
 * REPS cells counts.  Exit: the number of targets missed; 99 on setup error.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <rhema/balancer.h>

#include "plugin.h"

#define TARGET_NS 200.0
#define TARGET_DISRUPTION 0.015
#define RING 4096
#define LAG 32

static const char *const strategies[] = {"round_robin", "least_connections",
                                         "weighted_round_robin", "least_response_time",
                                         "random", "ip_hash"};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t splitmix(uint64_t *st)
{
    uint64_t z = (*st += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

struct run {
    const struct rhema_balancer_plugin *vt;
    rhema_balancer *b;
    struct rhema_endpoint_load *load;
    double seconds;
    pthread_barrier_t *start;
    unsigned seed;
    double ns; /* out */
    int err;
};

static void *worker(void *arg)
{
    struct run *r = arg;
    struct rhema_pick_ctx *ctx = malloc(RING * sizeof *ctx);
    uint64_t *keys = malloc(RING * sizeof *keys), st = r->seed, n = 0;
    size_t lag[LAG] = {0};
    double t0, t1;

    if (ctx == NULL || keys == NULL) {
        r->err = 1;
        pthread_barrier_wait(r->start);
        return NULL;
    }
    for (int i = 0; i < RING; i++) {
        keys[i] = splitmix(&st);
        ctx[i] = (struct rhema_pick_ctx){.size = sizeof ctx[i], .key = &keys[i], .key_len = sizeof keys[i], .random = splitmix(&st)};
    }
    for (int i = 0; i < LAG; i++) /* the slots the lag ring will release */
        atomic_fetch_add_explicit(&r->load[0].inflight, 1, memory_order_relaxed);
    pthread_barrier_wait(r->start);
    t0 = now();
    t1 = t0;
    while (t1 - t0 < r->seconds) {
        for (int i = 0; i < 1024; i++, n++) {
            size_t idx;
            if (r->vt->pick(r->b, &ctx[n & (RING - 1)], &idx) != 0) {
                r->err = 1;
                break;
            }
            atomic_fetch_add_explicit(&r->load[idx].inflight, 1, memory_order_relaxed);
            atomic_fetch_sub_explicit(&r->load[lag[n % LAG]].inflight, 1, memory_order_relaxed);
            lag[n % LAG] = idx;
        }
        t1 = now();
    }
    r->ns = (t1 - t0) * 1e9 / (double)n;
    free(ctx);
    free(keys);
    return NULL;
}

/* ns per pick on `threads` threads (the mean of the threads' own), or -1. */
static double cell(const struct rhema_balancer_plugin *vt, size_t n_eps, int threads,
                   double seconds)
{
    struct rhema_endpoint *eps = calloc(n_eps, sizeof *eps);
    struct rhema_endpoint_load *load = calloc(n_eps, sizeof *load);
    char (*id)[32] = calloc(n_eps, sizeof *id);
    rhema_balancer *b = NULL;
    pthread_barrier_t start;
    pthread_t th[2];
    struct run runs[2];
    double ns = -1;
    char *err = NULL;
    uint64_t st = 42;

    if (!eps || !load || !id || vt->create(rhema_host_get(), NULL, &b, &err) != 0)
        goto out;
    for (size_t i = 0; i < n_eps; i++) {
        snprintf(id[i], sizeof id[i], "svc-%zu", i);
        eps[i].size = sizeof eps[i];
        eps[i].id = id[i];
        eps[i].address = id[i];
        eps[i].weight = 1 + (uint32_t)(splitmix(&st) % 4); /* weights 1 .. 4 */
        eps[i].load = &load[i];
        atomic_store(&load[i].ewma_ns, 1000000 + splitmix(&st) % 1000000);
    }
    if (vt->update(b, eps, n_eps) != 0)
        goto out;
    pthread_barrier_init(&start, NULL, (unsigned)threads);
    for (int t = 0; t < threads; t++) {
        runs[t] = (struct run){vt, b, load, seconds, &start, 1000u + (unsigned)t, 0, 0};
        if (pthread_create(&th[t], NULL, worker, &runs[t]) != 0)
            abort(); /* the benchmark cannot run: not a plugin error */
    }
    ns = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(th[t], NULL);
        ns += runs[t].ns / threads;
        if (runs[t].err)
            ns = -1;
    }
    pthread_barrier_destroy(&start);
out:
    if (b)
        vt->destroy(b);
    free(err);
    free(eps);
    free(load);
    free(id);
    return ns;
}

/* Fraction of 1M keys that move when svc-37 of 100 leaves (compared by endpoint number). */
static double disruption(const struct rhema_balancer_plugin *vt)
{
    static int owner[1000000];
    const size_t keys = sizeof owner / sizeof owner[0];
    struct rhema_endpoint eps[100];
    char id[100][16];
    int number[100];
    size_t moved = 0;

    for (int pass = 0; pass < 2; pass++) {
        rhema_balancer *b = NULL;
        size_t n = 0;
        for (int i = 0; i < 100; i++) {
            if (pass == 1 && i == 37)
                continue;
            snprintf(id[n], sizeof id[n], "svc-%d", i);
            eps[n] = (struct rhema_endpoint){sizeof eps[n], id[n], id[n], 1, NULL};
            number[n++] = i;
        }
        if (vt->create(rhema_host_get(), NULL, &b, NULL) != 0 || vt->update(b, eps, n) != 0)
            return -1;
        for (size_t k = 0; k < keys; k++) {
            char key[24];
            size_t idx;
            struct rhema_pick_ctx x = {.size = sizeof x, .key = key, .random = k};
            x.key_len = (size_t)snprintf(key, sizeof key, "user-%zu", k);
            if (vt->pick(b, &x, &idx) != 0 || idx >= n)
                return -1;
            if (pass == 0)
                owner[k] = number[idx];
            else
                moved += owner[k] != number[idx];
        }
        vt->destroy(b);
    }
    return (double)moved / (double)keys;
}

int main(int argc, char **argv)
{
    const char *dir = NULL;
    double seconds = 0.3;
    int reps = 3, opt, missed = 0;
    static const size_t sizes[] = {10, 100, 1000};
    struct rhema_plugin_registry *reg;

    while ((opt = getopt(argc, argv, "P:t:r:")) != -1) {
        if (opt == 'P')
            dir = optarg;
        else if (opt == 't')
            seconds = atof(optarg);
        else if (opt == 'r')
            reps = atoi(optarg);
        else
            return 99;
    }
    if (dir == NULL || rhema_plugins_new(&reg) != 0)
        return 99;
    for (size_t s = 0; s < sizeof strategies / sizeof strategies[0]; s++) {
        const struct rhema_loaded_plugin *lp;
        char *err = NULL;
        if (rhema_plugin_load(reg, strategies[s], dir, RHEMA_KIND_BALANCER, &lp, &err) != 0) {
            fprintf(stderr, "%s\n", err ? err : strategies[s]);
            return 99;
        }
        for (size_t z = 0; z < 3; z++)
            for (int threads = 1; threads <= 2; threads++) {
                double best = -1;
                for (int r = 0; r < reps; r++) {
                    double ns = cell(&lp->vt.balancer, sizes[z], threads, seconds);
                    if (ns < 0) {
                        fprintf(stderr, "%s: a pick failed\n", strategies[s]);
                        return 99;
                    }
                    if (best < 0 || ns < best)
                        best = ns;
                }
                const char *res = sizes[z] == 1000 ? (best <= TARGET_NS ? "PASS" : "FAIL") : "-";
                missed += res[0] == 'F';
                printf("ROW %s %zu %d %.1f %s %s\n", strategies[s], sizes[z], threads, best,
                       sizes[z] == 1000 ? "200" : "-", res);
                fflush(stdout);
            }
        if (strcmp(strategies[s], "ip_hash") == 0) {
            double d = disruption(&lp->vt.balancer);
            if (d < 0)
                return 99;
            printf("DISRUPTION %.4f %.3f %s\n", d, TARGET_DISRUPTION,
                   d <= TARGET_DISRUPTION ? "PASS" : "FAIL");
            missed += d > TARGET_DISRUPTION;
        }
    }
    rhema_plugins_free(reg);
    return missed;
}
