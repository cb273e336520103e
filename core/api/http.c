/*
 * http -- the worker threads, and the HTTP ends of the request path:
 *   accept -> size limit (header callback) -> the worker's handle()
 *   (pipeline.c: route, fence, handler ...) -> reply -> access log.
 */
#include "rhema_build.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/thread.h>
#include <event2/util.h>

#include "commit.h"
#include "http.h"
#include "json_fields.h"
#include "log.h"
#include "util.h"


/* ---- replies ---- */

void rhema_header(struct rhema_req *r, const char *name, const char *value)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(r->req);
    evhttp_remove_header(h, name);
    evhttp_add_header(h, name, value);
}

const char *rhema_req_header(struct rhema_req *r, const char *name)
{
    return evhttp_find_header(evhttp_request_get_input_headers(r->req), name);
}

/* The reason phrase of every status of RFC 9110 (and 429, RFC 6585). */
static const char *reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 205: return "Reset Content";
    case 206: return "Partial Content";
    case 300: return "Multiple Choices";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 407: return "Proxy Authentication Required";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Content";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    case 507: return "Insufficient Storage";
    default: break;
    }
    /* not one we send; the class's name rather than a made-up phrase */
    static const char *const classes[] = {"Informational", "Success", "Redirection",
                                          "Client Error", "Server Error"};
    return status >= 100 && status < 600 ? classes[status / 100 - 1] : "Unknown";
}

/* The service.cors.origins entry that lets `origin` in: "*", origin itself, or NULL. */
static const char *cors_match(const struct rhema_config *cfg, const char *origin)
{
    if (!cfg->cors_enabled)
        return NULL;
    for (size_t i = 0; i < cfg->cors_origins.n; i++) {
        const char *o = cfg->cors_origins.v[i];
        if (strcmp(o, "*") == 0 || strcmp(o, origin) == 0)
            return o;
    }
    return NULL;
}

static void add_cors(struct rhema_req *r)
{
    const char *origin = rhema_req_header(r, "Origin");
    const char *m = origin ? cors_match(r->worker->srv->cfg, origin) : NULL;
    if (!origin || !r->worker->srv->cfg->cors_enabled)
        return;
    if (m && strcmp(m, "*") == 0) {
        rhema_header(r, "Access-Control-Allow-Origin", "*");
    } else if (m) {
        rhema_header(r, "Access-Control-Allow-Origin", origin);
        rhema_header(r, "Vary", "Origin");
    }
    rhema_header(r, "Access-Control-Expose-Headers", "ETag, X-Request-Id, Location");
}

/*
 * A browser sends Origin with every cross-origin request, and a "simple"
 * POST (a form, or fetch with text/plain) reaches the server before CORS
 * can hide the answer from the page: refusing only the answer would still
 * execute the write.  So a state-changing request whose Origin is neither
 * allowed by service.cors.origins nor the daemon's own (scheme://Host) is
 * refused here, before any handler runs.  Requests without Origin (curl,
 * agents, other services) are not affected.
 */
int rhema_cross_origin_refused(struct rhema_req *r)
{
    const char *origin = rhema_req_header(r, "Origin");
    if (!origin || r->method == EVHTTP_REQ_GET || r->method == EVHTTP_REQ_HEAD ||
        r->method == EVHTTP_REQ_OPTIONS)
        return 0;
    if (cors_match(r->worker->srv->cfg, origin))
        return 0;
    const char *host = rhema_req_header(r, "Host");
    if (host && strncasecmp(origin, "http://", 7) == 0 && strcasecmp(origin + 7, host) == 0)
        return 0; /* same origin: a page rhemad served itself */
    rhema_reply_error(r, 403, "forbidden",
                      "origin '%s' is not allowed to change anything here (service.cors.origins)",
                      origin);
    return 1;
}

/*
 * The drain must not cut off a request that is still arriving.  evhttp
 * (libevent 2.1) neither lists its connections nor says when a request
 * starts, and a bufferevent filter to watch them loses replies on 2.1.12;
 * so each connection's socket bufferevent is made here (evhttp_set_bevcb)
 * with a callback on its input buffer that notes when bytes last arrived on
 * this worker.  A draining worker stops once no reply is being written and
 * no byte has arrived for DRAIN_QUIET_NS: a client that pauses longer than
 * that in the middle of a request is cut off (and so is one that holds a
 * request open past service.shutdown_timeout_seconds).
 */
#define DRAIN_QUIET_NS 1000000000ull

static void on_input(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    (void)buf;
    struct rhema_worker *w = arg;
    if (info->n_added)
        w->last_input_ns = rhema_monotonic_ns();
}

static struct bufferevent *conn_new(struct event_base *base, void *arg)
{
    struct bufferevent *bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (bev)
        evbuffer_add_cb(bufferevent_get_input(bev), on_input, arg);
    return bev; /* NULL: evhttp makes one itself */
}

static void on_complete(struct evhttp_request *req, void *arg)
{
    (void)req;
    struct rhema_worker *w = arg;
    atomic_fetch_sub(&w->inflight, 1);
}

static void log_access(struct rhema_req *r)
{
    if (atomic_load(&r->worker->srv->log_access)) {
        char peer[64] = "-";
        struct evhttp_connection *c = evhttp_request_get_connection(r->req);
        if (c) {
            char *host = NULL;
            ev_uint16_t port = 0;
            evhttp_connection_get_peer(c, &host, &port);
            if (host)
                snprintf(peer, sizeof peer, "%s:%u", host, port);
        }
        static const char *const methods[] = {"GET", "POST", "HEAD", "PUT", "DELETE",
                                              "OPTIONS", "TRACE", "CONNECT", "PATCH"};
        const char *m = "?";
        for (unsigned i = 0; i < 9; i++)
            if (r->method == (enum evhttp_cmd_type)(1 << i))
                m = methods[i];
        rhema_log_access(r->request_id, peer, m, evhttp_request_get_uri(r->req), r->status,
                         r->bytes_out, (double)(rhema_monotonic_ns() - r->t0_ns) / 1e6);
    }
}

void rhema_reply_evbuffer(struct rhema_req *r, int status, const char *content_type,
                          struct evbuffer *buf)
{
    size_t len = buf ? evbuffer_get_length(buf) : 0;
    rhema_header(r, "X-Request-Id", r->request_id);
    if (content_type)
        rhema_header(r, "Content-Type", content_type);
    add_cors(r);
    if (r->worker->draining)
        rhema_header(r, "Connection", "close");
    r->status = status;
    r->bytes_out = len;
    if (evhttp_request_get_connection(r->req)) { /* NULL: the client left; no completion */
        atomic_fetch_add(&r->worker->inflight, 1);
        evhttp_request_set_on_complete_cb(r->req, on_complete, r->worker);
    }
    log_access(r); /* before sending: the request may be freed by it */
    evhttp_send_reply(r->req, status, reason(status), buf);
}

void rhema_reply(struct rhema_req *r, int status, const char *content_type, const void *body,
                 size_t len)
{
    struct evbuffer *buf = evbuffer_new();
    if (body && len)
        evbuffer_add(buf, body, len);
    rhema_reply_evbuffer(r, status, content_type, buf);
    evbuffer_free(buf);
}

/* 405 with an Allow header. */
void rhema_reply_method_not_allowed(struct rhema_req *r, const char *allow)
{
    rhema_header(r, "Allow", allow);
    rhema_reply_error(r, 405, "method_not_allowed",
                      "this method is not allowed on %s (allowed: %s)", r->path, allow);
}

int rhema_path_id(struct rhema_req *r, const char *rest, char id[RHEMA_ID_MAX + 2],
                  const char **tail, const char *what)
{
    const char *slash = strchr(rest, '/');
    size_t n = slash ? (size_t)(slash - rest) : strlen(rest);
    if (n <= RHEMA_ID_MAX) {
        memcpy(id, rest, n);
        id[n] = '\0';
    }
    if (n > RHEMA_ID_MAX || !rhema_id_valid(id)) {
        rhema_reply_error(r, 400, "invalid_field",
                          "path %s: expected 1-128 characters [A-Za-z0-9._:-]", what);
        return -1;
    }
    *tail = slash ? slash : "";
    return 0;
}

unsigned rhema_method(struct rhema_req *r, unsigned allowed)
{
    static const struct {
        unsigned bit;
        const char *name;
    } names[] = {{RHEMA_M_GET, "GET"},
                 {RHEMA_M_PUT, "PUT"},
                 {RHEMA_M_POST, "POST"},
                 {RHEMA_M_DELETE, "DELETE"},
                 {RHEMA_M_PATCH, "PATCH"}};
    unsigned m = 0;
    switch (r->method) {
    case EVHTTP_REQ_GET:
    case EVHTTP_REQ_HEAD: m = RHEMA_M_GET; break;
    case EVHTTP_REQ_PUT: m = RHEMA_M_PUT; break;
    case EVHTTP_REQ_POST: m = RHEMA_M_POST; break;
    case EVHTTP_REQ_DELETE: m = RHEMA_M_DELETE; break;
    case EVHTTP_REQ_PATCH: m = RHEMA_M_PATCH; break;
    default: break;
    }
    if (m & allowed)
        return m;
    char allow[64] = "";
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (allowed & names[i].bit) {
            strcat(allow, names[i].name);
            strcat(allow, ", ");
        }
    strcat(allow, "OPTIONS");
    if (r->method == EVHTTP_REQ_OPTIONS)
        rhema_reply_preflight(r, allow);
    else
        rhema_reply_method_not_allowed(r, allow);
    return 0;
}

/* OPTIONS: 204 with Allow, and the CORS preflight headers (service.cors) when an Origin came. */
void rhema_reply_preflight(struct rhema_req *r, const char *allow)
{
    const struct rhema_config *cfg = r->worker->srv->cfg;
    rhema_header(r, "Allow", allow);
    if (cfg->cors_enabled && rhema_req_header(r, "Origin")) {
        char headers[1024] = "", age[24];
        size_t at = 0;
        int n = rhema_config_get_count(cfg, "service.cors.allow_headers");
        for (int i = 0; i < n; i++) {
            char path[64];
            const char *h = NULL;
            snprintf(path, sizeof path, "service.cors.allow_headers[%d]", i);
            if (rhema_config_get_string(cfg, path, &h) == 0 && at < sizeof headers)
                at += (size_t)snprintf(headers + at, sizeof headers - at, "%s%s", at ? ", " : "", h);
        }
        int64_t max_age = 600;
        rhema_config_get_int(cfg, "service.cors.max_age_seconds", &max_age);
        snprintf(age, sizeof age, "%lld", (long long)max_age);
        rhema_header(r, "Access-Control-Allow-Methods", allow);
        rhema_header(r, "Access-Control-Allow-Headers", headers);
        rhema_header(r, "Access-Control-Max-Age", age);
    }
    rhema_reply_empty(r, 204);
}

struct rhema_req *rhema_req_defer(struct rhema_req *r)
{
    struct rhema_req *d = malloc(sizeof *d);
    if (!d)
        return NULL;
    *d = *r;
    TAILQ_INIT(&d->query);
    TAILQ_CONCAT(&d->query, &r->query, next);
    r->path_buf = NULL;
    r->deferred = 1;
    return d;
}

void rhema_req_free(struct rhema_req *r)
{
    if (!r)
        return;
    evhttp_clear_headers(&r->query);
    free(r->path_buf);
    free(r);
}

void rhema_reply_json(struct rhema_req *r, int status, const char *json, size_t len)
{
    rhema_reply(r, status, "application/json", json, len);
}

void rhema_reply_jsonv(struct rhema_req *r, int status, json_t *v)
{
    if (!v) { /* the caller's json_pack() failed: not necessarily for memory */
        rhema_reply_error(r, 500, "internal", "could not build the reply");
        return;
    }
    char *text = rhema_json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(v);
    if (!text) {
        rhema_reply_error(r, 500, "internal", "could not encode the reply");
        return;
    }
    rhema_reply_json(r, status, text, strlen(text));
    free(text);
}

void rhema_reply_empty(struct rhema_req *r, int status) { rhema_reply(r, status, NULL, NULL, 0); }

/*
 * The message is made valid UTF-8 before it goes into JSON: it often quotes
 * what the client sent (a decoded path, a header), and jansson refuses
 * invalid UTF-8.  Each stray byte becomes U+FFFD, and a message longer
 * than the buffer is cut between characters (rhema_utf8_copy).
 */
void rhema_reply_error(struct rhema_req *r, int status, const char *code, const char *fmt, ...)
{
    char raw[1024], msg[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    size_t len = n < 0 ? 0 : (size_t)n < sizeof raw ? (size_t)n : sizeof raw - 1;
    rhema_utf8_copy(msg, sizeof msg, raw, len, n >= (int)sizeof raw);
    json_t *e = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg);
    char *text = e ? rhema_json_dumps(e, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(e);
    if (!text) {
        /* msg is valid UTF-8 and code one of ours, so only memory can be short
         * here; answer with a body that needs none, without guessing why */
        static const char body[] =
            "{\"error\":{\"code\":\"internal\",\"message\":\"could not build the error reply\"}}";
        rhema_reply_json(r, 500, body, sizeof body - 1);
        return;
    }
    rhema_reply_json(r, status, text, strlen(text));
    free(text);
}

void rhema_reply_store_error(struct rhema_req *r, int rc, const char *msg)
{
    switch (rc) {
    case RHEMA_EINVAL: rhema_reply_error(r, 400, "invalid_field", "%s", msg); break;
    case RHEMA_ENOTFOUND: rhema_reply_error(r, 404, "not_found", "%s", msg); break;
    case RHEMA_ECONFLICT: rhema_reply_error(r, 409, "conflict", "%s", msg); break;
    case RHEMA_EPRECONDITION: rhema_reply_error(r, 412, "precondition_failed", "%s", msg); break;
    case RHEMA_ETOOBIG: rhema_reply_error(r, 413, "too_large", "%s", msg); break;
    case RHEMA_EUNAVAIL:
        /* msg names the backend's host and port: for the log, not the client */
        rhema_log(RHEMA_LOG_WARN, "http", "%s %s: %s", r->request_id, r->path, msg);
        rhema_reply_error(r, 503, "unavailable", "the storage backend is not reachable");
        break;
    default:
        rhema_log(RHEMA_LOG_ERROR, "http", "%s %s: %s", r->request_id, r->path, msg);
        rhema_reply_error(r, 500, "internal", "%s", msg);
    }
}

void rhema_header_etag(struct rhema_req *r, uint64_t version)
{
    char etag[32];
    snprintf(etag, sizeof etag, "\"%llu\"", (unsigned long long)version);
    rhema_header(r, "ETag", etag);
}

json_t *rhema_req_json(struct rhema_req *r)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(r->req);
    size_t len = evbuffer_get_length(in);
    if (len == 0) {
        rhema_reply_error(r, 400, "bad_json", "request body is empty; expected JSON");
        return NULL;
    }
    const char *data = (const char *)evbuffer_pullup(in, -1);
    json_error_t jerr;
    json_t *v = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!v) {
        rhema_reply_error(r, 400, "bad_json", "malformed JSON at line %d column %d: %s",
                          jerr.line, jerr.column, jerr.text);
        return NULL;
    }
    return v;
}

static int parse_version(const char *s, uint64_t *out)
{
    char *end;
    while (*s == ' ')
        s++;
    if (strncmp(s, "W/", 2) == 0)
        return -1; /* weak validators never match a strong comparison */
    int quoted = *s == '"';
    if (quoted)
        s++;
    if (*s < '0' || *s > '9')
        return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || v == 0 || v == UINT64_MAX)
        return -1;
    if (quoted && *end++ != '"')
        return -1;
    while (*end == ' ')
        end++;
    if (*end)
        return -1;
    *out = v;
    return 0;
}

/* 1 when the request's Content-Type is the media type `want` (parameters ignored). */
int rhema_req_media_type(struct rhema_req *r, const char *want)
{
    const char *ct = rhema_req_header(r, "Content-Type");
    size_t n = strlen(want);
    if (!ct)
        return 0;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    if (strncasecmp(ct, want, n) != 0)
        return 0;
    ct += n;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    return *ct == '\0' || *ct == ';';
}

int rhema_req_precondition(struct rhema_req *r, uint64_t *expected)
{
    const char *im = rhema_req_header(r, "If-Match");
    const char *inm = rhema_req_header(r, "If-None-Match");
    *expected = RHEMA_VERSION_ANY;
    if (im && inm) {
        rhema_reply_error(r, 400, "bad_header", "If-Match and If-None-Match together");
        return -1;
    }
    if (inm) {
        if (strcmp(inm, "*") != 0) {
            rhema_reply_error(r, 400, "bad_header", "If-None-Match: only * is supported on writes");
            return -1;
        }
        *expected = RHEMA_VERSION_ABSENT;
    } else if (im && strcmp(im, "*") != 0) {
        if (parse_version(im, expected) != 0) {
            rhema_reply_error(r, 400, "bad_header",
                              "If-Match: expected one strong ETag such as \"3\", got '%s'", im);
            return -1;
        }
    }
    return 0;
}

/* ---- the request path ---- */

/* Set the request id: a valid incoming X-Request-Id, else boot id + worker + counter. */
static void request_id(struct rhema_req *r)
{
    const char *in = rhema_req_header(r, "X-Request-Id");
    if (in && strlen(in) < sizeof r->request_id && rhema_id_valid(in)) {
        snprintf(r->request_id, sizeof r->request_id, "%s", in);
        return;
    }
    snprintf(r->request_id, sizeof r->request_id, "%s-%d-%llx", r->worker->srv->boot_id,
             r->worker->id, (unsigned long long)++r->worker->seq);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    struct rhema_worker *w = arg;
    struct rhema_req r = {.req = req, .worker = w, .t0_ns = rhema_monotonic_ns()};
    TAILQ_INIT(&r.query);
    r.method = evhttp_request_get_command(req);
    request_id(&r);

    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *raw_path = uri ? evhttp_uri_get_path(uri) : NULL;
    size_t path_len = 0;
    char *path = raw_path ? evhttp_uridecode(raw_path, 0, &path_len) : NULL;
    r.path = path ? path : "/";
    r.path_buf = path;
    if (path && strlen(path) != path_len) { /* %00 would cut the id short */
        rhema_reply_error(&r, 400, "invalid_field",
                          "path: contains an encoded NUL (%%00), which no id may hold");
        goto done;
    }
    if (uri && evhttp_uri_get_query(uri) &&
        evhttp_parse_query_str(evhttp_uri_get_query(uri), &r.query) != 0) {
        rhema_reply_error(&r, 400, "bad_query", "malformed query string");
        goto done;
    }
    w->handle(&r);
done:
    if (r.status == 0 && !r.deferred) /* a handler that forgot to answer is a bug */
        rhema_reply_error(&r, 500, "internal", "no response");
    evhttp_clear_headers(&r.query); /* emptied by rhema_req_defer() */
    free(r.path_buf);                /* NULL when deferred */
}

/* ---- workers ---- */

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct rhema_worker *w = arg;
    if (w->store.pending_n) {
        int rc = rhema_store_flush_access(&w->store);
        if (rc)
            rhema_log(RHEMA_LOG_WARN, "session", "worker %d: flushing access counts: %s (%s)",
                      w->id, rhema_strerror(rc), w->srv->storage->errmsg(w->conn));
    }
    if (w->draining &&
        ((atomic_load(&w->inflight) <= 0 && w->outstanding == 0 &&
          rhema_monotonic_ns() - w->last_input_ns >= DRAIN_QUIET_NS) ||
         rhema_monotonic_ns() >= w->drain_deadline_ns))
        event_base_loopbreak(w->base);
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct rhema_worker *w = arg;
    if (w->draining)
        return;
    w->draining = 1;
    int64_t grace = 30;
    rhema_config_get_int(w->srv->cfg, "service.shutdown_timeout_seconds", &grace);
    w->drain_deadline_ns = rhema_monotonic_ns() + (uint64_t)grace * 1000000000ull;
    if (w->listener)
        evconnlistener_disable(w->listener);
    /* check every 20 ms from now on */
    struct timeval tv = {0, 20000};
    event_del(w->tick_ev);
    event_add(w->tick_ev, &tv);
}

static void *worker_main(void *arg)
{
    struct rhema_worker *w = arg;
    event_base_dispatch(w->base);
    return NULL;
}

static void worker_release(struct rhema_worker *w)
{
    rhema_mailbox_release(&w->mailbox); /* writes committed after the loop stopped: answer, then close */
    if (w->http)
        evhttp_free(w->http); /* frees its listener and connections, not the shared socket */
    else if (w->listener)
        evconnlistener_free(w->listener);
    if (w->stop_ev)
        event_free(w->stop_ev);
    if (w->tick_ev)
        event_free(w->tick_ev);
    rhema_codec_ctxs_release(&w->srv->codecs, &w->codec_ctxs);
    rhema_store_release(&w->store);
    if (w->conn)
        w->srv->storage->disconnect(w->conn);
    if (w->base)
        event_base_free(w->base);
    memset(w, 0, sizeof *w);
}

static int worker_setup(struct rhema_server *srv, struct rhema_worker *w, int id,
                        rhema_request_fn *handle, char **err)
{
    char *serr = NULL;
    w->id = id;
    w->srv = srv;
    w->handle = handle;
    atomic_store(&w->inflight, 0);
    int rc = srv->storage->connect(srv->storage_inst, &w->conn, &serr);
    if (rc) {
        if (asprintf(err, "worker %d: storage connect failed: %s", id,
                     serr ? serr : rhema_strerror(rc)) < 0)
            *err = NULL;
        free(serr);
        w->conn = NULL;
        return rc;
    }
    rhema_store_init(&w->store, srv->storage, w->conn);
    w->base = event_base_new();
    w->http = w->base ? evhttp_new(w->base) : NULL;
    if (!w->http)
        goto nomem;
    /* our own listener: evhttp_accept_socket() would close the shared fd when freed */
    w->listener = evconnlistener_new(w->base, NULL, NULL, LEV_OPT_CLOSE_ON_EXEC, 0, srv->listen_fd);
    if (!w->listener || !evhttp_bind_listener(w->http, w->listener))
        goto nomem;
    evhttp_set_allowed_methods(w->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
                                            EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                                            EVHTTP_REQ_HEAD | EVHTTP_REQ_PATCH);
    /*
     * libevent 2.1 answers a body over this limit with 413 itself (its own
     * small HTML body; 2.1 has no hook to format it) and closes the
     * connection, before reading the body.
     */
    evhttp_set_max_body_size(w->http, (ev_ssize_t)srv->cfg->max_request_size_bytes);
    evhttp_set_max_headers_size(w->http, 64 * 1024);
    evhttp_set_timeout(w->http, srv->cfg->request_timeout_seconds);
    evhttp_set_gencb(w->http, on_request, w);
    evhttp_set_bevcb(w->http, conn_new, w);
    evhttp_set_default_content_type(w->http, "application/json");
    w->stop_ev = event_new(w->base, -1, 0, on_stop, w);
    w->tick_ev = event_new(w->base, -1, EV_PERSIST, on_tick, w);
    if (!w->stop_ev || !w->tick_ev || rhema_mailbox_init(&w->mailbox, w->base) != 0)
        goto nomem;
    struct timeval second = {1, 0};
    event_add(w->tick_ev, &second);
    return 0;
nomem:
    if (asprintf(err, "worker %d: cannot set up its event loop", id) < 0)
        *err = NULL;
    return RHEMA_ENOMEM;
}

/* Split "host:port" / "[v6]:port" and bind + listen. */
static int bind_listen(struct rhema_server *srv, char **err)
{
    char host[128], port[16];
    const char *addr = srv->cfg->listen;
    const char *colon = strrchr(addr, ':');
    if (!colon || colon == addr || strlen(colon + 1) >= sizeof port)
        goto bad;
    size_t hl = (size_t)(colon - addr);
    if (addr[0] == '[') {
        if (hl < 3 || addr[hl - 1] != ']')
            goto bad;
        memcpy(host, addr + 1, hl - 2);
        host[hl - 2] = '\0';
    } else {
        if (hl >= sizeof host)
            goto bad;
        memcpy(host, addr, hl);
        host[hl] = '\0';
    }
    snprintf(port, sizeof port, "%s", colon + 1);

    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV},
                    *res = NULL;
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai != 0) {
        if (asprintf(err, "service.listen '%s': %s", addr, gai_strerror(gai)) < 0)
            *err = NULL;
        return RHEMA_EINVAL;
    }
    int fd = -1, saved = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            saved = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 1024) == 0)
            break;
        saved = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        if (asprintf(err, "service.listen '%s': cannot listen: %s", addr, strerror(saved)) < 0)
            *err = NULL;
        return RHEMA_EIO;
    }
    evutil_make_socket_nonblocking(fd);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    char h[INET6_ADDRSTRLEN] = "?";
    int p = 0;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &a->sin6_addr, h, sizeof h);
            p = ntohs(a->sin6_port);
            snprintf(srv->listen_addr, sizeof srv->listen_addr, "[%s]:%d", h, p);
        } else {
            struct sockaddr_in *a = (struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &a->sin_addr, h, sizeof h);
            p = ntohs(a->sin_port);
            snprintf(srv->listen_addr, sizeof srv->listen_addr, "%s:%d", h, p);
        }
    }
    srv->listen_fd = fd;
    return 0;
bad:
    if (asprintf(err, "service.listen '%s': expected host:port or [v6]:port", addr) < 0)
        *err = NULL;
    return RHEMA_EINVAL;
}

int rhema_http_start(struct rhema_server *srv, rhema_request_fn *handle, char **err)
{
    int rc;
    srv->listen_fd = -1;
    evthread_use_pthreads();
    if ((rc = bind_listen(srv, err)))
        return rc;
    srv->nworkers = srv->cfg->workers > 0 ? srv->cfg->workers : rhema_ncpu();
    srv->workers = calloc((size_t)srv->nworkers, sizeof *srv->workers);
    if (!srv->workers) {
        rc = RHEMA_ENOMEM;
        goto fail;
    }
    for (int i = 0; i < srv->nworkers; i++) {
        if ((rc = worker_setup(srv, &srv->workers[i], i, handle, err)))
            goto fail;
    }
    if (srv->storage->group &&
        (rc = rhema_committer_start(srv->storage, srv->storage_inst, &srv->committer, err)))
        goto fail;
    /* logged before the first worker can answer: whoever sees an answer sees this line */
    rhema_log(RHEMA_LOG_NOTICE, "http", "listening on %s with %d worker%s", srv->listen_addr,
              srv->nworkers, srv->nworkers == 1 ? "" : "s");
    for (int i = 0; i < srv->nworkers; i++) {
        if (pthread_create(&srv->workers[i].thread, NULL, worker_main, &srv->workers[i]) != 0) {
            rc = RHEMA_ENOMEM;
            if (asprintf(err, "cannot start worker thread %d", i) < 0)
                *err = NULL;
            srv->nworkers = i; /* stop the ones running */
            rhema_http_stop(srv);
            return rc;
        }
        srv->workers[i].started = 1;
    }
    return 0;
fail:
    for (int i = 0; srv->workers && i < srv->nworkers; i++)
        if (srv->workers[i].srv)
            worker_release(&srv->workers[i]);
    free(srv->workers);
    srv->workers = NULL;
    srv->nworkers = 0;
    close(srv->listen_fd);
    srv->listen_fd = -1;
    return rc;
}

void rhema_http_stop(struct rhema_server *srv)
{
    for (int i = 0; i < srv->nworkers; i++)
        if (srv->workers[i].started == 1)
            event_active(srv->workers[i].stop_ev, EV_TIMEOUT, 0);
    for (int i = 0; i < srv->nworkers; i++)
        if (srv->workers[i].started == 1)
            pthread_join(srv->workers[i].thread, NULL);
    rhema_committer_stop(srv->committer); /* runs what is queued; workers answer below */
    srv->committer = NULL;
    for (int i = 0; i < srv->nworkers; i++)
        worker_release(&srv->workers[i]);
    free(srv->workers);
    srv->workers = NULL;
    srv->nworkers = 0;
    if (srv->listen_fd >= 0)
        close(srv->listen_fd);
    srv->listen_fd = -1;
}
