/*
 * audit_chain -- the line format of the audit log and its verifier (see audit_chain.h).
 */
#include "rhema_build.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <sodium.h>

#include "audit_chain.h"
#include "json_fields.h"

static const char HASH_KEY[] = ",\"hash\":\"";
#define HASH_KEY_LEN (sizeof HASH_KEY - 1)
/* ,"hash":"<64 hex>"} */
#define HASH_TAIL_LEN (HASH_KEY_LEN + RHEMA_AUDIT_HASH_HEX + 2)

void rhema_audit_chain_init(struct rhema_audit_chain *c)
{
    c->seq = 0;
    memset(c->last, '0', RHEMA_AUDIT_HASH_HEX);
    c->last[RHEMA_AUDIT_HASH_HEX] = '\0';
}

static void to_hex(const unsigned char *p, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * n] = '\0';
}

/*
 * SHA-256 through OpenSSL, not libsodium: libcrypto uses the CPU's SHA
 * extensions (or AVX2) where it has them, libsodium a portable C loop that
 * cost about 3,000 instructions a 64-byte block -- an audit record a request
 * was 25,000 instructions of hashing on the writer thread and 16,000 more of
 * HMAC on the worker (issue 9's all-on budget).  Each thread keeps its own
 * contexts (a pthread key frees them when the thread ends): a context is not
 * shared, and making one a call costs more than the hash of a short line.
 * The HMAC keeps the inner and outer states of the last key it saw, so a
 * call hashes the message and one block more, not the two blocks of the key.
 */
struct sha_tls {
    EVP_MD_CTX *work;
    EVP_MD_CTX *inner; /* SHA-256 after (key ^ ipad), for hmac_key */
    EVP_MD_CTX *outer; /* SHA-256 after (key ^ opad) */
    int keyed;
    unsigned char hmac_key[RHEMA_AUDIT_HMAC_KEY];
};

static pthread_once_t sha_once = PTHREAD_ONCE_INIT;
static pthread_key_t sha_key;
static EVP_MD *sha256_md;

static void sha_tls_free(void *p)
{
    struct sha_tls *t = p;
    if (!t)
        return;
    EVP_MD_CTX_free(t->work);
    EVP_MD_CTX_free(t->inner);
    EVP_MD_CTX_free(t->outer);
    sodium_memzero(t->hmac_key, sizeof t->hmac_key);
    free(t);
}

static void sha_init_once(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (pthread_key_create(&sha_key, sha_tls_free) != 0)
        abort();
}

static struct sha_tls *sha_tls(void)
{
    pthread_once(&sha_once, sha_init_once);
    struct sha_tls *t = pthread_getspecific(sha_key);
    if (t)
        return t;
    t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->work = EVP_MD_CTX_new();
    t->inner = EVP_MD_CTX_new();
    t->outer = EVP_MD_CTX_new();
    if (!sha256_md || !t->work || !t->inner || !t->outer ||
        pthread_setspecific(sha_key, t) != 0) {
        sha_tls_free(t);
        return NULL;
    }
    return t;
}

/* SHA-256 of p[0..n) into h: with OpenSSL, or libsodium when it fails (no memory). */
static void sha256(unsigned char h[32], const void *p, size_t n)
{
    struct sha_tls *t = sha_tls();
    if (t && EVP_DigestInit_ex2(t->work, sha256_md, NULL) == 1 &&
        EVP_DigestUpdate(t->work, p, n) == 1 && EVP_DigestFinal_ex(t->work, h, NULL) == 1)
        return;
    crypto_hash_sha256(h, p, n);
}

void rhema_audit_sha256_hex(const void *p, size_t n, char out[RHEMA_AUDIT_HASH_HEX + 1])
{
    unsigned char h[32];
    sha256(h, p, n);
    to_hex(h, sizeof h, out);
}

static int hmac_keyed(struct sha_tls *t, const unsigned char key[RHEMA_AUDIT_HMAC_KEY])
{
    if (t->keyed && sodium_memcmp(t->hmac_key, key, RHEMA_AUDIT_HMAC_KEY) == 0)
        return 1;
    unsigned char ipad[64], opad[64];
    memset(ipad, 0x36, sizeof ipad);
    memset(opad, 0x5c, sizeof opad);
    for (size_t i = 0; i < RHEMA_AUDIT_HMAC_KEY; i++) { /* a 32-byte key is used as is */
        ipad[i] ^= key[i];
        opad[i] ^= key[i];
    }
    int ok = EVP_DigestInit_ex2(t->inner, sha256_md, NULL) == 1 &&
             EVP_DigestUpdate(t->inner, ipad, sizeof ipad) == 1 &&
             EVP_DigestInit_ex2(t->outer, sha256_md, NULL) == 1 &&
             EVP_DigestUpdate(t->outer, opad, sizeof opad) == 1;
    sodium_memzero(ipad, sizeof ipad);
    sodium_memzero(opad, sizeof opad);
    t->keyed = ok;
    if (ok)
        memcpy(t->hmac_key, key, RHEMA_AUDIT_HMAC_KEY);
    return ok;
}

void rhema_audit_hmac(const unsigned char key[RHEMA_AUDIT_HMAC_KEY], const void *p, size_t n,
                      char out[RHEMA_AUDIT_HMAC_TEXT])
{
    unsigned char h[32];
    struct sha_tls *t = sha_tls();
    if (!(t && hmac_keyed(t, key) && EVP_MD_CTX_copy_ex(t->work, t->inner) == 1 &&
          EVP_DigestUpdate(t->work, p, n) == 1 && EVP_DigestFinal_ex(t->work, h, NULL) == 1 &&
          EVP_MD_CTX_copy_ex(t->work, t->outer) == 1 &&
          EVP_DigestUpdate(t->work, h, sizeof h) == 1 &&
          EVP_DigestFinal_ex(t->work, h, NULL) == 1)) {
        crypto_auth_hmacsha256_state st;
        crypto_auth_hmacsha256_init(&st, key, RHEMA_AUDIT_HMAC_KEY);
        crypto_auth_hmacsha256_update(&st, p, n);
        crypto_auth_hmacsha256_final(&st, h);
    }
    memcpy(out, "hmac-sha256:", 12);
    to_hex(h, sizeof h, out + 12);
}

int rhema_audit_seal_text(struct rhema_audit_chain *c, const char *body, size_t body_len,
                          char **buf, size_t *len, size_t *cap)
{
    char hash[RHEMA_AUDIT_HASH_HEX + 1], tail[64 + RHEMA_AUDIT_HASH_HEX];
    int tail_len = snprintf(tail, sizeof tail, ",\"seq\":%llu,\"prev\":\"%s\"",
                            (unsigned long long)(c->seq + 1), c->last);
    size_t need = *len + body_len + (size_t)tail_len + HASH_TAIL_LEN + 1;
    if (need > *cap) {
        size_t ncap = *cap ? *cap : 4096;
        while (ncap < need)
            ncap *= 2;
        char *nbuf = realloc(*buf, ncap);
        if (!nbuf)
            return RHEMA_ENOMEM;
        *buf = nbuf;
        *cap = ncap;
    }
    char *line = *buf + *len, *at = line;
    memcpy(at, body, body_len);
    at += body_len;
    memcpy(at, tail, (size_t)tail_len);
    at += tail_len;
    rhema_audit_sha256_hex(line, (size_t)(at - line), hash);
    memcpy(at, HASH_KEY, HASH_KEY_LEN);
    at += HASH_KEY_LEN;
    memcpy(at, hash, RHEMA_AUDIT_HASH_HEX);
    at += RHEMA_AUDIT_HASH_HEX;
    memcpy(at, "\"}\n", 3);
    *len = need;
    c->seq++;
    memcpy(c->last, hash, sizeof c->last);
    return 0;
}

char *rhema_audit_body_text(const json_t *obj, size_t *len)
{
    char *text = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
    size_t n = text ? strlen(text) : 0;
    if (n < 3 || text[n - 1] != '}') { /* NULL, or an empty object: no member to follow */
        free(text);
        return NULL;
    }
    text[--n] = '\0';
    *len = n;
    return text;
}

int rhema_audit_seal(struct rhema_audit_chain *c, const json_t *obj, char **buf, size_t *len,
                     size_t *cap)
{
    size_t n;
    char *text = rhema_audit_body_text(obj, &n);
    if (!text)
        return RHEMA_ENOMEM;
    int rc = rhema_audit_seal_text(c, text, n, buf, len, cap);
    free(text);
    return rc;
}

static int is_hex64(const char *s, size_t n)
{
    if (n != RHEMA_AUDIT_HASH_HEX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

/* Parse a line and check its own hash; *obj (new reference) on success. */
static int line_parse(const char *line, size_t len, json_t **obj,
                      char hash[RHEMA_AUDIT_HASH_HEX + 1], char why[RHEMA_ERRMSG_MAX])
{
    char computed[RHEMA_AUDIT_HASH_HEX + 1];
    json_error_t jerr;
    json_t *o, *v;
    *obj = NULL;
    if (len == 0)
        return rhema_set_errbuf(why, RHEMA_ECORRUPT, "an empty line");
    o = rhema_json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!o)
        return rhema_set_errbuf(why, RHEMA_ECORRUPT, "not JSON (%s, at column %d)", jerr.text,
                                jerr.column);
    if (!json_is_object(o)) {
        json_decref(o);
        return rhema_set_errbuf(why, RHEMA_ECORRUPT, "not a JSON object");
    }
    if (len < HASH_TAIL_LEN || memcmp(line + len - HASH_TAIL_LEN, HASH_KEY, HASH_KEY_LEN) != 0 ||
        memcmp(line + len - 2, "\"}", 2) != 0 ||
        !is_hex64(line + len - HASH_TAIL_LEN + HASH_KEY_LEN, RHEMA_AUDIT_HASH_HEX)) {
        json_decref(o);
        return rhema_set_errbuf(why, RHEMA_ECORRUPT,
                                "does not end with its \"hash\" member (64 hex digits)");
    }
    v = json_object_get(o, "seq");
    if (!json_is_integer(v) || json_integer_value(v) < 1) {
        json_decref(o);
        return rhema_set_errbuf(why, RHEMA_ECORRUPT, "no \"seq\" (a positive integer)");
    }
    v = json_object_get(o, "prev");
    if (!json_is_string(v) || !is_hex64(json_string_value(v), json_string_length(v))) {
        json_decref(o);
        return rhema_set_errbuf(why, RHEMA_ECORRUPT, "no \"prev\" (64 hex digits)");
    }
    rhema_audit_sha256_hex(line, len - HASH_TAIL_LEN, computed);
    memcpy(hash, line + len - HASH_TAIL_LEN + HASH_KEY_LEN, RHEMA_AUDIT_HASH_HEX);
    hash[RHEMA_AUDIT_HASH_HEX] = '\0';
    if (memcmp(computed, hash, RHEMA_AUDIT_HASH_HEX) != 0) {
        json_decref(o);
        return rhema_set_errbuf(why, RHEMA_ECORRUPT,
                                "its content does not match its hash: the line was edited");
    }
    *obj = o;
    return 0;
}

static void event_of(json_t *o, char *event)
{
    json_t *v = json_object_get(o, "event");
    snprintf(event, RHEMA_ID_MAX + 1, "%s", json_is_string(v) ? json_string_value(v) : "");
}

int rhema_audit_line_read(const char *line, size_t len, uint64_t *seq,
                          char hash[RHEMA_AUDIT_HASH_HEX + 1], char *event,
                          char why[RHEMA_ERRMSG_MAX])
{
    json_t *o;
    char h[RHEMA_AUDIT_HASH_HEX + 1];
    int rc = line_parse(line, len, &o, h, why);
    if (rc)
        return rc;
    *seq = (uint64_t)json_integer_value(json_object_get(o, "seq"));
    memcpy(hash, h, sizeof h);
    if (event)
        event_of(o, event);
    json_decref(o);
    return 0;
}

void rhema_audit_verifier_init(struct rhema_audit_verifier *v)
{
    memset(v, 0, sizeof *v);
    rhema_audit_chain_init(&v->chain);
}

int rhema_audit_verify_line(struct rhema_audit_verifier *v, const char *line, size_t len,
                            int complete, int file_start, int *continued,
                            char why[RHEMA_ERRMSG_MAX])
{
    char hash[RHEMA_AUDIT_HASH_HEX + 1], prev[RHEMA_AUDIT_HASH_HEX + 1], event[RHEMA_ID_MAX + 1];
    json_t *o;
    int rc;
    if (!complete)
        return rhema_set_errbuf(why, RHEMA_ECORRUPT,
                                "the file ends inside this line (no newline): it was cut");
    if ((rc = line_parse(line, len, &o, hash, why)) != 0)
        return rc;
    uint64_t seq = (uint64_t)json_integer_value(json_object_get(o, "seq"));
    snprintf(prev, sizeof prev, "%s", json_string_value(json_object_get(o, "prev")));
    event_of(o, event);
    json_decref(o);
    if (file_start && strcmp(event, "audit.opened") != 0)
        return rhema_set_errbuf(why, RHEMA_ECORRUPT,
                                "a file begins with an \"audit.opened\" record; this one begins "
                                "with seq %llu: lines were deleted from its start",
                                (unsigned long long)seq);
    if (!v->started) {
        if (seq == 1 && strspn(prev, "0") != RHEMA_AUDIT_HASH_HEX)
            return rhema_set_errbuf(why, RHEMA_ECORRUPT,
                                    "seq 1 must have a zero \"prev\": the chain was forged");
        if (continued)
            *continued = seq > 1;
    } else {
        if (seq != v->chain.seq + 1)
            return rhema_set_errbuf(why, RHEMA_ECORRUPT,
                                    "seq %llu after seq %llu: a line was deleted, inserted or "
                                    "moved",
                                    (unsigned long long)seq, (unsigned long long)v->chain.seq);
        if (strcmp(prev, v->chain.last) != 0)
            return rhema_set_errbuf(why, RHEMA_ECORRUPT,
                                    "its \"prev\" is not the hash of the line before: a line was "
                                    "deleted, inserted, moved or edited");
    }
    v->started = 1;
    v->lines++;
    v->chain.seq = seq;
    memcpy(v->chain.last, hash, sizeof hash);
    memcpy(v->last_event, event, sizeof event);
    return 0;
}

int rhema_audit_verify_file_end(const struct rhema_audit_verifier *v, char why[RHEMA_ERRMSG_MAX])
{
    if (strcmp(v->last_event, "audit.closed") != 0)
        return rhema_set_errbuf(why, RHEMA_ECORRUPT,
                                "another file follows, but this one does not end with its "
                                "\"audit.closed\" record: lines were cut from its end");
    return 0;
}

int rhema_audit_key_load(const char *path, int create, unsigned char key[RHEMA_AUDIT_HMAC_KEY],
                         char **err)
{
    char text[2 * RHEMA_AUDIT_HMAC_KEY + 2];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT && create) {
        unsigned char k[RHEMA_AUDIT_HMAC_KEY];
        randombytes_buf(k, sizeof k);
        to_hex(k, sizeof k, text);
        text[2 * RHEMA_AUDIT_HMAC_KEY] = '\n';
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0)
            return rhema_set_error(err, RHEMA_EIO, "cannot create the audit HMAC key %s: %s", path,
                                   strerror(errno));
        ssize_t w = write(fd, text, 2 * RHEMA_AUDIT_HMAC_KEY + 1);
        if (w != 2 * RHEMA_AUDIT_HMAC_KEY + 1 || fsync(fd) != 0) {
            int e = w < 0 ? errno : EIO;
            close(fd);
            unlink(path);
            sodium_memzero(k, sizeof k);
            return rhema_set_error(err, RHEMA_EIO, "cannot write the audit HMAC key %s: %s", path,
                                   strerror(e));
        }
        close(fd);
        memcpy(key, k, sizeof k);
        sodium_memzero(k, sizeof k);
        sodium_memzero(text, sizeof text);
        return 0;
    }
    if (fd < 0)
        return rhema_set_error(err, RHEMA_EIO, "cannot open the audit HMAC key %s: %s", path,
                               strerror(errno));
    ssize_t n = read(fd, text, sizeof text);
    close(fd);
    size_t hex_len = 2 * RHEMA_AUDIT_HMAC_KEY;
    if (n < (ssize_t)hex_len || (n > (ssize_t)hex_len && text[hex_len] != '\n') ||
        sodium_hex2bin(key, RHEMA_AUDIT_HMAC_KEY, text, hex_len, NULL, NULL, NULL) != 0) {
        sodium_memzero(text, sizeof text);
        return rhema_set_error(err, RHEMA_ECORRUPT,
                               "%s: an audit HMAC key is 64 hex digits and a newline", path);
    }
    sodium_memzero(text, sizeof text);
    return 0;
}
