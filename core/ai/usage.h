/*
 * ai/usage -- token limits and usage of the AI gateway (issue 10 item 6,
 * doc/ai-gateway.md "Limits and usage"; ai_service.limits).
 *
 * Per party (the caller's API key, or its client address when it has no
 * key) and per requested model: requests per minute through the storage
 * backend's rate() (GCRA, key "ai:rpm:<party>:<model>"), tokens per minute
 * and per day counted in fixed UTC buckets kept in the storage backend
 * (namespace "ai_usage"), so every node on a shared backend sees the same
 * counts.  A request is refused (429) before it goes upstream when its
 * minute's or day's tokens already reached the allowance, or when its rpm
 * is exceeded; an answer is charged afterwards with the tokens of its
 * "usage" (rhema_ai_usage_charge()).
 *
 * The state (struct rhema_ai_usage, srv->ai_usage) is built before the
 * workers start and read-only afterwards but for its atomic counters.
 * The other calls run on a worker with that worker's storage connection.
 */
#ifndef RHEMA_CORE_AI_USAGE_H
#define RHEMA_CORE_AI_USAGE_H

#include <stddef.h>

#include <jansson.h>

#include "ai/usage_count.h"

struct rhema_config;
struct rhema_req;
struct rhema_server;
struct rhema_worker;

#define RHEMA_AI_PARTY_MAX 96
#define RHEMA_AI_MODEL_MAX 200

/* Who is charged and for which model: copied out of the request, outlives it. */
struct rhema_ai_usage_ticket {
    char party[RHEMA_AI_PARTY_MAX]; /* "k:<key id>" or "a:<client address>" */
    char model[RHEMA_AI_MODEL_MAX + 1]; /* the model the client asked for */
    size_t request_bytes;           /* the request body, for an estimate */
};

/* Build srv->ai_usage (NULL when ai_service.limits.enabled is off).  0, or RHEMA_E* and *err. */
int rhema_ai_usage_open(struct rhema_server *srv, char **err);
void rhema_ai_usage_close(struct rhema_server *srv);
/* The same checks for rhemad -t. */
int rhema_ai_usage_check_config(const struct rhema_config *cfg, char **err);

/* What a refusal says; filled by rhema_ai_usage_admit(). */
struct rhema_ai_refusal {
    int status;         /* 429, or 503 (the counts cannot be read and failure_mode is closed) */
    const char *code;   /* "rate_limit_exceeded", "usage_unavailable" */
    char message[256];
};

/*
 * Before a request of model `model` (NULL: the default model) of body_len
 * bytes goes upstream: fills *t, adds the RateLimit headers and returns 0
 * to go on; or 1 with *why (and Retry-After) set: answer it with that
 * error, the upstream is not called.  0 and nothing done when limits are
 * off (t->party "" then: rhema_ai_usage_charge() does nothing).
 */
int rhema_ai_usage_admit(struct rhema_req *r, const char *model, size_t body_len,
                         struct rhema_ai_usage_ticket *t, struct rhema_ai_refusal *why);

/*
 * Charge a finished answer: tok (requests and tokens) into the minute,
 * hour and day buckets of t's party and model, by compare-and-set on the
 * buckets' versions (retried on a conflict, so that nodes charging at once
 * lose nothing).  For a stream, call it once at its end with the final
 * chunk's usage, or an estimate (usage_count.h).  A no-op when limits are
 * off.  0, or a storage error (logged and counted).
 */
int rhema_ai_usage_charge(struct rhema_worker *w, const struct rhema_ai_usage_ticket *t,
                          const struct rhema_ai_tokens *tok);
/* rhema_ai_usage_charge() with the tokens of a JSON answer body (rhema_ai_tokens_from_body). */
int rhema_ai_usage_charge_body(struct rhema_worker *w, const struct rhema_ai_usage_ticket *t,
                               const char *body, size_t len);

/* GET /v1/usage (doc/http-api.md). */
void rhema_ai_usage_get(struct rhema_req *r);

#endif /* RHEMA_CORE_AI_USAGE_H */
