/*
 * keyring_envelope -- messages (keyring.h): encrypt under the newest key
 * version, taking a counter value per message (reserved on disk before
 * use), decrypt an envelope under the version it names, rewrap.
 */
#include "rhema_build.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "keyring.h"
#include "keyring_internal.h"
#include "log.h"
#include "util.h"

/* ---- messages ---- */

#define COUNTER_LIMIT 1

/*
 * Take the next counter value of v, reserving (and persisting) a new block
 * first when the reservation is used up.  Read lock held.
 * COUNTER_LIMIT when the version has encrypted its limit.
 */
static int take_counter(struct rhema_keyring *kr, struct kr_version *v, uint64_t *ctr, char *err)
{
    uint64_t lim = kr_version_limit(kr, v);
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
                rc = kr_persist(kr, kr->st, err);
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
            if (kr_rotate_if_due(kr, rhema_realtime_ms(), NULL, rerr) != 0) {
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
            uint64_t lim = kr_version_limit(kr, v);
            pthread_rwlock_unlock(&kr->lock);
            if (!kr->rotation_enabled)
                return rhema_set_errbuf(
                    err, RHEMA_ETOOBIG,
                    "key version %u has encrypted its limit of %llu messages; rotate "
                    "the key (rotation.enabled is off)",
                    ver, (unsigned long long)lim);
            if ((rc = kr_rotate_if_newest(kr, ver, err)))
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

int rhema_keyring_encrypt_into(struct rhema_keyring *kr, const void *pt, size_t len, const void *ad,
                               size_t adlen, void *dst, size_t cap, size_t *n,
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
    struct kr_version *v = kr_find_version(kr->st, version);
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
