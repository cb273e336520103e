/*
 * rhema storage plugins: an ordered key-value store of namespaces, with
 * versions, TTLs and leases.  The core builds every store on top of this
 * (sessions, consensus logs, agents, the cluster registry); a shared backend
 * also carries cluster coordination through leases.
 *
 * Data model
 *   - A namespace (ns) is a short string, 1..RHEMA_STORAGE_NS_MAX bytes of
 *     [A-Za-z0-9_.:-]; a key is 1..RHEMA_STORAGE_KEY_MAX bytes, any byte but
 *     NUL.  Keys order by unsigned byte comparison (memcmp), shorter first on
 *     a common prefix -- strcmp order.
 *   - A value is 0..n bytes; its version is a uint64 > 0.  A put of a key
 *     that exists returns a version greater than the one it replaced, and
 *     the versions of a key never repeat, not even across a delete and a
 *     new put (so a client holding an old version can never overwrite a
 *     newer incarnation by compare-and-set).  A global counter does it.
 *   - ttl_ms > 0 makes an entry expire; an expired entry is invisible to
 *     every call (get, scan, stats, conflicts) even before it is purged.
 *   - Leases live apart from keys: `name` is held by at most one holder at a
 *     time, and every new holder gets an epoch larger than any earlier holder
 *     of that name (the fencing token), even across release and expiry and,
 *     for durable backends, across restarts.
 *
 * Threads: open()/close() run once per instance on the main thread.  Each
 * worker thread calls connect() once and then uses only its own connection;
 * every other method takes a connection and is called from that thread
 * only.  Instances must therefore make shared state thread safe.
 */
#ifndef RHEMA_STORAGE_H
#define RHEMA_STORAGE_H

#include <rhema/plugin.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * The minor version of the storage vtable and of the structs below: minor 0
 * ends at restore(), minor 1 appended get_many(), minor 2 rate(), minor 3
 * sequenced writes (struct rhema_storage_write.flags) and watch()/unwatch(),
 * minor 4 check().
 * A storage plugin sets abi_minor to it (RHEMA_STORAGE_PLUGIN_HEADER does).
 */
#define RHEMA_STORAGE_ABI_MINOR 4

#define RHEMA_STORAGE_NS_MAX 64
#define RHEMA_STORAGE_KEY_MAX 1024
#define RHEMA_LEASE_HOLDER_MAX 128
#define RHEMA_STORAGE_GET_MANY_MAX 512 /* keys in one get_many() call at most */
#define RHEMA_RATE_WINDOWS_MAX 4         /* windows in one rate() call at most */
#define RHEMA_RATE_KEY_MAX 256           /* bytes of a rate() key at most */

/* features flags */
#define RHEMA_STORAGE_SHARED (1u << 0)  /* other hosts see the same data */
#define RHEMA_STORAGE_DURABLE (1u << 1) /* acknowledged writes survive a crash */
#define RHEMA_STORAGE_TTL (1u << 2)     /* honours ttl_ms */
#define RHEMA_STORAGE_LEASES (1u << 3)  /* implements lease() */
#define RHEMA_STORAGE_SEQUENCED (1u << 4) /* implements RHEMA_WRITE_SEQUENCED (minor 3) */

/* expected_version values with a special meaning */
#define RHEMA_VERSION_ANY 0ull           /* no check */
#define RHEMA_VERSION_ABSENT UINT64_MAX  /* the key must not exist */

/* write operations */
#define RHEMA_WRITE_PUT 0u
#define RHEMA_WRITE_DEL 1u

/*
 * write flags (struct rhema_storage_write.flags, minor 3)
 *
 * RHEMA_WRITE_SEQUENCED: a record of a change feed (the host's events, an
 * agent's inbox), stored under a key the plugin builds from its version.
 *   - It is a PUT (op RHEMA_WRITE_PUT, expected_version RHEMA_VERSION_ANY
 *     or RHEMA_VERSION_ABSENT, which mean the same here: the key is new).
 *     w->key is a prefix of 0..RHEMA_STORAGE_KEY_MAX - 20 bytes (never
 *     NULL); the entry's key is that prefix followed by the 20 decimal
 *     digits, zero-padded, of its version ("%020" PRIu64), so a scan of the
 *     prefix visits the records in version order.
 *   - Its version is the version of the write just before it in the same
 *     batch when that write is a PUT that is not itself sequenced -- a
 *     change and the record of that change share one number, as a key's
 *     mod_revision is the revision of its change in etcd -- and a fresh
 *     version otherwise (first write of the batch, after a delete, after
 *     another sequenced write).  new_version is set to it.
 *   - Order: sequenced entries become visible in version order, to every
 *     connection of every host: once any reader has seen a sequenced entry
 *     of version v, no sequenced entry with a version below v appears
 *     later.  A backend whose commits can land out of version order (a
 *     sequence drawn before a concurrent transaction commits) serialises
 *     the batches that hold a sequenced write from before their first
 *     version is drawn until they commit (PostgreSQL: a transaction-scoped
 *     advisory lock); one that applies batches one at a time under a lock
 *     (memory, file, SQLite, a Redis script) has nothing to do.
 * A plugin promises sequenced writes with the features flag
 * RHEMA_STORAGE_SEQUENCED, not with its minor alone: RHEMA_STORAGE_PLUGIN_HEADER
 * stamps whatever minor the header it was compiled against has, so a plugin
 * of an older minor rebuilt against this header says minor 3 without
 * knowing the flag.  The host never sends the flag to a plugin without
 * RHEMA_STORAGE_SEQUENCED, and refuses the features that need it (the change
 * feed, coordination.change_feed) on such a plugin.
 */
#define RHEMA_WRITE_SEQUENCED (1u << 0)
#define RHEMA_SEQ_DIGITS 20 /* digits a sequenced write appends to its prefix */

/* lease operations */
#define RHEMA_LEASE_ACQUIRE 1
#define RHEMA_LEASE_RENEW 2
#define RHEMA_LEASE_RELEASE 3
#define RHEMA_LEASE_QUERY 4

typedef struct rhema_storage_instance rhema_storage_instance; /* plugin-defined */
typedef struct rhema_storage_conn rhema_storage_conn;         /* plugin-defined */

/*
 * Growing the structs: struct rhema_storage_write, struct
 * rhema_storage_batch and struct rhema_storage_value begin with their size
 * as the caller built them (the host, or a test), which the caller sets in
 * every element: sizeof the struct of the storage minor it was built
 * against.  A later minor appends members; a plugin reads or writes a
 * member only when size covers it, and steps through an array handed to
 * batch(), group() or get_many() with rhema_storage_write_at(),
 * rhema_storage_batch_at() and rhema_storage_value_at() (the stride is the
 * first element's size, the same for every element of the array), never
 * w[i].  A size below the RHEMA_STORAGE_*_SIZE_0 of the struct is
 * RHEMA_EINVAL.
 */

/* One write: a put or a delete, with an optional version precondition. */
struct rhema_storage_write {
    uint32_t size;             /* sizeof the struct as the caller built it: an array's stride */
    uint32_t op;               /* RHEMA_WRITE_PUT or RHEMA_WRITE_DEL */
    const char *ns;
    const char *key;
    const void *value;         /* PUT only */
    size_t value_len;
    uint64_t expected_version; /* RHEMA_VERSION_ANY, _ABSENT, or a version */
    uint64_t ttl_ms;           /* PUT only; 0: never expires */
    uint64_t new_version;      /* out, PUT: the version now stored */
    /* --- minor 0 ends here --- */
    uint32_t flags;            /* RHEMA_WRITE_* flags (RHEMA_WRITE_SEQUENCED); 0: none */
    /* --- minor 3 ends here --- */
};

/* One member of a group commit (see group() below). */
struct rhema_storage_batch {
    uint32_t size; /* sizeof the struct as the caller built it: an array's stride */
    int result;    /* out: 0 or the RHEMA_E* code batch() would have returned */
    struct rhema_storage_write *writes; /* an array of its own stride */
    size_t n;
    /* --- minor 0 ends here --- */
};

/*
 * A value read by get().  data points into memory owned by the connection
 * and stays valid until the next call on that connection; copy what you keep.
 */
struct rhema_storage_value {
    uint32_t size; /* set by the caller: sizeof the struct as it built it; an array's stride */
    const void *data;
    size_t len;
    uint64_t version;
    /* --- minor 0 ends here --- */
};

/* The smallest sizes a caller passes: every member of minor 0. */
#define RHEMA_STORAGE_WRITE_SIZE_0                                                                 \
    ((uint32_t)(offsetof(struct rhema_storage_write, new_version) + sizeof(uint64_t)))
#define RHEMA_STORAGE_WRITE_SIZE_3                                                                 \
    ((uint32_t)(offsetof(struct rhema_storage_write, flags) + sizeof(uint32_t)))
#define RHEMA_STORAGE_BATCH_SIZE_0                                                                 \
    ((uint32_t)(offsetof(struct rhema_storage_batch, n) + sizeof(size_t)))
#define RHEMA_STORAGE_VALUE_SIZE_0                                                                 \
    ((uint32_t)(offsetof(struct rhema_storage_value, version) + sizeof(uint64_t)))

/* Element i of an array of writes (batch(), a group member's writes). */
static inline struct rhema_storage_write *rhema_storage_write_at(struct rhema_storage_write *w,
                                                                 size_t i)
{
    return (struct rhema_storage_write *)(void *)((char *)w + i * w->size);
}

/* Element i of the array of batches handed to group(). */
static inline struct rhema_storage_batch *rhema_storage_batch_at(struct rhema_storage_batch *g,
                                                                 size_t i)
{
    return (struct rhema_storage_batch *)(void *)((char *)g + i * g->size);
}

/* Element i of the array of values handed to get_many(). */
static inline struct rhema_storage_value *rhema_storage_value_at(struct rhema_storage_value *v,
                                                                 size_t i)
{
    return (struct rhema_storage_value *)(void *)((char *)v + i * v->size);
}

/*
 * Rate limiting (rate(), minor 2): the generic cell rate algorithm (GCRA),
 * as redis-cell and throttled keep it.  A limited party (key) has, per
 * window i, a theoretical arrival time tat[i] (unix microseconds; a key or
 * a window never seen counts as tat = now).  A request at `now` conforms to
 * window i when max(tat[i], now) - now <= tolerance_us[i].  It is allowed
 * when it conforms to every window, and then, in one atomic step, each
 * tat[i] becomes max(tat[i], now) + interval_us[i]; when it does not,
 * nothing changes.  With tolerance = b x interval, b + 1 requests pass back
 * to back and then one per interval.
 */
struct rhema_rate_window {
    uint64_t interval_us;  /* the emission interval: window length / quota; > 0 */
    uint64_t tolerance_us; /* how far ahead of now a tat may run and still conform */
};

struct rhema_rate_query {
    uint32_t size; /* sizeof the struct as the caller built it */
    const char *key; /* the limited party, 1..RHEMA_RATE_KEY_MAX bytes, any byte but NUL;
                      * the same key must always come with the same n */
    const struct rhema_rate_window *windows;
    size_t n;        /* 1..RHEMA_RATE_WINDOWS_MAX */
    int64_t now_us;  /* in: the host's clock (unix us).  A backend other hosts share may
                      * use its own clock instead, and writes the now it used here */
    int allowed;     /* out: 1 allowed (and counted), 0 refused (nothing changed) */
    int64_t tat_us[RHEMA_RATE_WINDOWS_MAX]; /* out: each window's tat after the call
                                             * (a window at rest: now_us) */
    /* --- minor 2 ends here --- */
};

#define RHEMA_RATE_QUERY_SIZE_2                                                                    \
    ((uint32_t)(offsetof(struct rhema_rate_query, tat_us) + sizeof(int64_t[RHEMA_RATE_WINDOWS_MAX])))

/* A lease's state, filled by lease() on success and on ECONFLICT/ENOTFOUND. */
struct rhema_lease_info {
    char holder[RHEMA_LEASE_HOLDER_MAX + 1]; /* "" when nobody holds it */
    uint64_t epoch;            /* the current (or last) holder's epoch; 0: never held */
    uint64_t ttl_remaining_ms; /* 0 when nobody holds it */
};

struct rhema_storage_stats {
    uint64_t entries; /* live entries */
    uint64_t bytes;   /* sum of key and value sizes of live entries */
};

/*
 * Called by scan() for each entry, in key order.  key, value stay valid for
 * the duration of the call only.  Return 0 to go on, > 0 to stop (scan then
 * returns 0), < 0 to abort (scan then returns that code).  The callback must
 * not call methods on the connection that is scanning (other connections
 * are fine): collect keys and act on them after scan() returns.
 */
typedef int (*rhema_storage_scan_cb)(void *ctx, const char *key, const void *value,
                                     size_t value_len, uint64_t version);

struct rhema_storage_plugin {
    struct rhema_plugin base; /* kind RHEMA_KIND_STORAGE */
    uint32_t features;        /* RHEMA_STORAGE_* */

    /*
     * Create an instance from the plugin's configuration group (cfg may be
     * NULL).  May do I/O (create a directory, a schema).  On failure returns
     * a negative code, leaves *out untouched and sets *err.
     */
    int (*open)(const struct rhema_host *host, const struct rhema_cfg *cfg,
                rhema_storage_instance **out, char **err);
    /* Destroy an instance; every connection is already disconnected. */
    void (*close)(rhema_storage_instance *inst);

    /* One connection per worker thread. */
    int (*connect)(rhema_storage_instance *inst, rhema_storage_conn **out, char **err);
    void (*disconnect)(rhema_storage_conn *conn);

    /*
     * Read one entry: 0, RHEMA_ENOTFOUND, or an error.  The caller sets
     * out->size; the plugin fills data, len and version (and a member of a
     * later minor only when out->size covers it).
     */
    int (*get)(rhema_storage_conn *conn, const char *ns, const char *key,
               struct rhema_storage_value *out);
    /*
     * Write one entry (w->op is RHEMA_WRITE_PUT).  RHEMA_ECONFLICT when
     * expected_version does not match (ABSENT and the key exists, or a
     * version and the key is absent or has another one).  Sets w->new_version.
     */
    int (*put)(rhema_storage_conn *conn, struct rhema_storage_write *w);
    /* Delete one entry: 0, RHEMA_ENOTFOUND, RHEMA_ECONFLICT, or an error. */
    int (*del)(rhema_storage_conn *conn, const char *ns, const char *key,
               uint64_t expected_version);
    /*
     * Apply n writes (puts and deletes) all or nothing.  Any precondition
     * failure (a version mismatch, or a delete of an absent key) fails the
     * whole batch with RHEMA_ECONFLICT / RHEMA_ENOTFOUND and changes
     * nothing.  Later writes see earlier ones of the same batch.  w is an
     * array of the caller's stride: element i is rhema_storage_write_at(w, i).
     */
    int (*batch)(rhema_storage_conn *conn, struct rhema_storage_write *w, size_t n);
    /*
     * Visit the live entries of ns with from_key <= key < to_key in key
     * order (NULL bounds are open), at most `limit` of them (0: no limit).
     */
    int (*scan)(rhema_storage_conn *conn, const char *ns, const char *from_key,
                const char *to_key, size_t limit, rhema_storage_scan_cb cb, void *ctx);
    /*
     * Leases.  ACQUIRE: granted when nobody holds `name` (new epoch) or
     * `holder` already does (a renew, same epoch); otherwise ECONFLICT.
     * RENEW: extends the lease when `holder` holds it, else ECONFLICT.
     * RELEASE: frees it when `holder` holds it, else ECONFLICT.
     * QUERY: fills out; ENOTFOUND when nobody holds it.
     * out (may be NULL) receives the state after the call, or the state
     * that caused ECONFLICT.  Time is the backend's clock where it has one.
     * Arguments: name is 1..RHEMA_STORAGE_KEY_MAX bytes like a key; holder
     * is 1..RHEMA_LEASE_HOLDER_MAX bytes (ignored, may be NULL, for QUERY);
     * ttl_ms must be > 0 for ACQUIRE and RENEW.  Otherwise RHEMA_EINVAL.
     */
    int (*lease)(rhema_storage_conn *conn, const char *name, const char *holder,
                 uint64_t ttl_ms, int op, struct rhema_lease_info *out);
    /* 0 when the backend answers, RHEMA_EUNAVAIL (and *err) when not. */
    int (*health)(rhema_storage_conn *conn, char **err);
    /* Live entries and bytes, of one namespace or (ns NULL) of all. */
    int (*stats)(rhema_storage_conn *conn, const char *ns, struct rhema_storage_stats *out);
    /* The connection's last error message, or "" (never NULL). */
    const char *(*errmsg)(rhema_storage_conn *conn);
    /*
     * Optional (NULL: RHEMA_ENOTSUP).  Write a consistent snapshot of the
     * whole store to `path` (a file, or a directory for the file backend).
     */
    int (*backup)(rhema_storage_conn *conn, const char *path, char **err);
    /*
     * Optional (NULL: the host calls batch() once per group member).  Group
     * commit: apply each of the n batches all or nothing and independently
     * of the others -- g[i].result is what batch() would have returned for
     * it, and a failed member changes nothing -- but make them durable
     * together, with one commit.  Returns 0 when the group was committed
     * (whatever the members' results), or an error (RHEMA_EUNAVAIL,
     * RHEMA_EIO ...) when nothing at all was applied; the members' results
     * are then meaningless.  This is what lets concurrent writers share one
     * transaction / fsync / pipeline round trip.  g and each member's
     * writes are arrays of the caller's stride (rhema_storage_batch_at(),
     * rhema_storage_write_at()).
     */
    int (*group)(rhema_storage_conn *conn, struct rhema_storage_batch *g, size_t n);
    /*
     * Optional (NULL: RHEMA_ENOTSUP).  Replace the whole content of the
     * store -- entries, versions, leases -- with the snapshot that backup()
     * wrote to `path`.
     *
     * Offline: called with no connection of this instance open (rhemactl
     * with the daemon stopped; connect() again afterwards), from one thread.
     * Other processes must not use the store meanwhile; a plugin locks what
     * it can (the sqlite write lock, the file backend's LOCK, a PostgreSQL
     * table lock, one Redis script) but cannot make another process's open
     * connection see the new content consistently.
     *
     * Verify first: the backup is read and checked completely (format,
     * counts, checksums where the format has them) before anything changes;
     * a truncated or damaged backup is RHEMA_ECORRUPT, a backup of another
     * format or schema version RHEMA_ENOTSUP / RHEMA_ECORRUPT.
     *
     * All or nothing: on any failure the store is unchanged.  On success:
     *   - every entry of the snapshot is back with its value and its version,
     *     and nothing else is there (an entry with a TTL gets the time it had
     *     left, or its absolute deadline where the backup kept one);
     *   - the version counter is max(snapshot's, current): a put after the
     *     restore gets a version above every version ever handed out, so a
     *     client holding a version from before the restore cannot confuse
     *     two incarnations of a key;
     *   - fencing tokens never go back: each lease's epoch becomes
     *     max(snapshot's, current).  When the current epoch is the larger,
     *     the lease is restored free (no holder) -- its snapshot holder's
     *     token is stale -- and the next holder gets an epoch above both.
     *     A lease the snapshot lacks is kept free with its current epoch.
     * Returns 0, or a negative code and *err (via host->set_error()).
     */
    int (*restore)(rhema_storage_instance *inst, const char *path, char **err);
    /* --- minor 0 ends here --- */

    /*
     * Optional (NULL: the host calls get() once per key).  Read n entries
     * at once, entry i being key keys[i] of namespace ns[i] -- one round
     * trip to a server instead of n.  For each i,
     * rcs[i] is 0 with out[i] filled as get() fills it, or RHEMA_ENOTFOUND;
     * an entry may appear more than once.  Returns 0 when every key was looked
     * up, or an error (RHEMA_EUNAVAIL, RHEMA_EINVAL for a bad ns or key,
     * ...), after which rcs and out mean nothing.  Every out[i].data stays
     * valid until the next call on the connection.  The host asks for at
     * most RHEMA_STORAGE_GET_MANY_MAX keys in one call.  out is an array of
     * the caller's stride: entry i is rhema_storage_value_at(out, i).
     */
    int (*get_many)(rhema_storage_conn *conn, const char *const *ns, const char *const *keys,
                    size_t n, struct rhema_storage_value *out, int *rcs);
    /* --- minor 1 ends here --- */

    /*
     * Optional (NULL: the host keeps the limits in its own memory, one limit
     * per node).  One GCRA step for q->key, as described at struct
     * rhema_rate_query, atomic against every other rate() on the same key
     * from any connection (and any host, for a backend with
     * RHEMA_STORAGE_SHARED): one round trip to a server.  The state is not
     * data: it need not survive a restart, is invisible to get(), scan()
     * and stats(), and a key whose every tat has passed may be forgotten
     * (the plugin should, so idle parties cost nothing).  Returns 0 (with
     * q->allowed and q->tat_us set), RHEMA_EINVAL for a bad key, n or
     * interval, RHEMA_EUNAVAIL when the backend cannot answer.
     */
    int (*rate)(rhema_storage_conn *conn, struct rhema_rate_query *q);
    /* --- minor 2 ends here --- */

    /*
     * Optional (NULL: the host polls with scan() where it must).  Start
     * calling notify(arg), from a thread of the plugin's own, soon after a
     * batch holding a sequenced write (RHEMA_WRITE_SEQUENCED) commits on any
     * connection of this instance or -- for a RHEMA_STORAGE_SHARED backend --
     * of any host: PostgreSQL LISTEN/NOTIFY, Redis pub/sub.  Notifications
     * say only "something may have changed": they may be merged, and may be
     * spurious; the host reads what changed with scan().  When the plugin
     * loses its channel (a server restart) it reconnects by itself and calls
     * notify() once it is back, since writes may have been missed meanwhile.
     * notify() must not block and must not call into the plugin.
     * Called once per instance, on the main thread, after open(); unwatch()
     * (required when watch is set) stops it: when unwatch() returns, notify()
     * is not running and will not be called again.  The host calls unwatch()
     * before close().  Returns 0, or a negative code and *err.
     */
    int (*watch)(rhema_storage_instance *inst, void (*notify)(void *arg), void *arg, char **err);
    void (*unwatch)(rhema_storage_instance *inst);
    /* --- minor 3 ends here --- */

    /*
     * Optional (NULL: `rhemad -t` cannot check the group of a backend that
     * leaves traces, and says so).  Parse and validate the configuration
     * group exactly as open() does -- the same code, reading the same keys
     * through host->cfg_*, so that the host's unknown-key check afterwards
     * sees the same keys read -- with no side effect: no file, directory,
     * connection or thread is created, nothing is written.  Reading a file
     * the settings name (a TLS certificate) is allowed.  cfg may be NULL
     * (every default).  Returns 0, or the code and *err open() would have
     * returned for the same group.  Called by `rhemad -t` instead of open().
     */
    int (*check)(const struct rhema_host *host, const struct rhema_cfg *cfg, char **err);
    /* --- minor 4 ends here --- */
};

/* The header of a storage vtable: .base = RHEMA_STORAGE_PLUGIN_HEADER("mine", "1.0", "..."). */
#define RHEMA_STORAGE_PLUGIN_HEADER(NAME, VERSION, DESC)                                           \
    RHEMA_PLUGIN_HEADER(struct rhema_storage_plugin, RHEMA_KIND_STORAGE, RHEMA_STORAGE_ABI_MINOR,  \
                        NAME, VERSION, DESC)

#ifdef __cplusplus
}
#endif
#endif /* RHEMA_STORAGE_H */
