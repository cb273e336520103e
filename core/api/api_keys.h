/*
 * api_keys -- the encryption endpoints over the keyring (core/keyring.h):
 *   POST /v1/messages/encrypt, /v1/messages/decrypt      raw bytes <-> envelope
 *   POST /v1/keys/rotate, GET /v1/keys/stats, POST /v1/keys/backup,
 *   POST /v1/keys/restore, POST /v1/keys/rewrap
 * and the main thread's key maintenance (time-based rotation, scheduled
 * keyring backups).
 */
#ifndef RHEMA_CORE_API_KEYS_H
#define RHEMA_CORE_API_KEYS_H

#include "routes.h"

extern const struct rhema_route rhema_keys_routes[];

/*
 * Open the keyring when key management is configured (a key file or a
 * passphrase); loads the configured cipher plugin first.  0 with
 * srv->keyring NULL when it is not configured (unless encryption is enabled,
 * which then is an error).
 */
int rhema_keys_open(struct rhema_server *srv, char **err);
/* Start the rotation check (every minute) and scheduled backups on base. */
int rhema_keys_start_timers(struct rhema_server *srv, struct event_base *base);
void rhema_keys_close(struct rhema_server *srv);

#endif /* RHEMA_CORE_API_KEYS_H */
