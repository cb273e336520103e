/*
 * ai/usage_count -- the pure parts of the AI gateway's usage accounting
 * (ai/usage.h): the tokens a response reports, the storage keys of the
 * usage buckets and the text of a bucket's counters.  No I/O, no state:
 * unit tested in tests/unit/test_ai_usage.c.
 */
#ifndef RHEMA_CORE_AI_USAGE_COUNT_H
#define RHEMA_CORE_AI_USAGE_COUNT_H

#include <stddef.h>
#include <stdint.h>

/* What one bucket holds (and what one request adds to it). */
struct rhema_ai_tokens {
    int64_t requests;
    int64_t prompt_tokens;
    int64_t completion_tokens;
    int64_t total_tokens;
};

/* The bucket kinds: their letter in the key and their length in seconds. */
enum rhema_ai_bucket { RHEMA_AI_MINUTE, RHEMA_AI_HOUR, RHEMA_AI_DAY };
#define RHEMA_AI_BUCKETS 3
extern const char rhema_ai_bucket_letter[RHEMA_AI_BUCKETS];
extern const int64_t rhema_ai_bucket_seconds[RHEMA_AI_BUCKETS];

/*
 * The tokens of one upstream answer (a JSON body of request_bytes asked):
 * from its "usage" (total_tokens, or prompt_tokens + completion_tokens);
 * without a usable "usage", an estimate of one token per 4 bytes of the
 * request body (prompt) and of the answer body (completion).  requests is
 * set to 1.  Returns 1 when the numbers came from "usage", 0 when estimated.
 */
int rhema_ai_tokens_from_body(const char *body, size_t len, size_t request_bytes,
                              struct rhema_ai_tokens *out);

/*
 * The key of the bucket of `kind` holding unix second `t` for party and
 * model: "<party>|<model>|<letter><bucket start, 10 digits>".  Returns the
 * length, or -1 when it does not fit cap.
 */
int rhema_ai_bucket_key(char *out, size_t cap, const char *party, const char *model,
                        enum rhema_ai_bucket kind, int64_t t);
/*
 * Split a key made by rhema_ai_bucket_key() (after party and its '|'):
 * model (not NUL-terminated: *model_len bytes), kind and start.  0 or -1.
 */
int rhema_ai_bucket_parse(const char *rest, const char **model, size_t *model_len,
                          enum rhema_ai_bucket *kind, int64_t *start);

/* A bucket's stored value: "requests prompt completion total". */
int rhema_ai_tokens_format(char *out, size_t cap, const struct rhema_ai_tokens *t);
/* Parse a stored value; 0, or -1 when it is not one (t untouched). */
int rhema_ai_tokens_parse(const void *data, size_t len, struct rhema_ai_tokens *t);
/* a += b */
void rhema_ai_tokens_add(struct rhema_ai_tokens *a, const struct rhema_ai_tokens *b);

#endif /* RHEMA_CORE_AI_USAGE_COUNT_H */
