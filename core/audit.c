/*
 * audit -- the tamper-evident audit log: its writer thread (see audit.h).
 */
#include "rhema_build.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "audit.h"
#include "log.h"
#include "metrics/metrics.h"
#include "util.h"

#define TAIL_MAX 65536 /* the longest last line rhema_audit_open() resumes from */

/* Someone waiting for a record to be durable (on its own stack). */
struct waiter {
    int done;
    int rc;
};

/*
 * How long the writer lets a batch of records nobody waits for grow (with
 * batch_delay_ms 0): they become durable this much later, and a busy
 * server writes them with one write and one fdatasync per batch.
 */
#define UNWAITED_DELAY_MS 2
/* A thread's buffer larger than this is given back once the writer emptied it. */
#define TBUF_KEEP (1u << 20)

/*
 * A record in a thread's buffer: this header, then its text (the JSON
 * without its closing brace, audit_chain.h), padded to the header's
 * alignment.
 */
struct rec_hdr {
    size_t len;
    struct waiter *w;            /* NULL: nobody waits */
    struct rhema_audit_wait *aw; /* NULL: nobody is called back */
};
#define REC_SPAN(len)                                                                             \
    (sizeof(struct rec_hdr) + (((len) + sizeof(void *) - 1) & ~(sizeof(void *) - 1)))

/* One record as the writer seals it. */
struct item {
    const char *text;
    size_t len;
    struct waiter *w;
    struct rhema_audit_wait *aw;
};

/* A growing text (a record being built, a thread's buffer); oom set once an append failed. */
struct text {
    char *p;
    size_t len, cap;
    int oom;
};

/*
 * Each thread that writes records appends them to a buffer of its own,
 * under a lock nobody else takes but the writer, once a round, to swap the
 * buffer with an empty one: a record costs a worker no allocation, no
 * shared lock and, on a busy server, no wake-up (one mutex for every
 * worker and a malloc'd record freed on another thread cost about 4 us a
 * request).  Records of one thread stay in their order; the writer takes
 * the threads' buffers one after the other.  A buffer lives as long as its
 * thread (across a close and an open of the log); the writer frees it once
 * the thread has exited and it is empty.
 */
struct tbuf {
    pthread_mutex_t mu;
    struct text cur;   /* the thread appends (under mu) */
    struct text taken; /* the writer's: what it took last round */
    int dead;           /* the thread exited (under mu) */
    struct tbuf *next;  /* A.threads (under A.lock) */
};

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;    /* the writer: records queued, reopen, flush, stop */
    pthread_cond_t settled; /* the waiters: a round was written or failed */
    struct tbuf *threads;
    _Atomic uint64_t enqueued, taken; /* records, ever (enqueued under the thread's mu) */
    atomic_size_t urgent;             /* queued records someone waits for (a write's begin) */
    atomic_int writer_idle;           /* the writer waits for records: wake it */
    atomic_int writer_collecting;     /* the writer lets a batch grow: wake it when urgent */
    uint64_t rounds_begun, rounds_done; /* the writer's rounds (under lock) */
    int flush, reopen, stopping;        /* asked of the writer (under lock) */
    pthread_t thread;
    int thread_started;
    atomic_int open;    /* rhema_audit_open() succeeded, until close */
    atomic_int healthy; /* the last batch reached the file */
    /* the writer's own (and the opener's, before the thread starts) */
    int fd;
    dev_t dev;
    ino_t ino;
    char *path;
    struct rhema_audit_chain chain;
    char *buf;
    size_t cap;
    struct item *items;
    size_t n_items, items_cap;
    char last_error[RHEMA_ERRMSG_MAX];
    /* settings */
    int fail_closed, fsync;
    size_t batch_max;
    long delay_ms;
    unsigned char key[RHEMA_AUDIT_HMAC_KEY];
} A = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER,
    .settled = PTHREAD_COND_INITIALIZER,
    .fd = -1,
};

int rhema_audit_healthy(void) { return atomic_load(&A.healthy); }

size_t rhema_audit_queued(void)
{
    uint64_t t = atomic_load(&A.taken), e = atomic_load(&A.enqueued);
    return e > t ? (size_t)(e - t) : 0;
}

int rhema_audit_enabled(void)
{
    return atomic_load(&A.open);
}

void rhema_audit_hmac_value(const void *p, size_t n, char out[RHEMA_AUDIT_HMAC_TEXT])
{
    if (!atomic_load(&A.open)) {
        out[0] = '\0';
        return;
    }
    rhema_audit_hmac(A.key, p, n, out);
}

/* A new record with its time and type; NULL when out of memory. */
static json_t *record_new(const char *type)
{
    char ts[RHEMA_TIME_MAX];
    rhema_time_format(rhema_realtime_ms(), ts);
    return json_pack("{s:s,s:s}", "time", ts, "type", type);
}

static json_t *event_record(const char *event, const char *request_id, const char *key_id,
                            json_t *detail)
{
    json_t *o = record_new("event");
    if (!o || json_object_set_new(o, "event", json_string(event)) != 0 ||
        json_object_set_new(o, "request_id", request_id ? json_string(request_id) : json_null()) ||
        json_object_set_new(o, "key_id", key_id ? json_string(key_id) : json_null()) ||
        json_object_set_new(o, "detail", detail ? detail : json_object())) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* ---- the writer's side: files and batches ---- */

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/*
 * Seal the n records of v (in order) and write them to A.fd with one
 * write and one fdatasync.  On failure the file is cut back to where it
 * was and the chain is unchanged.  0 or RHEMA_EIO / RHEMA_ENOMEM (why in
 * A.last_error).
 */
static int write_records(const struct item *v, size_t nrec)
{
    struct rhema_audit_chain saved = A.chain;
    size_t len = 0;
    struct stat st;
    int rc;
    if (A.fd < 0) {
        rhema_metrics_count(RHEMA_MX_AUDIT_FAILED, nrec);
        return RHEMA_EIO; /* last_error says why */
    }
    for (size_t i = 0; i < nrec; i++)
        if ((rc = rhema_audit_seal_text(&A.chain, v[i].text, v[i].len, &A.buf, &len, &A.cap)) !=
            0) {
            rhema_metrics_count(RHEMA_MX_AUDIT_FAILED, nrec);
            A.chain = saved;
            rhema_set_errbuf(A.last_error, rc, "out of memory sealing an audit record");
            return rc;
        }
    uint64_t t0 = rhema_monotonic_ns(), t1 = 0, t2;
    int failed = fstat(A.fd, &st) != 0 || write_all(A.fd, A.buf, len) != 0;
    if (!failed) {
        t1 = rhema_monotonic_ns(); /* the write's end, the fsync's start */
        failed = A.fsync && fdatasync(A.fd) != 0;
    }
    if (failed) {
        rhema_metrics_count(RHEMA_MX_AUDIT_FAILED, nrec);
        rhema_set_errbuf(A.last_error, RHEMA_EIO, "writing the audit log %s: %s", A.path,
                         strerror(errno));
        if (ftruncate(A.fd, st.st_size) != 0) /* no half line before the next batch */
            rhema_log(RHEMA_LOG_ERROR, "audit", "cutting %s back after a failed write: %s", A.path,
                      strerror(errno));
        A.chain = saved;
        return RHEMA_EIO;
    }
    t2 = rhema_monotonic_ns();
    rhema_metrics_count(RHEMA_MX_AUDIT_RECORDS, nrec);
    rhema_metrics_count(RHEMA_MX_AUDIT_BYTES, len);
    rhema_metrics_count(RHEMA_MX_AUDIT_BATCHES, 1);
    rhema_metrics_observe(RHEMA_MXH_AUDIT_WRITE, t1 - t0);
    if (A.fsync)
        rhema_metrics_observe(RHEMA_MXH_AUDIT_FSYNC, t2 - t1);
    return 0;
}

/* Write one record now (writer thread, or before it starts); obj consumed. */
static int write_one(json_t *obj)
{
    struct item r = {0};
    char *text = NULL;
    int rc = RHEMA_ENOMEM;
    if (obj && (text = rhema_audit_body_text(obj, &r.len)) != NULL) {
        r.text = text;
        rc = write_records(&r, 1);
    } else {
        rhema_set_errbuf(A.last_error, rc, "out of memory");
    }
    free(text);
    json_decref(obj);
    return rc;
}

/*
 * Resume the chain from the last line of an existing file (startup): the
 * file must end with a newline and its last line must verify.
 */
static int resume_chain(int fd, off_t size, char **err)
{
    size_t n = size > TAIL_MAX ? TAIL_MAX : (size_t)size;
    char *tail = malloc(n + 1), why[RHEMA_ERRMSG_MAX], event[RHEMA_ID_MAX + 1];
    int rc;
    if (!tail)
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    if (pread(fd, tail, n, size - (off_t)n) != (ssize_t)n) {
        free(tail);
        return rhema_set_error(err, RHEMA_EIO, "reading the end of the audit log %s: %s", A.path,
                               strerror(errno));
    }
    if (tail[n - 1] != '\n') {
        free(tail);
        return rhema_set_error(err, RHEMA_ECORRUPT,
                               "the audit log %s ends inside a line (a crash during a write, or "
                               "tampering): check it with `rhemactl audit verify %s` and move it "
                               "aside",
                               A.path, A.path);
    }
    size_t start = n - 1;
    while (start > 0 && tail[start - 1] != '\n')
        start--;
    if (start == 0 && (off_t)n < size) {
        free(tail);
        return rhema_set_error(err, RHEMA_ECORRUPT,
                               "the last line of the audit log %s is longer than %d bytes", A.path,
                               TAIL_MAX);
    }
    rc = rhema_audit_line_read(tail + start, n - 1 - start, &A.chain.seq, A.chain.last, event, why);
    free(tail);
    if (rc)
        return rhema_set_error(err, rc,
                               "the last line of the audit log %s does not verify (%s): check it "
                               "with `rhemactl audit verify %s` and move it aside",
                               A.path, why, A.path);
    return 0;
}

/* Open A.path for appending; A.fd, A.dev, A.ino. */
static int open_file(int resume, char **err)
{
    struct stat st;
    int fd = open(A.path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return rhema_set_error(err, RHEMA_EIO, "cannot open the audit log %s: %s", A.path,
                               strerror(errno));
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return rhema_set_error(err, RHEMA_EIO, "the audit log %s is not a regular file", A.path);
    }
    if (resume && st.st_size > 0) {
        int rfd = open(A.path, O_RDONLY | O_CLOEXEC), rc;
        if (rfd < 0) {
            close(fd);
            return rhema_set_error(err, RHEMA_EIO, "cannot read the audit log %s: %s", A.path,
                                   strerror(errno));
        }
        rc = resume_chain(rfd, st.st_size, err);
        close(rfd);
        if (rc) {
            close(fd);
            return rc;
        }
    }
    A.fd = fd;
    A.dev = st.st_dev;
    A.ino = st.st_ino;
    return 0;
}

/* The record that begins each file (and each start of the daemon). */
static json_t *opened_record(const char *reason)
{
    char key_id[RHEMA_AUDIT_HASH_HEX + 1];
    rhema_audit_sha256_hex(A.key, sizeof A.key, key_id);
    key_id[16] = '\0'; /* names the HMAC key without revealing it */
    return event_record("audit.opened", NULL, NULL,
                        json_pack("{s:s,s:s,s:I,s:s,s:s}", "reason", reason, "file", A.path, "pid",
                                  (json_int_t)getpid(), "version", PACKAGE_VERSION, "hmac_key_id",
                                  key_id));
}

static json_t *closed_record(const char *reason)
{
    return event_record("audit.closed", NULL, NULL, json_pack("{s:s}", "reason", reason));
}

/*
 * Open A.path again and begin it with an "audit.opened" record linked to
 * the chain.  Writer thread only.  0 or a negative code (A.last_error).
 */
static int open_again(const char *reason)
{
    char *err = NULL;
    int rc = open_file(0, &err);
    if (rc) {
        rhema_set_errbuf(A.last_error, rc, "%s", err ? err : "cannot open the audit log");
        free(err);
        return rc;
    }
    if ((rc = write_one(opened_record(reason))) != 0) {
        close(A.fd);
        A.fd = -1;
    }
    return rc;
}

/* SIGUSR1, on the writer thread. */
static void do_reopen(void)
{
    struct stat st;
    int old = A.fd, rc;
    if (old >= 0 && stat(A.path, &st) == 0 && st.st_dev == A.dev && st.st_ino == A.ino) {
        rhema_log(RHEMA_LOG_INFO, "audit", "reopen: %s was not moved; writing on", A.path);
        return;
    }
    if (old >= 0) {
        /* close the old file first: the new one's first record must link to its last */
        char *err = NULL;
        struct rhema_audit_chain before = A.chain;
        A.fd = -1;
        rc = open_file(0, &err); /* the new file, to know before letting the old one go */
        if (rc) {
            rhema_log(RHEMA_LOG_ERROR, "audit", "reopen: %s%s", err ? err : "?",
                      A.fail_closed ? "; refusing requests (fail_closed) until it can be opened"
                                    : "; writing on to the old file");
            rhema_set_errbuf(A.last_error, rc, "%s", err ? err : "cannot open the audit log");
            free(err);
            A.fd = old;
            if (!A.fail_closed) {
                write_one(event_record("audit.reopen_failed", NULL, NULL,
                                       json_pack("{s:s}", "error", A.last_error)));
                return;
            }
            write_one(closed_record("reopen failed"));
            close(old);
            A.fd = -1;
            atomic_store(&A.healthy, 0);
            return;
        }
        int neu = A.fd;
        dev_t dev = A.dev;
        ino_t ino = A.ino;
        A.fd = old;
        if (write_one(closed_record("reopen")) != 0) {
            rhema_log(RHEMA_LOG_ERROR, "audit", "reopen: %s (the old file lacks its close record)",
                      A.last_error);
            A.chain = before;
        }
        close(old);
        A.fd = neu;
        A.dev = dev;
        A.ino = ino;
        if ((rc = write_one(opened_record("reopen"))) != 0) {
            rhema_log(RHEMA_LOG_ERROR, "audit", "reopen: %s", A.last_error);
            close(A.fd);
            A.fd = -1;
            atomic_store(&A.healthy, 0);
            return;
        }
    } else if ((rc = open_again("recovered")) != 0) {
        rhema_log(RHEMA_LOG_ERROR, "audit", "reopen: %s", A.last_error);
        return;
    }
    atomic_store(&A.healthy, 1);
    rhema_log(RHEMA_LOG_NOTICE, "audit", "reopened %s (the chain goes on at seq %llu)", A.path,
              (unsigned long long)A.chain.seq);
}

/* Hand each record's outcome to its waiter. */
static void settle(const struct item *v, size_t n, int rc)
{
    for (size_t i = 0; i < n; i++)
        if (v[i].aw)
            v[i].aw->done(v[i].aw, rc);
    int waited = 0;
    for (size_t i = 0; i < n && !waited; i++)
        waited = v[i].w != NULL;
    if (!waited)
        return; /* the round's end wakes flushers */
    pthread_mutex_lock(&A.lock);
    for (size_t i = 0; i < n; i++)
        if (v[i].w) {
            v[i].w->rc = rc;
            v[i].w->done = 1;
        }
    pthread_cond_broadcast(&A.settled);
    pthread_mutex_unlock(&A.lock);
}

/* One batch, on the writer thread. */
static void write_batch(const struct item *v, size_t n)
{
    int was = atomic_load(&A.healthy), rc;
    if (A.fd < 0 && open_again("recovered") == 0)
        rhema_log(RHEMA_LOG_NOTICE, "audit", "%s opened again", A.path);
    rc = write_records(v, n);
    atomic_store(&A.healthy, rc == 0);
    if (rc && was)
        rhema_log(RHEMA_LOG_ERROR, "audit", "%s%s", A.last_error,
                  A.fail_closed ? "; refusing requests (fail_closed)" : "; records are lost");
    else if (!rc && !was)
        rhema_log(RHEMA_LOG_NOTICE, "audit", "the audit log %s is written again", A.path);
    settle(v, n, rc);
}

/*
 * Index the records of a taken buffer into A.items; add to *urgent those
 * someone waits for, to *dropped those that could not be listed.
 */
static void index_records(const struct text *b, size_t *urgent, size_t *dropped)
{
    for (size_t off = 0; off < b->len;) {
        struct rec_hdr h;
        memcpy(&h, b->p + off, sizeof h);
        if (A.n_items == A.items_cap) {
            size_t ncap = A.items_cap ? A.items_cap * 2 : 256;
            struct item *nv = realloc(A.items, ncap * sizeof *nv);
            if (!nv) {
                /* cannot even list them: each is refused (a waiter must hear) */
                struct item one = {b->p + off + sizeof h, h.len, h.w, h.aw};
                rhema_metrics_count(RHEMA_MX_AUDIT_DROPPED, 1);
                settle(&one, 1, RHEMA_ENOMEM);
                *urgent += h.w || h.aw;
                ++*dropped;
                off += REC_SPAN(h.len);
                continue;
            }
            A.items = nv;
            A.items_cap = ncap;
        }
        A.items[A.n_items++] = (struct item){b->p + off + sizeof h, h.len, h.w, h.aw};
        *urgent += h.w || h.aw;
        off += REC_SPAN(h.len);
    }
}

/*
 * Wait for something to do (A.lock held): records, a reopen, a flush, the
 * stop.  The idle flag and the count are checked in the order the
 * appenders set them in reverse (see enqueue()), so no wake is lost.
 */
static void wait_for_work(void)
{
    while (atomic_load(&A.enqueued) == atomic_load(&A.taken) && !A.reopen && !A.flush &&
           !A.stopping) {
        atomic_store(&A.writer_idle, 1);
        if (atomic_load(&A.enqueued) != atomic_load(&A.taken)) {
            atomic_store(&A.writer_idle, 0);
            break;
        }
        pthread_cond_wait(&A.wake, &A.lock);
        atomic_store(&A.writer_idle, 0);
    }
}

/*
 * Let a batch grow (A.lock held): for batch_delay_ms when set; otherwise,
 * while nobody waits for a queued record (the end records of requests
 * already answered), for UNWAITED_DELAY_MS at most -- a record someone
 * waits for, a full batch, a reopen, a flush or the stop end it.
 */
static void collect(void)
{
    long delay = A.delay_ms > 0 ? A.delay_ms : UNWAITED_DELAY_MS;
    struct timespec until;
    if (atomic_load(&A.enqueued) == atomic_load(&A.taken))
        return; /* a reopen, a flush or the stop without records */
    rhema_deadline_after(CLOCK_REALTIME, (uint64_t)delay * 1000000u, &until);
    atomic_store(&A.writer_collecting, 1);
    while (atomic_load(&A.enqueued) - atomic_load(&A.taken) < A.batch_max && !A.stopping &&
           !A.reopen && !A.flush && (A.delay_ms > 0 || atomic_load(&A.urgent) == 0) &&
           pthread_cond_timedwait(&A.wake, &A.lock, &until) == 0)
        ;
    atomic_store(&A.writer_collecting, 0);
}

/*
 * One round (A.lock held on entry and on return): take every thread's
 * buffer, write what they held in batches of batch_max, then reopen when
 * asked (the records taken go to the old file).  1 once the log stops.
 */
static int round_(void)
{
    int reopen = A.reopen, stop = A.stopping;
    A.reopen = A.flush = 0;
    A.rounds_begun++;
    struct tbuf **pp = &A.threads;
    while (*pp) {
        struct tbuf *t = *pp;
        pthread_mutex_lock(&t->mu);
        int gone = t->dead && t->cur.len == 0;
        struct text b = t->cur;
        t->cur = t->taken; /* emptied last round */
        t->taken = b;
        pthread_mutex_unlock(&t->mu);
        if (gone) { /* its thread exited and it holds nothing */
            *pp = t->next;
            pthread_mutex_destroy(&t->mu);
            free(t->cur.p);
            free(t->taken.p);
            free(t);
            continue;
        }
        pp = &t->next;
    }
    /*
     * A thread's first record adds its buffer at the head of the list (under
     * A.lock, with nothing taken); only this thread takes buffers off it:
     * the list from here on stays as it is without the lock.
     */
    struct tbuf *first = A.threads;
    pthread_mutex_unlock(&A.lock);
    size_t urgent = 0, dropped = 0;
    A.n_items = 0;
    for (struct tbuf *t = first; t; t = t->next)
        index_records(&t->taken, &urgent, &dropped);
    if (A.n_items + dropped) {
        atomic_fetch_add(&A.taken, A.n_items + dropped);
        atomic_fetch_sub(&A.urgent, urgent);
        for (size_t i = 0; i < A.n_items; i += A.batch_max)
            write_batch(A.items + i,
                        A.n_items - i < A.batch_max ? A.n_items - i : A.batch_max);
    }
    for (struct tbuf *t = first; t; t = t->next) {
        t->taken.len = 0;
        if (t->taken.cap > TBUF_KEEP) { /* a burst is over: give its memory back */
            free(t->taken.p);
            t->taken = (struct text){0};
        }
    }
    if (reopen)
        do_reopen();
    pthread_mutex_lock(&A.lock);
    A.rounds_done++;
    pthread_cond_broadcast(&A.settled);
    return stop && atomic_load(&A.enqueued) == atomic_load(&A.taken);
}

static void *writer_main(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "rhema-audit");
    pthread_mutex_lock(&A.lock);
    for (;;) {
        wait_for_work();
        if (atomic_load(&A.urgent) == 0 || A.delay_ms > 0)
            collect();
        if (round_())
            break;
    }
    pthread_mutex_unlock(&A.lock);
    /* the last record of the file, after every record queued before the stop */
    int rc = write_one(closed_record("shutdown"));
    if (rc)
        rhema_log(RHEMA_LOG_ERROR, "audit", "closing: %s", A.last_error);
    return NULL;
}

/* ---- any thread ---- */

static pthread_once_t tbuf_once = PTHREAD_ONCE_INIT;
static pthread_key_t tbuf_key;
static int tbuf_key_ok;
static _Thread_local struct tbuf *my_tbuf;

/* The calling thread's record under construction (freed when the thread exits). */
static _Thread_local struct text my_text;

static void tbuf_exit(void *p)
{
    struct tbuf *t = p;
    free(my_text.p);
    my_text = (struct text){0};
    pthread_mutex_lock(&t->mu);
    t->dead = 1; /* the writer frees it once empty */
    pthread_mutex_unlock(&t->mu);
}

static void tbuf_key_make(void)
{
    tbuf_key_ok = pthread_key_create(&tbuf_key, tbuf_exit) == 0;
}

/* The calling thread's buffer, made on its first record; NULL without memory. */
static struct tbuf *tbuf_mine(void)
{
    if (my_tbuf)
        return my_tbuf;
    pthread_once(&tbuf_once, tbuf_key_make);
    struct tbuf *t = calloc(1, sizeof *t);
    if (!t || !tbuf_key_ok || pthread_mutex_init(&t->mu, NULL) != 0) {
        free(t);
        return NULL;
    }
    pthread_setspecific(tbuf_key, t);
    pthread_mutex_lock(&A.lock);
    t->next = A.threads;
    A.threads = t;
    pthread_mutex_unlock(&A.lock);
    return my_tbuf = t;
}

/* Wake the writer (a cond signal under its lock). */
static void wake_writer(void)
{
    pthread_mutex_lock(&A.lock);
    pthread_cond_signal(&A.wake);
    pthread_mutex_unlock(&A.lock);
}

/*
 * Queue a record: len bytes of text, copied.  With w, the caller then
 * waits for it; with aw, aw->done() is called once it settled (unless
 * RHEMA_ENOMEM is returned).
 */
/*
 * Append a record to t and count it (under t->mu: the writer never takes
 * a record it has not counted); the count before it in *before.  0 or
 * RHEMA_ENOMEM.
 */
static int tbuf_append(struct tbuf *t, const char *text, size_t len, struct waiter *w,
                       struct rhema_audit_wait *aw, uint64_t *before)
{
    int rc = 0;
    pthread_mutex_lock(&t->mu);
    size_t need = t->cur.len + REC_SPAN(len);
    if (need > t->cur.cap) {
        size_t ncap = t->cur.cap ? t->cur.cap : 16384;
        while (ncap < need)
            ncap *= 2;
        char *np = realloc(t->cur.p, ncap);
        if (np) {
            t->cur.p = np;
            t->cur.cap = ncap;
        } else {
            rc = RHEMA_ENOMEM;
        }
    }
    if (rc == 0) {
        struct rec_hdr h = {len, w, aw};
        memcpy(t->cur.p + t->cur.len, &h, sizeof h);
        memcpy(t->cur.p + t->cur.len + sizeof h, text, len);
        t->cur.len = need;
        *before = atomic_fetch_add(&A.enqueued, 1);
    }
    pthread_mutex_unlock(&t->mu);
    return rc;
}

static int enqueue(const char *text, size_t len, struct waiter *w, struct rhema_audit_wait *aw)
{
    struct tbuf *t = text ? tbuf_mine() : NULL;
    int urgent = w || aw;
    uint64_t before = 0;
    if (t && urgent) /* before the record can be taken: the writer subtracts it */
        atomic_fetch_add(&A.urgent, 1);
    if (!t || tbuf_append(t, text, len, w, aw, &before) != 0) {
        if (t && urgent)
            atomic_fetch_sub(&A.urgent, 1);
        rhema_metrics_count(RHEMA_MX_AUDIT_DROPPED, 1);
        return RHEMA_ENOMEM;
    }
    /*
     * Wake the writer for the first record it has not seen (it set idle
     * before looking at the count, and we look at idle after counting), and,
     * while it lets a batch grow, for a record someone waits for or a full
     * batch; not for every record: on a busy server each wake-up was a
     * futex call and a cross-CPU switch per request.
     */
    if (atomic_load(&A.writer_idle) && atomic_exchange(&A.writer_idle, 0))
        wake_writer();
    else if (atomic_load(&A.writer_collecting) &&
             (urgent || before + 1 - atomic_load(&A.taken) >= A.batch_max))
        wake_writer();
    if (!w)
        return 0;
    pthread_mutex_lock(&A.lock);
    while (!w->done)
        pthread_cond_wait(&A.settled, &A.lock);
    pthread_mutex_unlock(&A.lock);
    return w->rc;
}

/* Queue an object (consumed). */
static int enqueue_json(json_t *obj)
{
    size_t len = 0;
    char *text = obj ? rhema_audit_body_text(obj, &len) : NULL;
    json_decref(obj);
    int rc = enqueue(text, len, NULL, NULL);
    free(text);
    return rc;
}

static const char *outcome_of(int status)
{
    if (status < 400)
        return "ok";
    if (status == 401 || status == 403)
        return "denied";
    return status < 500 ? "rejected" : "failed";
}

static void put(struct text *t, const char *s, size_t n)
{
    if (t->oom)
        return;
    if (t->len + n + 1 > t->cap) {
        size_t ncap = t->cap ? t->cap * 2 : 1024; /* a request's record fits */
        while (ncap < t->len + n + 1)
            ncap *= 2;
        char *np = realloc(t->p, ncap);
        if (!np) {
            t->oom = 1;
            return;
        }
        t->p = np;
        t->cap = ncap;
    }
    memcpy(t->p + t->len, s, n);
    t->len += n;
    t->p[t->len] = '\0';
}

static void puts_(struct text *t, const char *s)
{
    put(t, s, strlen(s));
}

/*
 * A JSON string, or null.  Control characters are escaped; a byte above
 * 0x7f becomes U+FFFD, so that the line is valid UTF-8 whatever came in (a
 * client address or an id never has one; a role name from the
 * configuration might).
 */
static void put_str(struct text *t, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    if (!s) {
        puts_(t, "null");
        return;
    }
    put(t, "\"", 1);
    const char *run = s;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
            continue;
        put(t, run, (size_t)(s - run));
        run = s + 1;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            put(t, e, 2);
        } else if (c >= 0x80) {
            puts_(t, "\\ufffd");
        } else {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            put(t, e, 6);
        }
    }
    put(t, run, (size_t)(s - run));
    put(t, "\"", 1);
}

static void put_uint(struct text *t, const char *key, unsigned long long v)
{
    char num[24], *e = num + sizeof num, *d = e; /* snprintf costs more than the record */
    do {
        *--d = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(t, ",\"", 2);
    puts_(t, key);
    put(t, "\":", 2);
    put(t, d, (size_t)(e - d));
}

/*
 * A request's record, as text for enqueue() (the thread's own buffer,
 * valid until its next record; NULL when out of memory).  Written by hand,
 * not through jansson: one per request, on the worker's thread.
 */
static const char *request_record(const struct rhema_audit_request *a, const char *phase,
                                  size_t *len)
{
    char ts[RHEMA_TIME_MAX], hmac[RHEMA_AUDIT_HMAC_TEXT];
    struct text t = my_text;
    t.len = 0;
    t.oom = 0;
    rhema_time_format(rhema_realtime_ms(), ts);
    puts_(&t, "{\"time\":");
    put_str(&t, ts);
    puts_(&t, ",\"type\":\"request\",\"phase\":");
    put_str(&t, phase);
    puts_(&t, ",\"request_id\":");
    put_str(&t, a->request_id);
    puts_(&t, ",\"key_id\":");
    put_str(&t, a->key_id);
    puts_(&t, ",\"roles\":[");
    for (const char *p = a->roles ? a->roles : ""; *p;) { /* "a,b" -> ["a","b"] */
        size_t n = strcspn(p, ",");
        char role[512]; /* RHEMA_PRINCIPAL_ROLES_MAX */
        size_t k = n < sizeof role ? n : sizeof role - 1;
        memcpy(role, p, k);
        role[k] = '\0';
        if (p != a->roles)
            put(&t, ",", 1);
        put_str(&t, role);
        p += n + (p[n] == ',');
    }
    puts_(&t, "],\"client\":");
    put_str(&t, a->client ? a->client : "-");
    puts_(&t, ",\"method\":");
    put_str(&t, a->method);
    puts_(&t, ",\"route\":");
    put_str(&t, a->route);
    if (a->param && *a->param) {
        rhema_audit_hmac(A.key, a->param, strlen(a->param), hmac);
        puts_(&t, ",\"param\":");
        put_str(&t, hmac);
    }
    put_uint(&t, "bytes_in", a->bytes_in);
    if (a->bytes_in && a->body) {
        rhema_audit_hmac(A.key, a->body, a->bytes_in, hmac);
        puts_(&t, ",\"body\":");
        put_str(&t, hmac);
    }
    if (strcmp(phase, "end") == 0) {
        put_uint(&t, "status", (unsigned long long)(a->status < 0 ? 0 : a->status));
        put_uint(&t, "bytes_out", a->bytes_out);
        puts_(&t, ",\"outcome\":");
        put_str(&t, outcome_of(a->status));
    } else {
        puts_(&t, ",\"outcome\":\"pending\"");
    }
    my_text = t; /* its buffer, grown or not, for the next record */
    if (t.oom)
        return NULL;
    *len = t.len;
    return t.p;
}

int rhema_audit_request_begin(const struct rhema_audit_request *a, int writes,
                              char why[RHEMA_ERRMSG_MAX])
{
    struct waiter w = {0};
    int rc;
    if (!atomic_load(&A.open))
        return 0;
    if (!writes) {
        if (!A.fail_closed || atomic_load(&A.healthy))
            return 0;
        return rhema_set_errbuf(why, RHEMA_EIO, "the audit log cannot be written");
    }
    size_t len = 0;
    const char *text = request_record(a, "begin", &len);
    rc = enqueue(text, len, &w, NULL);
    if (rc && A.fail_closed)
        return rhema_set_errbuf(why, RHEMA_EIO,
                                "the audit record of this request could not be written");
    return 0;
}

int rhema_audit_request_submit(const struct rhema_audit_request *a, struct rhema_audit_wait *w)
{
    size_t len = 0;
    const char *text = request_record(a, "begin", &len);
    return enqueue(text, len, NULL, w);
}

int rhema_audit_fail_closed(void)
{
    return A.fail_closed;
}

void rhema_audit_flush(void)
{
    if (!atomic_load(&A.open))
        return;
    pthread_mutex_lock(&A.lock);
    /* every record queued before now is in a buffer the next round takes */
    uint64_t want = A.rounds_begun + 1;
    A.flush = 1;
    pthread_cond_signal(&A.wake);
    while (A.rounds_done < want)
        pthread_cond_wait(&A.settled, &A.lock);
    pthread_mutex_unlock(&A.lock);
}

void rhema_audit_request_end(const struct rhema_audit_request *a)
{
    size_t len = 0;
    if (!atomic_load(&A.open))
        return;
    const char *text = request_record(a, "end", &len);
    enqueue(text, len, NULL, NULL);
}

int rhema_audit_event(const char *event, const char *request_id, const char *key_id, json_t *detail)
{
    if (!atomic_load(&A.open)) {
        json_decref(detail);
        return 0;
    }
    enqueue_json(event_record(event, request_id, key_id, detail));
    return A.fail_closed && !atomic_load(&A.healthy) ? RHEMA_EIO : 0;
}

void rhema_audit_reopen(void)
{
    if (!atomic_load(&A.open))
        return;
    pthread_mutex_lock(&A.lock);
    A.reopen = 1; /* after the records queued by then (and those it finds with them) */
    pthread_cond_signal(&A.wake);
    pthread_mutex_unlock(&A.lock);
}

static void release(void)
{
    if (A.fd >= 0)
        close(A.fd);
    A.fd = -1;
    free(A.path);
    A.path = NULL;
    free(A.buf);
    A.buf = NULL;
    A.cap = 0;
    sodium_memzero(A.key, sizeof A.key);
}

int rhema_audit_settings_differ(const struct rhema_config *a, const struct rhema_config *b)
{
    static const char *const bools[] = {"security.audit.enabled", "security.audit.fail_closed",
                                        "security.audit.fsync"};
    static const char *const ints[] = {"security.audit.batch_max_records",
                                       "security.audit.batch_delay_ms"};
    static const char *const strs[] = {"security.audit.file", "security.audit.hmac_key_file"};
    for (size_t k = 0; k < sizeof bools / sizeof bools[0]; k++) {
        int x = 0, y = 0;
        rhema_config_get_bool(a, bools[k], &x);
        rhema_config_get_bool(b, bools[k], &y);
        if (x != y)
            return 1;
    }
    for (size_t k = 0; k < sizeof ints / sizeof ints[0]; k++) {
        int64_t x = 0, y = 0;
        rhema_config_get_int(a, ints[k], &x);
        rhema_config_get_int(b, ints[k], &y);
        if (x != y)
            return 1;
    }
    for (size_t k = 0; k < sizeof strs / sizeof strs[0]; k++) {
        const char *x = "", *y = "";
        rhema_config_get_string(a, strs[k], &x);
        rhema_config_get_string(b, strs[k], &y);
        if (strcmp(x ? x : "", y ? y : "") != 0)
            return 1;
    }
    return 0;
}

int rhema_audit_open(const struct rhema_config *cfg, char **err)
{
    int enabled = 0, b = 0, rc;
    int64_t i = 0;
    const char *file = NULL, *key_file = NULL;
    char *key_path = NULL;
    rhema_config_get_bool(cfg, "security.audit.enabled", &enabled);
    if (!enabled || atomic_load(&A.open))
        return 0;
    rhema_config_get_string(cfg, "security.audit.file", &file);
    rhema_config_get_string(cfg, "security.audit.hmac_key_file", &key_file);
    rhema_config_get_bool(cfg, "security.audit.fail_closed", &b);
    A.fail_closed = b;
    rhema_config_get_bool(cfg, "security.audit.fsync", &b);
    A.fsync = b;
    rhema_config_get_int(cfg, "security.audit.batch_max_records", &i);
    A.batch_max = (size_t)i;
    rhema_config_get_int(cfg, "security.audit.batch_delay_ms", &i);
    A.delay_ms = (long)i;
    pthread_mutex_lock(&A.lock);
    for (struct tbuf *t = A.threads; t; t = t->next) { /* records queued while closed: none */
        pthread_mutex_lock(&t->mu);
        t->cur.len = 0;
        pthread_mutex_unlock(&t->mu);
    }
    atomic_store(&A.enqueued, 0);
    atomic_store(&A.taken, 0);
    atomic_store(&A.urgent, 0);
    A.rounds_begun = A.rounds_done = 0;
    A.reopen = A.flush = A.stopping = 0;
    pthread_mutex_unlock(&A.lock);
    if (!(A.path = strdup(file))) {
        rc = rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
        goto fail;
    }
    if (key_file && *key_file)
        key_path = strdup(key_file);
    else if (asprintf(&key_path, "%s.key", file) < 0)
        key_path = NULL;
    if (!key_path) {
        rc = rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
        goto fail;
    }
    if ((rc = rhema_audit_key_load(key_path, 1, A.key, err)) != 0)
        goto fail;
    rhema_audit_chain_init(&A.chain);
    if ((rc = open_file(1, err)) != 0)
        goto fail;
    if ((rc = write_one(opened_record("start"))) != 0) {
        rc = rhema_set_error(err, rc, "%s", A.last_error);
        goto fail;
    }
    if (pthread_create(&A.thread, NULL, writer_main, NULL) != 0) {
        rc = rhema_set_error(err, RHEMA_ENOMEM, "cannot start the audit writer thread");
        goto fail;
    }
    A.thread_started = 1;
    atomic_store(&A.healthy, 1);
    atomic_store(&A.open, 1);
    rhema_log(RHEMA_LOG_NOTICE, "audit", "audit log %s open at seq %llu (fail_closed %s, fsync %s)",
              A.path, (unsigned long long)A.chain.seq, A.fail_closed ? "on" : "off",
              A.fsync ? "on" : "off");
    free(key_path);
    return 0;
fail:
    free(key_path);
    release();
    return rc;
}

void rhema_audit_close(void)
{
    if (!atomic_load(&A.open))
        return;
    pthread_mutex_lock(&A.lock);
    A.stopping = 1; /* the writer ends the file with "audit.closed" */
    pthread_cond_signal(&A.wake);
    pthread_mutex_unlock(&A.lock);
    pthread_join(A.thread, NULL);
    A.thread_started = 0;
    atomic_store(&A.open, 0);
    release();
}
