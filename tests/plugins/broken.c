/*
 * Deliberately broken storage plugins for tests/unit/test_loader.c.  One
 * source, one BROKEN_* macro per build: each breaks exactly one rule of the
 * loader (DESIGN.md §3) and the test asserts the refusal and its message.
 * GOOD_OPTIONAL builds a valid plugin without the optional 'backup', built
 * as a plugin of ABI minor 0 would be (its vtable ends where minor 0 ends):
 * it must load, and the host must see backup and every member of a later
 * minor (get_many) as NULL.
 */
#include <stddef.h>
#include <string.h>

#include <rhema/storage.h>

static int s_open(const struct rhema_host *h, const struct rhema_cfg *c,
                  rhema_storage_instance **out, char **err)
{
    (void)h, (void)c, (void)err;
    static int dummy;
    *out = (rhema_storage_instance *)&dummy;
    return 0;
}
static void s_close(rhema_storage_instance *i) { (void)i; }
static int s_connect(rhema_storage_instance *i, rhema_storage_conn **out, char **err)
{
    (void)err;
    *out = (rhema_storage_conn *)i;
    return 0;
}
static void s_disconnect(rhema_storage_conn *c) { (void)c; }
static int s_get(rhema_storage_conn *c, const char *ns, const char *key,
                 struct rhema_storage_value *out)
{
    (void)c, (void)ns, (void)key, (void)out;
    return RHEMA_ENOTFOUND;
}
static int s_put(rhema_storage_conn *c, struct rhema_storage_write *w)
{
    (void)c, (void)w;
    return RHEMA_ENOTSUP;
}
static int s_del(rhema_storage_conn *c, const char *ns, const char *key, uint64_t v)
{
    (void)c, (void)ns, (void)key, (void)v;
    return RHEMA_ENOTFOUND;
}
static int s_batch(rhema_storage_conn *c, struct rhema_storage_write *w, size_t n)
{
    (void)c, (void)w, (void)n;
    return RHEMA_ENOTSUP;
}
__attribute__((unused)) static int s_scan(rhema_storage_conn *c, const char *ns, const char *from, const char *to,
                  size_t limit, rhema_storage_scan_cb cb, void *ctx)
{
    (void)c, (void)ns, (void)from, (void)to, (void)limit, (void)cb, (void)ctx;
    return 0;
}
static int s_lease(rhema_storage_conn *c, const char *name, const char *holder, uint64_t ttl,
                   int op, struct rhema_lease_info *out)
{
    (void)c, (void)name, (void)holder, (void)ttl, (void)op, (void)out;
    return RHEMA_ENOTSUP;
}
static int s_health(rhema_storage_conn *c, char **err)
{
    (void)c, (void)err;
    return 0;
}
static int s_stats(rhema_storage_conn *c, const char *ns, struct rhema_storage_stats *out)
{
    (void)c, (void)ns;
    memset(out, 0, sizeof *out);
    return 0;
}
static const char *s_errmsg(rhema_storage_conn *c)
{
    (void)c;
    return "";
}

#if defined(BROKEN_DUPNAME)
#define NAME "memory" /* collides with the real memory plugin */
#elif defined(GOOD_OPTIONAL)
#define NAME "optional"
#else
#define NAME "broken"
#endif

static const struct rhema_storage_plugin vt = {
    .base =
        {
#ifdef BROKEN_MAJOR
            .abi_major = RHEMA_ABI_MAJOR + 1,
#else
            .abi_major = RHEMA_ABI_MAJOR,
#endif
#if defined(BROKEN_MINOR)
            .abi_minor = RHEMA_ABI_MINOR + 7,
#elif defined(GOOD_OPTIONAL)
            .abi_minor = 0,
#else
            .abi_minor = RHEMA_ABI_MINOR,
#endif
#ifdef BROKEN_KIND
            .kind = 99,
#else
            .kind = RHEMA_KIND_STORAGE,
#endif
#if defined(BROKEN_SIZE)
            .size = (uint32_t)offsetof(struct rhema_storage_plugin, scan),
#elif defined(GOOD_OPTIONAL)
            .size = (uint32_t)offsetof(struct rhema_storage_plugin, get_many),
#else
            .size = (uint32_t)sizeof(struct rhema_storage_plugin),
#endif
            .name = NAME,
            .version = "0.0.1",
            .description = "a deliberately broken plugin for the loader tests",
        },
    .features = 0,
    .open = s_open,
    .close = s_close,
    .connect = s_connect,
    .disconnect = s_disconnect,
    .get = s_get,
    .put = s_put,
    .del = s_del,
    .batch = s_batch,
#ifdef BROKEN_NULLMETHOD
    .scan = NULL,
#else
    .scan = s_scan,
#endif
    .lease = s_lease,
    .health = s_health,
    .stats = s_stats,
    .errmsg = s_errmsg,
};

int rhema_plugin_init(const struct rhema_host *host, const struct rhema_plugin **out)
{
    (void)host;
    *out = &vt.base;
    return 0;
}
