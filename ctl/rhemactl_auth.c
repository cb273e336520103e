/*
 * rhemactl auth new-key --name NAME [--roles R1,R2] [--expires-at TIME]
 *
 * Makes a key for security.api_keys.keys without a running daemon: the key
 * on line 1 (give it to the client; it is printed nowhere else), and on
 * line 2 the libconfig group to paste into the list, which holds only the
 * key's hash.
 */
#include "rhema_build.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "auth/apikey.h"
#include "auth/authz.h"
#include "rhemactl_auth.h"
#include "util.h"

static void usage(void)
{
    fprintf(stderr, "usage: rhemactl auth new-key --name NAME [--roles R1,R2] "
                    "[--expires-at RFC3339]\n");
}

/* A libconfig string: "..." with \ and " escaped; control characters refused earlier. */
static void print_quoted(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            putchar('\\');
        putchar(*s);
    }
    putchar('"');
}

static int new_key(int argc, char **argv)
{
    static const struct option opts[] = {{"name", required_argument, NULL, 'n'},
                                         {"roles", required_argument, NULL, 'r'},
                                         {"expires-at", required_argument, NULL, 'e'},
                                         {NULL, 0, NULL, 0}};
    const char *name = NULL, *roles = "", *expires = NULL;
    char key[RHEMA_APIKEY_LEN + 1], id[RHEMA_APIKEY_ID_LEN + 1];
    char stored[RHEMA_APIKEY_STORED_LEN + 1];
    uint64_t ms;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'n': name = optarg; break;
        case 'r': roles = optarg; break;
        case 'e': expires = optarg; break;
        default: usage(); return 2;
        }
    }
    if (!name || optind != argc) {
        usage();
        return 2;
    }
    if (!*name || strlen(name) > 128) {
        fprintf(stderr, "rhemactl: --name: 1-128 characters\n");
        return 2;
    }
    for (const char *p = name; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            fprintf(stderr, "rhemactl: --name: no control characters\n");
            return 2;
        }
    if (expires && rhema_time_parse(expires, &ms) != 0) {
        fprintf(stderr, "rhemactl: --expires-at: '%s' is not an RFC 3339 time\n", expires);
        return 2;
    }
    /* each role a role name: the daemon checks that security.roles defines it */
    char *list = strdup(roles), *save = NULL;
    if (!list)
        return 1;
    for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save))
        if (!rhema_id_valid(t) || strlen(t) > RHEMA_AUTHZ_NAME_MAX) {
            fprintf(stderr, "rhemactl: --roles: '%s' is not a role name\n", t);
            free(list);
            return 2;
        }
    rhema_apikey_generate(key, id);
    rhema_apikey_stored(key, RHEMA_APIKEY_LEN, stored);
    printf("%s\n{ name = ", key);
    print_quoted(name);
    printf("; key_hash = \"%s\"; roles = [", stored);
    free(list);
    list = strdup(roles);
    int first = 1;
    for (char *t = list ? strtok_r(list, ",", &save) : NULL; t; t = strtok_r(NULL, ",", &save)) {
        printf("%s \"%s\"", first ? "" : ",", t);
        first = 0;
    }
    printf("%s];", first ? "" : " ");
    if (expires) {
        printf(" expires_at = ");
        print_quoted(expires);
        putchar(';');
    }
    printf(" }\n");
    free(list);
    sodium_memzero(key, sizeof key);
    return fflush(stdout) == 0 ? 0 : 1;
}

int rhemactl_auth(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "new-key") == 0)
        return new_key(argc - 1, argv + 1);
    usage();
    return 2;
}
