/*
 * api_ai -- the AI gateway's routes (api_ai.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "ai/gateway.h"
#include "ai/usage.h"
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

/* A forwarded request waiting for its outcome: the deferred request and whom to charge. */
struct pending {
    struct rhema_req *d;
    struct rhema_ai_usage_ticket ticket;
};

static void on_done(void *arg, const struct rhema_ai_outcome *o)
{
    struct pending *p = arg;
    struct rhema_req *d = p->d;
    d->worker->outstanding--;
    /* an answer of the upstream is charged with its usage (ai/usage.h); a failure is not */
    if (o->body && o->status >= 200 && o->status < 300)
        rhema_ai_usage_charge_body(d->worker, &p->ticket,
                                   (const char *)evbuffer_pullup(o->body, -1),
                                   evbuffer_get_length(o->body));
    reply_outcome(d, o);
    rhema_req_free(d);
    free(p);
}

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
    if (json_is_true(stream)) {
        json_decref(body);
        reply_oai_error(r, 400, "invalid_request_error", "unsupported_parameter", "stream",
                        "streaming (\"stream\": true) is not implemented in this version of "
                        "rhemad");
        return;
    }
    if (!(p = calloc(1, sizeof *p))) {
        json_decref(body);
        reply_oai_error(r, 500, "server_error", "internal_error", NULL, "out of memory");
        return;
    }
    /* token limits: refused here, before anything goes upstream (a bad 'model' is left to
     * rhema_ai_exchange_start) */
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
        json_decref(body);
        free(p);
        reply_oai_error(r, 500, "server_error", "internal_error", NULL, "out of memory");
        return;
    }
    p->d = d;
    /* counted until answered, so that a drain (SIGTERM) waits for the upstream */
    r->worker->outstanding++;
    if (rhema_ai_exchange_start(r->worker, endpoint, body, on_done, p, &o) != 0) {
        r->worker->outstanding--;
        reply_outcome(d, &o);
        rhema_req_free(d);
        free(p);
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
