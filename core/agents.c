/*
 * agents -- agent state, transitions, the performance summary, system
 * metrics and versioned configurations.  See agents.h for the layout.
 */
#include "rhema_build.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agents.h"
#include "watch/inbox.h"
#include "json_fields.h"
#include "log.h"
#include "util.h"
#include "watch/feed.h"

#define NS_AGENTS "agents"
#define NS_BY_STATUS "agents.status"
#define NS_BY_CAPABILITY "agents.capability"
#define NS_HEARTBEAT "agents.heartbeat"
#define NS_TASK "agents.task"
#define NS_TRANSITIONS "agents.transitions"
#define NS_SUMMARY "agents.summary"
#define SUMMARY_KEY "all"
#define NS_SYSTEM "system"
#define METRICS_KEY "metrics"
#define NS_CONFIGS "configurations"
#define LATEST "latest"

#define NAME_MAX_BYTES 256
#define TYPE_MAX_BYTES 128
#define SCOPE_MAX_BYTES 1024
#define TASK_ID_MAX_BYTES 256
#define REASON_MAX_BYTES 1024
#define DESCRIPTION_MAX_BYTES 4096
#define CAPABILITIES_MAX 256
#define CUSTOM_MAX 256
#define TASKS_MAX 1000000000000.0    /* 1e12 tasks: sums of 1e6 agents fit int64 */
#define RESPONSE_MS_MAX 86400000.0   /* a day */
#define COMPLETION_S_MAX 31536000.0  /* a year */
#define COUNT_MAX 1000000000000000.0 /* integers in system metrics */
#define RATE_MAX 1e12                /* messages per second */
#define WRITE_RETRIES 32

static const char *const agent_statuses[] = {"Idle",          "Busy",    "Working", "Blocked",
                                             "Collaborating", "Offline", "Failed",  NULL};
#define NSTATUS 7
static const char *const agent_fields[] = {"id",
                                           "name",
                                           "agent_type",
                                           "status",
                                           "current_task_id",
                                           "assigned_scope",
                                           "capabilities",
                                           "last_heartbeat",
                                           "is_online",
                                           "performance_metrics",
                                           "status_reason",
                                           NULL};
/* Stored metadata a client may echo back; ignored on input. */
static const char *const agent_metadata[] = {"created_at",       "updated_at",      "version",
                                             "transition_count", "task_started_at", NULL};
static const char *const metric_fields[] = {"tasks_completed",
                                            "tasks_failed",
                                            "avg_completion_time_seconds",
                                            "success_rate",
                                            "collaboration_score",
                                            "avg_response_time_ms",
                                            NULL};
static const char *const heartbeat_fields[] = {"status", "current_task_id", "status_reason", NULL};
static const char *const system_fields[] = {"timestamp",
                                            "cpu_usage_percent",
                                            "memory_usage_percent",
                                            "active_agents",
                                            "total_sessions",
                                            "messages_per_second",
                                            "error_rate",
                                            "custom",
                                            NULL};
static const char *const record_metadata[] = {"created_at", "updated_at", "version", NULL};
static const char *const config_fields[] = {"name", "config_data", "version", "description", NULL};

static char *kfmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *kfmt(const char *fmt, ...)
{
    char *s = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    return n < 0 ? NULL : s;
}

static int list_index(const char *s, const char *const *list)
{
    for (int i = 0; list[i]; i++)
        if (s && strcmp(s, list[i]) == 0)
            return i;
    return -1;
}

int rhema_agent_status_valid(const char *s)
{
    return s && rhema_name_in_list(s, agent_statuses);
}

/* ---- validation ---- */

/* A string of min..max bytes; absent: dflt (NULL: required); null allowed when nullable. */
static int check_string(json_t *dst, const char *key, json_t *v, size_t min, size_t max,
                        const char *dflt, int nullable, char *err)
{
    if (!v && !dflt && !nullable)
        return rhema_set_errbuf(err, RHEMA_EINVAL, "field '%s': required", key);
    if (!v || (nullable && json_is_null(v))) {
        json_object_set_new(dst, key, !v && dflt ? json_string(dflt) : json_null());
        return 0;
    }
    if (!json_is_string(v) || json_string_length(v) < min || json_string_length(v) > max)
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "field '%s': expected a string of %zu-%zu bytes%s", key, min, max,
                                nullable ? " or null" : "");
    json_object_set(dst, key, v);
    return 0;
}

/*
 * A number in [lo, hi] (an integer when integer); absent: 0 when optional.
 * `name` is the field's full name for the message.
 */
static int check_number(json_t *dst, const char *key, const char *name, json_t *v, double lo,
                        double hi, int integer, int optional, char *err)
{
    if (!v) {
        if (!optional)
            return rhema_set_errbuf(err, RHEMA_EINVAL, "field '%s': required", name);
        json_object_set_new(dst, key, integer ? json_integer(0) : json_real(0));
        return 0;
    }
    if (integer) {
        if (!json_is_integer(v) || (double)json_integer_value(v) < lo ||
            (double)json_integer_value(v) > hi)
            return rhema_set_errbuf(err, RHEMA_EINVAL,
                                    "field '%s': expected an integer from %.0f to %.0f", name, lo,
                                    hi);
        json_object_set(dst, key, v);
        return 0;
    }
    double d = json_is_number(v) ? json_number_value(v) : NAN;
    if (!json_is_number(v) || !isfinite(d) || d < lo || d > hi)
        return rhema_set_errbuf(err, RHEMA_EINVAL, "field '%s': expected a number from %g to %g",
                                name, lo, hi);
    json_object_set_new(dst, key, json_real(d));
    return 0;
}

static int check_capabilities(json_t *dst, json_t *v, char *err)
{
    size_t i, j;
    json_t *item;
    if (!v) {
        json_object_set_new(dst, "capabilities", json_array());
        return 0;
    }
    if (!json_is_array(v))
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "field 'capabilities': expected an array of names");
    if (json_array_size(v) > CAPABILITIES_MAX)
        return rhema_set_errbuf(err, RHEMA_EINVAL, "field 'capabilities': at most %d entries",
                                CAPABILITIES_MAX);
    json_array_foreach(v, i, item)
    {
        if (!json_is_string(item) || !rhema_id_valid(json_string_value(item)))
            return rhema_set_errbuf(
                err, RHEMA_EINVAL,
                "field 'capabilities[%zu]': expected a name of 1-128 characters "
                "[A-Za-z0-9._:-]",
                i);
        for (j = 0; j < i; j++)
            if (strcmp(json_string_value(json_array_get(v, j)), json_string_value(item)) == 0)
                return rhema_set_errbuf(err, RHEMA_EINVAL,
                                        "field 'capabilities[%zu]': duplicate '%s'", i,
                                        json_string_value(item));
    }
    json_object_set(dst, "capabilities", v);
    return 0;
}

static int check_metrics(json_t *dst, json_t *v, char *err)
{
    int rc;
    json_t *m = json_object();
    if (v && !json_is_object(v)) {
        json_decref(m);
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "field 'performance_metrics': expected an object");
    }
    if (v && (rc = rhema_field_known(v, metric_fields, NULL, "performance_metrics.", err)))
        goto fail;
#define M(k, lo, hi, integer)                                                                      \
    if ((rc = check_number(m, k, "performance_metrics." k, v ? json_object_get(v, k) : NULL, lo,   \
                           hi, integer, 1, err)))                                                  \
        goto fail;
    M("tasks_completed", 0, TASKS_MAX, 1)
    M("tasks_failed", 0, TASKS_MAX, 1)
    M("avg_completion_time_seconds", 0, COMPLETION_S_MAX, 0)
    M("success_rate", 0, 1, 0)
    M("collaboration_score", 0, 1, 0)
    M("avg_response_time_ms", 0, RESPONSE_MS_MAX, 0)
#undef M
    json_object_set_new(dst, "performance_metrics", m);
    return 0;
fail:
    json_decref(m);
    return rc;
}

static int check_reason(json_t *dst, json_t *v, char *err)
{
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v) || json_string_length(v) == 0 ||
        json_string_length(v) > REASON_MAX_BYTES)
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "field 'status_reason': expected a string of 1-%d bytes",
                                REASON_MAX_BYTES);
    json_object_set(dst, "status_reason", v);
    return 0;
}

int rhema_agent_validate(json_t *body, const char *path_id, json_t **out,
                         char err[RHEMA_ERRMSG_MAX])
{
    int rc;
    json_t *a, *v;
    if (!json_is_object(body))
        return rhema_set_errbuf(err, RHEMA_EINVAL, "body: expected a JSON object");
    if ((rc = rhema_field_known(body, agent_fields, agent_metadata, "", err)))
        return rc;
    v = json_object_get(body, "id");
    if (v && (!json_is_string(v) || strcmp(json_string_value(v), path_id) != 0))
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "field 'id': does not match the id '%s' in the path", path_id);
    a = json_object();
    json_object_set_new(a, "id", json_string(path_id));
    if ((rc = check_string(a, "name", json_object_get(body, "name"), 1, NAME_MAX_BYTES, NULL, 0,
                           err)) ||
        (rc = check_string(a, "agent_type", json_object_get(body, "agent_type"), 1, TYPE_MAX_BYTES,
                           NULL, 0, err)) ||
        (rc = rhema_field_enum(a, "status", json_object_get(body, "status"), agent_statuses, "Idle",
                               "", err)) ||
        (rc = check_string(a, "current_task_id", json_object_get(body, "current_task_id"), 1,
                           TASK_ID_MAX_BYTES, NULL, 1, err)) ||
        (rc = check_string(a, "assigned_scope", json_object_get(body, "assigned_scope"), 0,
                           SCOPE_MAX_BYTES, "", 0, err)) ||
        (rc = check_capabilities(a, json_object_get(body, "capabilities"), err)) ||
        (rc = rhema_field_time(a, "last_heartbeat", json_object_get(body, "last_heartbeat"),
                               RHEMA_TIME_OMITTED, "", err)))
        goto fail;
    v = json_object_get(body, "is_online");
    if (v && !json_is_boolean(v)) {
        rc = rhema_set_errbuf(err, RHEMA_EINVAL, "field 'is_online': expected true or false");
        goto fail;
    }
    if (v)
        json_object_set(a, "is_online", v);
    if ((rc = check_metrics(a, json_object_get(body, "performance_metrics"), err)) ||
        (rc = check_reason(a, json_object_get(body, "status_reason"), err)))
        goto fail;
    *out = a;
    return 0;
fail:
    json_decref(a);
    return rc;
}

int rhema_agent_heartbeat_validate(json_t *body, json_t **out, char err[RHEMA_ERRMSG_MAX])
{
    int rc;
    json_t *h, *v;
    if (!body) {
        *out = json_object();
        return 0;
    }
    if (!json_is_object(body))
        return rhema_set_errbuf(err, RHEMA_EINVAL, "body: expected a JSON object");
    if ((rc = rhema_field_known(body, heartbeat_fields, NULL, "", err)))
        return rc;
    h = json_object();
    if ((v = json_object_get(body, "status")) &&
        (rc = rhema_field_enum(h, "status", v, agent_statuses, NULL, "", err)))
        goto fail;
    if ((v = json_object_get(body, "current_task_id")) &&
        (rc = check_string(h, "current_task_id", v, 1, TASK_ID_MAX_BYTES, NULL, 1, err)))
        goto fail;
    if ((rc = check_reason(h, json_object_get(body, "status_reason"), err)))
        goto fail;
    *out = h;
    return 0;
fail:
    json_decref(h);
    return rc;
}

/* ---- storage helpers ---- */

/* Read ns/key as a JSON object; *cur NULL (and 0) when absent. */
static int load_json(struct rhema_store *st, const char *ns, const char *key, json_t **cur,
                     uint64_t *version, char *err)
{
    struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
    *cur = NULL;
    *version = 0;
    int rc = st->vt->get(st->conn, ns, key, &v);
    if (rc == RHEMA_ENOTFOUND)
        return 0;
    if (rc)
        return rhema_store_error(st, rc, "reading", err);
    json_error_t jerr;
    json_t *j = rhema_json_loadb(v.data, v.len, 0, &jerr);
    if (!j || !json_is_object(j)) {
        json_decref(j);
        return rhema_set_errbuf(err, RHEMA_ECORRUPT, "stored %s '%s' is corrupt: %s", ns, key,
                                j ? "not an object" : jerr.text);
    }
    *cur = j;
    *version = v.version;
    return 0;
}

static char *dump(json_t *v, size_t *len)
{
    char *t = rhema_json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (t && len)
        *len = strlen(t);
    return t;
}

/* Take the text into a record. */
static int make_record(char *text, size_t len, uint64_t version, struct rhema_record *out,
                       char *err)
{
    if (!text)
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    out->json = text;
    out->len = len;
    out->version = version;
    return 0;
}

/* A set of writes that owns its keys and values. */
struct wset {
    struct rhema_storage_write *w;
    size_t n, cap;
    void **owned;
    size_t nowned, capowned;
    int oom;
};

static void ws_clear(struct wset *ws)
{
    for (size_t i = 0; i < ws->nowned; i++)
        free(ws->owned[i]);
    free(ws->owned);
    free(ws->w);
    memset(ws, 0, sizeof *ws);
}

static void *ws_own(struct wset *ws, void *p)
{
    if (!p) {
        ws->oom = 1;
        return NULL;
    }
    if (ws->nowned == ws->capowned) {
        size_t cap = ws->capowned ? ws->capowned * 2 : 16;
        void *nv = realloc(ws->owned, cap * sizeof *ws->owned);
        if (!nv) {
            free(p);
            ws->oom = 1;
            return NULL;
        }
        ws->owned = nv;
        ws->capowned = cap;
    }
    ws->owned[ws->nowned++] = p;
    return p;
}

/*
 * Add a write of ns/key (key taken over, NULL: out of memory) with value
 * (not copied; NULL: ""); returns the write or NULL (ws->oom).
 */
static struct rhema_storage_write *ws_add(struct wset *ws, uint32_t op, const char *ns, char *key,
                                          const char *value, size_t len, uint64_t expected)
{
    if (!ws_own(ws, key))
        return NULL;
    if (ws->n == ws->cap) {
        size_t cap = ws->cap ? ws->cap * 2 : 16;
        void *nv = realloc(ws->w, cap * sizeof *ws->w);
        if (!nv) {
            ws->oom = 1;
            return NULL;
        }
        ws->w = nv;
        ws->cap = cap;
    }
    struct rhema_storage_write *w = &ws->w[ws->n++];
    memset(w, 0, sizeof *w);
    w->size = sizeof *w;
    w->op = op;
    w->ns = ns;
    w->key = key;
    w->value = value ? value : "";
    w->value_len = value ? len : 0;
    w->expected_version = expected;
    return w;
}

/* After a batch failed with ENOTFOUND: drop deletes (but the first write's) of keys gone. */
static void ws_drop_missing_deletes(struct rhema_store *st, struct wset *ws)
{
    size_t k = 0;
    for (size_t i = 0; i < ws->n; i++) {
        struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
        if (i > 0 && ws->w[i].op == RHEMA_WRITE_DEL &&
            st->vt->get(st->conn, ws->w[i].ns, ws->w[i].key, &v) == RHEMA_ENOTFOUND)
            continue;
        ws->w[k++] = ws->w[i];
    }
    ws->n = k;
}

/* Collect values (parsed JSON) of a scan. */
struct value_list {
    json_t *items;
    int bad;
    char last_key[RHEMA_STORAGE_KEY_MAX + 1];
    const struct rhema_store *st; /* for the page's byte cap (NULL: none) */
    size_t used;
    size_t page; /* 0, or the items a page holds once the byte cap ended it */
};

static int collect_value(void *ctx, const char *key, const void *value, size_t len, uint64_t ver)
{
    (void)ver;
    struct value_list *l = ctx;
    if (l->page && json_array_size(l->items) > l->page)
        return 1; /* full, and the one more that says whether more is read */
    json_t *j = rhema_json_loadb(value, len, 0, NULL);
    snprintf(l->last_key, sizeof l->last_key, "%s", key);
    if (!j || !json_is_object(j)) {
        json_decref(j);
        l->bad = 1;
        return RHEMA_ECORRUPT;
    }
    json_array_append_new(l->items, j);
    if (l->st && !l->page && rhema_page_add(l->st, &l->used, len))
        l->page = json_array_size(l->items);
    return 0;
}

/* The items of a value_list page: limit, or fewer when its byte cap ended it. */
static size_t value_page(const struct value_list *l, size_t limit)
{
    return l->page && l->page < limit ? l->page : limit;
}

static int count_entries(void *ctx, const char *key, const void *value, size_t len, uint64_t ver)
{
    (void)key, (void)value, (void)len, (void)ver;
    (*(uint64_t *)ctx)++;
    return 0;
}

/* A page `{"items":items,"next_cursor":cursor or null}` as text. */
static int page_text_unreadable(json_t *items, json_t *cursor, json_t *unreadable, char **out,
                                size_t *out_len, char *err)
{
    json_t *page = json_object();
    json_object_set(page, "items", items);
    rhema_unreadable_trim(unreadable, json_string_value(cursor));
    json_object_set_new(page, "next_cursor", cursor ? cursor : json_null());
    if (json_array_size(unreadable))
        json_object_set(page, "unreadable", unreadable);
    char *text = dump(page, out_len);
    json_decref(page);
    if (!text)
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    *out = text;
    return 0;
}

static int page_text(json_t *items, json_t *cursor, char **out, size_t *out_len, char *err)
{
    return page_text_unreadable(items, cursor, NULL, out, out_len, err);
}

static size_t clamp_limit(size_t limit)
{
    if (limit == 0)
        return RHEMA_LIST_LIMIT_DEFAULT;
    return limit > RHEMA_LIST_LIMIT_MAX ? RHEMA_LIST_LIMIT_MAX : limit;
}

/* A decimal cursor (a sequence or version number): 0 and *n, or -1. */
static int parse_seq_cursor(const char *s, uint64_t *n)
{
    char *end;
    if (!s || *s < '0' || *s > '9' || strlen(s) > 20)
        return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || v == UINT64_MAX)
        return -1;
    *n = v;
    return 0;
}

/*
 * A page of the records of ns from key `from` to key `to` (excluded), kept
 * in the order of a counter (an agent's transitions, a configuration's
 * versions): at most limit (fewer when the byte cap ends it), and, when
 * more follow, a next_cursor holding the counter member `seq_member` of the
 * last one.  `noun` names a record in the message of a corrupt one
 * ("stored <noun> '<key>' is corrupt"), `listing` the scan in that of a
 * backend error.
 */
static int seq_page(struct rhema_store *st, const char *ns, const char *from, const char *to,
                    size_t limit, const char *seq_member, const char *noun, const char *listing,
                    char **out, size_t *out_len, char *err)
{
    struct value_list l = {.items = json_array(), .st = st};
    int rc = st->vt->scan(st->conn, ns, from, to, limit + 1, collect_value, &l);
    limit = value_page(&l, limit);
    if (rc) {
        rc = l.bad ? rhema_set_errbuf(err, RHEMA_ECORRUPT, "stored %s '%s' is corrupt", noun,
                                      l.last_key)
                   : rhema_store_error(st, rc, listing, err);
        goto out;
    }
    json_t *next = NULL;
    if (json_array_size(l.items) > limit) {
        json_array_remove(l.items, limit);
        char seq[24];
        snprintf(seq, sizeof seq, "%llu",
                 (unsigned long long)json_integer_value(
                     json_object_get(json_array_get(l.items, limit - 1), seq_member)));
        next = json_string(seq);
    }
    rc = page_text(l.items, next, out, out_len, err);
out:
    json_decref(l.items);
    return rc;
}

/* One write (RHEMA_WRITE_PUT or _DEL) of key in ns, for put() or batch(). */
static struct rhema_storage_write store_write(uint32_t op, const char *ns, const char *key,
                                              const char *value, size_t len,
                                              uint64_t expected_version)
{
    return (struct rhema_storage_write){.size = sizeof(struct rhema_storage_write),
                                        .op = op,
                                        .ns = ns,
                                        .key = key,
                                        .value = value,
                                        .value_len = len,
                                        .expected_version = expected_version};
}

/* ---- the agent summary ---- */

/* What one agent adds to the summary (integers, so that add and remove are exact). */
struct contrib {
    int present;
    int status; /* index into agent_statuses */
    int64_t tasks_completed, tasks_failed;
    int64_t success_micros, collab_micros, response_us;
};

struct summary {
    int64_t total;
    int64_t by_status[NSTATUS];
    int64_t tasks_completed, tasks_failed;
    int64_t success_micros, collab_micros, response_us;
};

/* Round a validated (non-negative, bounded) metric to integer units; no libm needed. */
static int64_t units(json_t *v, double scale)
{
    double d = json_number_value(v) * scale;
    return d > 0 ? (int64_t)(d + 0.5) : 0;
}

static void contrib_of(json_t *agent, struct contrib *c)
{
    memset(c, 0, sizeof *c);
    if (!agent)
        return;
    json_t *m = json_object_get(agent, "performance_metrics");
    c->present = 1;
    c->status = list_index(json_string_value(json_object_get(agent, "status")), agent_statuses);
    c->tasks_completed = (int64_t)json_integer_value(json_object_get(m, "tasks_completed"));
    c->tasks_failed = (int64_t)json_integer_value(json_object_get(m, "tasks_failed"));
    c->success_micros = units(json_object_get(m, "success_rate"), 1e6);
    c->collab_micros = units(json_object_get(m, "collaboration_score"), 1e6);
    c->response_us = units(json_object_get(m, "avg_response_time_ms"), 1e3);
}

static int contrib_equal(const struct contrib *a, const struct contrib *b)
{
    return a->present == b->present && a->status == b->status &&
           a->tasks_completed == b->tasks_completed && a->tasks_failed == b->tasks_failed &&
           a->success_micros == b->success_micros && a->collab_micros == b->collab_micros &&
           a->response_us == b->response_us;
}

static void summary_apply(struct summary *s, const struct contrib *c, int sign)
{
    if (!c->present)
        return;
    s->total += sign;
    if (c->status >= 0)
        s->by_status[c->status] += sign;
    s->tasks_completed += sign * c->tasks_completed;
    s->tasks_failed += sign * c->tasks_failed;
    s->success_micros += sign * c->success_micros;
    s->collab_micros += sign * c->collab_micros;
    s->response_us += sign * c->response_us;
}

static int64_t jint(json_t *o, const char *k)
{
    return (int64_t)json_integer_value(json_object_get(o, k));
}

static void summary_from_json(json_t *j, struct summary *s)
{
    memset(s, 0, sizeof *s);
    if (!j)
        return;
    json_t *bs = json_object_get(j, "by_status");
    s->total = jint(j, "total_agents");
    for (int i = 0; i < NSTATUS; i++)
        s->by_status[i] = jint(bs, agent_statuses[i]);
    s->tasks_completed = jint(j, "tasks_completed");
    s->tasks_failed = jint(j, "tasks_failed");
    s->success_micros = jint(j, "success_rate_micros");
    s->collab_micros = jint(j, "collaboration_score_micros");
    s->response_us = jint(j, "response_time_us");
}

static json_t *summary_to_json(const struct summary *s)
{
    json_t *bs = json_object();
    for (int i = 0; i < NSTATUS; i++)
        json_object_set_new(bs, agent_statuses[i], json_integer(s->by_status[i]));
    return json_pack("{s:I,s:o,s:I,s:I,s:I,s:I,s:I}", "total_agents", (json_int_t)s->total,
                     "by_status", bs, "tasks_completed", (json_int_t)s->tasks_completed,
                     "tasks_failed", (json_int_t)s->tasks_failed, "success_rate_micros",
                     (json_int_t)s->success_micros, "collaboration_score_micros",
                     (json_int_t)s->collab_micros, "response_time_us", (json_int_t)s->response_us);
}

/* ---- agents ---- */

static uint64_t time_ms(json_t *agent, const char *key)
{
    uint64_t ms = 0;
    const char *s = json_string_value(json_object_get(agent, key));
    if (s && rhema_time_parse(s, &ms) != 0)
        ms = 0;
    return ms;
}

/* The heartbeat index key of a stored agent, or NULL when it is not stored online. */
static char *heartbeat_key(json_t *agent, const char *id)
{
    if (!agent || !json_is_true(json_object_get(agent, "is_online")))
        return NULL;
    return kfmt("%020llu/%s", (unsigned long long)time_ms(agent, "last_heartbeat"), id);
}

/* 1 when a stored agent works on a task whose time counts: Busy or Working on current_task_id. */
static int on_timed_task(json_t *agent)
{
    const char *status = agent ? json_string_value(json_object_get(agent, "status")) : NULL;
    return status && (strcmp(status, "Busy") == 0 || strcmp(status, "Working") == 0) &&
           json_is_string(json_object_get(agent, "current_task_id")) &&
           json_is_string(json_object_get(agent, "task_started_at"));
}

/* The task index key of a stored agent, or NULL when no task of it is timed. */
static char *task_key(json_t *agent, const char *id)
{
    if (!on_timed_task(agent))
        return NULL;
    return kfmt("%020llu/%s", (unsigned long long)time_ms(agent, "task_started_at"), id);
}

static int is_online(json_t *agent, uint64_t timeout_ms, uint64_t now)
{
    return json_is_true(json_object_get(agent, "is_online")) &&
           time_ms(agent, "last_heartbeat") + timeout_ms >= now;
}

/* The response text of a stored agent: is_online computed, version added. */
static char *agent_text(json_t *stored, uint64_t version, uint64_t timeout_ms, size_t *len)
{
    json_t *o = json_copy(stored);
    if (!o)
        return NULL;
    json_object_set_new(o, "is_online",
                        json_boolean(is_online(stored, timeout_ms, rhema_realtime_ms())));
    json_object_set_new(o, "version", json_integer((json_int_t)version));
    char *t = dump(o, len);
    json_decref(o);
    return t;
}

static int array_has_string(json_t *arr, const char *s)
{
    size_t i;
    json_t *v;
    json_array_foreach(arr, i,
                       v) if (json_is_string(v) && strcmp(json_string_value(v), s) == 0) return 1;
    return 0;
}

/* AOP_TRANSITION: a status change the daemon makes (rhema_agent_transition). */
enum agent_op { AOP_PUT, AOP_HEARTBEAT, AOP_DELETE, AOP_TRANSITION };

/*
 * The record to store: the agent fields of `src` in their canonical order,
 * then task_started_at, created_at, updated_at and transition_count.
 */
static json_t *agent_record(json_t *src, json_t *task_started_at, const char *created_at,
                            const char *updated_at, uint64_t transitions)
{
    json_t *r = json_object();
    for (const char *const *f = agent_fields; *f; f++) {
        json_t *v = json_object_get(src, *f);
        if (v && strcmp(*f, "status_reason") != 0)
            json_object_set(r, *f, v);
    }
    json_object_set(r, "task_started_at", task_started_at ? task_started_at : json_null());
    json_object_set_new(r, "created_at", json_string(created_at));
    json_object_set_new(r, "updated_at", json_string(updated_at));
    json_object_set_new(r, "transition_count", json_integer((json_int_t)transitions));
    return r;
}

/* The new stored record of a PUT or heartbeat over cur (may be NULL for PUT). */
static json_t *agent_next(enum agent_op kind, json_t *cur, json_t *input, const char *now)
{
    json_t *src;
    if (kind == AOP_PUT) {
        src = json_copy(input);
        if (!json_object_get(src, "last_heartbeat"))
            json_object_set_new(src, "last_heartbeat",
                                cur ? json_incref(json_object_get(cur, "last_heartbeat"))
                                    : json_string(now));
        if (!json_object_get(src, "is_online"))
            json_object_set_new(src, "is_online",
                                cur ? json_incref(json_object_get(cur, "is_online")) : json_true());
    } else {
        const char *k;
        json_t *v;
        src = json_copy(cur);
        if (kind == AOP_HEARTBEAT) {
            json_object_set_new(src, "last_heartbeat", json_string(now));
            json_object_set_new(src, "is_online", json_true());
        }
        json_object_foreach(input, k, v) if (strcmp(k, "status_reason") != 0)
            json_object_set(src, k, v);
    }
    /* when the current task started: now for a new task id, kept while it stays */
    json_t *task = json_object_get(src, "current_task_id");
    json_t *old_task = cur ? json_object_get(cur, "current_task_id") : NULL;
    json_t *started = NULL;
    if (json_is_string(task)) {
        json_t *old_started = json_object_get(cur, "task_started_at");
        if (json_is_string(old_task) && json_equal(task, old_task) && json_is_string(old_started))
            started = json_incref(old_started);
        else
            started = json_string(now);
    }
    const char *old_status = cur ? json_string_value(json_object_get(cur, "status")) : NULL;
    const char *new_status = json_string_value(json_object_get(src, "status"));
    uint64_t tc = cur ? (uint64_t)json_integer_value(json_object_get(cur, "transition_count")) : 0;
    if (!old_status || strcmp(old_status, new_status) != 0)
        tc++;
    json_t *r = agent_record(src, started,
                             cur ? json_string_value(json_object_get(cur, "created_at")) : now,
                             now, tc);
    json_decref(started);
    json_decref(src);
    return r;
}

/* What one attempt of an agent write holds. */
struct agent_attempt {
    json_t *cur, *next, *summary;
    uint64_t version, summary_version;
    char *text;
    size_t len;
    struct wset ws;
};

static void attempt_clear(struct agent_attempt *a)
{
    json_decref(a->cur);
    json_decref(a->next);
    json_decref(a->summary);
    free(a->text);
    ws_clear(&a->ws);
    memset(a, 0, sizeof *a);
}

static int check_if_match(uint64_t if_match, int exists, uint64_t version, const char *what,
                          const char *id, char *err)
{
    if (if_match == RHEMA_VERSION_ABSENT && exists)
        return rhema_set_errbuf(err, RHEMA_EPRECONDITION, "%s '%s' already exists (version %llu)",
                                what, id, (unsigned long long)version);
    if (if_match == RHEMA_VERSION_PRESENT && !exists)
        return rhema_set_errbuf(err, RHEMA_EPRECONDITION, "%s '%s' does not exist (If-Match: *)",
                                what, id);
    if (RHEMA_IF_MATCH_VERSION(if_match) && (!exists || version != if_match)) {
        if (!exists)
            return rhema_set_errbuf(err, RHEMA_EPRECONDITION,
                                    "%s '%s' does not exist (If-Match expected version %llu)", what,
                                    id, (unsigned long long)if_match);
        return rhema_set_errbuf(err, RHEMA_EPRECONDITION,
                                "%s '%s' is at version %llu, not %llu (If-Match)", what, id,
                                (unsigned long long)version, (unsigned long long)if_match);
    }
    return 0;
}

/*
 * Retention (persistence.*_retained): the keys of ns under "<owner>/" whose
 * 20-digit sequence is below `below`, at most PRUNE_MAX of them, collected
 * into keys (owned by the caller).  A write that adds sequence n prunes
 * below n - keep + 1 in its own batch, so a history holds the last `keep`
 * entries; PRUNE_MAX per write also works off what a lowered setting left.
 */
#define PRUNE_MAX 64

static int prune_keys(struct rhema_store *st, const char *ns, const char *owner, uint64_t below,
                      struct rhema_key_list *keys)
{
    char *from = kfmt("%s/", owner), *to = kfmt("%s/%020llu", owner, (unsigned long long)below);
    int rc = from && to ? st->vt->scan(st->conn, ns, from, to, PRUNE_MAX, rhema_key_list_collect,
                                       keys)
                        : RHEMA_ENOMEM;
    free(from);
    free(to);
    if (keys->oom)
        rc = RHEMA_ENOMEM;
    return rc;
}

/*
 * The change feed's record of an agent write (issue 12, watch/feed.h),
 * right after the agent's own write so that a change's revision is the
 * agent's new version: agent.registered, agent.status (from, to),
 * agent.updated (a heartbeat too), agent.deleted.  No feed: nothing.
 */
static void agent_event(struct rhema_store *st, struct wset *ws, enum agent_op kind,
                        const char *id, int created, const char *old_status,
                        const char *new_status)
{
    if (!st->feed)
        return;
    struct rhema_feed_fields f = {.id = id, .agent = id, .versioned = kind != AOP_DELETE};
    if (kind == AOP_DELETE)
        f.type = "agent.deleted";
    else if (created)
        f.type = "agent.registered";
    else if (old_status && new_status && strcmp(old_status, new_status) != 0)
        f.type = "agent.status", f.from = old_status, f.to = new_status;
    else
        f.type = "agent.updated";
    size_t len = 0;
    char *text = rhema_feed_record(&f, &len);
    if (!ws_own(ws, text))
        return; /* ws->oom */
    struct rhema_storage_write *w =
        ws_add(ws, RHEMA_WRITE_PUT, RHEMA_FEED_NS, strdup(""), text, len, RHEMA_VERSION_ABSENT);
    if (w)
        w->flags = RHEMA_WRITE_SEQUENCED;
}

/*
 * Every status transition of an agent -- its creation, a PUT or heartbeat
 * that changes the status, a timeout (rhema_agent_transition) -- is composed
 * here, into the batch that changes the record: the agents.transitions entry
 * numbered by next's transition_count, and the retention of the history.
 * One place, so that what must go with every transition (the change feed's
 * "agent.status" event) is added once, in the same atomic write.
 * from: the old status, NULL for a create; reason: a JSON string or NULL.
 */
static int agent_transition_compose(struct rhema_store *st, struct wset *ws, const char *id,
                                    const char *from, json_t *next, json_t *reason, char *err)
{
    uint64_t seq = (uint64_t)json_integer_value(json_object_get(next, "transition_count"));
    json_t *t = json_pack("{s:I,s:o,s:O,s:O,s:O}", "seq", (json_int_t)seq, "from_status",
                          from ? json_string(from) : json_null(), "to_status",
                          json_object_get(next, "status"), "timestamp",
                          json_object_get(next, "updated_at"), "reason",
                          reason ? reason : json_null());
    size_t tl = 0, i;
    char *tt = t ? dump(t, &tl) : NULL;
    int rc;
    json_decref(t);
    if (ws_own(ws, tt))
        ws_add(ws, RHEMA_WRITE_PUT, NS_TRANSITIONS, kfmt("%s/%020llu", id, (unsigned long long)seq),
               tt, tl, 0);
    /* retention: the last keep_transitions of them stay */
    if (st->keep_transitions && seq > st->keep_transitions) {
        struct rhema_key_list keys = {0};
        rc = prune_keys(st, NS_TRANSITIONS, id, seq - st->keep_transitions + 1, &keys);
        if (rc) {
            rhema_key_list_release(&keys);
            return rc == RHEMA_ENOMEM ? rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory")
                                      : rhema_store_error(st, rc, "listing transitions", err);
        }
        for (i = 0; i < keys.n; i++) {
            ws_add(ws, RHEMA_WRITE_DEL, NS_TRANSITIONS, keys.v[i], NULL, 0, 0);
            keys.v[i] = NULL;
        }
        keys.n = 0;
        rhema_key_list_release(&keys);
    }
    return 0;
}

/*
 * An index entry that moves from old_key to new_key (either NULL: none),
 * both malloc'd: a delete and a put when they differ, nothing when equal.
 * The write set takes the keys it uses; the rest are freed.
 */
static void index_move(struct wset *ws, const char *ns, char *old_key, char *new_key)
{
    if (!old_key || !new_key || strcmp(old_key, new_key) != 0) {
        if (old_key) {
            ws_add(ws, RHEMA_WRITE_DEL, ns, old_key, NULL, 0, 0);
            old_key = NULL;
        }
        if (new_key) {
            ws_add(ws, RHEMA_WRITE_PUT, ns, new_key, NULL, 0, 0);
            new_key = NULL;
        }
    }
    free(old_key);
    free(new_key);
}

/* Compose the writes of one attempt: record, indexes, transition, summary. */
static int agent_compose(struct rhema_store *st, enum agent_op kind, const char *id, json_t *input,
                         struct agent_attempt *a, char *err)
{
    struct wset *ws = &a->ws;
    json_t *cur = a->cur, *next = a->next;
    int rc;
    size_t i;
    json_t *c;
    /* the record */
    if (kind == AOP_DELETE) {
        ws_add(ws, RHEMA_WRITE_DEL, NS_AGENTS, strdup(id), NULL, 0, a->version);
    } else {
        if (!(a->text = dump(next, &a->len)))
            return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
        ws_add(ws, RHEMA_WRITE_PUT, NS_AGENTS, strdup(id), a->text, a->len,
               cur ? a->version : RHEMA_VERSION_ABSENT);
    }
    /* status index and transition */
    const char *old_status = cur ? json_string_value(json_object_get(cur, "status")) : NULL;
    const char *new_status = next ? json_string_value(json_object_get(next, "status")) : NULL;
    agent_event(st, ws, kind, id, cur == NULL, old_status, new_status);
    if (!old_status || !new_status || strcmp(old_status, new_status) != 0) {
        if (old_status)
            ws_add(ws, RHEMA_WRITE_DEL, NS_BY_STATUS, kfmt("%s/%s", old_status, id), NULL, 0, 0);
        if (new_status) {
            ws_add(ws, RHEMA_WRITE_PUT, NS_BY_STATUS, kfmt("%s/%s", new_status, id), NULL, 0, 0);
            if ((rc = agent_transition_compose(st, ws, id, old_status, next,
                                               json_object_get(input, "status_reason"), err)))
                return rc;
        }
    }
    /* capability index */
    json_t *old_caps = cur ? json_object_get(cur, "capabilities") : NULL;
    json_t *new_caps = next ? json_object_get(next, "capabilities") : NULL;
    json_array_foreach(old_caps, i, c) if (!array_has_string(new_caps, json_string_value(c)))
        ws_add(ws, RHEMA_WRITE_DEL, NS_BY_CAPABILITY, kfmt("%s/%s", json_string_value(c), id), NULL,
               0, 0);
    json_array_foreach(new_caps, i, c) if (!array_has_string(old_caps, json_string_value(c)))
        ws_add(ws, RHEMA_WRITE_PUT, NS_BY_CAPABILITY, kfmt("%s/%s", json_string_value(c), id), NULL,
               0, 0);
    /* heartbeat and task indexes */
    index_move(ws, NS_HEARTBEAT, heartbeat_key(cur, id), heartbeat_key(next, id));
    index_move(ws, NS_TASK, task_key(cur, id), task_key(next, id));
    /* transitions of a deleted agent */
    if (kind == AOP_DELETE) {
        struct rhema_key_list keys = {0};
        char *from = kfmt("%s/", id), *to = kfmt("%s0", id); /* '0' follows '/' */
        rc = from && to ? st->vt->scan(st->conn, NS_TRANSITIONS, from, to, 0,
                                       rhema_key_list_collect, &keys)
                        : RHEMA_ENOMEM;
        free(from);
        free(to);
        if (rc) {
            rhema_key_list_release(&keys);
            return keys.oom || rc == RHEMA_ENOMEM
                       ? rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory")
                       : rhema_store_error(st, rc, "listing transitions", err);
        }
        for (i = 0; i < keys.n; i++) {
            ws_add(ws, RHEMA_WRITE_DEL, NS_TRANSITIONS, keys.v[i], NULL, 0, 0);
            keys.v[i] = NULL;
        }
        keys.n = 0;
        rhema_key_list_release(&keys);
    }
    /* the summary, when this write changes it */
    struct contrib before, after;
    contrib_of(cur, &before);
    contrib_of(next, &after);
    if (!contrib_equal(&before, &after)) {
        struct summary s;
        if ((rc = load_json(st, NS_SUMMARY, SUMMARY_KEY, &a->summary, &a->summary_version, err)))
            return rc;
        summary_from_json(a->summary, &s);
        /*
         * The limit: a create is refused when the summary already counts
         * max_agents.  Every create writes the summary at the version read
         * here, so two creates racing for the last slot cannot both land.
         */
        if (!cur && next && st->max_agents && (uint64_t)s.total >= st->max_agents)
            return rhema_set_errbuf(err, RHEMA_EAGENT_LIMIT,
                                    "agent '%s' not registered: %lld agents are registered, the "
                                    "limit (ai_service.agent_management.max_concurrent_agents)",
                                    id, (long long)s.total);
        summary_apply(&s, &before, -1);
        summary_apply(&s, &after, 1);
        json_t *sj = summary_to_json(&s);
        size_t sl = 0;
        char *stext = sj ? dump(sj, &sl) : NULL;
        json_decref(sj);
        if (ws_own(ws, stext))
            ws_add(ws, RHEMA_WRITE_PUT, NS_SUMMARY, strdup(SUMMARY_KEY), stext, sl,
                   a->summary ? a->summary_version : RHEMA_VERSION_ABSENT);
    }
    if (ws->oom)
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    return 0;
}

/*
 * Read the agent, compose, apply in one batch; redo when a concurrent
 * write got in between (the If-Match check then runs again on what is
 * current, so a race on the summary alone never turns into a 412).
 */
static int agent_write(struct rhema_store *st, enum agent_op kind, const char *id, json_t *input,
                       uint64_t if_match, uint64_t timeout_ms, struct rhema_record *out,
                       int *created, char *err)
{
    struct agent_attempt a = {0};
    int rc, repair = 0;
    char now[RHEMA_TIME_MAX];
    for (int attempt = 0;; attempt++) {
        attempt_clear(&a);
        if (attempt >= WRITE_RETRIES) {
            rc = rhema_set_errbuf(err, RHEMA_ECONFLICT,
                                  "agent '%s' is being written concurrently; retry", id);
            goto out;
        }
        if ((rc = load_json(st, NS_AGENTS, id, &a.cur, &a.version, err)))
            goto out;
        if (kind != AOP_PUT && !a.cur) {
            rc = rhema_set_errbuf(err, RHEMA_ENOTFOUND, "agent '%s' not found", id);
            goto out;
        }
        if ((rc = check_if_match(if_match, a.cur != NULL, a.version, "agent", id, err)))
            goto out;
        rhema_time_format(rhema_realtime_ms(), now);
        if (kind != AOP_DELETE && !(a.next = agent_next(kind, a.cur, input, now))) {
            rc = rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
            goto out;
        }
        if ((rc = agent_compose(st, kind, id, input, &a, err)))
            goto out;
        if (repair) {
            ws_drop_missing_deletes(st, &a.ws);
            repair = 0;
        }
        rc = st->vt->batch(st->conn, a.ws.w, a.ws.n);
        if (rc == RHEMA_ENOTFOUND) {
            /*
             * A delete found nothing: the agent went away or changed
             * meanwhile (a concurrent writer won: the next attempt sees it),
             * or, still at the version read, an index entry is missing:
             * repair that, and only that deserves a warning.
             */
            struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
            if (a.cur && st->vt->get(st->conn, NS_AGENTS, id, &v) == 0 &&
                v.version == a.version) {
                rhema_log(RHEMA_LOG_WARN, "agents", "agent '%s': index entry missing; repairing",
                          id);
                repair = 1;
            }
            continue;
        }
        if (rc == RHEMA_ECONFLICT)
            continue;
        if (rc) {
            rc = rhema_store_error(st, rc,
                             kind == AOP_DELETE ? "deleting the agent" : "writing the agent", err);
            goto out;
        }
        break;
    }
    rhema_feed_wake(st->feed); /* its record is in: the feed reads it now */
    if (created)
        *created = a.cur == NULL;
    {
        /* failed or gone: its delivered, unacknowledged messages are visible again (inbox.h) */
        const char *was = a.cur ? json_string_value(json_object_get(a.cur, "status")) : NULL;
        const char *is = a.next ? json_string_value(json_object_get(a.next, "status")) : NULL;
        char ierr[RHEMA_ERRMSG_MAX];
        if ((kind == AOP_DELETE ||
             (is && strcmp(is, "Failed") == 0 && (!was || strcmp(was, "Failed") != 0))) &&
            rhema_inbox_release(st, id, NULL, ierr) != 0)
            rhema_log(RHEMA_LOG_WARN, "inbox",
                      "agent '%s' %s: its in-flight messages stay invisible until their "
                      "visibility timeout: %s",
                      id, kind == AOP_DELETE ? "deleted" : "failed", ierr);
    }
    if (kind != AOP_DELETE && out) {
        size_t len = 0;
        char *t = agent_text(a.next, a.ws.w[0].new_version, timeout_ms, &len);
        rc = make_record(t, len, a.ws.w[0].new_version, out, err);
    }
out:
    attempt_clear(&a);
    return rc;
}

int rhema_agent_put(struct rhema_store *st, const char *id, json_t *agent, uint64_t if_match,
                    uint64_t timeout_ms, struct rhema_record *out, int *created,
                    char err[RHEMA_ERRMSG_MAX])
{
    return agent_write(st, AOP_PUT, id, agent, if_match, timeout_ms, out, created, err);
}

int rhema_agent_heartbeat(struct rhema_store *st, const char *id, json_t *hb, uint64_t if_match,
                          uint64_t timeout_ms, struct rhema_record *out, char err[RHEMA_ERRMSG_MAX])
{
    json_t *empty = hb ? NULL : json_object();
    int rc =
        agent_write(st, AOP_HEARTBEAT, id, hb ? hb : empty, if_match, timeout_ms, out, NULL, err);
    json_decref(empty);
    return rc;
}

int rhema_agent_delete(struct rhema_store *st, const char *id, uint64_t if_match,
                       char err[RHEMA_ERRMSG_MAX])
{
    return agent_write(st, AOP_DELETE, id, NULL, if_match, 0, NULL, NULL, err);
}

int rhema_agent_transition(struct rhema_store *st, const char *id, uint64_t if_match,
                           const char *to_status, int offline, const char *reason,
                           char err[RHEMA_ERRMSG_MAX])
{
    if (!rhema_agent_status_valid(to_status))
        return rhema_set_errbuf(err, RHEMA_EINVAL, "'%s' is not an agent status",
                                to_status ? to_status : "(null)");
    json_t *in = json_pack("{s:s,s:s?}", "status", to_status, "status_reason", reason);
    if (!in)
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    if (offline)
        json_object_set_new(in, "is_online", json_false());
    int rc = agent_write(st, AOP_TRANSITION, id, in, if_match, 0, NULL, NULL, err);
    json_decref(in);
    return rc;
}

/*
 * The ids behind the index keys "<ms %020llu>/<id>" of ns older than
 * cutoff_ms, at most max, into keys (stripped to the ids).
 */
static int stale_ids(struct rhema_store *st, const char *ns, uint64_t cutoff_ms, size_t max,
                     struct rhema_key_list *keys, char *err)
{
    char to[32];
    snprintf(to, sizeof to, "%020llu", (unsigned long long)cutoff_ms);
    keys->strip = 21; /* "<20 digits>/" */
    int rc = st->vt->scan(st->conn, ns, NULL, to, max, rhema_key_list_collect, keys);
    if (keys->oom)
        rc = RHEMA_ENOMEM;
    if (rc)
        return rc == RHEMA_ENOMEM ? rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory")
                                  : rhema_store_error(st, rc, "listing agents", err);
    return 0;
}

/* A sweep's write that lost to a concurrent one: the next sweep decides again. */
static int lost_race(int rc)
{
    return rc == RHEMA_EPRECONDITION || rc == RHEMA_ENOTFOUND || rc == RHEMA_ECONFLICT;
}

int rhema_agent_sweep(struct rhema_store *st, uint64_t timeout_ms, uint64_t now_ms, size_t max,
                      size_t *offline, size_t *failed, char err[RHEMA_ERRMSG_MAX])
{
    struct rhema_key_list keys = {0};
    uint64_t cutoff = now_ms > timeout_ms ? now_ms - timeout_ms : 0;
    int rc = 0;
    *offline = *failed = 0;
    /* heartbeats first: an agent that went away is Offline, whatever its task */
    for (int pass = 0; pass < 2 && !rc; pass++) {
        rhema_key_list_clear(&keys);
        if ((rc = stale_ids(st, pass ? NS_TASK : NS_HEARTBEAT, cutoff, max, &keys, err)))
            break;
        for (size_t i = 0; i < keys.n && !rc; i++) {
            const char *id = keys.v[i];
            json_t *cur = NULL;
            uint64_t version = 0;
            if ((rc = load_json(st, NS_AGENTS, id, &cur, &version, err)))
                break;
            if (!cur)
                continue; /* deleted since the scan */
            if (pass == 0 && json_is_true(json_object_get(cur, "is_online")) &&
                time_ms(cur, "last_heartbeat") < cutoff) {
                rc = rhema_agent_transition(st, id, version, "Offline", 1, "heartbeat timeout",
                                            err);
                const char *was = json_string_value(json_object_get(cur, "status"));
                if (!rc && (!was || strcmp(was, "Offline") != 0))
                    ++*offline;
            } else if (pass == 1 && on_timed_task(cur) &&
                       time_ms(cur, "task_started_at") < cutoff) {
                char reason[64];
                snprintf(reason, sizeof reason, "task timeout after %llu s",
                         (unsigned long long)((now_ms - time_ms(cur, "task_started_at")) / 1000u));
                rc = rhema_agent_transition(st, id, version, "Failed", 0, reason, err);
                if (!rc)
                    ++*failed;
            }
            json_decref(cur);
            if (lost_race(rc))
                rc = 0;
        }
    }
    rhema_key_list_release(&keys);
    return rc;
}

int rhema_agent_get(struct rhema_store *st, const char *id, uint64_t timeout_ms,
                    struct rhema_record *out, char err[RHEMA_ERRMSG_MAX])
{
    json_t *cur;
    uint64_t version;
    int rc = load_json(st, NS_AGENTS, id, &cur, &version, err);
    if (rc)
        return rc;
    if (!cur)
        return rhema_set_errbuf(err, RHEMA_ENOTFOUND, "agent '%s' not found", id);
    size_t len = 0;
    char *t = agent_text(cur, version, timeout_ms, &len);
    json_decref(cur);
    return make_record(t, len, version, out, err);
}

#define IDX_KEY_MAX (RHEMA_ID_MAX * 2 + 2)

int rhema_agent_list(struct rhema_store *st, const char *status, const char *capability,
                     size_t limit, const char *cursor, uint64_t timeout_ms, char **out,
                     size_t *out_len, char err[RHEMA_ERRMSG_MAX])
{
    int rc = 0;
    char from[IDX_KEY_MAX + 2], to[IDX_KEY_MAX + 2];
    const char *ns = NS_AGENTS, *prefix = NULL;
    struct rhema_key_list ids = {0};
    json_t *items = NULL, *unreadable = NULL;
    uint64_t now = rhema_realtime_ms();

    limit = clamp_limit(limit);
    if (status && !rhema_agent_status_valid(status)) {
        char names[160];
        rhema_name_list_join(names, sizeof names, agent_statuses);
        return rhema_set_errbuf(err, RHEMA_EINVAL, "parameter 'status': expected one of %s", names);
    }
    if (capability && !rhema_id_valid(capability))
        return rhema_set_errbuf(
            err, RHEMA_EINVAL,
            "parameter 'capability': expected a name of 1-128 characters [A-Za-z0-9._:-]");
    if (cursor && !rhema_id_valid(cursor))
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "parameter 'cursor': not a cursor this server issued");
    /* the status index when a status is given (capability then filters), else capability */
    if (status) {
        ns = NS_BY_STATUS;
        prefix = status;
    } else if (capability) {
        ns = NS_BY_CAPABILITY;
        prefix = capability;
    }
    if (prefix) {
        snprintf(from, sizeof from, "%s/%s%s", prefix, cursor ? cursor : "", cursor ? "\x01" : "");
        snprintf(to, sizeof to, "%s0", prefix);
        ids.strip = strlen(prefix) + 1;
    } else if (cursor) {
        snprintf(from, sizeof from, "%s\x01", cursor);
    }
    int have_from = prefix || cursor;
    size_t used = 0, page = limit; /* page: limit, or fewer when the byte cap ends it */
    items = json_array();
    unreadable = json_array();
    while (json_array_size(items) <= page) {
        size_t want = page + 1 - json_array_size(items);
        rhema_key_list_clear(&ids);
        rc = st->vt->scan(st->conn, ns, have_from ? from : NULL, prefix ? to : NULL, want,
                          rhema_key_list_collect, &ids);
        if (rc) {
            rc = ids.oom ? rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory")
                         : rhema_store_error(st, rc, "listing agents", err);
            goto out;
        }
        for (size_t i = 0; i < ids.n && json_array_size(items) <= page; i++) {
            json_t *cur;
            uint64_t version;
            rc = load_json(st, NS_AGENTS, ids.v[i], &cur, &version, err);
            if (rc == RHEMA_ECORRUPT) { /* named, not fatal: the others are still readable */
                json_array_append_new(unreadable, json_string(ids.v[i]));
                continue;
            }
            if (rc)
                goto out;
            if (!cur)
                continue; /* deleted between the scan and the read */
            if (status && capability &&
                !array_has_string(json_object_get(cur, "capabilities"), capability)) {
                json_decref(cur);
                continue;
            }
            json_object_set_new(cur, "is_online", json_boolean(is_online(cur, timeout_ms, now)));
            json_object_set_new(cur, "version", json_integer((json_int_t)version));
            json_array_append_new(items, cur);
            if (json_array_size(items) <= page &&
                rhema_page_add(st, &used, json_dumpb(cur, NULL, 0, JSON_COMPACT)))
                page = json_array_size(items); /* full: one more only tells whether more */
        }
        if (ids.n < want)
            break; /* the range is exhausted */
        const char *last = ids.v[ids.n - 1];
        if (prefix)
            snprintf(from, sizeof from, "%s/%s\x01", prefix, last);
        else
            snprintf(from, sizeof from, "%s\x01", last);
        have_from = 1;
    }
    json_t *next = NULL;
    if (json_array_size(items) > page) {
        json_array_remove(items, page);
        next = json_incref(json_object_get(json_array_get(items, page - 1), "id"));
    }
    rc = page_text_unreadable(items, next, unreadable, out, out_len, err);
out:
    rhema_key_list_release(&ids);
    json_decref(items);
    json_decref(unreadable);
    return rc;
}

int rhema_agent_transitions(struct rhema_store *st, const char *id, size_t limit,
                            const char *cursor, char **out, size_t *out_len,
                            char err[RHEMA_ERRMSG_MAX])
{
    uint64_t after = 0, version;
    json_t *cur;
    limit = clamp_limit(limit);
    if (cursor && parse_seq_cursor(cursor, &after) != 0)
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "parameter 'cursor': not a cursor this server issued");
    int rc = load_json(st, NS_AGENTS, id, &cur, &version, err);
    if (rc)
        return rc;
    if (!cur)
        return rhema_set_errbuf(err, RHEMA_ENOTFOUND, "agent '%s' not found", id);
    json_decref(cur);
    char *from = kfmt("%s/%020llu", id, (unsigned long long)after + 1);
    char *to = kfmt("%s0", id);
    if (from && to)
        rc = seq_page(st, NS_TRANSITIONS, from, to, limit, "seq", "transition",
                      "listing transitions", out, out_len, err);
    else
        rc = rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    free(from);
    free(to);
    return rc;
}

int rhema_agent_stats(struct rhema_store *st, uint64_t timeout_ms, char **out, size_t *out_len,
                      char err[RHEMA_ERRMSG_MAX])
{
    json_t *sj;
    uint64_t version, online = 0, now = rhema_realtime_ms();
    struct summary s;
    int rc = load_json(st, NS_SUMMARY, SUMMARY_KEY, &sj, &version, err);
    if (rc)
        return rc;
    summary_from_json(sj, &s);
    json_decref(sj);
    /* online: the agents heard from within the timeout, through the heartbeat index */
    char from[32];
    snprintf(from, sizeof from, "%020llu/",
             (unsigned long long)(now > timeout_ms ? now - timeout_ms : 0));
    rc = st->vt->scan(st->conn, NS_HEARTBEAT, from, NULL, 0, count_entries, &online);
    if (rc)
        return rhema_store_error(st, rc, "counting online agents", err);
    json_t *bs = json_object();
    for (int i = 0; i < NSTATUS; i++)
        json_object_set_new(bs, agent_statuses[i],
                            json_integer(s.by_status[i] > 0 ? s.by_status[i] : 0));
    double n = s.total > 0 ? (double)s.total : 1.0;
    char ts[RHEMA_TIME_MAX];
    rhema_time_format(now, ts);
    json_t *o = json_pack(
        "{s:I,s:I,s:o,s:I,s:I,s:f,s:f,s:f,s:I,s:s}", "total_agents",
        (json_int_t)(s.total > 0 ? s.total : 0), "online_agents", (json_int_t)online, "by_status",
        bs, "tasks_completed", (json_int_t)(s.tasks_completed > 0 ? s.tasks_completed : 0),
        "tasks_failed", (json_int_t)(s.tasks_failed > 0 ? s.tasks_failed : 0), "avg_success_rate",
        s.total > 0 ? (double)s.success_micros / 1e6 / n : 0.0, "avg_response_time_ms",
        s.total > 0 ? (double)s.response_us / 1e3 / n : 0.0, "avg_collaboration_score",
        s.total > 0 ? (double)s.collab_micros / 1e6 / n : 0.0, "heartbeat_timeout_seconds",
        (json_int_t)(timeout_ms / 1000), "timestamp", ts);
    char *t = o ? dump(o, out_len) : NULL;
    json_decref(o);
    if (!t)
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    *out = t;
    return 0;
}

/* ---- system metrics ---- */

int rhema_system_metrics_validate(json_t *body, json_t **out, char err[RHEMA_ERRMSG_MAX])
{
    int rc;
    json_t *m, *v;
    if (!json_is_object(body))
        return rhema_set_errbuf(err, RHEMA_EINVAL, "body: expected a JSON object");
    if ((rc = rhema_field_known(body, system_fields, record_metadata, "", err)))
        return rc;
    m = json_object();
    if ((rc = rhema_field_time(m, "timestamp", json_object_get(body, "timestamp"), RHEMA_TIME_NOW,
                               "", err)))
        goto fail;
#define N(k, lo, hi, integer)                                                                      \
    if ((rc = check_number(m, k, k, json_object_get(body, k), lo, hi, integer, 0, err)))           \
        goto fail;
    N("cpu_usage_percent", 0, 100, 0)
    N("memory_usage_percent", 0, 100, 0)
    N("active_agents", 0, COUNT_MAX, 1)
    N("total_sessions", 0, COUNT_MAX, 1)
    N("messages_per_second", 0, RATE_MAX, 0)
    N("error_rate", 0, 1, 0)
#undef N
    v = json_object_get(body, "custom");
    if (v) {
        const char *k;
        json_t *cv;
        if (!json_is_object(v)) {
            rc = rhema_set_errbuf(err, RHEMA_EINVAL,
                                  "field 'custom': expected an object of numbers");
            goto fail;
        }
        if (json_object_size(v) > CUSTOM_MAX) {
            rc = rhema_set_errbuf(err, RHEMA_EINVAL, "field 'custom': at most %d entries",
                                  CUSTOM_MAX);
            goto fail;
        }
        json_object_foreach(v, k, cv)
        {
            if (!json_is_number(cv) || strlen(k) == 0 || strlen(k) > 128) {
                rc = rhema_set_errbuf(
                    err, RHEMA_EINVAL,
                    "field 'custom.%.128s': expected a number under a name of 1-128 bytes", k);
                goto fail;
            }
        }
        json_object_set(m, "custom", v);
    } else {
        json_object_set_new(m, "custom", json_object());
    }
    *out = m;
    return 0;
fail:
    json_decref(m);
    return rc;
}

/* Text of a stored object with "version" appended. */
static char *with_version(json_t *stored, uint64_t version, size_t *len)
{
    json_t *o = json_copy(stored);
    if (!o)
        return NULL;
    json_object_set_new(o, "version", json_integer((json_int_t)version));
    char *t = dump(o, len);
    json_decref(o);
    return t;
}

int rhema_system_metrics_put(struct rhema_store *st, json_t *metrics, uint64_t if_match,
                             struct rhema_record *out, int *created, char err[RHEMA_ERRMSG_MAX])
{
    char now[RHEMA_TIME_MAX];
    for (int attempt = 0; attempt < WRITE_RETRIES; attempt++) {
        json_t *cur;
        uint64_t version;
        int rc = load_json(st, NS_SYSTEM, METRICS_KEY, &cur, &version, err);
        if (rc)
            return rc;
        if ((rc = check_if_match(if_match, cur != NULL, version, "system", "metrics", err))) {
            json_decref(cur);
            return rc;
        }
        rhema_time_format(rhema_realtime_ms(), now);
        json_t *rec = json_copy(metrics);
        json_t *ca = cur ? json_object_get(cur, "created_at") : NULL;
        json_object_set_new(rec, "created_at", ca ? json_incref(ca) : json_string(now));
        json_object_set_new(rec, "updated_at", json_string(now));
        int was_absent = cur == NULL;
        json_decref(cur);
        size_t len = 0;
        char *text = dump(rec, &len);
        if (!text) {
            json_decref(rec);
            return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
        }
        struct rhema_storage_write w =
            store_write(RHEMA_WRITE_PUT, NS_SYSTEM, METRICS_KEY, text, len,
                        was_absent ? RHEMA_VERSION_ABSENT : version);
        rc = st->vt->put(st->conn, &w);
        free(text);
        if (rc == RHEMA_ECONFLICT) {
            json_decref(rec);
            continue;
        }
        if (rc) {
            json_decref(rec);
            return rhema_store_error(st, rc, "writing the system metrics", err);
        }
        char *t = with_version(rec, w.new_version, &len);
        json_decref(rec);
        *created = was_absent;
        return make_record(t, len, w.new_version, out, err);
    }
    return rhema_set_errbuf(err, RHEMA_ECONFLICT,
                            "the system metrics are being written concurrently; retry");
}

int rhema_system_metrics_get(struct rhema_store *st, struct rhema_record *out,
                             char err[RHEMA_ERRMSG_MAX])
{
    json_t *cur;
    uint64_t version;
    int rc = load_json(st, NS_SYSTEM, METRICS_KEY, &cur, &version, err);
    if (rc)
        return rc;
    if (!cur)
        return rhema_set_errbuf(err, RHEMA_ENOTFOUND, "no system metrics have been stored");
    size_t len = 0;
    char *t = with_version(cur, version, &len);
    json_decref(cur);
    return make_record(t, len, version, out, err);
}

/* ---- configurations ---- */

int rhema_configuration_validate(json_t *body, const char *path_name, json_t **out,
                                 char err[RHEMA_ERRMSG_MAX])
{
    int rc;
    json_t *c, *v;
    static const char *const ignored[] = {"created_at", "updated_at", NULL};
    if (!json_is_object(body))
        return rhema_set_errbuf(err, RHEMA_EINVAL, "body: expected a JSON object");
    if ((rc = rhema_field_known(body, config_fields, ignored, "", err)))
        return rc;
    v = json_object_get(body, "name");
    if (v && (!json_is_string(v) || strcmp(json_string_value(v), path_name) != 0))
        return rhema_set_errbuf(
            err, RHEMA_EINVAL, "field 'name': does not match the name '%s' in the path", path_name);
    v = json_object_get(body, "version");
    if (v && !json_is_integer(v))
        return rhema_set_errbuf(
            err, RHEMA_EINVAL,
            "field 'version': expected an integer (it is ignored: the server numbers "
            "versions)");
    v = json_object_get(body, "config_data");
    if (!v || !json_is_object(v))
        return rhema_set_errbuf(err, RHEMA_EINVAL, "field 'config_data': %s",
                                v ? "expected a JSON object" : "required");
    c = json_object();
    json_object_set_new(c, "name", json_string(path_name));
    json_object_set(c, "config_data", v);
    if ((rc = check_string(c, "description", json_object_get(body, "description"), 0,
                           DESCRIPTION_MAX_BYTES, NULL, 1, err))) {
        json_decref(c);
        return rc;
    }
    *out = c;
    return 0;
}

int rhema_configuration_put(struct rhema_store *st, const char *name, json_t *conf,
                            uint64_t if_match, struct rhema_record *out, int *created,
                            char err[RHEMA_ERRMSG_MAX])
{
    char now[RHEMA_TIME_MAX];
    char *latest_key = kfmt("%s/" LATEST, name);
    int rc = RHEMA_ECONFLICT;
    if (!latest_key)
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    for (int attempt = 0; attempt < WRITE_RETRIES; attempt++) {
        json_t *cur;
        uint64_t sversion;
        if ((rc = load_json(st, NS_CONFIGS, latest_key, &cur, &sversion, err)))
            goto out;
        uint64_t cversion = cur ? (uint64_t)json_integer_value(json_object_get(cur, "version")) : 0;
        if ((rc = check_if_match(if_match, cur != NULL, cversion, "configuration", name, err))) {
            json_decref(cur);
            goto out;
        }
        rhema_time_format(rhema_realtime_ms(), now);
        json_t *ca = cur ? json_object_get(cur, "created_at") : NULL;
        json_t *rec = json_pack("{s:O,s:O,s:I,s:O,s:o,s:s}", "name", json_object_get(conf, "name"),
                                "config_data", json_object_get(conf, "config_data"), "version",
                                (json_int_t)(cversion + 1), "description",
                                json_object_get(conf, "description"), "created_at",
                                ca ? json_incref(ca) : json_string(now), "updated_at", now);
        json_decref(cur);
        size_t len = 0;
        char *text = rec ? dump(rec, &len) : NULL;
        json_decref(rec);
        char *vkey = kfmt("%s/%020llu", name, (unsigned long long)(cversion + 1));
        /* retention: the versions below the last keep_config_versions go in the same batch */
        struct rhema_key_list old = {0};
        uint64_t nv = cversion + 1, keep = st->keep_config_versions;
        int prc = text && vkey && keep && nv > keep
                      ? prune_keys(st, NS_CONFIGS, name, nv - keep + 1, &old)
                      : 0;
        struct rhema_storage_write *w = calloc(3 + old.n, sizeof *w);
        struct rhema_feed_fields ef = {.type = cversion ? "configuration.updated"
                                                        : "configuration.created",
                                       .id = name, .version = cversion + 1};
        size_t elen = 0;
        char *etext = st->feed ? rhema_feed_record(&ef, &elen) : NULL;
        if (!text || !vkey || !w || prc || (st->feed && !etext)) {
            free(text);
            free(vkey);
            free(w);
            free(etext);
            rhema_key_list_release(&old);
            rc = prc && prc != RHEMA_ENOMEM
                     ? rhema_store_error(st, prc, "listing configuration versions", err)
                     : rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
            goto out;
        }
        /*
         * The latest key's version guards the whole batch; a version key is
         * written whatever it holds (a leftover of a deleted configuration
         * of the same name is replaced).
         */
        w[0] = store_write(RHEMA_WRITE_PUT, NS_CONFIGS, vkey, text, len, RHEMA_VERSION_ANY);
        w[1] = store_write(RHEMA_WRITE_PUT, NS_CONFIGS, latest_key, text, len,
                           cversion ? sversion : RHEMA_VERSION_ABSENT);
        for (size_t k = 0; k < old.n; k++)
            w[2 + k] =
                store_write(RHEMA_WRITE_DEL, NS_CONFIGS, old.v[k], NULL, 0, RHEMA_VERSION_ANY);
        if (etext) /* the change feed's record (issue 12): "version" is the configuration's */
            rhema_feed_write(&w[2 + old.n], etext, elen);
        rc = st->vt->batch(st->conn, w, 2 + old.n + (etext ? 1 : 0));
        free(etext);
        free(vkey);
        free(w);
        if (rc == 0)
            rhema_feed_wake(st->feed);
        rhema_key_list_release(&old);
        if (rc == RHEMA_ECONFLICT || rc == RHEMA_ENOTFOUND) { /* a concurrent writer pruned too */
            free(text);
            continue;
        }
        if (rc) {
            free(text);
            rc = rhema_store_error(st, rc, "writing the configuration", err);
            goto out;
        }
        *created = cversion == 0;
        rc = make_record(text, len, cversion + 1, out, err);
        goto out;
    }
    rc = rhema_set_errbuf(err, RHEMA_ECONFLICT,
                          "configuration '%s' is being written concurrently; retry", name);
out:
    free(latest_key);
    return rc;
}

int rhema_configuration_delete(struct rhema_store *st, const char *name, uint64_t if_match,
                               char err[RHEMA_ERRMSG_MAX])
{
    char *latest_key = kfmt("%s/" LATEST, name);
    int rc = RHEMA_ECONFLICT;
    if (!latest_key)
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    for (int attempt = 0; attempt < WRITE_RETRIES; attempt++) {
        json_t *cur;
        uint64_t sversion;
        if ((rc = load_json(st, NS_CONFIGS, latest_key, &cur, &sversion, err)))
            goto out;
        uint64_t cversion = cur ? (uint64_t)json_integer_value(json_object_get(cur, "version")) : 0;
        json_decref(cur);
        if (!cur) {
            rc = rhema_set_errbuf(err, if_match ? RHEMA_EPRECONDITION : RHEMA_ENOTFOUND,
                                  "configuration '%s' not found", name); /* as services do */
            goto out;
        }
        if ((rc = check_if_match(if_match, 1, cversion, "configuration", name, err)))
            goto out;
        /*
         * The versions, PRUNE_MAX at a time, then the last of them with
         * the latest key (guarded by its version) in one batch: until that
         * batch the configuration reads as before, minus its oldest history.
         */
        struct rhema_key_list keys = {0};
        for (;;) {
            rhema_key_list_clear(&keys);
            if ((rc = prune_keys(st, NS_CONFIGS, name, UINT64_MAX / 2, &keys)))
                break;
            int last = keys.n < PRUNE_MAX;
            struct rhema_storage_write *w = calloc(keys.n + 2, sizeof *w);
            struct rhema_feed_fields ef = {.type = "configuration.deleted", .id = name};
            size_t elen = 0;
            char *etext = last && st->feed ? rhema_feed_record(&ef, &elen) : NULL;
            if (!w || (last && st->feed && !etext)) {
                free(w);
                free(etext);
                rc = RHEMA_ENOMEM;
                break;
            }
            for (size_t k = 0; k < keys.n; k++)
                w[k] =
                    store_write(RHEMA_WRITE_DEL, NS_CONFIGS, keys.v[k], NULL, 0, RHEMA_VERSION_ANY);
            if (last)
                w[keys.n] = store_write(RHEMA_WRITE_DEL, NS_CONFIGS, latest_key, NULL, 0, sversion);
            if (etext) /* the change feed's record, with the delete of the latest key */
                rhema_feed_write(&w[keys.n + 1], etext, elen);
            rc = st->vt->batch(st->conn, w, keys.n + (size_t)last + (etext ? 1 : 0));
            free(w);
            free(etext);
            if (rc == 0 && last)
                rhema_feed_wake(st->feed);
            if (rc || last)
                break;
        }
        rhema_key_list_release(&keys);
        if (rc == 0)
            goto out;
        if (rc == RHEMA_ENOMEM) {
            rc = rhema_set_errbuf(err, rc, "out of memory");
            goto out;
        }
        if (rc != RHEMA_ECONFLICT && rc != RHEMA_ENOTFOUND) {
            rc = rhema_store_error(st, rc, "deleting the configuration", err);
            goto out;
        }
        /* written or deleted concurrently: look again (If-Match then decides) */
    }
    rc = rhema_set_errbuf(err, RHEMA_ECONFLICT,
                          "configuration '%s' is being written concurrently; retry", name);
out:
    free(latest_key);
    return rc;
}

int rhema_configuration_get(struct rhema_store *st, const char *name, uint64_t version,
                            struct rhema_record *out, char err[RHEMA_ERRMSG_MAX])
{
    struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
    char *key =
        version ? kfmt("%s/%020llu", name, (unsigned long long)version) : kfmt("%s/" LATEST, name);
    if (!key)
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    int rc = st->vt->get(st->conn, NS_CONFIGS, key, &v);
    free(key);
    if (rc == RHEMA_ENOTFOUND) {
        if (version) {
            struct rhema_storage_value l = {.size = sizeof(struct rhema_storage_value)};
            char *lk = kfmt("%s/" LATEST, name);
            int exists = lk && st->vt->get(st->conn, NS_CONFIGS, lk, &l) == 0;
            free(lk);
            if (exists)
                return rhema_set_errbuf(err, rc, "configuration '%s' has no version %llu", name,
                                        (unsigned long long)version);
        }
        return rhema_set_errbuf(err, rc, "configuration '%s' not found", name);
    }
    if (rc)
        return rhema_store_error(st, rc, "reading the configuration", err);
    json_t *j = rhema_json_loadb(v.data, v.len, 0, NULL);
    if (!j || !json_is_object(j)) {
        json_decref(j);
        return rhema_set_errbuf(err, RHEMA_ECORRUPT, "stored configuration '%s' is corrupt", name);
    }
    uint64_t cv = (uint64_t)json_integer_value(json_object_get(j, "version"));
    size_t len = 0;
    char *t = dump(j, &len);
    json_decref(j);
    return make_record(t, len, cv, out, err);
}

int rhema_configuration_versions(struct rhema_store *st, const char *name, size_t limit,
                                 const char *cursor, char **out, size_t *out_len,
                                 char err[RHEMA_ERRMSG_MAX])
{
    uint64_t after = 0;
    struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
    limit = clamp_limit(limit);
    if (cursor && parse_seq_cursor(cursor, &after) != 0)
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "parameter 'cursor': not a cursor this server issued");
    char *latest = kfmt("%s/" LATEST, name);
    char *from = kfmt("%s/%020llu", name, (unsigned long long)after + 1);
    int rc;
    if (!latest || !from) {
        rc = rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
        goto out;
    }
    rc = st->vt->get(st->conn, NS_CONFIGS, latest, &v);
    if (rc) {
        rc = rc == RHEMA_ENOTFOUND ? rhema_set_errbuf(err, rc, "configuration '%s' not found", name)
                                   : rhema_store_error(st, rc, "reading the configuration", err);
        goto out;
    }
    /* version keys sort before "<name>/latest" (digits before 'l') */
    rc = seq_page(st, NS_CONFIGS, from, latest, limit, "version", "configuration",
                  "listing configuration versions", out, out_len, err);
out:
    free(latest);
    free(from);
    return rc;
}
