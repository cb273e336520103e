/*
 * api_agents -- the HTTP API of agents, system metrics and configurations
 * (DESIGN.md §6) over core/agents.c.  Handlers run on their worker thread
 * and call storage synchronously through r->worker->store.
 *
 *   PUT/GET/DELETE /v1/agents/{id}           AgentInfo (PUT body may carry
 *                                            "status_reason" for the transition)
 *   GET  /v1/agents?status=&capability=&limit=&cursor=
 *   GET  /v1/agents/{id}/transitions?limit=&cursor=
 *   POST /v1/agents/{id}/heartbeat           optional body {status, current_task_id,
 *                                            status_reason}
 *   GET  /v1/agents/stats                    AgentPerformanceStats ("stats" is
 *                                            therefore not usable as an agent id)
 *   PUT/GET /v1/system/metrics               SystemMetrics
 *   PUT/GET /v1/configurations/{name}[?version=N]   versioned StoredConfiguration
 *   GET  /v1/configurations/{name}/versions?limit=&cursor=
 */
#ifndef RHEMA_CORE_API_AGENTS_H
#define RHEMA_CORE_API_AGENTS_H

#include "routes.h"

/* agents, system metrics and configurations */
extern const struct rhema_route rhema_agents_routes[];

#endif /* RHEMA_CORE_API_AGENTS_H */
