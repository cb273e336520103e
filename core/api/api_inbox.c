/*
 * api_inbox -- agent inboxes over HTTP; see api_inbox.h and core/inbox.h.
 */
#include "rhema_build.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_events.h"
#include "api_inbox.h"
#include "watch/inbox.h"
#include "query.h"
#include "util.h"

#define INBOX_LIMIT_DEFAULT 10
#define VISIBILITY_MAX_S 43200

static uint64_t visibility_default_ms(struct rhema_req *r)
{
    int64_t v = RHEMA_INBOX_VISIBILITY_DEFAULT_S;
    if (rhema_config_get_int(r->worker->srv->cfg, "coordination.inbox_visibility_timeout_seconds",
                             &v) != 0 ||
        v <= 0)
        v = RHEMA_INBOX_VISIBILITY_DEFAULT_S;
    return (uint64_t)v * 1000u;
}

/*
 * Deliver what there is.  Replies and returns 1 when something was
 * delivered, on an error, or when final; 0 otherwise (*recheck_ms: when
 * an entry skipped as invisible becomes visible again, 0: none).
 */
static int inbox_try(struct rhema_req *r, int final, uint64_t *recheck_ms)
{
    char err[RHEMA_ERRMSG_MAX];
    uint64_t limit = INBOX_LIMIT_DEFAULT, vis_s = 0, next = 0, now = rhema_realtime_ms();
    json_t *items = NULL;
    /* checked before: these cannot fail here */
    rhema_query_uint(r, "limit", RHEMA_LIST_LIMIT_MAX, &limit);
    rhema_query_uint(r, "visibility", VISIBILITY_MAX_S, &vis_s);
    int rc = rhema_inbox_fetch(&r->worker->store, r->param, (size_t)limit,
                               vis_s ? vis_s * 1000u : visibility_default_ms(r), now, &items,
                               &next, err);
    *recheck_ms = next > now ? next - now : 0;
    if (rc) {
        rhema_reply_store_error(r, rc, err);
        return 1;
    }
    if (json_array_size(items) == 0 && !final) {
        json_decref(items);
        return 0;
    }
    r->reads = 0; /* a delivery changed the inbox: its reply is never refused for output pressure */
    rhema_reply_jsonv(r, 200, json_pack("{s:s,s:o}", "agent_id", r->param, "items", items));
    return 1;
}

/* Inboxes are written with the change feed's records: none without it. */
static int feed_off(struct rhema_req *r)
{
    if (r->worker->srv->feed)
        return 0;
    rhema_reply_error(r, 503, "unavailable",
                      "inboxes need the change feed: coordination.change_feed is false");
    return 1;
}

static void h_inbox_get(struct rhema_req *r)
{
    static const char *const known[] = {"limit", "wait", "visibility", NULL};
    uint64_t limit = INBOX_LIMIT_DEFAULT, vis_s = 0, wait_ms, recheck;
    if (rhema_query_check(r, known) || rhema_query_uint(r, "limit", RHEMA_LIST_LIMIT_MAX, &limit) ||
        rhema_query_uint(r, "visibility", VISIBILITY_MAX_S, &vis_s) ||
        rhema_events_wait_param(r, &wait_ms) || feed_off(r))
        return;
    uint64_t from = rhema_events_head(r); /* before looking: nothing comes in unseen */
    if (inbox_try(r, wait_ms == 0, &recheck))
        return;
    struct rhema_events_filter f = {.types = "message.created", .agent = r->param};
    rhema_events_block_retry(r, &f, from, wait_ms, recheck, inbox_try);
}

static void h_message_ack(struct rhema_req *r)
{
    char err[RHEMA_ERRMSG_MAX];
    json_t *body;
    if (rhema_query_check(r, NULL) || feed_off(r) || !(body = rhema_req_json(r)))
        return;
    json_t *a = json_object_get(body, "agent_id");
    const char *agent = json_string_value(a);
    const char *k;
    json_t *v;
    json_object_foreach(body, k, v) if (strcmp(k, "agent_id") != 0)
    {
        rhema_reply_error(r, 400, "invalid_field", "unknown field '%s'", k);
        json_decref(body);
        return;
    }
    if (!agent || !rhema_id_valid(agent)) {
        rhema_reply_error(r, 400, "invalid_field",
                          "field 'agent_id': the recipient's id (1-128 characters "
                          "[A-Za-z0-9._:-]) is required");
        json_decref(body);
        return;
    }
    int rc = rhema_inbox_ack(&r->worker->store, r->param, r->param2, agent, rhema_realtime_ms(),
                             err);
    json_decref(body);
    if (rc) {
        rhema_reply_store_error(r, rc, err);
        return;
    }
    rhema_reply_empty(r, 204);
}

const struct rhema_route rhema_inbox_routes[] = {
    {RHEMA_M_GET, "/v1/agents/{agent_id}/inbox", h_inbox_get, "sessions:read", RHEMA_READS},
    {RHEMA_M_POST, "/v1/sessions/{id}/messages/{message_id}/ack", h_message_ack,
     "sessions:write", RHEMA_WRITES_STORAGE},
    {0},
};
