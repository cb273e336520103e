/*
 * rate_file -- rate() state in a memory-mapped file shared by every
 * process and thread on this host that opens it, as SQLite keeps its WAL
 * index in the -shm file.  The SQLite plugin keeps one beside each
 * database (`<database path>-rate`): a rate() call is then a hash, a few
 * probes and a GCRA step in shared memory, under a lock, with no I/O and
 * no database transaction.  Private to rhema (nothing here is ABI).
 *
 * Semantics are those of rhema_rate_table_apply() (rate_table.h): the
 * step is rhema_gcra_step(), a malformed query is RHEMA_EINVAL with the
 * same `why` and stores nothing, a key at rest or stored with another n
 * counts as fresh.  What differs is the bound on memory:
 *
 * The table.  A fixed number of slots (`capacity`, set at open), open
 * addressing: key K may live only in the RHEMA_RATE_FILE_PROBE slots that
 * follow its hash (wrapping at the end).  A slot once used is never empty
 * again; a slot whose key is at rest (every tat passed) is free for any
 * key, so keys at rest are forgotten as their slots are taken.  A new key
 * takes the first slot of its neighbourhood that is empty, at rest or its
 * own; when all RHEMA_RATE_FILE_PROBE of them hold live keys, it takes the
 * slot of the one among them that rests first (the smallest instant after
 * which its every tat has passed): that key is forgotten, and starts afresh
 * at its next call.  So the table holds about `capacity` live keys before
 * it forgets any, and it forgets the key closest to rest among those the
 * new key's hash meets, not the globally oldest one.  The hash is seeded
 * per file (random at creation), so which keys meet is not known outside
 * the host; forgetting only ever gives a party a fresh allowance.
 *
 * The file.  A header page (magic, layout version, slot size, capacity,
 * seed) and then capacity slots of RHEMA_RATE_FILE_SLOT_SIZE bytes,
 * mode 0600, opened O_NOFOLLOW | O_CLOEXEC; sparse until slots are touched
 * (each 4 KiB page holds 13 slots).  A file that is not this layout (bad
 * magic, another version or slot size, a size that does not match its
 * header: truncated, garbage, an older layout) is reinitialized -- emptied
 * and given a fresh header -- and a warning logged through `host->log`
 * when the caller gave a host: rate state is not data.  A valid file of
 * another capacity is reinitialized at open (the setting of the opener
 * wins); one that another process reinitialized to its capacity while this
 * one had it open is followed (remapped), so two settings never fight.
 *
 * Locking.  Every read and write of the mapping happens under two locks:
 * a pthread mutex (threads of this process: the lock below belongs to the
 * open file description, which they share) and an OFD write lock on the
 * whole file (fcntl F_OFD_SETLKW: other processes).  The kernel releases
 * an OFD lock when the last descriptor of its open file description
 * closes, i.e. when a process that holds it dies, however it dies: a crash
 * never leaves the table locked.  A process-shared robust pthread mutex in
 * the mapping would need owner-died recovery on every lock, ties the file
 * to one libc's mutex layout, and lives in the very bytes a reinitializing
 * process rewrites; the OFD lock lives in the kernel, outside the table.
 * A process that dies half-way through a step leaves at most one slot
 * half-written: rate state, and the header is written magic last, so a
 * half-made header is reinitialized by the next opener.
 *
 * Checked at every step: the header in the mapping (another process's
 * reinitialization, a header overwritten).  Checked at open only: the
 * file's size.  Not handled: a handle is not for use by a child after
 * fork() (its lock would be the parent's open file description: open
 * another one), and a file unlinked or truncated from outside while
 * processes have it open (they keep the old inode; a process touching a
 * slot past the new end gets SIGBUS, as with a SQLite -shm file truncated
 * under it).  Stop the processes first; the next open mends the file.
 */
#ifndef RHEMA_PLUGIN_RATE_FILE_H
#define RHEMA_PLUGIN_RATE_FILE_H

#include <stddef.h>
#include <stdint.h>

#include <rhema/storage.h>

#define RHEMA_RATE_FILE_PROBE 16        /* slots a key may live in */
#define RHEMA_RATE_FILE_SLOT_SIZE 312   /* bytes of one slot (key up to 256 bytes) */
#define RHEMA_RATE_FILE_HEADER_SIZE 4096 /* the header page, before the slots */
#define RHEMA_RATE_FILE_CAPACITY_MIN 16
#define RHEMA_RATE_FILE_CAPACITY_MAX ((size_t)1 << 24) /* 16 Mi slots, 4.9 GiB sparse */

struct rhema_rate_file;

/*
 * Open (creating it, mode 0600) or reinitialize the rate file at path with
 * `capacity` slots (RHEMA_RATE_FILE_CAPACITY_MIN..MAX).  host may be NULL
 * (nothing logged); `plugin` names the logger.  Returns 0 with *out set, or
 * RHEMA_EINVAL (capacity out of range) / RHEMA_EIO / RHEMA_ENOMEM with a
 * message in err (errcap bytes) and *out untouched.
 */
int rhema_rate_file_open(const char *path, size_t capacity, const struct rhema_host *host,
                         const char *plugin, struct rhema_rate_file **out, char *err,
                         size_t errcap);
void rhema_rate_file_close(struct rhema_rate_file *f);

/*
 * rate() on the file: 0 (q->allowed and q->tat_us set), RHEMA_EINVAL (q
 * malformed: *why says why, nothing stored), RHEMA_EIO (the lock or a
 * reinitialization failed: *why says which; the detail is logged).
 * Thread-safe; blocks only while another thread or process is inside a
 * step (a few hundred nanoseconds).
 */
int rhema_rate_file_apply(struct rhema_rate_file *f, struct rhema_rate_query *q,
                          const char **why);

/* Slots holding a key not at rest at now (tests), or -1 when the lock fails. */
long rhema_rate_file_live(struct rhema_rate_file *f, int64_t now);

/* The capacity the handle maps now (tests). */
size_t rhema_rate_file_capacity(struct rhema_rate_file *f);

#endif /* RHEMA_PLUGIN_RATE_FILE_H */
