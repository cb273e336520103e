/*
 * fuzz_audit -- audit log files as `rhemactl audit verify` reads them
 * (ctl/rhemactl_audit.c: cmd_verify and its line loop, which are static:
 * the file is compiled into this harness), and the verifier of
 * core/audit_chain.c it calls (rhema_audit_verify_line, _file_end,
 * rhema_audit_line_read).
 *
 * Input: byte 0 is the mode, the rest is one or more log files, oldest
 * first, separated by a line holding a single form feed ("\f"; at most
 * FILES_MAX files).  Every line carries a SHA-256 of itself and of the line
 * before, which a mutation breaks, so the mode re-seals the input first,
 * as an attacker who edits a log would:
 *   bit 0  recompute each line's own "hash" (the seq and prev checks, the
 *          file start and end rules are then fuzzed)
 *   bit 1  re-chain: seal each line's body again (rhema_audit_seal_text,
 *          a fresh chain across the files): a valid chain of mutated bodies
 * The harness runs the verifier on the lines itself, checking its
 * invariants (a refused line leaves the verifier as it was; an accepted one
 * follows the line before and reads back with rhema_audit_line_read), and
 * then cmd_verify on the same files: both must reach the same verdict.
 */
#include "rhemactl_audit.c"

#include <sodium.h>

#include "fuzz.h"

#define FILES_MAX 8
/* ,"hash":"<64 hex>"} */
#define TAIL_LEN (sizeof ",\"hash\":\"" - 1 + RHEMA_AUDIT_HASH_HEX + 2)

static char paths[FILES_MAX][320];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    const char *dir = fuzz_tmpdir();
    if (!dir || sodium_init() < 0)
        abort();
    for (int i = 0; i < FILES_MAX; i++)
        snprintf(paths[i], sizeof paths[i], "%s/audit.log.%d", dir, FILES_MAX - 1 - i);
    /* cmd_verify prints its verdict on stdout for every input */
    if (!freopen("/dev/null", "w", stdout))
        abort();
    return 0;
}

/* A growing buffer of bytes. */
struct out {
    char *p;
    size_t len, cap;
};

static void out_put(struct out *o, const char *p, size_t n)
{
    if (n == 0)
        return; /* an empty line: o->p may still be NULL */
    if (o->len + n > o->cap) {
        size_t cap = o->cap ? o->cap : 4096;
        while (cap < o->len + n)
            cap *= 2;
        char *np = realloc(o->p, cap);
        if (!np)
            abort();
        o->p = np;
        o->cap = cap;
    }
    memcpy(o->p + o->len, p, n);
    o->len += n;
}

/* Does line[0..n) end with a "hash" member of the right shape? */
static int has_tail(const char *line, size_t n)
{
    if (n < TAIL_LEN || memcmp(line + n - TAIL_LEN, ",\"hash\":\"", 9) != 0 ||
        memcmp(line + n - 2, "\"}", 2) != 0)
        return 0;
    for (size_t i = n - TAIL_LEN + 9; i < n - 2; i++)
        if (!((line[i] >= '0' && line[i] <= '9') || (line[i] >= 'a' && line[i] <= 'f')))
            return 0;
    return 1;
}

static const char *find_last(const char *p, size_t n, const char *what)
{
    size_t w = strlen(what);
    const char *last = NULL;
    for (size_t i = 0; i + w <= n; i++)
        if (memcmp(p + i, what, w) == 0)
            last = p + i;
    return last;
}

/*
 * Seal body[0..n) (a JSON object's text without its closing brace) onto o
 * with chain c.  When the body is an object with members of its own (no
 * seq, prev or hash), the sealed line reads back with its seq and hash.
 */
static void reseal(struct rhema_audit_chain *c, const char *body, size_t n, struct out *o)
{
    char *buf = NULL, why[RHEMA_ERRMSG_MAX], hash[RHEMA_AUDIT_HASH_HEX + 1];
    size_t len = 0, cap = 0;
    uint64_t seq = 0;
    if (rhema_audit_seal_text(c, body, n, &buf, &len, &cap) != 0)
        abort();
    fuzz_assert(len > 0 && buf[len - 1] == '\n' && c->seq > 0);
    fuzz_assert(has_tail(buf, len - 1) && memcmp(buf, body, n) == 0);
    char *obj = malloc(n + 1);
    if (!obj)
        abort();
    memcpy(obj, body, n);
    obj[n] = '}';
    json_error_t jerr;
    json_t *j = json_loadb(obj, n + 1, JSON_REJECT_DUPLICATES, &jerr);
    if (json_is_object(j) && json_object_size(j) > 0 && !json_object_get(j, "seq") &&
        !json_object_get(j, "prev") && !json_object_get(j, "hash")) {
        fuzz_assert(rhema_audit_line_read(buf, len - 1, &seq, hash, NULL, why) == 0);
        fuzz_assert(seq == c->seq && strcmp(hash, c->last) == 0);
    }
    json_decref(j);
    free(obj);
    out_put(o, buf, len - 1);
    free(buf);
}

/* Apply the mode to each line of text[0..n) (separators kept) into o. */
static void transform(const char *text, size_t n, int mode, struct out *o)
{
    struct rhema_audit_chain chain;
    rhema_audit_chain_init(&chain);
    size_t i = 0;
    while (i < n) {
        const char *line = text + i, *nl = memchr(line, '\n', n - i);
        size_t len = nl ? (size_t)(nl - line) : n - i;
        int sep = len == 1 && line[0] == '\f';
        if (!sep && (mode & 2)) {
            const char *at = find_last(line, len, ",\"seq\":");
            if (at)
                reseal(&chain, line, (size_t)(at - line), o);
            else if (len > 2 && line[len - 1] == '}')
                reseal(&chain, line, len - 1, o);
            else
                out_put(o, line, len);
        } else if (!sep && (mode & 1) && has_tail(line, len)) {
            char hash[RHEMA_AUDIT_HASH_HEX + 1];
            size_t start = o->len;
            out_put(o, line, len);
            rhema_audit_sha256_hex(line, len - TAIL_LEN, hash);
            memcpy(o->p + start + len - TAIL_LEN + 9, hash, RHEMA_AUDIT_HASH_HEX);
        } else {
            out_put(o, line, len);
        }
        if (nl)
            out_put(o, "\n", 1);
        i += len + (nl ? 1 : 0);
    }
}

/* One verify_line call and what must hold after it; 0 accepted. */
static int verify(struct rhema_audit_verifier *v, const char *line, size_t len, int complete,
                  int file_start)
{
    struct rhema_audit_verifier before = *v;
    char why[RHEMA_ERRMSG_MAX] = "", hash[RHEMA_AUDIT_HASH_HEX + 1],
         computed[RHEMA_AUDIT_HASH_HEX + 1];
    char event[RHEMA_ID_MAX + 1], why2[RHEMA_ERRMSG_MAX];
    uint64_t seq = 0;
    int cont = -1;
    int rc = rhema_audit_verify_line(v, line, len, complete, file_start, &cont, why);
    if (rc != 0) {
        fuzz_assert(rc == RHEMA_ECORRUPT && why[0] != '\0');
        fuzz_assert(memcmp(&before, v, sizeof before) == 0);
        return 1;
    }
    /* accepted: a whole line whose own hash holds and that follows the one before */
    fuzz_assert(complete && has_tail(line, len));
    fuzz_assert(rhema_audit_line_read(line, len, &seq, hash, event, why2) == 0);
    fuzz_assert(seq == v->chain.seq && strcmp(hash, v->chain.last) == 0);
    fuzz_assert(strcmp(event, v->last_event) == 0);
    rhema_audit_sha256_hex(line, len - TAIL_LEN, computed);
    fuzz_assert(strcmp(computed, hash) == 0);
    fuzz_assert(v->started && v->lines == before.lines + 1);
    if (before.started)
        fuzz_assert(seq == before.chain.seq + 1 && cont == -1);
    else
        fuzz_assert(cont == (seq > 1));
    if (file_start)
        fuzz_assert(strcmp(v->last_event, "audit.opened") == 0);
    return 0;
}

/* The verdict of `rhemactl audit verify` on the files, reached line by line: 0 intact, 1 broken. */
static int verify_files(const char *const *file, const size_t *file_len, int nfiles)
{
    struct rhema_audit_verifier v;
    char why[RHEMA_ERRMSG_MAX];
    rhema_audit_verifier_init(&v);
    for (int f = 0; f < nfiles; f++) {
        const char *p = file[f];
        size_t n = file_len[f], i = 0, no = 0;
        if (n == 0)
            return 1; /* an empty file: no "audit.opened" */
        while (i < n) {
            const char *nl = memchr(p + i, '\n', n - i);
            size_t len = nl ? (size_t)(nl - (p + i)) : n - i;
            if (verify(&v, p + i, len, nl != NULL, ++no == 1) != 0)
                return 1;
            i += len + (nl ? 1 : 0);
        }
        if (f < nfiles - 1 && rhema_audit_verify_file_end(&v, why) != 0) {
            fuzz_assert(strcmp(v.last_event, "audit.closed") != 0 && why[0] != '\0');
            return 1;
        }
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct out o = {0};
    const char *file[FILES_MAX];
    size_t file_len[FILES_MAX];
    char *argv[FILES_MAX];
    int nfiles = 0;
    if (size < 1 || size > 65536)
        return 0;
    transform((const char *)data + 1, size - 1, data[0], &o);
    /* split at the separator lines */
    size_t i = 0, start = 0;
    while (nfiles < FILES_MAX - 1 && i < o.len) {
        const char *nl = memchr(o.p + i, '\n', o.len - i);
        size_t len = nl ? (size_t)(nl - (o.p + i)) : o.len - i;
        if (len == 1 && o.p[i] == '\f') {
            file[nfiles] = o.p + start;
            file_len[nfiles++] = i - start;
            start = i + len + (nl ? 1 : 0);
        }
        i += len + (nl ? 1 : 0);
    }
    file[nfiles] = o.p ? o.p + start : "";
    file_len[nfiles++] = o.len - start;
    for (int f = 0; f < nfiles; f++) {
        if (fuzz_write_file(paths[f], file[f], file_len[f]) != 0)
            abort();
        argv[f] = paths[f];
    }
    int want = verify_files(file, file_len, nfiles);
    int status = cmd_verify(nfiles, argv);
    fuzz_assert(status == want);
    free(o.p);
    return 0;
}
