/* rhemactl keys -- master key shares, keyring backup verify/restore (rhemactl_keys.c). */
#ifndef RHEMA_CORE_RHEMACTL_KEYS_H
#define RHEMA_CORE_RHEMACTL_KEYS_H

/* argv[0] is "keys"; returns the exit status. */
int rhemactl_keys(int argc, char **argv);

/* argv[0] is "keys", argv[1] "init": a new master key file (rhemactl_keyinit.c). */
int rhemactl_keys_init(int argc, char **argv);

/* Enter the configuration's service.data_directory (rhemactl.c); 0 or an error printed. */
struct rhema_config;
int rhemactl_enter_data_directory(const struct rhema_config *cfg);

#endif /* RHEMA_CORE_RHEMACTL_KEYS_H */
