/*
 * keybackup -- the key backup directory (key_management.backup.directory).
 *
 * Every keyring backup rhemad writes or reads on a client's behalf lives in
 * this one directory, named by a plain file name that can only mean a file
 * in it: 1-RHEMA_KEYBACKUP_NAME_MAX characters of [A-Za-z0-9._-], not
 * starting with '.', ending in ".bak".  The directory is opened once per
 * operation and the name is used relative to it (openat), with no symbolic
 * link followed and no existing file replaced (keyring.h,
 * RHEMA_KEYRING_CONFINED).  A client never gives a path: the operator's
 * shell (rhemactl keys verify|restore) is the only place paths come from.
 *
 * Scheduled backups (and POST /v1/keys/backup without a name) are named
 * "keyring-YYYYMMDDTHHMMSS-mmmZ.bak" after their UTC time; only those are
 * pruned, by count and by age, and the newest is never removed.  Backups a
 * client named are the operator's to remove.
 *
 * Every function may run on any thread; none keeps state.
 */
#ifndef RHEMA_CORE_KEYBACKUP_H
#define RHEMA_CORE_KEYBACKUP_H

#include <stddef.h>
#include <stdint.h>

#include "keyring.h"

#define RHEMA_KEYBACKUP_NAME_MAX 128
#define RHEMA_KEYBACKUP_AUTO_MAX 48 /* "keyring-20261203T081500-123Z-999.bak" fits */

/*
 * Whether `name` (len bytes, which may hold a NUL from JSON) is a backup
 * file name a client may use.  0, or -1 with *why set to a static reason.
 */
int rhema_keybackup_name_check(const char *name, size_t len, const char **why);

/*
 * Open the backup directory (creating it and its parents, mode 0700, when
 * missing); *fd is an O_DIRECTORY descriptor the caller closes.
 */
int rhema_keybackup_dir_open(const char *dir, int *fd, char err[RHEMA_KEYRING_ERR_MAX]);

/* The automatic name of a backup taken at now_ms (UTC, millisecond stamp). */
void rhema_keybackup_auto_name(uint64_t now_ms, char out[RHEMA_KEYBACKUP_AUTO_MAX]);
/* The time an automatic name stands for: 0, or -1 when name is not one. */
int rhema_keybackup_auto_parse(const char *name, uint64_t *ms);

/*
 * Write a backup of kr under its automatic name for now_ms into dirfd
 * (a "-2", "-3" ... suffix when that name is taken); the name written goes
 * to name_out.
 */
int rhema_keybackup_write_auto(struct rhema_keyring *kr, int dirfd, uint64_t now_ms,
                               char name_out[RHEMA_KEYBACKUP_AUTO_MAX],
                               char err[RHEMA_KEYRING_ERR_MAX]);

/*
 * Remove automatic backups beyond the newest keep_count (0: no count limit)
 * and those older than keep_days at now_ms (0: no age limit); the newest is
 * always kept.  *pruned (may be NULL) counts removals.  The first failure
 * is returned after trying every candidate.
 */
int rhema_keybackup_prune(int dirfd, int64_t keep_count, int64_t keep_days, uint64_t now_ms,
                          size_t *pruned, char err[RHEMA_KEYRING_ERR_MAX]);

/* The time of the newest automatic backup in dirfd, 0 when there is none. */
uint64_t rhema_keybackup_newest(int dirfd);

#endif /* RHEMA_CORE_KEYBACKUP_H */
