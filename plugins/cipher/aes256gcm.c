/*
 * aes256gcm -- AES-256-GCM through libsodium (wire id 1).
 *
 * Key 32 bytes, nonce 12 (96 bits), tag 16.  libsodium only ships the
 * AES-NI + PCLMULQDQ implementation, so available() answers 0 on a CPU
 * without them and the loader refuses the plugin with that reason; encrypt
 * and decrypt check again (a cheap read of libsodium's CPU flags) and
 * answer RHEMA_ENOTSUP rather than die of SIGILL if someone calls them
 * without asking available() first.
 *
 * Nonces: 96 bits are too few to draw at random for the life of a key
 * (random_nonce_ok = 0): the keyring hands out counters.
 *
 * max_messages_per_key = 2^32, for two reasons:
 *   - NIST SP 800-38D §8.3 caps a key at 2^32 invocations whenever the IV
 *     is not a strict deterministic construction.  The keyring's counter is
 *     deterministic, but a cluster or a crash-restart makes that hard to
 *     guarantee, so we keep the cap that holds either way.
 *   - GCM's confidentiality bound is the AES birthday bound on the total
 *     number of 16-byte blocks s under one key: advantage ~ s^2 / 2^129
 *     (draft-irtf-cfrg-aead-limits; RFC 8446 §5.5 uses the same bound for
 *     its 2^24.5-record limit).  At 2^32 messages of up to 4 KiB (2^8
 *     blocks) s = 2^40 and the advantage stays below 2^-49.  Larger
 *     messages weaken that in proportion to their length squared: a limit
 *     in messages cannot express a limit in blocks (see the report on
 *     cipher.h; the keyring should also count bytes).
 * The integrity bound (forgery per attempt ~ 2^-128 * message blocks) does
 * not depend on the number of encryptions.
 *
 * Both functions are stateless and thread safe; ct and pt may be the same
 * buffer (libsodium allows exact overlap).  On a failed decrypt pt is
 * zeroed: unauthenticated plaintext never leaves the plugin.
 */
#include <stddef.h>
#include <stdint.h>

#include <sodium.h>

#include <rhema/cipher.h>

#define PLUGIN_NAME "aes256gcm"
#define KEY_BYTES 32u
#define NONCE_BYTES 12u
#define TAG_BYTES 16u

/* Stands in for a NULL buffer of length 0, so libsodium never sees NULL. */
static const unsigned char empty[1];

static int aes_available(const char **why)
{
    if (sodium_init() < 0) {
        if (why)
            *why = "libsodium failed to initialise (sodium_init)";
        return 0;
    }
    if (!crypto_aead_aes256gcm_is_available()) {
        if (why)
            *why = "AES-NI (and PCLMUL) not available on this CPU; libsodium's AES-256-GCM "
                   "needs them";
        return 0;
    }
    return 1;
}

static int aes_encrypt(const unsigned char *key, const unsigned char *nonce, const void *ad,
                       size_t ad_len, const void *pt, size_t pt_len, void *ct)
{
    unsigned long long ct_len = 0;

    if (!key || !nonce || !ct || (!ad && ad_len) || (!pt && pt_len))
        return RHEMA_EINVAL;
    /* libsodium calls sodium_misuse() (abort) past its limit: refuse first */
    if (pt_len > crypto_aead_aes256gcm_messagebytes_max() || pt_len > SIZE_MAX - TAG_BYTES)
        return RHEMA_ETOOBIG;
    if (!crypto_aead_aes256gcm_is_available())
        return RHEMA_ENOTSUP;
    if (crypto_aead_aes256gcm_encrypt(ct, &ct_len, pt_len ? pt : empty, pt_len, ad_len ? ad : empty,
                                      ad_len, NULL, nonce, key) != 0)
        return RHEMA_EINVAL;
    return 0;
}

static int aes_decrypt(const unsigned char *key, const unsigned char *nonce, const void *ad,
                       size_t ad_len, const void *ct, size_t ct_len, void *pt)
{
    unsigned long long pt_len = 0;
    unsigned char scratch[1]; /* the output when there is no plaintext */

    if (!key || !nonce || !ct || (!ad && ad_len))
        return RHEMA_EINVAL;
    if (ct_len < TAG_BYTES)
        return RHEMA_ECORRUPT;
    if (ct_len - TAG_BYTES > crypto_aead_aes256gcm_messagebytes_max())
        return RHEMA_ETOOBIG;
    if (!pt && ct_len > TAG_BYTES)
        return RHEMA_EINVAL;
    if (!crypto_aead_aes256gcm_is_available())
        return RHEMA_ENOTSUP;
    if (crypto_aead_aes256gcm_decrypt(pt ? pt : scratch, &pt_len, NULL, ct, ct_len,
                                      ad_len ? ad : empty, ad_len, nonce, key) != 0) {
        if (pt && ct_len > TAG_BYTES)
            sodium_memzero(pt, ct_len - TAG_BYTES);
        return RHEMA_ECORRUPT;
    }
    return 0;
}

static const struct rhema_cipher_plugin aes256gcm_plugin = {
    .base = RHEMA_CIPHER_PLUGIN_HEADER(PLUGIN_NAME, "1.0.0",
                                       "AES-256-GCM (libsodium; needs AES-NI and PCLMUL)"),
    .cipher_id = RHEMA_CIPHER_AES256GCM,
    .key_bytes = KEY_BYTES,
    .nonce_bytes = NONCE_BYTES,
    .tag_bytes = TAG_BYTES,
    .max_messages_per_key = UINT64_C(1) << 32,
    .random_nonce_ok = 0,
    .available = aes_available,
    .encrypt = aes_encrypt,
    .decrypt = aes_decrypt,
};

int rhema_plugin_init(const struct rhema_host *host, const struct rhema_plugin **out)
{
    (void)host;
    *out = &aes256gcm_plugin.base;
    return 0;
}
