/*
 * alerts -- rules, state machine, history and webhook payloads (alerts.h).
 */
#include "rhema_build.h"

#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alerts.h"
#include "log.h"
#include "util.h"

#define HISTORY_MAX 256
#define NAME_MAX_LEN 128
#define SELECTOR_MAX 512

/*
 * The families of GET /metrics a rule may name (doc/monitoring.md), each with
 * the sample names it writes: a counter's "_total", a histogram's "_bucket",
 * "_sum" and "_count".  A subsystem that adds a family adds it here too.
 */
static const char *const known_series[] = {
    "rhema_http_requests_total", "rhema_http_request_duration_seconds_bucket",
    "rhema_http_request_duration_seconds_sum", "rhema_http_request_duration_seconds_count",
    "rhema_http_requests_in_flight", "rhema_http_connections",
    "rhema_storage_operation_duration_seconds_bucket",
    "rhema_storage_operation_duration_seconds_sum",
    "rhema_storage_operation_duration_seconds_count", "rhema_storage_errors_total",
    "rhema_storage_data_bytes", "rhema_group_commits_total", "rhema_group_commit_writes_total",
    "rhema_session_access_entries", "rhema_session_access_flushes_total",
    "rhema_session_access_flush_failures_total", "rhema_session_access_counts_written_total",
    "rhema_maintenance_runs_total", "rhema_compression_messages_total",
    "rhema_compression_input_bytes_total", "rhema_compression_output_bytes_total",
    "rhema_compression_ratio", "rhema_compression_stored_messages_total",
    "rhema_encryption_operations_total", "rhema_encryption_bytes_total",
    "rhema_encryption_seconds_total", "rhema_key_rotations_total",
    "rhema_messages_processed_total", "rhema_message_processing_seconds_total",
    "rhema_keyring_current_version", "rhema_keyring_active_keys",
    "rhema_keyring_messages_current_key", "rhema_keyring_seconds_since_rotation",
    "rhema_cluster_is_leader", "rhema_cluster_has_leader", "rhema_cluster_epoch",
    "rhema_cluster_leadership_changes_total", "rhema_cluster_nodes", "rhema_service_instances",
    "rhema_build_info", "rhema_alerts", "rhema_alerts_transitions_total",
    "rhema_alert_notifications_total", "rhema_alert_notifications_queued",
    /* issue 11: the subsystems' families (collect.c, ai/stats.c) */
    "rhema_auth_requests_total", "rhema_auth_key_lookups_total", "rhema_auth_static_keys", "rhema_auth_runtime_keys",
    "rhema_ratelimit_decisions_total", "rhema_ratelimit_backend_failures_total",
    "rhema_ratelimit_backend_duration_seconds_bucket",
    "rhema_ratelimit_backend_duration_seconds_sum",
    "rhema_ratelimit_backend_duration_seconds_count", "rhema_audit_records_total",
    "rhema_audit_written_bytes_total", "rhema_audit_batches_total",
    "rhema_audit_failed_records_total", "rhema_audit_dropped_records_total",
    "rhema_audit_write_duration_seconds_bucket", "rhema_audit_write_duration_seconds_sum",
    "rhema_audit_write_duration_seconds_count", "rhema_audit_fsync_duration_seconds_bucket",
    "rhema_audit_fsync_duration_seconds_sum", "rhema_audit_fsync_duration_seconds_count",
    "rhema_audit_queue_records", "rhema_audit_healthy", "rhema_tls_handshakes_total",
    "rhema_tls_handshake_duration_seconds_bucket", "rhema_tls_handshake_duration_seconds_sum",
    "rhema_tls_handshake_duration_seconds_count", "rhema_tls_client_certificates_total",
    "rhema_tls_certificate_expiry_seconds", "rhema_ai_requests_total",
    "rhema_ai_upstream_attempts_total", "rhema_ai_upstream_retries_total",
    "rhema_ai_upstream_skips_total", "rhema_ai_upstream_duration_seconds_bucket",
    "rhema_ai_upstream_duration_seconds_sum", "rhema_ai_upstream_duration_seconds_count",
    "rhema_ai_upstream_in_flight", "rhema_ai_upstream_circuit_breaker_state",
    "rhema_ai_fallbacks_total", "rhema_ai_retry_budget_exhausted_total",
    "rhema_ai_retry_budget_tokens", "rhema_ai_tokens_total", "rhema_ai_streams_total",
    "rhema_ai_stream_errors_total", "rhema_ai_first_token_timeouts_total",
    "rhema_ai_client_cancels_total", "rhema_ai_stream_pauses_total",
    "rhema_ai_cache_lookups_total", "rhema_ai_cache_stores_total",
    "rhema_ai_cache_evictions_total", "rhema_ai_cache_expirations_total",
    "rhema_ai_cache_too_large_total", "rhema_ai_cache_bytes", "rhema_ai_cache_entries",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes", "process_virtual_memory_bytes", "process_open_fds",
    "process_max_fds", "process_start_time_seconds", NULL};

const char *const rhema_alerts_derived[] = {
    "cpu_percent",          "memory_percent",        "error_rate_percent",
    "compression_ratio",    "encryption_overhead_ms", "key_rotation_ms",
    "message_processing_ms", NULL};

static const char *const state_names[RHEMA_ALERT_STATES] = {"inactive", "pending", "firing",
                                                            "resolved"};
static const char *const cmp_names[] = {">", ">=", "<", "<=", "==", "!="};

const char *rhema_alert_state_name(enum rhema_alert_state s)
{
    return (unsigned)s < RHEMA_ALERT_STATES ? state_names[s] : "?";
}

struct label {
    char *key, *value;
};

struct rule {
    char *name, *metric, *severity, *summary, *source;
    enum rhema_alert_cmp cmp;
    double threshold;
    uint64_t for_ms, keep_ms;
    int cluster;
    struct label *labels; /* the alert's labels, sorted by key: alertname, instance, severity, ... */
    size_t nlabels;
    /* state */
    enum rhema_alert_state state;
    int has_value;
    double value;
    uint64_t active_ms, fired_ms, resolved_ms, last_true_ms, evaluated_ms;
    size_t episode; /* index+1 into the history ring of the current episode, 0: none */
    uint64_t episode_seq;
    uint64_t transitions[RHEMA_ALERT_STATES];
};

struct episode {
    size_t rule;
    uint64_t seq; /* which episode of the ring this slot holds (n_history at its start) */
    enum rhema_alert_state state;
    double value;
    uint64_t active_ms, fired_ms, resolved_ms;
};

struct rhema_alerts {
    pthread_mutex_t lock;
    char *instance;
    struct rule *rules;
    size_t n, cap;
    struct episode history[HISTORY_MAX];
    uint64_t n_history;
    uint64_t evaluated_ms;
};

/* ---- selectors ---- */

static int name_char(int c, int first)
{
    return isalpha(c) || c == '_' || c == ':' || (!first && isdigit(c));
}

/*
 * Parse "name{k="v",...}" into name (len *nlen) and the label part (from
 * '{' to '}' inclusive, or empty).  NULL or why not.
 */
static const char *selector_parse(const char *sel, size_t *nlen, const char **labels,
                                  size_t *llen)
{
    size_t i = 0;
    if (!name_char((unsigned char)sel[0], 1))
        return "a selector begins with a metric name";
    while (name_char((unsigned char)sel[i], 0))
        i++;
    *nlen = i;
    *labels = sel + i;
    *llen = 0;
    if (sel[i] == '\0')
        return NULL;
    if (sel[i] != '{')
        return "after the metric name comes '{' or the end";
    const char *p = sel + i + 1;
    while (*p != '}') {
        if (!name_char((unsigned char)*p, 1))
            return "a label name is expected";
        while (name_char((unsigned char)*p, 0))
            p++;
        if (p[0] != '=' || p[1] != '"')
            return "a label is written name=\"value\"";
        p += 2;
        while (*p && *p != '"') {
            if (*p == '\\' && p[1])
                p++;
            p++;
        }
        if (*p != '"')
            return "a label value is not closed";
        p++;
        if (*p == ',')
            p++;
        else if (*p != '}')
            return "labels are separated by ','";
    }
    if (p[1] != '\0')
        return "nothing may follow '}'";
    *llen = (size_t)(p + 1 - *labels);
    return NULL;
}

const char *rhema_alerts_selector_check(const char *sel, char *why, size_t whylen)
{
    size_t nlen, llen;
    const char *labels;
    const char *bad = strlen(sel) > SELECTOR_MAX ? "longer than 512 bytes"
                                                  : selector_parse(sel, &nlen, &labels, &llen);
    if (bad) {
        snprintf(why, whylen, "%s", bad);
        return why;
    }
    for (size_t i = 0; rhema_alerts_derived[i]; i++)
        if (strlen(rhema_alerts_derived[i]) == nlen &&
            strncmp(sel, rhema_alerts_derived[i], nlen) == 0) {
            if (llen) {
                snprintf(why, whylen, "the derived value '%s' has no labels",
                         rhema_alerts_derived[i]);
                return why;
            }
            return NULL;
        }
    for (size_t i = 0; known_series[i]; i++)
        if (strlen(known_series[i]) == nlen && strncmp(sel, known_series[i], nlen) == 0)
            return NULL;
    snprintf(why, whylen,
             "'%.*s' is neither a series of GET /metrics (doc/monitoring.md; a counter's name "
             "ends in _total) nor a derived value (cpu_percent, memory_percent, "
             "error_rate_percent, compression_ratio, encryption_overhead_ms, key_rotation_ms, "
             "message_processing_ms)",
             (int)nlen, sel);
    return why;
}

/* Does the sample's label text (between its braces, may be empty) hold k="v" (escaped as written)? */
static int has_label(const char *s, size_t slen, const char *kv, size_t kvlen)
{
    const char *p = s, *end = s + slen;
    while (p < end) {
        /* a label starts at p: compare, then skip to the next one */
        if ((size_t)(end - p) >= kvlen && memcmp(p, kv, kvlen) == 0 &&
            (p + kvlen == end || p[kvlen] == ','))
            return 1;
        while (p < end && *p != '"')
            p++;
        p++;
        while (p < end && *p != '"') {
            if (*p == '\\')
                p++;
            p++;
        }
        p++;
        if (p < end && *p == ',')
            p++;
    }
    return 0;
}

/* Do all the selector's labels (text between its braces) appear in the sample's? */
static int labels_match(const char *want, size_t wlen, const char *have, size_t hlen)
{
    const char *p = want, *end = want + wlen;
    while (p < end) {
        const char *q = p;
        while (q < end && *q != '"')
            q++;
        q++;
        while (q < end && *q != '"') {
            if (*q == '\\')
                q++;
            q++;
        }
        q++; /* past the closing quote */
        if (!has_label(have, hlen, p, (size_t)(q - p)))
            return 0;
        p = q < end && *q == ',' ? q + 1 : q;
    }
    return 1;
}

int rhema_alerts_series_sum(const char *text, const char *sel, double *out)
{
    size_t nlen, llen;
    const char *want;
    int found = 0;
    double sum = 0;
    if (selector_parse(sel, &nlen, &want, &llen))
        return RHEMA_EINVAL;
    const char *wl = llen ? want + 1 : "";
    size_t wll = llen ? llen - 2 : 0;
    for (const char *line = text; line && *line;) {
        const char *eol = strchr(line, '\n');
        size_t len = eol ? (size_t)(eol - line) : strlen(line);
        if (line[0] != '#' && len > nlen && memcmp(line, sel, nlen) == 0 &&
            (line[nlen] == ' ' || line[nlen] == '{')) {
            const char *lab = "", *v = line + nlen;
            size_t labl = 0;
            if (*v == '{') {
                const char *q = v + 1;
                /* the closing brace outside a quoted value */
                int inq = 0;
                while (q < line + len && (inq || *q != '}')) {
                    if (*q == '\\' && inq)
                        q++;
                    else if (*q == '"')
                        inq = !inq;
                    q++;
                }
                lab = v + 1;
                labl = (size_t)(q - lab);
                v = q + 1;
            }
            if (labels_match(wl, wll, lab, labl)) {
                char *end;
                double d = strtod(v, &end);
                if (end != v && !isnan(d)) {
                    sum += d;
                    found = 1;
                }
            }
        }
        line = eol ? eol + 1 : NULL;
    }
    if (!found)
        return RHEMA_ENOTFOUND;
    *out = sum;
    return 0;
}

/* ---- rules ---- */

static int valid_alertname(const char *s)
{
    if (!s || !name_char((unsigned char)s[0], 1) || strlen(s) > NAME_MAX_LEN)
        return 0;
    for (; *s; s++)
        if (!name_char((unsigned char)*s, 0) || *s == ':')
            return 0;
    return 1;
}

static int label_cmp(const void *a, const void *b)
{
    return strcmp(((const struct label *)a)->key, ((const struct label *)b)->key);
}

static void rule_release(struct rule *r)
{
    free(r->name), free(r->metric), free(r->severity), free(r->summary), free(r->source);
    for (size_t i = 0; i < r->nlabels; i++)
        free(r->labels[i].key), free(r->labels[i].value);
    free(r->labels);
}

static int add_label(struct rule *r, const char *k, size_t klen, const char *v)
{
    struct label *l = &r->labels[r->nlabels];
    l->key = strndup(k, klen);
    l->value = strdup(v);
    if (!l->key || !l->value) {
        free(l->key), free(l->value);
        return RHEMA_ENOMEM;
    }
    r->nlabels++;
    return 0;
}

int rhema_alerts_add_rule(struct rhema_alerts *a, const struct rhema_alert_rule_def *d, char **err)
{
    const char *src = d->source ? d->source : "rule";
    char why[256];
    struct rule r = {0};
    int rc = RHEMA_ENOMEM;
    if (!valid_alertname(d->name))
        return rhema_set_error(err, RHEMA_EINVAL,
                               "%s: name '%s' must be 1-128 characters [A-Za-z0-9_], not "
                               "beginning with a digit",
                               src, d->name ? d->name : "");
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->rules[i].name, d->name) == 0)
            return rhema_set_error(err, RHEMA_EINVAL, "%s: a rule named '%s' exists already (%s)",
                                   src, d->name, a->rules[i].source);
    if (!d->metric || rhema_alerts_selector_check(d->metric, why, sizeof why))
        return rhema_set_error(err, RHEMA_EINVAL, "%s: metric '%s': %s", src,
                               d->metric ? d->metric : "", d->metric ? why : "required");
    if (!isfinite(d->threshold) || (unsigned)d->cmp > RHEMA_CMP_NE)
        return rhema_set_error(err, RHEMA_EINVAL, "%s: the threshold must be a finite number", src);
    const char *sev = d->severity && *d->severity ? d->severity : "warning";
    r.name = strdup(d->name);
    r.metric = strdup(d->metric);
    r.severity = strdup(sev);
    r.source = strdup(src);
    r.summary = d->summary && *d->summary ? strdup(d->summary) : NULL;
    r.labels = calloc(d->nlabels + 3, sizeof *r.labels);
    if (!r.name || !r.metric || !r.severity || !r.source || !r.labels ||
        (d->summary && *d->summary && !r.summary))
        goto fail;
    r.cmp = d->cmp;
    r.threshold = d->threshold;
    r.for_ms = d->for_ms;
    r.keep_ms = d->keep_firing_for_ms;
    r.cluster = d->cluster;
    if (add_label(&r, "alertname", 9, d->name) || add_label(&r, "severity", 8, sev) ||
        (!d->cluster && add_label(&r, "instance", 8, a->instance)))
        goto fail;
    for (size_t i = 0; i < d->nlabels; i++) {
        const char *eq = strchr(d->labels[i], '=');
        size_t klen = eq ? (size_t)(eq - d->labels[i]) : 0;
        int ok = eq && klen > 0 && name_char((unsigned char)d->labels[i][0], 1);
        for (size_t j = 1; ok && j < klen; j++)
            ok = name_char((unsigned char)d->labels[i][j], 0) && d->labels[i][j] != ':';
        for (size_t j = 0; ok && j < r.nlabels; j++)
            ok = !(strlen(r.labels[j].key) == klen &&
                   strncmp(r.labels[j].key, d->labels[i], klen) == 0);
        if (!ok || strncmp(d->labels[i], "__", 2) == 0) {
            rc = rhema_set_error(err, RHEMA_EINVAL,
                                 "%s: label '%s' must be name=value with a label name of its "
                                 "own ([A-Za-z_][A-Za-z0-9_]*, not alertname, severity, "
                                 "instance, nor beginning with __)",
                                 src, d->labels[i]);
            goto fail_set;
        }
        if (add_label(&r, d->labels[i], klen, eq + 1))
            goto fail;
    }
    qsort(r.labels, r.nlabels, sizeof *r.labels, label_cmp);
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 8;
        struct rule *nr = realloc(a->rules, cap * sizeof *nr);
        if (!nr)
            goto fail;
        a->rules = nr;
        a->cap = cap;
    }
    pthread_mutex_lock(&a->lock);
    a->rules[a->n++] = r;
    pthread_mutex_unlock(&a->lock);
    return 0;
fail:
    rc = rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
fail_set:
    rule_release(&r);
    return rc;
}

size_t rhema_alerts_count(const struct rhema_alerts *a) { return a ? a->n : 0; }

/* The rules of the configuration: built-in ones, then monitoring.alerts.rules. */
static int configure(struct rhema_alerts *a, const struct rhema_config *cfg, char **err)
{
    int enabled = 0, perf = 1;
    rhema_config_get_bool(cfg, "monitoring.alerts.enabled", &enabled);
    if (!enabled)
        return 0;
    static const struct {
        const char *key, *name, *metric, *summary;
    } node[] = {
        {"monitoring.alerts.cpu_percent", "RhemaHighCpu", "cpu_percent",
         "CPU use of the node is high"},
        {"monitoring.alerts.memory_percent", "RhemaHighMemory", "memory_percent",
         "memory use of the node is high"},
        {"monitoring.alerts.error_rate_percent", "RhemaHighErrorRate", "error_rate_percent",
         "share of 5xx replies is high"},
    };
    int64_t for_s = 60;
    rhema_config_get_int(cfg, "monitoring.alerts.builtin_for_seconds", &for_s);
    for (size_t i = 0; i < sizeof node / sizeof *node; i++) {
        struct rhema_alert_rule_def d = {.name = node[i].name, .metric = node[i].metric,
                                         .cmp = RHEMA_CMP_GT, .for_ms = (uint64_t)for_s * 1000,
                                         .severity = "warning", .summary = node[i].summary,
                                         .source = node[i].key};
        rhema_config_get_double(cfg, node[i].key, &d.threshold);
        if (rhema_alerts_add_rule(a, &d, err))
            return RHEMA_EINVAL;
    }
    rhema_config_get_bool(cfg, "advanced_features.performance_monitoring.enabled", &perf);
    if (perf) {
        static const struct {
            const char *key, *name, *metric, *summary;
            enum rhema_alert_cmp cmp;
        } pm[] = {
            {"advanced_features.performance_monitoring.thresholds.min_compression_ratio",
             "RhemaLowCompressionRatio", "compression_ratio", "compression ratio is low",
             RHEMA_CMP_LT},
            {"advanced_features.performance_monitoring.thresholds.max_encryption_overhead_ms",
             "RhemaSlowEncryption", "encryption_overhead_ms", "encryption is slow", RHEMA_CMP_GT},
            {"advanced_features.performance_monitoring.thresholds.max_key_rotation_ms",
             "RhemaSlowKeyRotation", "key_rotation_ms", "key rotation is slow", RHEMA_CMP_GT},
            {"advanced_features.performance_monitoring.thresholds.max_message_processing_ms",
             "RhemaSlowMessageProcessing", "message_processing_ms",
             "message processing is slow", RHEMA_CMP_GT},
        };
        for (size_t i = 0; i < sizeof pm / sizeof *pm; i++) {
            struct rhema_alert_rule_def d = {.name = pm[i].name, .metric = pm[i].metric,
                                             .cmp = pm[i].cmp, .severity = "warning",
                                             .summary = pm[i].summary, .source = pm[i].key};
            rhema_config_get_double(cfg, pm[i].key, &d.threshold);
            if (rhema_alerts_add_rule(a, &d, err))
                return RHEMA_EINVAL;
        }
    }
    int n = rhema_config_get_count(cfg, "monitoring.alerts.rules");
    for (int i = 0; i < n; i++) {
        char p[96], src[64];
        const char *cmp = ">", *scope = "node";
        int64_t f = 0, k = 0;
        struct rhema_alert_rule_def d = {0};
        const char *labels[64];
        snprintf(src, sizeof src, "monitoring.alerts.rules[%d]", i);
#define GET(kind, key, out)                                      \
    (snprintf(p, sizeof p, "%s.%s", src, key), rhema_config_get_##kind(cfg, p, out))
        GET(string, "name", &d.name);
        GET(string, "metric", &d.metric);
        GET(string, "comparison", &cmp);
        GET(double, "threshold", &d.threshold);
        GET(int, "for_seconds", &f);
        GET(int, "keep_firing_for_seconds", &k);
        GET(string, "severity", &d.severity);
        GET(string, "summary", &d.summary);
        GET(string, "scope", &scope);
        snprintf(p, sizeof p, "%s.labels", src);
        int nl = rhema_config_get_count(cfg, p);
        if (nl > (int)(sizeof labels / sizeof *labels))
            return rhema_set_error(err, RHEMA_EINVAL, "%s.labels: at most 64 labels", src);
        for (int j = 0; j < nl; j++) {
            snprintf(p, sizeof p, "%s.labels[%d]", src, j);
            rhema_config_get_string(cfg, p, &labels[j]);
        }
#undef GET
        for (int c = 0; c <= RHEMA_CMP_NE; c++)
            if (strcmp(cmp, cmp_names[c]) == 0)
                d.cmp = (enum rhema_alert_cmp)c;
        d.for_ms = (uint64_t)f * 1000;
        d.keep_firing_for_ms = (uint64_t)k * 1000;
        d.cluster = strcmp(scope, "cluster") == 0;
        d.labels = labels;
        d.nlabels = nl > 0 ? (size_t)nl : 0;
        d.source = src;
        if (rhema_alerts_add_rule(a, &d, err))
            return RHEMA_EINVAL;
    }
    return 0;
}

int rhema_alerts_new(const struct rhema_config *cfg, const char *instance,
                     struct rhema_alerts **out, char **err)
{
    struct rhema_alerts *a = calloc(1, sizeof *a);
    if (!a || !(a->instance = strdup(instance ? instance : ""))) {
        free(a);
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    }
    pthread_mutex_init(&a->lock, NULL);
    if (cfg && configure(a, cfg, err) != 0) {
        rhema_alerts_free(a);
        return RHEMA_EINVAL;
    }
    *out = a;
    return 0;
}

int rhema_alerts_set_instance(struct rhema_alerts *a, const char *instance)
{
    char *v = strdup(instance), *old = a->instance;
    if (!v)
        return RHEMA_ENOMEM;
    pthread_mutex_lock(&a->lock);
    for (size_t i = 0; i < a->n; i++)
        for (size_t j = 0; j < a->rules[i].nlabels; j++) {
            struct label *l = &a->rules[i].labels[j];
            char *nv;
            if (strcmp(l->key, "instance") != 0 || !(nv = strdup(instance)))
                continue;
            free(l->value);
            l->value = nv;
        }
    a->instance = v;
    pthread_mutex_unlock(&a->lock);
    free(old);
    return 0;
}

int rhema_alerts_check(const struct rhema_config *cfg, char **err)
{
    struct rhema_alerts *a;
    int rc = rhema_alerts_new(cfg, "", &a, err);
    if (rc == 0)
        rhema_alerts_free(a);
    return rc;
}

void rhema_alerts_free(struct rhema_alerts *a)
{
    if (!a)
        return;
    for (size_t i = 0; i < a->n; i++)
        rule_release(&a->rules[i]);
    free(a->rules);
    free(a->instance);
    pthread_mutex_destroy(&a->lock);
    free(a);
}

/* ---- evaluation ---- */

static int holds(enum rhema_alert_cmp c, double v, double t)
{
    switch (c) {
    case RHEMA_CMP_GT: return v > t;
    case RHEMA_CMP_GE: return v >= t;
    case RHEMA_CMP_LT: return v < t;
    case RHEMA_CMP_LE: return v <= t;
    case RHEMA_CMP_EQ: return v == t;
    case RHEMA_CMP_NE: return v != t;
    }
    return 0;
}

/* Alertmanager's fingerprint: FNV-1a 64 over the sorted labels, name 0xff value 0xff. */
static uint64_t fingerprint(const struct rule *r)
{
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < r->nlabels; i++) {
        const char *parts[2] = {r->labels[i].key, r->labels[i].value};
        for (int p = 0; p < 2; p++) {
            for (const unsigned char *s = (const unsigned char *)parts[p]; *s; s++)
                h = (h ^ *s) * 1099511628211ull;
            h = (h ^ 0xff) * 1099511628211ull;
        }
    }
    return h;
}

static json_t *labels_json(const struct rule *r)
{
    json_t *o = json_object();
    for (size_t i = 0; i < r->nlabels; i++)
        json_object_set_new(o, r->labels[i].key, json_string(r->labels[i].value));
    return o;
}

static json_t *annotations_json(const struct rule *r)
{
    char desc[768], summary[256];
    snprintf(summary, sizeof summary, "%s", r->summary ? r->summary : r->name);
    if (r->has_value)
        snprintf(desc, sizeof desc, "%s is %.6g (%s %.6g)", r->metric, r->value, cmp_names[r->cmp],
                 r->threshold);
    else
        snprintf(desc, sizeof desc, "%s has no value (%s %.6g)", r->metric, cmp_names[r->cmp],
                 r->threshold);
    return json_pack("{s:s,s:s}", "summary", summary, "description", desc);
}

static void set_time(json_t *o, const char *key, uint64_t ms)
{
    char t[RHEMA_TIME_MAX];
    if (!ms) {
        json_object_set_new(o, key, json_null());
        return;
    }
    rhema_time_format(ms, t);
    json_object_set_new(o, key, json_string(t));
}

/* The webhook v4 payload of one alert's change (firing or resolved); malloc'd text. */
static char *payload(const struct rhema_alerts *a, const struct rule *r, int resolved)
{
    char fp[17], starts[RHEMA_TIME_MAX], ends[RHEMA_TIME_MAX];
    snprintf(fp, sizeof fp, "%016llx", (unsigned long long)fingerprint(r));
    rhema_time_format(r->active_ms, starts);
    if (resolved)
        rhema_time_format(r->resolved_ms, ends);
    else
        snprintf(ends, sizeof ends, "0001-01-01T00:00:00Z");
    const char *status = resolved ? "resolved" : "firing";
    char group_key[200];
    snprintf(group_key, sizeof group_key, "{}:{alertname=\"%s\"}", r->name);
    json_t *alert = json_pack("{s:s,s:o,s:o,s:s,s:s,s:s,s:s}", "status", status, "labels",
                              labels_json(r), "annotations", annotations_json(r), "startsAt",
                              starts, "endsAt", ends, "generatorURL", "", "fingerprint", fp);
    json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:i,s:{s:s},s:o,s:o,s:s,s:[o]}", "version", "4",
                          "groupKey", group_key, "status", status, "receiver", "rhema",
                          "truncatedAlerts", 0, "groupLabels", "alertname", r->name,
                          "commonLabels", labels_json(r), "commonAnnotations",
                          annotations_json(r), "externalURL", "", "alerts", alert);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text)
        rhema_log(RHEMA_LOG_ERROR, "alerts", "out of memory writing the notification of %s",
                  r->name);
    (void)a;
    return text;
}

/* Caller holds the lock.  Move r to state s at now, log and count it. */
static void transition(struct rhema_alerts *a, struct rule *r, size_t idx,
                       enum rhema_alert_state s, uint64_t now)
{
    enum rhema_alert_state from = r->state;
    r->state = s;
    r->transitions[s]++;
    if (s == RHEMA_ALERT_PENDING || (s == RHEMA_ALERT_FIRING && from != RHEMA_ALERT_PENDING)) {
        /* a new episode */
        struct episode *e = &a->history[a->n_history % HISTORY_MAX];
        *e = (struct episode){.rule = idx, .seq = a->n_history, .active_ms = now};
        r->episode = (size_t)(a->n_history % HISTORY_MAX) + 1;
        r->episode_seq = a->n_history;
        a->n_history++;
        r->active_ms = now;
        r->fired_ms = 0;
        r->resolved_ms = 0;
    }
    if (s == RHEMA_ALERT_FIRING)
        r->fired_ms = now;
    if (s == RHEMA_ALERT_RESOLVED)
        r->resolved_ms = now;
    if (r->episode) {
        struct episode *e = &a->history[r->episode - 1];
        if (e->seq == r->episode_seq) { /* not overwritten by newer episodes */
            e->state = s;
            e->value = r->value;
            e->fired_ms = r->fired_ms;
            e->resolved_ms = s == RHEMA_ALERT_RESOLVED || s == RHEMA_ALERT_INACTIVE ? now : 0;
        }
        if (s == RHEMA_ALERT_RESOLVED || s == RHEMA_ALERT_INACTIVE)
            r->episode = 0;
    }
    char v[32];
    if (r->has_value)
        snprintf(v, sizeof v, "%.6g", r->value);
    else
        snprintf(v, sizeof v, "no value");
    rhema_log(s == RHEMA_ALERT_FIRING ? RHEMA_LOG_WARN : RHEMA_LOG_NOTICE, "alerts",
              "alert %s: %s -> %s (%s = %s, %s %.6g)", r->name, state_names[from], state_names[s],
              r->metric, v, cmp_names[r->cmp], r->threshold);
}

void rhema_alerts_eval(struct rhema_alerts *a, uint64_t now, int leader,
                       rhema_alerts_value_fn *value, void *vctx, rhema_alerts_notify_fn *notify,
                       void *nctx)
{
    for (size_t i = 0; i < a->n; i++) {
        struct rule *r = &a->rules[i];
        double v = 0;
        int skip = r->cluster && !leader;
        /* read the value outside the lock: it may take a while (storage) */
        int has = !skip && value(vctx, r->metric, &v) == 0 && !isnan(v);
        char *note = NULL;
        pthread_mutex_lock(&a->lock);
        if (skip) {
            /* another node evaluates it: what this one knew is forgotten, without a notification */
            if (r->state == RHEMA_ALERT_PENDING || r->state == RHEMA_ALERT_FIRING)
                transition(a, r, i, RHEMA_ALERT_INACTIVE, now);
            r->has_value = 0;
            pthread_mutex_unlock(&a->lock);
            continue;
        }
        r->has_value = has;
        r->value = has ? v : 0;
        r->evaluated_ms = now;
        int cond = has && holds(r->cmp, v, r->threshold);
        if (cond)
            r->last_true_ms = now;
        switch (r->state) {
        case RHEMA_ALERT_INACTIVE:
        case RHEMA_ALERT_RESOLVED:
            if (cond) {
                transition(a, r, i, r->for_ms ? RHEMA_ALERT_PENDING : RHEMA_ALERT_FIRING, now);
                if (r->state == RHEMA_ALERT_FIRING)
                    note = payload(a, r, 0);
            }
            break;
        case RHEMA_ALERT_PENDING:
            if (!cond) {
                transition(a, r, i, RHEMA_ALERT_INACTIVE, now);
            } else if (now - r->active_ms >= r->for_ms) {
                transition(a, r, i, RHEMA_ALERT_FIRING, now);
                note = payload(a, r, 0);
            }
            break;
        case RHEMA_ALERT_FIRING:
            if (!cond && now - r->last_true_ms >= r->keep_ms) {
                transition(a, r, i, RHEMA_ALERT_RESOLVED, now);
                note = payload(a, r, 1);
            } else if (r->episode && a->history[r->episode - 1].seq == r->episode_seq) {
                a->history[r->episode - 1].value = r->value; /* still firing: the latest */
            }
            break;
        default: break;
        }
        pthread_mutex_unlock(&a->lock);
        if (note && notify)
            notify(nctx, note);
        else
            free(note);
    }
    pthread_mutex_lock(&a->lock);
    a->evaluated_ms = now;
    pthread_mutex_unlock(&a->lock);
}

/* ---- readers ---- */

int rhema_alerts_state(struct rhema_alerts *a, const char *name)
{
    int s = -1;
    pthread_mutex_lock(&a->lock);
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->rules[i].name, name) == 0)
            s = (int)a->rules[i].state;
    pthread_mutex_unlock(&a->lock);
    return s;
}

void rhema_alerts_active(struct rhema_alerts *a, unsigned *pending, unsigned *firing)
{
    *pending = *firing = 0;
    if (!a)
        return;
    pthread_mutex_lock(&a->lock);
    for (size_t i = 0; i < a->n; i++) {
        *pending += a->rules[i].state == RHEMA_ALERT_PENDING;
        *firing += a->rules[i].state == RHEMA_ALERT_FIRING;
    }
    pthread_mutex_unlock(&a->lock);
}

/* An alert (a rule's current episode, or one of the history) as GET /v1/alerts lists it. */
static json_t *alert_json(const struct rule *r, enum rhema_alert_state s, double value,
                          int has_value, uint64_t active, uint64_t fired, uint64_t resolved)
{
    json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:f,s:o}", "name", r->name, "state", state_names[s],
                          "metric", r->metric, "comparison", cmp_names[r->cmp], "limit",
                          r->threshold, "labels", labels_json(r));
    json_object_set_new(o, "value", has_value ? json_real(value) : json_null());
    set_time(o, "raised_at", active);
    set_time(o, "fired_at", fired);
    set_time(o, "resolved_at", resolved);
    return o;
}

json_t *rhema_alerts_json(struct rhema_alerts *a)
{
    json_t *rules = json_array(), *active = json_array(), *history = json_array();
    pthread_mutex_lock(&a->lock);
    for (size_t i = 0; i < a->n; i++) {
        const struct rule *r = &a->rules[i];
        json_t *t = json_object();
        for (int s = 0; s < RHEMA_ALERT_STATES; s++)
            json_object_set_new(t, state_names[s], json_integer((json_int_t)r->transitions[s]));
        json_t *o = json_pack(
            "{s:s,s:s,s:s,s:f,s:I,s:I,s:s,s:s,s:s,s:o,s:o,s:o}", "name", r->name, "metric",
            r->metric, "comparison", cmp_names[r->cmp], "threshold", r->threshold, "for_seconds",
            (json_int_t)(r->for_ms / 1000), "keep_firing_for_seconds",
            (json_int_t)(r->keep_ms / 1000), "severity", r->severity, "scope",
            r->cluster ? "cluster" : "node", "state", state_names[r->state], "labels",
            labels_json(r), "annotations", annotations_json(r), "transitions", t);
        json_object_set_new(o, "source", json_string(r->source));
        json_object_set_new(o, "value", r->has_value ? json_real(r->value) : json_null());
        set_time(o, "active_at", r->state == RHEMA_ALERT_PENDING || r->state == RHEMA_ALERT_FIRING
                                     ? r->active_ms
                                     : 0);
        set_time(o, "last_evaluated_at", r->evaluated_ms);
        json_array_append_new(rules, o);
        if (r->state == RHEMA_ALERT_PENDING || r->state == RHEMA_ALERT_FIRING)
            json_array_append_new(active, alert_json(r, r->state, r->value, r->has_value,
                                                     r->active_ms, r->fired_ms, 0));
    }
    uint64_t n = a->n_history < HISTORY_MAX ? a->n_history : HISTORY_MAX;
    for (uint64_t i = 0; i < n; i++) { /* newest first */
        const struct episode *e = &a->history[(a->n_history - 1 - i) % HISTORY_MAX];
        json_array_append_new(history, alert_json(&a->rules[e->rule], e->state, e->value, 1,
                                                  e->active_ms, e->fired_ms, e->resolved_ms));
    }
    json_t *o = json_pack("{s:b,s:o,s:o,s:o}", "enabled", a->n > 0, "rules", rules, "active",
                          active, "history", history);
    set_time(o, "evaluated_at", a->evaluated_ms);
    pthread_mutex_unlock(&a->lock);
    return o;
}

void rhema_alerts_write_metrics(struct rhema_alerts *a, struct rhema_expo *e)
{
    static const char *const k_alert[] = {"alertname", "alertstate", "severity"};
    static const char *const k_trans[] = {"alertname", "state"};
    if (!a || a->n == 0)
        return;
    pthread_mutex_lock(&a->lock);
    rhema_expo_family(e, "rhema_alerts", "gauge",
                      "1 for each alert pending or firing (as Prometheus' ALERTS).");
    for (size_t i = 0; i < a->n; i++) {
        const struct rule *r = &a->rules[i];
        if (r->state != RHEMA_ALERT_PENDING && r->state != RHEMA_ALERT_FIRING)
            continue;
        const char *v[] = {r->name, state_names[r->state], r->severity};
        rhema_expo_sample(e, "rhema_alerts", "", 3, k_alert, v, 1);
    }
    rhema_expo_family(e, "rhema_alerts_transitions", "counter",
                      "Alert state changes since start, by rule and the state entered.");
    for (size_t i = 0; i < a->n; i++)
        for (int s = 0; s < RHEMA_ALERT_STATES; s++) {
            const char *v[] = {a->rules[i].name, state_names[s]};
            rhema_expo_sample_u64(e, "rhema_alerts_transitions", "_total", 2, k_trans, v,
                                  a->rules[i].transitions[s]);
        }
    pthread_mutex_unlock(&a->lock);
}
