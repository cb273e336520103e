/*
 * query -- the query parameters of a request, checked one way everywhere.
 *
 * Every route refuses a parameter it does not know and a parameter given
 * more than once (which of two values would it use?), with 400
 * invalid_field naming the parameter.  Numbers are plain decimal digits.
 * A list route (doc/hacking.md, "How to add a route", 6) reads its query
 * with rhema_query_list() and answers with rhema_reply_store_json().
 */
#ifndef RHEMA_CORE_API_QUERY_H
#define RHEMA_CORE_API_QUERY_H

#include <stddef.h>
#include <stdint.h>

#include "http.h"

/*
 * Refuse parameters not in known (NULL-terminated; NULL: none allowed)
 * and repeated ones.  0, or -1 after replying 400.
 */
int rhema_query_check(struct rhema_req *r, const char *const *known);

/*
 * The integer parameter `name` in 1..max, into *out (left alone when the
 * parameter is absent).  0, or -1 after replying 400.
 */
int rhema_query_uint(struct rhema_req *r, const char *name, uint64_t max, uint64_t *out);

/*
 * The query of a list route: the parameters in known (NULL-terminated; it
 * holds "limit" and "cursor" and the route's filters) checked as
 * rhema_query_check() does, *limit from "limit" (1..RHEMA_LIST_LIMIT_MAX;
 * RHEMA_LIST_LIMIT_DEFAULT when absent) and *cursor from "cursor" (NULL
 * when absent; it points into r's query).  0, or -1 after replying 400.
 */
int rhema_query_list(struct rhema_req *r, const char *const *known, size_t *limit,
                     const char **cursor);

/*
 * Answer with the JSON text a store made (a list page, stats): 200 and
 * text[0..len), which it frees; or, when rc is not 0, the store's error
 * (rhema_reply_store_error with err).
 */
void rhema_reply_store_json(struct rhema_req *r, int rc, char *text, size_t len, const char *err);

#endif /* RHEMA_CORE_API_QUERY_H */
