/*
 * redis_tls -- TLS under hiredis 0.14 for the redis storage plugin (see
 * redis_tls.h for the interface).
 *
 * Why a relay thread per connection rather than one thread polling every
 * relayed connection: the plugin keeps one connection per worker thread, a
 * handful per process, fixed after start, so a thread each costs little;
 * each relay then blocks only in its own poll() on two descriptors, owns
 * all of its state (no lock, no registration protocol, no wake-up pipe to
 * add or remove connections), and a slow or stuck server connection never
 * delays another.  The price is the same for both shapes: every request and
 * every reply crosses the socketpair and wakes the relay thread (two extra
 * context switches per round trip; doc/security.md gives the measured cost).
 *
 * Everything is non-blocking inside the relay: SSL_read/SSL_write may ask
 * for the socket to become readable or writable (WANT_READ / WANT_WRITE,
 * e.g. a TLS 1.3 key update or session ticket in the middle of a write), and
 * the loop polls for exactly that.  hiredis keeps its own timeouts: they are
 * socket options on its end of the socketpair, so a server that stops
 * answering times out in hiredis as it would over TCP, the plugin frees the
 * context, its end closes, and the relay sees that and exits.
 */
#include "redis_tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#define RELAY_BUF 16384 /* one TLS record's worth of plaintext */

struct rd_tls_relay {
    SSL *ssl;
    int net_fd;   /* TCP to the server (non-blocking) */
    int local_fd; /* the relay's end of the socketpair (non-blocking) */
    pthread_t thread;
    size_t up_len, up_off;     /* bytes from hiredis, not yet sent to the server */
    size_t down_len, down_off; /* bytes from the server, not yet given to hiredis */
    char error[256];           /* why the server's side ended; "" for a clean close */
    int cert_requested;        /* the server asked for a client certificate we lack */
    unsigned char up[RELAY_BUF];
    unsigned char down[RELAY_BUF];
};

static int no_client_cert(SSL *ssl, X509 **x509, EVP_PKEY **pkey);

/* OpenSSL's last queued reason, or `fallback`; empties the queue. */
static void ssl_reason(char *buf, size_t cap, const char *fallback)
{
    unsigned long e, last = 0;
    while ((e = ERR_get_error()) != 0)
        last = e;
    if (last != 0)
        ERR_error_string_n(last, buf, cap);
    else
        snprintf(buf, cap, "%s", fallback);
}

/* 0 when path can be opened for reading, or -1 with "key 'path': strerror" in why. */
static int readable(const char *key, const char *path, char *why, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(why, cap, "%s '%s': %s", key, path, strerror(errno));
        return -1;
    }
    fclose(f);
    return 0;
}

int rd_tls_ctx_new(const char *ca_file, const char *cert_file, const char *key_file, SSL_CTX **out,
                   char *why, size_t cap)
{
    char reason[256];
    SSL_CTX *ctx;

    /* OpenSSL says "system lib" for a missing file: name the errno first */
    if ((ca_file[0] != '\0' && readable("tls_ca_file", ca_file, why, cap) != 0) ||
        (cert_file[0] != '\0' && readable("tls_cert_file", cert_file, why, cap) != 0) ||
        (key_file[0] != '\0' && readable("tls_key_file", key_file, why, cap) != 0))
        return -1;
    ERR_clear_error();
    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        ssl_reason(reason, sizeof reason, "out of memory");
        snprintf(why, cap, "TLS: %s", reason);
        return -1;
    }
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
        ssl_reason(reason, sizeof reason, "cannot set the minimum version");
        snprintf(why, cap, "TLS: %s", reason);
        goto fail;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE);
    if (ca_file[0] != '\0') {
        if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
            ssl_reason(reason, sizeof reason, "cannot load it");
            snprintf(why, cap, "tls_ca_file '%s': %s", ca_file, reason);
            goto fail;
        }
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        ssl_reason(reason, sizeof reason, "cannot load it");
        snprintf(why, cap, "the system's CA store: %s", reason);
        goto fail;
    }
    if (cert_file[0] == '\0') {
        SSL_CTX_set_client_cert_cb(ctx, no_client_cert);
    } else {
        if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
            ssl_reason(reason, sizeof reason, "cannot load it");
            snprintf(why, cap, "tls_cert_file '%s': %s", cert_file, reason);
            goto fail;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
            ssl_reason(reason, sizeof reason, "cannot load it");
            snprintf(why, cap, "tls_key_file '%s': %s", key_file, reason);
            goto fail;
        }
        if (SSL_CTX_check_private_key(ctx) != 1) {
            ssl_reason(reason, sizeof reason, "they do not match");
            snprintf(why, cap, "tls_key_file '%s' is not the key of tls_cert_file '%s': %s",
                     key_file, cert_file, reason);
            goto fail;
        }
    }
    *out = ctx;
    return 0;
fail:
    SSL_CTX_free(ctx);
    return -1;
}

static long long ms_left(const struct timespec *deadline)
{
    struct timespec now;
    long long ms;
    clock_gettime(CLOCK_MONOTONIC, &now);
    ms = (long long)(deadline->tv_sec - now.tv_sec) * 1000 +
         (deadline->tv_nsec - now.tv_nsec) / 1000000;
    return ms < 0 ? 0 : ms;
}

/* Wait for `events` on fd until the deadline: 1 ready, 0 timed out, -1 error. */
static int wait_fd(int fd, short events, const struct timespec *deadline)
{
    struct pollfd p = {.fd = fd, .events = events};
    int n;
    do
        n = poll(&p, 1, (int)ms_left(deadline));
    while (n < 0 && errno == EINTR);
    return n < 0 ? -1 : n;
}

/* A non-blocking TCP connection to host:port by the deadline, or -1 with why. */
static int tcp_dial(const char *host, int port, const struct timespec *deadline, char *why,
                    size_t cap)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL, *ai;
    char service[16];
    int fd = -1, rc, err = 0;

    snprintf(service, sizeof service, "%d", port);
    rc = getaddrinfo(host, service, &hints, &res);
    if (rc != 0) {
        snprintf(why, cap, "%s", gai_strerror(rc));
        return -1;
    }
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        socklen_t len = sizeof err;
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        err = errno;
        if (err == EINPROGRESS) {
            rc = wait_fd(fd, POLLOUT, deadline);
            if (rc > 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0)
                break;
            if (rc == 0)
                err = ETIMEDOUT;
            else if (rc < 0)
                err = errno;
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        snprintf(why, cap, "%s", strerror(err ? err : EHOSTUNREACH));
        return -1;
    }
    {
        int one = 1;
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        (void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    }
    return fd;
}

/* Why a handshake failed, in words: the verify result first, then OpenSSL's reason. */
static void handshake_reason(SSL *ssl, int sslerr, int saved_errno, char *buf, size_t cap)
{
    long vr = SSL_get_verify_result(ssl);
    char reason[256];

    ssl_reason(reason, sizeof reason, "");
    if (vr != X509_V_OK)
        snprintf(buf, cap, "certificate verify failed: %s", X509_verify_cert_error_string(vr));
    else if (reason[0] != '\0')
        snprintf(buf, cap, "%s", reason);
    else if (sslerr == SSL_ERROR_SYSCALL && saved_errno != 0)
        snprintf(buf, cap, "%s", strerror(saved_errno));
    else
        snprintf(buf, cap,
                 "the server closed the connection during the handshake "
                 "(is it a TLS port?)");
}

/* The server's side ended: keep OpenSSL's reason (this thread's queue) for the owner. */
static void relay_end(struct rd_tls_relay *r, int *net_eof, int sslerr, const char *op)
{
    int saved_errno = errno;
    char reason[200];

    *net_eof = 1;
    ssl_reason(reason, sizeof reason, "");
    if (reason[0] != '\0')
        snprintf(r->error, sizeof r->error, "TLS: %s", reason);
    else if (sslerr == SSL_ERROR_SYSCALL && saved_errno != 0)
        snprintf(r->error, sizeof r->error, "%s: %s", op, strerror(saved_errno));
    /*
     * With TLS 1.3 a server that requires a client certificate refuses us
     * only after our handshake ended, and its alert can be lost to a reset:
     * say what the handshake already showed.
     */
    if (r->cert_requested) {
        size_t n = strlen(r->error);
        snprintf(r->error + n, sizeof r->error - n,
                 "%sthe server asked for a client "
                 "certificate and tls_cert_file is not set",
                 n ? "; " : "");
    }
}

/* The server asked for a client certificate and none is configured: note it, send none. */
static int no_client_cert(SSL *ssl, X509 **x509, EVP_PKEY **pkey)
{
    struct rd_tls_relay *r = SSL_get_app_data(ssl);
    (void)x509;
    (void)pkey;
    if (r != NULL)
        r->cert_requested = 1;
    return 0;
}

/*
 * The relay loop: move what can be moved without blocking, then poll for
 * exactly what the stalled operations wait for.  Ends when hiredis closes
 * its end (or the socketpair fails), or when the server's side ends (close,
 * TLS or socket error) and what it sent has been handed to hiredis.
 */
static void *relay_main(void *arg)
{
    struct rd_tls_relay *r = arg;
    int net_eof = 0, net_broken = 0, hiredis_gone = 0;

    while (!hiredis_gone) {
        struct pollfd p[2];
        int progress = 0, n, e;
        short net_ev = 0, local_ev = 0;

        if (!net_eof && r->down_len == 0) {
            ERR_clear_error();
            n = SSL_read(r->ssl, r->down, sizeof r->down);
            if (n > 0) {
                r->down_len = (size_t)n;
                r->down_off = 0;
                progress = 1;
            } else {
                e = SSL_get_error(r->ssl, n);
                if (e == SSL_ERROR_WANT_READ)
                    net_ev |= POLLIN;
                else if (e == SSL_ERROR_WANT_WRITE)
                    net_ev |= POLLOUT;
                else
                    relay_end(r, &net_eof, e, "SSL_read"); /* close_notify, EOF, an error */
            }
        }
        if (r->down_len > 0) {
            n = (int)send(r->local_fd, r->down + r->down_off, r->down_len - r->down_off,
                          MSG_NOSIGNAL);
            if (n > 0) {
                r->down_off += (size_t)n;
                if (r->down_off == r->down_len)
                    r->down_len = r->down_off = 0;
                progress = 1;
            } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
                local_ev |= POLLOUT;
            } else {
                break; /* hiredis' end is gone */
            }
        }
        if (net_eof && r->down_len == 0)
            break;
        if (r->up_len == 0) {
            n = (int)recv(r->local_fd, r->up, sizeof r->up, 0);
            if (n > 0) {
                r->up_len = (size_t)n;
                r->up_off = 0;
                progress = 1;
            } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
                local_ev |= POLLIN;
            } else {
                hiredis_gone = 1; /* closed by redisFree: say goodbye below */
                continue;
            }
        }
        if (r->up_len > 0 && !net_eof) {
            ERR_clear_error();
            n = SSL_write(r->ssl, r->up + r->up_off, (int)(r->up_len - r->up_off));
            if (n > 0) {
                r->up_off += (size_t)n;
                if (r->up_off == r->up_len)
                    r->up_len = r->up_off = 0;
                progress = 1;
            } else {
                e = SSL_get_error(r->ssl, n);
                if (e == SSL_ERROR_WANT_WRITE)
                    net_ev |= POLLOUT;
                else if (e == SSL_ERROR_WANT_READ)
                    net_ev |= POLLIN;
                else
                    relay_end(r, &net_eof, e, "SSL_write");
            }
        } else if (r->up_len > 0) {
            r->up_len = r->up_off = 0; /* the server is gone: nobody will read it */
        }
        if (progress || (net_eof && r->down_len == 0))
            continue;
        p[0].fd = net_broken || net_ev == 0 ? -1 : r->net_fd;
        p[0].events = net_ev;
        p[0].revents = 0;
        p[1].fd = r->local_fd; /* always watched: a hang-up from hiredis ends the relay */
        p[1].events = local_ev;
        p[1].revents = 0;
        n = poll(p, 2, -1);
        if (n < 0 && errno != EINTR)
            break;
        if (n > 0 && (p[1].revents & (POLLHUP | POLLERR | POLLNVAL)) && !(p[1].revents & POLLIN)) {
            hiredis_gone = 1; /* it closed its end and left nothing to send */
            break;
        }
        if (n > 0 && (p[0].revents & (POLLHUP | POLLERR | POLLNVAL)))
            net_broken = 1; /* SSL_read will report it; never poll it again */
    }
    if (hiredis_gone && !net_eof) {
        ERR_clear_error();
        (void)SSL_shutdown(r->ssl); /* one try at close_notify; never waits */
    }
    ERR_clear_error();
    /* The server's side ended: hiredis reads EOF and drops the connection. */
    shutdown(r->local_fd, SHUT_RDWR);
    return NULL;
}

int rd_tls_relay_open(SSL_CTX *ctx, const char *host, int port, const char *server_name,
                      int timeout_ms, struct rd_tls_relay **out, int *fd_out, char *why, size_t cap)
{
    struct rd_tls_relay *r;
    struct timespec deadline;
    unsigned char addr[sizeof(struct in6_addr)];
    sigset_t all, old;
    char reason[320];
    int sv[2] = {-1, -1}, rc, e, saved_errno, is_ip;

    r = calloc(1, sizeof *r);
    if (r == NULL) {
        snprintf(why, cap, "out of memory");
        return -1;
    }
    r->net_fd = r->local_fd = -1;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
    if (deadline.tv_nsec >= 1000000000) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000;
    }
    r->net_fd = tcp_dial(host, port, &deadline, reason, sizeof reason);
    if (r->net_fd < 0) {
        snprintf(why, cap, "connect to %s:%d: %s", host, port, reason);
        goto fail;
    }
    ERR_clear_error();
    r->ssl = SSL_new(ctx);
    if (r->ssl == NULL || SSL_set_fd(r->ssl, r->net_fd) != 1) {
        ssl_reason(reason, sizeof reason, "out of memory");
        snprintf(why, cap, "TLS to %s:%d: %s", host, port, reason);
        goto fail;
    }
    is_ip =
        inet_pton(AF_INET, server_name, addr) == 1 || inet_pton(AF_INET6, server_name, addr) == 1;
    if (is_ip) {
        rc = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(r->ssl), server_name);
    } else {
        /* SNI only for names: RFC 6066 forbids an address there */
        rc = SSL_set1_host(r->ssl, server_name) == 1 &&
             SSL_set_tlsext_host_name(r->ssl, server_name) == 1;
    }
    SSL_set_app_data(r->ssl, r);
    if (rc != 1) {
        ssl_reason(reason, sizeof reason, "invalid name");
        snprintf(why, cap, "TLS to %s:%d: server name '%s': %s", host, port, server_name, reason);
        goto fail;
    }
    for (;;) {
        ERR_clear_error();
        errno = 0;
        rc = SSL_connect(r->ssl);
        if (rc == 1)
            break;
        saved_errno = errno;
        e = SSL_get_error(r->ssl, rc);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            int w = wait_fd(r->net_fd, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, &deadline);
            if (w > 0)
                continue;
            if (w == 0)
                snprintf(why, cap,
                         "TLS handshake with %s:%d: no answer in %d ms (is it a "
                         "TLS port? a plain Redis port waits for a command)",
                         host, port, timeout_ms);
            else
                snprintf(why, cap, "TLS handshake with %s:%d: %s", host, port, strerror(errno));
            goto fail;
        }
        handshake_reason(r->ssl, e, saved_errno, reason, sizeof reason);
        snprintf(why, cap, "TLS handshake with %s:%d: %s%s", host, port, reason,
                 r->cert_requested ? "; the server asked for a client certificate and "
                                     "tls_cert_file is not set"
                                   : "");
        goto fail;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        snprintf(why, cap, "socketpair: %s", strerror(errno));
        goto fail;
    }
    r->local_fd = sv[0];
    if (fcntl(r->local_fd, F_SETFL, fcntl(r->local_fd, F_GETFL) | O_NONBLOCK) != 0) {
        snprintf(why, cap, "fcntl: %s", strerror(errno));
        goto fail;
    }
    /* The relay takes no signals: the host's handlers run in its own threads. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&r->thread, NULL, relay_main, r);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        snprintf(why, cap, "cannot start the TLS relay thread: %s", strerror(rc));
        goto fail;
    }
    *out = r;
    *fd_out = sv[1];
    return 0;
fail:
    ERR_clear_error();
    if (sv[1] >= 0)
        close(sv[1]);
    if (r->local_fd >= 0)
        close(r->local_fd);
    SSL_free(r->ssl);
    if (r->net_fd >= 0)
        close(r->net_fd);
    free(r);
    return -1;
}

void rd_tls_relay_close(struct rd_tls_relay *r, char *why, size_t cap)
{
    if (r == NULL)
        return;
    pthread_join(r->thread, NULL);
    if (why != NULL && r->error[0] != '\0')
        snprintf(why, cap, "%s", r->error);
    close(r->local_fd);
    SSL_free(r->ssl);
    close(r->net_fd);
    free(r);
}
