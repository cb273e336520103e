/*
 * plugin -- dlopen, ABI checks, and the registry of loaded plugins.
 *
 * rhema_plugin_load() performs every check of DESIGN.md §3 and refuses a bad
 * plugin with one line naming the file and the mismatch:
 *   "<path>: no symbol rhema_plugin_init (...)"
 *   "<path>: abi_major 3 differs from the host's 2"
 *   "<path>: unknown kind 99"
 *   "<path>: size 40 is smaller than the 120 bytes storage minor 0 requires"
 *   "<path>: size 40 is smaller than the 208 bytes storage minor 1 requires
 *    (the plugin says minor 8)"
 *   "<path>: storage plugin 'memory' is already loaded from <other path>"
 *   "<path>: required method 'scan' is NULL"
 * Minors are per kind: a plugin built against a newer minor of its kind
 * than the host's loads when its size covers every member of the host's
 * minor (SQLite's iVersion rule).  The loader then copies the vtable into a
 * zeroed host-side struct (min(size, sizeof host struct)) so members
 * appended in later minors than the plugin's read as NULL.
 *
 * Threads: load and close on the main thread; lookups are read-only and
 * safe from any thread once loading is finished.
 */
#ifndef RHEMA_CORE_PLUGIN_H
#define RHEMA_CORE_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#include <rhema/balancer.h>
#include <rhema/cipher.h>
#include <rhema/compress.h>
#include <rhema/plugin.h>
#include <rhema/storage.h>

struct rhema_plugin_registry;

struct rhema_loaded_plugin {
    char *path;     /* the file it was loaded from */
    void *handle;   /* dlopen handle */
    uint32_t kind;  /* RHEMA_KIND_* */
    uint32_t abi_minor; /* the minor of its kind it was built against (may exceed ours) */
    const char *name, *version, *description; /* point into the plugin */
    union {
        struct rhema_plugin base;
        struct rhema_storage_plugin storage;
        struct rhema_compress_plugin compress;
        struct rhema_cipher_plugin cipher;
        struct rhema_balancer_plugin balancer;
    } vt; /* host-side copy, zero-filled past the plugin's size */
};

/* The host table handed to plugins (static, lives for the process). */
const struct rhema_host *rhema_host_get(void);

/*
 * The ABI this host implements, for -V and rhemactl version:
 * "2 (host 0, storage 1, compression 0, cipher 0, balancer 0)".
 */
const char *rhema_plugin_abi_string(void);

/* "storage", "compression", ... for a RHEMA_KIND_*, or "unknown". */
const char *rhema_plugin_kind_name(uint32_t kind);
/* File name prefix of a kind: "storage" -> "storage_<name>.so". */

int rhema_plugins_new(struct rhema_plugin_registry **out);
/* dlclose everything; every instance must be closed already. */
void rhema_plugins_free(struct rhema_plugin_registry *reg);

/*
 * Load a plugin.  `spec` is a path (contains '/') used as is, or a name
 * looked up in `dir` as "<kind>_<name>.so" for want_kind (every kind when
 * want_kind is 0) and then "<name>.so".  want_kind (0: any) refuses a plugin
 * of another kind.  Loading the same file twice returns the first load.
 * On failure returns a negative RHEMA_E* code and sets *err (malloc'd, one
 * line naming the file and the mismatch).
 */
int rhema_plugin_load(struct rhema_plugin_registry *reg, const char *spec, const char *dir,
                      uint32_t want_kind, const struct rhema_loaded_plugin **out, char **err);

/* A loaded plugin by kind and name, or NULL. */
const struct rhema_loaded_plugin *rhema_plugin_find(const struct rhema_plugin_registry *reg,
                                                    uint32_t kind, const char *name);

/* Iterate: the i-th loaded plugin (load order), or NULL past the end. */
const struct rhema_loaded_plugin *rhema_plugin_at(const struct rhema_plugin_registry *reg,
                                                  size_t i);

#endif /* RHEMA_CORE_PLUGIN_H */
