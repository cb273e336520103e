/*
 * codec -- the compression frame (see codec.h).
 */
#include "rhema_build.h"

#include <endian.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "util.h"

/* Little-endian fields of the frame header: one load or store each. */
static void put_u64(unsigned char *p, uint64_t v)
{
    v = htole64(v);
    memcpy(p, &v, 8);
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return le64toh(v);
}

static void put_u32(unsigned char *p, uint32_t v)
{
    v = htole32(v);
    memcpy(p, &v, 4);
}

static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return le32toh(v);
}

int rhema_codecs_open(struct rhema_codecs *cs, const struct rhema_plugin_registry *reg,
                      const struct rhema_config *cfg, char **err)
{
    const struct rhema_loaded_plugin *p;
    int64_t v;
    double d;
    int b;
    memset(cs, 0, sizeof *cs);
    cs->default_id = -1;
    for (size_t i = 0; (p = rhema_plugin_at(reg, i)); i++) {
        if (p->kind != RHEMA_KIND_COMPRESS)
            continue;
        const struct rhema_compress_plugin *vt = &p->vt.compress;
        struct rhema_codec_slot *slot = &cs->by_id[vt->codec_id];
        if (slot->plugin) {
            rhema_set_error(err, 0, "%s: codec id %u is already taken by '%s' (%s)", p->path,
                            vt->codec_id, slot->plugin->name, slot->plugin->path);
            goto fail;
        }
        const struct rhema_cfg *group = rhema_config_plugin_group(cfg, RHEMA_KIND_COMPRESS, p->name);
        char *perr = NULL;
        int rc = vt->open(rhema_host_get(), group, &slot->inst, &perr);
        if (rc) {
            rhema_set_error(err, 0, "compression '%s': %s", p->name,
                            perr ? perr : rhema_strerror(rc));
            free(perr);
            slot->inst = NULL;
            goto fail;
        }
        slot->plugin = p;
        if (rhema_config_unread_keys(group, err) != 0)
            goto fail;
    }
    if (cfg->compression_algorithm)
        cs->default_id = rhema_codecs_id(cs, cfg->compression_algorithm);
    cs->level = INT32_MIN;
    if (rhema_config_get_int(cfg, "advanced_features.compression.level", &v) == 0)
        cs->level = (int)v;
    cs->threshold = 512;
    if (rhema_config_get_int(cfg, "advanced_features.compression.threshold_bytes", &v) == 0)
        cs->threshold = (size_t)v;
    cs->adaptive = 1;
    if (rhema_config_get_bool(cfg, "advanced_features.compression.adaptive", &b) == 0)
        cs->adaptive = b;
    cs->min_gain = 0.1;
    if (rhema_config_get_double(cfg, "advanced_features.compression.min_gain_ratio", &d) == 0)
        cs->min_gain = d;
    cs->max_decompressed = 64u << 20;
    if (rhema_config_get_int(cfg, "advanced_features.compression.max_decompressed_bytes", &v) ==
        0)
        cs->max_decompressed = (uint64_t)v;
    if (cs->default_id >= 0) { /* a configured level outside the codec's range: its default */
        const struct rhema_compress_plugin *vt = &cs->by_id[cs->default_id].plugin->vt.compress;
        if (cs->level < vt->level_min || cs->level > vt->level_max)
            cs->level = vt->level_default;
    }
    return 0;
fail:
    rhema_codecs_close(cs);
    return RHEMA_EINVAL;
}

void rhema_codecs_close(struct rhema_codecs *cs)
{
    for (int i = 0; i < 256; i++) {
        if (cs->by_id[i].plugin && cs->by_id[i].inst)
            cs->by_id[i].plugin->vt.compress.close(cs->by_id[i].inst);
        cs->by_id[i].plugin = NULL;
        cs->by_id[i].inst = NULL;
    }
}

int rhema_codecs_id(const struct rhema_codecs *cs, const char *name)
{
    for (int i = 1; i < 256; i++)
        if (cs->by_id[i].plugin && strcmp(cs->by_id[i].plugin->name, name) == 0)
            return i;
    return -1;
}

void rhema_codec_ctxs_release(const struct rhema_codecs *cs, struct rhema_codec_ctxs *c)
{
    for (int i = 0; i < 256; i++) {
        if (c->ctx[i])
            cs->by_id[i].plugin->vt.compress.ctx_free(c->ctx[i]);
        c->ctx[i] = NULL;
    }
}

/* This thread's context for codec id, created on first use. */
static rhema_codec_ctx *ctx_of(const struct rhema_codecs *cs, struct rhema_codec_ctxs *c, int id)
{
    if (!c->ctx[id]) {
        const struct rhema_codec_slot *s = &cs->by_id[id];
        if (s->plugin->vt.compress.ctx_new(s->inst, &c->ctx[id]) != 0)
            c->ctx[id] = NULL;
    }
    return c->ctx[id];
}

static int stored(const void *src, size_t len, struct rhema_buf *out, char *err)
{
    out->data = malloc(RHEMA_FRAME_HEADER + len);
    if (!out->data)
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    unsigned char *h = out->data;
    h[0] = 'R', h[1] = 'Z', h[2] = RHEMA_FRAME_VERSION, h[3] = RHEMA_CODEC_STORED, h[4] = 0;
    put_u64(h + 5, len);
    if (len)
        memcpy(h + RHEMA_FRAME_HEADER, src, len);
    out->len = RHEMA_FRAME_HEADER + len;
    return 0;
}

int rhema_frame_compress(const struct rhema_codecs *cs, struct rhema_codec_ctxs *c, int codec_id,
                         int32_t level, int force, const void *src, size_t len,
                         struct rhema_buf *out, char err[RHEMA_FRAME_ERR_MAX])
{
    out->data = NULL;
    out->len = 0;
    if (codec_id < 0)
        codec_id = cs->default_id;
    if (codec_id == RHEMA_CODEC_STORED)
        return stored(src, len, out, err);
    if (codec_id < 0 || codec_id > 255 || !cs->by_id[codec_id].plugin)
        return rhema_set_errbuf(err, RHEMA_EINVAL,
                                "no compression codec is loaded for this request");
    const struct rhema_compress_plugin *vt = &cs->by_id[codec_id].plugin->vt.compress;
    if (level == INT32_MIN)
        level = codec_id == cs->default_id && cs->level != INT32_MIN ? cs->level
                                                                     : vt->level_default;
    if (level < vt->level_min || level > vt->level_max)
        return rhema_set_errbuf(err, RHEMA_EINVAL, "level %d is outside %s's %d..%d", level,
                                cs->by_id[codec_id].plugin->name, vt->level_min, vt->level_max);
    if (!force && len < cs->threshold)
        return stored(src, len, out, err); /* too small to be worth it */
    rhema_codec_ctx *ctx = ctx_of(cs, c, codec_id);
    if (!ctx)
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "cannot create a %s context",
                                cs->by_id[codec_id].plugin->name);
    size_t cap = vt->bound(cs->by_id[codec_id].inst, len);
    unsigned char *buf = malloc(RHEMA_FRAME_HEADER + 4 + cap);
    if (!buf)
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    size_t plen = 0;
    uint32_t dict = 0;
    /* compress behind a header with room for the dictionary id; move it up if unused */
    int rc = vt->compress(ctx, level, src, len, buf + RHEMA_FRAME_HEADER + 4, cap, &plen, &dict);
    if (rc) {
        free(buf);
        return rhema_set_errbuf(err, rc, "%s failed: %s", cs->by_id[codec_id].plugin->name,
                                rhema_strerror(rc));
    }
    if (!force && cs->adaptive && (double)plen > (double)len * (1.0 - cs->min_gain)) {
        free(buf); /* the gain is below min_gain_ratio: store it as is */
        return stored(src, len, out, err);
    }
    size_t hl = RHEMA_FRAME_HEADER + (dict ? 4 : 0);
    if (!dict)
        memmove(buf + RHEMA_FRAME_HEADER, buf + RHEMA_FRAME_HEADER + 4, plen);
    buf[0] = 'R', buf[1] = 'Z', buf[2] = RHEMA_FRAME_VERSION, buf[3] = (unsigned char)codec_id;
    buf[4] = dict ? RHEMA_FRAME_DICT : 0;
    put_u64(buf + 5, len);
    if (dict)
        put_u32(buf + RHEMA_FRAME_HEADER, dict);
    out->data = buf;
    out->len = hl + plen;
    return 0;
}

/* Check a frame's header; its announced length, payload offset and dictionary id. */
static int frame_header(const struct rhema_codecs *cs, const unsigned char *h, size_t len,
                        uint64_t *orig, size_t *hl_out, uint32_t *dict_out, char *err)
{
    if (len < RHEMA_FRAME_HEADER)
        return rhema_set_errbuf(err, RHEMA_ECORRUPT,
                                "frame truncated: %zu bytes, the header alone is %d", len,
                                RHEMA_FRAME_HEADER);
    if (h[0] != 'R' || h[1] != 'Z')
        return rhema_set_errbuf(err, RHEMA_ECORRUPT, "not a rhema compression frame (bad magic)");
    if (h[2] != RHEMA_FRAME_VERSION)
        return rhema_set_errbuf(err, RHEMA_ECORRUPT, "frame format version %u is not supported",
                                h[2]);
    if (h[4] & ~RHEMA_FRAME_DICT)
        return rhema_set_errbuf(err, RHEMA_ECORRUPT, "unknown frame flags 0x%02x", h[4]);
    size_t hl = RHEMA_FRAME_HEADER;
    uint32_t dict = 0;
    if (h[4] & RHEMA_FRAME_DICT) {
        if (len < hl + 4)
            return rhema_set_errbuf(err, RHEMA_ECORRUPT, "frame truncated in its dictionary id");
        dict = get_u32(h + hl);
        hl += 4;
    }
    *orig = get_u64(h + 5);
    if (*orig > cs->max_decompressed)
        return rhema_set_errbuf(
            err, RHEMA_ETOOBIG,
            "frame announces %llu bytes, more than max_decompressed_bytes (%llu)",
            (unsigned long long)*orig, (unsigned long long)cs->max_decompressed);
    int id = h[3];
    if (id == RHEMA_CODEC_STORED) {
        if (dict || len - hl != *orig)
            return rhema_set_errbuf(err, RHEMA_ECORRUPT, "stored frame of %zu bytes announces %llu",
                                    len - hl, (unsigned long long)*orig);
    } else if (!cs->by_id[id].plugin) {
        return rhema_set_errbuf(err, RHEMA_ENOTSUP,
                                "frame uses codec id %d, which is not loaded here", id);
    }
    *hl_out = hl;
    *dict_out = dict;
    return 0;
}

int rhema_frame_peek(const struct rhema_codecs *cs, const void *src, size_t len, uint64_t *orig,
                     char err[RHEMA_FRAME_ERR_MAX])
{
    size_t hl;
    uint32_t dict;
    return frame_header(cs, src, len, orig, &hl, &dict, err);
}

int rhema_frame_decompress_into(const struct rhema_codecs *cs, struct rhema_codec_ctxs *c,
                                const void *src, size_t len, void *dst, size_t cap, size_t *n,
                                char err[RHEMA_FRAME_ERR_MAX])
{
    const unsigned char *h = src;
    uint64_t orig;
    size_t hl;
    uint32_t dict;
    int rc = frame_header(cs, h, len, &orig, &hl, &dict, err);
    if (rc)
        return rc;
    if (orig > cap)
        return rhema_set_errbuf(err, RHEMA_ETOOBIG, "frame of %llu bytes does not fit in %zu",
                                (unsigned long long)orig, cap);
    int id = h[3];
    if (id == RHEMA_CODEC_STORED) {
        if (orig)
            memcpy(dst, h + hl, orig);
    } else {
        const struct rhema_codec_slot *s = &cs->by_id[id];
        rhema_codec_ctx *ctx = ctx_of(cs, c, id);
        rc = ctx ? s->plugin->vt.compress.decompress(ctx, h + hl, len - hl, dst, (size_t)orig,
                                                      dict)
                 : RHEMA_ENOMEM;
        if (rc) {
            if (rc == RHEMA_ENOTFOUND)
                return rhema_set_errbuf(err, rc,
                                        "frame needs %s dictionary %u, which is not loaded",
                                        s->plugin->name, dict);
            return rhema_set_errbuf(err, rc == RHEMA_ENOMEM ? rc : RHEMA_ECORRUPT,
                                    "%s payload does not decode to %llu bytes: %s", s->plugin->name,
                                    (unsigned long long)orig, rhema_strerror(rc));
        }
    }
    *n = (size_t)orig;
    return 0;
}

int rhema_frame_decompress(const struct rhema_codecs *cs, struct rhema_codec_ctxs *c,
                           const void *src, size_t len, struct rhema_buf *out,
                           char err[RHEMA_FRAME_ERR_MAX])
{
    uint64_t orig;
    out->data = NULL;
    out->len = 0;
    int rc = rhema_frame_peek(cs, src, len, &orig, err);
    if (rc)
        return rc;
    unsigned char *buf = malloc(orig ? orig : 1);
    if (!buf)
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    size_t n;
    rc = rhema_frame_decompress_into(cs, c, src, len, buf, orig, &n, err);
    if (rc) {
        free(buf);
        return rc;
    }
    out->data = buf;
    out->len = n;
    return 0;
}
