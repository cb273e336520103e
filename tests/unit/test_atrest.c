/*
 * test_atrest -- compression and encryption of stored values (core/atrest.c)
 * over the real memory plugin, a real codec (zstd, else lz4) and the
 * xchacha20poly1305 cipher, all loaded with the real loader from
 * RHEMA_PLUGIN_DIR: round trips through every method that carries values,
 * no plaintext below the wrapper, every older form still readable (plain,
 * frame, envelope; after a rotation; options turned on and off), tampered
 * and moved values refused, versions passed through.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "atrest.h"
#include "codec.h"
#include "config.h"
#include "keyring.h"
#include "log.h"
#include "plugin.h"

#define MARKER "PLAINTEXT-MARKER-7f3a"
#define NS "atrest.test"

static struct rhema_plugin_registry *reg;
static const struct rhema_storage_plugin *memvt;
static const struct rhema_cipher_plugin *xchacha;
static struct rhema_cipher_table table;
static const char *codec_name; /* NULL: no codec built */

/* memory's vtable with a group() made of batch() calls, to exercise the wrapper's group */
static struct rhema_storage_plugin memvt_group;

static int fake_group(rhema_storage_conn *conn, struct rhema_storage_batch *g, size_t n)
{
    for (size_t i = 0; i < n; i++)
        g[i].result = memvt->batch(conn, g[i].writes, g[i].n);
    return 0;
}

/* and a get_many() made of get() calls, each value copied (valid until the next call) */
static char *fake_many_data[8];

static int fake_get_many(rhema_storage_conn *conn, const char *const *ns, const char *const *keys,
                         size_t n, struct rhema_storage_value *out, int *rcs)
{
    if (n > 8)
        return RHEMA_EINVAL;
    for (size_t i = 0; i < n; i++) {
        free(fake_many_data[i]);
        fake_many_data[i] = NULL;
        rcs[i] = memvt->get(conn, ns[i], keys[i], &out[i]);
        if (rcs[i] == 0) {
            fake_many_data[i] = malloc(out[i].len + 1);
            memcpy(fake_many_data[i], out[i].data, out[i].len);
            out[i].data = fake_many_data[i];
        } else if (rcs[i] != RHEMA_ENOTFOUND) {
            return rcs[i];
        }
    }
    return 0;
}

struct fx {
    char dir[64], key_file[128], ring[128];
    struct rhema_config cfg;
    struct rhema_codecs codecs;
    struct rhema_keyring *kr;
    rhema_storage_instance *inst; /* the real memory instance */
    rhema_storage_conn *raw;      /* a real connection: what is stored */
};

/* A wrapper and one connection of it. */
struct wrapped {
    struct rhema_atrest *a;
    const struct rhema_storage_plugin *vt;
    rhema_storage_conn *conn;
};

static int group_setup(void **state)
{
    static const char *const codecs[] = {"zstd", "lz4"};
    const char *dir = getenv("RHEMA_PLUGIN_DIR");
    const struct rhema_loaded_plugin *p;
    char *err = NULL;
    (void)state;
    if (!dir)
        dir = "plugins/.libs";
    rhema_log_set_level(RHEMA_LOG_WARN);
    if (sodium_init() < 0 || rhema_plugins_new(&reg) != 0)
        return -1;
    if (rhema_plugin_load(reg, "memory", dir, RHEMA_KIND_STORAGE, &p, &err) != 0) {
        fprintf(stderr, "# memory: %s\n", err ? err : "?");
        free(err);
        return -1;
    }
    memvt = &p->vt.storage;
    memvt_group = *memvt;
    memvt_group.group = fake_group;
    memvt_group.get_many = fake_get_many;
    memvt_group.rate = NULL; /* a plugin without rate() */
    for (size_t i = 0; i < 2 && !codec_name; i++) {
        if (rhema_plugin_load(reg, codecs[i], dir, RHEMA_KIND_COMPRESS, &p, &err) == 0)
            codec_name = codecs[i];
        else
            fprintf(stderr, "# codec %s not loaded: %s\n", codecs[i], err ? err : "?");
        free(err);
        err = NULL;
    }
    if (rhema_plugin_load(reg, "xchacha20poly1305", dir, RHEMA_KIND_CIPHER, &p, &err) == 0)
        xchacha = &p->vt.cipher;
    else
        fprintf(stderr, "# cipher xchacha20poly1305 not loaded: %s\n", err ? err : "?");
    free(err);
    rhema_cipher_table_fill(&table, reg);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    rhema_plugins_free(reg);
    return 0;
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    char algo[96];
    const char *overrides[] = {algo, "advanced_features.compression.threshold_bytes=32"};
    unsigned char key[32];
    char *err = NULL;
    snprintf(algo, sizeof algo, "advanced_features.compression.algorithm=%s",
             codec_name ? codec_name : "zstd");
    if (!f || rhema_config_load(&f->cfg, NULL, overrides, 2, NULL, &err) != 0 ||
        rhema_codecs_open(&f->codecs, reg, &f->cfg, &err) != 0) {
        fprintf(stderr, "# setup: %s\n", err ? err : "?");
        free(err);
        return -1;
    }
    strcpy(f->dir, "/tmp/rhema-atrest-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->key_file, sizeof f->key_file, "%s/master.key", f->dir);
    snprintf(f->ring, sizeof f->ring, "%s/keyring", f->dir);
    randombytes_buf(key, sizeof key);
    int fd = open(f->key_file, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, key, sizeof key) != (ssize_t)sizeof key)
        return -1;
    close(fd);
    if (xchacha) {
        struct rhema_keyring_params p;
        char kerr[RHEMA_KEYRING_ERR_MAX];
        memset(&p, 0, sizeof p);
        p.path = f->ring;
        p.key_file = f->key_file;
        p.cipher = xchacha;
        p.ciphers = &table;
        p.min_decryption_version = 1;
        if (rhema_keyring_open(&p, &f->kr, kerr) != 0) {
            fprintf(stderr, "# keyring: %s\n", kerr);
            return -1;
        }
    }
    if (memvt->open(rhema_host_get(), NULL, &f->inst, &err) != 0 ||
        memvt->connect(f->inst, &f->raw, &err) != 0) {
        fprintf(stderr, "# memory: %s\n", err ? err : "?");
        free(err);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    char cmd[128];
    memvt->disconnect(f->raw);
    memvt->close(f->inst);
    rhema_keyring_close(f->kr);
    rhema_codecs_close(&f->codecs);
    rhema_config_release(&f->cfg);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    if (system(cmd) != 0)
        return -1;
    free(f);
    return 0;
}

/* Skip unless what the test needs was built. */
static void need(int codec, int cipher)
{
    if (codec && !codec_name)
        skip();
    if (cipher && !xchacha)
        skip();
}

static struct wrapped wrap_vt(struct fx *f, const struct rhema_storage_plugin *real, int compress,
                              int encrypt)
{
    struct wrapped w = {0};
    char *err = NULL;
    int rc = rhema_atrest_wrap(real, f->inst, &f->codecs, f->kr, compress, encrypt, &w.a, &err);
    if (rc)
        fail_msg("wrap: %s", err ? err : rhema_strerror(rc));
    w.vt = rhema_atrest_vtable(w.a);
    rc = w.vt->connect(rhema_atrest_instance(w.a), &w.conn, &err);
    if (rc)
        fail_msg("connect: %s", err ? err : rhema_strerror(rc));
    return w;
}

static struct wrapped wrap(struct fx *f, int compress, int encrypt)
{
    return wrap_vt(f, memvt, compress, encrypt);
}

/* Disconnect and free the wrapper; the memory instance stays open. */
static void unwrap(struct wrapped *w)
{
    w->vt->disconnect(w->conn);
    rhema_atrest_free(w->a);
    memset(w, 0, sizeof *w);
}

/* A JSON value of len bytes (len >= 40), compressible, with MARKER inside. */
static char *json_value(size_t len, int salt)
{
    char *v = malloc(len + 1);
    size_t n = (size_t)snprintf(v, len + 1, "{\"salt\":%d,\"topic\":\"", salt);
    static const char unit[] = MARKER " the agents agree on the plan; ";
    while (n < len - 2) {
        v[n] = unit[n % (sizeof unit - 1)];
        n++;
    }
    memcpy(v + len - 2, "\"}", 2);
    v[len] = '\0';
    return v;
}

static uint64_t put_ok(const struct wrapped *w, const char *key, const void *v, size_t len,
                       uint64_t expected)
{
    struct rhema_storage_write wr = {.size = sizeof(struct rhema_storage_write),
                                     .op = RHEMA_WRITE_PUT,
                                     .ns = NS,
                                     .key = key,
                                     .value = v,
                                     .value_len = len,
                                     .expected_version = expected};
    int rc = w->vt->put(w->conn, &wr);
    if (rc)
        fail_msg("put %s: %s (%s)", key, rhema_strerror(rc), w->vt->errmsg(w->conn));
    assert_true(wr.new_version > 0);
    return wr.new_version;
}

static void get_eq(const struct wrapped *w, const char *key, const void *v, size_t len,
                   uint64_t version)
{
    struct rhema_storage_value out = {.size = sizeof(struct rhema_storage_value)};
    int rc = w->vt->get(w->conn, NS, key, &out);
    if (rc)
        fail_msg("get %s: %s (%s)", key, rhema_strerror(rc), w->vt->errmsg(w->conn));
    assert_int_equal(out.len, len);
    if (len)
        assert_memory_equal(out.data, v, len);
    if (version)
        assert_int_equal(out.version, version);
}

/* The stored bytes of key, through the real vtable (a malloc'd copy). */
static struct rhema_buf raw_get(struct fx *f, const char *ns, const char *key, uint64_t *version)
{
    struct rhema_storage_value out = {.size = sizeof(struct rhema_storage_value)};
    struct rhema_buf b;
    int rc = memvt->get(f->raw, ns, key, &out);
    if (rc)
        fail_msg("raw get %s: %s", key, rhema_strerror(rc));
    b.data = malloc(out.len + 1);
    memcpy(b.data, out.data, out.len);
    b.len = out.len;
    if (version)
        *version = out.version;
    return b;
}

static void raw_put(struct fx *f, const char *ns, const char *key, const void *v, size_t len)
{
    struct rhema_storage_write wr = {.size = sizeof(struct rhema_storage_write),
                                     .op = RHEMA_WRITE_PUT,
                                     .ns = ns,
                                     .key = key,
                                     .value = v,
                                     .value_len = len};
    assert_int_equal(memvt->put(f->raw, &wr), 0);
}

static int contains(const struct rhema_buf *b, const char *needle)
{
    size_t n = strlen(needle);
    for (size_t i = 0; i + n <= b->len; i++)
        if (memcmp(b->data + i, needle, n) == 0)
            return 1;
    return 0;
}

/* The stored value of key is an envelope with no plaintext in it. */
static void assert_sealed(struct fx *f, const char *ns, const char *key)
{
    struct rhema_buf b = raw_get(f, ns, key, NULL);
    assert_true(b.len > RHEMA_ENVELOPE_FIXED);
    assert_memory_equal(b.data, "RE\x01", 3);
    assert_false(contains(&b, MARKER));
    assert_false(contains(&b, "topic"));
    free(b.data);
}

/* ---- round trips ---- */

static void put_get_both_options(void **state)
{
    struct fx *f = *state;
    need(1, 1);
    struct wrapped w = wrap(f, 1, 1);
    char *big = json_value(4000, 1), *small = json_value(40, 2);
    uint64_t v1 = put_ok(&w, "big", big, strlen(big), RHEMA_VERSION_ABSENT);
    uint64_t v2 = put_ok(&w, "small", small, strlen(small), RHEMA_VERSION_ANY);
    get_eq(&w, "big", big, strlen(big), v1);
    get_eq(&w, "small", small, strlen(small), v2);
    assert_sealed(f, NS, "big");
    assert_sealed(f, NS, "small");
    /* compressed inside: the stored envelope is much smaller than the value */
    struct rhema_buf b = raw_get(f, NS, "big", NULL);
    assert_true(b.len < strlen(big) / 2);
    free(b.data);
    /* an empty value stays empty (index entries) */
    put_ok(&w, "empty", "", 0, 0);
    b = raw_get(f, NS, "empty", NULL);
    assert_int_equal(b.len, 0);
    free(b.data);
    get_eq(&w, "empty", "", 0, 0);
    free(big);
    free(small);
    unwrap(&w);
}

static void written_forms(void **state)
{
    struct fx *f = *state;
    need(1, 1);
    char *big = json_value(3000, 3);
    /* compression alone: always a frame, compressed with the configured codec */
    struct wrapped w = wrap(f, 1, 0);
    put_ok(&w, "c", big, strlen(big), 0);
    put_ok(&w, "c-small", "{\"a\":1}", 7, 0);
    struct rhema_buf b = raw_get(f, NS, "c", NULL);
    assert_memory_equal(b.data, "RZ\x01", 3);
    assert_int_equal(b.data[3], f->codecs.default_id);
    assert_true(b.len < strlen(big));
    free(b.data);
    b = raw_get(f, NS, "c-small", NULL); /* below the threshold: a stored frame */
    assert_memory_equal(b.data, "RZ\x01\x00", 4);
    assert_int_equal(b.len, RHEMA_FRAME_HEADER + 7);
    free(b.data);
    get_eq(&w, "c", big, strlen(big), 0);
    get_eq(&w, "c-small", "{\"a\":1}", 7, 0);
    unwrap(&w);
    /* encryption alone: an envelope around a stored frame */
    w = wrap(f, 0, 1);
    put_ok(&w, "e", big, strlen(big), 0);
    assert_sealed(f, NS, "e");
    b = raw_get(f, NS, "e", NULL);
    assert_true(b.len > strlen(big)); /* not compressed */
    free(b.data);
    get_eq(&w, "e", big, strlen(big), 0);
    unwrap(&w);
    /* both off: as is */
    w = wrap(f, 0, 0);
    put_ok(&w, "p", big, strlen(big), 0);
    b = raw_get(f, NS, "p", NULL);
    assert_int_equal(b.len, strlen(big));
    assert_memory_equal(b.data, big, b.len);
    free(b.data);
    unwrap(&w);
    free(big);
}

struct collected {
    size_t n;
    char keys[8][16];
    char *vals[8];
    size_t lens[8];
    uint64_t versions[8];
};

static int collect(void *ctx, const char *key, const void *value, size_t len, uint64_t version)
{
    struct collected *c = ctx;
    if (c->n == 8)
        return 1;
    snprintf(c->keys[c->n], sizeof c->keys[c->n], "%s", key);
    c->vals[c->n] = NULL; /* NULL value: unreadable (atrest.h) */
    if (value) {
        c->vals[c->n] = malloc(len + 1);
        memcpy(c->vals[c->n], value, len);
    }
    c->lens[c->n] = len;
    c->versions[c->n++] = version;
    return 0;
}

static void collected_free(struct collected *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->vals[i]);
}

static void batch_group_scan(void **state)
{
    struct fx *f = *state;
    need(1, 1);
    struct wrapped w = wrap_vt(f, &memvt_group, 1, 1);
    char *v[4];
    for (int i = 0; i < 4; i++)
        v[i] = json_value(200 + 300 * (size_t)i, 10 + i);
    put_ok(&w, "k0", v[0], strlen(v[0]), 0);
    /* a batch: two puts, a delete, and a put of a key written by the batch */
    struct rhema_storage_write b[4] = {
        {.size = sizeof(struct rhema_storage_write),
         .op = RHEMA_WRITE_PUT,
         .ns = NS,
         .key = "k1",
         .value = v[1],
         .value_len = strlen(v[1]),
         .expected_version = RHEMA_VERSION_ABSENT},
        {.size = sizeof(struct rhema_storage_write),
         .op = RHEMA_WRITE_PUT,
         .ns = NS,
         .key = "k2",
         .value = v[2],
         .value_len = strlen(v[2])},
        {.size = sizeof(struct rhema_storage_write), .op = RHEMA_WRITE_DEL, .ns = NS, .key = "k0"},
        {.size = sizeof(struct rhema_storage_write),
         .op = RHEMA_WRITE_PUT,
         .ns = NS,
         .key = "k2",
         .value = v[3],
         .value_len = strlen(v[3])},
    };
    int rc = w.vt->batch(w.conn, b, 4);
    if (rc)
        fail_msg("batch: %s (%s)", rhema_strerror(rc), w.vt->errmsg(w.conn));
    assert_true(b[0].new_version > 0 && b[3].new_version > b[1].new_version);
    assert_ptr_equal(b[1].value, v[2]); /* the caller's array is left as it was */
    get_eq(&w, "k1", v[1], strlen(v[1]), b[0].new_version);
    get_eq(&w, "k2", v[3], strlen(v[3]), b[3].new_version);
    struct rhema_storage_value out = {.size = sizeof(struct rhema_storage_value)};
    assert_int_equal(w.vt->get(w.conn, NS, "k0", &out), RHEMA_ENOTFOUND);
    assert_sealed(f, NS, "k1");
    assert_sealed(f, NS, "k2");
    /* a failed batch changes nothing */
    struct rhema_storage_write bad[2] = {
        {.size = sizeof(struct rhema_storage_write),
         .op = RHEMA_WRITE_PUT,
         .ns = NS,
         .key = "k3",
         .value = v[0],
         .value_len = strlen(v[0])},
        {.size = sizeof(struct rhema_storage_write),
         .op = RHEMA_WRITE_PUT,
         .ns = NS,
         .key = "k1",
         .value = v[0],
         .value_len = strlen(v[0]),
         .expected_version = RHEMA_VERSION_ABSENT},
    };
    assert_int_equal(w.vt->batch(w.conn, bad, 2), RHEMA_ECONFLICT);
    assert_int_equal(w.vt->get(w.conn, NS, "k3", &out), RHEMA_ENOTFOUND);
    /* a group: one member applies, one conflicts */
    struct rhema_storage_write g0[1] = {{.size = sizeof(struct rhema_storage_write),
                                         .op = RHEMA_WRITE_PUT,
                                         .ns = NS,
                                         .key = "k4",
                                         .value = v[0],
                                         .value_len = strlen(v[0])}};
    struct rhema_storage_write g1[1] = {{.size = sizeof(struct rhema_storage_write),
                                         .op = RHEMA_WRITE_PUT,
                                         .ns = NS,
                                         .key = "k1",
                                         .value = v[0],
                                         .value_len = strlen(v[0]),
                                         .expected_version = RHEMA_VERSION_ABSENT}};
    struct rhema_storage_batch g[2] = {{sizeof(struct rhema_storage_batch), -99, g0, 1},
                                       {sizeof(struct rhema_storage_batch), -99, g1, 1}};
    assert_non_null(w.vt->group);
    assert_int_equal(w.vt->group(w.conn, g, 2), 0);
    assert_int_equal(g[0].result, 0);
    assert_int_equal(g[1].result, RHEMA_ECONFLICT);
    assert_true(g0[0].new_version > b[3].new_version);
    get_eq(&w, "k4", v[0], strlen(v[0]), g0[0].new_version);
    get_eq(&w, "k1", v[1], strlen(v[1]), b[0].new_version);
    assert_sealed(f, NS, "k4");
    /* scan hands out plaintext, in key order, with the stored versions */
    struct collected c = {0};
    assert_int_equal(w.vt->scan(w.conn, NS, NULL, NULL, 0, collect, &c), 0);
    assert_int_equal(c.n, 3);
    assert_string_equal(c.keys[0], "k1");
    assert_string_equal(c.keys[1], "k2");
    assert_string_equal(c.keys[2], "k4");
    assert_int_equal(c.lens[1], strlen(v[3]));
    assert_memory_equal(c.vals[1], v[3], c.lens[1]);
    assert_int_equal(c.versions[1], b[3].new_version);
    assert_memory_equal(c.vals[2], v[0], c.lens[2]);
    collected_free(&c);
    /* get_many hands out plaintext too; a missing key is ENOTFOUND */
    {
        const char *keys[4] = {"k2", "nope", "k1", "k2"}, *nss[4] = {NS, NS, NS, NS};
        struct rhema_storage_value vals[4];
        int rcs[4];
        for (size_t i = 0; i < 4; i++)
            vals[i].size = sizeof vals[i];
        assert_non_null(w.vt->get_many);
        assert_int_equal(w.vt->get_many(w.conn, nss, keys, 4, vals, rcs), 0);
        assert_int_equal(rcs[0], 0);
        assert_int_equal(rcs[1], RHEMA_ENOTFOUND);
        assert_int_equal(rcs[2], 0);
        assert_int_equal(rcs[3], 0);
        assert_int_equal(vals[0].len, strlen(v[3]));
        assert_memory_equal(vals[0].data, v[3], vals[0].len);
        assert_int_equal(vals[0].version, b[3].new_version);
        assert_int_equal(vals[2].len, strlen(v[1]));
        assert_memory_equal(vals[2].data, v[1], vals[2].len); /* each value its own buffer */
        assert_memory_equal(vals[3].data, v[3], vals[3].len);
    }
    /* the wrapper keeps the real plugin's identity and optional methods */
    assert_string_equal(w.vt->base.name, "memory");
    assert_int_equal(w.vt->features, memvt->features);
    assert_non_null(w.vt->backup);
    for (int i = 0; i < 4; i++)
        free(v[i]);
    unwrap(&w);
    /* no group below: none above (the host then batches member by member);
     * get_many above exactly when below */
    w = wrap(f, 1, 1);
    assert_null(memvt->group);
    assert_null(w.vt->group);
    assert_int_equal(w.vt->get_many != NULL, memvt->get_many != NULL);
    unwrap(&w);
    for (size_t i = 0; i < 8; i++)
        free(fake_many_data[i]);
}

/* ---- older forms stay readable ---- */

static void plain_records_readable_with_options_on(void **state)
{
    struct fx *f = *state;
    need(1, 1);
    char *big = json_value(2000, 4);
    raw_put(f, NS, "legacy", big, strlen(big)); /* written before the wrapper existed */
    struct wrapped w = wrap(f, 0, 0);
    uint64_t v = put_ok(&w, "off", big, strlen(big), 0);
    unwrap(&w);
    w = wrap(f, 1, 1);
    get_eq(&w, "legacy", big, strlen(big), 0);
    get_eq(&w, "off", big, strlen(big), v);
    struct collected c = {0};
    assert_int_equal(w.vt->scan(w.conn, NS, NULL, NULL, 0, collect, &c), 0);
    assert_int_equal(c.n, 2);
    assert_memory_equal(c.vals[0], big, c.lens[0]);
    collected_free(&c);
    /* an overwrite with the options on seals it */
    put_ok(&w, "legacy", big, strlen(big), 0);
    assert_sealed(f, NS, "legacy");
    unwrap(&w);
    free(big);
}

static void compression_on_then_off(void **state)
{
    struct fx *f = *state;
    need(1, 0);
    char *big = json_value(5000, 5);
    struct wrapped w = wrap(f, 1, 0);
    uint64_t v = put_ok(&w, "z", big, strlen(big), 0);
    unwrap(&w);
    w = wrap(f, 0, 0); /* compression turned off: the frame still reads */
    get_eq(&w, "z", big, strlen(big), v);
    unwrap(&w);
    if (xchacha) { /* and with encryption turned on instead */
        w = wrap(f, 0, 1);
        get_eq(&w, "z", big, strlen(big), v);
        unwrap(&w);
    }
    free(big);
}

static void encryption_on_then_off(void **state)
{
    struct fx *f = *state;
    need(0, 1);
    char *big = json_value(500, 6);
    struct wrapped w = wrap(f, 0, 1);
    uint64_t v = put_ok(&w, "e", big, strlen(big), 0);
    unwrap(&w);
    w = wrap(f, 0, 0); /* encryption off, keyring still open: reads */
    get_eq(&w, "e", big, strlen(big), v);
    put_ok(&w, "e2", big, strlen(big), 0); /* and writes plain */
    struct rhema_buf b = raw_get(f, NS, "e2", NULL);
    assert_memory_equal(b.data, big, b.len);
    free(b.data);
    unwrap(&w);
    /* no keyring at all: refused with a message, never the envelope */
    struct rhema_atrest *a;
    char *err = NULL;
    assert_int_equal(rhema_atrest_wrap(memvt, f->inst, &f->codecs, NULL, 0, 0, &a, &err), 0);
    const struct rhema_storage_plugin *vt = rhema_atrest_vtable(a);
    rhema_storage_conn *conn;
    assert_int_equal(vt->connect(rhema_atrest_instance(a), &conn, &err), 0);
    struct rhema_storage_value out = {.size = sizeof(struct rhema_storage_value)};
    assert_int_equal(vt->get(conn, NS, "e", &out), RHEMA_ECORRUPT);
    assert_non_null(strstr(vt->errmsg(conn), "key management"));
    vt->disconnect(conn);
    rhema_atrest_free(a);
    free(big);
}

static void key_rotation_between_writes(void **state)
{
    struct fx *f = *state;
    need(1, 1);
    char *a = json_value(900, 7), *b = json_value(900, 8);
    struct wrapped w = wrap(f, 1, 1);
    put_ok(&w, "before", a, strlen(a), 0);
    uint32_t nv = 0, kv = 0;
    char kerr[RHEMA_KEYRING_ERR_MAX];
    assert_int_equal(rhema_keyring_rotate(f->kr, &nv, kerr), 0);
    assert_int_equal(nv, 2);
    put_ok(&w, "after", b, strlen(b), 0);
    struct rhema_buf r = raw_get(f, NS, "before", NULL);
    assert_int_equal(rhema_envelope_key_version(r.data, r.len, &kv), 0);
    assert_int_equal(kv, 1);
    free(r.data);
    r = raw_get(f, NS, "after", NULL);
    assert_int_equal(rhema_envelope_key_version(r.data, r.len, &kv), 0);
    assert_int_equal(kv, 2);
    free(r.data);
    get_eq(&w, "before", a, strlen(a), 0);
    get_eq(&w, "after", b, strlen(b), 0);
    unwrap(&w);
    free(a);
    free(b);
}

/* A value that begins like a frame or an envelope, written with both options off. */
static void magic_lookalikes_round_trip(void **state)
{
    struct fx *f = *state;
    static const char fake_frame[] = "RZ\x01\x02 not a frame at all";
    static const char fake_env[] = "RE\x01\x03 not an envelope";
    struct wrapped w = wrap(f, 0, 0);
    put_ok(&w, "ff", fake_frame, sizeof fake_frame - 1, 0);
    put_ok(&w, "fe", fake_env, sizeof fake_env - 1, 0);
    struct rhema_buf b = raw_get(f, NS, "ff", NULL); /* escaped as a stored frame */
    assert_int_equal(b.len, RHEMA_FRAME_HEADER + sizeof fake_frame - 1);
    assert_memory_equal(b.data, "RZ\x01\x00", 4);
    free(b.data);
    get_eq(&w, "ff", fake_frame, sizeof fake_frame - 1, 0);
    get_eq(&w, "fe", fake_env, sizeof fake_env - 1, 0);
    unwrap(&w);
}

/* ---- refusals ---- */

static void tampered_values_are_corrupt(void **state)
{
    struct fx *f = *state;
    need(1, 1);
    char *big = json_value(1500, 9);
    struct wrapped w = wrap(f, 1, 1);
    put_ok(&w, "t", big, strlen(big), 0);
    struct rhema_buf b = raw_get(f, NS, "t", NULL);
    struct rhema_storage_value out = {.size = sizeof(struct rhema_storage_value)};
    for (size_t i = 3; i < b.len; i += 7) { /* every part: header, nonce, ciphertext, tag */
        b.data[i] ^= 0x20;
        raw_put(f, NS, "t", b.data, b.len);
        b.data[i] ^= 0x20;
        assert_int_equal(w.vt->get(w.conn, NS, "t", &out), RHEMA_ECORRUPT);
        assert_true(strlen(w.vt->errmsg(w.conn)) > 0);
    }
    raw_put(f, NS, "t", b.data, b.len - 1); /* truncated */
    assert_int_equal(w.vt->get(w.conn, NS, "t", &out), RHEMA_ECORRUPT);
    assert_non_null(strstr(w.vt->errmsg(w.conn), "does not decrypt"));
    /* a scan goes on: the key is reported with a NULL value, the cause in errmsg() */
    struct collected c = {0};
    assert_int_equal(w.vt->scan(w.conn, NS, NULL, NULL, 0, collect, &c), 0);
    size_t seen = 0;
    for (size_t i = 0; i < c.n; i++)
        if (strcmp(c.keys[i], "t") == 0) {
            seen++;
            assert_null(c.vals[i]);
            assert_int_equal(c.lens[i], 0);
        } else {
            assert_non_null(c.vals[i]);
        }
    assert_int_equal(seen, 1);
    assert_non_null(strstr(w.vt->errmsg(w.conn), "does not decrypt"));
    collected_free(&c);
    /* back intact: reads again, and the error message is gone */
    raw_put(f, NS, "t", b.data, b.len);
    get_eq(&w, "t", big, strlen(big), 0);
    assert_null(strstr(w.vt->errmsg(w.conn), "does not decrypt"));
    free(b.data);
    unwrap(&w);
    /* a damaged frame (compression alone) */
    w = wrap(f, 1, 0);
    put_ok(&w, "z", big, strlen(big), 0);
    b = raw_get(f, NS, "z", NULL);
    b.data[b.len / 2] ^= 0xff;
    b.data[b.len / 2 + 1] ^= 0xff;
    raw_put(f, NS, "z", b.data, b.len - 5);
    assert_int_equal(w.vt->get(w.conn, NS, "z", &out), RHEMA_ECORRUPT);
    assert_non_null(strstr(w.vt->errmsg(w.conn), "does not unframe"));
    free(b.data);
    unwrap(&w);
    free(big);
}

static void moved_values_are_refused(void **state)
{
    struct fx *f = *state;
    need(0, 1);
    char *big = json_value(300, 11);
    struct wrapped w = wrap(f, 0, 1);
    put_ok(&w, "src", big, strlen(big), 0);
    struct rhema_buf b = raw_get(f, NS, "src", NULL);
    raw_put(f, NS, "dst", b.data, b.len);          /* another key */
    raw_put(f, NS ".other", "src", b.data, b.len); /* the same key in another namespace */
    struct rhema_storage_value out = {.size = sizeof(struct rhema_storage_value)};
    assert_int_equal(w.vt->get(w.conn, NS, "dst", &out), RHEMA_ECORRUPT);
    assert_int_equal(w.vt->get(w.conn, NS ".other", "src", &out), RHEMA_ECORRUPT);
    get_eq(&w, "src", big, strlen(big), 0);
    free(b.data);
    free(big);
    unwrap(&w);
}

static void versions_pass_through(void **state)
{
    struct fx *f = *state;
    need(1, 1);
    struct wrapped w = wrap(f, 1, 1);
    char *v = json_value(700, 12);
    uint64_t v1 = put_ok(&w, "cas", v, strlen(v), RHEMA_VERSION_ABSENT), rv = 0;
    struct rhema_buf b = raw_get(f, NS, "cas", &rv);
    assert_int_equal(rv, v1);
    free(b.data);
    struct rhema_storage_write wr = {.size = sizeof(struct rhema_storage_write),
                                     .op = RHEMA_WRITE_PUT,
                                     .ns = NS,
                                     .key = "cas",
                                     .value = v,
                                     .value_len = strlen(v),
                                     .expected_version = RHEMA_VERSION_ABSENT};
    assert_int_equal(w.vt->put(w.conn, &wr), RHEMA_ECONFLICT);
    uint64_t v2 = put_ok(&w, "cas", v, strlen(v), v1);
    assert_true(v2 > v1);
    wr.expected_version = v1; /* stale */
    assert_int_equal(w.vt->put(w.conn, &wr), RHEMA_ECONFLICT);
    get_eq(&w, "cas", v, strlen(v), v2);
    assert_int_equal(w.vt->del(w.conn, NS, "cas", v1), RHEMA_ECONFLICT);
    assert_int_equal(w.vt->del(w.conn, NS, "cas", v2), 0);
    uint64_t v3 = put_ok(&w, "cas", v, strlen(v), RHEMA_VERSION_ABSENT);
    assert_true(v3 > v2);
    /* leases and health pass through */
    struct rhema_lease_info li;
    assert_int_equal(w.vt->lease(w.conn, "leader", "me", 10000, RHEMA_LEASE_ACQUIRE, &li), 0);
    assert_true(li.epoch > 0);
    char *err = NULL;
    assert_int_equal(w.vt->health(w.conn, &err), 0);
    free(v);
    unwrap(&w);
}

static void wrap_refusals(void **state)
{
    struct fx *f = *state;
    struct rhema_atrest *a = NULL;
    char *err = NULL;
    /* encryption without a keyring */
    assert_int_equal(rhema_atrest_wrap(memvt, f->inst, &f->codecs, NULL, 0, 1, &a, &err),
                     RHEMA_EINVAL);
    assert_null(a);
    assert_non_null(strstr(err, "key management"));
    free(err);
    err = NULL;
    /* compression without a codec */
    struct rhema_codecs none = f->codecs;
    none.default_id = -1;
    assert_int_equal(rhema_atrest_wrap(memvt, f->inst, &none, f->kr, 1, 0, &a, &err),
                     RHEMA_EINVAL);
    assert_null(a);
    assert_non_null(strstr(err, "codec"));
    free(err);
    err = NULL;
    /* the configuration checks (rhemad -t) */
    struct rhema_config cfg = f->cfg;
    cfg.enable_encryption = 1;
    assert_int_equal(rhema_atrest_check(&cfg, &f->codecs, &err), RHEMA_EINVAL);
    assert_non_null(strstr(err, "persistence.enable_encryption needs key management"));
    free(err);
    err = NULL;
    cfg.enable_encryption = 0;
    cfg.enable_compression = 1;
    assert_int_equal(rhema_atrest_check(&cfg, &none, &err), RHEMA_EINVAL);
    assert_non_null(strstr(err, "persistence.enable_compression"));
    free(err);
    err = NULL;
    if (codec_name)
        assert_int_equal(rhema_atrest_check(&cfg, &f->codecs, &err), 0);
    /* a value too large to be read back is refused at write time */
    if (codec_name) {
        struct rhema_codecs small = f->codecs;
        small.max_decompressed = 100;
        assert_int_equal(rhema_atrest_wrap(memvt, f->inst, &small, f->kr, 1, 0, &a, &err), 0);
        const struct rhema_storage_plugin *vt = rhema_atrest_vtable(a);
        rhema_storage_conn *conn;
        assert_int_equal(vt->connect(rhema_atrest_instance(a), &conn, &err), 0);
        char *v = json_value(200, 13);
        struct rhema_storage_write wr = {.size = sizeof(struct rhema_storage_write),
                                         .op = RHEMA_WRITE_PUT,
                                         .ns = NS,
                                         .key = "huge",
                                         .value = v,
                                         .value_len = strlen(v)};
        assert_int_equal(vt->put(conn, &wr), RHEMA_ETOOBIG);
        assert_non_null(strstr(vt->errmsg(conn), "max_decompressed_bytes"));
        struct rhema_storage_value out = {.size = sizeof(struct rhema_storage_value)};
        assert_int_equal(vt->get(conn, NS, "huge", &out), RHEMA_ENOTFOUND);
        free(v);
        vt->disconnect(conn);
        rhema_atrest_free(a);
    }
}

/* close() of the wrapper closes the real instance too (what main.c relies on). */
/*
 * rate() passes through to the real plugin: the same outcome and state
 * (the memory plugin's table), its EINVAL and message; NULL when the real
 * plugin has none.
 */
static void rate_passes_through(void **state)
{
    struct fx *f = *state;
    const struct rhema_rate_window win[1] = {{3600000000ull, 3600000000ull}};
    struct rhema_rate_query q = {
        .size = sizeof q, .key = "party", .windows = win, .n = 1, .now_us = 1000000};
    struct wrapped w = wrap(f, 0, 0);
    assert_non_null(w.vt->rate);
    assert_int_equal(w.vt->rate(w.conn, &q), 0);
    assert_int_equal(q.allowed, 1);
    assert_int_equal(q.tat_us[0], 1000000 + 3600000000ll);
    /* the real plugin holds the state: its own connection sees the second request */
    q.now_us = 2000000;
    assert_int_equal(memvt->rate(f->raw, &q), 0);
    assert_int_equal(q.allowed, 1);
    assert_int_equal(w.vt->rate(w.conn, &q), 0);
    assert_int_equal(q.allowed, 0); /* tolerance one interval: two allowed */
    assert_int_equal(q.tat_us[0], 1000000 + 2 * 3600000000ll);
    q.n = 0;
    assert_int_equal(w.vt->rate(w.conn, &q), RHEMA_EINVAL);
    assert_non_null(strstr(w.vt->errmsg(w.conn), "window"));
    unwrap(&w);
    w = wrap_vt(f, &memvt_group, 0, 0);
    assert_null(w.vt->rate);
    unwrap(&w);
}

static void close_owns_the_real_instance(void **state)
{
    (void)state;
    struct rhema_codecs none;
    memset(&none, 0, sizeof none);
    none.default_id = -1;
    none.max_decompressed = 1 << 20;
    rhema_storage_instance *inst;
    char *err = NULL;
    assert_int_equal(memvt->open(rhema_host_get(), NULL, &inst, &err), 0);
    struct rhema_atrest *a;
    assert_int_equal(rhema_atrest_wrap(memvt, inst, &none, NULL, 0, 0, &a, &err), 0);
    const struct rhema_storage_plugin *vt = rhema_atrest_vtable(a);
    rhema_storage_instance *wi = rhema_atrest_instance(a);
    assert_int_equal(vt->open(rhema_host_get(), NULL, &wi, &err), RHEMA_ENOTSUP);
    free(err);
    vt->close(wi); /* valgrind: nothing leaks */
}

/* persistence.max_record_size_bytes: a longer value is refused and nothing of its batch written */
static void record_size_limit(void **state)
{
    struct fx *f = *state;
    struct wrapped w = wrap(f, 0, 0);
    struct rhema_storage_value out = {.size = sizeof(struct rhema_storage_value)};
    rhema_atrest_set_max_record(w.a, 100);
    char big[101];
    memset(big, 'x', sizeof big);
    put_ok(&w, "fits", big, 100, 0);
    struct rhema_storage_write wr[2] = {
        {.size = sizeof(struct rhema_storage_write), .op = RHEMA_WRITE_PUT, .ns = NS,
         .key = "small", .value = "s", .value_len = 1},
        {.size = sizeof(struct rhema_storage_write), .op = RHEMA_WRITE_PUT, .ns = NS,
         .key = "big", .value = big, .value_len = 101},
    };
    assert_int_equal(w.vt->put(w.conn, &wr[1]), RHEMA_ETOOBIG);
    assert_non_null(strstr(w.vt->errmsg(w.conn), "persistence.max_record_size_bytes"));
    assert_int_equal(w.vt->batch(w.conn, wr, 2), RHEMA_ETOOBIG);
    assert_int_equal(w.vt->get(w.conn, NS, "small", &out), RHEMA_ENOTFOUND);
    assert_int_equal(w.vt->get(w.conn, NS, "big", &out), RHEMA_ENOTFOUND);
    rhema_atrest_set_max_record(w.a, 0); /* none */
    put_ok(&w, "big", big, 101, 0);
    unwrap(&w);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(put_get_both_options),
        T(written_forms),
        T(batch_group_scan),
        T(plain_records_readable_with_options_on),
        T(compression_on_then_off),
        T(encryption_on_then_off),
        T(key_rotation_between_writes),
        T(magic_lookalikes_round_trip),
        T(tampered_values_are_corrupt),
        T(moved_values_are_refused),
        T(versions_pass_through),
        T(wrap_refusals),
        T(record_size_limit),
        T(rate_passes_through),
        cmocka_unit_test(close_owns_the_real_instance),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
