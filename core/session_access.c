/*
 * session_access -- the sessions' access counts: a table shared by the
 * workers, written by a thread of its own (see session_access.h).
 */
#include "rhema_build.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "session_access.h"
#include "util.h"

#define WHO "session"
#define FLUSH_RETRIES 16     /* compare-and-set rounds against other writers */
#define FLUSH_PERIOD_MS 1000 /* "at least once a second" (session.h) */

struct entry {
    char *id; /* NULL: an empty slot */
    uint64_t incarnation;
    uint64_t delta;         /* reads counted since the last flush took them */
    uint64_t last_ms;       /* the latest read counted */
    uint64_t inflight;      /* taken by the running flush */
    uint64_t inflight_base; /* the stored version it read; 0: not read yet */
    uint64_t done;          /* what the last flush wrote ... */
    uint64_t done_base;     /* ... over this stored version */
    uint64_t done_pass;     /* and in which pass */
};

struct shard {
    pthread_mutex_t mu;
    struct entry *e; /* open addressing, linear probing; cap a power of 2 */
    size_t n, cap;
};

struct rhema_access_table {
    struct shard shard[RHEMA_ACCESS_SHARDS];
    atomic_size_t entries;
    _Atomic uint64_t flushes, failed, written, dropped; /* rhema_access_stats */
    pthread_mutex_t flush_mu; /* one flush at a time */
    uint64_t pass;            /* flushes begun (under flush_mu) */
    struct rhema_access_chunk chunk; /* counts per transaction (under flush_mu) */
    /* the writer */
    pthread_mutex_t wmu;
    pthread_cond_t wcv;
    pthread_t thread;
    int running, stopping, kicked;
    atomic_int has_writer;
    const struct rhema_storage_plugin *vt;
    rhema_storage_conn *conn;
};

/* ---- records ---- */

void rhema_access_parse(const struct rhema_storage_value *v, struct rhema_access_rec *a)
{
    char buf[RHEMA_ACCESS_TEXT_MAX];
    size_t n = v->len < sizeof buf - 1 ? v->len : sizeof buf - 1;
    memset(a, 0, sizeof *a);
    memcpy(buf, v->data, n);
    buf[n] = '\0';
    unsigned long long c = 0, l = 0, inc = 0;
    if (sscanf(buf, "%llu %llu %llx", &c, &l, &inc) >= 2) {
        a->count = c;
        a->last_ms = l;
        a->incarnation = inc;
    }
    a->version = v->version;
}

int rhema_access_format(char *buf, size_t cap, uint64_t count, uint64_t last_ms,
                        uint64_t incarnation)
{
    return snprintf(buf, cap, "%llu %llu %llx", (unsigned long long)count,
                    (unsigned long long)last_ms, (unsigned long long)incarnation);
}

uint64_t rhema_access_new_incarnation(void)
{
    static _Thread_local uint64_t x;
    if (!x)
        x = rhema_realtime_ns() ^ ((uint64_t)(uintptr_t)&x << 17) ^ 0x9e3779b97f4a7c15ull;
    x ^= x << 13, x ^= x >> 7, x ^= x << 17; /* xorshift64 */
    return x ? x : 1;
}

/* ---- the table ---- */

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static struct shard *shard_of(struct rhema_access_table *t, const char *id, uint64_t *h)
{
    *h = hash_str(id);
    return &t->shard[(*h >> 56) % RHEMA_ACCESS_SHARDS];
}

/* Put e (its id owned) into array v of cap slots. */
static void place(struct entry *v, size_t cap, const struct entry *e)
{
    size_t j = hash_str(e->id) & (cap - 1);
    while (v[j].id)
        j = (j + 1) & (cap - 1);
    v[j] = *e;
}

/* The entry of id in s (h its hash), or NULL; created when create (NULL without memory). */
static struct entry *lookup(struct rhema_access_table *t, struct shard *s, const char *id,
                            uint64_t h, int create)
{
    if (s->cap) {
        size_t j = h & (s->cap - 1);
        while (s->e[j].id) {
            if (strcmp(s->e[j].id, id) == 0)
                return &s->e[j];
            j = (j + 1) & (s->cap - 1);
        }
    }
    if (!create || atomic_load(&t->entries) >= RHEMA_ACCESS_MAX)
        return NULL;
    if ((s->n + 1) * 2 > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        struct entry *nv = calloc(cap, sizeof *nv);
        if (!nv)
            return NULL;
        for (size_t i = 0; i < s->cap; i++)
            if (s->e[i].id)
                place(nv, cap, &s->e[i]);
        free(s->e);
        s->e = nv;
        s->cap = cap;
    }
    struct entry e = {.id = strdup(id)};
    if (!e.id)
        return NULL;
    place(s->e, s->cap, &e);
    s->n++;
    atomic_fetch_add(&t->entries, 1);
    return lookup(t, s, id, h, 0);
}

int rhema_access_table_new(struct rhema_access_table **out)
{
    struct rhema_access_table *t = calloc(1, sizeof *t);
    if (!t)
        return RHEMA_ENOMEM;
    for (int i = 0; i < RHEMA_ACCESS_SHARDS; i++)
        pthread_mutex_init(&t->shard[i].mu, NULL);
    pthread_mutex_init(&t->flush_mu, NULL);
    rhema_access_chunk_init(&t->chunk);
    pthread_mutex_init(&t->wmu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&t->wcv, &ca);
    pthread_condattr_destroy(&ca);
    *out = t;
    return 0;
}

void rhema_access_table_free(struct rhema_access_table *t)
{
    if (!t)
        return;
    rhema_access_writer_stop(t);
    for (int i = 0; i < RHEMA_ACCESS_SHARDS; i++) {
        struct shard *s = &t->shard[i];
        for (size_t j = 0; j < s->cap; j++)
            free(s->e[j].id);
        free(s->e);
        pthread_mutex_destroy(&s->mu);
    }
    pthread_mutex_destroy(&t->flush_mu);
    pthread_mutex_destroy(&t->wmu);
    pthread_cond_destroy(&t->wcv);
    free(t);
}

size_t rhema_access_entries(struct rhema_access_table *t)
{
    return atomic_load(&t->entries);
}

void rhema_access_stats(struct rhema_access_table *t, struct rhema_access_stats *out)
{
    out->flushes = atomic_load(&t->flushes);
    out->failed = atomic_load(&t->failed);
    out->written = atomic_load(&t->written);
    out->dropped = atomic_load(&t->dropped);
}

static void kick(struct rhema_access_table *t)
{
    pthread_mutex_lock(&t->wmu);
    if (!t->kicked) {
        t->kicked = 1;
        pthread_cond_signal(&t->wcv);
    }
    pthread_mutex_unlock(&t->wmu);
}

int rhema_access_count(struct rhema_access_table *t, const char *id,
                       const struct rhema_access_rec *a, int count_this, uint64_t now_ms,
                       uint64_t *count, uint64_t *last_ms)
{
    uint64_t h;
    struct shard *s = shard_of(t, id, &h);
    *count = a->count;
    *last_ms = a->last_ms;
    pthread_mutex_lock(&s->mu);
    struct entry *e = lookup(t, s, id, h, count_this);
    if (e && count_this && e->incarnation != a->incarnation) {
        /* counts of an earlier session of this id (or none yet): start over; a
         * flush still writing the old ones finds the incarnation changed */
        char *keep = e->id;
        *e = (struct entry){.id = keep, .incarnation = a->incarnation};
    }
    if (e && e->incarnation == a->incarnation) {
        if (count_this) {
            e->delta++;
            if (now_ms > e->last_ms)
                e->last_ms = now_ms;
        }
        *count += e->delta;
        /* what a flush writes (wrote) over the version this reader read is not in it yet */
        if (e->inflight && (e->inflight_base == 0 || e->inflight_base == a->version))
            *count += e->inflight;
        if (e->done && e->done_base == a->version)
            *count += e->done;
        if (e->last_ms > *last_ms)
            *last_ms = e->last_ms;
    }
    pthread_mutex_unlock(&s->mu);
    if (count_this && atomic_load(&t->entries) >= RHEMA_ACCESS_KICK_AT) {
        if (!atomic_load(&t->has_writer))
            return 1;
        kick(t);
    }
    return 0;
}

void rhema_access_forget(struct rhema_access_table *t, const char *id)
{
    uint64_t h;
    struct shard *s = shard_of(t, id, &h);
    pthread_mutex_lock(&s->mu);
    struct entry *e = lookup(t, s, id, h, 0);
    if (e) {
        char *keep = e->id;
        *e = (struct entry){.id = keep}; /* incarnation 0: a running flush drops its part */
    }
    pthread_mutex_unlock(&s->mu);
}

/* ---- the flush ---- */

struct item {
    char *id;
    uint64_t incarnation, amount, last_ms;
    struct rhema_access_rec a; /* the stored record read */
    int read;                  /* a was read ahead */
    int state;                 /* 0 to write, 1 written, 2 dropped, 3 to give back */
    char text[RHEMA_ACCESS_TEXT_MAX];
    struct rhema_storage_write w;
};

/*
 * Take every entry's delta into items (inflight); drop the entries with
 * nothing pending and nothing a late reader could still need.
 */
static size_t take(struct rhema_access_table *t, struct item **out, int *oom)
{
    size_t n = 0, cap = 0;
    struct item *v = NULL;
    *oom = 0;
    for (int i = 0; i < RHEMA_ACCESS_SHARDS; i++) {
        struct shard *s = &t->shard[i];
        size_t idle = 0;
        pthread_mutex_lock(&s->mu);
        for (size_t j = 0; j < s->cap; j++) {
            struct entry *e = &s->e[j];
            if (!e->id)
                continue;
            if (!e->delta) {
                /* what the last flush wrote stays one more pass for readers still
                 * between their stored read and the table */
                if (!e->inflight && e->done_pass + 1 < t->pass)
                    idle++;
                continue;
            }
            if (n == cap) {
                size_t nc = cap ? cap * 2 : 256;
                struct item *nv = realloc(v, nc * sizeof *nv);
                if (!nv) {
                    *oom = 1;
                    break;
                }
                v = nv, cap = nc;
            }
            char *id = strdup(e->id);
            if (!id) {
                *oom = 1;
                break;
            }
            v[n++] = (struct item){.id = id, .incarnation = e->incarnation, .amount = e->delta,
                                   .last_ms = e->last_ms};
            e->inflight += e->delta;
            e->inflight_base = 0;
            e->delta = 0;
        }
        if (idle && !*oom) { /* rebuild without them */
            struct entry *nv = calloc(s->cap, sizeof *nv);
            if (nv) {
                for (size_t j = 0; j < s->cap; j++) {
                    struct entry *e = &s->e[j];
                    if (!e->id)
                        continue;
                    if (!e->delta && !e->inflight && e->done_pass + 1 < t->pass) {
                        free(e->id);
                        continue;
                    }
                    place(nv, s->cap, e);
                }
                free(s->e);
                s->e = nv;
                s->n -= idle;
                atomic_fetch_sub(&t->entries, idle);
            }
        }
        pthread_mutex_unlock(&s->mu);
        if (*oom)
            break;
    }
    *out = v;
    return n;
}

/* Under the shard's lock: the entry of it when it is still the same incarnation. */
static struct entry *entry_of(struct rhema_access_table *t, const struct item *it,
                              struct shard **sp)
{
    uint64_t h;
    struct shard *s = shard_of(t, it->id, &h);
    *sp = s;
    pthread_mutex_lock(&s->mu);
    struct entry *e = lookup(t, s, it->id, h, 0);
    if (e && e->incarnation != it->incarnation)
        e = NULL;
    return e;
}

/* Item it ends: written over version `base` (state 1), dropped (2) or given back (3). */
static void settle(struct rhema_access_table *t, struct item *it, int state, uint64_t base)
{
    struct shard *s;
    struct entry *e = entry_of(t, it, &s);
    it->state = state;
    if (state == 1)
        atomic_fetch_add(&t->written, it->amount);
    else if (state == 2)
        atomic_fetch_add(&t->dropped, it->amount);
    if (e) {
        e->inflight -= it->amount < e->inflight ? it->amount : e->inflight;
        e->inflight_base = 0;
        if (state == 1) {
            e->done = it->amount;
            e->done_base = base;
            e->done_pass = t->pass;
        } else if (state == 3) {
            e->delta += it->amount;
        }
    }
    pthread_mutex_unlock(&s->mu);
}

/* Read the stored records of the items still to write, get_many where the plugin has it. */
static int read_records(struct rhema_access_table *t, const struct rhema_storage_plugin *vt,
                        rhema_storage_conn *conn, struct item *v, size_t n)
{
    const char *keys[RHEMA_STORAGE_GET_MANY_MAX], *nss[RHEMA_STORAGE_GET_MANY_MAX];
    struct rhema_storage_value vals[RHEMA_STORAGE_GET_MANY_MAX];
    int rcs[RHEMA_STORAGE_GET_MANY_MAX];
    size_t at[RHEMA_STORAGE_GET_MANY_MAX];
    for (size_t i = 0; i < n; i++)
        v[i].read = 0;
    for (size_t i = 0; vt->get_many && i < n;) {
        size_t m = 0;
        for (; i < n && m < RHEMA_STORAGE_GET_MANY_MAX; i++)
            if (v[i].state == 0) {
                keys[m] = v[i].id;
                nss[m] = RHEMA_ACCESS_NS;
                vals[m].size = sizeof vals[m];
                at[m++] = i;
            }
        if (m < 2 || vt->get_many(conn, nss, keys, m, vals, rcs) != 0)
            break; /* the rest one by one */
        for (size_t j = 0; j < m; j++) {
            struct item *it = &v[at[j]];
            if (rcs[j] == 0)
                rhema_access_parse(&vals[j], &it->a);
            else if (rcs[j] == RHEMA_ENOTFOUND)
                memset(&it->a, 0, sizeof it->a);
            else
                continue; /* read again below */
            it->read = 1;
        }
    }
    for (size_t i = 0; i < n; i++) {
        struct item *it = &v[i];
        if (it->state != 0 || it->read)
            continue;
        struct rhema_storage_value val = {.size = sizeof val};
        int rc = vt->get(conn, RHEMA_ACCESS_NS, it->id, &val);
        if (rc == 0)
            rhema_access_parse(&val, &it->a);
        else if (rc == RHEMA_ENOTFOUND)
            memset(&it->a, 0, sizeof it->a);
        else
            return rc;
        it->read = 1;
    }
    (void)t;
    return 0;
}

/*
 * Write items v[0..n) (the stored records read, compare-and-set, read
 * again on a conflict); g has room for n.  0 or the first error; an item
 * left in state 0 was not written.
 */
static int flush_chunk(struct rhema_access_table *t, const struct rhema_storage_plugin *vt,
                       rhema_storage_conn *conn, struct item *v, size_t n,
                       struct rhema_storage_batch *g)
{
    int first = 0;
    for (int attempt = 0; attempt < FLUSH_RETRIES; attempt++) {
        int rc = read_records(t, vt, conn, v, n);
        if (rc)
            return rc;
        size_t m = 0;
        for (size_t i = 0; i < n; i++) {
            struct item *it = &v[i];
            if (it->state != 0)
                continue;
            /* the session is gone, or is another one now: its counts go with it */
            if (!it->a.version || it->a.incarnation != it->incarnation) {
                settle(t, it, 2, 0);
                continue;
            }
            struct shard *s;
            struct entry *e = entry_of(t, it, &s);
            if (e)
                e->inflight_base = it->a.version; /* readers of it add the inflight */
            pthread_mutex_unlock(&s->mu);
            int len = rhema_access_format(it->text, sizeof it->text, it->a.count + it->amount,
                                          it->last_ms > it->a.last_ms ? it->last_ms : it->a.last_ms,
                                          it->a.incarnation);
            it->w = (struct rhema_storage_write){.size = sizeof(struct rhema_storage_write),
                                                 .op = RHEMA_WRITE_PUT,
                                                 .ns = RHEMA_ACCESS_NS,
                                                 .key = it->id,
                                                 .value = it->text,
                                                 .value_len = (size_t)len,
                                                 .expected_version = it->a.version};
            g[m] = (struct rhema_storage_batch){.size = sizeof g[m], .writes = &it->w, .n = 1};
            m++;
        }
        if (m == 0)
            break;
        int grc = 0;
        if (vt->group && m > 1)
            grc = vt->group(conn, g, m);
        else
            for (size_t j = 0; j < m; j++)
                g[j].result = vt->put(conn, g[j].writes);
        if (grc) /* nothing applied: given back by the caller */
            return grc;
        for (size_t j = 0; j < m; j++) {
            struct item *it = (struct item *)((char *)g[j].writes - offsetof(struct item, w));
            if (g[j].result == RHEMA_ECONFLICT)
                continue; /* another writer of the record (a node, a process): read it again */
            if (g[j].result) {
                if (!first)
                    first = g[j].result;
                settle(t, it, 3, 0);
            } else {
                settle(t, it, 1, it->a.version);
            }
        }
    }
    return first;
}

int rhema_access_flush(struct rhema_access_table *t, const struct rhema_storage_plugin *vt,
                       rhema_storage_conn *conn)
{
    struct item *v = NULL;
    struct rhema_storage_batch *g = NULL;
    int first = 0, oom;
    pthread_mutex_lock(&t->flush_mu);
    t->pass++;
    size_t n = take(t, &v, &oom);
    if (oom)
        first = RHEMA_ENOMEM;
    if (n && !(g = calloc(n, sizeof *g))) {
        first = RHEMA_ENOMEM;
        goto out;
    }
    /*
     * In chunks, each one transaction: on a backend whose writer holds what
     * its readers need while it commits (the file plugin's directory lock,
     * Redis's single thread through an fsync), one transaction of every
     * count would hold the readers for all of it.  The chunk's size follows
     * rhema_access_chunk_step() (session_access.h); after a transaction
     * longer than RHEMA_ACCESS_HOLD_NS the writer rests as long before the
     * next, so readers get the backend at least half the time.
     */
    for (size_t at = 0; at < n;) {
        size_t want = rhema_access_chunk_next(&t->chunk);
        size_t k = n - at < want ? n - at : want;
        uint64_t t0 = rhema_monotonic_ns();
        int rc = flush_chunk(t, vt, conn, v + at, k, g);
        uint64_t took = rhema_monotonic_ns() - t0;
        if (rc) { /* the rest goes back to the table for the next pass */
            if (!first)
                first = rc;
            break;
        }
        at += k;
        rhema_access_chunk_step(&t->chunk, k, took);
        if (took > RHEMA_ACCESS_HOLD_NS && at < n) {
            struct timespec ts = {.tv_sec = (time_t)(took / 1000000000u),
                                  .tv_nsec = (long)(took % 1000000000u)};
            nanosleep(&ts, NULL);
        }
    }
out:
    for (size_t i = 0; i < n; i++) {
        if (v[i].state == 0) /* not written: counted again with the next pass */
            settle(t, &v[i], 3, 0);
        free(v[i].id);
    }
    free(v);
    free(g);
    if (n || first) {
        atomic_fetch_add(&t->flushes, 1);
        if (first)
            atomic_fetch_add(&t->failed, 1);
    }
    pthread_mutex_unlock(&t->flush_mu);
    return first;
}

/* ---- the chunk controller (session_access.h) ---- */

void rhema_access_chunk_init(struct rhema_access_chunk *c)
{
    *c = (struct rhema_access_chunk){.chunk = RHEMA_ACCESS_CHUNK_FIRST};
}

size_t rhema_access_chunk_next(struct rhema_access_chunk *c)
{
    c->odd = !c->odd;
    return c->odd ? c->chunk : c->chunk > 1 ? c->chunk / 2 : 2;
}

void rhema_access_chunk_step(struct rhema_access_chunk *c, size_t k, uint64_t took)
{
    double x = (double)k, y = (double)took;
    double w = c->seen < 16 ? 1.0 / (c->seen + 1) : 1.0 / 16; /* a mean, then a moving one */
    if (!k)
        return;
    c->seen++;
    c->mk += w * (x - c->mk);
    c->mt += w * (y - c->mt);
    c->mkk += w * (x * x - c->mkk);
    c->mkt += w * (x * y - c->mkt);
    c->mtt += w * (y * y - c->mtt);
    double vk = c->mkk - c->mk * c->mk, cov = c->mkt - c->mk * c->mt;
    if (c->seen < 8 || vk <= 0.01 * c->mk * c->mk)
        return; /* too few transactions, or of one size: no line to trust */
    /* the least-squares line through the sizes and times */
    double per = cov / vk, resid = (c->mtt - c->mt * c->mt) - per * cov;
    double se2 = resid > 0 ? resid / ((c->seen < 16 ? c->seen : 16) * vk) : 0;
    /* only what the fit is sure of moves the chunk: halve when even the low
     * end of the cost of a count (three standard errors below) puts the
     * size part over the bound, double when even the high end puts it under
     * a quarter of it */
    double over = per - RHEMA_ACCESS_HOLD_NS / (double)c->chunk;
    double under = RHEMA_ACCESS_HOLD_NS / 4.0 / (double)c->chunk - per;
    if (over > 0 && over * over > 9 * se2 && c->chunk > 1)
        c->chunk /= 2;
    else if (under > 0 && under * under > 9 * se2 && c->chunk < RHEMA_ACCESS_CHUNK_MAX)
        c->chunk *= 2;
}

/* ---- the writer ---- */

static void *writer_main(void *arg)
{
    struct rhema_access_table *t = arg;
    int failing = 0;
    pthread_setname_np(pthread_self(), "rhema-access");
    pthread_mutex_lock(&t->wmu);
    for (;;) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += FLUSH_PERIOD_MS / 1000;
        while (!t->stopping && !t->kicked)
            if (pthread_cond_timedwait(&t->wcv, &t->wmu, &ts) == ETIMEDOUT)
                break;
        int stopping = t->stopping;
        t->kicked = 0;
        pthread_mutex_unlock(&t->wmu);
        int rc = rhema_access_flush(t, t->vt, t->conn);
        if (rc && !failing)
            rhema_log(RHEMA_LOG_WARN, WHO, "writing access counts: %s (%s); kept, tried again",
                      rhema_strerror(rc), t->vt->errmsg(t->conn));
        else if (!rc && failing)
            rhema_log(RHEMA_LOG_NOTICE, WHO, "access counts written again");
        failing = rc != 0;
        pthread_mutex_lock(&t->wmu);
        if (stopping)
            break;
    }
    pthread_mutex_unlock(&t->wmu);
    return NULL;
}

int rhema_access_writer_start(struct rhema_access_table *t, const struct rhema_storage_plugin *vt,
                              rhema_storage_instance *inst, char **err)
{
    char *serr = NULL;
    int rc = vt->connect(inst, &t->conn, &serr);
    if (rc) {
        if (asprintf(err, "access counts: storage connect failed: %s",
                     serr ? serr : rhema_strerror(rc)) < 0)
            *err = NULL;
        free(serr);
        t->conn = NULL;
        return rc;
    }
    t->vt = vt;
    t->stopping = t->kicked = 0;
    if (pthread_create(&t->thread, NULL, writer_main, t) != 0) {
        vt->disconnect(t->conn);
        t->conn = NULL;
        if (asprintf(err, "access counts: cannot start the writer thread") < 0)
            *err = NULL;
        return RHEMA_ENOMEM;
    }
    t->running = 1;
    atomic_store(&t->has_writer, 1);
    return 0;
}

void rhema_access_writer_stop(struct rhema_access_table *t)
{
    if (!t || !t->running)
        return;
    pthread_mutex_lock(&t->wmu);
    t->stopping = 1;
    pthread_cond_signal(&t->wcv);
    pthread_mutex_unlock(&t->wmu);
    pthread_join(t->thread, NULL); /* its last pass wrote what was counted */
    t->running = 0;
    atomic_store(&t->has_writer, 0);
    t->vt->disconnect(t->conn);
    t->conn = NULL;
}
