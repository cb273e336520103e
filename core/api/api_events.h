/*
 * api_events -- watches on the change feed (issue 12, item 2):
 * GET /v1/events as server-sent events or as a long poll, and the
 * blocking queries of resource reads (GET /v1/sessions/{id}?wait=&index=).
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

#include "http.h"
#include "routes.h"

extern const struct rhema_route rhema_events_routes[];

/*
 * The `wait` parameter ("30s", "500ms", "2m" or plain seconds), capped at
 * coordination.max_wait_seconds, into *ms (0 when absent).  0, or -1 after
 * replying 400.
 */
int rhema_events_wait_param(struct rhema_req *r, uint64_t *ms);

/*
 * A blocking query: call answer(r) once an event about session `sid`
 * arrives after `from` (the feed's head read before the caller looked at
 * the resource), or after wait_ms, or at once when the feed is off or out
 * of memory.  r is deferred here; answer() replies to the copy.
 */
void rhema_events_block(struct rhema_req *r, const char *sid, uint64_t from, uint64_t wait_ms,
                        void (*answer)(struct rhema_req *r));
/*
 * A blocking query that may find nothing to answer when woken (an inbox:
 * another consumer took the message): retry(r, final, &recheck) answers r
 * and returns 1, or returns 0 and waits on (never with final set), asking
 * optionally to be called again in *recheck ms (a redelivery time).  It is
 * called on each event of `types` (a types filter as GET /v1/events takes)
 * naming `agent` after `from`, at the recheck time, and finally at wait_ms.
 * Without a feed or memory: retry(r, 1, ...) at once.
 */
void rhema_events_block_retry(struct rhema_req *r, const char *agent, const char *types,
                              uint64_t from, uint64_t wait_ms, uint64_t recheck_ms,
                              int (*retry)(struct rhema_req *r, int final, uint64_t *recheck_ms));
/* The feed's head, for rhema_events_block's `from`; 0 when the feed is off. */
uint64_t rhema_events_head(struct rhema_req *r);

/* The worker drains (SIGTERM): end every stream and answer every waiter now. */
void rhema_events_drain(struct rhema_worker *w);
/* Free the worker's waiters (after its loop stopped). */
void rhema_events_worker_release(struct rhema_worker *w);

#endif /* RHEMA_CORE_API_EVENTS_H */
