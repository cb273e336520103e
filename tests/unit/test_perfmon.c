/*
 * test_perfmon -- interval samples, alerts raised when a value crosses its
 * threshold and resolved when it comes back, and messages stored as is on
 * purpose never counting against the compression ratio.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "perfmon.h"

static struct rhema_config cfg;

static struct rhema_perfmon *make(void)
{
    static const char *overrides[] = {
        "advanced_features.performance_monitoring.thresholds.min_compression_ratio=2.0",
        "advanced_features.performance_monitoring.thresholds.max_message_processing_ms=10.0",
        "advanced_features.performance_monitoring.thresholds.max_key_rotation_ms=100.0"};
    char *err = NULL;
    struct rhema_perfmon *pm = NULL;
    rhema_config_release(&cfg);
    assert_int_equal(rhema_config_load(&cfg, NULL, overrides, 3, NULL, &err), 0);
    assert_int_equal(rhema_perfmon_new(&cfg, &pm), 0);
    return pm;
}

static size_t count(json_t *alerts, const char *which, const char *metric)
{
    size_t i, n = 0;
    json_t *a;
    json_array_foreach(json_object_get(alerts, which), i, a)
        n += strcmp(json_string_value(json_object_get(a, "metric")), metric) == 0;
    return n;
}

static void ratio_alert_raised_and_resolved(void **state)
{
    (void)state;
    struct rhema_perfmon *pm = make();
    rhema_perfmon_compressed(pm, 3000, 1000, 1000); /* ratio 3: fine */
    rhema_perfmon_sample(pm);
    json_t *a = rhema_perfmon_alerts_json(pm);
    assert_int_equal(count(a, "active", "compression_ratio"), 0);
    json_decref(a);

    rhema_perfmon_compressed(pm, 1500, 1000, 1000); /* ratio 1.5 < 2: alert */
    rhema_perfmon_sample(pm);
    a = rhema_perfmon_alerts_json(pm);
    assert_int_equal(count(a, "active", "compression_ratio"), 1);
    json_decref(a);

    /* many messages stored as is on purpose: no effect on the ratio or the alert */
    for (int i = 0; i < 100; i++)
        rhema_perfmon_stored(pm, 100, 1000);
    rhema_perfmon_sample(pm);
    json_t *s = rhema_perfmon_json(pm);
    double ratio = json_real_value(json_object_get(json_object_get(s, "samples"),
                                                   "compression_ratio"));
    assert_true(ratio > 1.49 && ratio < 1.51);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(s, "totals"),
                                                        "messages_stored_as_is")),
                     100);
    json_decref(s);
    a = rhema_perfmon_alerts_json(pm);
    assert_int_equal(count(a, "active", "compression_ratio"), 1);
    assert_int_equal(count(a, "history", "compression_ratio"), 1);
    json_decref(a);

    rhema_perfmon_compressed(pm, 4000, 1000, 1000); /* back to 4: resolved */
    rhema_perfmon_sample(pm);
    a = rhema_perfmon_alerts_json(pm);
    assert_int_equal(count(a, "active", "compression_ratio"), 0);
    assert_int_equal(count(a, "history", "compression_ratio"), 1);
    json_t *h = json_array_get(json_object_get(a, "history"), 0);
    assert_true(json_is_string(json_object_get(h, "resolved_at")));
    json_decref(a);
    rhema_perfmon_free(pm);
}

static void stored_only_never_alerts(void **state)
{
    (void)state;
    struct rhema_perfmon *pm = make();
    for (int i = 0; i < 1000; i++)
        rhema_perfmon_stored(pm, 10, 1000);
    rhema_perfmon_sample(pm);
    json_t *a = rhema_perfmon_alerts_json(pm);
    assert_int_equal(json_array_size(json_object_get(a, "active")), 0);
    json_decref(a);
    json_t *s = rhema_perfmon_json(pm);
    assert_true(json_is_null(json_object_get(json_object_get(s, "samples"), "compression_ratio")));
    json_decref(s);
    rhema_perfmon_free(pm);
}

static void processing_and_rotation_times(void **state)
{
    (void)state;
    struct rhema_perfmon *pm = make();
    rhema_perfmon_crypto(pm, 1024, 20 * 1000000ull); /* 20 ms > 10 ms */
    rhema_perfmon_rotation(pm, 500 * 1000000ull);   /* 500 ms > 100 ms */
    rhema_perfmon_sample(pm);
    json_t *a = rhema_perfmon_alerts_json(pm);
    assert_int_equal(count(a, "active", "message_processing_ms"), 1);
    assert_int_equal(count(a, "active", "key_rotation_ms"), 1);
    assert_int_equal(count(a, "active", "encryption_overhead_ms"), 1); /* default max 5 ms */
    json_decref(a);
    rhema_perfmon_crypto(pm, 1024, 1000000ull); /* 1 ms */
    rhema_perfmon_rotation(pm, 1000000ull);
    rhema_perfmon_sample(pm);
    a = rhema_perfmon_alerts_json(pm);
    assert_int_equal(json_array_size(json_object_get(a, "active")), 0);
    assert_int_equal(json_array_size(json_object_get(a, "history")), 3);
    json_decref(a);
    /* an interval without events changes nothing */
    rhema_perfmon_sample(pm);
    a = rhema_perfmon_alerts_json(pm);
    assert_int_equal(json_array_size(json_object_get(a, "active")), 0);
    json_decref(a);
    rhema_perfmon_free(pm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(ratio_alert_raised_and_resolved),
        cmocka_unit_test(stored_only_never_alerts),
        cmocka_unit_test(processing_and_rotation_times),
    };
    int rc = cmocka_run_group_tests_name("perfmon", tests, NULL, NULL);
    rhema_config_release(&cfg);
    return rc;
}
