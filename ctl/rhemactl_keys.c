/*
 * rhemactl keys -- the master key's administration, offline:
 *
 *   rhemactl keys split --shares N --threshold K [-c CONFIG] [-o k=v]...
 *       print N Shamir shares (libgfshare) of the master key, one per line;
 *       any K of them rebuild it
 *   rhemactl keys recover --out FILE [--force] [SHARE_FILE...]
 *       rebuild the master key from shares (files, or lines on stdin) and
 *       write it as a 0600 key file; fewer than K shares, shares of other
 *       splits, or a corrupted share are refused
 *   (split and recover need libgfshare at build time; without it
 *   (RHEMA_HAVE_GFSHARE undefined) they fail with a message that says so)
 *   rhemactl keys verify ARCHIVE [-c CONFIG] [-o k=v]...
 *       check a keyring backup completely under the configured master key
 *   rhemactl keys restore ARCHIVE [-c CONFIG] [-o k=v]...
 *       verify it, then replace the keyring (refused while rhemad holds it)
 *
 * A share is one line:
 *   rhema-share-v1:<set>:<k>:<n>:<x>:<share hex>:<fingerprint>:<check>
 * set: 8 random bytes naming the split (shares of different splits never
 * mix); fingerprint: 8 bytes of BLAKE2b of the master, checked after
 * recovery, so a wrong combination can never produce a key silently;
 * check: 4 bytes of BLAKE2b of the rest of the line, catching a mistyped
 * or damaged share before it is used.
 */
#include "rhema_build.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef RHEMA_HAVE_GFSHARE
#include <libgfshare.h>
#endif
#include <sodium.h>

#include "config.h"
#include "datadir.h"
#include "keyring.h"
#include "rhemactl_keys.h"

/* The master key of the configured keyring (key file or passphrase). */
static struct rhema_master *load_master(const struct rhema_config *cfg)
{
    const char *kf = "", *pe = "", *path = "keyring";
    char err[RHEMA_KEYRING_ERR_MAX];
    struct rhema_master *m = NULL;
    rhema_config_get_string(cfg, "advanced_features.key_management.key_file", &kf);
    rhema_config_get_string(cfg, "advanced_features.key_management.passphrase_env", &pe);
    rhema_config_get_string(cfg, "advanced_features.key_management.keyring_path", &path);
    if (!*kf && !*pe) {
        fprintf(stderr, "rhemactl: no master key configured (advanced_features.key_management."
                        "key_file or passphrase_env)\n");
        return NULL;
    }
    int rc = *kf ? rhema_master_from_key_file(kf, &m, err)
                 : rhema_master_for_file(path, kf, pe, &m, err);
    if (rc) {
        fprintf(stderr, "rhemactl: %s\n", err);
        return NULL;
    }
    return m;
}

#ifdef RHEMA_HAVE_GFSHARE
#define SHARE_PREFIX "rhema-share-v1"
#define MAX_SHARES 255

static void fill_rand(unsigned char *buf, unsigned int n) { randombytes_buf(buf, n); }

static void hex(const unsigned char *b, size_t n, char *out)
{
    sodium_bin2hex(out, n * 2 + 1, b, n);
}

static int unhex(const char *s, size_t want, unsigned char *out)
{
    size_t got = 0;
    if (strlen(s) != want * 2 ||
        sodium_hex2bin(out, want, s, want * 2, NULL, &got, NULL) != 0 || got != want)
        return -1;
    return 0;
}

static void fingerprint(const unsigned char *master, unsigned char fp[8])
{
    crypto_generichash(fp, 8, master, RHEMA_MASTER_KEY_BYTES, (const unsigned char *)"rhema-fp",
                       8);
}

static void line_check(const char *body, unsigned char ck[4])
{
    crypto_generichash(ck, 4, (const unsigned char *)body, strlen(body), NULL, 0);
}

static int cmd_split(const struct rhema_config *cfg, int n, int k)
{
    unsigned char sharenrs[MAX_SHARES], set[8], fp[8], share[RHEMA_MASTER_KEY_BYTES];
    if (n < 2 || n > MAX_SHARES || k < 2 || k > n) {
        fprintf(stderr, "rhemactl: need 2 <= --threshold <= --shares <= %d\n", MAX_SHARES);
        return 2;
    }
    struct rhema_master *m = load_master(cfg);
    if (!m)
        return 1;
    unsigned char *secret = sodium_malloc(RHEMA_MASTER_KEY_BYTES);
    if (!secret) {
        rhema_master_free(m);
        return 1;
    }
    memcpy(secret, rhema_master_bytes(m), RHEMA_MASTER_KEY_BYTES);
    fingerprint(secret, fp);
    randombytes_buf(set, sizeof set);
    for (int i = 0; i < n; i++)
        sharenrs[i] = (unsigned char)(i + 1);
    gfshare_ctx *g = gfshare_ctx_init_enc(sharenrs, (unsigned)n, (unsigned char)k,
                                          RHEMA_MASTER_KEY_BYTES);
    if (!g) {
        sodium_free(secret);
        rhema_master_free(m);
        fprintf(stderr, "rhemactl: libgfshare refused the parameters\n");
        return 1;
    }
    gfshare_ctx_enc_setsecret(g, secret);
    for (int i = 0; i < n; i++) {
        char set_hex[17], share_hex[RHEMA_MASTER_KEY_BYTES * 2 + 1], fp_hex[17], ck_hex[9];
        char body[256];
        unsigned char ck[4];
        gfshare_ctx_enc_getshare(g, (unsigned char)i, share);
        hex(set, 8, set_hex);
        hex(share, sizeof share, share_hex);
        hex(fp, 8, fp_hex);
        snprintf(body, sizeof body, "%s:%s:%d:%d:%d:%s:%s", SHARE_PREFIX, set_hex, k, n,
                 sharenrs[i], share_hex, fp_hex);
        line_check(body, ck);
        hex(ck, 4, ck_hex);
        printf("%s:%s\n", body, ck_hex);
    }
    sodium_memzero(share, sizeof share);
    gfshare_ctx_free(g);
    sodium_free(secret);
    rhema_master_free(m);
    fprintf(stderr, "rhemactl: %d shares printed; any %d of them rebuild the master key. "
                    "Store each in a different place.\n",
            n, k);
    return 0;
}

struct share {
    unsigned char set[8], fp[8], data[RHEMA_MASTER_KEY_BYTES];
    int k, n, x;
};

/* Parse one share line; 0 or -1 with a reason in why. */
static int parse_share(char *line, struct share *s, const char **why)
{
    char *f[8], *save = NULL, body[256];
    unsigned char ck[4], want[4];
    size_t len = strcspn(line, "\r\n");
    line[len] = '\0';
    char *last = strrchr(line, ':');
    if (!last || (size_t)(last - line) >= sizeof body) {
        *why = "not a share line";
        return -1;
    }
    memcpy(body, line, (size_t)(last - line));
    body[last - line] = '\0';
    if (unhex(last + 1, 4, want) != 0) {
        *why = "bad check field";
        return -1;
    }
    line_check(body, ck);
    if (sodium_memcmp(ck, want, 4) != 0) {
        *why = "the share is damaged (its check does not match)";
        return -1;
    }
    int i = 0;
    for (char *t = strtok_r(body, ":", &save); t && i < 8; t = strtok_r(NULL, ":", &save))
        f[i++] = t;
    if (i != 7 || strcmp(f[0], SHARE_PREFIX) != 0) {
        *why = "not a rhema-share-v1 line";
        return -1;
    }
    s->k = atoi(f[2]);
    s->n = atoi(f[3]);
    s->x = atoi(f[4]);
    if (unhex(f[1], 8, s->set) || unhex(f[5], RHEMA_MASTER_KEY_BYTES, s->data) ||
        unhex(f[6], 8, s->fp) || s->k < 2 || s->k > s->n || s->n > MAX_SHARES || s->x < 1 ||
        s->x > s->n) {
        *why = "malformed fields";
        return -1;
    }
    return 0;
}

static int cmd_recover(int argc, char **argv, const char *out, int force)
{
    struct share *sh = calloc(MAX_SHARES, sizeof *sh);
    int count = 0, status = 1;
    char line[512];
    const char *why = NULL;
    unsigned char *secret = NULL;
    if (!sh)
        return 1;
    for (int a = 0; a < (argc ? argc : 1); a++) {
        FILE *fp = argc ? fopen(argv[a], "r") : stdin;
        if (!fp) {
            fprintf(stderr, "rhemactl: %s: %s\n", argv[a], strerror(errno));
            goto done;
        }
        while (fgets(line, sizeof line, fp)) {
            if (strspn(line, " \t\r\n") == strlen(line))
                continue;
            if (count == MAX_SHARES || parse_share(line, &sh[count], &why) != 0) {
                fprintf(stderr, "rhemactl: share %d refused: %s\n", count + 1,
                        why ? why : "too many shares");
                if (fp != stdin)
                    fclose(fp);
                goto done;
            }
            for (int j = 0; j < count; j++) {
                if (memcmp(sh[j].set, sh[count].set, 8) != 0 || sh[j].k != sh[count].k) {
                    fprintf(stderr, "rhemactl: share %d comes from another split\n", count + 1);
                    if (fp != stdin)
                        fclose(fp);
                    goto done;
                }
                if (sh[j].x == sh[count].x) {
                    fprintf(stderr, "rhemactl: share %d repeats share number %d\n", count + 1,
                            sh[j].x);
                    if (fp != stdin)
                        fclose(fp);
                    goto done;
                }
            }
            count++;
        }
        if (fp != stdin)
            fclose(fp);
    }
    if (count == 0 || count < sh[0].k) {
        fprintf(stderr, "rhemactl: %d share(s) given; this split needs %d\n", count,
                count ? sh[0].k : 2);
        goto done;
    }
    unsigned char nrs[MAX_SHARES], fp[8];
    for (int i = 0; i < count; i++)
        nrs[i] = (unsigned char)sh[i].x;
    gfshare_ctx *g = gfshare_ctx_init_dec(nrs, (unsigned)count, RHEMA_MASTER_KEY_BYTES);
    secret = sodium_malloc(RHEMA_MASTER_KEY_BYTES);
    if (!g || !secret) {
        if (g)
            gfshare_ctx_free(g);
        goto done;
    }
    for (int i = 0; i < count; i++)
        gfshare_ctx_dec_giveshare(g, (unsigned char)i, sh[i].data);
    gfshare_ctx_dec_extract(g, secret);
    gfshare_ctx_free(g);
    fingerprint(secret, fp);
    if (sodium_memcmp(fp, sh[0].fp, 8) != 0) {
        fprintf(stderr, "rhemactl: the shares do not rebuild the master key (a share is wrong)\n");
        goto done;
    }
    int fd = open(out, O_WRONLY | O_CREAT | O_CLOEXEC | (force ? O_TRUNC : O_EXCL), 0600);
    if (fd < 0) {
        fprintf(stderr, "rhemactl: %s: %s%s\n", out, strerror(errno),
                errno == EEXIST ? " (use --force to overwrite)" : "");
        goto done;
    }
    if (fchmod(fd, 0600) != 0 || write(fd, secret, RHEMA_MASTER_KEY_BYTES) != RHEMA_MASTER_KEY_BYTES ||
        fsync(fd) != 0) {
        fprintf(stderr, "rhemactl: writing %s: %s\n", out, strerror(errno));
        close(fd);
        goto done;
    }
    close(fd);
    fprintf(stderr, "rhemactl: master key rebuilt from %d shares and written to %s (0600)\n",
            count, out);
    status = 0;
done:
    if (secret)
        sodium_free(secret);
    sodium_memzero(sh, MAX_SHARES * sizeof *sh);
    free(sh);
    return status;
}

#else
/* The Shamir subcommands, in a build without libgfshare. */
static int no_gfshare(const char *sub)
{
    fprintf(stderr, "rhemactl: keys %s: this rhemactl was built without libgfshare, which "
                    "Shamir key shares need (install libgfshare and rebuild)\n",
            sub);
    return 1;
}
#endif /* RHEMA_HAVE_GFSHARE */

static int cmd_archive(const struct rhema_config *cfg, const char *archive, int restore)
{
    char err[RHEMA_KEYRING_ERR_MAX];
    const char *path = "keyring";
    struct rhema_master *m = load_master(cfg);
    if (!m)
        return 1;
    rhema_config_get_string(cfg, "advanced_features.key_management.keyring_path", &path);
    struct rhema_keyring_backup_info info;
    int rc = rhema_keyring_verify_backup(archive, m, &info, err);
    if (rc == 0 && restore)
        rc = rhema_keyring_restore_file(m, archive, path, err);
    rhema_master_free(m);
    if (rc) {
        fprintf(stderr, "rhemactl: %s: %s\n", archive, err);
        return 1;
    }
    printf("%s: verified: %zu key version(s), newest %u\n", archive, info.versions,
           info.newest_version);
    if (restore)
        printf("keyring %s restored; rhemad adds a fresh key version when it next opens it\n",
               path);
    return 0;
}

int rhemactl_keys(int argc, char **argv)
{
    static const struct option longs[] = {{"shares", required_argument, NULL, 'n'},
                                          {"threshold", required_argument, NULL, 'k'},
                                          {"out", required_argument, NULL, 'O'},
                                          {"force", no_argument, NULL, 'F'},
                                          {NULL, 0, NULL, 0}};
    static const char *overrides[128];
    const char *config_file = NULL, *out = NULL;
    size_t n_over = 0;
    int c, n = 0, k = 0, force = 0, status = 2;
    if (argc < 2) {
        fprintf(stderr, "usage: rhemactl keys split|recover|verify|restore ...\n");
        return 2;
    }
    const char *sub = argv[1];
#ifdef RHEMA_HAVE_GFSHARE
    /* libgfshare draws coefficients and wipes buffers with this: libsodium, never random() */
    gfshare_fill_rand = fill_rand;
#endif
    optind = 2;
    while ((c = getopt_long(argc, argv, "c:o:", longs, NULL)) != -1) {
        switch (c) {
        case 'c': config_file = optarg; break;
        case 'o':
            if (n_over < 128)
                overrides[n_over++] = optarg;
            break;
        case 'n': n = atoi(optarg); break;
        case 'k': k = atoi(optarg); break;
        case 'O': out = optarg; break;
        case 'F': force = 1; break;
        default: return 2;
        }
    }
#ifndef RHEMA_HAVE_GFSHARE
    (void)n, (void)k, (void)out, (void)force; /* options of split and recover */
    if (strcmp(sub, "split") == 0 || strcmp(sub, "recover") == 0)
        return no_gfshare(sub);
#else
    if (strcmp(sub, "recover") == 0) {
        if (!out) {
            fprintf(stderr, "rhemactl: keys recover needs --out FILE\n");
            return 2;
        }
        return cmd_recover(argc - optind, argv + optind, out, force);
    }
#endif
    struct rhema_config cfg = {0};
    char *err = NULL;
    /* the archive as named here, before entering the data directory */
    char *archive = optind < argc ? rhema_path_absolute(argv[optind]) : NULL;
    if (optind < argc && !archive) {
        fprintf(stderr, "rhemactl: out of memory\n");
        return 1;
    }
    if (rhema_config_load(&cfg, config_file, overrides, n_over, NULL, &err) != 0) {
        fprintf(stderr, "rhemactl: configuration error:\n%s\n", err ? err : "?");
        free(err);
        free(archive);
        return 1;
    }
    if (rhemactl_enter_data_directory(&cfg) != 0) {
        rhema_config_release(&cfg);
        free(archive);
        return 1;
    }
#ifdef RHEMA_HAVE_GFSHARE
    if (strcmp(sub, "split") == 0)
        status = cmd_split(&cfg, n, k);
    else
#endif
    if ((strcmp(sub, "verify") == 0 || strcmp(sub, "restore") == 0) && optind < argc)
        status = cmd_archive(&cfg, archive, strcmp(sub, "restore") == 0);
    else
        fprintf(stderr, "usage: rhemactl keys split --shares N --threshold K | recover --out FILE "
                        "[SHARES...] | verify ARCHIVE | restore ARCHIVE\n");
    rhema_config_release(&cfg);
    free(archive);
    return status;
}
