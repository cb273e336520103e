/*
 * fuzz_request -- what rhemad parses of a request before a handler's
 * body: the request target (decoded as on_request() in core/api/http.c
 * does: path, %00 check, query string), the Origin check, the router and
 * its path ids (core/api/routes.c, on the daemon's real route tables),
 * the fence's X-Rhema-Epoch (api_cluster.c), the query checks of
 * core/api/query.c, If-Match / If-None-Match (http.c), and a backup file
 * name (core/keybackup.c, the "name" parameter standing for the body's).
 *
 * Input: the first byte picks the method, the rest of the first line is
 * the request target, each further line is a header "Name: value".  The
 * requests have no connection, so a reply frees them (libevent); the
 * harness stops at the first reply, as the pipeline does.
 */
#include "rhema_build.h"

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <sys/queue.h>

#include "api/conditional.h"
#include "api/http.h"
#include "api/pipeline.h"
#include "api/query.h"
#include "api/routes.h"
#include "api/api_cluster.h"
#include "config.h"
#include "fuzz.h"
#include "fuzz_http.h"
#include "keybackup.h"
#include "log.h"

static struct rhema_config cfg;
static struct rhema_server srv;
static struct rhema_worker worker;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static const char *overrides[] = {"service.cors.origins=[\"http://app.example\"]"};
    char *err = NULL;
    (void)argc, (void)argv;
    rhema_log_set_level(RHEMA_LOG_ERROR);
    if (rhema_config_load(&cfg, NULL, overrides, 1, NULL, &err) != 0) {
        fprintf(stderr, "fuzz_request: %s\n", err ? err : "config");
        abort();
    }
    if (rhema_routes_check(rhema_api_routes, &err) != 0)
        abort();
    srv.cfg = &cfg;
    atomic_store(&srv.log_access, 0);
    worker.srv = &srv;
    return 0;
}

/* The stages, in the pipeline's order; 1 when one of them answered. */
/* The resource the preconditions' slow path reads: at version 3 for some ids, else absent. */
static int fake_current(struct rhema_req *r, uint64_t *version, char err[RHEMA_ERRMSG_MAX])
{
    if (r->param[0] && (r->param[0] & 1)) {
        *version = 3;
        return 0;
    }
    snprintf(err, RHEMA_ERRMSG_MAX, "'%s' not found", r->param);
    return RHEMA_ENOTFOUND;
}

static int run(struct rhema_req *r)
{
    static const char *const known[] = {"limit", "cursor", "status", "participant",
                                        "capability", "name", "version", NULL};
    uint64_t v = 0;
    if (rhema_cross_origin_refused(r))
        return 1;
    const struct rhema_route *rt = rhema_route_match(r, rhema_api_routes);
    if (!rt)
        return 1;
    fuzz_assert(r->route == rt && r->status == 0);
    if (strchr(rt->path, '{')) /* the router hands the handler an id, nothing else */
        fuzz_assert(strlen(r->param) <= RHEMA_ID_MAX && rhema_id_valid(r->param));
    if (rt->effect != RHEMA_READS && rhema_cluster_fence(r))
        return 1;
    if (rhema_query_check(r, known) || rhema_query_uint(r, "limit", 1000, &v) ||
        rhema_query_uint(r, "version", UINT64_MAX - 1, &v))
        return 1;
    if (rhema_preconditions(r, fake_current, &v))
        return 1;
    const char *name = evhttp_find_header(&r->query, "name");
    const char *why = NULL;
    if (name && rhema_keybackup_name_check(name, strlen(name), &why) == 0)
        fuzz_assert(!strchr(name, '/') && name[0] != '.' && strlen(name) <= RHEMA_KEYBACKUP_NAME_MAX);
    else if (name)
        fuzz_assert(why != NULL);
    rhema_reply_empty(r, 204);
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const enum evhttp_cmd_type methods[] = {
        EVHTTP_REQ_GET,     EVHTTP_REQ_PUT,  EVHTTP_REQ_POST,  EVHTTP_REQ_DELETE,
        EVHTTP_REQ_OPTIONS, EVHTTP_REQ_HEAD, EVHTTP_REQ_PATCH, EVHTTP_REQ_TRACE};
    struct rhema_req r;
    char *text, *line, *save = NULL;
    if (size < 1 || size > 8192)
        return 0;
    text = malloc(size);
    if (!text)
        return 0;
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    memset(&r, 0, sizeof r);
    TAILQ_INIT(&r.query);
    r.worker = &worker;
    r.method = methods[data[0] % 8];
    snprintf(r.request_id, sizeof r.request_id, "fuzz-1");
    r.req = evhttp_request_new(NULL, NULL);
    if (!r.req)
        abort();
    line = strtok_r(text, "\r\n", &save);
    /* evhttp parses the request line's target so (2.1: evhttp_parse_request_line) */
    struct evhttp_uri *uri =
        line ? evhttp_uri_parse_with_flags(line, EVHTTP_URI_NONCONFORMANT) : NULL;
    if (!uri) /* evhttp answers 400 itself */
        goto out_unanswered;
    fuzz_add_headers(r.req, strtok_r(NULL, "\r\n", &save), &save);
    /* on_request(), core/api/http.c */
    const char *raw_path = evhttp_uri_get_path(uri);
    size_t path_len = 0;
    char *path = raw_path ? evhttp_uridecode(raw_path, 0, &path_len) : NULL;
    r.path = path ? path : "/";
    r.path_buf = path;
    if (path && strlen(path) != path_len)
        rhema_reply_error(&r, 400, "invalid_field", "path: contains an encoded NUL");
    else if (evhttp_uri_get_query(uri) &&
             evhttp_parse_query_str(evhttp_uri_get_query(uri), &r.query) != 0)
        rhema_reply_error(&r, 400, "bad_query", "malformed query string");
    else
        run(&r);
    fuzz_assert(r.status >= 200 && r.status < 600); /* every request is answered once */
    evhttp_uri_free(uri);
    goto out;
out_unanswered:
    evhttp_request_free(r.req);
out:
    evhttp_clear_headers(&r.query);
    free(r.path_buf);
    free(text);
    return 0;
}
