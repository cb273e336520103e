/*
 * rhemad -- argv, configuration, plugins, daemonize, pidfile, signals.
 *
 * The main thread owns an event base for signals and timers; the HTTP
 * workers run their own (http.c).  SIGTERM/SIGINT drain and exit 0; SIGHUP
 * re-reads the configuration and applies what can change live.
 */
#include "rhema_build.h"
#include "rhema_paths.h" /* RHEMA_CONFIG_FILE: made by make */

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <sodium.h>

#include "api/api_metrics.h"
#include "api/pipeline.h"
#include "api/tls.h"
#include "atrest.h"
#include "audit.h"
#include "cluster.h"
#include "config.h"
#include "consensus.h"
#include "datadir.h"
#include "keys.h"
#include "log.h"
#include "watch/inbox.h"
#include "maintenance.h"
#include "perfmon.h"
#include "metrics/alerts.h"
#include "metrics/health.h"
#include "metrics/monitor.h"
#include "metrics/history.h"
#include "api/api_console.h"
#include "consensus.h"
#include "plugin.h"
#include "sdnotify.h"
#include "server.h"
#include "services.h"
#include "ai/gateway.h"
#include "util.h"
#include "watch/feed.h"

struct options {
    const char *config_file;
    const char *pidfile;
    const char *plugin_dir;
    const char **overrides;
    size_t n_overrides;
    int test_only;
    int foreground;
};

static void usage(FILE *to)
{
    fprintf(to,
            "usage: rhemad [-c FILE] [-t] [-f] [-p PIDFILE] [-P DIR] [-o section.key=value]... "
            "[-V] [-h]\n"
            "  -c FILE   configuration file (default: " RHEMA_CONFIG_FILE
            " when it exists,\n"
            "            built-in defaults otherwise)\n"
            "  -t        check the configuration and every plugin it names, then exit;\n"
            "            creates nothing (a durable or shared storage is not opened;\n"
            "            its plugin checks its group)\n"
            "  -f        stay in the foreground (default: daemonize)\n"
            "  -p FILE   write the process id to FILE (overrides service.pidfile)\n"
            "  -P DIR    plugin directory (overrides plugins.directory)\n"
            "  -o K=V    override one setting, e.g. -o service.listen=127.0.0.1:9000\n"
            "  -V        print the version and exit\n"
            "  -h        this help\n");
}

static int parse_args(int argc, char **argv, struct options *o)
{
    int c;
    static const char *overrides[256];
    o->overrides = overrides;
    while ((c = getopt(argc, argv, "c:tfp:P:o:Vh")) != -1) {
        switch (c) {
        case 'c': o->config_file = optarg; break;
        case 't': o->test_only = 1; break;
        case 'f': o->foreground = 1; break;
        case 'p': o->pidfile = optarg; break;
        case 'P': o->plugin_dir = optarg; break;
        case 'o':
            if (o->n_overrides == sizeof overrides / sizeof *overrides) {
                fprintf(stderr, "rhemad: too many -o options\n");
                return 1;
            }
            if (!strchr(optarg, '=')) {
                fprintf(stderr, "rhemad: -o %s: expected section.key=value\n", optarg);
                return 1;
            }
            overrides[o->n_overrides++] = optarg;
            break;
        case 'V':
            printf("rhemad %s, plugin ABI %s\n", PACKAGE_VERSION, rhema_plugin_abi_string());
            exit(0);
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); return 1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "rhemad: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 1;
    }
    return 0;
}

/* A storage group in the file that names no loaded plugin: likely a typo. */
static int warn_stray_group(const char *name, const char *where, void *arg)
{
    struct rhema_server *srv = arg;
    if (!rhema_plugin_find(srv->plugins, RHEMA_KIND_STORAGE, name))
        rhema_log(RHEMA_LOG_NOTICE, "config",
                  "%s: persistence.%s configures a storage plugin that is not loaded (backend is "
                  "'%s'); ignored",
                  where, name, srv->cfg->backend);
    return 0;
}

/*
 * Load every plugin the configuration names: plugins.load when given,
 * then the storage backend (by name) if the list did not provide it.
 */
static int load_plugins(struct rhema_server *srv, char **err)
{
    struct rhema_config *cfg = srv->cfg;
    const struct rhema_loaded_plugin *p;
    int rc;
    for (size_t i = 0; cfg->plugin_load_set && i < cfg->plugin_load.n; i++) {
        if ((rc = rhema_plugin_load(srv->plugins, cfg->plugin_load.v[i], cfg->plugin_directory, 0,
                                    &p, err)))
            return rc;
    }
    p = rhema_plugin_find(srv->plugins, RHEMA_KIND_STORAGE, cfg->backend);
    if (!p && (rc = rhema_plugin_load(srv->plugins, cfg->backend, cfg->plugin_directory,
                                      RHEMA_KIND_STORAGE, &p, err)))
        return rc;
    if (p->kind != RHEMA_KIND_STORAGE) {
        return rhema_set_error(err, RHEMA_EINVAL, "persistence.backend '%s' is a %s plugin",
                               cfg->backend, rhema_plugin_kind_name(p->kind));
    }
    srv->storage_plugin = p;
    srv->storage = &p->vt.storage;
    /* the compression codec the configuration names (needed only when enabled) */
    if (!rhema_plugin_find(srv->plugins, RHEMA_KIND_COMPRESS, cfg->compression_algorithm)) {
        const struct rhema_loaded_plugin *c;
        char *cerr = NULL;
        rc = rhema_plugin_load(srv->plugins, cfg->compression_algorithm, cfg->plugin_directory,
                               RHEMA_KIND_COMPRESS, &c, &cerr);
        if (rc && (cfg->compression_enabled || cfg->enable_compression)) {
            *err = cerr;
            return rc;
        }
        if (rc)
            rhema_log(RHEMA_LOG_INFO, "main", "compression codec not loaded: %s", cerr);
        free(cerr);
    }
    /* the cipher the configuration names (needed with encryption or key management) */
    if (!rhema_plugin_find(srv->plugins, RHEMA_KIND_CIPHER, cfg->encryption_algorithm)) {
        const struct rhema_loaded_plugin *c;
        char *cerr = NULL;
        const char *kf = "", *pe = "";
        rhema_config_get_string(cfg, "advanced_features.key_management.key_file", &kf);
        rhema_config_get_string(cfg, "advanced_features.key_management.passphrase_env", &pe);
        rc = rhema_plugin_load(srv->plugins, cfg->encryption_algorithm, cfg->plugin_directory,
                               RHEMA_KIND_CIPHER, &c, &cerr);
        if (rc && (cfg->encryption_enabled || *kf || *pe)) {
            *err = cerr;
            return rc;
        }
        if (rc)
            rhema_log(RHEMA_LOG_INFO, "main", "cipher not loaded: %s", cerr);
        free(cerr);
    }
    rhema_config_foreach_plugin_group(cfg, RHEMA_KIND_STORAGE, warn_stray_group, srv);
    return 0;
}

/*
 * Whether opening the storage could leave something behind: a durable
 * backend creates its files, a shared one connects to its server (and may
 * create a schema).  rhemad -t creates nothing, so it opens only a backend
 * that is neither (memory), and checks the others' groups at start.
 */
static int storage_leaves_traces(const struct rhema_server *srv)
{
    return (srv->storage->features & (RHEMA_STORAGE_DURABLE | RHEMA_STORAGE_SHARED)) != 0;
}

/* Open the storage instance and refuse keys of its group it did not read. */
static int open_storage(struct rhema_server *srv, char **err)
{
    const struct rhema_cfg *group =
        rhema_config_plugin_group(srv->cfg, RHEMA_KIND_STORAGE, srv->storage_plugin->name);
    char *perr = NULL;
    int rc = srv->storage->open(rhema_host_get(), group, &srv->storage_inst, &perr);
    if (rc) {
        rhema_set_error(err, 0, "storage '%s': %s", srv->storage_plugin->name,
                        perr ? perr : rhema_strerror(rc));
        free(perr);
        srv->storage_inst = NULL;
        return rc;
    }
    if ((rc = rhema_config_unread_keys(group, err))) {
        srv->storage->close(srv->storage_inst);
        srv->storage_inst = NULL;
        return rc;
    }
    return 0;
}

/*
 * rhemad -t on a backend that leaves traces: its check() (storage minor 4)
 * reads and validates the group as open() would, creating nothing, and the
 * keys it did not read are refused as at start.  *checked: whether the
 * plugin has a check() (without one the group is checked at start only).
 */
static int check_storage(struct rhema_server *srv, int *checked, char **err)
{
    const struct rhema_cfg *group =
        rhema_config_plugin_group(srv->cfg, RHEMA_KIND_STORAGE, srv->storage_plugin->name);
    char *perr = NULL;
    int rc;

    *checked = srv->storage->check != NULL;
    if (!*checked)
        return 0;
    if ((rc = srv->storage->check(rhema_host_get(), group, &perr)) != 0) {
        rhema_set_error(err, 0, "storage '%s': %s", srv->storage_plugin->name,
                        perr ? perr : rhema_strerror(rc));
        free(perr);
        return rc;
    }
    return rhema_config_unread_keys(group, err);
}

/*
 * Route every stored value through the at-rest transform (atrest.h), after
 * the codecs and the keyring are open.  Always, not only when an option is
 * on: values written while an option was on stay readable after it is
 * turned off.  From here on srv->storage / storage_inst are the wrapper's
 * (its close() closes the real instance); srv->storage_plugin stays the
 * real loaded plugin, for names and /v1/plugins.
 */
static int wrap_storage(struct rhema_server *srv, char **err)
{
    struct rhema_atrest *a;
    int rc = rhema_atrest_wrap(srv->storage, srv->storage_inst, &srv->codecs, srv->keyring,
                               srv->cfg->enable_compression, srv->cfg->enable_encryption, &a, err);
    if (rc)
        return rc;
    rhema_atrest_set_max_record(a, (uint64_t)srv->cfg->max_record_size_bytes);
    srv->storage = rhema_atrest_vtable(a);
    srv->storage_inst = rhema_atrest_instance(a);
    return 0;
}

/* ---- pidfile ---- */

static int pidfile_fd = -1;
static char *pidfile_path;

/*
 * Write the pidfile.  A pidfile is a classic target: in a directory others
 * may write to (without the sticky bit), anyone could swap it for a link to
 * a file root owns, and a daemon that follows it truncates that file.  So
 * such a directory is refused, the name is opened with O_NOFOLLOW, and
 * only a regular file is written.
 */
static int pidfile_write(const char *path, char **err)
{
    char *dir = strdup(path), *slash;
    struct stat sb;
    int fd = -1;
    if (!dir)
        goto fail;
    slash = strrchr(dir, '/');
    if (slash == dir)
        dir[1] = '\0'; /* "/rhemad.pid" */
    else if (slash)
        *slash = '\0';
    if (stat(slash ? dir : ".", &sb) == 0 && (sb.st_mode & S_IWOTH) && !(sb.st_mode & S_ISVTX)) {
        if (asprintf(err, "pidfile %s: its directory is writable by everyone and not sticky; "
                          "use a directory only rhemad's user can write (e.g. /run/rhema)",
                     path) < 0)
            *err = NULL;
        free(dir);
        return RHEMA_EINVAL;
    }
    free(dir);
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0644);
    if (fd < 0)
        goto fail;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        if (asprintf(err, "pidfile %s: not a regular file", path) < 0)
            *err = NULL;
        close(fd);
        return RHEMA_EINVAL;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        char buf[32] = "";
        ssize_t n = read(fd, buf, sizeof buf - 1);
        buf[n > 0 ? n : 0] = '\0';
        buf[strcspn(buf, "\n")] = '\0';
        rhema_set_error(err, 0, "pidfile %s is locked: rhemad is already running (pid %s)", path,
                        buf);
        close(fd);
        return RHEMA_ECONFLICT;
    }
    char buf[32];
    int len = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, buf, (size_t)len, 0) != len)
        goto fail;
    pidfile_fd = fd; /* kept open: the lock lives as long as we do */
    pidfile_path = strdup(path);
    return 0;
fail:
    rhema_set_error(err, 0, "pidfile %s: %s", path, strerror(errno));
    if (fd >= 0)
        close(fd);
    return RHEMA_EIO;
}

static void pidfile_remove(void)
{
    if (pidfile_fd < 0)
        return;
    unlink(pidfile_path);
    close(pidfile_fd);
    pidfile_fd = -1;
    free(pidfile_path);
    pidfile_path = NULL;
}

/* ---- daemonize: the parent exits with the child's startup result ---- */

static int ready_fd = -1;

static int daemonize(void)
{
    int p[2];
    if (pipe(p) != 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid > 0) {
        close(p[1]);
        char status = 1;
        ssize_t n;
        do
            n = read(p[0], &status, 1);
        while (n < 0 && errno == EINTR);
        _exit(n == 1 ? status : 1);
    }
    close(p[0]);
    if (setsid() < 0)
        return -1;
    pid = fork(); /* never reacquire a controlling terminal */
    if (pid < 0)
        return -1;
    if (pid > 0)
        _exit(0);
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, STDIN_FILENO);
        dup2(null, STDOUT_FILENO);
        close(null);
    }
    ready_fd = p[1];
    return 0;
}

/* Tell the waiting parent how startup went; after success stderr goes too. */
static void notify_ready(int status)
{
    if (ready_fd < 0)
        return;
    char s = (char)status;
    if (write(ready_fd, &s, 1) < 0) { /* the parent is gone; nothing to tell */
    }
    close(ready_fd);
    ready_fd = -1;
    if (status == 0) {
        rhema_log_detach(); /* no log file: syslog from here on */
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, STDERR_FILENO);
            close(null);
        }
    }
}

/* ---- signals and reload ---- */

/*
 * The settings a reload cannot apply, as the last reload (or the start)
 * read them: a reload warns that a restart is needed only when one of them
 * changed since then, not again on every later reload.
 */
struct restart_settings {
    char *listen, *backend, *plugin_directory, *data_directory;
    int workers;
    int64_t max_request_size_bytes;
    int request_timeout_seconds;
};

struct main_ctx {
    struct options *opt;
    struct rhema_server *srv;
    struct event_base *base;
    struct restart_settings running; /* as the process started with them */
    struct restart_settings last;    /* as the last reload read them */
    int security_warned;             /* the last reload read other security settings */
};

static void restart_settings_release(struct restart_settings *r)
{
    free(r->listen);
    free(r->backend);
    free(r->plugin_directory);
    free(r->data_directory);
    memset(r, 0, sizeof *r);
}

static int restart_settings_init(struct restart_settings *r, const struct rhema_config *cfg)
{
    const char *dd = "";
    rhema_config_get_string(cfg, "service.data_directory", &dd);
    memset(r, 0, sizeof *r);
    r->listen = strdup(cfg->listen);
    r->backend = strdup(cfg->backend);
    r->plugin_directory = strdup(cfg->plugin_directory);
    r->data_directory = strdup(dd);
    r->workers = cfg->workers;
    r->max_request_size_bytes = cfg->max_request_size_bytes;
    r->request_timeout_seconds = cfg->request_timeout_seconds;
    if (!r->listen || !r->backend || !r->plugin_directory || !r->data_directory) {
        restart_settings_release(r);
        return RHEMA_ENOMEM;
    }
    return 0;
}

/*
 * Say what a reload could not apply, once per change: a setting that
 * differs from the last reload's either needs a restart (it differs from
 * the running value too) or is back to the running value.
 */
static void warn_restart_needed(const struct restart_settings *run,
                                const struct restart_settings *last,
                                const struct restart_settings *neu)
{
#define RESTART_CHANGE(differs, running_differs, name, fmt, ...)                                 \
    if (differs)                                                                                   \
        rhema_log((running_differs) ? RHEMA_LOG_WARN : RHEMA_LOG_NOTICE, "main",                   \
                  "reload: %s " fmt "%s", name, __VA_ARGS__,                                       \
                  (running_differs) ? "; restart to apply" : " (back to the running value)");
#define RESTART_STR(field, name)                                                                   \
    RESTART_CHANGE(strcmp(last->field, neu->field) != 0, strcmp(run->field, neu->field) != 0,     \
                   name, "changed ('%s' -> '%s')", last->field, neu->field)
    RESTART_STR(listen, "service.listen")
    RESTART_STR(backend, "persistence.backend")
    RESTART_STR(plugin_directory, "plugins.directory")
    RESTART_STR(data_directory, "service.data_directory")
    RESTART_CHANGE(last->workers != neu->workers, run->workers != neu->workers,
                   "service.workers", "changed (%d -> %d)", last->workers, neu->workers)
    RESTART_CHANGE(last->max_request_size_bytes != neu->max_request_size_bytes ||
                       last->request_timeout_seconds != neu->request_timeout_seconds,
                   run->max_request_size_bytes != neu->max_request_size_bytes ||
                       run->request_timeout_seconds != neu->request_timeout_seconds,
                   "service limits", "changed%s", "")
#undef RESTART_STR
#undef RESTART_CHANGE
}

static void on_terminate(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct main_ctx *m = arg;
    rhema_log(RHEMA_LOG_NOTICE, "main", "signal %d: draining and stopping", (int)sig);
    rhema_sd_notifyf("STOPPING=1\nSTATUS=draining (signal %d)\n", (int)sig);
    event_base_loopbreak(m->base);
}

/*
 * SIGUSR1 (logrotate, as nginx does): reopen logging.file and the audit
 * log, whose chain continues in the new file.  Nothing else changes.
 */
static void on_reopen(evutil_socket_t sig, short what, void *arg)
{
    (void)sig, (void)what, (void)arg;
    char *err = NULL;
    if (rhema_log_reopen(&err) != 0) {
        rhema_log(RHEMA_LOG_ERROR, "main", "SIGUSR1: %s; writing on to the old log file", err);
        free(err);
    } else {
        rhema_log(RHEMA_LOG_NOTICE, "main", "SIGUSR1: log files reopened");
    }
    rhema_audit_reopen();
}

/* The loader's notices (old key names), one log line each. */
static void log_config_notices(const struct rhema_config *cfg)
{
    const char *t = rhema_config_notices(cfg);

    while (t && *t) {
        int n = (int)strcspn(t, "\n");

        rhema_log(RHEMA_LOG_NOTICE, "config", "%.*s", n, t);
        t += n + (t[n] == '\n');
    }
}

/* Re-read the configuration; 0, or -1 when it was refused (the old one stays). */
static int reload(struct main_ctx *m)
{
    struct rhema_config neu;
    char *err = NULL;
    if (rhema_config_load(&neu, m->opt->config_file, m->opt->overrides, m->opt->n_overrides,
                          m->opt->plugin_dir, &err) != 0) {
        rhema_log(RHEMA_LOG_ERROR, "main", "reload: configuration refused, keeping the old one:\n%s",
                  err ? err : "?");
        rhema_audit_event("config.reload_refused", NULL, NULL,
                          json_pack("{s:s}", "file", m->opt->config_file ? m->opt->config_file : ""));
        free(err);
        return -1;
    }
    log_config_notices(&neu);
    struct rhema_config *old = m->srv->cfg;
    if (rhema_log_open(neu.log_level, neu.log_format, neu.log_file, &err) != 0) {
        rhema_log(RHEMA_LOG_ERROR, "main", "reload: %s; keeping the old log settings", err);
        free(err);
    } else {
        old->log_level = neu.log_level;
        old->log_format = neu.log_format;
        atomic_store(&m->srv->log_access, neu.access_log);
        old->access_log = neu.access_log;
    }
    struct restart_settings now;
    if (restart_settings_init(&now, &neu) == 0) {
        warn_restart_needed(&m->running, &m->last, &now);
        restart_settings_release(&m->last);
        m->last = now;
    }
    rhema_tls_reload(&neu); /* the certificate, key and CA: new connections use them */
    int auth_differs = !!rhema_api_reload_needs_restart(old, &neu);
    int audit_differs = !!rhema_audit_settings_differ(old, &neu);
    int security_differs = auth_differs | audit_differs << 1;
    if (security_differs && security_differs != m->security_warned)
        rhema_log(RHEMA_LOG_WARN, "main", "reload: %s%s%s changed; restart to apply",
                  auth_differs ? "security settings (keys, roles, rules, rate limits)" : "",
                  auth_differs && audit_differs ? " and " : "",
                  audit_differs ? "security.audit" : "");
    else if (!security_differs && m->security_warned)
        rhema_log(RHEMA_LOG_NOTICE, "main",
                  "reload: security settings are back to the running ones");
    m->security_warned = security_differs;
    rhema_log(RHEMA_LOG_NOTICE, "main", "reload: configuration re-read; log level %s, format %s",
              rhema_log_level_name(neu.log_level),
              neu.log_format == RHEMA_LOG_FORMAT_JSON ? "json" : "text");
    rhema_audit_event("config.reloaded", NULL, NULL,
                      json_pack("{s:s}", "file", m->opt->config_file ? m->opt->config_file : ""));
    rhema_config_release(&neu);
    return 0;
}

/* SIGHUP: systemd hears RELOADING=1 before the reload and READY=1 after it (sd_notify(3)). */
static void on_reload(evutil_socket_t sig, short what, void *arg)
{
    (void)sig, (void)what;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    rhema_sd_notifyf("RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading the configuration\n",
                     (unsigned long long)now.tv_sec * 1000000ull +
                         (unsigned long long)now.tv_nsec / 1000u);
    int rc = reload(arg);
    rhema_sd_notifyf("READY=1\nSTATUS=serving; %s\n",
                     rc ? "the last reload was refused (see the log), the old configuration runs"
                        : "configuration reloaded");
}

static size_t count_plugins(const struct rhema_plugin_registry *reg)
{
    size_t n = 0;
    while (rhema_plugin_at(reg, n))
        n++;
    return n;
}

/*
 * rhemad -t: load the balancing strategies and create one instance of
 * each, so that a bad balancer group fails the test as it would fail the
 * start.  The daemon does the same in rhema_services_start().
 */
static int check_balancers(struct rhema_server *srv, char **err)
{
    struct rhema_services *s = NULL;
    struct rhema_ai *ai = NULL;
    int rc = rhema_services_new(srv->cfg, srv->plugins, &s, err);
    rhema_services_free(s);
    if (rc == 0) /* the AI gateway's models, upstreams and their strategies */
        rc = rhema_ai_new(srv->cfg, srv->plugins, &ai, err);
    rhema_ai_free(ai);
    return rc;
}

int main(int argc, char **argv)
{
    struct options opt = {0};
    struct rhema_config cfg = {0};
    struct rhema_server srv = {.listen_fd = -1};
    char *err = NULL;
    int status = 1;
    struct event_base *base = NULL;
    struct event *ev_term = NULL, *ev_int = NULL, *ev_hup = NULL, *ev_usr1 = NULL;
    struct main_ctx mctx = {.opt = &opt, .srv = &srv};
    char *abs_config = NULL, *abs_pidfile = NULL, *abs_plugin_dir = NULL, *datadir = NULL;
    int storage_checked = 0;

    if (parse_args(argc, argv, &opt) != 0)
        return 2;
    /* without -c: the installed configuration file, when there is one */
    if (!opt.config_file && access(RHEMA_CONFIG_FILE, F_OK) == 0)
        opt.config_file = RHEMA_CONFIG_FILE;
    /* the command line's paths, as they were meant, after the chdir to the data directory */
    if ((opt.config_file && !(opt.config_file = abs_config = rhema_path_absolute(opt.config_file))) ||
        (opt.pidfile && !(opt.pidfile = abs_pidfile = rhema_path_absolute(opt.pidfile))) ||
        (opt.plugin_dir && !(opt.plugin_dir = abs_plugin_dir = rhema_path_absolute(opt.plugin_dir)))) {
        fprintf(stderr, "rhemad: out of memory\n");
        goto early_out;
    }
    if (rhema_config_load(&cfg, opt.config_file, opt.overrides, opt.n_overrides, opt.plugin_dir,
                          &err) != 0) {
        fprintf(stderr, "rhemad: configuration error:\n%s\n", err ? err : "?");
        if (opt.test_only)
            fprintf(stderr, "rhemad: configuration file %s test failed\n",
                    opt.config_file ? opt.config_file : "(defaults)");
        free(err);
        goto early_out;
    }
    srv.cfg = &cfg;
    atomic_store(&srv.log_access, cfg.access_log);
    /*
     * rhemad -t creates nothing: it does not enter (or create) the data
     * directory, so a relative plugins.directory is resolved by hand.
     */
    if (rhema_data_directory(&cfg, opt.test_only ? RHEMA_DATADIR_CHECK : RHEMA_DATADIR_ENTER, &datadir, &err) != 0) {
        fprintf(stderr, "rhemad: %s\n", err);
        if (opt.test_only)
            fprintf(stderr, "rhemad: configuration file %s test failed\n",
                    opt.config_file ? opt.config_file : "(defaults)");
        goto out;
    }
    if (opt.test_only && cfg.plugin_directory[0] != '/') {
        char *pd = NULL;
        if (asprintf(&pd, "%s/%s", datadir, cfg.plugin_directory) < 0) {
            fprintf(stderr, "rhemad: out of memory\n");
            goto out;
        }
        free(cfg.plugin_directory);
        cfg.plugin_directory = pd;
    }
    if (rhema_log_open(cfg.log_level, cfg.log_format, opt.test_only ? NULL : cfg.log_file, &err)) {
        fprintf(stderr, "rhemad: %s\n", err);
        goto out;
    }
    log_config_notices(&cfg);
    if (!opt.test_only) {
        rhema_log_tee_stderr(1); /* until the daemon is up, errors reach the terminal too */
        rhema_log(RHEMA_LOG_NOTICE, "main", "rhemad %s starting: configuration %s, data directory %s",
                  PACKAGE_VERSION, opt.config_file ? opt.config_file : "built-in defaults",
                  datadir);
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "rhemad: libsodium failed to initialise\n");
        goto out;
    }
    if (rhema_plugins_new(&srv.plugins) != 0)
        goto out;
    if (load_plugins(&srv, &err) != 0 ||
        ((!opt.test_only || !storage_leaves_traces(&srv)) && open_storage(&srv, &err) != 0) ||
        (opt.test_only && storage_leaves_traces(&srv) &&
         check_storage(&srv, &storage_checked, &err) != 0) ||
        rhema_cluster_check(&cfg, srv.storage_plugin, &err) != 0 ||
        rhema_feed_check(&srv, &err) != 0 ||
        rhema_codecs_open(&srv.codecs, srv.plugins, &cfg, &err) != 0 ||
        rhema_atrest_check(&cfg, &srv.codecs, &err) != 0 ||
        (opt.test_only && check_balancers(&srv, &err) != 0) ||
        (opt.test_only && rhema_api_check(&cfg, &err) != 0) ||
        (opt.test_only && rhema_tls_check(&cfg, &err) != 0) ||
        (opt.test_only && rhema_alerts_check(&cfg, &err) != 0) ||
        (!opt.test_only && rhema_keys_open(&srv, &err) != 0) ||
        (!opt.test_only && wrap_storage(&srv, &err) != 0)) {
        fprintf(stderr, "rhemad: %s\n", err ? err : "plugin error");
        if (opt.test_only)
            fprintf(stderr, "rhemad: configuration file %s test failed\n",
                    opt.config_file ? opt.config_file : "(defaults)");
        goto out;
    }
    if (opt.test_only) {
        printf("rhemad: configuration file %s syntax is ok\n"
               "rhemad: %zu plugin(s) load; storage '%s' %s\n"
               "rhemad: data directory %s %s\n"
               "rhemad: configuration file %s test is successful\n",
               opt.config_file ? opt.config_file : "(defaults)", count_plugins(srv.plugins),
               srv.storage_plugin->name,
               srv.storage_inst  ? "opens"
               : storage_checked ? "is not opened (-t creates nothing); its group is valid"
                                 : "not opened (-t creates nothing; its group is checked at start)",
               datadir,
               access(datadir, F_OK) == 0 ? "is usable" : "does not exist; rhemad creates it",
               opt.config_file ? opt.config_file : "(defaults)");
        status = 0;
        goto out;
    }

    if (!opt.foreground && daemonize() != 0) {
        fprintf(stderr, "rhemad: cannot daemonize: %s\n", strerror(errno));
        goto out;
    }
    const char *pidfile = opt.pidfile ? opt.pidfile : cfg.pidfile;
    if (pidfile && *pidfile && pidfile_write(pidfile, &err) != 0) {
        rhema_log(RHEMA_LOG_ERROR, "main", "%s", err);
        goto out;
    }
    signal(SIGPIPE, SIG_IGN);
    {
        unsigned char raw[4];
        randombytes_buf(raw, sizeof raw);
        snprintf(srv.boot_id, sizeof srv.boot_id, "%02x%02x%02x%02x", raw[0], raw[1], raw[2],
                 raw[3]);
    }
    srv.started_ms = rhema_realtime_ms();
    /*
     * Signals before the workers: once /health/live answers, SIGTERM must
     * drain, not kill with the default action.
     */
    evthread_use_pthreads();
    base = event_base_new();
    mctx.base = base;
    if (restart_settings_init(&mctx.running, &cfg) != 0 ||
        restart_settings_init(&mctx.last, &cfg) != 0) {
        rhema_log(RHEMA_LOG_ERROR, "main", "out of memory");
        goto out;
    }
    ev_term = evsignal_new(base, SIGTERM, on_terminate, &mctx);
    ev_int = evsignal_new(base, SIGINT, on_terminate, &mctx);
    ev_hup = evsignal_new(base, SIGHUP, on_reload, &mctx);
    ev_usr1 = evsignal_new(base, SIGUSR1, on_reopen, &mctx);
    event_add(ev_term, NULL);
    event_add(ev_int, NULL);
    event_add(ev_hup, NULL);
    event_add(ev_usr1, NULL);
    if (rhema_audit_open(&cfg, &err) != 0) { /* before anything it records */
        rhema_log(RHEMA_LOG_ERROR, "main", "%s", err ? err : "cannot open the audit log");
        goto out;
    }
    if (rhema_keys_start_timers(&srv, base) != 0) {
        rhema_log(RHEMA_LOG_ERROR, "main", "cannot start the key maintenance timers");
        goto out;
    }
    if (rhema_perfmon_new(&cfg, &srv.perfmon) != 0 ||
        rhema_perfmon_start(srv.perfmon, base) != 0) {
        rhema_log(RHEMA_LOG_ERROR, "main", "cannot start the performance monitor");
        goto out;
    }
    if (rhema_maintenance_start(&srv, base, &srv.maintenance, &err) != 0) {
        rhema_log(RHEMA_LOG_ERROR, "main", "%s", err ? err : "cannot start maintenance");
        goto out;
    }
    if (rhema_maintenance_add_cleanup(srv.maintenance, "applied consensus log entries",
                                      rhema_consensus_cleanup, NULL) != 0) {
        rhema_log(RHEMA_LOG_ERROR, "main", "out of memory");
        goto out;
    }
    /* the change feed first: the cluster (leader changes) and the service registry
     * (health changes) record into it */
    {
        int feed_on = 1;
        rhema_config_get_bool(&cfg, "coordination.change_feed", &feed_on);
        if (feed_on && rhema_feed_open(&srv, &srv.feed, &err) != 0) {
            rhema_log(RHEMA_LOG_ERROR, "main", "%s", err ? err : "cannot start the change feed");
            goto out;
        }
        /* expired inbox entries go with each compaction pass, on every node */
        rhema_feed_set_pass(srv.feed, "inbox expiry", rhema_inbox_expire);
    }
    if (rhema_cluster_start(&srv, base, &srv.cluster, &err) != 0) {
        rhema_log(RHEMA_LOG_ERROR, "main", "%s", err ? err : "cannot start the cluster module");
        goto out;
    }
    if (rhema_services_start(&srv, base, &srv.services, &err) != 0) {
        rhema_log(RHEMA_LOG_ERROR, "main", "%s", err ? err : "cannot start the service registry");
        goto out;
    }
    if (rhema_health_open(&srv.health) != 0 ||
        rhema_monitor_start(&srv, rhema_api_metrics_text, &srv.monitor, &err) != 0) {
        rhema_log(RHEMA_LOG_ERROR, "main", "%s", err ? err : "cannot start monitoring");
        goto out;
    }
    if (rhema_history_open(&srv, &srv.history, &err) != 0 ||
        rhema_history_start(srv.history, base) != 0 || rhema_console_open(&srv, &err) != 0) {
        rhema_log(RHEMA_LOG_ERROR, "main", "%s", err ? err : "cannot start the metrics history");
        goto out;
    }
    if (rhema_api_start(&srv, &err) != 0) {
        rhema_log(RHEMA_LOG_ERROR, "main", "%s", err ? err : "cannot start HTTP");
        goto out;
    }
    if (rhema_monitor_run(srv.monitor, &err) != 0) {
        rhema_log(RHEMA_LOG_ERROR, "main", "%s", err ? err : "cannot start monitoring");
        goto out;
    }
    rhema_log(RHEMA_LOG_NOTICE, "main", "rhemad %s started (pid %ld, storage '%s', config %s)",
              PACKAGE_VERSION, (long)getpid(), srv.storage_plugin->name,
              cfg.path && *cfg.path ? cfg.path : "built-in defaults");
    rhema_log_tee_stderr(0);
    notify_ready(0);
    /* systemd (Type=notify): serving now; MAINPID since a daemonized rhemad is not the pid it
     * started */
    if (opt.foreground)
        rhema_sd_notifyf("READY=1\nSTATUS=serving on %s (storage '%s')\n", cfg.listen,
                         srv.storage_plugin->name);
    else
        rhema_sd_notifyf("READY=1\nMAINPID=%ld\nSTATUS=serving on %s (storage '%s')\n",
                         (long)getpid(), cfg.listen, srv.storage_plugin->name);
    if (rhema_sd_watchdog_start(&srv, base) != 0)
        rhema_log(RHEMA_LOG_ERROR, "main",
                  "cannot start the watchdog timer; systemd will restart "
                  "this daemon when WatchdogSec passes");
    event_base_dispatch(base);
    rhema_sd_watchdog_stop(); /* not while draining: systemd's stop timeout rules now */

    rhema_cluster_leave(srv.cluster); /* hand the lease over before the drain */
    rhema_api_stop(&srv);
    rhema_monitor_stop(srv.monitor); /* after the workers, before the cluster it asks */
    srv.monitor = NULL;
    rhema_services_stop(srv.services); /* after the workers, before the cluster and the base */
    srv.services = NULL;
    rhema_cluster_stop(srv.cluster);
    srv.cluster = NULL;
    rhema_maintenance_stop(srv.maintenance);
    srv.maintenance = NULL;
    rhema_log(RHEMA_LOG_NOTICE, "main", "stopped");
    status = 0;
out:
    if (status && !opt.test_only)
        rhema_sd_notifyf("STATUS=failed to start; see the log\n");
    notify_ready(status ? 1 : 0);
    if (srv.workers)
        rhema_api_stop(&srv);
    rhema_monitor_stop(srv.monitor); /* after the workers, before the cluster it asks */
    srv.monitor = NULL;
    rhema_health_close(srv.health);
    srv.health = NULL;
    rhema_sd_watchdog_free();          /* after the workers' mailboxes delivered its pings */
    rhema_services_stop(srv.services); /* after the workers, before the cluster and the base */
    srv.services = NULL;
    rhema_cluster_stop(srv.cluster); /* after the workers, before the base its timers are on */
    srv.cluster = NULL;
    /* after the workers, the committer, the service registry and the cluster that record
     * into it and wake it */
    rhema_feed_close(srv.feed);
    srv.feed = NULL;
    rhema_keys_close(&srv); /* after the workers, before the base its timers are on */
    rhema_maintenance_stop(srv.maintenance); /* its timers live on base too */
    srv.maintenance = NULL;
    rhema_history_close(srv.history); /* after the workers that read it, before the base */
    srv.history = NULL;
    rhema_console_close(&srv);
    rhema_api_metrics_close(); /* after every thread that times storage calls */
    rhema_perfmon_free(srv.perfmon);
    srv.perfmon = NULL;
    rhema_audit_close(); /* after everything that records */
    if (ev_usr1)
        event_free(ev_usr1);
    if (ev_term)
        event_free(ev_term);
    if (ev_int)
        event_free(ev_int);
    if (ev_hup)
        event_free(ev_hup);
    if (base)
        event_base_free(base);
    if (srv.storage_inst)
        srv.storage->close(srv.storage_inst);
    rhema_codecs_close(&srv.codecs);
    rhema_plugins_free(srv.plugins);
    pidfile_remove();
    free(err);
    rhema_config_release(&cfg);
    rhema_log_close();
    restart_settings_release(&mctx.running);
    restart_settings_release(&mctx.last);
    free(datadir);
early_out:
    free(abs_config);
    free(abs_pidfile);
    free(abs_plugin_dir);
    return status;
}
