/*
 * fuzz_json -- the JSON reader every request body and stored record goes
 * through (rhema_json_loadb() in core/json_fields.c) against jansson's
 * json_loadb(), the reader it must agree with, on the same bytes.
 *
 * Byte 0 picks the flags (odd: JSON_REJECT_DUPLICATES, as rhema_req_json()
 * reads bodies; even: 0, as stored records are read); the rest is the text.
 * Invariants: whatever rhema_json_read() (our reader alone) accepts,
 * jansson accepts as an equal value with its members in the same order;
 * rhema_json_loadb() answers as json_loadb() does -- the same value, or
 * NULL with the same error text, line and column.  And what
 * rhema_json_dumps() writes of the value reads back as an equal one.
 */
#include "rhema_build.h"

#include "fuzz.h"
#include "json_fields.h"
#include "../json_same.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    size_t flags = (data[0] & 1) ? JSON_REJECT_DUPLICATES : 0;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    json_error_t je, re;
    json_t *theirs = json_loadb(text, len, flags, &je);
    json_t *fast = rhema_json_read(text, len, flags);
    json_t *ours = rhema_json_loadb(text, len, flags, &re);
    if (fast)
        fuzz_assert(theirs && json_same(fast, theirs));
    if (!theirs) {
        fuzz_assert(!ours);
        fuzz_assert(strcmp(je.text, re.text) == 0 && je.line == re.line && je.column == re.column);
    } else {
        fuzz_assert(ours && json_same(ours, theirs));
        char *t = rhema_json_dumps(ours, JSON_COMPACT | JSON_PRESERVE_ORDER);
        fuzz_assert(t);
        json_t *back = json_loads(t, 0, NULL);
        fuzz_assert(back && json_equal(back, ours));
        json_decref(back);
        free(t);
    }
    json_decref(fast);
    json_decref(ours);
    json_decref(theirs);
    return 0;
}
