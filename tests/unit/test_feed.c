/*
 * test_feed -- the change feed's pieces that need no daemon
 * (core/watch/feed.c): the record composer and the event a record becomes,
 * the filters, the ring of recent events, and reading, compacting and
 * finding the oldest record against a small fake backend that keys a
 * sequenced write by its version as the storage ABI (minor 3) says.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <inttypes.h>

#include <cmocka.h>

#include "json_fields.h"
#include "watch/feed.h"

/* ---- records ---- */

/* The spliced text of a record is the event's dump, byte for byte. */
static void expect_same_text(json_t *ev, uint64_t rev, const char *rec, size_t len)
{
    size_t tl = 0;
    char *spliced = rhema_feed_event_text(rev, rec, len, &tl);
    char *dumped = rhema_json_dumps(ev, JSON_COMPACT | JSON_PRESERVE_ORDER);
    assert_non_null(spliced);
    assert_string_equal(spliced, dumped);
    assert_int_equal(tl, strlen(dumped));
    free(spliced);
    free(dumped);
}

static void record_composed(void **state)
{
    (void)state;
    json_t *rcpt = json_pack("[s,s]", "b", "c");
    struct rhema_feed_fields f = {.type = "message.created", .id = "m1", .versioned = 1,
                                  .session = "s1", .agent = "a", .recipients = rcpt};
    size_t len = 0;
    char *t = rhema_feed_record(&f, &len);
    assert_non_null(t);
    assert_int_equal(len, strlen(t));
    json_t *o = json_loads(t, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(o, "type")), "message.created");
    assert_string_equal(json_string_value(json_object_get(o, "id")), "m1");
    assert_string_equal(json_string_value(json_object_get(o, "session")), "s1");
    assert_string_equal(json_string_value(json_object_get(o, "agent")), "a");
    assert_true(json_equal(json_object_get(o, "recipients"), rcpt));
    assert_true(json_integer_value(json_object_get(o, "ts")) > 1600000000000);
    assert_null(json_object_get(o, "revision")); /* the key is the revision */
    json_decref(o);

    struct rhema_storage_write w;
    rhema_feed_write(&w, t, len);
    assert_int_equal(w.op, RHEMA_WRITE_PUT);
    assert_true(w.flags & RHEMA_WRITE_SEQUENCED);
    assert_string_equal(w.ns, RHEMA_FEED_NS);
    assert_string_equal(w.key, "");
    assert_ptr_equal(w.value, t);
    assert_true(rhema_feed_write_is_record(&w));
    w.flags = 0;
    assert_false(rhema_feed_write_is_record(&w));

    /* the event: revision first, version = revision when versioned */
    json_t *ev = rhema_feed_event(42, t, len);
    expect_same_text(ev, 42, t, len);
    assert_int_equal(json_integer_value(json_object_get(ev, "revision")), 42);
    assert_int_equal(json_integer_value(json_object_get(ev, "version")), 42);
    assert_null(json_object_get(ev, "versioned"));
    assert_string_equal(json_object_iter_key(json_object_iter(ev)), "revision");
    json_decref(ev);
    free(t);

    struct rhema_feed_fields d = {.type = "session.deleted", .id = "s1", .session = "s1"};
    t = rhema_feed_record(&d, &len);
    ev = rhema_feed_event(43, t, len);
    expect_same_text(ev, 43, t, len);
    assert_null(json_object_get(ev, "version")); /* a delete has no new version */
    assert_null(json_object_get(ev, "agent"));
    json_decref(ev);
    free(t);

    assert_null(rhema_feed_event(1, "{\"id\":\"x\"}", 10)); /* no type */
    size_t tl = 0;
    assert_null(rhema_feed_event_text(1, "nope", 4, &tl)); /* not an object: the caller dumps */
    assert_null(rhema_feed_event_text(1, "{}", 2, &tl));
    /* an id that holds the marker's text is escaped, and is not the member */
    struct rhema_feed_fields odd = {.type = "agent.updated", .id = "a,\"versioned\":true",
                                    .versioned = 1};
    t = rhema_feed_record(&odd, &len);
    ev = rhema_feed_event(44, t, len);
    expect_same_text(ev, 44, t, len);
    assert_string_equal(json_string_value(json_object_get(ev, "id")), "a,\"versioned\":true");
    json_decref(ev);
    free(t);
    assert_null(rhema_feed_event(1, "nope", 4));
    json_decref(rcpt);
}

static void filters(void **state)
{
    (void)state;
    json_t *ev = json_pack("{s:I,s:s,s:s,s:s,s:s,s:[s]}", "revision", (json_int_t)5, "type",
                           "message.created", "id", "m", "session", "s1", "agent", "alice",
                           "recipients", "bob");
    assert_true(rhema_feed_match(ev, NULL, NULL, NULL));
    assert_true(rhema_feed_match(ev, "message.created", NULL, NULL));
    assert_true(rhema_feed_match(ev, "message.", NULL, NULL));
    assert_true(rhema_feed_match(ev, "session.,message.", NULL, NULL));
    assert_false(rhema_feed_match(ev, "message", NULL, NULL)); /* no '.': exact only */
    assert_false(rhema_feed_match(ev, "session.", NULL, NULL));
    assert_false(rhema_feed_match(ev, "message.created.x", NULL, NULL));
    assert_true(rhema_feed_match(ev, NULL, "s1", NULL));
    assert_false(rhema_feed_match(ev, NULL, "s2", NULL));
    assert_true(rhema_feed_match(ev, NULL, NULL, "alice"));
    assert_true(rhema_feed_match(ev, NULL, NULL, "bob"));
    assert_false(rhema_feed_match(ev, NULL, NULL, "carol"));
    assert_false(rhema_feed_match(ev, "message.", "s1", "carol"));
    json_decref(ev);
}

/* ---- the ring ---- */

static json_t *ev_of(uint64_t rev)
{
    return json_pack("{s:I,s:s,s:s}", "revision", (json_int_t)rev, "type", "session.updated",
                     "id", "x");
}

static void ring_bounds(void **state)
{
    (void)state;
    struct rhema_feed_ring r;
    assert_int_equal(rhema_feed_ring_init(&r, 4, 1 << 20, 10), 0);
    assert_int_equal(rhema_feed_ring_find(&r, 0), 0);
    for (uint64_t rev = 11; rev <= 16; rev += 1)
        assert_int_equal(rhema_feed_ring_push(&r, rev * 2, ev_of(rev * 2), NULL, 0), 0);
    /* 22 24 26 28 30 32 pushed into 4 slots: 26..32 kept, the floor is the last evicted */
    assert_int_equal(r.n, 4);
    assert_int_equal(r.floor, 24);
    assert_int_equal(rhema_feed_ring_at(&r, 0)->rev, 26);
    assert_int_equal(rhema_feed_ring_at(&r, 3)->rev, 32);
    assert_null(rhema_feed_ring_at(&r, 4));
    assert_int_equal(rhema_feed_ring_find(&r, 24), 0);
    assert_int_equal(rhema_feed_ring_find(&r, 26), 1);
    assert_int_equal(rhema_feed_ring_find(&r, 27), 1);
    assert_int_equal(rhema_feed_ring_find(&r, 31), 3);
    assert_int_equal(rhema_feed_ring_find(&r, 32), 4);
    const struct rhema_feed_ring_entry *e = rhema_feed_ring_at(&r, 1);
    assert_non_null(strstr(e->text, "\"revision\":28"));
    assert_int_equal(e->len, strlen(e->text));
    rhema_feed_ring_release(&r);

    /* bounded by bytes: each event text is about 50 bytes */
    size_t one = 0;
    {
        json_t *v = ev_of(100);
        char *t = json_dumps(v, JSON_COMPACT);
        one = strlen(t);
        free(t);
        json_decref(v);
    }
    assert_int_equal(rhema_feed_ring_init(&r, 100, one * 3, 0), 0);
    for (uint64_t rev = 100; rev < 110; rev++)
        assert_int_equal(rhema_feed_ring_push(&r, rev, ev_of(rev), NULL, 0), 0);
    assert_int_equal(r.n, 3);
    assert_true(r.bytes <= one * 3);
    assert_int_equal(r.floor, 106);
    rhema_feed_ring_release(&r);
}

/* ---- a fake backend: a sorted array of (ns, key, value, version) ---- */

struct entry {
    char ns[32], key[64];
    char *value;
    size_t len;
    uint64_t version;
};
static struct entry store[4096];
static size_t nstore;
static uint64_t next_version;

static int cmp_entry(const void *a, const void *b)
{
    const struct entry *x = a, *y = b;
    int c = strcmp(x->ns, y->ns);
    return c ? c : strcmp(x->key, y->key);
}

static struct entry *find(const char *ns, const char *key)
{
    for (size_t i = 0; i < nstore; i++)
        if (!strcmp(store[i].ns, ns) && !strcmp(store[i].key, key))
            return &store[i];
    return NULL;
}

static int f_get(rhema_storage_conn *c, const char *ns, const char *key,
                 struct rhema_storage_value *out)
{
    (void)c;
    struct entry *e = find(ns, key);
    if (!e)
        return RHEMA_ENOTFOUND;
    out->data = e->value;
    out->len = e->len;
    out->version = e->version;
    return 0;
}

static int f_batch(rhema_storage_conn *c, struct rhema_storage_write *w, size_t n)
{
    (void)c;
    for (size_t i = 0; i < n; i++)
        if (w[i].op == RHEMA_WRITE_DEL && !find(w[i].ns, w[i].key))
            return RHEMA_ENOTFOUND;
    for (size_t i = 0; i < n; i++) {
        if (w[i].op == RHEMA_WRITE_DEL) {
            struct entry *e = find(w[i].ns, w[i].key);
            free(e->value);
            *e = store[--nstore];
            continue;
        }
        uint64_t v = ++next_version;
        char key[64];
        snprintf(key, sizeof key, "%s", w[i].key);
        if (w[i].flags & RHEMA_WRITE_SEQUENCED) {
            if (i > 0 && w[i - 1].op == RHEMA_WRITE_PUT &&
                !(w[i - 1].flags & RHEMA_WRITE_SEQUENCED))
                v = --next_version, v = w[i - 1].new_version;
            snprintf(key, sizeof key, "%s%020" PRIu64, w[i].key, v);
        }
        struct entry *e = find(w[i].ns, key);
        if (!e) {
            e = &store[nstore++];
            snprintf(e->ns, sizeof e->ns, "%s", w[i].ns);
            snprintf(e->key, sizeof e->key, "%s", key);
        } else {
            free(e->value);
        }
        e->value = malloc(w[i].value_len + 1);
        memcpy(e->value, w[i].value, w[i].value_len);
        e->len = w[i].value_len;
        e->version = w[i].new_version = v;
    }
    qsort(store, nstore, sizeof *store, cmp_entry);
    return 0;
}

static int f_scan(rhema_storage_conn *c, const char *ns, const char *from, const char *to,
                  size_t limit, rhema_storage_scan_cb cb, void *ctx)
{
    (void)c;
    size_t given = 0;
    for (size_t i = 0; i < nstore; i++) {
        struct entry *e = &store[i];
        if (strcmp(e->ns, ns) || (from && strcmp(e->key, from) < 0) ||
            (to && strcmp(e->key, to) >= 0))
            continue;
        int rc = cb(ctx, e->key, e->value, e->len, e->version);
        if (rc > 0)
            return 0;
        if (rc < 0)
            return rc;
        if (limit && ++given >= limit)
            return 0;
    }
    return 0;
}

static struct rhema_storage_plugin fake = {.get = f_get, .batch = f_batch, .scan = f_scan};

static void reset(void)
{
    for (size_t i = 0; i < nstore; i++)
        free(store[i].value);
    nstore = 0;
    next_version = 0;
}

/* A session PUT and its record in one batch; returns the PUT's version. */
static uint64_t change(const char *id, const char *type, int versioned)
{
    struct rhema_storage_write w[2] = {{.size = sizeof w[0], .op = RHEMA_WRITE_PUT,
                                        .ns = "sessions", .key = id, .value = "{}",
                                        .value_len = 2}};
    struct rhema_feed_fields f = {.type = type, .id = id, .session = id, .versioned = versioned};
    size_t len;
    char *t = rhema_feed_record(&f, &len);
    rhema_feed_write(&w[1], t, len);
    assert_int_equal(f_batch(NULL, versioned ? w : &w[1], versioned ? 2 : 1), 0);
    free(t);
    return versioned ? w[0].new_version : w[1].new_version;
}

struct collected {
    uint64_t revs[64];
    size_t n;
};

static int collect(void *ctx, uint64_t rev, json_t *ev, const char *text, size_t len)
{
    struct collected *c = ctx;
    assert_non_null(strstr(text, "\"type\""));
    assert_int_equal(len, strlen(text));
    assert_int_equal(json_integer_value(json_object_get(ev, "revision")), rev);
    c->revs[c->n++] = rev;
    return 0;
}

static void scan_and_compact(void **state)
{
    (void)state;
    reset();
    uint64_t v1 = change("a", "session.created", 1);
    uint64_t v2 = change("a", "session.updated", 1);
    uint64_t v3 = change("a", "session.deleted", 0);
    assert_true(v1 < v2 && v2 < v3);
    assert_non_null(find("sessions", "a"));
    assert_int_equal(find("sessions", "a")->version, v2); /* the resource's version = revision */

    struct collected c = {0};
    uint64_t last = 0;
    assert_int_equal(rhema_feed_scan(&fake, NULL, 0, 0, collect, &c, &last, NULL), 0);
    assert_int_equal(c.n, 3);
    assert_int_equal(c.revs[0], v1);
    assert_int_equal(c.revs[1], v2);
    assert_int_equal(c.revs[2], v3);
    assert_int_equal(last, v3);
    c.n = 0;
    assert_int_equal(rhema_feed_scan(&fake, NULL, v1, 1, collect, &c, &last, NULL), 0);
    assert_int_equal(c.n, 1); /* a bounded page, exclusive of `after` */
    assert_int_equal(c.revs[0], v2);
    c.n = 0;
    assert_int_equal(rhema_feed_scan(&fake, NULL, v3, 0, collect, &c, &last, NULL), 0);
    assert_int_equal(c.n, 0);
    assert_int_equal(last, v3);

    uint64_t oldest = 0, compacted = 99;
    assert_int_equal(rhema_feed_oldest(&fake, NULL, &oldest), 0);
    assert_int_equal(oldest, v1);
    assert_int_equal(rhema_feed_compacted(&fake, NULL, &compacted), 0);
    assert_int_equal(compacted, 0);

    /* nothing is old yet */
    size_t removed = 9;
    char *err = NULL;
    assert_int_equal(rhema_feed_compact(&fake, NULL, 1000, 2, &removed, &err), 0);
    assert_int_equal(removed, 0);
    /* everything is: removed in batches of 2, "compacted" = the highest removed */
    assert_int_equal(rhema_feed_compact(&fake, NULL, UINT64_MAX / 2, 2, &removed, &err), 0);
    assert_null(err);
    assert_int_equal(removed, 3);
    assert_int_equal(rhema_feed_compacted(&fake, NULL, &compacted), 0);
    assert_int_equal(compacted, v3);
    assert_int_equal(rhema_feed_oldest(&fake, NULL, &oldest), 0);
    assert_int_equal(oldest, 0);
    uint64_t v4 = change("b", "session.created", 1);
    assert_int_equal(rhema_feed_oldest(&fake, NULL, &oldest), 0);
    assert_int_equal(oldest, v4);
    reset();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(record_composed),
        cmocka_unit_test(filters),
        cmocka_unit_test(ring_bounds),
        cmocka_unit_test(scan_and_compact),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
