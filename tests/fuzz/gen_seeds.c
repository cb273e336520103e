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
 *   corpus/fuzz_apikey/                     keys it generated, the keys of
 *                                           fuzz.h as headers present them,
 *                                           near misses
 *   corpus/fuzz_audit/                      logs the audit writer wrote
 *                                           (rotated once), and edits of them
 * Usage: gen_seeds TESTS_FUZZ_DIR [PART...] (plugins from RHEMA_PLUGIN_DIR);
 * the parts are keyring, frames, apikey, audit (default: all).  Running the
 * keyring part again replaces the keyring fixture, and with it every
 * envelope and backup seed.
 */
#include "rhema_build.h"

#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include "audit.h"
#include "auth/apikey.h"
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
    snprintf(path, sizeof path, "%s/corpus", dir);
    mkdir(path, 0755);
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

/* The mode byte of fuzz_apikey and fuzz_audit (0: as given), then text. */
static void put_mode(const char *harness, const char *name, int mode, const char *text, size_t n)
{
    char *b = malloc(n + 1);
    if (!b)
        exit(1);
    b[0] = (char)mode;
    memcpy(b + 1, text, n);
    put(harness, name, b, n + 1);
    free(b);
}

static void apikey_seeds(void)
{
    static const struct {
        const char *name, *text;
    } fixed[] = {
        {"admin", FUZZ_APIKEY_ADMIN},
        {"bearer-admin", "Authorization: Bearer " FUZZ_APIKEY_ADMIN},
        {"x-api-key-admin", "X-API-Key: " FUZZ_APIKEY_ADMIN},
        {"both-agree",
         "Authorization: Bearer " FUZZ_APIKEY_ADMIN "\nX-API-Key: " FUZZ_APIKEY_ADMIN},
        {"bearer-expired", "Authorization: Bearer " FUZZ_APIKEY_EXPIRED},
        {"basic-scheme", "Authorization: Basic dXNlcjpwYXNzd29yZA=="},
        {"stored-admin", FUZZ_APIKEY_ADMIN_STORED},
        {"stored-upper-hex",
         "eXo4lQ0uVvAw:7B71BCE4E9CF929209404D1A21A42351E753CFEA8040296371B3C00A50474FE2"},
        {"public-id", FUZZ_APIKEY_ADMIN_ID},
        {"wrong-prefix", "rx_eXo4lQ0uVvAw_w7VJjeCieFLzbCkh9xY46e2shqi4"},
        {"short-secret", "rk_eXo4lQ0uVvAw_w7VJjeCieFLzbCkh9xY46e2sh"},
        {"bad-checksum", "rk_eXo4lQ0uVvAw_w7VJjeCieFLzbCkh9xY46e2shqi5"},
        {"bearer-bad-checksum",
         "Authorization: Bearer rk_eXo4lQ0uVvAw_w7VJjeCieFLzbCkh9xY46e2shqi5"},
    };
    char key[RHEMA_APIKEY_LEN + 1], id[RHEMA_APIKEY_ID_LEN + 1], text[256], name[64];
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        put_mode("fuzz_apikey", fixed[i].name, 0, fixed[i].text, strlen(fixed[i].text));
        snprintf(name, sizeof name, "%s-fixed", fixed[i].name);
        put_mode("fuzz_apikey", name, 1, fixed[i].text, strlen(fixed[i].text));
    }
    /* keys the code makes: unknown to the keystore (a runtime lookup) */
    rhema_apikey_generate(key, id);
    put_mode("fuzz_apikey", "generated", 0, key, strlen(key));
    snprintf(text, sizeof text, "Authorization: bearer   %s", key);
    put_mode("fuzz_apikey", "bearer-generated", 0, text, strlen(text));
    snprintf(text, sizeof text, "Authorization: Bearer %s\nX-API-Key: %s", FUZZ_APIKEY_ADMIN, key);
    put_mode("fuzz_apikey", "both-disagree", 0, text, strlen(text));
    rhema_apikey_stored(key, strlen(key), text);
    put_mode("fuzz_apikey", "stored-generated", 0, text, strlen(text));
}

/* The whole of a file, or exit. */
static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    char *b = NULL;
    size_t cap = 0;
    *n = 0;
    if (!f) {
        fprintf(stderr, "gen_seeds: cannot open %s\n", path);
        exit(1);
    }
    for (;;) {
        if (*n == cap && !(b = realloc(b, cap = cap ? 2 * cap : 4096)))
            exit(1);
        size_t got = fread(b + *n, 1, cap - *n, f);
        if (got == 0)
            break;
        *n += got;
    }
    fclose(f);
    return b;
}

static void audit_seeds(void)
{
    char tmpl[] = "/tmp/rhema-seeds-XXXXXX", conf[320], log[320], old[320], why[RHEMA_ERRMSG_MAX];
    char *err = NULL;
    struct rhema_config cfg;
    if (!mkdtemp(tmpl))
        exit(1);
    snprintf(conf, sizeof conf, "%s/audit.conf", tmpl);
    snprintf(log, sizeof log, "%s/audit.log", tmpl);
    snprintf(old, sizeof old, "%s/audit.log.1", tmpl);
    FILE *f = fopen(conf, "w");
    if (!f)
        exit(1);
    fprintf(f,
            "security: { audit: { enabled = true; file = \"%s\"; hmac_key_file = "
            "\"%s/audit.key\"; fsync = false; }; };\n",
            log, tmpl);
    fclose(f);
    if (rhema_config_load(&cfg, conf, NULL, 0, NULL, &err) != 0 ||
        rhema_audit_open(&cfg, &err) != 0) {
        fprintf(stderr, "gen_seeds: audit: %s\n", err ? err : "?");
        exit(1);
    }
    /* a write (begin and end records), a read, an event; rotate; again */
    struct rhema_audit_request w = {.request_id = "req-1",
                                    .key_id = FUZZ_APIKEY_ADMIN_ID,
                                    .roles = "admin",
                                    .client = "127.0.0.1:40000",
                                    .method = "PUT",
                                    .route = "/v1/sessions/{session_id}",
                                    .param = "s-1",
                                    .body = "{\"id\":\"s-1\"}",
                                    .bytes_in = 12,
                                    .status = 201,
                                    .bytes_out = 40};
    struct rhema_audit_request r = {.request_id = "req-2",
                                    .client = "127.0.0.1:40001",
                                    .method = "GET",
                                    .route = "/v1/sessions/{session_id}",
                                    .param = "s-1",
                                    .status = 200,
                                    .bytes_out = 120};
    for (int round = 0; round < 2; round++) {
        if (rhema_audit_request_begin(&w, 1, why) != 0) {
            fprintf(stderr, "gen_seeds: audit: %s\n", why);
            exit(1);
        }
        rhema_audit_request_end(&w);
        rhema_audit_request_end(&r);
        rhema_audit_event("keyring.rotated", "req-3", FUZZ_APIKEY_ADMIN_ID,
                          json_pack("{s:I}", "version", (json_int_t)(round + 2)));
        rhema_audit_flush();
        if (round == 0) {
            if (rename(log, old) != 0)
                exit(1);
            rhema_audit_reopen();
        }
    }
    rhema_audit_close();
    rhema_config_release(&cfg);
    size_t n1, n2;
    char *a = slurp(old, &n1), *b = slurp(log, &n2);
    char *both = malloc(n1 + 2 + n2);
    if (!both)
        exit(1);
    memcpy(both, a, n1);
    memcpy(both + n1, "\f\n", 2);
    memcpy(both + n1 + 2, b, n2);
    put_mode("fuzz_audit", "rotated", 0, both, n1 + 2 + n2);
    put_mode("fuzz_audit", "rotated-rechained", 2, both, n1 + 2 + n2);
    put_mode("fuzz_audit", "first-file", 0, a, n1);
    put_mode("fuzz_audit", "second-file", 0, b, n2);
    put_mode("fuzz_audit", "cut", 0, both, n1 + 2 + n2 - 1);
    /* an edit whose line hash is recomputed (mode 1): the next line's prev breaks */
    char *put_at = strstr(both, "\"PUT\"");
    if (put_at) {
        memcpy(put_at, "\"GET\"", 5);
        put_mode("fuzz_audit", "edited-resealed", 1, both, n1 + 2 + n2);
    }
    /* the files swapped */
    memcpy(both, b, n2);
    memcpy(both + n2, "\f\n", 2);
    memcpy(both + n2 + 2, a, n1);
    put_mode("fuzz_audit", "reordered", 0, both, n1 + 2 + n2);
    free(both);
    free(a);
    free(b);
    unlink(old);
    unlink(log);
    snprintf(conf, sizeof conf, "%s/audit.key", tmpl);
    unlink(conf);
    snprintf(conf, sizeof conf, "%s/audit.conf", tmpl);
    unlink(conf);
    rmdir(tmpl);
}

static int wanted(int argc, char **argv, const char *part)
{
    if (argc == 2)
        return 1;
    for (int i = 2; i < argc; i++)
        if (strcmp(argv[i], part) == 0)
            return 1;
    return 0;
}

int main(int argc, char **argv)
{
    static const char *const parts[] = {"keyring", "frames", "apikey", "audit", NULL};
    if (argc < 2) {
        fprintf(stderr, "usage: gen_seeds TESTS_FUZZ_DIR [keyring|frames|apikey|audit...]\n");
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        const char *const *p = parts;
        while (*p && strcmp(*p, argv[i]) != 0)
            p++;
        if (!*p) {
            fprintf(stderr, "gen_seeds: no part '%s' (keyring, frames, apikey, audit)\n", argv[i]);
            return 2;
        }
    }
    dir = argv[1];
    char fixtures[512];
    snprintf(fixtures, sizeof fixtures, "%s/fixtures", dir);
    mkdir(fixtures, 0755);
    rhema_log_set_level(RHEMA_LOG_ERROR);
    if (setenv("RHEMA_FUZZ_FIXTURES", fixtures, 1) != 0)
        return 1;
    if (sodium_init() < 0)
        return 1;
    if (wanted(argc, argv, "keyring"))
        keyring_seeds();
    if (wanted(argc, argv, "frames"))
        frame_seeds();
    if (wanted(argc, argv, "apikey"))
        apikey_seeds();
    if (wanted(argc, argv, "audit"))
        audit_seeds();
    return 0;
}
