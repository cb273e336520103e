/*
 * collect -- the families GET /metrics reads from the other subsystems at
 * scrape time: build info, process_*, group commit, compression and
 * encryption (perfmon), keyring, cluster, services, maintenance.
 *
 * Nothing here is counted on a request: each family is read through the
 * accessor its module offers.  Runs on the scraping worker's thread; conn
 * is that worker's storage connection (the cluster view reads storage).
 */
#ifndef RHEMA_CORE_METRICS_COLLECT_H
#define RHEMA_CORE_METRICS_COLLECT_H

#include "../server.h"
#include "metrics.h"

void rhema_metrics_collect(struct rhema_server *srv, rhema_storage_conn *conn,
                           struct rhema_expo *e);

/*
 * The process_* values from /proc/self (Linux): 0, or -1 when /proc could
 * not be read (the family is then left out).
 */
struct rhema_process_stats {
    double cpu_seconds, start_time_seconds;
    uint64_t resident_bytes, virtual_bytes, open_fds, max_fds;
};
int rhema_process_stats(struct rhema_process_stats *out);

#endif /* RHEMA_CORE_METRICS_COLLECT_H */
