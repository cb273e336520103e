/*
 * test_keyring -- the keyring and envelope (core/keyring.c): master keys
 * from key files and passphrases, round trips through every cipher plugin
 * that was built (loaded with the real loader from RHEMA_PLUGIN_DIR),
 * refusal of tampered and truncated envelopes, rotation and
 * min_decryption_version, rewrap, counter nonces across a crash, message
 * limits, backups and restores, and stats.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "keybackup.h"
#include "keyring.h"
#include "log.h"
#include "plugin.h"

#define ENV_PASS "RHEMA_TEST_KEYRING_PASS"

static struct rhema_plugin_registry *reg;
static struct rhema_cipher_table table;
static const char *const cipher_names[] = {"aes256gcm", "chacha20poly1305", "xchacha20poly1305"};
static const struct rhema_cipher_plugin *ciphers[3]; /* NULL: not built / not available */

struct fx {
    char dir[64];
    char key_file[128], key_file2[128], ring[128], backup[128];
};

/* ---- fixtures ---- */

static int group_setup(void **state)
{
    const char *dir = getenv("RHEMA_PLUGIN_DIR");
    (void)state;
    rhema_log_set_level(RHEMA_LOG_WARN); /* no notice per created key version */
    if (sodium_init() < 0 || rhema_plugins_new(&reg) != 0)
        return -1;
    for (size_t i = 0; i < 3; i++) {
        const struct rhema_loaded_plugin *p;
        char *err = NULL;
        if (rhema_plugin_load(reg, cipher_names[i], dir ? dir : "plugins/.libs", RHEMA_KIND_CIPHER,
                              &p, &err) == 0)
            ciphers[i] = &p->vt.cipher;
        else
            fprintf(stderr, "# cipher %s not loaded: %s\n", cipher_names[i], err ? err : "?");
        free(err);
    }
    rhema_cipher_table_fill(&table, reg);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    rhema_plugins_free(reg);
    return 0;
}

static void write_file(const char *path, const void *data, size_t len, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    close(fd);
    assert_int_equal(chmod(path, mode), 0);
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    unsigned char key[32];
    strcpy(f->dir, "/tmp/rhema-keyring-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->key_file, sizeof f->key_file, "%s/master.key", f->dir);
    snprintf(f->key_file2, sizeof f->key_file2, "%s/other.key", f->dir);
    snprintf(f->ring, sizeof f->ring, "%s/data/keyring", f->dir);
    snprintf(f->backup, sizeof f->backup, "%s/keys.bak", f->dir);
    randombytes_buf(key, sizeof key);
    write_file(f->key_file, key, sizeof key, 0600);
    randombytes_buf(key, sizeof key);
    write_file(f->key_file2, key, sizeof key, 0600);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    if (system(cmd) != 0)
        return -1;
    free(f);
    return 0;
}

/* The first loaded cipher with (want_random 1) or without (0) random nonces, -1 any. */
static const struct rhema_cipher_plugin *pick(int want_random)
{
    for (int i = 2; i >= 0; i--)
        if (ciphers[i] && (want_random < 0 || (int)ciphers[i]->random_nonce_ok == want_random))
            return ciphers[i];
    return NULL;
}

static struct rhema_keyring_params params(const struct fx *f, const struct rhema_cipher_plugin *c)
{
    struct rhema_keyring_params p;
    memset(&p, 0, sizeof p);
    p.path = f->ring;
    p.key_file = f->key_file;
    p.cipher = c;
    p.ciphers = &table;
    p.min_decryption_version = 1;
    p.rotation_interval_hours = 720;
    return p;
}

static struct rhema_keyring *open_ok(const struct rhema_keyring_params *p)
{
    struct rhema_keyring *kr = NULL;
    char err[RHEMA_KEYRING_ERR_MAX] = "";
    int rc = rhema_keyring_open(p, &kr, err);
    if (rc)
        fail_msg("open: %s: %s", rhema_strerror(rc), err);
    return kr;
}

static struct rhema_buf enc(struct rhema_keyring *kr, const void *pt, size_t len, const char *ad)
{
    struct rhema_buf b = {0};
    char err[RHEMA_KEYRING_ERR_MAX] = "";
    int rc = rhema_keyring_encrypt(kr, pt, len, ad, ad ? strlen(ad) : 0, &b, err);
    if (rc)
        fail_msg("encrypt: %s: %s", rhema_strerror(rc), err);
    return b;
}

static int dec(struct rhema_keyring *kr, const struct rhema_buf *e, const char *ad,
               struct rhema_buf *out, char *err)
{
    return rhema_keyring_decrypt(kr, e->data, e->len, ad, ad ? strlen(ad) : 0, out, err);
}

static void assert_decrypts_to(struct rhema_keyring *kr, const struct rhema_buf *e, const char *ad,
                               const void *pt, size_t len)
{
    struct rhema_buf out = {0};
    char err[RHEMA_KEYRING_ERR_MAX] = "";
    int rc = dec(kr, e, ad, &out, err);
    if (rc)
        fail_msg("decrypt: %s: %s", rhema_strerror(rc), err);
    assert_int_equal(out.len, len);
    if (len)
        assert_memory_equal(out.data, pt, len);
    free(out.data);
}

static uint32_t env_version(const struct rhema_buf *e)
{
    uint32_t v = 0;
    assert_int_equal(rhema_envelope_key_version(e->data, e->len, &v), 0);
    return v;
}

static uint64_t env_counter(const struct rhema_buf *e)
{
    uint64_t c = 0;
    for (int i = 0; i < 8; i++)
        c |= (uint64_t)e->data[RHEMA_ENVELOPE_FIXED + i] << (8 * i);
    return c;
}

static unsigned char *slurp(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    unsigned char *buf = malloc(1 << 20);
    assert_non_null(fp);
    *len = fread(buf, 1, 1 << 20, fp);
    fclose(fp);
    return buf;
}

/* ---- master keys ---- */

static void key_file_mode_0644_refused(void **state)
{
    struct fx *f = *state;
    struct rhema_master *m = NULL;
    struct rhema_keyring *kr = NULL;
    char err[RHEMA_KEYRING_ERR_MAX] = "";
    assert_int_equal(chmod(f->key_file, 0644), 0);
    assert_int_equal(rhema_master_from_key_file(f->key_file, &m, err), RHEMA_EINVAL);
    assert_null(m);
    assert_non_null(strstr(err, "mode 0644"));
    assert_non_null(strstr(err, "chmod 600"));
    assert_int_equal(chmod(f->key_file, 0640), 0);
    assert_int_equal(rhema_master_from_key_file(f->key_file, &m, err), RHEMA_EINVAL);
    if (!pick(-1))
        skip();
    struct rhema_keyring_params p = params(f, pick(-1));
    assert_int_equal(rhema_keyring_open(&p, &kr, err), RHEMA_EINVAL);
    assert_null(kr);
    assert_non_null(strstr(err, "mode 0640"));
    assert_int_equal(access(f->ring, F_OK), -1); /* nothing created */
}

static void key_file_0600_raw_and_hex(void **state)
{
    struct fx *f = *state;
    struct rhema_master *a = NULL, *b = NULL, *c = NULL;
    char err[RHEMA_KEYRING_ERR_MAX] = "";
    char hex[65 + 1];
    char hexfile[160];
    assert_int_equal(rhema_master_from_key_file(f->key_file, &a, err), 0);
    sodium_bin2hex(hex, sizeof hex - 1, rhema_master_bytes(a), 32);
    strcat(hex, "\n");
    snprintf(hexfile, sizeof hexfile, "%s/hex.key", f->dir);
    write_file(hexfile, hex, 65, 0400);
    assert_int_equal(rhema_master_from_key_file(hexfile, &b, err), 0);
    assert_memory_equal(rhema_master_bytes(a), rhema_master_bytes(b), 32);
    write_file(hexfile, "0123abcd", 8, 0600); /* neither 32 bytes nor 64 hex */
    assert_int_equal(rhema_master_from_key_file(hexfile, &c, err), RHEMA_EINVAL);
    assert_non_null(strstr(err, "32 raw bytes or 64 hex"));
    assert_null(c);
    rhema_master_free(a);
    rhema_master_free(b);
}

static void no_master_source_is_disabled(void **state)
{
    struct fx *f = *state;
    struct rhema_keyring *kr = NULL;
    char err[RHEMA_KEYRING_ERR_MAX] = "";
    struct rhema_keyring_params p = params(f, pick(-1));
    struct rhema_config cfg;
    char *cerr = NULL;
    p.key_file = "";
    assert_int_equal(rhema_keyring_open(&p, &kr, err), RHEMA_ENOTSUP);
    assert_non_null(strstr(err, "disabled"));
    /* the config defaults: no key source, the documented path and limits */
    assert_int_equal(rhema_config_load(&cfg, NULL, NULL, 0, NULL, &cerr), 0);
    assert_int_equal(rhema_keyring_params_from_config(&p, &cfg), 0);
    assert_string_equal(p.path, "keyring");
    assert_int_equal(p.rotation_interval_hours, 720);
    assert_int_equal(p.min_decryption_version, 1);
    rhema_config_release(&cfg);
}

static void passphrase_master(void **state)
{
    struct fx *f = *state;
    const struct rhema_cipher_plugin *c = pick(-1);
    struct rhema_keyring *kr;
    struct rhema_master *m = NULL;
    char err[RHEMA_KEYRING_ERR_MAX] = "";
    if (!c)
        skip();
    struct rhema_keyring_params p = params(f, c);
    p.key_file = NULL;
    p.passphrase_env = ENV_PASS;
    p.kdf_opslimit = crypto_pwhash_OPSLIMIT_MIN; /* fast for the test */
    p.kdf_memlimit = crypto_pwhash_MEMLIMIT_MIN;
    unsetenv(ENV_PASS);
    assert_int_equal(rhema_keyring_open(&p, &kr, err), RHEMA_EINVAL);
    assert_non_null(strstr(err, "not set"));
    setenv(ENV_PASS, "correct horse battery staple", 1);
    kr = open_ok(&p);
    struct rhema_buf e = enc(kr, "hello", 5, NULL);
    rhema_keyring_close(kr);
    /* the salt and limits come from the file: reopening derives the same key */
    p.kdf_opslimit = p.kdf_memlimit = 0;
    kr = open_ok(&p);
    assert_decrypts_to(kr, &e, NULL, "hello", 5);
    rhema_keyring_close(kr);
    /* rhemactl's helper derives the same master from the file header */
    assert_int_equal(rhema_master_for_file(f->ring, NULL, ENV_PASS, &m, err), 0);
    p.passphrase_env = NULL;
    p.master = m;
    kr = open_ok(&p);
    assert_decrypts_to(kr, &e, NULL, "hello", 5);
    rhema_keyring_close(kr);
    rhema_master_free(m);
    /* a key file on a passphrase keyring: a clear refusal */
    p.master = NULL;
    p.key_file = f->key_file;
    assert_int_equal(rhema_keyring_open(&p, &kr, err), RHEMA_EINVAL);
    assert_non_null(strstr(err, "passphrase"));
    /* a wrong passphrase */
    p.key_file = NULL;
    p.passphrase_env = ENV_PASS;
    setenv(ENV_PASS, "incorrect horse", 1);
    assert_int_equal(rhema_keyring_open(&p, &kr, err), RHEMA_ECORRUPT);
    assert_non_null(strstr(err, "wrong master key or corrupt keyring"));
    unsetenv(ENV_PASS);
    free(e.data);
}

static void wrong_master_key_refused(void **state)
{
    struct fx *f = *state;
    struct rhema_keyring *kr;
    char err[RHEMA_KEYRING_ERR_MAX] = "";
    if (!pick(-1))
        skip();
    struct rhema_keyring_params p = params(f, pick(-1));
    rhema_keyring_close(open_ok(&p));
    p.key_file = f->key_file2;
    kr = NULL;
    assert_int_equal(rhema_keyring_open(&p, &kr, err), RHEMA_ECORRUPT);
    assert_null(kr);
    assert_non_null(strstr(err, "wrong master key or corrupt keyring"));
    /* a flipped byte in the file: the same refusal */
    size_t len;
    unsigned char *img = slurp(f->ring, &len);
    img[len / 2] ^= 0x20;
    write_file(f->ring, img, len, 0600);
    p.key_file = f->key_file;
    assert_int_equal(rhema_keyring_open(&p, &kr, err), RHEMA_ECORRUPT);
    assert_non_null(strstr(err, "wrong master key or corrupt keyring"));
    free(img);
}

static void keyring_file_mode_and_lock(void **state)
{
    struct fx *f = *state;
    struct rhema_keyring *kr, *kr2 = NULL;
    struct stat sb;
    char err[RHEMA_KEYRING_ERR_MAX] = "";
    if (!pick(-1))
        skip();
    struct rhema_keyring_params p = params(f, pick(-1));
    kr = open_ok(&p);
    assert_int_equal(stat(f->ring, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    assert_int_equal(rhema_keyring_open(&p, &kr2, err), RHEMA_ECONFLICT);
    assert_non_null(strstr(err, "in use by another process"));
    rhema_keyring_close(kr);
    kr2 = open_ok(&p);
    rhema_keyring_close(kr2);
}

/* ---- envelopes ---- */

static void round_trip_every_cipher(void **state)
{
    struct fx *f = *state;
    static const size_t sizes[] = {0, 1, 15, 16, 17, 1000, 100000};
    int tested = 0;
    for (int i = 0; i < 3; i++) {
        const struct rhema_cipher_plugin *c = ciphers[i];
        if (!c)
            continue;
        struct rhema_keyring_params p = params(f, c);
        struct rhema_keyring *kr = open_ok(&p);
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            unsigned char *pt = malloc(sizes[s] + 1);
            randombytes_buf(pt, sizes[s] + 1);
            for (int withad = 0; withad < 2; withad++) {
                const char *ad = withad ? "session:s-1" : NULL;
                struct rhema_buf e = enc(kr, pt, sizes[s], ad);
                assert_int_equal(e.len,
                                 RHEMA_ENVELOPE_FIXED + c->nonce_bytes + sizes[s] + c->tag_bytes);
                assert_int_equal(e.data[0], 'R');
                assert_int_equal(e.data[1], 'E');
                assert_int_equal(e.data[2], 1);
                assert_int_equal(e.data[3], c->cipher_id);
                assert_int_equal(env_version(&e), 1);
                assert_decrypts_to(kr, &e, ad, pt, sizes[s]);
                struct rhema_buf out = {0};
                char err[RHEMA_KEYRING_ERR_MAX] = "";
                /* other (or missing) associated data does not authenticate */
                assert_int_equal(dec(kr, &e, withad ? "session:s-2" : "x", &out, err),
                                 RHEMA_ECORRUPT);
                assert_non_null(strstr(err, "authentication failed"));
                assert_null(out.data);
                free(e.data);
            }
            free(pt);
        }
        rhema_keyring_close(kr);
        unlink(f->ring);
        tested++;
    }
    if (!tested)
        skip();
}

static void tampered_and_truncated_envelopes_refused(void **state)
{
    struct fx *f = *state;
    int tested = 0;
    for (int i = 0; i < 3; i++) {
        const struct rhema_cipher_plugin *c = ciphers[i];
        if (!c)
            continue;
        struct rhema_keyring_params p = params(f, c);
        struct rhema_keyring *kr = open_ok(&p);
        const char msg[] = "{\"content\":\"the plan\"}";
        struct rhema_buf e = enc(kr, msg, sizeof msg - 1, "ad");
        char err[RHEMA_KEYRING_ERR_MAX];
        struct rhema_buf out = {0};
        for (size_t pos = 0; pos < e.len; pos++)
            for (int bit = 0; bit < 8; bit++) {
                e.data[pos] ^= (unsigned char)(1u << bit);
                err[0] = 0;
                int rc = dec(kr, &e, "ad", &out, err);
                if (rc != RHEMA_ECORRUPT)
                    fail_msg("%s: byte %zu bit %d: %s (%s)", c->base.name, pos, bit,
                             rhema_strerror(rc), err);
                assert_null(out.data);
                e.data[pos] ^= (unsigned char)(1u << bit);
            }
        for (size_t len = 0; len < e.len; len++) {
            int rc = rhema_keyring_decrypt(kr, e.data, len, "ad", 2, &out, err);
            if (rc != RHEMA_ECORRUPT)
                fail_msg("%s: truncated to %zu: %s", c->base.name, len, rhema_strerror(rc));
        }
        /* the messages name the cause */
        assert_int_equal(rhema_keyring_decrypt(kr, "XE", 2, NULL, 0, &out, err), RHEMA_ECORRUPT);
        assert_non_null(strstr(err, "bad magic"));
        assert_int_equal(rhema_keyring_decrypt(kr, e.data, 5, "ad", 2, &out, err), RHEMA_ECORRUPT);
        assert_non_null(strstr(err, "truncated header"));
        e.data[4] = 9;
        assert_int_equal(dec(kr, &e, "ad", &out, err), RHEMA_ECORRUPT);
        assert_non_null(strstr(err, "unknown key version 9"));
        e.data[4] = 1;
        e.data[e.len - 1] ^= 1;
        assert_int_equal(dec(kr, &e, "ad", &out, err), RHEMA_ECORRUPT);
        assert_non_null(strstr(err, "authentication failed"));
        e.data[e.len - 1] ^= 1;
        /* one byte more is not the same message */
        unsigned char *longer = malloc(e.len + 1);
        memcpy(longer, e.data, e.len);
        longer[e.len] = 0;
        assert_int_equal(rhema_keyring_decrypt(kr, longer, e.len + 1, "ad", 2, &out, err),
                         RHEMA_ECORRUPT);
        free(longer);
        assert_decrypts_to(kr, &e, "ad", msg, sizeof msg - 1);
        free(e.data);
        rhema_keyring_close(kr);
        unlink(f->ring);
        tested++;
    }
    if (!tested)
        skip();
}

/* ---- versions ---- */

static void rotation_and_min_decryption_version(void **state)
{
    struct fx *f = *state;
    struct rhema_keyring *kr;
    char err[RHEMA_KEYRING_ERR_MAX] = "";
    uint32_t nv = 0;
    if (!pick(-1))
        skip();
    struct rhema_keyring_params p = params(f, pick(-1));
    kr = open_ok(&p);
    struct rhema_buf e1 = enc(kr, "one", 3, NULL);
    assert_int_equal(rhema_keyring_rotate(kr, &nv, err), 0);
    assert_int_equal(nv, 2);
    struct rhema_buf e2 = enc(kr, "two", 3, NULL);
    assert_int_equal(env_version(&e1), 1);
    assert_int_equal(env_version(&e2), 2);
    assert_decrypts_to(kr, &e1, NULL, "one", 3);
    assert_decrypts_to(kr, &e2, NULL, "two", 3);
    rhema_keyring_close(kr);

    /* reopened: both versions still decrypt, the newest still encrypts */
    kr = open_ok(&p);
    assert_decrypts_to(kr, &e1, NULL, "one", 3);
    struct rhema_buf e3 = enc(kr, "three", 5, NULL);
    assert_int_equal(env_version(&e3), 2);
    rhema_keyring_close(kr);

    /* min_decryption_version 2 refuses version 1 */
    p.min_decryption_version = 2;
    kr = open_ok(&p);
    struct rhema_buf out = {0};
    assert_int_equal(dec(kr, &e1, NULL, &out, err), RHEMA_ECORRUPT);
    assert_non_null(strstr(err, "below min_decryption_version 2"));
    assert_null(out.data);
    assert_decrypts_to(kr, &e2, NULL, "two", 3);
    /* lowered again at run time (SIGHUP) */
    assert_int_equal(rhema_keyring_set_min_decryption_version(kr, 1, err), 0);
    assert_decrypts_to(kr, &e1, NULL, "one", 3);
    assert_int_equal(rhema_keyring_set_min_decryption_version(kr, 3, err), RHEMA_EINVAL);
    rhema_keyring_close(kr);

    /* above the newest version: nothing could decrypt, so open refuses */
    p.min_decryption_version = 3;
    kr = NULL;
    assert_int_equal(rhema_keyring_open(&p, &kr, err), RHEMA_EINVAL);
    assert_non_null(strstr(err, "above the newest key version 2"));
    free(e1.data);
    free(e2.data);
    free(e3.data);
}

static void cipher_change_rotates_on_open(void **state)
{
    struct fx *f = *state;
    if (!ciphers[1] || !ciphers[2])
        skip();
    struct rhema_keyring_params p = params(f, ciphers[1]);
    struct rhema_keyring *kr = open_ok(&p);
    struct rhema_buf e1 = enc(kr, "a", 1, NULL);
    rhema_keyring_close(kr);
    p.cipher = ciphers[2];
    kr = open_ok(&p);
    struct rhema_buf e2 = enc(kr, "b", 1, NULL);
    assert_int_equal(env_version(&e2), 2);
    assert_int_equal(e2.data[3], ciphers[2]->cipher_id);
    assert_decrypts_to(kr, &e1, NULL, "a", 1); /* the old cipher's key still decrypts */
    rhema_keyring_close(kr);
    free(e1.data);
    free(e2.data);
}

static void rewrap_moves_to_newest(void **state)
{
    struct fx *f = *state;
    struct rhema_keyring *kr;
    char err[RHEMA_KEYRING_ERR_MAX] = "";
    const char secret[] = "PLAINTEXT-MARKER-0123456789";
    uint32_t v = 0;
    if (!pick(-1))
        skip();
    struct rhema_keyring_params p = params(f, pick(-1));
    kr = open_ok(&p);
    struct rhema_buf e1 = enc(kr, secret, sizeof secret - 1, "ad");
    assert_int_equal(rhema_keyring_rotate(kr, NULL, err), 0);
    assert_int_equal(rhema_keyring_rotate(kr, NULL, err), 0);
    struct rhema_buf w = {0};
    assert_int_equal(rhema_keyring_rewrap(kr, e1.data, e1.len, "ad", 2, &w, &v, err), 0);
    assert_int_equal(v, 3);
    assert_int_equal(env_version(&w), 3);
    assert_null(memmem(w.data, w.len, secret, sizeof secret - 1));
    assert_null(memmem(w.data, w.len, "PLAINTEXT", 9));
    assert_decrypts_to(kr, &w, "ad", secret, sizeof secret - 1);
    /* a rewrap with other associated data fails and returns nothing */
    struct rhema_buf w2 = {0};
    assert_int_equal(rhema_keyring_rewrap(kr, e1.data, e1.len, "xx", 2, &w2, NULL, err),
                     RHEMA_ECORRUPT);
    assert_null(w2.data);
    rhema_keyring_close(kr);
    free(e1.data);
    free(w.data);
}

/* ---- nonces and limits ---- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void counter_nonces_unique_across_crash(void **state)
{
    struct fx *f = *state;
    const struct rhema_cipher_plugin *c = pick(0);
    enum { N = 1000, BLOCK = 64 };
    uint64_t seen[N + 3];
    if (!c)
        skip();
    struct rhema_keyring_params p = params(f, c);
    p.reserve_block = BLOCK;
    struct rhema_keyring *kr = open_ok(&p);
    for (size_t i = 0; i < N; i++) {
        struct rhema_buf e = enc(kr, "m", 1, NULL);
        seen[i] = env_counter(&e);
        /* bytes past the 64-bit counter are zero */
        for (uint32_t b = 8; b < c->nonce_bytes; b++)
            assert_int_equal(e.data[RHEMA_ENVELOPE_FIXED + b], 0);
        assert_int_equal(seen[i], i);
        free(e.data);
    }
    /* a crash: nothing written at close, the reservation stays at 1024 */
    rhema_keyring_close_nosync(kr);
    kr = open_ok(&p);
    struct rhema_buf e = enc(kr, "m", 1, NULL);
    seen[N] = env_counter(&e);
    assert_int_equal(seen[N], (N + BLOCK - 1) / BLOCK * BLOCK); /* above every used value */
    free(e.data);
    e = enc(kr, "m", 1, NULL);
    seen[N + 1] = env_counter(&e);
    free(e.data);
    /* a clean close writes the exact count: no values skipped */
    rhema_keyring_close(kr);
    kr = open_ok(&p);
    e = enc(kr, "m", 1, NULL);
    seen[N + 2] = env_counter(&e);
    assert_int_equal(seen[N + 2], seen[N + 1] + 1);
    free(e.data);
    rhema_keyring_close(kr);
    qsort(seen, N + 3, sizeof seen[0], cmp_u64);
    for (size_t i = 1; i < N + 3; i++)
        assert_true(seen[i] != seen[i - 1]);
}

struct worker {
    struct rhema_keyring *kr;
    uint64_t *out;
    size_t n;
};

static void *encrypt_worker(void *arg)
{
    struct worker *w = arg;
    for (size_t i = 0; i < w->n; i++) {
        struct rhema_buf e = {0};
        char err[RHEMA_KEYRING_ERR_MAX];
        if (rhema_keyring_encrypt(w->kr, "x", 1, NULL, 0, &e, err) != 0)
            return err[0] ? (void *)1 : (void *)2;
        w->out[i] = env_counter(&e);
        free(e.data);
    }
    return NULL;
}

static void counter_nonces_unique_across_threads(void **state)
{
    struct fx *f = *state;
    const struct rhema_cipher_plugin *c = pick(0);
    enum { T = 8, PER = 2000 };
    pthread_t th[T];
    struct worker w[T];
    uint64_t *all = calloc(T * PER, sizeof *all);
    struct rhema_keyring_stats st;
    if (!c)
        skip();
    struct rhema_keyring_params p = params(f, c);
    p.reserve_block = 100; /* many reservations under contention */
    struct rhema_keyring *kr = open_ok(&p);
    for (int i = 0; i < T; i++) {
        w[i] = (struct worker){kr, all + (size_t)i * PER, PER};
        assert_int_equal(pthread_create(&th[i], NULL, encrypt_worker, &w[i]), 0);
    }
    for (int i = 0; i < T; i++) {
        void *r;
        pthread_join(th[i], &r);
        assert_null(r);
    }
    qsort(all, T * PER, sizeof *all, cmp_u64);
    for (size_t i = 0; i < T * PER; i++)
        assert_int_equal(all[i], i); /* every value exactly once */
    assert_int_equal(rhema_keyring_stats(kr, &st), 0);
    assert_int_equal(st.v[0].encryptions, T * PER);
    rhema_keyring_stats_release(&st);
    rhema_keyring_close(kr);
    free(all);
}

static void message_limit_refuses_or_rotates(void **state)
{
    struct fx *f = *state;
    char err[RHEMA_KEYRING_ERR_MAX] = "";
    struct rhema_buf e = {0};
    struct rhema_keyring_stats st;
    if (!pick(-1))
        skip();
    struct rhema_keyring_params p = params(f, pick(-1));
    p.max_messages_per_key = 5;
    p.reserve_block = 2;
    struct rhema_keyring *kr = open_ok(&p);
    for (int i = 0; i < 5; i++) {
        e = enc(kr, "m", 1, NULL);
        free(e.data);
    }
    e.data = NULL;
    assert_int_equal(rhema_keyring_encrypt(kr, "m", 1, NULL, 0, &e, err), RHEMA_ETOOBIG);
    assert_non_null(strstr(err, "limit of 5 messages"));
    assert_null(e.data);
    rhema_keyring_close(kr);
    /* the count survives a restart: still refused */
    kr = open_ok(&p);
    assert_int_equal(rhema_keyring_encrypt(kr, "m", 1, NULL, 0, &e, err), RHEMA_ETOOBIG);
    rhema_keyring_close(kr);
    /* with rotation enabled the limit rotates instead */
    p.rotation_enabled = 1;
    kr = open_ok(&p);
    for (int i = 0; i < 12; i++) {
        e = enc(kr, "m", 1, NULL);
        assert_int_equal(env_version(&e), 2 + i / 5);
        free(e.data);
    }
    assert_int_equal(rhema_keyring_stats(kr, &st), 0);
    assert_int_equal(st.current_version, 4);
    assert_int_equal(st.v[0].encryptions, 5);
    assert_int_equal(st.v[1].encryptions, 5);
    assert_int_equal(st.v[2].encryptions, 5);
    assert_int_equal(st.v[3].encryptions, 2);
    assert_int_equal(st.v[3].limit, 5);
    rhema_keyring_stats_release(&st);
    rhema_keyring_close(kr);
}

/* ---- backups ---- */

static void backup_restore_round_trip(void **state)
{
    struct fx *f = *state;
    char err[RHEMA_KEYRING_ERR_MAX] = "";
    struct rhema_keyring_backup_info info;
    struct rhema_master *m = NULL;
    struct rhema_keyring_stats st;
    struct stat sb;
    if (!pick(-1))
        skip();
    struct rhema_keyring_params p = params(f, pick(-1));
    struct rhema_keyring *kr = open_ok(&p);
    struct rhema_buf e1 = enc(kr, "before", 6, NULL);
    assert_int_equal(rhema_keyring_backup(kr, f->backup, err), 0);
    assert_int_equal(stat(f->backup, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    /* the archive is encrypted: no key material or marker in the clear */
    size_t blen;
    unsigned char *b = slurp(f->backup, &blen);
    assert_memory_equal(b, "RHEMAKB", 7);
    free(b);

    assert_int_equal(rhema_master_for_file(f->backup, f->key_file, NULL, &m, err), 0);
    assert_int_equal(rhema_keyring_verify_backup(f->backup, m, &info, err), 0);
    assert_int_equal(info.versions, 1);
    assert_int_equal(info.newest_version, 1);
    assert_true(info.created_at_ms > 0);

    assert_int_equal(rhema_keyring_rotate(kr, NULL, err), 0);
    struct rhema_buf e2 = enc(kr, "after", 5, NULL);
    assert_int_equal(rhema_keyring_restore(kr, f->backup, err), 0);
    /* the archive is restored, and version 2, made after the backup, is kept (issue 17:
     * a restore never makes data unreadable); a fresh version numbered above both sides
     * encrypts */
    assert_decrypts_to(kr, &e1, NULL, "before", 6);
    assert_decrypts_to(kr, &e2, NULL, "after", 5);
    struct rhema_buf e3 = enc(kr, "new", 3, NULL);
    assert_int_equal(env_version(&e3), 3);
    assert_int_equal(rhema_keyring_stats(kr, &st), 0);
    assert_int_equal(st.versions, 3);
    assert_int_equal(st.v[0].version, 1);
    assert_int_equal(st.v[1].version, 2);
    assert_int_equal(st.v[2].version, 3);
    assert_true(st.last_backup_ms > 0);
    rhema_keyring_stats_release(&st);
    rhema_keyring_close(kr);
    /* and the restored keyring is what is on disk */
    kr = open_ok(&p);
    assert_decrypts_to(kr, &e1, NULL, "before", 6);
    assert_decrypts_to(kr, &e2, NULL, "after", 5);
    assert_decrypts_to(kr, &e3, NULL, "new", 3);
    rhema_keyring_close(kr);

    /* offline restore (rhemactl): refused while open, fresh version on the next open */
    kr = open_ok(&p);
    assert_int_equal(rhema_keyring_restore_file(m, f->backup, f->ring, err), RHEMA_ECONFLICT);
    rhema_keyring_close(kr);
    assert_int_equal(rhema_keyring_restore_file(m, f->backup, f->ring, err), 0);
    kr = open_ok(&p);
    assert_decrypts_to(kr, &e1, NULL, "before", 6);
    assert_decrypts_to(kr, &e2, NULL, "after", 5); /* offline too */
    assert_decrypts_to(kr, &e3, NULL, "new", 3);
    struct rhema_buf e4 = enc(kr, "x", 1, NULL);
    assert_int_equal(env_version(&e4), 4); /* above the 3 the replaced keyring had */
    rhema_keyring_close(kr);
    rhema_master_free(m);
    free(e1.data);
    free(e2.data);
    free(e3.data);
    free(e4.data);
}

static void bad_backup_changes_nothing(void **state)
{
    struct fx *f = *state;
    char err[RHEMA_KEYRING_ERR_MAX] = "";
    char tampered[160], foreign[160], foreign_ring[160];
    struct rhema_keyring_stats before, after;
    if (!pick(-1))
        skip();
    struct rhema_keyring_params p = params(f, pick(-1));
    struct rhema_keyring *kr = open_ok(&p);
    struct rhema_buf e1 = enc(kr, "live", 4, NULL);
    assert_int_equal(rhema_keyring_backup(kr, f->backup, err), 0);
    assert_int_equal(rhema_keyring_rotate(kr, NULL, err), 0);
    size_t alen, rlen, rlen2;
    unsigned char *arc = slurp(f->backup, &alen);
    unsigned char *ring = slurp(f->ring, &rlen);
    assert_int_equal(rhema_keyring_stats(kr, &before), 0);

    /* every flipped byte, and every truncation, of the archive is refused */
    snprintf(tampered, sizeof tampered, "%s/tampered.bak", f->dir);
    for (size_t pos = 0; pos < alen; pos += (pos < 96 ? 1 : 37)) {
        arc[pos] ^= 0x04;
        write_file(tampered, arc, alen, 0600);
        arc[pos] ^= 0x04;
        int rc = rhema_keyring_restore(kr, tampered, err);
        if (rc == 0)
            fail_msg("archive with byte %zu flipped was restored", pos);
    }
    for (size_t len = 0; len < alen; len += 29) {
        write_file(tampered, arc, len, 0600);
        assert_int_not_equal(rhema_keyring_restore(kr, tampered, err), 0);
    }
    arc[alen - 3] ^= 1;
    write_file(tampered, arc, alen, 0600);
    assert_int_equal(rhema_keyring_restore(kr, tampered, err), RHEMA_ECORRUPT);
    assert_non_null(strstr(err, "does not authenticate"));

    /* an archive of another keyring (another master key) */
    snprintf(foreign, sizeof foreign, "%s/foreign.bak", f->dir);
    snprintf(foreign_ring, sizeof foreign_ring, "%s/foreign/keyring", f->dir);
    struct rhema_keyring_params q = params(f, pick(-1));
    q.path = foreign_ring;
    q.key_file = f->key_file2;
    struct rhema_keyring *other = open_ok(&q);
    assert_int_equal(rhema_keyring_backup(other, foreign, err), 0);
    rhema_keyring_close(other);
    assert_int_equal(rhema_keyring_restore(kr, foreign, err), RHEMA_ECORRUPT);
    /* a keyring file is not an archive */
    assert_int_equal(rhema_keyring_restore(kr, foreign_ring, err), RHEMA_ECORRUPT);

    /* nothing changed: the file, the versions, the keys */
    unsigned char *ring2 = slurp(f->ring, &rlen2);
    assert_int_equal(rlen, rlen2);
    assert_memory_equal(ring, ring2, rlen);
    assert_int_equal(rhema_keyring_stats(kr, &after), 0);
    assert_int_equal(after.versions, before.versions);
    assert_int_equal(after.current_version, before.current_version);
    rhema_keyring_stats_release(&before);
    rhema_keyring_stats_release(&after);
    assert_decrypts_to(kr, &e1, NULL, "live", 4);
    rhema_keyring_close(kr);
    free(arc);
    free(ring);
    free(ring2);
    free(e1.data);
}

/* ---- stats ---- */

static void stats_values(void **state)
{
    struct fx *f = *state;
    char err[RHEMA_KEYRING_ERR_MAX] = "";
    struct rhema_keyring_stats st;
    int rotated = 1;
    if (!pick(-1))
        skip();
    const struct rhema_cipher_plugin *c = pick(-1);
    struct rhema_keyring_params p = params(f, c);
    p.rotation_enabled = 1;
    p.rotation_interval_hours = 24;
    uint64_t t0 = (uint64_t)time(NULL) * 1000u;
    struct rhema_keyring *kr = open_ok(&p);
    for (int i = 0; i < 3; i++) {
        struct rhema_buf e = enc(kr, "m", 1, NULL);
        free(e.data);
    }
    assert_int_equal(rhema_keyring_rotate(kr, NULL, err), 0);
    for (int i = 0; i < 7; i++) {
        struct rhema_buf e = enc(kr, "m", 1, NULL);
        free(e.data);
    }
    assert_int_equal(rhema_keyring_set_min_decryption_version(kr, 2, err), 0);
    /* not due: the timer hook does nothing */
    assert_int_equal(rhema_keyring_maintain(kr, &rotated, err), 0);
    assert_int_equal(rotated, 0);
    assert_int_equal(rhema_keyring_stats(kr, &st), 0);
    assert_int_equal(st.versions, 2);
    assert_int_equal(st.active_versions, 1);
    assert_int_equal(st.current_version, 2);
    assert_int_equal(st.current_cipher_id, c->cipher_id);
    assert_int_equal(st.min_decryption_version, 2);
    assert_int_equal(st.v[0].version, 1);
    assert_int_equal(st.v[0].encryptions, 3);
    assert_false(st.v[0].decrypts);
    assert_int_equal(st.v[1].version, 2);
    assert_int_equal(st.v[1].encryptions, 7);
    assert_true(st.v[1].decrypts);
    assert_int_equal(st.v[1].limit, c->max_messages_per_key);
    assert_true(st.v[0].created_at_ms >= t0 && st.v[1].created_at_ms >= st.v[0].created_at_ms);
    assert_true(st.last_rotation_ms >= st.v[0].created_at_ms);
    assert_int_equal(st.next_rotation_ms, st.last_rotation_ms + 24u * 3600u * 1000u);
    assert_int_equal(st.last_backup_ms, 0);
    rhema_keyring_stats_release(&st);
    assert_int_equal(rhema_keyring_backup(kr, f->backup, err), 0);
    assert_int_equal(rhema_keyring_stats(kr, &st), 0);
    assert_true(st.last_backup_ms >= t0);
    uint64_t lb = st.last_backup_ms;
    rhema_keyring_stats_release(&st);
    rhema_keyring_close(kr);
    /* exact counts and the backup stamp survive a clean restart */
    p.min_decryption_version = 1;
    p.rotation_enabled = 0;
    kr = open_ok(&p);
    assert_int_equal(rhema_keyring_stats(kr, &st), 0);
    assert_int_equal(st.v[0].encryptions, 3);
    assert_int_equal(st.v[1].encryptions, 7);
    assert_int_equal(st.last_backup_ms, lb);
    assert_int_equal(st.next_rotation_ms, 0); /* rotation off */
    assert_int_equal(st.active_versions, 2);
    rhema_keyring_stats_release(&st);
    rhema_keyring_close(kr);
}


/* Time-based rotation, driven by a clock the test controls. */
static void rotation_on_a_test_clock(void **state)
{
    struct fx *f = *state;
    char err[RHEMA_KEYRING_ERR_MAX];
    struct rhema_keyring_stats st;
    int rotated = -1;
    if (!pick(-1))
        skip();
    struct rhema_keyring_params p = params(f, pick(-1));
    p.rotation_enabled = 1;
    p.rotation_interval_hours = 24;
    struct rhema_keyring *kr = open_ok(&p);
    assert_int_equal(rhema_keyring_stats(kr, &st), 0);
    uint64_t due = st.next_rotation_ms;
    rhema_keyring_stats_release(&st);
    assert_true(due > 0);
    assert_int_equal(rhema_keyring_maintain_at(kr, due - 1, &rotated, err), 0);
    assert_int_equal(rotated, 0);
    assert_int_equal(rhema_keyring_maintain_at(kr, due, &rotated, err), 0);
    assert_int_equal(rotated, 1);
    assert_int_equal(rhema_keyring_stats(kr, &st), 0);
    assert_int_equal(st.current_version, 2);
    assert_int_equal(st.next_rotation_ms, st.last_rotation_ms + 24u * 3600u * 1000u);
    due = st.next_rotation_ms;
    rhema_keyring_stats_release(&st);
    /* the next one waits for its own interval */
    assert_int_equal(rhema_keyring_maintain_at(kr, due - 1, &rotated, err), 0);
    assert_int_equal(rotated, 0);
    assert_int_equal(rhema_keyring_maintain_at(kr, due + 3600000u, &rotated, err), 0);
    assert_int_equal(rotated, 1);
    assert_int_equal(rhema_keyring_stats(kr, &st), 0);
    assert_int_equal(st.current_version, 3);
    rhema_keyring_stats_release(&st);
    rhema_keyring_close(kr);
    /* rotation off: never, however late */
    p.rotation_enabled = 0;
    kr = open_ok(&p);
    assert_int_equal(rhema_keyring_maintain_at(kr, due + 3650ull * 86400000u, &rotated, err), 0);
    assert_int_equal(rotated, 0);
    assert_int_equal(rhema_keyring_stats(kr, &st), 0);
    assert_int_equal(st.current_version, 3);
    rhema_keyring_stats_release(&st);
    rhema_keyring_close(kr);
}

/* backup_at / restore_at confined to a directory: no link followed, nothing replaced. */
static void confined_backup_and_restore(void **state)
{
    struct fx *f = *state;
    char err[RHEMA_KEYRING_ERR_MAX], dir[128], outside[160], name[RHEMA_KEYBACKUP_AUTO_MAX],
        name2[RHEMA_KEYBACKUP_AUTO_MAX], path[256];
    struct stat sb;
    if (!pick(-1))
        skip();
    struct rhema_keyring_params p = params(f, pick(-1));
    struct rhema_keyring *kr = open_ok(&p);
    int dfd;
    snprintf(dir, sizeof dir, "%s/kb/nested", f->dir);
    assert_int_equal(rhema_keybackup_dir_open(dir, &dfd, err), 0);
    assert_int_equal(stat(dir, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0700);
    snprintf(outside, sizeof outside, "%s/victim", f->dir);
    write_file(outside, "victim", 6, 0600);
    assert_int_equal(symlinkat(outside, dfd, "link.bak"), 0);
    /* never through the link, never over it */
    assert_int_equal(rhema_keyring_backup_at(kr, dfd, "link.bak", RHEMA_KEYRING_CONFINED, err),
                     RHEMA_ECONFLICT);
    assert_int_equal(rhema_keyring_restore_at(kr, dfd, "link.bak", RHEMA_KEYRING_CONFINED, err),
                     RHEMA_ECORRUPT);
    assert_int_equal(rhema_keyring_restore_at(kr, dfd, "nosuch.bak", RHEMA_KEYRING_CONFINED, err),
                     RHEMA_ECORRUPT);
    assert_non_null(strstr(err, "no such file"));
    char buf[8] = "";
    int vfd = open(outside, O_RDONLY);
    assert_int_equal(read(vfd, buf, sizeof buf), 6);
    close(vfd);
    assert_memory_equal(buf, "victim", 6);
    /* automatic names: unique, even twice in one millisecond */
    uint64_t t = 1764748800123ull; /* 2025-12-03T08:00:00.123Z */
    assert_int_equal(rhema_keybackup_write_auto(kr, dfd, t, name, err), 0);
    assert_string_equal(name, "keyring-20251203T080000-123Z.bak");
    assert_int_equal(rhema_keybackup_write_auto(kr, dfd, t, name2, err), 0);
    assert_string_equal(name2, "keyring-20251203T080000-123Z-2.bak");
    assert_int_equal(rhema_keyring_restore_at(kr, dfd, name2, RHEMA_KEYRING_CONFINED, err), 0);
    snprintf(path, sizeof path, "%s/%s.tmp", dir, name);
    assert_int_not_equal(access(path, F_OK), 0); /* no temp file left */
    assert_int_equal(rhema_keybackup_newest(dfd), t);
    close(dfd);
    rhema_keyring_close(kr);
}

/* A backup whose version N holds another key than the live N is refused, changing nothing. */
static void restore_refuses_a_conflicting_version(void **state)
{
    struct fx *f = *state;
    char err[RHEMA_KEYRING_ERR_MAX] = "";
    struct rhema_keyring_stats st;
    if (!pick(-1))
        skip();
    struct rhema_keyring_params p = params(f, pick(-1));
    struct rhema_keyring *kr = open_ok(&p);
    assert_int_equal(rhema_keyring_backup(kr, f->backup, err), 0);
    rhema_keyring_close(kr);
    /* another keyring under the same master: its version 1 is another key */
    assert_int_equal(unlink(f->ring), 0);
    kr = open_ok(&p);
    struct rhema_buf e = enc(kr, "mine", 4, NULL);
    assert_int_equal(rhema_keyring_restore(kr, f->backup, err), RHEMA_ECONFLICT);
    assert_non_null(strstr(err, "key version 1 differs"));
    assert_decrypts_to(kr, &e, NULL, "mine", 4);
    assert_int_equal(rhema_keyring_stats(kr, &st), 0);
    assert_int_equal(st.versions, 1);
    rhema_keyring_stats_release(&st);
    rhema_keyring_close(kr);
    free(e.data);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(key_file_mode_0644_refused),
        T(key_file_0600_raw_and_hex),
        T(no_master_source_is_disabled),
        T(passphrase_master),
        T(wrong_master_key_refused),
        T(keyring_file_mode_and_lock),
        T(round_trip_every_cipher),
        T(tampered_and_truncated_envelopes_refused),
        T(rotation_and_min_decryption_version),
        T(cipher_change_rotates_on_open),
        T(rewrap_moves_to_newest),
        T(counter_nonces_unique_across_crash),
        T(counter_nonces_unique_across_threads),
        T(message_limit_refuses_or_rotates),
        T(backup_restore_round_trip),
        T(bad_backup_changes_nothing),
        T(stats_values),
        T(rotation_on_a_test_clock),
        T(confined_backup_and_restore),
        T(restore_refuses_a_conflicting_version),
    };
#undef T
    return cmocka_run_group_tests_name("keyring", tests, group_setup, group_teardown);
}
