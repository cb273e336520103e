/*
 * fuzz_apikey -- API keys as clients present them and as they are stored:
 * rhema_apikey_parse() (core/auth/apikey.c) on the bytes as given,
 * rhema_apikey_stored_parse() and rhema_apikey_id_valid() on them as a
 * string (a key_hash of the config), and the authenticate stage of the
 * pipeline (rhema_authenticate(), core/api/api_auth.c) on requests whose
 * headers are the input's lines ("Authorization: Bearer rk_..." or
 * "X-API-Key: rk_..."), against a keystore holding the static keys of
 * fuzz.h (one valid, one expired) and a memory backend for runtime keys.
 *
 * A key ends with a checksum that a mutation breaks, so when the first byte
 * is odd the harness first recomputes the checksum of every rk_... of the
 * right shape in the input (with libsodium, independently of apikey.c):
 * the code behind the checksum (the lookup, the hash comparison, expiry)
 * is fuzzed too, and the checksum itself is checked against this oracle.
 * Each run also generates a key and checks that it parses back to its
 * public id and that its stored form reads back to the same id and hash.
 */
#include "rhema_build.h"

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <sodium.h>
#include <sys/queue.h>

#include "api/api_auth.h"
#include "api/http.h"
#include "api/pipeline.h"
#include "auth/apikey.h"
#include "config.h"
#include "fixture.h"
#include "fuzz_http.h"
#include "log.h"
#include "server.h"

static struct rhema_config cfg;
static struct rhema_server srv;
static struct rhema_worker worker;

static const char b62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static const char conf_text[] =
        "security: {\n"
        "  api_keys: { enabled = true; keys = (\n"
        "    { name = \"fuzz-admin\"; key_hash = \"" FUZZ_APIKEY_ADMIN_STORED "\";\n"
        "      roles = [\"admin\"]; },\n"
        "    { name = \"fuzz-old\"; key_hash = \"" FUZZ_APIKEY_EXPIRED_STORED "\";\n"
        "      roles = [\"admin\"]; expires_at = \"2020-01-01T00:00:00Z\"; }\n"
        "  ); };\n"
        "  roles = ( { name = \"admin\"; permissions = [\"*\"]; } );\n"
        "};\n";
    const struct rhema_loaded_plugin *p;
    char path[320], *err = NULL;
    (void)argc, (void)argv;
    rhema_log_set_level(RHEMA_LOG_ERROR);
    const char *dir = fuzz_tmpdir();
    if (!dir || sodium_init() < 0)
        abort();
    snprintf(path, sizeof path, "%s/auth.conf", dir);
    if (fuzz_write_file(path, conf_text, sizeof conf_text - 1) != 0 ||
        rhema_config_load(&cfg, path, NULL, 0, NULL, &err) != 0 ||
        rhema_plugins_new(&srv.plugins) != 0 ||
        rhema_plugin_load(srv.plugins, "memory", fuzz_plugin_dir(), RHEMA_KIND_STORAGE, &p, &err) !=
            0)
        goto fail;
    srv.cfg = &cfg;
    srv.storage = &p->vt.storage;
    if (srv.storage->open(rhema_host_get(), NULL, &srv.storage_inst, &err) != 0 ||
        srv.storage->connect(srv.storage_inst, &worker.conn, &err) != 0)
        goto fail;
    rhema_store_init(&worker.store, srv.storage, worker.conn);
    if (rhema_auth_open(&srv, rhema_api_routes, &err) != 0)
        goto fail;
    atomic_store(&srv.log_access, 0);
    worker.srv = &srv;
    return 0;
fail:
    fprintf(stderr, "fuzz_apikey: %s\n", err ? err : "setup failed");
    abort();
}

static int is_b62(char c)
{
    return c && strchr(b62, c) != NULL;
}

/* 1 when p[0..RHEMA_APIKEY_LEN) has the shape rk_<12 base62>_<28 base62>. */
static int key_shape(const char *p)
{
    if (memcmp(p, "rk_", 3) != 0 || p[3 + RHEMA_APIKEY_ID_LEN] != '_')
        return 0;
    for (size_t i = 3; i < RHEMA_APIKEY_LEN; i++)
        if (i != 3 + RHEMA_APIKEY_ID_LEN && !is_b62(p[i]))
            return 0;
    return 1;
}

/* The checksum apikey.h describes: 32 bits of BLAKE2b-128, as 6 base62 digits. */
static void oracle_checksum(const char *p, char out[RHEMA_APIKEY_CHECK_LEN])
{
    unsigned char h[crypto_generichash_BYTES_MIN];
    size_t n = RHEMA_APIKEY_LEN - RHEMA_APIKEY_CHECK_LEN;
    crypto_generichash(h, sizeof h, (const unsigned char *)p, n, NULL, 0);
    uint32_t v = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
    for (int i = RHEMA_APIKEY_CHECK_LEN - 1; i >= 0; i--) {
        out[i] = b62[v % 62];
        v /= 62;
    }
}

/* Rewrite the checksum of every key-shaped run of text[0..n). */
static void fix_checksums(char *text, size_t n)
{
    for (size_t i = 0; i + RHEMA_APIKEY_LEN <= n; i++)
        if (key_shape(text + i)) {
            oracle_checksum(text + i, text + i + RHEMA_APIKEY_LEN - RHEMA_APIKEY_CHECK_LEN);
            i += RHEMA_APIKEY_LEN - 1;
        }
}

/* A key the code makes parses back to its id; its stored form reads back. */
static void check_generated(void)
{
    char key[RHEMA_APIKEY_LEN + 1], id[RHEMA_APIKEY_ID_LEN + 1], got[RHEMA_APIKEY_ID_LEN + 1];
    char stored[RHEMA_APIKEY_STORED_LEN + 1], sid[RHEMA_APIKEY_ID_LEN + 1];
    unsigned char h[RHEMA_APIKEY_HASH_LEN], sh[RHEMA_APIKEY_HASH_LEN];
    rhema_apikey_generate(key, id);
    fuzz_assert(strlen(key) == RHEMA_APIKEY_LEN && key_shape(key) && rhema_apikey_id_valid(id));
    fuzz_assert(rhema_apikey_parse(key, RHEMA_APIKEY_LEN, got) == RHEMA_APIKEY_OK);
    fuzz_assert(strcmp(got, id) == 0);
    rhema_apikey_stored(key, RHEMA_APIKEY_LEN, stored);
    rhema_apikey_hash(key, RHEMA_APIKEY_LEN, h);
    fuzz_assert(rhema_apikey_stored_parse(stored, sid, sh) == 0);
    fuzz_assert(strcmp(sid, id) == 0 && memcmp(sh, h, sizeof h) == 0);
}

/* The key-level parsers on the input as bytes (exactly n: ASan sees an over-read). */
static void check_parsers(const char *text, size_t n)
{
    char id[RHEMA_APIKEY_ID_LEN + 1], want[RHEMA_APIKEY_CHECK_LEN];
    char stored[RHEMA_APIKEY_STORED_LEN + 1], sid[RHEMA_APIKEY_ID_LEN + 1];
    char hex[RHEMA_APIKEY_HASH_HEX + 1];
    unsigned char h[RHEMA_APIKEY_HASH_LEN], sh[RHEMA_APIKEY_HASH_LEN];
    char *bytes = malloc(n ? n : 1);
    if (!bytes)
        abort();
    memcpy(bytes, text, n);
    enum rhema_apikey_fault f = rhema_apikey_parse(bytes, n, id);
    int shaped = n == RHEMA_APIKEY_LEN && key_shape(bytes);
    if (shaped)
        oracle_checksum(bytes, want);
    if (f == RHEMA_APIKEY_OK) {
        /* only a well-formed key with the right checksum; its id is its bytes 3..15 */
        fuzz_assert(shaped &&
                    memcmp(want, bytes + n - RHEMA_APIKEY_CHECK_LEN, RHEMA_APIKEY_CHECK_LEN) == 0);
        fuzz_assert(memcmp(id, bytes + 3, RHEMA_APIKEY_ID_LEN) == 0 && rhema_apikey_id_valid(id));
        rhema_apikey_stored(bytes, n, stored);
        rhema_apikey_hash(bytes, n, h);
        fuzz_assert(rhema_apikey_stored_parse(stored, sid, sh) == 0);
        fuzz_assert(strcmp(sid, id) == 0 && memcmp(sh, h, sizeof h) == 0);
    } else if (f == RHEMA_APIKEY_CHECKSUM) {
        fuzz_assert(shaped &&
                    memcmp(want, bytes + n - RHEMA_APIKEY_CHECK_LEN, RHEMA_APIKEY_CHECK_LEN) != 0);
    } else {
        fuzz_assert(f == RHEMA_APIKEY_MALFORMED && !shaped);
    }
    free(bytes);

    /* as a string: a key_hash of the config, a public id of DELETE /v1/auth/keys/{id} */
    char *s = malloc(n + 1);
    if (!s)
        abort();
    memcpy(s, text, n);
    s[n] = '\0';
    if (rhema_apikey_stored_parse(s, sid, sh) == 0) {
        /* exactly "<id>:<64 lower-case hex>", and the hash is those digits */
        fuzz_assert(strlen(s) == RHEMA_APIKEY_STORED_LEN && s[RHEMA_APIKEY_ID_LEN] == ':');
        fuzz_assert(memcmp(sid, s, RHEMA_APIKEY_ID_LEN) == 0 && rhema_apikey_id_valid(sid));
        sodium_bin2hex(hex, sizeof hex, sh, sizeof sh);
        fuzz_assert(strcmp(hex, s + RHEMA_APIKEY_ID_LEN + 1) == 0);
    }
    if (rhema_apikey_id_valid(s)) {
        fuzz_assert(strlen(s) == RHEMA_APIKEY_ID_LEN);
        for (size_t i = 0; i < RHEMA_APIKEY_ID_LEN; i++)
            fuzz_assert(is_b62(s[i]));
    }
    free(s);
}

/* The authenticate stage on a request whose headers are the input's lines. */
static void check_authenticate(const char *text, size_t n)
{
    struct rhema_req r;
    char *copy = malloc(n + 1), *save = NULL;
    if (!copy)
        abort();
    memcpy(copy, text, n);
    copy[n] = '\0';
    memset(&r, 0, sizeof r);
    TAILQ_INIT(&r.query);
    r.worker = &worker;
    r.method = EVHTTP_REQ_GET;
    r.path = "/v1/auth/whoami";
    snprintf(r.request_id, sizeof r.request_id, "fuzz-1");
    r.req = evhttp_request_new(NULL, NULL);
    if (!r.req)
        abort();
    fuzz_add_headers(r.req, strtok_r(copy, "\r\n", &save), &save);
    if (rhema_authenticate(&r) == 0) {
        fuzz_assert(r.status == 0);
        if (r.principal.key_id[0]) {
            /* the only key that may pass: the static one that has not expired */
            fuzz_assert(strcmp(r.principal.key_id, FUZZ_APIKEY_ADMIN_ID) == 0);
            fuzz_assert(strcmp(r.principal.name, "fuzz-admin") == 0 && r.principal.from_config);
            fuzz_assert(memmem(text, n, FUZZ_APIKEY_ADMIN, RHEMA_APIKEY_LEN) != NULL);
        }
        evhttp_request_free(r.req); /* not answered: the caller would go on */
    } else {
        /* answered (and freed): a bad key is 401; the memory backend always answers */
        fuzz_assert(r.status == 401);
    }
    free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 4096)
        return 0;
    size_t n = size - 1;
    char *text = malloc(n ? n : 1);
    if (!text)
        abort();
    memcpy(text, data + 1, n);
    if (data[0] & 1)
        fix_checksums(text, n);
    check_generated();
    check_parsers(text, n);
    check_authenticate(text, n);
    free(text);
    return 0;
}
