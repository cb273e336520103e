/*
 * rhema compression plugins: a codec with a one-byte wire id.
 *
 * The core frames every compressed message (see doc/writing-plugins.md):
 *     magic "RZ" | format version | codec id | flags | original length
 *     (u64 little endian) | [dictionary id (u32 LE) when flags has DICT]
 *     | payload
 * so a codec only turns bytes into bytes; a reader needs no settings of the
 * writer, and the core refuses a frame whose original length exceeds its
 * configured maximum before calling decompress().
 *
 * Wire ids: 1 lz4, 2 zstd, 3 gzip, 4 snappy; 128..255 for third parties;
 * 0 is reserved for "stored as is".
 *
 * Threads: open()/close() on the main thread.  compress()/decompress() are
 * called from every worker at once, each with its own context from
 * ctx_new() (one per worker thread), so a codec keeps per-thread state
 * (a ZSTD_CCtx, a z_stream) in the context, never in the instance.
 */
#ifndef RHEMA_COMPRESS_H
#define RHEMA_COMPRESS_H

#include <rhema/plugin.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The minor version of the compression vtable (minor 0 ends at decompress()). */
#define RHEMA_COMPRESS_ABI_MINOR 0

#define RHEMA_CODEC_STORED 0
#define RHEMA_CODEC_LZ4 1
#define RHEMA_CODEC_ZSTD 2
#define RHEMA_CODEC_GZIP 3
#define RHEMA_CODEC_SNAPPY 4

typedef struct rhema_codec rhema_codec;         /* an instance (plugin-defined) */
typedef struct rhema_codec_ctx rhema_codec_ctx; /* per-thread state (plugin-defined) */

struct rhema_compress_plugin {
    struct rhema_plugin base; /* kind RHEMA_KIND_COMPRESS */
    uint32_t codec_id;        /* the wire id, 1..255 */
    int32_t level_min, level_max, level_default;

    /*
     * Create an instance from the plugin's group (cfg may be NULL), e.g. a
     * zstd dictionary read from a file.  On failure a negative code and *err.
     */
    int (*open)(const struct rhema_host *host, const struct rhema_cfg *cfg, rhema_codec **out,
                char **err);
    void (*close)(rhema_codec *codec);
    /* Per-thread state; ctx_free after every use of it ended. */
    int (*ctx_new)(rhema_codec *codec, rhema_codec_ctx **out);
    void (*ctx_free)(rhema_codec_ctx *ctx);

    /*
     * The largest output compress() can produce for src_len bytes at any
     * level, or SIZE_MAX when src_len is more than the codec can take (then
     * compress() answers RHEMA_ETOOBIG).
     */
    size_t (*bound)(rhema_codec *codec, size_t src_len);
    /*
     * Compress src into dst; *dst_len receives the payload size; *dict_id the
     * id of the dictionary used (0: none), which the core writes into the
     * frame.  dst_cap may be smaller than bound(): then the call succeeds
     * when the payload fits and answers RHEMA_ETOOBIG when it does not, never
     * writing past dst_cap (so a caller can pass dst_cap = src_len to mean
     * "only if it pays").  A level outside [level_min, level_max] is
     * RHEMA_EINVAL; what level 0 means inside the range is the codec's
     * (the library default for zstd).
     */
    int (*compress)(rhema_codec_ctx *ctx, int level, const void *src, size_t src_len, void *dst,
                    size_t dst_cap, size_t *dst_len, uint32_t *dict_id);
    /*
     * Decompress a payload into exactly orig_len bytes at dst (dst may be NULL
     * when orig_len is 0).  A payload that is truncated, corrupt, or does not
     * decode to exactly orig_len bytes is RHEMA_ECORRUPT; one that needs a
     * dictionary this instance does not have (or any dict_id for a codec
     * without dictionaries) is RHEMA_ENOTFOUND; dict_id 0 for a payload made
     * with a dictionary is RHEMA_ECORRUPT.  Never reads or writes out of
     * bounds.  Codecs without a checksum (lz4, snappy, zstd as configured) may
     * decode a damaged payload to wrong bytes of the right length; integrity
     * against tampering is the envelope's job (encryption), not the codec's.
     */
    int (*decompress)(rhema_codec_ctx *ctx, const void *src, size_t src_len, void *dst,
                      size_t orig_len, uint32_t dict_id);
    /* --- minor 0 ends here --- */
};

/* The header of a compression vtable: .base = RHEMA_COMPRESS_PLUGIN_HEADER("mine", "1.0", "...").
 */
#define RHEMA_COMPRESS_PLUGIN_HEADER(NAME, VERSION, DESC)                                          \
    RHEMA_PLUGIN_HEADER(struct rhema_compress_plugin, RHEMA_KIND_COMPRESS,                         \
                        RHEMA_COMPRESS_ABI_MINOR, NAME, VERSION, DESC)

#ifdef __cplusplus
}
#endif
#endif /* RHEMA_COMPRESS_H */
