/*
 * api_ai -- the AI gateway's routes (api_ai.h).
 */
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
#include "api_ai.h"
#include "config.h"
#include "http.h"
#include "util.h"

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
};

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
static int cache_forward(struct rhema_req *r, const char *endpoint, json_t *body, int *bypass)
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
    struct rhema_req *d = arg;
    d->worker->outstanding--;
    reply_outcome(d, o);
    rhema_req_free(d);
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
    json_t *body, *stream;
    struct rhema_req *d;
    struct rhema_ai_outcome o;
    char msg[256];
    int bypass = 0;
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
    if (cache_forward(r, endpoint, body, &bypass)) {
        json_decref(body);
        return;
    }
    if (!(d = rhema_req_defer(r))) {
        json_decref(body);
        reply_oai_error(r, 500, "server_error", "internal_error", NULL, "out of memory");
        return;
    }
    /* counted until answered, so that a drain (SIGTERM) waits for the upstream */
    if (bypass)
        rhema_header(d, "Cache-Status", "rhema; fwd=bypass");
    r->worker->outstanding++;
    if (rhema_ai_exchange_start(r->worker, endpoint, body, on_done, d, &o) != 0) {
        r->worker->outstanding--;
        reply_outcome(d, &o);
        rhema_req_free(d);
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
    {0},
};
