/*
 * inbox -- agent inboxes (issue 12, item 3); see inbox.h.
 */
#include "rhema_build.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inbox.h"
#include "../json_fields.h"
#include "feed.h"
#include "json_fields.h"

static const char *const prio_names[] = {"Emergency", "Critical", "High", "Normal", "Low"};

int rhema_inbox_priority_digit(const char *priority)
{
    if (!priority)
        return 3;
    for (int i = 0; i < 5; i++)
        if (strcmp(priority, prio_names[i]) == 0)
            return i;
    return -1;
}

static int fits(int n, size_t cap)
{
    return n >= 0 && (size_t)n < cap ? n : -1;
}

int rhema_inbox_prefix(char *buf, size_t cap, const char *agent, int p)
{
    return fits(snprintf(buf, cap, "%s/%d/", agent, p), cap);
}

int rhema_inbox_key(char *buf, size_t cap, const char *agent, int p, uint64_t version)
{
    return fits(snprintf(buf, cap, "%s/%d/%020" PRIu64, agent, p, version), cap);
}

int rhema_inbox_ack_key(char *buf, size_t cap, const char *agent, const char *sid,
                        const char *mid)
{
    return fits(snprintf(buf, cap, "%s/%s/%s", agent, sid, mid), cap);
}

int rhema_inbox_key_parse(const char *key, const char *agent, int *p, uint64_t *version)
{
    size_t al = strlen(agent);
    if (strncmp(key, agent, al) != 0 || key[al] != '/' || key[al + 1] < '0' ||
        key[al + 1] > '4' || key[al + 2] != '/' || strlen(key + al + 3) != 20)
        return -1;
    uint64_t v = 0;
    for (const char *c = key + al + 3; *c; c++) {
        uint64_t d = (uint64_t)(*c - '0');
        if (*c < '0' || *c > '9' || v > UINT64_MAX / 10 ||
            (v == UINT64_MAX / 10 && d > UINT64_MAX % 10))
            return -1;
        v = v * 10 + d;
    }
    *p = key[al + 1] - '0';
    *version = v;
    return 0;
}

char *rhema_inbox_record(const char *sid, json_t *msg, size_t *len)
{
    uint64_t exp = 0;
    const char *e = json_string_value(json_object_get(msg, "expires_at"));
    if (e && rhema_time_parse(e, &exp) != 0)
        exp = 0;
    json_t *kept = json_copy(msg); /* shallow: the members are shared, not copied */
    if (!kept)
        return NULL;
    (void)json_object_del(kept, "recipient_ids"); /* -1: it had none */
    json_t *o = json_pack("{s:s,s:o,s:b,s:I,s:I}", "session_id", sid, "message", kept,
                          "requires_ack", json_is_true(json_object_get(msg, "requires_ack")),
                          "invisible_until", (json_int_t)0, "deliveries", (json_int_t)0);
    if (o && exp && json_object_set_new(o, "expires_at", json_integer((json_int_t)exp)) != 0) {
        json_decref(o);
        return NULL;
    }
    char *t = o ? rhema_json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    if (t)
        *len = strlen(t);
    return t;
}

json_t *rhema_inbox_recipients(json_t *msg)
{
    json_t *out = json_array(), *r;
    size_t i, j;
    json_array_foreach(json_object_get(msg, "recipient_ids"), i, r)
    {
        int seen = 0;
        for (j = 0; j < json_array_size(out) && !seen; j++)
            seen = json_equal(json_array_get(out, j), r);
        if (!seen && json_is_string(r) && out && json_array_append(out, r) != 0) {
            json_decref(out);
            return NULL;
        }
    }
    return out;
}

/* ---- reading an inbox ---- */

struct entry {
    char *key;
    json_t *rec;
    uint64_t version;
};

struct page {
    struct entry *e;
    size_t n, cap;
    int bad; /* out of memory */
};

static int page_cb(void *ctx, const char *key, const void *value, size_t len, uint64_t version)
{
    struct page *pg = ctx;
    if (pg->n == pg->cap) {
        size_t cap = pg->cap ? pg->cap * 2 : 64;
        struct entry *e = realloc(pg->e, cap * sizeof *e);
        if (!e) {
            pg->bad = 1;
            return 1;
        }
        pg->e = e;
        pg->cap = cap;
    }
    json_t *rec = rhema_json_loadb(value, len, 0, NULL);
    char *k = strdup(key);
    if (!k) {
        json_decref(rec);
        pg->bad = 1;
        return 1;
    }
    pg->e[pg->n++] = (struct entry){k, rec, version};
    return 0;
}

static void page_clear(struct page *pg)
{
    for (size_t i = 0; i < pg->n; i++) {
        free(pg->e[i].key);
        json_decref(pg->e[i].rec);
    }
    pg->n = 0;
}

static uint64_t rec_u64(json_t *rec, const char *name)
{
    json_int_t v = json_integer_value(json_object_get(rec, name));
    return v > 0 ? (uint64_t)v : 0;
}

/* Visit agent's inbox in pages; fn returns 1 to stop.  0 or a storage error. */
typedef int entry_fn(void *ctx, struct entry *e, int p);
#define PAGE 128
#define EXPIRE_BATCH 32 /* entries in one delete batch (64 writes) */

static int walk(const struct rhema_storage_plugin *vt, rhema_storage_conn *conn,
                const char *agent, entry_fn *fn, void *ctx)
{
    char from[RHEMA_INBOX_KEY_MAX + 2], to[RHEMA_ID_MAX + 3];
    struct page pg = {0};
    int rc = 0, stop = 0;
    snprintf(from, sizeof from, "%s/", agent);
    snprintf(to, sizeof to, "%s0", agent); /* '0' follows '/' */
    while (!stop) {
        page_clear(&pg);
        rc = vt->scan(conn, RHEMA_INBOX_NS, from, to, PAGE, page_cb, &pg);
        if (!rc && pg.bad)
            rc = RHEMA_ENOMEM;
        if (rc)
            break;
        for (size_t i = 0; i < pg.n && !stop; i++) {
            int p;
            uint64_t v;
            if (!json_is_object(pg.e[i].rec) ||
                rhema_inbox_key_parse(pg.e[i].key, agent, &p, &v) != 0)
                continue; /* not an entry of ours: left alone */
            stop = fn(ctx, &pg.e[i], p);
        }
        if (pg.n < PAGE)
            break;
        /* the next page: keys after the last one ("<last>0" sorts right after it) */
        snprintf(from, sizeof from, "%s0", pg.e[pg.n - 1].key);
    }
    page_clear(&pg);
    free(pg.e);
    return rc;
}

struct fetch {
    struct rhema_store *st;
    const char *agent;
    size_t limit;
    uint64_t vis_ms, now;
    json_t *items;
    uint64_t next;
    int rc;
};

static int fetch_one(void *ctx, struct entry *e, int p)
{
    struct fetch *f = ctx;
    const struct rhema_storage_plugin *vt = f->st->vt;
    uint64_t exp = rec_u64(e->rec, "expires_at"), inv = rec_u64(e->rec, "invisible_until");
    (void)p;
    if (exp && exp <= f->now)
        return 0; /* expired: never delivered (the maintenance pass removes it) */
    if (inv > f->now) {
        if (!f->next || inv < f->next)
            f->next = inv;
        return 0;
    }
    json_t *msg = json_object_get(e->rec, "message");
    const char *sid = json_string_value(json_object_get(e->rec, "session_id"));
    int ack = json_is_true(json_object_get(e->rec, "requires_ack"));
    uint64_t n = rec_u64(e->rec, "deliveries") + 1;
    json_t *item = json_pack("{s:s?,s:O,s:I,s:b}", "session_id", sid, "message", msg, "delivery",
                             (json_int_t)n, "ack_required", ack);
    if (!item) {
        f->rc = RHEMA_ENOMEM;
        return 1;
    }
    int rc;
    if (ack) {
        uint64_t until = f->now + f->vis_ms;
        char when[RHEMA_TIME_MAX];
        json_object_set_new(e->rec, "invisible_until", json_integer((json_int_t)until));
        json_object_set_new(e->rec, "deliveries", json_integer((json_int_t)n));
        char *t = rhema_json_dumps(e->rec, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (!t) {
            json_decref(item);
            f->rc = RHEMA_ENOMEM;
            return 1;
        }
        struct rhema_storage_write w = {.size = sizeof w, .op = RHEMA_WRITE_PUT,
                                        .ns = RHEMA_INBOX_NS, .key = e->key, .value = t,
                                        .value_len = strlen(t), .expected_version = e->version};
        rc = vt->put(f->st->conn, &w);
        free(t);
        rhema_time_format(until, when);
        json_object_set_new(item, "invisible_until", json_string(when));
    } else {
        /* delivered once: the entry and its index entry go (the cursor moves past it) */
        char ak[RHEMA_INBOX_KEY_MAX + 1];
        const char *mid = json_string_value(json_object_get(msg, "id"));
        struct rhema_storage_write w[2] = {
            {.size = sizeof w[0], .op = RHEMA_WRITE_DEL, .ns = RHEMA_INBOX_NS, .key = e->key,
             .expected_version = e->version},
            {.size = sizeof w[1], .op = RHEMA_WRITE_DEL, .ns = RHEMA_INBOX_ACK_NS, .key = ak,
             .expected_version = RHEMA_VERSION_ANY}};
        size_t nw = sid && mid && rhema_inbox_ack_key(ak, sizeof ak, f->agent, sid, mid) > 0 ? 2 : 1;
        rc = vt->batch(f->st->conn, w, nw);
        if (rc == RHEMA_ENOTFOUND && nw == 2) /* no index entry (repaired): the entry alone */
            rc = vt->batch(f->st->conn, w, 1);
    }
    if (rc == RHEMA_ECONFLICT || rc == RHEMA_ENOTFOUND) { /* another consumer took it */
        json_decref(item);
        return 0;
    }
    if (rc) {
        json_decref(item);
        f->rc = rc;
        return 1;
    }
    json_array_append_new(f->items, item);
    return json_array_size(f->items) >= f->limit;
}

int rhema_inbox_fetch(struct rhema_store *st, const char *agent, size_t limit,
                      uint64_t visibility_ms, uint64_t now_ms, json_t **items, uint64_t *next_ms,
                      char err[RHEMA_ERRMSG_MAX])
{
    struct fetch f = {st, agent, limit ? limit : 1, visibility_ms, now_ms, json_array(), 0, 0};
    *items = NULL;
    *next_ms = 0;
    if (!f.items)
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    int rc = walk(st->vt, st->conn, agent, fetch_one, &f);
    if (!rc)
        rc = f.rc;
    if (rc) {
        json_decref(f.items);
        return rc == RHEMA_ENOMEM ? rhema_set_errbuf(err, rc, "out of memory")
                                  : rhema_store_error(st, rc, "reading an inbox", err);
    }
    *items = f.items;
    *next_ms = f.next;
    return 0;
}

/* ---- ack ---- */

int rhema_inbox_ack(struct rhema_store *st, const char *sid, const char *mid, const char *agent,
                    uint64_t now_ms, char err[RHEMA_ERRMSG_MAX])
{
    char ak[RHEMA_INBOX_KEY_MAX + 1], key[RHEMA_ID_MAX + 32];
    (void)now_ms;
    if (rhema_inbox_ack_key(ak, sizeof ak, agent, sid, mid) < 0)
        return rhema_set_errbuf(err, RHEMA_EINVAL, "agent, session or message id too long");
    for (int attempt = 0; attempt < 8; attempt++) {
        struct rhema_storage_value iv = {.size = sizeof iv}, rv = {.size = sizeof rv};
        int rc = st->vt->get(st->conn, RHEMA_INBOX_ACK_NS, ak, &iv);
        if (rc == RHEMA_ENOTFOUND)
            goto none;
        if (rc)
            return rhema_store_error(st, rc, "reading an inbox", err);
        int p = iv.len == 1 ? ((const char *)iv.data)[0] - '0' : -1;
        if (p < 0 || p > 4)
            return rhema_set_errbuf(err, RHEMA_ECORRUPT, "inbox index entry '%s' is malformed", ak);
        rhema_inbox_key(key, sizeof key, agent, p, iv.version);
        rc = st->vt->get(st->conn, RHEMA_INBOX_NS, key, &rv);
        if (rc == RHEMA_ENOTFOUND)
            goto none;
        if (rc)
            return rhema_store_error(st, rc, "reading an inbox", err);
        json_t *rec = rhema_json_loadb(rv.data, rv.len, 0, NULL);
        int ack = json_is_true(json_object_get(rec, "requires_ack"));
        uint64_t deliveries = rec_u64(rec, "deliveries");
        json_decref(rec);
        if (!ack)
            return rhema_set_errbuf(err, RHEMA_ECONFLICT,
                                    "message '%s' of session '%s' does not require ack", mid, sid);
        if (!deliveries)
            goto none;
        struct rhema_storage_write w[3] = {
            {.size = sizeof w[0], .op = RHEMA_WRITE_DEL, .ns = RHEMA_INBOX_NS, .key = key,
             .expected_version = rv.version},
            {.size = sizeof w[1], .op = RHEMA_WRITE_DEL, .ns = RHEMA_INBOX_ACK_NS, .key = ak,
             .expected_version = iv.version}};
        size_t nw = 2;
        char *text = NULL;
        if (st->feed) {
            struct rhema_feed_fields ff = {.type = "message.acked", .id = mid, .session = sid,
                                           .agent = agent};
            size_t len;
            if (!(text = rhema_feed_record(&ff, &len)))
                return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
            rhema_feed_write(&w[nw++], text, len);
        }
        rc = st->vt->batch(st->conn, w, nw);
        free(text);
        if (rc == RHEMA_ECONFLICT || rc == RHEMA_ENOTFOUND)
            continue; /* redelivered or acked meanwhile: read again */
        if (rc)
            return rhema_store_error(st, rc, "acknowledging a message", err);
        if (st->feed)
            rhema_feed_wake(st->feed);
        return 0;
    }
    return rhema_set_errbuf(err, RHEMA_ECONFLICT, "message '%s' of session '%s': too many "
                            "concurrent changes; retry", mid, sid);
none:
    return rhema_set_errbuf(err, RHEMA_ENOTFOUND,
                            "agent '%s' has no delivered, unacknowledged message '%s' of session '%s'",
                            agent, mid, sid);
}

/* ---- release ---- */

struct release {
    struct rhema_store *st;
    size_t n;
    int rc;
};

static int release_one(void *ctx, struct entry *e, int p)
{
    struct release *r = ctx;
    (void)p;
    if (!rec_u64(e->rec, "invisible_until"))
        return 0;
    json_object_set_new(e->rec, "invisible_until", json_integer(0));
    char *t = rhema_json_dumps(e->rec, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!t) {
        r->rc = RHEMA_ENOMEM;
        return 1;
    }
    struct rhema_storage_write w = {.size = sizeof w, .op = RHEMA_WRITE_PUT, .ns = RHEMA_INBOX_NS,
                                    .key = e->key, .value = t, .value_len = strlen(t),
                                    .expected_version = e->version};
    int rc = r->st->vt->put(r->st->conn, &w);
    free(t);
    if (rc == 0)
        r->n++;
    else if (rc != RHEMA_ECONFLICT && rc != RHEMA_ENOTFOUND) { /* acked or taken meanwhile: fine */
        r->rc = rc;
        return 1;
    }
    return 0;
}

int rhema_inbox_release(struct rhema_store *st, const char *agent, size_t *released,
                        char err[RHEMA_ERRMSG_MAX])
{
    struct release r = {st, 0, 0};
    int rc = walk(st->vt, st->conn, agent, release_one, &r);
    if (!rc)
        rc = r.rc;
    if (released)
        *released = r.n;
    return rc ? rhema_store_error(st, rc, "releasing an inbox", err) : 0;
}

/* ---- expiry ---- */

/* Delete entries e[0..n) with their index entries, one batch; *removed counts them. */
static int expire_batch(const struct rhema_storage_plugin *vt, rhema_storage_conn *conn,
                        struct entry *e, size_t n, size_t *removed)
{
    struct rhema_storage_write w[2 * EXPIRE_BATCH];
    char ak[EXPIRE_BATCH][RHEMA_INBOX_KEY_MAX + 1];
    size_t nw = 0, first[EXPIRE_BATCH + 1];
    for (size_t j = 0; j < n; j++) {
        first[j] = nw;
        w[nw++] = (struct rhema_storage_write){.size = sizeof w[0], .op = RHEMA_WRITE_DEL,
                                               .ns = RHEMA_INBOX_NS, .key = e[j].key,
                                               .expected_version = e[j].version};
        const char *sid = json_string_value(json_object_get(e[j].rec, "session_id"));
        const char *mid =
            json_string_value(json_object_get(json_object_get(e[j].rec, "message"), "id"));
        char agent[RHEMA_ID_MAX + 1];
        size_t al = strcspn(e[j].key, "/");
        if (!sid || !mid || al > RHEMA_ID_MAX)
            continue;
        memcpy(agent, e[j].key, al);
        agent[al] = '\0';
        if (rhema_inbox_ack_key(ak[j], sizeof ak[j], agent, sid, mid) > 0)
            w[nw++] = (struct rhema_storage_write){.size = sizeof w[0], .op = RHEMA_WRITE_DEL,
                                                   .ns = RHEMA_INBOX_ACK_NS, .key = ak[j],
                                                   .expected_version = RHEMA_VERSION_ANY};
    }
    first[n] = nw;
    int rc = vt->batch(conn, w, nw);
    if (rc == 0) {
        *removed += n;
        return 0;
    }
    if (rc != RHEMA_ECONFLICT && rc != RHEMA_ENOTFOUND)
        return rc;
    /* something changed meanwhile (another node's pass, a delivery, an ack): one by one */
    for (size_t j = 0; j < n; j++) {
        rc = vt->batch(conn, &w[first[j]], first[j + 1] - first[j]);
        if (rc == RHEMA_ENOTFOUND && first[j + 1] - first[j] == 2) /* no index entry */
            rc = vt->batch(conn, &w[first[j]], 1);
        if (rc == 0)
            ++*removed;
        else if (rc != RHEMA_ECONFLICT && rc != RHEMA_ENOTFOUND)
            return rc;
    }
    return 0;
}

int rhema_inbox_expire(const struct rhema_storage_plugin *vt, rhema_storage_conn *conn,
                       uint64_t now_ms, size_t *removed, char **err)
{
    char from[RHEMA_INBOX_KEY_MAX + 2] = "";
    struct page all = {0};
    struct entry hits[EXPIRE_BATCH];
    int rc = 0;
    for (;;) {
        page_clear(&all);
        rc = vt->scan(conn, RHEMA_INBOX_NS, from[0] ? from : NULL, NULL, PAGE, page_cb, &all);
        if (!rc && all.bad)
            rc = RHEMA_ENOMEM;
        size_t nh = 0;
        for (size_t i = 0; !rc && i < all.n; i++) {
            uint64_t exp = rec_u64(all.e[i].rec, "expires_at");
            if (!exp || exp > now_ms)
                continue;
            hits[nh++] = all.e[i];
            if (nh == EXPIRE_BATCH) {
                rc = expire_batch(vt, conn, hits, nh, removed);
                nh = 0;
            }
        }
        if (!rc && nh)
            rc = expire_batch(vt, conn, hits, nh, removed);
        if (rc || all.n < PAGE)
            break;
        snprintf(from, sizeof from, "%s0", all.e[all.n - 1].key);
    }
    page_clear(&all);
    free(all.e);
    if (rc)
        return rhema_set_error(err, rc, "removing expired inbox entries: %s", rhema_strerror(rc));
    return 0;
}
