/*
 * storage_check -- the argument checks every storage plugin makes before it
 * touches its backend (private to plugins/: a noinst convenience library,
 * librhema_plugin_util.la, linked into each plugin; nothing here is ABI).
 *
 * Each *_invalid() function answers NULL when its arguments are well formed
 * and otherwise a static string saying why (the plugin answers RHEMA_EINVAL
 * and keeps the string as its errmsg()).  A plugin adds its own limits
 * (value sizes, TTL ranges of its backend) after these.
 *
 * These were static inline functions of <rhema/storage.h>; they are policy,
 * not ABI, so an installed header no longer carries them and the five
 * storage plugins share one copy instead of five.
 */
#ifndef RHEMA_PLUGIN_STORAGE_CHECK_H
#define RHEMA_PLUGIN_STORAGE_CHECK_H

#include <stddef.h>
#include <stdint.h>

#include <rhema/storage.h>

/* 1 when ns is a valid namespace: 1..RHEMA_STORAGE_NS_MAX bytes of [A-Za-z0-9_.:-]. */
int rhema_storage_ns_valid(const char *ns);

/* The length of key when it is a valid key (1..RHEMA_STORAGE_KEY_MAX bytes), else 0. */
size_t rhema_storage_key_len(const char *key);

/* Why ns or key is invalid (get, del and the like), or NULL. */
const char *rhema_storage_key_invalid(const char *ns, const char *key);

/*
 * Why a write is malformed -- NULL, a size below RHEMA_STORAGE_WRITE_SIZE_0,
 * an unknown op, a bad namespace or key, a
 * NULL value with a length, a delete with RHEMA_VERSION_ABSENT, an unknown
 * flag; for a sequenced write (RHEMA_WRITE_SEQUENCED) a delete, an
 * expected version other than ANY / ABSENT, a NULL prefix or one longer
 * than RHEMA_SEQ_PREFIX_MAX -- or NULL when it is well formed.
 */
const char *rhema_storage_write_invalid(const struct rhema_storage_write *w);

/* ---- sequenced writes (storage minor 3) ---- */

/* The bytes of a sequenced write's prefix at most: its key gets 20 digits more. */
#define RHEMA_SEQ_PREFIX_MAX (RHEMA_STORAGE_KEY_MAX - RHEMA_SEQ_DIGITS)

/* The write flags this kit knows. */
#define RHEMA_WRITE_FLAGS_KNOWN RHEMA_WRITE_SEQUENCED

/*
 * w->flags when the caller's struct has the member (size covers minor 3),
 * else 0: a caller built against an older minor has no flags, whatever
 * bytes follow its struct.
 */
uint32_t rhema_storage_write_flags(const struct rhema_storage_write *w);

/* 1 when w is a sequenced write (rhema_storage_write_flags() has the bit). */
int rhema_storage_write_sequenced(const struct rhema_storage_write *w);

/*
 * 1 when the sequenced write w[i] of a batch (an array of this plugin's own
 * layout) shares the version of w[i - 1]: i > 0 and w[i - 1] is a PUT that
 * is not sequenced.  Otherwise it takes a fresh version.
 */
int rhema_storage_seq_shares_previous(const struct rhema_storage_write *w, size_t i);

/*
 * The key of a sequenced record: prefix followed by the 20 zero-padded
 * decimal digits of version, into buf (at least RHEMA_STORAGE_KEY_MAX + 1
 * bytes; the prefix is at most RHEMA_SEQ_PREFIX_MAX bytes, as
 * rhema_storage_write_invalid() checked).  Returns buf.
 */
char *rhema_storage_seq_key(char *buf, const char *prefix, uint64_t version);

/* Why the arguments of a get_many() call are malformed, or NULL. */
const char *rhema_storage_get_many_invalid(const char *const *ns, const char *const *keys, size_t n,
                                           const struct rhema_storage_value *out, const int *rcs);

/* Why the arguments of a scan() call are malformed (bad ns, NULL callback), or NULL. */
const char *rhema_storage_scan_invalid(const char *ns, rhema_storage_scan_cb cb);

/* Why the arguments of a stats() call are malformed (ns may be NULL: all), or NULL. */
const char *rhema_storage_stats_invalid(const char *ns, const struct rhema_storage_stats *out);

/*
 * Why the arguments of a lease() call are malformed, or NULL: name like a
 * key, a known op, a holder of 1..RHEMA_LEASE_HOLDER_MAX bytes for every op
 * but QUERY, ttl_ms > 0 for ACQUIRE and RENEW.
 */
const char *rhema_storage_lease_invalid(const char *name, const char *holder, uint64_t ttl_ms,
                                        int op);

/*
 * 1 when a write of b after its first has a precondition (a delete, or a
 * put with an expected version that is not a sequenced write), i.e. when
 * that write can fail after the earlier ones applied.  A group() can then
 * roll the member back only with a savepoint; otherwise a failed first
 * write leaves nothing to undo (it changed nothing, and the writes after
 * it are not applied), and a member of a first checked write and
 * unconditional puts needs no savepoint.
 */
int rhema_storage_batch_checks_after_first(const struct rhema_storage_batch *b);

/*
 * A plugin's own check of one write: rhema_storage_write_invalid() plus its
 * backend's limits.  It sets the connection's message itself and returns
 * 0 or a RHEMA_E* code (RHEMA_EINVAL, RHEMA_ETOOBIG ...).
 */
typedef int (*rhema_storage_write_check_fn)(rhema_storage_conn *conn,
                                            const struct rhema_storage_write *w);

/*
 * The argument checks of batch(), before anything is applied: 0 when
 * w[0..n) may go ahead, else the code of the first write check refuses
 * (which set the message), or RHEMA_EINVAL with *why for a NULL array.
 * Every new_version is cleared first, so a refused batch reports none.
 */
int rhema_storage_batch_check(rhema_storage_conn *conn, struct rhema_storage_write *w, size_t n,
                              rhema_storage_write_check_fn check, const char **why);

/*
 * The argument checks of group(): every member's result becomes 0, or
 * the code of its first refused write (RHEMA_EINVAL for NULL writes), so a
 * bad member fails alone; every new_version is cleared.  Returns
 * RHEMA_EINVAL with *why only for a NULL g with n > 0, else 0.
 */
int rhema_storage_group_check(rhema_storage_conn *conn, struct rhema_storage_batch *g, size_t n,
                              rhema_storage_write_check_fn check, const char **why);

/*
 * Arrays of the caller's stride (storage.h, "Growing the structs").  A
 * plugin implements batch(), group() and get_many() over arrays of its own
 * struct layout -- indexing w[i], g[i].writes[j], out[i] -- and exports
 * these wrappers around them.  When every stride is the plugin's own sizeof
 * (always, between rhemad and the plugins built with it) the wrapper calls
 * straight through; otherwise it hands the implementation a copy in the
 * plugin's layout (zero-filled past the caller's size) and copies the
 * outputs (new_version, result, data/len/version) back to the caller's
 * elements.  A stride below the minor-0 size is RHEMA_EINVAL and *why says
 * so; running out of memory for a copy is RHEMA_ENOMEM.
 */
typedef int (*rhema_storage_batch_fn)(rhema_storage_conn *conn, struct rhema_storage_write *w,
                                      size_t n);
typedef int (*rhema_storage_group_fn)(rhema_storage_conn *conn, struct rhema_storage_batch *g,
                                      size_t n);
typedef int (*rhema_storage_get_many_fn)(rhema_storage_conn *conn, const char *const *ns,
                                         const char *const *keys, size_t n,
                                         struct rhema_storage_value *out, int *rcs);

int rhema_storage_call_batch(rhema_storage_batch_fn fn, rhema_storage_conn *conn,
                             struct rhema_storage_write *w, size_t n, const char **why);
int rhema_storage_call_group(rhema_storage_group_fn fn, rhema_storage_conn *conn,
                             struct rhema_storage_batch *g, size_t n, const char **why);
int rhema_storage_call_get_many(rhema_storage_get_many_fn fn, rhema_storage_conn *conn,
                                const char *const *ns, const char *const *keys, size_t n,
                                struct rhema_storage_value *out, int *rcs, const char **why);

#endif /* RHEMA_PLUGIN_STORAGE_CHECK_H */
