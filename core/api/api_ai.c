/*
 * api_ai -- the AI gateway's routes (api_ai.h).
 */
#include "rhema_build.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "ai/gateway.h"
#include "ai/usage.h"
#include "ai/usage_count.h"
#include "api_ai.h"
#include "http.h"

/* OpenAI's error shape. */
static void reply_oai_error(struct rhema_req *r, int status, const char *type, const char *code,
                            const char *param, const char *msg)
{
    json_t *e = json_pack("{s:{s:s,s:s,s:o,s:o}}", "error", "message", msg, "type", type,
                          "param", param ? json_string(param) : json_null(), "code",
                          code ? json_string(code) : json_null());
    rhema_reply_jsonv(r, status, e);
}

static void reply_outcome(struct rhema_req *r, const struct rhema_ai_outcome *o)
{
    if (o->upstream && *o->upstream)
        rhema_header(r, "X-Rhema-Upstream", o->upstream);
    if (o->attempts && *o->attempts)
        rhema_header(r, "X-Rhema-Attempts", o->attempts);
    if (o->retry_after >= 0) {
        char ra[24];
        snprintf(ra, sizeof ra, "%ld", o->retry_after);
        rhema_header(r, "Retry-After", ra);
    }
    if (o->body)
        rhema_reply_evbuffer(r, o->status, o->content_type, o->body);
    else
        reply_oai_error(r, o->status, o->error_type, o->error_code, o->error_param, o->message);
}

/*
 * A request waiting for the gateway: the exchange to cancel if the client
 * leaves (rhema_req_watch), and for a stream the state of its reply.
 */
struct pending {
    struct rhema_req *d;
    struct rhema_ai_exchange *x;
    int streaming;
    struct rhema_ai_usage_ticket ticket; /* whom to charge (ai/usage.h) */
    size_t streamed;                     /* a stream's bytes to the client */
    struct rhema_ai_tokens usage;        /* a stream's "usage" event, when it sent one */
    int have_usage;
};

/* Pause a stream's upstream while this much waits for its client; resume at a quarter. */
#define STREAM_OUT_HIGH (256u << 10)
#define STREAM_OUT_LOW (64u << 10)

static void pending_end(struct pending *p)
{
    p->d->worker->outstanding--;
    rhema_req_free(p->d);
    free(p);
}

static void on_done(void *arg, const struct rhema_ai_outcome *o)
{
    struct pending *p = arg;
    rhema_req_unwatch(p->d);
    /* an answer of the upstream is charged with its usage (ai/usage.h); a failure is not */
    if (o->body && o->status >= 200 && o->status < 300)
        rhema_ai_usage_charge_body(p->d->worker, &p->ticket,
                                   (const char *)evbuffer_pullup(o->body, -1),
                                   evbuffer_get_length(o->body));
    reply_outcome(p->d, o);
    pending_end(p);
}

/* The client left before the answer: cancel the upstream request, forget the request. */
static void on_gone(void *arg)
{
    struct pending *p = arg;
    if (p->x)
        rhema_ai_exchange_cancel(p->x);
    rhema_req_abandon(p->d);
    pending_end(p);
}

static void on_stream_start(void *arg, const struct rhema_ai_outcome *o)
{
    struct pending *p = arg;
    if (o->upstream && *o->upstream)
        rhema_header(p->d, "X-Rhema-Upstream", o->upstream);
    if (o->attempts && *o->attempts)
        rhema_header(p->d, "X-Rhema-Attempts", o->attempts);
    rhema_header(p->d, "X-Accel-Buffering", "no");
    rhema_reply_stream_start(p->d, o->status, o->content_type);
}

/*
 * A stream's event: passed on, and looked at for the "usage" OpenAI sends
 * in a stream's last event (stream_options.include_usage) -- the tokens
 * the stream is charged at its end.
 */
static void on_stream_chunk(void *arg, const char *data, size_t len)
{
    struct pending *p = arg;
    p->streamed += len;
    if (p->ticket.party[0] && memmem(data, len, "\"usage\"", 7)) {
        const char *j = memmem(data, len, "data:", 5);
        struct rhema_ai_tokens t;
        if (j) {
            j += 5;
            if (rhema_ai_tokens_from_body(j, len - (size_t)(j - data), p->ticket.request_bytes,
                                          &t) == 1) {
                p->usage = t;
                p->have_usage = 1;
            }
        }
    }
    rhema_reply_stream_chunk(p->d, data, len);
}

/*
 * Charge a stream that reached its client: its "usage" event when the
 * upstream sent one, else the estimate of ai/usage_count.h (a token per 4
 * bytes of the request and of what was streamed).
 */
static void charge_stream(struct pending *p)
{
    struct rhema_ai_tokens t = {0};
    if (!p->ticket.party[0])
        return;
    if (p->have_usage) {
        t = p->usage;
    } else {
        t.requests = 1;
        t.prompt_tokens = (int64_t)(p->ticket.request_bytes / 4);
        t.completion_tokens = (int64_t)(p->streamed / 4);
        t.total_tokens = t.prompt_tokens + t.completion_tokens;
    }
    rhema_ai_usage_charge(p->d->worker, &p->ticket, &t);
}

/* The stream's end: after an error, an `event: error` in OpenAI's error shape and no [DONE]. */
static void on_stream_end(void *arg, const struct rhema_ai_outcome *e)
{
    struct pending *p = arg;
    rhema_req_unwatch(p->d);
    charge_stream(p); /* what went out was spent upstream, complete or not */
    if (e) {
        json_t *j = json_pack("{s:{s:s,s:s,s:n,s:s}}", "error", "message", e->message, "type",
                              e->error_type, "param", "code", e->error_code);
        char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        if (text) {
            size_t n = strlen(text) + 32;
            char *ev = malloc(n);
            if (ev) {
                snprintf(ev, n, "event: error\ndata: %s\n\n", text);
                rhema_reply_stream_chunk(p->d, ev, strlen(ev));
                free(ev);
            }
            free(text);
        }
    }
    rhema_reply_stream_end(p->d);
    pending_end(p);
}

static void on_drained(void *arg)
{
    struct pending *p = arg;
    rhema_ai_exchange_resume(p->x);
}

static int on_congested(void *arg)
{
    struct pending *p = arg;
    if (rhema_req_output_queued(p->d) < STREAM_OUT_HIGH)
        return 0;
    rhema_req_watch_drain(p->d, STREAM_OUT_LOW, on_drained);
    return 1;
}

static const struct rhema_ai_stream_cb stream_cb = {on_done, on_stream_start, on_stream_chunk,
                                                    on_stream_end, on_congested};

static int gateway_off(struct rhema_req *r)
{
    if (r->worker->srv->ai)
        return 0;
    reply_oai_error(r, 404, "invalid_request_error", "gateway_disabled", NULL,
                    "the AI gateway is off (ai_service.enabled = false)");
    return 1;
}

static void h_models(struct rhema_req *r)
{
    if (gateway_off(r))
        return;
    rhema_reply_jsonv(r, 200, rhema_ai_models_json(r->worker->srv->ai));
}

static void forward(struct rhema_req *r, const char *endpoint)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(r->req);
    size_t len = evbuffer_get_length(in);
    json_error_t jerr;
    json_t *body, *stream, *model;
    struct rhema_req *d;
    struct pending *p;
    struct rhema_ai_refusal refusal;
    struct rhema_ai_outcome o;
    int rc;
    char msg[256];
    if (gateway_off(r))
        return;
    body = json_loadb((const char *)evbuffer_pullup(in, -1), len, 0, &jerr);
    if (!body || !json_is_object(body)) {
        snprintf(msg, sizeof msg, "the body must be a JSON object%s%s", body ? "" : ": ",
                 body ? "" : jerr.text);
        json_decref(body);
        reply_oai_error(r, 400, "invalid_request_error", "invalid_json", NULL, msg);
        return;
    }
    stream = json_object_get(body, "stream");
    if (stream && !json_is_boolean(stream) && !json_is_null(stream)) {
        json_decref(body);
        reply_oai_error(r, 400, "invalid_request_error", "invalid_type", "stream",
                        "'stream' must be a boolean");
        return;
    }
    if (json_is_true(stream) && strcmp(endpoint, "embeddings") == 0) {
        json_decref(body);
        reply_oai_error(r, 400, "invalid_request_error", "unsupported_parameter", "stream",
                        "embeddings are not streamed");
        return;
    }
    if (!(p = calloc(1, sizeof *p))) {
        json_decref(body);
        reply_oai_error(r, 500, "server_error", "internal_error", NULL, "out of memory");
        return;
    }
    /* token limits: refused here, before anything goes upstream (a bad 'model' is left to
     * the gateway) */
    model = json_object_get(body, "model");
    if ((!model || json_is_string(model)) &&
        rhema_ai_usage_admit(r, json_string_value(model), len, &p->ticket, &refusal)) {
        json_decref(body);
        free(p);
        reply_oai_error(r, refusal.status,
                        refusal.status == 429 ? "rate_limit_error" : "server_error",
                        refusal.code, NULL, refusal.message);
        return;
    }
    if (!(d = rhema_req_defer(r))) {
        free(p);
        json_decref(body);
        reply_oai_error(r, 500, "server_error", "internal_error", NULL, "out of memory");
        return;
    }
    p->d = d;
    p->streaming = json_is_true(stream);
    /* counted until answered, so that a drain (SIGTERM) waits for the upstream */
    r->worker->outstanding++;
    /* watched from before the start: the exchange may end (and free p) inside it */
    if (rhema_req_watch(d, on_gone, p) != 0) {
        rhema_req_abandon(d); /* the client already left */
        pending_end(p);
        json_decref(body);
        return;
    }
    rc = p->streaming ? rhema_ai_stream_start(r->worker, endpoint, body, &stream_cb, p, &o, &p->x)
                      : rhema_ai_exchange_begin(r->worker, endpoint, body, on_done, p, &o, &p->x);
    if (rc != 0) { /* p untouched by the gateway */
        rhema_req_unwatch(d);
        reply_outcome(d, &o);
        pending_end(p);
    }
    json_decref(body);
}

static void h_chat(struct rhema_req *r)
{
    forward(r, "chat/completions");
}

static void h_completions(struct rhema_req *r)
{
    forward(r, "completions");
}

static void h_embeddings(struct rhema_req *r)
{
    forward(r, "embeddings");
}

const struct rhema_route rhema_ai_routes[] = {
    {RHEMA_M_GET, "/v1/models", h_models, "ai:read", RHEMA_READS},
    {RHEMA_M_POST, "/v1/chat/completions", h_chat, "ai:use", RHEMA_READS},
    {RHEMA_M_POST, "/v1/completions", h_completions, "ai:use", RHEMA_READS},
    {RHEMA_M_POST, "/v1/embeddings", h_embeddings, "ai:use", RHEMA_READS},
    {RHEMA_M_GET, "/v1/usage", rhema_ai_usage_get, "ai:read", RHEMA_READS},
    {0},
};
