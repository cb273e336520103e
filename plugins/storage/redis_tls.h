/*
 * redis_tls -- TLS under hiredis 0.14 for the redis storage plugin.
 *
 * Debian 12's hiredis (0.14.1) has no TLS, but it can take a connected
 * socket (redisConnectFd).  rd_tls_relay_open() dials the server, runs a
 * verified TLS handshake, and returns one end of a socketpair for hiredis;
 * a relay thread moves bytes between the other end and the TLS connection
 * (see redis_tls.c for why a thread per connection).
 *
 * Lifecycle: rd_tls_ctx_new() once per plugin instance (loads the CA, the
 * client certificate and key; SSL_CTX_free() at close); per connection
 * rd_tls_relay_open(), then redisConnectFd(*fd_out): hiredis owns that fd
 * and closes it in redisFree(), after which rd_tls_relay_close() joins the
 * relay and frees it.  Closing hiredis' end is what stops the relay; a
 * relay that loses the server (EOF, a TLS or socket error) closes its end,
 * so hiredis sees the connection drop and the plugin's reconnect path runs.
 */
#ifndef RHEMA_REDIS_TLS_H
#define RHEMA_REDIS_TLS_H

#include <stddef.h>

#include <openssl/ssl.h>

struct rd_tls_relay;

/*
 * A client SSL_CTX: TLS 1.2 at least, the peer always verified against
 * ca_file (the system store when empty), and the client certificate chain
 * cert_file with key_file when cert_file is not empty.  0, or -1 with the
 * reason (OpenSSL's, and the file) in why.
 */
int rd_tls_ctx_new(const char *ca_file, const char *cert_file, const char *key_file, SSL_CTX **out,
                   char *why, size_t cap);

/*
 * Connect to host:port within timeout_ms (the TCP connect and the handshake
 * together), verify the certificate for server_name (a DNS name, checked
 * and sent as SNI, or an IP address, checked against the certificate's IP
 * addresses), start the relay and set *fd_out to hiredis' end (blocking).
 * 0, or -1 with the reason in why (nothing left open).  Blocks the caller.
 */
int rd_tls_relay_open(SSL_CTX *ctx, const char *host, int port, const char *server_name,
                      int timeout_ms, struct rd_tls_relay **out, int *fd_out, char *why,
                      size_t cap);

/*
 * Join and free a relay whose hiredis end is already closed; NULL is a
 * no-op.  When the server's side had ended with an error (say, the server
 * refused our certificate after a TLS 1.3 handshake), its reason is written
 * to why (when not NULL); otherwise why is left alone.
 */
void rd_tls_relay_close(struct rd_tls_relay *r, char *why, size_t cap);

#endif
