/*
 * fixture -- what the harnesses that need files, plugins or a keyring
 * share (fixture.c).
 *
 * The keyring fixture (tests/fuzz/fixtures/: master.key and keyring, made
 * by gen_seeds) is the keyring that sealed the envelope and backup seeds:
 * a harness opens a copy of it, so the seeds decrypt and their mutations
 * reach past the header checks.
 */
#ifndef RHEMA_TESTS_FUZZ_FIXTURE_H
#define RHEMA_TESTS_FUZZ_FIXTURE_H

#include "fuzz.h"
#include "keyring.h"
#include "plugin.h"

/* RHEMA_PLUGIN_DIR, else plugins/.libs (the build directory's). */
const char *fuzz_plugin_dir(void);
/* RHEMA_FUZZ_FIXTURES, else tests/fuzz/fixtures of the source tree. */
const char *fuzz_fixture_dir(void);
/* Load the plugins `names` (NULL-terminated) of `kind`; one that fails is reported and skipped. */
void fuzz_load_plugins(struct rhema_plugin_registry *reg, uint32_t kind, const char *const *names);

struct fuzz_keyring {
    struct rhema_plugin_registry *reg; /* the cipher plugins */
    struct rhema_cipher_table table;
    struct rhema_master *master;
    struct rhema_keyring *kr; /* after fuzz_keyring_start */
    char key_file[300], ring[300];
};

/*
 * Load the cipher plugins and the master key: a copy of the fixture in the
 * temporary directory, or (create, gen_seeds) a new random master key in
 * the fixture directory with no keyring yet.
 */
int fuzz_keyring_open(struct fuzz_keyring *k, int create);
const struct rhema_cipher_plugin *fuzz_cipher(const struct fuzz_keyring *k, const char *name);
/* Open k->ring (creating it) with cipher c for new versions. */
int fuzz_keyring_start(struct fuzz_keyring *k, const struct rhema_cipher_plugin *c);
void fuzz_keyring_close(struct fuzz_keyring *k);

#endif /* RHEMA_TESTS_FUZZ_FIXTURE_H */
