/*
 * tls -- the shared SSL_CTX of the API listener, its reload, and the
 * client certificate of a request (see tls.h).
 */
#include "rhema_build.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "log.h"
#include "metrics/health.h"
#include "metrics/metrics.h"
#include "tls.h"
#include "util.h"

/*
 * The process's one listener context.  ctx is swapped by the main thread
 * (reload) while workers make SSLs from it: both under lock.  An SSL holds
 * its own reference (SSL_new), so the lock covers the pointer only.
 */
static struct {
    pthread_mutex_t lock;
    SSL_CTX *ctx;
    int enabled;
} T = {.lock = PTHREAD_MUTEX_INITIALIZER};

static const unsigned char session_id_ctx[] = "rhemad";

/*
 * Handshake metrics: the SSL's ex_data slot hs_idx holds the monotonic
 * time its handshake started (odd: ns | 1), then HS_DONE once counted.
 * The info callback runs on the worker that owns the connection.
 */
#define HS_DONE ((void *)(uintptr_t)2)
static int hs_idx = -1;
/* The server certificate's notAfter (seconds since the epoch), 0 when unknown. */
static _Atomic long long cert_not_after;

static void info_cb(const SSL *ssl, int where, int ret)
{
    (void)ret;
    if (hs_idx < 0)
        return;
    void *v = SSL_get_ex_data(ssl, hs_idx);
    if ((where & SSL_CB_HANDSHAKE_START) && !v) {
        SSL_set_ex_data((SSL *)ssl, hs_idx, (void *)(uintptr_t)(rhema_monotonic_ns() | 1));
    } else if ((where & SSL_CB_HANDSHAKE_DONE) && v && v != HS_DONE) {
        rhema_metrics_observe(RHEMA_MXH_TLS_HANDSHAKE, rhema_monotonic_ns() - (uintptr_t)v);
        rhema_metrics_count(RHEMA_MX_TLS_OK, 1);
        if (SSL_get0_peer_certificate(ssl) && SSL_get_verify_result(ssl) == X509_V_OK)
            rhema_metrics_count(RHEMA_MX_TLS_CLIENT_CERTS, 1);
        SSL_set_ex_data((SSL *)ssl, hs_idx, HS_DONE);
    }
}

/* A failed handshake's OpenSSL reason code (0: none) to its result counter. */
static enum rhema_mx hs_failure(unsigned long code)
{
    int reason = code ? ERR_GET_REASON(code) : 0;
    if (!code)
        return RHEMA_MX_TLS_ABORTED;
    if (ERR_GET_LIB(code) != ERR_LIB_SSL)
        return RHEMA_MX_TLS_OTHER;
    if (reason >= SSL_AD_REASON_OFFSET)
        return RHEMA_MX_TLS_PEER_ALERT; /* "tlsv1 alert unknown ca" and the like */
    switch (reason) {
    case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE: return RHEMA_MX_TLS_NO_CLIENT_CERT;
    case SSL_R_CERTIFICATE_VERIFY_FAILED: return RHEMA_MX_TLS_BAD_CLIENT_CERT;
    case SSL_R_UNSUPPORTED_PROTOCOL:
    case SSL_R_WRONG_VERSION_NUMBER:
    case SSL_R_UNKNOWN_PROTOCOL:
    case SSL_R_VERSION_TOO_LOW: return RHEMA_MX_TLS_PROTOCOL;
    case SSL_R_NO_SHARED_CIPHER: return RHEMA_MX_TLS_NO_SHARED_CIPHER;
    case SSL_R_HTTP_REQUEST:
    case SSL_R_HTTPS_PROXY_REQUEST: return RHEMA_MX_TLS_HTTP_REQUEST;
    default: return RHEMA_MX_TLS_OTHER;
    }
}

/* Remember ctx's certificate's notAfter for the expiry gauge and the health component. */
static void note_expiry(SSL_CTX *ctx)
{
    X509 *x = SSL_CTX_get0_certificate(ctx);
    const ASN1_TIME *na = x ? X509_get0_notAfter(x) : NULL;
    struct tm tm;
    long long t = 0;
    if (na && ASN1_TIME_to_tm(na, &tm) == 1)
        t = (long long)timegm(&tm);
    atomic_store(&cert_not_after, t);
}

long long rhema_tls_cert_not_after(void)
{
    return atomic_load(&cert_not_after);
}

void rhema_tls_health(void *arg, struct rhema_server *srv, rhema_storage_conn *conn,
                      struct rhema_health_result *out)
{
    long long na = rhema_tls_cert_not_after(), now = (long long)time(NULL);
    (void)arg;
    (void)srv;
    (void)conn;
    if (!na) {
        out->status = RHEMA_DEGRADED;
        snprintf(out->message, sizeof out->message, "the server certificate's expiry is unknown");
    } else if (na <= now) {
        out->status = RHEMA_UNHEALTHY;
        snprintf(out->message, sizeof out->message,
                 "the server certificate expired %lld s ago: clients refuse it", now - na);
    } else if (na - now < RHEMA_TLS_EXPIRY_WARN_SECONDS) {
        out->status = RHEMA_DEGRADED;
        snprintf(out->message, sizeof out->message,
                 "the server certificate expires in %lld s (under %d days): renew it and "
                 "reload", na - now, RHEMA_TLS_EXPIRY_WARN_SECONDS / 86400);
    } else {
        snprintf(out->message, sizeof out->message, "the server certificate expires in %lld days",
                 (na - now) / 86400);
    }
}

/* The last OpenSSL error of this thread as text ("" when none); the queue is emptied. */
static void ssl_reason(char *buf, size_t cap)
{
    unsigned long e, last = 0;
    while ((e = ERR_get_error()) != 0)
        last = e;
    buf[0] = '\0';
    if (last) {
        const char *r = ERR_reason_error_string(last);
        snprintf(buf, cap, "%s", r ? r : "unknown OpenSSL error");
    }
}

/* A file the context reads must be readable: errno's reason first, not OpenSSL's vaguer one. */
static int file_readable(const char *setting, const char *path, char **err)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return rhema_set_error(err, RHEMA_EINVAL, "%s '%s': %s", setting, path, strerror(errno));
    fclose(f);
    return 0;
}

/* Encrypted keys are refused instead of prompting on a terminal a daemon has not got. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return 0;
}

struct tls_settings {
    int enabled;
    const char *cert, *key, *ca, *client, *min_version, *ciphers, *ciphersuites;
};

static void settings_read(const struct rhema_config *cfg, struct tls_settings *s)
{
    memset(s, 0, sizeof *s);
    s->cert = s->key = s->ca = s->client = s->ciphers = s->ciphersuites = "";
    s->min_version = "1.2";
    rhema_config_get_bool(cfg, "service.tls.enabled", &s->enabled);
    rhema_config_get_string(cfg, "service.tls.cert_file", &s->cert);
    rhema_config_get_string(cfg, "service.tls.key_file", &s->key);
    rhema_config_get_string(cfg, "service.tls.client_ca_file", &s->ca);
    rhema_config_get_string(cfg, "service.tls.client_certificates", &s->client);
    rhema_config_get_string(cfg, "service.tls.min_version", &s->min_version);
    rhema_config_get_string(cfg, "service.tls.ciphers", &s->ciphers);
    rhema_config_get_string(cfg, "service.tls.ciphersuites", &s->ciphersuites);
    if (!*s->client)
        s->client = *s->ca ? "required" : "none";
}

/* A new context from the settings: 0 and *out, or RHEMA_E* and *err naming setting and file. */
static int ctx_build(const struct tls_settings *s, SSL_CTX **out, char **err)
{
    char why[256];
    int rc;
    ERR_clear_error();
    if (!*s->cert)
        return rhema_set_error(err, RHEMA_EINVAL,
                               "service.tls.cert_file: required when service.tls.enabled");
    if (!*s->key)
        return rhema_set_error(err, RHEMA_EINVAL,
                               "service.tls.key_file: required when service.tls.enabled");
    if (strcmp(s->client, "none") != 0 && !*s->ca)
        return rhema_set_error(err, RHEMA_EINVAL,
                               "service.tls.client_certificates = \"%s\" needs "
                               "service.tls.client_ca_file (the CAs that sign client certificates)",
                               s->client);
    if (strcmp(s->client, "none") == 0 && *s->ca)
        return rhema_set_error(err, RHEMA_EINVAL,
                               "service.tls.client_certificates = \"none\" with "
                               "service.tls.client_ca_file set: remove one of the two");
    if ((rc = file_readable("service.tls.cert_file", s->cert, err)) != 0 ||
        (rc = file_readable("service.tls.key_file", s->key, err)) != 0 ||
        (*s->ca && (rc = file_readable("service.tls.client_ca_file", s->ca, err)) != 0))
        return rc;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx)
        return rhema_set_error(err, RHEMA_ENOMEM, "TLS: cannot make an SSL context");
    rc = RHEMA_EINVAL;
    SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_min_proto_version(ctx, strcmp(s->min_version, "1.3") == 0 ? TLS1_3_VERSION
                                                                          : TLS1_2_VERSION);
    SSL_CTX_set_session_id_context(ctx, session_id_ctx, sizeof session_id_ctx - 1);
    if (hs_idx < 0)
        hs_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    SSL_CTX_set_info_callback(ctx, info_cb);
    if (*s->ciphers && SSL_CTX_set_cipher_list(ctx, s->ciphers) != 1) {
        ssl_reason(why, sizeof why);
        rhema_set_error(err, rc, "service.tls.ciphers '%s': %s", s->ciphers, why);
        goto fail;
    }
    if (*s->ciphersuites && SSL_CTX_set_ciphersuites(ctx, s->ciphersuites) != 1) {
        ssl_reason(why, sizeof why);
        rhema_set_error(err, rc, "service.tls.ciphersuites '%s': %s", s->ciphersuites, why);
        goto fail;
    }
    /* the key first: a certificate loaded after it that does not match it is
     * reported by the check below, which names both files */
    if (SSL_CTX_use_PrivateKey_file(ctx, s->key, SSL_FILETYPE_PEM) != 1) {
        ssl_reason(why, sizeof why);
        rhema_set_error(err, rc,
                        "service.tls.key_file '%s': not an unencrypted PEM private key: %s", s->key,
                        why);
        goto fail;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, s->cert) != 1) {
        ssl_reason(why, sizeof why);
        rhema_set_error(err, rc, "service.tls.cert_file '%s': not a PEM certificate (chain): %s",
                        s->cert, why);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ssl_reason(why, sizeof why);
        rhema_set_error(err, rc,
                        "service.tls.key_file '%s' does not match the certificate of "
                        "service.tls.cert_file '%s': %s",
                        s->key, s->cert, why);
        goto fail;
    }
    if (*s->ca) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(s->ca);
        if (!names || SSL_CTX_load_verify_locations(ctx, s->ca, NULL) != 1) {
            ssl_reason(why, sizeof why);
            sk_X509_NAME_pop_free(names, X509_NAME_free);
            rhema_set_error(err, rc,
                            "service.tls.client_ca_file '%s': no PEM CA certificate in it%s%s",
                            s->ca, why[0] ? ": " : "", why);
            goto fail;
        }
        SSL_CTX_set_client_CA_list(ctx, names); /* takes names */
    }
    SSL_CTX_set_verify(ctx,
                       strcmp(s->client, "required") == 0
                           ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT
                       : strcmp(s->client, "optional") == 0 ? SSL_VERIFY_PEER
                                                            : SSL_VERIFY_NONE,
                       NULL);
    *out = ctx;
    return 0;
fail:
    SSL_CTX_free(ctx);
    ERR_clear_error();
    return rc;
}

/*
 * rhemad -t does not enter the data directory, which the daemon's relative
 * paths are relative to: such a path is checked as data_directory/path.
 */
static const char *in_data_directory(const struct rhema_config *cfg, const char *path, char *buf,
                                     size_t cap)
{
    const char *dd = "";
    rhema_config_get_string(cfg, "service.data_directory", &dd);
    if (!*path || path[0] == '/' || !*dd)
        return path;
    snprintf(buf, cap, "%s/%s", dd, path);
    return buf;
}

int rhema_tls_check(const struct rhema_config *cfg, char **err)
{
    struct tls_settings s;
    SSL_CTX *ctx = NULL;
    char cert[4096], key[4096], ca[4096];
    settings_read(cfg, &s);
    if (!s.enabled)
        return 0;
    s.cert = in_data_directory(cfg, s.cert, cert, sizeof cert);
    s.key = in_data_directory(cfg, s.key, key, sizeof key);
    s.ca = in_data_directory(cfg, s.ca, ca, sizeof ca);
    int rc = ctx_build(&s, &ctx, err);
    SSL_CTX_free(ctx);
    return rc;
}

/* "subject CN=x, expires ..., sha256 ab12..." of the context's certificate, for the log. */
static void describe(SSL_CTX *ctx, char *buf, size_t cap)
{
    X509 *x = SSL_CTX_get0_certificate(ctx);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    char subject[256] = "?", fp[17] = "?";
    buf[0] = '\0';
    if (!x)
        return;
    BIO *b = BIO_new(BIO_s_mem());
    if (b) {
        X509_NAME_print_ex(b, X509_get_subject_name(x), 0, XN_FLAG_RFC2253);
        int l = BIO_read(b, subject, sizeof subject - 1);
        subject[l > 0 ? l : 0] = '\0';
        BIO_free(b);
    }
    if (X509_digest(x, EVP_sha256(), md, &n) == 1)
        for (unsigned i = 0; i < 8 && i < n; i++)
            snprintf(fp + 2 * i, 3, "%02x", md[i]);
    snprintf(buf, cap, "certificate '%s', sha256 %s...", subject, fp);
}

int rhema_tls_open(const struct rhema_config *cfg, char **err)
{
    struct tls_settings s;
    SSL_CTX *ctx = NULL;
    char what[320];
    settings_read(cfg, &s);
    if (!s.enabled)
        return 0;
    int rc = ctx_build(&s, &ctx, err);
    if (rc)
        return rc;
    pthread_mutex_lock(&T.lock);
    T.ctx = ctx;
    T.enabled = 1;
    pthread_mutex_unlock(&T.lock);
    note_expiry(ctx);
    describe(ctx, what, sizeof what);
    rhema_log(RHEMA_LOG_NOTICE, "tls", "TLS on (min version %s, client certificates %s): %s",
              s.min_version, s.client, what);
    return 0;
}

void rhema_tls_close(void)
{
    pthread_mutex_lock(&T.lock);
    SSL_CTX_free(T.ctx);
    T.ctx = NULL;
    T.enabled = 0;
    pthread_mutex_unlock(&T.lock);
}

int rhema_tls_enabled(void)
{
    return T.enabled; /* written before the workers start, only read after */
}

void rhema_tls_reload(const struct rhema_config *neu)
{
    struct tls_settings s;
    SSL_CTX *ctx = NULL, *old;
    char *err = NULL, what[320];
    settings_read(neu, &s);
    if (s.enabled != T.enabled) {
        rhema_log(RHEMA_LOG_WARN, "main",
                  "reload: service.tls.enabled changed (%s -> %s); "
                  "restart to apply",
                  T.enabled ? "true" : "false", s.enabled ? "true" : "false");
        return;
    }
    if (!s.enabled)
        return;
    if (ctx_build(&s, &ctx, &err) != 0) {
        rhema_log(RHEMA_LOG_ERROR, "main", "reload: TLS: %s; keeping the certificate in use",
                  err ? err : "cannot build the TLS context");
        free(err);
        return;
    }
    pthread_mutex_lock(&T.lock);
    old = T.ctx;
    T.ctx = ctx;
    pthread_mutex_unlock(&T.lock);
    note_expiry(ctx);
    SSL_CTX_free(old); /* open connections keep it alive through their SSL */
    describe(ctx, what, sizeof what);
    rhema_log(RHEMA_LOG_NOTICE, "main",
              "reload: TLS context re-read (min version %s, client "
              "certificates %s); new connections use %s",
              s.min_version, s.client, what);
}

SSL *rhema_tls_ssl_new(void)
{
    pthread_mutex_lock(&T.lock);
    SSL *ssl = T.ctx ? SSL_new(T.ctx) : NULL;
    pthread_mutex_unlock(&T.lock);
    return ssl;
}

/* The SSL of the connection req came on, or NULL. */
static SSL *req_ssl(struct evhttp_request *req)
{
    struct evhttp_connection *evcon = req ? evhttp_request_get_connection(req) : NULL;
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    return bev ? bufferevent_openssl_get_ssl(bev) : NULL;
}

static void add_san(struct rhema_tls_peer *p, const char *prefix, const char *v, size_t len)
{
    if (p->n_sans == RHEMA_TLS_SANS_MAX || len + strlen(prefix) >= RHEMA_TLS_SAN_MAX ||
        memchr(v, '\0', len))
        return; /* a name that does not fit, or carries a NUL, matches no mapping */
    snprintf(p->sans[p->n_sans++], RHEMA_TLS_SAN_MAX, "%s%.*s", prefix, (int)len, v);
}

static void peer_sans(X509 *x, struct rhema_tls_peer *p)
{
    GENERAL_NAMES *names = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; names && i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        const ASN1_STRING *s;
        char ip[INET6_ADDRSTRLEN];
        switch (g->type) {
        case GEN_DNS:
        case GEN_URI:
        case GEN_EMAIL:
            s = g->d.ia5;
            add_san(p,
                    g->type == GEN_DNS   ? "DNS:"
                    : g->type == GEN_URI ? "URI:"
                                         : "email:",
                    (const char *)ASN1_STRING_get0_data(s), (size_t)ASN1_STRING_length(s));
            break;
        case GEN_IPADD:
            s = g->d.iPAddress;
            if ((ASN1_STRING_length(s) == 4 &&
                 inet_ntop(AF_INET, ASN1_STRING_get0_data(s), ip, sizeof ip)) ||
                (ASN1_STRING_length(s) == 16 &&
                 inet_ntop(AF_INET6, ASN1_STRING_get0_data(s), ip, sizeof ip)))
                add_san(p, "IP:", ip, strlen(ip));
            break;
        default: break;
        }
    }
    GENERAL_NAMES_free(names);
}

int rhema_tls_peer(struct evhttp_request *req, struct rhema_tls_peer *out)
{
    SSL *ssl = req_ssl(req);
    X509 *x = ssl ? SSL_get0_peer_certificate(ssl) : NULL;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (!x || SSL_get_verify_result(ssl) != X509_V_OK)
        return -1;
    memset(out, 0, sizeof *out);
    BIO *b = BIO_new(BIO_s_mem());
    if (!b)
        return -1;
    X509_NAME_print_ex(b, X509_get_subject_name(x), 0, XN_FLAG_RFC2253);
    int l = BIO_read(b, out->subject, sizeof out->subject - 1);
    BIO_free(b);
    if (l <= 0 || l >= (int)sizeof out->subject - 1)
        out->subject[0] = '\0'; /* empty or too long for an exact match: no subject */
    else
        out->subject[l] = '\0';
    if (X509_digest(x, EVP_sha256(), md, &n) != 1 || n != 32)
        return -1;
    for (unsigned i = 0; i < n; i++)
        snprintf(out->fingerprint + 2 * i, 3, "%02x", md[i]);
    peer_sans(x, out);
    return 0;
}

/*
 * Failed handshakes come in floods (a scanner, a client with the wrong CA
 * retrying): the log's own folding covers warnings only, so the lines are
 * folded here.  The first failure of a reason is logged; the same reason
 * again within HANDSHAKE_FOLD_MS is counted, and the count goes out with
 * the next line of that reason after the window.  No client address, so
 * that every client's line is the same.
 */
#define HANDSHAKE_FOLD_MS 10000

static struct {
    pthread_mutex_t lock;
    char reason[128];
    uint64_t since_ms;
    unsigned long folded;
} F = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void handshake_failed(const char *why)
{
    uint64_t now = rhema_monotonic_ns() / 1000000u;
    unsigned long folded = 0;
    pthread_mutex_lock(&F.lock);
    if (strcmp(F.reason, why) == 0 && now - F.since_ms < HANDSHAKE_FOLD_MS) {
        F.folded++;
        pthread_mutex_unlock(&F.lock);
        return;
    }
    if (strcmp(F.reason, why) == 0)
        folded = F.folded;
    snprintf(F.reason, sizeof F.reason, "%s", why);
    F.since_ms = now;
    F.folded = 0;
    pthread_mutex_unlock(&F.lock);
    if (folded)
        rhema_log(RHEMA_LOG_INFO, "tls",
                  "TLS handshake failed: %s (and %lu more before, not logged)", why, folded);
    else
        rhema_log(RHEMA_LOG_INFO, "tls", "TLS handshake failed: %s", why);
}

void rhema_tls_conn_closed(struct bufferevent *bev)
{
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    unsigned long e, code = 0, kind = 0;
    if (!ssl)
        return;
    /*
     * libevent 2.1 keeps, per connection, the SSL_get_error() code and then
     * OpenSSL's error queue, and hands them back last first: the first
     * value above the SSL_ERROR_* codes is the most specific reason.
     */
    while ((e = bufferevent_get_openssl_error(bev)) != 0) {
        if (e > 0xff && !code)
            code = e;
        else if (e <= 0xff)
            kind = e;
    }
    if (SSL_is_init_finished(ssl))
        return;
    if (hs_idx >= 0 && SSL_get_ex_data(ssl, hs_idx) && SSL_get_ex_data(ssl, hs_idx) != HS_DONE) {
        rhema_metrics_count(hs_failure(code), 1); /* started and never ended */
        SSL_set_ex_data(ssl, hs_idx, HS_DONE);
    }
    const char *why = code ? ERR_reason_error_string(code) : NULL;
    if (!why && kind == SSL_ERROR_SSL)
        why = "protocol error";
    if (why)
        handshake_failed(why);
    else
        rhema_log(RHEMA_LOG_DEBUG, "tls", "a connection closed before its TLS handshake ended");
}
