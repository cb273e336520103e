/*
 * pipeline -- what happens to a request, from accept to reply.
 *
 *   accept          http.c: one evhttp per worker on the shared socket;
 *                   the request id, the decoded path and query
 *   size limit      http.c: evhttp refuses a body over
 *                   service.max_request_size_bytes with 413 before it is read
 *   (TLS)           issue 9: before the request is parsed, in http.c
 *   origin          http.c: a POST/PUT/DELETE from a browser page whose
 *                   Origin service.cors.origins does not allow is 403
 *   authenticate    issue 9: API key or client certificate -> a principal
 *   route           routes.c: the route tables below; 404, 400 (path id),
 *                   405 and OPTIONS end here
 *   authorize       issue 9: the route's permission against the principal
 *   rate limit      issue 10: per principal, in the storage backend
 *   fence           every route declared as a write: X-Rhema-Epoch older
 *                   than the cluster's epoch is 409 fenced (DESIGN.md §7)
 *   storage limit   a PUT/POST that writes storage: 507 past
 *                   persistence.max_data_size_bytes
 *   handler         the route's handler: validate, store, reply (api_*.c);
 *                   a session write may be answered later (api_sessions.c)
 *   reply           http.c: headers, CORS, access log
 *   metrics, audit  issue 11: after the reply, from r->route and r->status
 *
 * The stages that later issues add are named above and have a place in
 * rhema_pipeline_run(); none exists yet, and nothing pretends to run them.
 */
#include "rhema_build.h"

#include <stdint.h>
#include <stdio.h>

#include <event2/buffer.h>

#include "api_agents.h"
#include "api_cluster.h"
#include "api_consensus.h"
#include "api_keys.h"
#include "api_operations.h"
#include "api_services.h"
#include "api_sessions.h"
#include "maintenance.h"
#include "pipeline.h"
#include "routes.h"

/* The route tables, in matching order (a literal path before a {param} at its place). */
const struct rhema_route *const rhema_api_routes[] = {
    rhema_operations_routes, rhema_sessions_routes, rhema_consensus_routes,
    rhema_cluster_routes,    rhema_agents_routes,   rhema_services_routes,
    rhema_keys_routes,       NULL,
};

/*
 * persistence.max_data_size_bytes: a PUT/POST that would store past it is
 * 507 before its handler runs, so it changes nothing; DELETE always passes.
 * Accepted bodies are added to the gauge until its next refresh.
 */
static int over_storage_limit(struct rhema_req *r)
{
    struct rhema_maintenance *m = r->worker->srv->maintenance;
    size_t incoming;
    if (!m || (r->method != EVHTTP_REQ_PUT && r->method != EVHTTP_REQ_POST &&
               r->method != EVHTTP_REQ_PATCH))
        return 0;
    incoming = evbuffer_get_length(evhttp_request_get_input_buffer(r->req));
    if (!rhema_maintenance_over_limit(m, incoming)) {
        rhema_maintenance_account(m, (int64_t)incoming);
        return 0;
    }
    rhema_reply_error(r, 507, "insufficient_storage",
                      "storing %zu more bytes would exceed persistence.max_data_size_bytes "
                      "(%lld); delete data or raise the limit",
                      incoming, (long long)r->worker->srv->cfg->max_data_size_bytes);
    return 1;
}

void rhema_pipeline_run(struct rhema_req *r)
{
    const struct rhema_route *rt;
    if (rhema_cross_origin_refused(r))
        return;
    /* authenticate (issue 9) goes here */
    if (!(rt = rhema_route_match(r, rhema_api_routes)))
        return;
    /* authorize rt->permission (issue 9), then rate limit (issue 10), go here */
    if (rt->effect != RHEMA_READS && rhema_cluster_fence(r))
        return;
    if (rt->effect == RHEMA_WRITES_STORAGE && over_storage_limit(r))
        return;
    rt->handler(r);
    /* metrics and audit (issue 11) go here: r->route, r->status */
}

int rhema_api_start(struct rhema_server *srv, char **err)
{
    int rc = rhema_routes_check(rhema_api_routes, err);
    if (rc)
        return rc;
    return rhema_http_start(srv, rhema_pipeline_run, err);
}

void rhema_api_stop(struct rhema_server *srv) { rhema_http_stop(srv); }
