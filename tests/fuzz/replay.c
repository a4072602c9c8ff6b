/* SPDX-License-Identifier: MIT */
/*
 * replay.c - runs a fuzz target's LLVMFuzzerTestOneInput over files, with
 * no libFuzzer needed: `replay FILE|DIR...`.  `make check` links each
 * target with this driver and replays the seed and regression corpora
 * (tests/fuzz/corpus/<target>/, tests/fuzz/regress/<target>/); an input
 * that violates an invariant aborts, which fails the run.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path)
{
    FILE *fp = fopen(path, "rb");
    uint8_t *buf;
    long n;
    if (!fp) {
        perror(path);
        return 1;
    }
    if (fseek(fp, 0, SEEK_END) != 0 || (n = ftell(fp)) < 0 || fseek(fp, 0, SEEK_SET) != 0) {
        fclose(fp);
        perror(path);
        return 1;
    }
    /* An exact-size heap copy, so that a sanitizer sees reads past the end. */
    buf = malloc(n > 0 ? (size_t)n : 1);
    if (!buf || (n > 0 && fread(buf, 1, (size_t)n, fp) != (size_t)n)) {
        fclose(fp);
        free(buf);
        fprintf(stderr, "%s: read failed\n", path);
        return 1;
    }
    fclose(fp);
    LLVMFuzzerTestOneInput(buf, (size_t)n);
    free(buf);
    return 0;
}

static int cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv)
{
    int i, bad = 0;
    long files = 0;
    /* One empty input first: the all-zero program must be handled too. */
    LLVMFuzzerTestOneInput((const uint8_t *)"", 0);
    for (i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            perror(argv[i]);
            return 1;
        }
        if (S_ISDIR(st.st_mode)) {
            DIR *dir = opendir(argv[i]);
            struct dirent *e;
            char **names = NULL;
            size_t n = 0, cap = 0, j;
            if (!dir) {
                perror(argv[i]);
                return 1;
            }
            while ((e = readdir(dir)) != NULL) {
                char *p;
                if (e->d_name[0] == '.')
                    continue;
                if (n == cap) {
                    char **nn = realloc(names, (cap = cap ? 2 * cap : 64) * sizeof *names);
                    if (!nn)
                        return 1;
                    names = nn;
                }
                p = malloc(strlen(argv[i]) + strlen(e->d_name) + 2);
                if (!p)
                    return 1;
                sprintf(p, "%s/%s", argv[i], e->d_name);
                names[n++] = p;
            }
            closedir(dir);
            qsort(names, n, sizeof *names, cmp);
            for (j = 0; j < n; j++) {
                bad |= run_file(names[j]);
                files++;
                free(names[j]);
            }
            free(names);
        } else {
            bad |= run_file(argv[i]);
            files++;
        }
    }
    printf("%s: %ld inputs replayed\n", argv[0], files);
    return bad;
}
