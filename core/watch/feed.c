/*
 * feed -- the change feed: records, the ring, the feed thread (feed.h).
 */
#include "rhema_build.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "../json_fields.h"
#include "../log.h"
#include "../plugin.h"
#include "../server.h"
#include "../util.h"
#include "feed.h"
#include "json_fields.h"

#define RING_CAP 4096                /* events kept in memory at most */
#define RING_BYTES (4u << 20)        /* bytes of event text kept at most */
#define SCAN_PAGE 256                /* records read per scan() call */
/*
 * After a round that read GATHER_MIN records or more, the next one waits
 * GATHER_NS for more to gather: on a busy node each scan then reads a
 * batch instead of one or two records (a scan's transaction and seek cost
 * more than its records).  A write on a quiet node, or one writer waiting
 * for its event before it writes again, is read at once.
 */
#define GATHER_MIN 2
#define GATHER_NS 1000000
#define COMPACTED_KEY "compacted"

/* ---- records ---- */

char *rhema_feed_record(const struct rhema_feed_fields *f, size_t *len)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    int rc = json_object_set_new(o, "type", json_string(f->type)) |
             json_object_set_new(o, "id", json_string(f->id));
    if (f->versioned)
        rc |= json_object_set_new(o, "versioned", json_true());
    else if (f->version)
        rc |= json_object_set_new(o, "version", json_integer((json_int_t)f->version));
    if (f->session)
        rc |= json_object_set_new(o, "session", json_string(f->session));
    if (f->agent)
        rc |= json_object_set_new(o, "agent", json_string(f->agent));
    if (f->recipients)
        rc |= json_object_set(o, "recipients", f->recipients);
    if (f->from)
        rc |= json_object_set_new(o, "from", json_string(f->from));
    if (f->to)
        rc |= json_object_set_new(o, "to", json_string(f->to));
    rc |= json_object_set_new(o, "ts", json_integer((json_int_t)rhema_realtime_ms()));
    char *t = rc ? NULL : rhema_json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (t)
        *len = strlen(t);
    return t;
}

void rhema_feed_write(struct rhema_storage_write *w, const char *text, size_t len)
{
    memset(w, 0, sizeof *w);
    w->size = sizeof *w;
    w->op = RHEMA_WRITE_PUT;
    w->ns = RHEMA_FEED_NS;
    w->key = "";
    w->value = text;
    w->value_len = len;
    w->expected_version = RHEMA_VERSION_ABSENT;
    w->flags = RHEMA_WRITE_SEQUENCED;
}

int rhema_feed_write_is_record(const struct rhema_storage_write *w)
{
    return w->size >= sizeof *w && (w->flags & RHEMA_WRITE_SEQUENCED) &&
           strcmp(w->ns, RHEMA_FEED_NS) == 0;
}

json_t *rhema_feed_event(uint64_t rev, const void *value, size_t len)
{
    json_t *rec = rhema_json_loadb(value, len, 0, NULL);
    if (!json_is_object(rec) || !json_is_string(json_object_get(rec, "type")) ||
        !json_is_string(json_object_get(rec, "id"))) {
        json_decref(rec);
        return NULL;
    }
    json_t *ev = json_object();
    const char *k;
    json_t *v;
    json_object_set_new(ev, "revision", json_integer((json_int_t)rev));
    json_object_foreach(rec, k, v)
    {
        if (strcmp(k, "versioned") == 0) {
            if (json_is_true(v))
                json_object_set_new(ev, "version", json_integer((json_int_t)rev));
        } else {
            json_object_set(ev, k, v);
        }
    }
    json_decref(rec);
    return ev;
}

char *rhema_feed_event_text(uint64_t rev, const char *value, size_t len, size_t *out_len)
{
    /*
     * The record is compact JSON that rhema_feed_record() wrote: an object
     * whose members the event keeps in order, behind "revision", with
     * "versioned":true becoming "version":rev.  Outside a string a '"' is
     * never escaped and inside one it always is, so the first ,"versioned":true
     * with bare quotes is the member.
     */
    static const char mark[] = ",\"versioned\":true";
    char head[48], ver[40];
    int hl, vl = 0;
    if (len < 2 || value[0] != '{' || value[len - 1] != '}' || value[1] == '}')
        return NULL;
    hl = snprintf(head, sizeof head, "{\"revision\":%llu,", (unsigned long long)rev);
    const char *m = memmem(value, len, mark, sizeof mark - 1);
    size_t at = m ? (size_t)(m - value) : len, skip = m ? sizeof mark - 1 : 0;
    if (m)
        vl = snprintf(ver, sizeof ver, ",\"version\":%llu", (unsigned long long)rev);
    size_t n = (size_t)hl + (at - 1) + (size_t)vl + (len - at - skip);
    char *t = malloc(n + 1);
    if (!t)
        return NULL;
    memcpy(t, head, (size_t)hl);
    memcpy(t + hl, value + 1, at - 1);
    memcpy(t + hl + at - 1, ver, (size_t)vl);
    memcpy(t + hl + at - 1 + vl, value + at + skip, len - at - skip);
    t[n] = '\0';
    *out_len = n;
    return t;
}

/* 1 when `type` is named by the comma list (exact, or a prefix ending in '.'). */
static int type_match(const char *types, const char *type)
{
    size_t tl = strlen(type);
    for (const char *p = types; *p;) {
        const char *c = strchr(p, ',');
        size_t n = c ? (size_t)(c - p) : strlen(p);
        if (n > 0 && ((n == tl && memcmp(p, type, n) == 0) ||
                      (p[n - 1] == '.' && n <= tl && memcmp(p, type, n) == 0)))
            return 1;
        p += n + (c ? 1 : 0);
    }
    return 0;
}

int rhema_feed_match(json_t *ev, const char *types, const char *session, const char *agent)
{
    if (types && !type_match(types, json_string_value(json_object_get(ev, "type"))))
        return 0;
    if (session) {
        const char *s = json_string_value(json_object_get(ev, "session"));
        if (!s || strcmp(s, session) != 0)
            return 0;
    }
    if (agent) {
        const char *a = json_string_value(json_object_get(ev, "agent"));
        if (a && strcmp(a, agent) == 0)
            return 1;
        size_t i;
        json_t *r;
        json_array_foreach(json_object_get(ev, "recipients"), i, r) if (
            json_is_string(r) && strcmp(json_string_value(r), agent) == 0) return 1;
        return 0;
    }
    return 1;
}

/* ---- the ring ---- */

int rhema_feed_ring_init(struct rhema_feed_ring *r, size_t cap, size_t max_bytes, uint64_t floor)
{
    memset(r, 0, sizeof *r);
    if (!(r->e = calloc(cap, sizeof *r->e)))
        return RHEMA_ENOMEM;
    r->cap = cap;
    r->max_bytes = max_bytes;
    r->floor = floor;
    return 0;
}

static void ring_drop_oldest(struct rhema_feed_ring *r)
{
    struct rhema_feed_ring_entry *e = &r->e[r->first];
    r->floor = e->rev;
    r->bytes -= e->len;
    json_decref(e->ev);
    free(e->text);
    memset(e, 0, sizeof *e);
    r->first = (r->first + 1) % r->cap;
    r->n--;
}

void rhema_feed_ring_release(struct rhema_feed_ring *r)
{
    while (r->n)
        ring_drop_oldest(r);
    free(r->e);
    memset(r, 0, sizeof *r);
}

int rhema_feed_ring_push(struct rhema_feed_ring *r, uint64_t rev, json_t *ev, const char *etext,
                         size_t elen)
{
    char *text = etext ? malloc(elen + 1) : rhema_json_dumps(ev, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!text) {
        json_decref(ev);
        return RHEMA_ENOMEM;
    }
    if (etext) {
        memcpy(text, etext, elen);
        text[elen] = '\0';
    }
    size_t len = etext ? elen : strlen(text);
    while (r->n && (r->n == r->cap || r->bytes + len > r->max_bytes))
        ring_drop_oldest(r);
    struct rhema_feed_ring_entry *e = &r->e[(r->first + r->n) % r->cap];
    e->rev = rev;
    e->ev = ev;
    e->text = text;
    e->len = len;
    r->bytes += len;
    r->n++;
    return 0;
}

const struct rhema_feed_ring_entry *rhema_feed_ring_at(const struct rhema_feed_ring *r, size_t i)
{
    return i < r->n ? &r->e[(r->first + i) % r->cap] : NULL;
}

size_t rhema_feed_ring_find(const struct rhema_feed_ring *r, uint64_t after)
{
    size_t lo = 0, hi = r->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (rhema_feed_ring_at(r, mid)->rev <= after)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* ---- reading the store ---- */

static void rev_key(char *buf, uint64_t rev)
{
    snprintf(buf, RHEMA_SEQ_DIGITS + 1, "%020" PRIu64, rev);
}

static int key_rev(const char *key, uint64_t *rev)
{
    if (strlen(key) != RHEMA_SEQ_DIGITS)
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(key, &end, 10);
    if (errno || *end)
        return -1;
    *rev = (uint64_t)v;
    return 0;
}

struct scan_ctx {
    rhema_feed_cb *cb;
    void *ctx;
    uint64_t last;
    size_t visited; /* keys the scan visited */
    int stopped;
};

static int on_record(void *arg, const char *key, const void *value, size_t len, uint64_t version)
{
    struct scan_ctx *s = arg;
    uint64_t rev;
    (void)version;
    s->visited++;
    if (key_rev(key, &rev) != 0)
        return 0; /* not a record of the feed */
    s->last = rev;
    json_t *ev = rhema_feed_event(rev, value, len);
    if (!ev) {
        rhema_log(RHEMA_LOG_WARN, "feed", "record %s is not an event; skipped", key);
        return 0;
    }
    size_t tl = 0;
    char *text = rhema_feed_event_text(rev, value, len, &tl); /* no dump of ev */
    if (!text && (text = rhema_json_dumps(ev, JSON_COMPACT | JSON_PRESERVE_ORDER)))
        tl = strlen(text);
    int rc = text ? s->cb(s->ctx, rev, ev, text, tl) : RHEMA_ENOMEM;
    free(text);
    json_decref(ev);
    if (rc > 0)
        s->stopped = 1;
    return rc;
}

int rhema_feed_scan(const struct rhema_storage_plugin *vt, rhema_storage_conn *conn,
                    uint64_t after, size_t limit, rhema_feed_cb *cb, void *ctx, uint64_t *last,
                    size_t *visited)
{
    char from[RHEMA_SEQ_DIGITS + 1];
    struct scan_ctx s = {.cb = cb, .ctx = ctx, .last = after};
    if (visited)
        *visited = 0;
    if (after == UINT64_MAX) {
        *last = after;
        return 0;
    }
    rev_key(from, after + 1);
    int rc = vt->scan(conn, RHEMA_FEED_NS, from, NULL, limit, on_record, &s);
    *last = s.last;
    if (visited)
        *visited = s.visited;
    return rc;
}

int rhema_feed_compacted(const struct rhema_storage_plugin *vt, rhema_storage_conn *conn,
                         uint64_t *out)
{
    struct rhema_storage_value v = {.size = sizeof v};
    int rc = vt->get(conn, RHEMA_FEED_META_NS, COMPACTED_KEY, &v);
    if (rc == RHEMA_ENOTFOUND) {
        *out = 0;
        return 0;
    }
    if (rc)
        return rc;
    char buf[32];
    size_t n = v.len < sizeof buf - 1 ? v.len : sizeof buf - 1;
    memcpy(buf, v.data, n);
    buf[n] = '\0';
    *out = strtoull(buf, NULL, 10);
    return 0;
}

struct first_ctx {
    uint64_t rev;
    int found;
};

static int on_first(void *arg, const char *key, const void *value, size_t len, uint64_t version)
{
    struct first_ctx *f = arg;
    (void)value, (void)len, (void)version;
    if (key_rev(key, &f->rev) != 0)
        return 0;
    f->found = 1;
    return 1;
}

/* The first record at or after rev; *found 0 when none. */
static int first_at(const struct rhema_storage_plugin *vt, rhema_storage_conn *conn, uint64_t rev,
                    struct first_ctx *f)
{
    char from[RHEMA_SEQ_DIGITS + 1];
    rev_key(from, rev);
    f->found = 0;
    return vt->scan(conn, RHEMA_FEED_NS, from, NULL, 1, on_first, f);
}

int rhema_feed_oldest(const struct rhema_storage_plugin *vt, rhema_storage_conn *conn,
                      uint64_t *out)
{
    struct first_ctx f;
    int rc = first_at(vt, conn, 0, &f);
    if (rc == 0)
        *out = f.found ? f.rev : 0;
    return rc;
}

/*
 * The last record's revision without reading the feed: a binary search
 * over the key space with limit-1 scans (about 64 of them).
 */
static int find_head(const struct rhema_storage_plugin *vt, rhema_storage_conn *conn,
                     uint64_t *head)
{
    struct first_ctx f;
    int rc = first_at(vt, conn, 0, &f);
    if (rc || !f.found) {
        *head = 0;
        return rc;
    }
    uint64_t lo = f.rev, hi = 9999999999999999999ull; /* a record exists at lo; none above hi */
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2 + 1;
        if ((rc = first_at(vt, conn, mid, &f)))
            return rc;
        if (f.found)
            lo = f.rev;
        else
            hi = mid - 1;
    }
    *head = lo;
    return 0;
}

/* ---- compaction ---- */

struct old_ctx {
    uint64_t cutoff_ms;
    char (*keys)[RHEMA_SEQ_DIGITS + 1];
    size_t n, cap;
    uint64_t last;
};

static int on_old(void *arg, const char *key, const void *value, size_t len, uint64_t version)
{
    struct old_ctx *o = arg;
    uint64_t rev;
    (void)version;
    if (key_rev(key, &rev) != 0)
        return 0;
    json_t *rec = rhema_json_loadb(value, len, 0, NULL);
    json_int_t ts = json_integer_value(json_object_get(rec, "ts"));
    json_decref(rec);
    if ((uint64_t)ts >= o->cutoff_ms)
        return 1; /* records are in revision order, and so (nearly) in time order */
    memcpy(o->keys[o->n++], key, RHEMA_SEQ_DIGITS + 1);
    o->last = rev;
    return o->n == o->cap ? 1 : 0;
}

int rhema_feed_compact(const struct rhema_storage_plugin *vt, rhema_storage_conn *conn,
                       uint64_t cutoff_ms, size_t batch, size_t *removed, char **err)
{
    struct old_ctx o = {.cutoff_ms = cutoff_ms, .cap = batch};
    struct rhema_storage_write *w = calloc(batch + 1, sizeof *w);
    o.keys = calloc(batch, sizeof *o.keys);
    int rc = 0;
    *removed = 0;
    if (!w || !o.keys) {
        rc = rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
        goto out;
    }
    for (;;) {
        o.n = 0;
        if ((rc = vt->scan(conn, RHEMA_FEED_NS, NULL, NULL, batch, on_old, &o))) {
            rhema_set_error(err, rc, "events: scan failed: %s", rhema_strerror(rc));
            goto out;
        }
        if (!o.n)
            break;
        char meta[32];
        for (size_t i = 0; i < o.n; i++) {
            w[i] = (struct rhema_storage_write){.size = sizeof *w, .op = RHEMA_WRITE_DEL,
                                                .ns = RHEMA_FEED_NS, .key = o.keys[i]};
        }
        int ml = snprintf(meta, sizeof meta, "%" PRIu64, o.last);
        w[o.n] = (struct rhema_storage_write){.size = sizeof *w, .op = RHEMA_WRITE_PUT,
                                              .ns = RHEMA_FEED_META_NS, .key = COMPACTED_KEY,
                                              .value = meta, .value_len = (size_t)ml};
        rc = vt->batch(conn, w, o.n + 1);
        if (rc == RHEMA_ENOTFOUND || rc == RHEMA_ECONFLICT)
            continue; /* another node compacted the same records: read again */
        if (rc) {
            rhema_set_error(err, rc, "events: compaction failed: %s", rhema_strerror(rc));
            goto out;
        }
        *removed += o.n;
        if (o.n < batch)
            break;
    }
out:
    free(w);
    free(o.keys);
    return rc;
}

/* ---- the feed thread ---- */

struct rhema_feed {
    const struct rhema_storage_plugin *vt;
    rhema_storage_instance *inst;
    rhema_storage_conn *conn;
    pthread_t thread;
    int started, watching;
    pthread_mutex_t lock;       /* stop, subs; the wait for pending */
    pthread_cond_t cond;
    atomic_int pending;         /* a wake not yet taken by the feed thread */
    int stop;
    int64_t poll_ms;
    int64_t retention_s;        /* coordination.event_retention_seconds */
    uint64_t next_compact_ns;   /* monotonic */
    uint64_t compacted_total;
    rhema_feed_pass_fn *pass;   /* run with each compaction (rhema_feed_set_pass); under lock */
    const char *pass_name;
    struct event **subs;        /* per worker id, NULL: none */
    int nsubs;
    pthread_rwlock_t ring_lock; /* ring, head */
    struct rhema_feed_ring ring;
    uint64_t head;
};

void rhema_feed_wake(struct rhema_feed *f)
{
    if (!f)
        return;
    /*
     * A wake the feed thread has not taken yet covers this one: it clears
     * pending before it reads, so it reads what was committed before now.
     * Only the first wake of a round locks and signals: on a busy node
     * the writers no longer take the feed's lock and call futex once a
     * write each.
     */
    if (atomic_exchange(&f->pending, 1))
        return;
    pthread_mutex_lock(&f->lock);
    pthread_cond_signal(&f->cond);
    pthread_mutex_unlock(&f->lock);
}

static void on_notify(void *arg)
{
    rhema_feed_wake(arg);
}

int rhema_feed_subscribe(struct rhema_feed *f, int worker_id, struct event *ev)
{
    if (worker_id < 0 || worker_id >= f->nsubs)
        return RHEMA_EINVAL;
    pthread_mutex_lock(&f->lock);
    f->subs[worker_id] = ev;
    pthread_mutex_unlock(&f->lock);
    return 0;
}

void rhema_feed_unsubscribe(struct rhema_feed *f, int worker_id)
{
    if (!f || worker_id < 0 || worker_id >= f->nsubs)
        return;
    pthread_mutex_lock(&f->lock);
    f->subs[worker_id] = NULL;
    pthread_mutex_unlock(&f->lock);
}

uint64_t rhema_feed_head(struct rhema_feed *f)
{
    pthread_rwlock_rdlock(&f->ring_lock);
    uint64_t h = f->head;
    pthread_rwlock_unlock(&f->ring_lock);
    return h;
}

int rhema_feed_read(struct rhema_feed *f, uint64_t after, size_t max, rhema_feed_cb *cb, void *ctx,
                    uint64_t *head)
{
    int rc = 0;
    pthread_rwlock_rdlock(&f->ring_lock);
    *head = f->head;
    if (after < f->ring.floor) {
        rc = RHEMA_ENOTFOUND;
    } else {
        for (size_t i = rhema_feed_ring_find(&f->ring, after); i < f->ring.n; i++) {
            const struct rhema_feed_ring_entry *e = rhema_feed_ring_at(&f->ring, i);
            rc++;
            if (cb(ctx, e->rev, e->ev, e->text, e->len) != 0 || (max && (size_t)rc >= max))
                break;
        }
    }
    pthread_rwlock_unlock(&f->ring_lock);
    return rc;
}

static int on_new(void *arg, uint64_t rev, json_t *ev, const char *text, size_t len)
{
    struct rhema_feed *f = arg;
    json_incref(ev);
    pthread_rwlock_wrlock(&f->ring_lock);
    int rc = rev > f->head ? rhema_feed_ring_push(&f->ring, rev, ev, text, len)
                           : (json_decref(ev), 0);
    if (rc == 0 && rev > f->head)
        f->head = rev;
    pthread_rwlock_unlock(&f->ring_lock);
    return rc < 0 ? rc : 0;
}

/*
 * Read what is new, page by page; then wake the workers.  On the feed
 * thread.  The number of keys read.
 */
static size_t feed_catch_up(struct rhema_feed *f)
{
    size_t got = 0;
    for (;;) {
        uint64_t after = rhema_feed_head(f), last;
        size_t visited = 0;
        int rc = rhema_feed_scan(f->vt, f->conn, after, SCAN_PAGE, on_new, f, &last, &visited);
        if (rc) {
            rhema_log(RHEMA_LOG_WARN, "feed", "reading the change feed: %s", rhema_strerror(rc));
            break;
        }
        if (last == after)
            break;
        got += visited;
        /*
         * Keys that are not events move the cursor too: keep the head at
         * the last key visited, so that a page of them is never read again.
         */
        pthread_rwlock_wrlock(&f->ring_lock);
        if (last > f->head) {
            f->head = last;
            if (f->ring.n == 0)
                f->ring.floor = last;
        }
        pthread_rwlock_unlock(&f->ring_lock);
        /* a page that was not full reached the end: no second scan to find nothing
         * (a record committed since woke the feed again) */
        if (visited < SCAN_PAGE)
            break;
    }
    if (!got)
        return 0;
    pthread_mutex_lock(&f->lock);
    for (int i = 0; i < f->nsubs; i++)
        if (f->subs[i])
            event_active(f->subs[i], EV_TIMEOUT, 0);
    pthread_mutex_unlock(&f->lock);
    return got;
}

/*
 * The period of compaction: half the retention, between 1 s and a minute,
 * so that a record outlives its retention by at most that much.
 */
static uint64_t compact_period_ns(const struct rhema_feed *f)
{
    int64_t s = f->retention_s / 2;
    s = s < 1 ? 1 : s > 60 ? 60 : s;
    return (uint64_t)s * 1000000000ull;
}

/* Compaction, when due.  On the feed thread, with its connection. */
static void feed_compact_due(struct rhema_feed *f)
{
    uint64_t now = rhema_monotonic_ns();
    if (now < f->next_compact_ns)
        return;
    f->next_compact_ns = now + compact_period_ns(f);
    uint64_t keep = (uint64_t)f->retention_s * 1000u, t = rhema_realtime_ms();
    size_t removed = 0;
    char *err = NULL;
    if (rhema_feed_compact(f->vt, f->conn, t > keep ? t - keep : 0, SCAN_PAGE, &removed, &err))
        rhema_log(RHEMA_LOG_WARN, "feed", "compaction: %s", err ? err : "failed");
    else if (removed)
        rhema_log(RHEMA_LOG_DEBUG, "feed", "compaction: removed %zu event record(s)", removed);
    f->compacted_total += removed;
    free(err);
    pthread_mutex_lock(&f->lock);
    rhema_feed_pass_fn *pass = f->pass;
    const char *name = f->pass_name;
    pthread_mutex_unlock(&f->lock);
    if (!pass)
        return;
    err = NULL;
    removed = 0; /* the same pass's other work (inbox expiry: rhema_feed_set_pass) */
    if (pass(f->vt, f->conn, t, &removed, &err))
        rhema_log(RHEMA_LOG_WARN, "feed", "%s: %s", name, err ? err : "failed");
    else if (removed)
        rhema_log(RHEMA_LOG_DEBUG, "feed", "%s: removed %zu", name, removed);
    free(err);
}

void rhema_feed_set_pass(struct rhema_feed *f, const char *name, rhema_feed_pass_fn *fn)
{
    if (!f)
        return;
    pthread_mutex_lock(&f->lock);
    f->pass = fn;
    f->pass_name = name;
    pthread_mutex_unlock(&f->lock);
}

static void *feed_main(void *arg)
{
    struct rhema_feed *f = arg;
    pthread_setname_np(pthread_self(), "rhema-feed");
    int busy = 0;
    pthread_mutex_lock(&f->lock);
    while (!f->stop) {
        if (busy) { /* let a batch gather (GATHER_NS) */
            struct timespec ts;
            rhema_deadline_after(CLOCK_REALTIME, GATHER_NS, &ts);
            while (!f->stop && pthread_cond_timedwait(&f->cond, &f->lock, &ts) == 0)
                ; /* wakes of writers: they are what gathers */
        }
        if (f->stop)
            break;
        if (!atomic_load(&f->pending)) {
            /* with watch(): a safety poll every second, in case a notification was lost */
            int64_t ms = f->watching ? 1000 : f->poll_ms;
            uint64_t now = rhema_monotonic_ns();
            if (f->next_compact_ns > now && (int64_t)((f->next_compact_ns - now) / 1000000u) < ms)
                ms = (int64_t)((f->next_compact_ns - now) / 1000000u) + 1;
            struct timespec ts;
            rhema_deadline_after(CLOCK_REALTIME, (uint64_t)ms * 1000000u, &ts);
            pthread_cond_timedwait(&f->cond, &f->lock, &ts);
        }
        if (f->stop)
            break;
        atomic_store(&f->pending, 0);
        pthread_mutex_unlock(&f->lock);
        busy = feed_catch_up(f) >= GATHER_MIN;
        feed_compact_due(f);
        pthread_mutex_lock(&f->lock);
    }
    pthread_mutex_unlock(&f->lock);
    return NULL;
}

int rhema_feed_check(const struct rhema_server *srv, char **err)
{
    int on = 1;
    rhema_config_get_bool(srv->cfg, "coordination.change_feed", &on);
    if (!on)
        return 0;
    const struct rhema_loaded_plugin *p = srv->storage_plugin;
    if (p && (p->abi_minor < 3 || !(p->vt.storage.features & RHEMA_STORAGE_SEQUENCED)))
        return rhema_set_error(err, RHEMA_EINVAL,
                               "coordination.change_feed needs a storage plugin with sequenced "
                               "writes (storage ABI minor 3 and the features flag "
                               "RHEMA_STORAGE_SEQUENCED); '%s' is of minor %u%s: "
                               "update the plugin or set coordination.change_feed = false",
                               p->name, (unsigned)p->abi_minor,
                               p->abi_minor >= 3 ? " without RHEMA_STORAGE_SEQUENCED" : "");
    return 0;
}

int rhema_feed_open(struct rhema_server *srv, struct rhema_feed **out, char **err)
{
    struct rhema_feed *f = calloc(1, sizeof *f);
    char *serr = NULL;
    int rc;
    if (!f)
        return rhema_set_error(err, RHEMA_ENOMEM, "change feed: out of memory");
    f->vt = srv->storage;
    f->inst = srv->storage_inst;
    f->poll_ms = 50;
    rhema_config_get_int(srv->cfg, "coordination.event_poll_ms", &f->poll_ms);
    f->retention_s = 3600;
    rhema_config_get_int(srv->cfg, "coordination.event_retention_seconds", &f->retention_s);
    f->next_compact_ns = rhema_monotonic_ns() + compact_period_ns(f);
    pthread_mutex_init(&f->lock, NULL);
    pthread_cond_init(&f->cond, NULL);
    pthread_rwlock_init(&f->ring_lock, NULL);
    f->nsubs = srv->nworkers > 0 ? srv->nworkers : (srv->cfg->workers > 0 ? srv->cfg->workers
                                                                          : rhema_ncpu());
    if (!(f->subs = calloc((size_t)f->nsubs, sizeof *f->subs))) {
        rc = rhema_set_error(err, RHEMA_ENOMEM, "change feed: out of memory");
        goto fail;
    }
    if ((rc = f->vt->connect(f->inst, &f->conn, &serr))) {
        rhema_set_error(err, rc, "change feed: storage connect failed: %s",
                        serr ? serr : rhema_strerror(rc));
        free(serr);
        f->conn = NULL;
        goto fail;
    }
    if ((rc = find_head(f->vt, f->conn, &f->head))) {
        rhema_set_error(err, rc, "change feed: cannot find its head: %s", rhema_strerror(rc));
        goto fail;
    }
    if ((rc = rhema_feed_ring_init(&f->ring, RING_CAP, RING_BYTES, f->head))) {
        rhema_set_error(err, rc, "change feed: out of memory");
        goto fail;
    }
    /* the at-rest wrapper passes the real plugin's watch() on (atrest.c) */
    if (f->vt->watch && f->vt->unwatch) {
        if ((rc = f->vt->watch(f->inst, on_notify, f, &serr))) {
            rhema_set_error(err, rc, "change feed: watch() failed: %s",
                            serr ? serr : rhema_strerror(rc));
            free(serr);
            goto fail;
        }
        f->watching = 1;
    }
    if (pthread_create(&f->thread, NULL, feed_main, f) != 0) {
        rc = rhema_set_error(err, RHEMA_ENOMEM, "change feed: cannot start its thread");
        goto fail;
    }
    f->started = 1;
    rhema_log(RHEMA_LOG_INFO, "feed", "change feed at revision %" PRIu64 " (%s)", f->head,
              f->watching ? "woken by the backend" : "polled");
    *out = f;
    return 0;
fail:
    rhema_feed_close(f);
    return rc;
}

void rhema_feed_close(struct rhema_feed *f)
{
    if (!f)
        return;
    if (f->watching)
        f->vt->unwatch(f->inst);
    if (f->started) {
        pthread_mutex_lock(&f->lock);
        f->stop = 1;
        pthread_cond_signal(&f->cond);
        pthread_mutex_unlock(&f->lock);
        pthread_join(f->thread, NULL);
    }
    if (f->conn)
        f->vt->disconnect(f->conn);
    if (f->ring.e)
        rhema_feed_ring_release(&f->ring);
    free(f->subs);
    pthread_mutex_destroy(&f->lock);
    pthread_cond_destroy(&f->cond);
    pthread_rwlock_destroy(&f->ring_lock);
    free(f);
}
