/*
 * api_sessions -- the HTTP API of coordination sessions (DESIGN.md §6)
 * over core/session.c.
 */
#include "rhema_build.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <event2/event.h>

#include "api_events.h"
#include "api_sessions.h"
#include "commit.h"
#include "conditional.h"
#include "json_fields.h"
#include "query.h"
#include "util.h"

/* ---- sessions ---- */

/* The session's current version, for the preconditions that need it (conditional.h). */
static int session_version(struct rhema_req *r, uint64_t *version, char err[RHEMA_ERRMSG_MAX])
{
    json_t *cur = NULL;
    int rc = rhema_session_current(&r->worker->store, r->param, &cur, version, err);
    json_decref(cur);
    return rc;
}

/*
 * Session writes.  With a storage plugin that implements group(), a write
 * is handed to the committer thread (commit.h), which runs the writes of
 * every worker together as group commits; the worker answers when the job
 * comes back.  Without group() the worker runs the write at once.
 */
static void answer_op(struct rhema_req *r, struct rhema_session_op *op)
{
    if (op->rc) {
        rhema_reply_store_error(r, op->rc, op->err);
        return;
    }
    if (op->kind == RHEMA_SOP_DELETE) {
        rhema_reply_empty(r, 204);
        return;
    }
    if (op->kind == RHEMA_SOP_PUT && op->created) {
        char loc[RHEMA_ID_MAX + 32];
        snprintf(loc, sizeof loc, "/v1/sessions/%s", op->id);
        rhema_header(r, "Location", loc);
    }
    rhema_reply_record(r, op->created ? 201 : 200, &op->rec);
}

/*
 * A session write on its way through the committer: the job it runs, and
 * the mail that brings it back to the worker that answers the request.
 */
struct session_write {
    struct rhema_commit_job job;
    struct rhema_mail mail;
    struct rhema_worker *worker;
    struct rhema_req *req; /* deferred (rhema_req_defer) */
};

/* On the worker's thread: answer the request, free the write. */
static void write_answer(struct rhema_mail *m)
{
    struct session_write *sw =
        (struct session_write *)(void *)((char *)m - offsetof(struct session_write, mail));
    answer_op(sw->req, &sw->job.op);
    rhema_session_op_release(&sw->job.op);
    rhema_req_free(sw->req);
    sw->worker->outstanding--;
    free(sw);
}

/* On the committer's thread: the write ran; hand it to its worker. */
static void write_committed(struct rhema_commit_job *job)
{
    struct session_write *sw = (struct session_write *)(void *)job; /* job is the first member */
    sw->mail.deliver = write_answer;
    rhema_mailbox_post(&sw->worker->mailbox, &sw->mail);
}

/* Run op now, or hand it to the committer.  Takes op's references. */
static void submit_op(struct rhema_req *r, struct rhema_session_op *op)
{
    struct rhema_worker *w = r->worker;
    struct session_write *sw = NULL;
    struct rhema_req *d = NULL;
    if (w->srv->committer && (sw = calloc(1, sizeof *sw)) && (d = rhema_req_defer(r))) {
        sw->worker = w;
        sw->req = d;
        sw->job.done = write_committed;
        sw->job.op = *op;
        w->outstanding++;
        rhema_committer_submit(w->srv->committer, &sw->job);
        return;
    }
    free(sw);
    rhema_session_ops_run(&w->store, &op, 1);
    answer_op(r, op);
    rhema_session_op_release(op);
}

static int op_init(struct rhema_req *r, struct rhema_session_op *op, enum rhema_session_op_kind kind,
                   const char *id)
{
    memset(op, 0, sizeof *op);
    op->kind = kind;
    snprintf(op->id, sizeof op->id, "%s", id);
    return rhema_preconditions(r, session_version, &op->if_match);
}

static void h_session_put(struct rhema_req *r)
{
    const char *id = r->param;
    struct rhema_session_op op;
    if (op_init(r, &op, RHEMA_SOP_PUT, id) != 0)
        return;
    json_t *body = rhema_req_json(r);
    if (!body)
        return;
    if (json_is_object(body) && !json_object_get(body, "started_at"))
        op.flags |= RHEMA_SOP_STARTED_KEPT; /* a replace keeps the stored one */
    int rc = rhema_session_validate(body, id, &op.input, op.err);
    json_decref(body);
    if (rc) {
        rhema_reply_store_error(r, rc, op.err);
        return;
    }
    op.input_text = rhema_session_text(op.input, &op.input_len); /* here, not on the committer */
    submit_op(r, &op);
}

/*
 * PATCH: an RFC 7396 merge patch of the stored session.  The result is
 * validated as a PUT body and written on the condition that the session is
 * still at the version the patch was applied to, so a concurrent write
 * between the read and the write is 412, never lost.
 */
static void h_session_patch(struct rhema_req *r)
{
    const char *id = r->param;
    struct rhema_session_op op;
    json_t *cur = NULL, *body = NULL, *merged = NULL;
    uint64_t version = 0;
    int rc;
    if (!rhema_req_media_type(r, "application/merge-patch+json")) {
        rhema_reply_error(r, 415, "unsupported_media_type",
                          "PATCH takes Content-Type: application/merge-patch+json (RFC 7396)");
        return;
    }
    if (op_init(r, &op, RHEMA_SOP_PUT, id) != 0)
        return;
    if (!(body = rhema_req_json(r)))
        return;
    if (!json_is_object(body)) {
        rhema_reply_error(r, 400, "invalid_field", "body: expected a JSON object (a merge patch)");
        goto out;
    }
    if ((rc = rhema_session_current(&r->worker->store, id, &cur, &version, op.err))) {
        rhema_reply_store_error(r, rc, op.err);
        goto out;
    }
    if (RHEMA_IF_MATCH_VERSION(op.if_match) && op.if_match != version) {
        rhema_reply_error(r, 412, "precondition_failed",
                          "session '%s' is at version %llu, not %llu (If-Match)", id,
                          (unsigned long long)version, (unsigned long long)op.if_match);
        goto out;
    }
    if (!(merged = rhema_json_merge_patch(cur, body))) {
        rhema_reply_error(r, 500, "internal", "out of memory");
        goto out;
    }
    if ((rc = rhema_session_validate(merged, id, &op.input, op.err))) {
        rhema_reply_store_error(r, rc, op.err);
        goto out;
    }
    op.if_match = version;
    op.input_text = rhema_session_text(op.input, &op.input_len);
    submit_op(r, &op);
out:
    json_decref(merged);
    json_decref(cur);
    json_decref(body);
}

/* ---- reads in batches (api_sessions.h) ---- */

struct rhema_session_reads {
    struct event *ev; /* activated by the turn's first read */
    size_t n;
    struct rhema_req *req[RHEMA_SESSION_GET_MANY_MAX]; /* deferred (rhema_req_defer) */
    const char *ids[RHEMA_SESSION_GET_MANY_MAX];
    struct rhema_record rec[RHEMA_SESSION_GET_MANY_MAX];
    int rcs[RHEMA_SESSION_GET_MANY_MAX];
    char errs[RHEMA_SESSION_GET_MANY_MAX][RHEMA_ERRMSG_MAX];
};

static void reads_answer(struct rhema_worker *w)
{
    struct rhema_session_reads *b = w->session_reads;
    size_t n = b->n;
    if (n == 0) /* a full batch was answered before the event ran */
        return;
    for (size_t i = 0; i < n; i++)
        b->ids[i] = b->req[i]->param;
    rhema_session_get_many(&w->store, b->ids, n, b->rec, b->rcs, b->errs);
    b->n = 0;
    for (size_t i = 0; i < n; i++) {
        if (b->rcs[i])
            rhema_reply_store_error(b->req[i], b->rcs[i], b->errs[i]);
        else
            rhema_reply_record(b->req[i], 200, &b->rec[i]);
        rhema_req_free(b->req[i]);
    }
}

static void on_reads(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    reads_answer(arg);
}

/* Set r aside for the turn's batch: 0, or -1 when it is to be answered now. */
static int reads_add(struct rhema_req *r)
{
    struct rhema_worker *w = r->worker;
    struct rhema_session_reads *b = w->session_reads;
    if (!b) {
        if (!(b = calloc(1, sizeof *b)))
            return -1;
        if (!(b->ev = event_new(w->base, -1, 0, on_reads, w))) {
            free(b);
            return -1;
        }
        w->session_reads = b;
    }
    struct rhema_req *d = rhema_req_defer(r);
    if (!d)
        return -1;
    b->req[b->n++] = d;
    if (b->n == 1)
        event_active(b->ev, EV_TIMEOUT, 0);
    else if (b->n == RHEMA_SESSION_GET_MANY_MAX)
        reads_answer(w); /* full: now (the event finds none) */
    return 0;
}

void rhema_session_reads_release(struct rhema_worker *w)
{
    struct rhema_session_reads *b = w->session_reads;
    if (!b)
        return;
    if (b->n)
        reads_answer(w);
    event_free(b->ev);
    free(b);
    w->session_reads = NULL;
}

static int session_get_answer(struct rhema_req *r, int final, uint64_t *recheck_ms)
{
    const char *id = r->param;
    char err[RHEMA_ERRMSG_MAX];
    struct rhema_record rec = {0};
    (void)final, (void)recheck_ms;
    int rc = rhema_session_get(&r->worker->store, id, &rec, err);
    if (rc) {
        rhema_reply_store_error(r, rc, err);
        return 1;
    }
    rhema_reply_record(r, 200, &rec); /* 304 for a current If-None-Match */
    return 1;
}

/*
 * GET, and the blocking query (issue 12, item 2): with ?wait=&index=, the
 * answer waits until an event about the session (an update, a message,
 * its deletion) arrives on the change feed or the wait ends -- at once when
 * its version is already past index, or when it does not exist (Consul's
 * rule); api_events.h.
 */
static void h_session_get(struct rhema_req *r)
{
    struct rhema_events_filter f = {.session = r->param};
    if (TAILQ_EMPTY(&r->query) && reads_add(r) == 0)
        return; /* answered with the turn's other reads */
    rhema_events_resource_get(r, &f, session_version, session_get_answer);
}

static void h_session_delete(struct rhema_req *r)
{
    const char *id = r->param;
    struct rhema_session_op op;
    if (op_init(r, &op, RHEMA_SOP_DELETE, id) != 0)
        return;
    submit_op(r, &op);
}

static void h_session_message(struct rhema_req *r)
{
    const char *id = r->param;
    struct rhema_session_op op;
    if (op_init(r, &op, RHEMA_SOP_APPEND, id) != 0)
        return;
    json_t *body = rhema_req_json(r);
    if (!body)
        return;
    if (json_is_object(body) && !json_object_get(body, "timestamp"))
        op.flags |= RHEMA_SOP_TS_DEFAULTED;
    int rc = rhema_message_validate(body, &op.input, op.err);
    json_decref(body);
    if (rc) {
        rhema_reply_store_error(r, rc, op.err);
        return;
    }
    submit_op(r, &op);
}

static void h_session_list(struct rhema_req *r)
{
    char err[RHEMA_ERRMSG_MAX];
    uint64_t limit = RHEMA_LIST_LIMIT_DEFAULT;
    static const char *const known[] = {"status", "participant", "limit", "cursor", NULL};
    if (rhema_query_check(r, known) || rhema_query_uint(r, "limit", RHEMA_LIST_LIMIT_MAX, &limit))
        return;
    char *text = NULL;
    size_t len = 0;
    int rc = rhema_session_list(&r->worker->store, evhttp_find_header(&r->query, "status"),
                                evhttp_find_header(&r->query, "participant"), (size_t)limit,
                                evhttp_find_header(&r->query, "cursor"), &text, &len, err);
    if (rc) {
        rhema_reply_store_error(r, rc, err);
        return;
    }
    rhema_reply_json(r, 200, text, len);
    free(text);
}

const struct rhema_route rhema_sessions_routes[] = {
    {RHEMA_M_GET, "/v1/sessions", h_session_list, "sessions:read", RHEMA_READS},
    {RHEMA_M_GET, "/v1/sessions/{id}", h_session_get, "sessions:read", RHEMA_READS},
    {RHEMA_M_PUT, "/v1/sessions/{id}", h_session_put, "sessions:write", RHEMA_WRITES_STORAGE},
    {RHEMA_M_PATCH, "/v1/sessions/{id}", h_session_patch, "sessions:write",
     RHEMA_WRITES_STORAGE},
    {RHEMA_M_DELETE, "/v1/sessions/{id}", h_session_delete, "sessions:write",
     RHEMA_WRITES_STORAGE},
    {RHEMA_M_POST, "/v1/sessions/{id}/messages", h_session_message, "sessions:write",
     RHEMA_WRITES_STORAGE},
    {0},
};
