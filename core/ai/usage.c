/*
 * ai/usage -- token limits and usage of the AI gateway (usage.h).
 *
 * Storage layout (namespace "ai_usage"): one entry per party, model and
 * bucket, key "<party>|<model>|<m|h|d><bucket start, unix seconds>",
 * value "requests prompt completion total".  Minute buckets live 2
 * minutes (the tokens-per-minute window), day buckets 2 days (tokens per
 * day), hour buckets ai_service.limits.usage_retention_days (what
 * GET /v1/usage reports); every one carries a TTL, so old buckets vanish
 * without a sweep of ours.
 *
 * Why compare-and-set on the existing store API rather than a new storage
 * call: get() and batch() with expected versions exist in every backend
 * (memory, file, sqlite, postgres, redis) and the conformance kit already
 * holds them to "a batch with a stale version changes nothing", which is
 * all a lost-update-free read-modify-write needs.  A charge reads the
 * three buckets, adds, and writes the three in one batch guarded by the
 * versions it read; a conflict (another node or worker charged meanwhile)
 * reads again.  One batch per answer is one transaction on the durable
 * backends.
 */
#include "rhema_build.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "ai/usage.h"
#include "api/api_auth.h"
#include "api/http.h"
#include "config.h"
#include "log.h"
#include "rate_table.h"
#include "server.h"
#include "util.h"

#define WHO "ai-usage"
#define NS "ai_usage"
#define CAS_TRIES 64
#define LOCAL_KEYS_MAX 1000000
#define SCAN_MAX 200000 /* bucket entries one GET /v1/usage visits at most */

struct model_limits {
    char *name;
    int64_t rpm, tpm, tpd; /* 0: off */
    struct rhema_rate_window rw;
};

struct rhema_ai_usage {
    struct model_limits *models;
    size_t nmodels;
    size_t default_model; /* SIZE_MAX: none */
    int64_t retention_s;
    int fail_closed;
    struct rhema_rate_table *local; /* the backend has no rate() */
    atomic_ullong refused, charged, errors;
};

/* ---- configuration ---- */

static int64_t get_int(const struct rhema_config *cfg, const char *path, int64_t def)
{
    int64_t v = def;
    if (rhema_config_get_int(cfg, path, &v))
        return def;
    return v;
}

static void usage_free(struct rhema_ai_usage *u)
{
    if (!u)
        return;
    for (size_t i = 0; i < u->nmodels; i++)
        free(u->models[i].name);
    free(u->models);
    rhema_rate_table_free(u->local);
    free(u);
}

/*
 * With ai_service.limits off, a model's own limit would do nothing: refused,
 * not silently ignored (-1, the schema's default, means "not set").
 */
static int limits_off_check(const struct rhema_config *cfg, char **err)
{
    static const char *const keys[] = {"requests_per_minute", "tokens_per_minute",
                                       "tokens_per_day"};
    int n = rhema_config_get_count(cfg, "ai_service.models");
    for (int i = 0; i < n; i++)
        for (size_t k = 0; k < sizeof keys / sizeof *keys; k++) {
            char p[128];
            snprintf(p, sizeof p, "ai_service.models[%d].%s", i, keys[k]);
            if (get_int(cfg, p, -1) != -1)
                return rhema_set_error(err, RHEMA_EINVAL,
                                       "%s: a model's limit acts only with "
                                       "ai_service.limits.enabled = true",
                                       p);
        }
    return 0;
}

static int usage_load(const struct rhema_config *cfg, struct rhema_ai_usage **out, char **err)
{
    struct rhema_ai_usage *u;
    int on = 0, n;
    int64_t rpm, tpm, tpd;
    const char *dm = "", *fm = "open";
    *out = NULL;
    rhema_config_get_bool(cfg, "ai_service.limits.enabled", &on);
    if (!on)
        return limits_off_check(cfg, err);
    if (!(u = calloc(1, sizeof *u)))
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    rpm = get_int(cfg, "ai_service.limits.requests_per_minute", 0);
    tpm = get_int(cfg, "ai_service.limits.tokens_per_minute", 0);
    tpd = get_int(cfg, "ai_service.limits.tokens_per_day", 0);
    u->retention_s = get_int(cfg, "ai_service.limits.usage_retention_days", 31) * 86400;
    rhema_config_get_string(cfg, "ai_service.rate_limiting.failure_mode", &fm);
    u->fail_closed = strcmp(fm, "closed") == 0;
    n = rhema_config_get_count(cfg, "ai_service.models");
    if (n > 0 && !(u->models = calloc((size_t)n, sizeof *u->models))) {
        usage_free(u);
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    }
    rhema_config_get_string(cfg, "ai_service.default_model", &dm);
    u->default_model = SIZE_MAX;
    for (int i = 0; i < n; i++) {
        struct model_limits *m = &u->models[u->nmodels];
        char p[128];
        const char *name = "";
        snprintf(p, sizeof p, "ai_service.models[%d].name", i);
        rhema_config_get_string(cfg, p, &name);
        if (strlen(name) > RHEMA_AI_MODEL_MAX || strchr(name, '|')) {
            usage_free(u);
            return rhema_set_error(err, RHEMA_EINVAL,
                                   "%s: with ai_service.limits.enabled a model name must be at "
                                   "most %d bytes and hold no '|' (it is part of the usage keys)",
                                   p, RHEMA_AI_MODEL_MAX);
        }
        if (!(m->name = strdup(name))) {
            usage_free(u);
            return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
        }
        u->nmodels++;
        snprintf(p, sizeof p, "ai_service.models[%d].requests_per_minute", i);
        m->rpm = get_int(cfg, p, -1);
        snprintf(p, sizeof p, "ai_service.models[%d].tokens_per_minute", i);
        m->tpm = get_int(cfg, p, -1);
        snprintf(p, sizeof p, "ai_service.models[%d].tokens_per_day", i);
        m->tpd = get_int(cfg, p, -1);
        if (m->rpm < 0)
            m->rpm = rpm;
        if (m->tpm < 0)
            m->tpm = tpm;
        if (m->tpd < 0)
            m->tpd = tpd;
        if (m->rpm > 0) {
            /* the whole minute's quota may come at once, as ratelimit.c's longer windows */
            m->rw.interval_us = 60000000u / (uint64_t)m->rpm;
            if (m->rw.interval_us == 0)
                m->rw.interval_us = 1;
            m->rw.tolerance_us = m->rw.interval_us * (uint64_t)(m->rpm - 1);
        }
        if (*dm && strcmp(dm, name) == 0)
            u->default_model = u->nmodels - 1;
    }
    *out = u;
    return 0;
}

int rhema_ai_usage_check_config(const struct rhema_config *cfg, char **err)
{
    struct rhema_ai_usage *u = NULL;
    int rc = usage_load(cfg, &u, err);
    usage_free(u);
    return rc;
}

int rhema_ai_usage_open(struct rhema_server *srv, char **err)
{
    struct rhema_ai_usage *u;
    int rc, ai_on = 0;
    srv->ai_usage = NULL;
    rhema_config_get_bool(srv->cfg, "ai_service.enabled", &ai_on);
    if (!ai_on)
        return 0;
    if ((rc = usage_load(srv->cfg, &u, err)) != 0 || !u)
        return rc;
    if (!srv->storage->rate && !(u->local = rhema_rate_table_new(LOCAL_KEYS_MAX))) {
        usage_free(u);
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    }
    if (!(srv->storage->features & RHEMA_STORAGE_TTL))
        rhema_log(RHEMA_LOG_WARN, WHO,
                  "storage plugin '%s' does not honour TTLs: old usage buckets are never removed",
                  srv->storage->base.name);
    rhema_log(RHEMA_LOG_INFO, WHO,
              "AI limits on for %zu model(s); usage kept in the storage backend for %" PRId64
              " day(s); requests per minute counted %s",
              u->nmodels, u->retention_s / 86400,
              u->local ? "in this process (the backend has no rate())" : "by the backend");
    srv->ai_usage = u;
    return 0;
}

void rhema_ai_usage_close(struct rhema_server *srv)
{
    usage_free(srv->ai_usage);
    srv->ai_usage = NULL;
}

/* ---- admission ---- */

static const struct model_limits *find_model(const struct rhema_ai_usage *u, const char *model)
{
    if (!model)
        return u->default_model == SIZE_MAX ? NULL : &u->models[u->default_model];
    for (size_t i = 0; i < u->nmodels; i++)
        if (strcmp(u->models[i].name, model) == 0)
            return &u->models[i];
    return NULL;
}

/* The caller as it is counted: "k:<key id>" or "a:<client address>". */
static void party_of(const struct rhema_req *r, char *out, size_t cap)
{
    const char *id = rhema_req_key_id(r);
    char *host = NULL;
    ev_uint16_t port = 0;
    struct evhttp_connection *c;
    if (id) {
        snprintf(out, cap, "k:%s", id);
        return;
    }
    if ((c = evhttp_request_get_connection(r->req)))
        evhttp_connection_get_peer(c, &host, &port);
    snprintf(out, cap, "a:%s", host ? host : "-");
}

/* The counts of one bucket: 0 (absent: zeros, *version ABSENT), or a storage error. */
static int bucket_read(struct rhema_worker *w, const char *key, struct rhema_ai_tokens *t,
                       uint64_t *version)
{
    const struct rhema_storage_plugin *vt = w->srv->storage;
    struct rhema_storage_value v = {.size = sizeof v};
    int rc = vt->get(w->conn, NS, key, &v);
    memset(t, 0, sizeof *t);
    if (rc == RHEMA_ENOTFOUND) {
        *version = RHEMA_VERSION_ABSENT;
        return 0;
    }
    if (rc)
        return rc;
    *version = v.version;
    if (rhema_ai_tokens_parse(v.data, v.len, t) != 0)
        rhema_log(RHEMA_LOG_WARN, WHO, "usage bucket '%s' holds no counts: counted from zero",
                  key);
    return 0;
}

static int64_t now_s(void)
{
    return (int64_t)(rhema_realtime_ns() / 1000000000u);
}

int rhema_ai_usage_admit(struct rhema_req *r, const char *model, size_t body_len,
                         struct rhema_ai_usage_ticket *t, struct rhema_ai_refusal *why)
{
    struct rhema_worker *w = r->worker;
    struct rhema_ai_usage *u = w->srv->ai_usage;
    const struct model_limits *m;
    char policy[256], state[256], key[RHEMA_STORAGE_KEY_MAX + 1];
    size_t po = 0, so = 0;
    int64_t now = now_s(), retry = 0;
    int rc = 0, refused = 0;
    const char *what = "";

    memset(t, 0, sizeof *t);
    if (!u || !(m = find_model(u, model)))
        return 0; /* off, or a model the gateway will refuse itself */
    party_of(r, t->party, sizeof t->party);
    snprintf(t->model, sizeof t->model, "%s", m->name);
    t->request_bytes = body_len;

    /* tokens: refused when the window's tokens already reached the allowance */
    for (int k = 0; k < 2; k++) {
        int64_t allowance = k == 0 ? m->tpm : m->tpd;
        enum rhema_ai_bucket kind = k == 0 ? RHEMA_AI_MINUTE : RHEMA_AI_DAY;
        int64_t len = rhema_ai_bucket_seconds[kind], reset = len - now % len;
        struct rhema_ai_tokens used;
        uint64_t ver;
        if (allowance <= 0)
            continue;
        if (rhema_ai_bucket_key(key, sizeof key, t->party, t->model, kind, now) < 0 ||
            (rc = bucket_read(w, key, &used, &ver)) != 0)
            break;
        po += (size_t)snprintf(policy + po, sizeof policy - po, "%s\"ai_tokens_%s\";q=%" PRId64
                               ";w=%" PRId64, po ? ", " : "", k ? "day" : "minute", allowance,
                               len);
        so += (size_t)snprintf(state + so, sizeof state - so, "%s\"ai_tokens_%s\";r=%" PRId64
                               ";t=%" PRId64, so ? ", " : "", k ? "day" : "minute",
                               used.total_tokens >= allowance ? 0 : allowance - used.total_tokens,
                               reset);
        if (used.total_tokens >= allowance && !refused) {
            refused = 1;
            retry = reset;
            what = k ? "tokens per day" : "tokens per minute";
        }
    }
    if (rc == 0 && !refused && m->rpm > 0) {
        struct rhema_rate_query q = {.size = sizeof q, .key = key, .windows = &m->rw, .n = 1,
                                     .now_us = (int64_t)(rhema_realtime_ns() / 1000u)};
        const char *err = NULL;
        snprintf(key, RHEMA_RATE_KEY_MAX + 1, "ai:rpm:%s:%s", t->party, t->model);
        rc = u->local ? rhema_rate_table_apply(u->local, &q, &err)
                      : w->srv->storage->rate(w->conn, &q);
        if (rc == 0) {
            int64_t d = q.tat_us[0] - q.now_us, tol = (int64_t)m->rw.tolerance_us;
            int64_t T = (int64_t)m->rw.interval_us;
            if (d < 0)
                d = 0;
            po += (size_t)snprintf(policy + po, sizeof policy - po,
                                   "%s\"ai_requests_minute\";q=%" PRId64 ";w=60", po ? ", " : "",
                                   m->rpm);
            so += (size_t)snprintf(state + so, sizeof state - so,
                                   "%s\"ai_requests_minute\";r=%" PRId64 ";t=%" PRId64,
                                   so ? ", " : "", d <= tol ? (tol - d) / T + 1 : 0,
                                   (d + 999999) / 1000000);
            if (!q.allowed) {
                refused = 1;
                retry = (d - tol + 999999) / 1000000;
                if (retry < 1)
                    retry = 1;
                what = "requests per minute";
            }
        }
    }
    if (rc) {
        const char *msg = w->srv->storage->errmsg ? w->srv->storage->errmsg(w->conn) : "";
        atomic_fetch_add(&u->errors, 1);
        rhema_log(RHEMA_LOG_WARN, WHO, "the AI limits of %s for model '%s' could not be read "
                  "(%s%s%s): %s", t->party, t->model, rhema_strerror(rc), *msg ? ": " : "", msg,
                  u->fail_closed ? "refused (failure_mode closed)" : "served (failure_mode open)");
        if (!u->fail_closed)
            return 0;
        rhema_header(r, "Retry-After", "1");
        why->status = 503;
        why->code = "usage_unavailable";
        snprintf(why->message, sizeof why->message, "the AI limits cannot be counted (%s) and "
                 "ai_service.rate_limiting.failure_mode is closed; retry later",
                 rhema_strerror(rc));
        memset(t, 0, sizeof *t);
        return 1;
    }
    if (po) {
        rhema_header(r, "RateLimit-Policy", policy);
        rhema_header(r, "RateLimit", state);
    }
    if (!refused)
        return 0;
    {
        char secs[24];
        snprintf(secs, sizeof secs, "%" PRId64, retry);
        rhema_header(r, "Retry-After", secs);
    }
    atomic_fetch_add(&u->refused, 1);
    why->status = 429;
    why->code = "rate_limit_exceeded";
    snprintf(why->message, sizeof why->message,
             "%s %s has used its %s for model '%s' (RateLimit-Policy: %.80s); retry after "
             "%" PRId64 " s",
             t->party[0] == 'k' ? "key" : "client", t->party + 2, what, t->model, policy, retry);
    memset(t, 0, sizeof *t);
    return 1;
}

/* ---- charging ---- */

int rhema_ai_usage_charge(struct rhema_worker *w, const struct rhema_ai_usage_ticket *t,
                          const struct rhema_ai_tokens *tok)
{
    struct rhema_ai_usage *u = w->srv->ai_usage;
    const struct rhema_storage_plugin *vt = w->srv->storage;
    char keys[RHEMA_AI_BUCKETS][RHEMA_STORAGE_KEY_MAX + 1], vals[RHEMA_AI_BUCKETS][128];
    struct rhema_storage_write wr[RHEMA_AI_BUCKETS];
    int64_t now = now_s();
    int rc = 0;
    if (!u || !t->party[0])
        return 0;
    for (int k = 0; k < RHEMA_AI_BUCKETS; k++)
        if (rhema_ai_bucket_key(keys[k], sizeof keys[k], t->party, t->model,
                                (enum rhema_ai_bucket)k, now) < 0)
            return RHEMA_EINVAL;
    for (int attempt = 0; attempt < CAS_TRIES; attempt++) {
        for (int k = 0; k < RHEMA_AI_BUCKETS; k++) {
            struct rhema_ai_tokens cur;
            uint64_t ver;
            int64_t ttl = k == RHEMA_AI_MINUTE ? 120 : k == RHEMA_AI_DAY ? 2 * 86400
                                                                          : u->retention_s;
            if ((rc = bucket_read(w, keys[k], &cur, &ver)) != 0)
                goto out;
            rhema_ai_tokens_add(&cur, tok);
            rhema_ai_tokens_format(vals[k], sizeof vals[k], &cur);
            /* a bucket lives its own length plus its TTL from its start, whatever the charge */
            ttl += rhema_ai_bucket_seconds[k] - now % rhema_ai_bucket_seconds[k];
            wr[k] = (struct rhema_storage_write){.size = sizeof wr[k], .op = RHEMA_WRITE_PUT,
                                                 .ns = NS, .key = keys[k], .value = vals[k],
                                                 .value_len = strlen(vals[k]),
                                                 .expected_version = ver,
                                                 .ttl_ms = (uint64_t)ttl * 1000u};
        }
        if ((rc = vt->batch(w->conn, wr, RHEMA_AI_BUCKETS)) != RHEMA_ECONFLICT)
            break;
    }
out:
    if (rc) {
        const char *msg = vt->errmsg ? vt->errmsg(w->conn) : "";
        atomic_fetch_add(&u->errors, 1);
        rhema_log(RHEMA_LOG_WARN, WHO,
                  "%s for model '%s': %" PRId64 " tokens could not be charged (%s%s%s)", t->party,
                  t->model, tok->total_tokens, rhema_strerror(rc), *msg ? ": " : "", msg);
        return rc;
    }
    atomic_fetch_add(&u->charged, 1);
    return 0;
}

int rhema_ai_usage_charge_body(struct rhema_worker *w, const struct rhema_ai_usage_ticket *t,
                               const char *body, size_t len)
{
    struct rhema_ai_tokens tok;
    if (!w->srv->ai_usage || !t->party[0])
        return 0;
    rhema_ai_tokens_from_body(body, len, t->request_bytes, &tok);
    return rhema_ai_usage_charge(w, t, &tok);
}

/* ---- GET /v1/usage ---- */

struct scan_ctx {
    size_t prefix;     /* bytes of "<party>|" */
    const char *model; /* NULL: every model */
    int64_t from, to;
    json_t *buckets;
    json_t *models; /* model -> totals */
    struct rhema_ai_tokens total;
    int oom;
};

static json_t *tokens_json(const struct rhema_ai_tokens *t)
{
    return json_pack("{s:I,s:I,s:I,s:I}", "requests", (json_int_t)t->requests, "prompt_tokens",
                     (json_int_t)t->prompt_tokens, "completion_tokens",
                     (json_int_t)t->completion_tokens, "total_tokens",
                     (json_int_t)t->total_tokens);
}

static void add_to(json_t *o, const struct rhema_ai_tokens *t)
{
    static const char *const f[] = {"requests", "prompt_tokens", "completion_tokens",
                                    "total_tokens"};
    const int64_t v[] = {t->requests, t->prompt_tokens, t->completion_tokens, t->total_tokens};
    for (int i = 0; i < 4; i++)
        json_object_set_new(o, f[i], json_integer(json_integer_value(json_object_get(o, f[i])) +
                                                  (json_int_t)v[i]));
}

static int on_bucket(void *arg, const char *key, const void *value, size_t len, uint64_t version)
{
    struct scan_ctx *c = arg;
    const char *model;
    size_t mlen;
    enum rhema_ai_bucket kind;
    int64_t start;
    struct rhema_ai_tokens t;
    char name[RHEMA_AI_MODEL_MAX + 1];
    json_t *b, *m;
    (void)version;
    if (strlen(key) <= c->prefix ||
        rhema_ai_bucket_parse(key + c->prefix, &model, &mlen, &kind, &start) != 0 ||
        kind != RHEMA_AI_HOUR || start < c->from || start >= c->to || mlen > RHEMA_AI_MODEL_MAX ||
        rhema_ai_tokens_parse(value, len, &t) != 0)
        return 0;
    memcpy(name, model, mlen);
    name[mlen] = '\0';
    if (c->model && strcmp(c->model, name) != 0)
        return 0;
    if (!(b = tokens_json(&t)) || json_object_set_new(b, "model", json_string(name)) ||
        json_object_set_new(b, "start", json_integer((json_int_t)start)) ||
        json_array_append_new(c->buckets, b)) {
        c->oom = 1;
        return 1;
    }
    if (!(m = json_object_get(c->models, name))) {
        if (!(m = tokens_json(&(struct rhema_ai_tokens){0})) ||
            json_object_set_new(c->models, name, m)) {
            c->oom = 1;
            return 1;
        }
    }
    add_to(m, &t);
    rhema_ai_tokens_add(&c->total, &t);
    return 0;
}

/* A query parameter as a unix time in seconds; 0, or -1 when present and not one. */
static int time_param(struct rhema_req *r, const char *name, int64_t *out)
{
    const char *s = evhttp_find_header(&r->query, name);
    char *end;
    long long v;
    if (!s)
        return 0;
    v = strtoll(s, &end, 10);
    if (!*s || *end || v < 0 || v > (1ll << 40))
        return -1;
    *out = (int64_t)v;
    return 0;
}

void rhema_ai_usage_get(struct rhema_req *r)
{
    struct rhema_worker *w = r->worker;
    struct rhema_ai_usage *u = w->srv->ai_usage;
    const char *key = evhttp_find_header(&r->query, "key");
    const char *model = evhttp_find_header(&r->query, "model");
    char party[RHEMA_AI_PARTY_MAX], from_key[RHEMA_AI_PARTY_MAX + 2], to_key[RHEMA_AI_PARTY_MAX + 2];
    int64_t to = now_s() + 1, from;
    struct scan_ctx c = {0};
    json_t *out;
    int rc;

    if (!u) {
        rhema_reply_error(r, 404, "usage_disabled",
                          "usage is not kept: ai_service.enabled and ai_service.limits.enabled "
                          "must both be true");
        return;
    }
    if (time_param(r, "to", &to) != 0) {
        rhema_reply_error(r, 400, "invalid_parameter", "'to' must be a unix time in seconds");
        return;
    }
    from = to - 86400;
    if (time_param(r, "from", &from) != 0 || from > to) {
        rhema_reply_error(r, 400, "invalid_parameter",
                          "'from' must be a unix time in seconds, not after 'to'");
        return;
    }
    if (model && (!*model || strlen(model) > RHEMA_AI_MODEL_MAX)) {
        rhema_reply_error(r, 400, "invalid_parameter", "'model' must be 1..%d bytes",
                          RHEMA_AI_MODEL_MAX);
        return;
    }
    party_of(r, party, sizeof party);
    if (key) {
        char asked[RHEMA_AI_PARTY_MAX];
        if (!*key || strlen(key) > RHEMA_PRINCIPAL_ID_MAX || strchr(key, '|')) {
            rhema_reply_error(r, 400, "invalid_parameter",
                              "'key' must be an API key's public id (1..%d bytes)",
                              RHEMA_PRINCIPAL_ID_MAX);
            return;
        }
        snprintf(asked, sizeof asked, "k:%s", key);
        if (strcmp(asked, party) != 0 && !rhema_auth_permits(r, "ai:admin")) {
            rhema_reply_error(r, 403, "forbidden",
                              "the usage of another key needs the permission ai:admin; without "
                              "'key' you get your own");
            return;
        }
        memcpy(party, asked, sizeof party);
    }
    snprintf(from_key, sizeof from_key, "%s|", party);
    snprintf(to_key, sizeof to_key, "%s}", party); /* '}' is '|' + 1: past every bucket */
    c.prefix = strlen(from_key);
    c.model = model;
    c.from = from - from % 3600; /* the hour holding `from` */
    c.to = to;
    c.buckets = json_array();
    c.models = json_object();
    if (!c.buckets || !c.models) {
        json_decref(c.buckets);
        json_decref(c.models);
        rhema_reply_error(r, 500, "internal_error", "out of memory");
        return;
    }
    rc = w->srv->storage->scan(w->conn, NS, from_key, to_key, SCAN_MAX, on_bucket, &c);
    if (rc || c.oom) {
        char msg[RHEMA_ERRMSG_MAX];
        json_decref(c.buckets);
        json_decref(c.models);
        if (c.oom) {
            rhema_reply_error(r, 500, "internal_error", "out of memory");
            return;
        }
        snprintf(msg, sizeof msg, "%s", w->srv->storage->errmsg(w->conn));
        rhema_reply_error(r, 503, "storage_unavailable", "reading the usage: %s%s%s",
                          rhema_strerror(rc), *msg ? ": " : "", msg);
        return;
    }
    out = json_pack("{s:s,s:s,s:I,s:I,s:i,s:o,s:o,s:o}", "party",
                    party[0] == 'k' ? "key" : "address", "id", party + 2, "from", (json_int_t)from,
                    "to", (json_int_t)to, "bucket_seconds", 3600, "buckets", c.buckets, "models",
                    c.models, "totals", tokens_json(&c.total));
    rhema_reply_jsonv(r, 200, out);
}
