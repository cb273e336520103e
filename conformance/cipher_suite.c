/*
 * cipher_suite -- the cipher plugin conformance suite (see cipher_suite.h).
 *
 * Every check is a function returning T_PASS, T_FAIL or T_SKIP and writing
 * a one-line reason into s->detail.  Buffers a check allocates go on the
 * suite's list and are freed when the check ends, so a CHECK macro may
 * return from anywhere.  Output buffers are filled with a known byte and
 * followed by CANARY guard bytes of the same value, so a write past the
 * length the contract allows, or a write that never happened, shows.
 *
 * Known-answer checks do not trust the plugin's own round trips: they
 * compare with published vectors and with direct libsodium calls.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "cipher_suite.h"

#define T_PASS RHEMA_CONF_PASS
#define T_FAIL RHEMA_CONF_FAIL
#define T_SKIP RHEMA_CONF_SKIP

#define CANARY 64    /* guard bytes after every output buffer */
#define CT_FILL 0xC5 /* what a ciphertext buffer holds before encrypt */
#define PT_FILL 0x5C /* what a plaintext buffer holds before decrypt */
#define MAX_KEY 64   /* the loader's limits on the header's sizes */
#define MAX_NONCE 32
#define MAX_TAG 32
#define SHORT_PT 37 /* the message of the tampering checks */
#define SHORT_AD 11
#define THREADS 4
#define THREAD_MSGS 64  /* distinct messages per thread */
#define THREAD_ROUNDS 8 /* passes over them */
#define THREAD_MSG_MAX 3000

struct suite {
    const struct rhema_cipher_plugin *vt;
    rhema_conf_report_fn report;
    void *report_ctx;
    struct rhema_conf_totals t;
    char detail[1024];
    int sodium_ok; /* sodium_init() succeeded: the cross-check can run */
    unsigned char key[MAX_KEY], nonce[MAX_NONCE];
    void **allocs; /* freed at the end of each check */
    size_t n_allocs, cap_allocs;
};

/* ---- reporting and memory helpers ---- */

static int failf(struct suite *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int failf(struct suite *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->detail, sizeof s->detail, fmt, ap);
    va_end(ap);
    return T_FAIL;
}

#define CHECK(COND, ...)                                                                           \
    do {                                                                                           \
        if (!(COND)) {                                                                             \
            char m_[768];                                                                          \
            snprintf(m_, sizeof m_, __VA_ARGS__);                                                  \
            return failf(s, "line %d: %s", __LINE__, m_);                                          \
        }                                                                                          \
    } while (0)

/* CALL must return WANT. */
#define CHECK_RC(WANT, CALL)                                                                       \
    do {                                                                                           \
        int rc_ = (CALL);                                                                          \
        if (rc_ != (WANT))                                                                         \
            return failf(s, "line %d: %s returned %s (%d), want %s", __LINE__, #CALL,              \
                         rhema_strerror(rc_), rc_, rhema_strerror(WANT));                          \
    } while (0)

/* A buffer freed when the current check ends; NULL when out of memory. */
static void *s_alloc(struct suite *s, size_t n)
{
    void *p;
    if (s->n_allocs == s->cap_allocs) {
        size_t cap = s->cap_allocs ? s->cap_allocs * 2 : 32;
        void **nv = realloc(s->allocs, cap * sizeof *nv);
        if (nv == NULL)
            return NULL;
        s->allocs = nv;
        s->cap_allocs = cap;
    }
    p = malloc(n ? n : 1);
    if (p != NULL)
        s->allocs[s->n_allocs++] = p;
    return p;
}

static void s_free_all(struct suite *s)
{
    while (s->n_allocs > 0)
        free(s->allocs[--s->n_allocs]);
}

/* An output buffer of n bytes plus CANARY guard bytes, all set to fill. */
static unsigned char *outbuf(struct suite *s, size_t n, int fill)
{
    unsigned char *p = s_alloc(s, n + CANARY);
    if (p != NULL)
        memset(p, fill, n + CANARY);
    return p;
}

/* 1 when all n bytes of p still hold fill. */
static int untouched(const unsigned char *p, size_t n, int fill)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (p[i] != (unsigned char)fill)
            return 0;
    return 1;
}

/* How many of the n bytes of a and b are equal at the same offset. */
static size_t same_bytes(const unsigned char *a, const unsigned char *b, size_t n)
{
    size_t i, k = 0;
    for (i = 0; i < n; i++)
        k += a[i] == b[i];
    return k;
}

/* How many of the n bytes of p equal c. */
static size_t count_byte(const unsigned char *p, size_t n, int c)
{
    size_t i, k = 0;
    for (i = 0; i < n; i++)
        k += p[i] == (unsigned char)c;
    return k;
}

/* Deterministic random-looking bytes (splitmix64) for the given seed. */
static void pattern(unsigned char *p, size_t n, uint64_t seed)
{
    uint64_t x = seed * UINT64_C(0x9E3779B97F4A7C15) + 1;
    size_t i;
    for (i = 0; i < n; i++) {
        uint64_t z;
        if (i % 8 == 0) {
            x += UINT64_C(0x9E3779B97F4A7C15);
            z = x;
            z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
            z ^= z >> 31;
            seed = z;
        }
        p[i] = (unsigned char)(seed >> (8 * (i % 8)));
    }
}

/* Decode hex into out (size cap); returns the length or (size_t)-1. */
static size_t unhex(const char *hex, unsigned char *out, size_t cap)
{
    size_t n = strlen(hex) / 2, i;
    if (strlen(hex) % 2 != 0 || n > cap)
        return (size_t)-1;
    for (i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1)
            return (size_t)-1;
        out[i] = (unsigned char)v;
    }
    return n;
}

/*
 * Decrypting (ct, ct_len) under (key, nonce, ad) must fail with
 * RHEMA_ECORRUPT, write nothing past ct_len - tag_bytes bytes of output
 * (nothing at all when ct_len < tag_bytes), and release no plaintext: at
 * most half of the bytes it may have written equal the real plaintext `ref`
 * (unrelated bytes match one time in 256; an unauthenticated decryption of
 * a flipped bit matches all but one).  `what` names the case in the detail.
 */
static int expect_rejected(struct suite *s, const char *what, const unsigned char *key,
                           const unsigned char *nonce, const void *ad, size_t ad_len,
                           const unsigned char *ct, size_t ct_len, const unsigned char *ref,
                           size_t ref_len)
{
    size_t tag = s->vt->tag_bytes;
    size_t out_len = ct_len >= tag ? ct_len - tag : 0;
    size_t cap = out_len > ref_len ? out_len : ref_len, n;
    unsigned char *out = malloc(cap + CANARY);
    int rc, res = T_PASS;

    if (out == NULL)
        return failf(s, "%s: out of memory", what);
    memset(out, PT_FILL, cap + CANARY);
    rc = s->vt->decrypt(key, nonce, ad, ad_len, ct, ct_len, out);
    n = out_len < ref_len ? out_len : ref_len;
    if (rc != RHEMA_ECORRUPT)
        res = failf(s, "%s: decrypt returned %s (%d), want ECORRUPT", what, rhema_strerror(rc), rc);
    else if (!untouched(out + out_len, cap - out_len + CANARY, PT_FILL))
        res =
            failf(s, "%s: the failed decrypt wrote past the %zu bytes it may write", what, out_len);
    else if (n >= 4 && same_bytes(out, ref, n) > n / 2)
        res = failf(s, "%s: the failed decrypt left %zu of %zu plaintext bytes in the output", what,
                    same_bytes(out, ref, n), n);
    free(out);
    return res;
}

/* Encrypt the short message of the tampering checks into a new buffer. */
static int short_message(struct suite *s, unsigned char *pt, unsigned char *ad, unsigned char **ct)
{
    const struct rhema_cipher_plugin *vt = s->vt;
    pattern(pt, SHORT_PT, 1001);
    pattern(ad, SHORT_AD, 1002);
    *ct = outbuf(s, SHORT_PT + vt->tag_bytes, CT_FILL);
    CHECK(*ct != NULL, "out of memory");
    CHECK_RC(0, vt->encrypt(s->key, s->nonce, ad, SHORT_AD, pt, SHORT_PT, *ct));
    return T_PASS;
}

/* ---- the header ---- */

static int check_header(struct suite *s, const void *arg)
{
    const struct rhema_cipher_plugin *vt = s->vt;
    const struct rhema_plugin *b = &vt->base;
    (void)arg;
    CHECK(b->kind == RHEMA_KIND_CIPHER, "kind %u, want %u (cipher)", b->kind, RHEMA_KIND_CIPHER);
    CHECK(b->abi_major == RHEMA_ABI_MAJOR, "abi_major %u, want %u", b->abi_major, RHEMA_ABI_MAJOR);
    CHECK(b->abi_minor <= RHEMA_CIPHER_ABI_MINOR, "abi_minor %u is newer than %u", b->abi_minor,
          RHEMA_CIPHER_ABI_MINOR);
    CHECK(b->name != NULL && b->name[0] != '\0', "no name");
    CHECK(vt->cipher_id >= 1 && vt->cipher_id <= 255, "cipher_id %u is not in 1..255",
          vt->cipher_id);
    CHECK(vt->key_bytes >= 16 && vt->key_bytes <= MAX_KEY, "key_bytes %u is not in 16..%d",
          vt->key_bytes, MAX_KEY);
    CHECK(vt->nonce_bytes >= 8 && vt->nonce_bytes <= MAX_NONCE, "nonce_bytes %u is not in 8..%d",
          vt->nonce_bytes, MAX_NONCE);
    CHECK(vt->tag_bytes >= 12 && vt->tag_bytes <= MAX_TAG, "tag_bytes %u is not in 12..%d",
          vt->tag_bytes, MAX_TAG);
    CHECK(vt->random_nonce_ok == 0 || vt->random_nonce_ok == 1, "random_nonce_ok is %u",
          vt->random_nonce_ok);
    CHECK(vt->available != NULL && vt->encrypt != NULL && vt->decrypt != NULL, "a method is NULL");
    return T_PASS;
}

/*
 * The wire ids rhema defines name one algorithm each: their sizes are
 * fixed, and the message limit must respect what is known of it.  Ids
 * 4..127 are reserved for rhema's own ciphers (a new one belongs here).
 */
static int check_wire_id(struct suite *s, const void *arg)
{
    const struct rhema_cipher_plugin *vt = s->vt;
    unsigned want_nonce = 12, want_random = 0;
    (void)arg;
    if (vt->cipher_id >= 128) {
        snprintf(s->detail, sizeof s->detail, "third-party wire id %u: no fixed parameters",
                 vt->cipher_id);
        return T_SKIP;
    }
    CHECK(vt->cipher_id <= RHEMA_CIPHER_XCHACHA20POLY1305,
          "wire id %u is reserved for rhema's own ciphers (third parties use 128..255)",
          vt->cipher_id);
    if (vt->cipher_id == RHEMA_CIPHER_XCHACHA20POLY1305) {
        want_nonce = 24;
        want_random = 1;
    }
    CHECK(vt->key_bytes == 32 && vt->nonce_bytes == want_nonce && vt->tag_bytes == 16,
          "wire id %u: key %u, nonce %u, tag %u bytes; want 32, %u, 16", vt->cipher_id,
          vt->key_bytes, vt->nonce_bytes, vt->tag_bytes, want_nonce);
    /* a 96-bit nonce drawn at random collides too soon: counters only */
    CHECK(want_random || vt->random_nonce_ok == 0,
          "wire id %u has a 96-bit nonce but claims random_nonce_ok", vt->cipher_id);
    if (vt->cipher_id == RHEMA_CIPHER_AES256GCM)
        CHECK(vt->max_messages_per_key >= 1 && vt->max_messages_per_key <= (UINT64_C(1) << 32),
              "AES-GCM max_messages_per_key %llu is not in 1..2^32 (SP 800-38D, the AES "
              "birthday bound)",
              (unsigned long long)vt->max_messages_per_key);
    return T_PASS;
}

/* Random nonces: a collision must stay below 2^-32 up to the message limit. */
static int check_random_nonce_margin(struct suite *s, const void *arg)
{
    const struct rhema_cipher_plugin *vt = s->vt;
    uint64_t q = vt->max_messages_per_key;
    int log2q = 64; /* "no limit": count 2^64 messages */
    long margin;
    (void)arg;
    if (!vt->random_nonce_ok) {
        snprintf(s->detail, sizeof s->detail, "counter nonces (random_nonce_ok = 0)");
        return T_SKIP;
    }
    if (q != 0)
        for (log2q = 0; log2q < 64 && (UINT64_C(1) << log2q) < q; log2q++)
            ;
    /* P(collision) ~ q^2 / 2^(8 * nonce_bytes + 1) */
    margin = 8L * vt->nonce_bytes + 1 - 2L * log2q;
    CHECK(margin >= 32,
          "random %u-byte nonces for up to 2^%d messages collide with probability 2^-%ld "
          "(want at most 2^-32): lower max_messages_per_key or use counters",
          vt->nonce_bytes, log2q, margin);
    return T_PASS;
}

/* ---- round trips ---- */

struct rt_case {
    size_t len;
    int with_ad;
};

/*
 * Encrypt and decrypt `len` bytes, with or without associated data.  The
 * ciphertext is exactly len + tag_bytes long, is written in full and does
 * not resemble the plaintext; an empty AD may be passed as NULL (encrypt)
 * or as a non-NULL pointer with length 0 (decrypt).
 */
static int check_round_trip(struct suite *s, const void *arg)
{
    const struct rt_case *c = arg;
    const struct rhema_cipher_plugin *vt = s->vt;
    size_t len = c->len, tag = vt->tag_bytes;
    unsigned char ad[29];
    const void *enc_ad = c->with_ad ? ad : NULL;
    size_t ad_len = c->with_ad ? sizeof ad : 0;
    unsigned char *pt = s_alloc(s, len), *ct = outbuf(s, len + tag, CT_FILL),
                  *out = outbuf(s, len, PT_FILL);

    CHECK(pt != NULL && ct != NULL && out != NULL, "out of memory");
    pattern(pt, len, len * 2 + (size_t)c->with_ad);
    pattern(ad, sizeof ad, 77);
    CHECK_RC(0, vt->encrypt(s->key, s->nonce, enc_ad, ad_len, len ? pt : NULL, len, ct));
    CHECK(untouched(ct + len + tag, CANARY, CT_FILL),
          "encrypt wrote past pt_len + tag_bytes = %zu bytes", len + tag);
    CHECK(!untouched(ct + len, tag, CT_FILL), "encrypt left the %zu bytes of the tag unwritten",
          tag);
    if (len >= 8) {
        CHECK(same_bytes(ct, pt, len) <= len / 32 + 2,
              "%zu of %zu ciphertext bytes equal the plaintext at the same offset",
              same_bytes(ct, pt, len), len);
        CHECK(count_byte(ct, len, CT_FILL) <= len / 32 + 2,
              "%zu of %zu ciphertext bytes were left unwritten", count_byte(ct, len, CT_FILL), len);
    }
    CHECK_RC(0, vt->decrypt(s->key, s->nonce, ad, ad_len, ct, len + tag, out));
    CHECK(memcmp(out, pt, len) == 0, "the decrypted %zu bytes differ from the plaintext", len);
    CHECK(untouched(out + len, CANARY, PT_FILL), "decrypt wrote past pt_len = %zu bytes", len);
    return T_PASS;
}

/* ---- tampering ---- */

/* Every single-bit change of the ciphertext (and tag) is rejected. */
static int check_tamper_ciphertext(struct suite *s, const void *arg)
{
    unsigned char pt[SHORT_PT], ad[SHORT_AD], *ct, *bad;
    size_t ct_len = SHORT_PT + s->vt->tag_bytes, bit;
    char what[64];
    int rc;
    (void)arg;
    if ((rc = short_message(s, pt, ad, &ct)) != T_PASS)
        return rc;
    bad = s_alloc(s, ct_len);
    CHECK(bad != NULL, "out of memory");
    for (bit = 0; bit < 8 * ct_len; bit++) {
        memcpy(bad, ct, ct_len);
        bad[bit / 8] ^= (unsigned char)(1u << (bit % 8));
        snprintf(what, sizeof what, "bit %zu of %zu flipped", bit, 8 * ct_len);
        if ((rc = expect_rejected(s, what, s->key, s->nonce, ad, SHORT_AD, bad, ct_len, pt,
                                  SHORT_PT)) != T_PASS)
            return rc;
    }
    return T_PASS;
}

/* Every single-bit change of the associated data is rejected. */
static int check_tamper_ad(struct suite *s, const void *arg)
{
    unsigned char pt[SHORT_PT], ad[SHORT_AD], bad[SHORT_AD], *ct;
    size_t ct_len = SHORT_PT + s->vt->tag_bytes, bit;
    char what[64];
    int rc;
    (void)arg;
    if ((rc = short_message(s, pt, ad, &ct)) != T_PASS)
        return rc;
    for (bit = 0; bit < 8 * SHORT_AD; bit++) {
        memcpy(bad, ad, SHORT_AD);
        bad[bit / 8] ^= (unsigned char)(1u << (bit % 8));
        snprintf(what, sizeof what, "AD bit %zu flipped", bit);
        if ((rc = expect_rejected(s, what, s->key, s->nonce, bad, SHORT_AD, ct, ct_len, pt,
                                  SHORT_PT)) != T_PASS)
            return rc;
    }
    return T_PASS;
}

/*
 * Every truncation is rejected: below tag_bytes without writing anything,
 * above it without writing past what is left; so is one extra byte.
 */
static int check_truncated(struct suite *s, const void *arg)
{
    unsigned char pt[SHORT_PT], ad[SHORT_AD], *ct, *longer;
    size_t ct_len = SHORT_PT + s->vt->tag_bytes, n;
    char what[64];
    int rc;
    (void)arg;
    if ((rc = short_message(s, pt, ad, &ct)) != T_PASS)
        return rc;
    for (n = 0; n < ct_len; n++) {
        snprintf(what, sizeof what, "truncated to %zu of %zu bytes", n, ct_len);
        if ((rc = expect_rejected(s, what, s->key, s->nonce, ad, SHORT_AD, ct, n, pt, SHORT_PT)) !=
            T_PASS)
            return rc;
    }
    longer = s_alloc(s, ct_len + 1);
    CHECK(longer != NULL, "out of memory");
    memcpy(longer, ct, ct_len);
    longer[ct_len] = 0;
    return expect_rejected(s, "one byte appended", s->key, s->nonce, ad, SHORT_AD, longer,
                           ct_len + 1, pt, SHORT_PT);
}

/* A key that differs in any one byte is rejected. */
static int check_wrong_key(struct suite *s, const void *arg)
{
    unsigned char pt[SHORT_PT], ad[SHORT_AD], *ct, key[MAX_KEY];
    size_t ct_len = SHORT_PT + s->vt->tag_bytes, i;
    char what[64];
    int rc;
    (void)arg;
    if ((rc = short_message(s, pt, ad, &ct)) != T_PASS)
        return rc;
    for (i = 0; i < s->vt->key_bytes; i++) {
        memcpy(key, s->key, sizeof key);
        key[i] ^= 0x01;
        snprintf(what, sizeof what, "key byte %zu changed", i);
        if ((rc = expect_rejected(s, what, key, s->nonce, ad, SHORT_AD, ct, ct_len, pt,
                                  SHORT_PT)) != T_PASS)
            return rc;
    }
    pattern(key, sizeof key, 4242);
    return expect_rejected(s, "an unrelated key", key, s->nonce, ad, SHORT_AD, ct, ct_len, pt,
                           SHORT_PT);
}

/* A nonce that differs in any one byte is rejected. */
static int check_wrong_nonce(struct suite *s, const void *arg)
{
    unsigned char pt[SHORT_PT], ad[SHORT_AD], *ct, nonce[MAX_NONCE];
    size_t ct_len = SHORT_PT + s->vt->tag_bytes, i;
    char what[64];
    int rc;
    (void)arg;
    if ((rc = short_message(s, pt, ad, &ct)) != T_PASS)
        return rc;
    for (i = 0; i < s->vt->nonce_bytes; i++) {
        memcpy(nonce, s->nonce, sizeof nonce);
        nonce[i] ^= 0x80;
        snprintf(what, sizeof what, "nonce byte %zu changed", i);
        if ((rc = expect_rejected(s, what, s->key, nonce, ad, SHORT_AD, ct, ct_len, pt,
                                  SHORT_PT)) != T_PASS)
            return rc;
    }
    return T_PASS;
}

/* Wrong, missing, extra, shorter and longer associated data are rejected. */
static int check_wrong_ad(struct suite *s, const void *arg)
{
    const struct rhema_cipher_plugin *vt = s->vt;
    unsigned char pt[SHORT_PT], ad[SHORT_AD], other[SHORT_AD + 1], *ct, *ct_noad;
    size_t ct_len = SHORT_PT + vt->tag_bytes;
    int rc;
    (void)arg;
    if ((rc = short_message(s, pt, ad, &ct)) != T_PASS)
        return rc;
    pattern(other, sizeof other, 9999);
    if ((rc = expect_rejected(s, "other AD of the same length", s->key, s->nonce, other, SHORT_AD,
                              ct, ct_len, pt, SHORT_PT)) != T_PASS)
        return rc;
    if ((rc = expect_rejected(s, "AD missing (NULL)", s->key, s->nonce, NULL, 0, ct, ct_len, pt,
                              SHORT_PT)) != T_PASS)
        return rc;
    if ((rc = expect_rejected(s, "AD missing (empty)", s->key, s->nonce, ad, 0, ct, ct_len, pt,
                              SHORT_PT)) != T_PASS)
        return rc;
    if ((rc = expect_rejected(s, "AD one byte shorter", s->key, s->nonce, ad, SHORT_AD - 1, ct,
                              ct_len, pt, SHORT_PT)) != T_PASS)
        return rc;
    memcpy(other, ad, SHORT_AD);
    other[SHORT_AD] = 0;
    if ((rc = expect_rejected(s, "AD one zero byte longer", s->key, s->nonce, other, SHORT_AD + 1,
                              ct, ct_len, pt, SHORT_PT)) != T_PASS)
        return rc;
    /* encrypted without AD, decrypted with some */
    ct_noad = outbuf(s, ct_len, CT_FILL);
    CHECK(ct_noad != NULL, "out of memory");
    CHECK_RC(0, vt->encrypt(s->key, s->nonce, NULL, 0, pt, SHORT_PT, ct_noad));
    return expect_rejected(s, "AD added", s->key, s->nonce, ad, SHORT_AD, ct_noad, ct_len, pt,
                           SHORT_PT);
}

/* ---- known answers ---- */

struct kat {
    uint32_t cipher_id;
    const char *source;
    const char *key, *nonce, *ad, *pt, *ct_tag;
};

#define SUNSCREEN                                                                                  \
    "4c616469657320616e642047656e746c656d656e206f662074686520636c6173"                             \
    "73206f66202739393a204966204920636f756c64206f6666657220796f75206f"                             \
    "6e6c79206f6e652074697020666f7220746865206675747572652c2073756e73"                             \
    "637265656e20776f756c642062652069742e"
#define KEY_80_9F "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"

static const struct kat kats[] = {
    {RHEMA_CIPHER_AES256GCM, "GCM specification (McGrew, Viega), test case 16",
     "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308", "cafebabefacedbaddecaf888",
     "feedfacedeadbeeffeedfacedeadbeefabaddad2",
     "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
     "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
     "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
     "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
     "76fc6ece0f4e1768cddf8853bb2d551b"},
    {RHEMA_CIPHER_CHACHA20POLY1305, "RFC 8439 section 2.8.2", KEY_80_9F, "070000004041424344454647",
     "50515253c0c1c2c3c4c5c6c7", SUNSCREEN,
     "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
     "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
     "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
     "3ff4def08e4b7a9de576d26586cec64b6116"
     "1ae10b594f09e26a7e902ecbd0600691"},
    {RHEMA_CIPHER_XCHACHA20POLY1305, "draft-irtf-cfrg-xchacha-03 section A.3.1", KEY_80_9F,
     "404142434445464748494a4b4c4d4e4f5051525354555657", "50515253c0c1c2c3c4c5c6c7", SUNSCREEN,
     "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
     "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
     "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
     "21f9664c97637da9768812f615c68b13b52e"
     "c0875924c1c7987947deafd8780acf49"},
};

/* The published vector of this wire id: encrypt, decrypt, and a bad tag. */
static int check_known_answer(struct suite *s, const void *arg)
{
    const struct rhema_cipher_plugin *vt = s->vt;
    const struct kat *k = NULL;
    unsigned char key[MAX_KEY], nonce[MAX_NONCE], ad[64], pt[256], want[256 + MAX_TAG];
    unsigned char *ct, *out;
    size_t key_len, nonce_len, ad_len, pt_len, want_len, i;
    (void)arg;
    for (i = 0; i < sizeof kats / sizeof kats[0]; i++)
        if (kats[i].cipher_id == vt->cipher_id)
            k = &kats[i];
    if (k == NULL) {
        snprintf(s->detail, sizeof s->detail, "no published vector known for wire id %u",
                 vt->cipher_id);
        return T_SKIP;
    }
    key_len = unhex(k->key, key, sizeof key);
    nonce_len = unhex(k->nonce, nonce, sizeof nonce);
    ad_len = unhex(k->ad, ad, sizeof ad);
    pt_len = unhex(k->pt, pt, sizeof pt);
    want_len = unhex(k->ct_tag, want, sizeof want);
    CHECK(key_len == vt->key_bytes && nonce_len == vt->nonce_bytes &&
              want_len == pt_len + vt->tag_bytes,
          "%s: the plugin's sizes (key %u, nonce %u, tag %u) do not fit the vector", k->source,
          vt->key_bytes, vt->nonce_bytes, vt->tag_bytes);
    ct = outbuf(s, want_len, CT_FILL);
    out = outbuf(s, pt_len, PT_FILL);
    CHECK(ct != NULL && out != NULL, "out of memory");
    CHECK_RC(0, vt->encrypt(key, nonce, ad, ad_len, pt, pt_len, ct));
    for (i = 0; i < want_len && ct[i] == want[i]; i++)
        ;
    CHECK(i == want_len, "%s: the output differs from the vector from byte %zu (%s)", k->source, i,
          i < pt_len ? "ciphertext" : "tag");
    CHECK_RC(0, vt->decrypt(key, nonce, ad, ad_len, want, want_len, out));
    CHECK(memcmp(out, pt, pt_len) == 0, "%s: decrypting the vector gives other bytes", k->source);
    want[want_len - 1] ^= 0x01;
    return expect_rejected(s, "the vector with its last tag bit flipped", key, nonce, ad, ad_len,
                           want, want_len, pt, pt_len);
}

/* libsodium's own encryption for a wire id rhema defines. */
static int sodium_encrypt(uint32_t id, unsigned char *c, const unsigned char *m, size_t mlen,
                          const unsigned char *ad, size_t ad_len, const unsigned char *npub,
                          const unsigned char *k)
{
    unsigned long long clen;
    switch (id) {
    case RHEMA_CIPHER_AES256GCM:
        return crypto_aead_aes256gcm_encrypt(c, &clen, m, mlen, ad, ad_len, NULL, npub, k);
    case RHEMA_CIPHER_CHACHA20POLY1305:
        return crypto_aead_chacha20poly1305_ietf_encrypt(c, &clen, m, mlen, ad, ad_len, NULL, npub,
                                                         k);
    case RHEMA_CIPHER_XCHACHA20POLY1305:
        return crypto_aead_xchacha20poly1305_ietf_encrypt(c, &clen, m, mlen, ad, ad_len, NULL, npub,
                                                          k);
    default: return -1;
    }
}

/*
 * For a wire id rhema defines: the plugin's output equals libsodium's for
 * random keys, nonces, data and AD over sizes around block boundaries, and
 * the plugin decrypts what libsodium produced.
 */
static int check_libsodium(struct suite *s, const void *arg)
{
    static const size_t sizes[] = {0, 1, 15, 16, 17, 63, 64, 65, 1000, 4096, 65543};
    const struct rhema_cipher_plugin *vt = s->vt;
    size_t tag = vt->tag_bytes, i, max = 65543;
    unsigned char key[MAX_KEY], nonce[MAX_NONCE], ad[13];
    unsigned char *pt, *ours, *theirs, *out;
    int with_ad;
    (void)arg;
    if (vt->cipher_id > RHEMA_CIPHER_XCHACHA20POLY1305) {
        snprintf(s->detail, sizeof s->detail, "wire id %u is not one libsodium implements here",
                 vt->cipher_id);
        return T_SKIP;
    }
    if (!s->sodium_ok) {
        snprintf(s->detail, sizeof s->detail, "sodium_init() failed in the test");
        return T_SKIP;
    }
    if (vt->cipher_id == RHEMA_CIPHER_AES256GCM && !crypto_aead_aes256gcm_is_available()) {
        snprintf(s->detail, sizeof s->detail,
                 "libsodium's AES-256-GCM needs AES-NI, which this CPU lacks (the published "
                 "vector still checked the plugin)");
        return T_SKIP;
    }
    pt = s_alloc(s, max);
    ours = outbuf(s, max + tag, CT_FILL);
    theirs = outbuf(s, max + tag, CT_FILL);
    out = outbuf(s, max, PT_FILL);
    CHECK(pt != NULL && ours != NULL && theirs != NULL && out != NULL, "out of memory");
    for (i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        for (with_ad = 0; with_ad < 2; with_ad++) {
            size_t len = sizes[i], ad_len = with_ad ? sizeof ad : 0;
            randombytes_buf(key, sizeof key);
            randombytes_buf(nonce, sizeof nonce);
            randombytes_buf(ad, sizeof ad);
            randombytes_buf(pt, len);
            CHECK_RC(0, vt->encrypt(key, nonce, ad, ad_len, pt, len, ours));
            CHECK(sodium_encrypt(vt->cipher_id, theirs, pt, len, ad, ad_len, nonce, key) == 0,
                  "libsodium refused to encrypt %zu bytes", len);
            CHECK(memcmp(ours, theirs, len + tag) == 0,
                  "%zu bytes%s: the plugin's output differs from libsodium's", len,
                  with_ad ? " with AD" : "");
            CHECK_RC(0, vt->decrypt(key, nonce, ad, ad_len, theirs, len + tag, out));
            CHECK(memcmp(out, pt, len) == 0,
                  "%zu bytes: decrypting libsodium's output gives other bytes", len);
        }
    }
    return T_PASS;
}

/* ---- determinism and sensitivity ---- */

/* The same key, nonce, AD and plaintext give the same ciphertext. */
static int check_deterministic(struct suite *s, const void *arg)
{
    const struct rhema_cipher_plugin *vt = s->vt;
    size_t len = 1000, tag = vt->tag_bytes;
    unsigned char ad[7], *pt = s_alloc(s, len), *a = outbuf(s, len + tag, CT_FILL),
                         *b = outbuf(s, len + tag, 0x00);
    (void)arg;
    CHECK(pt != NULL && a != NULL && b != NULL, "out of memory");
    pattern(pt, len, 31337);
    pattern(ad, sizeof ad, 31338);
    CHECK_RC(0, vt->encrypt(s->key, s->nonce, ad, sizeof ad, pt, len, a));
    CHECK_RC(0, vt->encrypt(s->key, s->nonce, ad, sizeof ad, pt, len, b));
    CHECK(memcmp(a, b, len + tag) == 0, "two encryptions of the same input differ");
    return T_PASS;
}

/*
 * Changing any one byte of the nonce, or of the key, changes both the
 * encrypted data and the tag: all the outputs are pairwise distinct.
 */
static int check_sensitivity(struct suite *s, const void *arg)
{
    const struct rhema_cipher_plugin *vt = s->vt;
    size_t len = 64, tag = vt->tag_bytes, n = 1 + vt->nonce_bytes + vt->key_bytes, i, j;
    unsigned char pt[64], key[MAX_KEY], nonce[MAX_NONCE];
    unsigned char *all = s_alloc(s, n * (len + tag));
    (void)arg;
    CHECK(all != NULL, "out of memory");
    pattern(pt, len, 555);
    for (i = 0; i < n; i++) {
        memcpy(key, s->key, sizeof key);
        memcpy(nonce, s->nonce, sizeof nonce);
        if (i >= 1 && i <= vt->nonce_bytes)
            nonce[i - 1]++;
        else if (i > vt->nonce_bytes)
            key[i - 1 - vt->nonce_bytes]++;
        CHECK_RC(0, vt->encrypt(key, nonce, NULL, 0, pt, len, all + i * (len + tag)));
    }
    for (i = 0; i < n; i++) {
        for (j = i + 1; j < n; j++) {
            const unsigned char *x = all + i * (len + tag), *y = all + j * (len + tag);
            const char *what_i = i == 0                 ? "the original"
                                 : i <= vt->nonce_bytes ? "a nonce"
                                                        : "a key";
            CHECK(memcmp(x, y, len) != 0 && memcmp(x + len, y + len, tag) != 0,
                  "outputs %zu and %zu (%s variant vs another) share their %s", i, j, what_i,
                  memcmp(x, y, len) == 0 ? "encrypted data" : "tag");
        }
    }
    return T_PASS;
}

/* ---- argument errors ---- */

/*
 * NULL key or nonce is RHEMA_EINVAL; a plaintext whose ciphertext would not
 * fit in a size_t is RHEMA_ETOOBIG; none of them writes anything.
 */
static int check_arguments(struct suite *s, const void *arg)
{
    const struct rhema_cipher_plugin *vt = s->vt;
    size_t len = 16, tag = vt->tag_bytes;
    unsigned char pt[16], *ct = outbuf(s, len + tag, CT_FILL), *good = outbuf(s, len + tag, 0),
                          *out = outbuf(s, len, PT_FILL);
    (void)arg;
    CHECK(ct != NULL && good != NULL && out != NULL, "out of memory");
    pattern(pt, len, 8);
    CHECK_RC(0, vt->encrypt(s->key, s->nonce, NULL, 0, pt, len, good));
    CHECK_RC(RHEMA_EINVAL, vt->encrypt(NULL, s->nonce, NULL, 0, pt, len, ct));
    CHECK_RC(RHEMA_EINVAL, vt->encrypt(s->key, NULL, NULL, 0, pt, len, ct));
    CHECK_RC(RHEMA_ETOOBIG, vt->encrypt(s->key, s->nonce, NULL, 0, pt, SIZE_MAX, ct));
    CHECK_RC(RHEMA_ETOOBIG, vt->encrypt(s->key, s->nonce, NULL, 0, pt, SIZE_MAX - tag + 1, ct));
    CHECK(untouched(ct, len + tag + CANARY, CT_FILL), "a refused encrypt wrote to its output");
    CHECK_RC(RHEMA_EINVAL, vt->decrypt(NULL, s->nonce, NULL, 0, good, len + tag, out));
    CHECK_RC(RHEMA_EINVAL, vt->decrypt(s->key, NULL, NULL, 0, good, len + tag, out));
    CHECK(untouched(out, len + CANARY, PT_FILL), "a refused decrypt wrote to its output");
    return T_PASS;
}

/* ---- concurrency ---- */

struct worker {
    const struct rhema_cipher_plugin *vt;
    pthread_barrier_t *start;
    unsigned char key[MAX_KEY];
    unsigned char nonce[THREAD_MSGS][MAX_NONCE];
    size_t len[THREAD_MSGS];
    unsigned char *pt[THREAD_MSGS], *ref[THREAD_MSGS]; /* ref: computed alone beforehand */
    char err[256];
};

static void *worker_run(void *arg)
{
    struct worker *w = arg;
    const struct rhema_cipher_plugin *vt = w->vt;
    size_t tag = vt->tag_bytes;
    unsigned char ct[THREAD_MSG_MAX + MAX_TAG], out[THREAD_MSG_MAX];
    unsigned round, i;
    int rc;

    pthread_barrier_wait(w->start);
    for (round = 0; round < THREAD_ROUNDS; round++) {
        for (i = 0; i < THREAD_MSGS; i++) {
            size_t len = w->len[i], flip = (round * 7u + i) % (len + tag);
            rc = vt->encrypt(w->key, w->nonce[i], w->nonce[i], 5, w->pt[i], len, ct);
            if (rc != 0 || memcmp(ct, w->ref[i], len + tag) != 0) {
                snprintf(w->err, sizeof w->err, "round %u message %u: encrypt %s, output %s", round,
                         i, rhema_strerror(rc),
                         rc == 0 ? "differs from the one computed alone" : "-");
                return NULL;
            }
            rc = vt->decrypt(w->key, w->nonce[i], w->nonce[i], 5, w->ref[i], len + tag, out);
            if (rc != 0 || memcmp(out, w->pt[i], len) != 0) {
                snprintf(w->err, sizeof w->err, "round %u message %u: decrypt %s%s", round, i,
                         rhema_strerror(rc), rc == 0 ? " but the plaintext differs" : "");
                return NULL;
            }
            ct[flip] ^= 0x04;
            rc = vt->decrypt(w->key, w->nonce[i], w->nonce[i], 5, ct, len + tag, out);
            if (rc != RHEMA_ECORRUPT) {
                snprintf(w->err, sizeof w->err,
                         "round %u message %u: a tampered message gave %s, want ECORRUPT", round, i,
                         rhema_strerror(rc));
                return NULL;
            }
        }
    }
    return NULL;
}

/* THREADS threads encrypt, decrypt and reject at once; results match. */
static int check_concurrency(struct suite *s, const void *arg)
{
    const struct rhema_cipher_plugin *vt = s->vt;
    struct worker *w = s_alloc(s, THREADS * sizeof *w);
    pthread_t th[THREADS];
    pthread_barrier_t start;
    size_t t, i, started = 0;
    (void)arg;
    CHECK(w != NULL, "out of memory");
    memset(w, 0, THREADS * sizeof *w);
    for (t = 0; t < THREADS; t++) {
        w[t].vt = vt;
        w[t].start = &start;
        pattern(w[t].key, sizeof w[t].key, 100 + t);
        for (i = 0; i < THREAD_MSGS; i++) {
            w[t].len[i] = (i * 211 + t * 13) % THREAD_MSG_MAX;
            pattern(w[t].nonce[i], MAX_NONCE, 1000 * t + i);
            w[t].pt[i] = s_alloc(s, w[t].len[i]);
            w[t].ref[i] = s_alloc(s, w[t].len[i] + vt->tag_bytes);
            CHECK(w[t].pt[i] != NULL && w[t].ref[i] != NULL, "out of memory");
            pattern(w[t].pt[i], w[t].len[i], 7000 * t + i);
            CHECK_RC(0, vt->encrypt(w[t].key, w[t].nonce[i], w[t].nonce[i], 5, w[t].pt[i],
                                    w[t].len[i], w[t].ref[i]));
        }
    }
    CHECK(pthread_barrier_init(&start, NULL, THREADS) == 0, "pthread_barrier_init failed");
    for (t = 0; t < THREADS; t++) {
        if (pthread_create(&th[t], NULL, worker_run, &w[t]) != 0)
            break;
        started++;
    }
    if (started < THREADS) {
        /* the started ones wait at the barrier for the missing ones: release them */
        for (t = started; t < THREADS; t++)
            pthread_barrier_wait(&start);
    }
    for (t = 0; t < started; t++)
        pthread_join(th[t], NULL);
    pthread_barrier_destroy(&start);
    CHECK(started == THREADS, "pthread_create failed after %zu threads", started);
    for (t = 0; t < THREADS; t++)
        CHECK(w[t].err[0] == '\0', "thread %zu: %s", t, w[t].err);
    return T_PASS;
}

/* ---- the runner ---- */

struct check {
    const char *name;
    int (*fn)(struct suite *s, const void *arg);
    const void *arg;
};

static const struct rt_case rt_cases[] = {
    {0, 0},    {0, 1},     {1, 0},     {1, 1},       {1024, 0},
    {1024, 1}, {65536, 0}, {65536, 1}, {1048576, 0}, {1048576, 1},
};

/* Everything after check_header and available(), in order. */
static const struct check checks[] = {
    {"wire_id_parameters", check_wire_id, NULL},
    {"random_nonce_margin", check_random_nonce_margin, NULL},
    {"round_trip_0B", check_round_trip, &rt_cases[0]},
    {"round_trip_0B_ad", check_round_trip, &rt_cases[1]},
    {"round_trip_1B", check_round_trip, &rt_cases[2]},
    {"round_trip_1B_ad", check_round_trip, &rt_cases[3]},
    {"round_trip_1KiB", check_round_trip, &rt_cases[4]},
    {"round_trip_1KiB_ad", check_round_trip, &rt_cases[5]},
    {"round_trip_64KiB", check_round_trip, &rt_cases[6]},
    {"round_trip_64KiB_ad", check_round_trip, &rt_cases[7]},
    {"round_trip_1MiB", check_round_trip, &rt_cases[8]},
    {"round_trip_1MiB_ad", check_round_trip, &rt_cases[9]},
    {"tamper_every_ciphertext_bit", check_tamper_ciphertext, NULL},
    {"tamper_every_ad_bit", check_tamper_ad, NULL},
    {"truncated_and_extended", check_truncated, NULL},
    {"wrong_key", check_wrong_key, NULL},
    {"wrong_nonce", check_wrong_nonce, NULL},
    {"wrong_missing_extra_ad", check_wrong_ad, NULL},
    {"known_answer", check_known_answer, NULL},
    {"libsodium_cross_check", check_libsodium, NULL},
    {"deterministic", check_deterministic, NULL},
    {"nonce_and_key_sensitivity", check_sensitivity, NULL},
    {"argument_errors", check_arguments, NULL},
    {"concurrency", check_concurrency, NULL},
};

static void finish(struct suite *s, const char *name, int ok)
{
    s_free_all(s);
    if (ok == T_PASS) {
        s->t.passed++;
        s->detail[0] = '\0';
    } else if (ok == T_SKIP) {
        s->t.skipped++;
    } else {
        s->t.failed++;
    }
    s->report(s->report_ctx, name, ok, s->detail);
    s->detail[0] = '\0';
}

/* Report every check from `from` on as skipped with `why`. */
static void skip_rest(struct suite *s, size_t from, const char *why)
{
    size_t i;
    for (i = from; i < sizeof checks / sizeof checks[0]; i++) {
        snprintf(s->detail, sizeof s->detail, "%s", why);
        finish(s, checks[i].name, T_SKIP);
    }
}

int rhema_conformance_cipher(const struct rhema_cipher_plugin *vt, rhema_conf_report_fn report,
                             void *ctx, struct rhema_conf_totals *totals)
{
    struct suite s;
    const char *why = NULL;
    int ok;
    size_t i;

    memset(&s, 0, sizeof s);
    s.vt = vt;
    s.report = report;
    s.report_ctx = ctx;
    s.sodium_ok = sodium_init() >= 0;
    pattern(s.key, sizeof s.key, 0x6b6579);
    pattern(s.nonce, sizeof s.nonce, 0x6e6f6e);

    ok = check_header(&s, NULL);
    finish(&s, "header", ok);
    if (ok != T_PASS) {
        snprintf(s.detail, sizeof s.detail, "the header is unusable");
        finish(&s, "available", T_SKIP);
        skip_rest(&s, 0, "the header is unusable");
    } else if (!vt->available(&why)) {
        char reason[512];
        snprintf(reason, sizeof reason, "not available on this machine: %s",
                 why != NULL ? why : "");
        if (why == NULL || why[0] == '\0') {
            snprintf(s.detail, sizeof s.detail, "available() answered 0 without a reason");
            finish(&s, "available", T_FAIL);
        } else {
            snprintf(s.detail, sizeof s.detail, "%s", reason);
            finish(&s, "available", T_SKIP);
        }
        skip_rest(&s, 0, reason);
    } else {
        /* a second call agrees (the loader already made the first) */
        ok = vt->available(&why) ? T_PASS : failf(&s, "a second available() call answered 0");
        finish(&s, "available", ok);
        for (i = 0; i < sizeof checks / sizeof checks[0]; i++)
            finish(&s, checks[i].name, checks[i].fn(&s, checks[i].arg));
    }
    free(s.allocs);
    if (totals != NULL) {
        totals->passed += s.t.passed;
        totals->failed += s.t.failed;
        totals->skipped += s.t.skipped;
    }
    return (int)s.t.failed;
}
