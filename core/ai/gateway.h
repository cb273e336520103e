/*
 * ai/gateway -- the AI gateway: ai_service.models and .upstreams, the
 * choice of an upstream (priority tiers, the model's balancing strategy,
 * circuit breakers, max_concurrent), retries with backoff under a retry
 * budget, and fallbacks to other models (doc/ai-gateway.md).
 *
 * struct rhema_ai is built once at startup (rhema_ai_new(), main thread,
 * before the workers) and read by every worker; its mutable parts are
 * atomics (breakers, loads, budget) and the balancer instances, whose
 * pick() and feedback() are thread safe by the balancer ABI.
 *
 * An exchange is one client request on one worker: rhema_ai_exchange_start()
 * sends the first attempt through the worker's HTTP client (client.h) and
 * returns; done() runs later on the same worker with the outcome.  This
 * module knows nothing of the inbound HTTP request: core/api/api_ai.c
 * answers it.
 */
#ifndef RHEMA_CORE_AI_GATEWAY_H
#define RHEMA_CORE_AI_GATEWAY_H

#include <stddef.h>

#include <jansson.h>

#include "server.h"

struct evbuffer;
struct rhema_ai;
struct rhema_ai_exchange;

/* What to answer.  body NULL: an error made of type, code and message. */
struct rhema_ai_outcome {
    int status;
    const char *content_type;
    struct evbuffer *body;  /* the upstream's body (owned by the exchange until done returns) */
    const char *error_type; /* "invalid_request_error", "upstream_error" ... */
    const char *error_code; /* "model_not_found", "upstream_timeout" ... */
    const char *error_param; /* NULL or the request field at fault */
    char message[320];
    long retry_after;       /* seconds, -1: none */
    const char *upstream;   /* the upstream that answered, "" when none */
    const char *attempts;   /* the attempt trail (X-Rhema-Attempts), "" when none */
};

typedef void rhema_ai_done_fn(void *arg, const struct rhema_ai_outcome *o);

/*
 * Read and check ai_service (upstreams, models, strategies -- loading the
 * balancer plugins it names into reg -- and the API keys from the
 * environment).  *out NULL when ai_service.enabled is false.
 */
int rhema_ai_new(const struct rhema_config *cfg, struct rhema_plugin_registry *reg,
                 struct rhema_ai **out, char **err);
void rhema_ai_free(struct rhema_ai *ai);

/* The response cache (ai/cache.h), NULL when ai_service.caching is off. */
struct rhema_ai_cache *rhema_ai_cache_of(const struct rhema_ai *ai);
/* ai_service.default_model, NULL when none. */
const char *rhema_ai_default_model(const struct rhema_ai *ai);

/*
 * GET /v1/models: the configured models as OpenAI lists them (new reference).
 */
json_t *rhema_ai_models_json(const struct rhema_ai *ai);

/*
 * Start an exchange on worker w: `endpoint` is the path under base_url
 * ("chat/completions", "completions", "embeddings"), body the request
 * (borrowed; its "model" names a configured model, or is absent for
 * ai_service.default_model).  Returns 0 and later calls done(arg, o) once;
 * or -1 with *o filled (a bad request: answer it now).
 */
int rhema_ai_exchange_start(struct rhema_worker *w, const char *endpoint, json_t *body,
                            rhema_ai_done_fn *done, void *arg, struct rhema_ai_outcome *o);

/* As rhema_ai_exchange_start(), with *xout the exchange (rhema_ai_exchange_cancel()). */
int rhema_ai_exchange_begin(struct rhema_worker *w, const char *endpoint, json_t *body,
                            rhema_ai_done_fn *done, void *arg, struct rhema_ai_outcome *o,
                            struct rhema_ai_exchange **xout);

/*
 * Streaming ("stream": true; doc/ai-gateway.md, "Streaming").  Until the
 * first complete server-sent event of a 2xx text/event-stream answer has
 * come, the exchange is the one above (retries, fallbacks, the
 * first-token deadline too) and done() gives any answer that is not a
 * stream (an error, a non-SSE body).  Then start() (status, content type,
 * X-Rhema-Upstream and -Attempts), chunk() for each event as it arrives
 * (the upstream's bytes, whole events), and end() once: e NULL after the
 * upstream's normal end ([DONE] passed through), else the error (cut,
 * stall, malformed event) the client is to be told in an `event: error`.
 * congested(): 1 when the client's output is over the bound; the upstream
 * is then paused until rhema_ai_exchange_resume().
 */
struct rhema_ai_stream_cb {
    rhema_ai_done_fn *done;
    void (*start)(void *arg, const struct rhema_ai_outcome *o);
    void (*chunk)(void *arg, const char *data, size_t len);
    void (*end)(void *arg, const struct rhema_ai_outcome *e);
    int (*congested)(void *arg);
};

/* As rhema_ai_exchange_start(), streaming; *xout the exchange (to cancel or resume). */
int rhema_ai_stream_start(struct rhema_worker *w, const char *endpoint, json_t *body,
                          const struct rhema_ai_stream_cb *cb, void *arg,
                          struct rhema_ai_outcome *o, struct rhema_ai_exchange **xout);
/* The client's output drained: let a paused upstream go on (from an event, never a callback). */
void rhema_ai_exchange_resume(struct rhema_ai_exchange *x);
/*
 * The client left: cancel the upstream request now and free x; no callback
 * runs after.  May be called from inside chunk() (then takes effect on return).
 */
void rhema_ai_exchange_cancel(struct rhema_ai_exchange *x);

/* The streams' counters, across workers (exported by rhema_ai_metrics_write). */
struct rhema_ai_stream_stats {
    _Atomic unsigned long long streams;          /* streams started to a client */
    _Atomic unsigned long long stream_errors;    /* streams ended by an `event: error` */
    _Atomic unsigned long long stream_cut;       /* ... the upstream cut it */
    _Atomic unsigned long long stream_stalled;   /* ... past the stall deadline */
    _Atomic unsigned long long stream_malformed; /* ... a malformed event */
    _Atomic unsigned long long first_token_timeouts; /* attempts past the first-token deadline */
    _Atomic unsigned long long client_cancels;   /* exchanges cancelled by the client leaving */
    _Atomic unsigned long long stream_pauses;    /* upstream reads paused for a slow client */
};
/* Exchanges in flight on worker w. */
unsigned rhema_ai_worker_live(const struct rhema_worker *w);

/*
 * The worker is stopping: every exchange still running ends now with 503
 * (done() is called), its upstream request cancelled; the client freed.
 */
void rhema_ai_worker_release(struct rhema_worker *w);

/*
 * GET /metrics: the gateway's families (ai/stats.h) with the gauges it
 * keeps (in flight and circuit breaker by upstream, the retry budget).
 */
struct rhema_expo;
void rhema_ai_metrics_write(const struct rhema_ai *ai, struct rhema_expo *e);

/*
 * GET /health: a component "upstream_<name>" per upstream (the name
 * lowercased, other characters than [a-z0-9_] as '_'): Unhealthy while
 * its circuit breaker is open, Degraded half-open.  Register after
 * rhema_ai_new(), unregister before rhema_ai_free() (main thread).
 */
struct rhema_health_registry;
void rhema_ai_health_register(struct rhema_ai *ai, struct rhema_health_registry *h);
void rhema_ai_health_unregister(struct rhema_ai *ai, struct rhema_health_registry *h);

#endif /* RHEMA_CORE_AI_GATEWAY_H */
