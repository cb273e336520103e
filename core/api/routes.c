/*
 * routes -- the router: match a request against the route tables
 * (routes.h), and check the tables' shape.
 */
#include "rhema_build.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "routes.h"
#include "util.h"

/*
 * Does template t match path p?  A {name} segment takes an id into param.
 * When the literal part before a {name} matched but the path's segment is
 * not an id, *bad_t and *bad_seg note the first such place (for the 400).
 */
static int match(const char *t, const char *p, char param[RHEMA_ID_MAX + 2],
                 char param2[RHEMA_ID_MAX + 2], const char **bad_t, const char **bad_seg)
{
    int nparam = 0;
    for (;;) {
        if (*t == '{') {
            size_t n = strcspn(p, "/");
            char *dst = nparam++ ? param2 : param;
            if (n > 0 && n <= RHEMA_ID_MAX) {
                memcpy(dst, p, n);
                dst[n] = '\0';
            }
            if (n == 0 || n > RHEMA_ID_MAX || !rhema_id_valid(dst)) {
                if (!*bad_t) {
                    *bad_t = t;
                    *bad_seg = p;
                }
                return 0;
            }
            p += n;
            t = strchr(t, '}') + 1;
            continue;
        }
        if (*t != *p)
            return 0;
        if (!*t)
            return 1;
        t++, p++;
    }
}

/* 400 for the path segment at seg, named after the template's {name} at t. */
static void reply_bad_segment(struct rhema_req *r, const char *t, const char *seg)
{
    char label[64], id[RHEMA_ID_MAX + 2];
    const char *tail;
    size_t n = strcspn(t + 1, "}");
    if (n >= sizeof label)
        n = sizeof label - 1;
    memcpy(label, t + 1, n);
    label[n] = '\0';
    for (char *c = label; *c; c++)
        if (*c == '_')
            *c = ' ';
    if (rhema_path_id(r, seg, id, &tail, label) == 0) /* not reached: seg is no id */
        rhema_reply_error(r, 404, "not_found", "no route for %s", r->path);
}

const struct rhema_route *rhema_route_match(struct rhema_req *r,
                                            const struct rhema_route *const *tables)
{
    const struct rhema_route *found = NULL, *const *tab, *rt;
    const char *bad_t = NULL, *bad_seg = NULL;
    char param[RHEMA_ID_MAX + 2] = "", param2[RHEMA_ID_MAX + 2] = "";
    unsigned allowed = 0, m;
    for (tab = tables; *tab && !found; tab++)
        for (rt = *tab; rt->path && !found; rt++)
            if (match(rt->path, r->path, param, param2, &bad_t, &bad_seg))
                found = rt;
    if (!found) {
        if (bad_t)
            reply_bad_segment(r, bad_t, bad_seg);
        else
            rhema_reply_error(r, 404, "not_found", "no route for %s", r->path);
        return NULL;
    }
    /* the resource is the template: its methods are every line with that template */
    for (tab = tables; *tab; tab++)
        for (rt = *tab; rt->path; rt++)
            if (strcmp(rt->path, found->path) == 0)
                allowed |= rt->method;
    if (!(m = rhema_method(r, allowed)))
        return NULL; /* 405 or the OPTIONS preflight, answered */
    for (tab = tables; *tab; tab++)
        for (rt = *tab; rt->path; rt++)
            if (rt->method == m && strcmp(rt->path, found->path) == 0) {
                r->route = rt;
                r->reads = rt->effect == RHEMA_READS;
                memcpy(r->param, param, sizeof r->param);
                memcpy(r->param2, param2, sizeof r->param2);
                return rt;
            }
    abort(); /* not reached: m is one of allowed */
}

/* "<area>:<verb>", each [a-z_]+ */
static int permission_valid(const char *p)
{
    const char *colon = p ? strchr(p, ':') : NULL;
    if (!colon || colon == p || !colon[1])
        return 0;
    for (const char *c = p; *c; c++)
        if (c != colon && !(islower((unsigned char)*c) || *c == '_'))
            return 0;
    return 1;
}

/* Literal segments of [a-z0-9._-], at most two {name} of [a-z_] as whole segments. */
static int template_valid(const char *t)
{
    int params = 0;
    if (*t != '/')
        return 0;
    for (const char *c = t; *c; c++) {
        if (*c == '{') {
            if (c[-1] != '/' || params++ == 2)
                return 0;
            const char *close = strchr(c, '}');
            if (!close || close == c + 1 || (close[1] && close[1] != '/'))
                return 0;
            for (c++; c < close; c++)
                if (!(islower((unsigned char)*c) || *c == '_'))
                    return 0;
        } else if (!(islower((unsigned char)*c) || isdigit((unsigned char)*c) ||
                     strchr("/._-", *c))) {
            return 0;
        }
    }
    return 1;
}

static int bad(char **err, const struct rhema_route *rt, const char *what)
{
    return rhema_set_error(err, RHEMA_EINVAL, "route %s (method bit %u): %s",
                           rt->path ? rt->path : "(no path)", rt->method, what);
}

int rhema_routes_check(const struct rhema_route *const *tables, char **err)
{
    for (const struct rhema_route *const *tab = tables; *tab; tab++) {
        for (const struct rhema_route *rt = *tab; rt->path || rt->handler; rt++) {
            unsigned m = rt->method;
            if (!rt->path || !template_valid(rt->path))
                return bad(err, rt, "the path template is missing or malformed");
            if (m != RHEMA_M_GET && m != RHEMA_M_PUT && m != RHEMA_M_POST && m != RHEMA_M_DELETE &&
                m != RHEMA_M_PATCH)
                return bad(err, rt, "expected exactly one method");
            if (!rt->handler)
                return bad(err, rt, "no handler");
            if (!permission_valid(rt->permission))
                return bad(err, rt, "no permission \"<area>:<verb>\"");
            if (rt->effect != RHEMA_READS && rt->effect != RHEMA_WRITES &&
                rt->effect != RHEMA_WRITES_STORAGE)
                return bad(err, rt, "no effect (RHEMA_READS, RHEMA_WRITES, RHEMA_WRITES_STORAGE)");
            if ((m == RHEMA_M_PUT || m == RHEMA_M_DELETE || m == RHEMA_M_PATCH) &&
                rt->effect == RHEMA_READS)
                return bad(err, rt, "a PUT, PATCH or DELETE must be declared as a write");
            if (m == RHEMA_M_GET && rt->effect != RHEMA_READS)
                return bad(err, rt, "a GET must not write");
            for (const struct rhema_route *const *t2 = tables; t2 <= tab; t2++)
                for (const struct rhema_route *o = *t2; o->path && o != rt; o++)
                    if (o->method == m && strcmp(o->path, rt->path) == 0)
                        return bad(err, rt, "declared twice");
        }
    }
    return 0;
}
