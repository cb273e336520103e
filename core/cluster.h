/*
 * cluster -- membership and leader election through the storage backend
 * (DESIGN.md §7).  rhema runs no consensus protocol of its own: nodes agree
 * through the shared backend's TTL'd entries and its lease.
 *
 * Membership
 *   Every heartbeat_interval_seconds a node writes, in one batch,
 *     ns "cluster.nodes" key <node_id>  its NodeInfo, TTL node_timeout_seconds
 *     ns "cluster.known" key <node_id>  the same NodeInfo, no TTL
 *   The TTL'd entry is liveness, judged by the backend's clock: a node whose
 *   entry expired reads as Offline (its last NodeInfo, from cluster.known,
 *   keeps its last_heartbeat), so nodes that crashed or left stay listed.
 *   A graceful stop writes status "Leaving" into both.
 *   node_id defaults to "<hostname>:<port of service.listen>" (characters
 *   outside [A-Za-z0-9._:-] become '-'); distributed.node.node_id sets it.
 *   A node refuses to start when max_nodes other nodes are already Online.
 *
 * Leader
 *   The lease "cluster.<cluster.name>.leader", held as "<node_id>/<boot id>"
 *   (a restarted node is a new holder, so it gets a new epoch).  Timings,
 *   with ttl = leader_lease_seconds:
 *     renew interval (Patroni's loop_wait)     I = ttl / 3
 *     retry timeout  (Patroni's retry_timeout) R = heartbeat_interval_seconds
 *     safety rule (Patroni's)                  I + 2 R <= ttl, i.e.
 *                                              3 x heartbeat <= lease seconds
 *   The leader renews every I; a failed renew is retried until the local
 *   deadline  D = (start of the last successful acquire/renew) + ttl - R,
 *   which is at least I + R after that start.  The backend's lease cannot
 *   expire before start + ttl, so a leader stops acting as one at least R
 *   before another node can be granted the lease.  D is checked on every
 *   rhema_cluster_is_leader() call against CLOCK_BOOTTIME (monotonic, and
 *   counting a suspend or a SIGSTOP), so a process that was stopped or
 *   starved past D never believes it leads, even before a timer ran.
 *   A node that does not lead tries to acquire every I, or just after the
 *   holder's lease runs out when that is sooner.  Who may lead:
 *     enable_failover = true   every role but Observer;
 *     enable_failover = false  role Coordinator only (a fixed coordinator:
 *                              configure exactly one; when it is down the
 *                              cluster has no leader until it returns).
 *   Each new holder gets a larger epoch (the fencing token, storage.h).
 *
 * distributed.enabled = false: one node that leads itself with epoch 1
 * (until it exits, its drain included); no storage traffic, no timers.
 *
 * Threads: check, start, leave, stop and the timers run on the main thread
 * (the timers on its event base, with the module's own storage connection;
 * a slow backend delays them, never makes a node lead past D).  is_leader,
 * leadership, epoch, known_epoch, node_id, enabled and json may be called
 * from any thread; json uses the caller's storage connection.
 */
#ifndef RHEMA_CORE_CLUSTER_H
#define RHEMA_CORE_CLUSTER_H

#include <stdint.h>

#include <event2/event.h>
#include <jansson.h>
#include <rhema/storage.h>

#include "config.h"

struct rhema_server;
struct rhema_loaded_plugin;
struct rhema_cluster;

#define RHEMA_CLUSTER_NODES_NS "cluster.nodes"
#define RHEMA_CLUSTER_KNOWN_NS "cluster.known"

/* The timings derived from the configuration (see above), in ms. */
struct rhema_cluster_timing {
    uint64_t ttl_ms;          /* leader_lease_seconds */
    uint64_t renew_ms;        /* ttl / 3 */
    uint64_t retry_ms;        /* heartbeat_interval_seconds */
    uint64_t deadline_ms;     /* ttl - retry: step down this long after a renew started */
    uint64_t heartbeat_ms;    /* heartbeat_interval_seconds */
    uint64_t node_timeout_ms; /* node_timeout_seconds: the heartbeat entry's TTL */
};
void rhema_cluster_timing(const struct rhema_config *cfg, struct rhema_cluster_timing *t);

/*
 * Refuse a configuration that cannot be safe: when distributed.enabled,
 * the timing rule above, and a storage backend that several daemons can
 * share (the SHARED feature, or sqlite / file for daemons on one host) and
 * that implements leases.  storage (may be NULL: skip that part) is the
 * loaded storage plugin.  0, or RHEMA_EINVAL and *err (malloc'd) naming
 * the keys.  Used by rhemad -t too.
 */
int rhema_cluster_check(const struct rhema_config *cfg, const struct rhema_loaded_plugin *storage,
                        char **err);

/*
 * Check, connect the module's storage connection, register this node, try
 * the lease once (so a lone node leads as soon as it answers), arm the
 * timers on base.  Call before rhema_http_start(): srv->storage,
 * storage_inst and cfg must be set.  0, or a negative code and *err.
 */
int rhema_cluster_start(struct rhema_server *srv, struct event_base *base,
                        struct rhema_cluster **out, char **err);
/*
 * Graceful departure, at the start of a drain: stop leading at once, hand
 * the lease back, write status Leaving, cancel the timers.  The handle
 * stays readable (not leader) until stop.  Idempotent; NULL is a no-op.
 */
void rhema_cluster_leave(struct rhema_cluster *c);
/* leave() when not done yet, then disconnect and free.  After the workers stopped. */
void rhema_cluster_stop(struct rhema_cluster *c);

/* 1 when this node leads now: it holds the lease and the local deadline has not passed. */
int rhema_cluster_is_leader(const struct rhema_cluster *c);
/* is_leader(), and the epoch it leads with (0 when it does not) in *epoch, together. */
int rhema_cluster_leadership(const struct rhema_cluster *c, uint64_t *epoch);
/* How often this node gained or lost the lead since start (0 for NULL). */
uint64_t rhema_cluster_leadership_changes(const struct rhema_cluster *c);
/* The largest epoch this node has seen (its own or another holder's). */
uint64_t rhema_cluster_known_epoch(const struct rhema_cluster *c);
/* This node's id (set at start, then constant); "" for NULL. */
const char *rhema_cluster_node_id(const struct rhema_cluster *c);

/*
 * The JSON of GET /v1/cluster (RHEMA_CLUSTER_VIEW_HEALTH: ClusterHealth
 * with nodes), /v1/cluster/nodes (_NODES) or /v1/cluster/leader (_LEADER),
 * read through the caller's connection (vt, conn: a worker's).  0 and *out
 * (a new reference), or a negative RHEMA_E* code and *err (malloc'd).
 *
 * ClusterHealth.status, in this order:
 *   Forming    fewer than min_nodes nodes have ever joined (cluster.known);
 *   Unhealthy  nobody holds the leader lease;
 *   Degraded   a leader, but fewer than min_nodes Online or some Unhealthy;
 *   Healthy    a leader, at least min_nodes Online, none Unhealthy.
 * total_nodes counts every node ever seen (cluster.known), online_nodes
 * the live entries with status Online, unhealthy_nodes those Unhealthy,
 * offline_nodes the known nodes whose entry expired (Leaving and Joining
 * nodes count in total_nodes only).
 */
#define RHEMA_CLUSTER_VIEW_HEALTH 0
#define RHEMA_CLUSTER_VIEW_NODES 1
#define RHEMA_CLUSTER_VIEW_LEADER 2
int rhema_cluster_json(const struct rhema_cluster *c, const struct rhema_storage_plugin *vt,
                       rhema_storage_conn *conn, int view, json_t **out, char **err);

/*
 * The epoch a fenced write is compared with: the largest of the epochs this
 * node has seen and the lease's current epoch read through conn (when the
 * cluster is enabled and the read succeeds).  1 when disabled.
 */
uint64_t rhema_cluster_current_epoch(const struct rhema_cluster *c,
                                     const struct rhema_storage_plugin *vt,
                                     rhema_storage_conn *conn);

#endif /* RHEMA_CORE_CLUSTER_H */
