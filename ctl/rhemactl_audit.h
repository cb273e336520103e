/* rhemactl audit -- verify the hash chain of audit logs, HMAC a value (rhemactl_audit.c). */
#ifndef RHEMA_CTL_RHEMACTL_AUDIT_H
#define RHEMA_CTL_RHEMACTL_AUDIT_H

/* argv[0] is "audit"; returns the exit status. */
int rhemactl_audit(int argc, char **argv);

#endif /* RHEMA_CTL_RHEMACTL_AUDIT_H */
