/*
 * api_events -- GET /v1/events (server-sent events, long poll) and the
 * blocking queries of resource reads, on the change feed (api_events.h).
 */
#include "rhema_build.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "api_events.h"
#include "json_fields.h"
#include "log.h"
#include "query.h"
#include "util.h"
#include "watch/feed.h"

#define PAGE 256                 /* records read from the store per step of a catch-up */
#define LIMIT_DEFAULT 100        /* events in one long-poll answer by default */
#define LIMIT_MAX 1000
#define KEEPALIVE_S 15           /* a comment line on an idle stream */
#define TYPES_MAX 512

enum waiter_kind { W_SSE, W_POLL, W_BLOCK };

struct waiter {
    struct waiter *prev, *next;
    struct rhema_watchers *ws;
    struct rhema_req *d;          /* deferred */
    enum waiter_kind kind;
    uint64_t cursor;              /* the last revision looked at */
    char types[TYPES_MAX + 1];    /* "" : any */
    char session[RHEMA_ID_MAX + 1], agent[RHEMA_ID_MAX + 1];
    char id[RHEMA_ID_MAX + 1];    /* W_BLOCK: the resource's id ("": any) */
    size_t limit;                 /* W_POLL */
    struct event *timer;          /* deadline (W_POLL, W_BLOCK) or keepalive (W_SSE) */
    int paused;                   /* W_SSE: catching up, waiting for its output to drain */
    int live;                     /* W_SSE: caught up once; from then on a client that
                                   * falls behind by watch_buffer_bytes is cut off */
    rhema_events_retry_fn *retry; /* W_BLOCK: answers, or not yet (0) */
    uint64_t deadline_ms;         /* retry: the wait's end (monotonic ms) */
};

struct rhema_watchers {
    struct rhema_worker *w;
    struct event *wake;           /* activated by the feed thread */
    struct waiter *head;
    size_t n;
    size_t buffer_bytes;          /* coordination.watch_buffer_bytes */
};

static const char *opt(const char *s)
{
    return s && *s ? s : NULL;
}

/* ---- waiters ---- */

static void on_wake(evutil_socket_t fd, short what, void *arg);

static struct rhema_watchers *watchers_of(struct rhema_worker *w)
{
    if (w->watchers)
        return w->watchers;
    struct rhema_watchers *ws = calloc(1, sizeof *ws);
    if (!ws)
        return NULL;
    ws->w = w;
    int64_t b = 1048576;
    rhema_config_get_int(w->srv->cfg, "coordination.watch_buffer_bytes", &b);
    ws->buffer_bytes = (size_t)b;
    if (!(ws->wake = event_new(w->base, -1, 0, on_wake, ws)) ||
        rhema_feed_subscribe(w->srv->feed, w->id, ws->wake) != 0) {
        if (ws->wake)
            event_free(ws->wake);
        free(ws);
        return NULL;
    }
    w->watchers = ws;
    return ws;
}

static void waiter_link(struct waiter *wt)
{
    struct rhema_watchers *ws = wt->ws;
    wt->next = ws->head;
    if (ws->head)
        ws->head->prev = wt;
    ws->head = wt;
    ws->n++;
    ws->w->outstanding++;
}

/* Unlink and free (the request is already answered or abandoned). */
static void waiter_free(struct waiter *wt)
{
    struct rhema_watchers *ws = wt->ws;
    if (wt->prev)
        wt->prev->next = wt->next;
    else if (ws->head == wt)
        ws->head = wt->next;
    if (wt->next)
        wt->next->prev = wt->prev;
    ws->n--;
    ws->w->outstanding--;
    if (wt->timer)
        event_free(wt->timer);
    free(wt);
}

static int waiter_match(struct waiter *wt, json_t *ev)
{
    if (wt->id[0]) {
        const char *id = json_string_value(json_object_get(ev, "id"));
        if (!id || strcmp(id, wt->id) != 0)
            return 0;
    }
    return rhema_feed_match(ev, opt(wt->types), opt(wt->session), opt(wt->agent));
}

/*
 * Give cb the events after wt->cursor: from the feed's ring, or, when the
 * cursor is behind it, one page from the store on the worker's connection.
 * *store: 1 when the store was read (*full: the page was full, more may
 * follow).  0, or a storage error.
 */
static int read_events(struct waiter *wt, rhema_feed_cb *cb, void *ctx, int *store, int *full)
{
    struct rhema_worker *w = wt->ws->w;
    uint64_t head, last, before = wt->cursor;
    *store = *full = 0;
    int rc = rhema_feed_read(w->srv->feed, wt->cursor, PAGE, cb, ctx, &head);
    if (rc >= 0) {
        *full = rc >= PAGE; /* a page: there may be more */
        return 0;
    }
    if (rc != RHEMA_ENOTFOUND)
        return rc;
    *store = 1;
    rc = rhema_feed_scan(w->store.vt, w->store.conn, wt->cursor, PAGE, cb, ctx, &last, NULL);
    if (rc == 0 && last > before) {
        *full = 1; /* something was visited: ask again (the ring takes over once reached) */
        if (last > wt->cursor)
            wt->cursor = last; /* keys that are not events move the cursor too */
    }
    return rc;
}

/* 1 when records after the waiter's cursor were compacted away (it cannot go on). */
static int waiter_compacted(struct waiter *wt, uint64_t *compacted)
{
    struct rhema_store *st = &wt->ws->w->store;
    *compacted = 0;
    return rhema_feed_compacted(st->vt, st->conn, compacted) == 0 && wt->cursor < *compacted;
}

/* ---- server-sent events ---- */

struct sse_ctx {
    struct waiter *wt;
    struct evbuffer *out;
};

static int sse_event(void *arg, uint64_t rev, json_t *ev, const char *text, size_t len)
{
    struct sse_ctx *c = arg;
    if (rev <= c->wt->cursor)
        return 0;
    c->wt->cursor = rev;
    if (!waiter_match(c->wt, ev))
        return 0;
    evbuffer_add_printf(c->out, "id: %" PRIu64 "\nevent: %s\ndata: ", rev,
                        json_string_value(json_object_get(ev, "type")));
    evbuffer_add(c->out, text, len);
    evbuffer_add(c->out, "\n\n", 2);
    return 0;
}

static void sse_write(struct waiter *wt, struct evbuffer *b)
{
    size_t n = evbuffer_get_length(b);
    if (!n)
        return;
    unsigned char *p = evbuffer_pullup(b, -1);
    rhema_reply_stream_chunk(wt->d, p, n);
    evbuffer_drain(b, n);
}

/* End a stream, with a last event when `error` names why. */
static void sse_end(struct waiter *wt, const char *error, const char *message)
{
    struct rhema_req *d = wt->d;
    if (error) {
        json_t *e = json_pack("{s:s,s:s,s:I}", "error", error, "message", message, "revision",
                              (json_int_t)wt->cursor);
        char *t = e ? rhema_json_dumps(e, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        json_decref(e);
        if (t) {
            struct evbuffer *b = evbuffer_new();
            if (b) {
                evbuffer_add_printf(b, "event: error\ndata: %s\n\n", t);
                sse_write(wt, b);
                evbuffer_free(b);
            }
            free(t);
        }
    }
    rhema_req_unwatch(d);
    d->close = 1;
    rhema_reply_stream_end(d);
    rhema_req_free(d);
    waiter_free(wt);
}

static void sse_deliver(struct waiter *wt);

static void sse_drained(void *arg)
{
    struct waiter *wt = arg;
    wt->paused = 0;
    sse_deliver(wt);
}

/*
 * Write what the waiter has not seen, a page at a time.  Catching up (a
 * resume, a since in the past), the stream is paced by its client: past
 * half the buffer it waits for the output to drain.  Once live, a client
 * whose unread output passes watch_buffer_bytes is cut off: the server
 * never holds more for it.
 */
static void sse_deliver(struct waiter *wt)
{
    struct rhema_watchers *ws = wt->ws;
    if (wt->paused)
        return;
    struct evbuffer *b = evbuffer_new();
    if (!b)
        return;
    for (;;) {
        struct sse_ctx c = {.wt = wt, .out = b};
        int store, full;
        int rc = read_events(wt, sse_event, &c, &store, &full);
        sse_write(wt, b);
        if (rc) {
            evbuffer_free(b);
            sse_end(wt, "unavailable", "the change feed cannot be read; reconnect");
            return;
        }
        uint64_t compacted;
        if (store && waiter_compacted(wt, &compacted)) {
            evbuffer_free(b);
            sse_end(wt, "compacted",
                    "events after the stream's revision were compacted; read the resources "
                    "again and watch from a newer revision");
            return;
        }
        size_t queued = rhema_req_output_queued(wt->d);
        if (wt->live && queued > ws->buffer_bytes) {
            evbuffer_free(b);
            sse_end(wt, "slow_consumer",
                    "the client did not read its events fast enough "
                    "(coordination.watch_buffer_bytes); reconnect with Last-Event-ID");
            return;
        }
        if (!full) {
            wt->live = 1;
            break;
        }
        if (!wt->live && queued > ws->buffer_bytes / 2) { /* go on once the client has read */
            wt->paused = 1;
            rhema_req_watch_drain(wt->d, ws->buffer_bytes / 4, sse_drained);
            break;
        }
    }
    evbuffer_free(b);
}

static void sse_keepalive(evutil_socket_t fd, short what, void *arg)
{
    struct waiter *wt = arg;
    (void)fd, (void)what;
    rhema_reply_stream_chunk(wt->d, ": keepalive\n\n", 13);
}

/* ---- long polls ---- */

struct poll_ctx {
    struct waiter *wt;
    struct evbuffer *items;
    size_t n;
};

static int poll_event(void *arg, uint64_t rev, json_t *ev, const char *text, size_t len)
{
    struct poll_ctx *c = arg;
    if (rev <= c->wt->cursor)
        return 0;
    c->wt->cursor = rev;
    if (!waiter_match(c->wt, ev))
        return 0;
    evbuffer_add(c->items, c->n ? "," : "[", 1);
    evbuffer_add(c->items, text, len);
    return ++c->n >= c->wt->limit ? 1 : 0;
}

static void poll_reply(struct rhema_req *r, struct evbuffer *items, size_t n, uint64_t revision)
{
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        rhema_reply_error(r, 500, "internal_error", "out of memory");
        return;
    }
    evbuffer_add_printf(b, "{\"items\":");
    if (n) {
        evbuffer_add_buffer(b, items);
        evbuffer_add(b, "]", 1);
    } else {
        evbuffer_add(b, "[]", 2);
    }
    evbuffer_add_printf(b, ",\"revision\":%" PRIu64 "}", revision);
    rhema_reply_evbuffer(r, 200, "application/json", b);
    evbuffer_free(b);
}

static void reply_compacted(struct rhema_req *r, uint64_t compacted)
{
    struct rhema_store *st = &r->worker->store;
    uint64_t oldest = 0;
    rhema_feed_oldest(st->vt, st->conn, &oldest);
    json_t *e = json_pack("{s:s,s:s,s:I,s:I}", "error", "compacted", "message",
                          "the events after this revision were compacted "
                          "(coordination.event_retention_seconds): read the resources again "
                          "and watch from the revision of that read",
                          "oldest_revision", (json_int_t)oldest, "compacted_revision",
                          (json_int_t)compacted);
    rhema_reply_jsonv(r, 410, e);
}

/*
 * Collect the events a poll waits for.  1 when it answered r (items, an
 * error), 0 when nothing matched yet.
 */
static int poll_try(struct waiter *wt, struct rhema_req *r, int at_deadline)
{
    struct poll_ctx c = {.wt = wt, .items = evbuffer_new()};
    if (!c.items) {
        rhema_reply_error(r, 500, "internal_error", "out of memory");
        return 1;
    }
    int rc = 0, store, full;
    do {
        rc = read_events(wt, poll_event, &c, &store, &full);
        uint64_t compacted;
        if (rc == 0 && store && !c.n && waiter_compacted(wt, &compacted)) {
            evbuffer_free(c.items);
            reply_compacted(r, compacted);
            return 1;
        }
    } while (rc == 0 && store && full && c.n < wt->limit);
    if (rc) {
        evbuffer_free(c.items);
        rhema_reply_error(r, 503, "unavailable", "the change feed cannot be read: %s",
                          rhema_strerror(rc));
        return 1;
    }
    if (!c.n && !at_deadline) {
        evbuffer_free(c.items);
        return 0;
    }
    poll_reply(r, c.items, c.n, wt->cursor);
    evbuffer_free(c.items);
    return 1;
}

/* ---- blocking queries ---- */

struct block_ctx {
    struct waiter *wt;
    int hit;
};

static int block_event(void *arg, uint64_t rev, json_t *ev, const char *text, size_t len)
{
    struct block_ctx *c = arg;
    (void)text, (void)len;
    if (rev <= c->wt->cursor)
        return 0;
    c->wt->cursor = rev;
    if (waiter_match(c->wt, ev)) {
        c->hit = 1;
        return 1;
    }
    return 0;
}

static int block_try(struct waiter *wt)
{
    struct block_ctx c = {.wt = wt};
    int rc, store, full;
    do
        rc = read_events(wt, block_event, &c, &store, &full);
    while (rc == 0 && store && full && !c.hit);
    return c.hit || rc != 0; /* a feed that cannot be read: answer the current state */
}

/* ---- common ---- */

static int parse_rev(const char *s, uint64_t *out)
{
    char *end;
    if (!s || !isdigit((unsigned char)*s) || strlen(s) > 20)
        return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = (uint64_t)v;
    return 0;
}


static uint64_t mono_ms(void)
{
    return rhema_monotonic_ns() / 1000000u;
}

static void on_deadline(evutil_socket_t fd, short what, void *arg);
static void on_gone(void *arg);
static void waiter_arm(struct waiter *wt, uint64_t ms, int persist,
                       void (*cb)(evutil_socket_t, short, void *));

/*
 * A retrying waiter (rhema_events_block_retry): ask it; when it answered,
 * free the waiter, otherwise wait on, its timer at the earlier of its
 * deadline and the recheck time it names.
 */
static void retry_try(struct waiter *wt, int final)
{
    uint64_t recheck = 0, now = mono_ms();
    rhema_req_unwatch(wt->d);
    if (wt->retry(wt->d, final || now >= wt->deadline_ms, &recheck)) {
        rhema_req_free(wt->d);
        waiter_free(wt);
        return;
    }
    if (rhema_req_watch(wt->d, on_gone, wt) != 0) {
        on_gone(wt);
        return;
    }
    uint64_t at = wt->deadline_ms, rt = recheck ? now + recheck : 0;
    if (rt && rt < at)
        at = rt;
    if (wt->timer) {
        event_free(wt->timer);
        wt->timer = NULL;
    }
    waiter_arm(wt, at > now ? at - now : 0, 0, on_deadline);
}

static void deliver(struct waiter *wt)
{
    switch (wt->kind) {
    case W_SSE: sse_deliver(wt); break;
    case W_POLL:
        if (poll_try(wt, wt->d, 0)) {
            rhema_req_unwatch(wt->d);
            rhema_req_free(wt->d);
            waiter_free(wt);
        }
        break;
    case W_BLOCK:
        if (block_try(wt))
            retry_try(wt, 0);
        break;
    }
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    struct rhema_watchers *ws = arg;
    (void)fd, (void)what;
    for (struct waiter *wt = ws->head, *next; wt; wt = next) {
        next = wt->next;
        deliver(wt); /* may free wt, never another waiter */
    }
}

/* The deadline of a long poll or a blocking query: answer with what there is. */
static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct waiter *wt = arg;
    (void)fd, (void)what;
    if (wt->kind == W_BLOCK) {
        retry_try(wt, 0); /* a recheck, or the deadline (final there) */
        return;
    }
    rhema_req_unwatch(wt->d);
    poll_try(wt, wt->d, 1);
    rhema_req_free(wt->d);
    waiter_free(wt);
}

/* The client left. */
static void on_gone(void *arg)
{
    struct waiter *wt = arg;
    rhema_req_abandon(wt->d);
    rhema_req_free(wt->d);
    waiter_free(wt);
}

/* A waiter for r, deferred and watched; NULL after replying (out of memory, client gone). */
static struct waiter *waiter_new(struct rhema_req *r, enum waiter_kind kind, uint64_t cursor)
{
    struct rhema_watchers *ws = watchers_of(r->worker);
    struct waiter *wt = ws ? calloc(1, sizeof *wt) : NULL;
    struct rhema_req *d = wt ? rhema_req_defer(r) : NULL;
    if (!d) {
        free(wt);
        rhema_reply_error(r, 503, "unavailable", "out of memory for a watch");
        return NULL;
    }
    wt->ws = ws;
    wt->d = d;
    wt->kind = kind;
    wt->cursor = cursor;
    waiter_link(wt);
    if (rhema_req_watch(d, on_gone, wt) != 0) {
        on_gone(wt);
        return NULL;
    }
    return wt;
}

static void waiter_arm(struct waiter *wt, uint64_t ms, int persist,
                       void (*cb)(evutil_socket_t, short, void *))
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    wt->timer = event_new(wt->ws->w->base, -1, persist ? EV_PERSIST : 0, cb, wt);
    if (wt->timer)
        event_add(wt->timer, &tv);
}

int rhema_events_wait_param(struct rhema_req *r, uint64_t *ms)
{
    const char *s = evhttp_find_header(&r->query, "wait");
    *ms = 0;
    if (!s)
        return 0;
    char *end;
    errno = 0;
    if (!isdigit((unsigned char)*s))
        goto bad;
    unsigned long long v = strtoull(s, &end, 10);
    uint64_t mult = 1000;
    if (errno || v > 100000000ull)
        goto bad;
    if (strcmp(end, "ms") == 0)
        mult = 1;
    else if (strcmp(end, "m") == 0)
        mult = 60000;
    else if (*end && strcmp(end, "s") != 0)
        goto bad;
    int64_t cap = 300;
    rhema_config_get_int(r->worker->srv->cfg, "coordination.max_wait_seconds", &cap);
    *ms = (uint64_t)v * mult;
    if (*ms > (uint64_t)cap * 1000u)
        *ms = (uint64_t)cap * 1000u; /* capped, as Consul caps its wait */
    return 0;
bad:
    rhema_reply_error(r, 400, "invalid_field",
                      "query parameter 'wait': a duration such as 30s, 500ms, 2m or 30");
    return -1;
}

uint64_t rhema_events_head(struct rhema_req *r)
{
    return r->worker->srv->feed ? rhema_feed_head(r->worker->srv->feed) : 0;
}

void rhema_events_block_retry(struct rhema_req *r, const struct rhema_events_filter *f,
                              uint64_t from, uint64_t wait_ms, uint64_t recheck_ms,
                              rhema_events_retry_fn *retry)
{
    struct rhema_watchers *ws =
        r->worker->srv->feed && !r->worker->draining ? watchers_of(r->worker) : NULL;
    struct waiter *wt = ws ? calloc(1, sizeof *wt) : NULL;
    struct rhema_req *d = wt ? rhema_req_defer(r) : NULL;
    uint64_t ignored;
    if (!d) {
        free(wt);
        retry(r, 1, &ignored);
        return;
    }
    wt->ws = ws;
    wt->d = d;
    wt->kind = W_BLOCK;
    wt->cursor = from;
    wt->retry = retry;
    wt->deadline_ms = mono_ms() + wait_ms;
    snprintf(wt->types, sizeof wt->types, "%s", f->types ? f->types : "");
    snprintf(wt->session, sizeof wt->session, "%s", f->session ? f->session : "");
    snprintf(wt->agent, sizeof wt->agent, "%s", f->agent ? f->agent : "");
    snprintf(wt->id, sizeof wt->id, "%s", f->id ? f->id : "");
    waiter_link(wt);
    if (rhema_req_watch(d, on_gone, wt) != 0) {
        on_gone(wt);
        return;
    }
    waiter_arm(wt, recheck_ms && recheck_ms < wait_ms ? recheck_ms : wait_ms, 0, on_deadline);
    deliver(wt); /* an event may have come between `from` and now */
}

void rhema_events_resource_get(struct rhema_req *r, const struct rhema_events_filter *f,
                               rhema_current_fn version, rhema_events_retry_fn *answer)
{
    static const char *const known[] = {"wait", "index", NULL};
    const char *index_s = evhttp_find_header(&r->query, "index");
    uint64_t wait_ms = 0, index = 0, v = 0, ignored;
    if (rhema_query_check(r, known) != 0)
        return;
    if (!index_s && !evhttp_find_header(&r->query, "wait")) {
        answer(r, 1, &ignored);
        return;
    }
    if (rhema_events_wait_param(r, &wait_ms) != 0)
        return;
    if (index_s && parse_rev(index_s, &index) != 0) {
        rhema_reply_error(r, 400, "invalid_field",
                          "query parameter 'index': a version (decimal digits)");
        return;
    }
    uint64_t from = rhema_events_head(r); /* before the read: no event slips between */
    char err[RHEMA_ERRMSG_MAX];
    if (version(r, &v, err) != 0 || v > index || !wait_ms) {
        answer(r, 1, &ignored); /* absent (404), past index, or no wait: at once */
        return;
    }
    /* a resource's events have its versions as revisions: those up to its current one are old */
    rhema_events_block_retry(r, f, from > v ? from : v, wait_ms, 0, answer);
}

/* ---- GET /v1/events ---- */

/* 1 when s is a valid types list: comma-separated names of [a-z0-9_.-]. */
static int types_valid(const char *s)
{
    if (strlen(s) > TYPES_MAX)
        return 0;
    for (const char *p = s; *p;) {
        const char *c = strchr(p, ',');
        size_t n = c ? (size_t)(c - p) : strlen(p);
        if (n == 0)
            return 0;
        for (size_t i = 0; i < n; i++)
            if (!islower((unsigned char)p[i]) && !isdigit((unsigned char)p[i]) && p[i] != '.' &&
                p[i] != '_' && p[i] != '-')
                return 0;
        p += n + (c ? 1 : 0);
    }
    return 1;
}

static int accepts_sse(struct rhema_req *r)
{
    const char *a = rhema_req_header(r, "Accept");
    return a && strstr(a, "text/event-stream") != NULL;
}

/*
 * A stream lasts: evhttp's timeout (service.request_timeout_seconds) would
 * cut it once no byte arrives from the client for that long, which is what
 * a watcher does.  Keep the write timeout only: a client that reads nothing
 * for that long while bytes wait for it is gone.
 */
static void stream_timeouts(struct rhema_req *d)
{
    struct evhttp_connection *ec = d->req ? evhttp_request_get_connection(d->req) : NULL;
    struct bufferevent *bev = ec ? evhttp_connection_get_bufferevent(ec) : NULL;
    if (bev) {
        struct timeval tv = {d->worker->srv->cfg->request_timeout_seconds, 0};
        bufferevent_set_timeouts(bev, NULL, &tv);
    }
}

static void h_events(struct rhema_req *r)
{
    static const char *const known[] = {"since", "types", "session", "agent", "wait", "limit", NULL};
    struct rhema_server *srv = r->worker->srv;
    if (!srv->feed) {
        rhema_reply_error(r, 503, "unavailable",
                          "the change feed is off (coordination.change_feed = false)");
        return;
    }
    if (rhema_query_check(r, known) != 0)
        return;
    const char *since_s = evhttp_find_header(&r->query, "since");
    const char *last_id = rhema_req_header(r, "Last-Event-ID");
    const char *types = evhttp_find_header(&r->query, "types");
    const char *session = evhttp_find_header(&r->query, "session");
    const char *agent = evhttp_find_header(&r->query, "agent");
    uint64_t since = 0, limit = LIMIT_DEFAULT, wait_ms = 0;
    int sse = accepts_sse(r);
    if (sse && last_id && *last_id) {
        if (parse_rev(last_id, &since) != 0) {
            rhema_reply_error(r, 400, "invalid_field",
                              "header Last-Event-ID: a revision (decimal digits)");
            return;
        }
        since_s = last_id;
    } else if (since_s && parse_rev(since_s, &since) != 0) {
        rhema_reply_error(r, 400, "invalid_field", "query parameter 'since': a revision (decimal "
                                                   "digits)");
        return;
    }
    if (types && !types_valid(types)) {
        rhema_reply_error(r, 400, "invalid_field",
                          "query parameter 'types': a comma list of event types or prefixes "
                          "ending in '.' (session.created,message.)");
        return;
    }
    if (session && !rhema_id_valid(session)) {
        rhema_reply_error(r, 400, "invalid_field", "query parameter 'session': not a valid id");
        return;
    }
    if (agent && !rhema_id_valid(agent)) {
        rhema_reply_error(r, 400, "invalid_field", "query parameter 'agent': not a valid id");
        return;
    }
    if (rhema_query_uint(r, "limit", LIMIT_MAX, &limit) != 0 ||
        rhema_events_wait_param(r, &wait_ms) != 0)
        return;
    if (r->worker->draining) { /* stopping: nothing may wait now */
        if (sse) {
            rhema_reply_error(r, 503, "unavailable", "the server is stopping; reconnect");
            return;
        }
        wait_ms = 0;
    }
    uint64_t cursor = since_s ? since : rhema_feed_head(srv->feed);
    if (since_s) {
        uint64_t compacted = 0;
        struct rhema_store *st = &r->worker->store;
        int rc = rhema_feed_compacted(st->vt, st->conn, &compacted);
        if (rc) {
            rhema_reply_error(r, 503, "unavailable", "the change feed cannot be read: %s",
                              rhema_strerror(rc));
            return;
        }
        if (since < compacted) {
            reply_compacted(r, compacted);
            return;
        }
    }
    struct waiter probe = {.kind = sse ? W_SSE : W_POLL, .cursor = cursor, .limit = limit};
    snprintf(probe.types, sizeof probe.types, "%s", types ? types : "");
    snprintf(probe.session, sizeof probe.session, "%s", session ? session : "");
    snprintf(probe.agent, sizeof probe.agent, "%s", agent ? agent : "");
    if (!sse) {
        struct rhema_watchers *ws = watchers_of(r->worker);
        if (!ws) {
            rhema_reply_error(r, 503, "unavailable", "out of memory for a watch");
            return;
        }
        probe.ws = ws;
        if (poll_try(&probe, r, wait_ms == 0)) /* an answer now: no waiter */
            return;
    }
    struct waiter *wt = waiter_new(r, probe.kind, probe.cursor);
    if (!wt)
        return;
    memcpy(wt->types, probe.types, sizeof wt->types);
    memcpy(wt->session, probe.session, sizeof wt->session);
    memcpy(wt->agent, probe.agent, sizeof wt->agent);
    wt->limit = (size_t)limit;
    if (sse) {
        rhema_reply_stream_start(wt->d, 200, "text/event-stream");
        stream_timeouts(wt->d);
        waiter_arm(wt, KEEPALIVE_S * 1000u, 1, sse_keepalive);
        /* the first bytes now: the client knows the stream is open */
        rhema_reply_stream_chunk(wt->d, ": watching\n\n", 12);
        sse_deliver(wt);
    } else {
        waiter_arm(wt, wait_ms, 0, on_deadline);
    }
}

void rhema_events_drain(struct rhema_worker *w)
{
    struct rhema_watchers *ws = w->watchers;
    if (!ws)
        return;
    while (ws->head) {
        struct waiter *wt = ws->head;
        switch (wt->kind) {
        case W_SSE: sse_end(wt, "shutdown", "the server is stopping; reconnect with Last-Event-ID");
            break;
        case W_BLOCK: retry_try(wt, 1); /* answers now */
            break;
        default: on_deadline(-1, 0, wt);
        }
    }
}

void rhema_events_worker_release(struct rhema_worker *w)
{
    struct rhema_watchers *ws = w->watchers;
    if (!ws)
        return;
    rhema_feed_unsubscribe(w->srv->feed, w->id);
    while (ws->head) {
        struct waiter *wt = ws->head;
        rhema_req_abandon(wt->d);
        rhema_req_free(wt->d);
        waiter_free(wt);
    }
    event_free(ws->wake);
    free(ws);
    w->watchers = NULL;
}

const struct rhema_route rhema_events_routes[] = {
    {RHEMA_M_GET, "/v1/events", h_events, "events:read", RHEMA_READS},
    {0},
};
