/*
 * bench/cipher_bench.c -- the cipher plugins through rhema's loader
 * (core/plugin.c) and the keyring's envelope (core/keyring.c) against raw
 * libsodium.  A benchmark, not a test: built and run by bench/run-codecs.sh,
 * never by `make check`.
 *
 * For each cipher plugin that loads on this machine (aes256gcm needs AES-NI
 * and PCLMUL; it is skipped with the loader's reason otherwise), on messages
 * of 64 B, 1 KiB and 64 KiB:
 *   rhema:  rhema_keyring_encrypt / rhema_keyring_decrypt on a keyring made
 *           for the run in a temporary directory (a 32-byte key file, mode
 *           0600; rotation off; no caller associated data), freeing each
 *           output as a caller would;
 *   raw:    crypto_aead_<cipher>_encrypt / _decrypt with a fixed key and an
 *           incrementing nonce (little-endian counter), into a reused
 *           buffer, with associated data as long as the envelope header the
 *           keyring authenticates (8 bytes + the nonce), so both sides do the
 *           same cryptographic work.
 * Target: rhema/raw >= 0.90 at 1 KiB (encrypt and decrypt).
 *
 * MB/s is 10^6 bytes of plaintext per second.  Timing as in
 * bench/codec_bench.c: passes over a batch of about 1 MiB of messages, -r
 * cells of at least -t seconds a side, in alternating slices of at least -S
 * seconds; the best slice of each side counts.
 *
 * Output lines as bench/codec_bench.c's:
 *   ROW cipher <name> <size> <op> <rhema MB/s> <raw MB/s> <speed ratio> - -
 *       <target or -> <PASS|FAIL|->
 * Exit status: targets missed; 99 when the benchmark could not be set up.
 *
 * usage: cipher_bench -P plugin_dir [-t seconds] [-r reps] [-S slice] [-d workdir]
 *                     [-c cipher] [-z size] [-O op] [-x 1|2]
 *   -c, -z, -O: only that cipher, size, operation (encrypt or decrypt); -x 1: only the rhema side,
 *   -x 2: only the raw side (for perf record).
 */
#include "rhema_build.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "codec.h"
#include "config.h"
#include "keyring.h"
#include "plugin.h"

static double cell_seconds = 0.5;
static int reps = 3;
static int missed, targets;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef int (*pass_fn)(void *arg); /* one pass over the batch; 0 or an error */

static double slice_seconds = 0.02;
static int only_side; /* for profiling: 1 runs only the rhema side, 2 only the raw side */

/* One slice: passes over `bytes` bytes for at least slice_seconds; MB/s, *t the time. */
static double slice(pass_fn fn, void *arg, size_t bytes, double *t)
{
    double t0 = now();
    size_t passes = 0;
    do {
        if (fn(arg) != 0)
            return -1;
        passes++;
        *t = now() - t0;
    } while (*t < slice_seconds);
    return (double)passes * (double)bytes / *t / 1e6;
}

/*
 * Best MB/s of a (rhema) and b (raw): `reps` cells of at least cell_seconds
 * of each side, made of short slices that alternate between the sides, so
 * that a burst of load from elsewhere on the machine hits both alike; the
 * best slice of each side counts.
 */
static int pair(pass_fn a, void *aa, pass_fn b, void *ba, size_t bytes, double *ra, double *rb)
{
    *ra = *rb = 0;
    if ((only_side != 2 && a(aa) != 0) || (only_side != 1 && b(ba) != 0)) /* warm-up, check */
        return -1;
    for (int i = 0; i < reps; i++) {
        double ta = 0, tb = 0, t;
        while ((only_side != 2 && ta < cell_seconds) || (only_side != 1 && tb < cell_seconds)) {
            if (only_side != 2) {
                double x = slice(a, aa, bytes, &t);
                if (x < 0)
                    return -1;
                ta += t;
                if (x > *ra)
                    *ra = x;
            }
            if (only_side != 1) {
                double y = slice(b, ba, bytes, &t);
                if (y < 0)
                    return -1;
                tb += t;
                if (y > *rb)
                    *rb = y;
            }
        }
    }
    if (*ra == 0) /* a profiling run of one side */
        *ra = 1;
    if (*rb == 0)
        *rb = 1;
    return 0;
}

/* ---- raw libsodium ---- */

typedef int (*aead_enc)(unsigned char *c, unsigned long long *clen, const unsigned char *m,
                        unsigned long long mlen, const unsigned char *ad, unsigned long long adlen,
                        const unsigned char *nsec, const unsigned char *npub,
                        const unsigned char *k);
typedef int (*aead_dec)(unsigned char *m, unsigned long long *mlen, unsigned char *nsec,
                        const unsigned char *c, unsigned long long clen, const unsigned char *ad,
                        unsigned long long adlen, const unsigned char *npub,
                        const unsigned char *k);

static const struct {
    const char *name;
    aead_enc enc;
    aead_dec dec;
    unsigned nonce;
} ciphers[] = {
    {"aes256gcm", crypto_aead_aes256gcm_encrypt, crypto_aead_aes256gcm_decrypt, 12},
    {"chacha20poly1305", crypto_aead_chacha20poly1305_ietf_encrypt,
     crypto_aead_chacha20poly1305_ietf_decrypt, 12},
    {"xchacha20poly1305", crypto_aead_xchacha20poly1305_ietf_encrypt,
     crypto_aead_xchacha20poly1305_ietf_decrypt, 24},
};

struct job {
    size_t n, size;      /* messages of `size` bytes */
    unsigned char **msg; /* plaintexts */
    /* rhema */
    struct rhema_keyring *kr;
    struct rhema_buf *env; /* envelopes, for decryption */
    /* raw */
    aead_enc enc;
    aead_dec dec;
    unsigned nonce_bytes;
    unsigned char key[32];
    unsigned char ad[64]; /* as long as the envelope header */
    size_t adlen;
    uint64_t ctr;
    unsigned char **ct;    /* raw ciphertexts, for decryption */
    unsigned char *nonces; /* theirs, n * nonce_bytes */
    unsigned char *buf;    /* reused output */
    size_t sink;
};

static void nonce_of(unsigned char *out, unsigned bytes, uint64_t ctr)
{
    memset(out, 0, bytes);
    for (unsigned i = 0; i < 8; i++)
        out[i] = (unsigned char)(ctr >> (8 * i));
}

static int pass_rhema_encrypt(void *arg)
{
    struct job *j = arg;
    char err[RHEMA_KEYRING_ERR_MAX];
    /* into a reused buffer, as the raw side encrypts into one */
    static _Thread_local unsigned char *buf;
    static _Thread_local size_t cap;
    if (cap < j->size + 128) {
        free(buf);
        cap = j->size + 128;
        buf = malloc(cap);
    }
    for (size_t i = 0; i < j->n; i++) {
        size_t n;
        if (rhema_keyring_encrypt_into(j->kr, j->msg[i], j->size, NULL, 0, buf, cap, &n, err) != 0) {
            fprintf(stderr, "cipher_bench: rhema_keyring_encrypt_into: %s\n", err);
            return -1;
        }
        j->sink += buf[n - 1];
    }
    return 0;
}

static int pass_rhema_decrypt(void *arg)
{
    struct job *j = arg;
    char err[RHEMA_KEYRING_ERR_MAX];
    for (size_t i = 0; i < j->n; i++) {
        struct rhema_buf out;
        if (rhema_keyring_decrypt(j->kr, j->env[i].data, j->env[i].len, NULL, 0, &out, err) != 0) {
            fprintf(stderr, "cipher_bench: rhema_keyring_decrypt: %s\n", err);
            return -1;
        }
        j->sink += out.data[0];
        free(out.data);
    }
    return 0;
}

static int pass_raw_encrypt(void *arg)
{
    struct job *j = arg;
    unsigned char nonce[24];
    for (size_t i = 0; i < j->n; i++) {
        unsigned long long clen;
        nonce_of(nonce, j->nonce_bytes, j->ctr++);
        if (j->enc(j->buf, &clen, j->msg[i], j->size, j->ad, j->adlen, NULL, nonce, j->key) != 0)
            return -1;
        j->sink += j->buf[clen - 1];
    }
    return 0;
}

static int pass_raw_decrypt(void *arg)
{
    struct job *j = arg;
    for (size_t i = 0; i < j->n; i++) {
        unsigned long long mlen;
        if (j->dec(j->buf, &mlen, NULL, j->ct[i], j->size + 16, j->ad, j->adlen,
                   j->nonces + i * j->nonce_bytes, j->key) != 0)
            return -1;
        j->sink += j->buf[0];
    }
    return 0;
}

static const char *verdict(double v, double target)
{
    targets++;
    if (v >= target)
        return "PASS";
    missed++;
    return "FAIL";
}

static const char *only_cipher, *only_op = "";
static size_t only_size;

static int bench_cipher(const struct rhema_loaded_plugin *p, size_t ci, const char *workdir)
{
    static const size_t sizes[] = {64, 1024, 65536};
    char kf[4096], krp[4096], err[RHEMA_KEYRING_ERR_MAX];
    unsigned char mk[32];
    snprintf(kf, sizeof kf, "%s/%s.key", workdir, p->name);
    snprintf(krp, sizeof krp, "%s/%s.keyring", workdir, p->name);
    randombytes_buf(mk, sizeof mk);
    int fd = open(kf, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, mk, sizeof mk) != (ssize_t)sizeof mk || close(fd) != 0) {
        fprintf(stderr, "cipher_bench: cannot write %s: %s\n", kf, strerror(errno));
        return -1;
    }
    struct rhema_keyring_params prm = {
        .path = krp,
        .key_file = kf,
        .cipher = &p->vt.cipher,
        .min_decryption_version = 1,
        .rotation_enabled = 0,
    };
    struct rhema_keyring *kr;
    if (rhema_keyring_open(&prm, &kr, err) != 0) {
        fprintf(stderr, "cipher_bench: %s: rhema_keyring_open: %s\n", p->name, err);
        return -1;
    }
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        struct job j = {0};
        if (only_size && sizes[s] != only_size)
            continue;
        j.size = sizes[s];
        j.n = (1u << 20) / j.size;
        j.kr = kr;
        j.enc = ciphers[ci].enc;
        j.dec = ciphers[ci].dec;
        j.nonce_bytes = ciphers[ci].nonce;
        j.adlen = RHEMA_ENVELOPE_FIXED + p->vt.cipher.nonce_bytes;
        randombytes_buf(j.key, sizeof j.key);
        randombytes_buf(j.ad, sizeof j.ad);
        j.msg = calloc(j.n, sizeof *j.msg);
        j.env = calloc(j.n, sizeof *j.env);
        j.ct = calloc(j.n, sizeof *j.ct);
        j.nonces = malloc(j.n * j.nonce_bytes);
        j.buf = malloc(j.size + 64);
        for (size_t i = 0; i < j.n; i++) {
            struct rhema_buf pt;
            unsigned long long clen;
            j.msg[i] = malloc(j.size);
            randombytes_buf(j.msg[i], j.size);
            if (rhema_keyring_encrypt(kr, j.msg[i], j.size, NULL, 0, &j.env[i], err) != 0 ||
                rhema_keyring_decrypt(kr, j.env[i].data, j.env[i].len, NULL, 0, &pt, err) != 0 ||
                pt.len != j.size || memcmp(pt.data, j.msg[i], j.size) != 0) {
                fprintf(stderr, "cipher_bench: %s: envelope does not round-trip: %s\n", p->name,
                        err);
                return -1;
            }
            free(pt.data);
            j.ct[i] = malloc(j.size + 16);
            nonce_of(j.nonces + i * j.nonce_bytes, j.nonce_bytes, j.ctr++);
            if (j.enc(j.ct[i], &clen, j.msg[i], j.size, j.ad, j.adlen, NULL,
                      j.nonces + i * j.nonce_bytes, j.key) != 0 ||
                clen != j.size + 16) {
                fprintf(stderr, "cipher_bench: %s: raw encryption failed\n", p->name);
                return -1;
            }
        }
        double target = j.size == 1024 ? 0.90 : -1, ra, rr;
        if (strcmp(only_op, "decrypt") != 0) {
            if (pair(pass_rhema_encrypt, &j, pass_raw_encrypt, &j, j.n * j.size, &ra, &rr) != 0)
                return -1;
            printf("ROW cipher %s %zu encrypt %.1f %.1f %.3f - - %s %s\n", p->name, j.size, ra, rr,
                   ra / rr, target > 0 ? "0.90" : "-", target > 0 ? verdict(ra / rr, target) : "-");
        }
        if (strcmp(only_op, "encrypt") != 0) {
            if (pair(pass_rhema_decrypt, &j, pass_raw_decrypt, &j, j.n * j.size, &ra, &rr) != 0)
                return -1;
            printf("ROW cipher %s %zu decrypt %.1f %.1f %.3f - - %s %s\n", p->name, j.size, ra, rr,
                   ra / rr, target > 0 ? "0.90" : "-", target > 0 ? verdict(ra / rr, target) : "-");
        }
        fflush(stdout);
        for (size_t i = 0; i < j.n; i++) {
            free(j.msg[i]);
            free(j.env[i].data);
            free(j.ct[i]);
        }
        free(j.msg);
        free(j.env);
        free(j.ct);
        free(j.nonces);
        free(j.buf);
    }
    rhema_keyring_close(kr);
    unlink(kf);
    unlink(krp);
    char lock[4200];
    snprintf(lock, sizeof lock, "%s.lock", krp);
    unlink(lock);
    return 0;
}

int main(int argc, char **argv)
{
    const char *plugin_dir = NULL, *workdir = NULL;
    char tmpl[] = "/tmp/cipher_bench.XXXXXX";
    int opt;
    while ((opt = getopt(argc, argv, "P:t:r:S:d:c:z:x:O:")) != -1) {
        switch (opt) {
        case 'S': slice_seconds = atof(optarg); break;
        case 'c': only_cipher = optarg; break;
        case 'z': only_size = (size_t)atol(optarg); break;
        case 'x': only_side = atoi(optarg); break;
        case 'O': only_op = optarg; break;
        case 'P': plugin_dir = optarg; break;
        case 't': cell_seconds = atof(optarg); break;
        case 'r': reps = atoi(optarg); break;
        case 'd': workdir = optarg; break;
        default:
            fprintf(stderr, "usage: cipher_bench -P plugin_dir [-t seconds] [-r reps] [-S slice] "
                            "[-d dir] [-c cipher] [-z size] [-O op] [-x 1|2]\n");
            return 99;
        }
    }
    if (!plugin_dir)
        plugin_dir = getenv("RHEMA_PLUGIN_DIR");
    if (!plugin_dir) {
        fprintf(stderr, "cipher_bench: -P plugin_dir (or RHEMA_PLUGIN_DIR) is required\n");
        return 99;
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "cipher_bench: sodium_init failed\n");
        return 99;
    }
    int own_dir = 0;
    if (!workdir) {
        if (!(workdir = mkdtemp(tmpl))) {
            perror("cipher_bench: mkdtemp");
            return 99;
        }
        own_dir = 1;
    }
    struct rhema_plugin_registry *reg;
    char *err = NULL;
    if (rhema_plugins_new(&reg) != 0)
        return 99;
    printf("# cipher_bench: %d cells of >= %.2f s a side in alternating slices of >= %.3f s, "
           "best slice; libsodium %s; MB/s = 10^6 plaintext bytes/s\n",
           reps, cell_seconds, slice_seconds, sodium_version_string());
    int rc = 0, ran = 0;
    for (size_t c = 0; c < sizeof ciphers / sizeof ciphers[0] && rc == 0; c++) {
        const struct rhema_loaded_plugin *p;
        if (only_cipher && strcmp(only_cipher, ciphers[c].name) != 0)
            continue;
        if (rhema_plugin_load(reg, ciphers[c].name, plugin_dir, RHEMA_KIND_CIPHER, &p, &err) != 0) {
            printf("# %s: skipped: %s\n", ciphers[c].name, err);
            free(err);
            err = NULL;
            continue;
        }
        if (bench_cipher(p, c, workdir) != 0)
            rc = 99;
        ran++;
    }
    rhema_plugins_free(reg);
    if (own_dir)
        rmdir(workdir);
    if (rc == 0 && ran == 0) {
        fprintf(stderr, "cipher_bench: no cipher plugin loaded from %s\n", plugin_dir);
        rc = 99;
    }
    printf("# targets: %d, missed: %d\n", targets, missed);
    return rc ? rc : missed;
}
