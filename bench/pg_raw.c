/*
 * pg_raw -- the direct PostgreSQL baseline of bench/run-backends.sh: what
 * one libpq connection does on its own (no rhemad, no HTTP, no JSON work),
 * writing and then reading 1 KiB session rows, with per-operation latency.
 *
 *     pg_raw -c CONNINFO [-s SECONDS] [-b VALUE_BYTES] [-r]
 *
 * Creates (drops first) the table raw_kv, shaped like the postgres plugin's
 * kv: (ns text COLLATE "C", key bytea, value bytea, version bigint,
 * expires_at timestamptz, PRIMARY KEY (ns, key)), with the plugin's partial
 * index on expires_at.  Then:
 *
 *   PUT phase  for SECONDS (default 10): autocommit
 *              INSERT INTO raw_kv(ns, key, value, version, expires_at)
 *              VALUES ($1, $2, $3, $4, NULL)
 *              of distinct keys "raw-N" in ns "sessions", each value a JSON
 *              session record of VALUE_BYTES bytes (default 1024); one
 *              prepared statement, binary parameters, each INSERT its own
 *              transaction (so one WAL flush each, with synchronous_commit on)
 *   GET phase  (with -r) for SECONDS: the prepared primary-key
 *              SELECT value, version FROM raw_kv WHERE ns = $1 AND key = $2
 *              AND (expires_at IS NULL OR expires_at > now())
 *              of a uniformly random key the PUT phase wrote, binary results
 *
 * Prints one line per phase:
 *   "put ops N seconds S ops_per_sec X p50_us A p99_us B"
 *   "get ops N seconds S ops_per_sec X p50_us A p99_us B"
 * Not installed; built by bench/run-backends.sh.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "rawclient.h"

static int exec(PGconn *pg, const char *sql)
{
    PGresult *r = PQexec(pg, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        fprintf(stderr, "pg_raw: %s: %s", sql, PQerrorMessage(pg));
        PQclear(r);
        return -1;
    }
    PQclear(r);
    return 0;
}

static void be64_put(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}

int main(int argc, char **argv)
{
    const char *conninfo = NULL;
    double seconds = 10;
    size_t value_bytes = 1024;
    int reads = 0, c;
    struct lat lput = {0}, lget = {0};
    char *value, *copy;

    while ((c = getopt(argc, argv, "c:s:b:r")) != -1) {
        switch (c) {
        case 'c': conninfo = optarg; break;
        case 's': seconds = atof(optarg); break;
        case 'b': value_bytes = (size_t)atol(optarg); break;
        case 'r': reads = 1; break;
        default: goto usage;
        }
    }
    if (!conninfo || value_bytes < 400 || seconds <= 0)
        goto usage;
    value = malloc(value_bytes + 1);
    copy = malloc(value_bytes + 1);
    if (!value || !copy)
        return 1;

    PGconn *pg = PQconnectdb(conninfo);
    if (PQstatus(pg) != CONNECTION_OK) {
        fprintf(stderr, "pg_raw: connect: %s", PQerrorMessage(pg));
        return 1;
    }
    if (exec(pg, "SET client_min_messages = warning") || exec(pg, "DROP TABLE IF EXISTS raw_kv") ||
        exec(pg, "CREATE TABLE raw_kv (ns text COLLATE \"C\" NOT NULL, key bytea NOT NULL,"
                 " value bytea NOT NULL, version bigint NOT NULL, expires_at timestamptz,"
                 " PRIMARY KEY (ns, key))") ||
        exec(pg, "CREATE INDEX raw_kv_expires ON raw_kv (expires_at) WHERE expires_at IS NOT NULL"))
        return 1;
    static const Oid ins_types[4] = {25 /* text */, 17 /* bytea */, 17, 20 /* int8 */};
    static const Oid sel_types[2] = {25, 17};
    PGresult *r = PQprepare(pg, "ins",
                            "INSERT INTO raw_kv (ns, key, value, version, expires_at) "
                            "VALUES ($1, $2, $3, $4, NULL)",
                            4, ins_types);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        fprintf(stderr, "pg_raw: prepare: %s", PQerrorMessage(pg));
        return 1;
    }
    PQclear(r);
    r = PQprepare(pg, "sel",
                  "SELECT value, version FROM raw_kv WHERE ns = $1 AND key = $2 "
                  "AND (expires_at IS NULL OR expires_at > now())",
                  2, sel_types);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        fprintf(stderr, "pg_raw: prepare: %s", PQerrorMessage(pg));
        return 1;
    }
    PQclear(r);

    static const int fmts[4] = {1, 1, 1, 1};
    const char *vals[4];
    int lens[4];
    unsigned char ver[8];

    /* ---- PUT ---- */
    long long done = 0;
    double start = now_s(), end = start + seconds, t = start;
    while (t < end) {
        char id[64];
        int idlen = snprintf(id, sizeof id, "raw-%lld", done);
        make_record(value, value_bytes, id);
        be64_put(ver, (uint64_t)done + 1);
        vals[0] = "sessions", lens[0] = 8;
        vals[1] = id, lens[1] = idlen;
        vals[2] = value, lens[2] = (int)value_bytes;
        vals[3] = (const char *)ver, lens[3] = 8;
        r = PQexecPrepared(pg, "ins", 4, vals, lens, fmts, 1);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            fprintf(stderr, "pg_raw: insert: %s", PQerrorMessage(pg));
            return 1;
        }
        PQclear(r);
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
            int idlen = snprintf(id, sizeof id, "raw-%llu", rnd % (unsigned long long)done);
            vals[0] = "sessions", lens[0] = 8;
            vals[1] = id, lens[1] = idlen;
            r = PQexecPrepared(pg, "sel", 2, vals, lens, fmts, 1);
            if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
                fprintf(stderr, "pg_raw: select %s: %s", id, PQerrorMessage(pg));
                return 1;
            }
            size_t len = (size_t)PQgetlength(r, 0, 0);
            memcpy(copy, PQgetvalue(r, 0, 0), len < value_bytes ? len : value_bytes);
            PQclear(r);
            double t2 = now_s();
            lat_add(&lget, (t2 - t) * 1e6);
            t = t2;
        }
        report("get", &lget, t - start);
    }
    PQfinish(pg);
    free(value);
    free(copy);
    free(lput.v);
    free(lget.v);
    return 0;

usage:
    fprintf(stderr, "usage: pg_raw -c CONNINFO [-s SECONDS] [-b VALUE_BYTES >= 400] [-r]\n");
    return 2;
}
