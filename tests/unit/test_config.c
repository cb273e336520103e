/*
 * Unit tests for core/config.c: defaults, a full file, every kind of error
 * with its exact "file:line:" prefix, overrides, plugin groups and the
 * sample configuration etc/rhemad.conf.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "rhema_paths.h" /* the installation paths the build chose */

#define PLUGINDIR RHEMA_PLUGINDIR

/* Write text to a new temporary file; its name goes into path (PATH_MAX). */
static void write_conf(char *path, size_t n, const char *text)
{
    const char *dir = getenv("TMPDIR");
    FILE *fp;
    int fd;

    snprintf(path, n, "%s/rhema-test-config-XXXXXX", dir && *dir ? dir : "/tmp");
    fd = mkstemp(path);
    assert_true(fd >= 0);
    fp = fdopen(fd, "w");
    assert_non_null(fp);
    assert_int_equal(fputs(text, fp) >= 0, 1);
    assert_int_equal(fclose(fp), 0);
}

/* Load text as a file with overrides; returns the code, err in *err. */
static int load_text(struct rhema_config *cfg, char *path, size_t n, const char *text,
                     const char *const *ov, size_t n_ov, char **err)
{
    write_conf(path, n, text);
    return rhema_config_load(cfg, path, ov, n_ov, NULL, err);
}

/* Assert that err is exactly the formatted text. */
static void assert_err(const char *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void assert_err(const char *err, const char *fmt, ...)
{
    char want[4096];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(want, sizeof want, fmt, ap);
    va_end(ap);
    assert_non_null(err);
    assert_string_equal(err, want);
}

/* Load text, expect RHEMA_EINVAL and exactly one error "path:line: msg". */
static void expect_one_error(const char *text, int line, const char *msg)
{
    struct rhema_config cfg;
    char path[4096], *err = NULL;

    assert_int_equal(load_text(&cfg, path, sizeof path, text, NULL, 0, &err), RHEMA_EINVAL);
    assert_err(err, "%s:%d: %s", path, line, msg);
    assert_null(cfg.priv); /* released */
    assert_null(cfg.listen);
    free(err);
    unlink(path);
}

static void check_defaults(const struct rhema_config *cfg)
{
    int64_t i;
    double d;
    int b;
    const char *s;

    assert_string_equal(cfg->listen, "127.0.0.1:8080");
    assert_int_equal(cfg->workers, 0);
    assert_string_equal(cfg->pidfile, "");
    assert_int_equal(cfg->max_request_size_bytes, 10485760);
    assert_int_equal(cfg->request_timeout_seconds, 30);
    assert_int_equal(rhema_config_get_int(cfg, "service.request_header_timeout_seconds", &i), 0);
    assert_int_equal(i, 60);
    assert_int_equal(rhema_config_get_int(cfg, "service.request_body_timeout_seconds", &i), 0);
    assert_int_equal(i, 120);
    assert_int_equal(rhema_config_get_int(cfg, "service.max_connections", &i), 0);
    assert_int_equal(i, 4096);
    assert_int_equal(rhema_config_get_int(cfg, "service.max_output_buffer_bytes", &i), 0);
    assert_int_equal(i, 134217728);
    assert_int_equal(rhema_config_get_int(cfg, "service.max_output_buffer_total_bytes", &i), 0);
    assert_int_equal(i, 536870912);
    assert_int_equal(cfg->cors_enabled, 1);
    assert_int_equal(cfg->cors_origins.n, 0); /* same origin only (issue 16) */
    assert_string_equal(cfg->plugin_directory, PLUGINDIR);
    assert_int_equal(rhema_config_get_string(cfg, "service.data_directory", &s), 0);
    assert_string_equal(s, RHEMA_DATA_DIRECTORY); /* $localstatedir/lib/rhema */
    assert_int_equal(rhema_config_get_string(cfg, "advanced_features.key_management.keyring_path",
                                             &s), 0);
    assert_string_equal(s, "keyring"); /* in the data directory */
    assert_int_equal(cfg->plugin_load_set, 0);
    assert_int_equal(cfg->plugin_load.n, 0);
    assert_string_equal(cfg->backend, "sqlite");
    assert_int_equal(cfg->enable_backups, 0);
    assert_int_equal(cfg->backup_interval_hours, 24);
    assert_int_equal(cfg->backup_retention_days, 7);
    assert_string_equal(cfg->backup_directory, "backups");
    assert_int_equal(cfg->enable_cleanup, 0);
    assert_int_equal(cfg->cleanup_interval_hours, 24);
    assert_int_equal(cfg->data_retention_days, 30);
    assert_int_equal(cfg->max_data_size_bytes, 0);
    assert_int_equal(cfg->max_record_size_bytes, 16777216);
    assert_int_equal(cfg->max_page_bytes, 4194304);
    assert_int_equal(cfg->configuration_versions_retained, 100);
    assert_int_equal(cfg->agent_transitions_retained, 1000);
    assert_int_equal(cfg->enable_compression, 0);
    assert_int_equal(cfg->enable_encryption, 0);
    assert_string_equal(cfg->compression_algorithm, "zstd");
    assert_int_equal(cfg->compression_enabled, 0);
    assert_string_equal(cfg->encryption_algorithm, "xchacha20poly1305");
    assert_int_equal(cfg->encryption_enabled, 0);
    assert_string_equal(cfg->balancing_strategy, "round_robin");
    assert_int_equal(cfg->distributed_enabled, 0);
    assert_int_equal(cfg->log_level, RHEMA_LOG_INFO);
    assert_int_equal(cfg->log_format, RHEMA_LOG_FORMAT_TEXT);
    assert_string_equal(cfg->log_file, "");
    assert_int_equal(cfg->access_log, 1);

    /* keys without a field, through the path getters */
    assert_int_equal(rhema_config_get_int(cfg, "distributed.cluster.heartbeat_interval_seconds", &i),
                     0);
    assert_int_equal(i, 2);
    assert_int_equal(rhema_config_get_int(cfg, "advanced_features.compression.level", &i), 0);
    assert_int_equal(i, 3);
    assert_int_equal(
        rhema_config_get_int(cfg, "advanced_features.key_management.rotation.interval_hours", &i),
        0);
    assert_int_equal(i, 720);
    assert_int_equal(rhema_config_get_double(cfg, "advanced_features.compression.min_gain_ratio",
                                             &d),
                     0);
    assert_true(d > 0.0999 && d < 0.1001);
    assert_int_equal(rhema_config_get_double(cfg, "monitoring.alerts.cpu_percent", &d), 0);
    assert_true(d > 89.99 && d < 90.01);
    assert_int_equal(rhema_config_get_bool(cfg, "distributed.health_checking.enabled", &b), 0);
    assert_int_equal(b, 1);
    assert_int_equal(rhema_config_get_string(cfg, "distributed.node.role", &s), 0);
    assert_string_equal(s, "Coordinator");
    assert_int_equal(rhema_config_get_string(cfg, "security.audit.file", &s), 0);
    assert_string_equal(s, "logs/audit.log");
    assert_int_equal(rhema_config_get_bool(cfg, "security.audit.fail_closed", &b), 0);
    assert_int_equal(b, 1);
    assert_int_equal(rhema_config_get_int(cfg, "security.audit.batch_max_records", &i), 0);
    assert_int_equal(i, 1024);
    assert_int_equal(rhema_config_get_string(cfg, "service.cors.allow_headers[1]", &s), 0);
    assert_string_equal(s, "Authorization");
    assert_int_equal(rhema_config_get_count(cfg, "service.cors.allow_headers"), 7);
    assert_int_equal(rhema_config_get_count(cfg, "ai_service.models"), 0);
    assert_int_equal(rhema_config_get_count(cfg, "security.roles"), 0);
}

static void test_defaults_null_path(void **state)
{
    struct rhema_config cfg;
    char *err = NULL;

    (void)state;
    assert_int_equal(rhema_config_load(&cfg, NULL, NULL, 0, NULL, &err), 0);
    assert_null(err);
    assert_string_equal(cfg.path, "");
    check_defaults(&cfg);
    rhema_config_release(&cfg);
}

static void test_defaults_empty_file(void **state)
{
    struct rhema_config cfg;
    char path[4096], *err = NULL;

    (void)state;
    assert_int_equal(load_text(&cfg, path, sizeof path, "", NULL, 0, &err), 0);
    assert_null(err);
    assert_string_equal(cfg.path, path);
    check_defaults(&cfg);
    /* empty sections are fine too */
    rhema_config_release(&cfg);
    unlink(path);
    assert_int_equal(load_text(&cfg, path, sizeof path,
                               "service: {};\npersistence: {};\nsecurity: { roles = (); "
                               "rules = []; };\n",
                               NULL, 0, &err),
                     0);
    check_defaults(&cfg);
    rhema_config_release(&cfg);
    unlink(path);
}

static const char full_conf[] =
    "# every section, no default left but the switches of what this version does not\n"
    "# implement, which stay off (and so the keys they gate are accepted, inert)\n"
    "service: {\n"
    "  listen = \"[::1]:9090\";\n"
    "  workers = 4;\n"
    "  pidfile = \"/run/rhemad.pid\";\n"
    "  max_request_size_bytes = 2097152L;\n"
    "  request_timeout_seconds = 12;\n"
    "  shutdown_timeout_seconds = 5;\n"
    "  cors = { enabled = false; origins = [ \"https://a.example\", \"https://b.example\" ];\n"
    "           allow_headers = [ \"Content-Type\" ]; max_age_seconds = 60; };\n"
    "};\n"
    "plugins: { directory = \"/opt/rhema/plugins\"; load = ( \"sqlite\", \"/x/acme.so\" ); };\n"
    "persistence: {\n"
    "  backend = \"postgres\";\n"
    "  postgres = { conninfo = \"host=127.0.0.1 dbname=rhema\"; };\n"
    "  enable_backups = true; backup_interval_hours = 6; backup_retention_days = 14;\n"
    "  backup_directory = \"/var/backups/rhema\"; enable_cleanup = true;\n"
    "  cleanup_interval_hours = 12; data_retention_days = 90;\n"
    "  max_data_size_bytes = 10000000000L; enable_compression = true; enable_encryption = true;\n"
    "};\n"
    "distributed: {\n"
    "  enabled = true;\n"
    "  node = { node_id = \"n1\"; name = \"alpha\"; address = \"10.0.0.1:8080\"; role = \"Worker\";"
    " weight = 5; };\n"
    "  cluster = { name = \"prod\"; min_nodes = 3; max_nodes = 7; enable_failover = false;\n"
    "              heartbeat_interval_seconds = 1; node_timeout_seconds = 5; "
    "leader_lease_seconds = 6; };\n"
    "  load_balancing = { strategy = \"ip_hash\"; ip_hash = { replicas = 160; }; };\n"
    "  health_checking = { enabled = false; interval_seconds = 20; timeout_seconds = 2;\n"
    "                      failure_threshold = 5; success_threshold = 1; };\n"
    "};\n"
    "advanced_features: {\n"
    "  compression = { enabled = true; algorithm = \"lz4\"; level = -5; threshold_bytes = 64;\n"
    "                  adaptive = false; min_gain_ratio = 0.25; max_decompressed_bytes = 1048576;\n"
    "                  lz4 = { acceleration = 2; }; };\n"
    "  encryption = { enabled = true; algorithm = \"aes256gcm\"; };\n"
    "  key_management = { key_file = \"/etc/rhema/master.key\"; passphrase_env = \"RHEMA_PASS\";\n"
    "    keyring_path = \"/var/lib/rhema/keyring\"; min_decryption_version = 3;\n"
    "    rotation = { enabled = true; interval_hours = 24; max_messages_per_key = 1000000; };\n"
    "    backup = { enabled = true; directory = \"/var/backups/keys\"; interval_hours = 2; }; };\n"
    "  performance_monitoring = { enabled = false; sample_interval_seconds = 30;\n"
    "    thresholds = { min_compression_ratio = 1.5; max_encryption_overhead_ms = 2;\n"
    "                   max_key_rotation_ms = 500.0; max_message_processing_ms = 20.0; }; };\n"
    "};\n"
    "ai_service: {\n"
    "  enabled = false; default_model = \"small\"; request_timeout_seconds = 90;\n"
    "  models = ( { name = \"small\"; upstream = \"local\"; context_window = 8192; "
    "max_tokens = 1024; },\n"
    "             { name = \"big\"; } );\n"
    "  upstreams = ( { name = \"local\"; base_url = \"http://127.0.0.1:11434/v1\";\n"
    "                  api_key_env = \"LOCAL_KEY\"; timeout_seconds = 30; priority = 1; } );\n"
    "  rate_limiting = { enabled = false; requests_per_minute = 120; burst = 20; };\n"
    "  caching = { enabled = false; ttl_seconds = 60; max_entries = 100; };\n"
    "  agent_management = { max_agents = 1000; heartbeat_timeout_seconds = 15; };\n"
    "};\n"
    "monitoring: { enabled = false; metrics_path = \"/m\"; sample_interval_seconds = 5;\n"
    "  alerts = { enabled = false; cpu_percent = 80; memory_percent = 70.5; "
    "error_rate_percent = 1.0; }; };\n"
    "security: {\n"
    "  api_keys = { enabled = false;\n"
    "    keys = ( { name = \"ops\"; key_hash = \"abc\"; roles = [ \"admin\" ]; } ); };\n"
    "  roles = ( { name = \"admin\"; permissions = [ \"*\" ]; },\n"
    "            { name = \"reader\"; permissions = [ \"sessions:read\", \"agents:read\" ]; } );\n"
    "  rules = ();\n"
    "  audit = { enabled = false; file = \"/var/log/rhema/audit.log\"; };\n"
    "};\n"
    "logging: { level = \"debug\"; format = \"json\"; file = \"/var/log/rhema/rhemad.log\";"
    " access_log = false; };\n";

static void test_full_config(void **state)
{
    struct rhema_config cfg;
    char path[4096], *err = NULL;
    int64_t i;
    double d;
    int b;
    const char *s;

    (void)state;
    if (load_text(&cfg, path, sizeof path, full_conf, NULL, 0, &err) != 0)
        fail_msg("%s", err);
    assert_null(err);
    assert_string_equal(cfg.listen, "[::1]:9090");
    assert_int_equal(cfg.workers, 4);
    assert_string_equal(cfg.pidfile, "/run/rhemad.pid");
    assert_int_equal(cfg.max_request_size_bytes, 2097152);
    assert_int_equal(cfg.request_timeout_seconds, 12);
    assert_int_equal(cfg.cors_enabled, 0);
    assert_int_equal(cfg.cors_origins.n, 2);
    assert_string_equal(cfg.cors_origins.v[1], "https://b.example");
    assert_string_equal(cfg.plugin_directory, "/opt/rhema/plugins");
    assert_int_equal(cfg.plugin_load_set, 1);
    assert_int_equal(cfg.plugin_load.n, 2);
    assert_string_equal(cfg.plugin_load.v[1], "/x/acme.so");
    assert_string_equal(cfg.backend, "postgres");
    assert_int_equal(cfg.enable_backups, 1);
    assert_int_equal(cfg.backup_interval_hours, 6);
    assert_int_equal(cfg.backup_retention_days, 14);
    assert_string_equal(cfg.backup_directory, "/var/backups/rhema");
    assert_int_equal(cfg.enable_cleanup, 1);
    assert_int_equal(cfg.cleanup_interval_hours, 12);
    assert_int_equal(cfg.data_retention_days, 90);
    assert_true(cfg.max_data_size_bytes == INT64_C(10000000000));
    assert_int_equal(cfg.enable_compression, 1);
    assert_int_equal(cfg.enable_encryption, 1);
    assert_string_equal(cfg.compression_algorithm, "lz4");
    assert_int_equal(cfg.compression_enabled, 1);
    assert_string_equal(cfg.encryption_algorithm, "aes256gcm");
    assert_int_equal(cfg.encryption_enabled, 1);
    assert_string_equal(cfg.balancing_strategy, "ip_hash");
    assert_int_equal(cfg.distributed_enabled, 1);
    assert_int_equal(cfg.log_level, RHEMA_LOG_DEBUG);
    assert_int_equal(cfg.log_format, RHEMA_LOG_FORMAT_JSON);
    assert_string_equal(cfg.log_file, "/var/log/rhema/rhemad.log");
    assert_int_equal(cfg.access_log, 0);

    assert_int_equal(rhema_config_get_string(&cfg, "distributed.node.role", &s), 0);
    assert_string_equal(s, "Worker");
    assert_int_equal(rhema_config_get_int(&cfg, "distributed.cluster.max_nodes", &i), 0);
    assert_int_equal(i, 7);
    assert_int_equal(rhema_config_get_int(&cfg, "advanced_features.compression.level", &i), 0);
    assert_int_equal(i, -5);
    /* an int where a float is expected reads as the float */
    assert_int_equal(rhema_config_get_double(&cfg, "monitoring.alerts.cpu_percent", &d), 0);
    assert_true(d > 79.99 && d < 80.01);
    assert_int_equal(rhema_config_get_bool(&cfg, "monitoring.enabled", &b), 0);
    assert_int_equal(b, 0);
    assert_int_equal(rhema_config_get_count(&cfg, "ai_service.models"), 2);
    assert_int_equal(rhema_config_get_string(&cfg, "ai_service.models[1].name", &s), 0);
    assert_string_equal(s, "big");
    /* an element key left out takes its default */
    assert_int_equal(rhema_config_get_int(&cfg, "ai_service.models[1].context_window", &i), 0);
    assert_int_equal(i, 0);
    assert_int_equal(rhema_config_get_string(&cfg, "ai_service.upstreams[0].base_url", &s), 0);
    assert_string_equal(s, "http://127.0.0.1:11434/v1");
    assert_int_equal(rhema_config_get_string(&cfg, "security.roles[1].permissions[1]", &s), 0);
    assert_string_equal(s, "agents:read");
    assert_int_equal(rhema_config_get_count(&cfg, "security.roles[1].permissions"), 2);
    assert_int_equal(rhema_config_get_count(&cfg, "service.cors.allow_headers"), 1);

    /* misses and type mismatches */
    assert_int_equal(rhema_config_get_string(&cfg, "ai_service.models[2].name", &s),
                     RHEMA_ENOTFOUND);
    assert_int_equal(rhema_config_get_string(&cfg, "security.roles[1].permissions[2]", &s),
                     RHEMA_ENOTFOUND);
    assert_int_equal(rhema_config_get_int(&cfg, "service.nope", &i), RHEMA_ENOTFOUND);
    assert_int_equal(rhema_config_get_int(&cfg, "service.listen", &i), RHEMA_EINVAL);
    assert_int_equal(rhema_config_get_string(&cfg, "service.workers", &s), RHEMA_EINVAL);
    assert_int_equal(rhema_config_get_double(&cfg, "service.workers", &d), RHEMA_EINVAL);
    rhema_config_release(&cfg);
    unlink(path);
}

static void test_unknown_key(void **state)
{
    (void)state;
    expect_one_error("service: {\n  listn = \"127.0.0.1:1\";\n};\n", 2,
                     "unknown key 'service.listn'");
    expect_one_error("\n\nnosuchsection = 1;\n", 3, "unknown key 'nosuchsection'");
    /* a group that is not a core key is unknown outside the plugin sections */
    expect_one_error("service: {\n  cors: {\n    enabled = true;\n    sqlite = { a = 1; };\n"
                     "  };\n};\n",
                     4, "unknown key 'service.cors.sqlite'");
    /* but a scalar stray key inside a plugin section is still unknown */
    expect_one_error("persistence: {\n  backend = \"memory\";\n  sqlite = 5;\n};\n", 3,
                     "unknown key 'persistence.sqlite'");
}

static void test_wrong_type(void **state)
{
    (void)state;
    expect_one_error("# c\nservice: {\n  workers = \"four\";\n};\n", 3,
                     "'service.workers' must be an integer");
    expect_one_error("service = { cors = { enabled = 1; }; };\n", 1,
                     "'service.cors.enabled' must be a boolean (true or false)");
    expect_one_error("logging = {\n level = 3;\n};\n", 2, "'logging.level' must be a string");
    expect_one_error("monitoring = {\n alerts = {\n cpu_percent = \"x\"; };\n};\n", 3,
                     "'monitoring.alerts.cpu_percent' must be a number");
    expect_one_error("service = {\n cors = 1;\n};\n", 2, "'service.cors' must be a group");
    expect_one_error("plugins = {\n load = \"sqlite\";\n};\n", 2,
                     "'plugins.load' must be a list of strings");
    expect_one_error("plugins = {\n load = ( \"sqlite\",\n 5 );\n};\n", 3,
                     "'plugins.load[1]' must be a string");
    expect_one_error("security = {\n roles = { name = \"x\"; };\n};\n", 2,
                     "'security.roles' must be a list of groups");
}

static void test_out_of_range(void **state)
{
    (void)state;
    expect_one_error("service: {\n\n  workers = 900;\n};\n", 3,
                     "'service.workers' must be between 0 and 256 (got 900)");
    expect_one_error("service: { max_request_size_bytes = 100; };\n", 1,
                     "'service.max_request_size_bytes' must be between 1024 and 1073741824 "
                     "(got 100)");
    expect_one_error("service: { max_request_size_bytes = 2147483648L; };\n", 1,
                     "'service.max_request_size_bytes' must be between 1024 and 1073741824 "
                     "(got 2147483648)");
    expect_one_error("persistence: {\n max_data_size_bytes = -1;\n};\n", 2,
                     "'persistence.max_data_size_bytes' must be at least 0 (got -1)");
    expect_one_error("persistence: {\n max_record_size_bytes = 1000;\n};\n", 2,
                     "'persistence.max_record_size_bytes' must be between 1024 and 1073741824 "
                     "(got 1000)");
    expect_one_error("advanced_features: { compression: {\n min_gain_ratio = 1.5; }; };\n", 2,
                     "'advanced_features.compression.min_gain_ratio' must be between 0 and 1 "
                     "(got 1.5)");
    expect_one_error("distributed: { node: {\n weight = 0; }; };\n", 2,
                     "'distributed.node.weight' must be between 1 and 1000 (got 0)");
    /* 2^62 once made the codec try to allocate it (an ASan abort): 1 GiB at most */
    expect_one_error("advanced_features: { compression: {\n\n"
                     " max_decompressed_bytes = 4611686018427387904L; }; };\n",
                     3,
                     "'advanced_features.compression.max_decompressed_bytes' must be between 1 "
                     "and 1073741824 (got 4611686018427387904)");
    expect_one_error("advanced_features: { compression: {\n"
                     " max_decompressed_bytes = 1073741825L; }; };\n",
                     2,
                     "'advanced_features.compression.max_decompressed_bytes' must be between 1 "
                     "and 1073741824 (got 1073741825)");
    expect_one_error("security: { audit: {\n batch_max_records = 0; }; };\n", 2,
                     "'security.audit.batch_max_records' must be between 1 and 1000000 (got 0)");
    expect_one_error("security: { audit: {\n batch_delay_ms = 1001; }; };\n", 2,
                     "'security.audit.batch_delay_ms' must be between 0 and 1000 (got 1001)");
    expect_one_error("security: { audit: {\n fail_closed = 1; }; };\n", 2,
                     "'security.audit.fail_closed' must be a boolean (true or false)");
    expect_one_error("service: { request_header_timeout_seconds = 0; };\n", 1,
                     "'service.request_header_timeout_seconds' must be between 1 and 3600 (got 0)");
    expect_one_error("service: { request_body_timeout_seconds = 3601; };\n", 1,
                     "'service.request_body_timeout_seconds' must be between 1 and 3600 (got 3601)");
    expect_one_error("service: { max_connections = -1; };\n", 1,
                     "'service.max_connections' must be between 0 and 10000000 (got -1)");
    expect_one_error("service: { max_output_buffer_bytes = 1024; };\n", 1,
                     "'service.max_output_buffer_bytes' must be between 65536 and 68719476736 "
                     "(got 1024)");
    expect_one_error("service: { max_output_buffer_total_bytes = 0; };\n", 1,
                     "'service.max_output_buffer_total_bytes' must be between 65536 and "
                     "1099511627776 (got 0)");
}

static void test_int_needs_l_suffix(void **state)
{
    struct rhema_config cfg;
    char path[4096], *err = NULL;
    int64_t i;

    (void)state;
    /* libconfig 1.5 would silently keep 1410065408 */
    expect_one_error("persistence: {\n  max_data_size_bytes = 10000000000;\n};\n", 2,
                     "'persistence.max_data_size_bytes' does not fit in 32 bits; write "
                     "10000000000L for a 64-bit integer");
    expect_one_error("service: {\n  workers = 4294967297;\n};\n", 2,
                     "'service.workers' does not fit in 32 bits; write 4294967297L for a 64-bit "
                     "integer");
    assert_int_equal(load_text(&cfg, path, sizeof path,
                               "persistence: {\n  max_data_size_bytes = 10000000000L;\n  "
                               "backup_interval_hours = 0x10;\n};\n"
                               "distributed: { node = { weight = 3; }; cluster = { "
                               "max_nodes = 4; min_nodes = 2; }; health_checking = {\n"
                               "interval_seconds = 9; }; };\n",
                               NULL, 0, &err),
                     0);
    assert_true(cfg.max_data_size_bytes == INT64_C(10000000000));
    assert_int_equal(cfg.backup_interval_hours, 16);
    rhema_config_release(&cfg);
    unlink(path);
    /* the same name twice on a line is no truncation */
    assert_int_equal(load_text(&cfg, path, sizeof path,
                               "monitoring: { sample_interval_seconds = 3; advanced_features = 1; "
                               "};\nadvanced_features: { performance_monitoring: { "
                               "sample_interval_seconds = 4; }; };\n",
                               NULL, 0, &err),
                     RHEMA_EINVAL);
    assert_non_null(strstr(err, "unknown key 'monitoring.advanced_features'"));
    assert_null(strstr(err, "32 bits"));
    free(err);
    unlink(path);
    assert_int_equal(load_text(&cfg, path, sizeof path,
                               "advanced_features: { key_management: { rotation = { "
                               "interval_hours = 48; }; backup = { interval_hours = 6; }; }; };\n",
                               NULL, 0, &err),
                     0);
    assert_int_equal(
        rhema_config_get_int(&cfg, "advanced_features.key_management.backup.interval_hours", &i),
        0);
    assert_int_equal(i, 6);
    rhema_config_release(&cfg);
    unlink(path);
}

static void test_bad_enum(void **state)
{
    (void)state;
    expect_one_error("logging: {\n  format = \"text\";\n  level = \"loud\";\n};\n", 3,
                     "'logging.level' must be one of debug, info, notice, warn, error "
                     "(got 'loud')");
    expect_one_error("distributed: { node: {\n role = \"worker\"; }; };\n", 2,
                     "'distributed.node.role' must be one of Coordinator, Worker, Observer, "
                     "Backup (got 'worker')");
    expect_one_error("persistence: {\n backend = \"My-Store\";\n};\n", 2,
                     "'persistence.backend' must be a plugin name of 1-64 characters [a-z0-9_] "
                     "(got 'My-Store')");
    expect_one_error("monitoring: {\n metrics_path = \"metrics\";\n};\n", 2,
                     "'monitoring.metrics_path' must begin with '/' (got 'metrics')");
    /* the metrics history and the console (metrics/history.h, api/api_console.h) */
    expect_one_error("monitoring: {\n\n storage_backend = \"disk\";\n};\n", 3,
                     "'monitoring.storage_backend' must be one of memory, storage (got 'disk')");
    expect_one_error("monitoring: {\n history_max_samples = 1;\n};\n", 2,
                     "'monitoring.history_max_samples' must be between 2 and 100000 (got 1)");
    expect_one_error("monitoring: {\n metrics_interval_seconds = 0;\n};\n", 2,
                     "'monitoring.metrics_interval_seconds' must be between 1 and 3600 (got 0)");
    expect_one_error("monitoring: {\n history_retention_seconds = 59;\n};\n", 2,
                     "'monitoring.history_retention_seconds' must be between 60 and 31536000 "
                     "(got 59)");
    expect_one_error("monitoring: { console: {\n enabled = \"yes\"; }; };\n", 2,
                     "'monitoring.console.enabled' must be a boolean (true or false)");
}

static void test_listen_addresses(void **state)
{
    static const char *const bad[] = { "8080",         "localhost",    "host:0",
                                       "host:65536",   "[::1]8080",    "[zz]:80",
                                       "1.2.3.4.5:80", ":80",          "::1:80",
                                       "host:80x",     "ho st:80",     "[]:80",
                                       "300.1.1.1:80", "host:-1",      "" };
    static const char *const good[] = { "[::1]:8080",   "0.0.0.0:1", "example.com:65535",
                                        "[::]:80",      "localhost:8080", "10.1.2.3:443" };
    char text[256], msg[512];

    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(text, sizeof text, "service: {\n  listen = \"%s\";\n};\n", bad[i]);
        snprintf(msg, sizeof msg,
                 "'service.listen' must be host:port or [ipv6]:port with a port in 1..65535 "
                 "(got '%s')",
                 bad[i]);
        expect_one_error(text, 2, msg);
    }
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        struct rhema_config cfg;
        char path[4096], *err = NULL;

        snprintf(text, sizeof text, "service: { listen = \"%s\"; };\n", good[i]);
        assert_int_equal(load_text(&cfg, path, sizeof path, text, NULL, 0, &err), 0);
        assert_string_equal(cfg.listen, good[i]);
        rhema_config_release(&cfg);
        unlink(path);
    }
    /* the node address may stay empty, but not be wrong */
    expect_one_error("distributed: { node: {\n address = \"nope\"; }; };\n", 2,
                     "'distributed.node.address' must be host:port or [ipv6]:port with a port "
                     "in 1..65535 (got 'nope')");
}

static void test_multiple_errors(void **state)
{
    struct rhema_config cfg;
    char path[4096], *err = NULL;

    (void)state;
    assert_int_equal(load_text(&cfg, path, sizeof path,
                               "service: {\n"
                               "  workers = 900;\n"
                               "  listn = 1;\n"
                               "};\n"
                               "logging: {\n"
                               "  level = \"loud\";\n"
                               "  access_log = \"yes\";\n"
                               "};\n",
                               NULL, 0, &err),
                     RHEMA_EINVAL);
    assert_err(err,
               "%s:2: 'service.workers' must be between 0 and 256 (got 900)\n"
               "%s:3: unknown key 'service.listn'\n"
               "%s:6: 'logging.level' must be one of debug, info, notice, warn, error (got "
               "'loud')\n"
               "%s:7: 'logging.access_log' must be a boolean (true or false)",
               path, path, path, path);
    free(err);
    unlink(path);
}

static void test_cross_checks(void **state)
{
    (void)state;
    expect_one_error("distributed: { cluster: {\n min_nodes = 5;\n max_nodes = 3; }; };\n", 3,
                     "'distributed.cluster.min_nodes' (5) must be at most "
                     "'distributed.cluster.max_nodes' (3)");
    expect_one_error("distributed: { cluster: {\n heartbeat_interval_seconds = 20; }; };\n", 2,
                     "'distributed.cluster.heartbeat_interval_seconds' (20) must be less than "
                     "'distributed.cluster.node_timeout_seconds' (10)");
    expect_one_error("ai_service: {\n models = ( { name = \"m\";\n upstream = \"nowhere\"; } );\n"
                     "};\n",
                     3,
                     "'ai_service.models[0].upstream' names no upstream in ai_service.upstreams "
                     "(got 'nowhere')");
    expect_one_error("ai_service: {\n default_model = \"gpt\";\n};\n", 2,
                     "'ai_service.default_model' names no model in ai_service.models (got "
                     "'gpt')");
}

/* distributed.health_checking.allowed_targets: rules of targets.h, each checked with file:line. */
static void test_check_targets_keys(void **state)
{
    struct rhema_config cfg;
    char path[4096], *err = NULL;
    const char *s;
    int64_t i;
    (void)state;
    assert_int_equal(load_text(&cfg, path, sizeof path,
                               "distributed: { health_checking: {\n"
                               "  allowed_targets = [ \"127.0.0.0/8\", \"[fd00::/8]:443\" ];\n"
                               "  max_checks_per_service = 5; max_checks_total = 50; }; };\n",
                               NULL, 0, &err),
                     0);
    assert_int_equal(rhema_config_get_count(&cfg, "distributed.health_checking.allowed_targets"), 2);
    assert_int_equal(
        rhema_config_get_string(&cfg, "distributed.health_checking.allowed_targets[1]", &s), 0);
    assert_string_equal(s, "[fd00::/8]:443");
    assert_int_equal(
        rhema_config_get_int(&cfg, "distributed.health_checking.max_checks_per_service", &i), 0);
    assert_int_equal(i, 5);
    rhema_config_release(&cfg);
    unlink(path);
    /* the defaults: no rule (the service's own address), 100 and 1000 */
    assert_int_equal(load_text(&cfg, path, sizeof path, "", NULL, 0, &err), 0);
    assert_int_equal(rhema_config_get_count(&cfg, "distributed.health_checking.allowed_targets"), 0);
    assert_int_equal(
        rhema_config_get_int(&cfg, "distributed.health_checking.max_checks_per_service", &i), 0);
    assert_int_equal(i, 100);
    assert_int_equal(rhema_config_get_int(&cfg, "distributed.health_checking.max_checks_total", &i),
                     0);
    assert_int_equal(i, 1000);
    rhema_config_release(&cfg);
    unlink(path);
    expect_one_error("distributed: { health_checking: {\n"
                     "  allowed_targets = [ \"10.0.0.0/8\",\n \"10.0.0.0/8:99999\" ]; }; };\n",
                     3,
                     "'distributed.health_checking.allowed_targets[1]': '10.0.0.0/8:99999': "
                     "expected a port 1..65535 or a range low-high after ':'");
    expect_one_error("distributed: { health_checking: {\n  max_checks_total = 0; }; };\n", 2,
                     "'distributed.health_checking.max_checks_total' must be between 1 and "
                     "1000000 (got 0)");
}

static void test_parse_error(void **state)
{
    struct rhema_config cfg;
    char path[4096], prefix[4200], *err = NULL;

    (void)state;
    assert_int_equal(load_text(&cfg, path, sizeof path, "service: {\n  workers = 1;\n  listen = ;\n};\n",
                               NULL, 0, &err),
                     RHEMA_EINVAL);
    snprintf(prefix, sizeof prefix, "%s:3: ", path);
    assert_non_null(err);
    assert_memory_equal(err, prefix, strlen(prefix));
    assert_true(strlen(err) > strlen(prefix));
    assert_null(strchr(err, '\n'));
    assert_null(cfg.priv);
    free(err);
    unlink(path);

    /* a duplicate key is a parse error of libconfig's, with its line */
    assert_int_equal(load_text(&cfg, path, sizeof path, "a = 1;\n\na = 2;\n", NULL, 0, &err),
                     RHEMA_EINVAL);
    snprintf(prefix, sizeof prefix, "%s:3: ", path);
    assert_memory_equal(err, prefix, strlen(prefix));
    free(err);
    unlink(path);
}

static void test_missing_file(void **state)
{
    struct rhema_config cfg;
    char *err = NULL;
    const char *path = "/nonexistent/rhema/rhemad.conf";

    (void)state;
    assert_int_equal(rhema_config_load(&cfg, path, NULL, 0, NULL, &err), RHEMA_EIO);
    assert_non_null(err);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "No such file"));
    assert_null(cfg.priv);
    free(err);
    /* a directory is not a file */
    assert_int_equal(rhema_config_load(&cfg, "/", NULL, 0, NULL, &err), RHEMA_EIO);
    assert_non_null(strstr(err, "directory"));
    free(err);
    /* err may be NULL */
    assert_int_equal(rhema_config_load(&cfg, path, NULL, 0, NULL, NULL), RHEMA_EIO);
}

static void test_overrides(void **state)
{
    static const char *const ov[] = {
        "service.workers=8",
        "service.listen = 0.0.0.0:9000",
        "logging.access_log=no",
        "logging.level=debug",
        "distributed.cluster.max_nodes=5",
        "monitoring.alerts.cpu_percent=75.5",
        "service.cors.origins=[https://a.example, https://b.example]",
        "plugins.load=sqlite,zstd",
        "persistence.max_data_size_bytes=10000000000",
        "persistence.sqlite.busy_timeout_ms=250",
        "persistence.sqlite.ratio=0.5",
        "persistence.sqlite.wal=true",
        "persistence.sqlite.path=/tmp/x.db",
        "persistence.sqlite.name=\"42\"",
        "advanced_features.compression.zstd.level=19",
        "service.workers=9", /* the last one wins */
    };
    struct rhema_config cfg;
    const struct rhema_cfg *g;
    char path[4096], *err = NULL;
    int64_t i;
    double d;
    int b;
    const char *s;

    (void)state;
    assert_int_equal(load_text(&cfg, path, sizeof path,
                               "service: {\n  workers = 4;\n  listen = \"127.0.0.1:1\";\n};\n"
                               "persistence: { sqlite = { path = \"file.db\"; }; };\n",
                               ov, sizeof ov / sizeof ov[0], &err),
                     0);
    assert_null(err);
    assert_int_equal(cfg.workers, 9);
    assert_string_equal(cfg.listen, "0.0.0.0:9000");
    assert_int_equal(cfg.access_log, 0);
    assert_int_equal(cfg.log_level, RHEMA_LOG_DEBUG);
    assert_int_equal(rhema_config_get_int(&cfg, "distributed.cluster.max_nodes", &i), 0);
    assert_int_equal(i, 5);
    assert_int_equal(rhema_config_get_double(&cfg, "monitoring.alerts.cpu_percent", &d), 0);
    assert_true(d > 75.49 && d < 75.51);
    assert_int_equal(cfg.cors_origins.n, 2);
    assert_string_equal(cfg.cors_origins.v[0], "https://a.example");
    assert_string_equal(cfg.cors_origins.v[1], "https://b.example");
    assert_int_equal(cfg.plugin_load_set, 1);
    assert_int_equal(cfg.plugin_load.n, 2);
    assert_string_equal(cfg.plugin_load.v[1], "zstd");
    assert_true(cfg.max_data_size_bytes == INT64_C(10000000000));

    g = rhema_config_plugin_group(&cfg, RHEMA_KIND_STORAGE, "sqlite");
    assert_non_null(g);
    assert_int_equal(rhema_cfg_int(g, "busy_timeout_ms", &i), 0);
    assert_int_equal(i, 250);
    assert_int_equal(rhema_cfg_double(g, "ratio", &d), 0);
    assert_true(d > 0.49 && d < 0.51);
    assert_int_equal(rhema_cfg_bool(g, "wal", &b), 0);
    assert_int_equal(b, 1);
    assert_int_equal(rhema_cfg_string(g, "path", &s), 0);
    assert_string_equal(s, "/tmp/x.db"); /* the override beat the file */
    assert_int_equal(rhema_cfg_string(g, "name", &s), 0);
    assert_string_equal(s, "42"); /* quoted: a string */
    assert_string_equal(rhema_cfg_where(g, "path"), "-o persistence.sqlite.path=/tmp/x.db");
    assert_int_equal(rhema_config_unread_keys(g, &err), 0);

    /* a plugin group made only by -o */
    g = rhema_config_plugin_group(&cfg, RHEMA_KIND_COMPRESS, "zstd");
    assert_non_null(g);
    assert_int_equal(rhema_cfg_int(g, "level", &i), 0);
    assert_int_equal(i, 19);
    rhema_config_release(&cfg);
    unlink(path);

    /* -P beats plugins.directory, and no file at all is fine */
    assert_int_equal(rhema_config_load(&cfg, NULL, ov, 1, "/opt/p", &err), 0);
    assert_string_equal(cfg.plugin_directory, "/opt/p");
    assert_int_equal(cfg.workers, 8);
    rhema_config_release(&cfg);
}

static void test_override_errors(void **state)
{
    static const char *const ov[] = {
        "service.foo=1",
        "service.workers=abc",
        "noequals",
        "service.listen.x=1",
        "service.cors=1",
        "security.roles=x",
        "persistence.sqlite=1",
        "logging.access_log=maybe",
        "service.workers=900",
        "service.cors.origins=[",
        "service.cors.origins=[https://a.example",
        "service.cors.origins=https://a.example]",
        "service.cors.origins=a,,b",
        "plugins.load=[\"zstd, lz4]",
    };
    struct rhema_config cfg;
    char *err = NULL;

    (void)state;
    assert_int_equal(rhema_config_load(&cfg, NULL, ov, sizeof ov / sizeof ov[0], NULL, &err),
                     RHEMA_EINVAL);
    assert_err(err,
               "-o service.foo=1: unknown key 'service.foo'\n"
               "-o service.workers=abc: 'service.workers' must be an integer\n"
               "-o noequals: expected section.key=value\n"
               "-o service.listen.x=1: 'service.listen' is not a group\n"
               "-o service.cors=1: 'service.cors' is a group; set its keys one by one\n"
               "-o security.roles=x: 'security.roles' is a list of groups and cannot be set "
               "with -o\n"
               "-o persistence.sqlite=1: unknown key 'persistence.sqlite'\n"
               "-o logging.access_log=maybe: 'logging.access_log' must be a boolean (true or "
               "false)\n"
               "-o service.cors.origins=[: 'service.cors.origins' must be a list of strings, as "
               "[a, b] or a,b (brackets closed, no empty item)\n"
               "-o service.cors.origins=[https://a.example: 'service.cors.origins' must be a "
               "list of strings, as [a, b] or a,b (brackets closed, no empty item)\n"
               "-o service.cors.origins=https://a.example]: 'service.cors.origins' must be a "
               "list of strings, as [a, b] or a,b (brackets closed, no empty item)\n"
               "-o service.cors.origins=a,,b: 'service.cors.origins' must be a list of strings, "
               "as [a, b] or a,b (brackets closed, no empty item)\n"
               "-o plugins.load=[\"zstd, lz4]: 'plugins.load' must be a list of strings, as "
               "[a, b] or a,b (brackets closed, no empty item)\n"
               /* ranges are checked after every override is in */
               "-o service.workers=900: 'service.workers' must be between 0 and 256 (got 900)");
    assert_null(cfg.priv);
    free(err);
}

static const char plugin_conf[] = "persistence: {\n"              /* 1 */
                                  "  backend = \"sqlite\";\n"     /* 2 */
                                  "  sqlite = {\n"                /* 3 */
                                  "    path = \"data/x.db\";\n"   /* 4 */
                                  "    busy_timeout_ms = 5000;\n" /* 5 */
                                  "    wal = true;\n"             /* 6 */
                                  "    ratio = 0.75;\n"           /* 7 */
                                  "    pathh = \"typo\";\n"       /* 8 */
                                  "    synchronous = 1;\n"        /* 9 */
                                  "  };\n"                        /* 10 */
                                  "  redis = { port = 6379; };\n" /* 11 */
                                  "};\n"                          /* 12 */
                                  "advanced_features: {\n"        /* 13 */
                                  "  compression = { zstd = { level = 7; }; };\n"  /* 14 */
                                  "  encryption = { aes256gcm = { x = 1; }; };\n"  /* 15 */
                                  "};\n"                                           /* 16 */
                                  "distributed: { load_balancing = {\n"            /* 17 */
                                  "  ip_hash = { replicas = 100; }; }; };\n";      /* 18 */

static void test_plugin_groups(void **state)
{
    struct rhema_config cfg;
    const struct rhema_cfg *g, *g2;
    char path[4096], where[4200], *err = NULL;
    int64_t i = -1;
    double d;
    int b;
    const char *s;

    (void)state;
    assert_int_equal(load_text(&cfg, path, sizeof path, plugin_conf, NULL, 0, &err), 0);
    g = rhema_config_plugin_group(&cfg, RHEMA_KIND_STORAGE, "sqlite");
    assert_non_null(g);
    assert_ptr_equal(rhema_config_plugin_group(&cfg, RHEMA_KIND_STORAGE, "sqlite"), g);
    assert_int_equal(rhema_cfg_string(g, "path", &s), 0);
    assert_string_equal(s, "data/x.db");
    assert_int_equal(rhema_cfg_int(g, "busy_timeout_ms", &i), 0);
    assert_int_equal(i, 5000);
    assert_int_equal(rhema_cfg_double(g, "busy_timeout_ms", &d), 0); /* int for double */
    assert_true(d > 4999.9 && d < 5000.1);
    assert_int_equal(rhema_cfg_bool(g, "wal", &b), 0);
    assert_int_equal(b, 1);
    assert_int_equal(rhema_cfg_double(g, "ratio", &d), 0);
    assert_true(d > 0.74 && d < 0.76);
    /* absent: ENOTFOUND, out untouched */
    i = 77;
    assert_int_equal(rhema_cfg_int(g, "cache_size", &i), RHEMA_ENOTFOUND);
    assert_int_equal(i, 77);
    /* wrong type: EINVAL with file:line */
    assert_null(rhema_cfg_error(g));
    assert_int_equal(rhema_cfg_string(g, "synchronous", &s), RHEMA_EINVAL);
    assert_err(rhema_cfg_error(g), "%s:9: 'persistence.sqlite.synchronous' must be a string",
               path);
    assert_int_equal(rhema_cfg_int(g, "ratio", &i), RHEMA_EINVAL);
    assert_err(rhema_cfg_error(g), "%s:7: 'persistence.sqlite.ratio' must be an integer", path);
    assert_int_equal(rhema_cfg_bool(g, "path", &b), RHEMA_EINVAL);
    assert_int_equal(rhema_cfg_double(g, "path", &d), RHEMA_EINVAL);
    /* where */
    snprintf(where, sizeof where, "%s:5", path);
    assert_string_equal(rhema_cfg_where(g, "busy_timeout_ms"), where);
    snprintf(where, sizeof where, "%s:3", path);
    assert_string_equal(rhema_cfg_where(g, NULL), where);
    assert_string_equal(rhema_cfg_where(g, "absent"), where);
    /* unread keys: only pathh */
    assert_int_equal(rhema_config_unread_keys(g, &err), RHEMA_EINVAL);
    assert_err(err, "%s:8: unknown key 'persistence.sqlite.pathh' for plugin 'sqlite'", path);
    free(err);
    err = NULL;
    assert_int_equal(rhema_cfg_string(g, "pathh", &s), 0);
    assert_int_equal(rhema_config_unread_keys(g, &err), 0);
    assert_null(err);

    /* a group nobody read reports every key */
    g2 = rhema_config_plugin_group(&cfg, RHEMA_KIND_STORAGE, "redis");
    assert_non_null(g2);
    assert_int_equal(rhema_config_unread_keys(g2, &err), RHEMA_EINVAL);
    assert_err(err, "%s:11: unknown key 'persistence.redis.port' for plugin 'redis'", path);
    free(err);

    /* the other kinds */
    g2 = rhema_config_plugin_group(&cfg, RHEMA_KIND_COMPRESS, "zstd");
    assert_non_null(g2);
    assert_int_equal(rhema_cfg_int(g2, "level", &i), 0);
    assert_int_equal(i, 7);
    g2 = rhema_config_plugin_group(&cfg, RHEMA_KIND_CIPHER, "aes256gcm");
    assert_non_null(g2);
    assert_int_equal(rhema_cfg_int(g2, "x", &i), 0);
    assert_int_equal(i, 1);
    g2 = rhema_config_plugin_group(&cfg, RHEMA_KIND_BALANCER, "ip_hash");
    assert_non_null(g2);
    assert_int_equal(rhema_cfg_int(g2, "replicas", &i), 0);
    assert_int_equal(i, 100);

    /* absent groups, core keys, wrong kind: NULL; getters on NULL: ENOTFOUND */
    assert_null(rhema_config_plugin_group(&cfg, RHEMA_KIND_STORAGE, "postgres"));
    assert_null(rhema_config_plugin_group(&cfg, RHEMA_KIND_STORAGE, "backend"));
    assert_null(rhema_config_plugin_group(&cfg, RHEMA_KIND_COMPRESS, "sqlite"));
    assert_null(rhema_config_plugin_group(&cfg, 99, "sqlite"));
    assert_null(rhema_config_plugin_group(NULL, RHEMA_KIND_STORAGE, "sqlite"));
    assert_int_equal(rhema_cfg_string(NULL, "path", &s), RHEMA_ENOTFOUND);
    assert_int_equal(rhema_cfg_int(NULL, "path", &i), RHEMA_ENOTFOUND);
    assert_int_equal(rhema_cfg_bool(NULL, "path", &b), RHEMA_ENOTFOUND);
    assert_int_equal(rhema_cfg_double(NULL, "path", &d), RHEMA_ENOTFOUND);
    assert_int_equal(rhema_config_unread_keys(NULL, &err), 0);
    assert_non_null(rhema_cfg_where(NULL, "x"));
    rhema_config_release(&cfg);
    unlink(path);
}

struct seen {
    char names[8][32];
    int n;
};

static int collect(const char *name, const char *where, void *arg)
{
    struct seen *s = arg;

    assert_non_null(where);
    snprintf(s->names[s->n++], sizeof s->names[0], "%s", name);
    return 0;
}

static void test_foreach_plugin_group(void **state)
{
    struct rhema_config cfg;
    struct seen seen = { .n = 0 };
    char path[4096], *err = NULL;

    (void)state;
    assert_int_equal(load_text(&cfg, path, sizeof path, plugin_conf, NULL, 0, &err), 0);
    assert_int_equal(rhema_config_foreach_plugin_group(&cfg, RHEMA_KIND_STORAGE, collect, &seen),
                     0);
    assert_int_equal(seen.n, 2);
    assert_string_equal(seen.names[0], "sqlite");
    assert_string_equal(seen.names[1], "redis");
    seen.n = 0;
    assert_int_equal(rhema_config_foreach_plugin_group(&cfg, RHEMA_KIND_BALANCER, collect, &seen),
                     0);
    assert_int_equal(seen.n, 1);
    assert_string_equal(seen.names[0], "ip_hash");
    rhema_config_release(&cfg);
    unlink(path);
}

static void test_group_lists(void **state)
{
    struct rhema_config cfg;
    char path[4096], *err = NULL;

    (void)state;
    expect_one_error("security: {\n  roles = (\n    { name = \"admin\"; permissions = [ \"*\" ]; },\n"
                     "    { name = \"r\";\n      nmae = \"x\"; }\n  );\n};\n",
                     5, "unknown key 'security.roles[1].nmae'");
    expect_one_error("security: {\n  roles = (\n    { name = \"admin\"; },\n"
                     "    { permissions = [ \"*\" ]; }\n  );\n};\n",
                     4, "'security.roles[1]' needs 'name'");
    expect_one_error("security: {\n  roles = (\n    { name = \"admin\"; },\n    \"admin\" );\n};\n",
                     4, "'security.roles[1]' must be a group");
    expect_one_error("security: {\n  roles = ( { name = \"a\"; },\n { name = \"a\"; } );\n};\n", 3,
                     "'security.roles[1].name' repeats 'a' of security.roles[0]");
    expect_one_error("security: { rules = (\n { path_prefix = \"/v1\"; action = \"deny\"; methods = [ 1 ]; } ); };\n",
                     2, "'security.rules[0].methods[0]' must be a string");
    expect_one_error("ai_service: { upstreams = (\n { name = \"u\"; base_url = \"ftp://x\"; } ); };\n",
                     2, "'ai_service.upstreams[0].base_url' must be an http:// or https:// URL "
                        "(got 'ftp://x')");

    expect_one_error("security: { rules = (\n { path_prefix = \"/v1\"; action = \"permit\"; } ); };\n",
                     2, "'security.rules[0].action' must be one of allow, deny (got 'permit')");
    expect_one_error("security: { rules = (\n { path_prefix = \"/v1\"; } ); };\n", 2,
                     "'security.rules[0]' needs 'action'");
    expect_one_error("security: {\n allow_unauthenticated_remote = 1; };\n", 2,
                     "'security.allow_unauthenticated_remote' must be a boolean (true or false)");

    /* several bad elements, several lines */
    assert_int_equal(load_text(&cfg, path, sizeof path,
                               "security: {\n"
                               "  api_keys = { keys = (\n"
                               "    { name = \"a\"; key_hash = \"h\"; roles = [ \"x\" ]; },\n"
                               "    { name = 5; key_hash = \"h\"; },\n"
                               "    { key_hash = \"h\"; bogus = true; }\n"
                               "  ); };\n"
                               "};\n",
                               NULL, 0, &err),
                     RHEMA_EINVAL);
    assert_err(err,
               "%s:4: 'security.api_keys.keys[1].name' must be a string\n"
               "%s:5: unknown key 'security.api_keys.keys[2].bogus'\n"
               "%s:5: 'security.api_keys.keys[2]' needs 'name'",
               path, path, path);
    free(err);
    unlink(path);
}

static void test_sample_config(void **state)
{
    const char *top = getenv("top_srcdir");
    struct rhema_config cfg;
    const struct rhema_cfg *g;
    char path[4096], *err = NULL;
    const char *s;
    int64_t i;

    (void)state;
    snprintf(path, sizeof path, "%s/etc/rhemad.conf", top && *top ? top : ".");
    assert_int_equal(rhema_config_load(&cfg, path, NULL, 0, NULL, &err), 0);
    if (err)
        fail_msg("%s", err);
    assert_string_equal(cfg.listen, "127.0.0.1:8080");
    assert_string_equal(cfg.backend, "sqlite");
    assert_string_equal(cfg.plugin_directory, PLUGINDIR); /* left commented */
    g = rhema_config_plugin_group(&cfg, RHEMA_KIND_STORAGE, "sqlite");
    assert_non_null(g);
    assert_int_equal(rhema_cfg_string(g, "path", &s), 0);
    assert_string_equal(s, "rhema.db"); /* in service.data_directory */
    assert_int_equal(rhema_config_get_string(&cfg, "service.data_directory", &s), 0);
    assert_string_equal(s, "data");
    assert_int_equal(rhema_cfg_string(g, "synchronous", &s), 0);
    assert_string_equal(s, "normal");
    assert_int_equal(rhema_cfg_int(g, "busy_timeout_ms", &i), 0);
    assert_int_equal(i, 5000);
    /* the sqlite plugin reads just these three */
    assert_int_equal(rhema_config_unread_keys(g, &err), 0);
    rhema_config_release(&cfg);
}

/* ai_service.models[].upstream: one name or a list of names (F_ONE_OK). */
static void test_ai_upstream_name_or_list(void **state)
{
    struct rhema_config cfg;
    char path[4096], *err = NULL;
    const char *s;

    (void)state;
    if (load_text(&cfg, path, sizeof path,
                  "ai_service: {\n"
                  "  upstreams = ( { name = \"a\"; base_url = \"http://a\"; },\n"
                  "                { name = \"b\"; base_url = \"https://b/v1\"; } );\n"
                  "  models = ( { name = \"one\"; upstream = \"b\"; },\n"
                  "             { name = \"two\"; upstream = [ \"a\", \"b\" ]; fallbacks = [ \"one\" ]; },\n"
                  "             { name = \"all\"; } );\n"
                  "};\n",
                  NULL, 0, &err) != 0)
        fail_msg("%s", err);
    assert_int_equal(rhema_config_get_count(&cfg, "ai_service.models[0].upstream"), 1);
    assert_int_equal(rhema_config_get_string(&cfg, "ai_service.models[0].upstream[0]", &s), 0);
    assert_string_equal(s, "b");
    assert_int_equal(rhema_config_get_string(&cfg, "ai_service.models[0].upstream[1]", &s),
                     RHEMA_ENOTFOUND);
    assert_int_equal(rhema_config_get_count(&cfg, "ai_service.models[1].upstream"), 2);
    assert_int_equal(rhema_config_get_string(&cfg, "ai_service.models[1].upstream[1]", &s), 0);
    assert_string_equal(s, "b");
    assert_int_equal(rhema_config_get_count(&cfg, "ai_service.models[2].upstream"), 0);
    rhema_config_release(&cfg);
    unlink(path);

    expect_one_error("ai_service: {\n models = ( { name = \"m\";\n upstream = 3; } );\n};\n", 3,
                     "'ai_service.models[0].upstream' must be a string or a list of strings");
    expect_one_error("ai_service: {\n upstreams = ( { name = \"a\"; base_url = \"http://a\"; } );\n"
                     " models = ( { name = \"m\"; upstream = [ \"a\",\n \"zz\" ]; } );\n};\n", 4,
                     "'ai_service.models[0].upstream' names no upstream in ai_service.upstreams "
                     "(got 'zz')");
    expect_one_error("ai_service: {\n models = ( { name = \"m\";\n fallbacks = [ \"m\" ]; } );\n};\n", 3,
                     "'ai_service.models[0].fallbacks[0]' is the model itself");
    expect_one_error("ai_service: {\n models = ( { name = \"m\";\n fallbacks = [ \"x\" ]; } );\n};\n", 3,
                     "'ai_service.models[0].fallbacks[0]' names no model in ai_service.models "
                     "(got 'x')");
}

/* Settings parsed but not acted on in this version are refused, with file:line. */
static void test_unimplemented_refused(void **state)
{
    static const struct {
        const char *text;
        int line;
        const char *key;
    } cases[] = {
        { "monitoring: {\n  enabled = true;\n  sample_interval_seconds = 5;\n};\n", 3,
          "monitoring.sample_interval_seconds" },
    };
    char msg[256];

    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(msg, sizeof msg, "%s: not implemented in this version", cases[i].key);
        expect_one_error(cases[i].text, cases[i].line, msg);
    }
}

/* Every refused setting is reported, at its own line; implemented keys beside it are not. */
static void test_unimplemented_all_reported(void **state)
{
    struct rhema_config cfg;
    char path[4096], *err = NULL;

    (void)state;
    assert_int_equal(load_text(&cfg, path, sizeof path,
                               "ai_service: {\n"
                               "  enabled = true; default_model = \"m\";\n"
                               "  models = ( { name = \"m\"; } );\n"
                               "  caching = { enabled = true; ttl_seconds = 5; };\n"
                               "  agent_management = { max_concurrent_agents = 5; };\n"
                               "};\n"
                               "monitoring: {\n  enabled = true;\n  sample_interval_seconds = 5;\n};\n",
                               NULL, 0, &err),
                     RHEMA_EINVAL);
    /* ai_service.caching and agent_management are implemented: their keys are accepted */
    assert_err(err, "%s:9: monitoring.sample_interval_seconds: not implemented in this version",
               path);
    assert_null(cfg.priv);
    free(err);
    unlink(path);

    /* a file with another error gets that one first */
    expect_one_error("ai_service: { caching: { enabled = true; }; };\nservice: {\n  workrs = 2;\n};\n", 3,
                     "unknown key 'service.workrs'");
}

/* The defaults, switches turned off, and what such a switch gates are accepted. */
static void test_unimplemented_defaults_accepted(void **state)
{
    struct rhema_config cfg;
    char path[4096], *err = NULL;
    const char *s;
    int64_t i;
    int b;

    (void)state;
    if (load_text(&cfg, path, sizeof path,
                  "ai_service: {\n"
                  "  enabled = false; default_model = \"\"; request_timeout_seconds = 60;\n"
                  "  models = (); upstreams = [];\n"
                  "  rate_limiting = { enabled = false; requests_per_minute = 60; burst = 10; };\n"
                  "  caching = { enabled = false; ttl_seconds = 300; max_entries = 10000; };\n"
                  "  agent_management = { max_agents = 1000; heartbeat_timeout_seconds = 5; };\n"
                  "};\n"
                  "monitoring: { enabled = true; metrics_path = \"/metrics\";\n"
                  "  sample_interval_seconds = 10;\n"
                  "  alerts = { enabled = false; cpu_percent = 90.0; memory_percent = 90;\n"
                  "             error_rate_percent = 5.0; }; };\n"
                  "security: {\n"
                  "  api_keys = { enabled = false; keys = (); };\n"
                  "  roles = (); rules = ();\n"
                  "  audit = { enabled = false; file = \"logs/audit.log\"; };\n"
                  "};\n",
                  NULL, 0, &err) != 0)
        fail_msg("%s", err);
    /* a key that acts keeps acting beside them */
    assert_int_equal(
        rhema_config_get_int(&cfg, "ai_service.agent_management.heartbeat_timeout_seconds", &i), 0);
    assert_int_equal(i, 5);
    rhema_config_release(&cfg);
    unlink(path);

    /* monitoring off: its path and interval are inert; likewise under switches off */
    if (load_text(&cfg, path, sizeof path,
                  "monitoring: { enabled = false; metrics_path = \"/m\"; sample_interval_seconds = 3;\n"
                  "  alerts = { enabled = false; cpu_percent = 50; }; };\n"
                  "ai_service: { rate_limiting = { burst = 99; }; caching = { ttl_seconds = 1; };\n"
                  "  upstreams = ( { name = \"u\"; base_url = \"http://127.0.0.1:1/v1\"; } ); };\n"
                  "security: { audit = { file = \"x.log\"; }; roles = ( { name = \"r\"; } ); };\n",
                  NULL, 0, &err) != 0)
        fail_msg("%s", err);
    assert_int_equal(rhema_config_get_bool(&cfg, "monitoring.enabled", &b), 0);
    assert_int_equal(b, 0);
    assert_int_equal(rhema_config_get_string(&cfg, "monitoring.metrics_path", &s), 0);
    assert_string_equal(s, "/m");
    rhema_config_release(&cfg);
    unlink(path);
}

/* -o goes through the same check; the message names the override. */
static void test_unimplemented_overrides(void **state)
{
    static const char *const bad[] = { "persistence.backend=memory",
                                       "monitoring.sample_interval_seconds=5" };
    static const char *const good[] = { "monitoring.sample_interval_seconds=10",
                                        "security.api_keys.enabled=false",
                                        "monitoring.enabled=false", "monitoring.metrics_path=/m" };
    struct rhema_config cfg;
    char path[4096], *err = NULL;

    (void)state;
    assert_int_equal(rhema_config_load(&cfg, NULL, bad, 2, NULL, &err), RHEMA_EINVAL);
    assert_err(err, "-o monitoring.sample_interval_seconds=5: monitoring.sample_interval_seconds: "
                    "not implemented in this version");
    free(err);
    assert_int_equal(rhema_config_load(&cfg, NULL, good, 4, NULL, &err), 0);
    rhema_config_release(&cfg);

    /* an override of a refused file value to the default makes the file load */
    assert_int_equal(load_text(&cfg, path, sizeof path,
                               "monitoring: {\n  sample_interval_seconds = 5; };\n", good + 1, 1,
                               &err),
                     RHEMA_EINVAL);
    assert_err(err, "%s:2: monitoring.sample_interval_seconds: not implemented in this version",
               path);
    free(err);
    rhema_config_release(&cfg);
    unlink(path);
    {
        static const char *const off[] = { "monitoring.sample_interval_seconds=10" };

        assert_int_equal(load_text(&cfg, path, sizeof path,
                                   "monitoring: {\n  sample_interval_seconds = 5; };\n", off, 1,
                                   &err),
                         0);
        rhema_config_release(&cfg);
        unlink(path);
    }
}

/*
 * ai_service.agent_management's old names (max_agents,
 * heartbeat_timeout_seconds) are read as the new ones with a notice naming
 * the file:line and the new key; both names at once is an error naming both.
 */
static void test_agent_management_aliases(void **state)
{
    struct rhema_config cfg;
    char path[4096], *err = NULL;
    const char *n;
    int64_t v;

    (void)state;
    if (load_text(&cfg, path, sizeof path,
                  "ai_service: { agent_management: {\n  max_agents = 7;\n"
                  "  heartbeat_timeout_seconds = 9; }; };\n",
                  NULL, 0, &err) != 0)
        fail_msg("%s", err);
    assert_int_equal(cfg.max_concurrent_agents, 7);
    assert_int_equal(cfg.agent_timeout_seconds, 9);
    assert_int_equal(
        rhema_config_get_int(&cfg, "ai_service.agent_management.agent_timeout_seconds", &v), 0);
    assert_int_equal(v, 9);
    n = rhema_config_notices(&cfg);
    assert_non_null(n);
    assert_err(n,
               "%s:2: 'ai_service.agent_management.max_agents' is the old name of "
               "'ai_service.agent_management.max_concurrent_agents', read as it; rename it\n"
               "%s:3: 'ai_service.agent_management.heartbeat_timeout_seconds' is the old name of "
               "'ai_service.agent_management.agent_timeout_seconds', read as it; rename it",
               path, path);
    rhema_config_release(&cfg);
    unlink(path);

    /* the new names: no notice */
    if (load_text(&cfg, path, sizeof path,
                  "ai_service: { agent_management: { max_concurrent_agents = 3;\n"
                  "  agent_timeout_seconds = 4; }; };\n",
                  NULL, 0, &err) != 0)
        fail_msg("%s", err);
    assert_int_equal(cfg.max_concurrent_agents, 3);
    assert_int_equal(cfg.agent_timeout_seconds, 4);
    assert_null(rhema_config_notices(&cfg));
    rhema_config_release(&cfg);
    unlink(path);

    /* both names: refused, naming both places */
    assert_int_equal(load_text(&cfg, path, sizeof path,
                               "ai_service: { agent_management: {\n  max_agents = 7;\n"
                               "  max_concurrent_agents = 8; }; };\n",
                               NULL, 0, &err),
                     RHEMA_EINVAL);
    assert_err(err,
               "%s:3: 'ai_service.agent_management.max_concurrent_agents' and its old name "
               "'ai_service.agent_management.max_agents' (%s:2) are both set; keep only "
               "'ai_service.agent_management.max_concurrent_agents'",
               path, path);
    free(err);
    unlink(path);

    /* the old name's range still applies */
    expect_one_error("ai_service: { agent_management: {\n  heartbeat_timeout_seconds = 0; }; };\n",
                     2, "'ai_service.agent_management.heartbeat_timeout_seconds' must be between 1 "
                        "and 86400 (got 0)");
}

static void test_release(void **state)
{
    struct rhema_config cfg;

    (void)state;
    memset(&cfg, 0, sizeof cfg);
    rhema_config_release(&cfg);
    rhema_config_release(NULL);
    assert_int_equal(rhema_config_load(&cfg, NULL, NULL, 0, NULL, NULL), 0);
    assert_non_null(cfg.listen);
    rhema_config_release(&cfg);
    assert_null(cfg.listen);
    assert_null(cfg.priv);
    rhema_config_release(&cfg);
}

static void test_log_level(void **state)
{
    (void)state;
    assert_int_equal(rhema_config_log_level("debug"), RHEMA_LOG_DEBUG);
    assert_int_equal(rhema_config_log_level("info"), RHEMA_LOG_INFO);
    assert_int_equal(rhema_config_log_level("notice"), RHEMA_LOG_NOTICE);
    assert_int_equal(rhema_config_log_level("warn"), RHEMA_LOG_WARN);
    assert_int_equal(rhema_config_log_level("error"), RHEMA_LOG_ERROR);
    assert_int_equal(rhema_config_log_level("loud"), -1);
    assert_int_equal(rhema_config_log_level(NULL), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_null_path),
        cmocka_unit_test(test_defaults_empty_file),
        cmocka_unit_test(test_full_config),
        cmocka_unit_test(test_unknown_key),
        cmocka_unit_test(test_wrong_type),
        cmocka_unit_test(test_out_of_range),
        cmocka_unit_test(test_int_needs_l_suffix),
        cmocka_unit_test(test_bad_enum),
        cmocka_unit_test(test_listen_addresses),
        cmocka_unit_test(test_multiple_errors),
        cmocka_unit_test(test_cross_checks),
        cmocka_unit_test(test_parse_error),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_overrides),
        cmocka_unit_test(test_override_errors),
        cmocka_unit_test(test_plugin_groups),
        cmocka_unit_test(test_foreach_plugin_group),
        cmocka_unit_test(test_group_lists),
        cmocka_unit_test(test_sample_config),
        cmocka_unit_test(test_ai_upstream_name_or_list),
        cmocka_unit_test(test_unimplemented_refused),
        cmocka_unit_test(test_unimplemented_all_reported),
        cmocka_unit_test(test_unimplemented_defaults_accepted),
        cmocka_unit_test(test_unimplemented_overrides),
        cmocka_unit_test(test_agent_management_aliases),
        cmocka_unit_test(test_release),
        cmocka_unit_test(test_log_level),
        cmocka_unit_test(test_check_targets_keys),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
