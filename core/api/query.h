/*
 * query -- the query parameters of a request, checked one way everywhere.
 *
 * Every route refuses a parameter it does not know and a parameter given
 * more than once (which of two values would it use?), with 400
 * invalid_field naming the parameter.  Numbers are plain decimal digits.
 */
#ifndef RHEMA_CORE_API_QUERY_H
#define RHEMA_CORE_API_QUERY_H

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

#endif /* RHEMA_CORE_API_QUERY_H */
