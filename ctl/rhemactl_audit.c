/*
 * rhemactl audit -- offline checks of security.audit logs.
 *
 *   rhemactl audit verify FILE...
 *       check the hash chain of FILE and of the files after it, oldest
 *       first (audit.log.2 audit.log.1 audit.log after logrotate): print
 *       the first line that is broken and why, exit 1; or a summary, exit 0.
 *   rhemactl audit hmac --key-file KEYFILE VALUE
 *       the HMAC the log writes for VALUE (a session id, a body), to find
 *       the records about it.
 *
 * Exit status: 0 intact, 1 broken, 2 usage or a file that cannot be read.
 */
#include "rhema_build.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit_chain.h"
#include "rhemactl_audit.h"

static void usage(void)
{
    fprintf(stderr, "usage: rhemactl audit verify FILE...\n"
                    "       rhemactl audit hmac --key-file KEYFILE VALUE\n");
}

/* One file, continuing v.  0 intact, 1 broken (printed), 2 unreadable. */
static int verify_file(struct rhema_audit_verifier *v, const char *path, int last, int *continued)
{
    char why[RHEMA_ERRMSG_MAX];
    char *line = NULL;
    size_t cap = 0;
    unsigned long no = 0;
    ssize_t n;
    int status = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "rhemactl: cannot open %s: %s\n", path, strerror(errno));
        return 2;
    }
    while ((n = getline(&line, &cap, f)) > 0) {
        int complete = line[n - 1] == '\n';
        int cont = 0;
        no++;
        if (rhema_audit_verify_line(v, line, (size_t)(complete ? n - 1 : n), complete, no == 1,
                                    &cont, why) != 0) {
            printf("%s:%lu: broken: %s\n", path, no, why);
            status = 1;
            goto out;
        }
        if (cont)
            *continued = 1;
    }
    if (ferror(f)) {
        fprintf(stderr, "rhemactl: reading %s: %s\n", path, strerror(errno));
        status = 2;
    } else if (no == 0) {
        printf("%s:1: broken: the file is empty; every audit log file begins with an "
               "\"audit.opened\" record\n",
               path);
        status = 1;
    } else if (!last && rhema_audit_verify_file_end(v, why) != 0) {
        printf("%s:%lu: broken: %s\n", path, no, why);
        status = 1;
    }
out:
    free(line);
    fclose(f);
    return status;
}

static int cmd_verify(int argc, char **argv)
{
    struct rhema_audit_verifier v;
    uint64_t first_seq = 0;
    int continued = 0;
    if (argc < 1) {
        usage();
        return 2;
    }
    rhema_audit_verifier_init(&v);
    for (int i = 0; i < argc; i++) {
        int rc = verify_file(&v, argv[i], i == argc - 1, &continued);
        if (rc)
            return rc;
        if (i == 0)
            first_seq = v.chain.seq - v.lines + 1;
    }
    printf("intact: %llu line(s) in %d file(s), seq %llu to %llu\n", (unsigned long long)v.lines,
           argc, (unsigned long long)first_seq, (unsigned long long)v.chain.seq);
    if (continued)
        printf("note: the first file continues an older one (its first line is seq %llu); "
               "give the older files too to check the link\n",
               (unsigned long long)first_seq);
    if (strcmp(v.last_event, "audit.closed") != 0)
        printf("note: the last file does not end with \"audit.closed\": rhemad is still "
               "writing it (or stopped without closing it); lines cut from its end since the "
               "last check cannot be detected\n");
    return 0;
}

static int cmd_hmac(int argc, char **argv)
{
    static const struct option opts[] = {{"key-file", required_argument, NULL, 'k'},
                                         {NULL, 0, NULL, 0}};
    unsigned char key[RHEMA_AUDIT_HMAC_KEY];
    char out[RHEMA_AUDIT_HMAC_TEXT], *err = NULL;
    const char *key_file = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "k:", opts, NULL)) != -1) {
        if (c != 'k') {
            usage();
            return 2;
        }
        key_file = optarg;
    }
    if (!key_file || optind != argc - 1) {
        usage();
        return 2;
    }
    if (rhema_audit_key_load(key_file, 0, key, &err) != 0) {
        fprintf(stderr, "rhemactl: %s\n", err ? err : "cannot read the key");
        free(err);
        return 2;
    }
    rhema_audit_hmac(key, argv[optind], strlen(argv[optind]), out);
    printf("%s\n", out);
    return 0;
}

int rhemactl_audit(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "verify") == 0)
        return cmd_verify(argc - 2, argv + 2);
    if (argc >= 2 && strcmp(argv[1], "hmac") == 0)
        return cmd_hmac(argc - 1, argv + 1);
    usage();
    return 2;
}
