/*
 * test_loader -- the plugin loader refuses every broken plugin of
 * tests/plugins/ with one line naming the file and the mismatch, and loads
 * the real ones.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "plugin.h"

static const char *bad_dir(void)
{
    const char *d = getenv("RHEMA_TEST_PLUGIN_DIR");
    return d ? d : "tests/plugins/.libs";
}

static const char *good_dir(void)
{
    const char *d = getenv("RHEMA_PLUGIN_DIR");
    return d ? d : "plugins/.libs";
}

/* Load `file` from the broken-plugin dir; assert refusal with a message containing `want`. */
static void expect_refusal(const char *file, const char *want)
{
    struct rhema_plugin_registry *reg;
    const struct rhema_loaded_plugin *p = NULL;
    char path[1024], *err = NULL;
    snprintf(path, sizeof path, "%s/%s", bad_dir(), file);
    assert_int_equal(rhema_plugins_new(&reg), 0);
    int rc = rhema_plugin_load(reg, path, NULL, 0, &p, &err);
    assert_true(rc < 0);
    assert_null(p);
    assert_non_null(err);
    /* one line, naming the file and the mismatch */
    assert_null(strchr(err, '\n'));
    if (!strstr(err, file) || !strstr(err, want))
        fail_msg("message '%s' lacks '%s' or '%s'", err, file, want);
    assert_null(rhema_plugin_at(reg, 0));
    free(err);
    rhema_plugins_free(reg);
}

static void refuses_missing_symbol(void **state)
{
    (void)state;
    expect_refusal("bad_nosym.so", "no symbol rhema_plugin_init");
}

static void refuses_other_major(void **state)
{
    (void)state;
    char want[64];
    snprintf(want, sizeof want, "abi_major %d differs from the host's %d", RHEMA_ABI_MAJOR + 1,
             RHEMA_ABI_MAJOR);
    expect_refusal("bad_major.so", want);
}

static void refuses_previous_major(void **state)
{
    (void)state;
    char want[64];
    snprintf(want, sizeof want, "abi_major %d differs from the host's %d", RHEMA_ABI_MAJOR - 1,
             RHEMA_ABI_MAJOR);
    expect_refusal("bad_old_major.so", want);
}

/*
 * A plugin of a newer storage minor whose vtable stops where minor 0 ends
 * lacks get_many, a member of the host's minor: refused, naming both minors.
 */
static void refuses_newer_minor_too_small(void **state)
{
    (void)state;
    char want[160];
    snprintf(want, sizeof want,
             "size %zu is smaller than the %zu bytes storage minor %d requires "
             "(the plugin says minor %d)",
             offsetof(struct rhema_storage_plugin, get_many), sizeof(struct rhema_storage_plugin),
             RHEMA_STORAGE_ABI_MINOR, RHEMA_STORAGE_ABI_MINOR + 7);
    expect_refusal("bad_minor.so", want);
}

/*
 * SQLite's iVersion rule: a plugin built against a newer storage minor,
 * whose vtable holds every member of the host's minor and more, loads; the
 * host keeps the members it knows and ignores the rest.
 */
static void loads_newer_minor(void **state)
{
    (void)state;
    struct rhema_plugin_registry *reg;
    const struct rhema_loaded_plugin *p = NULL;
    char path[1024], *err = NULL;
    snprintf(path, sizeof path, "%s/good_newer.so", bad_dir());
    assert_int_equal(rhema_plugins_new(&reg), 0);
    int rc = rhema_plugin_load(reg, path, NULL, 0, &p, &err);
    if (rc)
        fail_msg("good_newer: %s", err);
    assert_string_equal(p->name, "newer");
    assert_int_equal(p->abi_minor, RHEMA_STORAGE_ABI_MINOR + 7);
    assert_true(p->vt.base.size > sizeof(struct rhema_storage_plugin));
    assert_non_null(p->vt.storage.scan);
    assert_non_null(p->vt.storage.get_many); /* the host's last member, present */
    /* and it is callable through the host-side copy */
    const char *ns[1] = {"ns"}, *keys[1] = {"k"};
    struct rhema_storage_value out[1] = {{.size = sizeof(struct rhema_storage_value)}};
    int rcs[1] = {0};
    assert_int_equal(p->vt.storage.get_many(NULL, ns, keys, 1, out, rcs), 0);
    assert_int_equal(rcs[0], RHEMA_ENOTFOUND);
    rhema_plugins_free(reg);
}

/* Minors are per kind: moving storage's does not move the others'. */
static void minors_are_per_kind(void **state)
{
    (void)state;
    struct rhema_plugin_registry *reg;
    const struct rhema_loaded_plugin *p = NULL;
    char *err = NULL;
    assert_int_equal(rhema_plugins_new(&reg), 0);
    int rc = rhema_plugin_load(reg, "round_robin", good_dir(), RHEMA_KIND_BALANCER, &p, &err);
    if (rc)
        fail_msg("round_robin: %s", err);
    assert_int_equal(p->abi_minor, RHEMA_BALANCER_ABI_MINOR);
    rc = rhema_plugin_load(reg, "memory", good_dir(), RHEMA_KIND_STORAGE, &p, &err);
    if (rc)
        fail_msg("memory: %s", err);
    assert_int_equal(p->abi_minor, RHEMA_STORAGE_ABI_MINOR);
    assert_non_null(p->vt.storage.check); /* minor 4 */
    assert_int_equal(RHEMA_STORAGE_ABI_MINOR, 4);
    assert_int_equal(RHEMA_BALANCER_ABI_MINOR, 0);
    assert_int_equal(RHEMA_COMPRESS_ABI_MINOR, 0);
    assert_int_equal(RHEMA_CIPHER_ABI_MINOR, 0);
    rhema_plugins_free(reg);
}

static void refuses_short_size(void **state)
{
    (void)state;
    char want[96];
    snprintf(want, sizeof want, "size %zu is smaller than the %zu bytes storage minor %d requires",
             offsetof(struct rhema_storage_plugin, scan), sizeof(struct rhema_storage_plugin),
             RHEMA_STORAGE_ABI_MINOR);
    expect_refusal("bad_size.so", want);
}

static void refuses_unknown_kind(void **state)
{
    (void)state;
    expect_refusal("bad_kind.so", "unknown kind 99");
}

static void refuses_null_required_method(void **state)
{
    (void)state;
    expect_refusal("bad_nullmethod.so", "required method 'scan' is NULL");
}

static void refuses_duplicate_name(void **state)
{
    (void)state;
    struct rhema_plugin_registry *reg;
    const struct rhema_loaded_plugin *mem = NULL, *dup = NULL;
    char path[1024], *err = NULL;
    assert_int_equal(rhema_plugins_new(&reg), 0);
    assert_int_equal(rhema_plugin_load(reg, "memory", good_dir(), RHEMA_KIND_STORAGE, &mem, &err),
                     0);
    assert_non_null(mem);
    snprintf(path, sizeof path, "%s/dup_memory.so", bad_dir());
    assert_true(rhema_plugin_load(reg, path, NULL, 0, &dup, &err) < 0);
    assert_null(dup);
    if (!strstr(err, "dup_memory.so") || !strstr(err, "storage plugin 'memory' is already loaded from") ||
        !strstr(err, mem->path))
        fail_msg("unexpected message '%s'", err);
    free(err);
    /* the registry still holds exactly the first one */
    assert_ptr_equal(rhema_plugin_at(reg, 0), mem);
    assert_null(rhema_plugin_at(reg, 1));
    rhema_plugins_free(reg);
}

static void refuses_wrong_kind_request(void **state)
{
    (void)state;
    struct rhema_plugin_registry *reg;
    const struct rhema_loaded_plugin *p = NULL;
    char *err = NULL;
    assert_int_equal(rhema_plugins_new(&reg), 0);
    assert_true(rhema_plugin_load(reg, "memory", good_dir(), RHEMA_KIND_CIPHER, &p, &err) < 0);
    assert_non_null(strstr(err, "cipher plugin 'memory' not found"));
    free(err);
    rhema_plugins_free(reg);
}

static void refuses_missing_file(void **state)
{
    (void)state;
    struct rhema_plugin_registry *reg;
    const struct rhema_loaded_plugin *p = NULL;
    char *err = NULL;
    assert_int_equal(rhema_plugins_new(&reg), 0);
    assert_int_equal(rhema_plugin_load(reg, "/nonexistent/x.so", NULL, 0, &p, &err),
                     RHEMA_ENOTFOUND);
    assert_non_null(strstr(err, "/nonexistent/x.so"));
    free(err);
    err = NULL;
    assert_int_equal(rhema_plugin_load(reg, "nosuchplugin", good_dir(), 0, &p, &err),
                     RHEMA_ENOTFOUND);
    assert_non_null(strstr(err, "nosuchplugin"));
    free(err);
    rhema_plugins_free(reg);
}

static void loads_real_plugins(void **state)
{
    (void)state;
    struct rhema_plugin_registry *reg;
    const struct rhema_loaded_plugin *p = NULL, *again = NULL;
    char *err = NULL;
    assert_int_equal(rhema_plugins_new(&reg), 0);
    int rc = rhema_plugin_load(reg, "memory", good_dir(), RHEMA_KIND_STORAGE, &p, &err);
    if (rc)
        fail_msg("memory: %s", err);
    assert_string_equal(p->name, "memory");
    assert_int_equal(p->kind, RHEMA_KIND_STORAGE);
    assert_non_null(p->vt.storage.open);
    assert_ptr_equal(rhema_plugin_find(reg, RHEMA_KIND_STORAGE, "memory"), p);
    /* loading the same file again returns the first load */
    if (rhema_plugin_load(reg, p->path, NULL, 0, &again, &err) != 0)
        fail_msg("memory again: %s", err);
    assert_ptr_equal(again, p);
    assert_null(rhema_plugin_at(reg, 1));
    rhema_plugins_free(reg);
}

static void optional_member_reads_null(void **state)
{
    (void)state;
    struct rhema_plugin_registry *reg;
    const struct rhema_loaded_plugin *p = NULL;
    char path[1024], *err = NULL;
    snprintf(path, sizeof path, "%s/good_optional.so", bad_dir());
    assert_int_equal(rhema_plugins_new(&reg), 0);
    int rc = rhema_plugin_load(reg, path, NULL, 0, &p, &err);
    if (rc)
        fail_msg("good_optional: %s", err);
    assert_string_equal(p->name, "optional");
    assert_null(p->vt.storage.backup);
    assert_null(p->vt.storage.get_many); /* after its minor: read as NULL */
    assert_null(p->vt.storage.rate);
    assert_int_equal(p->abi_minor, 0);
    assert_non_null(p->vt.storage.scan);
    rhema_plugins_free(reg);
}

/*
 * A plugin of storage minor 1 (before rate()) loads on a minor-2 host; its
 * get_many is there and rate reads as NULL (the host then keeps one limit
 * per node), though the bytes after its vtable hold a function pointer.
 */
static void loads_minor1_without_rate(void **state)
{
    (void)state;
    struct rhema_plugin_registry *reg;
    const struct rhema_loaded_plugin *p = NULL;
    char path[1024], *err = NULL;
    snprintf(path, sizeof path, "%s/good_minor1.so", bad_dir());
    assert_int_equal(rhema_plugins_new(&reg), 0);
    int rc = rhema_plugin_load(reg, path, NULL, 0, &p, &err);
    if (rc)
        fail_msg("good_minor1: %s", err);
    assert_string_equal(p->name, "minor1");
    assert_int_equal(p->abi_minor, 1);
    assert_non_null(p->vt.storage.get_many);
    assert_null(p->vt.storage.rate);
    assert_null(p->vt.storage.watch); /* minor 3's members read as NULL too */
    assert_null(p->vt.storage.unwatch);
    rhema_plugins_free(reg);
}

/*
 * A plugin of storage minor 3 (before check()) loads on a minor-4 host; its
 * rate is there and check reads as NULL (rhemad -t then says its group is
 * checked at start), though the bytes after its vtable hold a function
 * pointer.
 */
static void loads_minor3_without_check(void **state)
{
    (void)state;
    struct rhema_plugin_registry *reg;
    const struct rhema_loaded_plugin *p = NULL;
    char path[1024], *err = NULL;
    snprintf(path, sizeof path, "%s/good_minor3.so", bad_dir());
    assert_int_equal(rhema_plugins_new(&reg), 0);
    int rc = rhema_plugin_load(reg, path, NULL, 0, &p, &err);
    if (rc)
        fail_msg("good_minor3: %s", err);
    assert_string_equal(p->name, "minor3");
    assert_int_equal(p->abi_minor, 3);
    assert_non_null(p->vt.storage.rate);
    assert_null(p->vt.storage.check);
    rhema_plugins_free(reg);
}

static void call_vlog(const struct rhema_host *h, const char *fmt, ...) RHEMA_PRINTF_LIKE(2, 3);
static void call_vlog(const struct rhema_host *h, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    h->vlog(RHEMA_LOG_DEBUG, "test", fmt, ap);
    va_end(ap);
}

static void host_table_is_complete(void **state)
{
    (void)state;
    const struct rhema_host *h = rhema_host_get();
    assert_int_equal(h->abi_major, RHEMA_ABI_MAJOR);
    assert_int_equal(h->abi_minor, RHEMA_HOST_ABI_MINOR);
    assert_int_equal(h->size, sizeof(struct rhema_host));
    assert_non_null(h->vlog);
    call_vlog(h, "vlog %s %d", "works", 1);
    assert_non_null(h->log);
    assert_non_null(h->set_error);
    assert_non_null(h->cfg_string);
    assert_non_null(h->cfg_int);
    assert_non_null(h->cfg_bool);
    assert_non_null(h->cfg_double);
    assert_non_null(h->monotonic_ns);
    char *err = NULL;
    assert_int_equal(h->set_error(&err, RHEMA_EIO, "disk %s", "full"), RHEMA_EIO);
    assert_string_equal(err, "disk full");
    free(err);
    assert_int_equal(h->set_error(NULL, RHEMA_EINVAL, "ignored"), RHEMA_EINVAL);
    int m = h->metric_register("test", "ops_total", "ops", 0);
    assert_true(m >= 0);
    assert_int_equal(h->metric_register("test", "ops_total", "ops", 0), m);
    uint64_t t1 = h->monotonic_ns(), t2 = h->monotonic_ns();
    assert_true(t2 >= t1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(refuses_missing_symbol),
        cmocka_unit_test(refuses_other_major),
        cmocka_unit_test(refuses_previous_major),
        cmocka_unit_test(refuses_newer_minor_too_small),
        cmocka_unit_test(loads_newer_minor),
        cmocka_unit_test(minors_are_per_kind),
        cmocka_unit_test(refuses_short_size),
        cmocka_unit_test(refuses_unknown_kind),
        cmocka_unit_test(refuses_null_required_method),
        cmocka_unit_test(refuses_duplicate_name),
        cmocka_unit_test(refuses_wrong_kind_request),
        cmocka_unit_test(refuses_missing_file),
        cmocka_unit_test(loads_real_plugins),
        cmocka_unit_test(optional_member_reads_null),
        cmocka_unit_test(loads_minor1_without_rate),
        cmocka_unit_test(loads_minor3_without_check),
        cmocka_unit_test(host_table_is_complete),
    };
    return cmocka_run_group_tests_name("loader", tests, NULL, NULL);
}
