/* SPDX-License-Identifier: MIT */
/*
 * measure.c - what the demo reports beside teacher-forced agreement: the
 * batched prefill against position-by-position prefill, and the cost of the
 * runtime's batch-invariant matrix products against OpenBLAS's SGEMV and
 * SGEMM on the model's own shapes.  Timings are medians over interleaved
 * repetitions (the machine is shared).
 */
#include "runtime.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int tl_measure_prefill(const tl_model *m, const int32_t *ids, int32_t n_prompts, int32_t len,
                       double *ms_seq, double *ms_batch)
{
    const int32_t d = m->cfg.hidden_size, L = m->cfg.n_layers;
    double *ts = malloc((size_t)n_prompts * sizeof(double));
    double *tb = malloc((size_t)n_prompts * sizeof(double));
    float *x = malloc((size_t)d * sizeof(float));
    tl_state st;
    int32_t p, i, l;
    int rc = 0;

    if (!ts || !tb || !x || tl_state_init(&st, m, len) != 0) {
        free(ts);
        free(tb);
        free(x);
        return -1;
    }
    for (p = 0; p < n_prompts && rc == 0; p++) {
        const int32_t *pr = ids + (size_t)p * (size_t)len;
        double t0 = now();
        for (i = 0; i < len && rc == 0; i++) {
            tl_embed(&st, pr[i], x);
            for (l = 0; l < L && rc == 0; l++)
                rc = tl_layer_forward(&st, l, i, x);
        }
        ts[p] = now() - t0;
        t0 = now();
        if (rc == 0)
            rc = tl_prefill(&st, pr, 0, len, x);
        tb[p] = now() - t0;
    }
    if (rc == 0) {
        *ms_seq = 1e3 * median(ts, n_prompts);
        *ms_batch = 1e3 * median(tb, n_prompts);
    }
    tl_state_free(&st);
    free(ts);
    free(tb);
    free(x);
    return rc;
}

/* The weight matrices of a layer, by tl_layer field, for OpenBLAS. */
static const float *raw(const tl_layer *L, int k)
{
    const float *const w[TL_MM_N] = { L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up, L->w_down };
    return w[k];
}

int tl_measure_matmul(const tl_model *m, int32_t batch, double *fixed_vs_sgemv_b1,
                      double *fixed_vs_sgemm_bn)
{
    enum { REPS = 15 };
    const tl_config *c = &m->cfg;
    const int64_t big = c->intermediate_size > c->hidden_size * 2 ? c->intermediate_size
                                                                  : 2 * (int64_t)c->hidden_size;
    float *x = malloc((size_t)batch * (size_t)big * sizeof(float));
    float *y = malloc((size_t)batch * (size_t)big * sizeof(float));
    double t[4][REPS];
    int64_t i;
    int32_t l, r, k, j;

    if (!x || !y) {
        free(x);
        free(y);
        return -1;
    }
    for (i = 0; i < (int64_t)batch * big; i++)
        x[i] = (float)((i * 7919) % 2003) / 2003.0f - 0.5f;
    for (r = 0; r < REPS; r++) {
        /* 0: SGEMV, 1: fixed B = 1, 2: SGEMM over the batch, 3: fixed over
         * the batch; every matrix of every layer. */
        for (j = 0; j < 4; j++) {
            double t0 = now();
            for (l = 0; l < c->n_layers; l++)
                for (k = 0; k < TL_MM_N; k++) {
                    const tl_matrix *mx = &m->layers[l].mm[k];
                    const float *w = raw(&m->layers[l], k);
                    const blasint R = mx->rows, C = mx->cols;
                    if (j == 0)
                        cblas_sgemv(CblasRowMajor, CblasNoTrans, R, C, 1.0f, w, C, x, 1, 0.0f,
                                    y, 1);
                    else if (j == 1)
                        tl_matmul(mx, 1, x, C, y, R);
                    else if (j == 2)
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, batch, R, C, 1.0f,
                                    x, C, w, C, 0.0f, y, R);
                    else
                        tl_matmul(mx, batch, x, C, y, R);
                }
            t[j][r] = now() - t0;
        }
    }
    *fixed_vs_sgemv_b1 = median(t[1], REPS) / median(t[0], REPS);
    *fixed_vs_sgemm_bn = median(t[3], REPS) / median(t[2], REPS);
    free(x);
    free(y);
    return 0;
}
