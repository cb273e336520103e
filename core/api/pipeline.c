/*
 * pipeline -- what happens to a request, from accept to reply.
 *
 *   accept          http.c: one evhttp per worker on the shared socket;
 *                   the request id, the decoded path and query
 *   size limit      http.c: evhttp refuses a body over
 *                   service.max_request_size_bytes with 413 before it is read
 *   TLS             http.c + tls.c: the connection's bufferevent is OpenSSL's
 *   origin          http.c: a POST/PUT/DELETE from a browser page whose
 *                   Origin service.cors.origins does not allow is 403
 *   authenticate    api_auth.c: the API key -> r->principal; a bad, unknown,
 *                   revoked or expired key is 401; without a key, a verified
 *                   client certificate that security.client_certificates
 *                   maps (auth/certmap.c)
 *   route           routes.c: the route tables below; 404, 400 (path id),
 *                   405 and OPTIONS end here
 *   authorize       api_auth.c: the route's permission and security.rules
 *                   against the principal (401 without a key, 403 without
 *                   the permission); with keys off, protected mode
 *   rate limit      limit/ratelimit.c: per API key (per client address
 *                   without one), one atomic GCRA step in the storage
 *                   backend's rate(); RateLimit headers on every reply, 429
 *                   with Retry-After past the limit
 *   audit           audit.c: a route that writes is set aside until its
 *                   "begin" record is durable, and resumes here from the
 *                   worker's mailbox; with security.audit.fail_closed a
 *                   record that cannot be written is 503 and nothing runs
 *   fence           every route declared as a write: X-Rhema-Epoch older
 *                   than the cluster's epoch is 409 fenced (DESIGN.md §7)
 *   storage limit   a PUT/POST that writes storage: 507 past
 *                   persistence.max_data_size_bytes
 *   handler         the route's handler: validate, store, reply (api_*.c);
 *                   a session write may be answered later, a session read
 *                   at the end of the loop turn with the turn's other
 *                   reads (api_sessions.c)
 *   reply           http.c: headers, CORS, access log; then r->on_reply,
 *                   the audit log's "end" record of every request the
 *                   pipeline saw (answered here or later)
 *   metrics         api_metrics.c: every reply is counted as http.c sends it
 *                   (route template, method, status, duration); before the
 *                   router, monitoring.metrics_path is served as /metrics
 */
#include "rhema_build.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <event2/buffer.h>

#include "ai/gateway.h"
#include "ai/usage.h"
#include "api_agents.h"
#include "api_inbox.h"
#include "api_ai.h"
#include "api_auth.h"
#include "api_cluster.h"
#include "api_consensus.h"
#include "api_console.h"
#include "api_keys.h"
#include "api_metrics.h"
#include "api_openapi.h"
#include "api_operations.h"
#include "api_services.h"
#include "api_events.h"
#include "api_sessions.h"
#include "audit.h"
#include "limit/ratelimit.h"
#include "log.h"
#include "maintenance.h"
#include "metrics/health.h"
#include "pipeline.h"
#include "routes.h"
#include "tls.h"

/* The route tables, in matching order (a literal path before a {param} at its place). */
const struct rhema_route *const rhema_api_routes[] = {
    rhema_operations_routes, rhema_sessions_routes, rhema_consensus_routes,
    rhema_cluster_routes,    rhema_agents_routes,   rhema_inbox_routes,    rhema_services_routes,
    rhema_keys_routes,       rhema_auth_routes,     rhema_metrics_routes,
    rhema_console_routes,    rhema_ai_routes,       rhema_openapi_routes,
    rhema_events_routes,     NULL,
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

/* The stages after the audit: fence, storage limit, handler. */
static void run_from_fence(struct rhema_req *r, const struct rhema_route *rt)
{
    if (rt->effect != RHEMA_READS && rhema_cluster_fence(r))
        return;
    if (rt->effect == RHEMA_WRITES_STORAGE && over_storage_limit(r))
        return;
    rt->handler(r);
}

/* r for the audit log (audit.h): a's strings point into r and into peer; valid while r is. */
static void audit_fill(struct rhema_req *r, struct rhema_audit_request *a, char peer[64])
{
    struct evbuffer *in = evhttp_request_get_input_buffer(r->req);
    size_t n = in ? evbuffer_get_length(in) : 0;
    rhema_req_peer(r, peer);
    *a = (struct rhema_audit_request){
        .request_id = r->request_id,
        .key_id = rhema_req_key_id(r),
        .roles = r->principal.roles,
        .client = peer,
        .method = rhema_method_name(r->method),
        .route = r->route ? r->route->path : NULL,
        .param = r->param,
        .body = n ? evbuffer_pullup(in, -1) : NULL,
        .bytes_in = n,
        .status = r->status,
        .bytes_out = r->bytes_out,
    };
}

/* The reply goes out (http.c): the request's end record, whatever stage answered it. */
static void audit_end(struct rhema_req *r)
{
    struct rhema_audit_request a;
    char peer[64];
    audit_fill(r, &a, peer);
    rhema_audit_request_end(&a);
}

static void audit_refuse(struct rhema_req *r, const char *why)
{
    rhema_reply_error(r, 503, "audit_unavailable", "%s; the request was not run", why);
}

/*
 * A write whose begin record is on its way to the disk: the request is
 * deferred, and comes back to its worker through the mailbox once the
 * audit writer has settled the record (group fsync: the worker serves
 * other requests meanwhile).
 */
struct audit_pending {
    struct rhema_audit_wait wait;
    struct rhema_mail mail;
    struct rhema_req *req; /* deferred (rhema_req_defer) */
    int rc;
};

/* On the worker's thread: run the rest of the pipeline, or refuse. */
static void audit_resume(struct rhema_mail *m)
{
    struct audit_pending *p =
        (struct audit_pending *)(void *)((char *)m - offsetof(struct audit_pending, mail));
    struct rhema_req *r = p->req;
    struct rhema_worker *w = r->worker;
    if (p->rc && rhema_audit_fail_closed())
        audit_refuse(r, "the audit record of this request could not be written");
    else
        run_from_fence(r, r->route);
    if (r->status == 0 && !r->deferred) /* a handler that forgot to answer is a bug */
        rhema_reply_error(r, 500, "internal", "no response");
    rhema_req_free(r);
    w->outstanding--;
    free(p);
}

/* On the audit writer's thread: hand the request back to its worker. */
static void audit_settled(struct rhema_audit_wait *aw, int rc)
{
    struct audit_pending *p = (struct audit_pending *)(void *)aw; /* wait is the first member */
    p->rc = rc;
    p->mail.deliver = audit_resume;
    rhema_mailbox_post(&p->req->worker->mailbox, &p->mail);
}

/*
 * The audit stage.  A read goes on at once (refused with 503 while the log
 * cannot be written and fail_closed).  A write goes on only once its begin
 * record is durable: 1 when the request was handed to the audit writer
 * (or refused); 0 to go on now.
 */
static int audit_stage(struct rhema_req *r, const struct rhema_route *rt)
{
    struct rhema_audit_request a;
    struct audit_pending *p;
    struct rhema_req *d;
    char peer[64], why[RHEMA_ERRMSG_MAX];
    if (!rhema_audit_enabled())
        return 0;
    audit_fill(r, &a, peer);
    if (rt->effect != RHEMA_READS && (p = calloc(1, sizeof *p)) != NULL) {
        if ((d = rhema_req_defer(r)) != NULL) {
            p->wait.done = audit_settled;
            p->req = d;
            r->worker->outstanding++;
            if (rhema_audit_request_submit(&a, &p->wait) != 0) {
                p->rc = RHEMA_ENOMEM; /* no record: refused when fail_closed */
                audit_resume(&p->mail);
            }
            return 1;
        }
        free(p);
    }
    if (rhema_audit_request_begin(&a, rt->effect != RHEMA_READS, why) == 0)
        return 0;
    audit_refuse(r, why);
    return 1;
}

void rhema_pipeline_run(struct rhema_req *r)
{
    const struct rhema_route *rt;
    if (rhema_audit_enabled())
        r->on_reply = audit_end; /* every request from here on has its end record */
    if (rhema_cross_origin_refused(r))
        return;
    if (rhema_authenticate(r))
        return;
    if (rhema_api_metrics_path(r) || !(rt = rhema_route_match(r, rhema_api_routes)))
        return;
    if (rhema_authorize(r, rt))
        return;
    if (rhema_rate_limit(r, rt))
        return;
    if (audit_stage(r, rt))
        return;
    run_from_fence(r, rt); /* its reply is counted by http.c (api_metrics.h), deferred or not */
}

int rhema_api_start(struct rhema_server *srv, char **err)
{
    int rc = rhema_routes_check(rhema_api_routes, err);
    if (rc || (rc = rhema_api_metrics_open(srv, rhema_api_routes, err)) != 0)
        return rc;
    if ((rc = rhema_auth_open(srv, rhema_api_routes, err)) != 0) {
        rhema_api_metrics_close();
        return rc;
    }
    if ((rc = rhema_limits_open(srv, err)) != 0) {
        rhema_auth_close(srv);
        rhema_api_metrics_close();
        return rc;
    }
    srv->watchers_drain = rhema_events_drain;
    srv->watchers_release = rhema_events_worker_release;
    srv->reads_release = rhema_session_reads_release;
    if ((rc = rhema_ai_new(srv->cfg, srv->plugins, &srv->ai, err)) != 0 ||
        (rc = rhema_ai_usage_open(srv, err)) != 0 ||
        (rc = rhema_http_start(srv, rhema_pipeline_run, err)) != 0) {
        rhema_ai_usage_close(srv);
        rhema_ai_free(srv->ai);
        srv->ai = NULL;
        rhema_limits_close(srv);
        rhema_auth_close(srv);
        rhema_api_metrics_close();
        return rc;
    }
    /* issue 11: the components of GET /health these add */
    rhema_ai_health_register(srv->ai, srv->health);
    if (rhema_tls_enabled() && srv->health &&
        rhema_health_register(srv->health, "tls", rhema_tls_health, NULL) != 0)
        rhema_log(RHEMA_LOG_WARN, "main", "no GET /health component for TLS (out of memory)");
    return 0;
}

int rhema_api_check(const struct rhema_config *cfg, char **err)
{
    int rc = rhema_api_metrics_check(cfg, err);
    if (rc == 0)
        rc = rhema_auth_check(cfg, rhema_api_routes, err);
    if (rc == 0)
        rc = rhema_limits_check(cfg, err);
    return rc ? rc : rhema_ai_usage_check_config(cfg, err);
}

int rhema_api_reload_needs_restart(const struct rhema_config *old, const struct rhema_config *neu)
{
    return rhema_auth_settings_changed(old, neu) || rhema_limits_settings_changed(old, neu);
}

void rhema_api_stop(struct rhema_server *srv)
{
    rhema_http_stop(srv);
    rhema_ai_health_unregister(srv->ai, srv->health);
    if (srv->health)
        rhema_health_unregister(srv->health, "tls");
    rhema_ai_usage_close(srv);
    rhema_ai_free(srv->ai); /* after the workers, which released their exchanges */
    srv->ai = NULL;
    rhema_limits_close(srv);
    rhema_auth_close(srv);
    /* the counters stay until rhema_api_metrics_close(): other threads still call storage */
}
