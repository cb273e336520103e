/*
 * principal -- who made a request, as the authenticate stage found out
 * (core/api/api_auth.c).  A plain value, copied into struct rhema_req, so
 * that it outlives any cache entry: the audit stage, which runs after the
 * reply (and after a deferred session write), reads it from there.
 */
#ifndef RHEMA_CORE_AUTH_PRINCIPAL_H
#define RHEMA_CORE_AUTH_PRINCIPAL_H

#include <stdint.h>

#define RHEMA_PRINCIPAL_ID_MAX 21 /* RHEMA_APIKEY_ID_LEN (12), or "cert:" and 16 hex digits */
#define RHEMA_PRINCIPAL_NAME_MAX 128
#define RHEMA_PRINCIPAL_ROLES_MAX 512 /* the role names, comma-separated */

struct rhema_principal {
    char key_id[RHEMA_PRINCIPAL_ID_MAX + 1]; /* the key's public id, or "cert:" and the first
                                              * 16 hex digits of a client certificate's
                                              * SHA-256 (auth/certmap.h); "" : no key */
    char name[RHEMA_PRINCIPAL_NAME_MAX + 1]; /* the key's name */
    char roles[RHEMA_PRINCIPAL_ROLES_MAX];   /* "admin,reader"; roles the config
                                              * no longer defines are left out */
    uint64_t role_mask;                      /* the same roles as bits (auth/authz.h) */
    uint64_t expires_at_ms;                  /* 0: never */
    int from_config;                         /* 1: security.api_keys.keys or
                                              * security.client_certificates; 0: runtime */
    int certificate;                         /* 1: a client certificate (auth/certmap.h) */
};

#endif /* RHEMA_CORE_AUTH_PRINCIPAL_H */
