/*
 * api_auth -- the pipeline's authenticate and authorize stages, and the
 * routes of API keys (doc/security.md, doc/http-api.md):
 *
 *   POST   /v1/auth/keys            {"name", "roles", "expires_at"} -> 201
 *                                   {"id", "key", "name", "roles",
 *                                   "expires_at", "created_at"}; the key
 *                                   is in no other answer, ever
 *   GET    /v1/auth/keys            {"items": [...]}: static and runtime
 *                                   keys, never a secret or a hash
 *   DELETE /v1/auth/keys/{key_id}   revoke a runtime key: 204
 *   GET    /v1/auth/whoami          the caller's key id, name, roles and
 *                                   effective permissions
 *
 * The state (struct rhema_auth, srv->auth) is made by rhema_auth_open()
 * before the workers start and freed after they stopped; it is read-only
 * in between (the keystore keeps its own per-worker caches).
 */
#ifndef RHEMA_CORE_API_AUTH_H
#define RHEMA_CORE_API_AUTH_H

#include "routes.h"

extern const struct rhema_route rhema_auth_routes[];

/*
 * The authenticate stage, before routing.  With security.api_keys.enabled,
 * a key presented as "Authorization: Bearer <key>" or "X-API-Key: <key>"
 * is checked and r->principal filled; a bad, unknown, revoked or expired
 * key is 401 with WWW-Authenticate: Bearer, a backend that cannot be
 * asked 503.  No key at all is left for authorize to judge.  1 when it
 * replied (the caller returns), 0 otherwise.
 */
int rhema_authenticate(struct rhema_req *r);

/*
 * The authorize stage, after routing: the route rt against r->principal
 * (auth/authz.h), or, with keys off, protected mode (only loopback
 * clients unless security.allow_unauthenticated_remote).  /health/live,
 * /health/ready and security.api_keys.open_routes are always answered.
 * 401 without a key, 403 without the permission; 1 when it replied.
 */
int rhema_authorize(struct rhema_req *r, const struct rhema_route *rt);

/*
 * 1 when r's caller holds `permission` besides its route's (a handler that
 * widens what it shows, as GET /v1/usage?key= for ai:admin): always with
 * keys off (protected mode let the request in), else as its roles grant.
 */
int rhema_auth_permits(const struct rhema_req *r, const char *permission);

/*
 * Build srv->auth from the configuration (roles, rules, static keys,
 * open routes; checked against the route tables) and log the protected
 * mode warning.  0, or RHEMA_E* and *err (malloc'd).
 */
int rhema_auth_open(struct rhema_server *srv, const struct rhema_route *const *tables, char **err);
void rhema_auth_close(struct rhema_server *srv);

/* 1 when API keys are on, with the number of keys from the configuration in *static_keys. */
int rhema_auth_key_stats(const struct rhema_server *srv, size_t *static_keys);

/*
 * 1 when a reload changed a setting rhema_auth_open() reads (security.*
 * but audit): those take a restart.  Main thread.
 */
int rhema_auth_settings_changed(const struct rhema_config *old, const struct rhema_config *neu);

/* The same checks as rhema_auth_open() for rhemad -t; nothing is kept. */
int rhema_auth_check(const struct rhema_config *cfg, const struct rhema_route *const *tables,
                     char **err);

#endif /* RHEMA_CORE_API_AUTH_H */
