/*
 * services_validate -- a ServiceInfo body and its check, validated and
 * normalised before the registry stores it (services.h: "Validation"),
 * and the check defaults of distributed.health_checking.  No storage, no
 * state: the API validates on its worker thread, the store writes.
 */
#include "rhema_build.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/http.h>

#include "services.h"
#include "util.h"

void rhema_check_defaults_get(const struct rhema_config *cfg, struct rhema_check_defaults *d)
{
    d->interval_s = 10;
    d->timeout_s = 5;
    d->failure_threshold = 3;
    d->success_threshold = 2;
    rhema_config_get_int(cfg, "distributed.health_checking.interval_seconds", &d->interval_s);
    rhema_config_get_int(cfg, "distributed.health_checking.timeout_seconds", &d->timeout_s);
    rhema_config_get_int(cfg, "distributed.health_checking.failure_threshold",
                         &d->failure_threshold);
    rhema_config_get_int(cfg, "distributed.health_checking.success_threshold",
                         &d->success_threshold);
}

/* "host:port" or "[v6]:port" with a port 1..65535; host of [A-Za-z0-9.-] or an IPv6 literal. */
static int address_valid(const char *a)
{
    const char *colon;
    size_t hlen;
    if (!a || strlen(a) > RHEMA_SERVICE_ADDR_MAX)
        return 0;
    if (a[0] == '[') {
        const char *end = strchr(a, ']');
        if (!end || end == a + 1 || end[1] != ':')
            return 0;
        for (const char *p = a + 1; p < end; p++)
            if (!strchr("0123456789abcdefABCDEF:.", *p))
                return 0;
        colon = end + 1;
    } else {
        colon = strrchr(a, ':');
        if (!colon)
            return 0;
        hlen = (size_t)(colon - a);
        if (hlen == 0)
            return 0;
        for (size_t i = 0; i < hlen; i++) {
            char c = a[i];
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '-' || c == '_'))
                return 0;
        }
    }
    char *end;
    errno = 0;
    unsigned long port = strtoul(colon + 1, &end, 10);
    return colon[1] >= '0' && colon[1] <= '9' && *end == '\0' && !errno && port >= 1 &&
           port <= 65535;
}

static int http_url_valid(const char *u)
{
    struct evhttp_uri *uri;
    int ok;
    if (!u || strncmp(u, "http://", 7) != 0 || strlen(u) > 2000)
        return 0;
    uri = evhttp_uri_parse(u);
    ok = uri && evhttp_uri_get_host(uri) && *evhttp_uri_get_host(uri);
    if (uri)
        evhttp_uri_free(uri);
    return ok;
}

/* An integer field of o within lo..hi, or dflt when absent; -1 and err when bad. */
static int int_field(json_t *o, const char *key, const char *label, int64_t lo, int64_t hi,
                     int64_t dflt, int64_t *out, char *err)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        *out = dflt;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        rhema_set_errbuf(err, RHEMA_EINVAL, "field '%s': expected an integer from %lld to %lld",
                         label, (long long)lo, (long long)hi);
        return -1;
    }
    *out = json_integer_value(v);
    return 0;
}

static int check_validate(json_t *c, const struct rhema_check_defaults *d, json_t **out, char *err)
{
    static const char *const known[] = {"type", "target", "interval_seconds", "timeout_seconds",
                                        "failure_threshold", "success_threshold",
                                        "deregister_critical_after_seconds", NULL};
    const char *key, *type, *target = NULL;
    json_t *v;
    int64_t interval, timeout, fthr, sthr, dereg;

    if (!json_is_object(c))
        return rhema_set_errbuf(err, RHEMA_EINVAL, "field 'check': expected an object or null");
    json_object_foreach(c, key, v)
    {
        int ok = 0;
        for (const char *const *k = known; *k; k++)
            ok |= strcmp(key, *k) == 0;
        if (!ok)
            return rhema_set_errbuf(err, RHEMA_EINVAL, "field 'check.%s': unknown field", key);
    }
    v = json_object_get(c, "type");
    type = json_string_value(v);
    if (!type || (strcmp(type, "http") && strcmp(type, "tcp") && strcmp(type, "ttl")))
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "field 'check.type': expected one of http, tcp, ttl");
    v = json_object_get(c, "target");
    if (v && !json_is_null(v) && !json_is_string(v))
        return rhema_set_errbuf(err, RHEMA_EINVAL, "field 'check.target': expected a string");
    target = json_string_value(v);
    if (strcmp(type, "http") == 0 && !http_url_valid(target))
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "field 'check.target': expected an http:// URL for an http check");
    if (strcmp(type, "tcp") == 0 && !address_valid(target))
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "field 'check.target': expected host:port for a tcp check");
    if (strcmp(type, "ttl") == 0 && target)
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "field 'check.target': a ttl check has no target");
    if (int_field(c, "interval_seconds", "check.interval_seconds", 1, 86400, d->interval_s,
                  &interval, err) ||
        int_field(c, "timeout_seconds", "check.timeout_seconds", 1, 3600, d->timeout_s, &timeout,
                  err) ||
        int_field(c, "failure_threshold", "check.failure_threshold", 1, 100, d->failure_threshold,
                  &fthr, err) ||
        int_field(c, "success_threshold", "check.success_threshold", 1, 100, d->success_threshold,
                  &sthr, err) ||
        int_field(c, "deregister_critical_after_seconds",
                  "check.deregister_critical_after_seconds", 0, 31536000, 0, &dereg, err))
        return RHEMA_EINVAL;
    if (strcmp(type, "ttl") != 0 && timeout > interval && json_object_get(c, "timeout_seconds"))
        return rhema_set_errbuf(
            err, RHEMA_EINVAL,
            "field 'check.timeout_seconds': must not exceed check.interval_seconds (%lld)",
            (long long)interval);
    if (timeout > interval)
        timeout = interval; /* a defaulted timeout follows a short interval */
    *out = json_pack("{s:s,s:o,s:I,s:I,s:I,s:I,s:I}", "type", type, "target",
                     target ? json_string(target) : json_null(), "interval_seconds",
                     (json_int_t)interval, "timeout_seconds", (json_int_t)timeout,
                     "failure_threshold", (json_int_t)fthr, "success_threshold", (json_int_t)sthr,
                     "deregister_critical_after_seconds", (json_int_t)dereg);
    return *out ? 0 : rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
}

int rhema_service_validate(json_t *body, const char *path_id, const struct rhema_check_defaults *d,
                           const struct rhema_services *s, json_t **out, char err[RHEMA_ERRMSG_MAX])
{
    static const char *const known[] = {"name", "service_id", "address", "weight", "metadata",
                                        "check", "strategy", NULL};
    static const char *const ignored[] = {"registered_at", "updated_at", "version",
                                          "health_status", "last_health_check", "check_status",
                                          "check_output", NULL};
    const char *key, *name, *address, *strategy = NULL;
    json_t *v, *meta, *check = NULL;
    int64_t weight;

    if (!json_is_object(body))
        return rhema_set_errbuf(err, RHEMA_EINVAL, "body: expected a JSON object");
    json_object_foreach(body, key, v)
    {
        int ok = 0;
        for (const char *const *k = known; *k; k++)
            ok |= strcmp(key, *k) == 0;
        for (const char *const *k = ignored; *k; k++)
            ok |= strcmp(key, *k) == 0;
        if (!ok)
            return rhema_set_errbuf(err, RHEMA_EINVAL, "field '%s': unknown field", key);
    }
    v = json_object_get(body, "service_id");
    if (v && (!json_is_string(v) || strcmp(json_string_value(v), path_id) != 0))
        return rhema_set_errbuf(
            err, RHEMA_EINVAL, "field 'service_id': must equal the id in the path ('%s')", path_id);
    name = json_string_value(json_object_get(body, "name"));
    if (!name || !rhema_id_valid(name))
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "field 'name': expected 1-128 characters [A-Za-z0-9._:-]");
    address = json_string_value(json_object_get(body, "address"));
    if (!address_valid(address))
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "field 'address': expected host:port (or [v6]:port), port 1-65535");
    if (int_field(body, "weight", "weight", 1, 1000000, 1, &weight, err))
        return RHEMA_EINVAL;
    meta = json_object_get(body, "metadata");
    if (meta && !json_is_null(meta)) {
        json_t *mv;
        if (!json_is_object(meta))
            return rhema_set_errbuf(err, RHEMA_EINVAL,
                                    "field 'metadata': expected an object of strings");
        json_object_foreach(meta, key, mv)
        {
            if (!json_is_string(mv))
                return rhema_set_errbuf(err, RHEMA_EINVAL, "field 'metadata.%s': expected a string",
                                        key);
        }
    }
    v = json_object_get(body, "strategy");
    if (v && !json_is_null(v)) {
        strategy = json_string_value(v);
        if (!strategy || !rhema_id_valid(strategy))
            return rhema_set_errbuf(err, RHEMA_EINVAL,
                                    "field 'strategy': expected a strategy name or null");
        if (s && !rhema_services_strategy_loaded(s, strategy)) {
            char names[256];
            rhema_services_strategies(s, names, sizeof names);
            return rhema_set_errbuf(
                err, RHEMA_EINVAL,
                "field 'strategy': balancing strategy '%s' is not loaded (loaded: %s)", strategy,
                names);
        }
    }
    v = json_object_get(body, "check");
    if (v && !json_is_null(v)) {
        int rc = check_validate(v, d, &check, err);
        if (rc)
            return rc;
    }
    *out = json_pack("{s:s,s:s,s:s,s:I,s:o,s:o,s:o}", "name", name, "service_id", path_id,
                     "address", address, "weight", (json_int_t)weight, "metadata",
                     meta && !json_is_null(meta) ? json_deep_copy(meta) : json_object(), "check",
                     check ? check : json_null(), "strategy",
                     strategy ? json_string(strategy) : json_null());
    return *out ? 0 : rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
}
