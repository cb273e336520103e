/*
 * sqlite_raw -- the baseline for rhemad's PUT benchmark: what one SQLite
 * connection does on its own, with no server, no HTTP and no JSON work.
 *
 *     sqlite_raw -d DB_FILE [-s SECONDS | -n ROWS] [-b VALUE_BYTES] [-p PAGE_SIZE] [-a]
 *                [-g SESSIONS] [-r]
 *
 * Opens DB_FILE (which should not exist yet) with the settings rhemad's
 * sqlite plugin uses by default (journal_mode=WAL, synchronous=NORMAL),
 * creates the plugin's kv table, and runs autocommit
 *     INSERT OR REPLACE INTO kv(ns, key, value, version, expires_at)
 * of distinct keys, each value a JSON session record of VALUE_BYTES bytes
 * (default 1024) shaped like the ones rhemad stores, for SECONDS seconds
 * (default 10) or ROWS rows.  One prepared statement, reused; each insert
 * is its own transaction, as each PUT is one transaction in rhemad.
 *
 * PAGE_SIZE (default 8192) is the page size of the new file, as the plugin
 * sets it.  With -a, each session is stored as all the rows rhemad writes
 * for it -- the record, its status index entry, one participant index entry
 * per participant (3) and its access record -- each row an autocommit
 * insert, and the rate counted is sessions per second.  With -g N, the
 * rows of N sessions go in one transaction instead (BEGIN ... COMMIT; -g 1:
 * one transaction per session, as rhemad stores one; -g 16: what SQLite
 * needs for them with group commit, on a core of its own).
 *
 * Ids are "raw-N", N counting up, as bench/put_session.lua's are (each
 * new key lands beside the last one); with -r they are random, as UUIDs
 * are (each new key lands in a leaf of its own).
 *
 * Prints one line: "rows N seconds S ops_per_sec X" (sessions for -a).
 * Not installed; built by bench/run.sh.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "rawclient.h"

static int exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        fprintf(stderr, "sqlite_raw: %s: %s\n", sql, msg ? msg : "?");
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    double seconds = 10;
    long long rows = 0, done = 0;
    size_t value_bytes = 1024;
    long page_size = 8192;
    int all_rows = 0, random_ids = 0;
    long group = 0; /* sessions per transaction; 0: autocommit per row */
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    char *value;
    int c;

    while ((c = getopt(argc, argv, "d:s:n:b:p:ag:r")) != -1) {
        switch (c) {
        case 'g': group = atol(optarg); break;
        case 'p': page_size = atol(optarg); break;
        case 'a': all_rows = 1; break;
        case 'r': random_ids = 1; break;
        case 'd': path = optarg; break;
        case 's': seconds = atof(optarg); break;
        case 'n': rows = atoll(optarg); break;
        case 'b': value_bytes = (size_t)atol(optarg); break;
        default: goto usage;
        }
    }
    if (!path || value_bytes < 400 || (seconds <= 0 && rows <= 0) || group < 0)
        goto usage;
    value = malloc(value_bytes + 1);
    if (!value)
        return 1;

    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        fprintf(stderr, "sqlite_raw: open %s: %s\n", path, db ? sqlite3_errmsg(db) : "?");
        return 1;
    }
    char pragma[64];
    snprintf(pragma, sizeof pragma, "PRAGMA page_size=%ld", page_size);
    if (exec(db, pragma) || exec(db, "PRAGMA journal_mode=WAL") || exec(db, "PRAGMA synchronous=NORMAL") ||
        exec(db, "CREATE TABLE IF NOT EXISTS kv("
                 "  ns TEXT NOT NULL COLLATE BINARY, key TEXT NOT NULL COLLATE BINARY,"
                 "  value BLOB NOT NULL, version INTEGER NOT NULL,"
                 "  expires_at INTEGER NOT NULL DEFAULT 0,"
                 "  PRIMARY KEY (ns, key)) WITHOUT ROWID"))
        return 1;
    if (sqlite3_prepare_v2(db,
                           "INSERT OR REPLACE INTO kv(ns, key, value, version, expires_at) "
                           "VALUES (?4, ?1, ?2, ?3, 0)",
                           -1, &st, NULL) != SQLITE_OK) {
        fprintf(stderr, "sqlite_raw: prepare: %s\n", sqlite3_errmsg(db));
        return 1;
    }

    double start = now_s(), end = start + seconds, t = start;
    if (group > 0 && exec(db, "BEGIN"))
        return 1;
    while (rows > 0 ? done < rows : t < end) {
        char id[64];
        if (random_ids)
            snprintf(id, sizeof id, "%08lx-%08lx-%lld", (unsigned long)random(),
                     (unsigned long)random(), done);
        else
            snprintf(id, sizeof id, "raw-%lld", done);
        make_record(value, value_bytes, id);
        /* the record, then (-a) the rows rhemad adds for it */
        static const char *const idx_ns[] = {"sessions.status", "sessions.participant",
                                             "sessions.participant", "sessions.participant",
                                             "sessions.access"};
        static const char *const idx_prefix[] = {"Active/", "agent-1/", "agent-2/", "agent-3/",
                                                 ""};
        for (int r = 0; r < (all_rows ? 6 : 1); r++) {
            char key[96];
            const char *ns = r == 0 ? "sessions" : idx_ns[r - 1];
            snprintf(key, sizeof key, "%s%s", r == 0 ? "" : idx_prefix[r - 1], id);
            sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
            if (r == 0)
                sqlite3_bind_blob(st, 2, value, (int)value_bytes, SQLITE_TRANSIENT);
            else
                sqlite3_bind_blob(st, 2, r == 5 ? "0 0 1" : "", r == 5 ? 5 : 0, SQLITE_STATIC);
            sqlite3_bind_int64(st, 3, done * 6 + r + 1);
            sqlite3_bind_text(st, 4, ns, -1, SQLITE_STATIC);
            if (sqlite3_step(st) != SQLITE_DONE) {
                fprintf(stderr, "sqlite_raw: insert: %s\n", sqlite3_errmsg(db));
                return 1;
            }
            sqlite3_reset(st);
        }
        done++;
        if (group > 0 && done % group == 0 && (exec(db, "COMMIT") || exec(db, "BEGIN")))
            return 1;
        if ((done & 63) == 0 || rows > 0)
            t = now_s();
    }
    if (group > 0 && exec(db, "COMMIT"))
        return 1;
    t = now_s() - start;
    printf("rows %lld seconds %.3f ops_per_sec %.0f\n", done, t, (double)done / t);
    sqlite3_finalize(st);
    sqlite3_close(db);
    free(value);
    return 0;

usage:
    fprintf(stderr, "usage: sqlite_raw -d DB_FILE [-s SECONDS | -n ROWS] [-b VALUE_BYTES >= 400] "
                    "[-p PAGE_SIZE] [-a] [-g SESSIONS] [-r]\n");
    return 2;
}
