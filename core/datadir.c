/*
 * datadir -- service.data_directory, the directory every relative path of
 * the configuration is relative to; shared by rhemad and rhemactl, so that
 * both read and write the same files.
 */
#include "rhema_build.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "datadir.h"
#include "util.h"

/*
 * path made absolute against the working directory (a malloc'd copy), so
 * that it means the same after rhemad enters its data directory.  NULL
 * when path is NULL or memory runs out.
 */
char *rhema_path_absolute(const char *path)
{
    char cwd[PATH_MAX], *out = NULL;
    if (!path)
        return NULL;
    if (path[0] == '/' || !*path || !getcwd(cwd, sizeof cwd))
        return strdup(path);
    if (asprintf(&out, "%s/%s", cwd, path) < 0)
        return NULL;
    return out;
}

/* mkdir -p: the directory itself 0750, missing parents 0755.  0 or errno. */
static int make_directory(const char *path)
{
    char *dir = strdup(path);
    int e = 0;
    if (!dir)
        return ENOMEM;
    for (char *p = dir + 1; e == 0; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char saved = *p;
        *p = '\0';
        if (mkdir(dir, saved ? 0755 : 0750) != 0 && errno != EEXIST)
            e = errno;
        *p = saved;
        if (!saved)
            break;
    }
    free(dir);
    return e;
}

/*
 * service.data_directory: rhemad's working directory.  Every relative path
 * of the configuration (the storage's files, backups, the keyring, the log
 * file, the pidfile, plugins.directory) is relative to it, as in BIND's
 * `directory`; a relative data_directory is relative to where rhemad was
 * started (see datadir.h for the modes).  *abs_out (when not NULL) gets its absolute
 * path (malloc'd).
 */
int rhema_data_directory(const struct rhema_config *cfg, enum rhema_datadir_mode mode,
                         char **abs_out, char **err)
{
    const char *dd = "";
    struct stat sb;
    int rc = 0, e;
    rhema_config_get_string(cfg, "service.data_directory", &dd);
    char *abs = rhema_path_absolute(dd);
    if (!abs)
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    if (!*abs) {
        rc = rhema_set_error(err, RHEMA_EINVAL, "service.data_directory is empty");
        goto out;
    }
    if (stat(abs, &sb) == 0 && !S_ISDIR(sb.st_mode)) {
        rc = rhema_set_error(err, RHEMA_EINVAL, "service.data_directory %s: not a directory",
                             abs);
        goto out;
    }
    if (mode == RHEMA_DATADIR_USE && access(abs, F_OK) != 0) {
        rc = rhema_set_error(err, RHEMA_ENOTFOUND,
                             "service.data_directory %s: %s (rhemad creates it when it starts)",
                             abs, strerror(errno));
        goto out;
    }
    if (mode == RHEMA_DATADIR_USE && chdir(abs) != 0) {
        rc = rhema_set_error(err, RHEMA_EIO, "service.data_directory %s: %s", abs,
                             strerror(errno));
        goto out;
    }
    if (mode != RHEMA_DATADIR_ENTER) {
        if (mode == RHEMA_DATADIR_CHECK && access(abs, F_OK) == 0 &&
            access(abs, R_OK | W_OK | X_OK) != 0)
            rc = rhema_set_error(err, RHEMA_EINVAL, "service.data_directory %s: %s", abs,
                                 strerror(errno));
        goto out;
    }
    if ((e = make_directory(abs)) != 0 || (chdir(abs) != 0 && (e = errno) != 0)) {
        rc = rhema_set_error(err, RHEMA_EIO, "service.data_directory %s: %s", abs, strerror(e));
        goto out;
    }
out:
    if (rc == 0 && abs_out)
        *abs_out = abs;
    else
        free(abs);
    return rc;
}

