/*
 * json_fields -- the field validators of the stores' JSON bodies
 * (json_fields.h).
 */
#include "rhema_build.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rhema/plugin.h>

#include "json_fields.h"
#include "util.h"

/* The significant digits (1..17) "%.*g" needs for d to read back as d. */
static int real_digits(double d)
{
    char buf[40];
    for (int p = 1; p < 17; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, d);
        if (strtod(buf, NULL) == d)
            return p;
    }
    return 17;
}

/* The largest real_digits() of the reals in v (0 when it holds none). */
static int max_real_digits(const json_t *v)
{
    int most = 0, d;
    const char *key;
    size_t i;
    json_t *item;
    switch (json_typeof(v)) {
    case JSON_REAL: return real_digits(json_real_value(v));
    case JSON_OBJECT:
        json_object_foreach((json_t *)v, key, item)
        {
            if ((d = max_real_digits(item)) > most)
                most = d;
        }
        return most;
    case JSON_ARRAY:
        json_array_foreach(v, i, item)
        {
            if ((d = max_real_digits(item)) > most)
                most = d;
        }
        return most;
    default: return 0;
    }
}

json_t *rhema_json_merge_patch(json_t *target, json_t *patch)
{
    const char *key;
    json_t *v;
    if (!json_is_object(patch))
        return json_incref(patch);
    json_t *out = json_is_object(target) ? json_copy(target) : json_object(); /* shallow */
    if (!out)
        return NULL;
    json_object_foreach(patch, key, v)
    {
        if (json_is_null(v)) {
            json_object_del(out, key);
            continue;
        }
        json_t *m = rhema_json_merge_patch(json_object_get(out, key), v);
        if (!m || json_object_set_new(out, key, m) != 0) {
            json_decref(out);
            return NULL;
        }
    }
    return out;
}

char *rhema_json_dumps(const json_t *v, size_t flags)
{
    int digits = v ? max_real_digits(v) : 0;
    if (digits > 0)
        flags |= JSON_REAL_PRECISION(digits);
    return json_dumps(v, flags);
}

int rhema_name_in_list(const char *s, const char *const *list)
{
    for (; list && *list; list++)
        if (strcmp(s, *list) == 0)
            return 1;
    return 0;
}

void rhema_name_list_join(char *buf, size_t cap, const char *const *list)
{
    size_t at = 0;
    buf[0] = '\0';
    for (const char *const *p = list; *p && at < cap; p++)
        at += (size_t)snprintf(buf + at, cap - at, "%s%s", p == list ? "" : ", ", *p);
}

int rhema_field_known(json_t *body, const char *const *known, const char *const *ignored,
                      const char *prefix, char *err)
{
    const char *key;
    json_t *v;
    json_object_foreach(body, key, v)
    {
        if (!rhema_name_in_list(key, known) && !rhema_name_in_list(key, ignored))
            return rhema_set_errbuf(err, RHEMA_EINVAL, "field '%s%s': unknown field", prefix, key);
    }
    return 0;
}

int rhema_field_enum(json_t *dst, const char *key, json_t *v, const char *const *allowed,
                     const char *dflt, const char *prefix, char *err)
{
    char names[160];
    if (!v && dflt) {
        json_object_set_new(dst, key, json_string(dflt));
        return 0;
    }
    if (!v || !json_is_string(v) || !rhema_name_in_list(json_string_value(v), allowed)) {
        rhema_name_list_join(names, sizeof names, allowed);
        return rhema_set_errbuf(err, RHEMA_EINVAL, "field '%s%s': expected one of %s", prefix, key,
                                names);
    }
    json_object_set(dst, key, v);
    return 0;
}

int rhema_field_time(json_t *dst, const char *key, json_t *v, enum rhema_field_time_absent absent,
                     const char *prefix, char *err)
{
    char buf[RHEMA_TIME_MAX];
    uint64_t ms;
    if (absent == RHEMA_TIME_NULL && (!v || json_is_null(v))) {
        json_object_set_new(dst, key, json_null());
        return 0;
    }
    if (!v) {
        if (absent == RHEMA_TIME_OMITTED)
            return 0;
        ms = rhema_realtime_ms();
    } else if (!json_is_string(v) || rhema_time_parse(json_string_value(v), &ms) != 0) {
        return rhema_set_errbuf(
            err, RHEMA_EINVAL,
            "field '%s%s': expected an RFC 3339 timestamp such as 2026-01-02T03:04:05Z", prefix,
            key);
    }
    rhema_time_format(ms, buf);
    json_object_set_new(dst, key, json_string(buf));
    return 0;
}
