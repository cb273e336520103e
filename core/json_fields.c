/*
 * json_fields -- the field validators of the stores' JSON bodies
 * (json_fields.h).
 */
#include "rhema_build.h"

#include <stdio.h>
#include <string.h>

#include <rhema/plugin.h>

#include "json_fields.h"
#include "util.h"

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
