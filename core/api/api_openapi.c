/*
 * api_openapi -- serve the compiled-in OpenAPI description (api_openapi.h).
 */
#include "rhema_build.h"

#include "api_openapi.h"
#include "http.h"
#include "query.h"

static void h_openapi(struct rhema_req *r)
{
    if (rhema_query_check(r, NULL))
        return;
    rhema_header(r, "Cache-Control", "no-cache");
    rhema_reply(r, 200, "application/yaml", rhema_openapi_yaml, rhema_openapi_yaml_len);
}

const struct rhema_route rhema_openapi_routes[] = {
    {RHEMA_M_GET, "/v1/openapi.yaml", h_openapi, "operations:read", RHEMA_READS},
    {0, NULL, NULL, NULL, 0},
};
