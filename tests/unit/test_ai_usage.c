/*
 * The pure parts of the AI gateway's usage accounting (core/ai/usage_count.c):
 * tokens from an answer's "usage" or estimated, bucket keys and values.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "ai/usage_count.h"

static void test_tokens_from_usage(void **state)
{
    (void)state;
    struct rhema_ai_tokens t;
    const char *b = "{\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":100}}";
    assert_int_equal(rhema_ai_tokens_from_body(b, strlen(b), 40, &t), 1);
    assert_int_equal(t.requests, 1);
    assert_int_equal(t.prompt_tokens, 3);
    assert_int_equal(t.completion_tokens, 2);
    assert_int_equal(t.total_tokens, 100); /* total_tokens wins over the sum */
    b = "{\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":5}}";
    assert_int_equal(rhema_ai_tokens_from_body(b, strlen(b), 40, &t), 1);
    assert_int_equal(t.total_tokens, 12); /* no total: prompt + completion */
    b = "{\"usage\":{\"prompt_tokens\":4,\"total_tokens\":4}}"; /* embeddings */
    assert_int_equal(rhema_ai_tokens_from_body(b, strlen(b), 40, &t), 1);
    assert_int_equal(t.completion_tokens, 0);
    assert_int_equal(t.total_tokens, 4);
}

static void test_tokens_estimated(void **state)
{
    (void)state;
    struct rhema_ai_tokens t;
    const char *b = "{\"choices\":[]}"; /* 14 bytes, no usage */
    assert_int_equal(rhema_ai_tokens_from_body(b, strlen(b), 41, &t), 0);
    assert_int_equal(t.prompt_tokens, 11);    /* ceil(41 / 4) */
    assert_int_equal(t.completion_tokens, 4); /* ceil(14 / 4) */
    assert_int_equal(t.total_tokens, 15);
    b = "{\"usage\":{\"total_tokens\":-5}}"; /* nonsense is not a report */
    assert_int_equal(rhema_ai_tokens_from_body(b, strlen(b), 0, &t), 0);
    b = "not json";
    assert_int_equal(rhema_ai_tokens_from_body(b, strlen(b), 4, &t), 0);
    assert_int_equal(t.total_tokens, 1 + 2);
}

static void test_bucket_keys(void **state)
{
    (void)state;
    char k[128];
    const char *model;
    size_t mlen;
    enum rhema_ai_bucket kind;
    int64_t start;
    assert_true(rhema_ai_bucket_key(k, sizeof k, "k:abc", "gpt-4o", RHEMA_AI_MINUTE, 1000000123) >
                0);
    assert_string_equal(k, "k:abc|gpt-4o|m1000000080");
    assert_true(rhema_ai_bucket_key(k, sizeof k, "a:127.0.0.1", "m", RHEMA_AI_HOUR, 7201) > 0);
    assert_string_equal(k, "a:127.0.0.1|m|h0000007200");
    assert_true(rhema_ai_bucket_key(k, sizeof k, "k:x", "m", RHEMA_AI_DAY, 86400 * 3 + 5) > 0);
    assert_string_equal(k, "k:x|m|d0000259200");
    assert_int_equal(rhema_ai_bucket_key(k, 10, "k:abc", "gpt-4o", RHEMA_AI_DAY, 1), -1);

    assert_int_equal(rhema_ai_bucket_parse("gpt-4o|h0000007200", &model, &mlen, &kind, &start), 0);
    assert_int_equal(mlen, 6);
    assert_memory_equal(model, "gpt-4o", 6);
    assert_int_equal(kind, RHEMA_AI_HOUR);
    assert_int_equal(start, 7200);
    assert_int_equal(rhema_ai_bucket_parse("gpt|x0000007200", &model, &mlen, &kind, &start), -1);
    assert_int_equal(rhema_ai_bucket_parse("gpt|h12a", &model, &mlen, &kind, &start), -1);
    assert_int_equal(rhema_ai_bucket_parse("|h1", &model, &mlen, &kind, &start), -1);
    assert_int_equal(rhema_ai_bucket_parse("h1", &model, &mlen, &kind, &start), -1);
}

static void test_values(void **state)
{
    (void)state;
    char v[128];
    struct rhema_ai_tokens a = {1, 3, 2, 5}, b = {2, 10, 20, 30}, c = {0};
    assert_true(rhema_ai_tokens_format(v, sizeof v, &a) > 0);
    assert_string_equal(v, "1 3 2 5");
    assert_int_equal(rhema_ai_tokens_parse(v, strlen(v), &c), 0);
    assert_memory_equal(&a, &c, sizeof a);
    rhema_ai_tokens_add(&c, &b);
    assert_int_equal(c.requests, 3);
    assert_int_equal(c.total_tokens, 35);
    assert_int_equal(rhema_ai_tokens_parse("1 2 3", 5, &c), -1);
    assert_int_equal(rhema_ai_tokens_parse("1 2 3 4 5", 9, &c), -1);
    assert_int_equal(rhema_ai_tokens_parse("1 2 3 -4", 8, &c), -1);
    assert_int_equal(c.requests, 3); /* untouched on failure */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tokens_from_usage),
        cmocka_unit_test(test_tokens_estimated),
        cmocka_unit_test(test_bucket_keys),
        cmocka_unit_test(test_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
