/*
 * commit -- the writer thread: group commit across every worker.
 *
 * With a storage plugin that implements group(), workers do not run
 * session writes themselves.  They validate a request, hand the write (a
 * struct rhema_session_op) to the committer, and go back to their event
 * loops.  The committer thread, on a storage connection of its own, takes
 * everything queued since its last commit and runs it as one group
 * (rhema_session_ops_run: one transaction, one commit), then gives each job
 * back to its worker, which sends the reply.  While one group commits, the
 * next one fills up -- the classic group commit of databases, and what
 * keeps write throughput up when every write must reach the disk.
 *
 * Threads: submit from any worker; the committer hands jobs back through
 * each worker's done list and event.  Jobs of one worker are answered in
 * the order they were submitted.
 */
#ifndef RHEMA_CORE_COMMIT_H
#define RHEMA_CORE_COMMIT_H

#include "session.h"

struct rhema_server;
struct rhema_worker;
struct rhema_req;

struct rhema_commit_job {
    struct rhema_commit_job *next;
    struct rhema_worker *worker; /* who answers it */
    struct rhema_req *req;       /* deferred request (rhema_req_defer) */
    struct rhema_session_op op;
};

struct rhema_committer;

/* Connect the committer's storage connection and start its thread. */
int rhema_committer_start(struct rhema_server *srv, struct rhema_committer **out, char **err);
/* Queue a job (the committer owns it until it hands it back). */
void rhema_committer_submit(struct rhema_committer *c, struct rhema_commit_job *job);
/*
 * Run what is still queued, stop the thread, disconnect.  Call after the
 * workers stopped their loops and before they are released.
 */
void rhema_committer_stop(struct rhema_committer *c);

/* Groups and jobs committed so far (for stats). */
void rhema_committer_stats(const struct rhema_committer *c, uint64_t *groups, uint64_t *jobs);

#endif /* RHEMA_CORE_COMMIT_H */
