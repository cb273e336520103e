/*
 * Unit tests for core/auth/certmap.c: security.client_certificates parsed
 * against the roles, looked up by subject and by SAN, and refused when a
 * mapping is malformed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth/authz.h"
#include "auth/certmap.h"
#include "config.h"

#define FP "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

/* Load text as a configuration file (removed again); 0 or the loader's code. */
static int load(struct rhema_config *cfg, const char *text)
{
    char path[128];
    char *err = NULL;
    snprintf(path, sizeof path, "%s/rhema-test-certmap-XXXXXX",
             getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *fp = fdopen(fd, "w");
    assert_non_null(fp);
    fputs(text, fp);
    assert_int_equal(fclose(fp), 0);
    int rc = rhema_config_load(cfg, path, NULL, 0, NULL, &err);
    if (rc)
        fprintf(stderr, "config: %s\n", err);
    free(err);
    unlink(path);
    return rc;
}

#define ROLES                                                                                      \
    "security: { roles = ( { name = \"agent\"; permissions = [ \"sessions:read\" ]; },\n"          \
    "                      { name = \"ops\"; permissions = [ \"*\" ]; } );\n"

/* Build the map of `mappings` (the inside of client_certificates = ( ... )). */
static int build(const char *mappings, struct rhema_authz **authz, struct rhema_certmap **m,
                 char **err)
{
    struct rhema_config cfg;
    char text[2048];
    snprintf(text, sizeof text, ROLES "  client_certificates = ( %s );\n};\n", mappings);
    assert_int_equal(load(&cfg, text), 0);
    assert_int_equal(rhema_authz_from_config(&cfg, authz, err), 0);
    int rc = rhema_certmap_from_config(&cfg, *authz, m, err);
    rhema_config_release(&cfg);
    return rc;
}

static void test_subject_and_san(void **state)
{
    (void)state;
    struct rhema_authz *authz = NULL;
    struct rhema_certmap *m = NULL;
    struct rhema_principal p;
    char *err = NULL;
    char sans[2][256] = {"DNS:other.example", "DNS:agent-8.acme.internal"};
    assert_int_equal(build("{ subject = \"CN=agent-7,O=acme\"; roles = [ \"agent\", \"ops\" ]; },"
                           "{ san = \"DNS:agent-8.acme.internal\"; name = \"eight\"; "
                           "roles = [ \"agent\" ]; }",
                           &authz, &m, &err),
                     0);
    assert_int_equal(rhema_certmap_count(m), 2);

    memset(&p, 0, sizeof p);
    assert_int_equal(rhema_certmap_lookup(m, "CN=agent-7,O=acme", NULL, 0, FP, &p), 0);
    assert_string_equal(p.key_id, "cert:0123456789abcdef");
    assert_string_equal(p.name, "CN=agent-7,O=acme");
    assert_string_equal(p.roles, "agent,ops");
    assert_int_equal(p.role_mask, 3);
    assert_int_equal(p.certificate, 1);

    assert_int_equal(rhema_certmap_lookup(m, "CN=agent-8", (const char(*)[256])sans, 2, FP, &p), 0);
    assert_string_equal(p.name, "eight");
    assert_string_equal(p.roles, "agent");

    /* exact: no case folding, no reordering, no prefix */
    memset(&p, 0, sizeof p);
    assert_int_equal(rhema_certmap_lookup(m, "CN=Agent-7,O=acme", NULL, 0, FP, &p), -1);
    assert_int_equal(rhema_certmap_lookup(m, "O=acme,CN=agent-7", NULL, 0, FP, &p), -1);
    assert_int_equal(rhema_certmap_lookup(m, "CN=agent-7,O=acme,C=DE", NULL, 0, FP, &p), -1);
    /* a SAN mapping is not matched by a subject that spells the same text */
    assert_int_equal(rhema_certmap_lookup(m, "DNS:agent-8.acme.internal", NULL, 0, FP, &p), -1);
    assert_string_equal(p.key_id, ""); /* untouched on a miss */

    rhema_certmap_free(m);
    rhema_authz_free(authz);
}

static void test_empty_list_is_no_map(void **state)
{
    (void)state;
    struct rhema_config cfg;
    struct rhema_authz *authz = NULL;
    struct rhema_certmap *m = (void *)1;
    char *err = NULL;
    assert_int_equal(load(&cfg, ROLES "};\n"), 0);
    assert_int_equal(rhema_authz_from_config(&cfg, &authz, &err), 0);
    assert_int_equal(rhema_certmap_from_config(&cfg, authz, &m, &err), 0);
    assert_null(m);
    struct rhema_principal p;
    assert_int_equal(rhema_certmap_lookup(NULL, "CN=x", NULL, 0, FP, &p), -1);
    rhema_config_release(&cfg);
    rhema_authz_free(authz);
}

static void refused(const char *mappings, const char *want)
{
    struct rhema_authz *authz = NULL;
    struct rhema_certmap *m = NULL;
    char *err = NULL;
    assert_int_equal(build(mappings, &authz, &m, &err), RHEMA_EINVAL);
    assert_null(m);
    assert_non_null(err);
    if (!strstr(err, want))
        fail_msg("error '%s' does not contain '%s'", err, want);
    free(err);
    rhema_authz_free(authz);
}

static void test_bad_mappings(void **state)
{
    (void)state;
    refused("{ roles = [ \"agent\" ]; }",
            "security.client_certificates[0]: set exactly one of subject and san");
    refused("{ subject = \"CN=a\"; san = \"DNS:a\"; roles = [ \"agent\" ]; }",
            "set exactly one of subject and san");
    refused("{ san = \"a.example\"; roles = [ \"agent\" ]; }",
            "security.client_certificates[0].san: 'a.example' is not");
    refused("{ san = \"DNS:\"; roles = [ \"agent\" ]; }", "'DNS:' is not");
    refused("{ subject = \"CN=a\"; roles = [ \"ghost\" ]; }",
            "security.client_certificates[0].roles[0]: role 'ghost' is not defined");
    refused("{ subject = \"CN=a\"; roles = [ \"agent\" ]; }, { subject = \"CN=a\"; }",
            "security.client_certificates[1]: subject 'CN=a' is mapped twice");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_subject_and_san),
        cmocka_unit_test(test_empty_list_is_no_map),
        cmocka_unit_test(test_bad_mappings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
