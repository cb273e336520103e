/*
 * gen_seeds -- the seeds only the code can make, written with the code
 * itself (tests/fuzz/make-seeds.sh runs it):
 *   fixtures/master.key, fixtures/keyring   a keyring with one version per
 *                                           cipher plugin built (the
 *                                           envelope and backup harnesses
 *                                           open a copy of it)
 *   corpus/fuzz_envelope/                   envelopes it made, per cipher
 *   corpus/fuzz_keybackup/                  backups of it
 *   corpus/fuzz_frame/                      frames of every codec built
 * Usage: gen_seeds TESTS_FUZZ_DIR (plugins from RHEMA_PLUGIN_DIR).
 * Running it again replaces the keyring fixture, and with it every
 * envelope and backup seed.
 */
#include "rhema_build.h"

#include <sys/stat.h>
#include <unistd.h>

#include "codec.h"
#include "config.h"
#include "fixture.h"
#include "log.h"

static const char *const samples[] = {
    "",
    "x",
    "{\"id\":\"s-1\",\"topic\":\"plan the release\",\"participants\":[\"a-1\",\"a-2\"],"
    "\"status\":\"Active\"}",
    "{\"id\":\"m-1\",\"sender\":\"a-1\",\"content\":\"hello hello hello hello hello hello "
    "hello hello hello hello\",\"message_type\":\"StatusUpdate\",\"priority\":\"Normal\"}",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
};
#define N_SAMPLES (sizeof samples / sizeof samples[0])

static const char *dir;

static void put(const char *harness, const char *name, const void *data, size_t len)
{
    char path[512];
    snprintf(path, sizeof path, "%s/corpus/%s", dir, harness);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/corpus/%s/%s", dir, harness, name);
    if (fuzz_write_file(path, data, len) != 0 || chmod(path, 0644) != 0) {
        fprintf(stderr, "gen_seeds: cannot write %s\n", path);
        exit(1);
    }
}

static void keyring_seeds(void)
{
    static const char *const order[] = {"aes256gcm", "chacha20poly1305", "xchacha20poly1305"};
    struct fuzz_keyring k;
    char err[RHEMA_KEYRING_ERR_MAX], name[64], path[512];
    if (fuzz_keyring_open(&k, 1) != 0)
        exit(1);
    /* one version per cipher: opening with another cipher adds a version */
    for (size_t c = 0; c < 3; c++) {
        const struct rhema_cipher_plugin *cp = fuzz_cipher(&k, order[c]);
        if (!cp || fuzz_keyring_start(&k, cp) != 0)
            continue; /* not built, or (AES-GCM) no hardware support */
        for (size_t i = 0; i < N_SAMPLES; i++) {
            struct rhema_buf env;
            if (rhema_keyring_encrypt(k.kr, samples[i], strlen(samples[i]), NULL, 0, &env,
                                      err) != 0) {
                fprintf(stderr, "gen_seeds: %s\n", err);
                exit(1);
            }
            snprintf(name, sizeof name, "%s-%zu", order[c], i);
            put("fuzz_envelope", name, env.data, env.len);
            free(env.data);
        }
        fuzz_keyring_close(&k);
    }
    if (fuzz_keyring_start(&k, fuzz_cipher(&k, "xchacha20poly1305")) != 0)
        exit(1);
    snprintf(path, sizeof path, "%s/corpus/fuzz_keybackup", dir);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/corpus/fuzz_keybackup/backup-1", dir);
    unlink(path);
    if (rhema_keyring_backup(k.kr, path, err) != 0 || chmod(path, 0644) != 0) {
        fprintf(stderr, "gen_seeds: backup: %s\n", err);
        exit(1);
    }
    fuzz_keyring_close(&k);
    chmod(k.key_file, 0644); /* git keeps 0644; the harnesses copy it to a 0600 file */
    chmod(k.ring, 0644);
    snprintf(path, sizeof path, "%s.lock", k.ring);
    unlink(path);
    rhema_master_free(k.master);
    rhema_plugins_free(k.reg);
}

static void frame_seeds(void)
{
    static const char *const names[] = {"lz4", "zstd", "gzip", "snappy", NULL};
    static const char *overrides[] = {"advanced_features.compression.algorithm=zstd"};
    struct rhema_config cfg;
    struct rhema_plugin_registry *reg;
    struct rhema_codecs cs;
    struct rhema_codec_ctxs ctxs;
    char *err = NULL, ferr[RHEMA_FRAME_ERR_MAX], name[64];
    memset(&ctxs, 0, sizeof ctxs);
    if (rhema_config_load(&cfg, NULL, overrides, 1, NULL, &err) || rhema_plugins_new(&reg))
        exit(1);
    fuzz_load_plugins(reg, RHEMA_KIND_COMPRESS, names);
    if (rhema_codecs_open(&cs, reg, &cfg, &err) != 0) {
        fprintf(stderr, "gen_seeds: %s\n", err);
        exit(1);
    }
    for (int id = 0; id < 256; id++) {
        if (id && !cs.by_id[id].plugin)
            continue;
        for (size_t i = 0; i < N_SAMPLES; i++) {
            struct rhema_buf f;
            if (rhema_frame_compress(&cs, &ctxs, id, INT32_MIN, id != 0, samples[i],
                                     strlen(samples[i]), &f, ferr) != 0) {
                fprintf(stderr, "gen_seeds: frame: %s\n", ferr);
                exit(1);
            }
            snprintf(name, sizeof name, "%s-%zu", id ? cs.by_id[id].plugin->name : "stored", i);
            put("fuzz_frame", name, f.data, f.len);
            free(f.data);
        }
    }
    rhema_codec_ctxs_release(&cs, &ctxs);
    rhema_codecs_close(&cs);
    rhema_plugins_free(reg);
    rhema_config_release(&cfg);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: gen_seeds TESTS_FUZZ_DIR\n");
        return 2;
    }
    dir = argv[1];
    char fixtures[512];
    snprintf(fixtures, sizeof fixtures, "%s/fixtures", dir);
    mkdir(fixtures, 0755);
    rhema_log_set_level(RHEMA_LOG_ERROR);
    if (setenv("RHEMA_FUZZ_FIXTURES", fixtures, 1) != 0)
        return 1;
    keyring_seeds();
    frame_seeds();
    return 0;
}
