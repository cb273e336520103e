/*
 * api_keys -- the encryption and key-management routes (see api_keys.h); the
 * keyring's lifecycle and timers are keys.c's.
 */
#include "rhema_build.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "api_keys.h"
#include "audit.h"
#include "keys.h"
#include "keybackup.h"
#include "keyring.h"
#include "log.h"
#include "perfmon.h"
#include "query.h"
#include "util.h"

static int no_query(struct rhema_req *r) { return rhema_query_check(r, NULL) == 0; }

static struct rhema_keyring *keyring_or_503(struct rhema_req *r)
{
    struct rhema_keyring *kr = r->worker->srv->keyring;
    if (!kr)
        rhema_reply_error(r, 503, "unavailable",
                          "key management is off: set advanced_features.key_management.key_file "
                          "or passphrase_env");
    return kr;
}

static const unsigned char *raw_body(struct rhema_req *r, size_t *len)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(r->req);
    *len = evbuffer_get_length(in);
    return *len ? evbuffer_pullup(in, -1) : (const unsigned char *)"";
}

static void reply_keyring_error(struct rhema_req *r, int rc, const char *err)
{
    switch (rc) {
    case RHEMA_ECORRUPT: rhema_reply_error(r, 400, "bad_envelope", "%s", err); return;
    case RHEMA_ENOTSUP: rhema_reply_error(r, 400, "bad_envelope", "%s", err); return;
    case RHEMA_ETOOBIG: rhema_reply_error(r, 409, "key_exhausted", "%s", err); return;
    case RHEMA_EINVAL: rhema_reply_error(r, 400, "invalid_field", "%s", err); return;
    default: rhema_reply_error(r, 500, "internal", "%s", err); return;
    }
}

static void reply_octets(struct rhema_req *r, struct rhema_buf *b, uint32_t version)
{
    char v[16];
    uint32_t kv = version;
    if (!kv)
        rhema_envelope_key_version(b->data, b->len, &kv);
    snprintf(v, sizeof v, "%u", kv);
    rhema_header(r, "X-Rhema-Key-Version", v);
    rhema_reply(r, 200, "application/octet-stream", b->data, b->len);
    free(b->data);
}

/* POST /v1/messages/encrypt and /decrypt (which: "encrypt" or "decrypt"). */
static void message_crypto(struct rhema_req *r, const char *which)
{
    char err[RHEMA_KEYRING_ERR_MAX];
    struct rhema_buf out = {0};
    size_t len;
    if (!no_query(r))
        return;
    struct rhema_keyring *kr = keyring_or_503(r);
    if (!kr)
        return;
    const unsigned char *body = raw_body(r, &len);
    int decrypt = strcmp(which, "decrypt") == 0;
    uint64_t t0 = rhema_monotonic_ns();
    int rc = decrypt ? rhema_keyring_decrypt(kr, body, len, NULL, 0, &out, err)
                     : rhema_keyring_encrypt(kr, body, len, NULL, 0, &out, err);
    if (rc == 0)
        rhema_perfmon_crypto(r->worker->srv->perfmon, len, rhema_monotonic_ns() - t0);
    if (rc) {
        reply_keyring_error(r, rc, err);
        return;
    }
    if (decrypt) {
        uint32_t v = 0;
        rhema_envelope_key_version(body, len, &v);
        reply_octets(r, &out, v);
    } else {
        reply_octets(r, &out, 0);
    }
}

static json_t *stats_json(struct rhema_keyring *kr)
{
    struct rhema_keyring_stats st;
    char t[RHEMA_TIME_MAX];
    if (rhema_keyring_stats(kr, &st) != 0)
        return NULL;
    json_t *versions = json_array();
    for (size_t i = 0; i < st.versions; i++) {
        rhema_time_format(st.v[i].created_at_ms, t);
        json_array_append_new(
            versions, json_pack("{s:i,s:i,s:s,s:I,s:I,s:b}", "version", (int)st.v[i].version,
                                "cipher_id", (int)st.v[i].cipher_id, "created_at", t,
                                "encryptions", (json_int_t)st.v[i].encryptions, "limit",
                                (json_int_t)st.v[i].limit, "decrypts", st.v[i].decrypts));
    }
    json_t *o = json_pack("{s:i,s:i,s:i,s:I,s:I,s:o}", "current_version",
                          (int)st.current_version, "current_cipher_id",
                          (int)st.current_cipher_id, "min_decryption_version",
                          (int)st.min_decryption_version, "versions", (json_int_t)st.versions,
                          "active_keys", (json_int_t)st.active_versions, "per_version", versions);
    const struct {
        const char *name;
        uint64_t ms;
    } times[] = {{"last_rotation", st.last_rotation_ms},
                 {"next_rotation", st.next_rotation_ms},
                 {"last_backup", st.last_backup_ms}};
    for (size_t i = 0; i < 3; i++) {
        if (times[i].ms) {
            rhema_time_format(times[i].ms, t);
            json_object_set_new(o, times[i].name, json_string(t));
        } else {
            json_object_set_new(o, times[i].name, json_null());
        }
    }
    rhema_keyring_stats_release(&st);
    return o;
}

/*
 * The body of POST /v1/keys/backup and /restore: {"name": "<file>.bak"}, a
 * file name in key_management.backup.directory (keybackup.h).  A client
 * never names a path: `path` is refused with 400 naming the field.  Sets
 * *name (NULL when the body is empty and may_omit) or replies 400 and
 * returns -1.  *body owns the string; the caller decrefs it.
 */
static int backup_name(struct rhema_req *r, int may_omit, json_t **body, const char **name)
{
    const char *why;
    const char *key;
    json_t *v;
    *body = NULL;
    *name = NULL;
    if (may_omit && !evbuffer_get_length(evhttp_request_get_input_buffer(r->req)))
        return 0;
    if (!(*body = rhema_req_json(r)))
        return -1;
    if (!json_is_object(*body)) {
        rhema_reply_error(r, 400, "invalid_field", "expected an object {\"name\": \"...\"}");
        return -1;
    }
    json_object_foreach(*body, key, v) {
        if (strcmp(key, "path") == 0) {
            rhema_reply_error(r, 400, "invalid_field",
                              "field 'path': not accepted over HTTP; give 'name', a file name in "
                              "key_management.backup.directory (rhemactl keys takes paths)");
            return -1;
        }
        if (strcmp(key, "name") != 0) {
            rhema_reply_error(r, 400, "invalid_field", "field '%s': unknown field", key);
            return -1;
        }
    }
    v = json_object_get(*body, "name");
    if (!v && may_omit)
        return 0;
    if (!json_is_string(v) ||
        rhema_keybackup_name_check(json_string_value(v), json_string_length(v), &why) != 0) {
        rhema_reply_error(r, 400, "invalid_field", "field 'name': %s",
                          json_is_string(v) ? why : "expected a string");
        return -1;
    }
    *name = json_string_value(v);
    return 0;
}

static void h_keys_backup(struct rhema_req *r, struct rhema_keyring *kr)
{
    char err[RHEMA_KEYRING_ERR_MAX], autoname[RHEMA_KEYBACKUP_AUTO_MAX];
    const char *dir = rhema_keys_backup_dir(r->worker->srv);
    const char *name;
    json_t *body;
    int dirfd, rc;
    if (backup_name(r, 1, &body, &name) != 0) {
        json_decref(body);
        return;
    }
    if ((rc = rhema_keybackup_dir_open(dir, &dirfd, err)) != 0) {
        json_decref(body);
        rhema_log(RHEMA_LOG_ERROR, "keys", "keyring backup: %s", err);
        rhema_reply_error(r, 500, "internal", "cannot open the key backup directory");
        return;
    }
    if (name)
        rc = rhema_keyring_backup_at(kr, dirfd, name, RHEMA_KEYRING_CONFINED, err);
    else
        rc = rhema_keybackup_write_auto(kr, dirfd, rhema_realtime_ms(), autoname, err);
    close(dirfd);
    if (rc == RHEMA_ECONFLICT) {
        rhema_reply_error(r, 409, "conflict", "a key backup named '%s' already exists", name);
    } else if (rc) {
        rhema_log(RHEMA_LOG_ERROR, "keys", "keyring backup failed: %s", err);
        rhema_reply_error(r, 500, "internal", "keyring backup failed (see the daemon's log)");
    } else {
        if (!name)
            name = autoname;
        rhema_log(RHEMA_LOG_NOTICE, "keys", "keyring backed up to %s/%s", dir, name);
        rhema_audit_event("keyring.backed_up", r->request_id, rhema_req_key_id(r),
                          json_pack("{s:s,s:s}", "trigger", "request", "name", name));
        rhema_reply_jsonv(r, 200, json_pack("{s:s}", "name", name));
    }
    json_decref(body);
}

/*
 * Restore answers one error for every file it cannot use -- missing, not a
 * regular file, a symbolic link, unreadable, corrupt, from another keyring
 * -- so that a client learns nothing about what the directory holds; the
 * reason goes to the daemon's log.
 */
static void h_keys_restore(struct rhema_req *r, struct rhema_keyring *kr)
{
    char err[RHEMA_KEYRING_ERR_MAX];
    const char *dir = rhema_keys_backup_dir(r->worker->srv);
    const char *name;
    json_t *body;
    int dirfd = -1, rc;
    if (backup_name(r, 0, &body, &name) != 0) {
        json_decref(body);
        return;
    }
    rc = rhema_keybackup_dir_open(dir, &dirfd, err);
    if (rc == 0) {
        rc = rhema_keyring_restore_at(kr, dirfd, name, RHEMA_KEYRING_CONFINED, err);
        close(dirfd);
    } else {
        rc = RHEMA_ECORRUPT; /* no directory: nothing in it can be used */
    }
    if (rc == RHEMA_ECORRUPT) {
        rhema_log(RHEMA_LOG_WARN, "keys", "keyring restore from '%s' refused: %s", name, err);
        rhema_reply_error(r, 400, "bad_backup",
                          "'%s' is not a key backup this keyring can restore", name);
    } else if (rc == RHEMA_ECONFLICT) {
        rhema_reply_error(r, 409, "conflict", "%s", err);
    } else if (rc) {
        rhema_log(RHEMA_LOG_ERROR, "keys", "keyring restore from '%s' failed: %s", name, err);
        rhema_reply_error(r, 500, "internal", "keyring restore failed (see the daemon's log)");
    } else {
        rhema_log(RHEMA_LOG_NOTICE, "keys", "keyring restored from %s/%s", dir, name);
        rhema_audit_event("keyring.restored", r->request_id, rhema_req_key_id(r),
                          json_pack("{s:s}", "name", name));
        rhema_reply_jsonv(r, 200, stats_json(kr));
    }
    json_decref(body);
}

static void h_encrypt(struct rhema_req *r) { message_crypto(r, "encrypt"); }
static void h_decrypt(struct rhema_req *r) { message_crypto(r, "decrypt"); }

static void h_stats(struct rhema_req *r)
{
    struct rhema_keyring *kr;
    if (!no_query(r) || !(kr = keyring_or_503(r)))
        return;
    rhema_reply_jsonv(r, 200, stats_json(kr));
}

static void h_rotate(struct rhema_req *r)
{
    char err[RHEMA_KEYRING_ERR_MAX];
    struct rhema_keyring *kr;
    uint32_t v = 0;
    if (!no_query(r) || !(kr = keyring_or_503(r)))
        return;
    uint64_t t0 = rhema_monotonic_ns();
    int rc = rhema_keyring_rotate(kr, &v, err);
    if (rc == 0)
        rhema_perfmon_rotation(r->worker->srv->perfmon, rhema_monotonic_ns() - t0);
    if (rc) {
        rhema_reply_error(r, 500, "internal", "rotation failed: %s", err);
        return;
    }
    rhema_log(RHEMA_LOG_NOTICE, "keys", "rotated to key version %u (manual)", v);
    rhema_audit_event("keyring.rotated", r->request_id, rhema_req_key_id(r),
                      json_pack("{s:s,s:i}", "trigger", "request", "version", (int)v));
    rhema_reply_jsonv(r, 200, stats_json(kr));
}

static void h_backup(struct rhema_req *r)
{
    struct rhema_keyring *kr;
    if (!no_query(r) || !(kr = keyring_or_503(r)))
        return;
    h_keys_backup(r, kr);
}

static void h_restore(struct rhema_req *r)
{
    struct rhema_keyring *kr;
    if (!no_query(r) || !(kr = keyring_or_503(r)))
        return;
    h_keys_restore(r, kr);
}

static void h_rewrap(struct rhema_req *r)
{
    char err[RHEMA_KEYRING_ERR_MAX];
    struct rhema_keyring *kr;
    size_t len;
    uint32_t v = 0;
    struct rhema_buf out = {0};
    if (!no_query(r) || !(kr = keyring_or_503(r)))
        return;
    const unsigned char *body = raw_body(r, &len);
    int rc = rhema_keyring_rewrap(kr, body, len, NULL, 0, &out, &v, err);
    if (rc) {
        reply_keyring_error(r, rc, err);
        return;
    }
    reply_octets(r, &out, v);
}

/*
 * Encrypting, decrypting and rewrapping change no state (a transform under
 * the current keys); rotate, backup and restore do, outside the storage
 * backend: they are fenced and audited as writes.
 */
const struct rhema_route rhema_keys_routes[] = {
    {RHEMA_M_POST, "/v1/messages/encrypt", h_encrypt, "messages:process", RHEMA_READS},
    {RHEMA_M_POST, "/v1/messages/decrypt", h_decrypt, "messages:process", RHEMA_READS},
    {RHEMA_M_GET, "/v1/keys/stats", h_stats, "keys:read", RHEMA_READS},
    {RHEMA_M_POST, "/v1/keys/rotate", h_rotate, "keys:admin", RHEMA_WRITES},
    {RHEMA_M_POST, "/v1/keys/backup", h_backup, "keys:admin", RHEMA_WRITES},
    {RHEMA_M_POST, "/v1/keys/restore", h_restore, "keys:admin", RHEMA_WRITES},
    {RHEMA_M_POST, "/v1/keys/rewrap", h_rewrap, "messages:process", RHEMA_READS},
    {0},
};
