/*
 * tls -- HTTPS for the API listener (service.tls): the one SSL_CTX the
 * workers share, its reload on SIGHUP, and what a client certificate says.
 *
 * The context is built from service.tls at start (rhema_tls_open(), from
 * rhema_http_start()); a file that is missing, unreadable, not PEM, or a
 * key that does not match its certificate is an error that names the
 * setting and the file.  Each accepted connection gets an SSL made from
 * the current context (rhema_tls_ssl_new()); the SSL holds a reference on
 * its context, so a reload (rhema_tls_reload()) that swaps in a new one
 * leaves open connections on the old one, which is freed with the last of
 * them.
 *
 * service.tls.client_certificates: "none" asks for no certificate;
 * "optional" asks and verifies one if sent; "required" refuses the
 * handshake without a valid one.  Unset: "required" when client_ca_file is
 * set, "none" otherwise.  "optional" and "required" need client_ca_file.
 *
 * Thread safety: rhema_tls_ssl_new() and rhema_tls_peer() from any worker;
 * open, reload and close from the main thread.
 */
#ifndef RHEMA_CORE_API_TLS_H
#define RHEMA_CORE_API_TLS_H

#include <stddef.h>

#include <event2/bufferevent.h>
#include <event2/http.h>

#include "config.h"
#include "server.h"

/* The SHA-256 of the certificate's DER, as hex. */
#define RHEMA_TLS_FINGERPRINT_HEX 64
#define RHEMA_TLS_SUBJECT_MAX 512
#define RHEMA_TLS_SANS_MAX 16
#define RHEMA_TLS_SAN_MAX 256

/* What a verified client certificate says about its holder. */
struct rhema_tls_peer {
    char subject[RHEMA_TLS_SUBJECT_MAX]; /* RFC 2253 (XN_FLAG_RFC2253): "CN=a,O=b" */
    /* "DNS:x", "IP:1.2.3.4", "URI:...", "email:..." */
    char sans[RHEMA_TLS_SANS_MAX][RHEMA_TLS_SAN_MAX];
    size_t n_sans;
    char fingerprint[RHEMA_TLS_FINGERPRINT_HEX + 1];
};

/*
 * Build the context of cfg's service.tls and check it, keeping nothing
 * (rhemad -t, which does not enter the data directory: relative paths are
 * taken as service.data_directory/path, as the daemon will read them).  0 when TLS is off or the context builds; otherwise
 * RHEMA_EINVAL and *err (malloc'd) naming the setting and the file.
 */
int rhema_tls_check(const struct rhema_config *cfg, char **err);

/* Build and keep the context when service.tls.enabled.  0, or RHEMA_E* and *err. */
int rhema_tls_open(const struct rhema_config *cfg, char **err);
void rhema_tls_close(void);

/* 1 when the listener speaks TLS (decided at start: a reload cannot change it). */
int rhema_tls_enabled(void);

/*
 * SIGHUP: rebuild the context from neu's service.tls (certificate, key,
 * CA, client_certificates, min_version, ciphers) and use it for new
 * connections; if it does not build, keep the one in use and log an error
 * naming the file.  A change of service.tls.enabled is logged as needing
 * a restart.  Main thread.
 */
void rhema_tls_reload(const struct rhema_config *neu);

/*
 * A new server-side SSL on the current context (the worker's accept), or
 * NULL (out of memory: the connection must be refused).
 */
struct ssl_st *rhema_tls_ssl_new(void);

/*
 * The verified client certificate of the connection req came on: 0 and
 * *out filled, or -1 when there is none (TLS off, none sent, or the
 * connection is gone).
 */
int rhema_tls_peer(struct evhttp_request *req, struct rhema_tls_peer *out);

/*
 * A TLS connection closes: when its handshake never completed, log why at
 * info (one line whatever the client, so that repeats fold).
 */
void rhema_tls_conn_closed(struct bufferevent *bev);

/*
 * The server certificate's notAfter in seconds since the epoch (0: TLS off
 * or unknown), as of the last open or reload: rhema_tls_cert_expiry_seconds
 * in GET /metrics.
 */
long long rhema_tls_cert_not_after(void);

/*
 * The "tls" component of GET /health (health.h), registered when TLS is on:
 * Degraded when the certificate expires within RHEMA_TLS_EXPIRY_WARN_SECONDS,
 * Unhealthy once it has expired.
 */
#define RHEMA_TLS_EXPIRY_WARN_SECONDS (14 * 86400)
struct rhema_health_result;
void rhema_tls_health(void *arg, struct rhema_server *srv, rhema_storage_conn *conn,
                      struct rhema_health_result *out);

#endif /* RHEMA_CORE_API_TLS_H */
