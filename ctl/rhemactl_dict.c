/*
 * rhemactl dict train -- build a zstd dictionary from sample messages, for
 * advanced_features.compression.zstd.dictionary.
 *
 *   rhemactl dict train --out FILE [--size BYTES] SAMPLE...
 *
 * Each SAMPLE is a file holding one message, or a directory whose regular
 * files are messages, or a file of newline-separated messages when
 * --lines is given.  The dictionary's id is printed: it travels in every
 * frame compressed with it, and a node without that dictionary refuses such
 * frames clearly.
 */
#include "rhema_build.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zdict.h>

#include "rhemactl_dict.h"

struct samples {
    unsigned char *buf;
    size_t len, cap;
    size_t *sizes;
    size_t n, ncap;
};

static int add_sample(struct samples *s, const void *data, size_t len)
{
    if (len == 0)
        return 0;
    if (s->len + len > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 1 << 20;
        while (cap < s->len + len)
            cap *= 2;
        void *nb = realloc(s->buf, cap);
        if (!nb)
            return -1;
        s->buf = nb;
        s->cap = cap;
    }
    if (s->n == s->ncap) {
        size_t cap = s->ncap ? s->ncap * 2 : 1024;
        void *nv = realloc(s->sizes, cap * sizeof *s->sizes);
        if (!nv)
            return -1;
        s->sizes = nv;
        s->ncap = cap;
    }
    memcpy(s->buf + s->len, data, len);
    s->len += len;
    s->sizes[s->n++] = len;
    return 0;
}

static int add_file(struct samples *s, const char *path, int lines)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "rhemactl: %s: %s\n", path, strerror(errno));
        return -1;
    }
    int rc = 0;
    if (lines) {
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;
        while (rc == 0 && (n = getline(&line, &cap, f)) > 0) {
            if (line[n - 1] == '\n')
                n--;
            rc = add_sample(s, line, (size_t)n);
        }
        free(line);
    } else { /* one message per file */
        unsigned char *all = NULL, chunk[65536];
        size_t n, total = 0;
        while (rc == 0 && (n = fread(chunk, 1, sizeof chunk, f)) > 0) {
            unsigned char *na = realloc(all, total + n);
            if (!na) {
                rc = -1;
                break;
            }
            all = na;
            memcpy(all + total, chunk, n);
            total += n;
        }
        if (rc == 0)
            rc = add_sample(s, all, total);
        free(all);
    }
    fclose(f);
    return rc;
}

int rhemactl_dict(int argc, char **argv)
{
    static const struct option longs[] = {{"out", required_argument, NULL, 'O'},
                                          {"size", required_argument, NULL, 's'},
                                          {"lines", no_argument, NULL, 'l'},
                                          {NULL, 0, NULL, 0}};
    const char *out = NULL;
    long size = 16384;
    int lines = 0, c, status = 1;
    struct samples s = {0};
    if (argc < 2 || strcmp(argv[1], "train") != 0) {
        fprintf(stderr, "usage: rhemactl dict train --out FILE [--size BYTES] [--lines] SAMPLE...\n");
        return 2;
    }
    optind = 2;
    while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (c) {
        case 'O': out = optarg; break;
        case 's': size = atol(optarg); break;
        case 'l': lines = 1; break;
        default: return 2;
        }
    }
    if (!out || optind >= argc || size < 256 || size > (64L << 20)) {
        fprintf(stderr, "usage: rhemactl dict train --out FILE [--size 256..67108864] [--lines] "
                        "SAMPLE...\n");
        return 2;
    }
    for (int i = optind; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "rhemactl: %s: %s\n", argv[i], strerror(errno));
            goto out;
        }
        if (S_ISDIR(st.st_mode)) {
            DIR *d = opendir(argv[i]);
            struct dirent *e;
            while (d && (e = readdir(d))) {
                char p[4096];
                struct stat fst;
                snprintf(p, sizeof p, "%s/%s", argv[i], e->d_name);
                if (stat(p, &fst) == 0 && S_ISREG(fst.st_mode) && add_file(&s, p, lines) != 0) {
                    closedir(d);
                    goto out;
                }
            }
            if (d)
                closedir(d);
        } else if (add_file(&s, argv[i], lines) != 0) {
            goto out;
        }
    }
    if (s.n < 10) {
        fprintf(stderr, "rhemactl: %zu sample(s); a useful dictionary needs many (hundreds)\n",
                s.n);
        goto out;
    }
    void *dict = malloc((size_t)size);
    if (!dict)
        goto out;
    size_t n = ZDICT_trainFromBuffer(dict, (size_t)size, s.buf, s.sizes, (unsigned)s.n);
    if (ZDICT_isError(n)) {
        fprintf(stderr, "rhemactl: training failed: %s\n", ZDICT_getErrorName(n));
        free(dict);
        goto out;
    }
    int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, dict, n) != (ssize_t)n || fsync(fd) != 0) {
        fprintf(stderr, "rhemactl: writing %s: %s\n", out, strerror(errno));
        if (fd >= 0)
            close(fd);
        free(dict);
        goto out;
    }
    close(fd);
    printf("%s: %zu-byte dictionary, id %u, from %zu samples (%zu bytes)\n", out, n,
           ZDICT_getDictID(dict, n), s.n, s.len);
    free(dict);
    status = 0;
out:
    free(s.buf);
    free(s.sizes);
    return status;
}
