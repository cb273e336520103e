/*
 * rhema plugin ABI -- the part every plugin kind shares.
 *
 * A plugin is a shared object that exports exactly one symbol:
 *
 *     int rhema_plugin_init(const struct rhema_host *host,
 *                           const struct rhema_plugin **out);
 *
 * It fills *out with a pointer to a static, const vtable whose first member
 * is a struct rhema_plugin, and returns 0.  It must not allocate, do I/O or
 * keep the host pointer beyond what its own kind header allows: instances
 * receive the host again in their open() call.
 *
 * Compatibility rules (see doc/writing-plugins.md):
 *   - RHEMA_ABI_MAJOR changes on any incompatible change; the host refuses
 *     a plugin built against another major.
 *   - RHEMA_ABI_MINOR changes when a member is appended to a vtable or to
 *     struct rhema_host.  The host refuses a plugin built against a newer
 *     minor than its own, and copies an older plugin's vtable into a zeroed
 *     struct so that members the plugin does not know read as NULL.
 *   - Members are only ever appended.  Comments mark where each minor ends.
 *
 * Conventions across the boundary:
 *   - functions return 0 or a negative RHEMA_E* code;
 *   - buffers cross as (pointer, length); whoever allocates frees;
 *   - a human-readable error goes through a `char **err` out-parameter, set
 *     with host->set_error() (so the host owns and frees it), or through
 *     host->log();
 *   - a plugin never exits, aborts or prints.
 */
#ifndef RHEMA_PLUGIN_H
#define RHEMA_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RHEMA_ABI_MAJOR 1 /* bumped on any incompatible change */
#define RHEMA_ABI_MINOR 1 /* bumped when a member is appended */

/* The symbol every plugin exports. */
#define RHEMA_PLUGIN_INIT_SYMBOL "rhema_plugin_init"

/* Plugin kinds. */
#define RHEMA_KIND_STORAGE 1u
#define RHEMA_KIND_COMPRESS 2u
#define RHEMA_KIND_CIPHER 3u
#define RHEMA_KIND_BALANCER 4u

/* Error codes: every ABI function returns 0 or one of these. */
#define RHEMA_OK 0
#define RHEMA_ENOTFOUND (-1) /* no such key / lease / item */
#define RHEMA_ECONFLICT (-2) /* version or lease mismatch */
#define RHEMA_EUNAVAIL (-3)  /* backend down; the caller may retry */
#define RHEMA_EINVAL (-4)    /* bad argument or configuration */
#define RHEMA_ENOMEM (-5)    /* out of memory */
#define RHEMA_EIO (-6)       /* I/O error */
#define RHEMA_ETOOBIG (-7)   /* value or output larger than allowed */
#define RHEMA_ECORRUPT (-8)  /* malformed, truncated or tampered data */
#define RHEMA_ENOTSUP (-9)   /* operation not supported by this plugin */

/* Log levels for host->log(). */
#define RHEMA_LOG_ERROR 0
#define RHEMA_LOG_WARN 1
#define RHEMA_LOG_NOTICE 2
#define RHEMA_LOG_INFO 3
#define RHEMA_LOG_DEBUG 4

/*
 * The header every vtable begins with.  abi_major / abi_minor say what the
 * plugin was built against (set them to RHEMA_ABI_MAJOR / RHEMA_ABI_MINOR);
 * size is sizeof the whole vtable of its kind.
 */
struct rhema_plugin {
    uint32_t abi_major;
    uint32_t abi_minor;
    uint32_t kind;           /* RHEMA_KIND_* */
    uint32_t size;           /* sizeof the whole vtable */
    const char *name;        /* unique within its kind: "sqlite" */
    const char *version;     /* the plugin's own version: "1.0.0" */
    const char *description; /* one line for humans */
};

/*
 * A plugin's own configuration subtree (the group named after the plugin in
 * the section of its kind, e.g. persistence.sqlite).  Opaque: libconfig
 * types never cross the ABI.  Read it with the host's typed getters.
 */
struct rhema_cfg;

/*
 * The table the host hands to rhema_plugin_init() and to open().
 * Append-only, with its own minor version in abi_minor.
 */
struct rhema_host {
    uint32_t abi_major;
    uint32_t abi_minor;
    uint32_t size; /* sizeof(struct rhema_host) of the host */
    uint32_t reserved;

    /* Log a line on behalf of plugin `plugin` (its name).  Thread safe. */
    void (*log)(int level, const char *plugin, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

    /*
     * Set *err (when err is not NULL) to a newly formatted message that the
     * host owns and frees.  Returns `code`, so a plugin can write
     *     return host->set_error(err, RHEMA_EIO, "open %s: %s", p, strerror(e));
     */
    int (*set_error)(char **err, int code, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

    /*
     * Typed getters on the plugin's configuration subtree; cfg may be NULL
     * (no group in the file).  Each returns 0 and sets *out when the key is
     * present with the right type, RHEMA_ENOTFOUND (leaving *out alone, so
     * preset the default) when absent, RHEMA_EINVAL when present with
     * another type (the host has then logged file:line).  Strings stay valid
     * until the instance is closed.  Keys a plugin never reads are reported
     * by the host as unknown keys with their file:line.
     */
    int (*cfg_string)(const struct rhema_cfg *cfg, const char *key, const char **out);
    int (*cfg_int)(const struct rhema_cfg *cfg, const char *key, int64_t *out);
    int (*cfg_bool)(const struct rhema_cfg *cfg, const char *key, int *out);
    int (*cfg_double)(const struct rhema_cfg *cfg, const char *key, double *out);
    /* "file:line" of a key (or of the group when key is NULL), for messages. */
    const char *(*cfg_where)(const struct rhema_cfg *cfg, const char *key);

    /* Clocks: monotonic and wall-clock, in nanoseconds. */
    uint64_t (*monotonic_ns)(void);
    uint64_t (*realtime_ns)(void);

    /*
     * Metrics: register a named counter or gauge once (at open), then add to
     * or set it from any thread.  Returns a handle >= 0, or a negative
     * RHEMA_E* code.  The name is prefixed with "rhema_<plugin>_".
     */
    int (*metric_register)(const char *plugin, const char *name, const char *help,
                           int is_gauge);
    void (*metric_add)(int handle, int64_t delta);
    void (*metric_set)(int handle, int64_t value);
    /* --- host minor 0 ends here --- */
};

/*
 * The entry point every plugin defines.  Declared visible, so a plugin built
 * with -fvisibility=hidden (to export nothing else) still exports it.
 */
#define RHEMA_PLUGIN_EXPORT __attribute__((visibility("default")))
RHEMA_PLUGIN_EXPORT int rhema_plugin_init(const struct rhema_host *host,
                                          const struct rhema_plugin **out);

/*
 * Convenience: the header initialiser for a vtable of type T and kind K.
 *     static const struct rhema_storage_plugin vt = {
 *         .base = RHEMA_PLUGIN_HEADER(struct rhema_storage_plugin,
 *                                     RHEMA_KIND_STORAGE, "mine", "1.0", "..."),
 *         ...
 */
#define RHEMA_PLUGIN_HEADER(T, K, NAME, VERSION, DESC)                                \
    {                                                                                 \
        .abi_major = RHEMA_ABI_MAJOR, .abi_minor = RHEMA_ABI_MINOR, .kind = (K),      \
        .size = (uint32_t)sizeof(T), .name = (NAME), .version = (VERSION),            \
        .description = (DESC)                                                         \
    }

/* A short name for an error code: "ENOTFOUND", ... ("EUNKNOWN" otherwise). */
static inline const char *rhema_strerror(int code)
{
    switch (code) {
    case RHEMA_OK: return "OK";
    case RHEMA_ENOTFOUND: return "ENOTFOUND";
    case RHEMA_ECONFLICT: return "ECONFLICT";
    case RHEMA_EUNAVAIL: return "EUNAVAIL";
    case RHEMA_EINVAL: return "EINVAL";
    case RHEMA_ENOMEM: return "ENOMEM";
    case RHEMA_EIO: return "EIO";
    case RHEMA_ETOOBIG: return "ETOOBIG";
    case RHEMA_ECORRUPT: return "ECORRUPT";
    case RHEMA_ENOTSUP: return "ENOTSUP";
    default: return "EUNKNOWN";
    }
}

#ifdef __cplusplus
}
#endif
#endif /* RHEMA_PLUGIN_H */
