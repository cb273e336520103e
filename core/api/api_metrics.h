/*
 * api_metrics -- GET /metrics (monitoring.metrics_path): the Prometheus
 * exposition of core/metrics/, and the counting of every reply.
 *
 *   GET /metrics    text format 0.0.4, or OpenMetrics 1.0.0 when Accept
 *                   asks for application/openmetrics-text
 *
 * The route's template is "/metrics"; with another monitoring.metrics_path
 * the path stage below serves that path through the same route (and
 * "/metrics" is then 404), so the role matrix, open_routes and the route's
 * metrics label all say "/metrics".
 */
#ifndef RHEMA_CORE_API_METRICS_H
#define RHEMA_CORE_API_METRICS_H

#include "routes.h"

extern const struct rhema_route rhema_metrics_routes[];

/*
 * Read monitoring.* and, when enabled, open the counters (one block per
 * worker) with a slot per route template of tables.  Before the workers
 * start.  0, or a negative code and *err (malloc'd).
 */
int rhema_api_metrics_open(struct rhema_server *srv, const struct rhema_route *const *tables,
                           char **err);
/* Free the counters: after every thread that counts (workers, committer,
 * maintenance, cluster, services) stopped (main.c, at the end). */
void rhema_api_metrics_close(void);
/* Refuse a monitoring.metrics_path that could shadow an API route. */
int rhema_api_metrics_check(const struct rhema_config *cfg, char **err);

/*
 * The pipeline's metrics path stage, before the router: with a
 * metrics_path other than "/metrics" that path is routed as "/metrics",
 * and "/metrics" itself, or any metrics path while monitoring is off, is
 * 404.  1 when it answered, 0 to go on.
 */
int rhema_api_metrics_path(struct rhema_req *r);

/*
 * The exposition GET /metrics answers (text format), into e: for the alert
 * engine (core/metrics/monitor.c), from any thread with its own storage connection
 * (conn may be NULL: the families that read storage are left out).  0, or
 * RHEMA_EINVAL when monitoring is off, RHEMA_ENOMEM.
 */
struct rhema_expo;
int rhema_api_metrics_text(struct rhema_server *srv, rhema_storage_conn *conn,
                           struct rhema_expo *e);

/* Count r's reply (http.c, as it is sent): its route, method, status and duration. */
void rhema_api_metrics_reply(struct rhema_req *r);

#endif /* RHEMA_CORE_API_METRICS_H */
