/*
 * health -- the components of GET /health (issue 11 item 3): each one's
 * status (Healthy, Degraded, Unhealthy), a message and the time of its last
 * check; the overall status is the worst of them.
 *
 * The built-in components (rhema_health_open) are the storage backend, the
 * cluster, the keyring, the audit log and maintenance.  A subsystem that
 * comes later (the AI gateway's upstreams, a cache) registers its own with
 * rhema_health_register() while it starts, and unregisters before it stops.
 *
 * A check runs on the worker answering GET /health, with that worker's
 * storage connection: it must be quick and must not block on the network
 * (read state the subsystem keeps; set checked_ms to when that state was
 * last refreshed -- left 0, it is the time of the request).
 */
#ifndef RHEMA_CORE_HEALTH_H
#define RHEMA_CORE_HEALTH_H

#include <stdint.h>

#include <jansson.h>

#include "server.h"

enum rhema_health_status { RHEMA_HEALTHY, RHEMA_DEGRADED, RHEMA_UNHEALTHY };
const char *rhema_health_status_name(enum rhema_health_status s);

#define RHEMA_HEALTH_MSG_MAX 256
struct rhema_health_result {
    enum rhema_health_status status;
    char message[RHEMA_HEALTH_MSG_MAX];
    uint64_t checked_ms; /* when the state was last checked; 0: now */
};

/* A component's check: fill *out (status Healthy and "" on entry). */
typedef void rhema_health_check_fn(void *arg, struct rhema_server *srv, rhema_storage_conn *conn,
                                   struct rhema_health_result *out);

struct rhema_health_registry;

/* The registry with the built-in components.  0 or RHEMA_ENOMEM. */
int rhema_health_open(struct rhema_health_registry **out);
void rhema_health_close(struct rhema_health_registry *h);
/*
 * Add a component (name: [a-z0-9_]{1,63}, unique).  Any thread.  0,
 * RHEMA_EINVAL (bad or taken name), RHEMA_ENOMEM.
 */
int rhema_health_register(struct rhema_health_registry *h, const char *name, rhema_health_check_fn *fn,
                          void *arg);
/* Remove a component; a no-op when there is none of that name. */
void rhema_health_unregister(struct rhema_health_registry *h, const char *name);
/*
 * Check every component: {"<name>": {"status", "message", "checked_at"}},
 * in registration order, and the worst status in *worst.
 */
json_t *rhema_health_check(struct rhema_health_registry *h, struct rhema_server *srv,
                           rhema_storage_conn *conn, enum rhema_health_status *worst);

#endif /* RHEMA_CORE_HEALTH_H */
