/*
 * rhema cipher plugins: an AEAD with a one-byte wire id.
 *
 * The core owns keys and nonces (the keyring) and the envelope:
 *     magic "RE" | format version | cipher id | key version (u32 LE)
 *     | nonce | ciphertext+tag
 * with the header (everything before the ciphertext) bound in as
 * associated data.  A cipher only encrypts and decrypts.
 *
 * Wire ids: 1 aes256gcm, 2 chacha20poly1305 (IETF), 3 xchacha20poly1305
 * (IETF); 128..255 for third parties.
 *
 * Threads: every function may be called from any thread at once; ciphers
 * keep no mutable state.  The host calls available() (where a plugin runs
 * sodium_init() or its equivalent) before any other function.
 *
 * Buffers: a pointer may be NULL when its length is 0; ct and pt may be the
 * same buffer (exact overlap), never partially overlapping.  Errors:
 * RHEMA_EINVAL for a NULL key or nonce, RHEMA_ETOOBIG for a message longer
 * than the primitive allows, RHEMA_ECORRUPT for ct_len < tag_bytes or a
 * failed tag check -- and after a failed decrypt, pt holds no unauthenticated
 * plaintext (a plugin zeroes what it wrote).
 *
 * Limits: max_messages_per_key counts messages; for AES-GCM the safety bound
 * is in blocks, so the keyring also caps the bytes one key encrypts.
 */
#ifndef RHEMA_CIPHER_H
#define RHEMA_CIPHER_H

#include <rhema/plugin.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The minor version of the cipher vtable (minor 0 ends at decrypt()). */
#define RHEMA_CIPHER_ABI_MINOR 0

#define RHEMA_CIPHER_AES256GCM 1
#define RHEMA_CIPHER_CHACHA20POLY1305 2
#define RHEMA_CIPHER_XCHACHA20POLY1305 3

struct rhema_cipher_plugin {
    struct rhema_plugin base; /* kind RHEMA_KIND_CIPHER */
    uint32_t cipher_id;       /* the wire id, 1..255 */
    uint32_t key_bytes, nonce_bytes, tag_bytes;
    /*
     * Messages one key may encrypt before it must be rotated (the rotation
     * hint the keyring enforces); 0: no limit worth enforcing.
     */
    uint64_t max_messages_per_key;
    /*
     * 1 when the nonce is large enough to be drawn at random for every
     * message (xchacha20: 192 bits); 0 when the keyring must use a counter
     * so that a nonce never repeats under one key.
     */
    uint32_t random_nonce_ok;

    /*
     * 1 when this machine can run the cipher (AES-GCM needs AES-NI under
     * libsodium), else 0 and *why (a static string) says why.  Called once
     * by the loader: a plugin that answers 0 is refused with that reason.
     */
    int (*available)(const char **why);
    /* ct receives pt_len + tag_bytes bytes. */
    int (*encrypt)(const unsigned char *key, const unsigned char *nonce, const void *ad,
                   size_t ad_len, const void *pt, size_t pt_len, void *ct);
    /* pt receives ct_len - tag_bytes bytes; a failed tag check is RHEMA_ECORRUPT. */
    int (*decrypt)(const unsigned char *key, const unsigned char *nonce, const void *ad,
                   size_t ad_len, const void *ct, size_t ct_len, void *pt);
    /* --- minor 0 ends here --- */
};

/* The header of a cipher vtable: .base = RHEMA_CIPHER_PLUGIN_HEADER("mine", "1.0", "..."). */
#define RHEMA_CIPHER_PLUGIN_HEADER(NAME, VERSION, DESC)                                            \
    RHEMA_PLUGIN_HEADER(struct rhema_cipher_plugin, RHEMA_KIND_CIPHER, RHEMA_CIPHER_ABI_MINOR,     \
                        NAME, VERSION, DESC)

#ifdef __cplusplus
}
#endif
#endif /* RHEMA_CIPHER_H */
