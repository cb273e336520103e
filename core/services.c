/*
 * services -- the service registry's store, its groups and balancers, and
 * the health checker with its probes (see services.h for the layout, the
 * rules and the locking; validation is services_validate.c, the health
 * state machine services_health.c).
 */
#include "rhema_build.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/bufferevent.h>
#include <event2/http.h>
#include <event2/util.h>

#include "cluster.h"
#include "server.h"
#include "json_fields.h"
#include "log.h"
#include "services.h"
#include "util.h"

#define WHO "services"
#define PUT_RETRIES 8
#define TTL_PASS_MAX_LEN 24
#define CHECK_KEY_MAX 2048

static const char *const builtin_strategies[] = {"round_robin",          "least_connections",
                                                 "weighted_round_robin", "least_response_time",
                                                 "random",               "ip_hash",
                                                 NULL};

static const char *jstr(json_t *v)
{
    const char *s = json_string_value(v);
    return s ? s : "";
}

/* ---- the store ---- */

/* Read ns/key as JSON: 0 and *out (NULL when absent), or an error. */
static int load_json(struct rhema_store *st, const char *ns, const char *key, json_t **out,
                     uint64_t *version, char *err)
{
    struct rhema_storage_value val = {.size = sizeof(struct rhema_storage_value)};
    int rc = st->vt->get(st->conn, ns, key, &val);
    *out = NULL;
    if (rc == RHEMA_ENOTFOUND)
        return 0;
    if (rc)
        return rhema_store_error(st, rc, "reading the registry", err);
    *out = json_loadb(val.data, val.len, 0, NULL);
    if (!*out)
        return rhema_set_errbuf(err, RHEMA_ECORRUPT, "%s '%s': stored value is not JSON", ns, key);
    if (version)
        *version = val.version;
    return 0;
}

/* The canonical text of a check (what a health record is computed for); malloc'd. */
static char *check_key(json_t *check)
{
    if (!check || json_is_null(check))
        return NULL;
    return rhema_json_dumps(check, JSON_COMPACT | JSON_SORT_KEYS);
}

static enum rhema_health health_parse(const char *s)
{
    if (s && strcmp(s, "Healthy") == 0)
        return RHEMA_HEALTH_HEALTHY;
    if (s && strcmp(s, "Unhealthy") == 0)
        return RHEMA_HEALTH_UNHEALTHY;
    return RHEMA_HEALTH_UNKNOWN;
}

const char *rhema_health_name(enum rhema_health h)
{
    return h == RHEMA_HEALTH_HEALTHY ? "Healthy" : h == RHEMA_HEALTH_UNHEALTHY ? "Unhealthy"
                                                                                : "Unknown";
}

/*
 * The health of registration rec given its health record (may be NULL):
 * the status, and the health record when it applies to rec's check.
 */
static enum rhema_health health_of(json_t *rec, json_t *health, int checks_enabled,
                                   json_t **applies)
{
    json_t *check = json_object_get(rec, "check");
    char *key;
    enum rhema_health h = RHEMA_HEALTH_UNKNOWN;
    if (applies)
        *applies = NULL;
    if (!checks_enabled || !check || json_is_null(check))
        return RHEMA_HEALTH_HEALTHY;
    if (!health)
        return RHEMA_HEALTH_UNKNOWN;
    key = check_key(check);
    if (key && json_string_value(json_object_get(health, "check")) &&
        strcmp(key, json_string_value(json_object_get(health, "check"))) == 0) {
        h = health_parse(json_string_value(json_object_get(health, "status")));
        if (applies)
            *applies = health;
    }
    free(key);
    return h;
}

static void time_field(json_t *o, const char *name, uint64_t ms)
{
    char t[RHEMA_TIME_MAX];
    if (!ms) {
        json_object_set_new(o, name, json_null());
        return;
    }
    rhema_time_format(ms, t);
    json_object_set_new(o, name, json_string(t));
}

/* Add health_status, last_health_check, check_status, check_output, version to rec. */
static int decorate(struct rhema_store *st, const char *id, json_t *rec, uint64_t version,
                    int checks_enabled, char *err)
{
    json_t *health = NULL, *applies;
    int rc = load_json(st, RHEMA_SERVICES_HEALTH_NS, id, &health, NULL, err);
    if (rc)
        return rc;
    enum rhema_health h = health_of(rec, health, checks_enabled, &applies);
    json_object_set_new(rec, "health_status", json_string(rhema_health_name(h)));
    time_field(rec, "last_health_check",
               applies ? (uint64_t)json_integer_value(json_object_get(applies, "last_check")) : 0);
    json_object_set_new(rec, "check_status",
                        applies ? json_incref(json_object_get(applies, "check_status"))
                                : json_null());
    json_object_set_new(rec, "check_output",
                        applies ? json_incref(json_object_get(applies, "output")) : json_null());
    json_object_set_new(rec, "version", json_integer((json_int_t)version));
    json_decref(health);
    return 0;
}

static int record_out(json_t *rec, uint64_t version, struct rhema_record *out, char *err)
{
    out->json = rhema_json_dumps(rec, JSON_COMPACT);
    if (!out->json)
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    out->len = strlen(out->json);
    out->version = version;
    return 0;
}

int rhema_service_put(struct rhema_store *st, const char *id, json_t *svc, uint64_t if_match,
                      int checks_enabled, struct rhema_record *out, int *created,
                      char old_name[RHEMA_ID_MAX + 1], char err[RHEMA_ERRMSG_MAX])
{
    char idx_new[2 * RHEMA_ID_MAX + 2], idx_old[2 * RHEMA_ID_MAX + 2];
    const char *name = json_string_value(json_object_get(svc, "name"));
    int rc = 0;

    if (old_name)
        old_name[0] = '\0';
    snprintf(idx_new, sizeof idx_new, "%s/%s", name, id);
    for (int attempt = 0; attempt < PUT_RETRIES; attempt++) {
        json_t *cur = NULL, *rec = NULL;
        uint64_t version = 0, now = rhema_realtime_ms();
        char t[RHEMA_TIME_MAX];
        struct rhema_storage_write w[3];
        size_t n = 0;
        char *text = NULL;

        if ((rc = load_json(st, RHEMA_SERVICES_NS, id, &cur, &version, err)))
            return rc;
        if (if_match == RHEMA_VERSION_ABSENT && cur) {
            json_decref(cur);
            return rhema_set_errbuf(err, RHEMA_EPRECONDITION, "service '%s' already exists", id);
        }
        if (if_match && if_match != RHEMA_VERSION_ABSENT && (!cur || version != if_match)) {
            json_decref(cur);
            return rhema_set_errbuf(
                err, RHEMA_EPRECONDITION,
                cur ? "service '%s' is at another version" : "service '%s' not found", id);
        }
        rec = json_deep_copy(svc);
        rhema_time_format(now, t);
        json_t *reg = cur ? json_object_get(cur, "registered_at") : NULL;
        json_object_set_new(rec, "registered_at", reg ? json_incref(reg) : json_string(t));
        json_object_set_new(rec, "updated_at", json_string(t));
        text = rhema_json_dumps(rec, JSON_COMPACT);
        if (!text) {
            json_decref(cur);
            json_decref(rec);
            return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
        }
        memset(w, 0, sizeof w);
        w[n].size = sizeof(struct rhema_storage_write);
        w[n].op = RHEMA_WRITE_PUT;
        w[n].ns = RHEMA_SERVICES_NS;
        w[n].key = id;
        w[n].value = text;
        w[n].value_len = strlen(text);
        w[n].expected_version = cur ? version : RHEMA_VERSION_ABSENT;
        n++;
        const char *oname = cur ? json_string_value(json_object_get(cur, "name")) : NULL;
        if (oname && strcmp(oname, name) != 0) {
            snprintf(idx_old, sizeof idx_old, "%s/%s", oname, id);
            w[n].size = sizeof(struct rhema_storage_write);
            w[n].op = RHEMA_WRITE_DEL;
            w[n].ns = RHEMA_SERVICES_NAME_NS;
            w[n].key = idx_old;
            n++;
            if (old_name)
                snprintf(old_name, RHEMA_ID_MAX + 1, "%s", oname);
        }
        w[n].size = sizeof(struct rhema_storage_write);
        w[n].op = RHEMA_WRITE_PUT;
        w[n].ns = RHEMA_SERVICES_NAME_NS;
        w[n].key = idx_new;
        w[n].value = "";
        w[n].value_len = 0;
        n++;
        rc = st->vt->batch(st->conn, w, n);
        free(text);
        if (rc == 0) {
            *created = cur == NULL;
            rc = decorate(st, id, rec, w[0].new_version, checks_enabled, err);
            if (!rc)
                rc = record_out(rec, w[0].new_version, out, err);
        } else if (rc != RHEMA_ECONFLICT && rc != RHEMA_ENOTFOUND) {
            rc = rhema_store_error(st, rc, "writing the service", err);
        }
        json_decref(cur);
        json_decref(rec);
        if (rc != RHEMA_ECONFLICT && rc != RHEMA_ENOTFOUND)
            return rc;
        if (if_match) /* the version the client named is gone */
            return rhema_set_errbuf(err, RHEMA_EPRECONDITION, "service '%s' changed meanwhile", id);
    }
    return rhema_set_errbuf(err, RHEMA_ECONFLICT, "service '%s': too many concurrent writers", id);
}

int rhema_service_get(struct rhema_store *st, const char *id, int checks_enabled,
                      struct rhema_record *out, char err[RHEMA_ERRMSG_MAX])
{
    json_t *rec;
    uint64_t version = 0;
    int rc = load_json(st, RHEMA_SERVICES_NS, id, &rec, &version, err);
    if (rc)
        return rc;
    if (!rec)
        return rhema_set_errbuf(err, RHEMA_ENOTFOUND, "service '%s' not found", id);
    rc = decorate(st, id, rec, version, checks_enabled, err);
    if (!rc)
        rc = record_out(rec, version, out, err);
    json_decref(rec);
    return rc;
}

/* Delete the registration and its index (version: the one read), then health and pass. */
static int delete_versioned(struct rhema_store *st, const char *id, const char *name,
                            uint64_t version)
{
    char idx[2 * RHEMA_ID_MAX + 2];
    struct rhema_storage_write w[2];
    int rc;
    snprintf(idx, sizeof idx, "%s/%s", name, id);
    memset(w, 0, sizeof w);
    w[0].size = sizeof(struct rhema_storage_write);
    w[0].op = RHEMA_WRITE_DEL;
    w[0].ns = RHEMA_SERVICES_NS;
    w[0].key = id;
    w[0].expected_version = version;
    w[1].size = sizeof(struct rhema_storage_write);
    w[1].op = RHEMA_WRITE_DEL;
    w[1].ns = RHEMA_SERVICES_NAME_NS;
    w[1].key = idx;
    rc = st->vt->batch(st->conn, w, 2);
    if (rc == RHEMA_ENOTFOUND) /* an index entry lost by an older version: delete the record */
        rc = st->vt->del(st->conn, RHEMA_SERVICES_NS, id, version);
    if (rc == 0) {
        st->vt->del(st->conn, RHEMA_SERVICES_HEALTH_NS, id, RHEMA_VERSION_ANY);
        st->vt->del(st->conn, RHEMA_SERVICES_PASS_NS, id, RHEMA_VERSION_ANY);
    }
    return rc;
}

int rhema_service_delete(struct rhema_store *st, const char *id, uint64_t if_match,
                         char name_out[RHEMA_ID_MAX + 1], char err[RHEMA_ERRMSG_MAX])
{
    int rc = 0;
    for (int attempt = 0; attempt < PUT_RETRIES; attempt++) {
        json_t *cur;
        uint64_t version = 0;
        if ((rc = load_json(st, RHEMA_SERVICES_NS, id, &cur, &version, err)))
            return rc;
        if (!cur)
            return rhema_set_errbuf(err, if_match ? RHEMA_EPRECONDITION : RHEMA_ENOTFOUND,
                                    "service '%s' not found", id);
        if (if_match && version != if_match) {
            json_decref(cur);
            return rhema_set_errbuf(err, RHEMA_EPRECONDITION, "service '%s' is at another version",
                                    id);
        }
        const char *name = json_string_value(json_object_get(cur, "name"));
        if (name_out)
            snprintf(name_out, RHEMA_ID_MAX + 1, "%s", name ? name : "");
        rc = delete_versioned(st, id, name ? name : "", version);
        json_decref(cur);
        if (rc == 0)
            return 0;
        if (rc != RHEMA_ECONFLICT && rc != RHEMA_ENOTFOUND)
            return rhema_store_error(st, rc, "deleting the service", err);
    }
    return rhema_set_errbuf(err, RHEMA_ECONFLICT, "service '%s': too many concurrent writers", id);
}

int rhema_service_list(struct rhema_store *st, const char *name, size_t limit, const char *cursor,
                       int checks_enabled, char **out, size_t *out_len,
                       char err[RHEMA_ERRMSG_MAX])
{
    char from[2 * RHEMA_ID_MAX + 4], to[RHEMA_ID_MAX + 2];
    struct rhema_key_list ids = {0};
    json_t *items = NULL, *page = NULL;
    int rc = 0;

    if (limit == 0)
        limit = RHEMA_LIST_LIMIT_DEFAULT;
    if (limit > RHEMA_LIST_LIMIT_MAX)
        limit = RHEMA_LIST_LIMIT_MAX;
    if (name && !rhema_id_valid(name))
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "parameter 'name': expected 1-128 characters [A-Za-z0-9._:-]");
    if (cursor && !rhema_id_valid(cursor))
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "parameter 'cursor': not a cursor this server issued");
    if (name) {
        snprintf(from, sizeof from, "%s/%s%s", name, cursor ? cursor : "", cursor ? "\x01" : "");
        snprintf(to, sizeof to, "%s0", name);
        ids.strip = strlen(name) + 1;
        rc = st->vt->scan(st->conn, RHEMA_SERVICES_NAME_NS, from, to, limit + 1,
                          rhema_key_list_collect, &ids);
    } else {
        if (cursor)
            snprintf(from, sizeof from, "%s\x01", cursor);
        rc = st->vt->scan(st->conn, RHEMA_SERVICES_NS, cursor ? from : NULL, NULL, limit + 1,
                          rhema_key_list_collect, &ids);
    }
    if (rc) {
        rc = ids.oom ? rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory")
                     : rhema_store_error(st, rc, "listing services", err);
        goto out;
    }
    items = json_array();
    for (size_t i = 0; i < ids.n && i < limit; i++) {
        json_t *rec;
        uint64_t version;
        if ((rc = load_json(st, RHEMA_SERVICES_NS, ids.v[i], &rec, &version, err)))
            goto out;
        if (!rec)
            continue; /* deleted between the scan and the read */
        if ((rc = decorate(st, ids.v[i], rec, version, checks_enabled, err))) {
            json_decref(rec);
            goto out;
        }
        json_array_append_new(items, rec);
    }
    page = json_pack("{s:O,s:o}", "items", items, "next_cursor",
                     ids.n > limit ? json_string(ids.v[limit - 1]) : json_null());
    *out = page ? rhema_json_dumps(page, JSON_COMPACT) : NULL;
    if (!*out) {
        rc = rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
        goto out;
    }
    *out_len = strlen(*out);
out:
    json_decref(items);
    json_decref(page);
    rhema_key_list_release(&ids);
    return rc;
}

int rhema_service_pass(struct rhema_store *st, const char *id, char err[RHEMA_ERRMSG_MAX])
{
    json_t *rec;
    char buf[TTL_PASS_MAX_LEN];
    struct rhema_storage_write w = {.size = sizeof(struct rhema_storage_write)};
    int rc = load_json(st, RHEMA_SERVICES_NS, id, &rec, NULL, err);
    if (rc)
        return rc;
    if (!rec)
        return rhema_set_errbuf(err, RHEMA_ENOTFOUND, "service '%s' not found", id);
    const char *type = json_string_value(json_object_get(json_object_get(rec, "check"), "type"));
    if (!type || strcmp(type, "ttl") != 0) {
        json_decref(rec);
        return rhema_set_errbuf(err, RHEMA_EINVAL, "service '%s' has no ttl check", id);
    }
    json_decref(rec);
    snprintf(buf, sizeof buf, "%" PRIu64, rhema_realtime_ms());
    w.op = RHEMA_WRITE_PUT;
    w.ns = RHEMA_SERVICES_PASS_NS;
    w.key = id;
    w.value = buf;
    w.value_len = strlen(buf);
    if ((rc = st->vt->put(st->conn, &w)))
        return rhema_store_error(st, rc, "recording the pass", err);
    return 0;
}

/* ---- groups: the snapshot per name and its balancer ---- */

struct member {
    char *id, *address;
    uint32_t weight;
    int healthy;
    struct rhema_endpoint_load *load; /* lives as long as the member */
};

struct group {
    char *name;
    pthread_rwlock_t lock; /* read: pick and use the index; write: update */
    const struct rhema_balancer_plugin *vt;
    rhema_balancer *b;
    char strategy[RHEMA_ID_MAX + 1];
    struct member *mem; /* every member, in service_id order */
    size_t nmem;
    size_t *ep;         /* endpoint index (of the latest update) -> mem index */
    size_t nep;
};

struct probe;
struct chk;

struct rhema_services {
    const struct rhema_config *cfg;
    struct rhema_plugin_registry *reg;
    char default_strategy[RHEMA_ID_MAX + 1];
    int checks_enabled;
    struct rhema_check_defaults defaults;
    atomic_uint_fast64_t rng;

    pthread_rwlock_t table_lock; /* groups[]: write-locked to add or remove a group */
    struct group **groups;
    size_t ngroups, capgroups;
    pthread_mutex_t apply_lock;  /* serialises rebuilds (read + apply) and create() */

    /* main thread only */
    struct rhema_server *srv;
    struct event_base *base;
    rhema_storage_conn *conn;
    struct rhema_store st;
    struct event *refresh_ev, *tick_ev;
    struct chk *checks;
    size_t nchecks, capchecks;
    struct probe *probes; /* every probe not yet freed */
    int was_leader;
    int refresh_soon;
};

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

int rhema_services_checks_enabled(const struct rhema_services *s)
{
    return s->checks_enabled;
}

/* Create an instance of strategy name (under apply_lock, or before the workers). */
static int balancer_create(struct rhema_services *s, const char *name,
                           const struct rhema_balancer_plugin **vt, rhema_balancer **b, char **err)
{
    const struct rhema_loaded_plugin *p = rhema_plugin_find(s->reg, RHEMA_KIND_BALANCER, name);
    char *perr = NULL;
    int rc;
    if (!p)
        return rhema_set_error(err, RHEMA_ENOTFOUND, "balancing strategy '%s' is not loaded", name);
    rc = p->vt.balancer.create(rhema_host_get(),
                               rhema_config_plugin_group(s->cfg, RHEMA_KIND_BALANCER, name), b,
                               &perr);
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

static void group_free(struct group *g)
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
            g->mem[i].weight != m[i].weight || !g->mem[i].healthy != !m[i].healthy)
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
static int apply_locked(struct rhema_services *s, const char *name,
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
        group_free(g); /* no reader can hold it: they hold table_lock while using a group */
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
        rc = balancer_create(s, strategy, &nvt, &nb, err);
        if (rc && strategy != s->default_strategy) {
            rhema_log(RHEMA_LOG_WARN, WHO, "service '%s': %s; using '%s'", name,
                      err && *err ? *err : "?", s->default_strategy);
            strategy = s->default_strategy;
            rc = balancer_create(s, strategy, &nvt, &nb, err);
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
        group_free(created);
    free(ep);
    free(eps);
    free(m);
    return rc;
}

int rhema_services_apply(struct rhema_services *s, const char *name,
                         const struct rhema_service_member *m, size_t n, char **err)
{
    pthread_mutex_lock(&s->apply_lock);
    int rc = apply_locked(s, name, m, n, err);
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
    while (cur > 0 && !atomic_compare_exchange_weak_explicit(&l->inflight, &cur, cur - 1,
                                                             memory_order_relaxed,
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

/* ---- building groups from stored records ---- */

struct rec_list {
    struct rec {
        char *id;
        json_t *rec;
        uint64_t version;
    } *v;
    size_t n, cap;
    int oom;
};

static int collect_rec(void *ctx, const char *key, const void *value, size_t len,
                       uint64_t version)
{
    struct rec_list *rl = ctx;
    json_t *j = json_loadb(value, len, 0, NULL);
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

static void rec_list_free(struct rec_list *rl)
{
    for (size_t i = 0; i < rl->n; i++) {
        free(rl->v[i].id);
        json_decref(rl->v[i].rec);
    }
    free(rl->v);
    memset(rl, 0, sizeof *rl);
}

static void member_of(struct rhema_service_member *m, const char *id, json_t *rec, json_t *health,
                      int checks_enabled)
{
    json_t *strategy = json_object_get(rec, "strategy");
    m->id = id;
    m->address = json_string_value(json_object_get(rec, "address"));
    if (!m->address)
        m->address = "";
    m->strategy = json_is_string(strategy) ? json_string_value(strategy) : NULL;
    m->weight = (uint32_t)json_integer_value(json_object_get(rec, "weight"));
    m->healthy = health_of(rec, health, checks_enabled, NULL) == RHEMA_HEALTH_HEALTHY;
}

int rhema_services_refresh_name(struct rhema_services *s, struct rhema_store *st,
                                const char *name)
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
        if ((rc = load_json(st, RHEMA_SERVICES_NS, ids.v[i], &rec, &version, err)))
            goto out;
        if (!rec)
            continue;
        if ((rc = load_json(st, RHEMA_SERVICES_HEALTH_NS, ids.v[i], &health[n], NULL, err))) {
            json_decref(rec);
            goto out;
        }
        rl.v[rl.n].id = strdup(ids.v[i]);
        rl.v[rl.n].rec = rec;
        rl.n++;
        member_of(&m[n], rl.v[n].id ? rl.v[n].id : "", rec, health[n], s->checks_enabled);
        n++;
    }
    rc = apply_locked(s, name, m, n, &aerr);
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
    rec_list_free(&rl);
    rhema_key_list_release(&ids);
    return rc;
}

/* ---- the module ---- */

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
        if ((rc = balancer_create(s, p->name, &vt, &b, err)))
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
        group_free(s->groups[i]);
    free(s->groups);
    pthread_rwlock_destroy(&s->table_lock);
    pthread_mutex_destroy(&s->apply_lock);
    free(s);
}

/* ---- the checker (main thread, while this node leads) ---- */

enum chk_type { CHK_HTTP, CHK_TCP, CHK_TTL };

struct chk {
    char id[RHEMA_ID_MAX + 1];
    char *key;       /* the canonical check JSON */
    enum chk_type type;
    char *target;
    uint64_t interval_ms, timeout_ms, dereg_ms;
    uint32_t fthr, sthr;
    uint64_t baseline_ms; /* updated_at of the registration: a TTL's grace starts there */
    char name[RHEMA_ID_MAX + 1];
    uint64_t version;     /* of the registration, for deregistration */
    uint64_t due_ns;      /* monotonic */
    struct probe *probe;  /* in flight, or NULL */
    int seen;
};

struct probe {
    struct rhema_services *s;
    struct chk *owner; /* NULL once detached (the check went away, leadership was lost) */
    char id[RHEMA_ID_MAX + 1];
    struct evhttp_connection *hc;
    struct bufferevent *bev;
    uint64_t deadline_ns;
    int done;
    struct probe *next;
};

static void chk_release(struct chk *c)
{
    if (c->probe)
        c->probe->owner = NULL;
    c->probe = NULL;
    free(c->key);
    free(c->target);
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
        if (load_json(st, RHEMA_SERVICES_HEALTH_NS, c->id, &h, &version, err)) {
            rhema_log(RHEMA_LOG_WARN, WHO, "health of '%s': %s", c->id, err);
            return;
        }
        if (h && json_string_value(json_object_get(h, "check")) &&
            strcmp(json_string_value(json_object_get(h, "check")), c->key) == 0) {
            cs.status = health_parse(json_string_value(json_object_get(h, "status")));
            cs.ok_streak = (uint32_t)json_integer_value(json_object_get(h, "ok_streak"));
            cs.fail_streak = (uint32_t)json_integer_value(json_object_get(h, "fail_streak"));
            cs.critical_since_ms =
                (uint64_t)json_integer_value(json_object_get(h, "critical_since"));
        }
        json_decref(h);
        changed = rhema_check_apply(&cs, result, c->fthr, c->sthr, now);
        nh = json_pack("{s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:s}", "status",
                       rhema_health_name(cs.status), "check_status",
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
        rc = st->vt->put(st->conn, &w);
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
            rc = delete_versioned(st, c->id, c->name, c->version);
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

static void probe_free(struct probe *p)
{
    if (p->hc)
        evhttp_connection_free(p->hc);
    if (p->bev)
        bufferevent_free(p->bev);
    free(p);
}

/* Split "host:port" / "[v6]:port". */
static int split_hostport(const char *a, char *host, size_t cap, int *port)
{
    const char *colon;
    if (a[0] == '[') {
        const char *end = strchr(a, ']');
        if (!end || (size_t)(end - a) > cap)
            return -1;
        snprintf(host, cap, "%.*s", (int)(end - a - 1), a + 1);
        colon = end + 1;
    } else {
        colon = strrchr(a, ':');
        if (!colon || (size_t)(colon - a) >= cap)
            return -1;
        snprintf(host, cap, "%.*s", (int)(colon - a), a);
    }
    if (*colon != ':')
        return -1;
    *port = atoi(colon + 1);
    return 0;
}

static void check_start(struct rhema_services *s, struct chk *c)
{
    struct probe *p;
    char host[RHEMA_SERVICE_ADDR_MAX + 1];
    int port = 0;
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
    p->deadline_ns = rhema_monotonic_ns() + (c->timeout_ms + 1000) * 1000000ull;
    p->next = s->probes;
    s->probes = p;
    c->probe = p;
    if (c->type == CHK_HTTP) {
        struct evhttp_uri *uri = evhttp_uri_parse(c->target);
        struct evhttp_request *req;
        char path[2048];
        const char *h = uri ? evhttp_uri_get_host(uri) : NULL;
        if (!h) {
            if (uri)
                evhttp_uri_free(uri);
            probe_finish(p, RHEMA_CHECK_CRITICAL, "bad URL");
            return;
        }
        port = evhttp_uri_get_port(uri);
        snprintf(path, sizeof path, "%s%s%s",
                 evhttp_uri_get_path(uri) && *evhttp_uri_get_path(uri) ? evhttp_uri_get_path(uri)
                                                                       : "/",
                 evhttp_uri_get_query(uri) ? "?" : "",
                 evhttp_uri_get_query(uri) ? evhttp_uri_get_query(uri) : "");
        p->hc = evhttp_connection_base_new(s->base, NULL, h, (uint16_t)(port > 0 ? port : 80));
        req = p->hc ? evhttp_request_new(http_done, p) : NULL;
        if (!req) {
            evhttp_uri_free(uri);
            probe_finish(p, RHEMA_CHECK_CRITICAL, "cannot create the request");
            return;
        }
        evhttp_connection_set_timeout(p->hc, (int)(c->timeout_ms / 1000));
        evhttp_connection_set_retries(p->hc, 0);
        evhttp_add_header(evhttp_request_get_output_headers(req), "Host", h);
        evhttp_add_header(evhttp_request_get_output_headers(req), "User-Agent",
                          "rhemad-health-check");
        evhttp_uri_free(uri);
        if (evhttp_make_request(p->hc, req, EVHTTP_REQ_GET, path) != 0)
            probe_finish(p, RHEMA_CHECK_CRITICAL, "cannot send the request");
        return;
    }
    /* tcp */
    struct sockaddr_storage ss;
    int sslen = sizeof ss;
    struct timeval tv = {(time_t)(c->timeout_ms / 1000), 0};
    p->bev = bufferevent_socket_new(s->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (!p->bev) {
        probe_finish(p, RHEMA_CHECK_CRITICAL, "cannot create a socket");
        return;
    }
    bufferevent_setcb(p->bev, NULL, NULL, tcp_event, p);
    bufferevent_set_timeouts(p->bev, &tv, &tv);
    if (evutil_parse_sockaddr_port(c->target, (struct sockaddr *)&ss, &sslen) == 0) {
        if (bufferevent_socket_connect(p->bev, (struct sockaddr *)&ss, sslen) != 0)
            probe_finish(p, RHEMA_CHECK_CRITICAL, "TCP connect failed");
    } else if (split_hostport(c->target, host, sizeof host, &port) == 0) {
        if (bufferevent_socket_connect_hostname(p->bev, NULL, AF_UNSPEC, host, port) != 0)
            probe_finish(p, RHEMA_CHECK_CRITICAL, "TCP connect failed");
    } else {
        probe_finish(p, RHEMA_CHECK_CRITICAL, "bad target");
    }
}

/* Rebuild the check list from the registrations (main thread, after a scan). */
static void checks_sync(struct rhema_services *s, const struct rec_list *rl)
{
    uint64_t now = rhema_monotonic_ns();
    for (size_t i = 0; i < s->nchecks; i++)
        s->checks[i].seen = 0;
    for (size_t i = 0; i < rl->n; i++) {
        json_t *rec = rl->v[i].rec, *check = json_object_get(rec, "check");
        const char *type = json_string_value(json_object_get(check, "type"));
        char *key;
        struct chk *c = NULL;
        uint64_t upd = 0;
        if (!type)
            continue;
        key = check_key(check);
        if (!key)
            continue;
        for (size_t j = 0; j < s->nchecks && !c; j++)
            if (strcmp(s->checks[j].id, rl->v[i].id) == 0)
                c = &s->checks[j];
        if (c && strcmp(c->key, key) != 0) { /* the check changed: start over */
            chk_release(c);
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
            c->type = strcmp(type, "http") == 0 ? CHK_HTTP : strcmp(type, "tcp") == 0 ? CHK_TCP
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
        snprintf(c->name, sizeof c->name, "%s",
                 jstr(json_object_get(rec, "name")));
        c->version = rl->v[i].version;
        if (rhema_time_parse(jstr(json_object_get(rec, "updated_at")), &upd) ==
            0)
            c->baseline_ms = upd;
        c->seen = 1;
    }
    for (size_t i = 0; i < s->nchecks;) {
        if (s->checks[i].seen) {
            i++;
            continue;
        }
        chk_release(&s->checks[i]);
        s->checks[i] = s->checks[--s->nchecks];
        if (i < s->nchecks && s->checks[i].probe)
            s->checks[i].probe->owner = &s->checks[i];
    }
}

struct health_map {
    json_t *map; /* id -> health record */
};

static int collect_health(void *ctx, const char *key, const void *value, size_t len,
                          uint64_t version)
{
    struct health_map *hm = ctx;
    json_t *j = json_loadb(value, len, 0, NULL);
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
    int c = strcmp(jstr(json_object_get(x->rec, "name")),
                   jstr(json_object_get(y->rec, "name")));
    return c ? c : strcmp(x->id, y->id);
}

/* Re-read every registration and health record, rebuild every group (and the checks). */
static void refresh_all(struct rhema_services *s, int leader)
{
    struct rec_list rl = {0};
    struct health_map hm = {json_object()};
    struct rhema_service_member *m = NULL;
    char **names = NULL;
    size_t nnames = 0;
    int rc;

    pthread_mutex_lock(&s->apply_lock);
    rc = s->st.vt->scan(s->conn, RHEMA_SERVICES_NS, NULL, NULL, 0, collect_rec, &rl);
    if (!rc)
        rc = s->st.vt->scan(s->conn, RHEMA_SERVICES_HEALTH_NS, NULL, NULL, 0, collect_health,
                            &hm);
    if (rc) {
        pthread_mutex_unlock(&s->apply_lock);
        rhema_log(RHEMA_LOG_WARN, WHO, "refreshing the registry: %s",
                  s->st.vt->errmsg(s->conn));
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
        for (; j < rl.n &&
               strcmp(jstr(json_object_get(rl.v[j].rec, "name")), name) == 0;
             j++)
            member_of(&m[n++], rl.v[j].id, rl.v[j].rec, json_object_get(hm.map, rl.v[j].id),
                      s->checks_enabled);
        if (*name && apply_locked(s, name, m, n, &aerr))
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
        apply_locked(s, gone, NULL, 0, NULL);
    }
    pthread_mutex_unlock(&s->apply_lock);
    if (leader) {
        const char *id;
        json_t *h;
        checks_sync(s, &rl);
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
    rec_list_free(&rl);
}

static int leading(struct rhema_services *s)
{
    return s->checks_enabled && rhema_cluster_is_leader(s->srv->cluster);
}

static void on_refresh(evutil_socket_t fd, short what, void *arg)
{
    struct rhema_services *s = arg;
    (void)fd, (void)what;
    s->refresh_soon = 0;
    refresh_all(s, leading(s));
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct rhema_services *s = arg;
    uint64_t now = rhema_monotonic_ns();
    int lead = leading(s);
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
            probe_free(p);
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
        refresh_all(s, 1); /* take the checks over from the registry as it is now */
        for (size_t i = 0; i < s->nchecks; i++)
            s->checks[i].due_ns = now;
        rhema_log(RHEMA_LOG_NOTICE, WHO, "leading: running %zu health check(s)", s->nchecks);
    }
    if (s->refresh_soon) {
        s->refresh_soon = 0;
        refresh_all(s, 1);
    }
    for (size_t i = 0; i < s->nchecks; i++) {
        struct chk *c = &s->checks[i];
        if (c->probe || now < c->due_ns)
            continue;
        c->due_ns = now + c->interval_ms * 1000000ull;
        check_start(s, c);
    }
}

int rhema_services_start(struct rhema_server *srv, struct event_base *base,
                         struct rhema_services **out, char **err)
{
    struct rhema_services *s = NULL;
    struct timeval rtv = {RHEMA_SERVICES_REFRESH_MS / 1000, (RHEMA_SERVICES_REFRESH_MS % 1000) * 1000};
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
    s->refresh_ev = event_new(base, -1, EV_PERSIST, on_refresh, s);
    s->tick_ev = event_new(base, -1, EV_PERSIST, on_tick, s);
    if (!s->refresh_ev || !s->tick_ev) {
        rhema_services_stop(s);
        return rhema_set_error(err, RHEMA_ENOMEM, "services: cannot create timers");
    }
    refresh_all(s, 0);
    event_add(s->refresh_ev, &rtv);
    event_add(s->tick_ev, &ttv);
    {
        char names[256];
        rhema_services_strategies(s, names, sizeof names);
        rhema_log(RHEMA_LOG_INFO, WHO,
                  "registry ready: strategy '%s' (loaded: %s); health checks %s", s->default_strategy,
                  names, s->checks_enabled ? "run by the leader" : "disabled");
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
        probe_free(p);
    }
    for (size_t i = 0; i < s->nchecks; i++) {
        s->checks[i].probe = NULL;
        chk_release(&s->checks[i]);
    }
    free(s->checks);
    if (s->conn) {
        rhema_store_release(&s->st);
        s->srv->storage->disconnect(s->conn);
    }
    rhema_services_free(s);
}
