/*
 * services_targets -- what a health check may target and how many checks
 * there may be (services.h: "Check targets and caps"): the policy the
 * registration applies before storing a check and the checker applies
 * again before every probe (to the address a name resolved to, and to
 * checks stored before the policy existed or changed).
 */
#include "rhema_build.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/http.h>

#include "services.h"
#include "services_internal.h"
#include "util.h"

#define ALLOWED_KEY "distributed.health_checking.allowed_targets"

/* "host:port" / "[v6]:port" into host (no brackets) and port 1..65535. */
static int split_address(const char *a, char *host, size_t cap, unsigned *port)
{
    const char *colon, *h = a;
    size_t hlen;
    char *end;
    if (a[0] == '[') {
        const char *close = strchr(a, ']');
        if (!close)
            return -1;
        h = a + 1;
        hlen = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(a, ':');
        if (!colon)
            return -1;
        hlen = (size_t)(colon - a);
    }
    if (*colon != ':' || hlen == 0 || hlen >= cap || colon[1] < '0' || colon[1] > '9')
        return -1;
    unsigned long p = strtoul(colon + 1, &end, 10);
    if (*end || p < 1 || p > 65535)
        return -1;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    *port = (unsigned)p;
    return 0;
}

int rhema_check_target_split(const char *type, const char *target, char *host, size_t cap,
                             unsigned *port)
{
    if (!type || !target)
        return -1;
    if (strcmp(type, "tcp") == 0)
        return split_address(target, host, cap, port);
    if (strcmp(type, "http") != 0)
        return -1;
    struct evhttp_uri *uri = evhttp_uri_parse(target);
    const char *h = uri ? evhttp_uri_get_host(uri) : NULL;
    int rc = -1, p = uri ? evhttp_uri_get_port(uri) : -1;
    size_t len = h ? strlen(h) : 0;
    if (len >= 2 && h[0] == '[' && h[len - 1] == ']') {
        h++;
        len -= 2;
    }
    if (h && len > 0 && len < cap && p <= 65535 && p != 0) {
        memcpy(host, h, len);
        host[len] = '\0';
        *port = p > 0 ? (unsigned)p : 80;
        rc = 0;
    }
    if (uri)
        evhttp_uri_free(uri);
    return rc;
}

int svc_target_allowed(const struct rhema_services *s, const char *svc_address, const char *host,
                       unsigned port, const struct sockaddr *sa, char why[RHEMA_ERRMSG_MAX])
{
    char shost[RHEMA_SERVICE_ADDR_MAX + 1], shown[RHEMA_SERVICE_ADDR_MAX + 16];
    struct sockaddr_storage own;
    socklen_t ownlen;
    unsigned sport;
    if (sa)
        rhema_target_format(sa, shown, sizeof shown);
    else
        snprintf(shown, sizeof shown, "%s:%u", host, port);
    if (s->allowed.n) {
        if (sa ? rhema_target_list_match(&s->allowed, sa)
               : rhema_target_list_port_ok(&s->allowed, port))
            return 0;
        if (sa)
            return rhema_set_errbuf(why, RHEMA_EINVAL, "%s is outside %s", shown, ALLOWED_KEY);
        return rhema_set_errbuf(why, RHEMA_EINVAL, "port %u of %s is in no rule of %s", port, host,
                                ALLOWED_KEY);
    }
    /* no list: the service's own address only */
    if (svc_address && split_address(svc_address, shost, sizeof shost, &sport) == 0 &&
        sport == port &&
        (strcasecmp(shost, host) == 0 ||
         (sa && rhema_target_sockaddr(shost, sport, &own, &ownlen) == 0 &&
          rhema_target_same((const struct sockaddr *)&own, sa))))
        return 0;
    return rhema_set_errbuf(why, RHEMA_EINVAL,
                            "%s is not the service's own address (%s), the only target allowed "
                            "while %s is empty",
                            shown, svc_address ? svc_address : "none", ALLOWED_KEY);
}

int rhema_services_admit_check(const struct rhema_services *s, const char *id, const char *name,
                               const char *address, json_t *check, char err[RHEMA_ERRMSG_MAX])
{
    const char *type = json_string_value(json_object_get(check, "type"));
    const char *target = json_string_value(json_object_get(check, "target"));
    char host[RHEMA_SERVICE_ADDR_MAX + 1], why[RHEMA_ERRMSG_MAX];
    size_t in_name = 0, total = 0;
    unsigned port;
    if (!type)
        return rhema_set_errbuf(err, RHEMA_EINVAL, "field 'check.type': missing");
    if (strcmp(type, "ttl") != 0) {
        struct sockaddr_storage ss;
        socklen_t len;
        if (rhema_check_target_split(type, target, host, sizeof host, &port) != 0)
            return rhema_set_errbuf(err, RHEMA_EINVAL, "field 'check.target': no host and port");
        int literal = rhema_target_sockaddr(host, port, &ss, &len) == 0;
        if (svc_target_allowed(s, address, host, port, literal ? (struct sockaddr *)&ss : NULL,
                               why))
            return rhema_set_errbuf(err, RHEMA_EINVAL, "field 'check.target': %s", why);
    }
    svc_count_checks(s, name, id, &in_name, &total);
    if ((int64_t)in_name >= s->max_checks_per_service)
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "field 'check': service '%s' already has %zu checks, the most "
                                "distributed.health_checking.max_checks_per_service allows",
                                name, in_name);
    if ((int64_t)total >= s->max_checks_total)
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "field 'check': the registry already has %zu checks, the most "
                                "distributed.health_checking.max_checks_total allows",
                                total);
    return 0;
}
