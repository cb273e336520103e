/*
 * http -- evhttp workers, request context, JSON replies and errors.
 *
 * rhemad runs service.workers threads; each owns an event base, an evhttp
 * bound (through its own evconnlistener) to the one shared listening
 * socket, and its own storage connection.  A handler runs on its worker's
 * thread and may call storage synchronously through req->worker->store.
 */
#ifndef RHEMA_CORE_HTTP_H
#define RHEMA_CORE_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <jansson.h>

#include "auth/principal.h"
#include "server.h"

/* The context of one request, valid for the duration of its handler. */
struct rhema_route;

struct rhema_req {
    struct evhttp_request *req;
    struct rhema_worker *worker;
    enum evhttp_cmd_type method;
    const char *path;            /* decoded path, without the query */
    struct evkeyvalq query;      /* decoded query parameters */
    char request_id[48];
    uint64_t t0_ns;
    int status;
    size_t bytes_out;
    char *path_buf;              /* owns path */
    int deferred;                /* the reply will be sent later (rhema_req_defer) */
    int close;                   /* close the connection after the reply */
    int reads;                   /* the route changes nothing: a big reply may be refused
                                  * (503) for the output limits instead of queued */
    const struct rhema_route *route; /* the route matched (routes.h), NULL before */
    char param[RHEMA_ID_MAX + 2];    /* the path's {param} segment, when the route has one */
    char param2[RHEMA_ID_MAX + 2];   /* the second {param} segment, when the route has two */
    /*
     * The caller, once the authenticate stage found a valid key
     * (api_auth.h): its public id, name and roles; key_id "" when keys
     * are off or none was presented.  A value, so that it lasts as long
     * as the request (the audit stage reads it after the reply).
     */
    struct rhema_principal principal;
    /* called as the reply goes out (the audit log's end record); set by the pipeline */
    void (*on_reply)(struct rhema_req *r);
};

/* The caller's API key public id, NULL when none (keys off, or no key). */
static inline const char *rhema_req_key_id(const struct rhema_req *r)
{
    return r->principal.key_id[0] ? r->principal.key_id : NULL;
}

/*
 * Bind the listening socket (service.listen), start the workers (each
 * connects to storage); each worker runs handle(r) for every request (the
 * request path: core/api/pipeline.c).  Returns 0, or a negative code and
 * *err (malloc'd).
 */
int rhema_http_start(struct rhema_server *srv, rhema_request_fn *handle, char **err);
/*
 * Graceful stop: stop accepting, let in-flight requests finish (bounded by
 * service.request_timeout_seconds), join the workers, disconnect storage.
 */
void rhema_http_stop(struct rhema_server *srv);

/* Replies.  Each sets the status, X-Request-Id, CORS and logs the access. */
void rhema_reply(struct rhema_req *r, int status, const char *content_type, const void *body,
                 size_t len);
void rhema_reply_json(struct rhema_req *r, int status, const char *json, size_t len);
/* Reply with the bytes of buf (drained; the caller still frees buf). */
void rhema_reply_evbuffer(struct rhema_req *r, int status, const char *content_type,
                          struct evbuffer *buf);
/* Reply with the JSON text of `v` (consumes the reference). */
void rhema_reply_jsonv(struct rhema_req *r, int status, json_t *v);
/* Reply 204 No Content. */
void rhema_reply_empty(struct rhema_req *r, int status);
/* Reply with the error format of DESIGN.md §6. */
void rhema_reply_error(struct rhema_req *r, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Map a RHEMA_E* code (and message) of a store call to an error reply. */
void rhema_reply_store_error(struct rhema_req *r, int rc, const char *msg);

/*
 * Keep a request to answer it later, from this worker's thread (group
 * commit).  Returns a heap copy that now owns the path and query; the
 * original is marked deferred.  Reply to the copy, then rhema_req_free() it.
 * NULL when out of memory (then answer synchronously).
 */
struct rhema_req *rhema_req_defer(struct rhema_req *r);
void rhema_req_free(struct rhema_req *r);

/*
 * Streamed replies (the AI gateway's server-sent events), on a deferred
 * request: start (status and headers, chunked body), chunks, end (after
 * which r->req is gone; rhema_req_free(r) still to do).
 */
void rhema_reply_stream_start(struct rhema_req *r, int status, const char *content_type);
void rhema_reply_stream_chunk(struct rhema_req *r, const void *data, size_t len);
void rhema_reply_stream_end(struct rhema_req *r);
/*
 * Watch a deferred request's connection: gone(arg) when the client leaves
 * before the reply is done (the request is then to be abandoned:
 * rhema_req_abandon(), no reply).  -1 when the client already left.  One
 * watch per connection; rhema_req_unwatch() before replying.
 */
int rhema_req_watch(struct rhema_req *r, void (*gone)(void *arg), void *arg);
void rhema_req_unwatch(struct rhema_req *r);
void rhema_req_abandon(struct rhema_req *r);
/* Bytes queued for r's client, not yet written (0 when it left). */
size_t rhema_req_output_queued(struct rhema_req *r);
/* With a watch: drained(arg) once, when the queued bytes fall to `low` or below. */
void rhema_req_watch_drain(struct rhema_req *r, size_t low, void (*drained)(void *arg));

/* 405 with an Allow header. */
void rhema_reply_method_not_allowed(struct rhema_req *r, const char *allow);

/*
 * The id at the start of a path's rest (up to the next '/'): copied into
 * id and *tail set to what follows ("" or "/..."), 0; or -1 after a 400
 * that names the path's `what` ("id", "node", ...) when it is not an id of
 * 1-128 characters [A-Za-z0-9._:-].
 */
int rhema_path_id(struct rhema_req *r, const char *rest, char id[RHEMA_ID_MAX + 2],
                  const char **tail, const char *what);

/* The methods a resource answers (bits); GET answers HEAD too. */
#define RHEMA_M_GET 1u
#define RHEMA_M_PUT 2u
#define RHEMA_M_POST 4u
#define RHEMA_M_DELETE 8u
#define RHEMA_M_PATCH 16u
/*
 * r's method when `allowed` has it (RHEMA_M_GET for GET and HEAD);
 * otherwise 0, after answering OPTIONS with the preflight and anything
 * else with 405 -- both with the Allow list made from `allowed`, in the
 * order GET, PUT, POST, DELETE, OPTIONS.  The routes switch on it:
 *     switch (rhema_method(r, RHEMA_M_GET | RHEMA_M_PUT)) {
 *     case RHEMA_M_GET: ...; break;
 *     case RHEMA_M_PUT: ...; break;
 *     }
 */
unsigned rhema_method(struct rhema_req *r, unsigned allowed);
/* OPTIONS: 204 with Allow, and the CORS preflight headers (service.cors) when an Origin came. */
void rhema_reply_preflight(struct rhema_req *r, const char *allow);

/*
 * The pipeline's origin stage: 1 after a 403 when r changes state (POST,
 * PUT, DELETE) and comes with an Origin that service.cors.origins does not
 * allow and that is not rhemad's own (a page in the operator's browser),
 * or with no Origin but "Sec-Fetch-Site: cross-site"; 0 otherwise (other
 * requests without Origin included: not a browser's).
 */
int rhema_cross_origin_refused(struct rhema_req *r);

/* The client's "host:port" (or "-" when unknown) into peer. */
void rhema_req_peer(struct rhema_req *r, char peer[64]);
/* "GET", "PUT" ... ("?" for an unknown method). */
const char *rhema_method_name(enum evhttp_cmd_type method);

/* Set a response header. */
void rhema_header(struct rhema_req *r, const char *name, const char *value);
/* A request header, or NULL. */
const char *rhema_req_header(struct rhema_req *r, const char *name);
/*
 * Parse the request body as JSON.  On failure replies 400 (bad_json) itself
 * and returns NULL; the caller just returns.
 */
json_t *rhema_req_json(struct rhema_req *r);
/* 1 when the request's Content-Type is the media type `want` (case-insensitive; parameters such as charset ignored). */
int rhema_req_media_type(struct rhema_req *r, const char *want);
/* Set the strong ETag of a version (conditional.h evaluates If-Match / If-None-Match). */
void rhema_header_etag(struct rhema_req *r, uint64_t version);

#endif /* RHEMA_CORE_HTTP_H */
