/*
 * session -- coordination sessions (DESIGN.md §5) on a storage connection.
 *
 * Layout in the storage plugin:
 *   sessions              id -> the record: the session's JSON fields plus
 *                         created_at, updated_at, size_bytes
 *   sessions.status       "<Status>/<id>"      -> ""   (index)
 *   sessions.participant  "<participant>/<id>" -> ""   (index)
 *   sessions.access       id -> "<count> <last_accessed_ms>"
 * A record and its index entries change in one batch, so an index never
 * disagrees with the records.  The record's storage version is its ETag.
 *
 * access_count / last_accessed are kept outside the versioned record (a read
 * must not change the ETag), counted in memory in a table the workers
 * share and written to sessions.access at least once a second by a thread
 * of their own (session_access.h): a read never writes, and a crash can
 * lose up to a second of access counts, never a session.
 *
 * The generic store layer every module uses (struct rhema_store, records,
 * key lists) is store.h; rhema_store_flush_access() and
 * rhema_store_release() are implemented here, with the access counts.  A
 * struct rhema_store belongs to one thread (it wraps that thread's storage
 * connection); only the access table it points to is shared (and locks).
 */
#ifndef RHEMA_CORE_SESSION_H
#define RHEMA_CORE_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <rhema/storage.h>

#include "store.h"
#include "util.h"

/*
 * Validation.  Both check every field (type, enum, id syntax, timestamps),
 * refuse unknown fields, fill defaults and return a normalised object
 * (*out, a new reference).  On error they return RHEMA_EINVAL and write a
 * message naming the field into err.
 *   rhema_session_validate: path_id is the id from the URL; a body "id" that
 *   differs is an error.  Stored metadata fields (created_at, version, ...)
 *   are ignored so that a client can PUT back what it read.
 */
int rhema_session_validate(json_t *body, const char *path_id, json_t **out,
                           char err[RHEMA_ERRMSG_MAX]);
int rhema_message_validate(json_t *body, json_t **out, char err[RHEMA_ERRMSG_MAX]);

/*
 * Results (struct rhema_record, store.h) are the record's JSON text with
 * its metadata: the session's fields, created_at, updated_at, size_bytes,
 * version, access_count, last_accessed.
 */

/*
 * Create or replace session `id` with `session` (validated).  if_match: 0
 * any, RHEMA_VERSION_ABSENT create only, else the version that must be
 * current.  *created tells 201 from 200.
 */
int rhema_session_put(struct rhema_store *st, const char *id, json_t *session, uint64_t if_match,
                      struct rhema_record *out, int *created, char err[RHEMA_ERRMSG_MAX]);
/* Read session `id`, counting the access. */
int rhema_session_get(struct rhema_store *st, const char *id, struct rhema_record *out,
                      char err[RHEMA_ERRMSG_MAX]);
/*
 * Read sessions ids[0..n), counting each access, with one get_many() of
 * the backend per RHEMA_SESSION_GET_MANY_MAX of them: rcs[i] and out[i] /
 * errs[i] are what rhema_session_get() of ids[i] would give.
 */
#define RHEMA_SESSION_GET_MANY_MAX (RHEMA_STORAGE_GET_MANY_MAX / 2)
void rhema_session_get_many(struct rhema_store *st, const char *const *ids, size_t n,
                            struct rhema_record *out, int *rcs, char (*errs)[RHEMA_ERRMSG_MAX]);
/*
 * The stored session `id` as JSON (*cur, a new reference, with its stored
 * metadata but not its access counts) and its version, without counting
 * an access: what a PATCH merges into.  RHEMA_ENOTFOUND when absent.
 */
int rhema_session_current(struct rhema_store *st, const char *id, json_t **cur,
                          uint64_t *version, char err[RHEMA_ERRMSG_MAX]);
int rhema_session_delete(struct rhema_store *st, const char *id, uint64_t if_match,
                         char err[RHEMA_ERRMSG_MAX]);
/*
 * Append a validated AgentMessage.  Re-sending a message whose id is already
 * in the session with the same content is a no-op (*appended = 0); the same
 * id with other content is RHEMA_ECONFLICT.  *out is not the session but
 * {"session_id","version","size_bytes","message_count","message"}: the
 * message as stored, with the session's version (out->version, its ETag).
 */
int rhema_session_append_message(struct rhema_store *st, const char *id, json_t *message,
                                 uint64_t if_match, struct rhema_record *out, int *appended,
                                 char err[RHEMA_ERRMSG_MAX]);
/*
 * One page of sessions in id order, filtered by status and/or participant
 * (NULL: any) through the indexes (both: their intersection, walked from
 * the smaller side).  cursor: NULL or the next_cursor of the previous page.
 * *out receives `{"items":[...],"next_cursor":...}` text, with
 * "unreadable":[ids] when records of the page's range could not be read.
 */
int rhema_session_list(struct rhema_store *st, const char *status, const char *participant,
                       size_t limit, const char *cursor, char **out, size_t *out_len,
                       char err[RHEMA_ERRMSG_MAX]);

/*
 * Writes as ops, for group commit: a worker collects the writes that arrive
 * in one turn of its event loop and runs them together, so that they share
 * one storage transaction (struct rhema_storage_plugin.group).
 *   prepare: read the current record, check If-Match, compose the batch
 *            (op->batch); returns 0 when the op finished early (op->rc).
 *   (the caller applies the batches)
 *   finish:  returns 1 when the op lost a race and must be prepared again.
 * rhema_session_ops_run() does all of it for n ops.  On success op->rc is 0
 * and op->rec holds the record (PUT) or the append's answer (APPEND, see
 * rhema_session_append_message); op->created tells 201 from 200;
 * otherwise op->rc and op->err say why.
 */
enum rhema_session_op_kind { RHEMA_SOP_PUT, RHEMA_SOP_DELETE, RHEMA_SOP_APPEND };
/*
 * APPEND: the client sent no timestamp (the server filled in "now"), so a
 * retry of the same message matches the stored one whatever its timestamp.
 */
#define RHEMA_SOP_TS_DEFAULTED 1u
/*
 * PUT: the client sent no started_at; a replace keeps the stored one (it
 * belongs to the session's history), a create takes "now".
 */
#define RHEMA_SOP_STARTED_KEPT 2u

struct rhema_session_op {
    enum rhema_session_op_kind kind;
    char id[RHEMA_ID_MAX + 1];
    json_t *input;      /* PUT: the validated session; APPEND: the message (a reference it owns) */
    uint64_t if_match;  /* 0, RHEMA_VERSION_ABSENT or a version */
    unsigned flags;     /* RHEMA_SOP_* */
    char *input_text;   /* PUT, optional: rhema_session_text(input), made by the caller's
                         * thread so that the committer only splices bytes (owned) */
    size_t input_len;
    struct rhema_storage_batch batch; /* composed by prepare */
    void *priv;
    int attempts;
    int rc;
    char err[RHEMA_ERRMSG_MAX];
    struct rhema_record rec;
    int created;        /* PUT: created; APPEND: appended */
};

int rhema_session_op_prepare(struct rhema_store *st, struct rhema_session_op *op);
int rhema_session_op_finish(struct rhema_store *st, struct rhema_session_op *op, int rc);
void rhema_session_ops_run(struct rhema_store *st, struct rhema_session_op **ops, size_t n);
/* Free what the op holds (input, state, record). */
void rhema_session_op_release(struct rhema_session_op *op);

/* A validated session as compact JSON text (malloc'd), for op->input_text. */
char *rhema_session_text(json_t *session, size_t *len);

/* 1 when s is a session status name (Active, Paused, Completed, Cancelled). */
int rhema_session_status_valid(const char *s);

/* ---- retention ---- */

/*
 * Delete the Completed and Cancelled sessions whose updated_at is before
 * cutoff_ms, through the session store; *removed counts them.  A session
 * changed since it was read (version conflict) or already gone is skipped.
 */
int rhema_cleanup_sessions(const struct rhema_storage_plugin *vt, rhema_storage_conn *conn,
                           uint64_t cutoff_ms, size_t *removed, char **err);
/* The same as a maintenance cleanup hook (maintenance.h; arg unused). */
int rhema_session_cleanup(void *arg, const struct rhema_storage_plugin *vt,
                          rhema_storage_conn *conn, uint64_t cutoff_ms, size_t *removed,
                          char **err);

#endif /* RHEMA_CORE_SESSION_H */
