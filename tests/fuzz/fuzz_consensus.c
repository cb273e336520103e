/*
 * fuzz_consensus -- the JSON bodies of the consensus routes, through the
 * validators their handlers call (core/api/api_consensus.c):
 * PUT /v1/consensus/{node}/state (rhema_consensus_state_validate) and
 * POST /v1/consensus/{node}/log (rhema_consensus_entries_validate).
 */
#include "rhema_build.h"

#include "consensus.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[RHEMA_ERRMSG_MAX];
    json_t *body = fuzz_body(data, size), *out = NULL;
    if (!body)
        return 0;
    err[0] = '\0';
    fuzz_check_verdict(rhema_consensus_state_validate(body, fuzz_path_id(body, "node_id"), &out,
                                                      err),
                       &out, err);
    err[0] = '\0';
    int rc = rhema_consensus_entries_validate(body, &out, err);
    if (rc == 0) { /* an array of entries, never empty */
        fuzz_assert(json_is_array(out) && json_array_size(out) > 0);
        fuzz_check_texts(out, NULL);
        json_decref(out);
        out = NULL;
    } else {
        fuzz_assert(rc < 0 && out == NULL && err[0]);
    }
    json_decref(body);
    return 0;
}
