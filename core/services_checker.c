/*
 * services_checker -- the health checker (services.h: "health_status"):
 * on the main thread, while this node leads, each check runs at its
 * interval as an asynchronous probe (HTTP with evhttp's client, TCP with a
 * connecting bufferevent, TTL from the last pass), and each result goes
 * through the state machine of services_health.c into services.health.
 */
#include "rhema_build.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <netinet/in.h>

#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/http.h>
#include <event2/util.h>

#include "cluster.h"
#include "json_fields.h"
#include "log.h"
#include "server.h"
#include "services.h"
#include "services_internal.h"
#include "util.h"
#include "watch/feed.h"

/* ---- the checker (main thread, while this node leads) ---- */

void svc_chk_release(struct chk *c)
{
    if (c->probe)
        c->probe->owner = NULL;
    c->probe = NULL;
    free(c->key);
    free(c->target);
    free(c->address);
    c->address = NULL;
}

/* Write one result into services.health (compare-and-set), and deregister when due. */
static void check_record(struct rhema_services *s, struct chk *c, enum rhema_check_result result,
                         const char *output)
{
    struct rhema_store *st = &s->st;
    char err[RHEMA_ERRMSG_MAX];
    uint64_t now = rhema_realtime_ms();
    for (int attempt = 0; attempt < 3; attempt++) {
        json_t *h = NULL, *nh;
        uint64_t version = 0;
        struct rhema_check_state cs = {0};
        struct rhema_storage_write w = {.size = sizeof(struct rhema_storage_write)};
        char *text;
        int changed, rc;
        if (svc_load_json(st, RHEMA_SERVICES_HEALTH_NS, c->id, &h, &version, err)) {
            rhema_log(RHEMA_LOG_WARN, WHO, "health of '%s': %s", c->id, err);
            return;
        }
        if (h && json_string_value(json_object_get(h, "check")) &&
            strcmp(json_string_value(json_object_get(h, "check")), c->key) == 0) {
            cs.status = rhema_health_parse(json_string_value(json_object_get(h, "status")));
            cs.ok_streak = (uint32_t)json_integer_value(json_object_get(h, "ok_streak"));
            cs.fail_streak = (uint32_t)json_integer_value(json_object_get(h, "fail_streak"));
            cs.critical_since_ms =
                (uint64_t)json_integer_value(json_object_get(h, "critical_since"));
        }
        json_decref(h);
        enum rhema_health was = cs.status;
        changed = rhema_check_apply(&cs, result, c->fthr, c->sthr, now);
        nh = json_pack("{s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:s}", "status", rhema_health_name(cs.status),
                       "check_status",
                       result == RHEMA_CHECK_PASSING   ? "passing"
                       : result == RHEMA_CHECK_WARNING ? "warning"
                                                       : "critical",
                       "output", output, "ok_streak", (json_int_t)cs.ok_streak, "fail_streak",
                       (json_int_t)cs.fail_streak, "critical_since",
                       (json_int_t)cs.critical_since_ms, "last_check", (json_int_t)now, "check",
                       c->key);
        text = nh ? rhema_json_dumps(nh, JSON_COMPACT) : NULL;
        json_decref(nh);
        if (!text)
            return;
        w.op = RHEMA_WRITE_PUT;
        w.ns = RHEMA_SERVICES_HEALTH_NS;
        w.key = c->id;
        w.value = text;
        w.value_len = strlen(text);
        w.expected_version = version ? version : RHEMA_VERSION_ABSENT;
        /*
         * A change of health status goes into the change feed (issue 12,
         * watch/feed.h): the record right after the health write, in its
         * batch, so the event's revision is that write's version.
         */
        char *etext = NULL;
        size_t elen = 0;
        if (changed && st->feed) {
            struct rhema_feed_fields ef = {.type = "service.health", .id = c->id,
                                           .versioned = 1, .from = rhema_health_name(was),
                                           .to = rhema_health_name(cs.status)};
            etext = rhema_feed_record(&ef, &elen);
        }
        if (etext) {
            struct rhema_storage_write b[2] = {w, {0}};
            rhema_feed_write(&b[1], etext, elen);
            rc = st->vt->batch(st->conn, b, 2);
            if (rc == 0)
                rhema_feed_wake(st->feed);
        } else {
            rc = st->vt->put(st->conn, &w);
        }
        free(etext);
        free(text);
        if (rc == RHEMA_ECONFLICT)
            continue;
        if (rc) {
            rhema_log(RHEMA_LOG_WARN, WHO, "writing the health of '%s': %s", c->id,
                      st->vt->errmsg(st->conn));
            return;
        }
        if (changed) {
            rhema_log(RHEMA_LOG_NOTICE, WHO, "service '%s' (%s) is %s: %s", c->id, c->name,
                      rhema_health_name(cs.status), output);
            s->refresh_soon = 1;
        }
        if (cs.status == RHEMA_HEALTH_UNHEALTHY && c->dereg_ms &&
            now - cs.critical_since_ms >= c->dereg_ms) {
            rc = svc_delete_versioned(st, c->id, c->name, c->version);
            if (rc == 0)
                rhema_log(RHEMA_LOG_NOTICE, WHO,
                          "service '%s' deregistered: critical for %llu s or more", c->id,
                          (unsigned long long)(c->dereg_ms / 1000));
            s->refresh_soon = 1;
        }
        return;
    }
}

static void probe_finish(struct probe *p, enum rhema_check_result result, const char *output)
{
    struct rhema_services *s = p->s;
    if (p->done)
        return;
    p->done = 1;
    if (p->owner) {
        struct chk *c = p->owner;
        c->probe = NULL;
        p->owner = NULL;
        if (rhema_cluster_is_leader(s->srv->cluster))
            check_record(s, c, result, output);
    }
}

static void http_done(struct evhttp_request *req, void *arg)
{
    struct probe *p = arg;
    int code = req ? evhttp_request_get_response_code(req) : 0;
    char out[64];
    if (code)
        snprintf(out, sizeof out, "HTTP %d", code);
    else
        snprintf(out, sizeof out, "no response (refused, reset or timed out)");
    probe_finish(p, code ? rhema_check_http_result(code) : RHEMA_CHECK_CRITICAL, out);
}

static void tcp_event(struct bufferevent *bev, short what, void *arg)
{
    struct probe *p = arg;
    (void)bev;
    if (what & BEV_EVENT_CONNECTED)
        probe_finish(p, RHEMA_CHECK_PASSING, "TCP connect ok");
    else
        probe_finish(p, RHEMA_CHECK_CRITICAL,
                     what & BEV_EVENT_TIMEOUT ? "TCP connect timed out" : "TCP connect failed");
}

/*
 * A name being resolved for a probe.  evdns always calls back, even after
 * evdns_getaddrinfo_cancel() (later, from the loop), so the lookup, not
 * the probe, is what the callback gets: a probe freed meanwhile only
 * detaches it (probe = NULL), and the callback frees it.
 */
struct lookup {
    struct probe *probe;
    struct evdns_getaddrinfo_request *req;
};

void svc_probe_free(struct probe *p)
{
    if (p->lookup) {
        struct lookup *lk = p->lookup;
        p->lookup = NULL;
        lk->probe = NULL;
        if (lk->req)
            evdns_getaddrinfo_cancel(lk->req);
    }
    if (p->hc)
        evhttp_connection_free(p->hc);
    if (p->bev)
        bufferevent_free(p->bev);
    free(p);
}

/* Connect to sa, which the policy admitted: the HTTP request or the TCP connect. */
static void probe_connect(struct probe *p, const struct sockaddr *sa, socklen_t salen)
{
    struct rhema_services *s = p->s;
    if (p->type == CHK_HTTP) {
        char ip[64];
        const void *a =
            sa->sa_family == AF_INET6
                ? (const void *)&((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr
                : (const void *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr;
        struct evhttp_request *req;
        if (!evutil_inet_ntop(sa->sa_family, a, ip, sizeof ip)) {
            probe_finish(p, RHEMA_CHECK_CRITICAL, "bad address");
            return;
        }
        /* an IP literal: evhttp resolves nothing (with s->dns it could not block anyway) */
        p->hc = evhttp_connection_base_new(s->base, s->dns, ip, (uint16_t)p->port);
        req = p->hc ? evhttp_request_new(http_done, p) : NULL;
        if (!req) {
            probe_finish(p, RHEMA_CHECK_CRITICAL, "cannot create the request");
            return;
        }
        evhttp_connection_set_timeout(p->hc, (int)(p->timeout_ms / 1000));
        evhttp_connection_set_retries(p->hc, 0);
        evhttp_add_header(evhttp_request_get_output_headers(req), "Host", p->host);
        evhttp_add_header(evhttp_request_get_output_headers(req), "User-Agent",
                          "rhemad-health-check");
        if (evhttp_make_request(p->hc, req, EVHTTP_REQ_GET, p->path) != 0)
            probe_finish(p, RHEMA_CHECK_CRITICAL, "cannot send the request");
        return;
    }
    struct timeval tv = {(time_t)(p->timeout_ms / 1000), 0};
    p->bev = bufferevent_socket_new(s->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (!p->bev) {
        probe_finish(p, RHEMA_CHECK_CRITICAL, "cannot create a socket");
        return;
    }
    bufferevent_setcb(p->bev, NULL, NULL, tcp_event, p);
    bufferevent_set_timeouts(p->bev, &tv, &tv);
    if (bufferevent_socket_connect(p->bev, (struct sockaddr *)(void *)sa, (int)salen) != 0)
        probe_finish(p, RHEMA_CHECK_CRITICAL, "TCP connect failed");
}

/* evdns answered (or the lookup was cancelled: lk->probe is NULL then). */
static void resolved(int result, struct evutil_addrinfo *ai, void *arg)
{
    struct lookup *lk = arg;
    struct probe *p = lk->probe;
    char why[RHEMA_ERRMSG_MAX] = "";
    free(lk);
    if (!p) { /* the probe was freed (cancelled) */
        if (ai)
            evutil_freeaddrinfo(ai);
        return;
    }
    p->lookup = NULL;
    if (p->done || !p->owner) { /* timed out, or the check went away */
        if (ai)
            evutil_freeaddrinfo(ai);
        return;
    }
    if (result != 0 || !ai) {
        snprintf(why, sizeof why, "cannot resolve %s: %s", p->host,
                 evutil_gai_strerror(result ? result : EVUTIL_EAI_NONAME));
        probe_finish(p, RHEMA_CHECK_CRITICAL, why);
        if (ai)
            evutil_freeaddrinfo(ai);
        return;
    }
    for (struct evutil_addrinfo *a = ai; a; a = a->ai_next) {
        char refused[RHEMA_ERRMSG_MAX];
        struct sockaddr_storage ss = {0};
        if ((a->ai_family != AF_INET && a->ai_family != AF_INET6) || a->ai_addrlen > sizeof ss)
            continue;
        memcpy(&ss, a->ai_addr, a->ai_addrlen); /* without a service name, port 0: set it */
        if (a->ai_family == AF_INET)
            ((struct sockaddr_in *)(void *)&ss)->sin_port = htons((uint16_t)p->port);
        else
            ((struct sockaddr_in6 *)(void *)&ss)->sin6_port = htons((uint16_t)p->port);
        if (svc_target_allowed(p->s, p->owner->address, p->host, p->port, (struct sockaddr *)&ss,
                               refused) != 0) {
            if (!why[0])
                snprintf(why, sizeof why, "%s", refused);
            continue;
        }
        probe_connect(p, (struct sockaddr *)&ss, (socklen_t)a->ai_addrlen);
        evutil_freeaddrinfo(ai);
        return;
    }
    /* why: the refusal of the first address; never probed */
    char out[RHEMA_ERRMSG_MAX + RHEMA_SERVICE_ADDR_MAX + 32];
    snprintf(out, sizeof out, "%s resolves to no allowed address: %s; not probed", p->host, why);
    probe_finish(p, RHEMA_CHECK_CRITICAL, out);
    evutil_freeaddrinfo(ai);
}

/* Mark c critical without probing: it is over a cap. */
static void check_refuse(struct rhema_services *s, struct chk *c, const char *why)
{
    char out[RHEMA_ERRMSG_MAX + 16];
    snprintf(out, sizeof out, "%s; not probed", why);
    check_record(s, c, RHEMA_CHECK_CRITICAL, out);
}

/* Finish p critical without connecting: the policy refused its target. */
static void probe_refuse(struct probe *p, const char *why)
{
    char out[RHEMA_ERRMSG_MAX + 16];
    snprintf(out, sizeof out, "%s; not probed", why);
    probe_finish(p, RHEMA_CHECK_CRITICAL, out);
}

static void check_start(struct rhema_services *s, struct chk *c)
{
    struct probe *p;
    struct sockaddr_storage ss;
    socklen_t sslen = 0;
    char why[RHEMA_ERRMSG_MAX];
    unsigned port = 0;
    if (c->over_cap) {
        snprintf(why, sizeof why, "over distributed.health_checking.%s (%lld)",
                 c->over_cap == 1 ? "max_checks_per_service" : "max_checks_total",
                 (long long)(c->over_cap == 1 ? s->max_checks_per_service : s->max_checks_total));
        check_refuse(s, c, why);
        return;
    }
    if (c->type == CHK_TTL) {
        struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
        uint64_t last = c->baseline_ms;
        int rc = s->st.vt->get(s->conn, RHEMA_SERVICES_PASS_NS, c->id, &v);
        if (rc == 0 && v.len < TTL_PASS_MAX_LEN) {
            char buf[TTL_PASS_MAX_LEN];
            memcpy(buf, v.data, v.len);
            buf[v.len] = '\0';
            uint64_t t = strtoull(buf, NULL, 10);
            if (t > last)
                last = t;
        } else if (rc && rc != RHEMA_ENOTFOUND) {
            return; /* the backend did not answer: no verdict */
        }
        int ok = rhema_check_ttl_ok(last, c->interval_ms / 1000, c->timeout_ms / 1000,
                                    rhema_realtime_ms());
        check_record(s, c, ok ? RHEMA_CHECK_PASSING : RHEMA_CHECK_CRITICAL,
                     ok ? "TTL passed" : "TTL expired");
        return;
    }
    p = calloc(1, sizeof *p);
    if (!p)
        return;
    p->s = s;
    p->owner = c;
    snprintf(p->id, sizeof p->id, "%s", c->id);
    p->type = c->type;
    p->timeout_ms = c->timeout_ms;
    p->deadline_ns = rhema_monotonic_ns() + (c->timeout_ms + 1000) * 1000000ull;
    p->next = s->probes;
    s->probes = p;
    c->probe = p;
    if (rhema_check_target_split(c->type == CHK_HTTP ? "http" : "tcp", c->target, p->host,
                                 sizeof p->host, &port) != 0) {
        probe_finish(p, RHEMA_CHECK_CRITICAL, c->type == CHK_HTTP ? "bad URL" : "bad target");
        return;
    }
    p->port = port;
    snprintf(p->path, sizeof p->path, "/");
    if (c->type == CHK_HTTP) {
        struct evhttp_uri *uri = evhttp_uri_parse(c->target);
        if (uri) {
            const char *path = evhttp_uri_get_path(uri), *query = evhttp_uri_get_query(uri);
            snprintf(p->path, sizeof p->path, "%s%s%s", path && *path ? path : "/",
                     query ? "?" : "", query ? query : "");
            evhttp_uri_free(uri);
        }
    }
    if (rhema_target_sockaddr(p->host, port, &ss, &sslen) == 0) {
        if (svc_target_allowed(s, c->address, p->host, port, (struct sockaddr *)&ss, why)) {
            probe_refuse(p, why);
            return;
        }
        probe_connect(p, (struct sockaddr *)&ss, sslen);
        return;
    }
    /* a name: admitted for its port (or as the service's own host), then resolved */
    if (svc_target_allowed(s, c->address, p->host, port, NULL, why)) {
        probe_refuse(p, why);
        return;
    }
    struct evutil_addrinfo hints = {0};
    struct lookup *lk = calloc(1, sizeof *lk);
    if (!lk || !s->dns) {
        free(lk);
        probe_finish(p, RHEMA_CHECK_CRITICAL, "no DNS resolver");
        return;
    }
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    lk->probe = p;
    p->lookup = lk;
    /* may call back at once (an /etc/hosts name, an error): then it returns NULL */
    struct evdns_getaddrinfo_request *req =
        evdns_getaddrinfo(s->dns, p->host, NULL, &hints, resolved, lk);
    if (req) /* not answered yet: lk lives until the callback */
        lk->req = req;
}

/* Rebuild the check list from the registrations (main thread, after a scan). */
void svc_checks_sync(struct rhema_services *s, const struct rec_list *rl)
{
    uint64_t now = rhema_monotonic_ns();
    int64_t in_name = 0, total = 0;
    const char *prev_name = "";
    for (size_t i = 0; i < s->nchecks; i++)
        s->checks[i].seen = 0;
    for (size_t i = 0; i < rl->n; i++) {
        json_t *rec = rl->v[i].rec, *check = json_object_get(rec, "check");
        const char *type = json_string_value(json_object_get(check, "type"));
        char *key;
        struct chk *c = NULL;
        uint64_t upd = 0;
        int over;
        if (!type)
            continue;
        /* the caps: the first checks in (name, id) order run (rl is sorted so) */
        if (strcmp(jstr(json_object_get(rec, "name")), prev_name) != 0) {
            prev_name = jstr(json_object_get(rec, "name"));
            in_name = 0;
        }
        if (++in_name > s->max_checks_per_service) {
            over = 1;
        } else if (total >= s->max_checks_total) {
            over = 2;
        } else {
            over = 0;
            total++;
        }
        key = svc_check_key(check);
        if (!key)
            continue;
        for (size_t j = 0; j < s->nchecks && !c; j++)
            if (strcmp(s->checks[j].id, rl->v[i].id) == 0)
                c = &s->checks[j];
        if (c && strcmp(c->key, key) != 0) { /* the check changed: start over */
            svc_chk_release(c);
            c->key = NULL;
            c->target = NULL;
            c->due_ns = now;
        } else if (!c) {
            if (s->nchecks == s->capchecks) {
                size_t cap = s->capchecks ? 2 * s->capchecks : 16;
                struct chk *v = realloc(s->checks, cap * sizeof *v);
                if (!v) {
                    free(key);
                    continue;
                }
                /* probes point at their chk: re-point them after the move */
                for (size_t j = 0; j < s->nchecks; j++)
                    if (v[j].probe)
                        v[j].probe->owner = &v[j];
                s->checks = v;
                s->capchecks = cap;
            }
            c = &s->checks[s->nchecks++];
            memset(c, 0, sizeof *c);
            snprintf(c->id, sizeof c->id, "%s", rl->v[i].id);
            c->due_ns = now;
        }
        if (!c->key) {
            const char *target = json_string_value(json_object_get(check, "target"));
            c->key = key;
            key = NULL;
            c->type = strcmp(type, "http") == 0  ? CHK_HTTP
                      : strcmp(type, "tcp") == 0 ? CHK_TCP
                                                 : CHK_TTL;
            c->target = target ? strdup(target) : NULL;
            c->interval_ms =
                1000u * (uint64_t)json_integer_value(json_object_get(check, "interval_seconds"));
            c->timeout_ms =
                1000u * (uint64_t)json_integer_value(json_object_get(check, "timeout_seconds"));
            c->dereg_ms = 1000u * (uint64_t)json_integer_value(
                                      json_object_get(check, "deregister_critical_after_seconds"));
            c->fthr = (uint32_t)json_integer_value(json_object_get(check, "failure_threshold"));
            c->sthr = (uint32_t)json_integer_value(json_object_get(check, "success_threshold"));
            if (c->interval_ms == 0)
                c->interval_ms = 1000;
            if (c->timeout_ms == 0)
                c->timeout_ms = 1000;
        }
        free(key);
        c->over_cap = over;
        const char *address = jstr(json_object_get(rec, "address"));
        if (!c->address || strcmp(c->address, address) != 0) {
            free(c->address);
            c->address = strdup(address); /* NULL (out of memory): refused, as no address */
        }
        snprintf(c->name, sizeof c->name, "%s", jstr(json_object_get(rec, "name")));
        c->version = rl->v[i].version;
        if (rhema_time_parse(jstr(json_object_get(rec, "updated_at")), &upd) == 0)
            c->baseline_ms = upd;
        c->seen = 1;
    }
    for (size_t i = 0; i < s->nchecks;) {
        if (s->checks[i].seen) {
            i++;
            continue;
        }
        svc_chk_release(&s->checks[i]);
        s->checks[i] = s->checks[--s->nchecks];
        if (i < s->nchecks && s->checks[i].probe)
            s->checks[i].probe->owner = &s->checks[i];
    }
}

int svc_leading(struct rhema_services *s)
{
    return s->checks_enabled && rhema_cluster_is_leader(s->srv->cluster);
}

void svc_on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct rhema_services *s = arg;
    uint64_t now = rhema_monotonic_ns();
    int lead = svc_leading(s);
    (void)fd, (void)what;
    /* free finished probes; give up on those past their deadline */
    for (struct probe **pp = &s->probes; *pp;) {
        struct probe *p = *pp;
        if (!p->done && now > p->deadline_ns)
            probe_finish(p, RHEMA_CHECK_CRITICAL, "timed out");
        if (p->done || !p->owner) {
            if (p->owner)
                p->owner->probe = NULL;
            *pp = p->next;
            svc_probe_free(p);
            continue;
        }
        pp = &p->next;
    }
    if (!lead) {
        if (s->was_leader) {
            rhema_log(RHEMA_LOG_NOTICE, WHO, "not leading: health checks stop here");
            for (size_t i = 0; i < s->nchecks; i++)
                if (s->checks[i].probe) {
                    s->checks[i].probe->owner = NULL;
                    s->checks[i].probe = NULL;
                }
        }
        s->was_leader = 0;
        return;
    }
    if (!s->was_leader) {
        s->was_leader = 1;
        svc_refresh_all(s, 1); /* take the checks over from the registry as it is now */
        for (size_t i = 0; i < s->nchecks; i++)
            s->checks[i].due_ns = now;
        rhema_log(RHEMA_LOG_NOTICE, WHO, "leading: running %zu health check(s)", s->nchecks);
    }
    if (s->refresh_soon) {
        s->refresh_soon = 0;
        svc_refresh_all(s, 1);
    }
    for (size_t i = 0; i < s->nchecks; i++) {
        struct chk *c = &s->checks[i];
        if (c->probe || now < c->due_ns)
            continue;
        c->due_ns = now + c->interval_ms * 1000000ull;
        check_start(s, c);
    }
}
