/*
 * storage_check -- see storage_check.h.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "storage_check.h"

#define STR_(x) #x
#define STR(x) STR_(x)

#define BAD_NS "invalid namespace (1.." STR(RHEMA_STORAGE_NS_MAX) " bytes of [A-Za-z0-9_.:-])"
#define BAD_KEY "invalid key (1.." STR(RHEMA_STORAGE_KEY_MAX) " bytes, no NUL)"

int rhema_storage_ns_valid(const char *ns)
{
    size_t i;
    if (ns == NULL)
        return 0;
    for (i = 0; ns[i] != '\0'; i++) {
        unsigned char ch = (unsigned char)ns[i];
        if (i >= RHEMA_STORAGE_NS_MAX)
            return 0;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '.' || ch == ':' || ch == '-'))
            return 0;
    }
    return i > 0;
}

size_t rhema_storage_key_len(const char *key)
{
    size_t n = 0;
    if (key == NULL)
        return 0;
    while (n <= RHEMA_STORAGE_KEY_MAX && key[n] != '\0')
        n++;
    return n <= RHEMA_STORAGE_KEY_MAX ? n : 0;
}

const char *rhema_storage_key_invalid(const char *ns, const char *key)
{
    if (!rhema_storage_ns_valid(ns))
        return BAD_NS;
    if (rhema_storage_key_len(key) == 0)
        return BAD_KEY;
    return NULL;
}

const char *rhema_storage_write_invalid(const struct rhema_storage_write *w)
{
    if (w == NULL)
        return "NULL write";
    if (w->size < RHEMA_STORAGE_WRITE_SIZE_0)
        return "write size below RHEMA_STORAGE_WRITE_SIZE_0";
    if (w->op != RHEMA_WRITE_PUT && w->op != RHEMA_WRITE_DEL)
        return "unknown write op";
    if (!rhema_storage_ns_valid(w->ns))
        return BAD_NS;
    if ((rhema_storage_write_flags(w) & ~(uint32_t)RHEMA_WRITE_FLAGS_KNOWN) != 0)
        return "unknown write flags";
    if (rhema_storage_write_sequenced(w)) {
        if (w->op != RHEMA_WRITE_PUT)
            return "a sequenced write is a put (RHEMA_WRITE_SEQUENCED with a delete)";
        if (w->expected_version != RHEMA_VERSION_ANY && w->expected_version != RHEMA_VERSION_ABSENT)
            return "a sequenced write makes a new key: expected_version must be "
                   "RHEMA_VERSION_ANY or RHEMA_VERSION_ABSENT";
        if (w->key == NULL || strnlen(w->key, RHEMA_SEQ_PREFIX_MAX + 1) > RHEMA_SEQ_PREFIX_MAX)
            return "invalid sequenced prefix (0.." STR(RHEMA_STORAGE_KEY_MAX) " - " STR(
                RHEMA_SEQ_DIGITS) " bytes, no NUL)";
    } else if (rhema_storage_key_len(w->key) == 0) {
        return BAD_KEY;
    }
    if (w->op == RHEMA_WRITE_PUT && w->value == NULL && w->value_len > 0)
        return "NULL value with a non-zero length";
    if (w->op == RHEMA_WRITE_DEL && w->expected_version == RHEMA_VERSION_ABSENT)
        return "delete with RHEMA_VERSION_ABSENT";
    return NULL;
}

uint32_t rhema_storage_write_flags(const struct rhema_storage_write *w)
{
    return w->size >= RHEMA_STORAGE_WRITE_SIZE_3 ? w->flags : 0;
}

int rhema_storage_write_sequenced(const struct rhema_storage_write *w)
{
    return (rhema_storage_write_flags(w) & RHEMA_WRITE_SEQUENCED) != 0;
}

int rhema_storage_seq_shares_previous(const struct rhema_storage_write *w, size_t i)
{
    return i > 0 && w[i - 1].op == RHEMA_WRITE_PUT && !rhema_storage_write_sequenced(&w[i - 1]);
}

char *rhema_storage_seq_key(char *buf, const char *prefix, uint64_t version)
{
    size_t len = strnlen(prefix, RHEMA_SEQ_PREFIX_MAX);
    memcpy(buf, prefix, len);
    snprintf(buf + len, RHEMA_SEQ_DIGITS + 1, "%020" PRIu64, version);
    return buf;
}

const char *rhema_storage_get_many_invalid(const char *const *ns, const char *const *keys, size_t n,
                                           const struct rhema_storage_value *out, const int *rcs)
{
    size_t i;
    if (ns == NULL || keys == NULL || out == NULL || rcs == NULL)
        return "get_many: NULL ns, keys, out or rcs";
    if (n > RHEMA_STORAGE_GET_MANY_MAX)
        return "get_many: more than RHEMA_STORAGE_GET_MANY_MAX keys";
    if (n > 0 && out->size < RHEMA_STORAGE_VALUE_SIZE_0)
        return "get_many: value size below RHEMA_STORAGE_VALUE_SIZE_0";
    for (i = 0; i < n; i++) {
        const char *why = rhema_storage_key_invalid(ns[i], keys[i]);
        if (why != NULL)
            return why;
    }
    return NULL;
}

const char *rhema_storage_scan_invalid(const char *ns, rhema_storage_scan_cb cb)
{
    if (!rhema_storage_ns_valid(ns))
        return BAD_NS;
    if (cb == NULL)
        return "scan without a callback";
    return NULL;
}

const char *rhema_storage_stats_invalid(const char *ns, const struct rhema_storage_stats *out)
{
    if (ns != NULL && !rhema_storage_ns_valid(ns))
        return BAD_NS;
    if (out == NULL)
        return "stats without an output";
    return NULL;
}

const char *rhema_storage_lease_invalid(const char *name, const char *holder, uint64_t ttl_ms,
                                        int op)
{
    if (rhema_storage_key_len(name) == 0)
        return "invalid lease name (1.." STR(RHEMA_STORAGE_KEY_MAX) " bytes)";
    if (op != RHEMA_LEASE_ACQUIRE && op != RHEMA_LEASE_RENEW && op != RHEMA_LEASE_RELEASE &&
        op != RHEMA_LEASE_QUERY)
        return "unknown lease op";
    if (op != RHEMA_LEASE_QUERY) {
        size_t hl = holder != NULL ? strnlen(holder, RHEMA_LEASE_HOLDER_MAX + 1) : 0;
        if (hl == 0 || hl > RHEMA_LEASE_HOLDER_MAX)
            return "invalid lease holder (1.." STR(RHEMA_LEASE_HOLDER_MAX) " bytes)";
        if (op != RHEMA_LEASE_RELEASE && ttl_ms == 0)
            return "lease ttl_ms must be > 0";
    }
    return NULL;
}

int rhema_storage_batch_checks_after_first(const struct rhema_storage_batch *b)
{
    size_t j;
    for (j = 1; j < b->n; j++)
        if (b->writes[j].op != RHEMA_WRITE_PUT ||
            (b->writes[j].expected_version != RHEMA_VERSION_ANY &&
             !rhema_storage_write_sequenced(&b->writes[j]))) /* a record never conflicts */
            return 1;
    return 0;
}

int rhema_storage_batch_check(rhema_storage_conn *conn, struct rhema_storage_write *w, size_t n,
                              rhema_storage_write_check_fn check, const char **why)
{
    size_t i;
    int rc;
    if (n == 0)
        return 0;
    if (w == NULL) {
        *why = "NULL writes";
        return RHEMA_EINVAL;
    }
    for (i = 0; i < n; i++)
        w[i].new_version = 0;
    for (i = 0; i < n; i++)
        if ((rc = check(conn, &w[i])) != 0)
            return rc;
    return 0;
}

int rhema_storage_group_check(rhema_storage_conn *conn, struct rhema_storage_batch *g, size_t n,
                              rhema_storage_write_check_fn check, const char **why)
{
    size_t i, j;
    if (n == 0)
        return 0;
    if (g == NULL) {
        *why = "NULL group";
        return RHEMA_EINVAL;
    }
    for (i = 0; i < n; i++) {
        const char *member_why = NULL;
        g[i].result = rhema_storage_batch_check(conn, g[i].writes, g[i].n, check, &member_why);
        if (member_why != NULL)
            *why = member_why; /* a member's NULL writes: it fails alone */
        for (j = 0; g[i].writes != NULL && j < g[i].n; j++)
            g[i].writes[j].new_version = 0;
    }
    return 0;
}

/* ---- arrays of the caller's stride ---- */

#define MIN(a, b) ((a) < (b) ? (a) : (b))

/* 1 when w[0..n) is laid out with this plugin's own stride (or is empty). */
static int writes_native(const struct rhema_storage_write *w, size_t n)
{
    return n == 0 || w == NULL || w->size == sizeof *w;
}

/*
 * A copy of w[0..n) (caller's stride) in this plugin's layout, or NULL for
 * ENOMEM.  Each element keeps the caller's members it knows, zeros for the
 * rest, and says sizeof in size.
 */
static struct rhema_storage_write *writes_copy(struct rhema_storage_write *w, size_t n)
{
    struct rhema_storage_write *v = calloc(n, sizeof *v);
    size_t i;
    if (v == NULL)
        return NULL;
    for (i = 0; i < n; i++) {
        memcpy(&v[i], rhema_storage_write_at(w, i), MIN((size_t)w->size, sizeof *v));
        v[i].size = sizeof *v;
    }
    return v;
}

/* Copy the outputs of a copy made by writes_copy() back to the caller's elements. */
static void writes_return(struct rhema_storage_write *w, const struct rhema_storage_write *v,
                          size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        rhema_storage_write_at(w, i)->new_version = v[i].new_version;
}

int rhema_storage_call_batch(rhema_storage_batch_fn fn, rhema_storage_conn *conn,
                             struct rhema_storage_write *w, size_t n, const char **why)
{
    struct rhema_storage_write *v;
    int rc;
    if (writes_native(w, n))
        return fn(conn, w, n);
    if (w->size < RHEMA_STORAGE_WRITE_SIZE_0) {
        *why = "write size below RHEMA_STORAGE_WRITE_SIZE_0";
        return RHEMA_EINVAL;
    }
    if ((v = writes_copy(w, n)) == NULL) {
        *why = "out of memory";
        return RHEMA_ENOMEM;
    }
    rc = fn(conn, v, n);
    writes_return(w, v, n);
    free(v);
    return rc;
}

int rhema_storage_call_group(rhema_storage_group_fn fn, rhema_storage_conn *conn,
                             struct rhema_storage_batch *g, size_t n, const char **why)
{
    struct rhema_storage_batch *v;
    size_t i;
    int rc = 0, native = n == 0 || g == NULL || g->size == sizeof *g;

    for (i = 0; native && i < n; i++)
        native = writes_native(g[i].writes, g[i].n);
    if (native)
        return fn(conn, g, n);
    if (g->size < RHEMA_STORAGE_BATCH_SIZE_0) {
        *why = "batch size below RHEMA_STORAGE_BATCH_SIZE_0";
        return RHEMA_EINVAL;
    }
    for (i = 0; i < n; i++) {
        const struct rhema_storage_batch *b = rhema_storage_batch_at(g, i);
        if (b->n > 0 && b->writes != NULL && b->writes->size < RHEMA_STORAGE_WRITE_SIZE_0) {
            *why = "write size below RHEMA_STORAGE_WRITE_SIZE_0";
            return RHEMA_EINVAL;
        }
    }
    if ((v = calloc(n, sizeof *v)) == NULL) {
        *why = "out of memory";
        return RHEMA_ENOMEM;
    }
    for (i = 0; i < n && rc == 0; i++) {
        struct rhema_storage_batch *b = rhema_storage_batch_at(g, i);
        memcpy(&v[i], b, MIN((size_t)g->size, sizeof *v));
        v[i].size = sizeof *v;
        if (b->n > 0 && b->writes != NULL && (v[i].writes = writes_copy(b->writes, b->n)) == NULL)
            rc = RHEMA_ENOMEM;
    }
    if (rc == 0)
        rc = fn(conn, v, n);
    else
        *why = "out of memory";
    for (i = 0; i < n; i++) {
        struct rhema_storage_batch *b = rhema_storage_batch_at(g, i);
        if (v[i].writes != NULL && v[i].writes != b->writes) {
            writes_return(b->writes, v[i].writes, b->n);
            free(v[i].writes);
        }
        b->result = v[i].result;
    }
    free(v);
    return rc;
}

int rhema_storage_call_get_many(rhema_storage_get_many_fn fn, rhema_storage_conn *conn,
                                const char *const *ns, const char *const *keys, size_t n,
                                struct rhema_storage_value *out, int *rcs, const char **why)
{
    struct rhema_storage_value *v;
    size_t i;
    int rc;
    if (n == 0 || out == NULL || out->size == sizeof *out)
        return fn(conn, ns, keys, n, out, rcs);
    if (out->size < RHEMA_STORAGE_VALUE_SIZE_0) {
        *why = "get_many: value size below RHEMA_STORAGE_VALUE_SIZE_0";
        return RHEMA_EINVAL;
    }
    if ((v = calloc(n, sizeof *v)) == NULL) {
        *why = "out of memory";
        return RHEMA_ENOMEM;
    }
    for (i = 0; i < n; i++)
        v[i].size = sizeof *v;
    rc = fn(conn, ns, keys, n, v, rcs);
    for (i = 0; i < n; i++) {
        struct rhema_storage_value *o = rhema_storage_value_at(out, i);
        o->data = v[i].data;
        o->len = v[i].len;
        o->version = v[i].version;
    }
    free(v);
    return rc;
}
