/*
 * perfmon -- the performance monitor of the message features (issue:
 * compression ratio, encryption overhead, key rotation time, message
 * processing time), with alerts raised and resolved against
 * advanced_features.performance_monitoring.thresholds.
 *
 * Workers record into lock-free counters (atomics); the main thread samples
 * them every sample_interval_seconds, computes the values of that interval,
 * and raises an alert when a value crosses its threshold and resolves it
 * when a later interval is back within it.  A message stored as is on
 * purpose (below threshold_bytes, or not worth compressing) is counted apart
 * and never makes the compression ratio -- or an alert -- worse.
 */
#ifndef RHEMA_CORE_PERFMON_H
#define RHEMA_CORE_PERFMON_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>
#include <jansson.h>

#include "config.h"

struct rhema_perfmon;

int rhema_perfmon_new(const struct rhema_config *cfg, struct rhema_perfmon **out);
void rhema_perfmon_free(struct rhema_perfmon *pm);
/* Sample every sample_interval_seconds on base (main thread). */
int rhema_perfmon_start(struct rhema_perfmon *pm, struct event_base *base);
/* Evaluate now (also what the timer runs); for tests. */
void rhema_perfmon_sample(struct rhema_perfmon *pm);

/* From any thread.  NULL pm is fine (monitoring off). */
void rhema_perfmon_compressed(struct rhema_perfmon *pm, size_t in, size_t out, uint64_t ns);
void rhema_perfmon_stored(struct rhema_perfmon *pm, size_t in, uint64_t ns);
void rhema_perfmon_decompressed(struct rhema_perfmon *pm, size_t out, uint64_t ns);
void rhema_perfmon_crypto(struct rhema_perfmon *pm, size_t len, uint64_t ns);
void rhema_perfmon_rotation(struct rhema_perfmon *pm, uint64_t ns);

/*
 * The counters since start (GET /metrics), read with relaxed loads; all 0
 * when pm is NULL or disabled.  compressed_*: messages compressed and their
 * bytes in and out; stored_*: messages kept as they were; crypto_*:
 * encrypt/decrypt calls, their bytes and nanoseconds; rotations.
 */
struct rhema_perfmon_totals {
    uint64_t compressed, compressed_in_bytes, compressed_out_bytes;
    uint64_t stored, stored_bytes;
    uint64_t crypto, crypto_bytes, crypto_ns;
    uint64_t rotations;
    uint64_t processed, processing_ns; /* every message route call (compress, store as is,
                                        * decompress, encrypt, decrypt) and its time */
};
void rhema_perfmon_totals(struct rhema_perfmon *pm, struct rhema_perfmon_totals *out);

/*
 * The value of the last interval that had such events, by its name
 * (compression_ratio, encryption_overhead_ms, key_rotation_ms,
 * message_processing_ms): 0 and *out, or RHEMA_ENOTFOUND (none yet, or
 * off).  The alert engine's derived values (alerts.h).
 */
int rhema_perfmon_value(struct rhema_perfmon *pm, const char *name, double *out);

/* {"interval_seconds", "samples": {...last interval...}, "totals": {...},
 *  "thresholds": {...}, "alerts": {"active": [...], "history": [...]}} */
json_t *rhema_perfmon_json(struct rhema_perfmon *pm);
/* {"active": [...], "history": [...]} */
json_t *rhema_perfmon_alerts_json(struct rhema_perfmon *pm);

#endif /* RHEMA_CORE_PERFMON_H */
