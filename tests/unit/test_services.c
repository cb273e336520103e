/*
 * test_services -- the service registry without sockets: validation naming
 * fields, the store and its name index (on the memory plugin loaded through
 * the real loader), the snapshot and balancer host side (selection among
 * healthy instances only, loads kept across updates), the checker's state
 * machine, and feedback accounting.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cluster.h"
#include "config.h"
#include "plugin.h"
#include "services.h"
#include "session.h"
#include "util.h"

/* services.c asks the cluster module who leads; no cluster here. */
int rhema_cluster_is_leader(const struct rhema_cluster *c)
{
    (void)c;
    return 1;
}

struct fixture {
    struct rhema_config cfg;
    struct rhema_plugin_registry *reg;
    const struct rhema_storage_plugin *vt;
    rhema_storage_instance *inst;
    rhema_storage_conn *conn;
    struct rhema_store st;
    struct rhema_services *s;
    struct rhema_check_defaults d;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    const struct rhema_loaded_plugin *p;
    char *err = NULL;
    const char *dir = getenv("RHEMA_PLUGIN_DIR");
    if (!dir)
        dir = "plugins/.libs";
    if (rhema_config_load(&f->cfg, NULL, NULL, 0, dir, &err) || rhema_plugins_new(&f->reg) ||
        rhema_plugin_load(f->reg, "memory", dir, RHEMA_KIND_STORAGE, &p, &err)) {
        fprintf(stderr, "setup: %s\n", err ? err : "?");
        return -1;
    }
    f->vt = &p->vt.storage;
    if (f->vt->open(rhema_host_get(), NULL, &f->inst, &err) ||
        f->vt->connect(f->inst, &f->conn, &err))
        return -1;
    rhema_store_init(&f->st, f->vt, f->conn);
    if (rhema_services_new(&f->cfg, f->reg, &f->s, &err)) {
        fprintf(stderr, "setup: %s\n", err ? err : "?");
        return -1;
    }
    rhema_check_defaults_get(&f->cfg, &f->d);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    rhema_services_free(f->s);
    rhema_store_release(&f->st);
    f->vt->disconnect(f->conn);
    f->vt->close(f->inst);
    rhema_plugins_free(f->reg);
    rhema_config_release(&f->cfg);
    free(f);
    return 0;
}

static int validate(struct fixture *f, const char *text, json_t **out, char *err)
{
    json_t *body = json_loads(text, 0, NULL);
    assert_non_null(body);
    int rc = rhema_service_validate(body, "svc-1", &f->d, f->s, out, err);
    json_decref(body);
    return rc;
}

static void test_validation_names_fields(void **state)
{
    struct fixture *f = *state;
    static const struct {
        const char *body, *field;
    } bad[] = {
        {"{\"address\":\"h:1\"}", "'name'"},
        {"{\"name\":\"a b\",\"address\":\"h:1\"}", "'name'"},
        {"{\"name\":\"a\",\"address\":\"h\"}", "'address'"},
        {"{\"name\":\"a\",\"address\":\"h:0\"}", "'address'"},
        {"{\"name\":\"a\",\"address\":\"h:1\",\"weight\":-1}", "'weight'"},
        {"{\"name\":\"a\",\"address\":\"h:1\",\"metadata\":[]}", "'metadata'"},
        {"{\"name\":\"a\",\"address\":\"h:1\",\"check\":{\"type\":\"http\"}}", "'check.target'"},
        {"{\"name\":\"a\",\"address\":\"h:1\",\"check\":{\"type\":\"ttl\",\"target\":\"h:1\"}}",
         "'check.target'"},
        {"{\"name\":\"a\",\"address\":\"h:1\",\"check\":{\"type\":\"tcp\",\"target\":\"h:1\","
         "\"interval_seconds\":2,\"timeout_seconds\":5}}",
         "'check.timeout_seconds'"},
        {"{\"name\":\"a\",\"address\":\"h:1\",\"strategy\":\"fastest\"}", "'strategy'"},
        {"{\"name\":\"a\",\"address\":\"h:1\",\"service_id\":\"svc-2\"}", "'service_id'"},
        {"{\"name\":\"a\",\"address\":\"h:1\",\"colour\":\"red\"}", "'colour'"},
    };
    char err[RHEMA_ERRMSG_MAX];
    json_t *out = NULL;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = '\0';
        assert_int_equal(validate(f, bad[i].body, &out, err), RHEMA_EINVAL);
        if (!strstr(err, bad[i].field)) {
            fprintf(stderr, "%s -> %s\n", bad[i].body, err);
            fail();
        }
    }
    assert_int_equal(validate(f,
                              "{\"name\":\"a\",\"address\":\"[::1]:80\",\"health_status\":\"x\","
                              "\"check\":{\"type\":\"http\",\"target\":\"http://127.0.0.1:1/h\"},"
                              "\"strategy\":\"ip_hash\"}",
                              &out, err),
                     0);
    assert_int_equal(json_integer_value(json_object_get(out, "weight")), 1);
    json_t *c = json_object_get(out, "check");
    assert_int_equal(json_integer_value(json_object_get(c, "interval_seconds")), 10);
    assert_int_equal(json_integer_value(json_object_get(c, "timeout_seconds")), 5);
    assert_int_equal(json_integer_value(json_object_get(c, "failure_threshold")), 3);
    assert_int_equal(json_integer_value(json_object_get(c, "success_threshold")), 2);
    assert_null(json_object_get(out, "health_status"));
    json_decref(out);
}

static int index_has(struct fixture *f, const char *key)
{
    struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
    return f->vt->get(f->conn, RHEMA_SERVICES_NAME_NS, key, &v) == 0;
}

static void put_svc(struct fixture *f, const char *id, const char *text, int *created,
                    char old_name[RHEMA_ID_MAX + 1])
{
    char err[RHEMA_ERRMSG_MAX];
    json_t *body = json_loads(text, 0, NULL), *svc = NULL;
    struct rhema_record rec = {0};
    assert_int_equal(rhema_service_validate(body, id, &f->d, f->s, &svc, err), 0);
    assert_int_equal(rhema_service_put(&f->st, id, svc, 0, 1, &rec, created, old_name, err), 0);
    rhema_record_release(&rec);
    json_decref(svc);
    json_decref(body);
}

static void test_index_consistency(void **state)
{
    struct fixture *f = *state;
    char err[RHEMA_ERRMSG_MAX], old[RHEMA_ID_MAX + 1], name[RHEMA_ID_MAX + 1];
    int created;
    put_svc(f, "i-1", "{\"name\":\"alpha\",\"address\":\"h:1\"}", &created, old);
    assert_true(created);
    assert_true(index_has(f, "alpha/i-1"));
    put_svc(f, "i-1", "{\"name\":\"beta\",\"address\":\"h:1\"}", &created, old);
    assert_false(created);
    assert_string_equal(old, "alpha");
    assert_false(index_has(f, "alpha/i-1"));
    assert_true(index_has(f, "beta/i-1"));
    char *text = NULL;
    size_t len;
    assert_int_equal(rhema_service_list(&f->st, "alpha", 10, NULL, 1, &text, &len, err), 0);
    assert_non_null(strstr(text, "\"items\":[]"));
    free(text);
    assert_int_equal(rhema_service_list(&f->st, "beta", 10, NULL, 1, &text, &len, err), 0);
    assert_non_null(strstr(text, "\"service_id\":\"i-1\""));
    free(text);
    assert_int_equal(rhema_service_delete(&f->st, "i-1", 0, name, err), 0);
    assert_string_equal(name, "beta");
    assert_false(index_has(f, "beta/i-1"));
    assert_int_equal(rhema_service_delete(&f->st, "i-1", 0, name, err), RHEMA_ENOTFOUND);
}

static void apply(struct fixture *f, const char *name, struct rhema_service_member *m, size_t n)
{
    char *err = NULL;
    assert_int_equal(rhema_services_apply(f->s, name, m, n, &err), 0);
    free(err);
}

static void test_selection_only_healthy(void **state)
{
    struct fixture *f = *state;
    struct rhema_service_member m[3] = {
        {.id = "a", .address = "h:1", .weight = 1, .healthy = 1},
        {.id = "b", .address = "h:2", .weight = 1, .healthy = 0},
        {.id = "c", .address = "h:3", .weight = 1, .healthy = 1},
    };
    struct rhema_selection sel;
    int seen_a = 0, seen_c = 0;
    assert_int_equal(rhema_services_select(f->s, "web", NULL, &sel), RHEMA_ENOTFOUND);
    apply(f, "web", m, 3);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(rhema_services_select(f->s, "web", NULL, &sel), 0);
        assert_string_not_equal(sel.service_id, "b");
        assert_string_equal(sel.strategy, "round_robin");
        seen_a += strcmp(sel.service_id, "a") == 0;
        seen_c += strcmp(sel.service_id, "c") == 0;
    }
    assert_int_equal(seen_a, 10);
    assert_int_equal(seen_c, 10);
    /* loads survive a health flap; inflight counted per select */
    unsigned inflight;
    assert_int_equal(rhema_services_load_get(f->s, "a", &inflight, NULL, NULL, NULL), 0);
    assert_int_equal(inflight, 10);
    m[0].healthy = 0;
    m[2].healthy = 0;
    apply(f, "web", m, 3);
    assert_int_equal(rhema_services_select(f->s, "web", NULL, &sel), RHEMA_EUNAVAIL);
    assert_int_equal(rhema_services_load_get(f->s, "a", &inflight, NULL, NULL, NULL), 0);
    assert_int_equal(inflight, 10);
    /* a per-service strategy */
    m[1].healthy = 1;
    m[1].strategy = "random";
    apply(f, "web", m, 3);
    assert_int_equal(rhema_services_select(f->s, "web", NULL, &sel), 0);
    assert_string_equal(sel.service_id, "b");
    assert_string_equal(sel.strategy, "random");
    /* removing the group */
    apply(f, "web", NULL, 0);
    assert_int_equal(rhema_services_select(f->s, "web", NULL, &sel), RHEMA_ENOTFOUND);
}

static void test_refresh_name_from_store(void **state)
{
    struct fixture *f = *state;
    struct rhema_selection sel;
    int created;
    put_svc(f, "r-1", "{\"name\":\"r\",\"address\":\"h:1\"}", &created, NULL);
    put_svc(f, "r-2",
            "{\"name\":\"r\",\"address\":\"h:2\",\"check\":{\"type\":\"ttl\"}}", &created, NULL);
    assert_int_equal(rhema_services_refresh_name(f->s, &f->st, "r"), 0);
    for (int i = 0; i < 6; i++) { /* r-2 has a check and no result yet: Unknown, not selected */
        assert_int_equal(rhema_services_select(f->s, "r", NULL, &sel), 0);
        assert_string_equal(sel.service_id, "r-1");
    }
}

static void test_check_state_machine(void **state)
{
    struct rhema_check_state s = {0};
    (void)state;
    /* the first result decides at once */
    assert_int_equal(rhema_check_apply(&s, RHEMA_CHECK_PASSING, 3, 2, 100), 1);
    assert_int_equal(s.status, RHEMA_HEALTH_HEALTHY);
    /* failure_threshold consecutive failures */
    assert_int_equal(rhema_check_apply(&s, RHEMA_CHECK_CRITICAL, 3, 2, 200), 0);
    assert_int_equal(rhema_check_apply(&s, RHEMA_CHECK_CRITICAL, 3, 2, 300), 0);
    assert_int_equal(rhema_check_apply(&s, RHEMA_CHECK_PASSING, 3, 2, 400), 0); /* resets */
    assert_int_equal(rhema_check_apply(&s, RHEMA_CHECK_CRITICAL, 3, 2, 500), 0);
    assert_int_equal(rhema_check_apply(&s, RHEMA_CHECK_CRITICAL, 3, 2, 600), 0);
    assert_int_equal(s.status, RHEMA_HEALTH_HEALTHY);
    assert_int_equal(rhema_check_apply(&s, RHEMA_CHECK_CRITICAL, 3, 2, 700), 1);
    assert_int_equal(s.status, RHEMA_HEALTH_UNHEALTHY);
    assert_int_equal(s.critical_since_ms, 700);
    assert_int_equal(rhema_check_apply(&s, RHEMA_CHECK_CRITICAL, 3, 2, 800), 0);
    assert_int_equal(s.critical_since_ms, 700);
    /* success_threshold consecutive passes (a warning counts) */
    assert_int_equal(rhema_check_apply(&s, RHEMA_CHECK_WARNING, 3, 2, 900), 0);
    assert_int_equal(s.status, RHEMA_HEALTH_UNHEALTHY);
    assert_int_equal(rhema_check_apply(&s, RHEMA_CHECK_PASSING, 3, 2, 1000), 1);
    assert_int_equal(s.status, RHEMA_HEALTH_HEALTHY);
    assert_int_equal(s.critical_since_ms, 0);
    /* a first failure from Unknown */
    struct rhema_check_state u = {0};
    assert_int_equal(rhema_check_apply(&u, RHEMA_CHECK_CRITICAL, 5, 5, 1), 1);
    assert_int_equal(u.status, RHEMA_HEALTH_UNHEALTHY);
    /* HTTP and TTL verdicts */
    assert_int_equal(rhema_check_http_result(200), RHEMA_CHECK_PASSING);
    assert_int_equal(rhema_check_http_result(204), RHEMA_CHECK_PASSING);
    assert_int_equal(rhema_check_http_result(429), RHEMA_CHECK_WARNING);
    assert_int_equal(rhema_check_http_result(500), RHEMA_CHECK_CRITICAL);
    assert_int_equal(rhema_check_http_result(301), RHEMA_CHECK_CRITICAL);
    assert_int_equal(rhema_check_http_result(0), RHEMA_CHECK_CRITICAL);
    assert_true(rhema_check_ttl_ok(10000, 1, 1, 12000));
    assert_false(rhema_check_ttl_ok(10000, 1, 1, 12001));
}

static void test_feedback_accounting(void **state)
{
    struct fixture *f = *state;
    struct rhema_service_member m[2] = {
        {.id = "x", .address = "h:1", .weight = 1, .healthy = 1,
         .strategy = "least_response_time"},
        {.id = "y", .address = "h:2", .weight = 1, .healthy = 1},
    };
    struct rhema_selection sel;
    unsigned inflight;
    uint64_t ewma, samples, failures;
    apply(f, "fb", m, 2);
    assert_int_equal(rhema_services_select(f->s, "fb", NULL, &sel), 0);
    assert_int_equal(rhema_services_load_get(f->s, sel.service_id, &inflight, NULL, NULL, NULL),
                     0);
    assert_int_equal(inflight, 1);
    assert_int_equal(rhema_services_feedback(f->s, "x", 800, 1), 0);
    assert_int_equal(rhema_services_load_get(f->s, "x", &inflight, &ewma, &samples, &failures), 0);
    assert_int_equal(ewma, 800); /* the first sample sets it */
    assert_int_equal(samples, 1);
    assert_int_equal(failures, 0);
    assert_int_equal(rhema_services_feedback(f->s, "x", 0, 0), 0);
    assert_int_equal(rhema_services_load_get(f->s, "x", &inflight, &ewma, &samples, &failures), 0);
    assert_int_equal(ewma, 700); /* 800 + (0 - 800) / 8 */
    assert_int_equal(samples, 2);
    assert_int_equal(failures, 1);
    assert_int_equal(inflight, 0); /* never below zero */
    assert_int_equal(rhema_services_feedback(f->s, "y", 10, 1), 0);
    for (int i = 0; i < 4; i++) { /* the faster one wins with least_response_time */
        assert_int_equal(rhema_services_select(f->s, "fb", NULL, &sel), 0);
        assert_string_equal(sel.service_id, "y");
        assert_int_equal(rhema_services_feedback(f->s, "y", 10, 1), 0);
    }
    assert_int_equal(rhema_services_feedback(f->s, "nope", 1, 1), RHEMA_ENOTFOUND);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_validation_names_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_index_consistency, setup, teardown),
        cmocka_unit_test_setup_teardown(test_selection_only_healthy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refresh_name_from_store, setup, teardown),
        cmocka_unit_test_setup_teardown(test_check_state_machine, setup, teardown),
        cmocka_unit_test_setup_teardown(test_feedback_accounting, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
