/*
 * audit -- the tamper-evident audit log (security.audit).
 *
 * One JSON line per request and per administrative event, chained by hash
 * (audit_chain.h: the line format and the verifier).  Workers hand records
 * to one writer thread, which seals them in order, writes each batch with
 * one write(2) and makes it durable with one fdatasync(2) (group fsync, as
 * core/commit.c does for sessions).
 *
 * A request that changes state (a route declared as a write) has two
 * records: a "begin" record written and made durable BEFORE its handler
 * runs (rhema_audit_request_submit() calls back once it is; the blocking
 * rhema_audit_request_begin() returns once it is), and an "end" record
 * with the status after the reply.  A read has only the end record.  With
 * security.audit.fail_closed, a begin record that cannot be made durable
 * refuses the request (the caller answers 503 and runs nothing), and while
 * the log cannot be written every request is refused the same way; without
 * it, requests go on and the failures are logged.
 *
 * The log is process-wide, like core/log.c: rhema_audit_open() once (after
 * daemonizing: it starts a thread), rhema_audit_close() at exit.  Every
 * other function may be called from any thread, and is a no-op returning 0
 * while the log is not open (security.audit.enabled = false).
 */
#ifndef RHEMA_CORE_AUDIT_H
#define RHEMA_CORE_AUDIT_H

#include <stddef.h>

#include <jansson.h>

#include "audit_chain.h"
#include "config.h"
#include "util.h"

/*
 * Open security.audit.file (resuming the chain of its last line), load or
 * create its HMAC key, write the "audit.opened" record and start the
 * writer thread.  0 when security.audit.enabled is false.  0, or a negative
 * code and *err (malloc'd): a log that cannot be written or whose last line
 * does not verify stops startup.
 */
int rhema_audit_open(const struct rhema_config *cfg, char **err);
/*
 * Do two configurations differ in security.audit?  The settings are read
 * at startup only; SIGHUP warns that a change needs a restart.
 */
int rhema_audit_settings_differ(const struct rhema_config *a, const struct rhema_config *b);
/* Write "audit.closed" (reason "shutdown"), stop the thread, close the file. */
void rhema_audit_close(void);
/* Is the log open? */
int rhema_audit_enabled(void);
/* Did the last batch of records reach the file (GET /health's audit_log component)? */
int rhema_audit_healthy(void);
/* Records queued for the writer now (the metrics' queue depth gauge; two atomic loads). */
size_t rhema_audit_queued(void);

/*
 * SIGUSR1 (logrotate): ask the writer to close the file (after an
 * "audit.closed" record) and open security.audit.file again, whose first
 * record links to the last one of the old file.  Returns at once.
 */
void rhema_audit_reopen(void);

/*
 * One request, as the HTTP layer fills it.  Strings are borrowed for the
 * call.  The request's path parameter and body are never written in clear:
 * each becomes an HMAC under the log's key (rhema_audit_hmac_value).
 */
struct rhema_audit_request {
    const char *request_id;
    const char *key_id;       /* the API key's public id; NULL: no key */
    const char *roles;        /* the key's role names, comma-separated; NULL or "": none */
    const char *client; /* "host:port" */
    const char *method;
    const char *route; /* the route's template; NULL: no route matched */
    const char *param; /* the path's {param}, "" or NULL for none */
    const void *body;  /* the request body, bytes_in of them */
    size_t bytes_in;
    int status;       /* end records only */
    size_t bytes_out; /* end records only */
};

/*
 * The audit stage (core/api/pipeline.c), before the handler.  For a
 * request that writes, write its begin record and wait until it is
 * durable; for a read, only check that the log is writing.  0: go on;
 * RHEMA_EIO with why when fail_closed and the record is not durable (or
 * the log is failing): the caller answers 503 and runs nothing.  Blocks
 * the calling thread for one group fsync (writes only).
 */
int rhema_audit_request_begin(const struct rhema_audit_request *a, int writes,
                              char why[RHEMA_ERRMSG_MAX]);
/*
 * The same for a write, without blocking: queue its begin record and
 * return; the writer thread calls done(w, rc) once the record is durable
 * (rc 0) or could not be written (rc < 0; refuse the request when
 * fail_closed).  done() runs on the writer thread and must not block (the
 * pipeline posts the request back to its worker's mailbox).  0: done will
 * be called; RHEMA_ENOMEM: it will not (use rhema_audit_request_begin).
 * Not to be called while the log is not open.
 */
struct rhema_audit_wait {
    void (*done)(struct rhema_audit_wait *w, int rc);
};
int rhema_audit_request_submit(const struct rhema_audit_request *a, struct rhema_audit_wait *w);
/*
 * Wait until every record queued so far is settled (each submitted
 * write's done() called): before the workers' mailboxes go away.
 */
void rhema_audit_flush(void);
/* Does a refused record refuse its request (security.audit.fail_closed)? */
int rhema_audit_fail_closed(void);

/* The end record of a request, when its reply is sent; does not wait. */
void rhema_audit_request_end(const struct rhema_audit_request *a);

/*
 * An administrative event: `event` a dotted name ("keyring.rotated",
 * "config.reloaded", "cluster.leadership_gained", "auth.key_created" ...),
 * the request that caused it (NULL for a timer or a signal), the key that
 * made the request (NULL: none), and `detail`, an object of non-secret
 * values, consumed (NULL: none; hash secrets with rhema_audit_hmac_value).
 * Does not wait for the record to be durable.  0, or RHEMA_EIO when
 * fail_closed and the log is failing (the record is still queued).
 */
int rhema_audit_event(const char *event, const char *request_id, const char *key_id,
                      json_t *detail);

/* HMAC-SHA-256 of a value under the log's key ("hmac-sha256:<hex>"); "" when not open. */
void rhema_audit_hmac_value(const void *p, size_t n, char out[RHEMA_AUDIT_HMAC_TEXT]);

#endif /* RHEMA_CORE_AUDIT_H */
