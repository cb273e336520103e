/*
 * cluster -- membership heartbeats and the leader lease on the storage
 * backend, on the main thread (see cluster.h for the rules and timings).
 */
#include "rhema_build.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "audit.h"
#include "cluster.h"
#include "server.h"
#include "json_fields.h"
#include "log.h"
#include "plugin.h"
#include "util.h"
#include "watch/feed.h"

#define WHO "cluster"
#define NS_PER_MS 1000000ull
#define LEASE_JITTER_MS 50u  /* spread the followers' attempts after an expiry */
#define RETRY_STEP_MAX_MS 500u
#define LEASE_NAME_MAX (RHEMA_STORAGE_KEY_MAX)

struct rhema_cluster {
    struct rhema_server *srv;
    const struct rhema_config *cfg;
    struct event_base *base;
    rhema_storage_conn *conn; /* the module's own (main thread) */
    struct event *hb_ev, *lease_ev;
    int enabled;
    int eligible; /* may lead: role and enable_failover */
    int left;
    struct rhema_cluster_timing t;
    char node_id[RHEMA_ID_MAX + 1];
    char holder[RHEMA_LEASE_HOLDER_MAX + 1]; /* node_id "/" boot id */
    char lease_name[LEASE_NAME_MAX + 1];
    char address[160];
    const char *name, *role, *cluster_name;
    int64_t weight, min_nodes, max_nodes;
    uint64_t started_ms;

    /* leadership, read from any thread */
    pthread_mutex_t lock;
    uint64_t lead_deadline_ns; /* CLOCK_BOOTTIME; 0: not leading */
    uint64_t lead_epoch;       /* the epoch held while leading */
    uint64_t known_epoch;      /* the largest epoch seen */
    _Atomic uint64_t leadership_changes; /* this node gained or lost the lead (GET /metrics) */

    /* main thread only */
    int was_leading;  /* for the step-down log line */
    int hb_failing;   /* the last heartbeat failed (logged once) */
    int lease_failing;
};

/*
 * The clock of the deadline: CLOCK_BOOTTIME counts time while the host is
 * suspended (CLOCK_MONOTONIC does not), and the backend's clock runs on
 * meanwhile; both count time while the process is stopped.
 */
static uint64_t boot_ns(void)
{
    struct timespec ts;
#ifdef CLOCK_BOOTTIME
    if (clock_gettime(CLOCK_BOOTTIME, &ts) == 0)
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
#endif
    return rhema_monotonic_ns();
}

static int64_t cfg_int(const struct rhema_config *cfg, const char *path, int64_t dflt)
{
    int64_t v = dflt;
    rhema_config_get_int(cfg, path, &v);
    return v;
}

static const char *cfg_str(const struct rhema_config *cfg, const char *path, const char *dflt)
{
    const char *v = NULL;
    if (rhema_config_get_string(cfg, path, &v) != 0 || v == NULL)
        return dflt;
    return v;
}

static int cfg_bool(const struct rhema_config *cfg, const char *path, int dflt)
{
    int v = dflt;
    rhema_config_get_bool(cfg, path, &v);
    return v;
}

void rhema_cluster_timing(const struct rhema_config *cfg, struct rhema_cluster_timing *t)
{
    uint64_t lease = (uint64_t)cfg_int(cfg, "distributed.cluster.leader_lease_seconds", 10);
    uint64_t hb = (uint64_t)cfg_int(cfg, "distributed.cluster.heartbeat_interval_seconds", 2);
    uint64_t nt = (uint64_t)cfg_int(cfg, "distributed.cluster.node_timeout_seconds", 10);
    t->ttl_ms = lease * 1000u;
    t->renew_ms = t->ttl_ms / 3u;
    t->retry_ms = hb * 1000u;
    t->deadline_ms = t->ttl_ms > t->retry_ms ? t->ttl_ms - t->retry_ms : 0;
    t->heartbeat_ms = hb * 1000u;
    t->node_timeout_ms = nt * 1000u;
}

int rhema_cluster_check(const struct rhema_config *cfg, const struct rhema_loaded_plugin *storage,
                        char **err)
{
    int64_t lease, hb;
    if (!cfg->distributed_enabled)
        return 0;
    lease = cfg_int(cfg, "distributed.cluster.leader_lease_seconds", 10);
    hb = cfg_int(cfg, "distributed.cluster.heartbeat_interval_seconds", 2);
    /*
     * Patroni's rule, loop_wait + 2 x retry_timeout <= ttl, with loop_wait
     * the renew interval ttl/3 and retry_timeout one heartbeat interval:
     * ttl/3 + 2 hb <= ttl  <=>  3 hb <= ttl (exact in integer seconds).
     */
    if (3 * hb > lease)
        return rhema_set_error(
            err, RHEMA_EINVAL,
            "unsafe cluster timings: distributed.cluster.heartbeat_interval_seconds "
            "(%lld) must be at most distributed.cluster.leader_lease_seconds (%lld) / 3: "
            "the leader renews its lease every leader_lease_seconds/3 and retries a "
            "failed renewal for one heartbeat interval, and renew interval + 2 x retry "
            "must fit within the lease (Patroni's rule); raise leader_lease_seconds to "
            "at least %lld or lower heartbeat_interval_seconds to at most %lld",
            (long long)hb, (long long)lease, (long long)(3 * hb), (long long)(lease / 3));
    if (storage != NULL) {
        uint32_t f = storage->vt.storage.features;
        int local_shared = strcmp(storage->name, "sqlite") == 0 || strcmp(storage->name, "file") == 0;
        if (!(f & RHEMA_STORAGE_LEASES) || storage->vt.storage.lease == NULL)
            return rhema_set_error(err, RHEMA_EINVAL,
                                   "distributed.enabled needs a storage backend with leases; "
                                   "persistence.backend '%s' has none",
                                   storage->name);
        if (!(f & RHEMA_STORAGE_SHARED) && !local_shared)
            return rhema_set_error(
                err, RHEMA_EINVAL,
                "distributed.enabled needs a storage backend that several rhemad "
                "processes share: persistence.backend '%s' is private to one process; "
                "use postgres or redis (nodes on several hosts) or sqlite / file "
                "(several daemons on one host), or set distributed.enabled = false",
                storage->name);
    }
    return 0;
}

/* ---- identity ---- */

static void sanitize_id(char *s)
{
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == ':' || ch == '-'))
            *s = '-';
    }
}

/* "<hostname>:<port of service.listen>", cut to RHEMA_ID_MAX. */
static void default_node_id(const struct rhema_config *cfg, char out[RHEMA_ID_MAX + 1])
{
    char host[256] = "";
    const char *port = cfg->listen ? strrchr(cfg->listen, ':') : NULL;
    if (gethostname(host, sizeof host - 1) != 0 || host[0] == '\0')
        snprintf(host, sizeof host, "localhost");
    host[sizeof host - 1] = '\0';
    snprintf(out, RHEMA_ID_MAX + 1, "%.100s:%s", host, port ? port + 1 : "0");
    sanitize_id(out);
}

/*
 * The change feed's record of a new leader (issue 12, watch/feed.h):
 * "leader.changed", id the cluster, "to" this node.  The lease is not a key,
 * so the record cannot share a batch with it: the new holder writes it
 * right after its acquisition, on the module's connection.  Best effort: a
 * failed write is logged (the lease, the fencing token, is what counts).
 */
static void record_leader(struct rhema_cluster *c, const struct rhema_storage_plugin *vt)
{
    struct rhema_feed *feed = c->srv->feed;
    if (!feed || !c->conn)
        return;
    struct rhema_feed_fields f = {.type = "leader.changed", .id = c->cluster_name,
                                  .to = c->node_id};
    size_t len = 0;
    char *text = rhema_feed_record(&f, &len);
    if (!text)
        return;
    struct rhema_storage_write w;
    rhema_feed_write(&w, text, len);
    int rc = vt->batch(c->conn, &w, 1);
    if (rc == 0)
        rhema_feed_wake(feed);
    else
        rhema_log(RHEMA_LOG_WARN, WHO, "recording the new leader in the change feed: %s",
                  vt->errmsg(c->conn));
    free(text);
}

/* ---- leadership state ---- */

static void lock(const struct rhema_cluster *c)
{
    pthread_mutex_lock(&((struct rhema_cluster *)c)->lock);
}

static void unlock(const struct rhema_cluster *c)
{
    pthread_mutex_unlock(&((struct rhema_cluster *)c)->lock);
}

int rhema_cluster_leadership(const struct rhema_cluster *c, uint64_t *epoch)
{
    uint64_t d, e;
    if (c == NULL) {
        if (epoch)
            *epoch = 0;
        return 0;
    }
    if (!c->enabled) { /* a lone node leads itself, through its drain too */
        if (epoch)
            *epoch = 1;
        return 1;
    }
    lock(c);
    d = c->lead_deadline_ns;
    e = c->lead_epoch;
    unlock(c);
    /* the clock, not a timer: a process resumed past its deadline does not lead */
    if (d == 0 || boot_ns() >= d) {
        if (epoch)
            *epoch = 0;
        return 0;
    }
    if (epoch)
        *epoch = e;
    return 1;
}

int rhema_cluster_is_leader(const struct rhema_cluster *c)
{
    return rhema_cluster_leadership(c, NULL);
}

uint64_t rhema_cluster_leadership_changes(const struct rhema_cluster *c)
{
    return c ? atomic_load_explicit(&c->leadership_changes, memory_order_relaxed) : 0;
}

const char *rhema_cluster_node_id(const struct rhema_cluster *c)
{
    return c ? c->node_id : "";
}

uint64_t rhema_cluster_known_epoch(const struct rhema_cluster *c)
{
    uint64_t e;
    if (c == NULL)
        return 0;
    if (!c->enabled)
        return 1;
    lock(c);
    e = c->known_epoch;
    unlock(c);
    return e;
}

static void see_epoch(struct rhema_cluster *c, uint64_t epoch)
{
    lock(c);
    if (epoch > c->known_epoch)
        c->known_epoch = epoch;
    unlock(c);
}

static void set_leading(struct rhema_cluster *c, uint64_t started_ns, uint64_t epoch)
{
    lock(c);
    c->lead_deadline_ns = started_ns + c->t.deadline_ms * NS_PER_MS;
    c->lead_epoch = epoch;
    if (epoch > c->known_epoch)
        c->known_epoch = epoch;
    unlock(c);
}

static void clear_leading(struct rhema_cluster *c)
{
    lock(c);
    c->lead_deadline_ns = 0;
    c->lead_epoch = 0;
    unlock(c);
}

/* ---- NodeInfo ---- */

static const char *node_address(const struct rhema_cluster *c)
{
    const char *a = cfg_str(c->cfg, "distributed.node.address", "");
    if (*a)
        return a;
    if (c->srv->listen_addr[0])
        return c->srv->listen_addr;
    return c->cfg->listen ? c->cfg->listen : "";
}

static json_t *self_json(const struct rhema_cluster *c, const char *status)
{
    char ts[RHEMA_TIME_MAX];
    uint64_t now = rhema_realtime_ms();
    json_t *caps = json_array();
    rhema_time_format(now, ts);
    json_array_append_new(caps, json_string("coordination"));
    if (c->eligible)
        json_array_append_new(caps, json_string("leader"));
    return json_pack("{s:s,s:s,s:s,s:s,s:s,s:o,s:{s:I,s:s,s:s,s:s},s:s,s:I}", "node_id",
                     c->node_id, "name", c->name, "address", node_address(c), "role", c->role,
                     "status", status, "capabilities", caps, "metadata", "weight",
                     (json_int_t)c->weight, "cluster", c->cluster_name, "boot_id",
                     c->srv->boot_id, "version", PACKAGE_VERSION, "last_heartbeat", ts,
                     "uptime_seconds",
                     (json_int_t)(now > c->started_ms ? (now - c->started_ms) / 1000u : 0));
}

/* Write this node's NodeInfo into cluster.nodes (TTL) and cluster.known. */
static int heartbeat(struct rhema_cluster *c, const char *status)
{
    const struct rhema_storage_plugin *vt = c->srv->storage;
    json_t *n = self_json(c, status);
    char *text = n ? rhema_json_dumps(n, JSON_COMPACT) : NULL;
    struct rhema_storage_write w[2];
    int rc;
    json_decref(n);
    if (text == NULL)
        return RHEMA_ENOMEM;
    memset(w, 0, sizeof w);
    w[0].size = w[1].size = sizeof w[0];
    w[0].op = w[1].op = RHEMA_WRITE_PUT;
    w[0].ns = RHEMA_CLUSTER_NODES_NS;
    w[1].ns = RHEMA_CLUSTER_KNOWN_NS;
    w[0].key = w[1].key = c->node_id;
    w[0].value = w[1].value = text;
    w[0].value_len = w[1].value_len = strlen(text);
    w[0].expected_version = w[1].expected_version = RHEMA_VERSION_ANY;
    w[0].ttl_ms = c->t.node_timeout_ms;
    w[1].ttl_ms = 0;
    rc = vt->batch(c->conn, w, 2);
    free(text);
    if (rc != 0 && !c->hb_failing)
        rhema_log(RHEMA_LOG_WARN, WHO, "heartbeat of node '%s' failed: %s (retrying every %llu ms)",
                  c->node_id, vt->errmsg(c->conn), (unsigned long long)c->t.heartbeat_ms);
    else if (rc == 0 && c->hb_failing)
        rhema_log(RHEMA_LOG_NOTICE, WHO, "heartbeat of node '%s' written again", c->node_id);
    c->hb_failing = rc != 0;
    return rc;
}

static void on_heartbeat(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    heartbeat(arg, "Online");
}

/* ---- the lease ---- */

static void arm_ms(struct event *ev, uint64_t ms)
{
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000u),
                         .tv_usec = (suseconds_t)(ms % 1000u) * 1000};
    evtimer_add(ev, &tv);
}

/* The node id part of a holder "<node_id>/<boot id>". */
static void holder_node(const char *holder, char out[RHEMA_ID_MAX + 1])
{
    const char *slash = strrchr(holder, '/');
    size_t n = slash ? (size_t)(slash - holder) : strlen(holder);
    if (n > RHEMA_ID_MAX)
        n = RHEMA_ID_MAX;
    memcpy(out, holder, n);
    out[n] = '\0';
}

/* Delay until the next attempt after finding the lease held by someone else. */
static uint64_t follower_delay(const struct rhema_cluster *c, const struct rhema_lease_info *li)
{
    uint64_t d = c->t.renew_ms;
    if (li->holder[0] == '\0')
        return LEASE_JITTER_MS;
    if (li->ttl_remaining_ms + LEASE_JITTER_MS < d)
        d = li->ttl_remaining_ms + 1u + randombytes_uniform(LEASE_JITTER_MS);
    return d;
}

static void log_stepdown(struct rhema_cluster *c, const char *why)
{
    if (c->was_leading) {
        atomic_fetch_add_explicit(&c->leadership_changes, 1, memory_order_relaxed);
        rhema_log(RHEMA_LOG_WARN, WHO, "node '%s' no longer leads cluster '%s': %s", c->node_id,
                  c->cluster_name, why);
        rhema_audit_event("cluster.leadership_lost", NULL, NULL,
                          json_pack("{s:s,s:s,s:s}", "node", c->node_id, "cluster",
                                    c->cluster_name, "reason", why));
    }
    c->was_leading = 0;
}

/*
 * One round of the election, on the main thread: renew when leading,
 * else acquire (or only observe, for a node that may not lead).  Returns
 * the delay until the next round, in ms.
 */
static uint64_t lease_round(struct rhema_cluster *c)
{
    const struct rhema_storage_plugin *vt = c->srv->storage;
    struct rhema_lease_info li;
    uint64_t t0, elapsed_ms, e = 0, d;
    int leading = rhema_cluster_leadership(c, &e), rc, op;

    if (!leading && c->was_leading) {
        clear_leading(c);
        log_stepdown(c, "its lease could not be renewed before the local deadline");
    }
    memset(&li, 0, sizeof li);
    if (!c->eligible) {
        rc = vt->lease(c->conn, c->lease_name, NULL, 0, RHEMA_LEASE_QUERY, &li);
        if (rc == 0 || rc == RHEMA_ENOTFOUND)
            see_epoch(c, li.epoch);
        return c->t.renew_ms;
    }
    op = leading ? RHEMA_LEASE_RENEW : RHEMA_LEASE_ACQUIRE;
    t0 = boot_ns();
    rc = vt->lease(c->conn, c->lease_name, c->holder, c->t.ttl_ms, op, &li);
    elapsed_ms = (boot_ns() - t0) / NS_PER_MS;
    if (rc == 0) {
        set_leading(c, t0, li.epoch);
        if (!c->was_leading || e != li.epoch)
            rhema_log(RHEMA_LOG_NOTICE, WHO,
                      "node '%s' leads cluster '%s' with epoch %llu (lease %llu ms, renewed every "
                      "%llu ms)",
                      c->node_id, c->cluster_name, (unsigned long long)li.epoch,
                      (unsigned long long)c->t.ttl_ms, (unsigned long long)c->t.renew_ms);
        if (!c->was_leading)
            atomic_fetch_add_explicit(&c->leadership_changes, 1, memory_order_relaxed);
        if (!c->was_leading) {
            rhema_audit_event("cluster.leadership_gained", NULL, NULL,
                              json_pack("{s:s,s:s,s:I}", "node", c->node_id, "cluster",
                                        c->cluster_name, "epoch", (json_int_t)li.epoch));
            record_leader(c, vt);
        }
        c->was_leading = 1;
        c->lease_failing = 0;
        return elapsed_ms >= c->t.renew_ms ? 0 : c->t.renew_ms - elapsed_ms;
    }
    if (rc == RHEMA_ECONFLICT) {
        char other[RHEMA_ID_MAX + 1];
        holder_node(li.holder, other);
        see_epoch(c, li.epoch);
        if (leading || c->was_leading) {
            clear_leading(c);
            char why[RHEMA_ID_MAX + 64];
            snprintf(why, sizeof why, "the lease is held by '%s' (epoch %llu)", other,
                     (unsigned long long)li.epoch);
            log_stepdown(c, why);
        }
        c->lease_failing = 0;
        return follower_delay(c, &li);
    }
    /* the backend did not answer: keep leading until the deadline, retrying */
    if (!c->lease_failing)
        rhema_log(RHEMA_LOG_WARN, WHO, "lease '%s' %s failed: %s", c->lease_name,
                  leading ? "renewal" : "acquisition", vt->errmsg(c->conn));
    c->lease_failing = 1;
    if (rhema_cluster_leadership(c, NULL)) {
        uint64_t dl, now = boot_ns();
        lock(c);
        dl = c->lead_deadline_ns;
        unlock(c);
        d = c->t.retry_ms / 4u;
        if (d > RETRY_STEP_MAX_MS)
            d = RETRY_STEP_MAX_MS;
        if (dl > now && (dl - now) / NS_PER_MS < d)
            d = (dl - now) / NS_PER_MS + 1u; /* wake at the deadline to step down */
        return d ? d : 1;
    }
    if (c->was_leading) {
        clear_leading(c);
        log_stepdown(c, "the backend did not answer before the local deadline");
    }
    return c->t.renew_ms;
}

static void on_lease(evutil_socket_t fd, short what, void *arg)
{
    struct rhema_cluster *c = arg;
    (void)fd, (void)what;
    if (c->left)
        return;
    arm_ms(c->lease_ev, lease_round(c));
}

/* ---- start / stop ---- */

struct count_ctx {
    const char *self;
    size_t online;
    int self_live;
    char self_boot[16];
};

static int count_cb(void *ctx, const char *key, const void *value, size_t len, uint64_t version)
{
    struct count_ctx *cc = ctx;
    json_t *n = rhema_json_loadb(value, len, 0, NULL);
    const char *st = json_string_value(json_object_get(n, "status"));
    (void)version;
    if (st != NULL && strcmp(st, "Online") == 0) {
        if (strcmp(key, cc->self) == 0) {
            const char *b =
                json_string_value(json_object_get(json_object_get(n, "metadata"), "boot_id"));
            cc->self_live = 1;
            snprintf(cc->self_boot, sizeof cc->self_boot, "%s", b ? b : "");
        } else {
            cc->online++;
        }
    }
    json_decref(n);
    return 0;
}

int rhema_cluster_start(struct rhema_server *srv, struct event_base *base,
                        struct rhema_cluster **out, char **err)
{
    const struct rhema_config *cfg = srv->cfg;
    struct rhema_cluster *c;
    const char *id;
    char *perr = NULL;
    int rc;

    if ((rc = rhema_cluster_check(cfg, srv->storage_plugin, err)) != 0)
        return rc;
    c = calloc(1, sizeof *c);
    if (c == NULL)
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    pthread_mutex_init(&c->lock, NULL);
    c->srv = srv;
    c->cfg = cfg;
    c->base = base;
    c->enabled = cfg->distributed_enabled;
    c->started_ms = srv->started_ms ? srv->started_ms : rhema_realtime_ms();
    rhema_cluster_timing(cfg, &c->t);
    id = cfg_str(cfg, "distributed.node.node_id", "");
    if (*id) {
        /* the lease holder is "<node_id>/<8-character boot id>", at most 128 bytes */
        if (!rhema_id_valid(id) || strlen(id) > RHEMA_LEASE_HOLDER_MAX - 9) {
            rhema_set_error(
                err, RHEMA_EINVAL,
                "distributed.node.node_id '%s': expected 1-%d characters [A-Za-z0-9._:-]", id,
                RHEMA_LEASE_HOLDER_MAX - 9);
            c->left = 1;
            rhema_cluster_stop(c);
            return RHEMA_EINVAL;
        }
        snprintf(c->node_id, sizeof c->node_id, "%s", id);
    } else {
        default_node_id(cfg, c->node_id);
    }
    c->name = cfg_str(cfg, "distributed.node.name", "");
    if (!*c->name)
        c->name = c->node_id;
    c->role = cfg_str(cfg, "distributed.node.role", "Coordinator");
    c->cluster_name = cfg_str(cfg, "distributed.cluster.name", "rhema");
    c->weight = cfg_int(cfg, "distributed.node.weight", 1);
    c->min_nodes = cfg_int(cfg, "distributed.cluster.min_nodes", 1);
    c->max_nodes = cfg_int(cfg, "distributed.cluster.max_nodes", 16);
    if (strcmp(c->role, "Observer") == 0)
        c->eligible = 0;
    else if (!cfg_bool(cfg, "distributed.cluster.enable_failover", 1))
        c->eligible = strcmp(c->role, "Coordinator") == 0;
    else
        c->eligible = 1;
    snprintf(c->holder, sizeof c->holder, "%s/%s", c->node_id,
             srv->boot_id[0] ? srv->boot_id : "0");
    snprintf(c->lease_name, sizeof c->lease_name, "cluster.%s.leader", c->cluster_name);

    if (!c->enabled) {
        rhema_log(RHEMA_LOG_INFO, WHO,
                  "distributed.enabled is false: node '%s' leads itself (epoch 1)", c->node_id);
        *out = c;
        return 0;
    }

    rc = srv->storage->connect(srv->storage_inst, &c->conn, &perr);
    if (rc != 0) {
        rhema_set_error(err, rc, "cluster: storage connect: %s", perr ? perr : rhema_strerror(rc));
        free(perr);
        c->conn = NULL;
        c->left = 1;
        rhema_cluster_stop(c);
        return rc;
    }
    {
        struct count_ctx cc = {.self = c->node_id};
        rc = srv->storage->scan(c->conn, RHEMA_CLUSTER_NODES_NS, NULL, NULL, 0, count_cb, &cc);
        if (rc == 0 && (int64_t)cc.online >= c->max_nodes) {
            rhema_set_error(err, RHEMA_ECONFLICT,
                            "cluster '%s' already has %zu Online node(s), "
                            "distributed.cluster.max_nodes is %lld: node '%s' does not join",
                            c->cluster_name, cc.online, (long long)c->max_nodes, c->node_id);
            c->left = 1; /* never joined: no Leaving entry, no release */
            rhema_cluster_stop(c);
            return RHEMA_ECONFLICT;
        }
        if (rc == 0 && cc.self_live && strcmp(cc.self_boot, srv->boot_id) != 0)
            rhema_log(RHEMA_LOG_WARN, WHO,
                      "node id '%s' has a live heartbeat of another process (boot %s): another "
                      "rhemad with the same distributed.node.node_id, or a restart within "
                      "node_timeout_seconds",
                      c->node_id, cc.self_boot);
        if (rc != 0)
            rhema_log(RHEMA_LOG_WARN, WHO, "reading the members: %s",
                      srv->storage->errmsg(c->conn));
    }
    c->hb_ev = event_new(base, -1, EV_PERSIST, on_heartbeat, c);
    c->lease_ev = evtimer_new(base, on_lease, c);
    if (c->hb_ev == NULL || c->lease_ev == NULL) {
        c->left = 1;
        rhema_cluster_stop(c);
        return rhema_set_error(err, RHEMA_ENOMEM, "cluster: cannot create timers");
    }
    heartbeat(c, "Online");
    arm_ms(c->hb_ev, c->t.heartbeat_ms);
    arm_ms(c->lease_ev, lease_round(c));
    rhema_log(RHEMA_LOG_NOTICE, WHO,
              "node '%s' (%s, %s) joined cluster '%s': heartbeat %llu ms, node timeout %llu ms, "
              "lease '%s' %llu ms renewed every %llu ms, step-down %llu ms after a renewal "
              "started; %s",
              c->node_id, c->role, node_address(c), c->cluster_name,
              (unsigned long long)c->t.heartbeat_ms, (unsigned long long)c->t.node_timeout_ms,
              c->lease_name, (unsigned long long)c->t.ttl_ms, (unsigned long long)c->t.renew_ms,
              (unsigned long long)c->t.deadline_ms,
              c->eligible ? "may lead" : "never leads (role / enable_failover)");
    *out = c;
    return 0;
}

void rhema_cluster_leave(struct rhema_cluster *c)
{
    int was;
    if (c == NULL || c->left)
        return;
    was = rhema_cluster_is_leader(c);
    lock(c);
    c->left = 1; /* from here on is_leader() is false (but for a disabled, lone node) */
    c->lead_deadline_ns = 0;
    c->lead_epoch = 0;
    unlock(c);
    if (!c->enabled || c->conn == NULL)
        return;
    if (c->hb_ev)
        event_del(c->hb_ev);
    if (c->lease_ev)
        event_del(c->lease_ev);
    if (c->eligible) {
        int rc = c->srv->storage->lease(c->conn, c->lease_name, c->holder, 0, RHEMA_LEASE_RELEASE,
                                        NULL);
        if (rc == 0)
            rhema_log(RHEMA_LOG_NOTICE, WHO, "node '%s' handed back the lease '%s'%s", c->node_id,
                      c->lease_name, was ? "" : " (it had stepped down already)");
        else if (rc != RHEMA_ECONFLICT && rc != RHEMA_ENOTFOUND)
            rhema_log(RHEMA_LOG_WARN, WHO, "releasing the lease '%s': %s (it expires by itself)",
                      c->lease_name, c->srv->storage->errmsg(c->conn));
    }
    if (c->was_leading)
        rhema_audit_event("cluster.leadership_lost", NULL, NULL,
                          json_pack("{s:s,s:s,s:s}", "node", c->node_id, "cluster",
                                    c->cluster_name, "reason", "the node is leaving"));
    c->was_leading = 0;
    heartbeat(c, "Leaving");
    rhema_log(RHEMA_LOG_NOTICE, WHO, "node '%s' is leaving cluster '%s'", c->node_id,
              c->cluster_name);
}

void rhema_cluster_stop(struct rhema_cluster *c)
{
    if (c == NULL)
        return;
    rhema_cluster_leave(c);
    if (c->hb_ev)
        event_free(c->hb_ev);
    if (c->lease_ev)
        event_free(c->lease_ev);
    if (c->conn)
        c->srv->storage->disconnect(c->conn);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* ---- views, from any thread, on the caller's connection ---- */

struct collect_ctx {
    json_t *map; /* node_id -> NodeInfo */
};

static int collect_cb(void *ctx, const char *key, const void *value, size_t len, uint64_t version)
{
    struct collect_ctx *cc = ctx;
    json_t *n = rhema_json_loadb(value, len, 0, NULL);
    (void)version;
    if (json_is_object(n))
        json_object_set_new(cc->map, key, n);
    else
        json_decref(n);
    return 0;
}

uint64_t rhema_cluster_current_epoch(const struct rhema_cluster *c,
                                     const struct rhema_storage_plugin *vt,
                                     rhema_storage_conn *conn)
{
    struct rhema_lease_info li;
    uint64_t e;
    int rc;
    if (c == NULL || !c->enabled)
        return 1;
    e = rhema_cluster_known_epoch(c);
    memset(&li, 0, sizeof li);
    rc = vt->lease(conn, c->lease_name, NULL, 0, RHEMA_LEASE_QUERY, &li);
    if ((rc == 0 || rc == RHEMA_ENOTFOUND) && li.epoch > e) {
        see_epoch((struct rhema_cluster *)c, li.epoch);
        e = li.epoch;
    }
    return e;
}

/* Every node: the live entries, and the known ones that expired as Offline. */
static int nodes_array(const struct rhema_cluster *c, const struct rhema_storage_plugin *vt,
                       rhema_storage_conn *conn, json_t **out, char **err)
{
    struct collect_ctx live = {json_object()}, known = {json_object()};
    json_t *arr = json_array();
    const char *key;
    json_t *n;
    int rc = vt->scan(conn, RHEMA_CLUSTER_NODES_NS, NULL, NULL, 0, collect_cb, &live);
    if (rc == 0)
        rc = vt->scan(conn, RHEMA_CLUSTER_KNOWN_NS, NULL, NULL, 0, collect_cb, &known);
    if (rc != 0) {
        rhema_set_error(err, rc, "reading the cluster members: %s", vt->errmsg(conn));
        goto out;
    }
    json_object_foreach(known.map, key, n)
    {
        json_t *l = json_object_get(live.map, key);
        if (l != NULL) {
            json_array_append(arr, l);
        } else {
            json_object_set_new(n, "status", json_string("Offline"));
            json_array_append(arr, n);
        }
    }
    json_object_foreach(live.map, key, n)
    {
        if (json_object_get(known.map, key) == NULL)
            json_array_append(arr, n);
    }
    (void)c;
out:
    json_decref(live.map);
    json_decref(known.map);
    if (rc != 0) {
        json_decref(arr);
        return rc;
    }
    *out = arr;
    return 0;
}

static int status_is(json_t *n, const char *s)
{
    const char *v = json_string_value(json_object_get(n, "status"));
    return v != NULL && strcmp(v, s) == 0;
}

/* The lease holder (node id, "" when free), its epoch and remaining ms. */
static int leader_of(const struct rhema_cluster *c, const struct rhema_storage_plugin *vt,
                     rhema_storage_conn *conn, char leader[RHEMA_ID_MAX + 1], uint64_t *epoch,
                     uint64_t *remaining_ms, char **err)
{
    struct rhema_lease_info li;
    uint64_t mine = 0;
    leader[0] = '\0';
    *remaining_ms = 0;
    if (rhema_cluster_leadership(c, &mine)) {
        /* leading: the local view is authoritative until the deadline */
        uint64_t d, now = boot_ns();
        lock(c);
        d = c->lead_deadline_ns;
        unlock(c);
        snprintf(leader, RHEMA_ID_MAX + 1, "%s", c->node_id);
        *epoch = mine;
        *remaining_ms = d > now ? (d - now) / NS_PER_MS : 0;
        return 0;
    }
    memset(&li, 0, sizeof li);
    int rc = vt->lease(conn, c->lease_name, NULL, 0, RHEMA_LEASE_QUERY, &li);
    if (rc != 0 && rc != RHEMA_ENOTFOUND)
        return rhema_set_error(err, rc, "reading the leader lease: %s", vt->errmsg(conn));
    see_epoch((struct rhema_cluster *)c, li.epoch);
    if (rc == 0 && li.holder[0]) {
        holder_node(li.holder, leader);
        *remaining_ms = li.ttl_remaining_ms;
    }
    *epoch = li.epoch > rhema_cluster_known_epoch(c) ? li.epoch : rhema_cluster_known_epoch(c);
    return 0;
}

static json_t *find_node(json_t *nodes, const char *id)
{
    size_t i;
    json_t *n;
    json_array_foreach(nodes, i, n)
    {
        const char *nid = json_string_value(json_object_get(n, "node_id"));
        if (nid != NULL && strcmp(nid, id) == 0)
            return n;
    }
    return NULL;
}

int rhema_cluster_json(const struct rhema_cluster *c, const struct rhema_storage_plugin *vt,
                       rhema_storage_conn *conn, int view, json_t **out, char **err)
{
    json_t *nodes = NULL, *o = NULL, *ln;
    char leader[RHEMA_ID_MAX + 1] = "";
    uint64_t epoch = 0, remaining = 0;
    size_t i, online = 0, unhealthy = 0, offline = 0, total;
    int rc, leads;

    if (c == NULL)
        return rhema_set_error(err, RHEMA_EUNAVAIL, "the cluster module is not running");
    leads = rhema_cluster_leadership(c, NULL);
    if (!c->enabled) {
        nodes = json_array();
        int left;
        lock(c);
        left = c->left;
        unlock(c);
        json_array_append_new(nodes, self_json(c, left ? "Leaving" : "Online"));
        if (leads) {
            snprintf(leader, sizeof leader, "%s", c->node_id);
            epoch = 1;
        }
    } else {
        if (view != RHEMA_CLUSTER_VIEW_LEADER &&
            (rc = nodes_array(c, vt, conn, &nodes, err)) != 0)
            return rc;
        if ((rc = leader_of(c, vt, conn, leader, &epoch, &remaining, err)) != 0) {
            json_decref(nodes);
            return rc;
        }
    }

    if (view == RHEMA_CLUSTER_VIEW_LEADER) {
        json_t *node = NULL;
        if (leader[0] && !c->enabled) {
            node = json_incref(json_array_get(nodes, 0));
        } else if (leader[0]) {
            struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
            if (vt->get(conn, RHEMA_CLUSTER_NODES_NS, leader, &v) == 0)
                node = rhema_json_loadb(v.data, v.len, 0, NULL);
        }
        o = json_pack("{s:s?,s:I,s:I,s:o?,s:s,s:b}", "leader", leader[0] ? leader : NULL, "epoch",
                      (json_int_t)epoch, "lease_remaining_ms", (json_int_t)remaining, "node",
                      node, "node_id", c->node_id, "is_leader", leads);
        json_decref(nodes);
        *out = o;
        return o ? 0 : rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    }
    if (view == RHEMA_CLUSTER_VIEW_NODES) {
        o = json_pack("{s:o,s:n}", "items", nodes, "next_cursor");
        *out = o;
        return o ? 0 : rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    }
    total = json_array_size(nodes);
    json_array_foreach(nodes, i, ln)
    {
        if (status_is(ln, "Online"))
            online++;
        else if (status_is(ln, "Unhealthy"))
            unhealthy++;
        else if (status_is(ln, "Offline"))
            offline++;
    }
    const char *status;
    if (!c->enabled)
        status = leads ? "Healthy" : "Unhealthy";
    else if ((int64_t)total < c->min_nodes)
        status = "Forming";
    else if (!leader[0])
        status = "Unhealthy";
    else if ((int64_t)online < c->min_nodes || unhealthy > 0)
        status = "Degraded";
    else
        status = "Healthy";
    ln = leader[0] ? find_node(nodes, leader) : NULL;
    o = json_pack("{s:s,s:I,s:I,s:I,s:I,s:s?,s:I,s:s,s:I,s:I,s:s,s:b,s:b,s:o}", "status", status,
                  "total_nodes", (json_int_t)total, "online_nodes", (json_int_t)online,
                  "unhealthy_nodes", (json_int_t)unhealthy, "offline_nodes", (json_int_t)offline,
                  "leader", leader[0] ? leader : NULL, "epoch", (json_int_t)epoch, "cluster",
                  c->cluster_name, "min_nodes", (json_int_t)c->min_nodes, "max_nodes",
                  (json_int_t)c->max_nodes, "node_id", c->node_id, "is_leader", leads, "enabled",
                  c->enabled, "nodes", nodes);
    if (o && ln)
        json_object_set_new(o, "leader_address", json_incref(json_object_get(ln, "address")));
    *out = o;
    return o ? 0 : rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
}
