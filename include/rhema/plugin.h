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
 *   - Each plugin kind has its own minor version (RHEMA_STORAGE_ABI_MINOR in
 *     storage.h, ...), and struct rhema_host has its own
 *     (RHEMA_HOST_ABI_MINOR): appending a member to one vtable moves that
 *     kind's minor only.  A plugin states its kind's minor in abi_minor.
 *   - Members are only ever appended; comments mark where each minor ends.
 *     Whichever side is older, the host copies min(size, sizeof its struct)
 *     of the vtable into a zeroed struct: members the plugin does not know
 *     read as NULL, members the host does not know are ignored.  A plugin
 *     built against a newer minor than the host's therefore loads, as long
 *     as its size covers every member of the host's minor and no required
 *     member is NULL (SQLite's iVersion rule); the host refuses it otherwise.
 *   - Structs the host passes to a plugin in arrays, or fills from a plugin,
 *     begin with a size member set by whoever builds them: read a member of
 *     a later minor only when size covers it, and step through an array by
 *     the first element's size (the stride helpers of each kind header).
 *
 * Conventions across the boundary:
 *   - functions return 0 or a negative RHEMA_E* code of the ABI range
 *     (RHEMA_E_ABI_MIN..-1), never a code of the host's range;
 *   - buffers cross as (pointer, length); whoever allocates frees;
 *   - a human-readable error goes through a `char **err` out-parameter, set
 *     with host->set_error() (so the host owns and frees it), or through
 *     host->log() / host->vlog();
 *   - a plugin never exits, aborts or prints.
 */
#ifndef RHEMA_PLUGIN_H
#define RHEMA_PLUGIN_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RHEMA_ABI_MAJOR 2 /* bumped on any incompatible change */

/* The minor of struct rhema_host: bumped when a member is appended to it. */
#define RHEMA_HOST_ABI_MINOR 0

/*
 * Compiler attributes, spelled out only where the compiler has them: the
 * headers compile with any C99 or C++11 compiler.
 *   RHEMA_PRINTF_LIKE(f, a)  argument f is a printf format, checked against
 *                            the arguments from a on (0: a va_list)
 *   RHEMA_EXPORT             visible from the shared object even under
 *                            -fvisibility=hidden
 */
#if defined(__GNUC__) || defined(__clang__)
#define RHEMA_PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))
#define RHEMA_EXPORT __attribute__((visibility("default")))
#else
#define RHEMA_PRINTF_LIKE(f, a)
#define RHEMA_EXPORT
#endif

/* The symbol every plugin exports. */
#define RHEMA_PLUGIN_INIT_SYMBOL "rhema_plugin_init"

/* Plugin kinds. */
#define RHEMA_KIND_STORAGE 1u
#define RHEMA_KIND_COMPRESS 2u
#define RHEMA_KIND_CIPHER 3u
#define RHEMA_KIND_BALANCER 4u

/*
 * Error codes.  Every ABI function returns 0 or a code of the ABI range,
 * -1..RHEMA_E_ABI_MIN (-99); codes are only ever added to it, so a host
 * treats an ABI code it does not know like RHEMA_EIO.  The range
 * RHEMA_E_HOST_MAX..RHEMA_E_HOST_MIN (-100..-199) is reserved for the
 * host's own codes (internal to rhemad, never passed to a plugin); a plugin
 * never returns one, and a host may take one from a plugin for a bug.
 */
#define RHEMA_E_ABI_MIN (-99)
#define RHEMA_E_HOST_MAX (-100)
#define RHEMA_E_HOST_MIN (-199)

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

/* Log levels for host->log() and host->vlog(). */
#define RHEMA_LOG_ERROR 0
#define RHEMA_LOG_WARN 1
#define RHEMA_LOG_NOTICE 2
#define RHEMA_LOG_INFO 3
#define RHEMA_LOG_DEBUG 4

/*
 * The header every vtable begins with.  abi_major / abi_minor say what the
 * plugin was built against: RHEMA_ABI_MAJOR and its kind's minor
 * (RHEMA_STORAGE_ABI_MINOR, ...); size is sizeof the whole vtable of its
 * kind.  The RHEMA_<KIND>_PLUGIN_HEADER macros of the kind headers fill it.
 */
struct rhema_plugin {
    uint32_t abi_major;
    uint32_t abi_minor;      /* the minor of the plugin's kind */
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
 * Append-only, with its own minor version in abi_minor
 * (RHEMA_HOST_ABI_MINOR of the host): a member of a later minor than the
 * host's is absent, so a plugin checks size (offsetof the member < size)
 * before it uses one of a minor above 0.
 */
struct rhema_host {
    uint32_t abi_major;
    uint32_t abi_minor; /* RHEMA_HOST_ABI_MINOR of the host */
    uint32_t size;      /* sizeof(struct rhema_host) of the host */
    uint32_t reserved;

    /* Log a line on behalf of plugin `plugin` (its name).  Thread safe. */
    void (*log)(int level, const char *plugin, const char *fmt, ...) RHEMA_PRINTF_LIKE(3, 4);

    /*
     * Set *err (when err is not NULL) to a newly formatted message that the
     * host owns and frees.  Returns `code`, so a plugin can write
     *     return host->set_error(err, RHEMA_EIO, "open %s: %s", p, strerror(e));
     */
    int (*set_error)(char **err, int code, const char *fmt, ...) RHEMA_PRINTF_LIKE(3, 4);

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

    /*
     * log() with a va_list, for a plugin's own printf-like wrappers (a
     * backend's notice callback, a conn_error() that also logs).  ap is
     * consumed as vprintf consumes it.  Thread safe.
     */
    void (*vlog)(int level, const char *plugin, const char *fmt, va_list ap)
        RHEMA_PRINTF_LIKE(3, 0);
    /* --- host minor 0 ends here --- */
};

/*
 * The entry point every plugin defines.  Declared visible, so a plugin built
 * with -fvisibility=hidden (to export nothing else) still exports it.
 */
RHEMA_EXPORT int rhema_plugin_init(const struct rhema_host *host, const struct rhema_plugin **out);

/*
 * The header initialiser for a vtable of type T, kind K, built against
 * minor MINOR of that kind.  The kind headers wrap it, e.g.
 *     static const struct rhema_storage_plugin vt = {
 *         .base = RHEMA_STORAGE_PLUGIN_HEADER("mine", "1.0", "..."),
 *         ...
 */
#define RHEMA_PLUGIN_HEADER(T, K, MINOR, NAME, VERSION, DESC)                                      \
    {                                                                                              \
        RHEMA_ABI_MAJOR, (MINOR), (K), (uint32_t)sizeof(T), (NAME), (VERSION), (DESC)              \
    }

/*
 * A short name for an error code of the ABI range: "ENOTFOUND", ...
 * ("EUNKNOWN" otherwise).  It stays in the ABI header because it is the
 * ABI's vocabulary -- plugin, host and rhemactl print the same names -- and
 * carries no policy.
 */
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
