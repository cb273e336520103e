/*
 * fuzz_services -- the JSON body of PUT /v1/services/{service_id}, through
 * the validator its handler calls (rhema_service_validate,
 * core/services_validate.c) with the default check settings.  The
 * strategy is not checked against loaded balancers (s = NULL), which the
 * handler's caller decides, not the parser.
 */
#include "rhema_build.h"

#include "config.h"
#include "fuzz.h"
#include "services.h"

static struct rhema_check_defaults defaults;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    struct rhema_config cfg;
    char *err = NULL;
    (void)argc, (void)argv;
    if (rhema_config_load(&cfg, NULL, NULL, 0, NULL, &err) != 0) {
        fprintf(stderr, "fuzz_services: %s\n", err ? err : "config");
        abort();
    }
    rhema_check_defaults_get(&cfg, &defaults);
    rhema_config_release(&cfg);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[RHEMA_ERRMSG_MAX];
    json_t *body = fuzz_body(data, size), *out = NULL;
    if (!body)
        return 0;
    err[0] = '\0';
    fuzz_check_verdict(rhema_service_validate(body, fuzz_path_id(body, "service_id"), &defaults,
                                              NULL, &out, err),
                       &out, err);
    json_decref(body);
    return 0;
}
