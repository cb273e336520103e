/* rhemactl dict train -- zstd dictionaries from sample messages (rhemactl_dict.c). */
#ifndef RHEMA_CORE_RHEMACTL_DICT_H
#define RHEMA_CORE_RHEMACTL_DICT_H

/* argv[0] is "dict"; returns the exit status. */
int rhemactl_dict(int argc, char **argv);

#endif /* RHEMA_CORE_RHEMACTL_DICT_H */
