/*
 * ratelimit -- the pipeline's rate-limit stage (ai_service.rate_limiting,
 * doc/security.md "Rate limiting").
 *
 * One policy per window (minute, hour, day), GCRA in each, all counted in
 * one atomic step by the storage backend's rate() (<rhema/storage.h>), so
 * the nodes of a cluster on one shared backend enforce one limit, not one
 * each.  A backend without rate() leaves the limits in this process's
 * memory (one limit per node; said at startup).  The limited party is the
 * API key (its public id), or the client address when the request carries
 * no key.  Every limited response carries RateLimit-Policy and RateLimit
 * (draft-ietf-httpapi-ratelimit-headers); a refusal is 429 with
 * Retry-After.  When the backend cannot answer, failure_mode decides
 * (open: served; closed: 503), and the failure is counted and logged.
 *
 * The state (struct rhema_limits, srv->limits) is built before the workers
 * start and is read-only afterwards, but for its atomic counters.
 */
#ifndef RHEMA_CORE_LIMIT_RATELIMIT_H
#define RHEMA_CORE_LIMIT_RATELIMIT_H

#include <stdint.h>

struct rhema_config;
struct rhema_req;
struct rhema_route;
struct rhema_server;

/* The stage: 1 when it replied (429, or 503 with failure_mode closed), 0 to go on. */
int rhema_rate_limit(struct rhema_req *r, const struct rhema_route *rt);

/* Build srv->limits (NULL when rate limiting is off).  0, or RHEMA_E* and *err (malloc'd). */
int rhema_limits_open(struct rhema_server *srv, char **err);
void rhema_limits_close(struct rhema_server *srv);

/* The same checks as rhema_limits_open() for rhemad -t; nothing is kept. */
int rhema_limits_check(const struct rhema_config *cfg, char **err);

/* 1 when a reload changed ai_service.rate_limiting (a restart applies it). */
int rhema_limits_settings_changed(const struct rhema_config *old, const struct rhema_config *neu);

struct rhema_limits_stats {
    uint64_t allowed;        /* requests counted and let through */
    uint64_t refused;        /* 429 */
    uint64_t backend_errors; /* rate() failed: let through (open) or 503 (closed) */
};
/* Counters since start (all zero when rate limiting is off). */
void rhema_limits_stats(const struct rhema_server *srv, struct rhema_limits_stats *out);

#endif /* RHEMA_CORE_LIMIT_RATELIMIT_H */
