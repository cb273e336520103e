/*
 * rawclient.h -- what the direct clients of the benchmarks share
 * (bench/sqlite_raw.c, sqlite_rw.c, pg_raw.c, redis_raw.c): a monotonic
 * clock, per-operation latency samples with their report line, and the
 * 1 KiB session record they store.  Header only: each client is one
 * source file that bench/run.sh or bench/run-backends.sh compiles alone.
 */
#ifndef RHEMA_BENCH_RAWCLIENT_H
#define RHEMA_BENCH_RAWCLIENT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- latency samples ---- */
struct lat {
    float *v; /* microseconds */
    size_t n, cap;
};

static inline void lat_add(struct lat *l, double us)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 65536;
        float *nv = realloc(l->v, cap * sizeof *nv);
        if (!nv) {
            fprintf(stderr, "bench: out of memory\n");
            exit(1);
        }
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = (float)us;
}

static inline int lat_cmp(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* The p-th percentile of sorted samples. */
static inline double lat_pct(const struct lat *l, double p)
{
    if (l->n == 0)
        return 0;
    size_t i = (size_t)(p / 100.0 * (double)l->n);
    if (i >= l->n)
        i = l->n - 1;
    return l->v[i];
}

/* "PHASE ops N seconds S ops_per_sec X p50_us A p99_us B", the line the scripts read. */
static inline void report(const char *phase, struct lat *l, double secs)
{
    qsort(l->v, l->n, sizeof *l->v, lat_cmp);
    printf("%s ops %zu seconds %.3f ops_per_sec %.0f p50_us %.0f p99_us %.0f\n", phase, l->n, secs,
           (double)l->n / secs, lat_pct(l, 50), lat_pct(l, 99));
    fflush(stdout);
}

/* A session record of exactly len bytes for id, into buf (len + 1 bytes). */
static inline int make_record(char *buf, size_t len, const char *id)
{
    static const char head[] = "{\"id\":\"%s\",\"topic\":\"";
    static const char tail[] =
        "\",\"participants\":[\"agent-1\",\"agent-2\",\"agent-3\"],\"status\":\"Active\","
        "\"started_at\":\"2026-01-01T00:00:00.000Z\",\"ended_at\":null,\"messages\":[],"
        "\"decisions\":[],\"created_at\":\"2026-01-01T00:00:00.000Z\","
        "\"updated_at\":\"2026-01-01T00:00:00.000Z\",\"size_bytes\":1024}";
    int n = snprintf(buf, len + 1, head, id);
    size_t pad;
    if (n < 0 || (size_t)n + (sizeof tail - 1) > len)
        return -1;
    pad = len - (size_t)n - (sizeof tail - 1);
    memset(buf + n, 'x', pad);
    memcpy(buf + n + pad, tail, sizeof tail - 1);
    buf[len] = '\0';
    return 0;
}

#endif /* RHEMA_BENCH_RAWCLIENT_H */
