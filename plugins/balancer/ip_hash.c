/*
 * ip_hash -- consistent hashing of a key onto the endpoints (Maglev).
 *
 * The key is ctx->key (select?key=...) when given, else the client address
 * ctx->client_addr as given (so with a port in it, per connection), else --
 * no key at all -- the host's random number, which makes the pick random.
 *
 * Maglev (Eisenbud et al., NSDI 2016): update() fills a lookup table of M
 * slots, M prime, by letting the endpoints take turns, each claiming the
 * next free slot of its own permutation of the table (offset and skip from
 * a hash of its id, so an endpoint keeps its permutation across updates
 * whatever its position in the array).  A pick hashes the key (FNV-1a and a
 * 64-bit finaliser) and reads one slot: O(length of the key), no search.
 * Heavier endpoints take more turns per round (weight / max weight, in
 * integers), so their share of slots, hence of keys, follows their weight.
 *
 * Disruption: removing one of N endpoints moves its own keys (1/N) plus
 * the slots whose claims shift because the turns changed, fewer the more
 * slots per endpoint: at N = 100, 1.54/N with M = 65537 (above the 1.5/N
 * target) and 1.23/N with the default M = 262147 (conformance suite).
 * Adding one moves about 1.2/(N+1).
 *
 * M is the smallest prime >= max(table_size, 100 n): 262147 (1 MiB) up to
 * 2621 endpoints.  update() costs O(M log M): about 20-40 ms at the
 * default size -- the price of the lower disruption; pick() is unaffected.
 *
 * Configuration (distributed.load_balancing.ip_hash):
 *   table_size = 262147;   # minimum slots of the lookup table, 1021 .. 67108864
 *
 * Snapshots: guard.h.
 */
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <rhema/balancer.h>

#include "../common/balancer_check.h"

#include "guard.h"

#define PLUGIN_NAME "ip_hash"
#define TABLE_SIZE_DEFAULT 262147
#define TABLE_SIZE_MIN 1021
#define TABLE_SIZE_MAX (1 << 26)
#define SLOTS_PER_ENDPOINT 100

/* ---- the strategy ---- */

struct snap {
    size_t n;
    uint32_t m;      /* slots, prime */
    uint32_t *table; /* m endpoint indexes */
};

struct rhema_balancer {
    struct guard g; /* the current struct snap (guard.h) */
    _Alignas(64) uint32_t table_size;
};

static void snap_free(struct snap *s)
{
    if (s == NULL)
        return;
    free(s->table);
    free(s);
}

/* splitmix64's finaliser. */
static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* FNV-1a over the bytes, then the finaliser (FNV alone has weak high bits). */
static uint64_t hash_bytes(const void *p, size_t len, uint64_t seed)
{
    const unsigned char *c = p;
    uint64_t h = 0xCBF29CE484222325ull ^ seed;

    for (size_t i = 0; i < len; i++) {
        h ^= c[i];
        h *= 0x100000001B3ull;
    }
    return mix64(h);
}

/* [0, m) from the high 32 bits of r. */
static uint32_t range32(uint64_t r, uint32_t m)
{
    return (uint32_t)(((r >> 32) * (uint64_t)m) >> 32);
}

static int is_prime(uint32_t x)
{
    if (x < 2)
        return 0;
    if (x % 2 == 0)
        return x == 2;
    for (uint32_t d = 3; d <= x / d; d += 2)
        if (x % d == 0)
            return 0;
    return 1;
}

/* The identity an endpoint's permutation derives from: its id, else its address. */
static const char *endpoint_name(const struct rhema_endpoint *e)
{
    return e->id != NULL ? e->id : e->address != NULL ? e->address : "";
}

/*
 * qsort has no context argument in C11: the arrays the comparison reads.  update() is called
 * from one thread at a time per instance, but instances of several services may update at
 * once, so these are per thread.
 */
static _Thread_local const uint64_t *sort_offsets, *sort_skips;

static int by_permutation(const void *pa, const void *pb)
{
    size_t a = *(const size_t *)pa, b = *(const size_t *)pb;

    if (sort_offsets[a] != sort_offsets[b])
        return sort_offsets[a] < sort_offsets[b] ? -1 : 1;
    if (sort_skips[a] != sort_skips[b])
        return sort_skips[a] < sort_skips[b] ? -1 : 1;
    return a < b ? -1 : a > b; /* the same id twice: array order */
}

/* Maglev's population, weighted: each round endpoint i claims w_i / w_max slots on average. */
static int populate(struct snap *s, const struct rhema_endpoint *eps)
{
    size_t n = s->n;
    uint32_t m = s->m, filled = 0, w_max = 0;
    uint64_t *offset = malloc(n * sizeof *offset), *skip = malloc(n * sizeof *skip);
    uint64_t *next = calloc(n, sizeof *next), *credit = calloc(n, sizeof *credit);
    size_t *order = malloc(n * sizeof *order);
    int rc = RHEMA_ENOMEM;

    s->table = malloc((size_t)m * sizeof *s->table);
    if (!offset || !skip || !next || !credit || !order || !s->table)
        goto out;
    for (size_t i = 0; i < n; i++) {
        const char *name = endpoint_name(rhema_endpoint_at(eps, i));
        size_t len = strlen(name);
        offset[i] = hash_bytes(name, len, 0x6D61676C6576ull) % m;
        skip[i] = hash_bytes(name, len, 0x736B6970ull) % (m - 1) + 1;
        next[i] = offset[i]; /* the permutation's position: offset + j * skip (mod m) */
        if (rhema_endpoint_at(eps, i)->weight > w_max)
            w_max = rhema_endpoint_at(eps, i)->weight;
    }
    /* turns in the order of the permutations, not of the array: the same table for the same
       endpoints in any order, so every rhema node maps a key to the same endpoint */
    for (size_t i = 0; i < n; i++)
        order[i] = i;
    sort_offsets = offset;
    sort_skips = skip;
    qsort(order, n, sizeof *order, by_permutation);
    memset(s->table, 0xFF, (size_t)m * sizeof *s->table);
    while (filled < m) {
        for (size_t k = 0; k < n && filled < m; k++) {
            size_t i = order[k];
            credit[i] += rhema_endpoint_at(eps, i)->weight;
            while (credit[i] >= w_max && filled < m) {
                uint32_t c;
                credit[i] -= w_max;
                do { /* the next slot of i's permutation that is still free */
                    c = (uint32_t)next[i];
                    next[i] += skip[i];
                    if (next[i] >= m)
                        next[i] -= m;
                } while (s->table[c] != UINT32_MAX);
                s->table[c] = (uint32_t)i;
                filled++;
            }
        }
    }
    rc = 0;
out:
    free(offset);
    free(skip);
    free(next);
    free(credit);
    free(order);
    return rc;
}

static int iph_create(const struct rhema_host *host, const struct rhema_cfg *cfg,
                      rhema_balancer **out, char **err)
{
    rhema_balancer *b;
    int64_t size = TABLE_SIZE_DEFAULT;
    int rc = host->cfg_int(cfg, "table_size", &size);

    if (rc == RHEMA_EINVAL)
        return host->set_error(err, RHEMA_EINVAL, "%s: table_size must be an integer",
                               host->cfg_where(cfg, "table_size"));
    if (size < TABLE_SIZE_MIN || size > TABLE_SIZE_MAX)
        return host->set_error(err, RHEMA_EINVAL, "%s: table_size %" PRId64 " is not in %d .. %d",
                               host->cfg_where(cfg, "table_size"), size, TABLE_SIZE_MIN,
                               TABLE_SIZE_MAX);
    b = aligned_alloc(64, (sizeof *b + 63) / 64 * 64);
    if (b == NULL)
        return host->set_error(err, RHEMA_ENOMEM, PLUGIN_NAME ": out of memory");
    memset(b, 0, sizeof *b);
    b->table_size = (uint32_t)size;
    *out = b;
    return 0;
}

static void iph_destroy(rhema_balancer *b)
{
    if (b == NULL)
        return;
    snap_free(guard_current(&b->g));
    free(b);
}

static int iph_update(rhema_balancer *b, const struct rhema_endpoint *eps, size_t n)
{
    struct snap *s;
    uint64_t want;

    if (!rhema_endpoints_valid(eps, n) || n > TABLE_SIZE_MAX / SLOTS_PER_ENDPOINT)
        return RHEMA_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (rhema_endpoint_at(eps, i)->weight == 0)
            return RHEMA_EINVAL;
    s = calloc(1, sizeof *s);
    if (s == NULL)
        return RHEMA_ENOMEM;
    s->n = n;
    if (n > 0) {
        want = (uint64_t)n * SLOTS_PER_ENDPOINT;
        if (want < b->table_size)
            want = b->table_size;
        while (!is_prime((uint32_t)want))
            want++;
        s->m = (uint32_t)want;
        if (populate(s, eps) != 0) {
            snap_free(s);
            return RHEMA_ENOMEM;
        }
    }
    snap_free(guard_publish(&b->g, s));
    return 0;
}

static int iph_pick(rhema_balancer *b, const struct rhema_pick_ctx *ctx, size_t *index)
{
    atomic_uint *held;
    struct snap *s;
    uint64_t h;

    /* hash before entering: the key is the caller's, not the snapshot's */
    if (ctx != NULL && ctx->key != NULL)
        h = hash_bytes(ctx->key, ctx->key_len, 0);
    else if (ctx != NULL && ctx->client_addr != NULL)
        h = hash_bytes(ctx->client_addr, strlen(ctx->client_addr), 0);
    else
        h = ctx != NULL ? ctx->random : 0;
    s = guard_enter(&b->g, &held);
    if (s == NULL || s->n == 0) {
        guard_leave(held);
        return RHEMA_ENOTFOUND;
    }
    *index = s->table[range32(h, s->m)];
    guard_leave(held);
    return 0;
}

static const struct rhema_balancer_plugin ip_hash_plugin = {
    .base = RHEMA_BALANCER_PLUGIN_HEADER(
        PLUGIN_NAME, "1.0.0", "consistent hashing of the key or client address (Maglev)"),
    .create = iph_create,
    .destroy = iph_destroy,
    .update = iph_update,
    .pick = iph_pick,
    .feedback = NULL,
};

/* Exported whatever -fvisibility the build uses: the one symbol the loader looks up. */
RHEMA_EXPORT int rhema_plugin_init(const struct rhema_host *host, const struct rhema_plugin **out)
{
    (void)host;
    *out = &ip_hash_plugin.base;
    return 0;
}
