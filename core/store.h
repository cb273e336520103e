/*
 * store -- the layer every store module builds on (sessions, consensus,
 * agents, services): a storage connection with the plugin's vtable, the
 * records handed back to the API, the key lists that scans collect, and
 * the codes and limits they share.
 *
 * A struct rhema_store belongs to one thread (it wraps that thread's
 * storage connection); nothing here locks.
 */
#ifndef RHEMA_CORE_STORE_H
#define RHEMA_CORE_STORE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <rhema/storage.h>

#include "util.h"

/* An If-Match precondition failed (HTTP 412); other errors are RHEMA_E*. */
#define RHEMA_EPRECONDITION (-100)
_Static_assert(RHEMA_EPRECONDITION <= RHEMA_E_HOST_MAX && RHEMA_EPRECONDITION >= RHEMA_E_HOST_MIN,
               "RHEMA_EPRECONDITION must lie in the host's reserved error range");

/*
 * If-Match: * -- the resource must exist, at any version (RFC 9110 13.1.1).
 * A host-side precondition: stores check it and never pass it to a plugin.
 * RHEMA_IF_MATCH_VERSION(m) is true when m names one version.
 */
#define RHEMA_VERSION_PRESENT (UINT64_MAX - 1)
#define RHEMA_IF_MATCH_VERSION(m)                                                                  \
    ((m) != RHEMA_VERSION_ANY && (m) != RHEMA_VERSION_ABSENT && (m) != RHEMA_VERSION_PRESENT)

#define RHEMA_LIST_LIMIT_DEFAULT 50
#define RHEMA_LIST_LIMIT_MAX 1000

struct rhema_access_table;
struct rhema_feed;

struct rhema_store {
    const struct rhema_storage_plugin *vt;
    rhema_storage_conn *conn;
    size_t max_page_bytes;              /* service.max_page_bytes; 0: no byte cap (see
                                         * rhema_page_add) */
    uint64_t keep_config_versions;      /* persistence.configuration_versions_retained;
                                         * 0: all (agents.h) */
    uint64_t keep_transitions;          /* persistence.agent_transitions_retained; 0: all */
    struct rhema_feed *feed;            /* watch/feed.h: the change feed; NULL: off (writes
                                         * add no records) */
    uint64_t max_agents;                /* ai_service.agent_management.max_concurrent_agents;
                                         * 0: no limit (agents.h) */
    struct rhema_access_table *access;  /* sessions' access counts (session_access.h): the
                                         * daemon's shared table; NULL: the store makes its
                                         * own at the first read (own_access) */
    int own_access;
};

void rhema_store_init(struct rhema_store *st, const struct rhema_storage_plugin *vt,
                      rhema_storage_conn *conn);
/*
 * Flush and free the store's own access counts, if it has some (a shared
 * table is its owner's: the daemon's writer flushes it); the connection
 * stays open.  In session.c, with the access counts.
 */
void rhema_store_release(struct rhema_store *st);
/*
 * Write the store's access counts (its own table, or the shared one) to
 * storage on its connection now; 0 or the first storage error.  The
 * daemon's access writer does this every second (session_access.h); tools
 * and tests call it.  In session.c.
 */
int rhema_store_flush_access(struct rhema_store *st);
/*
 * A storage failure rc while doing `what` ("reading session 'x'") into err
 * (RHEMA_ERRMSG_MAX), with the backend's own message; returns rc.
 */
int rhema_store_error(struct rhema_store *st, int rc, const char *what, char *err);

/*
 * The keys a scan visits, each with its first `strip` bytes removed (an
 * index prefix): pass rhema_key_list_collect as the scan callback and the
 * list as its ctx.  On RHEMA_ENOMEM from the scan, oom is set.
 */
struct rhema_key_list {
    char **v;
    size_t n, cap;
    size_t strip;
    int oom;
};
int rhema_key_list_collect(void *ctx, const char *key, const void *value, size_t len,
                           uint64_t version);
/* Free the keys, keep the array for the next scan. */
void rhema_key_list_clear(struct rhema_key_list *l);
/* Free the keys and the array; strip and oom stay for the caller to read. */
void rhema_key_list_release(struct rhema_key_list *l);

/*
 * The byte cap of a list page (issue 17, item 8).  A list counts each item
 * it takes, `len` bytes of JSON, into *used; 1 when the page has now passed
 * st->max_page_bytes and must end with this item (the next_cursor then
 * continues after it), 0 to go on.  A page holds at least one item, so a
 * client always progresses; with no cap (0) it is never full.
 */
int rhema_page_add(const struct rhema_store *st, size_t *used, size_t len);
/*
 * A list names the records it could not read (RHEMA_ECORRUPT: a value that
 * does not decrypt or parse) instead of failing the page: `ids`, a JSON
 * array of strings.  Once a page ends at `next` (its next_cursor; NULL:
 * the last page), the ids past it belong to the next page: they are
 * removed here, so that each is named once.
 */
void rhema_unreadable_trim(json_t *ids, const char *next);

/*
 * A record as the API answers it: JSON text (malloc'd; release frees it)
 * and the storage version, which is its ETag.
 */
struct rhema_record {
    char *json;
    size_t len;
    uint64_t version;
};
void rhema_record_release(struct rhema_record *r);

#endif /* RHEMA_CORE_STORE_H */
