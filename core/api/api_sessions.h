/*
 * api_sessions -- the HTTP API of coordination sessions (DESIGN.md §6):
 *   PUT/GET/DELETE /v1/sessions/{id}          CoordinationSession; ETag, If-Match,
 *                                             If-None-Match (GET: 304; PUT *: create only)
 *   GET  /v1/sessions?status=&participant=&limit=&cursor=
 *   POST /v1/sessions/{id}/messages           append an AgentMessage
 *
 * Why only sessions go through the committer (commit.h): sessions are the
 * write-heavy resource -- every message an agent sends is an append -- and
 * each write must reach the disk before its answer.  With a backend that
 * implements group(), a worker validates the request, hands the write to
 * the committer thread and returns to its loop; the committer runs the
 * writes of every worker as one transaction, so many appends share one
 * commit (bench/put_session.lua on SQLite: 5.5k PUT/s with per-worker
 * groups, 14.6k/s with the committer).  The committer runs only
 * struct rhema_session_op (session.h); the other resources' writes are
 * read-modify-write steps of their own stores (consensus log matching,
 * agent transitions, the service registry) that would each need an op
 * kind there.  Until a benchmark shows one of them write-bound, they
 * write synchronously on the worker's own storage connection.
 *
 * Reads of one session (GET /v1/sessions/{id} without a query) are
 * answered in batches (issue 14): the GETs one turn of a worker's event
 * loop brings are set aside (rhema_req_defer) and answered together by one
 * rhema_session_get_many() -- one get_many() of the backend, one round
 * trip on PostgreSQL and Redis for all of them -- from an event the first
 * one activates, which runs after the events already active (the other
 * connections' requests of the turn) and before the loop waits again.
 * The worker then waits for one round trip a turn instead of one a GET.
 */
#ifndef RHEMA_CORE_API_SESSIONS_H
#define RHEMA_CORE_API_SESSIONS_H

#include "routes.h"

extern const struct rhema_route rhema_sessions_routes[];

/* Answer the reads a worker set aside and free the batch (the worker stops: http.c). */
void rhema_session_reads_release(struct rhema_worker *w);

#endif /* RHEMA_CORE_API_SESSIONS_H */
