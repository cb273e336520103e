/*
 * authz -- roles and rules (see authz.h for the decision).
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rhema/plugin.h>

#include "auth/authz.h"
#include "util.h"

#define SELF_PERMISSION "auth:self"

struct role {
    char name[RHEMA_AUTHZ_NAME_MAX + 1];
    char **perms;
    size_t n;
};

struct rule {
    char *prefix;
    size_t prefix_len;
    unsigned methods; /* 0: every method */
    int allow;
    uint64_t roles; /* 0: every principal */
};

struct rhema_authz {
    struct role roles[RHEMA_AUTHZ_ROLES_MAX];
    size_t n_roles;
    struct rule *rules;
    size_t n_rules;
};

int rhema_authz_new(struct rhema_authz **out)
{
    struct rhema_authz *a = calloc(1, sizeof *a);
    if (!a)
        return RHEMA_ENOMEM;
    *out = a;
    return 0;
}

void rhema_authz_free(struct rhema_authz *a)
{
    if (!a)
        return;
    for (size_t i = 0; i < a->n_roles; i++) {
        for (size_t j = 0; j < a->roles[i].n; j++)
            free(a->roles[i].perms[j]);
        free(a->roles[i].perms);
    }
    for (size_t i = 0; i < a->n_rules; i++)
        free(a->rules[i].prefix);
    free(a->rules);
    free(a);
}

/* [a-z0-9_]+ */
static int word_valid(const char *s, size_t n)
{
    if (n == 0 || n > RHEMA_AUTHZ_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return 0;
    return 1;
}

int rhema_permission_valid(const char *p)
{
    const char *colon = strchr(p, ':');
    if (strcmp(p, "*") == 0)
        return 1;
    if (!colon || strchr(colon + 1, ':'))
        return 0;
    size_t alen = (size_t)(colon - p), vlen = strlen(colon + 1);
    if (!((alen == 1 && p[0] == '*') || word_valid(p, alen)))
        return 0;
    if (!((vlen == 1 && colon[1] == '*') || word_valid(colon + 1, vlen)))
        return 0;
    return 1;
}

int rhema_permission_match(const char *pattern, const char *perm)
{
    if (strcmp(pattern, "*") == 0 || strcmp(pattern, perm) == 0)
        return 1;
    const char *pc = strchr(pattern, ':'), *c = strchr(perm, ':');
    if (!pc || !c)
        return 0;
    size_t palen = (size_t)(pc - pattern), alen = (size_t)(c - perm);
    int area_ok =
        (palen == 1 && pattern[0] == '*') || (palen == alen && memcmp(pattern, perm, alen) == 0);
    int verb_ok = strcmp(pc + 1, "*") == 0 || strcmp(pc + 1, c + 1) == 0;
    return area_ok && verb_ok;
}

unsigned rhema_authz_method(const char *name)
{
    if (strcmp(name, "GET") == 0)
        return RHEMA_AUTHZ_GET;
    if (strcmp(name, "PUT") == 0)
        return RHEMA_AUTHZ_PUT;
    if (strcmp(name, "POST") == 0)
        return RHEMA_AUTHZ_POST;
    if (strcmp(name, "DELETE") == 0)
        return RHEMA_AUTHZ_DELETE;
    return 0;
}

int rhema_authz_role_index(const struct rhema_authz *a, const char *name)
{
    for (size_t i = 0; i < a->n_roles; i++)
        if (strcmp(a->roles[i].name, name) == 0)
            return (int)i;
    return -1;
}

const char *rhema_authz_role_name(const struct rhema_authz *a, int index)
{
    return index >= 0 && (size_t)index < a->n_roles ? a->roles[index].name : NULL;
}

size_t rhema_authz_role_count(const struct rhema_authz *a)
{
    return a->n_roles;
}

int rhema_authz_add_role(struct rhema_authz *a, const char *name, const char *const *perms,
                         size_t n, char **err)
{
    struct role *r;
    if (!rhema_id_valid(name) || strlen(name) > RHEMA_AUTHZ_NAME_MAX)
        return rhema_set_error(err, RHEMA_EINVAL,
                               "role name '%s': 1-%d characters of [A-Za-z0-9._:-]", name,
                               RHEMA_AUTHZ_NAME_MAX);
    if (rhema_authz_role_index(a, name) >= 0)
        return rhema_set_error(err, RHEMA_EINVAL, "role '%s' is defined twice", name);
    if (a->n_roles == RHEMA_AUTHZ_ROLES_MAX)
        return rhema_set_error(err, RHEMA_EINVAL, "more than %d roles", RHEMA_AUTHZ_ROLES_MAX);
    for (size_t i = 0; i < n; i++)
        if (!rhema_permission_valid(perms[i]))
            return rhema_set_error(err, RHEMA_EINVAL,
                                   "role '%s': '%s' is not a permission (area:verb, area:*, "
                                   "*:verb or *, in lower case)",
                                   name, perms[i]);
    r = &a->roles[a->n_roles];
    memset(r, 0, sizeof *r);
    if (n && !(r->perms = calloc(n, sizeof *r->perms)))
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        if (!(r->perms[r->n++] = strdup(perms[i]))) {
            for (size_t j = 0; j < r->n; j++)
                free(r->perms[j]);
            free(r->perms);
            return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
        }
    snprintf(r->name, sizeof r->name, "%s", name);
    a->n_roles++;
    return 0;
}

int rhema_authz_add_rule(struct rhema_authz *a, const char *path_prefix, unsigned methods,
                         int allow, const char *const *roles, size_t n, char **err)
{
    uint64_t mask = 0;
    struct rule *grown;
    if (path_prefix[0] != '/')
        return rhema_set_error(err, RHEMA_EINVAL, "rule path_prefix '%s' must begin with '/'",
                               path_prefix);
    for (size_t i = 0; i < n; i++) {
        int idx = rhema_authz_role_index(a, roles[i]);
        if (idx < 0)
            return rhema_set_error(err, RHEMA_EINVAL,
                                   "rule for '%s' names role '%s', which security.roles does "
                                   "not define",
                                   path_prefix, roles[i]);
        mask |= UINT64_C(1) << idx;
    }
    if (!(grown = realloc(a->rules, (a->n_rules + 1) * sizeof *grown)))
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    a->rules = grown;
    struct rule *r = &a->rules[a->n_rules];
    if (!(r->prefix = strdup(path_prefix)))
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    r->prefix_len = strlen(path_prefix);
    r->methods = methods;
    r->allow = allow != 0;
    r->roles = mask;
    a->n_rules++;
    return 0;
}

/* Fill v with the n strings of the list at path (borrowed from the config). */
static int config_list(const struct rhema_config *cfg, const char *path, const char ***v, size_t *n,
                       char **err)
{
    int count = rhema_config_get_count(cfg, path);
    char p[256];
    *v = NULL;
    *n = 0;
    if (count <= 0)
        return 0;
    if (!(*v = calloc((size_t)count, sizeof **v)))
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    for (int i = 0; i < count; i++) {
        snprintf(p, sizeof p, "%s[%d]", path, i);
        if (rhema_config_get_string(cfg, p, &(*v)[i]) != 0) {
            free(*v);
            *v = NULL;
            return rhema_set_error(err, RHEMA_EINVAL, "%s: cannot read", p);
        }
    }
    *n = (size_t)count;
    return 0;
}

int rhema_authz_from_config(const struct rhema_config *cfg, struct rhema_authz **out, char **err)
{
    struct rhema_authz *a = NULL;
    char p[128];
    const char **v = NULL;
    size_t n = 0;
    int rc = rhema_authz_new(&a);
    if (rc)
        return rhema_set_error(err, rc, "out of memory");
    int nroles = rhema_config_get_count(cfg, "security.roles");
    for (int i = 0; i < nroles; i++) {
        const char *name = NULL;
        snprintf(p, sizeof p, "security.roles[%d].name", i);
        if ((rc = rhema_config_get_string(cfg, p, &name)) != 0) {
            rc = rhema_set_error(err, RHEMA_EINVAL, "%s: cannot read", p);
            goto fail;
        }
        snprintf(p, sizeof p, "security.roles[%d].permissions", i);
        if ((rc = config_list(cfg, p, &v, &n, err)) != 0)
            goto fail;
        rc = rhema_authz_add_role(a, name, v, n, err);
        free(v);
        v = NULL;
        if (rc) {
            snprintf(p, sizeof p, "security.roles[%d]", i);
            goto named;
        }
    }
    int nrules = rhema_config_get_count(cfg, "security.rules");
    for (int i = 0; i < nrules; i++) {
        const char *prefix = NULL, *action = NULL;
        const char **methods = NULL;
        size_t nm = 0;
        unsigned mask = 0;
        snprintf(p, sizeof p, "security.rules[%d].path_prefix", i);
        rhema_config_get_string(cfg, p, &prefix);
        snprintf(p, sizeof p, "security.rules[%d].action", i);
        rhema_config_get_string(cfg, p, &action);
        snprintf(p, sizeof p, "security.rules[%d].methods", i);
        if ((rc = config_list(cfg, p, &methods, &nm, err)) != 0)
            goto fail;
        for (size_t j = 0; j < nm; j++) {
            unsigned m = rhema_authz_method(methods[j]);
            if (!m) {
                rc = rhema_set_error(err, RHEMA_EINVAL,
                                     "security.rules[%d].methods: '%s' is not GET, PUT, POST "
                                     "or DELETE",
                                     i, methods[j]);
                free(methods);
                goto fail;
            }
            mask |= m;
        }
        free(methods);
        snprintf(p, sizeof p, "security.rules[%d].roles", i);
        if ((rc = config_list(cfg, p, &v, &n, err)) != 0)
            goto fail;
        rc = rhema_authz_add_rule(a, prefix ? prefix : "/", mask,
                                  action && strcmp(action, "allow") == 0, v, n, err);
        free(v);
        v = NULL;
        if (rc) {
            snprintf(p, sizeof p, "security.rules[%d]", i);
            goto named;
        }
    }
    *out = a;
    return 0;
named: /* prefix the message with the setting */
    if (err && *err) {
        char *m = *err;
        *err = NULL;
        rhema_set_error(err, rc, "%s: %s", p, m);
        free(m);
    }
fail:
    rhema_authz_free(a);
    return rc;
}

static int prefix_matches(const struct rule *r, const char *path)
{
    if (strncmp(path, r->prefix, r->prefix_len) != 0)
        return 0;
    return r->prefix[r->prefix_len - 1] == '/' || path[r->prefix_len] == '\0' ||
           path[r->prefix_len] == '/';
}

int rhema_authz_check(const struct rhema_authz *a, uint64_t roles, unsigned method,
                      const char *path, const char *permission)
{
    long best = -1;
    int best_allow = 0;
    for (size_t i = 0; i < a->n_rules; i++) {
        const struct rule *r = &a->rules[i];
        if ((r->methods && !(r->methods & method)) || (r->roles && !(r->roles & roles)) ||
            !prefix_matches(r, path))
            continue;
        long spec = (long)r->prefix_len * 2 + (r->methods != 0);
        if (spec > best) {
            best = spec;
            best_allow = r->allow;
        } else if (spec == best && !r->allow) {
            best_allow = 0; /* an explicit deny beats an allow */
        }
    }
    if (best >= 0)
        return best_allow;
    if (strcmp(permission, SELF_PERMISSION) == 0)
        return 1;
    for (size_t i = 0; i < a->n_roles; i++) {
        if (!(roles & (UINT64_C(1) << i)))
            continue;
        for (size_t j = 0; j < a->roles[i].n; j++)
            if (rhema_permission_match(a->roles[i].perms[j], permission))
                return 1;
    }
    return 0;
}

void rhema_authz_permissions(const struct rhema_authz *a, uint64_t roles,
                             void (*fn)(const char *pattern, void *arg), void *arg)
{
    fn(SELF_PERMISSION, arg);
    for (size_t i = 0; i < a->n_roles; i++) {
        if (!(roles & (UINT64_C(1) << i)))
            continue;
        for (size_t j = 0; j < a->roles[i].n; j++) {
            const char *p = a->roles[i].perms[j];
            int seen = strcmp(p, SELF_PERMISSION) == 0;
            for (size_t k = 0; k < i && !seen; k++)
                if (roles & (UINT64_C(1) << k))
                    for (size_t l = 0; l < a->roles[k].n && !seen; l++)
                        seen = strcmp(a->roles[k].perms[l], p) == 0;
            for (size_t l = 0; l < j && !seen; l++)
                seen = strcmp(a->roles[i].perms[l], p) == 0;
            if (!seen)
                fn(p, arg);
        }
    }
}

int rhema_addr_loopback(const char *host)
{
    unsigned char a[16];
    static const unsigned char v6_loop[16] = {[15] = 1};
    static const unsigned char v4_mapped[12] = {[10] = 0xff, [11] = 0xff};
    if (inet_pton(AF_INET, host, a) == 1)
        return a[0] == 127;
    if (inet_pton(AF_INET6, host, a) == 1)
        return memcmp(a, v6_loop, 16) == 0 || (memcmp(a, v4_mapped, 12) == 0 && a[12] == 127);
    return 0;
}
