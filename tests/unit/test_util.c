/*
 * test_util -- the error setters of core/util.c: rhema_set_error() replaces
 * a message already there and returns the code; rhema_set_errbuf() fills
 * at most RHEMA_ERRMSG_MAX bytes and never ends on half a UTF-8 sequence.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <rhema/plugin.h>

#include "util.h"

static void set_error_replaces_and_returns_code(void **state)
{
    (void)state;
    char *err = NULL;
    assert_int_equal(rhema_set_error(&err, RHEMA_EINVAL, "field '%s': bad", "x"), RHEMA_EINVAL);
    assert_string_equal(err, "field 'x': bad");
    assert_int_equal(rhema_set_error(&err, RHEMA_EIO, "second %d", 2), RHEMA_EIO);
    assert_string_equal(err, "second 2"); /* the first one was freed (LeakSanitizer) */
    free(err);
    assert_int_equal(rhema_set_error(NULL, RHEMA_ENOMEM, "nobody listens"), RHEMA_ENOMEM);
}

static void set_errbuf_fits_and_returns_code(void **state)
{
    (void)state;
    char err[RHEMA_ERRMSG_MAX];
    assert_int_equal(rhema_set_errbuf(err, RHEMA_ENOTFOUND, "session '%s' not found", "s1"),
                     RHEMA_ENOTFOUND);
    assert_string_equal(err, "session 's1' not found");
    assert_int_equal(rhema_set_errbuf(NULL, RHEMA_EINVAL, "x"), RHEMA_EINVAL);
}

/* A 2-, 3- and 4-byte character across the cut at every offset: never half of one. */
static void set_errbuf_cuts_at_a_character(void **state)
{
    (void)state;
    static const char *const chars[] = {"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"};
    char in[RHEMA_ERRMSG_MAX + 16], err[RHEMA_ERRMSG_MAX];
    for (size_t c = 0; c < 3; c++) {
        size_t w = strlen(chars[c]);
        for (size_t pad = RHEMA_ERRMSG_MAX - 6; pad < RHEMA_ERRMSG_MAX; pad++) {
            memset(in, 'a', pad);
            memcpy(in + pad, chars[c], w);
            memset(in + pad + w, 'b', 8);
            in[pad + w + 8] = '\0';
            rhema_set_errbuf(err, RHEMA_EINVAL, "%s", in);
            size_t n = strlen(err);
            assert_true(n < RHEMA_ERRMSG_MAX);
            if (pad + w <= RHEMA_ERRMSG_MAX - 1) /* the character fits: kept whole */
                assert_memory_equal(err + pad, chars[c], w);
            else /* it does not: cut before it */
                assert_int_equal(n, pad);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(set_error_replaces_and_returns_code),
        cmocka_unit_test(set_errbuf_fits_and_returns_code),
        cmocka_unit_test(set_errbuf_cuts_at_a_character),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
