/*
 * test_openapi -- doc/openapi.yaml (compiled into rhemad as
 * rhema_openapi_yaml, api_openapi.h) describes exactly the routes of the
 * router's tables (rhema_api_routes): every route the router knows is a
 * path and method of the document, and every path and method of the
 * document is a route.  A failure names each route missing on either side.
 *
 * The document's paths are read by their layout, which doc/openapi.yaml
 * keeps: under the top-level "paths:", a path is a line "  /template:"
 * (two spaces) and a method a line "    get:" (four spaces) below it.
 * tests/integration/test_openapi.py checks the document with a YAML parser.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "api/api_openapi.h"
#include "api/pipeline.h"
#include "api/routes.h"

#define MAX_OPS 512

struct op {
    unsigned method;
    char path[128];
};

static const struct {
    unsigned bit;
    const char *lower, *upper;
} methods[] = {
    {RHEMA_M_GET, "get", "GET"},          {RHEMA_M_PUT, "put", "PUT"},
    {RHEMA_M_POST, "post", "POST"},       {RHEMA_M_DELETE, "delete", "DELETE"},
    {RHEMA_M_PATCH, "patch", "PATCH"},
};

static const char *method_name(unsigned bit)
{
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (methods[i].bit == bit)
            return methods[i].upper;
    return "?";
}

/* The document's operations, by its layout; the count, or -1 when it has no "paths:". */
static int yaml_ops(const char *yaml, struct op *ops, int max)
{
    const char *p = strstr(yaml, "\npaths:\n");
    char cur[128] = "";
    int n = 0;
    if (!p)
        return -1;
    p += strlen("\npaths:\n");
    while (*p && (*p == ' ' || *p == '\n')) {
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        if (len > 3 && strncmp(p, "  /", 3) == 0 && p[len - 1] == ':' && len - 3 < sizeof cur) {
            memcpy(cur, p + 2, len - 3);
            cur[len - 3] = '\0';
        } else if (len > 5 && strncmp(p, "    ", 4) == 0 && p[4] != ' ' && cur[0]) {
            for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
                size_t m = strlen(methods[i].lower);
                if (len == 4 + m + 1 && strncmp(p + 4, methods[i].lower, m) == 0 &&
                    p[4 + m] == ':' && n < max) {
                    ops[n].method = methods[i].bit;
                    strcpy(ops[n].path, cur);
                    n++;
                }
            }
        }
        p += len + (eol ? 1 : 0);
    }
    return n;
}

/* Mismatches between tables and yaml, each as a line appended to report. */
static int compare(const struct rhema_route *const *tables, const char *yaml, char *report,
                   size_t size)
{
    static struct op ops[MAX_OPS];
    int n = yaml_ops(yaml, ops, MAX_OPS), missing = 0;
    size_t used = strlen(report);
    if (n < 0) {
        snprintf(report + used, size - used, "the document has no top-level \"paths:\"\n");
        return 1;
    }
    for (const struct rhema_route *const *t = tables; *t; t++)
        for (const struct rhema_route *rt = *t; rt->path; rt++) {
            int found = 0;
            for (int i = 0; i < n && !found; i++)
                found = ops[i].method == rt->method && strcmp(ops[i].path, rt->path) == 0;
            if (!found) {
                missing++;
                used += (size_t)snprintf(report + used, size - used,
                                         "route %s %s (permission %s) is not in doc/openapi.yaml: "
                                         "add \"  %s:\" / \"    %s:\" under paths\n",
                                         method_name(rt->method), rt->path, rt->permission,
                                         rt->path, method_name(rt->method));
                if (used >= size)
                    used = size - 1;
            }
        }
    for (int i = 0; i < n; i++) {
        int found = 0;
        for (const struct rhema_route *const *t = tables; *t && !found; t++)
            for (const struct rhema_route *rt = *t; rt->path && !found; rt++)
                found = ops[i].method == rt->method && strcmp(ops[i].path, rt->path) == 0;
        if (!found) {
            missing++;
            used += (size_t)snprintf(report + used, size - used,
                                     "doc/openapi.yaml describes %s %s, which is no route of "
                                     "rhema_api_routes\n",
                                     method_name(ops[i].method), ops[i].path);
            if (used >= size)
                used = size - 1;
        }
    }
    return missing;
}

static void test_document_and_router_agree(void **state)
{
    (void)state;
    static char report[16384];
    report[0] = '\0';
    assert_int_equal(strlen(rhema_openapi_yaml), rhema_openapi_yaml_len);
    if (compare(rhema_api_routes, rhema_openapi_yaml, report, sizeof report))
        fail_msg("doc/openapi.yaml and the router disagree:\n%s", report);
    static struct op ops[MAX_OPS];
    assert_true(yaml_ops(rhema_openapi_yaml, ops, MAX_OPS) > 40); /* the layout was read */
}

static void h_dummy(struct rhema_req *r) { (void)r; }

/* The comparison itself reports both directions, naming the route. */
static void test_mismatches_are_named(void **state)
{
    (void)state;
    static const struct rhema_route table[] = {
        {RHEMA_M_GET, "/v1/a", h_dummy, "x:read", RHEMA_READS},
        {RHEMA_M_GET, "/v1/usage", h_dummy, "ai:read", RHEMA_READS},
        {RHEMA_M_PUT, "/v1/a/{id}", h_dummy, "x:write", RHEMA_WRITES},
        {0}};
    const struct rhema_route *const tables[] = {table, NULL};
    const char *yaml = "openapi: 3.1.0\n"
                       "paths:\n"
                       "  /v1/a:\n"
                       "    get:\n"
                       "      responses: {}\n"
                       "  /v1/a/{id}:\n"
                       "    parameters: []\n"
                       "    put:\n"
                       "      summary: x\n"
                       "    delete:\n"
                       "      summary: x\n"
                       "components:\n"
                       "  /v1/usage:\n"
                       "    get:\n";
    char report[2048] = "";
    assert_int_equal(compare(tables, yaml, report, sizeof report), 2);
    assert_non_null(strstr(report, "route GET /v1/usage (permission ai:read) is not in"));
    assert_non_null(strstr(report, "describes DELETE /v1/a/{id}, which is no route"));
    report[0] = '\0';
    assert_int_equal(compare(tables, "openapi: 3.1.0\n", report, sizeof report), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_document_and_router_agree),
        cmocka_unit_test(test_mismatches_are_named),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
