/*
 * api_operations -- the operations routes of DESIGN.md §6 (health, plugins,
 * stats, alerts) and the compression routes (see api_operations.h).
 */
#include "rhema_build.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/queue.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "metrics/alerts.h"
#include "api_operations.h"
#include "cluster.h"
#include "commit.h"
#include "metrics/health.h"
#include "keyring.h"
#include "metrics/metrics.h"
#include "metrics/monitor.h"
#include "services.h"
#include "limit/ratelimit.h"
#include "log.h"
#include "perfmon.h"
#include "query.h"
#include "util.h"


/* ---- operations ---- */

static const char *const overall_names[] = {"ok", "degraded", "unhealthy"};

static void h_health(struct rhema_req *r)
{
    struct rhema_server *srv = r->worker->srv;
    enum rhema_health_status worst = RHEMA_HEALTHY;
    json_t *comps = srv->health ? rhema_health_check(srv->health, srv, r->worker->conn, &worst)
                                : json_object();
    const char *st = json_string_value(
        json_object_get(json_object_get(comps, "storage"), "status"));
    int storage_ok = !st || strcmp(st, "Healthy") == 0;
    json_t *v = json_pack("{s:s,s:s,s:s,s:I,s:s,s:s,s:i,s:o}", "status", overall_names[worst],
                          "overall", rhema_health_status_name(worst), "version", PACKAGE_VERSION,
                          "uptime_seconds",
                          (json_int_t)((rhema_realtime_ms() - srv->started_ms) / 1000), "backend",
                          srv->storage_plugin->name, "storage", storage_ok ? "ok" : "unavailable",
                          "workers", srv->nworkers, "components", comps);
    if (!storage_ok)
        json_object_set_new(v, "storage_error", json_string(rhema_strerror(RHEMA_EUNAVAIL)));
    rhema_reply_jsonv(r, 200, v);
}

static void h_live(struct rhema_req *r)
{
    static const char body[] = "{\"status\":\"alive\"}";
    rhema_reply_json(r, 200, body, sizeof body - 1);
}

static void h_ready(struct rhema_req *r)
{
    char *serr = NULL;
    int rc = r->worker->srv->storage->health(r->worker->conn, &serr);
    if (rc) {
        /* the backend's message names its host and port: logged, not answered */
        rhema_log(RHEMA_LOG_WARN, "http", "%s %s: storage backend '%s': %s", r->request_id,
                  r->path, r->worker->srv->storage_plugin->name,
                  serr ? serr : rhema_strerror(rc));
        rhema_reply_error(r, 503, "unavailable", "storage backend '%s' is not reachable",
                          r->worker->srv->storage_plugin->name);
        free(serr);
        return;
    }
    if (r->worker->draining) {
        rhema_reply_error(r, 503, "unavailable", "shutting down");
        return;
    }
    static const char body[] = "{\"status\":\"ready\"}";
    rhema_reply_json(r, 200, body, sizeof body - 1);
}

static json_t *storage_features(uint32_t f)
{
    json_t *a = json_array();
    if (f & RHEMA_STORAGE_SHARED)
        json_array_append_new(a, json_string("shared"));
    if (f & RHEMA_STORAGE_DURABLE)
        json_array_append_new(a, json_string("durable"));
    if (f & RHEMA_STORAGE_TTL)
        json_array_append_new(a, json_string("ttl"));
    if (f & RHEMA_STORAGE_LEASES)
        json_array_append_new(a, json_string("leases"));
    if (f & RHEMA_STORAGE_SEQUENCED)
        json_array_append_new(a, json_string("sequenced"));
    return a;
}

static void h_plugins(struct rhema_req *r)
{
    json_t *items = json_array();
    const struct rhema_loaded_plugin *p;
    for (size_t i = 0; (p = rhema_plugin_at(r->worker->srv->plugins, i)); i++) {
        char abi[32];
        snprintf(abi, sizeof abi, "%d.%u", RHEMA_ABI_MAJOR, p->abi_minor);
        json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s}", "name", p->name, "kind",
                              rhema_plugin_kind_name(p->kind), "version", p->version,
                              "description", p->description, "path", p->path, "abi", abi);
        if (p->kind == RHEMA_KIND_STORAGE) {
            json_object_set_new(o, "features", storage_features(p->vt.storage.features));
            json_object_set_new(o, "active",
                                json_boolean(p == r->worker->srv->storage_plugin));
        }
        json_array_append_new(items, o);
    }
    rhema_reply_jsonv(r, 200, json_pack("{s:o,s:n}", "items", items, "next_cursor"));
}

/* ---- messages: compression frames (DESIGN.md §3) ---- */

static const unsigned char *raw_body(struct rhema_req *r, size_t *len)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(r->req);
    *len = evbuffer_get_length(in);
    return *len ? evbuffer_pullup(in, -1) : (const unsigned char *)"";
}

static void h_compress(struct rhema_req *r)
{
    const struct rhema_codecs *cs = &r->worker->srv->codecs;
    const char *alg = evhttp_find_header(&r->query, "algorithm");
    const char *lvl = evhttp_find_header(&r->query, "level");
    char err[RHEMA_FRAME_ERR_MAX];
    int id = -1;
    int32_t level = INT32_MIN;
    static const char *const known[] = {"algorithm", "level", NULL};
    if (rhema_query_check(r, known))
        return;
    if (alg) {
        id = strcmp(alg, "none") == 0 ? RHEMA_CODEC_STORED : rhema_codecs_id(cs, alg);
        if (id < 0) {
            rhema_reply_error(r, 400, "invalid_field",
                              "parameter 'algorithm': '%s' is not a loaded compression plugin "
                              "(load it with plugins.load)",
                              alg);
            return;
        }
    } else if (cs->default_id < 0) {
        rhema_reply_error(r, 503, "unavailable",
                          "no compression codec is loaded (advanced_features.compression.algorithm "
                          "names one that was not found)");
        return;
    }
    if (lvl) {
        char *end;
        long v = strtol(lvl, &end, 10);
        if (!*lvl || *end || v < -1000000 || v > 1000000) {
            rhema_reply_error(r, 400, "invalid_field", "parameter 'level': expected an integer");
            return;
        }
        level = (int32_t)v;
    }
    size_t len;
    const unsigned char *src = raw_body(r, &len);
    struct rhema_buf out;
    uint64_t t0 = rhema_monotonic_ns();
    /* an explicit algorithm means: compress, whatever the threshold says */
    int rc = rhema_frame_compress(cs, &r->worker->codec_ctxs, id, level, alg != NULL, src, len,
                                  &out, err);
    if (rc) {
        rhema_reply_store_error(r, rc == RHEMA_EINVAL ? rc : RHEMA_EIO, err);
        return;
    }
    char n[32];
    int used = out.data[3];
    if (used) /* stored as is on purpose never counts against the ratio */
        rhema_perfmon_compressed(r->worker->srv->perfmon, len, out.len,
                                 rhema_monotonic_ns() - t0);
    else
        rhema_perfmon_stored(r->worker->srv->perfmon, len, rhema_monotonic_ns() - t0);
    rhema_header(r, "X-Rhema-Codec", used ? cs->by_id[used].plugin->name : "none");
    snprintf(n, sizeof n, "%zu", len);
    rhema_header(r, "X-Rhema-Original-Length", n);
    rhema_reply(r, 200, "application/octet-stream", out.data, out.len);
    free(out.data);
}

static void h_decompress(struct rhema_req *r)
{
    const struct rhema_codecs *cs = &r->worker->srv->codecs;
    char err[RHEMA_FRAME_ERR_MAX];
    size_t len, n = 0;
    uint64_t orig = 0;
    const unsigned char *src = raw_body(r, &len);
    if (rhema_query_check(r, NULL))
        return;
    uint64_t t0 = rhema_monotonic_ns();
    /* decode straight into the reply's buffer: no intermediate copy */
    struct evbuffer *buf = evbuffer_new();
    struct evbuffer_iovec vec;
    int rc = rhema_frame_peek(cs, src, len, &orig, err);
    if (rc == 0 && (!buf || evbuffer_reserve_space(buf, (ev_ssize_t)(orig ? orig : 1), &vec, 1) < 1))
        rc = RHEMA_ENOMEM, snprintf(err, sizeof err, "out of memory");
    if (rc == 0)
        rc = rhema_frame_decompress_into(cs, &r->worker->codec_ctxs, src, len, vec.iov_base,
                                         (size_t)orig, &n, err);
    switch (rc) {
    case 0: break;
    case RHEMA_ETOOBIG: rhema_reply_error(r, 413, "too_large", "%s", err); goto out;
    case RHEMA_ENOMEM: rhema_reply_error(r, 500, "internal", "%s", err); goto out;
    default: rhema_reply_error(r, 400, "bad_frame", "%s", err); goto out;
    }
    vec.iov_len = n;
    evbuffer_commit_space(buf, &vec, 1);
    rhema_perfmon_decompressed(r->worker->srv->perfmon, n, rhema_monotonic_ns() - t0);
    rhema_header(r, "X-Rhema-Codec", src[3] ? cs->by_id[src[3]].plugin->name : "none");
    rhema_reply_evbuffer(r, 200, "application/octet-stream", buf);
out:
    if (buf)
        evbuffer_free(buf);
}

/* persistence_stats: the totals now, the namespaces of the monitor's last refresh. */
static json_t *persistence_stats(struct rhema_server *srv, int rc,
                                 const struct rhema_storage_stats *st)
{
    json_t *o = rhema_monitor_namespaces_json(srv->monitor);
    json_object_set_new(o, "backend", json_string(srv->storage_plugin->name));
    json_object_set_new(o, "ok", json_boolean(rc == 0));
    json_object_set_new(o, "total_entries", rc == 0 ? json_integer((json_int_t)st->entries)
                                                    : json_null());
    json_object_set_new(o, "total_size_bytes", rc == 0 ? json_integer((json_int_t)st->bytes)
                                                       : json_null());
    return o;
}

static json_t *distributed_stats(struct rhema_server *srv, rhema_storage_conn *conn)
{
    uint64_t healthy = 0, not_healthy = 0;
    json_t *view = NULL;
    char *err = NULL;
    if (srv->services)
        rhema_services_health_counts(srv->services, &healthy, &not_healthy);
    json_t *o = json_pack("{s:b,s:I,s:I}", "enabled", srv->cluster != NULL, "service_count",
                          (json_int_t)(healthy + not_healthy), "healthy_service_count",
                          (json_int_t)healthy);
    if (!srv->cluster) {
        json_object_set_new(o, "node_count", json_integer(1));
        json_object_set_new(o, "cluster_health", json_string("Healthy"));
        json_object_set_new(o, "is_leader", json_true());
        return o;
    }
    json_object_set_new(o, "is_leader", json_boolean(rhema_cluster_is_leader(srv->cluster)));
    json_object_set_new(o, "epoch",
                        json_integer((json_int_t)rhema_cluster_known_epoch(srv->cluster)));
    if (rhema_cluster_json(srv->cluster, srv->storage, conn, RHEMA_CLUSTER_VIEW_HEALTH, &view,
                           &err) != 0) {
        free(err); /* the storage read failed: what needs it is null */
        json_object_set_new(o, "node_count", json_null());
        json_object_set_new(o, "cluster_health", json_null());
        return o;
    }
    json_object_set_new(o, "node_count", json_integer((json_int_t)json_array_size(
                                             json_object_get(view, "nodes"))));
    json_object_set(o, "cluster_health", json_object_get(view, "status"));
    json_object_set(o, "online_nodes", json_object_get(view, "online_nodes"));
    json_object_set(o, "leader", json_object_get(view, "leader"));
    json_decref(view);
    return o;
}

static json_t *key_stats(struct rhema_server *srv)
{
    struct rhema_keyring_stats st;
    uint64_t under_current = 0;
    if (!srv->keyring || rhema_keyring_stats(srv->keyring, &st) != 0)
        return json_pack("{s:b,s:i}", "enabled", 0, "active_keys", 0);
    for (size_t i = 0; i < st.versions; i++)
        if (st.v[i].version == st.current_version)
            under_current = st.v[i].encryptions;
    char t[RHEMA_TIME_MAX];
    rhema_time_format(st.last_rotation_ms, t);
    json_t *o = json_pack("{s:b,s:I,s:I,s:I,s:I,s:s}", "enabled", 1, "active_keys",
                          (json_int_t)st.active_versions, "total_keys", (json_int_t)st.versions,
                          "current_version", (json_int_t)st.current_version,
                          "messages_current_key", (json_int_t)under_current, "last_rotation_at",
                          t);
    rhema_keyring_stats_release(&st);
    return o;
}

static json_t *advanced_features_stats(struct rhema_server *srv, json_t *perf)
{
    unsigned pending = 0, firing = 0;
    rhema_alerts_active(srv->alerts, &pending, &firing);
    json_t *alerts = json_pack("{s:b,s:i,s:i}", "enabled", rhema_alerts_count(srv->alerts) > 0,
                               "pending", (int)pending, "firing", (int)firing);
    json_object_set(alerts, "perfmon_active",
                    json_object_get(json_object_get(perf, "alerts"), "active"));
    json_t *metrics = json_pack("{s:O,s:O,s:O}", "samples", json_object_get(perf, "samples"),
                                "totals", json_object_get(perf, "totals"), "thresholds",
                                json_object_get(perf, "thresholds"));
    if (!json_object_get(perf, "samples")) /* performance monitoring off */
        metrics = (json_decref(metrics), json_object());
    json_object_set(metrics, "enabled", json_object_get(perf, "enabled"));
    return json_pack("{s:o,s:o,s:o}", "performance_metrics", metrics, "performance_alerts",
                     alerts, "key_stats", key_stats(srv));
}

static void h_stats(struct rhema_req *r)
{
    struct rhema_server *srv = r->worker->srv;
    struct rhema_storage_stats st = {0};
    uint64_t groups = 0, jobs = 0;
    rhema_committer_stats(srv->committer, &groups, &jobs);
    int rc = srv->storage->stats(r->worker->conn, NULL, &st);
    json_t *storage = json_pack("{s:s,s:b}", "backend", srv->storage_plugin->name, "ok", rc == 0);
    if (rc == 0) {
        json_object_set_new(storage, "entries", json_integer((json_int_t)st.entries));
        json_object_set_new(storage, "bytes", json_integer((json_int_t)st.bytes));
    }
    json_t *perf = rhema_perfmon_json(srv->perfmon);
    uint64_t uptime_ms = rhema_realtime_ms() - srv->started_ms;
    json_t *o = json_pack("{s:s,s:I,s:f,s:i,s:o,s:{s:I,s:I},s:O}", "version", PACKAGE_VERSION,
                          "uptime_seconds", (json_int_t)(uptime_ms / 1000),
                          "uptime_seconds_exact", (double)uptime_ms / 1e3, "workers",
                          srv->nworkers, "storage", storage, "group_commit", "commits",
                          (json_int_t)groups, "writes", (json_int_t)jobs, "performance", perf);
    struct rhema_limits_stats ls;
    rhema_limits_stats(srv, &ls);
    json_object_set_new(o, "rate_limiting",
                        json_pack("{s:b,s:I,s:I,s:I}", "enabled", srv->limits != NULL, "allowed",
                                  (json_int_t)ls.allowed, "refused", (json_int_t)ls.refused,
                                  "backend_errors", (json_int_t)ls.backend_errors));
    struct rhema_metrics_http_totals ht;
    rhema_metrics_http_totals(&ht);
    json_object_set_new(
        o, "requests",
        json_pack("{s:b,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "counted", rhema_metrics_enabled(), "total",
                  (json_int_t)ht.replies, "informational", (json_int_t)ht.by_class[0], "success",
                  (json_int_t)ht.by_class[1], "redirection", (json_int_t)ht.by_class[2],
                  "client_errors", (json_int_t)ht.by_class[3], "server_errors",
                  (json_int_t)ht.by_class[4], "in_flight", (json_int_t)ht.in_flight));
    json_object_set_new(o, "persistence_stats", persistence_stats(srv, rc, &st));
    json_object_set_new(o, "distributed_stats", distributed_stats(srv, r->worker->conn));
    json_object_set_new(o, "advanced_features_stats", advanced_features_stats(srv, perf));
    json_decref(perf);
    rhema_reply_jsonv(r, 200, o);
}

static void h_alerts(struct rhema_req *r)
{
    struct rhema_server *srv = r->worker->srv;
    if (rhema_query_check(r, NULL))
        return;
    if (rhema_alerts_count(srv->alerts) > 0) {
        rhema_reply_jsonv(r, 200, rhema_alerts_json(srv->alerts));
        return;
    }
    /* monitoring.alerts off: the performance monitor's own alerts, as before */
    json_t *o = rhema_perfmon_alerts_json(srv->perfmon);
    json_object_set_new(o, "enabled", json_false());
    json_object_set_new(o, "rules", json_array());
    rhema_reply_jsonv(r, 200, o);
}

const struct rhema_route rhema_operations_routes[] = {
    {RHEMA_M_GET, "/health", h_health, "health:read", RHEMA_READS},
    {RHEMA_M_GET, "/health/live", h_live, "health:read", RHEMA_READS},
    {RHEMA_M_GET, "/health/ready", h_ready, "health:read", RHEMA_READS},
    {RHEMA_M_GET, "/v1/plugins", h_plugins, "operations:read", RHEMA_READS},
    {RHEMA_M_GET, "/v1/stats", h_stats, "operations:read", RHEMA_READS},
    {RHEMA_M_GET, "/v1/alerts", h_alerts, "operations:read", RHEMA_READS},
    {RHEMA_M_POST, "/v1/messages/compress", h_compress, "messages:process", RHEMA_READS},
    {RHEMA_M_POST, "/v1/messages/decompress", h_decompress, "messages:process", RHEMA_READS},
    {0},
};
