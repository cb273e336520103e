/*
 * test_inbox -- the inbox's key composition and records (core/inbox.c):
 * priority digits, the sequenced prefix, the entry key and its parse (and
 * that a scan of "<agent>/" in key order is priority, then version order),
 * the ack index key, the entry's value and the recipients list.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "watch/inbox.h"

static void priority_digits(void **state)
{
    (void)state;
    assert_int_equal(rhema_inbox_priority_digit("Emergency"), 0);
    assert_int_equal(rhema_inbox_priority_digit("Critical"), 1);
    assert_int_equal(rhema_inbox_priority_digit("High"), 2);
    assert_int_equal(rhema_inbox_priority_digit("Normal"), 3);
    assert_int_equal(rhema_inbox_priority_digit("Low"), 4);
    assert_int_equal(rhema_inbox_priority_digit(NULL), 3);
    assert_int_equal(rhema_inbox_priority_digit("low"), -1);
}

static void keys_composed_and_parsed(void **state)
{
    (void)state;
    char buf[RHEMA_INBOX_KEY_MAX + 1];
    assert_int_equal(rhema_inbox_prefix(buf, sizeof buf, "coder", 2), 8);
    assert_string_equal(buf, "coder/2/");
    assert_int_equal(rhema_inbox_key(buf, sizeof buf, "coder", 2, 42), 28);
    assert_string_equal(buf, "coder/2/00000000000000000042");
    int p = -1;
    uint64_t v = 0;
    assert_int_equal(rhema_inbox_key_parse(buf, "coder", &p, &v), 0);
    assert_int_equal(p, 2);
    assert_int_equal(v, 42);
    assert_int_equal(rhema_inbox_key(buf, sizeof buf, "a", 0, UINT64_MAX), 24);
    assert_int_equal(rhema_inbox_key_parse(buf, "a", &p, &v), 0);
    assert_true(v == UINT64_MAX);
    /* not an entry of that agent, or malformed */
    assert_int_equal(rhema_inbox_key_parse("coder/2/00000000000000000042", "code", &p, &v), -1);
    assert_int_equal(rhema_inbox_key_parse("coder/5/00000000000000000042", "coder", &p, &v), -1);
    assert_int_equal(rhema_inbox_key_parse("coder/2/0000000000000000042", "coder", &p, &v), -1);
    assert_int_equal(rhema_inbox_key_parse("coder/2/0000000000000000004x", "coder", &p, &v), -1);
    assert_int_equal(rhema_inbox_key_parse("coder/2/99999999999999999999", "coder", &p, &v), -1);
    assert_int_equal(rhema_inbox_ack_key(buf, sizeof buf, "coder", "s1", "m-3"), 12);
    assert_string_equal(buf, "coder/s1/m-3");
    /* too small a buffer: -1, never a cut key */
    char small[8];
    assert_int_equal(rhema_inbox_prefix(small, sizeof small, "coder", 2), -1);
    assert_int_equal(rhema_inbox_ack_key(small, sizeof small, "coder", "s1", "m"), -1);
    /* the longest ids fit */
    char id[RHEMA_ID_MAX + 1];
    memset(id, 'x', RHEMA_ID_MAX);
    id[RHEMA_ID_MAX] = '\0';
    assert_int_equal(rhema_inbox_ack_key(buf, sizeof buf, id, id, id), 3 * RHEMA_ID_MAX + 2);
}

static int cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void key_order_is_delivery_order(void **state)
{
    (void)state;
    /* (priority, version) pairs in delivery order */
    static const struct {
        int p;
        uint64_t v;
    } want[] = {{0, 7}, {0, 1000}, {1, 3}, {2, 99999}, {3, 1}, {3, 10}, {3, 100}, {4, 2}};
    enum { N = sizeof want / sizeof want[0] };
    char keys[N][64], *sorted[N];
    for (size_t i = 0; i < N; i++) {
        /* written in another order than delivered */
        size_t j = (i * 5 + 3) % N;
        rhema_inbox_key(keys[i], sizeof keys[i], "agent", want[j].p, want[j].v);
        sorted[i] = keys[i];
    }
    qsort(sorted, N, sizeof sorted[0], cmp);
    for (size_t i = 0; i < N; i++) {
        int p;
        uint64_t v;
        assert_int_equal(rhema_inbox_key_parse(sorted[i], "agent", &p, &v), 0);
        assert_int_equal(p, want[i].p);
        assert_true(v == want[i].v);
    }
    /* another agent's keys sort outside "agent/" .. "agent0" */
    char other[64];
    rhema_inbox_key(other, sizeof other, "agent-2", 0, 1);
    assert_true(strcmp(other, "agent/") < 0 || strcmp(other, "agent0") >= 0);
}

static void record_and_recipients(void **state)
{
    (void)state;
    json_t *msg = json_pack("{s:s,s:s,s:[s,s,s],s:b,s:s}", "id", "m1", "priority", "High",
                            "recipient_ids", "a", "b", "a", "requires_ack", 1, "expires_at",
                            "2030-01-01T00:00:00.000Z");
    size_t len = 0;
    char *t = rhema_inbox_record("s1", msg, &len);
    assert_non_null(t);
    assert_int_equal(len, strlen(t));
    json_t *o = json_loads(t, 0, NULL);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "session_id")), "s1");
    /* the message as appended, without its recipient list (n entries of n ids
     * each would make a message to n recipients cost n^2) */
    json_t *bare = json_deep_copy(msg);
    json_object_del(bare, "recipient_ids");
    assert_true(json_equal(json_object_get(o, "message"), bare));
    assert_null(json_object_get(json_object_get(o, "message"), "recipient_ids"));
    json_decref(bare);
    assert_non_null(json_object_get(msg, "recipient_ids")); /* the caller's copy untouched */
    assert_true(json_is_true(json_object_get(o, "requires_ack")));
    assert_int_equal(json_integer_value(json_object_get(o, "expires_at")), 1893456000000);
    assert_int_equal(json_integer_value(json_object_get(o, "invisible_until")), 0);
    assert_int_equal(json_integer_value(json_object_get(o, "deliveries")), 0);
    json_decref(o);
    free(t);
    /* each recipient once, in order */
    json_t *r = rhema_inbox_recipients(msg);
    json_t *want = json_pack("[s,s]", "a", "b");
    assert_true(json_equal(r, want));
    json_decref(r);
    json_decref(want);
    /* no expires_at, no requires_ack */
    json_object_del(msg, "expires_at");
    json_object_set_new(msg, "requires_ack", json_false());
    t = rhema_inbox_record("s1", msg, &len);
    o = json_loads(t, 0, NULL);
    assert_null(json_object_get(o, "expires_at"));
    assert_true(json_is_false(json_object_get(o, "requires_ack")));
    json_decref(o);
    free(t);
    json_decref(msg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(priority_digits),
        cmocka_unit_test(keys_composed_and_parsed),
        cmocka_unit_test(key_order_is_delivery_order),
        cmocka_unit_test(record_and_recipients),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
