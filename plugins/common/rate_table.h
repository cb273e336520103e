/*
 * rate_table -- the GCRA step of rate() (<rhema/storage.h>) in C, and a
 * table of rate states kept in a process's memory.
 *
 * rhema_gcra_step() is the reference every backend's rate() must agree
 * with (the SQL statements of the SQLite and PostgreSQL plugins and the
 * Lua script of the Redis plugin say the same thing in their languages;
 * the conformance suite checks them against it).  The table serves the
 * memory and file plugins, and the host when a plugin has no rate() (one
 * limit per node).  Private to rhema (nothing here is ABI).
 */
#ifndef RHEMA_PLUGIN_RATE_TABLE_H
#define RHEMA_PLUGIN_RATE_TABLE_H

#include <stddef.h>
#include <stdint.h>

#include <rhema/storage.h>

/*
 * The largest interval and tolerance (2^50 us, about 35 years) and now
 * (2^52 us, the year 2112) a query may carry.  Every tat then stays below
 * now + tolerance + interval < 2^53: exact in a double, which is what the
 * Redis plugin's Lua script computes with, and far from int64 overflow in
 * C and SQL.  Every backend refuses the same queries (RHEMA_EINVAL).
 */
#define RHEMA_RATE_SPAN_MAX ((uint64_t)1 << 50)
#define RHEMA_RATE_NOW_MAX ((int64_t)1 << 52)

/* Why q is malformed (a size below RHEMA_RATE_QUERY_SIZE_2, a bad key, n or interval), or NULL. */
const char *rhema_rate_query_invalid(const struct rhema_rate_query *q);

/*
 * One GCRA step at q->now_us over the stored tats `tat` (n = q->n of them;
 * NULL: the key was never seen): sets q->allowed and q->tat_us (the tats
 * after the step) and answers the instant after which every window is at
 * rest (the key can be forgotten), at least q->now_us.
 */
int64_t rhema_gcra_step(struct rhema_rate_query *q, const int64_t *tat);

struct rhema_rate_table;

/* A table holding at most max_keys keys (0: no bound); NULL when out of memory. */
struct rhema_rate_table *rhema_rate_table_new(size_t max_keys);
void rhema_rate_table_free(struct rhema_rate_table *t);

/*
 * rate() on the table: 0, RHEMA_EINVAL (q malformed: *why says why),
 * RHEMA_ENOMEM.  Thread-safe.  Keys at rest are dropped as the table grows;
 * a full table (max_keys live keys) forgets its oldest-expiring key.
 */
int rhema_rate_table_apply(struct rhema_rate_table *t, struct rhema_rate_query *q,
                           const char **why);

/* Keys the table holds, including keys at rest not yet swept (tests). */
size_t rhema_rate_table_count(struct rhema_rate_table *t);

#endif /* RHEMA_PLUGIN_RATE_TABLE_H */
