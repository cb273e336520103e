/*
 * services_store -- the service registry's store (services.h: the storage
 * layout): put, get, delete, list and TTL passes on a worker's store, each
 * registration decorated with the health the leader's checker recorded.
 */
#include "rhema_build.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_fields.h"
#include "services.h"
#include "services_internal.h"
#include "util.h"
#include "watch/feed.h"

/* ---- the store ---- */

/* Read ns/key as JSON: 0 and *out (NULL when absent), or an error. */
int svc_load_json(struct rhema_store *st, const char *ns, const char *key, json_t **out,
                  uint64_t *version, char *err)
{
    struct rhema_storage_value val = {.size = sizeof(struct rhema_storage_value)};
    int rc = st->vt->get(st->conn, ns, key, &val);
    *out = NULL;
    if (rc == RHEMA_ENOTFOUND)
        return 0;
    if (rc)
        return rhema_store_error(st, rc, "reading the registry", err);
    *out = rhema_json_loadb(val.data, val.len, 0, NULL);
    if (!*out)
        return rhema_set_errbuf(err, RHEMA_ECORRUPT, "%s '%s': stored value is not JSON", ns, key);
    if (version)
        *version = val.version;
    return 0;
}

/* The canonical text of a check (what a health record is computed for); malloc'd. */
char *svc_check_key(json_t *check)
{
    if (!check || json_is_null(check))
        return NULL;
    return rhema_json_dumps(check, JSON_COMPACT | JSON_SORT_KEYS);
}

/*
 * The health of registration rec given its health record (may be NULL):
 * the status, and the health record when it applies to rec's check.
 */
enum rhema_health svc_health_of(json_t *rec, json_t *health, int checks_enabled, json_t **applies)
{
    json_t *check = json_object_get(rec, "check");
    char *key;
    enum rhema_health h = RHEMA_HEALTH_UNKNOWN;
    if (applies)
        *applies = NULL;
    if (!checks_enabled || !check || json_is_null(check))
        return RHEMA_HEALTH_HEALTHY;
    if (!health)
        return RHEMA_HEALTH_UNKNOWN;
    key = svc_check_key(check);
    if (key && json_string_value(json_object_get(health, "check")) &&
        strcmp(key, json_string_value(json_object_get(health, "check"))) == 0) {
        h = rhema_health_parse(json_string_value(json_object_get(health, "status")));
        if (applies)
            *applies = health;
    }
    free(key);
    return h;
}

static void time_field(json_t *o, const char *name, uint64_t ms)
{
    char t[RHEMA_TIME_MAX];
    if (!ms) {
        json_object_set_new(o, name, json_null());
        return;
    }
    rhema_time_format(ms, t);
    json_object_set_new(o, name, json_string(t));
}

/* Add health_status, last_health_check, check_status, check_output, version to rec. */
static int decorate(struct rhema_store *st, const char *id, json_t *rec, uint64_t version,
                    int checks_enabled, char *err)
{
    json_t *health = NULL, *applies;
    int rc = svc_load_json(st, RHEMA_SERVICES_HEALTH_NS, id, &health, NULL, err);
    if (rc)
        return rc;
    enum rhema_health h = svc_health_of(rec, health, checks_enabled, &applies);
    json_object_set_new(rec, "health_status", json_string(rhema_health_name(h)));
    time_field(rec, "last_health_check",
               applies ? (uint64_t)json_integer_value(json_object_get(applies, "last_check")) : 0);
    json_object_set_new(rec, "check_status",
                        applies ? json_incref(json_object_get(applies, "check_status"))
                                : json_null());
    json_object_set_new(rec, "check_output",
                        applies ? json_incref(json_object_get(applies, "output")) : json_null());
    json_object_set_new(rec, "version", json_integer((json_int_t)version));
    json_decref(health);
    return 0;
}

static int record_out(json_t *rec, uint64_t version, struct rhema_record *out, char *err)
{
    out->json = rhema_json_dumps(rec, JSON_COMPACT);
    if (!out->json)
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    out->len = strlen(out->json);
    out->version = version;
    return 0;
}

/*
 * The change feed's record of a registration change (issue 12,
 * watch/feed.h): service.registered, service.updated, service.deregistered,
 * into *w (placed right after the registration's own write, so that a
 * PUT's event shares its version).  The text is malloc'd (the caller frees
 * it after the batch); NULL without a feed or memory: no record.
 */
static char *svc_event(struct rhema_store *st, const char *type, const char *id, int versioned,
                       struct rhema_storage_write *w)
{
    if (!st->feed)
        return NULL;
    struct rhema_feed_fields f = {.type = type, .id = id, .versioned = versioned};
    size_t len = 0;
    char *text = rhema_feed_record(&f, &len);
    if (text)
        rhema_feed_write(w, text, len);
    return text;
}

int rhema_service_put(struct rhema_store *st, const char *id, json_t *svc, uint64_t if_match,
                      int checks_enabled, struct rhema_record *out, int *created,
                      char old_name[RHEMA_ID_MAX + 1], char err[RHEMA_ERRMSG_MAX])
{
    char idx_new[2 * RHEMA_ID_MAX + 2], idx_old[2 * RHEMA_ID_MAX + 2];
    const char *name = json_string_value(json_object_get(svc, "name"));
    int rc = 0;

    if (old_name)
        old_name[0] = '\0';
    snprintf(idx_new, sizeof idx_new, "%s/%s", name, id);
    for (int attempt = 0; attempt < PUT_RETRIES; attempt++) {
        json_t *cur = NULL, *rec = NULL;
        uint64_t version = 0, now = rhema_realtime_ms();
        char t[RHEMA_TIME_MAX];
        struct rhema_storage_write w[4];
        size_t n = 0;
        char *text = NULL, *etext;

        if ((rc = svc_load_json(st, RHEMA_SERVICES_NS, id, &cur, &version, err)))
            return rc;
        if (if_match == RHEMA_VERSION_ABSENT && cur) {
            json_decref(cur);
            return rhema_set_errbuf(err, RHEMA_EPRECONDITION, "service '%s' already exists", id);
        }
        if (if_match == RHEMA_VERSION_PRESENT && !cur)
            return rhema_set_errbuf(err, RHEMA_EPRECONDITION,
                                    "service '%s' does not exist (If-Match: *)", id);
        if (RHEMA_IF_MATCH_VERSION(if_match) && (!cur || version != if_match)) {
            json_decref(cur);
            return rhema_set_errbuf(
                err, RHEMA_EPRECONDITION,
                cur ? "service '%s' is at another version" : "service '%s' not found", id);
        }
        rec = json_deep_copy(svc);
        rhema_time_format(now, t);
        json_t *reg = cur ? json_object_get(cur, "registered_at") : NULL;
        json_object_set_new(rec, "registered_at", reg ? json_incref(reg) : json_string(t));
        json_object_set_new(rec, "updated_at", json_string(t));
        text = rhema_json_dumps(rec, JSON_COMPACT);
        if (!text) {
            json_decref(cur);
            json_decref(rec);
            return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
        }
        memset(w, 0, sizeof w);
        w[n].size = sizeof(struct rhema_storage_write);
        w[n].op = RHEMA_WRITE_PUT;
        w[n].ns = RHEMA_SERVICES_NS;
        w[n].key = id;
        w[n].value = text;
        w[n].value_len = strlen(text);
        w[n].expected_version = cur ? version : RHEMA_VERSION_ABSENT;
        n++;
        if ((etext = svc_event(st, cur ? "service.updated" : "service.registered", id, 1, &w[n])))
            n++;
        const char *oname = cur ? json_string_value(json_object_get(cur, "name")) : NULL;
        if (oname && strcmp(oname, name) != 0) {
            snprintf(idx_old, sizeof idx_old, "%s/%s", oname, id);
            w[n].size = sizeof(struct rhema_storage_write);
            w[n].op = RHEMA_WRITE_DEL;
            w[n].ns = RHEMA_SERVICES_NAME_NS;
            w[n].key = idx_old;
            n++;
            if (old_name)
                snprintf(old_name, RHEMA_ID_MAX + 1, "%s", oname);
        }
        w[n].size = sizeof(struct rhema_storage_write);
        w[n].op = RHEMA_WRITE_PUT;
        w[n].ns = RHEMA_SERVICES_NAME_NS;
        w[n].key = idx_new;
        w[n].value = "";
        w[n].value_len = 0;
        n++;
        rc = st->vt->batch(st->conn, w, n);
        free(text);
        free(etext);
        if (rc == 0) {
            if (etext)
                rhema_feed_wake(st->feed); /* its record is in: the feed reads it now */
            *created = cur == NULL;
            rc = decorate(st, id, rec, w[0].new_version, checks_enabled, err);
            if (!rc)
                rc = record_out(rec, w[0].new_version, out, err);
        } else if (rc != RHEMA_ECONFLICT && rc != RHEMA_ENOTFOUND) {
            rc = rhema_store_error(st, rc, "writing the service", err);
        }
        json_decref(cur);
        json_decref(rec);
        if (rc != RHEMA_ECONFLICT && rc != RHEMA_ENOTFOUND)
            return rc;
        if (RHEMA_IF_MATCH_VERSION(if_match)) /* the version the client named is gone */
            return rhema_set_errbuf(err, RHEMA_EPRECONDITION, "service '%s' changed meanwhile", id);
    }
    return rhema_set_errbuf(err, RHEMA_ECONFLICT, "service '%s': too many concurrent writers", id);
}

int rhema_service_get(struct rhema_store *st, const char *id, int checks_enabled,
                      struct rhema_record *out, char err[RHEMA_ERRMSG_MAX])
{
    json_t *rec;
    uint64_t version = 0;
    int rc = svc_load_json(st, RHEMA_SERVICES_NS, id, &rec, &version, err);
    if (rc)
        return rc;
    if (!rec)
        return rhema_set_errbuf(err, RHEMA_ENOTFOUND, "service '%s' not found", id);
    rc = decorate(st, id, rec, version, checks_enabled, err);
    if (!rc)
        rc = record_out(rec, version, out, err);
    json_decref(rec);
    return rc;
}

/* Delete the registration and its index (version: the one read), then health and pass. */
int svc_delete_versioned(struct rhema_store *st, const char *id, const char *name, uint64_t version)
{
    char idx[2 * RHEMA_ID_MAX + 2];
    struct rhema_storage_write w[3];
    int rc;
    snprintf(idx, sizeof idx, "%s/%s", name, id);
    memset(w, 0, sizeof w);
    w[0].size = sizeof(struct rhema_storage_write);
    w[0].op = RHEMA_WRITE_DEL;
    w[0].ns = RHEMA_SERVICES_NS;
    w[0].key = id;
    w[0].expected_version = version;
    w[1].size = sizeof(struct rhema_storage_write);
    w[1].op = RHEMA_WRITE_DEL;
    w[1].ns = RHEMA_SERVICES_NAME_NS;
    w[1].key = idx;
    char *etext = svc_event(st, "service.deregistered", id, 0, &w[2]);
    rc = st->vt->batch(st->conn, w, etext ? 3 : 2);
    if (rc == RHEMA_ENOTFOUND && etext) { /* an index entry lost by an older version */
        w[1] = w[2];
        rc = st->vt->batch(st->conn, w, 2); /* the record and its event */
    } else if (rc == RHEMA_ENOTFOUND) {
        rc = st->vt->del(st->conn, RHEMA_SERVICES_NS, id, version);
    }
    free(etext);
    if (rc == 0 && st->feed)
        rhema_feed_wake(st->feed);
    if (rc == 0) {
        st->vt->del(st->conn, RHEMA_SERVICES_HEALTH_NS, id, RHEMA_VERSION_ANY);
        st->vt->del(st->conn, RHEMA_SERVICES_PASS_NS, id, RHEMA_VERSION_ANY);
    }
    return rc;
}

int rhema_service_delete(struct rhema_store *st, const char *id, uint64_t if_match,
                         char name_out[RHEMA_ID_MAX + 1], char err[RHEMA_ERRMSG_MAX])
{
    int rc = 0;
    for (int attempt = 0; attempt < PUT_RETRIES; attempt++) {
        json_t *cur;
        uint64_t version = 0;
        if ((rc = svc_load_json(st, RHEMA_SERVICES_NS, id, &cur, &version, err)))
            return rc;
        if (!cur)
            return rhema_set_errbuf(err, if_match ? RHEMA_EPRECONDITION : RHEMA_ENOTFOUND,
                                    "service '%s' not found", id);
        if (RHEMA_IF_MATCH_VERSION(if_match) && version != if_match) {
            json_decref(cur);
            return rhema_set_errbuf(err, RHEMA_EPRECONDITION, "service '%s' is at another version",
                                    id);
        }
        const char *name = json_string_value(json_object_get(cur, "name"));
        if (name_out)
            snprintf(name_out, RHEMA_ID_MAX + 1, "%s", name ? name : "");
        rc = svc_delete_versioned(st, id, name ? name : "", version);
        json_decref(cur);
        if (rc == 0)
            return 0;
        if (rc != RHEMA_ECONFLICT && rc != RHEMA_ENOTFOUND)
            return rhema_store_error(st, rc, "deleting the service", err);
    }
    return rhema_set_errbuf(err, RHEMA_ECONFLICT, "service '%s': too many concurrent writers", id);
}

int rhema_service_list(struct rhema_store *st, const char *name, size_t limit, const char *cursor,
                       int checks_enabled, char **out, size_t *out_len, char err[RHEMA_ERRMSG_MAX])
{
    char from[2 * RHEMA_ID_MAX + 4], to[RHEMA_ID_MAX + 2];
    struct rhema_key_list ids = {0};
    json_t *items = NULL, *page = NULL, *unreadable = NULL;
    int rc = 0;

    if (limit == 0)
        limit = RHEMA_LIST_LIMIT_DEFAULT;
    if (limit > RHEMA_LIST_LIMIT_MAX)
        limit = RHEMA_LIST_LIMIT_MAX;
    if (name && !rhema_id_valid(name))
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "parameter 'name': expected 1-128 characters [A-Za-z0-9._:-]");
    if (cursor && !rhema_id_valid(cursor))
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "parameter 'cursor': not a cursor this server issued");
    if (name) {
        snprintf(from, sizeof from, "%s/%s%s", name, cursor ? cursor : "", cursor ? "\x01" : "");
        snprintf(to, sizeof to, "%s0", name);
        ids.strip = strlen(name) + 1;
        rc = st->vt->scan(st->conn, RHEMA_SERVICES_NAME_NS, from, to, limit + 1,
                          rhema_key_list_collect, &ids);
    } else {
        if (cursor)
            snprintf(from, sizeof from, "%s\x01", cursor);
        rc = st->vt->scan(st->conn, RHEMA_SERVICES_NS, cursor ? from : NULL, NULL, limit + 1,
                          rhema_key_list_collect, &ids);
    }
    if (rc) {
        rc = ids.oom ? rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory")
                     : rhema_store_error(st, rc, "listing services", err);
        goto out;
    }
    items = json_array();
    unreadable = json_array();
    size_t used = 0, upto = limit; /* ids of this page: limit, or fewer by the byte cap */
    for (size_t i = 0; i < ids.n && i < upto; i++) {
        json_t *rec;
        uint64_t version;
        rc = svc_load_json(st, RHEMA_SERVICES_NS, ids.v[i], &rec, &version, err);
        if (rc == RHEMA_ECORRUPT) { /* named, not fatal: the others are still readable */
            json_array_append_new(unreadable, json_string(ids.v[i]));
            rc = 0;
            continue;
        }
        if (rc)
            goto out;
        if (!rec)
            continue; /* deleted between the scan and the read */
        if ((rc = decorate(st, ids.v[i], rec, version, checks_enabled, err))) {
            json_decref(rec);
            goto out;
        }
        json_array_append_new(items, rec);
        if (rhema_page_add(st, &used, json_dumpb(rec, NULL, 0, JSON_COMPACT)))
            upto = i + 1; /* full: the page ends with this service */
    }
    page = json_pack("{s:O,s:o}", "items", items, "next_cursor",
                     ids.n > upto ? json_string(ids.v[upto - 1]) : json_null());
    rhema_unreadable_trim(unreadable, ids.n > upto ? ids.v[upto - 1] : NULL);
    if (page && json_array_size(unreadable))
        json_object_set(page, "unreadable", unreadable);
    *out = page ? rhema_json_dumps(page, JSON_COMPACT) : NULL;
    if (!*out) {
        rc = rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
        goto out;
    }
    *out_len = strlen(*out);
out:
    json_decref(items);
    json_decref(unreadable);
    json_decref(page);
    rhema_key_list_release(&ids);
    return rc;
}

int rhema_service_pass(struct rhema_store *st, const char *id, char err[RHEMA_ERRMSG_MAX])
{
    json_t *rec;
    char buf[TTL_PASS_MAX_LEN];
    struct rhema_storage_write w = {.size = sizeof(struct rhema_storage_write)};
    int rc = svc_load_json(st, RHEMA_SERVICES_NS, id, &rec, NULL, err);
    if (rc)
        return rc;
    if (!rec)
        return rhema_set_errbuf(err, RHEMA_ENOTFOUND, "service '%s' not found", id);
    const char *type = json_string_value(json_object_get(json_object_get(rec, "check"), "type"));
    if (!type || strcmp(type, "ttl") != 0) {
        json_decref(rec);
        return rhema_set_errbuf(err, RHEMA_EINVAL, "service '%s' has no ttl check", id);
    }
    json_decref(rec);
    snprintf(buf, sizeof buf, "%" PRIu64, rhema_realtime_ms());
    w.op = RHEMA_WRITE_PUT;
    w.ns = RHEMA_SERVICES_PASS_NS;
    w.key = id;
    w.value = buf;
    w.value_len = strlen(buf);
    if ((rc = st->vt->put(st->conn, &w)))
        return rhema_store_error(st, rc, "recording the pass", err);
    return 0;
}
