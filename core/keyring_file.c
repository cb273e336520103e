/*
 * keyring_file -- the keyring's file I/O (keyring_internal.h): whole-file
 * reads that never block on a FIFO, atomic writes (temp file, fsync,
 * rename, directory fsync), optionally confined to a directory, and the
 * lock that keeps a keyring to one process.
 */
#include "rhema_build.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "keyring.h"
#include "keyring_internal.h"
#include "util.h"

static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

/* Create the parent directory (one level, 0700) when missing; errors surface later. */
static void ensure_parent(const char *path)
{
    char *d = dir_of(path);
    if (d) {
        if (mkdir(d, 0700) != 0 && errno != EEXIST)
            errno = 0;
        free(d);
    }
}

/*
 * Read a whole file: `name` relative to dirfd (AT_FDCWD: a path).  With
 * RHEMA_KEYRING_CONFINED the last component must not be a symbolic link.
 * RHEMA_ENOTFOUND when it does not exist; a FIFO or device never blocks.
 */
int kr_read_file_at(int dirfd, const char *name, unsigned flags, size_t max, unsigned char **out,
                    size_t *len, char *err)
{
    int oflags =
        O_RDONLY | O_CLOEXEC | O_NONBLOCK | (flags & RHEMA_KEYRING_CONFINED ? O_NOFOLLOW : 0);
    int fd = openat(dirfd, name, oflags);
    struct stat sb;
    unsigned char *buf = NULL;
    size_t got = 0;
    if (fd < 0) {
        if (errno == ENOENT)
            return rhema_set_errbuf(err, RHEMA_ENOTFOUND, "%s: no such file", name);
        return rhema_set_errbuf(err, RHEMA_EIO, "open %s: %s", name, strerror(errno));
    }
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return rhema_set_errbuf(err, RHEMA_EIO, "%s: not a regular file", name);
    }
    if ((uint64_t)sb.st_size > max) {
        close(fd);
        return rhema_set_errbuf(err, RHEMA_ECORRUPT,
                                "%s: %lld bytes is larger than any keyring (%zu)", name,
                                (long long)sb.st_size, max);
    }
    buf = malloc((size_t)sb.st_size + 1);
    if (!buf) {
        close(fd);
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory reading %s", name);
    }
    while (got < (size_t)sb.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)sb.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            free(buf);
            close(fd);
            return rhema_set_errbuf(err, RHEMA_EIO, "read %s: %s", name, strerror(e));
        }
        got += (size_t)r;
    }
    close(fd);
    *out = buf;
    *len = got;
    return 0;
}

int kr_read_file(const char *path, size_t max, unsigned char **out, size_t *len, char *err)
{
    return kr_read_file_at(AT_FDCWD, path, 0, max, out, len, err);
}

/*
 * Write a file atomically, mode 0600: "<name>.tmp" (write, fsync), then
 * rename over name, then fsync the directory.  `name` is relative to dirfd
 * (AT_FDCWD: a path, whose parent is created one level deep).  With
 * RHEMA_KEYRING_CONFINED an existing name is never replaced (RHEMA_ECONFLICT: the
 * temp file is hard-linked to name, which fails when it exists) and
 * neither name may be a symbolic link, so nothing outside dirfd is touched.
 */
int kr_write_atomic_at(int dirfd, const char *name, unsigned flags, const void *data, size_t len,
                       char *err)
{
    char *tmp = NULL, *dir = NULL;
    int fd = -1, dfd = -1, rc = RHEMA_EIO, made = 0;
    size_t off = 0;
    int confined = (flags & RHEMA_KEYRING_CONFINED) != 0;
    if (asprintf(&tmp, "%s.tmp", name) < 0)
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    if (dirfd == AT_FDCWD)
        ensure_parent(name);
    if (confined && unlinkat(dirfd, tmp, 0) != 0 && errno != ENOENT) {
        rhema_set_errbuf(err, RHEMA_EIO, "remove a stale %s: %s", tmp, strerror(errno));
        goto out;
    }
    fd = openat(dirfd, tmp,
                O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW | (confined ? O_EXCL : 0),
                0600);
    if (fd < 0) {
        rhema_set_errbuf(err, RHEMA_EIO, "create %s: %s", tmp, strerror(errno));
        goto out;
    }
    made = 1;
    if (fchmod(fd, 0600) != 0) {
        rhema_set_errbuf(err, RHEMA_EIO, "chmod %s: %s", tmp, strerror(errno));
        goto out;
    }
    while (off < len) {
        ssize_t w = write(fd, (const unsigned char *)data + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            rhema_set_errbuf(err, RHEMA_EIO, "write %s: %s", tmp,
                             w < 0 ? strerror(errno) : "short write");
            goto out;
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0) {
        rhema_set_errbuf(err, RHEMA_EIO, "fsync %s: %s", tmp, strerror(errno));
        goto out;
    }
    if (close(fd) != 0) {
        fd = -1;
        rhema_set_errbuf(err, RHEMA_EIO, "close %s: %s", tmp, strerror(errno));
        goto out;
    }
    fd = -1;
    if (confined) {
        if (linkat(dirfd, tmp, dirfd, name, 0) != 0) {
            if (errno == EEXIST)
                rc = rhema_set_errbuf(err, RHEMA_ECONFLICT, "%s already exists", name);
            else
                rhema_set_errbuf(err, RHEMA_EIO, "link %s -> %s: %s", tmp, name, strerror(errno));
            goto out;
        }
        unlinkat(dirfd, tmp, 0); /* name holds the data now */
        made = 0;
    } else if (renameat(dirfd, tmp, dirfd, name) != 0) {
        rhema_set_errbuf(err, RHEMA_EIO, "rename %s -> %s: %s", tmp, name, strerror(errno));
        goto out;
    } else {
        made = 0;
    }
    int sync_fd = dirfd;
    if (dirfd == AT_FDCWD)
        sync_fd = dfd = (dir = dir_of(name)) ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (sync_fd >= 0 && fsync(sync_fd) != 0) {
        rhema_set_errbuf(err, RHEMA_EIO, "fsync the directory of %s: %s", name, strerror(errno));
        goto out; /* renamed, but not known durable */
    }
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    if (dfd >= 0)
        close(dfd);
    if (made)
        unlinkat(dirfd, tmp, 0);
    free(dir);
    free(tmp);
    return rc;
}

int kr_write_atomic(const char *path, const void *data, size_t len, char *err)
{
    return kr_write_atomic_at(AT_FDCWD, path, 0, data, len, err);
}

/* An exclusive lock on "<path>.lock": one process per keyring. */
int kr_lock_keyring(const char *path, int *fd_out, char **lock_path_out, char *err)
{
    char *lp = NULL;
    int fd;
    if (asprintf(&lp, "%s.lock", path) < 0)
        return rhema_set_errbuf(err, RHEMA_ENOMEM, "out of memory");
    ensure_parent(path);
    fd = open(lp, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        int e = errno;
        rhema_set_errbuf(err, RHEMA_EIO, "open %s: %s", lp, strerror(e));
        free(lp);
        return RHEMA_EIO;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        close(fd);
        if (e == EWOULDBLOCK)
            rhema_set_errbuf(err, RHEMA_ECONFLICT,
                             "keyring %s is in use by another process (%s is locked)", path, lp);
        else
            rhema_set_errbuf(err, RHEMA_EIO, "lock %s: %s", lp, strerror(e));
        free(lp);
        return e == EWOULDBLOCK ? RHEMA_ECONFLICT : RHEMA_EIO;
    }
    *fd_out = fd;
    *lock_path_out = lp;
    return 0;
}
