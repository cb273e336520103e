/*
 * keybackup -- the key backup directory (see keybackup.h).
 */
#include "rhema_build.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "keybackup.h"
#include "util.h"

#define MS_PER_DAY (86400000ull)
#define AUTO_PREFIX "keyring-"
#define SUFFIX ".bak"

int rhema_keybackup_name_check(const char *name, size_t len, const char **why)
{
    static const char shape[] = "expected a file name of 1-128 characters [A-Za-z0-9._-], not "
                                "starting with '.', ending in '.bak'";
    *why = shape;
    if (len == 0 || len > RHEMA_KEYBACKUP_NAME_MAX || strlen(name) != len)
        return -1; /* empty, too long, or a NUL inside */
    if (name[0] == '.' || len <= sizeof SUFFIX - 1 ||
        strcmp(name + len - (sizeof SUFFIX - 1), SUFFIX) != 0)
        return -1;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return -1;
    }
    *why = NULL;
    return 0;
}

int rhema_keybackup_dir_open(const char *dir, int *fd, char err[RHEMA_KEYRING_ERR_MAX])
{
    char buf[4096];
    if (!dir || !dir[0])
        return rhema_set_errbuf(err, RHEMA_EINVAL, "no backup directory");
    if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf)
        return rhema_set_errbuf(err, RHEMA_EINVAL, "backup directory %s: path too long", dir);
    for (char *p = buf + 1; *p; p++) { /* mkdir -p; a failure shows at the open below */
        if (*p == '/') {
            *p = '\0';
            (void)mkdir(buf, 0700);
            *p = '/';
        }
    }
    (void)mkdir(buf, 0700);
    int d = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (d < 0)
        return rhema_set_errbuf(err, RHEMA_EIO, "backup directory %s: %s", dir, strerror(errno));
    *fd = d;
    return 0;
}

void rhema_keybackup_auto_name(uint64_t now_ms, char out[RHEMA_KEYBACKUP_AUTO_MAX])
{
    time_t t = (time_t)(now_ms / 1000u);
    struct tm tm;
    char stamp[24];
    gmtime_r(&t, &tm);
    strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%S", &tm);
    snprintf(out, RHEMA_KEYBACKUP_AUTO_MAX, AUTO_PREFIX "%s-%03uZ" SUFFIX, stamp,
             (unsigned)(now_ms % 1000u));
}

/* n decimal digits at s, into *v; 0 or -1. */
static int digits(const char *s, int n, int *v)
{
    *v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        *v = *v * 10 + (s[i] - '0');
    }
    return 0;
}

int rhema_keybackup_auto_parse(const char *name, uint64_t *ms)
{
    /* keyring-YYYYMMDDTHHMMSS-mmmZ[-N].bak */
    const size_t pl = sizeof AUTO_PREFIX - 1;
    struct tm tm;
    int y, mo, d, h, mi, s, milli, n;
    if (strncmp(name, AUTO_PREFIX, pl) != 0)
        return -1;
    const char *p = name + pl;
    if (digits(p, 4, &y) || digits(p + 4, 2, &mo) || digits(p + 6, 2, &d) || p[8] != 'T' ||
        digits(p + 9, 2, &h) || digits(p + 11, 2, &mi) || digits(p + 13, 2, &s) ||
        p[15] != '-' || digits(p + 16, 3, &milli) || p[19] != 'Z')
        return -1;
    p += 20;
    if (*p == '-') { /* a collision suffix: 2..999 */
        size_t k = strspn(p + 1, "0123456789");
        if (k < 1 || k > 3 || p[1] == '0' || digits(p + 1, (int)k, &n))
            return -1;
        p += 1 + k;
    }
    if (strcmp(p, SUFFIX) != 0 || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 ||
        s > 60)
        return -1;
    memset(&tm, 0, sizeof tm);
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = s;
    time_t t = timegm(&tm);
    if (t < 0)
        return -1;
    *ms = (uint64_t)t * 1000u + (uint64_t)milli;
    return 0;
}

int rhema_keybackup_write_auto(struct rhema_keyring *kr, int dirfd, uint64_t now_ms,
                               char name_out[RHEMA_KEYBACKUP_AUTO_MAX],
                               char err[RHEMA_KEYRING_ERR_MAX])
{
    char base[RHEMA_KEYBACKUP_AUTO_MAX], name[RHEMA_KEYBACKUP_AUTO_MAX];
    rhema_keybackup_auto_name(now_ms, base);
    for (int i = 1; i < 1000; i++) {
        if (i == 1)
            snprintf(name, sizeof name, "%s", base);
        else
            snprintf(name, sizeof name, "%.*s-%d" SUFFIX, (int)(strlen(base) - (sizeof SUFFIX - 1)),
                     base, i);
        int rc = rhema_keyring_backup_at(kr, dirfd, name, RHEMA_KEYRING_CONFINED, err);
        if (rc != RHEMA_ECONFLICT) {
            if (rc == 0)
                snprintf(name_out, RHEMA_KEYBACKUP_AUTO_MAX, "%s", name);
            return rc;
        }
    }
    return rhema_set_errbuf(err, RHEMA_EIO, "too many key backups named %s", base);
}

struct auto_file {
    char name[RHEMA_KEYBACKUP_AUTO_MAX];
    uint64_t ms;
};

/* Newest first; equal times by name, so "-2" sorts after the first. */
static int newest_first(const void *a, const void *b)
{
    const struct auto_file *x = a, *y = b;
    if (x->ms != y->ms)
        return x->ms < y->ms ? 1 : -1;
    return -strcmp(x->name, y->name);
}

/* The automatic backups of dirfd, newest first.  *v is malloc'd. */
static int auto_list(int dirfd, struct auto_file **v, size_t *n)
{
    int fd = dup(dirfd);
    DIR *d;
    struct dirent *de;
    size_t cnt = 0, cap = 0;
    struct auto_file *a = NULL;
    *v = NULL;
    *n = 0;
    if (fd < 0 || !(d = fdopendir(fd))) {
        if (fd >= 0)
            close(fd);
        return RHEMA_EIO;
    }
    rewinddir(d);
    while ((de = readdir(d))) {
        struct auto_file f;
        struct stat st;
        if (strlen(de->d_name) >= sizeof f.name || rhema_keybackup_auto_parse(de->d_name, &f.ms))
            continue;
        if (fstatat(dirfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
            continue;
        snprintf(f.name, sizeof f.name, "%s", de->d_name);
        if (cnt == cap) {
            size_t nc = cap ? cap * 2 : 16;
            struct auto_file *na = realloc(a, nc * sizeof *a);
            if (!na) {
                free(a);
                closedir(d);
                return RHEMA_ENOMEM;
            }
            a = na;
            cap = nc;
        }
        a[cnt++] = f;
    }
    closedir(d);
    if (cnt > 1)
        qsort(a, cnt, sizeof *a, newest_first);
    *v = a;
    *n = cnt;
    return 0;
}

int rhema_keybackup_prune(int dirfd, int64_t keep_count, int64_t keep_days, uint64_t now_ms,
                          size_t *pruned, char err[RHEMA_KEYRING_ERR_MAX])
{
    struct auto_file *v;
    size_t n, count = 0;
    uint64_t keep_ms = keep_days > 0 ? (uint64_t)keep_days * MS_PER_DAY : 0;
    int rc = auto_list(dirfd, &v, &n), first = 0;
    if (pruned)
        *pruned = 0;
    if (rc)
        return rhema_set_errbuf(err, rc, "listing the key backups: %s",
                                rc == RHEMA_ENOMEM ? "out of memory" : strerror(errno));
    for (size_t i = 1; i < n; i++) { /* v[0], the newest, stays */
        int too_many = keep_count > 0 && i >= (size_t)keep_count;
        int too_old = keep_ms && v[i].ms + keep_ms < now_ms;
        if (!too_many && !too_old)
            continue;
        if (unlinkat(dirfd, v[i].name, 0) != 0) {
            if (!first)
                first =
                    rhema_set_errbuf(err, RHEMA_EIO, "remove %s: %s", v[i].name, strerror(errno));
            continue;
        }
        count++;
    }
    free(v);
    if (pruned)
        *pruned = count;
    return first;
}

uint64_t rhema_keybackup_newest(int dirfd)
{
    struct auto_file *v;
    size_t n;
    uint64_t ms = 0;
    if (auto_list(dirfd, &v, &n) == 0 && n)
        ms = v[0].ms;
    free(v);
    return ms;
}
