/*
 * mailbox -- hand work to a thread that runs a libevent loop (mailbox.h).
 */
#include "rhema_build.h"

#include <string.h>

#include <event2/event.h>
#include <rhema/plugin.h>

#include "mailbox.h"

static void on_mail(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    rhema_mailbox_drain(arg);
}

int rhema_mailbox_init(struct rhema_mailbox *mb, struct event_base *base)
{
    memset(mb, 0, sizeof *mb);
    mb->ev = event_new(base, -1, 0, on_mail, mb);
    if (!mb->ev)
        return RHEMA_ENOMEM;
    pthread_mutex_init(&mb->lock, NULL);
    mb->tail = &mb->head;
    return 0;
}

void rhema_mailbox_post(struct rhema_mailbox *mb, struct rhema_mail *m)
{
    m->next = NULL;
    pthread_mutex_lock(&mb->lock);
    int was_empty = mb->head == NULL;
    *mb->tail = m;
    mb->tail = &m->next;
    pthread_mutex_unlock(&mb->lock);
    if (was_empty)
        event_active(mb->ev, EV_TIMEOUT, 0);
}

void rhema_mailbox_drain(struct rhema_mailbox *mb)
{
    pthread_mutex_lock(&mb->lock);
    struct rhema_mail *list = mb->head;
    mb->head = NULL;
    mb->tail = &mb->head;
    pthread_mutex_unlock(&mb->lock);
    while (list) {
        struct rhema_mail *m = list;
        list = m->next;
        m->deliver(m);
    }
}

void rhema_mailbox_release(struct rhema_mailbox *mb)
{
    if (!mb->tail)
        return;
    rhema_mailbox_drain(mb);
    event_free(mb->ev);
    pthread_mutex_destroy(&mb->lock);
    memset(mb, 0, sizeof *mb);
}
