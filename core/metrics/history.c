/*
 * history -- the sampled series behind GET /v1/stats/history (history.h).
 */
#include "rhema_build.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../cluster.h"
#include "../keyring.h"
#include "../log.h"
#include "../services.h"
#include "../util.h"
#include "collect.h"
#include "history.h"
#include "metrics.h"
#include "json_fields.h"

#define WHO "history"
#define HISTORY_NS "monitoring.history"
#define PRUNE_BATCH 256 /* stored samples deleted per interval at most */

static const struct {
    const char *name, *unit;
} series[RHEMA_HISTORY_SERIES] = {
    [RHEMA_HS_REQUEST_RATE] = {"request_rate", "1/s"},
    [RHEMA_HS_ERROR_RATE] = {"error_rate", "1/s"},
    [RHEMA_HS_CLIENT_ERROR_RATE] = {"client_error_rate", "1/s"},
    [RHEMA_HS_ERROR_RATIO] = {"error_ratio", "ratio"},
    [RHEMA_HS_LATENCY_MEAN_MS] = {"latency_mean_ms", "ms"},
    [RHEMA_HS_LATENCY_P50_MS] = {"latency_p50_ms", "ms"},
    [RHEMA_HS_LATENCY_P95_MS] = {"latency_p95_ms", "ms"},
    [RHEMA_HS_LATENCY_P99_MS] = {"latency_p99_ms", "ms"},
    [RHEMA_HS_IN_FLIGHT] = {"in_flight", "requests"},
    [RHEMA_HS_STORAGE_RATE] = {"storage_rate", "1/s"},
    [RHEMA_HS_STORAGE_LATENCY_MEAN_MS] = {"storage_latency_mean_ms", "ms"},
    [RHEMA_HS_STORAGE_LATENCY_P95_MS] = {"storage_latency_p95_ms", "ms"},
    [RHEMA_HS_STORAGE_ERROR_RATE] = {"storage_error_rate", "1/s"},
    [RHEMA_HS_KEYRING_CURRENT_VERSION] = {"keyring_current_version", "version"},
    [RHEMA_HS_KEYRING_ACTIVE_KEYS] = {"keyring_active_keys", "keys"},
    [RHEMA_HS_KEYRING_MESSAGES_CURRENT_KEY] = {"keyring_messages_current_key", "messages"},
    [RHEMA_HS_CLUSTER_IS_LEADER] = {"cluster_is_leader", "bool"},
    [RHEMA_HS_CLUSTER_HAS_LEADER] = {"cluster_has_leader", "bool"},
    [RHEMA_HS_CLUSTER_EPOCH] = {"cluster_epoch", "epoch"},
    [RHEMA_HS_CLUSTER_NODES_ONLINE] = {"cluster_nodes_online", "nodes"},
    [RHEMA_HS_CLUSTER_NODES_OFFLINE] = {"cluster_nodes_offline", "nodes"},
    [RHEMA_HS_SERVICES_HEALTHY] = {"services_healthy", "instances"},
    [RHEMA_HS_SERVICES_NOT_HEALTHY] = {"services_not_healthy", "instances"},
    [RHEMA_HS_PROCESS_CPU_PERCENT] = {"process_cpu_percent", "percent"},
    [RHEMA_HS_PROCESS_RESIDENT_BYTES] = {"process_resident_bytes", "bytes"},
};

struct sample {
    uint64_t t_ms;
    double v[RHEMA_HISTORY_SERIES];
};

struct rhema_history {
    struct rhema_server *srv;
    int interval_s;
    int persist; /* monitoring.storage_backend = "storage" */
    uint64_t retention_ms;
    char node_id[RHEMA_ID_MAX + 1];
    rhema_storage_conn *conn; /* the module's own, main thread only */
    struct event *timer;

    pthread_mutex_t lock; /* guards ring, head, count */
    struct sample *ring;
    size_t cap, head, count; /* head: where the next sample goes */

    /* the previous reading, for the rates (main thread only) */
    int have_prev;
    uint64_t prev_ns;
    struct rhema_metrics_totals prev;
    double prev_cpu;
};

const char *rhema_history_series_name(unsigned i)
{
    return i < RHEMA_HISTORY_SERIES ? series[i].name : NULL;
}

const char *rhema_history_series_unit(unsigned i)
{
    return i < RHEMA_HISTORY_SERIES ? series[i].unit : NULL;
}

int rhema_history_series_find(const char *name, size_t len)
{
    for (unsigned i = 0; i < RHEMA_HISTORY_SERIES; i++)
        if (strlen(series[i].name) == len && memcmp(series[i].name, name, len) == 0)
            return (int)i;
    return -1;
}

/* Append a sample to the ring (the oldest goes when it is full). */
static void ring_push(struct rhema_history *h, const struct sample *s)
{
    pthread_mutex_lock(&h->lock);
    h->ring[h->head] = *s;
    h->head = (h->head + 1) % h->cap;
    if (h->count < h->cap)
        h->count++;
    pthread_mutex_unlock(&h->lock);
}

/*
 * The q-quantile (0..1) of per-bucket counts d[] (total n), in ms, read
 * as Prometheus' histogram_quantile() does: linear within the bucket; in
 * the last (unbounded) bucket, the largest bound.
 */
static double quantile_ms(const uint64_t *d, uint64_t n, double q)
{
    double rank = q * (double)n, cum = 0, lo = 0;
    for (unsigned b = 0; b <= RHEMA_METRICS_BUCKETS; b++) {
        double c = (double)d[b];
        if (b == RHEMA_METRICS_BUCKETS)
            return rhema_metrics_bucket_le[RHEMA_METRICS_BUCKETS - 1] * 1e3;
        double hi = rhema_metrics_bucket_le[b];
        if (c > 0 && cum + c >= rank)
            return (lo + (hi - lo) * ((rank - cum) / c)) * 1e3;
        cum += c;
        lo = hi;
    }
    return NAN; /* not reached */
}

/* Rates and latencies over the interval from the counters' differences. */
static void sample_counters(struct rhema_history *h, struct sample *s, uint64_t now_ns)
{
    struct rhema_metrics_totals t;
    uint64_t dh[RHEMA_METRICS_BUCKETS + 1], ds[RHEMA_METRICS_BUCKETS + 1], nh = 0, ns = 0;
    rhema_metrics_totals(&t);
    s->v[RHEMA_HS_IN_FLIGHT] = t.started > t.answered ? (double)(t.started - t.answered) : 0;
    if (h->have_prev && now_ns > h->prev_ns && rhema_metrics_enabled()) {
        const struct rhema_metrics_totals *p = &h->prev;
        double secs = (double)(now_ns - h->prev_ns) / 1e9;
        uint64_t replies = t.answered - p->answered, e5 = t.status_5xx - p->status_5xx;
        for (unsigned b = 0; b <= RHEMA_METRICS_BUCKETS; b++) {
            nh += dh[b] = t.http[b] - p->http[b];
            ns += ds[b] = t.storage[b] - p->storage[b];
        }
        s->v[RHEMA_HS_REQUEST_RATE] = (double)replies / secs;
        s->v[RHEMA_HS_ERROR_RATE] = (double)e5 / secs;
        s->v[RHEMA_HS_CLIENT_ERROR_RATE] = (double)(t.status_4xx - p->status_4xx) / secs;
        s->v[RHEMA_HS_ERROR_RATIO] = replies ? (double)e5 / (double)replies : 0;
        s->v[RHEMA_HS_STORAGE_RATE] = (double)ns / secs;
        s->v[RHEMA_HS_STORAGE_ERROR_RATE] = (double)(t.storage_errors - p->storage_errors) / secs;
        if (nh) {
            s->v[RHEMA_HS_LATENCY_MEAN_MS] = (double)(t.http_sum_ns - p->http_sum_ns) / 1e6 / nh;
            s->v[RHEMA_HS_LATENCY_P50_MS] = quantile_ms(dh, nh, 0.50);
            s->v[RHEMA_HS_LATENCY_P95_MS] = quantile_ms(dh, nh, 0.95);
            s->v[RHEMA_HS_LATENCY_P99_MS] = quantile_ms(dh, nh, 0.99);
        }
        if (ns) {
            s->v[RHEMA_HS_STORAGE_LATENCY_MEAN_MS] =
                (double)(t.storage_sum_ns - p->storage_sum_ns) / 1e6 / ns;
            s->v[RHEMA_HS_STORAGE_LATENCY_P95_MS] = quantile_ms(ds, ns, 0.95);
        }
    }
    h->prev = t;
}

static void sample_gauges(struct rhema_history *h, struct sample *s, uint64_t now_ns)
{
    struct rhema_server *srv = h->srv;
    struct rhema_keyring_stats st;
    struct rhema_process_stats ps;
    if (srv->keyring && rhema_keyring_stats(srv->keyring, &st) == 0) {
        double under = 0;
        for (size_t i = 0; i < st.versions; i++)
            if (st.v[i].version == st.current_version)
                under = (double)st.v[i].encryptions;
        s->v[RHEMA_HS_KEYRING_CURRENT_VERSION] = st.current_version;
        s->v[RHEMA_HS_KEYRING_ACTIVE_KEYS] = (double)st.active_versions;
        s->v[RHEMA_HS_KEYRING_MESSAGES_CURRENT_KEY] = under;
        rhema_keyring_stats_release(&st);
    }
    if (srv->cluster) {
        json_t *view = NULL;
        char *err = NULL;
        s->v[RHEMA_HS_CLUSTER_IS_LEADER] = rhema_cluster_is_leader(srv->cluster);
        s->v[RHEMA_HS_CLUSTER_EPOCH] = (double)rhema_cluster_known_epoch(srv->cluster);
        if (h->conn && rhema_cluster_json(srv->cluster, srv->storage, h->conn,
                                          RHEMA_CLUSTER_VIEW_HEALTH, &view, &err) == 0) {
            s->v[RHEMA_HS_CLUSTER_HAS_LEADER] =
                json_string_value(json_object_get(view, "leader")) != NULL;
            s->v[RHEMA_HS_CLUSTER_NODES_ONLINE] =
                (double)json_integer_value(json_object_get(view, "online_nodes"));
            s->v[RHEMA_HS_CLUSTER_NODES_OFFLINE] =
                (double)json_integer_value(json_object_get(view, "offline_nodes"));
            json_decref(view);
        }
        free(err); /* storage unreachable: those three stay null */
    }
    if (srv->services) {
        uint64_t healthy, not_healthy;
        rhema_services_health_counts(srv->services, &healthy, &not_healthy);
        s->v[RHEMA_HS_SERVICES_HEALTHY] = (double)healthy;
        s->v[RHEMA_HS_SERVICES_NOT_HEALTHY] = (double)not_healthy;
    }
    if (rhema_process_stats(&ps) == 0) {
        s->v[RHEMA_HS_PROCESS_RESIDENT_BYTES] = (double)ps.resident_bytes;
        if (h->have_prev && now_ns > h->prev_ns && ps.cpu_seconds >= h->prev_cpu)
            s->v[RHEMA_HS_PROCESS_CPU_PERCENT] =
                100.0 * (ps.cpu_seconds - h->prev_cpu) / ((double)(now_ns - h->prev_ns) / 1e9);
        h->prev_cpu = ps.cpu_seconds;
    }
}

/* ---- storage mode ---- */

static void sample_key(const struct rhema_history *h, uint64_t t_ms, char *out, size_t n)
{
    snprintf(out, n, "%s/%016llu", h->node_id, (unsigned long long)t_ms);
}

/* A sample as stored: {"t": ms, "v": {"name": value or null, ...}} (by name: series may grow). */
static char *sample_encode(const struct sample *s)
{
    json_t *v = json_object(), *o;
    char *text;
    for (unsigned i = 0; i < RHEMA_HISTORY_SERIES; i++)
        json_object_set_new(v, series[i].name,
                            isfinite(s->v[i]) ? json_real(s->v[i]) : json_null());
    o = json_pack("{s:I,s:o}", "t", (json_int_t)s->t_ms, "v", v);
    text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return text;
}

static int sample_decode(const void *data, size_t len, struct sample *s)
{
    json_t *o = rhema_json_loadb(data, len, 0, NULL), *v, *x;
    json_int_t t;
    if (!o)
        return -1;
    t = json_integer_value(json_object_get(o, "t"));
    v = json_object_get(o, "v");
    if (t <= 0 || !json_is_object(v)) {
        json_decref(o);
        return -1;
    }
    s->t_ms = (uint64_t)t;
    for (unsigned i = 0; i < RHEMA_HISTORY_SERIES; i++)
        s->v[i] =
            json_is_number(x = json_object_get(v, series[i].name)) ? json_number_value(x) : NAN;
    json_decref(o);
    return 0;
}

static int load_cb(void *ctx, const char *key, const void *value, size_t len, uint64_t version)
{
    struct rhema_history *h = ctx;
    struct sample s;
    (void)key, (void)version;
    if (sample_decode(value, len, &s) == 0)
        ring_push(h, &s); /* in key order: oldest first; the ring keeps the newest */
    else
        rhema_log(RHEMA_LOG_WARN, WHO, "stored sample '%s' in '%s' is not a sample; skipped", key,
                  HISTORY_NS);
    return 0;
}

struct prune {
    char keys[PRUNE_BATCH][RHEMA_ID_MAX + 24];
    size_t n;
};

static int prune_cb(void *ctx, const char *key, const void *value, size_t len, uint64_t version)
{
    struct prune *p = ctx;
    (void)value, (void)len, (void)version;
    if (p->n >= PRUNE_BATCH)
        return 1;
    snprintf(p->keys[p->n++], sizeof p->keys[0], "%s", key);
    return 0;
}

/* Delete this node's stored samples older than the retention (a batch per interval). */
static void prune(struct rhema_history *h, uint64_t now_ms)
{
    char from[RHEMA_ID_MAX + 24], to[RHEMA_ID_MAX + 24];
    struct prune *p = calloc(1, sizeof *p);
    if (!p || now_ms <= h->retention_ms) {
        free(p);
        return;
    }
    sample_key(h, 0, from, sizeof from);
    sample_key(h, now_ms - h->retention_ms, to, sizeof to);
    if (h->srv->storage->scan(h->conn, HISTORY_NS, from, to, PRUNE_BATCH, prune_cb, p) == 0)
        for (size_t i = 0; i < p->n; i++) {
            int rc = h->srv->storage->del(h->conn, HISTORY_NS, p->keys[i], RHEMA_VERSION_ANY);
            if (rc && rc != RHEMA_ENOTFOUND)
                break; /* the next interval tries again */
        }
    free(p);
}

static void persist(struct rhema_history *h, const struct sample *s)
{
    char key[RHEMA_ID_MAX + 24], *text = sample_encode(s);
    struct rhema_storage_write w = {.size = RHEMA_STORAGE_WRITE_SIZE_0,
                                    .op = RHEMA_WRITE_PUT,
                                    .ns = HISTORY_NS,
                                    .key = key,
                                    .expected_version = RHEMA_VERSION_ANY};
    int rc;
    if (!text)
        return;
    sample_key(h, s->t_ms, key, sizeof key);
    w.value = text;
    w.value_len = strlen(text);
    if (h->srv->storage_plugin->vt.storage.features & RHEMA_STORAGE_TTL)
        w.ttl_ms = h->retention_ms;
    rc = h->srv->storage->put(h->conn, &w);
    if (rc) /* the sample stays in the ring; only the stored copy is missing */
        rhema_log(RHEMA_LOG_WARN, WHO, "cannot store the sample: %s",
                  h->srv->storage->errmsg(h->conn));
    free(text);
    prune(h, s->t_ms);
}

/* ---- sampling ---- */

void rhema_history_sample(struct rhema_history *h)
{
    struct sample s;
    uint64_t now_ns = rhema_monotonic_ns();
    if (!h)
        return;
    s.t_ms = rhema_realtime_ms();
    for (unsigned i = 0; i < RHEMA_HISTORY_SERIES; i++)
        s.v[i] = NAN;
    sample_counters(h, &s, now_ns);
    sample_gauges(h, &s, now_ns);
    h->have_prev = 1;
    h->prev_ns = now_ns;
    ring_push(h, &s);
    if (h->persist && h->conn)
        persist(h, &s);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    rhema_history_sample(arg);
}

int rhema_history_open(struct rhema_server *srv, struct rhema_history **out, char **err)
{
    struct rhema_history *h;
    int64_t interval = 10, cap = 720, retention = 86400;
    int enabled = 1, rc;
    const char *backend = "memory";
    char *perr = NULL;
    *out = NULL;
    rhema_config_get_bool(srv->cfg, "monitoring.enabled", &enabled);
    if (!enabled)
        return 0;
    rhema_config_get_int(srv->cfg, "monitoring.metrics_interval_seconds", &interval);
    rhema_config_get_int(srv->cfg, "monitoring.history_max_samples", &cap);
    rhema_config_get_int(srv->cfg, "monitoring.history_retention_seconds", &retention);
    rhema_config_get_string(srv->cfg, "monitoring.storage_backend", &backend);
    if (!(h = calloc(1, sizeof *h)) || !(h->ring = calloc((size_t)cap, sizeof *h->ring))) {
        if (h)
            free(h);
        return rhema_set_error(err, RHEMA_ENOMEM, "metrics history: out of memory (%lld samples)",
                               (long long)cap);
    }
    pthread_mutex_init(&h->lock, NULL);
    h->srv = srv;
    h->interval_s = (int)interval;
    h->cap = (size_t)cap;
    h->retention_ms = (uint64_t)retention * 1000;
    h->persist = strcmp(backend, "storage") == 0;
    snprintf(h->node_id, sizeof h->node_id, "%s",
             srv->cluster ? rhema_cluster_node_id(srv->cluster) : "local");
    if ((rc = srv->storage->connect(srv->storage_inst, &h->conn, &perr)) != 0) {
        rhema_set_error(err, rc, "metrics history: storage connect: %s",
                        perr ? perr : rhema_strerror(rc));
        free(perr);
        h->conn = NULL;
        rhema_history_close(h);
        return rc;
    }
    if (h->persist) {
        char from[RHEMA_ID_MAX + 24], to[RHEMA_ID_MAX + 24];
        uint64_t now = rhema_realtime_ms();
        sample_key(h, now > h->retention_ms ? now - h->retention_ms : 0, from, sizeof from);
        snprintf(to, sizeof to, "%s/~", h->node_id);
        rc = srv->storage->scan(h->conn, HISTORY_NS, from, to, 0, load_cb, h);
        if (rc) {
            rhema_set_error(err, rc, "metrics history: reading the stored samples: %s",
                            srv->storage->errmsg(h->conn));
            rhema_history_close(h);
            return rc;
        }
        rhema_log(RHEMA_LOG_INFO, WHO, "%zu stored samples loaded", h->count);
    }
    *out = h;
    return 0;
}

int rhema_history_start(struct rhema_history *h, struct event_base *base)
{
    struct timeval tv = {h ? h->interval_s : 0, 0};
    if (!h)
        return 0;
    if (!(h->timer = event_new(base, -1, EV_PERSIST, on_timer, h)) || event_add(h->timer, &tv))
        return RHEMA_ENOMEM;
    rhema_history_sample(h); /* the baseline of the first interval's rates */
    return 0;
}

void rhema_history_close(struct rhema_history *h)
{
    if (!h)
        return;
    if (h->timer)
        event_free(h->timer);
    if (h->conn)
        h->srv->storage->disconnect(h->conn);
    pthread_mutex_destroy(&h->lock);
    free(h->ring);
    free(h);
}

json_t *rhema_history_json(struct rhema_history *h, uint64_t since_ms, size_t limit, uint64_t mask)
{
    json_t *o, *ts = json_array(), *vals = json_object(), *units = json_object(), *cols[64];
    size_t first, n = 0, skip = 0;
    int truncated = 0;
    for (unsigned i = 0; i < RHEMA_HISTORY_SERIES; i++) {
        cols[i] = NULL;
        if (mask & (UINT64_C(1) << i)) {
            json_object_set_new(vals, series[i].name, cols[i] = json_array());
            json_object_set_new(units, series[i].name, json_string(series[i].unit));
        }
    }
    pthread_mutex_lock(&h->lock);
    first = (h->head + h->cap - h->count) % h->cap;
    for (size_t k = 0; k < h->count; k++) /* how many are after since */
        n += h->ring[(first + k) % h->cap].t_ms > since_ms;
    if (limit && n > limit) {
        skip = n - limit;
        truncated = 1;
    }
    for (size_t k = 0; k < h->count; k++) {
        const struct sample *s = &h->ring[(first + k) % h->cap];
        if (s->t_ms <= since_ms)
            continue;
        if (skip) {
            skip--;
            continue;
        }
        json_array_append_new(ts, json_integer((json_int_t)s->t_ms));
        for (unsigned i = 0; i < RHEMA_HISTORY_SERIES; i++)
            if (cols[i])
                json_array_append_new(cols[i],
                                      isfinite(s->v[i]) ? json_real(s->v[i]) : json_null());
    }
    pthread_mutex_unlock(&h->lock);
    o = json_pack("{s:i,s:s,s:I,s:b,s:o,s:o,s:o}", "interval_seconds", h->interval_s,
                  "storage_backend", h->persist ? "storage" : "memory", "max_samples",
                  (json_int_t)h->cap, "truncated", truncated, "units", units, "timestamps", ts,
                  "series", vals);
    return o;
}
