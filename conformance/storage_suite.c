/*
 * storage_suite -- the storage plugin conformance suite (see storage_suite.h).
 *
 * Every check is a function returning T_PASS, T_FAIL or T_SKIP and writing
 * a one-line reason into s->detail; the CHECK macros return T_FAIL with the
 * source line, the expression and the connection's errmsg().  Checks build
 * on nothing but the instance and connections of struct suite, each in its
 * own namespace (or set of keys), so one failing check does not cascade.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "storage_suite.h"

#include "../plugins/common/rate_table.h" /* rhema_gcra_step(), the reference */

#define T_PASS RHEMA_CONF_PASS
#define T_FAIL RHEMA_CONF_FAIL
#define T_SKIP RHEMA_CONF_SKIP

#define TTL_MS 150         /* the short TTL of the expiry checks */
#define TTL_WAIT_MS 400    /* how long they wait for it to pass */
#define LONG_TTL_MS 30000  /* a lease that must not expire during a check */
#define RACE_MS 300        /* duration of the lease contention check */
#define RACE_GRANTS 20     /* grants it wants to see at least */
#define CAS_INCREMENTS 100 /* per thread, in the concurrent writers check */

struct suite {
    const struct rhema_storage_plugin *vt;
    const struct rhema_host *host;
    const struct rhema_cfg *cfg;
    rhema_storage_instance *inst;
    rhema_storage_conn *c1, *c2;
    char base[40]; /* "conf_<16 hex>": every namespace and lease name starts with it */
    rhema_conf_report_fn report;
    void *report_ctx;
    struct rhema_conf_totals t;
    char detail[1024];
};

/* The namespaces the checks use (suffixes of s->base); cleanup empties them all. */
static const char *const ns_tags[] = {"",       ".other", ".scan", ".scan_x", ".ttl",
                                      ".stats", ".batch", ".cas",  ".inv",    ".dur",
                                      ".many",  ".rst",   ".gm",   ".runs",   NULL};

/* ---- reporting helpers ---- */

static int failf(struct suite *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int failf(struct suite *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->detail, sizeof s->detail, fmt, ap);
    va_end(ap);
    return T_FAIL;
}

static const char *emsg(const struct suite *s, rhema_storage_conn *c)
{
    const char *m;
    if (c == NULL || s->vt->errmsg == NULL)
        return "";
    m = s->vt->errmsg(c);
    return m != NULL ? m : "(NULL errmsg)";
}

/* A call on connection C must return WANT. */
#define CHECK_RC(C, WANT, CALL)                                                                   \
    do {                                                                                          \
        int rc_ = (CALL);                                                                         \
        if (rc_ != (WANT))                                                                        \
            return failf(s, "line %d: %s returned %s (%d), want %s; errmsg: %s", __LINE__, #CALL, \
                         rhema_strerror(rc_), rc_, rhema_strerror(WANT), emsg(s, (C)));           \
    } while (0)

#define CHECK(COND, ...)                                                                          \
    do {                                                                                          \
        if (!(COND)) {                                                                            \
            char m_[512];                                                                         \
            snprintf(m_, sizeof m_, __VA_ARGS__);                                                 \
            return failf(s, "line %d: %s: %s", __LINE__, #COND, m_);                              \
        }                                                                                         \
    } while (0)

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static uint64_t mono_ms(const struct suite *s)
{
    return s->host->monotonic_ns() / 1000000u;
}

/* Namespace `tag` of this run ("conf_<hex>.tag") into buf. */
static const char *ns_of(const struct suite *s, const char *tag, char *buf, size_t size)
{
    snprintf(buf, size, "%s%s", s->base, tag);
    return buf;
}

/* ---- storage shorthands ---- */

static int put(struct suite *s, rhema_storage_conn *c, const char *ns, const char *key,
               const void *val, size_t len, uint64_t expected, uint64_t ttl_ms, uint64_t *ver)
{
    struct rhema_storage_write w = {.size = sizeof(struct rhema_storage_write),
                                    .op = RHEMA_WRITE_PUT,
                                    .ns = ns,
                                    .key = key,
                                    .value = val,
                                    .value_len = len,
                                    .expected_version = expected,
                                    .ttl_ms = ttl_ms};
    int rc = s->vt->put(c, &w);
    if (rc == 0 && ver != NULL)
        *ver = w.new_version;
    return rc;
}

static int put_str(struct suite *s, rhema_storage_conn *c, const char *ns, const char *key,
                   const char *val, uint64_t expected, uint64_t *ver)
{
    return put(s, c, ns, key, val, strlen(val), expected, 0, ver);
}

/*
 * Check that (ns, key) holds exactly (val, len) (and version `ver` when not
 * 0).  Returns T_PASS or T_FAIL with the detail set.
 */
static int expect_value(struct suite *s, rhema_storage_conn *c, const char *ns, const char *key,
                        const void *val, size_t len, uint64_t ver, int line)
{
    struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
    int rc = s->vt->get(c, ns, key, &v);
    if (rc != 0)
        return failf(s, "line %d: get(%s, %s) returned %s; errmsg: %s", line, ns, key,
                     rhema_strerror(rc), emsg(s, c));
    if (v.len != len)
        return failf(s, "line %d: get(%s, %s): length %zu, want %zu", line, ns, key, v.len, len);
    if (len > 0 && (v.data == NULL || memcmp(v.data, val, len) != 0))
        return failf(s, "line %d: get(%s, %s): the value differs from what was written", line, ns,
                     key);
    if (ver != 0 && v.version != ver)
        return failf(s, "line %d: get(%s, %s): version %llu, want %llu", line, ns, key,
                     (unsigned long long)v.version, (unsigned long long)ver);
    return T_PASS;
}

#define EXPECT_VALUE(C, NS, KEY, VAL, LEN, VER)                                                   \
    do {                                                                                          \
        if (expect_value(s, (C), (NS), (KEY), (VAL), (LEN), (VER), __LINE__) != T_PASS)           \
            return T_FAIL;                                                                        \
    } while (0)

#define EXPECT_STR(C, NS, KEY, STR, VER) EXPECT_VALUE(C, NS, KEY, STR, strlen(STR), VER)

#define EXPECT_MISSING(C, NS, KEY)                                                                 \
    do {                                                                                           \
        struct rhema_storage_value v_ = {.size = sizeof(struct rhema_storage_value)};              \
        CHECK_RC((C), RHEMA_ENOTFOUND, s->vt->get((C), (NS), (KEY), &v_));                         \
    } while (0)

/* ---- scan collection ---- */

struct collected {
    size_t n, cap;
    char **keys;
    char **values;
    size_t *value_lens;
    uint64_t *versions;
    int stop_after;   /* > 0: return 1 after that many entries */
    int abort_after;  /* > 0: return abort_code after that many entries */
    int abort_code;
    int oom;
};

static int collect_cb(void *ctx, const char *key, const void *value, size_t value_len,
                      uint64_t version)
{
    struct collected *col = ctx;
    if (col->n == col->cap) {
        size_t cap = col->cap ? col->cap * 2 : 16;
        char **k = realloc(col->keys, cap * sizeof *k);
        if (k != NULL)
            col->keys = k;
        char **v = realloc(col->values, cap * sizeof *v);
        if (v != NULL)
            col->values = v;
        size_t *l = realloc(col->value_lens, cap * sizeof *l);
        if (l != NULL)
            col->value_lens = l;
        uint64_t *ver = realloc(col->versions, cap * sizeof *ver);
        if (ver != NULL)
            col->versions = ver;
        if (k == NULL || v == NULL || l == NULL || ver == NULL) {
            col->oom = 1;
            return -1;
        }
        col->cap = cap;
    }
    col->keys[col->n] = strdup(key);
    col->values[col->n] = malloc(value_len + 1);
    if (col->keys[col->n] == NULL || col->values[col->n] == NULL) {
        free(col->keys[col->n]);
        free(col->values[col->n]);
        col->oom = 1;
        return -1;
    }
    if (value_len > 0)
        memcpy(col->values[col->n], value, value_len);
    col->values[col->n][value_len] = '\0';
    col->value_lens[col->n] = value_len;
    col->versions[col->n] = version;
    col->n++;
    if (col->abort_after > 0 && (int)col->n >= col->abort_after)
        return col->abort_code;
    if (col->stop_after > 0 && (int)col->n >= col->stop_after)
        return 1;
    return 0;
}

static void collected_free(struct collected *col)
{
    size_t i;
    for (i = 0; i < col->n; i++) {
        free(col->keys[i]);
        free(col->values[i]);
    }
    free(col->keys);
    free(col->values);
    free(col->value_lens);
    free(col->versions);
    memset(col, 0, sizeof *col);
}

/* Scan into col (reset first); returns scan's code. */
static int scan_into(struct suite *s, rhema_storage_conn *c, const char *ns, const char *from,
                     const char *to, size_t limit, struct collected *col)
{
    int stop = col->stop_after, ab = col->abort_after, code = col->abort_code;
    collected_free(col);
    col->stop_after = stop;
    col->abort_after = ab;
    col->abort_code = code;
    return s->vt->scan(c, ns, from, to, limit, collect_cb, col);
}

/* Delete every key of ns (best effort).  Returns the number left, or -1. */
static long empty_namespace(struct suite *s, rhema_storage_conn *c, const char *ns)
{
    struct collected col = {0};
    struct rhema_storage_stats st = {0};
    size_t i;
    if (s->vt->scan(c, ns, NULL, NULL, 0, collect_cb, &col) != 0) {
        collected_free(&col);
        return -1;
    }
    for (i = 0; i < col.n; i++)
        s->vt->del(c, ns, col.keys[i], RHEMA_VERSION_ANY);
    collected_free(&col);
    if (s->vt->stats(c, ns, &st) != 0)
        return -1;
    return (long)st.entries;
}

/* ---- the checks ---- */

static int t_header(struct suite *s)
{
    const struct rhema_storage_plugin *vt = s->vt;
    const uint32_t known = RHEMA_STORAGE_SHARED | RHEMA_STORAGE_DURABLE | RHEMA_STORAGE_TTL |
                           RHEMA_STORAGE_LEASES | RHEMA_STORAGE_SEQUENCED;
    const size_t minor0 = offsetof(struct rhema_storage_plugin, restore) + sizeof vt->restore;
    const char *p;

    CHECK(vt != NULL, "no vtable");
    CHECK(vt->base.kind == RHEMA_KIND_STORAGE, "kind %u", (unsigned)vt->base.kind);
    CHECK(vt->base.abi_major == RHEMA_ABI_MAJOR, "abi_major %u", (unsigned)vt->base.abi_major);
    CHECK(vt->base.abi_minor <= RHEMA_STORAGE_ABI_MINOR, "abi_minor %u",
          (unsigned)vt->base.abi_minor);
    CHECK(vt->base.size >= minor0, "size %u < %zu", (unsigned)vt->base.size, minor0);
    CHECK(vt->base.name != NULL && vt->base.name[0] != '\0', "empty name");
    for (p = vt->base.name; *p; p++)
        CHECK((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_' || *p == '-',
              "name '%s' is not [a-z0-9_-]", vt->base.name);
    CHECK(strlen(vt->base.name) <= 64, "name longer than 64 bytes");
    CHECK(vt->base.version != NULL && vt->base.version[0] != '\0', "empty version");
    CHECK(vt->base.description != NULL, "NULL description");
    CHECK((vt->features & ~known) == 0, "unknown feature bits 0x%x",
          (unsigned)(vt->features & ~known));
    CHECK(vt->open && vt->close && vt->connect && vt->disconnect && vt->get && vt->put &&
              vt->del && vt->batch && vt->scan && vt->lease && vt->health && vt->stats &&
              vt->errmsg,
          "a required method is NULL");
    return T_PASS;
}

/*
 * check() (storage minor 4, optional): it accepts the plugin's documented
 * defaults (a NULL group) and the group the suite runs with.  Read only
 * when the plugin's minor and size have it.
 */
static int t_check(struct suite *s)
{
    const struct rhema_storage_plugin *vt = s->vt;
    const size_t end = offsetof(struct rhema_storage_plugin, check) + sizeof vt->check;
    char *err = NULL;
    int rc;

    if (vt->base.abi_minor < 4 || vt->base.size < end || vt->check == NULL) {
        snprintf(s->detail, sizeof s->detail,
                 "check not implemented (optional: rhemad -t then checks the group at start)");
        return T_SKIP;
    }
    if ((rc = vt->check(s->host, NULL, &err)) != 0) {
        failf(s, "check of the defaults (no group) returned %s: %s", rhema_strerror(rc),
              err ? err : "");
        free(err);
        return T_FAIL;
    }
    free(err);
    err = NULL;
    if (s->cfg != NULL && (rc = vt->check(s->host, s->cfg, &err)) != 0) {
        failf(s, "check of the suite's group returned %s: %s", rhema_strerror(rc),
              err ? err : "");
        free(err);
        return T_FAIL;
    }
    free(err);
    return T_PASS;
}

static int t_health(struct suite *s)
{
    char *err = NULL;
    int rc = s->vt->health(s->c1, &err);
    if (rc != 0) {
        failf(s, "health returned %s: %s", rhema_strerror(rc), err ? err : "");
        free(err);
        return T_FAIL;
    }
    free(err);
    return T_PASS;
}

static int t_errmsg(struct suite *s)
{
    rhema_storage_conn *c3 = NULL;
    struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
    char ns[64], *err = NULL;
    const char *m;
    int rc = s->vt->connect(s->inst, &c3, &err);
    free(err);
    if (rc != 0)
        return failf(s, "a third connect returned %s", rhema_strerror(rc));
    m = s->vt->errmsg(c3);
    if (m == NULL) {
        s->vt->disconnect(c3);
        return failf(s, "errmsg of a fresh connection is NULL");
    }
    rc = s->vt->get(c3, ns_of(s, "", ns, sizeof ns), "no-such-key", &v);
    m = s->vt->errmsg(c3);
    s->vt->disconnect(c3);
    CHECK(rc == RHEMA_ENOTFOUND, "get of a missing key returned %s", rhema_strerror(rc));
    CHECK(m != NULL, "errmsg after a failed get is NULL");
    m = s->vt->errmsg(s->c1);
    CHECK(m != NULL, "errmsg is NULL");
    return T_PASS;
}

static int t_get_missing(struct suite *s)
{
    char ns[64];
    ns_of(s, "", ns, sizeof ns);
    EXPECT_MISSING(s->c1, ns, "missing");
    EXPECT_MISSING(s->c2, ns, "missing/too");
    return T_PASS;
}

static int t_put_get(struct suite *s)
{
    char ns[64];
    uint64_t ver = 0;
    ns_of(s, "", ns, sizeof ns);
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "hello", "world", RHEMA_VERSION_ANY, &ver));
    CHECK(ver > 0, "new_version is 0");
    EXPECT_STR(s->c1, ns, "hello", "world", ver);
    return T_PASS;
}

static int t_put_get_empty(struct suite *s)
{
    char ns[64];
    uint64_t ver = 0;
    ns_of(s, "", ns, sizeof ns);
    CHECK_RC(s->c1, 0, put(s, s->c1, ns, "empty", NULL, 0, RHEMA_VERSION_ANY, 0, &ver));
    EXPECT_VALUE(s->c1, ns, "empty", "", 0, ver);
    CHECK_RC(s->c1, 0, put(s, s->c1, ns, "empty2", "", 0, RHEMA_VERSION_ANY, 0, &ver));
    EXPECT_VALUE(s->c2, ns, "empty2", "", 0, ver);
    return T_PASS;
}

static int t_put_get_binary(struct suite *s)
{
    unsigned char val[512];
    char ns[64];
    uint64_t ver = 0;
    size_t i;
    for (i = 0; i < sizeof val; i++)
        val[i] = (unsigned char)(i * 7 + (i >> 8)); /* every byte value, NULs included */
    val[0] = 0;
    val[sizeof val - 1] = 0;
    ns_of(s, "", ns, sizeof ns);
    CHECK_RC(s->c1, 0, put(s, s->c1, ns, "binary", val, sizeof val, RHEMA_VERSION_ANY, 0, &ver));
    EXPECT_VALUE(s->c1, ns, "binary", val, sizeof val, ver);
    return T_PASS;
}

static int t_put_get_1mib(struct suite *s)
{
    const size_t len = 1u << 20;
    unsigned char *val = malloc(len);
    char ns[64];
    uint64_t ver = 0, x = 0x9e3779b97f4a7c15ull;
    size_t i;
    int r;
    if (val == NULL)
        return failf(s, "out of memory");
    for (i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        val[i] = (unsigned char)x;
    }
    ns_of(s, "", ns, sizeof ns);
    r = put(s, s->c1, ns, "big", val, len, RHEMA_VERSION_ANY, 0, &ver);
    if (r != 0) {
        free(val);
        return failf(s, "put of 1 MiB returned %s; errmsg: %s", rhema_strerror(r), emsg(s, s->c1));
    }
    r = expect_value(s, s->c2, ns, "big", val, len, ver, __LINE__);
    free(val);
    if (r != T_PASS)
        return T_FAIL;
    CHECK_RC(s->c1, 0, s->vt->del(s->c1, ns, "big", RHEMA_VERSION_ANY));
    return T_PASS;
}

static int t_version_increasing(struct suite *s)
{
    char ns[64];
    uint64_t v1 = 0, v2 = 0, v3 = 0, vo = 0;
    ns_of(s, "", ns, sizeof ns);
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "ver", "1", RHEMA_VERSION_ANY, &v1));
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "ver", "2", RHEMA_VERSION_ANY, &v2));
    CHECK_RC(s->c2, 0, put_str(s, s->c2, ns, "ver", "3", RHEMA_VERSION_ANY, &v3));
    CHECK(v1 > 0 && v1 != RHEMA_VERSION_ABSENT, "first version %llu", (unsigned long long)v1);
    CHECK(v2 > v1 && v3 > v2, "versions %llu, %llu, %llu do not increase",
          (unsigned long long)v1, (unsigned long long)v2, (unsigned long long)v3);
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "ver-other", "x", RHEMA_VERSION_ANY, &vo));
    CHECK(vo > 0, "version 0 for another key");
    EXPECT_STR(s->c1, ns, "ver", "3", v3);
    return T_PASS;
}

/*
 * Deleting a key and creating it again must not hand out a version the key
 * had before, or a client holding the old version could overwrite the new
 * entry with a compare-and-set (ABA).
 */
static int t_version_recreate(struct suite *s)
{
    char ns[64];
    uint64_t v1 = 0, v2 = 0, v3 = 0;
    ns_of(s, "", ns, sizeof ns);
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "reborn", "a", RHEMA_VERSION_ANY, &v1));
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "reborn", "b", RHEMA_VERSION_ANY, &v2));
    CHECK_RC(s->c1, 0, s->vt->del(s->c1, ns, "reborn", RHEMA_VERSION_ANY));
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "reborn", "c", RHEMA_VERSION_ABSENT, &v3));
    CHECK(v3 > v2, "the recreated key got version %llu, not above its old %llu",
          (unsigned long long)v3, (unsigned long long)v2);
    CHECK_RC(s->c1, RHEMA_ECONFLICT, put_str(s, s->c1, ns, "reborn", "d", v1, NULL));
    EXPECT_STR(s->c1, ns, "reborn", "c", v3);
    return T_PASS;
}

static int t_expected_match(struct suite *s)
{
    char ns[64];
    uint64_t v1 = 0, v2 = 0;
    ns_of(s, "", ns, sizeof ns);
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "cas", "one", RHEMA_VERSION_ANY, &v1));
    CHECK_RC(s->c2, 0, put_str(s, s->c2, ns, "cas", "two", v1, &v2));
    CHECK(v2 > v1, "version %llu after %llu", (unsigned long long)v2, (unsigned long long)v1);
    EXPECT_STR(s->c1, ns, "cas", "two", v2);
    return T_PASS;
}

static int t_expected_mismatch(struct suite *s)
{
    char ns[64];
    uint64_t v1 = 0, v2 = 0;
    ns_of(s, "", ns, sizeof ns);
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "cas2", "one", RHEMA_VERSION_ANY, &v1));
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "cas2", "two", v1, &v2));
    /* a stale version, and one never handed out */
    CHECK_RC(s->c2, RHEMA_ECONFLICT, put_str(s, s->c2, ns, "cas2", "stale", v1, NULL));
    CHECK_RC(s->c2, RHEMA_ECONFLICT, put_str(s, s->c2, ns, "cas2", "future", v2 + 1000, NULL));
    EXPECT_STR(s->c1, ns, "cas2", "two", v2);
    /* a version on an absent key */
    CHECK_RC(s->c1, RHEMA_ECONFLICT, put_str(s, s->c1, ns, "cas2-absent", "x", v2, NULL));
    EXPECT_MISSING(s->c1, ns, "cas2-absent");
    return T_PASS;
}

static int t_version_absent(struct suite *s)
{
    char ns[64];
    uint64_t v1 = 0;
    ns_of(s, "", ns, sizeof ns);
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "create", "first", RHEMA_VERSION_ABSENT, &v1));
    CHECK_RC(s->c2, RHEMA_ECONFLICT,
             put_str(s, s->c2, ns, "create", "second", RHEMA_VERSION_ABSENT, NULL));
    EXPECT_STR(s->c2, ns, "create", "first", v1);
    return T_PASS;
}

static int t_del(struct suite *s)
{
    char ns[64];
    uint64_t v1 = 0, v2 = 0;
    ns_of(s, "", ns, sizeof ns);
    /* missing */
    CHECK_RC(s->c1, RHEMA_ENOTFOUND, s->vt->del(s->c1, ns, "del-missing", RHEMA_VERSION_ANY));
    /* without a version */
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "del-any", "x", RHEMA_VERSION_ANY, NULL));
    CHECK_RC(s->c1, 0, s->vt->del(s->c1, ns, "del-any", RHEMA_VERSION_ANY));
    EXPECT_MISSING(s->c2, ns, "del-any");
    CHECK_RC(s->c1, RHEMA_ENOTFOUND, s->vt->del(s->c1, ns, "del-any", RHEMA_VERSION_ANY));
    /* with a version: mismatch, then match */
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "del-ver", "a", RHEMA_VERSION_ANY, &v1));
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "del-ver", "b", RHEMA_VERSION_ANY, &v2));
    CHECK_RC(s->c2, RHEMA_ECONFLICT, s->vt->del(s->c2, ns, "del-ver", v1));
    EXPECT_STR(s->c1, ns, "del-ver", "b", v2);
    CHECK_RC(s->c2, 0, s->vt->del(s->c2, ns, "del-ver", v2));
    EXPECT_MISSING(s->c1, ns, "del-ver");
    return T_PASS;
}

static int t_batch_conflict(struct suite *s)
{
    char ns[64];
    uint64_t va = 0, vd = 0;
    struct rhema_storage_write w[4];
    ns_of(s, ".batch", ns, sizeof ns);
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "a", "a0", RHEMA_VERSION_ANY, &va));
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "d", "d0", RHEMA_VERSION_ANY, &vd));
    memset(w, 0, sizeof w);
    w[0] = (struct rhema_storage_write){.size = sizeof(struct rhema_storage_write),
                                        .op = RHEMA_WRITE_PUT,
                                        .ns = ns,
                                        .key = "x",
                                        .value = "x1",
                                        .value_len = 2};
    w[1] = (struct rhema_storage_write){
        .size = sizeof(struct rhema_storage_write), .op = RHEMA_WRITE_DEL, .ns = ns, .key = "d"};
    w[2] = (struct rhema_storage_write){.size = sizeof(struct rhema_storage_write),
                                        .op = RHEMA_WRITE_PUT,
                                        .ns = ns,
                                        .key = "a",
                                        .value = "a1",
                                        .value_len = 2,
                                        .expected_version = va};
    w[3] = (struct rhema_storage_write){.size = sizeof(struct rhema_storage_write),
                                        .op = RHEMA_WRITE_PUT,
                                        .ns = ns,
                                        .key = "a",
                                        .value = "a2",
                                        .value_len = 2,
                                        .expected_version = va}; /* stale after w[2] */
    CHECK_RC(s->c1, RHEMA_ECONFLICT, s->vt->batch(s->c1, w, 4));
    EXPECT_MISSING(s->c2, ns, "x");
    EXPECT_STR(s->c2, ns, "d", "d0", vd);
    EXPECT_STR(s->c2, ns, "a", "a0", va);

    /* a delete of an absent key fails the batch too */
    memset(w, 0, sizeof w);
    w[0] = (struct rhema_storage_write){.size = sizeof(struct rhema_storage_write),
                                        .op = RHEMA_WRITE_PUT,
                                        .ns = ns,
                                        .key = "y",
                                        .value = "y1",
                                        .value_len = 2};
    w[1] = (struct rhema_storage_write){
        .size = sizeof(struct rhema_storage_write), .op = RHEMA_WRITE_DEL, .ns = ns, .key = "d"};
    w[2] = (struct rhema_storage_write){
        .size = sizeof(struct rhema_storage_write), .op = RHEMA_WRITE_DEL, .ns = ns, .key = "nope"};
    CHECK_RC(s->c1, RHEMA_ENOTFOUND, s->vt->batch(s->c1, w, 3));
    EXPECT_MISSING(s->c2, ns, "y");
    EXPECT_STR(s->c2, ns, "d", "d0", vd);
    return T_PASS;
}

#define PUTW(NS, KEY, VAL, LEN, EV)                                                                \
    ((struct rhema_storage_write){.size = sizeof(struct rhema_storage_write),                      \
                                  .op = RHEMA_WRITE_PUT,                                           \
                                  .ns = (NS),                                                      \
                                  .key = (KEY),                                                    \
                                  .value = (VAL),                                                  \
                                  .value_len = (LEN),                                              \
                                  .expected_version = (EV)})

/*
 * Runs of unconditional puts (which a backend may send as one statement):
 * a key twice in a run, an empty and a binary value, a TTL, an overwrite;
 * a batch whose last, checked write fails changes nothing; in a group, a
 * member whose first, checked write fails changes nothing either, while
 * a member of the same shape next to it applies.
 */
static int t_batch_put_runs(struct suite *s)
{
    char ns[64];
    unsigned char bin[300];
    uint64_t vx = 0;
    struct rhema_storage_write w[6];
    struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
    size_t i;
    for (i = 0; i < sizeof bin; i++)
        bin[i] = (unsigned char)(i * 31 + 7);
    bin[5] = 0;
    ns_of(s, ".runs", ns, sizeof ns);
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "exists", "old", RHEMA_VERSION_ANY, &vx));
    w[0] = PUTW(ns, "k1", "one", 3, RHEMA_VERSION_ANY);
    w[1] = PUTW(ns, "k2", bin, sizeof bin, RHEMA_VERSION_ANY);
    w[1].ttl_ms = 3600000;
    w[2] = PUTW(ns, "k3", "", 0, RHEMA_VERSION_ANY);
    w[3] = PUTW(ns, "k1", "one-again", 9, RHEMA_VERSION_ANY);
    w[4] = PUTW(ns, "exists", "overwritten", 11, RHEMA_VERSION_ANY);
    w[5] = PUTW(ns, "k4", "four", 4, RHEMA_VERSION_ANY);
    CHECK_RC(s->c1, 0, s->vt->batch(s->c1, w, 6));
    for (i = 0; i < 6; i++)
        CHECK(w[i].new_version > 0, "write %zu: new_version 0", i);
    CHECK(w[3].new_version > w[0].new_version && w[4].new_version > vx,
          "versions %llu after %llu, %llu after %llu", (unsigned long long)w[3].new_version,
          (unsigned long long)w[0].new_version, (unsigned long long)w[4].new_version,
          (unsigned long long)vx);
    EXPECT_VALUE(s->c2, ns, "k1", "one-again", 9, w[3].new_version);
    EXPECT_VALUE(s->c2, ns, "k2", bin, sizeof bin, w[1].new_version);
    EXPECT_VALUE(s->c2, ns, "k3", "", 0, w[2].new_version);
    EXPECT_VALUE(s->c2, ns, "exists", "overwritten", 11, w[4].new_version);
    EXPECT_VALUE(s->c2, ns, "k4", "four", 4, w[5].new_version);
    /* the checked write last: the run before it is undone */
    w[0] = PUTW(ns, "m1", "m", 1, RHEMA_VERSION_ANY);
    w[1] = PUTW(ns, "m2", "m", 1, RHEMA_VERSION_ANY);
    w[2] = PUTW(ns, "exists", "x", 1, RHEMA_VERSION_ABSENT);
    CHECK_RC(s->c1, RHEMA_ECONFLICT, s->vt->batch(s->c1, w, 3));
    EXPECT_MISSING(s->c2, ns, "m1");
    EXPECT_MISSING(s->c2, ns, "m2");
    EXPECT_VALUE(s->c2, ns, "exists", "overwritten", 11, w[4].new_version);
    if (s->vt->group == NULL)
        return T_PASS;
    /* a session create's shape: one checked put, then unconditional ones */
    struct rhema_storage_write a[3] = {PUTW(ns, "ga", "a", 1, RHEMA_VERSION_ABSENT),
                                       PUTW(ns, "gb", "b", 1, RHEMA_VERSION_ANY),
                                       PUTW(ns, "gc", "c", 1, RHEMA_VERSION_ANY)};
    struct rhema_storage_write b[3] = {PUTW(ns, "exists", "e", 1, RHEMA_VERSION_ABSENT),
                                       PUTW(ns, "gd", "d", 1, RHEMA_VERSION_ANY),
                                       PUTW(ns, "ge", "e", 1, RHEMA_VERSION_ANY)};
    struct rhema_storage_batch g[2] = {{sizeof(struct rhema_storage_batch), -99, b, 3},
                                       {sizeof(struct rhema_storage_batch), -99, a, 3}};
    CHECK_RC(s->c1, 0, s->vt->group(s->c1, g, 2));
    CHECK(g[0].result == RHEMA_ECONFLICT && g[1].result == 0, "member results %s, %s",
          rhema_strerror(g[0].result), rhema_strerror(g[1].result));
    EXPECT_MISSING(s->c2, ns, "gd");
    EXPECT_MISSING(s->c2, ns, "ge");
    EXPECT_VALUE(s->c2, ns, "ga", "a", 1, a[0].new_version);
    EXPECT_VALUE(s->c2, ns, "gb", "b", 1, a[1].new_version);
    EXPECT_VALUE(s->c2, ns, "gc", "c", 1, a[2].new_version);
    CHECK_RC(s->c2, 0, s->vt->get(s->c2, ns, "exists", &v));
    CHECK(v.len == 11, "the failed member changed 'exists' (%zu bytes)", v.len);
    return T_PASS;
}

static int t_batch_apply(struct suite *s)
{
    char ns[64];
    uint64_t vd = 0;
    struct rhema_storage_write w[6];
    struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
    ns_of(s, ".batch", ns, sizeof ns);
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "gone", "g", RHEMA_VERSION_ANY, &vd));
    memset(w, 0, sizeof w);
    w[0] = (struct rhema_storage_write){.size = sizeof(struct rhema_storage_write),
                                        .op = RHEMA_WRITE_PUT,
                                        .ns = ns,
                                        .key = "p1",
                                        .value = "1",
                                        .value_len = 1,
                                        .expected_version = RHEMA_VERSION_ABSENT};
    w[1] = (struct rhema_storage_write){.size = sizeof(struct rhema_storage_write),
                                        .op = RHEMA_WRITE_PUT,
                                        .ns = ns,
                                        .key = "p2",
                                        .value = "2",
                                        .value_len = 1,
                                        .ttl_ms = 0};
    w[2] = (struct rhema_storage_write){.size = sizeof(struct rhema_storage_write),
                                        .op = RHEMA_WRITE_DEL,
                                        .ns = ns,
                                        .key = "gone",
                                        .expected_version = vd};
    /* later writes see earlier ones: p1 exists now, gone is gone */
    w[3] = (struct rhema_storage_write){
        .size = sizeof(struct rhema_storage_write), .op = RHEMA_WRITE_DEL, .ns = ns, .key = "p1"};
    w[4] = (struct rhema_storage_write){.size = sizeof(struct rhema_storage_write),
                                        .op = RHEMA_WRITE_PUT,
                                        .ns = ns,
                                        .key = "p1",
                                        .value = "1b",
                                        .value_len = 2,
                                        .expected_version = RHEMA_VERSION_ABSENT};
    w[5] = (struct rhema_storage_write){.size = sizeof(struct rhema_storage_write),
                                        .op = RHEMA_WRITE_PUT,
                                        .ns = ns,
                                        .key = "gone",
                                        .value = "back",
                                        .value_len = 4,
                                        .expected_version = RHEMA_VERSION_ABSENT};
    CHECK_RC(s->c1, 0, s->vt->batch(s->c1, w, 6));
    CHECK(w[0].new_version > 0 && w[1].new_version > 0 && w[4].new_version > 0 &&
              w[5].new_version > 0,
          "new_version not filled: %llu %llu %llu %llu", (unsigned long long)w[0].new_version,
          (unsigned long long)w[1].new_version, (unsigned long long)w[4].new_version,
          (unsigned long long)w[5].new_version);
    CHECK(w[4].new_version > w[0].new_version, "p1 rewritten with version %llu after %llu",
          (unsigned long long)w[4].new_version, (unsigned long long)w[0].new_version);
    CHECK(w[5].new_version > vd, "recreated key got version %llu, had %llu",
          (unsigned long long)w[5].new_version, (unsigned long long)vd);
    EXPECT_STR(s->c2, ns, "p1", "1b", w[4].new_version);
    EXPECT_STR(s->c2, ns, "p2", "2", w[1].new_version);
    EXPECT_STR(s->c2, ns, "gone", "back", w[5].new_version);

    /* a batch conflicting with its own earlier write changes nothing */
    memset(w, 0, sizeof w);
    w[0] = (struct rhema_storage_write){.size = sizeof(struct rhema_storage_write),
                                        .op = RHEMA_WRITE_PUT,
                                        .ns = ns,
                                        .key = "z",
                                        .value = "z",
                                        .value_len = 1,
                                        .expected_version = RHEMA_VERSION_ABSENT};
    w[1] = (struct rhema_storage_write){.size = sizeof(struct rhema_storage_write),
                                        .op = RHEMA_WRITE_PUT,
                                        .ns = ns,
                                        .key = "z",
                                        .value = "zz",
                                        .value_len = 2,
                                        .expected_version = RHEMA_VERSION_ABSENT};
    CHECK_RC(s->c1, RHEMA_ECONFLICT, s->vt->batch(s->c1, w, 2));
    CHECK_RC(s->c1, RHEMA_ENOTFOUND, s->vt->get(s->c1, ns, "z", &v));
    /* an empty batch is a no-op */
    CHECK_RC(s->c1, 0, s->vt->batch(s->c1, w, 0));
    return T_PASS;
}

/* Keys for the scan checks: prefixes, a space, bytes above 0x7f. */
static const char *const scan_keys[] = {
    "a",  "a/b", "ab", "a/b/c", "aa", "a b", "b", "A", "0", "a\x7f", "a\x80", "a\xc3\xa9",
    "\xff", "\xff\xff", "\x01", "z", "a/", "ab/", "~", NULL};

static int strcmp_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The scan keys in strcmp order, into sorted[] (n entries). */
static size_t sorted_scan_keys(const char **sorted)
{
    size_t n = 0;
    while (scan_keys[n] != NULL) {
        sorted[n] = scan_keys[n];
        n++;
    }
    qsort(sorted, n, sizeof *sorted, strcmp_ptr);
    return n;
}

/* Keep only the keys with from <= key < to. */
static size_t filter_keys(const char **keys, size_t n, const char *from, const char *to,
                          const char **out)
{
    size_t i, m = 0;
    for (i = 0; i < n; i++)
        if ((from == NULL || strcmp(keys[i], from) >= 0) && (to == NULL || strcmp(keys[i], to) < 0))
            out[m++] = keys[i];
    return m;
}

static int t_scan_setup(struct suite *s)
{
    char ns[64], ns2[64];
    size_t n = 0, i, order[64];
    unsigned seed = (unsigned)s->host->monotonic_ns();
    while (scan_keys[n] != NULL)
        n++;
    for (i = 0; i < n; i++)
        order[i] = i;
    for (i = n - 1; i > 0; i--) { /* shuffle the insertion order */
        size_t j = (size_t)rand_r(&seed) % (i + 1), tmp = order[i];
        order[i] = order[j];
        order[j] = tmp;
    }
    ns_of(s, ".scan", ns, sizeof ns);
    ns_of(s, ".scan_x", ns2, sizeof ns2);
    for (i = 0; i < n; i++) {
        const char *k = scan_keys[order[i]];
        char val[64];
        snprintf(val, sizeof val, "v:%s", k);
        CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, k, val, RHEMA_VERSION_ANY, NULL));
        /* the same keys in a namespace that extends this one's name */
        CHECK_RC(s->c1, 0, put_str(s, s->c1, ns2, k, "other", RHEMA_VERSION_ANY, NULL));
    }
    return T_PASS;
}

/* Compare a collected scan with the expected keys (and their values). */
static int expect_keys(struct suite *s, const struct collected *col, const char **want, size_t n,
                       const char *what)
{
    size_t i;
    if (col->n != n)
        return failf(s, "%s: %zu entries, want %zu", what, col->n, n);
    for (i = 0; i < n; i++) {
        char val[64];
        if (strcmp(col->keys[i], want[i]) != 0)
            return failf(s, "%s: entry %zu is key \"%s\", want \"%s\"", what, i, col->keys[i],
                         want[i]);
        snprintf(val, sizeof val, "v:%s", want[i]);
        if (col->value_lens[i] != strlen(val) || memcmp(col->values[i], val, strlen(val)) != 0)
            return failf(s, "%s: wrong value for key \"%s\"", what, want[i]);
        if (col->versions[i] == 0)
            return failf(s, "%s: version 0 for key \"%s\"", what, want[i]);
    }
    return T_PASS;
}

static int t_scan_order(struct suite *s)
{
    const char *sorted[64];
    char ns[64];
    struct collected col = {0};
    size_t n = sorted_scan_keys(sorted);
    int rc, r;
    ns_of(s, ".scan", ns, sizeof ns);
    rc = scan_into(s, s->c2, ns, NULL, NULL, 0, &col);
    if (rc != 0) {
        collected_free(&col);
        return failf(s, "scan returned %s; errmsg: %s", rhema_strerror(rc), emsg(s, s->c2));
    }
    r = expect_keys(s, &col, sorted, n, "full scan");
    collected_free(&col);
    return r;
}

static int t_scan_bounds(struct suite *s)
{
    static const char *const bounds[][2] = {
        {"a", "ab"}, {"a", NULL},       {NULL, "a/b"}, {"a/", "a/b/c"}, {"a0", "b"},
        {"b", "b"},  {"z", "a"},        {"\x80", NULL}, {"a\x7f", "a\xc3"}, {"", "a"},
        {"zz", NULL}, {"a/b", "a/b\x01"}};
    const char *sorted[64], *want[64];
    char ns[64], what[96];
    struct collected col = {0};
    size_t n = sorted_scan_keys(sorted), i, m;
    int rc, r = T_PASS;
    ns_of(s, ".scan", ns, sizeof ns);
    for (i = 0; i < sizeof bounds / sizeof bounds[0] && r == T_PASS; i++) {
        const char *from = bounds[i][0], *to = bounds[i][1];
        snprintf(what, sizeof what, "scan [%s%s%s, %s%s%s)", from ? "\"" : "",
                 from ? from : "NULL", from ? "\"" : "", to ? "\"" : "", to ? to : "NULL",
                 to ? "\"" : "");
        m = filter_keys(sorted, n, from, to, want);
        rc = scan_into(s, s->c1, ns, from, to, 0, &col);
        if (rc != 0)
            r = failf(s, "%s returned %s; errmsg: %s", what, rhema_strerror(rc), emsg(s, s->c1));
        else
            r = expect_keys(s, &col, want, m, what);
    }
    collected_free(&col);
    return r;
}

static int t_scan_limit(struct suite *s)
{
    const char *sorted[64], *want[64];
    char ns[64];
    struct collected col = {0};
    size_t n = sorted_scan_keys(sorted), m;
    int rc, r;
    ns_of(s, ".scan", ns, sizeof ns);
    rc = scan_into(s, s->c1, ns, NULL, NULL, 3, &col);
    r = rc != 0 ? failf(s, "scan limit 3 returned %s", rhema_strerror(rc))
                : expect_keys(s, &col, sorted, 3, "scan limit 3");
    if (r == T_PASS) {
        m = filter_keys(sorted, n, "a/", NULL, want);
        rc = scan_into(s, s->c1, ns, "a/", NULL, 2, &col);
        r = rc != 0 ? failf(s, "scan from a/ limit 2 returned %s", rhema_strerror(rc))
                    : expect_keys(s, &col, want, m < 2 ? m : 2, "scan from \"a/\" limit 2");
    }
    if (r == T_PASS) {
        rc = scan_into(s, s->c1, ns, NULL, NULL, n + 10, &col);
        r = rc != 0 ? failf(s, "scan limit n+10 returned %s", rhema_strerror(rc))
                    : expect_keys(s, &col, sorted, n, "scan limit above the count");
    }
    collected_free(&col);
    return r;
}

static int t_scan_stop_abort(struct suite *s)
{
    char ns[64];
    struct collected col = {0};
    int rc;
    ns_of(s, ".scan", ns, sizeof ns);
    col.stop_after = 2;
    rc = scan_into(s, s->c1, ns, NULL, NULL, 0, &col);
    if (rc != 0 || col.n != 2) {
        collected_free(&col);
        return failf(s, "callback stop (> 0) after 2: scan returned %s after %zu entries, want OK "
                     "after 2", rhema_strerror(rc), col.n);
    }
    col.stop_after = 0;
    col.abort_after = 3;
    col.abort_code = -1234;
    rc = scan_into(s, s->c1, ns, NULL, NULL, 0, &col);
    if (rc != -1234 || col.n != 3) {
        collected_free(&col);
        return failf(s, "callback abort (-1234) after 3: scan returned %d after %zu entries", rc,
                     col.n);
    }
    collected_free(&col);
    /* the connection still works after a stopped scan */
    col.abort_after = 0;
    rc = scan_into(s, s->c1, ns, "b", NULL, 0, &col);
    collected_free(&col);
    CHECK(rc == 0, "scan after an aborted scan returned %s", rhema_strerror(rc));
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "~", "v:~", RHEMA_VERSION_ANY, NULL));
    return T_PASS;
}

/*
 * Enough keys that a backend paging its scans internally (in chunks, with
 * cursors) has to resume several times; written in one large batch.
 */
#define MANY_KEYS 700

static int t_scan_many(struct suite *s)
{
    struct rhema_storage_write *w = calloc(MANY_KEYS, sizeof *w);
    char (*keys)[16] = calloc(MANY_KEYS, sizeof *keys);
    char ns[64];
    struct collected col = {0};
    size_t i;
    int rc, r = T_PASS;
    if (w == NULL || keys == NULL) {
        free(w);
        free(keys);
        return failf(s, "out of memory");
    }
    ns_of(s, ".many", ns, sizeof ns);
    for (i = 0; i < MANY_KEYS; i++) {
        size_t k = (i * 7919) % MANY_KEYS; /* not in key order */
        snprintf(keys[k], sizeof keys[k], "m%05zu", k);
        w[i] = (struct rhema_storage_write){.size = sizeof(struct rhema_storage_write),
                                            .op = RHEMA_WRITE_PUT,
                                            .ns = ns,
                                            .key = keys[k],
                                            .value = keys[k],
                                            .value_len = strlen(keys[k])};
    }
    rc = s->vt->batch(s->c1, w, MANY_KEYS);
    if (rc != 0)
        r = failf(s, "batch of %d puts returned %s; errmsg: %s", MANY_KEYS, rhema_strerror(rc),
                  emsg(s, s->c1));
    if (r == T_PASS) {
        rc = scan_into(s, s->c2, ns, NULL, NULL, 0, &col);
        if (rc != 0 || col.n != MANY_KEYS)
            r = failf(s, "full scan: %s, %zu entries, want %d", rhema_strerror(rc), col.n,
                      MANY_KEYS);
        for (i = 0; r == T_PASS && i < col.n; i++)
            if (strcmp(col.keys[i], keys[i]) != 0 || col.value_lens[i] != strlen(keys[i]) ||
                memcmp(col.values[i], keys[i], col.value_lens[i]) != 0)
                r = failf(s, "full scan: entry %zu is \"%s\", want \"%s\"", i, col.keys[i],
                          keys[i]);
    }
    if (r == T_PASS) {
        rc = scan_into(s, s->c2, ns, keys[100], keys[650], 400, &col);
        if (rc != 0 || col.n != 400 || strcmp(col.keys[0], keys[100]) != 0 ||
            strcmp(col.keys[399], keys[499]) != 0)
            r = failf(s, "scan [%s, %s) limit 400: %s, %zu entries", keys[100], keys[650],
                      rhema_strerror(rc), col.n);
    }
    if (r == T_PASS) {
        rc = scan_into(s, s->c2, ns, keys[500], keys[650], 0, &col);
        if (rc != 0 || col.n != 150 || strcmp(col.keys[149], keys[649]) != 0)
            r = failf(s, "scan [%s, %s): %s, %zu entries, want 150", keys[500], keys[650],
                      rhema_strerror(rc), col.n);
    }
    collected_free(&col);
    free(w);
    free(keys);
    return r;
}

static int t_namespaces_isolated(struct suite *s)
{
    const char *sorted[64];
    char ns[64], ns2[64], ns3[64];
    struct collected col = {0};
    size_t n = sorted_scan_keys(sorted);
    int rc;
    ns_of(s, ".scan", ns, sizeof ns);
    ns_of(s, ".scan_x", ns2, sizeof ns2);
    ns_of(s, ".other", ns3, sizeof ns3);
    EXPECT_STR(s->c1, ns2, "a", "other", 0);
    EXPECT_STR(s->c1, ns, "a", "v:a", 0);
    EXPECT_MISSING(s->c1, ns3, "a");
    rc = scan_into(s, s->c1, ns2, NULL, NULL, 0, &col);
    if (rc != 0 || col.n != n) {
        collected_free(&col);
        return failf(s, "scan of the second namespace: %s, %zu entries, want %zu",
                     rhema_strerror(rc), col.n, n);
    }
    collected_free(&col);
    rc = scan_into(s, s->c1, ns3, NULL, NULL, 0, &col);
    if (rc != 0 || col.n != 0) {
        collected_free(&col);
        return failf(s, "scan of an empty namespace: %s, %zu entries", rhema_strerror(rc), col.n);
    }
    collected_free(&col);
    CHECK_RC(s->c1, 0, s->vt->del(s->c1, ns2, "a", RHEMA_VERSION_ANY));
    EXPECT_STR(s->c1, ns, "a", "v:a", 0);
    return T_PASS;
}

static int t_visibility(struct suite *s)
{
    char ns[64];
    uint64_t v1 = 0;
    ns_of(s, "", ns, sizeof ns);
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "seen", "by-c1", RHEMA_VERSION_ANY, &v1));
    EXPECT_STR(s->c2, ns, "seen", "by-c1", v1);
    CHECK_RC(s->c2, 0, s->vt->del(s->c2, ns, "seen", v1));
    EXPECT_MISSING(s->c1, ns, "seen");
    return T_PASS;
}

/* get()'s value stays valid until the next call on that connection. */
static int t_get_buffer_stable(struct suite *s)
{
    char ns[64], keep[32];
    struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
    ns_of(s, "", ns, sizeof ns);
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "stable", "old-value", RHEMA_VERSION_ANY, NULL));
    CHECK_RC(s->c1, 0, s->vt->get(s->c1, ns, "stable", &v));
    CHECK(v.len == 9, "length %zu", v.len);
    CHECK_RC(s->c2, 0, put_str(s, s->c2, ns, "stable", "NEW-VALUE-LONGER", RHEMA_VERSION_ANY, NULL));
    CHECK_RC(s->c2, 0, s->vt->del(s->c2, ns, "stable", RHEMA_VERSION_ANY));
    memcpy(keep, v.data, 9);
    CHECK(memcmp(keep, "old-value", 9) == 0,
          "the value returned on c1 changed when c2 wrote the key");
    return T_PASS;
}

/*
 * get_many (optional): found and missing keys, a key asked twice, binary
 * values, entries of two namespaces in one call (the same key in each),
 * values valid until the next call, and a bad key or namespace refused;
 * first right after a scan on the same connection (whose row-by-row mode
 * must not leak into it).
 */
static int t_get_many(struct suite *s)
{
    char ns[64], other[64];
    unsigned char bin[300];
    struct rhema_storage_value v[7];
    int rcs[7];
    uint64_t va = 0, vb = 0, vc = 0;
    size_t i;
    if (s->vt->get_many == NULL) {
        snprintf(s->detail, sizeof s->detail, "get_many not implemented (optional)");
        return T_SKIP;
    }
    for (i = 0; i < sizeof bin; i++)
        bin[i] = (unsigned char)(i * 13);
    ns_of(s, ".gm", ns, sizeof ns);
    ns_of(s, ".other", other, sizeof other);
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "a", "alpha", RHEMA_VERSION_ANY, &va));
    CHECK_RC(s->c1, 0, put(s, s->c1, ns, "b/\xc3\xa9", bin, sizeof bin, RHEMA_VERSION_ANY, 0, &vb));
    CHECK_RC(s->c1, 0, put(s, s->c1, ns, "c", "", 0, RHEMA_VERSION_ANY, 0, &vc));
    CHECK_RC(s->c1, 0, put_str(s, s->c1, other, "elsewhere", "x", RHEMA_VERSION_ANY, NULL));
    CHECK_RC(s->c1, 0, put_str(s, s->c1, other, "a", "other-a", RHEMA_VERSION_ANY, NULL));
    const char *keys[7] = {"a", "missing", "b/\xc3\xa9", "a", "c", "elsewhere", "a"};
    const char *nss[7] = {ns, ns, ns, ns, ns, ns, other};
    memset(v, 0, sizeof v);
    for (i = 0; i < 7; i++) {
        v[i].size = sizeof v[i];
        rcs[i] = 12345;
    }
    struct collected col = {0};
    int src = s->vt->scan(s->c2, ns, NULL, NULL, 0, collect_cb, &col);
    size_t scanned = col.n;
    collected_free(&col);
    CHECK(src == 0 && scanned == 3, "scan before get_many: %s, %zu entries", rhema_strerror(src),
          scanned);
    CHECK_RC(s->c2, 0, s->vt->get_many(s->c2, nss, keys, 7, v, rcs));
    CHECK(rcs[0] == 0 && v[0].len == 5 && memcmp(v[0].data, "alpha", 5) == 0 && v[0].version == va,
          "a: %s, %zu bytes, version %llu", rhema_strerror(rcs[0]), v[0].len,
          (unsigned long long)v[0].version);
    CHECK(rcs[1] == RHEMA_ENOTFOUND, "missing: %s", rhema_strerror(rcs[1]));
    CHECK(rcs[2] == 0 && v[2].len == sizeof bin && memcmp(v[2].data, bin, sizeof bin) == 0 &&
              v[2].version == vb,
          "binary: %s, %zu bytes, version %llu", rhema_strerror(rcs[2]), v[2].len,
          (unsigned long long)v[2].version);
    CHECK(rcs[3] == 0 && v[3].len == 5 && memcmp(v[3].data, "alpha", 5) == 0 && v[3].version == va,
          "a asked twice: %s", rhema_strerror(rcs[3]));
    CHECK(rcs[4] == 0 && v[4].len == 0 && v[4].version == vc, "empty value: %s, %zu bytes",
          rhema_strerror(rcs[4]), v[4].len);
    CHECK(rcs[5] == RHEMA_ENOTFOUND, "a key of another namespace: %s", rhema_strerror(rcs[5]));
    CHECK(rcs[6] == 0 && v[6].len == 7 && memcmp(v[6].data, "other-a", 7) == 0,
          "'a' of the other namespace: %s, %zu bytes", rhema_strerror(rcs[6]), v[6].len);
    /* another connection's writes do not change what c2 was given */
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "a", "ALPHA-CHANGED", RHEMA_VERSION_ANY, NULL));
    CHECK(memcmp(v[0].data, "alpha", 5) == 0 && memcmp(v[2].data, bin, sizeof bin) == 0,
          "values returned on c2 changed when c1 wrote");
    CHECK_RC(s->c2, 0, s->vt->get_many(s->c2, nss, keys, 0, v, rcs));
    const char *bad[2] = {"a", ""}, *bad_ns[2] = {ns, "bad ns!"};
    CHECK_RC(s->c2, RHEMA_EINVAL, s->vt->get_many(s->c2, nss, bad, 2, v, rcs));
    CHECK_RC(s->c2, RHEMA_EINVAL, s->vt->get_many(s->c2, bad_ns, keys, 2, v, rcs));
    return T_PASS;
}

static int t_ttl(struct suite *s)
{
    char ns[64];
    struct rhema_storage_stats st;
    struct collected col = {0};
    uint64_t vt1 = 0, vkeep = 0;
    int rc;
    if (!(s->vt->features & RHEMA_STORAGE_TTL)) {
        snprintf(s->detail, sizeof s->detail, "features lack RHEMA_STORAGE_TTL");
        return T_SKIP;
    }
    ns_of(s, ".ttl", ns, sizeof ns);
    CHECK_RC(s->c1, 0, put(s, s->c1, ns, "short", "s", 1, RHEMA_VERSION_ANY, TTL_MS, &vt1));
    CHECK_RC(s->c1, 0, put(s, s->c1, ns, "gone", "g", 1, RHEMA_VERSION_ANY, TTL_MS, NULL));
    CHECK_RC(s->c1, 0, put(s, s->c1, ns, "forever", "f", 1, RHEMA_VERSION_ANY, 0, &vkeep));
    /* a TTL entry overwritten without a TTL stays */
    CHECK_RC(s->c1, 0, put(s, s->c1, ns, "kept", "k", 1, RHEMA_VERSION_ANY, TTL_MS, NULL));
    CHECK_RC(s->c1, 0, put(s, s->c1, ns, "kept", "K", 1, RHEMA_VERSION_ANY, 0, NULL));
    EXPECT_STR(s->c2, ns, "short", "s", vt1);
    CHECK_RC(s->c1, 0, s->vt->stats(s->c1, ns, &st));
    CHECK(st.entries == 4, "stats before expiry: %llu entries, want 4",
          (unsigned long long)st.entries);

    sleep_ms(TTL_WAIT_MS);
    EXPECT_MISSING(s->c1, ns, "short");
    EXPECT_MISSING(s->c2, ns, "gone");
    EXPECT_STR(s->c1, ns, "forever", "f", vkeep);
    EXPECT_STR(s->c1, ns, "kept", "K", 0);
    rc = scan_into(s, s->c1, ns, NULL, NULL, 0, &col);
    if (rc != 0 || col.n != 2 || strcmp(col.keys[0], "forever") != 0 ||
        strcmp(col.keys[1], "kept") != 0) {
        size_t n = col.n;
        collected_free(&col);
        return failf(s, "scan after expiry: %s, %zu entries, want forever and kept",
                     rhema_strerror(rc), n);
    }
    collected_free(&col);
    CHECK_RC(s->c1, 0, s->vt->stats(s->c1, ns, &st));
    CHECK(st.entries == 2, "stats after expiry: %llu entries, want 2",
          (unsigned long long)st.entries);
    CHECK(st.bytes == strlen("forever") + 1 + strlen("kept") + 1,
          "stats after expiry: %llu bytes, want %zu", (unsigned long long)st.bytes,
          strlen("forever") + 1 + strlen("kept") + 1);
    /* an expired entry cannot be matched, deleted, or block a create */
    CHECK_RC(s->c1, RHEMA_ECONFLICT, put(s, s->c1, ns, "short", "x", 1, vt1, 0, NULL));
    CHECK_RC(s->c1, RHEMA_ENOTFOUND, s->vt->del(s->c1, ns, "gone", RHEMA_VERSION_ANY));
    CHECK_RC(s->c1, 0, put(s, s->c1, ns, "short", "new", 3, RHEMA_VERSION_ABSENT, 0, NULL));
    EXPECT_STR(s->c2, ns, "short", "new", 0);
    return T_PASS;
}

static int t_stats(struct suite *s)
{
    char ns[64];
    struct rhema_storage_stats st, all;
    ns_of(s, ".stats", ns, sizeof ns);
    CHECK_RC(s->c1, 0, s->vt->stats(s->c1, ns, &st));
    CHECK(st.entries == 0 && st.bytes == 0, "empty namespace: %llu entries, %llu bytes",
          (unsigned long long)st.entries, (unsigned long long)st.bytes);
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "k1", "12345", RHEMA_VERSION_ANY, NULL));
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "key2", "", RHEMA_VERSION_ANY, NULL));
    CHECK_RC(s->c1, 0, put(s, s->c1, ns, "k\xc3\xa9", "\0\0\0", 3, RHEMA_VERSION_ANY, 0, NULL));
    CHECK_RC(s->c2, 0, s->vt->stats(s->c2, ns, &st));
    CHECK(st.entries == 3, "%llu entries, want 3", (unsigned long long)st.entries);
    CHECK(st.bytes == 7 + 4 + 6, "%llu bytes, want 17", (unsigned long long)st.bytes);
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "k1", "1", RHEMA_VERSION_ANY, NULL));
    CHECK_RC(s->c1, 0, s->vt->del(s->c1, ns, "key2", RHEMA_VERSION_ANY));
    CHECK_RC(s->c2, 0, s->vt->stats(s->c2, ns, &st));
    CHECK(st.entries == 2 && st.bytes == 3 + 6,
          "after an overwrite and a delete: %llu entries, %llu bytes, want 2, 9",
          (unsigned long long)st.entries, (unsigned long long)st.bytes);
    CHECK_RC(s->c2, 0, s->vt->stats(s->c2, NULL, &all));
    CHECK(all.entries >= st.entries && all.bytes >= st.bytes,
          "total (%llu entries, %llu bytes) below one namespace's", (unsigned long long)all.entries,
          (unsigned long long)all.bytes);
    return T_PASS;
}

static int t_invalid_args(struct suite *s)
{
    char ns[64], longkey[RHEMA_STORAGE_KEY_MAX + 2], ns64[RHEMA_STORAGE_NS_MAX + 2];
    const char *bad_ns[] = {"", "bad/ns", "bad ns", "bad\xc3\xa9", ns64, NULL};
    struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
    struct rhema_storage_stats st;
    struct rhema_storage_write w[2];
    struct collected col = {0};
    size_t i;
    ns_of(s, ".inv", ns, sizeof ns);
    memset(longkey, 'k', sizeof longkey);
    longkey[RHEMA_STORAGE_KEY_MAX + 1] = '\0'; /* one byte too long */
    memset(ns64, 'n', sizeof ns64);
    ns64[RHEMA_STORAGE_NS_MAX + 1] = '\0';

    CHECK_RC(s->c1, RHEMA_EINVAL, s->vt->get(s->c1, ns, "", &v));
    CHECK_RC(s->c1, RHEMA_EINVAL, s->vt->get(s->c1, ns, longkey, &v));
    CHECK_RC(s->c1, RHEMA_EINVAL, put_str(s, s->c1, ns, "", "x", RHEMA_VERSION_ANY, NULL));
    CHECK_RC(s->c1, RHEMA_EINVAL, put_str(s, s->c1, ns, longkey, "x", RHEMA_VERSION_ANY, NULL));
    CHECK_RC(s->c1, RHEMA_EINVAL, s->vt->del(s->c1, ns, "", RHEMA_VERSION_ANY));
    for (i = 0; bad_ns[i] != NULL; i++) {
        CHECK_RC(s->c1, RHEMA_EINVAL, s->vt->get(s->c1, bad_ns[i], "k", &v));
        CHECK_RC(s->c1, RHEMA_EINVAL, put_str(s, s->c1, bad_ns[i], "k", "x", 0, NULL));
        CHECK_RC(s->c1, RHEMA_EINVAL, s->vt->del(s->c1, bad_ns[i], "k", RHEMA_VERSION_ANY));
        CHECK_RC(s->c1, RHEMA_EINVAL, s->vt->scan(s->c1, bad_ns[i], NULL, NULL, 0, collect_cb,
                                                  &col));
        CHECK_RC(s->c1, RHEMA_EINVAL, s->vt->stats(s->c1, bad_ns[i], &st));
    }
    collected_free(&col);
    /* put() takes puts only */
    memset(w, 0, sizeof w);
    w[0] = (struct rhema_storage_write){
        .size = sizeof(struct rhema_storage_write), .op = RHEMA_WRITE_DEL, .ns = ns, .key = "k"};
    CHECK_RC(s->c1, RHEMA_EINVAL, s->vt->put(s->c1, &w[0]));
    /* a batch with one invalid write applies nothing */
    w[0] = (struct rhema_storage_write){.size = sizeof(struct rhema_storage_write),
                                        .op = RHEMA_WRITE_PUT,
                                        .ns = ns,
                                        .key = "good",
                                        .value = "g",
                                        .value_len = 1};
    w[1] = (struct rhema_storage_write){.size = sizeof(struct rhema_storage_write),
                                        .op = RHEMA_WRITE_PUT,
                                        .ns = ns,
                                        .key = "",
                                        .value = "b",
                                        .value_len = 1};
    CHECK_RC(s->c1, RHEMA_EINVAL, s->vt->batch(s->c1, w, 2));
    w[1] = (struct rhema_storage_write){
        .size = sizeof(struct rhema_storage_write), .op = 7, .ns = ns, .key = "bad-op"};
    CHECK_RC(s->c1, RHEMA_EINVAL, s->vt->batch(s->c1, w, 2));
    EXPECT_MISSING(s->c1, ns, "good");
    /* the limits themselves are valid */
    longkey[RHEMA_STORAGE_KEY_MAX] = '\0';
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, longkey, "max", RHEMA_VERSION_ANY, NULL));
    EXPECT_STR(s->c1, ns, longkey, "max", 0);
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "\x01\x7f\x80\xff", "bytes", RHEMA_VERSION_ANY, NULL));
    EXPECT_STR(s->c1, ns, "\x01\x7f\x80\xff", "bytes", 0);
    return T_PASS;
}

/* ---- leases ---- */

static int leases_skipped(struct suite *s)
{
    if (s->vt->features & RHEMA_STORAGE_LEASES)
        return 0;
    snprintf(s->detail, sizeof s->detail, "features lack RHEMA_STORAGE_LEASES");
    return 1;
}

static const char *lease_name(const struct suite *s, const char *tag, char *buf, size_t size)
{
    snprintf(buf, size, "%s/lease/%s", s->base, tag);
    return buf;
}

#define LEASE(C, NAME, HOLDER, TTL, OP, OUT) s->vt->lease((C), (NAME), (HOLDER), (TTL), (OP), (OUT))

static int t_lease_basic(struct suite *s)
{
    char name[128];
    struct rhema_lease_info li;
    uint64_t e1;
    if (leases_skipped(s))
        return T_SKIP;
    lease_name(s, "basic", name, sizeof name);

    memset(&li, 0xa5, sizeof li);
    CHECK_RC(s->c1, RHEMA_ENOTFOUND, LEASE(s->c1, name, "A", 0, RHEMA_LEASE_QUERY, &li));
    CHECK(li.holder[0] == '\0' && li.epoch == 0, "a never-held lease: holder '%.20s', epoch %llu",
          li.holder, (unsigned long long)li.epoch);

    CHECK_RC(s->c1, 0, LEASE(s->c1, name, "A", LONG_TTL_MS, RHEMA_LEASE_ACQUIRE, &li));
    e1 = li.epoch;
    CHECK(e1 > 0, "epoch 0 on acquire");
    CHECK(strcmp(li.holder, "A") == 0, "holder '%s' after A's acquire", li.holder);
    CHECK(li.ttl_remaining_ms > 0 && li.ttl_remaining_ms <= LONG_TTL_MS, "ttl_remaining_ms %llu",
          (unsigned long long)li.ttl_remaining_ms);

    CHECK_RC(s->c2, RHEMA_ECONFLICT, LEASE(s->c2, name, "B", LONG_TTL_MS, RHEMA_LEASE_ACQUIRE, &li));
    CHECK(strcmp(li.holder, "A") == 0 && li.epoch == e1,
          "B's conflict reports holder '%s' epoch %llu, want A, %llu", li.holder,
          (unsigned long long)li.epoch, (unsigned long long)e1);

    CHECK_RC(s->c1, 0, LEASE(s->c1, name, "A", LONG_TTL_MS, RHEMA_LEASE_ACQUIRE, &li));
    CHECK(li.epoch == e1, "A's re-acquire changed the epoch from %llu to %llu",
          (unsigned long long)e1, (unsigned long long)li.epoch);
    CHECK_RC(s->c1, 0, LEASE(s->c1, name, "A", LONG_TTL_MS, RHEMA_LEASE_RENEW, &li));
    CHECK(li.epoch == e1, "A's renew changed the epoch");

    CHECK_RC(s->c2, RHEMA_ECONFLICT, LEASE(s->c2, name, "B", LONG_TTL_MS, RHEMA_LEASE_RENEW, &li));
    CHECK_RC(s->c2, RHEMA_ECONFLICT, LEASE(s->c2, name, "B", 0, RHEMA_LEASE_RELEASE, &li));
    CHECK(strcmp(li.holder, "A") == 0, "B's failed release reports holder '%s'", li.holder);

    CHECK_RC(s->c2, 0, LEASE(s->c2, name, NULL, 0, RHEMA_LEASE_QUERY, &li));
    CHECK(strcmp(li.holder, "A") == 0 && li.epoch == e1, "query: holder '%s' epoch %llu",
          li.holder, (unsigned long long)li.epoch);
    CHECK(li.ttl_remaining_ms > 0, "query: ttl_remaining_ms 0 while held");

    CHECK_RC(s->c1, 0, LEASE(s->c1, name, "A", 0, RHEMA_LEASE_RELEASE, NULL));
    CHECK_RC(s->c1, RHEMA_ECONFLICT, LEASE(s->c1, name, "A", 0, RHEMA_LEASE_RELEASE, NULL));
    CHECK_RC(s->c1, RHEMA_ECONFLICT, LEASE(s->c1, name, "A", LONG_TTL_MS, RHEMA_LEASE_RENEW, NULL));
    memset(&li, 0xa5, sizeof li);
    CHECK_RC(s->c2, RHEMA_ENOTFOUND, LEASE(s->c2, name, NULL, 0, RHEMA_LEASE_QUERY, &li));
    CHECK(li.holder[0] == '\0' && li.epoch == e1 && li.ttl_remaining_ms == 0,
          "query after release: holder '%.20s' epoch %llu ttl %llu, want '', %llu, 0", li.holder,
          (unsigned long long)li.epoch, (unsigned long long)li.ttl_remaining_ms,
          (unsigned long long)e1);

    CHECK_RC(s->c2, 0, LEASE(s->c2, name, "B", LONG_TTL_MS, RHEMA_LEASE_ACQUIRE, &li));
    CHECK(li.epoch > e1, "B acquired after release with epoch %llu, not above %llu",
          (unsigned long long)li.epoch, (unsigned long long)e1);
    CHECK_RC(s->c2, 0, LEASE(s->c2, name, "B", 0, RHEMA_LEASE_RELEASE, NULL));
    return T_PASS;
}

static int t_lease_expiry(struct suite *s)
{
    char name[128];
    struct rhema_lease_info li;
    uint64_t eb;
    if (leases_skipped(s))
        return T_SKIP;
    lease_name(s, "expiry", name, sizeof name);
    CHECK_RC(s->c2, 0, LEASE(s->c2, name, "B", TTL_MS, RHEMA_LEASE_ACQUIRE, &li));
    eb = li.epoch;
    CHECK_RC(s->c1, RHEMA_ECONFLICT, LEASE(s->c1, name, "A", TTL_MS, RHEMA_LEASE_ACQUIRE, NULL));
    sleep_ms(TTL_WAIT_MS);
    CHECK_RC(s->c1, RHEMA_ENOTFOUND, LEASE(s->c1, name, NULL, 0, RHEMA_LEASE_QUERY, &li));
    CHECK_RC(s->c2, RHEMA_ECONFLICT, LEASE(s->c2, name, "B", TTL_MS, RHEMA_LEASE_RENEW, NULL));
    CHECK_RC(s->c1, 0, LEASE(s->c1, name, "A", LONG_TTL_MS, RHEMA_LEASE_ACQUIRE, &li));
    CHECK(li.epoch > eb, "A acquired an expired lease with epoch %llu, not above %llu",
          (unsigned long long)li.epoch, (unsigned long long)eb);
    CHECK_RC(s->c1, 0, LEASE(s->c1, name, "A", 0, RHEMA_LEASE_RELEASE, NULL));
    return T_PASS;
}

static int t_lease_epochs(struct suite *s)
{
    char name[128];
    struct rhema_lease_info li;
    uint64_t last = 0;
    int i;
    if (leases_skipped(s))
        return T_SKIP;
    lease_name(s, "cycles", name, sizeof name);
    for (i = 0; i < 20; i++) {
        rhema_storage_conn *c = i % 2 ? s->c2 : s->c1;
        const char *who = i % 3 ? "node-1" : "node-2";
        CHECK_RC(c, 0, LEASE(c, name, who, LONG_TTL_MS, RHEMA_LEASE_ACQUIRE, &li));
        CHECK(li.epoch > last, "cycle %d: epoch %llu after %llu", i, (unsigned long long)li.epoch,
              (unsigned long long)last);
        last = li.epoch;
        CHECK_RC(c, 0, LEASE(c, name, who, 0, RHEMA_LEASE_RELEASE, NULL));
    }
    /* a different name has its own, independent lease */
    lease_name(s, "cycles2", name, sizeof name);
    CHECK_RC(s->c1, 0, LEASE(s->c1, name, "node-1", LONG_TTL_MS, RHEMA_LEASE_ACQUIRE, &li));
    CHECK_RC(s->c1, 0, LEASE(s->c1, name, "node-1", 0, RHEMA_LEASE_RELEASE, NULL));
    return T_PASS;
}

static int t_lease_invalid(struct suite *s)
{
    char name[128], holder[RHEMA_LEASE_HOLDER_MAX + 2], longname[RHEMA_STORAGE_KEY_MAX + 2];
    if (leases_skipped(s))
        return T_SKIP;
    lease_name(s, "invalid", name, sizeof name);
    memset(holder, 'h', sizeof holder);
    holder[RHEMA_LEASE_HOLDER_MAX + 1] = '\0';
    memset(longname, 'l', sizeof longname);
    longname[RHEMA_STORAGE_KEY_MAX + 1] = '\0';
    CHECK_RC(s->c1, RHEMA_EINVAL, LEASE(s->c1, "", "A", LONG_TTL_MS, RHEMA_LEASE_ACQUIRE, NULL));
    CHECK_RC(s->c1, RHEMA_EINVAL,
             LEASE(s->c1, longname, "A", LONG_TTL_MS, RHEMA_LEASE_ACQUIRE, NULL));
    CHECK_RC(s->c1, RHEMA_EINVAL, LEASE(s->c1, name, "", LONG_TTL_MS, RHEMA_LEASE_ACQUIRE, NULL));
    CHECK_RC(s->c1, RHEMA_EINVAL, LEASE(s->c1, name, holder, LONG_TTL_MS, RHEMA_LEASE_ACQUIRE,
                                        NULL));
    CHECK_RC(s->c1, RHEMA_EINVAL, LEASE(s->c1, name, "A", 0, RHEMA_LEASE_ACQUIRE, NULL));
    CHECK_RC(s->c1, RHEMA_EINVAL, LEASE(s->c1, name, "A", LONG_TTL_MS, 99, NULL));
    holder[RHEMA_LEASE_HOLDER_MAX] = '\0'; /* the maximum is valid */
    CHECK_RC(s->c1, 0, LEASE(s->c1, name, holder, LONG_TTL_MS, RHEMA_LEASE_ACQUIRE, NULL));
    CHECK_RC(s->c1, 0, LEASE(s->c1, name, holder, 0, RHEMA_LEASE_RELEASE, NULL));
    return T_PASS;
}

struct race {
    struct suite *s;
    const char *name;
    uint64_t deadline_ms;   /* run at least until then ... */
    uint64_t hard_deadline_ms; /* ... and until RACE_GRANTS grants, but not past this */
    atomic_int go; /* 0: wait, 1: run, -1: give up */
    atomic_int holders;     /* how many threads believe they hold the lease */
    atomic_int violations;  /* times two did at once */
    atomic_int bad_epochs;  /* a new holder with an epoch not above the last */
    atomic_int errors;
    atomic_uint grants;
    atomic_ullong last_epoch;
    char error[256];        /* the first unexpected error */
    pthread_mutex_t error_lock;
};

struct racer {
    struct race *race;
    char holder[16];
};

static void race_error(struct race *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void race_error(struct race *r, const char *fmt, ...)
{
    va_list ap;
    atomic_fetch_add(&r->errors, 1);
    pthread_mutex_lock(&r->error_lock);
    if (r->error[0] == '\0') {
        va_start(ap, fmt);
        vsnprintf(r->error, sizeof r->error, fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&r->error_lock);
}

static void *lease_racer(void *arg)
{
    struct racer *me = arg;
    struct race *r = me->race;
    struct suite *s = r->s;
    rhema_storage_conn *c = NULL;
    char *err = NULL;
    int rc = s->vt->connect(s->inst, &c, &err);
    while (atomic_load(&r->go) == 0) /* start together, once both are connected */
        sched_yield();
    if (rc == 0 && atomic_load(&r->go) < 0) {
        s->vt->disconnect(c);
        return NULL;
    }
    if (rc != 0) {
        race_error(r, "connect in a thread: %s: %s", rhema_strerror(rc), err ? err : "");
        free(err);
        return NULL;
    }
    for (;;) {
        uint64_t now = mono_ms(s);
        if (now >= r->hard_deadline_ms ||
            (now >= r->deadline_ms && atomic_load(&r->grants) >= RACE_GRANTS))
            break;
        struct rhema_lease_info li;
        rc = s->vt->lease(c, r->name, me->holder, LONG_TTL_MS, RHEMA_LEASE_ACQUIRE, &li);
        if (rc == 0) {
            if (atomic_fetch_add(&r->holders, 1) != 0)
                atomic_fetch_add(&r->violations, 1);
            if (li.epoch <= atomic_load(&r->last_epoch))
                atomic_fetch_add(&r->bad_epochs, 1);
            atomic_store(&r->last_epoch, li.epoch);
            atomic_fetch_add(&r->grants, 1);
            sched_yield(); /* hold it for a moment */
            atomic_fetch_sub(&r->holders, 1);
            rc = s->vt->lease(c, r->name, me->holder, 0, RHEMA_LEASE_RELEASE, NULL);
            if (rc != 0 && rc != RHEMA_EUNAVAIL)
                race_error(r, "release by its holder: %s: %s", rhema_strerror(rc),
                           s->vt->errmsg(c));
        } else if (rc != RHEMA_ECONFLICT && rc != RHEMA_EUNAVAIL) {
            race_error(r, "acquire: %s: %s", rhema_strerror(rc), s->vt->errmsg(c));
            break;
        }
    }
    s->vt->disconnect(c);
    return NULL;
}

static int t_lease_contention(struct suite *s)
{
    char name[128];
    struct race r;
    struct racer who[2];
    pthread_t th[2];
    int i, started = 0;
    if (leases_skipped(s))
        return T_SKIP;
    memset(&r, 0, sizeof r);
    pthread_mutex_init(&r.error_lock, NULL);
    r.s = s;
    r.name = lease_name(s, "race", name, sizeof name);
    for (i = 0; i < 2; i++) {
        who[i].race = &r;
        snprintf(who[i].holder, sizeof who[i].holder, "racer-%d", i);
        if (pthread_create(&th[i], NULL, lease_racer, &who[i]) != 0)
            break;
        started++;
    }
    r.deadline_ms = mono_ms(s) + RACE_MS;
    r.hard_deadline_ms = r.deadline_ms + 10 * RACE_MS;
    atomic_store(&r.go, started == 2 ? 1 : -1);
    for (i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    pthread_mutex_destroy(&r.error_lock);
    CHECK(started == 2, "could not start the threads");
    CHECK(atomic_load(&r.violations) == 0, "two holders at once %d times",
          atomic_load(&r.violations));
    CHECK(atomic_load(&r.bad_epochs) == 0, "%d new holders got an epoch not above the last",
          atomic_load(&r.bad_epochs));
    CHECK(atomic_load(&r.errors) == 0, "%d errors, the first: %s", atomic_load(&r.errors),
          r.error);
    CHECK(atomic_load(&r.grants) >= RACE_GRANTS, "only %u grants in %d ms",
          atomic_load(&r.grants), 11 * RACE_MS);
    return T_PASS;
}

/* ---- concurrent writers ---- */

struct cas_race {
    struct suite *s;
    const char *ns;
    atomic_int errors;
    char error[256];
    pthread_mutex_t error_lock;
};

static void cas_error(struct cas_race *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void cas_error(struct cas_race *r, const char *fmt, ...)
{
    va_list ap;
    atomic_fetch_add(&r->errors, 1);
    pthread_mutex_lock(&r->error_lock);
    if (r->error[0] == '\0') {
        va_start(ap, fmt);
        vsnprintf(r->error, sizeof r->error, fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&r->error_lock);
}

/* CAS_INCREMENTS read-modify-write increments of the "counter" key. */
static void *cas_writer(void *arg)
{
    struct cas_race *r = arg;
    struct suite *s = r->s;
    rhema_storage_conn *c = NULL;
    char *err = NULL;
    uint64_t give_up = mono_ms(s) + 20000;
    int i, rc = s->vt->connect(s->inst, &c, &err);
    if (rc != 0) {
        cas_error(r, "connect in a thread: %s: %s", rhema_strerror(rc), err ? err : "");
        free(err);
        return NULL;
    }
    for (i = 0; i < CAS_INCREMENTS && atomic_load(&r->errors) == 0; i++) {
        for (;;) {
            struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
            char buf[32];
            unsigned long long n = 0;
            uint64_t expected;
            if (mono_ms(s) > give_up) {
                cas_error(r, "no progress in 20 s");
                break;
            }
            rc = s->vt->get(c, r->ns, "counter", &v);
            if (rc == RHEMA_ENOTFOUND) {
                expected = RHEMA_VERSION_ABSENT;
            } else if (rc == 0) {
                size_t len = v.len < sizeof buf - 1 ? v.len : sizeof buf - 1;
                memcpy(buf, v.data, len);
                buf[len] = '\0';
                n = strtoull(buf, NULL, 10);
                expected = v.version;
            } else if (rc == RHEMA_EUNAVAIL) {
                continue;
            } else {
                cas_error(r, "get: %s: %s", rhema_strerror(rc), s->vt->errmsg(c));
                break;
            }
            snprintf(buf, sizeof buf, "%llu", n + 1);
            rc = put_str(s, c, r->ns, "counter", buf, expected, NULL);
            if (rc == 0)
                break;
            if (rc != RHEMA_ECONFLICT && rc != RHEMA_EUNAVAIL) {
                cas_error(r, "put: %s: %s", rhema_strerror(rc), s->vt->errmsg(c));
                break;
            }
        }
    }
    s->vt->disconnect(c);
    return NULL;
}

static int t_concurrent_writers(struct suite *s)
{
    char ns[64];
    struct cas_race r;
    pthread_t th[2];
    int i, started = 0;
    ns_of(s, ".cas", ns, sizeof ns);
    memset(&r, 0, sizeof r);
    pthread_mutex_init(&r.error_lock, NULL);
    r.s = s;
    r.ns = ns;
    for (i = 0; i < 2; i++) {
        if (pthread_create(&th[i], NULL, cas_writer, &r) != 0)
            break;
        started++;
    }
    for (i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    pthread_mutex_destroy(&r.error_lock);
    CHECK(started == 2, "could not start the threads");
    CHECK(atomic_load(&r.errors) == 0, "%d errors, the first: %s", atomic_load(&r.errors),
          r.error);
    {
        char want[32];
        snprintf(want, sizeof want, "%d", 2 * CAS_INCREMENTS);
        EXPECT_STR(s->c1, ns, "counter", want, 0);
    }
    return T_PASS;
}

/* ---- backup ---- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int t_backup(struct suite *s)
{
    const char *tmpdir = getenv("TMPDIR");
    char dir[512], full[600], ns[64], *err = NULL;
    struct stat st;
    int rc, r = T_PASS;
    if (s->vt->backup == NULL) {
        snprintf(s->detail, sizeof s->detail, "backup is NULL (optional)");
        return T_SKIP;
    }
    snprintf(dir, sizeof dir, "%s/rhema-conf-XXXXXX",
             tmpdir != NULL && tmpdir[0] != '\0' ? tmpdir : "/tmp");
    if (mkdtemp(dir) == NULL)
        return failf(s, "mkdtemp(%s): %s", dir, strerror(errno));
    snprintf(full, sizeof full, "%s/backup", dir);
    ns_of(s, "", ns, sizeof ns);
    rc = put_str(s, s->c1, ns, "backed-up", "yes", RHEMA_VERSION_ANY, NULL);
    if (rc != 0)
        r = failf(s, "put before the backup returned %s: %s", rhema_strerror(rc), emsg(s, s->c1));
    if (r == T_PASS && (rc = s->vt->backup(s->c1, full, &err)) != 0)
        r = failf(s, "backup(%s) returned %s: %s", full, rhema_strerror(rc),
                  err ? err : emsg(s, s->c1));
    else if (r == T_PASS && stat(full, &st) != 0)
        r = failf(s, "backup(%s) returned OK but created nothing", full);
    else if (r == T_PASS && S_ISREG(st.st_mode) && st.st_size == 0)
        r = failf(s, "backup(%s) created an empty file", full);
    else if (r == T_PASS && S_ISDIR(st.st_mode)) {
        DIR *d = opendir(full);
        struct dirent *e;
        int entries = 0;
        while (d != NULL && (e = readdir(d)) != NULL)
            if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
                entries++;
        if (d != NULL)
            closedir(d);
        if (entries == 0)
            r = failf(s, "backup(%s) created an empty directory", full);
    } else if (r == T_PASS && !S_ISREG(st.st_mode))
        r = failf(s, "backup(%s) created neither a file nor a directory", full);
    free(err);
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return r;
}

/* ---- restore (backup and restore both present) ---- */

/* The largest regular file under path (path itself when it is a file). */
static char largest_path[1024];
static off_t largest_size;

static int largest_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)ftw;
    if (flag == FTW_F && S_ISREG(st->st_mode) && st->st_size > largest_size) {
        largest_size = st->st_size;
        snprintf(largest_path, sizeof largest_path, "%s", path);
    }
    return 0;
}

static int reconnect_only(struct suite *s, char **err)
{
    int rc = 0;
    if (s->c1 == NULL)
        rc = s->vt->connect(s->inst, &s->c1, err);
    if (rc == 0 && s->c2 == NULL)
        rc = s->vt->connect(s->inst, &s->c2, err);
    return rc;
}

/* Restore `path` with no connection open, as the contract asks; reconnects. */
static int restore_offline(struct suite *s, const char *path, char **err)
{
    char *cerr = NULL;
    int rc, rc2;
    s->vt->disconnect(s->c1);
    s->vt->disconnect(s->c2);
    s->c1 = s->c2 = NULL;
    rc = s->vt->restore(s->inst, path, err);
    rc2 = reconnect_only(s, &cerr);
    if (rc2 != 0) {
        snprintf(s->detail, sizeof s->detail, "connect after restore: %s", cerr ? cerr : "");
        free(cerr);
        return rc == 0 ? rc2 : rc;
    }
    return rc;
}

/*
 * The contract of restore() (storage.h): the store equals the snapshot --
 * values, versions, scan order, TTL entries -- writes after it are gone; a
 * put afterwards gets a version above every version handed out before the
 * restore; lease epochs are max(snapshot, current): a lease whose epoch
 * moved on after the snapshot comes back free at that epoch, a lease held
 * at the snapshot and untouched since comes back held.  Then a truncated
 * backup is refused and changes nothing.
 */
static const char *seq_key_of(char *buf, size_t size, const char *prefix, uint64_t version);

static int backup_restore_in(struct suite *s, const char *dir)
{
    char ns[64], snap[600], l1[128], l2[128], l3[128], l4[128], *err = NULL;
    struct rhema_lease_info li;
    struct collected col = {0};
    uint64_t va, vb1, vb, vc, ve, vbin, vttl = 0, va2, vd, vf, vp, top;
    uint64_t eA = 0, e2 = 0, eB = 0, e2c = 0, e3 = 0, eG = 0;
    const int leases = (s->vt->features & RHEMA_STORAGE_LEASES) != 0;
    const int ttl = (s->vt->features & RHEMA_STORAGE_TTL) != 0;
    const int seq = s->vt->base.abi_minor >= 3 && (s->vt->features & RHEMA_STORAGE_SEQUENCED);
    /* sequenced records, in .seq */
    char seq_ns[64];
    struct rhema_storage_write sw[2];
    uint64_t v_rec = 0, v_rec_after = 0;
    int rc, fd;

    ns_of(s, ".seq", seq_ns, sizeof seq_ns);
    snprintf(snap, sizeof snap, "%s/snap", dir);
    ns_of(s, ".rst", ns, sizeof ns);
    /* the snapshot's content */
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "a", "1", RHEMA_VERSION_ABSENT, &va));
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "b", "2", RHEMA_VERSION_ANY, &vb1));
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "b", "22", vb1, &vb));
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "c", "3", RHEMA_VERSION_ANY, &vc));
    CHECK_RC(s->c1, 0, put(s, s->c1, ns, "e", "", 0, RHEMA_VERSION_ANY, 0, &ve));
    CHECK_RC(s->c1, 0, put(s, s->c1, ns, "bin", "\0\x01\xff", 3, RHEMA_VERSION_ANY, 0, &vbin));
    if (ttl)
        CHECK_RC(s->c1, 0, put(s, s->c1, ns, "ttl", "t", 1, RHEMA_VERSION_ANY, LONG_TTL_MS, &vttl));
    if (leases) {
        lease_name(s, "rst1", l1, sizeof l1);
        lease_name(s, "rst2", l2, sizeof l2);
        lease_name(s, "rst3", l3, sizeof l3);
        lease_name(s, "rst4", l4, sizeof l4);
        CHECK_RC(s->c1, 0, LEASE(s->c1, l1, "A", LONG_TTL_MS, RHEMA_LEASE_ACQUIRE, &li));
        eA = li.epoch;
        CHECK_RC(s->c1, 0, LEASE(s->c1, l2, "A", LONG_TTL_MS, RHEMA_LEASE_ACQUIRE, &li));
        e2 = li.epoch;
        CHECK_RC(s->c1, 0, LEASE(s->c1, l2, "A", 0, RHEMA_LEASE_RELEASE, NULL));
        CHECK_RC(s->c1, 0, LEASE(s->c1, l4, "G", LONG_TTL_MS, RHEMA_LEASE_ACQUIRE, &li));
        eG = li.epoch;
    }
    if (seq) { /* a change and its record */
        sw[0] = PUTW(seq_ns, "rst-change", "c", 1, RHEMA_VERSION_ANY);
        sw[1] = PUTW(seq_ns, "rv/", "rec", 3, RHEMA_VERSION_ANY);
        sw[1].flags = RHEMA_WRITE_SEQUENCED;
        CHECK_RC(s->c1, 0, s->vt->batch(s->c1, sw, 2));
        v_rec = sw[1].new_version;
    }
    rc = s->vt->backup(s->c1, snap, &err);
    if (rc != 0) {
        failf(s, "backup(%s) returned %s: %s", snap, rhema_strerror(rc), err ? err : "");
        free(err);
        return T_FAIL;
    }
    /* changes after the snapshot: all undone by the restore, epochs aside */
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "a", "changed", va, &va2));
    CHECK_RC(s->c1, 0, s->vt->del(s->c1, ns, "c", RHEMA_VERSION_ANY));
    CHECK_RC(s->c1, 0, s->vt->del(s->c1, ns, "e", RHEMA_VERSION_ANY));
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "d", "new", RHEMA_VERSION_ABSENT, &vd));
    if (leases) {
        CHECK_RC(s->c1, 0, LEASE(s->c1, l1, "A", 0, RHEMA_LEASE_RELEASE, NULL));
        CHECK_RC(s->c1, 0, LEASE(s->c1, l1, "B", LONG_TTL_MS, RHEMA_LEASE_ACQUIRE, &li));
        eB = li.epoch;
        CHECK_RC(s->c1, 0, LEASE(s->c1, l2, "C", LONG_TTL_MS, RHEMA_LEASE_ACQUIRE, &li));
        e2c = li.epoch;
        CHECK_RC(s->c1, 0, LEASE(s->c1, l3, "D", LONG_TTL_MS, RHEMA_LEASE_ACQUIRE, &li));
        e3 = li.epoch;
    }
    top = va2 > vd ? va2 : vd;
    if (seq) { /* a record after the snapshot: gone after the restore */
        sw[1] = PUTW(seq_ns, "rv/", "later", 5, RHEMA_VERSION_ANY);
        sw[1].flags = RHEMA_WRITE_SEQUENCED;
        CHECK_RC(s->c1, 0, s->vt->put(s->c1, &sw[1]));
        v_rec_after = sw[1].new_version;
        top = top > v_rec_after ? top : v_rec_after;
    }

    rc = restore_offline(s, snap, &err);
    if (rc != 0) {
        failf(s, "restore(%s) returned %s: %s %s", snap, rhema_strerror(rc), err ? err : "",
              s->detail);
        free(err);
        return T_FAIL;
    }
    free(err);
    err = NULL;
    /* the store equals the snapshot */
    EXPECT_STR(s->c1, ns, "a", "1", va);
    EXPECT_STR(s->c2, ns, "b", "22", vb);
    EXPECT_STR(s->c1, ns, "c", "3", vc);
    EXPECT_VALUE(s->c1, ns, "e", "", 0, ve);
    EXPECT_VALUE(s->c1, ns, "bin", "\0\x01\xff", 3, vbin);
    EXPECT_MISSING(s->c1, ns, "d");
    if (ttl)
        EXPECT_STR(s->c1, ns, "ttl", "t", vttl);
    CHECK_RC(s->c1, 0, scan_into(s, s->c1, ns, NULL, NULL, 0, &col));
    {
        static const char *const want[] = {"a", "b", "bin", "c", "e", "ttl"};
        const uint64_t wantv[] = {va, vb, vbin, vc, ve, vttl};
        size_t i, n = ttl ? 6 : 5;
        int ok = col.n == n;
        for (i = 0; ok && i < n; i++)
            ok = strcmp(col.keys[i], want[i]) == 0 && col.versions[i] == wantv[i];
        collected_free(&col);
        CHECK(ok, "the scan after restore is not the snapshot's %zu keys in order with their "
                  "versions", n);
    }
    /* versions never repeat: above everything handed out before the restore */
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "f", "after", RHEMA_VERSION_ABSENT, &vf));
    CHECK(vf > top, "a put after restore got version %llu, not above %llu handed out before it",
          (unsigned long long)vf, (unsigned long long)top);
    /* a compare-and-set with the snapshot's version works */
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "b", "23", vb, NULL));
    if (seq) { /* the record is back under its key and version, the later one is not */
        char key[64];
        EXPECT_STR(s->c2, seq_ns, "rst-change", "c", sw[0].new_version);
        EXPECT_STR(s->c2, seq_ns, seq_key_of(key, sizeof key, "rv/", v_rec), "rec", v_rec);
        EXPECT_MISSING(s->c2, seq_ns, seq_key_of(key, sizeof key, "rv/", v_rec_after));
        sw[1] = PUTW(seq_ns, "rv/", "new", 3, RHEMA_VERSION_ANY);
        sw[1].flags = RHEMA_WRITE_SEQUENCED;
        CHECK_RC(s->c1, 0, s->vt->put(s->c1, &sw[1]));
        CHECK(sw[1].new_version > top, "a record after restore got version %llu, not above %llu",
              (unsigned long long)sw[1].new_version, (unsigned long long)top);
        CHECK_RC(s->c2, 0, scan_into(s, s->c2, seq_ns, "rv/", "rv0", 0, &col));
        {
            int ok = col.n == 2 && col.versions[0] == v_rec && col.versions[1] == sw[1].new_version;
            collected_free(&col);
            CHECK(ok, "the records after restore are not the snapshot's and the new one");
        }
    }
    if (leases) {
        rc = LEASE(s->c1, l1, NULL, 0, RHEMA_LEASE_QUERY, &li);
        CHECK(rc == RHEMA_ENOTFOUND && li.holder[0] == '\0' && li.epoch >= eB,
              "lease 1 after restore: %s, holder '%s', epoch %llu; want free at epoch >= %llu "
              "(max(snapshot %llu, current %llu))",
              rhema_strerror(rc), li.holder, (unsigned long long)li.epoch,
              (unsigned long long)eB, (unsigned long long)eA, (unsigned long long)eB);
        CHECK_RC(s->c1, 0, LEASE(s->c1, l1, "E", LONG_TTL_MS, RHEMA_LEASE_ACQUIRE, &li));
        CHECK(li.epoch > eB, "lease 1 acquired after restore with epoch %llu, not above %llu",
              (unsigned long long)li.epoch, (unsigned long long)eB);
        CHECK_RC(s->c1, 0, LEASE(s->c1, l2, "F", LONG_TTL_MS, RHEMA_LEASE_ACQUIRE, &li));
        CHECK(li.epoch > e2c && e2c > e2,
              "lease 2 acquired after restore with epoch %llu, not above %llu",
              (unsigned long long)li.epoch, (unsigned long long)e2c);
        rc = LEASE(s->c1, l3, NULL, 0, RHEMA_LEASE_QUERY, &li);
        CHECK(rc == RHEMA_ENOTFOUND, "lease 3 (taken after the snapshot) is held after "
                                     "restore: %s, holder '%s'", rhema_strerror(rc), li.holder);
        CHECK_RC(s->c1, 0, LEASE(s->c1, l3, "H", LONG_TTL_MS, RHEMA_LEASE_ACQUIRE, &li));
        CHECK(li.epoch > e3, "lease 3 acquired after restore with epoch %llu, not above %llu",
              (unsigned long long)li.epoch, (unsigned long long)e3);
        CHECK_RC(s->c1, 0, LEASE(s->c1, l4, NULL, 0, RHEMA_LEASE_QUERY, &li));
        CHECK(strcmp(li.holder, "G") == 0 && li.epoch == eG && li.ttl_remaining_ms > 0,
              "lease 4 (held at the snapshot) after restore: holder '%s' epoch %llu, want G, %llu",
              li.holder, (unsigned long long)li.epoch, (unsigned long long)eG);
        LEASE(s->c1, l1, "E", 0, RHEMA_LEASE_RELEASE, NULL);
        LEASE(s->c1, l2, "F", 0, RHEMA_LEASE_RELEASE, NULL);
        LEASE(s->c1, l3, "H", 0, RHEMA_LEASE_RELEASE, NULL);
        LEASE(s->c1, l4, "G", 0, RHEMA_LEASE_RELEASE, NULL);
    }

    /* a truncated backup: refused, and the store is unchanged */
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "post", "p", RHEMA_VERSION_ANY, &vp));
    largest_path[0] = '\0';
    largest_size = 0;
    nftw(snap, largest_cb, 16, FTW_PHYS);
    CHECK(largest_size > 1, "no file to truncate in the backup %s", snap);
    fd = open(largest_path, O_WRONLY | O_CLOEXEC);
    CHECK(fd >= 0 && ftruncate(fd, largest_size / 2) == 0, "truncate %s: %s", largest_path,
          strerror(errno));
    close(fd);
    rc = restore_offline(s, snap, &err);
    free(err);
    err = NULL;
    CHECK(s->c1 != NULL && s->c2 != NULL, "%s", s->detail);
    CHECK(rc != 0, "restore of a truncated backup (%s cut to %lld bytes) succeeded",
          largest_path, (long long)(largest_size / 2));
    EXPECT_STR(s->c1, ns, "post", "p", vp);
    EXPECT_STR(s->c2, ns, "f", "after", vf);
    EXPECT_STR(s->c1, ns, "a", "1", va);
    EXPECT_MISSING(s->c1, ns, "d");
    return T_PASS;
}

static int t_backup_restore(struct suite *s)
{
    const char *tmpdir = getenv("TMPDIR");
    char dir[512], *err = NULL;
    int r;
    if (s->vt->backup == NULL || s->vt->restore == NULL) {
        snprintf(s->detail, sizeof s->detail, "backup or restore is NULL (optional)");
        return T_SKIP;
    }
    snprintf(dir, sizeof dir, "%s/rhema-conf-XXXXXX",
             tmpdir != NULL && tmpdir[0] != '\0' ? tmpdir : "/tmp");
    if (mkdtemp(dir) == NULL)
        return failf(s, "mkdtemp(%s): %s", dir, strerror(errno));
    r = backup_restore_in(s, dir);
    if ((s->c1 == NULL || s->c2 == NULL) && reconnect_only(s, &err) != 0 && r == T_PASS)
        r = failf(s, "connect after restore: %s", err ? err : "");
    free(err);
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return r;
}

/* ---- durability (DURABLE backends): close, reopen, compare ---- */

static int reconnect(struct suite *s, char **err)
{
    int rc;
    s->vt->disconnect(s->c1);
    s->vt->disconnect(s->c2);
    s->c1 = s->c2 = NULL;
    s->vt->close(s->inst);
    s->inst = NULL;
    rc = s->vt->open(s->host, s->cfg, &s->inst, err);
    if (rc != 0) {
        s->inst = NULL;
        return rc;
    }
    rc = s->vt->connect(s->inst, &s->c1, err);
    if (rc == 0)
        rc = s->vt->connect(s->inst, &s->c2, err);
    return rc;
}

static int t_durable_reopen(struct suite *s)
{
    char ns[64], name[128] = "", *err = NULL;
    struct rhema_lease_info li;
    uint64_t v1 = 0, v2 = 0, epoch = 0;
    int rc;
    if (!(s->vt->features & RHEMA_STORAGE_DURABLE)) {
        snprintf(s->detail, sizeof s->detail, "features lack RHEMA_STORAGE_DURABLE");
        return T_SKIP;
    }
    ns_of(s, ".dur", ns, sizeof ns);
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "kept", "across a restart", RHEMA_VERSION_ANY, &v1));
    CHECK_RC(s->c1, 0, put(s, s->c1, ns, "bin", "\0\xff", 2, RHEMA_VERSION_ANY, 0, NULL));
    if (s->vt->features & RHEMA_STORAGE_LEASES) {
        lease_name(s, "durable", name, sizeof name);
        CHECK_RC(s->c1, 0, LEASE(s->c1, name, "A", LONG_TTL_MS, RHEMA_LEASE_ACQUIRE, &li));
        CHECK_RC(s->c1, 0, LEASE(s->c1, name, "A", 0, RHEMA_LEASE_RELEASE, NULL));
        CHECK_RC(s->c1, 0, LEASE(s->c1, name, "B", LONG_TTL_MS, RHEMA_LEASE_ACQUIRE, &li));
        epoch = li.epoch;
    }
    rc = reconnect(s, &err);
    if (rc != 0) {
        failf(s, "reopen returned %s: %s", rhema_strerror(rc), err ? err : "");
        free(err);
        return T_FAIL;
    }
    EXPECT_STR(s->c2, ns, "kept", "across a restart", v1);
    EXPECT_VALUE(s->c1, ns, "bin", "\0\xff", 2, 0);
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "after", "x", RHEMA_VERSION_ANY, &v2));
    CHECK(v2 > v1, "a version after the restart (%llu) is not above one before (%llu)",
          (unsigned long long)v2, (unsigned long long)v1);
    if (s->vt->features & RHEMA_STORAGE_LEASES) {
        CHECK_RC(s->c1, 0, LEASE(s->c1, name, NULL, 0, RHEMA_LEASE_QUERY, &li));
        CHECK(strcmp(li.holder, "B") == 0 && li.epoch == epoch,
              "after reopen the lease is held by '%s' epoch %llu, want B, %llu", li.holder,
              (unsigned long long)li.epoch, (unsigned long long)epoch);
        CHECK_RC(s->c1, 0, LEASE(s->c1, name, "B", 0, RHEMA_LEASE_RELEASE, NULL));
        CHECK_RC(s->c2, 0, LEASE(s->c2, name, "C", LONG_TTL_MS, RHEMA_LEASE_ACQUIRE, &li));
        CHECK(li.epoch > epoch, "epoch %llu after reopen, not above %llu",
              (unsigned long long)li.epoch, (unsigned long long)epoch);
        CHECK_RC(s->c2, 0, LEASE(s->c2, name, "C", 0, RHEMA_LEASE_RELEASE, NULL));
    }
    return T_PASS;
}

/* ---- rate() (storage minor 2) ---- */

#define RATE_HOUR_US 3600000000ull /* an interval no test outlives: no refill */
#define RATE_THREADS 4             /* connections hammering one key */
#define RATE_THREAD_CALLS 40       /* calls each of them makes */
#define RATE_BURST 9               /* tolerance of the concurrent check, in intervals */
#define RATE_REF_CALLS 120         /* calls compared with rhema_gcra_step */

/* rate() is there: the vtable reaches it (minor 2 or later) and it is set. */
static int rate_skipped(struct suite *s)
{
    const size_t end = offsetof(struct rhema_storage_plugin, rate) + sizeof s->vt->rate;
    if (s->vt->base.abi_minor < 2 || s->vt->base.size < end || s->vt->rate == NULL) {
        snprintf(s->detail, sizeof s->detail,
                 "rate not implemented (optional: the host keeps one limit per node)");
        return 1;
    }
    return 0;
}

/* A rate() key of this run: "conf_<hex>/rate.<tag>". */
static const char *rate_key(const struct suite *s, const char *tag, char *buf, size_t size)
{
    snprintf(buf, size, "%s/rate.%s", s->base, tag);
    return buf;
}

static int64_t host_now_us(const struct suite *s)
{
    return (int64_t)(s->host->realtime_ns() / 1000u);
}

/* One rate() call of key with n windows at the host's now; q is filled and returned. */
static int rate_call(struct suite *s, rhema_storage_conn *c, const char *key,
                     const struct rhema_rate_window *w, size_t n, int64_t now,
                     struct rhema_rate_query *q)
{
    memset(q, 0, sizeof *q);
    q->size = sizeof *q;
    q->key = key;
    q->windows = w;
    q->n = n;
    q->now_us = now != 0 ? now : host_now_us(s);
    q->allowed = -1;
    return s->vt->rate(c, q);
}

#define RATE(C, KEY, W, N, Q) CHECK_RC((C), 0, rate_call(s, (C), (KEY), (W), (N), 0, (Q)))

/*
 * Malformed queries are RHEMA_EINVAL and store nothing: the key they named
 * is fresh afterwards (a window with tolerance 0 allows its first request).
 * A query of a newer host (a larger size) works and its appended members
 * are left alone.
 */
static int t_rate_invalid(struct suite *s)
{
    char key[128], big[RHEMA_RATE_KEY_MAX + 2];
    struct rhema_rate_query q;
    const struct rhema_rate_window w2[2] = {{RATE_HOUR_US, 0}, {0, 0}};
    const struct rhema_rate_window w5[5] = {{RATE_HOUR_US, 0},
                                            {RATE_HOUR_US, 0},
                                            {RATE_HOUR_US, 0},
                                            {RATE_HOUR_US, 0},
                                            {RATE_HOUR_US, 0}};
    const struct rhema_rate_window huge[2] = {{RATE_HOUR_US, 0}, {(uint64_t)1 << 51, 0}};
    const struct rhema_rate_window wide_tol[2] = {{RATE_HOUR_US, 0},
                                                  {RATE_HOUR_US, (uint64_t)1 << 51}};
    const struct rhema_rate_window ok2[2] = {{RATE_HOUR_US, 0}, {RATE_HOUR_US, 0}};
    if (rate_skipped(s))
        return T_SKIP;
    rate_key(s, "inv", key, sizeof key);
    memset(big, 'k', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    CHECK_RC(s->c1, RHEMA_EINVAL, rate_call(s, s->c1, NULL, w2, 1, 0, &q));
    CHECK_RC(s->c1, RHEMA_EINVAL, rate_call(s, s->c1, "", w2, 1, 0, &q));
    CHECK_RC(s->c1, RHEMA_EINVAL, rate_call(s, s->c1, big, w2, 1, 0, &q));
    CHECK_RC(s->c1, RHEMA_EINVAL, rate_call(s, s->c1, key, w2, 0, 0, &q));
    CHECK_RC(s->c1, RHEMA_EINVAL, rate_call(s, s->c1, key, w5, 5, 0, &q));
    CHECK_RC(s->c1, RHEMA_EINVAL, rate_call(s, s->c1, key, NULL, 1, 0, &q));
    CHECK_RC(s->c1, RHEMA_EINVAL, rate_call(s, s->c1, key, w2, 2, 0, &q)); /* interval 0 */
    CHECK_RC(s->c1, RHEMA_EINVAL, rate_call(s, s->c1, key, huge, 2, 0, &q));
    CHECK_RC(s->c1, RHEMA_EINVAL, rate_call(s, s->c1, key, wide_tol, 2, 0, &q));
    CHECK_RC(s->c1, RHEMA_EINVAL, rate_call(s, s->c1, key, ok2, 2, -1, &q)); /* now < 0 */
    memset(&q, 0, sizeof q);
    q.size = RHEMA_RATE_QUERY_SIZE_2 - 1;
    q.key = key;
    q.windows = ok2;
    q.n = 2;
    q.now_us = host_now_us(s);
    CHECK_RC(s->c1, RHEMA_EINVAL, s->vt->rate(s->c1, &q));
    CHECK(s->vt->errmsg(s->c1)[0] != '\0', "no errmsg after RHEMA_EINVAL");
    /* nothing of the above was stored: both windows allow their first request */
    struct {
        struct rhema_rate_query q;
        uint64_t later[2];
    } wide;
    memset(&wide, 0, sizeof wide);
    wide.q.size = sizeof wide;
    wide.q.key = key;
    wide.q.windows = ok2;
    wide.q.n = 2;
    wide.q.now_us = host_now_us(s);
    wide.later[0] = wide.later[1] = 0x5a5a5a5a5a5a5a5aull;
    CHECK_RC(s->c2, 0, s->vt->rate(s->c2, &wide.q));
    CHECK(wide.q.allowed == 1, "the first request after refused queries was refused: a "
                               "malformed query changed the state");
    CHECK(wide.q.tat_us[0] == wide.q.now_us + (int64_t)RATE_HOUR_US &&
              wide.q.tat_us[1] == wide.q.now_us + (int64_t)RATE_HOUR_US,
          "tats %lld, %lld after a first request at %lld, want now + 1 h",
          (long long)wide.q.tat_us[0], (long long)wide.q.tat_us[1], (long long)wide.q.now_us);
    CHECK(wide.later[0] == 0x5a5a5a5a5a5a5a5aull && wide.later[1] == 0x5a5a5a5a5a5a5a5aull,
          "the members after the query of a newer host were overwritten");
    CHECK_RC(s->c2, 0, rate_call(s, s->c2, key, ok2, 2, 0, &q));
    CHECK(q.allowed == 0, "a second request with tolerance 0 and a 1 h interval was allowed");
    return T_PASS;
}

/*
 * Tolerance b x interval: b + 1 requests pass back to back, exactly, each
 * moving tat one interval on, and then refusals that change nothing.
 */
static int t_rate_burst(struct suite *s)
{
    char key[128];
    const int64_t iv = (int64_t)RATE_HOUR_US;
    const struct rhema_rate_window w[1] = {{RATE_HOUR_US, 3 * RATE_HOUR_US}};
    struct rhema_rate_query q;
    int64_t first = 0;
    int i;
    if (rate_skipped(s))
        return T_SKIP;
    rate_key(s, "burst", key, sizeof key);
    for (i = 0; i < 4; i++) {
        RATE(i % 2 ? s->c2 : s->c1, key, w, 1, &q);
        if (i == 0)
            first = q.now_us;
        CHECK(q.allowed == 1, "request %d of a burst of 4 (tolerance 3 intervals) refused", i + 1);
        CHECK(q.tat_us[0] == first + (i + 1) * iv,
              "after request %d: tat %lld, want the first now %lld + %d h", i + 1,
              (long long)q.tat_us[0], (long long)first, i + 1);
    }
    for (i = 0; i < 3; i++) {
        RATE(i % 2 ? s->c2 : s->c1, key, w, 1, &q);
        CHECK(q.allowed == 0, "request %d after a burst of 4 allowed", 5 + i);
        CHECK(q.tat_us[0] == first + 4 * iv,
              "a refusal changed tat: %lld, want %lld (it must change nothing)",
              (long long)q.tat_us[0], (long long)(first + 4 * iv));
    }
    return T_PASS;
}

/*
 * Several windows are all or nothing: a request one window refuses does
 * not consume the others, whichever position the refusing window has.
 */
static int t_rate_windows(struct suite *s)
{
    char key[128];
    const int64_t iv = (int64_t)RATE_HOUR_US;
    /* the strict window (1 + 1 requests) second, then first */
    const struct rhema_rate_window loose_strict[3] = {
        {RATE_HOUR_US, 3 * RATE_HOUR_US}, {RATE_HOUR_US, RATE_HOUR_US}, {1000, 1000000}};
    const struct rhema_rate_window strict_loose[2] = {{RATE_HOUR_US, RATE_HOUR_US},
                                                      {RATE_HOUR_US, 3 * RATE_HOUR_US}};
    struct rhema_rate_query q;
    int64_t first = 0, t0, t1, t2;
    int i;
    if (rate_skipped(s))
        return T_SKIP;
    rate_key(s, "win3", key, sizeof key);
    for (i = 0; i < 2; i++) {
        RATE(s->c1, key, loose_strict, 3, &q);
        if (i == 0)
            first = q.now_us;
        CHECK(q.allowed == 1, "request %d refused; both windows allow 2", i + 1);
    }
    CHECK(q.tat_us[0] == first + 2 * iv && q.tat_us[1] == first + 2 * iv,
          "after 2 requests: tats %lld, %lld, want %lld for both", (long long)q.tat_us[0],
          (long long)q.tat_us[1], (long long)(first + 2 * iv));
    t0 = q.tat_us[0], t1 = q.tat_us[1], t2 = q.tat_us[2];
    for (i = 0; i < 3; i++) {
        RATE(s->c2, key, loose_strict, 3, &q);
        CHECK(q.allowed == 0, "request %d allowed past the strict window", 3 + i);
        CHECK(q.tat_us[0] == t0 && q.tat_us[1] == t1,
              "the refusal by window 1 changed tats: %lld, %lld, want %lld, %lld",
              (long long)q.tat_us[0], (long long)q.tat_us[1], (long long)t0, (long long)t1);
        CHECK(q.tat_us[2] == (t2 > q.now_us ? t2 : q.now_us),
              "the third window's tat %lld after a refusal, want max(%lld, now %lld)",
              (long long)q.tat_us[2], (long long)t2, (long long)q.now_us);
    }
    rate_key(s, "win2", key, sizeof key);
    for (i = 0; i < 2; i++) {
        RATE(s->c1, key, strict_loose, 2, &q);
        if (i == 0)
            first = q.now_us;
        CHECK(q.allowed == 1, "request %d refused; both windows allow 2", i + 1);
    }
    RATE(s->c2, key, strict_loose, 2, &q);
    CHECK(q.allowed == 0 && q.tat_us[0] == first + 2 * iv && q.tat_us[1] == first + 2 * iv,
          "the refusal by window 0: allowed %d, tats %lld, %lld, want 0, %lld, %lld", q.allowed,
          (long long)q.tat_us[0], (long long)q.tat_us[1], (long long)(first + 2 * iv),
          (long long)(first + 2 * iv));
    return T_PASS;
}

/* The same key with another number of windows is another party: it starts fresh. */
static int t_rate_new_n(struct suite *s)
{
    char key[128];
    const struct rhema_rate_window w[2] = {{RATE_HOUR_US, 0}, {RATE_HOUR_US, 0}};
    struct rhema_rate_query q;
    if (rate_skipped(s))
        return T_SKIP;
    rate_key(s, "n", key, sizeof key);
    RATE(s->c1, key, w, 1, &q);
    CHECK(q.allowed == 1, "the first request (n = 1) refused");
    RATE(s->c1, key, w, 1, &q);
    CHECK(q.allowed == 0, "the second request (n = 1, tolerance 0) allowed");
    RATE(s->c2, key, w, 2, &q);
    CHECK(q.allowed == 1 && q.tat_us[0] == q.now_us + (int64_t)RATE_HOUR_US &&
              q.tat_us[1] == q.now_us + (int64_t)RATE_HOUR_US,
          "n = 2 after n = 1: allowed %d, tats %lld, %lld at now %lld (want a fresh start)",
          q.allowed, (long long)q.tat_us[0], (long long)q.tat_us[1], (long long)q.now_us);
    RATE(s->c2, key, w, 2, &q);
    CHECK(q.allowed == 0, "the second request (n = 2, tolerance 0) allowed");
    RATE(s->c1, key, w, 1, &q);
    CHECK(q.allowed == 1 && q.tat_us[0] == q.now_us + (int64_t)RATE_HOUR_US,
          "n = 1 again after n = 2: allowed %d (want a fresh start)", q.allowed);
    return T_PASS;
}

/*
 * A sequence of calls agrees with rhema_gcra_step, the reference, fed the
 * now each call used (the host's, or the backend's own clock when it has
 * one and says so in now_us).  The host's now advances by irregular steps
 * of a few ms, so refills happen between calls even on a fast machine.
 */
static int t_rate_reference(struct suite *s)
{
    char key[128];
    const struct rhema_rate_window w[2] = {{10000, 25000}, {40000, 40000}};
    struct rhema_rate_query q, ref;
    int64_t tat[RHEMA_RATE_WINDOWS_MAX], rest = 0, now;
    unsigned x = 12345;
    int i, have = 0, allowed = 0, refused = 0;
    if (rate_skipped(s))
        return T_SKIP;
    rate_key(s, "ref", key, sizeof key);
    now = host_now_us(s);
    for (i = 0; i < RATE_REF_CALLS; i++) {
        x = x * 1103515245u + 12345u;
        now += (int64_t)((x >> 16) % 7) * 1500; /* 0 .. 9 ms */
        rhema_storage_conn *c = i % 3 ? s->c1 : s->c2;
        CHECK_RC(c, 0, rate_call(s, c, key, w, 2, now, &q));
        memset(&ref, 0, sizeof ref);
        ref.size = sizeof ref;
        ref.key = key;
        ref.windows = w;
        ref.n = 2;
        ref.now_us = q.now_us;
        int64_t r = rhema_gcra_step(&ref, have && rest > ref.now_us ? tat : NULL);
        CHECK(q.allowed == ref.allowed && q.tat_us[0] == ref.tat_us[0] &&
                  q.tat_us[1] == ref.tat_us[1],
              "call %d at %lld: allowed %d, tats %lld, %lld; the reference says %d, %lld, %lld", i,
              (long long)q.now_us, q.allowed, (long long)q.tat_us[0], (long long)q.tat_us[1],
              ref.allowed, (long long)ref.tat_us[0], (long long)ref.tat_us[1]);
        memcpy(tat, ref.tat_us, sizeof tat);
        rest = r;
        have = 1;
        if (q.allowed)
            allowed++;
        else
            refused++;
    }
    CHECK(allowed > 0 && refused > 0, "%d allowed, %d refused: the sequence tested too little",
          allowed, refused);
    return T_PASS;
}

struct rate_race {
    struct suite *s;
    const char *key;
    atomic_int go, allowed, errors;
    char error[256];
    pthread_mutex_t error_lock;
};

static void *rate_hammer(void *arg)
{
    struct rate_race *r = arg;
    struct suite *s = r->s;
    const struct rhema_rate_window w[1] = {{RATE_HOUR_US, RATE_BURST * RATE_HOUR_US}};
    rhema_storage_conn *c = NULL;
    char *err = NULL;
    int i, rc = s->vt->connect(s->inst, &c, &err);
    while (atomic_load(&r->go) == 0)
        sched_yield();
    for (i = 0; rc == 0 && i < RATE_THREAD_CALLS; i++) {
        struct rhema_rate_query q;
        rc = rate_call(s, c, r->key, w, 1, 0, &q);
        if (rc == 0 && q.allowed == 1)
            atomic_fetch_add(&r->allowed, 1);
        else if (rc == 0 && q.allowed != 0)
            rc = RHEMA_EIO;
    }
    if (rc != 0) {
        atomic_fetch_add(&r->errors, 1);
        pthread_mutex_lock(&r->error_lock);
        if (r->error[0] == '\0')
            snprintf(r->error, sizeof r->error, "%s: %s", rhema_strerror(rc),
                     c != NULL ? s->vt->errmsg(c)
                     : err     ? err
                               : "");
        pthread_mutex_unlock(&r->error_lock);
    }
    free(err);
    if (c != NULL)
        s->vt->disconnect(c);
    return NULL;
}

/*
 * RATE_THREADS connections at once on one key with tolerance RATE_BURST
 * intervals (of an hour: nothing refills): exactly RATE_BURST + 1 of all
 * their requests are allowed -- each step is atomic.
 */
static int t_rate_concurrent(struct suite *s)
{
    char key[128];
    struct rate_race r;
    pthread_t th[RATE_THREADS];
    struct rhema_rate_query q;
    const struct rhema_rate_window w[1] = {{RATE_HOUR_US, RATE_BURST * RATE_HOUR_US}};
    int i, started = 0;
    if (rate_skipped(s))
        return T_SKIP;
    memset(&r, 0, sizeof r);
    pthread_mutex_init(&r.error_lock, NULL);
    r.s = s;
    r.key = rate_key(s, "race", key, sizeof key);
    for (i = 0; i < RATE_THREADS; i++) {
        if (pthread_create(&th[i], NULL, rate_hammer, &r) != 0)
            break;
        started++;
    }
    atomic_store(&r.go, 1);
    for (i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    pthread_mutex_destroy(&r.error_lock);
    CHECK(started == RATE_THREADS, "could not start the threads");
    CHECK(atomic_load(&r.errors) == 0, "%d threads failed, the first: %s", atomic_load(&r.errors),
          r.error);
    CHECK(atomic_load(&r.allowed) == RATE_BURST + 1,
          "%d of %d concurrent requests allowed, want exactly %d", atomic_load(&r.allowed),
          RATE_THREADS * RATE_THREAD_CALLS, RATE_BURST + 1);
    RATE(s->c1, key, w, 1, &q);
    CHECK(q.allowed == 0, "allowed after the race");
    return T_PASS;
}

/*
 * Refill: with a 50 ms interval and no tolerance, a key is allowed again
 * once its tat has passed.  Only "allowed after waiting long enough" is
 * asserted: never a refusal that a slow machine could turn into a pass.
 */
static int t_rate_refill(struct suite *s)
{
    char key[128];
    const struct rhema_rate_window w[1] = {{50000, 0}};
    struct rhema_rate_query q;
    int i;
    if (rate_skipped(s))
        return T_SKIP;
    rate_key(s, "refill", key, sizeof key);
    RATE(s->c1, key, w, 1, &q);
    CHECK(q.allowed == 1, "the first request refused");
    for (i = 0; i < 20 && q.allowed; i++) /* until refused, on a fast machine */
        RATE(s->c1, key, w, 1, &q);
    /* every tat now is at most the last call's now + 50 ms */
    sleep_ms(120);
    RATE(s->c2, key, w, 1, &q);
    CHECK(q.allowed == 1, "refused 120 ms after the last request, with a 50 ms interval");
    CHECK(q.tat_us[0] == q.now_us + 50000, "tat %lld after a refill at %lld, want now + 50 ms",
          (long long)q.tat_us[0], (long long)q.now_us);
    return T_PASS;
}

static int t_cleanup(struct suite *s)
{
    size_t i;
    for (i = 0; ns_tags[i] != NULL; i++) {
        char ns[64];
        long left = empty_namespace(s, s->c1, ns_of(s, ns_tags[i], ns, sizeof ns));
        CHECK(left == 0, "namespace %s: %ld entries left after deleting them all", ns, left);
    }
    return T_PASS;
}

/* ---- watch() / unwatch() (storage minor 3) ---- */

#define WATCH_WAIT_MS 10000 /* a notification that has not come by then never will */
#define WATCH_QUIET_MS 300  /* how long an unwatched instance is watched for a stray notify */

/* What a notify() of the watch checks counts, under a mutex, with a condvar to wait on. */
struct watch_count {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned long n;
};

static void watch_notify(void *arg)
{
    struct watch_count *w = arg;
    pthread_mutex_lock(&w->mu);
    w->n++;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static unsigned long watch_seen(struct watch_count *w)
{
    unsigned long n;
    pthread_mutex_lock(&w->mu);
    n = w->n;
    pthread_mutex_unlock(&w->mu);
    return n;
}

/* Wait (at most ms) until w counts more than `after`; 1 when it did. */
static int watch_wait(struct watch_count *w, unsigned long after, unsigned ms)
{
    struct timespec until;
    int more;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&w->mu);
    while (w->n <= after && pthread_cond_timedwait(&w->cv, &w->mu, &until) == 0)
        ;
    more = w->n > after;
    pthread_mutex_unlock(&w->mu);
    return more;
}

/* watch() is there: the vtable reaches it (minor 3 or later) and it is set. */
static int watch_skipped(struct suite *s)
{
    size_t end = offsetof(struct rhema_storage_plugin, unwatch) + sizeof s->vt->unwatch;
    if (s->vt->base.abi_minor < 3 || s->vt->base.size < end || s->vt->watch == NULL) {
        snprintf(s->detail, sizeof s->detail, "no watch() (optional)");
        return 1;
    }
    return 0;
}

/* A change and its sequenced record ("rec/" + 20 digits), in one batch on c. */
static int watch_write(struct suite *s, rhema_storage_conn *c, const char *ns, const char *key)
{
    struct rhema_storage_write w[2] = {
        {.size = sizeof w[0], .op = RHEMA_WRITE_PUT, .ns = ns, .key = key, .value = "v",
         .value_len = 1},
        {.size = sizeof w[0], .op = RHEMA_WRITE_PUT, .ns = ns, .key = "rec/", .value = "e",
         .value_len = 1, .flags = RHEMA_WRITE_SEQUENCED}};
    char rec[64];
    CHECK_RC(c, 0, s->vt->batch(c, w, 2));
    CHECK(w[1].new_version == w[0].new_version && w[0].new_version != 0,
          "the record's version %llu is not its change's %llu",
          (unsigned long long)w[1].new_version, (unsigned long long)w[0].new_version);
    snprintf(rec, sizeof rec, "rec/%020llu", (unsigned long long)w[1].new_version);
    EXPECT_STR(c, ns, rec, "e", w[1].new_version);
    return T_PASS;
}

/*
 * The checks themselves; t_watch() wraps them so that the second instance
 * is closed and the namespace emptied whatever happens.
 */
struct watch_run {
    struct watch_count a, b;   /* notifications of s->inst and of the second instance */
    rhema_storage_instance *i2; /* a second instance on the same backend (another host) */
    rhema_storage_conn *c3;     /* a connection of it */
    int a_on, b_on;             /* watching */
};

static int watch_checks(struct suite *s, struct watch_run *r, const char *ns)
{
    char *err = NULL;
    unsigned long before;
    int rc;

    rc = s->vt->watch(s->inst, watch_notify, &r->a, &err);
    CHECK(rc == 0, "watch returned %s: %s", rhema_strerror(rc), err ? err : "");
    r->a_on = 1;

    /* a sequenced batch on a connection of the same instance wakes it */
    before = watch_seen(&r->a);
    if (watch_write(s, s->c1, ns, "k1") != T_PASS)
        return T_FAIL;
    CHECK(watch_wait(&r->a, before, WATCH_WAIT_MS), "no notify within %d ms of a sequenced batch",
          WATCH_WAIT_MS);

    /* a batch without sequenced writes works as before */
    {
        struct rhema_storage_write w[2] = {
            {.size = sizeof w[0], .op = RHEMA_WRITE_PUT, .ns = ns, .key = "plain1", .value = "p",
             .value_len = 1},
            {.size = sizeof w[0], .op = RHEMA_WRITE_PUT, .ns = ns, .key = "plain2", .value = "q",
             .value_len = 1}};
        CHECK_RC(s->c2, 0, s->vt->batch(s->c2, w, 2));
        CHECK(w[0].new_version != 0 && w[1].new_version > w[0].new_version,
              "plain batch versions %llu, %llu", (unsigned long long)w[0].new_version,
              (unsigned long long)w[1].new_version);
        EXPECT_STR(s->c1, ns, "plain2", "q", w[1].new_version);
    }

    /* a second instance on the same backend: each sees the other's writes (SHARED) */
    if (s->vt->features & RHEMA_STORAGE_SHARED) {
        rc = s->vt->open(s->host, s->cfg, &r->i2, &err);
        if (rc != 0) {
            r->i2 = NULL;
            CHECK(0, "second open returned %s: %s", rhema_strerror(rc), err ? err : "");
        }
        rc = s->vt->connect(r->i2, &r->c3, &err);
        if (rc != 0) {
            r->c3 = NULL;
            CHECK(0, "connect to the second instance returned %s: %s", rhema_strerror(rc),
                  err ? err : "");
        }
        rc = s->vt->watch(r->i2, watch_notify, &r->b, &err);
        CHECK(rc == 0, "watch of the second instance returned %s: %s", rhema_strerror(rc),
              err ? err : "");
        r->b_on = 1;
        before = watch_seen(&r->a);
        if (watch_write(s, r->c3, ns, "k2") != T_PASS)
            return T_FAIL;
        CHECK(watch_wait(&r->a, before, WATCH_WAIT_MS),
              "a write on a second instance was not notified to the first within %d ms",
              WATCH_WAIT_MS);
        before = watch_seen(&r->b);
        if (watch_write(s, s->c1, ns, "k3") != T_PASS)
            return T_FAIL;
        CHECK(watch_wait(&r->b, before, WATCH_WAIT_MS),
              "a write on the first instance was not notified to the second within %d ms",
              WATCH_WAIT_MS);
    }

    /* after unwatch() returns, notify is never called again */
    s->vt->unwatch(s->inst);
    r->a_on = 0;
    before = watch_seen(&r->a);
    if (watch_write(s, s->c1, ns, "k4") != T_PASS)
        return T_FAIL;
    if (r->b_on) { /* the second instance's notify says the notification went out */
        unsigned long b0 = watch_seen(&r->b);
        if (watch_write(s, s->c2, ns, "k5") != T_PASS)
            return T_FAIL;
        CHECK(watch_wait(&r->b, b0, WATCH_WAIT_MS), "the second instance missed a write");
    }
    sleep_ms(WATCH_QUIET_MS);
    CHECK(watch_seen(&r->a) == before, "notify was called %lu times after unwatch() returned",
          watch_seen(&r->a) - before);

    /* watch / unwatch again, twice in a row */
    rc = s->vt->watch(s->inst, watch_notify, &r->a, &err);
    CHECK(rc == 0, "a second watch returned %s: %s", rhema_strerror(rc), err ? err : "");
    s->vt->unwatch(s->inst);
    rc = s->vt->watch(s->inst, watch_notify, &r->a, &err);
    CHECK(rc == 0, "a third watch returned %s: %s", rhema_strerror(rc), err ? err : "");
    r->a_on = 1;
    before = watch_seen(&r->a);
    if (watch_write(s, s->c2, ns, "k6") != T_PASS)
        return T_FAIL;
    CHECK(watch_wait(&r->a, before, WATCH_WAIT_MS),
          "no notify within %d ms after watching again", WATCH_WAIT_MS);
    s->vt->unwatch(s->inst);
    r->a_on = 0;
    return T_PASS;
}

static int t_watch(struct suite *s)
{
    struct watch_run r;
    char ns[64];
    int result;
    if (watch_skipped(s))
        return T_SKIP;
    memset(&r, 0, sizeof r);
    pthread_mutex_init(&r.a.mu, NULL);
    pthread_cond_init(&r.a.cv, NULL);
    pthread_mutex_init(&r.b.mu, NULL);
    pthread_cond_init(&r.b.cv, NULL);
    ns_of(s, ".watch", ns, sizeof ns);
    result = watch_checks(s, &r, ns);
    if (r.a_on)
        s->vt->unwatch(s->inst);
    if (r.b_on)
        s->vt->unwatch(r.i2);
    if (r.c3 != NULL)
        s->vt->disconnect(r.c3);
    if (r.i2 != NULL)
        s->vt->close(r.i2);
    pthread_mutex_destroy(&r.a.mu);
    pthread_cond_destroy(&r.a.cv);
    pthread_mutex_destroy(&r.b.mu);
    pthread_cond_destroy(&r.b.cv);
    if (empty_namespace(s, s->c1, ns) != 0 && result == T_PASS)
        return failf(s, "namespace %s: entries left after deleting them all", ns);
    return result;
}

/* ---- the runner ---- */

struct check {
    const char *name;
    int (*fn)(struct suite *s);
};

/*
 * group(), when the plugin has it: members are all-or-nothing and
 * independent -- a failing member (a version conflict, a delete of a missing
 * key) changes nothing and leaves the others applied -- and members later in
 * the group see earlier ones.
 */
static int t_group_commit(struct suite *s)
{
    char ns[64];
    struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
    uint64_t vx = 0;
    if (!s->vt->group) {
        snprintf(s->detail, sizeof s->detail, "no group()");
        return T_SKIP;
    }
    ns_of(s, ".batch", ns, sizeof ns);
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "g-x", "x0", RHEMA_VERSION_ANY, &vx));
    struct rhema_storage_write a[2], b[2], c[1], d[1];
    memset(a, 0, sizeof a), memset(b, 0, sizeof b), memset(c, 0, sizeof c), memset(d, 0, sizeof d);
    /* a: two creates, applied */
    a[0] = (struct rhema_storage_write){.size = sizeof(struct rhema_storage_write),
                                        .op = RHEMA_WRITE_PUT,
                                        .ns = ns,
                                        .key = "g-a1",
                                        .value = "a1",
                                        .value_len = 2,
                                        .expected_version = RHEMA_VERSION_ABSENT};
    a[1] = (struct rhema_storage_write){.size = sizeof(struct rhema_storage_write),
                                        .op = RHEMA_WRITE_PUT,
                                        .ns = ns,
                                        .key = "g-a2",
                                        .value = "a2",
                                        .value_len = 2};
    /* b: a put then a stale compare-and-set: fails whole, its put undone */
    b[0] = (struct rhema_storage_write){.size = sizeof(struct rhema_storage_write),
                                        .op = RHEMA_WRITE_PUT,
                                        .ns = ns,
                                        .key = "g-b",
                                        .value = "b",
                                        .value_len = 1};
    b[1] = (struct rhema_storage_write){.size = sizeof(struct rhema_storage_write),
                                        .op = RHEMA_WRITE_PUT,
                                        .ns = ns,
                                        .key = "g-x",
                                        .value = "stale",
                                        .value_len = 5,
                                        .expected_version = vx + 1000};
    /* c: sees a's create of g-a1 (create-only fails) */
    c[0] = (struct rhema_storage_write){.size = sizeof(struct rhema_storage_write),
                                        .op = RHEMA_WRITE_PUT,
                                        .ns = ns,
                                        .key = "g-a1",
                                        .value = "again",
                                        .value_len = 5,
                                        .expected_version = RHEMA_VERSION_ABSENT};
    /* d: a good compare-and-set of g-x, applied */
    d[0] = (struct rhema_storage_write){.size = sizeof(struct rhema_storage_write),
                                        .op = RHEMA_WRITE_PUT,
                                        .ns = ns,
                                        .key = "g-x",
                                        .value = "x1",
                                        .value_len = 2,
                                        .expected_version = vx};
    struct rhema_storage_batch g[4] = {{sizeof(struct rhema_storage_batch), -99, a, 2},
                                       {sizeof(struct rhema_storage_batch), -99, b, 2},
                                       {sizeof(struct rhema_storage_batch), -99, c, 1},
                                       {sizeof(struct rhema_storage_batch), -99, d, 1}};
    CHECK_RC(s->c1, 0, s->vt->group(s->c1, g, 4));
    CHECK(g[0].result == 0, "member 0: %s", rhema_strerror(g[0].result));
    CHECK(g[1].result == RHEMA_ECONFLICT, "member 1 (stale version): %s",
          rhema_strerror(g[1].result));
    CHECK(g[2].result == RHEMA_ECONFLICT, "member 2 (exists after member 0): %s",
          rhema_strerror(g[2].result));
    CHECK(g[3].result == 0, "member 3: %s", rhema_strerror(g[3].result));
    CHECK(a[0].new_version > 0 && a[1].new_version > 0 && d[0].new_version > vx,
          "new_version not filled");
    EXPECT_STR(s->c2, ns, "g-a1", "a1", a[0].new_version);
    EXPECT_STR(s->c2, ns, "g-a2", "a2", a[1].new_version);
    EXPECT_STR(s->c2, ns, "g-x", "x1", d[0].new_version);
    CHECK_RC(s->c2, RHEMA_ENOTFOUND, s->vt->get(s->c2, ns, "g-b", &v));
    /* a group of one behaves like batch(); an empty group is a no-op */
    struct rhema_storage_write e[1] = {{.size = sizeof(struct rhema_storage_write),
                                        .op = RHEMA_WRITE_DEL,
                                        .ns = ns,
                                        .key = "g-missing"}};
    struct rhema_storage_batch g1[1] = {{sizeof(struct rhema_storage_batch), -99, e, 1}};
    CHECK_RC(s->c1, 0, s->vt->group(s->c1, g1, 1));
    CHECK(g1[0].result == RHEMA_ENOTFOUND, "delete of a missing key in a group: %s",
          rhema_strerror(g1[0].result));
    CHECK_RC(s->c1, 0, s->vt->group(s->c1, g1, 0));
    return T_PASS;
}

/*
 * The arrays of a newer host (storage.h, "Growing the structs"): writes,
 * batches and values whose size -- the stride -- is larger than this kit's
 * sizeof, as a host built against a later minor passes them.  The plugin
 * must step through them by size: reading w[i] would take the appended
 * members of element 0 for element 1.  And a size below minor 0's is
 * RHEMA_EINVAL.
 */
struct wide_write {
    struct rhema_storage_write w;
    uint64_t later[3]; /* members of a later minor: the plugin must leave them alone */
};
struct wide_batch {
    struct rhema_storage_batch b;
    uint64_t later[2];
};
struct wide_value {
    struct rhema_storage_value v;
    uint64_t later[2];
};

static struct wide_write wide_put(const char *ns, const char *key, const char *val)
{
    struct wide_write ww;
    memset(&ww, 0, sizeof ww);
    ww.w.size = sizeof ww;
    ww.w.op = RHEMA_WRITE_PUT;
    ww.w.ns = ns;
    ww.w.key = key;
    ww.w.value = val;
    ww.w.value_len = strlen(val);
    ww.later[0] = ww.later[1] = ww.later[2] = 0x5a5a5a5a5a5a5a5aull;
    return ww;
}

static int t_strided_arrays(struct suite *s)
{
    char ns[64];
    size_t i;
    ns_of(s, ".batch", ns, sizeof ns);
    struct wide_write w[3] = {wide_put(ns, "s-a", "sa"), wide_put(ns, "s-b", "sbb"),
                              wide_put(ns, "s-c", "sccc")};
    CHECK_RC(s->c1, 0, s->vt->batch(s->c1, &w[0].w, 3));
    for (i = 0; i < 3; i++)
        CHECK(w[i].w.new_version > 0 && w[i].later[0] == 0x5a5a5a5a5a5a5a5aull &&
                  w[i].later[2] == 0x5a5a5a5a5a5a5a5aull,
              "write %zu: new_version %llu, appended members %s", i,
              (unsigned long long)w[i].w.new_version,
              w[i].later[0] == 0x5a5a5a5a5a5a5a5aull ? "intact" : "overwritten");
    EXPECT_STR(s->c2, ns, "s-a", "sa", w[0].w.new_version);
    EXPECT_STR(s->c2, ns, "s-b", "sbb", w[1].w.new_version);
    EXPECT_STR(s->c2, ns, "s-c", "sccc", w[2].w.new_version);

    /* a write smaller than minor 0 is refused, by put() and by batch() */
    struct rhema_storage_write small = {.size = RHEMA_STORAGE_WRITE_SIZE_0 - 1,
                                        .op = RHEMA_WRITE_PUT,
                                        .ns = ns,
                                        .key = "s-small",
                                        .value = "x",
                                        .value_len = 1};
    CHECK_RC(s->c1, RHEMA_EINVAL, s->vt->put(s->c1, &small));
    CHECK_RC(s->c1, RHEMA_EINVAL, s->vt->batch(s->c1, &small, 1));
    small.size = 0;
    CHECK_RC(s->c1, RHEMA_EINVAL, s->vt->put(s->c1, &small));
    CHECK_RC(s->c2, RHEMA_ENOTFOUND,
             s->vt->get(s->c2, ns, "s-small",
                        &(struct rhema_storage_value){.size = sizeof(struct rhema_storage_value)}));

    if (s->vt->group != NULL) {
        struct wide_write a[2] = {wide_put(ns, "s-g1", "g1"), wide_put(ns, "s-g2", "g2")};
        struct wide_write b[1] = {wide_put(ns, "s-a", "stale")};
        b[0].w.expected_version = w[0].w.new_version + 1000;
        struct wide_batch g[2];
        memset(g, 0, sizeof g);
        g[0].b = (struct rhema_storage_batch){
            .size = sizeof g[0], .result = -99, .writes = &a[0].w, .n = 2};
        g[1].b = (struct rhema_storage_batch){
            .size = sizeof g[1], .result = -99, .writes = &b[0].w, .n = 1};
        g[0].later[0] = g[1].later[0] = 7;
        CHECK_RC(s->c1, 0, s->vt->group(s->c1, &g[0].b, 2));
        CHECK(g[0].b.result == 0 && g[1].b.result == RHEMA_ECONFLICT,
              "group of wide batches: members %s, %s", rhema_strerror(g[0].b.result),
              rhema_strerror(g[1].b.result));
        CHECK(g[0].later[0] == 7 && g[1].later[0] == 7, "the appended batch members changed");
        CHECK(a[0].w.new_version > 0 && a[1].w.new_version > 0, "group: new_version not filled");
        EXPECT_STR(s->c2, ns, "s-g1", "g1", a[0].w.new_version);
        EXPECT_STR(s->c2, ns, "s-g2", "g2", a[1].w.new_version);
        EXPECT_STR(s->c2, ns, "s-a", "sa", w[0].w.new_version);
    }

    if (s->vt->get_many != NULL) {
        const char *keys[3] = {"s-c", "s-none", "s-a"}, *nss[3] = {ns, ns, ns};
        struct wide_value v[3];
        int rcs[3] = {12345, 12345, 12345};
        memset(v, 0, sizeof v);
        for (i = 0; i < 3; i++) {
            v[i].v.size = sizeof v[i];
            v[i].later[0] = v[i].later[1] = 9;
        }
        CHECK_RC(s->c2, 0, s->vt->get_many(s->c2, nss, keys, 3, &v[0].v, rcs));
        CHECK(rcs[0] == 0 && v[0].v.len == 4 && memcmp(v[0].v.data, "sccc", 4) == 0 &&
                  v[0].v.version == w[2].w.new_version,
              "wide value 0: %s, %zu bytes", rhema_strerror(rcs[0]), v[0].v.len);
        CHECK(rcs[1] == RHEMA_ENOTFOUND, "wide value 1: %s", rhema_strerror(rcs[1]));
        CHECK(rcs[2] == 0 && v[2].v.len == 2 && memcmp(v[2].v.data, "sa", 2) == 0 &&
                  v[2].v.version == w[0].w.new_version,
              "wide value 2: %s, %zu bytes", rhema_strerror(rcs[2]), v[2].v.len);
        for (i = 0; i < 3; i++)
            CHECK(v[i].later[0] == 9 && v[i].later[1] == 9, "value %zu: appended members changed",
                  i);
        v[0].v.size = RHEMA_STORAGE_VALUE_SIZE_0 - 1;
        CHECK_RC(s->c2, RHEMA_EINVAL, s->vt->get_many(s->c2, nss, keys, 3, &v[0].v, rcs));
    }
    return T_PASS;
}

/* ---- sequenced writes (storage minor 3) ---- */

#define SEQ_THREAD_WRITES 250 /* records each writer of the order check appends */
#define SEQ_WRITE_MS 1500     /* ... or fewer: its writers stop after this long */

static int seq_skipped(struct suite *s)
{
    if (s->vt->base.abi_minor >= 3 && (s->vt->features & RHEMA_STORAGE_SEQUENCED))
        return 0;
    snprintf(s->detail, sizeof s->detail,
             s->vt->base.abi_minor < 3 ? "abi_minor %u < 3: no sequenced writes"
                                       : "abi_minor %u without RHEMA_STORAGE_SEQUENCED (optional)",
             (unsigned)s->vt->base.abi_minor);
    return 1;
}

/* The key of the sequenced record of `version` under `prefix`, into buf. */
static const char *seq_key_of(char *buf, size_t size, const char *prefix, uint64_t version)
{
    snprintf(buf, size, "%s%020llu", prefix, (unsigned long long)version);
    return buf;
}

/* A sequenced write of value `val` under `prefix`. */
static struct rhema_storage_write seqw(const char *ns, const char *prefix, const char *val)
{
    struct rhema_storage_write w = PUTW(ns, prefix, val, strlen(val), RHEMA_VERSION_ANY);
    w.flags = RHEMA_WRITE_SEQUENCED;
    return w;
}

/* The sequenced record of `version` under `prefix` holds `val`, with that version. */
#define EXPECT_RECORD(C, NS, PREFIX, VERSION, VAL)                                                 \
    do {                                                                                           \
        char k_[RHEMA_STORAGE_KEY_MAX + 1];                                                        \
        EXPECT_STR((C), (NS), seq_key_of(k_, sizeof k_, (PREFIX), (VERSION)), (VAL), (VERSION));   \
    } while (0)

/*
 * Count the keys of ns from `from` (inclusive) to `to` (exclusive) into col
 * and check they are sequenced keys of `prefix` whose digits are their
 * version, in strictly increasing order.
 */
static int seq_scan(struct suite *s, rhema_storage_conn *c, const char *ns, const char *prefix,
                    const char *from, const char *to, struct collected *col, int line)
{
    size_t i, plen = strlen(prefix);
    int rc = scan_into(s, c, ns, from, to, 0, col);
    if (rc != 0)
        return failf(s, "line %d: scan(%s) returned %s; errmsg: %s", line, ns, rhema_strerror(rc),
                     emsg(s, c));
    for (i = 0; i < col->n; i++) {
        char want[RHEMA_STORAGE_KEY_MAX + 1];
        seq_key_of(want, sizeof want, prefix, col->versions[i]);
        if (strlen(col->keys[i]) != plen + RHEMA_SEQ_DIGITS || strcmp(col->keys[i], want) != 0)
            return failf(s,
                         "line %d: key %zu is '%s', want '%s' (prefix + the version's 20 digits)",
                         line, i, col->keys[i], want);
        if (i > 0 && col->versions[i] <= col->versions[i - 1])
            return failf(s, "line %d: record %zu has version %llu after %llu", line, i,
                         (unsigned long long)col->versions[i],
                         (unsigned long long)col->versions[i - 1]);
    }
    return T_PASS;
}

#define SEQ_SCAN(C, NS, PREFIX, FROM, TO, COL)                                                     \
    do {                                                                                           \
        if (seq_scan(s, (C), (NS), (PREFIX), (FROM), (TO), (COL), __LINE__) != T_PASS) {           \
            collected_free(COL);                                                                   \
            return T_FAIL;                                                                         \
        }                                                                                          \
    } while (0)

/*
 * Through put(): the key is the prefix and 20 digits of a fresh version
 * (the empty prefix too), a prefix of RHEMA_STORAGE_KEY_MAX - 20 bytes
 * makes a key of the longest length; the prefix alone is no key.  A write
 * whose size is minor 0's has no flags, whatever follows it in memory.
 */
static int t_seq_key_format(struct suite *s)
{
    char ns[64], key[RHEMA_STORAGE_KEY_MAX + 1], *longp;
    uint64_t v0 = 0;
    struct rhema_storage_write w;
    struct collected col = {0};
    if (seq_skipped(s))
        return T_SKIP;
    ns_of(s, ".seq", ns, sizeof ns);
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "plain", "p", RHEMA_VERSION_ANY, &v0));
    w = seqw(ns, "ev/", "first");
    CHECK_RC(s->c1, 0, s->vt->put(s->c1, &w));
    CHECK(w.new_version > v0, "sequenced put: version %llu after %llu",
          (unsigned long long)w.new_version, (unsigned long long)v0);
    EXPECT_RECORD(s->c2, ns, "ev/", w.new_version, "first");
    EXPECT_MISSING(s->c2, ns, "ev/");
    w = seqw(ns, "ev/", "second");
    w.expected_version = RHEMA_VERSION_ABSENT; /* means the same as ANY here */
    CHECK_RC(s->c1, 0, s->vt->put(s->c1, &w));
    EXPECT_RECORD(s->c2, ns, "ev/", w.new_version, "second");
    SEQ_SCAN(s->c2, ns, "ev/", "ev/", "ev0", &col);
    CHECK(col.n == 2 && strcmp(col.values[0], "first") == 0 && strcmp(col.values[1], "second") == 0,
          "scan of the prefix: %zu records, want first and second", col.n);
    collected_free(&col);
    /* the empty prefix: the key is the 20 digits alone */
    w = seqw(ns, "", "bare");
    CHECK_RC(s->c1, 0, s->vt->put(s->c1, &w));
    seq_key_of(key, sizeof key, "", w.new_version);
    CHECK(strlen(key) == RHEMA_SEQ_DIGITS, "key length %zu", strlen(key));
    EXPECT_STR(s->c2, ns, key, "bare", w.new_version);
    /* the longest prefix */
    longp = malloc(RHEMA_STORAGE_KEY_MAX - RHEMA_SEQ_DIGITS + 1);
    CHECK(longp != NULL, "out of memory");
    memset(longp, 'L', RHEMA_STORAGE_KEY_MAX - RHEMA_SEQ_DIGITS);
    longp[RHEMA_STORAGE_KEY_MAX - RHEMA_SEQ_DIGITS] = '\0';
    w = seqw(ns, longp, "long");
    int rc = s->vt->put(s->c1, &w);
    if (rc == 0)
        rc = expect_value(s, s->c2, ns, seq_key_of(key, sizeof key, longp, w.new_version), "long",
                          4, w.new_version, __LINE__) == T_PASS
                 ? 0
                 : -1000;
    free(longp);
    if (rc == -1000)
        return T_FAIL;
    CHECK_RC(s->c1, 0, rc);
    CHECK(strlen(key) == RHEMA_STORAGE_KEY_MAX, "key length %zu", strlen(key));

    /* an old caller (minor 0 size): flags beyond its size are not read */
    {
        _Alignas(struct rhema_storage_write) unsigned char
            buf[2 * sizeof(struct rhema_storage_write) + 16];
        struct rhema_storage_write old = PUTW(ns, "old-put", "o", 1, RHEMA_VERSION_ANY), *p;
        old.size = RHEMA_STORAGE_WRITE_SIZE_0;
        old.flags = RHEMA_WRITE_SEQUENCED;
        CHECK_RC(s->c1, 0, s->vt->put(s->c1, &old));
        EXPECT_STR(s->c2, ns, "old-put", "o", old.new_version);
        /* a batch of two at minor 0's stride; whatever follows them is junk */
        memset(buf, 0xff, sizeof buf);
        old = PUTW(ns, "old-b1", "1", 1, RHEMA_VERSION_ANY);
        old.size = RHEMA_STORAGE_WRITE_SIZE_0;
        memcpy(buf, &old, RHEMA_STORAGE_WRITE_SIZE_0);
        old.key = "old-b2";
        memcpy(buf + RHEMA_STORAGE_WRITE_SIZE_0, &old, RHEMA_STORAGE_WRITE_SIZE_0);
        p = (struct rhema_storage_write *)(void *)buf;
        CHECK_RC(s->c1, 0, s->vt->batch(s->c1, p, 2));
        EXPECT_STR(s->c2, ns, "old-b1", "1", rhema_storage_write_at(p, 0)->new_version);
        EXPECT_STR(s->c2, ns, "old-b2", "1", rhema_storage_write_at(p, 1)->new_version);
    }
    return T_PASS;
}

/*
 * In a batch: a sequenced write right after a put shares its version (and
 * says so in new_version); first in the batch, after a delete or after
 * another sequenced write it takes a fresh one.  Several records in one
 * batch, visible in version order.
 */
static int t_seq_batch_versions(struct suite *s)
{
    char ns[64];
    uint64_t vk = 0;
    struct rhema_storage_write w[10];
    struct collected col = {0};
    size_t i;
    if (seq_skipped(s))
        return T_SKIP;
    ns_of(s, ".seq", ns, sizeof ns);
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "b-k2", "old", RHEMA_VERSION_ANY, &vk));
    w[0] = seqw(ns, "bv/", "r0");                            /* first: fresh */
    w[1] = PUTW(ns, "b-k1", "one", 3, RHEMA_VERSION_ABSENT); /* a change */
    w[2] = seqw(ns, "bv/", "r2");                            /* shares w[1] */
    w[3] = seqw(ns, "bv/", "r3");                            /* after a record: fresh */
    w[4] = PUTW(ns, "b-k2", "new", 3, vk);                   /* a change */
    w[5] = (struct rhema_storage_write){
        .size = sizeof(struct rhema_storage_write), .op = RHEMA_WRITE_DEL, .ns = ns, .key = "b-k1"};
    w[6] = seqw(ns, "bv/", "r6"); /* after a delete: fresh */
    w[7] = PUTW(ns, "b-k3", "three", 5, RHEMA_VERSION_ANY);
    w[8] = seqw(ns, "bv/", "r8");    /* shares w[7] */
    w[9] = seqw(ns, "other/", "r9"); /* after a record: fresh */
    CHECK_RC(s->c1, 0, s->vt->batch(s->c1, w, 10));
    for (i = 0; i < 10; i++)
        CHECK(i == 5 || w[i].new_version > vk, "write %zu: new_version %llu (before: %llu)", i,
              (unsigned long long)w[i].new_version, (unsigned long long)vk);
    CHECK(w[2].new_version == w[1].new_version, "record after a put: version %llu, the put's %llu",
          (unsigned long long)w[2].new_version, (unsigned long long)w[1].new_version);
    CHECK(w[8].new_version == w[7].new_version, "record after a put: version %llu, the put's %llu",
          (unsigned long long)w[8].new_version, (unsigned long long)w[7].new_version);
    CHECK(w[0].new_version < w[1].new_version, "first record %llu, then a put %llu",
          (unsigned long long)w[0].new_version, (unsigned long long)w[1].new_version);
    CHECK(w[3].new_version > w[2].new_version && w[4].new_version > w[3].new_version,
          "record after a record: %llu after %llu, then a put %llu",
          (unsigned long long)w[3].new_version, (unsigned long long)w[2].new_version,
          (unsigned long long)w[4].new_version);
    CHECK(w[6].new_version > w[4].new_version && w[7].new_version > w[6].new_version,
          "record after a delete: %llu after %llu, then a put %llu",
          (unsigned long long)w[6].new_version, (unsigned long long)w[4].new_version,
          (unsigned long long)w[7].new_version);
    CHECK(w[9].new_version > w[8].new_version, "record after a record: %llu after %llu",
          (unsigned long long)w[9].new_version, (unsigned long long)w[8].new_version);
    EXPECT_MISSING(s->c2, ns, "b-k1");
    EXPECT_STR(s->c2, ns, "b-k2", "new", w[4].new_version);
    EXPECT_STR(s->c2, ns, "b-k3", "three", w[7].new_version);
    EXPECT_RECORD(s->c2, ns, "bv/", w[0].new_version, "r0");
    EXPECT_RECORD(s->c2, ns, "bv/", w[2].new_version, "r2");
    EXPECT_RECORD(s->c2, ns, "bv/", w[3].new_version, "r3");
    EXPECT_RECORD(s->c2, ns, "bv/", w[6].new_version, "r6");
    EXPECT_RECORD(s->c2, ns, "bv/", w[8].new_version, "r8");
    EXPECT_RECORD(s->c2, ns, "other/", w[9].new_version, "r9");
    SEQ_SCAN(s->c2, ns, "bv/", "bv/", "bv0", &col);
    {
        static const char *const want[] = {"r0", "r2", "r3", "r6", "r8"};
        int ok = col.n == 5;
        for (i = 0; ok && i < 5; i++)
            ok = strcmp(col.values[i], want[i]) == 0;
        collected_free(&col);
        CHECK(ok, "the scan of the prefix is not r0 r2 r3 r6 r8 in that order");
    }
    /* a later write of the batch sees the record it made */
    {
        struct rhema_storage_write x[2] = {
            seqw(ns, "bx/", "rec"), PUTW(ns, "placeholder", "again", 5, RHEMA_VERSION_ABSENT)};
        char key[RHEMA_STORAGE_KEY_MAX + 1];
        struct rhema_storage_value v = {.size = sizeof(struct rhema_storage_value)};
        CHECK_RC(s->c1, 0, s->vt->batch(s->c1, x, 1));
        seq_key_of(key, sizeof key, "bx/", x[0].new_version);
        CHECK_RC(s->c2, 0, s->vt->get(s->c2, ns, key, &v));
        /* a create-only put of an existing record's key conflicts and writes no new record */
        x[0] = seqw(ns, "bx/", "rec2");
        x[1] = PUTW(ns, key, "again", 5, RHEMA_VERSION_ABSENT);
        CHECK_RC(s->c1, RHEMA_ECONFLICT, s->vt->batch(s->c1, x, 2));
        SEQ_SCAN(s->c2, ns, "bx/", "bx/", "bx0", &col);
        CHECK(col.n == 1, "%zu records under bx/ after a failed batch, want 1", col.n);
        collected_free(&col);
    }
    return T_PASS;
}

/*
 * A failed batch (a conflict, a delete of a missing key) writes no record,
 * wherever the record stands in it; a batch refused for an invalid write
 * neither.
 */
static int t_seq_failed_batch(struct suite *s)
{
    char ns[64];
    uint64_t vx = 0;
    struct collected col = {0};
    if (seq_skipped(s))
        return T_SKIP;
    ns_of(s, ".seq", ns, sizeof ns);
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "f-x", "x", RHEMA_VERSION_ANY, &vx));
    {
        /* the conflict first */
        struct rhema_storage_write w[2] = {PUTW(ns, "f-x", "y", 1, RHEMA_VERSION_ABSENT),
                                           seqw(ns, "fv/", "no")};
        CHECK_RC(s->c1, RHEMA_ECONFLICT, s->vt->batch(s->c1, w, 2));
        CHECK(w[0].new_version == 0 && w[1].new_version == 0, "a failed batch reports versions");
    }
    {
        /* the record applied before the conflict: undone */
        struct rhema_storage_write w[3] = {PUTW(ns, "f-y", "y", 1, RHEMA_VERSION_ANY),
                                           seqw(ns, "fv/", "no"),
                                           PUTW(ns, "f-x", "z", 1, vx + 1000)};
        CHECK_RC(s->c1, RHEMA_ECONFLICT, s->vt->batch(s->c1, w, 3));
    }
    {
        /* a delete of a missing key after the record */
        struct rhema_storage_write w[2] = {seqw(ns, "fv/", "no"),
                                           {.size = sizeof(struct rhema_storage_write),
                                            .op = RHEMA_WRITE_DEL,
                                            .ns = ns,
                                            .key = "f-missing"}};
        CHECK_RC(s->c1, RHEMA_ENOTFOUND, s->vt->batch(s->c1, w, 2));
    }
    {
        /* an invalid write after the record */
        struct rhema_storage_write w[2] = {seqw(ns, "fv/", "no"), seqw(ns, "fv/", "no")};
        w[1].op = RHEMA_WRITE_DEL;
        CHECK_RC(s->c1, RHEMA_EINVAL, s->vt->batch(s->c1, w, 2));
    }
    EXPECT_MISSING(s->c2, ns, "f-y");
    EXPECT_STR(s->c2, ns, "f-x", "x", vx);
    SEQ_SCAN(s->c2, ns, "fv/", "fv/", "fv0", &col);
    CHECK(col.n == 0, "%zu records after failed batches", col.n);
    collected_free(&col);
    /* the counter went on: the next record is above everything before */
    {
        struct rhema_storage_write w = seqw(ns, "fv/", "yes");
        CHECK_RC(s->c1, 0, s->vt->put(s->c1, &w));
        CHECK(w.new_version > vx, "version %llu after %llu", (unsigned long long)w.new_version,
              (unsigned long long)vx);
        EXPECT_RECORD(s->c2, ns, "fv/", w.new_version, "yes");
    }
    return T_PASS;
}

/*
 * RHEMA_EINVAL, and nothing written: a delete with the flag, an expected
 * version that is a real version, a NULL prefix, a prefix longer than
 * RHEMA_STORAGE_KEY_MAX - 20, an unknown flag -- through put() and batch().
 */
static int t_seq_invalid(struct suite *s)
{
    char ns[64], *longp;
    uint64_t vx = 0;
    struct rhema_storage_write w, b[2];
    struct collected col = {0};
    int rc;
    if (seq_skipped(s))
        return T_SKIP;
    ns_of(s, ".seq", ns, sizeof ns);
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "i-x", "x", RHEMA_VERSION_ANY, &vx));

    w = seqw(ns, "iv/", "no");
    w.expected_version = vx;
    CHECK_RC(s->c1, RHEMA_EINVAL, s->vt->put(s->c1, &w));
    b[0] = PUTW(ns, "i-y", "y", 1, RHEMA_VERSION_ANY);
    b[1] = w;
    CHECK_RC(s->c1, RHEMA_EINVAL, s->vt->batch(s->c1, b, 2));

    b[1] = seqw(ns, "iv/", "no");
    b[1].op = RHEMA_WRITE_DEL;
    CHECK_RC(s->c1, RHEMA_EINVAL, s->vt->batch(s->c1, b, 2));
    b[1].key = "i-x"; /* even of a key that exists */
    CHECK_RC(s->c1, RHEMA_EINVAL, s->vt->batch(s->c1, b, 2));

    w = seqw(ns, NULL, "no");
    CHECK_RC(s->c1, RHEMA_EINVAL, s->vt->put(s->c1, &w));

    w = seqw(ns, "iv/", "no");
    w.flags |= 1u << 30;
    CHECK_RC(s->c1, RHEMA_EINVAL, s->vt->put(s->c1, &w));

    longp = malloc(RHEMA_STORAGE_KEY_MAX - RHEMA_SEQ_DIGITS + 2);
    CHECK(longp != NULL, "out of memory");
    memset(longp, 'Q', RHEMA_STORAGE_KEY_MAX - RHEMA_SEQ_DIGITS + 1);
    longp[RHEMA_STORAGE_KEY_MAX - RHEMA_SEQ_DIGITS + 1] = '\0';
    w = seqw(ns, longp, "no");
    rc = s->vt->put(s->c1, &w);
    if (rc == RHEMA_EINVAL) {
        b[1] = seqw(ns, longp, "no");
        rc = s->vt->batch(s->c1, b, 2);
    }
    free(longp);
    CHECK_RC(s->c1, RHEMA_EINVAL, rc);

    EXPECT_MISSING(s->c2, ns, "i-y");
    EXPECT_STR(s->c2, ns, "i-x", "x", vx);
    SEQ_SCAN(s->c2, ns, "iv/", "iv/", "iv0", &col);
    CHECK(col.n == 0, "%zu records after refused writes", col.n);
    collected_free(&col);
    rc = scan_into(s, s->c2, ns, "Q", "R", 0, &col);
    CHECK(rc == 0 && col.n == 0, "scan of the long prefix: %s, %zu entries", rhema_strerror(rc),
          col.n);
    collected_free(&col);
    return T_PASS;
}

/*
 * Through group(): each member's record follows its own change and shares
 * its version; a failed member writes no record.
 */
static int t_seq_group(struct suite *s)
{
    char ns[64];
    uint64_t vx = 0;
    struct collected col = {0};
    if (seq_skipped(s))
        return T_SKIP;
    if (s->vt->group == NULL) {
        snprintf(s->detail, sizeof s->detail, "no group()");
        return T_SKIP;
    }
    ns_of(s, ".seq", ns, sizeof ns);
    CHECK_RC(s->c1, 0, put_str(s, s->c1, ns, "g-x", "x", RHEMA_VERSION_ANY, &vx));
    struct rhema_storage_write a[2] = {PUTW(ns, "g-a", "a", 1, RHEMA_VERSION_ABSENT),
                                       seqw(ns, "gv/", "ra")};
    struct rhema_storage_write b[2] = {PUTW(ns, "g-x", "b", 1, vx + 1000), /* stale */
                                       seqw(ns, "gv/", "rb")};
    struct rhema_storage_write c[3] = {seqw(ns, "gv/", "rc0"), PUTW(ns, "g-x", "c", 1, vx),
                                       seqw(ns, "gv/", "rc")};
    struct rhema_storage_batch g[3] = {{sizeof(struct rhema_storage_batch), -99, a, 2},
                                       {sizeof(struct rhema_storage_batch), -99, b, 2},
                                       {sizeof(struct rhema_storage_batch), -99, c, 3}};
    CHECK_RC(s->c1, 0, s->vt->group(s->c1, g, 3));
    CHECK(g[0].result == 0 && g[1].result == RHEMA_ECONFLICT && g[2].result == 0,
          "member results %s, %s, %s", rhema_strerror(g[0].result), rhema_strerror(g[1].result),
          rhema_strerror(g[2].result));
    CHECK(a[1].new_version == a[0].new_version && c[2].new_version == c[1].new_version,
          "records %llu, %llu after changes %llu, %llu", (unsigned long long)a[1].new_version,
          (unsigned long long)c[2].new_version, (unsigned long long)a[0].new_version,
          (unsigned long long)c[1].new_version);
    CHECK(c[0].new_version > a[1].new_version && c[1].new_version > c[0].new_version,
          "member 2's first record %llu (member 0's %llu, then %llu)",
          (unsigned long long)c[0].new_version, (unsigned long long)a[1].new_version,
          (unsigned long long)c[1].new_version);
    EXPECT_STR(s->c2, ns, "g-a", "a", a[0].new_version);
    EXPECT_STR(s->c2, ns, "g-x", "c", c[1].new_version);
    EXPECT_RECORD(s->c2, ns, "gv/", a[1].new_version, "ra");
    EXPECT_RECORD(s->c2, ns, "gv/", c[0].new_version, "rc0");
    EXPECT_RECORD(s->c2, ns, "gv/", c[2].new_version, "rc");
    SEQ_SCAN(s->c2, ns, "gv/", "gv/", "gv0", &col);
    CHECK(col.n == 3, "%zu records under gv/, want 3 (the failed member's is not there)", col.n);
    collected_free(&col);
    return T_PASS;
}

/*
 * Order under concurrency: two writers (each its own connection) append
 * sequenced records -- by put() alone and after a change in a batch --
 * while a reader scans the prefix after the last key it saw.  Each new key
 * must be greater than the last one seen, and in the end the reader must
 * have seen every record written exactly once: a record that became
 * visible after one of a higher version would be missed.
 */
struct seq_race {
    struct suite *s;
    const char *ns;
    atomic_int errors;
    atomic_int writers_done;
    char error[256];
    pthread_mutex_t error_lock;
    uint64_t give_up_ms;
    unsigned written[2];                     /* records each writer appended */
    uint64_t versions[2][SEQ_THREAD_WRITES]; /* their versions */
    unsigned seen[2][SEQ_THREAD_WRITES];     /* times the reader saw each */
    uint64_t seen_version[2][SEQ_THREAD_WRITES];
    unsigned scans;
};

struct seq_writer {
    struct seq_race *r;
    int id;
};

static void seq_error(struct seq_race *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void seq_error(struct seq_race *r, const char *fmt, ...)
{
    va_list ap;
    atomic_fetch_add(&r->errors, 1);
    pthread_mutex_lock(&r->error_lock);
    if (r->error[0] == '\0') {
        va_start(ap, fmt);
        vsnprintf(r->error, sizeof r->error, fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&r->error_lock);
}

static void *seq_writer_main(void *arg)
{
    struct seq_writer *me = arg;
    struct seq_race *r = me->r;
    struct suite *s = r->s;
    rhema_storage_conn *c = NULL;
    char *err = NULL, val[32], key[32];
    unsigned i;
    int rc = s->vt->connect(s->inst, &c, &err);
    if (rc != 0) {
        seq_error(r, "connect in a writer: %s: %s", rhema_strerror(rc), err ? err : "");
        free(err);
        atomic_fetch_add(&r->writers_done, 1);
        return NULL;
    }
    snprintf(key, sizeof key, "o-w%d", me->id);
    for (i = 0; i < SEQ_THREAD_WRITES && atomic_load(&r->errors) == 0; i++) {
        struct rhema_storage_write w[2];
        uint64_t version;
        if (mono_ms(s) > r->give_up_ms)
            break; /* a slow backend writes fewer: the check holds for what was written */
        snprintf(val, sizeof val, "%d:%u", me->id, i);
        w[0] = PUTW(r->ns, key, val, strlen(val), RHEMA_VERSION_ANY);
        w[1] = seqw(r->ns, "ov/", val);
        do {
            if (i % 3 == 0) {
                rc = s->vt->put(c, &w[1]);
                version = w[1].new_version;
            } else {
                rc = s->vt->batch(c, w, 2);
                version = w[1].new_version;
                if (rc == 0 && w[0].new_version != version) {
                    seq_error(r, "writer %d: record %llu after a change %llu", me->id,
                              (unsigned long long)version, (unsigned long long)w[0].new_version);
                    rc = -1;
                }
            }
        } while (rc == RHEMA_EUNAVAIL && mono_ms(s) <= r->give_up_ms + 20000);
        if (rc != 0) {
            if (rc != -1)
                seq_error(r, "writer %d: %s: %s", me->id, rhema_strerror(rc), s->vt->errmsg(c));
            break;
        }
        r->versions[me->id][i] = version;
        r->written[me->id] = i + 1;
    }
    s->vt->disconnect(c);
    atomic_fetch_add(&r->writers_done, 1);
    return NULL;
}

/* One pass of the reader: scan after `last` (updated), checking and counting. */
static int seq_read_pass(struct seq_race *r, rhema_storage_conn *c, char *last)
{
    struct suite *s = r->s;
    struct collected col = {0};
    char from[RHEMA_STORAGE_KEY_MAX + 2];
    size_t i;
    int rc;
    snprintf(from, sizeof from, "%s\x01", last); /* the least key above last */
    rc = s->vt->scan(c, r->ns, last[0] != '\0' ? from : "ov/", "ov0", 0, collect_cb, &col);
    if (rc != 0) {
        seq_error(r, "reader: scan: %s: %s", rhema_strerror(rc), s->vt->errmsg(c));
        collected_free(&col);
        return -1;
    }
    r->scans++;
    for (i = 0; i < col.n; i++) {
        char want[64];
        unsigned id, k;
        if (strcmp(col.keys[i], last) <= 0) {
            seq_error(r, "reader: key '%s' after '%s'", col.keys[i], last);
            break;
        }
        seq_key_of(want, sizeof want, "ov/", col.versions[i]);
        if (strcmp(col.keys[i], want) != 0) {
            seq_error(r, "reader: key '%s' holds version %llu", col.keys[i],
                      (unsigned long long)col.versions[i]);
            break;
        }
        if (sscanf(col.values[i], "%u:%u", &id, &k) != 2 || id > 1 || k >= SEQ_THREAD_WRITES) {
            seq_error(r, "reader: unexpected value '%s'", col.values[i]);
            break;
        }
        r->seen[id][k]++;
        r->seen_version[id][k] = col.versions[i];
        snprintf(last, RHEMA_STORAGE_KEY_MAX + 1, "%s", col.keys[i]);
    }
    collected_free(&col);
    return atomic_load(&r->errors) == 0 ? 0 : -1;
}

static int t_seq_order(struct suite *s)
{
    char ns[64], last[RHEMA_STORAGE_KEY_MAX + 1] = "", *err = NULL;
    struct seq_race *r;
    struct seq_writer wr[2];
    pthread_t th[2];
    rhema_storage_conn *c = NULL;
    int i, started = 0, rc, result = T_PASS;
    unsigned k;
    if (seq_skipped(s))
        return T_SKIP;
    ns_of(s, ".seqc", ns, sizeof ns);
    r = calloc(1, sizeof *r);
    CHECK(r != NULL, "out of memory");
    pthread_mutex_init(&r->error_lock, NULL);
    r->s = s;
    r->ns = ns;
    r->give_up_ms = mono_ms(s) + SEQ_WRITE_MS;
    rc = s->vt->connect(s->inst, &c, &err);
    if (rc != 0) {
        result = failf(s, "connect for the reader: %s: %s", rhema_strerror(rc), err ? err : "");
        free(err);
        goto out;
    }
    for (i = 0; i < 2; i++) {
        wr[i] = (struct seq_writer){r, i};
        if (pthread_create(&th[i], NULL, seq_writer_main, &wr[i]) != 0) {
            atomic_fetch_add(&r->writers_done, 2 - i);
            break;
        }
        started++;
    }
    /* the reader runs on this thread until the writers are done, then once more */
    while (atomic_load(&r->writers_done) < 2 && seq_read_pass(r, c, last) == 0)
        sched_yield();
    for (i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    if (atomic_load(&r->errors) == 0)
        seq_read_pass(r, c, last);
    s->vt->disconnect(c);
    if (started != 2) {
        result = failf(s, "could not start the writers");
        goto out;
    }
    if (atomic_load(&r->errors) != 0) {
        result = failf(s, "%d errors, the first: %s", atomic_load(&r->errors), r->error);
        goto out;
    }
    if (r->written[0] == 0 || r->written[1] == 0) {
        result = failf(s, "the writers appended %u and %u records", r->written[0], r->written[1]);
        goto out;
    }
    for (i = 0; i < 2 && result == T_PASS; i++) {
        for (k = 0; k < SEQ_THREAD_WRITES && result == T_PASS; k++) {
            unsigned want = k < r->written[i] ? 1 : 0;
            if (r->seen[i][k] != want)
                result =
                    failf(s, "record %d:%u (version %llu) seen %u times, want %u (%u scans)", i, k,
                          (unsigned long long)r->versions[i][k], r->seen[i][k], want, r->scans);
            else if (want && r->seen_version[i][k] != r->versions[i][k])
                result = failf(s, "record %d:%u: the reader saw version %llu, written %llu", i, k,
                               (unsigned long long)r->seen_version[i][k],
                               (unsigned long long)r->versions[i][k]);
        }
    }
out:
    pthread_mutex_destroy(&r->error_lock);
    free(r);
    return result;
}

/*
 * DURABLE plugins: records written in a batch with their change and alone
 * survive a close and reopen under their keys and versions, and a record
 * written after the reopen gets a version above them (its key sorts after).
 */
static int t_seq_durable(struct suite *s)
{
    char ns[64], *err = NULL;
    struct collected col = {0};
    struct rhema_storage_write w[3];
    uint64_t v_change, v_rec, v_alone;
    int rc;
    if (seq_skipped(s))
        return T_SKIP;
    if (!(s->vt->features & RHEMA_STORAGE_DURABLE)) {
        snprintf(s->detail, sizeof s->detail, "features lack RHEMA_STORAGE_DURABLE");
        return T_SKIP;
    }
    ns_of(s, ".seq", ns, sizeof ns);
    w[0] = PUTW(ns, "d-change", "c", 1, RHEMA_VERSION_ANY);
    w[1] = seqw(ns, "dv/", "rec");
    w[2] = seqw(ns, "dv/", "alone");
    CHECK_RC(s->c1, 0, s->vt->batch(s->c1, w, 3));
    v_change = w[0].new_version;
    v_rec = w[1].new_version;
    v_alone = w[2].new_version;
    rc = reconnect(s, &err);
    if (rc != 0) {
        failf(s, "reopen returned %s: %s", rhema_strerror(rc), err ? err : "");
        free(err);
        return T_FAIL;
    }
    EXPECT_STR(s->c2, ns, "d-change", "c", v_change);
    EXPECT_RECORD(s->c2, ns, "dv/", v_rec, "rec");
    EXPECT_RECORD(s->c2, ns, "dv/", v_alone, "alone");
    w[0] = seqw(ns, "dv/", "after");
    CHECK_RC(s->c1, 0, s->vt->put(s->c1, &w[0]));
    CHECK(w[0].new_version > v_alone && w[0].new_version > v_rec,
          "a record after the reopen got version %llu, not above %llu",
          (unsigned long long)w[0].new_version, (unsigned long long)v_alone);
    SEQ_SCAN(s->c2, ns, "dv/", "dv/", "dv0", &col);
    CHECK(col.n == 3 && strcmp(col.values[2], "after") == 0,
          "%zu records under dv/ after the reopen, want rec, alone, after", col.n);
    collected_free(&col);
    return T_PASS;
}

/* Empty the namespaces of the sequenced checks (as cleanup does for the others). */
static int t_seq_cleanup(struct suite *s)
{
    static const char *const tags[] = {".seq", ".seqc"};
    size_t i;
    for (i = 0; i < sizeof tags / sizeof tags[0]; i++) {
        char ns[64];
        long left = empty_namespace(s, s->c1, ns_of(s, tags[i], ns, sizeof ns));
        CHECK(left == 0, "namespace %s: %ld entries left after deleting them all", ns, left);
    }
    return T_PASS;
}

static const struct check checks[] = {
    {"health", t_health},
    {"errmsg", t_errmsg},
    {"get_missing", t_get_missing},
    {"put_get", t_put_get},
    {"put_get_empty", t_put_get_empty},
    {"put_get_binary", t_put_get_binary},
    {"put_get_1mib", t_put_get_1mib},
    {"version_increasing", t_version_increasing},
    {"version_recreate", t_version_recreate},
    {"expected_version_match", t_expected_match},
    {"expected_version_mismatch", t_expected_mismatch},
    {"version_absent", t_version_absent},
    {"del", t_del},
    {"batch_atomic", t_batch_conflict},
    {"batch_apply", t_batch_apply},
    {"batch_put_runs", t_batch_put_runs},
    {"group_commit", t_group_commit},
    {"strided_arrays", t_strided_arrays},
    {"scan_setup", t_scan_setup},
    {"scan_order", t_scan_order},
    {"scan_bounds", t_scan_bounds},
    {"scan_limit", t_scan_limit},
    {"scan_stop_abort", t_scan_stop_abort},
    {"scan_many", t_scan_many},
    {"namespaces_isolated", t_namespaces_isolated},
    {"visibility_across_connections", t_visibility},
    {"get_buffer_stable", t_get_buffer_stable},
    {"get_many", t_get_many},
    {"ttl_expiry", t_ttl},
    {"stats", t_stats},
    {"invalid_args", t_invalid_args},
    {"lease_basic", t_lease_basic},
    {"lease_expiry", t_lease_expiry},
    {"lease_epochs_monotonic", t_lease_epochs},
    {"lease_invalid_args", t_lease_invalid},
    {"lease_contention", t_lease_contention},
    {"concurrent_writers", t_concurrent_writers},
    {"rate_invalid_args", t_rate_invalid},
    {"rate_burst_exact", t_rate_burst},
    {"rate_windows_all_or_nothing", t_rate_windows},
    {"rate_other_n_starts_fresh", t_rate_new_n},
    {"rate_matches_reference", t_rate_reference},
    {"rate_concurrent_exact", t_rate_concurrent},
    {"rate_refill", t_rate_refill},
    {"backup", t_backup},
    {"backup_restore", t_backup_restore},
    {"durable_reopen", t_durable_reopen},
    /* storage minor 3: sequenced writes */
    {"sequenced_key_format", t_seq_key_format},
    {"sequenced_batch_versions", t_seq_batch_versions},
    {"sequenced_failed_batch", t_seq_failed_batch},
    {"sequenced_invalid_args", t_seq_invalid},
    {"sequenced_group", t_seq_group},
    {"sequenced_order_concurrent", t_seq_order},
    {"sequenced_durable_reopen", t_seq_durable},
    {"sequenced_cleanup", t_seq_cleanup},
    {"cleanup", t_cleanup},
    /* watch() / unwatch() (minor 3) */
    {"watch", t_watch},
};

static void emit(struct suite *s, const char *name, int result)
{
    if (result == T_PASS) {
        s->t.passed++;
        s->detail[0] = '\0';
    } else if (result == T_SKIP) {
        s->t.skipped++;
    } else {
        s->t.failed++;
    }
    if (s->report != NULL)
        s->report(s->report_ctx, name, result, s->detail);
    s->detail[0] = '\0';
}

static void make_base(struct suite *s)
{
    unsigned char r[8];
    uint64_t x = 0;
    size_t i;
    if (getrandom(r, sizeof r, GRND_NONBLOCK) == (ssize_t)sizeof r) {
        for (i = 0; i < sizeof r; i++)
            x = x << 8 | r[i];
    } else {
        x = s->host->realtime_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)s;
    }
    snprintf(s->base, sizeof s->base, "conf_%016llx", (unsigned long long)x);
}

int rhema_conformance_storage(const struct rhema_storage_plugin *vt, const struct rhema_host *host,
                              const struct rhema_cfg *cfg, rhema_conf_report_fn report, void *ctx,
                              struct rhema_conf_totals *totals)
{
    struct suite *s = calloc(1, sizeof *s);
    char *err = NULL;
    size_t i;
    int rc, failed;

    if (s == NULL)
        return 1;
    s->vt = vt;
    s->host = host;
    s->cfg = cfg;
    s->report = report;
    s->report_ctx = ctx;

    emit(s, "header", t_header(s));
    if (s->t.failed != 0)
        goto out; /* nothing can be called safely */

    emit(s, "check", t_check(s));
    make_base(s);
    rc = vt->open(host, cfg, &s->inst, &err);
    if (rc != 0) {
        failf(s, "open returned %s: %s", rhema_strerror(rc), err ? err : "");
        s->inst = NULL;
    } else if ((rc = vt->connect(s->inst, &s->c1, &err)) != 0 ||
               (rc = vt->connect(s->inst, &s->c2, &err)) != 0) {
        failf(s, "connect returned %s: %s", rhema_strerror(rc), err ? err : "");
    }
    free(err);
    err = NULL;
    emit(s, "open_connect", rc == 0 ? T_PASS : T_FAIL);

    for (i = 0; rc == 0 && i < sizeof checks / sizeof checks[0]; i++) {
        if (s->c1 == NULL || s->c2 == NULL) { /* a reopen failed: the rest cannot run */
            failf(s, "not run: no connection");
            emit(s, checks[i].name, T_FAIL);
            continue;
        }
        emit(s, checks[i].name, checks[i].fn(s));
    }

    if (s->c1 != NULL)
        vt->disconnect(s->c1);
    if (s->c2 != NULL)
        vt->disconnect(s->c2);
    if (s->inst != NULL)
        vt->close(s->inst);
out:
    if (totals != NULL) {
        totals->passed += s->t.passed;
        totals->failed += s->t.failed;
        totals->skipped += s->t.skipped;
    }
    failed = (int)s->t.failed;
    free(s);
    return failed;
}
