/*
 * fuzz -- what the libFuzzer harnesses of tests/fuzz/ share.
 *
 * Each harness feeds one parser of outside bytes with LLVMFuzzerTestOneInput
 * and calls the same function the daemon (or rhemactl) calls on those
 * bytes.  A harness never asserts a parser's verdict, only what must hold
 * for any input: no crash, no sanitizer report, no leak, and the invariants
 * it checks with fuzz_assert() (a broken one aborts, which libFuzzer
 * reports as a crash and keeps the input).  doc/hacking.md, "Fuzzing" says how to run
 * them.
 */
#ifndef RHEMA_TESTS_FUZZ_H
#define RHEMA_TESTS_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "json_fields.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define fuzz_assert(c)                                                                    \
    do {                                                                                  \
        if (!(c)) {                                                                       \
            fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #c);     \
            abort();                                                                      \
        }                                                                                 \
    } while (0)

/*
 * A request body as the daemon parses it (rhema_req_json() in
 * core/api/http.c): rhema_json_loadb with JSON_REJECT_DUPLICATES.  NULL when it
 * is not JSON (the daemon answers 400 bad_json) or empty.
 */
static inline json_t *fuzz_body(const uint8_t *data, size_t size)
{
    json_error_t jerr;
    if (size == 0)
        return NULL;
    return rhema_json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &jerr);
}

/*
 * The path id a request would carry with this body: the router only ever
 * passes an id (1-128 [A-Za-z0-9._:-]), so body[key] when it is one (the
 * ids of the seeds then match), else a fixed one.
 */
static inline const char *fuzz_path_id(json_t *body, const char *key)
{
    const char *s = json_string_value(json_object_get(body, key));
    return s && strlen(s) <= RHEMA_ID_MAX && rhema_id_valid(s) ? s : "fuzz-1";
}

/*
 * The fields a validator checks against a rule on their text (an id, a
 * name, an enum, a time, an address) must hold the text that was checked:
 * a JSON string may hold "\u0000", and a check made on the C string stops
 * there.  Today no body reaches a validator with one (json_loadb refuses
 * \u0000 without JSON_ALLOW_NUL, which rhema_req_json() does not pass);
 * this keeps it so.  Walks a validated record, skipping the client's
 * free-form members, and aborts on such a string holding a NUL.
 */
static inline void fuzz_check_texts(json_t *v, const char *key)
{
    static const char *const checked[] = {
        "id",          "participants",  "sender_id", "recipient_ids", "status",     "priority",
        "capabilities", "current_task_id", "node_id", "leader_id",   "voted_for",  "state",
        "name",        "service_id",    "address",   "strategy",      "type",       "target",
        "timestamp",   "started_at",    "ended_at",  "expires_at",    "last_heartbeat", NULL};
    static const char *const free_form[] = {"payload", "metadata", "config_data", "custom",
                                            "data",    "decisions", NULL};
    const char *k;
    size_t i;
    json_t *item;
    for (const char *const *f = free_form; key && *f; f++)
        if (strcmp(key, *f) == 0)
            return;
    if (json_is_object(v)) {
        json_object_foreach(v, k, item)
            fuzz_check_texts(item, k);
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, item)
            fuzz_check_texts(item, key);
    } else if (json_is_string(v) && key) {
        for (const char *const *c = checked; *c; c++)
            if (strcmp(key, *c) == 0 && strlen(json_string_value(v)) != json_string_length(v)) {
                fprintf(stderr, "field '%s' keeps a NUL its check did not see\n", key);
                abort();
            }
    }
}

/*
 * A validator's contract, for any body: 0 with a new object in *out and an
 * empty message, or a negative code with no object and a message naming
 * the cause.  Releases *out.
 */
static inline void fuzz_check_verdict(int rc, json_t **out, const char *err)
{
    if (rc == 0) {
        fuzz_assert(*out && json_is_object(*out));
        fuzz_check_texts(*out, NULL);
        /* the normalised object is what gets stored: it must serialise */
        char *text = json_dumps(*out, JSON_COMPACT);
        fuzz_assert(text);
        free(text);
    } else {
        fuzz_assert(rc < 0);
        fuzz_assert(*out == NULL);
        fuzz_assert(err[0] != '\0');
    }
    json_decref(*out);
    *out = NULL;
}

/*
 * The static API keys of fuzz_apikey's configuration (test keys, valid
 * nowhere else): the admin key, which authenticates, and one that expired.
 * gen_seeds writes seeds that present them.
 */
#define FUZZ_APIKEY_ADMIN "rk_eXo4lQ0uVvAw_w7VJjeCieFLzbCkh9xY46e2shqi4"
#define FUZZ_APIKEY_ADMIN_ID "eXo4lQ0uVvAw"
#define FUZZ_APIKEY_ADMIN_STORED                                                                   \
    "eXo4lQ0uVvAw:7b71bce4e9cf929209404d1a21a42351e753cfea8040296371b3c00a50474fe2"
#define FUZZ_APIKEY_EXPIRED "rk_LbfYsqveHwH0_cq8LE3ZKkQcs8SALXwieta1XLDSK"
#define FUZZ_APIKEY_EXPIRED_STORED                                                                 \
    "LbfYsqveHwH0:e378797d51bb93ee4ebaae84b17138ed47ad819b64cb8599f4eb9519803580be"

/* Write len bytes to path (created 0600, truncated); 0 or -1. */
int fuzz_write_file(const char *path, const void *data, size_t len);
/* A private directory under $TMPDIR (or /tmp), removed at exit; NULL on failure. */
const char *fuzz_tmpdir(void);

#endif /* RHEMA_TESTS_FUZZ_H */
