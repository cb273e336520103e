/*
 * config_schema -- the schema: every core key with its path, type, default,
 * range or allowed values, and where it lands in struct rhema_config; the
 * keys this version does not act on; the section of each plugin kind.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "config.h"
#include "config_internal.h"
#include "rhema_paths.h" /* RHEMA_PLUGINDIR, RHEMA_DATA_DIRECTORY: made by make */

/* ------------------------------------------------------------------------ */
/* The schema                                                               */
#define GRP(p, fl) { .path = (p), .type = K_GROUP, .flags = (fl) }
#define INT_(p, d, lo, hi) { .path = (p), .type = K_INT, .def_i = (d), .min = (lo), .max = (hi) }
#define INTF(p, d, lo, hi, f)                                                          \
    { .path = (p), .type = K_INT, .def_i = (d), .min = (lo), .max = (hi), .fld = FLD_INT, \
      .off = OFF(f) }
#define I64F(p, d, lo, hi, f)                                                          \
    { .path = (p), .type = K_INT, .def_i = (d), .min = (lo), .max = (hi), .fld = FLD_I64, \
      .off = OFF(f) }
#define FLT(p, d, lo, hi) { .path = (p), .type = K_FLOAT, .def_f = (d), .fmin = (lo), .fmax = (hi) }
#define BOOL_(p, d) { .path = (p), .type = K_BOOL, .def_i = (d) }
#define BOOLF(p, d, f) { .path = (p), .type = K_BOOL, .def_i = (d), .fld = FLD_BOOL, .off = OFF(f) }
#define STR(p, d) { .path = (p), .type = K_STRING, .def_s = (d) }
#define STRQ(p, fl) { .path = (p), .type = K_STRING, .def_s = "", .flags = (fl) }
#define STRF(p, d, f) { .path = (p), .type = K_STRING, .def_s = (d), .fld = FLD_STR, .off = OFF(f) }
#define TYPED(p, t, d, fl) { .path = (p), .type = (t), .def_s = (d), .flags = (fl) }
#define TYPEDF(p, t, d, f) { .path = (p), .type = (t), .def_s = (d), .fld = FLD_STR, .off = OFF(f) }
#define ENUM_(p, d, v) { .path = (p), .type = K_ENUM, .def_s = (d), .values = (v) }
#define LIST(p, d) { .path = (p), .type = K_STRLIST, .values = (d) }
#define LISTF(p, d, f) { .path = (p), .type = K_STRLIST, .values = (d), .fld = FLD_LIST, .off = OFF(f) }
#define GLIST(p) { .path = (p), .type = K_GROUPLIST }

static const char *const roles_enum[] = { "Coordinator", "Worker", "Observer", "Backup", NULL };
const char *const cfg_level_enum[] = { "debug", "info", "notice", "warn", "error", NULL };
static const char *const format_enum[] = { "text", "json", NULL };
static const char *const no_strings[] = { NULL };
static const char *const history_backend_enum[] = { "memory", "storage", NULL };
static const char *const action_enum[] = { "allow", "deny", NULL };
static const char *const failure_mode_enum[] = { "open", "closed", NULL };
static const char *const tls_client_enum[] = { "none", "optional", "required", NULL };
static const char *const tls_version_enum[] = { "1.2", "1.3", NULL };
static const char *const cmp_enum[] = { ">", ">=", "<", "<=", "==", "!=", NULL };
static const char *const severity_enum[] = { "critical", "warning", "info", NULL };
static const char *const scope_enum[] = { "node", "cluster", NULL };
static const char *const no_origins[] = { NULL }; /* same origin only */
static const char *const cors_headers[] = { "Content-Type", "Authorization", "X-API-Key", "If-None-Match",
                                            "If-Match",     "X-Request-Id",  "X-Rhema-Epoch",
                                            NULL };

#define I32MAX INT64_C(2147483647)
#define I64LIM INT64_C(1000000000000000) /* 10^15: sums of them stay far from overflow */

const struct key cfg_schema[] = {
    GRP("service", 0),
    TYPEDF("service.listen", K_LISTEN, "127.0.0.1:8080", listen),
    INTF("service.workers", 0, 0, 256, workers),
    STRF("service.pidfile", "", pidfile),
    STR("service.data_directory", RHEMA_DATA_DIRECTORY),
    I64F("service.max_request_size_bytes", 10485760, 1024, INT64_C(1073741824),
         max_request_size_bytes),
    INTF("service.request_timeout_seconds", 30, 1, 3600, request_timeout_seconds),
    I64F("service.max_page_bytes", 4194304, 4096, INT64_C(1073741824), max_page_bytes),
    INT_("service.shutdown_timeout_seconds", 30, 0, 3600),
    INT_("service.request_header_timeout_seconds", 60, 1, 3600),
    INT_("service.request_body_timeout_seconds", 120, 1, 3600),
    INT_("service.max_connections", 4096, 0, 10000000),
    INT_("service.max_output_buffer_bytes", 134217728, 65536, INT64_C(68719476736)),
    INT_("service.max_output_buffer_total_bytes", 536870912, 65536, INT64_C(1099511627776)),
    GRP("service.cors", 0),
    BOOLF("service.cors.enabled", 1, cors_enabled),
    LISTF("service.cors.origins", no_origins, cors_origins),
    LIST("service.cors.allow_headers", cors_headers),
    INT_("service.cors.max_age_seconds", 600, 0, 86400),
    GRP("service.tls", 0), /* core/api/tls.c: checked there, at start, on -t and on reload */
    BOOL_("service.tls.enabled", 0),
    STR("service.tls.cert_file", ""),
    STR("service.tls.key_file", ""),
    STR("service.tls.client_ca_file", ""),
    ENUM_("service.tls.client_certificates", "", tls_client_enum), /* "": see tls.h */
    ENUM_("service.tls.min_version", "1.2", tls_version_enum),
    STR("service.tls.ciphers", ""),
    STR("service.tls.ciphersuites", ""),

    GRP("plugins", 0),
    STRF("plugins.directory", RHEMA_PLUGINDIR, plugin_directory),
    LISTF("plugins.load", no_strings, plugin_load),

    GRP("persistence", F_PLUGINS),
    TYPEDF("persistence.backend", K_NAME, "sqlite", backend),
    BOOLF("persistence.enable_backups", 0, enable_backups),
    INTF("persistence.backup_interval_hours", 24, 1, 8760, backup_interval_hours),
    INTF("persistence.backup_retention_days", 7, 1, 3650, backup_retention_days),
    STRF("persistence.backup_directory", "backups", backup_directory),
    BOOLF("persistence.enable_cleanup", 0, enable_cleanup),
    INTF("persistence.cleanup_interval_hours", 24, 1, 8760, cleanup_interval_hours),
    INTF("persistence.data_retention_days", 30, 1, 36500, data_retention_days),
    I64F("persistence.max_data_size_bytes", 0, 0, INT64_MAX, max_data_size_bytes),
    I64F("persistence.max_record_size_bytes", 16777216, 1024, INT64_C(1073741824),
         max_record_size_bytes),
    I64F("persistence.configuration_versions_retained", 100, 1, INT64_C(1000000000),
         configuration_versions_retained),
    I64F("persistence.agent_transitions_retained", 1000, 1, INT64_C(1000000000),
         agent_transitions_retained),
    BOOLF("persistence.enable_compression", 0, enable_compression),
    BOOLF("persistence.enable_encryption", 0, enable_encryption),

    GRP("distributed", 0),
    BOOLF("distributed.enabled", 0, distributed_enabled),
    GRP("distributed.node", 0),
    STR("distributed.node.node_id", ""),
    STR("distributed.node.name", ""),
    TYPED("distributed.node.address", K_LISTEN, "", F_EMPTY_OK),
    ENUM_("distributed.node.role", "Coordinator", roles_enum),
    INT_("distributed.node.weight", 1, 1, 1000),
    GRP("distributed.cluster", 0),
    STR("distributed.cluster.name", "rhema"),
    INT_("distributed.cluster.min_nodes", 1, 1, 1000),
    INT_("distributed.cluster.max_nodes", 16, 1, 1000),
    BOOL_("distributed.cluster.enable_failover", 1),
    INT_("distributed.cluster.heartbeat_interval_seconds", 2, 1, 3600),
    INT_("distributed.cluster.node_timeout_seconds", 10, 1, 86400),
    INT_("distributed.cluster.leader_lease_seconds", 10, 1, 3600),
    GRP("distributed.load_balancing", F_PLUGINS),
    TYPEDF("distributed.load_balancing.strategy", K_NAME, "round_robin", balancing_strategy),
    GRP("distributed.health_checking", 0),
    BOOL_("distributed.health_checking.enabled", 1),
    INT_("distributed.health_checking.interval_seconds", 10, 1, 86400),
    INT_("distributed.health_checking.timeout_seconds", 5, 1, 3600),
    INT_("distributed.health_checking.failure_threshold", 3, 1, 100),
    INT_("distributed.health_checking.success_threshold", 2, 1, 100),
    LIST("distributed.health_checking.allowed_targets", no_strings),
    INT_("distributed.health_checking.max_checks_per_service", 100, 1, 100000),
    INT_("distributed.health_checking.max_checks_total", 1000, 1, 1000000),

    GRP("advanced_features", 0),
    GRP("advanced_features.compression", F_PLUGINS),
    BOOLF("advanced_features.compression.enabled", 0, compression_enabled),
    TYPEDF("advanced_features.compression.algorithm", K_NAME, "zstd", compression_algorithm),
    INT_("advanced_features.compression.level", 3, -131072, 22),
    INT_("advanced_features.compression.threshold_bytes", 512, 0, I32MAX),
    BOOL_("advanced_features.compression.adaptive", 1),
    FLT("advanced_features.compression.min_gain_ratio", 0.1, 0.0, 1.0),
    /* at most 1 GiB, as a request body: a frame is decompressed into memory */
    INT_("advanced_features.compression.max_decompressed_bytes", 67108864, 1,
         INT64_C(1073741824)),
    GRP("advanced_features.encryption", F_PLUGINS),
    BOOLF("advanced_features.encryption.enabled", 0, encryption_enabled),
    TYPEDF("advanced_features.encryption.algorithm", K_NAME, "xchacha20poly1305",
           encryption_algorithm),
    GRP("advanced_features.key_management", 0),
    STR("advanced_features.key_management.key_file", ""),
    STR("advanced_features.key_management.passphrase_env", ""),
    STR("advanced_features.key_management.keyring_path", "keyring"),
    INT_("advanced_features.key_management.min_decryption_version", 1, 1, I32MAX),
    GRP("advanced_features.key_management.rotation", 0),
    BOOL_("advanced_features.key_management.rotation.enabled", 0),
    INT_("advanced_features.key_management.rotation.interval_hours", 720, 1, 87600),
    INT_("advanced_features.key_management.rotation.max_messages_per_key", 0, 0, INT64_MAX),
    GRP("advanced_features.key_management.backup", 0),
    BOOL_("advanced_features.key_management.backup.enabled", 0),
    STR("advanced_features.key_management.backup.directory", "backups/keys"),
    INT_("advanced_features.key_management.backup.interval_hours", 24, 1, 8760),
    INT_("advanced_features.key_management.backup.retention_count", 30, 0, 100000),
    INT_("advanced_features.key_management.backup.retention_days", 0, 0, 36500),
    GRP("advanced_features.performance_monitoring", 0),
    BOOL_("advanced_features.performance_monitoring.enabled", 1),
    INT_("advanced_features.performance_monitoring.sample_interval_seconds", 10, 1, 3600),
    GRP("advanced_features.performance_monitoring.thresholds", 0),
    FLT("advanced_features.performance_monitoring.thresholds.min_compression_ratio", 1.0, 0.0,
        HUGE_VAL),
    FLT("advanced_features.performance_monitoring.thresholds.max_encryption_overhead_ms", 5.0,
        0.0, HUGE_VAL),
    FLT("advanced_features.performance_monitoring.thresholds.max_key_rotation_ms", 1000.0, 0.0,
        HUGE_VAL),
    FLT("advanced_features.performance_monitoring.thresholds.max_message_processing_ms", 50.0,
        0.0, HUGE_VAL),

    GRP("ai_service", 0),
    BOOL_("ai_service.enabled", 0),
    STR("ai_service.default_model", ""),
    INT_("ai_service.request_timeout_seconds", 60, 1, 3600),
    INT_("ai_service.first_token_timeout_seconds", 30, 1, 3600),
    INT_("ai_service.stall_timeout_seconds", 30, 1, 3600),
    GLIST("ai_service.models"),
    STRQ("ai_service.models[].name", F_REQUIRED | F_UNIQUE),
    { .path = "ai_service.models[].upstream", .type = K_STRLIST, .values = no_strings,
      .flags = F_ONE_OK },
    STR("ai_service.models[].upstream_model", ""),
    LIST("ai_service.models[].fallbacks", no_strings),
    STR("ai_service.models[].strategy", ""),
    INT_("ai_service.models[].context_window", 0, 0, I32MAX),
    INT_("ai_service.models[].max_tokens", 0, 0, I32MAX),
    INT_("ai_service.models[].first_token_timeout_seconds", 0, 0, 3600),
    INT_("ai_service.models[].stall_timeout_seconds", 0, 0, 3600),
    INT_("ai_service.models[].requests_per_minute", -1, -1, 1000000),
    INT_("ai_service.models[].tokens_per_minute", -1, -1, I64LIM),
    INT_("ai_service.models[].tokens_per_day", -1, -1, I64LIM),
    GLIST("ai_service.upstreams"),
    STRQ("ai_service.upstreams[].name", F_REQUIRED | F_UNIQUE),
    TYPED("ai_service.upstreams[].base_url", K_URL, "", F_REQUIRED),
    STR("ai_service.upstreams[].api_key_env", ""),
    INT_("ai_service.upstreams[].timeout_seconds", 60, 1, 3600),
    INT_("ai_service.upstreams[].priority", 0, 0, 1000),
    INT_("ai_service.upstreams[].weight", 1, 1, 1000000),
    INT_("ai_service.upstreams[].max_concurrent", 0, 0, 1000000),
    LIST("ai_service.upstreams[].headers", no_strings),
    BOOL_("ai_service.enable_fallback", 1),
    GRP("ai_service.retries", 0),
    INT_("ai_service.retries.max_retries", 2, 0, 10),
    INT_("ai_service.retries.backoff_base_ms", 100, 1, 60000),
    INT_("ai_service.retries.backoff_max_ms", 5000, 1, 600000),
    INT_("ai_service.retries.budget_percent", 20, 0, 100),
    INT_("ai_service.retries.budget_reserve", 10, 0, 1000000),
    GRP("ai_service.circuit_breaker", 0),
    INT_("ai_service.circuit_breaker.failure_threshold", 5, 1, 1000),
    INT_("ai_service.circuit_breaker.open_seconds", 30, 1, 3600),
    GRP("ai_service.rate_limiting", 0),
    BOOL_("ai_service.rate_limiting.enabled", 0),
    INT_("ai_service.rate_limiting.requests_per_minute", 60, 0, 1000000),
    INT_("ai_service.rate_limiting.requests_per_hour", 0, 0, 100000000),
    INT_("ai_service.rate_limiting.requests_per_day", 0, 0, 1000000000),
    INT_("ai_service.rate_limiting.burst", 10, 0, 1000000),
    ENUM_("ai_service.rate_limiting.failure_mode", "open", failure_mode_enum),
    GLIST("ai_service.rate_limiting.roles"),
    STRQ("ai_service.rate_limiting.roles[].role", F_REQUIRED | F_UNIQUE),
    INT_("ai_service.rate_limiting.roles[].requests_per_minute", -1, -1, 1000000),
    INT_("ai_service.rate_limiting.roles[].requests_per_hour", -1, -1, 100000000),
    INT_("ai_service.rate_limiting.roles[].requests_per_day", -1, -1, 1000000000),
    INT_("ai_service.rate_limiting.roles[].burst", -1, -1, 1000000),
    GRP("ai_service.limits", 0),
    BOOL_("ai_service.limits.enabled", 0),
    INT_("ai_service.limits.requests_per_minute", 0, 0, 1000000),
    INT_("ai_service.limits.tokens_per_minute", 0, 0, I64LIM),
    INT_("ai_service.limits.tokens_per_day", 0, 0, I64LIM),
    INT_("ai_service.limits.usage_retention_days", 31, 1, 3660),
    GRP("ai_service.caching", 0),
    BOOL_("ai_service.caching.enabled", 0),
    INT_("ai_service.caching.ttl_seconds", 300, 1, 2592000),
    INT_("ai_service.caching.max_entries", 10000, 1, 100000000),
    INT_("ai_service.caching.max_size_bytes", 104857600, 4096, INT64_C(1099511627776)),
    INT_("ai_service.caching.max_entry_bytes", 4194304, 1024, INT64_C(1099511627776)),
    GRP("ai_service.agent_management", 0),
    INTF("ai_service.agent_management.max_concurrent_agents", 1000, 1, 1000000,
         max_concurrent_agents),
    INTF("ai_service.agent_management.agent_timeout_seconds", 60, 1, 86400, agent_timeout_seconds),
    /* the old names of the two above: cfg_aliases[] */
    INT_("ai_service.agent_management.max_agents", 1000, 1, 1000000),
    INT_("ai_service.agent_management.heartbeat_timeout_seconds", 60, 1, 86400),

    GRP("monitoring", 0),
    BOOL_("monitoring.enabled", 1),
    TYPED("monitoring.metrics_path", K_PATH, "/metrics", 0),
    INT_("monitoring.sample_interval_seconds", 10, 1, 3600),
    INT_("monitoring.metrics_interval_seconds", 10, 1, 3600), /* metrics/history.h */
    ENUM_("monitoring.storage_backend", "memory", history_backend_enum),
    INT_("monitoring.history_max_samples", 720, 2, 100000),
    INT_("monitoring.history_retention_seconds", 86400, 60, 31536000),
    GRP("monitoring.console", 0), /* api/api_console.h */
    BOOL_("monitoring.console.enabled", 1),
    STR("monitoring.console.directory", ""),
    GRP("monitoring.alerts", 0),
    BOOL_("monitoring.alerts.enabled", 0),
    FLT("monitoring.alerts.cpu_percent", 90.0, 0.0, 100.0),
    FLT("monitoring.alerts.memory_percent", 90.0, 0.0, 100.0),
    FLT("monitoring.alerts.error_rate_percent", 5.0, 0.0, 100.0),
    INT_("monitoring.alerts.builtin_for_seconds", 60, 0, 86400), /* core/metrics/alerts.c */
    INT_("monitoring.alerts.evaluation_interval_seconds", 15, 1, 3600), /* core/metrics/monitor.c */
    TYPED("monitoring.alerts.webhook_url", K_URL, "", F_EMPTY_OK),
    INT_("monitoring.alerts.webhook_timeout_seconds", 5, 1, 300),
    INT_("monitoring.alerts.webhook_max_retries", 5, 0, 100),
    INT_("monitoring.alerts.webhook_queue_size", 256, 1, 100000),
    GLIST("monitoring.alerts.rules"),
    STRQ("monitoring.alerts.rules[].name", F_REQUIRED | F_UNIQUE),
    STRQ("monitoring.alerts.rules[].metric", F_REQUIRED),
    ENUM_("monitoring.alerts.rules[].comparison", ">", cmp_enum),
    { .path = "monitoring.alerts.rules[].threshold", .type = K_FLOAT, .def_f = 0.0,
      .fmin = -HUGE_VAL, .fmax = HUGE_VAL, .flags = F_REQUIRED },
    INT_("monitoring.alerts.rules[].for_seconds", 0, 0, 86400),
    INT_("monitoring.alerts.rules[].keep_firing_for_seconds", 0, 0, 86400),
    ENUM_("monitoring.alerts.rules[].severity", "warning", severity_enum),
    ENUM_("monitoring.alerts.rules[].scope", "node", scope_enum),
    STR("monitoring.alerts.rules[].summary", ""),
    LIST("monitoring.alerts.rules[].labels", no_strings),
    INT_("monitoring.stats_refresh_seconds", 60, 1, 86400), /* core/metrics/monitor.c */

    GRP("security", 0),
    GRP("security.api_keys", 0),
    BOOL_("security.api_keys.enabled", 0),
    GLIST("security.api_keys.keys"),
    STRQ("security.api_keys.keys[].name", F_REQUIRED | F_UNIQUE),
    STRQ("security.api_keys.keys[].key_hash", F_REQUIRED),
    LIST("security.api_keys.keys[].roles", no_strings),
    STR("security.api_keys.keys[].expires_at", ""),
    LIST("security.api_keys.open_routes", no_strings),
    BOOL_("security.allow_unauthenticated_remote", 0),
    GLIST("security.client_certificates"), /* core/auth/certmap.c */
    STR("security.client_certificates[].subject", ""),
    STR("security.client_certificates[].san", ""),
    STR("security.client_certificates[].name", ""),
    LIST("security.client_certificates[].roles", no_strings),
    GLIST("security.roles"),
    STRQ("security.roles[].name", F_REQUIRED | F_UNIQUE),
    LIST("security.roles[].permissions", no_strings),
    GLIST("security.rules"),
    TYPED("security.rules[].path_prefix", K_PATH, "", F_REQUIRED),
    LIST("security.rules[].methods", no_strings),
    LIST("security.rules[].roles", no_strings),
    { .path = "security.rules[].action", .type = K_ENUM, .def_s = "", .values = action_enum,
      .flags = F_REQUIRED },
    GRP("security.audit", 0),
    BOOL_("security.audit.enabled", 0),
    STR("security.audit.file", "logs/audit.log"),
    STR("security.audit.hmac_key_file", ""),
    BOOL_("security.audit.fail_closed", 1),
    BOOL_("security.audit.fsync", 1),
    INT_("security.audit.batch_max_records", 1024, 1, 1000000),
    INT_("security.audit.batch_delay_ms", 0, 0, 1000),

    GRP("coordination", 0),
    BOOL_("coordination.change_feed", 1),
    INT_("coordination.event_retention_seconds", 3600, 1, 31536000),
    INT_("coordination.event_poll_ms", 50, 1, 60000),
    INT_("coordination.watch_buffer_bytes", 1048576, 1024, 1073741824),
    INT_("coordination.max_wait_seconds", 300, 1, 86400),
    INT_("coordination.inbox_visibility_timeout_seconds", 30, 1, 43200),

    GRP("logging", 0),
    { .path = "logging.level", .type = K_ENUM, .def_s = "info", .values = cfg_level_enum,
      .fld = FLD_LOGLEVEL, .off = OFF(log_level) },
    { .path = "logging.format", .type = K_ENUM, .def_s = "text", .values = format_enum,
      .fld = FLD_ENUMIDX, .off = OFF(log_format) },
    STRF("logging.file", "", log_file),
    BOOLF("logging.access_log", 1, access_log),
};

const size_t cfg_n_schema = sizeof cfg_schema / sizeof cfg_schema[0];

/*
 * Keys of the schema that this version parses and validates but does not act
 * on: their subsystems come with later issues.  Rather than accept a value the
 * daemon would ignore (security.api_keys.enabled = true and everyone is still
 * served), validation refuses one that would change behaviour if it acted:
 * anything but the key's default, except `false` for a switch (a feature
 * turned off is what this version does anyway).  A key with a `gate` is inert
 * while that switch is off, or itself refused: ai_service.models describes
 * upstreams that nothing uses unless ai_service.enabled.  The issue that
 * implements a subsystem removes its lines here.
 */

const struct unimplemented cfg_unimplemented[] = {
    { "monitoring.sample_interval_seconds", "monitoring.enabled" },
};
const size_t cfg_n_unimplemented = sizeof cfg_unimplemented / sizeof cfg_unimplemented[0];

/*
 * Keys renamed after a release: the old name stays accepted, read as the new
 * one (a notice at load says so); setting both is an error.  Both are in
 * cfg_schema[] with the same type and range.
 */
const struct cfg_alias cfg_aliases[] = {
    { "ai_service.agent_management.max_agents",
      "ai_service.agent_management.max_concurrent_agents" },
    { "ai_service.agent_management.heartbeat_timeout_seconds",
      "ai_service.agent_management.agent_timeout_seconds" },
};
const size_t cfg_n_aliases = sizeof cfg_aliases / sizeof cfg_aliases[0];

/* The old name of key `path` when it has one, else NULL. */
const char *cfg_alias_old(const char *path)
{
    for (size_t i = 0; i < cfg_n_aliases; i++)
        if (strcmp(cfg_aliases[i].path, path) == 0)
            return cfg_aliases[i].old;
    return NULL;
}

const struct key *cfg_schema_find(const char *path)
{
    for (size_t i = 0; i < cfg_n_schema; i++)
        if (strcmp(cfg_schema[i].path, path) == 0)
            return &cfg_schema[i];
    return NULL;
}

/* The section of each plugin kind (its plugin groups live inside). */
const char *cfg_kind_section(uint32_t kind)
{
    switch (kind) {
    case RHEMA_KIND_STORAGE: return "persistence";
    case RHEMA_KIND_COMPRESS: return "advanced_features.compression";
    case RHEMA_KIND_CIPHER: return "advanced_features.encryption";
    case RHEMA_KIND_BALANCER: return "distributed.load_balancing";
    default: return NULL;
    }
}
