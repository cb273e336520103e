/*
 * audit_chain -- the line format of the audit log and its verifier.
 *
 * Each line of an audit log is one JSON object whose members end with
 *
 *     ..., "seq": N, "prev": "<hex>", "hash": "<hex>"}
 *
 * `hash` is the SHA-256 (lowercase hex) of the line's bytes up to, not
 * including, `,"hash":`.  `prev` is the hash of the line before, in the same
 * file or, for the first line of a file, the last line of the file before it
 * (the chain continues across logrotate); the very first line of a log has
 * seq 1 and a prev of 64 zeros.  `seq` counts lines, without a gap, across
 * files.  Editing a line breaks its own hash; deleting, inserting or
 * reordering lines breaks a `prev` and a `seq`; cutting a file inside a line
 * leaves a line without its newline.
 *
 * The daemon's side (core/audit.c) seals lines with rhema_audit_seal(); the
 * verifier (rhemactl audit verify, the unit tests) feeds lines, in order,
 * to rhema_audit_verify_line().  Neither keeps a thread or a file of its own.
 */
#ifndef RHEMA_CORE_AUDIT_CHAIN_H
#define RHEMA_CORE_AUDIT_CHAIN_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include <rhema/plugin.h> /* RHEMA_E* */

#include "util.h"

#define RHEMA_AUDIT_HASH_HEX 64

/* Where a chain stands: the seq and hash of its last line. */
struct rhema_audit_chain {
    uint64_t seq;                        /* 0: no line yet */
    char last[RHEMA_AUDIT_HASH_HEX + 1]; /* the hash of line `seq`; zeros when seq is 0 */
};

/* A chain before its first line: seq 0, the zero hash. */
void rhema_audit_chain_init(struct rhema_audit_chain *c);

/* SHA-256 of p[0..n) in lowercase hex. */
void rhema_audit_sha256_hex(const void *p, size_t n, char out[RHEMA_AUDIT_HASH_HEX + 1]);

/*
 * Seal one record: `body` is a JSON object's text without its closing
 * brace, with at least one member ("{\"time\":...").  Appends to *buf
 * (realloc'd; *len and *cap track it) the line: body, "seq" and "prev"
 * from the chain, "hash", "}" and a newline; advances the chain.  0, or
 * RHEMA_ENOMEM with the chain and *buf unchanged.
 */
int rhema_audit_seal_text(struct rhema_audit_chain *c, const char *body, size_t body_len,
                          char **buf, size_t *len, size_t *cap);
/* The same for an object (compact, in insertion order); obj is not changed. */
int rhema_audit_seal(struct rhema_audit_chain *c, const json_t *obj, char **buf, size_t *len,
                     size_t *cap);
/* obj's compact text without its closing brace (malloc'd), *len; NULL for {} or no memory. */
char *rhema_audit_body_text(const json_t *obj, size_t *len);

/*
 * Check one line's own hash and read its seq and hash (and, when `event` is
 * not NULL, its "event" member or "" -- a pointer into a buffer of
 * RHEMA_ID_MAX + 1).  `line` without its newline.  0, or RHEMA_ECORRUPT and
 * why.  The daemon uses it to resume the chain of a file it appends to.
 */
int rhema_audit_line_read(const char *line, size_t len, uint64_t *seq,
                          char hash[RHEMA_AUDIT_HASH_HEX + 1], char *event,
                          char why[RHEMA_ERRMSG_MAX]);

/* The verifier's state across lines and files. */
struct rhema_audit_verifier {
    struct rhema_audit_chain chain;
    uint64_t lines;                    /* lines accepted, every file */
    int started;                       /* a line was accepted */
    char last_event[RHEMA_ID_MAX + 1]; /* the event of the last line accepted, or "" */
};

void rhema_audit_verifier_init(struct rhema_audit_verifier *v);

/*
 * Verify the next line.  `line` is what the file holds from the line's start
 * to its newline, excluded; `complete` is 0 when the file ended before a
 * newline (a cut line).  `file_start` is 1 for the first line of each file.
 * The first line the verifier sees may continue a chain from a file not
 * given (seq > 1): it is taken on trust as the start, and *continued is set
 * to 1; otherwise every line must follow the one before.  0, or
 * RHEMA_ECORRUPT with why (the line is not accepted).
 */
int rhema_audit_verify_line(struct rhema_audit_verifier *v, const char *line, size_t len,
                            int complete, int file_start, int *continued,
                            char why[RHEMA_ERRMSG_MAX]);

/*
 * The end of a file that another file follows: it must end with the record
 * the daemon writes when it lets a file go ("audit.closed"), or lines were
 * cut from its end.  0, or RHEMA_ECORRUPT and why.
 */
int rhema_audit_verify_file_end(const struct rhema_audit_verifier *v, char why[RHEMA_ERRMSG_MAX]);

/* HMAC-SHA-256 of p[0..n) under a 32-byte key: "hmac-sha256:<hex>". */
#define RHEMA_AUDIT_HMAC_KEY 32
#define RHEMA_AUDIT_HMAC_TEXT (12 + RHEMA_AUDIT_HASH_HEX + 1)
void rhema_audit_hmac(const unsigned char key[RHEMA_AUDIT_HMAC_KEY], const void *p, size_t n,
                      char out[RHEMA_AUDIT_HMAC_TEXT]);

/*
 * Read a per-log HMAC key file (64 hex digits and a newline), or create it
 * (mode 0600, from the CSPRNG) when `create` and it does not exist.
 * 0, or a negative code and *err (malloc'd).
 */
int rhema_audit_key_load(const char *path, int create, unsigned char key[RHEMA_AUDIT_HMAC_KEY],
                         char **err);

#endif /* RHEMA_CORE_AUDIT_CHAIN_H */
