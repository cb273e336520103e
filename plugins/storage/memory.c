/*
 * memory -- the in-process storage plugin: an ordered map per instance.
 *
 * Features TTL | LEASES; not durable, not shared.  Everything lives in one
 * skip list per instance ordered by (ns, key) in strcmp order, so a scan
 * seeks in O(log n) and then walks k entries; entries of one namespace are
 * adjacent.  A hash table over the same nodes answers get(), get_many()
 * and the preconditions in O(1): a seek in a list of a few hundred
 * thousand entries is some twenty strcmp() (a session GET on memory spent
 * 15% of its CPU there and ran slower than on SQLite with its read cache).
 * The table grows by doubling when it holds more nodes than buckets; when
 * that allocation fails it keeps its buckets (longer chains), so a write
 * never fails because of it.  A pthread rwlock protects the list and the
 * table: get, scan and stats take it
 * for reading (in parallel), writes take it for writing.  The skip list's
 * random levels and the version counter are only touched under the write
 * lock.
 *
 * Versions come from one per-instance counter, so they strictly increase
 * across all keys and a key that is deleted and created again never reuses
 * an earlier version (no ABA for a compare-and-set client).
 *
 * Sequenced writes (storage minor 3) are keyed by their version, drawn
 * under the write lock like every version, so a reader (under the read
 * lock) never sees a record of a lower version appear after one of a
 * higher.  watch() is NULL: the memory backend is not shared, and the host
 * of the one process that holds it knows its own writes (it polls with
 * scan() where it must).
 *
 * TTLs use host->monotonic_ns().  An expired entry is invisible to every
 * call at once; it is unlinked lazily: by the next write of that key, and
 * by a bounded sweep every PURGE_EVERY writes that resumes where the last
 * one stopped.
 *
 * Leases live in a small table under their own mutex, also on the monotonic
 * clock (this process is the backend).  A released or expired lease keeps
 * its row, so its epoch never goes back while the instance lives.
 *
 * Scan copies entries out in chunks under the read lock and runs the
 * callback with no lock held, so a callback may use other connections of
 * the same instance (even from the same thread) without deadlocking.
 *
 * backup(path) writes a dump (temp file, fsync, rename, directory fsync) in
 * this little-endian binary format:
 *     "RHEMAMEM1\n"                       10 bytes of magic
 *     u64 version_counter
 *     records, each starting with a u8 type:
 *       1 entry: u32 ns_len, ns, u32 key_len, key, u64 version,
 *                u64 ttl_remaining_ms (0: none), u64 value_len, value
 *       2 lease: u32 name_len, name, u32 holder_len, holder, u64 epoch,
 *                u64 ttl_remaining_ms
 *       0 end:   u64 number of records before it
 *
 * restore(path) reads such a dump whole and checks it (magic, record
 * types, lengths inside the file, valid namespaces and keys in strictly
 * increasing (ns, key) order, versions > 0 and <= the counter, the end
 * record's count, nothing after it) before it builds a new list; the swap
 * happens under both locks with every node already allocated, so it
 * cannot fail half way.  TTLs restart from the time they had left.  The
 * memory backend lives in one process: a restore only means something
 * inside that process (the conformance suite, an embedding program).
 *
 * rate() keeps its GCRA states in a rhema_rate_table of the instance
 * (../common/rate_table.c): one mutex, keys at rest swept as the table
 * grows, at most RATE_MAX_KEYS keys (past that the one that rests first is
 * forgotten).  They are not data: backup, restore, scan and stats never
 * see them.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <rhema/storage.h>

#include "../common/rate_table.h"
#include "../common/storage_check.h"
#include "../common/value_cache.h" /* rhema_vcache_hash() */

#define PLUGIN_NAME "memory"
#define SL_MAX_LEVEL 24
#define PURGE_EVERY 32u /* writes between two sweeps */
#define PURGE_VISIT 64u /* nodes a sweep visits at most */
#define SCAN_CHUNK_ENTRIES 128u
#define SCAN_CHUNK_BYTES (1u << 20)
#define MEM_ERRMSG_MAX 256
#define RATE_MAX_KEYS ((size_t)1 << 20) /* rate() parties kept at most */

struct mem_node {
    char *ns;  /* ns and key share one allocation: "ns\0key\0" */
    char *key;
    size_t key_len;
    unsigned char *value; /* NULL when value_len is 0 */
    size_t value_len;
    uint64_t version;
    uint64_t expires_ns; /* monotonic deadline; 0: never */
    uint64_t hash;       /* of (ns, key): the hash table's */
    struct mem_node *hnext; /* the next node of its bucket */
    int level;
    struct mem_node *next[]; /* level pointers */
};

struct mem_lease {
    char *name;
    char holder[RHEMA_LEASE_HOLDER_MAX + 1]; /* "" when free */
    uint64_t epoch;      /* last granted epoch; never decreases */
    uint64_t expires_ns; /* meaningful only while holder is set */
};

struct rhema_storage_instance {
    const struct rhema_host *host;

    pthread_rwlock_t lock; /* the skip list and everything below it */
    struct mem_node *head; /* sentinel with SL_MAX_LEVEL pointers */
    int level;             /* highest level in use, >= 1 */
    uint64_t rng;          /* xorshift state for levels */
    uint64_t version_counter;
    size_t n_ttl;          /* nodes with a deadline: no sweep when 0 */
    unsigned writes;       /* writes since the last sweep */
    char *purge_ns, *purge_key; /* where the next sweep resumes; NULL: start */
    struct mem_node **buckets;  /* the hash table: nbuckets (a power of two) chains */
    size_t nbuckets, nnodes;

    pthread_mutex_t lease_lock;
    struct mem_lease *leases;
    size_t n_leases, cap_leases;

    struct rhema_rate_table *rate; /* rate(): its own lock */
};

struct scan_item {
    size_t key_off, key_len, value_off, value_len;
    uint64_t version;
};

struct rhema_storage_conn {
    rhema_storage_instance *inst;
    unsigned char *buf; /* get(): the value returned */
    size_t buf_cap;
    unsigned char *arena; /* scan(): keys and values of one chunk */
    size_t arena_len, arena_cap;
    struct scan_item *items;
    size_t n_items, cap_items;
    char *cursor; /* scan(): last key seen, to resume after */
    size_t cursor_cap;
    char err[MEM_ERRMSG_MAX];
};

/* ---- small helpers ---- */

static void conn_error(rhema_storage_conn *c, const char *fmt, ...) RHEMA_PRINTF_LIKE(2, 3);

static void conn_error(rhema_storage_conn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
}

static int check_ns_key(rhema_storage_conn *c, const char *ns, const char *key, size_t *key_len)
{
    const char *why = rhema_storage_key_invalid(ns, key);
    if (why) {
        conn_error(c, "%s", why);
        return RHEMA_EINVAL;
    }
    *key_len = strlen(key);
    return 0;
}

/* now + ms, saturating; 0 ms means "never" (0). */
static uint64_t deadline_ns(uint64_t now, uint64_t ms)
{
    uint64_t d;
    if (ms == 0)
        return 0;
    if (ms > (UINT64_MAX - now) / 1000000u)
        return UINT64_MAX;
    d = now + ms * 1000000u;
    return d == 0 ? 1 : d;
}

static int expired(const struct mem_node *n, uint64_t now)
{
    return n->expires_ns != 0 && n->expires_ns <= now;
}

static uint64_t remaining_ms(uint64_t deadline, uint64_t now)
{
    if (deadline == 0 || deadline <= now)
        return 0;
    return (deadline - now + 999999u) / 1000000u;
}

/* ---- the skip list (callers hold inst->lock as documented) ---- */

static int node_cmp(const struct mem_node *n, const char *ns, const char *key)
{
    int r = strcmp(n->ns, ns);
    return r != 0 ? r : strcmp(n->key, key);
}

/*
 * The first node >= (ns, key), or NULL.  When update is not NULL it receives
 * the rightmost node before that position on every level (for insert/unlink).
 */
static struct mem_node *sl_seek(rhema_storage_instance *in, const char *ns, const char *key,
                                struct mem_node **update)
{
    struct mem_node *x = in->head;
    int i;
    for (i = in->level - 1; i >= 0; i--) {
        while (x->next[i] != NULL && node_cmp(x->next[i], ns, key) < 0)
            x = x->next[i];
        if (update != NULL)
            update[i] = x;
    }
    return x->next[0];
}

/* ---- the hash table over the nodes (same lock) ---- */

static struct mem_node *ht_find(const rhema_storage_instance *in, const char *ns, const char *key)
{
    uint64_t h = rhema_vcache_hash(ns, key);
    struct mem_node *n = in->buckets[h & (in->nbuckets - 1)];
    for (; n != NULL; n = n->hnext)
        if (n->hash == h && strcmp(n->key, key) == 0 && strcmp(n->ns, ns) == 0)
            return n;
    return NULL;
}

/* Double the buckets when they are fewer than the nodes; on ENOMEM keep them. */
static void ht_grow(rhema_storage_instance *in)
{
    size_t nb = in->nbuckets * 2;
    struct mem_node **b;
    if (in->nnodes <= in->nbuckets || nb > ((size_t)1 << 40) || (b = calloc(nb, sizeof *b)) == NULL)
        return;
    for (size_t i = 0; i < in->nbuckets; i++) {
        struct mem_node *n = in->buckets[i], *next;
        for (; n != NULL; n = next) {
            next = n->hnext;
            n->hnext = b[n->hash & (nb - 1)];
            b[n->hash & (nb - 1)] = n;
        }
    }
    free(in->buckets);
    in->buckets = b;
    in->nbuckets = nb;
}

static void ht_link(rhema_storage_instance *in, struct mem_node *n)
{
    struct mem_node **b = &in->buckets[n->hash & (in->nbuckets - 1)];
    n->hnext = *b;
    *b = n;
    in->nnodes++;
    ht_grow(in);
}

static void ht_unlink(rhema_storage_instance *in, struct mem_node *n)
{
    struct mem_node **p = &in->buckets[n->hash & (in->nbuckets - 1)];
    while (*p != NULL && *p != n)
        p = &(*p)->hnext;
    if (*p == n) {
        *p = n->hnext;
        in->nnodes--;
    }
}

static int sl_random_level(rhema_storage_instance *in)
{
    int lvl = 1;
    uint64_t r;
    in->rng ^= in->rng << 13;
    in->rng ^= in->rng >> 7;
    in->rng ^= in->rng << 17;
    r = in->rng;
    while (lvl < SL_MAX_LEVEL && (r & 3u) == 0) { /* p = 1/4 */
        lvl++;
        r >>= 2;
    }
    return lvl;
}

static void node_free(struct mem_node *n)
{
    if (n == NULL)
        return;
    free(n->ns);
    free(n->value);
    free(n);
}

static struct mem_node *node_new(rhema_storage_instance *in, const char *ns, const char *key,
                                 size_t key_len)
{
    size_t ns_len = strlen(ns);
    int lvl = sl_random_level(in);
    struct mem_node *n = calloc(1, sizeof *n + (size_t)lvl * sizeof n->next[0]);
    if (n == NULL)
        return NULL;
    n->ns = malloc(ns_len + 1 + key_len + 1);
    if (n->ns == NULL) {
        free(n);
        return NULL;
    }
    memcpy(n->ns, ns, ns_len + 1);
    n->key = n->ns + ns_len + 1;
    memcpy(n->key, key, key_len + 1);
    n->key_len = key_len;
    n->hash = rhema_vcache_hash(n->ns, n->key);
    n->level = lvl;
    return n;
}

/* Unlink node n, whose predecessors are in update[]; frees it. */
static void sl_unlink(rhema_storage_instance *in, struct mem_node *n, struct mem_node **update)
{
    int i;
    for (i = 0; i < in->level; i++) {
        if (update[i]->next[i] != n)
            break;
        update[i]->next[i] = n->next[i];
    }
    while (in->level > 1 && in->head->next[in->level - 1] == NULL)
        in->level--;
    if (n->expires_ns != 0)
        in->n_ttl--;
    ht_unlink(in, n);
    node_free(n);
}

/*
 * A bounded sweep of expired nodes, resuming where the previous one stopped
 * and wrapping around at the end.  Write lock held.  Allocation failures
 * only make it restart from the beginning next time.
 */
static void purge_some(rhema_storage_instance *in, uint64_t now)
{
    struct mem_node *n, *victims[PURGE_VISIT];
    size_t nv = 0, i;
    unsigned visited = 0;
    char *next_ns = NULL, *next_key = NULL;

    if (in->n_ttl == 0)
        return;
    n = in->purge_ns != NULL ? sl_seek(in, in->purge_ns, in->purge_key, NULL) : in->head->next[0];
    while (n != NULL && visited < PURGE_VISIT) {
        if (expired(n, now))
            victims[nv++] = n;
        n = n->next[0];
        visited++;
    }
    if (n != NULL) { /* resume at n next time; copy before unlinking anything */
        size_t ns_len = strlen(n->ns);
        next_ns = malloc(ns_len + 1 + n->key_len + 1);
        if (next_ns != NULL) {
            memcpy(next_ns, n->ns, ns_len + 1 + n->key_len + 1);
            next_key = next_ns + ns_len + 1;
        }
    }
    for (i = 0; i < nv; i++) {
        struct mem_node *update[SL_MAX_LEVEL];
        struct mem_node *v = sl_seek(in, victims[i]->ns, victims[i]->key, update);
        if (v == victims[i])
            sl_unlink(in, v, update);
    }
    free(in->purge_ns);
    in->purge_ns = next_ns;
    in->purge_key = next_key;
}

static void note_write(rhema_storage_instance *in, uint64_t now)
{
    if (++in->writes >= PURGE_EVERY) {
        in->writes = 0;
        purge_some(in, now);
    }
}

/* ---- lifecycle ---- */

/*
 * The memory backend has no settings: its group must be empty, which the
 * host's unknown-key check enforces (no key is read).  check() therefore
 * accepts any group; open() shares it so the two cannot drift.
 */
static int mem_check(const struct rhema_host *host, const struct rhema_cfg *cfg, char **err)
{
    (void)host, (void)cfg, (void)err;
    return 0;
}

static int mem_open(const struct rhema_host *host, const struct rhema_cfg *cfg,
                    rhema_storage_instance **out, char **err)
{
    rhema_storage_instance *in;
    int rc = mem_check(host, cfg, err);
    if (rc != 0)
        return rc;

    in = calloc(1, sizeof *in);
    if (in == NULL)
        return host->set_error(err, RHEMA_ENOMEM, "memory: out of memory");
    in->head = calloc(1, sizeof *in->head + SL_MAX_LEVEL * sizeof in->head->next[0]);
    if (in->head == NULL) {
        free(in);
        return host->set_error(err, RHEMA_ENOMEM, "memory: out of memory");
    }
    if (pthread_rwlock_init(&in->lock, NULL) != 0) {
        free(in->head);
        free(in);
        return host->set_error(err, RHEMA_ENOMEM, "memory: cannot create a lock");
    }
    if (pthread_mutex_init(&in->lease_lock, NULL) != 0) {
        pthread_rwlock_destroy(&in->lock);
        free(in->head);
        free(in);
        return host->set_error(err, RHEMA_ENOMEM, "memory: cannot create a lock");
    }
    if ((in->rate = rhema_rate_table_new(RATE_MAX_KEYS)) == NULL) {
        pthread_mutex_destroy(&in->lease_lock);
        pthread_rwlock_destroy(&in->lock);
        free(in->head);
        free(in);
        return host->set_error(err, RHEMA_ENOMEM, "memory: out of memory");
    }
    in->nbuckets = 1024;
    if ((in->buckets = calloc(in->nbuckets, sizeof *in->buckets)) == NULL) {
        rhema_rate_table_free(in->rate);
        pthread_mutex_destroy(&in->lease_lock);
        pthread_rwlock_destroy(&in->lock);
        free(in->head);
        free(in);
        return host->set_error(err, RHEMA_ENOMEM, "memory: out of memory");
    }
    in->host = host;
    in->level = 1;
    in->rng = (host->monotonic_ns() ^ (uint64_t)(uintptr_t)in) | 1u;
    *out = in;
    return 0;
}

static void mem_close(rhema_storage_instance *in)
{
    struct mem_node *n, *next;
    size_t i;
    if (in == NULL)
        return;
    for (n = in->head->next[0]; n != NULL; n = next) {
        next = n->next[0];
        node_free(n);
    }
    free(in->head);
    free(in->buckets);
    free(in->purge_ns);
    for (i = 0; i < in->n_leases; i++)
        free(in->leases[i].name);
    free(in->leases);
    rhema_rate_table_free(in->rate);
    pthread_mutex_destroy(&in->lease_lock);
    pthread_rwlock_destroy(&in->lock);
    free(in);
}

static int mem_connect(rhema_storage_instance *in, rhema_storage_conn **out, char **err)
{
    rhema_storage_conn *c = calloc(1, sizeof *c);
    if (c == NULL)
        return in->host->set_error(err, RHEMA_ENOMEM, "memory: out of memory");
    c->inst = in;
    *out = c;
    return 0;
}

static void mem_disconnect(rhema_storage_conn *c)
{
    if (c == NULL)
        return;
    free(c->buf);
    free(c->arena);
    free(c->items);
    free(c->cursor);
    free(c);
}

/* ---- reads ---- */

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    size_t ncap;
    void *np;
    if (need <= *cap)
        return 0;
    ncap = *cap ? *cap : 64;
    while (ncap < need) {
        if (ncap > SIZE_MAX / 2 / elem)
            return RHEMA_ENOMEM;
        ncap *= 2;
    }
    np = realloc(*p, ncap * elem);
    if (np == NULL)
        return RHEMA_ENOMEM;
    *p = np;
    *cap = ncap;
    return 0;
}

static int mem_get(rhema_storage_conn *c, const char *ns, const char *key,
                   struct rhema_storage_value *out)
{
    rhema_storage_instance *in = c->inst;
    struct mem_node *n;
    size_t key_len;
    uint64_t now;
    int rc = check_ns_key(c, ns, key, &key_len);
    if (rc != 0)
        return rc;

    now = in->host->monotonic_ns();
    pthread_rwlock_rdlock(&in->lock);
    n = ht_find(in, ns, key);
    if (n == NULL || expired(n, now)) {
        rc = RHEMA_ENOTFOUND;
    } else if (grow((void **)&c->buf, &c->buf_cap, n->value_len + 1, 1) != 0) {
        rc = RHEMA_ENOMEM;
    } else {
        if (n->value_len > 0)
            memcpy(c->buf, n->value, n->value_len);
        out->data = c->buf;
        out->len = n->value_len;
        out->version = n->version;
    }
    pthread_rwlock_unlock(&in->lock);
    if (rc == RHEMA_ENOTFOUND)
        conn_error(c, "key not found");
    else if (rc == RHEMA_ENOMEM)
        conn_error(c, "out of memory");
    return rc;
}

/*
 * get_many: the keys under one read lock (one state for all of them), the
 * values one after the other in the connection's buffer.
 */
static int mem_get_many(rhema_storage_conn *c, const char *const *ns, const char *const *keys,
                        size_t n, struct rhema_storage_value *out, int *rcs)
{
    rhema_storage_instance *in = c->inst;
    size_t off[RHEMA_STORAGE_GET_MANY_MAX], at = 0, i;
    int rc = 0;
    const char *bad = rhema_storage_get_many_invalid(ns, keys, n, out, rcs);
    if (bad != NULL) {
        conn_error(c, "%s", bad);
        return RHEMA_EINVAL;
    }
    for (i = 0; i < n; i++) {
        size_t key_len;
        if ((rc = check_ns_key(c, ns[i], keys[i], &key_len)) != 0)
            return rc;
    }
    uint64_t now = in->host->monotonic_ns();
    pthread_rwlock_rdlock(&in->lock);
    for (i = 0; i < n && rc == 0; i++) {
        struct mem_node *node = ht_find(in, ns[i], keys[i]);
        out[i].len = 0;
        out[i].version = 0;
        if (node == NULL || expired(node, now)) {
            rcs[i] = RHEMA_ENOTFOUND;
            continue;
        }
        if (grow((void **)&c->buf, &c->buf_cap, at + node->value_len + 1, 1) != 0) {
            rc = RHEMA_ENOMEM;
            break;
        }
        if (node->value_len > 0)
            memcpy(c->buf + at, node->value, node->value_len);
        c->buf[at + node->value_len] = '\0';
        off[i] = at;
        at += node->value_len + 1;
        rcs[i] = 0;
        out[i].len = node->value_len;
        out[i].version = node->version;
    }
    pthread_rwlock_unlock(&in->lock);
    if (rc != 0) {
        conn_error(c, "out of memory");
        return rc;
    }
    for (i = 0; i < n; i++) /* the buffer has stopped moving */
        out[i].data = rcs[i] == 0 ? c->buf + off[i] : NULL;
    return 0;
}

/*
 * Fill the connection's chunk with live entries of ns in [start, to),
 * start excluded when `after` is set.  Read lock held by the caller.
 * Returns 0 or ENOMEM; *more says whether entries may remain.
 */
static int scan_fill(rhema_storage_conn *c, const char *ns, const char *start, int after,
                     const char *to, size_t want, uint64_t now, int *more)
{
    rhema_storage_instance *in = c->inst;
    struct mem_node *n = sl_seek(in, ns, start, NULL);
    c->n_items = 0;
    c->arena_len = 0;
    *more = 0;
    if (after && n != NULL && node_cmp(n, ns, start) == 0)
        n = n->next[0];
    for (; n != NULL; n = n->next[0]) {
        struct scan_item *it;
        if (strcmp(n->ns, ns) != 0 || (to != NULL && strcmp(n->key, to) >= 0))
            return 0;
        if (expired(n, now))
            continue;
        if (c->n_items >= want || c->n_items >= SCAN_CHUNK_ENTRIES ||
            (c->n_items > 0 && c->arena_len >= SCAN_CHUNK_BYTES)) {
            *more = 1;
            return 0;
        }
        if (grow((void **)&c->items, &c->cap_items, c->n_items + 1, sizeof *c->items) != 0 ||
            grow((void **)&c->arena, &c->arena_cap, c->arena_len + n->key_len + 1 + n->value_len,
                 1) != 0)
            return RHEMA_ENOMEM;
        it = &c->items[c->n_items++];
        it->key_off = c->arena_len;
        it->key_len = n->key_len;
        memcpy(c->arena + c->arena_len, n->key, n->key_len + 1);
        c->arena_len += n->key_len + 1;
        it->value_off = c->arena_len;
        it->value_len = n->value_len;
        if (n->value_len > 0)
            memcpy(c->arena + c->arena_len, n->value, n->value_len);
        c->arena_len += n->value_len;
        it->version = n->version;
    }
    return 0;
}

static int mem_scan(rhema_storage_conn *c, const char *ns, const char *from_key, const char *to_key,
                    size_t limit, rhema_storage_scan_cb cb, void *ctx)
{
    rhema_storage_instance *in = c->inst;
    size_t done = 0, i;
    int after = 0;
    const char *start = from_key != NULL ? from_key : "";

    const char *why = rhema_storage_scan_invalid(ns, cb);
    if (why != NULL) {
        conn_error(c, "%s", why);
        return RHEMA_EINVAL;
    }
    for (;;) {
        int more, rc;
        size_t want = limit ? limit - done : SIZE_MAX;
        uint64_t now = in->host->monotonic_ns();

        pthread_rwlock_rdlock(&in->lock);
        rc = scan_fill(c, ns, start, after, to_key, want, now, &more);
        pthread_rwlock_unlock(&in->lock);
        if (rc != 0) {
            conn_error(c, "out of memory");
            return rc;
        }
        for (i = 0; i < c->n_items; i++) {
            const struct scan_item *it = &c->items[i];
            rc = cb(ctx, (const char *)c->arena + it->key_off,
                    it->value_len ? c->arena + it->value_off : (const void *)"", it->value_len,
                    it->version);
            if (rc < 0)
                return rc;
            if (rc > 0)
                return 0;
        }
        done += c->n_items;
        if (!more || (limit && done >= limit) || c->n_items == 0)
            return 0;
        /* resume after the last key of this chunk */
        {
            const struct scan_item *last = &c->items[c->n_items - 1];
            if (grow((void **)&c->cursor, &c->cursor_cap, last->key_len + 1, 1) != 0) {
                conn_error(c, "out of memory");
                return RHEMA_ENOMEM;
            }
            memcpy(c->cursor, c->arena + last->key_off, last->key_len + 1);
            start = c->cursor;
            after = 1;
        }
    }
}

/*
 * Counted STATS_CHUNK nodes at a time, the read lock released between
 * chunks: rhemad asks for stats(NULL) every couple of seconds (the data
 * size gauge), and one walk of a large store under the lock held every
 * writer for all of it (a p99 of 30 ms on session PUTs).  Not a snapshot
 * while writers write -- a gauge -- and exact when nothing does.
 */
#define STATS_CHUNK 4096

static int mem_stats(rhema_storage_conn *c, const char *ns, struct rhema_storage_stats *out)
{
    rhema_storage_instance *in = c->inst;
    struct mem_node *n;
    uint64_t now, entries = 0, bytes = 0;
    char at_ns[RHEMA_STORAGE_NS_MAX + 1], at_key[RHEMA_STORAGE_KEY_MAX + 1];
    int resume = 0, more = 1;

    const char *why = rhema_storage_stats_invalid(ns, out);
    if (why != NULL) {
        conn_error(c, "%s", why);
        return RHEMA_EINVAL;
    }
    now = in->host->monotonic_ns();
    while (more) {
        size_t seen = 0;
        pthread_rwlock_rdlock(&in->lock);
        if (resume) { /* past the last node counted */
            n = sl_seek(in, at_ns, at_key, NULL);
            if (n != NULL && strcmp(n->ns, at_ns) == 0 && strcmp(n->key, at_key) == 0)
                n = n->next[0];
        } else {
            n = ns != NULL ? sl_seek(in, ns, "", NULL) : in->head->next[0];
        }
        struct mem_node *last = NULL;
        more = 0;
        for (; n != NULL; n = n->next[0]) {
            if (ns != NULL && strcmp(n->ns, ns) != 0)
                break;
            if (++seen > STATS_CHUNK) {
                more = 1;
                break;
            }
            last = n;
            if (expired(n, now))
                continue;
            entries++;
            bytes += n->key_len + n->value_len;
        }
        if (more) { /* where the next chunk starts, copied while the node is ours */
            snprintf(at_ns, sizeof at_ns, "%s", last->ns);
            snprintf(at_key, sizeof at_key, "%s", last->key);
            resume = 1;
        }
        pthread_rwlock_unlock(&in->lock);
    }
    out->entries = entries;
    out->bytes = bytes;
    return 0;
}

/* ---- writes (write lock held) ---- */

/* Validate one write's arguments; no lock needed. */
static int check_write(rhema_storage_conn *c, const struct rhema_storage_write *w)
{
    const char *why = rhema_storage_write_invalid(w);
    if (why != NULL) {
        conn_error(c, "%s", why);
        return RHEMA_EINVAL;
    }
    return 0;
}

/*
 * The live node of (ns, key) or NULL, and whether the write's precondition
 * holds: 0, ECONFLICT or (delete of an absent key) ENOTFOUND.
 */
static int precondition(rhema_storage_conn *c, const struct rhema_storage_write *w,
                        const struct mem_node *live)
{
    uint64_t ev = w->expected_version;
    if (w->op == RHEMA_WRITE_DEL && live == NULL) {
        conn_error(c, "key not found");
        return RHEMA_ENOTFOUND;
    }
    if (ev == RHEMA_VERSION_ANY)
        return 0;
    if (ev == RHEMA_VERSION_ABSENT) {
        if (live != NULL) {
            conn_error(c, "key exists (version %llu)", (unsigned long long)live->version);
            return RHEMA_ECONFLICT;
        }
        return 0;
    }
    if (live == NULL) {
        conn_error(c, "expected version %llu, key absent", (unsigned long long)ev);
        return RHEMA_ECONFLICT;
    }
    if (live->version != ev) {
        conn_error(c, "expected version %llu, found %llu", (unsigned long long)ev,
                   (unsigned long long)live->version);
        return RHEMA_ECONFLICT;
    }
    return 0;
}

static struct mem_node *find_live(rhema_storage_instance *in, const char *ns, const char *key,
                                  uint64_t now)
{
    struct mem_node *n = ht_find(in, ns, key);
    if (n == NULL || expired(n, now))
        return NULL;
    return n;
}

/*
 * Apply one write whose precondition holds, to `key` (w->key, or the key a
 * sequenced write built from `version`); a put stores `version`.  May fail
 * only with ENOMEM.
 */
static int apply_write(rhema_storage_conn *c, struct rhema_storage_write *w, const char *key,
                       uint64_t version, uint64_t now)
{
    rhema_storage_instance *in = c->inst;
    struct mem_node *update[SL_MAX_LEVEL];
    struct mem_node *n = sl_seek(in, w->ns, key, update);
    int exists = n != NULL && node_cmp(n, w->ns, key) == 0;
    unsigned char *value = NULL;
    int i;

    if (w->op == RHEMA_WRITE_DEL) {
        if (exists)
            sl_unlink(in, n, update);
        return 0;
    }
    if (w->value_len > 0) {
        value = malloc(w->value_len);
        if (value == NULL) {
            conn_error(c, "out of memory");
            return RHEMA_ENOMEM;
        }
        memcpy(value, w->value, w->value_len);
    }
    if (!exists) {
        n = node_new(in, w->ns, key, strlen(key));
        if (n == NULL) {
            free(value);
            conn_error(c, "out of memory");
            return RHEMA_ENOMEM;
        }
        if (n->level > in->level) {
            for (i = in->level; i < n->level; i++)
                update[i] = in->head;
            in->level = n->level;
        }
        for (i = 0; i < n->level; i++) {
            n->next[i] = update[i]->next[i];
            update[i]->next[i] = n;
        }
        ht_link(in, n);
    } else {
        free(n->value);
        if (n->expires_ns != 0)
            in->n_ttl--;
    }
    n->value = value;
    n->value_len = w->value_len;
    n->version = version;
    n->expires_ns = deadline_ns(now, w->ttl_ms);
    if (n->expires_ns != 0)
        in->n_ttl++;
    w->new_version = n->version;
    return 0;
}

static int mem_put(rhema_storage_conn *c, struct rhema_storage_write *w)
{
    rhema_storage_instance *in = c->inst;
    char seq_key[RHEMA_STORAGE_KEY_MAX + 1];
    const char *key = w->key;
    uint64_t now, version;
    int rc = check_write(c, w);
    if (rc != 0)
        return rc;
    if (w->op != RHEMA_WRITE_PUT) {
        conn_error(c, "put() takes RHEMA_WRITE_PUT");
        return RHEMA_EINVAL;
    }
    now = in->host->monotonic_ns();
    pthread_rwlock_wrlock(&in->lock);
    version = in->version_counter + 1;
    if (rhema_storage_write_sequenced(w)) /* a record of its own: a fresh version, no check */
        key = rhema_storage_seq_key(seq_key, w->key, version);
    else
        rc = precondition(c, w, find_live(in, w->ns, w->key, now));
    if (rc == 0)
        rc = apply_write(c, w, key, version, now);
    if (rc == 0) {
        in->version_counter = version;
        note_write(in, now);
    }
    pthread_rwlock_unlock(&in->lock);
    return rc;
}

static int mem_del(rhema_storage_conn *c, const char *ns, const char *key, uint64_t expected_version)
{
    struct rhema_storage_write w = {.size = sizeof(struct rhema_storage_write),
                                    .op = RHEMA_WRITE_DEL,
                                    .ns = ns,
                                    .key = key,
                                    .expected_version = expected_version};
    rhema_storage_instance *in = c->inst;
    uint64_t now;
    int rc = check_write(c, &w);
    if (rc != 0)
        return rc;
    now = in->host->monotonic_ns();
    pthread_rwlock_wrlock(&in->lock);
    rc = precondition(c, &w, find_live(in, ns, key, now));
    if (rc == 0)
        rc = apply_write(c, &w, key, 0, now);
    if (rc == 0)
        note_write(in, now);
    pthread_rwlock_unlock(&in->lock);
    return rc;
}

/*
 * All or nothing without an undo log: the preconditions are checked first
 * against a simulated view (the live state overlaid with the batch's own
 * earlier writes), and memory for every put is reserved before anything
 * changes, so applying cannot fail half way.  The simulation assigns each
 * put its version -- the next of the counter, or for a sequenced write the
 * version of the put it follows -- and builds a sequenced write's key from
 * it, so later writes of the batch see that key; applying stores exactly
 * those versions and keys.  A batch is applied whole under the write lock
 * and versions are drawn under it, so sequenced records become visible in
 * version order with nothing more to do.
 */
static int mem_batch(rhema_storage_conn *c, struct rhema_storage_write *w, size_t n)
{
    rhema_storage_instance *in = c->inst;
    uint64_t now, sim_version;
    size_t i, j;
    int rc = 0;
    unsigned char **values = NULL;
    struct mem_node **fresh = NULL;
    char **seq_keys = NULL;   /* a sequenced write's key, else NULL */
    const char **keys = NULL; /* the key each write acts on */

    if (n == 0)
        return 0;
    const char *why = NULL;
    if ((rc = rhema_storage_batch_check(c, w, n, check_write, &why)) != 0) {
        if (why != NULL)
            conn_error(c, "%s", why);
        return rc;
    }
    values = calloc(n, sizeof *values);
    fresh = calloc(n, sizeof *fresh);
    seq_keys = calloc(n, sizeof *seq_keys);
    keys = calloc(n, sizeof *keys);
    if (values == NULL || fresh == NULL || seq_keys == NULL || keys == NULL) {
        rc = RHEMA_ENOMEM;
        conn_error(c, "out of memory");
        goto out;
    }
    for (i = 0; i < n; i++) {
        keys[i] = w[i].key;
        if (rhema_storage_write_sequenced(&w[i])) {
            if ((seq_keys[i] = malloc(RHEMA_STORAGE_KEY_MAX + 1)) == NULL) {
                rc = RHEMA_ENOMEM;
                conn_error(c, "out of memory");
                goto out;
            }
            keys[i] = seq_keys[i]; /* filled by the simulation */
        }
    }

    now = in->host->monotonic_ns();
    pthread_rwlock_wrlock(&in->lock);
    /* 1. preconditions, against the state as the batch itself leaves it */
    sim_version = in->version_counter;
    for (i = 0; i < n && rc == 0; i++) {
        struct mem_node sim, *live = NULL;
        int decided = 0;
        if (seq_keys[i] != NULL) { /* a new record: no precondition */
            w[i].new_version =
                rhema_storage_seq_shares_previous(w, i) ? w[i - 1].new_version : ++sim_version;
            rhema_storage_seq_key(seq_keys[i], w[i].key, w[i].new_version);
            continue;
        }
        /* the latest earlier write of this key in the batch decides */
        for (j = i; j-- > 0;) {
            if (strcmp(w[j].ns, w[i].ns) == 0 && strcmp(keys[j], keys[i]) == 0) {
                if (w[j].op == RHEMA_WRITE_PUT) {
                    memset(&sim, 0, sizeof sim);
                    sim.version = w[j].new_version; /* simulated below */
                    live = &sim;
                }
                decided = 1;
                break;
            }
        }
        if (!decided)
            live = find_live(in, w[i].ns, keys[i], now);
        rc = precondition(c, &w[i], live);
        if (rc == 0 && w[i].op == RHEMA_WRITE_PUT)
            w[i].new_version = ++sim_version; /* what apply_write will assign */
    }
    /* 2. reserve memory so that applying cannot fail */
    for (i = 0; i < n && rc == 0; i++) {
        if (w[i].op != RHEMA_WRITE_PUT)
            continue;
        if (w[i].value_len > 0 && (values[i] = malloc(w[i].value_len)) == NULL)
            rc = RHEMA_ENOMEM;
        else if ((fresh[i] = node_new(in, w[i].ns, keys[i], strlen(keys[i]))) == NULL)
            rc = RHEMA_ENOMEM;
        if (rc != 0)
            conn_error(c, "out of memory");
    }
    /* 3. apply */
    for (i = 0; i < n && rc == 0; i++) {
        struct mem_node *update[SL_MAX_LEVEL];
        struct mem_node *node = sl_seek(in, w[i].ns, keys[i], update);
        int exists = node != NULL && node_cmp(node, w[i].ns, keys[i]) == 0;
        int k;
        if (w[i].op == RHEMA_WRITE_DEL) {
            if (exists)
                sl_unlink(in, node, update);
            continue;
        }
        if (!exists) {
            node = fresh[i];
            fresh[i] = NULL;
            if (node->level > in->level) {
                for (k = in->level; k < node->level; k++)
                    update[k] = in->head;
                in->level = node->level;
            }
            for (k = 0; k < node->level; k++) {
                node->next[k] = update[k]->next[k];
                update[k]->next[k] = node;
            }
            ht_link(in, node);
        } else {
            free(node->value);
            if (node->expires_ns != 0)
                in->n_ttl--;
        }
        if (values[i] != NULL)
            memcpy(values[i], w[i].value, w[i].value_len);
        node->value = values[i];
        values[i] = NULL;
        node->value_len = w[i].value_len;
        node->version = w[i].new_version; /* as simulated */
        node->expires_ns = deadline_ns(now, w[i].ttl_ms);
        if (node->expires_ns != 0)
            in->n_ttl++;
    }
    if (rc == 0) {
        in->version_counter = sim_version;
        note_write(in, now);
    }
    pthread_rwlock_unlock(&in->lock);

out:
    for (i = 0; i < n; i++) {
        if (rc != 0)
            w[i].new_version = 0; /* nothing was stored */
        if (values != NULL)
            free(values[i]);
        if (fresh != NULL)
            node_free(fresh[i]);
        if (seq_keys != NULL)
            free(seq_keys[i]);
    }
    free(values);
    free(fresh);
    free(seq_keys);
    free(keys);
    return rc;
}

/* ---- leases ---- */

static int mem_lease(rhema_storage_conn *c, const char *name, const char *holder, uint64_t ttl_ms,
                     int op, struct rhema_lease_info *out)
{
    rhema_storage_instance *in = c->inst;
    struct mem_lease *l = NULL;
    size_t i, name_len, holder_len = 0;
    uint64_t now;
    int rc = 0, held, mine;

    const char *why = rhema_storage_lease_invalid(name, holder, ttl_ms, op);
    if (why != NULL) {
        conn_error(c, "%s", why);
        return RHEMA_EINVAL;
    }
    name_len = strlen(name);
    holder_len = op != RHEMA_LEASE_QUERY ? strlen(holder) : 0;

    pthread_mutex_lock(&in->lease_lock);
    now = in->host->monotonic_ns();
    for (i = 0; i < in->n_leases; i++) {
        if (strcmp(in->leases[i].name, name) == 0) {
            l = &in->leases[i];
            break;
        }
    }
    if (l == NULL && op == RHEMA_LEASE_ACQUIRE) {
        char *copy = malloc(name_len + 1);
        if (copy == NULL ||
            grow((void **)&in->leases, &in->cap_leases, in->n_leases + 1, sizeof *in->leases) != 0) {
            free(copy);
            pthread_mutex_unlock(&in->lease_lock);
            conn_error(c, "out of memory");
            return RHEMA_ENOMEM;
        }
        memcpy(copy, name, name_len + 1);
        l = &in->leases[in->n_leases++];
        memset(l, 0, sizeof *l);
        l->name = copy;
    }
    held = l != NULL && l->holder[0] != '\0' && l->expires_ns > now;
    mine = held && holder != NULL && strcmp(l->holder, holder) == 0;
    if (l != NULL && !held)
        l->holder[0] = '\0'; /* expired: forget the holder, keep the epoch */

    switch (op) {
    case RHEMA_LEASE_ACQUIRE:
        if (held && !mine) {
            rc = RHEMA_ECONFLICT;
            break;
        }
        if (!held) {
            l->epoch++;
            memcpy(l->holder, holder, holder_len + 1);
        }
        l->expires_ns = deadline_ns(now, ttl_ms);
        break;
    case RHEMA_LEASE_RENEW:
        if (!mine)
            rc = RHEMA_ECONFLICT;
        else
            l->expires_ns = deadline_ns(now, ttl_ms);
        break;
    case RHEMA_LEASE_RELEASE:
        if (!mine) {
            rc = RHEMA_ECONFLICT;
        } else {
            l->holder[0] = '\0';
            l->expires_ns = 0;
        }
        break;
    default: /* QUERY */
        if (!held)
            rc = RHEMA_ENOTFOUND;
        break;
    }
    if (out != NULL) {
        memset(out, 0, sizeof *out);
        if (l != NULL) {
            memcpy(out->holder, l->holder, sizeof out->holder);
            out->epoch = l->epoch;
            out->ttl_remaining_ms = l->holder[0] ? remaining_ms(l->expires_ns, now) : 0;
        }
    }
    if (rc == RHEMA_ECONFLICT)
        conn_error(c, "lease '%s' is held by '%s'", name,
                   l != NULL && l->holder[0] ? l->holder : "nobody");
    else if (rc == RHEMA_ENOTFOUND)
        conn_error(c, "lease '%s' is not held", name);
    pthread_mutex_unlock(&in->lease_lock);
    return rc;
}

/* ---- the rest ---- */

static int mem_health(rhema_storage_conn *c, char **err)
{
    (void)c;
    (void)err;
    return 0;
}

static const char *mem_errmsg(rhema_storage_conn *c)
{
    return c != NULL ? c->err : "";
}

static int put_u8(FILE *f, unsigned v)
{
    return fputc((int)(v & 0xffu), f) == EOF ? -1 : 0;
}

static int put_le(FILE *f, uint64_t v, int bytes)
{
    unsigned char b[8];
    int i;
    for (i = 0; i < bytes; i++)
        b[i] = (unsigned char)(v >> (8 * i));
    return fwrite(b, 1, (size_t)bytes, f) == (size_t)bytes ? 0 : -1;
}

static int put_str(FILE *f, const void *p, size_t len, int len_bytes)
{
    if (put_le(f, len, len_bytes) != 0)
        return -1;
    return len == 0 || fwrite(p, 1, len, f) == len ? 0 : -1;
}

/* Write the dump to f under both locks.  -1 on a write error. */
static int dump(rhema_storage_instance *in, FILE *f)
{
    struct mem_node *n;
    uint64_t now, records = 0;
    size_t i;
    int bad = 0;

    pthread_rwlock_rdlock(&in->lock);
    pthread_mutex_lock(&in->lease_lock);
    now = in->host->monotonic_ns();
    bad |= fwrite("RHEMAMEM1\n", 1, 10, f) != 10;
    bad |= put_le(f, in->version_counter, 8);
    for (n = in->head->next[0]; n != NULL && !bad; n = n->next[0]) {
        if (expired(n, now))
            continue;
        bad |= put_u8(f, 1);
        bad |= put_str(f, n->ns, strlen(n->ns), 4);
        bad |= put_str(f, n->key, n->key_len, 4);
        bad |= put_le(f, n->version, 8);
        bad |= put_le(f, remaining_ms(n->expires_ns, now), 8);
        bad |= put_str(f, n->value, n->value_len, 8);
        records++;
    }
    for (i = 0; i < in->n_leases && !bad; i++) {
        const struct mem_lease *l = &in->leases[i];
        int held = l->holder[0] != '\0' && l->expires_ns > now;
        bad |= put_u8(f, 2);
        bad |= put_str(f, l->name, strlen(l->name), 4);
        bad |= put_str(f, held ? l->holder : "", held ? strlen(l->holder) : 0, 4);
        bad |= put_le(f, l->epoch, 8);
        bad |= put_le(f, held ? remaining_ms(l->expires_ns, now) : 0, 8);
        records++;
    }
    bad |= put_u8(f, 0);
    bad |= put_le(f, records, 8);
    pthread_mutex_unlock(&in->lease_lock);
    pthread_rwlock_unlock(&in->lock);
    return bad ? -1 : 0;
}

/* fsync the directory holding path, so a rename in it is durable. */
static int fsync_parent(const char *path)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    int fd, rc;
    if (slash == NULL) {
        strcpy(dir, ".");
    } else if (slash == path) {
        strcpy(dir, "/");
    } else {
        if ((size_t)(slash - path) >= sizeof dir)
            return -1;
        memcpy(dir, path, (size_t)(slash - path));
        dir[slash - path] = '\0';
    }
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    rc = fsync(fd);
    close(fd);
    return rc;
}

static int mem_backup(rhema_storage_conn *c, const char *path, char **err)
{
    rhema_storage_instance *in = c->inst;
    const struct rhema_host *h = in->host;
    char tmp[PATH_MAX];
    FILE *f = NULL;
    int fd = -1, rc = 0, e;

    if (path == NULL || path[0] == '\0')
        return h->set_error(err, RHEMA_EINVAL, "memory: backup: empty path");
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return h->set_error(err, RHEMA_EINVAL, "memory: backup: path too long");
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0) {
        e = errno;
        conn_error(c, "backup: open %s: %s", tmp, strerror(e));
        return h->set_error(err, RHEMA_EIO, "memory: backup: open %s: %s", tmp, strerror(e));
    }
    f = fdopen(fd, "wb");
    if (f == NULL) {
        e = errno;
        close(fd);
        unlink(tmp);
        return h->set_error(err, RHEMA_ENOMEM, "memory: backup: fdopen: %s", strerror(e));
    }
    if (dump(in, f) != 0 || fflush(f) != 0) {
        e = errno;
        rc = h->set_error(err, RHEMA_EIO, "memory: backup: write %s: %s", tmp, strerror(e));
    } else if (fsync(fileno(f)) != 0) {
        e = errno;
        rc = h->set_error(err, RHEMA_EIO, "memory: backup: fsync %s: %s", tmp, strerror(e));
    }
    if (fclose(f) != 0 && rc == 0) {
        e = errno;
        rc = h->set_error(err, RHEMA_EIO, "memory: backup: close %s: %s", tmp, strerror(e));
    }
    if (rc == 0 && rename(tmp, path) != 0) {
        e = errno;
        rc = h->set_error(err, RHEMA_EIO, "memory: backup: rename %s: %s", path, strerror(e));
    }
    if (rc != 0) {
        unlink(tmp);
        conn_error(c, "backup to %s failed", path);
        return rc;
    }
    if (fsync_parent(path) != 0) {
        e = errno;
        return h->set_error(err, RHEMA_EIO, "memory: backup: fsync directory of %s: %s", path,
                            strerror(e));
    }
    return 0;
}

/* ---- restore ---- */

struct rd_cursor {
    const unsigned char *p;
    size_t left;
};

static int rd_bytes(struct rd_cursor *r, const void **out, size_t n)
{
    if (n > r->left)
        return -1;
    *out = r->p;
    r->p += n;
    r->left -= n;
    return 0;
}

static int rd_le(struct rd_cursor *r, int bytes, uint64_t *out)
{
    const void *p;
    const unsigned char *b;
    uint64_t v = 0;
    int i;
    if (rd_bytes(r, &p, (size_t)bytes) != 0)
        return -1;
    b = p;
    for (i = bytes - 1; i >= 0; i--)
        v = v << 8 | b[i];
    *out = v;
    return 0;
}

/* A length-prefixed string: *out points into the buffer, NOT NUL-terminated. */
static int rd_str(struct rd_cursor *r, int len_bytes, const char **out, size_t *len)
{
    uint64_t n;
    const void *p;
    if (rd_le(r, len_bytes, &n) != 0 || n > r->left)
        return -1;
    if (rd_bytes(r, &p, (size_t)n) != 0)
        return -1;
    *out = p;
    *len = (size_t)n;
    return 0;
}

struct rs_entry {
    char *ns, *key; /* one allocation, like a node: "ns\0key\0" */
    size_t key_len;
    const unsigned char *value; /* into the file buffer */
    size_t value_len;
    uint64_t version, ttl_ms;
};

struct rs_lease {
    char *name;
    char holder[RHEMA_LEASE_HOLDER_MAX + 1];
    uint64_t epoch, ttl_ms;
};

struct rs_dump {
    unsigned char *buf;
    uint64_t counter;
    struct rs_entry *e;
    size_t n_e, cap_e;
    struct rs_lease *l;
    size_t n_l, cap_l;
};

static void rs_free(struct rs_dump *d)
{
    size_t i;
    for (i = 0; i < d->n_e; i++)
        free(d->e[i].ns);
    for (i = 0; i < d->n_l; i++)
        free(d->l[i].name);
    free(d->e);
    free(d->l);
    free(d->buf);
    memset(d, 0, sizeof *d);
}

/* A copy of (p, n) with a NUL after it, or NULL; rejects embedded NULs. */
static char *dup_text(const char *p, size_t n)
{
    char *s;
    if (memchr(p, '\0', n) != NULL)
        return NULL;
    s = malloc(n + 1);
    if (s != NULL) {
        memcpy(s, p, n);
        s[n] = '\0';
    }
    return s;
}

/*
 * Read and check the whole dump at path into d.  Returns 0, or a code with
 * a message in why.
 */
static int rs_load(const char *path, struct rs_dump *d, char *why, size_t why_size)
{
    struct rd_cursor r;
    FILE *f;
    long size;
    const void *magic;
    uint64_t records = 0, type, want;
    const char *prev_ns = NULL, *prev_key = NULL;

    memset(d, 0, sizeof *d);
    f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(why, why_size, "open %s: %s", path, strerror(errno));
        return errno == ENOENT ? RHEMA_ENOTFOUND : RHEMA_EIO;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        snprintf(why, why_size, "%s: cannot read its size (a directory?)", path);
        fclose(f);
        return RHEMA_EIO;
    }
    d->buf = malloc((size_t)size + 1);
    if (d->buf == NULL || fread(d->buf, 1, (size_t)size, f) != (size_t)size) {
        snprintf(why, why_size, "%s: %s", path, d->buf == NULL ? "out of memory" : "read error");
        fclose(f);
        return d->buf == NULL ? RHEMA_ENOMEM : RHEMA_EIO;
    }
    fclose(f);
    r.p = d->buf;
    r.left = (size_t)size;
    if (rd_bytes(&r, &magic, 10) != 0 || memcmp(magic, "RHEMAMEM1\n", 10) != 0) {
        snprintf(why, why_size, "%s is not a memory backend dump (bad magic)", path);
        return RHEMA_ECORRUPT;
    }
    if (rd_le(&r, 8, &d->counter) != 0)
        goto truncated;
    for (;;) {
        if (rd_le(&r, 1, &type) != 0)
            goto truncated;
        if (type == 0)
            break;
        if (type == 1) {
            const char *ns, *key;
            size_t ns_len, key_len;
            struct rs_entry *e;
            if (rd_str(&r, 4, &ns, &ns_len) != 0 || rd_str(&r, 4, &key, &key_len) != 0)
                goto truncated;
            if (grow((void **)&d->e, &d->cap_e, d->n_e + 1, sizeof *d->e) != 0)
                goto oom;
            e = &d->e[d->n_e];
            memset(e, 0, sizeof *e);
            if (ns_len == 0 || ns_len > RHEMA_STORAGE_NS_MAX || key_len == 0 ||
                key_len > RHEMA_STORAGE_KEY_MAX || memchr(ns, '\0', ns_len) != NULL ||
                memchr(key, '\0', key_len) != NULL) {
                snprintf(why, why_size, "%s: record %llu: invalid namespace or key", path,
                         (unsigned long long)records);
                return RHEMA_ECORRUPT;
            }
            e->ns = malloc(ns_len + 1 + key_len + 1);
            if (e->ns == NULL)
                goto oom;
            d->n_e++;
            memcpy(e->ns, ns, ns_len);
            e->ns[ns_len] = '\0';
            e->key = e->ns + ns_len + 1;
            memcpy(e->key, key, key_len);
            e->key[key_len] = '\0';
            e->key_len = key_len;
            if (!rhema_storage_ns_valid(e->ns)) {
                snprintf(why, why_size, "%s: record %llu: invalid namespace", path,
                         (unsigned long long)records);
                return RHEMA_ECORRUPT;
            }
            if (prev_ns != NULL) {
                int c = strcmp(prev_ns, e->ns);
                if (c > 0 || (c == 0 && strcmp(prev_key, e->key) >= 0)) {
                    snprintf(why, why_size, "%s: record %llu: entries out of order", path,
                             (unsigned long long)records);
                    return RHEMA_ECORRUPT;
                }
            }
            prev_ns = e->ns;
            prev_key = e->key;
            {
                const char *v;
                if (rd_le(&r, 8, &e->version) != 0 || rd_le(&r, 8, &e->ttl_ms) != 0 ||
                    rd_str(&r, 8, &v, &e->value_len) != 0)
                    goto truncated;
                e->value = (const unsigned char *)v;
            }
            if (e->version == 0 || e->version > d->counter) {
                snprintf(why, why_size, "%s: record %llu: version %llu outside 1..%llu", path,
                         (unsigned long long)records, (unsigned long long)e->version,
                         (unsigned long long)d->counter);
                return RHEMA_ECORRUPT;
            }
        } else if (type == 2) {
            const char *name, *holder;
            size_t name_len, holder_len;
            struct rs_lease *l;
            if (rd_str(&r, 4, &name, &name_len) != 0 || rd_str(&r, 4, &holder, &holder_len) != 0)
                goto truncated;
            if (name_len == 0 || name_len > RHEMA_STORAGE_KEY_MAX ||
                holder_len > RHEMA_LEASE_HOLDER_MAX || memchr(holder, '\0', holder_len) != NULL) {
                snprintf(why, why_size, "%s: record %llu: invalid lease", path,
                         (unsigned long long)records);
                return RHEMA_ECORRUPT;
            }
            if (grow((void **)&d->l, &d->cap_l, d->n_l + 1, sizeof *d->l) != 0)
                goto oom;
            l = &d->l[d->n_l];
            memset(l, 0, sizeof *l);
            if ((l->name = dup_text(name, name_len)) == NULL) {
                snprintf(why, why_size, "%s: record %llu: invalid lease name", path,
                         (unsigned long long)records);
                return RHEMA_ECORRUPT;
            }
            d->n_l++;
            memcpy(l->holder, holder, holder_len);
            l->holder[holder_len] = '\0';
            if (rd_le(&r, 8, &l->epoch) != 0 || rd_le(&r, 8, &l->ttl_ms) != 0)
                goto truncated;
        } else {
            snprintf(why, why_size, "%s: record %llu: unknown type %llu", path,
                     (unsigned long long)records, (unsigned long long)type);
            return RHEMA_ECORRUPT;
        }
        records++;
    }
    if (rd_le(&r, 8, &want) != 0)
        goto truncated;
    if (want != records || r.left != 0) {
        snprintf(why, why_size, "%s: %llu records, the end record says %llu%s", path,
                 (unsigned long long)records, (unsigned long long)want,
                 r.left != 0 ? ", and data follows it" : "");
        return RHEMA_ECORRUPT;
    }
    return 0;
truncated:
    snprintf(why, why_size, "%s is truncated (after %llu records)", path,
             (unsigned long long)records);
    return RHEMA_ECORRUPT;
oom:
    snprintf(why, why_size, "out of memory");
    return RHEMA_ENOMEM;
}

static int mem_restore(rhema_storage_instance *in, const char *path, char **err)
{
    const struct rhema_host *h = in->host;
    struct rs_dump d;
    struct mem_node **nodes = NULL, *last[SL_MAX_LEVEL], *n, *next;
    struct mem_lease *leases = NULL;
    size_t i, j, n_leases = 0;
    uint64_t now;
    char why[512];
    int rc, k;

    if (path == NULL || path[0] == '\0')
        return h->set_error(err, RHEMA_EINVAL, "memory: restore: empty path");
    rc = rs_load(path, &d, why, sizeof why);
    if (rc != 0) {
        rs_free(&d);
        return h->set_error(err, rc, "memory: restore: %s", why);
    }
    nodes = calloc(d.n_e + 1, sizeof *nodes);
    if (nodes == NULL)
        goto oom;

    pthread_rwlock_wrlock(&in->lock);
    pthread_mutex_lock(&in->lease_lock);
    /* 1. allocate everything the new state needs; nothing has changed yet */
    for (i = 0; i < d.n_e; i++) {
        nodes[i] = node_new(in, d.e[i].ns, d.e[i].key, d.e[i].key_len);
        if (nodes[i] == NULL ||
            (d.e[i].value_len > 0 && (nodes[i]->value = malloc(d.e[i].value_len)) == NULL))
            goto oom_locked;
        if (d.e[i].value_len > 0)
            memcpy(nodes[i]->value, d.e[i].value, d.e[i].value_len);
        nodes[i]->value_len = d.e[i].value_len;
        nodes[i]->version = d.e[i].version;
    }
    leases = calloc(in->n_leases + d.n_l + 1, sizeof *leases);
    if (leases == NULL)
        goto oom_locked;
    now = h->monotonic_ns();
    /* leases: epochs become max(snapshot, current), see storage.h */
    for (i = 0; i < d.n_l; i++) {
        struct mem_lease *cur = NULL, *l = &leases[n_leases];
        for (j = 0; j < in->n_leases; j++)
            if (strcmp(in->leases[j].name, d.l[i].name) == 0)
                cur = &in->leases[j];
        l->name = strdup(d.l[i].name);
        if (l->name == NULL)
            goto oom_locked;
        n_leases++;
        if (cur != NULL && cur->epoch > d.l[i].epoch) {
            l->epoch = cur->epoch; /* the snapshot's holder is stale: free */
        } else {
            l->epoch = d.l[i].epoch;
            if (d.l[i].holder[0] != '\0' && d.l[i].ttl_ms > 0) {
                memcpy(l->holder, d.l[i].holder, sizeof l->holder);
                l->expires_ns = deadline_ns(now, d.l[i].ttl_ms);
            }
        }
    }
    for (j = 0; j < in->n_leases; j++) {
        int found = 0;
        for (i = 0; i < d.n_l && !found; i++)
            found = strcmp(in->leases[j].name, d.l[i].name) == 0;
        if (found)
            continue;
        leases[n_leases].name = strdup(in->leases[j].name);
        if (leases[n_leases].name == NULL)
            goto oom_locked;
        leases[n_leases++].epoch = in->leases[j].epoch; /* kept, free */
    }

    /* 2. swap: cannot fail from here on */
    for (n = in->head->next[0]; n != NULL; n = next) {
        next = n->next[0];
        node_free(n);
    }
    for (k = 0; k < SL_MAX_LEVEL; k++) {
        in->head->next[k] = NULL;
        last[k] = in->head;
    }
    in->level = 1;
    in->n_ttl = 0;
    memset(in->buckets, 0, in->nbuckets * sizeof *in->buckets);
    in->nnodes = 0;
    for (i = 0; i < d.n_e; i++) { /* already in order: append on every level */
        n = nodes[i];
        ht_link(in, n); /* cannot fail: a failed growth keeps the buckets */
        n->expires_ns = deadline_ns(now, d.e[i].ttl_ms);
        if (n->expires_ns != 0)
            in->n_ttl++;
        for (k = 0; k < n->level; k++) {
            last[k]->next[k] = n;
            last[k] = n;
        }
        if (n->level > in->level)
            in->level = n->level;
        nodes[i] = NULL;
    }
    if (d.counter > in->version_counter)
        in->version_counter = d.counter;
    free(in->purge_ns);
    in->purge_ns = in->purge_key = NULL;
    in->writes = 0;
    for (j = 0; j < in->n_leases; j++)
        free(in->leases[j].name);
    free(in->leases);
    in->cap_leases = in->n_leases + d.n_l + 1; /* what calloc'd `leases` above */
    in->leases = leases;
    in->n_leases = n_leases;
    pthread_mutex_unlock(&in->lease_lock);
    pthread_rwlock_unlock(&in->lock);
    free(nodes);
    if (h->log != NULL)
        h->log(RHEMA_LOG_NOTICE, PLUGIN_NAME, "restored %zu entries and %zu leases from %s",
               d.n_e, d.n_l, path);
    rs_free(&d);
    return 0;

oom_locked:
    pthread_mutex_unlock(&in->lease_lock);
    pthread_rwlock_unlock(&in->lock);
oom:
    if (nodes != NULL)
        for (i = 0; i < d.n_e; i++)
            node_free(nodes[i]);
    free(nodes);
    if (leases != NULL)
        for (i = 0; i < n_leases; i++)
            free(leases[i].name);
    free(leases);
    rs_free(&d);
    return h->set_error(err, RHEMA_ENOMEM, "memory: restore: out of memory");
}

/*
 * The vtable's batch(), group() and get_many() take arrays of the caller's
 * stride (storage.h, "Growing the structs"); the functions above work on
 * arrays of this plugin's layout, and ../common adapts one to the other.
 */

static int mem_batch_strided(rhema_storage_conn *c, struct rhema_storage_write *w, size_t n)
{
    const char *why = NULL;
    int rc = rhema_storage_call_batch(mem_batch, c, w, n, &why);
    if (why != NULL)
        conn_error(c, "%s", why);
    return rc;
}

static int mem_get_many_strided(rhema_storage_conn *c, const char *const *ns,
                                const char *const *keys, size_t n,
                                struct rhema_storage_value *out, int *rcs)
{
    const char *why = NULL;
    int rc = rhema_storage_call_get_many(mem_get_many, c, ns, keys, n, out, rcs, &why);
    if (why != NULL)
        conn_error(c, "%s", why);
    return rc;
}

/* One GCRA step in the instance's table (storage.h, rate()). */
static int mem_rate(rhema_storage_conn *c, struct rhema_rate_query *q)
{
    const char *why = NULL;
    int rc = rhema_rate_table_apply(c->inst->rate, q, &why);
    if (rc == RHEMA_EINVAL)
        conn_error(c, "%s", why);
    else if (rc != 0)
        conn_error(c, "rate: out of memory");
    return rc;
}

static const struct rhema_storage_plugin memory_plugin = {
    .base =
        RHEMA_STORAGE_PLUGIN_HEADER(PLUGIN_NAME, "1.0.0", "in-process ordered map (not durable)"),
    .features = RHEMA_STORAGE_TTL | RHEMA_STORAGE_LEASES | RHEMA_STORAGE_SEQUENCED,
    .open = mem_open,
    .close = mem_close,
    .connect = mem_connect,
    .disconnect = mem_disconnect,
    .get = mem_get,
    .put = mem_put,
    .del = mem_del,
    .batch = mem_batch_strided,
    .scan = mem_scan,
    .lease = mem_lease,
    .health = mem_health,
    .stats = mem_stats,
    .errmsg = mem_errmsg,
    .backup = mem_backup,
    .restore = mem_restore,
    .rate = mem_rate,
    .get_many = mem_get_many_strided,
    .check = mem_check,
};

int rhema_plugin_init(const struct rhema_host *host, const struct rhema_plugin **out)
{
    (void)host;
    *out = &memory_plugin.base;
    return 0;
}
