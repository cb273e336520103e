/*
 * services_health -- the health-check state machine (services.h: "Health
 * checks"): how one result moves an instance between Unknown, Healthy and
 * Unhealthy under the failure and success thresholds, what an HTTP status
 * means, and when a TTL check expired.  Pure functions of their
 * arguments; the checker in services_checker.c runs the probes and stores
 * what these decide.
 */
#include "rhema_build.h"

#include <string.h>

#include "services.h"

int rhema_check_apply(struct rhema_check_state *s, enum rhema_check_result result,
                      uint32_t failure_threshold, uint32_t success_threshold, uint64_t now_ms)
{
    enum rhema_health before = s->status;
    if (failure_threshold < 1)
        failure_threshold = 1;
    if (success_threshold < 1)
        success_threshold = 1;
    if (result == RHEMA_CHECK_CRITICAL) {
        s->fail_streak++;
        s->ok_streak = 0;
        if (s->status == RHEMA_HEALTH_UNKNOWN ||
            (s->status == RHEMA_HEALTH_HEALTHY && s->fail_streak >= failure_threshold))
            s->status = RHEMA_HEALTH_UNHEALTHY;
    } else {
        s->ok_streak++;
        s->fail_streak = 0;
        if (s->status == RHEMA_HEALTH_UNKNOWN ||
            (s->status == RHEMA_HEALTH_UNHEALTHY && s->ok_streak >= success_threshold))
            s->status = RHEMA_HEALTH_HEALTHY;
    }
    if (s->status == RHEMA_HEALTH_UNHEALTHY && before != RHEMA_HEALTH_UNHEALTHY)
        s->critical_since_ms = now_ms;
    else if (s->status != RHEMA_HEALTH_UNHEALTHY)
        s->critical_since_ms = 0;
    return s->status != before;
}

enum rhema_check_result rhema_check_http_result(int status)
{
    if (status >= 200 && status <= 299)
        return RHEMA_CHECK_PASSING;
    if (status == 429)
        return RHEMA_CHECK_WARNING;
    return RHEMA_CHECK_CRITICAL;
}

int rhema_check_ttl_ok(uint64_t last_pass_ms, uint64_t interval_s, uint64_t timeout_s,
                       uint64_t now_ms)
{
    return now_ms <= last_pass_ms || now_ms - last_pass_ms <= (interval_s + timeout_s) * 1000u;
}

enum rhema_health rhema_health_parse(const char *s)
{
    if (s && strcmp(s, "Healthy") == 0)
        return RHEMA_HEALTH_HEALTHY;
    if (s && strcmp(s, "Unhealthy") == 0)
        return RHEMA_HEALTH_UNHEALTHY;
    return RHEMA_HEALTH_UNKNOWN;
}

const char *rhema_health_name(enum rhema_health h)
{
    return h == RHEMA_HEALTH_HEALTHY     ? "Healthy"
           : h == RHEMA_HEALTH_UNHEALTHY ? "Unhealthy"
                                         : "Unknown";
}
