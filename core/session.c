/*
 * session -- validation and storage of coordination sessions.
 * See session.h for the storage layout and the access-count scheme.
 */
#include "rhema_build.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "session.h"
#include "util.h"

#define NS_SESSIONS "sessions"
#define NS_BY_STATUS "sessions.status"
#define NS_BY_PARTICIPANT "sessions.participant"
#define NS_ACCESS "sessions.access"

#define TOPIC_MAX 1024
#define PARTICIPANTS_MAX 1024
#define MESSAGE_TYPE_MAX 128
#define PUT_RETRIES 16
#define ACCESS_FLUSH_AT 65536 /* pending entries that force a flush */

static const char *const session_statuses[] = {"Active", "Paused", "Completed", "Cancelled",
                                               NULL};
static const char *const priorities[] = {"Low", "Normal", "High", "Critical", "Emergency", NULL};
/* Stored metadata a client may echo back; ignored on input. */
static const char *const metadata_fields[] = {"created_at",   "updated_at",    "version",
                                              "access_count", "last_accessed", "size_bytes",
                                              NULL};
static const char *const session_fields[] = {"id",         "topic",    "participants",
                                             "status",     "started_at", "ended_at",
                                             "messages",   "decisions", NULL};
static const char *const message_fields[] = {
    "id",        "message_type", "priority",   "sender_id", "recipient_ids", "content",
    "payload",   "timestamp",    "requires_ack", "expires_at", "metadata",   NULL};

static int errf(char err[RHEMA_ERRMSG_MAX], int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int errf(char err[RHEMA_ERRMSG_MAX], int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, RHEMA_ERRMSG_MAX, fmt, ap);
    va_end(ap);
    return code;
}

static int in_list(const char *s, const char *const *list)
{
    for (; *list; list++)
        if (strcmp(s, *list) == 0)
            return 1;
    return 0;
}

static void join_list(char *buf, size_t cap, const char *const *list)
{
    size_t at = 0;
    buf[0] = '\0';
    for (const char *const *p = list; *p && at < cap; p++)
        at += (size_t)snprintf(buf + at, cap - at, "%s%s", p == list ? "" : ", ", *p);
}

int rhema_session_status_valid(const char *s) { return s && in_list(s, session_statuses); }

/* ---- field validators: each writes a normalised value into `dst` under `key` ---- */

static int check_enum(json_t *dst, const char *key, json_t *v, const char *const *allowed,
                      const char *dflt, const char *prefix, char *err)
{
    char names[160];
    if (!v) {
        json_object_set_new(dst, key, json_string(dflt));
        return 0;
    }
    if (!json_is_string(v) || !in_list(json_string_value(v), allowed)) {
        join_list(names, sizeof names, allowed);
        return errf(err, RHEMA_EINVAL, "field '%s%s': expected one of %s", prefix, key, names);
    }
    json_object_set(dst, key, v);
    return 0;
}

static int check_id(json_t *dst, const char *key, json_t *v, const char *prefix, char *err)
{
    if (!v)
        return errf(err, RHEMA_EINVAL, "field '%s%s': required", prefix, key);
    if (!json_is_string(v) || !rhema_id_valid(json_string_value(v)))
        return errf(err, RHEMA_EINVAL,
                    "field '%s%s': expected an id of 1-128 characters [A-Za-z0-9._:-]", prefix,
                    key);
    json_object_set(dst, key, v);
    return 0;
}

/* An RFC 3339 time; absent: now (or null when nullable). */
static int check_time(json_t *dst, const char *key, json_t *v, int nullable, const char *prefix,
                      char *err)
{
    char buf[RHEMA_TIME_MAX];
    uint64_t ms;
    if (!v || json_is_null(v)) {
        if (v && !nullable)
            return errf(err, RHEMA_EINVAL, "field '%s%s': expected an RFC 3339 timestamp",
                        prefix, key);
        if (nullable) {
            json_object_set_new(dst, key, json_null());
            return 0;
        }
        ms = rhema_realtime_ms();
    } else if (!json_is_string(v) || rhema_time_parse(json_string_value(v), &ms) != 0) {
        return errf(err, RHEMA_EINVAL,
                    "field '%s%s': expected an RFC 3339 timestamp such as 2026-01-02T03:04:05Z",
                    prefix, key);
    }
    rhema_time_format(ms, buf);
    json_object_set_new(dst, key, json_string(buf));
    return 0;
}

/* An array of unique ids. */
static int check_id_array(json_t *dst, const char *key, json_t *v, size_t max,
                          const char *prefix, char *err)
{
    size_t i, j;
    json_t *item;
    if (!v) {
        json_object_set_new(dst, key, json_array());
        return 0;
    }
    if (!json_is_array(v))
        return errf(err, RHEMA_EINVAL, "field '%s%s': expected an array of ids", prefix, key);
    if (json_array_size(v) > max)
        return errf(err, RHEMA_EINVAL, "field '%s%s': at most %zu entries", prefix, key, max);
    json_array_foreach(v, i, item)
    {
        if (!json_is_string(item) || !rhema_id_valid(json_string_value(item)))
            return errf(err, RHEMA_EINVAL,
                        "field '%s%s[%zu]': expected an id of 1-128 characters [A-Za-z0-9._:-]",
                        prefix, key, i);
        for (j = 0; j < i; j++)
            if (strcmp(json_string_value(json_array_get(v, j)), json_string_value(item)) == 0)
                return errf(err, RHEMA_EINVAL, "field '%s%s[%zu]': duplicate id '%s'", prefix,
                            key, i, json_string_value(item));
    }
    json_object_set(dst, key, v);
    return 0;
}

static int check_unknown(json_t *body, const char *const *known, const char *const *ignored,
                         const char *prefix, char *err)
{
    const char *key;
    json_t *v;
    json_object_foreach(body, key, v)
    {
        if (!in_list(key, known) && !(ignored && in_list(key, ignored)))
            return errf(err, RHEMA_EINVAL, "field '%s%s': unknown field", prefix, key);
    }
    return 0;
}

static int message_validate(json_t *body, const char *prefix, json_t **out, char *err)
{
    int rc;
    json_t *m, *v;
    if (!json_is_object(body))
        return errf(err, RHEMA_EINVAL, "field '%s': expected a JSON object",
                    *prefix ? prefix : "body");
    if ((rc = check_unknown(body, message_fields, NULL, prefix, err)))
        return rc;
    m = json_object();
    if ((rc = check_id(m, "id", json_object_get(body, "id"), prefix, err)))
        goto fail;
    v = json_object_get(body, "message_type");
    if (!v || !json_is_string(v) || json_string_length(v) == 0 ||
        json_string_length(v) > MESSAGE_TYPE_MAX) {
        rc = errf(err, RHEMA_EINVAL, "field '%smessage_type': expected a string of 1-%d bytes",
                  prefix, MESSAGE_TYPE_MAX);
        goto fail;
    }
    json_object_set(m, "message_type", v);
    if ((rc = check_enum(m, "priority", json_object_get(body, "priority"), priorities, "Normal",
                         prefix, err)))
        goto fail;
    if ((rc = check_id(m, "sender_id", json_object_get(body, "sender_id"), prefix, err)))
        goto fail;
    if ((rc = check_id_array(m, "recipient_ids", json_object_get(body, "recipient_ids"),
                             PARTICIPANTS_MAX, prefix, err)))
        goto fail;
    v = json_object_get(body, "content");
    if (!v || !json_is_string(v)) {
        rc = errf(err, RHEMA_EINVAL, "field '%scontent': expected a string", prefix);
        goto fail;
    }
    json_object_set(m, "content", v);
    v = json_object_get(body, "payload");
    json_object_set_new(m, "payload", v ? json_incref(v) : json_null());
    if ((rc = check_time(m, "timestamp", json_object_get(body, "timestamp"), 0, prefix, err)))
        goto fail;
    v = json_object_get(body, "requires_ack");
    if (v && !json_is_boolean(v)) {
        rc = errf(err, RHEMA_EINVAL, "field '%srequires_ack': expected true or false", prefix);
        goto fail;
    }
    json_object_set_new(m, "requires_ack", json_boolean(v && json_is_true(v)));
    if ((rc = check_time(m, "expires_at", json_object_get(body, "expires_at"), 1, prefix, err)))
        goto fail;
    v = json_object_get(body, "metadata");
    if (v) {
        const char *k;
        json_t *mv;
        if (!json_is_object(v)) {
            rc = errf(err, RHEMA_EINVAL, "field '%smetadata': expected an object of strings",
                      prefix);
            goto fail;
        }
        json_object_foreach(v, k, mv)
        {
            if (!json_is_string(mv)) {
                rc = errf(err, RHEMA_EINVAL, "field '%smetadata.%s': expected a string", prefix,
                          k);
                goto fail;
            }
        }
        json_object_set(m, "metadata", v);
    } else {
        json_object_set_new(m, "metadata", json_object());
    }
    *out = m;
    return 0;
fail:
    json_decref(m);
    return rc;
}

int rhema_message_validate(json_t *body, json_t **out, char err[RHEMA_ERRMSG_MAX])
{
    return message_validate(body, "", out, err);
}

int rhema_session_validate(json_t *body, const char *path_id, json_t **out,
                           char err[RHEMA_ERRMSG_MAX])
{
    int rc;
    size_t i, j;
    json_t *s, *v, *item;
    if (!json_is_object(body))
        return errf(err, RHEMA_EINVAL, "body: expected a JSON object");
    if ((rc = check_unknown(body, session_fields, metadata_fields, "", err)))
        return rc;
    v = json_object_get(body, "id");
    if (v && (!json_is_string(v) || strcmp(json_string_value(v), path_id) != 0))
        return errf(err, RHEMA_EINVAL, "field 'id': does not match the id '%s' in the path",
                    path_id);
    s = json_object();
    json_object_set_new(s, "id", json_string(path_id));
    v = json_object_get(body, "topic");
    if (!v || !json_is_string(v) || json_string_length(v) == 0 ||
        json_string_length(v) > TOPIC_MAX) {
        rc = errf(err, RHEMA_EINVAL, "field 'topic': expected a string of 1-%d bytes", TOPIC_MAX);
        goto fail;
    }
    json_object_set(s, "topic", v);
    if ((rc = check_id_array(s, "participants", json_object_get(body, "participants"),
                             PARTICIPANTS_MAX, "", err)))
        goto fail;
    if ((rc = check_enum(s, "status", json_object_get(body, "status"), session_statuses,
                         "Active", "", err)))
        goto fail;
    if ((rc = check_time(s, "started_at", json_object_get(body, "started_at"), 0, "", err)))
        goto fail;
    if ((rc = check_time(s, "ended_at", json_object_get(body, "ended_at"), 1, "", err)))
        goto fail;
    v = json_object_get(body, "messages");
    json_t *msgs = json_array();
    json_object_set_new(s, "messages", msgs);
    if (v && !json_is_array(v)) {
        rc = errf(err, RHEMA_EINVAL, "field 'messages': expected an array of AgentMessage");
        goto fail;
    }
    json_array_foreach(v, i, item)
    {
        char prefix[48];
        json_t *m;
        snprintf(prefix, sizeof prefix, "messages[%zu].", i);
        if ((rc = message_validate(item, prefix, &m, err)))
            goto fail;
        const char *mid = json_string_value(json_object_get(m, "id"));
        for (j = 0; j < i; j++) {
            if (strcmp(json_string_value(json_object_get(json_array_get(msgs, j), "id")), mid) ==
                0) {
                json_decref(m);
                rc = errf(err, RHEMA_EINVAL, "field 'messages[%zu].id': duplicate id '%s'", i,
                          mid);
                goto fail;
            }
        }
        json_array_append_new(msgs, m);
    }
    v = json_object_get(body, "decisions");
    if (v) {
        if (!json_is_array(v)) {
            rc = errf(err, RHEMA_EINVAL, "field 'decisions': expected an array of objects");
            goto fail;
        }
        json_array_foreach(v, i, item)
        {
            if (!json_is_object(item)) {
                rc = errf(err, RHEMA_EINVAL, "field 'decisions[%zu]': expected an object", i);
                goto fail;
            }
        }
        json_object_set(s, "decisions", v);
    } else {
        json_object_set_new(s, "decisions", json_array());
    }
    *out = s;
    return 0;
fail:
    json_decref(s);
    return rc;
}

/* ---- storage helpers ---- */

void rhema_record_release(struct rhema_record *r)
{
    free(r->json);
    r->json = NULL;
    r->len = 0;
    r->version = 0;
}

/* Map a storage failure to a message. */
static int storage_err(struct rhema_store *st, int rc, const char *what, char *err)
{
    if (rc == RHEMA_EUNAVAIL)
        return errf(err, rc, "storage unavailable while %s: %s", what, st->vt->errmsg(st->conn));
    return errf(err, rc, "storage error while %s: %s (%s)", what, rhema_strerror(rc),
                st->vt->errmsg(st->conn));
}

struct rhema_access_entry {
    char *id; /* NULL: empty slot */
    uint64_t delta;
    uint64_t last_ms;
};

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static struct rhema_access_entry *access_slot(struct rhema_store *st, const char *id, int create)
{
    if (create && (st->pending_n + 1) * 2 > st->pending_cap) {
        size_t cap = st->pending_cap ? st->pending_cap * 2 : 64;
        struct rhema_access_entry *nv = calloc(cap, sizeof *nv);
        if (!nv)
            return NULL;
        for (size_t i = 0; i < st->pending_cap; i++) {
            if (!st->pending[i].id)
                continue;
            size_t j = hash_str(st->pending[i].id) & (cap - 1);
            while (nv[j].id)
                j = (j + 1) & (cap - 1);
            nv[j] = st->pending[i];
        }
        free(st->pending);
        st->pending = nv;
        st->pending_cap = cap;
    }
    if (!st->pending_cap)
        return NULL;
    size_t j = hash_str(id) & (st->pending_cap - 1);
    while (st->pending[j].id) {
        if (strcmp(st->pending[j].id, id) == 0)
            return &st->pending[j];
        j = (j + 1) & (st->pending_cap - 1);
    }
    if (!create)
        return NULL;
    st->pending[j].id = strdup(id);
    if (!st->pending[j].id)
        return NULL;
    st->pending[j].delta = 0;
    st->pending[j].last_ms = 0;
    st->pending_n++;
    return &st->pending[j];
}

static void access_clear(struct rhema_store *st)
{
    for (size_t i = 0; i < st->pending_cap; i++)
        free(st->pending[i].id);
    memset(st->pending, 0, st->pending_cap * sizeof *st->pending);
    st->pending_n = 0;
}

/* Stored access counts of id (0/0 when none). */
static int access_stored(struct rhema_store *st, const char *id, uint64_t *count, uint64_t *last)
{
    struct rhema_storage_value v;
    *count = 0;
    *last = 0;
    int rc = st->vt->get(st->conn, NS_ACCESS, id, &v);
    if (rc == RHEMA_ENOTFOUND)
        return 0;
    if (rc)
        return rc;
    char buf[64];
    size_t n = v.len < sizeof buf - 1 ? v.len : sizeof buf - 1;
    memcpy(buf, v.data, n);
    buf[n] = '\0';
    unsigned long long c = 0, l = 0;
    if (sscanf(buf, "%llu %llu", &c, &l) == 2) {
        *count = c;
        *last = l;
    }
    return 0;
}

int rhema_store_flush_access(struct rhema_store *st)
{
    int first = 0;
    for (size_t i = 0; i < st->pending_cap; i++) {
        struct rhema_access_entry *e = &st->pending[i];
        if (!e->id)
            continue;
        for (int attempt = 0; attempt < PUT_RETRIES; attempt++) {
            struct rhema_storage_value v;
            uint64_t count = 0, last = 0, expected = RHEMA_VERSION_ABSENT;
            int rc = st->vt->get(st->conn, NS_ACCESS, e->id, &v);
            if (rc == 0) {
                char buf[64];
                size_t n = v.len < sizeof buf - 1 ? v.len : sizeof buf - 1;
                memcpy(buf, v.data, n);
                buf[n] = '\0';
                unsigned long long c = 0, l = 0;
                if (sscanf(buf, "%llu %llu", &c, &l) == 2)
                    count = c, last = l;
                expected = v.version;
            } else if (rc != RHEMA_ENOTFOUND) {
                if (!first)
                    first = rc;
                break;
            }
            /* The session may have been deleted meanwhile: do not resurrect counts. */
            rc = st->vt->get(st->conn, NS_SESSIONS, e->id, &v);
            if (rc == RHEMA_ENOTFOUND)
                break;
            char text[64];
            int len = snprintf(text, sizeof text, "%llu %llu",
                               (unsigned long long)(count + e->delta),
                               (unsigned long long)(e->last_ms > last ? e->last_ms : last));
            struct rhema_storage_write w = {.op = RHEMA_WRITE_PUT,
                                            .ns = NS_ACCESS,
                                            .key = e->id,
                                            .value = text,
                                            .value_len = (size_t)len,
                                            .expected_version = expected};
            rc = st->vt->put(st->conn, &w);
            if (rc == RHEMA_ECONFLICT)
                continue; /* another worker flushed the same id: re-read */
            if (rc && !first)
                first = rc;
            break;
        }
    }
    access_clear(st);
    return first;
}

void rhema_store_init(struct rhema_store *st, const struct rhema_storage_plugin *vt,
                      rhema_storage_conn *conn)
{
    memset(st, 0, sizeof *st);
    st->vt = vt;
    st->conn = conn;
}

void rhema_store_release(struct rhema_store *st)
{
    if (st->pending_n)
        rhema_store_flush_access(st);
    access_clear(st);
    free(st->pending);
    st->pending = NULL;
    st->pending_cap = 0;
}

/*
 * Build the response text: the stored record (a JSON object) with version,
 * access_count and last_accessed spliced in before its closing brace -- no
 * parse on the read path.
 */
static int make_record(const void *stored, size_t len, uint64_t version, uint64_t count,
                       uint64_t last_ms, struct rhema_record *out)
{
    char last[RHEMA_TIME_MAX + 2] = "null";
    if (len < 2 || ((const char *)stored)[len - 1] != '}')
        return RHEMA_ECORRUPT;
    if (last_ms) {
        char t[RHEMA_TIME_MAX];
        rhema_time_format(last_ms, t);
        snprintf(last, sizeof last, "\"%s\"", t);
    }
    char tail[128];
    int tl = snprintf(tail, sizeof tail, ",\"version\":%llu,\"access_count\":%llu,\"last_accessed\":%s}",
                      (unsigned long long)version, (unsigned long long)count, last);
    char *buf = malloc(len - 1 + (size_t)tl + 1);
    if (!buf)
        return RHEMA_ENOMEM;
    memcpy(buf, stored, len - 1);
    memcpy(buf + len - 1, tail, (size_t)tl + 1);
    out->json = buf;
    out->len = len - 1 + (size_t)tl;
    out->version = version;
    return 0;
}

/* Record of id with its current access counts (not counting this read). */
static int record_with_access(struct rhema_store *st, const char *id, const char *stored,
                              size_t len, uint64_t version, int count_this,
                              struct rhema_record *out, char *err)
{
    uint64_t count, last;
    int rc = access_stored(st, id, &count, &last);
    if (rc)
        return storage_err(st, rc, "reading access counts", err);
    struct rhema_access_entry *e = access_slot(st, id, count_this);
    if (count_this && !e)
        return errf(err, RHEMA_ENOMEM, "out of memory");
    if (count_this) {
        e->delta++;
        e->last_ms = rhema_realtime_ms();
    }
    if (e) {
        count += e->delta;
        if (e->last_ms > last)
            last = e->last_ms;
    }
    rc = make_record(stored, len, version, count, last, out);
    if (rc == RHEMA_ECORRUPT)
        return errf(err, rc, "stored session '%s' is not a JSON object", id);
    if (rc)
        return errf(err, rc, "out of memory");
    if (st->pending_n >= ACCESS_FLUSH_AT)
        rhema_store_flush_access(st);
    return 0;
}

/* The current record of id, parsed; *cur NULL when absent. */
static int load_current(struct rhema_store *st, const char *id, json_t **cur, uint64_t *version,
                        char *err)
{
    struct rhema_storage_value v;
    *cur = NULL;
    *version = 0;
    int rc = st->vt->get(st->conn, NS_SESSIONS, id, &v);
    if (rc == RHEMA_ENOTFOUND)
        return 0;
    if (rc)
        return storage_err(st, rc, "reading the session", err);
    json_error_t jerr;
    *cur = json_loadb(v.data, v.len, 0, &jerr);
    if (!*cur || !json_is_object(*cur)) {
        json_decref(*cur);
        *cur = NULL;
        return errf(err, RHEMA_ECORRUPT, "stored session '%s' is corrupt: %s", id, jerr.text);
    }
    *version = v.version;
    return 0;
}

static int check_if_match(uint64_t if_match, const json_t *cur, uint64_t version, const char *id,
                          char *err)
{
    if (if_match == RHEMA_VERSION_ABSENT && cur)
        return errf(err, RHEMA_EPRECONDITION, "session '%s' already exists (version %llu)", id,
                    (unsigned long long)version);
    if (if_match && if_match != RHEMA_VERSION_ABSENT && (!cur || version != if_match)) {
        if (!cur)
            return errf(err, RHEMA_EPRECONDITION,
                        "session '%s' does not exist (If-Match expected version %llu)", id,
                        (unsigned long long)if_match);
        return errf(err, RHEMA_EPRECONDITION,
                    "session '%s' is at version %llu, not %llu (If-Match)", id,
                    (unsigned long long)version, (unsigned long long)if_match);
    }
    return 0;
}

/* Index keys of a session: "<Status>/<id>" and "<participant>/<id>". */
static void index_key(char *buf, size_t cap, const char *a, const char *id)
{
    snprintf(buf, cap, "%s/%s", a, id);
}

#define IDX_KEY_MAX (RHEMA_ID_MAX * 2 + 2)

struct write_set {
    struct rhema_storage_write *w;
    char (*keys)[IDX_KEY_MAX];
    size_t n, cap;
};

static struct rhema_storage_write *ws_add(struct write_set *ws, uint32_t op, const char *ns,
                                          const char *a, const char *id)
{
    struct rhema_storage_write *w = &ws->w[ws->n];
    memset(w, 0, sizeof *w);
    w->op = op;
    w->ns = ns;
    if (a) {
        index_key(ws->keys[ws->n], IDX_KEY_MAX, a, id);
        w->key = ws->keys[ws->n];
    } else {
        w->key = id;
    }
    w->expected_version = RHEMA_VERSION_ANY;
    w->value = "";
    ws->n++;
    return w;
}

static int json_array_has_string(json_t *arr, const char *s)
{
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) if (json_is_string(v) && strcmp(json_string_value(v), s) == 0)
        return 1;
    return 0;
}

/* Serialise the record: session fields, created_at, updated_at, size_bytes. */
static char *serialise(json_t *session, const char *created_at, size_t *len)
{
    char now[RHEMA_TIME_MAX];
    rhema_time_format(rhema_realtime_ms(), now);
    json_t *rec = json_deep_copy(session);
    if (!rec)
        return NULL;
    json_object_set_new(rec, "created_at", json_string(created_at ? created_at : now));
    json_object_set_new(rec, "updated_at", json_string(now));
    char *body = json_dumps(rec, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(rec);
    if (!body)
        return NULL;
    size_t bl = strlen(body);
    char tail[48];
    /* size_bytes: the stored size of the record, this member included */
    int tl = 0;
    size_t total = 0;
    for (size_t digits = 1; digits < 21; digits++) {
        total = bl - 1 + strlen(",\"size_bytes\":}") + digits;
        tl = snprintf(tail, sizeof tail, ",\"size_bytes\":%zu}", total);
        if (bl - 1 + (size_t)tl == total)
            break;
    }
    char *out = malloc(total + 1);
    if (out) {
        memcpy(out, body, bl - 1);
        memcpy(out + bl - 1, tail, (size_t)tl + 1);
        *len = total;
    }
    free(body);
    return out;
}

/*
 * One attempt at writing `session` over `cur` (NULL: absent) at `version`.
 * Returns 0, RHEMA_ECONFLICT (someone else wrote first), or an error.
 */
static int write_session(struct rhema_store *st, const char *id, json_t *session, json_t *cur,
                         uint64_t version, struct rhema_record *out, char *err)
{
    int rc;
    size_t i, len = 0;
    json_t *p;
    json_t *new_parts = json_object_get(session, "participants");
    json_t *old_parts = cur ? json_object_get(cur, "participants") : NULL;
    const char *new_status = json_string_value(json_object_get(session, "status"));
    const char *old_status = cur ? json_string_value(json_object_get(cur, "status")) : NULL;
    const char *created_at = cur ? json_string_value(json_object_get(cur, "created_at")) : NULL;
    char *text = serialise(session, created_at, &len);
    if (!text)
        return errf(err, RHEMA_ENOMEM, "out of memory");

    size_t cap = 3 + json_array_size(new_parts) + json_array_size(old_parts);
    struct write_set ws = {.w = calloc(cap, sizeof *ws.w), .keys = calloc(cap, IDX_KEY_MAX),
                           .cap = cap};
    if (!ws.w || !ws.keys) {
        rc = errf(err, RHEMA_ENOMEM, "out of memory");
        goto out;
    }
    struct rhema_storage_write *rw = ws_add(&ws, RHEMA_WRITE_PUT, NS_SESSIONS, NULL, id);
    rw->value = text;
    rw->value_len = len;
    rw->expected_version = cur ? version : RHEMA_VERSION_ABSENT;
    if (!old_status || strcmp(old_status, new_status) != 0) {
        if (old_status)
            ws_add(&ws, RHEMA_WRITE_DEL, NS_BY_STATUS, old_status, id);
        ws_add(&ws, RHEMA_WRITE_PUT, NS_BY_STATUS, new_status, id);
    }
    json_array_foreach(old_parts, i, p) if (!json_array_has_string(new_parts, json_string_value(p)))
        ws_add(&ws, RHEMA_WRITE_DEL, NS_BY_PARTICIPANT, json_string_value(p), id);
    json_array_foreach(new_parts, i, p) if (!old_parts ||
                                            !json_array_has_string(old_parts, json_string_value(p)))
        ws_add(&ws, RHEMA_WRITE_PUT, NS_BY_PARTICIPANT, json_string_value(p), id);

    rc = st->vt->batch(st->conn, ws.w, ws.n);
    if (rc == RHEMA_ENOTFOUND) {
        /* An index entry we meant to delete is gone: repair by dropping such deletes. */
        rhema_log(RHEMA_LOG_WARN, "session", "index of session '%s' was incomplete; repairing", id);
        size_t k = 0;
        for (i = 0; i < ws.n; i++) {
            struct rhema_storage_value v;
            if (ws.w[i].op == RHEMA_WRITE_DEL &&
                st->vt->get(st->conn, ws.w[i].ns, ws.w[i].key, &v) == RHEMA_ENOTFOUND)
                continue;
            ws.w[k++] = ws.w[i];
        }
        ws.n = k;
        rc = st->vt->batch(st->conn, ws.w, ws.n);
        if (rc == RHEMA_ENOTFOUND)
            rc = RHEMA_ECONFLICT; /* the record itself changed: retry from the top */
    }
    if (rc == RHEMA_ECONFLICT)
        goto out;
    if (rc) {
        rc = storage_err(st, rc, "writing the session", err);
        goto out;
    }
    rc = record_with_access(st, id, text, len, ws.w[0].new_version, 0, out, err);
out:
    free(ws.w);
    free(ws.keys);
    free(text);
    return rc;
}

int rhema_session_put(struct rhema_store *st, const char *id, json_t *session, uint64_t if_match,
                      struct rhema_record *out, int *created, char err[RHEMA_ERRMSG_MAX])
{
    for (int attempt = 0; attempt < PUT_RETRIES; attempt++) {
        json_t *cur;
        uint64_t version;
        int rc = load_current(st, id, &cur, &version, err);
        if (rc)
            return rc;
        rc = check_if_match(if_match, cur, version, id, err);
        if (rc == 0)
            rc = write_session(st, id, session, cur, version, out, err);
        if (rc == 0)
            *created = cur == NULL;
        json_decref(cur);
        if (rc != RHEMA_ECONFLICT)
            return rc;
        if (if_match) /* the precondition named a version another writer just replaced */
            return errf(err, RHEMA_EPRECONDITION,
                        "session '%s' changed concurrently (If-Match)", id);
    }
    return errf(err, RHEMA_ECONFLICT, "session '%s' is being written concurrently; retry", id);
}

int rhema_session_get(struct rhema_store *st, const char *id, struct rhema_record *out,
                      char err[RHEMA_ERRMSG_MAX])
{
    struct rhema_storage_value v;
    int rc = st->vt->get(st->conn, NS_SESSIONS, id, &v);
    if (rc == RHEMA_ENOTFOUND)
        return errf(err, rc, "session '%s' not found", id);
    if (rc)
        return storage_err(st, rc, "reading the session", err);
    /* v.data is only valid until the next storage call: copy it first. */
    char *copy = malloc(v.len ? v.len : 1);
    if (!copy)
        return errf(err, RHEMA_ENOMEM, "out of memory");
    memcpy(copy, v.data, v.len);
    rc = record_with_access(st, id, copy, v.len, v.version, 1, out, err);
    free(copy);
    return rc;
}

int rhema_session_delete(struct rhema_store *st, const char *id, uint64_t if_match,
                         char err[RHEMA_ERRMSG_MAX])
{
    for (int attempt = 0; attempt < PUT_RETRIES; attempt++) {
        json_t *cur, *p;
        uint64_t version, count, last;
        size_t i;
        int rc = load_current(st, id, &cur, &version, err);
        if (rc)
            return rc;
        if (!cur)
            return errf(err, RHEMA_ENOTFOUND, "session '%s' not found", id);
        if ((rc = check_if_match(if_match, cur, version, id, err))) {
            json_decref(cur);
            return rc;
        }
        json_t *parts = json_object_get(cur, "participants");
        size_t cap = 3 + json_array_size(parts);
        struct write_set ws = {.w = calloc(cap, sizeof *ws.w), .keys = calloc(cap, IDX_KEY_MAX),
                               .cap = cap};
        if (!ws.w || !ws.keys) {
            free(ws.w);
            free(ws.keys);
            json_decref(cur);
            return errf(err, RHEMA_ENOMEM, "out of memory");
        }
        ws_add(&ws, RHEMA_WRITE_DEL, NS_SESSIONS, NULL, id)->expected_version = version;
        const char *status = json_string_value(json_object_get(cur, "status"));
        if (status)
            ws_add(&ws, RHEMA_WRITE_DEL, NS_BY_STATUS, status, id);
        json_array_foreach(parts, i, p)
            ws_add(&ws, RHEMA_WRITE_DEL, NS_BY_PARTICIPANT, json_string_value(p), id);
        rc = access_stored(st, id, &count, &last);
        if (rc == 0 && (count || last))
            ws_add(&ws, RHEMA_WRITE_DEL, NS_ACCESS, NULL, id);
        rc = st->vt->batch(st->conn, ws.w, ws.n);
        free(ws.w);
        free(ws.keys);
        json_decref(cur);
        if (rc == 0) {
            struct rhema_access_entry *e = access_slot(st, id, 0);
            if (e)
                e->delta = 0, e->last_ms = 0;
            return 0;
        }
        if (rc != RHEMA_ECONFLICT && rc != RHEMA_ENOTFOUND)
            return storage_err(st, rc, "deleting the session", err);
        if (if_match)
            return errf(err, RHEMA_EPRECONDITION,
                        "session '%s' changed concurrently (If-Match)", id);
    }
    return errf(err, RHEMA_ECONFLICT, "session '%s' is being written concurrently; retry", id);
}

int rhema_session_append_message(struct rhema_store *st, const char *id, json_t *message,
                                 uint64_t if_match, struct rhema_record *out, int *appended,
                                 char err[RHEMA_ERRMSG_MAX])
{
    for (int attempt = 0; attempt < PUT_RETRIES; attempt++) {
        json_t *cur, *m;
        uint64_t version;
        size_t i;
        int rc = load_current(st, id, &cur, &version, err);
        if (rc)
            return rc;
        if (!cur)
            return errf(err, RHEMA_ENOTFOUND, "session '%s' not found", id);
        if ((rc = check_if_match(if_match, cur, version, id, err))) {
            json_decref(cur);
            return rc;
        }
        json_t *msgs = json_object_get(cur, "messages");
        if (!json_is_array(msgs)) {
            json_decref(cur);
            return errf(err, RHEMA_ECORRUPT, "stored session '%s' has no messages array", id);
        }
        const char *mid = json_string_value(json_object_get(message, "id"));
        json_array_foreach(msgs, i, m)
        {
            if (strcmp(json_string_value(json_object_get(m, "id")), mid) != 0)
                continue;
            if (json_equal(m, message)) { /* a retry of the same append */
                json_decref(cur);
                *appended = 0;
                return rhema_session_get(st, id, out, err);
            }
            json_decref(cur);
            return errf(err, RHEMA_ECONFLICT,
                        "session '%s' already has a different message with id '%s'", id, mid);
        }
        json_array_append(msgs, message);
        /* Rebuild the session fields (drop stored metadata; serialise re-adds it). */
        json_t *session = json_object();
        for (const char *const *f = session_fields; *f; f++)
            json_object_set(session, *f, json_object_get(cur, *f));
        rc = write_session(st, id, session, cur, version, out, err);
        json_decref(session);
        json_decref(cur);
        if (rc == 0) {
            *appended = 1;
            return 0;
        }
        if (rc != RHEMA_ECONFLICT)
            return rc;
        if (if_match)
            return errf(err, RHEMA_EPRECONDITION,
                        "session '%s' changed concurrently (If-Match)", id);
    }
    return errf(err, RHEMA_ECONFLICT, "session '%s' is being written concurrently; retry", id);
}

/* ---- listing ---- */

struct id_list {
    char **v;
    size_t n, cap;
    size_t strip; /* bytes of index prefix to strip from keys */
    int oom;
};

static int collect_id(void *ctx, const char *key, const void *value, size_t len, uint64_t ver)
{
    (void)value, (void)len, (void)ver;
    struct id_list *l = ctx;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        void *nv = realloc(l->v, cap * sizeof *l->v);
        if (!nv) {
            l->oom = 1;
            return RHEMA_ENOMEM;
        }
        l->v = nv;
        l->cap = cap;
    }
    if (!(l->v[l->n] = strdup(key + l->strip))) {
        l->oom = 1;
        return RHEMA_ENOMEM;
    }
    l->n++;
    return 0;
}

int rhema_session_list(struct rhema_store *st, const char *status, const char *participant,
                       size_t limit, const char *cursor, char **out, size_t *out_len,
                       char err[RHEMA_ERRMSG_MAX])
{
    int rc = 0;
    char from[IDX_KEY_MAX + 2], to[IDX_KEY_MAX + 2];
    const char *ns = NS_SESSIONS, *prefix = NULL;
    struct id_list ids = {0};
    json_t *items = NULL;
    char *text = NULL;

    if (limit == 0)
        limit = RHEMA_LIST_LIMIT_DEFAULT;
    if (limit > RHEMA_LIST_LIMIT_MAX)
        limit = RHEMA_LIST_LIMIT_MAX;
    if (status && !rhema_session_status_valid(status)) {
        char names[96];
        join_list(names, sizeof names, session_statuses);
        return errf(err, RHEMA_EINVAL, "parameter 'status': expected one of %s", names);
    }
    if (participant && !rhema_id_valid(participant))
        return errf(err, RHEMA_EINVAL, "parameter 'participant': expected an id");
    if (cursor && !rhema_id_valid(cursor))
        return errf(err, RHEMA_EINVAL, "parameter 'cursor': not a cursor this server issued");
    /* Pick the index: status when given (participant then filters), else participant. */
    if (status) {
        ns = NS_BY_STATUS;
        prefix = status;
    } else if (participant) {
        ns = NS_BY_PARTICIPANT;
        prefix = participant;
    }
    if (prefix) {
        snprintf(from, sizeof from, "%s/%s%s", prefix, cursor ? cursor : "", cursor ? "\x01" : "");
        snprintf(to, sizeof to, "%s0", prefix); /* '0' follows '/' */
        ids.strip = strlen(prefix) + 1;
    } else if (cursor) {
        snprintf(from, sizeof from, "%s\x01", cursor);
    }
    int have_from = prefix || cursor;
    items = json_array();
    int more = 0;
    /* Scan in chunks: a participant filter on the status index may skip entries. */
    while (json_array_size(items) <= limit) {
        size_t want = limit + 1 - json_array_size(items);
        ids.n = 0;
        rc = st->vt->scan(st->conn, ns, have_from ? from : NULL, prefix ? to : NULL,
                          want, collect_id, &ids);
        if (rc) {
            rc = ids.oom ? errf(err, RHEMA_ENOMEM, "out of memory")
                         : storage_err(st, rc, "listing sessions", err);
            goto out;
        }
        for (size_t i = 0; i < ids.n; i++) {
            json_t *cur;
            uint64_t version;
            if (json_array_size(items) > limit)
                break;
            rc = load_current(st, ids.v[i], &cur, &version, err);
            if (rc)
                goto out;
            if (!cur)
                continue; /* deleted between the scan and the read */
            if (status && participant &&
                !json_array_has_string(json_object_get(cur, "participants"), participant)) {
                json_decref(cur);
                continue;
            }
            uint64_t count, last;
            struct rhema_access_entry *e;
            if ((rc = access_stored(st, ids.v[i], &count, &last))) {
                json_decref(cur);
                rc = storage_err(st, rc, "reading access counts", err);
                goto out;
            }
            if ((e = access_slot(st, ids.v[i], 0))) {
                count += e->delta;
                if (e->last_ms > last)
                    last = e->last_ms;
            }
            json_object_set_new(cur, "version", json_integer((json_int_t)version));
            json_object_set_new(cur, "access_count", json_integer((json_int_t)count));
            if (last) {
                char t[RHEMA_TIME_MAX];
                rhema_time_format(last, t);
                json_object_set_new(cur, "last_accessed", json_string(t));
            } else {
                json_object_set_new(cur, "last_accessed", json_null());
            }
            json_array_append_new(items, cur);
        }
        if (ids.n < want)
            break; /* the range is exhausted */
        /* continue after the last key scanned */
        const char *last_id = ids.v[ids.n - 1];
        if (prefix)
            snprintf(from, sizeof from, "%s/%s\x01", prefix, last_id);
        else
            snprintf(from, sizeof from, "%s\x01", last_id);
        have_from = 1;
        for (size_t i = 0; i < ids.n; i++)
            free(ids.v[i]);
        ids.n = 0;
    }
    if (json_array_size(items) > limit) {
        more = 1;
        json_array_remove(items, limit);
    }
    json_t *page = json_object();
    json_object_set(page, "items", items);
    if (more) {
        json_t *last = json_array_get(items, limit - 1);
        json_object_set(page, "next_cursor", json_object_get(last, "id"));
    } else {
        json_object_set_new(page, "next_cursor", json_null());
    }
    text = json_dumps(page, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(page);
    if (!text) {
        rc = errf(err, RHEMA_ENOMEM, "out of memory");
        goto out;
    }
    *out = text;
    *out_len = strlen(text);
    rc = 0;
out:
    for (size_t i = 0; i < ids.n; i++)
        free(ids.v[i]);
    free(ids.v);
    json_decref(items);
    return rc;
}
