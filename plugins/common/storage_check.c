/*
 * storage_check -- see storage_check.h.
 */
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
    if (w->op != RHEMA_WRITE_PUT && w->op != RHEMA_WRITE_DEL)
        return "unknown write op";
    if (!rhema_storage_ns_valid(w->ns))
        return BAD_NS;
    if (rhema_storage_key_len(w->key) == 0)
        return BAD_KEY;
    if (w->op == RHEMA_WRITE_PUT && w->value == NULL && w->value_len > 0)
        return "NULL value with a non-zero length";
    if (w->op == RHEMA_WRITE_DEL && w->expected_version == RHEMA_VERSION_ABSENT)
        return "delete with RHEMA_VERSION_ABSENT";
    return NULL;
}

const char *rhema_storage_get_many_invalid(const char *const *ns, const char *const *keys,
                                           size_t n, const struct rhema_storage_value *out,
                                           const int *rcs)
{
    size_t i;
    if (ns == NULL || keys == NULL || out == NULL || rcs == NULL)
        return "get_many: NULL ns, keys, out or rcs";
    if (n > RHEMA_STORAGE_GET_MANY_MAX)
        return "get_many: more than RHEMA_STORAGE_GET_MANY_MAX keys";
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
            b->writes[j].expected_version != RHEMA_VERSION_ANY)
            return 1;
    return 0;
}
