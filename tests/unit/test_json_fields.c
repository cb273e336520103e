/*
 * test_json_fields -- the JSON helpers of core/json_fields.c that every
 * answer goes through: rhema_json_dumps() writes reals in the shortest
 * form that reads back as the same double and all else as jansson does,
 * rhema_json_loadb() reads as json_loadb() does (hand-picked and random
 * documents, and the same with a byte changed), and
 * rhema_json_merge_patch() follows RFC 7396 (its appendix A's cases).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "json_fields.h"
#include "../json_same.h"

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

/* Compact, in order and sorted: the bytes jansson writes. */
static void assert_writes_as_jansson(json_t *v)
{
    for (int sorted = 0; sorted < 2; sorted++) {
        size_t f = JSON_COMPACT | (sorted ? JSON_SORT_KEYS : JSON_PRESERVE_ORDER);
        char *ours = rhema_json_dumps(v, f), *theirs = json_dumps(v, f);
        assert_non_null(ours);
        assert_string_equal(ours, theirs);
        free(ours);
        free(theirs);
    }
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
    assert_writes_as_jansson(v);
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

/* ---- the reader: rhema_json_loadb() answers as json_loadb() ---- */

/* The text read both ways; returns 1 when the reader alone (no jansson) read it. */
static int read_agrees(const char *text, size_t len, size_t flags)
{
    json_error_t je, re;
    json_t *theirs = json_loadb(text, len, flags, &je);
    json_t *fast = rhema_json_read(text, len, flags);
    json_t *ours = rhema_json_loadb(text, len, flags, &re);
    if (fast && !(theirs && json_same(fast, theirs)))
        fail_msg("the reader accepts what jansson reads otherwise: %.*s", (int)len, text);
    if (!theirs) {
        assert_null(ours);
        assert_string_equal(je.text, re.text);
        assert_int_equal(je.line, re.line);
        assert_int_equal(je.column, re.column);
    } else {
        assert_non_null(ours);
        assert_true(json_same(ours, theirs));
    }
    int by_reader = fast != NULL;
    json_decref(fast);
    json_decref(ours);
    json_decref(theirs);
    return by_reader;
}

static void reader_agrees_with_jansson(void **state)
{
    (void)state;
    /* read by the reader itself (the common documents) */
    static const char *const common[] = {
        "{\"topic\":\"plan\",\"participants\":[\"agent-1\",\"agent-2\"],\"status\":\"Active\"}",
        " {\"a\" : [ 1 , -2 , 0 , -0 , 123456789012345678 , 1.5 , -2.5e-7 , 1E3 , 0.1e+1 ] } \n",
        "{\"s\":\"caf\\u00e9 \\ud83d\\ude00 \\\"q\\\" \\\\ \\/ \\b\\f\\n\\r\\t \\u001F\\uFFFF\"}",
        "{\"u\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xed\x9f\xbf\xee\x80\x80\xf4\x8f\xbf\xbf\x7f\"}",
        "[true,false,null,{},[],\"\",{\"\":\"\"}]",
        "{\"a\":1,\"b\":{\"c\":[{\"d\":null}]},\"a\":2}", /* flags 0: the last one, in place */
        "{\"k\\u00e9y\":1,\"k\\n\":2}",
    };
    for (size_t i = 0; i < sizeof common / sizeof common[0]; i++)
        assert_true(read_agrees(common[i], strlen(common[i]), 0));
    /* left to jansson: errors, and what the reader is unsure of */
    static const char *const others[] = {
        "", " ", "1", "\"s\"", "null", "{", "[1,]", "{\"a\":1,}", "{\"a\" 1}", "{a:1}", "[01]",
        "[-]", "[.5]", "[1.]", "[1e]", "[1e+]", "[+1]", "[1true]", "[truex]", "[nul]",
        "[1234567890123456789]", "[9223372036854775808]", "[-9223372036854775809]", "[1e400]",
        "[1e-400]", "{\"a\":\"\\u0000\"}", "{\"\\u0000\":1}", "[\"\\ud800\"]", "[\"\\udc00\"]",
        "[\"\\ud800\\u0041\"]", "[\"\\u12\"]", "[\"\\x\"]", "[\"\t\"]", "[\"\x01\"]", "[\"\xc0\xaf\"]",
        "[\"\xed\xa0\x80\"]", "[\"\xf4\x90\x80\x80\"]", "[\"\xe2\x82\"]", "[\"\x80\"]", "[\"\xff\"]",
        "\xef\xbb\xbf{}", "{} x", "[1] [2]", "[\"abc", "{\"a\":1", "[[[[[[]]]]]", "{\"a\":1}}",
    };
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        read_agrees(others[i], strlen(others[i]), 0);
        read_agrees(others[i], strlen(others[i]), JSON_REJECT_DUPLICATES);
    }
    /* a NUL byte inside, and a duplicate refused with jansson's error */
    read_agrees("[\"a\0b\"]", 7, 0);
    read_agrees("{\"a\":1}\0", 8, 0);
    const char *dup = "{\"a\":1,\"b\":2,\"a\":3}";
    assert_false(read_agrees(dup, strlen(dup), JSON_REJECT_DUPLICATES));
    assert_true(read_agrees(dup, strlen(dup), 0));
    /* nesting past the reader's depth: jansson's answer (its own limit is 2048) */
    char deep[2 * 3000 + 2];
    for (int n = 60; n <= 3000; n += 2940 / 2) {
        memset(deep, '[', (size_t)n);
        memset(deep + n, ']', (size_t)n);
        read_agrees(deep, 2 * (size_t)n, 0);
    }
}

static uint64_t rng_state;
static unsigned rnd(unsigned n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (unsigned)(rng_state % n);
}

struct tbuf {
    char p[8192];
    size_t n;
};

static void put(struct tbuf *b, const char *s, size_t n)
{
    if (b->n + n < sizeof b->p) {
        memcpy(b->p + b->n, s, n);
        b->n += n;
    }
}

static void put_ws(struct tbuf *b)
{
    static const char ws[] = " \t\r\n";
    while (rnd(4) == 0)
        put(b, &ws[rnd(4)], 1);
}

/* A random string, its characters written plain, escaped or as \u escapes (pairs beyond U+FFFF). */
static void gen_string(struct tbuf *b)
{
    static const unsigned cps[] = {'a', 'Z', '0', ' ', '"', '\\', '/', '\b', '\n', '\t', 0x1f, 0x7f,
                                   0xe9, 0x2014, 0xd7ff, 0xe000, 0xfffd, 0x1f600, 0x10ffff};
    char tmp[16];
    put(b, "\"", 1);
    for (unsigned i = 0, n = rnd(8); i < n; i++) {
        unsigned cp = cps[rnd(sizeof cps / sizeof cps[0])];
        int how = (int)rnd(3);
        if (cp == '"' || cp == '\\' || cp < 0x20)
            how = how ? how : 1; /* never plain */
        if (how == 0 || (how == 1 && cp >= 0x80)) {
            unsigned char u[4];
            size_t k = 0;
            if (cp < 0x80)
                u[k++] = (unsigned char)cp;
            else if (cp < 0x800) {
                u[k++] = (unsigned char)(0xC0 | (cp >> 6));
                u[k++] = (unsigned char)(0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                u[k++] = (unsigned char)(0xE0 | (cp >> 12));
                u[k++] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
                u[k++] = (unsigned char)(0x80 | (cp & 0x3F));
            } else {
                u[k++] = (unsigned char)(0xF0 | (cp >> 18));
                u[k++] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
                u[k++] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
                u[k++] = (unsigned char)(0x80 | (cp & 0x3F));
            }
            put(b, (const char *)u, k);
        } else if (how == 1) {
            const char *e = cp == '"' ? "\\\"" : cp == '\\' ? "\\\\" : cp == '/' ? "\\/" :
                            cp == '\b' ? "\\b" : cp == '\n' ? "\\n" : cp == '\t' ? "\\t" : NULL;
            if (e)
                put(b, e, strlen(e));
            else
                put(b, tmp, (size_t)snprintf(tmp, sizeof tmp, "\\u%04x", cp));
        } else if (cp >= 0x10000) {
            unsigned v = cp - 0x10000;
            put(b, tmp, (size_t)snprintf(tmp, sizeof tmp, "\\u%04X\\u%04x", 0xD800 + (v >> 10),
                                         0xDC00 + (v & 0x3FF)));
        } else
            put(b, tmp, (size_t)snprintf(tmp, sizeof tmp, "\\u%04X", cp));
    }
    put(b, "\"", 1);
}

static void gen_value(struct tbuf *b, int depth)
{
    static const char *const nums[] = {"0", "-0", "7", "-42", "123456789012345678", "1.5", "-0.25",
                                       "1e3", "2E-2", "6.02e+23", "9007199254740993", "0.1"};
    static const char *const keys[] = {"\"a\"", "\"b\"", "\"topic\"", "\"\"", "\"k\\u00e9\""};
    unsigned kind = depth > 4 ? 2 + rnd(4) : rnd(6);
    switch (kind) {
    case 0:
    case 1: {
        int obj = kind == 0;
        put(b, obj ? "{" : "[", 1);
        for (unsigned i = 0, n = rnd(5); i < n; i++) {
            if (i)
                put(b, ",", 1);
            put_ws(b);
            if (obj) {
                const char *k = keys[rnd(sizeof keys / sizeof keys[0])];
                put(b, k, strlen(k));
                put_ws(b);
                put(b, ":", 1);
                put_ws(b);
            }
            gen_value(b, depth + 1);
            put_ws(b);
        }
        put(b, obj ? "}" : "]", 1);
        return;
    }
    case 2: gen_string(b); return;
    case 3: {
        const char *x = nums[rnd(sizeof nums / sizeof nums[0])];
        put(b, x, strlen(x));
        return;
    }
    default: {
        static const char *const lits[] = {"true", "false", "null"};
        const char *x = lits[rnd(3)];
        put(b, x, strlen(x));
    }
    }
}

/* Random documents, and the same with one byte changed, added or cut: the same answers as jansson. */
static void reader_random_documents(void **state)
{
    (void)state;
    unsigned fast = 0, docs = 0;
    for (uint64_t seed = 1; seed <= 20000; seed++) {
        struct tbuf b = {.n = 0};
        rng_state = seed * 0x9E3779B97F4A7C15ull;
        put_ws(&b);
        if (rnd(2)) { /* a document: an object or an array */
            put(&b, "{\"x\":", 5);
            gen_value(&b, 1);
            put(&b, "}", 1);
        } else {
            put(&b, "[", 1);
            gen_value(&b, 1);
            put(&b, "]", 1);
        }
        put_ws(&b);
        size_t flags = rnd(2) ? JSON_REJECT_DUPLICATES : 0;
        docs++;
        fast += (unsigned)read_agrees(b.p, b.n, flags);
        /* one byte changed, added or cut */
        static const char bytes[] = "{}[]\",:\\u0123456789eE.+-tfn \x01\x80\xc3\xed\xf4";
        size_t at = rnd((unsigned)b.n + 1);
        unsigned how = rnd(3);
        char c = bytes[rnd(sizeof bytes - 1)];
        if (how == 0 && at < b.n)
            b.p[at] = c;
        else if (how == 1 && b.n + 1 < sizeof b.p) {
            memmove(b.p + at + 1, b.p + at, b.n - at);
            b.p[at] = c;
            b.n++;
        } else if (at < b.n) {
            memmove(b.p + at, b.p + at + 1, b.n - at - 1);
            b.n--;
        }
        read_agrees(b.p, b.n, flags);
    }
    /* the reader did the work, not jansson behind it (duplicates refused and
     * 19-digit integers are the generator's documents it leaves to jansson) */
    assert_true(fast > docs * 3 / 4);
}

static int has_real(json_t *v)
{
    const char *k;
    json_t *x;
    size_t i;
    if (json_is_real(v))
        return 1;
    json_object_foreach(v, k, x) if (has_real(x)) return 1;
    json_array_foreach(v, i, x) if (has_real(x)) return 1;
    return 0;
}

/* Random trees without reals: the writer writes jansson's bytes, and fails where jansson fails. */
static void writer_random_trees(void **state)
{
    (void)state;
    unsigned compared = 0;
    for (uint64_t seed = 1; seed <= 5000; seed++) {
        struct tbuf b = {.n = 0};
        rng_state = seed * 0xD1B54A32D192ED03ull;
        put(&b, "{\"x\":", 5);
        gen_value(&b, 1);
        put(&b, "}", 1);
        json_t *v = json_loadb(b.p, b.n, 0, NULL);
        assert_non_null(v);
        if (has_real(v)) { /* reals: shortest, by design (the tests above) */
            json_decref(v);
            continue;
        }
        compared++;
        assert_writes_as_jansson(v);
        json_decref(v);
    }
    assert_true(compared > 2500); /* most trees hold no real */
    /* a string that is not UTF-8 (only json_string_nocheck makes one): NULL, as jansson */
    static const char *const bad[] = {"\xc3", "a\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xc0\xaf"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *o = json_pack("{s:o}", "s", json_string_nocheck(bad[i]));
        char *theirs = json_dumps(o, JSON_COMPACT);
        assert_null(theirs);
        assert_null(rhema_json_dumps(o, JSON_COMPACT));
        json_decref(o);
    }
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
        cmocka_unit_test(reader_agrees_with_jansson),
        cmocka_unit_test(reader_random_documents),
        cmocka_unit_test(writer_random_trees),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
