/*
 * bench/codec_bench.c -- the compression plugins through rhema's loader and
 * frame (core/plugin.c, core/codec.c) against the raw library calls, on a
 * corpus of coordination-style JSON messages generated here.
 * A benchmark, not a test: built and run by bench/run-codecs.sh, never by
 * `make check`.
 *
 *   1. For each codec at its default level (lz4 1, zstd 3, gzip 6, snappy),
 *      at message sizes 256 B and 4 KiB: compress and decompress MB/s through
 *      rhema_frame_compress (force = 1, so nothing is stored raw) and
 *      rhema_frame_decompress, against the library call the plugin makes,
 *      with the same settings, on the same messages, into a reused buffer.
 *      Target: rhema/raw >= 0.95 at 4 KiB and >= 0.90 at 256 B.
 *   2. zstd with a 16 KiB dictionary trained (ZDICT_trainFromBuffer) on a
 *      disjoint part of the corpus, configured as the plugin is in
 *      production (advanced_features.compression.zstd.dictionary), against
 *      zstd without one, on messages of 200 .. 1023 bytes.
 *      Target: ratio with / ratio without >= 1.5.
 *
 * MB/s is 10^6 bytes of uncompressed message per second, for both
 * directions.  "ratio" is uncompressed bytes / compressed bytes summed over
 * the batch: "frame" counts rhema's 13-byte frame header (17 with a
 * dictionary id), "raw" the library's output alone.
 *
 * A pass runs the whole batch (about 1 MiB of messages) once.  Each cell
 * (-r of them per measurement) runs at least -t seconds of passes on each
 * side, in slices of at least -S seconds (0.02) that alternate between the
 * rhema and the raw side, so that load from elsewhere on the machine hits
 * both alike; the best slice of each side counts.
 *
 * Output: one line per measurement,
 *   ROW <section> <codec> <size> <op> <rhema MB/s> <raw MB/s> <speed ratio>
 *       <frame ratio> <raw ratio> <target or -> <PASS|FAIL|->
 * and notes on lines starting with '#'.  Exit status: the number of
 * targets missed; 99 when the benchmark could not be set up.
 *
 * usage: codec_bench -P plugin_dir [-t seconds] [-r reps] [-S slice] [-d workdir]
 *                    [-s 1|2] [-c codec] [-z size] [-O op] [-x 1|2]
 *   -s 1: the speed section only, -s 2: the dictionary section only;
 *   -c, -z, -O: only that codec, message size, operation (compress or
 *   decompress) in the speed section;
 *   -x 1: run only the rhema side, -x 2 only the raw side (for perf record);
 *   codec_bench -m SIZE prints one generated message (SIZE 0: 200..1023 B).
 */
#include "rhema_build.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <lz4.h>
#include <snappy-c.h>
#include <zlib.h>
#define ZDICT_STATIC_LINKING_ONLY
#include <zdict.h>
#include <zstd.h>

#include "codec.h"
#include "config.h"
#include "plugin.h"

/* ------------------------------------------------------------------ */
/* the corpus                                                          */

static uint64_t rng_state;

static uint64_t rng(void) /* splitmix64 */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static unsigned rnd(unsigned n)
{
    return (unsigned)(rng() % n);
}

#define PICK(a) (a[rnd(sizeof a / sizeof a[0])])

static const char *const types[] = {
    "task_request",   "task_result",   "status_update",       "heartbeat",    "consensus_proposal",
    "consensus_vote", "context_share", "error_report",        "handoff",      "query",
    "query_response", "ack",           "capability_announce", "session_join",
};
static const char *const priorities[] = {"low", "normal", "normal", "normal", "high", "critical"};
static const char *const roles[] = {"planner",  "researcher", "coder",     "reviewer",
                                    "tester",   "summarizer", "router",    "critic",
                                    "executor", "monitor",    "retriever", "negotiator"};
static const char *const models[] = {"gpt-4o", "claude-3-5-sonnet", "llama-3.1-70b",
                                     "mistral-large", "local-qwen2.5-14b"};
static const char *const tags[] = {"urgent",    "batch",        "retry",    "idempotent",
                                   "streaming", "long-running", "gpu",      "cached",
                                   "sandboxed", "external",     "pii-free", "audited"};
static const char *const statuses[] = {"pending", "running", "blocked",
                                       "done",    "failed",  "cancelled"};
static const char *const words[] = {
    "the",      "agent",      "task",         "session",   "result",     "please",   "review",
    "analysis", "of",         "and",          "to",        "in",         "for",      "with",
    "on",       "data",       "pipeline",     "step",      "output",     "input",    "consensus",
    "vote",     "proposal",   "plan",         "deadline",  "summary",    "report",   "error",
    "retry",    "timeout",    "context",      "window",    "tokens",     "document", "section",
    "source",   "citation",   "query",        "response",  "should",     "could",    "will",
    "has",      "been",       "is",           "was",       "not",        "all",      "each",
    "next",     "previous",   "completed",    "started",   "failed",     "approved", "rejected",
    "pending",  "branch",     "commit",       "test",      "suite",      "coverage", "function",
    "module",   "service",    "endpoint",     "latency",   "throughput", "budget",   "cost",
    "estimate", "confidence", "score",        "threshold", "because",    "however",  "therefore",
    "after",    "before",     "while",        "until",     "we",         "it",       "this",
    "that",     "these",      "three",        "two",       "first",      "second",   "final",
    "draft",    "version",    "update",       "customer",  "ticket",     "invoice",  "dataset",
    "schema",   "migration",  "index",        "cache",     "replica",    "leader",   "follower",
    "quorum",   "lease",      "lock",         "queue",     "worker",     "handoff",  "found",
    "missing",  "duplicate",  "inconsistent", "verified",  "checked",    "merged",
};

/*
 * Sentences the way agents write them: mostly from templates with variable
 * parts (ids, numbers, names), some free text of common words.
 */
static const char *const templates[] = {
    "Task %u completed in %u ms; %u of %u checks passed.",
    "I have reviewed the proposal from agent-%s-%02u and I agree with the plan.",
    "Please summarize the findings of the %s step and send them to the %s.",
    "The %s returned an error after %u retries: connection timed out.",
    "Consensus reached on proposal %u with %u votes in favour and %u against.",
    "Next step: run the test suite on branch feature-%u and report the coverage.",
    "Context window is at %u%% of the budget; I will compress the history.",
    "Waiting for agent-%s-%02u to finish the %s before continuing.",
    "The dataset has %u rows; %u are duplicates and %u are missing a schema field.",
    "Handing off the task to agent-%s-%02u because it needs the %s capability.",
    "Status update: %u tasks pending, %u running, %u done, %u failed.",
    "Found %u citations in the source document; %u could not be verified.",
    "The estimated cost is %u tokens and the confidence score is 0.%02u.",
    "Lease renewed for %u seconds on the %s queue.",
    "Please review the changes in src/%s/%s.py and approve or reject them.",
};

/* Append a sentence to b (NUL-terminated, capacity cap). */
static size_t sentence(char *b, size_t n, size_t cap)
{
    if (n + 400 > cap)
        return cap - 1;
    if (rnd(10) < 8) {
        unsigned t = rnd(sizeof templates / sizeof templates[0]);
        const char *f = templates[t];
        char tmp[400];
        /* each template takes at most 4 arguments of the kinds below */
        switch (t) {
        case 1:
        case 7:
        case 9: snprintf(tmp, sizeof tmp, f, PICK(roles), rnd(16), PICK(words)); break;
        case 2: snprintf(tmp, sizeof tmp, f, PICK(words), PICK(roles)); break;
        case 3: snprintf(tmp, sizeof tmp, f, PICK(words), 1 + rnd(5)); break;
        case 13: snprintf(tmp, sizeof tmp, f, 30 * (1 + rnd(20)), PICK(words)); break;
        case 14: snprintf(tmp, sizeof tmp, f, PICK(words), PICK(words)); break;
        case 6: snprintf(tmp, sizeof tmp, f, rnd(100)); break;
        case 5: snprintf(tmp, sizeof tmp, f, rnd(1000)); break;
        default: snprintf(tmp, sizeof tmp, f, rnd(5000), rnd(500), rnd(100), rnd(100)); break;
        }
        n += (size_t)snprintf(b + n, cap - n, "%s ", tmp);
        return n;
    }
    unsigned k = 6 + rnd(13);
    for (unsigned i = 0; i < k; i++) {
        const char *w = PICK(words);
        if (i == 0)
            n += (size_t)snprintf(b + n, cap - n, "%c%s", w[0] - 'a' + 'A', w + 1);
        else if (rnd(23) == 0)
            n += (size_t)snprintf(b + n, cap - n, " %u", rnd(10000));
        else
            n += (size_t)snprintf(b + n, cap - n, " %s%s", w, rnd(9) == 0 ? "," : "");
    }
    n += (size_t)snprintf(b + n, cap - n, "%s ", rnd(6) == 0 ? "?" : ".");
    return n;
}

static void hex(char *out, unsigned n)
{
    static const char d[] = "0123456789abcdef";
    for (unsigned i = 0; i < n; i++)
        out[i] = d[rnd(16)];
    out[n] = '\0';
}

/*
 * One AgentMessage-like JSON object of exactly `size` bytes (size >= 200)
 * into out (capacity >= size + 1).  richness 3..0: how many optional
 * fields; lowered until the fixed part leaves room for some content.
 */
static void message(char *out, size_t size)
{
    char pre[2048], post[2048], id[17], trace[33], sess[13], corr[13];
    static char content[16384];
    for (int rich = 3; rich >= 0; rich--) {
        size_t np = 0, nq = 0;
        hex(id, 16);
        hex(trace, 32);
        hex(corr, 12);
        uint64_t saved = rng_state;
        rng_state = 1000 + rnd(40); /* 40 sessions */
        hex(sess, 12);
        rng_state = saved ^ rng();
        np += (size_t)snprintf(pre + np, sizeof pre - np, "{\"id\":\"msg_%s\",\"type\":\"%s\",", id,
                               PICK(types));
        if (rich >= 1)
            np += (size_t)snprintf(pre + np, sizeof pre - np, "\"session_id\":\"sess_%s\",", sess);
        np +=
            (size_t)snprintf(pre + np, sizeof pre - np,
                             "\"sender\":\"agent-%s-%02u\",\"recipients\":[", PICK(roles), rnd(16));
        unsigned nr = 1 + (rich > 0 ? rnd(1 + (unsigned)rich) : 0);
        for (unsigned i = 0; i < nr; i++)
            np += (size_t)snprintf(pre + np, sizeof pre - np, "%s\"agent-%s-%02u\"", i ? "," : "",
                                   PICK(roles), rnd(16));
        np +=
            (size_t)snprintf(pre + np, sizeof pre - np, "],\"priority\":\"%s\",", PICK(priorities));
        if (rich >= 1)
            np += (size_t)snprintf(pre + np, sizeof pre - np,
                                   "\"timestamp\":\"2026-%02u-%02uT%02u:%02u:%02u.%03uZ\",",
                                   1 + rnd(12), 1 + rnd(28), rnd(24), rnd(60), rnd(60), rnd(1000));
        np += (size_t)snprintf(pre + np, sizeof pre - np, "\"content\":\"");
        nq += (size_t)snprintf(post + nq, sizeof post - nq, "\"");
        if (rich >= 1)
            nq += (size_t)snprintf(post + nq, sizeof post - nq,
                                   ",\"metadata\":{\"correlation_id\":\"corr_%s\",\"retry\":%u",
                                   corr, rnd(4));
        if (rich >= 2) {
            nq += (size_t)snprintf(post + nq, sizeof post - nq,
                                   ",\"trace_id\":\"%s\",\"model\":\"%s\",\"tokens\":%u,\"tags\":[",
                                   trace, PICK(models), 20 + rnd(8000));
            unsigned nt = rnd(4);
            for (unsigned i = 0; i < nt; i++)
                nq += (size_t)snprintf(post + nq, sizeof post - nq, "%s\"%s\"", i ? "," : "",
                                       PICK(tags));
            nq += (size_t)snprintf(post + nq, sizeof post - nq, "]");
        }
        if (rich >= 3)
            nq += (size_t)snprintf(post + nq, sizeof post - nq,
                                   ",\"task\":{\"status\":\"%s\",\"progress\":%.2f,"
                                   "\"deadline_ms\":%u}",
                                   PICK(statuses), (double)rnd(101) / 100.0, 1000 * rnd(3600));
        if (rich >= 1)
            nq += (size_t)snprintf(post + nq, sizeof post - nq, "}");
        if (rich >= 1)
            nq += (size_t)snprintf(post + nq, sizeof post - nq,
                                   ",\"ttl_seconds\":%u,\"requires_ack\":%s", 60 * (1 + rnd(10)),
                                   rnd(2) ? "true" : "false");
        nq += (size_t)snprintf(post + nq, sizeof post - nq, "}");
        if (np + nq + 24 > size && rich > 0)
            continue;
        if (np + nq + 1 > size) { /* cannot happen for size >= 200 */
            fprintf(stderr, "codec_bench: message of %zu bytes is too small\n", size);
            exit(99);
        }
        size_t want = size > np + nq ? size - np - nq : 0, n = 0;
        content[0] = '\0';
        while (n < want)
            n = sentence(content, n, sizeof content);
        while (want && content[want - 1] == ' ') /* no trailing blank */
            content[want - 1] = '.';
        memcpy(out, pre, np);
        memcpy(out + np, content, want);
        memcpy(out + np + want, post, nq);
        out[np + want + nq] = '\0';
        return;
    }
}

struct batch {
    size_t n;
    unsigned char **msg;
    size_t *len;
    size_t bytes;
};

/* n messages of `size` bytes, or (size 0) of 200 .. 1023 bytes. */
static void batch_make(struct batch *b, size_t n, size_t size, uint64_t seed)
{
    rng_state = seed;
    b->n = n;
    b->msg = calloc(n, sizeof *b->msg);
    b->len = calloc(n, sizeof *b->len);
    b->bytes = 0;
    for (size_t i = 0; i < n; i++) {
        size_t s = size ? size : 200 + rnd(824);
        b->msg[i] = malloc(s + 1);
        message((char *)b->msg[i], s);
        b->len[i] = strlen((char *)b->msg[i]);
        b->bytes += b->len[i];
    }
}

static void batch_free(struct batch *b)
{
    for (size_t i = 0; i < b->n; i++)
        free(b->msg[i]);
    free(b->msg);
    free(b->len);
}

/* ------------------------------------------------------------------ */
/* timing                                                              */

static double cell_seconds = 0.5;
static int reps = 3;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef int (*pass_fn)(void *arg); /* one pass over the batch; 0 or an error */

static double slice_seconds = 0.02;
static int only_side; /* for profiling: 1 runs only the rhema side, 2 only the raw side */

/* One slice: passes over `bytes` bytes for at least slice_seconds; MB/s, *t the time. */
static double slice(pass_fn fn, void *arg, size_t bytes, double *t)
{
    double t0 = now();
    size_t passes = 0;
    do {
        if (fn(arg) != 0)
            return -1;
        passes++;
        *t = now() - t0;
    } while (*t < slice_seconds);
    return (double)passes * (double)bytes / *t / 1e6;
}

/*
 * Best MB/s of a (rhema) and b (raw): `reps` cells of at least cell_seconds
 * of each side, made of short slices that alternate between the sides, so
 * that a burst of load from elsewhere on the machine hits both alike; the
 * best slice of each side counts.
 */
static int pair(pass_fn a, void *aa, pass_fn b, void *ba, size_t bytes, double *ra, double *rb)
{
    *ra = *rb = 0;
    if ((only_side != 2 && a(aa) != 0) || (only_side != 1 && b(ba) != 0)) /* warm-up, check */
        return -1;
    for (int i = 0; i < reps; i++) {
        double ta = 0, tb = 0, t;
        while ((only_side != 2 && ta < cell_seconds) || (only_side != 1 && tb < cell_seconds)) {
            if (only_side != 2) {
                double x = slice(a, aa, bytes, &t);
                if (x < 0)
                    return -1;
                ta += t;
                if (x > *ra)
                    *ra = x;
            }
            if (only_side != 1) {
                double y = slice(b, ba, bytes, &t);
                if (y < 0)
                    return -1;
                tb += t;
                if (y > *rb)
                    *rb = y;
            }
        }
    }
    if (*ra == 0) /* a profiling run of one side */
        *ra = 1;
    if (*rb == 0)
        *rb = 1;
    return 0;
}

/* ------------------------------------------------------------------ */
/* the raw library calls, set up exactly as the plugins do             */

enum { RAW_LZ4, RAW_ZSTD, RAW_GZIP, RAW_SNAPPY };

struct raw {
    int kind;
    void *lz4_state;
    ZSTD_CCtx *cctx;
    ZSTD_DCtx *dctx;
    ZSTD_CDict *cdict; /* dictionary runs only */
    ZSTD_DDict *ddict;
    z_stream def, inf;
    unsigned char *dst; /* reused output buffer */
    size_t cap;
};

static int raw_init(struct raw *r, int kind, size_t max_len)
{
    memset(r, 0, sizeof *r);
    r->kind = kind;
    r->cap = 2 * max_len + 1024;
    r->dst = malloc(r->cap);
    switch (kind) {
    case RAW_LZ4: r->lz4_state = malloc((size_t)LZ4_sizeofState()); break;
    case RAW_ZSTD:
        r->cctx = ZSTD_createCCtx();
        r->dctx = ZSTD_createDCtx();
        break;
    case RAW_GZIP: /* gzip.c: level 6, windowBits 15 + 16, memLevel 8, default strategy */
        if (deflateInit2(&r->def, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK ||
            inflateInit2(&r->inf, 15 + 16) != Z_OK)
            return -1;
        break;
    }
    return 0;
}

static void raw_free(struct raw *r)
{
    free(r->dst);
    free(r->lz4_state);
    ZSTD_freeCCtx(r->cctx);
    ZSTD_freeDCtx(r->dctx);
    ZSTD_freeCDict(r->cdict);
    ZSTD_freeDDict(r->ddict);
    if (r->kind == RAW_GZIP) {
        deflateEnd(&r->def);
        inflateEnd(&r->inf);
    }
}

/* Compress src into dst (capacity cap); the payload length, or 0 on error. */
static size_t raw_compress(struct raw *r, const void *src, size_t len, void *dst, size_t cap)
{
    switch (r->kind) {
    case RAW_LZ4: {
        int n = LZ4_compress_fast_extState(r->lz4_state, src, dst, (int)len, (int)cap, 1);
        return n > 0 ? (size_t)n : 0;
    }
    case RAW_ZSTD: {
        size_t n = r->cdict ? ZSTD_compress_usingCDict(r->cctx, dst, cap, src, len, r->cdict)
                            : ZSTD_compressCCtx(r->cctx, dst, cap, src, len, 3);
        return ZSTD_isError(n) ? 0 : n;
    }
    case RAW_GZIP:
        if (deflateReset(&r->def) != Z_OK)
            return 0;
        r->def.next_in = (Bytef *)(uintptr_t)src;
        r->def.avail_in = (uInt)len;
        r->def.next_out = dst;
        r->def.avail_out = (uInt)cap;
        if (deflate(&r->def, Z_FINISH) != Z_STREAM_END)
            return 0;
        return cap - r->def.avail_out;
    case RAW_SNAPPY: {
        size_t n = cap;
        return snappy_compress(src, len, dst, &n) == SNAPPY_OK ? n : 0;
    }
    }
    return 0;
}

static int raw_decompress(struct raw *r, const void *src, size_t len, void *dst, size_t orig)
{
    switch (r->kind) {
    case RAW_LZ4: return LZ4_decompress_safe(src, dst, (int)len, (int)orig) == (int)orig ? 0 : -1;
    case RAW_ZSTD: {
        size_t n = r->ddict ? ZSTD_decompress_usingDDict(r->dctx, dst, orig, src, len, r->ddict)
                            : ZSTD_decompressDCtx(r->dctx, dst, orig, src, len);
        return !ZSTD_isError(n) && n == orig ? 0 : -1;
    }
    case RAW_GZIP:
        if (inflateReset(&r->inf) != Z_OK)
            return -1;
        r->inf.next_in = (Bytef *)(uintptr_t)src;
        r->inf.avail_in = (uInt)len;
        r->inf.next_out = dst;
        r->inf.avail_out = (uInt)orig;
        /* gzip.c calls inflate with Z_NO_FLUSH */
        return inflate(&r->inf, Z_NO_FLUSH) == Z_STREAM_END && r->inf.avail_out == 0 ? 0 : -1;
    case RAW_SNAPPY: {
        size_t n = orig;
        return snappy_uncompress(src, len, dst, &n) == SNAPPY_OK && n == orig ? 0 : -1;
    }
    }
    return -1;
}

/* ------------------------------------------------------------------ */
/* passes                                                              */

struct job {
    const struct batch *b;
    /* rhema */
    const struct rhema_codecs *cs;
    struct rhema_codec_ctxs *ctxs;
    int id;
    struct rhema_buf *frames; /* one per message, for decompression */
    /* raw */
    struct raw *raw;
    unsigned char **payload; /* raw payloads, for decompression */
    size_t *plen;
    size_t sink;
};

static int pass_rhema_compress(void *arg)
{
    struct job *j = arg;
    char err[RHEMA_FRAME_ERR_MAX];
    for (size_t i = 0; i < j->b->n; i++) {
        struct rhema_buf out;
        if (rhema_frame_compress(j->cs, j->ctxs, j->id, INT32_MIN, 1, j->b->msg[i], j->b->len[i],
                                 &out, err) != 0) {
            fprintf(stderr, "codec_bench: rhema_frame_compress: %s\n", err);
            return -1;
        }
        j->sink += out.len;
        free(out.data);
    }
    return 0;
}

static int pass_rhema_decompress(void *arg)
{
    struct job *j = arg;
    char err[RHEMA_FRAME_ERR_MAX];
    for (size_t i = 0; i < j->b->n; i++) {
        size_t n;
        /* into a reused buffer, as the raw side decodes into j->raw->dst */
        if (rhema_frame_decompress_into(j->cs, j->ctxs, j->frames[i].data, j->frames[i].len,
                                        j->raw->dst, j->raw->cap, &n, err) != 0) {
            fprintf(stderr, "codec_bench: rhema_frame_decompress_into: %s\n", err);
            return -1;
        }
        j->sink += ((unsigned char *)j->raw->dst)[0];
    }
    return 0;
}

static int pass_raw_compress(void *arg)
{
    struct job *j = arg;
    for (size_t i = 0; i < j->b->n; i++) {
        size_t n = raw_compress(j->raw, j->b->msg[i], j->b->len[i], j->raw->dst, j->raw->cap);
        if (n == 0)
            return -1;
        j->sink += n;
    }
    return 0;
}

static int pass_raw_decompress(void *arg)
{
    struct job *j = arg;
    for (size_t i = 0; i < j->b->n; i++) {
        if (raw_decompress(j->raw, j->payload[i], j->plen[i], j->raw->dst, j->b->len[i]) != 0)
            return -1;
        j->sink += j->raw->dst[0];
    }
    return 0;
}

/*
 * Make the frames and the raw payloads of a batch, check that both decode to
 * the messages, and return the summed sizes.  A payload size that differs
 * between the plugin and the raw call means the settings differ: noted.
 */
static int prepare(struct job *j, const char *name, size_t *frame_bytes, size_t *raw_bytes)
{
    char err[RHEMA_FRAME_ERR_MAX];
    const struct batch *b = j->b;
    size_t mismatch = 0;
    j->frames = calloc(b->n, sizeof *j->frames);
    j->payload = calloc(b->n, sizeof *j->payload);
    j->plen = calloc(b->n, sizeof *j->plen);
    *frame_bytes = *raw_bytes = 0;
    for (size_t i = 0; i < b->n; i++) {
        struct rhema_buf out;
        if (rhema_frame_compress(j->cs, j->ctxs, j->id, INT32_MIN, 1, b->msg[i], b->len[i],
                                 &j->frames[i], err) != 0) {
            fprintf(stderr, "codec_bench: %s: rhema_frame_compress: %s\n", name, err);
            return -1;
        }
        if (rhema_frame_decompress(j->cs, j->ctxs, j->frames[i].data, j->frames[i].len, &out,
                                   err) != 0 ||
            out.len != b->len[i] || memcmp(out.data, b->msg[i], out.len) != 0) {
            fprintf(stderr, "codec_bench: %s: frame does not round-trip\n", name);
            return -1;
        }
        free(out.data);
        size_t n = raw_compress(j->raw, b->msg[i], b->len[i], j->raw->dst, j->raw->cap);
        if (n == 0) {
            fprintf(stderr, "codec_bench: %s: raw compression failed\n", name);
            return -1;
        }
        j->payload[i] = malloc(n);
        memcpy(j->payload[i], j->raw->dst, n);
        j->plen[i] = n;
        if (raw_decompress(j->raw, j->payload[i], n, j->raw->dst, b->len[i]) != 0 ||
            memcmp(j->raw->dst, b->msg[i], b->len[i]) != 0) {
            fprintf(stderr, "codec_bench: %s: raw payload does not round-trip\n", name);
            return -1;
        }
        size_t hl = RHEMA_FRAME_HEADER + ((j->frames[i].data[4] & RHEMA_FRAME_DICT) ? 4 : 0);
        if (j->frames[i].len - hl != n)
            mismatch++;
        *frame_bytes += j->frames[i].len;
        *raw_bytes += n;
    }
    if (mismatch)
        printf("# note: %s: %zu of %zu plugin payloads differ in size from the raw call's "
               "(settings differ?)\n",
               name, mismatch, b->n);
    return 0;
}

static void unprepare(struct job *j)
{
    for (size_t i = 0; i < j->b->n; i++) {
        free(j->frames[i].data);
        free(j->payload[i]);
    }
    free(j->frames);
    free(j->payload);
    free(j->plen);
}

static int missed, targets;

static const char *verdict(double v, double target)
{
    targets++;
    if (v >= target)
        return "PASS";
    missed++;
    return "FAIL";
}

/* ------------------------------------------------------------------ */

static const struct {
    const char *name;
    int raw;
} codecs[] = {{"lz4", RAW_LZ4}, {"zstd", RAW_ZSTD}, {"gzip", RAW_GZIP}, {"snappy", RAW_SNAPPY}};

static const char *only_codec, *only_op = "";
static size_t only_size;

static int speed_section(const struct rhema_codecs *cs, struct rhema_codec_ctxs *ctxs)
{
    static const size_t sizes[] = {256, 4096};
    for (size_t s = 0; s < 2; s++) {
        struct batch b;
        size_t size = sizes[s];
        if (only_size && size != only_size)
            continue;
        batch_make(&b, (1u << 20) / size, size, 0x5eed0000u + size);
        for (size_t c = 0; c < sizeof codecs / sizeof codecs[0]; c++) {
            if (only_codec && strcmp(only_codec, codecs[c].name) != 0)
                continue;
            int id = rhema_codecs_id(cs, codecs[c].name);
            if (id < 0) {
                printf("# %s: plugin not loaded, skipped\n", codecs[c].name);
                continue;
            }
            struct raw raw;
            if (raw_init(&raw, codecs[c].raw, size) != 0)
                return -1;
            struct job j = {.b = &b, .cs = cs, .ctxs = ctxs, .id = id, .raw = &raw};
            size_t fb, rb;
            if (prepare(&j, codecs[c].name, &fb, &rb) != 0)
                return -1;
            double target = size >= 4096 ? 0.95 : 0.90;
            double ra, rr;
            if (strcmp(only_op, "decompress") == 0)
                goto decompress;
            if (pair(pass_rhema_compress, &j, pass_raw_compress, &j, b.bytes, &ra, &rr) != 0)
                return -1;
            printf("ROW codec %s %zu compress %.1f %.1f %.3f %.3f %.3f %.2f %s\n", codecs[c].name,
                   size, ra, rr, ra / rr, (double)b.bytes / (double)fb,
                   (double)b.bytes / (double)rb, target, verdict(ra / rr, target));
        decompress:
            if (strcmp(only_op, "compress") == 0)
                goto done;
            if (pair(pass_rhema_decompress, &j, pass_raw_decompress, &j, b.bytes, &ra, &rr) != 0)
                return -1;
            printf("ROW codec %s %zu decompress %.1f %.1f %.3f %.3f %.3f %.2f %s\n", codecs[c].name,
                   size, ra, rr, ra / rr, (double)b.bytes / (double)fb,
                   (double)b.bytes / (double)rb, target, verdict(ra / rr, target));
        done:
            fflush(stdout);
            unprepare(&j);
            raw_free(&raw);
        }
        batch_free(&b);
    }
    return 0;
}

/* zstd with a trained dictionary against zstd alone, messages < 1 KiB. */
static int dict_section(const struct rhema_codecs *cs, struct rhema_codec_ctxs *ctxs,
                        struct rhema_plugin_registry *reg, const char *plugin_dir,
                        const char *workdir)
{
    enum { DICT_BYTES = 16384, N_TRAIN = 4000, N_TEST = 2000 };
    int id = rhema_codecs_id(cs, "zstd");
    if (id < 0) {
        printf("# zstd: plugin not loaded, dictionary test skipped\n");
        return 0;
    }
    struct batch train, test;
    batch_make(&train, N_TRAIN, 0, 0xd1c70001u); /* disjoint: another seed */
    batch_make(&test, N_TEST, 0, 0x7e570002u);
    unsigned char *samples = malloc(train.bytes), *dict = malloc(DICT_BYTES);
    size_t *sizes = malloc(N_TRAIN * sizeof *sizes), off = 0;
    for (size_t i = 0; i < N_TRAIN; i++) {
        memcpy(samples + off, train.msg[i], train.len[i]);
        sizes[i] = train.len[i];
        off += train.len[i];
    }
    size_t dlen = ZDICT_trainFromBuffer(dict, DICT_BYTES, samples, sizes, N_TRAIN);
    free(samples);
    free(sizes);
    if (ZDICT_isError(dlen)) {
        fprintf(stderr, "codec_bench: ZDICT_trainFromBuffer: %s\n", ZDICT_getErrorName(dlen));
        return -1;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/bench.zdict", workdir);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(dict, 1, dlen, f) != dlen || fclose(f) != 0) {
        fprintf(stderr, "codec_bench: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    printf("# dictionary: %zu bytes (id %u) trained on %d messages (%zu bytes); test set %d "
           "messages of 200..1023 bytes (%zu bytes), disjoint\n",
           dlen, ZDICT_getDictID(dict, dlen), N_TRAIN, train.bytes, N_TEST, test.bytes);

    /* the plugin configured with the dictionary, as in production */
    char opt[4200], *err = NULL;
    snprintf(opt, sizeof opt, "advanced_features.compression.zstd.dictionary=%s", path);
    const char *ov[] = {opt};
    struct rhema_config cfg2;
    struct rhema_codecs cs2;
    struct rhema_codec_ctxs ctxs2 = {0};
    if (rhema_config_load(&cfg2, NULL, ov, 1, plugin_dir, &err) != 0 ||
        rhema_codecs_open(&cs2, reg, &cfg2, &err) != 0) {
        fprintf(stderr, "codec_bench: zstd with a dictionary: %s\n", err ? err : "?");
        return -1;
    }

    struct raw plain, withd;
    raw_init(&plain, RAW_ZSTD, 1024);
    raw_init(&withd, RAW_ZSTD, 1024);
    withd.cdict = ZSTD_createCDict(dict, dlen, 3);
    withd.ddict = ZSTD_createDDict(dict, dlen);
    struct job j0 = {.b = &test, .cs = cs, .ctxs = ctxs, .id = id, .raw = &plain};
    struct job j1 = {.b = &test, .cs = &cs2, .ctxs = &ctxs2, .id = id, .raw = &withd};
    size_t fb0, rb0, fb1, rb1;
    if (prepare(&j0, "zstd", &fb0, &rb0) != 0 || prepare(&j1, "zstd+dict", &fb1, &rb1) != 0)
        return -1;
    if (!(j1.frames[0].data[4] & RHEMA_FRAME_DICT)) {
        fprintf(stderr, "codec_bench: the zstd plugin did not use the dictionary\n");
        return -1;
    }
    double r0 = (double)test.bytes / (double)fb0, r1 = (double)test.bytes / (double)fb1;
    double ra, rr;
    if (pair(pass_rhema_compress, &j0, pass_raw_compress, &j0, test.bytes, &ra, &rr) != 0)
        return -1;
    printf("ROW dict zstd <1KiB compress %.1f %.1f %.3f %.3f %.3f - -\n", ra, rr, ra / rr, r0,
           (double)test.bytes / (double)rb0);
    if (pair(pass_rhema_compress, &j1, pass_raw_compress, &j1, test.bytes, &ra, &rr) != 0)
        return -1;
    printf("ROW dict zstd+dict <1KiB compress %.1f %.1f %.3f %.3f %.3f - -\n", ra, rr, ra / rr, r1,
           (double)test.bytes / (double)rb1);
    if (pair(pass_rhema_decompress, &j1, pass_raw_decompress, &j1, test.bytes, &ra, &rr) != 0)
        return -1;
    printf("ROW dict zstd+dict <1KiB decompress %.1f %.1f %.3f %.3f %.3f - -\n", ra, rr, ra / rr,
           r1, (double)test.bytes / (double)rb1);
    printf("RATIO dict %.3f %.3f %.3f %.3f 1.50 %s\n", r0, r1, r1 / r0,
           ((double)test.bytes / (double)rb1) / ((double)test.bytes / (double)rb0),
           verdict(r1 / r0, 1.5));
    unprepare(&j0);
    unprepare(&j1);
    raw_free(&plain);
    raw_free(&withd);
    rhema_codec_ctxs_release(&cs2, &ctxs2);
    rhema_codecs_close(&cs2);
    rhema_config_release(&cfg2);
    batch_free(&train);
    batch_free(&test);
    free(dict);
    unlink(path);
    return 0;
}

int main(int argc, char **argv)
{
    const char *plugin_dir = NULL, *workdir = NULL;
    int opt, only = 0; /* 1: speed only, 2: dictionary only */
    char tmpl[] = "/tmp/codec_bench.XXXXXX";
    while ((opt = getopt(argc, argv, "P:t:r:S:d:s:m:c:z:x:O:")) != -1) {
        switch (opt) {
        case 'S': slice_seconds = atof(optarg); break;
        case 'c': only_codec = optarg; break;
        case 'z': only_size = (size_t)atol(optarg); break;
        case 'x': only_side = atoi(optarg); break;
        case 'O': only_op = optarg; break;
        case 'm': { /* print a sample message of that size (0: 200..1023) and exit */
            struct batch b;
            batch_make(&b, 1, (size_t)atoi(optarg), (uint64_t)time(NULL));
            printf("%s\n", (char *)b.msg[0]);
            batch_free(&b);
            return 0;
        }
        case 'P': plugin_dir = optarg; break;
        case 't': cell_seconds = atof(optarg); break;
        case 'r': reps = atoi(optarg); break;
        case 'd': workdir = optarg; break;
        case 's': only = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: codec_bench -P plugin_dir [-t seconds] [-r reps] [-S slice] "
                            "[-d dir] [-s 1|2] [-c codec] [-z size] [-O op] [-x 1|2] | -m size\n");
            return 99;
        }
    }
    if (!plugin_dir)
        plugin_dir = getenv("RHEMA_PLUGIN_DIR");
    if (!plugin_dir) {
        fprintf(stderr, "codec_bench: -P plugin_dir (or RHEMA_PLUGIN_DIR) is required\n");
        return 99;
    }
    int own_dir = 0;
    if (!workdir) {
        if (!(workdir = mkdtemp(tmpl))) {
            perror("codec_bench: mkdtemp");
            return 99;
        }
        own_dir = 1;
    }

    struct rhema_config cfg;
    struct rhema_plugin_registry *reg;
    struct rhema_codecs cs;
    struct rhema_codec_ctxs ctxs = {0};
    char *err = NULL;
    if (rhema_config_load(&cfg, NULL, NULL, 0, plugin_dir, &err) != 0) {
        fprintf(stderr, "codec_bench: config: %s\n", err);
        return 99;
    }
    if (rhema_plugins_new(&reg) != 0)
        return 99;
    for (size_t c = 0; c < sizeof codecs / sizeof codecs[0]; c++) {
        const struct rhema_loaded_plugin *p;
        if (rhema_plugin_load(reg, codecs[c].name, plugin_dir, RHEMA_KIND_COMPRESS, &p, &err) !=
            0) {
            printf("# %s: %s\n", codecs[c].name, err);
            free(err);
            err = NULL;
        }
    }
    if (rhema_codecs_open(&cs, reg, &cfg, &err) != 0) {
        fprintf(stderr, "codec_bench: rhema_codecs_open: %s\n", err);
        return 99;
    }
    printf("# codec_bench: %d cells of >= %.2f s a side in alternating slices of >= %.3f s, "
           "best slice; MB/s = 10^6 uncompressed bytes/s\n",
           reps, cell_seconds, slice_seconds);
    printf("# libraries: lz4 %s, zstd %s, zlib %s\n", LZ4_versionString(), ZSTD_versionString(),
           zlibVersion());
    int rc = 0;
    if (only != 2 && speed_section(&cs, &ctxs) != 0)
        rc = 99;
    if (rc == 0 && only != 1 && dict_section(&cs, &ctxs, reg, plugin_dir, workdir) != 0)
        rc = 99;
    rhema_codec_ctxs_release(&cs, &ctxs);
    rhema_codecs_close(&cs);
    rhema_plugins_free(reg);
    rhema_config_release(&cfg);
    if (own_dir)
        rmdir(workdir);
    printf("# targets: %d, missed: %d\n", targets, missed);
    return rc ? rc : missed;
}
