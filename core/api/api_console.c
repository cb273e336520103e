/*
 * api_console -- GET /v1/stats/history and the console's files under /ui/
 * (api_console.h).
 */
#include "rhema_build.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api_console.h"
#include "log.h"
#include "metrics/history.h"
#include "query.h"
#include "rhema_paths.h" /* RHEMA_UIDIR, RHEMA_SRC_UIDIR: made by make */
#include "util.h"

#define CONSOLE_FILE_MAX (4u << 20) /* a console file larger than this is not served */

/* ---- GET /v1/stats/history ---- */

/*
 * series: a comma-separated list of series names, each known, none twice;
 * absent: every series.  0 and *mask, or -1 after replying 400.
 */
static int series_mask(struct rhema_req *r, uint64_t *mask)
{
    const char *s = evhttp_find_header(&r->query, "series");
    *mask = 0;
    if (!s) {
        *mask = (UINT64_C(1) << RHEMA_HISTORY_SERIES) - 1;
        return 0;
    }
    for (;;) {
        size_t n = strcspn(s, ",");
        int i = rhema_history_series_find(s, n);
        if (n == 0) {
            rhema_reply_error(r, 400, "invalid_field",
                              "parameter 'series': an empty name (expected names separated by "
                              "commas)");
            return -1;
        }
        if (i < 0) {
            rhema_reply_error(r, 400, "invalid_field",
                              "parameter 'series': unknown series '%.*s' (GET "
                              "/v1/stats/history without series lists them)",
                              (int)(n > 64 ? 64 : n), s);
            return -1;
        }
        if (*mask & (UINT64_C(1) << i)) {
            rhema_reply_error(r, 400, "invalid_field", "parameter 'series': '%.*s' given twice",
                              (int)n, s);
            return -1;
        }
        *mask |= UINT64_C(1) << i;
        if (!s[n])
            return 0;
        s += n + 1;
    }
}

/* since: milliseconds since the epoch, or an RFC 3339 time.  0 and *ms, or -1 after a 400. */
static int since_ms(struct rhema_req *r, uint64_t *ms)
{
    const char *s = evhttp_find_header(&r->query, "since");
    char *end;
    *ms = 0;
    if (!s)
        return 0;
    if (*s >= '0' && *s <= '9' && !strpbrk(s, "-:T")) {
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (!*end && !errno && v < UINT64_C(1) << 53) {
            *ms = v;
            return 0;
        }
    } else if (rhema_time_parse(s, ms) == 0) {
        return 0;
    }
    rhema_reply_error(r, 400, "invalid_field",
                      "parameter 'since': expected milliseconds since 1970 or an RFC 3339 time");
    return -1;
}

static void h_history(struct rhema_req *r)
{
    static const char *const known[] = {"series", "since", "limit", NULL};
    struct rhema_history *h = r->worker->srv->history;
    uint64_t mask, since, limit = 0;
    if (rhema_query_check(r, known) || series_mask(r, &mask) || since_ms(r, &since) ||
        rhema_query_uint(r, "limit", 1000000, &limit))
        return;
    if (!h) {
        rhema_reply_error(r, 404, "not_found",
                          "the metrics history is off (monitoring.enabled is false)");
        return;
    }
    rhema_reply_jsonv(r, 200, rhema_history_json(h, since, (size_t)limit, mask));
}

/* ---- /ui/ ---- */

static const struct {
    const char *ext, *type;
} types[] = {
    {".html", "text/html; charset=utf-8"},
    {".css", "text/css; charset=utf-8"},
    {".js", "text/javascript; charset=utf-8"},
    {".json", "application/json"},
    {".svg", "image/svg+xml"},
    {".png", "image/png"},
    {".ico", "image/x-icon"},
    {".txt", "text/plain; charset=utf-8"},
};

static const char *content_type(const char *name)
{
    const char *dot = strrchr(name, '.');
    for (size_t i = 0; dot && i < sizeof types / sizeof *types; i++)
        if (strcmp(dot, types[i].ext) == 0)
            return types[i].type;
    return NULL;
}

/* 64-bit FNV-1a: the ETag of a file's bytes (the same on every node serving them). */
static uint64_t fnv1a(const unsigned char *p, size_t n)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    while (n--)
        h = (h ^ *p++) * UINT64_C(0x100000001b3);
    return h;
}

/* Does an If-None-Match list hold etag (or "*")?  Weak tags compare by their opaque part. */
static int etag_matches(const char *inm, const char *etag)
{
    size_t n = strlen(etag);
    while (inm && *inm) {
        inm += strspn(inm, " \t,");
        if (*inm == '*')
            return 1;
        if (strncmp(inm, "W/", 2) == 0)
            inm += 2;
        if (strncmp(inm, etag, n) == 0 && (inm[n] == '\0' || strchr(" \t,", inm[n])))
            return 1;
        inm += strcspn(inm, ",");
    }
    return 0;
}

static void serve_file(struct rhema_req *r, const char *name)
{
    const char *dir = r->worker->srv->console_dir, *type = content_type(name);
    char path[4096], etag[24];
    unsigned char *buf = NULL;
    struct stat st;
    ssize_t got;
    int fd = -1;
    if (!dir) {
        rhema_reply_error(r, 404, "not_found",
                          "the console is off (monitoring.console.enabled) or its files were "
                          "not found (see the log at startup)");
        return;
    }
    /* the router took one id segment: no '/'; a leading '.' (".", "..", hidden files) is never
     * served */
    if (name[0] == '.' || strchr(name, '/') || !type) {
        rhema_reply_error(r, 404, "not_found", "no console file '%s'", name);
        return;
    }
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, name) >= sizeof path ||
        (fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)) < 0 ||
        fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rhema_reply_error(r, 404, "not_found", "no console file '%s'", name);
        goto out;
    }
    if ((size_t)st.st_size > CONSOLE_FILE_MAX || !(buf = malloc((size_t)st.st_size + 1))) {
        rhema_reply_error(r, 500, "internal", "console file '%s' is too large to serve", name);
        goto out;
    }
    for (off_t done = 0; done < st.st_size; done += got)
        if ((got = read(fd, buf + done, (size_t)(st.st_size - done))) <= 0) {
            rhema_log(RHEMA_LOG_WARN, "http", "%s: reading %s: %s", r->request_id, path,
                      got < 0 ? strerror(errno) : "the file shrank");
            rhema_reply_error(r, 500, "internal", "console file '%s' could not be read", name);
            goto out;
        }
    snprintf(etag, sizeof etag, "\"%016llx\"", (unsigned long long)fnv1a(buf, (size_t)st.st_size));
    rhema_header(r, "ETag", etag);
    rhema_header(r, "Cache-Control", "no-cache");
    rhema_header(r, "X-Content-Type-Options", "nosniff");
    if (strcmp(type, types[0].type) == 0) {
        /* the page runs only its own script and style, and talks only to this server */
        rhema_header(r, "Content-Security-Policy",
                     "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' "
                     "data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                     "frame-ancestors 'none'");
        rhema_header(r, "Referrer-Policy", "no-referrer");
    }
    if (etag_matches(rhema_req_header(r, "If-None-Match"), etag))
        rhema_reply(r, 304, NULL, NULL, 0);
    else
        rhema_reply(r, 200, type, buf, (size_t)st.st_size);
out:
    free(buf);
    if (fd >= 0)
        close(fd);
}

static void h_ui_root(struct rhema_req *r)
{
    if (rhema_query_check(r, NULL))
        return;
    rhema_header(r, "Location", "/ui/");
    rhema_reply_error(r, 301, "moved", "the console is at /ui/");
}

static void h_ui_index(struct rhema_req *r)
{
    if (rhema_query_check(r, NULL) == 0)
        serve_file(r, "index.html");
}

static void h_ui_file(struct rhema_req *r)
{
    if (rhema_query_check(r, NULL) == 0)
        serve_file(r, r->param);
}

const struct rhema_route rhema_console_routes[] = {
    {RHEMA_M_GET, "/v1/stats/history", h_history, "operations:read", RHEMA_READS},
    {RHEMA_M_GET, "/ui", h_ui_root, "console:read", RHEMA_READS},
    {RHEMA_M_GET, "/ui/", h_ui_index, "console:read", RHEMA_READS},
    {RHEMA_M_GET, "/ui/{file}", h_ui_file, "console:read", RHEMA_READS},
    {0},
};

/* ---- startup ---- */

static int has_index(const char *dir)
{
    char path[4096];
    struct stat st;
    return (size_t)snprintf(path, sizeof path, "%s/index.html", dir) < sizeof path &&
           stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int rhema_console_open(struct rhema_server *srv, char **err)
{
    int enabled = 1;
    const char *dir = "";
    srv->console_dir = NULL;
    rhema_config_get_bool(srv->cfg, "monitoring.console.enabled", &enabled);
    rhema_config_get_string(srv->cfg, "monitoring.console.directory", &dir);
    if (!enabled)
        return 0;
    if (*dir) {
        if (!has_index(dir))
            return rhema_set_error(err, RHEMA_EINVAL,
                                   "monitoring.console.directory '%s': no index.html there", dir);
    } else if (has_index(RHEMA_UIDIR)) {
        dir = RHEMA_UIDIR;
    } else if (has_index(RHEMA_SRC_UIDIR)) {
        dir = RHEMA_SRC_UIDIR; /* run from the build tree, not installed */
    } else {
        rhema_log(RHEMA_LOG_WARN, "console",
                  "the console's files are neither in %s nor in %s: /ui/ answers 404 "
                  "(set monitoring.console.directory)",
                  RHEMA_UIDIR, RHEMA_SRC_UIDIR);
        return 0;
    }
    if (!(srv->console_dir = strdup(dir)))
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    rhema_log(RHEMA_LOG_INFO, "console", "serving /ui/ from %s", dir);
    return 0;
}

void rhema_console_close(struct rhema_server *srv)
{
    free(srv->console_dir);
    srv->console_dir = NULL;
}
