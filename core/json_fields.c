/*
 * json_fields -- the field validators of the stores' JSON bodies
 * (json_fields.h).
 */
#include "rhema_build.h"

#include <errno.h>
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

/*
 * A JSON string as jansson writes it by default: UTF-8 as is, \uXXXX for
 * other controls; a string that is not UTF-8 fails the text, as in jansson.
 */
static void jb_string(struct jbuf *b, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t from = 0, i = 0;
    jb_put(b, "\"", 1);
    while (i < n) {
        unsigned char c = u[i];
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            i++;
            continue;
        }
        if (c >= 0x80) {
            int k = rhema_utf8_seq(u + i, n - i);
            if (k <= 0) {
                b->failed = 1;
                return;
            }
            i += (size_t)k;
            continue;
        }
        const char *esc;
        char x[8];
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        default:
            snprintf(x, sizeof x, "\\u%04X", c);
            esc = x;
        }
        jb_put(b, s + from, i - from);
        jb_put(b, esc, strlen(esc));
        from = ++i;
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
    case JSON_INTEGER: {
        json_int_t x = json_integer_value(v);
        unsigned long long m = x < 0 ? 0ULL - (unsigned long long)x : (unsigned long long)x;
        char *e = num + sizeof num, *d = e;
        do
            *--d = (char)('0' + m % 10);
        while (m /= 10);
        if (x < 0)
            *--d = '-';
        jb_put(b, d, (size_t)(e - d));
        return;
    }
    case JSON_REAL: jb_real(b, json_real_value(v)); return;
    case JSON_TRUE: jb_put(b, "true", 4); return;
    case JSON_FALSE: jb_put(b, "false", 5); return;
    default: jb_put(b, "null", 4); return;
    }
}

/* ---- a reader: json_loadb()'s value for the documents every request brings, faster ---- */

/*
 * jansson reads a document a byte at a time through its stream and copies
 * each string's bytes one by one into a growing buffer: ~18 us for a 1 KiB
 * session body, as much CPU as the rest of the PUT's handler.  This reader
 * scans runs of plain bytes at once and builds the same json_t through
 * jansson's constructors.  It gives up -- and rhema_json_loadb() hands the
 * text to json_loadb(), which gives the answer or the error -- on anything
 * it does not read exactly as jansson would: every syntax error, a
 * duplicate key, a number out of the 18 digits of an exact integer or
 * that strtod() does not read whole and in range, \u0000, deep nesting.
 * So whatever it accepts, jansson accepts as the same value (the unit test
 * and tests/fuzz/fuzz_json compare the two), and every error message is
 * jansson's.
 */
struct jr {
    const unsigned char *p, *end;
    size_t flags;
};

#define JR_DEPTH_MAX 64 /* deeper: jansson's reader (its own limit is 2048) */

static int hex4(const unsigned char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

/*
 * The string whose opening quote r->p is at: *s and *n are its bytes --
 * in the input when it has no escape, else decoded into *own (malloc'd,
 * the caller frees it).  -1: not a string jansson would read the same.
 */
static int jr_string(struct jr *r, const char **s, size_t *n, char **own)
{
    const unsigned char *p = r->p + 1, *start = p, *end = r->end;
    int escapes = 0;
    *own = NULL;
    for (;;) {
        while (p < end && *p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\')
            p++;
        if (p == end || *p < 0x20)
            return -1; /* unterminated, or a control character */
        if (*p == '"')
            break;
        if (*p == '\\') {
            if (end - p < 2)
                return -1;
            escapes = 1;
            p += p[1] == 'u' ? 6 : 2; /* checked when decoded */
            if (p > end)
                return -1;
            continue;
        }
        int k = rhema_utf8_seq(p, (size_t)(end - p));
        if (k <= 0)
            return -1;
        p += k;
    }
    r->p = p + 1;
    if (!escapes) {
        *s = (const char *)start;
        *n = (size_t)(p - start);
        return 0;
    }
    /* decoded, never longer than the text */
    char *out = malloc((size_t)(p - start) + 1), *o = out;
    if (!out)
        return -1;
    for (const unsigned char *q = start; q < p;) {
        if (*q != '\\') {
            *o++ = (char)*q++;
            continue;
        }
        unsigned cp, lo;
        switch (q[1]) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '/': *o++ = '/'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u':
            if (hex4(q + 2, &cp) != 0 || cp == 0 || (cp >= 0xDC00 && cp <= 0xDFFF))
                goto bad;
            if (cp >= 0xD800 && cp <= 0xDBFF) { /* a surrogate pair, or jansson's error */
                if (p - q < 12 || q[6] != '\\' || q[7] != 'u' || hex4(q + 8, &lo) != 0 ||
                    lo < 0xDC00 || lo > 0xDFFF)
                    goto bad;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                q += 6;
            }
            if (cp < 0x80)
                *o++ = (char)cp;
            else if (cp < 0x800) {
                *o++ = (char)(0xC0 | (cp >> 6));
                *o++ = (char)(0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                *o++ = (char)(0xE0 | (cp >> 12));
                *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
                *o++ = (char)(0x80 | (cp & 0x3F));
            } else {
                *o++ = (char)(0xF0 | (cp >> 18));
                *o++ = (char)(0x80 | ((cp >> 12) & 0x3F));
                *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
                *o++ = (char)(0x80 | (cp & 0x3F));
            }
            q += 6;
            continue;
        default: goto bad;
        }
        q += 2;
    }
    *s = *own = out;
    *n = (size_t)(o - out);
    return 0;
bad:
    free(out);
    return -1;
}

static void jr_ws(struct jr *r)
{
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\n' || *r->p == '\r' || *r->p == '\t'))
        r->p++;
}

static int jr_digits(struct jr *r)
{
    const unsigned char *from = r->p;
    while (r->p < r->end && *r->p >= '0' && *r->p <= '9')
        r->p++;
    return r->p > from ? 0 : -1;
}

/* A number as jansson's lexer reads it: an integer when it has neither fraction nor exponent. */
static json_t *jr_number(struct jr *r)
{
    const unsigned char *from = r->p;
    int neg = 0, real = 0;
    if (*r->p == '-') {
        neg = 1;
        r->p++;
    }
    if (r->p == r->end || *r->p < '0' || *r->p > '9')
        return NULL;
    if (*r->p == '0') {
        r->p++;
        if (r->p < r->end && *r->p >= '0' && *r->p <= '9')
            return NULL; /* a leading zero */
    } else
        jr_digits(r);
    const unsigned char *int_end = r->p;
    if (r->p < r->end && *r->p == '.') {
        r->p++;
        if (jr_digits(r))
            return NULL;
        real = 1;
    }
    if (r->p < r->end && (*r->p == 'e' || *r->p == 'E')) {
        r->p++;
        if (r->p < r->end && (*r->p == '+' || *r->p == '-'))
            r->p++;
        if (jr_digits(r))
            return NULL;
        real = 1;
    }
    if (!real) {
        const unsigned char *d = from + neg;
        if (int_end - d > 18)
            return NULL; /* exact in an int64 up to 18 digits; jansson decides the rest */
        json_int_t v = 0;
        for (; d < int_end; d++)
            v = v * 10 + (*d - '0');
        return json_integer(neg ? -v : v);
    }
    char buf[64], *stop;
    size_t len = (size_t)(r->p - from);
    if (len >= sizeof buf)
        return NULL;
    memcpy(buf, from, len);
    buf[len] = '\0';
    errno = 0;
    double d = strtod(buf, &stop);
    if (errno || stop != buf + len) /* out of range, or a locale's decimal point */
        return NULL;
    return json_real(d);
}

static json_t *jr_value(struct jr *r, int depth);

/* Past '{' or '[': 1 when the container is empty (its closer read too). */
static int jr_open(struct jr *r, unsigned char close)
{
    r->p++;
    jr_ws(r);
    if (r->p < r->end && *r->p == close) {
        r->p++;
        return 1;
    }
    return 0;
}

/* After a member: 1 past a ',' (another member follows), 0 past the closer, -1 otherwise. */
static int jr_next(struct jr *r, unsigned char close)
{
    jr_ws(r);
    if (r->p < r->end && *r->p == ',') {
        r->p++;
        jr_ws(r);
        return 1;
    }
    if (r->p < r->end && *r->p == close) {
        r->p++;
        return 0;
    }
    return -1;
}

static json_t *jr_object(struct jr *r, int depth)
{
    json_t *o = json_object();
    int more = 1;
    if (jr_open(r, '}'))
        return o;
    while (o && more == 1) {
        const char *k;
        size_t kn;
        char *own;
        if (r->p == r->end || *r->p != '"' || jr_string(r, &k, &kn, &own) != 0)
            break;
        jr_ws(r);
        json_t *v = NULL;
        if (r->p < r->end && *r->p == ':') {
            r->p++;
            jr_ws(r);
            v = jr_value(r, depth);
        }
        size_t before = json_object_size(o);
        /* a duplicate with JSON_REJECT_DUPLICATES: jansson's error; without, the last one, as jansson */
        int bad = !v || json_object_setn_new_nocheck(o, k, kn, v) != 0 ||
                  ((r->flags & JSON_REJECT_DUPLICATES) && json_object_size(o) == before);
        free(own);
        if (bad)
            break;
        if ((more = jr_next(r, '}')) == 0)
            return o;
    }
    json_decref(o);
    return NULL;
}

static json_t *jr_array(struct jr *r, int depth)
{
    json_t *a = json_array();
    int more = 1;
    if (jr_open(r, ']'))
        return a;
    while (a && more == 1) {
        json_t *v = jr_value(r, depth);
        if (!v || json_array_append_new(a, v) != 0)
            break;
        if ((more = jr_next(r, ']')) == 0)
            return a;
    }
    json_decref(a);
    return NULL;
}

static int jr_word(struct jr *r, const char *w, size_t n)
{
    if ((size_t)(r->end - r->p) < n || memcmp(r->p, w, n) != 0)
        return -1;
    r->p += n;
    return 0;
}

static json_t *jr_value(struct jr *r, int depth)
{
    if (r->p == r->end || depth >= JR_DEPTH_MAX)
        return NULL;
    switch (*r->p) {
    case '{': return jr_object(r, depth + 1);
    case '[': return jr_array(r, depth + 1);
    case '"': {
        const char *s;
        size_t n;
        char *own;
        if (jr_string(r, &s, &n, &own) != 0)
            return NULL;
        json_t *v = json_stringn_nocheck(s, n); /* no NUL: jr_string refuses \u0000 */
        free(own);
        return v;
    }
    case 't': return jr_word(r, "true", 4) ? NULL : json_true();
    case 'f': return jr_word(r, "false", 5) ? NULL : json_false();
    case 'n': return jr_word(r, "null", 4) ? NULL : json_null();
    default: return jr_number(r);
    }
}

json_t *rhema_json_read(const char *data, size_t len, size_t flags)
{
    if (!data || (flags & ~(size_t)JSON_REJECT_DUPLICATES))
        return NULL;
    struct jr r = {(const unsigned char *)data, (const unsigned char *)data + len, flags};
    json_t *v = NULL;
    jr_ws(&r);
    if (r.p < r.end && (*r.p == '{' || *r.p == '[')) /* a document, as without JSON_DECODE_ANY */
        v = jr_value(&r, 0);
    jr_ws(&r);
    if (v && r.p == r.end)
        return v;
    json_decref(v);
    return NULL;
}

json_t *rhema_json_loadb(const char *data, size_t len, size_t flags, json_error_t *err)
{
    json_t *v = rhema_json_read(data, len, flags);
    if (!v)
        return json_loadb(data, len, flags, err);
    if (err) { /* as jansson leaves it after a success */
        memset(err, 0, sizeof *err);
        err->line = err->column = -1;
        snprintf(err->source, sizeof err->source, "<buffer>");
    }
    return v;
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
    if (!v || !(flags & JSON_COMPACT) || (flags & ~own)) {
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
