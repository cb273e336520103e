/*
 * session_access -- the sessions' access counts (access_count,
 * last_accessed), counted in memory and written by a thread of their own,
 * so that a read never writes and never waits for a writer (issue 14).
 *
 * Why: a GET that counts itself must not write synchronously (a write on a
 * durable backend takes its write lock, and waits behind every other
 * writer), and the write of the counts must not run where reads are served
 * (a worker's event loop stalls all its connections while it writes).
 * Before, each worker kept its own counts and wrote them from its loop once
 * a second: on memory that put 40-70 ms into the GET p99, on SQLite the
 * worker waited for the write lock behind the committer.
 *
 * The table: one per daemon, shared by every worker and the committer, in
 * RHEMA_ACCESS_SHARDS shards each under its own mutex (a read holds one for
 * a hash lookup and an increment, nothing else).  An entry of a session id
 * holds the reads counted since the last flush (delta), those a running
 * flush is writing (inflight), and what the last flush wrote (done), each
 * tagged with the stored version of the access record it applies to: a
 * reader that read the stored record before a flush committed, and looks
 * at the table after, still adds what that flush wrote -- the count it
 * answers never goes back, whichever side of a flush its two steps fall.
 * Counts are per session incarnation (session.h): a session deleted and
 * created again starts from zero, whatever was pending for the old one.
 *
 * The writer: a thread with its own storage connection (rhemad starts it
 * with the workers); at least once a second, and at once when the table
 * passes RHEMA_ACCESS_KICK_AT entries, it reads the stored access records
 * (get_many, RHEMA_STORAGE_GET_MANY_MAX a call), adds the counts, and
 * writes them in one group commit with each record's version as the
 * compare-and-set (another node's or process's flush of the same record
 * makes it read again).  When the write fails the counts go back to the
 * table for the next pass; while the backend stays down, at most
 * RHEMA_ACCESS_MAX entries are kept and reads of further sessions are not
 * counted (access counts are best effort: a crash loses up to a second).
 *
 * Without a shared table (a store of a tool or a unit test) a store keeps
 * a private one, flushed by rhema_store_flush_access() on its own
 * connection (store.h).
 */
#ifndef RHEMA_CORE_SESSION_ACCESS_H
#define RHEMA_CORE_SESSION_ACCESS_H

#include <stddef.h>
#include <stdint.h>

#include <rhema/storage.h>

#define RHEMA_ACCESS_NS "sessions.access"
#define RHEMA_ACCESS_SHARDS 32
#define RHEMA_ACCESS_KICK_AT 65536 /* entries that wake the writer before its second */
#define RHEMA_ACCESS_MAX 262144    /* entries kept at most (the backend down) */
#define RHEMA_ACCESS_TEXT_MAX 80   /* a formatted access record */

/* The stored access record: "<count> <last_ms> <incarnation hex>", and its version. */
struct rhema_access_rec {
    uint64_t count, last_ms, incarnation;
    uint64_t version; /* 0: no record */
};

/* A stored value into *a (all zero but the version when it does not parse). */
void rhema_access_parse(const struct rhema_storage_value *v, struct rhema_access_rec *a);
/* The stored text of a record; its length. */
int rhema_access_format(char *buf, size_t cap, uint64_t count, uint64_t last_ms,
                        uint64_t incarnation);
/* A fresh random incarnation for a new session (never 0). */
uint64_t rhema_access_new_incarnation(void);

struct rhema_access_table;

int rhema_access_table_new(struct rhema_access_table **out);
/* Stop the writer if it runs (its last flush first), free.  NULL is a no-op. */
void rhema_access_table_free(struct rhema_access_table *t);

/*
 * The counts of session id whose stored access record is *a, into *count
 * and *last_ms; when count_this, this read is counted first (at now_ms).
 * Any thread.  Returns 1 when the table has grown past
 * RHEMA_ACCESS_KICK_AT and has no writer (its owner flushes now), else 0.
 */
int rhema_access_count(struct rhema_access_table *t, const char *id,
                       const struct rhema_access_rec *a, int count_this, uint64_t now_ms,
                       uint64_t *count, uint64_t *last_ms);
/* Session id was deleted: forget what is counted for it.  Any thread. */
void rhema_access_forget(struct rhema_access_table *t, const char *id);
/* Entries in the table (any thread; a gauge). */
size_t rhema_access_entries(struct rhema_access_table *t);
/* What the flushes did since the table was made (any thread; counters). */
struct rhema_access_stats {
    uint64_t flushes;  /* passes that wrote or tried to write something */
    uint64_t failed;   /* passes that ended with an error (their counts kept) */
    uint64_t written;  /* reads whose count reached storage */
    uint64_t dropped;  /* reads of sessions deleted (or re-created) before their flush */
};
void rhema_access_stats(struct rhema_access_table *t, struct rhema_access_stats *out);

/*
 * Write the counted reads to storage on conn (see above): 0 or the first
 * storage error (the counts it could not write stay in the table).  One
 * flush at a time; any thread.
 */
int rhema_access_flush(struct rhema_access_table *t, const struct rhema_storage_plugin *vt,
                       rhema_storage_conn *conn);

/*
 * The chunk controller: how many counts one transaction of a flush writes.
 * A transaction's time has a part that grows with its size (the records it
 * reads and writes) and a part that does not (its commit: an fsync, two
 * round trips queued behind the readers of a shared server).  Only the
 * first holds readers longer as a chunk grows; halving the chunk leaves
 * the second alone and doubles the commits -- with the fixed part counted
 * as size, a backend whose commit takes over RHEMA_ACCESS_HOLD_NS (Redis
 * with `appendfsync always` under load) was driven to one count a
 * transaction, a thousand fsyncs a second, each stalling every client of
 * the server.  So the two parts are fitted (least squares over moving
 * means of the transactions' sizes and times; every other transaction is
 * half the chunk, two when it is one, so that the sizes differ), and the
 * chunk halves when even the low end of the fit's estimate of its size
 * part (three standard errors) is over RHEMA_ACCESS_HOLD_NS, doubles when
 * even the high end is under a quarter of it, and stays when the noise of
 * a shared machine leaves it unsure.
 */
#define RHEMA_ACCESS_HOLD_NS 2000000u /* the size part of a transaction at most */
#define RHEMA_ACCESS_CHUNK_FIRST 64   /* counts a transaction at first */
#define RHEMA_ACCESS_CHUNK_MAX 4096   /* ... at most */

struct rhema_access_chunk {
    size_t chunk;              /* the size chosen */
    int odd;                   /* the next transaction is the full chunk */
    unsigned seen;             /* transactions measured */
    double mk, mt, mkk, mkt, mtt; /* moving means: size, time (ns), their squares and product */
};
void rhema_access_chunk_init(struct rhema_access_chunk *c);
/* The size of the next transaction: the chunk, every other time half of it (or 2). */
size_t rhema_access_chunk_next(struct rhema_access_chunk *c);
/* A transaction of k counts took took_ns. */
void rhema_access_chunk_step(struct rhema_access_chunk *c, size_t k, uint64_t took_ns);

/*
 * Start the writer thread on a connection of its own (inst's); *err
 * (malloc'd) on failure.  rhema_access_writer_stop() wakes it, waits for
 * its last flush and disconnects (also done by rhema_access_table_free).
 */
int rhema_access_writer_start(struct rhema_access_table *t, const struct rhema_storage_plugin *vt,
                              rhema_storage_instance *inst, char **err);
void rhema_access_writer_stop(struct rhema_access_table *t);

#endif /* RHEMA_CORE_SESSION_ACCESS_H */
