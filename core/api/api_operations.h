/*
 * api_operations -- what an operator and a load balancer read, and the
 * compression routes (DESIGN.md §6):
 *   GET  /health, /health/live, /health/ready
 *   GET  /v1/plugins, /v1/stats, /v1/alerts
 *   POST /v1/messages/compress?algorithm=&level=, /v1/messages/decompress
 *        (raw bytes in and out: the frames of DESIGN.md §3)
 */
#ifndef RHEMA_CORE_API_OPERATIONS_H
#define RHEMA_CORE_API_OPERATIONS_H

#include "routes.h"

extern const struct rhema_route rhema_operations_routes[];

#endif /* RHEMA_CORE_API_OPERATIONS_H */
