/*
 * rhemactl -- administration that should not travel over HTTP.
 *
 *   rhemactl plugin check FILE.so [-o section.key=value]... [-c FILE]
 *       load FILE.so through the real loader (every ABI check of rhemad)
 *       and run the conformance suite of its kind, printing each check.
 *   rhemactl plugin info FILE.so
 *       load it and print its header.
 *   rhemactl version
 */
#include "rhema_build.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "../tests/conformance/cipher_suite.h"
#include "../tests/conformance/compress_suite.h"
#include "../tests/conformance/storage_suite.h"
#include "config.h"
#include "log.h"
#include "plugin.h"

static void usage(FILE *to)
{
    fprintf(to, "usage: rhemactl plugin check FILE.so [-c CONFIG] [-o section.key=value]...\n"
                "       rhemactl plugin info FILE.so\n"
                "       rhemactl version\n");
}

static void report(void *ctx, const char *test, int ok, const char *detail)
{
    const char *plugin = ctx;
    if (ok == RHEMA_CONF_PASS)
        printf("PASS  %s.%s\n", plugin, test);
    else if (ok == RHEMA_CONF_SKIP)
        printf("SKIP  %s.%s (%s)\n", plugin, test, detail);
    else
        printf("FAIL  %s.%s: %s\n", plugin, test, detail);
    fflush(stdout);
}

static int cmd_plugin(int argc, char **argv)
{
    const char *config_file = NULL;
    static const char *overrides[128];
    size_t n_overrides = 0;
    int c, status = 1;
    if (argc < 3) {
        usage(stderr);
        return 2;
    }
    const char *sub = argv[1], *file = argv[2];
    optind = 3;
    while ((c = getopt(argc, argv, "c:o:")) != -1) {
        if (c == 'c')
            config_file = optarg;
        else if (c == 'o' && n_overrides < 128)
            overrides[n_overrides++] = optarg;
        else {
            usage(stderr);
            return 2;
        }
    }
    if (strcmp(sub, "check") != 0 && strcmp(sub, "info") != 0) {
        usage(stderr);
        return 2;
    }
    struct rhema_config cfg = {0};
    struct rhema_plugin_registry *reg = NULL;
    const struct rhema_loaded_plugin *p;
    char *err = NULL;
    if (rhema_config_load(&cfg, config_file, overrides, n_overrides, NULL, &err) != 0) {
        fprintf(stderr, "rhemactl: configuration error:\n%s\n", err ? err : "?");
        goto out;
    }
    rhema_log_open(RHEMA_LOG_WARN, RHEMA_LOG_FORMAT_TEXT, NULL, NULL);
    if (rhema_plugins_new(&reg) != 0)
        goto out;
    char path[4096];
    snprintf(path, sizeof path, "%s%s", strchr(file, '/') ? "" : "./", file);
    if (rhema_plugin_load(reg, path, NULL, 0, &p, &err) != 0) {
        fprintf(stderr, "rhemactl: %s\n", err ? err : "cannot load plugin");
        goto out;
    }
    printf("plugin %s: kind %s, version %s, abi %d.%u, %s\n", p->name,
           rhema_plugin_kind_name(p->kind), p->version, RHEMA_ABI_MAJOR, p->abi_minor,
           p->description);
    if (strcmp(sub, "info") == 0) {
        status = 0;
        goto out;
    }
    struct rhema_conf_totals totals = {0};
    const struct rhema_cfg *group = rhema_config_plugin_group(&cfg, p->kind, p->name);
    switch (p->kind) {
    case RHEMA_KIND_STORAGE:
        rhema_conformance_storage(&p->vt.storage, rhema_host_get(), group, report,
                                  (void *)p->name, &totals);
        break;
    case RHEMA_KIND_COMPRESS:
        rhema_conformance_compress(&p->vt.compress, rhema_host_get(), group, report,
                                   (void *)p->name, &totals);
        break;
    case RHEMA_KIND_CIPHER:
        rhema_conformance_cipher(&p->vt.cipher, report, (void *)p->name, &totals);
        break;
    default:
        fprintf(stderr, "rhemactl: no conformance suite for %s plugins in this version\n",
                rhema_plugin_kind_name(p->kind));
        goto out;
    }
    printf("%u passed, %u failed, %u skipped\n", totals.passed, totals.failed, totals.skipped);
    status = totals.failed ? 1 : 0;
out:
    free(err);
    rhema_plugins_free(reg);
    rhema_config_release(&cfg);
    return status;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (sodium_init() < 0)
        return 1;
    if (strcmp(argv[1], "plugin") == 0)
        return cmd_plugin(argc - 1, argv + 1);
    if (strcmp(argv[1], "version") == 0 || strcmp(argv[1], "-V") == 0) {
        printf("rhemactl %s (plugin ABI %d.%d)\n", PACKAGE_VERSION, RHEMA_ABI_MAJOR,
               RHEMA_ABI_MINOR);
        return 0;
    }
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    usage(stderr);
    return 2;
}
