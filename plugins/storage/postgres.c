/*
 * postgres -- the PostgreSQL storage plugin (libpq).
 *
 * Features SHARED | DURABLE | TTL | LEASES: every node of a cluster that
 * points at the same database sees the same keys and leases, and the
 * server's clock (now()) is the one clock they all agree on.
 *
 * Configuration (persistence.postgres):
 *   conninfo                = "host=127.0.0.1 port=5432 dbname=rhema";
 *                             a libpq connection string or URI
 *   connect_timeout_seconds = 5;         per connection attempt, 1..3600
 *   schema                  = "rhema";   [A-Za-z_][A-Za-z0-9_]*, created if missing
 *
 * Schema (schema_version 1), all in the configured schema:
 *   meta(name text PRIMARY KEY, value bigint)      schema_version
 *   SEQUENCE kv_version                            every version of every key
 *   kv(ns text COLLATE "C", key bytea, value bytea, version bigint,
 *      expires_at timestamptz NULL, PRIMARY KEY (ns, key))
 *       key is bytea, so keys order by memcmp then length (strcmp order)
 *       and may hold bytes that are not valid in the database encoding;
 *       expires_at NULL means "never"; a partial index on expires_at keeps
 *       the purge of expired rows cheap.
 *   leases(name bytea PRIMARY KEY, holder bytea, epoch bigint,
 *          expires_at timestamptz NULL)
 *       a released or expired lease keeps its row (holder ''), so the epoch
 *       of a name only grows, across releases, expiry and restarts.
 *   rate(key bytea PRIMARY KEY, n, t0, t1, t2, t3, rest, at, ok bigint)
 *       rate()'s GCRA state: the number of windows, their tats (unix us,
 *       the server's clock; t[n..3] unused), the instant after which every
 *       tat has passed, the now of the last step and whether it allowed
 *       (what RETURNING reports).  Not data: backup() and restore() leave
 *       it out.  An index on rest keeps the purge of rows at rest cheap.
 *       UNLOGGED: a step writes no WAL, so its commit waits for no WAL
 *       flush (about 100 us a step instead of 500 on a local server with
 *       fsync on); the price is that a server crash empties the table and
 *       a streaming standby does not have it, so after a crash or a
 *       failover every party starts with a fresh allowance -- acceptable
 *       for state that is not data (storage.h).
 *       CREATE ... IF NOT EXISTS at every open, so a schema made before
 *       rate() gains it (schema_version stays 1).
 * open() creates it in one transaction that first takes
 * pg_advisory_xact_lock(hashtext('rhema.schema:' || schema)), so nodes that
 * start together do not race, and refuses a schema_version it does not know.
 *
 * Versions: every version is a fresh nextval() of kv_version, so a version
 * is never handed out twice, to any key, even across a delete and a
 * re-create or from two nodes.  An update takes its nextval() in the SET
 * clause, which PostgreSQL evaluates after it has locked the row: a value
 * drawn after the previous writer committed, hence larger than the version
 * it replaces.
 *
 * Statements: every statement is prepared once per connection (PQprepare,
 * re-prepared after a reconnect) and run with PQsendQueryPrepared, binary
 * parameters and binary results.  A put or a delete is one statement in
 * autocommit: the precondition sits in its WHERE clause (UPDATE ... WHERE
 * version = $5, or INSERT ... ON CONFLICT DO UPDATE ... WHERE the old row
 * has expired for RHEMA_VERSION_ABSENT), inside a WITH whose outer SELECT
 * also reads the current version, for the conflict message and to tell
 * ENOTFOUND from ECONFLICT.  batch() and group() use libpq pipeline mode
 * (libpq >= 14): BEGIN, every member's statements (a SAVEPOINT first for a
 * member whose later writes have preconditions) sent in one go with one
 * Sync, then COMMIT -- two round trips per group; a member that failed
 * after some of its writes applied costs one more round (see pl_apply).
 * Consecutive unconditional puts of a member go as one INSERT over arrays
 * (ST_PUT_MANY): a session create is two statements, not six.
 * get_many() pipelines get()'s statement, one round trip for n entries.
 * Without pipelining (an older libpq) each statement is its own round
 * trip, and get_many() is not offered.
 *
 * Sequenced writes (RHEMA_WRITE_SEQUENCED, minor 3): ST_PUT_SEQ inserts
 * the record under its prefix and the 20 digits of its version, which is
 * currval('kv_version') when it follows a put of the same batch (that
 * put's nextval() was the last one on this connection: put_run() never
 * folds such a put into a multi-row ST_PUT_MANY) and a fresh nextval()
 * otherwise.  A sequence hands out numbers before the transactions that
 * drew them commit, so two batches could commit out of version order; a
 * batch or group holding a sequenced write therefore goes through the
 * pipelined transaction (even a single put) and begins with
 * pg_advisory_xact_lock(hashtext('rhema.feed:"schema"')), before it draws
 * any version: such transactions run one at a time until COMMIT, and their
 * records become visible in version order to every connection of every
 * node.  Transactions without a sequenced write never take the lock.  The
 * same transaction runs pg_notify(channel, ''), the channel being the
 * schema's (feed_channel), which the server delivers at COMMIT only.
 *
 * watch() (minor 3): a thread with its own connection LISTENs on that
 * channel (see "watch()" below).
 *
 * Time: TTLs and leases use the server's now(); the host's clock is never
 * compared with it.
 *
 * rate() is one statement in autocommit (ST_RATE): INSERT ... ON CONFLICT
 * (key) DO UPDATE whose SET expressions are rhema_gcra_step()
 * (../common/rate_table.c) in SQL, RETURNING the outcome.  The row lock
 * of the conflicting row makes concurrent steps of one key, from any node,
 * run one after the other, each on the row the previous one wrote.  Its now
 * is the server's clock_timestamp(), read once per statement, so every node
 * of a cluster counts on one clock; it is written back into q->now_us.
 * Every RATE_PURGE_EVERY calls a connection deletes up to RATE_PURGE_LIMIT
 * rows at rest (SKIP LOCKED: never waiting for a step).
 *
 * Faults: a connection that breaks, or a server that cannot be reached,
 * makes the call return RHEMA_EUNAVAIL with the reason in errmsg().  The
 * next call reconnects (and re-prepares) by itself, at most once per
 * backoff period: 100 ms after a failed attempt, doubling up to 2 s.  A
 * write whose statement or COMMIT was sent but whose answer never came
 * back is RHEMA_EUNAVAIL with a message saying its outcome is unknown;
 * a write inside a transaction that broke before its COMMIT was not
 * applied (the server rolls the transaction back).
 *
 * Backup and restore: backup() writes a pg_dump-style SQL script (see
 * pg_backup); restore() checks such a script completely and loads it in
 * one transaction (see pg_restore).
 *
 * Threads: one PGconn per connect(), used by one thread; the instance holds
 * only configuration and an atomic counter.  Notices from the server go to
 * host->log at debug level, never to stderr.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libpq-fe.h>

#include <rhema/storage.h>

#include "../common/rate_table.h"
#include "../common/storage_check.h"

#define PLUGIN_NAME "postgres"
#define SCHEMA_VERSION 1
#define PG_ERRMSG_MAX 512
#define BACKOFF_MIN_MS 100u
#define BACKOFF_MAX_MS 2000u
#define PURGE_EVERY 64u   /* writes between two purges of expired rows */
#define PURGE_LIMIT "256" /* rows a purge deletes at most */
#define MAX_PARAMS 10
#define RATE_PURGE_EVERY 1024u  /* rate() calls of a connection between two purges */
#define RATE_PURGE_LIMIT "4096" /* rows at rest a purge deletes at most: > RATE_PURGE_EVERY */
#define IDLE_CHECK_MS 5u /* a connection used this recently is not polled before a call */
#define VALUE_MAX ((size_t)0x3fffffff) /* bytea holds at most 1 GiB */
#define TTL_MAX_MS 10000000000000ull   /* ~317 years: longer TTLs saturate */
#define LEASE_TTL_MAX_MS ((uint64_t)INT32_MAX * 1000)

/* parameter type OIDs (pg_type.dat; stable across versions) */
#define OID_BYTEA 17u
#define OID_INT8 20u
#define OID_TEXT 25u
#define OID_TEXT_ARRAY 1009u
#define OID_BYTEA_ARRAY 1001u
#define OID_INT8_ARRAY 1016u
#define PUT_MANY_MAX 64 /* unconditional puts of one member in one statement at most */

enum stmt_id {
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_SAVEPOINT,
    ST_RELEASE,
    ST_ROLLBACK_TO,
    ST_GET,
    ST_PUT_ANY,
    ST_PUT_MANY,
    ST_PUT_ABSENT,
    ST_PUT_IF,
    ST_PUT_SEQ,
    ST_DEL,
    ST_PURGE,
    ST_SCAN,      /* no bounds */
    ST_SCAN_FROM, /* from_key only */
    ST_SCAN_TO,   /* to_key only */
    ST_SCAN_BOTH, /* both bounds */
    ST_STATS_NS,
    ST_STATS_ALL,
    ST_LEASE_GET,
    ST_LEASE_ACQUIRE,
    ST_LEASE_RENEW,
    ST_LEASE_RELEASE,
    ST_HEALTH,
    ST_RATE,
    ST_RATE_PURGE,
    ST_SEQ_LOCK,
    ST_SEQ_NOTIFY,
    ST__COUNT
};

/* clang-format off: SQL reads best laid out by hand */
/*
 * SQL templates: "@" stands for the quoted schema name.  Parameter types are
 * one letter each: t text, b bytea, i int8; T text[], B bytea[], I int8[].
 */
#define LIVE "(t.expires_at IS NULL OR t.expires_at > now())"
#define EXPIRES(P) "CASE WHEN " P " > 0 THEN now() + " P " * interval '1 millisecond' END"
#define CURRENT "(SELECT t.version FROM @.kv t WHERE t.ns = $1 AND t.key = $2 AND " LIVE ")"
/*
 * The member guard of a write inside a pipelined group (G is its int8
 * parameter, the member's tag): 0 for no guard; otherwise the write is
 * skipped -- changes nothing, returns no version -- once an earlier write
 * of the same member failed its precondition, which FAILED() records in a
 * transaction-local setting (rolled back with a savepoint, gone at the end
 * of the transaction).  So a member whose first write fails changes nothing
 * at all, though its later writes were sent before that was known.
 */
#define GUARD(G) "(" G " = 0 OR current_setting('rhema.failed', true) IS DISTINCT FROM " G "::text)"
#define FAILED(G) "CASE WHEN x.d IS NULL AND " G " <> 0 THEN set_config('rhema.failed', " G "::text, true) END"
#define INSERT_KV(G)                                                                               \
    "INSERT INTO @.kv AS t (ns, key, value, version, expires_at) "                                 \
    "SELECT $1, $2, $3, nextval('@.kv_version'), " EXPIRES("$4") " WHERE " GUARD(G) " "            \
    "ON CONFLICT (ns, key) DO UPDATE SET value = EXCLUDED.value, "                                 \
    "version = nextval('@.kv_version'), expires_at = EXCLUDED.expires_at"
/* -> (new version or NULL, live version before or NULL, -) */
#define OUTCOME(G) " SELECT x.d, x.c, " FAILED(G) " FROM (SELECT (SELECT version FROM w) AS d, " CURRENT " AS c) x"
#define SCAN_SQL(BOUNDS)                                                                           \
    "SELECT t.key, t.value, t.version FROM @.kv t WHERE t.ns = $1" BOUNDS " AND " LIVE             \
    " ORDER BY t.key LIMIT $4"
#define STATS_SQL(WHERE)                                                                           \
    "SELECT count(*), COALESCE(sum(octet_length(t.key) + octet_length(t.value)), 0)::int8 "        \
    "FROM @.kv t WHERE " WHERE LIVE
#define HELD "(octet_length(l.holder) > 0 AND l.expires_at > now())"
#define LEASE_STATE                                                                                \
    "l.holder, l.epoch, CASE WHEN " HELD " THEN "                                                  \
    "ceil(extract(epoch FROM l.expires_at - now()) * 1000)::int8 ELSE 0 END"

/*
 * rate(): $1 key, $2 n, then interval and tolerance of each of the 4
 * windows ($3 $4, $5 $6, $7 $8, $9 $10); a window past n gets interval 0
 * and the largest tolerance, so it always conforms and never moves.  The
 * proposed row (EXCLUDED) carries now in `at`; r is the stored row, which
 * counts as absent (every tat = now) when it has another n or is at rest.
 */
#define RT_NOW "EXCLUDED.at"
#define RT_VALID "(r.n = $2 AND r.rest > " RT_NOW ")"
#define RT_BASE(T) "(CASE WHEN " RT_VALID " THEN GREATEST(r." T ", " RT_NOW ") ELSE " RT_NOW " END)"
#define RT_CONFORMS(T, TOL) "(" RT_BASE(T) " - " RT_NOW " <= " TOL ")"
#define RT_OK                                                                                      \
    "(" RT_CONFORMS("t0", "$4") " AND " RT_CONFORMS("t1", "$6") " AND " RT_CONFORMS(               \
        "t2", "$8") " AND " RT_CONFORMS("t3", "$10") ")"
#define RT_NEW(T, IV) "(" RT_BASE(T) " + CASE WHEN " RT_OK " THEN " IV " ELSE 0 END)"
#define RT_SERVER_US "(extract(epoch FROM clock_timestamp()) * 1000000)::int8"

struct stmt_def {
    const char *sql;
    const char *types;
};

static const struct stmt_def stmt_defs[ST__COUNT] = {
    [ST_BEGIN] = {"BEGIN", ""},
    [ST_COMMIT] = {"COMMIT", ""},
    [ST_ROLLBACK] = {"ROLLBACK", ""},
    [ST_SAVEPOINT] = {"SAVEPOINT member", ""},
    [ST_RELEASE] = {"RELEASE SAVEPOINT member", ""},
    [ST_ROLLBACK_TO] = {"ROLLBACK TO SAVEPOINT member", ""},
    [ST_GET] = {"SELECT t.value, t.version FROM @.kv t WHERE t.ns = $1 AND t.key = $2 AND " LIVE,
                "tb"},
    /*
     * Writes: (ns, key, value, ttl, expected version, guard) for a put,
     * (ns, key, expected version, guard) for a delete.
     * -> version (no row when the guard skipped it)
     */
    [ST_PUT_ANY] = {INSERT_KV("$6") " RETURNING t.version", "tbbiii"},
    /*
     * Several unconditional puts of one member (distinct keys) as one
     * statement: arrays of ns, key, value, ttl, then the guard.
     * -> (ns, key, version) per row written (none when the guard skipped them)
     */
    [ST_PUT_MANY] = {"INSERT INTO @.kv AS t (ns, key, value, version, expires_at) "
                     "SELECT u.ns, u.key, u.value, nextval('@.kv_version'), " EXPIRES(
                         "u.ttl") " FROM unnest($1, $2, $3, $4) AS u(ns, key, value, ttl) "
                                  "WHERE " GUARD("$5") " ON CONFLICT (ns, key) DO UPDATE SET value "
                                                       "= EXCLUDED.value, "
                                                       "version = nextval('@.kv_version'), "
                                                       "expires_at = EXCLUDED.expires_at "
                                                       "RETURNING t.ns, t.key, t.version",
                     "TBBIi"},
    /* an expired row counts as absent */
    [ST_PUT_ABSENT] = {"WITH w AS (" INSERT_KV(
                           "$6") " WHERE t.expires_at IS NOT NULL AND t.expires_at <= now()"
                                 " RETURNING t.version)" OUTCOME("$6"),
                       "tbbiii"},
    [ST_PUT_IF] = {"WITH w AS (UPDATE @.kv AS t SET value = $3, "
                   "version = nextval('@.kv_version'), expires_at = " EXPIRES(
                       "$4") " WHERE t.ns = $1 AND t.key = $2 AND t.version = $5 AND " LIVE
                             " AND " GUARD("$6") " RETURNING t.version)" OUTCOME("$6"),
                   "tbbiii"},
    /*
     * A sequenced write (RHEMA_WRITE_SEQUENCED): (ns, key prefix, value,
     * ttl, share, guard).  share <> 0: the version of the put sent just
     * before it on this connection (currval: its nextval() was the last
     * one, see put_run), else a fresh one; the key is the prefix and the 20
     * digits of it.  -> version (no row when the guard skipped it).  Such
     * a key never exists already (versions are never reused); if someone
     * made one by hand the unique violation fails the whole batch or group
     * (RHEMA_EIO), as no savepoint may be there to undo the member alone.
     */
    [ST_PUT_SEQ] = {"INSERT INTO @.kv AS t (ns, key, value, version, expires_at) "
                    "SELECT $1, $2 || lpad(v.n::text, 20, '0')::bytea, $3, v.n, " EXPIRES("$4")
                    " FROM (SELECT CASE WHEN $5 <> 0 THEN currval('@.kv_version') "
                    "ELSE nextval('@.kv_version') END AS n WHERE " GUARD("$6") ") v "
                    "RETURNING t.version",
                    "tbbiii"},
    /* $3 = 0: any version */
    [ST_DEL] = {"WITH w AS (DELETE FROM @.kv AS t WHERE t.ns = $1 AND t.key = $2"
                " AND ($3 = 0 OR t.version = $3) AND " LIVE
                " AND " GUARD("$4") " RETURNING t.version)" OUTCOME("$4"),
                "tbii"},
    /* SKIP LOCKED: a purge never waits for, nor blocks, a writer */
    [ST_PURGE] = {"DELETE FROM @.kv WHERE expires_at <= now() AND (ns, key) IN (SELECT ns, key "
                  "FROM @.kv WHERE expires_at <= now() LIMIT " PURGE_LIMIT
                  " FOR UPDATE SKIP LOCKED)",
                  ""},
    [ST_SCAN] = {SCAN_SQL(""), "tbbi"},
    [ST_SCAN_FROM] = {SCAN_SQL(" AND t.key >= $2"), "tbbi"},
    [ST_SCAN_TO] = {SCAN_SQL(" AND t.key < $3"), "tbbi"},
    [ST_SCAN_BOTH] = {SCAN_SQL(" AND t.key >= $2 AND t.key < $3"), "tbbi"},
    [ST_STATS_NS] = {STATS_SQL("t.ns = $1 AND "), "t"},
    [ST_STATS_ALL] = {STATS_SQL(""), ""},
    /* -> (holder, epoch, ttl remaining in ms, 0 when not held) */
    [ST_LEASE_GET] = {"SELECT " LEASE_STATE " FROM @.leases l WHERE l.name = $1", "b"},
    /*
     * Granted when the lease is free (never held, released or expired: a new
     * epoch, one above the last) or already held by $2 (same epoch).
     */
    [ST_LEASE_ACQUIRE] = {"INSERT INTO @.leases AS l (name, holder, epoch, expires_at) "
                          "VALUES ($1, $2, 1, now() + $3 * interval '1 millisecond') "
                          "ON CONFLICT (name) DO UPDATE SET "
                          "epoch = CASE WHEN " HELD " AND l.holder = EXCLUDED.holder "
                          "THEN l.epoch ELSE l.epoch + 1 END, "
                          "holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at "
                          "WHERE NOT " HELD " OR l.holder = EXCLUDED.holder "
                          "RETURNING " LEASE_STATE,
                          "bbi"},
    [ST_LEASE_RENEW] =
        {"UPDATE @.leases AS l SET expires_at = now() + $3 * interval '1 millisecond' "
         "WHERE l.name = $1 AND l.holder = $2 AND l.expires_at > now() "
         "RETURNING " LEASE_STATE,
         "bbi"},
    [ST_LEASE_RELEASE] = {"UPDATE @.leases AS l SET holder = ''::bytea, expires_at = NULL "
                          "WHERE l.name = $1 AND l.holder = $2 AND l.expires_at > now() "
                          "RETURNING " LEASE_STATE,
                          "bb"},
    [ST_HEALTH] = {"SELECT 1", ""},
    /*
     * -> (allowed 0/1, t0, t1, t2, t3, now).  A key never seen (or
     * purged) is always allowed: tats now + interval.
     */
    [ST_RATE] = {"WITH c AS (SELECT " RT_SERVER_US " AS now) "
                 "INSERT INTO @.rate AS r (key, n, t0, t1, t2, t3, rest, at, ok) "
                 "SELECT $1, $2, c.now + $3, c.now + $5, c.now + $7, c.now + $9, "
                 "GREATEST(c.now + $3, c.now + $5, c.now + $7, c.now + $9), c.now, 1 FROM c "
                 "ON CONFLICT (key) DO UPDATE SET n = EXCLUDED.n, "
                 "t0 = " RT_NEW("t0", "$3") ", t1 = " RT_NEW("t1", "$5") ", "
                 "t2 = " RT_NEW("t2", "$7") ", t3 = " RT_NEW("t3", "$9") ", "
                 "rest = GREATEST(" RT_NOW ", " RT_NEW("t0", "$3") ", " RT_NEW("t1", "$5") ", "
                 RT_NEW("t2", "$7") ", " RT_NEW("t3", "$9") "), at = " RT_NOW ", "
                 "ok = CASE WHEN " RT_OK " THEN 1 ELSE 0 END "
                 "RETURNING r.ok, r.t0, r.t1, r.t2, r.t3, r.at",
                 "biiiiiiiii"},
    /* SKIP LOCKED: never waits for, nor blocks, a step */
    [ST_RATE_PURGE] = {"DELETE FROM @.rate WHERE rest <= " RT_SERVER_US " AND key IN (SELECT key "
                       "FROM @.rate WHERE rest <= " RT_SERVER_US " LIMIT " RATE_PURGE_LIMIT
                       " FOR UPDATE SKIP LOCKED)",
                       ""},
    /*
     * A transaction holding a sequenced write takes this lock before it
     * draws its first version, so such transactions commit one after the
     * other, in version order (see "Sequenced writes" above); the lock
     * key is the schema's, $1 of the notification its channel (in->channel).
     */
    [ST_SEQ_LOCK] = {"SELECT pg_advisory_xact_lock(hashtext('rhema.feed:@'))", ""},
    [ST_SEQ_NOTIFY] = {"SELECT pg_notify($1, '')", "t"},
};

/* The tables, created by open() and repeated at the head of a backup. */
static const char schema_ddl[] =
    "CREATE TABLE IF NOT EXISTS @.meta (name text PRIMARY KEY, value bigint NOT NULL);\n"
    "INSERT INTO @.meta (name, value) VALUES ('schema_version', 1) ON CONFLICT (name) DO NOTHING;\n"
    "CREATE SEQUENCE IF NOT EXISTS @.kv_version AS bigint MINVALUE 1;\n"
    "CREATE TABLE IF NOT EXISTS @.kv (ns text COLLATE \"C\" NOT NULL, key bytea NOT NULL,"
    " value bytea NOT NULL, version bigint NOT NULL, expires_at timestamptz,"
    " PRIMARY KEY (ns, key));\n"
    "CREATE INDEX IF NOT EXISTS kv_expires ON @.kv (expires_at) WHERE expires_at IS NOT NULL;\n"
    "CREATE TABLE IF NOT EXISTS @.leases (name bytea PRIMARY KEY, holder bytea NOT NULL,"
    " epoch bigint NOT NULL, expires_at timestamptz);\n"
    "CREATE UNLOGGED TABLE IF NOT EXISTS @.rate (key bytea PRIMARY KEY, n bigint NOT NULL,"
    " t0 bigint NOT NULL, t1 bigint NOT NULL, t2 bigint NOT NULL, t3 bigint NOT NULL,"
    " rest bigint NOT NULL, at bigint NOT NULL, ok bigint NOT NULL);\n"
    "CREATE INDEX IF NOT EXISTS rate_rest ON @.rate (rest);\n";
/* clang-format on */

struct pg_watch;

struct rhema_storage_instance {
    const struct rhema_host *host;
    char *conninfo;
    char *schema;     /* validated: an identifier that needs no escaping */
    char *qschema;    /* "schema", quoted */
    char timeout[16]; /* connect_timeout_seconds, as text for libpq */
    int timeout_s;
    char *sql[ST__COUNT]; /* stmt_defs with the schema filled in */
    atomic_uint writes;   /* across connections, for the purge cadence */
    char channel[64];     /* NOTIFY channel of sequenced writes (see feed_channel) */
    struct pg_watch *watch; /* watch()'s listener, NULL when not watching */
};

/* Where a connection's notices go (see notice_cb). */
struct notice_sink {
    const rhema_storage_instance *inst;
    int fatal; /* the server said FATAL while we were not asking: the session is over */
};

struct rhema_storage_conn {
    rhema_storage_instance *inst;
    struct notice_sink sink;
    PGconn *pg;           /* NULL or a connection (maybe broken) */
    int ready;            /* pg is connected and every statement prepared */
    int ever_connected;   /* for the "reconnected" log line */
    uint64_t next_try_ms; /* monotonic: no reconnect attempt before this */
    unsigned backoff_ms;
    PGresult *held; /* backs the value get() returned, until the next call */
    PGresult **held_many; /* back the values get_many() returned: held_n of them */
    size_t held_n, held_cap;
    char err[PG_ERRMSG_MAX];
    char down[PG_ERRMSG_MAX]; /* why the last connection attempt failed */
    unsigned rate_calls;      /* for the purge of rate rows at rest */
    uint64_t used_ms;         /* monotonic: when the server last answered */
};

/* flags of run() */
#define RUN_OUTCOME 1 /* a write that commits by itself (autocommit or COMMIT) */

/* ---- helpers ---- */

static void conn_error(rhema_storage_conn *c, const char *fmt, ...) RHEMA_PRINTF_LIKE(2, 3);

static void conn_error(rhema_storage_conn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
}

/* A libpq message without its trailing newline(s), into buf. */
static const char *one_line(const char *msg, char *buf, size_t size)
{
    size_t n;
    snprintf(buf, size, "%s", msg != NULL && msg[0] != '\0' ? msg : "unknown error");
    n = strlen(buf);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
        buf[--n] = '\0';
    for (n = 0; buf[n] != '\0'; n++)
        if (buf[n] == '\n' || buf[n] == '\t')
            buf[n] = ' ';
    return buf;
}

static uint64_t mono_ms(const rhema_storage_instance *in)
{
    return in->host->monotonic_ns() / 1000000u;
}

static void be64_put(unsigned char b[8], uint64_t v)
{
    int i;
    for (i = 7; i >= 0; i--) {
        b[i] = (unsigned char)v;
        v >>= 8;
    }
}

static uint64_t be64_get(const char *p)
{
    const unsigned char *b = (const unsigned char *)p;
    uint64_t v = 0;
    int i;
    for (i = 0; i < 8; i++)
        v = v << 8 | b[i];
    return v;
}

/* An int8 column of a binary result (0 when NULL or malformed). */
static uint64_t col_u64(const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col) || PQgetlength(r, row, col) != 8)
        return 0;
    return be64_get(PQgetvalue(r, row, col));
}

/*
 * Replace every "@" of tmpl with qschema.  Returns a malloc'd string or NULL.
 */
static char *fill_schema(const char *tmpl, const char *qschema)
{
    size_t n = 0, q = strlen(qschema), i;
    const char *p;
    char *out, *o;
    for (p = tmpl; *p; p++)
        n += *p == '@' ? q : 1;
    out = malloc(n + 1);
    if (out == NULL)
        return NULL;
    for (p = tmpl, o = out; *p; p++) {
        if (*p == '@') {
            for (i = 0; i < q; i++)
                *o++ = qschema[i];
        } else {
            *o++ = *p;
        }
    }
    *o = '\0';
    return out;
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

/* Short names for the sequenced-write helpers of ../common (storage_check.h). */
static int is_seq(const struct rhema_storage_write *w)
{
    return rhema_storage_write_sequenced(w);
}

static int seq_shares(const struct rhema_storage_write *w, size_t j)
{
    return rhema_storage_seq_shares_previous(w, j);
}

static int check_write(rhema_storage_conn *c, const struct rhema_storage_write *w)
{
    const char *why = rhema_storage_write_invalid(w); /* sequenced writes too */
    if (why) {
        conn_error(c, "%s", why);
        return RHEMA_EINVAL;
    }
    if (w->op == RHEMA_WRITE_PUT && w->value_len > VALUE_MAX) {
        conn_error(c, "value of %zu bytes is too big for postgres (1 GiB at most)", w->value_len);
        return RHEMA_ETOOBIG;
    }
    return 0;
}

/*
 * Server notices (NOTICE, WARNING ...) go to the host's log, never to
 * stderr.  libpq also hands over as a notice an error that arrives while no
 * query runs: a FATAL then means the server ended the session (shutdown,
 * pg_terminate_backend), even if the socket has not reported EOF yet.
 */
static void notice_cb(void *arg, const PGresult *res)
{
    struct notice_sink *sink = arg;
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    char line[PG_ERRMSG_MAX];
    if (sev != NULL && (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0))
        sink->fatal = 1;
    if (sink->inst->host->log != NULL)
        sink->inst->host->log(RHEMA_LOG_DEBUG, PLUGIN_NAME, "server: %s",
                              one_line(PQresultErrorMessage(res), line, sizeof line));
}

/*
 * Connect with PQconnectStartParams, so that the notice processor is in
 * place before the server can say anything, and wait at most timeout_s.
 * The conninfo comes last: what it says wins over our defaults.  Returns
 * the connection (check PQstatus; *timed_out is set when the deadline
 * passed) or NULL when out of memory.
 */
static PGconn *pg_connect(const rhema_storage_instance *in, struct notice_sink *sink,
                          int *timed_out, int wake_fd)
{
    static const char *const keys[] = {
        "connect_timeout",     "application_name", "keepalives", "keepalives_idle",
        "keepalives_interval", "keepalives_count", "dbname",     NULL};
    const char *vals[] = {in->timeout, "rhema", "1", "10", "3", "3", in->conninfo, NULL};
    PGconn *pg = PQconnectStartParams(keys, vals, 1);
    uint64_t deadline = mono_ms(in) + (uint64_t)in->timeout_s * 1000u;
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;

    *timed_out = 0;
    if (pg == NULL)
        return NULL;
    sink->inst = in;
    sink->fatal = 0;
    PQsetNoticeReceiver(pg, notice_cb, sink);
    if (PQstatus(pg) == CONNECTION_BAD)
        return pg;
    while (st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
        struct pollfd pfd[2] = {{.fd = PQsocket(pg), .events = 0},
                                {.fd = wake_fd, .events = POLLIN}};
        uint64_t now = mono_ms(in);
        int r;
        if (now >= deadline) {
            *timed_out = 1;
            return pg;
        }
        pfd[0].events = st == PGRES_POLLING_READING ? POLLIN : POLLOUT;
        r = poll(pfd, wake_fd >= 0 ? 2 : 1, (int)(deadline - now));
        if (r < 0 && errno != EINTR)
            break;
        if (r > 0 && wake_fd >= 0 && pfd[1].revents != 0) {
            *timed_out = 2; /* woken: given up */
            return pg;
        }
        if (r <= 0)
            continue;
        st = PQconnectPoll(pg);
    }
    return pg;
}

/* ---- connection state ---- */

/* Forget the connection: the next call reconnects. */
static void conn_drop(rhema_storage_conn *c)
{
    if (c->pg != NULL)
        PQfinish(c->pg);
    c->pg = NULL;
    c->ready = 0;
}

/*
 * An idle connection has nothing to read; when its socket is readable the
 * server has most likely closed it (a restart, pg_terminate_backend):
 * read what is there so that libpq notices, before we send a write into
 * a dead socket and lose track of whether it happened.
 */
static void check_idle(rhema_storage_conn *c)
{
    int i;
    for (i = 0; i < 4 && PQstatus(c->pg) == CONNECTION_OK; i++) {
        struct pollfd pfd = {.fd = PQsocket(c->pg), .events = POLLIN};
        if (c->sink.fatal || pfd.fd < 0 || poll(&pfd, 1, 0) <= 0)
            break;
        if (!PQconsumeInput(c->pg))
            break;
        (void)PQisBusy(c->pg); /* parse: an unsolicited error becomes a notice */
        if (c->sink.fatal)
            break;
    }
    if (PQstatus(c->pg) != CONNECTION_OK || c->sink.fatal) {
        if (c->sink.fatal)
            snprintf(c->down, sizeof c->down, "the server ended the session");
        else
            one_line(PQerrorMessage(c->pg), c->down, sizeof c->down);
        if (c->inst->host->log != NULL)
            c->inst->host->log(RHEMA_LOG_WARN, PLUGIN_NAME, "connection lost while idle: %s",
                               c->down);
        conn_drop(c);
    }
}

/* Prepare every statement on a fresh connection.  0 or sets c->down. */
static int prepare_all(rhema_storage_conn *c)
{
    char name[16];
    size_t i, j;
    for (i = 0; i < ST__COUNT; i++) {
        Oid types[MAX_PARAMS];
        const char *t = stmt_defs[i].types;
        PGresult *r;
        int ok;
        for (j = 0; t[j] != '\0' && j < MAX_PARAMS; j++)
            types[j] = t[j] == 'b'   ? OID_BYTEA
                       : t[j] == 'i' ? OID_INT8
                       : t[j] == 'T' ? OID_TEXT_ARRAY
                       : t[j] == 'B' ? OID_BYTEA_ARRAY
                       : t[j] == 'I' ? OID_INT8_ARRAY
                                     : OID_TEXT;
        snprintf(name, sizeof name, "rhema_%zu", i);
        r = PQprepare(c->pg, name, c->inst->sql[i], (int)j, types);
        ok = r != NULL && PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok) {
            char line[PG_ERRMSG_MAX];
            snprintf(c->down, sizeof c->down, "prepare \"%s\": %s", c->inst->sql[i],
                     one_line(r != NULL ? PQresultErrorMessage(r) : PQerrorMessage(c->pg), line,
                              sizeof line));
            PQclear(r);
            return -1;
        }
        PQclear(r);
    }
    return 0;
}

/*
 * Make sure the connection is up, reconnecting (with backoff) when it is
 * not.  0, or RHEMA_EUNAVAIL with the reason in errmsg().
 */
static int conn_ensure(rhema_storage_conn *c)
{
    const struct rhema_host *h = c->inst->host;
    uint64_t now;
    int timed_out;

    while (c->held_n > 0)
        PQclear(c->held_many[--c->held_n]);
    if (c->held != NULL) {
        PQclear(c->held);
        c->held = NULL;
    }
    if (c->ready) {
        if (PQstatus(c->pg) == CONNECTION_OK && PQtransactionStatus(c->pg) == PQTRANS_IDLE) {
            /*
             * The server answered a moment ago: do not poll the socket
             * (one syscall per call at full load); a connection the server
             * closed since then fails the call like one lost during it.
             */
            if (!c->sink.fatal && mono_ms(c->inst) - c->used_ms < IDLE_CHECK_MS)
                return 0;
            check_idle(c);
            if (c->ready)
                return 0;
        } else {
            /* broken, or left inside a transaction by a failure: start afresh */
            conn_drop(c);
        }
    }
    now = mono_ms(c->inst);
    if (now < c->next_try_ms) {
        conn_error(c, "postgres unavailable: %s (next reconnect attempt in %llu ms)", c->down,
                   (unsigned long long)(c->next_try_ms - now));
        return RHEMA_EUNAVAIL;
    }
    conn_drop(c);
    c->pg = pg_connect(c->inst, &c->sink, &timed_out, -1);
    if (c->pg == NULL) {
        snprintf(c->down, sizeof c->down, "out of memory");
    } else if (timed_out || PQstatus(c->pg) != CONNECTION_OK) {
        char line[PG_ERRMSG_MAX];
        if (timed_out)
            snprintf(c->down, sizeof c->down, "connect: timed out after %d s", c->inst->timeout_s);
        else
            snprintf(c->down, sizeof c->down, "connect: %s",
                     one_line(PQerrorMessage(c->pg), line, sizeof line));
    } else if (prepare_all(c) == 0) {
        c->ready = 1;
        c->backoff_ms = BACKOFF_MIN_MS;
        c->next_try_ms = 0;
        if (c->ever_connected && h->log != NULL)
            h->log(RHEMA_LOG_NOTICE, PLUGIN_NAME, "reconnected to the server");
        c->ever_connected = 1;
        c->down[0] = '\0';
        return 0;
    }
    conn_drop(c);
    c->next_try_ms = mono_ms(c->inst) + c->backoff_ms;
    c->backoff_ms = c->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : c->backoff_ms * 2;
    conn_error(c, "postgres unavailable: %s", c->down);
    return RHEMA_EUNAVAIL;
}

/* A SQLSTATE as a RHEMA_E* code. */
static int map_sqlstate(const char *s)
{
    if (s == NULL || strlen(s) != 5)
        return RHEMA_EIO;
    if (strncmp(s, "08", 2) == 0 || strcmp(s, "57P01") == 0 || strcmp(s, "57P02") == 0 ||
        strcmp(s, "57P03") == 0 || strcmp(s, "53300") == 0 || strcmp(s, "40001") == 0 ||
        strcmp(s, "40P01") == 0 || strcmp(s, "55P03") == 0 || strcmp(s, "57014") == 0 ||
        strcmp(s, "25006") == 0 /* read-only transaction: a standby, or failing over */)
        return RHEMA_EUNAVAIL;
    if (strcmp(s, "53200") == 0)
        return RHEMA_ENOMEM;
    if (strcmp(s, "54000") == 0)
        return RHEMA_ETOOBIG;
    if (strcmp(s, "XX001") == 0 || strcmp(s, "XX002") == 0)
        return RHEMA_ECORRUPT;
    if (strncmp(s, "22", 2) == 0)
        return RHEMA_EINVAL;
    return RHEMA_EIO;
}

/*
 * Record a failed statement; returns its RHEMA_E* code.  res is the error
 * result, or NULL (no answer at all).  answered: the statement had already
 * reported success when the failure came (in autocommit the server commits
 * at Sync, after CommandComplete).  A lost connection is EUNAVAIL; when the
 * statement commits by itself (RUN_OUTCOME) and the server did not refuse
 * it with an error before any success, the message says that the outcome
 * is unknown.
 */
static int run_fail(rhema_storage_conn *c, const char *what, PGresult *res, int flags, int answered)
{
    char line[PG_ERRMSG_MAX];
    const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = res != NULL && PQresultErrorMessage(res)[0] != '\0'
                          ? PQresultErrorMessage(res)
                          : PQerrorMessage(c->pg);
    int rc;

    one_line(msg, line, sizeof line);
    if (PQstatus(c->pg) != CONNECTION_OK) {
        snprintf(c->down, sizeof c->down, "%s", line);
        if ((flags & RUN_OUTCOME) && (state == NULL || answered))
            conn_error(c,
                       "%s: connection lost, the outcome of the write is unknown "
                       "(it may or may not have been applied): %s",
                       what, line);
        else
            conn_error(c, "%s: connection lost, nothing was applied: %s", what, line);
        conn_drop(c);
        c->next_try_ms = 0; /* the server may well be back already: try on the next call */
        return RHEMA_EUNAVAIL;
    }
    rc = map_sqlstate(state);
    if (state != NULL && strcmp(state, "26000") == 0) {
        /* a prepared statement vanished (DISCARD ALL behind a pooler): prepare again */
        conn_drop(c);
        rc = RHEMA_EUNAVAIL;
    }
    conn_error(c, "%s: %s%s%s", what, line, state != NULL ? " SQLSTATE " : "",
               state != NULL ? state : "");
    return rc;
}

/*
 * Run prepared statement id with binary parameters and results.  On success
 * returns 0 and *out (when not NULL) holds the result, which the caller
 * clears; on failure returns the RHEMA_E* code with the message in errmsg().
 */
static int run(rhema_storage_conn *c, enum stmt_id id, const char *const *vals, const int *lens,
               int flags, const char *what, PGresult **out)
{
    static const int fmts[MAX_PARAMS] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    char name[16];
    PGresult *res = NULL, *bad = NULL, *r;
    int n = (int)strlen(stmt_defs[id].types), rc;

    if (out != NULL)
        *out = NULL;
    if (c->pg == NULL || !c->ready) {
        conn_error(c, "%s: not connected", what);
        return RHEMA_EUNAVAIL;
    }
    snprintf(name, sizeof name, "rhema_%d", (int)id);
    if (!PQsendQueryPrepared(c->pg, name, n, vals, lens, fmts, 1))
        return run_fail(c, what, NULL, 0, 0); /* never sent */
    /* one result, then NULL; anything after it is an error that voids it */
    while ((r = PQgetResult(c->pg)) != NULL) {
        ExecStatusType st = PQresultStatus(r);
        if ((st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) && res == NULL && bad == NULL)
            res = r;
        else if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK && bad == NULL)
            bad = r;
        else
            PQclear(r);
    }
    if (res == NULL || bad != NULL || PQstatus(c->pg) != CONNECTION_OK) {
        rc = run_fail(c, what, bad, flags, res != NULL);
        PQclear(res);
        PQclear(bad);
        return rc;
    }
    c->used_ms = mono_ms(c->inst);
    if (out != NULL)
        *out = res;
    else
        PQclear(res);
    return 0;
}

#ifndef LIBPQ_HAS_PIPELINING
static int tx_begin(rhema_storage_conn *c)
{
    return run(c, ST_BEGIN, NULL, NULL, 0, "begin", NULL);
}
#endif

/* End a failed transaction; on a broken connection the server did it already. */
static void tx_rollback(rhema_storage_conn *c)
{
    char saved[PG_ERRMSG_MAX];
    if (c->pg == NULL || !c->ready || PQtransactionStatus(c->pg) == PQTRANS_IDLE)
        return;
    memcpy(saved, c->err, sizeof saved); /* keep the message of the failure itself */
    if (run(c, ST_ROLLBACK, NULL, NULL, 0, "rollback", NULL) != 0)
        conn_drop(c);
    memcpy(c->err, saved, sizeof saved);
}

#ifndef LIBPQ_HAS_PIPELINING
/* Without pipelining: the advisory lock and the notification of sequenced writes. */
static int seq_lock(rhema_storage_conn *c)
{
    return run(c, ST_SEQ_LOCK, NULL, NULL, 0, "sequenced writes: lock", NULL);
}

static int seq_notify(rhema_storage_conn *c)
{
    const char *vals[1] = {c->inst->channel};
    int lens[1] = {(int)strlen(c->inst->channel)};
    return run(c, ST_SEQ_NOTIFY, vals, lens, 0, "sequenced writes: notify", NULL);
}
#endif

static int tx_commit(rhema_storage_conn *c)
{
    PGresult *r = NULL;
    int rc = run(c, ST_COMMIT, NULL, NULL, RUN_OUTCOME, "commit", &r);
    if (rc == 0 && strcmp(PQcmdStatus(r), "COMMIT") != 0) {
        /* the server rolled back instead (an aborted transaction): a bug of ours */
        conn_error(c, "commit: the server answered %s", PQcmdStatus(r));
        rc = RHEMA_EIO;
    }
    PQclear(r);
    return rc;
}

/* ---- lifecycle ---- */

static int schema_name_valid(const char *s)
{
    size_t i;
    if (s == NULL || s[0] == '\0' || strlen(s) > 63)
        return 0;
    for (i = 0; s[i] != '\0'; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_' ||
              (i > 0 && ch >= '0' && ch <= '9')))
            return 0;
    }
    return 1;
}

static void instance_free(rhema_storage_instance *in)
{
    size_t i;
    if (in == NULL)
        return;
    for (i = 0; i < ST__COUNT; i++)
        free(in->sql[i]);
    free(in->conninfo);
    free(in->schema);
    free(in->qschema);
    free(in);
}

/*
 * The NOTIFY channel of a schema: "rhema.feed." and its name, which fits
 * PostgreSQL's 63 bytes up to a name of 52; a longer one keeps its first 43
 * characters and gains "." and a hash (FNV-1a) of the whole name.  Two
 * schemas that shared a channel would only wake each other's watchers for
 * nothing (notifications may be spurious), never miss one.
 */
static void feed_channel(char *buf, size_t size, const char *schema)
{
    size_t len = strlen(schema), i;
    uint32_t h = 2166136261u;
    if (len <= 52) {
        snprintf(buf, size, "rhema.feed.%s", schema);
        return;
    }
    for (i = 0; i < len; i++)
        h = (h ^ (unsigned char)schema[i]) * 16777619u;
    snprintf(buf, size, "rhema.feed.%.43s.%08x", schema, (unsigned)h);
}

/* Read the configuration into in; on failure sets *err. */
static int read_config(rhema_storage_instance *in, const struct rhema_host *h,
                       const struct rhema_cfg *cfg, char **err)
{
    const char *conninfo = "host=127.0.0.1 port=5432 dbname=rhema", *schema = "rhema";
    int64_t timeout = 5;
    PQconninfoOption *opts;
    char *perr = NULL;
    size_t n;

    if (h->cfg_string(cfg, "conninfo", &conninfo) == RHEMA_EINVAL)
        return h->set_error(err, RHEMA_EINVAL, "%s: postgres: conninfo must be a string",
                            h->cfg_where(cfg, "conninfo"));
    opts = PQconninfoParse(conninfo, &perr);
    if (opts == NULL) {
        char line[PG_ERRMSG_MAX];
        int rc = h->set_error(err, RHEMA_EINVAL, "%s: postgres: conninfo: %s",
                              h->cfg_where(cfg, "conninfo"),
                              perr != NULL ? one_line(perr, line, sizeof line) : "out of memory");
        PQfreemem(perr);
        return rc;
    }
    PQconninfoFree(opts);
    if (h->cfg_int(cfg, "connect_timeout_seconds", &timeout) == RHEMA_EINVAL || timeout < 1 ||
        timeout > 3600)
        return h->set_error(err, RHEMA_EINVAL,
                            "%s: postgres: connect_timeout_seconds must be an integer in 1..3600",
                            h->cfg_where(cfg, "connect_timeout_seconds"));
    if (h->cfg_string(cfg, "schema", &schema) == RHEMA_EINVAL || !schema_name_valid(schema))
        return h->set_error(err, RHEMA_EINVAL,
                            "%s: postgres: schema must be 1..63 characters of "
                            "[A-Za-z_][A-Za-z0-9_]*",
                            h->cfg_where(cfg, "schema"));
    in->timeout_s = (int)timeout;
    snprintf(in->timeout, sizeof in->timeout, "%d", in->timeout_s);
    in->conninfo = strdup(conninfo);
    in->schema = strdup(schema);
    n = strlen(schema) + 3;
    in->qschema = malloc(n);
    if (in->conninfo == NULL || in->schema == NULL || in->qschema == NULL)
        return h->set_error(err, RHEMA_ENOMEM, "postgres: out of memory");
    snprintf(in->qschema, n, "\"%s\"", schema);
    feed_channel(in->channel, sizeof in->channel, schema);
    return 0;
}

/* Run one simple query (maybe several statements); 0 or sets *err. */
static int setup_exec(const rhema_storage_instance *in, PGconn *pg, const char *sql, PGresult **out,
                      char **err)
{
    PGresult *r = PQexec(pg, sql);
    ExecStatusType st = r != NULL ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    char line[PG_ERRMSG_MAX];
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        if (out != NULL)
            *out = r;
        else
            PQclear(r);
        return 0;
    }
    one_line(r != NULL ? PQresultErrorMessage(r) : PQerrorMessage(pg), line, sizeof line);
    PQclear(r);
    return in->host->set_error(err, PQstatus(pg) != CONNECTION_OK ? RHEMA_EUNAVAIL : RHEMA_EIO,
                               "postgres: creating schema %s: %s", in->qschema, line);
}

/*
 * Create or check the schema through a short-lived connection, in one
 * transaction under an advisory lock, so that nodes starting together
 * neither race on CREATE nor see a half-made schema.
 */
static int init_schema(rhema_storage_instance *in, char **err)
{
    const struct rhema_host *h = in->host;
    char sql[512], line[PG_ERRMSG_MAX], *ddl = NULL;
    struct notice_sink sink;
    int timed_out, rc;
    PGconn *pg = pg_connect(in, &sink, &timed_out, -1);
    PGresult *r = NULL;
    long long version = 0;

    if (pg == NULL)
        return h->set_error(err, RHEMA_ENOMEM, "postgres: out of memory");
    if (timed_out || PQstatus(pg) != CONNECTION_OK) {
        if (timed_out)
            rc = h->set_error(err, RHEMA_EUNAVAIL, "postgres: connect: timed out after %d s",
                              in->timeout_s);
        else
            rc = h->set_error(err, RHEMA_EUNAVAIL, "postgres: connect: %s",
                              one_line(PQerrorMessage(pg), line, sizeof line));
        PQfinish(pg);
        return rc;
    }
    snprintf(sql, sizeof sql,
             "BEGIN; SET LOCAL client_min_messages = warning; "
             "SELECT pg_advisory_xact_lock(hashtext('rhema.schema:%s'))",
             in->schema);
    rc = setup_exec(in, pg, sql, NULL, err);
    if (rc != 0)
        goto out;
    /* a schema made by a newer rhema is left alone */
    snprintf(sql, sizeof sql, "SELECT to_regclass('%s.meta') IS NOT NULL", in->qschema);
    rc = setup_exec(in, pg, sql, &r, err);
    if (rc != 0)
        goto out;
    if (PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), "t") == 0) {
        PQclear(r);
        r = NULL;
        snprintf(sql, sizeof sql, "SELECT value FROM %s.meta WHERE name = 'schema_version'",
                 in->qschema);
        rc = setup_exec(in, pg, sql, &r, err);
        if (rc != 0)
            goto out;
        if (PQntuples(r) == 1)
            version = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        if (version != SCHEMA_VERSION) {
            rc = h->set_error(err, version > SCHEMA_VERSION ? RHEMA_ENOTSUP : RHEMA_ECORRUPT,
                              "postgres: schema %s has schema_version %lld, this plugin knows "
                              "only %d%s",
                              in->qschema, version, SCHEMA_VERSION,
                              version > SCHEMA_VERSION ? " (a newer rhema made it: upgrade)" : "");
            goto out;
        }
    } else {
        /* only when missing: CREATE SCHEMA IF NOT EXISTS wants the CREATE privilege anyway */
        snprintf(sql, sizeof sql, "SELECT 1 FROM pg_namespace WHERE nspname = '%s'", in->schema);
        PQclear(r);
        r = NULL;
        rc = setup_exec(in, pg, sql, &r, err);
        if (rc != 0)
            goto out;
        if (PQntuples(r) == 0) {
            snprintf(sql, sizeof sql, "CREATE SCHEMA %s", in->qschema);
            rc = setup_exec(in, pg, sql, NULL, err);
            if (rc != 0)
                goto out;
        }
    }
    ddl = fill_schema(schema_ddl, in->qschema);
    if (ddl == NULL) {
        rc = h->set_error(err, RHEMA_ENOMEM, "postgres: out of memory");
        goto out;
    }
    rc = setup_exec(in, pg, ddl, NULL, err);
    if (rc == 0)
        rc = setup_exec(in, pg, "COMMIT", NULL, err);
out:
    PQclear(r);
    free(ddl);
    PQfinish(pg); /* a transaction still open is rolled back */
    return rc;
}

/*
 * check(): read_config() into an instance that is thrown away -- conninfo
 * parsed by libpq (PQconninfoParse: its syntax and option names), the
 * timeout and the schema name; no connection.
 */
static int pg_check(const struct rhema_host *host, const struct rhema_cfg *cfg, char **err)
{
    rhema_storage_instance *in = calloc(1, sizeof *in);
    int rc;

    if (in == NULL)
        return host->set_error(err, RHEMA_ENOMEM, "postgres: out of memory");
    in->host = host;
    rc = read_config(in, host, cfg, err);
    instance_free(in);
    return rc;
}

static int pg_open(const struct rhema_host *host, const struct rhema_cfg *cfg,
                   rhema_storage_instance **out, char **err)
{
    rhema_storage_instance *in;
    size_t i;
    int rc;

    if (!PQisthreadsafe())
        return host->set_error(err, RHEMA_ENOTSUP, "postgres: libpq was built without threads");
    in = calloc(1, sizeof *in);
    if (in == NULL)
        return host->set_error(err, RHEMA_ENOMEM, "postgres: out of memory");
    in->host = host;
    atomic_init(&in->writes, 0);
    rc = read_config(in, host, cfg, err);
    if (rc != 0)
        goto fail;
    for (i = 0; i < ST__COUNT; i++) {
        in->sql[i] = fill_schema(stmt_defs[i].sql, in->qschema);
        if (in->sql[i] == NULL) {
            rc = host->set_error(err, RHEMA_ENOMEM, "postgres: out of memory");
            goto fail;
        }
    }
    rc = init_schema(in, err);
    if (rc != 0)
        goto fail;
    if (host->log != NULL)
        host->log(RHEMA_LOG_INFO, PLUGIN_NAME, "opened schema %s (schema_version %d, libpq %d)",
                  in->qschema, SCHEMA_VERSION, PQlibVersion());
    *out = in;
    return 0;
fail:
    instance_free(in);
    return rc;
}

static void pg_unwatch(rhema_storage_instance *in);

static void pg_close(rhema_storage_instance *in)
{
    if (in != NULL)
        pg_unwatch(in); /* the host calls it first; a test may not */
    instance_free(in);
}

static void pg_disconnect(rhema_storage_conn *c)
{
    if (c == NULL)
        return;
    PQclear(c->held);
    while (c->held_n > 0)
        PQclear(c->held_many[--c->held_n]);
    free(c->held_many);
    conn_drop(c);
    free(c);
}

/*
 * One connection per worker thread.  A server that cannot be reached now
 * does not fail connect(): open() has just seen it, the calls return
 * RHEMA_EUNAVAIL until it is back, and the connection then comes up alone.
 */
static int pg_connect_conn(rhema_storage_instance *in, rhema_storage_conn **out, char **err)
{
    rhema_storage_conn *c = calloc(1, sizeof *c);
    if (c == NULL)
        return in->host->set_error(err, RHEMA_ENOMEM, "postgres: out of memory");
    c->inst = in;
    c->backoff_ms = BACKOFF_MIN_MS;
    if (conn_ensure(c) != 0 && in->host->log != NULL)
        in->host->log(RHEMA_LOG_WARN, PLUGIN_NAME, "%s; will retry", c->err);
    *out = c;
    return 0;
}

/* ---- reads ---- */

static int pg_get(rhema_storage_conn *c, const char *ns, const char *key,
                  struct rhema_storage_value *out)
{
    const char *vals[2] = {ns, key};
    int lens[2];
    PGresult *r;
    int rc = check_ns_key(c, ns, key);
    if (rc != 0)
        return rc;
    lens[0] = (int)strlen(ns);
    lens[1] = (int)strlen(key);
    if ((rc = conn_ensure(c)) != 0)
        return rc;
    rc = run(c, ST_GET, vals, lens, 0, "get", &r);
    if (rc != 0)
        return rc;
    if (PQntuples(r) == 0) {
        PQclear(r);
        conn_error(c, "key not found");
        return RHEMA_ENOTFOUND;
    }
    /* libpq ends every field with a NUL: data is a C string too */
    out->data = PQgetvalue(r, 0, 0);
    out->len = (size_t)PQgetlength(r, 0, 0);
    out->version = col_u64(r, 0, 1);
    c->held = r;
    return 0;
}

#ifdef LIBPQ_HAS_PIPELINING
static void pl_abort(rhema_storage_conn *c);

/*
 * get_many: get()'s prepared statement once per key, pipelined behind one
 * Sync -- one round trip, and every key read with the plan get() uses.
 * (One statement with key = ANY($2) was tried first: its cached generic
 * plan, made while the table was small, scanned the whole namespace and
 * took 2.7 ms for 16 keys at 15,000 sessions, twice the 16 round trips it
 * was meant to save.)  The n results back the values until the next call.
 */
static int pg_get_many(rhema_storage_conn *c, const char *const *ns, const char *const *keys,
                       size_t n, struct rhema_storage_value *out, int *rcs)
{
    static const int fmts[2] = {1, 1};
    char name[16];
    const char *vals[2];
    int lens[2], rc;
    size_t i, got = 0, failed_at = 0;
    int failed = 0;
    PGresult *r, *bad = NULL;

    if (n == 0)
        return 0;
    const char *bad_args = rhema_storage_get_many_invalid(ns, keys, n, out, rcs);
    if (bad_args != NULL) {
        conn_error(c, "%s", bad_args);
        return RHEMA_EINVAL;
    }
    if ((rc = conn_ensure(c)) != 0) /* also clears what the last call held */
        return rc;
    if (n > c->held_cap) {
        PGresult **v = realloc(c->held_many, n * sizeof *v);
        if (v == NULL) {
            conn_error(c, "out of memory");
            return RHEMA_ENOMEM;
        }
        c->held_many = v;
        c->held_cap = n;
    }
    if (!PQenterPipelineMode(c->pg)) {
        conn_error(c, "cannot enter pipeline mode: %s", PQerrorMessage(c->pg));
        conn_drop(c);
        return RHEMA_EUNAVAIL;
    }
    snprintf(name, sizeof name, "rhema_%d", (int)ST_GET);
    for (i = 0; i < n; i++) {
        vals[0] = ns[i];
        lens[0] = (int)strlen(ns[i]);
        vals[1] = keys[i];
        lens[1] = (int)strlen(keys[i]);
        if (!PQsendQueryPrepared(c->pg, name, 2, vals, lens, fmts, 1))
            break;
    }
    if (i < n || !PQpipelineSync(c->pg)) {
        rc = run_fail(c, "get_many", NULL, 0, 0);
        pl_abort(c);
        return rc;
    }
    /*
     * per key: its result, then NULL; then the Sync's.  The error to report
     * is the first FATAL_ERROR: the statements after it in the pipeline
     * come back PIPELINE_ABORTED, with no message of their own.  A row may
     * come as PGRES_SINGLE_TUPLE (then an empty TUPLES_OK, dropped below):
     * libpq resets a scan's single-row mode only when the next query is
     * sent outside a pipeline, so the first query of this one inherits it.
     */
    for (got = 0; got < n; got++) {
        c->held_many[got] = r = PQgetResult(c->pg);
        if (r == NULL)
            break;
        ExecStatusType st = PQresultStatus(r);
        if (st != PGRES_TUPLES_OK && st != PGRES_SINGLE_TUPLE && !failed) {
            failed = 1;
            failed_at = got;
        }
        if (PQresultStatus(r) == PGRES_FATAL_ERROR && bad == NULL)
            bad = r;
        while ((r = PQgetResult(c->pg)) != NULL)
            PQclear(r);
    }
    c->held_n = got;
    r = got == n && PQstatus(c->pg) == CONNECTION_OK ? PQgetResult(c->pg) : NULL;
    if (r == NULL || PQresultStatus(r) != PGRES_PIPELINE_SYNC || failed ||
        !PQexitPipelineMode(c->pg)) {
        char what[96];
        if (got < n)
            snprintf(what, sizeof what, "no result for entry %zu of %zu", got + 1, n);
        else if (failed)
            snprintf(what, sizeof what, "entry %zu of %zu: %s", failed_at + 1, n,
                     PQresStatus(PQresultStatus(c->held_many[failed_at])));
        else if (r == NULL || PQresultStatus(r) != PGRES_PIPELINE_SYNC)
            snprintf(what, sizeof what, "Sync answered %s",
                     r != NULL ? PQresStatus(PQresultStatus(r)) : "nothing");
        else
            snprintf(what, sizeof what, "cannot leave pipeline mode");
        PQclear(r);
        rc = run_fail(c, "get_many", bad, 0, 0);
        if (c->pg != NULL && PQstatus(c->pg) == CONNECTION_OK && bad == NULL) {
            conn_error(c, "get_many: unexpected answer from the server (%s)", what);
            conn_drop(c);
            rc = RHEMA_EUNAVAIL;
        }
        pl_abort(c);
        return rc;
    }
    PQclear(r);
    c->used_ms = mono_ms(c->inst);
    for (i = 0; i < n; i++) {
        r = c->held_many[i];
        if (PQntuples(r) == 0) {
            rcs[i] = RHEMA_ENOTFOUND;
            continue;
        }
        /* libpq ends every field with a NUL: data is a C string too */
        out[i].data = PQgetvalue(r, 0, 0);
        out[i].len = (size_t)PQgetlength(r, 0, 0);
        out[i].version = col_u64(r, 0, 1);
        rcs[i] = 0;
    }
    return 0;
}
#endif /* LIBPQ_HAS_PIPELINING */

static int pg_scan(rhema_storage_conn *c, const char *ns, const char *from_key, const char *to_key,
                   size_t limit, rhema_storage_scan_cb cb, void *ctx)
{
    static const int fmts[4] = {1, 1, 1, 1};
    unsigned char lim[8];
    const char *vals[4];
    int lens[4] = {0, 0, 0, 8};
    char name[16];
    enum stmt_id id;
    PGresult *r, *bad = NULL;
    int rc = 0, stopped = 0;

    const char *why = rhema_storage_scan_invalid(ns, cb);
    if (why != NULL) {
        conn_error(c, "%s", why);
        return RHEMA_EINVAL;
    }
    if ((rc = conn_ensure(c)) != 0)
        return rc;
    id = from_key != NULL ? (to_key != NULL ? ST_SCAN_BOTH : ST_SCAN_FROM)
                          : (to_key != NULL ? ST_SCAN_TO : ST_SCAN);
    vals[0] = ns;
    lens[0] = (int)strlen(ns);
    vals[1] = from_key;
    lens[1] = from_key != NULL ? (int)strnlen(from_key, RHEMA_STORAGE_KEY_MAX + 1) : 0;
    vals[2] = to_key;
    lens[2] = to_key != NULL ? (int)strnlen(to_key, RHEMA_STORAGE_KEY_MAX + 1) : 0;
    be64_put(lim, (uint64_t)limit);
    vals[3] = limit == 0 || limit > (size_t)INT64_MAX ? NULL : (const char *)lim; /* NULL: ALL */
    snprintf(name, sizeof name, "rhema_%d", (int)id);
    if (!PQsendQueryPrepared(c->pg, name, 4, vals, lens, fmts, 1))
        return run_fail(c, "scan", NULL, 0, 0);
    /* rows one at a time: a large namespace is never held in memory whole */
    (void)PQsetSingleRowMode(c->pg);
    while ((r = PQgetResult(c->pg)) != NULL) {
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_SINGLE_TUPLE || st == PGRES_TUPLES_OK) {
            /* the last, empty TUPLES_OK ends single-row mode; a full one if it was refused */
            int i, n = PQntuples(r);
            for (i = 0; i < n && !stopped; i++) {
                int cr = cb(ctx, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
                            (size_t)PQgetlength(r, i, 1), col_u64(r, i, 2));
                if (cr != 0) {
                    /* the rest is read and dropped: the connection must be idle again */
                    stopped = 1;
                    rc = cr < 0 ? cr : 0;
                }
            }
        } else if (bad == NULL) {
            bad = r;
            continue;
        }
        PQclear(r);
    }
    if (bad != NULL || PQstatus(c->pg) != CONNECTION_OK) {
        int fr = run_fail(c, "scan", bad, 0, 0);
        if (!stopped)
            rc = fr;
    }
    PQclear(bad);
    return rc;
}

static int pg_stats(rhema_storage_conn *c, const char *ns, struct rhema_storage_stats *out)
{
    const char *vals[1] = {ns};
    int lens[1] = {0};
    PGresult *r;
    int rc;
    const char *why = rhema_storage_stats_invalid(ns, out);
    if (why != NULL) {
        conn_error(c, "%s", why);
        return RHEMA_EINVAL;
    }
    if ((rc = conn_ensure(c)) != 0)
        return rc;
    if (ns != NULL)
        lens[0] = (int)strlen(ns);
    rc = run(c, ns != NULL ? ST_STATS_NS : ST_STATS_ALL, vals, lens, 0, "stats", &r);
    if (rc != 0)
        return rc;
    out->entries = col_u64(r, 0, 0);
    out->bytes = col_u64(r, 0, 1);
    PQclear(r);
    return 0;
}

/* ---- writes ---- */

/* The parameters of one write, and the buffers they point into. */
struct write_params {
    const char *vals[MAX_PARAMS];
    int lens[MAX_PARAMS];
    unsigned char ttl_b[8], ev_b[8], tag_b[8];
};

/*
 * Fill p for w; tag is the member guard (0: none, see GUARD); share: a
 * sequenced w takes the version of the put sent just before it.  Returns
 * the statement.  p must not move while the statement is sent.
 */
static enum stmt_id write_params(const struct rhema_storage_write *w, uint64_t tag, int share,
                                 struct write_params *p)
{
    uint64_t ev = w->expected_version, ttl = w->ttl_ms > TTL_MAX_MS ? TTL_MAX_MS : w->ttl_ms;
    if (is_seq(w))
        ev = share ? 1 : 0; /* ST_PUT_SEQ's $5 */
    p->vals[0] = w->ns;
    p->lens[0] = (int)strlen(w->ns);
    p->vals[1] = w->key;
    p->lens[1] = (int)strlen(w->key);
    be64_put(p->ev_b, ev == RHEMA_VERSION_ABSENT ? 0 : ev);
    be64_put(p->tag_b, tag);
    if (w->op == RHEMA_WRITE_DEL) {
        p->vals[2] = (const char *)p->ev_b;
        p->lens[2] = 8;
        p->vals[3] = (const char *)p->tag_b;
        p->lens[3] = 8;
        return ST_DEL;
    }
    /* never a NULL pointer: that would be SQL NULL, not an empty value */
    p->vals[2] = w->value_len > 0 ? (const char *)w->value : "";
    p->lens[2] = (int)w->value_len;
    be64_put(p->ttl_b, ttl);
    p->vals[3] = (const char *)p->ttl_b;
    p->lens[3] = 8;
    p->vals[4] = (const char *)p->ev_b;
    p->lens[4] = 8;
    p->vals[5] = (const char *)p->tag_b;
    p->lens[5] = 8;
    if (is_seq(w))
        return ST_PUT_SEQ;
    return ev == RHEMA_VERSION_ANY ? ST_PUT_ANY : ev == RHEMA_VERSION_ABSENT ? ST_PUT_ABSENT : ST_PUT_IF;
}

/*
 * What the result r of write w (statement id) says: 0 (w->new_version set
 * for a put), RHEMA_ECONFLICT / RHEMA_ENOTFOUND (a failed precondition, or a
 * write skipped by its guard), or RHEMA_EIO; the message in errmsg().
 */
static int write_result(rhema_storage_conn *c, struct rhema_storage_write *w, enum stmt_id id,
                        const PGresult *r)
{
    uint64_t ev = w->expected_version, done, cur;
    if (id == ST_PUT_ANY && PQntuples(r) == 0) {
        conn_error(c, "put: skipped after a failed write of the same batch");
        return RHEMA_ECONFLICT;
    }
    if (id == ST_PUT_SEQ && PQntuples(r) == 0) {
        conn_error(c, "sequenced put: skipped after a failed write of the same batch");
        return RHEMA_ECONFLICT;
    }
    if (PQntuples(r) != 1) {
        conn_error(c, "%s: the server returned no row",
                   w->op == RHEMA_WRITE_DEL ? "delete" : "put");
        return RHEMA_EIO;
    }
    done = col_u64(r, 0, 0);
    cur = id == ST_PUT_ANY || id == ST_PUT_SEQ ? 0 : col_u64(r, 0, 1);
    if (done != 0) {
        if (w->op == RHEMA_WRITE_PUT)
            w->new_version = done;
        return 0;
    }
    if (w->op == RHEMA_WRITE_DEL && cur == 0) {
        conn_error(c, "key not found");
        return RHEMA_ENOTFOUND;
    }
    if (ev == RHEMA_VERSION_ABSENT) {
        if (cur != 0)
            conn_error(c, "key exists (version %llu)", (unsigned long long)cur);
        else
            conn_error(c, "key exists (created concurrently)");
    } else if (cur == 0) {
        conn_error(c, "expected version %llu, key absent", (unsigned long long)ev);
    } else {
        conn_error(c, "expected version %llu, found %llu", (unsigned long long)ev,
                   (unsigned long long)cur);
    }
    return RHEMA_ECONFLICT;
}

/*
 * One write as one statement: the precondition is part of it.  flags is
 * RUN_OUTCOME when the statement commits by itself.
 */
static int write_one(rhema_storage_conn *c, struct rhema_storage_write *w, int share, int flags)
{
    struct write_params p;
    enum stmt_id id = write_params(w, 0, share, &p);
    PGresult *r;
    int rc = run(c, id, p.vals, p.lens, flags, w->op == RHEMA_WRITE_DEL ? "delete" : "put", &r);
    if (rc != 0)
        return rc;
    rc = write_result(c, w, id, r);
    PQclear(r);
    return rc;
}

/* Every PURGE_EVERY writes, delete a bounded number of expired rows. */
static void maybe_purge(rhema_storage_conn *c)
{
    char saved[PG_ERRMSG_MAX];
    if (atomic_fetch_add(&c->inst->writes, 1) % PURGE_EVERY != PURGE_EVERY - 1)
        return;
    memcpy(saved, c->err, sizeof saved);
    (void)run(c, ST_PURGE, NULL, NULL, 0, "purge", NULL); /* best effort */
    memcpy(c->err, saved, sizeof saved);
}

static void clear_versions(struct rhema_storage_write *w, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        w[i].new_version = 0;
}

/* 1 for the results that fail one member only: its precondition or its arguments. */
static int member_local(int rc)
{
    return rc == RHEMA_ECONFLICT || rc == RHEMA_ENOTFOUND || rc == RHEMA_EINVAL ||
           rc == RHEMA_ETOOBIG;
}

#ifdef LIBPQ_HAS_PIPELINING
/*
 * Pipelined group commit (libpq pipeline mode).
 *
 * Round 1 sends, in one go and with one Sync: BEGIN, then for each member
 * a SAVEPOINT of its own (only for a member that needs one:
 * rhema_storage_batch_checks_after_first in ../common) followed by
 * its writes, and reads every result back.  A failed precondition is a
 * normal result (no row applied, see write_result), never an error, so the
 * transaction goes on.  A member's writes carry its guard (GUARD): after
 * one of them fails, the rest are skipped by the server, so a member whose
 * *first* write fails -- a stale version, the usual conflict -- changed
 * nothing and needs no rollback.  When the COMMIT round is all that is
 * left, the group took two round trips: this one and COMMIT's.
 *
 * A member that failed after some of its writes applied (or that met a
 * member-local server error) is rolled back: the next round starts with
 * ROLLBACK TO its savepoint -- which also undoes every later member, since
 * the savepoints nest -- and sends the later members again, which then see
 * the state without the failed one.  Members before it keep their results.
 * Every round settles at least one member, so it ends.
 *
 * Why not one statement per member (a CTE that checks every precondition,
 * then writes): the writes of one statement share one snapshot, so a later
 * write cannot see an earlier one of the same member (a delete then a put
 * of the same key, or one row touched twice, which ON CONFLICT refuses),
 * and a row another connection changes or inserts between the check and
 * the write (READ COMMITTED re-checks only the row it updates) would leave
 * the member half applied with no savepoint to undo it.
 *
 * batch() (batch_mode) is the same with one member, no savepoint and
 * ROLLBACK instead of COMMIT when a write fails.
 */
enum pl_kind { PL_BEGIN, PL_SAVEPOINT, PL_ROLLBACK_TO, PL_WRITE, PL_SEQ_LOCK, PL_SEQ_NOTIFY };

struct pl_item {
    enum pl_kind kind;
    size_t member, write;
    size_t count;    /* PL_WRITE: writes write..write+count-1 (ST_PUT_MANY when > 1) */
    enum stmt_id id; /* PL_WRITE */
};

static int is_put_any(const struct rhema_storage_write *w)
{
    return w->op == RHEMA_WRITE_PUT && w->expected_version == RHEMA_VERSION_ANY && !is_seq(w);
}

/* 1 when b->writes[j] is followed by a sequenced write (which may take its version). */
static int seq_next(const struct rhema_storage_batch *b, size_t j)
{
    return j + 1 < b->n && is_seq(&b->writes[j + 1]);
}

/*
 * How many writes from b->writes[j] on go into one statement: a run of
 * unconditional puts with distinct (ns, key) -- one row cannot be written
 * twice by one INSERT ... ON CONFLICT -- of at most PUT_MANY_MAX; else 1.
 * A put followed by a sequenced write goes alone: that write reads the
 * put's version with currval(), which after a multi-row INSERT would be
 * the last row's nextval(), in an order the server does not promise.
 */
static size_t put_run(const struct rhema_storage_batch *b, size_t j)
{
    size_t k, e;
    if (!is_put_any(&b->writes[j]) || seq_next(b, j))
        return 1;
    for (e = j + 1; e < b->n && e - j < PUT_MANY_MAX && is_put_any(&b->writes[e]) &&
                    !seq_next(b, e);
         e++)
        for (k = j; k < e; k++)
            if (strcmp(b->writes[k].key, b->writes[e].key) == 0 &&
                strcmp(b->writes[k].ns, b->writes[e].ns) == 0)
                return e - j;
    return e - j;
}

static unsigned char *be32_put(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
    return p + 4;
}

/* The header of a one-dimensional array of n elements of type oid (binary format). */
static unsigned char *array_head(unsigned char *p, uint32_t oid, size_t n)
{
    p = be32_put(p, 1); /* dimensions */
    p = be32_put(p, 0); /* no NULLs */
    p = be32_put(p, oid);
    p = be32_put(p, (uint32_t)n);
    return be32_put(p, 1); /* lower bound */
}

/* One element of such an array: its length, then its bytes. */
static unsigned char *array_elem(unsigned char *p, const void *data, size_t len)
{
    p = be32_put(p, (uint32_t)len);
    if (len > 0)
        memcpy(p, data, len);
    return p + len;
}

/*
 * The parameters of ST_PUT_MANY for writes w[0..n): four arrays (ns, key,
 * value, ttl) in binary form, in one malloc'd buffer (*buf, freed by the
 * caller once the statement is sent), and the guard.  0 or RHEMA_ENOMEM.
 */
static int put_many_params(const struct rhema_storage_write *w, size_t n, uint64_t tag,
                           struct write_params *p, unsigned char **buf)
{
    size_t i, size = 4 * 20 + n * (4 + 8);
    unsigned char *q;
    for (i = 0; i < n; i++)
        size += 4 + strlen(w[i].ns) + 4 + strlen(w[i].key) + 4 + w[i].value_len;
    if ((q = *buf = malloc(size)) == NULL)
        return RHEMA_ENOMEM;
    p->vals[0] = (const char *)q;
    q = array_head(q, OID_TEXT, n);
    for (i = 0; i < n; i++)
        q = array_elem(q, w[i].ns, strlen(w[i].ns));
    p->vals[1] = (const char *)q;
    q = array_head(q, OID_BYTEA, n);
    for (i = 0; i < n; i++)
        q = array_elem(q, w[i].key, strlen(w[i].key));
    p->vals[2] = (const char *)q;
    q = array_head(q, OID_BYTEA, n);
    for (i = 0; i < n; i++)
        q = array_elem(q, w[i].value, w[i].value_len);
    p->vals[3] = (const char *)q;
    q = array_head(q, OID_INT8, n);
    for (i = 0; i < n; i++) {
        q = be32_put(q, 8);
        be64_put(q, w[i].ttl_ms > TTL_MAX_MS ? TTL_MAX_MS : w[i].ttl_ms), q += 8;
    }
    for (i = 0; i < 3; i++)
        p->lens[i] =
            (int)((const unsigned char *)p->vals[i + 1] - (const unsigned char *)p->vals[i]);
    p->lens[3] = (int)(q - (const unsigned char *)p->vals[3]);
    be64_put(p->tag_b, tag);
    p->vals[4] = (const char *)p->tag_b;
    p->lens[4] = 8;
    return 0;
}

/* What ST_PUT_MANY's result r says of writes w[0..n): as write_result(). */
static int put_many_result(rhema_storage_conn *c, struct rhema_storage_write *w, size_t n,
                           const PGresult *r)
{
    size_t i;
    int row, rows = PQntuples(r);
    if (rows == 0) {
        conn_error(c, "put: skipped after a failed write of the same batch");
        return RHEMA_ECONFLICT;
    }
    for (i = 0; i < n; i++) {
        size_t nl = strlen(w[i].ns), kl = strlen(w[i].key);
        for (row = 0; row < rows; row++)
            if ((size_t)PQgetlength(r, row, 0) == nl && (size_t)PQgetlength(r, row, 1) == kl &&
                memcmp(PQgetvalue(r, row, 0), w[i].ns, nl) == 0 &&
                memcmp(PQgetvalue(r, row, 1), w[i].key, kl) == 0)
                break;
        if (row == rows) {
            conn_error(c, "put: the server returned no row for key '%s'", w[i].key);
            return RHEMA_EIO;
        }
        w[i].new_version = col_u64(r, row, 2);
    }
    return 0;
}

/* The savepoint of member i is nested in those of earlier members: one name each. */
static void pl_savepoint_sql(char *buf, size_t size, const char *verb, size_t member)
{
    snprintf(buf, size, "%s rhema_m%zu", verb, member);
}

/*
 * Send items[0..m) and a Sync, then read one result per item into res[]
 * (NULL where none came).  0, or RHEMA_EUNAVAIL when the connection broke
 * (c dropped, "nothing applied": no round holds a COMMIT).
 */
static int pl_round(rhema_storage_conn *c, struct pl_item *items, size_t m, PGresult **res,
                    struct rhema_storage_batch *g, int batch_mode)
{
    static const int fmts[MAX_PARAMS] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    char name[16], sql[64];
    size_t k;
    PGresult *r;

    for (k = 0; k < m; k++)
        res[k] = NULL;
    for (k = 0; k < m; k++) {
        struct pl_item *it = &items[k];
        int ok;
        switch (it->kind) {
        case PL_BEGIN:
            snprintf(name, sizeof name, "rhema_%d", (int)ST_BEGIN);
            ok = PQsendQueryPrepared(c->pg, name, 0, NULL, NULL, NULL, 1);
            break;
        case PL_SEQ_LOCK:
            snprintf(name, sizeof name, "rhema_%d", (int)ST_SEQ_LOCK);
            ok = PQsendQueryPrepared(c->pg, name, 0, NULL, NULL, NULL, 1);
            break;
        case PL_SEQ_NOTIFY: {
            const char *ch = c->inst->channel;
            int len = (int)strlen(ch);
            snprintf(name, sizeof name, "rhema_%d", (int)ST_SEQ_NOTIFY);
            ok = PQsendQueryPrepared(c->pg, name, 1, &ch, &len, fmts, 1);
            break;
        }
        case PL_SAVEPOINT:
        case PL_ROLLBACK_TO:
            pl_savepoint_sql(sql, sizeof sql,
                             it->kind == PL_SAVEPOINT ? "SAVEPOINT" : "ROLLBACK TO SAVEPOINT",
                             it->member);
            ok = PQsendQueryParams(c->pg, sql, 0, NULL, NULL, NULL, NULL, 1);
            break;
        default: {
            struct rhema_storage_batch *b = &g[it->member];
            struct write_params p;
            unsigned char *buf = NULL;
            /* a member of one write needs no guard: its one statement is all or nothing */
            uint64_t tag = batch_mode || b->n > 1 ? (uint64_t)it->member + 1 : 0;
            if (it->count > 1) {
                it->id = ST_PUT_MANY;
                if (put_many_params(&b->writes[it->write], it->count, tag, &p, &buf) != 0) {
                    conn_error(c, "out of memory");
                    conn_drop(c); /* the pipeline is half sent: start afresh */
                    return RHEMA_ENOMEM;
                }
            } else {
                it->id = write_params(&b->writes[it->write], tag, seq_shares(b->writes, it->write),
                                      &p);
            }
            snprintf(name, sizeof name, "rhema_%d", (int)it->id);
            /* libpq copies the parameters into its output buffer */
            ok = PQsendQueryPrepared(c->pg, name, (int)strlen(stmt_defs[it->id].types), p.vals,
                                     p.lens, fmts, 1);
            free(buf);
            break;
        }
        }
        if (!ok)
            return run_fail(c, batch_mode ? "batch" : "group", NULL, 0, 0);
    }
    if (!PQpipelineSync(c->pg))
        return run_fail(c, batch_mode ? "batch" : "group", NULL, 0, 0);
    /* per item: its result, then NULL; then the Sync's result */
    for (k = 0; k < m; k++) {
        res[k] = PQgetResult(c->pg);
        if (res[k] == NULL)
            break;
        while ((r = PQgetResult(c->pg)) != NULL) /* one result per statement: anything else is dropped */
            PQclear(r);
        if (PQstatus(c->pg) != CONNECTION_OK)
            break;
    }
    if (k == m && PQstatus(c->pg) == CONNECTION_OK) {
        r = PQgetResult(c->pg);
        if (r != NULL && PQresultStatus(r) == PGRES_PIPELINE_SYNC) {
            PQclear(r);
            c->used_ms = mono_ms(c->inst);
            return 0;
        }
        PQclear(r);
    }
    /* the connection broke (or the protocol went astray: start afresh) */
    {
        PGresult *bad = NULL;
        int rc;
        for (k = 0; k < m && bad == NULL; k++)
            if (res[k] != NULL && PQresultStatus(res[k]) == PGRES_FATAL_ERROR)
                bad = res[k];
        if (PQstatus(c->pg) == CONNECTION_OK) {
            conn_error(c, "%s: unexpected answer from the server, nothing was applied",
                       batch_mode ? "batch" : "group");
            conn_drop(c);
            return RHEMA_EUNAVAIL;
        }
        rc = run_fail(c, batch_mode ? "batch" : "group", bad, 0, 0);
        return rc;
    }
}

static void pl_clear(PGresult **res, size_t m)
{
    size_t k;
    for (k = 0; k < m; k++) {
        PQclear(res[k]);
        res[k] = NULL;
    }
}

/* Leave pipeline mode (every result was read) and roll back; c may be dropped. */
static void pl_abort(rhema_storage_conn *c)
{
    if (c->pg == NULL)
        return;
    if (PQpipelineStatus(c->pg) != PQ_PIPELINE_OFF && !PQexitPipelineMode(c->pg)) {
        conn_drop(c);
        return;
    }
    tx_rollback(c);
}

/*
 * Apply the n members of g (checked: a member with result != 0 or no write
 * is left alone) in one transaction, pipelined; see above.  0 when the
 * group committed, else the error (nothing applied, or the outcome unknown
 * when the COMMIT was lost).  batch_mode: one member, all or nothing; its
 * failure is returned (nothing applied).
 */
static int pl_apply(rhema_storage_conn *c, struct rhema_storage_batch *g, size_t n, int batch_mode)
{
    size_t total = 2, i, j, k, m, start = 0, rb = SIZE_MAX;
    struct pl_item *items;
    PGresult **res;
    int rc = 0, first = 1, seq = 0;

    for (i = 0; i < n; i++) {
        total += g[i].n + 1;
        for (j = 0; j < g[i].n && g[i].result == 0 && !seq; j++)
            seq = is_seq(&g[i].writes[j]);
    }
    total += 2; /* PL_SEQ_LOCK, PL_SEQ_NOTIFY */
    items = malloc(total * sizeof *items);
    res = malloc(total * sizeof *res);
    if (items == NULL || res == NULL) {
        free(items);
        free(res);
        conn_error(c, "out of memory");
        return RHEMA_ENOMEM;
    }
    if (!PQenterPipelineMode(c->pg)) {
        free(items);
        free(res);
        conn_error(c, "cannot enter pipeline mode: %s", PQerrorMessage(c->pg));
        conn_drop(c);
        return RHEMA_EUNAVAIL;
    }
    for (;;) {
        size_t next_rb = SIZE_MAX;
        m = 0;
        if (first)
            items[m++] = (struct pl_item){.kind = PL_BEGIN};
        /* before the first version is drawn: see "Sequenced writes" */
        if (first && seq)
            items[m++] = (struct pl_item){.kind = PL_SEQ_LOCK};
        if (rb != SIZE_MAX)
            items[m++] = (struct pl_item){.kind = PL_ROLLBACK_TO, .member = rb};
        for (i = start; i < n; i++) {
            if (g[i].result != 0 || g[i].n == 0)
                continue;
            if (!batch_mode && rhema_storage_batch_checks_after_first(&g[i]))
                items[m++] = (struct pl_item){.kind = PL_SAVEPOINT, .member = i};
            for (j = 0; j < g[i].n; j += items[m - 1].count)
                items[m++] = (struct pl_item){
                    .kind = PL_WRITE, .member = i, .write = j, .count = put_run(&g[i], j)};
        }
        /*
         * In every round: a ROLLBACK TO of a later round undoes this one's
         * (it comes after every savepoint).  The server sends it at COMMIT,
         * once however often it was asked for.
         */
        if (seq)
            items[m++] = (struct pl_item){.kind = PL_SEQ_NOTIFY};
        rc = pl_round(c, items, m, res, g, batch_mode);
        if (rc != 0) {
            pl_clear(res, m);
            break; /* connection lost: c was dropped, nothing was applied */
        }
        first = 0;
        for (k = 0; k < m && rc == 0 && next_rb == SIZE_MAX; k++) {
            struct pl_item *it = &items[k];
            struct rhema_storage_batch *b = &g[it->member];
            ExecStatusType st = res[k] != NULL ? PQresultStatus(res[k]) : PGRES_FATAL_ERROR;
            int wr;
            if (it->kind != PL_WRITE) {
                int sel = it->kind == PL_SEQ_LOCK || it->kind == PL_SEQ_NOTIFY;
                if (st != (sel ? PGRES_TUPLES_OK : PGRES_COMMAND_OK))
                    rc = run_fail(c,
                                  it->kind == PL_BEGIN      ? "begin"
                                  : it->kind == PL_SEQ_LOCK ? "sequenced writes: lock"
                                  : sel                     ? "sequenced writes: notify"
                                                            : "savepoint",
                                  res[k], 0, 0);
                if (rc == 0 && it->kind == PL_ROLLBACK_TO)
                    rb = SIZE_MAX;
                continue;
            }
            if (b->result != 0)
                continue; /* an earlier write of this member failed: the guard skipped this one */
            if (st == PGRES_TUPLES_OK) {
                wr = it->id == ST_PUT_MANY
                         ? put_many_result(c, &b->writes[it->write], it->count, res[k])
                         : write_result(c, &b->writes[it->write], it->id, res[k]);
                if (wr == RHEMA_EIO)
                    rc = wr;
            } else {
                wr = run_fail(c, b->writes[it->write].op == RHEMA_WRITE_DEL ? "delete" : "put",
                              res[k], 0, 0);
                /* the transaction is aborted, with no savepoint to go back to: all fail */
                if (c->pg == NULL || !member_local(wr) || batch_mode ||
                    !rhema_storage_batch_checks_after_first(b))
                    rc = wr;
            }
            if (rc != 0 || wr == 0)
                continue;
            b->result = wr;
            clear_versions(b->writes, b->n);
            /* some of its writes applied (or the transaction is aborted): roll it back */
            if (!batch_mode && (it->write > 0 || st != PGRES_TUPLES_OK))
                next_rb = it->member;
        }
        pl_clear(res, m);
        if (rc != 0 || next_rb == SIZE_MAX)
            break;
        /* undo next_rb and everything after it, then send the later members again */
        for (i = next_rb + 1; i < n; i++)
            if (g[i].result == 0 && g[i].writes != NULL)
                clear_versions(g[i].writes, g[i].n);
        rb = next_rb;
        start = next_rb + 1;
    }
    free(items);
    free(res);
    if (rc == 0 && batch_mode && g[0].result != 0) {
        char saved[PG_ERRMSG_MAX];
        memcpy(saved, c->err, sizeof saved);
        pl_abort(c);
        memcpy(c->err, saved, sizeof saved);
        return g[0].result;
    }
    if (rc != 0) {
        pl_abort(c);
        return rc;
    }
    if (!PQexitPipelineMode(c->pg)) {
        conn_error(c, "cannot leave pipeline mode: %s", PQerrorMessage(c->pg));
        conn_drop(c); /* the server rolls the transaction back */
        return RHEMA_EUNAVAIL;
    }
    return tx_commit(c);
}
#endif /* LIBPQ_HAS_PIPELINING */

/* Apply n checked writes all or nothing: one statement, or BEGIN ... COMMIT. */
static int write_tx(rhema_storage_conn *c, struct rhema_storage_write *w, size_t n)
{
    int rc = conn_ensure(c);
    if (rc != 0)
        return rc;
    clear_versions(w, n);
    if (n == 1 && !is_seq(w)) {
        rc = write_one(c, w, 0, RUN_OUTCOME);
    } else {
#ifdef LIBPQ_HAS_PIPELINING
        struct rhema_storage_batch b = {
            .size = sizeof(struct rhema_storage_batch), .writes = w, .n = n, .result = 0};
        rc = pl_apply(c, &b, 1, 1);
#else
        size_t i;
        int seq = 0;
        for (i = 0; i < n; i++)
            seq |= is_seq(&w[i]);
        rc = tx_begin(c);
        if (rc == 0 && seq)
            rc = seq_lock(c);
        for (i = 0; i < n && rc == 0; i++)
            rc = write_one(c, &w[i], is_seq(&w[i]) && seq_shares(w, i), 0);
        if (rc == 0 && seq)
            rc = seq_notify(c);
        if (rc == 0)
            rc = tx_commit(c);
        else
            tx_rollback(c);
#endif
    }
    if (rc != 0) {
        clear_versions(w, n);
        return rc;
    }
    if (c->ready)
        maybe_purge(c);
    return 0;
}

static int pg_put(rhema_storage_conn *c, struct rhema_storage_write *w)
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

static int pg_del(rhema_storage_conn *c, const char *ns, const char *key, uint64_t expected_version)
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

static int pg_batch(rhema_storage_conn *c, struct rhema_storage_write *w, size_t n)
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
 * Group commit: one transaction and one COMMIT for all members.  A member
 * of several writes runs inside its own SAVEPOINT and is rolled back to it
 * when a precondition fails; a member of one write needs none, since its
 * single statement changes nothing when its precondition fails.  Anything
 * but a precondition (a lost connection, a server error, which aborts the
 * transaction) fails the whole group.
 */
static int pg_group(rhema_storage_conn *c, struct rhema_storage_batch *g, size_t n)
{
    size_t i;
    int rc;
    if (n == 0)
        return 0;
    const char *why = NULL;
    int bad = rhema_storage_group_check(c, g, n, check_write, &why);
    if (why != NULL)
        conn_error(c, "%s", why);
    if (bad != 0)
        return bad;
    if ((rc = conn_ensure(c)) != 0)
        return rc;
#ifdef LIBPQ_HAS_PIPELINING
    rc = pl_apply(c, g, n, 0);
#else
    size_t j;
    int seq = 0;
    for (i = 0; i < n; i++)
        for (j = 0; j < g[i].n && g[i].result == 0; j++)
            seq |= is_seq(&g[i].writes[j]);
    rc = tx_begin(c);
    if (rc == 0 && seq)
        rc = seq_lock(c);
    for (i = 0; i < n && rc == 0; i++) {
        int sp = rhema_storage_batch_checks_after_first(&g[i]);
        if (g[i].result != 0 || g[i].n == 0)
            continue;
        if (sp && (rc = run(c, ST_SAVEPOINT, NULL, NULL, 0, "savepoint", NULL)) != 0)
            break;
        for (j = 0; j < g[i].n && g[i].result == 0; j++)
            g[i].result = write_one(c, &g[i].writes[j],
                                    is_seq(&g[i].writes[j]) && seq_shares(g[i].writes, j), 0);
        if (g[i].result != 0) {
            clear_versions(g[i].writes, g[i].n);
            if (!member_local(g[i].result))
                rc = g[i].result; /* not a precondition: give up on the whole group */
            else if (sp)
                rc = run(c, ST_ROLLBACK_TO, NULL, NULL, 0, "rollback to savepoint", NULL);
        }
        if (rc == 0 && sp)
            rc = run(c, ST_RELEASE, NULL, NULL, 0, "release savepoint", NULL);
    }
    if (rc == 0 && seq)
        rc = seq_notify(c);
    if (rc == 0)
        rc = tx_commit(c);
    else
        tx_rollback(c);
#endif
    if (rc != 0) {
        for (i = 0; i < n; i++)
            if (g[i].writes != NULL)
                clear_versions(g[i].writes, g[i].n);
        return rc;
    }
    if (c->ready)
        maybe_purge(c);
    return 0;
}

/* ---- leases ---- */

/* Fill out from a (holder, epoch, remaining ms) row. */
static void fill_lease(struct rhema_lease_info *out, const PGresult *r)
{
    uint64_t remaining;
    size_t len;
    if (out == NULL)
        return;
    memset(out, 0, sizeof *out);
    if (r == NULL || PQntuples(r) == 0)
        return;
    out->epoch = col_u64(r, 0, 1);
    remaining = col_u64(r, 0, 2);
    if (remaining == 0)
        return; /* free: no holder */
    len = (size_t)PQgetlength(r, 0, 0);
    if (len > RHEMA_LEASE_HOLDER_MAX)
        len = RHEMA_LEASE_HOLDER_MAX;
    memcpy(out->holder, PQgetvalue(r, 0, 0), len);
    out->holder[len] = '\0';
    out->ttl_remaining_ms = remaining;
}

static int pg_lease(rhema_storage_conn *c, const char *name, const char *holder, uint64_t ttl_ms,
                    int op, struct rhema_lease_info *out)
{
    unsigned char ttl_b[8];
    const char *vals[3];
    int lens[3];
    enum stmt_id id;
    PGresult *r = NULL;
    size_t nl = rhema_storage_key_len(name), hl = 0;
    int rc;

    const char *why = rhema_storage_lease_invalid(name, holder, ttl_ms, op);
    if (why != NULL) {
        conn_error(c, "%s", why);
        return RHEMA_EINVAL;
    }
    switch (op) {
    case RHEMA_LEASE_ACQUIRE: id = ST_LEASE_ACQUIRE; break;
    case RHEMA_LEASE_RENEW: id = ST_LEASE_RENEW; break;
    case RHEMA_LEASE_RELEASE: id = ST_LEASE_RELEASE; break;
    case RHEMA_LEASE_QUERY: id = ST_LEASE_GET; break;
    default: conn_error(c, "unknown lease op %d", op); return RHEMA_EINVAL;
    }
    if (op != RHEMA_LEASE_QUERY) {
        hl = strlen(holder);
        if (op != RHEMA_LEASE_RELEASE && (ttl_ms == 0 || ttl_ms > LEASE_TTL_MAX_MS)) {
            conn_error(c, "lease ttl_ms must be in 1..%llu", (unsigned long long)LEASE_TTL_MAX_MS);
            return RHEMA_EINVAL;
        }
    }
    if ((rc = conn_ensure(c)) != 0)
        return rc;
    vals[0] = name;
    lens[0] = (int)nl;
    vals[1] = holder;
    lens[1] = (int)hl;
    be64_put(ttl_b, ttl_ms);
    vals[2] = (const char *)ttl_b;
    lens[2] = 8;
    rc = run(c, id, vals, lens, op == RHEMA_LEASE_QUERY ? 0 : RUN_OUTCOME, "lease", &r);
    if (rc != 0)
        return rc;
    if (op == RHEMA_LEASE_QUERY) {
        fill_lease(out, r);
        if (PQntuples(r) == 0 || col_u64(r, 0, 2) == 0) {
            conn_error(c, "lease '%s' is not held", name);
            rc = RHEMA_ENOTFOUND;
        }
        PQclear(r);
        return rc;
    }
    if (PQntuples(r) == 1) {
        fill_lease(out, r);
        PQclear(r);
        return 0;
    }
    /* refused: read who holds it now, for out and the message */
    PQclear(r);
    r = NULL;
    rc = run(c, ST_LEASE_GET, vals, lens, 0, "lease", &r);
    if (rc != 0)
        return rc;
    fill_lease(out, r);
    if (PQntuples(r) == 1 && col_u64(r, 0, 2) > 0)
        conn_error(c, "lease '%s' is held by '%.*s'", name, PQgetlength(r, 0, 0),
                   PQgetvalue(r, 0, 0));
    else
        conn_error(c, "lease '%s' is not held by '%s'", name, holder);
    PQclear(r);
    return RHEMA_ECONFLICT;
}

/* ---- rate ---- */

/* rate(): one ST_RATE statement (see the top of the file), and now and then a purge. */
static int pg_rate(rhema_storage_conn *c, struct rhema_rate_query *q)
{
    unsigned char num[1 + 2 * RHEMA_RATE_WINDOWS_MAX][8];
    const char *vals[2 + 2 * RHEMA_RATE_WINDOWS_MAX];
    int lens[2 + 2 * RHEMA_RATE_WINDOWS_MAX];
    PGresult *r = NULL;
    const char *why = rhema_rate_query_invalid(q);
    int i, rc;
    if (why != NULL) {
        conn_error(c, "%s", why);
        return RHEMA_EINVAL;
    }
    vals[0] = q->key;
    lens[0] = (int)strlen(q->key);
    be64_put(num[0], q->n);
    for (i = 0; i < RHEMA_RATE_WINDOWS_MAX; i++) {
        int used = (size_t)i < q->n;
        be64_put(num[1 + 2 * i], used ? q->windows[i].interval_us : 0);
        be64_put(num[2 + 2 * i], used ? q->windows[i].tolerance_us : RHEMA_RATE_SPAN_MAX);
    }
    for (i = 0; i < 1 + 2 * RHEMA_RATE_WINDOWS_MAX; i++) {
        vals[1 + i] = (const char *)num[i];
        lens[1 + i] = 8;
    }
    if ((rc = conn_ensure(c)) != 0)
        return rc;
    rc = run(c, ST_RATE, vals, lens, RUN_OUTCOME, "rate", &r);
    if (rc != 0)
        return rc;
    if (PQntuples(r) != 1 || PQnfields(r) != 6) {
        PQclear(r);
        conn_error(c, "rate: unexpected result");
        return RHEMA_EIO;
    }
    q->allowed = col_u64(r, 0, 0) == 1;
    q->now_us = (int64_t)col_u64(r, 0, 5);
    for (i = 0; i < RHEMA_RATE_WINDOWS_MAX; i++)
        q->tat_us[i] = (size_t)i < q->n ? (int64_t)col_u64(r, 0, 1 + i) : q->now_us;
    PQclear(r);
    if (++c->rate_calls % RATE_PURGE_EVERY == 0) {
        char saved[PG_ERRMSG_MAX];
        memcpy(saved, c->err, sizeof saved);
        (void)run(c, ST_RATE_PURGE, NULL, NULL, 0, "rate purge", NULL); /* best effort */
        memcpy(c->err, saved, sizeof saved);
    }
    return 0;
}

/* ---- the rest ---- */

static int pg_health(rhema_storage_conn *c, char **err)
{
    int rc = conn_ensure(c);
    if (rc == 0)
        rc = run(c, ST_HEALTH, NULL, NULL, 0, "health", NULL);
    if (rc != 0)
        return c->inst->host->set_error(err, RHEMA_EUNAVAIL, "postgres: %s", c->err);
    return 0;
}

static const char *pg_errmsg(rhema_storage_conn *c)
{
    return c != NULL ? c->err : "";
}

/* fsync the directory holding path.  0 or errno. */
static int fsync_parent(const char *path)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    int fd, e = 0;
    if (slash == NULL) {
        snprintf(dir, sizeof dir, ".");
    } else if (slash == path) {
        snprintf(dir, sizeof dir, "/");
    } else {
        if ((size_t)(slash - path) >= sizeof dir)
            return ENAMETOOLONG;
        memcpy(dir, path, (size_t)(slash - path));
        dir[slash - path] = '\0';
    }
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    if (fsync(fd) != 0)
        e = errno;
    close(fd);
    return e;
}

/* Copy the output of one COPY ... TO STDOUT into f.  0 or a RHEMA_E* code. */
static int backup_copy(rhema_storage_conn *c, FILE *f, const char *sql)
{
    PGresult *r = PQexec(c->pg, sql);
    char *buf;
    int n, rc = 0;
    if (r == NULL || PQresultStatus(r) != PGRES_COPY_OUT) {
        rc = run_fail(c, "backup", r, 0, 0);
        PQclear(r);
        return rc;
    }
    PQclear(r);
    while ((n = PQgetCopyData(c->pg, &buf, 0)) > 0) {
        if (rc == 0 && fwrite(buf, 1, (size_t)n, f) != (size_t)n) {
            conn_error(c, "backup: write: %s", strerror(errno));
            rc = RHEMA_EIO;
        }
        PQfreemem(buf);
    }
    r = PQgetResult(c->pg);
    if (n == -2 || r == NULL || PQresultStatus(r) != PGRES_COMMAND_OK) {
        int fr = run_fail(c, "backup", r, 0, 0);
        if (rc == 0)
            rc = fr;
    }
    PQclear(r);
    while ((r = PQgetResult(c->pg)) != NULL)
        PQclear(r);
    return rc;
}

/*
 * Write a consistent snapshot of the schema to path: one REPEATABLE READ,
 * READ ONLY transaction, written to path.tmp, fsync'd, renamed over path,
 * and the directory fsync'd.
 *
 * Format: a plain SQL script in the style of pg_dump, which restores the
 * store into an empty database with `psql -v ON_ERROR_STOP=1 -f path`:
 *     -- rhema postgres backup ... (comment lines)
 *     BEGIN;
 *     CREATE SCHEMA IF NOT EXISTS "<schema>";
 *     <the CREATE TABLE / SEQUENCE / INDEX statements of open()>
 *     COPY "<schema>".kv (ns, key, value, version, expires_at) FROM stdin;
 *     <live rows, COPY text format: tab-separated, bytea as \\x hex,
 *      timestamps in ISO 8601 UTC, \N for NULL>
 *     \.
 *     COPY "<schema>".leases (name, holder, epoch, expires_at) FROM stdin;
 *     <every lease row, released ones too: their epochs must survive>
 *     \.
 *     SELECT setval('"<schema>".kv_version', <N>);   (when N > 0)
 *     COMMIT;
 * N is the largest of the sequence's last value and every version, so a
 * restored store never hands out a version it held before.
 */
static int pg_backup(rhema_storage_conn *c, const char *path, char **err)
{
    const struct rhema_host *h = c->inst->host;
    const char *q = c->inst->qschema;
    char tmp[PATH_MAX], sql[768], *ddl = NULL;
    PGresult *r = NULL;
    FILE *f = NULL;
    unsigned long long seq = 0;
    int rc, e, fd;

    if (path == NULL || path[0] == '\0')
        return h->set_error(err, RHEMA_EINVAL, "postgres: backup: empty path");
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return h->set_error(err, RHEMA_EINVAL, "postgres: backup: path too long");
    if ((rc = conn_ensure(c)) != 0)
        return h->set_error(err, rc, "postgres: backup: %s", c->err);
    ddl = fill_schema(schema_ddl, q);
    if (ddl == NULL) {
        conn_error(c, "backup: out of memory");
        rc = RHEMA_ENOMEM;
        goto out;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || (f = fdopen(fd, "w")) == NULL) {
        e = errno;
        if (fd >= 0)
            close(fd);
        conn_error(c, "backup: create %s: %s", tmp, strerror(e));
        rc = RHEMA_EIO;
        goto out;
    }
    r = PQexec(c->pg, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; "
                      "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO'; "
                      "SET LOCAL bytea_output = 'hex'");
    if (r == NULL || PQresultStatus(r) != PGRES_COMMAND_OK) {
        rc = run_fail(c, "backup", r, 0, 0);
        goto out;
    }
    PQclear(r);
    /* the snapshot is taken by the first query: this one */
    snprintf(sql, sizeof sql,
             "SELECT GREATEST((SELECT CASE WHEN is_called THEN last_value ELSE 0 END "
             "FROM %s.kv_version), (SELECT COALESCE(max(version), 0) FROM %s.kv)), "
             "now(), (SELECT count(*) FROM %s.kv WHERE expires_at IS NULL OR expires_at > now())",
             q, q, q);
    r = PQexec(c->pg, sql);
    if (r == NULL || PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        rc = run_fail(c, "backup", r, 0, 0);
        goto out;
    }
    seq = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
    fprintf(
        f,
        "-- rhema postgres backup: schema %s, schema_version %d, taken %s UTC, %s live entries\n"
        "-- restore into an empty database: psql -v ON_ERROR_STOP=1 -f <this file>\n"
        "BEGIN;\nCREATE SCHEMA IF NOT EXISTS %s;\n%s",
        q, SCHEMA_VERSION, PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2), q, ddl);
    PQclear(r);
    r = NULL;
    fprintf(f, "COPY %s.kv (ns, key, value, version, expires_at) FROM stdin;\n", q);
    snprintf(sql, sizeof sql,
             "COPY (SELECT ns, key, value, version, expires_at FROM %s.kv "
             "WHERE expires_at IS NULL OR expires_at > now() ORDER BY ns, key) TO STDOUT",
             q);
    if ((rc = backup_copy(c, f, sql)) != 0)
        goto out;
    fprintf(f, "\\.\nCOPY %s.leases (name, holder, epoch, expires_at) FROM stdin;\n", q);
    snprintf(sql, sizeof sql,
             "COPY (SELECT name, holder, epoch, expires_at FROM %s.leases ORDER BY name) TO STDOUT",
             q);
    if ((rc = backup_copy(c, f, sql)) != 0)
        goto out;
    fprintf(f, "\\.\n");
    if (seq > 0)
        fprintf(f, "SELECT setval('%s.kv_version', %llu);\n", q, seq);
    fprintf(f, "COMMIT;\n");
    r = PQexec(c->pg, "COMMIT");
    if (r == NULL || PQresultStatus(r) != PGRES_COMMAND_OK) {
        rc = run_fail(c, "backup", r, 0, 0);
        goto out;
    }
    if (fflush(f) != 0 || ferror(f) || fsync(fileno(f)) != 0) {
        conn_error(c, "backup: write %s: %s", tmp, strerror(errno));
        rc = RHEMA_EIO;
        goto out;
    }
    e = fclose(f);
    f = NULL;
    if (e != 0) {
        conn_error(c, "backup: close %s: %s", tmp, strerror(errno));
        rc = RHEMA_EIO;
        goto out;
    }
    if (rename(tmp, path) != 0) {
        conn_error(c, "backup: rename to %s: %s", path, strerror(errno));
        rc = RHEMA_EIO;
        goto out;
    }
    if ((e = fsync_parent(path)) != 0) {
        conn_error(c, "backup: fsync the directory of %s: %s", path, strerror(e));
        rc = RHEMA_EIO;
    }
out:
    PQclear(r);
    free(ddl);
    tx_rollback(c); /* after a failure inside the transaction */
    if (f != NULL) {
        fclose(f);
        unlink(tmp);
    }
    if (rc != 0)
        return h->set_error(err, rc, "postgres: %s", c->err);
    return 0;
}

/* ---- restore ---- */

/* A backup file, read whole and checked by parse_backup(). */
struct pg_backup_file {
    char *buf;
    const char *kv;      /* the COPY data of kv (lines, each ending in \n) */
    size_t kv_len, kv_rows;
    const char *leases;  /* the COPY data of leases */
    size_t leases_len, leases_rows;
    unsigned long long seq; /* the setval() of the backup, 0 when none */
};

/* The next line of [*p, end): its start, length without \n; NULL at the end. */
static const char *next_line(const char **p, const char *end, size_t *len)
{
    const char *start = *p, *nl;
    if (start >= end)
        return NULL;
    nl = memchr(start, '\n', (size_t)(end - start));
    if (nl == NULL) { /* a last line without \n: the file was cut */
        *len = (size_t)(end - start);
        *p = end;
        return start;
    }
    *len = (size_t)(nl - start);
    *p = nl + 1;
    return start;
}

static int line_is(const char *l, size_t len, const char *want)
{
    return len == strlen(want) && memcmp(l, want, len) == 0;
}

/* 1 when l is "COPY <schema>.<table> (<cols>) FROM stdin;" */
static int copy_line(const char *l, size_t len, const char *tail)
{
    size_t tl = strlen(tail);
    return len > 5 + tl && memcmp(l, "COPY ", 5) == 0 && memcmp(l + len - tl, tail, tl) == 0;
}

/*
 * The rows of one COPY block starting at *p, up to its "\." line; each row
 * must have `tabs` tab separators.  Returns 0 or -1 (with why).
 */
static int copy_block(const char **p, const char *end, int tabs, const char **data,
                      size_t *data_len, size_t *rows, char *why, size_t why_size)
{
    const char *l;
    size_t len;
    *data = *p;
    *rows = 0;
    while ((l = next_line(p, end, &len)) != NULL) {
        size_t i;
        int t = 0;
        if (line_is(l, len, "\\.")) {
            *data_len = (size_t)(l - *data);
            return 0;
        }
        if (*p == end && l[len] != '\n') {
            snprintf(why, why_size, "the file ends inside a COPY block (truncated)");
            return -1;
        }
        for (i = 0; i < len; i++)
            t += l[i] == '\t';
        if (t != tabs) {
            snprintf(why, why_size, "row %zu of a COPY block has %d columns, want %d",
                     *rows + 1, t + 1, tabs + 1);
            return -1;
        }
        (*rows)++;
    }
    snprintf(why, why_size, "the file ends inside a COPY block (truncated)");
    return -1;
}

/*
 * Read and check a backup written by pg_backup(): its header (schema
 * version, live entry count), the kv COPY block with exactly that many
 * rows of 5 columns, the leases block (4 columns), the optional setval and
 * the final COMMIT -- so that a truncated or edited file is refused before
 * anything changes.
 */
static int parse_backup(const char *path, struct pg_backup_file *b, char *why, size_t why_size)
{
    FILE *f;
    long size;
    const char *p, *end, *l, *m;
    size_t len;
    unsigned long long live;
    int version;

    memset(b, 0, sizeof *b);
    f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(why, why_size, "open %s: %s", path, strerror(errno));
        return errno == ENOENT ? RHEMA_ENOTFOUND : RHEMA_EIO;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        snprintf(why, why_size, "%s: cannot read its size (a directory?)", path);
        return RHEMA_EIO;
    }
    b->buf = malloc((size_t)size + 1);
    if (b->buf == NULL || fread(b->buf, 1, (size_t)size, f) != (size_t)size) {
        fclose(f);
        snprintf(why, why_size, "%s: %s", path, b->buf == NULL ? "out of memory" : "read error");
        return b->buf == NULL ? RHEMA_ENOMEM : RHEMA_EIO;
    }
    fclose(f);
    b->buf[size] = '\0';
    p = b->buf;
    end = b->buf + size;

    l = next_line(&p, end, &len);
    if (l == NULL || len < 40 || memcmp(l, "-- rhema postgres backup: schema ", 33) != 0) {
        snprintf(why, why_size, "%s is not a rhema postgres backup (bad first line)", path);
        return RHEMA_ECORRUPT;
    }
    m = strstr(l, ", schema_version ");
    if (m == NULL || m > l + len || sscanf(m, ", schema_version %d,", &version) != 1) {
        snprintf(why, why_size, "%s: no schema_version in the first line", path);
        return RHEMA_ECORRUPT;
    }
    if (version != SCHEMA_VERSION) {
        snprintf(why, why_size, "%s: schema_version %d, this plugin knows %d", path, version,
                 SCHEMA_VERSION);
        return RHEMA_ENOTSUP;
    }
    m = strstr(l, " UTC, ");
    if (m == NULL || m > l + len || sscanf(m, " UTC, %llu live entries", &live) != 1) {
        snprintf(why, why_size, "%s: no entry count in the first line", path);
        return RHEMA_ECORRUPT;
    }
    while ((l = next_line(&p, end, &len)) != NULL &&
           !copy_line(l, len, ".kv (ns, key, value, version, expires_at) FROM stdin;"))
        ;
    if (l == NULL) {
        snprintf(why, why_size, "%s: no COPY of kv (truncated)", path);
        return RHEMA_ECORRUPT;
    }
    if (copy_block(&p, end, 4, &b->kv, &b->kv_len, &b->kv_rows, why, why_size) != 0)
        return RHEMA_ECORRUPT;
    if (b->kv_rows != live) {
        snprintf(why, why_size, "%s: %zu rows of kv, the header says %llu live entries", path,
                 b->kv_rows, live);
        return RHEMA_ECORRUPT;
    }
    l = next_line(&p, end, &len);
    if (l == NULL || !copy_line(l, len, ".leases (name, holder, epoch, expires_at) FROM stdin;")) {
        snprintf(why, why_size, "%s: no COPY of leases after kv (truncated)", path);
        return RHEMA_ECORRUPT;
    }
    if (copy_block(&p, end, 3, &b->leases, &b->leases_len, &b->leases_rows, why, why_size) != 0)
        return RHEMA_ECORRUPT;
    l = next_line(&p, end, &len);
    if (l != NULL && len > 14 && memcmp(l, "SELECT setval(", 14) == 0) {
        m = memchr(l, ',', len);
        if (m == NULL || sscanf(m, ", %llu);", &b->seq) != 1) {
            snprintf(why, why_size, "%s: malformed setval line", path);
            return RHEMA_ECORRUPT;
        }
        l = next_line(&p, end, &len);
    }
    if (l == NULL || !line_is(l, len, "COMMIT;") || p != end || end[-1] != '\n') {
        snprintf(why, why_size, "%s: does not end with COMMIT; (truncated or edited)", path);
        return RHEMA_ECORRUPT;
    }
    return 0;
}

/* Run sql (no result rows wanted).  0 or a code with c->err set. */
static int restore_exec(rhema_storage_conn *c, const char *sql)
{
    PGresult *r = PQexec(c->pg, sql);
    int rc = 0;
    if (r == NULL ||
        (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK))
        rc = run_fail(c, "restore", r, 0, 0);
    PQclear(r);
    return rc;
}

/* COPY data into a table: sql is "COPY ... FROM STDIN". */
static int restore_copy(rhema_storage_conn *c, const char *sql, const char *data, size_t len)
{
    PGresult *r = PQexec(c->pg, sql);
    int rc = 0;
    if (r == NULL || PQresultStatus(r) != PGRES_COPY_IN) {
        rc = run_fail(c, "restore", r, 0, 0);
        PQclear(r);
        return rc;
    }
    PQclear(r);
    while (len > 0 && rc == 0) {
        int chunk = len > (1u << 20) ? 1 << 20 : (int)len;
        if (PQputCopyData(c->pg, data, chunk) != 1) {
            conn_error(c, "restore: COPY: %s", PQerrorMessage(c->pg));
            rc = RHEMA_EUNAVAIL;
        }
        data += chunk;
        len -= (size_t)chunk;
    }
    if (PQputCopyEnd(c->pg, rc == 0 ? NULL : "restore failed") != 1 && rc == 0) {
        conn_error(c, "restore: COPY: %s", PQerrorMessage(c->pg));
        rc = RHEMA_EUNAVAIL;
    }
    r = PQgetResult(c->pg);
    if (rc == 0 && (r == NULL || PQresultStatus(r) != PGRES_COMMAND_OK))
        rc = run_fail(c, "restore: COPY", r, 0, 0);
    PQclear(r);
    while ((r = PQgetResult(c->pg)) != NULL)
        PQclear(r);
    return rc;
}

/*
 * Restore a backup of pg_backup() into the configured schema, in one
 * transaction: the tables are locked (ACCESS EXCLUSIVE: other nodes wait),
 * kv is truncated and loaded with COPY, leases are merged through a
 * temporary table so that no epoch goes back, and kv_version is set to the
 * largest of the backup's, the live sequence and every version.  The
 * script's own SQL is not run as it is: its CREATE statements and schema
 * name are those of the source, and running it would reset epochs.
 */
static int pg_restore(rhema_storage_instance *in, const char *path, char **err)
{
    const struct rhema_host *h = in->host;
    const char *q = in->qschema;
    struct pg_backup_file b;
    rhema_storage_conn *c = NULL;
    char why[512], sql[1024];
    int rc;

    if (path == NULL || path[0] == '\0')
        return h->set_error(err, RHEMA_EINVAL, "postgres: restore: empty path");
    rc = parse_backup(path, &b, why, sizeof why);
    if (rc != 0) {
        free(b.buf);
        return h->set_error(err, rc, "postgres: restore: %s", why);
    }
    if ((rc = pg_connect_conn(in, &c, err)) != 0)
        goto out_nomsg;
    if ((rc = conn_ensure(c)) != 0)
        goto out;
    snprintf(sql, sizeof sql,
             "BEGIN; SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO'; "
             "LOCK TABLE %s.kv, %s.leases IN ACCESS EXCLUSIVE MODE; "
             "CREATE TEMP TABLE rhema_restore_leases (name bytea, holder bytea, epoch bigint, "
             "expires_at timestamptz) ON COMMIT DROP; TRUNCATE %s.kv",
             q, q, q);
    if ((rc = restore_exec(c, sql)) != 0)
        goto out;
    snprintf(sql, sizeof sql, "COPY %s.kv (ns, key, value, version, expires_at) FROM STDIN", q);
    if ((rc = restore_copy(c, sql, b.kv, b.kv_len)) != 0)
        goto out;
    if ((rc = restore_copy(c, "COPY rhema_restore_leases (name, holder, epoch, expires_at) "
                              "FROM STDIN", b.leases, b.leases_len)) != 0)
        goto out;
    snprintf(sql, sizeof sql,
             "UPDATE %s.leases SET holder = ''::bytea, expires_at = NULL "
             "WHERE name NOT IN (SELECT name FROM rhema_restore_leases); "
             "INSERT INTO %s.leases AS l (name, holder, epoch, expires_at) "
             "SELECT name, holder, epoch, expires_at FROM rhema_restore_leases "
             "ON CONFLICT (name) DO UPDATE SET "
             "holder = CASE WHEN l.epoch > EXCLUDED.epoch THEN ''::bytea ELSE EXCLUDED.holder END, "
             "expires_at = CASE WHEN l.epoch > EXCLUDED.epoch THEN NULL ELSE EXCLUDED.expires_at "
             "END, epoch = GREATEST(l.epoch, EXCLUDED.epoch)",
             q, q);
    if ((rc = restore_exec(c, sql)) != 0)
        goto out;
    snprintf(sql, sizeof sql,
             "SELECT setval('%s.kv_version', g) FROM (SELECT GREATEST(%llu::int8, "
             "(SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM %s.kv_version), "
             "(SELECT COALESCE(max(version), 0) FROM %s.kv)) AS g) x WHERE g > 0",
             q, b.seq, q, q);
    if ((rc = restore_exec(c, sql)) != 0)
        goto out;
    if ((rc = restore_exec(c, "COMMIT")) != 0)
        goto out;
    if (h->log != NULL)
        h->log(RHEMA_LOG_NOTICE, PLUGIN_NAME, "restored schema %s from %s (%zu entries, %zu leases)",
               q, path, b.kv_rows, b.leases_rows);
out:
    if (rc != 0) {
        tx_rollback(c);
        rc = h->set_error(err, rc, "postgres: restore: %s", c->err);
    }
out_nomsg:
    pg_disconnect(c);
    free(b.buf);
    return rc;
}

/*
 * The vtable's batch(), group() and get_many() take arrays of the caller's
 * stride (storage.h, "Growing the structs"); the functions above work on
 * arrays of this plugin's layout, and ../common adapts one to the other.
 */

static int pg_batch_strided(rhema_storage_conn *c, struct rhema_storage_write *w, size_t n)
{
    const char *why = NULL;
    int rc = rhema_storage_call_batch(pg_batch, c, w, n, &why);
    if (why != NULL)
        conn_error(c, "%s", why);
    return rc;
}

static int pg_group_strided(rhema_storage_conn *c, struct rhema_storage_batch *g, size_t n)
{
    const char *why = NULL;
    int rc = rhema_storage_call_group(pg_group, c, g, n, &why);
    if (why != NULL)
        conn_error(c, "%s", why);
    return rc;
}

#ifdef LIBPQ_HAS_PIPELINING /* get_many() is not offered without it */
static int pg_get_many_strided(rhema_storage_conn *c, const char *const *ns,
                               const char *const *keys, size_t n, struct rhema_storage_value *out,
                               int *rcs)
{
    const char *why = NULL;
    int rc = rhema_storage_call_get_many(pg_get_many, c, ns, keys, n, out, rcs, &why);
    if (why != NULL)
        conn_error(c, "%s", why);
    return rc;
}
#endif

/*
 * ---- watch() ----
 *
 * A thread of its own with its own PGconn (the same conninfo, hence the
 * same TLS settings, as every connection) that LISTENs on the schema's
 * channel and polls its socket and a wake-up pipe: a notification, or any
 * number of them read at once, is one notify().  A lost connection is
 * reopened at once and then after 50 ms, doubling to 2 s between failed
 * attempts; once it is back notify() is called, since notifications sent
 * meanwhile are lost.  unwatch() writes to the pipe and joins the thread.
 */
#define WATCH_BACKOFF_MIN_MS 50
#define WATCH_BACKOFF_MAX_MS 2000

struct pg_watch {
    rhema_storage_instance *inst;
    pthread_t thread;
    int wake[2]; /* unwatch() writes to wake[1] */
    PGconn *pg;  /* NULL while disconnected */
    struct notice_sink sink;
    void (*notify)(void *arg);
    void *arg;
    char down[PG_ERRMSG_MAX]; /* why the last attempt failed */
};

/* Connect and LISTEN.  0, or -1 with w->down set (and no connection). */
static int watch_listen(struct pg_watch *w)
{
    rhema_storage_instance *in = w->inst;
    char line[PG_ERRMSG_MAX], *ident, *sql;
    int timed_out, ok = 0;
    PGresult *r = NULL;

    w->pg = pg_connect(in, &w->sink, &timed_out, w->wake[0]);
    if (w->pg == NULL) {
        snprintf(w->down, sizeof w->down, "out of memory");
        return -1;
    }
    if (timed_out || PQstatus(w->pg) != CONNECTION_OK) {
        if (timed_out)
            snprintf(w->down, sizeof w->down, "connect: %s",
                     timed_out == 2 ? "stopped" : "timed out");
        else
            snprintf(w->down, sizeof w->down, "connect: %s",
                     one_line(PQerrorMessage(w->pg), line, sizeof line));
        PQfinish(w->pg);
        w->pg = NULL;
        return -1;
    }
    ident = PQescapeIdentifier(w->pg, in->channel, strlen(in->channel));
    sql = ident != NULL ? malloc(strlen(ident) + 8) : NULL;
    if (sql != NULL) {
        sprintf(sql, "LISTEN %s", ident);
        r = PQexec(w->pg, sql);
        ok = r != NULL && PQresultStatus(r) == PGRES_COMMAND_OK;
    }
    if (!ok)
        snprintf(w->down, sizeof w->down, "LISTEN: %s",
                 sql == NULL ? "out of memory"
                             : one_line(r != NULL ? PQresultErrorMessage(r) : PQerrorMessage(w->pg),
                                        line, sizeof line));
    PQclear(r);
    free(sql);
    PQfreemem(ident);
    if (!ok) {
        PQfinish(w->pg);
        w->pg = NULL;
        return -1;
    }
    return 0;
}

/* Wait ms for the wake-up pipe: 1 when woken (stop), else 0. */
static int watch_sleep(struct pg_watch *w, int ms)
{
    struct pollfd p = {.fd = w->wake[0], .events = POLLIN};
    int r;
    do
        r = poll(&p, 1, ms);
    while (r < 0 && errno == EINTR);
    return r > 0;
}

static void *watch_main(void *arg)
{
    struct pg_watch *w = arg;
    const struct rhema_host *h = w->inst->host;
    int backoff = 0; /* the first attempt after a loss goes at once */

    for (;;) {
        struct pollfd p[2];
        int r, got = 0;
        PGnotify *nt;
        if (w->pg == NULL) {
            if (backoff > 0 && watch_sleep(w, backoff))
                break;
            if (watch_listen(w) != 0) {
                if (watch_sleep(w, 0))
                    break;
                backoff = backoff == 0                         ? WATCH_BACKOFF_MIN_MS
                          : backoff * 2 > WATCH_BACKOFF_MAX_MS ? WATCH_BACKOFF_MAX_MS
                                                               : backoff * 2;
                continue;
            }
            backoff = 0;
            if (h->log != NULL)
                h->log(RHEMA_LOG_NOTICE, PLUGIN_NAME, "watch: listening again on %s",
                       w->inst->channel);
            w->notify(w->arg); /* what was written meanwhile was not notified */
            continue;
        }
        p[0] = (struct pollfd){.fd = PQsocket(w->pg), .events = POLLIN};
        p[1] = (struct pollfd){.fd = w->wake[0], .events = POLLIN};
        r = poll(p, 2, -1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 || p[1].revents != 0)
            break;
        if (p[0].revents == 0)
            continue;
        if (PQconsumeInput(w->pg))
            while ((nt = PQnotifies(w->pg)) != NULL) {
                got = 1;
                PQfreemem(nt);
            }
        if (got)
            w->notify(w->arg);
        if (PQstatus(w->pg) != CONNECTION_OK || w->sink.fatal) {
            char line[PG_ERRMSG_MAX];
            if (h->log != NULL)
                h->log(RHEMA_LOG_WARN, PLUGIN_NAME, "watch: connection lost: %s",
                       w->sink.fatal ? "the server ended the session"
                                     : one_line(PQerrorMessage(w->pg), line, sizeof line));
            PQfinish(w->pg);
            w->pg = NULL;
        }
    }
    if (w->pg != NULL)
        PQfinish(w->pg);
    w->pg = NULL;
    return NULL;
}

static void watch_free(struct pg_watch *w)
{
    if (w->wake[0] >= 0)
        close(w->wake[0]);
    if (w->wake[1] >= 0)
        close(w->wake[1]);
    free(w);
}

/*
 * Start listening before returning, so that a batch committed after
 * watch() returns is notified; a server that cannot be reached now is
 * retried by the thread (and notify() called once it answers).
 */
static int pg_watch(rhema_storage_instance *in, void (*notify)(void *arg), void *arg, char **err)
{
    const struct rhema_host *h = in->host;
    struct pg_watch *w;
    int rc;

    if (notify == NULL)
        return h->set_error(err, RHEMA_EINVAL, "postgres: watch() without a notify function");
    if (in->watch != NULL)
        return h->set_error(err, RHEMA_EINVAL, "postgres: watch() called twice without unwatch()");
    w = calloc(1, sizeof *w);
    if (w == NULL)
        return h->set_error(err, RHEMA_ENOMEM, "postgres: out of memory");
    w->inst = in;
    w->notify = notify;
    w->arg = arg;
    w->wake[0] = w->wake[1] = -1;
    if (pipe(w->wake) != 0) {
        rc = h->set_error(err, RHEMA_EIO, "postgres: watch: pipe: %s", strerror(errno));
        watch_free(w);
        return rc;
    }
    (void)fcntl(w->wake[0], F_SETFD, FD_CLOEXEC);
    (void)fcntl(w->wake[1], F_SETFD, FD_CLOEXEC);
    if (watch_listen(w) != 0 && h->log != NULL)
        h->log(RHEMA_LOG_WARN, PLUGIN_NAME, "watch: %s; will retry", w->down);
    rc = pthread_create(&w->thread, NULL, watch_main, w);
    if (rc != 0) {
        if (w->pg != NULL)
            PQfinish(w->pg);
        rc = h->set_error(err, RHEMA_ENOMEM, "postgres: watch: cannot start a thread: %s",
                          strerror(rc));
        watch_free(w);
        return rc;
    }
    in->watch = w;
    return 0;
}

static void pg_unwatch(rhema_storage_instance *in)
{
    struct pg_watch *w = in->watch;
    ssize_t r;
    if (w == NULL)
        return;
    do
        r = write(w->wake[1], "x", 1);
    while (r < 0 && errno == EINTR);
    pthread_join(w->thread, NULL);
    watch_free(w);
    in->watch = NULL;
}

static const struct rhema_storage_plugin postgres_plugin = {
    .base = RHEMA_STORAGE_PLUGIN_HEADER(PLUGIN_NAME, "1.0.0",
                                        "PostgreSQL through libpq (shared, durable)"),
    .features =
        RHEMA_STORAGE_SHARED | RHEMA_STORAGE_DURABLE | RHEMA_STORAGE_TTL | RHEMA_STORAGE_LEASES |
        RHEMA_STORAGE_SEQUENCED,
    .open = pg_open,
    .close = pg_close,
    .connect = pg_connect_conn,
    .disconnect = pg_disconnect,
    .get = pg_get,
    .put = pg_put,
    .del = pg_del,
    .batch = pg_batch_strided,
    .scan = pg_scan,
    .lease = pg_lease,
    .health = pg_health,
    .stats = pg_stats,
    .errmsg = pg_errmsg,
    .backup = pg_backup,
    .group = pg_group_strided,
    .restore = pg_restore,
#ifdef LIBPQ_HAS_PIPELINING
    .get_many = pg_get_many_strided,
#endif
    .rate = pg_rate,
    .watch = pg_watch,
    .unwatch = pg_unwatch,
    .check = pg_check,
};

int rhema_plugin_init(const struct rhema_host *host, const struct rhema_plugin **out)
{
    (void)host;
    *out = &postgres_plugin.base;
    return 0;
}
