/*
 * storage_suite -- the storage plugin conformance suite.
 *
 * One reusable list of checks that every storage plugin must pass: the
 * in-tree memory and sqlite plugins (tests/conformance/test_storage), the
 * file, postgres and redis plugins, and any third-party plugin through
 * `rhemactl plugin check FILE.so`.
 *
 * The suite opens its own instance of the plugin with the given
 * configuration group, connects (two connections, and more from threads
 * where a check needs concurrency), works in namespaces and lease names
 * unique to the run ("conf_<random hex>..."), so it can run against a
 * shared backend that already holds data, deletes what it wrote, and
 * closes the instance.  A plugin whose features lack TTL or LEASES gets
 * those checks reported as skipped; one with DURABLE is also closed and
 * reopened to check that data, versions and lease epochs survive.  The
 * rate_* checks (storage minor 2; skipped when rate is NULL) use keys
 * "conf_<hex>/rate.*", compare rate() with rhema_gcra_step() and hammer one
 * key from four connections; rate state cannot be deleted through the
 * vtable, so those keys stay until the backend forgets them at rest (up to
 * ten hours of their one-hour intervals).  The sequenced_* checks (storage
 * minor 3; skipped when abi_minor < 3) write feed records
 * (RHEMA_WRITE_SEQUENCED) in namespaces "conf_<hex>.seq" and ".seqc": the
 * key format, the version a record shares with the change before it, a
 * failed batch writing no record, the invalid arguments, group(), records
 * surviving a reopen (DURABLE), and the order a reader sees while two
 * writers append (up to 500 records, for at most 1.5 s).
 * The check check (storage minor 4; skipped when the plugin has no check())
 * calls check() with no group -- the plugin's documented defaults -- and with
 * the suite's group: both must be accepted.
 *
 * When the plugin has both backup() and restore(), the backup_restore check
 * restores a snapshot it took a moment earlier: restore() replaces the
 * WHOLE store, so anything another client writes to a shared backend
 * during that check (a few ms between its backup and its restore) is lost.
 * Run the suite against a scratch database, never a production one.
 *
 * Each check is reported through `report` as it finishes, with a short
 * name ("put_get_binary", "lease_contention", ...) and, when it did not
 * pass, one line saying what went wrong.  A failing check never stops the
 * run, except that nothing can run when the header is unusable or the
 * instance cannot be opened and connected.  Total run time is about 2 s.
 *
 * Threads: call from one thread; the suite starts and joins its own.
 */
#ifndef RHEMA_CONFORMANCE_STORAGE_SUITE_H
#define RHEMA_CONFORMANCE_STORAGE_SUITE_H

#include <rhema/plugin.h>
#include <rhema/storage.h>

/* Values of `ok` in a report. */
#define RHEMA_CONF_FAIL 0
#define RHEMA_CONF_PASS 1
#define RHEMA_CONF_SKIP (-1)

/*
 * Called once per check: `test` is its name, `ok` one of RHEMA_CONF_*,
 * `detail` a one-line explanation ("" when passed; the reason when
 * skipped).  Both strings are valid during the call only.
 */
typedef void (*rhema_conf_report_fn)(void *ctx, const char *test, int ok, const char *detail);

struct rhema_conf_totals {
    unsigned passed, failed, skipped;
};

/*
 * Run every check against a new instance of `vt` opened with `host` and
 * `cfg` (cfg may be NULL), reporting each through report(ctx, ...) and
 * adding to *totals (when not NULL; it is not zeroed first, so several
 * runs can share it).  Returns 0 when no check failed, else the number of
 * failed checks.
 */
int rhema_conformance_storage(const struct rhema_storage_plugin *vt, const struct rhema_host *host,
                              const struct rhema_cfg *cfg, rhema_conf_report_fn report, void *ctx,
                              struct rhema_conf_totals *totals);

#endif /* RHEMA_CONFORMANCE_STORAGE_SUITE_H */
