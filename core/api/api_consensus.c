/*
 * api_consensus -- HTTP handlers of the consensus store (see api_consensus.h
 * for the routes and consensus.h for the semantics).
 */
#include "rhema_build.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "api_consensus.h"
#include "conditional.h"
#include "query.h"
#include "consensus.h"
#include "util.h"

#define INDEX_PARAM_MAX ((uint64_t)INT64_MAX)

/* The node's state version, for the preconditions that need it (conditional.h). */
static int state_version(struct rhema_req *r, uint64_t *version, char err[RHEMA_ERRMSG_MAX])
{
    struct rhema_record rec = {0};
    int rc = rhema_consensus_state_get(&r->worker->store, r->param, &rec, err);
    *version = rec.version;
    rhema_record_release(&rec);
    return rc;
}

/* ---- handlers ---- */

static void h_list(struct rhema_req *r)
{
    static const char *const known[] = {"limit", "cursor", NULL};
    char err[RHEMA_ERRMSG_MAX], *text = NULL;
    size_t len = 0;
    uint64_t limit = RHEMA_LIST_LIMIT_DEFAULT;
    if (rhema_query_check(r, known) || rhema_query_uint(r, "limit", RHEMA_LIST_LIMIT_MAX, &limit))
        return;
    int rc = rhema_consensus_list(&r->worker->store, (size_t)limit,
                                  evhttp_find_header(&r->query, "cursor"), &text, &len, err);
    if (rc) {
        rhema_reply_store_error(r, rc, err);
        return;
    }
    rhema_reply_json(r, 200, text, len);
    free(text);
}

static void h_state_get(struct rhema_req *r)
{
    const char *node = r->param;
    char err[RHEMA_ERRMSG_MAX];
    struct rhema_record rec = {0};
    if (rhema_query_check(r, NULL))
        return;
    int rc = rhema_consensus_state_get(&r->worker->store, node, &rec, err);
    if (rc) {
        rhema_reply_store_error(r, rc, err);
        return;
    }
    rhema_reply_record(r, 200, &rec); /* 304 for a current If-None-Match */
}

static void h_state_put(struct rhema_req *r)
{
    const char *node = r->param;
    char err[RHEMA_ERRMSG_MAX];
    uint64_t if_match;
    json_t *body, *state = NULL;
    struct rhema_record rec = {0};
    int created = 0;
    if (rhema_query_check(r, NULL) || rhema_preconditions(r, state_version, &if_match) != 0)
        return;
    if (!(body = rhema_req_json(r)))
        return;
    int rc = rhema_consensus_state_validate(body, node, &state, err);
    json_decref(body);
    if (rc == 0)
        rc = rhema_consensus_state_put(&r->worker->store, node, state, if_match, &rec, &created,
                                       err);
    json_decref(state);
    if (rc) {
        rhema_reply_store_error(r, rc, err);
        return;
    }
    if (created) {
        char loc[RHEMA_ID_MAX + 40];
        snprintf(loc, sizeof loc, "/v1/consensus/%s/state", node);
        rhema_header(r, "Location", loc);
    }
    rhema_reply_record(r, created ? 201 : 200, &rec);
}

static void h_entries_post(struct rhema_req *r)
{
    const char *node = r->param;
    char err[RHEMA_ERRMSG_MAX];
    json_t *body, *entries = NULL;
    struct rhema_record rec = {0};
    struct rhema_consensus_append_result res = {0};
    if (rhema_query_check(r, NULL))
        return;
    if (rhema_req_header(r, "If-Match") || rhema_req_header(r, "If-None-Match")) {
        rhema_reply_error(r, 400, "bad_header",
                          "If-Match / If-None-Match are not supported on entries: log matching "
                          "(index and term) decides");
        return;
    }
    if (!(body = rhema_req_json(r)))
        return;
    int rc = rhema_consensus_entries_validate(body, &entries, err);
    json_decref(body);
    if (rc == 0)
        rc = rhema_consensus_append(&r->worker->store, node, entries, &rec, &res, err);
    json_decref(entries);
    if (rc) {
        rhema_reply_store_error(r, rc, err);
        return;
    }
    rhema_reply_record(r, res.appended ? 201 : 200, &rec);
}

static void h_entries_get(struct rhema_req *r)
{
    const char *node = r->param;
    static const char *const known[] = {"from", "to", "limit", "cursor", NULL};
    char err[RHEMA_ERRMSG_MAX], *text = NULL;
    size_t len = 0;
    uint64_t from = 1, to = 0, cursor = 0, limit = RHEMA_LIST_LIMIT_DEFAULT;
    if (rhema_query_check(r, known) || rhema_query_uint(r, "from", INDEX_PARAM_MAX, &from) ||
        rhema_query_uint(r, "to", INDEX_PARAM_MAX, &to) ||
        rhema_query_uint(r, "limit", RHEMA_LIST_LIMIT_MAX, &limit) ||
        rhema_query_uint(r, "cursor", INDEX_PARAM_MAX, &cursor))
        return;
    if (to && to < from) {
        rhema_reply_error(r, 400, "invalid_field", "parameter 'to': %llu is below 'from' %llu",
                          (unsigned long long)to, (unsigned long long)from);
        return;
    }
    /* a cursor (the next_cursor of the previous page) continues the range */
    if (cursor) {
        if (cursor < from || (to && cursor > to)) {
            rhema_reply_error(r, 400, "invalid_field",
                              "parameter 'cursor': %llu is outside the range from-to",
                              (unsigned long long)cursor);
            return;
        }
        from = cursor;
    }
    int rc =
        rhema_consensus_entries(&r->worker->store, node, from, to, (size_t)limit, &text, &len, err);
    if (rc) {
        rhema_reply_store_error(r, rc, err);
        return;
    }
    rhema_reply_json(r, 200, text, len);
    free(text);
}

/* POST .../commit and .../applied: {"index": N}. */
static void h_mark(struct rhema_req *r, const char *node, enum rhema_consensus_mark_kind kind)
{
    char err[RHEMA_ERRMSG_MAX];
    struct rhema_record rec = {0};
    int advanced = 0;
    const char *key;
    json_t *body, *v;
    if (rhema_query_check(r, NULL))
        return;
    if (!(body = rhema_req_json(r)))
        return;
    if (!json_is_object(body)) {
        json_decref(body);
        rhema_reply_error(r, 400, "invalid_field", "body: expected a JSON object {\"index\": N}");
        return;
    }
    json_object_foreach(body, key, v)
    {
        if (strcmp(key, "index") != 0) {
            rhema_reply_error(r, 400, "invalid_field", "field '%s': unknown field", key);
            json_decref(body);
            return;
        }
    }
    v = json_object_get(body, "index");
    if (!v || !json_is_integer(v) || json_integer_value(v) < 0) {
        json_decref(body);
        rhema_reply_error(r, 400, "invalid_field", "field 'index': %s",
                          v ? "expected an integer >= 0" : "required");
        return;
    }
    uint64_t index = (uint64_t)json_integer_value(v);
    json_decref(body);
    int rc = rhema_consensus_mark(&r->worker->store, node, kind, index, &rec, &advanced, err);
    if (rc) {
        rhema_reply_store_error(r, rc, err);
        return;
    }
    rhema_reply_record(r, 200, &rec);
}

static void h_commit(struct rhema_req *r) { h_mark(r, r->param, RHEMA_CONSENSUS_COMMIT); }
static void h_applied(struct rhema_req *r) { h_mark(r, r->param, RHEMA_CONSENSUS_APPLIED); }

/* Every write is fenced by the pipeline (X-Rhema-Epoch, DESIGN.md §7). */
const struct rhema_route rhema_consensus_routes[] = {
    {RHEMA_M_GET, "/v1/consensus", h_list, "consensus:read", RHEMA_READS},
    {RHEMA_M_GET, "/v1/consensus/{node}/state", h_state_get, "consensus:read", RHEMA_READS},
    {RHEMA_M_PUT, "/v1/consensus/{node}/state", h_state_put, "consensus:write",
     RHEMA_WRITES_STORAGE},
    {RHEMA_M_GET, "/v1/consensus/{node}/entries", h_entries_get, "consensus:read", RHEMA_READS},
    {RHEMA_M_POST, "/v1/consensus/{node}/entries", h_entries_post, "consensus:write",
     RHEMA_WRITES_STORAGE},
    {RHEMA_M_POST, "/v1/consensus/{node}/commit", h_commit, "consensus:write",
     RHEMA_WRITES_STORAGE},
    {RHEMA_M_POST, "/v1/consensus/{node}/applied", h_applied, "consensus:write",
     RHEMA_WRITES_STORAGE},
    {0},
};
