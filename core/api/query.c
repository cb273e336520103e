/*
 * query -- the query parameters of a request (query.h).
 */
#include "rhema_build.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "query.h"
#include "store.h"

int rhema_query_check(struct rhema_req *r, const char *const *known)
{
    struct evkeyval *kv, *other;
    TAILQ_FOREACH(kv, &r->query, next)
    {
        int ok = 0;
        for (const char *const *k = known; k && *k; k++)
            ok |= strcmp(kv->key, *k) == 0;
        if (!ok) {
            rhema_reply_error(r, 400, "invalid_field", "parameter '%s': unknown parameter",
                              kv->key);
            return -1;
        }
        for (other = TAILQ_NEXT(kv, next); other; other = TAILQ_NEXT(other, next)) {
            if (strcmp(other->key, kv->key) == 0) {
                rhema_reply_error(r, 400, "invalid_field", "parameter '%s': given more than once",
                                  kv->key);
                return -1;
            }
        }
    }
    return 0;
}

int rhema_query_uint(struct rhema_req *r, const char *name, uint64_t max, uint64_t *out)
{
    const char *s = evhttp_find_header(&r->query, name);
    char *end;
    unsigned long long v;
    if (!s)
        return 0;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (*s < '0' || *s > '9' || *end || errno || v == 0 || v > max) {
        rhema_reply_error(r, 400, "invalid_field",
                          "parameter '%s': expected an integer from 1 to %llu", name,
                          (unsigned long long)max);
        return -1;
    }
    *out = v;
    return 0;
}

int rhema_query_list(struct rhema_req *r, const char *const *known, size_t *limit,
                     const char **cursor)
{
    uint64_t n = RHEMA_LIST_LIMIT_DEFAULT;
    if (rhema_query_check(r, known) || rhema_query_uint(r, "limit", RHEMA_LIST_LIMIT_MAX, &n))
        return -1;
    *limit = (size_t)n;
    *cursor = evhttp_find_header(&r->query, "cursor");
    return 0;
}

void rhema_reply_store_json(struct rhema_req *r, int rc, char *text, size_t len, const char *err)
{
    if (rc) {
        rhema_reply_store_error(r, rc, err);
        return;
    }
    rhema_reply_json(r, 200, text, len);
    free(text);
}
