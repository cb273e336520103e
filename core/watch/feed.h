/*
 * feed -- the change feed (issue 12, item 1): a record per change, in the
 * change's own batch, and one thread per node that follows the records.
 *
 * Records.  A write that changes a session, a message, an agent ... adds a
 * record to its own batch with rhema_feed_write(): a sequenced PUT
 * (RHEMA_WRITE_SEQUENCED) in namespace "events" with the empty prefix, so
 * its key is the 20 digits of its version.  Placed right after the
 * change's PUT, it shares that PUT's version: the event's revision is the
 * resource's new version (etcd's mod_revision).  A delete's record takes a
 * fresh version.  Revisions strictly increase; they are not consecutive.
 * The record's value is compact JSON: type, id, session, agent,
 * recipients, ts (unix ms), and "versioned":true when its revision is the
 * changed resource's version (answered as "version").
 *
 * The feed thread (rhema_feed_open) has a storage connection of its own.
 * It is woken right after a local commit that carried a record
 * (rhema_feed_wake, from the committing thread), by the plugin's watch()
 * when it has one, and every coordination.event_poll_ms otherwise.  It
 * reads the records after the last one it saw, in bounded pages, into a
 * ring of recent events (bounded by count and bytes), and activates the
 * event each worker subscribed (rhema_feed_subscribe) so that its waiters
 * (core/api/api_events.c) take what they need from the ring.  A waiter
 * behind the ring reads the store on its own connection
 * (rhema_feed_scan).
 *
 * Compaction (rhema_feed_compact, from the maintenance pass) deletes the
 * records older than coordination.event_retention_seconds in bounded
 * batches and, in each batch, puts "compacted" = the highest revision
 * deleted into namespace "events.meta".
 *
 * Threads: rhema_feed_wake, _subscribe, _unsubscribe, _read and _head from
 * any thread; open and close on the main thread.
 */
#ifndef RHEMA_CORE_WATCH_FEED_H
#define RHEMA_CORE_WATCH_FEED_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <rhema/storage.h>

#define RHEMA_FEED_NS "events"
#define RHEMA_FEED_META_NS "events.meta"
#define RHEMA_FEED_TYPE_MAX 32

struct event;
struct rhema_server;
struct rhema_feed;

/* What a record says; NULL members are left out. */
struct rhema_feed_fields {
    const char *type;        /* "session.created" ... (required) */
    const char *id;          /* the resource's id (required) */
    int versioned;           /* 1: the record follows the change's PUT in its batch */
    const char *session;     /* a session, or a message's session */
    const char *agent;       /* an agent, or a message's sender */
    json_t *recipients;      /* a message's recipient_ids (array of strings), or NULL */
    const char *from, *to;   /* a status change (agent.status) */
    uint64_t version;        /* a resource's own version number when it is not the
                              * storage version (configurations); 0: none */
};

/* The record's value: compact JSON text (malloc'd; NULL when out of memory). */
char *rhema_feed_record(const struct rhema_feed_fields *f, size_t *len);
/*
 * Fill *w as the sequenced PUT of a record whose value is text (len bytes;
 * the caller keeps it alive until the batch ran).  Place it right after the
 * change's PUT for the record to share its version.
 */
void rhema_feed_write(struct rhema_storage_write *w, const char *text, size_t len);
/* 1 when w is a feed record (rhema_feed_write made it). */
int rhema_feed_write_is_record(const struct rhema_storage_write *w);

/*
 * An event as clients see it, from a record's key version and value:
 * {"revision":rev,"type",...,"version":rev when versioned,...}.  A new
 * reference, or NULL when the value is not a record.
 */
json_t *rhema_feed_event(uint64_t rev, const void *value, size_t len);
/*
 * The same event's compact text, spliced from the record's text without a
 * parse or a dump (the feed thread's cost per record): malloc'd, its length
 * in *len; NULL when the value is not an object (then dump the event).
 */
char *rhema_feed_event_text(uint64_t rev, const char *value, size_t len, size_t *out_len);

/* 1 when the event passes the filters (NULL: any).  types: a comma list of
 * exact types or prefixes ending in '.'; agent matches agent or recipients. */
int rhema_feed_match(json_t *ev, const char *types, const char *session, const char *agent);

/*
 * The ring of recent events, in revision order, bounded by count and by
 * bytes (of the event texts).  Not locked: the feed locks around it.
 */
struct rhema_feed_ring_entry {
    uint64_t rev;
    json_t *ev;     /* the event (read-only once in the ring) */
    char *text;     /* its compact JSON text */
    size_t len;
};
struct rhema_feed_ring {
    struct rhema_feed_ring_entry *e;
    size_t cap, first, n;
    size_t bytes, max_bytes;
    uint64_t floor; /* every event with revision > floor is in the ring (or not yet read) */
};
int rhema_feed_ring_init(struct rhema_feed_ring *r, size_t cap, size_t max_bytes, uint64_t floor);
void rhema_feed_ring_release(struct rhema_feed_ring *r);
/*
 * Append (takes ev's reference) with its text (copied; NULL: ev dumped here);
 * evicts the oldest to stay in bounds.  0 or RHEMA_ENOMEM.
 */
int rhema_feed_ring_push(struct rhema_feed_ring *r, uint64_t rev, json_t *ev, const char *text,
                         size_t len);
/* The entry at position i (0: oldest) or NULL. */
const struct rhema_feed_ring_entry *rhema_feed_ring_at(const struct rhema_feed_ring *r, size_t i);
/* The position of the first entry with revision > after (n when none). */
size_t rhema_feed_ring_find(const struct rhema_feed_ring *r, uint64_t after);

/*
 * Start the feed: connect, find the head (the last record, without reading
 * the feed), start the thread and the plugin's watch().  0, or a negative
 * code and *err.  The plugin must be of storage minor 3 (checked at start:
 * rhema_feed_check).
 */
int rhema_feed_open(struct rhema_server *srv, struct rhema_feed **out, char **err);
/* Stop the thread and watch(), disconnect, free.  NULL is a no-op. */
void rhema_feed_close(struct rhema_feed *f);
/* coordination.change_feed on a plugin that cannot sequence: refused (-t and start). */
int rhema_feed_check(const struct rhema_server *srv, char **err);
/*
 * Work to run on the feed thread with each compaction pass, on its
 * connection, at now_ms (rhemad sets the inbox expiry, inbox.h): 0 or a
 * negative code and *err; *removed counts what it removed.  Main thread,
 * after rhema_feed_open; name labels its log lines.  NULL f: a no-op.
 */
typedef int rhema_feed_pass_fn(const struct rhema_storage_plugin *vt, rhema_storage_conn *conn,
                               uint64_t now_ms, size_t *removed, char **err);
void rhema_feed_set_pass(struct rhema_feed *f, const char *name, rhema_feed_pass_fn *fn);
/* Something committed a record: read the feed now.  Any thread. */
void rhema_feed_wake(struct rhema_feed *f);
/*
 * event_active(ev) after each batch of new events (ev is made on a
 * worker's base with event_new(base, -1, 0, cb, arg)).  One per worker id.
 */
int rhema_feed_subscribe(struct rhema_feed *f, int worker_id, struct event *ev);
void rhema_feed_unsubscribe(struct rhema_feed *f, int worker_id);
/* The last revision the feed has seen. */
uint64_t rhema_feed_head(struct rhema_feed *f);

/*
 * Events after `after` from the ring: cb(ctx, rev, ev, text, len) for each,
 * in order, until it returns nonzero or max (0: no limit) were given.
 * Returns how many were given (>= 0), or RHEMA_ENOTFOUND when `after` is
 * below the ring's floor (the caller reads the store: rhema_feed_scan).  *head: the feed's head.  cb
 * runs under the ring's read lock: it copies what it keeps, quickly.
 */
typedef int rhema_feed_cb(void *ctx, uint64_t rev, json_t *ev, const char *text, size_t len);
int rhema_feed_read(struct rhema_feed *f, uint64_t after, size_t max, rhema_feed_cb *cb, void *ctx,
                    uint64_t *head);

/*
 * Events after `after` from the store, on the caller's connection, at most
 * `limit` records (a bounded page); *last: the revision of the last record
 * visited (after, when none); *visited (NULL: not wanted): the keys the
 * scan visited, fewer than `limit` when it reached the end.  0 or a storage
 * error.
 */
int rhema_feed_scan(const struct rhema_storage_plugin *vt, rhema_storage_conn *conn,
                    uint64_t after, size_t limit, rhema_feed_cb *cb, void *ctx, uint64_t *last,
                    size_t *visited);
/* The compacted revision ("events.meta"/"compacted"; 0: none).  0 or an error. */
int rhema_feed_compacted(const struct rhema_storage_plugin *vt, rhema_storage_conn *conn,
                         uint64_t *out);
/* The oldest revision still kept (0: the feed is empty). */
int rhema_feed_oldest(const struct rhema_storage_plugin *vt, rhema_storage_conn *conn,
                      uint64_t *out);

/*
 * The maintenance pass: delete the records older than cutoff_ms, in
 * batches of at most `batch` records, each with the new "compacted".
 * *removed counts them.  0 or an error (with *err).
 */
int rhema_feed_compact(const struct rhema_storage_plugin *vt, rhema_storage_conn *conn,
                       uint64_t cutoff_ms, size_t batch, size_t *removed, char **err);

#endif /* RHEMA_CORE_WATCH_FEED_H */
