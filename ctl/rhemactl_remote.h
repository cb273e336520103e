/* rhemactl's commands against a running rhemad, over HTTP (rhemactl_remote.c). */
#ifndef RHEMA_CTL_RHEMACTL_REMOTE_H
#define RHEMA_CTL_RHEMACTL_REMOTE_H

/* 1 when argv[1] of rhemactl names a command that talks to the daemon. */
int rhemactl_is_remote_command(const char *cmd);
/* 1 for the `keys` verbs that act on the daemon's keyring (rotate, stats, backup...). */
int rhemactl_is_remote_keys_verb(const char *verb);
/* The whole command line (argv[0] the program); returns the exit status (0, 1, 2, 3). */
int rhemactl_remote(int argc, char **argv);

#endif /* RHEMA_CTL_RHEMACTL_REMOTE_H */
