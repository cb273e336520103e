/*
 * json_bench -- rhema_json_loadb() and rhema_json_dumps()
 * (core/json_fields.c) against jansson's json_loadb() and json_dumps() on
 * the same texts, in one run, one thread:
 *
 *     make bench/json_bench && ./bench/json_bench [ROUNDS]
 *
 * The texts: the 1 KiB session body of bench/put_session.lua (what every
 * PUT of the PUT benchmarks parses and writes back), a stored session
 * record, and a body of non-ASCII text with escapes (the slower paths of
 * both readers).  Each is read and written ROUNDS times (default 200000)
 * by each side, in ten blocks; the best block counts.  One line per text and direction, ns
 * per call and the ratio jansson / rhema; the exit status is the number
 * of targets missed: reading the session body >= 2x jansson, writing it
 * >= 1.5x (bench/README.md).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "json_fields.h"

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

enum { BLOCKS = 10 };

/* One call of what is timed: 0, or -1 when it failed. */
struct job {
    int ours, write;
    const char *text;
    size_t len;
    const json_t *value;
};

static int run_once(const struct job *j)
{
    if (j->write) {
        const size_t flags = JSON_COMPACT | JSON_PRESERVE_ORDER;
        char *t = j->ours ? rhema_json_dumps(j->value, flags) : json_dumps(j->value, flags);
        free(t);
        return t ? 0 : -1;
    }
    json_t *v = j->ours ? rhema_json_loadb(j->text, j->len, JSON_REJECT_DUPLICATES, NULL)
                        : json_loadb(j->text, j->len, JSON_REJECT_DUPLICATES, NULL);
    json_decref(v);
    return v ? 0 : -1;
}

/* Best ns per call over BLOCKS blocks of rounds/BLOCKS calls. */
static double timed(const struct job *j, long rounds)
{
    double best = 1e30;
    long per = rounds / BLOCKS > 0 ? rounds / BLOCKS : 1;
    for (int b = 0; b < BLOCKS; b++) {
        uint64_t t0 = now_ns();
        for (long i = 0; i < per; i++)
            if (run_once(j) != 0) {
                fprintf(stderr, "json_bench: a text does not read or write\n");
                exit(100);
            }
        double ns = (double)(now_ns() - t0) / (double)per;
        if (ns < best)
            best = ns;
    }
    return best;
}

/* put_session.lua's body: {"topic":"xxx...","participants":[...],"status":"Active"}, 1024 bytes */
static char *session_body(void)
{
    const char *head = "{\"topic\":\"";
    const char *tail = "\",\"participants\":[\"agent-1\",\"agent-2\",\"agent-3\"],\"status\":\"Active\"}";
    size_t pad = 1024 - strlen(head) - strlen(tail);
    char *b = malloc(1025);
    if (!b)
        exit(100);
    strcpy(b, head);
    memset(b + strlen(head), 'x', pad);
    strcpy(b + strlen(head) + pad, tail);
    return b;
}

int main(int argc, char **argv)
{
    long rounds = argc > 1 ? atol(argv[1]) : 200000L;
    int missed = 0;
    char *body = session_body();
    char record[2048];
    snprintf(record, sizeof record,
             "{\"id\":\"s-1\",%s,\"started_at\":\"2026-12-07T12:50:38.691Z\",\"ended_at\":null,"
             "\"messages\":[{\"from\":\"agent-1\",\"content\":\"go\",\"priority\":\"High\"}],"
             "\"decisions\":[],\"created_at\":\"2026-12-07T12:50:38.691Z\",\"updated_at\":"
             "\"2026-12-07T12:50:38.691Z\",\"size_bytes\":1300,\"version\":12,\"access_count\":3,"
             "\"last_accessed\":null}",
             "\"topic\":\"plan the release\",\"participants\":[\"agent-1\",\"agent-2\"],\"status\":\"Active\"");
    const char *escaped =
        "{\"topic\":\"caf\\u00e9 \\u2014 \\ud83d\\ude00 r\\u00e9sum\\u00e9 \\\"quoted\\\"\\n"
        "line two\\tend\",\"notes\":\"\xc3\xa9t\xc3\xa9 \xe2\x82\xac 100, \xe6\x97\xa5\xe6\x9c\xac"
        "\xe8\xaa\x9e \xf0\x9f\x98\x80\",\"n\":[1,-2,3.5,1e3,true,false,null],\"status\":\"Active\"}";
    struct {
        const char *name, *text;
        int target; /* 1: the PUT body, whose ratios are targets */
    } texts[] = {{"session body (1 KiB)", body, 1},
                 {"stored record", record, 0},
                 {"escapes and non-ASCII", escaped, 0}};
    printf("%-24s %-6s %12s %12s %8s\n", "text", "", "jansson ns", "rhema ns", "ratio");
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        size_t len = strlen(texts[i].text);
        json_t *v = json_loadb(texts[i].text, len, 0, NULL);
        json_t *w = rhema_json_loadb(texts[i].text, len, 0, NULL);
        char *b = w ? rhema_json_dumps(w, JSON_COMPACT) : NULL;
        json_t *back = b ? json_loads(b, 0, NULL) : NULL; /* reals in their shortest form: compare values */
        if (!v || !w || !json_equal(v, w) || !back || !json_equal(v, back)) {
            fprintf(stderr, "json_bench: '%s' reads or writes differently\n", texts[i].name);
            return 100;
        }
        free(b);
        json_decref(back);
        struct job j = {.text = texts[i].text, .len = len, .value = v};
        double jr = timed(&j, rounds);
        j.ours = 1;
        double rr = timed(&j, rounds);
        j.write = 1;
        double rw = timed(&j, rounds);
        j.ours = 0;
        double jw = timed(&j, rounds);
        printf("%-24s %-6s %12.0f %12.0f %7.2fx\n", texts[i].name, "read", jr, rr, jr / rr);
        printf("%-24s %-6s %12.0f %12.0f %7.2fx\n", texts[i].name, "write", jw, rw, jw / rw);
        if (texts[i].target) {
            if (jr / rr < 2.0) {
                printf("  target missed: reading the session body >= 2x jansson\n");
                missed++;
            }
            if (jw / rw < 1.5) {
                printf("  target missed: writing the session body >= 1.5x jansson\n");
                missed++;
            }
        }
        json_decref(v);
        json_decref(w);
    }
    free(body);
    printf("targets missed: %d\n", missed);
    return missed;
}
