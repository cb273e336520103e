/*
 * keyring_backup -- key backup archives (keyring.h): write one, verify one,
 * restore one into the live keyring or, offline, into a keyring file,
 * merging so that a restore never makes data unreadable.
 */
#include "rhema_build.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "keyring.h"
#include "keyring_internal.h"
#include "log.h"
#include "util.h"

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
    rc = kr_state_serialize(kr->keys, st, 0, &img, &len);
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
    rc = kr_write_atomic_at(dirfd, name, flags, arc,
                            KB_HDR + len + crypto_aead_xchacha20poly1305_ietf_ABYTES, err);
    if (rc)
        goto out;
    atomic_store(&st->last_backup_ms, now);
    {
        char perr[RHEMA_KEYRING_ERR_MAX];
        if (kr_persist(kr, st, perr) != 0) /* only the last_backup stamp is lost */
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
    if ((rc = kr_read_file_at(dirfd, path, flags, KR_FILE_MAX, &arc, &len, err)))
        return rc == RHEMA_ENOTFOUND
                   ? rhema_set_errbuf(err, RHEMA_ENOTFOUND, "backup %s: no such file", path)
                   : rc;
    if ((rc = kr_read_kdf_hdr(arc, len, path, &is_backup, &h, err)))
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
    if ((rc = kr_state_parse(k, img, ilen, path, out, err)))
        goto out;
    if ((*out)->kdf != h.kdf || memcmp((*out)->salt, h.salt, KR_SALT) != 0) {
        kr_state_free(*out);
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
    if ((rc = kr_keys_derive(m, &k, err)))
        return rc;
    rc = backup_load(k, AT_FDCWD, path, 0, &st, &created, err);
    if (rc == 0 && info) {
        info->created_at_ms = created;
        info->versions = st->n;
        info->newest_version = newest(st)->version;
    }
    kr_state_free(st);
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
        kr_version_free(v);
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
        struct kr_version *v = kr_find_version(st, o->version);
        if (v && (o->key_len != v->key_len || sodium_memcmp(o->key, v->key, v->key_len) != 0))
            return rhema_set_errbuf(
                err, RHEMA_ECONFLICT,
                "key version %u differs between the backup and the live keyring: "
                "restoring it would make what the live version encrypted unreadable",
                o->version);
    }
    for (size_t i = 0; i < old->n; i++) {
        const struct kr_version *o = old->v[i];
        struct kr_version *v = kr_find_version(st, o->version);
        if (!v) { /* made after the backup: kept */
            int rc = version_copy(o, &v);
            if (rc == 0 && (rc = kr_state_push(st, v)) != 0)
                kr_version_free(v);
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

int rhema_keyring_restore_at(struct rhema_keyring *kr, int dirfd, const char *path, unsigned flags,
                             char err[RHEMA_KEYRING_ERR_MAX])
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
    if ((rc = kr_state_add_version(kr, st, 0, err)) == 0 && (rc = kr_persist(kr, st, err)) == 0) {
        kr->st = st;
        st = old;
        kr_schedule_rotation(kr, now);
        if (atomic_load(&kr->min_version) > newest(kr->st)->version)
            atomic_store(&kr->min_version, newest(kr->st)->version);
        rhema_log(RHEMA_LOG_NOTICE, "keyring",
                  "restored %zu key versions from %s; version %u encrypts", kr->st->n - 1, path,
                  newest(kr->st)->version);
    }
unlock:
    pthread_mutex_unlock(&kr->persist_mu);
    pthread_rwlock_unlock(&kr->lock);
    kr_state_free(st); /* the old state on success, the rejected one on failure */
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
    if ((rc = kr_keys_derive(m, &k, err)))
        return rc;
    if ((rc = backup_load(k, AT_FDCWD, archive, 0, &st, NULL, err)))
        goto out;
    if ((rc = kr_lock_keyring(keyring_path, &lock_fd, &lock_path, err))) {
        if (rc == RHEMA_ECONFLICT)
            rhema_set_errbuf(err, rc,
                             "keyring %s is open in a running rhemad: use POST /v1/keys/restore",
                             keyring_path);
        goto out;
    }
    /* the keyring being replaced, when it still reads under this master */
    if (kr_read_file(keyring_path, KR_FILE_MAX, &img, &len, NULL) == 0) {
        if (kr_state_parse(k, img, len, keyring_path, &old, NULL) != 0)
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
    if ((rc = kr_state_serialize(k, st, 0, &img, &len))) {
        rhema_set_errbuf(err, rc, "out of memory");
        goto out;
    }
    rc = kr_write_atomic(keyring_path, img, len, err);
out:
    free(img);
    kr_state_free(old);
    kr_state_free(st);
    if (lock_fd >= 0)
        close(lock_fd);
    free(lock_path);
    sodium_free(k);
    return rc;
}
