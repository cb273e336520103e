/*
 * codec -- the compression frame of DESIGN.md §3 over the compression
 * plugins.
 *
 * A frame is
 *     'R' 'Z' | version 1 | codec id | flags | original length (u64 LE)
 *     | dictionary id (u32 LE, when flags has RHEMA_FRAME_DICT) | payload
 * Codec id 0 means "stored as is": messages below
 * advanced_features.compression.threshold_bytes, and (adaptive) messages
 * whose compressed form would not save min_gain_ratio of their size.  A
 * reader needs none of the writer's settings, and a frame that announces
 * more than max_decompressed_bytes is refused before any decoding.
 *
 * Threads: rhema_codecs is built on the main thread and read-only after;
 * each thread passes its own struct rhema_codec_ctxs (per-codec contexts,
 * created on first use).
 */
#ifndef RHEMA_CORE_CODEC_H
#define RHEMA_CORE_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "plugin.h"
#include "util.h"

#define RHEMA_FRAME_VERSION 1
#define RHEMA_FRAME_DICT 0x01u
#define RHEMA_FRAME_HEADER 13     /* without the dictionary id */
#define RHEMA_FRAME_ERR_MAX RHEMA_ERRMSG_MAX /* util.h */

struct rhema_codec_slot {
    const struct rhema_loaded_plugin *plugin; /* NULL: no codec with this id */
    rhema_codec *inst;
};

struct rhema_codecs {
    struct rhema_codec_slot by_id[256];
    int default_id;            /* advanced_features.compression.algorithm, or -1 */
    int level;                 /* .level, clamped to the default codec's range */
    size_t threshold;          /* .threshold_bytes */
    int adaptive;              /* .adaptive */
    double min_gain;           /* .min_gain_ratio */
    uint64_t max_decompressed; /* .max_decompressed_bytes */
};

struct rhema_codec_ctxs {
    rhema_codec_ctx *ctx[256];
};

struct rhema_buf {
    unsigned char *data; /* malloc'd */
    size_t len;
};

/*
 * Open every compression plugin in the registry with its configuration
 * group (refusing keys it did not read) and read the compression settings.
 * 0, or a negative code and *err (malloc'd).
 */
int rhema_codecs_open(struct rhema_codecs *cs, const struct rhema_plugin_registry *reg,
                      const struct rhema_config *cfg, char **err);
void rhema_codecs_close(struct rhema_codecs *cs);
/* The codec id of a loaded codec name ("zstd"), or -1. */
int rhema_codecs_id(const struct rhema_codecs *cs, const char *name);

void rhema_codec_ctxs_release(const struct rhema_codecs *cs, struct rhema_codec_ctxs *c);

/*
 * Frame src.  codec_id -1: the configured default; level INT32_MIN: the
 * configured (or the codec's default) level.  force: compress even below the
 * threshold and keep the result even when it does not pay (adaptive off).
 * Returns 0 with *out filled (caller frees out->data), or RHEMA_EINVAL (bad
 * codec or level: message in err), RHEMA_ENOMEM, or a codec error.
 */
int rhema_frame_compress(const struct rhema_codecs *cs, struct rhema_codec_ctxs *c, int codec_id,
                         int32_t level, int force, const void *src, size_t len,
                         struct rhema_buf *out, char err[RHEMA_FRAME_ERR_MAX]);
/*
 * Unframe src into *out.  RHEMA_ECORRUPT for a malformed, truncated or
 * tampered frame; RHEMA_ETOOBIG when it announces more than
 * max_decompressed_bytes; RHEMA_ENOTSUP for a codec id that is not loaded;
 * RHEMA_ENOTFOUND for a dictionary this codec does not have.
 */
int rhema_frame_decompress(const struct rhema_codecs *cs, struct rhema_codec_ctxs *c,
                           const void *src, size_t len, struct rhema_buf *out,
                           char err[RHEMA_FRAME_ERR_MAX]);

/*
 * The same into the caller's buffer (no allocation: the hot path).
 * rhema_frame_peek() checks a frame's header and gives the length it
 * announces, so the caller can size dst; a dst smaller than that is
 * RHEMA_ETOOBIG.
 */
int rhema_frame_peek(const struct rhema_codecs *cs, const void *src, size_t len, uint64_t *orig,
                     char err[RHEMA_FRAME_ERR_MAX]);
int rhema_frame_decompress_into(const struct rhema_codecs *cs, struct rhema_codec_ctxs *c,
                                const void *src, size_t len, void *dst, size_t cap, size_t *n,
                                char err[RHEMA_FRAME_ERR_MAX]);

#endif /* RHEMA_CORE_CODEC_H */
