/*
 * keys -- the server's keyring over its life (main thread): open it from
 * advanced_features.key_management (NULL srv->keyring when key management
 * is off), rotate it on rotation.interval_hours, write and prune the
 * scheduled backups (keybackup.h), close it.  The HTTP routes that use it
 * are api/api_keys.c's.
 */
#ifndef RHEMA_CORE_KEYS_H
#define RHEMA_CORE_KEYS_H

#include <event2/event.h>

#include "server.h"

/* Open the keyring (when configured); 0, or a RHEMA_E* code and *err (malloc'd). */
int rhema_keys_open(struct rhema_server *srv, char **err);
/* Start the rotation and backup timers on base (the main thread's). */
int rhema_keys_start_timers(struct rhema_server *srv, struct event_base *base);
/* Stop the timers and close the keyring; after the workers stopped. */
void rhema_keys_close(struct rhema_server *srv);
/* key_management.backup.directory: where backups over HTTP are confined. */
const char *rhema_keys_backup_dir(struct rhema_server *srv);

#endif /* RHEMA_CORE_KEYS_H */
