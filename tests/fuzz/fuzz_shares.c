/*
 * fuzz_shares -- Shamir key shares as `rhemactl keys recover` reads them
 * (ctl/rhemactl_keys.c: cmd_recover and its line parser, which are static:
 * the file is compiled into this harness).  The input is a share file.
 * Every share line ends with a BLAKE2b check that a mutation breaks, so
 * when the first byte is odd the harness first recomputes each line's
 * check (as a careful attacker would): the fields behind it, the
 * split/threshold consistency and the recombination are fuzzed too.
 */
#include "rhemactl_keys.c"

#include "fixture.h"

static char shares[320], out[320];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    const char *dir = fuzz_tmpdir();
    if (!dir || sodium_init() < 0)
        abort();
    snprintf(shares, sizeof shares, "%s/shares", dir);
    snprintf(out, sizeof out, "%s/master.key", dir);
    gfshare_fill_rand = fill_rand; /* as rhemactl_keys() sets it */
    return 0;
}

/* Replace the check after each line's last ':' with the right one. */
static size_t fix_checks(const char *in, size_t n, char *buf, size_t cap)
{
    size_t o = 0, i = 0;
    while (i < n) {
        size_t e = i;
        while (e < n && in[e] != '\n')
            e++;
        size_t last = e;
        for (size_t j = i; j < e; j++)
            if (in[j] == ':')
                last = j;
        if (last < e && last - i < 256 && o + (last - i) + 11 < cap) {
            char body[256], ck_hex[9];
            unsigned char ck[4];
            memcpy(body, in + i, last - i);
            body[last - i] = '\0';
            line_check(body, ck);
            hex(ck, 4, ck_hex);
            memcpy(buf + o, in + i, last - i + 1);
            o += last - i + 1;
            memcpy(buf + o, ck_hex, 8);
            o += 8;
        } else if (o + (e - i) + 1 < cap) {
            memcpy(buf + o, in + i, e - i);
            o += e - i;
        }
        if (o + 1 < cap)
            buf[o++] = '\n';
        i = e + 1;
    }
    return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char buf[1 << 16];
    char *argv[] = {shares};
    const char *text = (const char *)data + 1;
    size_t len = size ? size - 1 : 0;
    if (size < 1 || size > 32768)
        return 0;
    if (data[0] & 1) {
        len = fix_checks(text, len, buf, sizeof buf);
        text = buf;
    }
    if (fuzz_write_file(shares, text, len) != 0)
        abort();
    unlink(out);
    int status = cmd_recover(1, argv, out, 1);
    /* the key is written only when the shares rebuild it, and then in full, 0600 */
    struct stat st;
    int written = stat(out, &st) == 0;
    fuzz_assert(status == 0 ? written && st.st_size == RHEMA_MASTER_KEY_BYTES &&
                                  (st.st_mode & 077) == 0
                            : !written);
    return 0;
}
