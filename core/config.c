/*
 * config -- libconfig file -> struct rhema_config, with strict validation.
 *
 * One static table (`schema` below) describes every core key: its dotted
 * path, type, default, range or allowed values, and, for the keys the rest
 * of the core reads often, where it lands in struct rhema_config.  Loading
 * is three passes over one libconfig tree:
 *
 *   1. read the file (or start from an empty tree);
 *   2. apply the -o overrides and -P, typing each value by the schema and
 *      creating groups as needed, remembering which settings they made so
 *      that errors name "-o key=value" instead of a line number;
 *   3. walk the tree against the schema, collecting every problem, then
 *      copy the values (or defaults) into struct rhema_config.
 *
 * The tree is kept (in priv) after loading: plugin groups are read from it
 * later, and rhema_config_get_*() resolve any schema key against it.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <libconfig.h>

#include "config.h"
#include "rhema_paths.h" /* RHEMA_PLUGINDIR, RHEMA_DATA_DIRECTORY: made by make */
#include "targets.h"

/* ------------------------------------------------------------------------ */
/* The schema                                                               */

enum key_type {
    K_GROUP,     /* a group of keys */
    K_INT,       /* int or int64 (L suffix); range min..max */
    K_FLOAT,     /* float, or an int; range fmin..fmax */
    K_BOOL,      /* true | false */
    K_STRING,    /* any string */
    K_ENUM,      /* a string among `values` */
    K_LISTEN,    /* host:port or [v6]:port */
    K_NAME,      /* a plugin name: [a-z0-9_]{1,64} */
    K_URL,       /* http:// or https:// URL */
    K_PATH,      /* an URL path: begins with '/' */
    K_STRLIST,   /* a list or array of strings */
    K_GROUPLIST, /* a list of groups; element keys are "path[].key" */
};

/* Key flags. */
#define F_PLUGINS 0x01u  /* group: a member group that is not a core key is a plugin group */
#define F_REQUIRED 0x02u /* element of a list of groups: must be present */
#define F_UNIQUE 0x04u   /* element of a list of groups: unique across the list */
#define F_EMPTY_OK 0x08u /* K_LISTEN / K_URL: "" is allowed (not set) */

/* Where a value lands in struct rhema_config. */
enum field_kind {
    FLD_NONE = 0,
    FLD_INT,      /* int */
    FLD_I64,      /* int64_t */
    FLD_BOOL,     /* int 0/1 */
    FLD_STR,      /* char *, strdup'd */
    FLD_LIST,     /* struct rhema_strlist */
    FLD_LOGLEVEL, /* int RHEMA_LOG_* from a level name */
    FLD_ENUMIDX,  /* int (or enum): index of the value in `values` */
};

struct key {
    const char *path;
    enum key_type type;
    unsigned flags;
    int64_t def_i;
    double def_f;
    const char *def_s;
    const char *const *values; /* K_ENUM: allowed; K_STRLIST: default (NULL-terminated) */
    int64_t min, max;
    double fmin, fmax;
    enum field_kind fld;
    size_t off;
};

#define OFF(f) offsetof(struct rhema_config, f)
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
static const char *const level_enum[] = { "debug", "info", "notice", "warn", "error", NULL };
static const char *const format_enum[] = { "text", "json", NULL };
static const char *const no_strings[] = { NULL };
static const char *const action_enum[] = { "allow", "deny", NULL };
static const char *const no_origins[] = { NULL }; /* same origin only */
static const char *const cors_headers[] = { "Content-Type", "Authorization", "X-API-Key", "If-None-Match",
                                            "If-Match",     "X-Request-Id",  "X-Rhema-Epoch",
                                            NULL };

#define I32MAX INT64_C(2147483647)

static const struct key schema[] = {
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
    GLIST("ai_service.models"),
    STRQ("ai_service.models[].name", F_REQUIRED | F_UNIQUE),
    STR("ai_service.models[].upstream", ""),
    INT_("ai_service.models[].context_window", 0, 0, I32MAX),
    INT_("ai_service.models[].max_tokens", 0, 0, I32MAX),
    GLIST("ai_service.upstreams"),
    STRQ("ai_service.upstreams[].name", F_REQUIRED | F_UNIQUE),
    TYPED("ai_service.upstreams[].base_url", K_URL, "", F_REQUIRED),
    STR("ai_service.upstreams[].api_key_env", ""),
    INT_("ai_service.upstreams[].timeout_seconds", 60, 1, 3600),
    INT_("ai_service.upstreams[].priority", 0, 0, 1000),
    GRP("ai_service.rate_limiting", 0),
    BOOL_("ai_service.rate_limiting.enabled", 0),
    INT_("ai_service.rate_limiting.requests_per_minute", 60, 1, 1000000),
    INT_("ai_service.rate_limiting.burst", 10, 1, 1000000),
    GRP("ai_service.caching", 0),
    BOOL_("ai_service.caching.enabled", 0),
    INT_("ai_service.caching.ttl_seconds", 300, 1, 2592000),
    INT_("ai_service.caching.max_entries", 10000, 1, 100000000),
    GRP("ai_service.agent_management", 0),
    INT_("ai_service.agent_management.max_agents", 1000, 1, 1000000),
    INT_("ai_service.agent_management.heartbeat_timeout_seconds", 60, 1, 86400),

    GRP("monitoring", 0),
    BOOL_("monitoring.enabled", 1),
    TYPED("monitoring.metrics_path", K_PATH, "/metrics", 0),
    INT_("monitoring.sample_interval_seconds", 10, 1, 3600),
    GRP("monitoring.alerts", 0),
    BOOL_("monitoring.alerts.enabled", 0),
    FLT("monitoring.alerts.cpu_percent", 90.0, 0.0, 100.0),
    FLT("monitoring.alerts.memory_percent", 90.0, 0.0, 100.0),
    FLT("monitoring.alerts.error_rate_percent", 5.0, 0.0, 100.0),

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

    GRP("logging", 0),
    { .path = "logging.level", .type = K_ENUM, .def_s = "info", .values = level_enum,
      .fld = FLD_LOGLEVEL, .off = OFF(log_level) },
    { .path = "logging.format", .type = K_ENUM, .def_s = "text", .values = format_enum,
      .fld = FLD_ENUMIDX, .off = OFF(log_format) },
    STRF("logging.file", "", log_file),
    BOOLF("logging.access_log", 1, access_log),
};

#define N_SCHEMA (sizeof schema / sizeof schema[0])

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
struct unimplemented {
    const char *path;
    const char *gate; /* a switch; NULL: the key always acts */
};

static const struct unimplemented unimplemented[] = {
    { "ai_service.enabled", NULL },
    { "ai_service.default_model", "ai_service.enabled" },
    { "ai_service.request_timeout_seconds", "ai_service.enabled" },
    { "ai_service.models", "ai_service.enabled" },
    { "ai_service.upstreams", "ai_service.enabled" },
    { "ai_service.rate_limiting.enabled", NULL },
    { "ai_service.rate_limiting.requests_per_minute", "ai_service.rate_limiting.enabled" },
    { "ai_service.rate_limiting.burst", "ai_service.rate_limiting.enabled" },
    { "ai_service.caching.enabled", NULL },
    { "ai_service.caching.ttl_seconds", "ai_service.caching.enabled" },
    { "ai_service.caching.max_entries", "ai_service.caching.enabled" },
    { "ai_service.agent_management.max_agents", NULL },
    { "monitoring.enabled", NULL },
    { "monitoring.metrics_path", "monitoring.enabled" },
    { "monitoring.sample_interval_seconds", "monitoring.enabled" },
    { "monitoring.alerts.enabled", NULL },
    { "monitoring.alerts.cpu_percent", "monitoring.alerts.enabled" },
    { "monitoring.alerts.memory_percent", "monitoring.alerts.enabled" },
    { "monitoring.alerts.error_rate_percent", "monitoring.alerts.enabled" },
};

static const struct key *schema_find(const char *path)
{
    for (size_t i = 0; i < N_SCHEMA; i++)
        if (strcmp(schema[i].path, path) == 0)
            return &schema[i];
    return NULL;
}

/* The section of each plugin kind (its plugin groups live inside). */
static const char *kind_section(uint32_t kind)
{
    switch (kind) {
    case RHEMA_KIND_STORAGE: return "persistence";
    case RHEMA_KIND_COMPRESS: return "advanced_features.compression";
    case RHEMA_KIND_CIPHER: return "advanced_features.encryption";
    case RHEMA_KIND_BALANCER: return "distributed.load_balancing";
    default: return NULL;
    }
}

/* ------------------------------------------------------------------------ */
/* Private state                                                            */

/* A setting made by an override: errors about it name the override. */
struct origin {
    const config_setting_t *s;
    char *text; /* "-o service.workers=900" or "-P /dir" */
};

/* A file's text, split into lines, for the 32-bit truncation check. */
struct file_text {
    char *name;
    char *text;
    struct file_text *next;
};

struct cfg_priv {
    config_t lc;
    char *path; /* "" when none */
    struct origin *origins;
    size_t n_origins;
    struct file_text *files;
    struct rhema_cfg *groups;
};

/* A plugin's group (see config.h). */
struct rhema_cfg {
    struct cfg_priv *p;
    const config_setting_t *g;
    uint32_t kind;
    char *path;          /* "persistence.sqlite" */
    char *name;          /* "sqlite" */
    unsigned char *read; /* one mark per member */
    unsigned n;
    char *error;         /* the last getter error, or NULL */
    char where[512];     /* rhema_cfg_where()'s buffer */
    struct rhema_cfg *next;
};

/* A growing string of error lines. */
struct sbuf {
    char *s;
    size_t len, cap;
    int oom;
};

static void sb_vadd(struct sbuf *b, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
static void sb_vadd(struct sbuf *b, const char *fmt, va_list ap)
{
    va_list aq;
    int n;

    if (b->oom)
        return;
    va_copy(aq, ap);
    n = vsnprintf(NULL, 0, fmt, aq);
    va_end(aq);
    if (n < 0) {
        b->oom = 1;
        return;
    }
    if (b->len + (size_t)n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        char *s;

        while (cap < b->len + (size_t)n + 1)
            cap *= 2;
        s = realloc(b->s, cap);
        if (!s) {
            b->oom = 1;
            return;
        }
        b->s = s;
        b->cap = cap;
    }
    vsnprintf(b->s + b->len, b->cap - b->len, fmt, ap);
    b->len += (size_t)n;
}

static void sb_add(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_add(struct sbuf *b, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    sb_vadd(b, fmt, ap);
    va_end(ap);
}

/* The loader's state: the tree and the error lines found so far. */
struct ctx {
    struct cfg_priv *p;
    struct sbuf errs;
    int n_errs;
};

static const struct origin *origin_of(const struct cfg_priv *p, const config_setting_t *s)
{
    for (size_t i = 0; i < p->n_origins; i++)
        if (p->origins[i].s == s)
            return &p->origins[i];
    return NULL;
}

/* "file:line" of a setting, or the override that made it, into buf. */
static void where_of(const struct cfg_priv *p, const config_setting_t *s, char *buf, size_t n)
{
    for (const config_setting_t *t = s; t; t = config_setting_parent(t)) {
        const struct origin *o = origin_of(p, t);

        if (o) {
            snprintf(buf, n, "%s", o->text);
            return;
        }
        if (config_setting_source_line(t) > 0) {
            const char *f = config_setting_source_file(t);

            snprintf(buf, n, "%s:%u", f ? f : p->path, (unsigned)config_setting_source_line(t));
            return;
        }
    }
    snprintf(buf, n, "%s", p->path[0] ? p->path : "(config)");
}

static void error_at(struct ctx *c, const config_setting_t *s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void error_at(struct ctx *c, const config_setting_t *s, const char *fmt, ...)
{
    char where[512];
    va_list ap;

    where_of(c->p, s, where, sizeof where);
    sb_add(&c->errs, "%s%s: ", c->n_errs ? "\n" : "", where);
    va_start(ap, fmt);
    sb_vadd(&c->errs, fmt, ap);
    va_end(ap);
    c->n_errs++;
}

static void error_plain(struct ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void error_plain(struct ctx *c, const char *fmt, ...)
{
    va_list ap;

    if (c->n_errs)
        sb_add(&c->errs, "\n");
    va_start(ap, fmt);
    sb_vadd(&c->errs, fmt, ap);
    va_end(ap);
    c->n_errs++;
}

/* ------------------------------------------------------------------------ */
/* Small parsers                                                            */

static int parse_int(const char *v, long long *out)
{
    const char *d = v;
    char *end;
    int base = 10;

    if (*d == '-' || *d == '+')
        d++;
    if (d[0] == '0' && (d[1] == 'x' || d[1] == 'X'))
        base = 16;
    if (!isdigit((unsigned char)*d))
        return -1;
    errno = 0;
    *out = strtoll(v, &end, base);
    if (errno)
        return -1;
    if (*end == 'L' || *end == 'l')
        end++;
    return *end ? -1 : 0;
}

static int parse_double(const char *v, double *out)
{
    char *end;

    if (!*v || isspace((unsigned char)*v))
        return -1;
    errno = 0;
    *out = strtod(v, &end);
    if (errno || *end || !isfinite(*out))
        return -1;
    return 0;
}

static int parse_bool(const char *v, int *out)
{
    static const char *const t[] = { "true", "yes", "on", "1" };
    static const char *const f[] = { "false", "no", "off", "0" };

    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(v, t[i]) == 0)
            return *out = 1, 0;
        if (strcasecmp(v, f[i]) == 0)
            return *out = 0, 0;
    }
    return -1;
}

static int valid_port(const char *s)
{
    long v = 0;

    if (!*s || strlen(s) > 5)
        return 0;
    for (const char *q = s; *q; q++) {
        if (!isdigit((unsigned char)*q))
            return 0;
        v = v * 10 + (*q - '0');
    }
    return v >= 1 && v <= 65535;
}

/* host:port, [v6]:port; host is an IPv4 address or a DNS name. */
static int valid_listen(const char *s)
{
    char host[256];
    const char *colon;
    size_t n;

    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        struct in6_addr a6;

        if (!close || close[1] != ':')
            return 0;
        n = (size_t)(close - s - 1);
        if (n == 0 || n >= sizeof host)
            return 0;
        memcpy(host, s + 1, n);
        host[n] = '\0';
        return inet_pton(AF_INET6, host, &a6) == 1 && valid_port(close + 2);
    }
    colon = strrchr(s, ':');
    if (!colon || colon == s || strchr(s, ':') != colon)
        return 0;
    n = (size_t)(colon - s);
    if (n >= sizeof host)
        return 0;
    memcpy(host, s, n);
    host[n] = '\0';
    if (strspn(host, "0123456789.") == n) {
        struct in_addr a4;

        if (inet_pton(AF_INET, host, &a4) != 1)
            return 0;
    } else {
        for (size_t i = 0; i < n; i++)
            if (!isalnum((unsigned char)host[i]) && host[i] != '.' && host[i] != '-' &&
                host[i] != '_')
                return 0;
    }
    return valid_port(colon + 1);
}

static int valid_name(const char *s)
{
    size_t n = strlen(s);

    return n >= 1 && n <= 64 && strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789_") == n;
}

static int valid_url(const char *s)
{
    const char *rest;

    if (strncmp(s, "http://", 7) == 0)
        rest = s + 7;
    else if (strncmp(s, "https://", 8) == 0)
        rest = s + 8;
    else
        return 0;
    return *rest && *rest != '/' && !strpbrk(rest, " \t\r\n");
}

/* Copy `name` into `buf` with "a.b" joined, or just "b" at the root. */
static void join(char *buf, size_t n, const char *prefix, const char *name)
{
    if (prefix[0])
        snprintf(buf, n, "%s.%s", prefix, name);
    else
        snprintf(buf, n, "%s", name);
}

/* ------------------------------------------------------------------------ */
/* libconfig 1.5 stores an integer literal beyond 32 bits without the L      */
/* suffix truncated, silently.  Read the literal back from the file to catch */
/* it, instead of running with 1410065408 for 10000000000.                   */

static const char *file_text_of(struct cfg_priv *p, const char *name)
{
    struct file_text *f;
    FILE *fp;
    char *text = NULL;
    size_t len = 0, cap = 0, got;

    for (f = p->files; f; f = f->next)
        if (strcmp(f->name, name) == 0)
            return f->text;
    fp = fopen(name, "r");
    if (!fp)
        return NULL;
    for (;;) {
        if (cap - len < 4096) {
            char *t = realloc(text, cap + 8192);

            if (!t)
                goto fail;
            text = t;
            cap += 8192;
        }
        got = fread(text + len, 1, cap - len - 1, fp);
        len += got;
        if (got == 0)
            break;
    }
    text[len] = '\0';
    f = calloc(1, sizeof *f);
    if (!f)
        goto fail;
    f->name = strdup(name);
    if (!f->name) {
        free(f);
        goto fail;
    }
    f->text = text;
    f->next = p->files;
    p->files = f;
    fclose(fp);
    return text;
fail:
    free(text);
    fclose(fp);
    return NULL;
}

/*
 * When no literal assigned to `s`'s name on its line equals its stored
 * value, copy the first literal into lit and return 1.  (Every match on the
 * line is tried: "x = 1; g = { x = 2; };" holds two x.)
 */
static int int_truncated(struct cfg_priv *p, const config_setting_t *s, char *lit, size_t n)
{
    const char *text, *line, *eol, *q;
    unsigned lineno = config_setting_source_line(s);
    size_t namelen;
    int differs = 0;

    if (config_setting_type(s) != CONFIG_TYPE_INT || !lineno || !config_setting_name(s) ||
        !config_setting_source_file(s))
        return 0;
    text = file_text_of(p, config_setting_source_file(s));
    if (!text)
        return 0;
    for (line = text; lineno > 1 && line; lineno--) {
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    if (!line)
        return 0;
    eol = strchr(line, '\n');
    namelen = strlen(config_setting_name(s));
    for (q = line; (q = strstr(q, config_setting_name(s))) != NULL; q += namelen) {
        const char *v = q + namelen;
        char num[64];
        size_t k = 0;
        long long parsed;

        if (eol && q >= eol)
            break;
        if (q > line && (isalnum((unsigned char)q[-1]) || q[-1] == '_' || q[-1] == '-'))
            continue;
        while (*v == ' ' || *v == '\t')
            v++;
        if (*v != '=' && *v != ':')
            continue;
        v++;
        while (*v == ' ' || *v == '\t')
            v++;
        while (k + 1 < sizeof num && v[k] && (isxdigit((unsigned char)v[k]) || strchr("+-xX", v[k])))
            k++;
        memcpy(num, v, k);
        num[k] = '\0';
        if (parse_int(num, &parsed) == 0 && parsed == config_setting_get_int(s))
            return 0;
        if (!differs)
            snprintf(lit, n, "%s", num);
        differs = 1;
    }
    return differs;
}

/* ------------------------------------------------------------------------ */
/* Validation                                                               */

static const char *type_word(enum key_type t)
{
    switch (t) {
    case K_GROUP: return "a group";
    case K_INT: return "an integer";
    case K_FLOAT: return "a number";
    case K_BOOL: return "a boolean (true or false)";
    case K_STRLIST: return "a list of strings";
    case K_GROUPLIST: return "a list of groups";
    default: return "a string";
    }
}

static void validate_group(struct ctx *c, const config_setting_t *g, const char *spath,
                           const char *dpath, unsigned flags);

static void validate_strlist(struct ctx *c, const config_setting_t *s, const char *dpath)
{
    int n = config_setting_length(s);

    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);

        if (config_setting_type(e) != CONFIG_TYPE_STRING)
            error_at(c, e, "'%s[%d]' must be a string", dpath, i);
    }
}

static void validate_grouplist(struct ctx *c, const config_setting_t *s, const char *spath,
                               const char *dpath)
{
    char espath[256], edpath[256], kpath[256];
    int n = config_setting_length(s);

    snprintf(espath, sizeof espath, "%s[]", spath);
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);

        snprintf(edpath, sizeof edpath, "%s[%d]", dpath, i);
        if (!config_setting_is_group(e)) {
            error_at(c, e, "'%s' must be a group", edpath);
            continue;
        }
        validate_group(c, e, espath, edpath, 0);
        /* required and unique element keys */
        for (size_t k = 0; k < N_SCHEMA; k++) {
            const struct key *key = &schema[k];
            size_t plen = strlen(espath);
            const char *kname;
            const config_setting_t *m;

            if (strncmp(key->path, espath, plen) != 0 || key->path[plen] != '.')
                continue;
            kname = key->path + plen + 1;
            if (strchr(kname, '.') || strchr(kname, '['))
                continue;
            m = config_setting_get_member(e, kname);
            if (!m) {
                if (key->flags & F_REQUIRED)
                    error_at(c, e, "'%s' needs '%s'", edpath, kname);
                continue;
            }
            if (!(key->flags & F_UNIQUE) || config_setting_type(m) != CONFIG_TYPE_STRING)
                continue;
            for (int j = 0; j < i; j++) {
                const config_setting_t *o = config_setting_get_elem(s, (unsigned)j);
                const config_setting_t *om =
                    config_setting_is_group(o) ? config_setting_get_member(o, kname) : NULL;

                if (om && config_setting_type(om) == CONFIG_TYPE_STRING &&
                    strcmp(config_setting_get_string(om), config_setting_get_string(m)) == 0) {
                    join(kpath, sizeof kpath, edpath, kname);
                    error_at(c, m, "'%s' repeats '%s' of %s[%d]", kpath,
                             config_setting_get_string(m), dpath, j);
                    break;
                }
            }
        }
    }
}

static void validate_value(struct ctx *c, const struct key *k, const config_setting_t *s,
                           const char *dpath)
{
    int t = config_setting_type(s);
    const char *str;
    char lit[64];

    switch (k->type) {
    case K_GROUP:
        if (t != CONFIG_TYPE_GROUP)
            goto wrong_type;
        validate_group(c, s, k->path, dpath, k->flags);
        return;
    case K_INT: {
        long long v;

        if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64)
            goto wrong_type;
        if (int_truncated(c->p, s, lit, sizeof lit)) {
            error_at(c, s, "'%s' does not fit in 32 bits; write %sL for a 64-bit integer", dpath,
                     lit);
            return;
        }
        v = config_setting_get_int64(s);
        if (t == CONFIG_TYPE_INT)
            v = config_setting_get_int(s);
        if (v < k->min || v > k->max) {
            if (k->max == INT64_MAX)
                error_at(c, s, "'%s' must be at least %lld (got %lld)", dpath, (long long)k->min,
                         v);
            else
                error_at(c, s, "'%s' must be between %lld and %lld (got %lld)", dpath,
                         (long long)k->min, (long long)k->max, v);
        }
        return;
    }
    case K_FLOAT: {
        double v;

        if (t == CONFIG_TYPE_FLOAT)
            v = config_setting_get_float(s);
        else if (t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64)
            v = (double)config_setting_get_int64(s);
        else
            goto wrong_type;
        if (!(v >= k->fmin && v <= k->fmax)) {
            if (isinf(k->fmax))
                error_at(c, s, "'%s' must be at least %g (got %g)", dpath, k->fmin, v);
            else
                error_at(c, s, "'%s' must be between %g and %g (got %g)", dpath, k->fmin,
                         k->fmax, v);
        }
        return;
    }
    case K_BOOL:
        if (t != CONFIG_TYPE_BOOL)
            goto wrong_type;
        return;
    case K_STRLIST:
        if (t != CONFIG_TYPE_ARRAY && t != CONFIG_TYPE_LIST)
            goto wrong_type;
        validate_strlist(c, s, dpath);
        return;
    case K_GROUPLIST:
        /* `[]` parses as an empty array: accept it as an empty list */
        if (t == CONFIG_TYPE_ARRAY && config_setting_length(s) == 0)
            return;
        if (t != CONFIG_TYPE_LIST)
            goto wrong_type;
        validate_grouplist(c, s, k->path, dpath);
        return;
    default:
        break;
    }
    /* the string kinds */
    if (t != CONFIG_TYPE_STRING)
        goto wrong_type;
    str = config_setting_get_string(s);
    switch (k->type) {
    case K_ENUM: {
        int found = 0;

        for (const char *const *v = k->values; *v; v++)
            found |= strcmp(*v, str) == 0;
        if (!found) {
            char list[256] = "";
            size_t len = 0;

            for (const char *const *v = k->values; *v && len < sizeof list; v++)
                len += (size_t)snprintf(list + len, sizeof list - len, "%s%s",
                                        v == k->values ? "" : ", ", *v);
            error_at(c, s, "'%s' must be one of %s (got '%s')", dpath, list, str);
        }
        break;
    }
    case K_LISTEN:
        if (!(str[0] == '\0' && (k->flags & F_EMPTY_OK)) && !valid_listen(str))
            error_at(c, s,
                     "'%s' must be host:port or [ipv6]:port with a port in 1..65535 (got '%s')",
                     dpath, str);
        break;
    case K_NAME:
        if (!valid_name(str))
            error_at(c, s, "'%s' must be a plugin name of 1-64 characters [a-z0-9_] (got '%s')",
                     dpath, str);
        break;
    case K_URL:
        if (!(str[0] == '\0' && (k->flags & F_EMPTY_OK)) && !valid_url(str))
            error_at(c, s, "'%s' must be an http:// or https:// URL (got '%s')", dpath, str);
        break;
    case K_PATH:
        if (str[0] != '/')
            error_at(c, s, "'%s' must begin with '/' (got '%s')", dpath, str);
        break;
    default:
        break;
    }
    return;
wrong_type:
    error_at(c, s, "'%s' must be %s", dpath, type_word(k->type));
}

/*
 * Check every member of group g.  spath is the group's schema path (list
 * indexes written "[]"), dpath the path shown in messages ("[2]").
 */
static void validate_group(struct ctx *c, const config_setting_t *g, const char *spath,
                           const char *dpath, unsigned flags)
{
    char mspath[256], mdpath[256];
    int n = config_setting_length(g);

    for (int i = 0; i < n; i++) {
        const config_setting_t *m = config_setting_get_elem(g, (unsigned)i);
        const struct key *k;

        join(mspath, sizeof mspath, spath, config_setting_name(m));
        join(mdpath, sizeof mdpath, dpath, config_setting_name(m));
        k = schema_find(mspath);
        if (k)
            validate_value(c, k, m, mdpath);
        else if (!((flags & F_PLUGINS) && config_setting_is_group(m)))
            error_at(c, m, "unknown key '%s'", mdpath);
    }
}


/* ------------------------------------------------------------------------ */
/* Resolving a path against the schema and the tree                         */

/* The setting at plain dotted path (no list indexes), or NULL. */
static const config_setting_t *lookup_path(const struct cfg_priv *p, const char *path)
{
    const config_setting_t *cur;
    char name[128];

    if (!p)
        return NULL;
    cur = config_root_setting(&p->lc);
    while (cur && *path) {
        size_t n = strcspn(path, ".");

        if (n == 0 || n >= sizeof name || !config_setting_is_group(cur))
            return NULL;
        memcpy(name, path, n);
        name[n] = '\0';
        cur = config_setting_get_member(cur, name);
        path += n;
        if (*path == '.')
            path++;
    }
    return cur;
}

struct resolved {
    const struct key *k;       /* the key; for a string list element, the list */
    const config_setting_t *s; /* the setting, or NULL: the default applies */
    int elem;                  /* >= 0: element `elem` of the string list k */
};

/*
 * Resolve "a.b", "a.list[2]" or "a.groups[1].key" to its schema key and its
 * setting.  Returns RHEMA_ENOTFOUND when the path names no schema key or a
 * list element that does not exist.
 */
static int resolve(const struct cfg_priv *p, const char *path, struct resolved *r)
{
    char spath[256], name[128];
    size_t sl = 0;
    const config_setting_t *cur = p ? config_root_setting(&p->lc) : NULL;
    const config_setting_t *base = NULL;
    const char *q = path;
    int failed_before = 0, last_failed = 0, last_idx = -1;

    spath[0] = '\0';
    while (*q) {
        size_t n = strcspn(q, ".[");

        if (n == 0 || n >= sizeof name || sl + n + 2 >= sizeof spath)
            return RHEMA_ENOTFOUND;
        memcpy(name, q, n);
        name[n] = '\0';
        if (sl)
            spath[sl++] = '.';
        memcpy(spath + sl, name, n + 1);
        sl += n;
        cur = (cur && config_setting_is_group(cur)) ? config_setting_get_member(cur, name) : NULL;
        q += n;
        failed_before |= last_failed;
        last_failed = 0;
        last_idx = -1;
        while (*q == '[') {
            char *end;
            long idx = strtol(q + 1, &end, 10);

            if (end == q + 1 || *end != ']' || idx < 0 || idx > INT_MAX ||
                sl + 3 >= sizeof spath)
                return RHEMA_ENOTFOUND;
            q = end + 1;
            memcpy(spath + sl, "[]", 3);
            sl += 2;
            failed_before |= last_failed;
            base = cur;
            if (cur && (config_setting_is_list(cur) || config_setting_is_array(cur)) &&
                idx < config_setting_length(cur)) {
                cur = config_setting_get_elem(cur, (unsigned)idx);
                last_failed = 0;
            } else {
                cur = NULL;
                last_failed = 1;
            }
            last_idx = (int)idx;
        }
        if (*q == '.' && !*++q)
            return RHEMA_ENOTFOUND;
    }
    r->elem = -1;
    r->s = cur;
    r->k = schema_find(spath);
    if (!r->k && last_idx >= 0) {
        /* an element of a string list: "a.list[2]" */
        spath[sl - 2] = '\0';
        r->k = schema_find(spath);
        if (!r->k || r->k->type != K_STRLIST || failed_before)
            return RHEMA_ENOTFOUND;
        if (last_failed && base) /* the list is there; the element is not */
            return RHEMA_ENOTFOUND;
        if (!cur) {
            for (int i = 0; i <= last_idx; i++)
                if (!r->k->values[i])
                    return RHEMA_ENOTFOUND;
        }
        r->elem = last_idx;
        return 0;
    }
    if (!r->k || failed_before || last_failed)
        return RHEMA_ENOTFOUND;
    return 0;
}

static int64_t setting_int(const config_setting_t *s)
{
    if (config_setting_type(s) == CONFIG_TYPE_BOOL)
        return config_setting_get_bool(s);
    if (config_setting_type(s) == CONFIG_TYPE_INT64)
        return config_setting_get_int64(s);
    return config_setting_get_int(s);
}

static double setting_double(const config_setting_t *s)
{
    if (config_setting_type(s) == CONFIG_TYPE_FLOAT)
        return config_setting_get_float(s);
    return (double)setting_int(s);
}

/* The value of a validated key: its setting, or its default. */
static int64_t key_int(const struct key *k, const config_setting_t *s)
{
    return s ? setting_int(s) : k->def_i;
}

static const char *key_string(const struct key *k, const config_setting_t *s)
{
    return s ? config_setting_get_string(s) : k->def_s;
}

/* ------------------------------------------------------------------------ */
/* Checks between keys                                                      */

/* An integer key's value and setting, when it has the right type. */
static int int_of(const struct cfg_priv *p, const char *path, int64_t *v,
                  const config_setting_t **s)
{
    const struct key *k = schema_find(path);

    *s = lookup_path(p, path);
    if (*s && config_setting_type(*s) != CONFIG_TYPE_INT &&
        config_setting_type(*s) != CONFIG_TYPE_INT64)
        return -1;
    *v = key_int(k, *s);
    return 0;
}

/* Require lo_path < hi_path (or <= when or_equal); report at whichever is set. */
static void check_order(struct ctx *c, const char *lo_path, const char *hi_path, int or_equal)
{
    const config_setting_t *ls, *hs;
    int64_t lo, hi;

    if (int_of(c->p, lo_path, &lo, &ls) || int_of(c->p, hi_path, &hi, &hs))
        return;
    if (lo < hi || (or_equal && lo == hi))
        return;
    error_at(c, hs ? hs : ls, "'%s' (%lld) must be %s '%s' (%lld)", lo_path, (long long)lo,
             or_equal ? "at most" : "less than", hi_path, (long long)hi);
}

/* Is there an element of list `list` whose `key` is the string `want`? */
static int list_has(const config_setting_t *list, const char *key, const char *want)
{
    int n = list && config_setting_is_list(list) ? config_setting_length(list) : 0;

    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(list, (unsigned)i);
        const char *v;

        if (config_setting_is_group(e) && config_setting_lookup_string(e, key, &v) &&
            strcmp(v, want) == 0)
            return 1;
    }
    return 0;
}

/* Every string of list `path` is a rule of targets.h. */
static void validate_targets(struct ctx *c, const char *path)
{
    const config_setting_t *l = lookup_path(c->p, path);
    int n = l && (config_setting_is_list(l) || config_setting_is_array(l)) ? config_setting_length(l)
                                                                           : 0;

    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(l, (unsigned)i);
        struct rhema_target_rule r;
        char err[RHEMA_ERRMSG_MAX];

        if (config_setting_type(e) == CONFIG_TYPE_STRING &&
            rhema_target_rule_parse(config_setting_get_string(e), &r, err) != 0)
            error_at(c, e, "'%s[%d]': %s", path, i, err);
    }
}

static void validate_cross(struct ctx *c)
{
    const config_setting_t *models = lookup_path(c->p, "ai_service.models");
    const config_setting_t *ups = lookup_path(c->p, "ai_service.upstreams");
    const config_setting_t *dm = lookup_path(c->p, "ai_service.default_model");
    int n;

    check_order(c, "distributed.cluster.min_nodes", "distributed.cluster.max_nodes", 1);
    check_order(c, "distributed.cluster.heartbeat_interval_seconds",
                "distributed.cluster.node_timeout_seconds", 0);
    check_order(c, "distributed.health_checking.timeout_seconds",
                "distributed.health_checking.interval_seconds", 1);
    validate_targets(c, "distributed.health_checking.allowed_targets");

    n = models && config_setting_is_list(models) ? config_setting_length(models) : 0;
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(models, (unsigned)i);
        const config_setting_t *u = config_setting_is_group(e)
                                        ? config_setting_get_member(e, "upstream")
                                        : NULL;

        if (u && config_setting_type(u) == CONFIG_TYPE_STRING &&
            config_setting_get_string(u)[0] && !list_has(ups, "name", config_setting_get_string(u)))
            error_at(c, u, "'ai_service.models[%d].upstream' names no upstream in "
                     "ai_service.upstreams (got '%s')", i, config_setting_get_string(u));
    }
    if (dm && config_setting_type(dm) == CONFIG_TYPE_STRING && config_setting_get_string(dm)[0] &&
        !list_has(models, "name", config_setting_get_string(dm)))
        error_at(c, dm, "'ai_service.default_model' names no model in ai_service.models (got '%s')",
                 config_setting_get_string(dm));
}

/* ------------------------------------------------------------------------ */
/* Settings this version does not act on                                    */

/* Does validated setting s hold key k's default? */
static int key_at_default(const struct key *k, const config_setting_t *s)
{
    switch (k->type) {
    case K_INT:
    case K_BOOL: return setting_int(s) == k->def_i;
    case K_FLOAT: return setting_double(s) == k->def_f;
    case K_STRLIST: {
        int n = config_setting_length(s);

        for (int i = 0; i < n; i++)
            if (!k->values[i] || strcmp(config_setting_get_string_elem(s, i), k->values[i]) != 0)
                return 0;
        return k->values[n] == NULL;
    }
    case K_GROUPLIST: return config_setting_length(s) == 0;
    case K_GROUP: return 1;
    default: return strcmp(config_setting_get_string(s), k->def_s) == 0;
    }
}

/* Is switch `path` on, and accepted (at its default)?  Otherwise what it gates is inert. */
static int gate_on(const struct cfg_priv *p, const char *path)
{
    const struct key *k = schema_find(path);
    const config_setting_t *s = lookup_path(p, path);

    if (!k || k->type != K_BOOL)
        abort(); /* a broken unimplemented[] table */
    return k->def_i && key_int(k, s);
}

/*
 * Refuse the unimplemented[] keys set to a value that would change behaviour.
 * Runs on a tree that passed every other check, so the types are right.
 */
static void validate_unimplemented(struct ctx *c)
{
    for (size_t i = 0; i < sizeof unimplemented / sizeof unimplemented[0]; i++) {
        const struct unimplemented *u = &unimplemented[i];
        const struct key *k = schema_find(u->path);
        const config_setting_t *s = lookup_path(c->p, u->path);

        if (!k)
            abort(); /* a broken unimplemented[] table */
        if (!s || key_at_default(k, s))
            continue;
        if (k->type == K_BOOL && !config_setting_get_bool(s))
            continue; /* switched off: what this version does */
        if (u->gate && !gate_on(c->p, u->gate))
            continue;
        error_at(c, s, "%s: not implemented in this version", u->path);
    }
}

/* ------------------------------------------------------------------------ */
/* Overrides                                                                */

static int origin_add(struct cfg_priv *p, const config_setting_t *s, const char *text)
{
    struct origin *o;
    char *t = strdup(text);

    if (!t)
        return RHEMA_ENOMEM;
    o = realloc(p->origins, (p->n_origins + 1) * sizeof *o);
    if (!o) {
        free(t);
        return RHEMA_ENOMEM;
    }
    p->origins = o;
    o[p->n_origins].s = s;
    o[p->n_origins].text = t;
    p->n_origins++;
    return 0;
}

/* Forget the origins of s and of everything under it, before s is removed. */
static void origin_forget(struct cfg_priv *p, const config_setting_t *s)
{
    for (size_t i = 0; i < p->n_origins;) {
        const config_setting_t *t = p->origins[i].s;

        while (t && t != s)
            t = config_setting_parent(t);
        if (t) {
            free(p->origins[i].text);
            p->n_origins--;
            if (i < p->n_origins)
                p->origins[i] = p->origins[p->n_origins];
            p->origins[p->n_origins].text = NULL;
        } else {
            i++;
        }
    }
}

/* Trim spaces in place, and one pair of surrounding double quotes when *quoted. */
static char *trim(char *s, int *quoted)
{
    size_t n;

    while (isspace((unsigned char)*s))
        s++;
    n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    if (quoted) {
        *quoted = n >= 2 && s[0] == '"' && s[n - 1] == '"';
        if (*quoted) {
            s[n - 1] = '\0';
            s++;
        }
    }
    return s;
}

static config_setting_t *add_int(config_setting_t *parent, const char *name, long long v)
{
    config_setting_t *s;

    if (v >= INT_MIN && v <= INT_MAX) {
        s = config_setting_add(parent, name, CONFIG_TYPE_INT);
        if (s && !config_setting_set_int(s, (int)v))
            s = NULL;
    } else {
        s = config_setting_add(parent, name, CONFIG_TYPE_INT64);
        if (s && !config_setting_set_int64(s, v))
            s = NULL;
    }
    return s;
}

static config_setting_t *add_string(config_setting_t *parent, const char *name, const char *v)
{
    config_setting_t *s = config_setting_add(parent, name, CONFIG_TYPE_STRING);

    if (s && !config_setting_set_string(s, v))
        s = NULL;
    return s;
}

/*
 * "[a, b]" or "a,b" -> an array of strings; "" or "[]" -> an empty one.
 * A bracket that is not closed ("[" alone, "[a,b"), a bracket or a quote
 * inside an item, and an empty item ("a,,b") are refused: *bad is set.
 */
static config_setting_t *add_strlist(config_setting_t *parent, const char *name, char *v,
                                     int *bad)
{
    config_setting_t *s;
    size_t n;
    char *item, *tok;

    v = trim(v, NULL);
    n = strlen(v);
    if (n && (v[0] == '[') != (v[n - 1] == ']'))
        goto bad; /* "[" alone counts as an open bracket, never as a closed one */
    if (n >= 2 && v[0] == '[') {
        v[n - 1] = '\0';
        v++;
    }
    v = trim(v, NULL);
    /* check every item before anything is added */
    for (const char *q = v; *v; q++) {
        const char *end = q + strcspn(q, ",");
        size_t len = (size_t)(end - q), lead = 0;
        while (lead < len && isspace((unsigned char)q[lead]))
            lead++;
        while (len > lead && isspace((unsigned char)q[len - 1]))
            len--;
        if (len == lead)
            goto bad;
        for (size_t i = lead; i < len; i++) {
            int inner = i > lead && i < len - 1;
            if (q[i] == '[' || q[i] == ']' || (q[i] == '"' && inner))
                goto bad;
        }
        if ((q[lead] == '"') != (len - lead >= 2 && q[len - 1] == '"'))
            goto bad;
        if (!*end)
            break;
        q = end;
    }
    s = config_setting_add(parent, name, CONFIG_TYPE_ARRAY);
    if (!s || !*v)
        return s;
    for (item = v; (tok = strtok(item, ",")) != NULL; item = NULL) {
        int quoted;

        if (!config_setting_set_string_elem(s, -1, trim(tok, &quoted)))
            return NULL;
    }
    return s;
bad:
    *bad = 1;
    return NULL;
}

/*
 * Add the leaf `name` under parent with value v typed by key k, or guessed
 * when k is NULL (a plugin group key).  On a bad value sets *bad and
 * returns NULL.
 */
static config_setting_t *add_typed(config_setting_t *parent, const char *name,
                                   const struct key *k, char *v, int *bad)
{
    long long iv;
    double dv;
    int bv, quoted;
    char *t;
    config_setting_t *s;

    *bad = 0;
    if (!k) {
        t = trim(v, &quoted);
        if (!quoted && parse_int(t, &iv) == 0)
            return add_int(parent, name, iv);
        if (!quoted && parse_double(t, &dv) == 0) {
            s = config_setting_add(parent, name, CONFIG_TYPE_FLOAT);
            return s && config_setting_set_float(s, dv) ? s : NULL;
        }
        if (!quoted && (strcasecmp(t, "true") == 0 || strcasecmp(t, "false") == 0)) {
            s = config_setting_add(parent, name, CONFIG_TYPE_BOOL);
            return s && config_setting_set_bool(s, tolower((unsigned char)t[0]) == 't') ? s
                                                                                       : NULL;
        }
        return add_string(parent, name, t);
    }
    switch (k->type) {
    case K_INT:
        if (parse_int(trim(v, NULL), &iv) == 0)
            return add_int(parent, name, iv);
        break;
    case K_FLOAT:
        if (parse_double(trim(v, NULL), &dv) == 0) {
            s = config_setting_add(parent, name, CONFIG_TYPE_FLOAT);
            return s && config_setting_set_float(s, dv) ? s : NULL;
        }
        break;
    case K_BOOL:
        if (parse_bool(trim(v, NULL), &bv) == 0) {
            s = config_setting_add(parent, name, CONFIG_TYPE_BOOL);
            return s && config_setting_set_bool(s, bv) ? s : NULL;
        }
        break;
    case K_STRLIST:
        return add_strlist(parent, name, v, bad);
    case K_GROUP:
    case K_GROUPLIST:
        break;
    default:
        return add_string(parent, name, trim(v, &quoted));
    }
    *bad = 1;
    return NULL;
}

/*
 * Apply one override "a.b.c=value" (or, with prefix "-P", set
 * plugins.directory).  Errors go into c; only ENOMEM is returned.
 */
static int apply_override(struct ctx *c, const char *text, const char *shown)
{
    char *copy = strdup(text), *eq, *keypath, *value;
    char spath[256] = "";
    const struct key *k = NULL, *parent_key = NULL;
    config_setting_t *cur, *leaf;
    int rc = 0, plugin_key = 0, bad, n_segs = 0, i = 0;
    char *segs[16];

    if (!copy)
        return RHEMA_ENOMEM;
    eq = strchr(copy, '=');
    if (!eq) {
        error_plain(c, "%s: expected section.key=value", shown);
        goto out;
    }
    *eq = '\0';
    keypath = trim(copy, NULL);
    value = eq + 1;
    if (!*keypath || strchr(keypath, '[') || strlen(keypath) >= sizeof spath) {
        error_plain(c, "%s: expected section.key=value", shown);
        goto out;
    }
    /* split and classify against the schema */
    for (;;) {
        char *tok = strsep(&keypath, ".");

        if (!tok)
            break;
        if (!*tok || n_segs == (int)(sizeof segs / sizeof segs[0])) {
            error_plain(c, "%s: expected section.key=value", shown);
            goto out;
        }
        segs[n_segs++] = tok;
    }
    for (i = 0; i < n_segs; i++) {
        char next[256];

        join(next, sizeof next, spath, segs[i]);
        k = schema_find(next);
        if (!k) {
            /* persistence.<plugin>.<key> and the like */
            if (parent_key && (parent_key->flags & F_PLUGINS) && i == n_segs - 2) {
                plugin_key = 1;
                break;
            }
            for (int j = i + 1; j < n_segs; j++) {
                size_t len = strlen(next);

                snprintf(next + len, sizeof next - len, ".%s", segs[j]);
            }
            error_plain(c, "%s: unknown key '%s'", shown, next);
            goto out;
        }
        if (i < n_segs - 1 && k->type != K_GROUP) {
            error_plain(c, "%s: '%s' is not a group", shown, next);
            goto out;
        }
        snprintf(spath, sizeof spath, "%s", next);
        parent_key = k;
    }
    if (!plugin_key && k->type == K_GROUP) {
        error_plain(c, "%s: '%s' is a group; set its keys one by one", shown, k->path);
        goto out;
    }
    if (!plugin_key && k->type == K_GROUPLIST) {
        error_plain(c, "%s: '%s' is a list of groups and cannot be set with -o", shown, k->path);
        goto out;
    }
    /* walk the tree, making groups as needed */
    cur = config_root_setting(&c->p->lc);
    for (i = 0; i < n_segs - 1; i++) {
        config_setting_t *m = config_setting_get_member(cur, segs[i]);

        if (m && !config_setting_is_group(m)) {
            error_plain(c, "%s: cannot set a key inside '%s', which is not a group", shown,
                        segs[i]);
            goto out;
        }
        if (!m) {
            m = config_setting_add(cur, segs[i], CONFIG_TYPE_GROUP);
            if (!m) {
                error_plain(c, "%s: '%s' is not a valid key name", shown, segs[i]);
                goto out;
            }
            rc = origin_add(c->p, m, shown);
            if (rc)
                goto out;
        }
        cur = m;
    }
    leaf = config_setting_get_member(cur, segs[n_segs - 1]);
    if (leaf) {
        origin_forget(c->p, leaf);
        config_setting_remove(cur, segs[n_segs - 1]);
    }
    leaf = add_typed(cur, segs[n_segs - 1], plugin_key ? NULL : k, value, &bad);
    if (bad) {
        error_plain(c, "%s: '%s' must be %s%s", shown, k->path, type_word(k->type),
                    k->type == K_STRLIST ? ", as [a, b] or a,b (brackets closed, no empty item)"
                                         : "");
        goto out;
    }
    if (!leaf) {
        error_plain(c, "%s: '%s' is not a valid key name", shown, segs[n_segs - 1]);
        goto out;
    }
    rc = origin_add(c->p, leaf, shown);
out:
    free(copy);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* struct rhema_config                                                      */

static void strlist_release(struct rhema_strlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

static int strlist_fill(struct rhema_strlist *l, const struct key *k, const config_setting_t *s)
{
    size_t n = 0;

    if (s)
        n = (size_t)config_setting_length(s);
    else
        while (k->values[n])
            n++;
    l->v = calloc(n + 1, sizeof *l->v);
    if (!l->v)
        return RHEMA_ENOMEM;
    for (l->n = 0; l->n < n; l->n++) {
        const char *v = s ? config_setting_get_string_elem(s, (int)l->n) : k->values[l->n];

        l->v[l->n] = strdup(v ? v : "");
        if (!l->v[l->n])
            return RHEMA_ENOMEM;
    }
    return 0;
}

/* Copy the validated values (or defaults) into the fields of cfg. */
static int fill(struct rhema_config *cfg, const struct cfg_priv *p)
{
    for (size_t i = 0; i < N_SCHEMA; i++) {
        const struct key *k = &schema[i];
        const config_setting_t *s;
        char *base = (char *)cfg + k->off;

        if (k->fld == FLD_NONE)
            continue;
        s = lookup_path(p, k->path);
        switch (k->fld) {
        case FLD_INT:
        case FLD_BOOL: *(int *)(void *)base = (int)key_int(k, s); break;
        case FLD_I64: *(int64_t *)(void *)base = key_int(k, s); break;
        case FLD_STR:
            *(char **)(void *)base = strdup(key_string(k, s));
            if (!*(char **)(void *)base)
                return RHEMA_ENOMEM;
            break;
        case FLD_LIST:
            if (strlist_fill((struct rhema_strlist *)(void *)base, k, s))
                return RHEMA_ENOMEM;
            break;
        case FLD_LOGLEVEL:
            *(int *)(void *)base = rhema_config_log_level(key_string(k, s));
            break;
        case FLD_ENUMIDX: {
            const char *v = key_string(k, s);
            int idx = 0;

            while (k->values[idx] && strcmp(k->values[idx], v) != 0)
                idx++;
            if (k->off == OFF(log_format))
                cfg->log_format = (enum rhema_log_format)idx;
            else
                *(int *)(void *)base = idx;
            break;
        }
        case FLD_NONE: break;
        }
    }
    cfg->plugin_load_set = lookup_path(p, "plugins.load") != NULL;
    return 0;
}

static void priv_free(struct cfg_priv *p)
{
    if (!p)
        return;
    config_destroy(&p->lc);
    for (size_t i = 0; i < p->n_origins; i++)
        free(p->origins[i].text);
    free(p->origins);
    while (p->files) {
        struct file_text *f = p->files;

        p->files = f->next;
        free(f->name);
        free(f->text);
        free(f);
    }
    while (p->groups) {
        struct rhema_cfg *g = p->groups;

        p->groups = g->next;
        free(g->path);
        free(g->name);
        free(g->read);
        free(g->error);
        free(g);
    }
    free(p->path);
    free(p);
}

void rhema_config_release(struct rhema_config *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < N_SCHEMA; i++) {
        char *base = (char *)cfg + schema[i].off;

        if (schema[i].fld == FLD_STR)
            free(*(char **)(void *)base);
        else if (schema[i].fld == FLD_LIST)
            strlist_release((struct rhema_strlist *)(void *)base);
    }
    free(cfg->path);
    priv_free(cfg->priv);
    memset(cfg, 0, sizeof *cfg);
}

/* Read `path` into p->lc.  Returns 0, RHEMA_EIO or RHEMA_EINVAL with c's errors set. */
static int read_file(struct ctx *c, const char *path)
{
    struct stat st;
    char *dir, *slash;
    FILE *fp = fopen(path, "r");

    if (!fp) {
        error_plain(c, "%s: cannot read the configuration file: %s", path, strerror(errno));
        return RHEMA_EIO;
    }
    if (fstat(fileno(fp), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(fp);
        error_plain(c, "%s: cannot read the configuration file: %s", path, strerror(EISDIR));
        return RHEMA_EIO;
    }
    fclose(fp);
    /* @include "x.conf" is relative to the including file's directory */
    dir = strdup(path);
    if (!dir)
        return RHEMA_ENOMEM;
    slash = strrchr(dir, '/');
    if (slash) {
        slash[slash == dir] = '\0';
        config_set_include_dir(&c->p->lc, dir);
    }
    free(dir);
    if (!config_read_file(&c->p->lc, path)) {
        const char *f = config_error_file(&c->p->lc);

        if (config_error_type(&c->p->lc) == CONFIG_ERR_FILE_IO) {
            error_plain(c, "%s: cannot read the configuration file: %s", f ? f : path,
                        config_error_text(&c->p->lc));
            return RHEMA_EIO;
        }
        error_plain(c, "%s:%d: %s", f ? f : path, config_error_line(&c->p->lc),
                    config_error_text(&c->p->lc));
        return RHEMA_EINVAL;
    }
    return 0;
}

int rhema_config_load(struct rhema_config *cfg, const char *path, const char *const *overrides,
                      size_t n_overrides, const char *plugin_dir, char **err)
{
    struct ctx c;
    int rc;

    memset(cfg, 0, sizeof *cfg);
    memset(&c, 0, sizeof c);
    if (err)
        *err = NULL;
    c.p = calloc(1, sizeof *c.p);
    if (!c.p) {
        rc = RHEMA_ENOMEM;
        goto fail;
    }
    config_init(&c.p->lc);
    cfg->priv = c.p;
    c.p->path = strdup(path ? path : "");
    cfg->path = strdup(path ? path : "");
    if (!c.p->path || !cfg->path) {
        rc = RHEMA_ENOMEM;
        goto fail;
    }
    if (path) {
        rc = read_file(&c, path);
        if (rc)
            goto fail;
    }
    for (size_t i = 0; i < n_overrides; i++) {
        char shown[1024];

        snprintf(shown, sizeof shown, "-o %s", overrides[i]);
        rc = apply_override(&c, overrides[i], shown);
        if (rc)
            goto fail;
    }
    if (plugin_dir) {
        char text[1024], shown[1024];

        snprintf(text, sizeof text, "plugins.directory=\"%s\"", plugin_dir);
        snprintf(shown, sizeof shown, "-P %s", plugin_dir);
        rc = apply_override(&c, text, shown);
        if (rc)
            goto fail;
    }
    validate_group(&c, config_root_setting(&c.p->lc), "", "", 0);
    validate_cross(&c);
    /* only on an otherwise valid tree: fix what is wrong before what is missing */
    if (!c.n_errs)
        validate_unimplemented(&c);
    if (c.n_errs) {
        rc = RHEMA_EINVAL;
        goto fail;
    }
    rc = fill(cfg, c.p);
    if (rc)
        goto fail;
    return 0;
fail:
    if (rc == RHEMA_ENOMEM || c.errs.oom) {
        rc = RHEMA_ENOMEM;
        free(c.errs.s);
        c.errs.s = strdup("out of memory while loading the configuration");
    }
    if (err)
        *err = c.errs.s;
    else
        free(c.errs.s);
    rhema_config_release(cfg); /* frees c.p too */
    return rc;
}

int rhema_config_log_level(const char *name)
{
    static const int levels[] = { RHEMA_LOG_DEBUG, RHEMA_LOG_INFO, RHEMA_LOG_NOTICE,
                                  RHEMA_LOG_WARN, RHEMA_LOG_ERROR };

    for (size_t i = 0; name && level_enum[i]; i++)
        if (strcmp(level_enum[i], name) == 0)
            return levels[i];
    return -1;
}

/* ------------------------------------------------------------------------ */
/* Any schema key, by path                                                  */

int rhema_config_get_int(const struct rhema_config *cfg, const char *path, int64_t *out)
{
    struct resolved r;

    if (!cfg || !path || resolve(cfg->priv, path, &r))
        return RHEMA_ENOTFOUND;
    if (r.elem >= 0 || r.k->type != K_INT)
        return RHEMA_EINVAL;
    *out = key_int(r.k, r.s);
    return 0;
}

int rhema_config_get_double(const struct rhema_config *cfg, const char *path, double *out)
{
    struct resolved r;

    if (!cfg || !path || resolve(cfg->priv, path, &r))
        return RHEMA_ENOTFOUND;
    if (r.elem >= 0 || r.k->type != K_FLOAT)
        return RHEMA_EINVAL;
    *out = r.s ? setting_double(r.s) : r.k->def_f;
    return 0;
}

int rhema_config_get_bool(const struct rhema_config *cfg, const char *path, int *out)
{
    struct resolved r;

    if (!cfg || !path || resolve(cfg->priv, path, &r))
        return RHEMA_ENOTFOUND;
    if (r.elem >= 0 || r.k->type != K_BOOL)
        return RHEMA_EINVAL;
    *out = r.s ? config_setting_get_bool(r.s) : (int)r.k->def_i;
    return 0;
}

int rhema_config_get_string(const struct rhema_config *cfg, const char *path, const char **out)
{
    struct resolved r;

    if (!cfg || !path || resolve(cfg->priv, path, &r))
        return RHEMA_ENOTFOUND;
    if (r.elem >= 0) {
        *out = r.s ? config_setting_get_string(r.s) : r.k->values[r.elem];
        return 0;
    }
    switch (r.k->type) {
    case K_GROUP:
    case K_INT:
    case K_FLOAT:
    case K_BOOL:
    case K_STRLIST:
    case K_GROUPLIST: return RHEMA_EINVAL;
    default: break;
    }
    *out = key_string(r.k, r.s);
    return 0;
}

int rhema_config_get_count(const struct rhema_config *cfg, const char *path)
{
    struct resolved r;
    int n = 0;

    if (!cfg || !path || resolve(cfg->priv, path, &r))
        return RHEMA_ENOTFOUND;
    if (r.elem >= 0 || (r.k->type != K_STRLIST && r.k->type != K_GROUPLIST))
        return RHEMA_EINVAL;
    if (r.s)
        return config_setting_length(r.s);
    if (r.k->type == K_STRLIST)
        while (r.k->values[n])
            n++;
    return n;
}

/* ------------------------------------------------------------------------ */
/* Plugin groups                                                            */

/* The section setting of a plugin kind, or NULL. */
static const config_setting_t *section_of(const struct cfg_priv *p, uint32_t kind,
                                          const char **sname)
{
    const char *sec = kind_section(kind);
    const config_setting_t *s;

    if (!sec)
        return NULL;
    s = lookup_path(p, sec);
    if (sname)
        *sname = sec;
    return s && config_setting_is_group(s) ? s : NULL;
}

/* Is member m of section `sec` a plugin group (a group that is no core key)? */
static int is_plugin_group(const char *sec, const config_setting_t *m)
{
    char path[256];

    if (!config_setting_is_group(m))
        return 0;
    join(path, sizeof path, sec, config_setting_name(m));
    return schema_find(path) == NULL;
}

const struct rhema_cfg *rhema_config_plugin_group(const struct rhema_config *cfg, uint32_t kind,
                                                  const char *name)
{
    struct cfg_priv *p = cfg ? cfg->priv : NULL;
    const config_setting_t *sec, *m;
    struct rhema_cfg *g;
    const char *sname = NULL;
    char path[256];

    if (!p || !name)
        return NULL;
    for (g = p->groups; g; g = g->next)
        if (g->kind == kind && strcmp(g->name, name) == 0)
            return g;
    sec = section_of(p, kind, &sname);
    m = sec ? config_setting_get_member(sec, name) : NULL;
    if (!m || !is_plugin_group(sname, m))
        return NULL;
    join(path, sizeof path, sname, name);
    g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->p = p;
    g->g = m;
    g->kind = kind;
    g->n = (unsigned)config_setting_length(m);
    g->path = strdup(path);
    g->name = strdup(name);
    g->read = calloc(g->n + 1, 1);
    if (!g->path || !g->name || !g->read) {
        free(g->path);
        free(g->name);
        free(g->read);
        free(g);
        return NULL;
    }
    g->next = p->groups;
    p->groups = g;
    return g;
}

int rhema_config_foreach_plugin_group(const struct rhema_config *cfg, uint32_t kind,
                                      int (*fn)(const char *name, const char *where, void *arg),
                                      void *arg)
{
    const struct cfg_priv *p = cfg ? cfg->priv : NULL;
    const config_setting_t *sec = p ? section_of(p, kind, NULL) : NULL;
    const char *sname = kind_section(kind);
    int n = sec ? config_setting_length(sec) : 0;

    for (int i = 0; i < n; i++) {
        const config_setting_t *m = config_setting_get_elem(sec, (unsigned)i);
        char where[512];
        int rc;

        if (!is_plugin_group(sname, m))
            continue;
        where_of(p, m, where, sizeof where);
        rc = fn(config_setting_name(m), where, arg);
        if (rc)
            return rc;
    }
    return 0;
}

/* Member `key` of a plugin group, marked as read; NULL when absent. */
static const config_setting_t *group_member(const struct rhema_cfg *cfg, const char *key)
{
    struct rhema_cfg *g = (struct rhema_cfg *)(uintptr_t)cfg; /* the marks are ours */

    if (!g || !key)
        return NULL;
    for (unsigned i = 0; i < g->n; i++) {
        const config_setting_t *m = config_setting_get_elem(g->g, i);

        if (strcmp(config_setting_name(m), key) == 0) {
            g->read[i] = 1;
            return m;
        }
    }
    return NULL;
}

/* Record "file:line: 'path.key' must be <what>" as the group's last error. */
static int group_type_error(const struct rhema_cfg *cfg, const config_setting_t *m,
                            const char *key, const char *what)
{
    struct rhema_cfg *g = (struct rhema_cfg *)(uintptr_t)cfg;
    char where[512];
    int n;

    where_of(g->p, m, where, sizeof where);
    free(g->error);
    g->error = NULL;
    n = snprintf(NULL, 0, "%s: '%s.%s' must be %s", where, g->path, key, what);
    if (n >= 0) {
        g->error = malloc((size_t)n + 1);
        if (g->error)
            snprintf(g->error, (size_t)n + 1, "%s: '%s.%s' must be %s", where, g->path, key,
                     what);
    }
    return RHEMA_EINVAL;
}

int rhema_cfg_string(const struct rhema_cfg *cfg, const char *key, const char **out)
{
    const config_setting_t *m = group_member(cfg, key);

    if (!m)
        return RHEMA_ENOTFOUND;
    if (config_setting_type(m) != CONFIG_TYPE_STRING)
        return group_type_error(cfg, m, key, "a string");
    *out = config_setting_get_string(m);
    return 0;
}

int rhema_cfg_int(const struct rhema_cfg *cfg, const char *key, int64_t *out)
{
    const config_setting_t *m = group_member(cfg, key);
    char lit[64];

    if (!m)
        return RHEMA_ENOTFOUND;
    if (config_setting_type(m) != CONFIG_TYPE_INT && config_setting_type(m) != CONFIG_TYPE_INT64)
        return group_type_error(cfg, m, key, "an integer");
    if (int_truncated(cfg->p, m, lit, sizeof lit))
        return group_type_error(cfg, m, key, "an integer that fits in 32 bits, or written "
                                             "with the L suffix");
    *out = setting_int(m);
    return 0;
}

int rhema_cfg_bool(const struct rhema_cfg *cfg, const char *key, int *out)
{
    const config_setting_t *m = group_member(cfg, key);

    if (!m)
        return RHEMA_ENOTFOUND;
    if (config_setting_type(m) != CONFIG_TYPE_BOOL)
        return group_type_error(cfg, m, key, "a boolean (true or false)");
    *out = config_setting_get_bool(m);
    return 0;
}

int rhema_cfg_double(const struct rhema_cfg *cfg, const char *key, double *out)
{
    const config_setting_t *m = group_member(cfg, key);

    if (!m)
        return RHEMA_ENOTFOUND;
    if (config_setting_type(m) != CONFIG_TYPE_FLOAT && config_setting_type(m) != CONFIG_TYPE_INT &&
        config_setting_type(m) != CONFIG_TYPE_INT64)
        return group_type_error(cfg, m, key, "a number");
    *out = setting_double(m);
    return 0;
}

const char *rhema_cfg_where(const struct rhema_cfg *cfg, const char *key)
{
    struct rhema_cfg *g = (struct rhema_cfg *)(uintptr_t)cfg;
    const config_setting_t *m = NULL;

    if (!g)
        return "(no configuration group)";
    if (key) {
        for (unsigned i = 0; i < g->n && !m; i++)
            if (strcmp(config_setting_name(config_setting_get_elem(g->g, i)), key) == 0)
                m = config_setting_get_elem(g->g, i);
    }
    where_of(g->p, m ? m : g->g, g->where, sizeof g->where);
    return g->where;
}

const char *rhema_cfg_error(const struct rhema_cfg *cfg)
{
    return cfg ? cfg->error : NULL;
}

int rhema_config_unread_keys(const struct rhema_cfg *group, char **err)
{
    struct sbuf b = { 0 };
    int n = 0;

    if (!group)
        return 0;
    for (unsigned i = 0; i < group->n; i++) {
        const config_setting_t *m = config_setting_get_elem(group->g, i);
        char where[512];

        if (group->read[i])
            continue;
        where_of(group->p, m, where, sizeof where);
        sb_add(&b, "%s%s: unknown key '%s.%s' for plugin '%s'", n ? "\n" : "", where,
               group->path, config_setting_name(m), group->name);
        n++;
    }
    if (!n)
        return 0;
    if (b.oom) {
        free(b.s);
        b.s = NULL;
    }
    if (err)
        *err = b.s;
    else
        free(b.s);
    return RHEMA_EINVAL;
}
