/*
 * consensus -- validation and storage of per-node Raft state and logs.
 * See consensus.h for the storage layout and the batch rules.
 */
#include "rhema_build.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "consensus.h"
#include "json_fields.h"
#include "log.h"
#include "util.h"

#define NS_STATE "consensus.state"
#define NS_LOG "consensus.log"

#define RETRIES 16
#define COMMAND_MAX 1024
/* "<node>/<20 digits>" */
#define LOG_KEY_MAX (RHEMA_ID_MAX + 1 + 20 + 1)
/* Indexes and terms are JSON integers: at most INT64_MAX. */
#define INDEX_MAX ((uint64_t)INT64_MAX)

static const char *const roles[] = {"Follower", "Candidate", "Leader", NULL};
static const char *const state_fields[] = {"term",         "leader_id",      "state",
                                           "voted_for",    "last_log_index", "last_log_term",
                                           "commit_index", "node_id",        NULL};
/* Kept by the server; ignored on input so that a client can PUT back what it read. */
static const char *const state_metadata[] = {
    "applied_index", "term_count", "leader_changes", "last_leader_id", "entry_count",
    "bytes",         "created_at", "updated_at",     "version",        "log_start_index",
    "log_start_term", NULL};
static const char *const entry_fields[] = {"index", "term", "command", "data", NULL};
static const char *const entry_metadata[] = {"created_at", "committed_at", "applied_at",
                                             "size_bytes", "version",      NULL};

int rhema_consensus_role_valid(const char *s)
{
    return s && rhema_name_in_list(s, roles);
}

/* A stored unsigned counter of a record (0 when absent or not an integer). */
static uint64_t get_u(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v) : 0;
}

static void set_u(json_t *o, const char *key, uint64_t v)
{
    json_object_set_new(o, key, json_integer((json_int_t)v));
}

static void log_key(char buf[LOG_KEY_MAX], const char *node, uint64_t index)
{
    snprintf(buf, LOG_KEY_MAX, "%s/%020llu", node, (unsigned long long)index);
}

/* ---- validation ---- */

/* A JSON integer >= min into dst[key]; absent is an error when required. */
static int check_uint(json_t *dst, const char *key, json_t *v, uint64_t min, int required,
                      const char *prefix, char *err)
{
    if (!v) {
        if (required)
            return rhema_set_errbuf(err, RHEMA_EINVAL, "field '%s%s': required", prefix, key);
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < (json_int_t)min)
        return rhema_set_errbuf(err, RHEMA_EINVAL, "field '%s%s': expected an integer >= %llu",
                                prefix, key, (unsigned long long)min);
    json_object_set(dst, key, v);
    return 0;
}

/* An id or null (absent: null). */
static int check_opt_id(json_t *dst, const char *key, json_t *v, char *err)
{
    if (!v || json_is_null(v)) {
        json_object_set_new(dst, key, json_null());
        return 0;
    }
    if (!json_is_string(v) || !rhema_id_valid(json_string_value(v)))
        return rhema_set_errbuf(
            err, RHEMA_EINVAL,
            "field '%s': expected null or an id of 1-128 characters [A-Za-z0-9._:-]", key);
    json_object_set(dst, key, v);
    return 0;
}

int rhema_consensus_state_validate(json_t *body, const char *node, json_t **out,
                                   char err[RHEMA_ERRMSG_MAX])
{
    int rc;
    json_t *s, *v;
    if (!json_is_object(body))
        return rhema_set_errbuf(err, RHEMA_EINVAL, "body: expected a JSON object");
    if ((rc = rhema_field_known(body, state_fields, state_metadata, "", err)))
        return rc;
    v = json_object_get(body, "node_id");
    if (v && (!json_is_string(v) || strcmp(json_string_value(v), node) != 0))
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "field 'node_id': does not match the node '%s' in the path", node);
    s = json_object();
    if ((rc = check_uint(s, "term", json_object_get(body, "term"), 0, 1, "", err)))
        goto fail;
    if ((rc = check_opt_id(s, "leader_id", json_object_get(body, "leader_id"), err)))
        goto fail;
    v = json_object_get(body, "state");
    if (!v) {
        json_object_set_new(s, "state", json_string("Follower"));
    } else if (!json_is_string(v) || !rhema_consensus_role_valid(json_string_value(v))) {
        rc = rhema_set_errbuf(err, RHEMA_EINVAL,
                              "field 'state': expected one of Follower, Candidate, Leader");
        goto fail;
    } else {
        json_object_set(s, "state", v);
    }
    if ((rc = check_opt_id(s, "voted_for", json_object_get(body, "voted_for"), err)))
        goto fail;
    if ((rc = check_uint(s, "last_log_index", json_object_get(body, "last_log_index"), 0, 0, "",
                         err)) ||
        (rc = check_uint(s, "last_log_term", json_object_get(body, "last_log_term"), 0, 0, "",
                         err)) ||
        (rc = check_uint(s, "commit_index", json_object_get(body, "commit_index"), 0, 0, "", err)))
        goto fail;
    *out = s;
    return 0;
fail:
    json_decref(s);
    return rc;
}

static int entry_validate(json_t *body, const char *prefix, json_t **out, char *err)
{
    int rc;
    json_t *e, *v;
    if (!json_is_object(body)) {
        if (*prefix)
            return rhema_set_errbuf(err, RHEMA_EINVAL, "field '%.*s': expected an entry object",
                                    (int)strlen(prefix) - 1, prefix);
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "body: expected an entry object or an array of them");
    }
    if ((rc = rhema_field_known(body, entry_fields, entry_metadata, prefix, err)))
        return rc;
    e = json_object();
    if ((rc = check_uint(e, "index", json_object_get(body, "index"), 1, 1, prefix, err)) ||
        (rc = check_uint(e, "term", json_object_get(body, "term"), 0, 1, prefix, err)))
        goto fail;
    v = json_object_get(body, "command");
    if (!v || !json_is_string(v) || json_string_length(v) == 0 ||
        json_string_length(v) > COMMAND_MAX) {
        rc = rhema_set_errbuf(err, RHEMA_EINVAL,
                              "field '%scommand': expected a string of 1-%d bytes", prefix,
                              COMMAND_MAX);
        goto fail;
    }
    json_object_set(e, "command", v);
    v = json_object_get(body, "data");
    json_object_set_new(e, "data", v ? json_incref(v) : json_null());
    *out = e;
    return 0;
fail:
    json_decref(e);
    return rc;
}

int rhema_consensus_entries_validate(json_t *body, json_t **out, char err[RHEMA_ERRMSG_MAX])
{
    int rc;
    json_t *arr, *e, *item;
    size_t i;
    if (!json_is_array(body)) {
        if ((rc = entry_validate(body, "", &e, err)))
            return rc;
        arr = json_array();
        json_array_append_new(arr, e);
        *out = arr;
        return 0;
    }
    if (json_array_size(body) == 0)
        return rhema_set_errbuf(err, RHEMA_EINVAL, "body: expected at least one entry");
    arr = json_array();
    json_array_foreach(body, i, item)
    {
        char prefix[40];
        snprintf(prefix, sizeof prefix, "entries[%zu].", i);
        if ((rc = entry_validate(item, prefix, &e, err)))
            goto fail;
        json_array_append_new(arr, e);
        if (i > 0) {
            uint64_t prev = get_u(json_array_get(arr, i - 1), "index");
            uint64_t idx = get_u(e, "index");
            if (idx != prev + 1) {
                rc = rhema_set_errbuf(
                    err, RHEMA_EINVAL,
                    "field 'entries[%zu].index': expected %llu (the entries of one append must "
                    "have consecutive indexes)",
                    i, (unsigned long long)(prev + 1));
                goto fail;
            }
        }
    }
    *out = arr;
    return 0;
fail:
    json_decref(arr);
    return rc;
}

/* ---- records ---- */

/* The JSON text of obj with "version" spliced in before its closing brace. */
static int record_make(json_t *obj, uint64_t version, struct rhema_record *out, char *err)
{
    char *text = rhema_json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!text)
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    size_t len = strlen(text);
    char tail[48];
    int tl = snprintf(tail, sizeof tail, "%s\"version\":%llu}", len > 2 ? "," : "",
                      (unsigned long long)version);
    char *buf = realloc(text, len + (size_t)tl + 1);
    if (!buf) {
        free(text);
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    }
    memcpy(buf + len - 1, tail, (size_t)tl + 1);
    out->json = buf;
    out->len = len - 1 + (size_t)tl;
    out->version = version;
    return 0;
}

/* Parse a stored JSON object; NULL when corrupt. */
static json_t *parse_obj(const void *data, size_t len)
{
    json_t *v = rhema_json_loadb(data, len, 0, NULL);
    if (v && !json_is_object(v)) {
        json_decref(v);
        v = NULL;
    }
    return v;
}

/* node's state record (*cur NULL, *version 0 when there is none). */
static int state_load(struct rhema_store *st, const char *node, json_t **cur, uint64_t *version,
                      char *err)
{
    struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
    *cur = NULL;
    *version = 0;
    int rc = st->vt->get(st->conn, NS_STATE, node, &v);
    if (rc == RHEMA_ENOTFOUND)
        return 0;
    if (rc)
        return rhema_store_error(st, rc, "reading the consensus state", err);
    if (!(*cur = parse_obj(v.data, v.len)))
        return rhema_set_errbuf(err, RHEMA_ECORRUPT,
                                "stored consensus state of node '%s' is corrupt", node);
    *version = v.version;
    return 0;
}

/* The state of a node nobody wrote yet: term 0, no leader, an empty log. */
static json_t *state_initial(const char *node, const char *now)
{
    return json_pack("{s:s,s:i,s:n,s:s,s:n,s:i,s:i,s:i,s:i,s:i,s:i,s:n,s:i,s:i,s:s,s:s}", "node_id",
                     node, "term", 0, "leader_id", "state", "Follower", "voted_for",
                     "last_log_index", 0, "last_log_term", 0, "commit_index", 0, "applied_index", 0,
                     "term_count", 0, "leader_changes", 0, "last_leader_id", "entry_count", 0,
                     "bytes", 0, "created_at", now, "updated_at", now);
}

static char *dump(json_t *v, size_t *len)
{
    char *t = rhema_json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (t)
        *len = strlen(t);
    return t;
}

static void now_text(char buf[RHEMA_TIME_MAX])
{
    rhema_time_format(rhema_realtime_ms(), buf);
}

int rhema_consensus_state_get(struct rhema_store *st, const char *node, struct rhema_record *out,
                              char err[RHEMA_ERRMSG_MAX])
{
    json_t *cur;
    uint64_t version;
    int rc = state_load(st, node, &cur, &version, err);
    if (rc)
        return rc;
    if (!cur)
        return rhema_set_errbuf(err, RHEMA_ENOTFOUND, "consensus node '%s' not found", node);
    rc = record_make(cur, version, out, err);
    json_decref(cur);
    return rc;
}

/* ---- state ---- */

static int check_if_match(uint64_t if_match, const json_t *cur, uint64_t version, const char *node,
                          char *err)
{
    if (if_match == RHEMA_VERSION_ABSENT && cur)
        return rhema_set_errbuf(err, RHEMA_EPRECONDITION,
                                "consensus state of node '%s' already exists (version %llu)", node,
                                (unsigned long long)version);
    if (if_match == RHEMA_VERSION_PRESENT && !cur)
        return rhema_set_errbuf(err, RHEMA_EPRECONDITION,
                                "consensus state of node '%s' does not exist (If-Match: *)", node);
    if (RHEMA_IF_MATCH_VERSION(if_match) && (!cur || version != if_match)) {
        if (!cur)
            return rhema_set_errbuf(
                err, RHEMA_EPRECONDITION,
                "consensus node '%s' does not exist (If-Match expected version %llu)", node,
                (unsigned long long)if_match);
        return rhema_set_errbuf(
            err, RHEMA_EPRECONDITION,
            "consensus state of node '%s' is at version %llu, not %llu (If-Match)", node,
            (unsigned long long)version, (unsigned long long)if_match);
    }
    return 0;
}

/* Apply a validated ConsensusState to the record `rec` (a copy of the current one). */
static int state_apply(json_t *rec, json_t *in, const char *node, char *err)
{
    static const char *const from_log[] = {"last_log_index", "last_log_term", NULL};
    for (const char *const *f = from_log; *f; f++) {
        json_t *v = json_object_get(in, *f);
        if (v && (uint64_t)json_integer_value(v) != get_u(rec, *f))
            return rhema_set_errbuf(
                err, RHEMA_ECONFLICT,
                "field '%s': %lld does not match the log of node '%s' (%llu); the log "
                "changes through POST .../entries",
                *f, (long long)json_integer_value(v), node, (unsigned long long)get_u(rec, *f));
    }
    json_t *ci = json_object_get(in, "commit_index");
    if (ci && (uint64_t)json_integer_value(ci) > get_u(rec, "commit_index"))
        return rhema_set_errbuf(
            err, RHEMA_ECONFLICT,
            "field 'commit_index': %lld is above the current commit index %llu of node "
            "'%s'; advance it with POST .../commit",
            (long long)json_integer_value(ci), (unsigned long long)get_u(rec, "commit_index"),
            node);
    uint64_t term = get_u(in, "term");
    if (term != get_u(rec, "term"))
        set_u(rec, "term_count", get_u(rec, "term_count") + 1);
    set_u(rec, "term", term);
    json_t *leader = json_object_get(in, "leader_id");
    json_t *last = json_object_get(rec, "last_leader_id");
    if (json_is_string(leader) && (!json_is_string(last) || strcmp(json_string_value(leader),
                                                                   json_string_value(last)) != 0)) {
        set_u(rec, "leader_changes", get_u(rec, "leader_changes") + 1);
        json_object_set(rec, "last_leader_id", leader);
    }
    json_object_set(rec, "leader_id", leader);
    json_object_set(rec, "state", json_object_get(in, "state"));
    json_object_set(rec, "voted_for", json_object_get(in, "voted_for"));
    return 0;
}

int rhema_consensus_state_put(struct rhema_store *st, const char *node, json_t *state,
                              uint64_t if_match, struct rhema_record *out, int *created,
                              char err[RHEMA_ERRMSG_MAX])
{
    for (int attempt = 0; attempt < RETRIES; attempt++) {
        json_t *cur, *rec;
        uint64_t version;
        char now[RHEMA_TIME_MAX];
        int rc = state_load(st, node, &cur, &version, err);
        if (rc)
            return rc;
        if ((rc = check_if_match(if_match, cur, version, node, err))) {
            json_decref(cur);
            return rc;
        }
        now_text(now);
        rec = cur ? json_deep_copy(cur) : state_initial(node, now);
        if (!rec) {
            json_decref(cur);
            return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
        }
        if ((rc = state_apply(rec, state, node, err)))
            goto done;
        json_object_set_new(rec, "updated_at", json_string(now));
        size_t len;
        char *text = dump(rec, &len);
        if (!text) {
            rc = rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
            goto done;
        }
        struct rhema_storage_write w = {.size = sizeof(struct rhema_storage_write),
                                        .op = RHEMA_WRITE_PUT,
                                        .ns = NS_STATE,
                                        .key = node,
                                        .value = text,
                                        .value_len = len,
                                        .expected_version = cur ? version : RHEMA_VERSION_ABSENT};
        rc = st->vt->put(st->conn, &w);
        free(text);
        if (rc == RHEMA_ECONFLICT) {
            json_decref(cur);
            json_decref(rec);
            if (RHEMA_IF_MATCH_VERSION(if_match))
                return rhema_set_errbuf(
                    err, RHEMA_EPRECONDITION,
                    "consensus state of node '%s' changed concurrently (If-Match)", node);
            continue;
        }
        if (rc) {
            rc = rhema_store_error(st, rc, "writing the consensus state", err);
            goto done;
        }
        if ((rc = record_make(rec, w.new_version, out, err)) == 0)
            *created = cur == NULL;
    done:
        json_decref(cur);
        json_decref(rec);
        return rc;
    }
    return rhema_set_errbuf(err, RHEMA_ECONFLICT,
                            "consensus state of node '%s' is being written "
                            "concurrently; retry",
                            node);
}

/* ---- reading log ranges ---- */

struct ent {
    uint64_t index;
    uint64_t version;
    char *text;
    size_t len;
};

struct ent_list {
    struct ent *v;
    size_t n, cap;
    size_t strip; /* strlen("<node>/") */
    int bad;      /* a key that is not "<node>/<20 digits>" */
    int oom;
    const struct rhema_store *st; /* a list page's byte cap (NULL: none) */
    size_t used;
    size_t page; /* 0, or the entries a page holds once the byte cap ended it */
};

/* Count an entry of len bytes into l's page; 1 when the scan must stop (full, and one more read). */
static int ent_page_full(struct ent_list *l)
{
    return l->page && l->n > l->page;
}

static void ent_page_add(struct ent_list *l, size_t len)
{
    if (l->st && !l->page && rhema_page_add(l->st, &l->used, len))
        l->page = l->n;
}

/* The entries of a page: limit, or fewer when its byte cap ended it. */
static size_t ent_page(const struct ent_list *l, size_t limit)
{
    return l->page && l->page < limit ? l->page : limit;
}

static int collect_ent(void *ctx, const char *key, const void *value, size_t len, uint64_t ver)
{
    struct ent_list *l = ctx;
    if (!value) /* unreadable (atrest.h) */
        return RHEMA_ECORRUPT;
    if (ent_page_full(l))
        return 1;
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
    const char *digits = key + l->strip;
    char *end;
    unsigned long long idx = strtoull(digits, &end, 10);
    if (strlen(digits) != 20 || *end) {
        l->bad = 1;
        return RHEMA_ECORRUPT;
    }
    struct ent *e = &l->v[l->n];
    if (!(e->text = malloc(len + 1))) {
        l->oom = 1;
        return RHEMA_ENOMEM;
    }
    memcpy(e->text, value, len);
    e->text[len] = '\0';
    e->len = len;
    e->index = idx;
    e->version = ver;
    l->n++;
    ent_page_add(l, len);
    return 0;
}

static void ent_list_release(struct ent_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i].text);
    free(l->v);
    memset(l, 0, sizeof *l);
}

/*
 * Read the entries of node with lo <= index <= hi (hi 0: to the end), at
 * most limit of them (0: all), into l (which the caller releases).
 */
static int scan_range(struct rhema_store *st, const char *node, uint64_t lo, uint64_t hi,
                      size_t limit, struct ent_list *l, char *err)
{
    char from[LOG_KEY_MAX], to[LOG_KEY_MAX];
    log_key(from, node, lo);
    if (hi && hi < INDEX_MAX)
        log_key(to, node, hi + 1);
    else
        snprintf(to, sizeof to, "%s0", node); /* '0' follows '/' */
    l->strip = strlen(node) + 1;
    int rc = st->vt->scan(st->conn, NS_LOG, from, to, limit, collect_ent, l);
    if (rc) {
        if (l->oom)
            return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
        if (l->bad)
            return rhema_set_errbuf(err, RHEMA_ECORRUPT,
                                    "consensus log of node '%s' has a malformed key", node);
        return rhema_store_error(st, rc, "reading the consensus log", err);
    }
    return 0;
}

/* Check that l holds exactly the indexes lo..hi, in order. */
static int range_complete(const struct ent_list *l, const char *node, uint64_t lo, uint64_t hi,
                          char *err)
{
    for (size_t i = 0; i < l->n || lo + i <= hi; i++) {
        if (i >= l->n || l->v[i].index != lo + i)
            return rhema_set_errbuf(
                err, RHEMA_ECORRUPT,
                "consensus log of node '%s' is missing entry %llu (last_log_index says "
                "it exists)",
                node, (unsigned long long)(lo + i));
        if (lo + i > hi)
            return rhema_set_errbuf(
                err, RHEMA_ECORRUPT,
                "consensus log of node '%s' has entry %llu beyond last_log_index %llu", node,
                (unsigned long long)l->v[i].index, (unsigned long long)hi);
    }
    return 0;
}

/* ---- writes ---- */

/* A batch under construction; keys and values are owned here. */
struct wset {
    struct rhema_storage_write *w;
    char (*keys)[LOG_KEY_MAX];
    char **vals;
    size_t n, cap;
};

static int wset_alloc(struct wset *ws, size_t cap)
{
    memset(ws, 0, sizeof *ws);
    ws->w = calloc(cap, sizeof *ws->w);
    ws->keys = calloc(cap, sizeof *ws->keys);
    ws->vals = calloc(cap, sizeof *ws->vals);
    ws->cap = cap;
    return ws->w && ws->keys && ws->vals ? 0 : RHEMA_ENOMEM;
}

static void wset_release(struct wset *ws)
{
    for (size_t i = 0; ws->vals && i < ws->n; i++)
        free(ws->vals[i]);
    free(ws->w);
    free(ws->keys);
    free(ws->vals);
    memset(ws, 0, sizeof *ws);
}

/* Add a write of an entry (value: owned text, NULL for a delete). */
static void wset_log(struct wset *ws, uint32_t op, const char *node, uint64_t index, char *value,
                     size_t len, uint64_t expected)
{
    struct rhema_storage_write *w = &ws->w[ws->n];
    log_key(ws->keys[ws->n], node, index);
    ws->vals[ws->n] = value;
    w->size = sizeof *w;
    w->op = op;
    w->ns = NS_LOG;
    w->key = ws->keys[ws->n];
    w->value = value ? value : "";
    w->value_len = value ? len : 0;
    w->expected_version = expected;
    ws->n++;
}

static void wset_state(struct wset *ws, const char *node, char *value, size_t len,
                       uint64_t expected)
{
    struct rhema_storage_write *w = &ws->w[ws->n];
    snprintf(ws->keys[ws->n], LOG_KEY_MAX, "%s", node);
    ws->vals[ws->n] = value;
    w->size = sizeof *w;
    w->op = RHEMA_WRITE_PUT;
    w->ns = NS_STATE;
    w->key = ws->keys[ws->n];
    w->value = value;
    w->value_len = len;
    w->expected_version = expected;
    ws->n++;
}

/* The stored text of a new entry; *size the entry's own size_bytes. */
static char *entry_text(json_t *e, const char *now, uint64_t *size, size_t *len)
{
    size_t own;
    char *body = dump(e, &own);
    if (!body)
        return NULL;
    json_t *rec = json_copy(e);
    json_object_set_new(rec, "created_at", json_string(now));
    json_object_set_new(rec, "committed_at", json_null());
    json_object_set_new(rec, "applied_at", json_null());
    set_u(rec, "size_bytes", own);
    free(body);
    char *t = dump(rec, len);
    json_decref(rec);
    *size = own;
    return t;
}

/* The term and size_bytes of a stored entry; -1 when corrupt. */
static int entry_meta(const struct ent *e, uint64_t *term, uint64_t *size)
{
    json_t *o = parse_obj(e->text, e->len);
    if (!o || !json_is_integer(json_object_get(o, "term"))) {
        json_decref(o);
        return -1;
    }
    *term = get_u(o, "term");
    *size = get_u(o, "size_bytes");
    json_decref(o);
    return 0;
}

/*
 * The last step of a log change: rec takes the new entry_count, bytes and
 * updated_at and joins ws as the state write (compare-and-set on expected),
 * and the whole batch runs, all or nothing.  0 with *again 1 when another
 * writer got in between (read again); else 0 or a code and err.
 */
static int log_change_apply(struct rhema_store *st, const char *node, json_t *rec, uint64_t count,
                            uint64_t bytes, const char *now, struct wset *ws, uint64_t expected,
                            const char *what, int *again, char *err)
{
    size_t slen;
    char *stext;
    int rc;
    *again = 0;
    set_u(rec, "entry_count", count);
    set_u(rec, "bytes", bytes);
    json_object_set_new(rec, "updated_at", json_string(now));
    if (!(stext = dump(rec, &slen)))
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    wset_state(ws, node, stext, slen, expected);
    rc = st->vt->batch(st->conn, ws->w, ws->n);
    if (rc == RHEMA_ECONFLICT || rc == RHEMA_ENOTFOUND) {
        *again = 1;
        return 0;
    }
    return rc ? rhema_store_error(st, rc, what, err) : 0;
}

/* Append the reply's counters and make the record. */
static int append_reply(json_t *rec, uint64_t version,
                        const struct rhema_consensus_append_result *r, struct rhema_record *out,
                        char *err)
{
    json_t *o = json_copy(rec);
    set_u(o, "appended", r->appended);
    set_u(o, "skipped", r->skipped);
    set_u(o, "truncated", r->truncated);
    int rc = record_make(o, version, out, err);
    json_decref(o);
    return rc;
}

/*
 * One attempt at an append: read, match, compose one batch, apply.
 * Returns 1 when it lost a race and must be tried again.
 */
static int append_once(struct rhema_store *st, const char *node, json_t *entries,
                       struct rhema_record *out, struct rhema_consensus_append_result *res,
                       int *rc_out, char *err)
{
    json_t *cur = NULL, *rec = NULL;
    uint64_t version;
    struct ent_list have = {0}, old = {0};
    struct wset ws = {0};
    struct rhema_consensus_append_result r = {0};
    char now[RHEMA_TIME_MAX];
    int rc, again = 0;
    size_t n = json_array_size(entries);
    uint64_t first = get_u(json_array_get(entries, 0), "index");
    uint64_t lastreq = first + n - 1;

    now_text(now);
    if ((rc = state_load(st, node, &cur, &version, err)))
        goto out;
    rec = cur ? json_deep_copy(cur) : state_initial(node, now);
    if (!rec) {
        rc = rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
        goto out;
    }
    uint64_t last = get_u(rec, "last_log_index");
    uint64_t commit = get_u(rec, "commit_index");
    if (first > last + 1) {
        rc = rhema_set_errbuf(
            err, RHEMA_ECONFLICT,
            "field 'index': entry %llu would leave a gap: the log of node '%s' ends at "
            "index %llu",
            (unsigned long long)first, node, (unsigned long long)last);
        goto out;
    }
    /*
     * 1. log matching over the overlap [first, min(lastreq, last)].  Entries
     * below log_start_index were applied and compacted away (see
     * rhema_consensus_compact()): applied means committed, so they match.
     */
    uint64_t conflict = 0, start = last + 1;
    uint64_t log_start = get_u(rec, "log_start_index");
    if (log_start == 0)
        log_start = 1;
    uint64_t lo = first > log_start ? first : log_start;
    uint64_t hi = lastreq < last ? lastreq : last;
    if (first < lo) /* [first, min(lo - 1, lastreq)] is compacted */
        r.skipped += (lo < lastreq + 1 ? lo : lastreq + 1) - first;
    if (first <= last && lo <= hi) {
        if ((rc = scan_range(st, node, lo, hi, 0, &have, err)) ||
            (rc = range_complete(&have, node, lo, hi, err)))
            goto out;
        for (size_t i = 0; i < have.n; i++) {
            uint64_t term, size;
            if (entry_meta(&have.v[i], &term, &size)) {
                rc = rhema_set_errbuf(err, RHEMA_ECORRUPT,
                                      "consensus log of node '%s': entry %llu is corrupt", node,
                                      (unsigned long long)have.v[i].index);
                goto out;
            }
            if (term == get_u(json_array_get(entries, (size_t)(have.v[i].index - first)), "term")) {
                r.skipped++;
                continue;
            }
            conflict = have.v[i].index;
            break;
        }
    }
    if (conflict) {
        if (conflict <= commit) {
            rc = rhema_set_errbuf(
                err, RHEMA_ECONFLICT,
                "field 'index': entry %llu of node '%s' is committed (commit_index %llu); "
                "an entry of another term cannot replace it",
                (unsigned long long)conflict, node, (unsigned long long)commit);
            goto out;
        }
        start = conflict;
        /* everything from the conflict on goes: read versions and sizes */
        if ((rc = scan_range(st, node, conflict, last, 0, &old, err)) ||
            (rc = range_complete(&old, node, conflict, last, err)))
            goto out;
    } else if (lastreq <= last) {
        /* every entry is already there: nothing to write */
        if (!cur) {
            rc = rhema_set_errbuf(err, RHEMA_ECORRUPT, "consensus node '%s' has a log but no state",
                                  node);
            goto out;
        }
        *res = r;
        rc = append_reply(rec, version, &r, out, err);
        goto out;
    }
    /* 2. compose: new entries, replaced and dropped ones, then the state */
    size_t nwrites = (size_t)(lastreq - start + 1) + old.n + 1;
    if (wset_alloc(&ws, nwrites)) {
        rc = rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
        goto out;
    }
    uint64_t count = get_u(rec, "entry_count"), bytes = get_u(rec, "bytes");
    for (size_t i = 0; i < old.n; i++) { /* the dropped suffix: subtract it */
        uint64_t term, size;
        if (entry_meta(&old.v[i], &term, &size)) {
            rc = rhema_set_errbuf(err, RHEMA_ECORRUPT,
                                  "consensus log of node '%s': entry %llu is corrupt", node,
                                  (unsigned long long)old.v[i].index);
            goto out;
        }
        count = count ? count - 1 : 0;
        bytes = bytes >= size ? bytes - size : 0;
        r.truncated++;
    }
    for (uint64_t idx = start; idx <= lastreq; idx++) {
        json_t *e = json_array_get(entries, (size_t)(idx - first));
        uint64_t size;
        size_t len;
        char *text = entry_text(e, now, &size, &len);
        if (!text) {
            rc = rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
            goto out;
        }
        /* replace what is there (by version) or create (must be absent) */
        uint64_t expected = RHEMA_VERSION_ABSENT;
        if (idx <= last)
            expected = old.v[idx - start].version;
        wset_log(&ws, RHEMA_WRITE_PUT, node, idx, text, len, expected);
        count++;
        bytes += size;
        r.appended++;
    }
    for (uint64_t idx = lastreq + 1; conflict && idx <= last; idx++)
        wset_log(&ws, RHEMA_WRITE_DEL, node, idx, NULL, 0, old.v[idx - start].version);
    uint64_t lastterm = get_u(json_array_get(entries, n - 1), "term");
    set_u(rec, "last_log_index", lastreq);
    set_u(rec, "last_log_term", lastterm);
    /* 3. apply, all or nothing */
    if ((rc = log_change_apply(st, node, rec, count, bytes, now, &ws,
                               cur ? version : RHEMA_VERSION_ABSENT,
                               "appending to the consensus log", &again, err)) ||
        again)
        goto out;
    *res = r;
    rc = append_reply(rec, ws.w[ws.n - 1].new_version, &r, out, err);
out:
    json_decref(cur);
    json_decref(rec);
    ent_list_release(&have);
    ent_list_release(&old);
    wset_release(&ws);
    *rc_out = rc;
    return again;
}

int rhema_consensus_append(struct rhema_store *st, const char *node, json_t *entries,
                           struct rhema_record *out, struct rhema_consensus_append_result *res,
                           char err[RHEMA_ERRMSG_MAX])
{
    int rc = 0;
    size_t n = json_array_size(entries);
    if (n == 0)
        return rhema_set_errbuf(err, RHEMA_EINVAL, "body: expected at least one entry");
    uint64_t first = get_u(json_array_get(entries, 0), "index");
    if (first == 0 || first > INDEX_MAX - n)
        return rhema_set_errbuf(err, RHEMA_EINVAL, "field 'index': out of range");
    for (int attempt = 0; attempt < RETRIES; attempt++)
        if (!append_once(st, node, entries, out, res, &rc, err))
            return rc;
    return rhema_set_errbuf(err, RHEMA_ECONFLICT,
                            "the consensus log of node '%s' is being written concurrently; retry",
                            node);
}

/* ---- commit / applied ---- */

/*
 * One attempt: stamp batch after batch, the last one with the state.
 * Returns 1 when it lost a race and must be tried again.
 */
static int mark_once(struct rhema_store *st, const char *node, enum rhema_consensus_mark_kind kind,
                     uint64_t index, struct rhema_record *out, int *advanced, int *rc_out,
                     char *err)
{
    const char *field = kind == RHEMA_CONSENSUS_COMMIT ? "commit_index" : "applied_index";
    const char *stamp = kind == RHEMA_CONSENSUS_COMMIT ? "committed_at" : "applied_at";
    json_t *cur = NULL;
    uint64_t version;
    struct ent_list l = {0};
    struct wset ws = {0};
    char now[RHEMA_TIME_MAX];
    int rc, again = 0;

    now_text(now);
    if ((rc = state_load(st, node, &cur, &version, err)))
        goto out;
    if (!cur) {
        rc = rhema_set_errbuf(err, RHEMA_ENOTFOUND, "consensus node '%s' not found", node);
        goto out;
    }
    uint64_t at = get_u(cur, field), last = get_u(cur, "last_log_index");
    if (index <= at) { /* monotonic: report where it is */
        *advanced = 0;
        rc = record_make(cur, version, out, err);
        goto out;
    }
    if (index > last) {
        rc = rhema_set_errbuf(err, RHEMA_ECONFLICT,
                              "field 'index': %llu is beyond the last entry %llu of node '%s'",
                              (unsigned long long)index, (unsigned long long)last, node);
        goto out;
    }
    if (wset_alloc(&ws, RHEMA_CONSENSUS_STAMP_BATCH + 1)) {
        rc = rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
        goto out;
    }
    for (uint64_t lo = at + 1; lo <= index;) {
        uint64_t hi = index - lo >= RHEMA_CONSENSUS_STAMP_BATCH - 1
                          ? lo + RHEMA_CONSENSUS_STAMP_BATCH - 1
                          : index;
        if ((rc = scan_range(st, node, lo, hi, 0, &l, err)))
            goto out;
        if (l.n != hi - lo + 1) {
            rc = rhema_set_errbuf(err, RHEMA_ECORRUPT,
                                  "consensus log of node '%s' is missing entries in %llu-%llu",
                                  node, (unsigned long long)lo, (unsigned long long)hi);
            goto out;
        }
        for (size_t i = 0; i < l.n; i++) {
            json_t *e = parse_obj(l.v[i].text, l.v[i].len);
            if (!e) {
                rc = rhema_set_errbuf(err, RHEMA_ECORRUPT,
                                      "consensus log of node '%s': entry %llu is corrupt", node,
                                      (unsigned long long)l.v[i].index);
                goto out;
            }
            json_t *s = json_object_get(e, stamp);
            if (json_is_string(s)) { /* stamped by an earlier, unfinished mark: keep it */
                json_decref(e);
                continue;
            }
            json_object_set_new(e, stamp, json_string(now));
            size_t len;
            char *text = dump(e, &len);
            json_decref(e);
            if (!text) {
                rc = rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
                goto out;
            }
            wset_log(&ws, RHEMA_WRITE_PUT, node, l.v[i].index, text, len, l.v[i].version);
        }
        ent_list_release(&l);
        if (hi == index) { /* the last batch carries the state: the index advances with it */
            json_t *rec = json_deep_copy(cur);
            set_u(rec, field, index);
            json_object_set_new(rec, "updated_at", json_string(now));
            size_t slen;
            char *stext = dump(rec, &slen);
            if (!stext) {
                json_decref(rec);
                rc = rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
                goto out;
            }
            wset_state(&ws, node, stext, slen, version);
            rc = st->vt->batch(st->conn, ws.w, ws.n);
            if (rc == 0) {
                *advanced = 1;
                rc = record_make(rec, ws.w[ws.n - 1].new_version, out, err);
                json_decref(rec);
                goto out;
            }
            json_decref(rec);
        } else {
            rc = ws.n ? st->vt->batch(st->conn, ws.w, ws.n) : 0;
        }
        if (rc == RHEMA_ECONFLICT || rc == RHEMA_ENOTFOUND) {
            again = 1;
            goto out;
        }
        if (rc) {
            rc = rhema_store_error(st, rc, "stamping consensus entries", err);
            goto out;
        }
        for (size_t i = 0; i < ws.n; i++)
            free(ws.vals[i]);
        ws.n = 0;
        lo = hi + 1;
    }
out:
    json_decref(cur);
    ent_list_release(&l);
    wset_release(&ws);
    *rc_out = rc;
    return again;
}

int rhema_consensus_mark(struct rhema_store *st, const char *node,
                         enum rhema_consensus_mark_kind kind, uint64_t index,
                         struct rhema_record *out, int *advanced, char err[RHEMA_ERRMSG_MAX])
{
    int rc = 0;
    for (int attempt = 0; attempt < RETRIES; attempt++)
        if (!mark_once(st, node, kind, index, out, advanced, &rc, err))
            return rc;
    return rhema_set_errbuf(err, RHEMA_ECONFLICT,
                            "the consensus log of node '%s' is being written concurrently; retry",
                            node);
}

/* ---- listing ---- */

/* Append text to a growing buffer; -1 when out of memory. */
struct sbuf {
    char *p;
    size_t len, cap;
};

static int sb_add(struct sbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np)
            return -1;
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

/* Add a stored record (a JSON object) with its version spliced in. */
static int sb_add_record(struct sbuf *b, const char *text, size_t len, uint64_t version)
{
    char tail[48];
    if (len < 2 || text[len - 1] != '}')
        return -2;
    int tl = snprintf(tail, sizeof tail, ",\"version\":%llu}", (unsigned long long)version);
    return sb_add(b, text, len - 1) || sb_add(b, tail, (size_t)tl) ? -1 : 0;
}

/* `{"items":[...],"next_cursor":...}` from the first `limit` of l; more: a next page. */
static int page_text(const struct ent_list *l, size_t limit, const char *next, char **out,
                     size_t *out_len, char *err)
{
    struct sbuf b = {0};
    int bad = sb_add(&b, "{\"items\":[", 10);
    for (size_t i = 0; !bad && i < l->n && i < limit; i++) {
        if (i)
            bad = sb_add(&b, ",", 1);
        if (!bad)
            bad = sb_add_record(&b, l->v[i].text, l->v[i].len, l->v[i].version);
    }
    if (!bad) {
        if (next) {
            json_t *s = json_string(next);
            char *q = rhema_json_dumps(s, JSON_ENCODE_ANY);
            json_decref(s);
            bad = !q || sb_add(&b, "],\"next_cursor\":", 16) || sb_add(&b, q, strlen(q)) ||
                  sb_add(&b, "}", 1);
            free(q);
        } else {
            bad = sb_add(&b, "],\"next_cursor\":null}", 21);
        }
    }
    if (bad) {
        free(b.p);
        return bad == -2
                   ? rhema_set_errbuf(err, RHEMA_ECORRUPT, "a stored consensus record is corrupt")
                   : rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    }
    *out = b.p;
    *out_len = b.len;
    return 0;
}

static size_t clamp_limit(size_t limit)
{
    if (limit == 0)
        return RHEMA_LIST_LIMIT_DEFAULT;
    return limit > RHEMA_LIST_LIMIT_MAX ? RHEMA_LIST_LIMIT_MAX : limit;
}

int rhema_consensus_entries(struct rhema_store *st, const char *node, uint64_t from, uint64_t to,
                            size_t limit, char **out, size_t *out_len, char err[RHEMA_ERRMSG_MAX])
{
    struct ent_list l = {0};
    struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
    int rc;
    limit = clamp_limit(limit);
    if (from == 0)
        from = 1;
    if (to && to < from)
        return rhema_set_errbuf(err, RHEMA_EINVAL, "parameter 'to': %llu is below 'from' %llu",
                                (unsigned long long)to, (unsigned long long)from);
    rc = st->vt->get(st->conn, NS_STATE, node, &v);
    if (rc == RHEMA_ENOTFOUND)
        return rhema_set_errbuf(err, rc, "consensus node '%s' not found", node);
    if (rc)
        return rhema_store_error(st, rc, "reading the consensus state", err);
    if (from > INDEX_MAX) /* no entry can be there */
        return page_text(&l, limit, NULL, out, out_len, err);
    l.st = st; /* a page: capped by bytes too */
    if ((rc = scan_range(st, node, from, to, limit + 1, &l, err)))
        goto out;
    limit = ent_page(&l, limit);
    char next[24];
    if (l.n > limit)
        snprintf(next, sizeof next, "%llu", (unsigned long long)l.v[limit].index);
    rc = page_text(&l, limit, l.n > limit ? next : NULL, out, out_len, err);
out:
    ent_list_release(&l);
    return rc;
}

struct node_list {
    struct ent_list l; /* index unused */
    char **keys;
    size_t kcap;
};

static int collect_node(void *ctx, const char *key, const void *value, size_t len, uint64_t ver)
{
    struct node_list *nl = ctx;
    struct ent_list *l = &nl->l;
    if (!value) /* unreadable (atrest.h) */
        return RHEMA_ECORRUPT;
    if (ent_page_full(l))
        return 1;
    if (l->n == l->cap || l->n == nl->kcap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        void *nv = realloc(l->v, cap * sizeof *l->v);
        if (nv)
            l->v = nv;
        void *nk = realloc(nl->keys, cap * sizeof *nl->keys);
        if (nk)
            nl->keys = nk;
        if (!nv || !nk) {
            l->oom = 1;
            return RHEMA_ENOMEM;
        }
        l->cap = nl->kcap = cap;
    }
    struct ent *e = &l->v[l->n];
    e->text = malloc(len + 1);
    nl->keys[l->n] = strdup(key);
    if (!e->text || !nl->keys[l->n]) {
        free(e->text);
        free(nl->keys[l->n]);
        l->oom = 1;
        return RHEMA_ENOMEM;
    }
    memcpy(e->text, value, len);
    e->text[len] = '\0';
    e->len = len;
    e->version = ver;
    e->index = 0;
    l->n++;
    ent_page_add(l, len);
    return 0;
}

int rhema_consensus_list(struct rhema_store *st, size_t limit, const char *cursor, char **out,
                         size_t *out_len, char err[RHEMA_ERRMSG_MAX])
{
    struct node_list nl = {0};
    char from[RHEMA_ID_MAX + 2];
    int rc;
    limit = clamp_limit(limit);
    if (cursor && !rhema_id_valid(cursor))
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "parameter 'cursor': not a cursor this server issued");
    if (cursor)
        snprintf(from, sizeof from, "%s\x01", cursor); /* just after the cursor's id */
    nl.l.st = st; /* a page: capped by bytes too */
    rc = st->vt->scan(st->conn, NS_STATE, cursor ? from : NULL, NULL, limit + 1, collect_node, &nl);
    if (rc) {
        rc = nl.l.oom ? rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory")
                      : rhema_store_error(st, rc, "listing consensus nodes", err);
        goto out;
    }
    limit = ent_page(&nl.l, limit);
    rc = page_text(&nl.l, limit, nl.l.n > limit ? nl.keys[limit - 1] : NULL, out, out_len, err);
out:
    for (size_t i = 0; i < nl.l.n; i++)
        free(nl.keys[i]);
    free(nl.keys);
    ent_list_release(&nl.l);
    return rc;
}

/* ---- compaction: applied entries older than the retention go ---- */

/*
 * One batch of node's compaction: up to COMPACT_BATCH applied entries from
 * log_start_index on whose applied_at is before cutoff_ms, deleted with the
 * state's new log_start_index/term, entry_count and bytes in one batch
 * (compare-and-set on every version).  *removed counts them; *more is 1
 * when a full batch went and there may be more.  Returns 1 when it lost a
 * race and must be tried again.
 */
#define COMPACT_BATCH 256

static int compact_once(struct rhema_store *st, const char *node, uint64_t cutoff_ms,
                        size_t *removed, int *more, int *rc_out, char *err)
{
    json_t *cur = NULL, *rec = NULL;
    uint64_t version;
    struct ent_list l = {0};
    struct wset ws = {0};
    char now[RHEMA_TIME_MAX];
    int rc, again = 0;

    *more = 0;
    now_text(now);
    if ((rc = state_load(st, node, &cur, &version, err)) || !cur)
        goto out;
    uint64_t applied = get_u(cur, "applied_index"), start = get_u(cur, "log_start_index");
    if (start == 0)
        start = 1;
    if (applied < start)
        goto out; /* nothing applied beyond what already went */
    if ((rc = scan_range(st, node, start, applied, COMPACT_BATCH, &l, err)) ||
        (rc = range_complete(&l, node, start, start + l.n - 1, err)))
        goto out;
    uint64_t count = get_u(cur, "entry_count"), bytes = get_u(cur, "bytes"), last_term = 0;
    size_t n = 0;
    if (wset_alloc(&ws, l.n + 1)) {
        rc = rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
        goto out;
    }
    for (; n < l.n; n++) {
        json_t *o = parse_obj(l.v[n].text, l.v[n].len);
        const char *at = o ? json_string_value(json_object_get(o, "applied_at")) : NULL;
        uint64_t at_ms;
        if (!o || !json_is_integer(json_object_get(o, "term"))) {
            json_decref(o);
            rc = rhema_set_errbuf(err, RHEMA_ECORRUPT,
                                  "consensus log of node '%s': entry %llu is corrupt", node,
                                  (unsigned long long)l.v[n].index);
            goto out;
        }
        /* the prefix only (the log stays contiguous); no stamp: keep it */
        if (!at || rhema_time_parse(at, &at_ms) != 0 || at_ms >= cutoff_ms) {
            json_decref(o);
            break;
        }
        uint64_t size = get_u(o, "size_bytes");
        last_term = get_u(o, "term");
        json_decref(o);
        count = count ? count - 1 : 0;
        bytes = bytes >= size ? bytes - size : 0;
        wset_log(&ws, RHEMA_WRITE_DEL, node, l.v[n].index, NULL, 0, l.v[n].version);
    }
    if (n == 0)
        goto out;
    if (!(rec = json_deep_copy(cur))) {
        rc = rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
        goto out;
    }
    set_u(rec, "log_start_index", start + n);
    set_u(rec, "log_start_term", last_term);
    if ((rc = log_change_apply(st, node, rec, count, bytes, now, &ws, version,
                               "compacting the consensus log", &again, err)) ||
        again)
        goto out;
    *removed += n;
    *more = n == l.n && l.n == COMPACT_BATCH;
out:
    json_decref(cur);
    json_decref(rec);
    ent_list_release(&l);
    wset_release(&ws);
    *rc_out = rc;
    return again;
}

int rhema_consensus_compact(struct rhema_store *st, const char *node, uint64_t cutoff_ms,
                            size_t *removed, char err[RHEMA_ERRMSG_MAX])
{
    int rc = 0, more = 1;
    *removed = 0;
    while (more) {
        int tries = 0;
        while (compact_once(st, node, cutoff_ms, removed, &more, &rc, err))
            if (++tries >= RETRIES)
                return rhema_set_errbuf(
                    err, RHEMA_ECONFLICT,
                    "consensus node '%s' kept changing while compacting its log", node);
        if (rc)
            return rc;
    }
    return 0;
}

int rhema_consensus_cleanup(void *arg, const struct rhema_storage_plugin *vt,
                            rhema_storage_conn *conn, uint64_t cutoff_ms, size_t *removed,
                            char **err)
{
    struct rhema_store st;
    struct rhema_key_list ids = {0};
    char msg[RHEMA_ERRMSG_MAX] = "";
    int rc, first = 0;
    (void)arg;
    *removed = 0;
    rhema_store_init(&st, vt, conn);
    rc = vt->scan(conn, NS_STATE, NULL, NULL, 0, rhema_key_list_collect, &ids);
    if (rc) {
        if (ids.oom)
            rhema_set_errbuf(msg, RHEMA_ENOMEM, "out of memory");
        else
            rhema_store_error(&st, rc, "listing consensus nodes", msg);
        first = rc;
    }
    for (size_t i = 0; !first && i < ids.n; i++) {
        size_t n = 0;
        rc = rhema_consensus_compact(&st, ids.v[i], cutoff_ms, &n, msg);
        *removed += n;
        if (rc)
            first = rc;
    }
    rhema_key_list_release(&ids);
    rhema_store_release(&st);
    if (first && err) {
        free(*err);
        *err = strdup(msg);
    }
    return first;
}
