/*
 * first_byte -- time to the first byte of a response's body, at one
 * keep-alive connection: what a streaming client waits for before its
 * first token (bench/run-ai.sh, part d).  wrk measures whole responses;
 * this measures the moment the first chunk of the body arrives.
 *
 *     first_byte -a 127.0.0.1:PORT -p PATH -b BODY_FILE -n REQUESTS [-w WARMUP]
 *
 * Sends REQUESTS POSTs of BODY_FILE (application/json) one after the other
 * on one connection (a new one if the server closes it), reads each whole
 * response (Content-Length or chunked), and prints one line:
 *
 *     n=N p50_us=X p90_us=Y p99_us=Z max_us=W
 *
 * the latencies from the request's write to the first body byte, in
 * microseconds (the first WARMUP requests, 200 by default, not counted).
 * Exit status 0; 1 on an error (a status other than 200, a broken
 * response), with a message on stderr.  Not installed; built by
 * bench/run-ai.sh.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static char buf[1 << 16];
static size_t have, pos; /* bytes in buf, bytes of buf consumed */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int fail(const char *what)
{
    fprintf(stderr, "first_byte: %s\n", what);
    return -1;
}

/* more bytes into buf (compacting it first); 0, or -1 at EOF / error */
static int fill(int fd)
{
    if (pos > 0) {
        memmove(buf, buf + pos, have - pos);
        have -= pos;
        pos = 0;
    }
    if (have == sizeof buf)
        return fail("response line or header too long");
    ssize_t n;
    do
        n = read(fd, buf + have, sizeof buf - have);
    while (n < 0 && errno == EINTR);
    if (n <= 0)
        return -1;
    have += (size_t)n;
    return 0;
}

/* a line ending in CRLF, NUL-terminated in place; NULL at EOF */
static char *line(int fd)
{
    for (;;) {
        char *p = memchr(buf + pos, '\n', have - pos);
        if (p) {
            char *l = buf + pos;
            pos = (size_t)(p - buf) + 1;
            *p = '\0';
            if (p > l && p[-1] == '\r')
                p[-1] = '\0';
            return l;
        }
        if (fill(fd) < 0)
            return NULL;
    }
}

/* skip n body bytes */
static int skip(int fd, size_t n)
{
    while (n > 0) {
        if (pos == have && fill(fd) < 0)
            return fail("connection closed inside a body");
        size_t k = have - pos < n ? have - pos : n;
        pos += k;
        n -= k;
    }
    return 0;
}

/*
 * Read one response; *first_ns is when its first body byte was in hand.
 * 0, 1 when the server will close the connection, -1 on an error.
 */
static int response(int fd, uint64_t *first_ns)
{
    char *l = line(fd);
    long long clen = -1;
    int chunked = 0, closing = 0;

    if (!l)
        return fail("connection closed before a response");
    if (strncmp(l, "HTTP/1.1 200", 12) != 0) {
        fprintf(stderr, "first_byte: status line '%s'\n", l);
        return -1;
    }
    while ((l = line(fd)) && *l) {
        if (strncasecmp(l, "Content-Length:", 15) == 0)
            clen = atoll(l + 15);
        else if (strncasecmp(l, "Transfer-Encoding:", 18) == 0 && strstr(l, "chunked"))
            chunked = 1;
        else if (strncasecmp(l, "Connection:", 11) == 0 && strcasestr(l, "close"))
            closing = 1;
    }
    if (!l)
        return fail("connection closed inside the header");
    if (pos == have && fill(fd) < 0)
        return fail("connection closed before the body");
    *first_ns = now_ns();
    if (!chunked)
        return clen < 0 ? fail("no Content-Length and not chunked")
                        : skip(fd, (size_t)clen) < 0 ? -1 : closing;
    for (;;) {
        if (!(l = line(fd)))
            return fail("connection closed inside a chunk size");
        unsigned long long n = strtoull(l, NULL, 16);
        if (n == 0) {
            while ((l = line(fd)) && *l) /* trailers */
                ;
            return l ? closing : fail("connection closed inside the trailer");
        }
        if (skip(fd, (size_t)n) < 0 || !(l = line(fd)))
            return -1;
    }
}

static int dial(const struct sockaddr_in *sa)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    if (fd < 0 || connect(fd, (const struct sockaddr *)sa, sizeof *sa) != 0) {
        perror("first_byte: connect");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    have = pos = 0;
    return fd;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    const char *addr = NULL, *path = NULL, *body_file = NULL;
    long n = 0, warmup = 200;
    int c;

    while ((c = getopt(argc, argv, "a:p:b:n:w:")) != -1) {
        switch (c) {
        case 'a': addr = optarg; break;
        case 'p': path = optarg; break;
        case 'b': body_file = optarg; break;
        case 'n': n = atol(optarg); break;
        case 'w': warmup = atol(optarg); break;
        default: goto usage;
        }
    }
    if (!addr || !path || !body_file || n < 1 || warmup < 0)
        goto usage;

    char host[64];
    const char *colon = strrchr(addr, ':');
    struct sockaddr_in sa = {.sin_family = AF_INET};
    if (!colon || (size_t)(colon - addr) >= sizeof host)
        goto usage;
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    sa.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        goto usage;

    FILE *f = fopen(body_file, "rb");
    static char body[1 << 16];
    size_t blen = f ? fread(body, 1, sizeof body, f) : 0;
    if (!f || ferror(f) || blen == 0 || blen == sizeof body) {
        fprintf(stderr, "first_byte: cannot read %s (1..65535 bytes)\n", body_file);
        return 1;
    }
    fclose(f);

    static char req[1 << 17];
    int hl = snprintf(req, sizeof req,
                      "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\n\r\n",
                      path, addr, blen);
    memcpy(req + hl, body, blen);
    size_t rlen = (size_t)hl + blen;

    uint64_t *lat = calloc((size_t)n, sizeof *lat);
    int fd = dial(&sa);
    if (!lat || fd < 0)
        return 1;
    for (long i = 0; i < n + warmup; i++) {
        uint64_t t0 = now_ns(), t1 = 0;
        if (write(fd, req, rlen) != (ssize_t)rlen) {
            perror("first_byte: write");
            return 1;
        }
        int rc = response(fd, &t1);
        if (rc < 0)
            return 1;
        if (i >= warmup)
            lat[i - warmup] = (t1 - t0) / 1000;
        if (rc == 1) {
            close(fd);
            if ((fd = dial(&sa)) < 0)
                return 1;
        }
    }
    close(fd);
    qsort(lat, (size_t)n, sizeof *lat, cmp_u64);
#define PCT(p) lat[(size_t)((double)(n - 1) * (p) / 100.0)]
    printf("n=%ld p50_us=%llu p90_us=%llu p99_us=%llu max_us=%llu\n", n,
           (unsigned long long)PCT(50), (unsigned long long)PCT(90),
           (unsigned long long)PCT(99), (unsigned long long)lat[n - 1]);
    return 0;

usage:
    fprintf(stderr, "usage: first_byte -a IPV4:PORT -p PATH -b BODY_FILE -n REQUESTS [-w WARMUP]\n");
    return 2;
}
