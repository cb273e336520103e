/*
 * services -- the service registry's lifecycle: new and free (the
 * strategies loaded and checked), start and stop (storage, timers), and
 * the periodic refresh that rebuilds every group and the checks from
 * storage.  services.h says what the registry does; services_internal.h
 * lists the other files.
 */
#include "rhema_build.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "server.h"
#include "services.h"
#include "services_internal.h"
#include "util.h"
#include "json_fields.h"

static const char *const builtin_strategies[] = {"round_robin",
                                                 "least_connections",
                                                 "weighted_round_robin",
                                                 "least_response_time",
                                                 "random",
                                                 "ip_hash",
                                                 NULL};

/* ---- the module ---- */

/* distributed.health_checking.allowed_targets and the caps (config.c checked the rules). */
static int allowed_targets_load(struct rhema_services *s, const struct rhema_config *cfg,
                                char **err)
{
    static const char key[] = "distributed.health_checking.allowed_targets";
    char path[sizeof key + 16], perr[RHEMA_ERRMSG_MAX];
    int n = rhema_config_get_count(cfg, key), rc;
    const char **texts;
    s->max_checks_per_service = 100;
    s->max_checks_total = 1000;
    rhema_config_get_int(cfg, "distributed.health_checking.max_checks_per_service",
                         &s->max_checks_per_service);
    rhema_config_get_int(cfg, "distributed.health_checking.max_checks_total", &s->max_checks_total);
    if (n <= 0)
        return 0;
    texts = calloc((size_t)n, sizeof *texts);
    if (!texts)
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s[%d]", key, i);
        if (rhema_config_get_string(cfg, path, &texts[i]) != 0)
            texts[i] = "";
    }
    rc = rhema_target_list_parse(&s->allowed, texts, (size_t)n, perr);
    free(texts);
    if (rc)
        return rhema_set_error(err, rc, "%s: %s", key, perr);
    return 0;
}

int rhema_services_new(const struct rhema_config *cfg, struct rhema_plugin_registry *reg,
                       struct rhema_services **out, char **err)
{
    struct rhema_services *s = calloc(1, sizeof *s);
    const struct rhema_loaded_plugin *p;
    int rc = 0, enabled = 1;
    if (!s)
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    s->cfg = cfg;
    s->reg = reg;
    pthread_rwlock_init(&s->table_lock, NULL);
    pthread_mutex_init(&s->apply_lock, NULL);
    atomic_store(&s->rng, rhema_realtime_ns() ^ (uint64_t)(uintptr_t)s);
    rhema_check_defaults_get(cfg, &s->defaults);
    rhema_config_get_bool(cfg, "distributed.health_checking.enabled", &enabled);
    s->checks_enabled = enabled;
    if ((rc = allowed_targets_load(s, cfg, err)))
        goto fail;
    snprintf(s->default_strategy, sizeof s->default_strategy, "%s",
             cfg->balancing_strategy && *cfg->balancing_strategy ? cfg->balancing_strategy
                                                                 : "round_robin");
    if (!rhema_plugin_find(reg, RHEMA_KIND_BALANCER, s->default_strategy) &&
        (rc = rhema_plugin_load(reg, s->default_strategy, cfg->plugin_directory,
                                RHEMA_KIND_BALANCER, &p, err)))
        goto fail;
    if (!cfg->plugin_load_set) {
        for (const char *const *b = builtin_strategies; *b; b++) {
            char *lerr = NULL;
            if (rhema_plugin_find(reg, RHEMA_KIND_BALANCER, *b))
                continue;
            if (rhema_plugin_load(reg, *b, cfg->plugin_directory, RHEMA_KIND_BALANCER, &p, &lerr))
                rhema_log(RHEMA_LOG_INFO, WHO, "balancing strategy '%s' not loaded: %s", *b,
                          lerr ? lerr : "?");
            free(lerr);
        }
    }
    /* one instance of each, so that its configuration group is read and checked */
    for (size_t i = 0; (p = rhema_plugin_at(reg, i)); i++) {
        const struct rhema_balancer_plugin *vt;
        rhema_balancer *b;
        if (p->kind != RHEMA_KIND_BALANCER)
            continue;
        if ((rc = svc_balancer_create(s, p->name, &vt, &b, err)))
            goto fail;
        vt->destroy(b);
        if ((rc = rhema_config_unread_keys(
                 rhema_config_plugin_group(cfg, RHEMA_KIND_BALANCER, p->name), err)))
            goto fail;
    }
    *out = s;
    return 0;
fail:
    rhema_services_free(s);
    return rc;
}

void rhema_services_free(struct rhema_services *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->ngroups; i++)
        svc_group_free(s->groups[i]);
    free(s->groups);
    rhema_target_list_release(&s->allowed);
    pthread_rwlock_destroy(&s->table_lock);
    pthread_mutex_destroy(&s->apply_lock);
    free(s);
}

/* ---- the refresh (main thread) ---- */

struct health_map {
    json_t *map; /* id -> health record */
};

static int collect_health(void *ctx, const char *key, const void *value, size_t len,
                          uint64_t version)
{
    struct health_map *hm = ctx;
    json_t *j = rhema_json_loadb(value, len, 0, NULL);
    (void)version;
    if (json_is_object(j))
        json_object_set_new(hm->map, key, j);
    else
        json_decref(j);
    return 0;
}

static int rec_name_cmp(const void *a, const void *b)
{
    const struct rec *x = a, *y = b;
    int c = strcmp(jstr(json_object_get(x->rec, "name")), jstr(json_object_get(y->rec, "name")));
    return c ? c : strcmp(x->id, y->id);
}

/* Re-read every registration and health record, rebuild every group (and the checks). */
void svc_refresh_all(struct rhema_services *s, int leader)
{
    struct rec_list rl = {0};
    struct health_map hm = {json_object()};
    struct rhema_service_member *m = NULL;
    char **names = NULL;
    size_t nnames = 0;
    int rc;

    pthread_mutex_lock(&s->apply_lock);
    rc = s->st.vt->scan(s->conn, RHEMA_SERVICES_NS, NULL, NULL, 0, svc_collect_rec, &rl);
    if (!rc)
        rc = s->st.vt->scan(s->conn, RHEMA_SERVICES_HEALTH_NS, NULL, NULL, 0, collect_health, &hm);
    if (rc) {
        pthread_mutex_unlock(&s->apply_lock);
        rhema_log(RHEMA_LOG_WARN, WHO, "refreshing the registry: %s", s->st.vt->errmsg(s->conn));
        goto out;
    }
    if (rl.n)
        qsort(rl.v, rl.n, sizeof *rl.v, rec_name_cmp);
    m = calloc(rl.n + 1, sizeof *m);
    names = calloc(rl.n + 1, sizeof *names);
    if (!m || !names) {
        pthread_mutex_unlock(&s->apply_lock);
        goto out;
    }
    for (size_t i = 0; i < rl.n;) {
        const char *name = jstr(json_object_get(rl.v[i].rec, "name"));
        size_t j = i, n = 0;
        char *aerr = NULL;
        for (; j < rl.n && strcmp(jstr(json_object_get(rl.v[j].rec, "name")), name) == 0; j++)
            svc_member_of(&m[n++], rl.v[j].id, rl.v[j].rec, json_object_get(hm.map, rl.v[j].id),
                          s->checks_enabled);
        if (*name && svc_apply_locked(s, name, m, n, &aerr))
            rhema_log(RHEMA_LOG_WARN, WHO, "service '%s': %s", name, aerr ? aerr : "?");
        free(aerr);
        names[nnames++] = (char *)name;
        i = j;
    }
    /* groups whose every member is gone */
    for (;;) {
        char gone[RHEMA_ID_MAX + 1] = "";
        pthread_rwlock_rdlock(&s->table_lock);
        for (size_t g = 0; g < s->ngroups && !*gone; g++) {
            int found = 0;
            for (size_t k = 0; k < nnames && !found; k++)
                found = strcmp(names[k], s->groups[g]->name) == 0;
            if (!found)
                snprintf(gone, sizeof gone, "%s", s->groups[g]->name);
        }
        pthread_rwlock_unlock(&s->table_lock);
        if (!*gone)
            break;
        svc_apply_locked(s, gone, NULL, 0, NULL);
    }
    pthread_mutex_unlock(&s->apply_lock);
    if (leader) {
        const char *id;
        json_t *h;
        svc_checks_sync(s, &rl);
        /* sweep health records whose registration is gone */
        json_object_foreach(hm.map, id, h)
        {
            int found = 0;
            for (size_t i = 0; i < rl.n && !found; i++)
                found = strcmp(rl.v[i].id, id) == 0;
            if (!found) {
                s->st.vt->del(s->conn, RHEMA_SERVICES_HEALTH_NS, id, RHEMA_VERSION_ANY);
                s->st.vt->del(s->conn, RHEMA_SERVICES_PASS_NS, id, RHEMA_VERSION_ANY);
            }
        }
    }
out:
    free(m);
    free(names);
    json_decref(hm.map);
    svc_rec_list_free(&rl);
}

static void on_refresh(evutil_socket_t fd, short what, void *arg)
{
    struct rhema_services *s = arg;
    (void)fd, (void)what;
    s->refresh_soon = 0;
    svc_refresh_all(s, svc_leading(s));
}

int rhema_services_start(struct rhema_server *srv, struct event_base *base,
                         struct rhema_services **out, char **err)
{
    struct rhema_services *s = NULL;
    struct timeval rtv = {RHEMA_SERVICES_REFRESH_MS / 1000,
                          (RHEMA_SERVICES_REFRESH_MS % 1000) * 1000};
    struct timeval ttv = {0, RHEMA_SERVICES_TICK_MS * 1000};
    char *perr = NULL;
    int rc = rhema_services_new(srv->cfg, srv->plugins, &s, err);
    if (rc)
        return rc;
    s->srv = srv;
    s->base = base;
    rc = srv->storage->connect(srv->storage_inst, &s->conn, &perr);
    if (rc) {
        rhema_set_error(err, rc, "services: storage connect: %s", perr ? perr : rhema_strerror(rc));
        free(perr);
        s->conn = NULL;
        rhema_services_stop(s);
        return rc;
    }
    rhema_store_init(&s->st, srv->storage, s->conn);
    s->st.feed = srv->feed; /* health changes are recorded in the change feed (opened before) */
    /* resolv.conf and /etc/hosts; asynchronous on base, never a blocking lookup */
    s->dns =
        evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    if (!s->dns) {
        rhema_services_stop(s);
        return rhema_set_error(err, RHEMA_ENOMEM, "services: cannot create the DNS resolver");
    }
    s->refresh_ev = event_new(base, -1, EV_PERSIST, on_refresh, s);
    s->tick_ev = event_new(base, -1, EV_PERSIST, svc_on_tick, s);
    if (!s->refresh_ev || !s->tick_ev) {
        rhema_services_stop(s);
        return rhema_set_error(err, RHEMA_ENOMEM, "services: cannot create timers");
    }
    svc_refresh_all(s, 0);
    event_add(s->refresh_ev, &rtv);
    event_add(s->tick_ev, &ttv);
    {
        char names[256];
        rhema_services_strategies(s, names, sizeof names);
        rhema_log(RHEMA_LOG_INFO, WHO,
                  "registry ready: strategy '%s' (loaded: %s); health checks %s",
                  s->default_strategy, names, s->checks_enabled ? "run by the leader" : "disabled");
    }
    *out = s;
    return 0;
}

void rhema_services_stop(struct rhema_services *s)
{
    if (!s)
        return;
    if (s->refresh_ev)
        event_free(s->refresh_ev);
    if (s->tick_ev)
        event_free(s->tick_ev);
    while (s->probes) {
        struct probe *p = s->probes;
        s->probes = p->next;
        svc_probe_free(p);
    }
    if (s->dns)
        evdns_base_free(s->dns, 0); /* after the probes: they cancelled their lookups */
    for (size_t i = 0; i < s->nchecks; i++) {
        s->checks[i].probe = NULL;
        svc_chk_release(&s->checks[i]);
    }
    free(s->checks);
    if (s->conn) {
        rhema_store_release(&s->st);
        s->srv->storage->disconnect(s->conn);
    }
    rhema_services_free(s);
}
