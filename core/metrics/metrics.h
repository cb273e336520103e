/*
 * metrics -- the counters behind GET /metrics and the Prometheus text writer.
 *
 * Counting must not slow the request path, so nothing here is shared per
 * request: each worker thread owns a block (struct rhema_metrics_block) of
 * 64-bit counters that only it writes -- a relaxed atomic load and store,
 * no locked instruction, on its own cache lines -- and a scrape sums the
 * blocks with relaxed loads.  One more block is shared by the threads that
 * are not workers (the committer, the maintenance job, the cluster and
 * services timers): they are few and slow, and add with atomic
 * read-modify-writes.
 *
 * What is counted here: HTTP replies by route slot, method and status, and
 * their durations by route slot; requests started (for the in-flight
 * gauge); storage calls by operation, their durations and errors.  The
 * route slots are the API layer's (core/api/api_metrics.c maps a route
 * template to a slot; slot 0 is "unmatched"); this module knows no route.
 *
 * Lifecycle: rhema_metrics_open() before the workers start (main thread),
 * rhema_metrics_close() after every thread that counts stopped.  When it was not opened
 * (monitoring.enabled false) every observe function is a no-op.
 */
#ifndef RHEMA_CORE_METRICS_H
#define RHEMA_CORE_METRICS_H

#include <stddef.h>
#include <stdint.h>

/* Histogram upper bounds in seconds (Prometheus' defaults, with 0.5 ms and 1 ms). */
#define RHEMA_METRICS_BUCKETS 14
extern const double rhema_metrics_bucket_le[RHEMA_METRICS_BUCKETS];

/* The methods a reply is counted under: evhttp's bits in order, then "other". */
#define RHEMA_METRICS_METHODS 10
/* Statuses 100..599 are counted one by one; anything else is not a reply evhttp sends. */
#define RHEMA_METRICS_STATUS_MIN 100
#define RHEMA_METRICS_STATUS_N 500

/* Storage operations, in the order of rhema_metrics_storage_op_name(). */
enum rhema_metrics_storage_op {
    RHEMA_MOP_GET,
    RHEMA_MOP_GET_MANY,
    RHEMA_MOP_PUT,
    RHEMA_MOP_DEL,
    RHEMA_MOP_BATCH,
    RHEMA_MOP_GROUP,
    RHEMA_MOP_SCAN,
    RHEMA_MOP_LEASE,
    RHEMA_MOP_HEALTH,
    RHEMA_MOP_STATS,
    RHEMA_MOP_BACKUP,
    RHEMA_MOP_COUNT
};
const char *rhema_metrics_storage_op_name(enum rhema_metrics_storage_op op);

struct rhema_metrics_block;

/*
 * Make one block per worker (nworkers) and the shared one, each with
 * nslots route slots; slot_of(route) maps the route a reply carries
 * (NULL: none matched) to its slot < nslots, 0 being "unmatched".
 * 0, or RHEMA_ENOMEM / RHEMA_EINVAL (already open).
 */
typedef unsigned rhema_metrics_slot_fn(const void *route);
int rhema_metrics_open(int nworkers, unsigned nslots, rhema_metrics_slot_fn *slot_of);
void rhema_metrics_close(void);
/* 1 between open and close. */
int rhema_metrics_enabled(void);

/*
 * On a worker thread, as it starts: make worker `id`'s block the calling
 * thread's (storage calls made on this thread count there) and return it;
 * NULL when metrics are off.
 */
struct rhema_metrics_block *rhema_metrics_thread_enter(int id);

/* A request reached the pipeline (in-flight gauge).  b may be NULL. */
void rhema_metrics_request_started(struct rhema_metrics_block *b);
/*
 * A reply: status for `route` (its slot by slot_of; NULL: unmatched),
 * evhttp's method bit, after `ns` nanoseconds.  b may be NULL (a no-op).
 */
void rhema_metrics_reply(struct rhema_metrics_block *b, const void *route, unsigned evhttp_method,
                         int status, uint64_t ns);
/* evhttp's method bit to an index < RHEMA_METRICS_METHODS; its name. */
unsigned rhema_metrics_method_index(unsigned evhttp_method);
const char *rhema_metrics_method_name(unsigned index);

/*
 * A storage call on the calling thread: its duration and whether it
 * failed (an error other than "not found" or a version conflict, which are
 * answers, not failures).  Counted in the thread's block or the shared one.
 */
void rhema_metrics_storage(enum rhema_metrics_storage_op op, uint64_t ns, int failed);

/*
 * The HTTP totals since start (GET /v1/stats): replies, replies by class
 * (by_class[0] 1xx ... [4] 5xx), requests in flight.  Zeros when off.
 */
struct rhema_metrics_http_totals {
    uint64_t replies, by_class[5], in_flight;
};
void rhema_metrics_http_totals(struct rhema_metrics_http_totals *out);

/*
 * Every counter summed over the blocks (the history sampler, history.h):
 * replies started and answered, answered with a 4xx and a 5xx status,
 * the reply durations and the storage call durations of every route and
 * operation as per-bucket counts (RHEMA_METRICS_BUCKETS + 1) and sums, and
 * the failed storage calls.  All 0 when metrics are off.
 */
struct rhema_metrics_totals {
    uint64_t started, answered, status_4xx, status_5xx;
    uint64_t http[RHEMA_METRICS_BUCKETS + 1], http_sum_ns;
    uint64_t storage[RHEMA_METRICS_BUCKETS + 1], storage_sum_ns, storage_errors;
};
void rhema_metrics_totals(struct rhema_metrics_totals *out);

/* ---- counter sets: the subsystems' counters (auth, rate limiting, audit, TLS, AI) ---- */

/*
 * A set is ncounters counters and nhists duration histograms, one copy per
 * worker block and one shared, as above: a worker adds to its own copy
 * without a locked instruction, any other thread to the shared copy with
 * an atomic add; a read sums the copies.  A subsystem whose labels are
 * known only at startup (the AI gateway's upstreams and models) makes its
 * own set after rhema_metrics_open() and frees it before
 * rhema_metrics_close(); the fixed families below live in the built-in
 * set, which rhema_metrics_close() keeps (a thread that is not a worker may
 * still add to it) and the next open reuses.  A NULL set (metrics off)
 * ignores adds and reads as 0.
 */
struct rhema_metrics_set;
struct rhema_metrics_set *rhema_metrics_set_new(size_t ncounters, size_t nhists);
void rhema_metrics_set_free(struct rhema_metrics_set *s);
void rhema_metrics_set_add(struct rhema_metrics_set *s, size_t counter, uint64_t n);
void rhema_metrics_set_observe(struct rhema_metrics_set *s, size_t hist, uint64_t ns);
uint64_t rhema_metrics_set_get(const struct rhema_metrics_set *s, size_t counter);
/* counts[RHEMA_METRICS_BUCKETS + 1] and *sum_ns are overwritten; returns the count. */
uint64_t rhema_metrics_set_hist(const struct rhema_metrics_set *s, size_t hist, uint64_t *counts,
                                uint64_t *sum_ns);

/* The built-in set's counters (doc/monitoring.md names their families). */
enum rhema_mx {
    /* rhema_auth_requests_total{result}: in the order of the result names */
    RHEMA_MX_AUTH_OK,
    RHEMA_MX_AUTH_CERTIFICATE,
    RHEMA_MX_AUTH_MISSING,
    RHEMA_MX_AUTH_MALFORMED,
    RHEMA_MX_AUTH_CHECKSUM,
    RHEMA_MX_AUTH_UNKNOWN,
    RHEMA_MX_AUTH_EXPIRED,
    RHEMA_MX_AUTH_UNAVAILABLE,
    RHEMA_MX_AUTH_FORBIDDEN,
    /* rhema_auth_key_lookups_total{source} */
    RHEMA_MX_KEY_STATIC,
    RHEMA_MX_KEY_CACHE,
    RHEMA_MX_KEY_BACKEND,
    /* rhema_ratelimit_decisions_total{scope,result}: scope key, client x allowed, refused, error */
    RHEMA_MX_RL_KEY_ALLOWED,
    RHEMA_MX_RL_KEY_REFUSED,
    RHEMA_MX_RL_KEY_ERROR,
    RHEMA_MX_RL_CLIENT_ALLOWED,
    RHEMA_MX_RL_CLIENT_REFUSED,
    RHEMA_MX_RL_CLIENT_ERROR,
    /* rhema_ratelimit_backend_failures_total{action}: served (open), refused (closed) */
    RHEMA_MX_RL_FAIL_OPEN,
    RHEMA_MX_RL_FAIL_CLOSED,
    /* the audit log */
    RHEMA_MX_AUDIT_RECORDS,
    RHEMA_MX_AUDIT_BYTES,
    RHEMA_MX_AUDIT_BATCHES,
    RHEMA_MX_AUDIT_FAILED,
    RHEMA_MX_AUDIT_DROPPED,
    /* rhema_tls_handshakes_total{result}: in the order of rhema_metrics_tls_result_name() */
    RHEMA_MX_TLS_OK,
    RHEMA_MX_TLS_NO_CLIENT_CERT,
    RHEMA_MX_TLS_BAD_CLIENT_CERT,
    RHEMA_MX_TLS_PROTOCOL,
    RHEMA_MX_TLS_NO_SHARED_CIPHER,
    RHEMA_MX_TLS_HTTP_REQUEST,
    RHEMA_MX_TLS_PEER_ALERT,
    RHEMA_MX_TLS_OTHER,
    RHEMA_MX_TLS_ABORTED,
    RHEMA_MX_TLS_CLIENT_CERTS, /* handshakes that ended with a verified client certificate */
    RHEMA_MX_COUNT
};
#define RHEMA_MX_TLS_RESULTS (RHEMA_MX_TLS_ABORTED - RHEMA_MX_TLS_OK + 1)
const char *rhema_metrics_tls_result_name(unsigned i);

/* The built-in set's histograms. */
enum rhema_mxh {
    RHEMA_MXH_RL_BACKEND, /* one rate() call (or the in-process table's) */
    RHEMA_MXH_AUDIT_WRITE, /* one batch's write() */
    RHEMA_MXH_AUDIT_FSYNC, /* one batch's fdatasync() */
    RHEMA_MXH_TLS_HANDSHAKE,
    RHEMA_MXH_COUNT
};

/* Add to the built-in set (no-ops when metrics are off). */
void rhema_metrics_count(enum rhema_mx c, uint64_t n);
void rhema_metrics_observe(enum rhema_mxh h, uint64_t ns);
/* The built-in set (NULL when off), for the readers in collect.c. */
const struct rhema_metrics_set *rhema_metrics_builtin(void);

/* ---- the exposition ---- */

/*
 * A growing text buffer in the Prometheus text format 0.0.4 or, with
 * openmetrics, OpenMetrics 1.0.0.  An allocation failure is remembered
 * (oom) and the text is then not used.
 */
struct rhema_expo {
    char *text;
    size_t len, cap;
    int openmetrics;
    int oom;
    size_t series; /* samples written */
};

void rhema_expo_init(struct rhema_expo *e, int openmetrics);
void rhema_expo_release(struct rhema_expo *e);
/*
 * A metric family's HELP and TYPE lines.  type: "counter", "gauge" or
 * "histogram".  name is the family's base name: a counter's is without
 * "_total" (the text format's TYPE line gets "_total", OpenMetrics' does
 * not, as each format wants).
 */
void rhema_expo_family(struct rhema_expo *e, const char *name, const char *type, const char *help);
/*
 * One sample: name + suffix ("", "_total", "_bucket", "_sum", "_count"),
 * n labels (keys[i]="values[i]", escaped), and a value.
 */
void rhema_expo_sample(struct rhema_expo *e, const char *name, const char *suffix, size_t n,
                       const char *const *keys, const char *const *values, double value);
void rhema_expo_sample_u64(struct rhema_expo *e, const char *name, const char *suffix, size_t n,
                           const char *const *keys, const char *const *values, uint64_t value);
/*
 * A histogram's samples from per-bucket (not cumulative) counts
 * counts[RHEMA_METRICS_BUCKETS + 1] (the last is above every bound) and the
 * sum in nanoseconds; n labels as for a sample (le is added).
 */
void rhema_expo_histogram(struct rhema_expo *e, const char *name, size_t n, const char *const *keys,
                          const char *const *values, const uint64_t *counts, uint64_t sum_ns);
/* The end: "# EOF" in OpenMetrics, nothing in the text format. */
void rhema_expo_finish(struct rhema_expo *e);
/* A label value escaped as both formats want (\\, \", \n) appended to e. */
void rhema_expo_escaped(struct rhema_expo *e, const char *s);

/*
 * The families counted here: HTTP requests, durations, in flight
 * (route slot names from slot_name(i), i < nslots given at open) and
 * storage operations under backend's name.
 */
void rhema_metrics_write(struct rhema_expo *e, const char *const *slot_names, const char *backend);

#endif /* RHEMA_CORE_METRICS_H */
