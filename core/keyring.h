/*
 * keyring -- versioned data keys under a master key, and the encryption
 * envelope of DESIGN.md §3.
 *
 * The newest key version encrypts; every version not below
 * min_decryption_version decrypts; each envelope names its version:
 *
 *     'R' 'E' | format 1 | cipher id | key version (u32 LE) | nonce
 *     | ciphertext+tag
 *
 * The header (everything before the ciphertext) followed by the caller's
 * optional associated data is the AEAD's associated data.
 *
 * Nonces: a cipher with random_nonce_ok draws them with randombytes_buf();
 * any other cipher gets a per-version 64-bit counter (little endian, zero
 * padded to nonce_bytes).  Counter values are reserved in blocks that are
 * written to the keyring file before any of them is used, so a crash skips
 * values but never reuses one.  The same counter counts messages against
 * the per-key limit (the cipher's max_messages_per_key, or
 * rotation.max_messages_per_key when smaller): at the limit the keyring
 * rotates (rotation.enabled) or refuses with RHEMA_ETOOBIG.
 *
 * At rest the data keys are sealed under a master key: 32 bytes from a key
 * file (mode 0600 or stricter, owned by the daemon's user) or Argon2id of a
 * passphrase from the environment.  The keyring file is locked (flock on
 * "<path>.lock") while open, so two daemons never hand out the same counter.
 * Master and data keys live in sodium_malloc'd (locked, guarded) memory and
 * are wiped on release.
 *
 * Threads: encrypt / decrypt / rewrap / stats from any thread at once (a
 * rwlock around the key table, atomic counters); rotate / maintain / backup
 * / restore from any thread too (they take the write lock).  Encrypt may
 * block on a file write once per reservation block (2^20 messages) and on
 * an automatic rotation.  open and close on one thread with no other user.
 */
#ifndef RHEMA_CORE_KEYRING_H
#define RHEMA_CORE_KEYRING_H

#include <stddef.h>
#include <stdint.h>

#include <rhema/cipher.h>

#include "codec.h" /* struct rhema_buf */
#include "config.h"
#include "plugin.h"
#include "util.h"

#define RHEMA_KEYRING_ERR_MAX RHEMA_ERRMSG_MAX /* util.h */
#define RHEMA_ENVELOPE_MAGIC0 'R'
#define RHEMA_ENVELOPE_MAGIC1 'E'
#define RHEMA_ENVELOPE_VERSION 1
#define RHEMA_ENVELOPE_FIXED 8 /* magic, format, cipher id, key version; the nonce follows */
#define RHEMA_MASTER_KEY_BYTES 32

/* ---- the master key ---- */

/* A master key in locked memory, with how it was obtained. */
struct rhema_master;

/*
 * From a key file holding 32 raw bytes or 64 hex characters (a trailing
 * newline allowed).  Refused unless it is a regular file owned by the
 * effective user with no group or other permission bits.
 */
int rhema_master_from_key_file(const char *path, struct rhema_master **out,
                               char err[RHEMA_KEYRING_ERR_MAX]);
/*
 * Argon2id (crypto_pwhash) of a passphrase with the given salt
 * (crypto_pwhash_SALTBYTES) and limits.  Slow by design: ~0.5 s and 256 MiB
 * with the default limits.
 */
int rhema_master_from_passphrase(const char *pass, size_t len, const unsigned char *salt,
                                 uint64_t opslimit, uint64_t memlimit, struct rhema_master **out,
                                 char err[RHEMA_KEYRING_ERR_MAX]);
/*
 * The master for an existing keyring file or backup archive (for rhemactl):
 * from key_file when it is set (non-empty), else from the passphrase in the
 * environment variable passphrase_env, with the salt and limits stored in
 * that file's header.
 */
int rhema_master_for_file(const char *path, const char *key_file, const char *passphrase_env,
                          struct rhema_master **out, char err[RHEMA_KEYRING_ERR_MAX]);
/* The 32 key bytes (locked memory owned by m). */
const unsigned char *rhema_master_bytes(const struct rhema_master *m);
/* Wipe and free; NULL is fine. */
void rhema_master_free(struct rhema_master *m);

/* ---- opening ---- */

/* Cipher plugins by wire id; entries may be NULL. */
struct rhema_cipher_table {
    const struct rhema_cipher_plugin *by_id[256];
};

/* Fill t with every cipher plugin of the registry (vtables stay the registry's). */
void rhema_cipher_table_fill(struct rhema_cipher_table *t, const struct rhema_plugin_registry *reg);

struct rhema_keyring_params {
    const char *path;           /* keyring_path; "keyring" when NULL or "" */
    const char *key_file;       /* "" or NULL: none */
    const char *passphrase_env; /* "" or NULL: none */
    /* An already loaded master (rhemactl, Shamir recovery): used instead of
     * key_file / passphrase_env; copied, the caller keeps ownership. */
    const struct rhema_master *master;
    /* The cipher new versions use (advanced_features.encryption.algorithm).
     * Required; must outlive the keyring. */
    const struct rhema_cipher_plugin *cipher;
    /* Ciphers available to decrypt, by id (copied); NULL: only `cipher`. */
    const struct rhema_cipher_table *ciphers;
    uint32_t min_decryption_version; /* 0 or 1: every version decrypts */
    int rotation_enabled;
    uint32_t rotation_interval_hours; /* 0: no time-based rotation */
    uint64_t max_messages_per_key;    /* 0: the cipher's limit */
    /* Tests only; 0 selects the production value. */
    uint64_t kdf_opslimit, kdf_memlimit; /* for a new passphrase keyring */
    uint64_t reserve_block;              /* counter values per reservation, 2^20 */
};

/*
 * The key_management settings of cfg (strings stay cfg's).  cipher and
 * ciphers are left NULL for the caller.  Returns 1 when a master key source
 * is configured (key_file or passphrase_env), 0 when key management is off.
 */
int rhema_keyring_params_from_config(struct rhema_keyring_params *p,
                                     const struct rhema_config *cfg);

struct rhema_keyring;

/*
 * Open the keyring at p->path, creating it (version 1) when the file does
 * not exist.  Every stored key is decrypted before the call succeeds.
 * When the newest version uses another cipher than p->cipher, or the file
 * came from an offline restore, a new version is created at once.
 * RHEMA_ENOTSUP: no master key source configured (key management off).
 * RHEMA_EINVAL: bad key file (permissions, length), missing passphrase,
 *   min_decryption_version above the newest version.
 * RHEMA_ECORRUPT: "wrong master key or corrupt keyring".
 * RHEMA_ECONFLICT: another process has the keyring open.
 */
int rhema_keyring_open(const struct rhema_keyring_params *p, struct rhema_keyring **out,
                       char err[RHEMA_KEYRING_ERR_MAX]);
/* Write exact message counts, unlock, wipe and free.  NULL is fine. */
void rhema_keyring_close(struct rhema_keyring *kr);
/* Tests only: free without writing anything, as a crash would. */
void rhema_keyring_close_nosync(struct rhema_keyring *kr);

/* ---- messages ---- */

/*
 * Envelope len bytes of pt with the newest key version.  ad (adlen bytes,
 * may be NULL/0) must be passed again to decrypt.  out->data is malloc'd
 * (caller frees); untouched on failure.  RHEMA_ETOOBIG: message limit
 * reached with rotation off (or the cipher refused the length); RHEMA_EIO:
 * the counter reservation could not be written.
 */
int rhema_keyring_encrypt(struct rhema_keyring *kr, const void *pt, size_t len, const void *ad,
                          size_t adlen, struct rhema_buf *out, char err[RHEMA_KEYRING_ERR_MAX]);
/*
 * The same into the caller's buffer (cap bytes; RHEMA_ETOOBIG when the
 * envelope -- RHEMA_ENVELOPE_FIXED + nonce + len + tag bytes -- does not
 * fit): no allocation on the hot path.  *n receives the envelope's length.
 */
int rhema_keyring_encrypt_into(struct rhema_keyring *kr, const void *pt, size_t len,
                               const void *ad, size_t adlen, void *dst, size_t cap, size_t *n,
                               char err[RHEMA_KEYRING_ERR_MAX]);
/*
 * Open an envelope.  RHEMA_ECORRUPT with a message naming the cause (bad
 * magic, truncated header, unsupported format, unknown key version, version
 * below the minimum, cipher mismatch, truncated ciphertext, authentication
 * failed); RHEMA_ENOTSUP when the envelope's cipher is not loaded.
 */
int rhema_keyring_decrypt(struct rhema_keyring *kr, const void *env, size_t len, const void *ad,
                          size_t adlen, struct rhema_buf *out, char err[RHEMA_KEYRING_ERR_MAX]);
/*
 * Re-encrypt an envelope under the newest version (same ad) without
 * returning the plaintext: it only ever sits in locked memory, wiped
 * before return.  *version_out (may be NULL) receives the new key version.
 */
int rhema_keyring_rewrap(struct rhema_keyring *kr, const void *env, size_t len, const void *ad,
                         size_t adlen, struct rhema_buf *out, uint32_t *version_out,
                         char err[RHEMA_KEYRING_ERR_MAX]);
/* The key version an envelope names (no decryption), or RHEMA_ECORRUPT. */
int rhema_envelope_key_version(const void *env, size_t len, uint32_t *version);

/* ---- versions ---- */

/* Add version N+1 (a random key for the configured cipher); it encrypts from now on. */
int rhema_keyring_rotate(struct rhema_keyring *kr, uint32_t *new_version,
                         char err[RHEMA_KEYRING_ERR_MAX]);
/*
 * Timer hook for the main thread: rotate when rotation is enabled and the
 * interval has passed (encrypt also checks).  *rotated (may be NULL) says
 * whether it did.
 */
int rhema_keyring_maintain(struct rhema_keyring *kr, int *rotated, char err[RHEMA_KEYRING_ERR_MAX]);
/* The same at a given wall-clock time (tests drive the clock with it). */
int rhema_keyring_maintain_at(struct rhema_keyring *kr, uint64_t now_ms, int *rotated,
                              char err[RHEMA_KEYRING_ERR_MAX]);
/* Change min_decryption_version (SIGHUP); refused above the newest version. */
int rhema_keyring_set_min_decryption_version(struct rhema_keyring *kr, uint32_t v,
                                             char err[RHEMA_KEYRING_ERR_MAX]);

struct rhema_keyring_version_stats {
    uint32_t version;
    uint32_t cipher_id;
    uint64_t created_at_ms;
    uint64_t encryptions; /* exact while open; after a crash, the reservation */
    uint64_t limit;       /* messages this version may encrypt */
    int decrypts;         /* not below min_decryption_version */
};

struct rhema_keyring_stats {
    uint32_t current_version;
    uint32_t current_cipher_id;
    uint32_t min_decryption_version;
    size_t versions;        /* stored versions */
    size_t active_versions; /* versions that decrypt */
    uint64_t last_rotation_ms;
    uint64_t next_rotation_ms;             /* 0: no time-based rotation */
    uint64_t last_backup_ms;               /* 0: never */
    struct rhema_keyring_version_stats *v; /* versions entries, oldest first, malloc'd */
};

int rhema_keyring_stats(struct rhema_keyring *kr, struct rhema_keyring_stats *st);
void rhema_keyring_stats_release(struct rhema_keyring_stats *st);

/* ---- backups ---- */

/*
 * Write an archive of the whole keyring, encrypted and authenticated under
 * the master key, atomically (temp file, fsync, rename, directory fsync),
 * mode 0600.
 */
int rhema_keyring_backup(struct rhema_keyring *kr, const char *path,
                         char err[RHEMA_KEYRING_ERR_MAX]);
/*
 * Confine a file name to a directory (the _at functions): the name's last
 * component may not be a symbolic link, a backup never replaces an existing
 * file (RHEMA_ECONFLICT), and a FIFO or device is refused without blocking.
 * The caller checks that name has no '/' (keybackup.h).
 */
#define RHEMA_KEYRING_CONFINED 1u
/*
 * rhema_keyring_backup() with `name` relative to the directory dirfd
 * (AT_FDCWD: a path, as above).  flags: 0 or RHEMA_KEYRING_CONFINED.
 */
int rhema_keyring_backup_at(struct rhema_keyring *kr, int dirfd, const char *name, unsigned flags,
                            char err[RHEMA_KEYRING_ERR_MAX]);

struct rhema_keyring_backup_info {
    uint64_t created_at_ms;
    size_t versions;
    uint32_t newest_version;
};

/*
 * Check an archive completely: authenticity under m, every key decrypts,
 * versions consistent.  RHEMA_ECORRUPT when it does not verify.
 */
int rhema_keyring_verify_backup(const char *path, const struct rhema_master *m,
                                struct rhema_keyring_backup_info *info,
                                char err[RHEMA_KEYRING_ERR_MAX]);
/*
 * Restore an archive into the live keyring, after verifying it completely;
 * a bad archive changes nothing.  A restore never makes data unreadable:
 * versions the live keyring has and the archive lacks (made after the
 * backup) are kept, and an archive whose version N holds another key than
 * the live version N is refused (RHEMA_ECONFLICT).  Counter reservations
 * never go backwards for a key both have, and a fresh version (numbered
 * above every version either side had) is created at once, so no restored
 * counter key encrypts again.
 */
int rhema_keyring_restore(struct rhema_keyring *kr, const char *path,
                          char err[RHEMA_KEYRING_ERR_MAX]);
/*
 * rhema_keyring_restore() from `name` relative to dirfd; flags as for
 * backup_at.  Confined, every file that cannot be used (missing, not a
 * regular file, a link, unreadable, not verifying) is RHEMA_ECORRUPT, with
 * the real reason in err; a later failure (persisting) keeps its code.
 */
int rhema_keyring_restore_at(struct rhema_keyring *kr, int dirfd, const char *name,
                             unsigned flags, char err[RHEMA_KEYRING_ERR_MAX]);
/*
 * Offline restore (rhemactl, daemon stopped): verify the archive under m,
 * merge it with the keyring at keyring_path as rhema_keyring_restore()
 * does, and write it there, marked so that the next open creates a fresh
 * version before encrypting.  RHEMA_ECONFLICT while a daemon holds it.
 */
int rhema_keyring_restore_file(const struct rhema_master *m, const char *archive,
                               const char *keyring_path, char err[RHEMA_KEYRING_ERR_MAX]);

#endif /* RHEMA_CORE_KEYRING_H */
