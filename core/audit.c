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

#define TAIL_MAX 65536 /* the longest last line rhema_audit_open() resumes from */

/* Someone waiting for a record to be durable (on its own stack). */
struct waiter {
    int done;
    int rc;
};

struct rec {
    struct rec *next;
    json_t *obj;
    struct waiter *w; /* NULL: nobody waits */
};

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;   /* the writer: records queued, reopen, stop */
    pthread_cond_t settled; /* the waiters: a batch was written or failed */
    struct rec *head, **tail;
    size_t queued;
    uint64_t enqueued, taken; /* records, ever */
    uint64_t reopen_at;       /* the reopen comes after this many records */
    int reopen, stopping;
    pthread_t thread;
    int thread_started;
    atomic_int open;       /* rhema_audit_open() succeeded, until close */
    atomic_int healthy;    /* the last batch reached the file */
    /* the writer's own (and the opener's, before the thread starts) */
    int fd;
    dev_t dev;
    ino_t ino;
    char *path;
    struct rhema_audit_chain chain;
    char *buf;
    size_t cap;
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

int rhema_audit_enabled(void) { return atomic_load(&A.open); }

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
 * Seal `n` records of list (in order) and write them to A.fd with one
 * write and one fdatasync.  On failure the file is cut back to where it
 * was and the chain is unchanged.  0 or RHEMA_EIO / RHEMA_ENOMEM (why in
 * A.last_error).
 */
static int write_records(json_t *const *objs, size_t n)
{
    struct rhema_audit_chain saved = A.chain;
    size_t len = 0;
    struct stat st;
    int rc;
    if (A.fd < 0)
        return RHEMA_EIO; /* last_error says why */
    for (size_t i = 0; i < n; i++)
        if ((rc = rhema_audit_seal(&A.chain, objs[i], &A.buf, &len, &A.cap)) != 0) {
            A.chain = saved;
            rhema_set_errbuf(A.last_error, rc, "out of memory sealing an audit record");
            return rc;
        }
    if (fstat(A.fd, &st) != 0 || write_all(A.fd, A.buf, len) != 0 ||
        (A.fsync && fdatasync(A.fd) != 0)) {
        rhema_set_errbuf(A.last_error, RHEMA_EIO, "writing the audit log %s: %s", A.path,
                         strerror(errno));
        if (ftruncate(A.fd, st.st_size) != 0) /* no half line before the next batch */
            rhema_log(RHEMA_LOG_ERROR, "audit", "cutting %s back after a failed write: %s",
                      A.path, strerror(errno));
        A.chain = saved;
        return RHEMA_EIO;
    }
    return 0;
}

static int write_one(json_t *obj)
{
    int rc = obj ? write_records(&obj, 1) : RHEMA_ENOMEM;
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
                               "the last line of the audit log %s is longer than %d bytes",
                               A.path, TAIL_MAX);
    }
    rc = rhema_audit_line_read(tail + start, n - 1 - start, &A.chain.seq, A.chain.last, event,
                               why);
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
                                  (json_int_t)getpid(), "version", PACKAGE_VERSION,
                                  "hmac_key_id", key_id));
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

/* Hand each record's outcome to its waiter and free the list. */
static void settle(struct rec *list, int rc)
{
    pthread_mutex_lock(&A.lock);
    for (struct rec *r = list; r; r = r->next)
        if (r->w) {
            r->w->rc = rc;
            r->w->done = 1;
        }
    pthread_cond_broadcast(&A.settled);
    pthread_mutex_unlock(&A.lock);
    while (list) {
        struct rec *r = list;
        list = r->next;
        json_decref(r->obj);
        free(r);
    }
}

/* One batch, on the writer thread. */
static void write_batch(struct rec *list, size_t n)
{
    json_t *stack_objs[64] = {0};
    json_t **objs = n <= 64 ? stack_objs : calloc(n, sizeof *objs);
    int was = atomic_load(&A.healthy), rc;
    size_t i = 0;
    if (A.fd < 0 && open_again("recovered") == 0)
        rhema_log(RHEMA_LOG_NOTICE, "audit", "%s opened again", A.path);
    if (!objs) {
        rc = RHEMA_ENOMEM;
        rhema_set_errbuf(A.last_error, rc, "out of memory");
    } else {
        for (struct rec *r = list; r; r = r->next)
            objs[i++] = r->obj;
        rc = write_records(objs, i);
        if (objs != stack_objs)
            free(objs);
    }
    atomic_store(&A.healthy, rc == 0);
    if (rc && was)
        rhema_log(RHEMA_LOG_ERROR, "audit", "%s%s", A.last_error,
                  A.fail_closed ? "; refusing requests (fail_closed)" : "; records are lost");
    else if (!rc && !was)
        rhema_log(RHEMA_LOG_NOTICE, "audit", "the audit log %s is written again", A.path);
    settle(list, rc);
}

static void *writer_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&A.lock);
    for (;;) {
        while (!A.head && !A.reopen && !A.stopping)
            pthread_cond_wait(&A.wake, &A.lock);
        if (A.head && A.delay_ms > 0 && A.queued < A.batch_max && !A.stopping) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += (A.delay_ms % 1000) * 1000000L;
            until.tv_sec += A.delay_ms / 1000 + until.tv_nsec / 1000000000L;
            until.tv_nsec %= 1000000000L;
            while (A.queued < A.batch_max && !A.stopping &&
                   pthread_cond_timedwait(&A.wake, &A.lock, &until) == 0)
                ;
        }
        int reopen = A.reopen;
        size_t limit = A.batch_max;
        if (reopen && A.reopen_at - A.taken < limit)
            limit = (size_t)(A.reopen_at - A.taken); /* what came before the signal, first */
        if (reopen && A.reopen_at - A.taken > limit)
            reopen = 0; /* more old records than one batch: the next round */
        A.reopen = A.reopen && !reopen;
        struct rec *list = A.head, **end = &A.head;
        size_t n = 0;
        while (*end && n < limit) {
            end = &(*end)->next;
            n++;
        }
        A.head = *end;
        *end = NULL;
        if (!A.head)
            A.tail = &A.head;
        A.queued -= n;
        A.taken += n;
        int stop = A.stopping && !A.head;
        pthread_mutex_unlock(&A.lock);
        if (n) /* with a reopen: the records queued before it, for the old file */
            write_batch(list, n);
        if (reopen)
            do_reopen();
        pthread_mutex_lock(&A.lock);
        if (stop && !A.head)
            break;
    }
    pthread_mutex_unlock(&A.lock);
    return NULL;
}

/* ---- any thread ---- */

/* Queue a record (consumed); with w, the caller then waits for it. */
static int enqueue(json_t *obj, struct waiter *w)
{
    struct rec *r = obj ? malloc(sizeof *r) : NULL;
    if (!r) {
        json_decref(obj);
        return RHEMA_ENOMEM;
    }
    r->next = NULL;
    r->obj = obj;
    r->w = w;
    pthread_mutex_lock(&A.lock);
    *A.tail = r;
    A.tail = &r->next;
    A.queued++;
    A.enqueued++;
    pthread_cond_signal(&A.wake);
    if (w)
        while (!w->done)
            pthread_cond_wait(&A.settled, &A.lock);
    pthread_mutex_unlock(&A.lock);
    return w ? w->rc : 0;
}

static const char *outcome_of(int status)
{
    if (status < 400)
        return "ok";
    if (status == 401 || status == 403)
        return "denied";
    return status < 500 ? "rejected" : "failed";
}

static json_t *request_record(const struct rhema_audit_request *a, const char *phase)
{
    char hmac[RHEMA_AUDIT_HMAC_TEXT];
    json_t *o = record_new("request"), *roles = json_array();
    if (!o || !roles)
        goto fail;
    for (size_t i = 0; i < a->n_roles; i++)
        if (json_array_append_new(roles, json_string(a->roles[i])) != 0)
            goto fail;
    if (json_object_set_new(o, "phase", json_string(phase)) ||
        json_object_set_new(o, "request_id", json_string(a->request_id)) ||
        json_object_set_new(o, "key_id", a->key_id ? json_string(a->key_id) : json_null()) ||
        json_object_set_new(o, "roles", roles))
        goto fail_o;
    if (json_object_set_new(o, "client", json_string(a->client ? a->client : "-")) ||
        json_object_set_new(o, "method", json_string(a->method)) ||
        json_object_set_new(o, "route", a->route ? json_string(a->route) : json_null()))
        goto fail_o;
    if (a->param && *a->param) {
        rhema_audit_hmac(A.key, a->param, strlen(a->param), hmac);
        if (json_object_set_new(o, "param", json_string(hmac)))
            goto fail_o;
    }
    if (json_object_set_new(o, "bytes_in", json_integer((json_int_t)a->bytes_in)))
        goto fail_o;
    if (a->bytes_in && a->body) {
        rhema_audit_hmac(A.key, a->body, a->bytes_in, hmac);
        if (json_object_set_new(o, "body", json_string(hmac)))
            goto fail_o;
    }
    if (strcmp(phase, "end") == 0) {
        if (json_object_set_new(o, "status", json_integer(a->status)) ||
            json_object_set_new(o, "bytes_out", json_integer((json_int_t)a->bytes_out)) ||
            json_object_set_new(o, "outcome", json_string(outcome_of(a->status))))
            goto fail_o;
    } else if (json_object_set_new(o, "outcome", json_string("pending"))) {
        goto fail_o;
    }
    return o;
fail:
    json_decref(roles);
fail_o:
    json_decref(o);
    return NULL;
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
    rc = enqueue(request_record(a, "begin"), &w);
    if (rc && A.fail_closed)
        return rhema_set_errbuf(why, RHEMA_EIO,
                                "the audit record of this request could not be written");
    return 0;
}

void rhema_audit_request_end(const struct rhema_audit_request *a)
{
    if (atomic_load(&A.open))
        enqueue(request_record(a, "end"), NULL);
}

int rhema_audit_event(const char *event, const char *request_id, const char *key_id,
                      json_t *detail)
{
    if (!atomic_load(&A.open)) {
        json_decref(detail);
        return 0;
    }
    enqueue(event_record(event, request_id, key_id, detail), NULL);
    return A.fail_closed && !atomic_load(&A.healthy) ? RHEMA_EIO : 0;
}

void rhema_audit_reopen(void)
{
    if (!atomic_load(&A.open))
        return;
    pthread_mutex_lock(&A.lock);
    A.reopen = 1;
    A.reopen_at = A.enqueued;
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
    A.head = NULL;
    A.tail = &A.head;
    A.queued = 0;
    A.enqueued = A.taken = A.reopen_at = 0;
    A.reopen = A.stopping = 0;
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
    enqueue(closed_record("shutdown"), NULL);
    pthread_mutex_lock(&A.lock);
    A.stopping = 1;
    pthread_cond_signal(&A.wake);
    pthread_mutex_unlock(&A.lock);
    pthread_join(A.thread, NULL);
    A.thread_started = 0;
    atomic_store(&A.open, 0);
    release();
}
