/*
 * config -- libconfig file -> struct rhema_config, with strict validation.
 *
 * Every key of every section of DESIGN.md §8 has a documented default (see
 * etc/rhemad.conf and doc/rhemad.conf.5), so an empty file is a valid
 * single-node config.  An unknown key, a wrong type or an out-of-range value
 * is an error "FILE:LINE: message".  Overrides ("section.key=value", from
 * rhemad -o) are applied on top of the file before validation; an error in
 * one is reported as "-o section.key=value: message".
 *
 * Keys whose subsystem this version lacks (most of ai_service, monitoring,
 * security: the table cfg_unimplemented[] in config_schema.c) are validated
 * like the others, and then refused with "FILE:LINE: key: not implemented in this
 * version" when their value would change behaviour if it acted (anything
 * but the default, or false for a switch).  That check runs only on a file
 * without other errors.
 *
 * Plugin groups: a group inside the section of a plugin kind whose name is
 * not a core key (persistence.sqlite, advanced_features.compression.zstd,
 * distributed.load_balancing.ip_hash ...) belongs to the plugin of that
 * name.  The core does not validate it; the plugin reads it through the
 * host's typed getters (struct rhema_cfg), and afterwards
 * rhema_config_unread_keys() reports every key the plugin did not read.
 *
 * Not thread safe while loading; read-only (and so shareable) afterwards,
 * except for the read marks set by the rhema_cfg getters, which only the
 * main thread uses (plugins read their config in open()).
 */
#ifndef RHEMA_CORE_CONFIG_H
#define RHEMA_CORE_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include <rhema/plugin.h>

enum rhema_log_format { RHEMA_LOG_FORMAT_TEXT = 0, RHEMA_LOG_FORMAT_JSON = 1 };

struct rhema_strlist {
    char **v;
    size_t n;
};

struct rhema_config {
    char *path; /* the file read ("" when none) */

    /* service */
    char *listen;                   /* "127.0.0.1:8080" */
    int workers;                    /* 0: one per core; 0..256 */
    char *pidfile;                  /* "" : none */
    int64_t max_request_size_bytes; /* 10 MiB; 1 KiB .. 1 GiB */
    int request_timeout_seconds;    /* 30; 1 .. 3600 */
    int64_t max_page_bytes;      /* 4 MiB; 4096 .. 1 GiB: a list page ends past it */
    int cors_enabled;               /* true */
    struct rhema_strlist cors_origins; /* [ "*" ] */

    /* plugins */
    char *plugin_directory;      /* PLUGINDIR from configure; -P overrides */
    int plugin_load_set;         /* plugins.load present */
    struct rhema_strlist plugin_load;

    /* persistence (core keys; backend groups belong to the plugins) */
    char *backend;               /* "sqlite" */
    int enable_backups;          /* false */
    int backup_interval_hours;   /* 24; 1 .. 8760 */
    int backup_retention_days;   /* 7; 1 .. 3650 */
    char *backup_directory;      /* "backups" */
    int enable_cleanup;          /* false */
    int cleanup_interval_hours;  /* 24; 1 .. 8760 */
    int data_retention_days;     /* 30; 1 .. 36500 */
    int64_t max_data_size_bytes; /* 0: unlimited */
    int64_t max_record_size_bytes; /* 16 MiB; 1024 .. 1 GiB: one stored value at most */
    int64_t configuration_versions_retained; /* 100; 1 .. 1e9: versions kept per configuration */
    int64_t agent_transitions_retained;      /* 1000; 1 .. 1e9: transitions kept per agent */
    /* ai_service.agent_management (old names max_agents, heartbeat_timeout_seconds) */
    int max_concurrent_agents;   /* 1000; 1 .. 1e6: registered agents at most */
    int agent_timeout_seconds;   /* 60; 1 .. 86400: heartbeat and task timeout */
    int enable_compression;      /* false */
    int enable_encryption;       /* false */

    /* the plugin names other sections refer to (for implicit loading) */
    char *compression_algorithm; /* advanced_features.compression.algorithm, "zstd" */
    int compression_enabled;
    char *encryption_algorithm;  /* advanced_features.encryption.algorithm, "xchacha20poly1305" */
    int encryption_enabled;
    char *balancing_strategy;    /* distributed.load_balancing.strategy, "round_robin" */
    int distributed_enabled;

    /* logging */
    int log_level;               /* RHEMA_LOG_*; "info" */
    enum rhema_log_format log_format; /* "text" */
    char *log_file;              /* "" : stderr */
    int access_log;              /* true */

    void *priv;                  /* the libconfig tree and bookkeeping */
};

/*
 * Load `path` (NULL: defaults only, as an empty file), apply the overrides
 * ("section.key=value" strings, n of them), then `plugin_dir` (NULL: keep),
 * and validate.  On success fills *cfg and returns 0.  On failure returns
 * RHEMA_EINVAL (RHEMA_EIO when the file cannot be read), sets *err to a
 * malloc'd message of one or more lines "file:line: message" (caller
 * frees), and leaves *cfg released.
 */
int rhema_config_load(struct rhema_config *cfg, const char *path, const char *const *overrides,
                      size_t n_overrides, const char *plugin_dir, char **err);
void rhema_config_release(struct rhema_config *cfg);

/*
 * What the loader has to say that is not an error -- one line per old key
 * name read as its new one ("file:line: 'x' is the old name of 'y' ...") --
 * or NULL.  Owned by cfg; rhemad logs it at notice level once logging is up.
 */
const char *rhema_config_notices(const struct rhema_config *cfg);

/* A log level name ("debug", "info", "notice", "warn", "error") -> RHEMA_LOG_*, or -1. */
int rhema_config_log_level(const char *name);

/*
 * The configuration group of plugin `name` of kind `kind` (RHEMA_KIND_*),
 * or NULL when the file has none.  Storage: persistence.<name>;
 * compression: advanced_features.compression.<name>; cipher:
 * advanced_features.encryption.<name>; balancer:
 * distributed.load_balancing.<name>.
 */
const struct rhema_cfg *rhema_config_plugin_group(const struct rhema_config *cfg, uint32_t kind,
                                                  const char *name);

/*
 * After a plugin's open(): keys of its group it never read, as one or more
 * lines "file:line: unknown key 'persistence.sqlite.foo' for plugin 'sqlite'".
 * Returns 0 when there are none, RHEMA_EINVAL and *err (malloc'd) otherwise.
 */
int rhema_config_unread_keys(const struct rhema_cfg *group, char **err);

/*
 * The host getters of struct rhema_host (see include/rhema/plugin.h), on the
 * direct members of a plugin group (plugin groups are flat).  Each marks
 * `key` as read, even when it has the wrong type.  They return 0, or
 * RHEMA_ENOTFOUND when cfg is NULL or the key absent (*out untouched), or
 * RHEMA_EINVAL on a wrong type, the message then in rhema_cfg_error().
 * An int reads as a double; a bool is never an int.  Strings belong to the
 * config and live until rhema_config_release().
 *
 * rhema_cfg_where(): "file:line" of key (of the group when key is NULL or
 * absent), or "-o persistence.sqlite.path=..." for a value set by -o.  The
 * text is in a buffer of the group, valid until the next rhema_cfg_where()
 * on the same group or rhema_config_release().
 */
int rhema_cfg_string(const struct rhema_cfg *cfg, const char *key, const char **out);
int rhema_cfg_int(const struct rhema_cfg *cfg, const char *key, int64_t *out);
int rhema_cfg_bool(const struct rhema_cfg *cfg, const char *key, int *out);
int rhema_cfg_double(const struct rhema_cfg *cfg, const char *key, double *out);
const char *rhema_cfg_where(const struct rhema_cfg *cfg, const char *key);

/* The last type error of a getter on this group ("file:line: 'persistence.sqlite.x'
 * must be an integer"), for the host to log; NULL when none.  Owned by the config. */
const char *rhema_cfg_error(const struct rhema_cfg *cfg);

/*
 * Call fn(name, where, arg) for each plugin group of kind `kind` in the file
 * (persistence.<name> ...), in file order, so that the host can flag a group
 * that names no loaded plugin (a typo such as persistence.sqllite).  Stops at
 * and returns the first nonzero result of fn; 0 otherwise.
 */
int rhema_config_foreach_plugin_group(const struct rhema_config *cfg, uint32_t kind,
                                      int (*fn)(const char *name, const char *where, void *arg),
                                      void *arg);

/*
 * Any key of the schema, by path, for the subsystems whose keys have no
 * field above (distributed.cluster.*, ai_service.*, security.* ...):
 * the validated value from the file or -o, else the documented default.
 * Paths index lists with [N]: "ai_service.upstreams[0].base_url",
 * "security.roles[1].permissions[0]", "service.cors.allow_headers[2]".
 * Return 0; RHEMA_ENOTFOUND when the path is no schema key or names a list
 * element that does not exist; RHEMA_EINVAL when the key has another type
 * (rhema_config_get_double() takes a float key, _get_string() a string,
 * enum, address, name or string-list element).  Strings stay valid until
 * rhema_config_release().  Works on a zeroed config too (defaults).
 */
int rhema_config_get_int(const struct rhema_config *cfg, const char *path, int64_t *out);
int rhema_config_get_double(const struct rhema_config *cfg, const char *path, double *out);
int rhema_config_get_bool(const struct rhema_config *cfg, const char *path, int *out);
int rhema_config_get_string(const struct rhema_config *cfg, const char *path, const char **out);
/* Elements of a list key (string list or list of groups), default included; or RHEMA_E*. */
int rhema_config_get_count(const struct rhema_config *cfg, const char *path);

#endif /* RHEMA_CORE_CONFIG_H */
