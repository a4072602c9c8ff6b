/* SPDX-License-Identifier: MIT */
/*
 * text.c - WordNet's glosses (Debian wordnet-base) as text lines, with the
 * same extraction and split as train/wordnet_text.py: line i of the four
 * data files (noun, verb, adj, adv; licence header lines skipped) goes to
 * validation when i % 50 == 0, to test when i % 50 == 1, else to training.
 * A line reads "lemma, lemma: gloss", underscores as spaces.
 */
#include "tinylm.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* "offset lexfile type wcnt(hex) word lexid ... | gloss" -> text, or NULL. */
static char *synset_text(const char *raw)
{
    const char *bar = strchr(raw, '|'), *p = raw;
    char *out, *o;
    long n, j;
    int f;
    size_t cap;

    if (raw[0] == ' ' || bar == NULL)
        return NULL;
    cap = strlen(raw) + 8;
    if ((out = malloc(cap)) == NULL)
        return NULL;
    o = out;
    for (f = 0; f < 3; f++) {             /* skip offset, lex_filenum, ss_type */
        p = strchr(p, ' ');
        if (p == NULL) {
            free(out);
            return NULL;
        }
        p++;
    }
    n = strtol(p, NULL, 16);
    p = strchr(p, ' ');
    for (j = 0; j < n && p != NULL; j++) {
        const char *w = p + 1, *e = strchr(w, ' ');
        if (e == NULL)
            break;
        if (j > 0) {
            *o++ = ',';
            *o++ = ' ';
        }
        for (; w < e && *w != '('; w++)
            *o++ = *w == '_' ? ' ' : *w;
        p = strchr(e + 1, ' ');      /* skip lex_id */
    }
    *o++ = ':';
    *o++ = ' ';
    p = bar + 1;
    while (*p && isspace((unsigned char)*p))
        p++;
    while (*p)
        *o++ = *p++;
    while (o > out && isspace((unsigned char)o[-1]))
        o--;
    *o = '\0';
    return out;
}

char **tl_wordnet_lines(const char *dir, int split, int64_t *n, char *msg, size_t msg_size)
{
    static const char *parts[] = { "noun", "verb", "adj", "adv" };
    char **lines = NULL, path[4200], *buf = NULL;
    size_t bufcap = 0;
    int64_t count = 0, cap = 0, idx = 0;
    int pi;

    *n = 0;
    for (pi = 0; pi < 4; pi++) {
        FILE *f;
        ssize_t len;
        snprintf(path, sizeof path, "%s/data.%s", dir, parts[pi]);
        f = fopen(path, "r");
        if (f == NULL) {
            snprintf(msg, msg_size, "%s: cannot open (install Debian's wordnet-base)", path);
            goto fail;
        }
        while ((len = getline(&buf, &bufcap, f)) >= 0) {
            char *t;
            int s;
            if (len > 0 && buf[len - 1] == '\n')
                buf[len - 1] = '\0';
            t = synset_text(buf);
            if (t == NULL)
                continue;
            s = idx % 50 == 0 ? 1 : idx % 50 == 1 ? 2 : 0;
            idx++;
            if (s != split) {
                free(t);
                continue;
            }
            if (count == cap) {
                char **nl;
                cap = cap ? cap * 2 : 1024;
                nl = realloc(lines, (size_t)cap * sizeof *nl);
                if (nl == NULL) {
                    free(t);
                    fclose(f);
                    snprintf(msg, msg_size, "out of memory");
                    goto fail;
                }
                lines = nl;
            }
            lines[count++] = t;
        }
        fclose(f);
    }
    free(buf);
    *n = count;
    return lines;
fail:
    free(buf);
    tl_lines_free(lines, count);
    return NULL;
}

void tl_lines_free(char **lines, int64_t n)
{
    int64_t i;
    for (i = 0; lines != NULL && i < n; i++)
        free(lines[i]);
    free(lines);
}
