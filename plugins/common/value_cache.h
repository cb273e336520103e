/*
 * value_cache -- a bounded cache of (namespace, key) -> value for the
 * read caches of the storage plugins (file, sqlite): values, or a key's
 * absence, each with its version and expiry.
 *
 * The cache knows nothing of when its entries are valid: the plugin keeps
 * that (a generation, a WAL header) beside it, under the lock it takes
 * around every call (the cache has none).  Bounded: VCACHE_SETS sets of
 * VCACHE_WAYS entries (a key's set by its hash; a full set replaces one
 * at random), values up to VCACHE_VALUE_MAX bytes, VCACHE_BYTES_MAX in
 * all (past that nothing new is cached until entries are dropped).
 * Private to rhema (nothing here is ABI).
 */
#ifndef RHEMA_PLUGIN_VALUE_CACHE_H
#define RHEMA_PLUGIN_VALUE_CACHE_H

#include <stddef.h>
#include <stdint.h>

#define VCACHE_SETS 4096u
#define VCACHE_WAYS 4u
#define VCACHE_VALUE_MAX (64u * 1024u)
#define VCACHE_BYTES_MAX ((size_t)64 << 20)

struct rhema_vcache_entry {
    char *ns_key; /* ns '\0' key '\0', then the value; NULL: an empty slot */
    uint64_t hash, version, expires_ms;
    size_t ns_len, key_len, value_len;
    int absent; /* the key does not exist (version, value: none) */
};

struct rhema_vcache {
    size_t bytes;
    unsigned victim; /* the way a full set gives up next */
    struct rhema_vcache_entry slot[VCACHE_SETS * VCACHE_WAYS];
};

/* A new, empty cache (about 400 KiB of slots), or NULL. */
struct rhema_vcache *rhema_vcache_new(void);
void rhema_vcache_free(struct rhema_vcache *vc);

/* The hash of (ns, key) that find() and drop_hash() take. */
uint64_t rhema_vcache_hash(const char *ns, const char *key);

/* The entry of (ns, key) (hash: of them), or NULL. */
const struct rhema_vcache_entry *rhema_vcache_find(const struct rhema_vcache *vc, uint64_t hash,
                                                   const char *ns, const char *key);

/* An entry's value (value_len bytes). */
static inline const void *rhema_vcache_value(const struct rhema_vcache_entry *e)
{
    return e->ns_key + e->ns_len + e->key_len + 2;
}

/*
 * Put a value, or (absent) the key's absence.  A value too large or past
 * the budget is left out, and the key's entry dropped.
 */
void rhema_vcache_put(struct rhema_vcache *vc, const char *ns, const char *key, uint64_t version,
                      uint64_t expires_ms, const void *value, size_t value_len, int absent);

/* Drop every entry with this hash (a written key: a few more at worst). */
void rhema_vcache_drop_hash(struct rhema_vcache *vc, uint64_t hash);

/* Drop everything. */
void rhema_vcache_clear(struct rhema_vcache *vc);

#endif /* RHEMA_PLUGIN_VALUE_CACHE_H */
