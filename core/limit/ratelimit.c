/*
 * ratelimit -- the rate-limit stage of the pipeline (ratelimit.h).
 *
 * A policy is up to three windows (minute, hour, day), each a quota q per
 * w seconds.  In GCRA terms a window's emission interval is T = w / q.
 * The shortest window lets `burst` requests beyond its pace through back to
 * back (tolerance = burst x T: burst + 1 at once, then one per T); a
 * longer window lets its whole quota through at once (tolerance =
 * (q - 1) x T), so that it caps the total over its length without
 * smoothing what the shorter windows already allow.  In the long run a
 * party gets q per w in every window; over any stretch of w it gets at
 * most what the tolerance holds plus what T refills.
 *
 * Per-role overrides (ai_service.rate_limiting.roles) replace a window's
 * quota or the burst for the keys that hold the role (-1: as the top
 * level; 0: that window is off).  A key with several overridden roles gets
 * the most generous of each.
 */
#include "rhema_build.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/http.h>

#include "api/http.h"
#include "api/routes.h"
#include "config.h"
#include "log.h"
#include "metrics/metrics.h"
#include "rate_table.h"
#include "ratelimit.h"
#include "server.h"
#include "util.h"

#define WINDOWS 3
#define ROLES_MAX 64
#define ROLE_NAME_MAX 64
/* keys the per-node table keeps at most (a backend without rate()) */
#define LOCAL_KEYS_MAX 1000000

static const struct {
    const char *name;    /* the policy's name in the headers */
    const char *setting; /* ai_service.rate_limiting.<setting> */
    int64_t seconds;
} window_def[WINDOWS] = {
    {"minute", "requests_per_minute", 60},
    {"hour", "requests_per_hour", 3600},
    {"day", "requests_per_day", 86400},
};

struct policy {
    int64_t quota[WINDOWS]; /* 0: the window is off */
    int64_t burst;
    /* derived by policy_derive() */
    size_t n;           /* windows on; 0: unlimited */
    int which[WINDOWS]; /* window_def index of each window on */
    struct rhema_rate_window rw[WINDOWS];
    char sig[96];     /* the windows, in the rate() key: another policy is another party */
    char header[160]; /* RateLimit-Policy */
};

struct role_policy {
    char role[ROLE_NAME_MAX + 1];
    int64_t quota[WINDOWS]; /* -1: as the top level */
    int64_t burst;          /* -1: as the top level */
};

struct rhema_limits {
    struct policy base;
    struct role_policy roles[ROLES_MAX];
    struct policy role_policy[ROLES_MAX]; /* roles[i] alone, derived */
    size_t n_roles;
    int fail_closed;
    struct rhema_rate_table *local; /* the backend has no rate(): limits in this process */
    atomic_ullong allowed, refused, errors;
};

/*
 * p's windows from its quotas and burst.  A tolerance past what rate()
 * takes (RHEMA_RATE_SPAN_MAX, about 35 years) is cut to it and makes this
 * return 1: limits_load() refuses such a setting, and the most generous
 * mix of several roles' policies (pick()) is cut, which lets no fewer
 * requests through in any time a daemon runs.
 */
static int policy_derive(struct policy *p)
{
    size_t o = 0, h = 0;
    int cut = 0;
    p->n = 0;
    for (int i = 0; i < WINDOWS; i++) {
        if (p->quota[i] <= 0)
            continue;
        struct rhema_rate_window *w = &p->rw[p->n];
        uint64_t q = (uint64_t)p->quota[i];
        w->interval_us = (uint64_t)window_def[i].seconds * 1000000u / q;
        if (w->interval_us == 0)
            w->interval_us = 1;
        /* the first window on is the shortest: the burst is its own */
        uint64_t mul = p->n == 0 ? (uint64_t)p->burst : q - 1;
        if (mul > RHEMA_RATE_SPAN_MAX / w->interval_us) {
            w->tolerance_us = RHEMA_RATE_SPAN_MAX;
            cut = 1;
        } else {
            w->tolerance_us = w->interval_us * mul;
        }
        p->which[p->n++] = i;
        o += (size_t)snprintf(p->sig + o, sizeof p->sig - o, "%s%" PRId64 "/%" PRId64, o ? "," : "",
                              window_def[i].seconds, p->quota[i]);
        h += (size_t)snprintf(p->header + h, sizeof p->header - h,
                              "%s\"%s\";q=%" PRId64 ";w=%" PRId64, h ? ", " : "",
                              window_def[i].name, p->quota[i], window_def[i].seconds);
    }
    if (p->n)
        snprintf(p->sig + o, sizeof p->sig - o, "b%" PRId64, p->burst);
    return cut;
}

static int too_long(const char *where, const struct policy *p, char **err)
{
    return rhema_set_error(err, RHEMA_EINVAL,
                           "%s: burst %" PRId64 " at the pace of its shortest window (one request "
                           "every %" PRIu64 " us) is a tolerance of more than 35 years; lower the "
                           "burst or raise that window's quota",
                           where, p->burst, p->rw[0].interval_us);
}

/* ---- configuration ---- */

static int64_t get_int(const struct rhema_config *cfg, const char *path)
{
    int64_t v = 0;
    rhema_config_get_int(cfg, path, &v);
    return v;
}

static int role_defined(const struct rhema_config *cfg, const char *role)
{
    char p[64];
    const char *name;
    for (int i = 0, n = rhema_config_get_count(cfg, "security.roles"); i < n; i++) {
        snprintf(p, sizeof p, "security.roles[%d].name", i);
        if (rhema_config_get_string(cfg, p, &name) == 0 && strcmp(name, role) == 0)
            return 1;
    }
    return 0;
}

/* The settings into l (base policy and role overrides), checked.  0 or RHEMA_EINVAL and *err. */
static int limits_load(const struct rhema_config *cfg, struct rhema_limits *l, char **err)
{
    char p[128];
    const char *s = "open";
    int n;
    for (int i = 0; i < WINDOWS; i++) {
        snprintf(p, sizeof p, "ai_service.rate_limiting.%s", window_def[i].setting);
        l->base.quota[i] = get_int(cfg, p);
    }
    l->base.burst = get_int(cfg, "ai_service.rate_limiting.burst");
    if (policy_derive(&l->base))
        return too_long("ai_service.rate_limiting", &l->base, err);
    if (l->base.n == 0)
        return rhema_set_error(err, RHEMA_EINVAL,
                               "ai_service.rate_limiting: every window is 0 (off); set "
                               "requests_per_minute, requests_per_hour or requests_per_day, or "
                               "turn rate limiting off");
    rhema_config_get_string(cfg, "ai_service.rate_limiting.failure_mode", &s);
    l->fail_closed = strcmp(s, "closed") == 0;
    n = rhema_config_get_count(cfg, "ai_service.rate_limiting.roles");
    if (n > ROLES_MAX)
        return rhema_set_error(err, RHEMA_EINVAL,
                               "ai_service.rate_limiting.roles: %d entries, at most %d", n,
                               ROLES_MAX);
    for (int r = 0; r < n; r++) {
        struct role_policy *rp = &l->roles[l->n_roles];
        const char *role = "";
        snprintf(p, sizeof p, "ai_service.rate_limiting.roles[%d].role", r);
        rhema_config_get_string(cfg, p, &role);
        if (strlen(role) > ROLE_NAME_MAX)
            return rhema_set_error(err, RHEMA_EINVAL, "%s: longer than %d bytes", p, ROLE_NAME_MAX);
        if (!role_defined(cfg, role))
            return rhema_set_error(err, RHEMA_EINVAL, "%s: '%s' is not a role of security.roles", p,
                                   role);
        snprintf(rp->role, sizeof rp->role, "%s", role);
        for (int i = 0; i < WINDOWS; i++) {
            snprintf(p, sizeof p, "ai_service.rate_limiting.roles[%d].%s", r,
                     window_def[i].setting);
            rp->quota[i] = get_int(cfg, p);
        }
        snprintf(p, sizeof p, "ai_service.rate_limiting.roles[%d].burst", r);
        rp->burst = get_int(cfg, p);
        struct policy *d = &l->role_policy[l->n_roles];
        for (int i = 0; i < WINDOWS; i++)
            d->quota[i] = rp->quota[i] < 0 ? l->base.quota[i] : rp->quota[i];
        d->burst = rp->burst < 0 ? l->base.burst : rp->burst;
        if (policy_derive(d)) {
            snprintf(p, sizeof p, "ai_service.rate_limiting.roles[%d]", r);
            return too_long(p, d, err);
        }
        l->n_roles++;
    }
    return 0;
}

static int enabled(const struct rhema_config *cfg)
{
    int on = 0;
    rhema_config_get_bool(cfg, "ai_service.rate_limiting.enabled", &on);
    return on;
}

int rhema_limits_check(const struct rhema_config *cfg, char **err)
{
    struct rhema_limits *l;
    int rc;
    if (!enabled(cfg))
        return 0;
    if (!(l = calloc(1, sizeof *l)))
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    rc = limits_load(cfg, l, err);
    free(l);
    return rc;
}

int rhema_limits_open(struct rhema_server *srv, char **err)
{
    struct rhema_limits *l;
    int rc;
    srv->limits = NULL;
    if (!enabled(srv->cfg))
        return 0;
    if (!(l = calloc(1, sizeof *l)))
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    if ((rc = limits_load(srv->cfg, l, err)) != 0) {
        free(l);
        return rc;
    }
    if (!srv->storage->rate) {
        if (!(l->local = rhema_rate_table_new(LOCAL_KEYS_MAX))) {
            free(l);
            return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
        }
        if (srv->storage->features & RHEMA_STORAGE_SHARED)
            rhema_log(RHEMA_LOG_WARN, "ratelimit",
                      "storage plugin '%s' has no rate() (storage ABI minor 2): each node keeps "
                      "its own rate limits in memory, so a cluster of N nodes lets N times the "
                      "limit through",
                      srv->storage->base.name);
    }
    rhema_log(RHEMA_LOG_INFO, "ratelimit",
              "rate limiting on: %s, burst %" PRId64
              ", %zu role override(s), failure_mode %s, kept %s",
              l->base.header, l->base.burst, l->n_roles, l->fail_closed ? "closed" : "open",
              l->local ? "in this process" : "in the storage backend");
    srv->limits = l;
    return 0;
}

void rhema_limits_close(struct rhema_server *srv)
{
    if (!srv->limits)
        return;
    rhema_rate_table_free(srv->limits->local);
    free(srv->limits);
    srv->limits = NULL;
}

int rhema_limits_settings_changed(const struct rhema_config *old, const struct rhema_config *neu)
{
    struct rhema_limits *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);
    int changed = 1;
    if (a && b) {
        int on_a = enabled(old), on_b = enabled(neu);
        if (on_a != on_b)
            changed = 1;
        else if (!on_a)
            changed = 0;
        else if (limits_load(old, a, NULL) == 0 && limits_load(neu, b, NULL) == 0)
            changed = memcmp(&a->base, &b->base, sizeof a->base) != 0 ||
                      a->fail_closed != b->fail_closed || a->n_roles != b->n_roles ||
                      memcmp(a->roles, b->roles, sizeof a->roles) != 0;
    }
    free(a);
    free(b);
    return changed;
}

void rhema_limits_stats(const struct rhema_server *srv, struct rhema_limits_stats *out)
{
    struct rhema_limits *l = srv->limits;
    *out = (struct rhema_limits_stats){0};
    if (l) {
        out->allowed = atomic_load(&l->allowed);
        out->refused = atomic_load(&l->refused);
        out->backend_errors = atomic_load(&l->errors);
    }
}

/* ---- the stage ---- */

/* 1 when role is one of the comma-separated roles. */
static int has_role(const char *roles, const char *role)
{
    size_t len = strlen(role);
    for (const char *s = roles; *s;) {
        const char *e = strchr(s, ',');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (n == len && memcmp(s, role, n) == 0)
            return 1;
        s += n + (e ? 1 : 0);
    }
    return 0;
}

/*
 * The policy for r: the top level, one role's, or (several roles
 * overridden) the most generous of theirs built into *tmp.
 */
static const struct policy *pick(const struct rhema_limits *l, const struct rhema_req *r,
                                 struct policy *tmp)
{
    const struct policy *one = NULL;
    int matched = 0;
    if (!r->principal.roles[0])
        return &l->base;
    for (size_t k = 0; k < l->n_roles; k++) {
        if (!has_role(r->principal.roles, l->roles[k].role))
            continue;
        const struct policy *p = &l->role_policy[k];
        if (matched++ == 0) {
            one = p;
            *tmp = *p;
            continue;
        }
        for (int i = 0; i < WINDOWS; i++)
            if (tmp->quota[i] != 0 && (p->quota[i] == 0 || p->quota[i] > tmp->quota[i]))
                tmp->quota[i] = p->quota[i];
        if (p->burst > tmp->burst)
            tmp->burst = p->burst;
    }
    if (matched == 0)
        return &l->base;
    if (matched == 1)
        return one;
    (void)policy_derive(tmp); /* a cut tolerance is still more than a daemon's lifetime */
    return tmp;
}

/* The party r is counted as: "k:<key id>|<windows>" or "a:<client address>|<windows>". */
/*
 * Appenders for the texts built on every limited request (the key, the
 * RateLimit header): snprintf cost more than the GCRA step they serve.
 * They stop at cap - 1 and keep out NUL-terminated; the return value is the
 * new length, which reaches cap - 1 when the text was cut.
 */
static size_t cat(char *out, size_t o, size_t cap, const char *s)
{
    while (*s && o + 1 < cap)
        out[o++] = *s++;
    out[o] = '\0';
    return o;
}

static size_t cat_i64(char *out, size_t o, size_t cap, int64_t v)
{
    char d[24], *e = d + sizeof d, *b = e;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    *--b = '\0';
    do {
        *--b = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--b = '-';
    return cat(out, o, cap, b);
}

static void party(const struct rhema_req *r, const struct policy *p, char *out, size_t cap)
{
    const char *id = rhema_req_key_id(r);
    size_t o;
    if (id) {
        o = cat(out, 0, cap, "k:");
        o = cat(out, o, cap, id);
    } else {
        char *host = NULL;
        ev_uint16_t port = 0;
        struct evhttp_connection *c = evhttp_request_get_connection(r->req);
        if (c)
            evhttp_connection_get_peer(c, &host, &port);
        o = cat(out, 0, cap, "a:");
        o = cat(out, o, cap, host ? host : "-");
    }
    o = cat(out, o, cap, "|");
    cat(out, o, cap, p->sig);
}

static int64_t ceil_seconds(int64_t us)
{
    return us <= 0 ? 0 : (us + 999999) / 1000000;
}

/*
 * RateLimit-Policy and RateLimit for every window: r = the requests that
 * would pass now, t = seconds until the window is at rest (full again).
 * Returns the Retry-After of a refusal: the longest wait among the
 * windows that refused.
 */
static int64_t add_headers(struct rhema_req *r, const struct policy *p,
                           const struct rhema_rate_query *q)
{
    char buf[256];
    size_t o = 0;
    int64_t retry = 0;
    buf[0] = '\0';
    for (size_t k = 0; k < p->n; k++) {
        int64_t d = q->tat_us[k] - q->now_us, tol = (int64_t)p->rw[k].tolerance_us;
        int64_t T = (int64_t)p->rw[k].interval_us, left;
        if (d < 0)
            d = 0;
        left = d <= tol ? (tol - d) / T + 1 : 0;
        if (!q->allowed && d > tol && ceil_seconds(d - tol) > retry)
            retry = ceil_seconds(d - tol);
        if (o)
            o = cat(buf, o, sizeof buf, ", ");
        o = cat(buf, o, sizeof buf, "\"");
        o = cat(buf, o, sizeof buf, window_def[p->which[k]].name);
        o = cat(buf, o, sizeof buf, "\";r=");
        o = cat_i64(buf, o, sizeof buf, left);
        o = cat(buf, o, sizeof buf, ";t=");
        o = cat_i64(buf, o, sizeof buf, ceil_seconds(d));
    }
    rhema_header(r, "RateLimit-Policy", p->header);
    rhema_header(r, "RateLimit", buf);
    return retry > 0 ? retry : 1;
}

/* Health probes are never limited: a busy client must not make a node look dead. */
static int exempt(const struct rhema_route *rt)
{
    return rt->permission && strncmp(rt->permission, "health:", 7) == 0;
}

int rhema_rate_limit(struct rhema_req *r, const struct rhema_route *rt)
{
    struct rhema_server *srv = r->worker->srv;
    struct rhema_limits *l = srv->limits;
    struct policy tmp;
    const struct policy *p;
    char key[RHEMA_RATE_KEY_MAX + 1], secs[32];
    const char *why = NULL;
    int rc;

    if (!l || exempt(rt))
        return 0;
    p = pick(l, r, &tmp);
    if (p->n == 0)
        return 0; /* a role without limits */
    party(r, p, key, sizeof key);
    struct rhema_rate_query q = {
        .size = sizeof q,
        .key = key,
        .windows = p->rw,
        .n = p->n,
        .now_us = (int64_t)(rhema_realtime_ns() / 1000u),
    };
    int by_key = key[0] == 'k';
    uint64_t t0 = rhema_monotonic_ns();
    if (l->local)
        rc = rhema_rate_table_apply(l->local, &q, &why);
    else if ((rc = srv->storage->rate(r->worker->conn, &q)) != 0)
        why = srv->storage->errmsg ? srv->storage->errmsg(r->worker->conn) : NULL;
    rhema_metrics_observe(RHEMA_MXH_RL_BACKEND, rhema_monotonic_ns() - t0);
    if (rc) {
        atomic_fetch_add(&l->errors, 1);
        rhema_metrics_count(by_key ? RHEMA_MX_RL_KEY_ERROR : RHEMA_MX_RL_CLIENT_ERROR, 1);
        rhema_metrics_count(l->fail_closed ? RHEMA_MX_RL_FAIL_CLOSED : RHEMA_MX_RL_FAIL_OPEN, 1);
        rhema_log(RHEMA_LOG_WARN, "ratelimit",
                  "the rate limit of %s could not be counted (%s%s%s): %s", key, rhema_strerror(rc),
                  why && *why ? ": " : "", why ? why : "",
                  l->fail_closed ? "refused (failure_mode closed)" : "served (failure_mode open)");
        if (!l->fail_closed)
            return 0;
        rhema_header(r, "Retry-After", "1");
        rhema_reply_error(r, 503, "rate_limit_unavailable",
                          "the rate limit cannot be counted (%s) and "
                          "ai_service.rate_limiting.failure_mode is closed; retry later",
                          rhema_strerror(rc));
        return 1;
    }
    int64_t retry = add_headers(r, p, &q);
    if (q.allowed) {
        atomic_fetch_add(&l->allowed, 1);
        rhema_metrics_count(by_key ? RHEMA_MX_RL_KEY_ALLOWED : RHEMA_MX_RL_CLIENT_ALLOWED, 1);
        return 0;
    }
    atomic_fetch_add(&l->refused, 1);
    rhema_metrics_count(by_key ? RHEMA_MX_RL_KEY_REFUSED : RHEMA_MX_RL_CLIENT_REFUSED, 1);
    snprintf(secs, sizeof secs, "%" PRId64, retry);
    rhema_header(r, "Retry-After", secs);
    rhema_reply_error(
        r, 429, "rate_limited",
        "too many requests from %s %.*s (RateLimit-Policy: %s); retry after %" PRId64 " s",
        key[0] == 'k' ? "key" : "client", (int)strcspn(key + 2, "|"), key + 2, p->header, retry);
    return 1;
}
