/*
 * fixture -- temporary files, plugins and the keyring fixture of the
 * harnesses (fixture.h).
 */
#include "rhema_build.h"

#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "fixture.h"
#include "log.h"

int fuzz_write_file(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    const unsigned char *p = data;
    if (fd < 0)
        return -1;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n <= 0) {
            close(fd);
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return close(fd);
}

static char tmpdir[256];

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

static void tmpdir_remove(void)
{
    if (tmpdir[0])
        nftw(tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

const char *fuzz_tmpdir(void)
{
    if (tmpdir[0])
        return tmpdir;
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/rhema-fuzz-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpdir)) {
        tmpdir[0] = '\0';
        return NULL;
    }
    atexit(tmpdir_remove);
    return tmpdir;
}

const char *fuzz_plugin_dir(void)
{
    const char *dir = getenv("RHEMA_PLUGIN_DIR");
    return dir && *dir ? dir : "plugins/.libs";
}

const char *fuzz_fixture_dir(void)
{
    const char *dir = getenv("RHEMA_FUZZ_FIXTURES");
    return dir && *dir ? dir : FUZZ_FIXTURES;
}

void fuzz_load_plugins(struct rhema_plugin_registry *reg, uint32_t kind,
                       const char *const *names)
{
    for (; *names; names++) {
        const struct rhema_loaded_plugin *p;
        char *err = NULL;
        if (rhema_plugin_load(reg, *names, fuzz_plugin_dir(), kind, &p, &err) != 0)
            fprintf(stderr, "fuzz: plugin %s not loaded: %s\n", *names, err ? err : "?");
        free(err);
    }
}

static const char *const cipher_names[] = {"aes256gcm", "chacha20poly1305", "xchacha20poly1305",
                                           NULL};

/* Copy a fixture file into the temporary directory (mode 0600: a key file must be). */
static int copy_fixture(const char *name, const char *to)
{
    char from[512];
    unsigned char buf[1 << 16];
    snprintf(from, sizeof from, "%s/%s", fuzz_fixture_dir(), name);
    FILE *f = fopen(from, "rb");
    if (!f) {
        fprintf(stderr, "fuzz: %s: cannot open (run tests/fuzz/make-seeds.sh?)\n", from);
        return -1;
    }
    size_t n = fread(buf, 1, sizeof buf, f);
    int bad = ferror(f) || !feof(f);
    fclose(f);
    if (bad || fuzz_write_file(to, buf, n) != 0 || chmod(to, 0600) != 0)
        return -1;
    return 0;
}

int fuzz_keyring_open(struct fuzz_keyring *k, int create)
{
    char err[RHEMA_KEYRING_ERR_MAX];
    const char *dir = create ? fuzz_fixture_dir() : fuzz_tmpdir();
    memset(k, 0, sizeof *k);
    rhema_log_set_level(RHEMA_LOG_ERROR); /* no notice per key version */
    if (!dir || sodium_init() < 0 || rhema_plugins_new(&k->reg) != 0)
        return -1;
    fuzz_load_plugins(k->reg, RHEMA_KIND_CIPHER, cipher_names);
    rhema_cipher_table_fill(&k->table, k->reg);
    snprintf(k->key_file, sizeof k->key_file, "%s/master.key", dir);
    snprintf(k->ring, sizeof k->ring, "%s/keyring", dir);
    if (!create && (copy_fixture("master.key", k->key_file) || copy_fixture("keyring", k->ring)))
        return -1;
    if (create) {
        unsigned char key[RHEMA_MASTER_KEY_BYTES];
        randombytes_buf(key, sizeof key);
        unlink(k->ring);
        if (fuzz_write_file(k->key_file, key, sizeof key) || chmod(k->key_file, 0600))
            return -1;
    }
    if (rhema_master_from_key_file(k->key_file, &k->master, err) != 0) {
        fprintf(stderr, "fuzz: %s\n", err);
        return -1;
    }
    return 0;
}

/* The cipher plugin of that name, or NULL when it is not loaded. */
const struct rhema_cipher_plugin *fuzz_cipher(const struct fuzz_keyring *k, const char *name)
{
    const struct rhema_loaded_plugin *p = rhema_plugin_find(k->reg, RHEMA_KIND_CIPHER, name);
    return p ? &p->vt.cipher : NULL;
}

int fuzz_keyring_start(struct fuzz_keyring *k, const struct rhema_cipher_plugin *c)
{
    char err[RHEMA_KEYRING_ERR_MAX];
    struct rhema_keyring_params p;
    memset(&p, 0, sizeof p);
    p.path = k->ring;
    p.master = k->master;
    p.cipher = c;
    p.ciphers = &k->table;
    p.min_decryption_version = 1;
    if (!c || rhema_keyring_open(&p, &k->kr, err) != 0) {
        fprintf(stderr, "fuzz: keyring %s: %s\n", k->ring, c ? err : "no cipher plugin");
        return -1;
    }
    return 0;
}

void fuzz_keyring_close(struct fuzz_keyring *k)
{
    rhema_keyring_close(k->kr);
    k->kr = NULL;
}
