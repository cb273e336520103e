/*
 * lz4 -- the LZ4 block codec (wire id 1).
 *
 * Levels, following lz4frame's convention:
 *   -65 .. -1  LZ4_compress_fast with acceleration 1 - level (2 .. 66):
 *              faster, larger output;
 *    0, 1      LZ4_compress_fast with acceleration 1 (the default; 0 is an
 *              alias of 1, as in lz4frame);
 *    2 .. 12   LZ4 HC at that level (slower, smaller; 12 is LZ4HC_CLEVEL_MAX).
 *
 * The payload is one raw LZ4 block, without the frame format: the core's
 * frame already carries the original length, and LZ4_decompress_safe is
 * told exactly that many bytes of room.  A block has no checksum, so a bit
 * flip may decode to wrong bytes of the right length; it never reads or
 * writes out of bounds (LZ4_decompress_safe is the bounds-checked decoder).
 *
 * Per-thread context: the LZ4_stream_t state (16 KiB) and, allocated on the
 * first HC call, the LZ4_streamHC_t state (about 256 KiB).  The instance
 * holds nothing: this codec has no settings.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <lz4.h>
#include <lz4hc.h>

#include <rhema/compress.h>

#define PLUGIN_NAME "lz4"
#define LEVEL_MIN (-65)
#define LEVEL_MAX 12
#define LEVEL_DEFAULT 1

struct rhema_codec {
    const struct rhema_host *host;
};

struct rhema_codec_ctx {
    void *fast_state; /* LZ4_sizeofState() bytes */
    void *hc_state;   /* LZ4_sizeofStateHC() bytes, NULL until an HC level is used */
};

static int lz4_open(const struct rhema_host *host, const struct rhema_cfg *cfg, rhema_codec **out,
                    char **err)
{
    rhema_codec *c;

    (void)cfg; /* no settings */
    c = calloc(1, sizeof *c);
    if (c == NULL)
        return host->set_error(err, RHEMA_ENOMEM, "lz4: out of memory");
    c->host = host;
    *out = c;
    return 0;
}

static void lz4_close(rhema_codec *codec)
{
    free(codec);
}

static int lz4_ctx_new(rhema_codec *codec, rhema_codec_ctx **out)
{
    rhema_codec_ctx *x = calloc(1, sizeof *x);

    (void)codec;
    if (x == NULL)
        return RHEMA_ENOMEM;
    x->fast_state = malloc((size_t)LZ4_sizeofState());
    if (x->fast_state == NULL) {
        free(x);
        return RHEMA_ENOMEM;
    }
    *out = x;
    return 0;
}

static void lz4_ctx_free(rhema_codec_ctx *ctx)
{
    if (ctx == NULL)
        return;
    free(ctx->fast_state);
    free(ctx->hc_state);
    free(ctx);
}

/*
 * LZ4_COMPRESSBOUND for any size, saturating at SIZE_MAX; compress()
 * refuses inputs above LZ4_MAX_INPUT_SIZE anyway.
 */
static size_t lz4_bound(rhema_codec *codec, size_t src_len)
{
    size_t extra = src_len / 255 + 16;

    (void)codec;
    return src_len > SIZE_MAX - extra ? SIZE_MAX : src_len + extra;
}

static int lz4_compress(rhema_codec_ctx *ctx, int level, const void *src, size_t src_len,
                        void *dst, size_t dst_cap, size_t *dst_len, uint32_t *dict_id)
{
    char none = 0;
    int cap, n;

    if (level < LEVEL_MIN || level > LEVEL_MAX)
        return RHEMA_EINVAL;
    if (src_len > (size_t)LZ4_MAX_INPUT_SIZE)
        return RHEMA_ETOOBIG;
    if (src == NULL)
        src = &none; /* src_len is 0 */
    if (dst_cap == 0 || dst == NULL)
        return RHEMA_ETOOBIG; /* even an empty input takes one byte */
    cap = dst_cap > (size_t)INT_MAX ? INT_MAX : (int)dst_cap;
    if (level >= 2) {
        if (ctx->hc_state == NULL) {
            ctx->hc_state = malloc((size_t)LZ4_sizeofStateHC());
            if (ctx->hc_state == NULL)
                return RHEMA_ENOMEM;
        }
        n = LZ4_compress_HC_extStateHC(ctx->hc_state, src, dst, (int)src_len, cap, level);
    } else {
        int accel = level < 0 ? 1 - level : 1;
        n = LZ4_compress_fast_extState(ctx->fast_state, src, dst, (int)src_len, cap, accel);
    }
    if (n <= 0)
        return RHEMA_ETOOBIG; /* the only failure left: it did not fit in dst_cap */
    *dst_len = (size_t)n;
    *dict_id = 0;
    return 0;
}

static int lz4_decompress(rhema_codec_ctx *ctx, const void *src, size_t src_len, void *dst,
                          size_t orig_len, uint32_t dict_id)
{
    char none = 0;
    int n;

    (void)ctx;
    if (dict_id != 0)
        return RHEMA_ENOTFOUND; /* lz4 payloads never use a dictionary */
    if (src == NULL || src_len == 0 || src_len > (size_t)INT_MAX ||
        orig_len > (size_t)LZ4_MAX_INPUT_SIZE)
        return RHEMA_ECORRUPT; /* compress() never makes such a payload */
    if (dst == NULL) {
        if (orig_len != 0)
            return RHEMA_EINVAL;
        dst = &none; /* LZ4 wants a pointer even for capacity 0 */
    }
    n = LZ4_decompress_safe(src, dst, (int)src_len, (int)orig_len);
    if (n < 0 || (size_t)n != orig_len)
        return RHEMA_ECORRUPT;
    return 0;
}

static const struct rhema_compress_plugin lz4_plugin = {
    .base = RHEMA_COMPRESS_PLUGIN_HEADER(PLUGIN_NAME, "1.0.0", "LZ4 block (fast -65..1, HC 2..12)"),
    .codec_id = RHEMA_CODEC_LZ4,
    .level_min = LEVEL_MIN,
    .level_max = LEVEL_MAX,
    .level_default = LEVEL_DEFAULT,
    .open = lz4_open,
    .close = lz4_close,
    .ctx_new = lz4_ctx_new,
    .ctx_free = lz4_ctx_free,
    .bound = lz4_bound,
    .compress = lz4_compress,
    .decompress = lz4_decompress,
};

int rhema_plugin_init(const struct rhema_host *host, const struct rhema_plugin **out)
{
    (void)host;
    *out = &lz4_plugin.base;
    return 0;
}
