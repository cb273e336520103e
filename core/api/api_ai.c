/*
 * api_ai -- the AI gateway's routes (api_ai.h).
 */
#include "rhema_build.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>

#include "ai/cache.h"
#include "ai/gateway.h"
#include "ai/usage.h"
#include "ai/usage_count.h"
#include "api_ai.h"
#include "config.h"
#include "http.h"
#include "util.h"
#include "json_fields.h"

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

/* ------------------------------------------------------------------------ */
/* The response cache (ai/cache.h; doc/ai-gateway.md, "The response cache") */

/*
 * A request of the cache's: a leader (going upstream) or a waiter of
 * another's flight.  The waiter is the first member (cache.h hands it back).
 */
struct cached_call {
    struct rhema_ai_cache_waiter waiter;
    struct rhema_mail mail;
    struct rhema_worker *worker;
    struct rhema_req *req; /* deferred */
    struct rhema_ai_cache *cache;
    unsigned char key[RHEMA_AI_CACHE_KEY_LEN];
    int refresh;                       /* Cache-Control: no-cache */
    struct event *timer;               /* a waiter's bound: the request timeout */
    struct rhema_ai_cache_resp *resp;  /* what woke a waiter */
    struct rhema_ai_usage_ticket ticket; /* whom to charge (ai/usage.h) */
};

/* An answer that cost no upstream tokens (a hit, a shared flight's): one request. */
static void charge_request(struct rhema_worker *w, const struct rhema_ai_usage_ticket *t)
{
    struct rhema_ai_tokens one = {.requests = 1};
    if (t->party[0])
        rhema_ai_usage_charge(w, t, &one);
}

/* A response of the cache (a hit, or a flight's answer) as the reply. */
static void reply_resp(struct rhema_req *r, const struct rhema_ai_cache_resp *p,
                       const char *cache_status, int with_attempts, long age)
{
    if (*p->upstream)
        rhema_header(r, "X-Rhema-Upstream", p->upstream);
    if (with_attempts && *p->attempts)
        rhema_header(r, "X-Rhema-Attempts", p->attempts);
    if (p->retry_after >= 0) {
        char ra[24];
        snprintf(ra, sizeof ra, "%ld", p->retry_after);
        rhema_header(r, "Retry-After", ra);
    }
    rhema_header(r, "Cache-Status", cache_status);
    if (age >= 0) {
        char a[24];
        snprintf(a, sizeof a, "%ld", age);
        rhema_header(r, "Age", a);
    }
    rhema_reply(r, p->status, p->content_type, p->body, p->len);
}

/* The outcome as a cache response: the upstream's body, or the OpenAI error it is answered with. */
static struct rhema_ai_cache_resp *outcome_resp(const struct rhema_ai_outcome *o)
{
    struct rhema_ai_cache_resp *p;
    if (o->body)
        return rhema_ai_cache_resp_new(o->status, o->content_type, o->upstream ? o->upstream : "",
                                       o->attempts ? o->attempts : "", o->retry_after,
                                       evbuffer_pullup(o->body, -1), evbuffer_get_length(o->body));
    json_t *e = json_pack("{s:{s:s,s:s,s:o,s:o}}", "error", "message", o->message, "type",
                          o->error_type, "param",
                          o->error_param ? json_string(o->error_param) : json_null(), "code",
                          o->error_code ? json_string(o->error_code) : json_null());
    char *txt = e ? json_dumps(e, JSON_COMPACT) : NULL;
    json_decref(e);
    p = rhema_ai_cache_resp_new(o->status, "application/json", o->upstream ? o->upstream : "",
                                o->attempts ? o->attempts : "", o->retry_after, txt ? txt : "",
                                txt ? strlen(txt) : 0);
    free(txt);
    return p;
}

static void cached_call_free(struct cached_call *cc)
{
    if (cc->timer)
        event_free(cc->timer);
    rhema_ai_cache_resp_unref(cc->resp);
    free(cc);
}

/* A waiter's answer, on its own worker (delivered from its mailbox). */
static void waiter_answer(struct rhema_mail *m)
{
    struct cached_call *cc =
        (struct cached_call *)(void *)((char *)m - offsetof(struct cached_call, mail));
    cc->worker->outstanding--;
    if (cc->resp && cc->resp->status >= 200 && cc->resp->status < 300)
        charge_request(cc->worker, &cc->ticket);
    if (cc->resp)
        reply_resp(cc->req, cc->resp, "rhema; fwd=miss; collapsed", 1, -1);
    else
        reply_oai_error(cc->req, 500, "server_error", "internal_error", NULL, "out of memory");
    rhema_req_free(cc->req);
    cached_call_free(cc);
}

/* The flight ended (the leader's thread): hand the answer to the waiter's worker. */
static void waiter_wake(struct rhema_ai_cache_waiter *w, struct rhema_ai_cache_resp *resp)
{
    struct cached_call *cc = (struct cached_call *)(void *)w;
    cc->resp = resp;
    cc->mail.deliver = waiter_answer;
    rhema_mailbox_post(&cc->worker->mailbox, &cc->mail);
}

/* The waiter's worker stops (its loop has ended): 503 now. */
static void waiter_abandon(struct rhema_ai_cache_waiter *w)
{
    struct cached_call *cc = (struct cached_call *)(void *)w;
    cc->worker->outstanding--;
    rhema_header(cc->req, "Cache-Status", "rhema; fwd=miss; collapsed; detail=shutting-down");
    reply_oai_error(cc->req, 503, "server_error", "shutting_down", NULL, "rhemad is stopping");
    rhema_req_free(cc->req);
    cached_call_free(cc);
}

/* A waiter waited the request timeout: 504, unless the answer is already on its way. */
static void waiter_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct cached_call *cc = arg;
    (void)fd;
    (void)what;
    if (!rhema_ai_cache_cancel_wait(cc->cache, &cc->waiter))
        return; /* claimed: waiter_answer() comes through the mailbox */
    cc->worker->outstanding--;
    rhema_header(cc->req, "Cache-Status", "rhema; fwd=miss; collapsed; detail=timeout");
    reply_oai_error(cc->req, 504, "upstream_error", "upstream_timeout", NULL,
                    "an identical request went upstream first and did not end within "
                    "ai_service.request_timeout_seconds");
    rhema_req_free(cc->req);
    cached_call_free(cc);
}

/* The leader's outcome: end the flight (storing a 2xx), then answer like an uncached request. */
static void leader_done(void *arg, const struct rhema_ai_outcome *o)
{
    struct cached_call *cc = arg;
    struct rhema_ai_cache_resp *p = outcome_resp(o);
    const char *fwd = cc->refresh ? "request" : "miss";
    char cs[96];
    int store = o->body && o->status >= 200 && o->status < 300;
    enum rhema_ai_cache_stored res = RHEMA_AIC_NO_MEMORY;
    if (p)
        res = rhema_ai_cache_complete(cc->cache, cc->key, p, store, rhema_monotonic_ns());
    else /* no response for the waiters: they fail, the flight must still end */
        rhema_ai_cache_complete(cc->cache, cc->key, NULL, 0, rhema_monotonic_ns());
    if (res == RHEMA_AIC_STORED)
        snprintf(cs, sizeof cs, "rhema; fwd=%s; stored", fwd);
    else if (!store)
        snprintf(cs, sizeof cs, "rhema; fwd=%s; fwd-status=%d", fwd, o->status);
    else
        snprintf(cs, sizeof cs, "rhema; fwd=%s; detail=%s", fwd,
                 res == RHEMA_AIC_TOO_LARGE ? "too-large" : "no-memory");
    rhema_ai_cache_resp_unref(p);
    if (o->body && o->status >= 200 && o->status < 300)
        rhema_ai_usage_charge_body(cc->worker, &cc->ticket,
                                   (const char *)evbuffer_pullup(o->body, -1),
                                   evbuffer_get_length(o->body));
    rhema_header(cc->req, "Cache-Status", cs);
    cc->worker->outstanding--;
    reply_outcome(cc->req, o);
    rhema_req_free(cc->req);
    cached_call_free(cc);
}

/* Cache-Control's no-store / no-cache directives of the request (1 / 2 bits). */
static int cache_control(struct rhema_req *r)
{
    const char *v = evhttp_find_header(evhttp_request_get_input_headers(r->req), "Cache-Control");
    int f = 0;
    while (v && *v) {
        size_t n;
        v += strspn(v, " \t,");
        n = strcspn(v, " \t,=");
        if (n == 8 && strncasecmp(v, "no-store", 8) == 0)
            f |= 1;
        else if (n == 8 && strncasecmp(v, "no-cache", 8) == 0)
            f |= 2;
        v += n;
        if (*v == '=') { /* a directive's argument (a token or a quoted string) is skipped */
            v++;
            if (*v == '"') {
                const char *q = strchr(v + 1, '"');
                v = q ? q + 1 : v + strlen(v);
            } else
                v += strcspn(v, ",");
        }
    }
    return f;
}

/*
 * Whose answers a request may share: the API key's public id with keys on,
 * the client address without.
 */
static void cache_scope(struct rhema_req *r, char *buf, size_t n)
{
    const char *kid = rhema_req_key_id(r);
    struct evhttp_connection *c = evhttp_request_get_connection(r->req);
    char *host = NULL;
    ev_uint16_t port = 0;
    if (kid) {
        snprintf(buf, n, "key:%s", kid);
        return;
    }
    if (c)
        evhttp_connection_get_peer(c, &host, &port);
    snprintf(buf, n, "addr:%s", host ? host : "");
}

static void on_done(void *arg, const struct rhema_ai_outcome *o);

/*
 * The cache's part of a request (body: the parsed request, model not yet
 * resolved).  Returns 1 when it answered or took the request, 0 to go on
 * uncached (the cache is off, or no-store: *bypass set).
 */
static int cache_forward(struct rhema_req *r, const char *endpoint, json_t *body,
                         const struct rhema_ai_usage_ticket *ticket, int *bypass)
{
    struct rhema_ai *ai = r->worker->srv->ai;
    struct rhema_ai_cache *cache = rhema_ai_cache_of(ai);
    struct rhema_ai_cache_resp *hit = NULL;
    struct rhema_ai_outcome o;
    struct cached_call *cc;
    uint64_t age = 0;
    char scope[96], *canon;
    int cc_flags;
    const char *dm;
    *bypass = 0;
    if (!cache)
        return 0;
    if ((cc_flags = cache_control(r)) & 1) {
        *bypass = 1;
        return 0;
    }
    /* the rhema model name, as the gateway will resolve it: equivalent bodies hash equal */
    if (!json_object_get(body, "model") && (dm = rhema_ai_default_model(ai)))
        json_object_set_new(body, "model", json_string(dm));
    if (!(cc = calloc(1, sizeof *cc)) ||
        !(canon = json_dumps(body, JSON_SORT_KEYS | JSON_COMPACT))) {
        free(cc);
        reply_oai_error(r, 500, "server_error", "internal_error", NULL, "out of memory");
        return 1;
    }
    cache_scope(r, scope, sizeof scope);
    rhema_ai_cache_key(endpoint, scope, canon, strlen(canon), cc->key);
    free(canon);
    cc->worker = r->worker;
    cc->cache = cache;
    cc->ticket = *ticket;
    cc->refresh = (cc_flags & 2) != 0;
    cc->waiter.owner = r->worker;
    cc->waiter.wake = waiter_wake;
    cc->waiter.abandon = waiter_abandon;
    /* deferred and armed before the lookup: a waiter may be woken as soon as it is queued */
    cc->req = rhema_req_defer(r);
    cc->timer = evtimer_new(r->worker->base, waiter_timeout, cc);
    if (!cc->req || !cc->timer) {
        reply_oai_error(cc->req ? cc->req : r, 500, "server_error", "internal_error", NULL,
                        "out of memory");
        if (cc->req)
            rhema_req_free(cc->req);
        cached_call_free(cc);
        return 1;
    }
    switch (rhema_ai_cache_lookup(cache, cc->key, cc->refresh, rhema_monotonic_ns(), &cc->waiter,
                                  &hit, &age)) {
    case RHEMA_AIC_HIT:
        charge_request(r->worker, &cc->ticket);
        reply_resp(cc->req, hit, "rhema; hit", 0, (long)age);
        rhema_ai_cache_resp_unref(hit);
        rhema_req_free(cc->req);
        cached_call_free(cc);
        return 1;
    case RHEMA_AIC_FOLLOW: {
        /* the answer comes through this worker's mailbox: after this function returns */
        int64_t secs = 60;
        struct timeval tv = {0, 0};
        rhema_config_get_int(r->worker->srv->cfg, "ai_service.request_timeout_seconds", &secs);
        tv.tv_sec = (time_t)secs;
        r->worker->outstanding++;
        evtimer_add(cc->timer, &tv);
        return 1;
    }
    case RHEMA_AIC_LEAD:
        break;
    }
    r->worker->outstanding++;
    if (rhema_ai_exchange_start(r->worker, endpoint, body, leader_done, cc, &o) != 0)
        leader_done(cc, &o);
    return 1;
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
    int bypass = 0;
    if (gateway_off(r))
        return;
    body = rhema_json_loadb((const char *)evbuffer_pullup(in, -1), len, 0, &jerr);
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
    /* token limits: refused here, before anything goes upstream or to the cache (a bad
     * 'model' is left to the gateway) */
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
    /* streams are not cached (doc/ai-gateway.md, "The response cache") */
    if (!json_is_true(stream) && cache_forward(r, endpoint, body, &p->ticket, &bypass)) {
        json_decref(body);
        free(p);
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
    if (bypass)
        rhema_header(d, "Cache-Status", "rhema; fwd=bypass");
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
