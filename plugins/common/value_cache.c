/*
 * value_cache -- see value_cache.h.
 */
#include <stdlib.h>
#include <string.h>

#include "value_cache.h"

#define FNV_OFFSET 0xcbf29ce484222325ull

static uint64_t fnv1a64(uint64_t h, const void *data, size_t n)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

struct rhema_vcache *rhema_vcache_new(void) { return calloc(1, sizeof(struct rhema_vcache)); }

void rhema_vcache_free(struct rhema_vcache *vc)
{
    if (vc == NULL)
        return;
    rhema_vcache_clear(vc);
    free(vc);
}

uint64_t rhema_vcache_hash(const char *ns, const char *key)
{
    return fnv1a64(fnv1a64(FNV_OFFSET, ns, strlen(ns) + 1), key, strlen(key));
}

static struct rhema_vcache_entry *set_of(struct rhema_vcache *vc, uint64_t h)
{
    return &vc->slot[(h & (VCACHE_SETS - 1)) * VCACHE_WAYS];
}

static void drop(struct rhema_vcache *vc, struct rhema_vcache_entry *e)
{
    if (e->ns_key) {
        vc->bytes -= e->ns_len + e->key_len + 2 + e->value_len;
        free(e->ns_key);
    }
    memset(e, 0, sizeof *e);
}

void rhema_vcache_clear(struct rhema_vcache *vc)
{
    if (vc->bytes == 0) /* every entry holds at least its two NULs: none left */
        return;
    for (size_t i = 0; i < VCACHE_SETS * VCACHE_WAYS; i++)
        drop(vc, &vc->slot[i]);
}

const struct rhema_vcache_entry *rhema_vcache_find(const struct rhema_vcache *vc, uint64_t hash,
                                                   const char *ns, const char *key)
{
    const struct rhema_vcache_entry *set = &vc->slot[(hash & (VCACHE_SETS - 1)) * VCACHE_WAYS];
    for (unsigned w = 0; w < VCACHE_WAYS; w++) {
        const struct rhema_vcache_entry *e = &set[w];
        if (e->ns_key && e->hash == hash && strcmp(e->ns_key, ns) == 0 &&
            strcmp(e->ns_key + e->ns_len + 1, key) == 0)
            return e;
    }
    return NULL;
}

void rhema_vcache_put(struct rhema_vcache *vc, const char *ns, const char *key, uint64_t version,
                      uint64_t expires_ms, const void *value, size_t value_len, int absent)
{
    uint64_t h = rhema_vcache_hash(ns, key);
    struct rhema_vcache_entry *e = (struct rhema_vcache_entry *)rhema_vcache_find(vc, h, ns, key);
    size_t nl = strlen(ns), kl = strlen(key), need = nl + kl + 2 + value_len;
    if (e == NULL) {
        struct rhema_vcache_entry *set = set_of(vc, h);
        for (unsigned w = 0; w < VCACHE_WAYS && e == NULL; w++)
            if (set[w].ns_key == NULL)
                e = &set[w];
        if (e == NULL)
            e = &set[vc->victim++ % VCACHE_WAYS];
    }
    drop(vc, e);
    if (value_len > VCACHE_VALUE_MAX || vc->bytes + need > VCACHE_BYTES_MAX)
        return;
    char *p = malloc(need);
    if (p == NULL)
        return;
    memcpy(p, ns, nl + 1);
    memcpy(p + nl + 1, key, kl + 1);
    if (value_len)
        memcpy(p + nl + kl + 2, value, value_len);
    *e = (struct rhema_vcache_entry){p, h, version, expires_ms, nl, kl, value_len, absent};
    vc->bytes += need;
}

void rhema_vcache_drop_hash(struct rhema_vcache *vc, uint64_t hash)
{
    struct rhema_vcache_entry *set = set_of(vc, hash);
    for (unsigned w = 0; w < VCACHE_WAYS; w++)
        if (set[w].ns_key && set[w].hash == hash)
            drop(vc, &set[w]);
}
