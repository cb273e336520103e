/*
 * fuzz_keybackup -- key backup archives (keyring.h) as rhemad and
 * rhemactl read them: rhema_master_for_file (the KDF header rhemactl reads
 * first), rhema_keyring_verify_backup (rhemactl keys verify) and
 * rhema_keyring_restore_file (rhemactl keys restore: the same archive
 * loader and merge as POST /v1/keys/restore, into a fresh copy of the
 * fixture keyring each time, so one input never changes the next).  The
 * archive goes through a file: these functions read a path, as the
 * daemon does.  The seeds are backups of the fixture keyring; a mutation
 * past the header fails authentication, so the contents' parser behind it
 * (the keyring image) is reached only by the seeds themselves.
 */
#include "rhema_build.h"

#include "fixture.h"

static struct fuzz_keyring k;
static char archive[320], ring[320];
static unsigned char *ring_bytes;
static size_t ring_len;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    if (fuzz_keyring_open(&k, 0) != 0)
        abort();
    snprintf(archive, sizeof archive, "%s/archive.bak", fuzz_tmpdir());
    snprintf(ring, sizeof ring, "%s/restored", fuzz_tmpdir());
    FILE *f = fopen(k.ring, "rb");
    if (!f)
        abort();
    ring_bytes = malloc(1 << 20);
    ring_len = ring_bytes ? fread(ring_bytes, 1, 1 << 20, f) : 0;
    fclose(f);
    if (!ring_len)
        abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[RHEMA_KEYRING_ERR_MAX];
    struct rhema_master *m = NULL;
    struct rhema_keyring_backup_info info;
    if (fuzz_write_file(archive, data, size) != 0)
        abort();
    if (rhema_master_for_file(archive, k.key_file, NULL, &m, err) == 0)
        rhema_master_free(m);
    memset(&info, 0, sizeof info);
    err[0] = '\0';
    int rc = rhema_keyring_verify_backup(archive, k.master, &info, err);
    if (rc == 0)
        fuzz_assert(info.versions > 0 && info.newest_version > 0);
    else
        fuzz_assert(rc < 0 && err[0]);
    if (fuzz_write_file(ring, ring_bytes, ring_len) != 0)
        abort();
    err[0] = '\0';
    int rrc = rhema_keyring_restore_file(k.master, archive, ring, err);
    /* restore verifies first: what does not verify changes nothing */
    if (rc != 0)
        fuzz_assert(rrc != 0);
    return 0;
}
