/*
 * fuzz_http -- what the harnesses that build requests without a connection
 * (fuzz_request, fuzz_apikey) share.
 */
#ifndef RHEMA_TESTS_FUZZ_HTTP_H
#define RHEMA_TESTS_FUZZ_HTTP_H

#include <string.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>

/*
 * Add each line "Name: value" to the input headers of req, from `line` on
 * and then the lines strtok_r(NULL, "\r\n", save) gives; a line without a
 * colon, or with nothing before it, is skipped (evhttp would refuse it).
 * The lines are cut in place.
 */
static inline void fuzz_add_headers(struct evhttp_request *req, char *line, char **save)
{
    for (char *h = line; h; h = strtok_r(NULL, "\r\n", save)) {
        char *colon = strchr(h, ':');
        if (!colon || colon == h)
            continue;
        *colon++ = '\0';
        while (*colon == ' ')
            colon++;
        evhttp_add_header(evhttp_request_get_input_headers(req), h, colon);
    }
}

#endif /* RHEMA_TESTS_FUZZ_HTTP_H */
