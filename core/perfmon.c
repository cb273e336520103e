/*
 * perfmon -- counters, interval samples and threshold alerts (perfmon.h).
 */
#include "rhema_build.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "perfmon.h"
#include "util.h"

#define HISTORY_MAX 64

enum metric { M_RATIO, M_CRYPTO, M_ROTATION, M_PROCESSING, M_COUNT };
static const char *const metric_names[M_COUNT] = {"compression_ratio", "encryption_overhead_ms",
                                                  "key_rotation_ms", "message_processing_ms"};
static const char *const threshold_names[M_COUNT] = {
    "min_compression_ratio", "max_encryption_overhead_ms", "max_key_rotation_ms",
    "max_message_processing_ms"};

struct counters {
    atomic_ullong comp_in, comp_out, comp_n, stored_n, stored_bytes;
    atomic_ullong crypto_ns, crypto_n, crypto_bytes;
    atomic_ullong rot_ns_max, rot_n;
    atomic_ullong proc_ns, proc_n;
};

struct alert {
    int metric;
    double value, threshold;
    uint64_t raised_ms, resolved_ms; /* resolved 0: active */
};

struct rhema_perfmon {
    struct counters c;        /* since start */
    struct counters last;     /* snapshot at the previous sample (plain copies) */
    double threshold[M_COUNT];
    int interval;
    int enabled;
    struct event *ev;
    pthread_mutex_t lock;     /* the sample, alerts and history */
    double value[M_COUNT];    /* last interval; NAN-free: has[] says which are set */
    int has[M_COUNT];
    int active[M_COUNT];      /* index+1 into history of the active alert, 0: none */
    struct alert history[HISTORY_MAX];
    size_t n_history;         /* total raised (ring of HISTORY_MAX) */
    uint64_t sampled_ms;
};

int rhema_perfmon_new(const struct rhema_config *cfg, struct rhema_perfmon **out)
{
    struct rhema_perfmon *pm = calloc(1, sizeof *pm);
    int64_t iv = 10;
    if (!pm)
        return RHEMA_ENOMEM;
    pm->enabled = 1;
    rhema_config_get_bool(cfg, "advanced_features.performance_monitoring.enabled", &pm->enabled);
    rhema_config_get_int(cfg, "advanced_features.performance_monitoring.sample_interval_seconds",
                         &iv);
    pm->interval = (int)iv;
    static const double defaults[M_COUNT] = {1.0, 5.0, 1000.0, 50.0};
    for (int m = 0; m < M_COUNT; m++) {
        char path[128];
        snprintf(path, sizeof path, "advanced_features.performance_monitoring.thresholds.%s",
                 threshold_names[m]);
        pm->threshold[m] = defaults[m];
        rhema_config_get_double(cfg, path, &pm->threshold[m]);
    }
    pthread_mutex_init(&pm->lock, NULL);
    *out = pm;
    return 0;
}

void rhema_perfmon_free(struct rhema_perfmon *pm)
{
    if (!pm)
        return;
    if (pm->ev)
        event_free(pm->ev);
    pthread_mutex_destroy(&pm->lock);
    free(pm);
}

#define ADD(f, v) atomic_fetch_add_explicit(&pm->c.f, (v), memory_order_relaxed)

void rhema_perfmon_compressed(struct rhema_perfmon *pm, size_t in, size_t out, uint64_t ns)
{
    if (!pm || !pm->enabled)
        return;
    ADD(comp_in, in);
    ADD(comp_out, out);
    ADD(comp_n, 1);
    ADD(proc_ns, ns);
    ADD(proc_n, 1);
}

void rhema_perfmon_stored(struct rhema_perfmon *pm, size_t in, uint64_t ns)
{
    if (!pm || !pm->enabled)
        return;
    ADD(stored_n, 1);
    ADD(stored_bytes, in);
    ADD(proc_ns, ns);
    ADD(proc_n, 1);
}

void rhema_perfmon_decompressed(struct rhema_perfmon *pm, size_t out, uint64_t ns)
{
    (void)out;
    if (!pm || !pm->enabled)
        return;
    ADD(proc_ns, ns);
    ADD(proc_n, 1);
}

#define LOAD(f) atomic_load_explicit(&pm->c.f, memory_order_relaxed)

void rhema_perfmon_totals(struct rhema_perfmon *pm, struct rhema_perfmon_totals *out)
{
    memset(out, 0, sizeof *out);
    if (!pm || !pm->enabled)
        return;
    out->compressed = LOAD(comp_n);
    out->compressed_in_bytes = LOAD(comp_in);
    out->compressed_out_bytes = LOAD(comp_out);
    out->stored = LOAD(stored_n);
    out->stored_bytes = LOAD(stored_bytes);
    out->crypto = LOAD(crypto_n);
    out->crypto_bytes = LOAD(crypto_bytes);
    out->crypto_ns = LOAD(crypto_ns);
    out->rotations = LOAD(rot_n);
    out->processed = LOAD(proc_n);
    out->processing_ns = LOAD(proc_ns);
}

void rhema_perfmon_crypto(struct rhema_perfmon *pm, size_t len, uint64_t ns)
{
    if (!pm || !pm->enabled)
        return;
    ADD(crypto_ns, ns);
    ADD(crypto_n, 1);
    ADD(crypto_bytes, len);
    ADD(proc_ns, ns);
    ADD(proc_n, 1);
}

void rhema_perfmon_rotation(struct rhema_perfmon *pm, uint64_t ns)
{
    if (!pm || !pm->enabled)
        return;
    /* keep the slowest rotation of the interval */
    unsigned long long cur = atomic_load(&pm->c.rot_ns_max);
    while (ns > cur && !atomic_compare_exchange_weak(&pm->c.rot_ns_max, &cur, ns)) {
    }
    ADD(rot_n, 1);
}

static uint64_t take(atomic_ullong *now, atomic_ullong *last)
{
    uint64_t v = atomic_load(now), prev = atomic_load(last);
    atomic_store(last, v);
    return v - prev;
}

/* Whether value v breaks the threshold of metric m. */
static int breaks(int m, double v, double t) { return m == M_RATIO ? v < t : v > t; }

void rhema_perfmon_sample(struct rhema_perfmon *pm)
{
    if (!pm || !pm->enabled)
        return;
    pthread_mutex_lock(&pm->lock);
    uint64_t cin = take(&pm->c.comp_in, &pm->last.comp_in);
    uint64_t cout = take(&pm->c.comp_out, &pm->last.comp_out);
    uint64_t cn = take(&pm->c.comp_n, &pm->last.comp_n);
    take(&pm->c.stored_n, &pm->last.stored_n);
    take(&pm->c.stored_bytes, &pm->last.stored_bytes);
    uint64_t kns = take(&pm->c.crypto_ns, &pm->last.crypto_ns);
    uint64_t kn = take(&pm->c.crypto_n, &pm->last.crypto_n);
    take(&pm->c.crypto_bytes, &pm->last.crypto_bytes);
    uint64_t rn = take(&pm->c.rot_n, &pm->last.rot_n);
    uint64_t rmax = atomic_exchange(&pm->c.rot_ns_max, 0);
    uint64_t pns = take(&pm->c.proc_ns, &pm->last.proc_ns);
    uint64_t pn = take(&pm->c.proc_n, &pm->last.proc_n);
    /* an interval without such events leaves the value (and any alert) as it was */
    if (cn && cout) {
        pm->value[M_RATIO] = (double)cin / (double)cout;
        pm->has[M_RATIO] = 1;
    }
    if (kn) {
        pm->value[M_CRYPTO] = (double)kns / (double)kn / 1e6;
        pm->has[M_CRYPTO] = 1;
    }
    if (rn) {
        pm->value[M_ROTATION] = (double)rmax / 1e6;
        pm->has[M_ROTATION] = 1;
    }
    if (pn) {
        pm->value[M_PROCESSING] = (double)pns / (double)pn / 1e6;
        pm->has[M_PROCESSING] = 1;
    }
    uint64_t now = rhema_realtime_ms();
    int fresh[M_COUNT] = {cn && cout, kn != 0, rn != 0, pn != 0};
    for (int m = 0; m < M_COUNT; m++) {
        if (!fresh[m])
            continue;
        int bad = breaks(m, pm->value[m], pm->threshold[m]);
        if (bad && !pm->active[m]) {
            struct alert *a = &pm->history[pm->n_history % HISTORY_MAX];
            *a = (struct alert){.metric = m, .value = pm->value[m],
                                .threshold = pm->threshold[m], .raised_ms = now};
            pm->active[m] = (int)(pm->n_history % HISTORY_MAX) + 1;
            pm->n_history++;
            rhema_log(RHEMA_LOG_WARN, "perfmon", "alert raised: %s %.3f (threshold %s %.3f)",
                      metric_names[m], pm->value[m], threshold_names[m], pm->threshold[m]);
        } else if (!bad && pm->active[m]) {
            pm->history[pm->active[m] - 1].resolved_ms = now;
            pm->active[m] = 0;
            rhema_log(RHEMA_LOG_NOTICE, "perfmon", "alert resolved: %s %.3f", metric_names[m],
                      pm->value[m]);
        } else if (bad) {
            pm->history[pm->active[m] - 1].value = pm->value[m]; /* still breaking: latest */
        }
    }
    pm->sampled_ms = now;
    pthread_mutex_unlock(&pm->lock);
}

static void on_sample(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    rhema_perfmon_sample(arg);
}

int rhema_perfmon_start(struct rhema_perfmon *pm, struct event_base *base)
{
    if (!pm || !pm->enabled)
        return 0;
    struct timeval tv = {pm->interval, 0};
    pm->ev = event_new(base, -1, EV_PERSIST, on_sample, pm);
    return pm->ev && event_add(pm->ev, &tv) == 0 ? 0 : RHEMA_ENOMEM;
}

int rhema_perfmon_value(struct rhema_perfmon *pm, const char *name, double *out)
{
    int rc = RHEMA_ENOTFOUND;
    if (!pm || !pm->enabled)
        return rc;
    pthread_mutex_lock(&pm->lock);
    for (int m = 0; m < M_COUNT; m++)
        if (strcmp(name, metric_names[m]) == 0 && pm->has[m]) {
            *out = pm->value[m];
            rc = 0;
        }
    pthread_mutex_unlock(&pm->lock);
    return rc;
}

static json_t *alert_json(const struct alert *a)
{
    char t[RHEMA_TIME_MAX];
    rhema_time_format(a->raised_ms, t);
    json_t *o = json_pack("{s:s,s:f,s:s,s:f,s:s}", "metric", metric_names[a->metric], "value",
                          a->value, "threshold", threshold_names[a->metric], "limit",
                          a->threshold, "raised_at", t);
    if (a->resolved_ms) {
        rhema_time_format(a->resolved_ms, t);
        json_object_set_new(o, "resolved_at", json_string(t));
    } else {
        json_object_set_new(o, "resolved_at", json_null());
    }
    return o;
}

/* Caller holds the lock. */
static json_t *alerts_locked(struct rhema_perfmon *pm)
{
    json_t *active = json_array(), *history = json_array();
    for (int m = 0; m < M_COUNT; m++)
        if (pm->active[m])
            json_array_append_new(active, alert_json(&pm->history[pm->active[m] - 1]));
    size_t n = pm->n_history < HISTORY_MAX ? pm->n_history : HISTORY_MAX;
    for (size_t i = 0; i < n; i++) { /* newest first */
        size_t idx = (pm->n_history - 1 - i) % HISTORY_MAX;
        json_array_append_new(history, alert_json(&pm->history[idx]));
    }
    return json_pack("{s:o,s:o}", "active", active, "history", history);
}

json_t *rhema_perfmon_alerts_json(struct rhema_perfmon *pm)
{
    if (!pm)
        return json_pack("{s:[],s:[]}", "active", "history");
    pthread_mutex_lock(&pm->lock);
    json_t *o = alerts_locked(pm);
    pthread_mutex_unlock(&pm->lock);
    return o;
}

json_t *rhema_perfmon_json(struct rhema_perfmon *pm)
{
    if (!pm)
        return json_pack("{s:b}", "enabled", 0);
    pthread_mutex_lock(&pm->lock);
    json_t *samples = json_object(), *thresholds = json_object();
    for (int m = 0; m < M_COUNT; m++) {
        json_object_set_new(samples, metric_names[m],
                            pm->has[m] ? json_real(pm->value[m]) : json_null());
        json_object_set_new(thresholds, threshold_names[m], json_real(pm->threshold[m]));
    }
    uint64_t cin = atomic_load(&pm->c.comp_in), cout = atomic_load(&pm->c.comp_out);
    json_t *totals = json_pack(
        "{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "messages_compressed",
        (json_int_t)atomic_load(&pm->c.comp_n), "bytes_in", (json_int_t)cin, "bytes_out",
        (json_int_t)cout, "messages_stored_as_is", (json_int_t)atomic_load(&pm->c.stored_n),
        "bytes_stored_as_is", (json_int_t)atomic_load(&pm->c.stored_bytes), "crypto_operations",
        (json_int_t)atomic_load(&pm->c.crypto_n), "crypto_bytes",
        (json_int_t)atomic_load(&pm->c.crypto_bytes), "key_rotations",
        (json_int_t)atomic_load(&pm->c.rot_n));
    json_object_set_new(totals, "compression_ratio",
                        cout ? json_real((double)cin / (double)cout) : json_null());
    char t[RHEMA_TIME_MAX];
    json_t *o = json_pack("{s:b,s:i,s:o,s:o,s:o,s:o}", "enabled", pm->enabled,
                          "interval_seconds", pm->interval, "samples", samples, "totals", totals,
                          "thresholds", thresholds, "alerts", alerts_locked(pm));
    if (pm->sampled_ms) {
        rhema_time_format(pm->sampled_ms, t);
        json_object_set_new(o, "sampled_at", json_string(t));
    } else {
        json_object_set_new(o, "sampled_at", json_null());
    }
    pthread_mutex_unlock(&pm->lock);
    return o;
}
