/*
 * kvfile -- an example storage plugin for rhemad, written the way a third
 * party would write one: a single C file built against the installed
 * headers alone,
 *
 *     cc $(pkg-config --cflags rhema-plugin) -std=c11 -pthread -fPIC -shared \
 *        -fvisibility=hidden -o storage_kvfile.so kvfile_storage.c
 *
 * and loaded by rhemad because its configuration says so:
 *
 *     plugins:     { load = ( "/opt/acme/storage_kvfile.so" ); };
 *     persistence: { backend = "kvfile";
 *                    kvfile = { path = "data/kvfile.log"; sync = true; }; };
 *
 * doc/writing-plugins.md walks through this file section by section.
 *
 * How it stores data
 *   Everything lives in memory, in one array of entries sorted by
 *   (namespace, key) in strcmp order, searched by bisection.  An insert or
 *   a delete moves the tail of the array (O(n)): simple and fast enough for
 *   the tens of thousands of entries a small deployment keeps, and it makes
 *   ordered scans trivial.
 *
 *   Durability comes from an append-only log file.  Every change (a put, a
 *   delete, a batch, a lease change) is first encoded as one *frame*,
 *   appended to the log with a single write(2) and, when `sync` is true,
 *   flushed with fdatasync(2); only then is it applied in memory and
 *   acknowledged.  A batch is one frame, so after a crash it is either all
 *   there or not at all.  At open the log is replayed and then rewritten
 *   with only the live state (compaction: temp file, fsync, rename,
 *   directory fsync), so it does not grow across restarts.
 *
 * The log format (all integers little-endian):
 *     "KVFILE1\n"                                   8 bytes of magic
 *     frames, each: u32 payload_len, u32 fnv1a(payload), payload
 *     a payload is one or more records, each starting with a type byte:
 *       'P' put:    u64 version, u64 expires (unix ms, 0: never),
 *                   u32 ns_len, u32 key_len, u64 value_len, ns, key, value
 *       'D' delete: u32 ns_len, u32 key_len, ns, key
 *       'L' lease:  u64 epoch, u64 expires (unix ms), u32 name_len,
 *                   u32 holder_len, name, holder ("" when released)
 *       'V' the version counter: u64
 *   A frame cut short at the end of the file is the trace of a crash in
 *   the middle of a write; it was never acknowledged, so replay drops it
 *   with a warning.  A bad frame anywhere else is corruption: open refuses
 *   with ECORRUPT and names the offset, rather than silently losing the
 *   acknowledged writes after it.
 *
 * Clocks: TTL and lease deadlines are kept on the host's monotonic clock
 *   while the instance runs (immune to wall-clock jumps), and written to
 *   the log as wall-clock times so that they mean something after a
 *   restart.
 *
 * Threads: open() and close() run on the main thread; each worker thread
 *   gets its own connection from connect() and uses only that one.  All
 *   connections share the instance, so one pthread rwlock guards it:
 *   get, scan and stats read in parallel, writes and leases take it
 *   exclusively (they also append to the log under it, which keeps the
 *   log in the same order as memory).
 */

/* strnlen, fdatasync, pthread_rwlock_t and O_CLOEXEC are POSIX.1-2008. */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <rhema/storage.h> /* includes <rhema/plugin.h> */

/*
 * Build with -fvisibility=hidden: every function of this file is then
 * private to the shared object, and this macro marks the one symbol the
 * host looks up.  (Static functions are private anyway; the flag also
 * hides anything a helper library linked in statically would export.)
 */
#define KV_EXPORT RHEMA_EXPORT

#define PLUGIN_NAME "kvfile"
#define PLUGIN_VERSION "1.0.0"

#define LOG_MAGIC "KVFILE1\n"
#define LOG_MAGIC_LEN 8
#define FRAME_HEADER 8                   /* u32 length + u32 checksum */
#define FRAME_MAX (1024u * 1024u * 1024u) /* refuse absurd lengths on replay */
#define PURGE_EVERY 64u                  /* writes between two sweeps of expired entries */
#define ERRMSG_MAX 256

/* ------------------------------------------------------------------------ */
/* Data structures                                                          */

/* One key and its value.  ns and key share one allocation: "ns\0key\0". */
struct kv_entry {
    char *ns;
    char *key;
    unsigned char *value; /* NULL when value_len is 0 */
    size_t value_len;
    uint64_t version;
    uint64_t expires_ns; /* monotonic deadline; 0: never */
};

/* One lease.  Rows are never removed, so an epoch never goes back. */
struct kv_lease {
    char *name;
    char holder[RHEMA_LEASE_HOLDER_MAX + 1]; /* "" when nobody holds it */
    uint64_t epoch;                          /* the last epoch granted */
    uint64_t expires_ns;                     /* monotonic; only while held */
};

/*
 * The instance: what open() creates.  storage.h declares the struct name
 * and leaves its contents to each plugin.
 */
struct rhema_storage_instance {
    const struct rhema_host *host;
    pthread_rwlock_t lock; /* guards everything below */

    struct kv_entry *entries; /* sorted by (ns, key) */
    size_t n_entries, cap_entries;
    size_t n_ttl;             /* entries with a deadline */
    unsigned writes;          /* since the last sweep */
    uint64_t version_counter; /* the last version handed out */

    struct kv_lease *leases;
    size_t n_leases, cap_leases;

    char *path;   /* the log file */
    int sync;     /* fdatasync after each append */
    int fd;       /* the log, opened O_APPEND */
    off_t log_size;
    int broken;   /* a failed append could not be undone: refuse writes */

    int m_writes, m_log_bytes; /* metric handles (negative: none) */
};

/* A growable byte buffer, for log frames and scan copies. */
struct kv_buf {
    unsigned char *p;
    size_t len, cap;
    int oom; /* set when an append failed; the buffer is then unusable */
};

/* One entry copied out by scan(): offsets into conn->scan_data. */
struct scan_item {
    size_t key_off, value_off, value_len;
    uint64_t version;
};

/* A connection: one per worker thread, used by that thread only. */
struct rhema_storage_conn {
    rhema_storage_instance *inst;
    struct kv_buf value;     /* get() returns a pointer into this */
    struct kv_buf frame;     /* the log frame being built */
    struct kv_buf scan_data; /* scan(): keys and values */
    struct scan_item *items;
    size_t n_items, cap_items;
    char err[ERRMSG_MAX];    /* errmsg() */
};

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */

static int conn_error(rhema_storage_conn *c, int code, const char *fmt, ...)
    RHEMA_PRINTF_LIKE(3, 4);

/* Remember a message for errmsg() and return code, for `return conn_error(...)`. */
static int conn_error(rhema_storage_conn *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
    return code;
}

/*
 * The data model's rules for namespaces and keys (storage.h, "Data
 * model").  The installed headers hold the ABI alone, so a plugin writes
 * its own checks; these are all a plugin needs.
 */
static int ns_valid(const char *ns)
{
    size_t i;
    if (ns == NULL)
        return 0;
    for (i = 0; ns[i] != '\0'; i++) {
        unsigned char ch = (unsigned char)ns[i];
        if (i >= RHEMA_STORAGE_NS_MAX)
            return 0;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '.' || ch == ':' || ch == '-'))
            return 0;
    }
    return i > 0;
}

/* The length of key when it is a valid key (1..RHEMA_STORAGE_KEY_MAX bytes), else 0. */
static size_t valid_key_len(const char *key)
{
    size_t n = key != NULL ? strnlen(key, RHEMA_STORAGE_KEY_MAX + 1) : 0;
    return n <= RHEMA_STORAGE_KEY_MAX ? n : 0;
}

static int check_ns_key(rhema_storage_conn *c, const char *ns, const char *key)
{
    if (!ns_valid(ns))
        return conn_error(c, RHEMA_EINVAL, "invalid namespace (1..%d bytes of [A-Za-z0-9_.:-])",
                          RHEMA_STORAGE_NS_MAX);
    if (valid_key_len(key) == 0)
        return conn_error(c, RHEMA_EINVAL, "invalid key (1..%d bytes)", RHEMA_STORAGE_KEY_MAX);
    return 0;
}

/* now + ms as a deadline in ns, saturating; 0 ms means "never" (0). */
static uint64_t deadline_ns(uint64_t now, uint64_t ms)
{
    if (ms == 0)
        return 0;
    if (ms > (UINT64_MAX - now) / 1000000u)
        return UINT64_MAX;
    return now + ms * 1000000u;
}

/* Milliseconds left until a deadline, rounded up; 0 when none or past. */
static uint64_t remaining_ms(uint64_t deadline, uint64_t now)
{
    if (deadline == 0 || deadline <= now)
        return 0;
    return (deadline - now + 999999u) / 1000000u;
}

static int entry_expired(const struct kv_entry *e, uint64_t now)
{
    return e->expires_ns != 0 && e->expires_ns <= now;
}

/* Grow an array so that it holds at least `need` elements of `size` bytes. */
static int reserve(void **v, size_t *cap, size_t need, size_t size)
{
    size_t ncap;
    void *nv;
    if (need <= *cap)
        return 0;
    ncap = *cap ? *cap : 16;
    while (ncap < need)
        ncap *= 2;
    nv = realloc(*v, ncap * size);
    if (nv == NULL)
        return -1;
    *v = nv;
    *cap = ncap;
    return 0;
}

static void buf_put(struct kv_buf *b, const void *src, size_t n)
{
    if (b->oom || n == 0)
        return;
    if (b->len + n < b->len || reserve((void **)&b->p, &b->cap, b->len + n, 1) != 0) {
        b->oom = 1;
        return;
    }
    memcpy(b->p + b->len, src, n);
    b->len += n;
}

static void buf_u32(struct kv_buf *b, uint32_t v)
{
    unsigned char le[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                           (unsigned char)(v >> 24)};
    buf_put(b, le, sizeof le);
}

static void buf_u64(struct kv_buf *b, uint64_t v)
{
    buf_u32(b, (uint32_t)v);
    buf_u32(b, (uint32_t)(v >> 32));
}

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_u64(const unsigned char *p)
{
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

/* FNV-1a: enough to tell a torn or damaged frame from a whole one. */
static uint32_t fnv1a(const unsigned char *p, size_t n)
{
    uint32_t h = 2166136261u;
    while (n-- > 0) {
        h ^= *p++;
        h *= 16777619u;
    }
    return h;
}

/* ------------------------------------------------------------------------ */
/* The sorted table (callers hold the lock as documented)                   */

static int entry_cmp(const struct kv_entry *e, const char *ns, const char *key)
{
    int r = strcmp(e->ns, ns); /* strcmp compares as unsigned char: the order storage.h wants */
    return r != 0 ? r : strcmp(e->key, key);
}

/* The index of the first entry >= (ns, key); *found says whether it is equal. */
static size_t table_seek(const rhema_storage_instance *in, const char *ns, const char *key,
                         int *found)
{
    size_t lo = 0, hi = in->n_entries;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (entry_cmp(&in->entries[mid], ns, key) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (found != NULL)
        *found = lo < in->n_entries && entry_cmp(&in->entries[lo], ns, key) == 0;
    return lo;
}

/* The live (present, unexpired) entry of (ns, key), or NULL. */
static struct kv_entry *table_find(rhema_storage_instance *in, const char *ns, const char *key,
                                   uint64_t now)
{
    int found;
    size_t i = table_seek(in, ns, key, &found);
    if (!found || entry_expired(&in->entries[i], now))
        return NULL;
    return &in->entries[i];
}

static void entry_release(struct kv_entry *e)
{
    free(e->ns);
    free(e->value);
}

/*
 * A new entry holding copies of ns, key and value, not yet in the table.
 * Returns 0 or -1 (out of memory, nothing allocated).
 */
static int entry_init(struct kv_entry *e, const char *ns, const char *key, const void *value,
                      size_t value_len)
{
    size_t ns_len = strlen(ns), key_len = strlen(key);
    memset(e, 0, sizeof *e);
    e->ns = malloc(ns_len + 1 + key_len + 1);
    if (e->ns == NULL)
        return -1;
    if (value_len > 0) {
        e->value = malloc(value_len);
        if (e->value == NULL) {
            free(e->ns);
            e->ns = NULL;
            return -1;
        }
        memcpy(e->value, value, value_len);
    }
    memcpy(e->ns, ns, ns_len + 1);
    e->key = e->ns + ns_len + 1;
    memcpy(e->key, key, key_len + 1);
    e->value_len = value_len;
    return 0;
}

/*
 * Put entry e (taking ownership) in the table, replacing an entry of the
 * same (ns, key).  Cannot fail: the caller reserved room for one more.
 */
static void table_set(rhema_storage_instance *in, struct kv_entry *e)
{
    int found;
    size_t i = table_seek(in, e->ns, e->key, &found);
    if (found) {
        if (in->entries[i].expires_ns != 0)
            in->n_ttl--;
        entry_release(&in->entries[i]);
    } else {
        memmove(&in->entries[i + 1], &in->entries[i],
                (in->n_entries - i) * sizeof in->entries[0]);
        in->n_entries++;
    }
    in->entries[i] = *e;
    if (e->expires_ns != 0)
        in->n_ttl++;
}

/* Remove (ns, key) from the table if it is there. */
static void table_remove(rhema_storage_instance *in, const char *ns, const char *key)
{
    int found;
    size_t i = table_seek(in, ns, key, &found);
    if (!found)
        return;
    if (in->entries[i].expires_ns != 0)
        in->n_ttl--;
    entry_release(&in->entries[i]);
    memmove(&in->entries[i], &in->entries[i + 1],
            (in->n_entries - i - 1) * sizeof in->entries[0]);
    in->n_entries--;
}

/*
 * Drop expired entries from memory.  They are already invisible to every
 * call; this only gives the memory back.  The log needs no record: its
 * 'P' records carry the deadline, so a replay forgets them too.
 */
static void table_purge(rhema_storage_instance *in, uint64_t now)
{
    size_t i, kept = 0;
    if (in->n_ttl == 0)
        return;
    for (i = 0; i < in->n_entries; i++) {
        if (entry_expired(&in->entries[i], now)) {
            entry_release(&in->entries[i]);
            in->n_ttl--;
        } else {
            in->entries[kept++] = in->entries[i];
        }
    }
    in->n_entries = kept;
}

/* The lease row of name, or NULL. */
static struct kv_lease *lease_find(rhema_storage_instance *in, const char *name)
{
    size_t i;
    for (i = 0; i < in->n_leases; i++)
        if (strcmp(in->leases[i].name, name) == 0)
            return &in->leases[i];
    return NULL;
}

/* The lease row of name, created empty when missing; NULL when out of memory. */
static struct kv_lease *lease_get(rhema_storage_instance *in, const char *name)
{
    struct kv_lease *l = lease_find(in, name);
    char *copy;
    if (l != NULL)
        return l;
    if (reserve((void **)&in->leases, &in->cap_leases, in->n_leases + 1, sizeof *in->leases) != 0)
        return NULL;
    copy = strdup(name);
    if (copy == NULL)
        return NULL;
    l = &in->leases[in->n_leases++];
    memset(l, 0, sizeof *l);
    l->name = copy;
    return l;
}

/* ------------------------------------------------------------------------ */
/* The log: encoding records, appending frames                              */

/* Convert a monotonic deadline to wall-clock milliseconds for the log. */
static uint64_t wall_ms_of(const rhema_storage_instance *in, uint64_t deadline_mono)
{
    uint64_t now = in->host->monotonic_ns();
    if (deadline_mono == 0)
        return 0;
    return in->host->realtime_ns() / 1000000u + remaining_ms(deadline_mono, now);
}

/* And back, at replay: 0 stays "never"; a past time becomes "expired". */
static uint64_t mono_of(const rhema_storage_instance *in, uint64_t wall_ms)
{
    uint64_t now_wall = in->host->realtime_ns() / 1000000u, now = in->host->monotonic_ns();
    if (wall_ms == 0)
        return 0;
    if (wall_ms <= now_wall)
        return now > 0 ? now : 1; /* already expired */
    return deadline_ns(now, wall_ms - now_wall);
}

static void frame_begin(struct kv_buf *f)
{
    f->len = 0;
    f->oom = 0;
    buf_u32(f, 0); /* length and checksum, filled by frame_end() */
    buf_u32(f, 0);
}

static void frame_end(struct kv_buf *f)
{
    uint32_t len, sum;
    if (f->oom)
        return;
    len = (uint32_t)(f->len - FRAME_HEADER);
    sum = fnv1a(f->p + FRAME_HEADER, len);
    f->len = 0;
    buf_u32(f, len);
    buf_u32(f, sum);
    f->len = FRAME_HEADER + len;
}

static void rec_put(struct kv_buf *f, const struct kv_entry *e, uint64_t expires_wall_ms)
{
    size_t ns_len = strlen(e->ns), key_len = strlen(e->key);
    buf_put(f, "P", 1);
    buf_u64(f, e->version);
    buf_u64(f, expires_wall_ms);
    buf_u32(f, (uint32_t)ns_len);
    buf_u32(f, (uint32_t)key_len);
    buf_u64(f, e->value_len);
    buf_put(f, e->ns, ns_len);
    buf_put(f, e->key, key_len);
    buf_put(f, e->value, e->value_len);
}

static void rec_del(struct kv_buf *f, const char *ns, const char *key)
{
    size_t ns_len = strlen(ns), key_len = strlen(key);
    buf_put(f, "D", 1);
    buf_u32(f, (uint32_t)ns_len);
    buf_u32(f, (uint32_t)key_len);
    buf_put(f, ns, ns_len);
    buf_put(f, key, key_len);
}

static void rec_lease(struct kv_buf *f, const char *name, const char *holder, uint64_t epoch,
                      uint64_t expires_wall_ms)
{
    size_t name_len = strlen(name), holder_len = strlen(holder);
    buf_put(f, "L", 1);
    buf_u64(f, epoch);
    buf_u64(f, expires_wall_ms);
    buf_u32(f, (uint32_t)name_len);
    buf_u32(f, (uint32_t)holder_len);
    buf_put(f, name, name_len);
    buf_put(f, holder, holder_len);
}

static void rec_counter(struct kv_buf *f, uint64_t counter)
{
    buf_put(f, "V", 1);
    buf_u64(f, counter);
}

/* write(2) all of p, retrying on EINTR and short writes. */
static int write_all(int fd, const void *p, size_t n)
{
    const unsigned char *b = p;
    while (n > 0) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

/*
 * Append the frame built in c->frame to the log (write lock held), and
 * flush it when `sync` is set.  On failure the log is cut back to its
 * previous length so that a half-written frame cannot hide the frames
 * written after it; if even that fails, the instance refuses every later
 * write (health() then reports it).
 */
static int log_append(rhema_storage_conn *c)
{
    rhema_storage_instance *in = c->inst;
    int e;
    if (c->frame.oom)
        return conn_error(c, RHEMA_ENOMEM, "out of memory");
    if (in->broken)
        return conn_error(c, RHEMA_EIO, "%s: an earlier write failed; restart to recover",
                          in->path);
    if (c->frame.len - FRAME_HEADER > FRAME_MAX)
        return conn_error(c, RHEMA_ETOOBIG, "a write of %zu bytes is above the %u bytes a frame holds",
                          c->frame.len, FRAME_MAX);
    if (write_all(in->fd, c->frame.p, c->frame.len) != 0 || (in->sync && fdatasync(in->fd) != 0)) {
        e = errno;
        if (ftruncate(in->fd, in->log_size) != 0)
            in->broken = 1;
        in->host->log(RHEMA_LOG_ERROR, PLUGIN_NAME, "%s: append: %s", in->path, strerror(e));
        return conn_error(c, RHEMA_EIO, "%s: append: %s", in->path, strerror(e));
    }
    in->log_size += (off_t)c->frame.len;
    in->host->metric_add(in->m_writes, 1);
    in->host->metric_set(in->m_log_bytes, (int64_t)in->log_size);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* The log: replay and compaction (main thread, in open())                  */

/* Apply the records of one frame's payload.  -1 when the payload is malformed. */
static int replay_payload(rhema_storage_instance *in, const unsigned char *p, size_t n)
{
    const unsigned char *end = p + n;
    while (p < end) {
        unsigned char type = *p++;
        size_t left = (size_t)(end - p);
        if (type == 'P') {
            struct kv_entry e;
            char ns[RHEMA_STORAGE_NS_MAX + 1], key[RHEMA_STORAGE_KEY_MAX + 1];
            uint64_t version, expires, value_len;
            uint32_t ns_len, key_len;
            if (left < 32)
                return -1;
            version = get_u64(p);
            expires = get_u64(p + 8);
            ns_len = get_u32(p + 16);
            key_len = get_u32(p + 20);
            value_len = get_u64(p + 24);
            p += 32;
            left -= 32;
            if (ns_len == 0 || ns_len > RHEMA_STORAGE_NS_MAX || key_len == 0 ||
                key_len > RHEMA_STORAGE_KEY_MAX || (uint64_t)ns_len + key_len > left ||
                value_len > left - ns_len - key_len)
                return -1;
            memcpy(ns, p, ns_len);
            ns[ns_len] = '\0';
            memcpy(key, p + ns_len, key_len);
            key[key_len] = '\0';
            if (entry_init(&e, ns, key, p + ns_len + key_len, (size_t)value_len) != 0 ||
                reserve((void **)&in->entries, &in->cap_entries, in->n_entries + 1,
                        sizeof *in->entries) != 0) {
                entry_release(&e);
                return -2;
            }
            p += ns_len + key_len + value_len;
            e.version = version;
            e.expires_ns = mono_of(in, expires);
            if (version > in->version_counter)
                in->version_counter = version;
            table_set(in, &e);
        } else if (type == 'D') {
            char ns[RHEMA_STORAGE_NS_MAX + 1], key[RHEMA_STORAGE_KEY_MAX + 1];
            uint32_t ns_len, key_len;
            if (left < 8)
                return -1;
            ns_len = get_u32(p);
            key_len = get_u32(p + 4);
            p += 8;
            left -= 8;
            if (ns_len == 0 || ns_len > RHEMA_STORAGE_NS_MAX || key_len == 0 ||
                key_len > RHEMA_STORAGE_KEY_MAX || (uint64_t)ns_len + key_len > left)
                return -1;
            memcpy(ns, p, ns_len);
            ns[ns_len] = '\0';
            memcpy(key, p + ns_len, key_len);
            key[key_len] = '\0';
            p += ns_len + key_len;
            table_remove(in, ns, key);
        } else if (type == 'L') {
            char name[RHEMA_STORAGE_KEY_MAX + 1];
            struct kv_lease *l;
            uint64_t epoch, expires;
            uint32_t name_len, holder_len;
            if (left < 24)
                return -1;
            epoch = get_u64(p);
            expires = get_u64(p + 8);
            name_len = get_u32(p + 16);
            holder_len = get_u32(p + 20);
            p += 24;
            left -= 24;
            if (name_len == 0 || name_len > RHEMA_STORAGE_KEY_MAX ||
                holder_len > RHEMA_LEASE_HOLDER_MAX || (uint64_t)name_len + holder_len > left)
                return -1;
            memcpy(name, p, name_len);
            name[name_len] = '\0';
            if ((l = lease_get(in, name)) == NULL)
                return -2;
            memcpy(l->holder, p + name_len, holder_len);
            l->holder[holder_len] = '\0';
            if (epoch > l->epoch)
                l->epoch = epoch;
            l->expires_ns = mono_of(in, expires);
            p += name_len + holder_len;
        } else if (type == 'V') {
            if (left < 8)
                return -1;
            if (get_u64(p) > in->version_counter)
                in->version_counter = get_u64(p);
            p += 8;
        } else {
            return -1;
        }
    }
    return 0;
}

/*
 * Read the log at in->path into memory.  A missing file is an empty store.
 * Returns 0 or a negative code with *err set.
 */
static int log_replay(rhema_storage_instance *in, char **err)
{
    const struct rhema_host *h = in->host;
    unsigned char header[FRAME_HEADER], magic[LOG_MAGIC_LEN], *payload = NULL;
    struct stat st;
    off_t offset = LOG_MAGIC_LEN;
    int rc = 0;
    FILE *f = fopen(in->path, "rb");

    if (f == NULL) {
        if (errno == ENOENT)
            return 0;
        return h->set_error(err, RHEMA_EIO, "kvfile: open %s: %s", in->path, strerror(errno));
    }
    if (fstat(fileno(f), &st) != 0) {
        rc = h->set_error(err, RHEMA_EIO, "kvfile: stat %s: %s", in->path, strerror(errno));
        goto out;
    }
    if (st.st_size == 0)
        goto out; /* created, but the magic never made it to disk */
    if (fread(magic, 1, sizeof magic, f) != sizeof magic ||
        memcmp(magic, LOG_MAGIC, LOG_MAGIC_LEN) != 0) {
        rc = h->set_error(err, RHEMA_ECORRUPT, "kvfile: %s is not a kvfile log (bad magic)",
                          in->path);
        goto out;
    }
    for (;;) {
        size_t got = fread(header, 1, sizeof header, f);
        uint32_t len, sum;
        void *np;
        int r;
        if (got == 0)
            break; /* a clean end */
        len = got == sizeof header ? get_u32(header) : 0;
        sum = got == sizeof header ? get_u32(header + 4) : 0;
        if (got < sizeof header || len > FRAME_MAX ||
            (off_t)(offset + FRAME_HEADER + len) > st.st_size) {
            /* cut short by the end of the file: a write that never completed */
            h->log(RHEMA_LOG_WARN, PLUGIN_NAME,
                   "%s: dropping an incomplete record at offset %lld (interrupted write)",
                   in->path, (long long)offset);
            break;
        }
        np = realloc(payload, len ? len : 1);
        if (np == NULL) {
            rc = h->set_error(err, RHEMA_ENOMEM, "kvfile: out of memory reading %s", in->path);
            goto out;
        }
        payload = np;
        if (fread(payload, 1, len, f) != len) {
            rc = h->set_error(err, RHEMA_EIO, "kvfile: read %s: %s", in->path, strerror(errno));
            goto out;
        }
        if (fnv1a(payload, len) != sum) {
            if ((off_t)(offset + FRAME_HEADER + len) == st.st_size) {
                h->log(RHEMA_LOG_WARN, PLUGIN_NAME,
                       "%s: dropping a damaged last record at offset %lld (interrupted write)",
                       in->path, (long long)offset);
                break;
            }
            rc = h->set_error(err, RHEMA_ECORRUPT,
                              "kvfile: %s: bad checksum at offset %lld, followed by %lld bytes",
                              in->path, (long long)offset,
                              (long long)(st.st_size - offset - FRAME_HEADER - len));
            goto out;
        }
        r = replay_payload(in, payload, len);
        if (r == -2) {
            rc = h->set_error(err, RHEMA_ENOMEM, "kvfile: out of memory reading %s", in->path);
            goto out;
        }
        if (r != 0) {
            rc = h->set_error(err, RHEMA_ECORRUPT, "kvfile: %s: malformed record at offset %lld",
                              in->path, (long long)offset);
            goto out;
        }
        offset += FRAME_HEADER + len;
    }
out:
    free(payload);
    fclose(f);
    return rc;
}

/* fsync the directory holding path, so that a rename in it is durable. */
static int fsync_parent(const char *path)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    int fd, rc;
    if (slash == NULL) {
        strcpy(dir, ".");
    } else if (slash == path) {
        strcpy(dir, "/");
    } else {
        if ((size_t)(slash - path) >= sizeof dir)
            return -1;
        memcpy(dir, path, (size_t)(slash - path));
        dir[slash - path] = '\0';
    }
    fd = open(dir, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    rc = fsync(fd);
    close(fd);
    return rc;
}

/*
 * Write the live state (counter, entries, leases) as a fresh log at path:
 * temp file, fsync, rename, directory fsync, so that path holds either the
 * old file or the complete new one.  The caller holds the lock (or is
 * alone, in open()).  Used to compact the log at open and by backup().
 * Returns 0 or a negative code with *err set.
 */
static int write_snapshot(rhema_storage_instance *in, const char *path, char **err)
{
    const struct rhema_host *h = in->host;
    struct kv_buf f = {0};
    char tmp[PATH_MAX];
    uint64_t now = h->monotonic_ns();
    size_t i;
    int fd, rc = 0, e;

    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return h->set_error(err, RHEMA_EINVAL, "kvfile: path too long: %s", path);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0)
        return h->set_error(err, RHEMA_EIO, "kvfile: create %s: %s", tmp, strerror(errno));

    /* the magic, then one frame per record: frames stay small however big the store */
    if (write_all(fd, LOG_MAGIC, LOG_MAGIC_LEN) != 0)
        goto write_error;
    frame_begin(&f);
    rec_counter(&f, in->version_counter);
    frame_end(&f);
    if (f.oom || write_all(fd, f.p, f.len) != 0)
        goto write_error;
    for (i = 0; i < in->n_entries; i++) {
        const struct kv_entry *en = &in->entries[i];
        if (entry_expired(en, now))
            continue;
        frame_begin(&f);
        rec_put(&f, en, wall_ms_of(in, en->expires_ns));
        frame_end(&f);
        if (f.oom || write_all(fd, f.p, f.len) != 0)
            goto write_error;
    }
    for (i = 0; i < in->n_leases; i++) {
        const struct kv_lease *l = &in->leases[i];
        int held = l->holder[0] != '\0' && l->expires_ns > now;
        frame_begin(&f);
        rec_lease(&f, l->name, held ? l->holder : "", l->epoch,
                  held ? wall_ms_of(in, l->expires_ns) : 0);
        frame_end(&f);
        if (f.oom || write_all(fd, f.p, f.len) != 0)
            goto write_error;
    }
    if (fsync(fd) != 0)
        goto write_error;
    if (close(fd) != 0) {
        fd = -1;
        goto write_error;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        rc = h->set_error(err, RHEMA_EIO, "kvfile: rename %s: %s", tmp, strerror(errno));
        goto out;
    }
    if (fsync_parent(path) != 0)
        rc = h->set_error(err, RHEMA_EIO, "kvfile: fsync the directory of %s: %s", path,
                          strerror(errno));
    goto out;

write_error:
    e = f.oom ? ENOMEM : errno;
    rc = h->set_error(err, f.oom ? RHEMA_ENOMEM : RHEMA_EIO, "kvfile: write %s: %s", tmp,
                      strerror(e));
    if (fd >= 0)
        close(fd);
    unlink(tmp);
out:
    free(f.p);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Lifecycle: open / close (main thread), connect / disconnect (workers)   */

static void instance_free(rhema_storage_instance *in)
{
    size_t i;
    for (i = 0; i < in->n_entries; i++)
        entry_release(&in->entries[i]);
    free(in->entries);
    for (i = 0; i < in->n_leases; i++)
        free(in->leases[i].name);
    free(in->leases);
    if (in->fd >= 0)
        close(in->fd);
    free(in->path);
    pthread_rwlock_destroy(&in->lock);
    free(in);
}

/*
 * Read the settings of persistence.kvfile, replay the log, compact it and
 * keep it open for appending.  Every key the plugin reads is marked as
 * read; the host reports the others as unknown keys.
 */
/*
 * The settings, shared by open() and check() so that the two read the same
 * keys (the host refuses the keys of the group nobody read).  Defaults are
 * preset; a getter leaves its output alone when the key is absent
 * (RHEMA_ENOTFOUND), and RHEMA_EINVAL is a wrong type.  *path points into
 * the configuration.
 */
static int read_config(const struct rhema_host *host, const struct rhema_cfg *cfg,
                       const char **path, int *sync, char **err)
{
    int rc;

    *path = "kvfile.log";
    *sync = 1;
    rc = host->cfg_string(cfg, "path", path);
    if (rc == RHEMA_EINVAL)
        return host->set_error(err, rc, "%s: persistence.kvfile.path must be a string",
                               host->cfg_where(cfg, "path"));
    if ((*path)[0] == '\0')
        return host->set_error(err, RHEMA_EINVAL, "%s: persistence.kvfile.path must not be empty",
                               host->cfg_where(cfg, "path"));
    rc = host->cfg_bool(cfg, "sync", sync);
    if (rc == RHEMA_EINVAL)
        return host->set_error(err, rc, "%s: persistence.kvfile.sync must be true or false",
                               host->cfg_where(cfg, "sync"));
    return 0;
}

/* check() (storage minor 4, for rhemad -t): the settings, and no file touched. */
static int kv_check(const struct rhema_host *host, const struct rhema_cfg *cfg, char **err)
{
    const char *path;
    int sync;
    return read_config(host, cfg, &path, &sync, err);
}

static int kv_open(const struct rhema_host *host, const struct rhema_cfg *cfg,
                   rhema_storage_instance **out, char **err)
{
    rhema_storage_instance *in;
    const char *path;
    int sync, rc;
    struct stat st;

    /* 1. settings */
    if ((rc = read_config(host, cfg, &path, &sync, err)) != 0)
        return rc;

    /* 2. the instance */
    in = calloc(1, sizeof *in);
    if (in == NULL)
        return host->set_error(err, RHEMA_ENOMEM, "kvfile: out of memory");
    in->fd = -1;
    in->host = host;
    in->sync = sync;
    if (pthread_rwlock_init(&in->lock, NULL) != 0) {
        free(in);
        return host->set_error(err, RHEMA_ENOMEM, "kvfile: cannot create a lock");
    }
    in->path = strdup(path);
    if (in->path == NULL) {
        rc = host->set_error(err, RHEMA_ENOMEM, "kvfile: out of memory");
        goto fail;
    }

    /* 3. replay, compact, reopen for appending */
    if ((rc = log_replay(in, err)) != 0)
        goto fail;
    if ((rc = write_snapshot(in, in->path, err)) != 0)
        goto fail;
    in->fd = open(in->path, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (in->fd < 0 || fstat(in->fd, &st) != 0) {
        rc = host->set_error(err, RHEMA_EIO, "kvfile: open %s: %s", in->path, strerror(errno));
        goto fail;
    }
    in->log_size = st.st_size;

    /* 4. metrics: rhema_kvfile_writes_total, rhema_kvfile_log_bytes */
    in->m_writes = host->metric_register(PLUGIN_NAME, "writes_total", "frames appended to the log", 0);
    in->m_log_bytes = host->metric_register(PLUGIN_NAME, "log_bytes", "size of the log file", 1);
    host->metric_set(in->m_log_bytes, (int64_t)in->log_size);
    host->log(RHEMA_LOG_INFO, PLUGIN_NAME, "%s: %zu entries, %zu leases, sync %s", in->path,
              in->n_entries, in->n_leases, sync ? "on" : "off");
    *out = in;
    return 0;

fail:
    instance_free(in);
    return rc;
}

/* Every connection is already disconnected: no lock needed. */
static void kv_close(rhema_storage_instance *in)
{
    if (in != NULL)
        instance_free(in);
}

static int kv_connect(rhema_storage_instance *in, rhema_storage_conn **out, char **err)
{
    rhema_storage_conn *c = calloc(1, sizeof *c);
    if (c == NULL)
        return in->host->set_error(err, RHEMA_ENOMEM, "kvfile: out of memory");
    c->inst = in;
    *out = c;
    return 0;
}

static void kv_disconnect(rhema_storage_conn *c)
{
    if (c == NULL)
        return;
    free(c->value.p);
    free(c->frame.p);
    free(c->scan_data.p);
    free(c->items);
    free(c);
}

/* ------------------------------------------------------------------------ */
/* Reads                                                                    */

/*
 * The value is copied into the connection's buffer under the read lock:
 * storage.h promises the caller that it stays valid until its next call on
 * this connection, whatever other threads write meanwhile.
 */
static int kv_get(rhema_storage_conn *c, const char *ns, const char *key,
                  struct rhema_storage_value *out)
{
    rhema_storage_instance *in = c->inst;
    const struct kv_entry *e;
    int rc = check_ns_key(c, ns, key);
    if (rc != 0)
        return rc;
    pthread_rwlock_rdlock(&in->lock);
    e = table_find(in, ns, key, in->host->monotonic_ns());
    if (e == NULL) {
        rc = conn_error(c, RHEMA_ENOTFOUND, "key not found");
    } else {
        c->value.len = 0;
        c->value.oom = 0;
        buf_put(&c->value, e->value, e->value_len);
        if (c->value.oom) {
            rc = conn_error(c, RHEMA_ENOMEM, "out of memory");
        } else {
            out->data = c->value.p != NULL ? (const void *)c->value.p : (const void *)"";
            out->len = e->value_len;
            out->version = e->version;
        }
    }
    pthread_rwlock_unlock(&in->lock);
    return rc;
}

/*
 * Entries are copied out under the read lock and the callback runs with
 * no lock held, so a callback may call into the store (even through
 * another connection of the same thread) without deadlocking.  The price
 * is memory proportional to what one scan returns; a bigger store would
 * copy in chunks and resume after the last key.
 */
static int kv_scan(rhema_storage_conn *c, const char *ns, const char *from_key,
                   const char *to_key, size_t limit, rhema_storage_scan_cb cb, void *ctx)
{
    rhema_storage_instance *in = c->inst;
    uint64_t now;
    size_t i, k;
    int rc = 0;

    if (!ns_valid(ns))
        return conn_error(c, RHEMA_EINVAL, "invalid namespace");
    if (cb == NULL)
        return conn_error(c, RHEMA_EINVAL, "NULL callback");
    c->scan_data.len = 0;
    c->scan_data.oom = 0;
    c->n_items = 0;

    pthread_rwlock_rdlock(&in->lock);
    now = in->host->monotonic_ns();
    /* "" sorts before every key: the first entry of ns when there is no lower bound */
    for (i = table_seek(in, ns, from_key != NULL ? from_key : "", NULL); i < in->n_entries; i++) {
        const struct kv_entry *e = &in->entries[i];
        struct scan_item *it;
        if (strcmp(e->ns, ns) != 0 || (to_key != NULL && strcmp(e->key, to_key) >= 0))
            break;
        if (entry_expired(e, now))
            continue;
        if (limit != 0 && c->n_items == limit)
            break;
        if (reserve((void **)&c->items, &c->cap_items, c->n_items + 1, sizeof *c->items) != 0) {
            c->scan_data.oom = 1;
            break;
        }
        it = &c->items[c->n_items++];
        it->key_off = c->scan_data.len;
        buf_put(&c->scan_data, e->key, strlen(e->key) + 1);
        it->value_off = c->scan_data.len;
        it->value_len = e->value_len;
        it->version = e->version;
        buf_put(&c->scan_data, e->value, e->value_len);
    }
    pthread_rwlock_unlock(&in->lock);
    if (c->scan_data.oom)
        return conn_error(c, RHEMA_ENOMEM, "out of memory");

    for (k = 0; k < c->n_items; k++) {
        const struct scan_item *it = &c->items[k];
        int r = cb(ctx, (const char *)c->scan_data.p + it->key_off,
                   c->scan_data.p + it->value_off, it->value_len, it->version);
        if (r > 0)
            break;  /* the caller has seen enough */
        if (r < 0) {
            rc = r; /* the caller's own code, passed through */
            break;
        }
    }
    return rc;
}

static int kv_stats(rhema_storage_conn *c, const char *ns, struct rhema_storage_stats *out)
{
    rhema_storage_instance *in = c->inst;
    uint64_t now, entries = 0, bytes = 0;
    size_t i;
    if (ns != NULL && !ns_valid(ns))
        return conn_error(c, RHEMA_EINVAL, "invalid namespace");
    pthread_rwlock_rdlock(&in->lock);
    now = in->host->monotonic_ns();
    for (i = ns != NULL ? table_seek(in, ns, "", NULL) : 0; i < in->n_entries; i++) {
        const struct kv_entry *e = &in->entries[i];
        if (ns != NULL && strcmp(e->ns, ns) != 0)
            break;
        if (entry_expired(e, now))
            continue;
        entries++;
        bytes += strlen(e->key) + e->value_len;
    }
    pthread_rwlock_unlock(&in->lock);
    out->entries = entries;
    out->bytes = bytes;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Writes: check, log, apply                                                */

/* Validate one write's arguments (no lock needed). */
/*
 * A write's flags (storage minor 3): only when the caller's struct has the
 * member -- a host built against an older minor has no flags, whatever
 * bytes follow its struct.
 */
static uint32_t write_flags(const struct rhema_storage_write *w)
{
    return w->size >= RHEMA_STORAGE_WRITE_SIZE_3 ? w->flags : 0;
}

static int is_sequenced(const struct rhema_storage_write *w)
{
    return (write_flags(w) & RHEMA_WRITE_SEQUENCED) != 0;
}

static int check_write(rhema_storage_conn *c, const struct rhema_storage_write *w)
{
    int rc;
    if (w == NULL)
        return conn_error(c, RHEMA_EINVAL, "NULL write");
    if (w->size < RHEMA_STORAGE_WRITE_SIZE_0)
        return conn_error(c, RHEMA_EINVAL, "write size %u is below minor 0's", (unsigned)w->size);
    if (w->op != RHEMA_WRITE_PUT && w->op != RHEMA_WRITE_DEL)
        return conn_error(c, RHEMA_EINVAL, "unknown write op %u", (unsigned)w->op);
    if ((write_flags(w) & ~(uint32_t)RHEMA_WRITE_SEQUENCED) != 0)
        return conn_error(c, RHEMA_EINVAL, "unknown write flags 0x%x", (unsigned)write_flags(w));
    if (is_sequenced(w)) {
        /* w->key is a prefix the version's 20 digits complete; the key is new */
        if (w->op != RHEMA_WRITE_PUT)
            return conn_error(c, RHEMA_EINVAL, "a sequenced write is a put");
        if (w->expected_version != RHEMA_VERSION_ANY && w->expected_version != RHEMA_VERSION_ABSENT)
            return conn_error(c, RHEMA_EINVAL, "a sequenced write expects no version");
        if (w->key == NULL ||
            strnlen(w->key, RHEMA_STORAGE_KEY_MAX) > RHEMA_STORAGE_KEY_MAX - RHEMA_SEQ_DIGITS)
            return conn_error(c, RHEMA_EINVAL, "invalid sequenced prefix (0..%d bytes)",
                              RHEMA_STORAGE_KEY_MAX - RHEMA_SEQ_DIGITS);
        if ((rc = check_ns_key(c, w->ns, "-")) != 0) /* the namespace */
            return rc;
    } else if ((rc = check_ns_key(c, w->ns, w->key)) != 0) {
        return rc;
    }
    if (w->op == RHEMA_WRITE_PUT && w->value == NULL && w->value_len > 0)
        return conn_error(c, RHEMA_EINVAL, "NULL value with a non-zero length");
    if (w->op == RHEMA_WRITE_DEL && w->expected_version == RHEMA_VERSION_ABSENT)
        return conn_error(c, RHEMA_EINVAL, "a delete cannot expect RHEMA_VERSION_ABSENT");
    return 0;
}

/*
 * Does write w's precondition hold, given whether its key exists and with
 * which version?  0, RHEMA_ECONFLICT, or RHEMA_ENOTFOUND (a delete of an
 * absent key).
 */
static int precondition(rhema_storage_conn *c, const struct rhema_storage_write *w, int exists,
                        uint64_t version)
{
    uint64_t want = w->expected_version;
    if (w->op == RHEMA_WRITE_DEL && !exists)
        return conn_error(c, RHEMA_ENOTFOUND, "key '%s' not found", w->key);
    if (want == RHEMA_VERSION_ANY)
        return 0;
    if (want == RHEMA_VERSION_ABSENT)
        return exists ? conn_error(c, RHEMA_ECONFLICT, "key '%s' exists (version %llu)", w->key,
                                   (unsigned long long)version)
                      : 0;
    if (!exists)
        return conn_error(c, RHEMA_ECONFLICT, "expected version %llu of '%s', which is absent",
                          (unsigned long long)want, w->key);
    if (version != want)
        return conn_error(c, RHEMA_ECONFLICT, "expected version %llu of '%s', found %llu",
                          (unsigned long long)want, w->key, (unsigned long long)version);
    return 0;
}

/*
 * The heart of the plugin: apply n writes all or nothing (put() and del()
 * are batches of one).  Write lock held throughout, in three steps:
 *
 *   1. check every precondition against the state as the batch itself
 *      leaves it (a later write sees the earlier ones), assigning versions;
 *      a sequenced write (storage minor 3) has no precondition: it takes
 *      the version of the put just before it (the record of that change)
 *      or the next one, and its key is its prefix and that version's 20
 *      digits, settled here so that the log holds the real key;
 *   2. prepare: copy every value and make room in the table, so that step
 *      3 cannot fail half way; encode the whole batch as one log frame and
 *      append it -- the commit point;
 *   3. apply to memory.
 *
 * A failure in 1 or 2 changes nothing, in memory or on disk.
 *
 * w is an array of the caller's stride: a host built against a later
 * storage minor passes larger elements, so element i is W(i)
 * (rhema_storage_write_at), never w[i].
 */
#define W(i) rhema_storage_write_at(w, (i))
#define KEY(i) (seq_keys[i] != NULL ? seq_keys[i] : W(i)->key) /* the key write i acts on */
static int apply_batch(rhema_storage_conn *c, struct rhema_storage_write *w, size_t n)
{
    rhema_storage_instance *in = c->inst;
    struct kv_entry *prepared = NULL;
    char **seq_keys = NULL; /* a sequenced write's key, else NULL */
    uint64_t now, counter;
    size_t i, j, puts = 0;
    int rc = 0;

    prepared = calloc(n, sizeof *prepared);
    seq_keys = calloc(n, sizeof *seq_keys);
    for (i = 0; prepared != NULL && seq_keys != NULL && i < n; i++)
        if (is_sequenced(W(i)) && (seq_keys[i] = malloc(RHEMA_STORAGE_KEY_MAX + 1)) == NULL)
            break;
    if (prepared == NULL || seq_keys == NULL || i < n) {
        for (j = 0; seq_keys != NULL && j < n; j++)
            free(seq_keys[j]);
        free(seq_keys);
        free(prepared);
        return conn_error(c, RHEMA_ENOMEM, "out of memory");
    }

    pthread_rwlock_wrlock(&in->lock);
    now = in->host->monotonic_ns();

    /* 1. preconditions; versions are handed out in order from the counter */
    counter = in->version_counter;
    for (i = 0; i < n && rc == 0; i++) {
        int exists = 0, decided = 0;
        uint64_t version = 0;
        if (seq_keys[i] != NULL) {
            int shares = i > 0 && W(i - 1)->op == RHEMA_WRITE_PUT && !is_sequenced(W(i - 1));
            W(i)->new_version = shares ? W(i - 1)->new_version : ++counter;
            snprintf(seq_keys[i], RHEMA_STORAGE_KEY_MAX + 1, "%s%020llu", W(i)->key,
                     (unsigned long long)W(i)->new_version);
            continue;
        }
        for (j = i; j-- > 0;) { /* the latest earlier write of this key decides */
            if (strcmp(W(j)->ns, W(i)->ns) == 0 && strcmp(KEY(j), KEY(i)) == 0) {
                exists = W(j)->op == RHEMA_WRITE_PUT;
                version = W(j)->new_version;
                decided = 1;
                break;
            }
        }
        if (!decided) {
            const struct kv_entry *e = table_find(in, W(i)->ns, KEY(i), now);
            exists = e != NULL;
            version = e != NULL ? e->version : 0;
        }
        rc = precondition(c, W(i), exists, version);
        W(i)->new_version = rc == 0 && W(i)->op == RHEMA_WRITE_PUT ? ++counter : 0;
    }

    /* 2. prepare and log */
    for (i = 0; i < n && rc == 0; i++) {
        if (W(i)->op != RHEMA_WRITE_PUT)
            continue;
        puts++;
        if (entry_init(&prepared[i], W(i)->ns, KEY(i), W(i)->value, W(i)->value_len) != 0)
            rc = conn_error(c, RHEMA_ENOMEM, "out of memory");
        prepared[i].version = W(i)->new_version;
        prepared[i].expires_ns = deadline_ns(now, W(i)->ttl_ms);
    }
    if (rc == 0 && reserve((void **)&in->entries, &in->cap_entries, in->n_entries + puts,
                           sizeof *in->entries) != 0)
        rc = conn_error(c, RHEMA_ENOMEM, "out of memory");
    if (rc == 0) {
        frame_begin(&c->frame);
        for (i = 0; i < n; i++) {
            if (W(i)->op == RHEMA_WRITE_PUT)
                rec_put(&c->frame, &prepared[i], wall_ms_of(in, prepared[i].expires_ns));
            else
                rec_del(&c->frame, W(i)->ns, KEY(i));
        }
        frame_end(&c->frame);
        rc = log_append(c);
    }

    /* 3. apply: nothing here can fail */
    if (rc == 0) {
        for (i = 0; i < n; i++) {
            if (W(i)->op == RHEMA_WRITE_PUT)
                table_set(in, &prepared[i]); /* the table owns it now */
            else
                table_remove(in, W(i)->ns, KEY(i));
        }
        in->version_counter = counter;
        if (++in->writes >= PURGE_EVERY) {
            in->writes = 0;
            table_purge(in, now);
        }
    }
    pthread_rwlock_unlock(&in->lock);

    if (rc != 0) {
        for (i = 0; i < n; i++) {
            W(i)->new_version = 0; /* nothing was stored */
            entry_release(&prepared[i]);
        }
    }
    for (i = 0; i < n; i++)
        free(seq_keys[i]);
    free(seq_keys);
    free(prepared);
    return rc;
}

static int kv_put(rhema_storage_conn *c, struct rhema_storage_write *w)
{
    int rc = check_write(c, w);
    if (rc != 0)
        return rc;
    if (w->op != RHEMA_WRITE_PUT)
        return conn_error(c, RHEMA_EINVAL, "put() takes RHEMA_WRITE_PUT only");
    return apply_batch(c, w, 1);
}

static int kv_del(rhema_storage_conn *c, const char *ns, const char *key, uint64_t expected_version)
{
    struct rhema_storage_write w = {.size = sizeof(struct rhema_storage_write),
                                    .op = RHEMA_WRITE_DEL,
                                    .ns = ns,
                                    .key = key,
                                    .expected_version = expected_version};
    int rc = check_write(c, &w);
    if (rc != 0)
        return rc;
    return apply_batch(c, &w, 1);
}

static int kv_batch(rhema_storage_conn *c, struct rhema_storage_write *w, size_t n)
{
    size_t i;
    int rc;
    if (n == 0)
        return 0;
    if (w == NULL)
        return conn_error(c, RHEMA_EINVAL, "NULL writes");
    for (i = 0; i < n; i++) /* an invalid write fails the batch before anything happens */
        if ((rc = check_write(c, W(i))) != 0)
            return rc;
    return apply_batch(c, w, n);
}

/* ------------------------------------------------------------------------ */
/* Leases                                                                   */

/*
 * The same three steps as a write: decide on a copy of the row, log the
 * new row, then store it.  This process is the backend, so "the backend's
 * clock" is the host's monotonic clock.  Epochs survive a restart because
 * every change of holder is logged with its epoch and rows are never
 * deleted.
 */
static int kv_lease(rhema_storage_conn *c, const char *name, const char *holder, uint64_t ttl_ms,
                    int op, struct rhema_lease_info *out)
{
    rhema_storage_instance *in = c->inst;
    struct kv_lease *row, cur, next; /* the row, its state now, its state after */
    uint64_t now;
    size_t holder_len = 0;
    int rc = 0, held, mine, changed = 0;

    /* arguments first */
    if (valid_key_len(name) == 0)
        return conn_error(c, RHEMA_EINVAL, "invalid lease name (1..%d bytes)",
                          RHEMA_STORAGE_KEY_MAX);
    if (op != RHEMA_LEASE_ACQUIRE && op != RHEMA_LEASE_RENEW && op != RHEMA_LEASE_RELEASE &&
        op != RHEMA_LEASE_QUERY)
        return conn_error(c, RHEMA_EINVAL, "unknown lease op %d", op);
    if (op != RHEMA_LEASE_QUERY) {
        holder_len = holder != NULL ? strnlen(holder, RHEMA_LEASE_HOLDER_MAX + 1) : 0;
        if (holder_len == 0 || holder_len > RHEMA_LEASE_HOLDER_MAX)
            return conn_error(c, RHEMA_EINVAL, "invalid lease holder (1..%d bytes)",
                              RHEMA_LEASE_HOLDER_MAX);
        if (op != RHEMA_LEASE_RELEASE && ttl_ms == 0)
            return conn_error(c, RHEMA_EINVAL, "a lease needs ttl_ms > 0");
    }

    pthread_rwlock_wrlock(&in->lock);
    now = in->host->monotonic_ns();
    row = op == RHEMA_LEASE_ACQUIRE ? lease_get(in, name) : lease_find(in, name);
    if (row == NULL && op == RHEMA_LEASE_ACQUIRE) {
        pthread_rwlock_unlock(&in->lock);
        return conn_error(c, RHEMA_ENOMEM, "out of memory");
    }
    held = row != NULL && row->holder[0] != '\0' && row->expires_ns > now;
    mine = held && holder != NULL && strcmp(row->holder, holder) == 0;
    if (row != NULL) {
        cur = *row;
        if (!held)
            cur.holder[0] = '\0'; /* expired: nobody holds it, the epoch stays */
    } else {
        memset(&cur, 0, sizeof cur); /* never held: epoch 0 */
    }
    next = cur;

    switch (op) {
    case RHEMA_LEASE_ACQUIRE:
        if (held && !mine) {
            rc = RHEMA_ECONFLICT;
            break;
        }
        if (!held) { /* a new holder: a new, larger epoch */
            next.epoch++;
            memcpy(next.holder, holder, holder_len + 1);
        }
        next.expires_ns = deadline_ns(now, ttl_ms);
        changed = 1;
        break;
    case RHEMA_LEASE_RENEW:
        if (!mine) {
            rc = RHEMA_ECONFLICT;
            break;
        }
        next.expires_ns = deadline_ns(now, ttl_ms);
        changed = 1;
        break;
    case RHEMA_LEASE_RELEASE:
        if (!mine) {
            rc = RHEMA_ECONFLICT;
            break;
        }
        next.holder[0] = '\0';
        next.expires_ns = 0;
        changed = 1;
        break;
    default: /* QUERY */
        if (!held)
            rc = RHEMA_ENOTFOUND;
        break;
    }

    if (rc == 0 && changed) {
        frame_begin(&c->frame);
        rec_lease(&c->frame, name, next.holder, next.epoch,
                  next.holder[0] ? wall_ms_of(in, next.expires_ns) : 0);
        frame_end(&c->frame);
        rc = log_append(c);
        if (rc == 0)
            *row = next;
    }
    if (out != NULL) {
        /* the state after the call, or the state that caused the failure */
        const struct kv_lease *shown = rc == 0 ? &next : &cur;
        memset(out, 0, sizeof *out);
        memcpy(out->holder, shown->holder, sizeof out->holder);
        out->epoch = shown->epoch;
        out->ttl_remaining_ms = shown->holder[0] ? remaining_ms(shown->expires_ns, now) : 0;
    }
    if (rc == RHEMA_ECONFLICT)
        conn_error(c, rc, "lease '%s' is held by '%s'", name, held ? row->holder : "nobody");
    else if (rc == RHEMA_ENOTFOUND)
        conn_error(c, rc, "lease '%s' is not held", name);
    pthread_rwlock_unlock(&in->lock);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Health, errors, backup                                                   */

/* The backend answers when its log is still open and writable. */
static int kv_health(rhema_storage_conn *c, char **err)
{
    rhema_storage_instance *in = c->inst;
    struct stat st;
    int ok;
    pthread_rwlock_rdlock(&in->lock);
    ok = !in->broken && fstat(in->fd, &st) == 0;
    pthread_rwlock_unlock(&in->lock);
    if (!ok)
        return in->host->set_error(err, RHEMA_EUNAVAIL, "kvfile: %s: the log is not writable",
                                   in->path);
    return 0;
}

static const char *kv_errmsg(rhema_storage_conn *c)
{
    return c != NULL ? c->err : "";
}

/*
 * A backup is a compacted log written under the read lock: a consistent
 * snapshot, and itself a valid kvfile log (restore = point `path` at it).
 */
static int kv_backup(rhema_storage_conn *c, const char *path, char **err)
{
    rhema_storage_instance *in = c->inst;
    int rc;
    if (path == NULL || path[0] == '\0')
        return in->host->set_error(err, RHEMA_EINVAL, "kvfile: backup: empty path");
    pthread_rwlock_rdlock(&in->lock);
    rc = write_snapshot(in, path, err);
    pthread_rwlock_unlock(&in->lock);
    if (rc != 0)
        conn_error(c, rc, "backup to %s failed", path);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* The vtable and the one exported symbol                                   */

static const struct rhema_storage_plugin kvfile_plugin = {
    /* abi_major, abi_minor, kind, size, name, version, description */
    .base = RHEMA_STORAGE_PLUGIN_HEADER(PLUGIN_NAME, PLUGIN_VERSION,
                                        "example: sorted array with an append-only log"),
    .features = RHEMA_STORAGE_DURABLE | RHEMA_STORAGE_TTL | RHEMA_STORAGE_LEASES |
                RHEMA_STORAGE_SEQUENCED,
    .open = kv_open,
    .close = kv_close,
    .connect = kv_connect,
    .disconnect = kv_disconnect,
    .get = kv_get,
    .put = kv_put,
    .del = kv_del,
    .batch = kv_batch,
    .scan = kv_scan,
    .lease = kv_lease,
    .health = kv_health,
    .stats = kv_stats,
    .errmsg = kv_errmsg,
    .backup = kv_backup, /* optional: NULL would mean ENOTSUP */
    /*
     * watch/unwatch (minor 3) stay NULL: one process owns the log, so no
     * other writer exists to wake anybody about; the host polls its feed
     * with scan().
     */
    .check = kv_check, /* minor 4, optional: rhemad -t checks the group without a file */
};

/*
 * The entry point: hand out the static vtable.  No allocation, no I/O;
 * the host checks the header and copies the table before using it.
 */
KV_EXPORT int rhema_plugin_init(const struct rhema_host *host, const struct rhema_plugin **out)
{
    (void)host;
    *out = &kvfile_plugin.base;
    return 0;
}
