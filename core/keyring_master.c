/*
 * keyring_master -- the master key (keyring.h): from a key file or by
 * Argon2id from a passphrase, the KDF fields of a keyring or archive
 * header, and the subkeys derived from the master.
 */
#include "rhema_build.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "keyring.h"
#include "keyring_internal.h"
#include "util.h"

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

int kr_master_copy(const struct rhema_master *src, struct rhema_master **out, char *err)
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

int kr_read_kdf_hdr(const unsigned char *d, size_t len, const char *path, int *is_backup,
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
int kr_master_load(const char *key_file, const char *env, const struct kdf_hdr *h, const char *path,
                   uint64_t new_ops, uint64_t new_mem, struct rhema_master **out, char *err)
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
    if ((rc = kr_read_file(path, KR_FILE_MAX, &d, &len, err)))
        return rc;
    rc = kr_read_kdf_hdr(d, len, path, &is_backup, &h, err);
    free(d);
    if (rc)
        return rc;
    return kr_master_load(key_file, passphrase_env_name, &h, path, 0, 0, out, err);
}

int kr_keys_derive(const struct rhema_master *m, struct kr_keys **out, char *err)
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
