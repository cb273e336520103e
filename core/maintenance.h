/*
 * maintenance -- periodic storage work timed by the main thread (DESIGN.md §4):
 * scheduled backups and their pruning, retention cleanup, and the data-size
 * gauge behind persistence.max_data_size_bytes.
 *
 * rhema_maintenance_start() connects its own storage connection (the main
 * thread's, for the gauge; workers keep theirs) and arms libevent timers on
 * the main event base:
 *   backups   when persistence.enable_backups: every backup_interval_hours
 *             a snapshot through the plugin's backup() into
 *             <backup_directory>/rhema-<backend>-<UTC yyyymmddThhmmssZ>.bak
 *             (a directory for the file backend; "-N" before ".bak" when
 *             that second is taken), the directory created 0750.  The first
 *             one is due one interval after the newest existing backup of
 *             this backend, and at least a few seconds after startup, so a
 *             daemon that restarts often still backs up on schedule.  After
 *             each backup, backups of this backend whose name is older than
 *             backup_retention_days are removed -- never the newest one, and
 *             nothing that does not match the pattern.
 *   cleanup   when persistence.enable_cleanup: every cleanup_interval_hours
 *             (the first run shortly after startup), each registered
 *             cleanup hook runs with the cutoff now - data_retention_days:
 *             first the sessions' (rhema_session_cleanup(), session.h:
 *             Completed and Cancelled sessions not updated since), which
 *             rhema_maintenance_start() registers itself, then the others
 *             (rhemad registers rhema_consensus_cleanup(): applied log
 *             entries).  What each store keeps and how is its own business.
 *   gauge     every RHEMA_MAINTENANCE_GAUGE_MS (or, on a store whose
 *             stats() takes long, 50 times what the last one took, at most
 *             a minute) the plugin's stats(NULL) bytes (keys + values of
 *             live entries) into an atomic that the workers read through
 *             rhema_maintenance_over_limit().
 *   agents    every ai_service.agent_management.agent_timeout_seconds / 4
 *             (0.25 s .. 15 s) rhema_agent_sweep() (agents.h) on the main
 *             thread's connection: heartbeat timeouts -> Offline, task
 *             timeouts -> Failed.  Every node runs it; the compare-and-set
 *             on the agent record makes one of them win each transition.
 * Every run is logged: files written and pruned, sessions removed, errors.
 *
 * Threads: start, stop, the *_now and *_start calls, add_cleanup and the
 * timers run on the main thread only.  A scheduled backup or cleanup runs
 * on a thread of its own with its own storage connection (one such job at
 * a time; a job due while the other runs is retried a minute later), so
 * that the main thread's heartbeats and lease renewals never wait for it;
 * stop waits for a running job.  cleanup_now blocks the main
 * thread (tests and tools).  over_limit, account and data_size may be
 * called from any thread.
 */
#ifndef RHEMA_CORE_MAINTENANCE_H
#define RHEMA_CORE_MAINTENANCE_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>
#include <rhema/storage.h>

struct rhema_server;
struct rhema_maintenance;

#define RHEMA_MAINTENANCE_GAUGE_MS 2000 /* data-size gauge refresh period (at least) */

int rhema_maintenance_start(struct rhema_server *srv, struct event_base *base,
                            struct rhema_maintenance **out, char **err);
/* Cancel the timers, disconnect, free.  NULL is a no-op.  Before event_base_free(). */
void rhema_maintenance_stop(struct rhema_maintenance *m);

/*
 * Take a backup on a thread of its own (its own storage connection), as the
 * scheduled backups do, so that the main thread's timers -- lease renewal,
 * heartbeats -- keep running while a large database is copied.  done(arg,
 * rc, path) is called on the main thread when it ends (path NULL on
 * failure), or from rhema_maintenance_stop(), which waits for it.
 * RHEMA_ECONFLICT while a backup is running.  Main thread only; the base
 * must have been made after evthread_use_pthreads().
 */
typedef void (*rhema_maintenance_backup_fn)(void *arg, int rc, const char *path);
int rhema_maintenance_backup_start(struct rhema_maintenance *m, rhema_maintenance_backup_fn done,
                                   void *arg);
/* The retention cleanup the same way (done gets path NULL); RHEMA_ECONFLICT while a job runs. */
int rhema_maintenance_cleanup_start(struct rhema_maintenance *m,
                                    rhema_maintenance_backup_fn done, void *arg);
/* 1 while a background job (backup or cleanup) runs. */
int rhema_maintenance_backup_running(const struct rhema_maintenance *m);

/*
 * 1 when max_data_size_bytes > 0 and the stored size plus incoming_bytes
 * would exceed it: the caller refuses the write (507 Insufficient Storage)
 * before changing anything.  0 otherwise, and always for m NULL.  The size
 * is the last gauge reading plus what account() added since, so a burst
 * can overshoot by what lands between two refreshes at most.
 */
int rhema_maintenance_over_limit(const struct rhema_maintenance *m, size_t incoming_bytes);
/* Add an accepted write's growth (or a delete's shrink) until the next refresh. */
void rhema_maintenance_account(struct rhema_maintenance *m, int64_t delta_bytes);
/* The current estimate of the stored bytes. */
uint64_t rhema_maintenance_data_size(const struct rhema_maintenance *m);

/*
 * A cleanup hook: remove what is older than cutoff_ms (ms since the epoch)
 * on conn, count it in *removed; 0 or a negative code and *err.
 * Hooks run in registration order; the sessions' is the first.
 */
typedef int (*rhema_maintenance_cleanup_fn)(void *arg, const struct rhema_storage_plugin *vt,
                                            rhema_storage_conn *conn, uint64_t cutoff_ms,
                                            size_t *removed, char **err);
int rhema_maintenance_add_cleanup(struct rhema_maintenance *m, const char *name,
                                  rhema_maintenance_cleanup_fn fn, void *arg);
/* Run the cleanup now (every hook); for tests and admin tools. */
/*
 * Runs since start (GET /metrics), scheduled or asked for, by kind and
 * outcome: runs[kind][0] succeeded, runs[kind][1] failed.  NULL m: zeros.
 */
#define RHEMA_MAINTENANCE_BACKUP 0
#define RHEMA_MAINTENANCE_CLEANUP 1
#define RHEMA_MAINTENANCE_KINDS 2
void rhema_maintenance_runs(struct rhema_maintenance *m,
                            uint64_t runs[RHEMA_MAINTENANCE_KINDS][2]);
/* Whether the last run of kind failed, and when it ended (0: never ran).  NULL m: 0, 0. */
void rhema_maintenance_last(struct rhema_maintenance *m, int kind, int *failed, uint64_t *at_ms);
int rhema_maintenance_cleanup_now(struct rhema_maintenance *m, size_t *removed, char **err);

/* ---- building blocks (also used by rhemactl and the tests) ---- */

#define RHEMA_BACKUP_NAME_MAX 256

struct rhema_backup_file {
    char name[RHEMA_BACKUP_NAME_MAX]; /* the file (or directory) name in the directory */
    char backend[65];
    uint64_t taken_ms;                /* from the name, UTC */
    uint64_t bytes;                   /* the file, or the sum of the directory's files */
    int is_dir;
};

/*
 * 0 when name is a backup name, "rhema-<backend>-<yyyymmddThhmmssZ>[-N].bak",
 * filling backend (when not NULL) and *taken_ms (when not NULL); -1 when not.
 */
int rhema_backup_name_parse(const char *name, char backend[65], uint64_t *taken_ms);
/*
 * The backups in dir (of `backend`, or of every backend when NULL), newest
 * first.  *out is malloc'd (free it).  A missing dir is an empty list.
 */
int rhema_backup_list(const char *dir, const char *backend, struct rhema_backup_file **out,
                      size_t *n, char **err);
/*
 * Remove the backups of `backend` in dir taken before now_ms minus
 * retention_days, keeping the newest whatever its age.  *pruned (may be
 * NULL) counts them.  Other files are never touched.
 */
int rhema_backup_prune(const char *dir, const char *backend, int retention_days, uint64_t now_ms,
                       size_t *pruned, char **err);
/*
 * Create dir (0750, parents too) and write a backup of the store through
 * conn into a fresh name of the pattern (now_ms as its time); the path to
 * path_out.
 */
int rhema_backup_create(const struct rhema_storage_plugin *vt, rhema_storage_conn *conn,
                        const char *backend, const char *dir, uint64_t now_ms, char *path_out,
                        size_t cap, char **err);
#endif /* RHEMA_CORE_MAINTENANCE_H */
