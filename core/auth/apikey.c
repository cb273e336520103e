/*
 * apikey -- the format of an API key (see apikey.h).
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <sodium.h>

#include "auth/apikey.h"

static const char b62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

static int is_b62(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

/* n base62 characters from the CSPRNG, without modulo bias (bytes >= 248 are drawn again). */
static void random_b62(char *out, size_t n)
{
    unsigned char buf[64];
    size_t have = 0, used = 0;
    while (have < n) {
        if (used == sizeof buf || used == 0) {
            randombytes_buf(buf, sizeof buf);
            used = 0;
        }
        unsigned char b = buf[used++];
        if (b < 248)
            out[have++] = b62[b % 62];
    }
    sodium_memzero(buf, sizeof buf);
}

/* The checksum of the first len bytes: 32 bits of BLAKE2b as 6 base62 digits. */
static void checksum(const char *s, size_t len, char out[RHEMA_APIKEY_CHECK_LEN])
{
    unsigned char h[crypto_generichash_BYTES_MIN];
    crypto_generichash(h, sizeof h, (const unsigned char *)s, len, NULL, 0);
    uint32_t v = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
    for (int i = RHEMA_APIKEY_CHECK_LEN - 1; i >= 0; i--) {
        out[i] = b62[v % 62];
        v /= 62;
    }
}

void rhema_apikey_generate(char key[RHEMA_APIKEY_LEN + 1], char id[RHEMA_APIKEY_ID_LEN + 1])
{
    char *p = key;
    memcpy(p, "rk_", 3);
    p += 3;
    random_b62(p, RHEMA_APIKEY_ID_LEN);
    memcpy(id, p, RHEMA_APIKEY_ID_LEN);
    id[RHEMA_APIKEY_ID_LEN] = '\0';
    p += RHEMA_APIKEY_ID_LEN;
    *p++ = '_';
    random_b62(p, RHEMA_APIKEY_SECRET_LEN);
    p += RHEMA_APIKEY_SECRET_LEN;
    checksum(key, (size_t)(p - key), p);
    key[RHEMA_APIKEY_LEN] = '\0';
}

enum rhema_apikey_fault rhema_apikey_parse(const char *key, size_t len,
                                           char id[RHEMA_APIKEY_ID_LEN + 1])
{
    char want[RHEMA_APIKEY_CHECK_LEN];
    if (len != RHEMA_APIKEY_LEN || memcmp(key, "rk_", 3) != 0 ||
        key[3 + RHEMA_APIKEY_ID_LEN] != '_')
        return RHEMA_APIKEY_MALFORMED;
    for (size_t i = 3; i < len; i++)
        if (i != 3 + RHEMA_APIKEY_ID_LEN && !is_b62(key[i]))
            return RHEMA_APIKEY_MALFORMED;
    checksum(key, len - RHEMA_APIKEY_CHECK_LEN, want);
    if (memcmp(want, key + len - RHEMA_APIKEY_CHECK_LEN, RHEMA_APIKEY_CHECK_LEN) != 0)
        return RHEMA_APIKEY_CHECKSUM;
    memcpy(id, key + 3, RHEMA_APIKEY_ID_LEN);
    id[RHEMA_APIKEY_ID_LEN] = '\0';
    return RHEMA_APIKEY_OK;
}

void rhema_apikey_hash(const char *key, size_t len, unsigned char out[RHEMA_APIKEY_HASH_LEN])
{
    crypto_generichash(out, RHEMA_APIKEY_HASH_LEN, (const unsigned char *)key, len, NULL, 0);
}

void rhema_apikey_stored(const char *key, size_t len, char out[RHEMA_APIKEY_STORED_LEN + 1])
{
    unsigned char h[RHEMA_APIKEY_HASH_LEN];
    rhema_apikey_hash(key, len, h);
    memcpy(out, key + 3, RHEMA_APIKEY_ID_LEN);
    out[RHEMA_APIKEY_ID_LEN] = ':';
    sodium_bin2hex(out + RHEMA_APIKEY_ID_LEN + 1, RHEMA_APIKEY_HASH_HEX + 1, h, sizeof h);
}

int rhema_apikey_id_valid(const char *s)
{
    size_t i;
    for (i = 0; i < RHEMA_APIKEY_ID_LEN; i++)
        if (!is_b62(s[i]))
            return 0;
    return s[i] == '\0';
}

int rhema_apikey_stored_parse(const char *s, char id[RHEMA_APIKEY_ID_LEN + 1],
                              unsigned char hash[RHEMA_APIKEY_HASH_LEN])
{
    size_t bin_len = 0;
    const char *end = NULL;
    if (strlen(s) != RHEMA_APIKEY_STORED_LEN || s[RHEMA_APIKEY_ID_LEN] != ':')
        return -1;
    for (size_t i = 0; i < RHEMA_APIKEY_ID_LEN; i++)
        if (!is_b62(s[i]))
            return -1;
    for (const char *p = s + RHEMA_APIKEY_ID_LEN + 1; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return -1;
    if (sodium_hex2bin(hash, RHEMA_APIKEY_HASH_LEN, s + RHEMA_APIKEY_ID_LEN + 1,
                       RHEMA_APIKEY_HASH_HEX, NULL, &bin_len, &end) != 0 ||
        bin_len != RHEMA_APIKEY_HASH_LEN)
        return -1;
    memcpy(id, s, RHEMA_APIKEY_ID_LEN);
    id[RHEMA_APIKEY_ID_LEN] = '\0';
    return 0;
}
