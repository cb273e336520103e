/*
 * api_events -- watches on the change feed (issue 12, item 2):
 * GET /v1/events as server-sent events or as a long poll, and the
 * blocking queries of resource reads (GET /v1/sessions/{id}, /v1/agents/{id},
 * /v1/services/{service_id} with ?wait=&index=) and of inboxes.
 *
 * Each worker keeps its own waiters (struct rhema_watchers, made with the
 * first one), each with its cursor (the last revision it was given) and
 * its filters.  The feed thread (watch/feed.h) activates one event per
 * worker after it read new events; the worker then gives each waiter what
 * it waits for from the feed's ring.  A waiter behind the ring reads the
 * store on the worker's connection, one bounded page at a time.  An idle
 * waiter costs no CPU: no timer runs for it except its deadline (a long
 * poll, a blocking query) or a comment line every 15 s (a stream).
 *
 * Threads: everything here runs on the worker's own thread.
 */
#ifndef RHEMA_CORE_API_EVENTS_H
#define RHEMA_CORE_API_EVENTS_H

#include <stdint.h>

#include "conditional.h"
#include "http.h"
#include "routes.h"

extern const struct rhema_route rhema_events_routes[];

/*
 * The `wait` parameter ("30s", "500ms", "2m" or plain seconds), capped at
 * coordination.max_wait_seconds, into *ms (0 when absent).  0, or -1 after
 * replying 400.
 */
int rhema_events_wait_param(struct rhema_req *r, uint64_t *ms);

/* What a blocking query waits for: the events passing every filter set (NULL: any). */
struct rhema_events_filter {
    const char *types;   /* a types list as GET /v1/events takes ("agent.", "message.created") */
    const char *session; /* events of that session (its own, its messages') */
    const char *agent;   /* naming that agent (as agent, sender or recipient) */
    const char *id;      /* about the resource of that id (the event's "id") */
};

/*
 * Answer r, or not yet: returns 1 after replying, 0 to wait on (never
 * with final set), asking optionally to be called again in *recheck_ms
 * (0: not before the next event).
 */
typedef int rhema_events_retry_fn(struct rhema_req *r, int final, uint64_t *recheck_ms);

/*
 * The one waiting mechanism of blocking queries (resource reads, inboxes).
 * retry(r, 0, &recheck) is called on each event passing f after `from`
 * (the feed's head read before the caller looked: nothing slips between),
 * at the recheck time it asked for, and retry(r, 1, ...) at wait_ms.
 * Without a feed, while the worker drains, or out of memory: retry(r, 1,
 * ...) at once.  r is deferred here; retry answers the copy.
 */
void rhema_events_block_retry(struct rhema_req *r, const struct rhema_events_filter *f,
                              uint64_t from, uint64_t wait_ms, uint64_t recheck_ms,
                              rhema_events_retry_fn *retry);

/*
 * A resource read with its blocking query (issue 12, item 2; Consul's):
 * `?index=VERSION&wait=30s`.  Without either parameter, answer(r, 1, ..)
 * at once.  A parameter other than index and wait, a malformed index or
 * wait: 400.  Otherwise version(r) reads the resource's version; when that
 * fails (404: absent), when the version is past index, without wait or
 * without the feed: answer at once; else answer on the first event passing
 * f (a change, the deletion: answer then reads 404), or at the end of the
 * wait with the current state.  answer always replies and returns 1.
 */
void rhema_events_resource_get(struct rhema_req *r, const struct rhema_events_filter *f,
                               rhema_current_fn version, rhema_events_retry_fn *answer);

/* The feed's head, for rhema_events_block_retry's `from`; 0 when the feed is off. */
uint64_t rhema_events_head(struct rhema_req *r);

/* The worker drains (SIGTERM): end every stream and answer every waiter now. */
void rhema_events_drain(struct rhema_worker *w);
/* Free the worker's waiters (after its loop stopped). */
void rhema_events_worker_release(struct rhema_worker *w);

#endif /* RHEMA_CORE_API_EVENTS_H */
