/*
 * ai/stats -- the AI gateway's counters (stats.h).
 */
#include "rhema_build.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <jansson.h>

#include "ai/client.h"
#include "ai/stats.h"
#include "metrics/metrics.h"
#include "json_fields.h"

/* The routes of the gateway (the `route` label), the last for any other. */
static const char *const endpoints[] = {"chat/completions", "completions", "embeddings"};
static const char *const routes[] = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                                     "other"};
#define NROUTES (sizeof routes / sizeof *routes)

/* The codes counted one by one; any other is counted under its class ("4xx"). */
static const int codes[] = {200, 400, 401, 403, 404, 408, 413, 422, 429, 500, 502, 503, 504};
#define NEXACT (sizeof codes / sizeof *codes)
static const char *const classes[] = {"1xx", "2xx", "3xx", "4xx", "5xx"};
#define NCODES (NEXACT + 5)

static const char *const outcome_names[RHEMA_AI_ATT_OUTCOMES] = {
    "ok", "client_error", "rate_limited", "server_error", "timeout", "connect_error", "io_error",
    "too_big"};
static const char *const skip_names[RHEMA_AI_SKIPS] = {"breaker_open", "busy"};

struct rhema_ai_stats {
    const char **ups;    /* copies of the arrays; the names are borrowed */
    const char **models;
    size_t nups, nmodels;
    /* counter offsets in the set */
    size_t req, att, retry, skip, fallback, budget, tokens, ncounters;
    struct rhema_metrics_set *set; /* histograms: one per upstream */
};

struct rhema_ai_stats *rhema_ai_stats_new(const char *const *upstreams, size_t nups,
                                          const char *const *models, size_t nmodels)
{
    struct rhema_ai_stats *st;
    if (!rhema_metrics_enabled() || !(st = calloc(1, sizeof *st)))
        return NULL;
    st->ups = calloc(nups + 1, sizeof *st->ups);
    st->models = calloc(nmodels + 1, sizeof *st->models);
    if (!st->ups || !st->models) {
        rhema_ai_stats_free(st);
        return NULL;
    }
    memcpy(st->ups, upstreams, nups * sizeof *st->ups);
    memcpy(st->models, models, nmodels * sizeof *st->models);
    st->nups = nups;
    st->nmodels = nmodels;
    st->req = 0;
    st->att = st->req + nmodels * NROUTES * NCODES;
    st->retry = st->att + nups * RHEMA_AI_ATT_OUTCOMES;
    st->skip = st->retry + nups * RHEMA_AI_ATT_OUTCOMES;
    st->fallback = st->skip + nups * RHEMA_AI_SKIPS;
    st->budget = st->fallback + nmodels;
    st->tokens = st->budget + 1;
    st->ncounters = st->tokens + nmodels * 2;
    if (!(st->set = rhema_metrics_set_new(st->ncounters, nups))) {
        rhema_ai_stats_free(st);
        return NULL;
    }
    return st;
}

void rhema_ai_stats_free(struct rhema_ai_stats *st)
{
    if (!st)
        return;
    rhema_metrics_set_free(st->set);
    free(st->ups);
    free(st->models);
    free(st);
}

enum rhema_ai_attempt_outcome rhema_ai_attempt_outcome(int client_result, long status)
{
    switch (client_result) {
    case RHEMA_AI_OK: break;
    case RHEMA_AI_ECONNECT: return RHEMA_AI_ATT_CONNECT;
    case RHEMA_AI_ETIMEOUT: return RHEMA_AI_ATT_TIMEOUT;
    case RHEMA_AI_EABORTED: return RHEMA_AI_ATT_TOO_BIG;
    default: return RHEMA_AI_ATT_IO;
    }
    if (status == 408)
        return RHEMA_AI_ATT_TIMEOUT;
    if (status == 429)
        return RHEMA_AI_ATT_RATE_LIMITED;
    if (status >= 500)
        return RHEMA_AI_ATT_SERVER_ERROR;
    if (status >= 400)
        return RHEMA_AI_ATT_CLIENT_ERROR;
    return RHEMA_AI_ATT_OK;
}

static size_t code_index(int status)
{
    for (size_t i = 0; i < NEXACT; i++)
        if (codes[i] == status)
            return i;
    if (status < 100 || status > 599)
        return NEXACT + 4; /* not an HTTP status: counted as a server error */
    return NEXACT + (size_t)(status / 100 - 1);
}

void rhema_ai_stats_request(struct rhema_ai_stats *st, size_t model, const char *endpoint,
                            int status)
{
    size_t r = NROUTES - 1;
    if (!st || model >= st->nmodels)
        return;
    for (size_t i = 0; endpoint && i < NROUTES - 1; i++)
        if (strcmp(endpoint, endpoints[i]) == 0)
            r = i;
    rhema_metrics_set_add(st->set, st->req + (model * NROUTES + r) * NCODES + code_index(status),
                          1);
}

void rhema_ai_stats_attempt(struct rhema_ai_stats *st, size_t up,
                            enum rhema_ai_attempt_outcome outcome, uint64_t ns)
{
    if (!st || up >= st->nups || (unsigned)outcome >= RHEMA_AI_ATT_OUTCOMES)
        return;
    rhema_metrics_set_add(st->set, st->att + up * RHEMA_AI_ATT_OUTCOMES + outcome, 1);
    rhema_metrics_set_observe(st->set, up, ns);
}

void rhema_ai_stats_retry(struct rhema_ai_stats *st, size_t up, enum rhema_ai_attempt_outcome why)
{
    if (!st || up >= st->nups || (unsigned)why >= RHEMA_AI_ATT_OUTCOMES)
        return;
    rhema_metrics_set_add(st->set, st->retry + up * RHEMA_AI_ATT_OUTCOMES + why, 1);
}

void rhema_ai_stats_skip(struct rhema_ai_stats *st, size_t up, enum rhema_ai_skip why)
{
    if (!st || up >= st->nups || (unsigned)why >= RHEMA_AI_SKIPS)
        return;
    rhema_metrics_set_add(st->set, st->skip + up * RHEMA_AI_SKIPS + why, 1);
}

void rhema_ai_stats_fallback(struct rhema_ai_stats *st, size_t model)
{
    if (st && model < st->nmodels)
        rhema_metrics_set_add(st->set, st->fallback + model, 1);
}

void rhema_ai_stats_budget_exhausted(struct rhema_ai_stats *st)
{
    if (st)
        rhema_metrics_set_add(st->set, st->budget, 1);
}

void rhema_ai_stats_tokens(struct rhema_ai_stats *st, size_t model, uint64_t prompt,
                           uint64_t completion)
{
    if (!st || model >= st->nmodels)
        return;
    rhema_metrics_set_add(st->set, st->tokens + model * 2, prompt);
    rhema_metrics_set_add(st->set, st->tokens + model * 2 + 1, completion);
}

void rhema_ai_stats_usage(struct rhema_ai_stats *st, size_t model, struct evbuffer *body)
{
    static const char key[] = "\"usage\"";
    const char *p, *end, *last = NULL;
    size_t len;
    if (!st || !body || (len = evbuffer_get_length(body)) < sizeof key)
        return;
    if (!(p = (const char *)evbuffer_pullup(body, -1)))
        return;
    end = p + len;
    /* the last "usage" key: OpenAI puts usage after the choices, and a "usage" inside a
     * string of the content is escaped (\"usage\"), so it does not match */
    for (const char *q = p; (q = memmem(q, (size_t)(end - q), key, sizeof key - 1)) != NULL;
         q += sizeof key - 1)
        last = q;
    if (!last)
        return;
    for (p = last + sizeof key - 1; p < end && (*p == ' ' || *p == '\t' || *p == '\n' ||
                                                *p == '\r');
         p++)
        ;
    if (p >= end || *p != ':')
        return;
    for (p++; p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'); p++)
        ;
    if (p >= end || *p != '{')
        return;
    json_t *u = rhema_json_loadb(p, (size_t)(end - p), JSON_DISABLE_EOF_CHECK, NULL);
    json_int_t pt = json_integer_value(json_object_get(u, "prompt_tokens"));
    json_int_t ct = json_integer_value(json_object_get(u, "completion_tokens"));
    json_decref(u);
    if (pt > 0 || ct > 0)
        rhema_ai_stats_tokens(st, model, pt > 0 ? (uint64_t)pt : 0, ct > 0 ? (uint64_t)ct : 0);
}

void rhema_ai_stats_write(const struct rhema_ai_stats *st, struct rhema_expo *e,
                          const struct rhema_ai_upstream_gauges *g, double budget_tokens)
{
    static const char *const k_mrc[] = {"model", "route", "code"};
    static const char *const k_uo[] = {"upstream", "outcome"};
    static const char *const k_ur[] = {"upstream", "reason"};
    static const char *const k_u[] = {"upstream"};
    static const char *const k_m[] = {"model"};
    static const char *const k_mt[] = {"model", "type"};
    if (!st)
        return;

    rhema_expo_family(e, "rhema_ai_requests", "counter",
                      "AI gateway requests answered, by model (as the client named it), route and "
                      "status code (codes other than the common ones by class: 4xx).");
    for (size_t m = 0; m < st->nmodels; m++)
        for (size_t r = 0; r < NROUTES; r++)
            for (size_t c = 0; c < NCODES; c++) {
                uint64_t n =
                    rhema_metrics_set_get(st->set, st->req + (m * NROUTES + r) * NCODES + c);
                char code[8];
                if (!n)
                    continue;
                if (c < NEXACT)
                    snprintf(code, sizeof code, "%d", codes[c]);
                else
                    snprintf(code, sizeof code, "%s", classes[c - NEXACT]);
                const char *v[] = {st->models[m], routes[r], code};
                rhema_expo_sample_u64(e, "rhema_ai_requests", "_total", 3, k_mrc, v, n);
            }

    rhema_expo_family(e, "rhema_ai_upstream_attempts", "counter",
                      "Attempts sent to each upstream, by outcome.");
    for (size_t u = 0; u < st->nups; u++)
        for (size_t o = 0; o < RHEMA_AI_ATT_OUTCOMES; o++) {
            const char *v[] = {st->ups[u], outcome_names[o]};
            rhema_expo_sample_u64(
                e, "rhema_ai_upstream_attempts", "_total", 2, k_uo, v,
                rhema_metrics_set_get(st->set, st->att + u * RHEMA_AI_ATT_OUTCOMES + o));
        }

    rhema_expo_family(e, "rhema_ai_upstream_retries", "counter",
                      "Retries after a failed attempt on each upstream, by the failure.");
    for (size_t u = 0; u < st->nups; u++)
        for (size_t o = 1; o < RHEMA_AI_ATT_OUTCOMES; o++) {
            const char *v[] = {st->ups[u], outcome_names[o]};
            rhema_expo_sample_u64(
                e, "rhema_ai_upstream_retries", "_total", 2, k_ur, v,
                rhema_metrics_set_get(st->set, st->retry + u * RHEMA_AI_ATT_OUTCOMES + o));
        }

    rhema_expo_family(e, "rhema_ai_upstream_skips", "counter",
                      "Times an upstream was passed over: circuit breaker open, or at "
                      "max_concurrent.");
    for (size_t u = 0; u < st->nups; u++)
        for (size_t s = 0; s < RHEMA_AI_SKIPS; s++) {
            const char *v[] = {st->ups[u], skip_names[s]};
            rhema_expo_sample_u64(e, "rhema_ai_upstream_skips", "_total", 2, k_ur, v,
                                  rhema_metrics_set_get(st->set,
                                                        st->skip + u * RHEMA_AI_SKIPS + s));
        }

    rhema_expo_family(e, "rhema_ai_upstream_duration_seconds", "histogram",
                      "Time from sending an attempt to its end, by upstream.");
    for (size_t u = 0; u < st->nups; u++) {
        uint64_t counts[RHEMA_METRICS_BUCKETS + 1], sum;
        rhema_metrics_set_hist(st->set, u, counts, &sum);
        rhema_expo_histogram(e, "rhema_ai_upstream_duration_seconds", 1, k_u, &st->ups[u], counts,
                             sum);
    }

    rhema_expo_family(e, "rhema_ai_upstream_in_flight", "gauge",
                      "Attempts sent to each upstream and not ended yet.");
    for (size_t u = 0; u < st->nups; u++)
        rhema_expo_sample_u64(e, "rhema_ai_upstream_in_flight", "", 1, k_u, &st->ups[u],
                              g[u].in_flight);
    rhema_expo_family(e, "rhema_ai_upstream_circuit_breaker_state", "gauge",
                      "Each upstream's circuit breaker: 0 closed, 1 open, 2 half-open (a probe "
                      "may go).");
    for (size_t u = 0; u < st->nups; u++)
        rhema_expo_sample_u64(e, "rhema_ai_upstream_circuit_breaker_state", "", 1, k_u,
                              &st->ups[u], (uint64_t)g[u].breaker);

    rhema_expo_family(e, "rhema_ai_fallbacks", "counter",
                      "Requests that left a model for its next fallback, by the model left.");
    for (size_t m = 0; m < st->nmodels; m++)
        rhema_expo_sample_u64(e, "rhema_ai_fallbacks", "_total", 1, k_m, &st->models[m],
                              rhema_metrics_set_get(st->set, st->fallback + m));
    rhema_expo_family(e, "rhema_ai_retry_budget_exhausted", "counter",
                      "Retries not made because the retry budget was spent.");
    rhema_expo_sample_u64(e, "rhema_ai_retry_budget_exhausted", "_total", 0, NULL, NULL,
                          rhema_metrics_set_get(st->set, st->budget));
    rhema_expo_family(e, "rhema_ai_retry_budget_tokens", "gauge",
                      "Retries the retry budget allows now.");
    rhema_expo_sample(e, "rhema_ai_retry_budget_tokens", "", 0, NULL, NULL, budget_tokens);

    rhema_expo_family(e, "rhema_ai_tokens", "counter",
                      "Tokens the upstreams reported in their usage, by model and type (prompt, "
                      "completion).");
    for (size_t m = 0; m < st->nmodels; m++) {
        const char *vp[] = {st->models[m], "prompt"}, *vc[] = {st->models[m], "completion"};
        rhema_expo_sample_u64(e, "rhema_ai_tokens", "_total", 2, k_mt, vp,
                              rhema_metrics_set_get(st->set, st->tokens + m * 2));
        rhema_expo_sample_u64(e, "rhema_ai_tokens", "_total", 2, k_mt, vc,
                              rhema_metrics_set_get(st->set, st->tokens + m * 2 + 1));
    }
}
