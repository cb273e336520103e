/*
 * config_override -- the -o key=value overrides and -P: each value typed by
 * the schema and set in the tree, groups created as needed, the setting
 * remembered so that errors name the override.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libconfig.h>

#include "config.h"
#include "config_internal.h"

/* ------------------------------------------------------------------------ */
/* Overrides                                                                */

static int origin_add(struct cfg_priv *p, const config_setting_t *s, const char *text)
{
    struct origin *o;
    char *t = strdup(text);

    if (!t)
        return RHEMA_ENOMEM;
    o = realloc(p->origins, (p->n_origins + 1) * sizeof *o);
    if (!o) {
        free(t);
        return RHEMA_ENOMEM;
    }
    p->origins = o;
    o[p->n_origins].s = s;
    o[p->n_origins].text = t;
    p->n_origins++;
    return 0;
}

/* Forget the origins of s and of everything under it, before s is removed. */
static void origin_forget(struct cfg_priv *p, const config_setting_t *s)
{
    for (size_t i = 0; i < p->n_origins;) {
        const config_setting_t *t = p->origins[i].s;

        while (t && t != s)
            t = config_setting_parent(t);
        if (t) {
            free(p->origins[i].text);
            p->n_origins--;
            if (i < p->n_origins)
                p->origins[i] = p->origins[p->n_origins];
            p->origins[p->n_origins].text = NULL;
        } else {
            i++;
        }
    }
}

/* Trim spaces in place, and one pair of surrounding double quotes when *quoted. */
static char *trim(char *s, int *quoted)
{
    size_t n;

    while (isspace((unsigned char)*s))
        s++;
    n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    if (quoted) {
        *quoted = n >= 2 && s[0] == '"' && s[n - 1] == '"';
        if (*quoted) {
            s[n - 1] = '\0';
            s++;
        }
    }
    return s;
}

static config_setting_t *add_int(config_setting_t *parent, const char *name, long long v)
{
    config_setting_t *s;

    if (v >= INT_MIN && v <= INT_MAX) {
        s = config_setting_add(parent, name, CONFIG_TYPE_INT);
        if (s && !config_setting_set_int(s, (int)v))
            s = NULL;
    } else {
        s = config_setting_add(parent, name, CONFIG_TYPE_INT64);
        if (s && !config_setting_set_int64(s, v))
            s = NULL;
    }
    return s;
}

static config_setting_t *add_string(config_setting_t *parent, const char *name, const char *v)
{
    config_setting_t *s = config_setting_add(parent, name, CONFIG_TYPE_STRING);

    if (s && !config_setting_set_string(s, v))
        s = NULL;
    return s;
}

/*
 * "[a, b]" or "a,b" -> an array of strings; "" or "[]" -> an empty one.
 * A bracket that is not closed ("[" alone, "[a,b"), a bracket or a quote
 * inside an item, and an empty item ("a,,b") are refused: *bad is set.
 */
static config_setting_t *add_strlist(config_setting_t *parent, const char *name, char *v,
                                     int *bad)
{
    config_setting_t *s;
    size_t n;
    char *item, *tok;

    v = trim(v, NULL);
    n = strlen(v);
    if (n && (v[0] == '[') != (v[n - 1] == ']'))
        goto bad; /* "[" alone counts as an open bracket, never as a closed one */
    if (n >= 2 && v[0] == '[') {
        v[n - 1] = '\0';
        v++;
    }
    v = trim(v, NULL);
    /* check every item before anything is added */
    for (const char *q = v; *v; q++) {
        const char *end = q + strcspn(q, ",");
        size_t len = (size_t)(end - q), lead = 0;
        while (lead < len && isspace((unsigned char)q[lead]))
            lead++;
        while (len > lead && isspace((unsigned char)q[len - 1]))
            len--;
        if (len == lead)
            goto bad;
        for (size_t i = lead; i < len; i++) {
            int inner = i > lead && i < len - 1;
            if (q[i] == '[' || q[i] == ']' || (q[i] == '"' && inner))
                goto bad;
        }
        if ((q[lead] == '"') != (len - lead >= 2 && q[len - 1] == '"'))
            goto bad;
        if (!*end)
            break;
        q = end;
    }
    s = config_setting_add(parent, name, CONFIG_TYPE_ARRAY);
    if (!s || !*v)
        return s;
    for (item = v; (tok = strtok(item, ",")) != NULL; item = NULL) {
        int quoted;

        if (!config_setting_set_string_elem(s, -1, trim(tok, &quoted)))
            return NULL;
    }
    return s;
bad:
    *bad = 1;
    return NULL;
}

/*
 * Add the leaf `name` under parent with value v typed by key k, or guessed
 * when k is NULL (a plugin group key).  On a bad value sets *bad and
 * returns NULL.
 */
static config_setting_t *add_typed(config_setting_t *parent, const char *name,
                                   const struct key *k, char *v, int *bad)
{
    long long iv;
    double dv;
    int bv, quoted;
    char *t;
    config_setting_t *s;

    *bad = 0;
    if (!k) {
        t = trim(v, &quoted);
        if (!quoted && cfg_parse_int(t, &iv) == 0)
            return add_int(parent, name, iv);
        if (!quoted && cfg_parse_double(t, &dv) == 0) {
            s = config_setting_add(parent, name, CONFIG_TYPE_FLOAT);
            return s && config_setting_set_float(s, dv) ? s : NULL;
        }
        if (!quoted && (strcasecmp(t, "true") == 0 || strcasecmp(t, "false") == 0)) {
            s = config_setting_add(parent, name, CONFIG_TYPE_BOOL);
            return s && config_setting_set_bool(s, tolower((unsigned char)t[0]) == 't') ? s
                                                                                       : NULL;
        }
        return add_string(parent, name, t);
    }
    switch (k->type) {
    case K_INT:
        if (cfg_parse_int(trim(v, NULL), &iv) == 0)
            return add_int(parent, name, iv);
        break;
    case K_FLOAT:
        if (cfg_parse_double(trim(v, NULL), &dv) == 0) {
            s = config_setting_add(parent, name, CONFIG_TYPE_FLOAT);
            return s && config_setting_set_float(s, dv) ? s : NULL;
        }
        break;
    case K_BOOL:
        if (cfg_parse_bool(trim(v, NULL), &bv) == 0) {
            s = config_setting_add(parent, name, CONFIG_TYPE_BOOL);
            return s && config_setting_set_bool(s, bv) ? s : NULL;
        }
        break;
    case K_STRLIST:
        return add_strlist(parent, name, v, bad);
    case K_GROUP:
    case K_GROUPLIST:
        break;
    default:
        return add_string(parent, name, trim(v, &quoted));
    }
    *bad = 1;
    return NULL;
}

/*
 * Apply one override "a.b.c=value" (or, with prefix "-P", set
 * plugins.directory).  Errors go into c; only ENOMEM is returned.
 */
int cfg_apply_override(struct ctx *c, const char *text, const char *shown)
{
    char *copy = strdup(text), *eq, *keypath, *value;
    char spath[256] = "";
    const struct key *k = NULL, *parent_key = NULL;
    config_setting_t *cur, *leaf;
    int rc = 0, plugin_key = 0, bad, n_segs = 0, i = 0;
    char *segs[16];

    if (!copy)
        return RHEMA_ENOMEM;
    eq = strchr(copy, '=');
    if (!eq) {
        cfg_error_plain(c, "%s: expected section.key=value", shown);
        goto out;
    }
    *eq = '\0';
    keypath = trim(copy, NULL);
    value = eq + 1;
    if (!*keypath || strchr(keypath, '[') || strlen(keypath) >= sizeof spath) {
        cfg_error_plain(c, "%s: expected section.key=value", shown);
        goto out;
    }
    /* split and classify against the schema */
    for (;;) {
        char *tok = strsep(&keypath, ".");

        if (!tok)
            break;
        if (!*tok || n_segs == (int)(sizeof segs / sizeof segs[0])) {
            cfg_error_plain(c, "%s: expected section.key=value", shown);
            goto out;
        }
        segs[n_segs++] = tok;
    }
    for (i = 0; i < n_segs; i++) {
        char next[256];

        cfg_join(next, sizeof next, spath, segs[i]);
        k = cfg_schema_find(next);
        if (!k) {
            /* persistence.<plugin>.<key> and the like */
            if (parent_key && (parent_key->flags & F_PLUGINS) && i == n_segs - 2) {
                plugin_key = 1;
                break;
            }
            for (int j = i + 1; j < n_segs; j++) {
                size_t len = strlen(next);

                snprintf(next + len, sizeof next - len, ".%s", segs[j]);
            }
            cfg_error_plain(c, "%s: unknown key '%s'", shown, next);
            goto out;
        }
        if (i < n_segs - 1 && k->type != K_GROUP) {
            cfg_error_plain(c, "%s: '%s' is not a group", shown, next);
            goto out;
        }
        snprintf(spath, sizeof spath, "%s", next);
        parent_key = k;
    }
    if (!plugin_key && k->type == K_GROUP) {
        cfg_error_plain(c, "%s: '%s' is a group; set its keys one by one", shown, k->path);
        goto out;
    }
    if (!plugin_key && k->type == K_GROUPLIST) {
        cfg_error_plain(c, "%s: '%s' is a list of groups and cannot be set with -o", shown, k->path);
        goto out;
    }
    /* walk the tree, making groups as needed */
    cur = config_root_setting(&c->p->lc);
    for (i = 0; i < n_segs - 1; i++) {
        config_setting_t *m = config_setting_get_member(cur, segs[i]);

        if (m && !config_setting_is_group(m)) {
            cfg_error_plain(c, "%s: cannot set a key inside '%s', which is not a group", shown,
                        segs[i]);
            goto out;
        }
        if (!m) {
            m = config_setting_add(cur, segs[i], CONFIG_TYPE_GROUP);
            if (!m) {
                cfg_error_plain(c, "%s: '%s' is not a valid key name", shown, segs[i]);
                goto out;
            }
            rc = origin_add(c->p, m, shown);
            if (rc)
                goto out;
        }
        cur = m;
    }
    leaf = config_setting_get_member(cur, segs[n_segs - 1]);
    if (leaf) {
        origin_forget(c->p, leaf);
        config_setting_remove(cur, segs[n_segs - 1]);
    }
    leaf = add_typed(cur, segs[n_segs - 1], plugin_key ? NULL : k, value, &bad);
    if (bad) {
        cfg_error_plain(c, "%s: '%s' must be %s%s", shown, k->path, cfg_type_word(k->type),
                    k->type == K_STRLIST ? ", as [a, b] or a,b (brackets closed, no empty item)"
                                         : "");
        goto out;
    }
    if (!leaf) {
        cfg_error_plain(c, "%s: '%s' is not a valid key name", shown, segs[n_segs - 1]);
        goto out;
    }
    rc = origin_add(c->p, leaf, shown);
out:
    free(copy);
    return rc;
}
