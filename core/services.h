/*
 * services -- the service registry (DESIGN.md §5 ServiceInfo, §7): the
 * store over storage, the health checker run by the leader, and the host
 * side of the balancing strategies (the per-name snapshot that select
 * picks from).
 *
 * Files: services_store.c (the store), services_groups.c (the groups and
 * their balancers), services_checker.c (the checker and its probes),
 * services_targets.c (what a check may target, the caps), services.c
 * (new/free, start/stop, the refresh), services_validate.c (a
 * registration's validation and the check defaults), services_health.c
 * (the health state machine); services_internal.h is what they share.
 *
 * Storage layout (every node sees it through the shared backend):
 *   services          service_id -> the registration: {name, service_id,
 *                     address, weight, metadata, check, strategy,
 *                     registered_at, updated_at}.  Written by clients only
 *                     (PUT/DELETE); its storage version is the ETag.
 *   services.name     "<name>/<service_id>" -> ""  (index; same batch)
 *   services.health   service_id -> {status, check_status, output,
 *                     ok_streak, fail_streak, critical_since, last_check,
 *                     check}.  Written by the leader's checker only, with
 *                     compare-and-set on its own version.
 *   services.pass     service_id -> "<ms>": the last POST .../pass of a
 *                     TTL check (a blind put from any node).
 * Health lives apart from the registration so that neither writer can
 * clobber the other: a PUT never touches services.health (a client never
 * loses health state), and the checker never writes services (never undoes
 * a concurrent PUT).  The health record remembers the check definition it
 * was computed for ("check", the canonical JSON): when a PUT changes the
 * check, readers see health_status Unknown and the checker starts over.
 * A DELETE removes the registration and its index in one batch, then the
 * health and pass entries; an orphan left by a crash or a race is removed
 * by the leader's next sweep.
 *
 * health_status: Healthy for a service without a check (and for every
 * service while distributed.health_checking.enabled is false: nothing
 * checks them); with a check, what the checker stored, Unknown before its
 * first result.  The first result sets the status at once (passing:
 * Healthy, critical: Unhealthy); afterwards failure_threshold consecutive
 * critical results make a Healthy service Unhealthy and success_threshold
 * consecutive passing ones make an Unhealthy service Healthy.  An HTTP
 * 429 is "warning", which counts as passing.  A TTL check is critical
 * when its last pass (or its registration, before any pass) is older than
 * interval + timeout.  A service Unhealthy for
 * deregister_critical_after_seconds (> 0) is deleted by the leader (with
 * the version it read, so a concurrent PUT wins).
 *
 * Selection.  Each node keeps in memory, per service name, a group: the
 * members, a balancer instance (distributed.load_balancing.strategy, or
 * the "strategy" of the group's first member in service_id order that
 * names one) fed with the Healthy members only, and a struct
 * rhema_endpoint_load per member that lives as long as the member does
 * (in-flight counts survive health flaps).  The main thread rebuilds every
 * group from the backend once a second; a worker rebuilds the group of a
 * name after its own PUT/DELETE, so a select right after answers the new
 * state on that node.
 *
 * The race of balancer.h (an update() between pick() and the host's use
 * of the index) is closed by a read-write lock per group: pick, the index
 * lookup, copying the endpoint out and inflight++ run under the read lock
 * (picks stay concurrent with each other), update() and the swap of the
 * endpoint array under the write lock.  The table of groups has its own
 * read-write lock (write-locked only to add or remove a group); rebuilds
 * are serialised by a mutex, which also serialises balancer create() (the
 * plugin reads its configuration group then).
 *
 * Plugins: rhema_services_new() loads the configured strategy (startup
 * fails without it) and, when plugins.load is absent, every built-in
 * strategy it finds in plugins.directory, on the main thread before the
 * workers start; an instance of each is created once there so that its
 * configuration group is checked (unknown keys stop startup).  A service
 * may name only a loaded strategy (400 otherwise).
 *
 * Threads: new, free, start, stop and the timers: main thread.  The store
 * functions: the thread owning the store.  select, feedback, apply,
 * refresh_name, strategy_loaded: any thread.
 */
#ifndef RHEMA_CORE_SERVICES_H
#define RHEMA_CORE_SERVICES_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>
#include <jansson.h>
#include <rhema/balancer.h>

#include "config.h"
#include "plugin.h"
#include "store.h"

struct rhema_server;
struct rhema_services;

#define RHEMA_SERVICES_NS "services"
#define RHEMA_SERVICES_NAME_NS "services.name"
#define RHEMA_SERVICES_HEALTH_NS "services.health"
#define RHEMA_SERVICES_PASS_NS "services.pass"

#define RHEMA_SERVICES_REFRESH_MS 1000 /* the snapshot's refresh period */
#define RHEMA_SERVICES_TICK_MS 100     /* the checker's scheduling period */
#define RHEMA_SERVICE_ADDR_MAX 262     /* "[v6]:port" or "host:port" */

/* Check defaults (distributed.health_checking). */
struct rhema_check_defaults {
    int64_t interval_s, timeout_s, failure_threshold, success_threshold;
};
void rhema_check_defaults_get(const struct rhema_config *cfg, struct rhema_check_defaults *d);

/*
 * Validate a PUT body for service path_id: every field checked (the
 * message names it), unknown fields refused, stored and computed fields
 * (registered_at, updated_at, version, health_status, last_health_check,
 * check_status, check_output) ignored so a client can PUT back what it
 * read; defaults filled in (weight 1, metadata {}, check null, strategy
 * null, check members from d).  s (may be NULL: not checked) says which
 * strategies are loaded.
 */
int rhema_service_validate(json_t *body, const char *path_id, const struct rhema_check_defaults *d,
                           const struct rhema_services *s, json_t **out,
                           char err[RHEMA_ERRMSG_MAX]);

/*
 * The store, on a worker's store.  put: create or replace (if_match as in
 * agents.h; *created tells 201 from 200; *old_name, when not NULL and the
 * service was renamed, receives the previous name).  get: the record with
 * health_status, last_health_check, check_status, check_output and version.
 * delete: *name_out (when not NULL, RHEMA_ID_MAX + 1 bytes) the deleted
 * service's name.  list: one page in service_id order, or of one name
 * through the index.  pass: record a TTL pass (RHEMA_EINVAL when the
 * service has no TTL check).
 */
int rhema_service_put(struct rhema_store *st, const char *id, json_t *svc, uint64_t if_match,
                      int checks_enabled, struct rhema_record *out, int *created,
                      char old_name[RHEMA_ID_MAX + 1], char err[RHEMA_ERRMSG_MAX]);
int rhema_service_get(struct rhema_store *st, const char *id, int checks_enabled,
                      struct rhema_record *out, char err[RHEMA_ERRMSG_MAX]);
int rhema_service_delete(struct rhema_store *st, const char *id, uint64_t if_match,
                         char name_out[RHEMA_ID_MAX + 1], char err[RHEMA_ERRMSG_MAX]);
int rhema_service_list(struct rhema_store *st, const char *name, size_t limit, const char *cursor,
                       int checks_enabled, char **out, size_t *out_len,
                       char err[RHEMA_ERRMSG_MAX]);
int rhema_service_pass(struct rhema_store *st, const char *id, char err[RHEMA_ERRMSG_MAX]);

/*
 * Check targets and caps (distributed.health_checking): an http or tcp
 * check may only target what allowed_targets admits -- a list of rules
 * of targets.h; when it is empty, only the service's own address (the
 * same host, as written or as the same IP, and the same port).  A target
 * whose host is a name is admitted when a rule admits its port, and is
 * then resolved before every probe (asynchronously, evdns); a probe goes
 * to the first resolved address the list admits, and a name that resolves
 * to no admitted address is critical, never probed.  At most
 * max_checks_per_service registrations of one name and max_checks_total
 * registrations in all have a check.
 *
 * rhema_services_admit_check(): may registration `id` of service `name`
 * at `address` have the (validated) check?  0, or RHEMA_EINVAL and err
 * ("field 'check.target': ...", "field 'check': ...").  Counts from the
 * node's snapshot, so concurrent registrations on several nodes can pass
 * a cap by a few; the checker then runs the first checks in (name, id)
 * order up to the caps and marks the others critical.  Any thread.
 */
int rhema_services_admit_check(const struct rhema_services *s, const char *id, const char *name,
                               const char *address, json_t *check, char err[RHEMA_ERRMSG_MAX]);
/*
 * The host and port of a check target: "host:port" / "[v6]:port" (tcp),
 * an http:// URL (port 80 when it names none).  host (cap bytes) without
 * IPv6 brackets.  0, or -1 when target has neither form.
 */
int rhema_check_target_split(const char *type, const char *target, char *host, size_t cap,
                             unsigned *port);

/* ---- the checker's state machine (pure) ---- */

enum rhema_health { RHEMA_HEALTH_UNKNOWN = 0, RHEMA_HEALTH_HEALTHY, RHEMA_HEALTH_UNHEALTHY };
enum rhema_check_result { RHEMA_CHECK_PASSING = 0, RHEMA_CHECK_WARNING, RHEMA_CHECK_CRITICAL };

struct rhema_check_state {
    enum rhema_health status;
    uint32_t ok_streak, fail_streak; /* consecutive passing / critical results */
    uint64_t critical_since_ms;      /* when it became Unhealthy; 0 otherwise */
};

/*
 * Feed one check result at now_ms into s (the rules above).  Returns 1
 * when the status changed, else 0.
 */
int rhema_check_apply(struct rhema_check_state *s, enum rhema_check_result result,
                      uint32_t failure_threshold, uint32_t success_threshold, uint64_t now_ms);
/* An HTTP check's result from the response status (0: no response). */
enum rhema_check_result rhema_check_http_result(int status);
/* 1 when a TTL check whose last pass was at last_pass_ms is still passing at now_ms. */
int rhema_check_ttl_ok(uint64_t last_pass_ms, uint64_t interval_s, uint64_t timeout_s,
                       uint64_t now_ms);
/* "Healthy", "Unhealthy", "Unknown". */
const char *rhema_health_name(enum rhema_health h);
/* The inverse of rhema_health_name(); anything else (NULL too) is Unknown. */
enum rhema_health rhema_health_parse(const char *s);

/* ---- the snapshot and the balancer host side ---- */

/*
 * Create the module: load the strategies (see above) into reg from
 * cfg->plugin_directory and check their configuration.  No storage, no
 * timers (rhema_services_start() adds those).  0, or a code and *err.
 */
int rhema_services_new(const struct rhema_config *cfg, struct rhema_plugin_registry *reg,
                       struct rhema_services **out, char **err);
/* Destroy every group and balancer instance.  NULL is a no-op. */
void rhema_services_free(struct rhema_services *s);

/* 1 when `name` is a loaded balancing strategy. */
int rhema_services_strategy_loaded(const struct rhema_services *s, const char *name);
/* The strategy names loaded, ", "-separated, into buf. */
void rhema_services_strategies(const struct rhema_services *s, char *buf, size_t cap);
/* 1 when distributed.health_checking.enabled. */
/*
 * The registered instances the balancers know, by health (GET /metrics):
 * healthy, and not healthy (failing or not yet known).  NULL s: 0 and 0.
 */
void rhema_services_health_counts(struct rhema_services *s, uint64_t *healthy,
                                  uint64_t *not_healthy);
int rhema_services_checks_enabled(const struct rhema_services *s);

/* One member of a group, as rebuilt from the backend. */
struct rhema_service_member {
    const char *id, *address, *strategy; /* strategy NULL: none named */
    uint32_t weight;
    int healthy;
    int has_check; /* the registration has a health check (the caps count it) */
};

/*
 * Replace the group `name` with these members (n 0 removes it): recreates
 * the balancer when the strategy changes, update()s it with the healthy
 * members when they changed.  Any thread.  0, or a code and *err.
 */
int rhema_services_apply(struct rhema_services *s, const char *name,
                         const struct rhema_service_member *m, size_t n, char **err);
/* Re-read the group of `name` through st and apply it (after a local PUT/DELETE). */
int rhema_services_refresh_name(struct rhema_services *s, struct rhema_store *st,
                                const char *name);

struct rhema_selection {
    char service_id[RHEMA_ID_MAX + 1];
    char address[RHEMA_SERVICE_ADDR_MAX + 1];
    char strategy[RHEMA_ID_MAX + 1];
};
/*
 * Pick a healthy instance of `name`: 0 and *out (its inflight counted);
 * RHEMA_ENOTFOUND for an unknown name, RHEMA_EUNAVAIL when none is
 * healthy.  Any thread.
 */
int rhema_services_select(struct rhema_services *s, const char *name,
                          const struct rhema_pick_ctx *ctx, struct rhema_selection *out);
/*
 * The outcome of a request sent to instance `id`: inflight-- (not below
 * 0), the EWMA of latency (alpha 1/8; the first sample sets it), samples++,
 * failures++ when !ok, then the strategy's feedback() when it has one and
 * the instance is in its set.  RHEMA_ENOTFOUND when no group has the id.
 */
int rhema_services_feedback(struct rhema_services *s, const char *id, uint64_t latency_ns, int ok);
/* A copy of instance id's load counters (tests, GET). 0 or RHEMA_ENOTFOUND. */
int rhema_services_load_get(struct rhema_services *s, const char *id, unsigned *inflight,
                            uint64_t *ewma_ns, uint64_t *samples, uint64_t *failures);

/*
 * Start the module on the main thread: new() with srv's registry, its
 * own storage connection, the refresh timer and the checker (active
 * while rhema_cluster_is_leader(srv->cluster)).  HTTP checks use evhttp's
 * client and TCP checks a connecting bufferevent, both asynchronous on
 * base with the check's timeout, and a host name is resolved with evdns on
 * base: a check never blocks a thread (the main thread renews the leader
 * lease).  Before rhema_http_start().
 */
int rhema_services_start(struct rhema_server *srv, struct event_base *base,
                         struct rhema_services **out, char **err);
/* Cancel the timers and checks, disconnect, free.  After the workers stopped. */
void rhema_services_stop(struct rhema_services *s);

#endif /* RHEMA_CORE_SERVICES_H */
