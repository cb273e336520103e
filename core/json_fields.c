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

/* ---- a compact writer: jansson's output, with each real at its own precision ---- */

struct jbuf {
    char *p;
    size_t len, cap;
    int failed;
};

static void jb_put(struct jbuf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

/* A JSON string as jansson writes it by default: UTF-8 as is, \uXXXX for other controls. */
static void jb_string(struct jbuf *b, const char *s, size_t n)
{
    size_t from = 0;
    jb_put(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char u[8];
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        default:
            if (c < 0x20) {
                snprintf(u, sizeof u, "\\u%04X", c);
                esc = u;
            }
        }
        if (esc) {
            jb_put(b, s + from, i - from);
            jb_put(b, esc, strlen(esc));
            from = i + 1;
        }
    }
    jb_put(b, s + from, n - from);
    jb_put(b, "\"", 1);
}

/* A real as jansson writes it, with the fewest digits that read back as d. */
static void jb_real(struct jbuf *b, double d)
{
    char buf[48], out[48];
    snprintf(buf, sizeof buf, "%.*g", real_digits(d), d);
    /* jansson's touches: a '.' or an 'e' so that it reads back as a real,
     * and no '+' or leading zeros in the exponent */
    if (!strchr(buf, '.') && !strchr(buf, 'e'))
        strcat(buf, ".0");
    char *e = strchr(buf, 'e'), *o = out;
    if (!e) {
        jb_put(b, buf, strlen(buf));
        return;
    }
    memcpy(o, buf, (size_t)(e - buf) + 1);
    o += e - buf + 1;
    const char *x = e + 1;
    if (*x == '+')
        x++;
    else if (*x == '-')
        *o++ = *x++;
    while (*x == '0' && x[1])
        x++;
    strcpy(o, x);
    jb_put(b, out, strlen(out));
}

static int key_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void jb_value(struct jbuf *b, const json_t *v, size_t flags)
{
    char num[32];
    size_t i, n;
    json_t *item;
    const char *key;
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        jb_put(b, "{", 1);
        n = json_object_size(v);
        if ((flags & JSON_SORT_KEYS) && n > 1) {
            const char **keys = malloc(n * sizeof *keys);
            if (!keys) {
                b->failed = 1;
                return;
            }
            i = 0;
            json_object_foreach((json_t *)v, key, item) keys[i++] = key;
            qsort(keys, n, sizeof *keys, key_cmp);
            for (i = 0; i < n; i++) {
                if (i)
                    jb_put(b, ",", 1);
                jb_string(b, keys[i], strlen(keys[i]));
                jb_put(b, ":", 1);
                jb_value(b, json_object_get(v, keys[i]), flags);
            }
            free(keys);
        } else {
            size_t klen;
            i = 0;
            json_object_keylen_foreach((json_t *)v, key, klen, item)
            {
                if (i++)
                    jb_put(b, ",", 1);
                jb_string(b, key, klen);
                jb_put(b, ":", 1);
                jb_value(b, item, flags);
            }
        }
        jb_put(b, "}", 1);
        return;
    case JSON_ARRAY:
        jb_put(b, "[", 1);
        json_array_foreach(v, i, item)
        {
            if (i)
                jb_put(b, ",", 1);
            jb_value(b, item, flags);
        }
        jb_put(b, "]", 1);
        return;
    case JSON_STRING: jb_string(b, json_string_value(v), json_string_length(v)); return;
    case JSON_INTEGER:
        snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        jb_put(b, num, strlen(num));
        return;
    case JSON_REAL: jb_real(b, json_real_value(v)); return;
    case JSON_TRUE: jb_put(b, "true", 4); return;
    case JSON_FALSE: jb_put(b, "false", 5); return;
    default: jb_put(b, "null", 4); return;
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
    /* what the writer above does not do (indentation, \u escapes of
     * non-ASCII or '/', ...): jansson, with the largest precision any real
     * of v needs */
    const size_t own = JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_SORT_KEYS | JSON_ENCODE_ANY;
    if (!v || !(flags & JSON_COMPACT) || (flags & ~own) || max_real_digits(v) == 0) {
        int digits = v ? max_real_digits(v) : 0;
        if (digits > 0)
            flags |= JSON_REAL_PRECISION(digits);
        return json_dumps(v, flags);
    }
    if (!(flags & JSON_ENCODE_ANY) && !json_is_object(v) && !json_is_array(v))
        return NULL; /* as json_dumps() */
    struct jbuf b = {0};
    jb_value(&b, v, flags);
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    return b.p;
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
