/*
 * ai/stats -- the AI gateway's counters for GET /metrics (issue 11,
 * doc/monitoring.md "AI gateway"): requests by model, route and code;
 * attempts by upstream and outcome, their latency; retries, skips,
 * fallbacks, the retry budget running dry; tokens by model from the
 * upstreams' usage.  The counters are a metrics set (metrics.h): per
 * worker, no lock on the request path.  The labels are bounded by the
 * configuration: upstream and model names, a fixed set of routes, codes
 * and outcomes.
 *
 * The gateway makes the stats in rhema_ai_new() (NULL when metrics are
 * off: every call below is then a no-op) and adds the gauges it keeps
 * itself (in flight, breaker state, budget) when it writes them.  A later
 * part of the gateway (streaming, the response cache, token limits) adds
 * its counters here, beside these.
 */
#ifndef RHEMA_CORE_AI_STATS_H
#define RHEMA_CORE_AI_STATS_H

#include <stddef.h>
#include <stdint.h>

struct evbuffer;
struct rhema_expo;
struct rhema_ai_stats;

/* An attempt's outcome, the `outcome` label of rhema_ai_upstream_attempts_total. */
enum rhema_ai_attempt_outcome {
    RHEMA_AI_ATT_OK,           /* 1xx-3xx */
    RHEMA_AI_ATT_CLIENT_ERROR, /* a 4xx other than 408 and 429: the request's own fault */
    RHEMA_AI_ATT_RATE_LIMITED, /* 429 */
    RHEMA_AI_ATT_SERVER_ERROR, /* 5xx */
    RHEMA_AI_ATT_TIMEOUT,      /* 408, or no answer in time */
    RHEMA_AI_ATT_CONNECT,      /* could not connect */
    RHEMA_AI_ATT_IO,           /* a cut or malformed response, or the call could not start */
    RHEMA_AI_ATT_TOO_BIG,      /* the response was past the gateway's limit */
    RHEMA_AI_ATT_OUTCOMES
};

/* Why an upstream was passed over: the `reason` label of rhema_ai_upstream_skips_total. */
enum rhema_ai_skip { RHEMA_AI_SKIP_BREAKER_OPEN, RHEMA_AI_SKIP_BUSY, RHEMA_AI_SKIPS };

/* The name arrays are copied; the names are borrowed and must outlive the stats.  NULL when metrics are off or out of memory. */
struct rhema_ai_stats *rhema_ai_stats_new(const char *const *upstreams, size_t nups,
                                          const char *const *models, size_t nmodels);
void rhema_ai_stats_free(struct rhema_ai_stats *st);

/* client.h's result and the HTTP status of a finished call to its outcome. */
enum rhema_ai_attempt_outcome rhema_ai_attempt_outcome(int client_result, long status);

/* A client request on model (index) and endpoint ("chat/completions" ...) answered status. */
void rhema_ai_stats_request(struct rhema_ai_stats *st, size_t model, const char *endpoint,
                            int status);
/* An attempt on upstream (index) ended with outcome after ns. */
void rhema_ai_stats_attempt(struct rhema_ai_stats *st, size_t up,
                            enum rhema_ai_attempt_outcome outcome, uint64_t ns);
void rhema_ai_stats_retry(struct rhema_ai_stats *st, size_t up,
                          enum rhema_ai_attempt_outcome why);
void rhema_ai_stats_skip(struct rhema_ai_stats *st, size_t up, enum rhema_ai_skip why);
/* The request left model (index) for its next fallback. */
void rhema_ai_stats_fallback(struct rhema_ai_stats *st, size_t model);
/* A retry was due but the retry budget was spent. */
void rhema_ai_stats_budget_exhausted(struct rhema_ai_stats *st);
/* Tokens an upstream reported for model (index). */
void rhema_ai_stats_tokens(struct rhema_ai_stats *st, size_t model, uint64_t prompt,
                           uint64_t completion);
/*
 * A JSON response body's "usage" object (OpenAI's prompt_tokens and
 * completion_tokens) counted for model; a body without one counts nothing.
 * Only the usage object is parsed, not the whole body.
 */
void rhema_ai_stats_usage(struct rhema_ai_stats *st, size_t model, struct evbuffer *body);

/* The gauges the gateway keeps, per upstream, read at scrape time. */
struct rhema_ai_upstream_gauges {
    unsigned long long in_flight;
    int breaker; /* enum rhema_ai_breaker_state: 0 closed, 1 open, 2 half-open */
};
/* Write the families (g: one per upstream). */
void rhema_ai_stats_write(const struct rhema_ai_stats *st, struct rhema_expo *e,
                          const struct rhema_ai_upstream_gauges *g, double budget_tokens);

#endif /* RHEMA_CORE_AI_STATS_H */
