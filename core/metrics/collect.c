/*
 * collect -- the families read from other subsystems at scrape time (collect.h).
 */
#include "rhema_build.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>

#include "ai/cache.h"
#include "ai/gateway.h"
#include "alerts.h"
#include "api/api_auth.h"
#include "api/tls.h"
#include "../audit.h"
#include "auth/keystore.h"
#include "../cluster.h"
#include "../commit.h"
#include "../session_access.h"
#include "../keyring.h"
#include "../maintenance.h"
#include "monitor.h"
#include "../perfmon.h"
#include "../services.h"
#include "../util.h"
#include "collect.h"

/* The boot time from /proc/stat's btime, in seconds since the epoch; 0 when unknown. */
static unsigned long long boot_time(void)
{
    FILE *f = fopen("/proc/stat", "r");
    char line[256];
    unsigned long long bt = 0;
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "btime %llu", &bt) == 1)
            break;
    fclose(f);
    return bt;
}

int rhema_process_stats(struct rhema_process_stats *out)
{
    char buf[1024], *p;
    size_t n;
    unsigned long long utime, stime, start, vsize;
    long long rss;
    long tick = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    struct rlimit rl;
    FILE *f = fopen("/proc/self/stat", "r");
    DIR *d;
    struct dirent *de;

    memset(out, 0, sizeof *out);
    if (!f)
        return -1;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* the command name may hold spaces and ')': the fields start after the last ')' */
    if (!(p = strrchr(buf, ')')) || tick <= 0 || page <= 0)
        return -1;
    /* fields 3.. : state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
     * utime(14) stime(15) cutime cstime priority nice threads itrealvalue starttime(22)
     * vsize(23) rss(24) */
    if (sscanf(p + 1,
               " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d %*d "
               "%llu %llu %lld",
               &utime, &stime, &start, &vsize, &rss) != 5)
        return -1;
    out->cpu_seconds = (double)(utime + stime) / (double)tick;
    out->start_time_seconds = (double)boot_time() + (double)start / (double)tick;
    out->virtual_bytes = vsize;
    out->resident_bytes = rss > 0 ? (uint64_t)rss * (uint64_t)page : 0;
    if ((d = opendir("/proc/self/fd")) != NULL) {
        while ((de = readdir(d)) != NULL)
            if (de->d_name[0] != '.')
                out->open_fds++;
        closedir(d);
        if (out->open_fds)
            out->open_fds--; /* the directory stream's own */
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        out->max_fds = rl.rlim_cur == RLIM_INFINITY ? 0 : (uint64_t)rl.rlim_cur;
    return 0;
}

static void gauge1(struct rhema_expo *e, const char *name, const char *help, double v)
{
    rhema_expo_family(e, name, "gauge", help);
    rhema_expo_sample(e, name, "", 0, NULL, NULL, v);
}

static void counter1(struct rhema_expo *e, const char *name, const char *help, double v)
{
    rhema_expo_family(e, name, "counter", help);
    rhema_expo_sample(e, name, "_total", 0, NULL, NULL, v);
}

static void process_families(struct rhema_expo *e)
{
    struct rhema_process_stats ps;
    if (rhema_process_stats(&ps) != 0)
        return;
    counter1(e, "process_cpu_seconds", "Total user and system CPU time spent in seconds.",
             ps.cpu_seconds);
    gauge1(e, "process_resident_memory_bytes", "Resident memory size in bytes.",
           (double)ps.resident_bytes);
    gauge1(e, "process_virtual_memory_bytes", "Virtual memory size in bytes.",
           (double)ps.virtual_bytes);
    gauge1(e, "process_open_fds", "Number of open file descriptors.", (double)ps.open_fds);
    if (ps.max_fds)
        gauge1(e, "process_max_fds", "Maximum number of open file descriptors.",
               (double)ps.max_fds);
    gauge1(e, "process_start_time_seconds",
           "Start time of the process since unix epoch in seconds.", ps.start_time_seconds);
}

static void build_info(struct rhema_server *srv, struct rhema_expo *e)
{
    static const char *const k[] = {"version", "storage_backend", "libevent"};
    const char *v[] = {PACKAGE_VERSION, srv->storage_plugin ? srv->storage_plugin->name : "",
                       event_get_version()};
    rhema_expo_family(e, "rhema_build_info", "gauge",
                      "Always 1; the labels say which rhemad this is.");
    rhema_expo_sample(e, "rhema_build_info", "", 3, k, v, 1);
    gauge1(e, "rhema_http_connections", "HTTP connections open across the workers.",
           (double)atomic_load_explicit(&srv->http_conns, memory_order_relaxed));
}

static void commit_families(struct rhema_server *srv, struct rhema_expo *e)
{
    uint64_t groups, jobs;
    if (!srv->committer)
        return; /* the backend has no group(): workers write one by one */
    rhema_committer_stats(srv->committer, &groups, &jobs);
    counter1(e, "rhema_group_commits", "Group commits (one storage transaction each).",
             (double)groups);
    counter1(e, "rhema_group_commit_writes",
             "Session writes committed in groups; divided by rhema_group_commits_total, the "
             "mean group size.",
             (double)jobs);
}

static void access_families(struct rhema_server *srv, struct rhema_expo *e)
{
    struct rhema_access_stats st;
    if (!srv->access)
        return;
    rhema_access_stats(srv->access, &st);
    gauge1(e, "rhema_session_access_entries",
           "Sessions with access counts in memory (read since the last flush, or being written).",
           (double)rhema_access_entries(srv->access));
    counter1(e, "rhema_session_access_flushes",
             "Passes of the access-count writer that wrote something.", (double)st.flushes);
    counter1(e, "rhema_session_access_flush_failures",
             "Passes of the access-count writer that ended with a storage error (the counts "
             "stay in memory for the next pass).",
             (double)st.failed);
    counter1(e, "rhema_session_access_counts_written",
             "Session reads whose count the access-count writer stored.", (double)st.written);
}

static void perfmon_families(struct rhema_server *srv, struct rhema_expo *e)
{
    static const char *const k_alg[] = {"algorithm"};
    struct rhema_perfmon_totals t;
    const char *alg = srv->cfg->compression_algorithm ? srv->cfg->compression_algorithm : "";
    const char *v[] = {alg};
    if (!srv->perfmon)
        return;
    rhema_perfmon_totals(srv->perfmon, &t);
    rhema_expo_family(e, "rhema_compression_messages", "counter",
                      "Messages compressed (POST /v1/messages/compress), by algorithm.");
    rhema_expo_sample_u64(e, "rhema_compression_messages", "_total", 1, k_alg, v, t.compressed);
    rhema_expo_family(e, "rhema_compression_input_bytes", "counter",
                      "Bytes given to the compressor, by algorithm.");
    rhema_expo_sample_u64(e, "rhema_compression_input_bytes", "_total", 1, k_alg, v,
                          t.compressed_in_bytes);
    rhema_expo_family(e, "rhema_compression_output_bytes", "counter",
                      "Bytes the compressor produced, by algorithm.");
    rhema_expo_sample_u64(e, "rhema_compression_output_bytes", "_total", 1, k_alg, v,
                          t.compressed_out_bytes);
    rhema_expo_family(e, "rhema_compression_ratio", "gauge",
                      "Input bytes over output bytes of every message compressed since start "
                      "(0 before the first), by algorithm.");
    rhema_expo_sample(e, "rhema_compression_ratio", "", 1, k_alg, v,
                      t.compressed_out_bytes
                          ? (double)t.compressed_in_bytes / (double)t.compressed_out_bytes
                          : 0.0);
    counter1(e, "rhema_compression_stored_messages",
             "Messages kept as they were (too small or not worth compressing).", (double)t.stored);
    counter1(e, "rhema_encryption_operations", "Encrypt and decrypt calls of the message routes.",
             (double)t.crypto);
    counter1(e, "rhema_encryption_bytes", "Bytes encrypted or decrypted by the message routes.",
             (double)t.crypto_bytes);
    counter1(e, "rhema_encryption_seconds", "Time spent encrypting and decrypting, in seconds.",
             (double)t.crypto_ns / 1e9);
    counter1(e, "rhema_key_rotations", "Key rotations since start.", (double)t.rotations);
    counter1(e, "rhema_messages_processed",
             "Message route calls: compress, store as is, decompress, encrypt, decrypt.",
             (double)t.processed);
    counter1(e, "rhema_message_processing_seconds",
             "Time spent in the message route calls, in seconds.", (double)t.processing_ns / 1e9);
}

static void keyring_families(struct rhema_server *srv, struct rhema_expo *e)
{
    struct rhema_keyring_stats st;
    uint64_t under_current = 0, now = rhema_realtime_ms();
    if (!srv->keyring || rhema_keyring_stats(srv->keyring, &st) != 0)
        return;
    for (size_t i = 0; i < st.versions; i++)
        if (st.v[i].version == st.current_version)
            under_current = st.v[i].encryptions;
    gauge1(e, "rhema_keyring_current_version", "The version new messages are encrypted under.",
           st.current_version);
    gauge1(e, "rhema_keyring_active_keys", "Key versions that still decrypt.",
           (double)st.active_versions);
    gauge1(e, "rhema_keyring_messages_current_key",
           "Messages encrypted under the current key version.", (double)under_current);
    gauge1(e, "rhema_keyring_seconds_since_rotation", "Seconds since the last key rotation.",
           now > st.last_rotation_ms ? (double)(now - st.last_rotation_ms) / 1e3 : 0.0);
    rhema_keyring_stats_release(&st);
}

static void cluster_families(struct rhema_server *srv, rhema_storage_conn *conn,
                             struct rhema_expo *e)
{
    static const char *const statuses[] = {"Online", "Joining", "Leaving", "Unhealthy"};
    static const char *const k_status[] = {"status"};
    json_t *view = NULL, *nodes, *n;
    char *err = NULL;
    size_t i;
    if (!srv->cluster)
        return;
    gauge1(e, "rhema_cluster_is_leader", "1 when this node holds the leader lease.",
           rhema_cluster_is_leader(srv->cluster));
    gauge1(e, "rhema_cluster_epoch", "The largest leader epoch this node has seen.",
           (double)rhema_cluster_known_epoch(srv->cluster));
    counter1(e, "rhema_cluster_leadership_changes", "Times this node gained or lost the lead.",
             (double)rhema_cluster_leadership_changes(srv->cluster));
    if (!conn || rhema_cluster_json(srv->cluster, srv->storage, conn, RHEMA_CLUSTER_VIEW_HEALTH,
                                    &view, &err) != 0) {
        free(err); /* the storage read failed: the families that need it are left out */
        return;
    }
    gauge1(e, "rhema_cluster_has_leader", "1 when some node holds the leader lease.",
           json_string_value(json_object_get(view, "leader")) != NULL);
    rhema_expo_family(e, "rhema_cluster_nodes", "gauge",
                      "Live cluster nodes by status; Offline: known nodes whose entry expired.");
    nodes = json_object_get(view, "nodes");
    for (size_t s = 0; s < sizeof statuses / sizeof *statuses; s++) {
        uint64_t count = 0;
        json_array_foreach(nodes, i, n)
        {
            const char *st = json_string_value(json_object_get(n, "status"));
            if (st && strcmp(st, statuses[s]) == 0)
                count++;
        }
        rhema_expo_sample_u64(e, "rhema_cluster_nodes", "", 1, k_status, &statuses[s], count);
    }
    {
        const char *off[] = {"Offline"};
        json_int_t o = json_integer_value(json_object_get(view, "offline_nodes"));
        rhema_expo_sample_u64(e, "rhema_cluster_nodes", "", 1, k_status, off,
                              o > 0 ? (uint64_t)o : 0);
    }
    json_decref(view);
}

static void services_families(struct rhema_server *srv, struct rhema_expo *e)
{
    static const char *const k[] = {"health"};
    static const char *const healthy[] = {"healthy"}, *const not_healthy[] = {"not_healthy"};
    uint64_t h, u;
    if (!srv->services)
        return;
    rhema_services_health_counts(srv->services, &h, &u);
    rhema_expo_family(e, "rhema_service_instances", "gauge",
                      "Registered service instances the balancers know, by health "
                      "(not_healthy: failing or not yet checked).");
    rhema_expo_sample_u64(e, "rhema_service_instances", "", 1, k, healthy, h);
    rhema_expo_sample_u64(e, "rhema_service_instances", "", 1, k, not_healthy, u);
}

static void maintenance_families(struct rhema_server *srv, struct rhema_expo *e)
{
    static const char *const k[] = {"kind", "outcome"};
    static const char *const kinds[RHEMA_MAINTENANCE_KINDS] = {"backup", "cleanup"};
    static const char *const outcomes[2] = {"success", "failure"};
    uint64_t runs[RHEMA_MAINTENANCE_KINDS][2];
    if (!srv->maintenance)
        return;
    rhema_maintenance_runs(srv->maintenance, runs);
    rhema_expo_family(e, "rhema_maintenance_runs", "counter",
                      "Storage backups and retention cleanups run, by kind and outcome.");
    for (int i = 0; i < RHEMA_MAINTENANCE_KINDS; i++)
        for (int f = 0; f < 2; f++) {
            const char *v[] = {kinds[i], outcomes[f]};
            rhema_expo_sample_u64(e, "rhema_maintenance_runs", "_total", 2, k, v, runs[i][f]);
        }
    gauge1(e, "rhema_storage_data_bytes",
           "The storage backend's data size at its last reading, plus what was written since.",
           (double)rhema_maintenance_data_size(srv->maintenance));
}

static void alert_families(struct rhema_server *srv, struct rhema_expo *e)
{
    static const char *const k[] = {"outcome"};
    static const char *const outcomes[] = {"sent", "failed", "given_up", "dropped"};
    struct rhema_monitor_notify_stats ns;
    rhema_alerts_write_metrics(srv->alerts, e);
    if (!srv->monitor || rhema_alerts_count(srv->alerts) == 0)
        return;
    rhema_monitor_notify_stats(srv->monitor, &ns);
    const uint64_t v[] = {ns.sent, ns.failed_attempts, ns.given_up, ns.dropped};
    rhema_expo_family(e, "rhema_alert_notifications", "counter",
                      "Webhook notifications: sent, attempts that failed, given up after the "
                      "last retry, dropped from a full queue.");
    for (size_t i = 0; i < 4; i++)
        rhema_expo_sample_u64(e, "rhema_alert_notifications", "_total", 1, k, &outcomes[i], v[i]);
    gauge1(e, "rhema_alert_notifications_queued", "Webhook notifications waiting to be sent.",
           (double)ns.queued);
}

/* ---- the subsystems' families (issue 11): auth, rate limiting, audit, TLS, AI ---- */

static void counter_labeled(struct rhema_expo *e, const struct rhema_metrics_set *s,
                            const char *name, const char *key, const char *const *values,
                            enum rhema_mx first, size_t n)
{
    for (size_t i = 0; i < n; i++)
        rhema_expo_sample_u64(e, name, "_total", 1, &key, &values[i],
                              rhema_metrics_set_get(s, first + i));
}

static void histogram1(struct rhema_expo *e, const struct rhema_metrics_set *s, const char *name,
                       const char *help, enum rhema_mxh h)
{
    uint64_t counts[RHEMA_METRICS_BUCKETS + 1], sum;
    rhema_expo_family(e, name, "histogram", help);
    rhema_metrics_set_hist(s, h, counts, &sum);
    rhema_expo_histogram(e, name, 0, NULL, NULL, counts, sum);
}

/* The runtime keys gauge reads at most this many keys a scrape: its cost stays bounded. */
#define RUNTIME_KEYS_COUNT_MAX 100000

static void auth_families(struct rhema_server *srv, rhema_storage_conn *conn,
                          const struct rhema_metrics_set *s, struct rhema_expo *e)
{
    static const char *const results[] = {"ok",       "certificate", "missing",
                                          "malformed", "checksum",   "unknown",
                                          "expired",  "unavailable", "forbidden"};
    static const char *const sources[] = {"static", "cache", "backend"};
    size_t static_keys;
    if (!rhema_auth_key_stats(srv, &static_keys))
        return;
    rhema_expo_family(e, "rhema_auth_requests", "counter",
                      "Authentication and authorization outcomes: ok (a valid API key), "
                      "certificate (a mapped client certificate), missing (no key on a route that "
                      "needs one), malformed, checksum, unknown (no such key, a wrong secret or "
                      "revoked), expired, unavailable (the backend could not be asked), forbidden "
                      "(authenticated, denied by roles or rules).");
    counter_labeled(e, s, "rhema_auth_requests", "result", results, RHEMA_MX_AUTH_OK,
                    sizeof results / sizeof *results);
    rhema_expo_family(e, "rhema_auth_key_lookups", "counter",
                      "API key lookups by where the key was found: static (the configuration), "
                      "cache (the worker's cache of runtime keys), backend (read from storage).");
    counter_labeled(e, s, "rhema_auth_key_lookups", "source", sources, RHEMA_MX_KEY_STATIC, 3);
    gauge1(e, "rhema_auth_static_keys", "API keys from the configuration (security.api_keys.keys).",
           (double)static_keys);
    uint64_t runtime;
    if (conn && srv->storage &&
        rhema_keystore_count_runtime(srv->storage, conn, RUNTIME_KEYS_COUNT_MAX, &runtime) == 0)
        gauge1(e, "rhema_auth_runtime_keys",
               "API keys created at run time (POST /v1/auth/keys) and stored, expired ones "
               "included; counted up to 100000.",
               (double)runtime);
}

static void ratelimit_families(struct rhema_server *srv, const struct rhema_metrics_set *s,
                               struct rhema_expo *e)
{
    static const char *const k[] = {"scope", "result"};
    static const char *const scopes[] = {"key", "client"};
    static const char *const results[] = {"allowed", "refused", "error"};
    static const char *const actions[] = {"served", "refused"};
    if (!srv->limits)
        return;
    rhema_expo_family(e, "rhema_ratelimit_decisions", "counter",
                      "Rate-limit decisions by the limited party (key: an API key, client: an "
                      "address without a key) and result (error: the count failed).");
    for (size_t sc = 0; sc < 2; sc++)
        for (size_t r = 0; r < 3; r++) {
            const char *v[] = {scopes[sc], results[r]};
            rhema_expo_sample_u64(e, "rhema_ratelimit_decisions", "_total", 2, k, v,
                                  rhema_metrics_set_get(s, RHEMA_MX_RL_KEY_ALLOWED + sc * 3 + r));
        }
    rhema_expo_family(e, "rhema_ratelimit_backend_failures", "counter",
                      "Rate-limit counts that failed, by what failure_mode did: served (open) or "
                      "refused with 503 (closed).");
    counter_labeled(e, s, "rhema_ratelimit_backend_failures", "action", actions,
                    RHEMA_MX_RL_FAIL_OPEN, 2);
    histogram1(e, s, "rhema_ratelimit_backend_duration_seconds",
               "Duration of one rate-limit count (the backend's rate(), or the in-process table).",
               RHEMA_MXH_RL_BACKEND);
}

static void audit_families(const struct rhema_metrics_set *s, struct rhema_expo *e)
{
    if (!rhema_audit_enabled())
        return;
    counter1(e, "rhema_audit_records", "Audit records written to the log.",
             (double)rhema_metrics_set_get(s, RHEMA_MX_AUDIT_RECORDS));
    counter1(e, "rhema_audit_written_bytes", "Bytes written to the audit log.",
             (double)rhema_metrics_set_get(s, RHEMA_MX_AUDIT_BYTES));
    counter1(e, "rhema_audit_batches", "Batches written (one write and one fdatasync each).",
             (double)rhema_metrics_set_get(s, RHEMA_MX_AUDIT_BATCHES));
    counter1(e, "rhema_audit_failed_records",
             "Audit records whose write failed (lost, or their requests refused with "
             "fail_closed).",
             (double)rhema_metrics_set_get(s, RHEMA_MX_AUDIT_FAILED));
    counter1(e, "rhema_audit_dropped_records",
             "Audit records that could not be queued (out of memory).",
             (double)rhema_metrics_set_get(s, RHEMA_MX_AUDIT_DROPPED));
    histogram1(e, s, "rhema_audit_write_duration_seconds", "Duration of one batch's write().",
               RHEMA_MXH_AUDIT_WRITE);
    histogram1(e, s, "rhema_audit_fsync_duration_seconds",
               "Duration of one batch's fdatasync() (security.audit.fsync).",
               RHEMA_MXH_AUDIT_FSYNC);
    gauge1(e, "rhema_audit_queue_records", "Audit records queued for the writer.",
           (double)rhema_audit_queued());
    gauge1(e, "rhema_audit_healthy", "1 when the last audit batch reached the file.",
           rhema_audit_healthy());
}

static void tls_families(const struct rhema_metrics_set *s, struct rhema_expo *e)
{
    static const char *const k[] = {"result"};
    long long na = rhema_tls_cert_not_after();
    if (!rhema_tls_enabled())
        return;
    rhema_expo_family(e, "rhema_tls_handshakes", "counter",
                      "TLS handshakes by result: ok, or why one failed (no_client_certificate, "
                      "bad_client_certificate, protocol_version, no_shared_cipher, http_request, "
                      "peer_alert, other, aborted: the client left mid-handshake).");
    for (unsigned i = 0; i < RHEMA_MX_TLS_RESULTS; i++) {
        const char *v[] = {rhema_metrics_tls_result_name(i)};
        rhema_expo_sample_u64(e, "rhema_tls_handshakes", "_total", 1, k, v,
                              rhema_metrics_set_get(s, RHEMA_MX_TLS_OK + i));
    }
    histogram1(e, s, "rhema_tls_handshake_duration_seconds",
               "Duration of the successful TLS handshakes.", RHEMA_MXH_TLS_HANDSHAKE);
    counter1(e, "rhema_tls_client_certificates",
             "Handshakes that ended with a verified client certificate.",
             (double)rhema_metrics_set_get(s, RHEMA_MX_TLS_CLIENT_CERTS));
    if (na)
        gauge1(e, "rhema_tls_certificate_expiry_seconds",
               "Seconds until the server certificate's notAfter (negative once expired).",
               (double)(na - (long long)time(NULL)));
}

/*
 * The AI gateway's families (ai/stats.h).  The parts of the gateway that
 * land later (streaming, the response cache, token limits) write theirs
 * from rhema_ai_metrics_write() too, or from a function called here.
 */
static void ai_families(struct rhema_server *srv, struct rhema_expo *e)
{
    if (srv->ai)
        rhema_ai_metrics_write(srv->ai, e);
}

/* The AI response cache (ai/cache.h), when on. */
static void ai_cache_families(struct rhema_server *srv, struct rhema_expo *e)
{
    static const char *const k[] = {"result"};
    static const char *const results[] = {"hit", "miss", "collapsed"};
    struct rhema_ai_cache *c = rhema_ai_cache_of(srv->ai);
    struct rhema_ai_cache_stats st;
    if (!c)
        return;
    rhema_ai_cache_stats(c, &st);
    rhema_expo_family(e, "rhema_ai_cache_lookups", "counter",
                      "AI response cache lookups: answered from the cache, not found, and not "
                      "found but joined an identical request in flight (single flight).");
    rhema_expo_sample_u64(e, "rhema_ai_cache_lookups", "_total", 1, k, &results[0], st.hits);
    rhema_expo_sample_u64(e, "rhema_ai_cache_lookups", "_total", 1, k, &results[1],
                          st.misses - st.collapsed);
    rhema_expo_sample_u64(e, "rhema_ai_cache_lookups", "_total", 1, k, &results[2], st.collapsed);
    counter1(e, "rhema_ai_cache_stores", "AI answers stored in the cache.", (double)st.stores);
    counter1(e, "rhema_ai_cache_evictions",
             "AI cache entries evicted for max_size_bytes or max_entries.", (double)st.evictions);
    counter1(e, "rhema_ai_cache_expirations", "AI cache entries dropped past ttl_seconds.",
             (double)st.expirations);
    counter1(e, "rhema_ai_cache_too_large", "AI answers not stored: over max_entry_bytes.",
             (double)st.too_large);
    gauge1(e, "rhema_ai_cache_bytes", "Bytes the AI cache's entries take.", (double)st.bytes);
    gauge1(e, "rhema_ai_cache_entries", "Entries in the AI cache.", (double)st.entries);
}

void rhema_metrics_collect(struct rhema_server *srv, rhema_storage_conn *conn, struct rhema_expo *e)
{
    const struct rhema_metrics_set *s = rhema_metrics_builtin();
    build_info(srv, e);
    process_families(e);
    commit_families(srv, e);
    access_families(srv, e);
    perfmon_families(srv, e);
    keyring_families(srv, e);
    cluster_families(srv, conn, e);
    services_families(srv, e);
    maintenance_families(srv, e);
    alert_families(srv, e);
    if (s) {
        auth_families(srv, conn, s, e);
        ratelimit_families(srv, s, e);
        audit_families(s, e);
        tls_families(s, e);
    }
    ai_families(srv, e);
    ai_cache_families(srv, e);
}
