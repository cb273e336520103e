/*
 * keys -- the server's keyring, from its configuration to its close (see
 * keys.h): opening it with the configured cipher, the rotation timer, the
 * scheduled backups and their pruning.  Everything here runs on the main
 * thread; the routes that use the keyring are api/api_keys.c's.
 */
#include "rhema_build.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "audit.h"
#include "keybackup.h"
#include "keyring.h"
#include "keys.h"
#include "log.h"
#include "perfmon.h"
#include "util.h"

/* The keyring settings and timers of the server (the server only points at it). */
struct rhema_keys {
    struct rhema_cipher_table ciphers;
    struct event *maintain_ev, *backup_ev;
    char *backup_dir;
    int64_t backup_interval_hours;
    int64_t retention_count, retention_days; /* automatic backups kept; 0: no limit */
    int backup_enabled;
};

static struct rhema_keys *state_of(struct rhema_server *srv) { return srv->keys; }

const char *rhema_keys_backup_dir(struct rhema_server *srv)
{
    return srv->keys && srv->keys->backup_dir ? srv->keys->backup_dir : "backups/keys";
}

int rhema_keys_open(struct rhema_server *srv, char **err)
{
    struct rhema_config *cfg = srv->cfg;
    struct rhema_keys *ks = calloc(1, sizeof *ks);
    struct rhema_keyring_params p;
    char kerr[RHEMA_KEYRING_ERR_MAX];
    const struct rhema_loaded_plugin *cp = NULL;
    const char *dir = "backups/keys";
    int rc;
    if (!ks)
        return RHEMA_ENOMEM;
    (void)rc;
    srv->keys = ks;
    rhema_config_get_string(cfg, "advanced_features.key_management.backup.directory", &dir);
    ks->backup_dir = strdup(dir);
    ks->backup_interval_hours = 24;
    rhema_config_get_int(cfg, "advanced_features.key_management.backup.interval_hours",
                         &ks->backup_interval_hours);
    rhema_config_get_bool(cfg, "advanced_features.key_management.backup.enabled",
                          &ks->backup_enabled);
    ks->retention_count = 30;
    rhema_config_get_int(cfg, "advanced_features.key_management.backup.retention_count",
                         &ks->retention_count);
    rhema_config_get_int(cfg, "advanced_features.key_management.backup.retention_days",
                         &ks->retention_days);
    int configured = rhema_keyring_params_from_config(&p, cfg);
    /* the cipher the configuration names (loaded by main.c with the others) */
    cp = rhema_plugin_find(srv->plugins, RHEMA_KIND_CIPHER, cfg->encryption_algorithm);
    if (!cp && (configured || cfg->encryption_enabled)) {
        if (asprintf(err, "cipher plugin '%s' (advanced_features.encryption.algorithm) is not "
                          "loaded",
                     cfg->encryption_algorithm) < 0)
            *err = NULL;
        return RHEMA_EINVAL;
    }
    if (!configured) {
        if (cfg->encryption_enabled) {
            if (asprintf(err, "advanced_features.encryption.enabled needs key management: set "
                              "advanced_features.key_management.key_file or passphrase_env") < 0)
                *err = NULL;
            return RHEMA_EINVAL;
        }
        return 0; /* key management off: the endpoints answer 503 */
    }
    rhema_cipher_table_fill(&ks->ciphers, srv->plugins);
    p.cipher = &cp->vt.cipher;
    p.ciphers = &ks->ciphers;
    rc = rhema_keyring_open(&p, &srv->keyring, kerr);
    if (rc) {
        if (asprintf(err, "keyring: %s", kerr) < 0)
            *err = NULL;
        srv->keyring = NULL;
        return rc;
    }
    struct rhema_keyring_stats st;
    if (rhema_keyring_stats(srv->keyring, &st) == 0) {
        rhema_log(RHEMA_LOG_NOTICE, "keys", "keyring open: %zu version(s), current %u (%s)",
                  st.versions, st.current_version, cp->name);
        rhema_keyring_stats_release(&st);
    }
    return 0;
}

static void on_maintain(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct rhema_server *srv = arg;
    char err[RHEMA_KEYRING_ERR_MAX];
    int rotated = 0;
    uint64_t t0 = rhema_monotonic_ns();
    int rc = rhema_keyring_maintain(srv->keyring, &rotated, err);
    if (rotated)
        rhema_perfmon_rotation(srv->perfmon, rhema_monotonic_ns() - t0);
    if (rc != 0)
        rhema_log(RHEMA_LOG_ERROR, "keys", "scheduled rotation failed: %s", err);
    else if (rotated) {
        rhema_log(RHEMA_LOG_NOTICE, "keys", "rotated the key (rotation.interval_hours)");
        rhema_audit_event("keyring.rotated", NULL, NULL, json_pack("{s:s}", "trigger", "schedule"));
    }
}

#define KEY_BACKUP_FIRST_DELAY_MS 5000u   /* not in the first seconds after startup */
#define KEY_BACKUP_RETRY_MS (600u * 1000u) /* after a failure, at most this long */

static void arm_ms(struct event *ev, uint64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000u), (suseconds_t)(ms % 1000u) * 1000};
    evtimer_add(ev, &tv);
}

static uint64_t backup_every_ms(const struct rhema_keys *ks)
{
    return (uint64_t)ks->backup_interval_hours * 3600u * 1000u;
}

/*
 * One scheduled backup: write it under its automatic name, then prune the
 * automatic backups (retention_count, retention_days).  0 or a RHEMA_E*
 * code, logged here.
 */
static int backup_scheduled(struct rhema_server *srv, uint64_t now_ms)
{
    struct rhema_keys *ks = state_of(srv);
    char err[RHEMA_KEYRING_ERR_MAX], name[RHEMA_KEYBACKUP_AUTO_MAX];
    size_t pruned = 0;
    int dirfd, rc;
    if ((rc = rhema_keybackup_dir_open(ks->backup_dir, &dirfd, err)) == 0) {
        rc = rhema_keybackup_write_auto(srv->keyring, dirfd, now_ms, name, err);
        if (rc == 0) {
            rhema_log(RHEMA_LOG_NOTICE, "keys", "scheduled keyring backup written to %s/%s",
                      ks->backup_dir, name);
            rhema_audit_event("keyring.backed_up", NULL, NULL,
                              json_pack("{s:s,s:s}", "trigger", "schedule", "name", name));
            if (rhema_keybackup_prune(dirfd, ks->retention_count, ks->retention_days, now_ms,
                                      &pruned, err) != 0)
                rhema_log(RHEMA_LOG_ERROR, "keys", "pruning key backups: %s", err);
            if (pruned)
                rhema_log(RHEMA_LOG_NOTICE, "keys",
                          "pruned %zu key backup(s) from %s (retention_count %lld, "
                          "retention_days %lld)",
                          pruned, ks->backup_dir, (long long)ks->retention_count,
                          (long long)ks->retention_days);
        }
        close(dirfd);
    }
    if (rc)
        rhema_log(RHEMA_LOG_ERROR, "keys", "scheduled keyring backup failed: %s", err);
    return rc;
}

static void on_backup(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct rhema_server *srv = arg;
    struct rhema_keys *ks = state_of(srv);
    uint64_t every = backup_every_ms(ks);
    if (backup_scheduled(srv, rhema_realtime_ms()) != 0 && every > KEY_BACKUP_RETRY_MS)
        every = KEY_BACKUP_RETRY_MS;
    arm_ms(ks->backup_ev, every);
}

int rhema_keys_start_timers(struct rhema_server *srv, struct event_base *base)
{
    struct rhema_keys *ks = state_of(srv);
    if (!srv->keyring || !ks)
        return 0;
    struct timeval minute = {60, 0};
    ks->maintain_ev = event_new(base, -1, EV_PERSIST, on_maintain, srv);
    if (!ks->maintain_ev || event_add(ks->maintain_ev, &minute) != 0)
        return RHEMA_ENOMEM;
    if (ks->backup_enabled) {
        /* the first when the newest automatic backup says one is due, so a
         * restart never postpones a backup by a whole interval */
        char err[RHEMA_KEYRING_ERR_MAX];
        uint64_t now = rhema_realtime_ms(), delay = KEY_BACKUP_FIRST_DELAY_MS, last = 0;
        int dirfd;
        if (rhema_keybackup_dir_open(ks->backup_dir, &dirfd, err) == 0) {
            last = rhema_keybackup_newest(dirfd);
            close(dirfd);
        }
        if (last && last + backup_every_ms(ks) > now + delay)
            delay = last + backup_every_ms(ks) - now;
        ks->backup_ev = evtimer_new(base, on_backup, srv);
        if (!ks->backup_ev)
            return RHEMA_ENOMEM;
        arm_ms(ks->backup_ev, delay);
        rhema_log(RHEMA_LOG_INFO, "keys",
                  "keyring backups every %lld h into %s (next in %llu s), keeping %lld",
                  (long long)ks->backup_interval_hours, ks->backup_dir,
                  (unsigned long long)(delay / 1000u), (long long)ks->retention_count);
    }
    return 0;
}

void rhema_keys_close(struct rhema_server *srv)
{
    struct rhema_keys *ks = state_of(srv);
    if (ks) {
        if (ks->maintain_ev)
            event_free(ks->maintain_ev);
        if (ks->backup_ev)
            event_free(ks->backup_ev);
        free(ks->backup_dir);
        free(ks);
        srv->keys = NULL;
    }
    rhema_keyring_close(srv->keyring);
    srv->keyring = NULL;
}
