/*
 * metrics -- per-thread counter blocks and the exposition writer (metrics.h).
 */
#include "rhema_build.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "rhema/plugin.h"

const double rhema_metrics_bucket_le[RHEMA_METRICS_BUCKETS] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

/* The bounds in nanoseconds, compared with a duration without a division. */
static const uint64_t bucket_ns[RHEMA_METRICS_BUCKETS] = {
    500000ull,     1000000ull,    2500000ull,    5000000ull,    10000000ull,
    25000000ull,   50000000ull,   100000000ull,  250000000ull,  500000000ull,
    1000000000ull, 2500000000ull, 5000000000ull, 10000000000ull};

static const char *const storage_ops[RHEMA_MOP_COUNT] = {"get",    "get_many", "put",   "delete",
                                                         "batch",  "group",    "scan",  "lease",
                                                         "health", "stats",    "backup"};

static const char *const method_names[RHEMA_METRICS_METHODS] = {
    "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE", "CONNECT", "PATCH", "other"};

struct hist {
    _Atomic uint64_t n[RHEMA_METRICS_BUCKETS + 1]; /* per bucket, not cumulative */
    _Atomic uint64_t sum_ns;
};

/*
 * One thread's counters.  Aligned to a cache line so that two workers'
 * blocks never share one; the status arrays are allocated by the owner on
 * first use of a (slot, method) and published with a release store.
 */
struct rhema_metrics_block {
    _Alignas(64) _Atomic uint64_t started;
    _Atomic uint64_t answered;
    struct hist storage[RHEMA_MOP_COUNT];
    _Atomic uint64_t storage_errors[RHEMA_MOP_COUNT];
    struct hist *http;                  /* [nslots] */
    _Atomic(_Atomic uint64_t *) *codes; /* [nslots * METHODS] -> [STATUS_N] */
};

static struct {
    rhema_metrics_slot_fn *slot_of;
    unsigned nslots;
    int nblocks; /* workers + the shared block (last) */
    struct rhema_metrics_block *blocks;
} M;
static _Atomic int metrics_on;

static _Thread_local struct rhema_metrics_block *self;

/* Per block: the counters, then the histograms (RHEMA_METRICS_BUCKETS + 1 counts and a sum). */
#define HIST_WORDS (RHEMA_METRICS_BUCKETS + 2)
struct rhema_metrics_set {
    size_t ncounters, nhists, stride; /* stride: words per block, a multiple of 8 (64 bytes) */
    int nblocks;
    _Atomic uint64_t *w;              /* [nblocks * stride] */
};
static struct rhema_metrics_set *builtin;

const char *rhema_metrics_storage_op_name(enum rhema_metrics_storage_op op)
{
    return (unsigned)op < RHEMA_MOP_COUNT ? storage_ops[op] : "?";
}

unsigned rhema_metrics_method_index(unsigned evhttp_method)
{
    for (unsigned i = 0; i < RHEMA_METRICS_METHODS - 1; i++)
        if (evhttp_method == 1u << i)
            return i;
    return RHEMA_METRICS_METHODS - 1;
}

const char *rhema_metrics_method_name(unsigned index)
{
    return method_names[index < RHEMA_METRICS_METHODS ? index : RHEMA_METRICS_METHODS - 1];
}

static void block_release(struct rhema_metrics_block *b)
{
    if (b->codes)
        for (size_t i = 0; i < (size_t)M.nslots * RHEMA_METRICS_METHODS; i++)
            free((void *)atomic_load_explicit(&b->codes[i], memory_order_relaxed));
    free(b->codes);
    free(b->http);
}

int rhema_metrics_open(int nworkers, unsigned nslots, rhema_metrics_slot_fn *slot_of)
{
    if (atomic_load(&metrics_on) || nworkers < 0 || nslots == 0 || !slot_of)
        return RHEMA_EINVAL;
    int n = nworkers + 1;
    struct rhema_metrics_block *blocks = aligned_alloc(64, sizeof *blocks * (size_t)n);
    if (!blocks)
        return RHEMA_ENOMEM;
    memset(blocks, 0, sizeof *blocks * (size_t)n);
    M.nslots = nslots;
    M.slot_of = slot_of;
    for (int i = 0; i < n; i++) {
        /* a cache line of its own: no false sharing with another worker's */
        size_t hbytes = ((size_t)nslots * sizeof *blocks[i].http + 63) / 64 * 64;
        if ((blocks[i].http = aligned_alloc(64, hbytes)) != NULL)
            memset(blocks[i].http, 0, hbytes);
        blocks[i].codes = calloc((size_t)nslots * RHEMA_METRICS_METHODS, sizeof *blocks[i].codes);
        if (!blocks[i].http || !blocks[i].codes) {
            for (int j = 0; j <= i; j++)
                block_release(&blocks[j]);
            free(blocks);
            return RHEMA_ENOMEM;
        }
    }
    M.nblocks = n;
    M.blocks = blocks;
    /* the built-in set outlives a close (see there): reused, zeroed, when it fits */
    if (builtin && builtin->nblocks != n) {
        rhema_metrics_set_free(builtin);
        builtin = NULL;
    }
    if (builtin) {
        memset(builtin->w, 0, builtin->stride * (size_t)n * sizeof *builtin->w);
    } else if (!(builtin = rhema_metrics_set_new(RHEMA_MX_COUNT, RHEMA_MXH_COUNT))) {
        for (int j = 0; j < n; j++)
            block_release(&blocks[j]);
        free(blocks);
        memset(&M, 0, sizeof M);
        return RHEMA_ENOMEM;
    }
    atomic_store(&metrics_on, 1);
    return 0;
}

void rhema_metrics_close(void)
{
    if (!atomic_load(&metrics_on))
        return;
    atomic_store(&metrics_on, 0);
    /*
     * The built-in set is not freed: threads that are not workers (the
     * audit writer, which stops after this) may be adding to it right now,
     * having seen metrics on; their adds go to memory that stays valid, and
     * later ones see metrics off.  It stays reachable (builtin), so it is
     * no leak, and the next open reuses it.
     */
    for (int i = 0; i < M.nblocks; i++)
        block_release(&M.blocks[i]);
    free(M.blocks);
    memset(&M, 0, sizeof M);
}

int rhema_metrics_enabled(void)
{
    return atomic_load_explicit(&metrics_on, memory_order_relaxed);
}

struct rhema_metrics_block *rhema_metrics_thread_enter(int id)
{
    if (!rhema_metrics_enabled() || id < 0 || id >= M.nblocks - 1)
        return NULL;
    self = &M.blocks[id];
    return self;
}

/* An add by the block's only writer: a relaxed load and store, no locked instruction. */
static inline void add(_Atomic uint64_t *c, uint64_t v)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + v,
                          memory_order_relaxed);
}

/* An add to the shared block, which several threads write. */
static inline void add_shared(_Atomic uint64_t *c, uint64_t v)
{
    atomic_fetch_add_explicit(c, v, memory_order_relaxed);
}

static inline uint64_t get(_Atomic uint64_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

static void observe(struct hist *h, uint64_t ns, int shared)
{
    unsigned i = 0;
    while (i < RHEMA_METRICS_BUCKETS && ns > bucket_ns[i])
        i++;
    if (shared) {
        add_shared(&h->n[i], 1);
        add_shared(&h->sum_ns, ns);
    } else {
        add(&h->n[i], 1);
        add(&h->sum_ns, ns);
    }
}

void rhema_metrics_request_started(struct rhema_metrics_block *b)
{
    if (b)
        add(&b->started, 1);
}

void rhema_metrics_reply(struct rhema_metrics_block *b, const void *route, unsigned evhttp_method,
                         int status, uint64_t ns)
{
    unsigned slot, method;
    if (!b)
        return;
    add(&b->answered, 1);
    slot = route ? M.slot_of(route) : 0;
    if (slot >= M.nslots)
        slot = 0;
    method = rhema_metrics_method_index(evhttp_method);
    observe(&b->http[slot], ns, 0);
    if (status < RHEMA_METRICS_STATUS_MIN ||
        status >= RHEMA_METRICS_STATUS_MIN + RHEMA_METRICS_STATUS_N)
        return;
    _Atomic(_Atomic uint64_t *) *p = &b->codes[slot * RHEMA_METRICS_METHODS + method];
    _Atomic uint64_t *codes = atomic_load_explicit(p, memory_order_relaxed);
    if (!codes) { /* only the owner stores here */
        if (!(codes = calloc(RHEMA_METRICS_STATUS_N, sizeof *codes)))
            return; /* out of memory: this reply is not counted by code */
        atomic_store_explicit(p, codes, memory_order_release);
    }
    add(&codes[status - RHEMA_METRICS_STATUS_MIN], 1);
}

void rhema_metrics_storage(enum rhema_metrics_storage_op op, uint64_t ns, int failed)
{
    struct rhema_metrics_block *b = self;
    int shared = b == NULL;
    if ((unsigned)op >= RHEMA_MOP_COUNT || !rhema_metrics_enabled())
        return;
    if (shared)
        b = &M.blocks[M.nblocks - 1];
    observe(&b->storage[op], ns, shared);
    if (failed && shared)
        add_shared(&b->storage_errors[op], 1);
    else if (failed)
        add(&b->storage_errors[op], 1);
}

/* ---- counter sets ---- */

struct rhema_metrics_set *rhema_metrics_set_new(size_t ncounters, size_t nhists)
{
    struct rhema_metrics_set *s;
    size_t words;
    if (!M.nblocks || !(s = calloc(1, sizeof *s)))
        return NULL;
    s->ncounters = ncounters;
    s->nhists = nhists;
    s->stride = (ncounters + nhists * HIST_WORDS + 7) / 8 * 8;
    s->nblocks = M.nblocks;
    words = s->stride * (size_t)s->nblocks;
    if (!words)
        words = 8;
    if (!(s->w = aligned_alloc(64, words * sizeof *s->w))) {
        free(s);
        return NULL;
    }
    memset(s->w, 0, words * sizeof *s->w);
    return s;
}

void rhema_metrics_set_free(struct rhema_metrics_set *s)
{
    if (!s)
        return;
    free(s->w);
    free(s);
}

/* The calling thread's copy of s, and whether it is the shared one. */
static _Atomic uint64_t *set_copy(const struct rhema_metrics_set *s, int *shared)
{
    struct rhema_metrics_block *b = self;
    int i = b && M.blocks ? (int)(b - M.blocks) : s->nblocks - 1;
    if (i < 0 || i >= s->nblocks - 1)
        i = s->nblocks - 1;
    *shared = i == s->nblocks - 1;
    return s->w + (size_t)i * s->stride;
}

void rhema_metrics_set_add(struct rhema_metrics_set *s, size_t counter, uint64_t n)
{
    int shared;
    if (!rhema_metrics_enabled() || !s || counter >= s->ncounters)
        return;
    _Atomic uint64_t *w = set_copy(s, &shared);
    if (shared)
        add_shared(&w[counter], n);
    else
        add(&w[counter], n);
}

void rhema_metrics_set_observe(struct rhema_metrics_set *s, size_t hist, uint64_t ns)
{
    int shared;
    unsigned i = 0;
    if (!rhema_metrics_enabled() || !s || hist >= s->nhists)
        return;
    _Atomic uint64_t *h = set_copy(s, &shared) + s->ncounters + hist * HIST_WORDS;
    while (i < RHEMA_METRICS_BUCKETS && ns > bucket_ns[i])
        i++;
    if (shared) {
        add_shared(&h[i], 1);
        add_shared(&h[RHEMA_METRICS_BUCKETS + 1], ns);
    } else {
        add(&h[i], 1);
        add(&h[RHEMA_METRICS_BUCKETS + 1], ns);
    }
}

uint64_t rhema_metrics_set_get(const struct rhema_metrics_set *s, size_t counter)
{
    uint64_t n = 0;
    if (!s || counter >= s->ncounters)
        return 0;
    for (int b = 0; b < s->nblocks; b++)
        n += get(&s->w[(size_t)b * s->stride + counter]);
    return n;
}

uint64_t rhema_metrics_set_hist(const struct rhema_metrics_set *s, size_t hist, uint64_t *counts,
                                uint64_t *sum_ns)
{
    uint64_t total = 0;
    memset(counts, 0, sizeof *counts * (RHEMA_METRICS_BUCKETS + 1));
    *sum_ns = 0;
    if (!s || hist >= s->nhists)
        return 0;
    for (int b = 0; b < s->nblocks; b++) {
        _Atomic uint64_t *h = s->w + (size_t)b * s->stride + s->ncounters + hist * HIST_WORDS;
        for (unsigned i = 0; i <= RHEMA_METRICS_BUCKETS; i++)
            counts[i] += get(&h[i]);
        *sum_ns += get(&h[RHEMA_METRICS_BUCKETS + 1]);
    }
    for (unsigned i = 0; i <= RHEMA_METRICS_BUCKETS; i++)
        total += counts[i];
    return total;
}

void rhema_metrics_count(enum rhema_mx c, uint64_t n)
{
    rhema_metrics_set_add(builtin, c, n);
}

void rhema_metrics_observe(enum rhema_mxh h, uint64_t ns)
{
    rhema_metrics_set_observe(builtin, h, ns);
}

const struct rhema_metrics_set *rhema_metrics_builtin(void)
{
    return rhema_metrics_enabled() ? builtin : NULL;
}

const char *rhema_metrics_tls_result_name(unsigned i)
{
    static const char *const names[RHEMA_MX_TLS_RESULTS] = {
        "ok",          "no_client_certificate", "bad_client_certificate",
        "protocol_version", "no_shared_cipher", "http_request",
        "peer_alert",  "other",                 "aborted"};
    return i < RHEMA_MX_TLS_RESULTS ? names[i] : "?";
}

/* ---- the exposition writer ---- */

void rhema_expo_init(struct rhema_expo *e, int openmetrics)
{
    memset(e, 0, sizeof *e);
    e->openmetrics = openmetrics != 0;
}

void rhema_expo_release(struct rhema_expo *e)
{
    free(e->text);
    e->text = NULL;
    e->len = e->cap = 0;
}

static int reserve(struct rhema_expo *e, size_t more)
{
    if (e->oom)
        return -1;
    if (e->len + more + 1 > e->cap) {
        size_t cap = e->cap ? e->cap : 4096;
        while (e->len + more + 1 > cap)
            cap *= 2;
        char *t = realloc(e->text, cap);
        if (!t) {
            e->oom = 1;
            return -1;
        }
        e->text = t;
        e->cap = cap;
    }
    return 0;
}

static void put(struct rhema_expo *e, const char *s, size_t n)
{
    if (reserve(e, n))
        return;
    memcpy(e->text + e->len, s, n);
    e->len += n;
    e->text[e->len] = '\0';
}

static void puts_(struct rhema_expo *e, const char *s)
{
    put(e, s, strlen(s));
}

static void printf_(struct rhema_expo *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void printf_(struct rhema_expo *e, const char *fmt, ...)
{
    char buf[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > 0)
        put(e, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

void rhema_expo_escaped(struct rhema_expo *e, const char *s)
{
    for (const char *p = s; *p; p++) {
        const char *run = p;
        while (*p && *p != '\\' && *p != '"' && *p != '\n')
            p++;
        put(e, run, (size_t)(p - run));
        if (!*p)
            break;
        puts_(e, *p == '\\' ? "\\\\" : *p == '"' ? "\\\"" : "\\n");
    }
}

void rhema_expo_family(struct rhema_expo *e, const char *name, const char *type, const char *help)
{
    const char *total = (!e->openmetrics && strcmp(type, "counter") == 0) ? "_total" : "";
    puts_(e, "# HELP ");
    puts_(e, name);
    puts_(e, total);
    puts_(e, " ");
    /* HELP escapes \ and newline; OpenMetrics' a double quote too */
    for (const char *p = help; *p; p++)
        puts_(e, *p == '\\'                    ? "\\\\"
                 : *p == '\n'                  ? "\\n"
                 : *p == '"' && e->openmetrics ? "\\\""
                                               : (char[2]){*p, 0});
    puts_(e, "\n# TYPE ");
    puts_(e, name);
    puts_(e, total);
    puts_(e, " ");
    puts_(e, type);
    puts_(e, "\n");
}

static void sample_head(struct rhema_expo *e, const char *name, const char *suffix, size_t n,
                        const char *const *keys, const char *const *values)
{
    puts_(e, name);
    puts_(e, suffix);
    if (n) {
        puts_(e, "{");
        for (size_t i = 0; i < n; i++) {
            if (i)
                puts_(e, ",");
            puts_(e, keys[i]);
            puts_(e, "=\"");
            rhema_expo_escaped(e, values[i]);
            puts_(e, "\"");
        }
        puts_(e, "}");
    }
    puts_(e, " ");
    e->series++;
}

/*
 * A float as Go's strconv does for Prometheus ("1", "0.5", "1e-05"), with
 * ".0" added to an integer in OpenMetrics; +Inf and -Inf spelt so.
 */
static void put_double(struct rhema_expo *e, double v)
{
    char buf[40];
    if (v != v) {
        puts_(e, "NaN");
        return;
    }
    if (v > 1.7976931348623157e308 || v < -1.7976931348623157e308) {
        puts_(e, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    /* the fewest significant digits that read back the same, then fixed
     * notation for exponents -4..14 (10 is "10", not "1e+01") */
    int prec = 1, exp10;
    for (; prec < 17; prec++) {
        snprintf(buf, sizeof buf, "%.*e", prec - 1, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    snprintf(buf, sizeof buf, "%.*e", prec - 1, v);
    exp10 = atoi(strchr(buf, 'e') + 1);
    if (exp10 >= -4 && exp10 < 15)
        snprintf(buf, sizeof buf, "%.*f", prec - 1 - exp10 > 0 ? prec - 1 - exp10 : 0, v);
    puts_(e, buf);
    if (e->openmetrics && !strpbrk(buf, ".eE"))
        puts_(e, ".0");
}

void rhema_expo_sample(struct rhema_expo *e, const char *name, const char *suffix, size_t n,
                       const char *const *keys, const char *const *values, double value)
{
    sample_head(e, name, suffix, n, keys, values);
    put_double(e, value);
    puts_(e, "\n");
}

void rhema_expo_sample_u64(struct rhema_expo *e, const char *name, const char *suffix, size_t n,
                           const char *const *keys, const char *const *values, uint64_t value)
{
    sample_head(e, name, suffix, n, keys, values);
    printf_(e, "%llu\n", (unsigned long long)value);
}

#define LABELS_MAX 8

void rhema_expo_histogram(struct rhema_expo *e, const char *name, size_t n, const char *const *keys,
                          const char *const *values, const uint64_t *counts, uint64_t sum_ns)
{
    const char *k[LABELS_MAX + 1], *v[LABELS_MAX + 1];
    char le[40];
    uint64_t cum = 0;
    if (n > LABELS_MAX)
        abort(); /* a caller's bug */
    for (size_t i = 0; i < n; i++)
        k[i] = keys[i], v[i] = values[i];
    k[n] = "le";
    for (unsigned b = 0; b <= RHEMA_METRICS_BUCKETS; b++) {
        cum += counts[b];
        if (b < RHEMA_METRICS_BUCKETS) {
            struct rhema_expo tmp;
            rhema_expo_init(&tmp, 1); /* le is written as OpenMetrics wants in both: "1.0" */
            put_double(&tmp, rhema_metrics_bucket_le[b]);
            snprintf(le, sizeof le, "%s", tmp.text ? tmp.text : "0");
            rhema_expo_release(&tmp);
        } else {
            snprintf(le, sizeof le, "+Inf");
        }
        v[n] = le;
        rhema_expo_sample_u64(e, name, "_bucket", n + 1, k, v, cum);
    }
    rhema_expo_sample(e, name, "_sum", n, keys, values, (double)sum_ns / 1e9);
    rhema_expo_sample_u64(e, name, "_count", n, keys, values, cum);
}

void rhema_expo_finish(struct rhema_expo *e)
{
    if (e->openmetrics)
        puts_(e, "# EOF\n");
}

/* ---- the families of this module ---- */

static void hist_sum(struct hist *h, uint64_t counts[RHEMA_METRICS_BUCKETS + 1], uint64_t *sum)
{
    for (unsigned i = 0; i <= RHEMA_METRICS_BUCKETS; i++)
        counts[i] += get(&h->n[i]);
    *sum += get(&h->sum_ns);
}

void rhema_metrics_http_totals(struct rhema_metrics_http_totals *out)
{
    uint64_t started = 0, answered = 0;
    memset(out, 0, sizeof *out);
    if (!rhema_metrics_enabled())
        return;
    for (unsigned s = 0; s < M.nslots; s++)
        for (unsigned m = 0; m < RHEMA_METRICS_METHODS; m++)
            for (int b = 0; b < M.nblocks; b++) {
                _Atomic uint64_t *codes = atomic_load_explicit(
                    &M.blocks[b].codes[s * RHEMA_METRICS_METHODS + m], memory_order_acquire);
                for (unsigned c = 0; codes && c < RHEMA_METRICS_STATUS_N; c++) {
                    uint64_t n = get(&codes[c]);
                    out->replies += n;
                    out->by_class[(c + RHEMA_METRICS_STATUS_MIN) / 100 - 1] += n;
                }
            }
    for (int b = 0; b < M.nblocks; b++) {
        answered += get(&M.blocks[b].answered);
        started += get(&M.blocks[b].started);
    }
    out->in_flight = started > answered ? started - answered : 0;
}

void rhema_metrics_write(struct rhema_expo *e, const char *const *slot_names, const char *backend)
{
    static const char *const k_rmc[] = {"route", "method", "code"};
    static const char *const k_route[] = {"route"};
    static const char *const k_bo[] = {"backend", "operation"};
    uint64_t started = 0, answered = 0;
    if (!rhema_metrics_enabled())
        return;

    rhema_expo_family(e, "rhema_http_requests", "counter",
                      "HTTP requests answered, by route template, method and status code.");
    for (unsigned s = 0; s < M.nslots; s++)
        for (unsigned m = 0; m < RHEMA_METRICS_METHODS; m++) {
            uint64_t n[RHEMA_METRICS_STATUS_N] = {0};
            int any = 0;
            for (int b = 0; b < M.nblocks; b++) {
                _Atomic uint64_t *codes = atomic_load_explicit(
                    &M.blocks[b].codes[s * RHEMA_METRICS_METHODS + m], memory_order_acquire);
                if (!codes)
                    continue;
                any = 1;
                for (unsigned c = 0; c < RHEMA_METRICS_STATUS_N; c++)
                    n[c] += get(&codes[c]);
            }
            for (unsigned c = 0; any && c < RHEMA_METRICS_STATUS_N; c++) {
                char code[8];
                if (!n[c])
                    continue;
                snprintf(code, sizeof code, "%u", c + RHEMA_METRICS_STATUS_MIN);
                const char *v[] = {slot_names[s], method_names[m], code};
                rhema_expo_sample_u64(e, "rhema_http_requests", "_total", 3, k_rmc, v, n[c]);
            }
        }

    rhema_expo_family(e, "rhema_http_request_duration_seconds", "histogram",
                      "Time from the start of a request to its reply, by route template.");
    for (unsigned s = 0; s < M.nslots; s++) {
        uint64_t counts[RHEMA_METRICS_BUCKETS + 1] = {0}, sum = 0, total = 0;
        for (int b = 0; b < M.nblocks; b++)
            hist_sum(&M.blocks[b].http[s], counts, &sum);
        for (unsigned i = 0; i <= RHEMA_METRICS_BUCKETS; i++)
            total += counts[i];
        if (total)
            rhema_expo_histogram(e, "rhema_http_request_duration_seconds", 1, k_route,
                                 &slot_names[s], counts, sum);
    }

    for (int b = 0; b < M.nblocks; b++) {
        answered += get(&M.blocks[b].answered); /* before started: never negative */
        started += get(&M.blocks[b].started);
    }
    rhema_expo_family(e, "rhema_http_requests_in_flight", "gauge",
                      "Requests received and not answered yet (deferred ones included).");
    rhema_expo_sample_u64(e, "rhema_http_requests_in_flight", "", 0, NULL, NULL,
                          started > answered ? started - answered : 0);

    rhema_expo_family(e, "rhema_storage_operation_duration_seconds", "histogram",
                      "Duration of storage backend calls (after compression and encryption), "
                      "by backend and operation.");
    for (unsigned op = 0; op < RHEMA_MOP_COUNT; op++) {
        uint64_t counts[RHEMA_METRICS_BUCKETS + 1] = {0}, sum = 0, total = 0;
        for (int b = 0; b < M.nblocks; b++)
            hist_sum(&M.blocks[b].storage[op], counts, &sum);
        for (unsigned i = 0; i <= RHEMA_METRICS_BUCKETS; i++)
            total += counts[i];
        const char *v[] = {backend, storage_ops[op]};
        if (total)
            rhema_expo_histogram(e, "rhema_storage_operation_duration_seconds", 2, k_bo, v, counts,
                                 sum);
    }
    rhema_expo_family(e, "rhema_storage_errors", "counter",
                      "Storage backend calls that failed (not found and version conflicts are "
                      "answers, not errors), by backend and operation.");
    for (unsigned op = 0; op < RHEMA_MOP_COUNT; op++) {
        uint64_t n = 0;
        for (int b = 0; b < M.nblocks; b++)
            n += get(&M.blocks[b].storage_errors[op]);
        const char *v[] = {backend, storage_ops[op]};
        rhema_expo_sample_u64(e, "rhema_storage_errors", "_total", 2, k_bo, v, n);
    }
}

void rhema_metrics_totals(struct rhema_metrics_totals *out)
{
    memset(out, 0, sizeof *out);
    if (!rhema_metrics_enabled())
        return;
    for (int b = 0; b < M.nblocks; b++) {
        struct rhema_metrics_block *k = &M.blocks[b];
        out->answered += get(&k->answered); /* before started: in flight never negative */
        out->started += get(&k->started);
        for (unsigned s = 0; s < M.nslots; s++) {
            hist_sum(&k->http[s], out->http, &out->http_sum_ns);
            for (unsigned m = 0; m < RHEMA_METRICS_METHODS; m++) {
                _Atomic uint64_t *codes = atomic_load_explicit(
                    &k->codes[s * RHEMA_METRICS_METHODS + m], memory_order_acquire);
                if (!codes)
                    continue;
                for (unsigned c = 400; c < 600; c++) {
                    uint64_t n = get(&codes[c - RHEMA_METRICS_STATUS_MIN]);
                    if (c < 500)
                        out->status_4xx += n;
                    else
                        out->status_5xx += n;
                }
            }
        }
        for (unsigned op = 0; op < RHEMA_MOP_COUNT; op++) {
            hist_sum(&k->storage[op], out->storage, &out->storage_sum_ns);
            out->storage_errors += get(&k->storage_errors[op]);
        }
    }
}
