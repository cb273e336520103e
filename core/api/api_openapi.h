/*
 * api_openapi -- GET /v1/openapi.yaml: the OpenAPI 3.1 description of
 * every route (doc/openapi.yaml), compiled into rhemad.
 *
 * make turns doc/openapi.yaml into core/api/openapi_doc.c (a C string,
 * rhema_openapi_yaml), so the daemon serves the description of the very
 * routes it was built with and needs no installed file.  The route needs
 * operations:read, like the other descriptions of the daemon
 * (/v1/plugins, /v1/stats).
 */
#ifndef RHEMA_CORE_API_OPENAPI_H
#define RHEMA_CORE_API_OPENAPI_H

#include <stddef.h>

#include "routes.h"

extern const struct rhema_route rhema_openapi_routes[];

/* doc/openapi.yaml, NUL-terminated; its length without the NUL */
extern const char rhema_openapi_yaml[];
extern const size_t rhema_openapi_yaml_len;

#endif
