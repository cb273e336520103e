/*
 * cipher_suite -- the cipher plugin conformance suite.
 *
 * One reusable list of checks that every cipher plugin must pass: the
 * in-tree aes256gcm, chacha20poly1305 and xchacha20poly1305 plugins
 * (tests/conformance/test_cipher) and any third-party cipher.
 *
 * What it checks:
 *   - the header: kind, ABI, name, wire id, key / nonce / tag sizes, and
 *     for the wire ids rhema defines (1..3) the parameters of that
 *     algorithm; with random_nonce_ok, that a nonce collision stays below
 *     2^-32 up to max_messages_per_key;
 *   - available(): when it answers 0 (with a reason) every other check is
 *     reported as skipped with that reason;
 *   - round trips of 0 B, 1 B, 1 KiB, 64 KiB and 1 MiB, with and without
 *     associated data: the ciphertext is pt_len + tag_bytes long, does not
 *     resemble the plaintext, and nothing is written past either output;
 *   - tampering: every bit of a short ciphertext and of its associated data
 *     flipped, every truncation, an extended ciphertext, a wrong key, a
 *     wrong nonce, wrong / missing / extra / shorter / longer associated
 *     data: each is RHEMA_ECORRUPT, writes nothing past the plaintext
 *     length and releases no plaintext;
 *   - for wire ids 1..3, the published test vector (GCM spec test case 16,
 *     RFC 8439 §2.8.2, draft-irtf-cfrg-xchacha §A.3.1) and a cross-check
 *     with direct libsodium calls over several sizes, both directions;
 *   - determinism (same key, nonce, data: same output) and sensitivity
 *     (every one-byte change of nonce or key changes the ciphertext);
 *   - argument errors: NULL key or nonce is RHEMA_EINVAL, a length whose
 *     output would not fit in size_t is RHEMA_ETOOBIG, and neither writes;
 *   - concurrency: 4 threads encrypting, decrypting and rejecting tampered
 *     messages at once, each result compared with one computed alone.
 *
 * Each check is reported through `report` as it finishes (the report types
 * are shared with the storage suite), with a short name and, when it did
 * not pass, one line saying what went wrong.  A failing check never stops
 * the run.  Total run time is well under a second.
 *
 * The suite assumes what cipher.h implies for (pointer, length) pairs: a
 * pointer may be NULL when its length is 0 (associated data, and the
 * plaintext of an empty message).
 *
 * Threads: call from one thread; the suite starts and joins its own.
 */
#ifndef RHEMA_CONFORMANCE_CIPHER_SUITE_H
#define RHEMA_CONFORMANCE_CIPHER_SUITE_H

#include <rhema/cipher.h>

#include "storage_suite.h" /* RHEMA_CONF_*, rhema_conf_report_fn, struct rhema_conf_totals */

/*
 * Run every check against the cipher `vt` (a loaded plugin's vtable),
 * reporting each through report(ctx, ...) and adding to *totals (when not
 * NULL; it is not zeroed first, so several runs can share it).  Returns 0
 * when no check failed, else the number of failed checks.
 */
int rhema_conformance_cipher(const struct rhema_cipher_plugin *vt, rhema_conf_report_fn report,
                             void *ctx, struct rhema_conf_totals *totals);

#endif /* RHEMA_CONFORMANCE_CIPHER_SUITE_H */
