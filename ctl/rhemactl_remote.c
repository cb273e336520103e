/*
 * rhemactl_remote -- the commands that talk to a running rhemad over its
 * HTTP API (doc/http-api.md), with libcurl's easy interface: one blocking
 * request at a time, which is all a command line needs.
 *
 * Options (anywhere after the command): --addr HOST:PORT or a URL
 * (RHEMA_ADDR, default 127.0.0.1:8080; https://HOST:PORT for TLS),
 * --key KEY (RHEMA_API_KEY, sent as Authorization: Bearer), --cacert FILE
 * (RHEMA_CACERT), --cert FILE / --key-file FILE (a TLS client certificate),
 * --format table|json, --timeout SECONDS.
 *
 * Exit status: 0 ok, 1 error (no connection, 4xx other than 404, 5xx),
 * 2 usage error, 3 not found (404).
 */
#include "rhema_build.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

#include "rhemactl_remote.h"

enum { EXIT_OK = 0, EXIT_ERR = 1, EXIT_USAGE = 2, EXIT_NOTFOUND = 3 };
enum { FMT_TABLE, FMT_JSON };

struct opts {
    const char *addr, *key, *cacert, *cert, *key_file, *data;
    const char *status, *participant, *capability, *name, *cursor, *topic, *participants;
    const char *address, *weight;
    long timeout;
    long limit;
    long if_version;
    int format;
};

struct buf {
    char *p;
    size_t n;
};

struct reply {
    long status;
    struct buf body;
};

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct buf *b = ud;
    size_t add = size * nmemb;
    char *p = realloc(b->p, b->n + add + 1);
    if (!p)
        return 0;
    memcpy(p + b->n, ptr, add);
    b->p = p;
    b->n += add;
    b->p[b->n] = '\0';
    return add;
}

/* A spinner and the elapsed time on stderr, for requests that may take long. */
struct progress {
    struct timespec start;
    time_t last_tenth;
    unsigned tick;
    const char *what;
};

static double elapsed(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t0->tv_sec) + (double)(now.tv_nsec - t0->tv_nsec) / 1e9;
}

static int on_progress(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    static const char spin[] = "|/-\\";
    struct progress *pr = ud;
    (void)dt, (void)dn, (void)ut, (void)un;
    double e = elapsed(&pr->start);
    time_t tenth = (time_t)(e * 10);
    if (tenth != pr->last_tenth) {
        pr->last_tenth = tenth;
        fprintf(stderr, "\r%c %s... %.1fs", spin[pr->tick++ % 4], pr->what, e);
        fflush(stderr);
    }
    return 0;
}

static char *base_url(const char *addr)
{
    size_t n = strlen(addr);
    int has_scheme = strncmp(addr, "http://", 7) == 0 || strncmp(addr, "https://", 8) == 0;
    char *u = malloc(n + 8);
    if (!u)
        return NULL;
    snprintf(u, n + 8, "%s%s", has_scheme ? "" : "http://", addr);
    n = strlen(u);
    while (n > 0 && u[n - 1] == '/')
        u[--n] = '\0';
    return u;
}

/*
 * One request.  0 with *r filled (any HTTP status), or -1 when no answer
 * came (the reason printed).  progress_what: show a spinner on a terminal.
 */
static int request(const struct opts *o, const char *method, const char *path, const char *body,
                   const char *extra_header, const char *progress_what, struct reply *r)
{
    CURL *c = curl_easy_init();
    struct curl_slist *h = NULL;
    char errbuf[CURL_ERROR_SIZE] = "", line[512];
    char *base = base_url(o->addr), *url = NULL;
    struct progress pr = {.what = progress_what, .last_tenth = -1};
    int rc = -1;
    memset(r, 0, sizeof *r);
    if (!c || !base || !(url = malloc(strlen(base) + strlen(path) + 1))) {
        fprintf(stderr, "rhemactl: out of memory\n");
        goto out;
    }
    strcpy(url, base);
    strcat(url, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r->body);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
#endif
    curl_easy_setopt(c, CURLOPT_USERAGENT, "rhemactl/" PACKAGE_VERSION);
    if (o->timeout > 0)
        curl_easy_setopt(c, CURLOPT_TIMEOUT, o->timeout);
    if (o->cacert)
        curl_easy_setopt(c, CURLOPT_CAINFO, o->cacert);
    if (o->cert)
        curl_easy_setopt(c, CURLOPT_SSLCERT, o->cert);
    if (o->key_file)
        curl_easy_setopt(c, CURLOPT_SSLKEY, o->key_file);
    if (o->key && o->key[0]) {
        snprintf(line, sizeof line, "Authorization: Bearer %s", o->key);
        h = curl_slist_append(h, line);
    }
    h = curl_slist_append(h, "Accept: application/json");
    if (extra_header)
        h = curl_slist_append(h, extra_header);
    if (body) {
        h = curl_slist_append(h, "Content-Type: application/json");
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    } else if (strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, 0L);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    if (progress_what && isatty(STDERR_FILENO)) {
        clock_gettime(CLOCK_MONOTONIC, &pr.start);
        curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(c, CURLOPT_XFERINFODATA, &pr);
        curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    }
    CURLcode cc = curl_easy_perform(c);
    if (pr.last_tenth >= 0)
        fprintf(stderr, "\r%s: %.1fs          \n", progress_what, elapsed(&pr.start));
    if (cc != CURLE_OK) {
        fprintf(stderr, "rhemactl: %s %s: %s\n", method, url,
                errbuf[0] ? errbuf : curl_easy_strerror(cc));
        free(r->body.p);
        r->body.p = NULL;
        goto out;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    rc = 0;
out:
    curl_slist_free_all(h);
    if (c)
        curl_easy_cleanup(c);
    free(url);
    free(base);
    return rc;
}

/* ---- output ---- */

/* A cell: scalars as they are, null as -, arrays of scalars joined by commas. */
static char *cell(const json_t *v)
{
    char tmp[64];
    if (v == NULL || json_is_null(v))
        return strdup("-");
    if (json_is_string(v))
        return strdup(json_string_value(v));
    if (json_is_integer(v)) {
        snprintf(tmp, sizeof tmp, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return strdup(tmp);
    }
    if (json_is_real(v)) {
        snprintf(tmp, sizeof tmp, "%g", json_real_value(v));
        return strdup(tmp);
    }
    if (json_is_boolean(v))
        return strdup(json_is_true(v) ? "true" : "false");
    if (json_is_array(v)) {
        size_t i, all_scalar = 1;
        json_t *e;
        json_array_foreach(v, i, e) if (json_is_object(e) || json_is_array(e)) all_scalar = 0;
        if (all_scalar) {
            size_t len = 1;
            char *out = calloc(1, 1);
            json_array_foreach(v, i, e)
            {
                char *s = cell(e);
                char *grown = s && out ? realloc(out, len + strlen(s) + 1) : NULL;
                if (!grown) {
                    free(s);
                    free(out);
                    return NULL;
                }
                out = grown;
                if (i)
                    strcat(out, ",");
                strcat(out, s);
                len += strlen(s) + 1;
                free(s);
            }
            return out;
        }
    }
    return json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER);
}

/* An aligned table of the items; cols NULL: the scalar fields of the first item. */
static void print_table(const json_t *items, const char *const *cols)
{
    const char *auto_cols[32];
    size_t ncols = 0, nrows = json_array_size(items), i, j;
    if (cols) {
        while (cols[ncols])
            ncols++;
    } else if (nrows > 0) {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)json_array_get(items, 0), k, v)
        {
            if (ncols < 32 && !json_is_object(v))
                auto_cols[ncols++] = k;
        }
        cols = auto_cols;
    }
    if (ncols == 0) {
        if (nrows == 0)
            printf("(none)\n");
        return;
    }
    char **cells = calloc((nrows + 1) * ncols, sizeof *cells);
    size_t *w = calloc(ncols, sizeof *w);
    if (!cells || !w) {
        free(cells);
        free(w);
        return;
    }
    for (j = 0; j < ncols; j++) {
        char *h = strdup(cols[j]);
        for (char *p = h; p && *p; p++)
            *p = (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
        cells[j] = h;
    }
    for (i = 0; i < nrows; i++)
        for (j = 0; j < ncols; j++)
            cells[(i + 1) * ncols + j] = cell(json_object_get(json_array_get(items, i), cols[j]));
    for (i = 0; i <= nrows; i++)
        for (j = 0; j < ncols; j++) {
            size_t l = cells[i * ncols + j] ? strlen(cells[i * ncols + j]) : 0;
            if (l > w[j])
                w[j] = l;
        }
    for (i = 0; i <= nrows; i++) {
        for (j = 0; j < ncols; j++) {
            const char *s = cells[i * ncols + j] ? cells[i * ncols + j] : "";
            if (j + 1 < ncols)
                printf("%-*s  ", (int)w[j], s);
            else
                printf("%s\n", s);
        }
    }
    if (nrows == 0)
        printf("(none)\n");
    for (i = 0; i < (nrows + 1) * ncols; i++)
        free(cells[i]);
    free(cells);
    free(w);
}

/* key: value lines; nested objects indented, arrays of objects one compact line each. */
static void print_object(const json_t *obj, int indent)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v)
    {
        if (json_is_object(v)) {
            printf("%*s%s:\n", indent, "", k);
            print_object(v, indent + 2);
        } else if (json_is_array(v) && json_array_size(v) > 0 &&
                   json_is_object(json_array_get(v, 0))) {
            size_t i;
            json_t *e;
            printf("%*s%s:\n", indent, "", k);
            json_array_foreach(v, i, e)
            {
                char *s = json_dumps(e, JSON_COMPACT | JSON_PRESERVE_ORDER);
                printf("%*s- %s\n", indent + 2, "", s ? s : "?");
                free(s);
            }
        } else {
            char *s = cell(v);
            printf("%*s%s: %s\n", indent, "", k, s ? s : "?");
            free(s);
        }
    }
}

static void print_json(const json_t *v)
{
    char *s = json_dumps(v, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (s)
        printf("%s\n", s);
    free(s);
}

/* The error of a reply that is not 2xx, printed; the exit status for it. */
static int fail(const char *what, const struct reply *r)
{
    json_t *j = r->body.p ? json_loads(r->body.p, 0, NULL) : NULL;
    const char *msg = NULL;
    json_t *e = j ? json_object_get(j, "error") : NULL;
    if (json_is_object(e))
        msg = json_string_value(json_object_get(e, "message"));
    else if (json_is_string(e))
        msg = json_string_value(e);
    if (!msg && r->body.p && r->body.n > 0 && r->body.n < 512 && !j)
        msg = r->body.p;
    fprintf(stderr, "rhemactl: %s: HTTP %ld%s%s\n", what, r->status, msg ? ": " : "",
            msg ? msg : "");
    if (r->status == 401)
        fprintf(stderr, "rhemactl: the daemon wants an API key: pass --key KEY or set "
                        "RHEMA_API_KEY\n");
    else if (r->status == 403)
        fprintf(stderr, "rhemactl: the API key given has no permission for this\n");
    json_decref(j);
    return r->status == 404 ? EXIT_NOTFOUND : EXIT_ERR;
}

/*
 * Do one request and take its JSON answer: 0 with *out (NULL for an empty
 * body), or the exit status (message printed).
 */
static int call(const struct opts *o, const char *method, const char *path, const char *body,
                const char *hdr, const char *progress, json_t **out)
{
    struct reply r;
    char what[600];
    int st;
    *out = NULL;
    snprintf(what, sizeof what, "%s %s", method, path);
    if (request(o, method, path, body, hdr, progress, &r) != 0)
        return EXIT_ERR;
    if (r.status < 200 || r.status > 299) {
        st = fail(what, &r);
        free(r.body.p);
        return st;
    }
    if (r.body.n > 0) {
        json_error_t je;
        *out = json_loads(r.body.p, 0, &je);
        if (!*out) {
            fprintf(stderr, "rhemactl: %s: the answer is not JSON: %s\n", what, je.text);
            free(r.body.p);
            return EXIT_ERR;
        }
    }
    free(r.body.p);
    return EXIT_OK;
}

/* Print a list page; in table form, say how to get the next one. */
static void show_list(const struct opts *o, json_t *page, const char *const *cols)
{
    if (o->format == FMT_JSON) {
        print_json(page);
        return;
    }
    json_t *items = json_object_get(page, "items");
    print_table(json_is_array(items) ? items : page, cols);
    const char *next = json_string_value(json_object_get(page, "next_cursor"));
    if (next)
        fprintf(stderr, "(more: add --cursor %s)\n", next);
    json_t *unread = json_object_get(page, "unreadable");
    if (json_array_size(unread) > 0) {
        char *s = cell(unread);
        fprintf(stderr, "unreadable records: %s\n", s ? s : "?");
        free(s);
    }
}

static void show_object(const struct opts *o, json_t *v)
{
    if (!v)
        return;
    if (o->format == FMT_JSON)
        print_json(v);
    else
        print_object(v, 0);
}

/* ---- building paths ---- */

struct path {
    char s[4096];
    int query;
};

static int path_init(struct path *p, const char *prefix, const char *id)
{
    p->query = 0;
    snprintf(p->s, sizeof p->s, "%s", prefix);
    if (id) {
        char *e = curl_easy_escape(NULL, id, 0);
        if (!e)
            return -1;
        strncat(p->s, "/", sizeof p->s - strlen(p->s) - 1);
        strncat(p->s, e, sizeof p->s - strlen(p->s) - 1);
        curl_free(e);
    }
    return 0;
}

static void path_add(struct path *p, const char *suffix)
{
    strncat(p->s, suffix, sizeof p->s - strlen(p->s) - 1);
}

static void path_param(struct path *p, const char *name, const char *value)
{
    if (!value)
        return;
    char *e = curl_easy_escape(NULL, value, 0);
    if (!e)
        return;
    size_t l = strlen(p->s);
    snprintf(p->s + l, sizeof p->s - l, "%c%s=%s", p->query ? '&' : '?', name, e);
    p->query = 1;
    curl_free(e);
}

static void list_params(struct path *p, const struct opts *o)
{
    char n[32];
    if (o->limit > 0) {
        snprintf(n, sizeof n, "%ld", o->limit);
        path_param(p, "limit", n);
    }
    path_param(p, "cursor", o->cursor);
}

/* ---- bodies ---- */

static char *read_stdin(void)
{
    struct buf b = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, stdin)) > 0)
        if (on_data(chunk, 1, n, &b) != n) {
            free(b.p);
            return NULL;
        }
    return b.p ? b.p : strdup("");
}

/*
 * The JSON body of a put: --data (or --data - / stdin when it is not a
 * terminal), then the flags set over it.  NULL: a usage error (printed).
 */
static json_t *body_from(const struct opts *o, int flags_given)
{
    json_t *j = NULL;
    json_error_t je = {.text = "out of memory"};
    if (o->data && strcmp(o->data, "-") != 0) {
        j = json_loads(o->data, 0, &je);
        if (!j) {
            fprintf(stderr, "rhemactl: --data is not JSON: %s (at character %d)\n", je.text,
                    je.position);
            return NULL;
        }
    } else if ((o->data && strcmp(o->data, "-") == 0) || (!flags_given && !isatty(0))) {
        char *s = read_stdin();
        j = s ? json_loads(s, 0, &je) : NULL;
        free(s);
        if (!j) {
            fprintf(stderr, "rhemactl: the body read from stdin is not JSON: %s\n", je.text);
            return NULL;
        }
    } else if (flags_given) {
        j = json_object();
    } else {
        fprintf(stderr, "rhemactl: no body: give --data JSON, --data - (stdin) or the "
                        "fields as options\n");
        return NULL;
    }
    if (!json_is_object(j)) {
        fprintf(stderr, "rhemactl: the body must be a JSON object\n");
        json_decref(j);
        return NULL;
    }
    return j;
}

static json_t *csv_array(const char *s)
{
    json_t *a = json_array();
    while (s && *s) {
        size_t n = strcspn(s, ",");
        if (n > 0)
            json_array_append_new(a, json_stringn(s, n));
        s += n + (s[n] == ',');
    }
    return a;
}

/* ---- commands ---- */

static const char *const SESSION_COLS[] = {"id", "topic", "status", "participants",
                                           "version", "updated_at", NULL};
static const char *const AGENT_COLS[] = {"id", "name", "agent_type", "status",
                                         "is_online", "last_heartbeat", NULL};
static const char *const SERVICE_COLS[] = {"service_id", "name", "address", "weight",
                                           "health_status", "version", NULL};
static const char *const NODE_COLS[] = {"node_id", "name", "address", "role", "status",
                                        "last_heartbeat", NULL};
static const char *const COMPONENT_COLS[] = {"name", "status", "message", NULL};

static int need_id(const char *cmd, const char *verb, int argc, char **argv, int at)
{
    if (at >= argc) {
        fprintf(stderr, "rhemactl: %s %s needs an ID\n", cmd, verb);
        return -1;
    }
    if (at + 1 < argc) {
        fprintf(stderr, "rhemactl: unexpected argument '%s'\n", argv[at + 1]);
        return -1;
    }
    return 0;
}

static void version_header(const struct opts *o, char *hdr, size_t cap)
{
    hdr[0] = '\0';
    if (o->if_version >= 0)
        snprintf(hdr, cap, "If-Match: \"%ld\"", o->if_version);
}

/* sessions, agents and services: list, get, put (register), delete (deregister). */
static int cmd_resource(const struct opts *o, const char *cmd, int argc, char **argv)
{
    const char *prefix, *const *cols;
    struct path p;
    char hdr[64];
    json_t *out = NULL;
    int st;
    if (strcmp(cmd, "sessions") == 0)
        prefix = "/v1/sessions", cols = SESSION_COLS;
    else if (strcmp(cmd, "agents") == 0)
        prefix = "/v1/agents", cols = AGENT_COLS;
    else
        prefix = "/v1/services", cols = SERVICE_COLS;
    const char *verb = argc > 1 ? argv[1] : "list";
    int is_services = strcmp(cmd, "services") == 0;
    version_header(o, hdr, sizeof hdr);

    if (strcmp(verb, "list") == 0) {
        if (argc > 2) {
            fprintf(stderr, "rhemactl: unexpected argument '%s'\n", argv[2]);
            return EXIT_USAGE;
        }
        path_init(&p, prefix, NULL);
        if (strcmp(cmd, "sessions") == 0) {
            path_param(&p, "status", o->status);
            path_param(&p, "participant", o->participant);
        } else if (strcmp(cmd, "agents") == 0) {
            path_param(&p, "status", o->status);
            path_param(&p, "capability", o->capability);
        } else {
            path_param(&p, "name", o->name);
        }
        list_params(&p, o);
        if ((st = call(o, "GET", p.s, NULL, NULL, NULL, &out)) == 0)
            show_list(o, out, cols);
        json_decref(out);
        return st;
    }
    if (strcmp(verb, "stats") == 0 && strcmp(cmd, "agents") == 0) {
        if ((st = call(o, "GET", "/v1/agents/stats", NULL, NULL, NULL, &out)) == 0)
            show_object(o, out);
        json_decref(out);
        return st;
    }
    int is_get = strcmp(verb, "get") == 0;
    int is_put = strcmp(verb, "put") == 0 || (is_services && strcmp(verb, "register") == 0);
    int is_del = strcmp(verb, "delete") == 0 || (is_services && strcmp(verb, "deregister") == 0);
    int is_hb = strcmp(verb, "heartbeat") == 0 && strcmp(cmd, "agents") == 0;
    int is_tr = strcmp(verb, "transitions") == 0 && strcmp(cmd, "agents") == 0;
    if (!is_get && !is_put && !is_del && !is_hb && !is_tr) {
        fprintf(stderr, "rhemactl: unknown command '%s %s' (see rhemactl help)\n", cmd, verb);
        return EXIT_USAGE;
    }
    if (need_id(cmd, verb, argc, argv, 2) != 0)
        return EXIT_USAGE;
    const char *id = argv[2];
    if (path_init(&p, prefix, id) != 0)
        return EXIT_ERR;
    if (is_get) {
        if ((st = call(o, "GET", p.s, NULL, NULL, NULL, &out)) == 0)
            show_object(o, out);
    } else if (is_tr) {
        struct path t;
        path_init(&t, prefix, id);
        path_add(&t, "/transitions");
        list_params(&t, o);
        if ((st = call(o, "GET", t.s, NULL, NULL, NULL, &out)) == 0)
            show_list(o, out, NULL);
    } else if (is_hb) {
        path_add(&p, "/heartbeat");
        if ((st = call(o, "POST", p.s, NULL, NULL, NULL, &out)) == 0) {
            if (out)
                show_object(o, out);
            else if (o->format == FMT_TABLE)
                printf("heartbeat sent for %s\n", id);
        }
    } else if (is_del) {
        if ((st = call(o, "DELETE", p.s, NULL, hdr[0] ? hdr : NULL, NULL, &out)) == 0 &&
            o->format == FMT_TABLE)
            printf("deleted %s\n", id);
    } else {
        int flags = 0;
        if (strcmp(cmd, "sessions") == 0)
            flags = o->topic || o->participants || o->status;
        else if (is_services)
            flags = o->name || o->address || o->weight;
        else
            flags = o->name || o->status;
        json_t *b = body_from(o, flags);
        if (!b)
            return EXIT_USAGE;
        if (strcmp(cmd, "sessions") == 0) {
            if (o->topic)
                json_object_set_new(b, "topic", json_string(o->topic));
            if (o->participants)
                json_object_set_new(b, "participants", csv_array(o->participants));
            if (o->status)
                json_object_set_new(b, "status", json_string(o->status));
        } else if (is_services) {
            if (o->name)
                json_object_set_new(b, "name", json_string(o->name));
            if (o->address)
                json_object_set_new(b, "address", json_string(o->address));
            if (o->weight) {
                char *end;
                long w = strtol(o->weight, &end, 10);
                if (*end || end == o->weight) {
                    fprintf(stderr, "rhemactl: --weight wants an integer\n");
                    json_decref(b);
                    return EXIT_USAGE;
                }
                json_object_set_new(b, "weight", json_integer(w));
            }
        } else {
            if (o->name)
                json_object_set_new(b, "name", json_string(o->name));
            if (o->status)
                json_object_set_new(b, "status", json_string(o->status));
        }
        char *s = json_dumps(b, JSON_COMPACT);
        json_decref(b);
        if (!s)
            return EXIT_ERR;
        st = call(o, "PUT", p.s, s, hdr[0] ? hdr : NULL, NULL, &out);
        free(s);
        if (st == 0)
            show_object(o, out);
    }
    json_decref(out);
    return st;
}

static void show_cluster(const json_t *c)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)c, k, v)
    {
        if (strcmp(k, "nodes") != 0) {
            char *s = cell(v);
            printf("%s: %s\n", k, s ? s : "?");
            free(s);
        }
    }
    json_t *nodes = json_object_get(c, "nodes");
    if (json_is_array(nodes)) {
        printf("\n");
        print_table(nodes, NODE_COLS);
    }
}

static int cmd_status(const struct opts *o, int argc, char **argv)
{
    json_t *health = NULL, *cluster = NULL;
    int st;
    if (argc > 1) {
        fprintf(stderr, "rhemactl: unexpected argument '%s'\n", argv[1]);
        return EXIT_USAGE;
    }
    if ((st = call(o, "GET", "/health", NULL, NULL, NULL, &health)) != 0)
        return st;
    if ((st = call(o, "GET", "/v1/cluster", NULL, NULL, NULL, &cluster)) != 0) {
        json_decref(health);
        return st;
    }
    if (o->format == FMT_JSON) {
        json_t *both = json_pack("{sOsO}", "health", health, "cluster", cluster);
        print_json(both);
        json_decref(both);
    } else {
        const char *k;
        json_t *v;
        json_object_foreach(health, k, v)
        {
            if (strcmp(k, "components") != 0 && !json_is_object(v)) {
                char *s = cell(v);
                printf("%s: %s\n", k, s ? s : "?");
                free(s);
            }
        }
        json_t *comps = json_object_get(health, "components"), *rows = json_array();
        json_object_foreach(comps, k, v)
        {
            json_t *row = json_deep_copy(v);
            json_object_set_new(row, "name", json_string(k));
            json_array_append_new(rows, row);
        }
        printf("\ncomponents:\n");
        print_table(rows, COMPONENT_COLS);
        json_decref(rows);
        printf("\ncluster:\n");
        show_cluster(cluster);
    }
    json_decref(health);
    json_decref(cluster);
    return EXIT_OK;
}

static int cmd_cluster(const struct opts *o, int argc, char **argv)
{
    const char *verb = argc > 1 ? argv[1] : NULL;
    const char *path = "/v1/cluster";
    json_t *out = NULL;
    int st;
    if (argc > 2) {
        fprintf(stderr, "rhemactl: unexpected argument '%s'\n", argv[2]);
        return EXIT_USAGE;
    }
    if (verb && strcmp(verb, "nodes") == 0)
        path = "/v1/cluster/nodes";
    else if (verb && strcmp(verb, "leader") == 0)
        path = "/v1/cluster/leader";
    else if (verb) {
        fprintf(stderr, "rhemactl: unknown command 'cluster %s' (cluster [nodes|leader])\n",
                verb);
        return EXIT_USAGE;
    }
    if ((st = call(o, "GET", path, NULL, NULL, NULL, &out)) != 0)
        return st;
    if (o->format == FMT_JSON)
        print_json(out);
    else if (verb && strcmp(verb, "nodes") == 0)
        show_list(o, out, NODE_COLS);
    else if (verb)
        print_object(out, 0);
    else
        show_cluster(out);
    json_decref(out);
    return EXIT_OK;
}

static int cmd_alerts(const struct opts *o, int argc, char **argv)
{
    json_t *out = NULL;
    int st;
    if (argc > 1) {
        fprintf(stderr, "rhemactl: unexpected argument '%s'\n", argv[1]);
        return EXIT_USAGE;
    }
    if ((st = call(o, "GET", "/v1/alerts", NULL, NULL, NULL, &out)) != 0)
        return st;
    if (o->format == FMT_JSON)
        print_json(out);
    else
        print_table(json_object_get(out, "active"), NULL);
    json_decref(out);
    return EXIT_OK;
}

static int cmd_metrics(const struct opts *o, int argc, char **argv)
{
    struct reply r;
    int st = EXIT_OK;
    if (argc > 1) {
        fprintf(stderr, "rhemactl: unexpected argument '%s'\n", argv[1]);
        return EXIT_USAGE;
    }
    if (o->format == FMT_JSON) {
        fprintf(stderr, "rhemactl: metrics are Prometheus text; --format json does not apply\n");
        return EXIT_USAGE;
    }
    if (request(o, "GET", "/metrics", NULL, NULL, NULL, &r) != 0)
        return EXIT_ERR;
    if (r.status != 200)
        st = fail("GET /metrics", &r);
    else if (r.body.p)
        fwrite(r.body.p, 1, r.body.n, stdout);
    free(r.body.p);
    return st;
}

static int cmd_keys(const struct opts *o, int argc, char **argv)
{
    const char *verb = argv[1];
    json_t *out = NULL;
    int st;
    if (strcmp(verb, "stats") == 0 || strcmp(verb, "rotate") == 0) {
        if (argc > 2) {
            fprintf(stderr, "rhemactl: unexpected argument '%s'\n", argv[2]);
            return EXIT_USAGE;
        }
        int rot = verb[0] == 'r';
        st = call(o, rot ? "POST" : "GET", rot ? "/v1/keys/rotate" : "/v1/keys/stats", NULL,
                  NULL, NULL, &out);
        if (st == 0 && o->format == FMT_TABLE) {
            json_t *per = json_incref(json_object_get(out, "per_version"));
            json_object_del(out, "per_version");
            print_object(out, 0);
            if (json_is_array(per)) {
                printf("\n");
                print_table(per, NULL);
            }
            json_decref(per);
        } else if (st == 0) {
            print_json(out);
        }
        json_decref(out);
        return st;
    }
    /* backup [NAME] and restore-backup NAME: files in key_management.backup.directory */
    int backup = strcmp(verb, "backup") == 0;
    if (!backup && argc != 3) {
        fprintf(stderr, "rhemactl: keys restore-backup needs the NAME of a file in the "
                        "daemon's key_management.backup.directory\n");
        return EXIT_USAGE;
    }
    if (argc > 3) {
        fprintf(stderr, "rhemactl: unexpected argument '%s'\n", argv[3]);
        return EXIT_USAGE;
    }
    char *body = NULL;
    if (argc == 3) {
        json_t *b = json_pack("{ss}", "name", argv[2]);
        body = b ? json_dumps(b, JSON_COMPACT) : NULL;
        json_decref(b);
        if (!body)
            return EXIT_ERR;
    }
    st = call(o, "POST", backup ? "/v1/keys/backup" : "/v1/keys/restore", body, NULL,
              backup ? "backing up the keyring" : "restoring the keyring", &out);
    free(body);
    if (st == 0) {
        if (o->format == FMT_JSON)
            print_json(out);
        else if (backup)
            printf("keyring backed up as %s\n",
                   json_string_value(json_object_get(out, "name")) ? json_string_value(
                                                                         json_object_get(out, "name"))
                                                                   : "?");
        else if (out)
            print_object(out, 0);
        else
            printf("keyring restored from %s\n", argv[2]);
    }
    json_decref(out);
    return st;
}

int rhemactl_is_remote_keys_verb(const char *verb)
{
    return strcmp(verb, "rotate") == 0 || strcmp(verb, "stats") == 0 ||
           strcmp(verb, "backup") == 0 || strcmp(verb, "restore-backup") == 0;
}

int rhemactl_is_remote_command(const char *cmd)
{
    static const char *const names[] = {"status", "sessions", "agents", "services", "cluster",
                                         "alerts", "metrics", NULL};
    for (size_t i = 0; names[i]; i++)
        if (strcmp(cmd, names[i]) == 0)
            return 1;
    return 0;
}

static int parse_long(const char *opt, const char *s, long min, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min) {
        fprintf(stderr, "rhemactl: %s wants an integer of at least %ld, not '%s'\n", opt, min, s);
        return -1;
    }
    *out = v;
    return 0;
}

int rhemactl_remote(int argc, char **argv)
{
    enum {
        O_ADDR = 256, O_KEY, O_CACERT, O_CERT, O_KEYFILE, O_FORMAT, O_TIMEOUT, O_DATA, O_STATUS,
        O_PARTICIPANT, O_CAPABILITY, O_NAME, O_LIMIT, O_CURSOR, O_TOPIC, O_PARTICIPANTS,
        O_ADDRESS, O_WEIGHT, O_IFVER
    };
    static const struct option longs[] = {
        {"addr", required_argument, NULL, O_ADDR},
        {"key", required_argument, NULL, O_KEY},
        {"cacert", required_argument, NULL, O_CACERT},
        {"cert", required_argument, NULL, O_CERT},
        {"key-file", required_argument, NULL, O_KEYFILE},
        {"format", required_argument, NULL, O_FORMAT},
        {"timeout", required_argument, NULL, O_TIMEOUT},
        {"data", required_argument, NULL, O_DATA},
        {"status", required_argument, NULL, O_STATUS},
        {"participant", required_argument, NULL, O_PARTICIPANT},
        {"capability", required_argument, NULL, O_CAPABILITY},
        {"name", required_argument, NULL, O_NAME},
        {"limit", required_argument, NULL, O_LIMIT},
        {"cursor", required_argument, NULL, O_CURSOR},
        {"topic", required_argument, NULL, O_TOPIC},
        {"participants", required_argument, NULL, O_PARTICIPANTS},
        {"address", required_argument, NULL, O_ADDRESS},
        {"weight", required_argument, NULL, O_WEIGHT},
        {"if-version", required_argument, NULL, O_IFVER},
        {NULL, 0, NULL, 0}};
    struct opts o = {.addr = getenv("RHEMA_ADDR"),
                     .key = getenv("RHEMA_API_KEY"),
                     .cacert = getenv("RHEMA_CACERT"),
                     .timeout = 30,
                     .if_version = -1,
                     .format = FMT_TABLE};
    int c, st;
    if (!o.addr || !o.addr[0])
        o.addr = "127.0.0.1:8080";
    optind = 1;
    opterr = 1;
    while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (c) {
        case O_ADDR: o.addr = optarg; break;
        case O_KEY: o.key = optarg; break;
        case O_CACERT: o.cacert = optarg; break;
        case O_CERT: o.cert = optarg; break;
        case O_KEYFILE: o.key_file = optarg; break;
        case O_DATA: o.data = optarg; break;
        case O_STATUS: o.status = optarg; break;
        case O_PARTICIPANT: o.participant = optarg; break;
        case O_CAPABILITY: o.capability = optarg; break;
        case O_NAME: o.name = optarg; break;
        case O_CURSOR: o.cursor = optarg; break;
        case O_TOPIC: o.topic = optarg; break;
        case O_PARTICIPANTS: o.participants = optarg; break;
        case O_ADDRESS: o.address = optarg; break;
        case O_WEIGHT: o.weight = optarg; break;
        case O_FORMAT:
            if (strcmp(optarg, "json") == 0)
                o.format = FMT_JSON;
            else if (strcmp(optarg, "table") == 0)
                o.format = FMT_TABLE;
            else {
                fprintf(stderr, "rhemactl: --format is table or json, not '%s'\n", optarg);
                return EXIT_USAGE;
            }
            break;
        case O_TIMEOUT:
            if (parse_long("--timeout", optarg, 1, &o.timeout) != 0)
                return EXIT_USAGE;
            break;
        case O_LIMIT:
            if (parse_long("--limit", optarg, 1, &o.limit) != 0)
                return EXIT_USAGE;
            break;
        case O_IFVER:
            if (parse_long("--if-version", optarg, 0, &o.if_version) != 0)
                return EXIT_USAGE;
            break;
        default: return EXIT_USAGE;
        }
    }
    /* the words left, in order: the command and its arguments */
    int n = argc - optind;
    char **words = argv + optind;
    if (n < 1) {
        fprintf(stderr, "rhemactl: no command (see rhemactl help)\n");
        return EXIT_USAGE;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0) {
        fprintf(stderr, "rhemactl: libcurl did not initialise\n");
        return EXIT_ERR;
    }
    const char *cmd = words[0];
    if (strcmp(cmd, "status") == 0)
        st = cmd_status(&o, n, words);
    else if (strcmp(cmd, "cluster") == 0)
        st = cmd_cluster(&o, n, words);
    else if (strcmp(cmd, "alerts") == 0)
        st = cmd_alerts(&o, n, words);
    else if (strcmp(cmd, "metrics") == 0)
        st = cmd_metrics(&o, n, words);
    else if (strcmp(cmd, "keys") == 0 && n >= 2 && rhemactl_is_remote_keys_verb(words[1]))
        st = cmd_keys(&o, n, words);
    else if (strcmp(cmd, "sessions") == 0 || strcmp(cmd, "agents") == 0 ||
             strcmp(cmd, "services") == 0)
        st = cmd_resource(&o, cmd, n, words);
    else {
        fprintf(stderr, "rhemactl: '%s%s%s' is not a command that talks to rhemad (see rhemactl "
                        "help)\n", cmd, n > 1 ? " " : "", n > 1 ? words[1] : "");
        st = EXIT_USAGE;
    }
    curl_global_cleanup();
    fflush(stdout);
    return st;
}
