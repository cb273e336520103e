/*
 * certmap -- client certificates that stand for an API key
 * (security.client_certificates):
 *
 *   client_certificates = (
 *     { subject = "CN=agent-7,O=acme"; roles = [ "agent" ]; },
 *     { san = "DNS:agent-8.acme.internal"; name = "agent-8"; roles = [ "agent" ]; }
 *   );
 *
 * A mapping names exactly one of `subject` (the certificate's subject as
 * RFC 2253 prints it, XN_FLAG_RFC2253: most specific first, "CN=...,O=...",
 * what `openssl x509 -noout -subject -nameopt RFC2253` prints) or `san` (one
 * subjectAltName: "DNS:name", "IP:address", "URI:uri" or "email:address").
 * The match is exact (case-sensitive, byte for byte); the first mapping in
 * file order that matches wins.  The principal it gives is named by `name`
 * (default: the subject or SAN), holds `roles`, and its key id is "cert:"
 * and the first 16 hex digits of the certificate's SHA-256, so that the
 * audit log and rate limits tell certificates apart.
 *
 * The TLS layer verifies the certificate (core/api/tls.h); this module only
 * maps what a verified certificate says.  No OpenSSL here.  Immutable once
 * built: any thread may look up.
 */
#ifndef RHEMA_CORE_AUTH_CERTMAP_H
#define RHEMA_CORE_AUTH_CERTMAP_H

#include <stddef.h>

#include "authz.h"
#include "config.h"
#include "principal.h"

#define RHEMA_CERTMAP_KEY_PREFIX "cert:"

struct rhema_certmap;

/*
 * security.client_certificates of cfg, its roles checked against authz.
 * 0 and *out (NULL when the list is empty), or RHEMA_EINVAL and *err
 * (malloc'd) naming the setting.
 */
int rhema_certmap_from_config(const struct rhema_config *cfg, const struct rhema_authz *authz,
                              struct rhema_certmap **out, char **err);
void rhema_certmap_free(struct rhema_certmap *m);
size_t rhema_certmap_count(const struct rhema_certmap *m);

/*
 * The principal of a verified certificate: subject (RFC 2253), its SANs,
 * and the hex SHA-256 of its DER.  0 and *p filled when a mapping matches,
 * -1 otherwise (*p untouched).
 */
int rhema_certmap_lookup(const struct rhema_certmap *m, const char *subject,
                         const char (*sans)[256], size_t n_sans, const char *fingerprint,
                         struct rhema_principal *p);

#endif /* RHEMA_CORE_AUTH_CERTMAP_H */
