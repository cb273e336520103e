/*
 * agents -- agent state (AgentInfo and its status transitions), the
 * agent performance summary, system metrics and versioned configurations
 * (DESIGN.md §5) on a storage connection.
 *
 * Layout in the storage plugin:
 *   agents              id -> the record: AgentInfo fields (is_online as
 *                       stored) plus created_at, updated_at, transition_count
 *   agents.status       "<Status>/<id>"       -> ""   (index)
 *   agents.capability   "<capability>/<id>"   -> ""   (index)
 *   agents.heartbeat    "<last_heartbeat ms %020llu>/<id>" -> ""  (index of the
 *                       agents whose stored is_online is true)
 *   agents.transitions  "<id>/<seq %020llu>"  -> {seq, from_status, to_status,
 *                       timestamp, reason}
 *   agents.summary      "all" -> the running totals behind GET /v1/agents/stats
 *                       (count, count per status, sums of the metrics)
 *   system              "metrics" -> SystemMetrics plus created_at, updated_at
 *   configurations      "<name>/<version %020llu>" -> one version
 *                       "<name>/latest"            -> a copy of the newest version
 * A record, its index entries, its new transition and the summary change
 * in one batch, so none of them ever disagrees with the records; a write
 * that loses a race (ECONFLICT on the record or the summary) is redone.
 *
 * Online: an agent reads as is_online=true when its stored is_online is
 * true and its last_heartbeat is at most `timeout_ms` old (the caller
 * passes ai_service.agent_management.heartbeat_timeout_seconds); the
 * stats count those through the heartbeat index, never by reading agents.
 *
 * Transitions: a create records one transition from null to the first
 * status; afterwards a transition is recorded only when the status really
 * changes.  Its reason is the optional input field "status_reason" (a PUT
 * or heartbeat body), which is not part of the agent record.  Deleting an
 * agent deletes its transitions (in the same batch).
 *
 * Versions: an agent's and the system metrics' ETag is their storage
 * version; a configuration's ETag is its own version number (1, 2, ...).
 *
 * Every function runs on the thread that owns st (one worker) and blocks
 * on storage.  Results are malloc'd JSON text the caller frees; errors are
 * RHEMA_E* / RHEMA_EPRECONDITION with a message in err.
 */
#ifndef RHEMA_CORE_AGENTS_H
#define RHEMA_CORE_AGENTS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "store.h"

#define RHEMA_AGENT_TIMEOUT_DEFAULT_S 60
/* A create beyond st->max_agents (answered 409 agent_limit). */
#define RHEMA_EAGENT_LIMIT (-101)

/* 1 when s is an agent status name (Idle, Busy, Working, Blocked,
 * Collaborating, Offline, Failed). */
int rhema_agent_status_valid(const char *s);

/*
 * Validate a PUT body for agent path_id: every field is checked (the
 * message names it), unknown fields are refused, stored metadata
 * (created_at, updated_at, version, transition_count) is ignored so that a
 * client can PUT back what it read, and defaults are filled in (status
 * Idle, capabilities [], assigned_scope "", current_task_id null, metrics
 * 0).  last_heartbeat and is_online stay absent when not given: a create
 * then takes now / true, an update keeps the stored values.  An optional
 * "status_reason" string is kept in *out for the transition.
 */
int rhema_agent_validate(json_t *body, const char *path_id, json_t **out,
                         char err[RHEMA_ERRMSG_MAX]);
/*
 * Validate a heartbeat body (may be NULL: no body): optional status,
 * current_task_id (null clears it) and status_reason.
 */
int rhema_agent_heartbeat_validate(json_t *body, json_t **out, char err[RHEMA_ERRMSG_MAX]);

/*
 * Create or replace agent id with `agent` (validated).  if_match: 0 any,
 * RHEMA_VERSION_ABSENT create only, else the version that must be current.
 * *created tells 201 from 200.  out: the record as a read returns it.
 */
int rhema_agent_put(struct rhema_store *st, const char *id, json_t *agent, uint64_t if_match,
                    uint64_t timeout_ms, struct rhema_record *out, int *created,
                    char err[RHEMA_ERRMSG_MAX]);
/*
 * A status change the daemon makes (a timeout), through the same write as a
 * PUT: record, indexes, the transition (with `reason`) and the summary in one
 * batch.  if_match: the version the caller decided on (the compare-and-set
 * that lets several nodes sweep at once: RHEMA_EPRECONDITION when the agent
 * changed since), or 0.  offline: also store is_online = false.
 */
int rhema_agent_transition(struct rhema_store *st, const char *id, uint64_t if_match,
                           const char *to_status, int offline, const char *reason,
                           char err[RHEMA_ERRMSG_MAX]);
/*
 * One timeout pass (the maintenance timer's, on every node): agents stored
 * online whose last_heartbeat is more than timeout_ms before now_ms become
 * Offline with is_online false (reason "heartbeat timeout"); then agents
 * Busy or Working on the same current_task_id since more than timeout_ms
 * (task_started_at) become Failed ("task timeout after N s").  At most max
 * of each per pass, found through the heartbeat and task indexes, oldest
 * first.  An agent written meanwhile (here or on another node) is left to
 * the next pass.  *offline and *failed count the transitions made.
 */
int rhema_agent_sweep(struct rhema_store *st, uint64_t timeout_ms, uint64_t now_ms, size_t max,
                      size_t *offline, size_t *failed, char err[RHEMA_ERRMSG_MAX]);
/* Read agent id: its fields with is_online computed, created_at,
 * updated_at, transition_count and version. */
int rhema_agent_get(struct rhema_store *st, const char *id, uint64_t timeout_ms,
                    struct rhema_record *out, char err[RHEMA_ERRMSG_MAX]);
/* Delete agent id, its index entries and its transitions. */
int rhema_agent_delete(struct rhema_store *st, const char *id, uint64_t if_match,
                       char err[RHEMA_ERRMSG_MAX]);
/*
 * A heartbeat: last_heartbeat = now, is_online = true, and what `hb`
 * (validated, may be NULL) sets.  RHEMA_ENOTFOUND for an unknown agent.
 */
int rhema_agent_heartbeat(struct rhema_store *st, const char *id, json_t *hb, uint64_t if_match,
                          uint64_t timeout_ms, struct rhema_record *out,
                          char err[RHEMA_ERRMSG_MAX]);
/*
 * One page of agents in id order, filtered by status and/or capability
 * (NULL: any) through the indexes.  cursor: NULL or the previous page's
 * next_cursor.  *out: `{"items":[...],"next_cursor":...}`.
 */
int rhema_agent_list(struct rhema_store *st, const char *status, const char *capability,
                     size_t limit, const char *cursor, uint64_t timeout_ms, char **out,
                     size_t *out_len, char err[RHEMA_ERRMSG_MAX]);
/*
 * One page of agent id's transitions, oldest first.  cursor: NULL or the
 * previous page's next_cursor (a sequence number).  RHEMA_ENOTFOUND when
 * the agent does not exist.
 */
int rhema_agent_transitions(struct rhema_store *st, const char *id, size_t limit,
                            const char *cursor, char **out, size_t *out_len,
                            char err[RHEMA_ERRMSG_MAX]);
/*
 * AgentPerformanceStats from the summary record and the heartbeat index:
 * {total_agents, online_agents, by_status{}, tasks_completed, tasks_failed,
 *  avg_success_rate, avg_response_time_ms, avg_collaboration_score,
 *  heartbeat_timeout_seconds, timestamp}.
 */
int rhema_agent_stats(struct rhema_store *st, uint64_t timeout_ms, char **out, size_t *out_len,
                      char err[RHEMA_ERRMSG_MAX]);

/*
 * SystemMetrics: {timestamp, cpu_usage_percent (0-100), memory_usage_percent
 * (0-100), active_agents, total_sessions (integers >= 0), messages_per_second
 * (>= 0), error_rate (0-1), custom{name: number}}.  The numbers are
 * required; timestamp defaults to now, custom to {}.
 */
int rhema_system_metrics_validate(json_t *body, json_t **out, char err[RHEMA_ERRMSG_MAX]);
int rhema_system_metrics_put(struct rhema_store *st, json_t *metrics, uint64_t if_match,
                             struct rhema_record *out, int *created, char err[RHEMA_ERRMSG_MAX]);
int rhema_system_metrics_get(struct rhema_store *st, struct rhema_record *out,
                             char err[RHEMA_ERRMSG_MAX]);

/*
 * StoredConfiguration: {name, config_data (a JSON object), version,
 * description (string or null)}; a body "name" must match path_name, a body
 * "version" is ignored (the server numbers versions).  Names are ids.
 */
int rhema_configuration_validate(json_t *body, const char *path_name, json_t **out,
                                 char err[RHEMA_ERRMSG_MAX]);
/*
 * Store a new version of configuration `name` (1 for the first).  if_match:
 * 0 any, RHEMA_VERSION_ABSENT only when none exists, else the version that
 * must be the latest.  *created: this was version 1.  With
 * st->keep_config_versions set, the versions older than the last that many
 * are deleted in the same batch (at most 64 per write).
 */
int rhema_configuration_put(struct rhema_store *st, const char *name, json_t *conf,
                            uint64_t if_match, struct rhema_record *out, int *created,
                            char err[RHEMA_ERRMSG_MAX]);
/*
 * Delete configuration `name` with all its versions.  if_match: 0 any, else
 * the version that must be the latest (RHEMA_VERSION_PRESENT: any existing).
 */
int rhema_configuration_delete(struct rhema_store *st, const char *name, uint64_t if_match,
                               char err[RHEMA_ERRMSG_MAX]);
/* The latest version (version 0) or a given one. */
int rhema_configuration_get(struct rhema_store *st, const char *name, uint64_t version,
                            struct rhema_record *out, char err[RHEMA_ERRMSG_MAX]);
/* One page of the versions of `name`, oldest first; cursor: a version. */
int rhema_configuration_versions(struct rhema_store *st, const char *name, size_t limit,
                                 const char *cursor, char **out, size_t *out_len,
                                 char err[RHEMA_ERRMSG_MAX]);

#endif /* RHEMA_CORE_AGENTS_H */
