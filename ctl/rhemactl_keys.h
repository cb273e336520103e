/* rhemactl keys -- master key shares, keyring backup verify/restore (rhemactl_keys.c). */
#ifndef RHEMA_CORE_RHEMACTL_KEYS_H
#define RHEMA_CORE_RHEMACTL_KEYS_H

/* argv[0] is "keys"; returns the exit status. */
int rhemactl_keys(int argc, char **argv);

#endif /* RHEMA_CORE_RHEMACTL_KEYS_H */
