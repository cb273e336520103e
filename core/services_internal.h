/*
 * services_internal -- what the service registry's files share and nobody
 * else sees: the module struct, the groups, the checks and probes, and the
 * functions one file calls in another.  Include services.h first.
 *
 * Files (services.h says what the registry does, its layout and locking):
 *   services_store.c     the store: registrations, the name index, health
 *                        and TTL passes as a request sees them
 *   services_groups.c    groups and their balancers: apply, select,
 *                        feedback, and rebuilding one group from storage
 *   services_checker.c   the health checker and its probes (main thread,
 *                        while this node leads)
 *   services_targets.c   what a check may target, and the caps on checks
 *   services.c           the module's lifecycle and the periodic refresh
 *   services_validate.c  a registration's validation, the check defaults
 *   services_health.c    the health state machine (pure)
 */
#ifndef RHEMA_CORE_SERVICES_INTERNAL_H
#define RHEMA_CORE_SERVICES_INTERNAL_H

#ifndef RHEMA_CORE_SERVICES_H
#error "include services.h before services_internal.h"
#endif

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>

#include "targets.h"

#define WHO "services"
#define PUT_RETRIES 8
#define TTL_PASS_MAX_LEN 24

static inline const char *jstr(json_t *v)
{
    const char *s = json_string_value(v);
    return s ? s : "";
}

/* ---- groups: the snapshot per name and its balancer ---- */

struct member {
    char *id, *address;
    uint32_t weight;
    int healthy;
    int has_check;
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
    size_t *ep; /* endpoint index (of the latest update) -> mem index */
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
    struct rhema_target_list allowed; /* allowed_targets; empty: a service's own address */
    int64_t max_checks_per_service, max_checks_total;

    pthread_rwlock_t table_lock; /* groups[]: write-locked to add or remove a group */
    struct group **groups;
    size_t ngroups, capgroups;
    pthread_mutex_t apply_lock; /* serialises rebuilds (read + apply) and create() */

    /* main thread only */
    struct rhema_server *srv;
    struct event_base *base;
    rhema_storage_conn *conn;
    struct rhema_store st;
    struct event *refresh_ev, *tick_ev;
    struct chk *checks;
    size_t nchecks, capchecks;
    struct probe *probes;   /* every probe not yet freed */
    struct evdns_base *dns; /* resolves the checks' host names, on base */
    int was_leader;
    int refresh_soon;
};

/* Registrations as scanned from storage (collect_rec). */
struct rec_list {
    struct rec {
        char *id;
        json_t *rec;
        uint64_t version;
    } * v;
    size_t n, cap;
    int oom;
};

/* ---- the checker (main thread, while this node leads) ---- */

enum chk_type { CHK_HTTP, CHK_TCP, CHK_TTL };

struct chk {
    char id[RHEMA_ID_MAX + 1];
    char *key; /* the canonical check JSON */
    enum chk_type type;
    char *target;
    char *address; /* the registration's own address */
    int over_cap;  /* 0, or which cap keeps it from running: 1 per service, 2 total */
    uint64_t interval_ms, timeout_ms, dereg_ms;
    uint32_t fthr, sthr;
    uint64_t baseline_ms; /* updated_at of the registration: a TTL's grace starts there */
    char name[RHEMA_ID_MAX + 1];
    uint64_t version;    /* of the registration, for deregistration */
    uint64_t due_ns;     /* monotonic */
    struct probe *probe; /* in flight, or NULL */
    int seen;
};

struct lookup;

struct probe {
    struct rhema_services *s;
    struct chk *owner; /* NULL once detached (the check went away, leadership was lost) */
    char id[RHEMA_ID_MAX + 1];
    enum chk_type type;
    char host[RHEMA_SERVICE_ADDR_MAX + 1]; /* as the target names it, no brackets */
    char path[2048];                       /* http: path and query */
    unsigned port;
    uint64_t timeout_ms;
    struct lookup *lookup; /* a name being resolved, or NULL */
    struct evhttp_connection *hc;
    struct bufferevent *bev;
    uint64_t deadline_ns;
    int done;
    struct probe *next;
};

/* ---- services_store.c ---- */

/* Read ns/key as JSON: 0 and *out (NULL when absent), or an error. */
int svc_load_json(struct rhema_store *st, const char *ns, const char *key, json_t **out,
                  uint64_t *version, char *err);
/* The canonical text of a check (what a health record is computed for); malloc'd. */
char *svc_check_key(json_t *check);
/*
 * The health of registration rec given its health record (may be NULL):
 * the status, and the health record when it applies to rec's check.
 */
enum rhema_health svc_health_of(json_t *rec, json_t *health, int checks_enabled, json_t **applies);
/* Delete the registration and its index (version: the one read), then health and pass. */
int svc_delete_versioned(struct rhema_store *st, const char *id, const char *name,
                         uint64_t version);

/* ---- services_groups.c ---- */

/* Create an instance of strategy name (under apply_lock, or before the workers). */
int svc_balancer_create(struct rhema_services *s, const char *name,
                        const struct rhema_balancer_plugin **vt, rhema_balancer **b, char **err);
void svc_group_free(struct group *g);
/* rhema_services_apply() with apply_lock held. */
int svc_apply_locked(struct rhema_services *s, const char *name,
                     const struct rhema_service_member *in, size_t n, char **err);
/* The scan callback that fills a struct rec_list. */
int svc_collect_rec(void *ctx, const char *key, const void *value, size_t len, uint64_t version);
void svc_rec_list_free(struct rec_list *rl);
/* The group member for registration rec (its strings stay rec's and id's). */
void svc_member_of(struct rhema_service_member *m, const char *id, json_t *rec, json_t *health,
                   int checks_enabled);

/* 1 when a member of a group has a check; counts of them (skip: an id not counted). */
void svc_count_checks(const struct rhema_services *s, const char *name, const char *skip,
                      size_t *in_name, size_t *total);

/* ---- services_targets.c ---- */

/*
 * May a check of the registration at svc_address connect to host:port?
 * sa: that address when host is an IP literal or was resolved; NULL for a
 * name not resolved yet.  0, or RHEMA_EINVAL and why (a message for
 * check_output or a 400).
 */
int svc_target_allowed(const struct rhema_services *s, const char *svc_address, const char *host,
                       unsigned port, const struct sockaddr *sa, char why[RHEMA_ERRMSG_MAX]);

/* ---- services_checker.c ---- */

/* Forget a check (its probe, if any, is detached, not freed). */
void svc_chk_release(struct chk *c);
void svc_probe_free(struct probe *p);
/* Rebuild the check list from the registrations (main thread, after a scan). */
void svc_checks_sync(struct rhema_services *s, const struct rec_list *rl);
/* 1 when this node runs the health checks: they are enabled and it leads. */
int svc_leading(struct rhema_services *s);
/* The checker's timer (RHEMA_SERVICES_TICK_MS): reap probes, start the checks that are due. */
void svc_on_tick(evutil_socket_t fd, short what, void *arg);

/* ---- services.c ---- */

/* Re-read every registration and health record, rebuild every group (and the checks). */
void svc_refresh_all(struct rhema_services *s, int leader);

#endif /* RHEMA_CORE_SERVICES_INTERNAL_H */
