/*
 * commit -- the writer thread (see commit.h).
 */
#include "rhema_build.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commit.h"
#include "log.h"
#include "util.h"

#define GROUP_MAX 512 /* jobs in one transaction at most */

struct rhema_committer {
    const struct rhema_storage_plugin *vt;
    rhema_storage_conn *conn;
    struct rhema_store store;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct rhema_commit_job *head, **tail; /* queued, under lock */
    size_t queued;
    int stopping;
    atomic_ullong groups, jobs;
};

/* Hand finished jobs back to their submitters, in order. */
static void deliver(struct rhema_commit_job *list)
{
    while (list) {
        struct rhema_commit_job *j = list;
        list = j->next;
        j->next = NULL;
        j->done(j);
    }
}

/* Run one group of jobs (a list of at most GROUP_MAX). */
static void run_group(struct rhema_committer *c, struct rhema_commit_job *list, size_t n)
{
    struct rhema_session_op *stack_ops[64];
    struct rhema_session_op **ops = n <= 64 ? stack_ops : malloc(n * sizeof *ops);
    size_t i = 0;
    struct rhema_commit_job *j;
    if (!ops) {
        for (j = list; j; j = j->next) {
            j->op.rc = RHEMA_ENOMEM;
            snprintf(j->op.err, sizeof j->op.err, "out of memory");
        }
    } else {
        for (j = list; j; j = j->next)
            ops[i++] = &j->op;
        rhema_session_ops_run(&c->store, ops, n);
        if (ops != stack_ops)
            free(ops);
    }
    atomic_fetch_add(&c->groups, 1);
    atomic_fetch_add(&c->jobs, n);
    deliver(list);
}

static void *committer_main(void *arg)
{
    struct rhema_committer *c = arg;
    pthread_setname_np(pthread_self(), "rhema-commit"); /* top -H, perf, gdb */
    for (;;) {
        pthread_mutex_lock(&c->lock);
        while (!c->head && !c->stopping)
            pthread_cond_wait(&c->cond, &c->lock);
        if (!c->head) { /* stopping and nothing left */
            pthread_mutex_unlock(&c->lock);
            break;
        }
        /* take up to GROUP_MAX jobs off the queue */
        struct rhema_commit_job *list = c->head, **cut = &c->head;
        size_t n = 0;
        while (*cut && n < GROUP_MAX) {
            cut = &(*cut)->next;
            n++;
        }
        c->head = *cut;
        *cut = NULL;
        if (!c->head)
            c->tail = &c->head;
        c->queued -= n;
        pthread_mutex_unlock(&c->lock);
        run_group(c, list, n);
    }
    return NULL;
}

int rhema_committer_start(const struct rhema_storage_plugin *vt, rhema_storage_instance *inst,
                          struct rhema_committer **out, char **err)
{
    struct rhema_committer *c = calloc(1, sizeof *c);
    char *serr = NULL;
    if (!c) {
        return rhema_set_error(err, RHEMA_ENOMEM, "committer: out of memory");
    }
    c->vt = vt;
    c->tail = &c->head;
    int rc = vt->connect(inst, &c->conn, &serr);
    if (rc) {
        rhema_set_error(err, rc, "committer: storage connect failed: %s",
                        serr ? serr : rhema_strerror(rc));
        free(serr);
        free(c);
        return rc;
    }
    rhema_store_init(&c->store, vt, c->conn);
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->cond, NULL);
    if (pthread_create(&c->thread, NULL, committer_main, c) != 0) {
        rhema_set_error(err, RHEMA_ENOMEM, "committer: cannot start its thread");
        rhema_store_release(&c->store);
        vt->disconnect(c->conn);
        pthread_mutex_destroy(&c->lock);
        pthread_cond_destroy(&c->cond);
        free(c);
        return RHEMA_ENOMEM;
    }
    *out = c;
    return 0;
}

void rhema_committer_set_shared(struct rhema_committer *c, struct rhema_feed *feed,
                                struct rhema_access_table *access)
{
    c->store.feed = feed;
    c->store.access = access;
}

void rhema_committer_submit(struct rhema_committer *c, struct rhema_commit_job *job)
{
    job->next = NULL;
    pthread_mutex_lock(&c->lock);
    int was_empty = c->head == NULL;
    *c->tail = job;
    c->tail = &job->next;
    c->queued++;
    pthread_mutex_unlock(&c->lock);
    if (was_empty)
        pthread_cond_signal(&c->cond);
}

void rhema_committer_stop(struct rhema_committer *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->lock);
    c->stopping = 1;
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->lock);
    pthread_join(c->thread, NULL);
    rhema_log(RHEMA_LOG_INFO, "commit", "%llu writes in %llu group commits",
              (unsigned long long)atomic_load(&c->jobs),
              (unsigned long long)atomic_load(&c->groups));
    rhema_store_release(&c->store);
    c->vt->disconnect(c->conn);
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->cond);
    free(c);
}

void rhema_committer_stats(const struct rhema_committer *c, uint64_t *groups, uint64_t *jobs)
{
    *groups = c ? atomic_load(&c->groups) : 0;
    *jobs = c ? atomic_load(&c->jobs) : 0;
}
