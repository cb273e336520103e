/*
 * rate_file -- rate() state in a shared memory-mapped file (rate_file.h
 * says what it promises and how it locks).
 *
 * The mapped header is checked under the lock at every step (a few loads,
 * no system call), so a file that another process reinitialized is seen
 * before any slot is touched; a bad header sends the step to the slow path
 * (fstat, reinitialize or remap).  A step then makes two system calls,
 * the OFD lock and its release (an uncontended mutex makes none).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "rate_file.h"
#include "rate_table.h"

#define RF_MAGIC "RHEMARTF" /* 8 bytes, no NUL */
#define RF_VERSION 1u

struct rf_header {
    char magic[8];
    uint32_t version;
    uint32_t slot_size;
    uint64_t capacity;
    uint64_t seed;
    uint32_t header_size;
    uint32_t probe;
};

struct rf_slot {
    uint64_t hash;
    int64_t rest; /* every tat passed at this instant: the slot is free for any key */
    int64_t tat[RHEMA_RATE_WINDOWS_MAX];
    uint32_t used; /* 0: never used (ends a lookup) */
    uint16_t key_len;
    uint16_t n;
    char key[RHEMA_RATE_KEY_MAX];
};

_Static_assert(sizeof(struct rf_slot) == RHEMA_RATE_FILE_SLOT_SIZE, "slot layout");
_Static_assert(sizeof(struct rf_header) <= RHEMA_RATE_FILE_HEADER_SIZE, "header layout");

struct rhema_rate_file {
    pthread_mutex_t lock;
    int fd;
    char *path;
    const struct rhema_host *host;
    const char *plugin;
    unsigned char *map;
    size_t map_len;
    size_t capacity; /* of the mapping */
};

static size_t file_len(size_t capacity)
{
    return RHEMA_RATE_FILE_HEADER_SIZE + capacity * sizeof(struct rf_slot);
}

static void rf_log(struct rhema_rate_file *f, int level, const char *fmt, ...)
    RHEMA_PRINTF_LIKE(3, 4);

static void rf_log(struct rhema_rate_file *f, int level, const char *fmt, ...)
{
    if (f->host == NULL || f->host->vlog == NULL)
        return;
    va_list ap;
    va_start(ap, fmt);
    f->host->vlog(level, f->plugin, fmt, ap);
    va_end(ap);
}

static int ofd_lock(int fd, short type)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    while (fcntl(fd, type == F_UNLCK ? F_OFD_SETLK : F_OFD_SETLKW, &fl) != 0)
        if (errno != EINTR)
            return -errno;
    return 0;
}

static uint64_t fresh_seed(void)
{
    uint64_t s = 0;
    if (getrandom(&s, sizeof s, GRND_NONBLOCK) != (ssize_t)sizeof s) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        s = ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) ^
            ((uint64_t)getpid() << 32);
    }
    return s;
}

/* FNV-1a from a per-file seed, then a 64-bit finalizer (murmur3's) to spread it. */
static uint64_t hash_key(uint64_t seed, const char *k, size_t len)
{
    uint64_t h = 1469598103934665603ull ^ seed;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)k[i]) * 1099511628211ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

/*
 * How the file at f->fd looks (under the lock): 0 this handle's layout,
 * 1 a valid file of another capacity (*other set), -1 anything else (why
 * in *what).
 */
static int inspect(struct rhema_rate_file *f, size_t *other, const char **what)
{
    struct stat st;
    struct rf_header h;
    if (fstat(f->fd, &st) != 0) {
        *what = "fstat failed";
        return -1;
    }
    if ((size_t)st.st_size < sizeof h) {
        *what = st.st_size == 0 ? "empty" : "truncated header";
        return -1;
    }
    if (f->map != NULL) /* maps offset 0 whenever the file is not empty */
        memcpy(&h, f->map, sizeof h);
    else if (pread(f->fd, &h, sizeof h, 0) != (ssize_t)sizeof h) {
        *what = "unreadable header";
        return -1;
    }
    if (memcmp(h.magic, RF_MAGIC, sizeof h.magic) != 0) {
        *what = "not a rate file (bad magic)";
        return -1;
    }
    if (h.version != RF_VERSION || h.slot_size != sizeof(struct rf_slot) ||
        h.header_size != RHEMA_RATE_FILE_HEADER_SIZE || h.probe != RHEMA_RATE_FILE_PROBE) {
        *what = "another layout version";
        return -1;
    }
    if (h.capacity < RHEMA_RATE_FILE_CAPACITY_MIN || h.capacity > RHEMA_RATE_FILE_CAPACITY_MAX) {
        *what = "capacity out of range";
        return -1;
    }
    if ((uint64_t)st.st_size != file_len((size_t)h.capacity)) {
        *what = "size does not match its header (truncated or grown)";
        return -1;
    }
    if (h.capacity != f->capacity) {
        *other = (size_t)h.capacity;
        return 1;
    }
    return 0;
}

/* Map capacity slots of the file (replacing any mapping).  0 or -errno. */
static int remap(struct rhema_rate_file *f, size_t capacity)
{
    size_t len = file_len(capacity);
    void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, f->fd, 0);
    if (m == MAP_FAILED)
        return -errno;
    if (f->map != NULL)
        munmap(f->map, f->map_len);
    f->map = m;
    f->map_len = len;
    f->capacity = capacity;
    return 0;
}

/*
 * Empty the file and write a fresh header for `capacity` slots (under the
 * lock).  The old pages are dropped by the truncation to 0; the magic is
 * written last, so a crash half-way leaves a file the next opener
 * reinitializes.  0 or -errno.
 */
static int reinit(struct rhema_rate_file *f, size_t capacity)
{
    struct rf_header h;
    memset(&h, 0, sizeof h);
    h.version = RF_VERSION;
    h.slot_size = sizeof(struct rf_slot);
    h.capacity = capacity;
    h.seed = fresh_seed();
    h.header_size = RHEMA_RATE_FILE_HEADER_SIZE;
    h.probe = RHEMA_RATE_FILE_PROBE;
    if (ftruncate(f->fd, 0) != 0 || ftruncate(f->fd, (off_t)file_len(capacity)) != 0)
        return -errno;
    if (pwrite(f->fd, &h, sizeof h, 0) != (ssize_t)sizeof h)
        return errno ? -errno : -EIO;
    if (pwrite(f->fd, RF_MAGIC, 8, 0) != 8)
        return errno ? -errno : -EIO;
    return 0;
}

/*
 * The mapped header is this handle's layout (under the lock).  What every
 * step checks: the header is in the mapping, so another process's
 * reinitialization (a fresh header, or another capacity) is seen without a
 * system call.  A syscall costs microseconds on a virtual machine, as
 * much as the rest of the step; the file's size is therefore checked
 * (fstat) only at open and when the header looks wrong.
 */
static int header_ok(const struct rhema_rate_file *f)
{
    const struct rf_header *h = (const struct rf_header *)(const void *)f->map;
    return memcmp(h->magic, RF_MAGIC, sizeof h->magic) == 0 && h->version == RF_VERSION &&
           h->slot_size == sizeof(struct rf_slot) &&
           h->header_size == RHEMA_RATE_FILE_HEADER_SIZE && h->probe == RHEMA_RATE_FILE_PROBE &&
           h->capacity == f->capacity;
}

/*
 * Make the mapping match a valid file (under both locks): follow another
 * capacity, reinitialize anything else (to `want` slots).  0 or -errno,
 * with *what saying which step failed.
 */
static int ensure(struct rhema_rate_file *f, size_t want, int at_open, const char **what)
{
    size_t other = 0;
    const char *bad = NULL;
    int rc, st;
    if (!at_open && header_ok(f))
        return 0; /* the fast path: no system call */
    st = inspect(f, &other, &bad);
    if (st == 0 && f->map != NULL)
        return 0;
    if (st == 1 && !at_open) {
        rf_log(f, RHEMA_LOG_NOTICE, "%s: another process made it %zu slots (this one had %zu)",
               f->path, other, f->capacity);
        if ((rc = remap(f, other)) != 0)
            *what = "rate file: mmap failed";
        return rc;
    }
    if (st == 0) {
        if ((rc = remap(f, f->capacity)) != 0)
            *what = "rate file: mmap failed";
        return rc;
    }
    if (st == 1)
        rf_log(f, RHEMA_LOG_WARN, "%s: %zu slots, reinitialized with %zu: limits restart",
               f->path, other, want);
    else if (!(at_open && strcmp(bad, "empty") == 0))
        rf_log(f, RHEMA_LOG_WARN, "%s: %s: reinitialized (rate state, not data: limits restart)",
               f->path, bad);
    if ((rc = reinit(f, want)) != 0) {
        *what = "rate file: reinitializing it failed";
        return rc;
    }
    if ((rc = remap(f, want)) != 0)
        *what = "rate file: mmap failed";
    return rc;
}

static int lock_both(struct rhema_rate_file *f)
{
    pthread_mutex_lock(&f->lock);
    int rc = ofd_lock(f->fd, F_WRLCK);
    if (rc != 0)
        pthread_mutex_unlock(&f->lock);
    return rc;
}

static void unlock_both(struct rhema_rate_file *f)
{
    ofd_lock(f->fd, F_UNLCK);
    pthread_mutex_unlock(&f->lock);
}

int rhema_rate_file_open(const char *path, size_t capacity, const struct rhema_host *host,
                         const char *plugin, struct rhema_rate_file **out, char *err,
                         size_t errcap)
{
    struct rhema_rate_file *f;
    struct stat st;
    const char *what = NULL;
    int rc;

    if (capacity < RHEMA_RATE_FILE_CAPACITY_MIN || capacity > RHEMA_RATE_FILE_CAPACITY_MAX) {
        snprintf(err, errcap, "rate file %s: capacity %zu is not in %d..%zu", path, capacity,
                 RHEMA_RATE_FILE_CAPACITY_MIN, RHEMA_RATE_FILE_CAPACITY_MAX);
        return RHEMA_EINVAL;
    }
    if ((f = calloc(1, sizeof *f)) == NULL || (f->path = strdup(path)) == NULL) {
        free(f);
        snprintf(err, errcap, "rate file %s: out of memory", path);
        return RHEMA_ENOMEM;
    }
    f->host = host;
    f->plugin = plugin;
    f->capacity = capacity;
    pthread_mutex_init(&f->lock, NULL);
    f->fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (f->fd < 0) {
        snprintf(err, errcap, "rate file %s: open: %s", path, strerror(errno));
        goto fail;
    }
    if (fstat(f->fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errcap, "rate file %s: not a regular file", path);
        goto fail;
    }
    if ((rc = lock_both(f)) != 0) {
        snprintf(err, errcap, "rate file %s: lock: %s", path, strerror(-rc));
        goto fail;
    }
    rc = ensure(f, capacity, 1, &what);
    unlock_both(f);
    if (rc != 0) {
        snprintf(err, errcap, "%s: %s: %s", path, what, strerror(-rc));
        goto fail;
    }
    *out = f;
    return 0;
fail:
    rhema_rate_file_close(f);
    return RHEMA_EIO;
}

void rhema_rate_file_close(struct rhema_rate_file *f)
{
    if (f == NULL)
        return;
    if (f->map != NULL)
        munmap(f->map, f->map_len);
    if (f->fd >= 0)
        close(f->fd);
    pthread_mutex_destroy(&f->lock);
    free(f->path);
    free(f);
}

static struct rf_slot *slot_at(struct rhema_rate_file *f, size_t i)
{
    return (struct rf_slot *)(void *)(f->map + RHEMA_RATE_FILE_HEADER_SIZE) + i;
}

int rhema_rate_file_apply(struct rhema_rate_file *f, struct rhema_rate_query *q,
                          const char **why)
{
    const char *bad = rhema_rate_query_invalid(q), *what = NULL;
    int rc;
    if (bad) {
        if (why)
            *why = bad;
        return RHEMA_EINVAL;
    }
    size_t len = strlen(q->key);
    if ((rc = lock_both(f)) != 0) {
        rf_log(f, RHEMA_LOG_ERROR, "%s: lock: %s", f->path, strerror(-rc));
        if (why)
            *why = "rate file: the lock failed";
        return RHEMA_EIO;
    }
    if ((rc = ensure(f, f->capacity, 0, &what)) != 0) {
        unlock_both(f);
        rf_log(f, RHEMA_LOG_ERROR, "%s: %s: %s", f->path, what, strerror(-rc));
        if (why)
            *why = what;
        return RHEMA_EIO;
    }
    const struct rf_header *h = (const struct rf_header *)(void *)f->map;
    uint64_t hash = hash_key(h->seed, q->key, len);
    size_t cap = f->capacity, start = (size_t)(hash % cap);
    struct rf_slot *mine = NULL, *free_slot = NULL, *victim = NULL;
    for (size_t i = 0; i < RHEMA_RATE_FILE_PROBE && i < cap; i++) {
        struct rf_slot *s = slot_at(f, (start + i) % cap);
        if (!s->used) { /* never used: the key is not further on */
            if (!free_slot)
                free_slot = s;
            break;
        }
        if (s->hash == hash && s->key_len == len && memcmp(s->key, q->key, len) == 0) {
            mine = s;
            break;
        }
        if (s->rest <= q->now_us) {
            if (!free_slot)
                free_slot = s;
        } else if (!victim || s->rest < victim->rest) {
            victim = s;
        }
    }
    int fresh = !mine || mine->n != q->n || mine->rest <= q->now_us;
    int64_t rest = rhema_gcra_step(q, fresh ? NULL : mine->tat);
    struct rf_slot *s = mine ? mine : free_slot ? free_slot : victim;
    if (s && (mine || q->allowed)) {
        if (!mine) {
            s->hash = hash;
            s->key_len = (uint16_t)len;
            memcpy(s->key, q->key, len);
        }
        s->n = (uint16_t)q->n;
        memcpy(s->tat, q->tat_us, sizeof s->tat);
        s->rest = rest;
        s->used = 1;
    }
    unlock_both(f);
    return 0;
}

long rhema_rate_file_live(struct rhema_rate_file *f, int64_t now)
{
    const char *what = NULL;
    long n = 0;
    if (lock_both(f) != 0)
        return -1;
    if (ensure(f, f->capacity, 0, &what) != 0) {
        unlock_both(f);
        return -1;
    }
    for (size_t i = 0; i < f->capacity; i++) {
        const struct rf_slot *s = slot_at(f, i);
        n += s->used && s->rest > now;
    }
    unlock_both(f);
    return n;
}

size_t rhema_rate_file_capacity(struct rhema_rate_file *f)
{
    pthread_mutex_lock(&f->lock);
    size_t c = f->capacity;
    pthread_mutex_unlock(&f->lock);
    return c;
}
