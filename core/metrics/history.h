/*
 * history -- the metrics history behind GET /v1/stats/history: a bounded
 * ring of samples of the main series, taken every
 * monitoring.metrics_interval_seconds on the main thread's event base, so
 * that the console (and anyone without Prometheus) can draw charts.
 *
 * Each sample holds one value per series (history_series_name()): rates
 * and latencies computed from the difference of the metrics counters
 * (metrics.h) over the interval, and gauges read at that moment (in
 * flight, keyring, cluster, services, process).  A value that cannot be
 * known (the first sample's rates, the cluster when storage fails, the
 * keyring when it is off) is NaN, answered as null.
 *
 * monitoring.storage_backend = "memory": the ring lives in the process
 * and starts empty.  "storage": each sample is also written to the
 * storage backend (namespace "monitoring.history", key
 * "<node id>/<16-digit ms>"), samples older than
 * monitoring.history_retention_seconds are deleted, and at start the ring
 * is filled again from what is stored, so a restart keeps the history.
 *
 * Memory: monitoring.history_max_samples samples of RHEMA_HISTORY_SERIES
 * doubles, allocated once at start.
 *
 * Threads: open, start and close on the main thread (the sampler timer
 * runs there, with the module's own storage connection); query from any
 * thread (a mutex guards the ring).
 */
#ifndef RHEMA_CORE_METRICS_HISTORY_H
#define RHEMA_CORE_METRICS_HISTORY_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>
#include <jansson.h>

#include "../server.h"

/* The series, in the order of history_series_name(). */
enum rhema_history_series {
    RHEMA_HS_REQUEST_RATE,      /* replies per second */
    RHEMA_HS_ERROR_RATE,        /* 5xx replies per second */
    RHEMA_HS_CLIENT_ERROR_RATE, /* 4xx replies per second */
    RHEMA_HS_ERROR_RATIO,       /* 5xx / replies over the interval */
    RHEMA_HS_LATENCY_MEAN_MS,   /* reply durations over the interval */
    RHEMA_HS_LATENCY_P50_MS,
    RHEMA_HS_LATENCY_P95_MS,
    RHEMA_HS_LATENCY_P99_MS,
    RHEMA_HS_IN_FLIGHT,    /* requests not answered yet, at the sample */
    RHEMA_HS_STORAGE_RATE, /* storage calls per second */
    RHEMA_HS_STORAGE_LATENCY_MEAN_MS,
    RHEMA_HS_STORAGE_LATENCY_P95_MS,
    RHEMA_HS_STORAGE_ERROR_RATE, /* failed storage calls per second */
    RHEMA_HS_KEYRING_CURRENT_VERSION,
    RHEMA_HS_KEYRING_ACTIVE_KEYS,
    RHEMA_HS_KEYRING_MESSAGES_CURRENT_KEY,
    RHEMA_HS_CLUSTER_IS_LEADER,
    RHEMA_HS_CLUSTER_HAS_LEADER,
    RHEMA_HS_CLUSTER_EPOCH,
    RHEMA_HS_CLUSTER_NODES_ONLINE,
    RHEMA_HS_CLUSTER_NODES_OFFLINE,
    RHEMA_HS_SERVICES_HEALTHY,
    RHEMA_HS_SERVICES_NOT_HEALTHY,
    RHEMA_HS_PROCESS_CPU_PERCENT, /* of one core, over the interval */
    RHEMA_HS_PROCESS_RESIDENT_BYTES,
    RHEMA_HISTORY_SERIES
};

/* The series' names ("request_rate" ...) and units ("1/s", "ms", ...); NULL past the end. */
const char *rhema_history_series_name(unsigned i);
const char *rhema_history_series_unit(unsigned i);
/* The index of a series by name, or -1. */
int rhema_history_series_find(const char *name, size_t len);

struct rhema_history;

/*
 * Read the settings and allocate the ring (monitoring.enabled false: *out
 * is NULL and nothing samples).  In storage mode, connect to the backend
 * and load the stored samples of this node within the retention.  0, or a
 * negative code and *err (malloc'd).  Main thread, after the cluster
 * started (the node id) and before the workers.
 */
int rhema_history_open(struct rhema_server *srv, struct rhema_history **out, char **err);
/* Take a sample every interval on base (the main thread's). */
int rhema_history_start(struct rhema_history *h, struct event_base *base);
/* Take one sample now (what the timer runs). */
void rhema_history_sample(struct rhema_history *h);
/* Stop the timer, disconnect, free.  NULL is a no-op.  After the workers stopped. */
void rhema_history_close(struct rhema_history *h);

/*
 * The answer of GET /v1/stats/history: the samples taken after since_ms
 * (0: all), at most limit (0: no limit; the newest are kept), with the
 * series whose bits are set in mask (bit i: series i).  A new reference.
 */
json_t *rhema_history_json(struct rhema_history *h, uint64_t since_ms, size_t limit, uint64_t mask);

#endif /* RHEMA_CORE_METRICS_HISTORY_H */
