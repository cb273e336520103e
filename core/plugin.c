/*
 * plugin -- the loader.  Modeled on PostgreSQL's Pg_magic_struct check and
 * SQLite's iVersion: a plugin states the ABI it was built against in the
 * header of its vtable (the major, and the minor of its kind); we refuse
 * what we cannot call safely and copy the rest into a zeroed host-side
 * struct, so that members appended after the plugin's minor read as NULL
 * and members appended after the host's minor are ignored.
 */
#include "rhema_build.h"

#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "plugin.h"
#include "util.h"

struct rhema_plugin_registry {
    struct rhema_loaded_plugin **v;
    size_t n, cap;
};

/* ---- the host table ---- */

static void host_log(int level, const char *plugin, const char *fmt, ...) RHEMA_PRINTF_LIKE(3, 4);
static void host_log(int level, const char *plugin, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    rhema_vlog(level, plugin, fmt, ap);
    va_end(ap);
}

static void host_vlog(int level, const char *plugin, const char *fmt, va_list ap)
    RHEMA_PRINTF_LIKE(3, 0);
static void host_vlog(int level, const char *plugin, const char *fmt, va_list ap)
{
    rhema_vlog(level, plugin, fmt, ap);
}

static int host_set_error(char **err, int code, const char *fmt, ...) RHEMA_PRINTF_LIKE(3, 4);
static int host_set_error(char **err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        if (vasprintf(err, fmt, ap) < 0)
            *err = NULL;
        va_end(ap);
    }
    return code;
}

/*
 * Metrics registered by plugins: a fixed table of atomic values, read by the
 * metrics endpoint.  Registration happens at open (main thread); updates from
 * any thread are lock-free.
 */
#define HOST_METRICS_MAX 256
struct host_metric {
    char name[96];
    char help[160];
    int is_gauge;
    atomic_llong value;
};
static struct host_metric host_metrics[HOST_METRICS_MAX];
static atomic_int host_metrics_n;
static pthread_mutex_t host_metrics_lock = PTHREAD_MUTEX_INITIALIZER;

static int host_metric_register(const char *plugin, const char *name, const char *help,
                                int is_gauge)
{
    if (!plugin || !name)
        return RHEMA_EINVAL;
    pthread_mutex_lock(&host_metrics_lock);
    int n = atomic_load(&host_metrics_n), idx = -1;
    char full[96];
    snprintf(full, sizeof full, "rhema_%s_%s", plugin, name);
    for (int i = 0; i < n; i++)
        if (strcmp(host_metrics[i].name, full) == 0)
            idx = i; /* re-registration (a second instance) shares the metric */
    if (idx < 0 && n < HOST_METRICS_MAX) {
        idx = n;
        snprintf(host_metrics[idx].name, sizeof host_metrics[idx].name, "%s", full);
        snprintf(host_metrics[idx].help, sizeof host_metrics[idx].help, "%s", help ? help : "");
        host_metrics[idx].is_gauge = is_gauge;
        atomic_store(&host_metrics[idx].value, 0);
        atomic_store(&host_metrics_n, n + 1);
    }
    pthread_mutex_unlock(&host_metrics_lock);
    return idx < 0 ? RHEMA_ENOMEM : idx;
}

static void host_metric_add(int handle, int64_t delta)
{
    if (handle >= 0 && handle < atomic_load(&host_metrics_n))
        atomic_fetch_add(&host_metrics[handle].value, delta);
}

static void host_metric_set(int handle, int64_t value)
{
    if (handle >= 0 && handle < atomic_load(&host_metrics_n))
        atomic_store(&host_metrics[handle].value, value);
}

/* Typed getters: the config's own, plus a log line on a wrong type. */
static int logged(const struct rhema_cfg *cfg, int rc)
{
    if (rc == RHEMA_EINVAL && rhema_cfg_error(cfg))
        rhema_log(RHEMA_LOG_ERROR, "config", "%s", rhema_cfg_error(cfg));
    return rc;
}
static int host_cfg_string(const struct rhema_cfg *cfg, const char *key, const char **out)
{
    return logged(cfg, rhema_cfg_string(cfg, key, out));
}
static int host_cfg_int(const struct rhema_cfg *cfg, const char *key, int64_t *out)
{
    return logged(cfg, rhema_cfg_int(cfg, key, out));
}
static int host_cfg_bool(const struct rhema_cfg *cfg, const char *key, int *out)
{
    return logged(cfg, rhema_cfg_bool(cfg, key, out));
}
static int host_cfg_double(const struct rhema_cfg *cfg, const char *key, double *out)
{
    return logged(cfg, rhema_cfg_double(cfg, key, out));
}

static const struct rhema_host host_table = {
    .abi_major = RHEMA_ABI_MAJOR,
    .abi_minor = RHEMA_HOST_ABI_MINOR,
    .size = sizeof(struct rhema_host),
    .log = host_log,
    .set_error = host_set_error,
    .cfg_string = host_cfg_string,
    .cfg_int = host_cfg_int,
    .cfg_bool = host_cfg_bool,
    .cfg_double = host_cfg_double,
    .cfg_where = rhema_cfg_where,
    .monotonic_ns = rhema_monotonic_ns,
    .realtime_ns = rhema_realtime_ns,
    .metric_register = host_metric_register,
    .metric_add = host_metric_add,
    .metric_set = host_metric_set,
    .vlog = host_vlog,
};

const struct rhema_host *rhema_host_get(void) { return &host_table; }

/* ---- ABI knowledge of this host ---- */

#define STR_(x) #x
#define STR(x) STR_(x)
const char *rhema_plugin_abi_string(void)
{
    return STR(RHEMA_ABI_MAJOR) " (host " STR(RHEMA_HOST_ABI_MINOR) ", storage " STR(RHEMA_STORAGE_ABI_MINOR) ", compression " STR(
        RHEMA_COMPRESS_ABI_MINOR) ", cipher " STR(RHEMA_CIPHER_ABI_MINOR) ", balancer " STR(RHEMA_BALANCER_ABI_MINOR) ")";
}

const char *rhema_plugin_kind_name(uint32_t kind)
{
    switch (kind) {
    case RHEMA_KIND_STORAGE: return "storage";
    case RHEMA_KIND_COMPRESS: return "compression";
    case RHEMA_KIND_CIPHER: return "cipher";
    case RHEMA_KIND_BALANCER: return "balancer";
    default: return "unknown";
    }
}

static const char *kind_prefix(uint32_t kind)
{
    switch (kind) {
    case RHEMA_KIND_STORAGE: return "storage";
    case RHEMA_KIND_COMPRESS: return "compress";
    case RHEMA_KIND_CIPHER: return "cipher";
    case RHEMA_KIND_BALANCER: return "balancer";
    default: return NULL;
    }
}

/* This host's minor of a kind (RHEMA_<KIND>_ABI_MINOR); kind is known. */
static uint32_t host_minor(uint32_t kind)
{
    switch (kind) {
    case RHEMA_KIND_STORAGE: return RHEMA_STORAGE_ABI_MINOR;
    case RHEMA_KIND_COMPRESS: return RHEMA_COMPRESS_ABI_MINOR;
    case RHEMA_KIND_CIPHER: return RHEMA_CIPHER_ABI_MINOR;
    default: return RHEMA_BALANCER_ABI_MINOR;
    }
}

/*
 * The size a vtable of `kind` must have at minor `minor` of that kind (at
 * most the host's): the offset of the end of the last member of that minor.
 * 0: a kind this host cannot use.
 */
static size_t required_size(uint32_t kind, uint32_t minor)
{
#define END_OF(T, m) (offsetof(T, m) + sizeof(((T *)0)->m))
    switch (kind) {
    case RHEMA_KIND_STORAGE:
        return minor == 0   ? END_OF(struct rhema_storage_plugin, restore)
               : minor == 1 ? END_OF(struct rhema_storage_plugin, get_many)
               : minor == 2 ? END_OF(struct rhema_storage_plugin, rate)
               : minor == 3 ? END_OF(struct rhema_storage_plugin, unwatch)
                            : END_OF(struct rhema_storage_plugin, check);
    case RHEMA_KIND_COMPRESS: return END_OF(struct rhema_compress_plugin, decompress);
    case RHEMA_KIND_CIPHER: return END_OF(struct rhema_cipher_plugin, decrypt);
    case RHEMA_KIND_BALANCER: return END_OF(struct rhema_balancer_plugin, feedback);
    default: return 0;
    }
#undef END_OF
}

/* sizeof the host-side vtable of a kind. */
static size_t host_size(uint32_t kind)
{
    switch (kind) {
    case RHEMA_KIND_STORAGE: return sizeof(struct rhema_storage_plugin);
    case RHEMA_KIND_COMPRESS: return sizeof(struct rhema_compress_plugin);
    case RHEMA_KIND_CIPHER: return sizeof(struct rhema_cipher_plugin);
    case RHEMA_KIND_BALANCER: return sizeof(struct rhema_balancer_plugin);
    default: return 0;
    }
}

/* The first required method that is NULL, or NULL when all are set. */
static const char *missing_method(const struct rhema_loaded_plugin *p)
{
#define REQUIRE(s, m)                                                                              \
    if (!(s)->m)                                                                                   \
        return #m;
    if (p->kind == RHEMA_KIND_STORAGE) {
        const struct rhema_storage_plugin *s = &p->vt.storage;
        REQUIRE(s, open) REQUIRE(s, close) REQUIRE(s, connect) REQUIRE(s, disconnect)
        REQUIRE(s, get) REQUIRE(s, put) REQUIRE(s, del) REQUIRE(s, batch) REQUIRE(s, scan)
        REQUIRE(s, lease) REQUIRE(s, health) REQUIRE(s, stats) REQUIRE(s, errmsg)
        if (s->watch) /* minor 3: unwatch() is required when watch() is set */
            REQUIRE(s, unwatch)
    } else if (p->kind == RHEMA_KIND_COMPRESS) {
        const struct rhema_compress_plugin *c = &p->vt.compress;
        REQUIRE(c, open) REQUIRE(c, close) REQUIRE(c, ctx_new) REQUIRE(c, ctx_free)
        REQUIRE(c, bound) REQUIRE(c, compress) REQUIRE(c, decompress)
    } else if (p->kind == RHEMA_KIND_CIPHER) {
        const struct rhema_cipher_plugin *c = &p->vt.cipher;
        REQUIRE(c, available) REQUIRE(c, encrypt) REQUIRE(c, decrypt)
    } else if (p->kind == RHEMA_KIND_BALANCER) {
        const struct rhema_balancer_plugin *b = &p->vt.balancer;
        REQUIRE(b, create) REQUIRE(b, destroy) REQUIRE(b, update) REQUIRE(b, pick)
    }
#undef REQUIRE
    return NULL;
}

/* Kind-specific checks of the header values: 0, or -1 with a message in buf. */
static int bad_values(const struct rhema_loaded_plugin *p, char *buf, size_t cap)
{
    if (p->kind == RHEMA_KIND_COMPRESS) {
        const struct rhema_compress_plugin *c = &p->vt.compress;
        if (c->codec_id < 1 || c->codec_id > 255) {
            snprintf(buf, cap, "codec_id %u is not in 1..255", c->codec_id);
            return -1;
        }
        if (c->level_min > c->level_max || c->level_default < c->level_min ||
            c->level_default > c->level_max) {
            snprintf(buf, cap, "levels min %d, max %d, default %d are inconsistent",
                     c->level_min, c->level_max, c->level_default);
            return -1;
        }
    } else if (p->kind == RHEMA_KIND_CIPHER) {
        const struct rhema_cipher_plugin *c = &p->vt.cipher;
        const char *why = NULL;
        if (c->cipher_id < 1 || c->cipher_id > 255) {
            snprintf(buf, cap, "cipher_id %u is not in 1..255", c->cipher_id);
            return -1;
        }
        if (c->key_bytes < 16 || c->key_bytes > 64 || c->nonce_bytes < 8 || c->nonce_bytes > 32 ||
            c->tag_bytes < 12 || c->tag_bytes > 32) {
            snprintf(buf, cap, "key %u, nonce %u or tag %u bytes out of range", c->key_bytes,
                     c->nonce_bytes, c->tag_bytes);
            return -1;
        }
        if (!c->available(&why)) {
            snprintf(buf, cap, "not available on this machine: %s", why ? why : "no reason given");
            return -1;
        }
    }
    return 0;
}

/* ---- the registry ---- */

int rhema_plugins_new(struct rhema_plugin_registry **out)
{
    struct rhema_plugin_registry *reg = calloc(1, sizeof *reg);
    if (!reg)
        return RHEMA_ENOMEM;
    *out = reg;
    return 0;
}

void rhema_plugins_free(struct rhema_plugin_registry *reg)
{
    if (!reg)
        return;
    for (size_t i = reg->n; i-- > 0;) {
        struct rhema_loaded_plugin *p = reg->v[i];
        if (p->handle)
            dlclose(p->handle);
        free(p->path);
        free(p);
    }
    free(reg->v);
    free(reg);
}

const struct rhema_loaded_plugin *rhema_plugin_find(const struct rhema_plugin_registry *reg,
                                                    uint32_t kind, const char *name)
{
    for (size_t i = 0; reg && i < reg->n; i++)
        if (reg->v[i]->kind == kind && strcmp(reg->v[i]->name, name) == 0)
            return reg->v[i];
    return NULL;
}

const struct rhema_loaded_plugin *rhema_plugin_at(const struct rhema_plugin_registry *reg,
                                                  size_t i)
{
    return reg && i < reg->n ? reg->v[i] : NULL;
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Resolve a name to a path in dir (see plugin.h); returns malloc'd path or NULL. */
static char *resolve(const char *spec, const char *dir, uint32_t want_kind)
{
    char buf[PATH_MAX];
    if (strchr(spec, '/')) {
        char *real = realpath(spec, NULL);
        return real ? real : NULL;
    }
    if (!dir || !*dir)
        dir = ".";
    for (uint32_t k = RHEMA_KIND_STORAGE; k <= RHEMA_KIND_BALANCER; k++) {
        if (want_kind && k != want_kind)
            continue;
        snprintf(buf, sizeof buf, "%s/%s_%s.so", dir, kind_prefix(k), spec);
        if (file_exists(buf))
            return strdup(buf);
    }
    snprintf(buf, sizeof buf, "%s/%s.so", dir, spec);
    if (file_exists(buf))
        return strdup(buf);
    return NULL;
}

static int fail(char **err, int code, const char *fmt, ...) RHEMA_PRINTF_LIKE(3, 4);
static int fail(char **err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        if (vasprintf(err, fmt, ap) < 0)
            *err = NULL;
        va_end(ap);
    }
    return code;
}

/*
 * A plugin is code that runs as rhemad: like sshd with a key file that
 * others could change, refuse a file, or the directory it is in, that
 * someone else could write, and a file not owned by root or by us.
 */
static int check_modes(const char *path, char **err)
{
    struct stat st;
    char *real = realpath(path, NULL), *dir;
    int rc = 0;
    if (!real)
        return fail(err, RHEMA_EINVAL, "%s: cannot load: %s", path, strerror(errno));
    if (stat(real, &st) != 0) {
        rc = fail(err, RHEMA_EINVAL, "%s: cannot load: %s", real, strerror(errno));
        goto out;
    }
    if (st.st_uid != 0 && st.st_uid != geteuid()) {
        rc = fail(err, RHEMA_EINVAL,
                  "%s: refused: owned by uid %ld, neither root nor rhemad's user (uid %ld)",
                  real, (long)st.st_uid, (long)geteuid());
        goto out;
    }
    if (st.st_mode & (S_IWGRP | S_IWOTH)) {
        rc = fail(err, RHEMA_EINVAL,
                  "%s: refused: writable by %s (mode %04o); a plugin runs as rhemad: "
                  "chmod go-w it",
                  real, (st.st_mode & S_IWOTH) ? "others" : "its group",
                  (unsigned)(st.st_mode & 07777));
        goto out;
    }
    dir = dirname(real); /* real is ours: dirname may write into it */
    if (stat(dir, &st) != 0) {
        rc = fail(err, RHEMA_EINVAL, "%s: cannot load: %s", dir, strerror(errno));
        goto out;
    }
    if (st.st_mode & (S_IWGRP | S_IWOTH)) {
        rc = fail(err, RHEMA_EINVAL,
                  "%s: refused: the plugin's directory %s is writable by %s (mode %04o), so "
                  "the plugin could be replaced: chmod go-w it",
                  path, dir, (st.st_mode & S_IWOTH) ? "others" : "its group",
                  (unsigned)(st.st_mode & 07777));
        goto out;
    }
out:
    free(real);
    return rc;
}

#if UINTPTR_MAX > 0xffffffffu
#define ELF_CLASS ELFCLASS64
typedef Elf64_Ehdr elf_ehdr;
typedef Elf64_Phdr elf_phdr;
#else
#define ELF_CLASS ELFCLASS32
typedef Elf32_Ehdr elf_ehdr;
typedef Elf32_Phdr elf_phdr;
#endif

/* [off, off + len) lies within a file of `size` bytes (no overflow). */
static int within(uint64_t off, uint64_t len, uint64_t size)
{
    return off <= size && len <= size - off;
}

/*
 * dlopen() maps a shared object's segments as its program headers say; a
 * segment that runs past the end of a truncated file is mapped all the
 * same, and touching it raises SIGBUS inside dlopen.  So check, before
 * dlopen, that the file is an ELF shared object of this machine's class
 * and byte order whose program headers, and every segment they describe,
 * lie within the file.
 */
static int check_elf(const char *path, char **err)
{
    elf_ehdr eh;
    elf_phdr ph;
    struct stat st;
    int rc = 0, fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return fail(err, RHEMA_EINVAL, "%s: cannot load: %s", path, strerror(errno));
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = fail(err, RHEMA_EINVAL, "%s: cannot load: not a regular file", path);
        goto out;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (pread(fd, &eh, sizeof eh, 0) != (ssize_t)sizeof eh ||
        memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) {
        rc = fail(err, RHEMA_EINVAL, "%s: cannot load: not an ELF file (%llu bytes)", path,
                  (unsigned long long)size);
        goto out;
    }
    if (eh.e_ident[EI_CLASS] != ELF_CLASS || eh.e_ident[EI_VERSION] != EV_CURRENT ||
        eh.e_ident[EI_DATA] != (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? ELFDATA2LSB
                                                                           : ELFDATA2MSB)) {
        rc = fail(err, RHEMA_EINVAL,
                  "%s: cannot load: an ELF file of another class or byte order than rhemad's",
                  path);
        goto out;
    }
    if (eh.e_type != ET_DYN) {
        rc = fail(err, RHEMA_EINVAL, "%s: cannot load: not a shared object (ELF type %u)", path,
                  (unsigned)eh.e_type);
        goto out;
    }
    if (eh.e_phnum == 0 || eh.e_phentsize != sizeof ph ||
        !within(eh.e_phoff, (uint64_t)eh.e_phnum * sizeof ph, size)) {
        rc = fail(err, RHEMA_EINVAL,
                  "%s: cannot load: truncated or damaged (its program headers are not within "
                  "its %llu bytes)",
                  path, (unsigned long long)size);
        goto out;
    }
    /* not read by dlopen, but at the end of the file: a cut tail shows here */
    if (eh.e_shoff != 0 && (eh.e_shentsize == 0 ||
                            !within(eh.e_shoff, (uint64_t)eh.e_shnum * eh.e_shentsize, size))) {
        rc = fail(err, RHEMA_EINVAL,
                  "%s: cannot load: truncated or damaged (its section headers are not within "
                  "its %llu bytes)",
                  path, (unsigned long long)size);
        goto out;
    }
    for (unsigned i = 0; i < eh.e_phnum; i++) {
        if (pread(fd, &ph, sizeof ph, (off_t)(eh.e_phoff + (uint64_t)i * sizeof ph)) !=
            (ssize_t)sizeof ph) {
            rc = fail(err, RHEMA_EINVAL, "%s: cannot load: %s", path, strerror(errno ? errno : EIO));
            goto out;
        }
        if (ph.p_filesz > 0 && !within(ph.p_offset, ph.p_filesz, size)) {
            rc = fail(err, RHEMA_EINVAL,
                      "%s: cannot load: truncated or damaged (segment %u needs bytes %llu..%llu, "
                      "the file has %llu)",
                      path, i, (unsigned long long)ph.p_offset,
                      (unsigned long long)ph.p_offset + (unsigned long long)ph.p_filesz,
                      (unsigned long long)size);
            goto out;
        }
    }
out:
    close(fd);
    return rc;
}

int rhema_plugin_load(struct rhema_plugin_registry *reg, const char *spec, const char *dir,
                      uint32_t want_kind, const struct rhema_loaded_plugin **out, char **err)
{
    int rc;
    void *handle = NULL;
    struct rhema_loaded_plugin *p = NULL;
    char *path = resolve(spec, dir, want_kind);

    if (!path) {
        if (strchr(spec, '/'))
            return fail(err, RHEMA_ENOTFOUND, "%s: cannot load: %s", spec, strerror(errno));
        if (want_kind)
            return fail(err, RHEMA_ENOTFOUND,
                        "%s plugin '%s' not found in %s (looked for %s_%s.so and %s.so)",
                        rhema_plugin_kind_name(want_kind), spec, dir && *dir ? dir : ".",
                        kind_prefix(want_kind), spec, spec);
        return fail(err, RHEMA_ENOTFOUND, "plugin '%s' not found in %s", spec,
                    dir && *dir ? dir : ".");
    }
    for (size_t i = 0; i < reg->n; i++) {
        if (strcmp(reg->v[i]->path, path) == 0) {
            if (want_kind && reg->v[i]->kind != want_kind) {
                rc = fail(err, RHEMA_EINVAL, "%s: is a %s plugin, not a %s plugin", path,
                          rhema_plugin_kind_name(reg->v[i]->kind),
                          rhema_plugin_kind_name(want_kind));
                goto out;
            }
            *out = reg->v[i];
            rc = 0;
            goto out;
        }
    }

    if ((rc = check_modes(path, err)) != 0 || (rc = check_elf(path, err)) != 0)
        goto out;
    handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        rc = fail(err, RHEMA_EINVAL, "%s: cannot load: %s", path, dlerror());
        goto out;
    }
    dlerror();
    int (*init)(const struct rhema_host *, const struct rhema_plugin **) = NULL;
    *(void **)&init = dlsym(handle, RHEMA_PLUGIN_INIT_SYMBOL);
    if (!init) {
        rc = fail(err, RHEMA_EINVAL, "%s: no symbol %s (not a rhema plugin?)", path,
                  RHEMA_PLUGIN_INIT_SYMBOL);
        goto out;
    }
    const struct rhema_plugin *raw = NULL;
    rc = init(&host_table, &raw);
    if (rc != 0 || !raw) {
        rc = fail(err, RHEMA_EINVAL, "%s: %s() failed (%s)", path, RHEMA_PLUGIN_INIT_SYMBOL,
                  rc ? rhema_strerror(rc) : "no vtable returned");
        goto out;
    }
    if (raw->abi_major != RHEMA_ABI_MAJOR) {
        rc = fail(err, RHEMA_EINVAL, "%s: abi_major %u differs from the host's %u", path,
                  raw->abi_major, RHEMA_ABI_MAJOR);
        goto out;
    }
    if (raw->kind < RHEMA_KIND_STORAGE || raw->kind > RHEMA_KIND_BALANCER) {
        rc = fail(err, RHEMA_EINVAL, "%s: unknown kind %u", path, raw->kind);
        goto out;
    }
    /*
     * SQLite's iVersion rule: a plugin of a newer minor than ours loads when
     * its vtable holds every member of our minor (the copy below ignores
     * the rest); one of an older minor must hold every member of its own.
     */
    uint32_t minor =
        raw->abi_minor < host_minor(raw->kind) ? raw->abi_minor : host_minor(raw->kind);
    size_t need = required_size(raw->kind, minor);
    if (need == 0) {
        rc = fail(err, RHEMA_ENOTSUP, "%s: kind %u (%s) is not supported by this host", path,
                  raw->kind, rhema_plugin_kind_name(raw->kind));
        goto out;
    }
    if (raw->size < need) {
        if (raw->abi_minor > minor)
            rc = fail(err, RHEMA_EINVAL,
                      "%s: size %u is smaller than the %zu bytes %s minor %u requires "
                      "(the plugin says minor %u)",
                      path, raw->size, need, rhema_plugin_kind_name(raw->kind), minor,
                      raw->abi_minor);
        else
            rc = fail(err, RHEMA_EINVAL,
                      "%s: size %u is smaller than the %zu bytes %s minor %u requires", path,
                      raw->size, need, rhema_plugin_kind_name(raw->kind), minor);
        goto out;
    }
    if (!raw->name || !rhema_id_valid(raw->name) || strlen(raw->name) > 64) {
        rc = fail(err, RHEMA_EINVAL, "%s: invalid plugin name", path);
        goto out;
    }
    if (want_kind && raw->kind != want_kind) {
        rc = fail(err, RHEMA_EINVAL, "%s: is a %s plugin, not a %s plugin", path,
                  rhema_plugin_kind_name(raw->kind), rhema_plugin_kind_name(want_kind));
        goto out;
    }
    const struct rhema_loaded_plugin *dup = rhema_plugin_find(reg, raw->kind, raw->name);
    if (dup) {
        rc = fail(err, RHEMA_EINVAL, "%s: %s plugin '%s' is already loaded from %s", path,
                  rhema_plugin_kind_name(raw->kind), raw->name, dup->path);
        goto out;
    }

    p = calloc(1, sizeof *p);
    if (!p) {
        rc = fail(err, RHEMA_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    size_t hs = host_size(raw->kind);
    memcpy(&p->vt, raw, raw->size < hs ? raw->size : hs);
    p->kind = raw->kind;
    p->abi_minor = raw->abi_minor;
    p->name = raw->name;
    p->version = raw->version ? raw->version : "";
    p->description = raw->description ? raw->description : "";
    const char *missing = missing_method(p);
    if (missing) {
        rc = fail(err, RHEMA_EINVAL, "%s: required method '%s' is NULL", path, missing);
        goto out;
    }
    char why[160];
    if (bad_values(p, why, sizeof why) != 0) {
        rc = fail(err, RHEMA_ENOTSUP, "%s: %s plugin '%s': %s", path,
                  rhema_plugin_kind_name(p->kind), p->name, why);
        goto out;
    }
    if (reg->n == reg->cap) {
        size_t cap = reg->cap ? reg->cap * 2 : 8;
        void *nv = realloc(reg->v, cap * sizeof *reg->v);
        if (!nv) {
            rc = fail(err, RHEMA_ENOMEM, "%s: out of memory", path);
            goto out;
        }
        reg->v = nv;
        reg->cap = cap;
    }
    p->path = path;
    p->handle = handle;
    reg->v[reg->n++] = p;
    *out = p;
    rhema_log(RHEMA_LOG_DEBUG, "plugin", "loaded %s plugin '%s' %s from %s",
              rhema_plugin_kind_name(p->kind), p->name, p->version, p->path);
    return 0;

out:
    free(p);
    if (handle)
        dlclose(handle);
    free(path);
    return rc;
}
