/*
 * pipeline -- the request path of rhemad, in one place (pipeline.c).
 *
 * main.c starts the API with rhema_api_start(): the route tables are
 * checked, then the HTTP workers start with rhema_pipeline_run() as the
 * function every request goes through.
 */
#ifndef RHEMA_CORE_API_PIPELINE_H
#define RHEMA_CORE_API_PIPELINE_H

struct rhema_req;
struct rhema_route;
struct rhema_server;
struct rhema_config;

/* Every route table of the daemon, in matching order, NULL-terminated. */
extern const struct rhema_route *const rhema_api_routes[];

/* Run one request through every stage (worker thread). */
void rhema_pipeline_run(struct rhema_req *r);

/*
 * Check the route tables (a malformed route is a bug: the message names
 * it), then start the HTTP workers (http.h: rhema_http_start).  0, or a
 * negative code and *err (malloc'd).
 */
int rhema_api_start(struct rhema_server *srv, char **err);
/*
 * rhemad -t: the settings the API reads when it starts (security: roles,
 * rules, static keys, open routes).  0, or RHEMA_EINVAL and *err.
 */
int rhema_api_check(const struct rhema_config *cfg, char **err);
/*
 * SIGHUP: 1 when the new configuration changes what the API read at start
 * (the security section: keys, roles, rules, protected mode), which takes
 * a restart.
 */
int rhema_api_reload_needs_restart(const struct rhema_config *old, const struct rhema_config *neu);
/* Drain and stop the workers (http.h: rhema_http_stop). */
void rhema_api_stop(struct rhema_server *srv);

#endif /* RHEMA_CORE_API_PIPELINE_H */
