/*
 * fuzz_envelope -- cipher envelopes (keyring.h, DESIGN.md §3) as
 * POST /v1/encryption/decrypt and /v1/keys/rewrap receive them and as the
 * at-rest layer reads them back from storage: rhema_envelope_key_version,
 * rhema_keyring_decrypt and rhema_keyring_rewrap on a copy of the keyring
 * fixture, whose versions use each cipher plugin that was built, so the
 * seeds (envelopes that keyring made) open and their mutations reach every
 * check after the header.
 */
#include "rhema_build.h"

#include "fixture.h"

static struct fuzz_keyring k;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    if (fuzz_keyring_open(&k, 0) != 0 ||
        fuzz_keyring_start(&k, fuzz_cipher(&k, "xchacha20poly1305")) != 0)
        abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[RHEMA_KEYRING_ERR_MAX];
    struct rhema_buf pt = {NULL, 0}, re = {NULL, 0}, pt2 = {NULL, 0};
    uint32_t v = 0, v2 = 0;
    int hv = rhema_envelope_key_version(data, size, &v);
    err[0] = '\0';
    int rc = rhema_keyring_decrypt(k.kr, data, size, NULL, 0, &pt, err);
    fuzz_assert(rc == 0 ? pt.len <= size : (pt.data == NULL && err[0]));
    if (rc == 0)
        fuzz_assert(hv == 0); /* what opens has a readable header */
    /* the at-rest layer's call, with associated data: what opened without it must not */
    struct rhema_buf ad_pt = {NULL, 0};
    int arc = rhema_keyring_decrypt(k.kr, data, size, "sessions/s-1", 12, &ad_pt, err);
    fuzz_assert(rc != 0 || arc != 0);
    free(ad_pt.data);
    err[0] = '\0';
    int rrc = rhema_keyring_rewrap(k.kr, data, size, NULL, 0, &re, &v2, err);
    /* rewrap opens exactly what decrypt opens, and the result opens to the same bytes */
    fuzz_assert((rrc == 0) == (rc == 0));
    if (rrc == 0) {
        fuzz_assert(rhema_keyring_decrypt(k.kr, re.data, re.len, NULL, 0, &pt2, err) == 0);
        fuzz_assert(pt2.len == pt.len && (pt.len == 0 || memcmp(pt.data, pt2.data, pt.len) == 0));
    }
    free(pt.data);
    free(pt2.data);
    free(re.data);
    return 0;
}
