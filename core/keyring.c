/*
 * keyring -- versioned data keys under a master key (see keyring.h): the
 * versions and the keyring state, open and close, rotation, stats.  The
 * file formats and the other files of the keyring: keyring_internal.h.
 */
#include "rhema_build.h"

#include <errno.h>
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

/* ---- versions and states ---- */

void kr_version_free(struct kr_version *v)
{
    if (!v)
        return;
    if (v->key)
        sodium_free(v->key);
    free(v->sealed);
    free(v);
}

void kr_state_free(struct kr_state *st)
{
    if (!st)
        return;
    for (size_t i = 0; i < st->n; i++)
        kr_version_free(st->v[i]);
    free(st->v);
    free(st);
}

int kr_state_push(struct kr_state *st, struct kr_version *v)
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
        kr_version_free(v);
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
int kr_state_serialize(const struct kr_keys *k, struct kr_state *st, int exact, unsigned char **out,
                       size_t *outlen)
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
int kr_state_parse(const struct kr_keys *k, const unsigned char *d, size_t len, const char *what,
                   struct kr_state **out, char *err)
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
        if (!v || kr_state_push(st, v) != 0) {
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
    kr_state_free(st);
    return rc;
}

struct kr_version *kr_find_version(const struct kr_state *st, uint32_t version)
{
    for (size_t i = st->n; i-- > 0;)
        if (st->v[i]->version == version)
            return st->v[i];
    return NULL;
}

/* Messages one version may encrypt: the cipher's limit, the configured one, the counter space. */
uint64_t kr_version_limit(const struct rhema_keyring *kr, const struct kr_version *v)
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
int kr_persist(struct rhema_keyring *kr, struct kr_state *st, char *err)
{
    unsigned char *img;
    size_t len;
    int rc = kr_state_serialize(kr->keys, st, 0, &img, &len);
    if (rc)
        return rhema_set_errbuf(err, rc, "out of memory writing the keyring");
    rc = kr_write_atomic(kr->path, img, len, err);
    free(img);
    if (rc)
        return rc;
    for (size_t i = 0; i < st->n; i++)
        if (st->v[i]->pending > atomic_load(&st->v[i]->reserved))
            atomic_store(&st->v[i]->reserved, st->v[i]->pending);
    return 0;
}

void kr_schedule_rotation(struct rhema_keyring *kr, uint64_t last)
{
    atomic_store(&kr->next_rotation_ms,
                 kr->rotation_enabled && kr->interval_ms ? last + kr->interval_ms : 0);
}

/*
 * Append version `number` (0: newest + 1, above version_floor) with the
 * configured cipher to st, its first reservation pending.  Not persisted.
 */
int kr_state_add_version(struct rhema_keyring *kr, struct kr_state *st, uint32_t number, char *err)
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
    if (kr_state_push(st, v) != 0) {
        kr_version_free(v);
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    }
    uint64_t lim = kr_version_limit(kr, v);
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
    rc = kr_state_add_version(kr, kr->st, 0, err);
    if (rc == 0) {
        rc = kr_persist(kr, kr->st, err);
        if (rc) {
            kr_version_free(kr->st->v[--kr->st->n]);
        }
    }
    if (rc) {
        kr->st->flags = flags;
        atomic_store(&kr->st->last_rotation_ms, prev_rotation);
    } else {
        kr_schedule_rotation(kr, now);
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
    kr_state_free(kr->st);
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

    if ((rc = kr_lock_keyring(kr->path, &kr->lock_fd, &kr->lock_path, err)))
        goto fail;
    rc = kr_read_file(kr->path, KR_FILE_MAX, &img, &imglen, err);
    if (rc && rc != RHEMA_ENOTFOUND)
        goto fail;
    have_file = rc == 0;
    if (have_file && (rc = kr_read_kdf_hdr(img, imglen, kr->path, &is_backup, &h, err)))
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
        rc = kr_master_copy(p->master, &kr->master, err);
    else
        rc = kr_master_load(p->key_file, p->passphrase_env, have_file ? &h : NULL, kr->path,
                            p->kdf_opslimit ? p->kdf_opslimit : crypto_pwhash_OPSLIMIT_MODERATE,
                            p->kdf_memlimit ? p->kdf_memlimit : crypto_pwhash_MEMLIMIT_MODERATE,
                            &kr->master, err);
    if (rc)
        goto fail;
    if ((rc = kr_keys_derive(kr->master, &kr->keys, err)))
        goto fail;

    if (have_file) {
        if ((rc = kr_state_parse(kr->keys, img, imglen, kr->path, &kr->st, err)))
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
    kr_schedule_rotation(kr, atomic_load(&kr->st->last_rotation_ms));
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
        if (kr_state_serialize(kr->keys, kr->st, 1, &img, &len) == 0) {
            if (kr_write_atomic(kr->path, img, len, err) != 0)
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
int kr_rotate_if_newest(struct rhema_keyring *kr, uint32_t version, char *err)
{
    int rc = 0;
    pthread_rwlock_wrlock(&kr->lock);
    if (newest(kr->st)->version == version)
        rc = rotate_locked(kr, NULL, err);
    pthread_rwlock_unlock(&kr->lock);
    return rc;
}

/* Rotate when the interval has passed at now_ms (checked again under the lock). */
int kr_rotate_if_due(struct rhema_keyring *kr, uint64_t now_ms, int *rotated, char *err)
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
    return kr_rotate_if_due(kr, now_ms, rotated, err);
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
        s->v[i].limit = kr_version_limit(kr, v);
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
