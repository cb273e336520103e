/*
 * api_cluster -- the cluster routes of DESIGN.md §6 and write fencing (§7):
 *   GET /v1/cluster          ClusterHealth (status Healthy / Degraded /
 *                            Unhealthy / Forming, see cluster.h), with the
 *                            nodes, the leader and the epoch
 *   GET /v1/cluster/nodes    {"items": [NodeInfo...], "next_cursor": null};
 *                            nodes whose heartbeat expired are Offline
 *   GET /v1/cluster/leader   {"leader": id or null, "epoch", "lease_remaining_ms",
 *                            "node": NodeInfo or null, "node_id": this node,
 *                            "is_leader": whether this node leads now}
 *                            -- never 404: no leader is "leader": null
 * A backend that does not answer is 503.  Handlers run on the worker thread
 * and read storage through its connection.
 */
#ifndef RHEMA_CORE_API_CLUSTER_H
#define RHEMA_CORE_API_CLUSTER_H

#include "routes.h"

extern const struct rhema_route rhema_cluster_routes[];

/*
 * Fencing: the pipeline's stage for every route declared as a write (one
 * place, so that no write can forget it).  A request carrying
 * X-Rhema-Epoch (a decimal uint64) lower than the current epoch
 * (rhema_cluster_current_epoch(): the lease's epoch, 1 when distributed is
 * disabled) is answered 409 {"error":{"code":"fenced",...}} with the
 * current epoch in X-Rhema-Epoch; a malformed header is answered 400
 * bad_header.  Returns 1 when it replied (the caller just returns), 0 when
 * the write may go on (no header, or an epoch at least the current one).
 */
int rhema_cluster_fence(struct rhema_req *r);

#endif /* RHEMA_CORE_API_CLUSTER_H */
