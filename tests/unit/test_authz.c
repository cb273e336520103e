/*
 * test_authz -- core/auth/authz.c: permission patterns, rule precedence
 * (the most specific rule wins, deny beats allow at equal specificity,
 * deny by default), and every route of the daemon's tables against a
 * role that has its permission and one that has every other.
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
#include "auth/authz.h"

#define GET RHEMA_AUTHZ_GET
#define PUT RHEMA_AUTHZ_PUT
#define POST RHEMA_AUTHZ_POST
#define DEL RHEMA_AUTHZ_DELETE

static void test_patterns(void **state)
{
    (void)state;
    assert_true(rhema_permission_valid("sessions:read"));
    assert_true(rhema_permission_valid("sessions:*"));
    assert_true(rhema_permission_valid("*:read"));
    assert_true(rhema_permission_valid("*"));
    assert_false(rhema_permission_valid("sessions"));
    assert_false(rhema_permission_valid("Sessions:read"));
    assert_false(rhema_permission_valid("sessions:read:x"));
    assert_false(rhema_permission_valid(":read"));
    assert_false(rhema_permission_valid("sessions:"));
    assert_false(rhema_permission_valid("se*:read"));
    assert_false(rhema_permission_valid(""));

    assert_true(rhema_permission_match("*", "keys:admin"));
    assert_true(rhema_permission_match("keys:*", "keys:admin"));
    assert_true(rhema_permission_match("*:admin", "keys:admin"));
    assert_true(rhema_permission_match("keys:admin", "keys:admin"));
    assert_false(rhema_permission_match("keys:read", "keys:admin"));
    assert_false(rhema_permission_match("key:*", "keys:admin"));
    assert_false(rhema_permission_match("*:read", "keys:admin"));
    assert_false(rhema_permission_match("sessions:*", "sessions_x:read"));
}

static struct rhema_authz *setup_roles(void)
{
    struct rhema_authz *a = NULL;
    static const char *reader[] = {"sessions:read", "agents:read"};
    static const char *writer[] = {"sessions:*"};
    static const char *all[] = {"*"};
    assert_int_equal(rhema_authz_new(&a), 0);
    assert_int_equal(rhema_authz_add_role(a, "reader", reader, 2, NULL), 0);
    assert_int_equal(rhema_authz_add_role(a, "writer", writer, 1, NULL), 0);
    assert_int_equal(rhema_authz_add_role(a, "admin", all, 1, NULL), 0);
    assert_int_equal(rhema_authz_add_role(a, "none", NULL, 0, NULL), 0);
    return a;
}

#define R(a, name) (UINT64_C(1) << rhema_authz_role_index(a, name))

static void test_roles_deny_by_default(void **state)
{
    (void)state;
    struct rhema_authz *a = setup_roles();
    assert_true(rhema_authz_check(a, R(a, "reader"), GET, "/v1/sessions/x", "sessions:read"));
    assert_false(rhema_authz_check(a, R(a, "reader"), PUT, "/v1/sessions/x", "sessions:write"));
    assert_true(rhema_authz_check(a, R(a, "writer"), PUT, "/v1/sessions/x", "sessions:write"));
    assert_false(rhema_authz_check(a, R(a, "writer"), GET, "/v1/agents/x", "agents:read"));
    assert_true(
        rhema_authz_check(a, R(a, "reader") | R(a, "writer"), GET, "/v1/agents/x", "agents:read"));
    assert_true(rhema_authz_check(a, R(a, "admin"), POST, "/v1/keys/rotate", "keys:admin"));
    assert_false(rhema_authz_check(a, R(a, "none"), GET, "/v1/sessions/x", "sessions:read"));
    assert_false(rhema_authz_check(a, 0, GET, "/v1/sessions/x", "sessions:read"));
    /* auth:self (whoami) is every principal's */
    assert_true(rhema_authz_check(a, R(a, "none"), GET, "/v1/auth/whoami", "auth:self"));
    rhema_authz_free(a);
}

static void test_most_specific_rule_wins(void **state)
{
    (void)state;
    struct rhema_authz *a = setup_roles();
    static const char *writer[] = {"writer"};
    /* writers may not touch /v1/sessions/locked ... */
    assert_int_equal(rhema_authz_add_rule(a, "/v1/sessions/locked", 0, 0, writer, 1, NULL), 0);
    /* ... except to read it (methods listed: more specific at the same prefix) */
    assert_int_equal(rhema_authz_add_rule(a, "/v1/sessions/locked", GET, 1, writer, 1, NULL), 0);
    /* ... and everything below /v1/sessions/locked/messages is open to them again */
    assert_int_equal(rhema_authz_add_rule(a, "/v1/sessions/locked/messages", 0, 1, writer, 1, NULL),
                     0);
    /* readers may write the scratch session (a rule grants beyond the role) */
    static const char *reader[] = {"reader"};
    assert_int_equal(rhema_authz_add_rule(a, "/v1/sessions/scratch", PUT, 1, reader, 1, NULL), 0);

    uint64_t w = R(a, "writer"), r = R(a, "reader");
    assert_false(rhema_authz_check(a, w, PUT, "/v1/sessions/locked", "sessions:write"));
    assert_false(rhema_authz_check(a, w, DEL, "/v1/sessions/locked", "sessions:write"));
    assert_true(rhema_authz_check(a, w, GET, "/v1/sessions/locked", "sessions:read"));
    assert_true(rhema_authz_check(a, w, POST, "/v1/sessions/locked/messages", "sessions:write"));
    /* segment boundary: /v1/sessions/lockedX is not under the rule */
    assert_true(rhema_authz_check(a, w, PUT, "/v1/sessions/lockedX", "sessions:write"));
    assert_true(rhema_authz_check(a, r, PUT, "/v1/sessions/scratch", "sessions:write"));
    assert_false(rhema_authz_check(a, r, PUT, "/v1/sessions/other", "sessions:write"));
    /* a rule for writers says nothing about readers: their roles decide */
    assert_true(rhema_authz_check(a, r, GET, "/v1/sessions/locked", "sessions:read"));
    rhema_authz_free(a);
}

static void test_deny_beats_allow_at_equal_specificity(void **state)
{
    (void)state;
    struct rhema_authz *a = setup_roles();
    static const char *admin[] = {"admin"}, *writer[] = {"writer"};
    assert_int_equal(rhema_authz_add_rule(a, "/v1/keys", POST, 1, admin, 1, NULL), 0);
    assert_int_equal(rhema_authz_add_rule(a, "/v1/keys", POST, 0, NULL, 0, NULL), 0);
    assert_false(rhema_authz_check(a, R(a, "admin"), POST, "/v1/keys/rotate", "keys:admin"));
    /* order does not matter */
    assert_int_equal(rhema_authz_add_rule(a, "/v1/agents", 0, 0, writer, 1, NULL), 0);
    assert_int_equal(rhema_authz_add_rule(a, "/v1/agents", 0, 1, writer, 1, NULL), 0);
    assert_false(
        rhema_authz_check(a, R(a, "writer") | R(a, "admin"), GET, "/v1/agents/a", "agents:read"));
    /* the admin role alone: the writer rules do not apply */
    assert_true(rhema_authz_check(a, R(a, "admin"), GET, "/v1/agents/a", "agents:read"));
    /* a trailing '/' prefix matches what follows, not the bare path */
    assert_int_equal(rhema_authz_add_rule(a, "/v1/cluster/", 0, 0, NULL, 0, NULL), 0);
    assert_true(rhema_authz_check(a, R(a, "admin"), GET, "/v1/cluster", "cluster:read"));
    assert_false(rhema_authz_check(a, R(a, "admin"), GET, "/v1/cluster/nodes", "cluster:read"));
    rhema_authz_free(a);
}

static void test_bad_definitions(void **state)
{
    (void)state;
    struct rhema_authz *a = setup_roles();
    char *err = NULL;
    static const char *bad[] = {"sessions"};
    static const char *ghost[] = {"ghost"};
    assert_int_equal(rhema_authz_add_role(a, "x", bad, 1, &err), RHEMA_EINVAL);
    assert_non_null(strstr(err, "'sessions' is not a permission"));
    assert_int_equal(rhema_authz_add_role(a, "reader", NULL, 0, &err), RHEMA_EINVAL);
    assert_non_null(strstr(err, "twice"));
    assert_int_equal(rhema_authz_add_rule(a, "/v1", 0, 1, ghost, 1, &err), RHEMA_EINVAL);
    assert_non_null(strstr(err, "'ghost'"));
    assert_int_equal(rhema_authz_add_rule(a, "v1", 0, 1, NULL, 0, &err), RHEMA_EINVAL);
    free(err);
    assert_int_equal(rhema_authz_method("GET"), GET);
    assert_int_equal(rhema_authz_method("get"), 0);
    assert_int_equal(rhema_authz_method("PATCH"), 0);
    rhema_authz_free(a);
}

/*
 * Every route of the daemon (walked from the tables, so a new route cannot
 * escape): a role with exactly its permission is allowed, a role holding
 * every other permission of the tables is not, nobody is by default.
 */
static void test_every_route_needs_its_permission(void **state)
{
    (void)state;
    const char *perms[256];
    size_t n = 0, routes = 0;
    for (const struct rhema_route *const *t = rhema_api_routes; *t; t++)
        for (const struct rhema_route *rt = *t; rt->path; rt++) {
            size_t i;
            for (i = 0; i < n && strcmp(perms[i], rt->permission) != 0; i++)
                ;
            if (i == n) {
                assert_true(n < 256);
                perms[n++] = rt->permission;
            }
        }
    for (const struct rhema_route *const *t = rhema_api_routes; *t; t++)
        for (const struct rhema_route *rt = *t; rt->path; rt++) {
            struct rhema_authz *a = NULL;
            const char *others[256];
            size_t no = 0;
            for (size_t i = 0; i < n; i++)
                if (strcmp(perms[i], rt->permission) != 0)
                    others[no++] = perms[i];
            assert_int_equal(rhema_authz_new(&a), 0);
            assert_int_equal(rhema_authz_add_role(a, "having", &rt->permission, 1, NULL), 0);
            assert_int_equal(rhema_authz_add_role(a, "lacking", others, no, NULL), 0);
            char path[256];
            const char *brace = strchr(rt->path, '{');
            if (brace)
                snprintf(path, sizeof path, "%.*sx1", (int)(brace - rt->path), rt->path);
            else
                snprintf(path, sizeof path, "%s", rt->path);
            unsigned m = rt->method; /* RHEMA_M_* has the values of RHEMA_AUTHZ_* */
            assert_true(rhema_authz_check(a, R(a, "having"), m, path, rt->permission));
            if (strcmp(rt->permission, "auth:self") == 0)
                assert_true(rhema_authz_check(a, R(a, "lacking"), m, path, rt->permission));
            else if (rhema_authz_check(a, R(a, "lacking"), m, path, rt->permission))
                fail_msg("%s %s: allowed without %s", path, rt->path, rt->permission);
            rhema_authz_free(a);
            routes++;
        }
    assert_true(routes >= 40);
}

static void test_loopback_addresses(void **state)
{
    (void)state;
    assert_true(rhema_addr_loopback("127.0.0.1"));
    assert_true(rhema_addr_loopback("127.255.0.9"));
    assert_true(rhema_addr_loopback("::1"));
    assert_true(rhema_addr_loopback("::ffff:127.0.0.1"));
    assert_false(rhema_addr_loopback("10.0.0.1"));
    assert_false(rhema_addr_loopback("128.0.0.1"));
    assert_false(rhema_addr_loopback("::2"));
    assert_false(rhema_addr_loopback("::ffff:10.0.0.1"));
    assert_false(rhema_addr_loopback("fe80::1"));
    assert_false(
        rhema_addr_loopback("localhost")); /* evhttp gives numbers; a name is not trusted */
    assert_false(rhema_addr_loopback(""));
}

_Static_assert(RHEMA_M_GET == RHEMA_AUTHZ_GET && RHEMA_M_PUT == RHEMA_AUTHZ_PUT &&
                   RHEMA_M_POST == RHEMA_AUTHZ_POST && RHEMA_M_DELETE == RHEMA_AUTHZ_DELETE,
               "the method bits of routes.h and authz.h agree");

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_patterns),
        cmocka_unit_test(test_roles_deny_by_default),
        cmocka_unit_test(test_most_specific_rule_wins),
        cmocka_unit_test(test_deny_beats_allow_at_equal_specificity),
        cmocka_unit_test(test_bad_definitions),
        cmocka_unit_test(test_every_route_needs_its_permission),
        cmocka_unit_test(test_loopback_addresses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
