/*
 * api_services -- HTTP handlers of the service registry (see api_services.h).
 */
#include "rhema_build.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <event2/buffer.h>

#include "api_events.h"
#include "api_services.h"
#include "conditional.h"
#include "query.h"
#include "services.h"
#include "util.h"

static struct rhema_services *module(struct rhema_req *r)
{
    struct rhema_services *s = r->worker->srv->services;
    if (!s)
        rhema_reply_error(r, 503, "unavailable", "the service registry is not running");
    return s;
}

/* The instance's current version, for the preconditions that need it (conditional.h). */
static int service_version(struct rhema_req *r, uint64_t *version, char err[RHEMA_ERRMSG_MAX])
{
    struct rhema_record rec = {0};
    int rc = rhema_service_get(&r->worker->store, r->param,
                               rhema_services_checks_enabled(r->worker->srv->services), &rec, err);
    *version = rec.version;
    rhema_record_release(&rec);
    return rc;
}

static void h_list(struct rhema_req *r)
{
    struct rhema_services *s = module(r); /* 503 while the registry is not running */
    if (!s)
        return;
    static const char *const known[] = {"name", "limit", "cursor", NULL};
    char err[RHEMA_ERRMSG_MAX];
    const char *cursor;
    size_t limit;
    char *text = NULL;
    size_t len = 0;
    if (rhema_query_list(r, known, &limit, &cursor))
        return;
    int rc = rhema_service_list(&r->worker->store, evhttp_find_header(&r->query, "name"), limit,
                                cursor, rhema_services_checks_enabled(s), &text, &len, err);
    rhema_reply_store_json(r, rc, text, len, err);
}

static int service_get_answer(struct rhema_req *r, int final, uint64_t *recheck_ms)
{
    char err[RHEMA_ERRMSG_MAX];
    struct rhema_record rec = {0};
    (void)final, (void)recheck_ms;
    int rc = rhema_service_get(&r->worker->store, r->param,
                               rhema_services_checks_enabled(r->worker->srv->services), &rec, err);
    if (rc) {
        rhema_reply_store_error(r, rc, err);
        return 1;
    }
    rhema_reply_record(r, 200, &rec);
    return 1;
}

/*
 * GET, and its blocking query (issue 12, item 2, as a session's:
 * api_events.h): ?index=&wait= answers on the instance's next service.*
 * event (registered, updated, health, deregistered: 404).
 */
static void h_get(struct rhema_req *r)
{
    if (!module(r)) /* 503 while the registry is not running */
        return;
    struct rhema_events_filter f = {.types = "service.", .id = r->param};
    rhema_events_resource_get(r, &f, service_version, service_get_answer);
}

static void h_put(struct rhema_req *r)
{
    const char *id = r->param;
    struct rhema_services *s = module(r); /* 503 while the registry is not running */
    if (!s)
        return;
    char err[RHEMA_ERRMSG_MAX], old_name[RHEMA_ID_MAX + 1] = "";
    struct rhema_check_defaults d;
    struct rhema_record rec = {0};
    uint64_t if_match;
    json_t *body, *svc = NULL;
    int created = 0, rc;
    if (rhema_query_check(r, NULL) || rhema_preconditions(r, service_version, &if_match) != 0)
        return;
    if (!(body = rhema_req_json(r)))
        return;
    rhema_check_defaults_get(r->worker->srv->cfg, &d);
    rc = rhema_service_validate(body, id, &d, s, &svc, err);
    json_decref(body);
    if (!rc && json_is_object(json_object_get(svc, "check")))
        rc = rhema_services_admit_check(s, id, json_string_value(json_object_get(svc, "name")),
                                        json_string_value(json_object_get(svc, "address")),
                                        json_object_get(svc, "check"), err);
    if (!rc)
        rc = rhema_service_put(&r->worker->store, id, svc, if_match,
                               rhema_services_checks_enabled(s), &rec, &created, old_name, err);
    if (!rc) {
        rhema_services_refresh_name(s, &r->worker->store,
                                    json_string_value(json_object_get(svc, "name")));
        if (*old_name)
            rhema_services_refresh_name(s, &r->worker->store, old_name);
    }
    json_decref(svc);
    if (rc) {
        rhema_reply_store_error(r, rc, err);
        return;
    }
    if (created) {
        char loc[RHEMA_ID_MAX + 32];
        snprintf(loc, sizeof loc, "/v1/services/%s", id);
        rhema_header(r, "Location", loc);
    }
    rhema_reply_record(r, created ? 201 : 200, &rec);
}

static void h_delete(struct rhema_req *r)
{
    const char *id = r->param;
    struct rhema_services *s = module(r); /* 503 while the registry is not running */
    if (!s)
        return;
    char err[RHEMA_ERRMSG_MAX], name[RHEMA_ID_MAX + 1] = "";
    uint64_t if_match;
    int rc;
    if (rhema_query_check(r, NULL) || rhema_preconditions(r, service_version, &if_match) != 0)
        return;
    rc = rhema_service_delete(&r->worker->store, id, if_match, name, err);
    if (rc) {
        rhema_reply_store_error(r, rc, err);
        return;
    }
    if (*name)
        rhema_services_refresh_name(s, &r->worker->store, name);
    rhema_reply_empty(r, 204);
}

static void h_select(struct rhema_req *r)
{
    const char *name = r->param;
    struct rhema_services *s = module(r); /* 503 while the registry is not running */
    if (!s)
        return;
    static const char *const known[] = {"key", NULL};
    struct rhema_pick_ctx ctx = {.size = sizeof ctx};
    struct rhema_selection sel;
    const char *key, *peer = NULL;
    ev_uint16_t port = 0;
    char *host = NULL;
    int rc;
    if (rhema_query_check(r, known))
        return;
    key = evhttp_find_header(&r->query, "key");
    evhttp_connection_get_peer(evhttp_request_get_connection(r->req), &host, &port);
    peer = host;
    ctx.client_addr = peer;
    if (key) {
        ctx.key = key;
        ctx.key_len = strlen(key);
    }
    rc = rhema_services_select(s, name, &ctx, &sel);
    if (rc == RHEMA_ENOTFOUND) {
        rhema_reply_error(r, 404, "not_found", "no service named '%s'", name);
        return;
    }
    if (rc) {
        rhema_reply_error(r, 503, "unavailable", "no healthy instance of '%s'", name);
        return;
    }
    rhema_reply_jsonv(r, 200,
                      json_pack("{s:s,s:s,s:s,s:s}", "service_id", sel.service_id, "address",
                                sel.address, "name", name, "strategy", sel.strategy));
}

static void h_pass(struct rhema_req *r)
{
    const char *id = r->param;
    if (!module(r)) /* 503 while the registry is not running */
        return;
    char err[RHEMA_ERRMSG_MAX];
    int rc;
    if (rhema_query_check(r, NULL))
        return;
    rc = rhema_service_pass(&r->worker->store, id, err);
    if (rc) {
        rhema_reply_store_error(r, rc, err);
        return;
    }
    rhema_reply_empty(r, 204);
}

static void h_feedback(struct rhema_req *r)
{
    const char *id = r->param;
    struct rhema_services *s = module(r); /* 503 while the registry is not running */
    if (!s)
        return;
    static const char *const fields[] = {"latency_ms", "ok", NULL};
    json_t *body, *lat, *ok, *v;
    const char *key;
    double ms;
    int rc;
    if (rhema_query_check(r, NULL) || !(body = rhema_req_json(r)))
        return;
    if (!json_is_object(body)) {
        json_decref(body);
        rhema_reply_error(r, 400, "invalid_field", "body: expected a JSON object");
        return;
    }
    json_object_foreach(body, key, v)
    {
        int known = 0;
        for (const char *const *f = fields; *f; f++)
            known |= strcmp(key, *f) == 0;
        if (!known) {
            rhema_reply_error(r, 400, "invalid_field", "field '%s': unknown field", key);
            json_decref(body);
            return;
        }
    }
    lat = json_object_get(body, "latency_ms");
    ok = json_object_get(body, "ok");
    if (!json_is_number(lat) || !isfinite(json_number_value(lat)) ||
        json_number_value(lat) < 0 || json_number_value(lat) > 86400000.0) {
        json_decref(body);
        rhema_reply_error(r, 400, "invalid_field",
                          "field 'latency_ms': expected a number from 0 to 86400000");
        return;
    }
    if (ok && !json_is_boolean(ok)) {
        json_decref(body);
        rhema_reply_error(r, 400, "invalid_field", "field 'ok': expected true or false");
        return;
    }
    ms = json_number_value(lat);
    rc = rhema_services_feedback(s, id, (uint64_t)(ms * 1e6), !ok || json_is_true(ok));
    json_decref(body);
    if (rc) {
        rhema_reply_error(r, 404, "not_found", "service '%s' not found", id);
        return;
    }
    rhema_reply_empty(r, 204);
}

const struct rhema_route rhema_services_routes[] = {
    {RHEMA_M_GET, "/v1/services", h_list, "services:read", RHEMA_READS},
    {RHEMA_M_GET, "/v1/services/{service_id}", h_get, "services:read", RHEMA_READS},
    {RHEMA_M_PUT, "/v1/services/{service_id}", h_put, "services:write", RHEMA_WRITES_STORAGE},
    {RHEMA_M_DELETE, "/v1/services/{service_id}", h_delete, "services:write",
     RHEMA_WRITES_STORAGE},
    /* {service_id} is the service's name here; one template keeps one segment name */
    {RHEMA_M_GET, "/v1/services/{service_id}/select", h_select, "services:read", RHEMA_READS},
    {RHEMA_M_POST, "/v1/services/{service_id}/pass", h_pass, "services:write",
     RHEMA_WRITES_STORAGE},
    {RHEMA_M_POST, "/v1/services/{service_id}/feedback", h_feedback, "services:write",
     RHEMA_WRITES},
    {0},
};
