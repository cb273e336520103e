/*
 * fuzz_agents -- the JSON bodies of the agent routes, through the
 * validators their handlers call (core/api/api_agents.c):
 * PUT /v1/agents/{agent_id} (rhema_agent_validate), POST
 * /v1/agents/{agent_id}/heartbeat (rhema_agent_heartbeat_validate), PUT
 * /v1/system/metrics (rhema_system_metrics_validate) and PUT
 * /v1/configurations/{name} (rhema_configuration_validate).
 */
#include "rhema_build.h"

#include "agents.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[RHEMA_ERRMSG_MAX];
    json_t *body = fuzz_body(data, size), *out = NULL;
    if (!body)
        return 0;
    err[0] = '\0';
    fuzz_check_verdict(rhema_agent_validate(body, fuzz_path_id(body, "id"), &out, err), &out, err);
    err[0] = '\0';
    fuzz_check_verdict(rhema_agent_heartbeat_validate(body, &out, err), &out, err);
    err[0] = '\0';
    fuzz_check_verdict(rhema_system_metrics_validate(body, &out, err), &out, err);
    err[0] = '\0';
    fuzz_check_verdict(rhema_configuration_validate(body, fuzz_path_id(body, "name"), &out, err),
                       &out, err);
    json_decref(body);
    return 0;
}
