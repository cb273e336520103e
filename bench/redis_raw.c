/*
 * redis_raw -- the direct Redis baseline of bench/run-backends.sh: what one
 * hiredis connection does on its own (no rhemad, no HTTP, no JSON work, no
 * Lua script), writing and then reading 1 KiB session entries, with
 * per-operation latency.
 *
 *     redis_raw -h HOST -p PORT [-s SECONDS] [-b VALUE_BYTES] [-u] [-r]
 *
 * Keys are laid out as the redis plugin lays out an entry, under the prefix
 * "rawbench:" (the plugin's default prefix is "rhema:", so both can share a
 * server):
 *
 *   PUT phase  for SECONDS (default 10): per session "raw-N"
 *                HSET rawbench:e/sessions/raw-N v <VALUE_BYTES of JSON> n <N+1>
 *                ZADD rawbench:z/sessions 0 raw-N
 *              sent together in one pipeline (one round trip; with
 *              appendfsync always, one AOF fsync), the next session only
 *              after both replies.  With -u, two round trips (each command
 *              waits for its reply).  One op = one session.
 *   GET phase  (with -r) for SECONDS: HGETALL of a uniformly random entry
 *              the PUT phase wrote (one round trip)
 *
 * Prints one line per phase:
 *   "put ops N seconds S ops_per_sec X p50_us A p99_us B"
 *   "get ops N seconds S ops_per_sec X p50_us A p99_us B"
 * The keys under rawbench: are deleted first (the ones of an earlier run).
 * Not installed; built by bench/run-backends.sh.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "rawclient.h"

static redisReply *reply(redisContext *ctx, const char *what)
{
    void *r = NULL;
    if (redisGetReply(ctx, &r) != REDIS_OK || r == NULL) {
        fprintf(stderr, "redis_raw: %s: %s\n", what, ctx->errstr);
        exit(1);
    }
    if (((redisReply *)r)->type == REDIS_REPLY_ERROR) {
        fprintf(stderr, "redis_raw: %s: %s\n", what, ((redisReply *)r)->str);
        exit(1);
    }
    return r;
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    int port = 6379, reads = 0, unpipelined = 0, c;
    double seconds = 10;
    size_t value_bytes = 1024;
    struct lat lput = {0}, lget = {0};
    char *value, *copy;

    while ((c = getopt(argc, argv, "h:p:s:b:ur")) != -1) {
        switch (c) {
        case 'h': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 's': seconds = atof(optarg); break;
        case 'b': value_bytes = (size_t)atol(optarg); break;
        case 'u': unpipelined = 1; break;
        case 'r': reads = 1; break;
        default: goto usage;
        }
    }
    if (value_bytes < 400 || seconds <= 0 || port <= 0)
        goto usage;
    value = malloc(value_bytes + 1);
    copy = malloc(value_bytes + 1);
    if (!value || !copy)
        return 1;

    redisContext *ctx = redisConnect(host, port);
    if (!ctx || ctx->err) {
        fprintf(stderr, "redis_raw: connect %s:%d: %s\n", host, port, ctx ? ctx->errstr : "?");
        return 1;
    }
    /* forget an earlier run's keys (small: a benchmark's worth) */
    redisReply *r = redisCommand(ctx, "EVAL %s 0",
                                 "local n = 0 for _, k in ipairs(redis.call('KEYS', "
                                 "'rawbench:*')) do redis.call('DEL', k) n = n + 1 end return n");
    if (!r || r->type == REDIS_REPLY_ERROR) {
        fprintf(stderr, "redis_raw: cleanup: %s\n", r ? r->str : ctx->errstr);
        return 1;
    }
    freeReplyObject(r);

    /* ---- PUT ---- */
    long long done = 0;
    double start = now_s(), end = start + seconds, t = start;
    while (t < end) {
        char id[64], key[96], ver[24];
        snprintf(id, sizeof id, "raw-%lld", done);
        snprintf(key, sizeof key, "rawbench:e/sessions/%s", id);
        snprintf(ver, sizeof ver, "%lld", done + 1);
        make_record(value, value_bytes, id);
        const char *hv[] = {"HSET", key, "v", value, "n", ver};
        size_t hl[] = {4, strlen(key), 1, value_bytes, 1, strlen(ver)};
        const char *zv[] = {"ZADD", "rawbench:z/sessions", "0", id};
        size_t zl[] = {4, 19, 1, strlen(id)};
        redisAppendCommandArgv(ctx, 6, hv, hl);
        if (unpipelined)
            freeReplyObject(reply(ctx, "HSET"));
        redisAppendCommandArgv(ctx, 4, zv, zl);
        if (!unpipelined)
            freeReplyObject(reply(ctx, "HSET"));
        freeReplyObject(reply(ctx, "ZADD"));
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
            char key[96];
            rnd ^= rnd << 13, rnd ^= rnd >> 7, rnd ^= rnd << 17;
            snprintf(key, sizeof key, "rawbench:e/sessions/raw-%llu",
                     rnd % (unsigned long long)done);
            const char *gv[] = {"HGETALL", key};
            size_t gl[] = {7, strlen(key)};
            redisAppendCommandArgv(ctx, 2, gv, gl);
            r = reply(ctx, "HGETALL");
            if (r->type != REDIS_REPLY_ARRAY || r->elements != 4) {
                fprintf(stderr, "redis_raw: HGETALL %s: no entry\n", key);
                return 1;
            }
            for (size_t i = 0; i + 1 < r->elements; i += 2)
                if (r->element[i]->len == 1 && r->element[i]->str[0] == 'v')
                    memcpy(copy, r->element[i + 1]->str,
                           r->element[i + 1]->len < value_bytes ? r->element[i + 1]->len
                                                                : value_bytes);
            freeReplyObject(r);
            double t2 = now_s();
            lat_add(&lget, (t2 - t) * 1e6);
            t = t2;
        }
        report("get", &lget, t - start);
    }
    redisFree(ctx);
    free(value);
    free(copy);
    free(lput.v);
    free(lget.v);
    return 0;

usage:
    fprintf(stderr, "usage: redis_raw [-h HOST] [-p PORT] [-s SECONDS] [-b VALUE_BYTES >= 400] "
                    "[-u] [-r]\n");
    return 2;
}
