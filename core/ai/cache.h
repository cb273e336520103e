/*
 * ai/cache -- the AI gateway's response cache (ai_service.caching) and its
 * single flight (doc/ai-gateway.md, "The response cache").
 *
 * An exact-match cache: the key is 32 bytes (rhema_ai_cache_key(): a
 * BLAKE2b of the route, the caller's scope and the canonical request
 * JSON), the value an immutable, reference-counted response.  Entries are
 * bounded by bytes (max_size_bytes, each entry counting the bytes malloc
 * really gave it), by count (max_entries) and by age (ttl_seconds); the
 * least recently used go first.
 *
 * One cache is shared by every worker: a mutex guards the hash table, the
 * LRU list and the table of flights, and is held only for a lookup, an
 * insert or a flight's end -- O(1) work, never I/O, never a callback.
 * Sharing gives one hit rate for the process (a per-worker cache would
 * send the same question upstream once per worker and keep each answer N
 * times).
 *
 * Single flight: the first caller of a key that is not cached becomes the
 * flight's leader (RHEMA_AIC_LEAD) and must end the flight with
 * rhema_ai_cache_complete(), whatever happens; callers of the same key
 * meanwhile are its waiters (RHEMA_AIC_FOLLOW): complete() wakes each,
 * from the leader's thread and outside the lock, with the leader's
 * response (an error included: followers are not sent upstream again).
 */
#ifndef RHEMA_CORE_AI_CACHE_H
#define RHEMA_CORE_AI_CACHE_H

#include <stddef.h>
#include <stdint.h>

#define RHEMA_AI_CACHE_KEY_LEN 32

struct rhema_ai_cache;

/* A response, immutable once made; shared by the cache, a leader and its waiters. */
struct rhema_ai_cache_resp {
    unsigned refs;           /* atomic */
    int status;
    long retry_after;        /* -1: none */
    const char *content_type;
    const char *upstream;    /* "" when none */
    const char *attempts;    /* the leader's X-Rhema-Attempts, "" when none */
    const unsigned char *body;
    size_t len;
};

/* One allocation holding the strings and body (copied).  NULL when out of memory. */
struct rhema_ai_cache_resp *rhema_ai_cache_resp_new(int status, const char *content_type,
                                                    const char *upstream, const char *attempts,
                                                    long retry_after, const void *body,
                                                    size_t len);
struct rhema_ai_cache_resp *rhema_ai_cache_resp_ref(struct rhema_ai_cache_resp *p);
void rhema_ai_cache_resp_unref(struct rhema_ai_cache_resp *p);

/* A caller waiting for a flight; embedded in the caller's own struct. */
struct rhema_ai_cache_waiter {
    struct rhema_ai_cache_waiter *next; /* the cache's (under its lock) */
    int claimed;                        /* the cache's: 1 once complete() took it */
    void *owner;                        /* the caller's: e.g. its worker (drop_owner()) */
    /* The flight ended: resp is the waiter's reference.  Leader's thread, no lock held. */
    void (*wake)(struct rhema_ai_cache_waiter *w, struct rhema_ai_cache_resp *resp);
    /* Its owner stops (drop_owner()): answer without a response.  That thread, no lock held. */
    void (*abandon)(struct rhema_ai_cache_waiter *w);
};

struct rhema_ai_cache_limits {
    uint64_t ttl_ns;
    size_t max_size_bytes;
    size_t max_entry_bytes;
    size_t max_entries;
};

int rhema_ai_cache_new(const struct rhema_ai_cache_limits *lim, struct rhema_ai_cache **out,
                       char **err);
/* No flight may be running (the workers are stopped).  NULL is a no-op. */
void rhema_ai_cache_free(struct rhema_ai_cache *c);

/* key = BLAKE2b-256(route NUL scope NUL canonical). */
void rhema_ai_cache_key(const char *route, const char *scope, const char *canonical,
                        size_t len, unsigned char key[RHEMA_AI_CACHE_KEY_LEN]);

enum rhema_ai_cache_verdict {
    RHEMA_AIC_HIT,    /* *hit: a reference to the cached response, *age_s its age */
    RHEMA_AIC_LEAD,   /* go upstream, then rhema_ai_cache_complete() */
    RHEMA_AIC_FOLLOW, /* w was queued: w->wake() will be called once (or cancel_wait()) */
};

/*
 * Look key up at monotonic time now_ns.  refresh (Cache-Control: no-cache):
 * do not answer from the cache (a flight running for the key is joined:
 * its answer is fresh).  An expired entry is dropped on the way.
 */
enum rhema_ai_cache_verdict rhema_ai_cache_lookup(struct rhema_ai_cache *c,
                                                  const unsigned char key[RHEMA_AI_CACHE_KEY_LEN],
                                                  int refresh, uint64_t now_ns,
                                                  struct rhema_ai_cache_waiter *w,
                                                  struct rhema_ai_cache_resp **hit,
                                                  uint64_t *age_s);

/* Why complete() did not store. */
enum rhema_ai_cache_stored {
    RHEMA_AIC_STORED,
    RHEMA_AIC_NOT_ASKED,   /* store was 0 */
    RHEMA_AIC_TOO_LARGE,   /* the entry is over max_entry_bytes (or max_size_bytes) */
    RHEMA_AIC_NO_MEMORY,
};

/*
 * End key's flight (the leader calls this exactly once, with or without a
 * flight: a no-cache refresh leads too), storing resp when `store`
 * (the cache takes its own reference), and wake every waiter with a
 * reference to resp.  Returns what became of the store.
 */
enum rhema_ai_cache_stored rhema_ai_cache_complete(struct rhema_ai_cache *c,
                                                   const unsigned char key[RHEMA_AI_CACHE_KEY_LEN],
                                                   struct rhema_ai_cache_resp *resp, int store,
                                                   uint64_t now_ns);

/* Take w out of its flight: 1 done (no wake will come), 0 already claimed (its wake is coming). */
int rhema_ai_cache_cancel_wait(struct rhema_ai_cache *c, struct rhema_ai_cache_waiter *w);

/*
 * Take every unclaimed waiter whose owner is `owner` out of its flight and
 * call its abandon() (no lock held): a worker that stops.
 */
void rhema_ai_cache_drop_owner(struct rhema_ai_cache *c, void *owner);

struct rhema_ai_cache_stats {
    uint64_t hits, misses, stores, evictions, expirations, too_large, collapsed;
    uint64_t bytes, entries, flights;
};
void rhema_ai_cache_stats(struct rhema_ai_cache *c, struct rhema_ai_cache_stats *s);

#endif /* RHEMA_CORE_AI_CACHE_H */
