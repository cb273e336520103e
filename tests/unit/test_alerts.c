/*
 * test_alerts -- the alert engine on a fake clock: inactive, pending (for),
 * firing, resolved; keep_firing_for against flapping; no value is no alert;
 * cluster-wide rules only on the leader; the Alertmanager (webhook v4)
 * payloads of firing and resolved; the history; the transition counters and
 * the ALERTS-like gauge; series selectors; rules from a configuration file
 * and the errors that name the key at fault.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "metrics/alerts.h"
#include "config.h"
#include "metrics/metrics.h"
#include "util.h"

#define T0 1764950400000ull /* 2025-12-05T16:00:00Z */

/* The fake metric: its value, or none. */
static struct {
    double v;
    int has;
    int reads;
} metric;

static int value_fn(void *ctx, const char *name, double *out)
{
    (void)ctx, (void)name;
    metric.reads++;
    if (!metric.has)
        return -1;
    *out = metric.v;
    return 0;
}

/* The payloads handed over, in order. */
static char *sent[16];
static size_t nsent;

static void notify_fn(void *ctx, char *payload)
{
    (void)ctx;
    assert_true(nsent < 16);
    sent[nsent++] = payload;
}

static void reset(void)
{
    for (size_t i = 0; i < nsent; i++)
        free(sent[i]);
    nsent = 0;
    metric.has = 0;
    metric.v = 0;
    metric.reads = 0;
}

static struct rhema_alerts *engine(uint64_t for_ms, uint64_t keep_ms, int cluster)
{
    static const char *const labels[] = {"team=ops"};
    struct rhema_alerts *a = NULL;
    char *err = NULL;
    struct rhema_alert_rule_def d = {.name = "QueueHigh", .metric = "rhema_http_requests_in_flight",
                                     .cmp = RHEMA_CMP_GT, .threshold = 10, .for_ms = for_ms,
                                     .keep_firing_for_ms = keep_ms, .severity = "critical",
                                     .cluster = cluster, .labels = labels, .nlabels = 1};
    reset();
    assert_int_equal(rhema_alerts_new(NULL, "127.0.0.1:8080", &a, &err), 0);
    if (rhema_alerts_add_rule(a, &d, &err) != 0)
        fail_msg("%s", err);
    return a;
}

static void eval(struct rhema_alerts *a, uint64_t at_s, double v)
{
    metric.has = 1;
    metric.v = v;
    rhema_alerts_eval(a, T0 + at_s * 1000, 1, value_fn, NULL, notify_fn, NULL);
}

static int state(struct rhema_alerts *a) { return rhema_alerts_state(a, "QueueHigh"); }

/* The one alert of an Alertmanager v4 payload, its status checked. */
static json_t *payload_alert(const char *text, const char *status, json_t **root)
{
    json_error_t je;
    json_t *o = json_loads(text, 0, &je), *al;
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "version")), "4");
    assert_string_equal(json_string_value(json_object_get(o, "status")), status);
    assert_non_null(json_string_value(json_object_get(o, "receiver")));
    assert_non_null(json_string_value(json_object_get(o, "groupKey")));
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(o, "groupLabels"), "alertname")),
        "QueueHigh");
    al = json_object_get(o, "alerts");
    assert_int_equal(json_array_size(al), 1);
    al = json_array_get(al, 0);
    assert_string_equal(json_string_value(json_object_get(al, "status")), status);
    *root = o;
    return al;
}

static void test_pending_firing_resolved(void **state_)
{
    (void)state_;
    struct rhema_alerts *a = engine(30000, 0, 0);
    json_t *root, *al, *labels;

    eval(a, 0, 5);
    assert_int_equal(state(a), RHEMA_ALERT_INACTIVE);
    eval(a, 10, 11);
    assert_int_equal(state(a), RHEMA_ALERT_PENDING);
    eval(a, 39, 12); /* 29 s pending: not yet */
    assert_int_equal(state(a), RHEMA_ALERT_PENDING);
    assert_int_equal(nsent, 0);
    eval(a, 40, 12); /* 30 s: firing, one notification */
    assert_int_equal(state(a), RHEMA_ALERT_FIRING);
    assert_int_equal(nsent, 1);
    al = payload_alert(sent[0], "firing", &root);
    labels = json_object_get(al, "labels");
    assert_string_equal(json_string_value(json_object_get(labels, "alertname")), "QueueHigh");
    assert_string_equal(json_string_value(json_object_get(labels, "severity")), "critical");
    assert_string_equal(json_string_value(json_object_get(labels, "team")), "ops");
    assert_string_equal(json_string_value(json_object_get(labels, "instance")), "127.0.0.1:8080");
    assert_string_equal(json_string_value(json_object_get(al, "startsAt")),
                        "2025-12-05T16:00:10.000Z");
    assert_string_equal(json_string_value(json_object_get(al, "endsAt")), "0001-01-01T00:00:00Z");
    const char *fp = json_string_value(json_object_get(al, "fingerprint"));
    assert_non_null(fp);
    assert_int_equal(strlen(fp), 16);
    char fp1[17];
    strcpy(fp1, fp);
    assert_non_null(json_string_value(
        json_object_get(json_object_get(al, "annotations"), "description")));
    json_decref(root);

    eval(a, 50, 20); /* still firing: nothing sent */
    assert_int_equal(nsent, 1);
    eval(a, 60, 3); /* clears: resolved, notified with endsAt */
    assert_int_equal(state(a), RHEMA_ALERT_RESOLVED);
    assert_int_equal(nsent, 2);
    al = payload_alert(sent[1], "resolved", &root);
    assert_string_equal(json_string_value(json_object_get(al, "endsAt")),
                        "2025-12-05T16:01:00.000Z");
    assert_string_equal(json_string_value(json_object_get(al, "startsAt")),
                        "2025-12-05T16:00:10.000Z");
    assert_string_equal(json_string_value(json_object_get(al, "fingerprint")), fp1);
    json_decref(root);

    /* the history holds the episode, newest first, with its times */
    json_t *j = rhema_alerts_json(a);
    json_t *h = json_array_get(json_object_get(j, "history"), 0);
    assert_int_equal(json_array_size(json_object_get(j, "history")), 1);
    assert_int_equal(json_array_size(json_object_get(j, "active")), 0);
    assert_string_equal(json_string_value(json_object_get(h, "state")), "resolved");
    assert_string_equal(json_string_value(json_object_get(h, "raised_at")),
                        "2025-12-05T16:00:10.000Z");
    assert_string_equal(json_string_value(json_object_get(h, "fired_at")),
                        "2025-12-05T16:00:40.000Z");
    assert_string_equal(json_string_value(json_object_get(h, "resolved_at")),
                        "2025-12-05T16:01:00.000Z");
    json_decref(j);

    /* it can fire again: a new episode */
    eval(a, 70, 11);
    assert_int_equal(state(a), RHEMA_ALERT_PENDING);
    j = rhema_alerts_json(a);
    assert_int_equal(json_array_size(json_object_get(j, "history")), 2);
    assert_int_equal(json_array_size(json_object_get(j, "active")), 1);
    json_decref(j);
    rhema_alerts_free(a);
    reset();
}

static void test_pending_cleared_is_inactive(void **state_)
{
    (void)state_;
    struct rhema_alerts *a = engine(30000, 0, 0);
    eval(a, 0, 11);
    assert_int_equal(state(a), RHEMA_ALERT_PENDING);
    eval(a, 20, 9);
    assert_int_equal(state(a), RHEMA_ALERT_INACTIVE);
    eval(a, 60, 9);
    assert_int_equal(nsent, 0); /* a pending alert is never notified */
    rhema_alerts_free(a);
}

static void test_for_zero_fires_at_once(void **state_)
{
    (void)state_;
    struct rhema_alerts *a = engine(0, 0, 0);
    eval(a, 0, 11);
    assert_int_equal(state(a), RHEMA_ALERT_FIRING);
    assert_int_equal(nsent, 1);
    rhema_alerts_free(a);
    reset();
}

static void test_keep_firing_for(void **state_)
{
    (void)state_;
    struct rhema_alerts *a = engine(0, 30000, 0);
    eval(a, 0, 11);
    assert_int_equal(state(a), RHEMA_ALERT_FIRING);
    eval(a, 10, 1); /* cleared for 0 s after the last true at 0 ... */
    assert_int_equal(state(a), RHEMA_ALERT_FIRING);
    eval(a, 20, 11); /* flaps back: still the same firing alert */
    eval(a, 40, 1);  /* 20 s since the last true: kept */
    assert_int_equal(state(a), RHEMA_ALERT_FIRING);
    assert_int_equal(nsent, 1);
    eval(a, 50, 1); /* 30 s: resolved */
    assert_int_equal(state(a), RHEMA_ALERT_RESOLVED);
    assert_int_equal(nsent, 2);
    rhema_alerts_free(a);
    reset();
}

static void test_no_value_is_no_alert(void **state_)
{
    (void)state_;
    struct rhema_alerts *a = engine(0, 0, 0);
    metric.has = 0;
    rhema_alerts_eval(a, T0, 1, value_fn, NULL, notify_fn, NULL);
    assert_int_equal(state(a), RHEMA_ALERT_INACTIVE);
    eval(a, 1, 11);
    assert_int_equal(state(a), RHEMA_ALERT_FIRING);
    metric.has = 0; /* the series disappears: resolved */
    rhema_alerts_eval(a, T0 + 2000, 1, value_fn, NULL, notify_fn, NULL);
    assert_int_equal(state(a), RHEMA_ALERT_RESOLVED);
    rhema_alerts_free(a);
    reset();
}

static void test_cluster_rule_on_leader_only(void **state_)
{
    (void)state_;
    struct rhema_alerts *a = engine(0, 0, 1);
    metric.has = 1;
    metric.v = 11;
    rhema_alerts_eval(a, T0, 0, value_fn, NULL, notify_fn, NULL);
    assert_int_equal(metric.reads, 0); /* not even read on a follower */
    assert_int_equal(state(a), RHEMA_ALERT_INACTIVE);
    rhema_alerts_eval(a, T0 + 1000, 1, value_fn, NULL, notify_fn, NULL);
    assert_int_equal(state(a), RHEMA_ALERT_FIRING);
    /* a cluster-wide alert has no instance label: one alert for the cluster */
    json_t *root, *al = payload_alert(sent[0], "firing", &root);
    assert_null(json_object_get(json_object_get(al, "labels"), "instance"));
    json_decref(root);
    /* the lead lost: this node forgets it without notifying */
    rhema_alerts_eval(a, T0 + 2000, 0, value_fn, NULL, notify_fn, NULL);
    assert_int_equal(state(a), RHEMA_ALERT_INACTIVE);
    assert_int_equal(nsent, 1);
    rhema_alerts_free(a);
    reset();
}

static void test_metrics_and_counts(void **state_)
{
    (void)state_;
    struct rhema_alerts *a = engine(10000, 0, 0);
    struct rhema_expo e;
    unsigned p, f;
    eval(a, 0, 11);
    eval(a, 10, 11);
    eval(a, 20, 1);
    eval(a, 30, 11);
    rhema_alerts_active(a, &p, &f);
    assert_int_equal(p, 1);
    assert_int_equal(f, 0);
    rhema_expo_init(&e, 0);
    rhema_alerts_write_metrics(a, &e);
    assert_false(e.oom);
    assert_non_null(strstr(e.text, "rhema_alerts_transitions_total{alertname=\"QueueHigh\","
                                   "state=\"pending\"} 2\n"));
    assert_non_null(strstr(e.text, "rhema_alerts_transitions_total{alertname=\"QueueHigh\","
                                   "state=\"firing\"} 1\n"));
    assert_non_null(strstr(e.text, "rhema_alerts_transitions_total{alertname=\"QueueHigh\","
                                   "state=\"resolved\"} 1\n"));
    assert_non_null(strstr(e.text, "rhema_alerts{alertname=\"QueueHigh\",alertstate=\"pending\","
                                   "severity=\"critical\"} 1\n"));
    /* the exposition can be read back by the rules themselves */
    double v;
    assert_int_equal(rhema_alerts_series_sum(e.text, "rhema_alerts_transitions_total", &v), 0);
    assert_true(v == 4.0);
    assert_int_equal(
        rhema_alerts_series_sum(e.text, "rhema_alerts_transitions_total{state=\"pending\"}", &v),
        0);
    assert_true(v == 2.0);
    rhema_expo_release(&e);
    rhema_alerts_free(a);
    reset();
}

static void test_selectors(void **state_)
{
    (void)state_;
    static const char text[] =
        "# HELP rhema_service_instances x\n"
        "# TYPE rhema_service_instances gauge\n"
        "rhema_service_instances{health=\"healthy\"} 3\n"
        "rhema_service_instances{health=\"not_healthy\"} 2\n"
        "rhema_service_instances_extra 100\n"
        "rhema_http_requests_total{route=\"/v1/x/{id}\",method=\"GET\",code=\"200\"} 7\n"
        "rhema_http_requests_total{route=\"/v1/x/{id}\",method=\"GET\",code=\"500\"} 1\n"
        "rhema_http_requests_total{route=\"a,b=\\\"c\\\"\",method=\"PUT\",code=\"500\"} 4\n"
        "rhema_http_requests_in_flight 1\n";
    char why[512];
    double v;
    assert_int_equal(rhema_alerts_series_sum(text, "rhema_service_instances", &v), 0);
    assert_true(v == 5.0);
    assert_int_equal(
        rhema_alerts_series_sum(text, "rhema_service_instances{health=\"not_healthy\"}", &v), 0);
    assert_true(v == 2.0);
    assert_int_equal(rhema_alerts_series_sum(text, "rhema_http_requests_total{code=\"500\"}", &v),
                     0);
    assert_true(v == 5.0);
    assert_int_equal(rhema_alerts_series_sum(
                         text, "rhema_http_requests_total{code=\"500\",method=\"GET\"}", &v),
                     0);
    assert_true(v == 1.0);
    assert_int_equal(rhema_alerts_series_sum(
                         text, "rhema_http_requests_total{route=\"a,b=\\\"c\\\"\"}", &v),
                     0);
    assert_true(v == 4.0);
    assert_int_equal(rhema_alerts_series_sum(text, "rhema_http_requests_total{code=\"404\"}", &v),
                     RHEMA_ENOTFOUND);
    assert_int_equal(rhema_alerts_series_sum(text, "rhema_storage_data_bytes", &v),
                     RHEMA_ENOTFOUND);

    assert_null(rhema_alerts_selector_check("rhema_http_requests_total{code=\"500\"}", why,
                                            sizeof why));
    assert_null(rhema_alerts_selector_check("cpu_percent", why, sizeof why));
    assert_null(rhema_alerts_selector_check("process_resident_memory_bytes", why, sizeof why));
    assert_non_null(rhema_alerts_selector_check("rhema_http_requests", why, sizeof why));
    assert_non_null(strstr(why, "_total"));
    assert_non_null(rhema_alerts_selector_check("cpu_percent{a=\"b\"}", why, sizeof why));
    assert_non_null(rhema_alerts_selector_check("rhema_http_requests_total{code=500}", why,
                                                sizeof why));
    assert_non_null(rhema_alerts_selector_check("rhema_http_requests_total{code=\"5", why,
                                                sizeof why));
    assert_non_null(rhema_alerts_selector_check("rate(rhema_http_requests_total[5m])", why,
                                                sizeof why));
    assert_non_null(rhema_alerts_selector_check("", why, sizeof why));
}

/* Load text as a configuration file: 0 or the code, err set. */
static int load(struct rhema_config *cfg, const char *text, char **err)
{
    char path[] = "/tmp/test_alerts_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    int rc = rhema_config_load(cfg, path, NULL, 0, NULL, err);
    unlink(path);
    return rc;
}

static void test_rules_from_config(void **state_)
{
    (void)state_;
    struct rhema_config cfg;
    struct rhema_alerts *a = NULL;
    char *err = NULL;
    if (load(&cfg,
             "monitoring: { alerts: { enabled = true; cpu_percent = 80.0;\n"
             "  rules = ( { name = \"Unhealthy\"; metric = "
             "\"rhema_service_instances{health=\\\"not_healthy\\\"}\";\n"
             "    comparison = \">=\"; threshold = 1; for_seconds = 30; keep_firing_for_seconds "
             "= 60;\n"
             "    severity = \"critical\"; scope = \"cluster\"; labels = [ \"team=ops\" ]; } );\n"
             "}; };\n",
             &err) != 0)
        fail_msg("%s", err);
    assert_int_equal(rhema_alerts_new(&cfg, "n1:8080", &a, &err), 0);
    /* 3 node rules, 4 perfmon thresholds, 1 of the operator */
    assert_int_equal(rhema_alerts_count(a), 8);
    json_t *j = rhema_alerts_json(a), *r, *mine = NULL;
    size_t i;
    json_array_foreach(json_object_get(j, "rules"), i, r)
    {
        if (strcmp(json_string_value(json_object_get(r, "name")), "Unhealthy") == 0)
            mine = r;
        if (strcmp(json_string_value(json_object_get(r, "name")), "RhemaHighCpu") == 0)
            assert_true(json_real_value(json_object_get(r, "threshold")) == 80.0);
    }
    assert_non_null(mine);
    assert_string_equal(json_string_value(json_object_get(mine, "comparison")), ">=");
    assert_string_equal(json_string_value(json_object_get(mine, "scope")), "cluster");
    assert_int_equal(json_integer_value(json_object_get(mine, "for_seconds")), 30);
    assert_int_equal(json_integer_value(json_object_get(mine, "keep_firing_for_seconds")), 60);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(mine, "labels"), "team")), "ops");
    json_decref(j);
    rhema_alerts_free(a);
    rhema_config_release(&cfg);

    /* off: no rules at all */
    assert_int_equal(load(&cfg, "monitoring: { alerts: { enabled = false; }; };\n", &err), 0);
    assert_int_equal(rhema_alerts_new(&cfg, "n1:8080", &a, &err), 0);
    assert_int_equal(rhema_alerts_count(a), 0);
    rhema_alerts_free(a);
    rhema_config_release(&cfg);
}

static void test_bad_rules_refused(void **state_)
{
    (void)state_;
    static const struct {
        const char *rule, *msg;
    } cases[] = {
        {"name = \"A\"; metric = \"no_such_metric\"; threshold = 1;",
         "monitoring.alerts.rules[0]: metric 'no_such_metric': 'no_such_metric' is neither"},
        {"name = \"A\"; metric = \"rhema_http_requests_total{code=5}\"; threshold = 1;",
         "monitoring.alerts.rules[0]: metric"},
        {"name = \"A b\"; metric = \"cpu_percent\"; threshold = 1;",
         "monitoring.alerts.rules[0]: name 'A b' must be"},
        {"name = \"A\"; metric = \"cpu_percent\"; threshold = 1; labels = [ \"severity=x\" ];",
         "monitoring.alerts.rules[0]: label 'severity=x'"},
        {"name = \"A\"; metric = \"cpu_percent\"; threshold = 1; labels = [ \"nolabel\" ];",
         "monitoring.alerts.rules[0]: label 'nolabel'"},
        {"name = \"RhemaHighCpu\"; metric = \"cpu_percent\"; threshold = 1;",
         "a rule named 'RhemaHighCpu' exists already (monitoring.alerts.cpu_percent)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        struct rhema_config cfg;
        struct rhema_alerts *a = NULL;
        char text[512], *err = NULL;
        snprintf(text, sizeof text,
                 "monitoring: { alerts: { enabled = true; rules = ( { %s } ); }; };\n",
                 cases[i].rule);
        if (load(&cfg, text, &err) != 0)
            fail_msg("case %zu: %s", i, err);
        assert_int_equal(rhema_alerts_new(&cfg, "n", &a, &err), RHEMA_EINVAL);
        assert_null(a);
        if (!strstr(err, cases[i].msg))
            fail_msg("case %zu: '%s' does not hold '%s'", i, err, cases[i].msg);
        free(err);
        err = NULL;
        assert_int_equal(rhema_alerts_check(&cfg, &err), RHEMA_EINVAL);
        free(err);
        rhema_config_release(&cfg);
    }
    /* the schema's own checks: a missing threshold, an unknown comparison, file:line */
    struct rhema_config cfg;
    char *err = NULL;
    assert_int_equal(load(&cfg,
                          "monitoring: { alerts: {\n rules = ( { name = \"A\"; metric = "
                          "\"cpu_percent\"; } ); }; };\n",
                          &err),
                     RHEMA_EINVAL);
    assert_non_null(strstr(err, "needs 'threshold'"));
    free(err);
    err = NULL;
    assert_int_equal(load(&cfg,
                          "monitoring: { alerts: {\n rules = ( { name = \"A\"; metric = "
                          "\"cpu_percent\"; threshold = 1;\n comparison = \"=>\"; } ); }; };\n",
                          &err),
                     RHEMA_EINVAL);
    assert_non_null(strstr(err, ":3:"));
    assert_non_null(strstr(err, "comparison"));
    free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pending_firing_resolved),
        cmocka_unit_test(test_pending_cleared_is_inactive),
        cmocka_unit_test(test_for_zero_fires_at_once),
        cmocka_unit_test(test_keep_firing_for),
        cmocka_unit_test(test_no_value_is_no_alert),
        cmocka_unit_test(test_cluster_rule_on_leader_only),
        cmocka_unit_test(test_metrics_and_counts),
        cmocka_unit_test(test_selectors),
        cmocka_unit_test(test_rules_from_config),
        cmocka_unit_test(test_bad_rules_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
