/*
 * test_json_fields -- the JSON helpers of core/json_fields.c that every
 * answer goes through: rhema_json_dumps() writes reals in the shortest
 * form that reads back as the same double, and rhema_json_merge_patch()
 * follows RFC 7396 (its appendix A's cases).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "json_fields.h"

static void assert_dumps(json_t *v, const char *want)
{
    char *text = rhema_json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
    assert_non_null(text);
    assert_string_equal(text, want);
    free(text);
    json_decref(v);
}

static void reals_are_shortest(void **state)
{
    (void)state;
    assert_dumps(json_real(3.2), "3.2");
    assert_dumps(json_real(0.1), "0.1");
    assert_dumps(json_real(3.0), "3.0");
    assert_dumps(json_real(-2.5e-7), "-2.5e-7");
    assert_dumps(json_pack("{s:f,s:[f,i]}", "a", 3.2, "b", 0.25, 7), "{\"a\":3.2,\"b\":[0.25,7]}");
    assert_dumps(json_pack("{s:s}", "no", "reals"), "{\"no\":\"reals\"}");
}

/* Each real at its own precision, whatever the others need. */
static void reals_each_shortest(void **state)
{
    (void)state;
    assert_dumps(json_pack("[f,f,f]", 3.2, 1.0 / 3, 1e300), "[3.2,0.3333333333333333,1e300]");
    json_t *v = json_pack("{s:f,s:f}", "b", 0.1, "a", 2.0 / 3);
    char *text = rhema_json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS);
    assert_string_equal(text, "{\"a\":0.6666666666666666,\"b\":0.1}");
    free(text);
    json_decref(v);
}

/* Everything but the reals exactly as jansson writes it. */
static void same_bytes_as_jansson(void **state)
{
    (void)state;
    json_t *v = json_pack("{s:s,s:s,s:s,s:I,s:I,s:[],s:{},s:[b,b,n],s:{s:[f,{s:f}]},s:s}", "ctl",
                          "a\"b\\c\b\f\n\r\t\x01\x1f\x7f/", "utf8", "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80",
                          "k\"ey\n", "v", "int", (json_int_t)-42, "min", (json_int_t)INT64_MIN, "ea",
                          "eo", "lits", 1, 0, "nest", "x", 0.5, "y", 0.25, "z", "last");
    assert_non_null(v);
    for (int sorted = 0; sorted < 2; sorted++) {
        size_t f = JSON_COMPACT | (sorted ? JSON_SORT_KEYS : JSON_PRESERVE_ORDER);
        char *ours = rhema_json_dumps(v, f), *theirs = json_dumps(v, f);
        assert_non_null(ours);
        assert_string_equal(ours, theirs);
        free(ours);
        free(theirs);
    }
    /* a bare value only with JSON_ENCODE_ANY, as json_dumps() */
    json_t *r = json_real(1.5);
    assert_null(rhema_json_dumps(r, JSON_COMPACT));
    json_decref(r);
    json_decref(v);
}

/* Whatever the values, every real reads back as the same double. */
static void reals_round_trip(void **state)
{
    (void)state;
    const double values[] = {1.0 / 3, 3.2, 0.1 + 0.2, 1e300, 5e-324, 2.2250738585072014e-308,
                             123456789.123456789, -0.0, 9007199254740993.0};
    json_t *a = json_array();
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++)
        json_array_append_new(a, json_real(values[i]));
    char *text = rhema_json_dumps(a, JSON_COMPACT);
    assert_non_null(text);
    json_t *back = json_loads(text, 0, NULL);
    assert_non_null(back);
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++)
        assert_true(json_real_value(json_array_get(back, i)) == values[i]);
    free(text);
    json_decref(back);
    json_decref(a);
}

static void assert_patch(const char *target, const char *patch, const char *want)
{
    json_t *t = json_loads(target, JSON_DECODE_ANY, NULL), *p = json_loads(patch, JSON_DECODE_ANY, NULL);
    assert_non_null(t);
    assert_non_null(p);
    char *before = json_dumps(t, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    json_t *out = rhema_json_merge_patch(t, p);
    assert_non_null(out);
    char *got = json_dumps(out, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    assert_string_equal(got, want);
    char *after = json_dumps(t, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    assert_string_equal(before, after); /* the target is not changed */
    free(before);
    free(after);
    free(got);
    json_decref(out);
    json_decref(t);
    json_decref(p);
}

/* RFC 7396, appendix A. */
static void merge_patch_rfc7396(void **state)
{
    (void)state;
    assert_patch("{\"a\":\"b\"}", "{\"a\":\"c\"}", "{\"a\":\"c\"}");
    assert_patch("{\"a\":\"b\"}", "{\"b\":\"c\"}", "{\"a\":\"b\",\"b\":\"c\"}");
    assert_patch("{\"a\":\"b\"}", "{\"a\":null}", "{}");
    assert_patch("{\"a\":\"b\",\"b\":\"c\"}", "{\"a\":null}", "{\"b\":\"c\"}");
    assert_patch("{\"a\":[\"b\"]}", "{\"a\":\"c\"}", "{\"a\":\"c\"}");
    assert_patch("{\"a\":\"c\"}", "{\"a\":[\"b\"]}", "{\"a\":[\"b\"]}");
    assert_patch("{\"a\":{\"b\":\"c\"}}", "{\"a\":{\"b\":\"d\",\"c\":null}}", "{\"a\":{\"b\":\"d\"}}");
    assert_patch("{\"a\":[{\"b\":\"c\"}]}", "{\"a\":[1]}", "{\"a\":[1]}");
    assert_patch("[\"a\",\"b\"]", "[\"c\",\"d\"]", "[\"c\",\"d\"]");
    assert_patch("{\"a\":\"b\"}", "[\"c\"]", "[\"c\"]");
    assert_patch("{\"a\":\"foo\"}", "null", "null");
    assert_patch("{\"a\":\"foo\"}", "\"bar\"", "\"bar\"");
    assert_patch("{\"e\":null}", "{\"a\":1}", "{\"a\":1,\"e\":null}");
    assert_patch("[1,2]", "{\"a\":\"b\",\"c\":null}", "{\"a\":\"b\"}");
    assert_patch("{}", "{\"a\":{\"bb\":{\"ccc\":null}}}", "{\"a\":{\"bb\":{}}}");
    /* the nested object of the target is shared by the copy: patching it must not change it */
    assert_patch("{\"a\":{\"b\":1,\"c\":2}}", "{\"a\":{\"b\":null}}", "{\"a\":{\"c\":2}}");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(reals_are_shortest),
        cmocka_unit_test(reals_each_shortest),
        cmocka_unit_test(same_bytes_as_jansson),
        cmocka_unit_test(reals_round_trip),
        cmocka_unit_test(merge_patch_rfc7396),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
