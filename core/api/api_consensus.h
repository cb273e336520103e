/*
 * api_consensus -- the HTTP API of the consensus store (DESIGN.md §6):
 *   GET  /v1/consensus                      nodes: term, last index, commit index, counts
 *   GET  /v1/consensus/{node}/state         ConsensusState with metadata; ETag
 *   PUT  /v1/consensus/{node}/state         create (201) or update (200); If-Match
 *   POST /v1/consensus/{node}/entries       one entry or an array (Raft log matching)
 *   GET  /v1/consensus/{node}/entries       ?from=&to=&limit=&cursor= in index order
 *   POST /v1/consensus/{node}/commit        {"index": N}, monotonic
 *   POST /v1/consensus/{node}/applied       {"index": N}, monotonic
 * Handlers run on the worker thread and call storage synchronously through
 * r->worker->store (consensus.h).  The writes are fenced by the pipeline
 * (X-Rhema-Epoch, DESIGN.md §7), like every write.
 */
#ifndef RHEMA_CORE_API_CONSENSUS_H
#define RHEMA_CORE_API_CONSENSUS_H

#include "routes.h"

extern const struct rhema_route rhema_consensus_routes[];

#endif /* RHEMA_CORE_API_CONSENSUS_H */
