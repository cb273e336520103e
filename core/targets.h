/*
 * targets -- where the health checker may connect: the rules of
 * distributed.health_checking.allowed_targets and a matcher for them.
 *
 * A rule is an address block and a port range:
 *
 *     10.0.0.0/8                 every port of 10.0.0.0 - 10.255.255.255
 *     127.0.0.1:8080             one address (no /N: /32), one port
 *     192.168.1.0/24:8000-8099   a block and a port range
 *     fd00::/8                   IPv6, every port
 *     [fd00::/8]:443             IPv6 with ports: the block in brackets
 *     [::1]:9000-9010
 *
 * Ports are 1..65535 and a range is low-high with low <= high; the bits
 * of the address below the prefix must be zero (10.0.0.1/8 is refused:
 * write 10.0.0.0/8).  An IPv4-mapped IPv6 address (::ffff:a.b.c.d), in a
 * rule or a target, is the IPv4 address it carries.
 *
 * Pure functions of their arguments, any thread.  No name resolution:
 * hosts here are IP literals.
 */
#ifndef RHEMA_CORE_TARGETS_H
#define RHEMA_CORE_TARGETS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "util.h"

struct rhema_target_rule {
    int family;             /* AF_INET or AF_INET6 */
    unsigned char addr[16]; /* the network address (4 bytes used for AF_INET) */
    unsigned prefix;        /* 0..32 or 0..128 */
    uint16_t port_lo, port_hi;
};

/*
 * Parse one rule (the syntax above).  0, or RHEMA_EINVAL with err naming
 * what is wrong; *out is untouched on failure.
 */
int rhema_target_rule_parse(const char *text, struct rhema_target_rule *out,
                            char err[RHEMA_ERRMSG_MAX]);
/* 1 when r admits sa (an AF_INET or AF_INET6 address with its port), else 0. */
int rhema_target_rule_match(const struct rhema_target_rule *r, const struct sockaddr *sa);

/* The rules of a list setting, in order. */
struct rhema_target_list {
    struct rhema_target_rule *v;
    size_t n;
};

/*
 * Parse n rules into l (malloc'd; rhema_target_list_release()).  0, or
 * RHEMA_EINVAL naming the first bad one ("'x': ..."), RHEMA_ENOMEM; l is
 * empty on failure.
 */
int rhema_target_list_parse(struct rhema_target_list *l, const char *const *texts, size_t n,
                            char err[RHEMA_ERRMSG_MAX]);
void rhema_target_list_release(struct rhema_target_list *l);
/* 1 when a rule of l admits sa. */
int rhema_target_list_match(const struct rhema_target_list *l, const struct sockaddr *sa);
/* 1 when a rule of l admits `port` for some address (a host name's port, before resolving). */
int rhema_target_list_port_ok(const struct rhema_target_list *l, unsigned port);

/*
 * An IP literal ("10.0.0.1", "::1", "[::1]") and a port as a socket
 * address (an IPv4-mapped IPv6 address as AF_INET).  0, or -1 when host is
 * not an IP literal or port is not 1..65535.
 */
int rhema_target_sockaddr(const char *host, unsigned port, struct sockaddr_storage *ss,
                          socklen_t *len);
/* The same address and port (an IPv4-mapped IPv6 address and its IPv4 are the same). */
int rhema_target_same(const struct sockaddr *a, const struct sockaddr *b);
/* "a.b.c.d:port" or "[v6]:port" of sa into buf (cap bytes), for messages. */
void rhema_target_format(const struct sockaddr *sa, char *buf, size_t cap);

#endif /* RHEMA_CORE_TARGETS_H */
