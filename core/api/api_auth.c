/*
 * api_auth -- authenticate, authorize, protected mode and the API key
 * routes (see api_auth.h; the engine is in core/auth/).
 */
#include "rhema_build.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sodium.h>

#include "api_auth.h"
#include "audit.h"
#include "auth/authz.h"
#include "auth/certmap.h"
#include "auth/keystore.h"
#include "log.h"
#include "metrics/metrics.h"
#include "tls.h"
#include "util.h"

#define REALM "Bearer realm=\"rhema\""
#define OPEN_ROUTES_MAX 8

struct rhema_auth {
    int enabled;      /* security.api_keys.enabled */
    int allow_remote; /* security.allow_unauthenticated_remote */
    struct rhema_authz *authz;
    struct rhema_keystore *keys;
    struct rhema_certmap *certs; /* security.client_certificates; NULL: none */
    const struct rhema_route *open[OPEN_ROUTES_MAX]; /* security.api_keys.open_routes */
    size_t n_open;
};

/* ---- the stages ---- */

static void reply_401(struct rhema_req *r, const char *error, const char *msg)
{
    char h[160];
    if (error)
        snprintf(h, sizeof h, REALM ", error=\"%s\"", error);
    else
        snprintf(h, sizeof h, REALM);
    rhema_header(r, "WWW-Authenticate", h);
    rhema_reply_error(r, 401, "unauthorized", "%s", msg);
}

/* The key of the request: the Bearer token or X-API-Key (both: they must agree). */
static int presented_key(struct rhema_req *r, const char **key)
{
    const char *authz = rhema_req_header(r, "Authorization");
    const char *x = rhema_req_header(r, "X-API-Key");
    const char *bearer = NULL;
    *key = NULL;
    if (authz) {
        if (strncasecmp(authz, "Bearer ", 7) != 0) {
            reply_401(r, NULL, "Authorization: only the Bearer scheme is accepted");
            return -1;
        }
        for (bearer = authz + 7; *bearer == ' '; bearer++)
            ;
    }
    if (bearer && x && strcmp(bearer, x) != 0) {
        reply_401(r, "invalid_request",
                  "Authorization and X-API-Key carry different keys; send one");
        return -1;
    }
    *key = bearer ? bearer : x;
    return 0;
}

int rhema_authenticate(struct rhema_req *r)
{
    struct rhema_auth *a = r->worker->srv->auth;
    const char *key;
    char err[RHEMA_ERRMSG_MAX] = "";
    if (!a || !a->enabled)
        return 0;
    if (presented_key(r, &key) != 0)
        return 1;
    if (!key) {
        /* a verified client certificate that a mapping names stands for a key;
         * any other caller is anonymous: authorize decides (an open route, or 401) */
        struct rhema_tls_peer peer;
        if (a->certs && rhema_tls_peer(r->req, &peer) == 0)
            rhema_certmap_lookup(a->certs, peer.subject, (const char(*)[256])peer.sans,
                                 peer.n_sans, peer.fingerprint, &r->principal);
        if (r->principal.key_id[0])
            rhema_metrics_count(RHEMA_MX_AUTH_CERTIFICATE, 1);
        return 0;
    }
    switch (rhema_keystore_authenticate(a->keys, r->worker->id, &r->worker->store, key, strlen(key),
                                        rhema_realtime_ms(), &r->principal, err)) {
    case RHEMA_KEY_VALID: rhema_metrics_count(RHEMA_MX_AUTH_OK, 1); return 0;
    case RHEMA_KEY_MALFORMED:
        rhema_metrics_count(RHEMA_MX_AUTH_MALFORMED, 1);
        reply_401(r, "invalid_token", "the API key is not of the form rk_<id>_<secret>");
        return 1;
    case RHEMA_KEY_CHECKSUM:
        rhema_metrics_count(RHEMA_MX_AUTH_CHECKSUM, 1);
        reply_401(r, "invalid_token", "the API key's checksum does not match (mistyped?)");
        return 1;
    case RHEMA_KEY_UNKNOWN:
        rhema_metrics_count(RHEMA_MX_AUTH_UNKNOWN, 1);
        reply_401(r, "invalid_token", "unknown or revoked API key");
        return 1;
    case RHEMA_KEY_EXPIRED:
        rhema_metrics_count(RHEMA_MX_AUTH_EXPIRED, 1);
        reply_401(r, "invalid_token", "the API key has expired");
        return 1;
    case RHEMA_KEY_UNAVAIL:
    default:
        rhema_metrics_count(RHEMA_MX_AUTH_UNAVAILABLE, 1);
        rhema_reply_error(r, 503, "unavailable", "cannot check the API key: %s", err);
        return 1;
    }
}

static int always_open(const struct rhema_route *rt)
{
    /* the console's files (api_console.h) are public; what they show needs the key */
    return strcmp(rt->path, "/health/live") == 0 || strcmp(rt->path, "/health/ready") == 0 ||
           strcmp(rt->permission, "console:read") == 0;
}

/* 1 when the client is on a loopback address (127.0.0.0/8, ::1, ::ffff:127.x). */
static int peer_loopback(struct rhema_req *r)
{
    struct evhttp_connection *c = evhttp_request_get_connection(r->req);
    char *host = NULL;
    ev_uint16_t port = 0;
    if (!c)
        return 0;
    evhttp_connection_get_peer(c, &host, &port);
    return host && rhema_addr_loopback(host);
}

static unsigned method_bit(struct rhema_req *r)
{
    switch (r->method) {
    case EVHTTP_REQ_GET:
    case EVHTTP_REQ_HEAD: return RHEMA_AUTHZ_GET;
    case EVHTTP_REQ_PUT: return RHEMA_AUTHZ_PUT;
    case EVHTTP_REQ_POST: return RHEMA_AUTHZ_POST;
    case EVHTTP_REQ_DELETE: return RHEMA_AUTHZ_DELETE;
    default: return 0;
    }
}

int rhema_authorize(struct rhema_req *r, const struct rhema_route *rt)
{
    struct rhema_auth *a = r->worker->srv->auth;
    if (!a || always_open(rt))
        return 0;
    if (!a->enabled) {
        if (a->allow_remote || peer_loopback(r))
            return 0;
        rhema_reply_error(r, 403, "forbidden",
                          "protected mode: API keys are off (security.api_keys.enabled), so "
                          "only loopback clients are answered; turn keys on, or set "
                          "security.allow_unauthenticated_remote = true");
        return 1;
    }
    for (size_t i = 0; i < a->n_open; i++)
        if (a->open[i] == rt)
            return 0;
    if (!r->principal.key_id[0]) {
        rhema_metrics_count(RHEMA_MX_AUTH_MISSING, 1);
        reply_401(r, NULL, "an API key is required (Authorization: Bearer <key>, or X-API-Key)");
        return 1;
    }
    if (rhema_authz_check(a->authz, r->principal.role_mask, method_bit(r), r->path, rt->permission))
        return 0;
    rhema_metrics_count(RHEMA_MX_AUTH_FORBIDDEN, 1);
    rhema_reply_error(r, 403, "forbidden", "%s '%s' (roles: %s) may not %s %s (%s)",
                      r->principal.certificate ? "client certificate" : "API key",
                      r->principal.key_id, r->principal.roles[0] ? r->principal.roles : "none",
                      evhttp_request_get_command(r->req) == EVHTTP_REQ_HEAD ? "HEAD"
                      : method_bit(r) == RHEMA_AUTHZ_GET                    ? "GET"
                      : method_bit(r) == RHEMA_AUTHZ_PUT                    ? "PUT"
                      : method_bit(r) == RHEMA_AUTHZ_POST                   ? "POST"
                                                                            : "DELETE",
                      r->path, rt->permission);
    return 1;
}

int rhema_auth_key_stats(const struct rhema_server *srv, size_t *static_keys)
{
    const struct rhema_auth *a = srv->auth;
    *static_keys = 0;
    if (!a || !a->enabled)
        return 0;
    *static_keys = a->keys ? rhema_keystore_static_count(a->keys) : 0;
    return 1;
}

int rhema_auth_permits(const struct rhema_req *r, const char *permission)
{
    const struct rhema_auth *a = r->worker->srv->auth;
    if (!a || !a->enabled)
        return 1;
    return r->principal.key_id[0] &&
           rhema_authz_check(a->authz, r->principal.role_mask, RHEMA_AUTHZ_GET, r->path,
                             permission);
}

/* ---- setup ---- */

static void auth_free(struct rhema_auth *a)
{
    if (!a)
        return;
    rhema_keystore_close(a->keys);
    rhema_certmap_free(a->certs);
    rhema_authz_free(a->authz);
    free(a);
}

/* security.api_keys.open_routes: GET routes of the health or metrics areas only. */
static int open_routes(struct rhema_auth *a, const struct rhema_config *cfg,
                       const struct rhema_route *const *tables, char **err)
{
    int n = rhema_config_get_count(cfg, "security.api_keys.open_routes");
    char p[96];
    for (int i = 0; i < n; i++) {
        const char *path = "";
        const struct rhema_route *found = NULL;
        snprintf(p, sizeof p, "security.api_keys.open_routes[%d]", i);
        rhema_config_get_string(cfg, p, &path);
        for (size_t t = 0; tables[t] && !found; t++)
            for (const struct rhema_route *rt = tables[t]; rt->path && !found; rt++)
                if (rt->method == RHEMA_M_GET && strcmp(rt->path, path) == 0)
                    found = rt;
        if (!found)
            return rhema_set_error(err, RHEMA_EINVAL, "%s: '%s' is not a GET route", p, path);
        if (strncmp(found->permission, "health:", 7) != 0 &&
            strncmp(found->permission, "metrics:", 8) != 0)
            return rhema_set_error(err, RHEMA_EINVAL,
                                   "%s: '%s' needs %s; only health and metrics routes may be "
                                   "opened",
                                   p, path, found->permission);
        if (a->n_open == OPEN_ROUTES_MAX)
            return rhema_set_error(err, RHEMA_EINVAL, "%s: more than %d routes", p,
                                   OPEN_ROUTES_MAX);
        a->open[a->n_open++] = found;
    }
    return 0;
}

/* Mappings need certificates the TLS layer verifies: service.tls with client_ca_file. */
static int certs_verifiable(const struct rhema_auth *a, const struct rhema_config *cfg, char **err)
{
    int tls = 0;
    const char *ca = "", *mode = "";
    if (!a->certs)
        return 0;
    rhema_config_get_bool(cfg, "service.tls.enabled", &tls);
    rhema_config_get_string(cfg, "service.tls.client_ca_file", &ca);
    rhema_config_get_string(cfg, "service.tls.client_certificates", &mode);
    if (!tls || !*ca || strcmp(mode, "none") == 0)
        return rhema_set_error(err, RHEMA_EINVAL,
                               "security.client_certificates: no client certificate is verified "
                               "(set service.tls.enabled and service.tls.client_ca_file)");
    return 0;
}

static int auth_build(const struct rhema_config *cfg, const struct rhema_route *const *tables,
                      struct rhema_auth **out, char **err)
{
    struct rhema_auth *a = calloc(1, sizeof *a);
    int rc;
    if (!a)
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    rhema_config_get_bool(cfg, "security.api_keys.enabled", &a->enabled);
    rhema_config_get_bool(cfg, "security.allow_unauthenticated_remote", &a->allow_remote);
    if ((rc = rhema_authz_from_config(cfg, &a->authz, err)) != 0 ||
        (rc = rhema_keystore_open(cfg, a->authz, &a->keys, err)) != 0 ||
        (rc = rhema_certmap_from_config(cfg, a->authz, &a->certs, err)) != 0 ||
        (rc = certs_verifiable(a, cfg, err)) != 0 ||
        (rc = open_routes(a, cfg, tables, err)) != 0) {
        auth_free(a);
        return rc;
    }
    *out = a;
    return 0;
}

int rhema_auth_check(const struct rhema_config *cfg, const struct rhema_route *const *tables,
                     char **err)
{
    struct rhema_auth *a = NULL;
    int rc = auth_build(cfg, tables, &a, err);
    auth_free(a);
    return rc;
}

/* 1 when service.listen is a loopback address. */
static int listen_loopback(const char *listen)
{
    return strncmp(listen, "127.", 4) == 0 || strncmp(listen, "[::1]:", 6) == 0 ||
           strncmp(listen, "localhost:", 10) == 0;
}

int rhema_auth_open(struct rhema_server *srv, const struct rhema_route *const *tables, char **err)
{
    int rc = auth_build(srv->cfg, tables, &srv->auth, err);
    if (rc)
        return rc;
    struct rhema_auth *a = srv->auth;
    if (a->enabled) {
        rhema_log(RHEMA_LOG_NOTICE, "auth",
                  "API keys on: %zu static key(s), %zu client certificate mapping(s), %zu role(s)",
                  rhema_keystore_static_count(a->keys), rhema_certmap_count(a->certs),
                  rhema_authz_role_count(a->authz));
    } else if (a->allow_remote) {
        rhema_log(RHEMA_LOG_WARN, "auth",
                  "API keys are off and security.allow_unauthenticated_remote = true: any "
                  "client that reaches %s can do anything",
                  srv->cfg->listen);
    } else {
        rhema_log(RHEMA_LOG_WARN, "auth",
                  "protected mode: API keys are off (security.api_keys.enabled), so only "
                  "loopback clients are answered%s",
                  listen_loopback(srv->cfg->listen)
                      ? ""
                      : "; other clients get 403 (security.allow_unauthenticated_remote)");
    }
    return 0;
}

/* Append the strings of the list at path to f as "path=[a,b]". */
static void settings_list(FILE *f, const struct rhema_config *cfg, const char *path)
{
    char p[160];
    const char *s;
    int n = rhema_config_get_count(cfg, path);
    fprintf(f, "%s=[", path);
    for (int i = 0; i < n; i++) {
        snprintf(p, sizeof p, "%s[%d]", path, i);
        if (rhema_config_get_string(cfg, p, &s) == 0)
            fprintf(f, "%zu:%s,", strlen(s), s);
    }
    fputs("]\n", f);
}

static void settings_string(FILE *f, const struct rhema_config *cfg, const char *path)
{
    const char *s = "";
    rhema_config_get_string(cfg, path, &s);
    fprintf(f, "%s=%zu:%s\n", path, strlen(s), s);
}

/* Every setting rhema_auth_open() reads, as one text (malloc'd; NULL when out of memory). */
static char *settings_text(const struct rhema_config *cfg)
{
    char *buf = NULL, p[128];
    size_t len = 0;
    int b = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return NULL;
    rhema_config_get_bool(cfg, "security.api_keys.enabled", &b);
    fprintf(f, "enabled=%d\n", b);
    b = 0;
    rhema_config_get_bool(cfg, "security.allow_unauthenticated_remote", &b);
    fprintf(f, "remote=%d\n", b);
    settings_list(f, cfg, "security.api_keys.open_routes");
    for (int i = 0, n = rhema_config_get_count(cfg, "security.api_keys.keys"); i < n; i++) {
        static const char *const strs[] = {"name", "key_hash", "expires_at"};
        for (size_t k = 0; k < 3; k++) {
            snprintf(p, sizeof p, "security.api_keys.keys[%d].%s", i, strs[k]);
            settings_string(f, cfg, p);
        }
        snprintf(p, sizeof p, "security.api_keys.keys[%d].roles", i);
        settings_list(f, cfg, p);
    }
    for (int i = 0, n = rhema_config_get_count(cfg, "security.client_certificates"); i < n; i++) {
        static const char *const strs[] = {"subject", "san", "name"};
        for (size_t k = 0; k < 3; k++) {
            snprintf(p, sizeof p, "security.client_certificates[%d].%s", i, strs[k]);
            settings_string(f, cfg, p);
        }
        snprintf(p, sizeof p, "security.client_certificates[%d].roles", i);
        settings_list(f, cfg, p);
    }
    for (int i = 0, n = rhema_config_get_count(cfg, "security.roles"); i < n; i++) {
        snprintf(p, sizeof p, "security.roles[%d].name", i);
        settings_string(f, cfg, p);
        snprintf(p, sizeof p, "security.roles[%d].permissions", i);
        settings_list(f, cfg, p);
    }
    for (int i = 0, n = rhema_config_get_count(cfg, "security.rules"); i < n; i++) {
        static const char *const strs[] = {"path_prefix", "action"};
        static const char *const lists[] = {"methods", "roles"};
        for (size_t k = 0; k < 2; k++) {
            snprintf(p, sizeof p, "security.rules[%d].%s", i, strs[k]);
            settings_string(f, cfg, p);
            snprintf(p, sizeof p, "security.rules[%d].%s", i, lists[k]);
            settings_list(f, cfg, p);
        }
    }
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

int rhema_auth_settings_changed(const struct rhema_config *old, const struct rhema_config *neu)
{
    char *a = settings_text(old), *b = settings_text(neu);
    int changed = !a || !b || strcmp(a, b) != 0;
    free(a);
    free(b);
    return changed;
}

void rhema_auth_close(struct rhema_server *srv)
{
    auth_free(srv->auth);
    srv->auth = NULL;
}

/* ---- routes ---- */

static void reply_keystore_error(struct rhema_req *r, int rc, const char *err)
{
    rhema_reply_store_error(r, rc, err[0] ? err : rhema_strerror(rc));
}

static void h_keys_create(struct rhema_req *r)
{
    struct rhema_auth *a = r->worker->srv->auth;
    json_t *body = rhema_req_json(r), *rec = NULL;
    const char *key_name, *roles[RHEMA_AUTHZ_ROLES_MAX];
    char key[RHEMA_APIKEY_LEN + 1], err[RHEMA_ERRMSG_MAX] = "";
    uint64_t expires = 0;
    size_t nr = 0;
    const char *field;
    json_t *v;
    if (!body)
        return;
    if (!json_is_object(body)) {
        rhema_reply_error(r, 400, "invalid_field", "body: must be a JSON object");
        goto out;
    }
    json_object_foreach(body, field, v)
    {
        if (strcmp(field, "name") != 0 && strcmp(field, "roles") != 0 &&
            strcmp(field, "expires_at") != 0) {
            rhema_reply_error(r, 400, "invalid_field",
                              "field '%.64s': unknown (name, roles, expires_at)", field);
            goto out;
        }
    }
    v = json_object_get(body, "name");
    if (!json_is_string(v)) {
        rhema_reply_error(r, 400, "invalid_field", "field 'name': required, a string");
        goto out;
    }
    key_name = json_string_value(v);
    v = json_object_get(body, "roles");
    if (v && !json_is_array(v)) {
        rhema_reply_error(r, 400, "invalid_field", "field 'roles': must be an array of strings");
        goto out;
    }
    if (v && json_array_size(v) > RHEMA_AUTHZ_ROLES_MAX) {
        rhema_reply_error(r, 400, "invalid_field", "field 'roles': more than %d roles",
                          RHEMA_AUTHZ_ROLES_MAX);
        goto out;
    }
    for (size_t i = 0; v && i < json_array_size(v); i++) {
        if (!json_is_string(json_array_get(v, i))) {
            rhema_reply_error(r, 400, "invalid_field", "field 'roles[%zu]': must be a string", i);
            goto out;
        }
        roles[nr++] = json_string_value(json_array_get(v, i));
    }
    v = json_object_get(body, "expires_at");
    if (v && !json_is_null(v) &&
        (!json_is_string(v) || rhema_time_parse(json_string_value(v), &expires) != 0)) {
        rhema_reply_error(r, 400, "invalid_field", "field 'expires_at': an RFC 3339 time or null");
        goto out;
    }
    int rc = rhema_keystore_create(a->keys, &r->worker->store, key_name, roles, nr, expires, key,
                                   &rec, err);
    if (rc) {
        reply_keystore_error(r, rc, err);
        goto out;
    }
    rhema_audit_event("auth.key_created", r->request_id, rhema_req_key_id(r),
                      json_pack("{s:O?, s:O?, s:O?}", "id", json_object_get(rec, "id"), "name",
                                json_object_get(rec, "name"), "roles",
                                json_object_get(rec, "roles")));
    json_object_set_new(rec, "key", json_string(key));
    sodium_memzero(key, sizeof key);
    rhema_header(r, "Cache-Control", "no-store");
    rhema_reply_jsonv(r, 201, rec);
out:
    json_decref(body);
}

static void h_keys_list(struct rhema_req *r)
{
    struct rhema_auth *a = r->worker->srv->auth;
    json_t *items = NULL;
    char err[RHEMA_ERRMSG_MAX] = "";
    int rc = rhema_keystore_list(a->keys, &r->worker->store, rhema_realtime_ms(), &items, err);
    if (rc) {
        reply_keystore_error(r, rc, err);
        return;
    }
    rhema_reply_jsonv(r, 200, json_pack("{s:o, s:n}", "items", items, "next_cursor"));
}

static void h_keys_delete(struct rhema_req *r)
{
    struct rhema_auth *a = r->worker->srv->auth;
    char err[RHEMA_ERRMSG_MAX] = "";
    if (!rhema_apikey_id_valid(r->param)) {
        rhema_reply_error(r, 400, "invalid_field",
                          "path key id: '%s' is not a key's public id (12 characters "
                          "[0-9A-Za-z])",
                          r->param);
        return;
    }
    int rc = rhema_keystore_revoke(a->keys, &r->worker->store, r->param, err);
    if (rc) {
        reply_keystore_error(r, rc, err);
        return;
    }
    rhema_log(RHEMA_LOG_NOTICE, "auth", "API key %s revoked (request %s)", r->param, r->request_id);
    rhema_audit_event("auth.key_revoked", r->request_id, rhema_req_key_id(r),
                      json_pack("{s:s}", "id", r->param));
    rhema_reply_empty(r, 204);
}

static void add_permission(const char *pattern, void *arg)
{
    json_array_append_new((json_t *)arg, json_string(pattern));
}

static void h_whoami(struct rhema_req *r)
{
    struct rhema_auth *a = r->worker->srv->auth;
    const struct rhema_principal *p = &r->principal;
    char t[RHEMA_TIME_MAX];
    json_t *roles = json_array(), *perms = json_array();
    if (!a->enabled || !p->key_id[0]) { /* keys off: a loopback (or allowed) client */
        json_array_append_new(perms, json_string("*"));
        rhema_reply_jsonv(r, 200,
                          json_pack("{s:n, s:n, s:o, s:o, s:b, s:n}", "id", "name", "roles", roles,
                                    "permissions", perms, "authentication", 0, "expires_at"));
        return;
    }
    char buf[sizeof p->roles];
    snprintf(buf, sizeof buf, "%s", p->roles);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
        json_array_append_new(roles, json_string(tok));
    rhema_authz_permissions(a->authz, p->role_mask, add_permission, perms);
    if (p->expires_at_ms)
        rhema_time_format(p->expires_at_ms, t);
    rhema_reply_jsonv(r, 200,
                      json_pack("{s:s, s:s, s:o, s:o, s:b, s:o, s:s}", "id", p->key_id, "name",
                                p->name, "roles", roles, "permissions", perms, "authentication", 1,
                                "expires_at", p->expires_at_ms ? json_string(t) : json_null(),
                                "source", p->certificate   ? "certificate"
                                          : p->from_config ? "config"
                                                           : "runtime"));
}

const struct rhema_route rhema_auth_routes[] = {
    {RHEMA_M_GET, "/v1/auth/whoami", h_whoami, "auth:self", RHEMA_READS},
    {RHEMA_M_POST, "/v1/auth/keys", h_keys_create, "auth:admin", RHEMA_WRITES_STORAGE},
    {RHEMA_M_GET, "/v1/auth/keys", h_keys_list, "auth:read", RHEMA_READS},
    {RHEMA_M_DELETE, "/v1/auth/keys/{key_id}", h_keys_delete, "auth:admin", RHEMA_WRITES_STORAGE},
    {0},
};
