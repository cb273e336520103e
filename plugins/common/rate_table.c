/*
 * rate_table -- GCRA in C and an in-memory table of rate states
 * (rate_table.h).
 *
 * The table is a chained hash under one mutex: a rate() call is a hash,
 * a short chain walk and a few additions, far shorter than the request it
 * limits.  Keys at rest (every tat passed) are swept when the table
 * doubles since the last sweep, so an idle party costs nothing for long.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "rate_table.h"

const char *rhema_rate_query_invalid(const struct rhema_rate_query *q)
{
    size_t len;
    if (!q || q->size < RHEMA_RATE_QUERY_SIZE_2)
        return "rate: the query is older than storage minor 2";
    if (!q->key || (len = strlen(q->key)) == 0 || len > RHEMA_RATE_KEY_MAX)
        return "rate: the key must be 1..256 bytes";
    if (q->n < 1 || q->n > RHEMA_RATE_WINDOWS_MAX || !q->windows)
        return "rate: 1..4 windows";
    for (size_t i = 0; i < q->n; i++)
        if (q->windows[i].interval_us == 0 || q->windows[i].interval_us > RHEMA_RATE_SPAN_MAX ||
            q->windows[i].tolerance_us > RHEMA_RATE_SPAN_MAX)
            return "rate: a window's interval must be 1..2^50 us and its tolerance 0..2^50 us "
                   "(about 35 years)";
    if (q->now_us < 0 || q->now_us > RHEMA_RATE_NOW_MAX)
        return "rate: now is out of range (0..2^52 us)";
    return NULL;
}

int64_t rhema_gcra_step(struct rhema_rate_query *q, const int64_t *tat)
{
    int64_t now = q->now_us, rest = now, base[RHEMA_RATE_WINDOWS_MAX];
    int ok = 1;
    for (size_t i = 0; i < q->n; i++) {
        base[i] = tat && tat[i] > now ? tat[i] : now;
        if (base[i] - now > (int64_t)q->windows[i].tolerance_us)
            ok = 0;
    }
    q->allowed = ok;
    for (size_t i = 0; i < q->n; i++) {
        q->tat_us[i] = ok ? base[i] + (int64_t)q->windows[i].interval_us : base[i];
        if (q->tat_us[i] > rest)
            rest = q->tat_us[i];
    }
    return rest;
}

struct rate_entry {
    struct rate_entry *next;
    uint64_t hash;
    int64_t rest; /* every tat passed at this instant: the entry can go */
    size_t n;
    int64_t tat[RHEMA_RATE_WINDOWS_MAX];
    char key[];
};

struct rhema_rate_table {
    pthread_mutex_t lock;
    struct rate_entry **slot;
    size_t nslot, count, max_keys, swept_at;
};

static uint64_t hash_key(const char *k)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *k; k++)
        h = (h ^ (unsigned char)*k) * 1099511628211ull;
    return h;
}

struct rhema_rate_table *rhema_rate_table_new(size_t max_keys)
{
    struct rhema_rate_table *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->nslot = 64;
    if (!(t->slot = calloc(t->nslot, sizeof *t->slot)) || pthread_mutex_init(&t->lock, NULL)) {
        free(t->slot);
        free(t);
        return NULL;
    }
    t->max_keys = max_keys;
    t->swept_at = 32;
    return t;
}

void rhema_rate_table_free(struct rhema_rate_table *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->nslot; i++)
        for (struct rate_entry *e = t->slot[i], *nx; e; e = nx) {
            nx = e->next;
            free(e);
        }
    free(t->slot);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

/* Drop the entries at rest at now; with `oldest`, also the one that rests first. */
static void sweep(struct rhema_rate_table *t, int64_t now, int oldest)
{
    struct rate_entry **victim = NULL;
    for (size_t i = 0; i < t->nslot; i++)
        for (struct rate_entry **p = &t->slot[i]; *p;) {
            struct rate_entry *e = *p;
            if (e->rest <= now) {
                *p = e->next;
                free(e);
                t->count--;
                continue;
            }
            if (!victim || e->rest < (*victim)->rest)
                victim = p;
            p = &e->next;
        }
    if (oldest && victim && t->max_keys && t->count >= t->max_keys) {
        struct rate_entry *e = *victim;
        *victim = e->next;
        free(e);
        t->count--;
    }
    t->swept_at = t->count * 2 > 32 ? t->count * 2 : 32;
}

static void grow(struct rhema_rate_table *t)
{
    size_t n = t->nslot * 2;
    struct rate_entry **s = calloc(n, sizeof *s);
    if (!s)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < t->nslot; i++)
        for (struct rate_entry *e = t->slot[i], *nx; e; e = nx) {
            nx = e->next;
            e->next = s[e->hash & (n - 1)];
            s[e->hash & (n - 1)] = e;
        }
    free(t->slot);
    t->slot = s;
    t->nslot = n;
}

int rhema_rate_table_apply(struct rhema_rate_table *t, struct rhema_rate_query *q,
                           const char **why)
{
    const char *bad = rhema_rate_query_invalid(q);
    if (bad) {
        if (why)
            *why = bad;
        return RHEMA_EINVAL;
    }
    uint64_t h = hash_key(q->key);
    pthread_mutex_lock(&t->lock);
    struct rate_entry *e = t->slot[h & (t->nslot - 1)];
    while (e && (e->hash != h || strcmp(e->key, q->key) != 0))
        e = e->next;
    if (e && e->n != q->n) /* the same key with other windows: a new party */
        e->rest = q->now_us;
    int64_t rest = rhema_gcra_step(q, e && e->n == q->n && e->rest > q->now_us ? e->tat : NULL);
    if (!e && q->allowed) {
        if (t->count >= t->swept_at || (t->max_keys && t->count >= t->max_keys))
            sweep(t, q->now_us, 1);
        size_t klen = strlen(q->key);
        if ((e = malloc(sizeof *e + klen + 1)) == NULL) {
            pthread_mutex_unlock(&t->lock);
            return RHEMA_ENOMEM;
        }
        memcpy(e->key, q->key, klen + 1);
        e->hash = h;
        if (t->count + 1 > t->nslot)
            grow(t);
        e->next = t->slot[h & (t->nslot - 1)];
        t->slot[h & (t->nslot - 1)] = e;
        t->count++;
    }
    if (e) {
        e->n = q->n;
        memcpy(e->tat, q->tat_us, sizeof e->tat);
        e->rest = rest;
    }
    pthread_mutex_unlock(&t->lock);
    return 0;
}

size_t rhema_rate_table_count(struct rhema_rate_table *t)
{
    pthread_mutex_lock(&t->lock);
    size_t n = t->count;
    pthread_mutex_unlock(&t->lock);
    return n;
}
