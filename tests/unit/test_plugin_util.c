/*
 * test_plugin_util -- plugins/common (librhema_plugin_util.la): the argument
 * checks the plugins share, and the adapters between the caller's array
 * stride and a plugin's own layout (storage.h, "Growing the structs").
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "balancer_check.h"
#include "storage_check.h"

static int scan_cb(void *ctx, const char *key, const void *value, size_t len, uint64_t version)
{
    (void)ctx, (void)key, (void)value, (void)len, (void)version;
    return 0;
}

static void checks_keys_and_leases(void **state)
{
    (void)state;
    char long_key[RHEMA_STORAGE_KEY_MAX + 2];
    memset(long_key, 'k', sizeof long_key - 1);
    long_key[sizeof long_key - 1] = '\0';
    assert_null(rhema_storage_key_invalid("ns.a:b-c_1", "any \x01 byte"));
    assert_non_null(rhema_storage_key_invalid("bad ns", "k"));
    assert_non_null(rhema_storage_key_invalid("", "k"));
    assert_non_null(rhema_storage_key_invalid("ns", ""));
    assert_non_null(rhema_storage_key_invalid("ns", long_key));
    long_key[RHEMA_STORAGE_KEY_MAX] = '\0';
    assert_null(rhema_storage_key_invalid("ns", long_key));

    assert_null(rhema_storage_lease_invalid("leader", "node-1", 1000, RHEMA_LEASE_ACQUIRE));
    assert_null(rhema_storage_lease_invalid("leader", NULL, 0, RHEMA_LEASE_QUERY));
    assert_null(rhema_storage_lease_invalid("leader", "node-1", 0, RHEMA_LEASE_RELEASE));
    assert_non_null(rhema_storage_lease_invalid("leader", "node-1", 0, RHEMA_LEASE_RENEW));
    assert_non_null(rhema_storage_lease_invalid("leader", "", 1000, RHEMA_LEASE_ACQUIRE));
    assert_non_null(rhema_storage_lease_invalid("", "node-1", 1000, RHEMA_LEASE_ACQUIRE));
    assert_non_null(rhema_storage_lease_invalid("leader", "node-1", 1000, 99));

    assert_null(rhema_storage_scan_invalid("ns", scan_cb));
    assert_non_null(rhema_storage_scan_invalid("ns", NULL));
    assert_null(rhema_storage_stats_invalid(NULL, &(struct rhema_storage_stats){0}));
    assert_non_null(rhema_storage_stats_invalid("ns", NULL));
}

/* Sequenced writes (storage minor 3): flags by size, their checks, keys, shared versions. */
static void checks_sequenced_writes(void **state)
{
    (void)state;
    char prefix[RHEMA_STORAGE_KEY_MAX + 2], key[RHEMA_STORAGE_KEY_MAX + 1];
    struct rhema_storage_write w = {.size = sizeof w,
                                    .op = RHEMA_WRITE_PUT,
                                    .ns = "ns",
                                    .key = "ev/",
                                    .value = "v",
                                    .value_len = 1,
                                    .flags = RHEMA_WRITE_SEQUENCED};
    assert_null(rhema_storage_write_invalid(&w));
    assert_true(rhema_storage_write_sequenced(&w));
    w.key = ""; /* the empty prefix */
    assert_null(rhema_storage_write_invalid(&w));
    w.key = NULL;
    assert_non_null(rhema_storage_write_invalid(&w));
    memset(prefix, 'p', sizeof prefix);
    prefix[RHEMA_SEQ_PREFIX_MAX] = '\0';
    w.key = prefix;
    assert_null(rhema_storage_write_invalid(&w));
    assert_int_equal(strlen(rhema_storage_seq_key(key, prefix, UINT64_MAX)), RHEMA_STORAGE_KEY_MAX);
    assert_string_equal(key + RHEMA_SEQ_PREFIX_MAX, "18446744073709551615");
    prefix[RHEMA_SEQ_PREFIX_MAX] = 'p';
    prefix[RHEMA_SEQ_PREFIX_MAX + 1] = '\0';
    assert_non_null(rhema_storage_write_invalid(&w));
    w.key = "ev/";
    w.expected_version = RHEMA_VERSION_ABSENT;
    assert_null(rhema_storage_write_invalid(&w));
    w.expected_version = 5;
    assert_non_null(rhema_storage_write_invalid(&w));
    w.expected_version = RHEMA_VERSION_ANY;
    w.op = RHEMA_WRITE_DEL;
    assert_non_null(rhema_storage_write_invalid(&w));
    w.op = RHEMA_WRITE_PUT;
    w.flags |= 1u << 9;
    assert_non_null(rhema_storage_write_invalid(&w));
    /* a caller of minor 0: whatever lies where flags would be is not a flag */
    w.size = RHEMA_STORAGE_WRITE_SIZE_0;
    assert_int_equal(rhema_storage_write_flags(&w), 0);
    assert_false(rhema_storage_write_sequenced(&w));
    assert_null(rhema_storage_write_invalid(&w));
    w.key = "";
    assert_non_null(rhema_storage_write_invalid(&w)); /* then "" is a bad key */
    assert_string_equal(rhema_storage_seq_key(key, "ev/", 42), "ev/00000000000000000042");
    assert_string_equal(rhema_storage_seq_key(key, "", 0), "00000000000000000000");

    struct rhema_storage_write b[4] = {
        {.size = sizeof b[0], .op = RHEMA_WRITE_PUT, .ns = "ns", .key = "k"},
        {.size = sizeof b[0],
         .op = RHEMA_WRITE_PUT,
         .ns = "ns",
         .key = "",
         .flags = RHEMA_WRITE_SEQUENCED},
        {.size = sizeof b[0],
         .op = RHEMA_WRITE_PUT,
         .ns = "ns",
         .key = "",
         .flags = RHEMA_WRITE_SEQUENCED},
        {.size = sizeof b[0], .op = RHEMA_WRITE_DEL, .ns = "ns", .key = "k"}};
    assert_false(rhema_storage_seq_shares_previous(b, 0));
    assert_true(rhema_storage_seq_shares_previous(b, 1));  /* after a put */
    assert_false(rhema_storage_seq_shares_previous(b, 2)); /* after a record */
    assert_false(rhema_storage_seq_shares_previous(b, 4)); /* after a delete */
}

static void checks_writes(void **state)
{
    (void)state;
    struct rhema_storage_write w = {.size = sizeof w,
                                    .op = RHEMA_WRITE_PUT,
                                    .ns = "ns",
                                    .key = "k",
                                    .value = "v",
                                    .value_len = 1};
    assert_null(rhema_storage_write_invalid(&w));
    w.size = RHEMA_STORAGE_WRITE_SIZE_0;
    assert_null(rhema_storage_write_invalid(&w));
    w.size = RHEMA_STORAGE_WRITE_SIZE_0 - 1;
    assert_non_null(rhema_storage_write_invalid(&w));
    w.size = sizeof w;
    w.op = RHEMA_WRITE_DEL;
    w.expected_version = RHEMA_VERSION_ABSENT;
    assert_non_null(rhema_storage_write_invalid(&w));
    w.op = 7;
    assert_non_null(rhema_storage_write_invalid(&w));
    assert_non_null(rhema_storage_write_invalid(NULL));

    struct rhema_endpoint ep = {.size = RHEMA_ENDPOINT_SIZE_0};
    assert_true(rhema_endpoints_valid(NULL, 0));
    assert_true(rhema_endpoints_valid(&ep, 1));
    ep.size = RHEMA_ENDPOINT_SIZE_0 - 1;
    assert_false(rhema_endpoints_valid(&ep, 1));
    assert_false(rhema_endpoints_valid(NULL, 1));
}

/* A plugin's own write check: the shared one, plus a limit of 3-byte values. */
static int small_values(rhema_storage_conn *c, const struct rhema_storage_write *w)
{
    (void)c;
    if (rhema_storage_write_invalid(w) != NULL)
        return RHEMA_EINVAL;
    return w->op == RHEMA_WRITE_PUT && w->value_len > 3 ? RHEMA_ETOOBIG : 0;
}

static void batch_and_group_checks(void **state)
{
    (void)state;
    const char *why = NULL;
    struct rhema_storage_write w[2] = {{.size = sizeof w[0],
                                        .op = RHEMA_WRITE_PUT,
                                        .ns = "ns",
                                        .key = "a",
                                        .value = "ok",
                                        .value_len = 2,
                                        .new_version = 9},
                                       {.size = sizeof w[0],
                                        .op = RHEMA_WRITE_PUT,
                                        .ns = "ns",
                                        .key = "b",
                                        .value = "long",
                                        .value_len = 4,
                                        .new_version = 9}};
    assert_int_equal(rhema_storage_batch_check(NULL, w, 2, small_values, &why), RHEMA_ETOOBIG);
    assert_int_equal(w[0].new_version, 0); /* a refused batch reports no version */
    assert_int_equal(w[1].new_version, 0);
    assert_int_equal(rhema_storage_batch_check(NULL, w, 1, small_values, &why), 0);
    assert_int_equal(rhema_storage_batch_check(NULL, NULL, 0, small_values, &why), 0);
    assert_null(why);
    assert_int_equal(rhema_storage_batch_check(NULL, NULL, 2, small_values, &why), RHEMA_EINVAL);
    assert_non_null(why);

    /* group: each member fails alone */
    struct rhema_storage_batch g[3] = {
        {.size = sizeof g[0], .result = -99, .writes = &w[0], .n = 1},
        {.size = sizeof g[0], .result = -99, .writes = &w[1], .n = 1},
        {.size = sizeof g[0], .result = -99, .writes = NULL, .n = 2}};
    why = NULL;
    assert_int_equal(rhema_storage_group_check(NULL, g, 3, small_values, &why), 0);
    assert_int_equal(g[0].result, 0);
    assert_int_equal(g[1].result, RHEMA_ETOOBIG);
    assert_int_equal(g[2].result, RHEMA_EINVAL);
    assert_non_null(why);
    why = NULL;
    assert_int_equal(rhema_storage_group_check(NULL, NULL, 1, small_values, &why), RHEMA_EINVAL);
    assert_non_null(why);
}

/* ---- the stride adapters, with a fake implementation ---- */

struct wide_write {
    struct rhema_storage_write w;
    uint64_t later[2];
};
struct wide_batch {
    struct rhema_storage_batch b;
    uint64_t later;
};
struct wide_value {
    struct rhema_storage_value v;
    uint64_t later;
};

static int calls;
static const void *seen;

/* A plugin's batch(): indexes w[i], as it may, and stamps new_version. */
static int fake_batch(rhema_storage_conn *c, struct rhema_storage_write *w, size_t n)
{
    (void)c;
    calls++;
    seen = w;
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(w[i].size, sizeof w[i]);
        w[i].new_version = 100 + i + strlen(w[i].key);
    }
    return 0;
}

static int fake_group(rhema_storage_conn *c, struct rhema_storage_batch *g, size_t n)
{
    (void)c;
    calls++;
    seen = g;
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(g[i].size, sizeof g[i]);
        g[i].result = g[i].n == 1 ? RHEMA_ECONFLICT : 0;
        for (size_t j = 0; j < g[i].n; j++)
            g[i].writes[j].new_version = 10 * (i + 1) + j;
    }
    return 0;
}

static int fake_get_many(rhema_storage_conn *c, const char *const *ns, const char *const *keys,
                         size_t n, struct rhema_storage_value *out, int *rcs)
{
    (void)c, (void)ns;
    calls++;
    seen = out;
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(out[i].size, sizeof out[i]);
        out[i].data = keys[i];
        out[i].len = strlen(keys[i]);
        out[i].version = 7 + i;
        rcs[i] = 0;
    }
    return 0;
}

static void batch_native_and_wide(void **state)
{
    (void)state;
    const char *why = NULL;
    struct rhema_storage_write native[2] = {
        {.size = sizeof native[0], .op = RHEMA_WRITE_PUT, .ns = "ns", .key = "a"},
        {.size = sizeof native[0], .op = RHEMA_WRITE_PUT, .ns = "ns", .key = "bb"}};
    calls = 0;
    assert_int_equal(rhema_storage_call_batch(fake_batch, NULL, native, 2, &why), 0);
    assert_int_equal(calls, 1);
    assert_ptr_equal(seen, native); /* the same stride: no copy */
    assert_int_equal(native[1].new_version, 103);

    struct wide_write wide[3];
    memset(wide, 0, sizeof wide);
    const char *keys[3] = {"a", "bb", "ccc"};
    for (size_t i = 0; i < 3; i++) {
        wide[i].w = (struct rhema_storage_write){
            .size = sizeof wide[i], .op = RHEMA_WRITE_PUT, .ns = "ns", .key = keys[i]};
        wide[i].later[0] = wide[i].later[1] = 0xabc;
    }
    assert_int_equal(rhema_storage_call_batch(fake_batch, NULL, &wide[0].w, 3, &why), 0);
    assert_ptr_not_equal(seen, wide); /* a copy in the plugin's layout */
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(wide[i].w.new_version, 100 + i + strlen(keys[i]));
        assert_int_equal(wide[i].later[0], 0xabc);
        assert_int_equal(wide[i].later[1], 0xabc);
        assert_int_equal(wide[i].w.size, sizeof wide[i]); /* the caller's size stays */
    }

    calls = 0;
    wide[0].w.size = RHEMA_STORAGE_WRITE_SIZE_0 - 8;
    assert_int_equal(rhema_storage_call_batch(fake_batch, NULL, &wide[0].w, 3, &why), RHEMA_EINVAL);
    assert_non_null(why);
    assert_int_equal(calls, 0);
}

static void group_of_wide_batches(void **state)
{
    (void)state;
    const char *why = NULL;
    struct wide_write a[2], b[1];
    struct wide_batch g[2];
    memset(a, 0, sizeof a), memset(b, 0, sizeof b), memset(g, 0, sizeof g);
    for (size_t i = 0; i < 2; i++)
        a[i].w = (struct rhema_storage_write){
            .size = sizeof a[i], .op = RHEMA_WRITE_PUT, .ns = "ns", .key = "a"};
    b[0].w = (struct rhema_storage_write){
        .size = sizeof b[0], .op = RHEMA_WRITE_PUT, .ns = "ns", .key = "b"};
    g[0].b =
        (struct rhema_storage_batch){.size = sizeof g[0], .result = -99, .writes = &a[0].w, .n = 2};
    g[1].b =
        (struct rhema_storage_batch){.size = sizeof g[1], .result = -99, .writes = &b[0].w, .n = 1};
    g[0].later = g[1].later = 5;
    assert_int_equal(rhema_storage_call_group(fake_group, NULL, &g[0].b, 2, &why), 0);
    assert_int_equal(g[0].b.result, 0);
    assert_int_equal(g[1].b.result, RHEMA_ECONFLICT);
    assert_int_equal(a[0].w.new_version, 10);
    assert_int_equal(a[1].w.new_version, 11);
    assert_int_equal(b[0].w.new_version, 20);
    assert_int_equal(g[0].later, 5);
    assert_int_equal(g[1].later, 5);
    assert_ptr_equal(g[0].b.writes, &a[0].w);

    /* native batches, one member with wide writes: still adapted */
    struct rhema_storage_batch ng[1] = {
        {.size = sizeof ng[0], .result = -99, .writes = &a[0].w, .n = 2}};
    a[0].w.new_version = a[1].w.new_version = 0;
    assert_int_equal(rhema_storage_call_group(fake_group, NULL, ng, 1, &why), 0);
    assert_ptr_not_equal(seen, ng);
    assert_int_equal(a[1].w.new_version, 11);

    g[0].b.size = RHEMA_STORAGE_BATCH_SIZE_0 - 1;
    assert_int_equal(rhema_storage_call_group(fake_group, NULL, &g[0].b, 2, &why), RHEMA_EINVAL);
}

static void get_many_wide_values(void **state)
{
    (void)state;
    const char *why = NULL;
    const char *ns[2] = {"ns", "ns"}, *keys[2] = {"one", "three"};
    struct wide_value v[2];
    int rcs[2] = {-1, -1};
    memset(v, 0, sizeof v);
    v[0].v.size = v[1].v.size = sizeof v[0];
    v[0].later = v[1].later = 3;
    assert_int_equal(
        rhema_storage_call_get_many(fake_get_many, NULL, ns, keys, 2, &v[0].v, rcs, &why), 0);
    assert_int_equal(rcs[1], 0);
    assert_int_equal(v[1].v.len, 5);
    assert_ptr_equal(v[1].v.data, keys[1]);
    assert_int_equal(v[1].v.version, 8);
    assert_int_equal(v[0].later, 3);
    assert_int_equal(v[1].later, 3);
    assert_int_equal(v[1].v.size, sizeof v[1]);
    v[0].v.size = 4;
    assert_int_equal(
        rhema_storage_call_get_many(fake_get_many, NULL, ns, keys, 2, &v[0].v, rcs, &why),
        RHEMA_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        /* clang-format off */
        cmocka_unit_test(checks_keys_and_leases),
        cmocka_unit_test(checks_writes),
        cmocka_unit_test(checks_sequenced_writes),
        cmocka_unit_test(batch_and_group_checks),
        cmocka_unit_test(batch_native_and_wide),
        cmocka_unit_test(group_of_wide_batches),
        cmocka_unit_test(get_many_wide_values),
        /* clang-format on */
    };
    return cmocka_run_group_tests_name("plugin_util", tests, NULL, NULL);
}
