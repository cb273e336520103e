/*
 * rhemactl keys init --out FILE [--force] -- a new master key file for
 * advanced_features.key_management.key_file: 32 bytes from libsodium's
 * CSPRNG, written as 64 hex characters and a newline (the form
 * rhema_master_from_key_file() reads besides 32 raw bytes), mode 0600.
 *
 * The key is written into a temporary file beside FILE (O_CREAT|O_EXCL,
 * 0600, fsync), which then takes FILE's name: link(2) without --force, so
 * an existing FILE is never replaced and a reader never sees half a key;
 * rename(2) with --force.  The directory is fsync'ed after.
 */
#include "rhema_build.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "datadir.h"
#include "keyring.h"
#include "rhemactl_keys.h"
#include "util.h"

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int rhemactl_keys_init(int argc, char **argv)
{
    static const struct option longs[] = {{"out", required_argument, NULL, 'O'},
                                          {"force", no_argument, NULL, 'F'},
                                          {NULL, 0, NULL, 0}};
    const char *out = NULL;
    int c, force = 0, status = 1, fd = -1;
    char tmp[4096] = "";
    optind = 2;
    while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        if (c == 'O')
            out = optarg;
        else if (c == 'F')
            force = 1;
        else
            return 2;
    }
    if (!out || !out[0] || optind != argc) {
        fprintf(stderr, "usage: rhemactl keys init --out FILE [--force]\n");
        return 2;
    }
    char *abs = rhema_path_absolute(out);
    char *dircopy = abs ? strdup(abs) : NULL;
    unsigned char *key = sodium_malloc(RHEMA_MASTER_KEY_BYTES);
    char *hexkey = sodium_malloc(2 * RHEMA_MASTER_KEY_BYTES + 2);
    if (!abs || !dircopy || !key || !hexkey) {
        fprintf(stderr, "rhemactl: out of memory\n");
        goto done;
    }
    const char *dir = dirname(dircopy);
    struct stat sb;
    if (!force && lstat(abs, &sb) == 0) {
        fprintf(stderr, "rhemactl: %s exists: refusing to replace a key file (a key lost is "
                        "every envelope and record under it lost); --force replaces it\n", abs);
        goto done;
    }
    if (force && lstat(abs, &sb) == 0 && !S_ISREG(sb.st_mode)) {
        fprintf(stderr, "rhemactl: %s exists and is not a regular file\n", abs);
        goto done;
    }
    randombytes_buf(key, RHEMA_MASTER_KEY_BYTES);
    sodium_bin2hex(hexkey, 2 * RHEMA_MASTER_KEY_BYTES + 1, key, RHEMA_MASTER_KEY_BYTES);
    hexkey[2 * RHEMA_MASTER_KEY_BYTES] = '\n';
    hexkey[2 * RHEMA_MASTER_KEY_BYTES + 1] = '\0';
    unsigned char suffix[6];
    char sx[13];
    randombytes_buf(suffix, sizeof suffix);
    sodium_bin2hex(sx, sizeof sx, suffix, sizeof suffix);
    if ((size_t)snprintf(tmp, sizeof tmp, "%s/.%s.%s.tmp", dir, strrchr(abs, '/') + 1, sx) >=
        sizeof tmp) {
        fprintf(stderr, "rhemactl: %s: the name is too long\n", abs);
        tmp[0] = '\0';
        goto done;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        fprintf(stderr, "rhemactl: cannot create a file in %s: %s\n", dir, strerror(errno));
        tmp[0] = '\0';
        goto done;
    }
    if (fchmod(fd, 0600) != 0 || write_all(fd, hexkey, 2 * RHEMA_MASTER_KEY_BYTES + 1) != 0 ||
        fsync(fd) != 0) {
        fprintf(stderr, "rhemactl: writing %s: %s\n", tmp, strerror(errno));
        goto done;
    }
    close(fd);
    fd = -1;
    if (force ? rename(tmp, abs) != 0 : link(tmp, abs) != 0) {
        fprintf(stderr, "rhemactl: %s: %s%s\n", abs, strerror(errno),
                errno == EEXIST ? " (it appeared meanwhile; --force replaces it)" : "");
        goto done;
    }
    if (!force)
        unlink(tmp);
    tmp[0] = '\0';
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        if (fsync(dfd) != 0)
            fprintf(stderr, "rhemactl: warning: fsync %s: %s\n", dir, strerror(errno));
        close(dfd);
    }
    printf("wrote a new master key to %s (mode 0600, 64 hex characters)\n"
           "Keep a copy somewhere safe (or split it: rhemactl keys split); without it\n"
           "nothing encrypted under it can be read again.  Turn key management on in\n"
           "rhemad.conf (rhemad must run as the file's owner):\n"
           "\n"
           "advanced_features: {\n"
           "  key_management: {\n"
           "    key_file = \"%s\";\n"
           "  };\n"
           "};\n",
           abs, abs);
    status = 0;
done:
    if (fd >= 0)
        close(fd);
    if (tmp[0])
        unlink(tmp);
    if (key)
        sodium_free(key);
    if (hexkey)
        sodium_free(hexkey);
    free(dircopy);
    free(abs);
    return status;
}
