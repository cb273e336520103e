/*
 * ai/cache -- the response cache and single flight (cache.h).
 *
 * Two hash tables under one mutex: entries (chained, bucket count fixed at
 * creation from max_entries so that an insert never rehashes under the
 * lock) and flights (a fixed table; there are at most as many flights as
 * requests in flight).  The LRU list runs from most recently used (head)
 * to least (tail).  An entry's bytes are what malloc really gave the entry
 * and its response (malloc_usable_size), so max_size_bytes bounds memory,
 * not just payload.
 */
#include <malloc.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "ai/cache.h"
#include <rhema/plugin.h>
#include "util.h"

#define FLIGHT_BUCKETS 1024u
#define MAX_BUCKETS (1u << 18)

struct entry {
    unsigned char key[RHEMA_AI_CACHE_KEY_LEN];
    struct entry *hnext;
    struct entry *prev, *next; /* LRU */
    uint64_t stored_ns;
    size_t bytes;
    struct rhema_ai_cache_resp *resp;
};

struct flight {
    unsigned char key[RHEMA_AI_CACHE_KEY_LEN];
    struct flight *hnext;
    struct rhema_ai_cache_waiter *waiters;
};

struct rhema_ai_cache {
    pthread_mutex_t lock;
    struct rhema_ai_cache_limits lim;
    struct entry **buckets;
    size_t nbuckets; /* a power of 2 */
    struct entry *head, *tail;
    struct flight *flights[FLIGHT_BUCKETS];
    struct rhema_ai_cache_stats st;
};

struct rhema_ai_cache_resp *rhema_ai_cache_resp_new(int status, const char *content_type,
                                                    const char *upstream, const char *attempts,
                                                    long retry_after, const void *body,
                                                    size_t len)
{
    size_t lc = strlen(content_type) + 1, lu = strlen(upstream) + 1, la = strlen(attempts) + 1;
    struct rhema_ai_cache_resp *p = malloc(sizeof *p + lc + lu + la + len);
    char *s;
    if (!p)
        return NULL;
    s = (char *)(p + 1);
    p->refs = 1;
    p->status = status;
    p->retry_after = retry_after;
    p->content_type = memcpy(s, content_type, lc);
    p->upstream = memcpy(s + lc, upstream, lu);
    p->attempts = memcpy(s + lc + lu, attempts, la);
    p->body = (unsigned char *)s + lc + lu + la;
    if (len)
        memcpy(s + lc + lu + la, body, len);
    p->len = len;
    return p;
}

struct rhema_ai_cache_resp *rhema_ai_cache_resp_ref(struct rhema_ai_cache_resp *p)
{
    if (p)
        __atomic_add_fetch(&p->refs, 1, __ATOMIC_RELAXED);
    return p;
}

void rhema_ai_cache_resp_unref(struct rhema_ai_cache_resp *p)
{
    if (p && __atomic_sub_fetch(&p->refs, 1, __ATOMIC_ACQ_REL) == 0)
        free(p);
}

int rhema_ai_cache_new(const struct rhema_ai_cache_limits *lim, struct rhema_ai_cache **out,
                       char **err)
{
    struct rhema_ai_cache *c = calloc(1, sizeof *c);
    size_t n = 16;
    *out = NULL;
    if (!c)
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    c->lim = *lim;
    while (n < lim->max_entries && n < MAX_BUCKETS)
        n <<= 1;
    c->nbuckets = n;
    if (!(c->buckets = calloc(n, sizeof *c->buckets))) {
        free(c);
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    }
    pthread_mutex_init(&c->lock, NULL);
    *out = c;
    return 0;
}

static void entry_free(struct entry *e)
{
    rhema_ai_cache_resp_unref(e->resp);
    free(e);
}

void rhema_ai_cache_free(struct rhema_ai_cache *c)
{
    struct entry *e, *n;
    if (!c)
        return;
    for (e = c->head; e; e = n) {
        n = e->next;
        entry_free(e);
    }
    for (size_t i = 0; i < FLIGHT_BUCKETS; i++) {
        struct flight *f, *fn;
        for (f = c->flights[i]; f; f = fn) {
            fn = f->hnext;
            free(f);
        }
    }
    free(c->buckets);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

void rhema_ai_cache_key(const char *route, const char *scope, const char *canonical,
                        size_t len, unsigned char key[RHEMA_AI_CACHE_KEY_LEN])
{
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, RHEMA_AI_CACHE_KEY_LEN);
    crypto_generichash_update(&st, (const unsigned char *)route, strlen(route) + 1);
    crypto_generichash_update(&st, (const unsigned char *)scope, strlen(scope) + 1);
    crypto_generichash_update(&st, (const unsigned char *)canonical, len);
    crypto_generichash_final(&st, key, RHEMA_AI_CACHE_KEY_LEN);
}

static uint64_t key_hash(const unsigned char *key)
{
    uint64_t h;
    memcpy(&h, key, sizeof h); /* a BLAKE2b output: any 8 bytes are uniform */
    return h;
}

/* ---- entries (lock held) ---- */

static struct entry **entry_slot(struct rhema_ai_cache *c, const unsigned char *key)
{
    struct entry **pp = &c->buckets[key_hash(key) & (c->nbuckets - 1)];
    while (*pp && memcmp((*pp)->key, key, RHEMA_AI_CACHE_KEY_LEN) != 0)
        pp = &(*pp)->hnext;
    return pp;
}

static void lru_unlink(struct rhema_ai_cache *c, struct entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push(struct rhema_ai_cache *c, struct entry *e)
{
    e->prev = NULL;
    e->next = c->head;
    if (c->head)
        c->head->prev = e;
    c->head = e;
    if (!c->tail)
        c->tail = e;
}

/* Unlink e from both structures; the caller frees it (outside the lock is fine). */
static void entry_remove(struct rhema_ai_cache *c, struct entry *e)
{
    struct entry **pp = entry_slot(c, e->key);
    *pp = e->hnext;
    lru_unlink(c, e);
    c->st.bytes -= e->bytes;
    c->st.entries--;
}

/* ---- flights (lock held) ---- */

static struct flight **flight_slot(struct rhema_ai_cache *c, const unsigned char *key)
{
    struct flight **pp = &c->flights[key_hash(key) & (FLIGHT_BUCKETS - 1)];
    while (*pp && memcmp((*pp)->key, key, RHEMA_AI_CACHE_KEY_LEN) != 0)
        pp = &(*pp)->hnext;
    return pp;
}

enum rhema_ai_cache_verdict rhema_ai_cache_lookup(struct rhema_ai_cache *c,
                                                  const unsigned char key[RHEMA_AI_CACHE_KEY_LEN],
                                                  int refresh, uint64_t now_ns,
                                                  struct rhema_ai_cache_waiter *w,
                                                  struct rhema_ai_cache_resp **hit,
                                                  uint64_t *age_s)
{
    struct entry *e, *expired = NULL;
    struct flight **fp, *nf = NULL;
    enum rhema_ai_cache_verdict v;
    *hit = NULL;
    *age_s = 0;
    nf = malloc(sizeof *nf); /* before the lock; NULL is handled below */
    pthread_mutex_lock(&c->lock);
    if (!refresh && (e = *entry_slot(c, key))) {
        if (now_ns - e->stored_ns < c->lim.ttl_ns) {
            lru_unlink(c, e);
            lru_push(c, e);
            *hit = rhema_ai_cache_resp_ref(e->resp);
            *age_s = (now_ns - e->stored_ns) / 1000000000u;
            c->st.hits++;
            pthread_mutex_unlock(&c->lock);
            free(nf);
            return RHEMA_AIC_HIT;
        }
        entry_remove(c, e);
        c->st.expirations++;
        expired = e;
    }
    c->st.misses++;
    fp = flight_slot(c, key);
    if (*fp) {
        w->claimed = 0;
        w->next = (*fp)->waiters;
        (*fp)->waiters = w;
        c->st.collapsed++;
        v = RHEMA_AIC_FOLLOW;
    } else {
        if (nf) { /* without memory for a flight the leader leads alone */
            memcpy(nf->key, key, RHEMA_AI_CACHE_KEY_LEN);
            nf->hnext = NULL;
            nf->waiters = NULL;
            *fp = nf;
            nf = NULL;
            c->st.flights++;
        }
        v = RHEMA_AIC_LEAD;
    }
    pthread_mutex_unlock(&c->lock);
    free(nf);
    if (expired)
        entry_free(expired);
    return v;
}

enum rhema_ai_cache_stored rhema_ai_cache_complete(struct rhema_ai_cache *c,
                                                   const unsigned char key[RHEMA_AI_CACHE_KEY_LEN],
                                                   struct rhema_ai_cache_resp *resp, int store,
                                                   uint64_t now_ns)
{
    enum rhema_ai_cache_stored res = RHEMA_AIC_NOT_ASKED;
    struct entry *e = NULL, *gone = NULL, *old;
    struct flight **fp, *f = NULL;
    struct rhema_ai_cache_waiter *w, *wn;
    size_t bytes = 0;
    if (store && resp) {
        if ((e = malloc(sizeof *e))) {
            bytes = malloc_usable_size(e) + malloc_usable_size(resp);
            memcpy(e->key, key, RHEMA_AI_CACHE_KEY_LEN);
            e->hnext = NULL;
            e->stored_ns = now_ns;
            e->bytes = bytes;
            e->resp = resp;
            if (bytes > c->lim.max_entry_bytes || bytes > c->lim.max_size_bytes) {
                free(e);
                e = NULL;
                res = RHEMA_AIC_TOO_LARGE;
            } else {
                rhema_ai_cache_resp_ref(resp);
                res = RHEMA_AIC_STORED;
            }
        } else
            res = RHEMA_AIC_NO_MEMORY;
    }
    pthread_mutex_lock(&c->lock);
    fp = flight_slot(c, key);
    if ((f = *fp)) {
        *fp = f->hnext;
        c->st.flights--;
        for (w = f->waiters; w; w = w->next)
            w->claimed = 1;
    }
    if (res == RHEMA_AIC_TOO_LARGE)
        c->st.too_large++;
    if (e) {
        struct entry **pp = entry_slot(c, key);
        if ((old = *pp)) { /* a refresh replaces the entry */
            entry_remove(c, old);
            old->hnext = gone;
            gone = old;
            pp = entry_slot(c, key);
        }
        *pp = e;
        lru_push(c, e);
        c->st.bytes += e->bytes;
        c->st.entries++;
        c->st.stores++;
        /* evict from the cold end until within bounds (e itself fits: checked above) */
        while (c->st.bytes > c->lim.max_size_bytes || c->st.entries > c->lim.max_entries) {
            struct entry *t = c->tail;
            entry_remove(c, t);
            c->st.evictions++;
            t->hnext = gone;
            gone = t;
        }
    }
    pthread_mutex_unlock(&c->lock);
    while (gone) {
        old = gone->hnext;
        entry_free(gone);
        gone = old;
    }
    if (f) {
        for (w = f->waiters; w; w = wn) {
            wn = w->next; /* w may be freed by its wake() */
            w->wake(w, rhema_ai_cache_resp_ref(resp));
        }
        free(f);
    }
    return res;
}

int rhema_ai_cache_cancel_wait(struct rhema_ai_cache *c, struct rhema_ai_cache_waiter *w)
{
    int done = 0;
    pthread_mutex_lock(&c->lock);
    if (!w->claimed) {
        for (size_t i = 0; i < FLIGHT_BUCKETS && !done; i++)
            for (struct flight *f = c->flights[i]; f && !done; f = f->hnext)
                for (struct rhema_ai_cache_waiter **pp = &f->waiters; *pp; pp = &(*pp)->next)
                    if (*pp == w) {
                        *pp = w->next;
                        done = 1;
                        break;
                    }
    }
    pthread_mutex_unlock(&c->lock);
    return done;
}

void rhema_ai_cache_drop_owner(struct rhema_ai_cache *c, void *owner)
{
    struct rhema_ai_cache_waiter *list = NULL, *w;
    pthread_mutex_lock(&c->lock);
    for (size_t i = 0; i < FLIGHT_BUCKETS; i++)
        for (struct flight *f = c->flights[i]; f; f = f->hnext)
            for (struct rhema_ai_cache_waiter **pp = &f->waiters; *pp;) {
                w = *pp;
                if (w->owner == owner) {
                    *pp = w->next;
                    w->next = list;
                    list = w;
                } else
                    pp = &w->next;
            }
    pthread_mutex_unlock(&c->lock);
    while ((w = list)) {
        list = w->next;
        w->abandon(w);
    }
}

void rhema_ai_cache_stats(struct rhema_ai_cache *c, struct rhema_ai_cache_stats *s)
{
    pthread_mutex_lock(&c->lock);
    *s = c->st;
    pthread_mutex_unlock(&c->lock);
}
