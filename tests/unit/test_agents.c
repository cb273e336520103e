/*
 * test_agents -- validation of agents, system metrics and configurations,
 * and their stores (transitions, indexes, pagination, heartbeats and the
 * online computation, the stats summary, configuration history, If-Match)
 * on the memory plugin loaded through the real loader.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "agents.h"
#include "config.h"
#include "plugin.h"
#include "session.h"
#include "util.h"

#define TIMEOUT_MS 60000u

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

static json_t *Jn(const char *text, size_t len)
{
    json_error_t e;
    json_t *v = json_loadb(text, len, 0, &e);
    if (!v)
        fail_msg("bad JSON from the store: %.*s: %s", (int)len, text, e.text);
    return v;
}

static void must_name(int rc, const char *err, const char *field, const char *what)
{
    char want[160];
    if (rc != RHEMA_EINVAL)
        fail_msg("accepted %s", what);
    snprintf(want, sizeof want, "'%s'", field);
    if (!strstr(err, want))
        fail_msg("error '%s' does not name %s", err, want);
}

static void agent_invalid(const char *body, const char *field)
{
    char err[RHEMA_ERRMSG_MAX];
    json_t *in = J(body), *out = NULL;
    int rc = rhema_agent_validate(in, "a1", &out, err);
    json_decref(in);
    assert_null(out);
    must_name(rc, err, field, body);
}

#define BASE "\"name\":\"n\",\"agent_type\":\"coder\""

static void agent_validation_names_the_field(void **state)
{
    (void)state;
    agent_invalid("{\"agent_type\":\"t\"}", "name");
    agent_invalid("{\"name\":\"\",\"agent_type\":\"t\"}", "name");
    agent_invalid("{\"name\":\"n\"}", "agent_type");
    agent_invalid("{" BASE ",\"status\":\"idle\"}", "status");
    agent_invalid("{" BASE ",\"id\":\"other\"}", "id");
    agent_invalid("{" BASE ",\"capabilities\":\"rust\"}", "capabilities");
    agent_invalid("{" BASE ",\"capabilities\":[\"rust\",\"a/b\"]}", "capabilities[1]");
    agent_invalid("{" BASE ",\"capabilities\":[\"rust\",\"rust\"]}", "capabilities[1]");
    agent_invalid("{" BASE ",\"current_task_id\":5}", "current_task_id");
    agent_invalid("{" BASE ",\"assigned_scope\":[]}", "assigned_scope");
    agent_invalid("{" BASE ",\"last_heartbeat\":\"now\"}", "last_heartbeat");
    agent_invalid("{" BASE ",\"is_online\":\"yes\"}", "is_online");
    agent_invalid("{" BASE ",\"performance_metrics\":[]}", "performance_metrics");
    agent_invalid("{" BASE ",\"performance_metrics\":{\"success_rate\":1.5}}",
                  "performance_metrics.success_rate");
    agent_invalid("{" BASE ",\"performance_metrics\":{\"tasks_completed\":-1}}",
                  "performance_metrics.tasks_completed");
    agent_invalid("{" BASE ",\"performance_metrics\":{\"tasks_failed\":1.5}}",
                  "performance_metrics.tasks_failed");
    agent_invalid("{" BASE ",\"performance_metrics\":{\"avg_response_time_ms\":-3}}",
                  "performance_metrics.avg_response_time_ms");
    agent_invalid("{" BASE ",\"performance_metrics\":{\"speed\":1}}", "performance_metrics.speed");
    agent_invalid("{" BASE ",\"status_reason\":7}", "status_reason");
    agent_invalid("{" BASE ",\"colour\":\"red\"}", "colour");

    char err[RHEMA_ERRMSG_MAX];
    json_t *in = J("[]"), *out = NULL;
    assert_int_equal(rhema_agent_validate(in, "a1", &out, err), RHEMA_EINVAL);
    assert_string_equal(err, "body: expected a JSON object");
    json_decref(in);
    in = J("{\"status\":\"Sleeping\"}");
    must_name(rhema_agent_heartbeat_validate(in, &out, err), err, "status", "heartbeat status");
    json_decref(in);
    in = J("{\"name\":\"x\"}");
    must_name(rhema_agent_heartbeat_validate(in, &out, err), err, "name", "heartbeat name");
    json_decref(in);
    assert_null(out);
}

static void agent_validation_defaults(void **state)
{
    (void)state;
    char err[RHEMA_ERRMSG_MAX];
    json_t *in = J("{" BASE ",\"created_at\":\"x\",\"version\":9,\"transition_count\":4}");
    json_t *out = NULL;
    assert_int_equal(rhema_agent_validate(in, "a1", &out, err), 0);
    assert_string_equal(json_string_value(json_object_get(out, "id")), "a1");
    assert_string_equal(json_string_value(json_object_get(out, "status")), "Idle");
    assert_string_equal(json_string_value(json_object_get(out, "assigned_scope")), "");
    assert_true(json_is_null(json_object_get(out, "current_task_id")));
    assert_int_equal(json_array_size(json_object_get(out, "capabilities")), 0);
    json_t *m = json_object_get(out, "performance_metrics");
    assert_int_equal(json_object_size(m), 6);
    assert_int_equal(json_integer_value(json_object_get(m, "tasks_completed")), 0);
    assert_null(json_object_get(out, "last_heartbeat")); /* the store decides */
    assert_null(json_object_get(out, "is_online"));
    assert_null(json_object_get(out, "created_at"));
    assert_null(json_object_get(out, "version"));
    json_decref(in);
    json_decref(out);
}

/* ---- store helpers ---- */

static json_t *put_agent(struct fixture *f, const char *id, const char *body, int want_created)
{
    char err[RHEMA_ERRMSG_MAX];
    json_t *in = J(body), *a = NULL;
    struct rhema_record rec = {0};
    int created = -1;
    if (rhema_agent_validate(in, id, &a, err) != 0)
        fail_msg("validate %s: %s", body, err);
    json_decref(in);
    int rc = rhema_agent_put(&f->st, id, a, 0, TIMEOUT_MS, &rec, &created, err);
    json_decref(a);
    if (rc)
        fail_msg("put %s: %s", id, err);
    if (want_created >= 0)
        assert_int_equal(created, want_created);
    json_t *r = Jn(rec.json, rec.len);
    assert_int_equal(json_integer_value(json_object_get(r, "version")), (json_int_t)rec.version);
    rhema_record_release(&rec);
    return r;
}

static json_t *get_agent(struct fixture *f, const char *id, uint64_t timeout_ms)
{
    char err[RHEMA_ERRMSG_MAX];
    struct rhema_record rec = {0};
    if (rhema_agent_get(&f->st, id, timeout_ms, &rec, err))
        fail_msg("get %s: %s", id, err);
    json_t *r = Jn(rec.json, rec.len);
    rhema_record_release(&rec);
    return r;
}

static json_t *heartbeat(struct fixture *f, const char *id, const char *body)
{
    char err[RHEMA_ERRMSG_MAX];
    json_t *in = body ? J(body) : NULL, *hb = NULL;
    struct rhema_record rec = {0};
    if (rhema_agent_heartbeat_validate(in, &hb, err))
        fail_msg("heartbeat validate: %s", err);
    json_decref(in);
    int rc = rhema_agent_heartbeat(&f->st, id, hb, 0, TIMEOUT_MS, &rec, err);
    json_decref(hb);
    if (rc)
        fail_msg("heartbeat %s: %s", id, err);
    json_t *r = Jn(rec.json, rec.len);
    rhema_record_release(&rec);
    return r;
}

static json_t *transitions(struct fixture *f, const char *id, size_t limit, const char *cursor)
{
    char err[RHEMA_ERRMSG_MAX], *text = NULL;
    size_t len = 0;
    if (rhema_agent_transitions(&f->st, id, limit, cursor, &text, &len, err))
        fail_msg("transitions %s: %s", id, err);
    json_t *r = Jn(text, len);
    free(text);
    return r;
}

static json_t *list(struct fixture *f, const char *status, const char *cap, size_t limit,
                    const char *cursor)
{
    char err[RHEMA_ERRMSG_MAX], *text = NULL;
    size_t len = 0;
    if (rhema_agent_list(&f->st, status, cap, limit, cursor, TIMEOUT_MS, &text, &len, err))
        fail_msg("list: %s", err);
    json_t *r = Jn(text, len);
    free(text);
    return r;
}

/* The ids of a list page, comma-separated. */
static void ids_of(json_t *page, char *buf, size_t cap)
{
    size_t i, at = 0;
    json_t *it;
    buf[0] = '\0';
    json_array_foreach(json_object_get(page, "items"), i, it) at += (size_t)snprintf(
        buf + at, cap - at, "%s%s", i ? "," : "", json_string_value(json_object_get(it, "id")));
}

static void expect_list(struct fixture *f, const char *status, const char *cap, const char *want)
{
    char got[1024];
    json_t *p = list(f, status, cap, 0, NULL);
    ids_of(p, got, sizeof got);
    assert_true(json_is_null(json_object_get(p, "next_cursor")));
    json_decref(p);
    if (strcmp(got, want) != 0)
        fail_msg("list status=%s capability=%s: got [%s], want [%s]", status ? status : "-",
                 cap ? cap : "-", got, want);
}

static json_t *stats(struct fixture *f, uint64_t timeout_ms)
{
    char err[RHEMA_ERRMSG_MAX], *text = NULL;
    size_t len = 0;
    if (rhema_agent_stats(&f->st, timeout_ms, &text, &len, err))
        fail_msg("stats: %s", err);
    json_t *r = Jn(text, len);
    free(text);
    return r;
}

static int count_cb(void *ctx, const char *key, const void *value, size_t len, uint64_t ver)
{
    (void)key, (void)value, (void)len, (void)ver;
    (*(size_t *)ctx)++;
    return 0;
}

static size_t ns_count(struct fixture *f, const char *ns)
{
    size_t n = 0;
    assert_int_equal(f->vt->scan(f->conn, ns, NULL, NULL, 0, count_cb, &n), 0);
    return n;
}

static const char *S(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

/* ---- tests ---- */

static void put_get_and_metadata(void **state)
{
    struct fixture *f = *state;
    char err[RHEMA_ERRMSG_MAX];
    json_t *a = put_agent(
        f, "a1", "{" BASE ",\"capabilities\":[\"rust\"],\"assigned_scope\":\"svc/auth\"}", 1);
    assert_string_equal(S(a, "status"), "Idle");
    assert_true(json_is_true(json_object_get(a, "is_online")));
    assert_non_null(S(a, "last_heartbeat"));
    assert_non_null(S(a, "created_at"));
    assert_non_null(S(a, "updated_at"));
    assert_int_equal(json_integer_value(json_object_get(a, "transition_count")), 1);
    json_t *g = get_agent(f, "a1", TIMEOUT_MS);
    assert_true(json_equal(a, g));
    json_decref(g);
    json_t *b = put_agent(f, "a1", "{" BASE ",\"name\":\"renamed\"}", 0);
    assert_string_equal(S(b, "name"), "renamed");
    assert_string_equal(S(b, "created_at"), S(a, "created_at"));
    assert_string_equal(S(b, "last_heartbeat"), S(a, "last_heartbeat")); /* kept */
    assert_true(json_integer_value(json_object_get(b, "version")) >
                json_integer_value(json_object_get(a, "version")));
    json_decref(a);
    json_decref(b);
    struct rhema_record rec = {0};
    assert_int_equal(rhema_agent_get(&f->st, "nobody", TIMEOUT_MS, &rec, err), RHEMA_ENOTFOUND);
    assert_non_null(strstr(err, "nobody"));
    assert_int_equal(rhema_agent_delete(&f->st, "nobody", 0, err), RHEMA_ENOTFOUND);
}

static void if_match_on_agents(void **state)
{
    struct fixture *f = *state;
    char err[RHEMA_ERRMSG_MAX];
    struct rhema_record rec = {0};
    int created;
    json_t *a = put_agent(f, "a1", "{" BASE "}", 1);
    uint64_t v = (uint64_t)json_integer_value(json_object_get(a, "version"));
    json_decref(a);
    json_t *in = J("{" BASE ",\"status\":\"Busy\"}"), *val = NULL;
    assert_int_equal(rhema_agent_validate(in, "a1", &val, err), 0);
    assert_int_equal(rhema_agent_put(&f->st, "a1", val, v + 1000, TIMEOUT_MS, &rec, &created, err),
                     RHEMA_EPRECONDITION);
    assert_int_equal(
        rhema_agent_put(&f->st, "a1", val, RHEMA_VERSION_ABSENT, TIMEOUT_MS, &rec, &created, err),
        RHEMA_EPRECONDITION);
    assert_int_equal(rhema_agent_put(&f->st, "a2", val, v, TIMEOUT_MS, &rec, &created, err),
                     RHEMA_EPRECONDITION);
    assert_int_equal(rhema_agent_delete(&f->st, "a1", v + 1000, err), RHEMA_EPRECONDITION);
    /* nothing changed: still Idle, one transition */
    json_t *g = get_agent(f, "a1", TIMEOUT_MS);
    assert_string_equal(S(g, "status"), "Idle");
    json_decref(g);
    assert_int_equal(rhema_agent_put(&f->st, "a1", val, v, TIMEOUT_MS, &rec, &created, err), 0);
    assert_int_equal(created, 0);
    rhema_record_release(&rec);
    json_decref(val);
    json_decref(in);
    g = get_agent(f, "a1", TIMEOUT_MS);
    assert_int_equal(rhema_agent_delete(&f->st, "a1",
                                        (uint64_t)json_integer_value(json_object_get(g, "version")),
                                        err),
                     0);
    json_decref(g);
}

static void transitions_only_on_real_changes(void **state)
{
    struct fixture *f = *state;
    json_decref(put_agent(f, "a1", "{" BASE "}", 1));
    json_decref(put_agent(f, "a1", "{" BASE ",\"status\":\"Idle\",\"name\":\"x\"}", 0));
    json_decref(
        put_agent(f, "a1", "{" BASE ",\"status\":\"Busy\",\"status_reason\":\"task t1\"}", 0));
    json_decref(
        put_agent(f, "a1", "{" BASE ",\"status\":\"Busy\",\"status_reason\":\"again\"}", 0));
    json_decref(heartbeat(f, "a1", NULL));
    json_decref(heartbeat(f, "a1", "{\"current_task_id\":\"t2\"}"));
    json_t *h = heartbeat(f, "a1", "{\"status\":\"Working\",\"status_reason\":\"started\"}");
    assert_string_equal(S(h, "status"), "Working");
    assert_string_equal(S(h, "current_task_id"), "t2");
    assert_null(json_object_get(h, "status_reason"));
    assert_int_equal(json_integer_value(json_object_get(h, "transition_count")), 3);
    json_decref(h);
    json_decref(heartbeat(f, "a1", "{\"status\":\"Working\"}"));

    json_t *t = transitions(f, "a1", 0, NULL), *items = json_object_get(t, "items");
    assert_int_equal(json_array_size(items), 3);
    json_t *t0 = json_array_get(items, 0), *t1 = json_array_get(items, 1),
           *t2 = json_array_get(items, 2);
    assert_true(json_is_null(json_object_get(t0, "from_status")));
    assert_string_equal(S(t0, "to_status"), "Idle");
    assert_true(json_is_null(json_object_get(t0, "reason")));
    assert_string_equal(S(t1, "from_status"), "Idle");
    assert_string_equal(S(t1, "to_status"), "Busy");
    assert_string_equal(S(t1, "reason"), "task t1");
    assert_string_equal(S(t2, "from_status"), "Busy");
    assert_string_equal(S(t2, "to_status"), "Working");
    assert_string_equal(S(t2, "reason"), "started");
    assert_int_equal(json_integer_value(json_object_get(t2, "seq")), 3);
    assert_non_null(S(t2, "timestamp"));
    assert_true(json_is_null(json_object_get(t, "next_cursor")));
    json_decref(t);

    /* pagination of transitions */
    t = transitions(f, "a1", 2, NULL);
    assert_int_equal(json_array_size(json_object_get(t, "items")), 2);
    assert_string_equal(S(t, "next_cursor"), "2");
    json_t *t2p = transitions(f, "a1", 2, "2");
    assert_int_equal(json_array_size(json_object_get(t2p, "items")), 1);
    assert_true(json_is_null(json_object_get(t2p, "next_cursor")));
    assert_string_equal(S(json_array_get(json_object_get(t2p, "items"), 0), "to_status"),
                        "Working");
    json_decref(t);
    json_decref(t2p);

    char err[RHEMA_ERRMSG_MAX], *text = NULL;
    size_t len;
    assert_int_equal(rhema_agent_transitions(&f->st, "a1", 0, "x", &text, &len, err), RHEMA_EINVAL);
    assert_non_null(strstr(err, "'cursor'"));
    assert_int_equal(rhema_agent_transitions(&f->st, "nobody", 0, NULL, &text, &len, err),
                     RHEMA_ENOTFOUND);

    /* delete removes the transitions; a new agent of the same id starts over */
    assert_int_equal(rhema_agent_delete(&f->st, "a1", 0, err), 0);
    assert_int_equal(ns_count(f, "agents.transitions"), 0);
    json_decref(put_agent(f, "a1", "{" BASE ",\"status\":\"Failed\"}", 1));
    t = transitions(f, "a1", 0, NULL);
    assert_int_equal(json_array_size(json_object_get(t, "items")), 1);
    assert_string_equal(S(json_array_get(json_object_get(t, "items"), 0), "to_status"), "Failed");
    json_decref(t);
}

static void indexes_follow_changes_and_deletes(void **state)
{
    struct fixture *f = *state;
    char err[RHEMA_ERRMSG_MAX];
    json_decref(put_agent(f, "a", "{" BASE ",\"capabilities\":[\"rust\",\"go\"]}", 1));
    json_decref(put_agent(f, "b", "{" BASE ",\"status\":\"Busy\",\"capabilities\":[\"rust\"]}", 1));
    json_decref(put_agent(f, "c", "{" BASE ",\"status\":\"Busy\",\"capabilities\":[\"go\"]}", 1));
    expect_list(f, NULL, NULL, "a,b,c");
    expect_list(f, "Idle", NULL, "a");
    expect_list(f, "Busy", NULL, "b,c");
    expect_list(f, NULL, "rust", "a,b");
    expect_list(f, NULL, "go", "a,c");
    expect_list(f, "Busy", "go", "c");
    expect_list(f, "Failed", NULL, "");
    expect_list(f, NULL, "python", "");

    json_decref(
        put_agent(f, "a", "{" BASE ",\"status\":\"Busy\",\"capabilities\":[\"python\"]}", 0));
    json_decref(heartbeat(f, "c", "{\"status\":\"Offline\"}"));
    expect_list(f, "Idle", NULL, "");
    expect_list(f, "Busy", NULL, "a,b");
    expect_list(f, "Offline", NULL, "c");
    expect_list(f, NULL, "rust", "b");
    expect_list(f, NULL, "go", "c");
    expect_list(f, NULL, "python", "a");
    expect_list(f, "Busy", "python", "a");

    assert_int_equal(rhema_agent_delete(&f->st, "a", 0, err), 0);
    assert_int_equal(rhema_agent_delete(&f->st, "b", 0, err), 0);
    expect_list(f, "Busy", NULL, "");
    expect_list(f, NULL, "python", "");
    expect_list(f, NULL, "rust", "");
    expect_list(f, NULL, NULL, "c");
    assert_int_equal(ns_count(f, "agents.status"), 1);
    assert_int_equal(ns_count(f, "agents.capability"), 1);
    assert_int_equal(ns_count(f, "agents.heartbeat"), 1);

    /* a lost index entry is repaired instead of failing every later write */
    assert_int_equal(f->vt->del(f->conn, "agents.status", "Offline/c", 0), 0);
    json_decref(put_agent(f, "c", "{" BASE ",\"status\":\"Idle\",\"capabilities\":[\"go\"]}", 0));
    expect_list(f, "Idle", NULL, "c");
    expect_list(f, "Offline", NULL, "");

    char *text;
    size_t len;
    assert_int_equal(rhema_agent_list(&f->st, "idle", NULL, 0, NULL, TIMEOUT_MS, &text, &len, err),
                     RHEMA_EINVAL);
    assert_non_null(strstr(err, "'status'"));
    assert_int_equal(rhema_agent_list(&f->st, NULL, "a/b", 0, NULL, TIMEOUT_MS, &text, &len, err),
                     RHEMA_EINVAL);
    assert_non_null(strstr(err, "'capability'"));
}

static void pagination(void **state)
{
    struct fixture *f = *state;
    char id[16], got[1024], all[1024] = "";
    for (int i = 0; i < 7; i++) {
        snprintf(id, sizeof id, "ag%02d", i);
        json_decref(put_agent(f, id,
                              i % 2 ? "{" BASE ",\"status\":\"Busy\",\"capabilities\":[\"x\"]}"
                                    : "{" BASE ",\"capabilities\":[\"x\"]}",
                              1));
    }
    const char *filters[][2] = {{NULL, NULL}, {NULL, "x"}, {"Busy", NULL}, {"Busy", "x"}};
    const char *want[] = {"ag00,ag01,ag02,ag03,ag04,ag05,ag06",
                          "ag00,ag01,ag02,ag03,ag04,ag05,ag06", "ag01,ag03,ag05", "ag01,ag03,ag05"};
    for (int k = 0; k < 4; k++) {
        char *cursor = NULL;
        size_t at = 0;
        int pages = 0;
        all[0] = '\0';
        do {
            json_t *p = list(f, filters[k][0], filters[k][1], 2, cursor);
            free(cursor);
            cursor = NULL;
            assert_true(json_array_size(json_object_get(p, "items")) <= 2);
            ids_of(p, got, sizeof got);
            if (*got)
                at += (size_t)snprintf(all + at, sizeof all - at, "%s%s", at ? "," : "", got);
            if (json_is_string(json_object_get(p, "next_cursor")))
                cursor = strdup(S(p, "next_cursor"));
            json_decref(p);
            pages++;
        } while (cursor && pages < 10);
        assert_string_equal(all, want[k]);
        assert_int_equal(pages, k < 2 ? 4 : 2);
    }
}

static void heartbeat_and_online(void **state)
{
    struct fixture *f = *state;
    char err[RHEMA_ERRMSG_MAX];
    json_t *a = put_agent(f, "a1", "{" BASE ",\"last_heartbeat\":\"2020-01-01T00:00:00Z\"}", 1);
    assert_false(json_is_true(json_object_get(a, "is_online"))); /* stale heartbeat */
    assert_string_equal(S(a, "last_heartbeat"), "2020-01-01T00:00:00.000Z");
    json_decref(a);
    a = get_agent(f, "a1", (uint64_t)1 << 50); /* a timeout longer than the age */
    assert_true(json_is_true(json_object_get(a, "is_online")));
    json_decref(a);
    json_t *s = stats(f, TIMEOUT_MS);
    assert_int_equal(json_integer_value(json_object_get(s, "online_agents")), 0);
    json_decref(s);

    a = heartbeat(f, "a1", NULL);
    assert_true(json_is_true(json_object_get(a, "is_online")));
    assert_string_not_equal(S(a, "last_heartbeat"), "2020-01-01T00:00:00.000Z");
    json_decref(a);
    s = stats(f, TIMEOUT_MS);
    assert_int_equal(json_integer_value(json_object_get(s, "online_agents")), 1);
    json_decref(s);
    /* the heartbeat index holds one entry per online agent, not one per heartbeat */
    json_decref(heartbeat(f, "a1", NULL));
    json_decref(heartbeat(f, "a1", NULL));
    assert_int_equal(ns_count(f, "agents.heartbeat"), 1);

    /* an explicit is_online=false: offline whatever the heartbeat */
    a = put_agent(f, "a1", "{" BASE ",\"is_online\":false}", 0);
    assert_false(json_is_true(json_object_get(a, "is_online")));
    json_decref(a);
    assert_int_equal(ns_count(f, "agents.heartbeat"), 0);
    s = stats(f, TIMEOUT_MS);
    assert_int_equal(json_integer_value(json_object_get(s, "online_agents")), 0);
    json_decref(s);
    a = heartbeat(f, "a1", NULL);
    assert_true(json_is_true(json_object_get(a, "is_online")));
    json_decref(a);

    struct rhema_record rec = {0};
    assert_int_equal(rhema_agent_heartbeat(&f->st, "ghost", NULL, 0, TIMEOUT_MS, &rec, err),
                     RHEMA_ENOTFOUND);
    assert_non_null(strstr(err, "ghost"));
}

static void stats_summary(void **state)
{
    struct fixture *f = *state;
    char err[RHEMA_ERRMSG_MAX];
    json_t *s = stats(f, TIMEOUT_MS);
    assert_int_equal(json_integer_value(json_object_get(s, "total_agents")), 0);
    assert_true(json_number_value(json_object_get(s, "avg_success_rate")) == 0.0);
    json_decref(s);
    json_decref(put_agent(f, "a",
                          "{" BASE ",\"performance_metrics\":{\"tasks_completed\":10,"
                          "\"tasks_failed\":2,\"success_rate\":0.8,"
                          "\"collaboration_score\":0.5,\"avg_response_time_ms\":100}}",
                          1));
    json_decref(put_agent(f, "b",
                          "{" BASE ",\"status\":\"Busy\",\"performance_metrics\":{"
                          "\"tasks_completed\":5,\"success_rate\":0.6,"
                          "\"collaboration_score\":0.25,\"avg_response_time_ms\":300}}",
                          1));
    json_decref(put_agent(f, "c", "{" BASE ",\"status\":\"Busy\",\"is_online\":false}", 1));
    s = stats(f, TIMEOUT_MS);
    json_t *bs = json_object_get(s, "by_status");
    assert_int_equal(json_integer_value(json_object_get(s, "total_agents")), 3);
    assert_int_equal(json_integer_value(json_object_get(s, "online_agents")), 2);
    assert_int_equal(json_integer_value(json_object_get(bs, "Idle")), 1);
    assert_int_equal(json_integer_value(json_object_get(bs, "Busy")), 2);
    assert_int_equal(json_integer_value(json_object_get(bs, "Failed")), 0);
    assert_int_equal(json_object_size(bs), 7);
    assert_int_equal(json_integer_value(json_object_get(s, "tasks_completed")), 15);
    assert_int_equal(json_integer_value(json_object_get(s, "tasks_failed")), 2);
    assert_float_equal(json_number_value(json_object_get(s, "avg_success_rate")), 1.4 / 3, 1e-9);
    assert_float_equal(json_number_value(json_object_get(s, "avg_collaboration_score")), 0.75 / 3,
                       1e-9);
    assert_float_equal(json_number_value(json_object_get(s, "avg_response_time_ms")), 400.0 / 3,
                       1e-9);
    assert_int_equal(json_integer_value(json_object_get(s, "heartbeat_timeout_seconds")), 60);
    json_decref(s);

    /* an update replaces the agent's share; a delete removes it */
    json_decref(put_agent(f, "a",
                          "{" BASE ",\"status\":\"Failed\",\"performance_metrics\":{"
                          "\"tasks_completed\":11,\"tasks_failed\":3,\"success_rate\":1}}",
                          0));
    assert_int_equal(rhema_agent_delete(&f->st, "b", 0, err), 0);
    s = stats(f, TIMEOUT_MS);
    bs = json_object_get(s, "by_status");
    assert_int_equal(json_integer_value(json_object_get(s, "total_agents")), 2);
    assert_int_equal(json_integer_value(json_object_get(s, "online_agents")), 1);
    assert_int_equal(json_integer_value(json_object_get(bs, "Busy")), 1);
    assert_int_equal(json_integer_value(json_object_get(bs, "Failed")), 1);
    assert_int_equal(json_integer_value(json_object_get(bs, "Idle")), 0);
    assert_int_equal(json_integer_value(json_object_get(s, "tasks_completed")), 11);
    assert_int_equal(json_integer_value(json_object_get(s, "tasks_failed")), 3);
    assert_float_equal(json_number_value(json_object_get(s, "avg_success_rate")), 0.5, 1e-9);
    assert_float_equal(json_number_value(json_object_get(s, "avg_response_time_ms")), 0, 1e-9);
    json_decref(s);

    /* heartbeats without changes leave the summary alone (no contention on it) */
    struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
    assert_int_equal(f->vt->get(f->conn, "agents.summary", "all", &v), 0);
    uint64_t sv = v.version;
    json_decref(heartbeat(f, "a", NULL));
    assert_int_equal(f->vt->get(f->conn, "agents.summary", "all", &v), 0);
    assert_int_equal(v.version, sv);
    json_decref(heartbeat(f, "a", "{\"status\":\"Idle\"}"));
    assert_int_equal(f->vt->get(f->conn, "agents.summary", "all", &v), 0);
    assert_true(v.version > sv);

    assert_int_equal(rhema_agent_delete(&f->st, "a", 0, err), 0);
    assert_int_equal(rhema_agent_delete(&f->st, "c", 0, err), 0);
    s = stats(f, TIMEOUT_MS);
    assert_int_equal(json_integer_value(json_object_get(s, "total_agents")), 0);
    assert_int_equal(json_integer_value(json_object_get(s, "online_agents")), 0);
    assert_int_equal(json_integer_value(json_object_get(s, "tasks_completed")), 0);
    assert_true(json_number_value(json_object_get(s, "avg_success_rate")) == 0.0);
    json_decref(s);
    assert_int_equal(ns_count(f, "agents"), 0);
}

/* ---- configurations ---- */

static int put_config(struct fixture *f, const char *name, const char *body, uint64_t if_match,
                      struct rhema_record *rec, int *created, char *err)
{
    json_t *in = J(body), *c = NULL;
    int rc = rhema_configuration_validate(in, name, &c, err);
    json_decref(in);
    if (rc)
        return rc;
    rc = rhema_configuration_put(&f->st, name, c, if_match, rec, created, err);
    json_decref(c);
    return rc;
}

static void configuration_history_and_if_match(void **state)
{
    struct fixture *f = *state;
    char err[RHEMA_ERRMSG_MAX];
    struct rhema_record rec = {0};
    int created = -1;
    json_t *in = J("{\"description\":\"x\"}"), *out = NULL;
    must_name(rhema_configuration_validate(in, "c", &out, err), err, "config_data", "no data");
    json_decref(in);
    in = J("{\"config_data\":[1]}");
    must_name(rhema_configuration_validate(in, "c", &out, err), err, "config_data", "array");
    json_decref(in);
    in = J("{\"config_data\":{},\"name\":\"other\"}");
    must_name(rhema_configuration_validate(in, "c", &out, err), err, "name", "name");
    json_decref(in);
    in = J("{\"config_data\":{},\"description\":5}");
    must_name(rhema_configuration_validate(in, "c", &out, err), err, "description", "descr");
    json_decref(in);
    in = J("{\"config_data\":{},\"extra\":5}");
    must_name(rhema_configuration_validate(in, "c", &out, err), err, "extra", "extra");
    json_decref(in);
    assert_null(out);

    assert_int_equal(put_config(f, "svc", "{\"config_data\":{\"a\":1},\"description\":\"first\"}",
                                RHEMA_VERSION_ABSENT, &rec, &created, err),
                     0);
    assert_int_equal(created, 1);
    assert_int_equal(rec.version, 1);
    json_t *v1 = Jn(rec.json, rec.len);
    rhema_record_release(&rec);
    assert_int_equal(json_integer_value(json_object_get(v1, "version")), 1);
    assert_string_equal(S(v1, "name"), "svc");
    assert_int_equal(put_config(f, "svc", "{\"config_data\":{\"a\":2}}", RHEMA_VERSION_ABSENT, &rec,
                                &created, err),
                     RHEMA_EPRECONDITION);
    assert_int_equal(
        put_config(f, "svc", "{\"config_data\":{\"a\":2},\"version\":77}", 0, &rec, &created, err),
        0);
    assert_int_equal(created, 0);
    assert_int_equal(rec.version, 2);
    json_t *v2 = Jn(rec.json, rec.len);
    rhema_record_release(&rec);
    assert_true(json_is_null(json_object_get(v2, "description")));
    assert_string_equal(S(v2, "created_at"), S(v1, "created_at"));
    /* If-Match names the configuration version */
    assert_int_equal(put_config(f, "svc", "{\"config_data\":{\"a\":3}}", 1, &rec, &created, err),
                     RHEMA_EPRECONDITION);
    assert_non_null(strstr(err, "svc"));
    assert_int_equal(put_config(f, "new", "{\"config_data\":{}}", 1, &rec, &created, err),
                     RHEMA_EPRECONDITION);
    assert_int_equal(put_config(f, "svc", "{\"config_data\":{\"a\":3}}", 2, &rec, &created, err),
                     0);
    assert_int_equal(rec.version, 3);
    rhema_record_release(&rec);

    /* latest and history */
    assert_int_equal(rhema_configuration_get(&f->st, "svc", 0, &rec, err), 0);
    json_t *l = Jn(rec.json, rec.len);
    assert_int_equal(rec.version, 3);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(l, "config_data"), "a")),
                     3);
    rhema_record_release(&rec);
    json_decref(l);
    assert_int_equal(rhema_configuration_get(&f->st, "svc", 1, &rec, err), 0);
    l = Jn(rec.json, rec.len);
    assert_true(json_equal(l, v1));
    assert_int_equal(rec.version, 1);
    rhema_record_release(&rec);
    json_decref(l);
    assert_int_equal(rhema_configuration_get(&f->st, "svc", 9, &rec, err), RHEMA_ENOTFOUND);
    assert_non_null(strstr(err, "no version 9"));
    assert_int_equal(rhema_configuration_get(&f->st, "nope", 0, &rec, err), RHEMA_ENOTFOUND);
    assert_int_equal(rhema_configuration_get(&f->st, "nope", 1, &rec, err), RHEMA_ENOTFOUND);

    char *text = NULL;
    size_t len;
    assert_int_equal(rhema_configuration_versions(&f->st, "svc", 2, NULL, &text, &len, err), 0);
    json_t *p = Jn(text, len);
    free(text);
    assert_int_equal(json_array_size(json_object_get(p, "items")), 2);
    assert_string_equal(S(p, "next_cursor"), "2");
    json_decref(p);
    assert_int_equal(rhema_configuration_versions(&f->st, "svc", 2, "2", &text, &len, err), 0);
    p = Jn(text, len);
    free(text);
    assert_int_equal(json_array_size(json_object_get(p, "items")), 1);
    assert_int_equal(json_integer_value(json_object_get(
                         json_array_get(json_object_get(p, "items"), 0), "version")),
                     3);
    assert_true(json_is_null(json_object_get(p, "next_cursor")));
    json_decref(p);
    assert_int_equal(rhema_configuration_versions(&f->st, "nope", 0, NULL, &text, &len, err),
                     RHEMA_ENOTFOUND);
    /* "svc" and "svc2" do not mix */
    assert_int_equal(put_config(f, "svc2", "{\"config_data\":{}}", 0, &rec, &created, err), 0);
    assert_int_equal(rec.version, 1);
    rhema_record_release(&rec);
    assert_int_equal(rhema_configuration_versions(&f->st, "svc", 0, NULL, &text, &len, err), 0);
    p = Jn(text, len);
    free(text);
    assert_int_equal(json_array_size(json_object_get(p, "items")), 3);
    json_decref(p);
    json_decref(v1);
    json_decref(v2);
}

/* ---- system metrics ---- */

#define SYS                                                                                        \
    "\"cpu_usage_percent\":12.5,\"memory_usage_percent\":40,\"active_agents\":3,"                  \
    "\"total_sessions\":9,\"messages_per_second\":1.5,\"error_rate\":0.01"

static void metrics_invalid(const char *body, const char *field)
{
    char err[RHEMA_ERRMSG_MAX];
    json_t *in = J(body), *out = NULL;
    int rc = rhema_system_metrics_validate(in, &out, err);
    json_decref(in);
    assert_null(out);
    must_name(rc, err, field, body);
}

static void system_metrics(void **state)
{
    struct fixture *f = *state;
    char err[RHEMA_ERRMSG_MAX];
    struct rhema_record rec = {0};
    int created = -1;
    metrics_invalid("{" SYS ",\"cpu_usage_percent\":101}", "cpu_usage_percent");
    metrics_invalid("{\"cpu_usage_percent\":1,\"memory_usage_percent\":1,\"active_agents\":1,"
                    "\"total_sessions\":1,\"messages_per_second\":1}",
                    "error_rate");
    metrics_invalid("{" SYS ",\"memory_usage_percent\":-1}", "memory_usage_percent");
    metrics_invalid("{" SYS ",\"active_agents\":1.5}", "active_agents");
    metrics_invalid("{" SYS ",\"total_sessions\":-2}", "total_sessions");
    metrics_invalid("{" SYS ",\"error_rate\":2}", "error_rate");
    metrics_invalid("{" SYS ",\"messages_per_second\":\"fast\"}", "messages_per_second");
    metrics_invalid("{" SYS ",\"timestamp\":\"today\"}", "timestamp");
    metrics_invalid("{" SYS ",\"custom\":{\"queue\":\"deep\"}}", "custom.queue");
    metrics_invalid("{" SYS ",\"custom\":[]}", "custom");
    metrics_invalid("{" SYS ",\"gpu\":1}", "gpu");

    assert_int_equal(rhema_system_metrics_get(&f->st, &rec, err), RHEMA_ENOTFOUND);
    json_t *in = J("{" SYS ",\"custom\":{\"queue_depth\":4}}"), *m = NULL;
    assert_int_equal(rhema_system_metrics_validate(in, &m, err), 0);
    json_decref(in);
    assert_int_equal(rhema_system_metrics_put(&f->st, m, 0, &rec, &created, err), 0);
    assert_int_equal(created, 1);
    uint64_t v = rec.version;
    json_t *r = Jn(rec.json, rec.len);
    rhema_record_release(&rec);
    assert_int_equal(json_integer_value(json_object_get(r, "version")), (json_int_t)v);
    assert_non_null(S(r, "timestamp"));
    assert_non_null(S(r, "created_at"));
    assert_float_equal(json_number_value(json_object_get(r, "cpu_usage_percent")), 12.5, 1e-12);
    json_decref(r);
    assert_int_equal(rhema_system_metrics_put(&f->st, m, v + 5, &rec, &created, err),
                     RHEMA_EPRECONDITION);
    assert_int_equal(rhema_system_metrics_put(&f->st, m, RHEMA_VERSION_ABSENT, &rec, &created, err),
                     RHEMA_EPRECONDITION);
    assert_int_equal(rhema_system_metrics_put(&f->st, m, v, &rec, &created, err), 0);
    assert_int_equal(created, 0);
    assert_true(rec.version > v);
    rhema_record_release(&rec);
    assert_int_equal(rhema_system_metrics_get(&f->st, &rec, err), 0);
    r = Jn(rec.json, rec.len);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(r, "custom"), "queue_depth")), 4);
    rhema_record_release(&rec);
    json_decref(r);
    json_decref(m);
}


/* ---- limits and timeouts (issue 12 item 4) ---- */

/* The last transition of agent id: {seq, from_status, to_status, timestamp, reason}. */
static json_t *last_transition(struct fixture *f, const char *id)
{
    json_t *t = transitions(f, id, 0, NULL), *items = json_object_get(t, "items");
    json_t *last = json_incref(json_array_get(items, json_array_size(items) - 1));
    json_decref(t);
    assert_non_null(last);
    return last;
}

/*
 * max_agents: a create beyond it is refused with RHEMA_EAGENT_LIMIT and
 * writes nothing; an update of a registered agent never is; a delete frees
 * a slot; Offline and Failed agents still count (every registered agent).
 */
static void agent_limit(void **state)
{
    struct fixture *f = *state;
    char err[RHEMA_ERRMSG_MAX];
    struct rhema_record rec = {0};
    int created = -1;
    f->st.max_agents = 2;
    json_decref(put_agent(f, "a1", "{" BASE "}", 1));
    json_decref(put_agent(f, "a2", "{" BASE ",\"status\":\"Offline\"}", 1));

    json_t *in = J("{" BASE "}"), *a = NULL;
    assert_int_equal(rhema_agent_validate(in, "a3", &a, err), 0);
    assert_int_equal(rhema_agent_put(&f->st, "a3", a, 0, TIMEOUT_MS, &rec, &created, err),
                     RHEMA_EAGENT_LIMIT);
    assert_non_null(strstr(err, "max_concurrent_agents"));
    assert_non_null(strstr(err, "2 agents are registered"));
    assert_int_equal(created, -1);
    assert_null(rec.json);
    assert_int_equal(rhema_agent_get(&f->st, "a3", TIMEOUT_MS, &rec, err), RHEMA_ENOTFOUND);
    assert_int_equal(ns_count(f, "agents"), 2);
    assert_int_equal(ns_count(f, "agents.status"), 2);
    json_t *s = stats(f, TIMEOUT_MS);
    assert_int_equal(json_integer_value(json_object_get(s, "total_agents")), 2);
    json_decref(s);

    /* updates are never refused */
    json_t *u = put_agent(f, "a1", "{" BASE ",\"status\":\"Busy\",\"current_task_id\":\"t\"}", 0);
    assert_string_equal(S(u, "status"), "Busy");
    json_decref(u);
    json_decref(heartbeat(f, "a2", "{\"status\":\"Idle\"}"));

    /* a delete frees a slot */
    assert_int_equal(rhema_agent_delete(&f->st, "a2", 0, err), 0);
    assert_int_equal(rhema_agent_put(&f->st, "a3", a, 0, TIMEOUT_MS, &rec, &created, err), 0);
    assert_int_equal(created, 1);
    rhema_record_release(&rec);
    json_decref(a);
    json_decref(in);
    /* and the limit holds again */
    in = J("{" BASE "}");
    assert_int_equal(rhema_agent_validate(in, "a4", &a, err), 0);
    assert_int_equal(rhema_agent_put(&f->st, "a4", a, 0, TIMEOUT_MS, &rec, &created, err),
                     RHEMA_EAGENT_LIMIT);
    json_decref(a);
    json_decref(in);
    /* 0: no limit */
    f->st.max_agents = 0;
    json_decref(put_agent(f, "a4", "{" BASE "}", 1));
}

/* task_started_at: set when current_task_id changes, kept while it stays, null without a task. */
static void task_started_at_follows_the_task(void **state)
{
    struct fixture *f = *state;
    json_t *a = put_agent(f, "a1", "{" BASE "}", 1);
    assert_true(json_is_null(json_object_get(a, "task_started_at")));
    json_decref(a);
    assert_int_equal(ns_count(f, "agents.task"), 0);

    a = put_agent(f, "a1", "{" BASE ",\"status\":\"Busy\",\"current_task_id\":\"t1\"}", 0);
    char first[64];
    assert_non_null(S(a, "task_started_at"));
    snprintf(first, sizeof first, "%s", S(a, "task_started_at"));
    json_decref(a);
    assert_int_equal(ns_count(f, "agents.task"), 1);
    /* the same task: kept, by a heartbeat and by a PUT that echoes a different value */
    a = heartbeat(f, "a1", "{\"status\":\"Working\"}");
    assert_string_equal(S(a, "task_started_at"), first);
    json_decref(a);
    a = put_agent(f, "a1",
                  "{" BASE ",\"status\":\"Working\",\"current_task_id\":\"t1\","
                  "\"task_started_at\":\"2001-01-01T00:00:00Z\"}",
                  0);
    assert_string_equal(S(a, "task_started_at"), first);
    json_decref(a);
    assert_int_equal(ns_count(f, "agents.task"), 1);
    /* Blocked on it: the task keeps its start but is not timed */
    a = heartbeat(f, "a1", "{\"status\":\"Blocked\"}");
    assert_string_equal(S(a, "task_started_at"), first);
    json_decref(a);
    assert_int_equal(ns_count(f, "agents.task"), 0);
    /* no task: null */
    a = heartbeat(f, "a1", "{\"status\":\"Idle\",\"current_task_id\":null}");
    assert_true(json_is_null(json_object_get(a, "task_started_at")));
    json_decref(a);
    assert_int_equal(ns_count(f, "agents.task"), 0);
}

/*
 * The sweep: a stale heartbeat -> Offline (stored is_online false, a
 * transition "heartbeat timeout"); Busy/Working on one task too long ->
 * Failed ("task timeout after N s"); a second sweep changes nothing; the
 * summary and the indexes follow.  Time passes by giving the sweep a later
 * now_ms.
 */
static void sweep_timeouts(void **state)
{
    struct fixture *f = *state;
    char err[RHEMA_ERRMSG_MAX];
    size_t off = 9, failed = 9;
    uint64_t now = rhema_realtime_ms();
    /* a1 heartbeats now; a2 heartbeats "in the future", so only its task times out */
    json_decref(put_agent(f, "a1", "{" BASE ",\"status\":\"Busy\",\"current_task_id\":\"t1\"}", 1));
    json_decref(put_agent(f, "a2",
                          "{" BASE ",\"status\":\"Working\",\"current_task_id\":\"t2\","
                          "\"last_heartbeat\":\"2999-01-01T00:00:00Z\"}",
                          1));
    json_decref(put_agent(f, "a3", "{" BASE ",\"status\":\"Idle\"}", 1));

    /* nothing is due yet */
    assert_int_equal(rhema_agent_sweep(&f->st, 60000, now + 1000, 16, &off, &failed, err), 0);
    assert_int_equal(off, 0);
    assert_int_equal(failed, 0);

    /* two minutes on, with a 60 s timeout */
    assert_int_equal(rhema_agent_sweep(&f->st, 60000, now + 125000, 16, &off, &failed, err), 0);
    assert_int_equal(off, 2); /* a1 and a3 */
    assert_int_equal(failed, 1);
    json_t *a = get_agent(f, "a1", TIMEOUT_MS);
    assert_string_equal(S(a, "status"), "Offline");
    assert_false(json_is_true(json_object_get(a, "is_online")));
    json_decref(a);
    json_t *t = last_transition(f, "a1");
    assert_string_equal(S(t, "from_status"), "Busy");
    assert_string_equal(S(t, "to_status"), "Offline");
    assert_string_equal(S(t, "reason"), "heartbeat timeout");
    json_decref(t);
    t = last_transition(f, "a3");
    assert_string_equal(S(t, "from_status"), "Idle");
    assert_string_equal(S(t, "to_status"), "Offline");
    json_decref(t);
    a = get_agent(f, "a2", TIMEOUT_MS);
    assert_string_equal(S(a, "status"), "Failed");
    assert_string_equal(S(a, "current_task_id"), "t2"); /* which task failed */
    assert_true(json_is_true(json_object_get(a, "is_online")));
    json_decref(a);
    t = last_transition(f, "a2");
    assert_string_equal(S(t, "from_status"), "Working");
    assert_string_equal(S(t, "to_status"), "Failed");
    assert_non_null(strstr(S(t, "reason"), "task timeout after 12"));
    json_decref(t);
    /* indexes and summary */
    assert_int_equal(ns_count(f, "agents.heartbeat"), 1); /* a2 */
    assert_int_equal(ns_count(f, "agents.task"), 0);
    expect_list(f, "Offline", NULL, "a1,a3");
    expect_list(f, "Failed", NULL, "a2");
    json_t *s = stats(f, TIMEOUT_MS);
    json_t *bs = json_object_get(s, "by_status");
    assert_int_equal(json_integer_value(json_object_get(bs, "Offline")), 2);
    assert_int_equal(json_integer_value(json_object_get(bs, "Failed")), 1);
    assert_int_equal(json_integer_value(json_object_get(bs, "Busy")), 0);
    assert_int_equal(json_integer_value(json_object_get(bs, "Working")), 0);
    json_decref(s);

    /* again: nothing left to do */
    assert_int_equal(rhema_agent_sweep(&f->st, 60000, now + 130000, 16, &off, &failed, err), 0);
    assert_int_equal(off, 0);
    assert_int_equal(failed, 0);

    /* a heartbeat brings a1 back online; its status is the agent's to say */
    a = heartbeat(f, "a1", "{\"status\":\"Idle\"}");
    assert_true(json_is_true(json_object_get(a, "is_online")));
    json_decref(a);
}

/* At most max per kind and pass: the rest is left to the next pass. */
static void sweep_is_bounded(void **state)
{
    struct fixture *f = *state;
    char err[RHEMA_ERRMSG_MAX], id[16];
    size_t off = 0, failed = 0;
    uint64_t now = rhema_realtime_ms();
    for (int i = 0; i < 5; i++) {
        snprintf(id, sizeof id, "a%d", i);
        json_decref(put_agent(f, id, "{" BASE "}", 1));
    }
    assert_int_equal(rhema_agent_sweep(&f->st, 1000, now + 10000, 3, &off, &failed, err), 0);
    assert_int_equal(off, 3);
    assert_int_equal(rhema_agent_sweep(&f->st, 1000, now + 10000, 3, &off, &failed, err), 0);
    assert_int_equal(off, 2);
    assert_int_equal(ns_count(f, "agents.heartbeat"), 0);
}

/*
 * rhema_agent_transition is a compare-and-set on the version the caller
 * decided on: a write in between (another node's sweep, the agent's own
 * heartbeat) makes it fail with RHEMA_EPRECONDITION and change nothing.
 */
static void transition_is_compare_and_set(void **state)
{
    struct fixture *f = *state;
    char err[RHEMA_ERRMSG_MAX];
    json_t *a = put_agent(f, "a1", "{" BASE ",\"status\":\"Busy\",\"current_task_id\":\"t\"}", 1);
    uint64_t v = (uint64_t)json_integer_value(json_object_get(a, "version"));
    json_decref(a);
    json_decref(heartbeat(f, "a1", NULL));
    assert_int_equal(rhema_agent_transition(&f->st, "a1", v, "Failed", 0, "x", err),
                     RHEMA_EPRECONDITION);
    a = get_agent(f, "a1", TIMEOUT_MS);
    assert_string_equal(S(a, "status"), "Busy");
    v = (uint64_t)json_integer_value(json_object_get(a, "version"));
    json_decref(a);
    assert_int_equal(rhema_agent_transition(&f->st, "a1", v, "Sleeping", 0, "x", err),
                     RHEMA_EINVAL);
    assert_int_equal(rhema_agent_transition(&f->st, "ghost", 0, "Failed", 0, "x", err),
                     RHEMA_ENOTFOUND);
    assert_int_equal(rhema_agent_transition(&f->st, "a1", v, "Failed", 0, "why", err), 0);
    json_t *t = last_transition(f, "a1");
    assert_string_equal(S(t, "to_status"), "Failed");
    assert_string_equal(S(t, "reason"), "why");
    json_decref(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(agent_validation_names_the_field),
        cmocka_unit_test(agent_validation_defaults),
        cmocka_unit_test_setup_teardown(put_get_and_metadata, setup, teardown),
        cmocka_unit_test_setup_teardown(if_match_on_agents, setup, teardown),
        cmocka_unit_test_setup_teardown(transitions_only_on_real_changes, setup, teardown),
        cmocka_unit_test_setup_teardown(indexes_follow_changes_and_deletes, setup, teardown),
        cmocka_unit_test_setup_teardown(pagination, setup, teardown),
        cmocka_unit_test_setup_teardown(heartbeat_and_online, setup, teardown),
        cmocka_unit_test_setup_teardown(stats_summary, setup, teardown),
        cmocka_unit_test_setup_teardown(configuration_history_and_if_match, setup, teardown),
        cmocka_unit_test_setup_teardown(system_metrics, setup, teardown),
        cmocka_unit_test_setup_teardown(agent_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(task_started_at_follows_the_task, setup, teardown),
        cmocka_unit_test_setup_teardown(sweep_timeouts, setup, teardown),
        cmocka_unit_test_setup_teardown(sweep_is_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(transition_is_compare_and_set, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
