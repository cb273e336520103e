/*
 * test_consensus -- validation of ConsensusState and entries, and the
 * consensus store (Raft log matching, range reads in index order,
 * commit/applied marks, counters, listing, If-Match) on the memory plugin
 * loaded through the real loader.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "consensus.h"
#include "plugin.h"
#include "util.h"

struct fixture {
    struct rhema_plugin_registry *reg;
    const struct rhema_storage_plugin *vt;
    rhema_storage_instance *inst;
    rhema_storage_conn *conn;
    struct rhema_store st;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    const struct rhema_loaded_plugin *p;
    char *err = NULL;
    const char *dir = getenv("RHEMA_PLUGIN_DIR");
    if (rhema_plugins_new(&f->reg) ||
        rhema_plugin_load(f->reg, "memory", dir ? dir : "plugins/.libs", RHEMA_KIND_STORAGE, &p,
                          &err)) {
        fprintf(stderr, "setup: %s\n", err ? err : "?");
        return -1;
    }
    f->vt = &p->vt.storage;
    if (f->vt->open(rhema_host_get(), NULL, &f->inst, &err) ||
        f->vt->connect(f->inst, &f->conn, &err))
        return -1;
    rhema_store_init(&f->st, f->vt, f->conn);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    rhema_store_release(&f->st);
    f->vt->disconnect(f->conn);
    f->vt->close(f->inst);
    rhema_plugins_free(f->reg);
    free(f);
    return 0;
}

static json_t *J(const char *text)
{
    json_error_t e;
    json_t *v = json_loads(text, 0, &e);
    if (!v)
        fail_msg("bad test JSON: %s: %s", text, e.text);
    return v;
}

static json_t *rec_json(struct rhema_record *rec)
{
    json_t *v = json_loadb(rec->json, rec->len, 0, NULL);
    assert_non_null(v);
    assert_int_equal(json_integer_value(json_object_get(v, "version")), (json_int_t)rec->version);
    rhema_record_release(rec);
    return v;
}

static long long num(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v))
        fail_msg("field %s is not an integer", key);
    return (long long)json_integer_value(v);
}

static void expect_err_mentions(const char *err, const char *what)
{
    if (!strstr(err, what))
        fail_msg("error '%s' does not mention %s", err, what);
}

/* ---- validation ---- */

static void expect_state_invalid(const char *body, const char *field)
{
    char err[RHEMA_ERRMSG_MAX], want[96];
    json_t *in = J(body), *out = NULL;
    int rc = rhema_consensus_state_validate(in, "n1", &out, err);
    json_decref(in);
    if (rc != RHEMA_EINVAL)
        fail_msg("accepted state %s", body);
    assert_null(out);
    snprintf(want, sizeof want, "'%s'", field);
    expect_err_mentions(err, want);
}

static void expect_entries_invalid(const char *body, const char *field)
{
    char err[RHEMA_ERRMSG_MAX], want[96];
    json_t *in = J(body), *out = NULL;
    int rc = rhema_consensus_entries_validate(in, &out, err);
    json_decref(in);
    if (rc != RHEMA_EINVAL)
        fail_msg("accepted entries %s", body);
    assert_null(out);
    snprintf(want, sizeof want, "'%s'", field);
    expect_err_mentions(err, want);
}

static void validation_names_the_field(void **state)
{
    (void)state;
    expect_state_invalid("{}", "term");
    expect_state_invalid("{\"term\":-1}", "term");
    expect_state_invalid("{\"term\":\"1\"}", "term");
    expect_state_invalid("{\"term\":1.5}", "term");
    expect_state_invalid("{\"term\":1,\"state\":\"follower\"}", "state");
    expect_state_invalid("{\"term\":1,\"state\":3}", "state");
    expect_state_invalid("{\"term\":1,\"leader_id\":\"bad id\"}", "leader_id");
    expect_state_invalid("{\"term\":1,\"voted_for\":5}", "voted_for");
    expect_state_invalid("{\"term\":1,\"last_log_index\":-1}", "last_log_index");
    expect_state_invalid("{\"term\":1,\"last_log_term\":true}", "last_log_term");
    expect_state_invalid("{\"term\":1,\"commit_index\":\"3\"}", "commit_index");
    expect_state_invalid("{\"term\":1,\"colour\":\"red\"}", "colour");
    expect_state_invalid("{\"term\":1,\"node_id\":\"n2\"}", "node_id");

    expect_entries_invalid("{\"term\":1,\"command\":\"x\"}", "index");
    expect_entries_invalid("{\"index\":0,\"term\":1,\"command\":\"x\"}", "index");
    expect_entries_invalid("{\"index\":-3,\"term\":1,\"command\":\"x\"}", "index");
    expect_entries_invalid("{\"index\":1,\"command\":\"x\"}", "term");
    expect_entries_invalid("{\"index\":1,\"term\":-1,\"command\":\"x\"}", "term");
    expect_entries_invalid("{\"index\":1,\"term\":1}", "command");
    expect_entries_invalid("{\"index\":1,\"term\":1,\"command\":\"\"}", "command");
    expect_entries_invalid("{\"index\":1,\"term\":1,\"command\":7}", "command");
    expect_entries_invalid("{\"index\":1,\"term\":1,\"command\":\"x\",\"colour\":1}", "colour");
    expect_entries_invalid("[{\"index\":1,\"term\":1,\"command\":\"x\"},5]", "entries[1]");
    expect_entries_invalid("[{\"index\":1,\"term\":1,\"command\":\"x\"},"
                           "{\"index\":1,\"term\":1,\"command\":\"x\"}]",
                           "entries[1].index");
    expect_entries_invalid("[{\"index\":1,\"term\":1,\"command\":\"x\"},"
                           "{\"index\":2,\"term\":1}]",
                           "entries[1].command");

    char err[RHEMA_ERRMSG_MAX];
    json_t *in = J("[]"), *out = NULL;
    assert_int_equal(rhema_consensus_entries_validate(in, &out, err), RHEMA_EINVAL);
    expect_err_mentions(err, "at least one");
    json_decref(in);
    in = J("[1]");
    assert_int_equal(rhema_consensus_state_validate(in, "n1", &out, err), RHEMA_EINVAL);
    expect_err_mentions(err, "body");
    json_decref(in);
}

static void validation_normalises_and_ignores_metadata(void **state)
{
    (void)state;
    char err[RHEMA_ERRMSG_MAX];
    json_t *in = J("{\"term\":2,\"node_id\":\"n1\",\"version\":9,\"term_count\":7,"
                   "\"created_at\":\"x\",\"entry_count\":3,\"bytes\":10,\"applied_index\":4}");
    json_t *out = NULL;
    assert_int_equal(rhema_consensus_state_validate(in, "n1", &out, err), 0);
    assert_string_equal(json_string_value(json_object_get(out, "state")), "Follower");
    assert_true(json_is_null(json_object_get(out, "leader_id")));
    assert_true(json_is_null(json_object_get(out, "voted_for")));
    assert_null(json_object_get(out, "term_count"));
    assert_null(json_object_get(out, "version"));
    json_decref(in);
    json_decref(out);

    in = J("{\"index\":4,\"term\":0,\"command\":\"set\",\"created_at\":\"x\","
           "\"committed_at\":null,\"size_bytes\":3,\"version\":2}");
    assert_int_equal(rhema_consensus_entries_validate(in, &out, err), 0);
    assert_true(json_is_array(out));
    assert_int_equal(json_array_size(out), 1);
    json_t *e = json_array_get(out, 0);
    assert_true(json_is_null(json_object_get(e, "data")));
    assert_int_equal(json_object_size(e), 4);
    json_decref(in);
    json_decref(out);

    in = J("[{\"index\":7,\"term\":1,\"command\":\"a\",\"data\":{\"k\":[1,2]}},"
           "{\"index\":8,\"term\":2,\"command\":\"b\",\"data\":\"s\"}]");
    assert_int_equal(rhema_consensus_entries_validate(in, &out, err), 0);
    assert_int_equal(json_array_size(out), 2);
    assert_true(json_is_object(json_object_get(json_array_get(out, 0), "data")));
    json_decref(in);
    json_decref(out);
}

/* ---- helpers on the store ---- */

/* Append entries lo..hi with `term`; returns rc; *res filled on success. */
static int append_range(struct fixture *f, const char *node, uint64_t lo, uint64_t hi,
                        uint64_t term, struct rhema_consensus_append_result *res, json_t **state,
                        char *err)
{
    json_t *body = json_array(), *entries = NULL;
    for (uint64_t i = lo; i <= hi; i++)
        json_array_append_new(body, json_pack("{s:I,s:I,s:s,s:{s:I}}", "index", (json_int_t)i,
                                              "term", (json_int_t)term, "command", "set", "data",
                                              "n", (json_int_t)i));
    int rc = rhema_consensus_entries_validate(body, &entries, err);
    json_decref(body);
    if (rc)
        return rc;
    struct rhema_record rec = {0};
    struct rhema_consensus_append_result r;
    rc = rhema_consensus_append(&f->st, node, entries, &rec, res ? res : &r, err);
    json_decref(entries);
    if (rc == 0) {
        json_t *s = rec_json(&rec);
        if (state)
            *state = s;
        else
            json_decref(s);
    }
    return rc;
}

static json_t *get_state(struct fixture *f, const char *node)
{
    char err[RHEMA_ERRMSG_MAX];
    struct rhema_record rec = {0};
    int rc = rhema_consensus_state_get(&f->st, node, &rec, err);
    if (rc)
        fail_msg("state_get %s: %s", node, err);
    return rec_json(&rec);
}

/* The entries page as JSON. */
static json_t *read_entries(struct fixture *f, const char *node, uint64_t from, uint64_t to,
                            size_t limit)
{
    char err[RHEMA_ERRMSG_MAX], *text = NULL;
    size_t len;
    int rc = rhema_consensus_entries(&f->st, node, from, to, limit, &text, &len, err);
    if (rc)
        fail_msg("entries %s: %s", node, err);
    assert_int_equal(strlen(text), len);
    json_t *v = json_loadb(text, len, 0, NULL);
    free(text);
    assert_non_null(v);
    return v;
}

static int put_state(struct fixture *f, const char *node, const char *body, uint64_t if_match,
                     json_t **state, int *created, char *err)
{
    json_t *in = J(body), *valid = NULL;
    int rc = rhema_consensus_state_validate(in, node, &valid, err);
    json_decref(in);
    if (rc)
        return rc;
    struct rhema_record rec = {0};
    int c = 0;
    rc = rhema_consensus_state_put(&f->st, node, valid, if_match, &rec, &c, err);
    json_decref(valid);
    if (rc == 0) {
        json_t *s = rec_json(&rec);
        if (state)
            *state = s;
        else
            json_decref(s);
        if (created)
            *created = c;
    }
    return rc;
}

static int mark(struct fixture *f, const char *node, enum rhema_consensus_mark_kind kind,
                uint64_t index, json_t **state, int *advanced, char *err)
{
    struct rhema_record rec = {0};
    int adv = -1;
    int rc = rhema_consensus_mark(&f->st, node, kind, index, &rec, &adv, err);
    if (rc == 0) {
        json_t *s = rec_json(&rec);
        if (state)
            *state = s;
        else
            json_decref(s);
        if (advanced)
            *advanced = adv;
    }
    return rc;
}

/* Sum of size_bytes over all entries of node (reads them all). */
static long long sum_sizes(struct fixture *f, const char *node, size_t *count)
{
    long long sum = 0;
    uint64_t from = 1;
    *count = 0;
    for (;;) {
        json_t *page = read_entries(f, node, from, 0, RHEMA_LIST_LIMIT_MAX);
        size_t i;
        json_t *e;
        json_array_foreach(json_object_get(page, "items"), i, e)
        {
            sum += num(e, "size_bytes");
            (*count)++;
        }
        json_t *next = json_object_get(page, "next_cursor");
        if (!json_is_string(next)) {
            json_decref(page);
            return sum;
        }
        from = strtoull(json_string_value(next), NULL, 10);
        json_decref(page);
    }
}

/* ---- appends ---- */

static void append_is_idempotent(void **state)
{
    struct fixture *f = *state;
    char err[RHEMA_ERRMSG_MAX];
    struct rhema_consensus_append_result r;
    json_t *s = NULL;
    assert_int_equal(append_range(f, "a1", 1, 3, 1, &r, &s, err), 0);
    assert_int_equal(r.appended, 3);
    assert_int_equal(r.skipped, 0);
    assert_int_equal(num(s, "last_log_index"), 3);
    assert_int_equal(num(s, "last_log_term"), 1);
    assert_int_equal(num(s, "entry_count"), 3);
    assert_int_equal(num(s, "appended"), 3);
    long long v1 = num(s, "version");
    json_decref(s);

    /* the same again: nothing changes, not even the version */
    assert_int_equal(append_range(f, "a1", 1, 3, 1, &r, &s, err), 0);
    assert_int_equal(r.appended, 0);
    assert_int_equal(r.skipped, 3);
    assert_int_equal(r.truncated, 0);
    assert_int_equal(num(s, "version"), v1);
    json_decref(s);

    /* an overlapping append only adds what is new */
    assert_int_equal(append_range(f, "a1", 2, 5, 1, &r, &s, err), 0);
    assert_int_equal(r.appended, 2);
    assert_int_equal(r.skipped, 2);
    assert_int_equal(num(s, "last_log_index"), 5);
    assert_int_equal(num(s, "entry_count"), 5);
    json_decref(s);

    /* a shorter matching prefix does not truncate (Raft: only a conflict does) */
    assert_int_equal(append_range(f, "a1", 1, 2, 1, &r, &s, err), 0);
    assert_int_equal(r.skipped, 2);
    assert_int_equal(num(s, "last_log_index"), 5);
    json_decref(s);

    /* the state record was created by the append */
    s = get_state(f, "a1");
    assert_int_equal(num(s, "term"), 0);
    assert_string_equal(json_string_value(json_object_get(s, "state")), "Follower");
    assert_string_equal(json_string_value(json_object_get(s, "node_id")), "a1");
    json_decref(s);
}

static void conflicting_term_truncates_suffix(void **state)
{
    struct fixture *f = *state;
    char err[RHEMA_ERRMSG_MAX];
    struct rhema_consensus_append_result r;
    json_t *s = NULL;
    assert_int_equal(append_range(f, "t1", 1, 5, 1, &r, NULL, err), 0);
    /* index 3 with term 2: replaces 3, drops 4 and 5 */
    assert_int_equal(append_range(f, "t1", 3, 3, 2, &r, &s, err), 0);
    assert_int_equal(r.appended, 1);
    assert_int_equal(r.truncated, 3);
    assert_int_equal(num(s, "last_log_index"), 3);
    assert_int_equal(num(s, "last_log_term"), 2);
    assert_int_equal(num(s, "entry_count"), 3);
    long long bytes = num(s, "bytes");
    json_decref(s);
    json_t *page = read_entries(f, "t1", 1, 0, 0);
    json_t *items = json_object_get(page, "items");
    assert_int_equal(json_array_size(items), 3);
    assert_int_equal(num(json_array_get(items, 1), "term"), 1);
    assert_int_equal(num(json_array_get(items, 2), "term"), 2);
    assert_int_equal(num(json_array_get(items, 2), "index"), 3);
    json_decref(page);
    size_t count;
    assert_int_equal(sum_sizes(f, "t1", &count), bytes);
    assert_int_equal(count, 3);

    /* a batch that matches 2, conflicts at 3 and extends: [2/1, 3/3, 4/3] */
    json_t *body = J("[{\"index\":2,\"term\":1,\"command\":\"set\",\"data\":{\"n\":2}},"
                     "{\"index\":3,\"term\":3,\"command\":\"x\"},"
                     "{\"index\":4,\"term\":3,\"command\":\"y\"}]"),
           *entries = NULL;
    struct rhema_record rec = {0};
    assert_int_equal(rhema_consensus_entries_validate(body, &entries, err), 0);
    assert_int_equal(rhema_consensus_append(&f->st, "t1", entries, &rec, &r, err), 0);
    rhema_record_release(&rec);
    json_decref(body);
    json_decref(entries);
    assert_int_equal(r.skipped, 1);
    assert_int_equal(r.appended, 2);
    assert_int_equal(r.truncated, 1);
    s = get_state(f, "t1");
    assert_int_equal(num(s, "last_log_index"), 4);
    assert_int_equal(num(s, "last_log_term"), 3);
    assert_int_equal(num(s, "entry_count"), 4);
    assert_int_equal(sum_sizes(f, "t1", &count), num(s, "bytes"));
    assert_int_equal(count, 4);
    json_decref(s);

    /* a conflict in a long suffix: 1..4 -> replace 2 with term 5, drop 3, 4 */
    assert_int_equal(append_range(f, "t1", 2, 2, 5, &r, &s, err), 0);
    assert_int_equal(r.truncated, 3);
    assert_int_equal(num(s, "last_log_index"), 2);
    json_decref(s);
    page = read_entries(f, "t1", 1, 100, 0);
    assert_int_equal(json_array_size(json_object_get(page, "items")), 2);
    json_decref(page);
}

static void gap_is_conflict(void **state)
{
    struct fixture *f = *state;
    char err[RHEMA_ERRMSG_MAX];
    struct rhema_record rec = {0};
    /* an empty log accepts index 1 only */
    assert_int_equal(append_range(f, "g1", 2, 3, 1, NULL, NULL, err), RHEMA_ECONFLICT);
    expect_err_mentions(err, "gap");
    expect_err_mentions(err, "entry 2");
    assert_int_equal(rhema_consensus_state_get(&f->st, "g1", &rec, err), RHEMA_ENOTFOUND);
    assert_int_equal(append_range(f, "g1", 1, 3, 1, NULL, NULL, err), 0);
    assert_int_equal(append_range(f, "g1", 5, 5, 1, NULL, NULL, err), RHEMA_ECONFLICT);
    expect_err_mentions(err, "entry 5");
    expect_err_mentions(err, "index 3");
    json_t *s = get_state(f, "g1");
    assert_int_equal(num(s, "last_log_index"), 3);
    json_decref(s);
    /* right after the end is fine */
    assert_int_equal(append_range(f, "g1", 4, 4, 1, NULL, NULL, err), 0);
}

static void committed_entries_are_never_replaced(void **state)
{
    struct fixture *f = *state;
    char err[RHEMA_ERRMSG_MAX];
    assert_int_equal(append_range(f, "c1", 1, 5, 1, NULL, NULL, err), 0);
    assert_int_equal(mark(f, "c1", RHEMA_CONSENSUS_COMMIT, 3, NULL, NULL, err), 0);
    assert_int_equal(append_range(f, "c1", 3, 3, 2, NULL, NULL, err), RHEMA_ECONFLICT);
    expect_err_mentions(err, "entry 3");
    expect_err_mentions(err, "committed");
    /* above the commit index a conflict still truncates */
    assert_int_equal(append_range(f, "c1", 4, 4, 2, NULL, NULL, err), 0);
    json_t *s = get_state(f, "c1");
    assert_int_equal(num(s, "last_log_index"), 4);
    assert_int_equal(num(s, "commit_index"), 3);
    json_decref(s);
}

/* ---- range reads ---- */

static void range_reads_in_numeric_order(void **state)
{
    struct fixture *f = *state;
    char err[RHEMA_ERRMSG_MAX];
    /* in several appends so that no key order accident of one batch helps */
    assert_int_equal(append_range(f, "r1", 1, 9, 1, NULL, NULL, err), 0);
    assert_int_equal(append_range(f, "r1", 10, 99, 1, NULL, NULL, err), 0);
    assert_int_equal(append_range(f, "r1", 100, 1000, 2, NULL, NULL, err), 0);
    assert_int_equal(append_range(f, "r1", 1001, 1010, 2, NULL, NULL, err), 0);
    /* a neighbour whose id extends this one must not show up */
    assert_int_equal(append_range(f, "r1.x", 1, 3, 1, NULL, NULL, err), 0);
    assert_int_equal(append_range(f, "r10", 1, 3, 1, NULL, NULL, err), 0);

    /* every entry, in order, over pages */
    uint64_t want = 1, from = 1;
    int pages = 0;
    for (;;) {
        json_t *page = read_entries(f, "r1", from, 0, 1000);
        size_t i;
        json_t *e;
        json_array_foreach(json_object_get(page, "items"), i, e)
        {
            assert_int_equal(num(e, "index"), (long long)want);
            assert_int_equal(num(json_object_get(e, "data"), "n"), (long long)want);
            want++;
        }
        pages++;
        json_t *next = json_object_get(page, "next_cursor");
        if (!json_is_string(next)) {
            assert_true(json_is_null(next));
            json_decref(page);
            break;
        }
        from = strtoull(json_string_value(next), NULL, 10);
        assert_int_equal(from, want);
        json_decref(page);
    }
    assert_int_equal(want, 1011);
    assert_int_equal(pages, 2);

    /* windows across 9/10, 99/100, 999/1000 */
    static const uint64_t windows[][2] = {{8, 11}, {98, 101}, {999, 1002}, {1, 1}, {1010, 1010}};
    for (size_t w = 0; w < sizeof windows / sizeof *windows; w++) {
        json_t *page = read_entries(f, "r1", windows[w][0], windows[w][1], 0);
        json_t *items = json_object_get(page, "items");
        assert_int_equal(json_array_size(items), windows[w][1] - windows[w][0] + 1);
        for (size_t i = 0; i < json_array_size(items); i++)
            assert_int_equal(num(json_array_get(items, i), "index"),
                             (long long)(windows[w][0] + i));
        assert_true(json_is_null(json_object_get(page, "next_cursor")));
        json_decref(page);
    }
    /* a limit inside a window */
    json_t *page = read_entries(f, "r1", 98, 200, 3);
    json_t *items = json_object_get(page, "items");
    assert_int_equal(json_array_size(items), 3);
    assert_int_equal(num(json_array_get(items, 2), "index"), 100);
    assert_string_equal(json_string_value(json_object_get(page, "next_cursor")), "101");
    json_decref(page);
    /* past the end: empty */
    page = read_entries(f, "r1", 5000, 0, 0);
    assert_int_equal(json_array_size(json_object_get(page, "items")), 0);
    json_decref(page);
    /* the default limit */
    page = read_entries(f, "r1", 1, 0, 0);
    assert_int_equal(json_array_size(json_object_get(page, "items")), RHEMA_LIST_LIMIT_DEFAULT);
    json_decref(page);

    char *text = NULL;
    size_t len;
    assert_int_equal(rhema_consensus_entries(&f->st, "r1", 5, 4, 0, &text, &len, err),
                     RHEMA_EINVAL);
    expect_err_mentions(err, "'to'");
    assert_int_equal(rhema_consensus_entries(&f->st, "nobody", 1, 0, 0, &text, &len, err),
                     RHEMA_ENOTFOUND);
    assert_null(text);
}

/* ---- commit / applied ---- */

static void commit_and_applied_are_monotonic(void **state)
{
    struct fixture *f = *state;
    char err[RHEMA_ERRMSG_MAX];
    json_t *s = NULL;
    int adv;
    assert_int_equal(append_range(f, "m1", 1, 5, 1, NULL, NULL, err), 0);

    assert_int_equal(mark(f, "m1", RHEMA_CONSENSUS_COMMIT, 3, &s, &adv, err), 0);
    assert_int_equal(adv, 1);
    assert_int_equal(num(s, "commit_index"), 3);
    long long v = num(s, "version");
    json_decref(s);
    /* lower or equal: a no-op that reports the current index */
    assert_int_equal(mark(f, "m1", RHEMA_CONSENSUS_COMMIT, 2, &s, &adv, err), 0);
    assert_int_equal(adv, 0);
    assert_int_equal(num(s, "commit_index"), 3);
    assert_int_equal(num(s, "version"), v);
    json_decref(s);
    assert_int_equal(mark(f, "m1", RHEMA_CONSENSUS_COMMIT, 3, &s, &adv, err), 0);
    assert_int_equal(adv, 0);
    json_decref(s);
    /* beyond the last entry */
    assert_int_equal(mark(f, "m1", RHEMA_CONSENSUS_COMMIT, 6, NULL, NULL, err), RHEMA_ECONFLICT);
    expect_err_mentions(err, "'index'");
    expect_err_mentions(err, "6");
    assert_int_equal(mark(f, "m1", RHEMA_CONSENSUS_APPLIED, 6, NULL, NULL, err), RHEMA_ECONFLICT);
    assert_int_equal(mark(f, "nobody", RHEMA_CONSENSUS_COMMIT, 1, NULL, NULL, err),
                     RHEMA_ENOTFOUND);

    assert_int_equal(mark(f, "m1", RHEMA_CONSENSUS_APPLIED, 2, &s, &adv, err), 0);
    assert_int_equal(adv, 1);
    assert_int_equal(num(s, "applied_index"), 2);
    assert_int_equal(num(s, "commit_index"), 3);
    json_decref(s);
    assert_int_equal(mark(f, "m1", RHEMA_CONSENSUS_APPLIED, 1, &s, &adv, err), 0);
    assert_int_equal(adv, 0);
    assert_int_equal(num(s, "applied_index"), 2);
    json_decref(s);

    /* stamps: committed_at on 1..3, applied_at on 1..2, nothing else */
    json_t *page = read_entries(f, "m1", 1, 0, 0);
    json_t *items = json_object_get(page, "items");
    assert_int_equal(json_array_size(items), 5);
    for (size_t i = 0; i < 5; i++) {
        json_t *e = json_array_get(items, i);
        assert_true(json_is_string(json_object_get(e, "created_at")));
        assert_int_equal(json_is_string(json_object_get(e, "committed_at")), i < 3);
        assert_int_equal(json_is_null(json_object_get(e, "committed_at")), i >= 3);
        assert_int_equal(json_is_string(json_object_get(e, "applied_at")), i < 2);
        assert_int_equal(json_is_null(json_object_get(e, "applied_at")), i >= 2);
        assert_true(num(e, "size_bytes") > 0);
    }
    char stamp3[64];
    snprintf(stamp3, sizeof stamp3, "%s",
             json_string_value(json_object_get(json_array_get(items, 2), "committed_at")));
    json_decref(page);
    uint64_t ms;
    assert_int_equal(rhema_time_parse(stamp3, &ms), 0);

    /*
     * An entry that already carries a stamp (left by a multi-batch mark that
     * did not finish) keeps it: the stamp is when it was first marked.
     */
    {
        struct rhema_storage_value sv = {.size = sizeof(struct rhema_storage_value)};
        char key[200];
        snprintf(key, sizeof key, "m1/%020d", 4);
        assert_int_equal(f->vt->get(f->conn, "consensus.log", key, &sv), 0);
        json_t *e = json_loadb(sv.data, sv.len, 0, NULL);
        assert_non_null(e);
        json_object_set_new(e, "committed_at", json_string("2001-02-03T04:05:06.000Z"));
        char *t = json_dumps(e, JSON_COMPACT);
        struct rhema_storage_write w = {.size = sizeof(struct rhema_storage_write),
                                        .op = RHEMA_WRITE_PUT,
                                        .ns = "consensus.log",
                                        .key = key,
                                        .value = t,
                                        .value_len = strlen(t)};
        assert_int_equal(f->vt->put(f->conn, &w), 0);
        free(t);
        json_decref(e);
    }
    /* a later commit stamps only the newly covered entries */
    assert_int_equal(mark(f, "m1", RHEMA_CONSENSUS_COMMIT, 5, NULL, &adv, err), 0);
    page = read_entries(f, "m1", 3, 5, 0);
    items = json_object_get(page, "items");
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(items, 0), "committed_at")), stamp3);
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(items, 1), "committed_at")),
        "2001-02-03T04:05:06.000Z");
    assert_true(json_is_string(json_object_get(json_array_get(items, 2), "committed_at")));
    json_decref(page);
}

static void commit_over_many_batches(void **state)
{
    struct fixture *f = *state;
    char err[RHEMA_ERRMSG_MAX];
    json_t *s = NULL;
    int adv;
    uint64_t n = 2 * RHEMA_CONSENSUS_STAMP_BATCH + 345;
    assert_int_equal(append_range(f, "big", 1, n, 4, NULL, NULL, err), 0);
    assert_int_equal(mark(f, "big", RHEMA_CONSENSUS_COMMIT, n - 1, &s, &adv, err), 0);
    assert_int_equal(adv, 1);
    assert_int_equal(num(s, "commit_index"), (long long)(n - 1));
    json_decref(s);
    size_t stamped = 0, total = 0;
    for (uint64_t from = 1; from <= n; from += RHEMA_LIST_LIMIT_MAX) {
        json_t *page = read_entries(f, "big", from, 0, RHEMA_LIST_LIMIT_MAX);
        size_t i;
        json_t *e;
        json_array_foreach(json_object_get(page, "items"), i, e)
        {
            total++;
            if (json_is_string(json_object_get(e, "committed_at"))) {
                stamped++;
                assert_true((uint64_t)num(e, "index") <= n - 1);
            }
        }
        json_decref(page);
    }
    assert_int_equal(total, n);
    assert_int_equal(stamped, n - 1);
}

/* ---- state ---- */

static void counters_count_real_changes(void **state)
{
    struct fixture *f = *state;
    char err[RHEMA_ERRMSG_MAX];
    json_t *s = NULL;
    int created;
    static const struct {
        const char *body;
        long long term_count, leader_changes;
    } steps[] = {
        {"{\"term\":1,\"state\":\"Candidate\",\"voted_for\":\"n1\"}", 1, 0},
        {"{\"term\":1,\"state\":\"Follower\",\"leader_id\":\"a\"}", 1, 1},
        {"{\"term\":1,\"state\":\"Follower\",\"leader_id\":\"a\"}", 1, 1}, /* a heartbeat */
        {"{\"term\":2,\"state\":\"Candidate\"}", 2, 1},                    /* election */
        {"{\"term\":2,\"state\":\"Follower\",\"leader_id\":\"a\"}", 2, 1}, /* re-elected */
        {"{\"term\":3,\"state\":\"Follower\",\"leader_id\":\"b\"}", 3, 2},
        {"{\"term\":3,\"state\":\"Leader\",\"leader_id\":\"b\"}", 3, 2},
        {"{\"term\":3,\"state\":\"Follower\",\"leader_id\":\"a\"}", 3, 3},
    };
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
        assert_int_equal(put_state(f, "k1", steps[i].body, 0, &s, &created, err), 0);
        assert_int_equal(created, i == 0);
        if (num(s, "term_count") != steps[i].term_count ||
            num(s, "leader_changes") != steps[i].leader_changes)
            fail_msg("step %zu: term_count %lld leader_changes %lld, want %lld %lld", i,
                     num(s, "term_count"), num(s, "leader_changes"), steps[i].term_count,
                     steps[i].leader_changes);
        json_decref(s);
    }
    s = get_state(f, "k1");
    assert_int_equal(num(s, "term"), 3);
    assert_string_equal(json_string_value(json_object_get(s, "leader_id")), "a");
    assert_string_equal(json_string_value(json_object_get(s, "state")), "Follower");
    assert_true(json_is_null(json_object_get(s, "voted_for")));
    json_decref(s);

    /* a node created at term 0 has seen no term change */
    assert_int_equal(put_state(f, "k0", "{\"term\":0}", 0, &s, NULL, err), 0);
    assert_int_equal(num(s, "term_count"), 0);
    assert_int_equal(num(s, "leader_changes"), 0);
    json_decref(s);
}

static void state_if_match_and_log_fields(void **state)
{
    struct fixture *f = *state;
    char err[RHEMA_ERRMSG_MAX];
    json_t *s = NULL;
    int created;
    assert_int_equal(put_state(f, "i1", "{\"term\":1}", 42, NULL, NULL, err), RHEMA_EPRECONDITION);
    assert_int_equal(put_state(f, "i1", "{\"term\":1}", RHEMA_VERSION_ABSENT, &s, &created, err),
                     0);
    assert_int_equal(created, 1);
    uint64_t v1 = (uint64_t)num(s, "version");
    json_decref(s);
    assert_int_equal(put_state(f, "i1", "{\"term\":1}", RHEMA_VERSION_ABSENT, NULL, NULL, err),
                     RHEMA_EPRECONDITION);
    assert_int_equal(put_state(f, "i1", "{\"term\":2}", v1, &s, &created, err), 0);
    assert_int_equal(created, 0);
    uint64_t v2 = (uint64_t)num(s, "version");
    assert_true(v2 > v1);
    json_decref(s);
    assert_int_equal(put_state(f, "i1", "{\"term\":3}", v1, NULL, NULL, err), RHEMA_EPRECONDITION);
    expect_err_mentions(err, "If-Match");
    s = get_state(f, "i1");
    assert_int_equal(num(s, "term"), 2);
    assert_int_equal((uint64_t)num(s, "version"), v2);
    json_decref(s);

    /* an append changes the version */
    assert_int_equal(append_range(f, "i1", 1, 4, 2, NULL, NULL, err), 0);
    assert_int_equal(put_state(f, "i1", "{\"term\":3}", v2, NULL, NULL, err), RHEMA_EPRECONDITION);

    /* the log's fields must agree with the log */
    assert_int_equal(put_state(f, "i1", "{\"term\":3,\"last_log_index\":7}", 0, NULL, NULL, err),
                     RHEMA_ECONFLICT);
    expect_err_mentions(err, "'last_log_index'");
    assert_int_equal(put_state(f, "i1", "{\"term\":3,\"last_log_term\":1}", 0, NULL, NULL, err),
                     RHEMA_ECONFLICT);
    expect_err_mentions(err, "'last_log_term'");
    assert_int_equal(put_state(f, "i1", "{\"term\":3,\"commit_index\":2}", 0, NULL, NULL, err),
                     RHEMA_ECONFLICT);
    expect_err_mentions(err, "'commit_index'");
    assert_int_equal(mark(f, "i1", RHEMA_CONSENSUS_COMMIT, 2, NULL, NULL, err), 0);
    /* what a GET returned can be PUT back */
    s = get_state(f, "i1");
    json_object_set_new(s, "term", json_integer(4));
    char *text = json_dumps(s, JSON_COMPACT);
    json_decref(s);
    assert_int_equal(put_state(f, "i1", text, 0, &s, NULL, err), 0);
    free(text);
    assert_int_equal(num(s, "term"), 4);
    assert_int_equal(num(s, "last_log_index"), 4);
    assert_int_equal(num(s, "commit_index"), 2);
    json_decref(s);
    /* a lower commit_index is ignored (monotonic) */
    assert_int_equal(put_state(f, "i1", "{\"term\":4,\"commit_index\":0}", 0, &s, NULL, err), 0);
    assert_int_equal(num(s, "commit_index"), 2);
    json_decref(s);

    struct rhema_record rec = {0};
    assert_int_equal(rhema_consensus_state_get(&f->st, "nobody", &rec, err), RHEMA_ENOTFOUND);
    expect_err_mentions(err, "nobody");
}

/* ---- listing ---- */

static void list_summarises_nodes(void **state)
{
    struct fixture *f = *state;
    char err[RHEMA_ERRMSG_MAX], *text = NULL;
    size_t len;
    assert_int_equal(append_range(f, "la", 1, 12, 3, NULL, NULL, err), 0);
    assert_int_equal(mark(f, "la", RHEMA_CONSENSUS_COMMIT, 10, NULL, NULL, err), 0);
    assert_int_equal(put_state(f, "lb", "{\"term\":7,\"state\":\"Leader\",\"leader_id\":\"lb\"}", 0,
                               NULL, NULL, err),
                     0);
    assert_int_equal(append_range(f, "lb", 1, 2, 7, NULL, NULL, err), 0);
    assert_int_equal(append_range(f, "lb", 2, 2, 8, NULL, NULL, err), 0); /* truncates */

    assert_int_equal(rhema_consensus_list(&f->st, 0, NULL, &text, &len, err), 0);
    json_t *page = json_loadb(text, len, 0, NULL);
    free(text);
    assert_non_null(page);
    json_t *items = json_object_get(page, "items");
    assert_int_equal(json_array_size(items), 2);
    assert_true(json_is_null(json_object_get(page, "next_cursor")));
    json_t *a = json_array_get(items, 0), *b = json_array_get(items, 1);
    assert_string_equal(json_string_value(json_object_get(a, "node_id")), "la");
    assert_int_equal(num(a, "last_log_index"), 12);
    assert_int_equal(num(a, "last_log_term"), 3);
    assert_int_equal(num(a, "commit_index"), 10);
    assert_int_equal(num(a, "entry_count"), 12);
    size_t count;
    assert_int_equal(num(a, "bytes"), sum_sizes(f, "la", &count));
    assert_true(num(a, "version") > 0);
    assert_string_equal(json_string_value(json_object_get(b, "node_id")), "lb");
    assert_int_equal(num(b, "term"), 7);
    assert_int_equal(num(b, "last_log_index"), 2);
    assert_int_equal(num(b, "last_log_term"), 8);
    assert_int_equal(num(b, "entry_count"), 2);
    assert_int_equal(num(b, "bytes"), sum_sizes(f, "lb", &count));
    json_decref(page);

    /* pages of one */
    assert_int_equal(rhema_consensus_list(&f->st, 1, NULL, &text, &len, err), 0);
    page = json_loadb(text, len, 0, NULL);
    free(text);
    assert_string_equal(json_string_value(json_object_get(page, "next_cursor")), "la");
    json_decref(page);
    assert_int_equal(rhema_consensus_list(&f->st, 1, "la", &text, &len, err), 0);
    page = json_loadb(text, len, 0, NULL);
    free(text);
    items = json_object_get(page, "items");
    assert_int_equal(json_array_size(items), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(items, 0), "node_id")),
                        "lb");
    assert_true(json_is_null(json_object_get(page, "next_cursor")));
    json_decref(page);
    assert_int_equal(rhema_consensus_list(&f->st, 1, "bad cursor", &text, &len, err), RHEMA_EINVAL);
    expect_err_mentions(err, "'cursor'");
}

/* ---- compaction ---- */

static void compaction_removes_the_applied_prefix(void **state)
{
    struct fixture *f = *state;
    char err[RHEMA_ERRMSG_MAX];
    struct rhema_consensus_append_result r;
    json_t *s = NULL;
    size_t n = 99;
    uint64_t later = rhema_realtime_ms() + 60000;
    assert_int_equal(append_range(f, "c1", 1, 10, 1, NULL, NULL, err), 0);
    assert_int_equal(mark(f, "c1", RHEMA_CONSENSUS_COMMIT, 8, NULL, NULL, err), 0);
    assert_int_equal(mark(f, "c1", RHEMA_CONSENSUS_APPLIED, 6, NULL, NULL, err), 0);
    long long bytes10 = num(s = get_state(f, "c1"), "bytes");
    json_decref(s);

    /* applied just now: younger than any retention */
    assert_int_equal(rhema_consensus_compact(&f->st, "c1", rhema_realtime_ms() - 1000, &n, err), 0);
    assert_int_equal(n, 0);
    /* older than the cutoff: the applied prefix 1..6 goes, 7..10 stay */
    assert_int_equal(rhema_consensus_compact(&f->st, "c1", later, &n, err), 0);
    assert_int_equal(n, 6);
    s = get_state(f, "c1");
    assert_int_equal(num(s, "log_start_index"), 7);
    assert_int_equal(num(s, "log_start_term"), 1);
    assert_int_equal(num(s, "entry_count"), 4);
    assert_int_equal(num(s, "last_log_index"), 10);
    assert_int_equal(num(s, "applied_index"), 6);
    assert_true(num(s, "bytes") > 0 && num(s, "bytes") < bytes10);
    json_decref(s);
    json_t *page = read_entries(f, "c1", 1, 0, 0);
    json_t *items = json_object_get(page, "items");
    assert_int_equal(json_array_size(items), 4);
    assert_int_equal(num(json_array_get(items, 0), "index"), 7);
    json_decref(page);
    assert_int_equal(rhema_consensus_compact(&f->st, "c1", later, &n, err), 0);
    assert_int_equal(n, 0);

    /* appends across the compacted prefix: it matches, the rest is checked */
    assert_int_equal(append_range(f, "c1", 3, 12, 1, &r, &s, err), 0);
    assert_int_equal(r.skipped, 8);
    assert_int_equal(r.appended, 2);
    assert_int_equal(num(s, "entry_count"), 6);
    json_decref(s);
    assert_int_equal(append_range(f, "c1", 2, 5, 1, &r, NULL, err), 0);
    assert_int_equal(r.skipped, 4);
    assert_int_equal(r.appended, 0);
    /* committed 8 still refuses another term; 9 (not committed) is replaced */
    assert_int_equal(append_range(f, "c1", 8, 8, 2, NULL, NULL, err), RHEMA_ECONFLICT);
    assert_int_equal(append_range(f, "c1", 9, 9, 2, &r, &s, err), 0);
    assert_int_equal(r.truncated, 4);
    assert_int_equal(r.appended, 1);
    assert_int_equal(num(s, "last_log_index"), 9);
    assert_int_equal(num(s, "entry_count"), 3);
    json_decref(s);

    /* the maintenance hook: every node, everything applied before the cutoff */
    assert_int_equal(append_range(f, "c2", 1, 300, 1, NULL, NULL, err), 0);
    assert_int_equal(mark(f, "c2", RHEMA_CONSENSUS_COMMIT, 300, NULL, NULL, err), 0);
    assert_int_equal(mark(f, "c2", RHEMA_CONSENSUS_APPLIED, 280, NULL, NULL, err), 0);
    assert_int_equal(mark(f, "c1", RHEMA_CONSENSUS_COMMIT, 9, NULL, NULL, err), 0);
    assert_int_equal(mark(f, "c1", RHEMA_CONSENSUS_APPLIED, 9, NULL, NULL, err), 0);
    char *herr = NULL;
    n = 0;
    assert_int_equal(rhema_consensus_cleanup(NULL, f->vt, f->conn, later, &n, &herr), 0);
    assert_null(herr);
    assert_int_equal(n, 3 + 280); /* c2 over two batches */
    s = get_state(f, "c1");
    assert_int_equal(num(s, "log_start_index"), 10);
    assert_int_equal(num(s, "log_start_term"), 2);
    assert_int_equal(num(s, "entry_count"), 0);
    assert_int_equal(num(s, "bytes"), 0);
    json_decref(s);
    s = get_state(f, "c2");
    assert_int_equal(num(s, "log_start_index"), 281);
    assert_int_equal(num(s, "entry_count"), 20);
    json_decref(s);
    /* a log compacted to its end still takes the next entry */
    assert_int_equal(append_range(f, "c1", 10, 10, 2, &r, &s, err), 0);
    assert_int_equal(r.appended, 1);
    assert_int_equal(num(s, "entry_count"), 1);
    json_decref(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(validation_names_the_field),
        cmocka_unit_test(validation_normalises_and_ignores_metadata),
        cmocka_unit_test_setup_teardown(append_is_idempotent, setup, teardown),
        cmocka_unit_test_setup_teardown(conflicting_term_truncates_suffix, setup, teardown),
        cmocka_unit_test_setup_teardown(gap_is_conflict, setup, teardown),
        cmocka_unit_test_setup_teardown(committed_entries_are_never_replaced, setup, teardown),
        cmocka_unit_test_setup_teardown(range_reads_in_numeric_order, setup, teardown),
        cmocka_unit_test_setup_teardown(commit_and_applied_are_monotonic, setup, teardown),
        cmocka_unit_test_setup_teardown(commit_over_many_batches, setup, teardown),
        cmocka_unit_test_setup_teardown(counters_count_real_changes, setup, teardown),
        cmocka_unit_test_setup_teardown(state_if_match_and_log_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(list_summarises_nodes, setup, teardown),
        cmocka_unit_test_setup_teardown(compaction_removes_the_applied_prefix, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
