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
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/thread.h>
#include <event2/util.h>
#include <openssl/ssl.h>

#include "ai/gateway.h"
#include "audit.h"
#include "commit.h"
#include "http.h"
#include "json_fields.h"
#include "log.h"
#include "session_access.h"
#include "tls.h"
#include "metrics/metrics.h"
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
    rhema_header(r, "Access-Control-Expose-Headers",
                 "ETag, X-Request-Id, Location, RateLimit, RateLimit-Policy, Retry-After");
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
    if (r->method == EVHTTP_REQ_GET || r->method == EVHTTP_REQ_HEAD ||
        r->method == EVHTTP_REQ_OPTIONS)
        return 0;
    if (!origin) {
        /* a browser that sends no Origin still says where the request comes from */
        const char *site = rhema_req_header(r, "Sec-Fetch-Site");
        if (site && strcasecmp(site, "cross-site") == 0) {
            rhema_reply_error(r, 403, "forbidden",
                              "a cross-site browser request may not change anything here "
                              "(Sec-Fetch-Site: cross-site without an Origin)");
            return 1;
        }
        return 0;
    }
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
 * ---- connections ----
 *
 * evhttp (libevent 2.1.12) neither lists its connections nor says when a
 * request starts, when its headers end, or when a connection goes away
 * before its reply was written; and every limit of issue 17 needs one of
 * those.  So each connection's socket bufferevent is made here
 * (evhttp_set_bevcb) with a `struct conn` beside it:
 *
 *  - a callback on its input buffer runs before evhttp parses the bytes
 *    (evbuffer callbacks are not deferred; the bufferevent's read callback,
 *    evhttp's parser, runs after).  It notes when bytes arrive (the drain)
 *    and finds where the header block of the current request ends: the
 *    first empty line ("\n\n" or "\n\r\n", the line ends evhttp reads with
 *    EVBUFFER_EOL_CRLF) after the request's first byte.  That is all it
 *    reads of the bytes: the framing itself stays evhttp's.  It gives the
 *    header deadline (service.request_header_timeout_seconds) and the body
 *    deadline (service.request_body_timeout_seconds);
 *  - a callback on its output buffer counts the bytes queued per
 *    connection and across workers (service.max_output_buffer_*), and
 *    replaces the HTML error pages evhttp writes by itself (parser-level
 *    400, 413) with the API's JSON error (rewrite_error_page());
 *  - evhttp_connection_set_closecb() tells when evhttp frees the
 *    connection, whatever the cause (a reset, a timeout, a close after the
 *    reply): the connection count (service.max_connections) and the
 *    replies counted in flight for the drain are given back there, so a
 *    client that resets mid-reply is never waited for.
 *
 * The evhttp_connection is only known once evhttp has set its callbacks on
 * the bufferevent, after conn_new() returns: it is read back with
 * bufferevent_getcb() by on_service(), which runs in the same loop turn (an
 * active event), before any byte can be read on the new socket.
 *
 * A connection is cut (cut()) by calling evhttp's own event callback for
 * the bufferevent with an error, as a reset by the client does: evhttp
 * frees the connection and its request at once.  It is only ever done from
 * a callback of ours at the top of the loop (a timer, the service event),
 * never from inside an evhttp call.
 *
 * With service.tls on (tls.h), the bufferevent is an OpenSSL one
 * (bufferevent_openssl_socket_new(), BUFFEREVENT_SSL_ACCEPTING): its input
 * and output buffers hold the plaintext, so every hook above works on the
 * HTTP bytes as it does without TLS.  The handshake runs before any byte
 * reaches the input buffer, bounded by evhttp's timeout
 * (service.request_timeout_seconds); a handshake that fails (plain HTTP to
 * the TLS port, an unknown client certificate) is an error event, on
 * which evhttp frees the connection, and on_close() logs why.
 *
 * A drain stops a worker once no reply is being written, no request is
 * partly received (a connection in its header or body phase: bounded by
 * their deadlines), and no byte has arrived for DRAIN_QUIET_NS; or at
 * service.shutdown_timeout_seconds, whatever is still open.
 */
#define DRAIN_QUIET_NS 1000000000ull
#define ACCEPT_BACKOFF_MS 500

enum conn_phase { C_IDLE, C_HEADERS, C_BODY, C_BUSY };

struct conn {
    struct rhema_worker *w;
    struct bufferevent *bev;
    struct evhttp_connection *evcon;   /* NULL until adopted */
    TAILQ_ENTRY(conn) link;            /* in fresh or live */
    TAILQ_ENTRY(conn) cut_link;        /* in cuts when to_cut */
    struct evbuffer_cb_entry *in_cb, *out_cb;
    struct event *deadline_ev;
    enum conn_phase phase;
    int nl;                 /* blank-line scanner: 1 after '\n', 2 after "\n\r" */
    uint64_t received, consumed; /* input bytes added to / drained from the buffer, ever */
    uint64_t req_start;     /* where the next request begins, in `received` terms */
    uint64_t scanned;       /* scanned for the end of the header block up to here */
    size_t out_held;        /* bytes in the output buffer (counted in http_out_bytes) */
    unsigned replies;       /* replies handed to evhttp, not fully written */
    int over_limit;         /* accepted past service.max_connections */
    int close_after;        /* cut once the reply is written (CONNECT) */
    int to_cut;
    int foreign;            /* evhttp is writing a reply of its own */
    size_t foreign_start;   /* ... that begins at this offset of the output buffer */
    int rewriting;
    int tls;                /* an OpenSSL bufferevent */
    int refuse;             /* TLS could not be set up: cut at adoption, unread */
    /* a deferred reply's watchers (rhema_req_watch): the client left; the output drained */
    void (*on_gone)(void *arg);
    void (*on_drained)(void *arg);
    void *watch_arg;
    size_t drain_low;
    struct event *gone_ev;  /* the socket, read for its end while a watched reply waits */
};

TAILQ_HEAD(conn_list, conn);

struct rhema_http_conns {
    struct conn_list fresh, live, cuts;
    struct event *service_ev;   /* adopts fresh connections, cuts those marked */
    struct event *resume_ev;    /* re-checks the listener (any thread may activate it) */
    struct event *backoff_ev;   /* the end of an accept backoff */
    struct conn *cur;           /* the connection whose bytes arrived last */
    int sending;                /* inside evhttp_send_reply(): the output is ours */
    int backoff;                /* accept() failed for want of resources */
    int listening;
    int accepted;               /* accepted a connection this turn: paused until on_service */
    /* settings, read once at start */
    int64_t max_conns, header_timeout_s, body_timeout_s, out_conn_max, out_total_max;
    uint64_t in_busy_max;       /* input held while a reply is written: one request */
};

static void conn_schedule_cut(struct conn *c)
{
    struct rhema_http_conns *k = c->w->conns;
    if (c->to_cut)
        return;
    c->to_cut = 1;
    TAILQ_INSERT_TAIL(&k->cuts, c, cut_link);
    event_active(k->service_ev, EV_TIMEOUT, 0);
}

/* Close the connection now, as a client's close would.  Frees c (on_close). */
static void cut(struct conn *c)
{
    bufferevent_event_cb ecb = NULL;
    void *arg = NULL;
    bufferevent_getcb(c->bev, NULL, NULL, &ecb, &arg);
    /* ERROR, not EOF alone: evhttp takes READING|EOF in a body read to the
     * end of the stream as the end of that body */
    if (ecb && c->evcon)
        ecb(c->bev, BEV_EVENT_ERROR | BEV_EVENT_READING, arg);
}

/*
 * A short JSON error written straight to the socket, for a connection that
 * is cut while evhttp is reading it (no reply of evhttp's is under way, so
 * the output buffer is empty); best effort, never blocking.
 */
static void say_and_cut(struct conn *c, int status, const char *reason, const char *code,
                        const char *msg)
{
    char body[384], head[256];
    int bl = snprintf(body, sizeof body, "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}", code,
                      msg);
    int hl = snprintf(head, sizeof head,
                      "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                      "Content-Length: %d\r\nConnection: close\r\n\r\n",
                      status, reason, bl);
    evutil_socket_t fd = bufferevent_getfd(c->bev);
    if (c->tls) {
        /* the record goes through the connection's SSL (its handshake done, nothing
         * of ours pending in it): best effort, as below; never plaintext */
        SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
        char all[sizeof head + sizeof body];
        int n = snprintf(all, sizeof all, "%s%s", head, body);
        if (ssl && SSL_is_init_finished(ssl) &&
            evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
            (void)!SSL_write(ssl, all, n);
    } else if (fd >= 0 && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
        struct iovec iov[2] = {{head, (size_t)hl}, {body, (size_t)bl}};
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2};
        (void)!sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    cut(c);
}

static void deadline_arm(struct conn *c, int64_t seconds)
{
    struct timeval tv = {(time_t)seconds, 0};
    evtimer_add(c->deadline_ev, &tv);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct conn *c = arg;
    if (c->phase == C_HEADERS) {
        rhema_log(RHEMA_LOG_INFO, "http", "cut a connection whose request headers took over %llds "
                  "(service.request_header_timeout_seconds)",
                  (long long)c->w->conns->header_timeout_s);
        say_and_cut(c, 408, "Request Timeout", "request_timeout",
                    "request headers not complete within service.request_header_timeout_seconds");
    } else if (c->phase == C_BODY) {
        rhema_log(RHEMA_LOG_INFO, "http", "cut a connection whose request body took over %llds "
                  "(service.request_body_timeout_seconds)",
                  (long long)c->w->conns->body_timeout_s);
        say_and_cut(c, 408, "Request Timeout", "request_timeout",
                    "request body not complete within service.request_body_timeout_seconds");
    }
}

/* Scan input bytes [c->scanned, c->received) for the empty line that ends the header block. */
static void scan_headers(struct conn *c, struct evbuffer *buf)
{
    if (c->scanned < c->consumed) /* not possible while evhttp parses after us; be safe */
        c->scanned = c->consumed;
    struct evbuffer_ptr p;
    if (c->scanned >= c->received ||
        evbuffer_ptr_set(buf, &p, (size_t)(c->scanned - c->consumed), EVBUFFER_PTR_SET) != 0)
        return;
    struct evbuffer_iovec v[8];
    while (c->phase == C_HEADERS && c->scanned < c->received) {
        int n = evbuffer_peek(buf, (ev_ssize_t)(c->received - c->scanned), &p, v, 8);
        if (n <= 0)
            return;
        size_t took = 0;
        for (int i = 0; i < n && i < 8 && c->phase == C_HEADERS; i++) {
            const unsigned char *s = v[i].iov_base;
            size_t j = 0;
            for (; j < v[i].iov_len; j++) {
                if (s[j] == '\n') {
                    if (c->nl) { /* an empty line: the header block is complete */
                        j++;
                        c->phase = C_BODY;
                        deadline_arm(c, c->w->conns->body_timeout_s);
                        break;
                    }
                    c->nl = 1;
                } else {
                    c->nl = s[j] == '\r' && c->nl == 1 ? 2 : 0;
                }
            }
            took += j;
        }
        c->scanned += took;
        if (evbuffer_ptr_set(buf, &p, took, EVBUFFER_PTR_ADD) != 0)
            return;
    }
}

/* A request begins at c->req_start: its header deadline starts now. */
static void request_begin(struct conn *c, struct evbuffer *in)
{
    c->phase = C_HEADERS;
    c->nl = 0;
    c->scanned = c->req_start;
    deadline_arm(c, c->w->conns->header_timeout_s);
    scan_headers(c, in);
}

static void on_input(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct conn *c = arg;
    c->consumed += info->n_deleted;
    if (!info->n_added)
        return;
    c->received += info->n_added;
    c->w->last_input_ns = rhema_monotonic_ns();
    c->w->conns->cur = c;
    if (!c->evcon)
        return; /* adopted in this loop turn, before evhttp reads anything */
    if (c->phase == C_IDLE)
        request_begin(c, buf);
    else if (c->phase == C_HEADERS)
        scan_headers(c, buf);
    else if (c->phase == C_BUSY && c->received - c->consumed > c->w->conns->in_busy_max)
        /* While it writes a reply, evhttp keeps reading (to see a close) but parses
         * nothing: a client that sends on without reading would pile its bytes up
         * here.  Stop reading; evhttp reads again when the next request starts. */
        bufferevent_disable(c->bev, EV_READ);
}

/*
 * evhttp writes two replies of its own, outside evhttp_send_reply(): "100
 * Continue" (left alone) and the error page of evhttp_send_error() for
 * what its parser refused (400, 413).  Its bytes are the only ones added
 * to the output while k->sending is 0, all within one evhttp call, and the
 * page always ends with the text below; the page is then replaced, in
 * place, by the same status with the API's JSON error.
 */
static const char html_tail[] = "</BODY></HTML>\n";

static void rewrite_error_page(struct conn *c, struct evbuffer *out)
{
    size_t len = evbuffer_get_length(out), tl = sizeof html_tail - 1;
    char tail[sizeof html_tail], line[64];
    struct evbuffer_ptr p;
    if (len < c->foreign_start + 16)
        return;
    /*
     * A socket bufferevent keeps the start of its output frozen outside its
     * write callback (bufferevent_sock.c), which makes copyout and drain
     * fail: thawed here, on this thread, for the rewrite, and frozen again.
     */
    int frozen = evbuffer_copyout(out, line, 1) < 0;
    if (frozen)
        evbuffer_unfreeze(out, 1);
    evbuffer_ptr_set(out, &p, c->foreign_start, EVBUFFER_PTR_SET);
    ev_ssize_t ll = evbuffer_copyout_from(out, &p, line, sizeof line - 1);
    line[ll > 0 ? ll : 0] = '\0';
    int status = 0;
    char version[4] = "1.1";
    if (sscanf(line, "HTTP/%3[0-9.] %d", version, &status) != 2 || status == 100) {
        c->foreign = 0; /* "100 Continue", written in one piece: left as it is */
        goto out;
    }
    if (len < c->foreign_start + tl || evbuffer_ptr_set(out, &p, len - tl, EVBUFFER_PTR_SET) != 0 ||
        evbuffer_copyout_from(out, &p, tail, tl) != (ev_ssize_t)tl || memcmp(tail, html_tail, tl))
        goto out; /* the page is not complete yet */
    const char *code = "bad_request", *reason = "Bad Request";
    char msg[200];
    snprintf(msg, sizeof msg, "malformed HTTP request: request line, headers or framing");
    if (status == 413) {
        code = "too_large", reason = "Payload Too Large";
        snprintf(msg, sizeof msg, "request body over service.max_request_size_bytes (%lld bytes)",
                 (long long)c->w->srv->cfg->max_request_size_bytes);
    } else if (status == 501) {
        code = "not_implemented", reason = "Not Implemented";
        snprintf(msg, sizeof msg, "method not implemented");
    } else if (status != 400) {
        code = "http_error", reason = "Error";
        snprintf(msg, sizeof msg, "HTTP error %d", status);
    }
    char body[320];
    int bl = snprintf(body, sizeof body, "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}", code,
                      msg);
    struct evbuffer *keep = evbuffer_new();
    if (!keep)
        goto out;
    c->rewriting = 1;
    evbuffer_remove_buffer(out, keep, c->foreign_start); /* replies before the page, if any */
    evbuffer_drain(out, evbuffer_get_length(out));
    evbuffer_add_printf(out,
                        "HTTP/%s %d %s\r\nContent-Type: application/json\r\n"
                        "Content-Length: %d\r\nConnection: close\r\n\r\n%s",
                        version, status, reason, bl, body);
    evbuffer_prepend_buffer(out, keep);
    c->rewriting = 0;
    evbuffer_free(keep);
    c->foreign = 0;
out:
    if (frozen)
        evbuffer_freeze(out, 1);
}

static void on_output(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct conn *c = arg;
    struct rhema_worker *w = c->w;
    long long delta = (long long)info->n_added - (long long)info->n_deleted;
    c->out_held = (size_t)((long long)c->out_held + delta);
    atomic_fetch_add(&w->srv->http_out_bytes, delta);
    if (info->n_deleted && c->on_drained && c->out_held <= c->drain_low) {
        void (*fn)(void *) = c->on_drained;
        c->on_drained = NULL; /* once per rhema_req_watch_drain() */
        fn(c->watch_arg);
    }
    if (c->rewriting || !info->n_added)
        return;
    if (w->conns->sending) {
        c->foreign = 0;
        return;
    }
    if (!c->foreign) {
        c->foreign = 1;
        c->foreign_start = info->orig_size;
    }
    rewrite_error_page(c, buf);
}

static void listener_update(struct rhema_worker *w)
{
    struct rhema_http_conns *k = w->conns;
    if (!w->listener || !k)
        return;
    int want = !w->draining && !k->backoff && !k->accepted &&
               (k->max_conns == 0 || atomic_load(&w->srv->http_conns) < k->max_conns);
    if (want && !k->listening)
        evconnlistener_enable(w->listener);
    else if (!want && k->listening)
        evconnlistener_disable(w->listener);
    k->listening = want;
}

/* Every worker re-checks its listener (a connection closed, or the limit was reached). */
static void poke_workers(struct rhema_server *srv)
{
    for (int i = 0; i < srv->nworkers; i++) {
        struct rhema_http_conns *k = srv->workers[i].conns;
        if (k && k->resume_ev)
            event_active(k->resume_ev, EV_TIMEOUT, 0);
    }
}

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    listener_update(arg);
}

static void on_backoff_end(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct rhema_worker *w = arg;
    w->conns->backoff = 0;
    listener_update(w);
}

/*
 * accept() failed.  Without this callback libevent logs the error and
 * retries at once: at the descriptor limit the pending connection stays
 * pending and the loop spins.  Stop accepting for ACCEPT_BACKOFF_MS instead
 * (nginx waits its accept_mutex_delay, 500 ms, too); connections waiting
 * in the backlog are accepted once descriptors are free again.
 */
static _Thread_local struct rhema_worker *this_worker; /* set by worker_main */

static void on_accept_error(struct evconnlistener *lev, void *arg)
{
    (void)lev, (void)arg; /* arg is evhttp's (the listener's user data) */
    struct rhema_worker *w = this_worker;
    int e = EVUTIL_SOCKET_ERROR();
    /* the same line from every worker, so that the log folds its repeats */
    rhema_log(RHEMA_LOG_WARN, "http", "accept: %s; not accepting new connections for %d ms",
              strerror(e), ACCEPT_BACKOFF_MS);
    w->conns->backoff = 1;
    listener_update(w);
    struct timeval tv = {0, ACCEPT_BACKOFF_MS * 1000};
    evtimer_add(w->conns->backoff_ev, &tv);
}

static void conn_free(struct conn *c)
{
    struct rhema_worker *w = c->w;
    struct rhema_http_conns *k = w->conns;
    if (c->in_cb)
        evbuffer_remove_cb_entry(bufferevent_get_input(c->bev), c->in_cb);
    if (c->out_cb)
        evbuffer_remove_cb_entry(bufferevent_get_output(c->bev), c->out_cb);
    if (c->deadline_ev)
        event_free(c->deadline_ev);
    if (c->gone_ev)
        event_free(c->gone_ev);
    if (c->to_cut)
        TAILQ_REMOVE(&k->cuts, c, cut_link);
    if (k->cur == c)
        k->cur = NULL;
    atomic_fetch_sub(&w->srv->http_out_bytes, (long long)c->out_held);
    atomic_fetch_sub(&w->inflight, (int)c->replies);
    long before = atomic_fetch_sub(&w->srv->http_conns, 1);
    if (k->max_conns && before >= k->max_conns)
        poke_workers(w->srv);
    free(c);
}

/* evhttp frees the connection: whatever the cause, it is no longer open nor in flight. */
static void on_close(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    struct conn *c = arg;
    if (c->on_gone) {
        void (*fn)(void *) = c->on_gone;
        c->on_gone = c->on_drained = NULL;
        fn(c->watch_arg);
    }
    if (c->tls)
        rhema_tls_conn_closed(c->bev);
    TAILQ_REMOVE(&c->w->conns->live, c, link);
    conn_free(c);
}

static struct bufferevent *conn_new(struct event_base *base, void *arg)
{
    struct rhema_worker *w = arg;
    struct rhema_http_conns *k = w->conns;
    struct conn *c = calloc(1, sizeof *c);
    struct bufferevent *bev = NULL;
    if (c && rhema_tls_enabled()) {
        /* the SSL is the bufferevent's from here on (freed with it, failure included) */
        SSL *ssl = rhema_tls_ssl_new();
        if (ssl)
            bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                 BEV_OPT_CLOSE_ON_FREE);
        if (bev) {
            c->tls = 1;
            /* a client that closes without close_notify ends the stream, not an error */
            bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
        } else {
            /* NULL would make evhttp serve the TLS port in plaintext: a plain
             * bufferevent instead, cut before a byte is read (on_service) */
            c->refuse = 1;
            rhema_log(RHEMA_LOG_ERROR, "tls", "cannot set up TLS for a new connection "
                      "(out of memory): closing it");
        }
    }
    if (c && !bev)
        bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (c)
        c->deadline_ev = evtimer_new(base, on_deadline, c);
    if (!bev || !c->deadline_ev) {
        if (bev)
            bufferevent_free(bev);
        if (c && c->deadline_ev)
            event_free(c->deadline_ev);
        free(c);
        return NULL; /* evhttp makes one itself: served, not counted */
    }
    c->w = w;
    c->bev = bev;
    c->in_cb = evbuffer_add_cb(bufferevent_get_input(bev), on_input, c);
    c->out_cb = evbuffer_add_cb(bufferevent_get_output(bev), on_output, c);
    bufferevent_incref(bev); /* kept alive until on_service() has looked at it */
    long n = atomic_fetch_add(&w->srv->http_conns, 1) + 1;
    if (k->max_conns && n > k->max_conns)
        c->over_limit = 1;
    if (k->max_conns && n >= k->max_conns) {
        listener_update(w); /* stops this worker's accept loop at once */
        poke_workers(w->srv);
    }
    TAILQ_INSERT_TAIL(&k->fresh, c, link);
    event_active(k->service_ev, EV_TIMEOUT, 0);
    if (w->srv->nworkers > 1) {
        /*
         * One connection a turn, as nginx's workers take them (multi_accept
         * off): every worker waits on the shared listening socket, and
         * libevent's listener would accept all that are pending, so a burst
         * of connections (a pool opening 32 at once) all landed on the
         * worker that woke first and the others sat idle.  Paused here, the
         * accept loop stops; on_service, later in this turn, resumes it.
         */
        k->accepted = 1;
        listener_update(w);
    }
    return bev;
}

/* The service event: adopt the connections accepted this turn, cut those marked. */
static void on_service(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct rhema_worker *w = arg;
    struct rhema_http_conns *k = w->conns;
    struct conn *c;
    if (k->accepted) {
        k->accepted = 0;
        listener_update(w);
    }
    while ((c = TAILQ_FIRST(&k->fresh))) {
        TAILQ_REMOVE(&k->fresh, c, link);
        bufferevent_data_cb rcb = NULL;
        void *evcon = NULL;
        bufferevent_getcb(c->bev, &rcb, NULL, NULL, &evcon);
        struct bufferevent *bev = c->bev;
        if (!rcb || !evcon) { /* evhttp already gave it up */
            conn_free(c);
            bufferevent_decref(bev);
            continue;
        }
        c->evcon = evcon;
        TAILQ_INSERT_TAIL(&k->live, c, link);
        evhttp_connection_set_closecb(c->evcon, on_close, c);
        bufferevent_decref(bev);
        if (c->tls) {
            /*
             * bufferevent_openssl writes each chunk of the output buffer as its own
             * record and send(): a reply tls_coalesce() leaves in several chunks
             * (over one record, or queued behind another) is several segments, and
             * Nagle would hold the last until the client's delayed ACK (40 ms).
             */
            int one = 1;
            setsockopt(bufferevent_getfd(c->bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        }
        if (c->refuse) {
            cut(c);
        } else if (c->over_limit) {
            rhema_log(RHEMA_LOG_WARN, "http", "service.max_connections (%lld) reached: "
                      "closing a connection accepted past it", (long long)k->max_conns);
            say_and_cut(c, 503, "Service Unavailable", "unavailable",
                        "too many connections (service.max_connections)");
        } else if (evbuffer_get_length(bufferevent_get_input(c->bev))) {
            request_begin(c, bufferevent_get_input(c->bev));
        }
    }
    while ((c = TAILQ_FIRST(&k->cuts))) {
        TAILQ_REMOVE(&k->cuts, c, cut_link);
        c->to_cut = 0;
        cut(c);
    }
}

/* The connection a request came on, or NULL (the client left). */
static struct conn *conn_of(struct rhema_worker *w, struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct rhema_http_conns *k = w->conns;
    if (!evcon || !k)
        return NULL;
    if (k->cur && k->cur->evcon == evcon)
        return k->cur;
    struct conn *c;
    TAILQ_FOREACH(c, &k->live, link)
        if (c->evcon == evcon)
            return c;
    return NULL;
}

static void on_complete(struct evhttp_request *req, void *arg)
{
    struct conn *c = arg;
    struct rhema_worker *w = c->w;
    (void)req;
    atomic_fetch_sub(&w->inflight, 1);
    c->replies--;
    if (c->close_after) {
        /* evhttp keeps a CONNECT's connection open whatever its Connection
         * header says: drop what came after it unread, and cut it before
         * evhttp reads anything more (the service event runs this turn) */
        struct evbuffer *in = bufferevent_get_input(c->bev);
        evbuffer_drain(in, evbuffer_get_length(in));
        conn_schedule_cut(c);
        return;
    }
    c->phase = C_IDLE;
    if (c->received > c->req_start) /* the next request is already here (pipelined) */
        request_begin(c, bufferevent_get_input(c->bev));
}

void rhema_req_peer(struct rhema_req *r, char peer[64])
{
    struct evhttp_connection *c = evhttp_request_get_connection(r->req);
    snprintf(peer, 64, "-");
    if (c) {
        char *host = NULL;
        ev_uint16_t port = 0;
        evhttp_connection_get_peer(c, &host, &port);
        if (host)
            snprintf(peer, 64, "%s:%u", host, port);
    }
}

const char *rhema_method_name(enum evhttp_cmd_type method)
{
    static const char *const methods[] = {"GET", "POST", "HEAD", "PUT", "DELETE",
                                          "OPTIONS", "TRACE", "CONNECT", "PATCH"};
    for (unsigned i = 0; i < 9; i++)
        if (method == (enum evhttp_cmd_type)(1 << i))
            return methods[i];
    return "?";
}

static void log_access(struct rhema_req *r)
{
    if (atomic_load(&r->worker->srv->log_access)) {
        char peer[64];
        rhema_req_peer(r, peer);
        /* a worker batches its access lines: written at the end of this loop turn */
        if (rhema_log_access(r->request_id, peer, rhema_method_name(r->method),
                             evhttp_request_get_uri(r->req), r->status, r->bytes_out,
                             (double)(rhema_monotonic_ns() - r->t0_ns) / 1e6) &&
            r->worker->log_ev)
            event_active(r->worker->log_ev, EV_TIMEOUT, 0);
    }
}

/*
 * Replies up to this size are never refused for the output limits, so that
 * an error can always be answered; they are bounded by the connections.
 */
#define OUTPUT_SMALL_REPLY 16384

/*
 * A small reply as one TLS record: bufferevent_openssl writes each chunk of
 * the output buffer with its own SSL_write() (a record and a send() each),
 * and evhttp queues a reply's headers and body as separate chunks.  Only
 * when the output held nothing before this reply, so that no partly written
 * record is pending (libevent drains what SSL_write() took at once).  Its
 * start may be frozen, as in rewrite_error_page().
 */
#define TLS_COALESCE_MAX 16384 /* one record's worth */

static void tls_coalesce(struct conn *c)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    size_t len = evbuffer_get_length(out);
    char probe;
    if (len == 0 || len > TLS_COALESCE_MAX)
        return;
    int frozen = evbuffer_copyout(out, &probe, 1) < 0;
    if (frozen)
        evbuffer_unfreeze(out, 1);
    evbuffer_pullup(out, -1);
    if (frozen)
        evbuffer_freeze(out, 1);
}

void rhema_reply_evbuffer(struct rhema_req *r, int status, const char *content_type,
                          struct evbuffer *buf)
{
    struct rhema_worker *w = r->worker;
    struct rhema_http_conns *k = w->conns;
    size_t len = buf ? evbuffer_get_length(buf) : 0;
    struct conn *c = conn_of(w, r->req);
    if (k && len > OUTPUT_SMALL_REPLY && r->reads) { /* a write's reply is never refused after it */
        long long total = atomic_load(&w->srv->http_out_bytes);
        if (c && (long long)(c->out_held + len) > k->out_conn_max) {
            rhema_reply_error(r, 503, "reply_too_large",
                              "the reply (%zu bytes) is over service.max_output_buffer_bytes "
                              "(%lld)", len, (long long)k->out_conn_max);
            return;
        }
        if (total + (long long)len > k->out_total_max) {
            rhema_header(r, "Retry-After", "1");
            rhema_reply_error(r, 503, "overloaded",
                              "replies waiting for their clients fill "
                              "service.max_output_buffer_total_bytes; retry");
            return;
        }
    }
    rhema_header(r, "X-Request-Id", r->request_id);
    if (content_type)
        rhema_header(r, "Content-Type", content_type);
    add_cors(r);
    if (w->draining || r->close)
        rhema_header(r, "Connection", "close");
    r->status = status;
    r->bytes_out = len;
    if (r->method == EVHTTP_REQ_HEAD) {
        /* evhttp 2.1.12 sends a HEAD reply's body and leaves out its
         * Content-Length: say GET's length, send no body */
        char cl[24];
        snprintf(cl, sizeof cl, "%zu", len);
        if (status >= 200 && status != 204 && status != 304)
            rhema_header(r, "Content-Length", cl);
        buf = NULL;
        r->bytes_out = 0;
    } else if (r->method == EVHTTP_REQ_CONNECT) {
        char cl[24]; /* evhttp frames no body for a CONNECT: the reply has one */
        snprintf(cl, sizeof cl, "%zu", len);
        rhema_header(r, "Content-Length", cl);
    }
    if (c) { /* NULL: the client left; no completion */
        atomic_fetch_add(&w->inflight, 1);
        c->replies++;
        c->close_after = r->close && r->method == EVHTTP_REQ_CONNECT;
        evhttp_request_set_on_complete_cb(r->req, on_complete, c);
    }
    rhema_metrics_reply(w->metrics, r->route, (unsigned)r->method, status,
                        rhema_monotonic_ns() - r->t0_ns);
    log_access(r); /* before sending: the request may be freed by it */
    if (r->on_reply)
        r->on_reply(r);
    size_t queued = c ? evbuffer_get_length(bufferevent_get_output(c->bev)) : 0;
    if (k) /* NULL: a request made without a worker's connections (tests/unit/test_http) */
        k->sending = 1;
    evhttp_send_reply(r->req, status, reason(status), buf);
    if (k)
        k->sending = 0;
    if (c && c->tls && queued == 0)
        tls_coalesce(c);
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

/*
 * evhttp does not read a connection while its request waits for the reply:
 * a client that leaves then is only seen at the first write.  A watched
 * request's socket is polled for its end here (a peek, nothing consumed);
 * the end cuts the connection as a reset would, and on_close() tells the
 * watcher.  Bytes of a next (pipelined) request end the polling: it is
 * then seen at the write.  Under TLS the peek sees records, not the end of
 * the stream alone: the same, a close_notify ends the polling.
 */
static void on_gone_probe(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    char b;
    ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    (void)what;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    event_del(c->gone_ev);
    if (n <= 0 && c->on_gone)
        cut(c); /* frees c: on_close() */
}

int rhema_req_watch(struct rhema_req *r, void (*gone)(void *arg), void *arg)
{
    struct conn *c = conn_of(r->worker, r->req);
    if (!c)
        return -1;
    c->on_gone = gone;
    c->on_drained = NULL;
    c->watch_arg = arg;
    if (!c->gone_ev)
        c->gone_ev = event_new(r->worker->base, bufferevent_getfd(c->bev), EV_READ | EV_PERSIST,
                               on_gone_probe, c);
    if (c->gone_ev)
        event_add(c->gone_ev, NULL);
    return 0;
}

void rhema_req_unwatch(struct rhema_req *r)
{
    struct conn *c = conn_of(r->worker, r->req);
    if (c) {
        c->on_gone = c->on_drained = NULL;
        if (c->gone_ev)
            event_del(c->gone_ev);
    }
}

size_t rhema_req_output_queued(struct rhema_req *r)
{
    struct conn *c = conn_of(r->worker, r->req);
    return c ? c->out_held : 0;
}

void rhema_req_watch_drain(struct rhema_req *r, size_t low, void (*drained)(void *arg))
{
    struct conn *c = conn_of(r->worker, r->req);
    if (!c)
        return;
    c->drain_low = low;
    c->on_drained = drained;
}

void rhema_req_abandon(struct rhema_req *r)
{
    /* detached by evhttp (the connection is gone): ours to free; else evhttp frees it */
    if (r->req && !evhttp_request_get_connection(r->req))
        evhttp_request_free(r->req);
    r->req = NULL;
}

void rhema_reply_stream_start(struct rhema_req *r, int status, const char *content_type)
{
    struct rhema_worker *w = r->worker;
    struct rhema_http_conns *k = w->conns;
    struct conn *c = conn_of(w, r->req);
    rhema_header(r, "X-Request-Id", r->request_id);
    if (content_type)
        rhema_header(r, "Content-Type", content_type);
    rhema_header(r, "Cache-Control", "no-cache");
    add_cors(r);
    if (w->draining || r->close)
        rhema_header(r, "Connection", "close");
    r->status = status;
    r->bytes_out = 0;
    if (c) {
        atomic_fetch_add(&w->inflight, 1);
        c->replies++;
        c->close_after = 0;
        evhttp_request_set_on_complete_cb(r->req, on_complete, c);
    }
    rhema_metrics_reply(w->metrics, r->route, (unsigned)r->method, status,
                        rhema_monotonic_ns() - r->t0_ns);
    log_access(r);
    if (r->on_reply)
        r->on_reply(r);
    if (k)
        k->sending = 1;
    evhttp_send_reply_start(r->req, status, reason(status));
    if (k)
        k->sending = 0;
}

void rhema_reply_stream_chunk(struct rhema_req *r, const void *data, size_t len)
{
    struct rhema_http_conns *k = r->worker->conns;
    struct evbuffer *b;
    if (!len || !evhttp_request_get_connection(r->req) || !(b = evbuffer_new()))
        return;
    r->bytes_out += len;
    if (evbuffer_add(b, data, len) == 0) {
        if (k)
            k->sending = 1;
        evhttp_send_reply_chunk(r->req, b);
        if (k)
            k->sending = 0;
    }
    evbuffer_free(b);
}

void rhema_reply_stream_end(struct rhema_req *r)
{
    struct rhema_http_conns *k = r->worker->conns;
    if (k)
        k->sending = 1;
    evhttp_send_reply_end(r->req); /* frees a request whose client left */
    if (k)
        k->sending = 0;
    r->req = NULL;
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
    json_t *v = rhema_json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!v) {
        rhema_reply_error(r, 400, "bad_json", "malformed JSON at line %d column %d: %s",
                          jerr.line, jerr.column, jerr.text);
        return NULL;
    }
    return v;
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

/*
 * What evhttp's parser lets through but a proxy in front of rhemad may
 * read differently (request smuggling): refused, and the connection
 * closed, so that no byte after this request is read as another one.
 * evhttp frames the body by the first Content-Length, and takes a
 * Transfer-Encoding that ends in "chunked" as chunked; it answers a
 * CONNECT without closing whatever its Connection header says.  1 after
 * the reply, else 0.
 */
static int framing_refused(struct rhema_req *r)
{
    struct evkeyvalq *h = evhttp_request_get_input_headers(r->req);
    const char *cl = NULL, *te = NULL;
    int n_te = 0;
    struct evkeyval *kv;
    TAILQ_FOREACH(kv, h, next) {
        if (strcasecmp(kv->key, "Content-Length") == 0) {
            if (cl && strcmp(cl, kv->value) != 0) {
                r->close = 1;
                rhema_reply_error(r, 400, "bad_request",
                                  "two different Content-Length headers ('%s' and '%s')", cl,
                                  kv->value);
                return 1;
            }
            cl = kv->value;
        } else if (strcasecmp(kv->key, "Transfer-Encoding") == 0) {
            te = kv->value;
            n_te++;
        }
    }
    if (te && (n_te > 1 || strcasecmp(te, "chunked") != 0)) {
        r->close = 1;
        rhema_reply_error(r, 501, "not_implemented",
                          "Transfer-Encoding '%s': only a single 'chunked' is supported", te);
        return 1;
    }
    if (te && cl) { /* evhttp 2.1.12 refuses this itself (400); not left to it */
        r->close = 1;
        rhema_reply_error(r, 400, "bad_request",
                          "both Transfer-Encoding and Content-Length: the body's length is "
                          "ambiguous");
        return 1;
    }
    switch (r->method) {
    case EVHTTP_REQ_GET: case EVHTTP_REQ_HEAD: case EVHTTP_REQ_POST: case EVHTTP_REQ_PUT:
    case EVHTTP_REQ_DELETE: case EVHTTP_REQ_OPTIONS: case EVHTTP_REQ_PATCH:
        return 0; /* a route answers 405 for those it does not take */
    default: /* CONNECT, TRACE, and methods evhttp does not know (RFC 9110: 501) */
        r->close = 1;
        rhema_reply_error(r, 501, "not_implemented", "method %s is not implemented",
                          r->method == EVHTTP_REQ_CONNECT ? "CONNECT"
                          : r->method == EVHTTP_REQ_TRACE ? "TRACE"
                                                          : "(unknown)");
        return 1;
    }
}

static void on_request(struct evhttp_request *req, void *arg)
{
    struct rhema_worker *w = arg;
    struct rhema_req r = {.req = req, .worker = w, .t0_ns = rhema_monotonic_ns()};
    TAILQ_INIT(&r.query);
    r.method = evhttp_request_get_command(req);
    request_id(&r);
    rhema_metrics_request_started(w->metrics);
    struct conn *c = conn_of(w, req);
    if (c) { /* the request is complete: no deadline while it is handled and answered */
        c->phase = C_BUSY;
        c->req_start = c->consumed;
        evtimer_del(c->deadline_ev);
    }
    if (framing_refused(&r))
        goto done;

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
    const char *raw_query = uri ? evhttp_uri_get_query(uri) : NULL;
    if (raw_query && strstr(raw_query, "%00")) { /* decoded, it would cut the value short */
        rhema_reply_error(&r, 400, "bad_query",
                          "query: contains an encoded NUL (%%00), which no value may hold");
        goto done;
    }
    if (raw_query && evhttp_parse_query_str(raw_query, &r.query) != 0) {
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

/* 1 while a request has begun to arrive on one of w's connections (its header or body deadline runs). */
static int requests_arriving(struct rhema_worker *w)
{
    struct conn *c;
    if (!w->conns)
        return 0;
    TAILQ_FOREACH(c, &w->conns->live, link)
        if (c->phase == C_HEADERS || c->phase == C_BODY)
            return 1;
    return 0;
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct rhema_worker *w = arg;
    if (w->draining &&
        ((atomic_load(&w->inflight) <= 0 && w->outstanding == 0 && !requests_arriving(w) &&
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
    if (w->srv->watchers_drain) /* streams and long polls end now, not at the grace's end */
        w->srv->watchers_drain(w);
    int64_t grace = 30;
    rhema_config_get_int(w->srv->cfg, "service.shutdown_timeout_seconds", &grace);
    w->drain_deadline_ns = rhema_monotonic_ns() + (uint64_t)grace * 1000000000ull;
    listener_update(w);
    /* check every 20 ms from now on */
    struct timeval tv = {0, 20000};
    event_del(w->tick_ev);
    event_add(w->tick_ev, &tv);
}

/*
 * The access lines of a loop turn, in one write (log.c): activated by the
 * turn's first line, this runs after the events already active in the
 * turn, before the loop waits again.
 */
static void on_log_flush(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    rhema_log_flush();
}

static void *worker_main(void *arg)
{
    struct rhema_worker *w = arg;
    char name[16];
    snprintf(name, sizeof name, "rhema-worker%d", w->id % 100);
    pthread_setname_np(pthread_self(), name);
    this_worker = w;
    w->metrics = rhema_metrics_thread_enter(w->id);
    rhema_log_batch(1);
    event_base_dispatch(w->base);
    rhema_log_batch(0); /* what the last turn left */
    return NULL;
}

static void worker_release(struct rhema_worker *w)
{
    rhema_mailbox_release(&w->mailbox); /* writes committed after the loop stopped: answer, then close */
    rhema_ai_worker_release(w); /* AI exchanges still running: 503, upstream calls cancelled */
    if (w->srv && w->srv->reads_release) /* session reads of the last turn: answered */
        w->srv->reads_release(w);
    if (w->srv && w->srv->watchers_release) /* watches still open: their clients are cut */
        w->srv->watchers_release(w);
    if (w->http)
        evhttp_free(w->http); /* frees its listener and connections, not the shared socket */
    else if (w->listener)
        evconnlistener_free(w->listener);
    struct rhema_http_conns *k = w->conns;
    if (k) {
        struct conn *c;
        while ((c = TAILQ_FIRST(&k->fresh))) { /* accepted as the loop stopped: never adopted */
            struct bufferevent *bev = c->bev;
            TAILQ_REMOVE(&k->fresh, c, link);
            conn_free(c);
            bufferevent_decref(bev);
        }
        if (k->service_ev)
            event_free(k->service_ev);
        if (k->resume_ev)
            event_free(k->resume_ev);
        if (k->backoff_ev)
            event_free(k->backoff_ev);
        free(k);
        w->conns = NULL;
    }
    if (w->stop_ev)
        event_free(w->stop_ev);
    if (w->tick_ev)
        event_free(w->tick_ev);
    if (w->log_ev)
        event_free(w->log_ev);
    rhema_codec_ctxs_release(&w->srv->codecs, &w->codec_ctxs);
    rhema_store_release(&w->store);
    if (w->conn)
        w->srv->storage->disconnect(w->conn);
    if (w->base)
        event_base_free(w->base);
    memset(w, 0, sizeof *w);
}

/*
 * A worker's event base.  With epoll's change list, the changes one loop
 * turn makes to an fd reach the kernel as one epoll_ctl at the next wait:
 * a keep-alive request turns the socket from read to write and back, four
 * epoll_ctl a request when each change is its own call, two with the list
 * (a read-to-write change is one EPOLL_CTL_MOD; counted with strace -c).
 * libevent's documentation warns only about fds cloned with dup(), which
 * no worker polls; a closed fd whose number comes back with a new
 * connection is handled by libevent (a failed MOD is retried as an ADD).
 */
static struct event_base *worker_base_new(void)
{
    struct event_config *ec = event_config_new();
    struct event_base *b = NULL;
    if (ec && event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST) == 0)
        b = event_base_new_with_config(ec);
    if (ec)
        event_config_free(ec);
    return b ? b : event_base_new();
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
    w->store.max_page_bytes = (size_t)srv->cfg->max_page_bytes;
    w->store.keep_config_versions = (uint64_t)srv->cfg->configuration_versions_retained;
    w->store.keep_transitions = (uint64_t)srv->cfg->agent_transitions_retained;
    w->store.feed = srv->feed;
    w->store.access = srv->access;
    w->store.max_agents = (uint64_t)srv->cfg->max_concurrent_agents;
    w->base = worker_base_new();
    w->http = w->base ? evhttp_new(w->base) : NULL;
    if (!w->http)
        goto nomem;
    /* our own listener: evhttp_accept_socket() would close the shared fd when freed */
    w->listener = evconnlistener_new(w->base, NULL, NULL, LEV_OPT_CLOSE_ON_EXEC, 0, srv->listen_fd);
    if (!w->listener || !evhttp_bind_listener(w->http, w->listener))
        goto nomem;
    /* every method reaches on_request, which answers CONNECT, TRACE and unknown
     * methods 501 in JSON and closes (evhttp's own 501 is HTML and keeps a
     * CONNECT open) */
    evhttp_set_allowed_methods(w->http, 0xffff);
    evconnlistener_set_error_cb(w->listener, on_accept_error);
    struct rhema_http_conns *k = calloc(1, sizeof *k);
    if (!k)
        goto nomem;
    w->conns = k;
    TAILQ_INIT(&k->fresh);
    TAILQ_INIT(&k->live);
    TAILQ_INIT(&k->cuts);
    k->listening = 1;
    k->max_conns = 4096, k->header_timeout_s = 60, k->body_timeout_s = 120;
    k->out_conn_max = INT64_C(134217728), k->out_total_max = INT64_C(536870912);
    rhema_config_get_int(srv->cfg, "service.max_connections", &k->max_conns);
    rhema_config_get_int(srv->cfg, "service.request_header_timeout_seconds", &k->header_timeout_s);
    rhema_config_get_int(srv->cfg, "service.request_body_timeout_seconds", &k->body_timeout_s);
    rhema_config_get_int(srv->cfg, "service.max_output_buffer_bytes", &k->out_conn_max);
    rhema_config_get_int(srv->cfg, "service.max_output_buffer_total_bytes", &k->out_total_max);
    k->in_busy_max = (uint64_t)srv->cfg->max_request_size_bytes + 64 * 1024;
    k->service_ev = event_new(w->base, -1, 0, on_service, w);
    k->resume_ev = event_new(w->base, -1, 0, on_resume, w);
    k->backoff_ev = evtimer_new(w->base, on_backoff_end, w);
    if (!k->service_ev || !k->resume_ev || !k->backoff_ev)
        goto nomem;
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
    w->log_ev = event_new(w->base, -1, 0, on_log_flush, w);
    if (!w->stop_ev || !w->tick_ev || !w->log_ev || rhema_mailbox_init(&w->mailbox, w->base) != 0)
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

/* libevent's own warnings go to rhemad's log (and its repeat suppression), not to stderr. */
static void on_libevent_log(int severity, const char *msg)
{
    rhema_log(severity >= EVENT_LOG_ERR ? RHEMA_LOG_ERROR
              : severity == EVENT_LOG_WARN ? RHEMA_LOG_WARN
                                           : RHEMA_LOG_DEBUG,
              "libevent", "%s", msg);
}

int rhema_http_start(struct rhema_server *srv, rhema_request_fn *handle, char **err)
{
    int rc;
    srv->listen_fd = -1;
    event_set_log_callback(on_libevent_log);
    atomic_store(&srv->http_conns, 0);
    atomic_store(&srv->http_out_bytes, 0);
    evthread_use_pthreads();
    if ((rc = rhema_tls_open(srv->cfg, err)))
        return rc;
    if ((rc = bind_listen(srv, err))) {
        rhema_tls_close();
        return rc;
    }
    srv->nworkers = srv->cfg->workers > 0 ? srv->cfg->workers : rhema_ncpu();
    srv->workers = calloc((size_t)srv->nworkers, sizeof *srv->workers);
    if (!srv->workers) {
        rc = RHEMA_ENOMEM;
        goto fail;
    }
    /* the sessions' access counts: one table for every worker, written by a thread of
     * its own so that a read never writes where reads are served (session_access.h) */
    if ((rc = rhema_access_table_new(&srv->access)) ||
        (rc = rhema_access_writer_start(srv->access, srv->storage, srv->storage_inst, err)))
        goto fail;
    for (int i = 0; i < srv->nworkers; i++) {
        if ((rc = worker_setup(srv, &srv->workers[i], i, handle, err)))
            goto fail;
    }
    if (srv->storage->group &&
        (rc = rhema_committer_start(srv->storage, srv->storage_inst, &srv->committer, err)))
        goto fail;
    if (srv->committer)
        rhema_committer_set_shared(srv->committer, srv->feed, srv->access);
    /* logged before the first worker can answer: whoever sees an answer sees this line */
    rhema_log(RHEMA_LOG_NOTICE, "http", "listening on %s with %d worker%s%s", srv->listen_addr,
              srv->nworkers, srv->nworkers == 1 ? "" : "s", rhema_tls_enabled() ? ", TLS" : "");
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
    rhema_access_table_free(srv->access);
    srv->access = NULL;
    close(srv->listen_fd);
    srv->listen_fd = -1;
    rhema_tls_close();
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
    rhema_audit_flush(); /* writes whose begin record is at the audit writer: answered below */
    rhema_committer_stop(srv->committer); /* runs what is queued; workers answer below */
    srv->committer = NULL;
    for (int i = 0; i < srv->nworkers; i++)
        worker_release(&srv->workers[i]);
    free(srv->workers);
    srv->workers = NULL;
    srv->nworkers = 0;
    rhema_access_table_free(srv->access); /* its writer's last pass: every read counted */
    srv->access = NULL;
    if (srv->listen_fd >= 0)
        close(srv->listen_fd);
    srv->listen_fd = -1;
    rhema_tls_close(); /* connections are gone: the last references of the context */
}
