/*
 * chacha20poly1305 -- ChaCha20-Poly1305, IETF variant (RFC 8439), through
 * libsodium (wire id 2).
 *
 * Key 32 bytes, nonce 12 (96 bits), tag 16.  Pure software: available on
 * every CPU once libsodium initialises.
 *
 * Nonces: 96 bits are too few to draw at random for the life of a key
 * (random_nonce_ok = 0): the keyring hands out counters.
 *
 * max_messages_per_key = 2^48.  ChaCha20 is a PRF, not a permutation, so
 * there is no birthday bound on the amount encrypted under one key
 * (draft-irtf-cfrg-aead-limits: the confidentiality limit is the nonce
 * space, 2^96 messages; RFC 8446 §5.5 notes that the TLS sequence number
 * wraps first), and the Poly1305 forgery bound depends on forgery attempts
 * and message length, not on the number of encryptions.  So the limit is
 * only a rotation hint: 2^48 is out of reach in practice (nine years at a
 * million messages a second) yet finite, and it leaves 48 of the 96 nonce
 * bits to the keyring for a writer prefix (node, boot epoch) in front of a
 * 48-bit counter that can then never wrap under one key.
 *
 * Messages are limited to libsodium's 64 * (2^32 - 1) bytes (the 32-bit
 * block counter); longer ones are RHEMA_ETOOBIG.
 *
 * Both functions are stateless and thread safe; ct and pt may be the same
 * buffer (libsodium allows exact overlap).  On a failed decrypt pt is
 * zeroed: unauthenticated plaintext never leaves the plugin.
 */
#include <stddef.h>
#include <stdint.h>

#include <sodium.h>

#include <rhema/cipher.h>

#define PLUGIN_NAME "chacha20poly1305"
#define KEY_BYTES 32u
#define NONCE_BYTES 12u
#define TAG_BYTES 16u

/* Stands in for a NULL buffer of length 0, so libsodium never sees NULL. */
static const unsigned char empty[1];

static int chacha_available(const char **why)
{
    if (sodium_init() < 0) {
        if (why)
            *why = "libsodium failed to initialise (sodium_init)";
        return 0;
    }
    return 1;
}

static int chacha_encrypt(const unsigned char *key, const unsigned char *nonce, const void *ad,
                          size_t ad_len, const void *pt, size_t pt_len, void *ct)
{
    unsigned long long ct_len = 0;

    if (!key || !nonce || !ct || (!ad && ad_len) || (!pt && pt_len))
        return RHEMA_EINVAL;
    /* libsodium calls sodium_misuse() (abort) past its limit: refuse first */
    if (pt_len > crypto_aead_chacha20poly1305_ietf_messagebytes_max() ||
        pt_len > SIZE_MAX - TAG_BYTES)
        return RHEMA_ETOOBIG;
    if (crypto_aead_chacha20poly1305_ietf_encrypt(ct, &ct_len, pt_len ? pt : empty, pt_len,
                                                  ad_len ? ad : empty, ad_len, NULL, nonce,
                                                  key) != 0)
        return RHEMA_EINVAL;
    return 0;
}

static int chacha_decrypt(const unsigned char *key, const unsigned char *nonce, const void *ad,
                          size_t ad_len, const void *ct, size_t ct_len, void *pt)
{
    unsigned long long pt_len = 0;
    unsigned char scratch[1]; /* the output when there is no plaintext */

    if (!key || !nonce || !ct || (!ad && ad_len))
        return RHEMA_EINVAL;
    if (ct_len < TAG_BYTES)
        return RHEMA_ECORRUPT;
    if (ct_len - TAG_BYTES > crypto_aead_chacha20poly1305_ietf_messagebytes_max())
        return RHEMA_ETOOBIG;
    if (!pt && ct_len > TAG_BYTES)
        return RHEMA_EINVAL;
    if (crypto_aead_chacha20poly1305_ietf_decrypt(pt ? pt : scratch, &pt_len, NULL, ct, ct_len,
                                                  ad_len ? ad : empty, ad_len, nonce, key) != 0) {
        if (pt && ct_len > TAG_BYTES)
            sodium_memzero(pt, ct_len - TAG_BYTES);
        return RHEMA_ECORRUPT;
    }
    return 0;
}

static const struct rhema_cipher_plugin chacha20poly1305_plugin = {
    .base = RHEMA_CIPHER_PLUGIN_HEADER(PLUGIN_NAME, "1.0.0",
                                       "ChaCha20-Poly1305 IETF, RFC 8439 (libsodium)"),
    .cipher_id = RHEMA_CIPHER_CHACHA20POLY1305,
    .key_bytes = KEY_BYTES,
    .nonce_bytes = NONCE_BYTES,
    .tag_bytes = TAG_BYTES,
    .max_messages_per_key = UINT64_C(1) << 48,
    .random_nonce_ok = 0,
    .available = chacha_available,
    .encrypt = chacha_encrypt,
    .decrypt = chacha_decrypt,
};

int rhema_plugin_init(const struct rhema_host *host, const struct rhema_plugin **out)
{
    (void)host;
    *out = &chacha20poly1305_plugin.base;
    return 0;
}
