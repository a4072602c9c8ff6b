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

/* One shape: the four timings of n_reps interleaved repetitions over every
 * layer's matrix of that kind. */
typedef struct mm_kind {
    const char *name;
    size_t off;      /* offsetof the weight in tl_layer */
    int rows_q, cols_q; /* 1: n_heads*head_dim, 2: kv, 3: ff, 0: d */
} mm_kind;

static int64_t dim_of(const tl_config *c, int code)
{
    return code == 1 ? (int64_t)c->n_heads * c->head_dim
                     : code == 2 ? (int64_t)c->n_kv_heads * c->head_dim
                                 : code == 3 ? c->intermediate_size : c->hidden_size;
}

int tl_measure_matmul(const tl_model *m, int32_t batch, double *fixed_vs_sgemv_b1,
                      double *fixed_vs_sgemm_bn)
{
    static const mm_kind kinds[] = {
        { "q", offsetof(tl_layer, wq), 1, 0 },     { "k", offsetof(tl_layer, wk), 2, 0 },
        { "v", offsetof(tl_layer, wv), 2, 0 },     { "o", offsetof(tl_layer, wo), 0, 1 },
        { "gate", offsetof(tl_layer, w_gate), 3, 0 }, { "up", offsetof(tl_layer, w_up), 3, 0 },
        { "down", offsetof(tl_layer, w_down), 0, 3 },
    };
    enum { REPS = 15 };
    const tl_config *c = &m->cfg;
    const int64_t big = c->intermediate_size > c->hidden_size * 2 ? c->intermediate_size
                                                                  : 2 * (int64_t)c->hidden_size;
    float *x = malloc((size_t)batch * (size_t)big * sizeof(float));
    float *y = malloc((size_t)batch * (size_t)big * sizeof(float));
    double t[4][REPS];
    eevp_head **heads = calloc((size_t)c->n_layers * 7, sizeof *heads);
    void *work = NULL;
    int64_t ws = 0, i;
    int32_t l, r, k, j;
    int rc = 0;

    if (!x || !y || !heads) {
        rc = -1;
        goto out;
    }
    for (i = 0; i < (int64_t)batch * big; i++)
        x[i] = (float)((i * 7919) % 2003) / 2003.0f - 0.5f;
    for (l = 0; l < c->n_layers && rc == 0; l++)
        for (k = 0; k < 7 && rc == 0; k++) {
            eevp_head_options o = EEVP_HEAD_OPTIONS_INIT;
            char msg[128];
            int64_t w;
            o.n_vocab = dim_of(c, kinds[k].rows_q);
            o.dim = dim_of(c, kinds[k].cols_q);
            o.weights = *(const float *const *)((const char *)&m->layers[l] + kinds[k].off);
            o.norm = EEVP_NORM_NONE;
            if (eevp_head_create(&heads[l * 7 + k], &o, msg, sizeof msg) != EEVP_OK)
                rc = -1;
            else if ((w = eevp_head_workspace_size(heads[l * 7 + k], 16)) > ws)
                ws = w;
        }
    if (rc != 0 || posix_memalign(&work, 64, (size_t)ws) != 0) {
        work = NULL;
        rc = -1;
        goto out;
    }
    for (r = 0; r < REPS; r++) {
        double t0;
        /* 0: SGEMV, 1: fixed B = 1, 2: SGEMM over the batch, 3: fixed in
         * chunks of 16 over the batch; every matrix of every layer. */
        for (j = 0; j < 4; j++) {
            t0 = now();
            for (l = 0; l < c->n_layers; l++)
                for (k = 0; k < 7; k++) {
                    const float *w =
                        *(const float *const *)((const char *)&m->layers[l] + kinds[k].off);
                    const int64_t R = dim_of(c, kinds[k].rows_q), C = dim_of(c, kinds[k].cols_q);
                    eevp_head *h = heads[l * 7 + k];
                    int32_t b;
                    if (j == 0)
                        cblas_sgemv(CblasRowMajor, CblasNoTrans, (blasint)R, (blasint)C, 1.0f, w,
                                    (blasint)C, x, 1, 0.0f, y, 1);
                    else if (j == 1)
                        rc |= eevp_head_logits(h, 1, x, C, y, R, work);
                    else if (j == 2)
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, batch, (blasint)R,
                                    (blasint)C, 1.0f, x, (blasint)C, w, (blasint)C, 0.0f, y,
                                    (blasint)R);
                    else
                        for (b = 0; b < batch; b += 16)
                            rc |= eevp_head_logits(h, batch - b < 16 ? batch - b : 16,
                                                   x + (size_t)b * (size_t)C, C,
                                                   y + (size_t)b * (size_t)R, R, work);
                }
            t[j][r] = now() - t0;
        }
    }
    if (rc == 0) {
        double m0 = median(t[0], REPS), m1 = median(t[1], REPS);
        double m2 = median(t[2], REPS), m3 = median(t[3], REPS);
        *fixed_vs_sgemv_b1 = m1 / m0;
        *fixed_vs_sgemm_bn = m3 / m2;
    }
out:
    if (heads != NULL)
        for (l = 0; l < c->n_layers * 7; l++)
            eevp_head_free(heads[l]);
    free(heads);
    free(work);
    free(x);
    free(y);
    return rc == 0 ? 0 : -1;
}
