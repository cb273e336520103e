/*
 * config -- libconfig file -> struct rhema_config, with strict validation.
 *
 * One table (`cfg_schema` in config_schema.c) describes every core key: its
 * dotted path, type, default, range or allowed values, and, for the keys the
 * rest of the core reads often, where it lands in struct rhema_config.  Loading
 * is three passes over one libconfig tree:
 *
 *   1. read the file (or start from an empty tree);
 *   2. apply the -o overrides and -P, typing each value by the schema and
 *      creating groups as needed, remembering which settings they made so
 *      that errors name "-o key=value" instead of a line number;
 *   3. walk the tree against the schema, collecting every problem, then
 *      copy the values (or defaults) into struct rhema_config.
 *
 * The tree is kept (in priv) after loading: plugin groups are read from it
 * later, and rhema_config_get_*() resolve any schema key against it.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <libconfig.h>

#include "config.h"
#include "config_internal.h"
#include "rhema_paths.h" /* RHEMA_PLUGINDIR, RHEMA_DATA_DIRECTORY: made by make */
#include "targets.h"


/* ------------------------------------------------------------------------ */
/* Private state                                                            */

static void sb_vadd(struct sbuf *b, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
static void sb_vadd(struct sbuf *b, const char *fmt, va_list ap)
{
    va_list aq;
    int n;

    if (b->oom)
        return;
    va_copy(aq, ap);
    n = vsnprintf(NULL, 0, fmt, aq);
    va_end(aq);
    if (n < 0) {
        b->oom = 1;
        return;
    }
    if (b->len + (size_t)n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        char *s;

        while (cap < b->len + (size_t)n + 1)
            cap *= 2;
        s = realloc(b->s, cap);
        if (!s) {
            b->oom = 1;
            return;
        }
        b->s = s;
        b->cap = cap;
    }
    vsnprintf(b->s + b->len, b->cap - b->len, fmt, ap);
    b->len += (size_t)n;
}

void cfg_sb_add(struct sbuf *b, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    sb_vadd(b, fmt, ap);
    va_end(ap);
}

static const struct origin *origin_of(const struct cfg_priv *p, const config_setting_t *s)
{
    for (size_t i = 0; i < p->n_origins; i++)
        if (p->origins[i].s == s)
            return &p->origins[i];
    return NULL;
}

/* "file:line" of a setting, or the override that made it, into buf. */
void cfg_where_of(const struct cfg_priv *p, const config_setting_t *s, char *buf, size_t n)
{
    for (const config_setting_t *t = s; t; t = config_setting_parent(t)) {
        const struct origin *o = origin_of(p, t);

        if (o) {
            snprintf(buf, n, "%s", o->text);
            return;
        }
        if (config_setting_source_line(t) > 0) {
            const char *f = config_setting_source_file(t);

            snprintf(buf, n, "%s:%u", f ? f : p->path, (unsigned)config_setting_source_line(t));
            return;
        }
    }
    snprintf(buf, n, "%s", p->path[0] ? p->path : "(config)");
}

static void error_at(struct ctx *c, const config_setting_t *s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void error_at(struct ctx *c, const config_setting_t *s, const char *fmt, ...)
{
    char where[512];
    va_list ap;

    cfg_where_of(c->p, s, where, sizeof where);
    cfg_sb_add(&c->errs, "%s%s: ", c->n_errs ? "\n" : "", where);
    va_start(ap, fmt);
    sb_vadd(&c->errs, fmt, ap);
    va_end(ap);
    c->n_errs++;
}

void cfg_error_plain(struct ctx *c, const char *fmt, ...)
{
    va_list ap;

    if (c->n_errs)
        cfg_sb_add(&c->errs, "\n");
    va_start(ap, fmt);
    sb_vadd(&c->errs, fmt, ap);
    va_end(ap);
    c->n_errs++;
}

/* ------------------------------------------------------------------------ */
/* Small parsers                                                            */

int cfg_parse_int(const char *v, long long *out)
{
    const char *d = v;
    char *end;
    int base = 10;

    if (*d == '-' || *d == '+')
        d++;
    if (d[0] == '0' && (d[1] == 'x' || d[1] == 'X'))
        base = 16;
    if (!isdigit((unsigned char)*d))
        return -1;
    errno = 0;
    *out = strtoll(v, &end, base);
    if (errno)
        return -1;
    if (*end == 'L' || *end == 'l')
        end++;
    return *end ? -1 : 0;
}

int cfg_parse_double(const char *v, double *out)
{
    char *end;

    if (!*v || isspace((unsigned char)*v))
        return -1;
    errno = 0;
    *out = strtod(v, &end);
    if (errno || *end || !isfinite(*out))
        return -1;
    return 0;
}

int cfg_parse_bool(const char *v, int *out)
{
    static const char *const t[] = { "true", "yes", "on", "1" };
    static const char *const f[] = { "false", "no", "off", "0" };

    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(v, t[i]) == 0)
            return *out = 1, 0;
        if (strcasecmp(v, f[i]) == 0)
            return *out = 0, 0;
    }
    return -1;
}

static int valid_port(const char *s)
{
    long v = 0;

    if (!*s || strlen(s) > 5)
        return 0;
    for (const char *q = s; *q; q++) {
        if (!isdigit((unsigned char)*q))
            return 0;
        v = v * 10 + (*q - '0');
    }
    return v >= 1 && v <= 65535;
}

/* host:port, [v6]:port; host is an IPv4 address or a DNS name. */
static int valid_listen(const char *s)
{
    char host[256];
    const char *colon;
    size_t n;

    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        struct in6_addr a6;

        if (!close || close[1] != ':')
            return 0;
        n = (size_t)(close - s - 1);
        if (n == 0 || n >= sizeof host)
            return 0;
        memcpy(host, s + 1, n);
        host[n] = '\0';
        return inet_pton(AF_INET6, host, &a6) == 1 && valid_port(close + 2);
    }
    colon = strrchr(s, ':');
    if (!colon || colon == s || strchr(s, ':') != colon)
        return 0;
    n = (size_t)(colon - s);
    if (n >= sizeof host)
        return 0;
    memcpy(host, s, n);
    host[n] = '\0';
    if (strspn(host, "0123456789.") == n) {
        struct in_addr a4;

        if (inet_pton(AF_INET, host, &a4) != 1)
            return 0;
    } else {
        for (size_t i = 0; i < n; i++)
            if (!isalnum((unsigned char)host[i]) && host[i] != '.' && host[i] != '-' &&
                host[i] != '_')
                return 0;
    }
    return valid_port(colon + 1);
}

static int valid_name(const char *s)
{
    size_t n = strlen(s);

    return n >= 1 && n <= 64 && strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789_") == n;
}

static int valid_url(const char *s)
{
    const char *rest;

    if (strncmp(s, "http://", 7) == 0)
        rest = s + 7;
    else if (strncmp(s, "https://", 8) == 0)
        rest = s + 8;
    else
        return 0;
    return *rest && *rest != '/' && !strpbrk(rest, " \t\r\n");
}

/* Copy `name` into `buf` with "a.b" joined, or just "b" at the root. */
void cfg_join(char *buf, size_t n, const char *prefix, const char *name)
{
    if (prefix[0])
        snprintf(buf, n, "%s.%s", prefix, name);
    else
        snprintf(buf, n, "%s", name);
}

/* ------------------------------------------------------------------------ */
/* libconfig 1.5 stores an integer literal beyond 32 bits without the L      */
/* suffix truncated, silently.  Read the literal back from the file to catch */
/* it, instead of running with 1410065408 for 10000000000.                   */

static const char *file_text_of(struct cfg_priv *p, const char *name)
{
    struct file_text *f;
    FILE *fp;
    char *text = NULL;
    size_t len = 0, cap = 0, got;

    for (f = p->files; f; f = f->next)
        if (strcmp(f->name, name) == 0)
            return f->text;
    fp = fopen(name, "r");
    if (!fp)
        return NULL;
    for (;;) {
        if (cap - len < 4096) {
            char *t = realloc(text, cap + 8192);

            if (!t)
                goto fail;
            text = t;
            cap += 8192;
        }
        got = fread(text + len, 1, cap - len - 1, fp);
        len += got;
        if (got == 0)
            break;
    }
    text[len] = '\0';
    f = calloc(1, sizeof *f);
    if (!f)
        goto fail;
    f->name = strdup(name);
    if (!f->name) {
        free(f);
        goto fail;
    }
    f->text = text;
    f->next = p->files;
    p->files = f;
    fclose(fp);
    return text;
fail:
    free(text);
    fclose(fp);
    return NULL;
}

/*
 * When no literal assigned to `s`'s name on its line equals its stored
 * value, copy the first literal into lit and return 1.  (Every match on the
 * line is tried: "x = 1; g = { x = 2; };" holds two x.)
 */
int cfg_int_truncated(struct cfg_priv *p, const config_setting_t *s, char *lit, size_t n)
{
    const char *text, *line, *eol, *q;
    unsigned lineno = config_setting_source_line(s);
    size_t namelen;
    int differs = 0;

    if (config_setting_type(s) != CONFIG_TYPE_INT || !lineno || !config_setting_name(s) ||
        !config_setting_source_file(s))
        return 0;
    text = file_text_of(p, config_setting_source_file(s));
    if (!text)
        return 0;
    for (line = text; lineno > 1 && line; lineno--) {
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    if (!line)
        return 0;
    eol = strchr(line, '\n');
    namelen = strlen(config_setting_name(s));
    for (q = line; (q = strstr(q, config_setting_name(s))) != NULL; q += namelen) {
        const char *v = q + namelen;
        char num[64];
        size_t k = 0;
        long long parsed;

        if (eol && q >= eol)
            break;
        if (q > line && (isalnum((unsigned char)q[-1]) || q[-1] == '_' || q[-1] == '-'))
            continue;
        while (*v == ' ' || *v == '\t')
            v++;
        if (*v != '=' && *v != ':')
            continue;
        v++;
        while (*v == ' ' || *v == '\t')
            v++;
        while (k + 1 < sizeof num && v[k] && (isxdigit((unsigned char)v[k]) || strchr("+-xX", v[k])))
            k++;
        memcpy(num, v, k);
        num[k] = '\0';
        if (cfg_parse_int(num, &parsed) == 0 && parsed == config_setting_get_int(s))
            return 0;
        if (!differs)
            snprintf(lit, n, "%s", num);
        differs = 1;
    }
    return differs;
}

/* ------------------------------------------------------------------------ */
/* Validation                                                               */

const char *cfg_type_word(enum key_type t)
{
    switch (t) {
    case K_GROUP: return "a group";
    case K_INT: return "an integer";
    case K_FLOAT: return "a number";
    case K_BOOL: return "a boolean (true or false)";
    case K_STRLIST: return "a list of strings";
    case K_GROUPLIST: return "a list of groups";
    default: return "a string";
    }
}

static void validate_group(struct ctx *c, const config_setting_t *g, const char *spath,
                           const char *dpath, unsigned flags);

static void validate_strlist(struct ctx *c, const config_setting_t *s, const char *dpath)
{
    int n = config_setting_length(s);

    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);

        if (config_setting_type(e) != CONFIG_TYPE_STRING)
            error_at(c, e, "'%s[%d]' must be a string", dpath, i);
    }
}

static void validate_grouplist(struct ctx *c, const config_setting_t *s, const char *spath,
                               const char *dpath)
{
    char espath[256], edpath[256], kpath[256];
    int n = config_setting_length(s);

    snprintf(espath, sizeof espath, "%s[]", spath);
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);

        snprintf(edpath, sizeof edpath, "%s[%d]", dpath, i);
        if (!config_setting_is_group(e)) {
            error_at(c, e, "'%s' must be a group", edpath);
            continue;
        }
        validate_group(c, e, espath, edpath, 0);
        /* required and unique element keys */
        for (size_t k = 0; k < cfg_n_schema; k++) {
            const struct key *key = &cfg_schema[k];
            size_t plen = strlen(espath);
            const char *kname;
            const config_setting_t *m;

            if (strncmp(key->path, espath, plen) != 0 || key->path[plen] != '.')
                continue;
            kname = key->path + plen + 1;
            if (strchr(kname, '.') || strchr(kname, '['))
                continue;
            m = config_setting_get_member(e, kname);
            if (!m) {
                if (key->flags & F_REQUIRED)
                    error_at(c, e, "'%s' needs '%s'", edpath, kname);
                continue;
            }
            if (!(key->flags & F_UNIQUE) || config_setting_type(m) != CONFIG_TYPE_STRING)
                continue;
            for (int j = 0; j < i; j++) {
                const config_setting_t *o = config_setting_get_elem(s, (unsigned)j);
                const config_setting_t *om =
                    config_setting_is_group(o) ? config_setting_get_member(o, kname) : NULL;

                if (om && config_setting_type(om) == CONFIG_TYPE_STRING &&
                    strcmp(config_setting_get_string(om), config_setting_get_string(m)) == 0) {
                    cfg_join(kpath, sizeof kpath, edpath, kname);
                    error_at(c, m, "'%s' repeats '%s' of %s[%d]", kpath,
                             config_setting_get_string(m), dpath, j);
                    break;
                }
            }
        }
    }
}

static void validate_value(struct ctx *c, const struct key *k, const config_setting_t *s,
                           const char *dpath)
{
    int t = config_setting_type(s);
    const char *str;
    char lit[64];

    switch (k->type) {
    case K_GROUP:
        if (t != CONFIG_TYPE_GROUP)
            goto wrong_type;
        validate_group(c, s, k->path, dpath, k->flags);
        return;
    case K_INT: {
        long long v;

        if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64)
            goto wrong_type;
        if (cfg_int_truncated(c->p, s, lit, sizeof lit)) {
            error_at(c, s, "'%s' does not fit in 32 bits; write %sL for a 64-bit integer", dpath,
                     lit);
            return;
        }
        v = config_setting_get_int64(s);
        if (t == CONFIG_TYPE_INT)
            v = config_setting_get_int(s);
        if (v < k->min || v > k->max) {
            if (k->max == INT64_MAX)
                error_at(c, s, "'%s' must be at least %lld (got %lld)", dpath, (long long)k->min,
                         v);
            else
                error_at(c, s, "'%s' must be between %lld and %lld (got %lld)", dpath,
                         (long long)k->min, (long long)k->max, v);
        }
        return;
    }
    case K_FLOAT: {
        double v;

        if (t == CONFIG_TYPE_FLOAT)
            v = config_setting_get_float(s);
        else if (t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64)
            v = (double)config_setting_get_int64(s);
        else
            goto wrong_type;
        if (!(v >= k->fmin && v <= k->fmax)) {
            if (isinf(k->fmax))
                error_at(c, s, "'%s' must be at least %g (got %g)", dpath, k->fmin, v);
            else
                error_at(c, s, "'%s' must be between %g and %g (got %g)", dpath, k->fmin,
                         k->fmax, v);
        }
        return;
    }
    case K_BOOL:
        if (t != CONFIG_TYPE_BOOL)
            goto wrong_type;
        return;
    case K_STRLIST:
        if (t == CONFIG_TYPE_STRING && (k->flags & F_ONE_OK))
            return;
        if (t != CONFIG_TYPE_ARRAY && t != CONFIG_TYPE_LIST)
            goto wrong_type;
        validate_strlist(c, s, dpath);
        return;
    case K_GROUPLIST:
        /* `[]` parses as an empty array: accept it as an empty list */
        if (t == CONFIG_TYPE_ARRAY && config_setting_length(s) == 0)
            return;
        if (t != CONFIG_TYPE_LIST)
            goto wrong_type;
        validate_grouplist(c, s, k->path, dpath);
        return;
    default:
        break;
    }
    /* the string kinds */
    if (t != CONFIG_TYPE_STRING)
        goto wrong_type;
    str = config_setting_get_string(s);
    switch (k->type) {
    case K_ENUM: {
        int found = 0;

        for (const char *const *v = k->values; *v; v++)
            found |= strcmp(*v, str) == 0;
        if (!found) {
            char list[256] = "";
            size_t len = 0;

            for (const char *const *v = k->values; *v && len < sizeof list; v++)
                len += (size_t)snprintf(list + len, sizeof list - len, "%s%s",
                                        v == k->values ? "" : ", ", *v);
            error_at(c, s, "'%s' must be one of %s (got '%s')", dpath, list, str);
        }
        break;
    }
    case K_LISTEN:
        if (!(str[0] == '\0' && (k->flags & F_EMPTY_OK)) && !valid_listen(str))
            error_at(c, s,
                     "'%s' must be host:port or [ipv6]:port with a port in 1..65535 (got '%s')",
                     dpath, str);
        break;
    case K_NAME:
        if (!valid_name(str))
            error_at(c, s, "'%s' must be a plugin name of 1-64 characters [a-z0-9_] (got '%s')",
                     dpath, str);
        break;
    case K_URL:
        if (!(str[0] == '\0' && (k->flags & F_EMPTY_OK)) && !valid_url(str))
            error_at(c, s, "'%s' must be an http:// or https:// URL (got '%s')", dpath, str);
        break;
    case K_PATH:
        if (str[0] != '/')
            error_at(c, s, "'%s' must begin with '/' (got '%s')", dpath, str);
        break;
    default:
        break;
    }
    return;
wrong_type:
    error_at(c, s, "'%s' must be %s%s", dpath, (k->flags & F_ONE_OK) ? "a string or " : "",
             cfg_type_word(k->type));
}

/*
 * Check every member of group g.  spath is the group's schema path (list
 * indexes written "[]"), dpath the path shown in messages ("[2]").
 */
static void validate_group(struct ctx *c, const config_setting_t *g, const char *spath,
                           const char *dpath, unsigned flags)
{
    char mspath[256], mdpath[256];
    int n = config_setting_length(g);

    for (int i = 0; i < n; i++) {
        const config_setting_t *m = config_setting_get_elem(g, (unsigned)i);
        const struct key *k;

        cfg_join(mspath, sizeof mspath, spath, config_setting_name(m));
        cfg_join(mdpath, sizeof mdpath, dpath, config_setting_name(m));
        k = cfg_schema_find(mspath);
        if (k)
            validate_value(c, k, m, mdpath);
        else if (!((flags & F_PLUGINS) && config_setting_is_group(m)))
            error_at(c, m, "unknown key '%s'", mdpath);
    }
}


/* ------------------------------------------------------------------------ */
/* Resolving a path against the schema and the tree                         */

/* The setting at plain dotted path as written (no alias), or NULL. */
static const config_setting_t *lookup_written(const struct cfg_priv *p, const char *path)
{
    const config_setting_t *cur;
    char name[128];

    if (!p)
        return NULL;
    cur = config_root_setting(&p->lc);
    while (cur && *path) {
        size_t n = strcspn(path, ".");

        if (n == 0 || n >= sizeof name || !config_setting_is_group(cur))
            return NULL;
        memcpy(name, path, n);
        name[n] = '\0';
        cur = config_setting_get_member(cur, name);
        path += n;
        if (*path == '.')
            path++;
    }
    return cur;
}

/*
 * The setting at plain dotted path (no list indexes), or NULL; a key with
 * an old name (cfg_aliases[]) not set under its own is looked up under that.
 */
const config_setting_t *cfg_lookup_path(const struct cfg_priv *p, const char *path)
{
    const config_setting_t *s = lookup_written(p, path);
    const char *old;

    if (!s && (old = cfg_alias_old(path)) != NULL)
        s = lookup_written(p, old);
    return s;
}

/*
 * Resolve "a.b", "a.list[2]" or "a.groups[1].key" to its schema key and its
 * setting.  Returns RHEMA_ENOTFOUND when the path names no schema key or a
 * list element that does not exist.
 */
int cfg_resolve(const struct cfg_priv *p, const char *path, struct resolved *r)
{
    char spath[256], name[128];
    size_t sl = 0;
    const config_setting_t *cur = p ? config_root_setting(&p->lc) : NULL;
    const config_setting_t *base = NULL;
    const char *q = path;
    int failed_before = 0, last_failed = 0, last_idx = -1;

    spath[0] = '\0';
    while (*q) {
        size_t n = strcspn(q, ".[");

        if (n == 0 || n >= sizeof name || sl + n + 2 >= sizeof spath)
            return RHEMA_ENOTFOUND;
        memcpy(name, q, n);
        name[n] = '\0';
        if (sl)
            spath[sl++] = '.';
        memcpy(spath + sl, name, n + 1);
        sl += n;
        cur = (cur && config_setting_is_group(cur)) ? config_setting_get_member(cur, name) : NULL;
        q += n;
        failed_before |= last_failed;
        last_failed = 0;
        last_idx = -1;
        while (*q == '[') {
            char *end;
            long idx = strtol(q + 1, &end, 10);

            if (end == q + 1 || *end != ']' || idx < 0 || idx > INT_MAX ||
                sl + 3 >= sizeof spath)
                return RHEMA_ENOTFOUND;
            q = end + 1;
            memcpy(spath + sl, "[]", 3);
            sl += 2;
            failed_before |= last_failed;
            base = cur;
            if (cur && (config_setting_is_list(cur) || config_setting_is_array(cur)) &&
                idx < config_setting_length(cur)) {
                cur = config_setting_get_elem(cur, (unsigned)idx);
                last_failed = 0;
            } else {
                cur = NULL;
                last_failed = 1;
            }
            last_idx = (int)idx;
        }
        if (*q == '.' && !*++q)
            return RHEMA_ENOTFOUND;
    }
    r->elem = -1;
    r->s = cur;
    r->k = cfg_schema_find(spath);
    if (!r->k && last_idx >= 0) {
        /* an element of a string list: "a.list[2]" */
        spath[sl - 2] = '\0';
        r->k = cfg_schema_find(spath);
        if (!r->k || r->k->type != K_STRLIST || failed_before)
            return RHEMA_ENOTFOUND;
        if (last_failed && base && (r->k->flags & F_ONE_OK) && last_idx == 0 &&
            config_setting_type(base) == CONFIG_TYPE_STRING) {
            r->s = base; /* a single string: the list of one */
            r->elem = 0;
            return 0;
        }
        if (last_failed && base) /* the list is there; the element is not */
            return RHEMA_ENOTFOUND;
        if (!cur) {
            for (int i = 0; i <= last_idx; i++)
                if (!r->k->values[i])
                    return RHEMA_ENOTFOUND;
        }
        r->elem = last_idx;
        return 0;
    }
    if (!r->k || failed_before || last_failed)
        return RHEMA_ENOTFOUND;
    if (!r->s && last_idx < 0 && cfg_alias_old(spath))
        r->s = cfg_lookup_path(p, spath); /* set under its old name */
    return 0;
}

int64_t cfg_setting_int(const config_setting_t *s)
{
    if (config_setting_type(s) == CONFIG_TYPE_BOOL)
        return config_setting_get_bool(s);
    if (config_setting_type(s) == CONFIG_TYPE_INT64)
        return config_setting_get_int64(s);
    return config_setting_get_int(s);
}

double cfg_setting_double(const config_setting_t *s)
{
    if (config_setting_type(s) == CONFIG_TYPE_FLOAT)
        return config_setting_get_float(s);
    return (double)cfg_setting_int(s);
}

/* The value of a validated key: its setting, or its default. */
int64_t cfg_key_int(const struct key *k, const config_setting_t *s)
{
    return s ? cfg_setting_int(s) : k->def_i;
}

const char *cfg_key_string(const struct key *k, const config_setting_t *s)
{
    return s ? config_setting_get_string(s) : k->def_s;
}

/* ------------------------------------------------------------------------ */
/* Checks between keys                                                      */

/* An integer key's value and setting, when it has the right type. */
static int int_of(const struct cfg_priv *p, const char *path, int64_t *v,
                  const config_setting_t **s)
{
    const struct key *k = cfg_schema_find(path);

    *s = cfg_lookup_path(p, path);
    if (*s && config_setting_type(*s) != CONFIG_TYPE_INT &&
        config_setting_type(*s) != CONFIG_TYPE_INT64)
        return -1;
    *v = cfg_key_int(k, *s);
    return 0;
}

/* Require lo_path < hi_path (or <= when or_equal); report at whichever is set. */
static void check_order(struct ctx *c, const char *lo_path, const char *hi_path, int or_equal)
{
    const config_setting_t *ls, *hs;
    int64_t lo, hi;

    if (int_of(c->p, lo_path, &lo, &ls) || int_of(c->p, hi_path, &hi, &hs))
        return;
    if (lo < hi || (or_equal && lo == hi))
        return;
    error_at(c, hs ? hs : ls, "'%s' (%lld) must be %s '%s' (%lld)", lo_path, (long long)lo,
             or_equal ? "at most" : "less than", hi_path, (long long)hi);
}

/* Is there an element of list `list` whose `key` is the string `want`? */
static int list_has(const config_setting_t *list, const char *key, const char *want)
{
    int n = list && config_setting_is_list(list) ? config_setting_length(list) : 0;

    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(list, (unsigned)i);
        const char *v;

        if (config_setting_is_group(e) && config_setting_lookup_string(e, key, &v) &&
            strcmp(v, want) == 0)
            return 1;
    }
    return 0;
}

/* Every string of list `path` is a rule of targets.h. */
static void validate_targets(struct ctx *c, const char *path)
{
    const config_setting_t *l = cfg_lookup_path(c->p, path);
    int n = l && (config_setting_is_list(l) || config_setting_is_array(l)) ? config_setting_length(l)
                                                                           : 0;

    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(l, (unsigned)i);
        struct rhema_target_rule r;
        char err[RHEMA_ERRMSG_MAX];

        if (config_setting_type(e) == CONFIG_TYPE_STRING &&
            rhema_target_rule_parse(config_setting_get_string(e), &r, err) != 0)
            error_at(c, e, "'%s[%d]': %s", path, i, err);
    }
}

static void validate_cross(struct ctx *c)
{
    const config_setting_t *models = cfg_lookup_path(c->p, "ai_service.models");
    const config_setting_t *ups = cfg_lookup_path(c->p, "ai_service.upstreams");
    const config_setting_t *dm = cfg_lookup_path(c->p, "ai_service.default_model");
    const config_setting_t *on = cfg_lookup_path(c->p, "ai_service.enabled");
    int ai_on = on && config_setting_type(on) == CONFIG_TYPE_BOOL && config_setting_get_bool(on);
    int n;

    check_order(c, "distributed.cluster.min_nodes", "distributed.cluster.max_nodes", 1);
    check_order(c, "distributed.cluster.heartbeat_interval_seconds",
                "distributed.cluster.node_timeout_seconds", 0);
    check_order(c, "distributed.health_checking.timeout_seconds",
                "distributed.health_checking.interval_seconds", 1);
    validate_targets(c, "distributed.health_checking.allowed_targets");

    n = models && config_setting_is_list(models) ? config_setting_length(models) : 0;
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(models, (unsigned)i);
        const config_setting_t *u = config_setting_is_group(e)
                                        ? config_setting_get_member(e, "upstream")
                                        : NULL;
        const config_setting_t *f = config_setting_is_group(e)
                                        ? config_setting_get_member(e, "fallbacks")
                                        : NULL;
        const char *self = NULL;
        int nu = u && config_setting_type(u) != CONFIG_TYPE_STRING ? config_setting_length(u) : 1;
        int nf = f && config_setting_type(f) != CONFIG_TYPE_STRING ? config_setting_length(f) : 0;

        if (config_setting_is_group(e))
            config_setting_lookup_string(e, "name", &self);
        /* token limits (issue 10 item 6) would act on these: refused until then, while
         * the gateway is on (off, models are inert) */
        for (const char *const *k = (const char *const[]){ "context_window", "max_tokens", NULL };
             *k && ai_on && config_setting_is_group(e); k++) {
            const config_setting_t *x = config_setting_get_member(e, *k);

            if (x && (config_setting_type(x) == CONFIG_TYPE_INT ||
                      config_setting_type(x) == CONFIG_TYPE_INT64) && config_setting_get_int64(x))
                error_at(c, x, "ai_service.models[%d].%s: not implemented in this version", i, *k);
        }
        for (int j = 0; u && j < nu; j++) {
            const config_setting_t *x =
                config_setting_type(u) == CONFIG_TYPE_STRING ? u
                                                             : config_setting_get_elem(u, (unsigned)j);

            if (x && config_setting_type(x) == CONFIG_TYPE_STRING &&
                config_setting_get_string(x)[0] &&
                !list_has(ups, "name", config_setting_get_string(x)))
                error_at(c, x, "'ai_service.models[%d].upstream' names no upstream in "
                         "ai_service.upstreams (got '%s')", i, config_setting_get_string(x));
        }
        for (int j = 0; j < nf; j++) {
            const config_setting_t *x = config_setting_get_elem(f, (unsigned)j);
            const char *fv = x && config_setting_type(x) == CONFIG_TYPE_STRING
                                 ? config_setting_get_string(x)
                                 : NULL;

            if (fv && !list_has(models, "name", fv))
                error_at(c, x, "'ai_service.models[%d].fallbacks[%d]' names no model in "
                         "ai_service.models (got '%s')", i, j, fv);
            else if (fv && self && strcmp(fv, self) == 0)
                error_at(c, x, "'ai_service.models[%d].fallbacks[%d]' is the model itself", i, j);
        }
    }
    if (dm && config_setting_type(dm) == CONFIG_TYPE_STRING && config_setting_get_string(dm)[0] &&
        !list_has(models, "name", config_setting_get_string(dm)))
        error_at(c, dm, "'ai_service.default_model' names no model in ai_service.models (got '%s')",
                 config_setting_get_string(dm));
}

/*
 * The renamed keys (cfg_aliases[]): both names set is an error naming both;
 * the old one alone is read as the new one, with a notice for the log.
 */
static void validate_aliases(struct ctx *c)
{
    for (size_t i = 0; i < cfg_n_aliases; i++) {
        const struct cfg_alias *a = &cfg_aliases[i];
        const config_setting_t *o = lookup_written(c->p, a->old);
        const config_setting_t *n = lookup_written(c->p, a->path);
        char where[512];

        if (!o)
            continue;
        cfg_where_of(c->p, o, where, sizeof where);
        if (n) {
            error_at(c, n, "'%s' and its old name '%s' (%s) are both set; keep only '%s'",
                     a->path, a->old, where, a->path);
            continue;
        }
        cfg_sb_add(&c->p->notices, "%s%s: '%s' is the old name of '%s', read as it; rename it",
                   c->p->notices.len ? "\n" : "", where, a->old, a->path);
        if (c->p->notices.oom)
            c->errs.oom = 1;
    }
}

const char *rhema_config_notices(const struct rhema_config *cfg)
{
    const struct cfg_priv *p = cfg ? cfg->priv : NULL;

    return p ? p->notices.s : NULL;
}

/* ------------------------------------------------------------------------ */
/* Settings this version does not act on                                    */

/* Does validated setting s hold key k's default? */
static int key_at_default(const struct key *k, const config_setting_t *s)
{
    switch (k->type) {
    case K_INT:
    case K_BOOL: return cfg_setting_int(s) == k->def_i;
    case K_FLOAT: return cfg_setting_double(s) == k->def_f;
    case K_STRLIST: {
        int n = config_setting_length(s);

        for (int i = 0; i < n; i++)
            if (!k->values[i] || strcmp(config_setting_get_string_elem(s, i), k->values[i]) != 0)
                return 0;
        return k->values[n] == NULL;
    }
    case K_GROUPLIST: return config_setting_length(s) == 0;
    case K_GROUP: return 1;
    default: return strcmp(config_setting_get_string(s), k->def_s) == 0;
    }
}

/* Is switch `path` on, and accepted (at its default)?  Otherwise what it gates is inert. */
static int gate_on(const struct cfg_priv *p, const char *path)
{
    const struct key *k = cfg_schema_find(path);
    const config_setting_t *s = cfg_lookup_path(p, path);

    if (!k || k->type != K_BOOL)
        abort(); /* a broken cfg_unimplemented[] table */
    return k->def_i && cfg_key_int(k, s);
}

/*
 * Refuse the cfg_unimplemented[] keys set to a value that would change behaviour.
 * Runs on a tree that passed every other check, so the types are right.
 */
static void validate_unimplemented(struct ctx *c)
{
    for (size_t i = 0; i < cfg_n_unimplemented; i++) {
        const struct unimplemented *u = &cfg_unimplemented[i];
        const struct key *k = cfg_schema_find(u->path);
        const config_setting_t *s = cfg_lookup_path(c->p, u->path);

        if (!k)
            abort(); /* a broken cfg_unimplemented[] table */
        if (!s || key_at_default(k, s))
            continue;
        if (k->type == K_BOOL && !config_setting_get_bool(s))
            continue; /* switched off: what this version does */
        if (u->gate && !gate_on(c->p, u->gate))
            continue;
        error_at(c, s, "%s: not implemented in this version", u->path);
    }
}

/* ------------------------------------------------------------------------ */
/* struct rhema_config                                                      */

static void strlist_release(struct rhema_strlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

static int strlist_fill(struct rhema_strlist *l, const struct key *k, const config_setting_t *s)
{
    size_t n = 0;

    if (s)
        n = (size_t)config_setting_length(s);
    else
        while (k->values[n])
            n++;
    l->v = calloc(n + 1, sizeof *l->v);
    if (!l->v)
        return RHEMA_ENOMEM;
    for (l->n = 0; l->n < n; l->n++) {
        const char *v = s ? config_setting_get_string_elem(s, (int)l->n) : k->values[l->n];

        l->v[l->n] = strdup(v ? v : "");
        if (!l->v[l->n])
            return RHEMA_ENOMEM;
    }
    return 0;
}

/* Copy the validated values (or defaults) into the fields of cfg. */
static int fill(struct rhema_config *cfg, const struct cfg_priv *p)
{
    for (size_t i = 0; i < cfg_n_schema; i++) {
        const struct key *k = &cfg_schema[i];
        const config_setting_t *s;
        char *base = (char *)cfg + k->off;

        if (k->fld == FLD_NONE)
            continue;
        s = cfg_lookup_path(p, k->path);
        switch (k->fld) {
        case FLD_INT:
        case FLD_BOOL: *(int *)(void *)base = (int)cfg_key_int(k, s); break;
        case FLD_I64: *(int64_t *)(void *)base = cfg_key_int(k, s); break;
        case FLD_STR:
            *(char **)(void *)base = strdup(cfg_key_string(k, s));
            if (!*(char **)(void *)base)
                return RHEMA_ENOMEM;
            break;
        case FLD_LIST:
            if (strlist_fill((struct rhema_strlist *)(void *)base, k, s))
                return RHEMA_ENOMEM;
            break;
        case FLD_LOGLEVEL:
            *(int *)(void *)base = rhema_config_log_level(cfg_key_string(k, s));
            break;
        case FLD_ENUMIDX: {
            const char *v = cfg_key_string(k, s);
            int idx = 0;

            while (k->values[idx] && strcmp(k->values[idx], v) != 0)
                idx++;
            if (k->off == OFF(log_format))
                cfg->log_format = (enum rhema_log_format)idx;
            else
                *(int *)(void *)base = idx;
            break;
        }
        case FLD_NONE: break;
        }
    }
    cfg->plugin_load_set = cfg_lookup_path(p, "plugins.load") != NULL;
    return 0;
}

static void priv_free(struct cfg_priv *p)
{
    if (!p)
        return;
    config_destroy(&p->lc);
    for (size_t i = 0; i < p->n_origins; i++)
        free(p->origins[i].text);
    free(p->origins);
    while (p->files) {
        struct file_text *f = p->files;

        p->files = f->next;
        free(f->name);
        free(f->text);
        free(f);
    }
    while (p->groups) {
        struct rhema_cfg *g = p->groups;

        p->groups = g->next;
        free(g->path);
        free(g->name);
        free(g->read);
        free(g->error);
        free(g);
    }
    free(p->notices.s);
    free(p->path);
    free(p);
}

void rhema_config_release(struct rhema_config *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < cfg_n_schema; i++) {
        char *base = (char *)cfg + cfg_schema[i].off;

        if (cfg_schema[i].fld == FLD_STR)
            free(*(char **)(void *)base);
        else if (cfg_schema[i].fld == FLD_LIST)
            strlist_release((struct rhema_strlist *)(void *)base);
    }
    free(cfg->path);
    priv_free(cfg->priv);
    memset(cfg, 0, sizeof *cfg);
}

/* Read `path` into p->lc.  Returns 0, RHEMA_EIO or RHEMA_EINVAL with c's errors set. */
static int read_file(struct ctx *c, const char *path)
{
    struct stat st;
    char *dir, *slash;
    FILE *fp = fopen(path, "r");

    if (!fp) {
        cfg_error_plain(c, "%s: cannot read the configuration file: %s", path, strerror(errno));
        return RHEMA_EIO;
    }
    if (fstat(fileno(fp), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(fp);
        cfg_error_plain(c, "%s: cannot read the configuration file: %s", path, strerror(EISDIR));
        return RHEMA_EIO;
    }
    fclose(fp);
    /* @include "x.conf" is relative to the including file's directory */
    dir = strdup(path);
    if (!dir)
        return RHEMA_ENOMEM;
    slash = strrchr(dir, '/');
    if (slash) {
        slash[slash == dir] = '\0';
        config_set_include_dir(&c->p->lc, dir);
    }
    free(dir);
    if (!config_read_file(&c->p->lc, path)) {
        const char *f = config_error_file(&c->p->lc);

        if (config_error_type(&c->p->lc) == CONFIG_ERR_FILE_IO) {
            cfg_error_plain(c, "%s: cannot read the configuration file: %s", f ? f : path,
                        config_error_text(&c->p->lc));
            return RHEMA_EIO;
        }
        cfg_error_plain(c, "%s:%d: %s", f ? f : path, config_error_line(&c->p->lc),
                    config_error_text(&c->p->lc));
        return RHEMA_EINVAL;
    }
    return 0;
}

int rhema_config_load(struct rhema_config *cfg, const char *path, const char *const *overrides,
                      size_t n_overrides, const char *plugin_dir, char **err)
{
    struct ctx c;
    int rc;

    memset(cfg, 0, sizeof *cfg);
    memset(&c, 0, sizeof c);
    if (err)
        *err = NULL;
    c.p = calloc(1, sizeof *c.p);
    if (!c.p) {
        rc = RHEMA_ENOMEM;
        goto fail;
    }
    config_init(&c.p->lc);
    cfg->priv = c.p;
    c.p->path = strdup(path ? path : "");
    cfg->path = strdup(path ? path : "");
    if (!c.p->path || !cfg->path) {
        rc = RHEMA_ENOMEM;
        goto fail;
    }
    if (path) {
        rc = read_file(&c, path);
        if (rc)
            goto fail;
    }
    for (size_t i = 0; i < n_overrides; i++) {
        char shown[1024];

        snprintf(shown, sizeof shown, "-o %s", overrides[i]);
        rc = cfg_apply_override(&c, overrides[i], shown);
        if (rc)
            goto fail;
    }
    if (plugin_dir) {
        char text[1024], shown[1024];

        snprintf(text, sizeof text, "plugins.directory=\"%s\"", plugin_dir);
        snprintf(shown, sizeof shown, "-P %s", plugin_dir);
        rc = cfg_apply_override(&c, text, shown);
        if (rc)
            goto fail;
    }
    validate_group(&c, config_root_setting(&c.p->lc), "", "", 0);
    validate_cross(&c);
    validate_aliases(&c);
    /* only on an otherwise valid tree: fix what is wrong before what is missing */
    if (!c.n_errs)
        validate_unimplemented(&c);
    if (c.n_errs) {
        rc = RHEMA_EINVAL;
        goto fail;
    }
    rc = fill(cfg, c.p);
    if (rc)
        goto fail;
    return 0;
fail:
    if (rc == RHEMA_ENOMEM || c.errs.oom) {
        rc = RHEMA_ENOMEM;
        free(c.errs.s);
        c.errs.s = strdup("out of memory while loading the configuration");
    }
    if (err)
        *err = c.errs.s;
    else
        free(c.errs.s);
    rhema_config_release(cfg); /* frees c.p too */
    return rc;
}

int rhema_config_log_level(const char *name)
{
    static const int levels[] = { RHEMA_LOG_DEBUG, RHEMA_LOG_INFO, RHEMA_LOG_NOTICE,
                                  RHEMA_LOG_WARN, RHEMA_LOG_ERROR };

    for (size_t i = 0; name && cfg_level_enum[i]; i++)
        if (strcmp(cfg_level_enum[i], name) == 0)
            return levels[i];
    return -1;
}

