/*
 * compress_suite -- the compression plugin conformance suite.
 *
 * One reusable list of checks that every compression plugin must pass: the
 * in-tree lz4, zstd, gzip and snappy plugins (tests/conformance/
 * test_compress) and any third-party codec.  It shares its report types
 * with the storage suite (storage_suite.h).
 *
 * The suite opens its own instances of the plugin with the given
 * configuration group (cfg may be NULL) and checks:
 *   - the header: kind, size, name, codec_id in 1..255, consistent levels,
 *     no NULL method;
 *   - round trips of empty, 1-byte, random (incompressible), highly
 *     repetitive (which must shrink) and JSON-like inputs at every
 *     advertised level -- or, for a range wider than 256 levels (zstd),
 *     every level in -64..64 plus the extremes, the default and each
 *     power of two in between -- and of a 16 MiB input at a sample of at
 *     most four levels (min, default and the midpoints; the max level gets
 *     a 2 MiB input, as zstd -22 needs about 7 s for 16 MiB), each output
 *     within bound() and each output buffer followed by a canary; the
 *     repetitive and the 16 MiB inputs must shrink at the default level
 *     (and the repetitive one at the max level too: the fastest levels of
 *     zstd store rather than compress);
 *   - a level outside [level_min, level_max] is RHEMA_EINVAL;
 *   - a dst_cap below the payload's size is RHEMA_ETOOBIG, with nothing
 *     written past dst_cap;
 *   - truncated payloads (every prefix of a small one, a few of a large
 *     one) and trailing bytes are RHEMA_ECORRUPT;
 *   - every single-bit flip of small payloads, and random garbage, gives
 *     RHEMA_ECORRUPT or exactly orig_len bytes, never a write past
 *     orig_len (checked with a canary; reads out of bounds need a run under
 *     ASan or valgrind to be seen, and payloads sit in exact-size buffers
 *     for that);
 *   - orig_len off by one either way is RHEMA_ECORRUPT; an unknown
 *     dictionary id is RHEMA_ENOTFOUND;
 *   - a second instance decodes the first one's payloads;
 *   - 4 threads, each with its own context, compress and decompress
 *     different data at once;
 *   - ctx_new / ctx_free and open / close cycles return the heap to where
 *     it was (glibc mallinfo2, main arena; skipped where unavailable) and
 *     contexts freed in any order leave the others working.
 *
 * Each check is reported through `report` as it finishes, with a short
 * name and, when it did not pass, one line saying what went wrong.  A
 * failing check never stops the run, except that nothing can run when the
 * header is unusable or the instance cannot be opened.  A run takes a few
 * seconds per codec (most of it the 16 MiB round trips).
 *
 * Threads: call from one thread (the main thread, for the heap check);
 * the suite starts and joins its own.
 */
#ifndef RHEMA_CONFORMANCE_COMPRESS_SUITE_H
#define RHEMA_CONFORMANCE_COMPRESS_SUITE_H

#include <rhema/compress.h>
#include <rhema/plugin.h>

#include "storage_suite.h" /* RHEMA_CONF_*, rhema_conf_report_fn, rhema_conf_totals */

/*
 * Run every check against new instances of `vt` opened with `host` and
 * `cfg`, reporting each through report(ctx, ...) and adding to *totals
 * (when not NULL; not zeroed first).  Returns 0 when no check failed, else
 * the number of failed checks.
 */
int rhema_conformance_compress(const struct rhema_compress_plugin *vt,
                               const struct rhema_host *host, const struct rhema_cfg *cfg,
                               rhema_conf_report_fn report, void *ctx,
                               struct rhema_conf_totals *totals);

#endif /* RHEMA_CONFORMANCE_COMPRESS_SUITE_H */
