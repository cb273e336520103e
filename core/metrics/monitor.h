/*
 * monitor -- the monitoring thread: it evaluates the alert rules
 * (alerts.h) every monitoring.alerts.evaluation_interval_seconds from the
 * in-process counters, refreshes the per-namespace storage counts of
 * GET /v1/stats every monitoring.stats_refresh_seconds, and sends the
 * webhook notifications (monitoring.alerts.webhook_url) from a notifier
 * thread of its own, so that neither a slow storage nor a dead webhook ever
 * delays a worker.
 *
 * The notifier keeps a bounded queue (monitoring.alerts.webhook_queue_size;
 * when full the oldest is dropped, and counted) and POSTs each payload with
 * libcurl, retrying a failure (no answer, or a status other than 2xx) with
 * a doubling backoff (1 s, 2 s, 4 s ... at most 60 s) up to
 * monitoring.alerts.webhook_max_retries times.
 *
 * Lifecycle (main thread): rhema_monitor_start() before the workers, which
 * read srv->alerts and rhema_monitor_namespaces_json(), rhema_monitor_run()
 * once they run; rhema_monitor_stop()
 * after they stopped, before the cluster (the thread asks it who leads).
 */
#ifndef RHEMA_CORE_MONITOR_H
#define RHEMA_CORE_MONITOR_H

#include <stdint.h>

#include <jansson.h>

#include "server.h"

struct rhema_expo;
struct rhema_monitor;

/* Writes the exposition of GET /metrics (api_metrics.h: rhema_api_metrics_text). */
typedef int rhema_monitor_expo_fn(struct rhema_server *srv, rhema_storage_conn *conn,
                                  struct rhema_expo *e);

/*
 * Make the alert engine (srv->alerts) from the configuration: before the
 * workers start, which read it.  With monitoring.enabled false *out is
 * NULL.  0, or a code and *err (a rule the configuration got wrong names
 * its key).
 */
int rhema_monitor_start(struct rhema_server *srv, rhema_monitor_expo_fn *expo,
                        struct rhema_monitor **out, char **err);
/* Start the threads: after the counters of GET /metrics are open (rhema_api_start). */
int rhema_monitor_run(struct rhema_monitor *m, char **err);
/* Stop the threads (an unsent notification is dropped, and logged), free srv->alerts. */
void rhema_monitor_stop(struct rhema_monitor *m);

/*
 * The per-namespace counts of the last refresh, grouped as doc/http-api.md
 * says: {"refreshed_at", "refresh_interval_seconds", "namespaces": {...}};
 * NULL m: null "refreshed_at", no namespaces.  Any thread.
 */
json_t *rhema_monitor_namespaces_json(struct rhema_monitor *m);

/* The notifier's counts since start (GET /metrics). */
struct rhema_monitor_notify_stats {
    uint64_t sent, failed_attempts, given_up, dropped, queued;
};
void rhema_monitor_notify_stats(struct rhema_monitor *m, struct rhema_monitor_notify_stats *out);

/* The derived values of the node (alerts.h), for tests: /proc/stat, /proc/meminfo. */
int rhema_monitor_memory_percent(double *out);

#endif /* RHEMA_CORE_MONITOR_H */
