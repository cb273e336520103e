/*
 * Deliberately broken storage plugins for tests/unit/test_loader.c.  One
 * source, one BROKEN_* macro per build: each breaks exactly one rule of the
 * loader (DESIGN.md §3) and the test asserts the refusal and its message.
 * GOOD_OPTIONAL builds a valid plugin without the optional 'backup', built
 * as a plugin of storage minor 0 would be (its vtable ends where minor 0
 * ends): it must load, and the host must see backup and every member of a
 * later minor (get_many) as NULL.
 *
 * Newer minors (SQLite's iVersion rule): GOOD_NEWER is built as a plugin of
 * a storage minor 7 above the host's would be -- its vtable is larger, with
 * members the host does not know -- and must load; BROKEN_MINOR says such a
 * newer minor but its size stops where minor 0 ends, short of get_many, and
 * must be refused.  BROKEN_OLD_MAJOR is a plugin of the previous major.
 *
 * GOOD_MINOR1 is a plugin of storage minor 1 (get_many, no rate): its size
 * ends where minor 1 ends, and the bytes after it -- where a minor-2 vtable
 * has rate -- hold a function pointer, as whatever follows a plugin's
 * vtable in its data segment may.  It must load, and the host must see rate
 * as NULL: it never reads past the plugin's size.
 *
 * GOOD_MINOR3 is a plugin of storage minor 3 (watch/unwatch, no check): its
 * size ends where minor 3 ends, and check -- past it -- holds a function
 * pointer.  It must load, with check read as NULL.
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
#elif defined(GOOD_NEWER)
#define NAME "newer"
#elif defined(GOOD_MINOR1)
#define NAME "minor1"
#elif defined(GOOD_MINOR3)
#define NAME "minor3"
#else
#define NAME "broken"
#endif

static int s_get_many(rhema_storage_conn *c, const char *const *ns, const char *const *keys,
                      size_t n, struct rhema_storage_value *out, int *rcs)
{
    (void)c, (void)ns, (void)keys, (void)out;
    for (size_t i = 0; i < n; i++)
        rcs[i] = RHEMA_ENOTFOUND;
    return 0;
}
static int s_later(void)
{
    return RHEMA_ENOTSUP;
}
static int s_rate(rhema_storage_conn *c, struct rhema_rate_query *q)
{
    (void)c, (void)q;
    return RHEMA_ENOTSUP;
}
static int s_check(const struct rhema_host *h, const struct rhema_cfg *c, char **err)
{
    (void)h, (void)c, (void)err;
    return 0;
}

/*
 * The vtable as a plugin of a later minor lays it out: this host's members,
 * then members appended after them that this host does not know.
 */
struct newer_storage_plugin {
    struct rhema_storage_plugin known;
    int (*later[3])(void);
};

#ifdef GOOD_NEWER
#define VT_TYPE struct newer_storage_plugin
#define VT_KNOWN(v) (v).known
#else
#define VT_TYPE struct rhema_storage_plugin
#define VT_KNOWN(v) (v)
#endif

static const VT_TYPE vt = {
#ifdef GOOD_NEWER
    .later = {s_later, s_later, s_later},
    .known =
        {
#endif
            .base =
                {
#if defined(BROKEN_MAJOR)
                    .abi_major = RHEMA_ABI_MAJOR + 1,
#elif defined(BROKEN_OLD_MAJOR)
            .abi_major = RHEMA_ABI_MAJOR - 1,
#else
            .abi_major = RHEMA_ABI_MAJOR,
#endif
#if defined(BROKEN_MINOR) || defined(GOOD_NEWER)
                    .abi_minor = RHEMA_STORAGE_ABI_MINOR + 7,
#elif defined(GOOD_OPTIONAL)
            .abi_minor = 0,
#elif defined(GOOD_MINOR1)
            .abi_minor = 1,
#elif defined(GOOD_MINOR3)
            .abi_minor = 3,
#else
            .abi_minor = RHEMA_STORAGE_ABI_MINOR,
#endif
#ifdef BROKEN_KIND
                    .kind = 99,
#else
            .kind = RHEMA_KIND_STORAGE,
#endif
#if defined(BROKEN_SIZE)
                    .size = (uint32_t)offsetof(struct rhema_storage_plugin, scan),
#elif defined(GOOD_OPTIONAL) || defined(BROKEN_MINOR)
            .size = (uint32_t)offsetof(struct rhema_storage_plugin, get_many),
#elif defined(GOOD_MINOR1)
            .size = (uint32_t)(offsetof(struct rhema_storage_plugin, get_many) +
                               sizeof(void (*)(void))),
#elif defined(GOOD_MINOR3)
            .size = (uint32_t)offsetof(struct rhema_storage_plugin, check),
#else
            .size = (uint32_t)sizeof(VT_TYPE),
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
#if !defined(GOOD_OPTIONAL) && !defined(BROKEN_MINOR)
            .get_many = s_get_many,
#endif
#ifdef GOOD_MINOR1
            .rate = s_rate, /* past its size: the host must not see it */
#endif
#ifdef GOOD_MINOR3
            .rate = s_rate,
            .check = s_check, /* past its size: the host must not see it */
#endif
#ifdef GOOD_NEWER
        },
#endif
};

int rhema_plugin_init(const struct rhema_host *host, const struct rhema_plugin **out)
{
    (void)host;
    (void)s_get_many, (void)s_later, (void)s_rate, (void)s_check;
    *out = &VT_KNOWN(vt).base;
    return 0;
}
