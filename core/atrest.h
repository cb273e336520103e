/*
 * atrest -- persistence.enable_compression and persistence.enable_encryption:
 * a storage vtable that wraps the real one and transforms every stored value,
 * so that no store (sessions, consensus, agents, access counts ...) changes.
 *
 * main.c opens the real instance, the codecs and the keyring, then calls
 * rhema_atrest_wrap() and uses the returned vtable and instance for all I/O
 * from then on (workers, the committer, maintenance).  The loaded plugin
 * (srv->storage_plugin) stays the real one: its name, version and features
 * are what /v1/plugins and the logs show; the wrapper copies them too.
 *
 * Written form (a put, each PUT of a batch or group):
 *   - compression on: a compression frame (codec.h), with the configured
 *     codec, level, threshold and adaptive choice (so a small or
 *     incompressible value is a "stored" frame, codec id 0);
 *   - encryption on: an envelope (keyring.h) around a frame (the frame is a
 *     stored one when compression is off), with the associated data
 *     "rhema-atrest/1" NUL ns NUL key -- a value copied to another key or
 *     namespace does not decrypt;
 *   - both off: the value as is, except that a value which begins like a
 *     frame or an envelope is written as a stored frame, so it reads back
 *     exactly;
 *   - an empty value stays empty whatever the options (the index entries
 *     are empty; there is nothing to hide or compress).
 *
 * Read rules (get, scan), whatever the current options:
 *   - "R" "E" 0x01 ... : an envelope.  It must decrypt (any key version the
 *     keyring still accepts, so records survive rotations and restarts) and
 *     its plaintext must be a frame;
 *   - "R" "Z" 0x01 ... : a frame, decoded with whatever codec it names;
 *   - anything else, including the empty value: a plain value, returned as
 *     is (records written before an option was turned on).
 * A value that does not decrypt or unframe is RHEMA_ECORRUPT (the cause in
 * errmsg()), never garbage; a frame or envelope that needs a codec, cipher
 * or keyring that is not loaded is RHEMA_ECORRUPT too, with that cause.
 * A scan does not stop at such a value: it calls the callback with value
 * NULL and length 0 for that key (errmsg() says why) and goes on, so that
 * one unreadable record (a key version the keyring no longer has, a
 * corrupted file) does not hide all the others.  Every host scan callback
 * therefore takes a NULL value as "unreadable": a list names the key, a
 * callback that needs the value returns RHEMA_ECORRUPT (json_loadb() of
 * NULL fails, so the JSON callbacks see it as any corrupt value).
 * The limit of the rule: a value that begins with one of the two magics
 * and was written *around* the wrapper (by another program, or a rhemad
 * without it) is taken for a frame or an envelope.  rhema's own values are
 * JSON objects ('{'), decimal text or empty, so none of them is ambiguous,
 * and everything written through the wrapper is unambiguous by the rules
 * above.
 *
 * Turning an option off later keeps the older records readable as long as
 * the wrapper is in place (it decodes whatever it finds) and, for
 * envelopes, the keyring is open: main.c therefore wraps whenever the
 * daemon runs, not only when an option is on.
 *
 * Stats and backups see the transformed values: stats() counts stored
 * bytes (what persistence.max_data_size_bytes limits), and a backup holds
 * ciphertext.  Versions, TTLs, leases and preconditions pass through
 * unchanged.
 *
 * Threads: the wrapper instance is read-only after rhema_atrest_wrap();
 * each connection (one per thread, as always) holds the real connection,
 * its own codec contexts and its own buffers.  The keyring is thread safe.
 */
#ifndef RHEMA_CORE_ATREST_H
#define RHEMA_CORE_ATREST_H

#include <rhema/storage.h>

#include "codec.h"
#include "config.h"
#include "keyring.h"

struct rhema_atrest;

/*
 * Startup checks of the configuration alone (also for rhemad -t):
 * persistence.enable_compression needs a loaded codec (the one
 * advanced_features.compression.algorithm names); enable_encryption needs
 * key management (a key_file or a passphrase_env).  0, or RHEMA_EINVAL and
 * *err (malloc'd).
 */
int rhema_atrest_check(const struct rhema_config *cfg, const struct rhema_codecs *codecs,
                       char **err);

/*
 * Wrap the open instance real_inst of the storage vtable real.  codecs must
 * be open and outlive the wrapper; kr (NULL: none) must outlive every
 * connection of the wrapper.  compress / encrypt select the written form;
 * reading needs neither.  Refused (RHEMA_EINVAL, *err malloc'd) when
 * compress is set and no default codec is loaded, or encrypt is set and kr
 * is NULL.
 *
 * Ownership: on success the wrapper owns real_inst -- the wrapper vtable's
 * close() closes the real instance and frees the wrapper (so main.c's
 * existing close call works unchanged).  On failure nothing changes and the
 * caller still owns real_inst.  The wrapper's open() is never used (it
 * answers RHEMA_ENOTSUP).
 */
int rhema_atrest_wrap(const struct rhema_storage_plugin *real, rhema_storage_instance *real_inst,
                      const struct rhema_codecs *codecs, struct rhema_keyring *kr, int compress,
                      int encrypt, struct rhema_atrest **out, char **err);
/*
 * persistence.max_record_size_bytes: a put whose plain value is longer is
 * refused with RHEMA_ETOOBIG (the cause in errmsg()) before the real plugin
 * sees it; in a batch or a group member, nothing of that batch is written.
 * 0: no limit.  Call before the first connection.
 */
void rhema_atrest_set_max_record(struct rhema_atrest *a, uint64_t bytes);
/*
 * Free the wrapper alone, after every connection of it is disconnected:
 * the real instance stays open and is the caller's again (tests, and a
 * caller that wants to re-wrap with other options).
 */
void rhema_atrest_free(struct rhema_atrest *a);
/* The wrapper's vtable (lives as long as the wrapper). */
const struct rhema_storage_plugin *rhema_atrest_vtable(struct rhema_atrest *a);
/* The wrapper's instance, to pass to the wrapper vtable's methods. */
rhema_storage_instance *rhema_atrest_instance(struct rhema_atrest *a);

#endif /* RHEMA_CORE_ATREST_H */
