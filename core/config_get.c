/*
 * config_get -- reading a loaded configuration: any schema key by path
 * (rhema_config_get_*), and the plugin groups with their typed getters.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libconfig.h>

#include "config.h"
#include "config_internal.h"

/* ------------------------------------------------------------------------ */
/* Any schema key, by path                                                  */

int rhema_config_get_int(const struct rhema_config *cfg, const char *path, int64_t *out)
{
    struct resolved r;

    if (!cfg || !path || cfg_resolve(cfg->priv, path, &r))
        return RHEMA_ENOTFOUND;
    if (r.elem >= 0 || r.k->type != K_INT)
        return RHEMA_EINVAL;
    *out = cfg_key_int(r.k, r.s);
    return 0;
}

int rhema_config_get_double(const struct rhema_config *cfg, const char *path, double *out)
{
    struct resolved r;

    if (!cfg || !path || cfg_resolve(cfg->priv, path, &r))
        return RHEMA_ENOTFOUND;
    if (r.elem >= 0 || r.k->type != K_FLOAT)
        return RHEMA_EINVAL;
    *out = r.s ? cfg_setting_double(r.s) : r.k->def_f;
    return 0;
}

int rhema_config_get_bool(const struct rhema_config *cfg, const char *path, int *out)
{
    struct resolved r;

    if (!cfg || !path || cfg_resolve(cfg->priv, path, &r))
        return RHEMA_ENOTFOUND;
    if (r.elem >= 0 || r.k->type != K_BOOL)
        return RHEMA_EINVAL;
    *out = r.s ? config_setting_get_bool(r.s) : (int)r.k->def_i;
    return 0;
}

int rhema_config_get_string(const struct rhema_config *cfg, const char *path, const char **out)
{
    struct resolved r;

    if (!cfg || !path || cfg_resolve(cfg->priv, path, &r))
        return RHEMA_ENOTFOUND;
    if (r.elem >= 0) {
        *out = r.s ? config_setting_get_string(r.s) : r.k->values[r.elem];
        return 0;
    }
    switch (r.k->type) {
    case K_GROUP:
    case K_INT:
    case K_FLOAT:
    case K_BOOL:
    case K_STRLIST:
    case K_GROUPLIST: return RHEMA_EINVAL;
    default: break;
    }
    *out = cfg_key_string(r.k, r.s);
    return 0;
}

int rhema_config_get_count(const struct rhema_config *cfg, const char *path)
{
    struct resolved r;
    int n = 0;

    if (!cfg || !path || cfg_resolve(cfg->priv, path, &r))
        return RHEMA_ENOTFOUND;
    if (r.elem >= 0 || (r.k->type != K_STRLIST && r.k->type != K_GROUPLIST))
        return RHEMA_EINVAL;
    if (r.s && config_setting_type(r.s) == CONFIG_TYPE_STRING)
        return *config_setting_get_string(r.s) ? 1 : 0; /* F_ONE_OK: a list of one */
    if (r.s)
        return config_setting_length(r.s);
    if (r.k->type == K_STRLIST)
        while (r.k->values[n])
            n++;
    return n;
}

/* ------------------------------------------------------------------------ */
/* Plugin groups                                                            */

/* The section setting of a plugin kind, or NULL. */
static const config_setting_t *section_of(const struct cfg_priv *p, uint32_t kind,
                                          const char **sname)
{
    const char *sec = cfg_kind_section(kind);
    const config_setting_t *s;

    if (!sec)
        return NULL;
    s = cfg_lookup_path(p, sec);
    if (sname)
        *sname = sec;
    return s && config_setting_is_group(s) ? s : NULL;
}

/* Is member m of section `sec` a plugin group (a group that is no core key)? */
static int is_plugin_group(const char *sec, const config_setting_t *m)
{
    char path[256];

    if (!config_setting_is_group(m))
        return 0;
    cfg_join(path, sizeof path, sec, config_setting_name(m));
    return cfg_schema_find(path) == NULL;
}

const struct rhema_cfg *rhema_config_plugin_group(const struct rhema_config *cfg, uint32_t kind,
                                                  const char *name)
{
    struct cfg_priv *p = cfg ? cfg->priv : NULL;
    const config_setting_t *sec, *m;
    struct rhema_cfg *g;
    const char *sname = NULL;
    char path[256];

    if (!p || !name)
        return NULL;
    for (g = p->groups; g; g = g->next)
        if (g->kind == kind && strcmp(g->name, name) == 0)
            return g;
    sec = section_of(p, kind, &sname);
    m = sec ? config_setting_get_member(sec, name) : NULL;
    if (!m || !is_plugin_group(sname, m))
        return NULL;
    cfg_join(path, sizeof path, sname, name);
    g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->p = p;
    g->g = m;
    g->kind = kind;
    g->n = (unsigned)config_setting_length(m);
    g->path = strdup(path);
    g->name = strdup(name);
    g->read = calloc(g->n + 1, 1);
    if (!g->path || !g->name || !g->read) {
        free(g->path);
        free(g->name);
        free(g->read);
        free(g);
        return NULL;
    }
    g->next = p->groups;
    p->groups = g;
    return g;
}

int rhema_config_foreach_plugin_group(const struct rhema_config *cfg, uint32_t kind,
                                      int (*fn)(const char *name, const char *where, void *arg),
                                      void *arg)
{
    const struct cfg_priv *p = cfg ? cfg->priv : NULL;
    const config_setting_t *sec = p ? section_of(p, kind, NULL) : NULL;
    const char *sname = cfg_kind_section(kind);
    int n = sec ? config_setting_length(sec) : 0;

    for (int i = 0; i < n; i++) {
        const config_setting_t *m = config_setting_get_elem(sec, (unsigned)i);
        char where[512];
        int rc;

        if (!is_plugin_group(sname, m))
            continue;
        cfg_where_of(p, m, where, sizeof where);
        rc = fn(config_setting_name(m), where, arg);
        if (rc)
            return rc;
    }
    return 0;
}

/* Member `key` of a plugin group, marked as read; NULL when absent. */
static const config_setting_t *group_member(const struct rhema_cfg *cfg, const char *key)
{
    struct rhema_cfg *g = (struct rhema_cfg *)(uintptr_t)cfg; /* the marks are ours */

    if (!g || !key)
        return NULL;
    for (unsigned i = 0; i < g->n; i++) {
        const config_setting_t *m = config_setting_get_elem(g->g, i);

        if (strcmp(config_setting_name(m), key) == 0) {
            g->read[i] = 1;
            return m;
        }
    }
    return NULL;
}

/* Record "file:line: 'path.key' must be <what>" as the group's last error. */
static int group_type_error(const struct rhema_cfg *cfg, const config_setting_t *m,
                            const char *key, const char *what)
{
    struct rhema_cfg *g = (struct rhema_cfg *)(uintptr_t)cfg;
    char where[512];
    int n;

    cfg_where_of(g->p, m, where, sizeof where);
    free(g->error);
    g->error = NULL;
    n = snprintf(NULL, 0, "%s: '%s.%s' must be %s", where, g->path, key, what);
    if (n >= 0) {
        g->error = malloc((size_t)n + 1);
        if (g->error)
            snprintf(g->error, (size_t)n + 1, "%s: '%s.%s' must be %s", where, g->path, key,
                     what);
    }
    return RHEMA_EINVAL;
}

int rhema_cfg_string(const struct rhema_cfg *cfg, const char *key, const char **out)
{
    const config_setting_t *m = group_member(cfg, key);

    if (!m)
        return RHEMA_ENOTFOUND;
    if (config_setting_type(m) != CONFIG_TYPE_STRING)
        return group_type_error(cfg, m, key, "a string");
    *out = config_setting_get_string(m);
    return 0;
}

int rhema_cfg_int(const struct rhema_cfg *cfg, const char *key, int64_t *out)
{
    const config_setting_t *m = group_member(cfg, key);
    char lit[64];

    if (!m)
        return RHEMA_ENOTFOUND;
    if (config_setting_type(m) != CONFIG_TYPE_INT && config_setting_type(m) != CONFIG_TYPE_INT64)
        return group_type_error(cfg, m, key, "an integer");
    if (cfg_int_truncated(cfg->p, m, lit, sizeof lit))
        return group_type_error(cfg, m, key, "an integer that fits in 32 bits, or written "
                                             "with the L suffix");
    *out = cfg_setting_int(m);
    return 0;
}

int rhema_cfg_bool(const struct rhema_cfg *cfg, const char *key, int *out)
{
    const config_setting_t *m = group_member(cfg, key);

    if (!m)
        return RHEMA_ENOTFOUND;
    if (config_setting_type(m) != CONFIG_TYPE_BOOL)
        return group_type_error(cfg, m, key, "a boolean (true or false)");
    *out = config_setting_get_bool(m);
    return 0;
}

int rhema_cfg_double(const struct rhema_cfg *cfg, const char *key, double *out)
{
    const config_setting_t *m = group_member(cfg, key);

    if (!m)
        return RHEMA_ENOTFOUND;
    if (config_setting_type(m) != CONFIG_TYPE_FLOAT && config_setting_type(m) != CONFIG_TYPE_INT &&
        config_setting_type(m) != CONFIG_TYPE_INT64)
        return group_type_error(cfg, m, key, "a number");
    *out = cfg_setting_double(m);
    return 0;
}

const char *rhema_cfg_where(const struct rhema_cfg *cfg, const char *key)
{
    struct rhema_cfg *g = (struct rhema_cfg *)(uintptr_t)cfg;
    const config_setting_t *m = NULL;

    if (!g)
        return "(no configuration group)";
    if (key) {
        for (unsigned i = 0; i < g->n && !m; i++)
            if (strcmp(config_setting_name(config_setting_get_elem(g->g, i)), key) == 0)
                m = config_setting_get_elem(g->g, i);
    }
    cfg_where_of(g->p, m ? m : g->g, g->where, sizeof g->where);
    return g->where;
}

const char *rhema_cfg_error(const struct rhema_cfg *cfg)
{
    return cfg ? cfg->error : NULL;
}

int rhema_config_unread_keys(const struct rhema_cfg *group, char **err)
{
    struct sbuf b = { 0 };
    int n = 0;

    if (!group)
        return 0;
    for (unsigned i = 0; i < group->n; i++) {
        const config_setting_t *m = config_setting_get_elem(group->g, i);
        char where[512];

        if (group->read[i])
            continue;
        cfg_where_of(group->p, m, where, sizeof where);
        cfg_sb_add(&b, "%s%s: unknown key '%s.%s' for plugin '%s'", n ? "\n" : "", where,
               group->path, config_setting_name(m), group->name);
        n++;
    }
    if (!n)
        return 0;
    if (b.oom) {
        free(b.s);
        b.s = NULL;
    }
    if (err)
        *err = b.s;
    else
        free(b.s);
    return RHEMA_EINVAL;
}
