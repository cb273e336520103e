/*
 * test_balancer -- run the balancer conformance suite against the real
 * strategies, loaded through the real loader and configured through the
 * real config.
 *
 * Prints TAP (checks are discovered at run time, so the plan comes last)
 * and exits non-zero when any check fails.  A passing check that measured
 * something (shares, disruption) gets its measurement on a "#" line.
 *
 * Environment:
 *   RHEMA_PLUGIN_DIR            where balancer_<name>.so live (required)
 *   RHEMA_CONFORMANCE_BALANCERS strategies to test, separated by spaces or
 *                               commas (default: the six in-tree ones); one
 *                               whose file is absent or fails to load fails
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rhema/balancer.h>

#include "balancer_suite.h"
#include "config.h"
#include "plugin.h"

#define DEFAULT_BALANCERS                                                                          \
    "round_robin least_connections weighted_round_robin least_response_time random ip_hash"

static unsigned tap_n, tap_failed;

static void tap(const char *name, const char *test, int ok, const char *detail)
{
    tap_n++;
    if (ok == RHEMA_CONF_SKIP) {
        printf("ok %u - %s: %s # SKIP %s\n", tap_n, name, test, detail ? detail : "");
    } else if (ok == RHEMA_CONF_PASS) {
        printf("ok %u - %s: %s\n", tap_n, name, test);
        if (detail != NULL && detail[0] != '\0')
            printf("# %s\n", detail);
    } else {
        tap_failed++;
        printf("not ok %u - %s: %s\n", tap_n, name, test);
        if (detail != NULL && detail[0] != '\0')
            printf("# %s\n", detail);
    }
    fflush(stdout);
}

static void report(void *ctx, const char *test, int ok, const char *detail)
{
    tap(ctx, test, ok, detail);
}

static void run_one(struct rhema_plugin_registry *reg, const char *dir, const char *name)
{
    const struct rhema_loaded_plugin *lp = NULL;
    struct rhema_conf_totals t = {0, 0, 0};
    struct rhema_config cfg;
    char *err = NULL, msg[1200];
    int rc;

    rc = rhema_plugin_load(reg, name, dir, RHEMA_KIND_BALANCER, &lp, &err);
    if (rc != 0) {
        snprintf(msg, sizeof msg, "%s", err ? err : rhema_strerror(rc));
        free(err);
        tap(name, "load", RHEMA_CONF_FAIL, msg);
        return;
    }
    tap(name, "load", RHEMA_CONF_PASS, "");
    rc = rhema_config_load(&cfg, NULL, NULL, 0, NULL, &err);
    if (rc != 0) {
        snprintf(msg, sizeof msg, "rhema_config_load: %s", err ? err : rhema_strerror(rc));
        free(err);
        tap(name, "config", RHEMA_CONF_FAIL, msg);
        return;
    }
    rhema_conformance_balancer(&lp->vt.balancer, rhema_host_get(),
                               rhema_config_plugin_group(&cfg, RHEMA_KIND_BALANCER, name), report,
                               (void *)name, &t);
    rhema_config_release(&cfg);
    printf("# %s: %u passed, %u failed, %u skipped\n", name, t.passed, t.failed, t.skipped);
}

int main(void)
{
    const char *dir = getenv("RHEMA_PLUGIN_DIR");
    const char *env = getenv("RHEMA_CONFORMANCE_BALANCERS");
    struct rhema_plugin_registry *reg = NULL;
    char *list, *save = NULL;

    if (dir == NULL || *dir == '\0') {
        printf("Bail out! RHEMA_PLUGIN_DIR is not set\n");
        return 1;
    }
    list = strdup(env && *env ? env : DEFAULT_BALANCERS);
    if (list == NULL || rhema_plugins_new(&reg) != 0) {
        printf("Bail out! out of memory\n");
        return 1;
    }
    for (char *name = strtok_r(list, " ,\t", &save); name != NULL;
         name = strtok_r(NULL, " ,\t", &save))
        run_one(reg, dir, name);
    rhema_plugins_free(reg);
    free(list);

    printf("1..%u\n", tap_n);
    if (tap_failed != 0)
        printf("# %u of %u checks failed\n", tap_failed, tap_n);
    return tap_failed != 0 || tap_n == 0;
}
