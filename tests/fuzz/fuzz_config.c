/*
 * fuzz_config -- the configuration file and the -o overrides
 * (rhema_config_load, core/config.c): libconfig's parser, then the
 * schema's validation, the cross-key checks and the unimplemented[]
 * refusals.  The input is the file; after a line "%%", each further line
 * is one "section.key=value" override (as rhemad -o passes them).  The
 * file goes through a temporary file, as rhemad reads a path.
 *
 * Inputs with @include are skipped: an include names another file, and
 * what the fuzzer would reach through one (/dev/stdin, /dev/zero) is the
 * operator's shell, not the parser.
 */
#include "rhema_build.h"

#include <strings.h>

#include "config.h"
#include "fixture.h"

static char path[320];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    const char *dir = fuzz_tmpdir();
    if (!dir)
        abort();
    snprintf(path, sizeof path, "%s/rhemad.conf", dir);
    return 0;
}

static int has_include(const uint8_t *d, size_t n)
{
    for (size_t i = 0; i + 8 <= n; i++)
        if (d[i] == '@' && strncasecmp((const char *)d + i, "@include", 8) == 0)
            return 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct rhema_config cfg;
    char *err = NULL, *copy, *over[8], *save = NULL;
    const char *sep;
    size_t file_len = size, n_over = 0;
    if (has_include(data, size))
        return 0;
    copy = malloc(size + 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    copy[size] = '\0';
    sep = memmem(copy, size, "\n%%\n", 4);
    if (sep) {
        file_len = (size_t)(sep - copy) + 1;
        for (char *t = strtok_r(copy + file_len + 3, "\n", &save); t && n_over < 8;
             t = strtok_r(NULL, "\n", &save))
            over[n_over++] = t;
    }
    if (fuzz_write_file(path, data, file_len) != 0)
        abort();
    int rc = rhema_config_load(&cfg, path, (const char *const *)over, n_over, NULL, &err);
    if (rc == 0) {
        fuzz_assert(err == NULL);
        /* a loaded config answers the getters, and its values are in range */
        fuzz_assert(cfg.listen && cfg.backend && cfg.path);
        fuzz_assert(cfg.workers >= 0 && cfg.workers <= 256);
        int64_t v;
        fuzz_assert(rhema_config_get_int(&cfg, "service.max_request_size_bytes", &v) == 0);
        rhema_config_release(&cfg);
    } else {
        fuzz_assert(rc < 0 && err && *err);
    }
    free(err);
    free(copy);
    return 0;
}
