/*
 * test_codec -- the compression frame (core/codec.c): stored frames, the
 * threshold and adaptive choices, round trips through every compression
 * plugin that was built, and refusal of malformed, truncated, tampered and
 * oversized frames.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "codec.h"
#include "config.h"
#include "plugin.h"

struct fixture {
    struct rhema_config cfg;
    struct rhema_plugin_registry *reg;
    struct rhema_codecs cs;
    struct rhema_codec_ctxs ctxs;
    int ids[8];
    size_t n_ids;
};

static int setup(void **state)
{
    static const char *const names[] = {"lz4", "zstd", "gzip", "snappy"};
    static const char *overrides[] = {"advanced_features.compression.algorithm=zstd",
                                      "advanced_features.compression.threshold_bytes=64",
                                      "advanced_features.compression.max_decompressed_bytes=1048576"};
    struct fixture *f = calloc(1, sizeof *f);
    char *err = NULL;
    const char *dir = getenv("RHEMA_PLUGIN_DIR");
    if (rhema_config_load(&f->cfg, NULL, overrides, 3, NULL, &err) || rhema_plugins_new(&f->reg))
        return -1;
    for (size_t i = 0; i < 4; i++) {
        const struct rhema_loaded_plugin *p;
        if (rhema_plugin_load(f->reg, names[i], dir ? dir : "plugins/.libs", RHEMA_KIND_COMPRESS,
                              &p, &err) == 0)
            f->ids[f->n_ids++] = (int)p->vt.compress.codec_id;
        free(err);
        err = NULL;
    }
    if (rhema_codecs_open(&f->cs, f->reg, &f->cfg, &err) != 0) {
        fprintf(stderr, "codecs: %s\n", err);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    rhema_codec_ctxs_release(&f->cs, &f->ctxs);
    rhema_codecs_close(&f->cs);
    rhema_plugins_free(f->reg);
    rhema_config_release(&f->cfg);
    free(f);
    return 0;
}

static void fill_json(unsigned char *buf, size_t len)
{
    static const char unit[] = "{\"id\":\"m-1\",\"message_type\":\"StatusUpdate\",\"priority\":"
                               "\"Normal\",\"sender_id\":\"agent-7\",\"content\":\"step done\"},";
    for (size_t i = 0; i < len; i++)
        buf[i] = (unsigned char)unit[i % (sizeof unit - 1)];
}

static void roundtrip(struct fixture *f, int id, int force, const unsigned char *src, size_t len,
                      int want_codec)
{
    char err[RHEMA_FRAME_ERR_MAX];
    struct rhema_buf fr, back;
    int rc = rhema_frame_compress(&f->cs, &f->ctxs, id, INT32_MIN, force, src, len, &fr, err);
    if (rc)
        fail_msg("compress (codec %d, %zu bytes): %s", id, len, err);
    assert_int_equal(fr.data[0], 'R');
    assert_int_equal(fr.data[1], 'Z');
    assert_int_equal(fr.data[2], RHEMA_FRAME_VERSION);
    if (want_codec >= 0)
        assert_int_equal(fr.data[3], want_codec);
    uint64_t orig = 0;
    for (int i = 7; i >= 0; i--)
        orig = orig << 8 | fr.data[5 + i];
    assert_int_equal(orig, len);
    rc = rhema_frame_decompress(&f->cs, &f->ctxs, fr.data, fr.len, &back, err);
    if (rc)
        fail_msg("decompress (codec %d): %s", id, err);
    assert_int_equal(back.len, len);
    assert_memory_equal(back.data, src, len);
    free(back.data);
    free(fr.data);
}

static void stored_threshold_and_adaptive(void **state)
{
    struct fixture *f = *state;
    unsigned char small[32], json[4096], noise[4096];
    fill_json(small, sizeof small);
    fill_json(json, sizeof json);
    for (size_t i = 0; i < sizeof noise; i++)
        noise[i] = (unsigned char)((i * 2654435761u) >> 13 ^ (i * 40503u));
    roundtrip(f, RHEMA_CODEC_STORED, 0, (const unsigned char *)"", 0, RHEMA_CODEC_STORED);
    roundtrip(f, RHEMA_CODEC_STORED, 0, json, sizeof json, RHEMA_CODEC_STORED);
    if (f->cs.default_id < 0)
        skip();
    /* below threshold_bytes (64): stored; above: the default codec */
    roundtrip(f, -1, 0, small, sizeof small, RHEMA_CODEC_STORED);
    roundtrip(f, -1, 0, json, sizeof json, f->cs.default_id);
    /* adaptive: incompressible data is kept as is unless forced */
    roundtrip(f, -1, 0, noise, sizeof noise, RHEMA_CODEC_STORED);
    roundtrip(f, -1, 1, noise, sizeof noise, f->cs.default_id);
}

static void every_loaded_codec_round_trips(void **state)
{
    struct fixture *f = *state;
    unsigned char json[10000];
    fill_json(json, sizeof json);
    if (f->n_ids == 0)
        skip();
    for (size_t i = 0; i < f->n_ids; i++) {
        roundtrip(f, f->ids[i], 1, json, sizeof json, f->ids[i]);
        roundtrip(f, f->ids[i], 1, json, 1, f->ids[i]);
        roundtrip(f, f->ids[i], 1, (const unsigned char *)"", 0, f->ids[i]);
    }
}

static void expect_refused(struct fixture *f, const unsigned char *fr, size_t len, int want,
                           const char *what)
{
    char err[RHEMA_FRAME_ERR_MAX];
    struct rhema_buf out = {(unsigned char *)"x", 1};
    int rc = rhema_frame_decompress(&f->cs, &f->ctxs, fr, len, &out, err);
    if (rc != want)
        fail_msg("%s: got %s (%s), want %s", what, rhema_strerror(rc), rc ? err : "",
                 rhema_strerror(want));
    assert_null(out.data);
    assert_true(strlen(err) > 0);
}

static void refuses_bad_frames(void **state)
{
    struct fixture *f = *state;
    char err[RHEMA_FRAME_ERR_MAX];
    unsigned char json[2000], buf[4096];
    struct rhema_buf fr;
    fill_json(json, sizeof json);
    assert_int_equal(rhema_frame_compress(&f->cs, &f->ctxs, RHEMA_CODEC_STORED, INT32_MIN, 1, json,
                                          100, &fr, err),
                     0);
    memcpy(buf, fr.data, fr.len);
    expect_refused(f, buf, 5, RHEMA_ECORRUPT, "truncated header");
    buf[0] = 'X';
    expect_refused(f, buf, fr.len, RHEMA_ECORRUPT, "bad magic");
    buf[0] = 'R', buf[2] = 9;
    expect_refused(f, buf, fr.len, RHEMA_ECORRUPT, "unknown version");
    buf[2] = RHEMA_FRAME_VERSION, buf[4] = 0x80;
    expect_refused(f, buf, fr.len, RHEMA_ECORRUPT, "unknown flags");
    buf[4] = 0;
    expect_refused(f, buf, fr.len - 1, RHEMA_ECORRUPT, "stored frame cut short");
    buf[5] = 0xff, buf[6] = 0xff, buf[7] = 0xff; /* announces ~16 MiB > the 1 MiB maximum */
    expect_refused(f, buf, fr.len, RHEMA_ETOOBIG, "oversized");
    memcpy(buf, fr.data, fr.len);
    buf[3] = 200;
    expect_refused(f, buf, fr.len, RHEMA_ENOTSUP, "codec not loaded");
    free(fr.data);

    for (size_t i = 0; i < f->n_ids; i++) {
        assert_int_equal(rhema_frame_compress(&f->cs, &f->ctxs, f->ids[i], INT32_MIN, 1, json,
                                              sizeof json, &fr, err),
                         0);
        /* every truncation of the payload is refused */
        for (size_t cut = RHEMA_FRAME_HEADER; cut < fr.len; cut += 1 + fr.len / 64)
            expect_refused(f, fr.data, cut, RHEMA_ECORRUPT, "truncated payload");
        /* the announced length off by one is refused */
        memcpy(buf, fr.data, fr.len);
        buf[5] ^= 1;
        expect_refused(f, buf, fr.len, RHEMA_ECORRUPT, "wrong original length");
        /* bit flips: refused, or (for codecs without a checksum) decoded to exactly the size */
        for (size_t bit = RHEMA_FRAME_HEADER * 8; bit < fr.len * 8; bit += 7) {
            struct rhema_buf out;
            memcpy(buf, fr.data, fr.len);
            buf[bit / 8] ^= (unsigned char)(1u << (bit % 8));
            int rc = rhema_frame_decompress(&f->cs, &f->ctxs, buf, fr.len, &out, err);
            if (rc == 0) {
                assert_int_equal(out.len, sizeof json);
                free(out.data);
            } else {
                assert_int_equal(rc, RHEMA_ECORRUPT);
            }
        }
        free(fr.data);
    }
}

static void refuses_bad_requests(void **state)
{
    struct fixture *f = *state;
    char err[RHEMA_FRAME_ERR_MAX];
    struct rhema_buf fr;
    assert_int_equal(rhema_frame_compress(&f->cs, &f->ctxs, 77, INT32_MIN, 1, "x", 1, &fr, err),
                     RHEMA_EINVAL);
    assert_null(fr.data);
    if (f->n_ids == 0)
        skip();
    assert_int_equal(rhema_frame_compress(&f->cs, &f->ctxs, f->ids[0], 1000000, 1, "x", 1, &fr, err),
                     RHEMA_EINVAL);
    assert_non_null(strstr(err, "level 1000000"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(stored_threshold_and_adaptive),
        cmocka_unit_test(every_loaded_codec_round_trips),
        cmocka_unit_test(refuses_bad_frames),
        cmocka_unit_test(refuses_bad_requests),
    };
    return cmocka_run_group_tests_name("codec", tests, setup, teardown);
}
