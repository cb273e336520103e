/*
 * store -- the layer every store module builds on (store.h).
 */
#include "rhema_build.h"

#include <stdlib.h>
#include <string.h>

#include "store.h"

void rhema_store_init(struct rhema_store *st, const struct rhema_storage_plugin *vt,
                      rhema_storage_conn *conn)
{
    memset(st, 0, sizeof *st);
    st->vt = vt;
    st->conn = conn;
}

/* Map a storage failure to a message. */
int rhema_store_error(struct rhema_store *st, int rc, const char *what, char *err)
{
    if (rc == RHEMA_EUNAVAIL)
        return rhema_set_errbuf(err, rc, "storage unavailable while %s: %s", what,
                                st->vt->errmsg(st->conn));
    return rhema_set_errbuf(err, rc, "storage error while %s: %s (%s)", what, rhema_strerror(rc),
                            st->vt->errmsg(st->conn));
}

int rhema_page_add(const struct rhema_store *st, size_t *used, size_t len)
{
    *used += len + 1; /* the comma */
    return st->max_page_bytes && *used > st->max_page_bytes;
}

void rhema_unreadable_trim(json_t *ids, const char *next)
{
    if (!next)
        return;
    for (size_t i = json_array_size(ids); i-- > 0;)
        if (strcmp(json_string_value(json_array_get(ids, i)), next) > 0)
            json_array_remove(ids, i);
}

void rhema_record_release(struct rhema_record *r)
{
    free(r->json);
    r->json = NULL;
    r->len = 0;
    r->version = 0;
}

int rhema_key_list_collect(void *ctx, const char *key, const void *value, size_t len,
                           uint64_t version)
{
    struct rhema_key_list *l = ctx;
    (void)value, (void)len, (void)version;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        char **nv = realloc(l->v, cap * sizeof *nv);
        if (!nv) {
            l->oom = 1;
            return RHEMA_ENOMEM;
        }
        l->v = nv;
        l->cap = cap;
    }
    if (!(l->v[l->n] = strdup(key + (strlen(key) >= l->strip ? l->strip : 0)))) {
        l->oom = 1;
        return RHEMA_ENOMEM;
    }
    l->n++;
    return 0;
}

void rhema_key_list_clear(struct rhema_key_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    l->n = 0;
}

void rhema_key_list_release(struct rhema_key_list *l)
{
    rhema_key_list_clear(l);
    free(l->v);
    l->v = NULL;
    l->cap = 0;
}
