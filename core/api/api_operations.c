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

#include "api_operations.h"
#include "commit.h"
#include "limit/ratelimit.h"
#include "log.h"
#include "perfmon.h"
#include "query.h"
#include "util.h"


/* ---- operations ---- */

static void h_health(struct rhema_req *r)
{
    struct rhema_server *srv = r->worker->srv;
    char *serr = NULL;
    int rc = srv->storage->health(r->worker->conn, &serr);
    json_t *v = json_pack("{s:s,s:s,s:I,s:s,s:s,s:i}", "status", rc ? "degraded" : "ok",
                          "version", PACKAGE_VERSION, "uptime_seconds",
                          (json_int_t)((rhema_realtime_ms() - srv->started_ms) / 1000), "backend",
                          srv->storage_plugin->name, "storage", rc ? "unavailable" : "ok",
                          "workers", srv->nworkers);
    if (rc) {
        /* the backend's message names its host and port: logged, not answered */
        rhema_log(RHEMA_LOG_WARN, "http", "%s %s: storage backend '%s': %s", r->request_id,
                  r->path, srv->storage_plugin->name, serr ? serr : rhema_strerror(rc));
        json_object_set_new(v, "storage_error", json_string(rhema_strerror(rc)));
    }
    free(serr);
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
    json_t *o = json_pack("{s:s,s:I,s:i,s:o,s:{s:I,s:I},s:o}", "version", PACKAGE_VERSION,
                          "uptime_seconds",
                          (json_int_t)((rhema_realtime_ms() - srv->started_ms) / 1000),
                          "workers", srv->nworkers, "storage", storage, "group_commit",
                          "commits", (json_int_t)groups, "writes", (json_int_t)jobs,
                          "performance", rhema_perfmon_json(srv->perfmon));
    struct rhema_limits_stats ls;
    rhema_limits_stats(srv, &ls);
    json_object_set_new(o, "rate_limiting",
                        json_pack("{s:b,s:I,s:I,s:I}", "enabled", srv->limits != NULL, "allowed",
                                  (json_int_t)ls.allowed, "refused", (json_int_t)ls.refused,
                                  "backend_errors", (json_int_t)ls.backend_errors));
    rhema_reply_jsonv(r, 200, o);
}

static void h_alerts(struct rhema_req *r)
{
    rhema_reply_jsonv(r, 200, rhema_perfmon_alerts_json(r->worker->srv->perfmon));
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
