/*
 * mailbox -- hand work to a thread that runs a libevent loop.
 *
 * Any thread posts a piece of mail; the mailbox's owner, on its own event
 * base, later calls each mail's deliver() in the order it was posted.
 * The workers use one so that the committer thread (commit.h) can give a
 * finished write back to the worker that must answer it, without knowing
 * anything of workers or HTTP: the write's completion callback posts it.
 *
 * A mail is embedded in the caller's own struct (container_of style); the
 * mailbox never allocates or frees one.  deliver() owns the mail once it
 * is called.
 *
 * Threads: post from any thread; init, drain and release on the owner's
 * thread (release also after the owner's loop stopped: it delivers what
 * is left first).
 */
#ifndef RHEMA_CORE_MAILBOX_H
#define RHEMA_CORE_MAILBOX_H

#include <pthread.h>

struct event;
struct event_base;

struct rhema_mail {
    struct rhema_mail *next;
    void (*deliver)(struct rhema_mail *m); /* on the owner's thread */
};

struct rhema_mailbox {
    pthread_mutex_t lock;
    struct rhema_mail *head, **tail; /* under lock; tail NULL: not initialised */
    struct event *ev;                /* activated when the first mail arrives */
};

/* 0, or RHEMA_ENOMEM.  base must have been made after evthread_use_pthreads(). */
int rhema_mailbox_init(struct rhema_mailbox *mb, struct event_base *base);
/* Queue m; wakes the owner's loop when the mailbox was empty. */
void rhema_mailbox_post(struct rhema_mailbox *mb, struct rhema_mail *m);
/* Deliver everything queued now (the owner's event does this by itself). */
void rhema_mailbox_drain(struct rhema_mailbox *mb);
/* Deliver what is left, then free the event.  A zeroed mailbox is a no-op. */
void rhema_mailbox_release(struct rhema_mailbox *mb);

#endif /* RHEMA_CORE_MAILBOX_H */
