/*
 * apikey -- the format of an API key: make one, check one, hash one.
 *
 *   rk_<public_id>_<secret><checksum>
 *
 *   public_id  12 base62 characters, random; not secret (logs, audit, limits)
 *   secret     22 base62 characters from libsodium's CSPRNG (131 bits)
 *   checksum   6 base62 characters: the first 32 bits of BLAKE2b over
 *              everything before it, so that a mistyped or truncated key is
 *              refused before any lookup (it is no protection against a
 *              forger, who can compute it too)
 *
 * Only a hash of the whole key is ever kept: BLAKE2b-256, written as 64
 * lower-case hex digits.  The secrets are random, so no slow hash is
 * needed.  A key's stored form ("key_hash" in the config) is
 * "<public_id>:<hex>", so that a key is found by its public id and then
 * compared, in constant time, by its hash.
 *
 * Pure functions, thread safe; sodium_init() must have run.
 */
#ifndef RHEMA_CORE_AUTH_APIKEY_H
#define RHEMA_CORE_AUTH_APIKEY_H

#include <stddef.h>

#define RHEMA_APIKEY_ID_LEN 12
#define RHEMA_APIKEY_SECRET_LEN 22
#define RHEMA_APIKEY_CHECK_LEN 6
/* "rk_" id "_" secret checksum */
#define RHEMA_APIKEY_LEN                                                                           \
    (3 + RHEMA_APIKEY_ID_LEN + 1 + RHEMA_APIKEY_SECRET_LEN + RHEMA_APIKEY_CHECK_LEN)
#define RHEMA_APIKEY_HASH_LEN 32
#define RHEMA_APIKEY_HASH_HEX (2 * RHEMA_APIKEY_HASH_LEN)
/* "<public_id>:<hex>" */
#define RHEMA_APIKEY_STORED_LEN (RHEMA_APIKEY_ID_LEN + 1 + RHEMA_APIKEY_HASH_HEX)

/* A new key (NUL-terminated) and its public id. */
void rhema_apikey_generate(char key[RHEMA_APIKEY_LEN + 1], char id[RHEMA_APIKEY_ID_LEN + 1]);

/* What is wrong with a presented key. */
enum rhema_apikey_fault {
    RHEMA_APIKEY_OK = 0,
    RHEMA_APIKEY_MALFORMED, /* not rk_<12>_<28> of base62 */
    RHEMA_APIKEY_CHECKSUM,  /* well formed, but the checksum does not match: a typo */
};

/*
 * Check the form and the checksum of the len bytes at key; on success copy
 * the public id into id.  No lookup, no secret-dependent branch beyond the
 * checksum (which is public).
 */
enum rhema_apikey_fault rhema_apikey_parse(const char *key, size_t len,
                                           char id[RHEMA_APIKEY_ID_LEN + 1]);

/* BLAKE2b-256 of the key's len bytes. */
void rhema_apikey_hash(const char *key, size_t len, unsigned char out[RHEMA_APIKEY_HASH_LEN]);

/* The stored form "<public_id>:<hex>" of a key (parse it first). */
void rhema_apikey_stored(const char *key, size_t len, char out[RHEMA_APIKEY_STORED_LEN + 1]);

/*
 * Read a stored form "<public_id>:<hex>": 0 with the id and the hash, or
 * -1 when it is not one.
 */
int rhema_apikey_stored_parse(const char *s, char id[RHEMA_APIKEY_ID_LEN + 1],
                              unsigned char hash[RHEMA_APIKEY_HASH_LEN]);

/* 1 when s is a public id (12 base62 characters), else 0. */
int rhema_apikey_id_valid(const char *s);

#endif /* RHEMA_CORE_AUTH_APIKEY_H */
