/*
 * consensus -- per-node Raft state and replicated logs (DESIGN.md §5) on a
 * storage connection.  rhema does not run Raft itself (DESIGN.md §7): it is
 * the durable store a Raft node keeps its state and log in, and it enforces
 * the log-matching rules so that a buggy or stale caller cannot corrupt a log.
 *
 * Layout in the storage plugin:
 *   consensus.state  "<node>"                  -> the state record (JSON)
 *   consensus.log    "<node>/<index %020llu>"  -> one entry (JSON)
 * The index is zero-padded to 20 digits so that key order is index order
 * (the widest uint64 has 20 digits); "<node>/" never prefixes another
 * node's keys because '/' is not an id character.
 *
 * The state record holds the ConsensusState fields (term, leader_id, state,
 * voted_for, last_log_index, last_log_term, commit_index) and what the
 * server maintains beside them: node_id, applied_index, term_count,
 * leader_changes, last_leader_id, entry_count, bytes, created_at,
 * updated_at.  Its storage version is the ETag.  entry_count and bytes
 * live here so that listing nodes never scans a log.
 *
 * An entry is {index, term, command, data, created_at, committed_at,
 * applied_at, size_bytes}; size_bytes is the length of the compact JSON of
 * the entry's own four fields, and a node's `bytes` is their sum.
 *
 * Atomicity: every write that changes a log also rewrites the state record
 * with a compare-and-set on its version, in the same storage batch.  So
 * concurrent writers of one node serialise on the state record (the loser
 * re-reads and retries), and the log, last_log_index/last_log_term,
 * entry_count and bytes never disagree.  The one exception is a commit or
 * applied mark that covers more than RHEMA_CONSENSUS_STAMP_BATCH entries:
 * it stamps them in several batches, and only the last one advances the
 * index (see rhema_consensus_mark()).
 *
 * A struct rhema_store belongs to one worker thread; nothing here locks.
 */
#ifndef RHEMA_CORE_CONSENSUS_H
#define RHEMA_CORE_CONSENSUS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "store.h" /* struct rhema_store, struct rhema_record, RHEMA_ERRMSG_MAX */

/* Entries stamped (committed_at / applied_at) per storage batch. */
#define RHEMA_CONSENSUS_STAMP_BATCH 1000

/* 1 when s is a Raft role name (Follower, Candidate, Leader). */
int rhema_consensus_role_valid(const char *s);

/*
 * Validation.  Each checks types and ranges, refuses unknown fields, ignores
 * the stored metadata fields (so that a client can send back what it read)
 * and returns a normalised value in *out (a new reference).  On error:
 * RHEMA_EINVAL and a message naming the field in err.
 *
 * rhema_consensus_state_validate: a ConsensusState.  term is required,
 *   state defaults to "Follower", leader_id / voted_for are ids or null.
 *   last_log_index, last_log_term and commit_index are optional (they are
 *   kept by the server from the log); when present they are kept in *out
 *   so that the put can check them.  A body node_id must equal `node`.
 * rhema_consensus_entries_validate: one entry object or a non-empty array
 *   of them; *out is always an array of {index, term, command, data} with
 *   consecutive indexes.  index >= 1, term >= 0, command a non-empty
 *   string, data any JSON (default null).
 */
int rhema_consensus_state_validate(json_t *body, const char *node, json_t **out,
                                   char err[RHEMA_ERRMSG_MAX]);
int rhema_consensus_entries_validate(json_t *body, json_t **out, char err[RHEMA_ERRMSG_MAX]);

/* Read node's state record (with version); RHEMA_ENOTFOUND when unknown. */
int rhema_consensus_state_get(struct rhema_store *st, const char *node, struct rhema_record *out,
                              char err[RHEMA_ERRMSG_MAX]);

/*
 * Create or update node's state from a validated ConsensusState.
 * if_match: 0 any, RHEMA_VERSION_ABSENT create only, else the version that
 * must be current (RHEMA_EPRECONDITION otherwise).  term_count counts real
 * term changes (a node starts at term 0), leader_changes counts changes to
 * a non-null leader_id other than the last non-null one (so a leader that
 * is cleared during an election and then re-elected is not a change).
 * last_log_index / last_log_term belong to the log: a value that differs
 * from the log is RHEMA_ECONFLICT.  commit_index advances only through
 * rhema_consensus_mark(): a value above the current one is RHEMA_ECONFLICT,
 * a lower one is ignored (the index is monotonic).
 */
int rhema_consensus_state_put(struct rhema_store *st, const char *node, json_t *state,
                              uint64_t if_match, struct rhema_record *out, int *created,
                              char err[RHEMA_ERRMSG_MAX]);

/* What an append did. */
struct rhema_consensus_append_result {
    uint64_t appended;  /* entries written (new, or replacing a conflicting one) */
    uint64_t skipped;   /* entries already present with the same index and term */
    uint64_t truncated; /* existing entries dropped by a conflicting term */
};

/*
 * Append validated entries (rhema_consensus_entries_validate's array) to
 * node's log with Raft's log matching, creating the node when unknown:
 *   - an entry whose index and term are already in the log is skipped;
 *   - the first one whose term differs from the existing entry at its index
 *     replaces it, and every later existing entry is dropped (so the log
 *     ends with the request's last entry); replacing an entry at or below
 *     commit_index is RHEMA_ECONFLICT (committed entries are never lost);
 *   - a first index beyond last_log_index + 1 (a gap) is RHEMA_ECONFLICT.
 * New entries, dropped entries and the state record are one storage batch,
 * retried from a fresh read when another writer got in between.  *out is
 * the state record after the append with "appended", "skipped" and
 * "truncated" beside its fields; its version is the state's.
 */
int rhema_consensus_append(struct rhema_store *st, const char *node, json_t *entries,
                           struct rhema_record *out, struct rhema_consensus_append_result *res,
                           char err[RHEMA_ERRMSG_MAX]);

/*
 * One page of node's entries with from <= index <= to (to 0: no bound), in
 * index order, at most limit (0: the default; capped at
 * RHEMA_LIST_LIMIT_MAX).  *out receives `{"items":[...],"next_cursor":...}`
 * text; next_cursor is the next index as a string, or null on the last
 * page.  RHEMA_ENOTFOUND when the node is unknown.
 */
int rhema_consensus_entries(struct rhema_store *st, const char *node, uint64_t from, uint64_t to,
                            size_t limit, char **out, size_t *out_len, char err[RHEMA_ERRMSG_MAX]);

enum rhema_consensus_mark_kind { RHEMA_CONSENSUS_COMMIT, RHEMA_CONSENSUS_APPLIED };

/*
 * Advance node's commit_index (COMMIT) or applied_index (APPLIED) to index
 * and stamp committed_at / applied_at on the entries it newly covers.
 * Monotonic: an index at or below the current one changes nothing
 * (*advanced = 0) and *out reports the current state.  An index beyond the
 * last entry is RHEMA_ECONFLICT; an unknown node RHEMA_ENOTFOUND.
 *
 * Entries are stamped in batches of RHEMA_CONSENSUS_STAMP_BATCH; the last
 * batch also advances the index (compare-and-set on the state record), so
 * the index only ever covers stamped entries.  If the process dies or loses
 * a race between two batches, some entries past the index already carry a
 * stamp; a later mark keeps such a stamp rather than renewing it, so the
 * stamp is the time the entry was first marked.
 */
int rhema_consensus_mark(struct rhema_store *st, const char *node,
                         enum rhema_consensus_mark_kind kind, uint64_t index,
                         struct rhema_record *out, int *advanced, char err[RHEMA_ERRMSG_MAX]);

/*
 * One page of nodes in id order: their state records (term, last_log_index,
 * commit_index, entry_count, bytes ... and version).  cursor: NULL or the
 * next_cursor of the previous page.  *out receives
 * `{"items":[...],"next_cursor":...}` text.
 */
int rhema_consensus_list(struct rhema_store *st, size_t limit, const char *cursor, char **out,
                         size_t *out_len, char err[RHEMA_ERRMSG_MAX]);

/*
 * Compaction (persistence.enable_cleanup, data_retention_days): delete the
 * applied entries of node whose applied_at is before cutoff_ms, from the
 * start of its log on and only as a prefix, so the log stays contiguous;
 * the state's log_start_index (the first index kept) and log_start_term
 * (the term of the entry before it) advance in the same batch, and
 * entry_count/bytes shrink.  An append overlapping compacted indexes counts
 * them as matching (applied entries are committed).  *removed counts what
 * went.  0, or a code and err.
 */
int rhema_consensus_compact(struct rhema_store *st, const char *node, uint64_t cutoff_ms,
                            size_t *removed, char err[RHEMA_ERRMSG_MAX]);

/* rhema_consensus_compact() on every node: a maintenance cleanup hook (arg unused). */
int rhema_consensus_cleanup(void *arg, const struct rhema_storage_plugin *vt,
                            rhema_storage_conn *conn, uint64_t cutoff_ms, size_t *removed,
                            char **err);

#endif /* RHEMA_CORE_CONSENSUS_H */
