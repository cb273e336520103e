/*
 * ai/gateway -- models, upstreams, selection, retries, fallbacks (gateway.h).
 *
 * The order of attempts for one request.  The chain is the requested model
 * followed, with ai_service.enable_fallback, by its `fallbacks` in order.
 * For the current model, pick_upstream() looks at its upstreams by
 * priority tier (lowest `priority` first); in a tier the model's balancing
 * strategy picks, and an upstream that this request already tried, whose
 * circuit breaker is open, or that is at max_concurrent is passed over for
 * the next one of the tier.  A failure that may succeed elsewhere or later
 * (connect error, timeout, a cut response, 408, 429, 5xx) is retried on
 * the same model while retries.max_retries and the retry budget allow,
 * after a backoff with jitter that is at least the upstream's Retry-After;
 * then the next model of the chain is tried.  Another 4xx is the answer:
 * the request itself is wrong, another upstream would say the same.
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/event.h>

#include "ai/cache.h"
#include "ai/client.h"
#include "ai/gateway.h"
#include "ai/policy.h"
#include "ai/stats.h"
#include "config.h"
#include "log.h"
#include "metrics/health.h"
#include "metrics/metrics.h"
#include "plugin.h"
#include "util.h"
#include "json_fields.h"

#define WHO "ai"
#define MAX_RESPONSE_BYTES (64u << 20) /* an upstream body past this is a failed attempt */
#define TRAIL_MAX 2048

struct upstream {
    char *name;
    char *base_url;          /* without a trailing '/' */
    char **headers;          /* NULL-terminated, for client.h: auth, content type, extra */
    long timeout_ms;
    int64_t priority;
    unsigned weight;
    unsigned max_concurrent; /* 0: no limit */
    struct rhema_ai_breaker breaker;
    struct rhema_endpoint_load load; /* in flight and latency, across models and workers */
};

struct tier {
    int64_t priority;
    size_t n;
    size_t *ups;   /* indexes into ai->ups, in balancer index order */
    const struct rhema_balancer_plugin *vt;
    rhema_balancer *b;
};

struct model {
    char *name;
    char *upstream_model;
    char *strategy;
    struct tier *tiers;
    size_t ntiers;
    size_t *fallbacks; /* indexes into ai->models */
    size_t nfallbacks;
    uint64_t first_token_ms, stall_ms; /* streaming deadlines */
};

struct rhema_ai {
    struct upstream *ups;
    size_t nups;
    struct model *models;
    size_t nmodels;
    size_t default_model; /* SIZE_MAX: none */
    int enable_fallback;
    uint64_t request_timeout_ns;
    unsigned max_retries;
    uint64_t backoff_base_ms, backoff_max_ms;
    unsigned breaker_threshold;
    uint64_t breaker_open_ns;
    struct rhema_ai_budget budget;
    int curl_inited;
    struct rhema_ai_stream_stats sstats; /* the streams' counters (gateway.h) */
    struct rhema_ai_stats *stats; /* ai/stats.h: GET /metrics; NULL when metrics are off */
    struct rhema_ai_cache *cache; /* ai_service.caching; NULL when off */
};

struct rhema_ai_worker {
    struct rhema_ai_client *client;
    TAILQ_HEAD(, rhema_ai_exchange) live;
    uint64_t rng;
};

enum fail_kind { F_NONE, F_CONNECT, F_TIMEOUT, F_IO, F_STATUS, F_TOOBIG, F_TTFT, F_MALFORMED };

struct rhema_ai_exchange {
    struct rhema_ai *ai;
    struct rhema_worker *w;
    struct rhema_ai_worker *aw;
    TAILQ_ENTRY(rhema_ai_exchange) link;
    const char *endpoint;
    json_t *body;
    rhema_ai_done_fn *done;
    void *arg;
    size_t chain[33];
    size_t nchain, pos;
    unsigned char *tried;   /* per upstream, for the current model */
    unsigned char *noted;   /* per upstream: a skip already in the trail */
    unsigned retries;       /* on the current model */
    uint64_t deadline_ns;
    struct rhema_ai_call *call;
    size_t cur_up, cur_tier, cur_idx;
    int cur_probe;
    uint64_t sent_ns;
    struct evbuffer *resp;
    struct event *retry_ev;
    enum fail_kind last_kind;
    long last_status, last_retry_after;
    int attempts_made;
    char trail[TRAIL_MAX];
    /* streaming (stream.c's part of this file: "Streams") */
    const struct rhema_ai_stream_cb *scb;
    struct evbuffer *pend;  /* received, not yet a whole event */
    struct event *tick_ev;  /* the first-token, then the stall deadline */
    struct event *resume_ev;
    int started;            /* the first event went to the client */
    int done_seen;          /* data: [DONE] passed */
    int paused;
    int sse;                /* this attempt's answer: 1 an event stream, -1 not, 0 not known yet */
    int in_cb;              /* inside a stream callback: a cancel waits for its return */
    int cancelled;
    enum fail_kind sfail;   /* why on_data stopped the stream */
};

/* ------------------------------------------------------------------------ */
/* Configuration                                                            */

static char *bearer(const char *key)
{
    size_t n = strlen(key) + 32;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, "Authorization: Bearer %s", key);
    return s;
}

/* ai_service.<list>[i].<key> */
static int get_int(const struct rhema_config *cfg, const char *list, size_t i, const char *key,
                   int64_t *v)
{
    char p[256];
    snprintf(p, sizeof p, "ai_service.%s[%zu].%s", list, i, key);
    return rhema_config_get_int(cfg, p, v);
}

static const char *get_str(const struct rhema_config *cfg, const char *list, size_t i,
                           const char *key)
{
    char p[256];
    const char *v = "";
    snprintf(p, sizeof p, "ai_service.%s[%zu].%s", list, i, key);
    if (rhema_config_get_string(cfg, p, &v))
        return "";
    return v;
}

static size_t find_up(const struct rhema_ai *ai, const char *name)
{
    for (size_t i = 0; i < ai->nups; i++)
        if (strcmp(ai->ups[i].name, name) == 0)
            return i;
    return SIZE_MAX;
}

static size_t find_model(const struct rhema_ai *ai, const char *name)
{
    for (size_t i = 0; i < ai->nmodels; i++)
        if (strcmp(ai->models[i].name, name) == 0)
            return i;
    return SIZE_MAX;
}

static int load_upstreams(struct rhema_ai *ai, const struct rhema_config *cfg, char **err)
{
    int n = rhema_config_get_count(cfg, "ai_service.upstreams");
    if (n <= 0)
        return rhema_set_error(err, RHEMA_EINVAL,
                               "ai_service.enabled needs at least one ai_service.upstreams entry");
    if (!(ai->ups = calloc((size_t)n, sizeof *ai->ups)))
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    ai->nups = (size_t)n;
    for (size_t i = 0; i < ai->nups; i++) {
        struct upstream *u = &ai->ups[i];
        const char *url = get_str(cfg, "upstreams", i, "base_url");
        const char *env = get_str(cfg, "upstreams", i, "api_key_env");
        char p[256];
        int nh;
        size_t h = 0, len;
        int64_t v = 0;
        u->name = strdup(get_str(cfg, "upstreams", i, "name"));
        len = strlen(url);
        while (len && url[len - 1] == '/')
            len--;
        u->base_url = strndup(url, len);
        if (!u->name || !u->base_url)
            return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
        get_int(cfg, "upstreams", i, "timeout_seconds", &v);
        u->timeout_ms = (long)v * 1000;
        get_int(cfg, "upstreams", i, "priority", &u->priority);
        get_int(cfg, "upstreams", i, "weight", &v);
        u->weight = (unsigned)v;
        get_int(cfg, "upstreams", i, "max_concurrent", &v);
        u->max_concurrent = (unsigned)v;
        snprintf(p, sizeof p, "ai_service.upstreams[%zu].headers", i);
        nh = rhema_config_get_count(cfg, p);
        if (nh < 0)
            nh = 0;
        if (!(u->headers = calloc((size_t)nh + 3, sizeof *u->headers)))
            return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
        if (!(u->headers[h++] = strdup("Content-Type: application/json")))
            return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
        if (*env) {
            const char *key = getenv(env);
            if (!key || !*key)
                return rhema_set_error(err, RHEMA_EINVAL,
                                       "ai_service.upstreams[%zu].api_key_env: the environment "
                                       "variable %s is not set (upstream '%s')",
                                       i, env, u->name);
            if (!(u->headers[h++] = bearer(key)))
                return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
        }
        for (int j = 0; j < nh; j++) {
            const char *hv = "";
            snprintf(p, sizeof p, "ai_service.upstreams[%zu].headers[%d]", i, j);
            rhema_config_get_string(cfg, p, &hv);
            if (!(u->headers[h++] = strdup(hv)))
                return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
        }
    }
    return 0;
}

static int cmp_prio(const void *a, const void *b, void *arg)
{
    const struct rhema_ai *ai = arg;
    int64_t pa = ai->ups[*(const size_t *)a].priority, pb = ai->ups[*(const size_t *)b].priority;
    return pa < pb ? -1 : pa > pb;
}

/* Group a model's upstreams (ups[n]) into tiers of equal priority, each with a balancer. */
static int model_tiers(struct rhema_ai *ai, struct model *m, size_t *ups, size_t n,
                       const struct rhema_loaded_plugin *lp, const struct rhema_config *cfg,
                       char **err)
{
    qsort_r(ups, n, sizeof *ups, cmp_prio, ai);
    for (size_t i = 0; i < n;) {
        size_t j = i;
        struct tier *t;
        struct rhema_endpoint *eps;
        char *perr = NULL;
        int rc;
        while (j < n && ai->ups[ups[j]].priority == ai->ups[ups[i]].priority)
            j++;
        t = &m->tiers[m->ntiers++];
        t->priority = ai->ups[ups[i]].priority;
        t->n = j - i;
        if (!(t->ups = malloc(t->n * sizeof *t->ups)) || !(eps = calloc(t->n, sizeof *eps)))
            return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
        for (size_t k = 0; k < t->n; k++) {
            struct upstream *u = &ai->ups[ups[i + k]];
            t->ups[k] = ups[i + k];
            eps[k].size = sizeof eps[k];
            eps[k].id = u->name;
            eps[k].address = u->base_url;
            eps[k].weight = u->weight;
            eps[k].load = &u->load;
        }
        t->vt = &lp->vt.balancer;
        rc = t->vt->create(rhema_host_get(),
                           rhema_config_plugin_group(cfg, RHEMA_KIND_BALANCER, m->strategy), &t->b,
                           &perr);
        if (rc == 0 && (rc = t->vt->update(t->b, eps, t->n)) != 0)
            perr = strdup("the strategy refused the upstreams");
        free(eps);
        if (rc) {
            rhema_set_error(err, rc, "model '%s': balancing strategy '%s': %s", m->name,
                            m->strategy, perr ? perr : rhema_strerror(rc));
            free(perr);
            return rc;
        }
        i = j;
    }
    return 0;
}

static int load_models(struct rhema_ai *ai, const struct rhema_config *cfg,
                       struct rhema_plugin_registry *reg, char **err)
{
    int n = rhema_config_get_count(cfg, "ai_service.models");
    const char *dm = "";
    if (n <= 0)
        return rhema_set_error(err, RHEMA_EINVAL,
                               "ai_service.enabled needs at least one ai_service.models entry");
    if (!(ai->models = calloc((size_t)n, sizeof *ai->models)))
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    ai->nmodels = (size_t)n;
    int64_t ttft = 30, stall = 30;
    rhema_config_get_int(cfg, "ai_service.first_token_timeout_seconds", &ttft);
    rhema_config_get_int(cfg, "ai_service.stall_timeout_seconds", &stall);
    for (size_t i = 0; i < ai->nmodels; i++) {
        struct model *m = &ai->models[i];
        int64_t v = 0;
        if (get_int(cfg, "models", i, "first_token_timeout_seconds", &v) || v <= 0)
            v = ttft;
        m->first_token_ms = (uint64_t)v * 1000;
        v = 0;
        if (get_int(cfg, "models", i, "stall_timeout_seconds", &v) || v <= 0)
            v = stall;
        m->stall_ms = (uint64_t)v * 1000;
    }
    for (size_t i = 0; i < ai->nmodels; i++) {
        struct model *m = &ai->models[i];
        const char *um = get_str(cfg, "models", i, "upstream_model");
        const char *st = get_str(cfg, "models", i, "strategy");
        m->name = strdup(get_str(cfg, "models", i, "name"));
        if (!m->name || !(m->upstream_model = strdup(*um ? um : m->name)) ||
            !(m->strategy = strdup(*st ? st : cfg->balancing_strategy && *cfg->balancing_strategy
                                                  ? cfg->balancing_strategy
                                                  : "round_robin")))
            return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < ai->nmodels; i++) {
        struct model *m = &ai->models[i];
        char p[256];
        int nu, nf;
        size_t *ups;
        const struct rhema_loaded_plugin *lp = rhema_plugin_find(reg, RHEMA_KIND_BALANCER,
                                                                 m->strategy);
        int rc;
        if (!lp && (rc = rhema_plugin_load(reg, m->strategy, cfg->plugin_directory,
                                           RHEMA_KIND_BALANCER, &lp, err)))
            return rc;
        snprintf(p, sizeof p, "ai_service.models[%zu].upstream", i);
        nu = rhema_config_get_count(cfg, p);
        if (nu <= 0) { /* no upstream named: every upstream serves the model */
            nu = (int)ai->nups;
            if (!(ups = malloc(ai->nups * sizeof *ups)))
                return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
            for (size_t k = 0; k < ai->nups; k++)
                ups[k] = k;
        } else {
            if (!(ups = malloc((size_t)nu * sizeof *ups)))
                return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
            for (int k = 0; k < nu; k++) {
                const char *un = "";
                snprintf(p, sizeof p, "ai_service.models[%zu].upstream[%d]", i, k);
                rhema_config_get_string(cfg, p, &un);
                if ((ups[k] = find_up(ai, un)) == SIZE_MAX) {
                    free(ups);
                    return rhema_set_error(err, RHEMA_EINVAL,
                                           "ai_service.models[%zu].upstream: no upstream '%s'", i,
                                           un);
                }
            }
        }
        if (!(m->tiers = calloc((size_t)nu, sizeof *m->tiers))) {
            free(ups);
            return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
        }
        rc = model_tiers(ai, m, ups, (size_t)nu, lp, cfg, err);
        free(ups);
        if (rc)
            return rc;
        snprintf(p, sizeof p, "ai_service.models[%zu].fallbacks", i);
        nf = rhema_config_get_count(cfg, p);
        if (nf > 32)
            return rhema_set_error(err, RHEMA_EINVAL, "ai_service.models[%zu].fallbacks: at "
                                   "most 32 models", i);
        if (nf > 0 && !(m->fallbacks = calloc((size_t)nf, sizeof *m->fallbacks)))
            return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
        for (int k = 0; k < nf; k++) {
            const char *fn = "";
            snprintf(p, sizeof p, "ai_service.models[%zu].fallbacks[%d]", i, k);
            rhema_config_get_string(cfg, p, &fn);
            if ((m->fallbacks[k] = find_model(ai, fn)) == SIZE_MAX || m->fallbacks[k] == i)
                return rhema_set_error(err, RHEMA_EINVAL,
                                       "ai_service.models[%zu].fallbacks: '%s' is %s", i, fn,
                                       m->fallbacks[k] == i ? "the model itself"
                                                            : "no model of ai_service.models");
            m->nfallbacks++;
        }
    }
    ai->default_model = SIZE_MAX;
    rhema_config_get_string(cfg, "ai_service.default_model", &dm);
    if (*dm && (ai->default_model = find_model(ai, dm)) == SIZE_MAX)
        return rhema_set_error(err, RHEMA_EINVAL, "ai_service.default_model: no model '%s'", dm);
    return 0;
}

/* ai_service.caching: the shared response cache (ai/cache.h). */
static int load_cache(struct rhema_ai *ai, const struct rhema_config *cfg, char **err)
{
    struct rhema_ai_cache_limits lim;
    int enabled = 0;
    int64_t ttl = 300, size = 104857600, entry = 4194304, count = 10000;
    rhema_config_get_bool(cfg, "ai_service.caching.enabled", &enabled);
    if (!enabled)
        return 0;
    rhema_config_get_int(cfg, "ai_service.caching.ttl_seconds", &ttl);
    rhema_config_get_int(cfg, "ai_service.caching.max_size_bytes", &size);
    rhema_config_get_int(cfg, "ai_service.caching.max_entry_bytes", &entry);
    rhema_config_get_int(cfg, "ai_service.caching.max_entries", &count);
    if (entry > size)
        return rhema_set_error(err, RHEMA_EINVAL,
                               "ai_service.caching.max_entry_bytes (%lld) is larger than "
                               "ai_service.caching.max_size_bytes (%lld)",
                               (long long)entry, (long long)size);
    lim.ttl_ns = (uint64_t)ttl * 1000000000u;
    lim.max_size_bytes = (size_t)size;
    lim.max_entry_bytes = (size_t)entry;
    lim.max_entries = (size_t)count;
    return rhema_ai_cache_new(&lim, &ai->cache, err);
}

struct rhema_ai_cache *rhema_ai_cache_of(const struct rhema_ai *ai)
{
    return ai ? ai->cache : NULL;
}

const char *rhema_ai_default_model(const struct rhema_ai *ai)
{
    return ai->default_model == SIZE_MAX ? NULL : ai->models[ai->default_model].name;
}

int rhema_ai_new(const struct rhema_config *cfg, struct rhema_plugin_registry *reg,
                 struct rhema_ai **out, char **err)
{
    struct rhema_ai *ai;
    int enabled = 0, rc;
    int64_t v;
    *out = NULL;
    rhema_config_get_bool(cfg, "ai_service.enabled", &enabled);
    if (!enabled)
        return 0;
    if (!(ai = calloc(1, sizeof *ai)))
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        free(ai);
        return rhema_set_error(err, RHEMA_EIO, "libcurl failed to initialise");
    }
    ai->curl_inited = 1;
    rhema_config_get_bool(cfg, "ai_service.enable_fallback", &ai->enable_fallback);
    rhema_config_get_int(cfg, "ai_service.request_timeout_seconds", &v);
    ai->request_timeout_ns = (uint64_t)v * 1000000000u;
    rhema_config_get_int(cfg, "ai_service.retries.max_retries", &v);
    ai->max_retries = (unsigned)v;
    rhema_config_get_int(cfg, "ai_service.retries.backoff_base_ms", &v);
    ai->backoff_base_ms = (uint64_t)v;
    rhema_config_get_int(cfg, "ai_service.retries.backoff_max_ms", &v);
    ai->backoff_max_ms = (uint64_t)v;
    {
        int64_t pct = 20, reserve = 10;
        rhema_config_get_int(cfg, "ai_service.retries.budget_percent", &pct);
        rhema_config_get_int(cfg, "ai_service.retries.budget_reserve", &reserve);
        rhema_ai_budget_init(&ai->budget, (unsigned)pct, (unsigned)reserve);
    }
    rhema_config_get_int(cfg, "ai_service.circuit_breaker.failure_threshold", &v);
    ai->breaker_threshold = (unsigned)v;
    rhema_config_get_int(cfg, "ai_service.circuit_breaker.open_seconds", &v);
    ai->breaker_open_ns = (uint64_t)v * 1000000000u;
    if ((rc = load_upstreams(ai, cfg, err)) || (rc = load_models(ai, cfg, reg, err)) ||
        (rc = load_cache(ai, cfg, err))) {
        rhema_ai_free(ai);
        return rc;
    }
    {
        const char **un = calloc(ai->nups + 1, sizeof *un), **mn = calloc(ai->nmodels + 1, sizeof *mn);
        for (size_t i = 0; un && i < ai->nups; i++)
            un[i] = ai->ups[i].name;
        for (size_t i = 0; mn && i < ai->nmodels; i++)
            mn[i] = ai->models[i].name;
        if (un && mn)
            ai->stats = rhema_ai_stats_new(un, ai->nups, mn, ai->nmodels);
        free(un);
        free(mn);
    }
    rhema_log(RHEMA_LOG_INFO, WHO, "AI gateway: %zu models, %zu upstreams", ai->nmodels,
              ai->nups);
    *out = ai;
    return 0;
}

void rhema_ai_free(struct rhema_ai *ai)
{
    if (!ai)
        return;
    rhema_ai_stats_free(ai->stats);
    rhema_ai_cache_free(ai->cache);
    for (size_t i = 0; i < ai->nmodels; i++) {
        struct model *m = &ai->models[i];
        for (size_t t = 0; t < m->ntiers; t++) {
            if (m->tiers[t].b)
                m->tiers[t].vt->destroy(m->tiers[t].b);
            free(m->tiers[t].ups);
        }
        free(m->tiers);
        free(m->fallbacks);
        free(m->name);
        free(m->upstream_model);
        free(m->strategy);
    }
    free(ai->models);
    for (size_t i = 0; i < ai->nups; i++) {
        for (char **h = ai->ups[i].headers; h && *h; h++) {
            explicit_bzero(*h, strlen(*h)); /* the API key */
            free(*h);
        }
        free(ai->ups[i].headers);
        free(ai->ups[i].name);
        free(ai->ups[i].base_url);
    }
    free(ai->ups);
    if (ai->curl_inited)
        curl_global_cleanup();
    free(ai);
}

json_t *rhema_ai_models_json(const struct rhema_ai *ai)
{
    json_t *data = json_array();
    for (size_t i = 0; ai && i < ai->nmodels; i++)
        json_array_append_new(data, json_pack("{s:s,s:s,s:i,s:s}", "id", ai->models[i].name,
                                              "object", "model", "created", 0, "owned_by",
                                              "rhema"));
    return json_pack("{s:s,s:o}", "object", "list", "data", data);
}

/* ------------------------------------------------------------------------ */
/* Exchanges                                                                */

static uint64_t rnd(struct rhema_ai_worker *aw)
{
    uint64_t x = aw->rng; /* xorshift64 */
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return aw->rng = x;
}

static struct rhema_ai_worker *worker_ai(struct rhema_worker *w, char **err)
{
    struct rhema_ai_worker *aw = w->ai;
    int rc;
    if (aw)
        return aw;
    if (!(aw = calloc(1, sizeof *aw))) {
        rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
        return NULL;
    }
    if ((rc = rhema_ai_client_new(w->base, &aw->client, err))) {
        free(aw);
        return NULL;
    }
    TAILQ_INIT(&aw->live);
    aw->rng = rhema_realtime_ns() ^ ((uint64_t)(uintptr_t)aw << 16) ^ (uint64_t)w->id;
    if (!aw->rng)
        aw->rng = 88172645463325252ull;
    w->ai = aw;
    return aw;
}

static void trail_add(struct rhema_ai_exchange *x, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void trail_add(struct rhema_ai_exchange *x, const char *fmt, ...)
{
    size_t len = strlen(x->trail);
    va_list ap;
    if (len + 8 >= sizeof x->trail)
        return;
    if (len)
        len += (size_t)snprintf(x->trail + len, sizeof x->trail - len, ", ");
    va_start(ap, fmt);
    vsnprintf(x->trail + len, sizeof x->trail - len, fmt, ap);
    va_end(ap);
}

static void exchange_free(struct rhema_ai_exchange *x)
{
    TAILQ_REMOVE(&x->aw->live, x, link);
    if (x->call)
        rhema_ai_call_cancel(x->call);
    if (x->retry_ev)
        event_free(x->retry_ev);
    if (x->resp)
        evbuffer_free(x->resp);
    if (x->pend)
        evbuffer_free(x->pend);
    if (x->tick_ev)
        event_free(x->tick_ev);
    if (x->resume_ev)
        event_free(x->resume_ev);
    json_decref(x->body);
    free(x->tried);
    free(x->noted);
    free(x);
}

static void finish(struct rhema_ai_exchange *x, struct rhema_ai_outcome *o)
{
    if (!o->attempts)
        o->attempts = x->trail;
    if (!o->upstream)
        o->upstream = "";
    rhema_ai_stats_request(x->ai->stats, x->chain[0], x->endpoint, o->status);
    if (x->scb)
        x->scb->done(x->arg, o);
    else
        x->done(x->arg, o);
    exchange_free(x);
}

static void fail_final(struct rhema_ai_exchange *x, int nothing_sent)
{
    struct rhema_ai_outcome o = {.retry_after = -1, .error_type = "upstream_error"};
    const char *model = x->ai->models[x->chain[0]].name;
    if (nothing_sent && x->attempts_made == 0) {
        o.status = 503;
        o.error_code = "no_upstream_available";
        snprintf(o.message, sizeof o.message,
                 "no upstream of model '%s'%s can take the request now (circuit breakers open or "
                 "max_concurrent reached)",
                 model, x->nchain > 1 ? " or its fallbacks" : "");
    } else if (x->last_kind == F_STATUS && x->last_status == 429) {
        o.status = 429;
        o.error_type = "rate_limit_error";
        o.error_code = "upstream_rate_limited";
        o.retry_after = x->last_retry_after;
        snprintf(o.message, sizeof o.message, "every upstream tried for model '%s' is rate "
                 "limited (%d attempts)", model, x->attempts_made);
    } else if (x->last_kind == F_TIMEOUT) {
        o.status = 504;
        o.error_code = "upstream_timeout";
        snprintf(o.message, sizeof o.message, "the upstreams of model '%s' did not answer in "
                 "time (%d attempts)", model, x->attempts_made);
    } else {
        o.status = 502;
        o.error_code = "upstream_failed";
        snprintf(o.message, sizeof o.message, "every upstream tried for model '%s' failed "
                 "(%d attempts; see X-Rhema-Attempts)", model, x->attempts_made);
    }
    finish(x, &o);
}

/* May upstream u take an attempt of x now?  Notes a skip in the trail once. */
static int available(struct rhema_ai_exchange *x, size_t ui, const struct model *m, int *probe)
{
    struct upstream *u = &x->ai->ups[ui];
    const char *why = NULL;
    *probe = 0;
    if (u->max_concurrent && atomic_load(&u->load.inflight) >= u->max_concurrent)
        why = "busy";
    else if (!rhema_ai_breaker_allow(&u->breaker, rhema_monotonic_ns(), probe))
        why = "breaker_open";
    if (why)
        rhema_ai_stats_skip(x->ai->stats, ui,
                            strcmp(why, "busy") == 0 ? RHEMA_AI_SKIP_BUSY : RHEMA_AI_SKIP_BREAKER_OPEN);
    if (!why)
        return 1;
    if (!x->noted[ui]) {
        x->noted[ui] = 1;
        trail_add(x, "%s@%s %s skip", m->name, u->name, why);
    }
    return 0;
}

/*
 * The next upstream for the current model: lowest tier first, the
 * strategy's pick, then the rest of the tier in order.  allow_tried: an
 * upstream this request already tried may be taken again (a retry when
 * the model has no other).
 */
static int pick_upstream(struct rhema_ai_exchange *x, int allow_tried)
{
    const struct model *m = &x->ai->models[x->chain[x->pos]];
    for (size_t t = 0; t < m->ntiers; t++) {
        const struct tier *tr = &m->tiers[t];
        struct rhema_pick_ctx ctx = {.size = sizeof ctx, .random = rnd(x->aw)};
        size_t start = 0;
        if (tr->vt->pick(tr->b, &ctx, &start) || start >= tr->n)
            start = 0;
        for (size_t k = 0; k < tr->n; k++) {
            size_t idx = (start + k) % tr->n, ui = tr->ups[idx];
            int probe;
            if (x->tried[ui] && !allow_tried)
                continue;
            if (!available(x, ui, m, &probe))
                continue;
            x->cur_up = ui;
            x->cur_tier = t;
            x->cur_idx = idx;
            x->cur_probe = probe;
            return 0;
        }
    }
    return -1;
}

static void attempt(struct rhema_ai_exchange *x);
static long stream_arm(struct rhema_ai_exchange *x, const struct model *m);
static const struct rhema_ai_call_cb stream_call_cb;

static void on_retry_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    attempt(arg);
}

/* Report the attempt's outcome to the load, the balancer and the breaker. */
static void account(struct rhema_ai_exchange *x, int ok, int counts)
{
    struct upstream *u = &x->ai->ups[x->cur_up];
    const struct tier *tr = &x->ai->models[x->chain[x->pos]].tiers[x->cur_tier];
    uint64_t now = rhema_monotonic_ns(), lat = now - x->sent_ns;
    unsigned long long e = atomic_load(&u->load.ewma_ns);
    atomic_fetch_sub(&u->load.inflight, 1);
    atomic_store(&u->load.ewma_ns, e ? e - e / 8 + lat / 8 : lat);
    atomic_fetch_add(&u->load.samples, 1);
    if (!ok)
        atomic_fetch_add(&u->load.failures, 1);
    if (tr->vt->feedback)
        tr->vt->feedback(tr->b, x->cur_idx, lat, ok);
    if (counts)
        rhema_ai_breaker_record(&u->breaker, ok, now, x->ai->breaker_threshold,
                                x->ai->breaker_open_ns);
    else if (x->cur_probe)
        rhema_ai_breaker_release(&u->breaker);
}

static const char *kind_word(enum fail_kind k, long status, char buf[16])
{
    switch (k) {
    case F_CONNECT: return "connect_error";
    case F_TIMEOUT: return "timeout";
    case F_IO: return "io_error";
    case F_TOOBIG: return "too_big";
    case F_TTFT: return "first_token_timeout";
    case F_MALFORMED: return "malformed_event";
    default: snprintf(buf, 16, "%ld", status); return buf;
    }
}

/* A failure's kind as the metrics' attempt outcome. */
static enum rhema_ai_attempt_outcome kind_outcome(enum fail_kind k, long status)
{
    switch (k) {
    case F_CONNECT: return RHEMA_AI_ATT_CONNECT;
    case F_TIMEOUT: return RHEMA_AI_ATT_TIMEOUT;
    case F_TOOBIG: return RHEMA_AI_ATT_TOO_BIG;
    case F_STATUS: return rhema_ai_attempt_outcome(RHEMA_AI_OK, status);
    default: return RHEMA_AI_ATT_IO;
    }
}

/* The attempt failed in a way another try may mend: retry, fall back, or give up. */
static void retry_or_fallback(struct rhema_ai_exchange *x, enum fail_kind kind, long status,
                              long retry_after)
{
    struct rhema_ai *ai = x->ai;
    const struct model *m = &ai->models[x->chain[x->pos]];
    const char *uname = ai->ups[x->cur_up].name;
    uint64_t now = rhema_monotonic_ns(), delay_ms;
    char sb[16];
    x->last_kind = kind;
    x->last_status = status;
    x->last_retry_after = retry_after;
    delay_ms = rhema_ai_backoff_ms(x->retries + 1, ai->backoff_base_ms, ai->backoff_max_ms,
                                   rnd(x->aw));
    if (retry_after >= 0 && (uint64_t)retry_after * 1000 > delay_ms)
        delay_ms = (uint64_t)retry_after * 1000;
    int may_retry = x->retries < ai->max_retries && now + delay_ms * 1000000u < x->deadline_ns;
    if (may_retry && !rhema_ai_budget_withdraw(&ai->budget)) {
        may_retry = 0;
        rhema_ai_stats_budget_exhausted(ai->stats);
    }
    if (may_retry) {
        rhema_ai_stats_retry(ai->stats, x->cur_up, kind_outcome(kind, status));
        struct timeval tv = {.tv_sec = (time_t)(delay_ms / 1000),
                             .tv_usec = (suseconds_t)(delay_ms % 1000) * 1000};
        x->retries++;
        trail_add(x, "%s@%s %s retry", m->name, uname, kind_word(kind, status, sb));
        if (!x->retry_ev && !(x->retry_ev = evtimer_new(x->w->base, on_retry_timer, x))) {
            fail_final(x, 0);
            return;
        }
        evtimer_add(x->retry_ev, &tv);
        return;
    }
    if (x->pos + 1 < x->nchain) {
        trail_add(x, "%s@%s %s fallback", m->name, uname, kind_word(kind, status, sb));
        rhema_ai_stats_fallback(ai->stats, x->chain[x->pos]);
        x->pos++;
        x->retries = 0;
        memset(x->tried, 0, ai->nups);
        memset(x->noted, 0, ai->nups);
        attempt(x);
        return;
    }
    trail_add(x, "%s@%s %s", m->name, uname, kind_word(kind, status, sb));
    fail_final(x, 0);
}

static int on_data(void *arg, struct rhema_ai_call *call, const char *buf, size_t len)
{
    struct rhema_ai_exchange *x = arg;
    (void)call;
    if (evbuffer_get_length(x->resp) + len > MAX_RESPONSE_BYTES)
        return 1;
    return evbuffer_add(x->resp, buf, len) != 0;
}

static void on_done(void *arg, struct rhema_ai_call *call, enum rhema_ai_result res,
                    const char *why)
{
    struct rhema_ai_exchange *x = arg;
    struct upstream *u = &x->ai->ups[x->cur_up];
    long status = rhema_ai_call_status(call);
    x->call = NULL; /* freed by client.c after this returns */
    rhema_ai_stats_attempt(x->ai->stats, x->cur_up, rhema_ai_attempt_outcome((int)res, status),
                           rhema_monotonic_ns() - x->sent_ns);
    if (res != RHEMA_AI_OK) {
        enum fail_kind k = res == RHEMA_AI_ECONNECT   ? F_CONNECT
                           : res == RHEMA_AI_ETIMEOUT ? F_TIMEOUT
                           : res == RHEMA_AI_EABORTED ? F_TOOBIG
                                                      : F_IO;
        rhema_log(RHEMA_LOG_NOTICE, WHO, "upstream '%s': %s", u->name, why);
        account(x, 0, 1);
        evbuffer_drain(x->resp, evbuffer_get_length(x->resp));
        retry_or_fallback(x, k, 0, -1);
        return;
    }
    if (status == 408 || status == 429 || status >= 500) {
        long ra = rhema_ai_call_retry_after(call);
        account(x, 0, 1);
        evbuffer_drain(x->resp, evbuffer_get_length(x->resp));
        retry_or_fallback(x, F_STATUS, status, ra);
        return;
    }
    /* 2xx, or a 4xx that is the request's own fault: the upstream works */
    account(x, status < 400, 1);
    {
        const struct model *m = &x->ai->models[x->chain[x->pos]];
        char ctype[128];
        struct rhema_ai_outcome o = {.status = (int)status, .body = x->resp,
                                     .retry_after = -1, .upstream = u->name};
        snprintf(ctype, sizeof ctype, "%s", rhema_ai_call_content_type(call));
        o.content_type = *ctype ? ctype : "application/json";
        if (status < 300)
            rhema_ai_stats_usage(x->ai->stats, x->chain[x->pos], x->resp);
        trail_add(x, "%s@%s %ld", m->name, u->name, status);
        finish(x, &o);
    }
}

static const struct rhema_ai_call_cb call_cb = {on_data, on_done};

/* Send the next attempt of x, or end it. */
static void attempt(struct rhema_ai_exchange *x)
{
    struct rhema_ai *ai = x->ai;
    for (;;) {
        if (rhema_monotonic_ns() >= x->deadline_ns) {
            if (x->attempts_made == 0)
                x->last_kind = F_TIMEOUT;
            fail_final(x, 0);
            return;
        }
        if (pick_upstream(x, 0) == 0 || (x->retries > 0 && pick_upstream(x, 1) == 0))
            break;
        /* this model has nothing left: the next of the chain */
        if (x->pos + 1 >= x->nchain) {
            fail_final(x, 1);
            return;
        }
        trail_add(x, "%s exhausted fallback", ai->models[x->chain[x->pos]].name);
        rhema_ai_stats_fallback(ai->stats, x->chain[x->pos]);
        x->pos++;
        x->retries = 0;
        memset(x->tried, 0, ai->nups);
        memset(x->noted, 0, ai->nups);
    }
    {
        const struct model *m = &ai->models[x->chain[x->pos]];
        struct upstream *u = &ai->ups[x->cur_up];
        char url[1024];
        char *body, *err = NULL;
        uint64_t now = rhema_monotonic_ns();
        long tmo = u->timeout_ms, left = (long)((x->deadline_ns - now) / 1000000u);
        if (left < 1)
            left = 1;
        if (tmo > left)
            tmo = left;
        if (x->scb)
            tmo = stream_arm(x, m); /* deadlines of its own: the first token, the stalls */
        json_object_set_new(x->body, "model", json_string(m->upstream_model));
        body = json_dumps(x->body, JSON_COMPACT | JSON_REAL_PRECISION(17));
        snprintf(url, sizeof url, "%s/%s", u->base_url, x->endpoint);
        x->tried[x->cur_up] = 1;
        x->attempts_made++;
        atomic_fetch_add(&u->load.inflight, 1);
        x->sent_ns = now;
        x->call = body ? rhema_ai_call_start(x->aw->client, url, (const char *const *)u->headers,
                                             body, strlen(body), tmo,
                                             x->scb ? &stream_call_cb : &call_cb, x, &err)
                       : NULL;
        free(body);
        if (!x->call) {
            rhema_log(RHEMA_LOG_ERROR, WHO, "upstream '%s': %s", u->name,
                      err ? err : "out of memory");
            free(err);
            rhema_ai_stats_attempt(ai->stats, x->cur_up, RHEMA_AI_ATT_IO, 0);
            account(x, 0, 0);
            retry_or_fallback(x, F_IO, 0, -1);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Streams ("stream": true)                                                 */

#define STREAM_EVENT_MAX (1u << 20)    /* an event longer than this is malformed */

static void set_ms(struct event *ev, uint64_t ms)
{
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(ev, &tv);
}

static const struct model *cur_model(const struct rhema_ai_exchange *x)
{
    return &x->ai->models[x->chain[x->pos]];
}

/* A new attempt of a stream: its first-token deadline; the curl timeout (none: ours). */
static long stream_arm(struct rhema_ai_exchange *x, const struct model *m)
{
    uint64_t left = (x->deadline_ns - rhema_monotonic_ns()) / 1000000u, ms = m->first_token_ms;
    x->sse = 0;
    x->started = x->done_seen = 0;
    x->sfail = F_NONE;
    evbuffer_drain(x->pend, evbuffer_get_length(x->pend));
    set_ms(x->tick_ev, ms < left ? ms : left ? left : 1);
    return 0;
}

/* Past the end of the first whole event of p[0..n) (its blank line), or 0. */
static size_t event_end(const char *p, size_t n)
{
    for (size_t i = 0; i + 1 < n; i++) {
        if (p[i] != '\n')
            continue;
        if (p[i + 1] == '\n')
            return i + 2;
        if (p[i + 1] == '\r' && i + 2 < n && p[i + 2] == '\n')
            return i + 3;
    }
    return 0;
}

/* An event's data (its data: lines joined): 1 "[DONE]", 0 JSON or no data, -1 malformed. */
static int event_check(const char *p, size_t n)
{
    char *data = NULL;
    size_t dlen = 0;
    int any = 0, rc = 0;
    for (size_t i = 0; i < n;) {
        const char *nl = memchr(p + i, '\n', n - i);
        size_t e = nl ? (size_t)(nl - p) : n, len = e - i;
        const char *l = p + i;
        if (len && l[len - 1] == '\r')
            len--;
        if (len >= 5 && memcmp(l, "data:", 5) == 0) {
            const char *v = l + 5;
            size_t vl = len - 5;
            char *nd;
            if (vl && *v == ' ')
                v++, vl--;
            if (!(nd = realloc(data, dlen + vl + 2))) {
                free(data);
                return -1;
            }
            data = nd;
            if (any)
                data[dlen++] = '\n';
            memcpy(data + dlen, v, vl);
            dlen += vl;
            any = 1;
        }
        i = e + 1;
    }
    if (any) {
        if (dlen == 6 && memcmp(data, "[DONE]", 6) == 0) {
            rc = 1;
        } else {
            json_t *j = rhema_json_loadb(data, dlen, 0, NULL);
            rc = j ? 0 : -1;
            json_decref(j);
        }
    }
    free(data);
    return rc;
}

/* End a stream that reached the client with an `event: error` (the caller accounted the attempt). */
static void stream_fail(struct rhema_ai_exchange *x, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void stream_fail(struct rhema_ai_exchange *x, const char *code, const char *fmt, ...)
{
    struct rhema_ai_outcome o = {.status = 502, .retry_after = -1, .error_type = "upstream_error",
                                 .error_code = code, .upstream = x->ai->ups[x->cur_up].name,
                                 .attempts = x->trail};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(o.message, sizeof o.message, fmt, ap);
    va_end(ap);
    atomic_fetch_add(&x->ai->sstats.stream_errors, 1);
    rhema_log(RHEMA_LOG_WARN, WHO, "stream of model '%s' from upstream '%s' ended with an error "
              "event: %s", cur_model(x)->name, o.upstream, o.message);
    if (x->tick_ev)
        evtimer_del(x->tick_ev);
    x->scb->end(x->arg, &o);
    exchange_free(x);
}

/* Pass on the whole events received; 1 to stop the transfer (x->sfail or x->cancelled says why). */
static int stream_pump(struct rhema_ai_exchange *x)
{
    for (;;) {
        size_t n = evbuffer_get_length(x->pend), e;
        const char *p;
        int v;
        if (!n)
            return 0;
        p = (const char *)evbuffer_pullup(x->pend, -1);
        if (!(e = event_end(p, n))) {
            if (n > STREAM_EVENT_MAX) {
                x->sfail = F_MALFORMED;
                return 1;
            }
            return 0;
        }
        if ((v = event_check(p, e)) < 0) {
            x->sfail = F_MALFORMED;
            return 1;
        }
        if (!x->started) {
            struct upstream *u = &x->ai->ups[x->cur_up];
            char ctype[128];
            struct rhema_ai_outcome o = {.status = (int)rhema_ai_call_status(x->call),
                                         .retry_after = -1, .upstream = u->name,
                                         .attempts = x->trail};
            snprintf(ctype, sizeof ctype, "%s", rhema_ai_call_content_type(x->call));
            o.content_type = ctype;
            x->started = 1;
            trail_add(x, "%s@%s %d", cur_model(x)->name, u->name, o.status);
            atomic_fetch_add(&x->ai->sstats.streams, 1);
            set_ms(x->tick_ev, cur_model(x)->stall_ms);
            x->in_cb = 1;
            x->scb->start(x->arg, &o);
            x->in_cb = 0;
            if (x->cancelled)
                return 1;
        }
        if (v == 1)
            x->done_seen = 1;
        x->in_cb = 1;
        x->scb->chunk(x->arg, p, e);
        x->in_cb = 0;
        evbuffer_drain(x->pend, e);
        if (x->cancelled)
            return 1;
    }
}

static int stream_on_data(void *arg, struct rhema_ai_call *call, const char *buf, size_t len)
{
    struct rhema_ai_exchange *x = arg;
    if (!x->sse) {
        long st = rhema_ai_call_status(call);
        x->sse = st >= 200 && st < 300 &&
                         strncasecmp(rhema_ai_call_content_type(call), "text/event-stream", 17) == 0
                     ? 1
                     : -1;
    }
    if (x->sse < 0) /* an error or a whole body: as without streaming */
        return on_data(arg, call, buf, len);
    if (x->started && x->scb->congested(x->arg)) {
        x->paused = 1;
        evtimer_del(x->tick_ev); /* the client is slow, not the upstream */
        atomic_fetch_add(&x->ai->sstats.stream_pauses, 1);
        return 2; /* client.h: pause, the same bytes again on resume */
    }
    if (evbuffer_add(x->pend, buf, len)) {
        x->sfail = F_IO;
        return 1;
    }
    if (x->started)
        set_ms(x->tick_ev, cur_model(x)->stall_ms);
    return stream_pump(x);
}

static void stream_on_done(void *arg, struct rhema_ai_call *call, enum rhema_ai_result res,
                           const char *why)
{
    struct rhema_ai_exchange *x = arg;
    struct upstream *u = &x->ai->ups[x->cur_up];
    long status = rhema_ai_call_status(call);
    evtimer_del(x->tick_ev);
    if (x->cancelled) {
        x->call = NULL;
        account(x, 0, 0);
        exchange_free(x);
        return;
    }
    if (!x->started) {
        enum fail_kind k;
        if (x->sse < 0 || (x->sse == 0 && (res != RHEMA_AI_OK || status < 200 || status >= 300))) {
            on_done(arg, call, res, why); /* not a stream: retried or answered as without */
            return;
        }
        x->call = NULL;
        /* a stream that ended, or broke, before its first whole event */
        k = x->sfail != F_NONE           ? x->sfail
            : res == RHEMA_AI_ECONNECT   ? F_CONNECT
            : res == RHEMA_AI_ETIMEOUT   ? F_TIMEOUT
                                         : F_IO;
        rhema_log(RHEMA_LOG_NOTICE, WHO, "upstream '%s': stream %s before its first event%s%s",
                  u->name, k == F_MALFORMED ? "malformed" : "ended", *why ? ": " : "", why);
        account(x, 0, 1);
        evbuffer_drain(x->pend, evbuffer_get_length(x->pend));
        retry_or_fallback(x, k, 0, -1);
        return;
    }
    x->call = NULL;
    if (res == RHEMA_AI_OK && x->done_seen && x->sfail == F_NONE &&
        evbuffer_get_length(x->pend) == 0) {
        account(x, 1, 1);
        x->scb->end(x->arg, NULL);
        exchange_free(x);
        return;
    }
    account(x, 0, 1);
    if (x->sfail == F_MALFORMED) {
        atomic_fetch_add(&x->ai->sstats.stream_malformed, 1);
        stream_fail(x, "upstream_malformed_event", "upstream '%s' sent a malformed event (not "
                    "JSON, not [DONE]): the stream is incomplete", u->name);
    } else {
        atomic_fetch_add(&x->ai->sstats.stream_cut, 1);
        stream_fail(x, "upstream_stream_cut", "upstream '%s' ended the stream before its end "
                    "([DONE])%s%s: the stream is incomplete", u->name,
                    res != RHEMA_AI_OK ? ": " : "", res != RHEMA_AI_OK ? why : "");
    }
}

static const struct rhema_ai_call_cb stream_call_cb = {stream_on_data, stream_on_done};

/* The first-token deadline (before the first event) or the stall deadline (after) passed. */
static void on_stream_tick(evutil_socket_t fd, short what, void *arg)
{
    struct rhema_ai_exchange *x = arg;
    const struct model *m = cur_model(x);
    (void)fd, (void)what;
    if (!x->call || x->paused)
        return;
    rhema_ai_call_cancel(x->call);
    x->call = NULL;
    account(x, 0, 1);
    if (!x->started) {
        atomic_fetch_add(&x->ai->sstats.first_token_timeouts, 1);
        rhema_log(RHEMA_LOG_NOTICE, WHO, "upstream '%s': no first event of model '%s' in %llu ms",
                  x->ai->ups[x->cur_up].name, m->name, (unsigned long long)m->first_token_ms);
        evbuffer_drain(x->pend, evbuffer_get_length(x->pend));
        evbuffer_drain(x->resp, evbuffer_get_length(x->resp));
        retry_or_fallback(x, F_TTFT, 0, -1);
        return;
    }
    atomic_fetch_add(&x->ai->sstats.stream_stalled, 1);
    stream_fail(x, "upstream_stream_stalled", "upstream '%s' sent nothing for %llu ms: the "
                "stream is incomplete", x->ai->ups[x->cur_up].name,
                (unsigned long long)m->stall_ms);
}

static void on_stream_resume(evutil_socket_t fd, short what, void *arg)
{
    struct rhema_ai_exchange *x = arg;
    (void)fd, (void)what;
    if (!x->paused || !x->call)
        return;
    x->paused = 0;
    set_ms(x->tick_ev, cur_model(x)->stall_ms);
    rhema_ai_call_resume(x->call);
}

void rhema_ai_exchange_resume(struct rhema_ai_exchange *x)
{
    if (x->paused)
        event_active(x->resume_ev, EV_TIMEOUT, 0);
}

void rhema_ai_exchange_cancel(struct rhema_ai_exchange *x)
{
    if (x->cancelled)
        return;
    atomic_fetch_add(&x->ai->sstats.client_cancels, 1);
    rhema_log(RHEMA_LOG_INFO, WHO, "the client left: the request to upstream '%s' (model '%s') "
              "is cancelled", x->call ? x->ai->ups[x->cur_up].name : "-", cur_model(x)->name);
    if (x->in_cb) { /* inside stream_on_data(): it stops the transfer on return */
        x->cancelled = 1;
        return;
    }
    if (x->call) {
        account(x, 0, 0);
        rhema_ai_call_cancel(x->call);
        x->call = NULL;
    }
    exchange_free(x);
}

unsigned rhema_ai_worker_live(const struct rhema_worker *w)
{
    const struct rhema_ai_worker *aw = w->ai;
    const struct rhema_ai_exchange *x;
    unsigned n = 0;
    if (!aw)
        return 0;
    TAILQ_FOREACH(x, &aw->live, link)
        n++;
    return n;
}

static int exchange_begin(struct rhema_worker *w, const char *endpoint, json_t *body,
                          rhema_ai_done_fn *done, const struct rhema_ai_stream_cb *scb,
                          void *arg, struct rhema_ai_outcome *o, struct rhema_ai_exchange **xout)
{
    struct rhema_ai *ai = w->srv->ai;
    struct rhema_ai_worker *aw;
    struct rhema_ai_exchange *x;
    json_t *mv = json_object_get(body, "model");
    size_t mi;
    char *err = NULL;
    memset(o, 0, sizeof *o);
    o->retry_after = -1;
    o->upstream = o->attempts = "";
    o->error_type = "invalid_request_error";
    if (mv && !json_is_string(mv)) {
        o->status = 400;
        o->error_code = "invalid_type";
        o->error_param = "model";
        snprintf(o->message, sizeof o->message, "'model' must be a string");
        return -1;
    }
    if (!mv) {
        if ((mi = ai->default_model) == SIZE_MAX) {
            o->status = 400;
            o->error_code = "missing_required_parameter";
            o->error_param = "model";
            snprintf(o->message, sizeof o->message,
                     "'model' is required (no ai_service.default_model is set)");
            return -1;
        }
    } else if ((mi = find_model(ai, json_string_value(mv))) == SIZE_MAX) {
        o->status = 404;
        o->error_code = "model_not_found";
        o->error_param = "model";
        snprintf(o->message, sizeof o->message, "the model '%.200s' does not exist",
                 json_string_value(mv));
        return -1;
    }
    if (!(aw = worker_ai(w, &err)) || !(x = calloc(1, sizeof *x))) {
        o->status = 500;
        o->error_type = "server_error";
        o->error_code = "internal_error";
        snprintf(o->message, sizeof o->message, "%s", err ? err : "out of memory");
        free(err);
        return -1;
    }
    x->ai = ai;
    x->w = w;
    x->aw = aw;
    x->endpoint = endpoint;
    x->body = json_incref(body);
    x->done = done;
    x->scb = scb;
    x->arg = arg;
    x->chain[x->nchain++] = mi;
    for (size_t i = 0; ai->enable_fallback && i < ai->models[mi].nfallbacks; i++)
        x->chain[x->nchain++] = ai->models[mi].fallbacks[i];
    x->deadline_ns = rhema_monotonic_ns() + ai->request_timeout_ns;
    x->tried = calloc(ai->nups, 1);
    x->noted = calloc(ai->nups, 1);
    x->resp = evbuffer_new();
    if (scb) {
        x->pend = evbuffer_new();
        x->tick_ev = evtimer_new(w->base, on_stream_tick, x);
        x->resume_ev = event_new(w->base, -1, 0, on_stream_resume, x);
    }
    TAILQ_INSERT_TAIL(&aw->live, x, link);
    if (!x->tried || !x->noted || !x->resp ||
        (scb && (!x->pend || !x->tick_ev || !x->resume_ev))) {
        exchange_free(x);
        o->status = 500;
        o->error_type = "server_error";
        o->error_code = "internal_error";
        snprintf(o->message, sizeof o->message, "out of memory");
        return -1;
    }
    rhema_ai_budget_deposit(&ai->budget);
    if (xout)
        *xout = x;
    attempt(x);
    return 0;
}

int rhema_ai_exchange_start(struct rhema_worker *w, const char *endpoint, json_t *body,
                            rhema_ai_done_fn *done, void *arg, struct rhema_ai_outcome *o)
{
    return exchange_begin(w, endpoint, body, done, NULL, arg, o, NULL);
}

int rhema_ai_exchange_begin(struct rhema_worker *w, const char *endpoint, json_t *body,
                            rhema_ai_done_fn *done, void *arg, struct rhema_ai_outcome *o,
                            struct rhema_ai_exchange **xout)
{
    return exchange_begin(w, endpoint, body, done, NULL, arg, o, xout);
}

int rhema_ai_stream_start(struct rhema_worker *w, const char *endpoint, json_t *body,
                          const struct rhema_ai_stream_cb *cb, void *arg,
                          struct rhema_ai_outcome *o, struct rhema_ai_exchange **xout)
{
    return exchange_begin(w, endpoint, body, NULL, cb, arg, o, xout);
}

void rhema_ai_worker_release(struct rhema_worker *w)
{
    struct rhema_ai_worker *aw = w->ai;
    struct rhema_ai_exchange *x;
    /* requests of this worker waiting for another's flight: 503 now, never woken later */
    if (w->srv->ai && w->srv->ai->cache)
        rhema_ai_cache_drop_owner(w->srv->ai->cache, w);
    if (!aw)
        return;
    while ((x = TAILQ_FIRST(&aw->live))) {
        struct rhema_ai_outcome o = {.status = 503, .retry_after = -1,
                                     .error_type = "server_error",
                                     .error_code = "shutting_down"};
        snprintf(o.message, sizeof o.message, "rhemad is stopping");
        if (x->call) {
            account(x, 0, 0);
            rhema_ai_call_cancel(x->call);
            x->call = NULL;
        }
        if (x->scb && x->started)
            stream_fail(x, "shutting_down", "rhemad is stopping: the stream is incomplete");
        else
            finish(x, &o);
    }
    rhema_ai_client_free(aw->client);
    free(aw);
    w->ai = NULL;
}

/* ------------------------------------------------------------------------ */
/* Metrics and health (issue 11)                                            */

/* The streams' counters (atomics of the gateway: a stream event is rare next to a request). */
static void stream_metrics_write(const struct rhema_ai_stream_stats *ss, struct rhema_expo *e)
{
    static const char *const k_reason[] = {"reason"};
    static const char *const reasons[] = {"cut", "stalled", "malformed"};
    const _Atomic unsigned long long *by_reason[] = {&ss->stream_cut, &ss->stream_stalled,
                                                     &ss->stream_malformed};
    const struct {
        const char *name, *help;
        const _Atomic unsigned long long *v;
    } plain[] = {
        {"rhema_ai_streams",
         "Streamed AI responses (\"stream\": true) whose headers reached the client.",
         &ss->streams},
        {"rhema_ai_first_token_timeouts",
         "Stream attempts that passed their first-token deadline (then retried or fallen back).",
         &ss->first_token_timeouts},
        {"rhema_ai_client_cancels",
         "AI requests whose client left before the answer: the upstream request was cancelled.",
         &ss->client_cancels},
        {"rhema_ai_stream_pauses",
         "Times a stream's upstream was paused because its client read slower than the upstream "
         "wrote.",
         &ss->stream_pauses},
    };
    for (size_t i = 0; i < sizeof plain / sizeof *plain; i++) {
        rhema_expo_family(e, plain[i].name, "counter", plain[i].help);
        rhema_expo_sample_u64(e, plain[i].name, "_total", 0, NULL, NULL, atomic_load(plain[i].v));
    }
    rhema_expo_family(e, "rhema_ai_stream_errors", "counter",
                      "Streams ended by an `event: error` without [DONE], by reason: the upstream "
                      "cut it, stalled past the deadline, or sent a malformed event.");
    for (size_t i = 0; i < sizeof reasons / sizeof *reasons; i++)
        rhema_expo_sample_u64(e, "rhema_ai_stream_errors", "_total", 1, k_reason, &reasons[i],
                              atomic_load(by_reason[i]));
}

void rhema_ai_metrics_write(const struct rhema_ai *ai, struct rhema_expo *e)
{
    struct rhema_ai_upstream_gauges *g;
    uint64_t now = rhema_monotonic_ns();
    if (!ai || !ai->stats || !(g = calloc(ai->nups + 1, sizeof *g)))
        return;
    for (size_t i = 0; i < ai->nups; i++) {
        struct upstream *u = &ai->ups[i];
        g[i].in_flight = atomic_load(&u->load.inflight);
        g[i].breaker = (int)rhema_ai_breaker_state(&u->breaker, now);
    }
    rhema_ai_stats_write(ai->stats, e, g,
                         (double)atomic_load((atomic_llong *)&ai->budget.milli) / 1000.0);
    free(g);
    stream_metrics_write(&ai->sstats, e);
}

/* The health component of an upstream: its circuit breaker. */
static void upstream_health(void *arg, struct rhema_server *srv, rhema_storage_conn *conn,
                            struct rhema_health_result *out)
{
    struct upstream *u = arg;
    uint64_t now = rhema_monotonic_ns();
    unsigned fails = atomic_load(&u->breaker.failures);
    (void)srv;
    (void)conn;
    switch (rhema_ai_breaker_state(&u->breaker, now)) {
    case RHEMA_AI_OPEN: {
        unsigned long long until = atomic_load(&u->breaker.open_until_ns);
        out->status = RHEMA_UNHEALTHY;
        snprintf(out->message, sizeof out->message,
                 "upstream '%s': circuit breaker open after %u consecutive failures; next probe "
                 "in %llu ms",
                 u->name, fails, until > now ? (until - now) / 1000000u : 0);
        break;
    }
    case RHEMA_AI_HALF_OPEN:
        out->status = RHEMA_DEGRADED;
        snprintf(out->message, sizeof out->message,
                 "upstream '%s': circuit breaker half-open (a probe request may go)", u->name);
        break;
    default:
        snprintf(out->message, sizeof out->message,
                 "upstream '%s': circuit breaker closed (%u consecutive failures), %llu in flight",
                 u->name, fails, (unsigned long long)atomic_load(&u->load.inflight));
    }
}

/* "upstream_" and the name with every character but [a-z0-9_] as '_', cut to fit. */
static void component_name(const char *name, char out[64])
{
    size_t o = (size_t)snprintf(out, 64, "upstream_");
    for (const char *c = name; *c && o < 63; c++) {
        char ch = *c >= 'A' && *c <= 'Z' ? (char)(*c - 'A' + 'a') : *c;
        out[o++] = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ? ch : '_';
    }
    out[o] = '\0';
}

void rhema_ai_health_register(struct rhema_ai *ai, struct rhema_health_registry *h)
{
    char name[64];
    if (!ai || !h)
        return;
    for (size_t i = 0; i < ai->nups; i++) {
        component_name(ai->ups[i].name, name);
        if (rhema_health_register(h, name, upstream_health, &ai->ups[i]) != 0)
            rhema_log(RHEMA_LOG_WARN, WHO,
                      "upstream '%s': no GET /health component (the name %s is taken)",
                      ai->ups[i].name, name);
    }
}

void rhema_ai_health_unregister(struct rhema_ai *ai, struct rhema_health_registry *h)
{
    char name[64];
    if (!ai || !h)
        return;
    for (size_t i = 0; i < ai->nups; i++) {
        component_name(ai->ups[i].name, name);
        rhema_health_unregister(h, name);
    }
}
