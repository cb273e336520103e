/*
 * compress_suite -- see compress_suite.h for what is checked and why.
 */
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
#include <malloc.h>
#define HAVE_MALLINFO2 1
#endif

#include "compress_suite.h"

#define CANARY_LEN 64
#define CANARY_BYTE 0xC5
#define DICT_SENTINEL 0xA5A5A5A5u
#define UNKNOWN_DICT_ID 0x7E57D1C7u
#define BIG_LEN (16u << 20)
#define BIG_MAX_LEN (2u << 20) /* the large input at level_max */
#define N_THREADS 4
#define THREAD_ROUNDS 120
#define MSG_MAX 512

struct suite {
    const struct rhema_compress_plugin *vt;
    const struct rhema_host *host;
    const struct rhema_cfg *cfg;
    rhema_conf_report_fn report;
    void *report_ctx;
    struct rhema_conf_totals *totals;
    unsigned failed;
    rhema_codec *codec;
    rhema_codec_ctx *ctx;
    int *levels; /* the levels round trips run at */
    size_t n_levels;
};

/* A check in progress: its first failure (later ones only counted). */
struct check {
    char msg[MSG_MAX];
    unsigned failures;
};

static void fail(struct check *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct check *c, const char *fmt, ...)
{
    if (c->failures++ == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->msg, sizeof c->msg, fmt, ap);
        va_end(ap);
    }
}

static void done(struct suite *s, const char *name, struct check *c)
{
    char detail[MSG_MAX + 64];
    int ok = c->failures == 0;

    if (c->failures > 1)
        snprintf(detail, sizeof detail, "%s (and %u more failures)", c->msg, c->failures - 1);
    else
        snprintf(detail, sizeof detail, "%s", ok ? "" : c->msg);
    s->report(s->report_ctx, name, ok ? RHEMA_CONF_PASS : RHEMA_CONF_FAIL, detail);
    if (s->totals) {
        if (ok)
            s->totals->passed++;
        else
            s->totals->failed++;
    }
    if (!ok)
        s->failed++;
}

static void skip(struct suite *s, const char *name, const char *why)
{
    s->report(s->report_ctx, name, RHEMA_CONF_SKIP, why);
    if (s->totals)
        s->totals->skipped++;
}

/* ---- data ---- */

static uint64_t next_rand(uint64_t *st)
{
    uint64_t x = *st;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *st = x;
}

static void gen_random(unsigned char *p, size_t n, uint64_t seed)
{
    uint64_t st = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(next_rand(&st) >> 32);
}

static void gen_repetitive(unsigned char *p, size_t n)
{
    static const char pat[] = "lease.renew:";
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)pat[i % (sizeof pat - 1)];
}

/* Coordination-style JSON messages, one per line, cut at n bytes. */
static void gen_json(unsigned char *p, size_t n, uint64_t seed)
{
    static const char *const ops[] = {"lease.acquire", "lease.renew", "kv.put", "kv.get",
                                      "session.heartbeat", "service.register"};
    static const char *const svcs[] = {"payments", "orders", "inventory", "auth", "search"};
    uint64_t st = seed * 0x9E3779B97F4A7C15ull + 7;
    size_t off = 0;
    char line[256];

    while (off < n) {
        uint64_t r = next_rand(&st);
        int len = snprintf(line, sizeof line,
                           "{\"op\":\"%s\",\"service\":\"%s-api\",\"node\":\"node-%u\","
                           "\"epoch\":%u,\"ttl_ms\":%u,\"ts\":%llu,\"ok\":%s}\n",
                           ops[r % 6], svcs[(r >> 8) % 5], (unsigned)(r >> 16) % 64,
                           (unsigned)(r >> 24) % 100000, 1000u * (unsigned)((r >> 40) % 30),
                           1700000000000ull + (r >> 44), (r >> 63) ? "true" : "false");
        size_t k = (size_t)len < n - off ? (size_t)len : n - off;
        memcpy(p + off, line, k);
        off += k;
    }
}

/* Mostly JSON, with a random 4 KiB block in every 32 KiB. */
static void gen_big(unsigned char *p, size_t n)
{
    gen_json(p, n, 99);
    for (size_t off = 0; off + 4096 <= n; off += 32768)
        gen_random(p + off, 4096, off + 1);
}

/* ---- buffers with canaries ---- */

static unsigned char *canaried(size_t n)
{
    unsigned char *p = malloc(n + CANARY_LEN);
    if (p != NULL)
        memset(p + n, CANARY_BYTE, CANARY_LEN);
    return p;
}

static int canary_ok(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < CANARY_LEN; i++)
        if (p[n + i] != CANARY_BYTE)
            return 0;
    return 1;
}

/* An exact-size copy (so a read past the end is seen by ASan / valgrind). */
static unsigned char *exact_copy(const void *p, size_t n)
{
    unsigned char *q = malloc(n ? n : 1);
    if (q != NULL && n)
        memcpy(q, p, n);
    return q;
}

/* A compressed payload. */
struct payload {
    unsigned char *data; /* exact size */
    size_t len;
    uint32_t dict_id;
    size_t orig_len;
    int level;
};

static void payload_free(struct payload *p)
{
    free(p->data);
    p->data = NULL;
}

/*
 * Compress src at level with ctx into an exact-size payload, checking the
 * bound, the canary and that *dict_id was written.  0 or -1 (c failed).
 */
static int make_payload(const struct suite *s, rhema_codec_ctx *ctx, int level, const void *src,
                        size_t n, struct payload *out, struct check *c, const char *what)
{
    size_t b = s->vt->bound(s->codec, n), len = 0;
    uint32_t dict_id = DICT_SENTINEL;
    unsigned char *dst;
    int rc;

    out->data = NULL;
    if (b < n / 2 || b == SIZE_MAX) {
        fail(c, "%s: bound(%zu) = %zu is implausible", what, n, b);
        return -1;
    }
    dst = canaried(b);
    if (dst == NULL) {
        fail(c, "%s: out of memory", what);
        return -1;
    }
    rc = s->vt->compress(ctx, level, src, n, dst, b, &len, &dict_id);
    if (rc != 0) {
        fail(c, "%s: compress at level %d: %s", what, level, rhema_strerror(rc));
        goto bad;
    }
    if (len > b) {
        fail(c, "%s: level %d: payload of %zu bytes, bound %zu", what, level, len, b);
        goto bad;
    }
    if (!canary_ok(dst, b)) {
        fail(c, "%s: level %d: compress wrote past dst_cap", what, level);
        goto bad;
    }
    if (dict_id == DICT_SENTINEL) {
        fail(c, "%s: level %d: compress left *dict_id unset", what, level);
        goto bad;
    }
    out->data = exact_copy(dst, len);
    out->len = len;
    out->dict_id = dict_id;
    out->orig_len = n;
    out->level = level;
    free(dst);
    if (out->data == NULL) {
        fail(c, "%s: out of memory", what);
        return -1;
    }
    return 0;
bad:
    free(dst);
    return -1;
}

/* Decompress p with ctx and compare with src.  0 or -1 (c failed). */
static int check_decode(const struct suite *s, rhema_codec_ctx *ctx, const struct payload *p,
                        const void *src, struct check *c, const char *what)
{
    unsigned char *out = canaried(p->orig_len);
    int rc;

    if (out == NULL) {
        fail(c, "%s: out of memory", what);
        return -1;
    }
    rc = s->vt->decompress(ctx, p->data, p->len, out, p->orig_len, p->dict_id);
    if (rc != 0)
        fail(c, "%s: level %d: decompress of %zu bytes: %s", what, p->level, p->len,
             rhema_strerror(rc));
    else if (!canary_ok(out, p->orig_len))
        fail(c, "%s: level %d: decompress wrote past orig_len", what, p->level);
    else if (p->orig_len && memcmp(out, src, p->orig_len) != 0)
        fail(c, "%s: level %d: decoded bytes differ from the input", what, p->level);
    else
        rc = 1;
    free(out);
    return rc == 1 ? 0 : -1;
}

static int roundtrip(const struct suite *s, rhema_codec_ctx *ctx, int level, const void *src,
                     size_t n, struct check *c, const char *what, size_t *len_out)
{
    struct payload p;
    int rc;

    if (make_payload(s, ctx, level, src, n, &p, c, what) != 0)
        return -1;
    rc = check_decode(s, ctx, &p, src, c, what);
    if (len_out)
        *len_out = p.len;
    payload_free(&p);
    return rc;
}

/* ---- levels ---- */

static int has_level(const int *v, size_t n, int level)
{
    for (size_t i = 0; i < n; i++)
        if (v[i] == level)
            return 1;
    return 0;
}

static void add_level(int *v, size_t *n, int level, int lo, int hi)
{
    if (level >= lo && level <= hi && !has_level(v, *n, level))
        v[(*n)++] = level;
}

/* The levels of the small round trips (see compress_suite.h); malloc'd. */
static int *small_levels(const struct rhema_compress_plugin *vt, size_t *n)
{
    long long lo = vt->level_min, hi = vt->level_max;
    int *v;

    *n = 0;
    if (hi - lo <= 256) {
        v = malloc((size_t)(hi - lo + 1) * sizeof *v);
        for (long long l = lo; v != NULL && l <= hi; l++)
            v[(*n)++] = (int)l;
        return v;
    }
    v = malloc((129 + 3 + 2 * 32) * sizeof *v);
    if (v == NULL)
        return NULL;
    for (int l = -64; l <= 64; l++)
        add_level(v, n, l, vt->level_min, vt->level_max);
    add_level(v, n, vt->level_min, vt->level_min, vt->level_max);
    add_level(v, n, vt->level_max, vt->level_min, vt->level_max);
    add_level(v, n, vt->level_default, vt->level_min, vt->level_max);
    for (int k = 7; k < 31; k++) {
        add_level(v, n, 1 << k, vt->level_min, vt->level_max);
        add_level(v, n, -(1 << k), vt->level_min, vt->level_max);
    }
    return v;
}

/*
 * The levels of the 16 MiB round trips: min, default and the midpoints (at
 * most four).  The max level runs on BIG_MAX_LEN bytes instead: zstd -22
 * takes about 7 s on 16 MiB.
 */
static size_t big_levels(const struct rhema_compress_plugin *vt, int *v)
{
    size_t n = 0;
    int lo = vt->level_min, hi = vt->level_max, def = vt->level_default;

    add_level(v, &n, lo, lo, hi);
    add_level(v, &n, def, lo, hi);
    add_level(v, &n, (int)(((long long)lo + def) / 2), lo, hi);
    add_level(v, &n, (int)(((long long)def + hi) / 2), lo, hi);
    return n;
}

/* ---- the checks ---- */

static int check_header(struct suite *s)
{
    const struct rhema_compress_plugin *vt = s->vt;
    size_t need = offsetof(struct rhema_compress_plugin, decompress) + sizeof vt->decompress;
    struct check c = {"", 0};

    if (vt->base.kind != RHEMA_KIND_COMPRESS)
        fail(&c, "kind %u, want %u (compression)", vt->base.kind, RHEMA_KIND_COMPRESS);
    if (vt->base.abi_major != RHEMA_ABI_MAJOR)
        fail(&c, "abi_major %u, want %u", vt->base.abi_major, RHEMA_ABI_MAJOR);
    if (vt->base.size < need)
        fail(&c, "size %u is below the %zu bytes of minor 0", vt->base.size, need);
    if (vt->base.name == NULL || vt->base.name[0] == '\0')
        fail(&c, "no name");
    if (vt->codec_id < 1 || vt->codec_id > 255)
        fail(&c, "codec_id %u is not in 1..255", vt->codec_id);
    if (vt->level_min > vt->level_max || vt->level_default < vt->level_min ||
        vt->level_default > vt->level_max)
        fail(&c, "levels min %d, max %d, default %d are inconsistent", vt->level_min,
             vt->level_max, vt->level_default);
    if (!vt->open || !vt->close || !vt->ctx_new || !vt->ctx_free || !vt->bound ||
        !vt->compress || !vt->decompress)
        fail(&c, "a required method is NULL");
    done(s, "header", &c);
    return c.failures ? -1 : 0;
}

/* Round trips of the small inputs at every level of s->levels. */
static void check_small_roundtrips(struct suite *s)
{
    static const struct {
        const char *name;
        size_t len;
        int kind; /* 0 random, 1 repetitive, 2 json */
    } inputs[] = {
        {"empty", 0, 0},           {"1 byte", 1, 0},
        {"random 64 KiB", 65536, 0}, {"repetitive 64 KiB", 65536, 1},
        {"JSON 8 KiB", 8192, 2},   {"JSON 300 B", 300, 2},
    };
    char name[128];

    for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
        struct check c = {"", 0};
        unsigned char *src = malloc(inputs[i].len ? inputs[i].len : 1);
        if (src == NULL)
            continue;
        if (inputs[i].kind == 0)
            gen_random(src, inputs[i].len, 11 + i);
        else if (inputs[i].kind == 1)
            gen_repetitive(src, inputs[i].len);
        else
            gen_json(src, inputs[i].len, 5 + i);
        for (size_t l = 0; l < s->n_levels; l++) {
            size_t len = 0;
            if (roundtrip(s, s->ctx, s->levels[l], inputs[i].len ? src : NULL, inputs[i].len, &c,
                          inputs[i].name, &len) != 0)
                continue;
            /* the fastest levels of some codecs barely compress: judge default and max */
            if (inputs[i].kind == 1 && len > inputs[i].len / 4 &&
                (s->levels[l] == s->vt->level_default || s->levels[l] == s->vt->level_max))
                fail(&c, "level %d: repetitive 65536 bytes -> %zu: it should shrink",
                     s->levels[l], len);
        }
        snprintf(name, sizeof name, "round trip %s at %zu levels", inputs[i].name, s->n_levels);
        done(s, name, &c);
        free(src);
    }
}

static void check_big_roundtrips(struct suite *s)
{
    int levels[4];
    size_t n = big_levels(s->vt, levels);
    unsigned char *src = malloc(BIG_LEN);
    struct check c = {"", 0}, m = {"", 0};
    char name[160], list[96] = "";

    if (src == NULL) {
        skip(s, "round trip 16 MiB", "out of memory");
        return;
    }
    gen_big(src, BIG_LEN);
    for (size_t i = 0; i < n; i++) {
        size_t len = 0, off = strlen(list);
        snprintf(list + off, sizeof list - off, "%s%d", i ? " " : "", levels[i]);
        if (roundtrip(s, s->ctx, levels[i], src, BIG_LEN, &c, "16 MiB", &len) == 0 &&
            levels[i] == s->vt->level_default && len >= BIG_LEN / 2)
            fail(&c, "level %d: 16 MiB of mostly JSON -> %zu bytes: it should shrink", levels[i],
                 len);
    }
    snprintf(name, sizeof name, "round trip 16 MiB at levels %s", list);
    done(s, name, &c);
    roundtrip(s, s->ctx, s->vt->level_max, src, BIG_MAX_LEN, &m, "2 MiB", NULL);
    snprintf(name, sizeof name, "round trip 2 MiB at level %d (max)", s->vt->level_max);
    done(s, name, &m);
    free(src);
}

static void check_levels_out_of_range(struct suite *s)
{
    struct check c = {"", 0};
    int bad[4], n = 0;
    const char src[] = "hello, hello, hello";
    size_t b = s->vt->bound(s->codec, sizeof src), len = 12345;
    unsigned char *dst = canaried(b);
    uint32_t dict_id;

    if (dst == NULL)
        return;
    if (s->vt->level_min > INT_MIN)
        bad[n++] = s->vt->level_min - 1;
    if (s->vt->level_max < INT_MAX)
        bad[n++] = s->vt->level_max + 1;
    if (s->vt->level_min > INT_MIN)
        bad[n++] = INT_MIN;
    if (s->vt->level_max < INT_MAX)
        bad[n++] = INT_MAX;
    for (int i = 0; i < n; i++) {
        int rc = s->vt->compress(s->ctx, bad[i], src, sizeof src, dst, b, &len, &dict_id);
        if (rc != RHEMA_EINVAL)
            fail(&c, "level %d (range %d..%d): %s, want EINVAL", bad[i], s->vt->level_min,
                 s->vt->level_max, rhema_strerror(rc));
    }
    if (!canary_ok(dst, b))
        fail(&c, "compress wrote past dst_cap");
    done(s, "level out of range is EINVAL", &c);
    free(dst);
}

/* dst_cap below the payload: ETOOBIG, nothing written past dst_cap. */
static void check_dst_too_small(struct suite *s)
{
    struct check c = {"", 0};
    unsigned char *json = malloc(8192), *rnd = malloc(65536);
    struct payload p = {NULL, 0, 0, 0, 0};
    const int level = s->vt->level_default;

    if (json == NULL || rnd == NULL)
        goto out;
    gen_json(json, 8192, 21);
    gen_random(rnd, 65536, 22);
    if (make_payload(s, s->ctx, level, json, 8192, &p, &c, "JSON 8 KiB") == 0) {
        size_t caps[] = {0, 1, p.len / 2, p.len - 1};
        for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++) {
            unsigned char *dst = canaried(caps[i]);
            size_t len = 0;
            uint32_t dict_id;
            int rc;
            if (dst == NULL)
                continue;
            rc = s->vt->compress(s->ctx, level, json, 8192, dst, caps[i], &len, &dict_id);
            if (rc != RHEMA_ETOOBIG)
                fail(&c, "JSON 8 KiB (payload %zu bytes) into dst_cap %zu: %s, want ETOOBIG",
                     p.len, caps[i], rhema_strerror(rc));
            if (!canary_ok(dst, caps[i]))
                fail(&c, "JSON 8 KiB into dst_cap %zu: wrote past dst_cap", caps[i]);
            free(dst);
        }
        /* the context still works after a refusal */
        roundtrip(s, s->ctx, level, json, 8192, &c, "after ETOOBIG", NULL);
    }
    {
        /* incompressible input into as many bytes as it has: "not worth it" */
        unsigned char *dst = canaried(65536);
        size_t len = 0;
        uint32_t dict_id;
        int rc;
        if (dst != NULL) {
            rc = s->vt->compress(s->ctx, level, rnd, 65536, dst, 65536, &len, &dict_id);
            if (rc != RHEMA_ETOOBIG && !(rc == 0 && len <= 65536))
                fail(&c, "random 64 KiB into dst_cap 65536: %s, want ETOOBIG",
                     rhema_strerror(rc));
            if (!canary_ok(dst, 65536))
                fail(&c, "random 64 KiB into dst_cap 65536: wrote past dst_cap");
            free(dst);
        }
    }
    done(s, "dst_cap too small is ETOOBIG", &c);
out:
    payload_free(&p);
    free(json);
    free(rnd);
}

/* Decode a damaged payload: allowed outcomes ECORRUPT, or `ok_ok` and rc 0. */
static int decode_damaged(const struct suite *s, const unsigned char *data, size_t len,
                          size_t orig_len, uint32_t dict_id, int ok_ok, struct check *c,
                          const char *what)
{
    unsigned char *in = exact_copy(data, len), *out = canaried(orig_len);
    int rc = RHEMA_ENOMEM;

    if (in != NULL && out != NULL) {
        rc = s->vt->decompress(s->ctx, len ? in : data, len, out, orig_len, dict_id);
        if (rc != RHEMA_ECORRUPT && !(ok_ok && rc == 0))
            fail(c, "%s: %s, want ECORRUPT%s", what, rhema_strerror(rc),
                 ok_ok ? " or exactly orig_len bytes" : "");
        if (!canary_ok(out, orig_len))
            fail(c, "%s: decompress wrote past orig_len", what);
    }
    free(in);
    free(out);
    return rc;
}

static void check_truncated(struct suite *s)
{
    struct check c = {"", 0};
    unsigned char *small = malloc(300), *large = malloc(65536);
    struct payload ps = {NULL, 0, 0, 0, 0}, pl = {NULL, 0, 0, 0, 0};
    char what[96];

    if (small == NULL || large == NULL)
        goto out;
    gen_json(small, 300, 31);
    gen_json(large, 65536, 32);
    if (make_payload(s, s->ctx, s->vt->level_default, small, 300, &ps, &c, "JSON 300 B") == 0)
        for (size_t k = 0; k < ps.len; k++) {
            snprintf(what, sizeof what, "JSON 300 B payload cut to %zu of %zu bytes", k, ps.len);
            decode_damaged(s, ps.data, k, 300, ps.dict_id, 0, &c, what);
        }
    if (make_payload(s, s->ctx, s->vt->level_default, large, 65536, &pl, &c, "JSON 64 KiB") == 0) {
        size_t cuts[] = {0, 1, 2, pl.len / 3, pl.len / 2, pl.len - 8, pl.len - 2, pl.len - 1};
        for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
            if (cuts[i] >= pl.len)
                continue;
            snprintf(what, sizeof what, "JSON 64 KiB payload cut to %zu of %zu bytes", cuts[i],
                     pl.len);
            decode_damaged(s, pl.data, cuts[i], 65536, pl.dict_id, 0, &c, what);
        }
    }
    done(s, "truncated payload is ECORRUPT", &c);

    /* trailing bytes */
    {
        struct check t = {"", 0};
        if (ps.data != NULL) {
            unsigned char *longer = malloc(ps.len + 16);
            if (longer != NULL) {
                memcpy(longer, ps.data, ps.len);
                longer[ps.len] = 0;
                decode_damaged(s, longer, ps.len + 1, 300, ps.dict_id, 0, &t,
                               "payload + one zero byte");
                gen_random(longer + ps.len, 16, 33);
                decode_damaged(s, longer, ps.len + 16, 300, ps.dict_id, 0, &t,
                               "payload + 16 random bytes");
                free(longer);
            }
        }
        done(s, "trailing bytes are ECORRUPT", &t);
    }
out:
    payload_free(&ps);
    payload_free(&pl);
    free(small);
    free(large);
}

static void check_bit_flips(struct suite *s)
{
    struct check c = {"", 0};
    unsigned char src[256];
    int levels[2] = {s->vt->level_default, s->vt->level_max};
    unsigned decoded = 0, refused = 0;
    char what[128], name[128];

    gen_json(src, sizeof src, 41);
    for (int li = 0; li < 2; li++) {
        for (int in = 0; in < 2; in++) {
            size_t n = in == 0 ? sizeof src : 1;
            struct payload p;
            if (li == 1 && levels[1] == levels[0])
                continue;
            if (make_payload(s, s->ctx, levels[li], src, n, &p, &c, "bit flips") != 0)
                continue;
            for (size_t bit = 0; bit < p.len * 8; bit++) {
                int rc;
                p.data[bit / 8] ^= (unsigned char)(1u << (bit % 8));
                snprintf(what, sizeof what, "%zu-byte input, level %d, bit %zu of %zu flipped",
                         n, levels[li], bit, p.len * 8);
                rc = decode_damaged(s, p.data, p.len, n, p.dict_id, 1, &c, what);
                p.data[bit / 8] ^= (unsigned char)(1u << (bit % 8));
                if (rc == 0)
                    decoded++;
                else
                    refused++;
            }
            payload_free(&p);
        }
    }
    snprintf(name, sizeof name, "bit flips: ECORRUPT or orig_len bytes (%u refused, %u decoded)",
             refused, decoded);
    done(s, name, &c);
}

/* Random bytes, and real payloads with a random tail, as payloads. */
static void check_garbage(struct suite *s)
{
    struct check c = {"", 0};
    uint64_t st = 0x5EED;
    unsigned char buf[600], src[400];
    struct payload p;
    char what[96];

    gen_json(src, sizeof src, 51);
    if (make_payload(s, s->ctx, s->vt->level_default, src, sizeof src, &p, &c, "garbage") != 0) {
        done(s, "random garbage is ECORRUPT or orig_len bytes", &c);
        return;
    }
    for (int i = 0; i < 3000; i++) {
        size_t len = 1 + next_rand(&st) % (sizeof buf - 1);
        size_t orig = next_rand(&st) % 2048, keep = 0;
        if (i % 2 == 1) {
            /* a real header and a random tail */
            keep = next_rand(&st) % (p.len < len ? p.len : len);
            memcpy(buf, p.data, keep);
            if (i % 4 == 1)
                orig = sizeof src;
        }
        gen_random(buf + keep, len - keep, next_rand(&st));
        snprintf(what, sizeof what, "garbage #%d (%zu bytes, orig_len %zu)", i, len, orig);
        decode_damaged(s, buf, len, orig, p.dict_id, 1, &c, what);
    }
    payload_free(&p);
    done(s, "random garbage is ECORRUPT or orig_len bytes", &c);
}

static void check_wrong_orig_len(struct suite *s)
{
    struct check c = {"", 0};
    unsigned char src[8192];
    size_t sizes[] = {0, 1, sizeof src};
    char what[96];

    gen_json(src, sizeof src, 61);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        struct payload p;
        if (make_payload(s, s->ctx, s->vt->level_default, src, sizes[i], &p, &c, "orig_len") !=
            0)
            continue;
        snprintf(what, sizeof what, "%zu-byte input decoded with orig_len %zu", sizes[i],
                 sizes[i] + 1);
        decode_damaged(s, p.data, p.len, sizes[i] + 1, p.dict_id, 0, &c, what);
        if (sizes[i] > 0) {
            snprintf(what, sizeof what, "%zu-byte input decoded with orig_len %zu", sizes[i],
                     sizes[i] - 1);
            decode_damaged(s, p.data, p.len, sizes[i] - 1, p.dict_id, 0, &c, what);
        }
        /* and the right length still works */
        check_decode(s, s->ctx, &p, src, &c, "after a wrong orig_len");
        payload_free(&p);
    }
    done(s, "orig_len off by one is ECORRUPT", &c);
}

static void check_unknown_dict(struct suite *s)
{
    struct check c = {"", 0};
    unsigned char src[1024], out[1024];
    struct payload p;
    int rc;

    gen_json(src, sizeof src, 71);
    if (make_payload(s, s->ctx, s->vt->level_default, src, sizeof src, &p, &c, "dict id") == 0) {
        uint32_t other = p.dict_id == UNKNOWN_DICT_ID ? UNKNOWN_DICT_ID + 1 : UNKNOWN_DICT_ID;
        rc = s->vt->decompress(s->ctx, p.data, p.len, out, sizeof out, other);
        if (rc != RHEMA_ENOTFOUND)
            fail(&c, "decompress with dict_id %u (payload's %u): %s, want ENOTFOUND", other,
                 p.dict_id, rhema_strerror(rc));
        payload_free(&p);
    }
    done(s, "unknown dictionary id is ENOTFOUND", &c);
}

/* A second instance with the same configuration reads the first one's payloads. */
static void check_second_instance(struct suite *s)
{
    struct check c = {"", 0};
    rhema_codec *other = NULL;
    rhema_codec_ctx *octx = NULL;
    unsigned char src[4096];
    char *err = NULL;
    int rc;

    gen_json(src, sizeof src, 81);
    rc = s->vt->open(s->host, s->cfg, &other, &err);
    if (rc == 0)
        rc = s->vt->ctx_new(other, &octx);
    if (rc != 0) {
        fail(&c, "second open: %s: %s", rhema_strerror(rc), err ? err : "");
    } else {
        int lv[3] = {s->vt->level_min, s->vt->level_default, s->vt->level_max};
        for (int i = 0; i < 3; i++) {
            struct payload p;
            if (make_payload(s, s->ctx, lv[i], src, sizeof src, &p, &c, "first instance") == 0) {
                check_decode(s, octx, &p, src, &c, "second instance decoding the first's");
                payload_free(&p);
            }
        }
    }
    free(err);
    if (octx != NULL)
        s->vt->ctx_free(octx);
    if (other != NULL)
        s->vt->close(other);
    done(s, "a second instance decodes the first's payloads", &c);
}

struct worker {
    const struct suite *s;
    int id;
    const struct payload *shared;
    const unsigned char *shared_src;
    struct check c;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    const struct suite *s = w->s;
    rhema_codec_ctx *ctx = NULL;
    unsigned char *src = malloc(32768);
    uint64_t st = 1000 + (uint64_t)w->id;
    int rc = s->vt->ctx_new(s->codec, &ctx);

    if (rc != 0 || src == NULL) {
        fail(&w->c, "thread %d: ctx_new: %s", w->id, rhema_strerror(rc));
        goto out;
    }
    for (int i = 0; i < THREAD_ROUNDS && w->c.failures == 0; i++) {
        size_t n = next_rand(&st) % 32768;
        int level = s->levels[next_rand(&st) % s->n_levels];
        if (i % 3 == 0)
            gen_random(src, n, next_rand(&st));
        else
            gen_json(src, n, next_rand(&st));
        roundtrip(s, ctx, level, src, n, &w->c, "thread round trip", NULL);
        check_decode(s, ctx, w->shared, w->shared_src, &w->c, "thread decoding a shared payload");
    }
out:
    if (ctx != NULL)
        s->vt->ctx_free(ctx);
    free(src);
    return NULL;
}

static void check_threads(struct suite *s)
{
    struct check c = {"", 0};
    struct worker w[N_THREADS];
    pthread_t th[N_THREADS];
    unsigned char src[16384];
    struct payload shared;
    int started[N_THREADS] = {0};

    gen_json(src, sizeof src, 91);
    if (make_payload(s, s->ctx, s->vt->level_default, src, sizeof src, &shared, &c, "shared") !=
        0) {
        done(s, "4 threads with their own contexts", &c);
        return;
    }
    for (int i = 0; i < N_THREADS; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].s = s;
        w[i].id = i;
        w[i].shared = &shared;
        w[i].shared_src = src;
        started[i] = pthread_create(&th[i], NULL, worker_main, &w[i]) == 0;
        if (!started[i])
            fail(&c, "pthread_create failed");
    }
    for (int i = 0; i < N_THREADS; i++) {
        if (!started[i])
            continue;
        pthread_join(th[i], NULL);
        if (w[i].c.failures)
            fail(&c, "%s", w[i].c.msg);
    }
    payload_free(&shared);
    done(s, "4 threads with their own contexts", &c);
}

#ifdef HAVE_MALLINFO2
static long long heap_in_use(void)
{
    struct mallinfo2 mi = mallinfo2();
    return (long long)(mi.uordblks + mi.hblkhd);
}
#endif

/* One open / ctx / round trip / free / close cycle (fresh instance when open_too). */
static void lifecycle(struct suite *s, int open_too, const unsigned char *src, size_t n,
                      struct check *c)
{
    rhema_codec *codec = s->codec;
    rhema_codec_ctx *ctx = NULL;
    char *err = NULL;
    int rc = 0;

    if (open_too)
        rc = s->vt->open(s->host, s->cfg, &codec, &err);
    if (rc == 0)
        rc = s->vt->ctx_new(codec, &ctx);
    if (rc != 0) {
        fail(c, "open / ctx_new: %s: %s", rhema_strerror(rc), err ? err : "");
    } else {
        struct suite t = *s;
        t.codec = codec;
        roundtrip(&t, ctx, s->vt->level_default, src, n, c, "cycle", NULL);
        s->vt->ctx_free(ctx);
    }
    if (open_too && codec != s->codec)
        s->vt->close(codec); /* opened here (a failed open leaves codec alone) */
    free(err);
}

static void check_ctx_balance(struct suite *s)
{
    struct check c = {"", 0};
    unsigned char src[8192];
    rhema_codec_ctx *many[8] = {NULL};
    static const int order[8] = {3, 0, 7, 5, 1, 6, 2, 4};
    int rc;

    gen_json(src, sizeof src, 101);
    /* contexts freed in another order than made leave the others working */
    for (int i = 0; i < 8; i++)
        if ((rc = s->vt->ctx_new(s->codec, &many[i])) != 0)
            fail(&c, "ctx_new #%d: %s", i, rhema_strerror(rc));
    for (int i = 0; i < 8 && c.failures == 0; i++)
        roundtrip(s, many[i], s->vt->level_default, src, sizeof src, &c, "eight contexts", NULL);
    for (int i = 0; i < 8; i++) {
        if (many[order[i]] == NULL)
            continue;
        s->vt->ctx_free(many[order[i]]);
        many[order[i]] = NULL;
        for (int j = 0; j < 8; j++)
            if (many[j] != NULL)
                roundtrip(s, many[j], s->vt->level_max, src, 1024, &c,
                          "a context after others were freed", NULL);
    }
    done(s, "contexts freed in any order", &c);

    {
        struct check h = {"", 0};
#ifdef HAVE_MALLINFO2
        long long before, after;
        lifecycle(s, 0, src, sizeof src, &h); /* warm up */
        lifecycle(s, 1, src, sizeof src, &h);
        before = heap_in_use();
        for (int i = 0; i < 100; i++)
            lifecycle(s, 0, src, sizeof src, &h);
        for (int i = 0; i < 20; i++)
            lifecycle(s, 1, src, sizeof src, &h);
        after = heap_in_use();
        if (after - before > 1024)
            fail(&h, "heap in use grew by %lld bytes over 100 ctx_new/ctx_free and 20 open/close "
                     "cycles",
                 after - before);
        done(s, "ctx_new/ctx_free and open/close balance", &h);
#else
        lifecycle(s, 1, src, sizeof src, &h);
        skip(s, "ctx_new/ctx_free and open/close balance", "no mallinfo2 (glibc >= 2.33)");
#endif
    }
}

int rhema_conformance_compress(const struct rhema_compress_plugin *vt,
                               const struct rhema_host *host, const struct rhema_cfg *cfg,
                               rhema_conf_report_fn report, void *ctx,
                               struct rhema_conf_totals *totals)
{
    struct suite s;
    char *err = NULL, msg[MSG_MAX];
    int rc;

    memset(&s, 0, sizeof s);
    s.vt = vt;
    s.host = host;
    s.cfg = cfg;
    s.report = report;
    s.report_ctx = ctx;
    s.totals = totals;
    if (check_header(&s) != 0)
        return (int)s.failed;
    rc = vt->open(host, cfg, &s.codec, &err);
    if (rc == 0 && (rc = vt->ctx_new(s.codec, &s.ctx)) != 0)
        snprintf(msg, sizeof msg, "ctx_new: %s", rhema_strerror(rc));
    else if (rc != 0)
        snprintf(msg, sizeof msg, "open: %s: %s", rhema_strerror(rc), err ? err : "");
    free(err);
    s.levels = small_levels(vt, &s.n_levels);
    {
        struct check c = {"", 0};
        if (rc != 0)
            fail(&c, "%s", msg);
        else if (s.levels == NULL)
            fail(&c, "out of memory");
        done(&s, "open and ctx_new", &c);
    }
    if (rc != 0 || s.levels == NULL)
        goto out;

    check_small_roundtrips(&s);
    check_big_roundtrips(&s);
    check_levels_out_of_range(&s);
    check_dst_too_small(&s);
    check_truncated(&s);
    check_bit_flips(&s);
    check_garbage(&s);
    check_wrong_orig_len(&s);
    check_unknown_dict(&s);
    check_second_instance(&s);
    check_threads(&s);
    check_ctx_balance(&s);
out:
    if (s.ctx != NULL)
        vt->ctx_free(s.ctx);
    if (s.codec != NULL)
        vt->close(s.codec);
    free(s.levels);
    return (int)s.failed;
}
