/*
 * api_cluster -- HTTP handlers of the cluster view and the write fence (see
 * api_cluster.h for the routes, cluster.h for the semantics).
 */
#include "rhema_build.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_cluster.h"
#include "cluster.h"
#include "util.h"

#define EPOCH_HEADER "X-Rhema-Epoch"

static void view(struct rhema_req *r, int which)
{
    struct rhema_server *srv = r->worker->srv;
    json_t *o = NULL;
    char *err = NULL;
    int rc = rhema_cluster_json(srv->cluster, srv->storage, r->worker->conn, which, &o, &err);
    if (rc != 0) {
        rhema_reply_store_error(r, rc == RHEMA_ENOTFOUND ? RHEMA_EUNAVAIL : rc,
                                err ? err : rhema_strerror(rc));
        free(err);
        return;
    }
    rhema_reply_jsonv(r, 200, o);
}

static void h_health(struct rhema_req *r) { view(r, RHEMA_CLUSTER_VIEW_HEALTH); }
static void h_nodes(struct rhema_req *r) { view(r, RHEMA_CLUSTER_VIEW_NODES); }
static void h_leader(struct rhema_req *r) { view(r, RHEMA_CLUSTER_VIEW_LEADER); }

const struct rhema_route rhema_cluster_routes[] = {
    {RHEMA_M_GET, "/v1/cluster", h_health, "cluster:read", RHEMA_READS},
    {RHEMA_M_GET, "/v1/cluster/nodes", h_nodes, "cluster:read", RHEMA_READS},
    {RHEMA_M_GET, "/v1/cluster/leader", h_leader, "cluster:read", RHEMA_READS},
    {0},
};

/* A decimal uint64 with nothing around it: 0 and *out, or -1. */
static int parse_epoch(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    size_t i;
    if (s == NULL || s[0] == '\0' || strlen(s) > 20)
        return -1;
    for (i = 0; s[i]; i++) {
        unsigned d;
        if (s[i] < '0' || s[i] > '9')
            return -1;
        d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10u)
            return -1;
        v = v * 10u + d;
    }
    *out = v;
    return 0;
}

int rhema_cluster_fence(struct rhema_req *r)
{
    struct rhema_server *srv = r->worker->srv;
    const char *h = rhema_req_header(r, EPOCH_HEADER);
    uint64_t want, cur;
    char buf[24];
    if (h == NULL)
        return 0;
    if (parse_epoch(h, &want) != 0) {
        rhema_reply_error(r, 400, "bad_header",
                          "header '" EPOCH_HEADER "': expected a decimal epoch (0-%llu), got '%.64s'",
                          (unsigned long long)UINT64_MAX, h);
        return 1;
    }
    cur = rhema_cluster_current_epoch(srv->cluster, srv->storage, r->worker->conn);
    if (want >= cur)
        return 0;
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)cur);
    rhema_header(r, EPOCH_HEADER, buf);
    rhema_reply_error(r, 409, "fenced",
                      "epoch %llu is older than the cluster's current epoch %llu: a newer leader "
                      "was elected; this write is refused",
                      (unsigned long long)want, (unsigned long long)cur);
    return 1;
}
