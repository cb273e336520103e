/*
 * rhemactl_datadir.c -- the one helper every rhemactl command that reads the
 * daemon's files shares (backup in rhemactl.c, keys in rhemactl_keys.c).
 * Kept in its own file so the fuzz harness that compiles rhemactl_keys.c
 * (tests/fuzz/fuzz_shares.c) links it without rhemactl's main().
 */
#include "rhema_build.h"

#include <stdio.h>
#include <stdlib.h>

#include "config.h"
#include "datadir.h"
#include "rhemactl_keys.h"
#include "util.h"

/*
 * Enter service.data_directory, as rhemad does, so that the configuration's
 * relative paths (the storage's files, backups, the keyring) name the files
 * rhemad uses.  A data directory that does not exist yet (rhemad never ran
 * with this configuration) leaves the working directory, with a warning.
 */
int rhemactl_enter_data_directory(const struct rhema_config *cfg)
{
    char *err = NULL;
    int rc = rhema_data_directory(cfg, RHEMA_DATADIR_USE, NULL, &err);
    if (rc == RHEMA_ENOTFOUND)
        fprintf(stderr, "rhemactl: warning: %s; relative paths are taken from the working "
                        "directory\n", err);
    else if (rc)
        fprintf(stderr, "rhemactl: %s\n", err ? err : "cannot enter the data directory");
    free(err);
    return rc == RHEMA_ENOTFOUND ? 0 : rc;
}
