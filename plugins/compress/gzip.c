/*
 * gzip -- DEFLATE in the gzip wrapper (RFC 1952), through zlib (wire id 3).
 *
 * The payload is one gzip member (windowBits 15 + 16): a 10-byte header
 * with no name and mtime 0, deflate data, and a trailer with the CRC-32 and
 * the length of the original.  It costs 12 bytes more than the zlib
 * wrapper, and buys a real checksum (so a bit flip is caught, unlike with
 * lz4 or snappy) and a payload that `gzip -d` can read when debugging.
 * decompress() accepts only gzip (not zlib or raw deflate, no automatic
 * detection), exactly one member, and exactly orig_len bytes of output.
 *
 * Levels 1 .. 9, default 6 (zlib's Z_DEFAULT_COMPRESSION).  Level 0 (stored
 * blocks) is left out: the core stores a message as is (codec id 0) when
 * compressing does not pay, which is cheaper and smaller.
 *
 * Per-thread context: one deflate and one inflate z_stream, made on first
 * use and reused with deflateReset / inflateReset, so a message costs no
 * allocation (the deflate stream is made again when the level changes).
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include <rhema/compress.h>

#define PLUGIN_NAME "gzip"
#define LEVEL_MIN 1
#define LEVEL_MAX 9
#define LEVEL_DEFAULT 6
#define GZIP_WINDOW_BITS (15 + 16)
#define GZIP_MEM_LEVEL 8
#define GZIP_WRAPPER_BYTES 18 /* header 10, trailer 8 */
#define CHUNK_MAX ((size_t)UINT_MAX) /* avail_in / avail_out are uInt */

struct rhema_codec {
    const struct rhema_host *host;
};

struct rhema_codec_ctx {
    z_stream def, inf;
    int def_ready, inf_ready; /* deflateInit2 / inflateInit2 done */
    int def_level;            /* the level def was last set to */
};

static int gzip_open(const struct rhema_host *host, const struct rhema_cfg *cfg, rhema_codec **out,
                     char **err)
{
    rhema_codec *c;

    (void)cfg; /* no settings */
    c = calloc(1, sizeof *c);
    if (c == NULL)
        return host->set_error(err, RHEMA_ENOMEM, "gzip: out of memory");
    c->host = host;
    *out = c;
    return 0;
}

static void gzip_close(rhema_codec *codec)
{
    free(codec);
}

static int gzip_ctx_new(rhema_codec *codec, rhema_codec_ctx **out)
{
    rhema_codec_ctx *x = calloc(1, sizeof *x);

    (void)codec;
    if (x == NULL)
        return RHEMA_ENOMEM;
    *out = x;
    return 0;
}

static void gzip_ctx_free(rhema_codec_ctx *ctx)
{
    if (ctx == NULL)
        return;
    if (ctx->def_ready)
        deflateEnd(&ctx->def);
    if (ctx->inf_ready)
        inflateEnd(&ctx->inf);
    free(ctx);
}

/*
 * deflateBound's formula for the default windowBits and memLevel (levels
 * 1..9 never fall back to anything larger), plus the gzip wrapper instead
 * of the zlib one, saturating at SIZE_MAX.
 */
static size_t gzip_bound(rhema_codec *codec, size_t n)
{
    size_t extra = (n >> 12) + (n >> 14) + (n >> 25) + 13 - 6 + GZIP_WRAPPER_BYTES;

    (void)codec;
    return n > SIZE_MAX - extra ? SIZE_MAX : n + extra;
}

static int gzip_compress(rhema_codec_ctx *ctx, int level, const void *src, size_t src_len,
                         void *dst, size_t dst_cap, size_t *dst_len, uint32_t *dict_id)
{
    static const unsigned char none = 0;
    unsigned char spare = 0;
    const unsigned char *in = src != NULL ? src : &none;
    unsigned char *out = dst != NULL ? dst : &spare;
    size_t in_left = src_len, out_left = dst != NULL ? dst_cap : 0;
    z_stream *z = &ctx->def;
    int zrc;

    if (level < LEVEL_MIN || level > LEVEL_MAX)
        return RHEMA_EINVAL;
    if (ctx->def_ready && ctx->def_level != level) {
        /* a new level starts a new stream: deflateParams' rules differ across zlib versions */
        deflateEnd(z);
        ctx->def_ready = 0;
    }
    if (!ctx->def_ready) {
        memset(z, 0, sizeof *z);
        if (deflateInit2(z, level, Z_DEFLATED, GZIP_WINDOW_BITS, GZIP_MEM_LEVEL,
                         Z_DEFAULT_STRATEGY) != Z_OK)
            return RHEMA_ENOMEM;
        ctx->def_ready = 1;
        ctx->def_level = level;
    } else if (deflateReset(z) != Z_OK) {
        return RHEMA_EINVAL;
    }
    z->next_in = (Bytef *)(uintptr_t)in;
    z->next_out = out;
    do {
        uInt ai = (uInt)(in_left < CHUNK_MAX ? in_left : CHUNK_MAX);
        uInt ao = (uInt)(out_left < CHUNK_MAX ? out_left : CHUNK_MAX);
        z->avail_in = ai;
        z->avail_out = ao;
        zrc = deflate(z, in_left > ai ? Z_NO_FLUSH : Z_FINISH);
        in_left -= ai - z->avail_in;
        out_left -= ao - z->avail_out;
        if (zrc == Z_STREAM_ERROR)
            return RHEMA_EINVAL;
        if (zrc != Z_STREAM_END && out_left == 0)
            return RHEMA_ETOOBIG; /* never writes past dst_cap: avail_out bounds it */
    } while (zrc != Z_STREAM_END);
    *dst_len = (dst != NULL ? dst_cap : 0) - out_left;
    *dict_id = 0;
    return 0;
}

static int gzip_decompress(rhema_codec_ctx *ctx, const void *src, size_t src_len, void *dst,
                           size_t orig_len, uint32_t dict_id)
{
    unsigned char spare = 0;
    unsigned char *out;
    size_t in_left = src_len, out_left = orig_len;
    z_stream *z = &ctx->inf;
    int zrc;

    if (dict_id != 0)
        return RHEMA_ENOTFOUND; /* gzip payloads never use a dictionary */
    if (src == NULL || src_len == 0)
        return RHEMA_ECORRUPT;
    if (dst == NULL && orig_len != 0)
        return RHEMA_EINVAL;
    out = dst != NULL ? dst : &spare;
    if (!ctx->inf_ready) {
        memset(z, 0, sizeof *z);
        if (inflateInit2(z, GZIP_WINDOW_BITS) != Z_OK)
            return RHEMA_ENOMEM;
        ctx->inf_ready = 1;
    } else if (inflateReset(z) != Z_OK) {
        return RHEMA_EINVAL;
    }
    z->next_in = (Bytef *)(uintptr_t)src;
    z->next_out = out;
    for (;;) {
        uInt ai = (uInt)(in_left < CHUNK_MAX ? in_left : CHUNK_MAX);
        uInt ao = (uInt)(out_left < CHUNK_MAX ? out_left : CHUNK_MAX);
        z->avail_in = ai;
        z->avail_out = ao;
        zrc = inflate(z, Z_NO_FLUSH);
        in_left -= ai - z->avail_in;
        out_left -= ao - z->avail_out;
        if (zrc == Z_STREAM_END)
            break;
        if (zrc == Z_MEM_ERROR)
            return RHEMA_ENOMEM;
        if (zrc != Z_OK && zrc != Z_BUF_ERROR)
            return RHEMA_ECORRUPT; /* Z_DATA_ERROR, Z_NEED_DICT, Z_STREAM_ERROR */
        /* no progress possible: input ended early, or output would pass orig_len */
        if (z->avail_in == 0 && in_left == 0)
            return RHEMA_ECORRUPT;
        if (z->avail_out == 0 && out_left == 0)
            return RHEMA_ECORRUPT;
    }
    /* one member, all of src, exactly orig_len bytes (the trailer's ISIZE agreed) */
    if (in_left != 0 || out_left != 0)
        return RHEMA_ECORRUPT;
    return 0;
}

static const struct rhema_compress_plugin gzip_plugin = {
    .base = RHEMA_COMPRESS_PLUGIN_HEADER(PLUGIN_NAME, "1.0.0",
                                         "DEFLATE in a gzip wrapper, via zlib (levels 1..9)"),
    .codec_id = RHEMA_CODEC_GZIP,
    .level_min = LEVEL_MIN,
    .level_max = LEVEL_MAX,
    .level_default = LEVEL_DEFAULT,
    .open = gzip_open,
    .close = gzip_close,
    .ctx_new = gzip_ctx_new,
    .ctx_free = gzip_ctx_free,
    .bound = gzip_bound,
    .compress = gzip_compress,
    .decompress = gzip_decompress,
};

int rhema_plugin_init(const struct rhema_host *host, const struct rhema_plugin **out)
{
    (void)host;
    *out = &gzip_plugin.base;
    return 0;
}
