/*
 * test_routes -- the route tables of core/api/ (routes.h): every route of
 * the daemon declares a method, a path template, a handler, a permission
 * and its effect, and the check that rhemad runs before it listens refuses
 * a route that lacks one of them.  The writes that DESIGN.md §7 fences are
 * declared as writes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "api/pipeline.h"
#include "api/routes.h"

static void h_dummy(struct rhema_req *r) { (void)r; }

static const struct rhema_route *find(unsigned method, const char *path)
{
    for (const struct rhema_route *const *t = rhema_api_routes; *t; t++)
        for (const struct rhema_route *rt = *t; rt->path; rt++)
            if (rt->method == method && strcmp(rt->path, path) == 0)
                return rt;
    return NULL;
}

static void test_daemon_tables_pass_the_check(void **state)
{
    (void)state;
    char *err = NULL;
    int rc = rhema_routes_check(rhema_api_routes, &err);
    if (rc)
        fail_msg("%s", err);
    for (const struct rhema_route *const *t = rhema_api_routes; *t; t++)
        assert_non_null((*t)[0].path); /* no module without a route */
}

/* Walk every route: what the check promises, asserted route by route. */
static void test_every_route_declares_everything(void **state)
{
    (void)state;
    for (const struct rhema_route *const *t = rhema_api_routes; *t; t++) {
        for (const struct rhema_route *rt = *t; rt->path; rt++) {
            assert_non_null(rt->handler);
            assert_non_null(rt->permission);
            assert_non_null(strchr(rt->permission, ':'));
            assert_true(rt->effect == RHEMA_READS || rt->effect == RHEMA_WRITES ||
                        rt->effect == RHEMA_WRITES_STORAGE);
            assert_true(rt->path[0] == '/');
            if (rt->method == RHEMA_M_GET)
                assert_int_equal(rt->effect, RHEMA_READS);
            if (rt->method == RHEMA_M_PUT || rt->method == RHEMA_M_DELETE)
                assert_int_not_equal(rt->effect, RHEMA_READS);
            /* a write needs a write permission, a read a read one */
            const char *verb = strchr(rt->permission, ':') + 1;
            if (rt->effect != RHEMA_READS)
                assert_true(strcmp(verb, "write") == 0 || strcmp(verb, "admin") == 0);
        }
    }
}

/* The writes DESIGN.md §7 fences: every data write of every area. */
static void test_data_writes_are_fenced(void **state)
{
    (void)state;
    static const struct {
        unsigned method;
        const char *path;
    } writes[] = {
        {RHEMA_M_PUT, "/v1/sessions/{id}"},
        {RHEMA_M_DELETE, "/v1/sessions/{id}"},
        {RHEMA_M_POST, "/v1/sessions/{id}/messages"},
        {RHEMA_M_POST, "/v1/sessions/{id}/messages/{message_id}/ack"},
        {RHEMA_M_PUT, "/v1/agents/{agent_id}"},
        {RHEMA_M_DELETE, "/v1/agents/{agent_id}"},
        {RHEMA_M_POST, "/v1/agents/{agent_id}/heartbeat"},
        {RHEMA_M_PUT, "/v1/consensus/{node}/state"},
        {RHEMA_M_POST, "/v1/consensus/{node}/entries"},
        {RHEMA_M_POST, "/v1/consensus/{node}/commit"},
        {RHEMA_M_POST, "/v1/consensus/{node}/applied"},
        {RHEMA_M_PUT, "/v1/system/metrics"},
        {RHEMA_M_PUT, "/v1/configurations/{configuration_name}"},
        {RHEMA_M_DELETE, "/v1/configurations/{configuration_name}"},
        {RHEMA_M_PUT, "/v1/services/{service_id}"},
        {RHEMA_M_DELETE, "/v1/services/{service_id}"},
        {RHEMA_M_POST, "/v1/services/{service_id}/pass"},
        {RHEMA_M_POST, "/v1/keys/rotate"},
    };
    for (size_t i = 0; i < sizeof writes / sizeof writes[0]; i++) {
        const struct rhema_route *rt = find(writes[i].method, writes[i].path);
        if (!rt)
            fail_msg("no route %u %s", writes[i].method, writes[i].path);
        assert_int_not_equal(rt->effect, RHEMA_READS);
    }
    /* and transforms are not writes */
    assert_int_equal(find(RHEMA_M_POST, "/v1/messages/compress")->effect, RHEMA_READS);
    assert_int_equal(find(RHEMA_M_POST, "/v1/messages/encrypt")->effect, RHEMA_READS);
}

static void expect_refused(const struct rhema_route *table, const char *what)
{
    const struct rhema_route *const tables[] = {table, NULL};
    char *err = NULL;
    assert_int_not_equal(rhema_routes_check(tables, &err), 0);
    assert_non_null(err);
    if (!strstr(err, what))
        fail_msg("expected '%s' in: %s", what, err);
    free(err);
}

static void test_check_refuses_incomplete_routes(void **state)
{
    (void)state;
    static const struct rhema_route no_permission[] = {
        {RHEMA_M_GET, "/v1/x", h_dummy, NULL, RHEMA_READS}, {0}};
    static const struct rhema_route bad_permission[] = {
        {RHEMA_M_GET, "/v1/x", h_dummy, "x", RHEMA_READS}, {0}};
    /* (leaving the field out altogether is a -Wmissing-field-initializers error) */
    static const struct rhema_route no_effect[] = {{RHEMA_M_GET, "/v1/x", h_dummy, "x:read", 0},
                                                   {0}};
    static const struct rhema_route no_handler[] = {
        {RHEMA_M_GET, "/v1/x", NULL, "x:read", RHEMA_READS}, {0}};
    static const struct rhema_route no_method[] = {
        {0, "/v1/x", h_dummy, "x:read", RHEMA_READS}, {0}};
    static const struct rhema_route two_methods[] = {
        {RHEMA_M_GET | RHEMA_M_PUT, "/v1/x", h_dummy, "x:read", RHEMA_READS}, {0}};
    static const struct rhema_route put_reads[] = {
        {RHEMA_M_PUT, "/v1/x", h_dummy, "x:write", RHEMA_READS}, {0}};
    static const struct rhema_route get_writes[] = {
        {RHEMA_M_GET, "/v1/x", h_dummy, "x:read", RHEMA_WRITES}, {0}};
    static const struct rhema_route three_params[] = {
        {RHEMA_M_GET, "/v1/{a}/{b}/{c}", h_dummy, "x:read", RHEMA_READS}, {0}};
    static const struct rhema_route open_param[] = {
        {RHEMA_M_GET, "/v1/{a", h_dummy, "x:read", RHEMA_READS}, {0}};
    static const struct rhema_route no_path[] = {{RHEMA_M_GET, NULL, h_dummy, "x:read", RHEMA_READS},
                                                 {0}};
    static const struct rhema_route twice[] = {
        {RHEMA_M_GET, "/v1/x", h_dummy, "x:read", RHEMA_READS},
        {RHEMA_M_GET, "/v1/x", h_dummy, "x:read", RHEMA_READS},
        {0}};
    expect_refused(no_permission, "permission");
    expect_refused(bad_permission, "permission");
    expect_refused(no_effect, "effect");
    expect_refused(no_handler, "handler");
    expect_refused(no_method, "method");
    expect_refused(two_methods, "method");
    expect_refused(put_reads, "write");
    expect_refused(get_writes, "GET");
    expect_refused(three_params, "template");
    expect_refused(open_param, "template");
    expect_refused(no_path, "template");
    expect_refused(twice, "twice");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_daemon_tables_pass_the_check),
        cmocka_unit_test(test_every_route_declares_everything),
        cmocka_unit_test(test_data_writes_are_fenced),
        cmocka_unit_test(test_check_refuses_incomplete_routes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
