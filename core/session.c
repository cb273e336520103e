/*
 * session -- validation and storage of coordination sessions.
 * See session.h for the storage layout and the access-count scheme.
 */
#include "rhema_build.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "watch/inbox.h"
#include "json_fields.h"
#include "log.h"
#include "session.h"
#include "session_access.h"
#include "util.h"
#include "watch/feed.h"

#define NS_SESSIONS "sessions"
#define NS_BY_STATUS "sessions.status"
#define NS_BY_PARTICIPANT "sessions.participant"
#define NS_ACCESS RHEMA_ACCESS_NS

#define TOPIC_MAX 1024
#define PARTICIPANTS_MAX 1024
#define MESSAGE_TYPE_MAX 128
#define PUT_RETRIES 16


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

int rhema_session_status_valid(const char *s) { return s && rhema_name_in_list(s, session_statuses); }

/* ---- field validators: each writes a normalised value into `dst` under `key` ---- */

static int check_id(json_t *dst, const char *key, json_t *v, const char *prefix, char *err)
{
    if (!v)
        return rhema_set_errbuf(err, RHEMA_EINVAL, "field '%s%s': required", prefix, key);
    if (!json_is_string(v) || !rhema_id_valid(json_string_value(v)))
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "field '%s%s': expected an id of 1-128 characters [A-Za-z0-9._:-]",
                                prefix, key);
    json_object_set(dst, key, v);
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
        return rhema_set_errbuf(err, RHEMA_EINVAL, "field '%s%s': expected an array of ids", prefix,
                                key);
    if (json_array_size(v) > max)
        return rhema_set_errbuf(err, RHEMA_EINVAL, "field '%s%s': at most %zu entries", prefix, key,
                                max);
    json_array_foreach(v, i, item)
    {
        if (!json_is_string(item) || !rhema_id_valid(json_string_value(item)))
            return rhema_set_errbuf(
                err, RHEMA_EINVAL,
                "field '%s%s[%zu]': expected an id of 1-128 characters [A-Za-z0-9._:-]", prefix,
                key, i);
        for (j = 0; j < i; j++)
            if (strcmp(json_string_value(json_array_get(v, j)), json_string_value(item)) == 0)
                return rhema_set_errbuf(err, RHEMA_EINVAL, "field '%s%s[%zu]': duplicate id '%s'",
                                        prefix, key, i, json_string_value(item));
    }
    json_object_set(dst, key, v);
    return 0;
}

static int message_validate(json_t *body, const char *prefix, json_t **out, char *err)
{
    int rc;
    json_t *m, *v;
    if (!json_is_object(body))
        return rhema_set_errbuf(err, RHEMA_EINVAL, "field '%s': expected a JSON object",
                                *prefix ? prefix : "body");
    if ((rc = rhema_field_known(body, message_fields, NULL, prefix, err)))
        return rc;
    m = json_object();
    if ((rc = check_id(m, "id", json_object_get(body, "id"), prefix, err)))
        goto fail;
    v = json_object_get(body, "message_type");
    if (!v || !json_is_string(v) || json_string_length(v) == 0 ||
        json_string_length(v) > MESSAGE_TYPE_MAX) {
        rc = rhema_set_errbuf(err, RHEMA_EINVAL,
                              "field '%smessage_type': expected a string of 1-%d bytes", prefix,
                              MESSAGE_TYPE_MAX);
        goto fail;
    }
    json_object_set(m, "message_type", v);
    if ((rc = rhema_field_enum(m, "priority", json_object_get(body, "priority"), priorities, "Normal",
                         prefix, err)))
        goto fail;
    if ((rc = check_id(m, "sender_id", json_object_get(body, "sender_id"), prefix, err)))
        goto fail;
    if ((rc = check_id_array(m, "recipient_ids", json_object_get(body, "recipient_ids"),
                             PARTICIPANTS_MAX, prefix, err)))
        goto fail;
    v = json_object_get(body, "content");
    if (!v || !json_is_string(v)) {
        rc = rhema_set_errbuf(err, RHEMA_EINVAL, "field '%scontent': expected a string", prefix);
        goto fail;
    }
    json_object_set(m, "content", v);
    v = json_object_get(body, "payload");
    json_object_set_new(m, "payload", v ? json_incref(v) : json_null());
    if ((rc = rhema_field_time(m, "timestamp", json_object_get(body, "timestamp"), RHEMA_TIME_NOW,
                               prefix, err)))
        goto fail;
    v = json_object_get(body, "requires_ack");
    if (v && !json_is_boolean(v)) {
        rc = rhema_set_errbuf(err, RHEMA_EINVAL, "field '%srequires_ack': expected true or false",
                              prefix);
        goto fail;
    }
    json_object_set_new(m, "requires_ack", json_boolean(v && json_is_true(v)));
    if ((rc = rhema_field_time(m, "expires_at", json_object_get(body, "expires_at"),
                               RHEMA_TIME_NULL, prefix, err)))
        goto fail;
    v = json_object_get(body, "metadata");
    if (v) {
        const char *k;
        json_t *mv;
        if (!json_is_object(v)) {
            rc = rhema_set_errbuf(err, RHEMA_EINVAL,
                                  "field '%smetadata': expected an object of strings", prefix);
            goto fail;
        }
        json_object_foreach(v, k, mv)
        {
            if (!json_is_string(mv)) {
                rc = rhema_set_errbuf(err, RHEMA_EINVAL, "field '%smetadata.%s': expected a string",
                                      prefix, k);
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
        return rhema_set_errbuf(err, RHEMA_EINVAL, "body: expected a JSON object");
    if ((rc = rhema_field_known(body, session_fields, metadata_fields, "", err)))
        return rc;
    v = json_object_get(body, "id");
    if (v && (!json_is_string(v) || strcmp(json_string_value(v), path_id) != 0))
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "field 'id': does not match the id '%s' in the path", path_id);
    s = json_object();
    json_object_set_new(s, "id", json_string(path_id));
    v = json_object_get(body, "topic");
    if (!v || !json_is_string(v) || json_string_length(v) == 0 ||
        json_string_length(v) > TOPIC_MAX) {
        rc = rhema_set_errbuf(err, RHEMA_EINVAL, "field 'topic': expected a string of 1-%d bytes",
                              TOPIC_MAX);
        goto fail;
    }
    json_object_set(s, "topic", v);
    if ((rc = check_id_array(s, "participants", json_object_get(body, "participants"),
                             PARTICIPANTS_MAX, "", err)))
        goto fail;
    if ((rc = rhema_field_enum(s, "status", json_object_get(body, "status"), session_statuses,
                         "Active", "", err)))
        goto fail;
    if ((rc = rhema_field_time(s, "started_at", json_object_get(body, "started_at"), RHEMA_TIME_NOW,
                               "", err)))
        goto fail;
    if ((rc = rhema_field_time(s, "ended_at", json_object_get(body, "ended_at"), RHEMA_TIME_NULL,
                               "", err)))
        goto fail;
    v = json_object_get(body, "messages");
    json_t *msgs = json_array();
    json_object_set_new(s, "messages", msgs);
    if (v && !json_is_array(v)) {
        rc = rhema_set_errbuf(err, RHEMA_EINVAL,
                              "field 'messages': expected an array of AgentMessage");
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
                rc = rhema_set_errbuf(err, RHEMA_EINVAL,
                                      "field 'messages[%zu].id': duplicate id '%s'", i, mid);
                goto fail;
            }
        }
        json_array_append_new(msgs, m);
    }
    v = json_object_get(body, "decisions");
    if (v) {
        if (!json_is_array(v)) {
            rc = rhema_set_errbuf(err, RHEMA_EINVAL,
                                  "field 'decisions': expected an array of objects");
            goto fail;
        }
        json_array_foreach(v, i, item)
        {
            if (!json_is_object(item)) {
                rc = rhema_set_errbuf(err, RHEMA_EINVAL,
                                      "field 'decisions[%zu]': expected an object", i);
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

/* ---- access counts (session_access.h: a table shared by the workers, its own writer) ---- */

#define access_rec rhema_access_rec
#define access_parse rhema_access_parse

/* The store's table: the shared one, or its own made now (NULL without memory). */
static struct rhema_access_table *access_table(struct rhema_store *st)
{
    if (!st->access && rhema_access_table_new(&st->access) == 0)
        st->own_access = 1;
    return st->access;
}

/* The stored access record of id (all zero when none). */
static int access_read(struct rhema_store *st, const char *id, struct access_rec *a)
{
    struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
    memset(a, 0, sizeof *a);
    int rc = st->vt->get(st->conn, NS_ACCESS, id, &v);
    if (rc == RHEMA_ENOTFOUND)
        return 0;
    if (rc)
        return rc;
    access_parse(&v, a);
    return 0;
}

/*
 * Read n entries of namespace ns with get_many(), RHEMA_STORAGE_GET_MANY_MAX
 * per call -- on a server backend one round trip instead of one per entry:
 * key(ctx, i) names entry i (NULL: not wanted), got(ctx, i, rc, v) takes
 * each one read (rc 0 or RHEMA_ENOTFOUND).  Best effort: without
 * get_many(), for fewer than two entries, or after a failed call, the rest
 * is left to be read one by one.
 */
typedef const char *(*read_ahead_key_fn)(void *ctx, size_t i);
typedef void (*read_ahead_got_fn)(void *ctx, size_t i, int rc, const struct rhema_storage_value *v);

static void read_ahead(struct rhema_store *st, const char *ns, size_t n, read_ahead_key_fn key,
                       read_ahead_got_fn got, void *ctx)
{
    const char *keys[RHEMA_STORAGE_GET_MANY_MAX], *nss[RHEMA_STORAGE_GET_MANY_MAX];
    size_t at[RHEMA_STORAGE_GET_MANY_MAX];
    struct rhema_storage_value vals[RHEMA_STORAGE_GET_MANY_MAX];
    int rcs[RHEMA_STORAGE_GET_MANY_MAX];
    size_t i = 0;
    if (!st->vt->get_many)
        return;
    for (i = 0; i < RHEMA_STORAGE_GET_MANY_MAX; i++)
        vals[i].size = sizeof vals[i];
    i = 0;
    while (i < n) {
        size_t m = 0;
        for (; i < n && m < RHEMA_STORAGE_GET_MANY_MAX; i++)
            if ((keys[m] = key(ctx, i)) != NULL) {
                nss[m] = ns;
                at[m++] = i;
            }
        if (m < 2 || st->vt->get_many(st->conn, nss, keys, m, vals, rcs) != 0)
            return;
        for (size_t j = 0; j < m; j++)
            got(ctx, at[j], rcs[j], &vals[j]);
    }
}

int rhema_store_flush_access(struct rhema_store *st)
{
    return st->access ? rhema_access_flush(st->access, st->vt, st->conn) : 0;
}

void rhema_store_release(struct rhema_store *st)
{
    if (st->own_access) {
        rhema_store_flush_access(st);
        rhema_access_table_free(st->access);
    }
    st->access = NULL;
    st->own_access = 0;
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

/* The counts of id over its stored access record *a, counting nothing. */
static void access_merge(struct rhema_store *st, const char *id, const struct access_rec *a,
                         uint64_t *count, uint64_t *last)
{
    *count = a->count;
    *last = a->last_ms;
    if (st->access)
        rhema_access_count(st->access, id, a, 0, 0, count, last);
}

/*
 * Record of id with its current access counts, counting this read when
 * count_this; `known` is its stored access record when already read.  A
 * store with a table of its own flushes it once it has grown large: at
 * once, or when flush is not NULL by setting *flush (the caller holds
 * values of a storage call that the flush would end).
 */
static int record_with_access(struct rhema_store *st, const char *id, const char *stored,
                              size_t len, uint64_t version, int count_this,
                              const struct access_rec *known, int *flush, struct rhema_record *out,
                              char *err)
{
    struct access_rec a;
    uint64_t count, last;
    int rc = 0;
    if (known)
        a = *known;
    else
        rc = access_read(st, id, &a);
    if (rc)
        return rhema_store_error(st, rc, "reading access counts", err);
    if (count_this) {
        struct rhema_access_table *t = access_table(st);
        if (!t)
            return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
        count = a.count, last = a.last_ms;
        if (rhema_access_count(t, id, &a, 1, rhema_realtime_ms(), &count, &last)) {
            if (flush) /* a table of its own, grown large: no writer */
                *flush = 1;
            else
                rhema_store_flush_access(st);
        }
    } else {
        access_merge(st, id, &a, &count, &last);
    }
    rc = make_record(stored, len, version, count, last, out);
    if (rc == RHEMA_ECORRUPT)
        return rhema_set_errbuf(err, rc, "stored session '%s' is not a JSON object", id);
    if (rc)
        return rhema_set_errbuf(err, rc, "out of memory");
    return 0;
}

/* The stored record `data` of id, parsed into *cur (an object) with its version. */
static int parse_current(const char *id, const void *data, size_t len, uint64_t version,
                         json_t **cur, uint64_t *cur_version, char *err)
{
    json_error_t jerr;
    *cur = rhema_json_loadb(data, len, 0, &jerr);
    if (!*cur || !json_is_object(*cur)) {
        json_decref(*cur);
        *cur = NULL;
        *cur_version = 0;
        return rhema_set_errbuf(err, RHEMA_ECORRUPT, "stored session '%s' is corrupt: %s", id,
                                jerr.text);
    }
    *cur_version = version;
    return 0;
}

/* The current record of id, parsed; *cur NULL when absent. */
static int load_current(struct rhema_store *st, const char *id, json_t **cur, uint64_t *version,
                        char *err)
{
    struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
    *cur = NULL;
    *version = 0;
    int rc = st->vt->get(st->conn, NS_SESSIONS, id, &v);
    if (rc == RHEMA_ENOTFOUND)
        return 0;
    if (rc)
        return rhema_store_error(st, rc, "reading the session", err);
    return parse_current(id, v.data, v.len, v.version, cur, version, err);
}

int rhema_session_current(struct rhema_store *st, const char *id, json_t **cur,
                          uint64_t *version, char err[RHEMA_ERRMSG_MAX])
{
    int rc = load_current(st, id, cur, version, err);
    if (rc == 0 && !*cur)
        return rhema_set_errbuf(err, RHEMA_ENOTFOUND, "session '%s' not found", id);
    return rc;
}

static int check_if_match(uint64_t if_match, const json_t *cur, uint64_t version, const char *id,
                          char *err)
{
    if (if_match == RHEMA_VERSION_ABSENT && cur)
        return rhema_set_errbuf(err, RHEMA_EPRECONDITION,
                                "session '%s' already exists (version %llu)", id,
                                (unsigned long long)version);
    if (if_match == RHEMA_VERSION_PRESENT && !cur)
        return rhema_set_errbuf(err, RHEMA_EPRECONDITION,
                                "session '%s' does not exist (If-Match: *)", id);
    if (RHEMA_IF_MATCH_VERSION(if_match) && (!cur || version != if_match)) {
        if (!cur)
            return rhema_set_errbuf(err, RHEMA_EPRECONDITION,
                                    "session '%s' does not exist (If-Match expected version %llu)",
                                    id, (unsigned long long)if_match);
        return rhema_set_errbuf(err, RHEMA_EPRECONDITION,
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
    w->size = sizeof *w;
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
/*
 * The stored record: the session's JSON text (`body`, a compact object as
 * rhema_session_text() makes it) with created_at, updated_at and
 * size_bytes spliced in before its closing brace -- no JSON tree is built
 * here, so the committer thread only copies bytes.
 */
static char *serialise_text(const char *body, size_t bl, const char *created_at, size_t *len)
{
    char now[RHEMA_TIME_MAX], head[128];
    if (bl < 2 || body[bl - 1] != '}')
        return NULL;
    rhema_time_format(rhema_realtime_ms(), now);
    int hl = snprintf(head, sizeof head, ",\"created_at\":\"%s\",\"updated_at\":\"%s\"",
                      created_at ? created_at : now, now);
    char tail[48];
    /* size_bytes: the stored size of the record, this member included */
    int tl = 0;
    size_t total = 0;
    for (size_t digits = 1; digits < 21; digits++) {
        total = bl - 1 + (size_t)hl + strlen(",\"size_bytes\":}") + digits;
        tl = snprintf(tail, sizeof tail, ",\"size_bytes\":%zu}", total);
        if (bl - 1 + (size_t)hl + (size_t)tl == total)
            break;
    }
    char *out = malloc(total + 1);
    if (out) {
        memcpy(out, body, bl - 1);
        memcpy(out + bl - 1, head, (size_t)hl);
        memcpy(out + bl - 1 + hl, tail, (size_t)tl + 1);
        *len = total;
    }
    return out;
}

char *rhema_session_text(json_t *session, size_t *len)
{
    char *t = rhema_json_dumps(session, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (t)
        *len = strlen(t);
    return t;
}

static char *serialise(json_t *session, const char *created_at, size_t *len)
{
    size_t bl;
    char *body = rhema_session_text(session, &bl);
    if (!body)
        return NULL;
    char *out = serialise_text(body, bl, created_at, len);
    free(body);
    return out;
}

/* ---- writes: prepare (read, check, compose) -> apply (batch/group) -> finish ---- */

/* What an op keeps between prepare and finish. */
struct op_state {
    json_t *cur;        /* the record read at prepare, or NULL */
    uint64_t version;   /* its version */
    char *text;         /* the serialised record to write (PUT/APPEND) */
    size_t len;
    struct write_set ws;
    char access_text[80]; /* the access record a create writes */
    char *event_text;   /* the change feed's record of this write (watch/feed.h), or NULL */
    size_t event_len;
    char *inbox_text;   /* a message's inbox entry (inbox.h), or NULL */
    size_t inbox_len;
    char (*inbox_keys)[RHEMA_INBOX_KEY_MAX + 1]; /* per recipient: ack key, then prefix */
    int repair;         /* drop deletes of index entries that are gone */
    /* the current record, read ahead for the whole group (read_ahead, op_got) */
    struct {
        int state; /* 0: not read ahead, 1: found (text), -1: absent */
        char *text;
        size_t len;
        uint64_t version;
    } pre;
};

static void pre_clear(struct op_state *s)
{
    free(s->pre.text);
    memset(&s->pre, 0, sizeof s->pre);
}

/* Clear what one attempt composed; keeps `repair` and the read-ahead record. */
static void op_state_clear(struct op_state *s)
{
    json_decref(s->cur);
    s->cur = NULL;
    s->version = 0;
    free(s->text);
    s->text = NULL;
    s->len = 0;
    free(s->ws.w);
    free(s->ws.keys);
    memset(&s->ws, 0, sizeof s->ws);
    s->access_text[0] = '\0';
    free(s->event_text);
    s->event_text = NULL;
    s->event_len = 0;
    free(s->inbox_text);
    s->inbox_text = NULL;
    s->inbox_len = 0;
    free(s->inbox_keys);
    s->inbox_keys = NULL;
}

/*
 * The change feed's record of this op (issue 12), added to its write set:
 * right after the session's PUT (same revision as the new version) for a
 * create, an update or a message, at the end for a delete.  No feed: nothing.
 */
static int add_event(struct rhema_store *st, struct rhema_session_op *op, struct op_state *s,
                     const char *type)
{
    if (!st->feed)
        return 0;
    struct rhema_feed_fields f = {.type = type, .id = op->id, .session = op->id};
    if (op->kind == RHEMA_SOP_APPEND) {
        f.id = json_string_value(json_object_get(op->input, "id"));
        f.agent = json_string_value(json_object_get(op->input, "sender_id"));
        f.recipients = json_object_get(op->input, "recipient_ids");
    }
    f.versioned = op->kind != RHEMA_SOP_DELETE;
    if (!(s->event_text = rhema_feed_record(&f, &s->event_len)))
        return rhema_set_errbuf(op->err, RHEMA_ENOMEM, "out of memory");
    rhema_feed_write(&s->ws.w[s->ws.n++], s->event_text, s->event_len);
    return 0;
}

/*
 * A message's inbox entries (inbox.h), in its append's batch: for each
 * recipient, the ack index PUT and right after it the sequenced inbox
 * entry, which shares the index entry's version.  No feed: no inboxes
 * (both need a plugin of storage minor 3).
 */
static const char *const prio_digit[] = {"0", "1", "2", "3", "4"};

static int add_inbox(struct rhema_store *st, struct rhema_session_op *op, struct op_state *s,
                     json_t *recipients)
{
    size_t i, n = json_array_size(recipients);
    json_t *r;
    const char *mid = json_string_value(json_object_get(op->input, "id"));
    int p = rhema_inbox_priority_digit(
        json_string_value(json_object_get(op->input, "priority")));
    if (!st->feed || !n)
        return 0;
    if (p < 0)
        p = 3;
    if (!(s->inbox_text = rhema_inbox_record(op->id, op->input, &s->inbox_len)) ||
        !(s->inbox_keys = calloc(2 * n, sizeof *s->inbox_keys)))
        return rhema_set_errbuf(op->err, RHEMA_ENOMEM, "out of memory");
    json_array_foreach(recipients, i, r)
    {
        const char *rid = json_string_value(r);
        char *ak = s->inbox_keys[2 * i], *pk = s->inbox_keys[2 * i + 1];
        if (rhema_inbox_ack_key(ak, sizeof s->inbox_keys[0], rid, op->id, mid) < 0 ||
            rhema_inbox_prefix(pk, sizeof s->inbox_keys[0], rid, p) < 0)
            return rhema_set_errbuf(op->err, RHEMA_EINVAL, "recipient id '%s' too long", rid);
        struct rhema_storage_write *w = ws_add(&s->ws, RHEMA_WRITE_PUT, RHEMA_INBOX_ACK_NS, NULL, ak);
        w->value = prio_digit[p];
        w->value_len = 1;
        w = ws_add(&s->ws, RHEMA_WRITE_PUT, RHEMA_INBOX_NS, NULL, pk);
        w->flags = RHEMA_WRITE_SEQUENCED;
        w->value = s->inbox_text;
        w->value_len = s->inbox_len;
    }
    return 0;
}

static int ws_alloc(struct write_set *ws, size_t cap)
{
    ws->w = calloc(cap, sizeof *ws->w);
    ws->keys = calloc(cap, IDX_KEY_MAX);
    ws->n = 0;
    ws->cap = cap;
    return ws->w && ws->keys ? 0 : RHEMA_ENOMEM;
}

/* After a batch failed with ENOTFOUND: drop deletes whose key is already gone. */
static void ws_drop_missing_deletes(struct rhema_store *st, struct write_set *ws)
{
    size_t k = 0;
    for (size_t i = 0; i < ws->n; i++) {
        struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
        if (i > 0 && ws->w[i].op == RHEMA_WRITE_DEL &&
            st->vt->get(st->conn, ws->w[i].ns, ws->w[i].key, &v) == RHEMA_ENOTFOUND)
            continue;
        if (k != i) {
            ws->w[k] = ws->w[i];
            if (ws->w[i].key == ws->keys[i]) {
                memcpy(ws->keys[k], ws->keys[i], IDX_KEY_MAX);
                ws->w[k].key = ws->keys[k];
            }
        }
        k++;
    }
    ws->n = k;
}

/* Compose the writes of a PUT of `session` over the current record. */
static int compose_put(struct rhema_store *st, struct rhema_session_op *op, struct op_state *s,
                       json_t *session)
{
    size_t i;
    json_t *p;
    json_t *new_parts = json_object_get(session, "participants");
    json_t *old_parts = s->cur ? json_object_get(s->cur, "participants") : NULL;
    const char *new_status = json_string_value(json_object_get(session, "status"));
    const char *old_status = s->cur ? json_string_value(json_object_get(s->cur, "status")) : NULL;
    const char *created_at =
        s->cur ? json_string_value(json_object_get(s->cur, "created_at")) : NULL;
    json_t *kept = NULL, *started = s->cur ? json_object_get(s->cur, "started_at") : NULL;
    if ((op->flags & RHEMA_SOP_STARTED_KEPT) && json_is_string(started)) {
        /* a replace without started_at keeps the stored one (RHEMA_SOP_STARTED_KEPT) */
        if (!(kept = json_copy(session)) || json_object_set(kept, "started_at", started) != 0) {
            json_decref(kept);
            return rhema_set_errbuf(op->err, RHEMA_ENOMEM, "out of memory");
        }
        session = kept;
    }
    s->text = op->input_text && session == op->input
                  ? serialise_text(op->input_text, op->input_len, created_at, &s->len)
                  : serialise(session, created_at, &s->len);
    json_decref(kept);
    json_t *recipients = op->kind == RHEMA_SOP_APPEND && st->feed
                             ? rhema_inbox_recipients(op->input)
                             : NULL;
    if (!s->text ||
        (op->kind == RHEMA_SOP_APPEND && st->feed && !recipients) ||
        ws_alloc(&s->ws, 5 + json_array_size(new_parts) + json_array_size(old_parts) +
                             2 * json_array_size(recipients)) != 0) {
        json_decref(recipients);
        return rhema_set_errbuf(op->err, RHEMA_ENOMEM, "out of memory");
    }
    struct write_set *ws = &s->ws;
    struct rhema_storage_write *rw = ws_add(ws, RHEMA_WRITE_PUT, NS_SESSIONS, NULL, op->id);
    rw->value = s->text;
    rw->value_len = s->len;
    rw->expected_version = s->cur ? s->version : RHEMA_VERSION_ABSENT;
    if (add_event(st, op, s,
                  op->kind == RHEMA_SOP_APPEND ? "message.created"
                  : s->cur                     ? "session.updated"
                                               : "session.created")) {
        json_decref(recipients);
        return RHEMA_ENOMEM;
    }
    if (!old_status || strcmp(old_status, new_status) != 0) {
        if (old_status)
            ws_add(ws, RHEMA_WRITE_DEL, NS_BY_STATUS, old_status, op->id);
        ws_add(ws, RHEMA_WRITE_PUT, NS_BY_STATUS, new_status, op->id);
    }
    json_array_foreach(old_parts, i, p) if (!json_array_has_string(new_parts, json_string_value(p)))
        ws_add(ws, RHEMA_WRITE_DEL, NS_BY_PARTICIPANT, json_string_value(p), op->id);
    json_array_foreach(new_parts, i, p) if (!old_parts ||
                                            !json_array_has_string(old_parts, json_string_value(p)))
        ws_add(ws, RHEMA_WRITE_PUT, NS_BY_PARTICIPANT, json_string_value(p), op->id);
    if (!s->cur) { /* a new session: a new access record, with a new incarnation */
        struct rhema_storage_write *aw = ws_add(ws, RHEMA_WRITE_PUT, NS_ACCESS, NULL, op->id);
        int n = rhema_access_format(s->access_text, sizeof s->access_text, 0, 0,
                                    rhema_access_new_incarnation());
        aw->value = s->access_text;
        aw->value_len = (size_t)n;
    }
    int irc = add_inbox(st, op, s, recipients);
    json_decref(recipients);
    return irc;
}

static int compose_delete(struct rhema_store *st, struct rhema_session_op *op, struct op_state *s)
{
    size_t i;
    json_t *p, *parts = json_object_get(s->cur, "participants");
    struct access_rec a;
    if (ws_alloc(&s->ws, 4 + json_array_size(parts)) != 0)
        return rhema_set_errbuf(op->err, RHEMA_ENOMEM, "out of memory");
    ws_add(&s->ws, RHEMA_WRITE_DEL, NS_SESSIONS, NULL, op->id)->expected_version = s->version;
    const char *status = json_string_value(json_object_get(s->cur, "status"));
    if (status)
        ws_add(&s->ws, RHEMA_WRITE_DEL, NS_BY_STATUS, status, op->id);
    json_array_foreach(parts, i, p)
        ws_add(&s->ws, RHEMA_WRITE_DEL, NS_BY_PARTICIPANT, json_string_value(p), op->id);
    int rc = access_read(st, op->id, &a);
    if (rc)
        return rhema_store_error(st, rc, "reading access counts", op->err);
    if (a.version)
        ws_add(&s->ws, RHEMA_WRITE_DEL, NS_ACCESS, NULL, op->id);
    return add_event(st, op, s, "session.deleted");
}

/*
 * The answer to an append: the message as stored and what a client needs
 * to go on (the session's version, which is also the ETag, its stored size
 * and its number of messages) -- not the whole session, which an append
 * would otherwise echo in full every time.
 */
static int append_answer(struct rhema_session_op *op, json_t *msg, uint64_t version,
                         json_int_t size_bytes, size_t count)
{
    json_t *a = json_pack("{s:s,s:I,s:I,s:I,s:O}", "session_id", op->id, "version",
                          (json_int_t)version, "size_bytes", size_bytes, "message_count",
                          (json_int_t)count, "message", msg);
    char *t = a ? rhema_json_dumps(a, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(a);
    if (!t)
        return rhema_set_errbuf(op->err, RHEMA_ENOMEM, "out of memory");
    rhema_record_release(&op->rec);
    op->rec.json = t;
    op->rec.len = strlen(t);
    op->rec.version = version;
    return 0;
}

/* APPEND: 1 when composed, 0 when finished early (a replay, or an error in op->rc). */
static int compose_append(struct rhema_store *st, struct rhema_session_op *op, struct op_state *s)
{
    size_t i;
    json_t *m, *msgs = json_object_get(s->cur, "messages");
    if (!json_is_array(msgs)) {
        op->rc = rhema_set_errbuf(op->err, RHEMA_ECORRUPT,
                                  "stored session '%s' has no messages array", op->id);
        return 0;
    }
    const char *mid = json_string_value(json_object_get(op->input, "id"));
    json_array_foreach(msgs, i, m)
    {
        if (strcmp(json_string_value(json_object_get(m, "id")), mid) != 0)
            continue;
        int same = json_equal(m, op->input);
        if (!same && (op->flags & RHEMA_SOP_TS_DEFAULTED)) {
            json_t *a = json_copy(m), *b = json_copy(op->input);
            json_object_del(a, "timestamp");
            json_object_del(b, "timestamp");
            same = json_equal(a, b);
            json_decref(a);
            json_decref(b);
        }
        if (same) { /* a retry of the same append: answer the stored message */
            op->created = 0;
            op->rc = append_answer(op, m, s->version,
                                   json_integer_value(json_object_get(s->cur, "size_bytes")),
                                   json_array_size(msgs));
            return 0;
        }
        op->rc = rhema_set_errbuf(op->err, RHEMA_ECONFLICT,
                                  "session '%s' already has a different message with id '%s'",
                                  op->id, mid);
        return 0;
    }
    json_t *session = json_object();
    for (const char *const *f = session_fields; *f; f++)
        json_object_set(session, *f, json_object_get(s->cur, *f));
    json_t *new_msgs = json_copy(msgs);
    json_array_append(new_msgs, op->input);
    json_object_set_new(session, "messages", new_msgs);
    int rc = compose_put(st, op, s, session);
    json_decref(session);
    if (rc) {
        op->rc = rc;
        return 0;
    }
    return 1;
}

int rhema_session_op_prepare(struct rhema_store *st, struct rhema_session_op *op)
{
    struct op_state *s = op->priv;
    if (!s && !(s = op->priv = calloc(1, sizeof *s))) {
        op->rc = rhema_set_errbuf(op->err, RHEMA_ENOMEM, "out of memory");
        return 0;
    }
    op_state_clear(s);
    op->attempts++;
    int rc = 0;
    if (s->pre.state > 0)
        rc = parse_current(op->id, s->pre.text, s->pre.len, s->pre.version, &s->cur, &s->version,
                           op->err);
    else if (s->pre.state == 0)
        rc = load_current(st, op->id, &s->cur, &s->version, op->err);
    pre_clear(s); /* used once: a retry reads again */
    if (rc) {
        op->rc = rc;
        return 0;
    }
    if (op->kind != RHEMA_SOP_PUT && !s->cur) {
        op->rc = rhema_set_errbuf(op->err, RHEMA_ENOTFOUND, "session '%s' not found", op->id);
        return 0;
    }
    if ((rc = check_if_match(op->if_match, s->cur, s->version, op->id, op->err))) {
        op->rc = rc;
        return 0;
    }
    switch (op->kind) {
    case RHEMA_SOP_PUT: rc = compose_put(st, op, s, op->input); break;
    case RHEMA_SOP_DELETE: rc = compose_delete(st, op, s); break;
    default:
        if (!compose_append(st, op, s))
            return 0;
        rc = 0;
    }
    if (rc) {
        op->rc = rc;
        return 0;
    }
    if (s->repair) {
        ws_drop_missing_deletes(st, &s->ws);
        s->repair = 0;
    }
    op->batch.size = sizeof op->batch;
    op->batch.writes = s->ws.w;
    op->batch.n = s->ws.n;
    op->batch.result = 0;
    return 1;
}

int rhema_session_op_finish(struct rhema_store *st, struct rhema_session_op *op, int rc)
{
    struct op_state *s = op->priv;
    if (rc == RHEMA_ENOTFOUND) {
        /*
         * A delete in the batch found nothing: the record itself went away
         * or changed meanwhile (another writer's delete won the race: the
         * next prepare sees that), or, with the record still at the version
         * this op read, an index entry is missing (repair it: drop such
         * deletes next time).  Only the second is worth a warning.
         */
        struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
        int grc = s->cur ? st->vt->get(st->conn, NS_SESSIONS, op->id, &v) : RHEMA_ENOTFOUND;
        if (grc == 0 && v.version == s->version && s->repair++ == 0)
            rhema_log(RHEMA_LOG_WARN, "session", "session '%s': index entry missing; repairing",
                      op->id);
        rc = RHEMA_ECONFLICT;
    }
    if (rc == RHEMA_ECONFLICT) {
        if (RHEMA_IF_MATCH_VERSION(op->if_match)) { /* the version named was just replaced */
            op->rc = rhema_set_errbuf(op->err, RHEMA_EPRECONDITION,
                                      "session '%s' changed concurrently (If-Match)", op->id);
            return 0;
        }
        if (op->attempts >= PUT_RETRIES) {
            op->rc = rhema_set_errbuf(op->err, RHEMA_ECONFLICT,
                                      "session '%s' is being written concurrently; retry", op->id);
            return 0;
        }
        return 1;
    }
    if (rc) {
        op->rc = rhema_store_error(st, rc,
                             op->kind == RHEMA_SOP_DELETE ? "deleting the session"
                                                          : "writing the session",
                             op->err);
        return 0;
    }
    if (s->event_text)
        rhema_feed_wake(st->feed); /* committed with its record: the feed reads it now */
    if (op->kind == RHEMA_SOP_DELETE) {
        if (st->access)
            rhema_access_forget(st->access, op->id);
        op->rc = 0;
        return 0;
    }
    op->created = op->kind == RHEMA_SOP_PUT ? s->cur == NULL : 1;
    if (op->kind == RHEMA_SOP_APPEND) {
        op->rc = append_answer(op, op->input, s->ws.w[0].new_version, (json_int_t)s->len,
                               json_array_size(json_object_get(s->cur, "messages")) + 1);
        return 0;
    }
    if (!s->cur) { /* just created: no reads counted yet, nothing to look up */
        rc = make_record(s->text, s->len, s->ws.w[0].new_version, 0, 0, &op->rec);
        op->rc = rc ? rhema_set_errbuf(op->err, rc, "out of memory") : 0;
        return 0;
    }
    op->rc = record_with_access(st, op->id, s->text, s->len, s->ws.w[0].new_version, 0, NULL, NULL,
                                &op->rec, op->err);
    return 0;
}

void rhema_session_op_release(struct rhema_session_op *op)
{
    if (op->priv) {
        op_state_clear(op->priv);
        pre_clear(op->priv);
        free(op->priv);
        op->priv = NULL;
    }
    json_decref(op->input);
    op->input = NULL;
    free(op->input_text);
    op->input_text = NULL;
    rhema_record_release(&op->rec);
}

/* The current records of a group's ops, read ahead: a copy in each op's state. */
static const char *op_key(void *ctx, size_t i)
{
    return ((struct rhema_session_op **)ctx)[i]->id;
}

static void op_got(void *ctx, size_t i, int rc, const struct rhema_storage_value *v)
{
    struct rhema_session_op *op = ((struct rhema_session_op **)ctx)[i];
    struct op_state *s = op->priv;
    if (!s && !(s = op->priv = calloc(1, sizeof *s)))
        return; /* its prepare reads it */
    pre_clear(s);
    if (rc == RHEMA_ENOTFOUND) {
        s->pre.state = -1;
    } else if ((s->pre.text = malloc(v->len + 1))) {
        memcpy(s->pre.text, v->data, v->len);
        s->pre.text[v->len] = '\0';
        s->pre.len = v->len;
        s->pre.version = v->version;
        s->pre.state = 1;
    }
}

void rhema_session_ops_run(struct rhema_store *st, struct rhema_session_op **ops, size_t n)
{
    struct rhema_session_op **todo = malloc(n * sizeof *todo);
    struct rhema_session_op **wait = malloc(n * sizeof *wait);
    struct rhema_storage_batch *group = malloc(n * sizeof *group);
    size_t ntodo = 0;
    if (!todo || !wait || !group) {
        for (size_t i = 0; i < n; i++)
            ops[i]->rc = rhema_set_errbuf(ops[i]->err, RHEMA_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        todo[ntodo++] = ops[i];
    while (ntodo) {
        size_t m = 0, nwait = 0;
        /*
         * One op per session in each round, in arrival order: the others of
         * the same session wait for the next round (their turn) instead of
         * losing a compare-and-set against the op before them -- fifty
         * writers of one session would otherwise spend the retries of all
         * but a few.  Waiting costs no attempt.
         */
        for (size_t i = 0; i < ntodo; i++) {
            size_t j;
            for (j = 0; j < m; j++)
                if (strcmp(todo[j]->id, todo[i]->id) == 0)
                    break;
            if (j < m)
                wait[nwait++] = todo[i];
            else
                todo[m++] = todo[i];
        }
        ntodo = m;
        m = 0;
        read_ahead(st, NS_SESSIONS, ntodo, op_key, op_got, todo);
        /* prepare: ops finished early (errors, replays) drop out */
        for (size_t i = 0; i < ntodo; i++)
            if (rhema_session_op_prepare(st, todo[i]))
                todo[m++] = todo[i];
        ntodo = m;
        if (!ntodo)
            goto next;
        for (size_t i = 0; i < ntodo; i++)
            group[i] = todo[i]->batch;
        int grc = 0;
        if (st->vt->group && ntodo > 1)
            grc = st->vt->group(st->conn, group, ntodo);
        else
            for (size_t i = 0; i < ntodo; i++)
                group[i].result = st->vt->batch(st->conn, group[i].writes, group[i].n);
        /* finish: ops that lost a race go round again */
        m = 0;
        for (size_t i = 0; i < ntodo; i++)
            if (rhema_session_op_finish(st, todo[i], grc ? grc : group[i].result))
                todo[m++] = todo[i];
        ntodo = m;
    next: /* the retries first, then the ops that waited, each in arrival order */
        memcpy(todo + ntodo, wait, nwait * sizeof *wait);
        ntodo += nwait;
    }
out:
    free(todo);
    free(wait);
    free(group);
}

/* Run one op synchronously; returns its rc. */
static int run_one(struct rhema_store *st, struct rhema_session_op *op)
{
    rhema_session_ops_run(st, &op, 1);
    return op->rc;
}

int rhema_session_put(struct rhema_store *st, const char *id, json_t *session, uint64_t if_match,
                      struct rhema_record *out, int *created, char err[RHEMA_ERRMSG_MAX])
{
    struct rhema_session_op op = {.kind = RHEMA_SOP_PUT, .input = json_incref(session),
                                  .if_match = if_match};
    snprintf(op.id, sizeof op.id, "%s", id);
    int rc = run_one(st, &op);
    if (rc == 0) {
        *out = op.rec;
        op.rec.json = NULL;
        *created = op.created;
    } else {
        memcpy(err, op.err, RHEMA_ERRMSG_MAX);
    }
    rhema_session_op_release(&op);
    return rc;
}

/*
 * The answer to a read of id from what one get_many() gave for its record
 * (rc, *rec) and its access record (arc, *acc); see record_with_access()
 * for flush.
 */
static int read_answer(struct rhema_store *st, const char *id, int rc,
                       const struct rhema_storage_value *rec, int arc,
                       const struct rhema_storage_value *acc, int *flush,
                       struct rhema_record *out, char *err)
{
    struct access_rec a;
    memset(&a, 0, sizeof a);
    if (rc == 0) {
        if (arc == 0)
            access_parse(acc, &a);
        else if (arc != RHEMA_ENOTFOUND)
            rc = arc;
    }
    if (rc == RHEMA_ENOTFOUND)
        return rhema_set_errbuf(err, rc, "session '%s' not found", id);
    if (rc)
        return rhema_store_error(st, rc, "reading the session", err);
    return record_with_access(st, id, rec->data, rec->len, rec->version, 1, &a, flush, out, err);
}

/* A read on a plugin without get_many(): the record, then its access record. */
static int read_one(struct rhema_store *st, const char *id, struct rhema_record *out, char *err)
{
    struct rhema_storage_value v = {.size = sizeof v};
    int rc = st->vt->get(st->conn, NS_SESSIONS, id, &v);
    if (rc == RHEMA_ENOTFOUND)
        return rhema_set_errbuf(err, rc, "session '%s' not found", id);
    if (rc)
        return rhema_store_error(st, rc, "reading the session", err);
    /* v.data is only valid until the next storage call (the access read): copy it first. */
    char *copy = malloc(v.len ? v.len : 1);
    if (!copy)
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    memcpy(copy, v.data, v.len);
    rc = record_with_access(st, id, copy, v.len, v.version, 1, NULL, NULL, out, err);
    free(copy);
    return rc;
}

/*
 * Reads: each session's record and its access record, with one get_many()
 * for up to RHEMA_SESSION_GET_MANY_MAX of them where the plugin has it (one
 * round trip to a server for them all).
 */
void rhema_session_get_many(struct rhema_store *st, const char *const *ids, size_t n,
                            struct rhema_record *out, int *rcs, char (*errs)[RHEMA_ERRMSG_MAX])
{
    const char *ns[2 * RHEMA_SESSION_GET_MANY_MAX], *keys[2 * RHEMA_SESSION_GET_MANY_MAX];
    struct rhema_storage_value v[2 * RHEMA_SESSION_GET_MANY_MAX];
    int got[2 * RHEMA_SESSION_GET_MANY_MAX];
    if (!st->vt->get_many) {
        for (size_t i = 0; i < n; i++)
            rcs[i] = read_one(st, ids[i], &out[i], errs[i]);
        return;
    }
    for (size_t at = 0; at < n;) {
        size_t m = n - at < RHEMA_SESSION_GET_MANY_MAX ? n - at : RHEMA_SESSION_GET_MANY_MAX;
        int flush = 0;
        for (size_t i = 0; i < m; i++) {
            ns[2 * i] = NS_SESSIONS, ns[2 * i + 1] = NS_ACCESS;
            keys[2 * i] = keys[2 * i + 1] = ids[at + i];
            v[2 * i].size = v[2 * i + 1].size = sizeof v[0];
        }
        int rc = st->vt->get_many(st->conn, ns, keys, 2 * m, v, got);
        for (size_t i = 0; i < m; i++)
            rcs[at + i] = rc ? rhema_store_error(st, rc, "reading the session", errs[at + i])
                             : read_answer(st, ids[at + i], got[2 * i], &v[2 * i], got[2 * i + 1],
                                           &v[2 * i + 1], &flush, &out[at + i], errs[at + i]);
        if (flush) /* after the values of get_many were used */
            rhema_store_flush_access(st);
        at += m;
    }
}

int rhema_session_get(struct rhema_store *st, const char *id, struct rhema_record *out,
                      char err[RHEMA_ERRMSG_MAX])
{
    int rc;
    rhema_session_get_many(st, &id, 1, out, &rc, (char(*)[RHEMA_ERRMSG_MAX])err);
    return rc;
}

int rhema_session_delete(struct rhema_store *st, const char *id, uint64_t if_match,
                         char err[RHEMA_ERRMSG_MAX])
{
    struct rhema_session_op op = {.kind = RHEMA_SOP_DELETE, .if_match = if_match};
    snprintf(op.id, sizeof op.id, "%s", id);
    int rc = run_one(st, &op);
    if (rc)
        memcpy(err, op.err, RHEMA_ERRMSG_MAX);
    rhema_session_op_release(&op);
    return rc;
}

int rhema_session_append_message(struct rhema_store *st, const char *id, json_t *message,
                                 uint64_t if_match, struct rhema_record *out, int *appended,
                                 char err[RHEMA_ERRMSG_MAX])
{
    struct rhema_session_op op = {.kind = RHEMA_SOP_APPEND, .input = json_incref(message),
                                  .if_match = if_match};
    snprintf(op.id, sizeof op.id, "%s", id);
    int rc = run_one(st, &op);
    if (rc == 0) {
        *out = op.rec;
        op.rec.json = NULL;
        *appended = op.created;
    } else {
        memcpy(err, op.err, RHEMA_ERRMSG_MAX);
    }
    rhema_session_op_release(&op);
    return rc;
}

/* ---- listing ---- */

#define INTERSECT_CHUNK 128 /* index entries read per scan of an intersection */

/* Scan up to INTERSECT_CHUNK ids of index ns under prefix, from `from` (incl.) or after it. */
static int index_chunk(struct rhema_store *st, const char *ns, const char *prefix,
                       const char *from, int after, struct rhema_key_list *l)
{
    char f[IDX_KEY_MAX + 2], t[IDX_KEY_MAX + 2];
    snprintf(f, sizeof f, "%s/%s%s", prefix, from ? from : "", from && after ? "\x01" : "");
    snprintf(t, sizeof t, "%s0", prefix); /* '0' follows '/' */
    rhema_key_list_clear(l);
    l->strip = strlen(prefix) + 1;
    return st->vt->scan(st->conn, ns, f, t, INTERSECT_CHUNK, rhema_key_list_collect, l);
}

/*
 * The ids in both the status and the participant index, in id order, after
 * `after` (NULL: from the first): up to `want` of them appended to out;
 * *done when there are no more.  Both indexes are read a chunk at a time
 * from the same place; when one side ends within its chunk it is the
 * smaller: its ids are checked against the other (in the other's chunk, or
 * by a get past it) and nothing more of the larger index is read.  While
 * both chunks are full the walk leaps past ids that cannot match.  So a
 * participant of ten sessions costs a few reads whatever the number of
 * Active sessions, and the reverse.
 */
static int index_intersect(struct rhema_store *st, const char *status, const char *participant,
                           const char *after, size_t want, struct rhema_key_list *out, int *done)
{
    struct rhema_key_list a = {0}, b = {0};
    char cur[RHEMA_ID_MAX + 2] = "";
    int excl = after != NULL, rc = 0;
    if (after)
        snprintf(cur, sizeof cur, "%s", after);
    *done = 0;
    while (out->n < want) {
        if ((rc = index_chunk(st, NS_BY_STATUS, status, *cur || excl ? cur : NULL, excl, &a)) ||
            (rc = index_chunk(st, NS_BY_PARTICIPANT, participant, *cur || excl ? cur : NULL,
                              excl, &b)))
            goto out;
        if (a.n == 0 || b.n == 0) {
            *done = 1;
            break;
        }
        int full_a = a.n == INTERSECT_CHUNK, full_b = b.n == INTERSECT_CHUNK;
        if (!full_a || !full_b) {
            /* one side is complete: walk it, look each id up on the other side */
            struct rhema_key_list *sm = !full_a ? &a : &b, *lg = !full_a ? &b : &a;
            const char *lg_ns = !full_a ? NS_BY_PARTICIPANT : NS_BY_STATUS;
            const char *lg_prefix = !full_a ? participant : status;
            const char *lg_end = lg->n == INTERSECT_CHUNK ? lg->v[lg->n - 1] : NULL;
            size_t j = 0;
            for (size_t i = 0; i < sm->n && out->n < want; i++) {
                const char *id = sm->v[i];
                int found = 0;
                if (!lg_end || strcmp(id, lg_end) <= 0) {
                    while (j < lg->n && strcmp(lg->v[j], id) < 0)
                        j++;
                    found = j < lg->n && strcmp(lg->v[j], id) == 0;
                } else {
                    char k[IDX_KEY_MAX + 2];
                    struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
                    snprintf(k, sizeof k, "%s/%s", lg_prefix, id);
                    rc = st->vt->get(st->conn, lg_ns, k, &v);
                    if (rc && rc != RHEMA_ENOTFOUND && rc != RHEMA_ECORRUPT)
                        goto out;
                    found = rc != RHEMA_ENOTFOUND;
                    rc = 0;
                }
                if (found && (rc = rhema_key_list_collect(out, id, NULL, 0, 0)))
                    goto out;
            }
            if (out->n < want)
                *done = 1;
            break;
        }
        /* both full: the matches up to the smaller end are all in the two chunks */
        size_t i = 0, j = 0;
        while (i < a.n && j < b.n && out->n < want) {
            int c = strcmp(a.v[i], b.v[j]);
            if (c == 0) {
                if ((rc = rhema_key_list_collect(out, a.v[i], NULL, 0, 0)))
                    goto out;
                i++, j++;
            } else if (c < 0) {
                i++;
            } else {
                j++;
            }
        }
        if (out->n >= want)
            break;
        const char *end_a = a.v[a.n - 1], *end_b = b.v[b.n - 1];
        if (strcmp(end_a, b.v[0]) < 0) { /* leap: nothing of a's chunk is in b */
            snprintf(cur, sizeof cur, "%s", b.v[0]);
            excl = 0;
        } else if (strcmp(end_b, a.v[0]) < 0) {
            snprintf(cur, sizeof cur, "%s", a.v[0]);
            excl = 0;
        } else {
            snprintf(cur, sizeof cur, "%s", strcmp(end_a, end_b) < 0 ? end_a : end_b);
            excl = 1;
        }
    }
out:
    if (rc && (a.oom || b.oom))
        out->oom = 1;
    rhema_key_list_release(&a);
    rhema_key_list_release(&b);
    return rc;
}

int rhema_session_list(struct rhema_store *st, const char *status, const char *participant,
                       size_t limit, const char *cursor, char **out, size_t *out_len,
                       char err[RHEMA_ERRMSG_MAX])
{
    int rc = 0;
    char from[IDX_KEY_MAX + 2], to[IDX_KEY_MAX + 2];
    const char *ns = NS_SESSIONS, *prefix = NULL;
    struct rhema_key_list ids = {0};
    json_t *items = NULL, *unreadable = NULL;
    char *text = NULL;

    if (limit == 0)
        limit = RHEMA_LIST_LIMIT_DEFAULT;
    if (limit > RHEMA_LIST_LIMIT_MAX)
        limit = RHEMA_LIST_LIMIT_MAX;
    if (status && !rhema_session_status_valid(status)) {
        char names[96];
        rhema_name_list_join(names, sizeof names, session_statuses);
        return rhema_set_errbuf(err, RHEMA_EINVAL, "parameter 'status': expected one of %s", names);
    }
    if (participant && !rhema_id_valid(participant))
        return rhema_set_errbuf(err, RHEMA_EINVAL, "parameter 'participant': expected an id");
    if (cursor && !rhema_id_valid(cursor))
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "parameter 'cursor': not a cursor this server issued");
    /* Pick the index: both (their intersection), status, participant, or none. */
    int both = status && participant;
    char after[RHEMA_ID_MAX + 1] = "";
    if (cursor)
        snprintf(after, sizeof after, "%s", cursor);
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
    if (both)
        ids.strip = 0; /* index_intersect() collects bare ids */
    items = json_array();
    unreadable = json_array();
    int more = 0;
    size_t used = 0, page = limit; /* page: limit, or fewer when the byte cap ends it */
    /* Read in chunks: a record deleted meanwhile or unreadable is skipped. */
    while (json_array_size(items) <= page) {
        size_t want = page + 1 - json_array_size(items);
        int done = 0;
        rhema_key_list_clear(&ids);
        if (both) {
            rc = index_intersect(st, status, participant, *after ? after : NULL, want, &ids,
                                 &done);
        } else {
            rc = st->vt->scan(st->conn, ns, have_from ? from : NULL, prefix ? to : NULL, want,
                              rhema_key_list_collect, &ids);
            done = ids.n < want;
        }
        if (rc) {
            rc = ids.oom ? rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory")
                         : rhema_store_error(st, rc, "listing sessions", err);
            goto out;
        }
        for (size_t i = 0; i < ids.n; i++) {
            json_t *cur;
            uint64_t version;
            if (json_array_size(items) > page)
                break;
            rc = load_current(st, ids.v[i], &cur, &version, err);
            if (rc == RHEMA_ECORRUPT) { /* named, not fatal: the others are still readable */
                json_array_append_new(unreadable, json_string(ids.v[i]));
                continue;
            }
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
            struct access_rec a;
            if ((rc = access_read(st, ids.v[i], &a))) {
                json_decref(cur);
                if (rc == RHEMA_ECORRUPT) {
                    json_array_append_new(unreadable, json_string(ids.v[i]));
                    continue;
                }
                rc = rhema_store_error(st, rc, "reading access counts", err);
                goto out;
            }
            access_merge(st, ids.v[i], &a, &count, &last);
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
            if (json_array_size(items) <= page &&
                rhema_page_add(st, &used, json_dumpb(cur, NULL, 0, JSON_COMPACT)))
                page = json_array_size(items); /* full: one more only tells whether more */
        }
        if (done || ids.n == 0)
            break; /* the range is exhausted */
        /* continue after the last key scanned */
        const char *last_id = ids.v[ids.n - 1];
        snprintf(after, sizeof after, "%s", last_id);
        if (prefix)
            snprintf(from, sizeof from, "%s/%s\x01", prefix, last_id);
        else
            snprintf(from, sizeof from, "%s\x01", last_id);
        have_from = 1;
    }
    if (json_array_size(items) > page) {
        more = 1;
        json_array_remove(items, page);
    }
    json_t *pg = json_object();
    json_object_set(pg, "items", items);
    const char *next = NULL;
    if (more) {
        json_t *last = json_array_get(items, page - 1);
        json_object_set(pg, "next_cursor", json_object_get(last, "id"));
        next = json_string_value(json_object_get(last, "id"));
    } else {
        json_object_set_new(pg, "next_cursor", json_null());
    }
    /* unreadable records of this page's range; those past next_cursor come with the next page */
    rhema_unreadable_trim(unreadable, next);
    if (json_array_size(unreadable))
        json_object_set(pg, "unreadable", unreadable);
    text = rhema_json_dumps(pg, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(pg);
    if (!text) {
        rc = rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
        goto out;
    }
    *out = text;
    *out_len = strlen(text);
    rc = 0;
out:
    rhema_key_list_release(&ids);
    json_decref(items);
    json_decref(unreadable);
    return rc;
}

/* ---- retention cleanup (a maintenance hook, maintenance.h) ---- */

#define CLEANUP_PAGE 256 /* index entries read per scan */

struct id_page {
    char (*ids)[RHEMA_ID_MAX + 1];
    size_t n;
    char last[2 * RHEMA_ID_MAX + 2]; /* the last index key seen */
};

static int collect_status_cb(void *ctx, const char *key, const void *value, size_t len,
                             uint64_t version)
{
    struct id_page *pg = ctx;
    const char *slash = strchr(key, '/');
    (void)value, (void)len, (void)version;
    snprintf(pg->last, sizeof pg->last, "%s", key);
    if (slash != NULL && rhema_id_valid(slash + 1))
        snprintf(pg->ids[pg->n++], RHEMA_ID_MAX + 1, "%s", slash + 1);
    return 0;
}

/*
 * Decide on one session: 1 when it is still Completed/Cancelled and
 * updated before cutoff (*version set), 0 when not, < 0 on a read error.
 */
static int session_expired(const struct rhema_storage_plugin *vt, rhema_storage_conn *conn,
                           const char *id, uint64_t cutoff_ms, uint64_t *version)
{
    struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
    json_t *rec;
    const char *status, *updated;
    uint64_t ms = 0;
    int rc = vt->get(conn, "sessions", id, &v), old = 0;
    if (rc == RHEMA_ENOTFOUND)
        return 0;
    if (rc != 0)
        return rc;
    rec = rhema_json_loadb(v.data, v.len, 0, NULL);
    status = json_string_value(json_object_get(rec, "status"));
    updated = json_string_value(json_object_get(rec, "updated_at"));
    if (status != NULL && (strcmp(status, "Completed") == 0 || strcmp(status, "Cancelled") == 0) &&
        updated != NULL && rhema_time_parse(updated, &ms) == 0 && ms < cutoff_ms)
        old = 1;
    json_decref(rec);
    *version = v.version;
    return old;
}

int rhema_cleanup_sessions(const struct rhema_storage_plugin *vt, rhema_storage_conn *conn,
                           uint64_t cutoff_ms, size_t *removed, char **err)
{
    static const char *const statuses[] = {"Completed", "Cancelled"};
    struct rhema_store st;
    struct id_page pg = {0};
    char from[2 * RHEMA_ID_MAX + 4], to[64], msg[RHEMA_ERRMSG_MAX];
    size_t s, i, count = 0;
    int rc = 0;

    *removed = 0;
    pg.ids = calloc(CLEANUP_PAGE, sizeof *pg.ids);
    if (pg.ids == NULL)
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    rhema_store_init(&st, vt, conn);
    for (s = 0; s < 2 && rc == 0; s++) {
        /* index keys "<Status>/<id>": from "<Status>/" up to "<Status>0" ('/' + 1) */
        snprintf(from, sizeof from, "%s/", statuses[s]);
        snprintf(to, sizeof to, "%s0", statuses[s]);
        for (;;) {
            pg.n = 0;
            pg.last[0] = '\0';
            rc = vt->scan(conn, "sessions.status", from, to, CLEANUP_PAGE, collect_status_cb, &pg);
            if (rc != 0) {
                rhema_set_error(err, rc, "scanning sessions.status: %s", vt->errmsg(conn));
                break;
            }
            for (i = 0; i < pg.n; i++) {
                uint64_t version = 0;
                int old = session_expired(vt, conn, pg.ids[i], cutoff_ms, &version);
                if (old < 0) {
                    rc = rhema_set_error(err, old, "reading session '%s': %s", pg.ids[i],
                                         vt->errmsg(conn));
                    break;
                }
                if (old == 0)
                    continue;
                int drc = rhema_session_delete(&st, pg.ids[i], version, msg);
                if (drc == 0) {
                    count++;
                    rhema_log(RHEMA_LOG_DEBUG, "session", "removed %s session '%s' (retention)",
                              statuses[s], pg.ids[i]);
                } else if (drc != RHEMA_EPRECONDITION && drc != RHEMA_ENOTFOUND &&
                           drc != RHEMA_ECONFLICT) {
                    rc = rhema_set_error(err, drc, "deleting session '%s': %s", pg.ids[i], msg);
                    break;
                }
            }
            if (rc != 0 || pg.n < CLEANUP_PAGE || pg.last[0] == '\0')
                break;
            /* resume just after the last key: its immediate successor is key + "\x01" */
            snprintf(from, sizeof from, "%s\x01", pg.last);
        }
    }
    rhema_store_release(&st);
    free(pg.ids);
    *removed = count;
    return rc;
}

int rhema_session_cleanup(void *arg, const struct rhema_storage_plugin *vt,
                          rhema_storage_conn *conn, uint64_t cutoff_ms, size_t *removed, char **err)
{
    (void)arg;
    return rhema_cleanup_sessions(vt, conn, cutoff_ms, removed, err);
}
