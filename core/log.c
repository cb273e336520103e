/*
 * log -- one formatted line per call, written with a single write(2) so that
 * lines from different threads never interleave.  The sink (fd, level,
 * format) is swapped atomically on reopen: a reader takes a reference under
 * a tiny mutex-free scheme of "old fd stays open until the next reopen".
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
#include <syslog.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

static atomic_int log_level = RHEMA_LOG_INFO;
static atomic_int log_format = RHEMA_LOG_FORMAT_TEXT;
static atomic_int log_fd = STDERR_FILENO;
static int old_fd = -1; /* the previous file, closed on the reopen after */
static pthread_mutex_t reopen_lock = PTHREAD_MUTEX_INITIALIZER;
static char *log_path; /* the file open, NULL: stderr; under reopen_lock */

static const char *const level_names[] = {"error", "warn", "notice", "info", "debug"};
static void flush_repeats(void);

/*
 * Until the daemon is up, errors and warnings also go to stderr when the
 * log is a file (tee_stderr), so that a start that fails says why on the
 * terminal.  After a daemon has let go of its terminal, "no log file"
 * means syslog (detached), since stderr is /dev/null then.
 */
static atomic_int tee_stderr;
static atomic_int use_syslog;
static int detached;

/*
 * Under systemd, stderr is often a stream to journald, which stamps each
 * line itself and reads a leading "<N>" as its syslog priority
 * (sd-daemon(3): SD_ERR "<3>" ... SD_DEBUG "<7>").  systemd says so by
 * setting $JOURNAL_STREAM to that stream's "device:inode"; a stderr that
 * does not match it (redirected by a shell, inherited by a child) is not
 * the journal.  Checked at each rhema_log_open().
 */
static atomic_int journal;

static int stderr_is_journal(void)
{
    const char *e = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    char tail;
    struct stat st;
    if (!e || sscanf(e, "%llu:%llu%c", &dev, &ino, &tail) != 2 || fstat(STDERR_FILENO, &st) != 0)
        return 0;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

const char *rhema_log_level_name(int level)
{
    if (level < 0 || level > RHEMA_LOG_DEBUG)
        return "?";
    return level_names[level];
}

void rhema_log_tee_stderr(int on) { atomic_store(&tee_stderr, on); }

int rhema_log_open(int level, enum rhema_log_format format, const char *file, char **err)
{
    int fd = STDERR_FILENO;
    if (!(file && *file) && detached) {
        pthread_mutex_lock(&reopen_lock);
        atomic_store(&use_syslog, 1);
        atomic_store(&log_level, level);
        atomic_store(&log_format, (int)format);
        free(log_path); /* SIGUSR1 has no file to reopen */
        log_path = NULL;
        pthread_mutex_unlock(&reopen_lock);
        return 0;
    }
    if (file && *file) {
        fd = open(file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (fd < 0) {
            return rhema_set_error(err, RHEMA_EIO, "cannot open log file %s: %s", file,
                                   strerror(errno));
        }
    }
    char *path = file && *file ? strdup(file) : NULL;
    if (file && *file && !path) {
        close(fd);
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    }
    pthread_mutex_lock(&reopen_lock);
    int prev = atomic_exchange(&log_fd, fd);
    if (old_fd > STDERR_FILENO)
        close(old_fd); /* two reopens ago: no writer can still hold it */
    old_fd = prev;
    free(log_path);
    log_path = path;
    atomic_store(&log_level, level);
    atomic_store(&log_format, (int)format);
    atomic_store(&use_syslog, 0);
    atomic_store(&journal, stderr_is_journal());
    pthread_mutex_unlock(&reopen_lock);
    return 0;
}

void rhema_log_detach(void)
{
    pthread_mutex_lock(&reopen_lock);
    detached = 1;
    atomic_store(&tee_stderr, 0);
    atomic_store(&journal, 0); /* stderr becomes /dev/null */
    /* also with a log file: a reload may take it away and fall back to syslog */
    openlog("rhemad", LOG_PID | LOG_NDELAY, LOG_DAEMON);
    if (atomic_load(&log_fd) == STDERR_FILENO)
        atomic_store(&use_syslog, 1);
    pthread_mutex_unlock(&reopen_lock);
}

void rhema_log_close(void)
{
    flush_repeats(); /* a count still pending goes into the file being closed */
    pthread_mutex_lock(&reopen_lock);
    int prev = atomic_exchange(&log_fd, STDERR_FILENO);
    if (prev > STDERR_FILENO)
        close(prev);
    if (old_fd > STDERR_FILENO)
        close(old_fd);
    old_fd = -1;
    if (detached)
        closelog();
    atomic_store(&use_syslog, 0);
    detached = 0;
    free(log_path);
    log_path = NULL;
    pthread_mutex_unlock(&reopen_lock);
}

int rhema_log_reopen(char **err)
{
    pthread_mutex_lock(&reopen_lock);
    char *path = log_path ? strdup(log_path) : NULL;
    int none = !log_path;
    pthread_mutex_unlock(&reopen_lock);
    if (none)
        return 0;
    if (!path)
        return rhema_set_error(err, RHEMA_ENOMEM, "out of memory");
    int rc = rhema_log_open(atomic_load(&log_level), (enum rhema_log_format)atomic_load(&log_format),
                            path, err);
    free(path);
    return rc;
}

void rhema_log_set_level(int level) { atomic_store(&log_level, level); }

/*
 * Log lines carry text a client chose (a URI, an id in a message), so a
 * line must never let it forge fields or reach a terminal as control
 * codes, and a JSON line must stay one valid JSON object however long the
 * text.  Each field is escaped into a bounded room of its own, never cut
 * inside an escape or a UTF-8 character; a cut field ends in "...".
 *
 * Both: bytes that are not UTF-8 become U+FFFD.  JSON: '"', '\\' and
 * control bytes escaped.  Text: control bytes, DEL and (in quoted fields)
 * '"' and '\\' as \xNN, as nginx writes its access log.
 */
#define FIELD_MSG 3072 /* room for an escaped message */
#define FIELD_URI 2048 /* for an escaped URI */
#define FIELD_SHORT 160 /* for a module name, a peer, a request id */

static size_t escape_field(char *dst, size_t room, const char *s, int json, int quoted)
{
    char clean[FIELD_MSG];
    size_t at = 0, used;
    const char *p = clean;
    /* valid UTF-8 first: JSON readers refuse anything else, terminals misread it */
    rhema_utf8_copy(clean, sizeof clean, s, strlen(s), 0);
    for (; *p; p += used) {
        unsigned char c = (unsigned char)*p;
        char e[8];
        size_t n = 1;
        used = 1;
        if (json && (c == '"' || c == '\\'))
            n = (size_t)snprintf(e, sizeof e, "\\%c", c);
        else if (json && c == '\n')
            n = (size_t)snprintf(e, sizeof e, "\\n");
        else if (json && c < 0x20)
            n = (size_t)snprintf(e, sizeof e, "\\u%04x", c);
        else if (!json && (c < 0x20 || c == 0x7f || (quoted && (c == '"' || c == '\\'))))
            n = (size_t)snprintf(e, sizeof e, "\\x%02X", c);
        else { /* a character, kept whole when it is several UTF-8 bytes */
            e[0] = (char)c;
            while (c >= 0xC0 && n < 4 && ((unsigned char)p[n] & 0xC0) == 0x80) {
                e[n] = p[n];
                n++;
            }
            used = n;
        }
        if (at + n + 4 > room) { /* no room for it and the "..." mark */
            memcpy(dst + at, "...", 3);
            at += 3;
            break;
        }
        memcpy(dst + at, e, n);
        at += n;
    }
    dst[at] = '\0';
    return at;
}

static void write_all(int fd, const char *line, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, line, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return; /* nowhere left to report it */
        }
        line += n;
        len -= (size_t)n;
    }
}

/*
 * Write one line to the sink.  `body` is where the line goes on after its
 * timestamp (syslog stamps lines itself); level picks the syslog priority
 * and whether the line is also copied to stderr.
 */
static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_NOTICE, LOG_INFO, LOG_DEBUG};

/*
 * To stderr when it is the journal: "<N>" and the line after its timestamp
 * (in place of the timestamp's last bytes; a JSON line, which has no room
 * before it, is copied), in one write as every line is.
 */
static void write_journal(int level, char *line, size_t len, size_t body)
{
    char buf[8192];
    if (body >= 3) {
        line[body - 3] = '<';
        line[body - 2] = (char)('0' + prio[level]);
        line[body - 1] = '>';
        write_all(STDERR_FILENO, line + body - 3, len - body + 3);
    } else if (len - body + 3 <= sizeof buf) {
        buf[0] = '<';
        buf[1] = (char)('0' + prio[level]);
        buf[2] = '>';
        memcpy(buf + 3, line + body, len - body);
        write_all(STDERR_FILENO, buf, len - body + 3);
    } else {
        write_all(STDERR_FILENO, line, len);
    }
}

static void emit(int level, char *line, size_t len, size_t body)
{
    if (atomic_load(&use_syslog)) {
        line[len - 1] = '\0'; /* the newline */
        syslog(prio[level], "%s", line + body);
        return;
    }
    int fd = atomic_load(&log_fd),
        tee = fd != STDERR_FILENO && level <= RHEMA_LOG_WARN && atomic_load(&tee_stderr);
    if (fd != STDERR_FILENO)
        write_all(fd, line, len);
    if ((fd == STDERR_FILENO || tee) && atomic_load(&journal))
        write_journal(level, line, len, body);
    else if (fd == STDERR_FILENO || tee)
        write_all(STDERR_FILENO, line, len);
}

/*
 * Repeated lines, as syslogd folds them: a warning or an error identical to
 * the line before it (same level, module and message), coming within
 * REPEAT_BURST_MS of it, is counted, not written, and the
 * count is written as "last message repeated N times" before the next
 * different line, or at the latest every REPEAT_FLUSH_MS while the
 * repetition goes on.  A client can make a line repeat as fast as the loop
 * turns (an accept error at the descriptor limit): the log stays small.
 */
#define REPEAT_FLUSH_MS 30000
#define REPEAT_BURST_MS 1000 /* a line repeated after this long is no burst */

static pthread_mutex_t repeat_lock = PTHREAD_MUTEX_INITIALIZER;
static char repeat_last[FIELD_MSG + FIELD_SHORT + 16];
static unsigned long repeat_count;
static uint64_t repeat_since_ms;
static uint64_t repeat_seen_ms; /* when the last line was logged */
static int repeat_level;
static char repeat_who[FIELD_SHORT];

static void emit_repeats(int json)
{
    char line[FIELD_SHORT + 192], ts[RHEMA_TIME_MAX];
    rhema_time_format(rhema_realtime_ms(), ts);
    int at = json ? snprintf(line, sizeof line,
                             "{\"time\":\"%s\",\"level\":\"%s\",\"module\":\"%s\","
                             "\"msg\":\"last message repeated %lu times\"}\n",
                             ts, level_names[repeat_level], repeat_who, repeat_count)
                  : snprintf(line, sizeof line, "%s [%s] %s: last message repeated %lu times\n", ts,
                             level_names[repeat_level], repeat_who, repeat_count);
    if (at > 0)
        emit(repeat_level, line, (size_t)at < sizeof line ? (size_t)at : sizeof line - 1,
             json ? 0 : strlen(ts) + 1);
    repeat_count = 0;
}

static void flush_repeats(void)
{
    pthread_mutex_lock(&repeat_lock);
    if (repeat_count)
        emit_repeats(atomic_load(&log_format) == RHEMA_LOG_FORMAT_JSON);
    repeat_last[0] = '\0';
    pthread_mutex_unlock(&repeat_lock);
}

/* 1 when the line is a repeat to count instead of writing; writes the pending count otherwise. */
static int repeated(int level, const char *ewho, const char *emsg, int json)
{
    char key[sizeof repeat_last];
    snprintf(key, sizeof key, "%d|%s|%s", level, ewho, emsg);
    uint64_t now = rhema_realtime_ms();
    /* only a burst is folded: a line that comes back after a pause (a
     * second reload, say) is written again, so that it can be seen */
    int same = level <= RHEMA_LOG_WARN && strcmp(key, repeat_last) == 0 &&
               now - repeat_seen_ms < REPEAT_BURST_MS;
    repeat_seen_ms = now;
    if (same) {
        if (repeat_count++ == 0)
            repeat_since_ms = now;
        if (now - repeat_since_ms >= REPEAT_FLUSH_MS)
            emit_repeats(json);
        return 1;
    }
    if (repeat_count)
        emit_repeats(json);
    snprintf(repeat_last, sizeof repeat_last, "%s", key);
    repeat_level = level;
    snprintf(repeat_who, sizeof repeat_who, "%s", ewho);
    return 0;
}

void rhema_vlog(int level, const char *who, const char *fmt, va_list ap)
{
    if (level > atomic_load(&log_level))
        return;
    if (level < 0)
        level = 0;
    if (level > RHEMA_LOG_DEBUG)
        level = RHEMA_LOG_DEBUG;
    int json = atomic_load(&log_format) == RHEMA_LOG_FORMAT_JSON;
    char msg[FIELD_MSG], emsg[FIELD_MSG], ewho[FIELD_SHORT], ts[RHEMA_TIME_MAX];
    char line[FIELD_MSG + FIELD_SHORT + 128];
    vsnprintf(msg, sizeof msg, fmt, ap);
    rhema_time_format(rhema_realtime_ms(), ts);
    escape_field(emsg, sizeof emsg, msg, json, 0);
    escape_field(ewho, sizeof ewho, who ? who : "rhemad", json, 0);
    int at = json ? snprintf(line, sizeof line,
                             "{\"time\":\"%s\",\"level\":\"%s\",\"module\":\"%s\",\"msg\":\"%s\"}\n",
                             ts, level_names[level], ewho, emsg)
                  : snprintf(line, sizeof line, "%s [%s] %s: %s\n", ts, level_names[level], ewho,
                             emsg);
    rhema_log_flush(); /* this thread's access lines pending come first */
    pthread_mutex_lock(&repeat_lock);
    if (at > 0 && !repeated(level, ewho, emsg, json)) /* the fields are bounded: the line fits */
        emit(level, line, (size_t)at < sizeof line ? (size_t)at : sizeof line - 1,
             json ? 0 : strlen(ts) + 1);
    pthread_mutex_unlock(&repeat_lock);
}

void rhema_log(int level, const char *who, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    rhema_vlog(level, who, fmt, ap);
    va_end(ap);
}

/*
 * Access lines in batches.  A thread that turned batching on (a worker:
 * rhema_log_batch()) keeps its access lines in a buffer of its own and
 * writes them with one write(2) when rhema_log_flush() is called (the
 * worker does at the end of each loop turn that logged one), when the
 * buffer is full, and before any other line of the same thread, so a
 * thread's lines keep their order.  A write per request was a syscall per
 * request (dear on a VM) and nginx's `buffer=` does the same; what is
 * given up is the interleaving, to the line, of two threads' lines within
 * one loop turn.  The lines are kept as a plain file takes them; the
 * flush writes them in the form of the sink it finds (the journal's, line
 * by line to syslog), so a reopen between the two costs nothing.
 */
#define BATCH_BYTES 16384

static _Thread_local struct {
    int on;
    int json; /* the format of the lines pending */
    size_t len;
    char buf[BATCH_BYTES];
} batch;

void rhema_log_batch(int on)
{
    if (!on)
        rhema_log_flush();
    batch.on = on;
}

/* Where the text after the timestamp starts in a pending line. */
static size_t batch_body(const char *line, size_t len)
{
    const char *sp = batch.json ? NULL : memchr(line, ' ', len);
    return sp ? (size_t)(sp - line) + 1 : 0;
}

void rhema_log_flush(void)
{
    char *p = batch.buf, *end = batch.buf + batch.len;
    int fd = atomic_load(&log_fd);
    if (batch.len == 0)
        return;
    batch.len = 0;
    if (!atomic_load(&use_syslog) && !(fd == STDERR_FILENO && atomic_load(&journal))) {
        write_all(fd, p, (size_t)(end - p));
        return;
    }
    if (atomic_load(&use_syslog)) {
        while (p < end) {
            char *nl = memchr(p, '\n', (size_t)(end - p));
            size_t n = (size_t)(nl - p) + 1;
            emit(RHEMA_LOG_INFO, p, n, batch_body(p, n));
            p += n;
        }
        return;
    }
    /* the journal: "<6>" and each line after its timestamp, 4 KiB a write */
    char out[4096];
    size_t at = 0;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = (size_t)(nl - p) + 1, body = batch_body(p, n);
        if (at + 3 + n - body > sizeof out) {
            write_all(STDERR_FILENO, out, at);
            at = 0;
        }
        if (3 + n - body > sizeof out) { /* a line longer than out: as emit() writes it */
            write_journal(RHEMA_LOG_INFO, p, n, body);
        } else {
            memcpy(out + at, "<6>", 3);
            memcpy(out + at + 3, p + body, n - body);
            at += 3 + n - body;
        }
        p += n;
    }
    if (at)
        write_all(STDERR_FILENO, out, at);
}

int rhema_log_access(const char *request_id, const char *peer, const char *method,
                     const char *uri, int status, size_t bytes_out, double ms)
{
    if (RHEMA_LOG_INFO > atomic_load(&log_level))
        return 0;
    int json = atomic_load(&log_format) == RHEMA_LOG_FORMAT_JSON;
    char ts[RHEMA_TIME_MAX], eid[FIELD_SHORT], epeer[FIELD_SHORT], emethod[FIELD_SHORT],
        euri[FIELD_URI];
    char line[FIELD_URI + 4 * FIELD_SHORT + 160];
    rhema_time_format(rhema_realtime_ms(), ts);
    escape_field(eid, sizeof eid, request_id, json, 1);
    escape_field(epeer, sizeof epeer, peer, json, 1);
    escape_field(emethod, sizeof emethod, method, json, 1);
    escape_field(euri, sizeof euri, uri, json, 1);
    int at = json ? snprintf(line, sizeof line,
                             "{\"time\":\"%s\",\"level\":\"info\",\"module\":\"access\","
                             "\"request_id\":\"%s\",\"peer\":\"%s\",\"method\":\"%s\","
                             "\"uri\":\"%s\",\"status\":%d,\"bytes\":%zu,\"ms\":%.3f}\n",
                             ts, eid, epeer, emethod, euri, status, bytes_out, ms)
                  : snprintf(line, sizeof line, "%s [info] access: %s %s \"%s %s\" %d %zu %.3fms\n",
                             ts, eid, epeer, emethod, euri, status, bytes_out, ms);
    if (at <= 0)
        return 0;
    size_t len = (size_t)at < sizeof line ? (size_t)at : sizeof line - 1;
    if (!batch.on) {
        emit(RHEMA_LOG_INFO, line, len, json ? 0 : strlen(ts) + 1);
        return 0;
    }
    if (batch.len && (batch.json != json || batch.len + len > sizeof batch.buf))
        rhema_log_flush();
    int first = batch.len == 0;
    memcpy(batch.buf + batch.len, line, len); /* len < sizeof line < BATCH_BYTES */
    batch.len += len;
    batch.json = json;
    return first;
}
