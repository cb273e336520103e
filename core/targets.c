/*
 * targets -- the health checker's allow-list rules and their matcher (see
 * targets.h).
 */
#include "rhema_build.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rhema/plugin.h> /* RHEMA_E* */

#include "targets.h"

#define SYNTAX                                                                                     \
    "expected an IP address or CIDR block, optionally with :port or :low-high "                    \
    "(an IPv6 block with ports in brackets: [fd00::/8]:443)"

/* A decimal number of 1..6 digits, nothing else, into *v. */
static int parse_uint(const char *s, size_t len, unsigned long *v)
{
    unsigned long n = 0;
    if (len == 0 || len > 6)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        n = n * 10 + (unsigned long)(s[i] - '0');
    }
    *v = n;
    return 0;
}

/* "P" or "P-Q" with 1 <= P <= Q <= 65535. */
static int parse_ports(const char *s, uint16_t *lo, uint16_t *hi)
{
    const char *dash = strchr(s, '-');
    unsigned long a, b;
    if (dash) {
        if (parse_uint(s, (size_t)(dash - s), &a) || parse_uint(dash + 1, strlen(dash + 1), &b))
            return -1;
    } else {
        if (parse_uint(s, strlen(s), &a))
            return -1;
        b = a;
    }
    if (a < 1 || b > 65535 || a > b)
        return -1;
    *lo = (uint16_t)a;
    *hi = (uint16_t)b;
    return 0;
}

static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* "addr" or "addr/N" (len bytes of s) into r's family, addr and prefix. */
static int parse_block(const char *s, size_t len, struct rhema_target_rule *r, const char *text,
                       char *err)
{
    char buf[INET6_ADDRSTRLEN + 8];
    const char *slash;
    unsigned long prefix = 0;
    int has_prefix = 0;
    if (len == 0 || len >= sizeof buf)
        return rhema_set_errbuf(err, RHEMA_EINVAL, "'%s': %s", text, SYNTAX);
    memcpy(buf, s, len);
    buf[len] = '\0';
    slash = strchr(buf, '/');
    if (slash) {
        if (parse_uint(slash + 1, strlen(slash + 1), &prefix))
            return rhema_set_errbuf(err, RHEMA_EINVAL, "'%s': the prefix length is not a number",
                                    text);
        buf[slash - buf] = '\0';
        has_prefix = 1;
    }
    memset(r->addr, 0, sizeof r->addr);
    if (inet_pton(AF_INET, buf, r->addr) == 1) {
        r->family = AF_INET;
    } else if (inet_pton(AF_INET6, buf, r->addr) == 1) {
        r->family = AF_INET6;
    } else {
        return rhema_set_errbuf(err, RHEMA_EINVAL, "'%s': %s", text, SYNTAX);
    }
    unsigned bits = r->family == AF_INET ? 32 : 128;
    if (!has_prefix)
        prefix = bits;
    if (prefix > bits)
        return rhema_set_errbuf(err, RHEMA_EINVAL, "'%s': the prefix length must be 0..%u", text,
                                bits);
    r->prefix = (unsigned)prefix;
    /* ::ffff:a.b.c.d/N (N >= 96) is the IPv4 block a.b.c.d/(N-96) */
    if (r->family == AF_INET6 && r->prefix >= 96 && memcmp(r->addr, v4mapped, 12) == 0) {
        memmove(r->addr, r->addr + 12, 4);
        memset(r->addr + 4, 0, 12);
        r->family = AF_INET;
        r->prefix -= 96;
        bits = 32;
    }
    for (unsigned i = r->prefix; i < bits; i++)
        if (r->addr[i / 8] & (0x80u >> (i % 8)))
            return rhema_set_errbuf(err, RHEMA_EINVAL,
                                    "'%s': the address has bits set beyond the /%u prefix "
                                    "(write the network address of the block)",
                                    text, r->prefix);
    return 0;
}

int rhema_target_rule_parse(const char *text, struct rhema_target_rule *out,
                            char err[RHEMA_ERRMSG_MAX])
{
    struct rhema_target_rule r = {0};
    const char *ports = NULL;
    int rc;
    if (!text || !*text)
        return rhema_set_errbuf(err, RHEMA_EINVAL, "an empty rule: %s", SYNTAX);
    if (text[0] == '[') {
        const char *end = strchr(text, ']');
        if (!end || (end[1] != '\0' && end[1] != ':'))
            return rhema_set_errbuf(err, RHEMA_EINVAL, "'%s': %s", text, SYNTAX);
        if ((rc = parse_block(text + 1, (size_t)(end - text - 1), &r, text, err)))
            return rc;
        if (end[1] == ':')
            ports = end + 2;
    } else {
        const char *colon = strchr(text, ':');
        if (colon && strchr(colon + 1, ':')) { /* IPv6 without brackets: no port */
            if ((rc = parse_block(text, strlen(text), &r, text, err)))
                return rc;
        } else {
            if ((rc = parse_block(text, colon ? (size_t)(colon - text) : strlen(text), &r, text,
                                  err)))
                return rc;
            if (colon)
                ports = colon + 1;
        }
    }
    r.port_lo = 1;
    r.port_hi = 65535;
    if (ports && parse_ports(ports, &r.port_lo, &r.port_hi))
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "'%s': expected a port 1..65535 or a range low-high after ':'",
                                text);
    *out = r;
    return 0;
}

/* sa's family, address bytes and port, an IPv4-mapped IPv6 address as IPv4; -1: another family. */
static int normalize(const struct sockaddr *sa, int *family, unsigned char addr[16], unsigned *port)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        *family = AF_INET;
        memcpy(addr, &in->sin_addr, 4);
        *port = ntohs(in->sin_port);
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
        const unsigned char *b = in6->sin6_addr.s6_addr;
        *port = ntohs(in6->sin6_port);
        if (memcmp(b, v4mapped, 12) == 0) {
            *family = AF_INET;
            memcpy(addr, b + 12, 4);
        } else {
            *family = AF_INET6;
            memcpy(addr, b, 16);
        }
        return 0;
    }
    return -1;
}

int rhema_target_rule_match(const struct rhema_target_rule *r, const struct sockaddr *sa)
{
    unsigned char a[16];
    unsigned port;
    int family;
    if (normalize(sa, &family, a, &port) || family != r->family || port < r->port_lo ||
        port > r->port_hi)
        return 0;
    for (unsigned i = 0; i < r->prefix; i++) {
        unsigned char m = (unsigned char)(0x80u >> (i % 8));
        if ((a[i / 8] & m) != (r->addr[i / 8] & m))
            return 0;
    }
    return 1;
}

int rhema_target_list_parse(struct rhema_target_list *l, const char *const *texts, size_t n,
                            char err[RHEMA_ERRMSG_MAX])
{
    struct rhema_target_rule *v = NULL;
    int rc;
    l->v = NULL;
    l->n = 0;
    if (n == 0)
        return 0;
    v = calloc(n, sizeof *v);
    if (!v)
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        if ((rc = rhema_target_rule_parse(texts[i], &v[i], err))) {
            free(v);
            return rc;
        }
    l->v = v;
    l->n = n;
    return 0;
}

void rhema_target_list_release(struct rhema_target_list *l)
{
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

int rhema_target_list_match(const struct rhema_target_list *l, const struct sockaddr *sa)
{
    for (size_t i = 0; i < l->n; i++)
        if (rhema_target_rule_match(&l->v[i], sa))
            return 1;
    return 0;
}

int rhema_target_list_port_ok(const struct rhema_target_list *l, unsigned port)
{
    for (size_t i = 0; i < l->n; i++)
        if (port >= l->v[i].port_lo && port <= l->v[i].port_hi)
            return 1;
    return 0;
}

int rhema_target_sockaddr(const char *host, unsigned port, struct sockaddr_storage *ss,
                          socklen_t *len)
{
    char buf[INET6_ADDRSTRLEN];
    size_t n = strlen(host);
    unsigned char a6[16];
    if (port < 1 || port > 65535)
        return -1;
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
        host++;
        n -= 2;
    }
    if (n == 0 || n >= sizeof buf)
        return -1;
    memcpy(buf, host, n);
    buf[n] = '\0';
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *in = (struct sockaddr_in *)(void *)ss;
    if (inet_pton(AF_INET, buf, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
        *len = sizeof *in;
        return 0;
    }
    if (inet_pton(AF_INET6, buf, a6) != 1)
        return -1;
    if (memcmp(a6, v4mapped, 12) == 0) {
        in->sin_family = AF_INET;
        memcpy(&in->sin_addr, a6 + 12, 4);
        in->sin_port = htons((uint16_t)port);
        *len = sizeof *in;
        return 0;
    }
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)(void *)ss;
    in6->sin6_family = AF_INET6;
    memcpy(&in6->sin6_addr, a6, 16);
    in6->sin6_port = htons((uint16_t)port);
    *len = sizeof *in6;
    return 0;
}

int rhema_target_same(const struct sockaddr *a, const struct sockaddr *b)
{
    unsigned char x[16], y[16];
    unsigned px, py;
    int fx, fy;
    if (normalize(a, &fx, x, &px) || normalize(b, &fy, y, &py))
        return 0;
    return fx == fy && px == py && memcmp(x, y, fx == AF_INET ? 4 : 16) == 0;
}

void rhema_target_format(const struct sockaddr *sa, char *buf, size_t cap)
{
    char a[INET6_ADDRSTRLEN] = "?";
    unsigned char bytes[16];
    unsigned port = 0;
    int family = 0;
    if (normalize(sa, &family, bytes, &port) == 0)
        inet_ntop(family, bytes, a, sizeof a);
    if (family == AF_INET6)
        snprintf(buf, cap, "[%s]:%u", a, port);
    else
        snprintf(buf, cap, "%s:%u", a, port);
}
