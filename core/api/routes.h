/*
 * routes -- the route table and the router.
 *
 * Every HTTP route is one line of a static table in its API module
 * (api_sessions.c, api_consensus.c, ...), and a route cannot be declared
 * without saying what it is:
 *
 *   { RHEMA_M_PUT, "/v1/sessions/{id}", h_put, "sessions:write", RHEMA_WRITES_STORAGE }
 *
 *   method       one of RHEMA_M_GET (answers HEAD too), _PUT, _POST, _DELETE,
 *                _PATCH;
 *                a resource that answers several methods has one line each
 *   path         the template: literal segments and at most two {name}
 *                segments, each of which matches an id (1-128 characters
 *                [A-Za-z0-9._:-]) and reaches the handler as r->param (the
 *                second as r->param2).  A segment that is not an id is 400 "path <name>: ...",
 *                '_' in the name read as a space ({agent_id}: "path agent id")
 *   handler      void h(struct rhema_req *r); it answers the request
 *   permission   what a principal needs, "<area>:<verb>" ("sessions:read",
 *                "keys:admin"); issue 9's authorization stage enforces it
 *   effect       RHEMA_READS, RHEMA_WRITES (changes state outside the
 *                storage backend: the keyring, a balancer's statistics) or
 *                RHEMA_WRITES_STORAGE; every write is fenced (X-Rhema-Epoch,
 *                DESIGN.md §7) and audited; a PUT, PATCH or POST that writes
 *                storage also counts against persistence.max_data_size_bytes
 *
 * A table ends with a zeroed entry.  A line that leaves a field out does
 * not compile (-Wextra's missing-field-initializers, -Werror in CI);
 * rhema_routes_check() refuses a table with a NULL, zero or malformed field; the daemon runs it before it listens
 * (pipeline.c), and tests/unit/test_routes.c walks the tables with it.
 */
#ifndef RHEMA_CORE_API_ROUTES_H
#define RHEMA_CORE_API_ROUTES_H

#include "http.h"

enum rhema_route_effect {
    RHEMA_READS = 1,      /* 0 is left out on purpose: an undeclared effect is refused */
    RHEMA_WRITES,
    RHEMA_WRITES_STORAGE,
};

struct rhema_route {
    unsigned method;
    const char *path;
    void (*handler)(struct rhema_req *r);
    const char *permission;
    enum rhema_route_effect effect;
};

/*
 * Find r's route in tables (a NULL-terminated list of tables; the first
 * template that matches the path wins, so a literal segment is listed
 * before a {param} at the same place).  On success sets r->route and
 * r->param and returns the route.  Otherwise answers the request itself
 * -- 404, 400 for a segment that is not an id, 405 with Allow, or the
 * OPTIONS preflight -- and returns NULL.
 */
const struct rhema_route *rhema_route_match(struct rhema_req *r,
                                            const struct rhema_route *const *tables);

/*
 * Check every route of tables: one method, a template that starts with '/'
 * and has at most two well-formed {param}s, a handler, a permission
 * "<area>:<verb>" in lower case, a declared effect, a DELETE or PUT that
 * writes, a GET that does not, and no template+method twice.  0, or
 * RHEMA_EINVAL and *err (malloc'd) naming the first bad route.
 */
int rhema_routes_check(const struct rhema_route *const *tables, char **err);

#endif /* RHEMA_CORE_API_ROUTES_H */
