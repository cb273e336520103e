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
#include <unistd.h>

#include "log.h"
#include "util.h"

static atomic_int log_level = RHEMA_LOG_INFO;
static atomic_int log_format = RHEMA_LOG_FORMAT_TEXT;
static atomic_int log_fd = STDERR_FILENO;
static int old_fd = -1; /* the previous file, closed on the reopen after */
static pthread_mutex_t reopen_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const level_names[] = {"error", "warn", "notice", "info", "debug"};

int rhema_log_open(int level, enum rhema_log_format format, const char *file, char **err)
{
    int fd = STDERR_FILENO;
    if (file && *file) {
        fd = open(file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (fd < 0) {
            return rhema_set_error(err, RHEMA_EIO, "cannot open log file %s: %s", file,
                                   strerror(errno));
        }
    }
    pthread_mutex_lock(&reopen_lock);
    int prev = atomic_exchange(&log_fd, fd);
    if (old_fd > STDERR_FILENO)
        close(old_fd); /* two reopens ago: no writer can still hold it */
    old_fd = prev;
    atomic_store(&log_level, level);
    atomic_store(&log_format, (int)format);
    pthread_mutex_unlock(&reopen_lock);
    return 0;
}

void rhema_log_close(void)
{
    pthread_mutex_lock(&reopen_lock);
    int prev = atomic_exchange(&log_fd, STDERR_FILENO);
    if (prev > STDERR_FILENO)
        close(prev);
    if (old_fd > STDERR_FILENO)
        close(old_fd);
    old_fd = -1;
    pthread_mutex_unlock(&reopen_lock);
}

int rhema_log_level(void) { return atomic_load(&log_level); }
void rhema_log_set_level(int level) { atomic_store(&log_level, level); }

/* Append s to buf as a JSON string body (without quotes), escaping as needed. */
static size_t json_escape(char *buf, size_t cap, size_t at, const char *s)
{
    for (; *s && at + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf[at++] = '\\';
            buf[at++] = (char)c;
        } else if (c == '\n') {
            buf[at++] = '\\';
            buf[at++] = 'n';
        } else if (c < 0x20) {
            at += (size_t)snprintf(buf + at, cap - at, "\\u%04x", c);
        } else {
            buf[at++] = (char)c;
        }
    }
    return at;
}

static void emit(char *line, size_t len)
{
    int fd = atomic_load(&log_fd);
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

void rhema_vlog(int level, const char *who, const char *fmt, va_list ap)
{
    if (level > atomic_load(&log_level))
        return;
    if (level < 0)
        level = 0;
    if (level > RHEMA_LOG_DEBUG)
        level = RHEMA_LOG_DEBUG;
    char msg[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);
    char ts[RHEMA_TIME_MAX];
    rhema_time_format(rhema_realtime_ms(), ts);

    char line[4096];
    size_t at;
    if (atomic_load(&log_format) == RHEMA_LOG_FORMAT_JSON) {
        at = (size_t)snprintf(line, sizeof line, "{\"time\":\"%s\",\"level\":\"%s\",\"module\":\"",
                              ts, level_names[level]);
        at = json_escape(line, sizeof line, at, who ? who : "rhemad");
        at += (size_t)snprintf(line + at, sizeof line - at, "\",\"msg\":\"");
        at = json_escape(line, sizeof line, at, msg);
        at += (size_t)snprintf(line + at, sizeof line - at, "\"}\n");
    } else {
        at = (size_t)snprintf(line, sizeof line, "%s [%s] %s: %s\n", ts, level_names[level],
                              who ? who : "rhemad", msg);
    }
    if (at >= sizeof line) {
        at = sizeof line;
        line[at - 1] = '\n';
    }
    emit(line, at);
}

void rhema_log(int level, const char *who, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    rhema_vlog(level, who, fmt, ap);
    va_end(ap);
}

void rhema_log_access(const char *request_id, const char *peer, const char *method,
                      const char *uri, int status, size_t bytes_out, double ms)
{
    if (RHEMA_LOG_INFO > atomic_load(&log_level))
        return;
    char ts[RHEMA_TIME_MAX];
    rhema_time_format(rhema_realtime_ms(), ts);
    char line[4096];
    size_t at;
    if (atomic_load(&log_format) == RHEMA_LOG_FORMAT_JSON) {
        at = (size_t)snprintf(line, sizeof line,
                              "{\"time\":\"%s\",\"level\":\"info\",\"module\":\"access\","
                              "\"request_id\":\"%s\",\"peer\":\"",
                              ts, request_id);
        at = json_escape(line, sizeof line, at, peer);
        at += (size_t)snprintf(line + at, sizeof line - at, "\",\"method\":\"%s\",\"uri\":\"",
                               method);
        at = json_escape(line, sizeof line, at, uri);
        at += (size_t)snprintf(line + at, sizeof line - at,
                               "\",\"status\":%d,\"bytes\":%zu,\"ms\":%.3f}\n", status, bytes_out,
                               ms);
    } else {
        at = (size_t)snprintf(line, sizeof line, "%s [info] access: %s %s \"%s %s\" %d %zu %.3fms\n",
                              ts, request_id, peer, method, uri, status, bytes_out, ms);
    }
    if (at >= sizeof line) {
        at = sizeof line;
        line[at - 1] = '\n';
    }
    emit(line, at);
}
