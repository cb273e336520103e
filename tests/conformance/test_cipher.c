/*
 * test_cipher -- run the cipher conformance suite against the real cipher
 * plugins, loaded through the real loader.
 *
 * Prints TAP (checks are discovered at run time, so the plan comes last)
 * and exits non-zero when any check fails.
 *
 * Environment:
 *   RHEMA_PLUGIN_DIR             where cipher_<name>.so live (required)
 *   RHEMA_CONFORMANCE_CIPHERS    ciphers to test, separated by spaces or
 *                                commas (default: the three in-tree ones)
 *
 * The loader calls available() and refuses a cipher this machine cannot
 * run.  For aes256gcm on a CPU without AES-NI (as libsodium itself sees
 * it) that refusal is expected: the cipher is reported as skipped with the
 * loader's message, after checking that the message is a refusal for that
 * reason.  Everywhere else a refusal is a failure.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include <rhema/cipher.h>

#include "cipher_suite.h"
#include "plugin.h"

static unsigned tap_n, tap_failed;

/* One TAP line; detail goes after "# SKIP" or on a "#" line after a failure. */
static void tap(const char *cipher, const char *test, int ok, const char *detail)
{
    tap_n++;
    if (ok == RHEMA_CONF_SKIP) {
        printf("ok %u - %s: %s # SKIP %s\n", tap_n, cipher, test, detail ? detail : "");
    } else if (ok == RHEMA_CONF_PASS) {
        printf("ok %u - %s: %s\n", tap_n, cipher, test);
    } else {
        tap_failed++;
        printf("not ok %u - %s: %s\n", tap_n, cipher, test);
        if (detail != NULL && detail[0] != '\0')
            printf("# %s\n", detail);
    }
    fflush(stdout);
}

static void report(void *ctx, const char *test, int ok, const char *detail)
{
    tap(ctx, test, ok, detail);
}

/* The wire id of an in-tree cipher name, or 0 for another name. */
static uint32_t in_tree_id(const char *name)
{
    if (strcmp(name, "aes256gcm") == 0)
        return RHEMA_CIPHER_AES256GCM;
    if (strcmp(name, "chacha20poly1305") == 0)
        return RHEMA_CIPHER_CHACHA20POLY1305;
    if (strcmp(name, "xchacha20poly1305") == 0)
        return RHEMA_CIPHER_XCHACHA20POLY1305;
    return 0;
}

/* 1 when libsodium can run AES-256-GCM on this CPU. */
static int cpu_has_aesgcm(void)
{
    return sodium_init() >= 0 && crypto_aead_aes256gcm_is_available();
}

/*
 * The loader refused aes256gcm: fine only on a CPU without AES-NI, with
 * ENOTSUP and a message that says so.  Reports the refusal check and then
 * the cipher as skipped.
 */
static void aes_refused(const char *name, int rc, const char *err)
{
    char msg[1024];
    int ok = rc == RHEMA_ENOTSUP && err != NULL && strstr(err, "not available") != NULL &&
             strstr(err, "AES-NI") != NULL;
    snprintf(msg, sizeof msg, "loader returned %s: %s (want ENOTSUP naming AES-NI)",
             rhema_strerror(rc), err ? err : "(no message)");
    tap(name, "refused for lack of AES-NI, naming the reason",
        ok ? RHEMA_CONF_PASS : RHEMA_CONF_FAIL, msg);
    tap(name, "conformance", RHEMA_CONF_SKIP, err ? err : "refused by the loader");
}

static void run_cipher(struct rhema_plugin_registry *reg, const char *name)
{
    const struct rhema_loaded_plugin *lp = NULL;
    const char *dir = getenv("RHEMA_PLUGIN_DIR");
    struct rhema_conf_totals t = {0, 0, 0};
    uint32_t want_id = in_tree_id(name);
    char *err = NULL, msg[1024];
    int rc = rhema_plugin_load(reg, name, dir, RHEMA_KIND_CIPHER, &lp, &err);

    if (rc != 0) {
        if (want_id == RHEMA_CIPHER_AES256GCM && !cpu_has_aesgcm()) {
            aes_refused(name, rc, err);
        } else {
            snprintf(msg, sizeof msg, "RHEMA_PLUGIN_DIR=%s: %s", dir ? dir : "(unset)",
                     err ? err : rhema_strerror(rc));
            tap(name, "load", RHEMA_CONF_FAIL, msg);
        }
        free(err);
        return;
    }
    tap(name, "load", RHEMA_CONF_PASS, "");
    if (want_id != 0) {
        snprintf(msg, sizeof msg, "cipher_id %u, want %u", lp->vt.cipher.cipher_id, want_id);
        tap(name, "wire id matches the name",
            lp->vt.cipher.cipher_id == want_id ? RHEMA_CONF_PASS : RHEMA_CONF_FAIL, msg);
    }
    rhema_conformance_cipher(&lp->vt.cipher, report, (void *)name, &t);
    printf("# %s: %u passed, %u failed, %u skipped\n", name, t.passed, t.failed, t.skipped);
}

int main(void)
{
    struct rhema_plugin_registry *reg = NULL;
    const char *list = getenv("RHEMA_CONFORMANCE_CIPHERS");
    char *copy, *tok, *save = NULL;

    if (list == NULL || list[0] == '\0')
        list = "aes256gcm chacha20poly1305 xchacha20poly1305";
    if (rhema_plugins_new(&reg) != 0) {
        printf("Bail out! rhema_plugins_new failed\n");
        return 1;
    }
    copy = strdup(list);
    if (copy == NULL) {
        printf("Bail out! out of memory\n");
        rhema_plugins_free(reg);
        return 1;
    }
    for (tok = strtok_r(copy, " ,\t", &save); tok != NULL; tok = strtok_r(NULL, " ,\t", &save))
        run_cipher(reg, tok);
    free(copy);
    rhema_plugins_free(reg);

    printf("1..%u\n", tap_n);
    if (tap_failed != 0)
        printf("# %u of %u checks failed\n", tap_failed, tap_n);
    return tap_failed != 0 || tap_n == 0;
}
