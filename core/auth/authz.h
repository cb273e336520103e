/*
 * authz -- roles and rules: may this principal do this request?
 *
 * A permission is "<area>:<verb>" ("sessions:read", "keys:admin"); every
 * route declares the one it needs (core/api/routes.h).  A role
 * (security.roles) grants permission patterns: "sessions:read",
 * "sessions:*" (every verb of an area), "*:read" (one verb of every area)
 * or "*" (everything).  A rule (security.rules) cuts finer, by path:
 *
 *   { path_prefix = "/v1/keys/"; methods = [ "POST" ]; action = "deny"; roles = [ "ops" ]; }
 *
 * A rule matches a request when its prefix matches the path at a segment
 * boundary ("/v1/sessions/a" matches "/v1/sessions/a" and
 * "/v1/sessions/a/messages", not "/v1/sessions/ab"; a prefix that ends
 * with '/' matches whatever follows), its methods include the request's
 * (none listed: every method) and its roles include one of the
 * principal's (none listed: every principal).  The decision:
 *
 *   1. Among the matching rules, the most specific decides: the longest
 *      prefix, then a rule that lists methods over one that does not.
 *      Between equally specific rules, deny beats allow.
 *   2. No rule matches: allowed when one of the principal's roles grants
 *      the route's permission.
 *   3. Otherwise denied: deny by default.
 *
 * Every authenticated principal also holds "auth:self" (GET
 * /v1/auth/whoami), unless a rule denies it.
 *
 * A principal's roles travel as a bit mask over the roles of the config
 * (at most RHEMA_AUTHZ_ROLES_MAX of them), so a check allocates nothing.
 * The struct is immutable once built and may be read by every thread.
 */
#ifndef RHEMA_CORE_AUTH_AUTHZ_H
#define RHEMA_CORE_AUTH_AUTHZ_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

#define RHEMA_AUTHZ_ROLES_MAX 64
#define RHEMA_AUTHZ_NAME_MAX 64

/* Method bits, the same values as RHEMA_M_* of core/api/http.h. */
#define RHEMA_AUTHZ_GET 1u
#define RHEMA_AUTHZ_PUT 2u
#define RHEMA_AUTHZ_POST 4u
#define RHEMA_AUTHZ_DELETE 8u

struct rhema_authz;

/* An empty engine (no role, no rule: everything denied). */
int rhema_authz_new(struct rhema_authz **out);
void rhema_authz_free(struct rhema_authz *a);

/*
 * Add a role granting n permission patterns; RHEMA_EINVAL with *err
 * (malloc'd) for a bad name or pattern, a duplicate, or one role too many.
 */
int rhema_authz_add_role(struct rhema_authz *a, const char *name, const char *const *perms,
                         size_t n, char **err);
/*
 * Add a rule; methods is a mask of RHEMA_AUTHZ_* (0: every method), roles
 * the names of roles added before (n 0: every principal).
 */
int rhema_authz_add_rule(struct rhema_authz *a, const char *path_prefix, unsigned methods,
                         int allow, const char *const *roles, size_t n, char **err);

/* security.roles and security.rules of cfg; errors name the setting. */
int rhema_authz_from_config(const struct rhema_config *cfg, struct rhema_authz **out, char **err);

/* The index of a role by name, or -1. */
int rhema_authz_role_index(const struct rhema_authz *a, const char *name);
const char *rhema_authz_role_name(const struct rhema_authz *a, int index);
size_t rhema_authz_role_count(const struct rhema_authz *a);

/* A method name ("GET", ...) -> its bit, 0 when it is none. */
unsigned rhema_authz_method(const char *name);

/* 1 when p is a permission pattern (area:verb, area:*, *:verb, *), else 0. */
int rhema_permission_valid(const char *p);
/* 1 when pattern grants perm. */
int rhema_permission_match(const char *pattern, const char *perm);

/*
 * The decision for a principal holding the roles of the mask: 1 allow, 0
 * deny.  method is one RHEMA_AUTHZ_* bit; path the decoded request path;
 * permission the route's.
 */
int rhema_authz_check(const struct rhema_authz *a, uint64_t roles, unsigned method,
                      const char *path, const char *permission);

/*
 * The permission patterns the roles of the mask grant, each once, in role
 * order, "auth:self" first: fn(pattern, arg) for each.
 */
void rhema_authz_permissions(const struct rhema_authz *a, uint64_t roles,
                             void (*fn)(const char *pattern, void *arg), void *arg);

/*
 * Protected mode (keys off): 1 when host, a numeric client address, is a
 * loopback one (127.0.0.0/8, ::1, ::ffff:127.x.y.z), else 0.
 */
int rhema_addr_loopback(const char *host);

#endif /* RHEMA_CORE_AUTH_AUTHZ_H */
