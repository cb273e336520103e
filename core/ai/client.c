/*
 * ai/client -- libcurl multi-socket on a libevent base (see client.h).
 *
 * The glue is the one of curl's hiperfifo example: curl asks for socket
 * interest through socket_cb() (one struct sock per descriptor, assigned
 * with curl_multi_assign()) and for a wake-up through timer_cb(); the
 * events call curl_multi_socket_action() and then collect finished
 * transfers (finish()).  curl forbids removing a handle from inside its
 * own callbacks, so on_data() aborts a transfer by its return value and
 * the end is reported from finish(), outside curl.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <time.h>

#include <curl/curl.h>
#include <event2/event.h>

#include "ai/client.h"
#include <rhema/plugin.h>

#include "util.h"

struct sock {
    struct rhema_ai_client *c;
    curl_socket_t fd;
    struct event *ev;
    TAILQ_ENTRY(sock) link;
};

struct rhema_ai_call {
    struct rhema_ai_client *c;
    CURL *easy;
    struct curl_slist *hdrs;
    char *body;
    const struct rhema_ai_call_cb *cb;
    void *arg;
    long status;
    long retry_after;
    int aborted;
    char ctype[128];
    char errbuf[CURL_ERROR_SIZE];
    TAILQ_ENTRY(rhema_ai_call) link;
};

struct rhema_ai_client {
    struct event_base *base;
    CURLM *multi;
    struct event *timer;
    unsigned active;
    TAILQ_HEAD(, rhema_ai_call) calls;
    TAILQ_HEAD(, sock) socks;
};

static void call_free(struct rhema_ai_call *call)
{
    struct rhema_ai_client *c = call->c;
    TAILQ_REMOVE(&c->calls, call, link);
    c->active--;
    curl_multi_remove_handle(c->multi, call->easy);
    curl_easy_cleanup(call->easy);
    curl_slist_free_all(call->hdrs);
    free(call->body);
    free(call);
}

static enum rhema_ai_result map_result(const struct rhema_ai_call *call, CURLcode rc)
{
    switch (rc) {
    case CURLE_OK: return RHEMA_AI_OK;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE: return RHEMA_AI_ECONNECT;
    case CURLE_OPERATION_TIMEDOUT: return RHEMA_AI_ETIMEOUT;
    case CURLE_WRITE_ERROR: return call->aborted ? RHEMA_AI_EABORTED : RHEMA_AI_EIO;
    default: return RHEMA_AI_EIO;
    }
}

/* Report every finished transfer (outside curl's callbacks). */
static void finish(struct rhema_ai_client *c)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(c->multi, &left))) {
        struct rhema_ai_call *call = NULL;
        CURLcode rc;
        enum rhema_ai_result res;
        if (m->msg != CURLMSG_DONE)
            continue;
        rc = m->data.result;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&call);
        res = map_result(call, rc);
        if (res == RHEMA_AI_OK && call->status == 0)
            res = RHEMA_AI_EIO;
        const char *why = res == RHEMA_AI_OK ? ""
                          : call->errbuf[0] ? call->errbuf
                                            : curl_easy_strerror(rc);
        char whybuf[CURL_ERROR_SIZE];
        snprintf(whybuf, sizeof whybuf, "%s", why);
        /* unlink first: on_done may start or cancel other calls */
        const struct rhema_ai_call_cb *cb = call->cb;
        void *arg = call->arg;
        curl_multi_remove_handle(c->multi, call->easy);
        cb->on_done(arg, call, res, whybuf);
        call_free(call);
    }
}

static void on_sock_event(evutil_socket_t fd, short what, void *arg)
{
    struct sock *s = arg;
    struct rhema_ai_client *c = s->c;
    int running = 0;
    int flags = ((what & EV_READ) ? CURL_CSELECT_IN : 0) | ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    curl_multi_socket_action(c->multi, fd, flags, &running);
    finish(c);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct rhema_ai_client *c = arg;
    int running = 0;
    (void)fd;
    (void)what;
    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    finish(c);
}

static int socket_cb(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp)
{
    struct rhema_ai_client *c = userp;
    struct sock *s = socketp;
    short ev;
    (void)e;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            event_free(s->ev);
            TAILQ_REMOVE(&c->socks, s, link);
            free(s);
            curl_multi_assign(c->multi, fd, NULL);
        }
        return 0;
    }
    if (!s) {
        if (!(s = calloc(1, sizeof *s)))
            return -1;
        s->c = c;
        s->fd = fd;
        TAILQ_INSERT_TAIL(&c->socks, s, link);
        curl_multi_assign(c->multi, fd, s);
    } else {
        event_free(s->ev);
        s->ev = NULL;
    }
    ev = (short)(((what & CURL_POLL_IN) ? EV_READ : 0) | ((what & CURL_POLL_OUT) ? EV_WRITE : 0) |
                 EV_PERSIST);
    s->ev = event_new(c->base, fd, ev, on_sock_event, s);
    if (!s->ev || event_add(s->ev, NULL))
        return -1;
    return 0;
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    struct rhema_ai_client *c = userp;
    struct timeval tv;
    (void)multi;
    if (timeout_ms < 0)
        return evtimer_del(c->timer);
    tv.tv_sec = timeout_ms / 1000;
    tv.tv_usec = (timeout_ms % 1000) * 1000;
    return evtimer_add(c->timer, &tv);
}

int rhema_ai_client_new(struct event_base *base, struct rhema_ai_client **out, char **err)
{
    struct rhema_ai_client *c = calloc(1, sizeof *c); /* curl_global_init(): gateway.c */
    if (!c)
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    c->base = base;
    TAILQ_INIT(&c->calls);
    TAILQ_INIT(&c->socks);
    c->multi = curl_multi_init();
    c->timer = evtimer_new(base, on_timer, c);
    if (!c->multi || !c->timer) {
        rhema_ai_client_free(c);
        return rhema_set_error(err, RHEMA_ENOMEM, "cannot create the HTTP client");
    }
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, 64L);
    *out = c;
    return 0;
}

void rhema_ai_client_free(struct rhema_ai_client *c)
{
    struct rhema_ai_call *call;
    struct sock *s;
    if (!c)
        return;
    while ((call = TAILQ_FIRST(&c->calls)))
        call_free(call);
    if (c->multi)
        curl_multi_cleanup(c->multi);
    while ((s = TAILQ_FIRST(&c->socks))) { /* what curl did not remove itself */
        TAILQ_REMOVE(&c->socks, s, link);
        event_free(s->ev);
        free(s);
    }
    if (c->timer)
        event_free(c->timer);
    free(c);
}

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct rhema_ai_call *call = userdata;
    size_t n = size * nmemb;
    int rc = call->cb->on_data(call->arg, call, ptr, n);
    if (rc == 2)
        return CURL_WRITEFUNC_PAUSE; /* the same bytes again after rhema_ai_call_resume() */
    if (rc) {
        call->aborted = 1;
        return 0; /* CURLE_WRITE_ERROR */
    }
    return n;
}

long rhema_ai_retry_after_parse(const char *v, int64_t now)
{
    char *end;
    long n;
    struct tm tm;
    while (*v == ' ' || *v == '\t')
        v++;
    if (*v >= '0' && *v <= '9') {
        n = strtol(v, &end, 10);
        while (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n')
            end++;
        return *end || n < 0 ? -1 : n;
    }
    memset(&tm, 0, sizeof tm);
    end = strptime(v, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (!end)
        return -1;
    int64_t t = (int64_t)timegm(&tm);
    return t <= now ? 0 : (long)(t - now);
}

static size_t header_cb(char *buf, size_t size, size_t nitems, void *userdata)
{
    struct rhema_ai_call *call = userdata;
    size_t n = size * nitems, vlen;
    char line[512];
    const char *v;
    if (n >= 5 && memcmp(buf, "HTTP/", 5) == 0) { /* a new response (after 100 Continue too) */
        const char *sp = memchr(buf, ' ', n);
        call->status = sp ? strtol(sp + 1, NULL, 10) : 0;
        call->ctype[0] = '\0';
        call->retry_after = -1;
        return n;
    }
    if (n >= sizeof line)
        return n;
    memcpy(line, buf, n);
    line[n] = '\0';
    vlen = strcspn(line, "\r\n");
    line[vlen] = '\0';
    if (!(v = strchr(line, ':')))
        return n;
    v++;
    while (*v == ' ' || *v == '\t')
        v++;
    if (strncasecmp(line, "content-type:", 13) == 0)
        snprintf(call->ctype, sizeof call->ctype, "%s", v);
    else if (strncasecmp(line, "retry-after:", 12) == 0)
        call->retry_after = rhema_ai_retry_after_parse(v, (int64_t)time(NULL));
    return n;
}

struct rhema_ai_call *rhema_ai_call_start(struct rhema_ai_client *c, const char *url,
                                          const char *const *headers, const void *body,
                                          size_t len, long timeout_ms,
                                          const struct rhema_ai_call_cb *cb, void *arg,
                                          char **err)
{
    struct rhema_ai_call *call = calloc(1, sizeof *call);
    struct curl_slist *h;
    if (!call)
        goto nomem;
    call->c = c;
    call->cb = cb;
    call->arg = arg;
    call->retry_after = -1;
    if (!(call->easy = curl_easy_init()))
        goto nomem;
    for (size_t i = 0; headers && headers[i]; i++) {
        if (!(h = curl_slist_append(call->hdrs, headers[i])))
            goto nomem;
        call->hdrs = h;
    }
    if (!(h = curl_slist_append(call->hdrs, "Expect:"))) /* no 100-continue round trip */
        goto nomem;
    call->hdrs = h;
    CURL *e = call->easy;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, call);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, call->errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, call->hdrs);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, call);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, call);
    if (timeout_ms > 0)
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
    if (body) {
        if (!(call->body = malloc(len ? len : 1)))
            goto nomem;
        memcpy(call->body, body, len);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, call->body);
    }
    if (curl_multi_add_handle(c->multi, e) != CURLM_OK) {
        rhema_set_error(err, RHEMA_EIO, "cannot start the upstream request");
        goto fail;
    }
    TAILQ_INSERT_TAIL(&c->calls, call, link);
    c->active++;
    return call;
nomem:
    rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
fail:
    if (call) {
        if (call->easy)
            curl_easy_cleanup(call->easy);
        curl_slist_free_all(call->hdrs);
        free(call->body);
        free(call);
    }
    return NULL;
}

void rhema_ai_call_resume(struct rhema_ai_call *call)
{
    curl_easy_pause(call->easy, CURLPAUSE_CONT);
}

void rhema_ai_call_cancel(struct rhema_ai_call *call)
{
    if (call)
        call_free(call);
}

long rhema_ai_call_status(const struct rhema_ai_call *call)
{
    return call->status;
}

const char *rhema_ai_call_content_type(const struct rhema_ai_call *call)
{
    return call->ctype;
}

long rhema_ai_call_retry_after(const struct rhema_ai_call *call)
{
    return call->retry_after;
}

unsigned rhema_ai_client_active(const struct rhema_ai_client *c)
{
    return c->active;
}
