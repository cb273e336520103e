/*
 * json_fields -- the field validators of the stores' JSON bodies (sessions,
 * agents, consensus): one set, so that every resource names a bad field
 * the same way ("field 'messages[2].priority': expected one of Low, ...").
 *
 * Each validator checks one member `v` of a request body (NULL: absent)
 * named prefix + key, writes its normalised value into dst[key] (a new
 * reference; dst is the record being built), and returns 0 -- or writes
 * the message into err (RHEMA_ERRMSG_MAX bytes, util.h) and returns
 * RHEMA_EINVAL.  prefix is "" for a top-level field, "messages[2]." for a
 * nested one.
 */
#ifndef RHEMA_CORE_JSON_FIELDS_H
#define RHEMA_CORE_JSON_FIELDS_H

#include <stddef.h>

#include <jansson.h>

/*
 * json_dumps() with every real in the shortest form that reads back as the
 * same double (3.2, not jansson's default %.17g 3.2000000000000002); all
 * else byte for byte as jansson writes it, NULL where jansson gives NULL
 * (a string that is not UTF-8).  jansson takes one precision per call, so
 * with JSON_COMPACT (and at most JSON_PRESERVE_ORDER, JSON_SORT_KEYS,
 * JSON_ENCODE_ANY) a writer of our own writes the text, each real at its
 * own precision -- in a third of jansson's time, which copies a string
 * through its UTF-8 checks a character at a time; other flags go to
 * jansson with the largest precision any real of v needs (every real
 * still round-trips).  Use it for every JSON text a client may see.
 */
char *rhema_json_dumps(const json_t *v, size_t flags);

/*
 * json_loadb() of a request body or a stored record, with the same
 * result: the same value (same key order), or NULL and jansson's error.
 * flags 0 or JSON_REJECT_DUPLICATES are read by a reader of our own that
 * takes runs of plain bytes at once (jansson copies a byte at a time);
 * any other flag, and whatever that reader is unsure of, go to jansson.
 */
json_t *rhema_json_loadb(const char *data, size_t len, size_t flags, json_error_t *err);
/* The reader alone: its value, or NULL for anything it leaves to jansson (tests, fuzz_json). */
json_t *rhema_json_read(const char *data, size_t len, size_t flags);

/*
 * RFC 7396 JSON merge patch: target (may be NULL) with patch applied, as a
 * new value; neither argument changes.  A member of patch that is null
 * removes that member; an object merges recursively; anything else
 * replaces.  NULL when out of memory.
 */
json_t *rhema_json_merge_patch(json_t *target, json_t *patch);

/* 1 when s is one of the NULL-terminated list. */
int rhema_name_in_list(const char *s, const char *const *list);
/* The list as "a, b, c" into buf (cut at cap). */
void rhema_name_list_join(char *buf, size_t cap, const char *const *list);

/* Every member of body is in known or in ignored (either may be NULL). */
int rhema_field_known(json_t *body, const char *const *known, const char *const *ignored,
                      const char *prefix, char *err);
/* One of allowed; absent: dflt (NULL: the field is required). */
int rhema_field_enum(json_t *dst, const char *key, json_t *v, const char *const *allowed,
                     const char *dflt, const char *prefix, char *err);

/* What an absent RFC 3339 time becomes. */
enum rhema_field_time_absent {
    RHEMA_TIME_NOW,      /* now; null is refused */
    RHEMA_TIME_NULL,     /* null; null is accepted */
    RHEMA_TIME_OMITTED,  /* left out of dst; null is refused */
};
/* An RFC 3339 time, normalised to UTC with milliseconds. */
int rhema_field_time(json_t *dst, const char *key, json_t *v, enum rhema_field_time_absent absent,
                     const char *prefix, char *err);

#endif /* RHEMA_CORE_JSON_FIELDS_H */
