/*
 * Unit tests for the HTTP helpers of core/api/http.c, without a server: the
 * request is made with evhttp_request_new() (no connection) and answered
 * by the real helpers; evhttp_send_reply() is wrapped at link time
 * (-Wl,--wrap) to keep the status, the headers and the body before
 * libevent frees a request that has no connection.
 *
 * Covered: If-Match / If-None-Match (conditional.c: rhema_etags_parse,
 * rhema_preconditions, rhema_reply_record), path ids
 * (rhema_path_id), methods and their Allow lists (rhema_method), error
 * replies with bytes that are not UTF-8 and with messages longer than the
 * buffer (rhema_reply_error), and rhema_utf8_copy() itself.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <jansson.h>

#include "api/conditional.h"
#include "api/http.h"
#include "util.h"

/* ---- the reply, as the wrapped evhttp_send_reply saw it ---- */

static struct {
    int calls;
    int status;
    char allow[128];
    char content_type[64];
    char content_length[24]; /* the header, when the reply sets it (HEAD) */
    char *body;
    size_t len;
} sent;

void __real_evhttp_send_reply(struct evhttp_request *req, int code, const char *reason,
                              struct evbuffer *databuf);
void __wrap_evhttp_send_reply(struct evhttp_request *req, int code, const char *reason,
                              struct evbuffer *databuf);
void __wrap_evhttp_send_reply(struct evhttp_request *req, int code, const char *reason,
                              struct evbuffer *databuf)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    const char *v;

    sent.calls++;
    sent.status = code;
    v = evhttp_find_header(h, "Allow");
    snprintf(sent.allow, sizeof sent.allow, "%s", v ? v : "");
    v = evhttp_find_header(h, "Content-Type");
    snprintf(sent.content_type, sizeof sent.content_type, "%s", v ? v : "");
    v = evhttp_find_header(h, "Content-Length");
    snprintf(sent.content_length, sizeof sent.content_length, "%s", v ? v : "");
    free(sent.body);
    sent.len = databuf ? evbuffer_get_length(databuf) : 0;
    sent.body = malloc(sent.len + 1);
    assert_non_null(sent.body);
    if (sent.len)
        evbuffer_copyout(databuf, sent.body, sent.len);
    sent.body[sent.len] = '\0';
    __real_evhttp_send_reply(req, code, reason, databuf); /* frees req: no connection */
}

/* ---- a request without a server ---- */

static struct rhema_config cfg;
static struct rhema_server srv;
static struct rhema_worker worker;

static int setup(void **state)
{
    char *err = NULL;

    (void)state;
    if (rhema_config_load(&cfg, NULL, NULL, 0, NULL, &err) != 0) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    srv.cfg = &cfg;
    atomic_store(&srv.log_access, 0);
    worker.srv = &srv;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    rhema_config_release(&cfg);
    free(sent.body);
    sent.body = NULL;
    return 0;
}

/*
 * A request with `method` on `path`; the rest of the arguments are header
 * name/value pairs, ended by NULL.
 */
static void req_new(struct rhema_req *r, enum evhttp_cmd_type method, const char *path, ...)
{
    va_list ap;
    const char *name;

    memset(r, 0, sizeof *r);
    r->req = evhttp_request_new(NULL, NULL);
    assert_non_null(r->req);
    r->worker = &worker;
    r->method = method;
    r->path = path;
    TAILQ_INIT(&r->query);
    snprintf(r->request_id, sizeof r->request_id, "test-1");
    va_start(ap, path);
    while ((name = va_arg(ap, const char *)) != NULL)
        evhttp_add_header(evhttp_request_get_input_headers(r->req), name,
                          va_arg(ap, const char *));
    va_end(ap);
    sent.calls = 0;
    sent.status = 0;
}

/* The request was not answered: free it as libevent would have. */
static void req_unanswered(struct rhema_req *r)
{
    assert_int_equal(sent.calls, 0);
    assert_int_equal(r->status, 0);
    evhttp_request_free(r->req);
}

/* The reply is one JSON error with this status and code; returns its message (static). */
static const char *sent_error(int status, const char *code)
{
    static char message[4096];
    json_error_t jerr;
    json_t *v, *e;

    assert_int_equal(sent.calls, 1);
    assert_int_equal(sent.status, status);
    assert_string_equal(sent.content_type, "application/json");
    v = json_loadb(sent.body, sent.len, 0, &jerr);
    if (!v)
        fail_msg("the error body is not JSON (%s): %s", jerr.text, sent.body);
    e = json_object_get(v, "error");
    assert_non_null(e);
    assert_string_equal(json_string_value(json_object_get(e, "code")), code);
    assert_non_null(json_string_value(json_object_get(e, "message")));
    snprintf(message, sizeof message, "%s", json_string_value(json_object_get(e, "message")));
    json_decref(v);
    return message;
}

/* ---- If-Match / If-None-Match (conditional.c) ---- */

/* The fake resource the slow path reads: absent when 0. */
static uint64_t current_version;
static int current_reads;

static int fake_current(struct rhema_req *r, uint64_t *version, char err[RHEMA_ERRMSG_MAX])
{
    (void)r;
    current_reads++;
    if (!current_version) {
        snprintf(err, RHEMA_ERRMSG_MAX, "x not found");
        return RHEMA_ENOTFOUND;
    }
    *version = current_version;
    return 0;
}

/* Preconditions of `method` against a resource at version cur (0: absent). */
static int run_preconditions(enum evhttp_cmd_type method, const char *im, const char *inm,
                             uint64_t cur, uint64_t *got)
{
    struct rhema_req r;
    if (im && inm)
        req_new(&r, method, "/v1/x", "If-Match", im, "If-None-Match", inm, NULL);
    else if (im)
        req_new(&r, method, "/v1/x", "If-Match", im, NULL);
    else if (inm)
        req_new(&r, method, "/v1/x", "If-None-Match", inm, NULL);
    else
        req_new(&r, method, "/v1/x", NULL);
    current_version = cur;
    current_reads = 0;
    *got = 12345;
    int rc = rhema_preconditions(&r, fake_current, got);
    if (rc == 0)
        req_unanswered(&r);
    return rc;
}

/* The write goes on with *expected == want, after `reads` reads of the resource. */
static void expect_write(enum evhttp_cmd_type method, const char *im, const char *inm,
                         uint64_t cur, uint64_t want, int reads)
{
    uint64_t got;
    assert_int_equal(run_preconditions(method, im, inm, cur, &got), 0);
    assert_true(got == want);
    assert_int_equal(current_reads, reads);
}

static const char *expect_precond_refused(enum evhttp_cmd_type method, const char *im, const char *inm,
                                  uint64_t cur, int status, const char *code)
{
    uint64_t got;
    assert_int_equal(run_preconditions(method, im, inm, cur, &got), -1);
    return sent_error(status, code);
}

static void test_etags_parse(void **state)
{
    struct rhema_etags t;
    const char *why = NULL;
    (void)state;
    assert_int_equal(rhema_etags_parse(" * ", &t, &why), 0);
    assert_true(t.any && t.n == 0);
    assert_int_equal(rhema_etags_parse("\"1\", W/\"2\" ,,\"abc\", \"007\", \"0\", \"1\"", &t, &why), 0);
    assert_int_equal(t.n, 2); /* "abc", "007", "0" name no version; the second "1" is the first */
    assert_true(rhema_etags_match(&t, 1, 0) && rhema_etags_match(&t, 1, 1));
    assert_false(rhema_etags_match(&t, 2, 0)); /* strong comparison: W/"2" never matches */
    assert_true(rhema_etags_match(&t, 2, 1));  /* weak comparison: it does */
    assert_false(rhema_etags_match(&t, 3, 1));
    assert_int_equal(rhema_etags_parse("\"18446744073709551613\"", &t, &why), 0);
    assert_true(t.n == 1 && t.version[0] == UINT64_C(18446744073709551613));
    /* the sentinels and an overflow are well-formed tags that name no version */
    assert_int_equal(rhema_etags_parse("\"18446744073709551614\", \"99999999999999999999\"", &t, &why), 0);
    assert_int_equal(t.n, 0);
    static const char *const bad[] = {"", " ", ",", "3", "\"3", "W/3", "w/\"3\"", "\"3\" \"4\"",
                                      "\"a b\"", "*, \"3\"", "\"3\";", "\"3\xff"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        why = NULL;
        if (rhema_etags_parse(bad[i], &t, &why) != -1)
            fail_msg("'%s' was accepted", bad[i]);
        assert_non_null(why);
    }
    char many[512] = "";
    for (int i = 1; i <= RHEMA_ETAGS_MAX + 1; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many), "%s\"%d\"", i > 1 ? "," : "", i);
    assert_int_equal(rhema_etags_parse(many, &t, &why), -1);
    assert_string_equal(why, "more than 16 entity tags");
}

static void test_preconditions(void **state)
{
    (void)state;
    /* what the store checks itself: no read */
    expect_write(EVHTTP_REQ_PUT, NULL, NULL, 3, RHEMA_VERSION_ANY, 0);
    expect_write(EVHTTP_REQ_PUT, "\"3\"", NULL, 3, 3, 0);
    expect_write(EVHTTP_REQ_PUT, "\"abc\", \"3\", W/\"4\"", NULL, 3, 3, 0);
    expect_write(EVHTTP_REQ_PUT, "*", NULL, 3, RHEMA_VERSION_PRESENT, 0);
    expect_write(EVHTTP_REQ_PUT, NULL, "*", 3, RHEMA_VERSION_ABSENT, 0);
    /* a tag that names no version can never match: 412 without a read */
    assert_string_equal(expect_precond_refused(EVHTTP_REQ_PUT, "\"abc\"", NULL, 3, 412,
                                       "precondition_failed"),
                        "If-Match: no entity tag matches the current one");
    expect_precond_refused(EVHTTP_REQ_PUT, "W/\"3\"", NULL, 3, 412, "precondition_failed");
    assert_int_equal(current_reads, 0);
    /* several versions: read once, pin the write to the version read */
    expect_write(EVHTTP_REQ_PUT, "\"2\", \"3\"", NULL, 3, 3, 1);
    expect_precond_refused(EVHTTP_REQ_PUT, "\"2\", \"4\"", NULL, 3, 412, "precondition_failed");
    expect_precond_refused(EVHTTP_REQ_PUT, "\"2\", \"4\"", NULL, 0, 412, "precondition_failed");
    /* If-None-Match with tags on a write (weak comparison) */
    expect_write(EVHTTP_REQ_PUT, NULL, "\"2\"", 3, 3, 1);
    expect_write(EVHTTP_REQ_PUT, NULL, "\"2\"", 0, RHEMA_VERSION_ABSENT, 1);
    expect_precond_refused(EVHTTP_REQ_PUT, NULL, "\"2\", W/\"3\"", 3, 412, "precondition_failed");
    /* If-Match where the method does not create: read, so that absent is 412 */
    expect_write(EVHTTP_REQ_DELETE, "*", NULL, 3, 3, 1);
    expect_write(EVHTTP_REQ_DELETE, "\"3\"", NULL, 3, 3, 1);
    expect_precond_refused(EVHTTP_REQ_DELETE, "*", NULL, 0, 412, "precondition_failed");
    expect_precond_refused(EVHTTP_REQ_POST, "\"3\"", NULL, 0, 412, "precondition_failed");
    /* If-None-Match: * where the method does not create */
    expect_precond_refused(EVHTTP_REQ_DELETE, NULL, "*", 3, 412, "precondition_failed");
    assert_string_equal(expect_precond_refused(EVHTTP_REQ_DELETE, NULL, "*", 0, 404, "not_found"),
                        "x not found");
    expect_precond_refused(EVHTTP_REQ_POST, NULL, "*", 3, 412, "precondition_failed");
    /* both: If-Match first, then If-None-Match (RFC 9110 §13.2.2) */
    expect_write(EVHTTP_REQ_PUT, "\"3\"", "\"2\"", 3, 3, 1);
    expect_precond_refused(EVHTTP_REQ_PUT, "\"3\"", "\"3\"", 3, 412, "precondition_failed");
    assert_string_equal(expect_precond_refused(EVHTTP_REQ_PUT, "*", "*", 0, 412, "precondition_failed"),
                        "If-Match: the resource does not exist");
    assert_string_equal(expect_precond_refused(EVHTTP_REQ_PUT, "*", "*", 3, 412, "precondition_failed"),
                        "If-None-Match: *: the resource exists");
    /* malformed: 400, nothing read */
    assert_string_equal(expect_precond_refused(EVHTTP_REQ_PUT, "3", NULL, 3, 400, "bad_header"),
                        "If-Match: expected \"*\" or entity tags such as \"3\" or W/\"3\", got '3'");
    expect_precond_refused(EVHTTP_REQ_PUT, NULL, "\"3", 3, 400, "bad_header");
    expect_precond_refused(EVHTTP_REQ_PUT, "\"3\"", "nope", 3, 400, "bad_header");
    assert_int_equal(current_reads, 0);
    /* the header is quoted back: a byte that is not UTF-8 still gives JSON */
    assert_string_equal(expect_precond_refused(EVHTTP_REQ_PUT, "3\xff", NULL, 3, 400, "bad_header"),
                        "If-Match: expected \"*\" or entity tags such as \"3\" or W/\"3\", got '3\xEF\xBF\xBD'");
}

/* A GET of a record at version 3 with these headers: the status sent. */
static int get_record(const char *im, const char *inm)
{
    struct rhema_req r;
    struct rhema_record rec = {0};
    if (im && inm)
        req_new(&r, EVHTTP_REQ_GET, "/v1/x", "If-Match", im, "If-None-Match", inm, NULL);
    else if (im)
        req_new(&r, EVHTTP_REQ_GET, "/v1/x", "If-Match", im, NULL);
    else if (inm)
        req_new(&r, EVHTTP_REQ_GET, "/v1/x", "If-None-Match", inm, NULL);
    else
        req_new(&r, EVHTTP_REQ_GET, "/v1/x", NULL);
    rec.json = strdup("{\"a\":1}");
    rec.len = strlen(rec.json);
    rec.version = 3;
    rhema_reply_record(&r, 200, &rec);
    assert_null(rec.json); /* released */
    assert_int_equal(sent.calls, 1);
    return sent.status;
}

static void test_reply_record(void **state)
{
    (void)state;
    assert_int_equal(get_record(NULL, NULL), 200);
    assert_int_equal(sent.len, 7);
    assert_int_equal(get_record(NULL, "\"3\""), 304);
    assert_int_equal(sent.len, 0);
    assert_int_equal(get_record(NULL, "W/\"3\""), 304);
    assert_int_equal(get_record(NULL, "\"1\", \"3\""), 304);
    assert_int_equal(get_record(NULL, "*"), 304);
    assert_int_equal(get_record(NULL, "\"2\""), 200);
    assert_int_equal(get_record("\"3\"", NULL), 200);
    assert_int_equal(get_record("\"2\"", NULL), 412);
    assert_int_equal(get_record("W/\"3\"", NULL), 412);
    assert_int_equal(get_record("\"2\"", "\"3\""), 412); /* If-Match first */
    assert_int_equal(get_record("\"3\"", "\"3\""), 304);
    assert_int_equal(get_record(NULL, "3"), 400);
}

/* ---- path ids ---- */

static void test_path_id(void **state)
{
    struct rhema_req r;
    char id[RHEMA_ID_MAX + 2], long_id[RHEMA_ID_MAX + 2];
    const char *tail = NULL;
    static const char *const bad[] = { "", "/x", "a b", "a%2Fb", "caf\xc3\xa9", "x\xff/y", "a?b" };

    (void)state;
    req_new(&r, EVHTTP_REQ_GET, "/v1/sessions/abc/messages", NULL);
    assert_int_equal(rhema_path_id(&r, "abc/messages", id, &tail, "id"), 0);
    assert_string_equal(id, "abc");
    assert_string_equal(tail, "/messages");
    assert_int_equal(rhema_path_id(&r, "A-z_0.9:x", id, &tail, "id"), 0);
    assert_string_equal(id, "A-z_0.9:x");
    assert_string_equal(tail, "");
    assert_int_equal(rhema_path_id(&r, "n1/", id, &tail, "node"), 0);
    assert_string_equal(id, "n1");
    assert_string_equal(tail, "/");
    memset(long_id, 'a', RHEMA_ID_MAX);
    long_id[RHEMA_ID_MAX] = '\0';
    assert_int_equal(rhema_path_id(&r, long_id, id, &tail, "id"), 0);
    assert_string_equal(id, long_id);
    req_unanswered(&r);

    /* 129 characters: too long */
    long_id[RHEMA_ID_MAX] = 'a';
    long_id[RHEMA_ID_MAX + 1] = '\0';
    req_new(&r, EVHTTP_REQ_GET, "/v1/agents/x", NULL);
    tail = NULL;
    assert_int_equal(rhema_path_id(&r, long_id, id, &tail, "id"), -1);
    assert_null(tail);
    assert_string_equal(sent_error(400, "invalid_field"),
                        "path id: expected 1-128 characters [A-Za-z0-9._:-]");
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        req_new(&r, EVHTTP_REQ_GET, "/v1/consensus/x", NULL);
        assert_int_equal(rhema_path_id(&r, bad[i], id, &tail, "node"), -1);
        assert_string_equal(sent_error(400, "invalid_field"),
                            "path node: expected 1-128 characters [A-Za-z0-9._:-]");
    }
}

/* ---- methods ---- */

static void expect_method(enum evhttp_cmd_type m, unsigned allowed, unsigned want)
{
    struct rhema_req r;

    req_new(&r, m, "/v1/x", NULL);
    assert_int_equal(rhema_method(&r, allowed), want);
    req_unanswered(&r);
}

/* A refused method: the reply's status and Allow list. */
static void expect_refused(enum evhttp_cmd_type m, unsigned allowed, int status, const char *allow)
{
    struct rhema_req r;

    req_new(&r, m, "/v1/things/x", NULL);
    assert_int_equal(rhema_method(&r, allowed), 0);
    assert_int_equal(sent.calls, 1);
    assert_int_equal(sent.status, status);
    assert_string_equal(sent.allow, allow);
    if (m == EVHTTP_REQ_HEAD) { /* GET's headers and length, no body (issue 17, item 1) */
        assert_int_equal(sent.len, 0);
        assert_true(atoi(sent.content_length) > 0);
        assert_string_equal(sent.content_type, "application/json");
    } else if (status == 405) {
        char want[256];

        snprintf(want, sizeof want, "this method is not allowed on /v1/things/x (allowed: %s)",
                 allow);
        assert_string_equal(sent_error(405, "method_not_allowed"), want);
    } else {
        assert_int_equal(sent.len, 0);
    }
}

static void test_method(void **state)
{
    const unsigned all = RHEMA_M_GET | RHEMA_M_PUT | RHEMA_M_POST | RHEMA_M_DELETE;

    (void)state;
    expect_method(EVHTTP_REQ_GET, RHEMA_M_GET, RHEMA_M_GET);
    expect_method(EVHTTP_REQ_HEAD, RHEMA_M_GET, RHEMA_M_GET); /* GET answers HEAD */
    expect_method(EVHTTP_REQ_PUT, RHEMA_M_GET | RHEMA_M_PUT, RHEMA_M_PUT);
    expect_method(EVHTTP_REQ_POST, RHEMA_M_POST, RHEMA_M_POST);
    expect_method(EVHTTP_REQ_DELETE, all, RHEMA_M_DELETE);

    expect_refused(EVHTTP_REQ_POST, RHEMA_M_GET | RHEMA_M_PUT, 405, "GET, PUT, OPTIONS");
    expect_refused(EVHTTP_REQ_HEAD, RHEMA_M_POST, 405, "POST, OPTIONS");
    expect_refused(EVHTTP_REQ_PATCH, all, 405, "GET, PUT, POST, DELETE, OPTIONS");
    expect_refused(EVHTTP_REQ_GET, RHEMA_M_DELETE | RHEMA_M_PUT, 405, "PUT, DELETE, OPTIONS");
    expect_refused(EVHTTP_REQ_DELETE, 0, 405, "OPTIONS");
    /* OPTIONS is answered for every resource, with the same list */
    expect_refused(EVHTTP_REQ_OPTIONS, RHEMA_M_GET | RHEMA_M_PUT | RHEMA_M_DELETE, 204,
                   "GET, PUT, DELETE, OPTIONS");
    expect_refused(EVHTTP_REQ_OPTIONS, all, 204, "GET, PUT, POST, DELETE, OPTIONS");
}

/* ---- error replies ---- */

/* Is s (n bytes) well-formed UTF-8?  An independent check, by the code points. */
static int utf8_ok(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;

    for (size_t i = 0; i < n;) {
        unsigned c = p[i], need;
        uint32_t cp;

        if (c < 0x80) {
            i++;
            continue;
        }
        if ((c & 0xE0) == 0xC0)
            need = 1, cp = c & 0x1F;
        else if ((c & 0xF0) == 0xE0)
            need = 2, cp = c & 0x0F;
        else if ((c & 0xF8) == 0xF0)
            need = 3, cp = c & 0x07;
        else
            return 0;
        for (unsigned k = 1; k <= need; k++) {
            if (i + k >= n || (p[i + k] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if ((need == 1 && cp < 0x80) || (need == 2 && cp < 0x800) ||
            (need == 3 && cp < 0x10000) || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += need + 1;
    }
    return 1;
}

static void test_error_bad_utf8(void **state)
{
    struct rhema_req r;

    (void)state;
    /* GET /v1/nosuch%FF: the decoded path holds 0xFF */
    req_new(&r, EVHTTP_REQ_GET, "/v1/nosuch\xff", NULL);
    rhema_reply_error(&r, 404, "not_found", "no route for %s", r.path);
    assert_int_equal(r.status, 404);
    assert_string_equal(sent_error(404, "not_found"), "no route for /v1/nosuch\xEF\xBF\xBD");

    /* overlong, surrogate, out of range, stray continuation, cut at the end */
    req_new(&r, EVHTTP_REQ_GET, "/", NULL);
    rhema_reply_error(&r, 400, "invalid_field", "[%s]", "\xC0\xAF|\xED\xA0\x80|\xF4\x90\x80\x80|\x80|\xE2\x82");
    assert_string_equal(sent_error(400, "invalid_field"),
                        "[\xEF\xBF\xBD\xEF\xBF\xBD|\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD|"
                        "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD|\xEF\xBF\xBD|"
                        "\xEF\xBF\xBD\xEF\xBF\xBD]");

    /* well-formed text goes through untouched, 4-byte sequences included */
    req_new(&r, EVHTTP_REQ_GET, "/", NULL);
    rhema_reply_error(&r, 409, "conflict", "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80");
    assert_string_equal(sent_error(409, "conflict"), "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80");
}

/* A message longer than the buffer is cut between characters, whatever the alignment. */
static void test_error_long_message(void **state)
{
    static const char *const units[] = { "a", "\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80",
                                         "\xff" };
    char text[8192];

    (void)state;
    for (size_t u = 0; u < sizeof units / sizeof units[0]; u++) {
        for (size_t pad = 0; pad < 4; pad++) {
            struct rhema_req r;
            const char *msg;
            size_t len = 0, ulen = strlen(units[u]), mlen;

            memset(text, 'p', pad);
            len = pad;
            while (len + ulen < 3000) {
                memcpy(text + len, units[u], ulen);
                len += ulen;
            }
            text[len] = '\0';
            req_new(&r, EVHTTP_REQ_GET, "/", NULL);
            rhema_reply_error(&r, 400, "invalid_field", "%s", text);
            msg = sent_error(400, "invalid_field");
            mlen = strlen(msg);
            assert_true(utf8_ok(msg, mlen));
            assert_true(mlen <= 1023);
            assert_true(mlen > 1023 - 4); /* cut as late as a whole character allows */
            if (units[u][0] != '\xff') {
                /* a prefix of what was sent */
                assert_memory_equal(msg, text, mlen);
            } else {
                /* each stray byte one U+FFFD: 1023 bytes hold 341 of them */
                assert_int_equal(mlen, pad + (1023 - pad) / 3 * 3);
            }
        }
    }
}

/* A reply whose JSON could not be built is a 500, and not called a lack of memory. */
static void test_reply_jsonv_null(void **state)
{
    struct rhema_req r;

    (void)state;
    req_new(&r, EVHTTP_REQ_GET, "/", NULL);
    rhema_reply_jsonv(&r, 200, json_pack("{s:s}", "k", "\xff"));
    assert_string_equal(sent_error(500, "internal"), "could not build the reply");
}

/* ---- rhema_utf8_copy ---- */

static void test_utf8_copy(void **state)
{
    char out[16];

    (void)state;
    assert_int_equal(rhema_utf8_copy(out, sizeof out, "abc", 3, 0), 3);
    assert_string_equal(out, "abc");
    /* a sequence cut by the end of the input: replaced, or dropped when the input was cut */
    assert_int_equal(rhema_utf8_copy(out, sizeof out, "ab\xE2\x82", 4, 0), 8);
    assert_string_equal(out, "ab\xEF\xBF\xBD\xEF\xBF\xBD");
    assert_int_equal(rhema_utf8_copy(out, sizeof out, "ab\xE2\x82", 4, 1), 2);
    assert_string_equal(out, "ab");
    /* cut: only a well-formed prefix is dropped, a bad byte before it is still replaced */
    assert_int_equal(rhema_utf8_copy(out, sizeof out, "a\xff\xF0\x9F", 4, 1), 4);
    assert_string_equal(out, "a\xEF\xBF\xBD");
    /* the output never ends inside a character */
    assert_int_equal(rhema_utf8_copy(out, 6, "ab\xE2\x82\xAC", 5, 0), 5);
    assert_int_equal(rhema_utf8_copy(out, 5, "ab\xE2\x82\xAC", 5, 0), 2);
    assert_string_equal(out, "ab");
    assert_int_equal(rhema_utf8_copy(out, 5, "a\xff\xff", 3, 0), 4);
    assert_string_equal(out, "a\xEF\xBF\xBD");
    assert_int_equal(rhema_utf8_copy(out, 1, "abc", 3, 0), 0);
    assert_string_equal(out, "");
    /* the edges of RFC 3629's table */
    assert_int_equal(rhema_utf8_copy(out, sizeof out, "\xC2\x80\xDF\xBF", 4, 0), 4);
    assert_int_equal(rhema_utf8_copy(out, sizeof out, "\xE0\xA0\x80", 3, 0), 3);
    assert_int_equal(rhema_utf8_copy(out, sizeof out, "\xE0\x9F\xBF", 3, 0), 9);  /* overlong */
    assert_int_equal(rhema_utf8_copy(out, sizeof out, "\xED\x9F\xBF", 3, 0), 3);  /* U+D7FF */
    assert_int_equal(rhema_utf8_copy(out, sizeof out, "\xEE\x80\x80", 3, 0), 3);  /* U+E000 */
    assert_int_equal(rhema_utf8_copy(out, sizeof out, "\xF4\x8F\xBF\xBF", 4, 0), 4);
    assert_int_equal(rhema_utf8_copy(out, sizeof out, "\xF5\x80", 2, 0), 6);
    assert_int_equal(rhema_utf8_copy(out, sizeof out, "\xC1\xBF", 2, 0), 6);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_etags_parse),
        cmocka_unit_test(test_preconditions),
        cmocka_unit_test(test_reply_record),
        cmocka_unit_test(test_path_id),
        cmocka_unit_test(test_method),
        cmocka_unit_test(test_error_bad_utf8),
        cmocka_unit_test(test_error_long_message),
        cmocka_unit_test(test_reply_jsonv_null),
        cmocka_unit_test(test_utf8_copy),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
