/*
 * test_apikey -- core/auth/apikey.c: the key format, its checksum (a typo
 * is refused before any lookup), the stored hash form.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <sodium.h>

#include "auth/apikey.h"

static void test_generated_keys_parse(void **state)
{
    (void)state;
    for (int i = 0; i < 200; i++) {
        char key[RHEMA_APIKEY_LEN + 1], id[RHEMA_APIKEY_ID_LEN + 1], got[RHEMA_APIKEY_ID_LEN + 1];
        rhema_apikey_generate(key, id);
        assert_int_equal(strlen(key), RHEMA_APIKEY_LEN);
        assert_memory_equal(key, "rk_", 3);
        assert_int_equal(key[3 + RHEMA_APIKEY_ID_LEN], '_');
        assert_int_equal(rhema_apikey_parse(key, strlen(key), got), RHEMA_APIKEY_OK);
        assert_string_equal(got, id);
        assert_true(rhema_apikey_id_valid(id));
    }
}

static void test_two_keys_differ(void **state)
{
    (void)state;
    char a[RHEMA_APIKEY_LEN + 1], b[RHEMA_APIKEY_LEN + 1], ia[13], ib[13];
    rhema_apikey_generate(a, ia);
    rhema_apikey_generate(b, ib);
    assert_string_not_equal(a, b);
    assert_string_not_equal(ia, ib);
}

/* Every single-character change of a key is refused by the form or the checksum. */
static void test_every_typo_is_caught(void **state)
{
    (void)state;
    static const char alphabet[] =
        "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-";
    char key[RHEMA_APIKEY_LEN + 1], id[13], out[13];
    rhema_apikey_generate(key, id);
    for (size_t pos = 0; pos < RHEMA_APIKEY_LEN; pos++) {
        for (const char *c = alphabet; *c; c++) {
            char typo[RHEMA_APIKEY_LEN + 1];
            if (*c == key[pos])
                continue;
            memcpy(typo, key, sizeof typo);
            typo[pos] = *c;
            assert_int_not_equal(rhema_apikey_parse(typo, RHEMA_APIKEY_LEN, out), RHEMA_APIKEY_OK);
        }
    }
    /* two swapped neighbours in the secret: the checksum */
    char swap[RHEMA_APIKEY_LEN + 1];
    memcpy(swap, key, sizeof swap);
    size_t p = 3 + RHEMA_APIKEY_ID_LEN + 1;
    while (swap[p] == swap[p + 1])
        p++;
    char t = swap[p];
    swap[p] = swap[p + 1];
    swap[p + 1] = t;
    assert_int_equal(rhema_apikey_parse(swap, RHEMA_APIKEY_LEN, out), RHEMA_APIKEY_CHECKSUM);
}

static void test_malformed(void **state)
{
    (void)state;
    char key[RHEMA_APIKEY_LEN + 1], id[13], out[13];
    rhema_apikey_generate(key, id);
    assert_int_equal(rhema_apikey_parse(key, RHEMA_APIKEY_LEN - 1, out), RHEMA_APIKEY_MALFORMED);
    assert_int_equal(rhema_apikey_parse("", 0, out), RHEMA_APIKEY_MALFORMED);
    assert_int_equal(rhema_apikey_parse("Bearer", 6, out), RHEMA_APIKEY_MALFORMED);
    char other[RHEMA_APIKEY_LEN + 1];
    memcpy(other, key, sizeof other);
    other[0] = 'x'; /* "xk_" */
    assert_int_equal(rhema_apikey_parse(other, RHEMA_APIKEY_LEN, out), RHEMA_APIKEY_MALFORMED);
    memcpy(other, key, sizeof other);
    other[20] = '\0'; /* an embedded NUL */
    assert_int_equal(rhema_apikey_parse(other, RHEMA_APIKEY_LEN, out), RHEMA_APIKEY_MALFORMED);
}

static void test_stored_form(void **state)
{
    (void)state;
    char key[RHEMA_APIKEY_LEN + 1], id[13], sid[13], stored[RHEMA_APIKEY_STORED_LEN + 1];
    unsigned char h[RHEMA_APIKEY_HASH_LEN], want[RHEMA_APIKEY_HASH_LEN];
    rhema_apikey_generate(key, id);
    rhema_apikey_stored(key, RHEMA_APIKEY_LEN, stored);
    assert_int_equal(strlen(stored), RHEMA_APIKEY_STORED_LEN);
    assert_int_equal(rhema_apikey_stored_parse(stored, sid, h), 0);
    assert_string_equal(sid, id);
    rhema_apikey_hash(key, RHEMA_APIKEY_LEN, want);
    assert_memory_equal(h, want, sizeof h);
    /* the hash is of the whole key: another secret, another hash */
    char key2[RHEMA_APIKEY_LEN + 1], id2[13];
    rhema_apikey_generate(key2, id2);
    rhema_apikey_hash(key2, RHEMA_APIKEY_LEN, want);
    assert_memory_not_equal(h, want, sizeof h);

    char bad[RHEMA_APIKEY_STORED_LEN + 2];
    memcpy(bad, stored, sizeof stored);
    bad[RHEMA_APIKEY_ID_LEN] = '$';
    assert_int_equal(rhema_apikey_stored_parse(bad, sid, h), -1);
    memcpy(bad, stored, sizeof stored);
    bad[RHEMA_APIKEY_STORED_LEN - 1] = 'G'; /* not hex */
    assert_int_equal(rhema_apikey_stored_parse(bad, sid, h), -1);
    memcpy(bad, stored, sizeof stored);
    bad[RHEMA_APIKEY_STORED_LEN - 1] = 'A'; /* upper-case hex is not the form */
    assert_int_equal(rhema_apikey_stored_parse(bad, sid, h), -1);
    assert_int_equal(rhema_apikey_stored_parse(key, sid, h), -1); /* the key itself */
    assert_int_equal(rhema_apikey_stored_parse("", sid, h), -1);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_generated_keys_parse), cmocka_unit_test(test_two_keys_differ),
        cmocka_unit_test(test_every_typo_is_caught), cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_stored_form),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
