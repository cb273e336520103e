/*
 * test_compress -- run the compression conformance suite against the real
 * plugins, loaded through the real loader and configured through the real
 * config, plus the zstd dictionary checks.
 *
 * Prints TAP (checks are discovered at run time, so the plan comes last)
 * and exits non-zero when any check fails.
 *
 * Environment:
 *   RHEMA_PLUGIN_DIR            where compress_<name>.so live (required)
 *   RHEMA_CONFORMANCE_CODECS    codecs to test, separated by spaces or
 *                               commas (default "lz4 zstd gzip snappy"); a
 *                               codec whose file is absent (configure left
 *                               it out) is skipped, one that fails to load
 *                               fails
 *
 * The zstd dictionary checks train a dictionary from generated
 * coordination-style JSON messages with the `zstd` command (`zstd --train`;
 * skipped when it is not installed), configure the zstd plugin with it
 * through advanced_features.compression.zstd.dictionary, run the suite on
 * that instance, and check that the dictionary's id is reported, that it
 * beats no dictionary on small messages, that an instance without it
 * refuses its frames with ENOTFOUND, and that bad dictionary settings are
 * refused at open naming where they were set.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <rhema/compress.h>

#include "compress_suite.h"
#include "config.h"
#include "plugin.h"

#define DICT_OVERRIDE "advanced_features.compression.zstd.dictionary="

static unsigned tap_n, tap_failed;
static char tmpdir[512];

/* One TAP line; detail goes after "# SKIP" or on a "#" line after a failure. */
static void tap(const char *codec, const char *test, int ok, const char *detail)
{
    tap_n++;
    if (ok == RHEMA_CONF_SKIP) {
        printf("ok %u - %s: %s # SKIP %s\n", tap_n, codec, test, detail ? detail : "");
    } else if (ok == RHEMA_CONF_PASS) {
        printf("ok %u - %s: %s\n", tap_n, codec, test);
    } else {
        tap_failed++;
        printf("not ok %u - %s: %s\n", tap_n, codec, test);
        if (detail != NULL && detail[0] != '\0')
            printf("# %s\n", detail);
    }
    fflush(stdout);
}

static void report(void *ctx, const char *test, int ok, const char *detail)
{
    tap(ctx, test, ok, detail);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int load_config(struct rhema_config *cfg, const char *codec, const char *what,
                       const char *const *ov, size_t n_ov)
{
    char *err = NULL, msg[1024];
    int rc = rhema_config_load(cfg, NULL, ov, n_ov, NULL, &err);

    if (rc != 0) {
        snprintf(msg, sizeof msg, "rhema_config_load: %s", err ? err : rhema_strerror(rc));
        free(err);
        tap(codec, what, RHEMA_CONF_FAIL, msg);
        return -1;
    }
    return 0;
}

/* ---- the suite on each codec ---- */

static void run_codec(struct rhema_plugin_registry *reg, const char *codec)
{
    const char *dir = getenv("RHEMA_PLUGIN_DIR");
    const struct rhema_loaded_plugin *lp = NULL;
    struct rhema_conf_totals t = {0, 0, 0};
    struct rhema_config cfg;
    const struct rhema_cfg *group;
    char path[1024], msg[1200], *err = NULL;
    struct stat st;
    int rc;

    snprintf(path, sizeof path, "%s/compress_%s.so", dir ? dir : ".", codec);
    if (stat(path, &st) != 0) {
        snprintf(msg, sizeof msg, "%s not built (its library is missing?)", path);
        tap(codec, "load", RHEMA_CONF_SKIP, msg);
        return;
    }
    rc = rhema_plugin_load(reg, codec, dir, RHEMA_KIND_COMPRESS, &lp, &err);
    if (rc != 0) {
        snprintf(msg, sizeof msg, "%s", err ? err : rhema_strerror(rc));
        free(err);
        tap(codec, "load", RHEMA_CONF_FAIL, msg);
        return;
    }
    tap(codec, "load", RHEMA_CONF_PASS, "");
    if (load_config(&cfg, codec, "config", NULL, 0) != 0)
        return;
    group = rhema_config_plugin_group(&cfg, RHEMA_KIND_COMPRESS, codec);
    rhema_conformance_compress(&lp->vt.compress, rhema_host_get(), group, report, (void *)codec,
                               &t);
    rhema_config_release(&cfg);
    printf("# %s: %u passed, %u failed, %u skipped\n", codec, t.passed, t.failed, t.skipped);
}

/* ---- zstd dictionary ---- */

/* A coordination message, different for each seed. */
static size_t message(char *buf, size_t cap, unsigned seed)
{
    static const char *const ops[] = {"lease.acquire", "lease.renew", "lease.release",
                                      "kv.put", "session.heartbeat", "service.register"};
    static const char *const svcs[] = {"payments", "orders", "inventory", "auth",
                                       "search", "billing", "gateway"};
    unsigned r = seed * 2654435761u;
    int n = snprintf(buf, cap,
                     "{\"op\":\"%s\",\"service\":\"%s-api\",\"instance\":\"%s-api-%u\","
                     "\"node\":\"node-%02u.dc%u.internal\",\"holder\":\"%08x\",\"epoch\":%u,"
                     "\"ttl_ms\":%u,\"ts\":%u%03u,\"meta\":{\"version\":\"1.%u.%u\","
                     "\"zone\":\"eu-west-%u\",\"healthy\":%s}}",
                     ops[seed % 6], svcs[(seed / 6) % 7], svcs[(seed / 6) % 7], r % 16,
                     (r >> 4) % 40, (r >> 9) % 3, r ^ 0x5bd1e995u, (r >> 3) % 50000,
                     5000u * (1 + (r >> 12) % 6), 1700000000u + seed * 7u, (r >> 5) % 1000,
                     (r >> 14) % 9, (r >> 18) % 20, 1 + (r >> 22) % 3,
                     (r >> 25) % 5 ? "true" : "false");
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

/* Train <tmpdir>/dict with `zstd --train`: 0, 1 when zstd is missing, -1 on failure. */
static int train(char *dict, size_t cap, char *msg, size_t msg_cap)
{
    char samples[700], file[800], buf[512];
    int status, fd;
    pid_t pid;

    snprintf(samples, sizeof samples, "%s/samples", tmpdir);
    snprintf(dict, cap, "%s/dict", tmpdir);
    if (mkdir(samples, 0700) != 0) {
        snprintf(msg, msg_cap, "mkdir %s: %s", samples, strerror(errno));
        return -1;
    }
    for (unsigned i = 0; i < 2000; i++) {
        size_t n = message(buf, sizeof buf, i);
        FILE *f;
        snprintf(file, sizeof file, "%s/m%04u.json", samples, i);
        f = fopen(file, "w");
        if (f == NULL || fwrite(buf, 1, n, f) != n || fclose(f) != 0) {
            snprintf(msg, msg_cap, "writing %s failed", file);
            return -1;
        }
    }
    pid = fork();
    if (pid < 0) {
        snprintf(msg, msg_cap, "fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        fd = open("/dev/null", O_WRONLY);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execlp("zstd", "zstd", "-q", "-f", "--train", "-r", samples, "--maxdict=16384", "-o",
               dict, (char *)NULL);
        _exit(127);
    }
    if (waitpid(pid, &status, 0) != pid) {
        snprintf(msg, msg_cap, "waitpid: %s", strerror(errno));
        return -1;
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 127)
        return 1;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        snprintf(msg, msg_cap, "zstd --train failed (status %d)", status);
        return -1;
    }
    return 0;
}

/* The id in a zstd dictionary file's header (0: none). */
static uint32_t file_dict_id(const char *path)
{
    unsigned char h[8];
    FILE *f = fopen(path, "rb");
    size_t n = f ? fread(h, 1, sizeof h, f) : 0;

    if (f)
        fclose(f);
    if (n != 8 || h[0] != 0x37 || h[1] != 0xA4 || h[2] != 0x30 || h[3] != 0xEC)
        return 0;
    return (uint32_t)h[4] | (uint32_t)h[5] << 8 | (uint32_t)h[6] << 16 | (uint32_t)h[7] << 24;
}

#define DFAIL(...)                                                                                \
    do {                                                                                          \
        snprintf(msg, sizeof msg, __VA_ARGS__);                                                   \
        goto out;                                                                                 \
    } while (0)

/* Dictionary vs none on fresh small messages, and the refusals. */
static void dict_behaviour(const struct rhema_compress_plugin *vt, const struct rhema_cfg *group,
                           uint32_t want_id)
{
    const struct rhema_host *host = rhema_host_get();
    rhema_codec *with = NULL, *without = NULL;
    rhema_codec_ctx *cw = NULL, *co = NULL;
    char *err = NULL, msg[1024] = "", src[512], out[512];
    unsigned char a[1024], b[1024];
    size_t total = 0, sum_with = 0, sum_without = 0;
    int rc, level = vt->level_default;

    if ((rc = vt->open(host, group, &with, &err)) != 0)
        DFAIL("open with the dictionary: %s: %s", rhema_strerror(rc), err ? err : "");
    if ((rc = vt->open(host, NULL, &without, &err)) != 0)
        DFAIL("open without: %s: %s", rhema_strerror(rc), err ? err : "");
    if ((rc = vt->ctx_new(with, &cw)) != 0 || (rc = vt->ctx_new(without, &co)) != 0)
        DFAIL("ctx_new: %s", rhema_strerror(rc));
    for (unsigned i = 0; i < 300; i++) {
        size_t n = message(src, sizeof src, 100000 + i * 13), la = 0, lb = 0;
        uint32_t ida = 0, idb = 0;
        if ((rc = vt->compress(cw, level, src, n, a, sizeof a, &la, &ida)) != 0)
            DFAIL("compress with the dictionary: %s", rhema_strerror(rc));
        if (ida != want_id)
            DFAIL("compress reported dict_id %u, the file's id is %u", ida, want_id);
        if ((rc = vt->compress(co, level, src, n, b, sizeof b, &lb, &idb)) != 0 || idb != 0)
            DFAIL("compress without: %s, dict_id %u", rhema_strerror(rc), idb);
        rc = vt->decompress(cw, a, la, out, n, ida);
        if (rc != 0 || memcmp(out, src, n) != 0)
            DFAIL("round trip with the dictionary: %s", rc ? rhema_strerror(rc) : "bytes differ");
        rc = vt->decompress(co, a, la, out, n, ida);
        if (rc != RHEMA_ENOTFOUND)
            DFAIL("an instance without the dictionary decoding its frame: %s, want ENOTFOUND",
                  rhema_strerror(rc));
        rc = vt->decompress(cw, b, lb, out, n, 0);
        if (rc != 0 || memcmp(out, src, n) != 0)
            DFAIL("the dictionary instance decoding a frame made without one: %s",
                  rc ? rhema_strerror(rc) : "bytes differ");
        rc = vt->decompress(cw, a, la, out, n, 0);
        if (rc == 0)
            DFAIL("a dictionary frame decoded with dict_id 0 was accepted");
        total += n;
        sum_with += la;
        sum_without += lb;
    }
    printf("# zstd level %d, 300 messages, %zu bytes: %zu with the dictionary, %zu without\n",
           level, total, sum_with, sum_without);
    if (sum_with >= sum_without)
        DFAIL("the dictionary does not help: %zu bytes with it, %zu without", sum_with,
              sum_without);
out:
    free(err);
    if (cw)
        vt->ctx_free(cw);
    if (co)
        vt->ctx_free(co);
    if (with)
        vt->close(with);
    if (without)
        vt->close(without);
    tap("zstd+dictionary", "id reported, round trips, smaller, refused without it",
        msg[0] ? RHEMA_CONF_FAIL : RHEMA_CONF_PASS, msg);
}

/* open() refuses a bad `dictionary`, with its file:line (here the -o) and the path. */
static void dict_refused(const struct rhema_compress_plugin *vt, const char *value,
                         const char *want_in_msg, const char *name)
{
    char ov[900], msg[1024] = "", *err = NULL;
    const char *ovs[1] = {ov};
    struct rhema_config cfg;
    rhema_codec *codec = NULL;
    int rc;

    snprintf(ov, sizeof ov, "%s%s", DICT_OVERRIDE, value);
    if (load_config(&cfg, "zstd+dictionary", name, ovs, 1) != 0)
        return;
    rc = vt->open(rhema_host_get(), rhema_config_plugin_group(&cfg, RHEMA_KIND_COMPRESS, "zstd"),
                  &codec, &err);
    if (rc == 0) {
        vt->close(codec);
        snprintf(msg, sizeof msg, "open accepted dictionary=%s", value);
    } else if (err == NULL || strstr(err, want_in_msg) == NULL || strstr(err, "-o ") == NULL) {
        snprintf(msg, sizeof msg, "%s: message '%s' lacks '%s' or where it was set",
                 rhema_strerror(rc), err ? err : "", want_in_msg);
    }
    free(err);
    rhema_config_release(&cfg);
    tap("zstd+dictionary", name, msg[0] ? RHEMA_CONF_FAIL : RHEMA_CONF_PASS, msg);
}

static void zstd_dictionary(struct rhema_plugin_registry *reg)
{
    const struct rhema_loaded_plugin *lp =
        rhema_plugin_find(reg, RHEMA_KIND_COMPRESS, "zstd");
    char dict[700], ov[900], msg[1024] = "", missing[800], *err = NULL;
    const char *ovs[1] = {ov};
    struct rhema_conf_totals t = {0, 0, 0};
    struct rhema_config cfg;
    const struct rhema_cfg *group;
    uint32_t id;
    int rc;

    if (lp == NULL) {
        tap("zstd+dictionary", "dictionary checks", RHEMA_CONF_SKIP, "zstd plugin not loaded");
        return;
    }
    rc = train(dict, sizeof dict, msg, sizeof msg);
    if (rc == 1) {
        tap("zstd+dictionary", "dictionary checks", RHEMA_CONF_SKIP,
            "the zstd command is not installed (apt-get install zstd)");
        return;
    }
    if (rc != 0 || (id = file_dict_id(dict)) == 0) {
        tap("zstd+dictionary", "train a dictionary", RHEMA_CONF_FAIL,
            rc ? msg : "zstd --train wrote no dictionary id");
        return;
    }
    tap("zstd+dictionary", "train a dictionary", RHEMA_CONF_PASS, "");
    printf("# dictionary %s, id %u\n", dict, id);

    snprintf(ov, sizeof ov, "%s%s", DICT_OVERRIDE, dict);
    if (load_config(&cfg, "zstd+dictionary", "config", ovs, 1) != 0)
        return;
    group = rhema_config_plugin_group(&cfg, RHEMA_KIND_COMPRESS, "zstd");
    if (group == NULL) {
        tap("zstd+dictionary", "config", RHEMA_CONF_FAIL, "no advanced_features.compression.zstd");
        rhema_config_release(&cfg);
        return;
    }
    rhema_conformance_compress(&lp->vt.compress, rhema_host_get(), group, report,
                               (void *)"zstd+dictionary", &t);
    printf("# zstd+dictionary: %u passed, %u failed, %u skipped\n", t.passed, t.failed,
           t.skipped);
    dict_behaviour(&lp->vt.compress, group, id);
    rc = rhema_config_unread_keys(group, &err);
    tap("zstd+dictionary", "every configuration key read",
        rc == 0 ? RHEMA_CONF_PASS : RHEMA_CONF_FAIL, err ? err : "");
    free(err);
    rhema_config_release(&cfg);

    snprintf(missing, sizeof missing, "%s/no-such-dict", tmpdir);
    dict_refused(&lp->vt.compress, missing, missing, "a missing dictionary file is refused");
    snprintf(missing, sizeof missing, "%s/samples/m0001.json", tmpdir);
    dict_refused(&lp->vt.compress, missing, "not a zstd dictionary",
                 "a file that is not a dictionary is refused");
    dict_refused(&lp->vt.compress, "5", "must be a string", "a dictionary that is not a string");
}

/* ---- main ---- */

static char **split(const char *s, const char *seps, size_t *n)
{
    char *copy = strdup(s != NULL ? s : ""), *tok, *save = NULL;
    char **v = NULL;
    size_t cnt = 0;

    if (copy == NULL)
        return NULL;
    for (tok = strtok_r(copy, seps, &save); tok != NULL; tok = strtok_r(NULL, seps, &save)) {
        char **nv = realloc(v, (cnt + 2) * sizeof *v);
        if (nv == NULL)
            break;
        v = nv;
        v[cnt++] = strdup(tok);
        v[cnt] = NULL;
    }
    free(copy);
    *n = cnt;
    return v;
}

int main(void)
{
    struct rhema_plugin_registry *reg = NULL;
    const char *list = getenv("RHEMA_CONFORMANCE_CODECS");
    const char *base = getenv("TMPDIR");
    char **codecs;
    size_t n = 0;

    if (list == NULL || list[0] == '\0')
        list = "lz4 zstd gzip snappy";
    snprintf(tmpdir, sizeof tmpdir, "%s/rhema-test-compress-XXXXXX",
             base != NULL && base[0] != '\0' ? base : "/tmp");
    if (mkdtemp(tmpdir) == NULL) {
        printf("Bail out! mkdtemp %s: %s\n", tmpdir, strerror(errno));
        return 1;
    }
    if (rhema_plugins_new(&reg) != 0) {
        printf("Bail out! rhema_plugins_new failed\n");
        return 1;
    }
    codecs = split(list, " ,\t", &n);
    for (size_t i = 0; i < n; i++)
        run_codec(reg, codecs[i]);
    for (size_t i = 0; i < n; i++)
        if (strcmp(codecs[i], "zstd") == 0)
            zstd_dictionary(reg);
    for (size_t i = 0; codecs != NULL && codecs[i] != NULL; i++)
        free(codecs[i]);
    free(codecs);
    rhema_plugins_free(reg);
    nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);

    printf("1..%u\n", tap_n);
    if (tap_failed != 0)
        printf("# %u of %u checks failed\n", tap_failed, tap_n);
    return tap_failed != 0 || tap_n == 0;
}
