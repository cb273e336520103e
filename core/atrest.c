/*
 * atrest -- compression and encryption of stored values (see atrest.h).
 */
#include "rhema_build.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atrest.h"
#include "metrics/metrics.h"
#include "util.h"

#define AD_LABEL "rhema-atrest/1"
#define AD_MAX (sizeof AD_LABEL + RHEMA_STORAGE_NS_MAX + 1 + RHEMA_STORAGE_KEY_MAX)
#define MSG_MAX 512

struct rhema_atrest {
    struct rhema_storage_plugin vt; /* the wrapper vtable, with the real plugin's header */
    const struct rhema_storage_plugin *real;
    rhema_storage_instance *real_inst;
    const struct rhema_codecs *codecs;
    struct rhema_keyring *kr; /* NULL: envelopes cannot be read or written */
    int compress, encrypt;
    uint64_t max_record; /* persistence.max_record_size_bytes; 0: none */
};

/* One per thread, like the real connection it holds. */
struct atrest_conn {
    struct rhema_atrest *a;
    rhema_storage_conn *real;
    struct rhema_codec_ctxs ctxs;
    struct rhema_buf got; /* the decoded value of the last get() */
    struct rhema_buf *many; /* the decoded values of the last get_many() */
    size_t many_n;
    char msg[MSG_MAX];    /* the last transform error; "" when the real one applies */
    uint64_t t0;          /* when the current real call began (TIMED), 0: not timed */
};

#define AT(inst) ((struct rhema_atrest *)(void *)(inst))
#define CONN(c) ((struct atrest_conn *)(void *)(c))

/*
 * The real call, timed for GET /metrics (metrics.h): one clock read pair
 * per call, counted on the calling thread's block.  Not found and version
 * conflicts are answers, not errors.
 */
static int timed(enum rhema_metrics_storage_op op, uint64_t t0, int rc)
{
    if (t0)
        rhema_metrics_storage(op, rhema_monotonic_ns() - t0,
                              rc != 0 && rc != RHEMA_ENOTFOUND && rc != RHEMA_ECONFLICT);
    return rc;
}
/* c->t0 is set before the call is made (the comma): the call does not touch it */
#define TIMED(op, call)                                                                            \
    (c->t0 = rhema_metrics_enabled() ? rhema_monotonic_ns() : 0, timed(op, c->t0, (call)))

static int conn_err(struct atrest_conn *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int conn_err(struct atrest_conn *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->msg, sizeof c->msg, fmt, ap);
    va_end(ap);
    return code;
}

static int has_magic(const void *v, size_t len, char m1)
{
    const unsigned char *p = v;
    return len >= 3 && p[0] == 'R' && p[1] == (unsigned char)m1 && p[2] == 1;
}

static int is_envelope(const void *v, size_t len)
{
    return has_magic(v, len, RHEMA_ENVELOPE_MAGIC1);
}

static int is_frame(const void *v, size_t len)
{
    return has_magic(v, len, 'Z');
}

/* The associated data binding an envelope to its place: label NUL ns NUL key. */
static size_t make_ad(unsigned char ad[AD_MAX], const char *ns, const char *key)
{
    size_t nl = strnlen(ns, RHEMA_STORAGE_NS_MAX), kl = strnlen(key, RHEMA_STORAGE_KEY_MAX);
    size_t n = sizeof AD_LABEL; /* with its NUL */
    memcpy(ad, AD_LABEL, n);
    memcpy(ad + n, ns, nl);
    n += nl;
    ad[n++] = '\0';
    memcpy(ad + n, key, kl);
    return n + kl;
}

/*
 * The stored form of one PUT value.  0 with *out set: out->data NULL means
 * "store v as is"; otherwise out->data is malloc'd (caller frees).
 */
static int encode(struct atrest_conn *c, const char *ns, const char *key, const void *v,
                  size_t len, struct rhema_buf *out)
{
    struct rhema_atrest *a = c->a;
    char ferr[RHEMA_FRAME_ERR_MAX];
    struct rhema_buf fr = {NULL, 0};
    out->data = NULL;
    out->len = 0;
    if (len == 0)
        return 0;
    if (a->max_record && (uint64_t)len > a->max_record)
        return conn_err(c, RHEMA_ETOOBIG,
                        "%s/%s: a record of %zu bytes would be above "
                        "persistence.max_record_size_bytes (%llu); nothing was written",
                        ns, key, len, (unsigned long long)a->max_record);
    int frame = a->compress || a->encrypt || is_frame(v, len) || is_envelope(v, len);
    if (!frame)
        return 0;
    if ((uint64_t)len > a->codecs->max_decompressed) /* it could never be read back */
        return conn_err(c, RHEMA_ETOOBIG,
                        "%s/%s: a value of %zu bytes is above "
                        "advanced_features.compression.max_decompressed_bytes (%llu)",
                        ns, key, len, (unsigned long long)a->codecs->max_decompressed);
    int rc = rhema_frame_compress(a->codecs, &c->ctxs, a->compress ? -1 : RHEMA_CODEC_STORED,
                                  INT32_MIN, 0, v, len, &fr, ferr);
    if (rc)
        return conn_err(c, rc, "%s/%s: compressing the value at rest: %s", ns, key, ferr);
    if (!a->encrypt) {
        *out = fr;
        return 0;
    }
    unsigned char ad[AD_MAX];
    char kerr[RHEMA_KEYRING_ERR_MAX];
    size_t adlen = make_ad(ad, ns, key);
    rc = rhema_keyring_encrypt(a->kr, fr.data, fr.len, ad, adlen, out, kerr);
    free(fr.data);
    if (rc) {
        out->data = NULL;
        out->len = 0;
        return conn_err(c, rc, "%s/%s: encrypting the value at rest: %s", ns, key, kerr);
    }
    return 0;
}

/*
 * The plain value of a stored one, by the read rules of atrest.h.  0 with
 * *out set: out->data NULL means "v is plain, use it as is"; otherwise
 * out->data is malloc'd (caller frees).  RHEMA_ECORRUPT (RHEMA_ENOMEM) and
 * the cause in c->msg otherwise.
 */
static int decode(struct atrest_conn *c, const char *ns, const char *key, const void *v,
                  size_t len, struct rhema_buf *out)
{
    struct rhema_atrest *a = c->a;
    char ferr[RHEMA_FRAME_ERR_MAX];
    struct rhema_buf pt = {NULL, 0};
    int rc;
    out->data = NULL;
    out->len = 0;
    if (is_envelope(v, len)) {
        unsigned char ad[AD_MAX];
        char kerr[RHEMA_KEYRING_ERR_MAX];
        if (!a->kr)
            return conn_err(c, RHEMA_ECORRUPT,
                            "%s/%s: the stored value is encrypted at rest, and key management "
                            "is off (advanced_features.key_management)",
                            ns, key);
        size_t adlen = make_ad(ad, ns, key);
        rc = rhema_keyring_decrypt(a->kr, v, len, ad, adlen, &pt, kerr);
        if (rc)
            return conn_err(c, rc == RHEMA_ENOMEM ? rc : RHEMA_ECORRUPT,
                            "%s/%s: the stored value does not decrypt: %s", ns, key, kerr);
        if (!is_frame(pt.data, pt.len)) {
            free(pt.data);
            return conn_err(c, RHEMA_ECORRUPT,
                            "%s/%s: the stored value decrypts, but not to a frame", ns, key);
        }
        v = pt.data;
        len = pt.len;
    } else if (!is_frame(v, len)) {
        return 0; /* plain */
    }
    rc = rhema_frame_decompress(a->codecs, &c->ctxs, v, len, out, ferr);
    free(pt.data);
    if (rc) {
        out->data = NULL;
        out->len = 0;
        return conn_err(c, rc == RHEMA_ENOMEM ? rc : RHEMA_ECORRUPT,
                        "%s/%s: the stored value does not unframe: %s", ns, key, ferr);
    }
    return 0;
}

/* ---- the wrapper vtable ---- */

static int w_open(const struct rhema_host *host, const struct rhema_cfg *cfg,
                  rhema_storage_instance **out, char **err)
{
    (void)host, (void)cfg, (void)out;
    *err = strdup("the at-rest wrapper is created by rhema_atrest_wrap(), not opened");
    return RHEMA_ENOTSUP;
}

static void w_close(rhema_storage_instance *inst)
{
    struct rhema_atrest *a = AT(inst);
    a->real->close(a->real_inst);
    free(a);
}

static int w_connect(rhema_storage_instance *inst, rhema_storage_conn **out, char **err)
{
    struct rhema_atrest *a = AT(inst);
    struct atrest_conn *c = calloc(1, sizeof *c);
    if (!c) {
        *err = strdup("out of memory");
        return RHEMA_ENOMEM;
    }
    int rc = a->real->connect(a->real_inst, &c->real, err);
    if (rc) {
        free(c);
        return rc;
    }
    c->a = a;
    *out = (rhema_storage_conn *)(void *)c;
    return 0;
}

static void many_clear(struct atrest_conn *c)
{
    for (size_t i = 0; i < c->many_n; i++)
        free(c->many[i].data);
    free(c->many);
    c->many = NULL;
    c->many_n = 0;
}

static void w_disconnect(rhema_storage_conn *conn)
{
    struct atrest_conn *c = CONN(conn);
    c->a->real->disconnect(c->real);
    rhema_codec_ctxs_release(c->a->codecs, &c->ctxs);
    free(c->got.data);
    many_clear(c);
    free(c);
}

static int w_get(rhema_storage_conn *conn, const char *ns, const char *key,
                 struct rhema_storage_value *out)
{
    struct atrest_conn *c = CONN(conn);
    struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
    struct rhema_buf plain;
    c->msg[0] = '\0';
    free(c->got.data);
    c->got.data = NULL;
    int rc = TIMED(RHEMA_MOP_GET, c->a->real->get(c->real, ns, key, &v));
    if (rc)
        return rc;
    if ((rc = decode(c, ns, key, v.data, v.len, &plain)))
        return rc;
    if (plain.data) {
        c->got = plain;
        v.data = plain.data;
        v.len = plain.len;
    }
    out->data = v.data; /* the caller's size stays */
    out->len = v.len;
    out->version = v.version;
    return 0;
}

/*
 * The arrays batch(), group() and get_many() receive here come from the
 * core, built with this very header, so their stride is sizeof: indexing is
 * safe (storage.h, "Growing the structs", concerns plugins built apart).
 */
static int w_get_many(rhema_storage_conn *conn, const char *const *ns, const char *const *keys,
                      size_t n, struct rhema_storage_value *out, int *rcs)
{
    struct atrest_conn *c = CONN(conn);
    c->msg[0] = '\0';
    many_clear(c);
    int rc = TIMED(RHEMA_MOP_GET_MANY, c->a->real->get_many(c->real, ns, keys, n, out, rcs));
    if (rc || n == 0)
        return rc;
    if (!(c->many = calloc(n, sizeof *c->many)))
        return conn_err(c, RHEMA_ENOMEM, "out of memory");
    c->many_n = n;
    for (size_t i = 0; i < n; i++) {
        if (rcs[i] != 0)
            continue;
        if ((rc = decode(c, ns[i], keys[i], out[i].data, out[i].len, &c->many[i])))
            return rc;
        if (c->many[i].data) {
            out[i].data = c->many[i].data;
            out[i].len = c->many[i].len;
        }
    }
    return 0;
}

static int w_put(rhema_storage_conn *conn, struct rhema_storage_write *w)
{
    struct atrest_conn *c = CONN(conn);
    struct rhema_buf enc;
    c->msg[0] = '\0';
    int rc = w->op == RHEMA_WRITE_PUT ? encode(c, w->ns, w->key, w->value, w->value_len, &enc) : 0;
    if (rc)
        return rc;
    if (w->op != RHEMA_WRITE_PUT || !enc.data)
        return TIMED(RHEMA_MOP_PUT, c->a->real->put(c->real, w));
    struct rhema_storage_write t = *w;
    t.value = enc.data;
    t.value_len = enc.len;
    rc = TIMED(RHEMA_MOP_PUT, c->a->real->put(c->real, &t));
    w->new_version = t.new_version;
    free(enc.data);
    return rc;
}

static int w_del(rhema_storage_conn *conn, const char *ns, const char *key,
                 uint64_t expected_version)
{
    struct atrest_conn *c = CONN(conn);
    c->msg[0] = '\0';
    return TIMED(RHEMA_MOP_DEL, c->a->real->del(c->real, ns, key, expected_version));
}

static void free_encoded(const struct rhema_storage_write *orig, struct rhema_storage_write *t,
                         size_t n)
{
    for (size_t i = 0; t && i < n; i++)
        if (t[i].value != orig[i].value)
            free((void *)(uintptr_t)t[i].value);
    free(t);
}

/*
 * A copy of writes w[0..n) with every PUT value in its stored form (*out),
 * or NULL in *out when no value changes (then use w itself).
 */
static int encode_writes(struct atrest_conn *c, const struct rhema_storage_write *w, size_t n,
                         struct rhema_storage_write **out)
{
    struct rhema_storage_write *t = NULL;
    *out = NULL;
    for (size_t i = 0; i < n; i++) {
        struct rhema_buf enc;
        if (w[i].op != RHEMA_WRITE_PUT)
            continue;
        int rc = encode(c, w[i].ns, w[i].key, w[i].value, w[i].value_len, &enc);
        if (rc) {
            free_encoded(w, t, n);
            return rc;
        }
        if (!enc.data)
            continue;
        if (!t) {
            t = malloc(n * sizeof *t);
            if (!t) {
                free(enc.data);
                return conn_err(c, RHEMA_ENOMEM, "out of memory");
            }
            memcpy(t, w, n * sizeof *t);
        }
        t[i].value = enc.data;
        t[i].value_len = enc.len;
    }
    *out = t;
    return 0;
}

static int w_batch(rhema_storage_conn *conn, struct rhema_storage_write *w, size_t n)
{
    struct atrest_conn *c = CONN(conn);
    struct rhema_storage_write *t;
    c->msg[0] = '\0';
    int rc = encode_writes(c, w, n, &t);
    if (rc)
        return rc;
    if (!t)
        return TIMED(RHEMA_MOP_BATCH, c->a->real->batch(c->real, w, n));
    rc = TIMED(RHEMA_MOP_BATCH, c->a->real->batch(c->real, t, n));
    for (size_t i = 0; i < n; i++)
        w[i].new_version = t[i].new_version;
    free_encoded(w, t, n);
    return rc;
}

static int w_group(rhema_storage_conn *conn, struct rhema_storage_batch *g, size_t n)
{
    struct atrest_conn *c = CONN(conn);
    struct rhema_storage_batch *tg = NULL;
    int rc = 0;
    c->msg[0] = '\0';
    if (n == 0)
        return TIMED(RHEMA_MOP_GROUP, c->a->real->group(c->real, g, n));
    tg = calloc(n, sizeof *tg);
    if (!tg)
        return conn_err(c, RHEMA_ENOMEM, "out of memory");
    /*
     * A member whose values cannot be encoded fails alone (with the code
     * batch() would have returned) and is left out of the real group; the
     * others go on.
     */
    size_t m = 0;
    size_t *from = malloc(n * sizeof *from);
    struct rhema_storage_write **enc = calloc(n, sizeof *enc);
    if (!from || !enc) {
        rc = conn_err(c, RHEMA_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        struct rhema_storage_write *t;
        int erc = encode_writes(c, g[i].writes, g[i].n, &t);
        g[i].result = erc;
        if (erc) {
            if (erc == RHEMA_ENOMEM) {
                rc = erc; /* nothing applied yet: fail the whole group */
                goto out;
            }
            continue;
        }
        enc[i] = t;
        tg[m].size = sizeof tg[m];
        tg[m].writes = t ? t : g[i].writes;
        tg[m].n = g[i].n;
        from[m++] = i;
    }
    rc = m ? TIMED(RHEMA_MOP_GROUP, c->a->real->group(c->real, tg, m)) : 0;
    if (rc == 0) {
        for (size_t j = 0; j < m; j++) {
            struct rhema_storage_batch *b = &g[from[j]];
            b->result = tg[j].result;
            if (tg[j].writes != b->writes)
                for (size_t k = 0; k < b->n; k++)
                    b->writes[k].new_version = tg[j].writes[k].new_version;
        }
    }
out:
    for (size_t i = 0; enc && i < n; i++)
        free_encoded(g[i].writes, enc[i], g[i].n);
    free(enc);
    free(from);
    free(tg);
    return rc;
}

struct scan_ctx {
    struct atrest_conn *c;
    const char *ns;
    rhema_storage_scan_cb cb;
    void *ctx;
};

static int scan_one(void *arg, const char *key, const void *value, size_t value_len,
                    uint64_t version)
{
    struct scan_ctx *s = arg;
    struct rhema_buf plain;
    int rc = decode(s->c, s->ns, key, value, value_len, &plain);
    if (rc) /* one unreadable value: the entry is reported, the scan goes on (atrest.h) */
        return s->cb(s->ctx, key, NULL, 0, version);
    if (!plain.data)
        return s->cb(s->ctx, key, value, value_len, version);
    rc = s->cb(s->ctx, key, plain.data, plain.len, version);
    free(plain.data);
    return rc;
}

static int w_scan(rhema_storage_conn *conn, const char *ns, const char *from_key,
                  const char *to_key, size_t limit, rhema_storage_scan_cb cb, void *ctx)
{
    struct atrest_conn *c = CONN(conn);
    struct scan_ctx s = {c, ns, cb, ctx};
    c->msg[0] = '\0';
    return TIMED(RHEMA_MOP_SCAN,
                 c->a->real->scan(c->real, ns, from_key, to_key, limit, scan_one, &s));
}

static int w_lease(rhema_storage_conn *conn, const char *name, const char *holder,
                   uint64_t ttl_ms, int op, struct rhema_lease_info *out)
{
    struct atrest_conn *c = CONN(conn);
    c->msg[0] = '\0';
    return TIMED(RHEMA_MOP_LEASE, c->a->real->lease(c->real, name, holder, ttl_ms, op, out));
}

static int w_health(rhema_storage_conn *conn, char **err)
{
    struct atrest_conn *c = CONN(conn);
    c->msg[0] = '\0';
    return TIMED(RHEMA_MOP_HEALTH, c->a->real->health(c->real, err));
}

static int w_stats(rhema_storage_conn *conn, const char *ns, struct rhema_storage_stats *out)
{
    struct atrest_conn *c = CONN(conn);
    c->msg[0] = '\0';
    return TIMED(RHEMA_MOP_STATS, c->a->real->stats(c->real, ns, out));
}

static const char *w_errmsg(rhema_storage_conn *conn)
{
    struct atrest_conn *c = CONN(conn);
    return c->msg[0] ? c->msg : c->a->real->errmsg(c->real);
}

/* Rate states are not values: nothing to encode, straight to the real plugin. */
static int w_rate(rhema_storage_conn *conn, struct rhema_rate_query *q)
{
    struct atrest_conn *c = CONN(conn);
    c->msg[0] = '\0';
    return c->a->real->rate(c->real, q);
}

/* watch() is the real instance's: values are not involved (the change feed, issue 12) */
static int w_watch(rhema_storage_instance *inst, void (*notify)(void *arg), void *arg, char **err)
{
    struct rhema_atrest *a = AT(inst);
    return a->real->watch(a->real_inst, notify, arg, err);
}

static void w_unwatch(rhema_storage_instance *inst)
{
    struct rhema_atrest *a = AT(inst);
    a->real->unwatch(a->real_inst);
}

static int w_backup(rhema_storage_conn *conn, const char *path, char **err)
{
    struct atrest_conn *c = CONN(conn);
    c->msg[0] = '\0';
    return TIMED(RHEMA_MOP_BACKUP, c->a->real->backup(c->real, path, err));
}

static int w_restore(rhema_storage_instance *inst, const char *path, char **err)
{
    struct rhema_atrest *a = AT(inst);
    return a->real->restore(a->real_inst, path, err);
}

/* ---- setup ---- */

int rhema_atrest_check(const struct rhema_config *cfg, const struct rhema_codecs *codecs,
                       char **err)
{
    struct rhema_keyring_params p;
    if (cfg->enable_compression && codecs->default_id < 0)
        return rhema_set_error(err, RHEMA_EINVAL,
                               "persistence.enable_compression needs a compression codec: '%s' "
                               "(advanced_features.compression.algorithm) is not loaded",
                               cfg->compression_algorithm ? cfg->compression_algorithm : "");
    if (cfg->enable_encryption && !rhema_keyring_params_from_config(&p, cfg))
        return rhema_set_error(err, RHEMA_EINVAL,
                               "persistence.enable_encryption needs key management: set "
                               "advanced_features.key_management.key_file or passphrase_env");
    return 0;
}

int rhema_atrest_wrap(const struct rhema_storage_plugin *real, rhema_storage_instance *real_inst,
                      const struct rhema_codecs *codecs, struct rhema_keyring *kr, int compress,
                      int encrypt, struct rhema_atrest **out, char **err)
{
    if (compress && codecs->default_id < 0)
        return rhema_set_error(err, RHEMA_EINVAL,
                               "persistence.enable_compression needs a compression codec, and "
                               "none is loaded (advanced_features.compression.algorithm)");
    if (encrypt && !kr)
        return rhema_set_error(err, RHEMA_EINVAL,
                               "persistence.enable_encryption needs key management: set "
                               "advanced_features.key_management.key_file or passphrase_env");
    struct rhema_atrest *a = calloc(1, sizeof *a);
    if (!a) {
        *err = strdup("out of memory");
        return RHEMA_ENOMEM;
    }
    a->real = real;
    a->real_inst = real_inst;
    a->codecs = codecs;
    a->kr = kr;
    a->compress = compress != 0;
    a->encrypt = encrypt != 0;
    a->vt.base = real->base; /* the real plugin's name, version, description */
    a->vt.base.size = sizeof a->vt;
    a->vt.features = real->features;
    a->vt.open = w_open;
    a->vt.close = w_close;
    a->vt.connect = w_connect;
    a->vt.disconnect = w_disconnect;
    a->vt.get = w_get;
    a->vt.put = w_put;
    a->vt.del = w_del;
    a->vt.batch = w_batch;
    a->vt.scan = w_scan;
    a->vt.lease = w_lease;
    a->vt.health = w_health;
    a->vt.stats = w_stats;
    a->vt.errmsg = w_errmsg;
    a->vt.backup = real->backup ? w_backup : NULL;   /* optional: keep NULL meaning ENOTSUP */
    a->vt.group = real->group ? w_group : NULL;      /* NULL: the host batches one by one */
    a->vt.restore = real->restore ? w_restore : NULL;
    a->vt.get_many = real->get_many ? w_get_many : NULL;
    a->vt.rate = real->rate ? w_rate : NULL; /* NULL: the host's per-node limits */
    a->vt.watch = real->watch && real->unwatch ? w_watch : NULL; /* NULL: the feed polls */
    a->vt.unwatch = real->watch && real->unwatch ? w_unwatch : NULL;
    *out = a;
    return 0;
}

void rhema_atrest_set_max_record(struct rhema_atrest *a, uint64_t bytes)
{
    a->max_record = bytes;
}

void rhema_atrest_free(struct rhema_atrest *a)
{
    free(a);
}

const struct rhema_storage_plugin *rhema_atrest_vtable(struct rhema_atrest *a)
{
    return &a->vt;
}

rhema_storage_instance *rhema_atrest_instance(struct rhema_atrest *a)
{
    return (rhema_storage_instance *)(void *)a;
}
