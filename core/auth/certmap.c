/*
 * certmap -- security.client_certificates: a verified client certificate
 * -> a principal (see certmap.h).
 */
#include "rhema_build.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "certmap.h"
#include "util.h"

struct mapping {
    char *match; /* the subject, or "DNS:..." / "IP:..." ... */
    int is_san;
    struct rhema_principal principal; /* key_id filled per certificate */
};

struct rhema_certmap {
    struct mapping *m;
    size_t n;
};

void rhema_certmap_free(struct rhema_certmap *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n; i++)
        free(m->m[i].match);
    free(m->m);
    free(m);
}

size_t rhema_certmap_count(const struct rhema_certmap *m)
{
    return m ? m->n : 0;
}

static int san_valid(const char *s)
{
    static const char *const kinds[] = {"DNS:", "IP:", "URI:", "email:"};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (strncmp(s, kinds[i], strlen(kinds[i])) == 0 && s[strlen(kinds[i])])
            return 1;
    return 0;
}

/* The roles of a mapping, in the principal as the keystore keeps them ("a,b" and a mask). */
static int set_roles(const struct rhema_config *cfg, const struct rhema_authz *authz, int i,
                     struct rhema_principal *p, char **err)
{
    char path[96], rp[128];
    size_t used = 0;
    snprintf(path, sizeof path, "security.client_certificates[%d].roles", i);
    int n = rhema_config_get_count(cfg, path);
    for (int j = 0; j < n; j++) {
        const char *role = "";
        snprintf(rp, sizeof rp, "%s[%d]", path, j);
        rhema_config_get_string(cfg, rp, &role);
        int idx = rhema_authz_role_index(authz, role);
        if (idx < 0)
            return rhema_set_error(err, RHEMA_EINVAL,
                                   "%s: role '%s' is not defined in security.roles", rp, role);
        if (p->role_mask & (UINT64_C(1) << idx))
            continue;
        size_t len = strlen(role);
        if (used + len + 2 > sizeof p->roles)
            return rhema_set_error(err, RHEMA_EINVAL, "%s: too many roles", path);
        if (used)
            p->roles[used++] = ',';
        memcpy(p->roles + used, role, len + 1);
        used += len;
        p->role_mask |= UINT64_C(1) << idx;
    }
    return 0;
}

int rhema_certmap_from_config(const struct rhema_config *cfg, const struct rhema_authz *authz,
                              struct rhema_certmap **out, char **err)
{
    int n = rhema_config_get_count(cfg, "security.client_certificates");
    struct rhema_certmap *m = NULL;
    char p[96];
    int rc;
    *out = NULL;
    if (n <= 0)
        return 0;
    m = calloc(1, sizeof *m);
    if (!m || !(m->m = calloc((size_t)n, sizeof *m->m))) {
        rc = rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
        goto fail;
    }
    for (int i = 0; i < n; i++) {
        const char *subject = "", *san = "", *name = "";
        struct mapping *e = &m->m[i];
        snprintf(p, sizeof p, "security.client_certificates[%d]", i);
        char kp[128];
        snprintf(kp, sizeof kp, "%s.subject", p);
        rhema_config_get_string(cfg, kp, &subject);
        snprintf(kp, sizeof kp, "%s.san", p);
        rhema_config_get_string(cfg, kp, &san);
        snprintf(kp, sizeof kp, "%s.name", p);
        rhema_config_get_string(cfg, kp, &name);
        if (!*subject == !*san) {
            rc = rhema_set_error(err, RHEMA_EINVAL, "%s: set exactly one of subject and san", p);
            goto fail;
        }
        if (*san && !san_valid(san)) {
            rc = rhema_set_error(err, RHEMA_EINVAL,
                                 "%s.san: '%s' is not \"DNS:name\", \"IP:address\", \"URI:uri\" "
                                 "or \"email:address\"",
                                 p, san);
            goto fail;
        }
        const char *match = *subject ? subject : san;
        for (size_t j = 0; j < m->n; j++)
            if (m->m[j].is_san == !!*san && strcmp(m->m[j].match, match) == 0) {
                rc = rhema_set_error(err, RHEMA_EINVAL, "%s: %s '%s' is mapped twice", p,
                                     *san ? "san" : "subject", match);
                goto fail;
            }
        if (*name && strlen(name) > RHEMA_PRINCIPAL_NAME_MAX) {
            rc = rhema_set_error(err, RHEMA_EINVAL, "%s.name: over %d characters", p,
                                 RHEMA_PRINCIPAL_NAME_MAX);
            goto fail;
        }
        if (!(e->match = strdup(match))) {
            rc = rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
            goto fail;
        }
        e->is_san = !!*san;
        m->n++;
        /* a long subject is cut in the name only: the match stays exact */
        snprintf(e->principal.name, sizeof e->principal.name, "%s", *name ? name : match);
        e->principal.from_config = 1;
        e->principal.certificate = 1;
        if ((rc = set_roles(cfg, authz, i, &e->principal, err)) != 0)
            goto fail;
    }
    *out = m;
    return 0;
fail:
    rhema_certmap_free(m);
    return rc;
}

int rhema_certmap_lookup(const struct rhema_certmap *m, const char *subject,
                         const char (*sans)[256], size_t n_sans, const char *fingerprint,
                         struct rhema_principal *p)
{
    if (!m || strlen(fingerprint) < 16)
        return -1;
    for (size_t i = 0; i < m->n; i++) {
        const struct mapping *e = &m->m[i];
        int hit = 0;
        if (!e->is_san)
            hit = *subject && strcmp(subject, e->match) == 0;
        for (size_t j = 0; e->is_san && j < n_sans && !hit; j++)
            hit = strcmp(sans[j], e->match) == 0;
        if (!hit)
            continue;
        *p = e->principal;
        snprintf(p->key_id, sizeof p->key_id, RHEMA_CERTMAP_KEY_PREFIX "%.16s", fingerprint);
        return 0;
    }
    return -1;
}
