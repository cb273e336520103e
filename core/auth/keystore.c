/*
 * keystore -- static and runtime API keys, with a per-worker cache that
 * never trusts a runtime key for longer than RHEMA_KEYSTORE_CACHE_MS (see
 * keystore.h).
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "auth/keystore.h"
#include "metrics/metrics.h"
#include "util.h"
#include "json_fields.h"

struct static_key {
    char id[RHEMA_APIKEY_ID_LEN + 1];
    unsigned char hash[RHEMA_APIKEY_HASH_LEN];
    struct rhema_principal principal;
};

#define CACHE_SLOTS 512 /* a power of two */
#define CACHE_PROBE 8

struct cache_entry {
    char id[RHEMA_APIKEY_ID_LEN + 1]; /* "" : free */
    int present;                      /* 0: the backend has no such key */
    unsigned char hash[RHEMA_APIKEY_HASH_LEN];
    struct rhema_principal principal;
    uint64_t fetched_ns;
    uint64_t generation;
};

struct keycache {
    struct cache_entry e[CACHE_SLOTS];
};

struct rhema_keystore {
    const struct rhema_authz *authz;
    struct static_key *statics;
    size_t n_static;
    atomic_uint_fast64_t generation; /* bumped on a local revocation: every cache empties */
    struct keycache *caches[RHEMA_KEYSTORE_WORKERS_MAX];
};

/* The principal's roles (names) as a mask and a text; unknown names are skipped. */
static void principal_roles(const struct rhema_authz *a, struct rhema_principal *p,
                            const char *const *roles, size_t n)
{
    size_t used = 0;
    p->role_mask = 0;
    p->roles[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        int idx = rhema_authz_role_index(a, roles[i]);
        if (idx < 0 || (p->role_mask & (UINT64_C(1) << idx)))
            continue;
        size_t len = strlen(roles[i]);
        if (used + len + 2 > sizeof p->roles)
            break;
        if (used)
            p->roles[used++] = ',';
        memcpy(p->roles + used, roles[i], len + 1);
        used += len;
        p->role_mask |= UINT64_C(1) << idx;
    }
}

static int name_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > RHEMA_PRINCIPAL_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 0;
    return 1;
}

int rhema_keystore_open(const struct rhema_config *cfg, const struct rhema_authz *authz,
                        struct rhema_keystore **out, char **err)
{
    struct rhema_keystore *ks = calloc(1, sizeof *ks);
    char p[128];
    int rc = 0;
    if (!ks)
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    ks->authz = authz;
    int n = rhema_config_get_count(cfg, "security.api_keys.keys");
    if (n > 0 && !(ks->statics = calloc((size_t)n, sizeof *ks->statics))) {
        rc = rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
        goto fail;
    }
    for (int i = 0; i < n; i++) {
        struct static_key *k = &ks->statics[i];
        const char *name = "", *hash = "", *expires = "";
        const char *roles[RHEMA_AUTHZ_ROLES_MAX];
        snprintf(p, sizeof p, "security.api_keys.keys[%d].name", i);
        rhema_config_get_string(cfg, p, &name);
        if (!name_valid(name)) {
            rc = rhema_set_error(err, RHEMA_EINVAL, "%s: 1-%d printable characters", p,
                                 RHEMA_PRINCIPAL_NAME_MAX);
            goto fail;
        }
        snprintf(p, sizeof p, "security.api_keys.keys[%d].key_hash", i);
        rhema_config_get_string(cfg, p, &hash);
        if (rhema_apikey_stored_parse(hash, k->id, k->hash) != 0) {
            rc = rhema_set_error(err, RHEMA_EINVAL,
                                 "%s: not a key hash (\"<public_id>:<64 hex digits>\", as "
                                 "`rhemactl auth new-key` prints it)",
                                 p);
            goto fail;
        }
        for (int j = 0; j < i; j++)
            if (strcmp(ks->statics[j].id, k->id) == 0) {
                rc = rhema_set_error(err, RHEMA_EINVAL,
                                     "%s: the key of security.api_keys.keys[%d] again", p, j);
                goto fail;
            }
        snprintf(p, sizeof p, "security.api_keys.keys[%d].expires_at", i);
        rhema_config_get_string(cfg, p, &expires);
        if (*expires && rhema_time_parse(expires, &k->principal.expires_at_ms) != 0) {
            rc = rhema_set_error(err, RHEMA_EINVAL, "%s: '%s' is not an RFC 3339 time", p, expires);
            goto fail;
        }
        snprintf(p, sizeof p, "security.api_keys.keys[%d].roles", i);
        int nr = rhema_config_get_count(cfg, p);
        if (nr > RHEMA_AUTHZ_ROLES_MAX) {
            rc = rhema_set_error(err, RHEMA_EINVAL, "%s: more than %d roles", p,
                                 RHEMA_AUTHZ_ROLES_MAX);
            goto fail;
        }
        for (int j = 0; j < nr; j++) {
            char rp[160];
            snprintf(rp, sizeof rp, "%s[%d]", p, j);
            roles[j] = "";
            rhema_config_get_string(cfg, rp, &roles[j]);
            if (rhema_authz_role_index(authz, roles[j]) < 0) {
                rc =
                    rhema_set_error(err, RHEMA_EINVAL,
                                    "%s: role '%s' is not defined in security.roles", rp, roles[j]);
                goto fail;
            }
        }
        memcpy(k->principal.key_id, k->id, sizeof k->id);
        snprintf(k->principal.name, sizeof k->principal.name, "%s", name);
        principal_roles(authz, &k->principal, roles, (size_t)(nr > 0 ? nr : 0));
        k->principal.from_config = 1;
        ks->n_static++;
    }
    *out = ks;
    return 0;
fail:
    rhema_keystore_close(ks);
    return rc;
}

void rhema_keystore_close(struct rhema_keystore *ks)
{
    if (!ks)
        return;
    for (size_t i = 0; i < RHEMA_KEYSTORE_WORKERS_MAX; i++)
        free(ks->caches[i]);
    if (ks->statics)
        sodium_memzero(ks->statics, ks->n_static * sizeof *ks->statics);
    free(ks->statics);
    free(ks);
}

size_t rhema_keystore_static_count(const struct rhema_keystore *ks)
{
    return ks->n_static;
}

static const struct static_key *static_find(const struct rhema_keystore *ks, const char *id)
{
    for (size_t i = 0; i < ks->n_static; i++)
        if (strcmp(ks->statics[i].id, id) == 0)
            return &ks->statics[i];
    return NULL;
}

/*
 * A runtime key's record: {"name","roles","expires_at","created_at","key_hash"}.
 * 0 and the parts; RHEMA_ECORRUPT when it is not one.
 */
static int record_parse(const struct rhema_authz *a, const char *id, const void *data, size_t len,
                        struct rhema_principal *p, unsigned char hash[RHEMA_APIKEY_HASH_LEN])
{
    json_t *o = rhema_json_loadb(data, len, 0, NULL);
    const char *roles[RHEMA_AUTHZ_ROLES_MAX];
    size_t nr = 0, bin_len = 0;
    int rc = RHEMA_ECORRUPT;
    if (!json_is_object(o))
        goto out;
    json_t *name = json_object_get(o, "name"), *rl = json_object_get(o, "roles"),
           *exp = json_object_get(o, "expires_at"), *h = json_object_get(o, "key_hash");
    if (!json_is_string(name) || !json_is_array(rl) || !json_is_string(h) ||
        json_string_length(h) != RHEMA_APIKEY_HASH_HEX ||
        sodium_hex2bin(hash, RHEMA_APIKEY_HASH_LEN, json_string_value(h), RHEMA_APIKEY_HASH_HEX,
                       NULL, &bin_len, NULL) != 0 ||
        bin_len != RHEMA_APIKEY_HASH_LEN)
        goto out;
    memset(p, 0, sizeof *p);
    if (json_is_string(exp)) {
        if (rhema_time_parse(json_string_value(exp), &p->expires_at_ms) != 0)
            goto out;
    } else if (exp && !json_is_null(exp)) {
        goto out;
    }
    for (size_t i = 0; i < json_array_size(rl) && nr < RHEMA_AUTHZ_ROLES_MAX; i++)
        if (json_is_string(json_array_get(rl, i)))
            roles[nr++] = json_string_value(json_array_get(rl, i));
    snprintf(p->key_id, sizeof p->key_id, "%s", id);
    snprintf(p->name, sizeof p->name, "%s", json_string_value(name));
    principal_roles(a, p, roles, nr);
    rc = 0;
out:
    json_decref(o);
    return rc;
}

static unsigned slot_of(const char *id)
{
    uint32_t h = 2166136261u; /* FNV-1a over a random id: spread enough */
    for (const char *c = id; *c; c++)
        h = (h ^ (unsigned char)*c) * 16777619u;
    return h & (CACHE_SLOTS - 1);
}

/* The worker's entry for id: fresh, or read again from the backend. */
static int cache_lookup(struct rhema_keystore *ks, int worker, struct rhema_store *st,
                        const char *id, const struct cache_entry **out, char *err)
{
    struct keycache *c;
    uint64_t now = rhema_monotonic_ns(), gen = atomic_load(&ks->generation);
    unsigned home = slot_of(id), victim = home;
    if (worker < 0 || worker >= RHEMA_KEYSTORE_WORKERS_MAX)
        return rhema_set_errbuf(err, RHEMA_EINVAL, "worker id %d out of range", worker);
    if (!(c = ks->caches[worker]) && !(c = ks->caches[worker] = calloc(1, sizeof *c)))
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    for (unsigned i = 0; i < CACHE_PROBE; i++) {
        struct cache_entry *e = &c->e[(home + i) & (CACHE_SLOTS - 1)];
        if (strcmp(e->id, id) == 0) {
            if (e->generation == gen &&
                now - e->fetched_ns < (uint64_t)RHEMA_KEYSTORE_CACHE_MS * 1000000u) {
                rhema_metrics_count(RHEMA_MX_KEY_CACHE, 1);
                *out = e;
                return 0;
            }
            victim = (home + i) & (CACHE_SLOTS - 1);
            break;
        }
        if (e->id[0] == '\0' || e->generation != gen ||
            now - e->fetched_ns >= (uint64_t)RHEMA_KEYSTORE_CACHE_MS * 1000000u) {
            victim = (home + i) & (CACHE_SLOTS - 1);
        }
    }
    struct cache_entry *e = &c->e[victim];
    struct rhema_storage_value v = {.size = sizeof v};
    int rc = st->vt->get(st->conn, RHEMA_KEYSTORE_NS, id, &v);
    rhema_metrics_count(RHEMA_MX_KEY_BACKEND, 1);
    memset(e, 0, sizeof *e);
    if (rc == RHEMA_ENOTFOUND) {
        e->present = 0;
    } else if (rc != 0) {
        return rhema_store_error(st, rc, "reading an API key", err);
    } else if (record_parse(ks->authz, id, v.data, v.len, &e->principal, e->hash) != 0) {
        return rhema_set_errbuf(err, RHEMA_ECORRUPT, "stored API key '%s' is corrupt", id);
    } else {
        e->present = 1;
    }
    snprintf(e->id, sizeof e->id, "%s", id);
    e->fetched_ns = now;
    e->generation = gen;
    *out = e;
    return 0;
}

enum rhema_keystore_result rhema_keystore_authenticate(struct rhema_keystore *ks, int worker,
                                                       struct rhema_store *st, const char *key,
                                                       size_t len, uint64_t now_ms,
                                                       struct rhema_principal *out,
                                                       char err[RHEMA_ERRMSG_MAX])
{
    char id[RHEMA_APIKEY_ID_LEN + 1];
    unsigned char hash[RHEMA_APIKEY_HASH_LEN];
    const unsigned char *want;
    const struct rhema_principal *p;
    switch (rhema_apikey_parse(key, len, id)) {
    case RHEMA_APIKEY_OK: break;
    case RHEMA_APIKEY_CHECKSUM: return RHEMA_KEY_CHECKSUM;
    default: return RHEMA_KEY_MALFORMED;
    }
    const struct static_key *sk = static_find(ks, id);
    if (sk) {
        rhema_metrics_count(RHEMA_MX_KEY_STATIC, 1);
        want = sk->hash;
        p = &sk->principal;
    } else {
        const struct cache_entry *e = NULL;
        if (cache_lookup(ks, worker, st, id, &e, err) != 0)
            return RHEMA_KEY_UNAVAIL;
        if (!e->present)
            return RHEMA_KEY_UNKNOWN;
        want = e->hash;
        p = &e->principal;
    }
    rhema_apikey_hash(key, len, hash);
    if (sodium_memcmp(hash, want, sizeof hash) != 0)
        return RHEMA_KEY_UNKNOWN;
    if (p->expires_at_ms && now_ms >= p->expires_at_ms)
        return RHEMA_KEY_EXPIRED;
    *out = *p;
    return RHEMA_KEY_VALID;
}

static json_t *roles_json(const char *const *roles, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++)
        json_array_append_new(a, json_string(roles[i]));
    return a;
}

static json_t *time_or_null(uint64_t ms)
{
    char t[RHEMA_TIME_MAX];
    if (!ms)
        return json_null();
    rhema_time_format(ms, t);
    return json_string(t);
}

int rhema_keystore_create(struct rhema_keystore *ks, struct rhema_store *st, const char *name,
                          const char *const *roles, size_t n_roles, uint64_t expires_at_ms,
                          char key[RHEMA_APIKEY_LEN + 1], json_t **record,
                          char err[RHEMA_ERRMSG_MAX])
{
    char id[RHEMA_APIKEY_ID_LEN + 1], stored[RHEMA_APIKEY_STORED_LEN + 1];
    uint64_t now = rhema_realtime_ms();
    int rc = RHEMA_ECONFLICT;
    if (!name_valid(name))
        return rhema_set_errbuf(err, RHEMA_EINVAL, "field 'name': 1-%d printable characters",
                                RHEMA_PRINCIPAL_NAME_MAX);
    if (n_roles > RHEMA_AUTHZ_ROLES_MAX)
        return rhema_set_errbuf(err, RHEMA_EINVAL, "field 'roles': more than %d roles",
                                RHEMA_AUTHZ_ROLES_MAX);
    for (size_t i = 0; i < n_roles; i++)
        if (rhema_authz_role_index(ks->authz, roles[i]) < 0)
            return rhema_set_errbuf(err, RHEMA_EINVAL,
                                    "field 'roles': role '%s' is not defined in security.roles",
                                    roles[i]);
    if (expires_at_ms && expires_at_ms <= now)
        return rhema_set_errbuf(err, RHEMA_EINVAL, "field 'expires_at': already past");
    for (int attempt = 0; attempt < 4 && rc == RHEMA_ECONFLICT; attempt++) {
        rhema_apikey_generate(key, id);
        if (static_find(ks, id))
            continue;
        rhema_apikey_stored(key, RHEMA_APIKEY_LEN, stored);
        json_t *rec = json_pack("{s:s, s:o, s:o, s:o, s:s}", "name", name, "roles",
                                roles_json(roles, n_roles), "expires_at",
                                time_or_null(expires_at_ms), "created_at", time_or_null(now),
                                "key_hash", stored + RHEMA_APIKEY_ID_LEN + 1);
        char *text = rec ? json_dumps(rec, JSON_COMPACT) : NULL;
        json_decref(rec);
        if (!text)
            return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
        struct rhema_storage_write w = {.size = sizeof w,
                                        .op = RHEMA_WRITE_PUT,
                                        .ns = RHEMA_KEYSTORE_NS,
                                        .key = id,
                                        .value = text,
                                        .value_len = strlen(text),
                                        .expected_version = RHEMA_VERSION_ABSENT};
        rc = st->vt->put(st->conn, &w);
        free(text);
    }
    if (rc != 0) {
        sodium_memzero(key, RHEMA_APIKEY_LEN + 1);
        return rhema_store_error(st, rc, "storing the API key", err);
    }
    *record = json_pack("{s:s, s:s, s:o, s:o, s:o}", "id", id, "name", name, "roles",
                        roles_json(roles, n_roles), "expires_at", time_or_null(expires_at_ms),
                        "created_at", time_or_null(now));
    if (!*record)
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    return 0;
}

struct list_ctx {
    json_t *items;
    uint64_t now_ms;
    int bad;
};

static json_t *principal_json(const struct rhema_principal *p, uint64_t created_ms, uint64_t now_ms)
{
    json_t *roles = json_array();
    char buf[sizeof p->roles];
    snprintf(buf, sizeof buf, "%s", p->roles);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); roles && t;
         t = strtok_r(NULL, ",", &save))
        json_array_append_new(roles, json_string(t));
    return json_pack("{s:s, s:s, s:o, s:o, s:o, s:s, s:b}", "id", p->key_id, "name", p->name,
                     "roles", roles, "expires_at", time_or_null(p->expires_at_ms), "created_at",
                     time_or_null(created_ms), "source", p->from_config ? "config" : "runtime",
                     "expired", p->expires_at_ms && now_ms >= p->expires_at_ms);
}

struct list_scan {
    const struct rhema_authz *authz;
    struct list_ctx *ctx;
};

static int list_one(void *arg, const char *key, const void *value, size_t len, uint64_t version)
{
    (void)version;
    struct list_scan *s = arg;
    struct rhema_principal p;
    unsigned char hash[RHEMA_APIKEY_HASH_LEN];
    uint64_t created = 0;
    if (record_parse(s->authz, key, value, len, &p, hash) != 0) {
        s->ctx->bad = 1;
        return 0;
    }
    json_t *o = rhema_json_loadb(value, len, 0, NULL), *c = json_object_get(o, "created_at");
    if (json_is_string(c))
        rhema_time_parse(json_string_value(c), &created);
    /* the record's own role names, also those the config no longer defines */
    json_t *item = principal_json(&p, created, s->ctx->now_ms);
    if (item && json_is_array(json_object_get(o, "roles")))
        json_object_set(item, "roles", json_object_get(o, "roles"));
    json_decref(o);
    if (!item || json_array_append_new(s->ctx->items, item) != 0)
        return RHEMA_ENOMEM;
    return 0;
}

static int count_one(void *arg, const char *key, const void *value, size_t len, uint64_t version)
{
    (void)key;
    (void)value;
    (void)len;
    (void)version;
    ++*(uint64_t *)arg;
    return 0;
}

int rhema_keystore_count_runtime(const struct rhema_storage_plugin *vt, rhema_storage_conn *conn,
                                 size_t limit, uint64_t *n)
{
    *n = 0;
    return vt->scan(conn, RHEMA_KEYSTORE_NS, NULL, NULL, limit, count_one, n);
}

int rhema_keystore_list(struct rhema_keystore *ks, struct rhema_store *st, uint64_t now_ms,
                        json_t **items, char err[RHEMA_ERRMSG_MAX])
{
    struct list_ctx ctx = {.items = json_array(), .now_ms = now_ms};
    struct list_scan s = {.authz = ks->authz, .ctx = &ctx};
    int rc;
    if (!ctx.items)
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    for (size_t i = 0; i < ks->n_static; i++) {
        json_t *item = principal_json(&ks->statics[i].principal, 0, now_ms);
        if (!item || json_array_append_new(ctx.items, item) != 0) {
            json_decref(ctx.items);
            return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
        }
    }
    rc = st->vt->scan(st->conn, RHEMA_KEYSTORE_NS, NULL, NULL, 0, list_one, &s);
    if (rc != 0) {
        json_decref(ctx.items);
        return rhema_store_error(st, rc, "listing API keys", err);
    }
    if (ctx.bad) {
        json_decref(ctx.items);
        return rhema_set_errbuf(err, RHEMA_ECORRUPT, "a stored API key is corrupt");
    }
    *items = ctx.items;
    return 0;
}

int rhema_keystore_revoke(struct rhema_keystore *ks, struct rhema_store *st, const char *id,
                          char err[RHEMA_ERRMSG_MAX])
{
    int rc;
    if (static_find(ks, id))
        return rhema_set_errbuf(err, RHEMA_ECONFLICT,
                                "API key '%s' is defined in security.api_keys.keys; remove it "
                                "there and restart rhemad",
                                id);
    rc = st->vt->del(st->conn, RHEMA_KEYSTORE_NS, id, RHEMA_VERSION_ANY);
    if (rc == RHEMA_ENOTFOUND)
        return rhema_set_errbuf(err, rc, "API key '%s' not found", id);
    if (rc != 0)
        return rhema_store_error(st, rc, "revoking the API key", err);
    atomic_fetch_add(&ks->generation, 1); /* this node's caches forget it now */
    return 0;
}
