/*
 * alerts -- the alert engine of GET /v1/alerts (issue 11 item 4): rules, their
 * Prometheus-like state machine (inactive, pending, firing, resolved, with
 * `for` and `keep_firing_for`), the history of their episodes, the counters
 * of their transitions and the Alertmanager (webhook v4) payloads.
 *
 * This module decides, it does not measure nor send: rhema_alerts_eval() is
 * given the time and a function that reads a rule's metric, and hands each
 * payload to a function of the caller's (core/metrics/monitor.c reads the values from
 * the in-process counters and sends through its notifier thread).  So the
 * state machine runs on a fake clock in tests/unit/test_alerts.c.
 *
 * Rules: the built-in ones (monitoring.alerts.cpu_percent, memory_percent,
 * error_rate_percent; the perfmon thresholds of
 * advanced_features.performance_monitoring.thresholds) and the operator's
 * (monitoring.alerts.rules).  A rule's metric is a series selector:
 * `name` or `name{label="value",...}`, the sum of the matching samples of
 * GET /metrics' families (doc/monitoring.md), or one of the derived values
 * (rhema_alerts_derived[]).
 *
 * Threads: one evaluator (rhema_alerts_eval); the readers (JSON, metrics,
 * counts) from any thread; a mutex inside.
 */
#ifndef RHEMA_CORE_ALERTS_H
#define RHEMA_CORE_ALERTS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "config.h"
#include "metrics/metrics.h"

enum rhema_alert_state {
    RHEMA_ALERT_INACTIVE,
    RHEMA_ALERT_PENDING,
    RHEMA_ALERT_FIRING,
    RHEMA_ALERT_RESOLVED,
    RHEMA_ALERT_STATES
};
const char *rhema_alert_state_name(enum rhema_alert_state s);

enum rhema_alert_cmp { RHEMA_CMP_GT, RHEMA_CMP_GE, RHEMA_CMP_LT, RHEMA_CMP_LE, RHEMA_CMP_EQ,
                       RHEMA_CMP_NE };

/* A rule as given (strings are copied). */
struct rhema_alert_rule_def {
    const char *name;     /* alertname: [A-Za-z_][A-Za-z0-9_]*, unique */
    const char *metric;   /* a selector (above) */
    enum rhema_alert_cmp cmp;
    double threshold;
    uint64_t for_ms, keep_firing_for_ms;
    const char *severity; /* "critical", "warning", "info" */
    const char *summary;  /* the summary annotation; NULL or "": one is written */
    int cluster;          /* 1: cluster-wide (evaluated by the leader only) */
    const char *const *labels; /* nlabels "key=value" */
    size_t nlabels;
    const char *source;   /* where it comes from: the config key, for messages and JSON */
};

/* The derived values a rule may name besides the families of GET /metrics. */
extern const char *const rhema_alerts_derived[];

struct rhema_alerts;

/*
 * A new engine.  instance: the `instance` label of every alert (the node's
 * address).  cfg NULL: no rules (tests add them); otherwise the rules of
 * monitoring.alerts (none unless monitoring.alerts.enabled).  0, or a code
 * and *err naming the key at fault.
 */
int rhema_alerts_new(const struct rhema_config *cfg, const char *instance,
                     struct rhema_alerts **out, char **err);
void rhema_alerts_free(struct rhema_alerts *a);
/* Set the instance label (the address bound, known once HTTP started).  0 or RHEMA_ENOMEM. */
int rhema_alerts_set_instance(struct rhema_alerts *a, const char *instance);
/* Check the rules of cfg as rhema_alerts_new() would (rhemad -t). */
int rhema_alerts_check(const struct rhema_config *cfg, char **err);
/* Add a rule; 0 or RHEMA_EINVAL and *err. */
int rhema_alerts_add_rule(struct rhema_alerts *a, const struct rhema_alert_rule_def *d, char **err);
size_t rhema_alerts_count(const struct rhema_alerts *a);

/* Is sel a valid selector naming a known family or a derived value?  NULL, or why not. */
const char *rhema_alerts_selector_check(const char *sel, char *why, size_t whylen);
/*
 * The sum of the samples of the exposition text (Prometheus text 0.0.4)
 * that sel matches: 0 and *out, or RHEMA_ENOTFOUND when none does.
 */
int rhema_alerts_series_sum(const char *text, const char *sel, double *out);

/* A rule's metric now: 0 and *out, or nonzero when there is no value (the condition is false). */
typedef int rhema_alerts_value_fn(void *ctx, const char *metric, double *out);
/* A payload to send (malloc'd JSON text; the callee owns it). */
typedef void rhema_alerts_notify_fn(void *ctx, char *payload);

/*
 * Evaluate every rule at now_ms (milliseconds since the epoch).  leader: 1
 * when this node evaluates the cluster-wide rules.  Each transition is
 * logged, counted, put in the history, and (firing, resolved) given to
 * notify (may be NULL).  One thread at a time.
 */
void rhema_alerts_eval(struct rhema_alerts *a, uint64_t now_ms, int leader,
                       rhema_alerts_value_fn *value, void *vctx, rhema_alerts_notify_fn *notify,
                       void *nctx);

/* A rule's state by name; -1 when there is no such rule. */
int rhema_alerts_state(struct rhema_alerts *a, const char *name);
/* Rules pending and firing now. */
void rhema_alerts_active(struct rhema_alerts *a, unsigned *pending, unsigned *firing);
/* GET /v1/alerts (doc/http-api.md). */
json_t *rhema_alerts_json(struct rhema_alerts *a);
/* rhema_alerts and rhema_alerts_transitions_total for GET /metrics. */
void rhema_alerts_write_metrics(struct rhema_alerts *a, struct rhema_expo *e);

#endif /* RHEMA_CORE_ALERTS_H */
