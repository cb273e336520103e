/*
 * ai/usage_count -- tokens from a response, bucket keys, bucket values
 * (usage_count.h).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ai/usage_count.h"
#include "json_fields.h"

const char rhema_ai_bucket_letter[RHEMA_AI_BUCKETS] = {'m', 'h', 'd'};
const int64_t rhema_ai_bucket_seconds[RHEMA_AI_BUCKETS] = {60, 3600, 86400};

/* A usage member: a non-negative integer, else -1. */
static int64_t count_of(json_t *usage, const char *name)
{
    json_t *v = json_object_get(usage, name);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    return (int64_t)json_integer_value(v);
}

int rhema_ai_tokens_from_body(const char *body, size_t len, size_t request_bytes,
                              struct rhema_ai_tokens *out)
{
    json_t *doc = rhema_json_loadb(body, len, 0, NULL);
    json_t *usage = json_object_get(doc, "usage");
    int64_t p = count_of(usage, "prompt_tokens"), c = count_of(usage, "completion_tokens");
    int64_t t = count_of(usage, "total_tokens");
    int reported = json_is_object(usage) && (t >= 0 || p >= 0 || c >= 0);
    json_decref(doc);
    out->requests = 1;
    if (!reported) {
        out->prompt_tokens = (int64_t)((request_bytes + 3) / 4);
        out->completion_tokens = (int64_t)((len + 3) / 4);
        out->total_tokens = out->prompt_tokens + out->completion_tokens;
        return 0;
    }
    out->prompt_tokens = p < 0 ? 0 : p;
    out->completion_tokens = c < 0 ? 0 : c;
    out->total_tokens = t >= 0 ? t : out->prompt_tokens + out->completion_tokens;
    return 1;
}

int rhema_ai_bucket_key(char *out, size_t cap, const char *party, const char *model,
                        enum rhema_ai_bucket kind, int64_t t)
{
    int64_t w = rhema_ai_bucket_seconds[kind];
    int64_t start = t - ((t % w) + w) % w;
    int n = snprintf(out, cap, "%s|%s|%c%010" PRId64, party, model, rhema_ai_bucket_letter[kind],
                     start);
    return n < 0 || (size_t)n >= cap ? -1 : n;
}

int rhema_ai_bucket_parse(const char *rest, const char **model, size_t *model_len,
                          enum rhema_ai_bucket *kind, int64_t *start)
{
    const char *bar = strrchr(rest, '|');
    char *end;
    int k;
    if (!bar || bar == rest)
        return -1;
    for (k = 0; k < RHEMA_AI_BUCKETS; k++)
        if (bar[1] == rhema_ai_bucket_letter[k])
            break;
    if (k == RHEMA_AI_BUCKETS || bar[2] < '0' || bar[2] > '9')
        return -1;
    long long s = strtoll(bar + 2, &end, 10);
    if (*end)
        return -1;
    *model = rest;
    *model_len = (size_t)(bar - rest);
    *kind = (enum rhema_ai_bucket)k;
    *start = (int64_t)s;
    return 0;
}

int rhema_ai_tokens_format(char *out, size_t cap, const struct rhema_ai_tokens *t)
{
    int n = snprintf(out, cap, "%" PRId64 " %" PRId64 " %" PRId64 " %" PRId64, t->requests,
                     t->prompt_tokens, t->completion_tokens, t->total_tokens);
    return n < 0 || (size_t)n >= cap ? -1 : n;
}

int rhema_ai_tokens_parse(const void *data, size_t len, struct rhema_ai_tokens *t)
{
    char buf[128], tail;
    long long v[4];
    if (len >= sizeof buf)
        return -1;
    memcpy(buf, data, len);
    buf[len] = '\0';
    if (sscanf(buf, "%lld %lld %lld %lld%c", &v[0], &v[1], &v[2], &v[3], &tail) != 4)
        return -1;
    for (int i = 0; i < 4; i++)
        if (v[i] < 0)
            return -1;
    t->requests = v[0];
    t->prompt_tokens = v[1];
    t->completion_tokens = v[2];
    t->total_tokens = v[3];
    return 0;
}

void rhema_ai_tokens_add(struct rhema_ai_tokens *a, const struct rhema_ai_tokens *b)
{
    a->requests += b->requests;
    a->prompt_tokens += b->prompt_tokens;
    a->completion_tokens += b->completion_tokens;
    a->total_tokens += b->total_tokens;
}
