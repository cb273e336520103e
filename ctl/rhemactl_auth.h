/* rhemactl auth -- API keys made offline, for the configuration file (rhemactl_auth.c). */
#ifndef RHEMA_CTL_RHEMACTL_AUTH_H
#define RHEMA_CTL_RHEMACTL_AUTH_H

/* argv[0] is "auth"; returns the exit status. */
int rhemactl_auth(int argc, char **argv);

#endif /* RHEMA_CTL_RHEMACTL_AUTH_H */
