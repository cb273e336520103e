/*
 * datadir -- service.data_directory (rhemad.conf(5), rhemad(8)).
 */
#ifndef RHEMA_CORE_DATADIR_H
#define RHEMA_CORE_DATADIR_H

#include "config.h"

/*
 * path made absolute against the working directory (a malloc'd copy), so
 * that it means the same after a chdir into the data directory.  NULL when
 * path is NULL or memory runs out.
 */
char *rhema_path_absolute(const char *path);

enum rhema_datadir_mode {
    RHEMA_DATADIR_ENTER, /* rhemad: create it when missing, and change into it */
    RHEMA_DATADIR_CHECK, /* rhemad -t: create nothing; say whether it can be used */
    RHEMA_DATADIR_USE,   /* rhemactl: change into it; RHEMA_ENOTFOUND when missing */
};

/*
 * Resolve service.data_directory (relative: to the working directory) and
 * act on it as mode says.  *abs_out (when not NULL) gets its absolute path
 * (malloc'd).  0, or a negative code and *err.
 */
int rhema_data_directory(const struct rhema_config *cfg, enum rhema_datadir_mode mode,
                         char **abs_out, char **err);

#endif /* RHEMA_CORE_DATADIR_H */
