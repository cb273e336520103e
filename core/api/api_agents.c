/*
 * api_agents -- HTTP handlers of agents, system metrics and configurations.
 * See api_agents.h for the routes and agents.h for what they store.
 */
#include "rhema_build.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <event2/buffer.h>

#include "agents.h"
#include "api_agents.h"
#include "api_events.h"
#include "conditional.h"
#include "json_fields.h"
#include "query.h"
#include "util.h"

static uint64_t heartbeat_timeout_ms(struct rhema_req *r)
{
    int64_t v = RHEMA_AGENT_TIMEOUT_DEFAULT_S;
    if (rhema_config_get_int(r->worker->srv->cfg,
                             "ai_service.agent_management.agent_timeout_seconds", &v) != 0 ||
        v <= 0)
        v = RHEMA_AGENT_TIMEOUT_DEFAULT_S;
    return (uint64_t)v * 1000u;
}

/* Current versions, for the preconditions that need them (conditional.h). */
static int agent_version(struct rhema_req *r, uint64_t *version, char err[RHEMA_ERRMSG_MAX])
{
    struct rhema_record rec = {0};
    int rc = rhema_agent_get(&r->worker->store, r->param, heartbeat_timeout_ms(r), &rec, err);
    *version = rec.version;
    rhema_record_release(&rec);
    return rc;
}

static int metrics_version(struct rhema_req *r, uint64_t *version, char err[RHEMA_ERRMSG_MAX])
{
    struct rhema_record rec = {0};
    int rc = rhema_system_metrics_get(&r->worker->store, &rec, err);
    *version = rec.version;
    rhema_record_release(&rec);
    return rc;
}

static int config_version(struct rhema_req *r, uint64_t *version, char err[RHEMA_ERRMSG_MAX])
{
    struct rhema_record rec = {0};
    int rc = rhema_configuration_get(&r->worker->store, r->param, 0, &rec, err);
    *version = rec.version;
    rhema_record_release(&rec);
    return rc;
}

static const char *const list_params[] = {"limit", "cursor", NULL};

/* ---- agents ---- */

static void h_agent_list(struct rhema_req *r)
{
    static const char *const known[] = {"status", "capability", "limit", "cursor", NULL};
    char err[RHEMA_ERRMSG_MAX];
    const char *cursor;
    size_t limit;
    if (rhema_query_list(r, known, &limit, &cursor))
        return;
    char *text = NULL;
    size_t len = 0;
    int rc = rhema_agent_list(&r->worker->store, evhttp_find_header(&r->query, "status"),
                              evhttp_find_header(&r->query, "capability"), limit, cursor,
                              heartbeat_timeout_ms(r), &text, &len, err);
    rhema_reply_store_json(r, rc, text, len, err);
}

static void h_agent_stats(struct rhema_req *r)
{
    char err[RHEMA_ERRMSG_MAX];
    if (rhema_query_check(r, NULL))
        return;
    char *text = NULL;
    size_t len = 0;
    int rc = rhema_agent_stats(&r->worker->store, heartbeat_timeout_ms(r), &text, &len, err);
    rhema_reply_store_json(r, rc, text, len, err);
}

static int agent_get_answer(struct rhema_req *r, int final, uint64_t *recheck_ms)
{
    char err[RHEMA_ERRMSG_MAX];
    struct rhema_record rec = {0};
    (void)final, (void)recheck_ms;
    int rc = rhema_agent_get(&r->worker->store, r->param, heartbeat_timeout_ms(r), &rec, err);
    if (rc) {
        rhema_reply_store_error(r, rc, err);
        return 1;
    }
    rhema_reply_record(r, 200, &rec);
    return 1;
}

/*
 * GET, and its blocking query (issue 12, item 2, as a session's:
 * api_events.h): ?index=&wait= answers on the agent's next agent.* event
 * (a change, a heartbeat, a transition, its deletion: 404).
 */
static void h_agent_get(struct rhema_req *r)
{
    struct rhema_events_filter f = {.types = "agent.", .id = r->param};
    rhema_events_resource_get(r, &f, agent_version, agent_get_answer);
}

static void h_agent_put(struct rhema_req *r)
{
    const char *id = r->param;
    char err[RHEMA_ERRMSG_MAX];
    uint64_t if_match;
    struct rhema_record rec = {0};
    json_t *agent = NULL;
    int created = 0;
    if (rhema_query_check(r, NULL) || rhema_preconditions(r, agent_version, &if_match) != 0)
        return;
    json_t *body = rhema_req_json(r);
    if (!body)
        return;
    int rc = rhema_agent_validate(body, id, &agent, err);
    json_decref(body);
    if (!rc)
        rc = rhema_agent_put(&r->worker->store, id, agent, if_match, heartbeat_timeout_ms(r), &rec,
                             &created, err);
    json_decref(agent);
    if (rc == RHEMA_EAGENT_LIMIT) {
        rhema_reply_error(r, 409, "agent_limit", "%s", err);
        return;
    }
    if (rc) {
        rhema_reply_store_error(r, rc, err);
        return;
    }
    if (created) {
        char loc[RHEMA_ID_MAX + 32];
        snprintf(loc, sizeof loc, "/v1/agents/%s", id);
        rhema_header(r, "Location", loc);
    }
    rhema_reply_record(r, created ? 201 : 200, &rec);
}

/*
 * PATCH: an RFC 7396 merge patch of the agent, validated as a PUT body and
 * written on the condition that the agent is still at the version read.
 * is_online and last_heartbeat come from heartbeats: the merged body
 * carries them only when the patch names them, so the stored ones stay.
 */
static void h_agent_patch(struct rhema_req *r)
{
    static const char *const heartbeat_owned[] = {"is_online", "last_heartbeat", NULL};
    const char *id = r->param;
    char err[RHEMA_ERRMSG_MAX];
    uint64_t if_match;
    struct rhema_record rec = {0};
    json_t *body = NULL, *cur = NULL, *merged = NULL, *agent = NULL;
    int created = 0, rc;
    if (!rhema_req_media_type(r, "application/merge-patch+json")) {
        rhema_reply_error(r, 415, "unsupported_media_type",
                          "PATCH takes Content-Type: application/merge-patch+json (RFC 7396)");
        return;
    }
    if (rhema_query_check(r, NULL) || rhema_preconditions(r, agent_version, &if_match) != 0)
        return;
    if (!(body = rhema_req_json(r)))
        return;
    if (!json_is_object(body)) {
        rhema_reply_error(r, 400, "invalid_field", "body: expected a JSON object (a merge patch)");
        goto out;
    }
    if ((rc = rhema_agent_get(&r->worker->store, id, heartbeat_timeout_ms(r), &rec, err))) {
        rhema_reply_store_error(r, rc, err);
        goto out;
    }
    if (RHEMA_IF_MATCH_VERSION(if_match) && if_match != rec.version) {
        rhema_reply_error(r, 412, "precondition_failed",
                          "agent '%s' is at version %llu, not %llu (If-Match)", id,
                          (unsigned long long)rec.version, (unsigned long long)if_match);
        goto out;
    }
    if_match = rec.version;
    if (!(cur = rhema_json_loadb(rec.json, rec.len, 0, NULL))) {
        rhema_reply_error(r, 500, "internal", "agent '%s': the stored record does not parse", id);
        goto out;
    }
    rhema_record_release(&rec);
    for (const char *const *k = heartbeat_owned; *k; k++)
        if (!json_object_get(body, *k))
            json_object_del(cur, *k);
    if (!(merged = rhema_json_merge_patch(cur, body))) {
        rhema_reply_error(r, 500, "internal", "out of memory");
        goto out;
    }
    rc = rhema_agent_validate(merged, id, &agent, err);
    if (!rc)
        rc = rhema_agent_put(&r->worker->store, id, agent, if_match, heartbeat_timeout_ms(r), &rec,
                             &created, err);
    if (rc) {
        rhema_reply_store_error(r, rc, err);
        goto out;
    }
    rhema_reply_record(r, 200, &rec);
out:
    rhema_record_release(&rec);
    json_decref(agent);
    json_decref(merged);
    json_decref(cur);
    json_decref(body);
}

static void h_agent_delete(struct rhema_req *r)
{
    const char *id = r->param;
    char err[RHEMA_ERRMSG_MAX];
    uint64_t if_match;
    if (rhema_query_check(r, NULL) || rhema_preconditions(r, agent_version, &if_match) != 0)
        return;
    int rc = rhema_agent_delete(&r->worker->store, id, if_match, err);
    if (rc) {
        rhema_reply_store_error(r, rc, err);
        return;
    }
    rhema_reply_empty(r, 204);
}

static void h_agent_transitions(struct rhema_req *r)
{
    const char *id = r->param;
    char err[RHEMA_ERRMSG_MAX];
    const char *cursor;
    size_t limit;
    if (rhema_query_list(r, list_params, &limit, &cursor))
        return;
    char *text = NULL;
    size_t len = 0;
    int rc = rhema_agent_transitions(&r->worker->store, id, limit, cursor, &text, &len, err);
    rhema_reply_store_json(r, rc, text, len, err);
}

static void h_agent_heartbeat(struct rhema_req *r)
{
    const char *id = r->param;
    char err[RHEMA_ERRMSG_MAX];
    uint64_t if_match;
    struct rhema_record rec = {0};
    json_t *body = NULL, *hb = NULL;
    if (rhema_query_check(r, NULL) || rhema_preconditions(r, agent_version, &if_match) != 0)
        return;
    if (evbuffer_get_length(evhttp_request_get_input_buffer(r->req)) > 0 &&
        !(body = rhema_req_json(r)))
        return;
    int rc = rhema_agent_heartbeat_validate(body, &hb, err);
    json_decref(body);
    if (!rc)
        rc = rhema_agent_heartbeat(&r->worker->store, id, hb, if_match, heartbeat_timeout_ms(r),
                                   &rec, err);
    json_decref(hb);
    if (rc) {
        rhema_reply_store_error(r, rc, err);
        return;
    }
    rhema_reply_record(r, 200, &rec);
}

/* ---- system metrics ---- */

static void h_metrics_get(struct rhema_req *r)
{
    char err[RHEMA_ERRMSG_MAX];
    struct rhema_record rec = {0};
    if (rhema_query_check(r, NULL))
        return;
    int rc = rhema_system_metrics_get(&r->worker->store, &rec, err);
    if (rc) {
        rhema_reply_store_error(r, rc, err);
        return;
    }
    rhema_reply_record(r, 200, &rec);
}

static void h_metrics_put(struct rhema_req *r)
{
    char err[RHEMA_ERRMSG_MAX];
    uint64_t if_match;
    struct rhema_record rec = {0};
    json_t *metrics = NULL;
    int created = 0;
    if (rhema_query_check(r, NULL) || rhema_preconditions(r, metrics_version, &if_match) != 0)
        return;
    json_t *body = rhema_req_json(r);
    if (!body)
        return;
    int rc = rhema_system_metrics_validate(body, &metrics, err);
    json_decref(body);
    if (!rc)
        rc = rhema_system_metrics_put(&r->worker->store, metrics, if_match, &rec, &created, err);
    json_decref(metrics);
    if (rc) {
        rhema_reply_store_error(r, rc, err);
        return;
    }
    rhema_reply_record(r, created ? 201 : 200, &rec);
}

/* ---- configurations ---- */

static void h_config_get(struct rhema_req *r)
{
    const char *name = r->param;
    static const char *const known[] = {"version", NULL};
    char err[RHEMA_ERRMSG_MAX];
    struct rhema_record rec = {0};
    uint64_t version = 0;
    if (rhema_query_check(r, known) || rhema_query_uint(r, "version", UINT64_MAX - 1, &version))
        return;
    int rc = rhema_configuration_get(&r->worker->store, name, version, &rec, err);
    if (rc) {
        rhema_reply_store_error(r, rc, err);
        return;
    }
    rhema_reply_record(r, 200, &rec);
}

static void h_config_put(struct rhema_req *r)
{
    const char *name = r->param;
    char err[RHEMA_ERRMSG_MAX];
    uint64_t if_match;
    struct rhema_record rec = {0};
    json_t *conf = NULL;
    int created = 0;
    if (rhema_query_check(r, NULL) || rhema_preconditions(r, config_version, &if_match) != 0)
        return;
    json_t *body = rhema_req_json(r);
    if (!body)
        return;
    int rc = rhema_configuration_validate(body, name, &conf, err);
    json_decref(body);
    if (!rc)
        rc = rhema_configuration_put(&r->worker->store, name, conf, if_match, &rec, &created, err);
    json_decref(conf);
    if (rc) {
        rhema_reply_store_error(r, rc, err);
        return;
    }
    if (created) {
        char loc[RHEMA_ID_MAX + 32];
        snprintf(loc, sizeof loc, "/v1/configurations/%s", name);
        rhema_header(r, "Location", loc);
    }
    rhema_reply_record(r, created ? 201 : 200, &rec);
}

static void h_config_delete(struct rhema_req *r)
{
    char err[RHEMA_ERRMSG_MAX];
    uint64_t if_match;
    if (rhema_query_check(r, NULL) || rhema_preconditions(r, config_version, &if_match) != 0)
        return;
    int rc = rhema_configuration_delete(&r->worker->store, r->param, if_match, err);
    if (rc) {
        rhema_reply_store_error(r, rc, err);
        return;
    }
    rhema_reply_empty(r, 204);
}

static void h_config_versions(struct rhema_req *r)
{
    const char *name = r->param;
    char err[RHEMA_ERRMSG_MAX];
    const char *cursor;
    size_t limit;
    if (rhema_query_list(r, list_params, &limit, &cursor))
        return;
    char *text = NULL;
    size_t len = 0;
    int rc = rhema_configuration_versions(&r->worker->store, name, limit, cursor, &text, &len, err);
    rhema_reply_store_json(r, rc, text, len, err);
}

const struct rhema_route rhema_agents_routes[] = {
    {RHEMA_M_GET, "/v1/agents", h_agent_list, "agents:read", RHEMA_READS},
    {RHEMA_M_GET, "/v1/agents/stats", h_agent_stats, "agents:read", RHEMA_READS},
    {RHEMA_M_GET, "/v1/agents/{agent_id}", h_agent_get, "agents:read", RHEMA_READS},
    {RHEMA_M_PUT, "/v1/agents/{agent_id}", h_agent_put, "agents:write", RHEMA_WRITES_STORAGE},
    {RHEMA_M_PATCH, "/v1/agents/{agent_id}", h_agent_patch, "agents:write",
     RHEMA_WRITES_STORAGE},
    {RHEMA_M_DELETE, "/v1/agents/{agent_id}", h_agent_delete, "agents:write",
     RHEMA_WRITES_STORAGE},
    {RHEMA_M_GET, "/v1/agents/{agent_id}/transitions", h_agent_transitions, "agents:read",
     RHEMA_READS},
    {RHEMA_M_POST, "/v1/agents/{agent_id}/heartbeat", h_agent_heartbeat, "agents:write",
     RHEMA_WRITES_STORAGE},
    {RHEMA_M_GET, "/v1/system/metrics", h_metrics_get, "system:read", RHEMA_READS},
    {RHEMA_M_PUT, "/v1/system/metrics", h_metrics_put, "system:write", RHEMA_WRITES_STORAGE},
    {RHEMA_M_GET, "/v1/configurations/{configuration_name}", h_config_get,
     "configurations:read", RHEMA_READS},
    {RHEMA_M_PUT, "/v1/configurations/{configuration_name}", h_config_put,
     "configurations:write", RHEMA_WRITES_STORAGE},
    {RHEMA_M_DELETE, "/v1/configurations/{configuration_name}", h_config_delete,
     "configurations:write", RHEMA_WRITES_STORAGE},
    {RHEMA_M_GET, "/v1/configurations/{configuration_name}/versions", h_config_versions,
     "configurations:read", RHEMA_READS},
    {0},
};
