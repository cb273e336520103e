/*
 * rhemactl -- administration that should not travel over HTTP.
 *
 *   rhemactl plugin check FILE.so [-o section.key=value]... [-c FILE]
 *       load FILE.so through the real loader (every ABI check of rhemad)
 *       and run the conformance suite of its kind, printing each check.
 *   rhemactl plugin info FILE.so
 *       load it and print its header.
 *   rhemactl backup create [-c CONFIG] [-o k=v]... [-P PLUGINDIR] [-d DIR]
 *       open the configured backend and write a backup of it into DIR
 *       (default persistence.backup_directory); print its path.
 *   rhemactl backup list [-c CONFIG] [-o k=v]... [-d DIR]
 *       the backups in DIR (every backend), newest first, size and age.
 *   rhemactl backup restore FILE [-c CONFIG] [-o k=v]... [-P PLUGINDIR] [--force]
 *       replace the configured backend's content with FILE.  Refused while
 *       rhemad runs on this configuration: its pidfile (service.pidfile)
 *       is flock-locked by a live daemon.  When service.pidfile is not set
 *       nothing can be checked, so --force is needed.  rhemactl holds the
 *       pidfile's lock during the restore, so a daemon cannot start
 *       meanwhile.  Limitation: a daemon started with another pidfile (-p)
 *       or another configuration that points at the same data is not seen;
 *       --force skips the check altogether.
 *   rhemactl audit verify FILE... | audit hmac --key-file KEYFILE VALUE
 *       the hash chain of security.audit logs (rhemactl_audit.c).
 *   rhemactl version
 */
#include "rhema_build.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include <sodium.h>

#include "balancer_suite.h"
#include "cipher_suite.h"
#include "compress_suite.h"
#include "config.h"
#include "datadir.h"
#include "log.h"
#include "maintenance.h"
#include "plugin.h"
#include "rhemactl_audit.h"
#include "rhemactl_auth.h"
#include "rhemactl_keys.h"
#include "rhemactl_remote.h"
#include "storage_suite.h"
#ifdef RHEMA_HAVE_ZSTD
#include "rhemactl_dict.h"
#endif
#include "util.h"

static void usage(FILE *to)
{
    fprintf(to, "usage: rhemactl plugin check FILE.so [-c CONFIG] [-o section.key=value]...\n"
                "       rhemactl plugin info FILE.so\n"
                "       rhemactl backup create [-c CONFIG] [-o k=v]... [-P PLUGINDIR] [-d DIR]\n"
                "       rhemactl backup list [-c CONFIG] [-o k=v]... [-d DIR]\n"
                "       rhemactl backup restore FILE [-c CONFIG] [-o k=v]... [-P PLUGINDIR] "
                "[--force]\n"
                "       rhemactl keys init --out FILE [--force]\n"
                "       rhemactl keys split --shares N --threshold K [-c CONFIG] [-o k=v]...\n"
                "       rhemactl keys recover --out FILE [--force] [SHARE_FILE...]\n"
                "       rhemactl keys verify|restore ARCHIVE [-c CONFIG] [-o k=v]...\n"
                "       rhemactl audit verify FILE...\n"
                "       rhemactl audit hmac --key-file KEYFILE VALUE\n"
                "       rhemactl auth new-key --name NAME [--roles R1,R2] [--expires-at TIME]\n"
                "       rhemactl dict train --out FILE [--size BYTES] [--lines] SAMPLE...\n"
                "       rhemactl version\n"
                "against a running rhemad (--addr HOST:PORT|URL, --key KEY, --format table|json,\n"
                "--timeout S, --cacert FILE, --cert FILE, --key-file FILE; rhemactl(1)):\n"
                "       rhemactl status | cluster [nodes|leader] | alerts | metrics\n"
                "       rhemactl sessions list [--status S] [--participant ID] [--limit N] "
                "[--cursor C]\n"
                "       rhemactl sessions get|delete ID [--if-version N]\n"
                "       rhemactl sessions put ID [--data JSON|-] [--topic T] [--participants A,B] "
                "[--status S] [--if-version N]\n"
                "       rhemactl agents list [--status S] [--capability C] | stats\n"
                "       rhemactl agents get|delete|heartbeat|transitions ID\n"
                "       rhemactl agents put ID [--data JSON|-] [--name N] [--status S] "
                "[--if-version N]\n"
                "       rhemactl services list [--name N] | get|deregister ID\n"
                "       rhemactl services register ID [--data JSON|-] [--name N] [--address H:P] "
                "[--weight W]\n"
                "       rhemactl keys rotate|stats | keys backup [NAME] | keys restore-backup NAME\n");
}

static void report(void *ctx, const char *test, int ok, const char *detail)
{
    const char *plugin = ctx;
    if (ok == RHEMA_CONF_PASS)
        printf("PASS  %s.%s\n", plugin, test);
    else if (ok == RHEMA_CONF_SKIP)
        printf("SKIP  %s.%s (%s)\n", plugin, test, detail);
    else
        printf("FAIL  %s.%s: %s\n", plugin, test, detail);
    fflush(stdout);
}

static int cmd_plugin(int argc, char **argv)
{
    const char *config_file = NULL;
    static const char *overrides[128];
    size_t n_overrides = 0;
    int c, status = 1;
    if (argc < 3) {
        usage(stderr);
        return 2;
    }
    const char *sub = argv[1], *file = argv[2];
    optind = 3;
    while ((c = getopt(argc, argv, "c:o:")) != -1) {
        if (c == 'c')
            config_file = optarg;
        else if (c == 'o' && n_overrides < 128)
            overrides[n_overrides++] = optarg;
        else {
            usage(stderr);
            return 2;
        }
    }
    if (strcmp(sub, "check") != 0 && strcmp(sub, "info") != 0) {
        usage(stderr);
        return 2;
    }
    struct rhema_config cfg = {0};
    struct rhema_plugin_registry *reg = NULL;
    const struct rhema_loaded_plugin *p;
    char *err = NULL;
    if (rhema_config_load(&cfg, config_file, overrides, n_overrides, NULL, &err) != 0) {
        fprintf(stderr, "rhemactl: configuration error:\n%s\n", err ? err : "?");
        goto out;
    }
    rhema_log_open(RHEMA_LOG_WARN, RHEMA_LOG_FORMAT_TEXT, NULL, NULL);
    if (rhema_plugins_new(&reg) != 0)
        goto out;
    char path[4096];
    snprintf(path, sizeof path, "%s%s", strchr(file, '/') ? "" : "./", file);
    if (rhema_plugin_load(reg, path, NULL, 0, &p, &err) != 0) {
        fprintf(stderr, "rhemactl: %s\n", err ? err : "cannot load plugin");
        goto out;
    }
    printf("plugin %s: kind %s, version %s, abi %d.%u, %s\n", p->name,
           rhema_plugin_kind_name(p->kind), p->version, RHEMA_ABI_MAJOR, p->abi_minor,
           p->description);
    if (strcmp(sub, "info") == 0) {
        status = 0;
        goto out;
    }
    struct rhema_conf_totals totals = {0};
    const struct rhema_cfg *group = rhema_config_plugin_group(&cfg, p->kind, p->name);
    switch (p->kind) {
    case RHEMA_KIND_STORAGE:
        rhema_conformance_storage(&p->vt.storage, rhema_host_get(), group, report,
                                  (void *)p->name, &totals);
        break;
    case RHEMA_KIND_COMPRESS:
        rhema_conformance_compress(&p->vt.compress, rhema_host_get(), group, report,
                                   (void *)p->name, &totals);
        break;
    case RHEMA_KIND_CIPHER:
        rhema_conformance_cipher(&p->vt.cipher, report, (void *)p->name, &totals);
        break;
    case RHEMA_KIND_BALANCER:
        rhema_conformance_balancer(&p->vt.balancer, rhema_host_get(), group, report,
                                   (void *)p->name, &totals);
        break;
    default:
        fprintf(stderr, "rhemactl: no conformance suite for %s plugins in this version\n",
                rhema_plugin_kind_name(p->kind));
        goto out;
    }
    printf("%u passed, %u failed, %u skipped\n", totals.passed, totals.failed, totals.skipped);
    status = totals.failed ? 1 : 0;
out:
    free(err);
    rhema_plugins_free(reg);
    rhema_config_release(&cfg);
    return status;
}

/* ---- backup ---- */

struct backend {
    struct rhema_plugin_registry *reg;
    const struct rhema_loaded_plugin *p;
    const struct rhema_storage_plugin *vt;
    rhema_storage_instance *inst;
};

/* Load and open the configured storage backend. */
static int backend_open(struct rhema_config *cfg, struct backend *b)
{
    char *err = NULL;
    int rc;
    memset(b, 0, sizeof *b);
    if ((rc = rhema_plugins_new(&b->reg)) != 0)
        return rc;
    rc = rhema_plugin_load(b->reg, cfg->backend, cfg->plugin_directory, RHEMA_KIND_STORAGE, &b->p,
                           &err);
    if (rc == 0) {
        b->vt = &b->p->vt.storage;
        rc = b->vt->open(rhema_host_get(),
                         rhema_config_plugin_group(cfg, RHEMA_KIND_STORAGE, b->p->name), &b->inst,
                         &err);
        if (rc != 0)
            b->inst = NULL;
    }
    if (rc != 0)
        fprintf(stderr, "rhemactl: storage '%s': %s\n", cfg->backend,
                err ? err : rhema_strerror(rc));
    free(err);
    return rc;
}

static void backend_close(struct backend *b)
{
    if (b->inst != NULL)
        b->vt->close(b->inst);
    rhema_plugins_free(b->reg);
    memset(b, 0, sizeof *b);
}

static void human_size(uint64_t n, char *buf, size_t cap)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)n;
    int u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, cap, "%llu B", (unsigned long long)n);
    else
        snprintf(buf, cap, "%.1f %s", v, units[u]);
}

static void human_age(uint64_t ms, char *buf, size_t cap)
{
    uint64_t s = ms / 1000;
    if (s < 60)
        snprintf(buf, cap, "%llus", (unsigned long long)s);
    else if (s < 3600)
        snprintf(buf, cap, "%llum", (unsigned long long)(s / 60));
    else if (s < 86400)
        snprintf(buf, cap, "%lluh%02llum", (unsigned long long)(s / 3600),
                 (unsigned long long)(s % 3600 / 60));
    else
        snprintf(buf, cap, "%llud%02lluh", (unsigned long long)(s / 86400),
                 (unsigned long long)(s % 86400 / 3600));
}

/*
 * Take the pidfile's lock for the restore.  0: *fd holds the lock (and
 * *created says whether we made the file); 1: a daemon holds it (its pid in
 * pid); -1: an error (message printed).
 */
static int pidfile_lock(const char *path, int *fd, int *created, char pid[32])
{
    int f = open(path, O_RDWR | O_CLOEXEC);
    *created = 0;
    if (f < 0 && errno == ENOENT) {
        f = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        *created = f >= 0;
    }
    if (f < 0) {
        fprintf(stderr, "rhemactl: pidfile %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (flock(f, LOCK_EX | LOCK_NB) != 0) {
        ssize_t n = pread(f, pid, 31, 0);
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        close(f);
        return 1;
    }
    *fd = f;
    return 0;
}

static int cmd_backup(int argc, char **argv)
{
    static const struct option longopts[] = {{"force", no_argument, NULL, 'F'},
                                             {NULL, 0, NULL, 0}};
    static const char *overrides[128];
    const char *config_file = NULL, *plugin_dir = NULL, *dir = NULL, *file = NULL, *sub;
    size_t n_overrides = 0;
    struct rhema_config cfg = {0};
    struct backend b = {0};
    char *err = NULL, *abs_dir = NULL, *abs_file = NULL, *abs_plugin_dir = NULL;
    int c, force = 0, status = 1, rc;

    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    sub = argv[1];
    if (strcmp(sub, "create") != 0 && strcmp(sub, "list") != 0 && strcmp(sub, "restore") != 0) {
        usage(stderr);
        return 2;
    }
    optind = 2;
    while ((c = getopt_long(argc, argv, "c:o:P:d:", longopts, NULL)) != -1) {
        switch (c) {
        case 'c': config_file = optarg; break;
        case 'P': plugin_dir = optarg; break;
        case 'd': dir = optarg; break;
        case 'F': force = 1; break;
        case 'o':
            if (n_overrides < sizeof overrides / sizeof *overrides) {
                overrides[n_overrides++] = optarg;
                break;
            }
            /* fall through */
        default: usage(stderr); return 2;
        }
    }
    if (strcmp(sub, "restore") == 0) {
        if (optind + 1 != argc) {
            fprintf(stderr, "rhemactl: backup restore takes one FILE\n");
            return 2;
        }
        file = argv[optind];
    } else if (optind != argc) {
        fprintf(stderr, "rhemactl: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    /* the command line's paths as meant here, before entering the data directory */
    if ((dir && !(dir = abs_dir = rhema_path_absolute(dir))) ||
        (file && !(file = abs_file = rhema_path_absolute(file))) ||
        (plugin_dir && !(plugin_dir = abs_plugin_dir = rhema_path_absolute(plugin_dir)))) {
        fprintf(stderr, "rhemactl: out of memory\n");
        goto out;
    }
    if (rhema_config_load(&cfg, config_file, overrides, n_overrides, plugin_dir, &err) != 0) {
        fprintf(stderr, "rhemactl: configuration error:\n%s\n", err ? err : "?");
        goto out;
    }
    rhema_log_open(RHEMA_LOG_WARN, RHEMA_LOG_FORMAT_TEXT, NULL, NULL);
    if (rhemactl_enter_data_directory(&cfg) != 0)
        goto out;
    /* the configured directory, named absolutely in what rhemactl prints */
    if (dir == NULL && !(dir = abs_dir = rhema_path_absolute(cfg.backup_directory))) {
        fprintf(stderr, "rhemactl: out of memory\n");
        goto out;
    }

    if (strcmp(sub, "list") == 0) {
        struct rhema_backup_file *v = NULL;
        size_t n = 0, i;
        uint64_t now = rhema_realtime_ms();
        if (rhema_backup_list(dir, NULL, &v, &n, &err) != 0) {
            fprintf(stderr, "rhemactl: %s\n", err ? err : "cannot list backups");
            goto out;
        }
        if (n == 0)
            printf("no backups in %s\n", dir);
        else
            printf("%-48s %-10s %10s %8s\n", "NAME", "BACKEND", "SIZE", "AGE");
        for (i = 0; i < n; i++) {
            char size[32], age[32];
            human_size(v[i].bytes, size, sizeof size);
            human_age(now > v[i].taken_ms ? now - v[i].taken_ms : 0, age, sizeof age);
            printf("%-48s %-10s %10s %8s\n", v[i].name, v[i].backend, size, age);
        }
        free(v);
        status = 0;
        goto out;
    }
    if (strcmp(cfg.backend, "memory") == 0) {
        fprintf(stderr, "rhemactl: persistence.backend is 'memory': its data lives only inside "
                        "the rhemad process, there is nothing to back up or restore from here\n");
        goto out;
    }

    if (strcmp(sub, "create") == 0) {
        rhema_storage_conn *conn = NULL;
        char path[4096];
        if (backend_open(&cfg, &b) != 0)
            goto out;
        if ((rc = b.vt->connect(b.inst, &conn, &err)) != 0) {
            fprintf(stderr, "rhemactl: storage connect: %s\n", err ? err : rhema_strerror(rc));
            goto out;
        }
        rc = rhema_backup_create(b.vt, conn, b.p->name, dir, rhema_realtime_ms(), path,
                                 sizeof path, &err);
        b.vt->disconnect(conn);
        if (rc != 0) {
            fprintf(stderr, "rhemactl: %s\n", err ? err : rhema_strerror(rc));
            goto out;
        }
        printf("%s\n", path);
        status = 0;
        goto out;
    }

    /* restore */
    {
        int pfd = -1, created = 0, locked;
        char pid[32] = "";
        if (!force) {
            if (cfg.pidfile == NULL || cfg.pidfile[0] == '\0') {
                fprintf(stderr, "rhemactl: service.pidfile is not set, so whether rhemad is "
                                "running on this data cannot be checked; stop it, then run "
                                "again with --force\n");
                goto out;
            }
            locked = pidfile_lock(cfg.pidfile, &pfd, &created, pid);
            if (locked < 0)
                goto out;
            if (locked > 0) {
                fprintf(stderr, "rhemactl: rhemad is running on this data (pidfile %s is locked, "
                                "pid %s); stop it first, or pass --force to restore anyway\n",
                        cfg.pidfile, pid[0] ? pid : "?");
                goto out;
            }
        }
        if (backend_open(&cfg, &b) == 0) {
            if (b.vt->restore == NULL) {
                fprintf(stderr, "rhemactl: storage '%s' cannot restore backups\n", b.p->name);
            } else if ((rc = b.vt->restore(b.inst, file, &err)) != 0) {
                fprintf(stderr, "rhemactl: restore refused, nothing changed: %s\n",
                        err ? err : rhema_strerror(rc));
            } else {
                printf("restored %s into storage '%s'\n", file, b.p->name);
                status = 0;
            }
        }
        if (pfd >= 0) {
            if (created)
                unlink(cfg.pidfile);
            close(pfd);
        }
    }
out:
    backend_close(&b);
    free(err);
    free(abs_dir);
    free(abs_file);
    free(abs_plugin_dir);
    rhema_config_release(&cfg);
    return status;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (sodium_init() < 0)
        return 1;
    if (strcmp(argv[1], "plugin") == 0)
        return cmd_plugin(argc - 1, argv + 1);
    if (strcmp(argv[1], "backup") == 0)
        return cmd_backup(argc - 1, argv + 1);
    if (strcmp(argv[1], "keys") == 0 && argc > 2 && strcmp(argv[2], "init") == 0)
        return rhemactl_keys_init(argc - 1, argv + 1);
    if (strcmp(argv[1], "keys") == 0 && argc > 2 && rhemactl_is_remote_keys_verb(argv[2]))
        return rhemactl_remote(argc, argv);
    if (strcmp(argv[1], "keys") == 0)
        return rhemactl_keys(argc - 1, argv + 1);
    if (rhemactl_is_remote_command(argv[1]))
        return rhemactl_remote(argc, argv);
    /* rhemactl --addr X sessions list: the remote options may come first */
    if (strncmp(argv[1], "--", 2) == 0 && strcmp(argv[1], "--help") != 0)
        return rhemactl_remote(argc, argv);
    if (strcmp(argv[1], "audit") == 0)
        return rhemactl_audit(argc - 1, argv + 1);
    if (strcmp(argv[1], "auth") == 0)
        return rhemactl_auth(argc - 1, argv + 1);
#ifdef RHEMA_HAVE_ZSTD
    if (strcmp(argv[1], "dict") == 0)
        return rhemactl_dict(argc - 1, argv + 1);
#endif
    if (strcmp(argv[1], "version") == 0 || strcmp(argv[1], "-V") == 0) {
        printf("rhemactl %s, plugin ABI %s\n", PACKAGE_VERSION, rhema_plugin_abi_string());
        return 0;
    }
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    usage(stderr);
    return 2;
}
