/*
 * conditional -- HTTP conditional requests (RFC 9110 §13) on the resources
 * that have versions: sessions, agents, system metrics, configurations,
 * consensus state, services.  A version travels as the strong ETag "N".
 *
 * Writes: rhema_preconditions() turns If-Match / If-None-Match into the one
 * expected version that the store checks in the same storage write (the
 * plugins' versioned put), so two writes with the same If-Match give one
 * success and one 412.  Reads: rhema_reply_record() evaluates them against
 * the record read (304 for a current If-None-Match on GET / HEAD).
 */
#ifndef RHEMA_CORE_CONDITIONAL_H
#define RHEMA_CORE_CONDITIONAL_H

#include <stddef.h>
#include <stdint.h>

#include "http.h"
#include "store.h"

/* At most this many entity tags that are versions in one header (400 past it). */
#define RHEMA_ETAGS_MAX 16

/* A parsed If-Match / If-None-Match field value. */
struct rhema_etags {
    int any;  /* "*" */
    size_t n; /* tags that can name a version */
    uint64_t version[RHEMA_ETAGS_MAX];
    unsigned char weak[RHEMA_ETAGS_MAX];
};

/*
 * Parse "*" or a list of entity tags (`"1", W/"2"`, RFC 9110 §8.8.3).  A
 * well-formed tag that names no version ("abc", "0", "007") is dropped: it
 * can never match.  0, or -1 with *why set when the value is malformed.
 */
int rhema_etags_parse(const char *value, struct rhema_etags *out, const char **why);

/* 1 when version is in the list; weak: W/"3" matches "3" (If-None-Match). */
int rhema_etags_match(const struct rhema_etags *t, uint64_t version, int weak);

/*
 * What a resource is now, for the preconditions that the store cannot
 * check itself: 0 with *version, RHEMA_ENOTFOUND (err says what is
 * missing) or another store error.  Called on the request's worker.
 */
typedef int (*rhema_current_fn)(struct rhema_req *r, uint64_t *version, char err[RHEMA_ERRMSG_MAX]);

/*
 * The preconditions of a write, in RFC 9110 §13.2.2's order (If-Match, then
 * If-None-Match).  On 0, *expected is what the store must check in its write:
 * RHEMA_VERSION_ANY, RHEMA_VERSION_ABSENT (create only), RHEMA_VERSION_PRESENT
 * or a version.  Otherwise it has replied (400 malformed, 412 false, 404 for a
 * DELETE / POST / PATCH of a missing resource, a store error) and returns -1.
 * The common cases (one tag, "*") need no read; a list of several versions,
 * If-None-Match with tags, or both headers read the resource once with
 * `current` and pin the write to the version read, so a write in between is
 * still 412.  Only PUT creates: for the other methods If-None-Match: * is
 * answered here.
 */
int rhema_preconditions(struct rhema_req *r, rhema_current_fn current, uint64_t *expected);

/*
 * Reply with a record and its ETag, and release it.  On GET / HEAD, If-Match
 * that does not match is 412 and If-None-Match that matches (weakly) is 304
 * with the ETag and no body.
 */
void rhema_reply_record(struct rhema_req *r, int status, struct rhema_record *rec);

#endif /* RHEMA_CORE_CONDITIONAL_H */
