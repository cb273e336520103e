/*
 * redis -- the Redis storage plugin (hiredis), for clusters of rhema nodes.
 *
 * Features SHARED | DURABLE | TTL | LEASES.  DURABLE means "as durable as the
 * server is configured": with `appendonly yes` and `appendfsync always` Redis
 * fsyncs the AOF before it answers, so an acknowledged write survives a crash
 * of the server.  With `appendfsync everysec` up to a second of acknowledged
 * writes can be lost, and with persistence off, everything.  The plugin
 * cannot check this for the operator; configure the server accordingly.
 *
 * Configuration (persistence.redis):
 *   host       = "127.0.0.1";
 *   port       = 6379;
 *   database   = 0;          SELECTed after every (re)connect
 *   password   = "";         AUTH after every (re)connect when not empty
 *   password_env = "";       or: the name of the environment variable that
 *                            holds the password (not both)
 *   prefix     = "rhema:";   every key the plugin creates starts with it
 *   timeout_ms = 2000;       connect and per-command socket timeout
 *   tls        = false;      TLS to the server (names after redis-cli's
 *                            options), always verified:
 *   tls_ca_file = "";        the CAs to trust; the system store when empty
 *   tls_cert_file = "";      a client certificate (chain), for servers with
 *   tls_key_file = "";       `tls-auth-clients yes`: both or neither
 *   tls_server_name = "";    the name (or IP address) the certificate must
 *                            carry, and the SNI; `host` when empty
 *
 * TLS: Debian 12's hiredis (0.14) has no TLS, so redis_tls.c dials the
 * server, verifies the handshake (TLS 1.2 at least) and relays bytes
 * between an OpenSSL connection and a socketpair whose other end hiredis
 * gets with redisConnectFd(); hiredis' timeouts, the fault handling below
 * and the reconnect path are the same as over plain TCP.  The flat tls_*
 * names (not a tls = { } group) because the host's cfg_* getters read the
 * plugin group's own members only.
 *
 * Data layout (P is the prefix; a namespace never contains '/', so every
 * name below is unambiguous):
 *   P"version"          string   the global version counter (INCRBY); every
 *                                put takes the next value, so versions of a
 *                                key never repeat, even across a delete
 *   P"namespaces"       set      namespaces that may hold entries
 *   P"z/"ns             zset     one member per key of ns, score 0, so that
 *                                ZRANGEBYLEX walks the keys in byte order
 *                                (memcmp, shorter first: strcmp order)
 *   P"e/"ns"/"key       hash     {v: value, n: version as decimal}; a put
 *                                with a TTL sets PEXPIRE on it, one without
 *                                PERSISTs it
 *   P"lease/"name       string   the holder, SET with PX: Redis expires it
 *   P"epoch/"name       string   the lease's epoch (INCR), never deleted
 *   P"leases"           set      lease names, for backup()
 *   P"rate/"key         string   rate()'s GCRA state of a key: "n rest t0 ..
 *                                t(n-1)" in decimal unix us (the server's
 *                                clock), PEXPIREAT its rest instant, so
 *                                Redis forgets a key once every tat passed
 * When an entry expires Redis removes its hash, but its zset member stays
 * until a scan or stats call meets it and removes it (lazily): every reader
 * treats a member without a hash as absent.
 *
 * Scripts (SCRIPT LOAD at every connect, EVALSHA, EVAL on NOSCRIPT).  Each
 * runs atomically on the server, so a precondition and the write it guards
 * can never be split by another client:
 *   write   a batch: checks every precondition first (later writes see the
 *           effect of earlier ones), applies nothing on failure, then
 *           applies all and takes the versions with one INCRBY.  put, del
 *           and batch are all this script.
 *   scan    one page of a key range: live entries only, removing dead
 *           members, bounded in the members it examines per call.
 *   stats   one page of a namespace: counts, byte sums, dead-member removal.
 *   lease   acquire / renew / release / query of one lease (below).
 *   dump    a read-only snapshot of every entry and lease, for backup().
 *   rate    one GCRA step of rate() (rhema_gcra_step() of
 *           ../common/rate_table.c in Lua) on the server's TIME, which it
 *           returns so that q->now_us says which clock counted.  Lua
 *           numbers are doubles: unix us (~1.8e15) plus the intervals and
 *           tolerances rhema_rate_query_invalid() admits (2^50 us at most)
 *           stay below 2^53, where every integer is exact.  A state of
 *           another n, or at rest, counts as absent; a refusal writes
 *           nothing.  Backup and restore leave these keys alone (not data).
 * Sequenced writes (RHEMA_WRITE_SEQUENCED, minor 3) are part of the write
 * script: it takes their versions from the same INCRBY (sharing the one of
 * the put before them), builds their keys from the prefix it is given and
 * the 20 digits, and PUBLISHes on P"feed/"database (pub/sub channels are
 * not per database) in the same atomic run.  Scripts run one at a time, so
 * records become visible in version order with nothing more to do; watch()
 * SUBSCRIBEs to that channel (see "watch()" below).
 * The scripts build entry keys from the prefix they get as an argument, so
 * they do not declare every key they touch: fine on a standalone server or
 * a primary with replicas, not on Redis Cluster (which rhema does not use).
 *
 * Leases: an acquire of a free lease runs SET NX PX on the holder key and
 * INCR on the epoch key in one script: a holder never exists with the
 * previous holder's epoch, not even for a moment or after a client crash.
 * Renew and release compare the holder and then PEXPIRE / DEL it (compare-
 * and-renew, compare-and-release).  The epoch key is never deleted, so a new
 * holder's epoch is larger than every earlier one, across release, expiry
 * and (with AOF) server restarts.  Time is the server's clock (PX, PTTL).
 *
 * Consistency: get is one HMGET; every write is one script; group() sends
 * one script per member in one pipeline (one round trip) and Redis runs
 * them in order, each atomically.  scan and stats are atomic per page (256
 * and 1000 members), not across pages; backup is one script, so it is a
 * consistent snapshot, at the price of blocking the server while it runs
 * (fine for coordination data, not for gigabytes).  stats are computed by
 * that bounded scan rather than kept in counters, because Redis expires
 * entries by itself and counters would not see it.
 *
 * Backup and restore: backup() is the dump script written to a file (see
 * write_dump); restore() checks a whole dump (counts, lengths, names) and
 * then replaces everything under the prefix in one script (see rd_restore).
 *
 * Faults: a connection error makes every call return RHEMA_EUNAVAIL with the
 * reason in errmsg(); the connection is dropped and the next call
 * reconnects by itself (AUTH, SELECT, SCRIPT LOAD again), at once after a
 * loss and then with a backoff of 100 ms doubling to 2 s between failed
 * attempts.  A read that meets a dead connection is retried once on a new
 * one; a write is never resent: when the connection is lost after it was
 * sent its outcome is unknown, and the call says so (RHEMA_EUNAVAIL).
 * Before each command the socket is polled, so a connection the server
 * closed while idle (a restart) is replaced before a write is sent on it.
 * SIGPIPE is blocked in the calling thread around socket I/O (as libpq
 * does), so a closed socket never kills a host that did not ignore it.
 *
 * Threads: one redisContext per connection, used by its thread only; the
 * instance holds configuration only, read-only after open().
 *
 * Needs Redis >= 4.0 (HSET of several fields, HSTRLEN, ZRANGEBYLEX).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <openssl/ssl.h>

#include <rhema/storage.h>

#include "../common/rate_table.h"
#include "../common/storage_check.h"
#include "redis_tls.h"

#define PLUGIN_NAME "redis"
#define RD_ERRMSG_MAX 512
#define BACKOFF_MIN_MS 100u
#define BACKOFF_MAX_MS 2000u
#define SCAN_PAGE 256u    /* entries a scan page returns at most */
#define STATS_PAGE 1000u  /* members a stats page examines */
#define TTL_MAX_MS ((uint64_t)1 << 46) /* about 2230 years: longer TTLs are clamped */
#define BACKUP_MAGIC "rhema-redis-backup 1\n"

/* ---- the scripts ---- */

enum script_id { SC_WRITE, SC_SCAN, SC_STATS, SC_LEASE, SC_DUMP, SC_RATE, SC__COUNT };

/*
 * KEYS[1] version counter, KEYS[2] namespace set, then per write i
 * (0-based) KEYS[3+2i] its entry hash and KEYS[4+2i] its namespace zset.
 * ARGV[1] the channel of sequenced writes, then per write, 6 each: op
 * ('p' put, 'd' delete, 's' sequenced put), ns, key, value, expected (''
 * any, '-' absent, else a decimal version), ttl ms ('0' none).
 * A sequenced put's key and entry hash (KEYS[3+2i]) are prefixes: the
 * script appends the 20 digits of its version, which is that of the write
 * before it when that is a 'p', else the next one; the key is new, so it
 * has no precondition.  A run that applied a sequenced put PUBLISHes ''
 * on the channel, in the same atomic step.
 * Returns {0, version...} (version '0' for a delete), or {code, index, cur}
 * with code -1 (delete of an absent key) or -2 (version mismatch).
 */
static const char script_write[] =
    "local n = (#ARGV - 1) / 6\n"
    "local seen, vers, puts, seq = {}, {}, 0, false\n"
    "for i = 0, n - 1 do\n"
    "  local a, ek = 1 + i * 6, KEYS[3 + 2 * i]\n"
    "  local op, ev = ARGV[a + 1], ARGV[a + 5]\n"
    "  if op == 's' then\n"
    "    seq = true\n"
    "    if i == 0 or ARGV[a - 5] ~= 'p' then puts = puts + 1 end\n"
    "    vers[i + 1] = puts\n"
    "  else\n"
    "    local cur = seen[ek]\n"
    "    if cur == nil then cur = redis.call('HGET', ek, 'n') or '' end\n"
    "    if op == 'd' and cur == '' then return {-1, i, ''} end\n"
    "    if ev == '-' then\n"
    "      if cur ~= '' then return {-2, i, cur} end\n"
    "    elseif ev ~= '' and ev ~= cur then return {-2, i, cur} end\n"
    "    if op == 'p' then puts = puts + 1; vers[i + 1] = puts; seen[ek] = 'pending:' .. puts\n"
    "    else vers[i + 1] = 0; seen[ek] = '' end\n"
    "  end\n"
    "end\n"
    "local base = 0\n"
    "if puts > 0 then base = redis.call('INCRBY', KEYS[1], puts) - puts end\n"
    "local out = {0}\n"
    "for i = 0, n - 1 do\n"
    "  local a, ek, zk = 1 + i * 6, KEYS[3 + 2 * i], KEYS[4 + 2 * i]\n"
    "  local op, key = ARGV[a + 1], ARGV[a + 3]\n"
    "  if op == 'p' or op == 's' then\n"
    "    local v = string.format('%.0f', base + vers[i + 1])\n"
    "    if op == 's' then\n"
    "      local d = string.rep('0', 20 - #v) .. v\n"
    "      ek = ek .. d\n"
    "      key = key .. d\n"
    "    end\n"
    "    redis.call('HSET', ek, 'v', ARGV[a + 4], 'n', v)\n"
    "    if ARGV[a + 6] ~= '0' then redis.call('PEXPIRE', ek, ARGV[a + 6])\n"
    "    else redis.call('PERSIST', ek) end\n"
    "    redis.call('ZADD', zk, 0, key)\n"
    "    redis.call('SADD', KEYS[2], ARGV[a + 2])\n"
    "    out[i + 2] = v\n"
    "  else\n"
    "    redis.call('DEL', ek)\n"
    "    redis.call('ZREM', zk, key)\n"
    "    if redis.call('ZCARD', zk) == 0 then redis.call('SREM', KEYS[2], ARGV[a + 2]) end\n"
    "    out[i + 2] = '0'\n"
    "  end\n"
    "end\n"
    "if seq then redis.call('PUBLISH', ARGV[1], '') end\n"
    "return out\n";

/*
 * The expected version '-' / '' / decimal of a write within a batch is
 * compared as a string with the stored one; a key put earlier in the same
 * batch holds 'pending:k', which matches no version a client can know.
 */

/*
 * KEYS[1] the namespace zset.  ARGV[1] entry key prefix (P"e/"ns"/"),
 * ARGV[2] min ('-' or '[from' or '(after'), ARGV[3] max ('+' or '(to'),
 * ARGV[4] entries wanted, ARGV[5] members to examine at most.
 * Returns {more, cursor, key, value, version, ...}: when more is 1 the next
 * page starts at cursor.
 */
static const char script_scan[] =
    "local want, budget = tonumber(ARGV[4]), tonumber(ARGV[5])\n"
    "local min, out, got = ARGV[2], {0, ''}, 0\n"
    "while true do\n"
    "  local m = redis.call('ZRANGEBYLEX', KEYS[1], min, ARGV[3], 'LIMIT', 0, want - got)\n"
    "  for _, k in ipairs(m) do\n"
    "    local e = redis.call('HMGET', ARGV[1] .. k, 'v', 'n')\n"
    "    if e[2] then\n"
    "      out[#out + 1] = k; out[#out + 1] = e[1]; out[#out + 1] = e[2]; got = got + 1\n"
    "    else\n"
    "      redis.call('ZREM', KEYS[1], k)\n"
    "    end\n"
    "    budget = budget - 1\n"
    "  end\n"
    "  if #m == 0 then return out end\n"
    "  min = '(' .. m[#m]\n"
    "  if got >= want or budget <= 0 then out[1] = 1; out[2] = min; return out end\n"
    "end\n";

/*
 * KEYS[1] the namespace zset, KEYS[2] the namespace set.  ARGV[1] entry key
 * prefix, ARGV[2] ns, ARGV[3] min ('-' or '(after'), ARGV[4] page size.
 * Returns {entries, bytes, cursor} ('' when the namespace is done).
 */
static const char script_stats[] =
    "local page = tonumber(ARGV[4])\n"
    "local m = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[3], '+', 'LIMIT', 0, page)\n"
    "local n, b = 0, 0\n"
    "for _, k in ipairs(m) do\n"
    "  local ek = ARGV[1] .. k\n"
    "  if redis.call('EXISTS', ek) == 1 then\n"
    "    n = n + 1; b = b + #k + redis.call('HSTRLEN', ek, 'v')\n"
    "  else\n"
    "    redis.call('ZREM', KEYS[1], k)\n"
    "  end\n"
    "end\n"
    "if #m < page then\n"
    "  if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end\n"
    "  return {n, b, ''}\n"
    "end\n"
    "return {n, b, '(' .. m[#m]}\n";

/*
 * KEYS[1] holder key, KEYS[2] epoch key, KEYS[3] lease-name set.
 * ARGV[1] op ('a' acquire, 'r' renew, 'x' release, 'q' query), ARGV[2]
 * holder, ARGV[3] ttl ms, ARGV[4] the lease name.
 * Returns {code, holder or '', epoch (decimal, '0' never held), pttl}.
 */
static const char script_lease[] =
    "local op, who = ARGV[1], ARGV[2]\n"
    "local cur = redis.call('GET', KEYS[1])\n"
    "local function state(code)\n"
    "  local h, t = redis.call('GET', KEYS[1]), 0\n"
    "  if h then t = redis.call('PTTL', KEYS[1]); if t < 0 then t = 0 end else h = '' end\n"
    "  return {code, h, redis.call('GET', KEYS[2]) or '0', t}\n"
    "end\n"
    "if op == 'a' then\n"
    "  if not cur then\n"
    "    redis.call('SET', KEYS[1], who, 'NX', 'PX', ARGV[3])\n"
    "    redis.call('INCR', KEYS[2])\n"
    "    redis.call('SADD', KEYS[3], ARGV[4])\n"
    "    return state(0)\n"
    "  end\n"
    "  if cur ~= who then return state(-2) end\n"
    "  redis.call('PEXPIRE', KEYS[1], ARGV[3])\n"
    "  return state(0)\n"
    "elseif op == 'r' then\n"
    "  if cur ~= who then return state(-2) end\n"
    "  redis.call('PEXPIRE', KEYS[1], ARGV[3])\n"
    "  return state(0)\n"
    "elseif op == 'x' then\n"
    "  if cur ~= who then return state(-2) end\n"
    "  redis.call('DEL', KEYS[1])\n"
    "  return state(0)\n"
    "end\n"
    "if cur then return state(0) end\n"
    "return state(-1)\n";

/*
 * Read only.  KEYS[1] namespace set, KEYS[2] lease-name set, KEYS[3] the
 * version counter.  ARGV[1] the prefix.  Returns {counter, records...}:
 * 'e', ns, key, value, version, pttl (-1: none) per live entry in
 * (ns, key) order, then 'l', name, holder, epoch, pttl per lease.
 */
static const char script_dump[] =
    "local p = ARGV[1]\n"
    "local out = {redis.call('GET', KEYS[3]) or '0'}\n"
    "local nss = redis.call('SMEMBERS', KEYS[1])\n"
    "table.sort(nss)\n"
    "for _, ns in ipairs(nss) do\n"
    "  local ep = p .. 'e/' .. ns .. '/'\n"
    "  for _, k in ipairs(redis.call('ZRANGE', p .. 'z/' .. ns, 0, -1)) do\n"
    "    local e = redis.call('HMGET', ep .. k, 'v', 'n')\n"
    "    if e[2] then\n"
    "      local n = #out\n"
    "      out[n + 1] = 'e'; out[n + 2] = ns; out[n + 3] = k; out[n + 4] = e[1]\n"
    "      out[n + 5] = e[2]; out[n + 6] = redis.call('PTTL', ep .. k)\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local ls = redis.call('SMEMBERS', KEYS[2])\n"
    "table.sort(ls)\n"
    "for _, name in ipairs(ls) do\n"
    "  local h, t = redis.call('GET', p .. 'lease/' .. name), 0\n"
    "  if h then t = redis.call('PTTL', p .. 'lease/' .. name) else h = '' end\n"
    "  local n = #out\n"
    "  out[n + 1] = 'l'; out[n + 2] = name; out[n + 3] = h\n"
    "  out[n + 4] = redis.call('GET', p .. 'epoch/' .. name) or '0'; out[n + 5] = t\n"
    "end\n"
    "return out\n";

/*
 * KEYS[1] the state P"rate/"key.  ARGV[1] n, then interval and tolerance
 * (decimal us) of each window.  Returns {allowed 0/1, now, tat...} (decimal
 * strings but the first).  redis.replicate_commands(): Redis 4 refuses a
 * write after TIME in a script replicated verbatim (5 and later replicate
 * effects anyway).
 */
static const char script_rate[] =
    "redis.replicate_commands()\n"
    "local n = tonumber(ARGV[1])\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local st = nil\n"
    "local cur = redis.call('GET', KEYS[1])\n"
    "if cur then\n"
    "  local f = {}\n"
    "  for x in string.gmatch(cur, '%d+') do f[#f + 1] = tonumber(x) end\n"
    "  if #f == n + 2 and f[1] == n and f[2] > now then st = f end\n"
    "end\n"
    "local ok, base = 1, {}\n"
    "for i = 1, n do\n"
    "  local b = now\n"
    "  if st and st[i + 2] > now then b = st[i + 2] end\n"
    "  base[i] = b\n"
    "  if b - now > tonumber(ARGV[2 * i + 1]) then ok = 0 end\n"
    "end\n"
    "local out, rest = {ok, string.format('%.0f', now)}, now\n"
    "for i = 1, n do\n"
    "  local v = base[i]\n"
    "  if ok == 1 then v = v + tonumber(ARGV[2 * i]) end\n"
    "  if v > rest then rest = v end\n"
    "  out[i + 2] = string.format('%.0f', v)\n"
    "end\n"
    "if ok == 1 then\n"
    "  redis.call('SET', KEYS[1], n .. ' ' .. string.format('%.0f', rest) .. ' ' ..\n"
    "             table.concat(out, ' ', 3))\n"
    "  redis.call('PEXPIREAT', KEYS[1], string.format('%.0f', math.ceil(rest / 1000)))\n"
    "end\n"
    "return out\n";

static const char *const scripts[SC__COUNT] = {
    [SC_WRITE] = script_write, [SC_SCAN] = script_scan, [SC_STATS] = script_stats,
    [SC_LEASE] = script_lease, [SC_DUMP] = script_dump, [SC_RATE] = script_rate,
};

/* ---- instance and connection ---- */

struct rd_watch;

struct rhema_storage_instance {
    const struct rhema_host *host;
    const char *server;   /* host name or address; owned by the host's config */
    int port;
    int64_t database;
    const char *password; /* "" for none */
    const char *prefix;
    size_t prefix_len;
    int timeout_ms;
    SSL_CTX *tls;              /* NULL: plain TCP */
    const char *tls_name;      /* the name the server's certificate must carry */
    char *channel;             /* pub/sub channel of sequenced writes: P"feed/"database */
    struct rd_watch *watch;    /* watch()'s subscriber, NULL when not watching */
};

struct rhema_storage_conn {
    rhema_storage_instance *inst;
    redisContext *ctx;        /* NULL while disconnected */
    struct rd_tls_relay *relay; /* with TLS: ctx's transport, joined after redisFree */
    char sha[SC__COUNT][41];  /* of each loaded script */
    uint64_t retry_at_ns;     /* no reconnect attempt before (monotonic) */
    unsigned backoff_ms;      /* wait after the next failed attempt */
    int was_lost;             /* a loss was logged: log the recovery */
    redisReply *held;         /* get()'s reply: valid until the next call */
    redisReply **held_many;   /* get_many()'s replies, held_n of them, as long */
    size_t held_n, held_cap;
    char down[384];           /* why the last connect attempt failed */
    char err[RD_ERRMSG_MAX];
};

/* A list of command arguments, some borrowed, some owned (freed by args_free). */
struct args {
    const char **v;
    size_t *len;
    size_t n, cap;
    char **owned;
    size_t n_owned, cap_owned;
    int oom;
};

/* ---- helpers ---- */

static void conn_error(rhema_storage_conn *c, const char *fmt, ...) RHEMA_PRINTF_LIKE(2, 3);

static void conn_error(rhema_storage_conn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
}

static void args_push(struct args *a, const void *p, size_t len)
{
    if (a->oom)
        return;
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 16;
        const char **v = realloc(a->v, cap * sizeof *v);
        size_t *l;
        if (v == NULL) {
            a->oom = 1;
            return;
        }
        a->v = v;
        l = realloc(a->len, cap * sizeof *l);
        if (l == NULL) {
            a->oom = 1;
            return;
        }
        a->len = l;
        a->cap = cap;
    }
    a->v[a->n] = p;
    a->len[a->n] = len;
    a->n++;
}

static void args_push_str(struct args *a, const char *s)
{
    args_push(a, s, strlen(s));
}

/* Push buf (malloc'd, NUL-terminated), which a now owns; frees it on failure. */
static void args_push_owned(struct args *a, char *buf, size_t len)
{
    if (a->oom) {
        free(buf);
        return;
    }
    if (a->n_owned == a->cap_owned) {
        size_t cap = a->cap_owned ? a->cap_owned * 2 : 16;
        char **o = realloc(a->owned, cap * sizeof *o);
        if (o == NULL) {
            free(buf);
            a->oom = 1;
            return;
        }
        a->owned = o;
        a->cap_owned = cap;
    }
    a->owned[a->n_owned++] = buf;
    args_push(a, buf, len);
}

/* Push the concatenation of up to four strings (a NULL ends the list). */
static void args_push_cat(struct args *a, const char *s1, const char *s2, const char *s3,
                          const char *s4)
{
    const char *parts[4] = {s1, s2, s3, s4};
    size_t len = 0, i, off = 0;
    char *buf;
    if (a->oom)
        return;
    for (i = 0; i < 4 && parts[i] != NULL; i++)
        len += strlen(parts[i]);
    buf = malloc(len + 1);
    if (buf == NULL) {
        a->oom = 1;
        return;
    }
    for (i = 0; i < 4 && parts[i] != NULL; i++) {
        size_t l = strlen(parts[i]);
        memcpy(buf + off, parts[i], l);
        off += l;
    }
    buf[len] = '\0';
    args_push_owned(a, buf, len);
}

static void args_push_u64(struct args *a, uint64_t v)
{
    char buf[24];
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)v);
    args_push_cat(a, buf, NULL, NULL, NULL);
}

static void args_free(struct args *a)
{
    size_t i;
    for (i = 0; i < a->n_owned; i++)
        free(a->owned[i]);
    free(a->owned);
    free(a->v);
    free(a->len);
    memset(a, 0, sizeof *a);
}

static uint64_t mono_ns(const rhema_storage_conn *c)
{
    return c->inst->host->monotonic_ns();
}

static void release_held(rhema_storage_conn *c)
{
    if (c->held != NULL) {
        freeReplyObject(c->held);
        c->held = NULL;
    }
    while (c->held_n > 0)
        freeReplyObject(c->held_many[--c->held_n]);
}

static int check_ns_key(rhema_storage_conn *c, const char *ns, const char *key)
{
    const char *why = rhema_storage_key_invalid(ns, key);
    if (why) {
        conn_error(c, "%s", why);
        return RHEMA_EINVAL;
    }
    return 0;
}

/* Short names for the sequenced-write helpers of ../common (storage_check.h). */
static int is_seq(const struct rhema_storage_write *w)
{
    return rhema_storage_write_sequenced(w);
}

static int check_write(rhema_storage_conn *c, const struct rhema_storage_write *w)
{
    const char *why = rhema_storage_write_invalid(w); /* sequenced writes too */
    if (why) {
        conn_error(c, "%s", why);
        return RHEMA_EINVAL;
    }
    if (w->op == RHEMA_WRITE_PUT && w->value_len > ((size_t)512 << 20)) {
        conn_error(c, "value of %zu bytes is above Redis's 512 MiB limit", w->value_len);
        return RHEMA_ETOOBIG;
    }
    return 0;
}

/*
 * SIGPIPE: block it in this thread around socket writes, and swallow one
 * that our write raised (libpq's pq_block_sigpipe / pq_reset_sigpipe).
 */
struct sigpipe_guard {
    sigset_t old;
    int was_pending;
    int ok;
};

static void sigpipe_block(struct sigpipe_guard *g)
{
    sigset_t set, pending;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    g->ok = pthread_sigmask(SIG_BLOCK, &set, &g->old) == 0;
    g->was_pending = 0;
    if (g->ok && sigpending(&pending) == 0)
        g->was_pending = sigismember(&pending, SIGPIPE) == 1;
}

static void sigpipe_restore(struct sigpipe_guard *g)
{
    sigset_t set, pending;
    if (!g->ok)
        return;
    if (!g->was_pending && sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1) {
        struct timespec zero = {0, 0};
        sigemptyset(&set);
        sigaddset(&set, SIGPIPE);
        while (sigtimedwait(&set, NULL, &zero) < 0 && errno == EINTR)
            ;
    }
    pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

/* Map an error reply from the server to a RHEMA_E* code. */
static int map_error_reply(const char *s)
{
    if (strncmp(s, "LOADING", 7) == 0 || strncmp(s, "BUSY", 4) == 0 ||
        strncmp(s, "READONLY", 8) == 0 || strncmp(s, "NOAUTH", 6) == 0 ||
        strncmp(s, "MASTERDOWN", 10) == 0 || strncmp(s, "TRYAGAIN", 8) == 0)
        return RHEMA_EUNAVAIL;
    if (strncmp(s, "OOM", 3) == 0)
        return RHEMA_ENOMEM;
    if (strncmp(s, "WRONGTYPE", 9) == 0)
        return RHEMA_ECORRUPT;
    return RHEMA_EIO;
}

static int parse_u64(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;
    size_t i;
    if (len == 0 || len > 20)
        return -1;
    for (i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        if (v > (UINT64_MAX - (uint64_t)(s[i] - '0')) / 10)
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return 0;
}

/* A bulk string or integer element as a uint64; -1 when it is neither. */
static int reply_u64(const redisReply *r, uint64_t *out)
{
    if (r->type == REDIS_REPLY_INTEGER) {
        if (r->integer < 0)
            return -1;
        *out = (uint64_t)r->integer;
        return 0;
    }
    if (r->type == REDIS_REPLY_STRING)
        return parse_u64(r->str, r->len, out);
    return -1;
}

/* ---- connecting ---- */

/* Run one command during connection setup; 0 or -1 with c->down set. */
static int setup_command(rhema_storage_conn *c, redisContext *ctx, int argc, const char **argv,
                         const size_t *lens, redisReply **keep, const char *what)
{
    redisReply *r = redisCommandArgv(ctx, argc, argv, lens);
    if (r == NULL) {
        snprintf(c->down, sizeof c->down, "%s: %s", what, ctx->errstr[0] ? ctx->errstr : "I/O error");
        return -1;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(c->down, sizeof c->down, "%s: %.*s", what, (int)r->len, r->str);
        freeReplyObject(r);
        return -1;
    }
    if (keep != NULL)
        *keep = r;
    else
        freeReplyObject(r);
    return 0;
}

/*
 * Free a context and then its TLS relay (NULL for TCP), which its close
 * stops; the relay's reason for a lost server, if any, replaces why.
 */
static void context_free(redisContext *ctx, struct rd_tls_relay *relay, char *why, size_t cap)
{
    redisFree(ctx);
    rd_tls_relay_close(relay, why, cap);
}

/*
 * Open a new context: connect with the timeout, AUTH, SELECT, SCRIPT LOAD.
 * 0 with c->ctx set, or -1 with the reason in c->down.  *auth_failed is
 * set when the server refused the password or the database (a
 * configuration error rather than an outage).
 */
static int open_context(rhema_storage_conn *c, int *auth_failed)
{
    const rhema_storage_instance *in = c->inst;
    struct timeval tv = {.tv_sec = in->timeout_ms / 1000,
                         .tv_usec = (in->timeout_ms % 1000) * 1000};
    struct sigpipe_guard g;
    struct rd_tls_relay *relay = NULL;
    redisContext *ctx;
    char db[24];
    int i, rc = -1;

    *auth_failed = 0;
    if (in->tls != NULL) {
        int fd, failed;
        sigpipe_block(&g); /* the handshake writes to the server's socket */
        failed = rd_tls_relay_open(in->tls, in->server, in->port, in->tls_name, in->timeout_ms,
                                   &relay, &fd, c->down, sizeof c->down) != 0;
        sigpipe_restore(&g);
        if (failed)
            return -1;
        ctx = redisConnectFd(fd);
        if (ctx == NULL)
            close(fd);
    } else {
        ctx = redisConnectWithTimeout(in->server, in->port, tv);
    }
    if (ctx == NULL) {
        snprintf(c->down, sizeof c->down, "connect to %s:%d: out of memory", in->server, in->port);
        rd_tls_relay_close(relay, NULL, 0);
        return -1;
    }
    if (ctx->err) {
        snprintf(c->down, sizeof c->down, "connect to %s:%d: %s", in->server, in->port,
                 ctx->errstr);
        context_free(ctx, relay, NULL, 0);
        return -1;
    }
    redisSetTimeout(ctx, tv);
    if (relay == NULL)
        redisEnableKeepAlive(ctx); /* TCP only: the relay's socket has it already */
    sigpipe_block(&g);
    if (in->password[0] != '\0') {
        const char *argv[2] = {"AUTH", in->password};
        size_t lens[2] = {4, strlen(in->password)};
        if (setup_command(c, ctx, 2, argv, lens, NULL, "AUTH") != 0) {
            *auth_failed = ctx->err == 0;
            goto out;
        }
    }
    if (in->database != 0) {
        const char *argv[2] = {"SELECT", db};
        size_t lens[2];
        snprintf(db, sizeof db, "%lld", (long long)in->database);
        lens[0] = 6;
        lens[1] = strlen(db);
        if (setup_command(c, ctx, 2, argv, lens, NULL, "SELECT") != 0) {
            *auth_failed = ctx->err == 0;
            goto out;
        }
    }
    for (i = 0; i < SC__COUNT; i++) {
        const char *argv[3] = {"SCRIPT", "LOAD", scripts[i]};
        size_t lens[3] = {6, 4, strlen(scripts[i])};
        redisReply *r = NULL;
        if (setup_command(c, ctx, 3, argv, lens, &r, "SCRIPT LOAD") != 0)
            goto out;
        if (r->type != REDIS_REPLY_STRING || r->len != 40) {
            snprintf(c->down, sizeof c->down, "SCRIPT LOAD: unexpected reply type %d", r->type);
            freeReplyObject(r);
            goto out;
        }
        memcpy(c->sha[i], r->str, 40);
        c->sha[i][40] = '\0';
        freeReplyObject(r);
    }
    rc = 0;
out:
    sigpipe_restore(&g);
    if (rc != 0) {
        char why[256] = "";
        context_free(ctx, relay, why, sizeof why);
        if (why[0] != '\0') {
            size_t n = strlen(c->down);
            snprintf(c->down + n, sizeof c->down - n, " (%s)", why);
        }
        return rc;
    }
    c->ctx = ctx;
    c->relay = relay;
    return 0;
}

/*
 * Forget a broken context; the next call reconnects at once.  With TLS the
 * relay's reason (a TLS alert, a reset) replaces hiredis' "connection lost".
 */
static void drop_context(rhema_storage_conn *c, const char *why)
{
    if (c->ctx == NULL)
        return;
    /* why may be the context's errstr: copy it before the free, log the copy */
    snprintf(c->down, sizeof c->down, "%s", why);
    context_free(c->ctx, c->relay, c->down, sizeof c->down);
    c->ctx = NULL;
    c->relay = NULL;
    c->retry_at_ns = 0;
    c->backoff_ms = BACKOFF_MIN_MS;
    if (!c->was_lost && c->inst->host->log != NULL)
        c->inst->host->log(RHEMA_LOG_WARN, PLUGIN_NAME, "connection to %s:%d lost: %s",
                           c->inst->server, c->inst->port, c->down);
    c->was_lost = 1;
}

/*
 * 1 when the idle socket has something to read: with no request in flight
 * that can only be the server closing it (or an error), so it is dead.
 */
static int idle_socket_dead(redisContext *ctx)
{
    struct pollfd p = {.fd = ctx->fd, .events = POLLIN};
    int n;
    do
        n = poll(&p, 1, 0);
    while (n < 0 && errno == EINTR);
    return n > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

/* Make sure the connection is up: reconnect (with backoff) when it is not. */
static int ensure_connected(rhema_storage_conn *c)
{
    const rhema_storage_instance *in = c->inst;
    uint64_t now;
    int auth_failed;

    if (c->ctx != NULL && c->ctx->err)
        drop_context(c, c->ctx->errstr[0] ? c->ctx->errstr : "connection error");
    if (c->ctx != NULL && idle_socket_dead(c->ctx))
        drop_context(c, "the server closed the connection");
    if (c->ctx != NULL)
        return 0;
    now = mono_ns(c);
    if (now < c->retry_at_ns) {
        conn_error(c, "redis at %s:%d is unavailable (%s); next attempt in %llu ms", in->server,
                   in->port, c->down,
                   (unsigned long long)((c->retry_at_ns - now + 999999u) / 1000000u));
        return RHEMA_EUNAVAIL;
    }
    if (open_context(c, &auth_failed) != 0) {
        if (c->backoff_ms < BACKOFF_MIN_MS)
            c->backoff_ms = BACKOFF_MIN_MS;
        c->retry_at_ns = mono_ns(c) + (uint64_t)c->backoff_ms * 1000000u;
        c->backoff_ms = c->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : c->backoff_ms * 2;
        conn_error(c, "redis at %s:%d is unavailable: %s", in->server, in->port, c->down);
        return RHEMA_EUNAVAIL;
    }
    c->retry_at_ns = 0;
    c->backoff_ms = BACKOFF_MIN_MS;
    if (c->was_lost && in->host->log != NULL)
        in->host->log(RHEMA_LOG_NOTICE, PLUGIN_NAME, "reconnected to %s:%d", in->server,
                      in->port);
    c->was_lost = 0;
    return 0;
}

/* ---- running commands ---- */

#define CALL_READ 0  /* idempotent: retried once on a new connection */
#define CALL_WRITE 1 /* never resent: a loss after sending is "outcome unknown" */

/*
 * Send one command and read its reply into *out (the caller frees it).
 * A server error reply is returned as a RHEMA_E* code with errmsg set,
 * except NOSCRIPT, which the caller handles (*out is then that reply).
 */
static int rd_call(rhema_storage_conn *c, struct args *a, int kind, const char *what,
                   redisReply **out)
{
    struct sigpipe_guard g;
    redisReply *r;
    int attempt, rc;

    *out = NULL;
    if (a->oom) {
        conn_error(c, "%s: out of memory", what);
        return RHEMA_ENOMEM;
    }
    if (a->n > (size_t)INT_MAX) {
        conn_error(c, "%s: too many arguments", what);
        return RHEMA_ETOOBIG;
    }
    for (attempt = 0;; attempt++) {
        rc = ensure_connected(c);
        if (rc != 0)
            return rc;
        sigpipe_block(&g);
        r = redisCommandArgv(c->ctx, (int)a->n, a->v, a->len);
        sigpipe_restore(&g);
        if (r != NULL)
            break;
        {
            char why[200];
            snprintf(why, sizeof why, "%s", c->ctx->errstr[0] ? c->ctx->errstr : "I/O error");
            drop_context(c, why);
            if (kind == CALL_READ && attempt == 0)
                continue; /* a read can safely go again on a fresh connection */
            if (kind == CALL_WRITE)
                conn_error(c,
                           "%s: connection to redis at %s:%d lost after the write was sent "
                           "(%s): its outcome is unknown",
                           what, c->inst->server, c->inst->port, why);
            else
                conn_error(c, "%s: connection to redis at %s:%d lost: %s", what,
                           c->inst->server, c->inst->port, why);
            return RHEMA_EUNAVAIL;
        }
    }
    if (r->type == REDIS_REPLY_ERROR) {
        if (strncmp(r->str, "NOSCRIPT", 8) == 0) {
            *out = r;
            return 0;
        }
        conn_error(c, "%s: %.*s", what, (int)r->len, r->str);
        rc = map_error_reply(r->str);
        freeReplyObject(r);
        return rc;
    }
    *out = r;
    return 0;
}

static int is_noscript(const redisReply *r)
{
    return r != NULL && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0;
}

/*
 * Begin the arguments of a script call: EVALSHA sha numkeys.  The caller
 * then pushes the keys and the arguments.
 */
static void args_script(struct args *a, rhema_storage_conn *c, enum script_id id, size_t nkeys)
{
    args_push_str(a, "EVALSHA");
    args_push(a, c->sha[id], 40);
    args_push_u64(a, nkeys);
}

/*
 * Run a script built with args_script: EVALSHA, and EVAL with the text when
 * the server answers NOSCRIPT (its script cache was flushed); the script did
 * not run in that case, so resending is safe even for a write.
 */
static int rd_script(rhema_storage_conn *c, struct args *a, enum script_id id, int kind,
                     const char *what, redisReply **out)
{
    int rc;
    if (a->oom) {
        conn_error(c, "%s: out of memory", what);
        return RHEMA_ENOMEM;
    }
    if (c->ctx == NULL) {
        /* connect first, so the sha is that of this connection's load */
        rc = ensure_connected(c);
        if (rc != 0)
            return rc;
    }
    a->v[1] = c->sha[id];
    rc = rd_call(c, a, kind, what, out);
    if (rc != 0 || !is_noscript(*out))
        return rc;
    freeReplyObject(*out);
    *out = NULL;
    a->v[0] = "EVAL";
    a->len[0] = 4;
    a->v[1] = scripts[id];
    a->len[1] = strlen(scripts[id]);
    rc = rd_call(c, a, kind, what, out);
    if (rc == 0 && is_noscript(*out)) {
        freeReplyObject(*out);
        *out = NULL;
        conn_error(c, "%s: NOSCRIPT in reply to EVAL", what);
        return RHEMA_EIO;
    }
    return rc;
}

/* ---- lifecycle ---- */

/*
 * The tls_* keys: with tls on, build in->tls (loading the CA, the client
 * certificate and key now, so a bad file stops the start with its name);
 * with tls off, a tls_* key that is set is refused rather than ignored.
 */
static int read_tls_config(rhema_storage_instance *in, const struct rhema_host *h,
                           const struct rhema_cfg *cfg, const char *server, char **err)
{
    static const char *const keys[] = {"tls_ca_file", "tls_cert_file", "tls_key_file",
                                       "tls_server_name"};
    const char *val[4] = {"", "", "", ""};
    char why[512];
    int enabled = 0;
    size_t i;

    if (h->cfg_bool(cfg, "tls", &enabled) == RHEMA_EINVAL)
        return h->set_error(err, RHEMA_EINVAL, "%s: redis: tls must be true or false",
                            h->cfg_where(cfg, "tls"));
    for (i = 0; i < 4; i++) {
        if (h->cfg_string(cfg, keys[i], &val[i]) == RHEMA_EINVAL)
            return h->set_error(err, RHEMA_EINVAL, "%s: redis: %s must be a string",
                                h->cfg_where(cfg, keys[i]), keys[i]);
        if (!enabled && val[i][0] != '\0')
            return h->set_error(err, RHEMA_EINVAL,
                                "%s: redis: %s is set but tls is not true; set tls = true "
                                "or remove it",
                                h->cfg_where(cfg, keys[i]), keys[i]);
    }
    if (!enabled)
        return 0;
    if ((val[1][0] != '\0') != (val[2][0] != '\0'))
        return h->set_error(err, RHEMA_EINVAL,
                            "%s: redis: tls_cert_file and tls_key_file go together: set both "
                            "or neither",
                            h->cfg_where(cfg, val[1][0] ? "tls_cert_file" : "tls_key_file"));
    if (rd_tls_ctx_new(val[0], val[1], val[2], &in->tls, why, sizeof why) != 0)
        return h->set_error(err, RHEMA_EINVAL, "%s: redis: %s", h->cfg_where(cfg, NULL), why);
    in->tls_name = val[3][0] != '\0' ? val[3] : server;
    return 0;
}

static int read_config(rhema_storage_instance *in, const struct rhema_host *h,
                       const struct rhema_cfg *cfg, char **err)
{
    const char *server = "127.0.0.1", *password = "", *password_env = "", *prefix = "rhema:";
    int64_t port = 6379, database = 0, timeout = 2000;
    int rc;

    if (h->cfg_string(cfg, "host", &server) == RHEMA_EINVAL)
        return h->set_error(err, RHEMA_EINVAL, "%s: redis: host must be a string",
                            h->cfg_where(cfg, "host"));
    if (server[0] == '\0')
        return h->set_error(err, RHEMA_EINVAL, "%s: redis: host is empty",
                            h->cfg_where(cfg, "host"));
    if (h->cfg_int(cfg, "port", &port) == RHEMA_EINVAL || port < 1 || port > 65535)
        return h->set_error(err, RHEMA_EINVAL, "%s: redis: port must be an integer in 1..65535",
                            h->cfg_where(cfg, "port"));
    if (h->cfg_int(cfg, "database", &database) == RHEMA_EINVAL || database < 0 ||
        database > INT_MAX)
        return h->set_error(err, RHEMA_EINVAL,
                            "%s: redis: database must be an integer in 0..%d",
                            h->cfg_where(cfg, "database"), INT_MAX);
    if (h->cfg_string(cfg, "password", &password) == RHEMA_EINVAL)
        return h->set_error(err, RHEMA_EINVAL, "%s: redis: password must be a string",
                            h->cfg_where(cfg, "password"));
    if (h->cfg_string(cfg, "password_env", &password_env) == RHEMA_EINVAL)
        return h->set_error(err, RHEMA_EINVAL, "%s: redis: password_env must be a string",
                            h->cfg_where(cfg, "password_env"));
    if (password_env[0] != '\0') {
        const char *env = getenv(password_env);
        if (password[0] != '\0')
            return h->set_error(err, RHEMA_EINVAL,
                                "%s: redis: password and password_env are both set; use one",
                                h->cfg_where(cfg, "password_env"));
        if (env == NULL || env[0] == '\0')
            return h->set_error(err, RHEMA_EINVAL,
                                "%s: redis: password_env names '%s', but that environment "
                                "variable is %s",
                                h->cfg_where(cfg, "password_env"), password_env,
                                env ? "empty" : "not set");
        password = env;
    }
    if (h->cfg_string(cfg, "prefix", &prefix) == RHEMA_EINVAL)
        return h->set_error(err, RHEMA_EINVAL, "%s: redis: prefix must be a string",
                            h->cfg_where(cfg, "prefix"));
    if (strlen(prefix) > 256)
        return h->set_error(err, RHEMA_EINVAL, "%s: redis: prefix is longer than 256 bytes",
                            h->cfg_where(cfg, "prefix"));
    if (h->cfg_int(cfg, "timeout_ms", &timeout) == RHEMA_EINVAL || timeout < 1 ||
        timeout > 600000)
        return h->set_error(err, RHEMA_EINVAL,
                            "%s: redis: timeout_ms must be an integer in 1..600000",
                            h->cfg_where(cfg, "timeout_ms"));
    rc = read_tls_config(in, h, cfg, server, err);
    if (rc != 0)
        return rc;
    in->server = server;
    in->port = (int)port;
    in->database = database;
    in->password = password;
    in->prefix = prefix;
    in->prefix_len = strlen(prefix);
    in->timeout_ms = (int)timeout;
    /* pub/sub channels are not per database: the database is part of the name */
    in->channel = malloc(in->prefix_len + 5 + 24);
    if (in->channel == NULL)
        return h->set_error(err, RHEMA_ENOMEM, "redis: out of memory");
    snprintf(in->channel, in->prefix_len + 5 + 24, "%sfeed/%lld", prefix, (long long)database);
    return 0;
}

static void rd_disconnect(rhema_storage_conn *c)
{
    if (c == NULL)
        return;
    release_held(c);
    free(c->held_many);
    if (c->ctx != NULL)
        context_free(c->ctx, c->relay, NULL, 0);
    free(c);
}

static rhema_storage_conn *conn_new(rhema_storage_instance *in)
{
    rhema_storage_conn *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->inst = in;
    c->backoff_ms = BACKOFF_MIN_MS;
    return c;
}

/*
 * check(): read_config() into an instance that is thrown away -- every key
 * validated, the TLS files loaded into an SSL_CTX that is freed; no
 * connection.
 */
static int rd_check(const struct rhema_host *host, const struct rhema_cfg *cfg, char **err)
{
    rhema_storage_instance *in = calloc(1, sizeof *in);
    int rc;

    if (in == NULL)
        return host->set_error(err, RHEMA_ENOMEM, "redis: out of memory");
    in->host = host;
    rc = read_config(in, host, cfg, err);
    SSL_CTX_free(in->tls);
    free(in->channel);
    free(in);
    return rc;
}

/*
 * Check the configuration, then reach the server once (AUTH, SELECT, load
 * the scripts): a wrong address or password is reported at startup rather
 * than on the first request.
 */
static int rd_open(const struct rhema_host *host, const struct rhema_cfg *cfg,
                   rhema_storage_instance **out, char **err)
{
    rhema_storage_instance *in;
    rhema_storage_conn *probe;
    int rc, auth_failed = 0;

    in = calloc(1, sizeof *in);
    if (in == NULL)
        return host->set_error(err, RHEMA_ENOMEM, "redis: out of memory");
    in->host = host;
    rc = read_config(in, host, cfg, err);
    if (rc != 0)
        goto fail;
    probe = conn_new(in);
    if (probe == NULL) {
        rc = host->set_error(err, RHEMA_ENOMEM, "redis: out of memory");
        goto fail;
    }
    if (open_context(probe, &auth_failed) != 0) {
        rc = host->set_error(err, auth_failed ? RHEMA_EINVAL : RHEMA_EUNAVAIL,
                             "redis: %s:%d (%s): %s", in->server, in->port,
                             host->cfg_where(cfg, NULL), probe->down);
        rd_disconnect(probe);
        goto fail;
    }
    rd_disconnect(probe);
    if (host->log != NULL)
        host->log(RHEMA_LOG_INFO, PLUGIN_NAME, "using %s:%d%s database %lld prefix '%s'",
                  in->server, in->port, in->tls ? " over TLS" : "", (long long)in->database,
                  in->prefix);
    *out = in;
    return 0;
fail:
    SSL_CTX_free(in->tls);
    free(in->channel);
    free(in);
    return rc;
}

static void rd_unwatch(rhema_storage_instance *in);

static void rd_close(rhema_storage_instance *in)
{
    if (in != NULL) {
        rd_unwatch(in); /* the host calls it first; a test may not */
        SSL_CTX_free(in->tls);
        free(in->channel);
    }
    free(in);
}

/*
 * One connection per worker thread.  When the server cannot be reached the
 * connection is still created, and its calls return RHEMA_EUNAVAIL until a
 * reconnect succeeds; a refused password or database fails here.
 */
static int rd_connect(rhema_storage_instance *in, rhema_storage_conn **out, char **err)
{
    const struct rhema_host *h = in->host;
    rhema_storage_conn *c = conn_new(in);
    int auth_failed = 0;
    if (c == NULL)
        return h->set_error(err, RHEMA_ENOMEM, "redis: out of memory");
    if (open_context(c, &auth_failed) != 0) {
        if (auth_failed) {
            int rc = h->set_error(err, RHEMA_EINVAL, "redis: %s:%d: %s", in->server, in->port,
                                  c->down);
            rd_disconnect(c);
            return rc;
        }
        c->retry_at_ns = h->monotonic_ns() + (uint64_t)BACKOFF_MIN_MS * 1000000u;
        c->backoff_ms = BACKOFF_MIN_MS * 2;
        c->was_lost = 1;
        if (h->log != NULL)
            h->log(RHEMA_LOG_WARN, PLUGIN_NAME, "%s:%d unavailable, will retry: %s", in->server,
                   in->port, c->down);
    }
    *out = c;
    return 0;
}

/* ---- key names ---- */

/* P "e/" ns "/" key: the hash of one entry. */
static void push_entry_key(struct args *a, const rhema_storage_instance *in, const char *ns,
                           const char *key)
{
    size_t nl = strlen(ns), kl = strlen(key), pl = in->prefix_len;
    char *buf;
    if (a->oom)
        return;
    buf = malloc(pl + 2 + nl + 1 + kl + 1);
    if (buf == NULL) {
        a->oom = 1;
        return;
    }
    memcpy(buf, in->prefix, pl);
    memcpy(buf + pl, "e/", 2);
    memcpy(buf + pl + 2, ns, nl);
    buf[pl + 2 + nl] = '/';
    memcpy(buf + pl + 3 + nl, key, kl + 1);
    args_push_owned(a, buf, pl + 3 + nl + kl);
}

/* ---- reads ---- */

/* An HMGET reply of an entry (v, n) into out: 0, RHEMA_ENOTFOUND or RHEMA_ECORRUPT/EIO. */
static int entry_reply(rhema_storage_conn *c, const redisReply *r, const char *ns, const char *key,
                       struct rhema_storage_value *out)
{
    uint64_t ver;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
        conn_error(c, "get: unexpected reply type %d", r->type);
        return RHEMA_EIO;
    }
    if (r->element[1]->type == REDIS_REPLY_NIL) {
        conn_error(c, "key not found");
        return RHEMA_ENOTFOUND;
    }
    if (r->element[0]->type != REDIS_REPLY_STRING || reply_u64(r->element[1], &ver) != 0 ||
        ver == 0) {
        conn_error(c, "get: the entry of '%s' in %s is malformed", key, ns);
        return RHEMA_ECORRUPT;
    }
    out->data = r->element[0]->str;
    out->len = r->element[0]->len;
    out->version = ver;
    return 0;
}

static int rd_get(rhema_storage_conn *c, const char *ns, const char *key,
                  struct rhema_storage_value *out)
{
    struct args a = {0};
    redisReply *r = NULL;
    int rc;

    release_held(c);
    rc = check_ns_key(c, ns, key);
    if (rc != 0)
        return rc;
    args_push_str(&a, "HMGET");
    push_entry_key(&a, c->inst, ns, key);
    args_push_str(&a, "v");
    args_push_str(&a, "n");
    rc = rd_call(c, &a, CALL_READ, "get", &r);
    args_free(&a);
    if (rc != 0)
        return rc;
    if ((rc = entry_reply(c, r, ns, key, out)) != 0) {
        freeReplyObject(r);
        return rc;
    }
    c->held = r;
    return 0;
}

/*
 * get_many: get()'s HMGET once per key, pipelined (every command written,
 * then every reply read): one round trip for n keys.  A connection lost on
 * the way is retried once on a fresh one, as get() is; the replies back the
 * values until the next call.
 */
static int rd_get_many(rhema_storage_conn *c, const char *const *ns, const char *const *keys,
                       size_t n, struct rhema_storage_value *out, int *rcs)
{
    struct sigpipe_guard g;
    size_t i;
    int rc, attempt;

    release_held(c);
    if (n == 0)
        return 0;
    const char *bad_args = rhema_storage_get_many_invalid(ns, keys, n, out, rcs);
    if (bad_args != NULL) {
        conn_error(c, "%s", bad_args);
        return RHEMA_EINVAL;
    }
    if (n > c->held_cap) {
        redisReply **v = realloc(c->held_many, n * sizeof *v);
        if (v == NULL) {
            conn_error(c, "out of memory");
            return RHEMA_ENOMEM;
        }
        c->held_many = v;
        c->held_cap = n;
    }
    for (attempt = 0;; attempt++) {
        if ((rc = ensure_connected(c)) != 0)
            return rc;
        for (i = 0; i < n; i++) {
            struct args a = {0};
            args_push_str(&a, "HMGET");
            push_entry_key(&a, c->inst, ns[i], keys[i]);
            args_push_str(&a, "v");
            args_push_str(&a, "n");
            rc = a.oom ? REDIS_ERR
                       : redisAppendCommandArgv(c->ctx, (int)a.n, a.v, a.len); /* copied */
            args_free(&a);
            if (rc != REDIS_OK) {
                conn_error(c, "get_many: out of memory");
                drop_context(c, "out of memory"); /* half a pipeline was buffered */
                return RHEMA_ENOMEM;
            }
        }
        sigpipe_block(&g);
        for (i = 0; i < n; i++) {
            void *r = NULL;
            if (redisGetReply(c->ctx, &r) != REDIS_OK || r == NULL)
                break;
            c->held_many[c->held_n++] = r;
        }
        sigpipe_restore(&g);
        if (i == n)
            break;
        {
            char why[200];
            snprintf(why, sizeof why, "%s", c->ctx->errstr[0] ? c->ctx->errstr : "I/O error");
            release_held(c);
            drop_context(c, why);
            if (attempt == 0)
                continue; /* reads: go again on a fresh connection */
            conn_error(c, "get_many: connection to redis at %s:%d lost: %s", c->inst->server,
                       c->inst->port, why);
            return RHEMA_EUNAVAIL;
        }
    }
    for (i = 0; i < n; i++) {
        const redisReply *r = c->held_many[i];
        if (r->type == REDIS_REPLY_ERROR) {
            conn_error(c, "get_many: %.*s", (int)r->len, r->str);
            return map_error_reply(r->str);
        }
        rcs[i] = entry_reply(c, r, ns[i], keys[i], &out[i]);
        if (rcs[i] != 0 && rcs[i] != RHEMA_ENOTFOUND)
            return rcs[i];
    }
    return 0;
}

static int rd_scan(rhema_storage_conn *c, const char *ns, const char *from_key, const char *to_key,
                   size_t limit, rhema_storage_scan_cb cb, void *ctx)
{
    const rhema_storage_instance *in = c->inst;
    char *cursor = NULL;
    size_t done = 0;
    int rc = 0;

    release_held(c);
    const char *why = rhema_storage_scan_invalid(ns, cb);
    if (why != NULL) {
        conn_error(c, "%s", why);
        return RHEMA_EINVAL;
    }
    for (;;) {
        struct args a = {0};
        redisReply *r = NULL;
        size_t want = SCAN_PAGE, i;
        int more;

        if (limit != 0 && limit - done < want)
            want = limit - done;
        args_script(&a, c, SC_SCAN, 1);
        args_push_cat(&a, in->prefix, "z/", ns, NULL);
        args_push_cat(&a, in->prefix, "e/", ns, "/");
        if (cursor != NULL)
            args_push_str(&a, cursor);
        else if (from_key != NULL)
            args_push_cat(&a, "[", from_key, NULL, NULL);
        else
            args_push_str(&a, "-");
        if (to_key != NULL)
            args_push_cat(&a, "(", to_key, NULL, NULL);
        else
            args_push_str(&a, "+");
        args_push_u64(&a, want);
        args_push_u64(&a, want * 4 + 64);
        rc = rd_script(c, &a, SC_SCAN, CALL_READ, "scan", &r);
        args_free(&a);
        if (rc != 0)
            break;
        if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 || (r->elements - 2) % 3 != 0 ||
            r->element[0]->type != REDIS_REPLY_INTEGER ||
            r->element[1]->type != REDIS_REPLY_STRING) {
            freeReplyObject(r);
            conn_error(c, "scan: unexpected reply");
            rc = RHEMA_EIO;
            break;
        }
        more = r->element[0]->integer != 0;
        for (i = 2; i < r->elements; i += 3) {
            const redisReply *k = r->element[i], *v = r->element[i + 1];
            uint64_t ver;
            int cr;
            if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING ||
                reply_u64(r->element[i + 2], &ver) != 0) {
                conn_error(c, "scan: a malformed entry in %s", ns);
                rc = RHEMA_ECORRUPT;
                break;
            }
            cr = cb(ctx, k->str, v->str, v->len, ver);
            done++;
            if (cr != 0) {
                rc = cr < 0 ? cr : 0;
                more = 0;
                break;
            }
        }
        if (rc == 0 && more && (limit == 0 || done < limit)) {
            char *next = strdup(r->element[1]->str);
            if (next == NULL) {
                conn_error(c, "scan: out of memory");
                rc = RHEMA_ENOMEM;
                more = 0;
            }
            free(cursor);
            cursor = next;
        } else {
            more = 0;
        }
        freeReplyObject(r);
        if (rc != 0 || !more)
            break;
    }
    free(cursor);
    return rc;
}

/* Add the live entries and bytes of one namespace to *out, page by page. */
static int stats_ns(rhema_storage_conn *c, const char *ns, struct rhema_storage_stats *out)
{
    const rhema_storage_instance *in = c->inst;
    char *cursor = NULL;
    int rc = 0;
    for (;;) {
        struct args a = {0};
        redisReply *r = NULL;
        uint64_t n, b;
        args_script(&a, c, SC_STATS, 2);
        args_push_cat(&a, in->prefix, "z/", ns, NULL);
        args_push_cat(&a, in->prefix, "namespaces", NULL, NULL);
        args_push_cat(&a, in->prefix, "e/", ns, "/");
        args_push_str(&a, ns);
        args_push_str(&a, cursor != NULL ? cursor : "-");
        args_push_u64(&a, STATS_PAGE);
        rc = rd_script(c, &a, SC_STATS, CALL_READ, "stats", &r);
        args_free(&a);
        if (rc != 0)
            break;
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 || reply_u64(r->element[0], &n) != 0 ||
            reply_u64(r->element[1], &b) != 0 || r->element[2]->type != REDIS_REPLY_STRING) {
            freeReplyObject(r);
            conn_error(c, "stats: unexpected reply");
            rc = RHEMA_EIO;
            break;
        }
        out->entries += n;
        out->bytes += b;
        free(cursor);
        cursor = NULL;
        if (r->element[2]->len == 0) {
            freeReplyObject(r);
            break;
        }
        cursor = strdup(r->element[2]->str);
        freeReplyObject(r);
        if (cursor == NULL) {
            conn_error(c, "stats: out of memory");
            rc = RHEMA_ENOMEM;
            break;
        }
    }
    free(cursor);
    return rc;
}

static int rd_stats(rhema_storage_conn *c, const char *ns, struct rhema_storage_stats *out)
{
    struct rhema_storage_stats st = {0, 0};
    struct args a = {0};
    redisReply *r = NULL;
    size_t i;
    int rc;

    release_held(c);
    const char *why = rhema_storage_stats_invalid(ns, out);
    if (why != NULL) {
        conn_error(c, "%s", why);
        return RHEMA_EINVAL;
    }
    if (ns != NULL) {
        rc = stats_ns(c, ns, &st);
        if (rc == 0)
            *out = st;
        return rc;
    }
    args_push_str(&a, "SMEMBERS");
    args_push_cat(&a, c->inst->prefix, "namespaces", NULL, NULL);
    rc = rd_call(c, &a, CALL_READ, "stats", &r);
    args_free(&a);
    if (rc != 0)
        return rc;
    if (r->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(r);
        conn_error(c, "stats: unexpected reply");
        return RHEMA_EIO;
    }
    for (i = 0; i < r->elements && rc == 0; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_STRING || !rhema_storage_ns_valid(e->str))
            continue; /* not one of ours: ignore */
        rc = stats_ns(c, e->str, &st);
    }
    freeReplyObject(r);
    if (rc == 0)
        *out = st;
    return rc;
}

/* ---- writes ---- */

/* Append the keys and arguments of n writes (after args_script(..., 2 + 2n)). */
static void push_writes(struct args *a, const rhema_storage_instance *in,
                        const struct rhema_storage_write *w, size_t n)
{
    size_t i;
    args_push_cat(a, in->prefix, "version", NULL, NULL);
    args_push_cat(a, in->prefix, "namespaces", NULL, NULL);
    for (i = 0; i < n; i++) {
        push_entry_key(a, in, w[i].ns, w[i].key); /* sequenced: the script appends the digits */
        args_push_cat(a, in->prefix, "z/", w[i].ns, NULL);
    }
    args_push_str(a, in->channel);
    for (i = 0; i < n; i++) {
        uint64_t ev = w[i].expected_version, ttl = w[i].ttl_ms;
        args_push_str(a, w[i].op != RHEMA_WRITE_PUT ? "d" : is_seq(&w[i]) ? "s" : "p");
        args_push_str(a, w[i].ns);
        args_push_str(a, w[i].key);
        if (w[i].op == RHEMA_WRITE_PUT)
            args_push(a, w[i].value_len ? (const char *)w[i].value : "", w[i].value_len);
        else
            args_push(a, "", 0);
        if (ev == RHEMA_VERSION_ANY)
            args_push_str(a, "");
        else if (ev == RHEMA_VERSION_ABSENT)
            args_push_str(a, "-");
        else
            args_push_u64(a, ev);
        if (w[i].op != RHEMA_WRITE_PUT)
            ttl = 0;
        args_push_u64(a, ttl > TTL_MAX_MS ? TTL_MAX_MS : ttl);
    }
}

/*
 * Read the write script's reply into the writes' new_version: 0, or
 * ECONFLICT / ENOTFOUND with errmsg naming the write that failed.
 */
static int write_result(rhema_storage_conn *c, const redisReply *r, struct rhema_storage_write *w,
                        size_t n)
{
    size_t i;
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
        r->element[0]->type != REDIS_REPLY_INTEGER) {
        conn_error(c, "write: unexpected reply type %d", r->type);
        return RHEMA_EIO;
    }
    if (r->element[0]->integer != 0) {
        long long code = r->element[0]->integer;
        long long idx = r->elements > 1 && r->element[1]->type == REDIS_REPLY_INTEGER
                            ? r->element[1]->integer
                            : -1;
        const char *cur = r->elements > 2 && r->element[2]->type == REDIS_REPLY_STRING
                              ? r->element[2]->str
                              : "";
        const char *key = idx >= 0 && (size_t)idx < n ? w[idx].key : "?";
        for (i = 0; i < n; i++)
            w[i].new_version = 0;
        if (code == -1) {
            conn_error(c, "key not found: '%s'", key);
            return RHEMA_ENOTFOUND;
        }
        if (code != -2) {
            conn_error(c, "write: unexpected status %lld", code);
            return RHEMA_EIO;
        }
        if (idx >= 0 && (size_t)idx < n && w[idx].expected_version == RHEMA_VERSION_ABSENT)
            conn_error(c, "key '%s' exists (version %s)", key, cur);
        else if (cur[0] == '\0')
            conn_error(c, "key '%s': expected version %llu, key absent", key,
                       idx >= 0 && (size_t)idx < n ? (unsigned long long)w[idx].expected_version
                                                   : 0ull);
        else if (strncmp(cur, "pending:", 8) == 0)
            conn_error(c, "key '%s': expected version %llu, but an earlier write of this batch "
                          "replaced it", key,
                       (unsigned long long)w[idx].expected_version);
        else
            conn_error(c, "key '%s': expected version %llu, found %s", key,
                       idx >= 0 && (size_t)idx < n ? (unsigned long long)w[idx].expected_version
                                                   : 0ull,
                       cur);
        return RHEMA_ECONFLICT;
    }
    if (r->elements != n + 1) {
        conn_error(c, "write: %zu results for %zu writes", r->elements - 1, n);
        return RHEMA_EIO;
    }
    for (i = 0; i < n; i++) {
        uint64_t v = 0;
        if (reply_u64(r->element[i + 1], &v) != 0) {
            conn_error(c, "write: malformed version in the reply");
            return RHEMA_EIO;
        }
        w[i].new_version = w[i].op == RHEMA_WRITE_PUT ? v : 0;
    }
    return 0;
}

/* Apply n checked writes with one run of the write script, all or nothing. */
static int write_script(rhema_storage_conn *c, struct rhema_storage_write *w, size_t n,
                        const char *what)
{
    struct args a = {0};
    redisReply *r = NULL;
    size_t i;
    int rc;
    for (i = 0; i < n; i++)
        w[i].new_version = 0;
    args_script(&a, c, SC_WRITE, 2 + 2 * n);
    push_writes(&a, c->inst, w, n);
    rc = rd_script(c, &a, SC_WRITE, CALL_WRITE, what, &r);
    args_free(&a);
    if (rc != 0)
        return rc;
    rc = write_result(c, r, w, n);
    freeReplyObject(r);
    return rc;
}

static int rd_put(rhema_storage_conn *c, struct rhema_storage_write *w)
{
    int rc;
    release_held(c);
    rc = check_write(c, w);
    if (rc != 0)
        return rc;
    if (w->op != RHEMA_WRITE_PUT) {
        conn_error(c, "put() takes RHEMA_WRITE_PUT");
        return RHEMA_EINVAL;
    }
    return write_script(c, w, 1, "put");
}

static int rd_del(rhema_storage_conn *c, const char *ns, const char *key, uint64_t expected_version)
{
    struct rhema_storage_write w = {.size = sizeof(struct rhema_storage_write),
                                    .op = RHEMA_WRITE_DEL,
                                    .ns = ns,
                                    .key = key,
                                    .expected_version = expected_version};
    int rc;
    release_held(c);
    rc = check_write(c, &w);
    if (rc != 0)
        return rc;
    return write_script(c, &w, 1, "del");
}

static int rd_batch(rhema_storage_conn *c, struct rhema_storage_write *w, size_t n)
{
    int rc;
    release_held(c);
    if (n == 0)
        return 0;
    const char *why = NULL;
    if ((rc = rhema_storage_batch_check(c, w, n, check_write, &why)) != 0) {
        if (why != NULL)
            conn_error(c, "%s", why);
        return rc;
    }
    return write_script(c, w, n, "batch");
}

/*
 * Group commit, the Redis way: every valid member becomes one run of the
 * write script, all sent in one pipeline (one round trip); Redis runs them
 * in order, each atomically, so a member sees the members before it and a
 * failed member changes nothing.  With AOF `appendfsync always` the server
 * fsyncs the whole pipeline's effects before it answers.
 *
 * When the connection breaks after the pipeline was sent, some members may
 * have been applied: the group returns RHEMA_EUNAVAIL and says that the
 * outcome is unknown.  A member answered NOSCRIPT (the script cache was
 * flushed mid-pipeline: all later members are answered the same) did not
 * run; those members are resent in order with EVAL.
 */
static int rd_group(rhema_storage_conn *c, struct rhema_storage_batch *g, size_t n)
{
    struct sigpipe_guard sg;
    struct args a;
    size_t i, j, sent = 0;
    int rc = 0;

    release_held(c);
    if (n == 0)
        return 0;
    const char *bad_args = NULL;
    int bad = rhema_storage_group_check(c, g, n, check_write, &bad_args);
    if (bad_args != NULL)
        conn_error(c, "%s", bad_args);
    if (bad != 0)
        return bad;
    rc = ensure_connected(c);
    if (rc != 0)
        return rc;

    /* append every member's script to the output buffer, then flush it */
    for (i = 0; i < n; i++) {
        if (g[i].result != 0 || g[i].n == 0)
            continue;
        memset(&a, 0, sizeof a);
        args_script(&a, c, SC_WRITE, 2 + 2 * g[i].n);
        push_writes(&a, c->inst, g[i].writes, g[i].n);
        if (a.oom || a.n > (size_t)INT_MAX ||
            redisAppendCommandArgv(c->ctx, (int)a.n, a.v, a.len) != REDIS_OK) {
            args_free(&a);
            /* nothing has been sent yet: start over with a clean context */
            drop_context(c, "group: could not build the pipeline");
            conn_error(c, "group: out of memory building the pipeline; nothing was applied");
            return RHEMA_ENOMEM;
        }
        args_free(&a);
        sent++;
    }
    if (sent == 0)
        return 0;
    for (i = 0; i < n; i++) {
        redisReply *r = NULL;
        void *vr = NULL;
        if (g[i].result != 0 || g[i].n == 0)
            continue;
        sigpipe_block(&sg);
        if (redisGetReply(c->ctx, &vr) != REDIS_OK)
            vr = NULL;
        sigpipe_restore(&sg);
        r = vr;
        if (r == NULL) {
            char why[200];
            snprintf(why, sizeof why, "%s", c->ctx->errstr[0] ? c->ctx->errstr : "I/O error");
            drop_context(c, why);
            conn_error(c,
                       "group: connection to redis at %s:%d lost after the pipeline was sent "
                       "(%s): the outcome of its members is unknown",
                       c->inst->server, c->inst->port, why);
            return RHEMA_EUNAVAIL;
        }
        if (is_noscript(r)) {
            freeReplyObject(r);
            r = NULL;
            /* did not run: drain the rest below, then resend in order with EVAL */
            g[i].result = 1;
            continue;
        }
        if (r->type == REDIS_REPLY_ERROR) {
            conn_error(c, "group member %zu: %.*s", i, (int)r->len, r->str);
            g[i].result = map_error_reply(r->str);
        } else {
            g[i].result = write_result(c, r, g[i].writes, g[i].n);
        }
        freeReplyObject(r);
    }
    for (i = 0; i < n; i++) {
        if (g[i].result != 1)
            continue;
        g[i].result = write_script(c, g[i].writes, g[i].n, "group");
        if (g[i].result == RHEMA_EUNAVAIL) {
            for (j = i + 1; j < n; j++)
                if (g[j].result == 1)
                    g[j].result = RHEMA_EUNAVAIL;
            return RHEMA_EUNAVAIL;
        }
    }
    return 0;
}

/* ---- leases ---- */

static int rd_lease(rhema_storage_conn *c, const char *name, const char *holder, uint64_t ttl_ms,
                    int op, struct rhema_lease_info *out)
{
    const rhema_storage_instance *in = c->inst;
    static const char *const ops[] = {"", "a", "r", "x", "q"};
    struct args a = {0};
    redisReply *r = NULL;
    uint64_t epoch = 0, ttl_left = 0;
    long long code;
    int rc;

    release_held(c);
    const char *why = rhema_storage_lease_invalid(name, holder, ttl_ms, op);
    if (why != NULL) {
        conn_error(c, "%s", why);
        return RHEMA_EINVAL;
    }
    if (op != RHEMA_LEASE_QUERY) {
        if (op != RHEMA_LEASE_RELEASE && (ttl_ms == 0 || ttl_ms > TTL_MAX_MS)) {
            conn_error(c, "lease ttl_ms must be in 1..%llu", (unsigned long long)TTL_MAX_MS);
            return RHEMA_EINVAL;
        }
    }
    args_script(&a, c, SC_LEASE, 3);
    args_push_cat(&a, in->prefix, "lease/", name, NULL);
    args_push_cat(&a, in->prefix, "epoch/", name, NULL);
    args_push_cat(&a, in->prefix, "leases", NULL, NULL);
    args_push_str(&a, ops[op]);
    args_push_str(&a, op == RHEMA_LEASE_QUERY || holder == NULL ? "" : holder);
    args_push_u64(&a, op == RHEMA_LEASE_ACQUIRE || op == RHEMA_LEASE_RENEW ? ttl_ms : 1);
    args_push_str(&a, name);
    rc = rd_script(c, &a, SC_LEASE, op == RHEMA_LEASE_QUERY ? CALL_READ : CALL_WRITE, "lease",
                   &r);
    args_free(&a);
    if (rc != 0)
        return rc;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 4 ||
        r->element[0]->type != REDIS_REPLY_INTEGER || r->element[1]->type != REDIS_REPLY_STRING ||
        reply_u64(r->element[2], &epoch) != 0 || reply_u64(r->element[3], &ttl_left) != 0 ||
        r->element[1]->len > RHEMA_LEASE_HOLDER_MAX) {
        freeReplyObject(r);
        conn_error(c, "lease: unexpected reply");
        return RHEMA_EIO;
    }
    code = r->element[0]->integer;
    rc = code == 0 ? 0 : code == -1 ? RHEMA_ENOTFOUND : RHEMA_ECONFLICT;
    if (out != NULL) {
        memset(out, 0, sizeof *out);
        memcpy(out->holder, r->element[1]->str, r->element[1]->len);
        out->epoch = epoch;
        out->ttl_remaining_ms = out->holder[0] != '\0' ? ttl_left : 0;
    }
    if (rc == RHEMA_ECONFLICT)
        conn_error(c, "lease '%s' is held by '%s'", name,
                   r->element[1]->len ? r->element[1]->str : "nobody");
    else if (rc == RHEMA_ENOTFOUND)
        conn_error(c, "lease '%s' is not held", name);
    freeReplyObject(r);
    return rc;
}

/* ---- rate ---- */

/* rate(): the rate script, one round trip (see the top of the file). */
static int rd_rate(rhema_storage_conn *c, struct rhema_rate_query *q)
{
    struct args a = {0};
    redisReply *r = NULL;
    uint64_t v[2 + RHEMA_RATE_WINDOWS_MAX];
    size_t i;
    int rc;

    release_held(c);
    const char *why = rhema_rate_query_invalid(q);
    if (why != NULL) {
        conn_error(c, "%s", why);
        return RHEMA_EINVAL;
    }
    args_script(&a, c, SC_RATE, 1);
    args_push_cat(&a, c->inst->prefix, "rate/", q->key, NULL);
    args_push_u64(&a, q->n);
    for (i = 0; i < q->n; i++) {
        args_push_u64(&a, q->windows[i].interval_us);
        args_push_u64(&a, q->windows[i].tolerance_us);
    }
    rc = rd_script(c, &a, SC_RATE, CALL_WRITE, "rate", &r);
    args_free(&a);
    if (rc != 0)
        return rc;
    rc = r->type == REDIS_REPLY_ARRAY && r->elements == q->n + 2 ? 0 : -1;
    for (i = 0; rc == 0 && i < q->n + 2; i++)
        if (reply_u64(r->element[i], &v[i]) != 0 || v[i] > (uint64_t)INT64_MAX)
            rc = -1;
    freeReplyObject(r);
    if (rc != 0 || v[0] > 1) {
        conn_error(c, "rate: unexpected reply");
        return RHEMA_EIO;
    }
    q->allowed = (int)v[0];
    q->now_us = (int64_t)v[1];
    for (i = 0; i < RHEMA_RATE_WINDOWS_MAX; i++)
        q->tat_us[i] = i < q->n ? (int64_t)v[2 + i] : q->now_us;
    return 0;
}

/* ---- the rest ---- */

static int rd_health(rhema_storage_conn *c, char **err)
{
    struct args a = {0};
    redisReply *r = NULL;
    int rc;
    release_held(c);
    args_push_str(&a, "PING");
    rc = rd_call(c, &a, CALL_READ, "health", &r);
    args_free(&a);
    if (rc == 0 && r->type != REDIS_REPLY_STATUS) {
        conn_error(c, "health: unexpected reply to PING");
        rc = RHEMA_EUNAVAIL;
    }
    if (r != NULL)
        freeReplyObject(r);
    if (rc != 0)
        return c->inst->host->set_error(err, RHEMA_EUNAVAIL, "redis: %s", c->err);
    return 0;
}

static const char *rd_errmsg(rhema_storage_conn *c)
{
    return c != NULL ? c->err : "";
}

/* fsync a directory by path.  0 or errno. */
static int fsync_dir(const char *path)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    int fd, e = 0;
    if (slash == NULL)
        snprintf(dir, sizeof dir, ".");
    else if (slash == path)
        snprintf(dir, sizeof dir, "/");
    else if ((size_t)(slash - path) >= sizeof dir)
        return ENAMETOOLONG;
    else {
        memcpy(dir, path, (size_t)(slash - path));
        dir[slash - path] = '\0';
    }
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    if (fsync(fd) != 0)
        e = errno;
    close(fd);
    return e;
}

static int put_bytes(FILE *f, const char *p, size_t len)
{
    return len == 0 || fwrite(p, 1, len, f) == len ? 0 : -1;
}

static int str_elem(const redisReply *r)
{
    return r->type == REDIS_REPLY_STRING;
}

/*
 * Write the dump script's reply to f.  Format (binary-safe, lengths first):
 *   "rhema-redis-backup 1\n"
 *   "version <counter>\n"
 *   "entry <nslen> <keylen> <valuelen> <version> <pttl>\n" ns key value "\n"
 *   "lease <namelen> <holderlen> <epoch> <pttl>\n" name holder "\n"
 *   "end <entries> <leases>\n"
 * pttl is the time left in ms when the dump ran, -1 for none.
 */
static int write_dump(FILE *f, const redisReply *r)
{
    size_t i = 1, entries = 0, leases = 0;
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 || !str_elem(r->element[0]))
        return -1;
    if (fputs(BACKUP_MAGIC, f) == EOF || fprintf(f, "version %s\n", r->element[0]->str) < 0)
        return -1;
    while (i < r->elements) {
        const redisReply *t = r->element[i];
        if (!str_elem(t) || t->len != 1)
            return -1;
        if (t->str[0] == 'e' && i + 5 < r->elements) {
            const redisReply *ns = r->element[i + 1], *k = r->element[i + 2],
                             *v = r->element[i + 3], *ver = r->element[i + 4],
                             *ttl = r->element[i + 5];
            if (!str_elem(ns) || !str_elem(k) || !str_elem(v) || !str_elem(ver) ||
                ttl->type != REDIS_REPLY_INTEGER)
                return -1;
            if (fprintf(f, "entry %zu %zu %zu %s %lld\n", ns->len, k->len, v->len, ver->str,
                        ttl->integer) < 0 ||
                put_bytes(f, ns->str, ns->len) || put_bytes(f, k->str, k->len) ||
                put_bytes(f, v->str, v->len) || fputc('\n', f) == EOF)
                return -1;
            entries++;
            i += 6;
        } else if (t->str[0] == 'l' && i + 4 < r->elements) {
            const redisReply *name = r->element[i + 1], *h = r->element[i + 2],
                             *ep = r->element[i + 3], *ttl = r->element[i + 4];
            if (!str_elem(name) || !str_elem(h) || !str_elem(ep) ||
                ttl->type != REDIS_REPLY_INTEGER)
                return -1;
            if (fprintf(f, "lease %zu %zu %s %lld\n", name->len, h->len, ep->str,
                        ttl->integer) < 0 ||
                put_bytes(f, name->str, name->len) || put_bytes(f, h->str, h->len) ||
                fputc('\n', f) == EOF)
                return -1;
            leases++;
            i += 5;
        } else {
            return -1;
        }
    }
    return fprintf(f, "end %zu %zu\n", entries, leases) < 0 ? -1 : 0;
}

/*
 * A consistent snapshot of every entry and lease under the prefix: one
 * read-only script reads them all atomically, the reply is written to
 * path.tmp, fsync'd and renamed over path, and the directory fsync'd.
 */
static int rd_backup(rhema_storage_conn *c, const char *path, char **err)
{
    const struct rhema_host *h = c->inst->host;
    const rhema_storage_instance *in = c->inst;
    char tmp[PATH_MAX];
    struct args a = {0};
    redisReply *r = NULL;
    FILE *f = NULL;
    int rc, fd, e;

    release_held(c);
    if (path == NULL || path[0] == '\0')
        return h->set_error(err, RHEMA_EINVAL, "redis: backup: empty path");
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return h->set_error(err, RHEMA_EINVAL, "redis: backup: path too long");
    args_script(&a, c, SC_DUMP, 3);
    args_push_cat(&a, in->prefix, "namespaces", NULL, NULL);
    args_push_cat(&a, in->prefix, "leases", NULL, NULL);
    args_push_cat(&a, in->prefix, "version", NULL, NULL);
    args_push_str(&a, in->prefix);
    rc = rd_script(c, &a, SC_DUMP, CALL_READ, "backup", &r);
    args_free(&a);
    if (rc != 0)
        return h->set_error(err, rc, "redis: %s", c->err);

    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0) {
        e = errno;
        rc = h->set_error(err, RHEMA_EIO, "redis: backup: open %s: %s", tmp, strerror(e));
        goto out;
    }
    f = fdopen(fd, "wb");
    if (f == NULL) {
        e = errno;
        close(fd);
        rc = h->set_error(err, RHEMA_EIO, "redis: backup: fdopen %s: %s", tmp, strerror(e));
        goto out_unlink;
    }
    if (write_dump(f, r) != 0) {
        e = ferror(f) ? errno : 0;
        rc = e != 0 ? h->set_error(err, RHEMA_EIO, "redis: backup: write %s: %s", tmp,
                                   strerror(e))
                    : h->set_error(err, RHEMA_EIO, "redis: backup: malformed dump reply");
        goto out_unlink;
    }
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
        e = errno;
        rc = h->set_error(err, RHEMA_EIO, "redis: backup: fsync %s: %s", tmp, strerror(e));
        goto out_unlink;
    }
    e = fclose(f) != 0 ? errno : 0;
    f = NULL;
    if (e != 0) {
        rc = h->set_error(err, RHEMA_EIO, "redis: backup: close %s: %s", tmp, strerror(e));
        goto out_unlink;
    }
    if (rename(tmp, path) != 0) {
        e = errno;
        rc = h->set_error(err, RHEMA_EIO, "redis: backup: rename to %s: %s", path, strerror(e));
        goto out_unlink;
    }
    if ((e = fsync_dir(path)) != 0)
        rc = h->set_error(err, RHEMA_EIO, "redis: backup: fsync the directory of %s: %s", path,
                          strerror(e));
    goto out;
out_unlink:
    if (f != NULL)
        fclose(f);
    f = NULL;
    unlink(tmp);
out:
    if (rc != 0)
        conn_error(c, "backup to %s failed", path);
    freeReplyObject(r);
    return rc;
}

/* ---- restore ---- */

/*
 * Replace everything under the prefix with a dump, atomically (one script).
 * ARGV[1] prefix, ARGV[2] the dump's version counter, ARGV[3] n entries,
 * then 5 per entry (ns, key, value, version, pttl or -1), then 4 per lease
 * (name, holder, epoch, pttl).  Every entry, zset, namespace set and holder
 * key under the prefix goes first; epoch keys stay, and become
 * max(dump, current): when the current one is larger the lease is left
 * free.  The version counter becomes max(dump, current).
 */
static const char script_restore[] =
    "local p = ARGV[1]\n"
    "local ep = string.gsub(p, '[%*%?%[%]\\\\]', '\\\\%0')\n"
    "for _, pat in ipairs({'e/*', 'z/*', 'lease/*'}) do\n"
    "  local ks = redis.call('KEYS', ep .. pat)\n"
    "  for i = 1, #ks, 1000 do\n"
    "    redis.call('DEL', unpack(ks, i, math.min(i + 999, #ks)))\n"
    "  end\n"
    "end\n"
    "redis.call('DEL', p .. 'namespaces')\n"
    "local cur = tonumber(redis.call('GET', p .. 'version') or '0') or 0\n"
    "if tonumber(ARGV[2]) > cur then redis.call('SET', p .. 'version', ARGV[2]) end\n"
    "local n, a = tonumber(ARGV[3]), 4\n"
    "for i = 1, n do\n"
    "  local ns, k, ttl = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 4])\n"
    "  local ek = p .. 'e/' .. ns .. '/' .. k\n"
    "  redis.call('HSET', ek, 'v', ARGV[a + 2], 'n', ARGV[a + 3])\n"
    "  if ttl >= 0 then redis.call('PEXPIRE', ek, math.max(ttl, 1)) end\n"
    "  redis.call('ZADD', p .. 'z/' .. ns, 0, k)\n"
    "  redis.call('SADD', p .. 'namespaces', ns)\n"
    "  a = a + 5\n"
    "end\n"
    "local l = 0\n"
    "while a <= #ARGV do\n"
    "  local name, holder, ttl = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 3])\n"
    "  local ek = p .. 'epoch/' .. name\n"
    "  local ce = tonumber(redis.call('GET', ek) or '0') or 0\n"
    "  if ce <= tonumber(ARGV[a + 2]) then\n"
    "    redis.call('SET', ek, ARGV[a + 2])\n"
    "    if holder ~= '' and ttl > 0 then\n"
    "      redis.call('SET', p .. 'lease/' .. name, holder, 'PX', ttl)\n"
    "    end\n"
    "  end\n"
    "  redis.call('SADD', p .. 'leases', name)\n"
    "  l = l + 1\n"
    "  a = a + 4\n"
    "end\n"
    "return {n, l}\n";

struct dump_cursor {
    const char *p, *end;
};

/* The next header line (up to \n, at most 200 bytes) into line; -1 at the end. */
static int dump_line(struct dump_cursor *d, char *line, size_t cap)
{
    const char *nl = memchr(d->p, '\n', (size_t)(d->end - d->p));
    size_t len;
    if (nl == NULL)
        return -1;
    len = (size_t)(nl - d->p);
    if (len >= cap)
        return -1;
    memcpy(line, d->p, len);
    line[len] = '\0';
    d->p = nl + 1;
    return 0;
}

/* n bytes of payload; -1 when the file ends first. */
static int dump_take(struct dump_cursor *d, size_t n, const char **out)
{
    if ((size_t)(d->end - d->p) < n)
        return -1;
    *out = d->p;
    d->p += n;
    return 0;
}

static int dec_ok(const char *s)
{
    uint64_t v;
    return parse_u64(s, strlen(s), &v) == 0;
}

/*
 * Parse and check a dump written by rd_backup() into script arguments
 * (pointing into buf).  0, or a code with why set.
 */
static int parse_dump(const char *buf, size_t size, struct args *a, size_t *entries,
                      size_t *leases, char *why, size_t why_size)
{
    struct dump_cursor d = {buf, buf + size};
    char line[256], counter[32];
    size_t n_e = 0, n_l = 0, want_e, want_l;
    char entries_buf[24];
    size_t count_at;

    if (size < strlen(BACKUP_MAGIC) || memcmp(buf, BACKUP_MAGIC, strlen(BACKUP_MAGIC)) != 0) {
        snprintf(why, why_size, "not a rhema redis backup (bad magic)");
        return RHEMA_ECORRUPT;
    }
    d.p += strlen(BACKUP_MAGIC);
    if (dump_line(&d, line, sizeof line) != 0 || sscanf(line, "version %31s", counter) != 1 ||
        !dec_ok(counter)) {
        snprintf(why, why_size, "bad version line");
        return RHEMA_ECORRUPT;
    }
    args_push_str(a, "EVAL");
    args_push(a, script_restore, strlen(script_restore));
    args_push_str(a, "0");
    args_push(a, NULL, 0); /* the prefix: filled in by the caller */
    args_push_cat(a, counter, NULL, NULL, NULL);
    count_at = a->n;
    args_push(a, "0", 1); /* the entry count, below */
    for (;;) {
        size_t l1, l2, l3;
        char num[32];
        long long pttl;
        const char *s1, *s2, *s3;
        if (dump_line(&d, line, sizeof line) != 0)
            goto truncated;
        if (sscanf(line, "entry %zu %zu %zu %31s %lld", &l1, &l2, &l3, num, &pttl) == 5) {
            if (n_l > 0) {
                snprintf(why, why_size, "an entry after the leases");
                return RHEMA_ECORRUPT;
            }
            const char *nl;
            if (dump_take(&d, l1, &s1) || dump_take(&d, l2, &s2) || dump_take(&d, l3, &s3) ||
                dump_take(&d, 1, &nl))
                goto truncated;
            if (*nl != '\n' || l1 == 0 || l1 > RHEMA_STORAGE_NS_MAX || l2 == 0 ||
                l2 > RHEMA_STORAGE_KEY_MAX || memchr(s2, '\0', l2) != NULL || !dec_ok(num) ||
                pttl < -1) {
                snprintf(why, why_size, "entry %zu is malformed", n_e + 1);
                return RHEMA_ECORRUPT;
            }
            {
                char ns[RHEMA_STORAGE_NS_MAX + 1];
                memcpy(ns, s1, l1);
                ns[l1] = '\0';
                if (!rhema_storage_ns_valid(ns)) {
                    snprintf(why, why_size, "entry %zu: invalid namespace", n_e + 1);
                    return RHEMA_ECORRUPT;
                }
            }
            args_push(a, s1, l1);
            args_push(a, s2, l2);
            args_push(a, s3, l3);
            args_push_cat(a, num, NULL, NULL, NULL);
            snprintf(num, sizeof num, "%lld", pttl);
            args_push_cat(a, num, NULL, NULL, NULL);
            n_e++;
        } else if (sscanf(line, "lease %zu %zu %31s %lld", &l1, &l2, num, &pttl) == 4) {
            if (dump_take(&d, l1, &s1) || dump_take(&d, l2, &s2) || dump_take(&d, 1, &s3))
                goto truncated;
            if (*s3 != '\n' || l1 == 0 || l1 > RHEMA_STORAGE_KEY_MAX ||
                l2 > RHEMA_LEASE_HOLDER_MAX || memchr(s1, '\0', l1) != NULL || !dec_ok(num) ||
                pttl < 0) {
                snprintf(why, why_size, "lease %zu is malformed", n_l + 1);
                return RHEMA_ECORRUPT;
            }
            args_push(a, s1, l1);
            args_push(a, s2, l2);
            args_push_cat(a, num, NULL, NULL, NULL);
            snprintf(num, sizeof num, "%lld", pttl);
            args_push_cat(a, num, NULL, NULL, NULL);
            n_l++;
        } else if (sscanf(line, "end %zu %zu", &want_e, &want_l) == 2) {
            break;
        } else {
            snprintf(why, why_size, "unexpected line '%.40s'", line);
            return RHEMA_ECORRUPT;
        }
    }
    if (want_e != n_e || want_l != n_l || d.p != d.end) {
        snprintf(why, why_size, "%zu entries and %zu leases, the end line says %zu and %zu%s",
                 n_e, n_l, want_e, want_l, d.p != d.end ? ", and data follows it" : "");
        return RHEMA_ECORRUPT;
    }
    if (a->oom) {
        snprintf(why, why_size, "out of memory");
        return RHEMA_ENOMEM;
    }
    snprintf(entries_buf, sizeof entries_buf, "%zu", n_e);
    args_push_cat(a, entries_buf, NULL, NULL, NULL);
    if (a->oom) {
        snprintf(why, why_size, "out of memory");
        return RHEMA_ENOMEM;
    }
    /* move the count into its slot */
    a->v[count_at] = a->v[a->n - 1];
    a->len[count_at] = a->len[a->n - 1];
    a->n--;
    *entries = n_e;
    *leases = n_l;
    return 0;
truncated:
    snprintf(why, why_size, "truncated after %zu entries and %zu leases", n_e, n_l);
    return RHEMA_ECORRUPT;
}

/*
 * Read and check the whole dump first, then replace the content under the
 * prefix with it in one script, atomic with respect to every other client.
 * Redis does not roll a script back: a server-side failure half way (out
 * of memory under maxmemory) could leave part of it applied; the checks
 * before the script leave it no other way to fail.
 */
static int rd_restore(rhema_storage_instance *in, const char *path, char **err)
{
    const struct rhema_host *h = in->host;
    rhema_storage_conn *c = NULL;
    struct args a = {0};
    redisReply *r = NULL;
    char *buf = NULL, why[256];
    size_t entries = 0, leases = 0;
    long size;
    FILE *f;
    int rc;

    if (path == NULL || path[0] == '\0')
        return h->set_error(err, RHEMA_EINVAL, "redis: restore: empty path");
    f = fopen(path, "rb");
    if (f == NULL) {
        int e = errno;
        return h->set_error(err, e == ENOENT ? RHEMA_ENOTFOUND : RHEMA_EIO,
                            "redis: restore: open %s: %s", path, strerror(e));
    }
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0 ||
        (buf = malloc((size_t)size + 1)) == NULL ||
        fread(buf, 1, (size_t)size, f) != (size_t)size) {
        fclose(f);
        free(buf);
        return h->set_error(err, RHEMA_EIO, "redis: restore: cannot read %s", path);
    }
    fclose(f);
    rc = parse_dump(buf, (size_t)size, &a, &entries, &leases, why, sizeof why);
    if (rc != 0) {
        rc = h->set_error(err, rc, "redis: restore: %s: %s", path, why);
        goto out;
    }
    a.v[3] = in->prefix;
    a.len[3] = in->prefix_len;
    c = conn_new(in);
    if (c == NULL) {
        rc = h->set_error(err, RHEMA_ENOMEM, "redis: out of memory");
        goto out;
    }
    rc = rd_call(c, &a, CALL_WRITE, "restore", &r);
    if (rc == 0 && (r->type != REDIS_REPLY_ARRAY || r->elements != 2)) {
        conn_error(c, "restore: unexpected reply");
        rc = RHEMA_EIO;
    }
    if (rc != 0) {
        rc = h->set_error(err, rc, "redis: %s", c->err);
        goto out;
    }
    if (h->log != NULL)
        h->log(RHEMA_LOG_NOTICE, PLUGIN_NAME,
               "restored prefix '%s' from %s (%zu entries, %zu leases)", in->prefix, path,
               entries, leases);
out:
    if (r != NULL)
        freeReplyObject(r);
    rd_disconnect(c);
    args_free(&a);
    free(buf);
    return rc;
}

/*
 * The vtable's batch(), group() and get_many() take arrays of the caller's
 * stride (storage.h, "Growing the structs"); the functions above work on
 * arrays of this plugin's layout, and ../common adapts one to the other.
 */

static int rd_batch_strided(rhema_storage_conn *c, struct rhema_storage_write *w, size_t n)
{
    const char *why = NULL;
    int rc = rhema_storage_call_batch(rd_batch, c, w, n, &why);
    if (why != NULL)
        conn_error(c, "%s", why);
    return rc;
}

static int rd_group_strided(rhema_storage_conn *c, struct rhema_storage_batch *g, size_t n)
{
    const char *why = NULL;
    int rc = rhema_storage_call_group(rd_group, c, g, n, &why);
    if (why != NULL)
        conn_error(c, "%s", why);
    return rc;
}

static int rd_get_many_strided(rhema_storage_conn *c, const char *const *ns,
                               const char *const *keys, size_t n, struct rhema_storage_value *out,
                               int *rcs)
{
    const char *why = NULL;
    int rc = rhema_storage_call_get_many(rd_get_many, c, ns, keys, n, out, rcs, &why);
    if (why != NULL)
        conn_error(c, "%s", why);
    return rc;
}

/*
 * ---- watch() ----
 *
 * A thread of its own with its own connection, made as every connection is
 * (TLS through the relay when configured, AUTH, SELECT), that SUBSCRIBEs
 * to the channel the write script PUBLISHes on and polls its socket and a
 * wake-up pipe: a message, or any number of them read at once, is one
 * notify().  A lost connection is reopened at once and then after 50 ms,
 * doubling to 2 s between failed attempts; once it is back notify() is
 * called, since messages published meanwhile are lost (pub/sub keeps
 * nothing).  unwatch() writes to the pipe and joins the thread, which may
 * take up to timeout_ms when it is in the middle of a connect.
 */
#define WATCH_BACKOFF_MIN_MS 50
#define WATCH_BACKOFF_MAX_MS 2000

struct rd_watch {
    rhema_storage_instance *inst;
    rhema_storage_conn *c; /* its context; c->down says why it last failed */
    pthread_t thread;
    int wake[2]; /* unwatch() writes to wake[1] */
    void (*notify)(void *arg);
    void *arg;
};

static void watch_drop(struct rd_watch *w)
{
    if (w->c->ctx != NULL)
        context_free(w->c->ctx, w->c->relay, NULL, 0);
    w->c->ctx = NULL;
    w->c->relay = NULL;
}

/* Connect and SUBSCRIBE.  0, or -1 with w->c->down set (and no context). */
static int watch_subscribe(struct rd_watch *w)
{
    struct sigpipe_guard g;
    const char *argv[2] = {"SUBSCRIBE", w->inst->channel};
    size_t lens[2] = {9, strlen(w->inst->channel)};
    redisReply *r = NULL;
    int auth_failed, ok;

    if (open_context(w->c, &auth_failed) != 0)
        return -1;
    sigpipe_block(&g);
    ok = setup_command(w->c, w->c->ctx, 2, argv, lens, &r, "SUBSCRIBE") == 0;
    sigpipe_restore(&g);
    if (ok && (r->type != REDIS_REPLY_ARRAY || r->elements != 3)) {
        snprintf(w->c->down, sizeof w->c->down, "SUBSCRIBE: unexpected reply type %d", r->type);
        ok = 0;
    }
    if (r != NULL)
        freeReplyObject(r);
    if (!ok) {
        watch_drop(w);
        return -1;
    }
    return 0;
}

/* Wait ms for the wake-up pipe: 1 when woken (stop), else 0. */
static int watch_sleep(struct rd_watch *w, int ms)
{
    struct pollfd p = {.fd = w->wake[0], .events = POLLIN};
    int r;
    do
        r = poll(&p, 1, ms);
    while (r < 0 && errno == EINTR);
    return r > 0;
}

/* Read what the socket has; 1 when a message came, -1 when the connection is lost. */
static int watch_read(struct rd_watch *w)
{
    redisContext *ctx = w->c->ctx;
    void *vr = NULL;
    int got = 0;
    if (redisBufferRead(ctx) != REDIS_OK)
        return -1;
    for (;;) {
        redisReply *r;
        if (redisGetReplyFromReader(ctx, &vr) != REDIS_OK)
            return -1;
        if (vr == NULL)
            break;
        r = vr;
        if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
            r->element[0]->type == REDIS_REPLY_STRING && strcmp(r->element[0]->str, "message") == 0)
            got = 1;
        freeReplyObject(r);
        vr = NULL;
    }
    return got;
}

static void *watch_main(void *arg)
{
    struct rd_watch *w = arg;
    const struct rhema_host *h = w->inst->host;
    int backoff = 0; /* the first attempt after a loss goes at once */

    for (;;) {
        struct pollfd p[2];
        int r;
        if (w->c->ctx == NULL) {
            if (backoff > 0 && watch_sleep(w, backoff))
                break;
            if (watch_subscribe(w) != 0) {
                if (watch_sleep(w, 0))
                    break;
                backoff = backoff == 0                         ? WATCH_BACKOFF_MIN_MS
                          : backoff * 2 > WATCH_BACKOFF_MAX_MS ? WATCH_BACKOFF_MAX_MS
                                                               : backoff * 2;
                continue;
            }
            backoff = 0;
            if (h->log != NULL)
                h->log(RHEMA_LOG_NOTICE, PLUGIN_NAME, "watch: subscribed again to %s",
                       w->inst->channel);
            w->notify(w->arg); /* what was written meanwhile was not published to us */
            continue;
        }
        p[0] = (struct pollfd){.fd = w->c->ctx->fd, .events = POLLIN};
        p[1] = (struct pollfd){.fd = w->wake[0], .events = POLLIN};
        r = poll(p, 2, -1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 || p[1].revents != 0)
            break;
        if (p[0].revents == 0)
            continue;
        r = watch_read(w);
        if (r > 0)
            w->notify(w->arg);
        if (r < 0) {
            char why[256];
            snprintf(why, sizeof why, "%s",
                     w->c->ctx->errstr[0] ? w->c->ctx->errstr : "the server closed the connection");
            context_free(w->c->ctx, w->c->relay, why, sizeof why);
            w->c->ctx = NULL;
            w->c->relay = NULL;
            if (h->log != NULL)
                h->log(RHEMA_LOG_WARN, PLUGIN_NAME, "watch: connection to %s:%d lost: %s",
                       w->inst->server, w->inst->port, why);
        }
    }
    watch_drop(w);
    return NULL;
}

static void watch_free(struct rd_watch *w)
{
    if (w->wake[0] >= 0)
        close(w->wake[0]);
    if (w->wake[1] >= 0)
        close(w->wake[1]);
    if (w->c != NULL)
        rd_disconnect(w->c);
    free(w);
}

/*
 * Subscribe before returning, so that a batch applied after watch()
 * returns is notified; a server that cannot be reached now is retried by
 * the thread (and notify() called once it answers).
 */
static int rd_watch(rhema_storage_instance *in, void (*notify)(void *arg), void *arg, char **err)
{
    const struct rhema_host *h = in->host;
    struct rd_watch *w;
    sigset_t pipe_set, old;
    int rc;

    if (notify == NULL)
        return h->set_error(err, RHEMA_EINVAL, "redis: watch() without a notify function");
    if (in->watch != NULL)
        return h->set_error(err, RHEMA_EINVAL, "redis: watch() called twice without unwatch()");
    w = calloc(1, sizeof *w);
    if (w == NULL)
        return h->set_error(err, RHEMA_ENOMEM, "redis: out of memory");
    w->inst = in;
    w->notify = notify;
    w->arg = arg;
    w->wake[0] = w->wake[1] = -1;
    w->c = conn_new(in);
    if (w->c == NULL) {
        free(w);
        return h->set_error(err, RHEMA_ENOMEM, "redis: out of memory");
    }
    if (pipe(w->wake) != 0) {
        rc = h->set_error(err, RHEMA_EIO, "redis: watch: pipe: %s", strerror(errno));
        watch_free(w);
        return rc;
    }
    (void)fcntl(w->wake[0], F_SETFD, FD_CLOEXEC);
    (void)fcntl(w->wake[1], F_SETFD, FD_CLOEXEC);
    if (watch_subscribe(w) != 0 && h->log != NULL)
        h->log(RHEMA_LOG_WARN, PLUGIN_NAME, "watch: %s:%d: %s; will retry", in->server, in->port,
               w->c->down);
    /* the thread inherits a blocked SIGPIPE: a write to a closed socket never kills the host */
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    rc = pthread_create(&w->thread, NULL, watch_main, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        watch_drop(w);
        rc = h->set_error(err, RHEMA_ENOMEM, "redis: watch: cannot start a thread: %s",
                          strerror(rc));
        watch_free(w);
        return rc;
    }
    in->watch = w;
    return 0;
}

static void rd_unwatch(rhema_storage_instance *in)
{
    struct rd_watch *w = in->watch;
    ssize_t r;
    if (w == NULL)
        return;
    do
        r = write(w->wake[1], "x", 1);
    while (r < 0 && errno == EINTR);
    pthread_join(w->thread, NULL);
    watch_free(w);
    in->watch = NULL;
}

static const struct rhema_storage_plugin redis_plugin = {
    .base = RHEMA_STORAGE_PLUGIN_HEADER(PLUGIN_NAME, "1.0.0",
                                        "Redis server through hiredis (shared, leases, TTL)"),
    /* DURABLE as the server is configured: appendonly yes + appendfsync always */
    .features =
        RHEMA_STORAGE_SHARED | RHEMA_STORAGE_DURABLE | RHEMA_STORAGE_TTL | RHEMA_STORAGE_LEASES |
        RHEMA_STORAGE_SEQUENCED,
    .open = rd_open,
    .close = rd_close,
    .connect = rd_connect,
    .disconnect = rd_disconnect,
    .get = rd_get,
    .put = rd_put,
    .del = rd_del,
    .batch = rd_batch_strided,
    .scan = rd_scan,
    .lease = rd_lease,
    .health = rd_health,
    .stats = rd_stats,
    .errmsg = rd_errmsg,
    .backup = rd_backup,
    .group = rd_group_strided,
    .restore = rd_restore,
    .get_many = rd_get_many_strided,
    .rate = rd_rate,
    .watch = rd_watch,
    .unwatch = rd_unwatch,
    .check = rd_check,
};

int rhema_plugin_init(const struct rhema_host *host, const struct rhema_plugin **out)
{
    (void)host;
    *out = &redis_plugin.base;
    return 0;
}
