/*
 * server -- the daemon's shared state and its worker threads.
 *
 * struct rhema_server is what main.c assembles at startup and every
 * subsystem reads: the configuration, the plugins, the storage instance,
 * and a pointer to each running module (cluster, services, keyring,
 * maintenance, ...).  struct rhema_worker is one worker thread: its event
 * base, its storage connection and session store, its compression
 * contexts, and the mailbox through which other threads hand it work
 * (mailbox.h).  Both live here, not in the HTTP layer, so that a module
 * that needs storage, the configuration or the boot id includes this
 * header and nothing of HTTP.
 *
 * Threads: main.c fills the server before the workers start and tears it
 * down after they stopped; the members are then read-only except where a
 * comment says otherwise.  A worker's members belong to its own thread.
 */
#ifndef RHEMA_CORE_SERVER_H
#define RHEMA_CORE_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/util.h>

#include "codec.h"
#include "config.h"
#include "mailbox.h"
#include "plugin.h"
#include "store.h"

struct event;
struct event_base;
struct evhttp;
struct evconnlistener;
struct rhema_req;
struct rhema_http_conns;
struct rhema_server;
struct rhema_auth;
struct rhema_limits;
struct rhema_monitor;
struct rhema_alerts;
struct rhema_health_registry;
struct rhema_metrics_block;
struct rhema_history;
struct rhema_ai;
struct rhema_ai_worker;
struct rhema_ai_usage;
struct rhema_feed;
struct rhema_watchers;
struct rhema_session_reads;

/* What a worker runs for each request (core/api/pipeline.c: rhema_pipeline_run). */
typedef void rhema_request_fn(struct rhema_req *r);

struct rhema_worker {
    int id;
    pthread_t thread;
    struct rhema_server *srv;
    struct event_base *base;
    struct evhttp *http;
    struct evconnlistener *listener;
    rhema_request_fn *handle;  /* the request path, given to rhema_http_start() */
    struct event *stop_ev;     /* activated by the main thread */
    struct event *tick_ev;     /* once a second: flush access counts; drain checks */
    struct event *log_ev;      /* activated by a turn's first access line: writes them */
    rhema_storage_conn *conn;
    struct rhema_store store;
    uint64_t seq;              /* request counter, for request ids */
    atomic_int inflight;       /* handlers answered whose reply is not fully sent */
    int draining;
    uint64_t drain_deadline_ns;
    int started;               /* 1 once the thread runs, -1 when it failed */
    /* group commit: writes handed to the committer (commit.h), answered through the mailbox */
    size_t outstanding;        /* submitted, not yet answered (worker thread only) */
    struct rhema_mailbox mailbox; /* work other threads hand back to this worker */
    uint64_t last_input_ns;    /* when bytes last arrived on a connection (drain) */
    struct rhema_http_conns *conns; /* http.c: this worker's connections, their deadlines
                                     * and output, the listener's state */
    struct rhema_codec_ctxs codec_ctxs; /* this worker's compression contexts */
    struct rhema_metrics_block *metrics; /* metrics/metrics.h: this worker's counters; NULL: off */
    struct rhema_ai_worker *ai;  /* ai/gateway.h: HTTP client and exchanges; NULL until used */
    struct rhema_watchers *watchers; /* api/api_events.h: this worker's waiters on the change
                                      * feed; NULL until the first one */
    struct rhema_session_reads *session_reads; /* api/api_sessions.h: the session GETs of
                                                * this loop turn; NULL until the first one */
};

struct rhema_server {
    struct rhema_config *cfg;
    struct rhema_plugin_registry *plugins;
    const struct rhema_loaded_plugin *storage_plugin;
    const struct rhema_storage_plugin *storage; /* the at-rest wrapper's vtable (atrest.h);
                                                 * storage_plugin is the real one */
    rhema_storage_instance *storage_inst;
    evutil_socket_t listen_fd;
    char listen_addr[128];       /* the address actually bound, host:port */
    int nworkers;
    struct rhema_worker *workers;
    uint64_t started_ms;
    char boot_id[9];             /* random per process, prefix of request ids */
    atomic_int log_access;       /* logging.access_log, can change on reload */
    struct rhema_committer *committer; /* NULL: the backend has no group(); workers write */
    struct rhema_codecs codecs;  /* the compression plugins, opened */
    struct rhema_keyring *keyring; /* NULL: key management off (api_keys.c) */
    struct rhema_keys *keys;        /* keys.h: keyring settings and timers */
    struct rhema_maintenance *maintenance; /* maintenance.h: timers, data-size gauge */
    struct rhema_perfmon *perfmon; /* perfmon.h: message feature measurements, alerts */
    struct rhema_cluster *cluster; /* cluster.h: membership, leader lease, epoch */
    struct rhema_services *services; /* services.h: registry, health checks, balancers */
    struct rhema_auth *auth;         /* api/api_auth.h: keys, roles, rules, protected mode */
    struct rhema_limits *limits;     /* limit/ratelimit.h: rate limits; NULL when off */
    struct rhema_monitor *monitor;   /* monitor.h: alert evaluation, webhook; NULL when off */
    struct rhema_alerts *alerts;     /* alerts.h: the rules and their states (monitor.c) */
    struct rhema_health_registry *health; /* health.h: the components of GET /health */
    struct rhema_history *history;   /* metrics/history.h: sampled series; NULL when off */
    char *console_dir;               /* api/api_console.h: the /ui/ files; NULL when off */
    struct rhema_ai *ai;             /* ai/gateway.h: the AI gateway; NULL when off */
    struct rhema_ai_usage *ai_usage; /* ai/usage.h: its token limits and usage; NULL when off */
    struct rhema_feed *feed;         /* watch/feed.h: the change feed; NULL when off */
    struct rhema_access_table *access; /* session_access.h: the sessions' access counts,
                                        * written by their own thread (http.c starts it) */
    /*
     * api/api_events.c: end a worker's watches when it drains, free them
     * when it stops (set by rhema_api_start; http.c calls them and knows
     * nothing of watches).  NULL: none.
     */
    void (*watchers_drain)(struct rhema_worker *w);
    void (*watchers_release)(struct rhema_worker *w);
    /* api/api_sessions.c: answer the session reads a stopping worker set aside.  NULL: none */
    void (*reads_release)(struct rhema_worker *w);
    atomic_long http_conns;      /* connections open across workers (service.max_connections) */
    atomic_llong http_out_bytes; /* reply bytes queued across workers, not yet sent */
};

#endif /* RHEMA_CORE_SERVER_H */
