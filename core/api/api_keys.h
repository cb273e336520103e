/*
 * api_keys -- the encryption endpoints over the keyring (core/keyring.h):
 *   POST /v1/messages/encrypt, /v1/messages/decrypt      raw bytes <-> envelope
 *   POST /v1/keys/rotate, GET /v1/keys/stats, POST /v1/keys/backup,
 *   POST /v1/keys/restore, POST /v1/keys/rewrap
 * The keyring's lifecycle and timers are core/keys.h's.
 */
#ifndef RHEMA_CORE_API_KEYS_H
#define RHEMA_CORE_API_KEYS_H

#include "routes.h"

extern const struct rhema_route rhema_keys_routes[];

#endif /* RHEMA_CORE_API_KEYS_H */
