/*
 * conditional -- If-Match / If-None-Match as RFC 9110 §13 says, for every
 * API module (see conditional.h).
 */
#include "rhema_build.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conditional.h"
#include "util.h"

static const char *skip_ows(const char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    return s;
}

/* The version an opaque tag names: digits with no leading zero, 1 .. PRESENT-1; else 0. */
static uint64_t tag_version(const char *b, size_t len)
{
    char buf[24];
    if (len == 0 || len > 20 || b[0] == '0')
        return 0;
    for (size_t i = 0; i < len; i++)
        if (b[i] < '0' || b[i] > '9')
            return 0;
    memcpy(buf, b, len);
    buf[len] = '\0';
    errno = 0;
    unsigned long long v = strtoull(buf, NULL, 10);
    if (errno || v >= RHEMA_VERSION_PRESENT) /* both sentinels are reserved */
        return 0;
    return (uint64_t)v;
}

int rhema_etags_parse(const char *s, struct rhema_etags *out, const char **why)
{
    size_t tags = 0;
    memset(out, 0, sizeof *out);
    s = skip_ows(s);
    if (*s == '*') {
        if (*skip_ows(s + 1)) {
            *why = "'*' must stand alone";
            return -1;
        }
        out->any = 1;
        return 0;
    }
    for (;;) {
        s = skip_ows(s);
        if (*s == ',') { /* empty list elements are allowed (RFC 9110 §5.6.1) */
            s++;
            continue;
        }
        if (!*s)
            break;
        int weak = 0;
        if (s[0] == 'W' && s[1] == '/') {
            weak = 1;
            s += 2;
        }
        if (*s != '"') {
            *why = "expected \"*\" or entity tags such as \"3\" or W/\"3\"";
            return -1;
        }
        const char *b = ++s;
        while (*s && *s != '"') {
            unsigned char c = (unsigned char)*s;
            if (c < 0x21 || c == 0x7f) {
                *why = "an entity tag holds a space or a control character";
                return -1;
            }
            s++;
        }
        if (*s != '"') {
            *why = "an entity tag has no closing quote";
            return -1;
        }
        uint64_t v = tag_version(b, (size_t)(s - b));
        s = skip_ows(s + 1);
        if (*s && *s != ',') {
            *why = "entity tags must be separated by commas";
            return -1;
        }
        tags++;
        if (!v) /* well-formed, but no record has it: never matches */
            continue;
        size_t i;
        for (i = 0; i < out->n; i++)
            if (out->version[i] == v && out->weak[i] == weak)
                break;
        if (i < out->n)
            continue;
        if (out->n == RHEMA_ETAGS_MAX) {
            *why = "more than 16 entity tags";
            return -1;
        }
        out->version[out->n] = v;
        out->weak[out->n++] = (unsigned char)weak;
    }
    if (!tags) {
        *why = "no entity tag";
        return -1;
    }
    return 0;
}

int rhema_etags_match(const struct rhema_etags *t, uint64_t version, int weak)
{
    if (t->any)
        return 1;
    for (size_t i = 0; i < t->n; i++)
        if (t->version[i] == version && (weak || !t->weak[i]))
            return 1;
    return 0;
}

/* The one strong version an If-Match list can match, 0 if none, or n>1. */
static size_t strong_versions(const struct rhema_etags *t, uint64_t *only)
{
    size_t n = 0;
    for (size_t i = 0; i < t->n; i++)
        if (!t->weak[i]) {
            *only = t->version[i];
            n++;
        }
    return n;
}

/* Parse one header into t; 1 when present, 0 when absent, -1 after a 400. */
static int header(struct rhema_req *r, const char *name, struct rhema_etags *t)
{
    const char *v = rhema_req_header(r, name), *why = NULL;
    if (!v)
        return 0;
    if (rhema_etags_parse(v, t, &why) != 0) {
        rhema_reply_error(r, 400, "bad_header", "%s: %s, got '%s'", name, why, v);
        return -1;
    }
    return 1;
}

static int failed(struct rhema_req *r, const char *what)
{
    rhema_reply_error(r, 412, "precondition_failed", "%s", what);
    return -1;
}

int rhema_preconditions(struct rhema_req *r, rhema_current_fn current, uint64_t *expected)
{
    struct rhema_etags im, inm;
    int has_im, has_inm, creates = r->method == EVHTTP_REQ_PUT;
    uint64_t only = 0;
    size_t strong = 0;
    *expected = RHEMA_VERSION_ANY;
    if ((has_im = header(r, "If-Match", &im)) < 0 ||
        (has_inm = header(r, "If-None-Match", &inm)) < 0)
        return -1;
    if (has_im && !im.any && (strong = strong_versions(&im, &only)) == 0)
        return failed(r, "If-Match: no entity tag matches the current one");

    /*
     * What the store checks in its own write, with no read here.  A
     * DELETE / POST / PATCH of a missing resource is 404 in the stores
     * whatever If-Match says; RFC 9110 lets If-Match: * on a missing
     * resource be 412 and so it is, everywhere: those methods read first.
     */
    if (!has_inm && (creates || !has_im)) {
        if (has_im && im.any) {
            *expected = RHEMA_VERSION_PRESENT;
            return 0;
        }
        if (!has_im || strong == 1) {
            *expected = has_im ? only : RHEMA_VERSION_ANY;
            return 0;
        }
    } else if (!has_im && inm.any && creates) {
        *expected = RHEMA_VERSION_ABSENT;
        return 0;
    }

    /*
     * The rest needs the current version: read it once, evaluate, and pin
     * the write to what was read (absent or that version), so that a write
     * in between fails in the store as the common cases do.
     */
    char err[RHEMA_ERRMSG_MAX];
    uint64_t cur = 0;
    int rc = current(r, &cur, err);
    if (rc == RHEMA_ENOTFOUND)
        cur = 0;
    else if (rc) {
        rhema_reply_store_error(r, rc, err);
        return -1;
    }
    if (has_im && (!cur || !rhema_etags_match(&im, cur, 0)))
        return failed(r, cur ? "If-Match: no entity tag matches the current one"
                             : "If-Match: the resource does not exist");
    if (has_inm && (inm.any ? cur != 0 : cur && rhema_etags_match(&inm, cur, 1)))
        return failed(r, inm.any ? "If-None-Match: *: the resource exists"
                                 : "If-None-Match: the current entity tag is listed");
    if (!cur && !creates) {
        rhema_reply_store_error(r, RHEMA_ENOTFOUND, err);
        return -1;
    }
    *expected = cur ? cur : RHEMA_VERSION_ABSENT;
    return 0;
}

void rhema_reply_record(struct rhema_req *r, int status, struct rhema_record *rec)
{
    if (r->method == EVHTTP_REQ_GET || r->method == EVHTTP_REQ_HEAD) {
        struct rhema_etags im, inm;
        int has_im, has_inm;
        if ((has_im = header(r, "If-Match", &im)) < 0 ||
            (has_inm = header(r, "If-None-Match", &inm)) < 0)
            goto out;
        if (has_im && !rhema_etags_match(&im, rec->version, 0)) {
            failed(r, "If-Match: no entity tag matches the current one");
            goto out;
        }
        if (has_inm && rhema_etags_match(&inm, rec->version, 1)) {
            rhema_header_etag(r, rec->version);
            rhema_reply(r, 304, NULL, NULL, 0);
            goto out;
        }
    }
    rhema_header_etag(r, rec->version);
    rhema_reply_json(r, status, rec->json, rec->len);
out:
    rhema_record_release(rec);
}
