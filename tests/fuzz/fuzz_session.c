/*
 * fuzz_session -- the JSON bodies of the session routes, through the
 * validators their handlers call (core/api/api_sessions.c):
 * PUT /v1/sessions/{id} (rhema_session_validate) and
 * POST /v1/sessions/{id}/messages (rhema_message_validate), and with them
 * the shared field checks of core/json_fields.c.
 */
#include "rhema_build.h"

#include "fuzz.h"
#include "session.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[RHEMA_ERRMSG_MAX];
    json_t *body = fuzz_body(data, size), *out = NULL;
    if (!body)
        return 0;
    err[0] = '\0';
    fuzz_check_verdict(rhema_session_validate(body, fuzz_path_id(body, "id"), &out, err), &out,
                       err);
    err[0] = '\0';
    fuzz_check_verdict(rhema_message_validate(body, &out, err), &out, err);
    /* a message inside a session body: the same checker, one level down */
    json_t *msgs = json_object_get(body, "messages");
    for (size_t i = 0; i < json_array_size(msgs) && i < 4; i++) {
        err[0] = '\0';
        fuzz_check_verdict(rhema_message_validate(json_array_get(msgs, i), &out, err), &out, err);
    }
    json_decref(body);
    return 0;
}
