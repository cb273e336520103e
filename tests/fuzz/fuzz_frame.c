/*
 * fuzz_frame -- compression frames (codec.h, DESIGN.md §3) through both
 * readers: rhema_frame_decompress (the at-rest layer reading storage) and
 * rhema_frame_peek + rhema_frame_decompress_into (POST
 * /v1/compression/decompress), over every compression plugin that was
 * built, with max_decompressed_bytes at 1 MiB.  Both readers must agree.
 */
#include "rhema_build.h"

#include "codec.h"
#include "config.h"
#include "fixture.h"
#include "log.h"

static struct rhema_config cfg;
static struct rhema_plugin_registry *reg;
static struct rhema_codecs cs;
static struct rhema_codec_ctxs ctxs;
static unsigned char *dst;
#define MAX_OUT (1u << 20)

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static const char *const names[] = {"lz4", "zstd", "gzip", "snappy", NULL};
    static const char *overrides[] = {"advanced_features.compression.algorithm=zstd",
                                      "advanced_features.compression.max_decompressed_bytes=1048576"};
    char *err = NULL;
    (void)argc, (void)argv;
    rhema_log_set_level(RHEMA_LOG_ERROR);
    if (rhema_config_load(&cfg, NULL, overrides, 2, NULL, &err) || rhema_plugins_new(&reg))
        abort();
    fuzz_load_plugins(reg, RHEMA_KIND_COMPRESS, names);
    if (rhema_codecs_open(&cs, reg, &cfg, &err) != 0) {
        fprintf(stderr, "fuzz_frame: %s\n", err);
        abort();
    }
    dst = malloc(MAX_OUT);
    if (!dst)
        abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[RHEMA_FRAME_ERR_MAX];
    struct rhema_buf out = {NULL, 0};
    uint64_t orig = 0;
    size_t n = 0;
    err[0] = '\0';
    int rc = rhema_frame_decompress(&cs, &ctxs, data, size, &out, err);
    if (rc == 0)
        fuzz_assert(out.len <= MAX_OUT);
    else
        fuzz_assert(rc < 0 && out.data == NULL && err[0]);
    int prc = rhema_frame_peek(&cs, data, size, &orig, err);
    if (prc == 0) {
        fuzz_assert(orig <= MAX_OUT);
        /* the HTTP route sizes its buffer with what peek announced */
        unsigned char *buf = orig ? dst + (MAX_OUT - orig) : dst; /* ASan sees an overrun */
        int drc = rhema_frame_decompress_into(&cs, &ctxs, data, size, buf, (size_t)orig, &n, err);
        fuzz_assert((drc == 0) == (rc == 0));
        if (drc == 0)
            fuzz_assert(n == out.len && (n == 0 || memcmp(buf, out.data, n) == 0));
    } else {
        fuzz_assert(rc != 0); /* what unframes has a header peek accepts */
    }
    free(out.data);
    return 0;
}
