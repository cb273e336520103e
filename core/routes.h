/*
 * routes -- the HTTP API: path matching and the handlers of each area.
 */
#ifndef RHEMA_CORE_ROUTES_H
#define RHEMA_CORE_ROUTES_H

#include "http.h"

/* Dispatch a request to its handler (or reply 404 / 405). */
void rhema_route(struct rhema_req *r);

/*
 * Run the writes the worker collected (group commit) and answer them.
 * Called by the worker's flush event at the end of a loop turn, and before
 * a drain.
 */
void rhema_routes_flush(struct rhema_worker *w);
/* Answer 503 to collected writes without running them (worker teardown). */
void rhema_routes_abandon(struct rhema_worker *w);

#endif /* RHEMA_CORE_ROUTES_H */
