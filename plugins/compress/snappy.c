/*
 * snappy -- Google's Snappy through its C API (wire id 4).
 *
 * One level, 0: snappy has no settings.  The payload is a raw snappy
 * block (varint original length, then tags), not the framing format: the
 * core's frame already carries the length.  decompress() reads the
 * block's own length first and refuses a block that does not announce
 * exactly orig_len, so output is bounded before a byte is written;
 * snappy_uncompress is the bounds-checked decoder (it fails on a
 * corrupt block instead of reading or writing out of bounds).  There is
 * no checksum: a bit flip may decode to wrong bytes of the right length.
 *
 * snappy_compress insists on snappy_max_compressed_length() bytes of room.
 * When dst_cap is smaller (a caller that only wants the payload if it is
 * small enough), the per-thread context compresses into a scratch buffer of
 * its own and copies the result when it fits, so a small dst_cap is
 * RHEMA_ETOOBIG only when the payload really does not fit.
 *
 * Inputs above 4 GiB - 1 are RHEMA_ETOOBIG: the block format's length is a
 * 32-bit varint.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <snappy-c.h>

#include <rhema/compress.h>

#define PLUGIN_NAME "snappy"
#define SNAPPY_INPUT_MAX ((size_t)UINT32_MAX)

struct rhema_codec {
    const struct rhema_host *host;
};

struct rhema_codec_ctx {
    char *scratch; /* for a dst_cap below the bound; grows as needed */
    size_t scratch_cap;
};

static int snappy_open_(const struct rhema_host *host, const struct rhema_cfg *cfg,
                        rhema_codec **out, char **err)
{
    rhema_codec *c;

    (void)cfg; /* no settings */
    c = calloc(1, sizeof *c);
    if (c == NULL)
        return host->set_error(err, RHEMA_ENOMEM, "snappy: out of memory");
    c->host = host;
    *out = c;
    return 0;
}

static void snappy_close_(rhema_codec *codec)
{
    free(codec);
}

static int snappy_ctx_new(rhema_codec *codec, rhema_codec_ctx **out)
{
    rhema_codec_ctx *x = calloc(1, sizeof *x);

    (void)codec;
    if (x == NULL)
        return RHEMA_ENOMEM;
    *out = x;
    return 0;
}

static void snappy_ctx_free(rhema_codec_ctx *ctx)
{
    if (ctx == NULL)
        return;
    free(ctx->scratch);
    free(ctx);
}

/* snappy_max_compressed_length (32 + n + n / 6), saturating at SIZE_MAX. */
static size_t snappy_bound(rhema_codec *codec, size_t src_len)
{
    size_t extra = 32 + src_len / 6;

    (void)codec;
    return src_len > SIZE_MAX - extra ? SIZE_MAX : src_len + extra;
}

static int snappy_compress_(rhema_codec_ctx *ctx, int level, const void *src, size_t src_len,
                            void *dst, size_t dst_cap, size_t *dst_len, uint32_t *dict_id)
{
    static const char none = 0;
    size_t need, n;
    char *out = dst;

    if (level != 0)
        return RHEMA_EINVAL;
    if (src_len > SNAPPY_INPUT_MAX)
        return RHEMA_ETOOBIG;
    if (src == NULL)
        src = &none; /* src_len is 0 */
    need = snappy_max_compressed_length(src_len);
    if (dst == NULL || dst_cap < need) {
        if (ctx->scratch_cap < need) {
            char *p = realloc(ctx->scratch, need);
            if (p == NULL)
                return RHEMA_ENOMEM;
            ctx->scratch = p;
            ctx->scratch_cap = need;
        }
        out = ctx->scratch;
    }
    n = need;
    if (snappy_compress(src, src_len, out, &n) != SNAPPY_OK)
        return RHEMA_EINVAL; /* cannot happen with `need` bytes of room */
    if (out != dst) {
        if (dst == NULL || n > dst_cap)
            return RHEMA_ETOOBIG;
        memcpy(dst, out, n);
    }
    *dst_len = n;
    *dict_id = 0;
    return 0;
}

static int snappy_decompress(rhema_codec_ctx *ctx, const void *src, size_t src_len, void *dst,
                             size_t orig_len, uint32_t dict_id)
{
    char spare = 0;
    size_t n;

    (void)ctx;
    if (dict_id != 0)
        return RHEMA_ENOTFOUND; /* snappy payloads never use a dictionary */
    if (src == NULL || src_len == 0)
        return RHEMA_ECORRUPT;
    if (dst == NULL) {
        if (orig_len != 0)
            return RHEMA_EINVAL;
        dst = &spare;
    }
    /* snappy_uncompress refuses a payload longer than n and reports a shorter one in n */
    n = orig_len;
    if (snappy_uncompress(src, src_len, dst, &n) != SNAPPY_OK || n != orig_len)
        return RHEMA_ECORRUPT;
    return 0;
}

static const struct rhema_compress_plugin snappy_plugin = {
    .base = RHEMA_COMPRESS_PLUGIN_HEADER(PLUGIN_NAME, "1.0.0", "Snappy block (one level, 0)"),
    .codec_id = RHEMA_CODEC_SNAPPY,
    .level_min = 0,
    .level_max = 0,
    .level_default = 0,
    .open = snappy_open_,
    .close = snappy_close_,
    .ctx_new = snappy_ctx_new,
    .ctx_free = snappy_ctx_free,
    .bound = snappy_bound,
    .compress = snappy_compress_,
    .decompress = snappy_decompress,
};

int rhema_plugin_init(const struct rhema_host *host, const struct rhema_plugin **out)
{
    (void)host;
    *out = &snappy_plugin.base;
    return 0;
}
