/*
 * api_metrics -- GET /metrics and the route slots of the counters (api_metrics.h).
 */
#include "rhema_build.h"

#include <ctype.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/bufferevent.h>

#include "../metrics/collect.h"
#include "../metrics/metrics.h"
#include "api_metrics.h"
#include "query.h"

#define TABLES_MAX 32
#define METRICS_TEMPLATE "/metrics"

/*
 * The route slots: slot 0 is "unmatched", then one per distinct template
 * in table order.  slot_of[t][i] is the slot of tables[t][i].  Built
 * before the workers start, read-only after.
 */
static struct {
    int on;
    char *path; /* monitoring.metrics_path */
    const struct rhema_route *tables[TABLES_MAX];
    size_t ntables;
    size_t len[TABLES_MAX];
    unsigned *slot_of[TABLES_MAX];
    const char **names; /* [nslots] */
    unsigned nslots;
} A;

static unsigned route_slot(const void *route)
{
    uintptr_t p = (uintptr_t)route;
    for (size_t t = 0; t < A.ntables; t++) {
        uintptr_t b = (uintptr_t)A.tables[t];
        if (p >= b && p < b + A.len[t] * sizeof(struct rhema_route))
            return A.slot_of[t][(p - b) / sizeof(struct rhema_route)];
    }
    return 0;
}

static int path_ok(const char *p)
{
    if (p[0] != '/' || !p[1] || strlen(p) > 128)
        return 0;
    for (const char *c = p + 1; *c; c++)
        if (!isalnum((unsigned char)*c) && !strchr("/._-", *c))
            return 0;
    return 1;
}

int rhema_api_metrics_check(const struct rhema_config *cfg, char **err)
{
    const char *p = METRICS_TEMPLATE;
    rhema_config_get_string(cfg, "monitoring.metrics_path", &p);
    if (!path_ok(p))
        return rhema_set_error(err, RHEMA_EINVAL,
                               "monitoring.metrics_path: '%s' must be '/' and 1-127 characters "
                               "[A-Za-z0-9/._-]",
                               p);
    if (strncmp(p, "/v1/", 4) == 0 || strcmp(p, "/v1") == 0 || strncmp(p, "/health", 7) == 0)
        return rhema_set_error(err, RHEMA_EINVAL,
                               "monitoring.metrics_path: '%s' would hide API routes (it may not "
                               "be under /v1 or /health)",
                               p);
    return 0;
}

void rhema_api_metrics_close(void)
{
    rhema_metrics_close();
    for (size_t t = 0; t < A.ntables; t++)
        free(A.slot_of[t]);
    free(A.names);
    free(A.path);
    memset(&A, 0, sizeof A);
}

int rhema_api_metrics_open(struct rhema_server *srv, const struct rhema_route *const *tables,
                           char **err)
{
    const char *path = METRICS_TEMPLATE;
    int on = 1, rc;
    size_t total = 0;
    rhema_config_get_bool(srv->cfg, "monitoring.enabled", &on);
    rhema_config_get_string(srv->cfg, "monitoring.metrics_path", &path);
    if ((rc = rhema_api_metrics_check(srv->cfg, err)) != 0)
        return rc;
    memset(&A, 0, sizeof A);
    if (!(A.path = strdup(path)))
        goto oom;
    A.on = on;
    if (!on)
        return 0;
    for (A.ntables = 0; tables[A.ntables]; A.ntables++) {
        if (A.ntables == TABLES_MAX)
            abort(); /* more route tables than this file expects: raise TABLES_MAX */
        A.tables[A.ntables] = tables[A.ntables];
        for (const struct rhema_route *rt = tables[A.ntables]; rt->path; rt++)
            A.len[A.ntables]++;
        total += A.len[A.ntables];
    }
    if (!(A.names = calloc(total + 1, sizeof *A.names)))
        goto oom;
    A.names[A.nslots++] = "unmatched";
    for (size_t t = 0; t < A.ntables; t++) {
        if (!(A.slot_of[t] = calloc(A.len[t] ? A.len[t] : 1, sizeof *A.slot_of[t])))
            goto oom;
        for (size_t i = 0; i < A.len[t]; i++) {
            const char *p = A.tables[t][i].path;
            unsigned s = 1;
            while (s < A.nslots && strcmp(A.names[s], p) != 0)
                s++;
            if (s == A.nslots)
                A.names[A.nslots++] = p;
            A.slot_of[t][i] = s;
        }
    }
    rc = rhema_metrics_open(srv->cfg->workers > 0 ? srv->cfg->workers : rhema_ncpu(), A.nslots,
                            route_slot);
    if (rc == 0)
        return 0;
    rhema_api_metrics_close();
    return rhema_set_error(err, rc, "metrics: %s", rhema_strerror(rc));
oom:
    rhema_api_metrics_close();
    return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
}

int rhema_api_metrics_path(struct rhema_req *r)
{
    int custom = A.path && strcmp(A.path, METRICS_TEMPLATE) != 0;
    if (A.on && custom && strcmp(r->path, A.path) == 0) {
        r->path = METRICS_TEMPLATE; /* path_buf still owns the decoded path */
        return 0;
    }
    if (strcmp(r->path, METRICS_TEMPLATE) == 0 && (!A.on || custom)) {
        rhema_reply_error(r, 404, "not_found", "no route for %s%s", r->path,
                          A.on ? " (monitoring.metrics_path is another path)"
                               : " (monitoring.enabled is false)");
        return 1;
    }
    return 0;
}

/* OpenMetrics when Accept names it (with a q above 0), as Prometheus asks. */
static int wants_openmetrics(struct rhema_req *r)
{
    const char *a = rhema_req_header(r, "Accept");
    while (a && *a) {
        const char *end = strchr(a, ',');
        size_t n = end ? (size_t)(end - a) : strlen(a);
        while (n && isspace((unsigned char)*a))
            a++, n--;
        if (n >= 28 && strncasecmp(a, "application/openmetrics-text", 28) == 0) {
            const char *q = a + 28;
            int zero = 0;
            while ((q = strchr(q, ';')) != NULL && q < a + n) {
                q++;
                while (*q == ' ')
                    q++;
                if (strncmp(q, "q=", 2) == 0 && strtod(q + 2, NULL) <= 0.0)
                    zero = 1;
            }
            if (!zero)
                return 1;
        }
        a = end ? end + 1 : NULL;
    }
    return 0;
}

/*
 * A scrape's reply is often larger than one loopback segment (64 KiB), and
 * Prometheus keeps its connection open: with Nagle's algorithm the tail
 * segment then waits for the ACK of the first, which the scraper delays
 * (40 ms on Linux).  So the scraper's connection sends without delay.
 */
static void no_delay(struct rhema_req *r)
{
    struct evhttp_connection *c = evhttp_request_get_connection(r->req);
    struct bufferevent *bev = c ? evhttp_connection_get_bufferevent(c) : NULL;
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    int one = 1;
    if (fd >= 0)
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* best effort */
}

int rhema_api_metrics_text(struct rhema_server *srv, rhema_storage_conn *conn,
                           struct rhema_expo *e)
{
    if (!A.names)
        return RHEMA_EINVAL; /* monitoring off: nothing is counted */
    rhema_metrics_write(e, A.names, srv->storage_plugin ? srv->storage_plugin->name : "");
    rhema_metrics_collect(srv, conn, e);
    return e->oom ? RHEMA_ENOMEM : 0;
}

static void h_metrics(struct rhema_req *r)
{
    struct rhema_server *srv = r->worker->srv;
    struct rhema_expo e;
    if (rhema_query_check(r, NULL))
        return;
    rhema_expo_init(&e, wants_openmetrics(r));
    rhema_metrics_write(&e, A.names, srv->storage_plugin ? srv->storage_plugin->name : "");
    rhema_metrics_collect(srv, r->worker->conn, &e);
    rhema_expo_finish(&e);
    if (e.oom) {
        rhema_expo_release(&e);
        rhema_reply_error(r, 503, "out_of_memory", "the metrics did not fit in memory");
        return;
    }
    no_delay(r);
    rhema_reply(r, 200,
                e.openmetrics ? "application/openmetrics-text; version=1.0.0; charset=utf-8"
                              : "text/plain; version=0.0.4; charset=utf-8",
                e.text, e.len);
    rhema_expo_release(&e);
}

const struct rhema_route rhema_metrics_routes[] = {
    {RHEMA_M_GET, "/metrics", h_metrics, "metrics:read", RHEMA_READS},
    {0},
};
