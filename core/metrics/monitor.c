/*
 * monitor -- alert evaluation, namespace counts and the webhook notifier (monitor.h).
 */
#include "rhema_build.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "alerts.h"
#include "cluster.h"
#include "log.h"
#include "metrics/metrics.h"
#include "monitor.h"
#include "perfmon.h"
#include "util.h"

/*
 * The store's namespaces (core/session.c, consensus.c, agents.c,
 * services.h, cluster.h, auth/keystore.h), grouped as GET /v1/stats shows
 * them: a group counts its records and their index namespaces.
 */
static const struct {
    const char *group, *ns;
} namespaces[] = {
    {"sessions", "sessions"},          {"sessions", "sessions.status"},
    {"sessions", "sessions.participant"}, {"sessions", "sessions.access"},
    {"consensus", "consensus.state"},  {"consensus", "consensus.log"},
    {"agents", "agents"},              {"agents", "agents.status"},
    {"agents", "agents.capability"},   {"agents", "agents.heartbeat"},
    {"agents", "agents.transitions"},  {"agents", "agents.summary"},
    {"agents", "agents.task"},
    {"metrics", "system"},             {"configurations", "configurations"},
    {"services", "services"},          {"services", "services.name"},
    {"services", "services.health"},   {"services", "services.pass"},
    {"cluster", "cluster.nodes"},      {"cluster", "cluster.known"},
    {"api_keys", "auth_keys"},
};
#define N_NS (sizeof namespaces / sizeof *namespaces)

struct queued {
    char *payload;
    unsigned attempts;
};

struct rhema_monitor {
    struct rhema_server *srv;
    rhema_monitor_expo_fn *expo;
    pthread_t thread, notifier;
    int thread_on, notifier_on, curl_inited;
    pthread_mutex_t lock; /* stop, the namespace counts, the queue */
    pthread_cond_t wake, nwake;
    int stop;
    /* evaluation */
    int alerts_on;
    uint64_t eval_ms, refresh_ms;
    rhema_storage_conn *conn;
    struct rhema_expo *text; /* the exposition of the current evaluation */
    int text_rc;
    int have_cpu;
    unsigned long long cpu_busy, cpu_total;
    int have_http;
    double http_all, http_5xx;
    int has_cpu, has_mem, has_err; /* the derived values of this evaluation */
    double cpu, mem, err;
    /* namespace counts */
    uint64_t refreshed_at;
    int ns_ok[N_NS];
    struct rhema_storage_stats ns[N_NS];
    /* notifier */
    char *url;
    long timeout_s;
    unsigned max_retries;
    size_t queue_cap, qhead, qlen;
    struct queued *queue;
    uint64_t sent, failed_attempts, given_up, dropped;
};

/* ---- clocks ---- */

static uint64_t mono_ms(void) { return rhema_monotonic_ns() / 1000000u; }

/* ---- derived values ---- */

static int cpu_times(unsigned long long *busy, unsigned long long *total)
{
    unsigned long long v[8] = {0};
    FILE *f = fopen("/proc/stat", "r");
    int n;
    if (!f)
        return -1;
    n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
               &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (n < 4)
        return -1;
    *total = 0;
    for (int i = 0; i < 8; i++)
        *total += v[i];
    *busy = *total - v[3] - v[4]; /* idle, iowait */
    return 0;
}

int rhema_monitor_memory_percent(double *out)
{
    char line[256];
    unsigned long long total = 0, avail = 0, v;
    int have = 0;
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "MemTotal: %llu kB", &v) == 1)
            total = v, have |= 1;
        else if (sscanf(line, "MemAvailable: %llu kB", &v) == 1)
            avail = v, have |= 2;
    }
    fclose(f);
    if (have != 3 || total == 0 || avail > total)
        return -1;
    *out = (double)(total - avail) * 100.0 / (double)total;
    return 0;
}

/* The HTTP replies counted so far, all and 5xx, from the exposition. */
static void http_totals(const char *text, double *all, double *err5)
{
    static const char name[] = "rhema_http_requests_total{";
    *all = *err5 = 0;
    for (const char *p = text; p && *p;) {
        const char *eol = strchr(p, '\n');
        if (strncmp(p, name, sizeof name - 1) == 0) {
            const char *sp = eol ? eol : p + strlen(p);
            while (sp > p && sp[-1] != ' ')
                sp--;
            double v = strtod(sp, NULL);
            const char *code = strstr(p, "code=\"");
            *all += v;
            if (code && (!eol || code < eol) && code[6] == '5')
                *err5 += v;
        }
        p = eol ? eol + 1 : NULL;
    }
}

/*
 * The derived values of this evaluation, computed once: cpu_percent and
 * error_rate_percent since the previous evaluation, memory_percent now.
 */
static void derive(struct rhema_monitor *m)
{
    unsigned long long busy, total;
    m->has_cpu = m->has_mem = m->has_err = 0;
    if (cpu_times(&busy, &total) == 0) {
        if (m->have_cpu && total > m->cpu_total) {
            m->cpu = (double)(busy - m->cpu_busy) * 100.0 / (double)(total - m->cpu_total);
            m->has_cpu = 1;
        }
        m->have_cpu = 1, m->cpu_busy = busy, m->cpu_total = total;
    }
    m->has_mem = rhema_monitor_memory_percent(&m->mem) == 0;
    if (m->text_rc == 0) {
        double all, e5;
        http_totals(m->text->text, &all, &e5);
        if (m->have_http && all >= m->http_all) {
            m->err = all > m->http_all ? (e5 - m->http_5xx) * 100.0 / (all - m->http_all) : 0.0;
            m->has_err = 1;
        }
        m->have_http = 1, m->http_all = all, m->http_5xx = e5;
    }
}

/* The value of a rule's metric now (alerts.h: rhema_alerts_value_fn). */
static int value_of(void *ctx, const char *metric, double *out)
{
    struct rhema_monitor *m = ctx;
    if (strcmp(metric, "cpu_percent") == 0)
        return m->has_cpu ? (*out = m->cpu, 0) : -1;
    if (strcmp(metric, "memory_percent") == 0)
        return m->has_mem ? (*out = m->mem, 0) : -1;
    if (strcmp(metric, "error_rate_percent") == 0)
        return m->has_err ? (*out = m->err, 0) : -1;
    for (size_t i = 0; rhema_alerts_derived[i]; i++)
        if (strcmp(metric, rhema_alerts_derived[i]) == 0)
            return rhema_perfmon_value(m->srv->perfmon, metric, out); /* none yet: no value */
    if (m->text_rc != 0)
        return -1;
    return rhema_alerts_series_sum(m->text->text, metric, out);
}

/* ---- the notifier ---- */

/* Caller holds the lock. */
static void enqueue_locked(struct rhema_monitor *m, char *payload)
{
    if (m->qlen == m->queue_cap) {
        struct queued *old = &m->queue[m->qhead];
        free(old->payload);
        m->qhead = (m->qhead + 1) % m->queue_cap;
        m->qlen--;
        m->dropped++;
        rhema_log(RHEMA_LOG_WARN, "alerts",
                  "webhook queue full (%zu): the oldest notification is dropped", m->queue_cap);
    }
    m->queue[(m->qhead + m->qlen) % m->queue_cap] = (struct queued){.payload = payload};
    m->qlen++;
    pthread_cond_signal(&m->nwake);
}

static void notify(void *ctx, char *payload)
{
    struct rhema_monitor *m = ctx;
    if (!m->url) {
        free(payload);
        return;
    }
    pthread_mutex_lock(&m->lock);
    enqueue_locked(m, payload);
    pthread_mutex_unlock(&m->lock);
}

static size_t discard(char *p, size_t size, size_t n, void *ctx)
{
    (void)p, (void)ctx;
    return size * n;
}

/* curl's progress callback: abort a transfer when the daemon stops. */
static int progress(void *ctx, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
    struct rhema_monitor *m = ctx;
    (void)a, (void)b, (void)c, (void)d;
    pthread_mutex_lock(&m->lock);
    int stop = m->stop;
    pthread_mutex_unlock(&m->lock);
    return stop;
}

/* POST one payload: 0 when the receiver answered 2xx; else a message in why. */
static int post(struct rhema_monitor *m, CURL *c, const char *payload, char *why, size_t whylen)
{
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    char ebuf[CURL_ERROR_SIZE] = "";
    long status = 0;
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, m->url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, payload);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, m->timeout_s);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, m->timeout_s);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, ebuf);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, m);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_USERAGENT, "rhemad/" PACKAGE_VERSION);
    CURLcode rc = curl_easy_perform(c);
    curl_slist_free_all(h);
    if (rc != CURLE_OK) {
        snprintf(why, whylen, "%s", ebuf[0] ? ebuf : curl_easy_strerror(rc));
        return -1;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (status < 200 || status > 299) {
        snprintf(why, whylen, "the receiver answered %ld", status);
        return -1;
    }
    return 0;
}

static void *notifier_main(void *arg)
{
    struct rhema_monitor *m = arg;
    CURL *c = curl_easy_init();
    char why[CURL_ERROR_SIZE + 64];
    uint64_t retry_at = 0;
    if (!c)
        rhema_log(RHEMA_LOG_ERROR, "alerts", "cannot make a libcurl handle: no webhook");
    pthread_mutex_lock(&m->lock);
    while (!m->stop) {
        if (!m->qlen || !c) {
            pthread_cond_wait(&m->nwake, &m->lock);
            continue;
        }
        uint64_t now = mono_ms();
        if (retry_at > now) {
            struct timespec ts;
            rhema_deadline_after(CLOCK_MONOTONIC, (retry_at - now) * 1000000u, &ts);
            pthread_cond_timedwait(&m->nwake, &m->lock, &ts);
            continue;
        }
        /* take the head out while sending, so that a full queue drops another */
        struct queued q = m->queue[m->qhead];
        m->qhead = (m->qhead + 1) % m->queue_cap;
        m->qlen--;
        pthread_mutex_unlock(&m->lock);
        int rc = post(m, c, q.payload, why, sizeof why);
        pthread_mutex_lock(&m->lock);
        if (rc == 0) {
            m->sent++;
            retry_at = 0;
            free(q.payload);
            continue;
        }
        m->failed_attempts++;
        q.attempts++;
        if (q.attempts > m->max_retries || m->stop) {
            m->given_up++;
            rhema_log(RHEMA_LOG_ERROR, "alerts",
                      "webhook %s: %s; notification given up after %u attempts", m->url, why,
                      q.attempts);
            free(q.payload);
            retry_at = 0;
            continue;
        }
        uint64_t backoff = 1000ull << (q.attempts - 1 < 6 ? q.attempts - 1 : 6);
        if (backoff > 60000)
            backoff = 60000;
        rhema_log(RHEMA_LOG_WARN, "alerts", "webhook %s: %s; retry in %llu ms", m->url, why,
                  (unsigned long long)backoff);
        retry_at = mono_ms() + backoff;
        /* back at the head, in order */
        if (m->qlen == m->queue_cap) {
            free(m->queue[(m->qhead + m->qlen - 1) % m->queue_cap].payload);
            m->qlen--;
            m->dropped++;
        }
        m->qhead = (m->qhead + m->queue_cap - 1) % m->queue_cap;
        m->queue[m->qhead] = q;
        m->qlen++;
    }
    if (m->qlen)
        rhema_log(RHEMA_LOG_WARN, "alerts", "stopping: %zu webhook notifications not sent",
                  m->qlen);
    pthread_mutex_unlock(&m->lock);
    if (c)
        curl_easy_cleanup(c);
    return NULL;
}

/* ---- the monitoring thread ---- */

static void refresh_namespaces(struct rhema_monitor *m)
{
    struct rhema_storage_stats st[N_NS];
    int ok[N_NS];
    for (size_t i = 0; i < N_NS; i++) {
        memset(&st[i], 0, sizeof st[i]);
        ok[i] = m->conn && m->srv->storage->stats(m->conn, namespaces[i].ns, &st[i]) == 0;
    }
    pthread_mutex_lock(&m->lock);
    memcpy(m->ns, st, sizeof st);
    memcpy(m->ns_ok, ok, sizeof ok);
    m->refreshed_at = rhema_realtime_ms();
    pthread_mutex_unlock(&m->lock);
}

static void evaluate(struct rhema_monitor *m)
{
    struct rhema_expo e;
    rhema_expo_init(&e, 0);
    m->text = &e;
    m->text_rc = m->expo(m->srv, m->conn, &e);
    if (m->text_rc == 0 && !e.text)
        m->text_rc = RHEMA_ENOMEM;
    derive(m);
    int leader = !m->srv->cluster || rhema_cluster_is_leader(m->srv->cluster);
    rhema_alerts_eval(m->srv->alerts, rhema_realtime_ms(), leader, value_of, m, notify, m);
    m->text = NULL;
    rhema_expo_release(&e);
}

static void *monitor_main(void *arg)
{
    struct rhema_monitor *m = arg;
    char *err = NULL;
    uint64_t next_eval = mono_ms(), next_refresh = next_eval, next_connect = next_eval;
    pthread_mutex_lock(&m->lock);
    while (!m->stop) {
        uint64_t now = mono_ms();
        pthread_mutex_unlock(&m->lock);
        if (!m->conn && now >= next_connect) {
            if (m->srv->storage->connect(m->srv->storage_inst, &m->conn, &err) != 0) {
                rhema_log(RHEMA_LOG_WARN, "monitor", "storage connection: %s",
                          err ? err : "failed");
                free(err);
                err = NULL;
                m->conn = NULL;
                next_connect = now + 10000;
            }
        }
        if (now >= next_refresh) {
            refresh_namespaces(m);
            next_refresh = now + m->refresh_ms;
        }
        if (m->alerts_on && now >= next_eval) {
            evaluate(m);
            next_eval += m->eval_ms;
            if (next_eval <= now) /* a slow round: skip, do not catch up */
                next_eval = now + m->eval_ms;
        }
        uint64_t next = next_refresh;
        if (m->alerts_on && next_eval < next)
            next = next_eval;
        now = mono_ms();
        pthread_mutex_lock(&m->lock);
        if (!m->stop && next > now) {
            struct timespec ts;
            rhema_deadline_after(CLOCK_MONOTONIC, (next - now) * 1000000u, &ts);
            pthread_cond_timedwait(&m->wake, &m->lock, &ts);
        }
    }
    pthread_mutex_unlock(&m->lock);
    if (m->conn)
        m->srv->storage->disconnect(m->conn);
    m->conn = NULL;
    return NULL;
}

static void monitor_free(struct rhema_monitor *m)
{
    for (size_t i = 0; i < m->qlen; i++)
        free(m->queue[(m->qhead + i) % m->queue_cap].payload);
    free(m->queue);
    free(m->url);
    pthread_cond_destroy(&m->wake);
    pthread_cond_destroy(&m->nwake);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

int rhema_monitor_start(struct rhema_server *srv, rhema_monitor_expo_fn *expo,
                        struct rhema_monitor **out, char **err)
{
    const struct rhema_config *cfg = srv->cfg;
    int on = 1, rc;
    int64_t eval_s = 15, refresh_s = 60, timeout_s = 5, retries = 5, qsize = 256;
    const char *url = "";
    pthread_condattr_t ca;
    *out = NULL;
    rhema_config_get_bool(cfg, "monitoring.enabled", &on);
    if (!on)
        return 0;
    rhema_config_get_int(cfg, "monitoring.alerts.evaluation_interval_seconds", &eval_s);
    rhema_config_get_int(cfg, "monitoring.stats_refresh_seconds", &refresh_s);
    rhema_config_get_int(cfg, "monitoring.alerts.webhook_timeout_seconds", &timeout_s);
    rhema_config_get_int(cfg, "monitoring.alerts.webhook_max_retries", &retries);
    rhema_config_get_int(cfg, "monitoring.alerts.webhook_queue_size", &qsize);
    rhema_config_get_string(cfg, "monitoring.alerts.webhook_url", &url);

    struct rhema_monitor *m = calloc(1, sizeof *m);
    if (!m)
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    pthread_mutex_init(&m->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&m->wake, &ca);
    pthread_cond_init(&m->nwake, &ca);
    pthread_condattr_destroy(&ca);
    m->srv = srv;
    m->expo = expo;
    m->eval_ms = (uint64_t)eval_s * 1000;
    m->refresh_ms = (uint64_t)refresh_s * 1000;
    m->timeout_s = (long)timeout_s;
    m->max_retries = (unsigned)retries;
    m->queue_cap = (size_t)qsize;
    if ((rc = rhema_alerts_new(cfg, srv->listen_addr, &srv->alerts, err)) != 0) {
        monitor_free(m);
        return rc;
    }
    m->alerts_on = rhema_alerts_count(srv->alerts) > 0;
    if (m->alerts_on && *url) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            rc = rhema_set_error(err, RHEMA_ENOMEM, "cannot initialise libcurl for the webhook");
            goto fail;
        }
        m->curl_inited = 1;
        if (!(m->url = strdup(url)) || !(m->queue = calloc(m->queue_cap, sizeof *m->queue))) {
            rc = rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
            goto fail;
        }
    }
    *out = m;
    return 0;
fail:
    rhema_monitor_stop(m);
    return rc;
}

int rhema_monitor_run(struct rhema_monitor *m, char **err)
{
    if (!m)
        return 0;
    if (rhema_alerts_set_instance(m->srv->alerts, m->srv->listen_addr) != 0)
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    if (m->url) {
        if (pthread_create(&m->notifier, NULL, notifier_main, m) != 0)
            return rhema_set_error(err, RHEMA_ENOMEM, "cannot start the alert notifier thread");
        m->notifier_on = 1;
    }
    if (pthread_create(&m->thread, NULL, monitor_main, m) != 0)
        return rhema_set_error(err, RHEMA_ENOMEM, "cannot start the monitoring thread");
    m->thread_on = 1;
    if (m->alerts_on)
        rhema_log(RHEMA_LOG_INFO, "alerts", "%zu alert rules, evaluated every %llu s%s%s",
                  rhema_alerts_count(m->srv->alerts), (unsigned long long)(m->eval_ms / 1000),
                  m->url ? ", webhook " : "", m->url ? m->url : "");
    return 0;
}

void rhema_monitor_stop(struct rhema_monitor *m)
{
    if (!m)
        return;
    pthread_mutex_lock(&m->lock);
    m->stop = 1;
    pthread_cond_broadcast(&m->wake);
    pthread_cond_broadcast(&m->nwake);
    pthread_mutex_unlock(&m->lock);
    if (m->thread_on)
        pthread_join(m->thread, NULL);
    if (m->notifier_on)
        pthread_join(m->notifier, NULL);
    if (m->curl_inited)
        curl_global_cleanup();
    rhema_alerts_free(m->srv->alerts);
    m->srv->alerts = NULL;
    monitor_free(m);
}

json_t *rhema_monitor_namespaces_json(struct rhema_monitor *m)
{
    json_t *groups = json_object();
    json_t *o = json_pack("{s:o}", "namespaces", groups);
    char t[RHEMA_TIME_MAX];
    if (!m) {
        json_object_set_new(o, "refreshed_at", json_null());
        return o;
    }
    pthread_mutex_lock(&m->lock);
    json_object_set_new(o, "refresh_interval_seconds",
                        json_integer((json_int_t)(m->refresh_ms / 1000)));
    if (m->refreshed_at) {
        rhema_time_format(m->refreshed_at, t);
        json_object_set_new(o, "refreshed_at", json_string(t));
    } else {
        json_object_set_new(o, "refreshed_at", json_null());
    }
    for (size_t i = 0; m->refreshed_at && i < N_NS; i++) {
        json_t *g = json_object_get(groups, namespaces[i].group);
        if (!g) {
            g = json_pack("{s:I,s:I,s:b}", "entries", (json_int_t)0, "bytes", (json_int_t)0,
                          "ok", 1);
            json_object_set_new(groups, namespaces[i].group, g);
        }
        if (!m->ns_ok[i]) {
            json_object_set_new(g, "ok", json_false());
            continue;
        }
        json_object_set_new(g, "entries",
                            json_integer(json_integer_value(json_object_get(g, "entries")) +
                                         (json_int_t)m->ns[i].entries));
        json_object_set_new(g, "bytes",
                            json_integer(json_integer_value(json_object_get(g, "bytes")) +
                                         (json_int_t)m->ns[i].bytes));
    }
    pthread_mutex_unlock(&m->lock);
    return o;
}

void rhema_monitor_notify_stats(struct rhema_monitor *m, struct rhema_monitor_notify_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!m)
        return;
    pthread_mutex_lock(&m->lock);
    out->sent = m->sent;
    out->failed_attempts = m->failed_attempts;
    out->given_up = m->given_up;
    out->dropped = m->dropped;
    out->queued = m->qlen;
    pthread_mutex_unlock(&m->lock);
}
