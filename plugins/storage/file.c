/*
 * file -- the directory storage plugin: one file per entry, one per lease.
 *
 * Features DURABLE | TTL | LEASES.  Not SHARED (other hosts must not use
 * the directory), but several processes of one host may share it: every
 * write transaction and lease change runs under an exclusive flock(2) of
 * LOCK, every read under a shared one -- except a get() the read cache
 * answers (see "the read cache" below), which takes no lock.
 *
 * Configuration (persistence.file):
 *   directory = "files";  created with its parents (mode 0750)
 *   fsync     = true;          false skips every fsync: still safe against a
 *                              process crash, NOT durable against power loss
 *
 * Layout of the directory:
 *   LOCK              the lock file; its first 48 bytes are a header shared
 *                     by the processes using the directory (see struct
 *                     fl_hdr): a generation bumped by every change, the live
 *                     version counter, a copy of the reservation, and the
 *                     "journal pending" flag.  Written with pwrite under the
 *                     exclusive lock, never fsync'd: after a power loss it is
 *                     rebuilt at open from the files below.
 *   COUNTER           "<decimal>\n": the version reservation, durable.  Every
 *                     version ever handed out is <= it; when a transaction
 *                     needs more it is raised by RESERVE_BLOCK (temp file,
 *                     fsync, rename, directory fsync) before the versions are
 *                     used -- so at most once per transaction, and rarely.
 *   JOURNAL           present only while a multi-write transaction is being
 *                     applied (or after a crash during that); format below.
 *   kv/n-<ns>/<name>  one record per key.  <name> is the key with every byte
 *                     outside [A-Za-z0-9_.-] (and a leading '.') written as
 *                     %XX; a name longer than SHORT_NAME_MAX becomes
 *                     "~<fnv1a64 of the key>.<slot>" (slot: the first one
 *                     free in that directory).  The record holds the key
 *                     itself, so names never need decoding.
 *   leases/<name>     one file per lease name, named like keys; a released
 *                     or expired lease keeps its file, so epochs only grow,
 *                     across restarts too.
 *   "+..."            temporary files (the encoding never starts a name with
 *                     '+'); removed at open.
 *
 * Record file (little-endian): "RHFR", u32 key_len, u64 version,
 * u64 expires_at (wall-clock ms, 0: never), u64 value_len, u64 fnv1a64 of
 * the first 32 bytes + key + value, then key and value.  A lease file is
 * "RHFL", u32 name_len, u32 holder_len, u32 0, u64 epoch, u64 expires_at,
 * u64 checksum, name, holder.  JOURNAL is "RHEMAFJ1", u64 counter,
 * u64 n_writes, n times (u8 1 put / 2 delete, 3 bytes 0, u32 ns_len,
 * u32 name_len, u32 key_len, u64 version, u64 expires_at, u64 value_len,
 * ns, file name, key, value), then u64 fnv1a64 of all that.
 *
 * Crash safety.  Every file is written as "+name" (write, fsync), renamed
 * over "name", and its directory fsync'd, so a reader or a restart sees the
 * old file or the new one, never a torn one.  A transaction of one write
 * does just that (a delete is unlink + directory fsync).  A transaction of
 * several writes (a batch, a group) first writes +JOURNAL holding every
 * write (with the names chosen and versions assigned), fsyncs it and renames
 * it to JOURNAL: that rename, made durable by the directory fsync, is the
 * commit point.  It then applies the writes (each a temp file + fsync +
 * rename, or an unlink), fsyncs the directories it touched and removes the
 * journal.  Whoever next takes the exclusive lock -- open(), or any
 * operation that finds the pending flag set in LOCK -- replays a complete
 * journal (replay is idempotent: it writes final states) and discards an
 * incomplete one (it was never committed).  The LOCK header's counter is
 * written before anything else of a transaction, so a process that dies
 * half way never lets the next writer reuse a version.
 *
 * Sequenced writes (storage minor 3) are records like any other: the
 * transaction settles a record's version (shared with the put before it,
 * or the next one) and so its key while it prepares its ops, before the
 * journal logs them, so a replay writes the same key.  Write transactions
 * run one at a time under the exclusive lock and draw versions under it,
 * and readers take the shared lock, so records become visible in version
 * order.  watch() is NULL: nothing can wake another process sharing the
 * directory, so the host polls the feed with scan().
 *
 * Memory: a sorted index per namespace (key, file name, version,
 * expires_at, value size) loaded at open; values are read from their files.
 * When another process changed the directory (the generation in LOCK moved)
 * the index is reloaded from disk.
 *
 * Threads: one instance for all workers, one connection per thread.  Each
 * connection opens LOCK itself, so flock serialises the threads of this
 * process like it does other processes; a mutex protects the shared index.
 * Lock order: flock, then the mutex.  Readers copy what they need and run
 * scan callbacks with no lock held.
 *
 * Time: TTLs and leases use the host's wall clock (host->realtime_ns(), in
 * ms), the only clock that means the same after a restart and to another
 * process.  Expired entries are invisible at once and purged lazily: every
 * PURGE_EVERY write transactions unlink up to PURGE_VISIT entries' worth.
 *
 * Backup and restore.  backup(path) copies kv/, leases/ and COUNTER into a
 * new directory under the shared lock.  restore(path) first checks such a
 * copy completely (every record's and lease's checksum, names, versions
 * against its COUNTER), then stages the new content as "+restore/" (kv/,
 * leases/ with epochs merged so that none goes back, COUNTER raised to
 * cover every version ever handed out), fsyncs it, and under the exclusive
 * lock renames it to RESTORE -- the commit point.  Finishing swaps
 * RESTORE/kv and RESTORE/leases in for kv/ and leases/ (the old ones are
 * renamed to "+old-kv", "+old-leases" and removed), moves COUNTER, and
 * removes RESTORE.  open() finishes a committed RESTORE a crash
 * interrupted (each step is a rename that can be redone) and removes a
 * "+restore" that was never committed.
 *
 * rate() keeps its GCRA states in memory, in a rhema_rate_table of the
 * instance (../common/rate_table.c), never on disk: the backend is not
 * SHARED, the state is not data (storage.h) and need not survive a
 * restart, and a file write per limited request would cost an fsync.  So
 * two processes sharing a directory each keep their own limits, like two
 * nodes without a shared backend.  At most RATE_MAX_KEYS parties are kept
 * (past that the one that rests first is forgotten).
 *
 * Errors: I/O failures (ENOSPC included) are RHEMA_EIO with the system's
 * message, a malformed file RHEMA_ECORRUPT.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <rhema/storage.h>

#include "../common/rate_table.h"
#include "../common/storage_check.h"
#include "../common/value_cache.h"

#define PLUGIN_NAME "file"
#define FL_ERRMSG_MAX 512

#define HDR_MAGIC "RHEMAFL1"
#define HDR_SIZE 48
#define REC_MAGIC "RHFR"
#define REC_HDR 40
#define LEASE_MAGIC "RHFL"
#define LEASE_HDR 40
#define JOURNAL_MAGIC "RHEMAFJ1"
#define JOURNAL_OP_HDR 40

#define RESERVE_BLOCK 65536u /* versions reserved by one COUNTER write */
#define SHORT_NAME_MAX 200   /* longer encoded names are hashed */
#define NAME_BUF 256
#define MAX_SLOTS 1000       /* hash collisions tolerated per name */
#define PURGE_EVERY 64u      /* write transactions between two purges */
#define PURGE_VISIT 256u     /* index entries a purge visits at most */
#define RATE_MAX_KEYS ((size_t)1 << 20) /* rate() parties kept at most */
#define SCAN_CHUNK_ENTRIES 128u
#define SCAN_CHUNK_BYTES (1u << 20)

struct fl_entry {
    char *key; /* key and file name share one allocation: "key\0fname\0" */
    char *fname;
    size_t key_len;
    uint64_t version;
    uint64_t expires_ms; /* 0: never */
    uint64_t value_len;
};

struct fl_ns {
    char name[RHEMA_STORAGE_NS_MAX + 1];
    int dirfd;               /* kv/n-<name>, or -1 while it does not exist */
    int dirty;               /* needs a directory fsync before the journal goes */
    struct fl_entry **v;     /* sorted by key (strcmp) */
    size_t n, cap;
};

/* The header at the start of LOCK, shared by the processes of one directory. */
struct fl_hdr {
    uint64_t gen;      /* bumped by every change of kv/ */
    uint64_t counter;  /* the last version handed out */
    uint64_t reserved; /* what COUNTER holds (may lag it after a crash: harmless) */
    uint64_t pending;  /* 1 while a journal may need replaying */
};

struct rhema_storage_instance {
    const struct rhema_host *host;
    char *dir;
    int do_fsync;
    int rootfd, kvfd, leasefd;

    pthread_mutex_t mu; /* everything below */
    struct fl_ns **ns;  /* sorted by name */
    size_t n_ns, cap_ns;
    int loaded;         /* the index matches the directory at generation `gen` */
    uint64_t gen;
    uint64_t max_version; /* highest version seen by the last reload */
    unsigned txns;        /* write transactions, for the purge */
    size_t purge_ns, purge_pos;

    struct rhema_rate_table *rate; /* rate(): in memory, its own lock */

    struct fl_cache *cache; /* get()'s values, served without the flock (see below) */
};

struct fl_op {
    struct rhema_storage_write *w;
    struct fl_ns *ns;
    int is_put;
    int is_seq; /* a sequenced write: its key is seq_key, not w->key */
    uint64_t version, expires_ms;
    char fname[NAME_BUF];
    char seq_key[RHEMA_STORAGE_KEY_MAX + 1];
};

/* The key an op writes: w->key, or the key a sequenced write built from its version. */
static const char *op_key(const struct fl_op *op)
{
    return op->is_seq ? op->seq_key : op->w->key;
}

struct scan_item {
    size_t key_off, key_len, value_off, value_len;
    uint64_t version;
    char fname[NAME_BUF];
};

struct rhema_storage_conn {
    rhema_storage_instance *in;
    int lockfd;
    int locked;  /* 0, LOCK_SH or LOCK_EX */
    int mu_held;
    struct fl_hdr hdr; /* as read when the lock was taken */

    unsigned char *buf; /* get(): the record returned */
    size_t buf_cap;
    unsigned char *io;  /* file reads and the journal */
    size_t io_cap;
    struct fl_op *ops;  /* the current write transaction */
    size_t n_ops, cap_ops;
    unsigned char *arena; /* scan(): keys and values of one chunk */
    size_t arena_len, arena_cap;
    struct scan_item *items;
    size_t n_items, cap_items;
    char *cursor;
    size_t cursor_cap;
    char err[FL_ERRMSG_MAX];
};

/* ---- small helpers ---- */

static void conn_error(rhema_storage_conn *c, const char *fmt, ...) RHEMA_PRINTF_LIKE(2, 3);

static void conn_error(rhema_storage_conn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
}

static void log_warn(const rhema_storage_instance *in, const char *fmt, ...)
    RHEMA_PRINTF_LIKE(2, 3);

static void log_warn(const rhema_storage_instance *in, const char *fmt, ...)
{
    char msg[FL_ERRMSG_MAX];
    va_list ap;
    if (in->host->log == NULL)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    in->host->log(RHEMA_LOG_WARN, PLUGIN_NAME, "%s: %s", in->dir, msg);
}

/* An errno as a RHEMA_E* code: ENOMEM stays itself, everything else is EIO. */
static int errno_code(int e)
{
    return e == ENOMEM ? RHEMA_ENOMEM : RHEMA_EIO;
}

/* Record an I/O failure on the connection and return its code. */
static int io_fail(rhema_storage_conn *c, const char *what, const char *name, int e)
{
    conn_error(c, "%s %s: %s", what, name, strerror(e));
    return errno_code(e);
}

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    size_t ncap;
    void *np;
    if (need <= *cap)
        return 0;
    ncap = *cap ? *cap : 64;
    while (ncap < need) {
        if (ncap > SIZE_MAX / 2 / elem)
            return RHEMA_ENOMEM;
        ncap *= 2;
    }
    np = realloc(*p, ncap * elem);
    if (np == NULL)
        return RHEMA_ENOMEM;
    *p = np;
    *cap = ncap;
    return 0;
}

static void put32(unsigned char *p, uint32_t v)
{
    int i;
    for (i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v)
{
    int i;
    for (i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const unsigned char *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

#define FNV_OFFSET 0xcbf29ce484222325ull

static uint64_t fnv1a64(uint64_t h, const void *data, size_t n)
{
    const unsigned char *p = data;
    size_t i;
    for (i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t now_ms(const rhema_storage_instance *in)
{
    return in->host->realtime_ns() / 1000000u;
}

/* now + ttl, saturating; ttl 0 is "never" (0). */
static uint64_t deadline_ms(uint64_t now, uint64_t ttl_ms)
{
    if (ttl_ms == 0)
        return 0;
    if (ttl_ms > UINT64_MAX - now)
        return UINT64_MAX;
    return now + ttl_ms;
}

/* Is a deadline (wall-clock ms, 0: never) still ahead at now? */
static int live_at(uint64_t expires_ms, uint64_t now)
{
    return expires_ms == 0 || expires_ms > now;
}

static int entry_live(const struct fl_entry *e, uint64_t now)
{
    return live_at(e->expires_ms, now);
}

/* write(2) all of p, retrying short writes.  0 or errno. */
static int write_all(int fd, const void *p, size_t n)
{
    const unsigned char *b = p;
    while (n > 0) {
        ssize_t w = write(fd, b, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

/* pread(2) exactly n bytes at off.  0, errno, or EPROTO on a short file. */
static int pread_all(int fd, void *p, size_t n, off_t off)
{
    unsigned char *b = p;
    while (n > 0) {
        ssize_t r = pread(fd, b, n, off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        if (r == 0)
            return EPROTO;
        b += r;
        n -= (size_t)r;
        off += r;
    }
    return 0;
}

/* fsync unless the configuration says not to.  0 or errno. */
static int maybe_fsync(const rhema_storage_instance *in, int fd)
{
    if (!in->do_fsync)
        return 0;
    return fsync(fd) == 0 ? 0 : errno;
}

static int lock_fd(int fd, int op)
{
    while (flock(fd, op) != 0) {
        if (errno != EINTR)
            return errno;
    }
    return 0;
}

/*
 * The file name of a key or lease name into out: 0 when the escaped name
 * is short enough, 1 when the caller must use hashed_name() instead.
 */
static int encode_name(const char *key, size_t len, char out[NAME_BUF])
{
    static const char hex[] = "0123456789ABCDEF";
    size_t i, o = 0;
    for (i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)key[i];
        int plain = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                    (ch >= '0' && ch <= '9') || ch == '_' || ch == '-' || (ch == '.' && i > 0);
        if (o + 3 > SHORT_NAME_MAX)
            return 1;
        if (plain) {
            out[o++] = (char)ch;
        } else {
            out[o++] = '%';
            out[o++] = hex[ch >> 4];
            out[o++] = hex[ch & 15];
        }
    }
    out[o] = '\0';
    return 0;
}

static void hashed_name(const char *key, size_t len, unsigned slot, char out[NAME_BUF])
{
    snprintf(out, NAME_BUF, "~%016llx.%u", (unsigned long long)fnv1a64(FNV_OFFSET, key, len),
             slot);
}

/*
 * Write dir/name atomically from up to three pieces: "+name" is written,
 * fsync'd, and renamed over name.  The caller fsyncs the directory.
 * 0 or errno; on failure name is untouched and the temp file gone.
 */
static int write_file_at(const rhema_storage_instance *in, int dirfd, const char *name,
                         const void *p1, size_t n1, const void *p2, size_t n2, const void *p3,
                         size_t n3, int force_sync)
{
    char tmp[NAME_BUF + 2];
    int fd, e = 0;
    snprintf(tmp, sizeof tmp, "+%s", name);
    fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0)
        return errno;
    e = write_all(fd, p1, n1);
    if (e == 0 && n2 > 0)
        e = write_all(fd, p2, n2);
    if (e == 0 && n3 > 0)
        e = write_all(fd, p3, n3);
    if (e == 0 && (in->do_fsync || force_sync) && fsync(fd) != 0)
        e = errno;
    if (close(fd) != 0 && e == 0)
        e = errno;
    if (e == 0 && renameat(dirfd, tmp, dirfd, name) != 0)
        e = errno;
    if (e != 0)
        unlinkat(dirfd, tmp, 0);
    return e;
}

/* ---- the LOCK header ---- */

/* Read the header; a missing or foreign one reads as zeros.  0 or errno. */
static int hdr_read(int fd, struct fl_hdr *h)
{
    unsigned char b[HDR_SIZE];
    int e = pread_all(fd, b, sizeof b, 0);
    memset(h, 0, sizeof *h);
    if (e == EPROTO || (e == 0 && memcmp(b, HDR_MAGIC, 8) != 0))
        return 0;
    if (e != 0)
        return e;
    h->gen = get64(b + 8);
    h->counter = get64(b + 16);
    h->reserved = get64(b + 24);
    h->pending = get64(b + 32);
    return 0;
}

static int hdr_write(int fd, const struct fl_hdr *h)
{
    unsigned char b[HDR_SIZE];
    ssize_t w;
    memset(b, 0, sizeof b);
    memcpy(b, HDR_MAGIC, 8);
    put64(b + 8, h->gen);
    put64(b + 16, h->counter);
    put64(b + 24, h->reserved);
    put64(b + 32, h->pending);
    do {
        w = pwrite(fd, b, sizeof b, 0);
    } while (w < 0 && errno == EINTR);
    if (w < 0)
        return errno;
    return w == (ssize_t)sizeof b ? 0 : EIO;
}

/* ---- records ---- */

/* The 40-byte header of a record, checksum included. */
static void record_header(unsigned char h[REC_HDR], const char *key, size_t key_len,
                          uint64_t version, uint64_t expires, const void *value, size_t value_len)
{
    uint64_t sum;
    memcpy(h, REC_MAGIC, 4);
    put32(h + 4, (uint32_t)key_len);
    put64(h + 8, version);
    put64(h + 16, expires);
    put64(h + 24, value_len);
    sum = fnv1a64(FNV_OFFSET, h, 32);
    sum = fnv1a64(sum, key, key_len);
    sum = fnv1a64(sum, value, value_len);
    put64(h + 32, sum);
}

/* ---- the read cache ----
 *
 * A reader that takes the shared flock waits for every writer, and a
 * writer holds the exclusive one through its fsyncs (a file, its
 * directory, a journal: milliseconds each, and a transaction of the
 * access-count flush writes dozens of files): on a busy node a GET waited
 * up to 180 ms behind them.  So get() first looks in a cache of values
 * that never waits on the flock:
 *
 *   - a value is cached with the generation (LOCK header) it is valid at;
 *     the cache as a whole is valid at one generation, cache->gen;
 *   - the fast path reads the header without any lock (one pread): if
 *     its generation is the cache's (nothing changed since), or the one a
 *     writer of this process is committing (cache->writing_gen: the write
 *     is not acknowledged yet, the value before it is the committed one),
 *     the cached value is the answer (a journal pending at such a
 *     generation is this process's: the cache holds the state before it,
 *     or the committed one after it).  Any other generation -- another
 *     process wrote, a journal was replayed, a restore -- sends the reader
 *     down the locked path, which refills the cache at the newer
 *     generation (dropping everything older);
 *   - a key found absent by the locked path is cached as absent too (a
 *     GET of a missing key does not wait either);
 *   - a writer of this process writes through: under its exclusive lock it
 *     marks the generation it commits, and once committed puts its new
 *     values in and moves the cache to that generation, before it
 *     returns (and so before its write is acknowledged);
 *   - a read that linearises at its pread of the header is linearisable:
 *     a write of another process that it does not see began after it.
 *
 * The entries are a value_cache (plugins/common/value_cache.h: bounded,
 * 16,384 entries, values up to 64 KiB, 64 MiB in all).
 */
struct fl_cache {
    pthread_mutex_t mu;
    uint64_t gen;         /* every entry is valid at it; 0: none (empty) */
    uint64_t writing_gen; /* a writer of this process is committing it; 0: none */
    struct rhema_vcache *vc;
};

/*
 * What the locked path read at generation gen (or that the key is
 * absent): cached unless the cache has moved past gen (a writer of this
 * process committed since); a newer gen empties it first.
 */
static void fc_fill(rhema_storage_instance *in, uint64_t gen, const char *ns, const char *key,
                    uint64_t version, uint64_t expires_ms, const void *value, size_t value_len,
                    int absent)
{
    struct fl_cache *fc = in->cache; /* made by open(), which fails without it */
    if (gen == 0)
        return;
    pthread_mutex_lock(&fc->mu);
    if (gen > fc->gen && fc->writing_gen == 0) {
        rhema_vcache_clear(fc->vc);
        fc->gen = gen;
    }
    if (gen == fc->gen)
        rhema_vcache_put(fc->vc, ns, key, version, expires_ms, value, value_len, absent);
    pthread_mutex_unlock(&fc->mu);
}

/*
 * A writer of this process (exclusive flock held, LOCK header at `gen`) is
 * about to commit generation gen + 1: readers may go on serving the
 * cache, as long as it holds generation gen.
 */
static void fc_write_begin(rhema_storage_instance *in, uint64_t gen)
{
    struct fl_cache *fc = in->cache;
    pthread_mutex_lock(&fc->mu);
    if (fc->gen != gen) { /* stale: an empty cache is valid at any generation */
        rhema_vcache_clear(fc->vc);
        fc->gen = gen;
    }
    fc->writing_gen = gen + 1;
    pthread_mutex_unlock(&fc->mu);
}

/*
 * The get() fast path: 0 with *out (in c->buf), or RHEMA_ENOTFOUND, when
 * the cache answers; 1 when the locked path must.  Never waits on the
 * flock.
 */
static int fc_get(rhema_storage_conn *c, const char *ns, const char *key,
                  struct rhema_storage_value *out)
{
    rhema_storage_instance *in = c->in;
    struct fl_cache *fc = in->cache;
    struct fl_hdr h;
    int rc = 1;
    /*
     * A pending journal at a generation the cache knows is this process's
     * (a transaction of several writes being applied, or one whose applying
     * failed after its commit point): the cache holds the state before it,
     * or the committed state after it.  Another process's journal comes
     * with a generation of its own.
     */
    if (hdr_read(c->lockfd, &h) != 0 || h.gen == 0)
        return 1;
    uint64_t hash = rhema_vcache_hash(ns, key), now = now_ms(in);
    pthread_mutex_lock(&fc->mu);
    if (fc->gen != 0 && (h.gen == fc->gen || (fc->writing_gen != 0 && h.gen == fc->writing_gen))) {
        const struct rhema_vcache_entry *e = rhema_vcache_find(fc->vc, hash, ns, key);
        if (e != NULL && (e->absent || !live_at(e->expires_ms, now))) {
            rc = RHEMA_ENOTFOUND; /* absent at this generation, or expired since */
        } else if (e != NULL && grow((void **)&c->buf, &c->buf_cap, e->value_len + 1, 1) == 0) {
            memcpy(c->buf, rhema_vcache_value(e), e->value_len);
            out->data = c->buf;
            out->len = e->value_len;
            out->version = e->version;
            rc = 0;
        }
    }
    pthread_mutex_unlock(&fc->mu);
    return rc;
}

struct record {
    const char *key; /* key_len bytes, not NUL-terminated */
    size_t key_len;
    uint64_t version, expires_ms;
    const unsigned char *value;
    size_t value_len;
};

/*
 * Read a whole record file into *buf (grown as needed) and check it.
 * 0, RHEMA_ENOTFOUND (no such file), RHEMA_ECORRUPT, or an I/O error;
 * messages go to c.
 */
static int record_read(rhema_storage_conn *c, int dirfd, const char *fname, unsigned char **buf,
                       size_t *cap, struct record *r)
{
    struct stat st;
    unsigned char *b;
    uint64_t klen, vlen, sum;
    int fd, e;

    fd = openat(dirfd, fname, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) {
            conn_error(c, "key not found");
            return RHEMA_ENOTFOUND;
        }
        return io_fail(c, "open", fname, errno);
    }
    if (fstat(fd, &st) != 0) {
        e = errno;
        close(fd);
        return io_fail(c, "stat", fname, e);
    }
    if (st.st_size < REC_HDR || (uint64_t)st.st_size > SIZE_MAX - 1) {
        close(fd);
        conn_error(c, "record %s is truncated", fname);
        return RHEMA_ECORRUPT;
    }
    if (grow((void **)buf, cap, (size_t)st.st_size + 1, 1) != 0) {
        close(fd);
        conn_error(c, "out of memory");
        return RHEMA_ENOMEM;
    }
    b = *buf;
    e = pread_all(fd, b, (size_t)st.st_size, 0);
    close(fd);
    if (e == EPROTO) {
        conn_error(c, "record %s is truncated", fname);
        return RHEMA_ECORRUPT;
    }
    if (e != 0)
        return io_fail(c, "read", fname, e);
    klen = get32(b + 4);
    vlen = get64(b + 24);
    if (memcmp(b, REC_MAGIC, 4) != 0 || klen == 0 || klen > RHEMA_STORAGE_KEY_MAX ||
        vlen > (uint64_t)st.st_size || REC_HDR + klen + vlen != (uint64_t)st.st_size) {
        conn_error(c, "record %s is malformed", fname);
        return RHEMA_ECORRUPT;
    }
    sum = fnv1a64(FNV_OFFSET, b, 32);
    sum = fnv1a64(sum, b + REC_HDR, (size_t)(klen + vlen));
    if (sum != get64(b + 32)) {
        conn_error(c, "record %s fails its checksum", fname);
        return RHEMA_ECORRUPT;
    }
    b[st.st_size] = '\0';
    r->key = (const char *)b + REC_HDR;
    r->key_len = (size_t)klen;
    r->version = get64(b + 8);
    r->expires_ms = get64(b + 16);
    r->value = b + REC_HDR + klen;
    r->value_len = (size_t)vlen;
    return 0;
}

/* ---- the index (instance mutex held) ---- */

static void ns_clear(struct fl_ns *ns)
{
    size_t i;
    for (i = 0; i < ns->n; i++) {
        free(ns->v[i]->key);
        free(ns->v[i]);
    }
    ns->n = 0;
}

/* The namespace `name`, created (in memory only) when `create` is set. */
static struct fl_ns *ns_get(rhema_storage_instance *in, const char *name, int create)
{
    size_t lo = 0, hi = in->n_ns;
    struct fl_ns *ns;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int r = strcmp(in->ns[mid]->name, name);
        if (r == 0)
            return in->ns[mid];
        if (r < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (!create)
        return NULL;
    if (grow((void **)&in->ns, &in->cap_ns, in->n_ns + 1, sizeof *in->ns) != 0)
        return NULL;
    ns = calloc(1, sizeof *ns);
    if (ns == NULL)
        return NULL;
    snprintf(ns->name, sizeof ns->name, "%s", name);
    ns->dirfd = -1;
    memmove(in->ns + lo + 1, in->ns + lo, (in->n_ns - lo) * sizeof *in->ns);
    in->ns[lo] = ns;
    in->n_ns++;
    return ns;
}

/* The index of the first entry with key >= key. */
static size_t ns_lower_bound(const struct fl_ns *ns, const char *key)
{
    size_t lo = 0, hi = ns->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(ns->v[mid]->key, key) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static struct fl_entry *ns_find(const struct fl_ns *ns, const char *key)
{
    size_t i;
    if (ns == NULL)
        return NULL;
    i = ns_lower_bound(ns, key);
    return i < ns->n && strcmp(ns->v[i]->key, key) == 0 ? ns->v[i] : NULL;
}

static struct fl_entry *entry_new(const char *key, size_t key_len, const char *fname)
{
    size_t flen = strlen(fname);
    struct fl_entry *e = calloc(1, sizeof *e);
    if (e == NULL)
        return NULL;
    e->key = malloc(key_len + 1 + flen + 1);
    if (e->key == NULL) {
        free(e);
        return NULL;
    }
    memcpy(e->key, key, key_len);
    e->key[key_len] = '\0';
    e->fname = e->key + key_len + 1;
    memcpy(e->fname, fname, flen + 1);
    e->key_len = key_len;
    return e;
}

/* Insert or replace the entry of key.  0 or RHEMA_ENOMEM. */
static int ns_upsert(struct fl_ns *ns, const char *key, const char *fname, uint64_t version,
                     uint64_t expires, uint64_t value_len)
{
    size_t i = ns_lower_bound(ns, key);
    struct fl_entry *e;
    if (i < ns->n && strcmp(ns->v[i]->key, key) == 0) {
        e = ns->v[i];
        if (strcmp(e->fname, fname) != 0) {
            struct fl_entry *ne = entry_new(key, e->key_len, fname);
            if (ne == NULL)
                return RHEMA_ENOMEM;
            free(e->key);
            free(e);
            ns->v[i] = e = ne;
        }
    } else {
        if (grow((void **)&ns->v, &ns->cap, ns->n + 1, sizeof *ns->v) != 0)
            return RHEMA_ENOMEM;
        e = entry_new(key, strlen(key), fname);
        if (e == NULL)
            return RHEMA_ENOMEM;
        memmove(ns->v + i + 1, ns->v + i, (ns->n - i) * sizeof *ns->v);
        ns->v[i] = e;
        ns->n++;
    }
    e->version = version;
    e->expires_ms = expires;
    e->value_len = value_len;
    return 0;
}

static void ns_remove_at(struct fl_ns *ns, size_t i)
{
    free(ns->v[i]->key);
    free(ns->v[i]);
    memmove(ns->v + i, ns->v + i + 1, (ns->n - i - 1) * sizeof *ns->v);
    ns->n--;
}

static void ns_remove(struct fl_ns *ns, const char *key)
{
    size_t i = ns_lower_bound(ns, key);
    if (i < ns->n && strcmp(ns->v[i]->key, key) == 0)
        ns_remove_at(ns, i);
}

static int entry_cmp(const void *a, const void *b)
{
    const struct fl_entry *x = *(const struct fl_entry *const *)a;
    const struct fl_entry *y = *(const struct fl_entry *const *)b;
    int r = strcmp(x->key, y->key);
    if (r != 0)
        return r;
    return x->version < y->version ? -1 : x->version > y->version;
}

/*
 * Read the header and key of record dir/name into a new entry.  NULL with
 * *bad set when the file is not a record (logged by the caller), NULL with
 * *e set on an I/O error or ENOMEM.
 */
static struct fl_entry *entry_load(int dirfd, const char *name, int *bad, int *err)
{
    unsigned char h[REC_HDR];
    char key[RHEMA_STORAGE_KEY_MAX + 1];
    struct stat st;
    struct fl_entry *e = NULL;
    uint32_t klen;
    uint64_t vlen;
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC), r;

    *bad = 0;
    *err = 0;
    if (fd < 0) {
        *err = errno;
        return NULL;
    }
    if (fstat(fd, &st) != 0) {
        *err = errno;
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        *bad = 1;
        goto out;
    }
    r = pread_all(fd, h, sizeof h, 0);
    if (r == EPROTO || (r == 0 && memcmp(h, REC_MAGIC, 4) != 0)) {
        *bad = 1;
        goto out;
    }
    if (r != 0) {
        *err = r;
        goto out;
    }
    klen = get32(h + 4);
    vlen = get64(h + 24);
    if (klen == 0 || klen > RHEMA_STORAGE_KEY_MAX || vlen > (uint64_t)st.st_size ||
        REC_HDR + klen + vlen != (uint64_t)st.st_size) {
        *bad = 1;
        goto out;
    }
    r = pread_all(fd, key, klen, REC_HDR);
    if (r != 0) {
        *bad = r == EPROTO;
        *err = r == EPROTO ? 0 : r;
        goto out;
    }
    key[klen] = '\0';
    if (strlen(key) != klen) { /* a NUL inside */
        *bad = 1;
        goto out;
    }
    e = entry_new(key, klen, name);
    if (e == NULL) {
        *err = ENOMEM;
        goto out;
    }
    e->version = get64(h + 8);
    e->expires_ms = get64(h + 16);
    e->value_len = vlen;
out:
    close(fd);
    return e;
}

/* A fresh directory stream on dirfd (its own file offset).  NULL: errno set. */
static DIR *open_dir_at(int dirfd, const char *name)
{
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d;
    if (fd < 0)
        return NULL;
    d = fdopendir(fd);
    if (d == NULL) {
        int e = errno;
        close(fd);
        errno = e;
    }
    return d;
}

/*
 * Load the entries of one namespace directory.  With `cleanup` (exclusive
 * lock held) temp files and superseded duplicates are removed.
 */
static int ns_load(rhema_storage_instance *in, struct fl_ns *ns, int cleanup, char *msg,
                   size_t msg_size)
{
    DIR *d = open_dir_at(ns->dirfd, ".");
    struct dirent *de;
    size_t i, o;
    int e = 0;

    if (d == NULL) {
        snprintf(msg, msg_size, "open kv/n-%s: %s", ns->name, strerror(errno));
        return RHEMA_EIO;
    }
    while ((errno = 0, de = readdir(d)) != NULL) {
        struct fl_entry *ent;
        int bad, err;
        if (de->d_name[0] == '.')
            continue;
        if (de->d_name[0] == '+') {
            if (cleanup)
                unlinkat(ns->dirfd, de->d_name, 0);
            continue;
        }
        ent = entry_load(ns->dirfd, de->d_name, &bad, &err);
        if (ent == NULL) {
            if (bad) {
                log_warn(in, "kv/n-%s/%s is not a record; ignored", ns->name, de->d_name);
                continue;
            }
            if (err == ENOENT)
                continue;
            snprintf(msg, msg_size, "read kv/n-%s/%s: %s", ns->name, de->d_name, strerror(err));
            e = errno_code(err);
            break;
        }
        if (grow((void **)&ns->v, &ns->cap, ns->n + 1, sizeof *ns->v) != 0) {
            free(ent->key);
            free(ent);
            snprintf(msg, msg_size, "out of memory");
            e = RHEMA_ENOMEM;
            break;
        }
        ns->v[ns->n++] = ent;
        if (ent->version > in->max_version)
            in->max_version = ent->version;
    }
    if (e == 0 && errno != 0) {
        snprintf(msg, msg_size, "readdir kv/n-%s: %s", ns->name, strerror(errno));
        e = RHEMA_EIO;
    }
    closedir(d);
    if (e != 0)
        return e;
    qsort(ns->v, ns->n, sizeof *ns->v, entry_cmp);
    /* two files of one key (only after a bug or a hand edit): the newest wins */
    for (i = 0, o = 0; i < ns->n; i++) {
        if (i + 1 < ns->n && strcmp(ns->v[i]->key, ns->v[i + 1]->key) == 0) {
            if (cleanup)
                unlinkat(ns->dirfd, ns->v[i]->fname, 0);
            free(ns->v[i]->key);
            free(ns->v[i]);
            continue;
        }
        ns->v[o++] = ns->v[i];
    }
    ns->n = o;
    return 0;
}

/* Rebuild the whole index from kv/.  On failure the index is marked unloaded. */
static int index_reload(rhema_storage_instance *in, int cleanup, char *msg, size_t msg_size)
{
    DIR *d;
    struct dirent *de;
    size_t i;
    int rc = 0;

    in->loaded = 0;
    in->max_version = 0;
    in->purge_ns = in->purge_pos = 0;
    for (i = 0; i < in->n_ns; i++)
        ns_clear(in->ns[i]);
    d = open_dir_at(in->kvfd, ".");
    if (d == NULL) {
        snprintf(msg, msg_size, "open kv: %s", strerror(errno));
        return RHEMA_EIO;
    }
    while (rc == 0 && (errno = 0, de = readdir(d)) != NULL) {
        struct fl_ns *ns;
        if (strncmp(de->d_name, "n-", 2) != 0 || !rhema_storage_ns_valid(de->d_name + 2))
            continue;
        ns = ns_get(in, de->d_name + 2, 1);
        if (ns == NULL) {
            snprintf(msg, msg_size, "out of memory");
            rc = RHEMA_ENOMEM;
            break;
        }
        if (ns->dirfd < 0) {
            ns->dirfd = openat(in->kvfd, de->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (ns->dirfd < 0) {
                snprintf(msg, msg_size, "open kv/%s: %s", de->d_name, strerror(errno));
                rc = RHEMA_EIO;
                break;
            }
        }
        rc = ns_load(in, ns, cleanup, msg, msg_size);
    }
    if (rc == 0 && errno != 0) {
        snprintf(msg, msg_size, "readdir kv: %s", strerror(errno));
        rc = RHEMA_EIO;
    }
    closedir(d);
    if (rc == 0)
        in->loaded = 1;
    return rc;
}

/* Create kv/n-<ns> when it does not exist yet (lock held). */
static int ns_dir_ensure(rhema_storage_conn *c, struct fl_ns *ns)
{
    rhema_storage_instance *in = c->in;
    char name[RHEMA_STORAGE_NS_MAX + 3];
    int e;
    if (ns->dirfd >= 0)
        return 0;
    snprintf(name, sizeof name, "n-%s", ns->name);
    if (mkdirat(in->kvfd, name, 0750) != 0 && errno != EEXIST)
        return io_fail(c, "mkdir kv/", name, errno);
    ns->dirfd = openat(in->kvfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (ns->dirfd < 0)
        return io_fail(c, "open kv/", name, errno);
    if ((e = maybe_fsync(in, in->kvfd)) != 0)
        return io_fail(c, "fsync", "kv", e);
    return 0;
}

/* ---- locking ---- */

static int replay_journal(rhema_storage_conn *c);

/* Drop whatever begin() took. */
static void end(rhema_storage_conn *c)
{
    if (c->mu_held) {
        c->mu_held = 0;
        pthread_mutex_unlock(&c->in->mu);
    }
    if (c->locked) {
        c->locked = 0;
        lock_fd(c->lockfd, LOCK_UN);
    }
}

static void unlock_index(rhema_storage_conn *c)
{
    if (c->mu_held) {
        c->mu_held = 0;
        pthread_mutex_unlock(&c->in->mu);
    }
}

/*
 * Take the flock (exclusive when `excl`) and then the index mutex, replay a
 * journal a crashed writer left (taking the exclusive lock for it), and
 * bring the index up to date unless `no_index`.  On success both are held:
 * call end().
 */
static int begin_ex(rhema_storage_conn *c, int excl, int no_index)
{
    rhema_storage_instance *in = c->in;
    int want = excl ? LOCK_EX : LOCK_SH, e, rc;
    char msg[FL_ERRMSG_MAX];

    for (;;) {
        if ((e = lock_fd(c->lockfd, want)) != 0)
            return io_fail(c, "flock", "LOCK", e);
        c->locked = want;
        if ((e = hdr_read(c->lockfd, &c->hdr)) != 0) {
            end(c);
            return io_fail(c, "read", "LOCK", e);
        }
        if (c->hdr.pending && want == LOCK_SH) {
            want = LOCK_EX; /* a writer died mid-journal: replay it first */
            continue;
        }
        break;
    }
    pthread_mutex_lock(&in->mu);
    c->mu_held = 1;
    if (c->hdr.pending) {
        rc = replay_journal(c);
        if (rc != 0) {
            end(c);
            return rc;
        }
    }
    if (!no_index && (!in->loaded || in->gen != c->hdr.gen)) {
        rc = index_reload(in, 0, msg, sizeof msg);
        if (rc != 0) {
            conn_error(c, "loading the index: %s", msg);
            end(c);
            return rc;
        }
        in->gen = c->hdr.gen;
    }
    return 0;
}

static int begin(rhema_storage_conn *c, int excl)
{
    return begin_ex(c, excl, 0);
}

/* ---- the journal ---- */

/* Apply one write to the files (lock held).  The caller fsyncs directories. */
static int apply_op(rhema_storage_conn *c, struct fl_ns *ns, const struct fl_op *op,
                    const char *key, size_t key_len, const void *value, size_t value_len)
{
    rhema_storage_instance *in = c->in;
    unsigned char h[REC_HDR];
    int rc, e;
    if (!op->is_put) {
        if (ns->dirfd < 0) {
            /*
             * A journal replayed at open runs before the index is loaded, so
             * the namespace's directory may not be open yet: open it (a
             * missing directory means nothing to delete).
             */
            char name[RHEMA_STORAGE_NS_MAX + 3];
            snprintf(name, sizeof name, "n-%s", ns->name);
            ns->dirfd = openat(in->kvfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (ns->dirfd < 0) {
                if (errno == ENOENT)
                    return 0;
                return io_fail(c, "open kv/", name, errno);
            }
        }
        if (unlinkat(ns->dirfd, op->fname, 0) != 0 && errno != ENOENT)
            return io_fail(c, "unlink", op->fname, errno);
        ns->dirty = 1;
        return 0;
    }
    if ((rc = ns_dir_ensure(c, ns)) != 0)
        return rc;
    record_header(h, key, key_len, op->version, op->expires_ms, value, value_len);
    e = write_file_at(in, ns->dirfd, op->fname, h, sizeof h, key, key_len, value, value_len, 0);
    if (e != 0)
        return io_fail(c, "write record", op->fname, e);
    ns->dirty = 1;
    return 0;
}

/* fsync every directory apply_op() touched. */
static int sync_dirty(rhema_storage_conn *c)
{
    rhema_storage_instance *in = c->in;
    size_t i;
    int e, rc = 0;
    for (i = 0; i < in->n_ns; i++) {
        struct fl_ns *ns = in->ns[i];
        if (!ns->dirty)
            continue;
        ns->dirty = 0;
        if (ns->dirfd >= 0 && (e = maybe_fsync(in, ns->dirfd)) != 0 && rc == 0)
            rc = io_fail(c, "fsync kv/n-", ns->name, e);
    }
    return rc;
}

/*
 * Replay JOURNAL if there is one (exclusive lock and mutex held), then clear
 * the pending flag.  An incomplete journal was never committed: dropped.
 */
static int replay_journal(rhema_storage_conn *c)
{
    rhema_storage_instance *in = c->in;
    struct stat st;
    unsigned char *b;
    size_t off, len;
    uint64_t n_ops, counter, k;
    int fd, e, rc = 0, valid = 0;

    fd = openat(in->rootfd, "JOURNAL", O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno != ENOENT)
        return io_fail(c, "open", "JOURNAL", errno);
    if (fd >= 0) {
        if (fstat(fd, &st) != 0) {
            e = errno;
            close(fd);
            return io_fail(c, "stat", "JOURNAL", e);
        }
        len = (size_t)st.st_size;
        if (grow((void **)&c->io, &c->io_cap, len + 1, 1) != 0) {
            close(fd);
            conn_error(c, "out of memory");
            return RHEMA_ENOMEM;
        }
        e = pread_all(fd, c->io, len, 0);
        close(fd);
        if (e != 0 && e != EPROTO)
            return io_fail(c, "read", "JOURNAL", e);
        b = c->io;
        if (e == 0 && len >= 32 && memcmp(b, JOURNAL_MAGIC, 8) == 0 &&
            fnv1a64(FNV_OFFSET, b, len - 8) == get64(b + len - 8))
            valid = 1;
        if (!valid) {
            log_warn(in, "discarding an incomplete JOURNAL (never committed)");
        } else {
            counter = get64(b + 8);
            n_ops = get64(b + 16);
            off = 24;
            for (k = 0; k < n_ops && rc == 0; k++) {
                struct fl_op op;
                struct fl_ns *ns;
                char nsname[RHEMA_STORAGE_NS_MAX + 1];
                uint32_t ns_len, fname_len, key_len;
                uint64_t value_len;
                if (off + JOURNAL_OP_HDR > len - 8)
                    goto corrupt;
                memset(&op, 0, sizeof op);
                op.is_put = b[off] == 1;
                ns_len = get32(b + off + 4);
                fname_len = get32(b + off + 8);
                key_len = get32(b + off + 12);
                op.version = get64(b + off + 16);
                op.expires_ms = get64(b + off + 24);
                value_len = get64(b + off + 32);
                off += JOURNAL_OP_HDR;
                if (ns_len > RHEMA_STORAGE_NS_MAX || fname_len >= NAME_BUF ||
                    key_len > RHEMA_STORAGE_KEY_MAX || value_len > len ||
                    off + ns_len + fname_len + key_len + value_len > len - 8)
                    goto corrupt;
                memcpy(nsname, b + off, ns_len);
                nsname[ns_len] = '\0';
                memcpy(op.fname, b + off + ns_len, fname_len);
                op.fname[fname_len] = '\0';
                if (!rhema_storage_ns_valid(nsname) || fname_len == 0 || op.fname[0] == '+' ||
                    op.fname[0] == '.' || strchr(op.fname, '/') != NULL)
                    goto corrupt;
                ns = ns_get(in, nsname, 1);
                if (ns == NULL) {
                    conn_error(c, "out of memory");
                    return RHEMA_ENOMEM;
                }
                rc = apply_op(c, ns, &op, (const char *)b + off + ns_len + fname_len, key_len,
                              b + off + ns_len + fname_len + key_len, (size_t)value_len);
                off += ns_len + fname_len + key_len + (size_t)value_len;
            }
            if (rc == 0)
                rc = sync_dirty(c);
            if (rc != 0)
                return rc; /* the journal stays, pending stays: tried again later */
            if (counter > c->hdr.counter)
                c->hdr.counter = counter;
            log_warn(in, "replayed a JOURNAL of %llu writes left by a crashed writer",
                     (unsigned long long)n_ops);
        }
        unlinkat(in->rootfd, "JOURNAL", 0);
        maybe_fsync(in, in->rootfd); /* a journal that came back after power loss would
                                       * replay over later acknowledged writes */
    }
    unlinkat(in->rootfd, "+JOURNAL", 0);
    in->loaded = 0; /* the files changed under the index */
    c->hdr.pending = 0;
    c->hdr.gen++;
    if ((e = hdr_write(c->lockfd, &c->hdr)) != 0)
        return io_fail(c, "write", "LOCK", e);
    return 0;
corrupt:
    conn_error(c, "JOURNAL passes its checksum but is malformed");
    return RHEMA_ECORRUPT;
}

/* Raise COUNTER to `reserve` durably (lock held). */
static int write_counter(const rhema_storage_instance *in, uint64_t reserve)
{
    char text[32];
    int n = snprintf(text, sizeof text, "%llu\n", (unsigned long long)reserve), e;
    e = write_file_at(in, in->rootfd, "COUNTER", text, (size_t)n, NULL, 0, NULL, 0, 0);
    if (e == 0)
        e = maybe_fsync(in, in->rootfd);
    return e;
}

/* COUNTER into *out (0 when absent or unreadable, which is logged). */
static int read_counter(const rhema_storage_instance *in, uint64_t *out)
{
    char text[32];
    ssize_t n;
    char *end_p;
    int fd = openat(in->rootfd, "COUNTER", O_RDONLY | O_CLOEXEC);
    unsigned long long v;
    *out = 0;
    if (fd < 0)
        return errno == ENOENT ? 0 : errno;
    n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n < 0)
        return errno;
    text[n] = '\0';
    errno = 0;
    v = strtoull(text, &end_p, 10);
    if (end_p == text || *end_p != '\n' || errno != 0) {
        log_warn(in, "COUNTER is unreadable; the versions found in the records are used");
        return 0;
    }
    *out = v;
    return 0;
}

/* Serialise the transaction's ops into c->io as a journal.  Its length in *len. */
static int journal_build(rhema_storage_conn *c, uint64_t counter, size_t *len)
{
    size_t i, need = 24 + 8, off;
    unsigned char *b;
    for (i = 0; i < c->n_ops; i++) {
        const struct fl_op *op = &c->ops[i];
        need += JOURNAL_OP_HDR + strlen(op->ns->name) + strlen(op->fname) + strlen(op_key(op)) +
                (op->is_put ? op->w->value_len : 0);
    }
    if (grow((void **)&c->io, &c->io_cap, need, 1) != 0) {
        conn_error(c, "out of memory");
        return RHEMA_ENOMEM;
    }
    b = c->io;
    memcpy(b, JOURNAL_MAGIC, 8);
    put64(b + 8, counter);
    put64(b + 16, c->n_ops);
    off = 24;
    for (i = 0; i < c->n_ops; i++) {
        const struct fl_op *op = &c->ops[i];
        size_t nl = strlen(op->ns->name), fl = strlen(op->fname), kl = strlen(op_key(op));
        size_t vl = op->is_put ? op->w->value_len : 0;
        memset(b + off, 0, JOURNAL_OP_HDR);
        b[off] = op->is_put ? 1 : 2;
        put32(b + off + 4, (uint32_t)nl);
        put32(b + off + 8, (uint32_t)fl);
        put32(b + off + 12, (uint32_t)kl);
        put64(b + off + 16, op->version);
        put64(b + off + 24, op->expires_ms);
        put64(b + off + 32, vl);
        off += JOURNAL_OP_HDR;
        memcpy(b + off, op->ns->name, nl);
        off += nl;
        memcpy(b + off, op->fname, fl);
        off += fl;
        memcpy(b + off, op_key(op), kl);
        off += kl;
        if (vl > 0)
            memcpy(b + off, op->w->value, vl);
        off += vl;
    }
    put64(b + off, fnv1a64(FNV_OFFSET, b, off));
    *len = off + 8;
    return 0;
}

/*
 * Commit c->ops (exclusive lock and mutex held; preconditions checked and
 * versions up to `counter` assigned).  Returns 0; or an error with
 * *applied 0 when nothing changed; or an error with *applied 1 when the
 * writes are visible but their durability is not confirmed.
 */
static int commit(rhema_storage_conn *c, uint64_t counter, int *applied)
{
    rhema_storage_instance *in = c->in;
    struct fl_hdr h = c->hdr;
    size_t i, len;
    int rc = 0, e;

    *applied = 0;
    if (counter > h.reserved) {
        uint64_t reserve = counter > UINT64_MAX - RESERVE_BLOCK ? UINT64_MAX
                                                                 : counter + RESERVE_BLOCK;
        if ((e = write_counter(in, reserve)) != 0)
            return io_fail(c, "write", "COUNTER", e);
        h.reserved = reserve;
    }
    /* the counter first: a writer that dies now never lets a version repeat */
    if (counter > h.counter)
        h.counter = counter;
    h.gen++;
    h.pending = c->n_ops > 1;
    if ((e = hdr_write(c->lockfd, &h)) != 0)
        return io_fail(c, "write", "LOCK", e);
    c->hdr = h;
    in->gen = h.gen;

    if (c->n_ops == 1) {
        const struct fl_op *op = &c->ops[0];
        rc = apply_op(c, op->ns, op, op_key(op), strlen(op_key(op)), op->w->value,
                      op->is_put ? op->w->value_len : 0);
        if (rc != 0)
            return rc; /* a failed rename or unlink leaves the old state */
        *applied = 1;
        return sync_dirty(c);
    }

    /* several writes: the journal's rename is the commit point */
    if ((rc = journal_build(c, counter, &len)) != 0)
        goto undo_pending;
    e = write_file_at(in, in->rootfd, "JOURNAL", c->io, len, NULL, 0, NULL, 0, 0);
    if (e != 0) {
        rc = io_fail(c, "write", "JOURNAL", e);
        goto undo_pending;
    }
    *applied = 1;
    if ((e = maybe_fsync(in, in->rootfd)) != 0) {
        /* the journal is in place: finish applying it, but say it may not last */
        rc = io_fail(c, "fsync", in->dir, e);
    }
    for (i = 0; i < c->n_ops; i++) {
        const struct fl_op *op = &c->ops[i];
        int r = apply_op(c, op->ns, op, op_key(op), strlen(op_key(op)), op->w->value,
                         op->is_put ? op->w->value_len : 0);
        if (r != 0) {
            /* committed but not applied: the pending flag makes the next
             * locker replay the journal; until then reads fail rather than
             * show half of it */
            log_warn(in, "applying a committed journal failed (%s); it will be replayed", c->err);
            in->loaded = 0;
            return 0;
        }
    }
    if ((e = sync_dirty(c)) != 0) {
        log_warn(in, "%s; the journal will be replayed", c->err);
        in->loaded = 0;
        return 0;
    }
    unlinkat(in->rootfd, "JOURNAL", 0);
    if ((e = maybe_fsync(in, in->rootfd)) != 0) /* the unlink must be durable (see replay) */
        log_warn(in, "fsync of the store's directory after the journal: %s", strerror(e));
    c->hdr.pending = 0;
    if ((e = hdr_write(c->lockfd, &c->hdr)) != 0)
        log_warn(in, "write LOCK: %s", strerror(e)); /* only costs a needless replay */
    return rc;

undo_pending:
    c->hdr.pending = 0;
    hdr_write(c->lockfd, &c->hdr);
    return rc;
}

/* ---- lifecycle ---- */

/* mkdir -p path, mode 0750.  0 or errno. */
static int make_dirs(const char *path)
{
    char *dir = strdup(path), *p;
    int e = 0;
    if (dir == NULL)
        return ENOMEM;
    for (p = dir + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(dir, 0750) != 0 && errno != EEXIST)
                e = errno;
            *p = saved;
            if (saved == '\0' || e != 0)
                break;
        }
    }
    free(dir);
    return e;
}

static void fl_disconnect(rhema_storage_conn *c);
static int restore_finish(rhema_storage_conn *c);

static int conn_new(rhema_storage_instance *in, rhema_storage_conn **out)
{
    rhema_storage_conn *c = calloc(1, sizeof *c);
    if (c == NULL)
        return ENOMEM;
    c->in = in;
    c->lockfd = openat(in->rootfd, "LOCK", O_RDWR | O_CLOEXEC);
    if (c->lockfd < 0) {
        int e = errno;
        free(c);
        return e;
    }
    *out = c;
    return 0;
}

static void instance_free(rhema_storage_instance *in)
{
    size_t i;
    for (i = 0; i < in->n_ns; i++) {
        ns_clear(in->ns[i]);
        free(in->ns[i]->v);
        if (in->ns[i]->dirfd >= 0)
            close(in->ns[i]->dirfd);
        free(in->ns[i]);
    }
    free(in->ns);
    if (in->leasefd >= 0)
        close(in->leasefd);
    if (in->kvfd >= 0)
        close(in->kvfd);
    if (in->rootfd >= 0)
        close(in->rootfd);
    pthread_mutex_destroy(&in->mu);
    rhema_rate_table_free(in->rate);
    if (in->cache != NULL) {
        rhema_vcache_free(in->cache->vc);
        pthread_mutex_destroy(&in->cache->mu);
        free(in->cache);
    }
    free(in->dir);
    free(in);
}

/*
 * Recovery at open, under the exclusive lock: replay a journal, drop temp
 * files, load the index, and set the counter above every version that
 * could have been handed out.
 */
static int recover(rhema_storage_instance *in, char **err)
{
    const struct rhema_host *h = in->host;
    rhema_storage_conn *c = NULL;
    uint64_t reserved = 0, live;
    char msg[FL_ERRMSG_MAX];
    int e, rc = 0;

    if ((e = conn_new(in, &c)) != 0)
        return h->set_error(err, errno_code(e), "file: open %s/LOCK: %s", in->dir, strerror(e));
    if ((e = lock_fd(c->lockfd, LOCK_EX)) != 0) {
        rc = h->set_error(err, RHEMA_EIO, "file: flock %s/LOCK: %s", in->dir, strerror(e));
        goto out;
    }
    c->locked = LOCK_EX;
    pthread_mutex_lock(&in->mu);
    c->mu_held = 1;
    if ((e = hdr_read(c->lockfd, &c->hdr)) != 0) {
        rc = h->set_error(err, RHEMA_EIO, "file: read %s/LOCK: %s", in->dir, strerror(e));
        goto out;
    }
    if ((rc = restore_finish(c)) != 0) {
        rc = h->set_error(err, rc, "file: %s: finishing an interrupted restore: %s", in->dir,
                          c->err);
        goto out;
    }
    if ((rc = replay_journal(c)) != 0) {
        rc = h->set_error(err, rc, "file: %s: replaying the journal: %s", in->dir, c->err);
        goto out;
    }
    unlinkat(in->rootfd, "+COUNTER", 0);
    if ((rc = index_reload(in, 1, msg, sizeof msg)) != 0) {
        rc = h->set_error(err, rc, "file: %s: %s", in->dir, msg);
        goto out;
    }
    if ((e = read_counter(in, &reserved)) != 0) {
        rc = h->set_error(err, RHEMA_EIO, "file: read %s/COUNTER: %s", in->dir, strerror(e));
        goto out;
    }
    live = c->hdr.counter;
    if (reserved > live)
        live = reserved;
    if (in->max_version > live)
        live = in->max_version;
    c->hdr.reserved = live > UINT64_MAX - RESERVE_BLOCK ? UINT64_MAX : live + RESERVE_BLOCK;
    c->hdr.counter = live;
    if ((e = write_counter(in, c->hdr.reserved)) != 0) {
        rc = h->set_error(err, RHEMA_EIO, "file: write %s/COUNTER: %s", in->dir, strerror(e));
        goto out;
    }
    c->hdr.gen++;
    c->hdr.pending = 0;
    if ((e = hdr_write(c->lockfd, &c->hdr)) != 0) {
        rc = h->set_error(err, RHEMA_EIO, "file: write %s/LOCK: %s", in->dir, strerror(e));
        goto out;
    }
    in->gen = c->hdr.gen;
out:
    end(c);
    fl_disconnect(c);
    return rc;
}

/* The settings, for open() and check(): *dir points into the configuration. */
static int read_config(const struct rhema_host *host, const struct rhema_cfg *cfg,
                       const char **dir, int *do_fsync, char **err)
{
    *dir = "files";
    *do_fsync = 1;
    if (host->cfg_string(cfg, "directory", dir) == RHEMA_EINVAL)
        return host->set_error(err, RHEMA_EINVAL, "%s: file: directory must be a string",
                               host->cfg_where(cfg, "directory"));
    if ((*dir)[0] == '\0')
        return host->set_error(err, RHEMA_EINVAL, "%s: file: directory is empty",
                               host->cfg_where(cfg, "directory"));
    if (host->cfg_bool(cfg, "fsync", do_fsync) == RHEMA_EINVAL)
        return host->set_error(err, RHEMA_EINVAL, "%s: file: fsync must be true or false",
                               host->cfg_where(cfg, "fsync"));
    return 0;
}

/* check(): the settings only; the directory is neither created nor opened. */
static int fl_check(const struct rhema_host *host, const struct rhema_cfg *cfg, char **err)
{
    const char *dir;
    int do_fsync;
    return read_config(host, cfg, &dir, &do_fsync, err);
}

static int fl_open(const struct rhema_host *host, const struct rhema_cfg *cfg,
                   rhema_storage_instance **out, char **err)
{
    rhema_storage_instance *in;
    const char *dir;
    int do_fsync, rc, e, fd;

    if ((rc = read_config(host, cfg, &dir, &do_fsync, err)) != 0)
        return rc;

    in = calloc(1, sizeof *in);
    if (in == NULL)
        return host->set_error(err, RHEMA_ENOMEM, "file: out of memory");
    in->host = host;
    in->do_fsync = do_fsync != 0;
    in->rootfd = in->kvfd = in->leasefd = -1;
    if (pthread_mutex_init(&in->mu, NULL) != 0) {
        free(in);
        return host->set_error(err, RHEMA_ENOMEM, "file: cannot create a mutex");
    }
    in->dir = strdup(dir);
    in->rate = rhema_rate_table_new(RATE_MAX_KEYS);
    in->cache = calloc(1, sizeof *in->cache);
    if (in->cache != NULL &&
        ((in->cache->vc = rhema_vcache_new()) == NULL || pthread_mutex_init(&in->cache->mu, NULL) != 0)) {
        rhema_vcache_free(in->cache->vc);
        free(in->cache);
        in->cache = NULL;
    }
    if (in->dir == NULL || in->rate == NULL || in->cache == NULL) {
        rc = host->set_error(err, RHEMA_ENOMEM, "file: out of memory");
        goto fail;
    }
    if ((e = make_dirs(dir)) != 0) {
        rc = host->set_error(err, RHEMA_EIO, "file: cannot create %s: %s", dir, strerror(e));
        goto fail;
    }
    in->rootfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (in->rootfd < 0) {
        e = errno;
        rc = host->set_error(err, RHEMA_EIO, "file: open %s: %s", dir, strerror(e));
        goto fail;
    }
    if ((mkdirat(in->rootfd, "kv", 0750) != 0 && errno != EEXIST) ||
        (mkdirat(in->rootfd, "leases", 0750) != 0 && errno != EEXIST) ||
        (in->kvfd = openat(in->rootfd, "kv", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 ||
        (in->leasefd = openat(in->rootfd, "leases", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        e = errno;
        rc = host->set_error(err, RHEMA_EIO, "file: %s: creating kv/ and leases/: %s", dir,
                             strerror(e));
        goto fail;
    }
    fd = openat(in->rootfd, "LOCK", O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
        e = errno;
        rc = host->set_error(err, RHEMA_EIO, "file: open %s/LOCK: %s", dir, strerror(e));
        goto fail;
    }
    close(fd);
    if ((e = maybe_fsync(in, in->rootfd)) != 0) {
        rc = host->set_error(err, RHEMA_EIO, "file: fsync %s: %s", dir, strerror(e));
        goto fail;
    }
    if ((rc = recover(in, err)) != 0)
        goto fail;
    if (host->log != NULL) {
        size_t i, n = 0;
        for (i = 0; i < in->n_ns; i++)
            n += in->ns[i]->n;
        host->log(RHEMA_LOG_INFO, PLUGIN_NAME, "opened %s (%zu entries, fsync %s)", dir, n,
                  in->do_fsync ? "on" : "off: not durable against power loss");
    }
    *out = in;
    return 0;
fail:
    instance_free(in);
    return rc;
}

static void fl_close(rhema_storage_instance *in)
{
    if (in != NULL)
        instance_free(in);
}

static int fl_connect(rhema_storage_instance *in, rhema_storage_conn **out, char **err)
{
    int e = conn_new(in, out);
    if (e != 0)
        return in->host->set_error(err, errno_code(e), "file: open %s/LOCK: %s", in->dir,
                                   strerror(e));
    return 0;
}

static void fl_disconnect(rhema_storage_conn *c)
{
    if (c == NULL)
        return;
    end(c);
    close(c->lockfd);
    free(c->buf);
    free(c->io);
    free(c->ops);
    free(c->arena);
    free(c->items);
    free(c->cursor);
    free(c);
}

/* ---- argument checks ---- */

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
    return 0;
}

/* ---- reads ---- */

static int fl_get(rhema_storage_conn *c, const char *ns, const char *key,
                  struct rhema_storage_value *out)
{
    rhema_storage_instance *in = c->in;
    struct fl_entry *e;
    struct record r;
    char fname[NAME_BUF];
    uint64_t version, expires_ms, gen;
    int dirfd, rc = check_ns_key(c, ns, key);

    if (rc != 0)
        return rc;
    if ((rc = fc_get(c, ns, key, out)) != 1) { /* the read cache: no flock */
        if (rc == RHEMA_ENOTFOUND)
            conn_error(c, "key not found");
        return rc;
    }
    if ((rc = begin(c, 0)) != 0)
        return rc;
    e = ns_find(ns_get(in, ns, 0), key);
    if (e == NULL || !entry_live(e, now_ms(in))) {
        gen = c->hdr.gen;
        end(c);
        fc_fill(in, gen, ns, key, 0, 0, NULL, 0, 1); /* absent (or expired) at gen */
        conn_error(c, "key not found");
        return RHEMA_ENOTFOUND;
    }
    snprintf(fname, sizeof fname, "%s", e->fname);
    version = e->version;
    expires_ms = e->expires_ms;
    gen = c->hdr.gen;
    dirfd = ns_get(in, ns, 0)->dirfd;
    unlock_index(c);
    rc = record_read(c, dirfd, fname, &c->buf, &c->buf_cap, &r);
    end(c);
    if (rc == 0 && (r.key_len != strlen(key) || memcmp(r.key, key, r.key_len) != 0 ||
                    r.version != version)) {
        conn_error(c, "record %s does not hold key version %llu", fname,
                   (unsigned long long)version);
        rc = RHEMA_ECORRUPT;
    }
    if (rc != 0)
        return rc;
    fc_fill(in, gen, ns, key, r.version, expires_ms, r.value, r.value_len, 0);
    out->data = r.value;
    out->len = r.value_len;
    out->version = r.version;
    return 0;
}

static int fl_scan(rhema_storage_conn *c, const char *ns, const char *from_key, const char *to_key,
                   size_t limit, rhema_storage_scan_cb cb, void *ctx)
{
    rhema_storage_instance *in = c->in;
    const char *start = from_key != NULL ? from_key : "";
    size_t done = 0, i;
    int after = 0;

    const char *why = rhema_storage_scan_invalid(ns, cb);
    if (why != NULL) {
        conn_error(c, "%s", why);
        return RHEMA_EINVAL;
    }
    for (;;) {
        size_t want = limit ? limit - done : SIZE_MAX, bytes = 0, pos;
        struct fl_ns *nsp;
        uint64_t now;
        int more = 0, dirfd = -1, rc;

        if ((rc = begin(c, 0)) != 0)
            return rc;
        now = now_ms(in);
        c->n_items = 0;
        c->arena_len = 0;
        nsp = ns_get(in, ns, 0);
        if (nsp != NULL) {
            dirfd = nsp->dirfd;
            pos = ns_lower_bound(nsp, start);
            if (after && pos < nsp->n && strcmp(nsp->v[pos]->key, start) == 0)
                pos++;
            for (; pos < nsp->n; pos++) {
                const struct fl_entry *e = nsp->v[pos];
                struct scan_item *it;
                if (to_key != NULL && strcmp(e->key, to_key) >= 0)
                    break;
                if (!entry_live(e, now))
                    continue;
                if (c->n_items >= want || c->n_items >= SCAN_CHUNK_ENTRIES ||
                    (c->n_items > 0 && bytes >= SCAN_CHUNK_BYTES)) {
                    more = 1;
                    break;
                }
                if (grow((void **)&c->items, &c->cap_items, c->n_items + 1, sizeof *c->items) ||
                    grow((void **)&c->arena, &c->arena_cap, c->arena_len + e->key_len + 1, 1)) {
                    end(c);
                    conn_error(c, "out of memory");
                    return RHEMA_ENOMEM;
                }
                it = &c->items[c->n_items++];
                it->key_off = c->arena_len;
                it->key_len = e->key_len;
                memcpy(c->arena + c->arena_len, e->key, e->key_len + 1);
                c->arena_len += e->key_len + 1;
                it->version = e->version;
                snprintf(it->fname, sizeof it->fname, "%s", e->fname);
                bytes += e->value_len;
            }
        }
        unlock_index(c);
        /* values, under the shared flock: no writer changes a file meanwhile */
        for (i = 0; i < c->n_items; i++) {
            struct scan_item *it = &c->items[i];
            struct record r;
            rc = record_read(c, dirfd, it->fname, &c->io, &c->io_cap, &r);
            if (rc == 0 && (r.version != it->version || r.key_len != it->key_len ||
                            memcmp(r.key, c->arena + it->key_off, r.key_len) != 0)) {
                conn_error(c, "record %s does not match the index", it->fname);
                rc = RHEMA_ECORRUPT;
            }
            if (rc == 0 && grow((void **)&c->arena, &c->arena_cap, c->arena_len + r.value_len + 1,
                                1) != 0) {
                conn_error(c, "out of memory");
                rc = RHEMA_ENOMEM;
            }
            if (rc != 0) {
                end(c);
                return rc;
            }
            it->value_off = c->arena_len;
            it->value_len = r.value_len;
            if (r.value_len > 0)
                memcpy(c->arena + c->arena_len, r.value, r.value_len);
            c->arena_len += r.value_len;
        }
        end(c);
        for (i = 0; i < c->n_items; i++) {
            const struct scan_item *it = &c->items[i];
            rc = cb(ctx, (const char *)c->arena + it->key_off,
                    it->value_len ? c->arena + it->value_off : (const void *)"", it->value_len,
                    it->version);
            if (rc < 0)
                return rc;
            if (rc > 0)
                return 0;
        }
        done += c->n_items;
        if (!more || (limit && done >= limit) || c->n_items == 0)
            return 0;
        {
            const struct scan_item *last = &c->items[c->n_items - 1];
            if (grow((void **)&c->cursor, &c->cursor_cap, last->key_len + 1, 1) != 0) {
                conn_error(c, "out of memory");
                return RHEMA_ENOMEM;
            }
            memcpy(c->cursor, c->arena + last->key_off, last->key_len + 1);
            start = c->cursor;
            after = 1;
        }
    }
}

static int fl_stats(rhema_storage_conn *c, const char *ns, struct rhema_storage_stats *out)
{
    rhema_storage_instance *in = c->in;
    uint64_t now, entries = 0, bytes = 0;
    size_t i, j;
    int rc;

    const char *why = rhema_storage_stats_invalid(ns, out);
    if (why != NULL) {
        conn_error(c, "%s", why);
        return RHEMA_EINVAL;
    }
    if ((rc = begin(c, 0)) != 0)
        return rc;
    now = now_ms(in);
    for (i = 0; i < in->n_ns; i++) {
        const struct fl_ns *nsp = in->ns[i];
        if (ns != NULL && strcmp(nsp->name, ns) != 0)
            continue;
        for (j = 0; j < nsp->n; j++) {
            if (!entry_live(nsp->v[j], now))
                continue;
            entries++;
            bytes += nsp->v[j]->key_len + nsp->v[j]->value_len;
        }
    }
    end(c);
    out->entries = entries;
    out->bytes = bytes;
    return 0;
}

/* ---- writes ---- */

/*
 * Unlink up to PURGE_VISIT entries' worth of expired records, resuming
 * where the last purge stopped (exclusive lock and mutex held).  Best
 * effort, and needs no fsync: a purged record that comes back after a
 * power loss is still expired, and COUNTER covers its version.
 */
static void maybe_purge(rhema_storage_conn *c, uint64_t now)
{
    rhema_storage_instance *in = c->in;
    unsigned visited = 0;
    size_t wraps = 0;
    if (++in->txns % PURGE_EVERY != 0 || in->n_ns == 0)
        return;
    while (visited < PURGE_VISIT && wraps <= in->n_ns) {
        struct fl_ns *ns;
        if (in->purge_ns >= in->n_ns) {
            in->purge_ns = 0;
            in->purge_pos = 0;
        }
        ns = in->ns[in->purge_ns];
        if (in->purge_pos >= ns->n) {
            in->purge_ns++;
            in->purge_pos = 0;
            wraps++;
            continue;
        }
        visited++;
        if (!entry_live(ns->v[in->purge_pos], now) && ns->dirfd >= 0 &&
            (unlinkat(ns->dirfd, ns->v[in->purge_pos]->fname, 0) == 0 || errno == ENOENT))
            ns_remove_at(ns, in->purge_pos);
        else
            in->purge_pos++;
    }
}

/* Whether `name` in ns is taken by an entry, by a write of this transaction, or on disk. */
static int name_taken(rhema_storage_conn *c, const struct fl_ns *ns, const char *name)
{
    size_t i;
    for (i = 0; i < ns->n; i++)
        if (strcmp(ns->v[i]->fname, name) == 0)
            return 1;
    for (i = 0; i < c->n_ops; i++)
        if (c->ops[i].ns == ns && strcmp(c->ops[i].fname, name) == 0)
            return 1;
    return ns->dirfd >= 0 && faccessat(ns->dirfd, name, F_OK, AT_SYMLINK_NOFOLLOW) == 0;
}

/* A file name for a key new to ns. */
static int choose_name(rhema_storage_conn *c, const struct fl_ns *ns, const char *key,
                       char out[NAME_BUF])
{
    size_t len = strlen(key);
    unsigned slot;
    if (encode_name(key, len, out) == 0)
        return 0;
    for (slot = 0; slot < MAX_SLOTS; slot++) {
        hashed_name(key, len, slot, out);
        if (!name_taken(c, ns, out))
            return 0;
    }
    conn_error(c, "no free file name for a long key in %s", ns->name);
    return RHEMA_EIO;
}

/*
 * Check write i of a member's ws[] against the index overlaid with the
 * transaction's earlier writes, and append it to c->ops.  0; a
 * precondition failure (ECONFLICT, ENOTFOUND) that fails only its member;
 * or ENOMEM/EIO, fatal.  A sequenced write has no precondition: its
 * version (that of the put just before it in the member, already the last
 * op, or the next one) and then its key are settled here, before the
 * journal logs the op.
 */
static int prepare_write(rhema_storage_conn *c, struct rhema_storage_write *ws, size_t i,
                         uint64_t now, uint64_t *counter, int *fatal)
{
    rhema_storage_instance *in = c->in;
    struct rhema_storage_write *w = &ws[i];
    struct fl_ns *ns = ns_get(in, w->ns, 1);
    const struct fl_op *prev = NULL;
    const struct fl_entry *e;
    const char *fname = NULL, *key = w->key;
    char seq_key[RHEMA_STORAGE_KEY_MAX + 1];
    uint64_t cur = 0, ev = w->expected_version, seq_version = 0;
    int is_seq = rhema_storage_write_sequenced(w);
    struct fl_op *op;
    size_t j;
    int rc;

    *fatal = 0;
    if (ns == NULL) {
        *fatal = 1;
        conn_error(c, "out of memory");
        return RHEMA_ENOMEM;
    }
    if (is_seq) {
        if (rhema_storage_seq_shares_previous(ws, i)) {
            seq_version = c->ops[c->n_ops - 1].version; /* ws[i - 1], prepared just before */
        } else if (*counter == UINT64_MAX - 1) {
            *fatal = 1;
            conn_error(c, "the version counter is exhausted");
            return RHEMA_EIO;
        } else {
            seq_version = *counter + 1;
        }
        key = rhema_storage_seq_key(seq_key, w->key, seq_version);
        ev = RHEMA_VERSION_ANY; /* a new record: ABSENT means nothing more */
    }
    for (j = c->n_ops; j-- > 0;) {
        if (c->ops[j].ns == ns && strcmp(op_key(&c->ops[j]), key) == 0) {
            prev = &c->ops[j];
            break;
        }
    }
    if (prev != NULL) {
        cur = prev->is_put ? prev->version : 0;
        fname = prev->fname;
    } else if ((e = ns_find(ns, key)) != NULL) {
        cur = entry_live(e, now) ? e->version : 0;
        fname = e->fname;
    }
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
    if (grow((void **)&c->ops, &c->cap_ops, c->n_ops + 1, sizeof *c->ops) != 0) {
        *fatal = 1;
        conn_error(c, "out of memory");
        return RHEMA_ENOMEM;
    }
    op = &c->ops[c->n_ops];
    memset(op, 0, sizeof *op);
    op->w = w;
    op->ns = ns;
    op->is_put = w->op == RHEMA_WRITE_PUT;
    op->is_seq = is_seq;
    if (is_seq)
        memcpy(op->seq_key, seq_key, strlen(seq_key) + 1);
    if (fname != NULL) {
        snprintf(op->fname, sizeof op->fname, "%s", fname);
    } else if ((rc = choose_name(c, ns, key, op->fname)) != 0) {
        *fatal = 1;
        return rc;
    }
    if (is_seq) {
        op->version = seq_version;
        if (seq_version > *counter)
            *counter = seq_version;
        op->expires_ms = deadline_ms(now, w->ttl_ms);
    } else if (op->is_put) {
        if (*counter == UINT64_MAX - 1) {
            *fatal = 1;
            conn_error(c, "the version counter is exhausted");
            return RHEMA_EIO;
        }
        op->version = ++*counter;
        op->expires_ms = deadline_ms(now, w->ttl_ms);
    }
    c->n_ops++;
    return 0;
}

/*
 * The writer's side of the read cache, after commit() (exclusive flock
 * held; gen0 the generation before it): committed values go in and the
 * cache moves to the new generation; a commit whose outcome is unsure
 * empties it; nothing applied leaves it as it was.
 */
static void fc_write_end(rhema_storage_conn *c, uint64_t gen0, int applied, int rc)
{
    struct fl_cache *fc = c->in->cache;
    pthread_mutex_lock(&fc->mu);
    fc->writing_gen = 0;
    if (applied && rc == 0 && c->hdr.gen == gen0 + 1) {
        for (size_t i = 0; i < c->n_ops; i++) {
            const struct fl_op *op = &c->ops[i];
            if (op->is_put)
                rhema_vcache_put(fc->vc, op->ns->name, op_key(op), op->version, op->expires_ms,
                                 op->w->value, op->w->value_len, 0);
            else
                rhema_vcache_put(fc->vc, op->ns->name, op_key(op), 0, 0, NULL, 0, 1); /* absent */
        }
        fc->gen = c->hdr.gen;
    } else if (applied) {
        rhema_vcache_clear(fc->vc);
        fc->gen = 0;
    }
    pthread_mutex_unlock(&fc->mu);
}

/*
 * One write transaction over n members (a batch is a group of one): each
 * member all or nothing, all of them committed together.  Returns 0 when
 * the group was committed (members' results in g[i].result), or an error
 * when nothing was applied.
 */
static int write_group(rhema_storage_conn *c, struct rhema_storage_batch *g, size_t n)
{
    rhema_storage_instance *in = c->in;
    uint64_t now, counter;
    size_t i, j;
    int rc, applied = 0, fatal = 0;

    for (i = 0; i < n; i++)
        for (j = 0; j < g[i].n; j++)
            g[i].writes[j].new_version = 0;
    if ((rc = begin(c, 1)) != 0)
        return rc;
    now = now_ms(in);
    maybe_purge(c, now);
    counter = c->hdr.counter;
    c->n_ops = 0;
    for (i = 0; i < n && !fatal; i++) {
        size_t start = c->n_ops;
        uint64_t saved = counter;
        if (g[i].result != 0)
            continue;
        for (j = 0; j < g[i].n && g[i].result == 0; j++)
            g[i].result = prepare_write(c, g[i].writes, j, now, &counter, &fatal);
        if (g[i].result != 0) {
            c->n_ops = start; /* the member changes nothing */
            counter = saved;
        }
    }
    if (fatal) {
        rc = g[i - 1].result;
        end(c);
        return rc;
    }
    if (c->n_ops == 0) {
        end(c);
        return 0;
    }
    uint64_t gen0 = c->hdr.gen;
    fc_write_begin(in, gen0);
    rc = commit(c, counter, &applied);
    if (applied) {
        for (i = 0; i < c->n_ops && in->loaded; i++) {
            const struct fl_op *op = &c->ops[i];
            if (!op->is_put)
                ns_remove(op->ns, op_key(op));
            else if (ns_upsert(op->ns, op_key(op), op->fname, op->version, op->expires_ms,
                               op->w->value_len) != 0)
                in->loaded = 0; /* reloaded from the files by the next call */
        }
    }
    fc_write_end(c, gen0, applied, rc);
    if (rc == 0)
        for (i = 0; i < c->n_ops; i++)
            if (c->ops[i].is_put)
                c->ops[i].w->new_version = c->ops[i].version;
    if (rc != 0 && applied)
        in->loaded = 0;
    end(c);
    return rc;
}

static int fl_put(rhema_storage_conn *c, struct rhema_storage_write *w)
{
    struct rhema_storage_batch b = {sizeof(struct rhema_storage_batch), 0, w, 1};
    int rc = check_write(c, w);
    if (rc != 0)
        return rc;
    if (w->op != RHEMA_WRITE_PUT) {
        conn_error(c, "put() takes RHEMA_WRITE_PUT");
        return RHEMA_EINVAL;
    }
    rc = write_group(c, &b, 1);
    return rc != 0 ? rc : b.result;
}

static int fl_del(rhema_storage_conn *c, const char *ns, const char *key, uint64_t expected_version)
{
    struct rhema_storage_write w = {.size = sizeof(struct rhema_storage_write),
                                    .op = RHEMA_WRITE_DEL,
                                    .ns = ns,
                                    .key = key,
                                    .expected_version = expected_version};
    struct rhema_storage_batch b = {sizeof(struct rhema_storage_batch), 0, &w, 1};
    int rc = check_write(c, &w);
    if (rc != 0)
        return rc;
    rc = write_group(c, &b, 1);
    return rc != 0 ? rc : b.result;
}

static int fl_batch(rhema_storage_conn *c, struct rhema_storage_write *w, size_t n)
{
    struct rhema_storage_batch b = {sizeof(struct rhema_storage_batch), 0, w, n};
    int rc;
    if (n == 0)
        return 0;
    const char *why = NULL;
    if ((rc = rhema_storage_batch_check(c, w, n, check_write, &why)) != 0) {
        if (why != NULL)
            conn_error(c, "%s", why);
        return rc;
    }
    rc = write_group(c, &b, 1);
    return rc != 0 ? rc : b.result;
}

static int fl_group(rhema_storage_conn *c, struct rhema_storage_batch *g, size_t n)
{
    if (n == 0)
        return 0;
    const char *why = NULL;
    int bad = rhema_storage_group_check(c, g, n, check_write, &why);
    if (why != NULL)
        conn_error(c, "%s", why);
    if (bad != 0)
        return bad;
    return write_group(c, g, n);
}

/* ---- leases ---- */

struct lease_state {
    char fname[NAME_BUF];
    int exists;
    char holder[RHEMA_LEASE_HOLDER_MAX + 1];
    uint64_t epoch, expires_ms;
};

/*
 * Read leases/<fname> into st when it is the lease `name`.  0 (st->exists
 * says whether the file exists), 1 when the file belongs to another name,
 * or an error.
 */
static int lease_read(rhema_storage_conn *c, const char *fname, const char *name,
                      struct lease_state *st)
{
    rhema_storage_instance *in = c->in;
    unsigned char h[LEASE_HDR];
    char file_name[RHEMA_STORAGE_KEY_MAX + 1];
    uint32_t nlen, hlen;
    uint64_t sum;
    int fd = openat(in->leasefd, fname, O_RDONLY | O_CLOEXEC), e;

    memset(st, 0, sizeof *st);
    snprintf(st->fname, sizeof st->fname, "%s", fname);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        return io_fail(c, "open leases/", fname, errno);
    }
    e = pread_all(fd, h, sizeof h, 0);
    if (e == 0) {
        nlen = get32(h + 4);
        hlen = get32(h + 8);
        if (memcmp(h, LEASE_MAGIC, 4) != 0 || nlen == 0 || nlen > RHEMA_STORAGE_KEY_MAX ||
            hlen > RHEMA_LEASE_HOLDER_MAX) {
            e = EPROTO;
        } else {
            e = pread_all(fd, file_name, nlen, LEASE_HDR);
            if (e == 0)
                e = pread_all(fd, st->holder, hlen, LEASE_HDR + nlen);
            if (e == 0) {
                file_name[nlen] = '\0';
                st->holder[hlen] = '\0';
                sum = fnv1a64(FNV_OFFSET, h, 32);
                sum = fnv1a64(sum, file_name, nlen);
                sum = fnv1a64(sum, st->holder, hlen);
                if (sum != get64(h + 32))
                    e = EPROTO;
            }
        }
    }
    close(fd);
    if (e == EPROTO) {
        conn_error(c, "lease file leases/%s is malformed", fname);
        return RHEMA_ECORRUPT;
    }
    if (e != 0)
        return io_fail(c, "read leases/", fname, e);
    if (strlen(file_name) != nlen || strcmp(file_name, name) != 0)
        return 1;
    st->exists = 1;
    st->epoch = get64(h + 16);
    st->expires_ms = get64(h + 24);
    return 0;
}

/* Find the file of lease `name` (or the one to create).  0 or an error. */
static int lease_find(rhema_storage_conn *c, const char *name, struct lease_state *st)
{
    char fname[NAME_BUF];
    size_t len = strlen(name);
    unsigned slot;
    int rc;
    if (encode_name(name, len, fname) == 0) {
        rc = lease_read(c, fname, name, st);
        if (rc == 1) {
            conn_error(c, "lease file leases/%s holds another name", fname);
            return RHEMA_ECORRUPT;
        }
        return rc;
    }
    for (slot = 0; slot < MAX_SLOTS; slot++) {
        hashed_name(name, len, slot, fname);
        rc = lease_read(c, fname, name, st);
        if (rc != 1)
            return rc; /* found, free, or an error */
    }
    conn_error(c, "no free file name for lease '%s'", name);
    return RHEMA_EIO;
}

static int lease_write(rhema_storage_conn *c, const char *name, const struct lease_state *st)
{
    rhema_storage_instance *in = c->in;
    unsigned char h[LEASE_HDR];
    size_t nlen = strlen(name), hlen = strlen(st->holder);
    uint64_t sum;
    int e;
    memset(h, 0, sizeof h);
    memcpy(h, LEASE_MAGIC, 4);
    put32(h + 4, (uint32_t)nlen);
    put32(h + 8, (uint32_t)hlen);
    put64(h + 16, st->epoch);
    put64(h + 24, st->expires_ms);
    sum = fnv1a64(FNV_OFFSET, h, 32);
    sum = fnv1a64(sum, name, nlen);
    sum = fnv1a64(sum, st->holder, hlen);
    put64(h + 32, sum);
    e = write_file_at(in, in->leasefd, st->fname, h, sizeof h, name, nlen, st->holder, hlen, 0);
    if (e == 0)
        e = maybe_fsync(in, in->leasefd);
    if (e != 0)
        return io_fail(c, "write leases/", st->fname, e);
    return 0;
}

static int fl_lease(rhema_storage_conn *c, const char *name, const char *holder, uint64_t ttl_ms,
                    int op, struct rhema_lease_info *out)
{
    struct lease_state st;
    uint64_t now, new_expires;
    int rc, held, mine, write = 0;

    const char *why = rhema_storage_lease_invalid(name, holder, ttl_ms, op);
    if (why != NULL) {
        conn_error(c, "%s", why);
        return RHEMA_EINVAL;
    }
    if ((rc = begin_ex(c, op != RHEMA_LEASE_QUERY, 1)) != 0)
        return rc;
    unlock_index(c); /* leases live apart from the index */
    rc = lease_find(c, name, &st);
    if (rc != 0) {
        end(c);
        return rc;
    }
    now = now_ms(c->in);
    held = st.exists && st.holder[0] != '\0' && st.expires_ms > now;
    mine = held && holder != NULL && strcmp(st.holder, holder) == 0;
    if (!held)
        st.holder[0] = '\0'; /* expired: forget the holder, keep the epoch */
    new_expires = deadline_ms(now, ttl_ms);
    switch (op) {
    case RHEMA_LEASE_ACQUIRE:
        if (held && !mine) {
            rc = RHEMA_ECONFLICT;
            break;
        }
        if (!held) {
            st.epoch++;
            snprintf(st.holder, sizeof st.holder, "%s", holder);
        }
        st.expires_ms = new_expires;
        write = 1;
        break;
    case RHEMA_LEASE_RENEW:
        if (!mine) {
            rc = RHEMA_ECONFLICT;
        } else {
            st.expires_ms = new_expires;
            write = 1;
        }
        break;
    case RHEMA_LEASE_RELEASE:
        if (!mine) {
            rc = RHEMA_ECONFLICT;
        } else {
            st.holder[0] = '\0';
            st.expires_ms = 0;
            write = 1;
        }
        break;
    default: /* QUERY */
        if (!held)
            rc = RHEMA_ENOTFOUND;
        break;
    }
    if (rc == RHEMA_ECONFLICT)
        conn_error(c, "lease '%s' is held by '%s'", name, held ? st.holder : "nobody");
    else if (rc == RHEMA_ENOTFOUND)
        conn_error(c, "lease '%s' is not held", name);
    if (write)
        rc = lease_write(c, name, &st);
    end(c);
    if ((rc == 0 || rc == RHEMA_ECONFLICT || rc == RHEMA_ENOTFOUND) && out != NULL) {
        memset(out, 0, sizeof *out);
        out->epoch = st.epoch;
        if (st.holder[0] != '\0' && st.expires_ms > now) {
            snprintf(out->holder, sizeof out->holder, "%s", st.holder);
            out->ttl_remaining_ms = st.expires_ms - now;
        }
    }
    return rc;
}

/* ---- the rest ---- */

static int fl_health(rhema_storage_conn *c, char **err)
{
    rhema_storage_instance *in = c->in;
    struct fl_hdr h;
    int e = hdr_read(c->lockfd, &h);
    if (e == 0 && faccessat(in->rootfd, "kv", W_OK | X_OK, 0) != 0)
        e = errno;
    if (e != 0) {
        conn_error(c, "%s: %s", in->dir, strerror(e));
        return in->host->set_error(err, RHEMA_EUNAVAIL, "file: %s: %s", in->dir, strerror(e));
    }
    return 0;
}

static const char *fl_errmsg(rhema_storage_conn *c)
{
    return c != NULL ? c->err : "";
}

/* Copy src/name (a regular file) to dst/name and fsync it.  0 or errno. */
static int copy_file(int srcdir, int dstdir, const char *name, unsigned char **buf, size_t *cap)
{
    struct stat st;
    int in_fd, out_fd, e = 0;
    in_fd = openat(srcdir, name, O_RDONLY | O_CLOEXEC);
    if (in_fd < 0)
        return errno;
    if (fstat(in_fd, &st) != 0) {
        e = errno;
        close(in_fd);
        return e;
    }
    if (!S_ISREG(st.st_mode)) {
        close(in_fd);
        return 0; /* not a file: skipped */
    }
    if (grow((void **)buf, cap, (size_t)st.st_size + 1, 1) != 0) {
        close(in_fd);
        return ENOMEM;
    }
    e = pread_all(in_fd, *buf, (size_t)st.st_size, 0);
    close(in_fd);
    if (e != 0)
        return e == EPROTO ? EIO : e;
    out_fd = openat(dstdir, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    if (out_fd < 0)
        return errno;
    e = write_all(out_fd, *buf, (size_t)st.st_size);
    if (e == 0 && fsync(out_fd) != 0)
        e = errno;
    if (close(out_fd) != 0 && e == 0)
        e = errno;
    return e;
}

/* Copy every regular file of src (temp files aside) into dst, then fsync dst. */
static int copy_dir(int src, int dst, unsigned char **buf, size_t *cap, char *bad, size_t bad_size)
{
    DIR *d = open_dir_at(src, ".");
    struct dirent *de;
    int e = 0;
    if (d == NULL)
        return errno;
    while (e == 0 && (errno = 0, de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.' || de->d_name[0] == '+')
            continue;
        e = copy_file(src, dst, de->d_name, buf, cap);
        if (e != 0)
            snprintf(bad, bad_size, "%s", de->d_name);
    }
    if (e == 0 && errno != 0)
        e = errno;
    closedir(d);
    if (e == 0 && fsync(dst) != 0)
        e = errno;
    return e;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

/* fsync the directory holding path.  0 or errno. */
static int fsync_parent(const char *path)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    int fd, e = 0;
    if (slash == NULL) {
        strcpy(dir, ".");
    } else if (slash == path) {
        strcpy(dir, "/");
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

/*
 * A consistent copy of the directory into `path` (a new directory, or an
 * empty one): kv/, leases/ and COUNTER are copied under the shared lock
 * into path.tmp, every file and directory fsync'd (whatever `fsync` says),
 * then path.tmp is renamed to path.  The copy opens as a file backend.
 */
static int fl_backup(rhema_storage_conn *c, const char *path, char **err)
{
    rhema_storage_instance *in = c->in;
    const struct rhema_host *h = in->host;
    char tmp[PATH_MAX], bad[NAME_BUF + 80] = "", counter[32];
    int tfd = -1, tkv = -1, tleases = -1, rc = 0, e = 0, have_tmp = 0, n;
    DIR *d = NULL;
    struct dirent *de;

    if (path == NULL || path[0] == '\0')
        return h->set_error(err, RHEMA_EINVAL, "file: backup: empty path");
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return h->set_error(err, RHEMA_EINVAL, "file: backup: path too long");
    if (mkdir(tmp, 0750) != 0) {
        e = errno;
        rc = h->set_error(err, RHEMA_EIO, "file: backup: mkdir %s: %s", tmp, strerror(e));
        conn_error(c, "backup: mkdir %s: %s", tmp, strerror(e));
        return rc;
    }
    have_tmp = 1;
    if ((rc = begin_ex(c, 0, 1)) != 0) {
        rc = h->set_error(err, rc, "file: backup: %s", c->err);
        goto out;
    }
    unlock_index(c); /* the files do not change under the shared flock */
    if ((tfd = open(tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 ||
        mkdirat(tfd, "kv", 0750) != 0 || mkdirat(tfd, "leases", 0750) != 0 ||
        (tkv = openat(tfd, "kv", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 ||
        (tleases = openat(tfd, "leases", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        e = errno;
        snprintf(bad, sizeof bad, ".");
        goto io;
    }
    d = open_dir_at(in->kvfd, ".");
    if (d == NULL) {
        e = errno;
        snprintf(bad, sizeof bad, "reading the source kv/");
        goto io;
    }
    while ((errno = 0, de = readdir(d)) != NULL) {
        int src, dst;
        if (strncmp(de->d_name, "n-", 2) != 0 || !rhema_storage_ns_valid(de->d_name + 2))
            continue;
        if (mkdirat(tkv, de->d_name, 0750) != 0 ||
            (dst = openat(tkv, de->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
            e = errno;
            snprintf(bad, sizeof bad, "kv/%s", de->d_name);
            goto io;
        }
        src = openat(in->kvfd, de->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        e = src < 0 ? errno : copy_dir(src, dst, &c->io, &c->io_cap, bad, sizeof bad);
        if (src >= 0)
            close(src);
        close(dst);
        if (e != 0)
            goto io;
    }
    if (errno != 0) {
        e = errno;
        goto io;
    }
    if ((e = copy_dir(in->leasefd, tleases, &c->io, &c->io_cap, bad, sizeof bad)) != 0)
        goto io;
    n = snprintf(counter, sizeof counter, "%llu\n",
                 (unsigned long long)(c->hdr.reserved > c->hdr.counter ? c->hdr.reserved
                                                                       : c->hdr.counter));
    {
        int fd = openat(tfd, "COUNTER", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
        e = fd < 0 ? errno : write_all(fd, counter, (size_t)n);
        if (e == 0 && fsync(fd) != 0)
            e = errno;
        if (fd >= 0)
            close(fd);
        if (e != 0) {
            snprintf(bad, sizeof bad, "COUNTER");
            goto io;
        }
    }
    if (fsync(tkv) != 0 || fsync(tleases) != 0 || fsync(tfd) != 0) {
        e = errno;
        snprintf(bad, sizeof bad, ".");
        goto io;
    }
    end(c);
    if (rename(tmp, path) != 0) {
        e = errno;
        rc = h->set_error(err, RHEMA_EIO, "file: backup: rename %s to %s: %s", tmp, path,
                          strerror(e));
        goto out;
    }
    have_tmp = 0;
    if ((e = fsync_parent(path)) != 0)
        rc = h->set_error(err, RHEMA_EIO, "file: backup: fsync the directory of %s: %s", path,
                          strerror(e));
    goto out;
io:
    rc = h->set_error(err, errno_code(e), "file: backup to %s: %s: %s", tmp, bad, strerror(e));
out:
    end(c);
    if (d != NULL)
        closedir(d);
    if (tkv >= 0)
        close(tkv);
    if (tleases >= 0)
        close(tleases);
    if (tfd >= 0)
        close(tfd);
    if (have_tmp)
        nftw(tmp, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    if (rc != 0)
        conn_error(c, "backup to %s failed", path);
    return rc;
}

/* ---- restore ---- */

/* Remove the tree root/name if it exists.  0 or errno. */
static int rm_tree(const rhema_storage_instance *in, const char *name)
{
    char path[PATH_MAX];
    struct stat st;
    if (snprintf(path, sizeof path, "%s/%s", in->dir, name) >= (int)sizeof path)
        return ENAMETOOLONG;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? 0 : errno;
    if (nftw(path, rm_entry, 8, FTW_DEPTH | FTW_PHYS) != 0 || lstat(path, &st) == 0)
        return errno != 0 ? errno : EIO;
    return 0;
}

/* Parse a COUNTER file of dirfd.  0, ENOENT, EPROTO (malformed) or errno. */
static int counter_at(int dirfd, uint64_t *out)
{
    char text[32], *end_p;
    ssize_t n;
    unsigned long long v;
    int fd = openat(dirfd, "COUNTER", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n < 0)
        return errno;
    text[n] = '\0';
    errno = 0;
    v = strtoull(text, &end_p, 10);
    if (end_p == text || *end_p != '\n' || end_p[1] != '\0' || errno != 0)
        return EPROTO;
    *out = v;
    return 0;
}

/*
 * Read lease file dirfd/fname whole and check it: 0 (name and st filled),
 * RHEMA_ECORRUPT, or an I/O error.  Messages go to c.
 */
static int lease_load_at(rhema_storage_conn *c, int dirfd, const char *where, const char *fname,
                         char name[RHEMA_STORAGE_KEY_MAX + 1], struct lease_state *st)
{
    unsigned char h[LEASE_HDR];
    struct stat sb;
    uint32_t nlen, hlen;
    uint64_t sum;
    int fd = openat(dirfd, fname, O_RDONLY | O_CLOEXEC), e = 0;

    memset(st, 0, sizeof *st);
    if (fd < 0)
        return io_fail(c, "open", fname, errno);
    if (fstat(fd, &sb) != 0)
        e = errno;
    else
        e = pread_all(fd, h, sizeof h, 0);
    if (e == 0) {
        nlen = get32(h + 4);
        hlen = get32(h + 8);
        if (memcmp(h, LEASE_MAGIC, 4) != 0 || nlen == 0 || nlen > RHEMA_STORAGE_KEY_MAX ||
            hlen > RHEMA_LEASE_HOLDER_MAX || (uint64_t)sb.st_size != LEASE_HDR + nlen + hlen)
            e = EPROTO;
        if (e == 0)
            e = pread_all(fd, name, nlen, LEASE_HDR);
        if (e == 0)
            e = pread_all(fd, st->holder, hlen, LEASE_HDR + nlen);
        if (e == 0) {
            sum = fnv1a64(FNV_OFFSET, h, 32);
            sum = fnv1a64(sum, name, nlen);
            sum = fnv1a64(sum, st->holder, hlen);
            name[nlen] = '\0';
            st->holder[hlen] = '\0';
            if (sum != get64(h + 32) || strlen(name) != nlen || strlen(st->holder) != hlen)
                e = EPROTO;
        }
    }
    close(fd);
    if (e == EPROTO) {
        conn_error(c, "%s/%s is not a valid lease file (truncated or damaged)", where, fname);
        return RHEMA_ECORRUPT;
    }
    if (e != 0)
        return io_fail(c, "read", fname, e);
    snprintf(st->fname, sizeof st->fname, "%s", fname);
    st->exists = 1;
    st->epoch = get64(h + 16);
    st->expires_ms = get64(h + 24);
    return 0;
}

/*
 * Check a backup directory completely: COUNTER, every record of kv/n-<ns>/
 * (checksum, key, file name, version <= COUNTER) and every lease file.
 * Fills *counter, *entries, *leases.  0 or a code with c->err set.
 */
static int restore_verify(rhema_storage_conn *c, int bfd, uint64_t *counter, size_t *entries,
                          size_t *leases)
{
    DIR *d = NULL, *nd = NULL;
    struct dirent *de, *fe;
    int kvfd = -1, lfd = -1, nsfd = -1, e, rc = 0;

    *entries = *leases = 0;
    e = counter_at(bfd, counter);
    if (e != 0) {
        conn_error(c, "COUNTER: %s", e == EPROTO ? "malformed" : strerror(e));
        return e == EPROTO || e == ENOENT ? RHEMA_ECORRUPT : errno_code(e);
    }
    if ((kvfd = openat(bfd, "kv", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 ||
        (lfd = openat(bfd, "leases", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        e = errno;
        conn_error(c, "kv/ or leases/: %s", strerror(e));
        rc = e == ENOENT || e == ENOTDIR ? RHEMA_ECORRUPT : errno_code(e);
        goto out;
    }
    if ((d = open_dir_at(kvfd, ".")) == NULL) {
        rc = io_fail(c, "open", "kv/", errno);
        goto out;
    }
    while (rc == 0 && (errno = 0, de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        if (strncmp(de->d_name, "n-", 2) != 0 || !rhema_storage_ns_valid(de->d_name + 2)) {
            conn_error(c, "kv/%s is not a namespace directory", de->d_name);
            rc = RHEMA_ECORRUPT;
            break;
        }
        if ((nsfd = openat(kvfd, de->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 ||
            (nd = open_dir_at(nsfd, ".")) == NULL) {
            rc = io_fail(c, "open kv/", de->d_name, errno);
            break;
        }
        while (rc == 0 && (errno = 0, fe = readdir(nd)) != NULL) {
            struct record r;
            char want[NAME_BUF];
            if (fe->d_name[0] == '.')
                continue;
            rc = record_read(c, nsfd, fe->d_name, &c->io, &c->io_cap, &r);
            if (rc == RHEMA_ENOTFOUND)
                rc = RHEMA_ECORRUPT;
            if (rc != 0) {
                char m[FL_ERRMSG_MAX];
                snprintf(m, sizeof m, "%s", c->err);
                conn_error(c, "kv/%s: %.400s", de->d_name, m);
                break;
            }
            if (memchr(r.key, '\0', r.key_len) != NULL ||
                (encode_name(r.key, r.key_len, want) == 0 ? strcmp(want, fe->d_name) != 0
                                                          : fe->d_name[0] != '~')) {
                conn_error(c, "kv/%s/%s: the file name does not match its key", de->d_name,
                           fe->d_name);
                rc = RHEMA_ECORRUPT;
            } else if (r.version == 0 || r.version > *counter) {
                conn_error(c, "kv/%s/%s: version %llu outside 1..COUNTER (%llu)", de->d_name,
                           fe->d_name, (unsigned long long)r.version,
                           (unsigned long long)*counter);
                rc = RHEMA_ECORRUPT;
            } else {
                (*entries)++;
            }
        }
        if (rc == 0 && errno != 0)
            rc = io_fail(c, "readdir kv/", de->d_name, errno);
        closedir(nd);
        nd = NULL;
        close(nsfd);
        nsfd = -1;
    }
    if (rc == 0 && errno != 0)
        rc = io_fail(c, "readdir", "kv/", errno);
    if (rc != 0)
        goto out;
    closedir(d);
    if ((d = open_dir_at(lfd, ".")) == NULL) {
        rc = io_fail(c, "open", "leases/", errno);
        goto out;
    }
    while (rc == 0 && (errno = 0, de = readdir(d)) != NULL) {
        char name[RHEMA_STORAGE_KEY_MAX + 1];
        struct lease_state st;
        if (de->d_name[0] == '.')
            continue;
        rc = lease_load_at(c, lfd, "leases", de->d_name, name, &st);
        if (rc == 0)
            (*leases)++;
    }
    if (rc == 0 && errno != 0)
        rc = io_fail(c, "readdir", "leases/", errno);
out:
    if (nd != NULL)
        closedir(nd);
    if (nsfd >= 0)
        close(nsfd);
    if (d != NULL)
        closedir(d);
    if (kvfd >= 0)
        close(kvfd);
    if (lfd >= 0)
        close(lfd);
    return rc;
}

/*
 * Write the merged leases into the staged directory sfd: the backup's
 * (bfd), each at max(backup, current) epoch -- free when the current one
 * is larger -- then every current lease the backup lacks, free.
 */
static int restore_leases(rhema_storage_conn *c, int bfd, int sfd)
{
    rhema_storage_instance *in = c->in;
    DIR *d = NULL;
    struct dirent *de;
    int lfd = openat(bfd, "leases", O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc = 0, e;

    if (lfd < 0)
        return io_fail(c, "open", "leases/", errno);
    if ((d = open_dir_at(lfd, ".")) == NULL) {
        rc = io_fail(c, "open", "leases/", errno);
        goto out;
    }
    while (rc == 0 && (errno = 0, de = readdir(d)) != NULL) {
        char name[RHEMA_STORAGE_KEY_MAX + 1];
        struct lease_state snap, cur;
        if (de->d_name[0] == '.')
            continue;
        if ((rc = lease_load_at(c, lfd, "backup leases", de->d_name, name, &snap)) != 0)
            break;
        if ((rc = lease_find(c, name, &cur)) != 0) /* the live leases/ */
            break;
        if (cur.exists && cur.epoch > snap.epoch) {
            snap.epoch = cur.epoch;
            snap.holder[0] = '\0';
            snap.expires_ms = 0;
        }
        snprintf(snap.fname, sizeof snap.fname, "%s", de->d_name);
        {
            unsigned char h[LEASE_HDR];
            size_t nlen = strlen(name), hlen = strlen(snap.holder);
            uint64_t sum;
            memset(h, 0, sizeof h);
            memcpy(h, LEASE_MAGIC, 4);
            put32(h + 4, (uint32_t)nlen);
            put32(h + 8, (uint32_t)hlen);
            put64(h + 16, snap.epoch);
            put64(h + 24, snap.expires_ms);
            sum = fnv1a64(FNV_OFFSET, h, 32);
            sum = fnv1a64(sum, name, nlen);
            sum = fnv1a64(sum, snap.holder, hlen);
            put64(h + 32, sum);
            e = write_file_at(in, sfd, snap.fname, h, sizeof h, name, nlen, snap.holder, hlen, 1);
            if (e != 0)
                rc = io_fail(c, "write +restore/leases/", snap.fname, e);
        }
    }
    if (rc == 0 && errno != 0)
        rc = io_fail(c, "readdir", "leases/", errno);
    if (rc != 0)
        goto out;
    closedir(d);
    /* current leases the backup does not have: kept, free, at their epoch */
    if ((d = open_dir_at(in->leasefd, ".")) == NULL) {
        rc = io_fail(c, "open", "leases/", errno);
        goto out;
    }
    while (rc == 0 && (errno = 0, de = readdir(d)) != NULL) {
        char name[RHEMA_STORAGE_KEY_MAX + 1], other[RHEMA_STORAGE_KEY_MAX + 1];
        struct lease_state cur, staged;
        unsigned char h[LEASE_HDR];
        size_t nlen;
        uint64_t sum;
        if (de->d_name[0] == '.' || de->d_name[0] == '+')
            continue;
        if ((rc = lease_load_at(c, in->leasefd, "leases", de->d_name, name, &cur)) != 0)
            break;
        if (faccessat(sfd, de->d_name, F_OK, 0) == 0) {
            if ((rc = lease_load_at(c, sfd, "+restore/leases", de->d_name, other, &staged)) != 0)
                break;
            if (strcmp(other, name) != 0) {
                conn_error(c, "lease file %s names '%s' here and '%s' in the backup", de->d_name,
                           name, other);
                rc = RHEMA_EIO;
            }
            continue; /* merged above */
        }
        nlen = strlen(name);
        memset(h, 0, sizeof h);
        memcpy(h, LEASE_MAGIC, 4);
        put32(h + 4, (uint32_t)nlen);
        put64(h + 16, cur.epoch);
        sum = fnv1a64(FNV_OFFSET, h, 32);
        sum = fnv1a64(sum, name, nlen);
        put64(h + 32, sum);
        e = write_file_at(in, sfd, de->d_name, h, sizeof h, name, nlen, NULL, 0, 1);
        if (e != 0)
            rc = io_fail(c, "write +restore/leases/", de->d_name, e);
    }
    if (rc == 0 && errno != 0)
        rc = io_fail(c, "readdir", "leases/", errno);
out:
    if (d != NULL)
        closedir(d);
    close(lfd);
    return rc;
}

/*
 * Finish a committed restore (exclusive lock and index mutex held): swap
 * RESTORE/kv and RESTORE/leases in, move COUNTER, drop the old trees,
 * reopen the directories and reload the index.  Every step can be redone
 * after a crash.  0 when there is nothing to do.
 */
static int restore_finish(rhema_storage_conn *c)
{
    rhema_storage_instance *in = c->in;
    static const char *const subs[2][2] = {{"kv", "+old-kv"}, {"leases", "+old-leases"}};
    char msg[FL_ERRMSG_MAX];
    struct stat st;
    uint64_t counter = 0;
    size_t i;
    int rfd, e, rc;

    rm_tree(in, "+restore"); /* staged but never committed */
    rfd = openat(in->rootfd, "RESTORE", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (rfd < 0) {
        if (errno == ENOENT)
            return 0;
        return io_fail(c, "open", "RESTORE", errno);
    }
    for (i = 0; i < 2; i++) {
        if (fstatat(rfd, subs[i][0], &st, AT_SYMLINK_NOFOLLOW) != 0)
            continue; /* already moved in */
        if ((e = rm_tree(in, subs[i][1])) != 0 ||
            (renameat(in->rootfd, subs[i][0], in->rootfd, subs[i][1]) != 0 && errno != ENOENT) ||
            renameat(rfd, subs[i][0], in->rootfd, subs[i][0]) != 0) {
            e = errno;
            close(rfd);
            return io_fail(c, "restore: swap in", subs[i][0], e);
        }
        if (fsync(in->rootfd) != 0 || fsync(rfd) != 0) {
            e = errno;
            close(rfd);
            return io_fail(c, "restore: fsync", in->dir, e);
        }
    }
    e = counter_at(rfd, &counter);
    if (e == 0 && renameat(rfd, "COUNTER", in->rootfd, "COUNTER") != 0)
        e = errno;
    close(rfd);
    if (e != 0 && e != ENOENT)
        return io_fail(c, "restore: move", "COUNTER", e == EPROTO ? EIO : e);
    if (unlinkat(in->rootfd, "RESTORE", AT_REMOVEDIR) != 0 || fsync(in->rootfd) != 0)
        return io_fail(c, "restore: remove", "RESTORE", errno);
    rm_tree(in, "+old-kv");
    rm_tree(in, "+old-leases");
    fsync(in->rootfd);

    /* the instance now looks at the new directories */
    for (i = 0; i < in->n_ns; i++) {
        ns_clear(in->ns[i]);
        free(in->ns[i]->v);
        if (in->ns[i]->dirfd >= 0)
            close(in->ns[i]->dirfd);
        free(in->ns[i]);
    }
    in->n_ns = 0;
    close(in->kvfd);
    close(in->leasefd);
    in->kvfd = openat(in->rootfd, "kv", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    in->leasefd = openat(in->rootfd, "leases", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (in->kvfd < 0 || in->leasefd < 0)
        return io_fail(c, "restore: open", "kv/ and leases/", errno);
    if (counter > c->hdr.counter)
        c->hdr.counter = counter;
    if (counter > c->hdr.reserved)
        c->hdr.reserved = counter;
    c->hdr.gen++;
    c->hdr.pending = 0;
    if ((e = hdr_write(c->lockfd, &c->hdr)) != 0)
        return io_fail(c, "write", "LOCK", e);
    rc = index_reload(in, 1, msg, sizeof msg);
    if (rc != 0) {
        conn_error(c, "restore: loading the index: %s", msg);
        return rc;
    }
    in->gen = c->hdr.gen;
    return 0;
}

static int fl_restore(rhema_storage_instance *in, const char *path, char **err)
{
    const struct rhema_host *h = in->host;
    rhema_storage_conn *c = NULL;
    uint64_t counter = 0, top;
    size_t entries = 0, leases = 0;
    char text[32];
    int bfd = -1, sfd = -1, skv = -1, sleases = -1, bkv = -1, rc = 0, e, n, staged = 0;
    DIR *d = NULL;
    struct dirent *de;

    if (path == NULL || path[0] == '\0')
        return h->set_error(err, RHEMA_EINVAL, "file: restore: empty path");
    if ((e = conn_new(in, &c)) != 0)
        return h->set_error(err, errno_code(e), "file: open %s/LOCK: %s", in->dir, strerror(e));
    bfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (bfd < 0) {
        e = errno;
        rc = h->set_error(err, e == ENOENT ? RHEMA_ENOTFOUND : e == ENOTDIR ? RHEMA_ECORRUPT
                                                                            : RHEMA_EIO,
                          "file: restore: %s: %s (a file backend backup is a directory)", path,
                          strerror(e));
        goto out;
    }
    /* 1. verify the whole backup; nothing has changed yet */
    if ((rc = restore_verify(c, bfd, &counter, &entries, &leases)) != 0) {
        rc = h->set_error(err, rc, "file: restore: %s: %s", path, c->err);
        goto out;
    }
    /* 2. stage +restore/ under the exclusive lock (so the live leases and counter hold still) */
    if ((rc = begin_ex(c, 1, 1)) != 0) {
        rc = h->set_error(err, rc, "file: restore: %s", c->err);
        goto out;
    }
    if ((e = rm_tree(in, "+restore")) != 0 || mkdirat(in->rootfd, "+restore", 0750) != 0) {
        e = e != 0 ? e : errno;
        rc = h->set_error(err, errno_code(e), "file: restore: mkdir %s/+restore: %s", in->dir,
                          strerror(e));
        goto out;
    }
    staged = 1;
    if ((sfd = openat(in->rootfd, "+restore", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 ||
        mkdirat(sfd, "kv", 0750) != 0 || mkdirat(sfd, "leases", 0750) != 0 ||
        (skv = openat(sfd, "kv", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 ||
        (sleases = openat(sfd, "leases", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 ||
        (bkv = openat(bfd, "kv", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 ||
        (d = open_dir_at(bkv, ".")) == NULL) {
        e = errno;
        rc = h->set_error(err, errno_code(e), "file: restore: staging in %s/+restore: %s",
                          in->dir, strerror(e));
        goto out;
    }
    while ((errno = 0, de = readdir(d)) != NULL) {
        char bad[NAME_BUF + 80] = "";
        int src, dst;
        if (de->d_name[0] == '.')
            continue;
        if (mkdirat(skv, de->d_name, 0750) != 0 ||
            (dst = openat(skv, de->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
            e = errno;
            rc = h->set_error(err, errno_code(e), "file: restore: mkdir +restore/kv/%s: %s",
                              de->d_name, strerror(e));
            goto out;
        }
        src = openat(bkv, de->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        e = src < 0 ? errno : copy_dir(src, dst, &c->io, &c->io_cap, bad, sizeof bad);
        if (src >= 0)
            close(src);
        close(dst);
        if (e != 0) {
            rc = h->set_error(err, errno_code(e), "file: restore: copying kv/%s/%s: %s",
                              de->d_name, bad, strerror(e));
            goto out;
        }
    }
    if ((rc = restore_leases(c, bfd, sleases)) != 0) {
        rc = h->set_error(err, rc, "file: restore: %s", c->err);
        goto out;
    }
    /* COUNTER: above every version the backup or this directory ever handed out */
    top = counter;
    if (c->hdr.counter > top)
        top = c->hdr.counter;
    if (c->hdr.reserved > top)
        top = c->hdr.reserved;
    if (in->max_version > top)
        top = in->max_version;
    {
        uint64_t live = 0;
        if (read_counter(in, &live) == 0 && live > top)
            top = live;
    }
    n = snprintf(text, sizeof text, "%llu\n", (unsigned long long)top);
    e = write_file_at(in, sfd, "COUNTER", text, (size_t)n, NULL, 0, NULL, 0, 1);
    if (e == 0 && (fsync(skv) != 0 || fsync(sleases) != 0 || fsync(sfd) != 0))
        e = errno;
    if (e != 0) {
        rc = h->set_error(err, errno_code(e), "file: restore: staging in %s/+restore: %s",
                          in->dir, strerror(e));
        goto out;
    }
    /* 3. commit: the rename of +restore to RESTORE, made durable */
    if (renameat(in->rootfd, "+restore", in->rootfd, "RESTORE") != 0 ||
        fsync(in->rootfd) != 0) {
        e = errno;
        rc = h->set_error(err, RHEMA_EIO, "file: restore: commit in %s: %s", in->dir,
                          strerror(e));
        goto out;
    }
    staged = 0;
    /* 4. finish (redone by the next open() when this fails half way); begin_ex holds the mutex */
    if ((rc = restore_finish(c)) != 0) {
        rc = h->set_error(err, rc, "file: restore committed but not finished (the next open "
                          "finishes it): %s", c->err);
        goto out;
    }
    if (h->log != NULL)
        h->log(RHEMA_LOG_NOTICE, PLUGIN_NAME, "restored %s from %s (%zu entries, %zu leases)",
               in->dir, path, entries, leases);
out:
    if (d != NULL)
        closedir(d);
    if (bkv >= 0)
        close(bkv);
    if (skv >= 0)
        close(skv);
    if (sleases >= 0)
        close(sleases);
    if (sfd >= 0)
        close(sfd);
    if (staged)
        rm_tree(in, "+restore");
    if (bfd >= 0)
        close(bfd);
    fl_disconnect(c); /* drops the locks */
    return rc;
}

/*
 * The vtable's batch(), group() and get_many() take arrays of the caller's
 * stride (storage.h, "Growing the structs"); the functions above work on
 * arrays of this plugin's layout, and ../common adapts one to the other.
 */

static int fl_batch_strided(rhema_storage_conn *c, struct rhema_storage_write *w, size_t n)
{
    const char *why = NULL;
    int rc = rhema_storage_call_batch(fl_batch, c, w, n, &why);
    if (why != NULL)
        conn_error(c, "%s", why);
    return rc;
}

static int fl_group_strided(rhema_storage_conn *c, struct rhema_storage_batch *g, size_t n)
{
    const char *why = NULL;
    int rc = rhema_storage_call_group(fl_group, c, g, n, &why);
    if (why != NULL)
        conn_error(c, "%s", why);
    return rc;
}

/* One GCRA step in the instance's in-memory table (see the top of the file). */
static int fl_rate(rhema_storage_conn *c, struct rhema_rate_query *q)
{
    const char *why = NULL;
    int rc = rhema_rate_table_apply(c->in->rate, q, &why);
    if (rc == RHEMA_EINVAL)
        conn_error(c, "%s", why);
    else if (rc != 0)
        conn_error(c, "rate: out of memory");
    return rc;
}

static const struct rhema_storage_plugin file_plugin = {
    .base = RHEMA_STORAGE_PLUGIN_HEADER(PLUGIN_NAME, "1.0.0",
                                        "one directory, a file per entry (durable, one host)"),
    .features = RHEMA_STORAGE_DURABLE | RHEMA_STORAGE_TTL | RHEMA_STORAGE_LEASES |
                RHEMA_STORAGE_SEQUENCED,
    .open = fl_open,
    .close = fl_close,
    .connect = fl_connect,
    .disconnect = fl_disconnect,
    .get = fl_get,
    .put = fl_put,
    .del = fl_del,
    .batch = fl_batch_strided,
    .scan = fl_scan,
    .lease = fl_lease,
    .health = fl_health,
    .stats = fl_stats,
    .errmsg = fl_errmsg,
    .backup = fl_backup,
    .group = fl_group_strided,
    .restore = fl_restore,
    .rate = fl_rate,
    .check = fl_check,
};

int rhema_plugin_init(const struct rhema_host *host, const struct rhema_plugin **out)
{
    (void)host;
    *out = &file_plugin.base;
    return 0;
}
