/*
 * config_internal -- what the configuration's files share and nobody else
 * sees: the schema's types, the loader's private state, and the functions
 * one file calls in another.  Include config.h first.
 *
 * Files (config.h says what the configuration is and how it loads):
 *   config_schema.c    the schema table, the settings this version does not
 *                      act on, the section of each plugin kind
 *   config.c           private state, small parsers, validation, resolving a
 *                      path, checks between keys, fill, load, release
 *   config_override.c  the -o and -P overrides, typed by the schema
 *   config_get.c       rhema_config_get_*() and the plugin groups
 */
#ifndef RHEMA_CORE_CONFIG_INTERNAL_H
#define RHEMA_CORE_CONFIG_INTERNAL_H

#ifndef RHEMA_CORE_CONFIG_H
#error "include config.h before config_internal.h"
#endif

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <libconfig.h>



enum key_type {
    K_GROUP,     /* a group of keys */
    K_INT,       /* int or int64 (L suffix); range min..max */
    K_FLOAT,     /* float, or an int; range fmin..fmax */
    K_BOOL,      /* true | false */
    K_STRING,    /* any string */
    K_ENUM,      /* a string among `values` */
    K_LISTEN,    /* host:port or [v6]:port */
    K_NAME,      /* a plugin name: [a-z0-9_]{1,64} */
    K_URL,       /* http:// or https:// URL */
    K_PATH,      /* an URL path: begins with '/' */
    K_STRLIST,   /* a list or array of strings */
    K_GROUPLIST, /* a list of groups; element keys are "path[].key" */
};

/* Key flags. */
#define F_PLUGINS 0x01u  /* group: a member group that is not a core key is a plugin group */
#define F_REQUIRED 0x02u /* element of a list of groups: must be present */
#define F_UNIQUE 0x04u   /* element of a list of groups: unique across the list */
#define F_EMPTY_OK 0x08u /* K_LISTEN / K_URL: "" is allowed (not set) */
#define F_ONE_OK 0x10u   /* K_STRLIST: a single string stands for a list of one */

/* Where a value lands in struct rhema_config. */
enum field_kind {
    FLD_NONE = 0,
    FLD_INT,      /* int */
    FLD_I64,      /* int64_t */
    FLD_BOOL,     /* int 0/1 */
    FLD_STR,      /* char *, strdup'd */
    FLD_LIST,     /* struct rhema_strlist */
    FLD_LOGLEVEL, /* int RHEMA_LOG_* from a level name */
    FLD_ENUMIDX,  /* int (or enum): index of the value in `values` */
};

struct key {
    const char *path;
    enum key_type type;
    unsigned flags;
    int64_t def_i;
    double def_f;
    const char *def_s;
    const char *const *values; /* K_ENUM: allowed; K_STRLIST: default (NULL-terminated) */
    int64_t min, max;
    double fmin, fmax;
    enum field_kind fld;
    size_t off;
};

#define OFF(f) offsetof(struct rhema_config, f)
struct unimplemented {
    const char *path;
    const char *gate; /* a switch; NULL: the key always acts */
};
/* A renamed key: `old` is read as `path` (config_schema.c). */
struct cfg_alias {
    const char *old;
    const char *path;
};
/* A setting made by an override: errors about it name the override. */
struct origin {
    const config_setting_t *s;
    char *text; /* "-o service.workers=900" or "-P /dir" */
};

/* A growing string of error lines. */
struct sbuf {
    char *s;
    size_t len, cap;
    int oom;
};

/* A file's text, split into lines, for the 32-bit truncation check. */
struct file_text {
    char *name;
    char *text;
    struct file_text *next;
};

struct cfg_priv {
    config_t lc;
    char *path; /* "" when none */
    struct origin *origins;
    size_t n_origins;
    struct file_text *files;
    struct rhema_cfg *groups;
    struct sbuf notices; /* lines for the log (old key names); .s NULL: none */
};

/* A plugin's group (see config.h). */
struct rhema_cfg {
    struct cfg_priv *p;
    const config_setting_t *g;
    uint32_t kind;
    char *path;          /* "persistence.sqlite" */
    char *name;          /* "sqlite" */
    unsigned char *read; /* one mark per member */
    unsigned n;
    char *error;         /* the last getter error, or NULL */
    char where[512];     /* rhema_cfg_where()'s buffer */
    struct rhema_cfg *next;
};

/* The loader's state: the tree and the error lines found so far. */
struct ctx {
    struct cfg_priv *p;
    struct sbuf errs;
    int n_errs;
};

struct resolved {
    const struct key *k;       /* the key; for a string list element, the list */
    const config_setting_t *s; /* the setting, or NULL: the default applies */
    int elem;                  /* >= 0: element `elem` of the string list k */
};

/* config_schema.c */
extern const struct key cfg_schema[];
extern const size_t cfg_n_schema;
extern const struct unimplemented cfg_unimplemented[];
extern const size_t cfg_n_unimplemented;
extern const char *const cfg_level_enum[];
extern const struct cfg_alias cfg_aliases[];
extern const size_t cfg_n_aliases;
const char *cfg_alias_old(const char *path);
const struct key *cfg_schema_find(const char *path);
const char *cfg_kind_section(uint32_t kind);

/* config.c */
void cfg_sb_add(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void cfg_where_of(const struct cfg_priv *p, const config_setting_t *s, char *buf, size_t n);
void cfg_error_plain(struct ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int cfg_parse_int(const char *v, long long *out);
int cfg_parse_double(const char *v, double *out);
int cfg_parse_bool(const char *v, int *out);
void cfg_join(char *buf, size_t n, const char *prefix, const char *name);
int cfg_int_truncated(struct cfg_priv *p, const config_setting_t *s, char *lit, size_t n);
const char *cfg_type_word(enum key_type t);
const config_setting_t *cfg_lookup_path(const struct cfg_priv *p, const char *path);
int cfg_resolve(const struct cfg_priv *p, const char *path, struct resolved *r);
int64_t cfg_setting_int(const config_setting_t *s);
double cfg_setting_double(const config_setting_t *s);
int64_t cfg_key_int(const struct key *k, const config_setting_t *s);
const char *cfg_key_string(const struct key *k, const config_setting_t *s);

/* config_override.c */
int cfg_apply_override(struct ctx *c, const char *text, const char *shown);

#endif
