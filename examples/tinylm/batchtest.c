/* SPDX-License-Identifier: MIT */
/*
 * batchtest.c - the runtime's batch-invariance test (`tinylm check-batch`):
 * every position's hidden state after every layer, its K/V cache rows and its
 * logits are bitwise equal computed alone (one position per layer call) and
 * inside batches of 2..16 consecutive positions, and through the batched
 * prefill's chunks of up to TL_MAX_BATCH.  Inputs are arbitrary token ids:
 * invariance does not depend on what the tokens mean.
 */
#include "tinylm.h"

#include <eevp.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_POS 40

typedef struct ref_run {
    float *hid;    /* [pos][layer][d] */
    float *logits; /* [pos][V] */
} ref_run;

static int same(const float *a, const float *b, size_t n)
{
    return memcmp(a, b, n * sizeof(float)) == 0;
}

/* Positions 0 .. N_POS-1 in chunks of B through every layer of st (fresh),
 * then the logits of each chunk in one call.  Records into ref when record
 * is set, else compares with it; returns the number of mismatches. */
static int64_t run_chunks(const tl_model *m, tl_state *st, eevp_head *lm, void *work,
                          const int32_t *ids, int32_t B, ref_run *ref, int record,
                          int64_t *compared)
{
    const tl_config *c = &m->cfg;
    const int32_t d = c->hidden_size, L = c->n_layers, V = c->vocab_size;
    float *x = malloc((size_t)B * (size_t)d * sizeof(float));
    float *z = malloc((size_t)B * (size_t)V * sizeof(float));
    int64_t bad = 0;
    int32_t p0, i, l;

    if (x == NULL || z == NULL) {
        fprintf(stderr, "check-batch: out of memory\n");
        exit(2);
    }
    for (p0 = 0; p0 < N_POS; p0 += B) {
        const int32_t n = N_POS - p0 < B ? N_POS - p0 : B;
        for (i = 0; i < n; i++)
            tl_embed(st, ids[p0 + i], x + (size_t)i * (size_t)d);
        for (l = 0; l < L; l++) {
            if (tl_layer_forward_batch(st, l, p0, n, x, d) != 0) {
                fprintf(stderr, "check-batch: layer %d failed\n", (int)l);
                exit(2);
            }
            for (i = 0; i < n; i++) {
                float *h = ref->hid + ((size_t)(p0 + i) * (size_t)L + (size_t)l) * (size_t)d;
                if (record) {
                    memcpy(h, x + (size_t)i * (size_t)d, (size_t)d * sizeof(float));
                    continue;
                }
                (*compared)++;
                if (!same(h, x + (size_t)i * (size_t)d, (size_t)d) && bad++ < 5)
                    printf("FAIL: batch %d: position %d, layer %d: hidden state differs from "
                           "the position alone\n", (int)B, (int)(p0 + i), (int)l);
            }
        }
        /* The chunk's logits in calls of up to 16 rows, the library's
         * batch-invariant range. */
        for (i = 0; i < n; i += 16) {
            int32_t r = n - i < 16 ? n - i : 16;
            if (eevp_head_logits(lm, r, x + (size_t)i * (size_t)d, d, z + (size_t)i * (size_t)V,
                                 V, work) != EEVP_OK) {
                fprintf(stderr, "check-batch: eevp_head_logits failed\n");
                exit(2);
            }
        }
        for (i = 0; i < n; i++) {
            float *zr = ref->logits + (size_t)(p0 + i) * (size_t)V;
            if (record) {
                memcpy(zr, z + (size_t)i * (size_t)V, (size_t)V * sizeof(float));
                continue;
            }
            (*compared)++;
            if (!same(zr, z + (size_t)i * (size_t)V, (size_t)V) && bad++ < 5)
                printf("FAIL: batch %d: position %d: logits differ from the position alone\n",
                       (int)B, (int)(p0 + i));
        }
    }
    free(x);
    free(z);
    return bad;
}

static int64_t same_cache(const tl_state *a, const tl_state *b, const char *what,
                          int64_t *compared)
{
    const tl_config *c = &a->m->cfg;
    const size_t kvd = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    int64_t bad = 0;
    int32_t l, p;
    for (l = 0; l < c->n_layers; l++)
        for (p = 0; p < N_POS; p++) {
            *compared += 2;
            if ((!same(tl_cache_k(a, l, p), tl_cache_k(b, l, p), kvd) ||
                 !same(tl_cache_v(a, l, p), tl_cache_v(b, l, p), kvd)) && bad++ < 5)
                printf("FAIL: %s: K/V of layer %d, position %d differ from the positions "
                       "alone\n", what, (int)l, (int)p);
        }
    return bad;
}

/* tl_matmul against a reference written out here (row-major W, one fmaf
 * chain per output over the columns in order), on both kernels, for
 * n = 1..20 rows: every output bitwise equal. */
static int64_t check_matmul_one(const float *w, int32_t rows, int32_t cols, const char *what,
                                int64_t *compared)
{
    enum { NMAX = 20 };
    tl_matrix mx, mp;
    float *x = malloc((size_t)NMAX * (size_t)cols * sizeof(float));
    float *y = malloc((size_t)NMAX * (size_t)rows * sizeof(float));
    float *ref = malloc((size_t)NMAX * (size_t)rows * sizeof(float));
    int64_t bad = 0, i, r, c;
    int32_t n, portable;
    uint32_t seed = 777u;
    if (!x || !y || !ref || tl_matrix_pack(&mx, w, rows, cols) != 0) {
        fprintf(stderr, "check-batch: out of memory\n");
        exit(2);
    }
    for (i = 0; i < (int64_t)NMAX * cols; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = ((float)(seed >> 8) / 16777216.0f - 0.5f) * 4.0f;
    }
    for (i = 0; i < NMAX; i++)
        for (r = 0; r < rows; r++) {
            float acc = 0.0f;
            for (c = 0; c < cols; c++)
                acc = fmaf(w[r * cols + c], x[i * cols + c], acc);
            ref[i * rows + r] = acc;
        }
    mp = mx;
    mp.portable = 1;
    for (portable = 0; portable < 2; portable++)
        for (n = 1; n <= NMAX; n++) {
            memset(y, 0xff, (size_t)n * (size_t)rows * sizeof(float));
            tl_matmul(portable ? &mp : &mx, n, x, cols, y, rows);
            (*compared)++;
            if (!same(y, ref, (size_t)n * (size_t)rows) && bad++ < 5)
                printf("FAIL: matmul %s (%d x %d), %s kernel, %d rows: differs from the "
                       "reference chain\n", what, (int)rows, (int)cols,
                       portable ? "portable" : "SIMD", (int)n);
        }
    tl_matrix_free(&mx);
    free(x);
    free(y);
    free(ref);
    return bad;
}

static int64_t check_matmul(const tl_model *m, int64_t *compared)
{
    const tl_layer *L = &m->layers[0];
    const tl_config *c = &m->cfg;
    const int32_t d = c->hidden_size, ff = c->intermediate_size;
    const int32_t kvd = c->n_kv_heads * c->head_dim;
    int64_t bad = check_matmul_one(L->wk, kvd, d, "k", compared);
    bad += check_matmul_one(L->w_down, d, ff, "down", compared);
    /* Rows and columns that fill no panel or vector evenly: the tails. */
    bad += check_matmul_one(L->w_up, 37, 29, "37 x 29 corner of up", compared);
    return bad;
}

int tl_check_batch(const tl_model *m, eevp_head *lm)
{
    const tl_config *c = &m->cfg;
    const int32_t d = c->hidden_size, L = c->n_layers, V = c->vocab_size;
    int32_t ids[N_POS], B, i;
    uint32_t seed = 12345u;
    ref_run ref;
    tl_state alone, st;
    int64_t bad = 0, compared = 0, ws = eevp_head_workspace_size(lm, 16);
    float *last = malloc((size_t)d * sizeof(float));
    void *work = NULL;

    ref.hid = malloc((size_t)N_POS * (size_t)L * (size_t)d * sizeof(float));
    ref.logits = malloc((size_t)N_POS * (size_t)V * sizeof(float));
    if (ws < 0 || posix_memalign(&work, 64, (size_t)ws) != 0 || !ref.hid || !ref.logits ||
        !last || tl_state_init(&alone, m, N_POS) != 0) {
        fprintf(stderr, "check-batch: out of memory\n");
        exit(2);
    }
    for (i = 0; i < N_POS; i++) {
        seed = seed * 1664525u + 1013904223u;
        ids[i] = i == 0 ? c->bos_id : (int32_t)(3 + (seed >> 8) % (uint32_t)(V - 3));
    }
    bad += check_matmul(m, &compared);
    run_chunks(m, &alone, lm, work, ids, 1, &ref, 1, &compared);
    for (B = 2; B <= 16; B++) {
        char what[32];
        if (tl_state_init(&st, m, N_POS) != 0) {
            fprintf(stderr, "check-batch: out of memory\n");
            exit(2);
        }
        bad += run_chunks(m, &st, lm, work, ids, B, &ref, 0, &compared);
        snprintf(what, sizeof what, "batch %d", (int)B);
        bad += same_cache(&st, &alone, what, &compared);
        tl_state_free(&st);
    }
    /* The batched prefill: all N_POS positions in one chunk. */
    if (tl_state_init(&st, m, N_POS) != 0 || tl_prefill(&st, ids, 0, N_POS, last) != 0) {
        fprintf(stderr, "check-batch: prefill failed\n");
        exit(2);
    }
    compared++;
    if (!same(last, ref.hid + ((size_t)(N_POS - 1) * (size_t)L + (size_t)(L - 1)) * (size_t)d,
              (size_t)d))
        bad++, printf("FAIL: prefill: the last position's final state differs\n");
    bad += same_cache(&st, &alone, "prefill", &compared);
    tl_state_free(&st);
    tl_state_free(&alone);
    printf("batch invariance: %d positions, batches of 1..16 and a prefill of %d: %lld "
           "comparisons (the product against its reference on both kernels, hidden states "
           "of every layer, logits, K/V rows), %lld differ (%s kernel)\n",
           N_POS, N_POS, (long long)compared, (long long)bad,
           tl_matmul_simd() ? "AVX2/FMA" : "portable");
    free(ref.hid);
    free(ref.logits);
    free(last);
    free(work);
    return bad == 0 ? 0 : 1;
}
