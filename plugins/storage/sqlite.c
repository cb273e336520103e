/*
 * sqlite -- the SQLite storage plugin (WAL mode), the default backend.
 *
 * Features DURABLE | TTL | LEASES.  Not SHARED: several daemons on one host
 * may share the file (SQLite locks it), but other hosts cannot.
 *
 * Configuration (persistence.sqlite):
 *   path            = "rhema.db";  parent directory created (0750)
 *   synchronous     = "normal";         off | normal | full | extra
 *   busy_timeout_ms = 5000;             how long a writer waits for the lock
 *   cache_size_kib  = 8192;             page cache per connection
 *   mmap_size_mib   = 0;                read pages through mmap (0: off; see below)
 *   page_size       = 8192;             page size of a new database file
 *   checkpoint_pages = 1000;            WAL pages that start a checkpoint; 0: the
 *                                       writer checkpoints itself (SQLite's default)
 *   rate_max_keys   = 65536;            slots of the rate file (see rate() below)
 *
 * Schema (schema_version 1):
 *   meta(name PRIMARY KEY, value)   schema_version, version_counter
 *   kv(ns, key, value, version, expires_at, PRIMARY KEY(ns, key)) WITHOUT ROWID
 *       ns and key are TEXT with the BINARY collation (memcmp, then length:
 *       strcmp order); value is always a BLOB; expires_at is wall-clock ms
 *       since the epoch, 0 for "never"; a partial index on expires_at keeps
 *       the purge of expired rows cheap.
 *   leases(name PRIMARY KEY, holder, epoch, expires_at) WITHOUT ROWID
 *       a released or expired lease keeps its row (holder ''), so epochs
 *       only grow, across restarts too.
 *   An earlier version kept rate() state in a table rhema_rate (and its
 *   index rhema_rate_rest); open drops them, in a transaction of their own,
 *   logged once (schema_version stays 1: the table was never data).
 *
 * Versions come from meta.version_counter, incremented inside each write
 * transaction, so they strictly increase across all keys and survive
 * restarts; a recreated key never reuses a version.
 *
 * Sequenced writes (storage minor 3) are rows like any other, keyed by
 * their version.  Write transactions are serialised (BEGIN IMMEDIATE and
 * the instance's write lock) and draw their versions inside, so commits
 * land in version order and a reader's snapshot never lacks a record
 * below one it holds: the ordering duty costs nothing here.  watch() is
 * NULL: SQLite has no channel to wake another connection or process, so
 * the host polls the feed with scan() (one short poll per node).
 *
 * Time: SQLite has no server clock, so TTLs and leases use the host's wall
 * clock (host->realtime_ns(), in ms) -- the only clock that means the same
 * thing to another process on this host and after a restart.  rate() uses
 * the host's q->now_us.
 *
 * rate() keeps its state outside the database, in `<path>-rate`
 * (../common/rate_file.h), as SQLite keeps its WAL index in `<path>-shm`:
 * a fixed table of rate_max_keys slots in a file every process that opens
 * the database maps MAP_SHARED, under an OFD lock the kernel releases when
 * a process dies.  A call is a hash, a few probes and rhema_gcra_step() in
 * shared memory: no transaction, no WAL frame, no I/O, and it never waits
 * for a writer of the database.  Every process and thread on this host
 * that opens the database shares one limit; the state is not data
 * (backup() and restore() leave it out, a bad or truncated file is
 * reinitialized).  The file is opened at open(), beside the database.
 *
 * Threads: one sqlite3 connection per connect() (opened NOMUTEX: each is
 * used by one thread), every statement prepared once per connection with
 * SQLITE_PREPARE_PERSISTENT and reset after each use.  Writes run in
 * BEGIN IMMEDIATE transactions, so preconditions are checked and applied
 * under the database write lock; a writer waits up to busy_timeout_ms and
 * then gets RHEMA_EUNAVAIL.
 *
 * Checkpoints: SQLite's automatic checkpoint runs inside the COMMIT that
 * crosses the threshold, so that one write waits for copying the WAL into
 * the database and for two fsyncs while every other writer waits behind it.
 * Here each connection's WAL hook only wakes a checkpointer thread (one per
 * instance, on a connection of its own, started on first use), which runs
 * PASSIVE checkpoints beside the writers.  Writers that keep appending keep
 * the WAL from being reset, so when it has grown to CKPT_RESTART_AT times
 * the threshold the checkpointer takes the write lock and finishes with a
 * RESTART checkpoint: by then the PASSIVE ones copied and synced nearly
 * everything, so the writers wait for the short rest only.  Should the
 * checkpointer fall behind anyway (descheduled, or busy with a long
 * checkpoint), a writer that finds the WAL at CKPT_BACKSTOP thresholds
 * waits for the checkpointer's pass to end and restarts the WAL itself,
 * holding the write lock as SQLite's own autocheckpoint would: the WAL
 * stays bounded whatever the checkpointer does.  The
 * checkpointer is a performance device: a commit is as durable without it
 * as with it (WAL mode: the WAL is the durable copy until checkpointed).
 *
 * Reads: get() is one statement in its own implicit read transaction;
 * get_many() reads its keys in one explicit read transaction (one
 * snapshot, one WAL read lock for all of them).  A reader never waits for
 * a writer (WAL), and mmap is off by default (see mmap_size_mib).  Before
 * either, the read cache may answer (see "the read cache" below).
 *
 * Backup and restore: backup() copies the database with the online backup
 * API; restore() checks such a copy (size, integrity_check, schema) and
 * replaces the live content in one transaction (see sq_restore).
 *
 * Errors: SQLITE_BUSY / LOCKED -> EUNAVAIL, CORRUPT / NOTADB -> ECORRUPT,
 * NOMEM -> ENOMEM, TOOBIG -> ETOOBIG, anything else (I/O, full disk,
 * read-only, ...) -> EIO.  errmsg() returns the connection's last message.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include <rhema/storage.h>

#include "../common/rate_file.h"
#include "../common/rate_table.h"
#include "../common/storage_check.h"
#include "../common/value_cache.h"

#define PLUGIN_NAME "sqlite"
#define SCHEMA_VERSION 1
#define PURGE_EVERY 64u  /* writes between two purges of expired rows */
#define PURGE_LIMIT "256" /* rows a purge deletes at most */
#define SQ_ERRMSG_MAX 512
#define CKPT_RESTART_AT 4 /* WAL size, in thresholds, that makes the checkpointer restart it */
#define CKPT_BACKSTOP 8   /* WAL size, in thresholds, at which a writer restarts it itself */
#define RATE_MAX_KEYS 65536 /* default slots of the rate file */

enum stmt_id {
    ST_BEGIN,
    ST_BEGIN_READ,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_GET,
    ST_LOOKUP,
    ST_VERSION_SET,
    ST_VERSION_READ,
    ST_SAVEPOINT,
    ST_RELEASE,
    ST_ROLLBACK_TO,
    ST_UPSERT,
    ST_DELETE,
    ST_PURGE,
    ST_SCAN,      /* no bounds */
    ST_SCAN_FROM, /* from_key only */
    ST_SCAN_TO,   /* to_key only */
    ST_SCAN_BOTH, /* both bounds */
    ST_STATS_NS,
    ST_STATS_ALL,
    ST_LEASE_GET,
    ST_LEASE_PUT,
    ST_HEALTH,
    ST__COUNT
};

/*
 * A live entry.  The unary + keeps ?4 (now, a new value at every call) out
 * of the planner's reach: with a bare ?4 SQLite checks whether the term
 * implies the partial index kv_expires's "expires_at > 0", which depends on
 * the value, and so re-prepares the statement at every rebinding -- every
 * scan() paid a full parse and plan (29% of the feed thread's CPU).
 */
#define LIVE "(expires_at = 0 OR expires_at > +?4)"
#define SCAN_SQL(BOUNDS)                                                                      \
    "SELECT key, value, version FROM kv WHERE ns = ?1" BOUNDS " AND " LIVE                   \
    " ORDER BY key LIMIT ?5"

static const char *const stmt_sql[ST__COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_BEGIN_READ] = "BEGIN",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_GET] = "SELECT value, version, expires_at FROM kv WHERE ns = ?1 AND key = ?2 AND " LIVE,
    [ST_LOOKUP] = "SELECT version FROM kv WHERE ns = ?1 AND key = ?2 AND " LIVE,
    [ST_VERSION_SET] = "UPDATE meta SET value = ?1 WHERE name = 'version_counter'",
    [ST_VERSION_READ] = "SELECT value FROM meta WHERE name = 'version_counter'",
    [ST_SAVEPOINT] = "SAVEPOINT member",
    [ST_RELEASE] = "RELEASE member",
    [ST_ROLLBACK_TO] = "ROLLBACK TO member",
    [ST_UPSERT] = "INSERT OR REPLACE INTO kv(ns, key, value, version, expires_at) "
                  "VALUES (?1, ?2, ?3, ?4, ?5)",
    [ST_DELETE] = "DELETE FROM kv WHERE ns = ?1 AND key = ?2",
    [ST_PURGE] = "DELETE FROM kv WHERE (ns, key) IN (SELECT ns, key FROM kv "
                 "WHERE expires_at > 0 AND expires_at <= ?1 LIMIT " PURGE_LIMIT ")",
    [ST_SCAN] = SCAN_SQL(""),
    [ST_SCAN_FROM] = SCAN_SQL(" AND key >= ?2"),
    [ST_SCAN_TO] = SCAN_SQL(" AND key < ?3"),
    [ST_SCAN_BOTH] = SCAN_SQL(" AND key >= ?2 AND key < ?3"),
    [ST_STATS_NS] = "SELECT COUNT(*), COALESCE(SUM(length(CAST(key AS BLOB)) + length(value)), 0)"
                    " FROM kv WHERE ns = ?1 AND " LIVE,
    [ST_STATS_ALL] = "SELECT COUNT(*), COALESCE(SUM(length(CAST(key AS BLOB)) + length(value)), 0)"
                     " FROM kv WHERE " LIVE,
    [ST_LEASE_GET] = "SELECT holder, epoch, expires_at FROM leases WHERE name = ?1",
    [ST_LEASE_PUT] = "INSERT OR REPLACE INTO leases(name, holder, epoch, expires_at) "
                     "VALUES (?1, ?2, ?3, ?4)",
    [ST_HEALTH] = "SELECT 1",
};

static const char schema_sql[] =
    "CREATE TABLE IF NOT EXISTS meta("
    "  name TEXT NOT NULL PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;"
    "INSERT OR IGNORE INTO meta(name, value) VALUES ('schema_version', 1), ('version_counter', 0);"
    "CREATE TABLE IF NOT EXISTS kv("
    "  ns TEXT NOT NULL COLLATE BINARY, key TEXT NOT NULL COLLATE BINARY,"
    "  value BLOB NOT NULL, version INTEGER NOT NULL, expires_at INTEGER NOT NULL DEFAULT 0,"
    "  PRIMARY KEY (ns, key)) WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS kv_expires ON kv(expires_at) WHERE expires_at > 0;"
    "CREATE TABLE IF NOT EXISTS leases("
    "  name TEXT NOT NULL PRIMARY KEY COLLATE BINARY, holder TEXT NOT NULL,"
    "  epoch INTEGER NOT NULL, expires_at INTEGER NOT NULL) WITHOUT ROWID;";

struct rhema_storage_instance {
    const struct rhema_host *host;
    char *path;
    const char *synchronous; /* a literal: "OFF", "NORMAL", ... */
    int busy_timeout_ms;
    int64_t cache_size_kib;
    /*
     * Reads through mmap.  Off by default: in WAL mode a connection that
     * finds the database changed by another one drops its whole mapping
     * (pagerBeginReadTransaction -> sqlite3OsUnfetch(fd, 0, 0)) and maps it
     * again at its next read, so with writers about every read paid a
     * munmap + mmap and the TLB shootdowns of both cores: 90% GET / 10% PUT
     * on 2 cores ran at 3.8k req/s with 256 MiB of mmap, 11.7k without
     * (bench/run-reads.sh, issue 14).  Worth it only for a read-mostly
     * database much larger than the page cache.
     */
    int64_t mmap_size_mib;
    int64_t page_size;     /* of a new database file */
    int64_t rate_max_keys; /* slots of the rate file */
    struct rhema_rate_file *rate; /* <path>-rate: rate()'s state */
    atomic_uint writes; /* across connections, for the purge cadence */
    /*
     * Serialises this process's write transactions.  SQLite would do it
     * too, but its busy handler sleeps and retries (1, 2, 5 ... ms); a
     * mutex hands the lock over at once.  Other processes on the same file
     * still meet the busy timeout.
     */
    pthread_mutex_t write_lock;
    /* the checkpointer (see the top of the file) */
    int checkpoint_pages; /* 0: SQLite's autocheckpoint in the writer */
    pthread_mutex_t ckpt_lock;
    pthread_cond_t ckpt_cond;   /* wakes the checkpointer */
    pthread_cond_t ckpt_passed; /* a checkpointer pass ended */
    int ckpt_busy;              /* a pass is running */
    pthread_t ckpt_thread;
    pid_t ckpt_pid; /* the process that started it (0: not started) */
    int ckpt_wanted, ckpt_stopping, ckpt_failed;
    sqlite3 *ckpt_db;
    /* the read cache (see "the read cache"); NULL: off */
    struct sq_cache *cache;
    const uint32_t *shm; /* the first page of <path>-shm, mapped read-only */
    pthread_mutex_t conn_lock; /* nconns, and the cache's start and end */
    int nconns;                /* connections of this process (connect - disconnect) */
    pid_t cache_pid;           /* the process that mapped shm */
};

/* One copy of SQLite's wal-index header: the first 48 bytes of <path>-shm. */
struct wal_hdr {
    uint32_t w[12];
};

struct rhema_storage_conn {
    rhema_storage_instance *inst;
    sqlite3 *db;
    sqlite3_stmt *st[ST__COUNT];
    unsigned char *buf; /* get(): the value returned */
    size_t buf_cap;
    char err[SQ_ERRMSG_MAX];
    int in_tx;           /* holds inst->write_lock inside BEGIN IMMEDIATE */
    int ver_loaded;      /* the version counter, read once per transaction */
    uint64_t ver_next;
    /* the transaction's side of the read cache: the header it began at, the keys it wrote */
    struct wal_hdr tx_h0;
    int tx_h0_ok, tx_unknown; /* unknown: it changed rows it did not list (a purge) */
    uint64_t *tx_keys;        /* hashes (rhema_vcache_hash) */
    size_t tx_nkeys, tx_cap;
    int counted; /* in inst->nconns */
};

/* ---- helpers ---- */

static void conn_error(rhema_storage_conn *c, const char *fmt, ...) RHEMA_PRINTF_LIKE(2, 3);

static void conn_error(rhema_storage_conn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
}

static int map_rc(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_ROW:
    case SQLITE_DONE: return 0;
    case SQLITE_BUSY:
    case SQLITE_LOCKED: return RHEMA_EUNAVAIL;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB: return RHEMA_ECORRUPT;
    case SQLITE_NOMEM: return RHEMA_ENOMEM;
    case SQLITE_TOOBIG: return RHEMA_ETOOBIG;
    case SQLITE_RANGE:
    case SQLITE_MISUSE:
    case SQLITE_MISMATCH: return RHEMA_EINVAL;
    default: return RHEMA_EIO;
    }
}

/* Record the connection's sqlite error and return it as a RHEMA_E* code. */
static int sq_fail(rhema_storage_conn *c, int rc, const char *what)
{
    conn_error(c, "%s: %s", what, sqlite3_errmsg(c->db));
    return map_rc(rc);
}

static int check_ns_key(rhema_storage_conn *c, const char *ns, const char *key)
{
    const char *why = rhema_storage_key_invalid(ns, key);
    if (why) {
        conn_error(c, "%s", why);
        return RHEMA_EINVAL;
    }
    return 0;
}

static int check_write(rhema_storage_conn *c, const struct rhema_storage_write *w)
{
    const char *why = rhema_storage_write_invalid(w);
    if (why) {
        conn_error(c, "%s", why);
        return RHEMA_EINVAL;
    }
    if (w->op == RHEMA_WRITE_PUT && w->value_len > (size_t)INT_MAX) {
        conn_error(c, "value of %zu bytes is too big for sqlite", w->value_len);
        return RHEMA_ETOOBIG;
    }
    return 0;
}

static int64_t now_ms(const rhema_storage_instance *in)
{
    return (int64_t)(in->host->realtime_ns() / 1000000u);
}

/* now + ttl, saturating; ttl 0 is "never" (0). */
static int64_t deadline_ms(int64_t now, uint64_t ttl_ms)
{
    if (ttl_ms == 0)
        return 0;
    if (ttl_ms > (uint64_t)(INT64_MAX - now))
        return INT64_MAX;
    return now + (int64_t)ttl_ms;
}

static int bind_text(sqlite3_stmt *st, int i, const char *s)
{
    return sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
}

/* Step a statement that returns no row, then reset it. */
static int step_done(rhema_storage_conn *c, enum stmt_id id, const char *what)
{
    sqlite3_stmt *st = c->st[id];
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        int r = sq_fail(c, rc, what);
        sqlite3_reset(st);
        return r;
    }
    sqlite3_reset(st);
    return 0;
}

/* ---- the read cache ----
 *
 * A read of SQLite costs a read transaction: a WAL read lock (two fcntl
 * on <path>-shm), and after any commit of another connection -- the
 * committer, the access-count flush -- a page cache emptied and the
 * B-tree read again with pread (about six a session GET).  So get() and
 * get_many() first ask a cache of values shared by the connections of
 * the instance, which needs neither:
 *
 *   - the cache as a whole is valid at one state of the database, named
 *     by SQLite's wal-index header (the first 48 bytes of <path>-shm, in
 *     two copies; its layout is SQLite's file format, walformat.html).
 *     Every commit of any connection of any process changes it (iChange
 *     counts commits) before the commit returns;
 *   - the fast path reads the header from a read-only mapping of -shm
 *     (copy 1, then copy 2: SQLite writes copy 2 first, so equal copies
 *     are a whole header): when it is the cache's, the cached value (or
 *     "not found" for a key known absent) is the answer, and the read
 *     linearises at that load;
 *   - the slow path (SQLite) fills the cache with what it read when the
 *     header was the same before and after its read transaction (so that
 *     snapshot was that state); a newer header empties the cache first;
 *   - a write transaction of this process reads the header after BEGIN
 *     IMMEDIATE (stable: it holds the write lock) and again after COMMIT,
 *     still holding the instance's write lock; when iChange moved by
 *     exactly one (no other process committed in between) the new state is
 *     the old one plus its writes, so the cache drops the keys it wrote
 *     and moves to the new header.  Anything else (another process wrote,
 *     a purge deleted rows, a restore, a checkpoint restarting the WAL)
 *     leaves the cache at a header that is no longer current: readers go
 *     to SQLite until a fill moves it;
 *   - expiry is the LIVE rule of the statements, applied to the cached
 *     expires_at at the time of the read.
 *
 * Bounded by value_cache.h (16,384 entries, values up to 64 KiB, 64 MiB).
 * The mapping lives while the instance has connections in this process:
 * taken by the first connect() (which has read, so -shm is there and the
 * database file holds its shared lock), dropped by the last disconnect().
 * SQLite removes -shm only when a connection closing finds no other one
 * on the database (it must get an exclusive lock), so the file mapped is
 * the one SQLite uses for as long as it is mapped.  A process that forked
 * after connecting (rhemad opens storage before it daemonizes) maps its
 * own at its first connect().
 */
#define WALINDEX_VERSION 3007000u /* wal-index header iVersion (walformat.html) */
#define WAL_ICHANGE 2             /* the word of the header that counts commits */

struct sq_cache {
    pthread_mutex_t mu;
    int valid;           /* hdr is the state every entry is valid at */
    struct wal_hdr hdr;
    struct rhema_vcache *vc;
};

/* The current wal-index header into *h: 0, or -1 when not a whole header. */
static int hdr_now(const rhema_storage_instance *in, struct wal_hdr *h)
{
    struct wal_hdr h2;
    for (int i = 0; i < 12; i++)
        h->w[i] = __atomic_load_n(&in->shm[i], __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_ACQUIRE); /* copy 1 before copy 2 */
    for (int i = 0; i < 12; i++)
        h2.w[i] = __atomic_load_n(&in->shm[12 + i], __ATOMIC_RELAXED);
    return h->w[0] == WALINDEX_VERSION && memcmp(h, &h2, sizeof h2) == 0 ? 0 : -1;
}

static int hdr_eq(const struct wal_hdr *a, const struct wal_hdr *b)
{
    return memcmp(a, b, sizeof *a) == 0;
}

/* a counts fewer commits than b (serial arithmetic: iChange wraps) */
static int hdr_older(const struct wal_hdr *a, const struct wal_hdr *b)
{
    return (int32_t)(a->w[WAL_ICHANGE] - b->w[WAL_ICHANGE]) < 0;
}

static int live_at(int64_t expires_ms, int64_t now)
{
    return expires_ms == 0 || expires_ms > now;
}

/* Make room for n more bytes at c->buf + at (n + 1 with the NUL). */
static int buf_room(rhema_storage_conn *c, size_t at, size_t n)
{
    if (at + n + 1 <= c->buf_cap)
        return 0;
    size_t cap = c->buf_cap ? c->buf_cap : 256;
    while (cap < at + n + 1)
        cap *= 2;
    unsigned char *nb = realloc(c->buf, cap);
    if (nb == NULL)
        return -1;
    c->buf = nb;
    c->buf_cap = cap;
    return 0;
}

/*
 * The fast path: 1 when the cache answered all n keys (out[], rcs[] set,
 * the values in c->buf), 0 when SQLite must.
 */
static int cache_get(rhema_storage_conn *c, size_t n, const char *const *ns,
                     const char *const *keys, struct rhema_storage_value *out, int *rcs)
{
    rhema_storage_instance *in = c->inst;
    struct sq_cache *sc = in->cache;
    struct wal_hdr h;
    size_t off[RHEMA_STORAGE_GET_MANY_MAX], at = 0, i = 0;
    uint64_t hash[RHEMA_STORAGE_GET_MANY_MAX];
    if (sc == NULL || n > RHEMA_STORAGE_GET_MANY_MAX || hdr_now(in, &h) != 0)
        return 0;
    for (i = 0; i < n; i++)
        hash[i] = rhema_vcache_hash(ns[i], keys[i]);
    int64_t now = now_ms(in);
    int hit = 0;
    pthread_mutex_lock(&sc->mu);
    if (sc->valid && hdr_eq(&h, &sc->hdr)) {
        for (i = 0; i < n; i++) {
            const struct rhema_vcache_entry *e = rhema_vcache_find(sc->vc, hash[i], ns[i], keys[i]);
            if (e == NULL)
                break;
            out[i].len = 0;
            out[i].version = 0;
            if (e->absent || !live_at((int64_t)e->expires_ms, now)) {
                rcs[i] = RHEMA_ENOTFOUND;
                continue;
            }
            if (buf_room(c, at, e->value_len) != 0)
                break;
            memcpy(c->buf + at, rhema_vcache_value(e), e->value_len);
            c->buf[at + e->value_len] = '\0';
            off[i] = at;
            at += e->value_len + 1;
            rcs[i] = 0;
            out[i].len = e->value_len;
            out[i].version = e->version;
        }
        hit = i == n;
    }
    pthread_mutex_unlock(&sc->mu);
    if (!hit)
        return 0;
    for (i = 0; i < n; i++) /* the buffer has stopped moving */
        out[i].data = rcs[i] == 0 ? c->buf + off[i] : NULL;
    return 1;
}

/* What a read found for one key, for cache_fill(). */
struct sq_found {
    int rc; /* 0 or RHEMA_ENOTFOUND */
    size_t off, len;
    uint64_t version;
    int64_t expires_ms;
};

/*
 * The slow path read n keys (values in c->buf) with the header at *h
 * before and after: cache them at *h, unless the cache is at a newer
 * state; a different one is dropped first.
 */
static void cache_fill(rhema_storage_conn *c, const struct wal_hdr *h, size_t n,
                       const char *const *ns, const char *const *keys, const struct sq_found *f)
{
    struct sq_cache *sc = c->inst->cache;
    pthread_mutex_lock(&sc->mu);
    if (!sc->valid || !hdr_eq(h, &sc->hdr)) {
        if (sc->valid && hdr_older(h, &sc->hdr)) {
            pthread_mutex_unlock(&sc->mu);
            return;
        }
        rhema_vcache_clear(sc->vc);
        sc->hdr = *h;
        sc->valid = 1;
    }
    for (size_t i = 0; i < n; i++)
        rhema_vcache_put(sc->vc, ns[i], keys[i], f[i].version, (uint64_t)f[i].expires_ms,
                         f[i].rc == 0 ? c->buf + f[i].off : NULL, f[i].len, f[i].rc != 0);
    pthread_mutex_unlock(&sc->mu);
}

/* A write of this transaction (ns, key): dropped from the cache at its commit. */
static void tx_note(rhema_storage_conn *c, const char *ns, const char *key)
{
    if (c->inst->cache == NULL || c->tx_unknown)
        return;
    if (c->tx_nkeys == c->tx_cap) {
        size_t cap = c->tx_cap ? c->tx_cap * 2 : 64;
        uint64_t *nk = realloc(c->tx_keys, cap * sizeof *nk);
        if (nk == NULL) {
            c->tx_unknown = 1; /* the cache will not follow this commit */
            return;
        }
        c->tx_keys = nk;
        c->tx_cap = cap;
    }
    c->tx_keys[c->tx_nkeys++] = rhema_vcache_hash(ns, key);
}

/* After COMMIT, the instance's write lock still held (see above). */
static void cache_write_end(rhema_storage_conn *c)
{
    rhema_storage_instance *in = c->inst;
    struct sq_cache *sc = in->cache;
    struct wal_hdr h1;
    if (sc == NULL || !c->tx_h0_ok || c->tx_unknown || hdr_now(in, &h1) != 0 ||
        h1.w[WAL_ICHANGE] != c->tx_h0.w[WAL_ICHANGE] + 1)
        return; /* not this commit alone: the cache stays at a past state */
    pthread_mutex_lock(&sc->mu);
    if (sc->valid && (hdr_eq(&sc->hdr, &c->tx_h0) || hdr_eq(&sc->hdr, &h1))) {
        for (size_t i = 0; i < c->tx_nkeys; i++)
            rhema_vcache_drop_hash(sc->vc, c->tx_keys[i]);
        sc->hdr = h1;
    }
    pthread_mutex_unlock(&sc->mu);
}

/* Forget everything (a restore). */
static void cache_reset(rhema_storage_instance *in)
{
    if (in->cache == NULL)
        return;
    pthread_mutex_lock(&in->cache->mu);
    rhema_vcache_clear(in->cache->vc);
    in->cache->valid = 0;
    pthread_mutex_unlock(&in->cache->mu);
}

static void cache_close(rhema_storage_instance *in)
{
    if (in->cache != NULL) {
        rhema_vcache_free(in->cache->vc);
        pthread_mutex_destroy(&in->cache->mu);
        free(in->cache);
        in->cache = NULL;
    }
    if (in->shm != NULL)
        munmap((void *)in->shm, 4096);
    in->shm = NULL;
}

/*
 * Start the cache (conn_lock held, a connection of this process open and
 * read): -shm's first page mapped read-only, and a header that reads as
 * one.  Without them the plugin works uncached.
 */
static void cache_open(rhema_storage_instance *in)
{
    const struct rhema_host *h = in->host;
    char shm[PATH_MAX];
    const char *why = NULL;
    struct wal_hdr hdr;
    int fd = -1;
    in->cache_pid = getpid();
    if ((size_t)snprintf(shm, sizeof shm, "%s-shm", in->path) >= sizeof shm)
        why = "path too long";
    else if ((fd = open(shm, O_RDONLY | O_CLOEXEC)) < 0)
        why = strerror(errno);
    else {
        void *m = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
        if (m == MAP_FAILED)
            why = strerror(errno);
        else
            in->shm = m;
    }
    if (fd >= 0)
        close(fd);
    if (why == NULL && hdr_now(in, &hdr) != 0)
        why = "no wal-index header in it";
    if (why == NULL) {
        in->cache = calloc(1, sizeof *in->cache);
        if (in->cache == NULL || (in->cache->vc = rhema_vcache_new()) == NULL ||
            pthread_mutex_init(&in->cache->mu, NULL) != 0) {
            if (in->cache != NULL)
                rhema_vcache_free(in->cache->vc);
            free(in->cache);
            in->cache = NULL;
            why = "out of memory";
        }
    }
    if (why != NULL) {
        cache_close(in);
        if (h->log != NULL)
            h->log(RHEMA_LOG_WARN, PLUGIN_NAME, "%s: read cache off (%s): every read goes to SQLite",
                   shm, why);
    }
}

/* A connection of this process opened (counted; the first one starts the cache). */
static void cache_conn_up(rhema_storage_instance *in)
{
    pthread_mutex_lock(&in->conn_lock);
    if (in->nconns > 0 && in->cache_pid != getpid()) {
        /* forked since: the parent's connections and mapping are not this process's */
        cache_close(in);
        in->nconns = 0;
    }
    if (in->nconns++ == 0)
        cache_open(in);
    pthread_mutex_unlock(&in->conn_lock);
}

/* A connection closed; the last one ends the cache. */
static void cache_conn_down(rhema_storage_instance *in)
{
    pthread_mutex_lock(&in->conn_lock);
    if (in->cache_pid == getpid() && in->nconns > 0 && --in->nconns == 0)
        cache_close(in);
    pthread_mutex_unlock(&in->conn_lock);
}

static int tx_begin(rhema_storage_conn *c)
{
    pthread_mutex_lock(&c->inst->write_lock);
    int rc = step_done(c, ST_BEGIN, "begin");
    if (rc != 0) {
        pthread_mutex_unlock(&c->inst->write_lock);
        return rc;
    }
    c->in_tx = 1;
    c->ver_loaded = 0;
    c->tx_nkeys = 0;
    c->tx_unknown = 0;
    c->tx_h0_ok = c->inst->cache != NULL && hdr_now(c->inst, &c->tx_h0) == 0;
    return 0;
}

static void tx_rollback(rhema_storage_conn *c)
{
    if (!sqlite3_get_autocommit(c->db)) {
        sqlite3_step(c->st[ST_ROLLBACK]);
        sqlite3_reset(c->st[ST_ROLLBACK]);
    }
    if (c->in_tx) {
        c->in_tx = 0;
        pthread_mutex_unlock(&c->inst->write_lock);
    }
}

/* Write back the version counter when this transaction used it, then commit. */
static int tx_commit(rhema_storage_conn *c)
{
    int rc = 0;
    if (c->ver_loaded) {
        sqlite3_bind_int64(c->st[ST_VERSION_SET], 1, (int64_t)c->ver_next);
        rc = step_done(c, ST_VERSION_SET, "version counter");
    }
    if (rc == 0)
        rc = step_done(c, ST_COMMIT, "commit");
    if (rc != 0) {
        tx_rollback(c);
        return rc;
    }
    cache_write_end(c);
    c->in_tx = 0;
    pthread_mutex_unlock(&c->inst->write_lock);
    return 0;
}

/* ---- lifecycle ---- */

/* mkdir -p of the directory part of path, mode 0750.  0 or errno. */
static int make_parent(const char *path)
{
    char *dir = strdup(path), *p;
    int e = 0;
    if (dir == NULL)
        return ENOMEM;
    p = strrchr(dir, '/');
    if (p == NULL || p == dir) {
        free(dir);
        return 0;
    }
    *p = '\0';
    for (p = dir + 1; e == 0; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(dir, 0750) != 0 && errno != EEXIST)
                e = errno;
            *p = saved;
            if (saved == '\0')
                break;
        }
    }
    free(dir);
    return e;
}

static const char *synchronous_level(const char *s)
{
    static const char *const levels[] = {"off", "normal", "full", "extra"};
    static const char *const upper[] = {"OFF", "NORMAL", "FULL", "EXTRA"};
    size_t i;
    for (i = 0; i < sizeof levels / sizeof levels[0]; i++)
        if (strcmp(s, levels[i]) == 0)
            return upper[i];
    return NULL;
}

/* Read the configuration into in; on failure sets *err. */
static int read_config(rhema_storage_instance *in, const struct rhema_host *h,
                       const struct rhema_cfg *cfg, char **err)
{
    const char *path = "rhema.db", *sync = "normal";
    int64_t busy = 5000, cache = 8192, mmap_mib = 0, page = 8192, ckpt = 1000;
    int64_t rate_keys = RATE_MAX_KEYS;

    if (h->cfg_string(cfg, "path", &path) == RHEMA_EINVAL)
        return h->set_error(err, RHEMA_EINVAL, "%s: sqlite: path must be a string",
                            h->cfg_where(cfg, "path"));
    if (path[0] == '\0')
        return h->set_error(err, RHEMA_EINVAL, "%s: sqlite: path is empty",
                            h->cfg_where(cfg, "path"));
    if (strcmp(path, ":memory:") == 0) /* every connection would get a database of its own */
        return h->set_error(err, RHEMA_EINVAL,
                            "%s: sqlite: path ':memory:' is not supported (each connection would "
                            "see its own empty database); use persistence.backend = \"memory\"",
                            h->cfg_where(cfg, "path"));
    if (h->cfg_string(cfg, "synchronous", &sync) == RHEMA_EINVAL)
        return h->set_error(err, RHEMA_EINVAL, "%s: sqlite: synchronous must be a string",
                            h->cfg_where(cfg, "synchronous"));
    in->synchronous = synchronous_level(sync);
    if (in->synchronous == NULL)
        return h->set_error(err, RHEMA_EINVAL,
                            "%s: sqlite: synchronous '%s' is not one of off, normal, full, extra",
                            h->cfg_where(cfg, "synchronous"), sync);
    if (h->cfg_int(cfg, "busy_timeout_ms", &busy) == RHEMA_EINVAL || busy < 0 || busy > INT_MAX)
        return h->set_error(err, RHEMA_EINVAL,
                            "%s: sqlite: busy_timeout_ms must be an integer in 0..%d",
                            h->cfg_where(cfg, "busy_timeout_ms"), INT_MAX);
    if (h->cfg_int(cfg, "cache_size_kib", &cache) == RHEMA_EINVAL || cache < 0 ||
        cache > ((int64_t)1 << 32))
        return h->set_error(err, RHEMA_EINVAL,
                            "%s: sqlite: cache_size_kib must be an integer in 0..4294967296",
                            h->cfg_where(cfg, "cache_size_kib"));
    if (h->cfg_int(cfg, "mmap_size_mib", &mmap_mib) == RHEMA_EINVAL || mmap_mib < 0 ||
        mmap_mib > 65536)
        return h->set_error(err, RHEMA_EINVAL,
                            "%s: sqlite: mmap_size_mib must be an integer in 0..65536",
                            h->cfg_where(cfg, "mmap_size_mib"));
    if (h->cfg_int(cfg, "page_size", &page) == RHEMA_EINVAL || page < 512 || page > 65536 ||
        (page & (page - 1)) != 0)
        return h->set_error(err, RHEMA_EINVAL,
                            "%s: sqlite: page_size must be a power of two in 512..65536",
                            h->cfg_where(cfg, "page_size"));
    if (h->cfg_int(cfg, "checkpoint_pages", &ckpt) == RHEMA_EINVAL || ckpt < 0 ||
        ckpt > INT_MAX / CKPT_BACKSTOP)
        return h->set_error(err, RHEMA_EINVAL,
                            "%s: sqlite: checkpoint_pages must be an integer in 0..%d",
                            h->cfg_where(cfg, "checkpoint_pages"), INT_MAX / CKPT_BACKSTOP);
    if (h->cfg_int(cfg, "rate_max_keys", &rate_keys) == RHEMA_EINVAL ||
        rate_keys < RHEMA_RATE_FILE_CAPACITY_MIN ||
        (uint64_t)rate_keys > RHEMA_RATE_FILE_CAPACITY_MAX)
        return h->set_error(err, RHEMA_EINVAL,
                            "%s: sqlite: rate_max_keys must be an integer in %d..%zu",
                            h->cfg_where(cfg, "rate_max_keys"), RHEMA_RATE_FILE_CAPACITY_MIN,
                            RHEMA_RATE_FILE_CAPACITY_MAX);
    in->rate_max_keys = rate_keys;
    in->busy_timeout_ms = (int)busy;
    in->checkpoint_pages = (int)ckpt;
    in->cache_size_kib = cache;
    in->mmap_size_mib = mmap_mib;
    in->page_size = page;
    in->path = strdup(path);
    if (in->path == NULL)
        return h->set_error(err, RHEMA_ENOMEM, "sqlite: out of memory");
    return 0;
}

/*
 * The table rhema_rate (and its index) of an earlier version, which kept
 * rate() state in the database: dropped, in a transaction of its own, and
 * logged (rate state is not data; the rate file holds it now).
 */
static int drop_rate_table(rhema_storage_instance *in, sqlite3 *db, char **err)
{
    sqlite3_stmt *st = NULL;
    char *msg = NULL;
    int rc, found = 0;
    rc = sqlite3_prepare_v2(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                            "name = 'rhema_rate'", -1, &st, NULL);
    if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW)
        found = 1;
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return in->host->set_error(err, map_rc(rc), "sqlite: %s: looking for rhema_rate: %s",
                                   in->path, sqlite3_errmsg(db));
    if (!found)
        return 0;
    rc = sqlite3_exec(db, "BEGIN IMMEDIATE; DROP TABLE IF EXISTS rhema_rate; COMMIT", NULL, NULL,
                      &msg);
    if (rc != SQLITE_OK) {
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        rc = in->host->set_error(err, map_rc(rc), "sqlite: %s: dropping rhema_rate: %s", in->path,
                                 msg != NULL ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        return rc;
    }
    if (in->host->log != NULL)
        in->host->log(RHEMA_LOG_NOTICE, PLUGIN_NAME,
                      "%s: dropped the table rhema_rate of an earlier version (rate limits now "
                      "live in %s-rate)",
                      in->path, in->path);
    return 0;
}

/* Create or check the schema through a short-lived connection. */
static int init_schema(rhema_storage_instance *in, char **err)
{
    const struct rhema_host *h = in->host;
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    char *msg = NULL;
    int rc, ret = 0;
    int64_t version = 0;

    rc = sqlite3_open_v2(in->path, &db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        ret = h->set_error(err, map_rc(rc), "sqlite: open %s: %s", in->path,
                           db != NULL ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        goto out;
    }
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, in->busy_timeout_ms);
    /*
     * The page size of a new database (it cannot change once the file is in
     * WAL mode).  With 4 KiB pages a 1 KiB session record no longer fits in
     * its B-tree cell and spills onto an overflow page of its own: every
     * write of it then costs two pages in the WAL.
     */
    char pragma[48];
    snprintf(pragma, sizeof pragma, "PRAGMA page_size=%lld", (long long)in->page_size);
    rc = sqlite3_exec(db, pragma, NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(db, "PRAGMA journal_mode=WAL", -1, &st, NULL);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            const char *mode = (const char *)sqlite3_column_text(st, 0);
            if ((mode == NULL || strcmp(mode, "wal") != 0) && h->log != NULL)
                h->log(RHEMA_LOG_WARN, PLUGIN_NAME, "%s: journal_mode is %s, not wal", in->path,
                       mode != NULL ? mode : "unknown");
            rc = SQLITE_OK;
        } else if (rc == SQLITE_DONE) {
            rc = SQLITE_OK;
        }
        sqlite3_finalize(st);
        st = NULL;
    }
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, &msg);
    if (rc == SQLITE_OK) {
        rc = sqlite3_exec(db, schema_sql, NULL, NULL, &msg);
        if (rc == SQLITE_OK)
            rc = sqlite3_exec(db, "COMMIT", NULL, NULL, &msg);
        if (rc != SQLITE_OK)
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    }
    if (rc != SQLITE_OK) {
        ret = h->set_error(err, map_rc(rc), "sqlite: %s: creating the schema: %s", in->path,
                           msg != NULL ? msg : sqlite3_errmsg(db));
        goto out;
    }
    rc = sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE name = 'schema_version'", -1, &st,
                            NULL);
    if (rc == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        version = sqlite3_column_int64(st, 0);
    if (version != SCHEMA_VERSION) {
        ret = h->set_error(err, version > SCHEMA_VERSION ? RHEMA_ENOTSUP : RHEMA_ECORRUPT,
                           "sqlite: %s: schema_version %lld, this plugin knows %d", in->path,
                           (long long)version, SCHEMA_VERSION);
        goto out;
    }
    sqlite3_finalize(st);
    st = NULL;
    ret = drop_rate_table(in, db, err);
out:
    sqlite3_free(msg);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return ret;
}

/* ---- the checkpointer ---- */

static void ckpt_log(rhema_storage_instance *in, int level, const char *fmt, ...)
    RHEMA_PRINTF_LIKE(3, 4);

static void ckpt_log(rhema_storage_instance *in, int level, const char *fmt, ...)
{
    char msg[SQ_ERRMSG_MAX];
    va_list ap;
    if (in->host->log == NULL)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    in->host->log(level, PLUGIN_NAME, "%s: %s", in->path, msg);
}

static void *ckpt_main(void *arg)
{
    rhema_storage_instance *in = arg;
    sqlite3 *db = in->ckpt_db;
    for (;;) {
        pthread_mutex_lock(&in->ckpt_lock);
        while (!in->ckpt_wanted && !in->ckpt_stopping)
            pthread_cond_wait(&in->ckpt_cond, &in->ckpt_lock);
        int stopping = in->ckpt_stopping;
        in->ckpt_wanted = 0;
        in->ckpt_busy = !stopping;
        pthread_mutex_unlock(&in->ckpt_lock);
        if (stopping)
            break;
        int log = 0, done = 0;
        int rc = sqlite3_wal_checkpoint_v2(db, "main", SQLITE_CHECKPOINT_PASSIVE, &log, &done);
        pthread_mutex_lock(&in->ckpt_lock);
        in->ckpt_busy = 0;
        pthread_cond_broadcast(&in->ckpt_passed);
        pthread_mutex_unlock(&in->ckpt_lock);
        /*
         * Writers kept the WAL from being reset: finish it under the write
         * lock -- unless a writer holds it (it may be the backstop, waiting
         * for this pass to end; the next pass will do).
         */
        if (rc == SQLITE_OK && log >= in->checkpoint_pages * CKPT_RESTART_AT &&
            pthread_mutex_trylock(&in->write_lock) == 0) {
            rc = sqlite3_wal_checkpoint_v2(db, "main", SQLITE_CHECKPOINT_RESTART, &log, &done);
            pthread_mutex_unlock(&in->write_lock);
        }
        if (rc != SQLITE_OK && (rc & 0xff) != SQLITE_BUSY && (rc & 0xff) != SQLITE_LOCKED)
            ckpt_log(in, RHEMA_LOG_WARN, "checkpoint: %s", sqlite3_errmsg(db));
    }
    sqlite3_close(db);
    in->ckpt_db = NULL;
    return NULL;
}

/* Start the checkpointer in this process; 0 or -1 (the caller checkpoints itself). */
static int ckpt_start(rhema_storage_instance *in)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(in->path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_busy_timeout(db, in->busy_timeout_ms);
        char pragma[48];
        snprintf(pragma, sizeof pragma, "PRAGMA synchronous=%s", in->synchronous);
        rc = sqlite3_exec(db, pragma, NULL, NULL, NULL);
    }
    if (rc != SQLITE_OK) {
        ckpt_log(in, RHEMA_LOG_WARN, "checkpointer: open: %s; writers checkpoint themselves",
                 db != NULL ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return -1;
    }
    in->ckpt_db = db;
    if (pthread_create(&in->ckpt_thread, NULL, ckpt_main, in) != 0) {
        ckpt_log(in, RHEMA_LOG_WARN,
                 "checkpointer: cannot start a thread; writers checkpoint "
                 "themselves");
        in->ckpt_db = NULL;
        sqlite3_close(db);
        return -1;
    }
    in->ckpt_pid = getpid();
    return 0;
}

/*
 * The WAL hook of every connection: called after each commit with the
 * WAL's size in pages.  Wakes the checkpointer past the threshold; runs a
 * PASSIVE checkpoint itself when there is no checkpointer.
 */
static int wal_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
    rhema_storage_instance *in = arg;
    int inline_ckpt = 0;
    if (pages < in->checkpoint_pages)
        return SQLITE_OK;
    if (pages >= in->checkpoint_pages * CKPT_BACKSTOP) {
        /*
         * The checkpointer fell behind.  This writer holds the write lock:
         * wait for the checkpointer's pass (if one runs: SQLITE_BUSY) and
         * restart the WAL before anybody writes more.
         */
        for (int tries = 0; tries < 50; tries++) {
            int rc = sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_RESTART, NULL, NULL);
            int pass = 0;
            if ((rc & 0xff) == SQLITE_BUSY) { /* the checkpointer's pass, or readers */
                pthread_mutex_lock(&in->ckpt_lock);
                pass = in->ckpt_busy;
                pthread_mutex_unlock(&in->ckpt_lock);
            }
            if (!pass)
                break;
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += 100 * 1000000L;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
            pthread_mutex_lock(&in->ckpt_lock);
            if (in->ckpt_busy)
                pthread_cond_timedwait(&in->ckpt_passed, &in->ckpt_lock, &until);
            pthread_mutex_unlock(&in->ckpt_lock);
        }
        return SQLITE_OK;
    }
    pthread_mutex_lock(&in->ckpt_lock);
    if (in->ckpt_pid != getpid() && !in->ckpt_failed && !in->ckpt_stopping)
        in->ckpt_failed = ckpt_start(in) != 0;
    if (in->ckpt_pid == getpid() && !in->ckpt_failed) {
        in->ckpt_wanted = 1;
        pthread_cond_signal(&in->ckpt_cond);
    } else {
        inline_ckpt = 1;
    }
    pthread_mutex_unlock(&in->ckpt_lock);
    if (inline_ckpt)
        sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    return SQLITE_OK;
}

static void ckpt_stop(rhema_storage_instance *in)
{
    pthread_mutex_lock(&in->ckpt_lock);
    int running = in->ckpt_pid == getpid();
    in->ckpt_stopping = 1;
    pthread_cond_signal(&in->ckpt_cond);
    pthread_mutex_unlock(&in->ckpt_lock);
    if (running)
        pthread_join(in->ckpt_thread, NULL);
}

/* check(): read_config() into an instance that is thrown away; no file is touched. */
static int sq_check(const struct rhema_host *host, const struct rhema_cfg *cfg, char **err)
{
    rhema_storage_instance *in = calloc(1, sizeof *in);
    int rc;

    if (in == NULL)
        return host->set_error(err, RHEMA_ENOMEM, "sqlite: out of memory");
    in->host = host;
    rc = read_config(in, host, cfg, err);
    free(in->path);
    free(in);
    return rc;
}

static int sq_open(const struct rhema_host *host, const struct rhema_cfg *cfg,
                   rhema_storage_instance **out, char **err)
{
    rhema_storage_instance *in;
    int rc, e;

    if (!sqlite3_threadsafe())
        return host->set_error(err, RHEMA_ENOTSUP, "sqlite: the library was built without threads");
    in = calloc(1, sizeof *in);
    if (in == NULL)
        return host->set_error(err, RHEMA_ENOMEM, "sqlite: out of memory");
    in->host = host;
    atomic_init(&in->writes, 0);
    pthread_mutex_init(&in->write_lock, NULL);
    pthread_mutex_init(&in->conn_lock, NULL);
    pthread_mutex_init(&in->ckpt_lock, NULL);
    pthread_cond_init(&in->ckpt_cond, NULL);
    pthread_cond_init(&in->ckpt_passed, NULL);
    rc = read_config(in, host, cfg, err);
    if (rc != 0)
        goto fail;
    e = make_parent(in->path);
    if (e != 0) {
        rc = host->set_error(err, RHEMA_EIO, "sqlite: cannot create the directory of %s: %s",
                             in->path, strerror(e));
        goto fail;
    }
    rc = init_schema(in, err);
    if (rc != 0)
        goto fail;
    {
        char rpath[PATH_MAX], msg[SQ_ERRMSG_MAX];
        if ((size_t)snprintf(rpath, sizeof rpath, "%s-rate", in->path) >= sizeof rpath) {
            rc = host->set_error(err, RHEMA_EINVAL, "sqlite: %s: path too long", in->path);
            goto fail;
        }
        rc = rhema_rate_file_open(rpath, (size_t)in->rate_max_keys, host, PLUGIN_NAME, &in->rate,
                                  msg, sizeof msg);
        if (rc != 0) {
            rc = host->set_error(err, rc, "sqlite: %s", msg);
            goto fail;
        }
    }
    if (host->log != NULL)
        host->log(RHEMA_LOG_INFO, PLUGIN_NAME, "opened %s (WAL, synchronous=%s, sqlite %s)",
                  in->path, in->synchronous, sqlite3_libversion());
    *out = in;
    return 0;
fail:
    rhema_rate_file_close(in->rate);
    pthread_mutex_destroy(&in->write_lock);
    pthread_mutex_destroy(&in->conn_lock);
    pthread_mutex_destroy(&in->ckpt_lock);
    pthread_cond_destroy(&in->ckpt_cond);
    pthread_cond_destroy(&in->ckpt_passed);
    free(in->path);
    free(in);
    return rc;
}

static void sq_close(rhema_storage_instance *in)
{
    if (in == NULL)
        return;
    ckpt_stop(in);
    cache_close(in); /* a connection never disconnected: its mapping */
    rhema_rate_file_close(in->rate);
    pthread_mutex_destroy(&in->write_lock);
    pthread_mutex_destroy(&in->conn_lock);
    pthread_mutex_destroy(&in->ckpt_lock);
    pthread_cond_destroy(&in->ckpt_cond);
    pthread_cond_destroy(&in->ckpt_passed);
    free(in->path);
    free(in);
}

static void sq_disconnect(rhema_storage_conn *c)
{
    size_t i;
    if (c == NULL)
        return;
    if (c->counted)
        cache_conn_down(c->inst); /* before the close that may remove -shm */
    for (i = 0; i < ST__COUNT; i++)
        sqlite3_finalize(c->st[i]);
    sqlite3_close(c->db);
    free(c->buf);
    free(c->tx_keys);
    free(c);
}

static int sq_connect(rhema_storage_instance *in, rhema_storage_conn **out, char **err)
{
    const struct rhema_host *h = in->host;
    rhema_storage_conn *c;
    char pragma[160], *msg = NULL;
    size_t i;
    int rc;

    c = calloc(1, sizeof *c);
    if (c == NULL)
        return h->set_error(err, RHEMA_ENOMEM, "sqlite: out of memory");
    c->inst = in;
    rc = sqlite3_open_v2(in->path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        rc = h->set_error(err, map_rc(rc), "sqlite: open %s: %s", in->path,
                          c->db != NULL ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc));
        goto fail;
    }
    sqlite3_extended_result_codes(c->db, 1);
    sqlite3_busy_timeout(c->db, in->busy_timeout_ms);
    /*
     * Grow the file 8 MiB at a time: fewer size changes means less
     * filesystem metadata work on checkpoints (and, with mmap_size_mib,
     * fewer remaps of the mmap window).
     */
    int chunk = 8 * 1024 * 1024;
    sqlite3_file_control(c->db, "main", SQLITE_FCNTL_CHUNK_SIZE, &chunk);
    snprintf(pragma, sizeof pragma,
             "PRAGMA temp_store=MEMORY; PRAGMA synchronous=%s; PRAGMA cache_size=-%lld; PRAGMA mmap_size=%lld",
             in->synchronous, (long long)in->cache_size_kib,
             (long long)in->mmap_size_mib * 1024 * 1024);
    rc = sqlite3_exec(c->db, pragma, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        rc = h->set_error(err, map_rc(rc), "sqlite: %s: %s", in->path,
                          msg != NULL ? msg : sqlite3_errmsg(c->db));
        sqlite3_free(msg);
        goto fail;
    }
    if (in->checkpoint_pages > 0) /* replaces SQLite's autocheckpoint */
        sqlite3_wal_hook(c->db, wal_hook, in);
    for (i = 0; i < ST__COUNT; i++) {
        rc = sqlite3_prepare_v3(c->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &c->st[i],
                                NULL);
        if (rc != SQLITE_OK) {
            rc = h->set_error(err, map_rc(rc), "sqlite: %s: prepare \"%s\": %s", in->path,
                              stmt_sql[i], sqlite3_errmsg(c->db));
            goto fail;
        }
    }
    cache_conn_up(in); /* the prepares read the schema: -shm is in use */
    c->counted = 1;
    *out = c;
    return 0;
fail:
    sq_disconnect(c);
    return rc;
}

/* ---- reads ---- */

/*
 * Read ns/key (checked by the caller) into c->buf at offset *at (the
 * buffer grown as needed; the value followed by a NUL): 0 with *f filled
 * and *at moved past it, RHEMA_ENOTFOUND, or an error (f->rc says which).
 */
static int read_into(rhema_storage_conn *c, const char *ns, const char *key, size_t *at,
                     struct sq_found *f)
{
    sqlite3_stmt *st = c->st[ST_GET];
    int rc;
    memset(f, 0, sizeof *f);
    f->off = *at;
    bind_text(st, 1, ns);
    bind_text(st, 2, key);
    sqlite3_bind_int64(st, 4, now_ms(c->inst));
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const void *v = sqlite3_column_blob(st, 0);
        size_t n = (size_t)sqlite3_column_bytes(st, 0);
        if (buf_room(c, *at, n) != 0) {
            sqlite3_reset(st);
            conn_error(c, "out of memory");
            return RHEMA_ENOMEM;
        }
        if (n > 0)
            memcpy(c->buf + *at, v, n);
        c->buf[*at + n] = '\0';
        f->len = n;
        *at += n + 1;
        f->version = (uint64_t)sqlite3_column_int64(st, 1);
        f->expires_ms = sqlite3_column_int64(st, 2);
        rc = 0;
    } else if (rc == SQLITE_DONE) {
        conn_error(c, "key not found");
        rc = RHEMA_ENOTFOUND;
    } else {
        rc = sq_fail(c, rc, "get");
    }
    f->rc = rc;
    sqlite3_reset(st);
    return rc;
}

/* The header before a read, when the cache is on: 1 and *h, or 0. */
static int read_begin(rhema_storage_conn *c, struct wal_hdr *h)
{
    return c->inst->cache != NULL && hdr_now(c->inst, h) == 0;
}

/* After the read: cache what it found if the header has not moved. */
static void read_end(rhema_storage_conn *c, const struct wal_hdr *h0, size_t n,
                     const char *const *ns, const char *const *keys, const struct sq_found *f)
{
    struct wal_hdr h1;
    if (hdr_now(c->inst, &h1) == 0 && hdr_eq(h0, &h1))
        cache_fill(c, h0, n, ns, keys, f);
}

static int sq_get(rhema_storage_conn *c, const char *ns, const char *key,
                  struct rhema_storage_value *out)
{
    size_t at = 0;
    struct sq_found f;
    struct wal_hdr h0;
    int rcs;
    int rc = check_ns_key(c, ns, key);
    if (rc != 0)
        return rc;
    if (cache_get(c, 1, &ns, &key, out, &rcs)) {
        if (rcs != 0)
            conn_error(c, "key not found");
        return rcs;
    }
    int cached = read_begin(c, &h0);
    rc = read_into(c, ns, key, &at, &f);
    if (cached && (rc == 0 || rc == RHEMA_ENOTFOUND))
        read_end(c, &h0, 1, &ns, &key, &f);
    if (rc == 0) {
        out->data = c->buf;
        out->len = f.len;
        out->version = f.version;
    }
    return rc;
}

/*
 * get_many: the keys read in one read transaction -- one snapshot, and one
 * WAL read lock taken and released instead of one per key (a session GET
 * reads its record and its access record).
 */
static int sq_get_many(rhema_storage_conn *c, const char *const *ns, const char *const *keys,
                       size_t n, struct rhema_storage_value *out, int *rcs)
{
    struct sq_found f[RHEMA_STORAGE_GET_MANY_MAX];
    struct wal_hdr h0;
    size_t at = 0;
    int rc;
    const char *bad = rhema_storage_get_many_invalid(ns, keys, n, out, rcs);
    if (bad != NULL) {
        conn_error(c, "%s", bad);
        return RHEMA_EINVAL;
    }
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((rc = check_ns_key(c, ns[i], keys[i])) != 0)
            return rc;
    if (cache_get(c, n, ns, keys, out, rcs))
        return 0;
    int cached = read_begin(c, &h0);
    rc = sqlite3_step(c->st[ST_BEGIN_READ]);
    sqlite3_reset(c->st[ST_BEGIN_READ]);
    if (rc != SQLITE_DONE)
        return sq_fail(c, rc, "get_many: begin");
    for (size_t i = 0; i < n; i++) {
        rc = read_into(c, ns[i], keys[i], &at, &f[i]);
        if (rc != 0 && rc != RHEMA_ENOTFOUND) {
            sqlite3_step(c->st[ST_ROLLBACK]);
            sqlite3_reset(c->st[ST_ROLLBACK]);
            return rc;
        }
        rcs[i] = rc;
        out[i].len = f[i].len;
        out[i].version = f[i].version;
    }
    rc = sqlite3_step(c->st[ST_COMMIT]);
    sqlite3_reset(c->st[ST_COMMIT]);
    if (rc != SQLITE_DONE)
        return sq_fail(c, rc, "get_many: commit");
    if (cached)
        read_end(c, &h0, n, ns, keys, f);
    for (size_t i = 0; i < n; i++) /* the buffer has stopped moving */
        out[i].data = rcs[i] == 0 ? c->buf + f[i].off : NULL;
    return 0;
}

static int sq_scan(rhema_storage_conn *c, const char *ns, const char *from_key, const char *to_key,
                   size_t limit, rhema_storage_scan_cb cb, void *ctx)
{
    enum stmt_id id;
    sqlite3_stmt *st;
    int rc;

    const char *why = rhema_storage_scan_invalid(ns, cb);
    if (why != NULL) {
        conn_error(c, "%s", why);
        return RHEMA_EINVAL;
    }
    id = from_key != NULL ? (to_key != NULL ? ST_SCAN_BOTH : ST_SCAN_FROM)
                          : (to_key != NULL ? ST_SCAN_TO : ST_SCAN);
    st = c->st[id];
    bind_text(st, 1, ns);
    if (from_key != NULL)
        bind_text(st, 2, from_key);
    if (to_key != NULL)
        bind_text(st, 3, to_key);
    sqlite3_bind_int64(st, 4, now_ms(c->inst));
    sqlite3_bind_int64(st, 5, limit == 0 || limit > (size_t)INT64_MAX ? -1 : (int64_t)limit);
    for (;;) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            const char *k = (const char *)sqlite3_column_text(st, 0);
            const void *v = sqlite3_column_blob(st, 1);
            size_t len = (size_t)sqlite3_column_bytes(st, 1);
            uint64_t ver = (uint64_t)sqlite3_column_int64(st, 2);
            int r = cb(ctx, k != NULL ? k : "", v != NULL ? v : "", len, ver);
            if (r != 0) {
                rc = r < 0 ? r : 0;
                break;
            }
        } else if (rc == SQLITE_DONE) {
            rc = 0;
            break;
        } else {
            rc = sq_fail(c, rc, "scan");
            break;
        }
    }
    sqlite3_reset(st);
    return rc;
}

static int sq_stats(rhema_storage_conn *c, const char *ns, struct rhema_storage_stats *out)
{
    sqlite3_stmt *st;
    int rc;
    const char *why = rhema_storage_stats_invalid(ns, out);
    if (why != NULL) {
        conn_error(c, "%s", why);
        return RHEMA_EINVAL;
    }
    st = c->st[ns != NULL ? ST_STATS_NS : ST_STATS_ALL];
    if (ns != NULL)
        bind_text(st, 1, ns);
    sqlite3_bind_int64(st, 4, now_ms(c->inst));
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        out->entries = (uint64_t)sqlite3_column_int64(st, 0);
        out->bytes = (uint64_t)sqlite3_column_int64(st, 1);
        rc = 0;
    } else {
        rc = sq_fail(c, rc, "stats");
    }
    sqlite3_reset(st);
    return rc;
}

/* ---- writes ---- */

/* The live version of (ns, key) into *version (0 when absent). */
static int lookup(rhema_storage_conn *c, const char *ns, const char *key, int64_t now,
                  uint64_t *version)
{
    sqlite3_stmt *st = c->st[ST_LOOKUP];
    int rc;
    bind_text(st, 1, ns);
    bind_text(st, 2, key);
    sqlite3_bind_int64(st, 4, now);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *version = (uint64_t)sqlite3_column_int64(st, 0);
        rc = 0;
    } else if (rc == SQLITE_DONE) {
        *version = 0;
        rc = 0;
    } else {
        rc = sq_fail(c, rc, "lookup");
    }
    sqlite3_reset(st);
    return rc;
}

/*
 * The next version: the counter in meta is read once per transaction and
 * written back at commit (tx_commit), so a transaction of many writes pays
 * for it once.  Versions of rolled-back writes are simply skipped.
 */
static int next_version(rhema_storage_conn *c, uint64_t *out)
{
    if (!c->ver_loaded) {
        sqlite3_stmt *st = c->st[ST_VERSION_READ];
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            c->ver_next = (uint64_t)sqlite3_column_int64(st, 0);
            rc = 0;
        } else if (rc == SQLITE_DONE) {
            conn_error(c, "meta.version_counter is missing");
            rc = RHEMA_ECORRUPT;
        } else {
            rc = sq_fail(c, rc, "version counter");
        }
        sqlite3_reset(st);
        if (rc != 0)
            return rc;
        c->ver_loaded = 1;
    }
    *out = ++c->ver_next;
    return 0;
}

/*
 * Write i of ws[0..n) inside an open transaction: precondition, then
 * apply.  A sequenced write has no precondition; it takes the version of
 * ws[i - 1] when it follows a put (already applied: new_version is set),
 * else the next one, and its key is built from that version.
 */
static int write_one(rhema_storage_conn *c, struct rhema_storage_write *ws, size_t i, int64_t now)
{
    struct rhema_storage_write *w = &ws[i];
    uint64_t cur = 0, ev = w->expected_version, ver = 0;
    char seq_key[RHEMA_STORAGE_KEY_MAX + 1];
    const char *key = w->key;
    sqlite3_stmt *st;
    int rc = 0;
    if (rhema_storage_write_sequenced(w)) {
        if (rhema_storage_seq_shares_previous(ws, i))
            ver = ws[i - 1].new_version;
        else if ((rc = next_version(c, &ver)) != 0)
            return rc;
        key = rhema_storage_seq_key(seq_key, w->key, ver);
        goto upsert;
    }
    /* an unconditional put needs no lookup: INSERT OR REPLACE does it all */
    if (!(w->op == RHEMA_WRITE_PUT && ev == RHEMA_VERSION_ANY))
        rc = lookup(c, w->ns, w->key, now, &cur);
    if (rc != 0)
        return rc;
    if (w->op == RHEMA_WRITE_DEL && cur == 0) {
        conn_error(c, "key not found");
        return RHEMA_ENOTFOUND;
    }
    if (ev == RHEMA_VERSION_ABSENT && cur != 0) {
        conn_error(c, "key exists (version %llu)", (unsigned long long)cur);
        return RHEMA_ECONFLICT;
    }
    if (ev != RHEMA_VERSION_ANY && ev != RHEMA_VERSION_ABSENT && ev != cur) {
        if (cur == 0)
            conn_error(c, "expected version %llu, key absent", (unsigned long long)ev);
        else
            conn_error(c, "expected version %llu, found %llu", (unsigned long long)ev,
                       (unsigned long long)cur);
        return RHEMA_ECONFLICT;
    }
    if (w->op == RHEMA_WRITE_DEL) {
        st = c->st[ST_DELETE];
        bind_text(st, 1, w->ns);
        bind_text(st, 2, w->key);
        tx_note(c, w->ns, w->key);
        return step_done(c, ST_DELETE, "delete");
    }
    rc = next_version(c, &ver);
    if (rc != 0)
        return rc;
upsert:
    st = c->st[ST_UPSERT];
    bind_text(st, 1, w->ns);
    bind_text(st, 2, key);
    /* never bind a NULL pointer: that would store SQL NULL, not an empty blob */
    sqlite3_bind_blob(st, 3, w->value_len ? w->value : (const void *)"", (int)w->value_len,
                      SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, (int64_t)ver);
    sqlite3_bind_int64(st, 5, deadline_ms(now, w->ttl_ms));
    tx_note(c, w->ns, key);
    rc = step_done(c, ST_UPSERT, "put");
    if (rc == 0)
        w->new_version = ver;
    return rc;
}

/* Every PURGE_EVERY writes, delete a bounded number of expired rows. */
static void maybe_purge(rhema_storage_conn *c, int64_t now)
{
    if (atomic_fetch_add(&c->inst->writes, 1) % PURGE_EVERY != PURGE_EVERY - 1)
        return;
    sqlite3_bind_int64(c->st[ST_PURGE], 1, now);
    sqlite3_step(c->st[ST_PURGE]); /* best effort: a failure only delays the purge */
    sqlite3_reset(c->st[ST_PURGE]);
    if (sqlite3_changes(c->db) > 0)
        c->tx_unknown = 1; /* rows the read cache cannot name went */
}

/* Apply writes in one BEGIN IMMEDIATE transaction, all or nothing. */
static int write_tx(rhema_storage_conn *c, struct rhema_storage_write *w, size_t n)
{
    int64_t now;
    size_t i;
    int rc = tx_begin(c);
    if (rc != 0)
        return rc;
    now = now_ms(c->inst); /* after the lock: every check sees the same instant */
    for (i = 0; i < n && rc == 0; i++)
        rc = write_one(c, w, i, now);
    if (rc == 0) {
        maybe_purge(c, now);
        rc = tx_commit(c);
    } else {
        tx_rollback(c);
    }
    if (rc != 0)
        for (i = 0; i < n; i++)
            w[i].new_version = 0;
    return rc;
}

static int sq_put(rhema_storage_conn *c, struct rhema_storage_write *w)
{
    int rc = check_write(c, w);
    if (rc != 0)
        return rc;
    if (w->op != RHEMA_WRITE_PUT) {
        conn_error(c, "put() takes RHEMA_WRITE_PUT");
        return RHEMA_EINVAL;
    }
    return write_tx(c, w, 1);
}

static int sq_del(rhema_storage_conn *c, const char *ns, const char *key, uint64_t expected_version)
{
    struct rhema_storage_write w = {.size = sizeof(struct rhema_storage_write),
                                    .op = RHEMA_WRITE_DEL,
                                    .ns = ns,
                                    .key = key,
                                    .expected_version = expected_version};
    int rc = check_write(c, &w);
    if (rc != 0)
        return rc;
    return write_tx(c, &w, 1);
}

static int sq_batch(rhema_storage_conn *c, struct rhema_storage_write *w, size_t n)
{
    int rc;
    if (n == 0)
        return 0;
    const char *why = NULL;
    if ((rc = rhema_storage_batch_check(c, w, n, check_write, &why)) != 0) {
        if (why != NULL)
            conn_error(c, "%s", why);
        return rc;
    }
    return write_tx(c, w, n);
}

/*
 * Group commit: every member in its own savepoint inside one BEGIN
 * IMMEDIATE transaction, so a member whose precondition fails is rolled
 * back alone, and one COMMIT makes them all durable.
 */

static int sq_group(rhema_storage_conn *c, struct rhema_storage_batch *g, size_t n)
{
    size_t i, j;
    int rc;
    if (n == 0)
        return 0;
    const char *why = NULL;
    int bad = rhema_storage_group_check(c, g, n, check_write, &why);
    if (why != NULL)
        conn_error(c, "%s", why);
    if (bad != 0)
        return bad;
    rc = tx_begin(c);
    if (rc != 0)
        return rc;
    int64_t now = now_ms(c->inst);
    for (i = 0; i < n && rc == 0; i++) {
        if (g[i].result != 0)
            continue;
        int sp = rhema_storage_batch_checks_after_first(&g[i]);
        if (sp && (rc = step_done(c, ST_SAVEPOINT, "savepoint")) != 0)
            break;
        for (j = 0; j < g[i].n && g[i].result == 0; j++)
            g[i].result = write_one(c, g[i].writes, j, now);
        if (g[i].result != 0) {
            size_t failed = j - 1;
            for (j = 0; j < g[i].n; j++)
                g[i].writes[j].new_version = 0;
            if (g[i].result == RHEMA_EUNAVAIL || g[i].result == RHEMA_EIO ||
                g[i].result == RHEMA_ECORRUPT || g[i].result == RHEMA_ENOMEM ||
                (!sp && failed > 0))
                rc = g[i].result; /* nothing to roll back to: give up on the whole group */
            else if (sp)
                rc = step_done(c, ST_ROLLBACK_TO, "rollback to savepoint");
        }
        if (rc == 0 && sp)
            rc = step_done(c, ST_RELEASE, "release savepoint");
    }
    if (rc == 0) {
        maybe_purge(c, now);
        rc = tx_commit(c);
    } else {
        tx_rollback(c);
    }
    if (rc != 0)
        for (i = 0; i < n; i++)
            for (j = 0; j < g[i].n; j++)
                g[i].writes[j].new_version = 0;
    return rc;
}

/* ---- leases ---- */

static void fill_lease(struct rhema_lease_info *out, const char *holder, uint64_t epoch,
                       int64_t expires, int64_t now)
{
    if (out == NULL)
        return;
    memset(out, 0, sizeof *out);
    if (holder != NULL && holder[0] != '\0' && expires > now) {
        snprintf(out->holder, sizeof out->holder, "%s", holder);
        out->ttl_remaining_ms = (uint64_t)(expires - now);
    }
    out->epoch = epoch;
}

static int sq_lease(rhema_storage_conn *c, const char *name, const char *holder, uint64_t ttl_ms,
                    int op, struct rhema_lease_info *out)
{
    sqlite3_stmt *st = c->st[ST_LEASE_GET];
    char cur[RHEMA_LEASE_HOLDER_MAX + 1] = "";
    uint64_t epoch = 0;
    int64_t expires = 0, now, new_expires;
    int rc, held, mine, in_tx = 0, write = 0;

    const char *why = rhema_storage_lease_invalid(name, holder, ttl_ms, op);
    if (why != NULL) {
        conn_error(c, "%s", why);
        return RHEMA_EINVAL;
    }
    if (op != RHEMA_LEASE_QUERY) {
        if (op != RHEMA_LEASE_RELEASE && (ttl_ms == 0 || ttl_ms > (uint64_t)INT32_MAX * 1000)) {
            conn_error(c, "lease ttl_ms must be in 1..%llu",
                       (unsigned long long)INT32_MAX * 1000);
            return RHEMA_EINVAL;
        }
        rc = tx_begin(c);
        if (rc != 0)
            return rc;
        in_tx = 1;
    }

    now = now_ms(c->inst);
    bind_text(st, 1, name);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *hv = (const char *)sqlite3_column_text(st, 0);
        snprintf(cur, sizeof cur, "%s", hv != NULL ? hv : "");
        epoch = (uint64_t)sqlite3_column_int64(st, 1);
        expires = sqlite3_column_int64(st, 2);
        rc = 0;
    } else if (rc == SQLITE_DONE) {
        rc = 0;
    } else {
        rc = sq_fail(c, rc, "lease");
    }
    sqlite3_reset(st);
    if (rc != 0)
        goto out;

    held = cur[0] != '\0' && expires > now;
    mine = held && holder != NULL && strcmp(cur, holder) == 0;
    new_expires = deadline_ms(now, ttl_ms);
    switch (op) {
    case RHEMA_LEASE_ACQUIRE:
        if (held && !mine) {
            rc = RHEMA_ECONFLICT;
        } else {
            if (!held)
                epoch++;
            snprintf(cur, sizeof cur, "%s", holder);
            expires = new_expires;
            write = 1;
        }
        break;
    case RHEMA_LEASE_RENEW:
        if (!mine) {
            rc = RHEMA_ECONFLICT;
        } else {
            expires = new_expires;
            write = 1;
        }
        break;
    case RHEMA_LEASE_RELEASE:
        if (!mine) {
            rc = RHEMA_ECONFLICT;
        } else {
            cur[0] = '\0';
            expires = 0;
            write = 1;
        }
        break;
    default: /* QUERY */
        if (!held)
            rc = RHEMA_ENOTFOUND;
        break;
    }
    if (rc == RHEMA_ECONFLICT)
        conn_error(c, "lease '%s' is held by '%s'", name, held ? cur : "nobody");
    else if (rc == RHEMA_ENOTFOUND)
        conn_error(c, "lease '%s' is not held", name);

    if (write) {
        sqlite3_stmt *put = c->st[ST_LEASE_PUT];
        bind_text(put, 1, name);
        bind_text(put, 2, cur);
        sqlite3_bind_int64(put, 3, (int64_t)epoch);
        sqlite3_bind_int64(put, 4, expires);
        rc = step_done(c, ST_LEASE_PUT, "lease");
        if (rc == 0) {
            rc = tx_commit(c);
            in_tx = 0;
        }
    }
    if (rc == 0 || rc == RHEMA_ECONFLICT || rc == RHEMA_ENOTFOUND)
        fill_lease(out, cur, epoch, expires, now);
out:
    if (in_tx)
        tx_rollback(c); /* nothing written (or a failure): end the transaction */
    return rc;
}

/* ---- the rest ---- */

static int sq_health(rhema_storage_conn *c, char **err)
{
    sqlite3_stmt *st = c->st[ST_HEALTH];
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        rc = sq_fail(c, rc, "health");
        sqlite3_reset(st);
        return c->inst->host->set_error(err, RHEMA_EUNAVAIL, "sqlite: %s", c->err);
    }
    sqlite3_reset(st);
    return 0;
}

/*
 * rate(): one step in the rate file (see the top of the file).  No
 * database lock, no write mutex: the file has its own locks.
 */
static int sq_rate(rhema_storage_conn *c, struct rhema_rate_query *q)
{
    const char *why = NULL;
    int rc = rhema_rate_file_apply(c->inst->rate, q, &why);
    if (rc != 0)
        conn_error(c, "%s", why != NULL ? why : "rate failed");
    return rc;
}

static const char *sq_errmsg(rhema_storage_conn *c)
{
    return c != NULL ? c->err : "";
}

/* fsync a file or directory by path.  0 or errno. */
static int fsync_path(const char *path, int dir)
{
    int fd = open(path, (dir ? O_RDONLY | O_DIRECTORY : O_RDWR) | O_CLOEXEC);
    int e = 0;
    if (fd < 0)
        return errno;
    if (fsync(fd) != 0)
        e = errno;
    close(fd);
    return e;
}

static int fsync_parent(const char *path)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (slash == NULL)
        return fsync_path(".", 1);
    if (slash == path)
        return fsync_path("/", 1);
    if ((size_t)(slash - path) >= sizeof dir)
        return ENAMETOOLONG;
    memcpy(dir, path, (size_t)(slash - path));
    dir[slash - path] = '\0';
    return fsync_path(dir, 1);
}

/*
 * The online backup API copies a consistent snapshot page by page into
 * path.tmp, which is then fsync'd and renamed over path.
 */
static int sq_backup(rhema_storage_conn *c, const char *path, char **err)
{
    const struct rhema_host *h = c->inst->host;
    char tmp[PATH_MAX], side[PATH_MAX + 16];
    sqlite3 *dest = NULL;
    sqlite3_backup *b;
    int rc, ret = 0, e, waited = 0;

    if (path == NULL || path[0] == '\0')
        return h->set_error(err, RHEMA_EINVAL, "sqlite: backup: empty path");
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return h->set_error(err, RHEMA_EINVAL, "sqlite: backup: path too long");
    unlink(tmp);
    rc = sqlite3_open_v2(tmp, &dest, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                         NULL);
    if (rc != SQLITE_OK) {
        ret = h->set_error(err, RHEMA_EIO, "sqlite: backup: open %s: %s", tmp,
                           dest != NULL ? sqlite3_errmsg(dest) : sqlite3_errstr(rc));
        goto out;
    }
    b = sqlite3_backup_init(dest, "main", c->db, "main");
    if (b == NULL) {
        ret = h->set_error(err, map_rc(sqlite3_errcode(dest)), "sqlite: backup: %s",
                           sqlite3_errmsg(dest));
        goto out;
    }
    do {
        rc = sqlite3_backup_step(b, -1);
        if (rc == SQLITE_BUSY || rc == SQLITE_LOCKED) {
            if (waited >= c->inst->busy_timeout_ms)
                break;
            sqlite3_sleep(10);
            waited += 10;
        }
    } while (rc == SQLITE_OK || rc == SQLITE_BUSY || rc == SQLITE_LOCKED);
    sqlite3_backup_finish(b);
    if (rc != SQLITE_DONE) {
        ret = h->set_error(err, map_rc(rc), "sqlite: backup to %s: %s", tmp, sqlite3_errstr(rc));
        goto out;
    }
    rc = sqlite3_close(dest);
    dest = NULL;
    if (rc != SQLITE_OK) {
        ret = h->set_error(err, RHEMA_EIO, "sqlite: backup: close %s: %s", tmp, sqlite3_errstr(rc));
        goto out;
    }
    if ((e = fsync_path(tmp, 0)) != 0) {
        ret = h->set_error(err, RHEMA_EIO, "sqlite: backup: fsync %s: %s", tmp, strerror(e));
        goto out;
    }
    if (rename(tmp, path) != 0) {
        e = errno;
        ret = h->set_error(err, RHEMA_EIO, "sqlite: backup: rename to %s: %s", path, strerror(e));
        goto out;
    }
    if ((e = fsync_parent(path)) != 0)
        ret = h->set_error(err, RHEMA_EIO, "sqlite: backup: fsync the directory of %s: %s", path,
                           strerror(e));
out:
    if (dest != NULL)
        sqlite3_close(dest);
    if (ret != 0) {
        unlink(tmp);
        conn_error(c, "backup to %s failed", path);
    }
    /* a journal or WAL the copy may have left beside the temporary file */
    snprintf(side, sizeof side, "%s-journal", tmp);
    unlink(side);
    snprintf(side, sizeof side, "%s-wal", tmp);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", tmp);
    unlink(side);
    return ret;
}

/* ---- restore ---- */

/* "file:" URI of path with immutable=1 (read only, no locks, no -wal/-shm created). */
static char *immutable_uri(const char *path)
{
    size_t n = strlen(path), i;
    char *u = malloc(n * 3 + 64), *o;
    if (u == NULL)
        return NULL;
    o = u + sprintf(u, "file:");
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)path[i];
        if (ch == '%' || ch == '?' || ch == '#' || ch < 0x20 || ch >= 0x7f)
            o += sprintf(o, "%%%02X", ch);
        else
            *o++ = (char)ch;
    }
    strcpy(o, "?mode=ro&immutable=1");
    return u;
}

/* The first row's first column of sql as an int64 (def when no row). */
static int query_i64(sqlite3 *db, const char *sql, int64_t def, int64_t *out)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    *out = def;
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            *out = sqlite3_column_int64(st, 0);
            rc = SQLITE_OK;
        } else if (rc == SQLITE_DONE) {
            rc = SQLITE_OK;
        }
    }
    sqlite3_finalize(st);
    return rc;
}

/*
 * Check a backup before anything changes: a SQLite file whose size is the
 * page count its header declares (a truncated copy fails here), that
 * passes PRAGMA integrity_check, and that holds this plugin's schema.
 */
static int verify_backup(rhema_storage_instance *in, const char *path, const char *uri,
                         char **err)
{
    const struct rhema_host *h = in->host;
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    struct stat sb;
    int64_t page_size = 0, page_count = 0, version = 0, tables = 0;
    int rc, ret = 0;

    if (stat(path, &sb) != 0) {
        int e = errno;
        return h->set_error(err, e == ENOENT ? RHEMA_ENOTFOUND : RHEMA_EIO,
                            "sqlite: restore: %s: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode))
        return h->set_error(err, RHEMA_EINVAL, "sqlite: restore: %s is not a file", path);
    rc = sqlite3_open_v2(uri, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI | SQLITE_OPEN_NOMUTEX,
                         NULL);
    if (rc == SQLITE_OK)
        rc = query_i64(db, "PRAGMA page_size", 0, &page_size);
    if (rc == SQLITE_OK)
        rc = query_i64(db, "PRAGMA page_count", 0, &page_count);
    if (rc != SQLITE_OK) {
        ret = h->set_error(err, RHEMA_ECORRUPT, "sqlite: restore: %s is not a readable SQLite "
                           "database: %s", path, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        goto out;
    }
    if (page_size <= 0 || page_count <= 0 || (int64_t)sb.st_size != page_size * page_count) {
        ret = h->set_error(err, RHEMA_ECORRUPT,
                           "sqlite: restore: %s is truncated or damaged: %lld bytes, the header "
                           "declares %lld pages of %lld", path, (long long)sb.st_size,
                           (long long)page_count, (long long)page_size);
        goto out;
    }
    rc = sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc != SQLITE_ROW || strcmp((const char *)sqlite3_column_text(st, 0), "ok") != 0) {
        ret = h->set_error(err, RHEMA_ECORRUPT, "sqlite: restore: %s fails integrity_check: %s",
                           path, rc == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0)
                                                  : sqlite3_errmsg(db));
        goto out;
    }
    sqlite3_finalize(st);
    st = NULL;
    rc = query_i64(db, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND "
                       "name IN ('meta', 'kv', 'leases')", 0, &tables);
    if (rc == SQLITE_OK && tables == 3)
        rc = query_i64(db, "SELECT value FROM meta WHERE name = 'schema_version'", 0, &version);
    if (rc != SQLITE_OK || tables != 3 || version != SCHEMA_VERSION) {
        ret = h->set_error(err, version > SCHEMA_VERSION ? RHEMA_ENOTSUP : RHEMA_ECORRUPT,
                           "sqlite: restore: %s is not a backup of this plugin (schema_version "
                           "%lld, tables %lld of 3; this plugin knows schema_version %d)",
                           path, (long long)version, (long long)tables, SCHEMA_VERSION);
        goto out;
    }
out:
    sqlite3_finalize(st);
    sqlite3_close(db);
    return ret;
}

/*
 * Restore in one transaction of the live database, the backup ATTACHed
 * read-only: kv is replaced by the backup's, the version counter becomes
 * max(backup, live), and leases are merged so that no epoch goes back (see
 * storage.h).  The transaction is BEGIN IMMEDIATE under the instance's
 * write lock, so SQLite's own write lock keeps other processes out and its
 * journal makes it all or nothing, even across a crash -- unlike copying
 * pages over the live file (the backup API) or renaming a file over it,
 * which would also throw away the live epochs and counter.
 */
static const char restore_sql[] =
    "DELETE FROM main.kv;"
    "INSERT INTO main.kv(ns, key, value, version, expires_at)"
    "  SELECT ns, key, value, version, expires_at FROM snap.kv;"
    "UPDATE main.meta SET value = max(value, coalesce((SELECT value FROM snap.meta"
    "  WHERE name = 'version_counter'), 0), coalesce((SELECT max(version) FROM snap.kv), 0))"
    "  WHERE name = 'version_counter';"
    /* leases the snapshot lacks: kept, free */
    "UPDATE main.leases SET holder = '', expires_at = 0"
    "  WHERE name NOT IN (SELECT name FROM snap.leases);"
    /* the snapshot's leases, unless the live epoch is larger (then free at that epoch) */
    "INSERT OR REPLACE INTO main.leases(name, holder, epoch, expires_at)"
    "  SELECT s.name,"
    "    CASE WHEN coalesce(l.epoch, 0) > s.epoch THEN '' ELSE s.holder END,"
    "    max(s.epoch, coalesce(l.epoch, 0)),"
    "    CASE WHEN coalesce(l.epoch, 0) > s.epoch THEN 0 ELSE s.expires_at END"
    "  FROM snap.leases s LEFT JOIN main.leases l ON l.name = s.name;";

static int sq_restore(rhema_storage_instance *in, const char *path, char **err)
{
    const struct rhema_host *h = in->host;
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    char *uri = NULL, *msg = NULL;
    int rc, ret = 0, attached = 0, locked = 0, in_tx = 0;
    int64_t entries = 0;

    if (path == NULL || path[0] == '\0')
        return h->set_error(err, RHEMA_EINVAL, "sqlite: restore: empty path");
    uri = immutable_uri(path);
    if (uri == NULL)
        return h->set_error(err, RHEMA_ENOMEM, "sqlite: restore: out of memory");
    if ((ret = verify_backup(in, path, uri, err)) != 0)
        goto out;
    rc = sqlite3_open_v2(in->path, &db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_URI | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        ret = h->set_error(err, map_rc(rc), "sqlite: restore: open %s: %s", in->path,
                           db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        goto out;
    }
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, in->busy_timeout_ms);
    rc = sqlite3_prepare_v2(db, "ATTACH DATABASE ?1 AS snap", -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(st, 1, uri, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_DONE)
        rc = SQLITE_OK;
    sqlite3_finalize(st);
    st = NULL;
    if (rc != SQLITE_OK) {
        ret = h->set_error(err, map_rc(rc), "sqlite: restore: attach %s: %s", path,
                           sqlite3_errmsg(db));
        goto out;
    }
    attached = 1;
    pthread_mutex_lock(&in->write_lock);
    locked = 1;
    rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, &msg);
    if (rc == SQLITE_OK) {
        in_tx = 1;
        rc = sqlite3_exec(db, restore_sql, NULL, NULL, &msg);
    }
    if (rc == SQLITE_OK)
        rc = query_i64(db, "SELECT count(*) FROM main.kv", 0, &entries);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, "COMMIT", NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        ret = h->set_error(err, map_rc(rc), "sqlite: restore into %s: %s", in->path,
                           msg ? msg : sqlite3_errmsg(db));
        goto out;
    }
    in_tx = 0;
    cache_reset(in); /* the header moved too; this says so at once */
    sqlite3_exec(db, "PRAGMA main.wal_checkpoint(TRUNCATE)", NULL, NULL, NULL);
    if (h->log != NULL)
        h->log(RHEMA_LOG_NOTICE, PLUGIN_NAME, "restored %s from %s (%lld entries)", in->path,
               path, (long long)entries);
out:
    if (in_tx)
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    if (locked)
        pthread_mutex_unlock(&in->write_lock);
    if (attached)
        sqlite3_exec(db, "DETACH DATABASE snap", NULL, NULL, NULL);
    sqlite3_free(msg);
    sqlite3_close(db);
    free(uri);
    return ret;
}

/*
 * The vtable's batch(), group() and get_many() take arrays of the caller's
 * stride (storage.h, "Growing the structs"); the functions above work on
 * arrays of this plugin's layout, and ../common adapts one to the other.
 */

static int sq_batch_strided(rhema_storage_conn *c, struct rhema_storage_write *w, size_t n)
{
    const char *why = NULL;
    int rc = rhema_storage_call_batch(sq_batch, c, w, n, &why);
    if (why != NULL)
        conn_error(c, "%s", why);
    return rc;
}

static int sq_group_strided(rhema_storage_conn *c, struct rhema_storage_batch *g, size_t n)
{
    const char *why = NULL;
    int rc = rhema_storage_call_group(sq_group, c, g, n, &why);
    if (why != NULL)
        conn_error(c, "%s", why);
    return rc;
}

static int sq_get_many_strided(rhema_storage_conn *c, const char *const *ns,
                               const char *const *keys, size_t n, struct rhema_storage_value *out,
                               int *rcs)
{
    const char *why = NULL;
    int rc = rhema_storage_call_get_many(sq_get_many, c, ns, keys, n, out, rcs, &why);
    if (why != NULL)
        conn_error(c, "%s", why);
    return rc;
}

static const struct rhema_storage_plugin sqlite_plugin = {
    .base = RHEMA_STORAGE_PLUGIN_HEADER(PLUGIN_NAME, "1.0.0",
                                        "SQLite database in WAL mode (durable, one host)"),
    .features = RHEMA_STORAGE_DURABLE | RHEMA_STORAGE_TTL | RHEMA_STORAGE_LEASES |
                RHEMA_STORAGE_SEQUENCED,
    .open = sq_open,
    .close = sq_close,
    .connect = sq_connect,
    .disconnect = sq_disconnect,
    .get = sq_get,
    .put = sq_put,
    .del = sq_del,
    .batch = sq_batch_strided,
    .scan = sq_scan,
    .lease = sq_lease,
    .health = sq_health,
    .stats = sq_stats,
    .errmsg = sq_errmsg,
    .backup = sq_backup,
    .group = sq_group_strided,
    .restore = sq_restore,
    .rate = sq_rate,
    .get_many = sq_get_many_strided,
    .check = sq_check,
};

int rhema_plugin_init(const struct rhema_host *host, const struct rhema_plugin **out)
{
    (void)host;
    *out = &sqlite_plugin.base;
    return 0;
}
