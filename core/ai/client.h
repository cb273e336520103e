/*
 * ai/client -- outbound HTTP for the AI gateway: libcurl's multi-socket
 * interface driven by a worker's libevent event_base.
 *
 * One struct rhema_ai_client per worker thread (one CURLM: its connection
 * cache gives keep-alive reuse, TLS sessions included).  Nothing here
 * blocks: curl tells which sockets to watch (CURLMOPT_SOCKETFUNCTION) and
 * when to wake it (CURLMOPT_TIMERFUNCTION); libevent events call
 * curl_multi_socket_action().  Every function, and every callback, runs on
 * the worker's thread.
 *
 * A call: rhema_ai_call_start() with the URL, extra request headers and a
 * body (copied).  on_data() receives the response body as it arrives (the
 * status and headers are in the call by then); on_done() is called exactly
 * once, unless the call is cancelled first, after which no callback runs.
 */
#ifndef RHEMA_CORE_AI_CLIENT_H
#define RHEMA_CORE_AI_CLIENT_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct rhema_ai_client;
struct rhema_ai_call;

/* How a call ended. */
enum rhema_ai_result {
    RHEMA_AI_OK = 0,        /* a complete response (any status) */
    RHEMA_AI_ECONNECT,      /* could not connect (refused, DNS, TLS handshake) */
    RHEMA_AI_ETIMEOUT,      /* the call's timeout passed */
    RHEMA_AI_EIO,           /* the response was cut or malformed */
    RHEMA_AI_EABORTED,      /* on_data() asked to stop */
};

struct rhema_ai_call_cb {
    /*
     * A piece of the body; return 0 to go on, 2 to pause the transfer without
     * taking these bytes (they come again after rhema_ai_call_resume()), any
     * other nonzero to abort (on_done: EABORTED).
     */
    int (*on_data)(void *arg, struct rhema_ai_call *call, const char *buf, size_t len);
    /* The end; `why` a short human reason when result != OK.  The call is freed after. */
    void (*on_done)(void *arg, struct rhema_ai_call *call, enum rhema_ai_result result,
                    const char *why);
};

int rhema_ai_client_new(struct event_base *base, struct rhema_ai_client **out, char **err);
/* Cancel every call (no callbacks) and free.  NULL is a no-op. */
void rhema_ai_client_free(struct rhema_ai_client *c);

/*
 * Start a POST (body non-NULL) or GET.  headers: NULL-terminated "Name:
 * value" strings, copied.  timeout_ms bounds the whole call (0: none).
 * Returns the call, or NULL with *err set (malloc'd).
 */
struct rhema_ai_call *rhema_ai_call_start(struct rhema_ai_client *c, const char *url,
                                          const char *const *headers, const void *body,
                                          size_t len, long timeout_ms,
                                          const struct rhema_ai_call_cb *cb, void *arg,
                                          char **err);
/* Go on with a call paused by on_data() (not from inside its callbacks). */
void rhema_ai_call_resume(struct rhema_ai_call *call);
/* Stop a call that has not ended: no callback runs after.  Not from inside its callbacks. */
void rhema_ai_call_cancel(struct rhema_ai_call *call);

/* The response's status (0 before the headers), Content-Type ("" when none). */
long rhema_ai_call_status(const struct rhema_ai_call *call);
const char *rhema_ai_call_content_type(const struct rhema_ai_call *call);
/* The response's Retry-After in seconds (delta or HTTP date); -1 when absent. */
long rhema_ai_call_retry_after(const struct rhema_ai_call *call);
/* Calls started and not ended on this client; connections curl keeps open. */
unsigned rhema_ai_client_active(const struct rhema_ai_client *c);

/* Parse a Retry-After value (seconds or an HTTP date) against now (unix s); -1 if invalid. */
long rhema_ai_retry_after_parse(const char *v, int64_t now);

#endif /* RHEMA_CORE_AI_CLIENT_H */
