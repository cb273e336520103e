/*
 * keyring -- versioned data keys under a master key (see keyring.h).
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
 */
#include "rhema_build.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "keyring.h"
#include "log.h"
#include "util.h"

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
    unsigned char *sealed;     /* key_len + 16 */
    _Atomic uint64_t next;     /* messages encrypted = the next counter value */
    unsigned char nonce_salt[32]; /* random, drawn once when the version is loaded or made */
    _Atomic uint64_t reserved; /* persisted: no value >= reserved was used */
    uint64_t pending;          /* reservation being written (persist_mu) */
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

/* ---- small helpers ---- */

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

/* Create the parent directory (one level, 0700) when missing; errors surface later. */
static void ensure_parent(const char *path)
{
    char *d = dir_of(path);
    if (d) {
        if (mkdir(d, 0700) != 0 && errno != EEXIST)
            errno = 0;
        free(d);
    }
}

/*
 * Read a whole file: `name` relative to dirfd (AT_FDCWD: a path).  With
 * RHEMA_KEYRING_CONFINED the last component must not be a symbolic link.
 * RHEMA_ENOTFOUND when it does not exist; a FIFO or device never blocks.
 */
static int read_file_at(int dirfd, const char *name, unsigned flags, size_t max,
                        unsigned char **out, size_t *len, char *err)
{
    int oflags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | (flags & RHEMA_KEYRING_CONFINED ? O_NOFOLLOW : 0);
    int fd = openat(dirfd, name, oflags);
    struct stat sb;
    unsigned char *buf = NULL;
    size_t got = 0;
    if (fd < 0) {
        if (errno == ENOENT)
            return rhema_set_errbuf(err, RHEMA_ENOTFOUND, "%s: no such file", name);
        return rhema_set_errbuf(err, RHEMA_EIO, "open %s: %s", name, strerror(errno));
    }
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return rhema_set_errbuf(err, RHEMA_EIO, "%s: not a regular file", name);
    }
    if ((uint64_t)sb.st_size > max) {
        close(fd);
        return rhema_set_errbuf(err, RHEMA_ECORRUPT,
                                "%s: %lld bytes is larger than any keyring (%zu)", name,
                                (long long)sb.st_size, max);
    }
    buf = malloc((size_t)sb.st_size + 1);
    if (!buf) {
        close(fd);
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory reading %s", name);
    }
    while (got < (size_t)sb.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)sb.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            free(buf);
            close(fd);
            return rhema_set_errbuf(err, RHEMA_EIO, "read %s: %s", name, strerror(e));
        }
        got += (size_t)r;
    }
    close(fd);
    *out = buf;
    *len = got;
    return 0;
}

static int read_file(const char *path, size_t max, unsigned char **out, size_t *len, char *err)
{
    return read_file_at(AT_FDCWD, path, 0, max, out, len, err);
}

/*
 * Write a file atomically, mode 0600: "<name>.tmp" (write, fsync), then
 * rename over name, then fsync the directory.  `name` is relative to dirfd
 * (AT_FDCWD: a path, whose parent is created one level deep).  With
 * RHEMA_KEYRING_CONFINED an existing name is never replaced (RHEMA_ECONFLICT: the
 * temp file is hard-linked to name, which fails when it exists) and
 * neither name may be a symbolic link, so nothing outside dirfd is touched.
 */
static int write_atomic_at(int dirfd, const char *name, unsigned flags, const void *data,
                           size_t len, char *err)
{
    char *tmp = NULL, *dir = NULL;
    int fd = -1, dfd = -1, rc = RHEMA_EIO, made = 0;
    size_t off = 0;
    int confined = (flags & RHEMA_KEYRING_CONFINED) != 0;
    if (asprintf(&tmp, "%s.tmp", name) < 0)
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    if (dirfd == AT_FDCWD)
        ensure_parent(name);
    if (confined && unlinkat(dirfd, tmp, 0) != 0 && errno != ENOENT) {
        rhema_set_errbuf(err, RHEMA_EIO, "remove a stale %s: %s", tmp, strerror(errno));
        goto out;
    }
    fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW |
                                (confined ? O_EXCL : 0), 0600);
    if (fd < 0) {
        rhema_set_errbuf(err, RHEMA_EIO, "create %s: %s", tmp, strerror(errno));
        goto out;
    }
    made = 1;
    if (fchmod(fd, 0600) != 0) {
        rhema_set_errbuf(err, RHEMA_EIO, "chmod %s: %s", tmp, strerror(errno));
        goto out;
    }
    while (off < len) {
        ssize_t w = write(fd, (const unsigned char *)data + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            rhema_set_errbuf(err, RHEMA_EIO, "write %s: %s", tmp,
                             w < 0 ? strerror(errno) : "short write");
            goto out;
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0) {
        rhema_set_errbuf(err, RHEMA_EIO, "fsync %s: %s", tmp, strerror(errno));
        goto out;
    }
    if (close(fd) != 0) {
        fd = -1;
        rhema_set_errbuf(err, RHEMA_EIO, "close %s: %s", tmp, strerror(errno));
        goto out;
    }
    fd = -1;
    if (confined) {
        if (linkat(dirfd, tmp, dirfd, name, 0) != 0) {
            if (errno == EEXIST)
                rc = rhema_set_errbuf(err, RHEMA_ECONFLICT, "%s already exists", name);
            else
                rhema_set_errbuf(err, RHEMA_EIO, "link %s -> %s: %s", tmp, name, strerror(errno));
            goto out;
        }
        unlinkat(dirfd, tmp, 0); /* name holds the data now */
        made = 0;
    } else if (renameat(dirfd, tmp, dirfd, name) != 0) {
        rhema_set_errbuf(err, RHEMA_EIO, "rename %s -> %s: %s", tmp, name, strerror(errno));
        goto out;
    } else {
        made = 0;
    }
    int sync_fd = dirfd;
    if (dirfd == AT_FDCWD)
        sync_fd = dfd = (dir = dir_of(name)) ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (sync_fd >= 0 && fsync(sync_fd) != 0) {
        rhema_set_errbuf(err, RHEMA_EIO, "fsync the directory of %s: %s", name, strerror(errno));
        goto out; /* renamed, but not known durable */
    }
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    if (dfd >= 0)
        close(dfd);
    if (made)
        unlinkat(dirfd, tmp, 0);
    free(dir);
    free(tmp);
    return rc;
}

static int write_atomic(const char *path, const void *data, size_t len, char *err)
{
    return write_atomic_at(AT_FDCWD, path, 0, data, len, err);
}

/* An exclusive lock on "<path>.lock": one process per keyring. */
static int lock_keyring(const char *path, int *fd_out, char **lock_path_out, char *err)
{
    char *lp = NULL;
    int fd;
    if (asprintf(&lp, "%s.lock", path) < 0)
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    ensure_parent(path);
    fd = open(lp, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        int e = errno;
        rhema_set_errbuf(err, RHEMA_EIO, "open %s: %s", lp, strerror(e));
        free(lp);
        return RHEMA_EIO;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        close(fd);
        if (e == EWOULDBLOCK)
            rhema_set_errbuf(err, RHEMA_ECONFLICT,
                             "keyring %s is in use by another process (%s is locked)", path, lp);
        else
            rhema_set_errbuf(err, RHEMA_EIO, "lock %s: %s", lp, strerror(e));
        free(lp);
        return e == EWOULDBLOCK ? RHEMA_ECONFLICT : RHEMA_EIO;
    }
    *fd_out = fd;
    *lock_path_out = lp;
    return 0;
}

/* ---- the master key ---- */

static int master_alloc(struct rhema_master **out, char *err)
{
    if (sodium_init() < 0)
        return rhema_set_errbuf(err, RHEMA_EINVAL, "libsodium failed to initialise");
    struct rhema_master *m = sodium_malloc(sizeof *m);
    if (!m)
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of locked memory for the master key");
    memset(m, 0, sizeof *m);
    *out = m;
    return 0;
}

void rhema_master_free(struct rhema_master *m)
{
    if (m)
        sodium_free(m); /* wipes */
}

const unsigned char *rhema_master_bytes(const struct rhema_master *m)
{
    return m->key;
}

static int master_copy(const struct rhema_master *src, struct rhema_master **out, char *err)
{
    struct rhema_master *m = NULL;
    int rc = master_alloc(&m, err);
    if (rc)
        return rc;
    memcpy(m, src, sizeof *m);
    *out = m;
    return 0;
}

int rhema_master_from_key_file(const char *path, struct rhema_master **out,
                               char err[RHEMA_KEYRING_ERR_MAX])
{
    enum { CAP = 256 };
    struct rhema_master *m = NULL;
    unsigned char *buf = NULL;
    struct stat sb;
    size_t got = 0, binlen = 0;
    const char *end = NULL;
    int rc, fd;

    if ((rc = master_alloc(&m, err)))
        return rc;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = rhema_set_errbuf(err, RHEMA_EINVAL, "key file %s: %s", path, strerror(errno));
        goto fail;
    }
    /* check the file we read, not the name: fstat on the open descriptor */
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        rc = rhema_set_errbuf(err, RHEMA_EINVAL, "key file %s is not a regular file", path);
        goto fail;
    }
    if (sb.st_uid != geteuid()) {
        rc = rhema_set_errbuf(
            err, RHEMA_EINVAL,
            "key file %s is owned by uid %u, not by the user rhema runs as (uid %u)", path,
            (unsigned)sb.st_uid, (unsigned)geteuid());
        goto fail;
    }
    if (sb.st_mode & 077) {
        rc = rhema_set_errbuf(
            err, RHEMA_EINVAL,
            "key file %s has mode %04o: it must not be accessible to group or others "
            "(chmod 600 %s)",
            path, (unsigned)(sb.st_mode & 07777), path);
        goto fail;
    }
    buf = sodium_malloc(CAP + 1);
    if (!buf) {
        rc = rhema_set_errbuf(err, RHEMA_ENOMEM, "out of locked memory");
        goto fail;
    }
    for (;;) {
        ssize_t r = read(fd, buf + got, CAP + 1 - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = rhema_set_errbuf(err, RHEMA_EIO, "read key file %s: %s", path, strerror(errno));
            goto fail;
        }
        if (r == 0 || (got += (size_t)r) > CAP)
            break;
    }
    if (got == RHEMA_MASTER_KEY_BYTES) {
        memcpy(m->key, buf, RHEMA_MASTER_KEY_BYTES);
    } else {
        size_t n = got;
        while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
            n--;
        if (n != 2 * RHEMA_MASTER_KEY_BYTES ||
            sodium_hex2bin(m->key, RHEMA_MASTER_KEY_BYTES, (const char *)buf, n, NULL, &binlen,
                           &end) != 0 ||
            binlen != RHEMA_MASTER_KEY_BYTES || end != (const char *)buf + n) {
            rc = rhema_set_errbuf(
                err, RHEMA_EINVAL,
                "key file %s must hold 32 raw bytes or 64 hex characters (it holds %s%zu "
                "bytes)",
                path, got > CAP ? "more than " : "", got > CAP ? (size_t)CAP : got);
            goto fail;
        }
    }
    m->kdf = KDF_KEYFILE;
    sodium_free(buf);
    close(fd);
    *out = m;
    return 0;
fail:
    if (buf)
        sodium_free(buf);
    if (fd >= 0)
        close(fd);
    rhema_master_free(m);
    return rc;
}

static int kdf_limits_ok(uint64_t ops, uint64_t mem)
{
    return ops >= crypto_pwhash_OPSLIMIT_MIN && ops <= crypto_pwhash_OPSLIMIT_MAX &&
           mem >= crypto_pwhash_MEMLIMIT_MIN && mem <= KDF_MEM_CEILING &&
           mem <= crypto_pwhash_MEMLIMIT_MAX;
}

int rhema_master_from_passphrase(const char *pass, size_t len, const unsigned char *salt,
                                 uint64_t opslimit, uint64_t memlimit, struct rhema_master **out,
                                 char err[RHEMA_KEYRING_ERR_MAX])
{
    struct rhema_master *m = NULL;
    int rc;
    if (len == 0)
        return rhema_set_errbuf(err, RHEMA_EINVAL, "the passphrase is empty");
    if (!kdf_limits_ok(opslimit, memlimit))
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "Argon2id limits out of range (opslimit %llu, memlimit %llu)",
                                (unsigned long long)opslimit, (unsigned long long)memlimit);
    if ((rc = master_alloc(&m, err)))
        return rc;
    if (crypto_pwhash(m->key, RHEMA_MASTER_KEY_BYTES, pass, len, salt, opslimit, (size_t)memlimit,
                      crypto_pwhash_ALG_ARGON2ID13) != 0) {
        rhema_master_free(m);
        return rhema_set_errbuf(err, RHEMA_ENOMEM,
                                "Argon2id failed (out of memory for %llu bytes?)",
                                (unsigned long long)memlimit);
    }
    m->kdf = KDF_ARGON2ID;
    m->opslimit = opslimit;
    m->memlimit = memlimit;
    memcpy(m->salt, salt, KR_SALT);
    *out = m;
    return 0;
}

/* The passphrase in environment variable `name`. */
static int passphrase_env(const char *name, const char **pass, char *err)
{
    const char *p = getenv(name);
    if (!p || !*p)
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "passphrase_env names '%s', but that environment variable is %s",
                                name, p ? "empty" : "not set");
    *pass = p;
    return 0;
}

/* The KDF fields shared by the keyring and archive headers (same offsets). */
struct kdf_hdr {
    uint32_t kdf;
    uint64_t opslimit, memlimit;
    unsigned char salt[KR_SALT];
};

static int read_kdf_hdr(const unsigned char *d, size_t len, const char *path, int *is_backup,
                        struct kdf_hdr *h, char *err)
{
    if (len < 8 || (memcmp(d, KR_MAGIC, 8) != 0 && memcmp(d, KB_MAGIC, 8) != 0))
        return rhema_set_errbuf(err, RHEMA_ECORRUPT,
                                "%s is not a rhema keyring or key backup (bad magic)", path);
    *is_backup = memcmp(d, KB_MAGIC, 8) == 0;
    if (len < (*is_backup ? KB_HDR : KR_HDR))
        return rhema_set_errbuf(err, RHEMA_ECORRUPT, "%s: truncated header", path);
    if (get_u32(d + 8) != (*is_backup ? KB_FORMAT : KR_FORMAT))
        return rhema_set_errbuf(err, RHEMA_ECORRUPT, "%s: unsupported format version %u", path,
                                get_u32(d + 8));
    h->kdf = get_u32(d + 12);
    h->opslimit = get_u64(d + 16);
    h->memlimit = get_u64(d + 24);
    memcpy(h->salt, d + 32, KR_SALT);
    if (h->kdf != KDF_KEYFILE && h->kdf != KDF_ARGON2ID)
        return rhema_set_errbuf(err, RHEMA_ECORRUPT, "%s: unknown key derivation %u", path, h->kdf);
    if (h->kdf == KDF_ARGON2ID && !kdf_limits_ok(h->opslimit, h->memlimit))
        return rhema_set_errbuf(err, RHEMA_ECORRUPT, "%s: Argon2id limits out of range", path);
    return 0;
}

/* The master for a file whose header says how it was derived (h may be NULL: a new file). */
static int master_load(const char *key_file, const char *env, const struct kdf_hdr *h,
                       const char *path, uint64_t new_ops, uint64_t new_mem,
                       struct rhema_master **out, char *err)
{
    int have_kf = key_file && *key_file, have_pp = env && *env;
    if (have_kf && have_pp)
        return rhema_set_errbuf(
            err, RHEMA_EINVAL,
            "set key_management.key_file or key_management.passphrase_env, not both");
    if (have_kf) {
        if (h && h->kdf == KDF_ARGON2ID)
            return rhema_set_errbuf(
                err, RHEMA_EINVAL,
                "%s was created from a passphrase (Argon2id): configure passphrase_env, "
                "not key_file",
                path);
        return rhema_master_from_key_file(key_file, out, err);
    }
    if (have_pp) {
        const char *pass = NULL;
        unsigned char salt[KR_SALT];
        int rc = passphrase_env(env, &pass, err);
        if (rc)
            return rc;
        if (h && h->kdf != KDF_ARGON2ID)
            return rhema_set_errbuf(
                err, RHEMA_EINVAL,
                "%s was created with a key file: configure key_file, not passphrase_env", path);
        if (h)
            return rhema_master_from_passphrase(pass, strlen(pass), h->salt, h->opslimit,
                                                h->memlimit, out, err);
        randombytes_buf(salt, sizeof salt);
        return rhema_master_from_passphrase(pass, strlen(pass), salt, new_ops, new_mem, out, err);
    }
    return rhema_set_errbuf(
        err, RHEMA_ENOTSUP,
        "key management is disabled: set advanced_features.key_management.key_file or "
        "passphrase_env");
}

int rhema_master_for_file(const char *path, const char *key_file, const char *passphrase_env_name,
                          struct rhema_master **out, char err[RHEMA_KEYRING_ERR_MAX])
{
    unsigned char *d = NULL;
    size_t len = 0;
    struct kdf_hdr h;
    int is_backup, rc;
    if (sodium_init() < 0)
        return rhema_set_errbuf(err, RHEMA_EINVAL, "libsodium failed to initialise");
    if ((rc = read_file(path, KR_FILE_MAX, &d, &len, err)))
        return rc;
    rc = read_kdf_hdr(d, len, path, &is_backup, &h, err);
    free(d);
    if (rc)
        return rc;
    return master_load(key_file, passphrase_env_name, &h, path, 0, 0, out, err);
}

static int keys_derive(const struct rhema_master *m, struct kr_keys **out, char *err)
{
    static const char ctx[crypto_kdf_CONTEXTBYTES] = {'r', 'h', 'e', 'm', 'a', 'k', 'r', '1'};
    struct kr_keys *k = sodium_malloc(sizeof *k);
    if (!k)
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of locked memory");
    crypto_kdf_derive_from_key(k->wrap, sizeof k->wrap, 1, ctx, m->key);
    crypto_kdf_derive_from_key(k->mac, sizeof k->mac, 2, ctx, m->key);
    crypto_kdf_derive_from_key(k->backup, sizeof k->backup, 3, ctx, m->key);
    *out = k;
    return 0;
}

/* ---- versions and states ---- */

static void version_free(struct kr_version *v)
{
    if (!v)
        return;
    if (v->key)
        sodium_free(v->key);
    free(v->sealed);
    free(v);
}

static void state_free(struct kr_state *st)
{
    if (!st)
        return;
    for (size_t i = 0; i < st->n; i++)
        version_free(st->v[i]);
    free(st->v);
    free(st);
}

static int state_push(struct kr_state *st, struct kr_version *v)
{
    if (st->n == st->cap) {
        size_t cap = st->cap ? 2 * st->cap : 8;
        struct kr_version **nv = realloc(st->v, cap * sizeof *nv);
        if (!nv)
            return RHEMA_ENOMEM;
        st->v = nv;
        st->cap = cap;
    }
    st->v[st->n++] = v;
    return 0;
}

static void version_ad(const struct kr_version *v, unsigned char ad[20])
{
    put_u32(ad, v->version);
    put_u32(ad + 4, v->cipher_id);
    put_u32(ad + 8, v->key_len);
    put_u64(ad + 12, v->created_ms);
}

/* A new version with a random key, sealed under the wrap key. */
static int version_new(const struct kr_keys *k, uint32_t version, uint32_t cipher_id,
                       uint32_t key_len, struct kr_version **out, char *err)
{
    unsigned char ad[20];
    struct kr_version *v = calloc(1, sizeof *v);
    if (v)
        randombytes_buf(v->nonce_salt, sizeof v->nonce_salt);
    if (!v)
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    v->version = version;
    v->cipher_id = cipher_id;
    v->key_len = key_len;
    v->created_ms = rhema_realtime_ms();
    v->key = sodium_malloc(key_len);
    v->sealed = malloc(key_len + KR_WRAP_TAG);
    if (!v->key || !v->sealed) {
        version_free(v);
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory for a key");
    }
    randombytes_buf(v->key, key_len);
    randombytes_buf(v->wrap_nonce, sizeof v->wrap_nonce);
    version_ad(v, ad);
    crypto_aead_xchacha20poly1305_ietf_encrypt(v->sealed, NULL, v->key, key_len, ad, sizeof ad,
                                               NULL, v->wrap_nonce, k->wrap);
    *out = v;
    return 0;
}

/* Serialize st.  exact: write the counters themselves (clean close), not the reservations. */
static int state_serialize(const struct kr_keys *k, struct kr_state *st, int exact,
                           unsigned char **out, size_t *outlen)
{
    size_t len = KR_HDR + KR_MAC;
    for (size_t i = 0; i < st->n; i++)
        len += KR_REC + st->v[i]->key_len + KR_WRAP_TAG;
    unsigned char *d = malloc(len), *p;
    if (!d)
        return RHEMA_ENOMEM;
    memcpy(d, KR_MAGIC, 8);
    put_u32(d + 8, KR_FORMAT);
    put_u32(d + 12, st->kdf);
    put_u64(d + 16, st->opslimit);
    put_u64(d + 24, st->memlimit);
    memcpy(d + 32, st->salt, KR_SALT);
    put_u32(d + 48, st->flags);
    put_u32(d + 52, st->version_floor);
    put_u64(d + 56, atomic_load(&st->last_rotation_ms));
    put_u64(d + 64, atomic_load(&st->last_backup_ms));
    put_u32(d + 72, (uint32_t)st->n);
    p = d + KR_HDR;
    for (size_t i = 0; i < st->n; i++) {
        struct kr_version *v = st->v[i];
        uint64_t r = exact ? atomic_load(&v->next) : atomic_load(&v->reserved);
        if (!exact && v->pending > r)
            r = v->pending;
        put_u32(p, v->version);
        put_u32(p + 4, v->cipher_id);
        put_u32(p + 8, v->key_len);
        put_u64(p + 12, v->created_ms);
        put_u64(p + 20, r);
        memcpy(p + 28, v->wrap_nonce, KR_WRAP_NONCE);
        memcpy(p + KR_REC, v->sealed, v->key_len + KR_WRAP_TAG);
        p += KR_REC + v->key_len + KR_WRAP_TAG;
    }
    crypto_generichash(p, KR_MAC, d, (size_t)(p - d), k->mac, sizeof k->mac);
    *out = d;
    *outlen = len;
    return 0;
}

/*
 * Parse and verify a keyring image: the MAC, then every record, unwrapping
 * every key.  `what` names the source in messages.
 */
static int state_parse(const struct kr_keys *k, const unsigned char *d, size_t len,
                       const char *what, struct kr_state **out, char *err)
{
    unsigned char mac[KR_MAC];
    struct kr_state *st = NULL;
    const unsigned char *p, *end;
    uint32_t n, prev = 0;
    int rc;

    if (len < 8 || memcmp(d, KR_MAGIC, 8) != 0)
        return rhema_set_errbuf(err, RHEMA_ECORRUPT, "%s is not a rhema keyring (bad magic)", what);
    if (len < KR_HDR + KR_MAC)
        return rhema_set_errbuf(err, RHEMA_ECORRUPT, "%s: truncated keyring", what);
    if (get_u32(d + 8) != KR_FORMAT)
        return rhema_set_errbuf(err, RHEMA_ECORRUPT, "%s: unsupported keyring format %u", what,
                                get_u32(d + 8));
    crypto_generichash(mac, sizeof mac, d, len - KR_MAC, k->mac, sizeof k->mac);
    if (sodium_memcmp(mac, d + len - KR_MAC, KR_MAC) != 0)
        return rhema_set_errbuf(err, RHEMA_ECORRUPT,
                                "%s: wrong master key or corrupt keyring (integrity check failed)",
                                what);
    st = calloc(1, sizeof *st);
    if (!st)
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    st->kdf = get_u32(d + 12);
    st->opslimit = get_u64(d + 16);
    st->memlimit = get_u64(d + 24);
    memcpy(st->salt, d + 32, KR_SALT);
    st->flags = get_u32(d + 48);
    st->version_floor = get_u32(d + 52);
    atomic_init(&st->last_rotation_ms, get_u64(d + 56));
    atomic_init(&st->last_backup_ms, get_u64(d + 64));
    n = get_u32(d + 72);
    if (n == 0) {
        rc = rhema_set_errbuf(err, RHEMA_ECORRUPT, "%s: the keyring holds no key version", what);
        goto fail;
    }
    p = d + KR_HDR;
    end = d + len - KR_MAC;
    for (uint32_t i = 0; i < n; i++) {
        struct kr_version *v;
        unsigned char ad[20];
        if ((size_t)(end - p) < KR_REC) {
            rc = rhema_set_errbuf(err, RHEMA_ECORRUPT, "%s: truncated key record %u", what, i + 1);
            goto fail;
        }
        uint32_t key_len = get_u32(p + 8);
        if (key_len < KR_KEY_MIN || key_len > KR_KEY_MAX ||
            (size_t)(end - p) < KR_REC + key_len + KR_WRAP_TAG) {
            rc = rhema_set_errbuf(err, RHEMA_ECORRUPT, "%s: bad key record %u", what, i + 1);
            goto fail;
        }
        v = calloc(1, sizeof *v);
        if (v)
            randombytes_buf(v->nonce_salt, sizeof v->nonce_salt);
        if (!v || state_push(st, v) != 0) {
            free(v);
            rc = rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
            goto fail;
        }
        v->version = get_u32(p);
        v->cipher_id = get_u32(p + 4);
        v->key_len = key_len;
        v->created_ms = get_u64(p + 12);
        atomic_init(&v->reserved, get_u64(p + 20));
        atomic_init(&v->next, get_u64(p + 20));
        v->pending = get_u64(p + 20);
        memcpy(v->wrap_nonce, p + 28, KR_WRAP_NONCE);
        if (v->version <= prev || v->cipher_id == 0 || v->cipher_id > 255) {
            rc = rhema_set_errbuf(err, RHEMA_ECORRUPT,
                                  "%s: inconsistent key versions (version %u after %u, cipher %u)",
                                  what, v->version, prev, v->cipher_id);
            goto fail;
        }
        prev = v->version;
        v->sealed = malloc(key_len + KR_WRAP_TAG);
        v->key = sodium_malloc(key_len);
        if (!v->sealed || !v->key) {
            rc = rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
            goto fail;
        }
        memcpy(v->sealed, p + KR_REC, key_len + KR_WRAP_TAG);
        version_ad(v, ad);
        if (crypto_aead_xchacha20poly1305_ietf_decrypt(v->key, NULL, NULL, v->sealed,
                                                       key_len + KR_WRAP_TAG, ad, sizeof ad,
                                                       v->wrap_nonce, k->wrap) != 0) {
            rc = rhema_set_errbuf(
                err, RHEMA_ECORRUPT,
                "%s: wrong master key or corrupt keyring (key version %u does not decrypt)", what,
                v->version);
            goto fail;
        }
        p += KR_REC + key_len + KR_WRAP_TAG;
    }
    if (p != end) {
        rc = rhema_set_errbuf(err, RHEMA_ECORRUPT, "%s: %zu trailing bytes after the key records",
                              what, (size_t)(end - p));
        goto fail;
    }
    *out = st;
    return 0;
fail:
    state_free(st);
    return rc;
}

static struct kr_version *newest(const struct kr_state *st)
{
    return st->v[st->n - 1];
}

static struct kr_version *find_version(const struct kr_state *st, uint32_t version)
{
    for (size_t i = st->n; i-- > 0;)
        if (st->v[i]->version == version)
            return st->v[i];
    return NULL;
}

/* Messages one version may encrypt: the cipher's limit, the configured one, the counter space. */
static uint64_t version_limit(const struct rhema_keyring *kr, const struct kr_version *v)
{
    const struct rhema_cipher_plugin *c = kr->by_id[v->cipher_id];
    uint64_t lim = UINT64_MAX;
    if (c && c->max_messages_per_key)
        lim = c->max_messages_per_key;
    if (kr->max_messages && kr->max_messages < lim)
        lim = kr->max_messages;
    if (c && !c->random_nonce_ok && c->nonce_bytes < 8) {
        uint64_t space = UINT64_C(1) << (8 * c->nonce_bytes);
        if (space < lim)
            lim = space;
    }
    return lim;
}

/* Write st to the keyring file, then publish its pending reservations.  persist_mu held. */
static int persist(struct rhema_keyring *kr, struct kr_state *st, char *err)
{
    unsigned char *img;
    size_t len;
    int rc = state_serialize(kr->keys, st, 0, &img, &len);
    if (rc)
        return rhema_set_errbuf(err, rc, "out of memory writing the keyring");
    rc = write_atomic(kr->path, img, len, err);
    free(img);
    if (rc)
        return rc;
    for (size_t i = 0; i < st->n; i++)
        if (st->v[i]->pending > atomic_load(&st->v[i]->reserved))
            atomic_store(&st->v[i]->reserved, st->v[i]->pending);
    return 0;
}

static void schedule_rotation(struct rhema_keyring *kr, uint64_t last)
{
    atomic_store(&kr->next_rotation_ms,
                 kr->rotation_enabled && kr->interval_ms ? last + kr->interval_ms : 0);
}

/*
 * Append version `number` (0: newest + 1, above version_floor) with the
 * configured cipher to st, its first reservation pending.  Not persisted.
 */
static int state_add_version(struct rhema_keyring *kr, struct kr_state *st, uint32_t number,
                             char *err)
{
    struct kr_version *v = NULL;
    int rc;
    if (number == 0) {
        number = st->n ? newest(st)->version : 0;
        if (st->version_floor > number)
            number = st->version_floor;
        if (number == UINT32_MAX)
            return rhema_set_errbuf(err, RHEMA_ETOOBIG, "no key version number left");
        number++;
    }
    rc = version_new(kr->keys, number, kr->cipher->cipher_id, kr->cipher->key_bytes, &v, err);
    if (rc)
        return rc;
    if (state_push(st, v) != 0) {
        version_free(v);
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    }
    uint64_t lim = version_limit(kr, v);
    v->pending = kr->block < lim ? kr->block : lim;
    return 0;
}

/* Rotate the live state.  Write lock held. */
static int rotate_locked(struct rhema_keyring *kr, uint32_t *new_version, char *err)
{
    int rc;
    pthread_mutex_lock(&kr->persist_mu);
    uint32_t flags = kr->st->flags;
    kr->st->flags &= ~KR_FLAG_ROTATE_ON_OPEN;
    uint64_t prev_rotation = atomic_load(&kr->st->last_rotation_ms);
    uint64_t now = rhema_realtime_ms();
    atomic_store(&kr->st->last_rotation_ms, now);
    rc = state_add_version(kr, kr->st, 0, err);
    if (rc == 0) {
        rc = persist(kr, kr->st, err);
        if (rc) {
            version_free(kr->st->v[--kr->st->n]);
        }
    }
    if (rc) {
        kr->st->flags = flags;
        atomic_store(&kr->st->last_rotation_ms, prev_rotation);
    } else {
        schedule_rotation(kr, now);
        if (new_version)
            *new_version = newest(kr->st)->version;
        rhema_log(RHEMA_LOG_NOTICE, "keyring", "key version %u created (cipher %u)",
                  newest(kr->st)->version, newest(kr->st)->cipher_id);
    }
    pthread_mutex_unlock(&kr->persist_mu);
    return rc;
}

/* ---- open and close ---- */

void rhema_cipher_table_fill(struct rhema_cipher_table *t, const struct rhema_plugin_registry *reg)
{
    const struct rhema_loaded_plugin *p;
    memset(t, 0, sizeof *t);
    for (size_t i = 0; (p = rhema_plugin_at(reg, i)); i++)
        if (p->kind == RHEMA_KIND_CIPHER && p->vt.cipher.cipher_id > 0 &&
            p->vt.cipher.cipher_id < 256)
            t->by_id[p->vt.cipher.cipher_id] = &p->vt.cipher;
}

int rhema_keyring_params_from_config(struct rhema_keyring_params *p, const struct rhema_config *cfg)
{
    const char *s;
    int64_t v;
    int b;
    memset(p, 0, sizeof *p);
    p->path = "keyring";
    if (rhema_config_get_string(cfg, "advanced_features.key_management.keyring_path", &s) == 0)
        p->path = s;
    if (rhema_config_get_string(cfg, "advanced_features.key_management.key_file", &s) == 0)
        p->key_file = s;
    if (rhema_config_get_string(cfg, "advanced_features.key_management.passphrase_env", &s) == 0)
        p->passphrase_env = s;
    p->min_decryption_version = 1;
    if (rhema_config_get_int(cfg, "advanced_features.key_management.min_decryption_version", &v) ==
        0)
        p->min_decryption_version = (uint32_t)v;
    if (rhema_config_get_bool(cfg, "advanced_features.key_management.rotation.enabled", &b) == 0)
        p->rotation_enabled = b;
    p->rotation_interval_hours = 720;
    if (rhema_config_get_int(cfg, "advanced_features.key_management.rotation.interval_hours", &v) ==
        0)
        p->rotation_interval_hours = (uint32_t)v;
    if (rhema_config_get_int(cfg, "advanced_features.key_management.rotation.max_messages_per_key",
                             &v) == 0)
        p->max_messages_per_key = (uint64_t)v;
    return (p->key_file && *p->key_file) || (p->passphrase_env && *p->passphrase_env);
}

static void keyring_free(struct rhema_keyring *kr)
{
    state_free(kr->st);
    if (kr->keys)
        sodium_free(kr->keys);
    rhema_master_free(kr->master);
    if (kr->lock_fd >= 0)
        close(kr->lock_fd); /* releases the flock */
    pthread_rwlock_destroy(&kr->lock);
    pthread_mutex_destroy(&kr->persist_mu);
    free(kr->lock_path);
    free(kr->path);
    free(kr);
}

static int cipher_usable(const struct rhema_cipher_plugin *c, char *err)
{
    if (!c)
        return rhema_set_errbuf(err, RHEMA_EINVAL, "no cipher plugin for the keyring");
    if (c->cipher_id == 0 || c->cipher_id > 255 || c->key_bytes < KR_KEY_MIN ||
        c->key_bytes > KR_KEY_MAX || c->nonce_bytes == 0 || c->nonce_bytes > 64 ||
        c->tag_bytes == 0 || !c->encrypt || !c->decrypt)
        return rhema_set_errbuf(
            err, RHEMA_EINVAL,
            "cipher '%s' cannot be used by the keyring (id %u, key %u, nonce %u, tag %u)",
            c->base.name ? c->base.name : "?", c->cipher_id, c->key_bytes, c->nonce_bytes,
            c->tag_bytes);
    return 0;
}

int rhema_keyring_open(const struct rhema_keyring_params *p, struct rhema_keyring **out,
                       char err[RHEMA_KEYRING_ERR_MAX])
{
    struct rhema_keyring *kr;
    unsigned char *img = NULL;
    size_t imglen = 0;
    struct kdf_hdr h;
    int have_file, is_backup, rc;
    const char *path = p->path && *p->path ? p->path : "keyring";

    if (sodium_init() < 0)
        return rhema_set_errbuf(err, RHEMA_EINVAL, "libsodium failed to initialise");
    if (!p->master && !(p->key_file && *p->key_file) && !(p->passphrase_env && *p->passphrase_env))
        return rhema_set_errbuf(
            err, RHEMA_ENOTSUP,
            "key management is disabled: set advanced_features.key_management.key_file "
            "or passphrase_env");
    if ((rc = cipher_usable(p->cipher, err)))
        return rc;
    kr = calloc(1, sizeof *kr);
    if (!kr)
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    kr->lock_fd = -1;
    pthread_rwlock_init(&kr->lock, NULL);
    pthread_mutex_init(&kr->persist_mu, NULL);
    kr->path = strdup(path);
    if (!kr->path) {
        rc = rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
        goto fail;
    }
    kr->cipher = p->cipher;
    if (p->ciphers)
        memcpy(kr->by_id, p->ciphers->by_id, sizeof kr->by_id);
    kr->by_id[p->cipher->cipher_id] = p->cipher;
    kr->rotation_enabled = p->rotation_enabled;
    kr->interval_ms = (uint64_t)p->rotation_interval_hours * 3600u * 1000u;
    kr->max_messages = p->max_messages_per_key;
    kr->block = p->reserve_block ? p->reserve_block : KR_BLOCK_DEFAULT;
    atomic_init(&kr->min_version, p->min_decryption_version ? p->min_decryption_version : 1);

    if ((rc = lock_keyring(kr->path, &kr->lock_fd, &kr->lock_path, err)))
        goto fail;
    rc = read_file(kr->path, KR_FILE_MAX, &img, &imglen, err);
    if (rc && rc != RHEMA_ENOTFOUND)
        goto fail;
    have_file = rc == 0;
    if (have_file && (rc = read_kdf_hdr(img, imglen, kr->path, &is_backup, &h, err)))
        goto fail;
    if (have_file && is_backup) {
        rc = rhema_set_errbuf(err, RHEMA_EINVAL,
                              "%s is a key backup, not a keyring: restore it instead", kr->path);
        goto fail;
    }
    /*
     * Argon2id limits for a new passphrase keyring: MODERATE (3 passes,
     * 256 MiB, about half a second).  The derivation runs once per start of
     * rhemad or rhemactl, never per request, and the key it yields guards
     * every data key at rest against offline guessing of the passphrase,
     * so the stronger of libsodium's two non-sensitive settings is worth
     * it; the memory is released as soon as the key is derived.
     */
    if (p->master)
        rc = master_copy(p->master, &kr->master, err);
    else
        rc = master_load(p->key_file, p->passphrase_env, have_file ? &h : NULL, kr->path,
                         p->kdf_opslimit ? p->kdf_opslimit : crypto_pwhash_OPSLIMIT_MODERATE,
                         p->kdf_memlimit ? p->kdf_memlimit : crypto_pwhash_MEMLIMIT_MODERATE,
                         &kr->master, err);
    if (rc)
        goto fail;
    if ((rc = keys_derive(kr->master, &kr->keys, err)))
        goto fail;

    if (have_file) {
        if ((rc = state_parse(kr->keys, img, imglen, kr->path, &kr->st, err)))
            goto fail;
    } else {
        kr->st = calloc(1, sizeof *kr->st);
        if (!kr->st) {
            rc = rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
            goto fail;
        }
        kr->st->kdf = kr->master->kdf;
        kr->st->opslimit = kr->master->opslimit;
        kr->st->memlimit = kr->master->memlimit;
        memcpy(kr->st->salt, kr->master->salt, KR_SALT);
        if ((rc = rotate_locked(kr, NULL, err)))
            goto fail;
    }
    if (newest(kr->st)->cipher_id != kr->cipher->cipher_id ||
        (kr->st->flags & KR_FLAG_ROTATE_ON_OPEN)) {
        if ((rc = rotate_locked(kr, NULL, err)))
            goto fail;
    }
    if (atomic_load(&kr->min_version) > newest(kr->st)->version) {
        rc = rhema_set_errbuf(
            err, RHEMA_EINVAL,
            "min_decryption_version %u is above the newest key version %u: nothing "
            "could be decrypted",
            atomic_load(&kr->min_version), newest(kr->st)->version);
        goto fail;
    }
    schedule_rotation(kr, atomic_load(&kr->st->last_rotation_ms));
    free(img);
    *out = kr;
    return 0;
fail:
    free(img);
    keyring_free(kr);
    return rc;
}

static void keyring_close(struct rhema_keyring *kr, int sync)
{
    if (!kr)
        return;
    if (sync) {
        unsigned char *img;
        size_t len;
        char err[RHEMA_KEYRING_ERR_MAX];
        pthread_mutex_lock(&kr->persist_mu);
        if (state_serialize(kr->keys, kr->st, 1, &img, &len) == 0) {
            if (write_atomic(kr->path, img, len, err) != 0)
                rhema_log(RHEMA_LOG_WARN, "keyring", "final write: %s", err);
            free(img);
        }
        pthread_mutex_unlock(&kr->persist_mu);
    }
    keyring_free(kr);
}

void rhema_keyring_close(struct rhema_keyring *kr)
{
    keyring_close(kr, 1);
}
void rhema_keyring_close_nosync(struct rhema_keyring *kr)
{
    keyring_close(kr, 0);
}

/* ---- rotation ---- */

int rhema_keyring_rotate(struct rhema_keyring *kr, uint32_t *new_version,
                         char err[RHEMA_KEYRING_ERR_MAX])
{
    pthread_rwlock_wrlock(&kr->lock);
    int rc = rotate_locked(kr, new_version, err);
    pthread_rwlock_unlock(&kr->lock);
    return rc;
}

/* Rotate when `version` is still the newest (one rotation for many racing callers). */
static int rotate_if_newest(struct rhema_keyring *kr, uint32_t version, char *err)
{
    int rc = 0;
    pthread_rwlock_wrlock(&kr->lock);
    if (newest(kr->st)->version == version)
        rc = rotate_locked(kr, NULL, err);
    pthread_rwlock_unlock(&kr->lock);
    return rc;
}

/* Rotate when the interval has passed at now_ms (checked again under the lock). */
static int rotate_if_due(struct rhema_keyring *kr, uint64_t now_ms, int *rotated, char *err)
{
    int rc = 0;
    pthread_rwlock_wrlock(&kr->lock);
    uint64_t due = atomic_load(&kr->next_rotation_ms);
    if (due && now_ms >= due) {
        rc = rotate_locked(kr, NULL, err);
        if (rc == 0 && rotated)
            *rotated = 1;
    }
    pthread_rwlock_unlock(&kr->lock);
    return rc;
}

int rhema_keyring_maintain(struct rhema_keyring *kr, int *rotated, char err[RHEMA_KEYRING_ERR_MAX])
{
    return rhema_keyring_maintain_at(kr, rhema_realtime_ms(), rotated, err);
}

int rhema_keyring_maintain_at(struct rhema_keyring *kr, uint64_t now_ms, int *rotated,
                              char err[RHEMA_KEYRING_ERR_MAX])
{
    if (rotated)
        *rotated = 0;
    return rotate_if_due(kr, now_ms, rotated, err);
}

int rhema_keyring_set_min_decryption_version(struct rhema_keyring *kr, uint32_t v,
                                             char err[RHEMA_KEYRING_ERR_MAX])
{
    int rc = 0;
    if (v == 0)
        v = 1;
    pthread_rwlock_rdlock(&kr->lock);
    if (v > newest(kr->st)->version)
        rc = rhema_set_errbuf(err, RHEMA_EINVAL,
                              "min_decryption_version %u is above the newest key version %u", v,
                              newest(kr->st)->version);
    else
        atomic_store(&kr->min_version, v);
    pthread_rwlock_unlock(&kr->lock);
    return rc;
}

/* ---- messages ---- */

#define COUNTER_LIMIT 1

/*
 * Take the next counter value of v, reserving (and persisting) a new block
 * first when the reservation is used up.  Read lock held.
 * COUNTER_LIMIT when the version has encrypted its limit.
 */
static int take_counter(struct rhema_keyring *kr, struct kr_version *v, uint64_t *ctr, char *err)
{
    uint64_t lim = version_limit(kr, v);
    for (;;) {
        uint64_t n = atomic_load(&v->next);
        if (n >= lim)
            return COUNTER_LIMIT;
        if (n >= atomic_load(&v->reserved)) {
            int rc = 0;
            pthread_mutex_lock(&kr->persist_mu);
            if (atomic_load(&v->reserved) <= n) {
                uint64_t want = n + kr->block;
                if (want > lim || want < n)
                    want = lim;
                v->pending = want;
                rc = persist(kr, kr->st, err);
                if (rc)
                    v->pending = atomic_load(&v->reserved);
            }
            pthread_mutex_unlock(&kr->persist_mu);
            if (rc)
                return rc;
            continue;
        }
        if (atomic_compare_exchange_weak(&v->next, &n, n + 1)) {
            *ctr = n;
            return 0;
        }
    }
}

/* header || caller ad, as one buffer (or the header alone). */
static int build_ad(const unsigned char *hdr, size_t hlen, const void *ad, size_t adlen,
                    unsigned char **buf, const unsigned char **full, size_t *full_len)
{
    *buf = NULL;
    if (adlen == 0) {
        *full = hdr;
        *full_len = hlen;
        return 0;
    }
    if (adlen > SIZE_MAX - hlen || !(*buf = malloc(hlen + adlen)))
        return RHEMA_ENOMEM;
    memcpy(*buf, hdr, hlen);
    memcpy(*buf + hlen, ad, adlen);
    *full = *buf;
    *full_len = hlen + adlen;
    return 0;
}

/*
 * Encrypt under the newest version into *out: a malloc'd envelope, or, when
 * out->data is set on entry, into that buffer of out->len bytes (the caller's
 * own; RHEMA_ETOOBIG when it is too small).
 */
static int do_encrypt(struct rhema_keyring *kr, const void *pt, size_t len, const void *ad,
                      size_t adlen, struct rhema_buf *out, uint32_t *version_out, char *err)
{
    unsigned char *ext = out ? out->data : NULL;
    size_t ext_cap = out ? out->len : 0;
    static const unsigned char empty[1];
    if ((!pt && len) || (!ad && adlen) || !out)
        return rhema_set_errbuf(err, RHEMA_EINVAL, "bad arguments");
    for (int attempt = 0; attempt < 8; attempt++) {
        uint64_t due = atomic_load(&kr->next_rotation_ms);
        if (due && rhema_realtime_ms() >= due) {
            char rerr[RHEMA_KEYRING_ERR_MAX];
            if (rotate_if_due(kr, rhema_realtime_ms(), NULL, rerr) != 0) {
                /* keep encrypting with the current key; try again in a minute */
                rhema_log(RHEMA_LOG_WARN, "keyring", "scheduled rotation failed: %s", rerr);
                atomic_store(&kr->next_rotation_ms, rhema_realtime_ms() + 60000u);
            }
        }
        pthread_rwlock_rdlock(&kr->lock);
        struct kr_version *v = newest(kr->st);
        const struct rhema_cipher_plugin *c = kr->by_id[v->cipher_id];
        uint64_t ctr = 0;
        /* every message takes a counter value: the nonce (counter ciphers) and the count */
        int rc = take_counter(kr, v, &ctr, err);
        if (rc == COUNTER_LIMIT) {
            uint32_t ver = v->version;
            uint64_t lim = version_limit(kr, v);
            pthread_rwlock_unlock(&kr->lock);
            if (!kr->rotation_enabled)
                return rhema_set_errbuf(
                    err, RHEMA_ETOOBIG,
                    "key version %u has encrypted its limit of %llu messages; rotate "
                    "the key (rotation.enabled is off)",
                    ver, (unsigned long long)lim);
            if ((rc = rotate_if_newest(kr, ver, err)))
                return rc;
            continue;
        }
        if (rc) {
            pthread_rwlock_unlock(&kr->lock);
            return rc;
        }
        size_t hlen = RHEMA_ENVELOPE_FIXED + c->nonce_bytes;
        if (len > SIZE_MAX - hlen - c->tag_bytes) {
            pthread_rwlock_unlock(&kr->lock);
            return rhema_set_errbuf(err, RHEMA_ETOOBIG, "message too large");
        }
        if (ext && ext_cap < hlen + len + c->tag_bytes) {
            pthread_rwlock_unlock(&kr->lock);
            return rhema_set_errbuf(err, RHEMA_ETOOBIG,
                                    "the envelope needs %zu bytes, the buffer has %zu",
                                    hlen + len + c->tag_bytes, ext_cap);
        }
        unsigned char *env = ext ? ext : malloc(hlen + len + c->tag_bytes), *adbuf = NULL;
        const unsigned char *full;
        size_t full_len;
        if (!env || build_ad(env, hlen, ad, adlen, &adbuf, &full, &full_len) != 0) {
            pthread_rwlock_unlock(&kr->lock);
            if (!ext)
                free(env);
            return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
        }
        env[0] = RHEMA_ENVELOPE_MAGIC0;
        env[1] = RHEMA_ENVELOPE_MAGIC1;
        env[2] = RHEMA_ENVELOPE_VERSION;
        env[3] = (unsigned char)c->cipher_id;
        put_u32(env + 4, v->version);
        unsigned char *nonce = env + RHEMA_ENVELOPE_FIXED;
        if (c->random_nonce_ok) {
            /*
             * The message's counter value (unique for the version, reserved
             * on disk before use) then random bytes drawn once per version:
             * unique without a getrandom() system call per message.
             */
            memcpy(nonce + 8, v->nonce_salt, c->nonce_bytes - 8);
            for (uint32_t i = 0; i < 8; i++)
                nonce[i] = (unsigned char)(ctr >> (8 * i));
        } else {
            memset(nonce, 0, c->nonce_bytes);
            for (uint32_t i = 0; i < 8 && i < c->nonce_bytes; i++)
                nonce[i] = (unsigned char)(ctr >> (8 * i));
        }
        if (adbuf) /* the nonce is part of the header: copy it again */
            memcpy(adbuf, env, hlen);
        rc = c->encrypt(v->key, nonce, full, full_len, len ? pt : empty, len, env + hlen);
        uint32_t ver = v->version;
        pthread_rwlock_unlock(&kr->lock);
        free(adbuf);
        if (rc) {
            if (!ext)
                free(env);
            return rhema_set_errbuf(err, rc, "cipher '%s' refused to encrypt (%s)", c->base.name,
                                    rhema_strerror(rc));
        }
        out->data = env;
        out->len = hlen + len + c->tag_bytes;
        if (version_out)
            *version_out = ver;
        return 0;
    }
    return rhema_set_errbuf(err, RHEMA_EIO,
                            "no key version with room for a message after rotating");
}

int rhema_keyring_encrypt(struct rhema_keyring *kr, const void *pt, size_t len, const void *ad,
                          size_t adlen, struct rhema_buf *out, char err[RHEMA_KEYRING_ERR_MAX])
{
    if (out) {
        out->data = NULL;
        out->len = 0;
    }
    return do_encrypt(kr, pt, len, ad, adlen, out, NULL, err);
}

int rhema_keyring_encrypt_into(struct rhema_keyring *kr, const void *pt, size_t len,
                               const void *ad, size_t adlen, void *dst, size_t cap, size_t *n,
                               char err[RHEMA_KEYRING_ERR_MAX])
{
    struct rhema_buf b = {dst, cap};
    if (!dst)
        return rhema_set_errbuf(err, RHEMA_EINVAL, "bad arguments");
    int rc = do_encrypt(kr, pt, len, ad, adlen, &b, NULL, err);
    if (rc == 0)
        *n = b.len;
    return rc;
}

int rhema_envelope_key_version(const void *env, size_t len, uint32_t *version)
{
    const unsigned char *d = env;
    if (len < RHEMA_ENVELOPE_FIXED || d[0] != RHEMA_ENVELOPE_MAGIC0 ||
        d[1] != RHEMA_ENVELOPE_MAGIC1 || d[2] != RHEMA_ENVELOPE_VERSION)
        return RHEMA_ECORRUPT;
    *version = get_u32(d + 4);
    return 0;
}

/*
 * Open an envelope into a new buffer: malloc'd, or sodium_malloc'd when
 * `locked` (the caller then sodium_free()s it).
 */
static int do_decrypt(struct rhema_keyring *kr, const void *envp, size_t len, const void *ad,
                      size_t adlen, int locked, unsigned char **pt_out, size_t *pt_len, char *err)
{
    const unsigned char *d = envp;
    unsigned char *pt = NULL, *adbuf = NULL;
    const unsigned char *full;
    size_t full_len;
    int rc;

    if ((!d && len) || (!ad && adlen))
        return rhema_set_errbuf(err, RHEMA_EINVAL, "bad arguments");
    if ((len >= 1 && d[0] != RHEMA_ENVELOPE_MAGIC0) || (len >= 2 && d[1] != RHEMA_ENVELOPE_MAGIC1))
        return rhema_set_errbuf(err, RHEMA_ECORRUPT, "not an encrypted envelope (bad magic)");
    if (len < RHEMA_ENVELOPE_FIXED)
        return rhema_set_errbuf(err, RHEMA_ECORRUPT, "truncated header (%zu bytes)", len);
    if (d[2] != RHEMA_ENVELOPE_VERSION)
        return rhema_set_errbuf(err, RHEMA_ECORRUPT, "unsupported envelope format version %u",
                                d[2]);
    uint32_t version = get_u32(d + 4);
    pthread_rwlock_rdlock(&kr->lock);
    struct kr_version *v = find_version(kr->st, version);
    const struct rhema_cipher_plugin *c = NULL;
    uint32_t min = atomic_load(&kr->min_version);
    if (!v) {
        rc = rhema_set_errbuf(err, RHEMA_ECORRUPT, "unknown key version %u", version);
        goto out;
    }
    if (version < min) {
        rc = rhema_set_errbuf(err, RHEMA_ECORRUPT,
                              "key version %u is below min_decryption_version %u", version, min);
        goto out;
    }
    if (d[3] != v->cipher_id) {
        rc = rhema_set_errbuf(err, RHEMA_ECORRUPT,
                              "cipher id %u does not match key version %u (cipher %u)", d[3],
                              version, v->cipher_id);
        goto out;
    }
    c = kr->by_id[v->cipher_id];
    if (!c) {
        rc = rhema_set_errbuf(err, RHEMA_ENOTSUP, "cipher id %u of key version %u is not loaded",
                              v->cipher_id, version);
        goto out;
    }
    size_t hlen = RHEMA_ENVELOPE_FIXED + c->nonce_bytes;
    if (len < hlen) {
        rc = rhema_set_errbuf(err, RHEMA_ECORRUPT, "truncated header (%zu bytes)", len);
        goto out;
    }
    if (len < hlen + c->tag_bytes) {
        rc = rhema_set_errbuf(err, RHEMA_ECORRUPT, "truncated ciphertext");
        goto out;
    }
    size_t n = len - hlen - c->tag_bytes;
    pt = locked ? sodium_malloc(n ? n : 1) : malloc(n ? n : 1);
    if (!pt || build_ad(d, hlen, ad, adlen, &adbuf, &full, &full_len) != 0) {
        rc = rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
        goto out;
    }
    rc = c->decrypt(v->key, d + RHEMA_ENVELOPE_FIXED, full, full_len, d + hlen, len - hlen, pt);
    if (rc == RHEMA_ECORRUPT)
        rhema_set_errbuf(err, rc,
                         "authentication failed (tampered, truncated, or other associated data)");
    else if (rc)
        rhema_set_errbuf(err, rc, "cipher '%s' refused to decrypt (%s)", c->base.name,
                         rhema_strerror(rc));
    else {
        *pt_out = pt;
        *pt_len = n;
        pt = NULL;
    }
out:
    pthread_rwlock_unlock(&kr->lock);
    free(adbuf);
    if (pt) {
        if (locked)
            sodium_free(pt);
        else
            free(pt);
    }
    return rc;
}

int rhema_keyring_decrypt(struct rhema_keyring *kr, const void *env, size_t len, const void *ad,
                          size_t adlen, struct rhema_buf *out, char err[RHEMA_KEYRING_ERR_MAX])
{
    unsigned char *pt;
    size_t n;
    int rc = do_decrypt(kr, env, len, ad, adlen, 0, &pt, &n, err);
    if (rc == 0) {
        out->data = pt;
        out->len = n;
    }
    return rc;
}

int rhema_keyring_rewrap(struct rhema_keyring *kr, const void *env, size_t len, const void *ad,
                         size_t adlen, struct rhema_buf *out, uint32_t *version_out,
                         char err[RHEMA_KEYRING_ERR_MAX])
{
    unsigned char *pt;
    size_t n;
    int rc = do_decrypt(kr, env, len, ad, adlen, 1, &pt, &n, err);
    if (rc)
        return rc;
    out->data = NULL; /* a malloc'd envelope, not the caller's buffer */
    out->len = 0;
    rc = do_encrypt(kr, pt, n, ad, adlen, out, version_out, err);
    sodium_free(pt); /* wipes */
    return rc;
}

/* ---- stats ---- */

int rhema_keyring_stats(struct rhema_keyring *kr, struct rhema_keyring_stats *s)
{
    memset(s, 0, sizeof *s);
    pthread_rwlock_rdlock(&kr->lock);
    struct kr_state *st = kr->st;
    s->v = calloc(st->n, sizeof *s->v);
    if (!s->v) {
        pthread_rwlock_unlock(&kr->lock);
        return RHEMA_ENOMEM;
    }
    s->min_decryption_version = atomic_load(&kr->min_version);
    s->versions = st->n;
    for (size_t i = 0; i < st->n; i++) {
        const struct kr_version *v = st->v[i];
        s->v[i].version = v->version;
        s->v[i].cipher_id = v->cipher_id;
        s->v[i].created_at_ms = v->created_ms;
        s->v[i].encryptions = atomic_load(&v->next);
        s->v[i].limit = version_limit(kr, v);
        s->v[i].decrypts = v->version >= s->min_decryption_version;
        if (s->v[i].decrypts)
            s->active_versions++;
    }
    s->current_version = newest(st)->version;
    s->current_cipher_id = newest(st)->cipher_id;
    s->last_rotation_ms = atomic_load(&st->last_rotation_ms);
    s->last_backup_ms = atomic_load(&st->last_backup_ms);
    s->next_rotation_ms = atomic_load(&kr->next_rotation_ms);
    pthread_rwlock_unlock(&kr->lock);
    return 0;
}

void rhema_keyring_stats_release(struct rhema_keyring_stats *s)
{
    free(s->v);
    s->v = NULL;
}

/* ---- backups ---- */

int rhema_keyring_backup(struct rhema_keyring *kr, const char *path,
                         char err[RHEMA_KEYRING_ERR_MAX])
{
    return rhema_keyring_backup_at(kr, AT_FDCWD, path, 0, err);
}

int rhema_keyring_backup_at(struct rhema_keyring *kr, int dirfd, const char *name, unsigned flags,
                            char err[RHEMA_KEYRING_ERR_MAX])
{
    unsigned char *img = NULL, *arc = NULL;
    size_t len = 0;
    int rc;
    pthread_rwlock_rdlock(&kr->lock);
    pthread_mutex_lock(&kr->persist_mu);
    struct kr_state *st = kr->st;
    rc = state_serialize(kr->keys, st, 0, &img, &len);
    if (rc) {
        rhema_set_errbuf(err, rc, "out of memory");
        goto out;
    }
    arc = malloc(KB_HDR + len + crypto_aead_xchacha20poly1305_ietf_ABYTES);
    if (!arc) {
        rc = rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
        goto out;
    }
    uint64_t now = rhema_realtime_ms();
    memcpy(arc, KB_MAGIC, 8);
    put_u32(arc + 8, KB_FORMAT);
    put_u32(arc + 12, st->kdf);
    put_u64(arc + 16, st->opslimit);
    put_u64(arc + 24, st->memlimit);
    memcpy(arc + 32, st->salt, KR_SALT);
    put_u64(arc + 48, now);
    randombytes_buf(arc + 56, 24);
    crypto_aead_xchacha20poly1305_ietf_encrypt(arc + KB_HDR, NULL, img, len, arc, KB_HDR, NULL,
                                               arc + 56, kr->keys->backup);
    rc = write_atomic_at(dirfd, name, flags, arc,
                         KB_HDR + len + crypto_aead_xchacha20poly1305_ietf_ABYTES, err);
    if (rc)
        goto out;
    atomic_store(&st->last_backup_ms, now);
    {
        char perr[RHEMA_KEYRING_ERR_MAX];
        if (persist(kr, st, perr) != 0) /* only the last_backup stamp is lost */
            rhema_log(RHEMA_LOG_WARN, "keyring", "backup written, keyring not updated: %s", perr);
    }
out:
    pthread_mutex_unlock(&kr->persist_mu);
    pthread_rwlock_unlock(&kr->lock);
    free(img);
    free(arc);
    return rc;
}

/* Read, authenticate and parse an archive completely. */
static int backup_load(const struct kr_keys *k, int dirfd, const char *path, unsigned flags,
                       struct kr_state **out, uint64_t *created, char *err)
{
    unsigned char *arc = NULL, *img = NULL;
    size_t len = 0;
    struct kdf_hdr h;
    int is_backup, rc;
    if ((rc = read_file_at(dirfd, path, flags, KR_FILE_MAX, &arc, &len, err)))
        return rc == RHEMA_ENOTFOUND
                   ? rhema_set_errbuf(err, RHEMA_ENOTFOUND, "backup %s: no such file", path)
                   : rc;
    if ((rc = read_kdf_hdr(arc, len, path, &is_backup, &h, err)))
        goto out;
    if (!is_backup) {
        rc = rhema_set_errbuf(err, RHEMA_ECORRUPT, "%s is a keyring, not a key backup", path);
        goto out;
    }
    if (len < KB_HDR + crypto_aead_xchacha20poly1305_ietf_ABYTES + KR_HDR + KR_MAC) {
        rc = rhema_set_errbuf(err, RHEMA_ECORRUPT, "backup %s is truncated", path);
        goto out;
    }
    size_t ilen = len - KB_HDR - crypto_aead_xchacha20poly1305_ietf_ABYTES;
    img = malloc(ilen);
    if (!img) {
        rc = rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
        goto out;
    }
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(img, NULL, NULL, arc + KB_HDR, len - KB_HDR, arc,
                                                   KB_HDR, arc + 56, k->backup) != 0) {
        rc = rhema_set_errbuf(
            err, RHEMA_ECORRUPT,
            "backup %s does not authenticate under this master key (corrupt, truncated "
            "or from another keyring)",
            path);
        goto out;
    }
    if ((rc = state_parse(k, img, ilen, path, out, err)))
        goto out;
    if ((*out)->kdf != h.kdf || memcmp((*out)->salt, h.salt, KR_SALT) != 0) {
        state_free(*out);
        *out = NULL;
        rc = rhema_set_errbuf(err, RHEMA_ECORRUPT,
                              "backup %s: its header does not match its keyring", path);
        goto out;
    }
    if (created)
        *created = get_u64(arc + 48);
out:
    free(img); /* keys in it are sealed: nothing to wipe */
    free(arc);
    return rc;
}

int rhema_keyring_verify_backup(const char *path, const struct rhema_master *m,
                                struct rhema_keyring_backup_info *info,
                                char err[RHEMA_KEYRING_ERR_MAX])
{
    struct kr_keys *k = NULL;
    struct kr_state *st = NULL;
    uint64_t created = 0;
    int rc;
    if (sodium_init() < 0)
        return rhema_set_errbuf(err, RHEMA_EINVAL, "libsodium failed to initialise");
    if ((rc = keys_derive(m, &k, err)))
        return rc;
    rc = backup_load(k, AT_FDCWD, path, 0, &st, &created, err);
    if (rc == 0 && info) {
        info->created_at_ms = created;
        info->versions = st->n;
        info->newest_version = newest(st)->version;
    }
    state_free(st);
    sodium_free(k);
    return rc;
}

/* A copy of version o (key, sealed form, counters) for another state. */
static int version_copy(const struct kr_version *o, struct kr_version **out)
{
    struct kr_version *v = calloc(1, sizeof *v);
    if (!v)
        return RHEMA_ENOMEM;
    v->version = o->version;
    v->cipher_id = o->cipher_id;
    v->key_len = o->key_len;
    v->created_ms = o->created_ms;
    memcpy(v->wrap_nonce, o->wrap_nonce, sizeof v->wrap_nonce);
    randombytes_buf(v->nonce_salt, sizeof v->nonce_salt);
    v->key = sodium_malloc(o->key_len);
    v->sealed = malloc(o->key_len + KR_WRAP_TAG);
    if (!v->key || !v->sealed) {
        version_free(v);
        return RHEMA_ENOMEM;
    }
    memcpy(v->key, o->key, o->key_len);
    memcpy(v->sealed, o->sealed, o->key_len + KR_WRAP_TAG);
    atomic_init(&v->next, atomic_load(&o->next));
    atomic_init(&v->reserved, atomic_load(&o->reserved));
    v->pending = o->pending;
    *out = v;
    return 0;
}

static int by_version(const void *a, const void *b)
{
    uint32_t x = (*(struct kr_version *const *)a)->version;
    uint32_t y = (*(struct kr_version *const *)b)->version;
    return x < y ? -1 : x > y;
}

/*
 * Merge the keyring being replaced (`old`, may be NULL) into the restored
 * state, so that a restore never makes data unreadable: every version old
 * has and the archive lacks (made after the backup) is kept; a key both
 * have never gets a lower counter reservation than the live one; new
 * versions are numbered above both.  RHEMA_ECONFLICT (nothing changed in
 * old) when one version number holds different keys on the two sides.
 */
static int restore_merge(struct kr_state *st, const struct kr_state *old, char *err)
{
    uint32_t floor = st->version_floor;
    if (!old) {
        st->version_floor = floor;
        return 0;
    }
    for (size_t i = 0; i < old->n; i++) {
        const struct kr_version *o = old->v[i];
        struct kr_version *v = find_version(st, o->version);
        if (v && (o->key_len != v->key_len || sodium_memcmp(o->key, v->key, v->key_len) != 0))
            return rhema_set_errbuf(
                err, RHEMA_ECONFLICT,
                "key version %u differs between the backup and the live keyring: "
                "restoring it would make what the live version encrypted unreadable",
                o->version);
    }
    for (size_t i = 0; i < old->n; i++) {
        const struct kr_version *o = old->v[i];
        struct kr_version *v = find_version(st, o->version);
        if (!v) { /* made after the backup: kept */
            int rc = version_copy(o, &v);
            if (rc == 0 && (rc = state_push(st, v)) != 0)
                version_free(v);
            if (rc)
                return rhema_set_errbuf(err, rc, "out of memory");
            continue;
        }
        uint64_t r = atomic_load(&o->reserved), n = atomic_load(&o->next);
        if (o->pending > r)
            r = o->pending;
        if (n > r)
            r = n;
        if (r > atomic_load(&v->reserved)) {
            atomic_store(&v->reserved, r);
            atomic_store(&v->next, r);
            v->pending = r;
        }
    }
    qsort(st->v, st->n, sizeof *st->v, by_version);
    if (newest(old)->version > floor)
        floor = newest(old)->version;
    if (old->version_floor > floor)
        floor = old->version_floor;
    st->version_floor = floor;
    return 0;
}

int rhema_keyring_restore(struct rhema_keyring *kr, const char *path,
                          char err[RHEMA_KEYRING_ERR_MAX])
{
    return rhema_keyring_restore_at(kr, AT_FDCWD, path, 0, err);
}

int rhema_keyring_restore_at(struct rhema_keyring *kr, int dirfd, const char *path,
                             unsigned flags, char err[RHEMA_KEYRING_ERR_MAX])
{
    struct kr_state *st = NULL, *old;
    int rc;
    /* verify everything before taking any lock or touching the live keyring */
    if ((rc = backup_load(kr->keys, dirfd, path, flags, &st, NULL, err)))
        /* confined: a file that cannot be used is one answer, whatever the reason */
        return (flags & RHEMA_KEYRING_CONFINED) && rc != RHEMA_ENOMEM ? RHEMA_ECORRUPT : rc;
    pthread_rwlock_wrlock(&kr->lock);
    pthread_mutex_lock(&kr->persist_mu);
    old = kr->st;
    if ((rc = restore_merge(st, old, err)) != 0)
        goto unlock; /* the live keyring is untouched */
    /* keep how the live master is derived, and the live backup stamp */
    st->kdf = old->kdf;
    st->opslimit = old->opslimit;
    st->memlimit = old->memlimit;
    memcpy(st->salt, old->salt, KR_SALT);
    st->flags = 0;
    atomic_store(&st->last_backup_ms, atomic_load(&old->last_backup_ms));
    uint64_t now = rhema_realtime_ms();
    atomic_store(&st->last_rotation_ms, now);
    /* no restored counter key encrypts again: a fresh version first */
    if ((rc = state_add_version(kr, st, 0, err)) == 0 && (rc = persist(kr, st, err)) == 0) {
        kr->st = st;
        st = old;
        schedule_rotation(kr, now);
        if (atomic_load(&kr->min_version) > newest(kr->st)->version)
            atomic_store(&kr->min_version, newest(kr->st)->version);
        rhema_log(RHEMA_LOG_NOTICE, "keyring",
                  "restored %zu key versions from %s; version %u encrypts", kr->st->n - 1, path,
                  newest(kr->st)->version);
    }
unlock:
    pthread_mutex_unlock(&kr->persist_mu);
    pthread_rwlock_unlock(&kr->lock);
    state_free(st); /* the old state on success, the rejected one on failure */
    return rc;
}

int rhema_keyring_restore_file(const struct rhema_master *m, const char *archive,
                               const char *keyring_path, char err[RHEMA_KEYRING_ERR_MAX])
{
    struct kr_keys *k = NULL;
    struct kr_state *st = NULL, *old = NULL;
    unsigned char *img = NULL;
    size_t len = 0;
    char *lock_path = NULL;
    int lock_fd = -1, rc;
    if (sodium_init() < 0)
        return rhema_set_errbuf(err, RHEMA_EINVAL, "libsodium failed to initialise");
    if ((rc = keys_derive(m, &k, err)))
        return rc;
    if ((rc = backup_load(k, AT_FDCWD, archive, 0, &st, NULL, err)))
        goto out;
    if ((rc = lock_keyring(keyring_path, &lock_fd, &lock_path, err))) {
        if (rc == RHEMA_ECONFLICT)
            rhema_set_errbuf(err, rc,
                             "keyring %s is open in a running rhemad: use POST /v1/keys/restore",
                             keyring_path);
        goto out;
    }
    /* the keyring being replaced, when it still reads under this master */
    if (read_file(keyring_path, KR_FILE_MAX, &img, &len, NULL) == 0) {
        if (state_parse(k, img, len, keyring_path, &old, NULL) != 0)
            old = NULL;
        free(img);
        img = NULL;
    }
    if ((rc = restore_merge(st, old, err)) != 0)
        goto out;
    if (old) {
        st->kdf = old->kdf;
        st->opslimit = old->opslimit;
        st->memlimit = old->memlimit;
        memcpy(st->salt, old->salt, KR_SALT);
        atomic_store(&st->last_backup_ms, atomic_load(&old->last_backup_ms));
    }
    st->flags |= KR_FLAG_ROTATE_ON_OPEN;
    if ((rc = state_serialize(k, st, 0, &img, &len))) {
        rhema_set_errbuf(err, rc, "out of memory");
        goto out;
    }
    rc = write_atomic(keyring_path, img, len, err);
out:
    free(img);
    state_free(old);
    state_free(st);
    if (lock_fd >= 0)
        close(lock_fd);
    free(lock_path);
    sodium_free(k);
    return rc;
}
