/*
 * zstd -- the Zstandard codec (wire id 2), with an optional trained
 * dictionary.
 *
 * Levels: -131072 .. 22, which is ZSTD_minCLevel() .. ZSTD_maxCLevel() of
 * every libzstd >= 1.4 (configure's minimum) and the range of
 * advanced_features.compression.level.  Negative levels are zstd's "fast"
 * levels, 0 is the library default (3), 20 .. 22 are the "ultra" levels
 * (up to 128 MiB windows; the decoder's default limit accepts them).  The
 * default is 3.
 *
 * The payload is one zstd frame with the content size always written and
 * without a content checksum (as with lz4 and snappy, integrity is not the
 * codec's job; a bit flip may decode to wrong bytes of the right length).
 * decompress() checks, before decoding anything, that src is exactly one
 * frame and that its content size equals orig_len, then decodes with a
 * capacity of orig_len, so output is always bounded.
 *
 * Configuration, group advanced_features.compression.zstd:
 *     dictionary = "/path/to/dict";   # optional; made by `zstd --train`,
 *                                     # ZDICT_trainFromBuffer or rhemactl
 * The file must be a zstd dictionary (magic 0xEC30A437, nonzero id): raw
 * content has no id and could not be told apart from "no dictionary" in
 * the core's frame, so it is refused.  With a dictionary, every compress()
 * uses it and reports its id in *dict_id; decompress() accepts dict_id 0
 * (a frame made without a dictionary, e.g. before one was configured) and
 * the loaded id, and refuses any other id with RHEMA_ENOTFOUND.
 *
 * Per-thread context: a ZSTD_CCtx, a ZSTD_DCtx, and with a dictionary a
 * ZSTD_CDict digested for the level last used by this thread (rebuilt when
 * the level changes; the core uses one level, so in practice once).  The
 * instance owns the dictionary bytes (copied into each CDict: the by-reference
 * constructors are not in libzstd's stable API) and a ZSTD_DDict, read-only after
 * open() and shared by every thread.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <zstd.h>
#include <zstd_errors.h>

#include <rhema/compress.h>

#define PLUGIN_NAME "zstd"
#define LEVEL_MIN (-131072)
#define LEVEL_MAX 22
#define LEVEL_DEFAULT 3
#define DICT_MAGIC 0xEC30A437u
#define DICT_MAX_BYTES (64u << 20) /* far above any useful dictionary */

struct rhema_codec {
    const struct rhema_host *host;
    void *dict; /* the dictionary file's bytes, or NULL */
    size_t dict_len;
    uint32_t dict_id; /* 0 when no dictionary */
    ZSTD_DDict *ddict;
};

struct rhema_codec_ctx {
    rhema_codec *codec;
    ZSTD_CCtx *cctx;
    ZSTD_DCtx *dctx;
    ZSTD_CDict *cdict; /* with a dictionary: digested for cdict_level */
    int cdict_level;
};

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Read the dictionary file into c (see the top comment for what is accepted). */
static int load_dictionary(rhema_codec *c, const char *path, const char *where, char **err)
{
    const struct rhema_host *h = c->host;
    FILE *f = NULL;
    struct stat st;
    unsigned char *buf = NULL;
    ZSTD_CDict *probe = NULL;
    int rc = 0, e;

    f = fopen(path, "rb");
    if (f == NULL) {
        e = errno;
        return h->set_error(err, e == ENOENT ? RHEMA_ENOTFOUND : RHEMA_EIO,
                            "%s: zstd dictionary %s: %s", where, path, strerror(e));
    }
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = h->set_error(err, RHEMA_EINVAL, "%s: zstd dictionary %s: not a regular file", where,
                          path);
        goto out;
    }
    if (st.st_size < 8 || (unsigned long long)st.st_size > DICT_MAX_BYTES) {
        rc = h->set_error(err, RHEMA_EINVAL,
                          "%s: zstd dictionary %s: %lld bytes (want 8 .. %u); train one with "
                          "`zstd --train`",
                          where, path, (long long)st.st_size, DICT_MAX_BYTES);
        goto out;
    }
    buf = malloc((size_t)st.st_size);
    if (buf == NULL) {
        rc = h->set_error(err, RHEMA_ENOMEM, "zstd: out of memory for dictionary %s", path);
        goto out;
    }
    if (fread(buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
        e = ferror(f) ? errno : EIO;
        rc = h->set_error(err, RHEMA_EIO, "%s: zstd dictionary %s: read: %s", where, path,
                          ferror(f) ? strerror(e) : "short read");
        goto out;
    }
    if (le32(buf) != DICT_MAGIC || le32(buf + 4) == 0) {
        rc = h->set_error(err, RHEMA_EINVAL,
                          "%s: %s is not a zstd dictionary (no magic or id 0); train one with "
                          "`zstd --train`",
                          where, path);
        goto out;
    }
    c->ddict = ZSTD_createDDict(buf, (size_t)st.st_size);
    /* a CDict digests the entropy tables: a damaged dictionary fails here */
    probe = ZSTD_createCDict(buf, (size_t)st.st_size, LEVEL_DEFAULT);
    if (c->ddict == NULL || probe == NULL) {
        rc = h->set_error(err, RHEMA_EINVAL, "%s: zstd dictionary %s is damaged", where, path);
        goto out;
    }
    c->dict = buf;
    c->dict_len = (size_t)st.st_size;
    c->dict_id = le32(buf + 4);
    buf = NULL;
    h->log(RHEMA_LOG_DEBUG, PLUGIN_NAME, "dictionary %s: id %u, %zu bytes", path, c->dict_id,
           c->dict_len);
out:
    ZSTD_freeCDict(probe);
    if (rc != 0) {
        ZSTD_freeDDict(c->ddict);
        c->ddict = NULL;
    }
    free(buf);
    fclose(f);
    return rc;
}

static int zstd_open(const struct rhema_host *host, const struct rhema_cfg *cfg, rhema_codec **out,
                     char **err)
{
    const char *path = NULL;
    rhema_codec *c;
    int rc;

    c = calloc(1, sizeof *c);
    if (c == NULL)
        return host->set_error(err, RHEMA_ENOMEM, "zstd: out of memory");
    c->host = host;
    rc = host->cfg_string(cfg, "dictionary", &path);
    if (rc == RHEMA_EINVAL) {
        rc = host->set_error(err, RHEMA_EINVAL, "%s: zstd: dictionary must be a string (a path)",
                             host->cfg_where(cfg, "dictionary"));
        goto fail;
    }
    if (rc == 0 && path[0] != '\0') {
        rc = load_dictionary(c, path, host->cfg_where(cfg, "dictionary"), err);
        if (rc != 0)
            goto fail;
    }
    *out = c;
    return 0;
fail:
    free(c);
    return rc;
}

/* Every context is freed before close (compress.h), so no CDict remains. */
static void zstd_close(rhema_codec *codec)
{
    if (codec == NULL)
        return;
    ZSTD_freeDDict(codec->ddict);
    free(codec->dict);
    free(codec);
}

static int zstd_ctx_new(rhema_codec *codec, rhema_codec_ctx **out)
{
    rhema_codec_ctx *x = calloc(1, sizeof *x);

    if (x == NULL)
        return RHEMA_ENOMEM;
    x->codec = codec;
    x->cctx = ZSTD_createCCtx();
    x->dctx = ZSTD_createDCtx();
    if (x->cctx == NULL || x->dctx == NULL) {
        ZSTD_freeCCtx(x->cctx);
        ZSTD_freeDCtx(x->dctx);
        free(x);
        return RHEMA_ENOMEM;
    }
    *out = x;
    return 0;
}

static void zstd_ctx_free(rhema_codec_ctx *ctx)
{
    if (ctx == NULL)
        return;
    ZSTD_freeCCtx(ctx->cctx);
    ZSTD_freeDCtx(ctx->dctx);
    ZSTD_freeCDict(ctx->cdict);
    free(ctx);
}

/* ZSTD_compressBound, saturating at SIZE_MAX where the library gives up. */
static size_t zstd_bound(rhema_codec *codec, size_t src_len)
{
    size_t b = ZSTD_compressBound(src_len);

    (void)codec;
    return ZSTD_isError(b) || b < src_len ? SIZE_MAX : b;
}

/* Make ctx->cctx compress at `level`, with the instance's dictionary if any. */
static int set_level(rhema_codec_ctx *ctx, int level)
{
    rhema_codec *c = ctx->codec;

    if (c->dict == NULL) {
        if (ZSTD_isError(ZSTD_CCtx_setParameter(ctx->cctx, ZSTD_c_compressionLevel, level)))
            return RHEMA_EINVAL;
        return 0;
    }
    if (ctx->cdict == NULL || ctx->cdict_level != level) {
        /* a referenced CDict's own level wins over the CCtx's, hence one per level */
        ZSTD_CCtx_refCDict(ctx->cctx, NULL);
        ZSTD_freeCDict(ctx->cdict);
        ctx->cdict = ZSTD_createCDict(c->dict, c->dict_len, level);
        if (ctx->cdict == NULL)
            return RHEMA_ENOMEM;
        ctx->cdict_level = level;
        if (ZSTD_isError(ZSTD_CCtx_refCDict(ctx->cctx, ctx->cdict)))
            return RHEMA_ENOMEM;
    }
    return 0;
}

static int zstd_compress(rhema_codec_ctx *ctx, int level, const void *src, size_t src_len,
                         void *dst, size_t dst_cap, size_t *dst_len, uint32_t *dict_id)
{
    static const char none = 0;
    size_t n;
    int rc;

    if (level < LEVEL_MIN || level > LEVEL_MAX)
        return RHEMA_EINVAL;
    if ((rc = set_level(ctx, level)) != 0)
        return rc;
    if (src == NULL)
        src = &none; /* src_len is 0 */
    n = ZSTD_compress2(ctx->cctx, dst, dst == NULL ? 0 : dst_cap, src, src_len);
    if (ZSTD_isError(n)) {
        ZSTD_ErrorCode code = ZSTD_getErrorCode(n);
        if (code == ZSTD_error_dstSize_tooSmall)
            return RHEMA_ETOOBIG;
        if (code == ZSTD_error_memory_allocation)
            return RHEMA_ENOMEM;
        return RHEMA_EINVAL;
    }
    *dst_len = n;
    *dict_id = ctx->codec->dict_id;
    return 0;
}

static int zstd_decompress(rhema_codec_ctx *ctx, const void *src, size_t src_len, void *dst,
                           size_t orig_len, uint32_t dict_id)
{
    rhema_codec *c = ctx->codec;
    char none = 0;
    unsigned long long content;
    unsigned frame_dict;
    size_t n;

    if (dict_id != 0 && dict_id != c->dict_id)
        return RHEMA_ENOTFOUND; /* "needs dictionary <dict_id>" */
    if (src == NULL || src_len == 0)
        return RHEMA_ECORRUPT;
    if (dst == NULL) {
        if (orig_len != 0)
            return RHEMA_EINVAL;
        dst = &none;
    }
    /* exactly one frame, of the announced size, before touching dst */
    content = ZSTD_getFrameContentSize(src, src_len);
    if (content == ZSTD_CONTENTSIZE_ERROR || content == ZSTD_CONTENTSIZE_UNKNOWN ||
        content != (unsigned long long)orig_len)
        return RHEMA_ECORRUPT;
    n = ZSTD_findFrameCompressedSize(src, src_len);
    if (ZSTD_isError(n) || n != src_len)
        return RHEMA_ECORRUPT;
    /* the frame's own dictionary id, when written, must agree with the core's */
    frame_dict = ZSTD_getDictID_fromFrame(src, src_len);
    if (frame_dict != 0 && frame_dict != dict_id)
        return RHEMA_ECORRUPT;
    if (dict_id != 0)
        n = ZSTD_decompress_usingDDict(ctx->dctx, dst, orig_len, src, src_len, c->ddict);
    else
        n = ZSTD_decompressDCtx(ctx->dctx, dst, orig_len, src, src_len);
    if (ZSTD_isError(n)) {
        if (ZSTD_getErrorCode(n) == ZSTD_error_memory_allocation)
            return RHEMA_ENOMEM;
        return RHEMA_ECORRUPT;
    }
    return n == orig_len ? 0 : RHEMA_ECORRUPT;
}

static const struct rhema_compress_plugin zstd_plugin = {
    .base = RHEMA_COMPRESS_PLUGIN_HEADER(PLUGIN_NAME, "1.0.0",
                                         "Zstandard (levels -131072..22, optional dictionary)"),
    .codec_id = RHEMA_CODEC_ZSTD,
    .level_min = LEVEL_MIN,
    .level_max = LEVEL_MAX,
    .level_default = LEVEL_DEFAULT,
    .open = zstd_open,
    .close = zstd_close,
    .ctx_new = zstd_ctx_new,
    .ctx_free = zstd_ctx_free,
    .bound = zstd_bound,
    .compress = zstd_compress,
    .decompress = zstd_decompress,
};

int rhema_plugin_init(const struct rhema_host *host, const struct rhema_plugin **out)
{
    (void)host;
    *out = &zstd_plugin.base;
    return 0;
}
