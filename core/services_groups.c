/*
 * services_groups -- the selection side of the registry (services.h:
 * "Selection"): per service name a group of members and a balancer
 * instance fed with the healthy ones; apply, select, feedback, load
 * counters, and rebuilding one group from storage.
 */
#include "rhema_build.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "services.h"
#include "services_internal.h"
#include "util.h"
#include "json_fields.h"

/* ---- groups: the snapshot per name and its balancer ---- */

static uint64_t next_random(struct rhema_services *s)
{
    uint64_t z = atomic_fetch_add_explicit(&s->rng, 0x9e3779b97f4a7c15ull, memory_order_relaxed);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

int rhema_services_strategy_loaded(const struct rhema_services *s, const char *name)
{
    return name && rhema_plugin_find(s->reg, RHEMA_KIND_BALANCER, name) != NULL;
}

void rhema_services_strategies(const struct rhema_services *s, char *buf, size_t cap)
{
    const struct rhema_loaded_plugin *p;
    size_t at = 0;
    buf[0] = '\0';
    for (size_t i = 0; (p = rhema_plugin_at(s->reg, i)) && at < cap; i++)
        if (p->kind == RHEMA_KIND_BALANCER)
            at += (size_t)snprintf(buf + at, cap - at, "%s%s", at ? ", " : "", p->name);
}

void rhema_services_health_counts(struct rhema_services *s, uint64_t *healthy,
                                  uint64_t *not_healthy)
{
    *healthy = *not_healthy = 0;
    if (!s)
        return;
    pthread_rwlock_rdlock(&s->table_lock);
    for (size_t i = 0; i < s->ngroups; i++) {
        struct group *g = s->groups[i];
        pthread_rwlock_rdlock(&g->lock);
        for (size_t j = 0; j < g->nmem; j++)
            ++*(g->mem[j].healthy ? healthy : not_healthy);
        pthread_rwlock_unlock(&g->lock);
    }
    pthread_rwlock_unlock(&s->table_lock);
}

int rhema_services_checks_enabled(const struct rhema_services *s)
{
    return s->checks_enabled;
}

/* Create an instance of strategy name (under apply_lock, or before the workers). */
int svc_balancer_create(struct rhema_services *s, const char *name,
                        const struct rhema_balancer_plugin **vt, rhema_balancer **b, char **err)
{
    const struct rhema_loaded_plugin *p = rhema_plugin_find(s->reg, RHEMA_KIND_BALANCER, name);
    char *perr = NULL;
    int rc;
    if (!p)
        return rhema_set_error(err, RHEMA_ENOTFOUND, "balancing strategy '%s' is not loaded", name);
    rc = p->vt.balancer.create(
        rhema_host_get(), rhema_config_plugin_group(s->cfg, RHEMA_KIND_BALANCER, name), b, &perr);
    if (rc) {
        rhema_set_error(err, rc, "balancing strategy '%s': %s", name,
                        perr ? perr : rhema_strerror(rc));
        free(perr);
        return rc;
    }
    *vt = &p->vt.balancer;
    return 0;
}

static void members_free(struct member *m, size_t n, int free_loads)
{
    for (size_t i = 0; i < n; i++) {
        free(m[i].id);
        free(m[i].address);
        if (free_loads)
            free(m[i].load);
    }
    free(m);
}

void svc_group_free(struct group *g)
{
    if (!g)
        return;
    if (g->b)
        g->vt->destroy(g->b);
    members_free(g->mem, g->nmem, 1);
    free(g->ep);
    free(g->name);
    pthread_rwlock_destroy(&g->lock);
    free(g);
}

/* Index of name in groups (under table_lock), or -1. */
static long group_find(const struct rhema_services *s, const char *name)
{
    for (size_t i = 0; i < s->ngroups; i++)
        if (strcmp(s->groups[i]->name, name) == 0)
            return (long)i;
    return -1;
}

static int member_cmp(const void *a, const void *b)
{
    return strcmp(((const struct rhema_service_member *)a)->id,
                  ((const struct rhema_service_member *)b)->id);
}

/* 1 when the group already holds exactly these members (sorted) with this strategy. */
static int group_same(const struct group *g, const char *strategy,
                      const struct rhema_service_member *m, size_t n)
{
    if (strcmp(g->strategy, strategy) != 0 || g->nmem != n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (strcmp(g->mem[i].id, m[i].id) || strcmp(g->mem[i].address, m[i].address) ||
            g->mem[i].weight != m[i].weight || !g->mem[i].healthy != !m[i].healthy ||
            !g->mem[i].has_check != !m[i].has_check)
            return 0;
    return 1;
}

/* Hand the loads carried over from g's members back to them (a failed apply). */
static void loads_return(struct group *g, struct member *mem, size_t n)
{
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < g->nmem && mem[i].load; j++)
            if (!g->mem[j].load && strcmp(g->mem[j].id, mem[i].id) == 0) {
                g->mem[j].load = mem[i].load;
                mem[i].load = NULL;
            }
}

/* Apply with apply_lock held. */
int svc_apply_locked(struct rhema_services *s, const char *name,
                     const struct rhema_service_member *in, size_t n, char **err)
{
    struct rhema_service_member *m = NULL;
    struct member *mem = NULL;
    struct rhema_endpoint *eps = NULL;
    size_t *ep = NULL, nep = 0;
    const char *strategy = s->default_strategy;
    struct group *g = NULL, *created = NULL;
    const struct rhema_balancer_plugin *nvt = NULL;
    rhema_balancer *nb = NULL;
    int rc = 0;
    long gi;

    pthread_rwlock_rdlock(&s->table_lock);
    gi = group_find(s, name);
    g = gi >= 0 ? s->groups[gi] : NULL;
    pthread_rwlock_unlock(&s->table_lock);
    if (n == 0) { /* remove the group */
        if (!g)
            return 0;
        pthread_rwlock_wrlock(&s->table_lock);
        gi = group_find(s, name);
        if (gi >= 0) {
            s->groups[gi] = s->groups[--s->ngroups];
        }
        pthread_rwlock_unlock(&s->table_lock);
        svc_group_free(g); /* no reader can hold it: they hold table_lock while using a group */
        return 0;
    }
    m = malloc(n * sizeof *m);
    if (!m)
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    memcpy(m, in, n * sizeof *m);
    qsort(m, n, sizeof *m, member_cmp);
    for (size_t i = 0; i < n; i++)
        if (m[i].strategy && rhema_services_strategy_loaded(s, m[i].strategy)) {
            strategy = m[i].strategy;
            break;
        }
    if (g && group_same(g, strategy, m, n))
        goto out;
    if (!g || strcmp(g->strategy, strategy) != 0) {
        rc = svc_balancer_create(s, strategy, &nvt, &nb, err);
        if (rc && strategy != s->default_strategy) {
            rhema_log(RHEMA_LOG_WARN, WHO, "service '%s': %s; using '%s'", name,
                      err && *err ? *err : "?", s->default_strategy);
            strategy = s->default_strategy;
            rc = svc_balancer_create(s, strategy, &nvt, &nb, err);
        }
        if (rc)
            goto out;
    }
    mem = calloc(n, sizeof *mem);
    ep = calloc(n, sizeof *ep);
    eps = calloc(n, sizeof *eps);
    if (!mem || !ep || !eps) {
        rc = rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        mem[i].id = strdup(m[i].id);
        mem[i].address = strdup(m[i].address);
        mem[i].weight = m[i].weight ? m[i].weight : 1;
        mem[i].healthy = m[i].healthy;
        mem[i].has_check = m[i].has_check;
        if (!mem[i].id || !mem[i].address) {
            rc = rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
            goto out;
        }
        if (m[i].healthy) {
            ep[nep] = i;
            eps[nep].size = sizeof eps[nep];
            eps[nep].id = mem[i].id;
            eps[nep].address = mem[i].address;
            eps[nep].weight = mem[i].weight;
            nep++;
        }
    }
    if (!g) {
        created = calloc(1, sizeof *created);
        if (!created || !(created->name = strdup(name))) {
            free(created);
            created = NULL;
            rc = rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
            goto out;
        }
        pthread_rwlock_init(&created->lock, NULL);
        g = created;
    }
    pthread_rwlock_wrlock(&g->lock);
    /* loads: carried over by id, new ones for new members */
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < g->nmem && !mem[i].load; j++)
            if (g->mem[j].load && strcmp(g->mem[j].id, mem[i].id) == 0) {
                mem[i].load = g->mem[j].load;
                g->mem[j].load = NULL;
            }
        if (!mem[i].load)
            mem[i].load = calloc(1, sizeof *mem[i].load);
        if (!mem[i].load) {
            rc = rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
            loads_return(g, mem, n);
            pthread_rwlock_unlock(&g->lock);
            goto out;
        }
    }
    for (size_t k = 0; k < nep; k++)
        eps[k].load = mem[ep[k]].load;
    if (nb) {
        rhema_balancer *old = g->b;
        const struct rhema_balancer_plugin *ovt = g->vt;
        rc = nvt->update(nb, eps, nep);
        if (rc == 0) {
            g->b = nb;
            g->vt = nvt;
            nb = NULL;
            if (old)
                ovt->destroy(old);
            snprintf(g->strategy, sizeof g->strategy, "%s", strategy);
        }
    } else {
        rc = g->vt->update(g->b, eps, nep);
    }
    if (rc) {
        loads_return(g, mem, n); /* keep the old set */
        pthread_rwlock_unlock(&g->lock);
        rhema_set_error(err, rc, "group '%s': the strategy refused the update", name);
        goto out;
    }
    members_free(g->mem, g->nmem, 1); /* loads of members that left */
    free(g->ep);
    g->mem = mem;
    g->nmem = n;
    g->ep = ep;
    g->nep = nep;
    mem = NULL;
    ep = NULL;
    pthread_rwlock_unlock(&g->lock);
    if (created) {
        pthread_rwlock_wrlock(&s->table_lock);
        if (s->ngroups == s->capgroups) {
            size_t cap = s->capgroups ? 2 * s->capgroups : 16;
            struct group **v = realloc(s->groups, cap * sizeof *v);
            if (!v) {
                pthread_rwlock_unlock(&s->table_lock);
                rc = rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
                goto out;
            }
            s->groups = v;
            s->capgroups = cap;
        }
        s->groups[s->ngroups++] = created;
        created = NULL;
        pthread_rwlock_unlock(&s->table_lock);
    }
out:
    if (mem) {
        /* loads not placed into a group are ours; loads moved from g went back above */
        members_free(mem, n, 1);
    }
    if (nb)
        nvt->destroy(nb);
    if (created)
        svc_group_free(created);
    free(ep);
    free(eps);
    free(m);
    return rc;
}

int rhema_services_apply(struct rhema_services *s, const char *name,
                         const struct rhema_service_member *m, size_t n, char **err)
{
    pthread_mutex_lock(&s->apply_lock);
    int rc = svc_apply_locked(s, name, m, n, err);
    pthread_mutex_unlock(&s->apply_lock);
    return rc;
}

int rhema_services_select(struct rhema_services *s, const char *name,
                          const struct rhema_pick_ctx *ctx, struct rhema_selection *out)
{
    struct rhema_pick_ctx c = {0};
    struct group *g;
    size_t idx;
    int rc;
    long gi;

    if (ctx)
        c = *ctx;
    c.size = sizeof c;
    c.random = next_random(s);
    pthread_rwlock_rdlock(&s->table_lock);
    gi = group_find(s, name);
    if (gi < 0) {
        pthread_rwlock_unlock(&s->table_lock);
        return RHEMA_ENOTFOUND;
    }
    g = s->groups[gi];
    pthread_rwlock_rdlock(&g->lock);
    rc = g->nep ? g->vt->pick(g->b, &c, &idx) : RHEMA_ENOTFOUND;
    if (rc == 0 && idx < g->nep) {
        const struct member *m = &g->mem[g->ep[idx]];
        snprintf(out->service_id, sizeof out->service_id, "%s", m->id);
        snprintf(out->address, sizeof out->address, "%s", m->address);
        snprintf(out->strategy, sizeof out->strategy, "%s", g->strategy);
        atomic_fetch_add_explicit(&m->load->inflight, 1, memory_order_relaxed);
    } else {
        rc = RHEMA_EUNAVAIL;
    }
    pthread_rwlock_unlock(&g->lock);
    pthread_rwlock_unlock(&s->table_lock);
    return rc;
}

/* Find member id: the group and index (under table_lock read and the group's read lock). */
static struct member *member_find(struct rhema_services *s, const char *id, struct group **gout)
{
    for (size_t i = 0; i < s->ngroups; i++) {
        struct group *g = s->groups[i];
        pthread_rwlock_rdlock(&g->lock);
        for (size_t j = 0; j < g->nmem; j++)
            if (strcmp(g->mem[j].id, id) == 0) {
                *gout = g;
                return &g->mem[j]; /* the group stays read-locked */
            }
        pthread_rwlock_unlock(&g->lock);
    }
    return NULL;
}

int rhema_services_feedback(struct rhema_services *s, const char *id, uint64_t latency_ns, int ok)
{
    struct group *g = NULL;
    struct member *m;
    struct rhema_endpoint_load *l;
    pthread_rwlock_rdlock(&s->table_lock);
    m = member_find(s, id, &g);
    if (!m) {
        pthread_rwlock_unlock(&s->table_lock);
        return RHEMA_ENOTFOUND;
    }
    l = m->load;
    unsigned cur = atomic_load_explicit(&l->inflight, memory_order_relaxed);
    while (cur > 0 &&
           !atomic_compare_exchange_weak_explicit(&l->inflight, &cur, cur - 1, memory_order_relaxed,
                                                  memory_order_relaxed)) {
    }
    unsigned long long e = atomic_load_explicit(&l->ewma_ns, memory_order_relaxed), ne;
    do {
        if (e == 0)
            ne = latency_ns ? latency_ns : 1;
        else
            ne = (unsigned long long)((int64_t)e + ((int64_t)latency_ns - (int64_t)e) / 8);
        if (ne == 0)
            ne = 1;
    } while (!atomic_compare_exchange_weak_explicit(&l->ewma_ns, &e, ne, memory_order_relaxed,
                                                    memory_order_relaxed));
    atomic_fetch_add_explicit(&l->samples, 1, memory_order_relaxed);
    if (!ok)
        atomic_fetch_add_explicit(&l->failures, 1, memory_order_relaxed);
    if (g->vt->feedback) {
        size_t mi = (size_t)(m - g->mem);
        for (size_t k = 0; k < g->nep; k++)
            if (g->ep[k] == mi) {
                g->vt->feedback(g->b, k, latency_ns, ok ? 1 : 0);
                break;
            }
    }
    pthread_rwlock_unlock(&g->lock);
    pthread_rwlock_unlock(&s->table_lock);
    return 0;
}

int rhema_services_load_get(struct rhema_services *s, const char *id, unsigned *inflight,
                            uint64_t *ewma_ns, uint64_t *samples, uint64_t *failures)
{
    struct group *g = NULL;
    struct member *m;
    pthread_rwlock_rdlock(&s->table_lock);
    m = member_find(s, id, &g);
    if (m) {
        if (inflight)
            *inflight = atomic_load(&m->load->inflight);
        if (ewma_ns)
            *ewma_ns = atomic_load(&m->load->ewma_ns);
        if (samples)
            *samples = atomic_load(&m->load->samples);
        if (failures)
            *failures = atomic_load(&m->load->failures);
        pthread_rwlock_unlock(&g->lock);
    }
    pthread_rwlock_unlock(&s->table_lock);
    return m ? 0 : RHEMA_ENOTFOUND;
}

void svc_count_checks(const struct rhema_services *s, const char *name, const char *skip,
                      size_t *in_name, size_t *total)
{
    struct rhema_services *ms = (struct rhema_services *)s; /* the locks only */
    *in_name = *total = 0;
    pthread_rwlock_rdlock(&ms->table_lock);
    for (size_t i = 0; i < s->ngroups; i++) {
        struct group *g = s->groups[i];
        int same = strcmp(g->name, name) == 0;
        pthread_rwlock_rdlock(&g->lock);
        for (size_t j = 0; j < g->nmem; j++)
            if (g->mem[j].has_check && strcmp(g->mem[j].id, skip) != 0) {
                (*total)++;
                *in_name += same;
            }
        pthread_rwlock_unlock(&g->lock);
    }
    pthread_rwlock_unlock(&ms->table_lock);
}

/* ---- building groups from stored records ---- */

int svc_collect_rec(void *ctx, const char *key, const void *value, size_t len, uint64_t version)
{
    struct rec_list *rl = ctx;
    json_t *j = rhema_json_loadb(value, len, 0, NULL);
    if (!json_is_object(j)) {
        json_decref(j);
        return 0; /* not ours to judge here; GET reports it */
    }
    if (rl->n == rl->cap) {
        size_t cap = rl->cap ? 2 * rl->cap : 32;
        struct rec *v = realloc(rl->v, cap * sizeof *v);
        if (!v) {
            json_decref(j);
            rl->oom = 1;
            return RHEMA_ENOMEM;
        }
        rl->v = v;
        rl->cap = cap;
    }
    rl->v[rl->n].id = strdup(key);
    rl->v[rl->n].rec = j;
    rl->v[rl->n].version = version;
    if (!rl->v[rl->n].id) {
        json_decref(j);
        rl->oom = 1;
        return RHEMA_ENOMEM;
    }
    rl->n++;
    return 0;
}

void svc_rec_list_free(struct rec_list *rl)
{
    for (size_t i = 0; i < rl->n; i++) {
        free(rl->v[i].id);
        json_decref(rl->v[i].rec);
    }
    free(rl->v);
    memset(rl, 0, sizeof *rl);
}

void svc_member_of(struct rhema_service_member *m, const char *id, json_t *rec, json_t *health,
                   int checks_enabled)
{
    json_t *strategy = json_object_get(rec, "strategy");
    m->id = id;
    m->address = json_string_value(json_object_get(rec, "address"));
    if (!m->address)
        m->address = "";
    m->strategy = json_is_string(strategy) ? json_string_value(strategy) : NULL;
    m->weight = (uint32_t)json_integer_value(json_object_get(rec, "weight"));
    m->healthy = svc_health_of(rec, health, checks_enabled, NULL) == RHEMA_HEALTH_HEALTHY;
    m->has_check = json_is_object(json_object_get(rec, "check"));
}

int rhema_services_refresh_name(struct rhema_services *s, struct rhema_store *st, const char *name)
{
    char from[RHEMA_ID_MAX + 2], to[RHEMA_ID_MAX + 2], err[RHEMA_ERRMSG_MAX];
    struct rhema_key_list ids = {0};
    struct rec_list rl = {0};
    json_t **health = NULL;
    struct rhema_service_member *m = NULL;
    char *aerr = NULL;
    size_t n = 0;
    int rc;

    snprintf(from, sizeof from, "%s/", name);
    snprintf(to, sizeof to, "%s0", name);
    ids.strip = strlen(name) + 1;
    pthread_mutex_lock(&s->apply_lock);
    rc = st->vt->scan(st->conn, RHEMA_SERVICES_NAME_NS, from, to, 0, rhema_key_list_collect, &ids);
    if (rc)
        goto out;
    health = calloc(ids.n + 1, sizeof *health);
    m = calloc(ids.n + 1, sizeof *m);
    rl.v = calloc(ids.n + 1, sizeof *rl.v);
    rl.cap = ids.n + 1;
    if (!health || !m || !rl.v) {
        rc = RHEMA_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < ids.n; i++) {
        json_t *rec = NULL;
        uint64_t version;
        if ((rc = svc_load_json(st, RHEMA_SERVICES_NS, ids.v[i], &rec, &version, err)))
            goto out;
        if (!rec)
            continue;
        if ((rc = svc_load_json(st, RHEMA_SERVICES_HEALTH_NS, ids.v[i], &health[n], NULL, err))) {
            json_decref(rec);
            goto out;
        }
        rl.v[rl.n].id = strdup(ids.v[i]);
        rl.v[rl.n].rec = rec;
        rl.n++;
        svc_member_of(&m[n], rl.v[n].id ? rl.v[n].id : "", rec, health[n], s->checks_enabled);
        n++;
    }
    rc = svc_apply_locked(s, name, m, n, &aerr);
out:
    pthread_mutex_unlock(&s->apply_lock);
    if (rc)
        rhema_log(RHEMA_LOG_WARN, WHO, "refreshing service '%s': %s", name,
                  aerr ? aerr : rhema_strerror(rc));
    free(aerr);
    for (size_t i = 0; health && i < n; i++)
        json_decref(health[i]);
    free(health);
    free(m);
    svc_rec_list_free(&rl);
    rhema_key_list_release(&ids);
    return rc;
}
