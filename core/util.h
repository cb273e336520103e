/*
 * util -- small helpers shared by the core: clocks, RFC 3339 timestamps,
 * id validation, error messages.  All functions are thread safe.
 */
#ifndef RHEMA_CORE_UTIL_H
#define RHEMA_CORE_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define RHEMA_ID_MAX 128
#define RHEMA_TIME_MAX 32 /* "2026-11-26T23:10:15.123Z" fits */

uint64_t rhema_monotonic_ns(void);
uint64_t rhema_realtime_ns(void);
static inline uint64_t rhema_realtime_ms(void) { return rhema_realtime_ns() / 1000000u; }
/*
 * The time ns from now on clock (CLOCK_REALTIME for a default condition
 * variable, CLOCK_MONOTONIC for one set to it): a pthread_cond_timedwait
 * deadline.
 */
void rhema_deadline_after(clockid_t clock, uint64_t ns, struct timespec *ts);

/* Format ms since the epoch as RFC 3339 UTC with milliseconds ("...T...Z"). */
void rhema_time_format(uint64_t ms, char out[RHEMA_TIME_MAX]);
/*
 * Parse an RFC 3339 timestamp ("2026-11-26T23:10:15Z", fractional seconds
 * and a "+hh:mm" offset allowed) into ms since the epoch.  0 on success,
 * -1 when malformed or out of range.
 */
int rhema_time_parse(const char *s, uint64_t *ms);

/* 1 when s is 1..128 characters of [A-Za-z0-9._:-], else 0. */
int rhema_id_valid(const char *s);

/*
 * The length of the well-formed UTF-8 sequence at s (n >= 1 bytes there):
 * 1..4; 0 when s[0] does not begin one; -1 when the n bytes are the start
 * of one, cut short.  The ranges are RFC 3629's table (section 4), which
 * jansson also holds strings to.
 */
int rhema_utf8_seq(const unsigned char *s, size_t n);

/*
 * Copy len bytes of src into dst (cap bytes, cap >= 1) as valid UTF-8, for
 * text that goes into JSON (jansson refuses anything else): each byte that
 * does not belong to a well-formed sequence (RFC 3629: no overlong forms,
 * no surrogates, nothing above U+10FFFF) becomes U+FFFD, the replacement
 * character.  The copy stops before a sequence that would not fit, so it
 * never ends inside one.  `cut`: src was itself truncated (a full
 * snprintf buffer), so a well-formed sequence cut short at its very end is
 * dropped instead of replaced.  dst is NUL-terminated; returns its length.
 */
size_t rhema_utf8_copy(char *dst, size_t cap, const char *src, size_t len, int cut);

/* Number of online CPUs (>= 1). */
int rhema_ncpu(void);

/*
 * Errors.  A function that fails returns a negative RHEMA_E* code (0 on
 * success) and says why in one of two ways, by where it runs:
 *
 *   char **err   a malloc'd message the caller frees (SQLite's pzErrMsg,
 *                and the plugin ABI's convention): startup, the lifecycle
 *                of every module, background jobs.  Set it with
 *                rhema_set_error().
 *   char err[RHEMA_ERRMSG_MAX]
 *                the caller's buffer: the stores a request calls (session,
 *                agents, consensus, services, codec, keyring).  A session
 *                write carries its message inside its op from the
 *                committer thread back to its worker (commit.h) with no
 *                allocation and no owner to hand over; the handlers keep
 *                theirs on the stack.  Set it with rhema_set_errbuf().
 *
 * Both return `code`, so that a failure reads
 *     return rhema_set_error(err, RHEMA_EINVAL, "field '%s': ...", name);
 */
#define RHEMA_ERRMSG_MAX 320

/*
 * *err = the formatted message (malloc'd; NULL when out of memory), after
 * freeing a message already there.  err may be NULL (the caller does not
 * want the message).  Returns code.
 */
int rhema_set_error(char **err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * The formatted message into err (RHEMA_ERRMSG_MAX bytes; a longer one is
 * cut at a UTF-8 character boundary).  err may be NULL.  Returns code.
 */
int rhema_set_errbuf(char *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif /* RHEMA_CORE_UTIL_H */
