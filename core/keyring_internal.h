/*
 * keyring_internal -- what the keyring's files share and nobody else sees:
 * the file formats, the private structs, the byte helpers, and the
 * functions one keyring file calls in another.  Include keyring.h first.
 *
 * Files: keyring.c (versions and the keyring state, open and close,
 * rotation, stats), keyring_file.c (atomic file I/O and the lock),
 * keyring_master.c (the master key and the KDF), keyring_envelope.c
 * (encrypt, decrypt, rewrap), keyring_backup.c (archives: backup, verify,
 * restore).
 *
 * Keyring file (little endian), written whole and atomically, mode 0600:
 *
 *   header, 76 bytes:
 *     magic "RHEMAKR\0" | format u32 (1) | kdf u32 (1 key file / raw,
 *     2 argon2id) | opslimit u64 | memlimit u64 | salt[16] | flags u32
 *     (1: rotate on open, set by an offline restore) | version_floor u32
 *     (new versions are numbered above it) | last_rotation_ms u64 |
 *     last_backup_ms u64 | n_versions u32
 *   n records, oldest first, versions strictly increasing:
 *     version u32 | cipher id u32 | key_len u32 | created_at_ms u64 |
 *     counter_reserved u64 | wrap nonce[24] | sealed key[key_len + 16]
 *   trailer: BLAKE2b-256 of everything before, keyed with a MAC subkey.
 *
 * The sealed key is XChaCha20-Poly1305 under the wrap subkey, with the
 * record's version, cipher id, key_len and created_at as associated data,
 * so a key cannot be moved to another version.  The subkeys (wrap, file
 * MAC, backup) are crypto_kdf subkeys of the master key.  The MAC covers
 * the counters too: editing a reservation downwards (which would reuse
 * nonces) is detected like any other tampering.
 *
 * counter_reserved: no counter value at or above it has been used.  While
 * open, blocks of reserve_block values are written here before use; a clean
 * close writes the exact count.  On open the counter resumes there.
 *
 * Backup archive:
 *   magic "RHEMAKB\0" | format u32 (1) | kdf u32 | opslimit u64 | memlimit
 *   u64 | salt[16] (the keyring's, so a passphrase master can be derived
 *   again) | created_at_ms u64 | nonce[24] | XChaCha20-Poly1305 of the
 *   keyring file image (its own MAC included) under the backup subkey,
 *   with the 80-byte header as associated data.
 *
 * Locks: `lock` (rwlock) guards kr->st and the version table; encrypt,
 * decrypt and stats read, rotation and restore write.  `persist_mu` orders
 * file writes and guards each version's `pending` reservation; it is taken
 * after `lock`, never before.
 *
 * Error messages (char *err) are RHEMA_KEYRING_ERR_MAX bytes, as in keyring.h.
 */
#ifndef RHEMA_CORE_KEYRING_INTERNAL_H
#define RHEMA_CORE_KEYRING_INTERNAL_H

#ifndef RHEMA_CORE_KEYRING_H
#error "include keyring.h before keyring_internal.h"
#endif

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define KR_MAGIC "RHEMAKR" /* + NUL: 8 bytes */
#define KB_MAGIC "RHEMAKB"
#define KR_FORMAT 1u
#define KB_FORMAT 1u
#define KDF_KEYFILE 1u
#define KDF_ARGON2ID 2u
#define KR_FLAG_ROTATE_ON_OPEN 1u
#define KR_SALT 16u
#define KR_HDR 76u
#define KR_REC 52u /* without the sealed key */
#define KR_MAC 32u
#define KR_WRAP_NONCE 24u
#define KR_WRAP_TAG 16u
#define KB_HDR 80u
#define KR_FILE_MAX (64u << 20)
#define KR_KEY_MIN 16u
#define KR_KEY_MAX 64u
#define KR_BLOCK_DEFAULT (UINT64_C(1) << 20)
#define KDF_MEM_CEILING (UINT64_C(4) << 30)

struct rhema_master {
    unsigned char key[RHEMA_MASTER_KEY_BYTES];
    uint32_t kdf; /* KDF_KEYFILE (a key file or raw bytes) or KDF_ARGON2ID */
    uint64_t opslimit, memlimit;
    unsigned char salt[KR_SALT];
};

/* Subkeys of the master, in one sodium_malloc'd block. */
struct kr_keys {
    unsigned char wrap[32], mac[32], backup[32];
};

struct kr_version {
    uint32_t version, cipher_id, key_len;
    uint64_t created_ms;
    unsigned char *key; /* sodium_malloc'd */
    unsigned char wrap_nonce[KR_WRAP_NONCE];
    unsigned char *sealed;        /* key_len + 16 */
    _Atomic uint64_t next;        /* messages encrypted = the next counter value */
    unsigned char nonce_salt[32]; /* random, drawn once when the version is loaded or made */
    _Atomic uint64_t reserved;    /* persisted: no value >= reserved was used */
    uint64_t pending;             /* reservation being written (persist_mu) */
};

struct kr_state {
    uint32_t kdf;
    uint64_t opslimit, memlimit;
    unsigned char salt[KR_SALT];
    uint32_t flags, version_floor;
    _Atomic uint64_t last_rotation_ms, last_backup_ms;
    struct kr_version **v;
    size_t n, cap;
};

struct rhema_keyring {
    char *path, *lock_path;
    int lock_fd;
    struct rhema_master *master;
    struct kr_keys *keys;
    const struct rhema_cipher_plugin *cipher;
    const struct rhema_cipher_plugin *by_id[256];
    _Atomic uint32_t min_version;
    int rotation_enabled;
    uint64_t interval_ms, max_messages, block;
    _Atomic uint64_t next_rotation_ms; /* 0: none */
    pthread_rwlock_t lock;
    pthread_mutex_t persist_mu;
    struct kr_state *st;
};

/* The KDF fields shared by the keyring and archive headers (same offsets). */
struct kdf_hdr {
    uint32_t kdf;
    uint64_t opslimit, memlimit;
    unsigned char salt[KR_SALT];
};

/* ---- small helpers ---- */

static inline void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static inline uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static inline uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* The newest version of a state (a state always has one). */
static inline struct kr_version *newest(const struct kr_state *st)
{
    return st->v[st->n - 1];
}

/* ---- keyring_file.c: atomic file I/O and the lock ---- */

/* Read a whole file (a FIFO never blocks); RHEMA_ENOTFOUND when missing.  keyring_file.c. */
int kr_read_file_at(int dirfd, const char *name, unsigned flags, size_t max, unsigned char **out,
                    size_t *len, char *err);
int kr_read_file(const char *path, size_t max, unsigned char **out, size_t *len, char *err);
/* Write a file atomically, mode 0600 (temp, fsync, rename, directory fsync).  keyring_file.c. */
int kr_write_atomic_at(int dirfd, const char *name, unsigned flags, const void *data, size_t len,
                       char *err);
int kr_write_atomic(const char *path, const void *data, size_t len, char *err);
/* An exclusive lock on "<path>.lock": one process per keyring. */
int kr_lock_keyring(const char *path, int *fd_out, char **lock_path_out, char *err);

/* ---- keyring_master.c: the master key and the KDF ---- */

int kr_master_copy(const struct rhema_master *src, struct rhema_master **out, char *err);
/* The KDF fields of a keyring or archive image; *is_backup says which it is. */
int kr_read_kdf_hdr(const unsigned char *d, size_t len, const char *path, int *is_backup,
                    struct kdf_hdr *h, char *err);
/* The master for a file whose header says how it was derived (h may be NULL: a new file). */
int kr_master_load(const char *key_file, const char *env, const struct kdf_hdr *h, const char *path,
                   uint64_t new_ops, uint64_t new_mem, struct rhema_master **out, char *err);
/* The wrap, MAC and backup subkeys of m (sodium_malloc'd; sodium_free them). */
int kr_keys_derive(const struct rhema_master *m, struct kr_keys **out, char *err);

/* ---- keyring.c: versions, states, rotation ---- */

void kr_version_free(struct kr_version *v);
void kr_state_free(struct kr_state *st);
int kr_state_push(struct kr_state *st, struct kr_version *v);
/* Serialize st.  exact: write the counters themselves (clean close), not the reservations. */
int kr_state_serialize(const struct kr_keys *k, struct kr_state *st, int exact, unsigned char **out,
                       size_t *outlen);
/*
 * Parse and verify a keyring image: the MAC, then every record, unwrapping
 * every key.  `what` names the source in messages.
 */
int kr_state_parse(const struct kr_keys *k, const unsigned char *d, size_t len, const char *what,
                   struct kr_state **out, char *err);
struct kr_version *kr_find_version(const struct kr_state *st, uint32_t version);
/* Messages one version may encrypt: the cipher's limit, the configured one, the counter space. */
uint64_t kr_version_limit(const struct rhema_keyring *kr, const struct kr_version *v);
/* Write st to the keyring file, then publish its pending reservations.  persist_mu held. */
int kr_persist(struct rhema_keyring *kr, struct kr_state *st, char *err);
void kr_schedule_rotation(struct rhema_keyring *kr, uint64_t last);
/*
 * Append version `number` (0: newest + 1, above version_floor) with the
 * configured cipher to st, its first reservation pending.  Not persisted.
 */
int kr_state_add_version(struct rhema_keyring *kr, struct kr_state *st, uint32_t number, char *err);
/* Rotate when `version` is still the newest (one rotation for many racing callers). */
int kr_rotate_if_newest(struct rhema_keyring *kr, uint32_t version, char *err);
/* Rotate when the interval has passed at now_ms (checked again under the lock). */
int kr_rotate_if_due(struct rhema_keyring *kr, uint64_t now_ms, int *rotated, char *err);

#endif /* RHEMA_CORE_KEYRING_INTERNAL_H */
