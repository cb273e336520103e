/*
 * balancer_suite -- see balancer_suite.h for what is checked and why.
 */
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "balancer_suite.h"

#define MSG_MAX 512
#define DIST_PICKS 1000000
#define DIST_TOLERANCE 0.02
#define BASE_LATENCY 40 /* ticks; one pick per tick */
#define SLOW_FACTOR 10
#define N_PICKERS 4
#define N_UPDATES 1000
#define MAX_SET 128
#define UPDATE_BUDGET_NS 3000000000ull /* the update loop stops after 3 s even short of 1000 */

struct suite {
    const struct rhema_balancer_plugin *vt;
    const struct rhema_host *host;
    const struct rhema_cfg *cfg;
    rhema_conf_report_fn report;
    void *report_ctx;
    struct rhema_conf_totals *totals;
    unsigned failed;
    int want_weights; /* 1 honours, 0 ignores, -1 unknown (either) */
    int want_load;    /* 1: a slow endpoint must get fewer picks; -1 unknown */
    int hashing;
};

/* A check in progress: its first failure (later ones only counted), or a measurement. */
struct check {
    char msg[MSG_MAX];
    char info[MSG_MAX];
    unsigned failures;
};

static void fail(struct check *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct check *c, const char *fmt, ...)
{
    if (c->failures++ == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->msg, sizeof c->msg, fmt, ap);
        va_end(ap);
    }
}

static void info(struct check *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void info(struct check *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->info, sizeof c->info, fmt, ap);
    va_end(ap);
}

static void done(struct suite *s, const char *name, struct check *c)
{
    char detail[2 * MSG_MAX + 64];
    int ok = c->failures == 0;

    if (ok)
        snprintf(detail, sizeof detail, "%s", c->info);
    else if (c->failures > 1)
        snprintf(detail, sizeof detail, "%s (and %u more failures)%s%s", c->msg, c->failures - 1,
                 c->info[0] ? "; " : "", c->info);
    else
        snprintf(detail, sizeof detail, "%s%s%s", c->msg, c->info[0] ? "; " : "", c->info);
    s->report(s->report_ctx, name, ok ? RHEMA_CONF_PASS : RHEMA_CONF_FAIL, detail);
    if (s->totals) {
        if (ok)
            s->totals->passed++;
        else
            s->totals->failed++;
    }
    if (!ok)
        s->failed++;
}

static void skip(struct suite *s, const char *name, const char *why)
{
    s->report(s->report_ctx, name, RHEMA_CONF_SKIP, why);
    if (s->totals)
        s->totals->skipped++;
}

/* ---- helpers ---- */

static uint64_t splitmix(uint64_t *st)
{
    uint64_t z = (*st += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* An endpoint set the suite owns: ids, addresses, loads. */
struct epset {
    size_t n;
    struct rhema_endpoint *eps;
    struct rhema_endpoint_load *load;
    char (*id)[32];
    char (*addr)[32];
};

static int epset_init(struct epset *e, size_t n, const uint32_t *weights, unsigned first_id)
{
    memset(e, 0, sizeof *e);
    e->n = n;
    e->eps = calloc(n ? n : 1, sizeof *e->eps);
    e->load = calloc(n ? n : 1, sizeof *e->load);
    e->id = calloc(n ? n : 1, sizeof *e->id);
    e->addr = calloc(n ? n : 1, sizeof *e->addr);
    if (!e->eps || !e->load || !e->id || !e->addr)
        return -1;
    for (size_t i = 0; i < n; i++) {
        snprintf(e->id[i], sizeof e->id[i], "svc-%u", first_id + (unsigned)i);
        snprintf(e->addr[i], sizeof e->addr[i], "10.0.%u.%u:8080", (first_id + (unsigned)i) / 250,
                 (first_id + (unsigned)i) % 250 + 1);
        e->eps[i].size = sizeof e->eps[i];
        e->eps[i].id = e->id[i];
        e->eps[i].address = e->addr[i];
        e->eps[i].weight = weights ? weights[i] : 1;
        e->eps[i].load = &e->load[i];
    }
    return 0;
}

static void epset_release(struct epset *e)
{
    free(e->eps);
    free(e->load);
    free(e->id);
    free(e->addr);
    memset(e, 0, sizeof *e);
}

static int create(struct suite *s, rhema_balancer **b, struct check *c)
{
    char *err = NULL;
    int rc = s->vt->create(s->host, s->cfg, b, &err);

    if (rc != 0) {
        fail(c, "create: %s: %s", rhema_strerror(rc), err ? err : "");
        free(err);
        *b = NULL;
        return -1;
    }
    return 0;
}

/*
 * update() as a later host calls it: every element wider than this
 * header's struct rhema_endpoint (size says by how much; the extra bytes
 * are garbage), in a copy freed as soon as update() returns.  A strategy
 * indexing eps[i] instead of rhema_endpoint_at() reads the padding as
 * endpoints; one keeping eps past the call reads freed memory (ASan).
 */
struct wide_endpoint {
    struct rhema_endpoint ep;
    uint64_t future[3];
};

static int update_wide(const struct rhema_balancer_plugin *vt, rhema_balancer *b,
                       const struct rhema_endpoint *eps, size_t n)
{
    struct wide_endpoint *w = calloc(n ? n : 1, sizeof *w);
    int rc;
    if (!w)
        return RHEMA_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        w[i].ep = eps[i];
        w[i].ep.size = sizeof w[i];
        memset(w[i].future, 0xA5, sizeof w[i].future);
    }
    rc = vt->update(b, n ? &w[0].ep : NULL, n);
    memset(w, 0x5A, (n ? n : 1) * sizeof *w);
    free(w);
    return rc;
}

static int update(struct suite *s, rhema_balancer *b, const struct epset *e, struct check *c)
{
    int rc = update_wide(s->vt, b, e->eps, e->n);
    if (rc != 0)
        fail(c, "update(%zu endpoints): %s", e->n, rhema_strerror(rc));
    return rc;
}

/* A pick context with a fresh 8-byte key and random number. */
struct pickgen {
    uint64_t st;
    uint64_t keybuf;
    struct rhema_pick_ctx ctx;
};

static const struct rhema_pick_ctx *next_ctx(struct pickgen *g)
{
    g->keybuf = splitmix(&g->st);
    g->ctx.size = sizeof g->ctx;
    g->ctx.client_addr = NULL;
    g->ctx.key = &g->keybuf;
    g->ctx.key_len = sizeof g->keybuf;
    g->ctx.random = splitmix(&g->st);
    return &g->ctx;
}

/* ---- the simulated host: one pick per tick, completions after a latency ---- */

struct pending {
    uint64_t t;
    uint32_t i;
};

struct sim {
    struct pending *heap;
    size_t len, cap;
};

static int sim_push(struct sim *h, uint64_t t, uint32_t i)
{
    if (h->len == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 1024;
        struct pending *p = realloc(h->heap, cap * sizeof *p);
        if (!p)
            return -1;
        h->heap = p;
        h->cap = cap;
    }
    size_t k = h->len++;
    while (k > 0 && h->heap[(k - 1) / 2].t > t) {
        h->heap[k] = h->heap[(k - 1) / 2];
        k = (k - 1) / 2;
    }
    h->heap[k].t = t;
    h->heap[k].i = i;
    return 0;
}

static struct pending sim_pop(struct sim *h)
{
    struct pending top = h->heap[0], last = h->heap[--h->len];
    size_t k = 0;
    for (;;) {
        size_t c = 2 * k + 1;
        if (c >= h->len)
            break;
        if (c + 1 < h->len && h->heap[c + 1].t < h->heap[c].t)
            c++;
        if (h->heap[c].t >= last.t)
            break;
        h->heap[k] = h->heap[c];
        k = c;
    }
    if (h->len > 0)
        h->heap[k] = last;
    return top;
}

/* The host's bookkeeping when a request to endpoint i completes after lat ticks. */
static void complete(struct rhema_endpoint_load *l, uint64_t lat_ns)
{
    uint64_t e = atomic_load(&l->ewma_ns);
    atomic_fetch_sub(&l->inflight, 1);
    if (e == 0)
        e = lat_ns;
    else if (lat_ns >= e)
        e += (lat_ns - e) / 8;
    else
        e -= (e - lat_ns) / 8;
    atomic_store(&l->ewma_ns, e);
    atomic_fetch_add(&l->samples, 1);
}

/*
 * `picks` picks on the set e, with latency[i] ticks (+-25%) per request to
 * endpoint i; counts[i] gets the picks of i.  0, or -1 with c failed.
 */
static int simulate(struct suite *s, rhema_balancer *b, struct epset *e, const unsigned *latency,
                    size_t picks, uint64_t *counts, struct check *c)
{
    struct sim h = {NULL, 0, 0};
    struct pickgen g = {.st = 0x5EED0001};
    uint64_t st = 0xC0FFEE;
    int rc = 0;

    for (uint64_t t = 0; t < picks; t++) {
        size_t idx = (size_t)-1;
        while (h.len > 0 && h.heap[0].t <= t) {
            struct pending p = sim_pop(&h);
            complete(&e->load[p.i], (uint64_t)latency[p.i] * 1000);
        }
        int prc = s->vt->pick(b, next_ctx(&g), &idx);
        if (prc != 0 || idx >= e->n) {
            fail(c, "pick %llu of %zu endpoints: %s, index %zu", (unsigned long long)t, e->n,
                 rhema_strerror(prc), idx);
            rc = -1;
            break;
        }
        counts[idx]++;
        atomic_fetch_add(&e->load[idx].inflight, 1);
        unsigned lat = latency[idx];
        uint64_t jitter = splitmix(&st) % (lat / 2 + 1); /* 0 .. lat/2 */
        if (sim_push(&h, t + lat - lat / 4 + jitter, (uint32_t)idx) != 0) {
            fail(c, "out of memory");
            rc = -1;
            break;
        }
    }
    free(h.heap);
    return rc;
}

/* Largest relative deviation of the shares from the weights' shares. */
static double deviation(const uint64_t *counts, const uint32_t *w, size_t n, size_t picks,
                        char *buf, size_t cap)
{
    double total_w = 0, worst = 0;
    size_t off = 0;

    for (size_t i = 0; i < n; i++)
        total_w += w[i];
    for (size_t i = 0; i < n; i++) {
        double want = w[i] / total_w, got = (double)counts[i] / (double)picks;
        double d = got > want ? (got - want) / want : (want - got) / want;
        if (d > worst)
            worst = d;
        if (off < cap)
            off += (size_t)snprintf(buf + off, cap - off, "%s%.4f", i ? " " : "", got);
    }
    return worst;
}

/* ---- checks ---- */

static void check_empty(struct suite *s)
{
    struct check c = {"", "", 0};
    rhema_balancer *b;
    struct pickgen g = {.st = 1};
    size_t idx = 12345;
    int rc;

    if (create(s, &b, &c) == 0) {
        rc = s->vt->pick(b, next_ctx(&g), &idx);
        if (rc != RHEMA_ENOTFOUND)
            fail(&c, "pick before any update: %s, want ENOTFOUND", rhema_strerror(rc));
        struct epset e;
        if (epset_init(&e, 5, NULL, 0) == 0 && update(s, b, &e, &c) == 0) {
            s->vt->update(b, NULL, 0);
            rc = s->vt->pick(b, next_ctx(&g), &idx);
            if (rc != RHEMA_ENOTFOUND)
                fail(&c, "pick after update(n = 0): %s, index %zu, want ENOTFOUND",
                     rhema_strerror(rc), idx);
        }
        epset_release(&e);
        s->vt->destroy(b);
    }
    done(s, "empty", &c);
}

/* update() refuses an array it cannot read: NULL with n > 0, a stride short of minor 0. */
static void check_bad_update(struct suite *s)
{
    struct check c = {"", "", 0};
    rhema_balancer *b;
    struct epset e;
    int rc;

    memset(&e, 0, sizeof e);
    if (create(s, &b, &c) == 0) {
        if ((rc = s->vt->update(b, NULL, 3)) != RHEMA_EINVAL)
            fail(&c, "update(NULL, 3): %s, want EINVAL", rhema_strerror(rc));
        if (epset_init(&e, 4, NULL, 0) == 0) {
            for (size_t i = 0; i < e.n; i++)
                e.eps[i].size = RHEMA_ENDPOINT_SIZE_0 - 1;
            if ((rc = s->vt->update(b, e.eps, e.n)) != RHEMA_EINVAL)
                fail(&c, "update with size %u < %u: %s, want EINVAL",
                     (unsigned)(RHEMA_ENDPOINT_SIZE_0 - 1), (unsigned)RHEMA_ENDPOINT_SIZE_0,
                     rhema_strerror(rc));
        }
        epset_release(&e);
        s->vt->destroy(b);
    }
    done(s, "bad_update", &c);
}

static void check_latest_update(struct suite *s)
{
    struct check c = {"", "", 0};
    rhema_balancer *b;
    struct epset ten, three;
    struct pickgen g = {.st = 2};
    uint64_t counts[3] = {0, 0, 0};

    if (create(s, &b, &c) != 0) {
        done(s, "latest_update", &c);
        return;
    }
    if (epset_init(&ten, 10, NULL, 0) == 0 && epset_init(&three, 3, NULL, 100) == 0 &&
        update(s, b, &ten, &c) == 0) {
        for (int i = 0; i < 1000; i++) {
            size_t idx;
            if (s->vt->pick(b, next_ctx(&g), &idx) != 0 || idx >= 10)
                fail(&c, "pick on 10 endpoints failed or out of range");
        }
        if (update(s, b, &three, &c) == 0) {
            for (int i = 0; i < 10000; i++) {
                size_t idx = (size_t)-1;
                const struct rhema_pick_ctx *x = next_ctx(&g);
                char addr[32];
                struct rhema_pick_ctx alt = *x;
                if (i % 3 == 1) { /* by address */
                    snprintf(addr, sizeof addr, "192.0.2.%d", i % 250);
                    alt.key = NULL;
                    alt.key_len = 0;
                    alt.client_addr = addr;
                } else if (i % 3 == 2) { /* nothing but the random number */
                    alt.key = NULL;
                    alt.key_len = 0;
                }
                int rc = s->vt->pick(b, &alt, &idx);
                if (rc != 0)
                    fail(&c, "pick %d after the update to 3: %s", i, rhema_strerror(rc));
                else if (idx >= 3)
                    fail(&c, "pick %d after the update from 10 to 3 endpoints: index %zu", i, idx);
                else
                    counts[idx]++;
            }
            for (int i = 0; i < 3; i++)
                if (counts[i] == 0)
                    fail(&c, "endpoint %d of 3 never picked in 10000 picks", i);
        }
    }
    epset_release(&ten);
    epset_release(&three);
    s->vt->destroy(b);
    done(s, "latest_update", &c);
}

/* 4 endpoints of the given weights and latencies under simulated load: counts. */
static int run_sim(struct suite *s, const uint32_t *w, const unsigned *lat, uint64_t *counts,
                   struct check *c)
{
    rhema_balancer *b;
    struct epset e;
    int rc = -1;

    if (create(s, &b, c) != 0)
        return -1;
    if (epset_init(&e, 4, w, 0) == 0 && update(s, b, &e, c) == 0)
        rc = simulate(s, b, &e, lat, DIST_PICKS, counts, c);
    s->vt->destroy(b);
    epset_release(&e);
    return rc;
}

static void check_uniform(struct suite *s)
{
    struct check c = {"", "", 0};
    static const uint32_t w[4] = {1, 1, 1, 1};
    static const unsigned lat[4] = {BASE_LATENCY, BASE_LATENCY, BASE_LATENCY, BASE_LATENCY};
    uint64_t counts[4] = {0, 0, 0, 0};
    char shares[128];

    if (run_sim(s, w, lat, counts, &c) == 0) {
        double d = deviation(counts, w, 4, DIST_PICKS, shares, sizeof shares);
        info(&c, "shares %s over %d picks: at most %.2f%% from 1/4", shares, DIST_PICKS,
             100 * d);
        if (d > DIST_TOLERANCE)
            fail(&c, "not uniform within %.0f%%", 100 * DIST_TOLERANCE);
    }
    done(s, "uniform", &c);
}

static void check_weights(struct suite *s)
{
    struct check c = {"", "", 0};
    static const uint32_t w[4] = {1, 2, 3, 4}, ones[4] = {1, 1, 1, 1};
    static const unsigned lat[4] = {BASE_LATENCY, BASE_LATENCY, BASE_LATENCY, BASE_LATENCY};
    uint64_t counts[4] = {0, 0, 0, 0};
    char shares[128], tmp[128];

    if (run_sim(s, w, lat, counts, &c) == 0) {
        double dw = deviation(counts, w, 4, DIST_PICKS, shares, sizeof shares);
        double du = deviation(counts, ones, 4, DIST_PICKS, tmp, sizeof tmp);
        int honours = dw <= DIST_TOLERANCE, ignores = du <= DIST_TOLERANCE;
        info(&c, "weights 1 2 3 4: shares %s over %d picks (%.2f%% from the weights, %.2f%% "
                 "from uniform): %s",
             shares, DIST_PICKS, 100 * dw, 100 * du,
             honours ? "honours weights" : ignores ? "ignores weights" : "neither");
        if (s->want_weights == 1 && !honours)
            fail(&c, "weights not honoured within %.0f%%", 100 * DIST_TOLERANCE);
        else if (s->want_weights == 0 && !ignores)
            fail(&c, "a strategy that ignores weights is not uniform within %.0f%%",
                 100 * DIST_TOLERANCE);
        else if (!honours && !ignores)
            fail(&c, "shares follow neither the weights nor a uniform split");
    }
    done(s, "weights", &c);
}

static void check_slow(struct suite *s)
{
    struct check c = {"", "", 0};
    static const uint32_t w[4] = {1, 1, 1, 1};
    static const unsigned lat[4] = {BASE_LATENCY * SLOW_FACTOR, BASE_LATENCY, BASE_LATENCY,
                                    BASE_LATENCY};
    uint64_t counts[4] = {0, 0, 0, 0};

    if (run_sim(s, w, lat, counts, &c) == 0) {
        double share = (double)counts[0] / DIST_PICKS;
        info(&c, "an endpoint %dx slower got %.4f of the picks (fair: 0.25)", SLOW_FACTOR, share);
        if (s->want_load == 1 && share >= 0.125)
            fail(&c, "a load-aware strategy gave the slow endpoint half a fair share or more");
    }
    done(s, "slow_endpoint", &c);
}

/* The id picked for a context, or NULL. */
static const char *pick_id(struct suite *s, rhema_balancer *b, const struct epset *e,
                           const struct rhema_pick_ctx *x)
{
    size_t idx;
    if (s->vt->pick(b, x, &idx) != 0 || idx >= e->n)
        return NULL;
    return e->eps[idx].id;
}

static void check_hash_determinism(struct suite *s)
{
    struct check c = {"", "", 0};
    rhema_balancer *b1 = NULL, *b2 = NULL;
    struct epset e, rev;
    uint64_t seen[16] = {0};

    memset(&e, 0, sizeof e);
    memset(&rev, 0, sizeof rev);
    if (!s->hashing) {
        skip(s, "hash_determinism", "not a hashing strategy");
        return;
    }
    if (create(s, &b1, &c) != 0 || create(s, &b2, &c) != 0)
        goto out;
    if (epset_init(&e, 16, NULL, 0) != 0 || epset_init(&rev, 16, NULL, 0) != 0)
        goto out;
    for (size_t i = 0; i < 16; i++) { /* the same endpoints, in reverse order */
        rev.eps[i] = e.eps[15 - i];
        rev.eps[i].load = &rev.load[i];
    }
    if (update(s, b1, &e, &c) != 0 || update(s, b2, &rev, &c) != 0)
        goto out;
    for (unsigned k = 0; k < 2000; k++) {
        char key[32];
        struct rhema_pick_ctx x = {sizeof x, NULL, NULL, 0, 0};
        snprintf(key, sizeof key, k < 1000 ? "session-%u" : "198.51.100.%u", k);
        if (k < 1000) {
            x.key = key;
            x.key_len = strlen(key);
        } else {
            x.client_addr = key;
        }
        const char *first = NULL;
        for (unsigned rep = 0; rep < 3; rep++) {
            x.random = k * 1000003ull + rep * 7919; /* must not matter */
            const char *a = pick_id(s, b1, &e, &x), *r = pick_id(s, b2, &rev, &x);
            if (a == NULL || r == NULL) {
                fail(&c, "pick failed for %s", key);
                continue;
            }
            if (first == NULL)
                first = a;
            if (strcmp(a, first) != 0)
                fail(&c, "%s went to %s, then to %s", key, first, a);
            if (strcmp(a, r) != 0)
                fail(&c, "%s went to %s, and to %s in an instance given the endpoints in "
                         "reverse order", key, a, r);
        }
    }
    struct pickgen g = {.st = 3};
    for (int i = 0; i < 16000; i++) {
        struct rhema_pick_ctx x = *next_ctx(&g);
        size_t idx;
        x.key = NULL;
        x.key_len = 0;
        if (s->vt->pick(b1, &x, &idx) == 0 && idx < 16)
            seen[idx]++;
    }
    for (int i = 0; i < 16; i++)
        if (seen[i] == 0)
            fail(&c, "without key or address, endpoint %d of 16 was never picked in 16000 "
                     "picks (ctx->random unused?)", i);
out:
    if (b1)
        s->vt->destroy(b1);
    if (b2)
        s->vt->destroy(b2);
    epset_release(&e);
    epset_release(&rev);
    done(s, "hash_determinism", &c);
}

#define DISRUPT_KEYS 100000

/* Map every key to an endpoint id of e (pointers into e). */
static int map_keys(struct suite *s, const struct epset *e, const char **out, struct check *c)
{
    rhema_balancer *b;
    int rc = 0;

    if (create(s, &b, c) != 0)
        return -1;
    if (update(s, b, e, c) != 0)
        rc = -1;
    for (unsigned k = 0; rc == 0 && k < DISRUPT_KEYS; k++) {
        char key[32];
        struct rhema_pick_ctx x = {.size = sizeof x, .key = key, .random = k};
        x.key_len = (size_t)snprintf(key, sizeof key, "user-%u", k);
        out[k] = pick_id(s, b, e, &x);
        if (out[k] == NULL) {
            fail(c, "pick failed for key %s", key);
            rc = -1;
        }
    }
    s->vt->destroy(b);
    return rc;
}

static void check_hash_disruption(struct suite *s)
{
    struct check c = {"", "", 0};
    struct epset all, less, more;
    const char **before = malloc(DISRUPT_KEYS * sizeof *before);
    const char **after = malloc(DISRUPT_KEYS * sizeof *after);
    const char **added = malloc(DISRUPT_KEYS * sizeof *added);
    const size_t gone = 37;

    memset(&all, 0, sizeof all);
    memset(&less, 0, sizeof less);
    memset(&more, 0, sizeof more);
    if (!s->hashing) {
        skip(s, "hash_disruption", "not a hashing strategy");
        goto out_free;
    }
    if (!before || !after || !added || epset_init(&all, 100, NULL, 0) != 0 ||
        epset_init(&less, 99, NULL, 0) != 0 || epset_init(&more, 101, NULL, 0) != 0) {
        fail(&c, "out of memory");
        goto out;
    }
    for (size_t i = 0, j = 0; i < 100; i++) /* the same ids without svc-37 */
        if (i != gone)
            snprintf(less.id[j++], sizeof less.id[0], "svc-%zu", i);
    if (map_keys(s, &all, before, &c) != 0 || map_keys(s, &less, after, &c) != 0 ||
        map_keys(s, &more, added, &c) != 0)
        goto out;
    unsigned moved = 0, on_gone = 0, others_moved = 0, moved_add = 0;
    for (unsigned k = 0; k < DISRUPT_KEYS; k++) {
        int was_gone = strcmp(before[k], all.id[gone]) == 0;
        if (strcmp(before[k], after[k]) != 0)
            moved++;
        if (was_gone)
            on_gone++;
        else if (strcmp(before[k], after[k]) != 0)
            others_moved++;
        if (strcmp(before[k], added[k]) != 0)
            moved_add++;
    }
    double f = (double)moved / DISRUPT_KEYS, fo = (double)others_moved / (DISRUPT_KEYS - on_gone);
    double fa = (double)moved_add / DISRUPT_KEYS;
    info(&c, "remove 1 of 100: %.2f%% of %d keys moved (ideal 1.00%%, %.2f%% were on it; "
             "%.2f%% of the others moved); add a 101st: %.2f%% moved (ideal 0.99%%)",
         100 * f, DISRUPT_KEYS, 100.0 * on_gone / DISRUPT_KEYS, 100 * fo, 100 * fa);
    if (f > 1.5 / 100)
        fail(&c, "removing 1 of 100 endpoints moved more than 1.5%% of the keys");
    if (fo > 0.005)
        fail(&c, "more than 0.5%% of the keys not on the removed endpoint moved");
    if (fa > 1.5 / 101)
        fail(&c, "adding a 101st endpoint moved more than 1.5/101 of the keys");
out:
    epset_release(&all);
    epset_release(&less);
    epset_release(&more);
    done(s, "hash_disruption", &c);
out_free:
    free(before);
    free(after);
    free(added);
}

/* ---- concurrency ---- */

struct conc {
    struct suite *s;
    rhema_balancer *b;
    size_t sizes[N_UPDATES + 1]; /* sizes[0]: the initial set; sizes[k]: update k */
    atomic_uint completed;        /* updates returned */
    atomic_uint seen;             /* the latest `completed` a pick started after */
    atomic_uint running;          /* pickers that made their first pick */
    atomic_int stop;
    atomic_ullong picks;
    struct check *c;
    pthread_mutex_t lock; /* guards c */
    int feedback;
};

static void conc_fail(struct conc *k, const char *what, unsigned c0, unsigned c1, size_t idx,
                      int rc)
{
    pthread_mutex_lock(&k->lock);
    fail(k->c, "%s: pick %s, index %zu, during updates %u .. %u (sizes %zu .. %zu)", what,
         rhema_strerror(rc), idx, c0, c1 + 1, k->sizes[c0], k->sizes[c1 < N_UPDATES ? c1 + 1 : c1]);
    pthread_mutex_unlock(&k->lock);
}

static void *picker(void *arg)
{
    struct conc *k = arg;
    struct pickgen g = {.st = (uint64_t)(uintptr_t)&g};
    unsigned long long n = 0;
    volatile uint64_t work = 0;
    uint64_t work_st = 7;

    while (!atomic_load(&k->stop)) {
        unsigned c0 = atomic_load(&k->completed);
        size_t idx = (size_t)-1;
        int rc = k->s->vt->pick(k->b, next_ctx(&g), &idx);
        unsigned c1 = atomic_load(&k->completed);
        unsigned last = c1 < N_UPDATES ? c1 + 1 : c1;
        size_t max = 0, min = (size_t)-1;
        for (unsigned u = c0; u <= last; u++) {
            if (k->sizes[u] > max)
                max = k->sizes[u];
            if (k->sizes[u] < min)
                min = k->sizes[u];
        }
        if (rc == 0 && idx >= max)
            conc_fail(k, "index out of range of every set in force", c0, c1, idx, rc);
        else if (rc == RHEMA_ENOTFOUND && min > 0)
            conc_fail(k, "ENOTFOUND while no empty set was in force", c0, c1, idx, rc);
        else if (rc != 0 && rc != RHEMA_ENOTFOUND)
            conc_fail(k, "unexpected error", c0, c1, idx, rc);
        if (rc == 0 && k->feedback)
            k->s->vt->feedback(k->b, idx, 1000 + idx, (int)(n & 1));
        if (n == 0)
            atomic_fetch_add(&k->running, 1);
        atomic_store(&k->seen, c0);
        n++;
        /* a worker does more than pick: without this, 4 pickers on 2 cores are nearly always
           inside pick when preempted, and every grace period waits for a time slice */
        for (int spin = 0; spin < 64; spin++)
            work ^= splitmix(&work_st);
    }
    (void)work;
    atomic_fetch_add(&k->picks, n);
    return NULL;
}

static void check_concurrent(struct suite *s, int with_feedback)
{
    const char *name = with_feedback ? "concurrent_feedback" : "concurrent_update";
    struct check c = {"", "", 0};
    struct conc *k = calloc(1, sizeof *k);
    struct epset cur, next;
    pthread_t th[N_PICKERS];
    int started = 0;
    uint64_t st = 0xABCDEF;

    memset(&cur, 0, sizeof cur);
    if (with_feedback && s->vt->feedback == NULL) {
        skip(s, name, "no feedback method");
        free(k);
        return;
    }
    if (k == NULL) {
        fail(&c, "out of memory");
        done(s, name, &c);
        return;
    }
    k->s = s;
    k->c = &c;
    k->feedback = with_feedback;
    pthread_mutex_init(&k->lock, NULL);
    for (unsigned u = 0; u <= N_UPDATES; u++) /* alternately large and small, now and then empty */
        k->sizes[u] = u % 2 == 0 ? 64 + splitmix(&st) % (MAX_SET - 63) : splitmix(&st) % 9;
    if (create(s, &k->b, &c) != 0)
        goto out;
    if (epset_init(&cur, k->sizes[0], NULL, 0) != 0 || update(s, k->b, &cur, &c) != 0)
        goto out;
    for (; started < N_PICKERS; started++)
        if (pthread_create(&th[started], NULL, picker, k) != 0) {
            fail(&c, "pthread_create failed");
            break;
        }
    /*
     * Every picker picks before the first update, and after each update
     * the loop waits for a pick that began after it: on a loaded machine
     * the updates cannot all run before the pickers get a core.  (The
     * waits are bounded: a hang guard, not a timing check.)
     */
    uint64_t t0 = s->host->monotonic_ns();
    while (started == N_PICKERS && atomic_load(&k->running) < N_PICKERS &&
           s->host->monotonic_ns() - t0 < 10 * UPDATE_BUDGET_NS)
        sched_yield();
    t0 = s->host->monotonic_ns();
    for (unsigned u = 1; u <= N_UPDATES && started == N_PICKERS; u++) {
        if (s->host->monotonic_ns() - t0 > UPDATE_BUDGET_NS)
            break; /* a strategy with costly updates: enough of them have raced the picks */
        while (atomic_load(&k->seen) < u - 1 && s->host->monotonic_ns() - t0 < UPDATE_BUDGET_NS)
            sched_yield();
        if (epset_init(&next, k->sizes[u], NULL, u * 1000) != 0) {
            fail(&c, "out of memory");
            break;
        }
        for (size_t i = 0; i < next.n; i++) { /* varied load for the load-aware strategies */
            atomic_store(&next.load[i].inflight, (unsigned)(splitmix(&st) % 50));
            atomic_store(&next.load[i].ewma_ns, 1000 + splitmix(&st) % 100000);
            next.eps[i].weight = 1 + (uint32_t)(splitmix(&st) % 5);
        }
        int rc = update_wide(s->vt, k->b, next.eps, next.n);
        if (rc != 0) {
            pthread_mutex_lock(&k->lock);
            fail(&c, "update %u (%zu endpoints): %s", u, next.n, rhema_strerror(rc));
            pthread_mutex_unlock(&k->lock);
            epset_release(&next);
            break;
        }
        atomic_store(&k->completed, u);
        /* the previous loads may go now: a strategy still reading them is a use after free */
        memset(cur.load, 0xA5, (cur.n ? cur.n : 1) * sizeof *cur.load);
        epset_release(&cur);
        cur = next;
    }
    uint64_t t1 = s->host->monotonic_ns();
    atomic_store(&k->stop, 1);
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    info(&c, "%llu picks on %d threads during %u updates in %.0f ms",
         (unsigned long long)atomic_load(&k->picks), N_PICKERS, atomic_load(&k->completed),
         (double)(t1 - t0) / 1e6);
    if (atomic_load(&k->completed) < 10)
        fail(&c, "only %u updates in %.1f s", atomic_load(&k->completed), UPDATE_BUDGET_NS / 1e9);
    if (atomic_load(&k->picks) < atomic_load(&k->completed))
        fail(&c, "only %llu picks ran during %u updates: the check saw too little",
             (unsigned long long)atomic_load(&k->picks), atomic_load(&k->completed));
out:
    if (k->b)
        s->vt->destroy(k->b);
    epset_release(&cur);
    pthread_mutex_destroy(&k->lock);
    free(k);
    done(s, name, &c);
}

/* ---- the run ---- */

static int check_header(struct suite *s)
{
    struct check c = {"", "", 0};
    const struct rhema_plugin *h = &s->vt->base;

    if (h->kind != RHEMA_KIND_BALANCER)
        fail(&c, "kind %u, want %u", h->kind, RHEMA_KIND_BALANCER);
    if (h->abi_major != RHEMA_ABI_MAJOR)
        fail(&c, "abi_major %u, want %u", h->abi_major, RHEMA_ABI_MAJOR);
    if (h->size < offsetof(struct rhema_balancer_plugin, feedback) + sizeof s->vt->feedback)
        fail(&c, "size %u is smaller than minor 0 requires", h->size);
    if (h->name == NULL || h->name[0] == '\0')
        fail(&c, "no name");
    if (!s->vt->create || !s->vt->destroy || !s->vt->update || !s->vt->pick)
        fail(&c, "a required method is NULL");
    done(s, "header", &c);
    return c.failures == 0 ? 0 : -1;
}

int rhema_conformance_balancer(const struct rhema_balancer_plugin *vt,
                               const struct rhema_host *host, const struct rhema_cfg *cfg,
                               rhema_conf_report_fn report, void *ctx,
                               struct rhema_conf_totals *totals)
{
    static const struct {
        const char *name;
        int weights, load;
    } known[] = {
        {"round_robin", 0, 0},         {"weighted_round_robin", 1, 0}, {"random", 1, 0},
        {"least_connections", 1, 1},   {"least_response_time", 1, 1},  {"ip_hash", 1, 0},
    };
    struct suite s = {vt, host, cfg, report, ctx, totals, 0, -1, -1, 0};

    if (check_header(&s) != 0)
        return (int)s.failed;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strcmp(vt->base.name, known[i].name) == 0) {
            s.want_weights = known[i].weights;
            s.want_load = known[i].load;
        }
    s.hashing = strstr(vt->base.name, "hash") != NULL;

    struct check c = {"", "", 0};
    rhema_balancer *b = NULL;
    if (create(&s, &b, &c) != 0) {
        done(&s, "create", &c);
        return (int)s.failed;
    }
    vt->destroy(b);
    done(&s, "create", &c);

    check_empty(&s);
    check_bad_update(&s);
    check_latest_update(&s);
    check_uniform(&s);
    check_weights(&s);
    check_slow(&s);
    check_hash_determinism(&s);
    check_hash_disruption(&s);
    check_concurrent(&s, 0);
    check_concurrent(&s, 1);
    return (int)s.failed;
}
