/*
 * keystore -- the API keys a request may present: static keys from the
 * configuration (security.api_keys.keys) and runtime keys kept in the
 * storage backend (namespace "auth_keys", one record per public id), so
 * that every node of a cluster sees a key created or revoked on another.
 *
 * Revocation within a second on every node: each worker keeps a small
 * cache of the runtime keys it has seen, and an entry is trusted for at
 * most RHEMA_KEYSTORE_CACHE_MS; after that the record is read again from
 * the backend (one get per key and worker every half second, whatever the
 * request rate).  A revocation on this node also bumps a generation that
 * empties every worker's cache at once.  A key the backend cannot be
 * asked about is refused (503), never trusted from a stale entry.
 *
 * Threads: open/close on the main thread; authenticate on a worker, with
 * its own store and worker id (each worker owns its cache slot); create,
 * list and revoke on any worker with its store.
 */
#ifndef RHEMA_CORE_AUTH_KEYSTORE_H
#define RHEMA_CORE_AUTH_KEYSTORE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "auth/apikey.h"
#include "auth/authz.h"
#include "auth/principal.h"
#include "config.h"
#include "store.h"

#define RHEMA_KEYSTORE_NS "auth_keys"
#define RHEMA_KEYSTORE_CACHE_MS 500
#define RHEMA_KEYSTORE_WORKERS_MAX 257 /* service.workers is at most 256 */

struct rhema_keystore;

/*
 * Read and check security.api_keys.keys (key_hash, roles against authz,
 * expires_at).  authz is borrowed and must outlive the keystore.
 */
int rhema_keystore_open(const struct rhema_config *cfg, const struct rhema_authz *authz,
                        struct rhema_keystore **out, char **err);
void rhema_keystore_close(struct rhema_keystore *ks);

enum rhema_keystore_result {
    RHEMA_KEY_VALID = 0,
    RHEMA_KEY_MALFORMED, /* not the form of a key */
    RHEMA_KEY_CHECKSUM,  /* a typo: the checksum does not match */
    RHEMA_KEY_UNKNOWN,   /* no such key, a wrong secret, or revoked */
    RHEMA_KEY_EXPIRED,
    RHEMA_KEY_UNAVAIL, /* the backend could not be asked (err says why) */
};

/*
 * Authenticate the len bytes of a presented key at time now_ms (realtime);
 * RHEMA_KEY_VALID fills *out.  worker is the caller's worker id (its
 * cache), st its store.
 */
enum rhema_keystore_result rhema_keystore_authenticate(struct rhema_keystore *ks, int worker,
                                                       struct rhema_store *st, const char *key,
                                                       size_t len, uint64_t now_ms,
                                                       struct rhema_principal *out,
                                                       char err[RHEMA_ERRMSG_MAX]);

/*
 * Create a runtime key: name (1-128 printable characters), roles (names
 * that authz defines), expires_at_ms (0: never; else in the future).
 * Fills key (the only time it exists outside the client) and *record
 * (new reference: id, name, roles, expires_at, created_at).  0 or
 * RHEMA_E* with err.
 */
int rhema_keystore_create(struct rhema_keystore *ks, struct rhema_store *st, const char *name,
                          const char *const *roles, size_t n_roles, uint64_t expires_at_ms,
                          char key[RHEMA_APIKEY_LEN + 1], json_t **record,
                          char err[RHEMA_ERRMSG_MAX]);

/*
 * Every key, static ones first, as {id, name, roles, expires_at,
 * created_at, source ("config"|"runtime"), expired}: never a secret or a
 * hash.  *items is a new array.
 */
int rhema_keystore_list(struct rhema_keystore *ks, struct rhema_store *st, uint64_t now_ms,
                        json_t **items, char err[RHEMA_ERRMSG_MAX]);

/*
 * Revoke (delete) a runtime key: 0; RHEMA_ENOTFOUND; RHEMA_ECONFLICT for
 * a static key (it is removed from the config, not over HTTP).
 */
int rhema_keystore_revoke(struct rhema_keystore *ks, struct rhema_store *st, const char *id,
                          char err[RHEMA_ERRMSG_MAX]);

/* Static keys in the configuration. */
size_t rhema_keystore_static_count(const struct rhema_keystore *ks);
/*
 * The runtime keys stored (expired ones included, revoked ones are gone),
 * counted by one scan of at most limit entries (0: no limit) on conn: the
 * rhema_auth_runtime_keys gauge.  0 or the backend's RHEMA_E* code.
 */
int rhema_keystore_count_runtime(const struct rhema_storage_plugin *vt, rhema_storage_conn *conn,
                                 size_t limit, uint64_t *n);

#endif /* RHEMA_CORE_AUTH_KEYSTORE_H */
