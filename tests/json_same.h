/*
 * json_same -- for the tests that hold rhema_json_loadb() to jansson's
 * json_loadb() (tests/unit/test_json_fields.c, tests/fuzz/fuzz_json.c):
 * json_equal() does not look at the order of an object's members, which
 * both readers must also keep alike.
 */
#ifndef RHEMA_TESTS_JSON_SAME_H
#define RHEMA_TESTS_JSON_SAME_H

#include <string.h>

#include <jansson.h>

/* Equal values, and each object's members in the same order. */
static inline int json_same(json_t *a, json_t *b)
{
    if (!json_equal(a, b))
        return 0;
    if (json_is_object(a)) {
        void *ia = json_object_iter(a), *ib = json_object_iter(b);
        for (; ia && ib; ia = json_object_iter_next(a, ia), ib = json_object_iter_next(b, ib))
            if (strcmp(json_object_iter_key(ia), json_object_iter_key(ib)) != 0 ||
                !json_same(json_object_iter_value(ia), json_object_iter_value(ib)))
                return 0;
        return !ia && !ib;
    }
    if (json_is_array(a))
        for (size_t i = 0; i < json_array_size(a); i++)
            if (!json_same(json_array_get(a, i), json_array_get(b, i)))
                return 0;
    return 1;
}

#endif /* RHEMA_TESTS_JSON_SAME_H */
