/*
 * sqlite_rw -- the direct SQLite baseline of bench/run-backends.sh: what one
 * SQLite connection does on its own (no server, no HTTP, no JSON work),
 * writing and then reading 1 KiB session rows, with per-operation latency.
 *
 *     sqlite_rw -d DB_FILE [-s SECONDS] [-b VALUE_BYTES] [-p PAGE_SIZE]
 *               [-S normal|full] [-r] [-a]
 *
 * Opens DB_FILE (which should not exist yet) as rhemad's sqlite plugin
 * does (journal_mode=WAL, synchronous as -S, default NORMAL; 8 KiB pages),
 * creates the plugin's kv table and then:
 *
 *   PUT phase  for SECONDS (default 10): autocommit
 *              INSERT OR REPLACE INTO kv(ns, key, value, version, expires_at)
 *              of distinct keys "raw-N" in ns "sessions", each value a JSON
 *              session record of VALUE_BYTES bytes (default 1024) -- one
 *              prepared statement, one transaction per row (as bench/sqlite_raw.c)
 *              With -a, each session is stored as the rows rhemad's sqlite
 *              plugin writes for it -- the record, its status index entry,
 *              three participant index entries, its access record -- in one
 *              transaction per session (BEGIN ... COMMIT): the same
 *              operation as a session PUT, done directly.
 *   GET phase  (with -r) for SECONDS: primary-key SELECT value, version of a
 *              uniformly random key among those the PUT phase wrote (one
 *              prepared statement; the value is copied out, as the plugin does)
 *
 * Prints one line per phase:
 *   "put ops N seconds S ops_per_sec X p50_us A p99_us B"
 *   "get ops N seconds S ops_per_sec X p50_us A p99_us B"
 * Latencies are measured around each operation (clock_gettime, monotonic).
 * Not installed; built by bench/run-backends.sh.  (bench/sqlite_raw.c is the
 * insert-only baseline of bench/run.sh; this file leaves it alone.)
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "rawclient.h"

static int exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        fprintf(stderr, "sqlite_rw: %s: %s\n", sql, msg ? msg : "?");
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *path = NULL, *sync = "NORMAL";
    double seconds = 10;
    size_t value_bytes = 1024;
    long page_size = 8192;
    int reads = 0, all_rows = 0, c;
    sqlite3 *db = NULL;
    sqlite3_stmt *ins = NULL, *sel = NULL, *idx = NULL;
    struct lat lput = {0}, lget = {0};
    char *value, *copy;

    while ((c = getopt(argc, argv, "d:s:b:p:S:ra")) != -1) {
        switch (c) {
        case 'a': all_rows = 1; break;
        case 'd': path = optarg; break;
        case 's': seconds = atof(optarg); break;
        case 'b': value_bytes = (size_t)atol(optarg); break;
        case 'p': page_size = atol(optarg); break;
        case 'S': sync = optarg; break;
        case 'r': reads = 1; break;
        default: goto usage;
        }
    }
    if (!path || value_bytes < 400 || seconds <= 0 ||
        (strcasecmp(sync, "normal") != 0 && strcasecmp(sync, "full") != 0 &&
         strcasecmp(sync, "off") != 0 && strcasecmp(sync, "extra") != 0))
        goto usage;
    value = malloc(value_bytes + 1);
    copy = malloc(value_bytes + 1);
    if (!value || !copy)
        return 1;

    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        fprintf(stderr, "sqlite_rw: open %s: %s\n", path, db ? sqlite3_errmsg(db) : "?");
        return 1;
    }
    char pragma[64];
    snprintf(pragma, sizeof pragma, "PRAGMA page_size=%ld", page_size);
    if (exec(db, pragma) || exec(db, "PRAGMA journal_mode=WAL"))
        return 1;
    snprintf(pragma, sizeof pragma, "PRAGMA synchronous=%s", sync);
    if (exec(db, pragma) ||
        exec(db, "CREATE TABLE IF NOT EXISTS kv("
                 "  ns TEXT NOT NULL COLLATE BINARY, key TEXT NOT NULL COLLATE BINARY,"
                 "  value BLOB NOT NULL, version INTEGER NOT NULL,"
                 "  expires_at INTEGER NOT NULL DEFAULT 0,"
                 "  PRIMARY KEY (ns, key)) WITHOUT ROWID"))
        return 1;
    if (sqlite3_prepare_v2(db,
                           "INSERT OR REPLACE INTO kv(ns, key, value, version, expires_at) "
                           "VALUES ('sessions', ?1, ?2, ?3, 0)",
                           -1, &ins, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db,
                           "SELECT value, version FROM kv WHERE ns = 'sessions' AND key = ?1 "
                           "AND (expires_at = 0 OR expires_at > ?2)",
                           -1, &sel, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db,
                           "INSERT OR REPLACE INTO kv(ns, key, value, version, expires_at) "
                           "VALUES (?1, ?2, ?3, ?4, 0)",
                           -1, &idx, NULL) != SQLITE_OK) {
        fprintf(stderr, "sqlite_rw: prepare: %s\n", sqlite3_errmsg(db));
        return 1;
    }

    /* ---- PUT ---- */
    long long done = 0;
    double start = now_s(), end = start + seconds, t = start;
    while (t < end) {
        char id[64];
        snprintf(id, sizeof id, "raw-%lld", done);
        make_record(value, value_bytes, id);
        if (all_rows && exec(db, "BEGIN"))
            return 1;
        sqlite3_bind_text(ins, 1, id, -1, SQLITE_TRANSIENT);
        sqlite3_bind_blob(ins, 2, value, (int)value_bytes, SQLITE_TRANSIENT);
        sqlite3_bind_int64(ins, 3, done + 1);
        if (sqlite3_step(ins) != SQLITE_DONE) {
            fprintf(stderr, "sqlite_rw: insert: %s\n", sqlite3_errmsg(db));
            return 1;
        }
        sqlite3_reset(ins);
        for (int r = 0; all_rows && r < 5; r++) {
            static const char *const ns[] = {"sessions.status", "sessions.participant",
                                             "sessions.participant", "sessions.participant",
                                             "sessions.access"};
            static const char *const prefix[] = {"Active/", "agent-1/", "agent-2/", "agent-3/",
                                                 ""};
            char key[96];
            snprintf(key, sizeof key, "%s%s", prefix[r], id);
            sqlite3_bind_text(idx, 1, ns[r], -1, SQLITE_STATIC);
            sqlite3_bind_text(idx, 2, key, -1, SQLITE_TRANSIENT);
            sqlite3_bind_blob(idx, 3, r == 4 ? "0 0 1" : "", r == 4 ? 5 : 0, SQLITE_STATIC);
            sqlite3_bind_int64(idx, 4, done + 1);
            if (sqlite3_step(idx) != SQLITE_DONE) {
                fprintf(stderr, "sqlite_rw: insert: %s\n", sqlite3_errmsg(db));
                return 1;
            }
            sqlite3_reset(idx);
        }
        if (all_rows && exec(db, "COMMIT"))
            return 1;
        double t2 = now_s();
        lat_add(&lput, (t2 - t) * 1e6);
        t = t2;
        done++;
    }
    report("put", &lput, t - start);

    /* ---- GET ---- */
    if (reads && done > 0) {
        unsigned long long rnd = 0x9e3779b97f4a7c15ull ^ (unsigned long long)getpid();
        start = now_s();
        end = start + seconds;
        t = start;
        while (t < end) {
            char id[64];
            rnd ^= rnd << 13, rnd ^= rnd >> 7, rnd ^= rnd << 17;
            snprintf(id, sizeof id, "raw-%llu", rnd % (unsigned long long)done);
            sqlite3_bind_text(sel, 1, id, -1, SQLITE_TRANSIENT);
            sqlite3_bind_int64(sel, 2, 1);
            if (sqlite3_step(sel) != SQLITE_ROW) {
                fprintf(stderr, "sqlite_rw: select %s: %s\n", id, sqlite3_errmsg(db));
                return 1;
            }
            int len = sqlite3_column_bytes(sel, 0);
            const void *v = sqlite3_column_blob(sel, 0);
            memcpy(copy, v, (size_t)len < value_bytes ? (size_t)len : value_bytes);
            (void)sqlite3_column_int64(sel, 1);
            sqlite3_reset(sel);
            double t2 = now_s();
            lat_add(&lget, (t2 - t) * 1e6);
            t = t2;
        }
        report("get", &lget, t - start);
    }
    sqlite3_finalize(ins);
    sqlite3_finalize(sel);
    sqlite3_finalize(idx);
    sqlite3_close(db);
    free(value);
    free(copy);
    free(lput.v);
    free(lget.v);
    return 0;

usage:
    fprintf(stderr, "usage: sqlite_rw -d DB_FILE [-s SECONDS] [-b VALUE_BYTES >= 400] "
                    "[-p PAGE_SIZE] [-S normal|full] [-r] [-a]\n");
    return 2;
}
