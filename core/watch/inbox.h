/*
 * inbox -- agent inboxes (issue 12, item 3).
 *
 * Layout.  Namespace "inbox": for each recipient r of a message, an entry
 * "<r>/<p>/<20-digit version>", where p is a digit ordering priorities
 * (0 Emergency, 1 Critical, 2 High, 3 Normal, 4 Low), written as a
 * sequenced PUT with the prefix "<r>/<p>/" in the batch that appends the
 * message to its session (session.c), so a message is in the session and
 * in its recipients' inboxes or in neither.  A scan of "<r>/" visits an
 * inbox by priority, then in append order.  Its value is compact JSON:
 * {"session_id","message","requires_ack","expires_at" (ms, absent when
 * none),"invisible_until" (ms, 0: visible),"deliveries"}.
 *
 * Namespace "inbox.ack": "<r>/<sid>/<mid>" -> "<p>", a plain PUT right
 * before the inbox entry in the batch, so the inbox entry shares its
 * version: an ack finds the inbox key from the index entry's version and
 * value without a scan.
 *
 * Delivery (rhema_inbox_fetch) is a compare-and-set at the version read:
 * a requires_ack entry is rewritten invisible until now + visibility
 * (deliveries + 1); another entry is deleted with its index entry.  A
 * conflict means another consumer of the inbox took it: it is skipped.
 * So two consumers of one inbox never hold the same unacknowledged
 * message at once.
 */
#ifndef RHEMA_CORE_INBOX_H
#define RHEMA_CORE_INBOX_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "../store.h"
#include "../util.h"

#define RHEMA_INBOX_NS "inbox"
#define RHEMA_INBOX_ACK_NS "inbox.ack"
#define RHEMA_INBOX_VISIBILITY_DEFAULT_S 30
/* "<r>/<sid>/<mid>": three ids and two slashes */
#define RHEMA_INBOX_KEY_MAX (3 * RHEMA_ID_MAX + 3)

/* The digit of a priority name: 0 "Emergency" .. 4 "Low"; -1 when unknown. */
int rhema_inbox_priority_digit(const char *priority);
/* The sequenced prefix "<r>/<p>/" into buf; its length, or -1 when it does not fit. */
int rhema_inbox_prefix(char *buf, size_t cap, const char *agent, int p);
/* An inbox entry's key "<r>/<p>/<20 digits of version>"; its length or -1. */
int rhema_inbox_key(char *buf, size_t cap, const char *agent, int p, uint64_t version);
/* The ack index key "<r>/<sid>/<mid>"; its length or -1. */
int rhema_inbox_ack_key(char *buf, size_t cap, const char *agent, const char *sid,
                        const char *mid);
/*
 * Parse an inbox entry's key: its priority digit and version.  0, or -1
 * when the key is not "<agent>/<digit>/<20 digits>".
 */
int rhema_inbox_key_parse(const char *key, const char *agent, int *p, uint64_t *version);
/*
 * A new inbox entry's value for message msg of session sid (malloc'd
 * compact JSON, or NULL).  The message is kept without its recipient_ids:
 * every recipient's entry would otherwise hold the whole list, and a
 * message to n recipients would store n copies of n ids.
 */
char *rhema_inbox_record(const char *sid, json_t *msg, size_t *len);

/*
 * The recipients of msg that get an inbox entry: its recipient_ids, each
 * once, in order (a new reference).
 */
json_t *rhema_inbox_recipients(json_t *msg);

/*
 * Deliver up to limit entries of agent's inbox at time now_ms: *items is a
 * new array of {"session_id","message","delivery","ack_required",
 * "invisible_until" (rfc3339, when ack_required)}.  *next_ms: the earliest
 * invisible_until among the entries skipped as invisible (0: none), for a
 * waiter's redelivery.  0 or a storage error (err).
 */
int rhema_inbox_fetch(struct rhema_store *st, const char *agent, size_t limit,
                      uint64_t visibility_ms, uint64_t now_ms, json_t **items, uint64_t *next_ms,
                      char err[RHEMA_ERRMSG_MAX]);
/*
 * Acknowledge message mid of session sid for recipient agent: delete its
 * inbox entry and index entry (and record "message.acked" in the feed).
 * RHEMA_ENOTFOUND when nothing is to be acked (not delivered to it, or
 * already acked), RHEMA_ECONFLICT when the message does not require ack.
 */
int rhema_inbox_ack(struct rhema_store *st, const char *sid, const char *mid, const char *agent,
                    uint64_t now_ms, char err[RHEMA_ERRMSG_MAX]);
/*
 * Make agent's delivered, unacknowledged entries visible again at once
 * (an agent that failed or was deleted).  *released: how many.  0 or an error.
 */
int rhema_inbox_release(struct rhema_store *st, const char *agent, size_t *released,
                        char err[RHEMA_ERRMSG_MAX]);
/*
 * Remove expired entries (expires_at <= now_ms) with their index entries,
 * in batches of at most 64 writes; *removed counts them.  Idempotent: any
 * node may run it at any time.
 */
int rhema_inbox_expire(const struct rhema_storage_plugin *vt, rhema_storage_conn *conn,
                       uint64_t now_ms, size_t *removed, char **err);

#endif /* RHEMA_CORE_INBOX_H */
