/*
 * xchacha20poly1305 -- XChaCha20-Poly1305, IETF construction
 * (draft-irtf-cfrg-xchacha), through libsodium (wire id 3).
 *
 * Key 32 bytes, nonce 24 (192 bits), tag 16.  Pure software: available on
 * every CPU once libsodium initialises.
 *
 * Nonces: 192 bits are enough to draw every nonce at random
 * (random_nonce_ok = 1), which is what lets several writers share a key
 * without coordinating counters.
 *
 * max_messages_per_key = 2^48.  With random nonces the risk that grows with
 * use is a nonce collision: after q messages its probability is about
 * q^2 / 2^193, so 2^-97 at 2^48 messages (and still 2^-65 at 2^64).  As for
 * chacha20poly1305 there is no birthday bound on ChaCha20 itself and the
 * Poly1305 forgery bound does not grow with encryptions, so the limit is a
 * rotation hint that is out of reach in practice yet finite; the margin at
 * 2^48 is large enough that no accounting slack in the keyring (counts lost
 * in a crash, several writers) matters.
 *
 * Messages: libsodium advertises SIZE_MAX - 16 bytes, but XChaCha20 runs
 * ChaCha20-IETF with a 32-bit block counter under the HChaCha20 subkey, so
 * the keystream of one message would repeat after 64 * 2^32 bytes (and the
 * inner call aborts past that).  We refuse anything longer than the IETF
 * AEAD limit, 64 * (2^32 - 1) bytes, with RHEMA_ETOOBIG.
 *
 * Both functions are stateless and thread safe; ct and pt may be the same
 * buffer (libsodium allows exact overlap).  On a failed decrypt pt is
 * zeroed: unauthenticated plaintext never leaves the plugin.
 */
#include <stddef.h>
#include <stdint.h>

#include <sodium.h>

#include <rhema/cipher.h>

#define PLUGIN_NAME "xchacha20poly1305"
#define KEY_BYTES 32u
#define NONCE_BYTES 24u
#define TAG_BYTES 16u

/* Stands in for a NULL buffer of length 0, so libsodium never sees NULL. */
static const unsigned char empty[1];

/* The longest plaintext we accept (see the header comment). */
static size_t message_max(void)
{
    size_t x = crypto_aead_xchacha20poly1305_ietf_messagebytes_max();
    size_t c = crypto_aead_chacha20poly1305_ietf_messagebytes_max();
    return x < c ? x : c;
}

static int xchacha_available(const char **why)
{
    if (sodium_init() < 0) {
        if (why)
            *why = "libsodium failed to initialise (sodium_init)";
        return 0;
    }
    return 1;
}

static int xchacha_encrypt(const unsigned char *key, const unsigned char *nonce, const void *ad,
                           size_t ad_len, const void *pt, size_t pt_len, void *ct)
{
    unsigned long long ct_len = 0;

    if (!key || !nonce || !ct || (!ad && ad_len) || (!pt && pt_len))
        return RHEMA_EINVAL;
    /* libsodium calls sodium_misuse() (abort) past its limit: refuse first */
    if (pt_len > message_max() || pt_len > SIZE_MAX - TAG_BYTES)
        return RHEMA_ETOOBIG;
    if (crypto_aead_xchacha20poly1305_ietf_encrypt(ct, &ct_len, pt_len ? pt : empty, pt_len,
                                                   ad_len ? ad : empty, ad_len, NULL, nonce,
                                                   key) != 0)
        return RHEMA_EINVAL;
    return 0;
}

static int xchacha_decrypt(const unsigned char *key, const unsigned char *nonce, const void *ad,
                           size_t ad_len, const void *ct, size_t ct_len, void *pt)
{
    unsigned long long pt_len = 0;
    unsigned char scratch[1]; /* the output when there is no plaintext */

    if (!key || !nonce || !ct || (!ad && ad_len))
        return RHEMA_EINVAL;
    if (ct_len < TAG_BYTES)
        return RHEMA_ECORRUPT;
    if (ct_len - TAG_BYTES > message_max())
        return RHEMA_ETOOBIG;
    if (!pt && ct_len > TAG_BYTES)
        return RHEMA_EINVAL;
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(pt ? pt : scratch, &pt_len, NULL, ct, ct_len,
                                                   ad_len ? ad : empty, ad_len, nonce, key) != 0) {
        if (pt && ct_len > TAG_BYTES)
            sodium_memzero(pt, ct_len - TAG_BYTES);
        return RHEMA_ECORRUPT;
    }
    return 0;
}

static const struct rhema_cipher_plugin xchacha20poly1305_plugin = {
    .base = RHEMA_CIPHER_PLUGIN_HEADER(
        PLUGIN_NAME, "1.0.0", "XChaCha20-Poly1305 IETF, 192-bit random nonces (libsodium)"),
    .cipher_id = RHEMA_CIPHER_XCHACHA20POLY1305,
    .key_bytes = KEY_BYTES,
    .nonce_bytes = NONCE_BYTES,
    .tag_bytes = TAG_BYTES,
    .max_messages_per_key = UINT64_C(1) << 48,
    .random_nonce_ok = 1,
    .available = xchacha_available,
    .encrypt = xchacha_encrypt,
    .decrypt = xchacha_decrypt,
};

int rhema_plugin_init(const struct rhema_host *host, const struct rhema_plugin **out)
{
    (void)host;
    *out = &xchacha20poly1305_plugin.base;
    return 0;
}
