/*
 * test_keybackup -- the key backup directory (core/keybackup.c): which
 * names a client may use, the automatic names and their times, and pruning
 * by count and by age that never removes the newest nor a file a client
 * named.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "keybackup.h"

#define DAY 86400000ull

static int name_ok(const char *s)
{
    const char *why;
    return rhema_keybackup_name_check(s, strlen(s), &why) == 0;
}

static void names_a_client_may_use(void **state)
{
    (void)state;
    const char *why = NULL;
    char longest[RHEMA_KEYBACKUP_NAME_MAX + 2];
    assert_true(name_ok("k.bak"));
    assert_true(name_ok("before-upgrade_2026.12.03.bak"));
    assert_true(name_ok("keyring-20261203T080000-123Z.bak"));
    memset(longest, 'a', sizeof longest);
    memcpy(longest + RHEMA_KEYBACKUP_NAME_MAX - 4, ".bak", 5);
    assert_true(name_ok(longest)); /* exactly the limit */
    memset(longest, 'a', sizeof longest);
    memcpy(longest + RHEMA_KEYBACKUP_NAME_MAX - 3, ".bak", 5);
    assert_false(name_ok(longest)); /* one more */
    static const char *const bad[] = {"", ".bak", "..", ".", "../x.bak", "a/b.bak", "/etc/x.bak",
                                      ".hidden.bak", "x.bak.tmp", "rhema.db", "x.BAK", "x bak.bak",
                                      "x\\y.bak", "x:y.bak", "\xc3\xa9.bak", "x.bak/", "x.bak\n"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(rhema_keybackup_name_check(bad[i], strlen(bad[i]), &why), -1);
        assert_non_null(why);
    }
    /* a NUL inside (JSON can carry one): the length says so */
    assert_int_equal(rhema_keybackup_name_check("x.bak\0.txt", 10, &why), -1);
    assert_int_equal(rhema_keybackup_name_check("x.bak", 5, &why), 0);
    assert_null(why);
}

static void automatic_names_round_trip(void **state)
{
    (void)state;
    char n[RHEMA_KEYBACKUP_AUTO_MAX];
    uint64_t ms = 0;
    rhema_keybackup_auto_name(1764748800123ull, n);
    assert_string_equal(n, "keyring-20251203T080000-123Z.bak");
    assert_int_equal(rhema_keybackup_auto_parse(n, &ms), 0);
    assert_int_equal(ms, 1764748800123ull);
    assert_int_equal(rhema_keybackup_auto_parse("keyring-20251203T080000-123Z-17.bak", &ms), 0);
    assert_int_equal(ms, 1764748800123ull);
    assert_true(name_ok(n));
    static const char *const not_auto[] = {
        "keyring-20251203T080000-123Z", "keyring-20251203T080000-123Z.bak.tmp",
        "keyring-20251203T080000Z.bak", "keyring-20251303T080000-123Z.bak",
        "keyring-20251203T250000-123Z.bak", "keyring-20251203T080000-123Z-0.bak",
        "keyring-20251203T080000-123Z-1000.bak", "keyring-2025120xT080000-123Z.bak",
        "mine.bak", "rhema-sqlite-20251203T080000Z.bak"};
    for (size_t i = 0; i < sizeof not_auto / sizeof *not_auto; i++)
        assert_int_equal(rhema_keybackup_auto_parse(not_auto[i], &ms), -1);
}

struct fx {
    char dir[64];
    int fd;
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    char err[RHEMA_KEYRING_ERR_MAX];
    strcpy(f->dir, "/tmp/rhema-keybackup-XXXXXX");
    if (!mkdtemp(f->dir) || rhema_keybackup_dir_open(f->dir, &f->fd, err) != 0)
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    char cmd[128];
    close(f->fd);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    if (system(cmd) != 0)
        return -1;
    free(f);
    return 0;
}

static void touch(struct fx *f, const char *name)
{
    int fd = openat(f->fd, name, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "x", 1), 1);
    close(fd);
}

static int exists(struct fx *f, const char *name)
{
    struct stat sb;
    return fstatat(f->fd, name, &sb, AT_SYMLINK_NOFOLLOW) == 0;
}

/* Automatic backups at day d of a fixed epoch, d = 0..n-1. */
static uint64_t t0 = 1764748800000ull;

static void make_autos(struct fx *f, int n)
{
    char name[RHEMA_KEYBACKUP_AUTO_MAX];
    for (int d = 0; d < n; d++) {
        rhema_keybackup_auto_name(t0 + (uint64_t)d * DAY, name);
        touch(f, name);
    }
}

static int autos_left(struct fx *f, int n, int *newest_kept)
{
    char name[RHEMA_KEYBACKUP_AUTO_MAX];
    int left = 0;
    for (int d = 0; d < n; d++) {
        rhema_keybackup_auto_name(t0 + (uint64_t)d * DAY, name);
        left += exists(f, name);
        if (d == n - 1)
            *newest_kept = exists(f, name);
    }
    return left;
}

static void prune_by_count(void **state)
{
    struct fx *f = *state;
    char err[RHEMA_KEYRING_ERR_MAX];
    size_t pruned = 99;
    int newest = 0;
    make_autos(f, 10);
    touch(f, "named-by-a-client.bak");
    touch(f, "notes.txt");
    assert_int_equal(symlinkat("/nonexistent", f->fd, "keyring-20200101T000000-000Z.bak"), 0);
    assert_int_equal(rhema_keybackup_newest(f->fd), t0 + 9 * DAY);
    assert_int_equal(rhema_keybackup_prune(f->fd, 4, 0, t0 + 10 * DAY, &pruned, err), 0);
    assert_int_equal(pruned, 6);
    assert_int_equal(autos_left(f, 10, &newest), 4);
    assert_true(newest);
    assert_true(exists(f, "named-by-a-client.bak"));
    assert_true(exists(f, "notes.txt"));
    assert_true(exists(f, "keyring-20200101T000000-000Z.bak")); /* a link is not ours */
    /* again: nothing more to do */
    assert_int_equal(rhema_keybackup_prune(f->fd, 4, 0, t0 + 10 * DAY, &pruned, err), 0);
    assert_int_equal(pruned, 0);
}

static void prune_by_age_keeps_the_newest(void **state)
{
    struct fx *f = *state;
    char err[RHEMA_KEYRING_ERR_MAX];
    size_t pruned = 0;
    int newest = 0;
    make_autos(f, 10);
    /* older than 3 days at day 10: days 0..6 go */
    assert_int_equal(rhema_keybackup_prune(f->fd, 0, 3, t0 + 10 * DAY, &pruned, err), 0);
    assert_int_equal(pruned, 7);
    assert_int_equal(autos_left(f, 10, &newest), 3);
    /* years later, with both limits off but age: only the newest stays */
    assert_int_equal(rhema_keybackup_prune(f->fd, 0, 3, t0 + 1000 * DAY, &pruned, err), 0);
    assert_int_equal(pruned, 2);
    assert_int_equal(autos_left(f, 10, &newest), 1);
    assert_true(newest);
    /* no limits at all: nothing is removed */
    make_autos(f, 10);
    assert_int_equal(rhema_keybackup_prune(f->fd, 0, 0, t0 + 1000 * DAY, &pruned, err), 0);
    assert_int_equal(pruned, 0);
    assert_int_equal(autos_left(f, 10, &newest), 10);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(names_a_client_may_use),
        cmocka_unit_test(automatic_names_round_trip),
        cmocka_unit_test_setup_teardown(prune_by_count, setup, teardown),
        cmocka_unit_test_setup_teardown(prune_by_age_keeps_the_newest, setup, teardown),
    };
    return cmocka_run_group_tests_name("keybackup", tests, NULL, NULL);
}
