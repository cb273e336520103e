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
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/event.h>

#include "ai/cache.h"
#include "ai/client.h"
#include "ai/gateway.h"
#include "ai/policy.h"
#include "config.h"
#include "log.h"
#include "plugin.h"
#include "util.h"

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
    struct rhema_ai_cache *cache; /* ai_service.caching; NULL when off */
};

struct rhema_ai_worker {
    struct rhema_ai_client *client;
    TAILQ_HEAD(, rhema_ai_exchange) live;
    uint64_t rng;
};

enum fail_kind { F_NONE, F_CONNECT, F_TIMEOUT, F_IO, F_STATUS, F_TOOBIG };

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
    rhema_log(RHEMA_LOG_INFO, WHO, "AI gateway: %zu models, %zu upstreams", ai->nmodels,
              ai->nups);
    *out = ai;
    return 0;
}

void rhema_ai_free(struct rhema_ai *ai)
{
    if (!ai)
        return;
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
    default: snprintf(buf, 16, "%ld", status); return buf;
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
    if (x->retries < ai->max_retries && now + delay_ms * 1000000u < x->deadline_ns &&
        rhema_ai_budget_withdraw(&ai->budget)) {
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
        json_object_set_new(x->body, "model", json_string(m->upstream_model));
        body = json_dumps(x->body, JSON_COMPACT | JSON_REAL_PRECISION(17));
        snprintf(url, sizeof url, "%s/%s", u->base_url, x->endpoint);
        x->tried[x->cur_up] = 1;
        x->attempts_made++;
        atomic_fetch_add(&u->load.inflight, 1);
        x->sent_ns = now;
        x->call = body ? rhema_ai_call_start(x->aw->client, url, (const char *const *)u->headers,
                                             body, strlen(body), tmo, &call_cb, x, &err)
                       : NULL;
        free(body);
        if (!x->call) {
            rhema_log(RHEMA_LOG_ERROR, WHO, "upstream '%s': %s", u->name,
                      err ? err : "out of memory");
            free(err);
            account(x, 0, 0);
            retry_or_fallback(x, F_IO, 0, -1);
        }
    }
}

int rhema_ai_exchange_start(struct rhema_worker *w, const char *endpoint, json_t *body,
                            rhema_ai_done_fn *done, void *arg, struct rhema_ai_outcome *o)
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
    x->arg = arg;
    x->chain[x->nchain++] = mi;
    for (size_t i = 0; ai->enable_fallback && i < ai->models[mi].nfallbacks; i++)
        x->chain[x->nchain++] = ai->models[mi].fallbacks[i];
    x->deadline_ns = rhema_monotonic_ns() + ai->request_timeout_ns;
    x->tried = calloc(ai->nups, 1);
    x->noted = calloc(ai->nups, 1);
    x->resp = evbuffer_new();
    TAILQ_INSERT_TAIL(&aw->live, x, link);
    if (!x->tried || !x->noted || !x->resp) {
        exchange_free(x);
        o->status = 500;
        o->error_type = "server_error";
        o->error_code = "internal_error";
        snprintf(o->message, sizeof o->message, "out of memory");
        return -1;
    }
    rhema_ai_budget_deposit(&ai->budget);
    attempt(x);
    return 0;
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
        finish(x, &o);
    }
    rhema_ai_client_free(aw->client);
    free(aw);
    w->ai = NULL;
}
