/*
 * api_services -- the HTTP API of the service registry (DESIGN.md §6) over
 * core/services.h.  Handlers run on their worker thread: the store calls
 * block on the worker's storage connection; select and feedback only
 * touch the in-memory snapshot.
 *
 *   PUT/GET/DELETE /v1/services/{service_id}     ServiceInfo (ETag: version)
 *   GET  /v1/services?name=&limit=&cursor=
 *   GET  /v1/services/{name}/select?key=         {service_id, address, name,
 *                                                strategy}; 404 unknown name,
 *                                                503 none healthy
 *   POST /v1/services/{service_id}/pass          a TTL check's heartbeat (204)
 *   POST /v1/services/{service_id}/feedback      {"latency_ms": n >= 0, "ok": bool} (204)
 * The segment after {x} tells a name (select) from a service_id (pass,
 * feedback).
 */
#ifndef RHEMA_CORE_API_SERVICES_H
#define RHEMA_CORE_API_SERVICES_H

#include "routes.h"

extern const struct rhema_route rhema_services_routes[];

#endif /* RHEMA_CORE_API_SERVICES_H */
