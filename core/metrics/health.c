/*
 * health -- the component registry and the built-in checks (health.h).
 */
#include "rhema_build.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit.h"
#include "cluster.h"
#include "health.h"
#include "keyring.h"
#include "log.h"
#include "maintenance.h"
#include "util.h"

#define MAX_COMPONENTS 32

struct component {
    char name[64];
    rhema_health_check_fn *fn;
    void *arg;
};

struct rhema_health_registry {
    pthread_rwlock_t lock; /* checks read; register and unregister write */
    struct component c[MAX_COMPONENTS];
    size_t n;
};

static const char *const status_names[] = {"Healthy", "Degraded", "Unhealthy"};

const char *rhema_health_status_name(enum rhema_health_status s)
{
    return (unsigned)s <= RHEMA_UNHEALTHY ? status_names[s] : "Unhealthy";
}

static void say(struct rhema_health_result *out, enum rhema_health_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void say(struct rhema_health_result *out, enum rhema_health_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    out->status = s;
    vsnprintf(out->message, sizeof out->message, fmt, ap);
    va_end(ap);
}

/* ---- the built-in components ---- */

static void check_storage(void *arg, struct rhema_server *srv, rhema_storage_conn *conn,
                          struct rhema_health_result *out)
{
    char *err = NULL;
    (void)arg;
    int rc = conn ? srv->storage->health(conn, &err) : RHEMA_EUNAVAIL;
    /* the backend's message names its host and port: logged, not answered */
    if (rc)
        rhema_log(RHEMA_LOG_WARN, "health", "storage backend '%s': %s", srv->storage_plugin->name,
                  err ? err : rhema_strerror(rc));
    if (rc)
        say(out, RHEMA_UNHEALTHY, "storage backend '%s' is not reachable (%s)",
            srv->storage_plugin->name, rhema_strerror(rc));
    else
        say(out, RHEMA_HEALTHY, "storage backend '%s' answers", srv->storage_plugin->name);
    free(err);
}

static void check_cluster(void *arg, struct rhema_server *srv, rhema_storage_conn *conn,
                          struct rhema_health_result *out)
{
    json_t *view = NULL;
    char *err = NULL;
    (void)arg;
    if (!srv->cluster) {
        say(out, RHEMA_HEALTHY, "a single node (distributed.enabled is false)");
        return;
    }
    if (!conn || rhema_cluster_json(srv->cluster, srv->storage, conn, RHEMA_CLUSTER_VIEW_HEALTH,
                                    &view, &err) != 0) {
        say(out, RHEMA_DEGRADED, "the cluster state cannot be read from storage");
        free(err);
        return;
    }
    const char *st = json_string_value(json_object_get(view, "status"));
    const char *leader = json_string_value(json_object_get(view, "leader"));
    json_int_t online = json_integer_value(json_object_get(view, "online_nodes"));
    json_int_t unhealthy = json_integer_value(json_object_get(view, "unhealthy_nodes"));
    enum rhema_health_status s = RHEMA_DEGRADED;
    if (st && strcmp(st, "Healthy") == 0)
        s = RHEMA_HEALTHY;
    else if (st && strcmp(st, "Unhealthy") == 0)
        s = RHEMA_UNHEALTHY;
    say(out, s, "cluster %s: leader %s%s, %lld online, %lld unhealthy", st ? st : "?",
        leader ? leader : "none", rhema_cluster_is_leader(srv->cluster) ? " (this node)" : "",
        (long long)online, (long long)unhealthy);
    json_decref(view);
}

static void check_keyring(void *arg, struct rhema_server *srv, rhema_storage_conn *conn,
                          struct rhema_health_result *out)
{
    struct rhema_keyring_stats st;
    (void)arg, (void)conn;
    if (!srv->keyring) {
        say(out, RHEMA_HEALTHY, "key management is off");
        return;
    }
    if (rhema_keyring_stats(srv->keyring, &st) != 0) {
        say(out, RHEMA_UNHEALTHY, "the keyring cannot be read");
        return;
    }
    uint64_t now = rhema_realtime_ms();
    if (st.next_rotation_ms && now > st.next_rotation_ms + 3600000u)
        say(out, RHEMA_DEGRADED,
            "key version %u is in use; its rotation was due over an hour ago",
            st.current_version);
    else
        say(out, RHEMA_HEALTHY, "key version %u is in use, %zu versions decrypt",
            st.current_version, (size_t)st.active_versions);
    rhema_keyring_stats_release(&st);
}

static void check_audit(void *arg, struct rhema_server *srv, rhema_storage_conn *conn,
                        struct rhema_health_result *out)
{
    (void)arg, (void)srv, (void)conn;
    if (!rhema_audit_enabled())
        say(out, RHEMA_HEALTHY, "the audit log is off");
    else if (rhema_audit_healthy())
        say(out, RHEMA_HEALTHY, "records reach the audit log");
    else
        say(out, rhema_audit_fail_closed() ? RHEMA_UNHEALTHY : RHEMA_DEGRADED,
            "the last records could not be written to the audit log (see the log)%s",
            rhema_audit_fail_closed() ? "; audited writes are refused" : "");
}

static void check_maintenance(void *arg, struct rhema_server *srv, rhema_storage_conn *conn,
                              struct rhema_health_result *out)
{
    static const char *const kinds[RHEMA_MAINTENANCE_KINDS] = {"backup", "cleanup"};
    int failed;
    uint64_t at, last = 0;
    (void)arg, (void)conn;
    if (!srv->maintenance) {
        say(out, RHEMA_HEALTHY, "no maintenance runs");
        return;
    }
    say(out, RHEMA_HEALTHY, "no failed run");
    for (int k = 0; k < RHEMA_MAINTENANCE_KINDS; k++) {
        rhema_maintenance_last(srv->maintenance, k, &failed, &at);
        if (at > last)
            last = at;
        if (failed && out->status == RHEMA_HEALTHY)
            say(out, RHEMA_DEGRADED, "the last %s failed (see the log)", kinds[k]);
    }
    if (rhema_maintenance_over_limit(srv->maintenance, 0))
        say(out, RHEMA_DEGRADED, "the data size is at persistence.max_data_size_bytes: "
                                 "writes are refused");
    out->checked_ms = last; /* 0: never ran, the time of the request */
}

int rhema_health_open(struct rhema_health_registry **out)
{
    struct rhema_health_registry *h = calloc(1, sizeof *h);
    if (!h)
        return RHEMA_ENOMEM;
    pthread_rwlock_init(&h->lock, NULL);
    if (rhema_health_register(h, "storage", check_storage, NULL) ||
        rhema_health_register(h, "cluster", check_cluster, NULL) ||
        rhema_health_register(h, "keyring", check_keyring, NULL) ||
        rhema_health_register(h, "audit_log", check_audit, NULL) ||
        rhema_health_register(h, "maintenance", check_maintenance, NULL)) {
        rhema_health_close(h);
        return RHEMA_ENOMEM;
    }
    *out = h;
    return 0;
}

void rhema_health_close(struct rhema_health_registry *h)
{
    if (!h)
        return;
    pthread_rwlock_destroy(&h->lock);
    free(h);
}

int rhema_health_register(struct rhema_health_registry *h, const char *name, rhema_health_check_fn *fn,
                          void *arg)
{
    size_t len = name ? strlen(name) : 0;
    if (len == 0 || len > 63 || !fn)
        return RHEMA_EINVAL;
    for (size_t i = 0; i < len; i++)
        if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9') ||
              name[i] == '_'))
            return RHEMA_EINVAL;
    int rc = 0;
    pthread_rwlock_wrlock(&h->lock);
    for (size_t i = 0; i < h->n; i++)
        if (strcmp(h->c[i].name, name) == 0)
            rc = RHEMA_EINVAL;
    if (rc == 0 && h->n == MAX_COMPONENTS)
        rc = RHEMA_ENOMEM;
    if (rc == 0) {
        memcpy(h->c[h->n].name, name, len + 1);
        h->c[h->n].fn = fn;
        h->c[h->n].arg = arg;
        h->n++;
    }
    pthread_rwlock_unlock(&h->lock);
    return rc;
}

void rhema_health_unregister(struct rhema_health_registry *h, const char *name)
{
    pthread_rwlock_wrlock(&h->lock);
    for (size_t i = 0; i < h->n; i++)
        if (strcmp(h->c[i].name, name) == 0) {
            memmove(&h->c[i], &h->c[i + 1], (h->n - i - 1) * sizeof h->c[0]);
            h->n--;
            break;
        }
    pthread_rwlock_unlock(&h->lock);
}

json_t *rhema_health_check(struct rhema_health_registry *h, struct rhema_server *srv,
                           rhema_storage_conn *conn, enum rhema_health_status *worst)
{
    json_t *o = json_object();
    *worst = RHEMA_HEALTHY;
    pthread_rwlock_rdlock(&h->lock);
    for (size_t i = 0; i < h->n; i++) {
        struct rhema_health_result r = {.status = RHEMA_HEALTHY};
        char t[RHEMA_TIME_MAX];
        h->c[i].fn(h->c[i].arg, srv, conn, &r);
        rhema_time_format(r.checked_ms ? r.checked_ms : rhema_realtime_ms(), t);
        if (r.status > *worst)
            *worst = r.status;
        json_object_set_new(o, h->c[i].name,
                            json_pack("{s:s,s:s,s:s}", "status", rhema_health_status_name(r.status),
                                      "message", r.message, "checked_at", t));
    }
    pthread_rwlock_unlock(&h->lock);
    return o;
}
