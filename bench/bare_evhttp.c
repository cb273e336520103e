/*
 * bare_evhttp -- the baseline for rhemad's GET benchmark: a libevent evhttp
 * server with rhemad's threading model and nothing else.
 *
 *     bare_evhttp -l 127.0.0.1:PORT -b BODY_FILE [-t THREADS] [-e ETAG] [-s]
 *
 * Like rhemad, it binds one listening socket and runs THREADS worker
 * threads, each with its own event base and its own evhttp accepting on
 * that shared socket.  Every request, whatever its method and path, gets
 * 200 with the bytes of BODY_FILE and the headers rhemad sends on a GET of
 * a session (Content-Type: application/json, a strong ETag, an
 * X-Request-Id made per request the way rhemad makes it; evhttp adds Date
 * and Content-Length as it does for rhemad), so that both servers put the
 * same bytes on the wire and the difference is what rhemad does per
 * request: routing, storage, JSON, logging, metrics.
 *
 * With -s it plays a streaming upstream (bench/run-ai.sh, first chunk):
 * BODY_FILE is a server-sent event stream, answered as text/event-stream
 * with chunked encoding, its first event in a first chunk and the rest in
 * a second one, both written at once.
 *
 * It prints "ready" on stdout once listening, and stops on SIGINT/SIGTERM.
 * Not installed; built by bench/run.sh.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <event2/thread.h>

struct worker {
    int index;
    struct event_base *base;
    struct evhttp *http;
    struct evconnlistener *listener;
    unsigned long long requests;
    pthread_t thread;
};

static const char *body;
static size_t body_len;
static char etag[96];
static unsigned run_id;
static int stream_mode;

/* -s: the first event (up to the first blank line) as one chunk, the rest as another */
static void send_stream(struct evhttp_request *req)
{
    const char *end = strstr(body, "\n\n");
    size_t first = end ? (size_t)(end - body) + 2 : body_len;
    struct evbuffer *chunk = evbuffer_new();

    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/event-stream");
    evhttp_send_reply_start(req, 200, "OK");
    evbuffer_add(chunk, body, first);
    evhttp_send_reply_chunk(req, chunk);
    if (first < body_len) {
        evbuffer_add(chunk, body + first, body_len - first);
        evhttp_send_reply_chunk(req, chunk);
    }
    evhttp_send_reply_end(req);
    evbuffer_free(chunk);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    struct worker *w = arg;
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    struct evbuffer *out = evbuffer_new();
    char request_id[48];

    snprintf(request_id, sizeof request_id, "%08x-%d-%llu", run_id, w->index, ++w->requests);
    if (stream_mode) {
        evbuffer_free(out);
        send_stream(req);
        return;
    }
    evhttp_add_header(h, "ETag", etag);
    evhttp_add_header(h, "X-Request-Id", request_id);
    evhttp_add_header(h, "Content-Type", "application/json");
    /* a copy per request, as rhemad builds each body afresh */
    evbuffer_add(out, body, body_len);
    evhttp_send_reply(req, 200, "OK", out);
    evbuffer_free(out);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    event_base_dispatch(w->base);
    return NULL;
}

static int listen_on(const char *addr)
{
    char host[256];
    const char *colon = strrchr(addr, ':');
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE};
    struct addrinfo *res, *ai;
    int fd = -1, one = 1;

    if (!colon || (size_t)(colon - addr) >= sizeof host) {
        fprintf(stderr, "bare_evhttp: -l wants host:port\n");
        return -1;
    }
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    if (host[0] == '[') { /* [v6] */
        memmove(host, host + 1, strlen(host));
        host[strlen(host) - 1] = '\0';
    }
    if (getaddrinfo(host, colon + 1, &hints, &res) != 0) {
        fprintf(stderr, "bare_evhttp: cannot resolve %s\n", addr);
        return -1;
    }
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0)
            continue;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 1024) == 0)
            break;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        fprintf(stderr, "bare_evhttp: cannot listen on %s: %s\n", addr, strerror(errno));
    else
        evutil_make_socket_nonblocking(fd);
    return fd;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *p = NULL;
    long n;
    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (p = malloc((size_t)n + 1)) != NULL) {
        if (fread(p, 1, (size_t)n, f) != (size_t)n) {
            free(p);
            p = NULL;
        } else {
            *len = (size_t)n;
        }
    }
    fclose(f);
    return p;
}

int main(int argc, char **argv)
{
    const char *addr = NULL, *body_file = NULL;
    int threads = 2, c, fd;
    sigset_t set;
    struct worker *workers;

    snprintf(etag, sizeof etag, "\"1\"");
    while ((c = getopt(argc, argv, "l:b:t:e:s")) != -1) {
        switch (c) {
        case 'l': addr = optarg; break;
        case 'b': body_file = optarg; break;
        case 't': threads = atoi(optarg); break;
        case 'e': snprintf(etag, sizeof etag, "%s", optarg); break;
        case 's': stream_mode = 1; break;
        default: goto usage;
        }
    }
    if (!addr || !body_file || threads < 1 || threads > 256)
        goto usage;
    body = read_file(body_file, &body_len);
    if (!body) {
        fprintf(stderr, "bare_evhttp: cannot read %s: %s\n", body_file, strerror(errno));
        return 1;
    }
    run_id = (unsigned)getpid() * 2654435761u;
    evthread_use_pthreads();
    fd = listen_on(addr);
    if (fd < 0)
        return 1;

    /* the workers must not take the signals: block them, then wait for one here */
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    workers = calloc((size_t)threads, sizeof *workers);
    for (int i = 0; i < threads; i++) {
        struct worker *w = &workers[i];
        w->index = i;
        w->base = event_base_new();
        w->http = w->base ? evhttp_new(w->base) : NULL;
        w->listener = w->http ? evconnlistener_new(w->base, NULL, NULL, LEV_OPT_CLOSE_ON_EXEC, 0, fd)
                              : NULL;
        if (!w->listener || !evhttp_bind_listener(w->http, w->listener)) {
            fprintf(stderr, "bare_evhttp: cannot set up worker %d\n", i);
            return 1;
        }
        evhttp_set_gencb(w->http, on_request, w);
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            fprintf(stderr, "bare_evhttp: cannot start worker %d\n", i);
            return 1;
        }
    }
    printf("ready\n");
    fflush(stdout);
    sigwait(&set, &c);
    /* a benchmark helper: the process exit frees everything */
    _exit(0);

usage:
    fprintf(stderr, "usage: bare_evhttp -l HOST:PORT -b BODY_FILE [-t THREADS] [-e ETAG] [-s]\n");
    return 2;
}
