/*
 * commit -- the writer thread: group commit across every worker.
 *
 * With a storage plugin that implements group(), workers do not run
 * session writes themselves.  They validate a request, hand the write (a
 * struct rhema_session_op) to the committer, and go back to their event
 * loops.  The committer thread, on a storage connection of its own, takes
 * everything queued since its last commit and runs it as one group
 * (rhema_session_ops_run: one transaction, one commit), then hands each job
 * back through its done() callback; the worker that submitted it sends
 * the reply.  While one group commits, the
 * next one fills up -- the classic group commit of databases, and what
 * keeps write throughput up when every write must reach the disk.
 *
 * Threads: submit from any thread.  The committer calls each job's done()
 * on its own thread once the job's write ran (op.rc says how it went), in
 * the order the jobs were submitted; done() takes the job back and must
 * not block (the sessions API posts it to its worker's mailbox, mailbox.h,
 * and the worker answers the request).  The committer knows nothing of
 * workers or HTTP.
 */
#ifndef RHEMA_CORE_COMMIT_H
#define RHEMA_CORE_COMMIT_H

#include "session.h"

/* A write for the committer, embedded in the submitter's own struct. */
struct rhema_commit_job {
    struct rhema_commit_job *next;                  /* the committer's queue */
    void (*done)(struct rhema_commit_job *job);     /* see above; required */
    struct rhema_session_op op;
};

struct rhema_committer;

/*
 * Connect a storage connection of its own (vt->connect on inst) and start
 * the committer's thread.  0, or a negative code and *err (malloc'd).
 */
int rhema_committer_start(const struct rhema_storage_plugin *vt, rhema_storage_instance *inst,
                          struct rhema_committer **out, char **err);
/*
 * What its store shares with the workers' (before the first submit): the
 * change feed its writes add records to (watch/feed.h) and the sessions'
 * access counts its answers include and a delete clears (session_access.h).
 */
struct rhema_access_table;
void rhema_committer_set_shared(struct rhema_committer *c, struct rhema_feed *feed,
                                struct rhema_access_table *access);
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
