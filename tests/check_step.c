/* SPDX-License-Identifier: MIT */
/*
 * check_step.c - the per-token step against an independent reference
 * decoding simulation.
 *
 * For every configuration of the table, hidden states are built per layer so
 * that sequences become confident at different depths (h_l = base + jitter_l
 * + a_s * (l+1)/L * u_tok, with a per-sequence sharpness a_s, some of them 0).
 * The simulation below re-implements the method from the header and the
 * design notes (checked layers, pruning layer, top-K in the order, confidence
 * renormalised over the pruned set, strict c > lambda, final policy, the
 * criteria's per-token state) with the double-precision helpers of ref.h,
 * and the library must agree on reason, token, layer, pruned flag,
 * confidence, threshold and the candidate list of every sequence.
 *
 * A decision the reference cannot call (confidence within the rounding
 * tolerance of lambda, a top-1/top-2 near-tie where the token or the
 * stability history depends on it, a K-th/K+1-th near-tie at the pruning
 * layer) removes the sequence from the comparison for that token; each
 * configuration asserts that fewer than 10% of its sequences were removed.
 *
 * Statistics are checked against the analytic cost of the path every
 * sequence took (checks, FLOPs, bytes, baselines, K-coverage, histogram).
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eevp.h"
#include "ref.h"

Suite *make_step_suite(void);

/* ------------------------------------------------------------------------ */
/* Configurations                                                           */
/* ------------------------------------------------------------------------ */

enum { ROWS_ALL = 0, ROWS_COMPACT = 1, ROWS_MAP = 2 };
enum { BIAS_NONE = 0, BIAS_RANDOM = 1, BIAS_MASK = 2 };

typedef struct step_cfg {
    int V, d;
    int w_pad;        /* W row stride = d + w_pad (pad filled with NaN) */
    int h_pad;        /* hidden ld = d + h_pad (pad filled with NaN) */
    int L, f, i, p;   /* p = -1: f */
    int k;
    int n_seq;
    int final_policy;
    int criterion;
    float threshold;
    int calm;         /* EEVP_SCHEDULE_CALM with tau 4 and max_length 64 */
    int patience;
    int norm;
    int bias;         /* BIAS_* */
    float scale, cap;
    int offset;
    int rows;         /* ROWS_* */
    int all_layers;   /* hand over unrequired layers too (NaN rows) */
    int copy;         /* 1: EEVP_HEAD_COPY, then the caller's arrays are wiped;
                         2: EEVP_HEAD_NO_SIMD */
    float gain;       /* sharpness multiplier of the constructed states */
    int n_tokens;
    int mix;          /* assert some early exits and some last-layer ones */
} step_cfg;

#define T2 EEVP_CRITERION_TOP2_GAP
#define MP EEVP_CRITERION_MAX_PROB
#define EN EEVP_CRITERION_ENTROPY
#define SA EEVP_CRITERION_SATURATION
#define ST EEVP_CRITERION_STABILITY
#define JS EEVP_CRITERION_JS
#define FF EEVP_FINAL_FULL
#define FP EEVP_FINAL_PRUNED
#define NN EEVP_NORM_NONE
#define RMS EEVP_NORM_RMS
#define LN EEVP_NORM_LAYER

/* V, d, w_pad, h_pad, L, f, i, p, k, n_seq, final, criterion, threshold, calm,
 * patience, norm, bias, scale, cap, offset, rows, all_layers, copy, gain,
 * n_tokens, mix */
static const step_cfg step_table[] = {
    /* 0: the method's default: top-2 gap 0.9, K = 16, p = f */
    {97, 16, 0, 0, 6, 1, 1, -1, 16, 4, FF, T2, 0.9f, 0, 2, NN, BIAS_NONE, 1, 0, 0, ROWS_ALL, 0, 0, 1.0f, 3, 1},
    /* 1: p < f, interval 2, offset, RMS norm with weights, random bias, compacted rows */
    {300, 33, 0, 0, 8, 2, 2, 0, 16, 8, FF, MP, 0.8f, 0, 2, RMS, BIAS_RANDOM, 1, 0, 1000, ROWS_COMPACT, 0, 0, 1.0f, 2, 1},
    /* 2: K = 1, layer norm, shuffled row map, p == f == 3, interval 3 */
    {1000, 33, 0, 0, 12, 3, 3, 3, 1, 16, FF, T2, 0.5f, 0, 2, LN, BIAS_NONE, 1, 0, 0, ROWS_MAP, 0, 0, 1.0f, 1, 0},
    /* 3: d = 1 */
    {97, 1, 0, 0, 5, 0, 1, -1, 16, 6, FF, EN, 0.5f, 0, 2, RMS, BIAS_NONE, 2.0f, 0, 0, ROWS_ALL, 0, 0, 1.0f, 2, 0},
    /* 4: K = V-1, pruned final policy, p < f */
    {300, 16, 0, 0, 7, 2, 1, 0, 299, 6, FP, T2, 0.6f, 0, 2, NN, BIAS_NONE, 1, 0, 7, ROWS_COMPACT, 0, 0, 1.0f, 2, 1},
    /* 5: k = 0: full vocabulary everywhere, JS, portable kernels */
    {300, 16, 0, 0, 6, 1, 1, -1, 0, 6, FF, JS, 0.95f, 0, 2, RMS, BIAS_NONE, 1, 0, 0, ROWS_MAP, 0, 2, 1.0f, 2, 1},
    /* 6: k = V (no pruning), max prob */
    {97, 16, 0, 0, 5, 0, 1, -1, 97, 6, FF, MP, 0.7f, 0, 2, NN, BIAS_NONE, 1, 0, 3, ROWS_ALL, 0, 0, 1.0f, 2, 1},
    /* 7: k > V, pruned final policy (no set: full) */
    {97, 16, 0, 0, 5, 1, 1, -1, 500, 6, FP, T2, 0.8f, 0, 2, NN, BIAS_NONE, 1, 0, 0, ROWS_COMPACT, 0, 0, 1.0f, 2, 1},
    /* 8: L = 1: the only layer is p and L-1 */
    {300, 16, 0, 0, 1, 0, 1, -1, 16, 8, FF, T2, 0.5f, 0, 2, RMS, BIAS_NONE, 1, 0, 0, ROWS_ALL, 0, 0, 1.0f, 2, 0},
    /* 9: L = 2, only the last layer checked, pruned at 0, pruned final */
    {300, 16, 0, 0, 2, 1, 1, 0, 16, 8, FP, T2, 0.5f, 0, 2, NN, BIAS_NONE, 1, 0, 0, ROWS_MAP, 1, 0, 1.0f, 2, 0},
    /* 10: p == L-1 (f == L-1) */
    {300, 16, 0, 0, 5, 4, 1, 4, 16, 8, FF, T2, 0.5f, 0, 2, NN, BIAS_NONE, 1, 0, 0, ROWS_ALL, 1, 0, 1.0f, 2, 0},
    /* 11: saturation */
    {300, 33, 0, 0, 8, 1, 1, -1, 16, 8, FF, SA, 0.985f, 0, 2, RMS, BIAS_NONE, 1, 0, 5, ROWS_COMPACT, 0, 0, 1.0f, 2, 1},
    /* 12: stability, patience 2, p < f */
    {300, 16, 0, 0, 8, 2, 1, 1, 16, 8, FF, ST, 0.5f, 0, 2, NN, BIAS_NONE, 1, 0, 0, ROWS_MAP, 0, 0, 1.0f, 2, 1},
    /* 13: stability, patience 3, no pruning */
    {97, 16, 0, 0, 8, 0, 1, -1, 0, 8, FF, ST, 0.5f, 0, 3, RMS, BIAS_NONE, 1, 0, 0, ROWS_ALL, 0, 0, 1.0f, 2, 1},
    /* 14: JS with pruning, p == f */
    {300, 16, 0, 0, 8, 1, 1, -1, 16, 8, FF, JS, 0.97f, 0, 2, NN, BIAS_NONE, 1, 0, 0, ROWS_COMPACT, 0, 0, 1.0f, 2, 1},
    /* 15: JS with pruning, p < f, pruned final */
    {300, 16, 0, 0, 8, 2, 2, 0, 16, 8, FP, JS, 0.97f, 0, 2, RMS, BIAS_NONE, 1, 0, 0, ROWS_MAP, 0, 0, 1.0f, 2, 1},
    /* 16: CALM schedule */
    {300, 16, 0, 0, 8, 1, 1, -1, 16, 8, FF, MP, 0.85f, 1, 2, NN, BIAS_NONE, 1, 0, 0, ROWS_ALL, 0, 0, 1.0f, 3, 1},
    /* 17: logit scale and soft-cap, random bias */
    {300, 16, 0, 0, 6, 1, 1, -1, 16, 8, FF, T2, 0.8f, 0, 2, NN, BIAS_RANDOM, 0.5f, 30.0f, 0, ROWS_MAP, 0, 0, 1.0f, 2, 1},
    /* 18: masked tokens, K = V-1 (the set holds masked ones), entropy, copied
     * head with portable kernels */
    {97, 16, 0, 0, 6, 1, 1, 0, 96, 8, FF, EN, 0.6f, 0, 2, NN, BIAS_MASK, 1, 0, 0, ROWS_COMPACT, 0, 3, 1.0f, 2, 1},
    /* 19: row strides > d, offset, copied head, layer norm */
    {300, 33, 5, 7, 6, 1, 2, 0, 16, 8, FF, T2, 0.8f, 0, 2, LN, BIAS_RANDOM, 1, 0, 12345, ROWS_ALL, 1, 1, 1.0f, 2, 1},
    /* 20: full batch of 16, entropy, pruned final, every layer handed over,
     * portable kernels */
    {1000, 16, 3, 1, 10, 2, 2, 1, 16, 16, FP, EN, 0.55f, 0, 2, RMS, BIAS_NONE, 1, 0, 0, ROWS_MAP, 1, 2, 1.0f, 1, 1},
    /* 21: d = 1, V = 1000, no norm, masks and soft-cap */
    {1000, 1, 2, 3, 4, 0, 1, -1, 16, 6, FF, MP, 0.3f, 0, 2, NN, BIAS_MASK, 1, 8.0f, 0, ROWS_COMPACT, 0, 0, 1.0f, 2, 0},
    /* 22: K = 1 with stability and CALM */
    {97, 16, 0, 0, 6, 1, 1, 0, 1, 6, FF, ST, 0.9f, 1, 2, NN, BIAS_NONE, 1, 0, 0, ROWS_ALL, 0, 0, 1.0f, 2, 0},
    /* 23: K = 16, interval larger than L, masks, copied head, final pruned */
    {300, 33, 1, 0, 9, 1, 20, -1, 16, 6, FP, T2, 0.7f, 0, 2, RMS, BIAS_MASK, 1, 0, 99, ROWS_MAP, 1, 1, 1.0f, 2, 0},
    /* 24: single sequence, many tokens */
    {300, 16, 0, 0, 6, 0, 1, -1, 16, 1, FF, T2, 0.9f, 0, 2, NN, BIAS_NONE, 1, 0, 0, ROWS_COMPACT, 0, 0, 1.0f, 12, 1},
};

#define N_STEP_CFG ((int)(sizeof step_table / sizeof step_table[0]))

/* ------------------------------------------------------------------------ */
/* Environment: head, context, constructed hidden states, simulation        */
/* ------------------------------------------------------------------------ */

#define CALM_TAU 4.0f
#define CALM_N 64

typedef struct sim_seq {
    int reason, token, layer, pruned;
    int in_set;         /* final token inside the pruned set (coverage) */
    double conf, tol, lambda;
    int skip;           /* the reference cannot call a decision */
    int bad;            /* a non-finite value was injected */
    int n;              /* candidates at the deciding layer */
    int32_t *ids;       /* n global ids in the order */
    double *z, *ab;     /* their logits and abs sums */
} sim_seq;

typedef struct exp_stats {
    int64_t tokens, exited, last, failed, checks, pruned;
    int64_t cov_total, cov_hits_min, cov_hits_max;
    int64_t flops, flops_base, bytes, bytes_base;
    int64_t *hist;
    int cost_unknown;   /* a failed sequence: its cost is not modelled */
} exp_stats;

typedef struct env {
    step_cfg c;
    int V, d, K, L, p, prune, ld, wstride, offset;
    float *W, *Wref, *nw, *nwref, *nb, *nbref, *bias, *biasref;
    ref_head rh;
    eevp_head *head;
    eevp_ctx *ctx;
    int *checked;
    float *hid;         /* L x n_seq x d, packed */
    float *rows;        /* n_seq x ld */
    int32_t *map;
    int32_t *pos;
    /* simulation scratch */
    double *z, *ab, *cz, *cab, *cab2, *prev, *cur, *xn;
    int32_t *perm, *set, *cid, *hist_ids, *idx_of, *run;
    sim_seq *sim;
    exp_stats x;
    int n_seen, n_skip, n_early, n_last;
    uint32_t rng;
} env;

#define HID(e, l, s) ((e)->hid + ((size_t)(l) * (size_t)(e)->c.n_seq + (size_t)(s)) * (size_t)(e)->d)

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    ck_assert_ptr_nonnull(p);
    return p;
}

static int crit_needs_logits(int crit)
{
    return crit != EEVP_CRITERION_SATURATION;
}

static void env_init(env *e, const step_cfg *c, uint32_t seed)
{
    eevp_head_options ho;
    eevp_ctx_options co;
    char msg[256];
    int64_t v, n_w;
    int l, rc;

    memset(e, 0, sizeof *e);
    e->c = *c;
    e->V = c->V;
    e->d = c->d;
    e->L = c->L;
    e->K = c->k;
    e->offset = c->offset;
    e->p = c->p < 0 ? c->f : c->p;
    e->prune = c->k > 0 && c->k < c->V && crit_needs_logits(c->criterion);
    e->ld = c->d + c->h_pad;
    e->wstride = c->d + c->w_pad;
    e->rng = seed;

    n_w = (int64_t)c->V * e->wstride;
    e->W = xcalloc((size_t)n_w, sizeof(float));
    e->Wref = xcalloc((size_t)n_w, sizeof(float));
    fill_random(e->W, n_w, &e->rng, -1.0f, 1.0f);
    for (v = 0; v < c->V; v++) {
        int64_t col;
        for (col = c->d; col < e->wstride; col++)
            e->W[v * e->wstride + col] = NAN; /* never read */
    }
    memcpy(e->Wref, e->W, (size_t)n_w * sizeof(float));

    if (c->norm != EEVP_NORM_NONE) {
        e->nw = xcalloc((size_t)c->d, sizeof(float));
        e->nwref = xcalloc((size_t)c->d, sizeof(float));
        fill_random(e->nw, c->d, &e->rng, 0.5f, 1.5f);
        memcpy(e->nwref, e->nw, (size_t)c->d * sizeof(float));
        if (c->norm == EEVP_NORM_LAYER) {
            e->nb = xcalloc((size_t)c->d, sizeof(float));
            e->nbref = xcalloc((size_t)c->d, sizeof(float));
            fill_random(e->nb, c->d, &e->rng, -0.2f, 0.2f);
            memcpy(e->nbref, e->nb, (size_t)c->d * sizeof(float));
        }
    }
    if (c->bias != BIAS_NONE) {
        e->bias = xcalloc((size_t)c->V, sizeof(float));
        e->biasref = xcalloc((size_t)c->V, sizeof(float));
        fill_random(e->bias, c->V, &e->rng, -0.5f, 0.5f);
        if (c->bias == BIAS_MASK)
            for (v = 0; v < c->V; v += 7)
                e->bias[v] = -INFINITY;
        memcpy(e->biasref, e->bias, (size_t)c->V * sizeof(float));
    }

    e->rh.V = c->V;
    e->rh.d = c->d;
    e->rh.stride = e->wstride;
    e->rh.offset = c->offset;
    e->rh.W = e->Wref;
    e->rh.norm = c->norm;
    e->rh.eps = (double)1e-5f;
    e->rh.nw = e->nwref;
    e->rh.nb = e->nbref;
    e->rh.bias = e->biasref;
    e->rh.scale = c->scale;
    e->rh.cap = c->cap;

    ck_assert_int_eq(eevp_head_options_init(&ho), EEVP_OK);
    ho.n_vocab = c->V;
    ho.dim = c->d;
    ho.row_stride = e->wstride;
    ho.weights = e->W;
    ho.vocab_offset = c->offset;
    ho.norm = c->norm;
    ho.norm_eps = 1e-5f;
    ho.norm_weight = e->nw;
    ho.norm_bias = e->nb;
    ho.logit_bias = e->bias;
    ho.logit_scale = c->scale;
    ho.softcap = c->cap;
    ho.flags = (c->copy & 1 ? EEVP_HEAD_COPY : 0u) | (c->copy & 2 ? EEVP_HEAD_NO_SIMD : 0u);
    rc = eevp_head_create(&e->head, &ho, msg, sizeof msg);
    ck_assert_msg(rc == EEVP_OK, "eevp_head_create: %d %s", rc, msg);
    if (c->copy & 1) {
        /* The head holds copies: the caller's arrays may change freely. */
        for (v = 0; v < n_w; v++)
            e->W[v] = NAN;
        if (e->nw)
            for (v = 0; v < c->d; v++)
                e->nw[v] = NAN;
        if (e->nb)
            for (v = 0; v < c->d; v++)
                e->nb[v] = NAN;
        if (e->bias)
            for (v = 0; v < c->V; v++)
                e->bias[v] = NAN;
    }

    ck_assert_int_eq(eevp_ctx_options_init(&co), EEVP_OK);
    co.n_layers = c->L;
    co.max_batch = c->n_seq + 1; /* batches smaller than max_batch too */
    co.k = c->k;
    co.first_layer = c->f;
    co.interval = c->i;
    co.prune_layer = c->p;
    co.final_policy = c->final_policy;
    co.criterion = c->criterion;
    co.threshold = c->threshold;
    co.schedule = c->calm ? EEVP_SCHEDULE_CALM : EEVP_SCHEDULE_CONSTANT;
    co.schedule_tau = CALM_TAU;
    co.max_length = CALM_N;
    co.patience = c->patience;
    rc = eevp_ctx_create(&e->ctx, e->head, &co, msg, sizeof msg);
    ck_assert_msg(rc == EEVP_OK, "eevp_ctx_create: %d %s", rc, msg);

    e->checked = xcalloc((size_t)c->L, sizeof(int));
    for (l = c->f; l < c->L; l += c->i)
        e->checked[l] = 1;
    e->checked[c->L - 1] = 1;

    e->hid = xcalloc((size_t)c->L * (size_t)c->n_seq * (size_t)c->d, sizeof(float));
    e->rows = xcalloc((size_t)c->n_seq * (size_t)e->ld, sizeof(float));
    e->map = xcalloc((size_t)c->n_seq, sizeof(int32_t));
    e->run = xcalloc((size_t)c->n_seq, sizeof(int32_t));
    e->pos = xcalloc((size_t)c->n_seq, sizeof(int32_t));
    e->z = xcalloc((size_t)c->V, sizeof(double));
    e->ab = xcalloc((size_t)c->V, sizeof(double));
    e->cz = xcalloc((size_t)c->V, sizeof(double));
    e->cab = xcalloc((size_t)c->V, sizeof(double));
    e->cab2 = xcalloc((size_t)c->V, sizeof(double));
    e->prev = xcalloc((size_t)c->V, sizeof(double));
    e->cur = xcalloc((size_t)c->V, sizeof(double));
    e->xn = xcalloc((size_t)c->d, sizeof(double));
    e->perm = xcalloc((size_t)c->V, sizeof(int32_t));
    e->set = xcalloc((size_t)c->V, sizeof(int32_t));
    e->cid = xcalloc((size_t)c->V, sizeof(int32_t));
    e->hist_ids = xcalloc((size_t)c->L, sizeof(int32_t));
    e->idx_of = xcalloc((size_t)c->V, sizeof(int32_t));
    e->sim = xcalloc((size_t)c->n_seq, sizeof(sim_seq));
    for (l = 0; l < c->n_seq; l++) {
        e->sim[l].ids = xcalloc((size_t)c->V, sizeof(int32_t));
        e->sim[l].z = xcalloc((size_t)c->V, sizeof(double));
        e->sim[l].ab = xcalloc((size_t)c->V, sizeof(double));
    }
    e->x.hist = xcalloc((size_t)c->L, sizeof(int64_t));
}

static void env_free(env *e)
{
    int s;

    eevp_ctx_free(e->ctx);
    eevp_head_free(e->head);
    free(e->W);
    free(e->Wref);
    free(e->nw);
    free(e->nwref);
    free(e->nb);
    free(e->nbref);
    free(e->bias);
    free(e->biasref);
    free(e->checked);
    free(e->hid);
    free(e->rows);
    free(e->map);
    free(e->run);
    free(e->pos);
    free(e->z);
    free(e->ab);
    free(e->cz);
    free(e->cab);
    free(e->cab2);
    free(e->prev);
    free(e->cur);
    free(e->xn);
    free(e->perm);
    free(e->set);
    free(e->cid);
    free(e->hist_ids);
    free(e->idx_of);
    for (s = 0; s < e->c.n_seq; s++) {
        free(e->sim[s].ids);
        free(e->sim[s].z);
        free(e->sim[s].ab);
    }
    free(e->sim);
    free(e->x.hist);
}

/* Hidden states of token t: per sequence a target token, a sharpness a_s
 * (0 for pure noise), a base vector and a per-layer jitter. */
static void make_hidden(env *e, int t)
{
    static const float sharp[5] = {0.0f, 0.35f, 0.7f, 1.4f, 3.0f};
    const int d = e->d, L = e->L;
    float *base = xcalloc((size_t)d, sizeof(float));
    float *jit = xcalloc((size_t)d, sizeof(float));
    int s, l, col;

    e->rng ^= (uint32_t)t * 2654435761u;
    for (s = 0; s < e->c.n_seq; s++) {
        int64_t tok = (int64_t)(ref_rand_u32(&e->rng) % (uint32_t)e->V);
        int kind = (int)(ref_rand_u32(&e->rng) % 5u);
        double a = sharp[kind] * e->c.gain;
        const float *w = e->Wref + tok * e->wstride;
        double rms = 0.0;

        for (col = 0; col < d; col++)
            rms += (double)w[col] * w[col];
        rms = sqrt(rms / d);
        if (rms == 0.0)
            rms = 1.0;
        fill_random(base, d, &e->rng, -1.0f, 1.0f);
        for (l = 0; l < L; l++) {
            float *h = HID(e, l, s);
            double frac = (double)(l + 1) / L;
            if (kind == 0) /* pure noise, a new vector at every layer */
                fill_random(base, d, &e->rng, -1.0f, 1.0f);
            fill_random(jit, d, &e->rng, -0.25f, 0.25f);
            for (col = 0; col < d; col++)
                h[col] = (float)((double)base[col] + jit[col] +
                                 a * frac * 4.0 * (double)w[col] / rms);
        }
    }
    free(base);
    free(jit);
}

/* ------------------------------------------------------------------------ */
/* Reference simulation of one sequence                                     */
/* ------------------------------------------------------------------------ */

typedef struct sim_state {
    int have_set, n_hist, has_prev;
    const float *prev_h;
    double prev_maxb;
    int n_prev;
} sim_state;

/* Two logits in the order that rounding could swap. */
static int near_tie(const env *e, double za, double aa, double zb, double abb)
{
    if (isinf(za) || isinf(zb))
        return 0; /* -inf against anything: exact */
    return fabs(za - zb) <= ref_bound(e->d, aa, za) + ref_bound(e->d, abb, zb);
}

static double max_bound(const env *e, const double *z, const double *ab, int n)
{
    double m = 0.0;
    int j;

    for (j = 0; j < n; j++)
        if (isfinite(z[j])) {
            double b = ref_bound(e->d, ab[j], z[j]);
            if (b > m)
                m = b;
        }
    return m;
}

static void sim_record(env *e, sim_seq *r, int n)
{
    int j;

    ref_order(e->cz, e->cid, n, e->perm);
    r->n = n;
    for (j = 0; j < n; j++) {
        r->ids[j] = e->cid[e->perm[j]];
        r->z[j] = e->cz[e->perm[j]];
        r->ab[j] = e->cab[e->perm[j]];
    }
}

/* Full logits of h into cz/cab/cid. */
static void sim_full(env *e, const float *h)
{
    int v;

    ref_logits(&e->rh, h, e->cz, e->cab);
    for (v = 0; v < e->V; v++)
        e->cid[v] = v + e->offset;
}

/* Evaluate the criterion at checked layer l.  over_set: the candidates are
 * the pruned set; full_ready: e->z/e->ab hold the full logits of h.  Returns
 * 1 when the sequence resolves here. */
static int sim_check(env *e, sim_state *st, sim_seq *r, int l, const float *h, int over_set,
                     int full_ready)
{
    const int last = l == e->L - 1;
    const int crit = e->c.criterion;
    double c = 0.0, tol;
    int n, j, resolve;

    if (crit == EEVP_CRITERION_SATURATION) {
        c = st->prev_h ? ref_cos(h, st->prev_h, e->d) : 0.0;
        st->prev_h = h;
        tol = 2e-5;
        if (!last && fabs(c - r->lambda) <= tol)
            r->skip = __LINE__; /* why, for EEVP_TEST_VERBOSE */
        resolve = last || c > r->lambda;
        if (resolve) {
            sim_full(e, h);
            sim_record(e, r, e->V);
            if (e->V > 1 && near_tie(e, r->z[0], r->ab[0], r->z[1], r->ab[1]))
                r->skip = __LINE__; /* why, for EEVP_TEST_VERBOSE */
            r->reason = last ? EEVP_REASON_LAST_LAYER : EEVP_REASON_CONFIDENT;
            r->token = r->ids[0];
            r->layer = l;
            r->pruned = 0;
            r->conf = c;
            r->tol = tol;
        }
        return resolve;
    }

    if (over_set) {
        ref_norm(&e->rh, h, e->xn);
        for (j = 0; j < e->K; j++) {
            e->cz[j] = ref_logit(&e->rh, e->xn, e->set[j], &e->cab[j]);
            e->cid[j] = e->set[j] + e->offset;
        }
        n = e->K;
    } else {
        if (full_ready) {
            for (j = 0; j < e->V; j++) {
                e->cz[j] = e->z[j];
                e->cab[j] = e->ab[j];
                e->cid[j] = j + e->offset;
            }
        } else {
            sim_full(e, h);
        }
        n = e->V;
    }
    /* |dc| <= 2 * max |dz| for these criteria (softmax probabilities move
     * by at most p_i * 2 max|dz|); 3 for margin */
    tol = 2e-5 + 3.0 * max_bound(e, e->cz, e->cab, n);

    /* top-1 of the candidates, in the order */
    ref_order(e->cz, e->cid, n, e->perm);

    switch (crit) {
    case EEVP_CRITERION_TOP2_GAP:
        c = ref_conf_top2(e->cz, n);
        break;
    case EEVP_CRITERION_MAX_PROB:
        c = ref_conf_maxprob(e->cz, n);
        break;
    case EEVP_CRITERION_ENTROPY:
        c = ref_conf_entropy(e->cz, n);
        break;
    case EEVP_CRITERION_STABILITY: {
        int same = 1;
        e->hist_ids[st->n_hist++] = e->cid[e->perm[0]];
        if (n > 1 && near_tie(e, e->cz[e->perm[0]], e->cab[e->perm[0]], e->cz[e->perm[1]],
                              e->cab[e->perm[1]]))
            r->skip = __LINE__; /* why, for EEVP_TEST_VERBOSE */
        if (st->n_hist < e->c.patience) {
            same = 0;
        } else {
            for (j = st->n_hist - e->c.patience; j < st->n_hist; j++)
                if (e->hist_ids[j] != e->hist_ids[st->n_hist - 1])
                    same = 0;
        }
        c = same ? 1.0 : 0.0;
        tol = 0.0;
        break;
    }
    case EEVP_CRITERION_JS: {
        /* over the set when pruning is active (the full last layer
         * restricted to it), else over the vocabulary */
        int n_js = n;
        double mb;
        if (st->have_set && !over_set) {
            for (j = 0; j < e->K; j++) {
                e->cur[j] = e->z[e->set[j]];
                e->cab2[j] = e->ab[e->set[j]];
            }
            n_js = e->K;
            mb = max_bound(e, e->cur, e->cab2, n_js);
        } else {
            for (j = 0; j < n; j++)
                e->cur[j] = e->cz[j];
            mb = max_bound(e, e->cz, e->cab, n);
        }
        c = st->has_prev ? ref_js(e->prev, e->cur, n_js) : 0.0;
        tol = 2e-5 + 3.0 * (mb + (st->has_prev ? st->prev_maxb : 0.0));
        memcpy(e->prev, e->cur, (size_t)n_js * sizeof(double));
        st->has_prev = 1;
        st->prev_maxb = mb;
        st->n_prev = n_js;
        break;
    }
    default:
        ck_abort_msg("criterion %d", crit);
    }

    if (!last && fabs(c - r->lambda) <= tol)
        r->skip = __LINE__; /* why, for EEVP_TEST_VERBOSE */
    resolve = last || c > r->lambda;
    if (!resolve)
        return 0;
    sim_record(e, r, n);
    if (n > 1 && near_tie(e, r->z[0], r->ab[0], r->z[1], r->ab[1]))
        r->skip = __LINE__; /* why, for EEVP_TEST_VERBOSE */
    r->reason = last ? EEVP_REASON_LAST_LAYER : EEVP_REASON_CONFIDENT;
    r->token = r->ids[0];
    r->layer = l;
    r->pruned = over_set;
    r->conf = c;
    r->tol = tol;
    r->in_set = 0;
    if (st->have_set)
        for (j = 0; j < e->K; j++)
            if (e->set[j] + e->offset == r->token)
                r->in_set = 1;
    return 1;
}

static void sim_sequence(env *e, int s, sim_seq *r)
{
    sim_state st;
    int l, j;

    memset(&st, 0, sizeof st);
    r->reason = EEVP_REASON_RUNNING;
    r->skip = 0;
    r->n = 0;
    r->in_set = 0;
    for (l = 0; l < e->L; l++) {
        const float *h = HID(e, l, s);
        const int chk = e->checked[l];

        if (l == e->p && e->prune) {
            ref_logits(&e->rh, h, e->z, e->ab);
            if (chk && sim_check(e, &st, r, l, h, 0, 1))
                return;
            /* sim_check may have used e->z only read-only here (no set yet) */
            ref_order(e->z, NULL, e->V, e->perm);
            for (j = 0; j < e->K; j++)
                e->set[j] = e->perm[j];
            if (near_tie(e, e->z[e->perm[e->K - 1]], e->ab[e->perm[e->K - 1]],
                         e->z[e->perm[e->K]], e->ab[e->perm[e->K]]))
                r->skip = __LINE__; /* why, for EEVP_TEST_VERBOSE */
            st.have_set = 1;
            if (chk && e->c.criterion == EEVP_CRITERION_JS) {
                /* p's distribution restricted to the set is the previous one */
                double *tmp = xcalloc((size_t)e->K, sizeof(double));
                for (j = 0; j < e->K; j++) {
                    e->prev[j] = e->z[e->set[j]];
                    tmp[j] = e->ab[e->set[j]];
                }
                st.prev_maxb = max_bound(e, e->prev, tmp, e->K);
                st.n_prev = e->K;
                free(tmp);
            }
            continue;
        }
        if (!chk)
            continue;
        if (l == e->L - 1) {
            int pruned_final = st.have_set && e->c.final_policy == EEVP_FINAL_PRUNED;
            if (!pruned_final)
                ref_logits(&e->rh, h, e->z, e->ab);
            sim_check(e, &st, r, l, h, pruned_final, !pruned_final);
            return;
        }
        if (sim_check(e, &st, r, l, h, st.have_set, 0))
            return;
    }
    ck_abort_msg("simulation did not resolve");
}

/* ------------------------------------------------------------------------ */
/* Expected statistics from the path a sequence took                        */
/* ------------------------------------------------------------------------ */

static void expect_path(env *e, const eevp_result *res, const sim_seq *r)
{
    const int64_t V = e->V, d = e->d, K = e->K;
    const int64_t full_f = (2 * d - 1) * V, full_b = 4 * V * d;
    int64_t n_checks = 0;
    int l;

    e->x.tokens++;
    if (res->reason == EEVP_REASON_ERROR) {
        e->x.failed++;
        e->x.cost_unknown = 1;
        return;
    }
    if (res->reason == EEVP_REASON_CONFIDENT)
        e->x.exited++;
    else
        e->x.last++;
    e->x.hist[res->layer]++;
    e->x.pruned += res->pruned;
    for (l = 0; l <= res->layer; l++)
        n_checks += e->checked[l];
    e->x.checks += n_checks;
    e->x.flops_base += n_checks * full_f;
    e->x.bytes_base += n_checks * full_b;

    if (!crit_needs_logits(e->c.criterion)) {
        e->x.flops += full_f;
        e->x.bytes += full_b;
    } else if (e->prune) {
        e->x.flops += full_f;
        e->x.bytes += full_b;
        if (res->layer > e->p) {
            e->x.bytes += 4 * K * d;
            for (l = e->p + 1; l <= res->layer; l++) {
                if (!e->checked[l])
                    continue;
                if (l == e->L - 1 && !res->pruned) {
                    e->x.flops += full_f;
                    e->x.bytes += full_b;
                } else {
                    e->x.flops += (2 * d - 1) * K;
                    e->x.bytes += 4 * K * d;
                }
            }
            if (res->reason == EEVP_REASON_LAST_LAYER && !res->pruned) {
                e->x.cov_total++;
                if (r && !r->skip && !r->bad) {
                    e->x.cov_hits_min += r->in_set;
                    e->x.cov_hits_max += r->in_set;
                } else {
                    e->x.cov_hits_max++;
                }
            }
        }
    } else {
        e->x.flops += n_checks * full_f;
        e->x.bytes += n_checks * full_b;
    }
}

static void check_stats(env *e)
{
    eevp_stats st;
    int64_t *h = xcalloc((size_t)e->L + 1, sizeof(int64_t));
    int l;

    memset(&st, 0x5a, sizeof st);
    st.struct_size = (uint32_t)sizeof st;
    ck_assert_int_eq(eevp_ctx_stats(e->ctx, &st), EEVP_OK);
    ck_assert_int_eq(st.n_layers, e->L);
    ck_assert_int_eq(st.tokens, e->x.tokens);
    ck_assert_int_eq(st.exited_early, e->x.exited);
    ck_assert_int_eq(st.reached_last, e->x.last);
    ck_assert_int_eq(st.failed, e->x.failed);
    ck_assert_int_eq(st.pruned_decisions, e->x.pruned);
    ck_assert_int_eq(st.k_coverage_total, e->x.cov_total);
    ck_assert_int_ge(st.k_coverage_hits, e->x.cov_hits_min);
    ck_assert_int_le(st.k_coverage_hits, e->x.cov_hits_max);
    if (st.k_coverage_total == 0)
        ck_assert(st.k_coverage_final == 0.0);
    else
        ck_assert(fabs(st.k_coverage_final -
                       (double)st.k_coverage_hits / (double)st.k_coverage_total) < 1e-12);
    if (!e->x.cost_unknown) {
        ck_assert_int_eq(st.checks, e->x.checks);
        ck_assert_int_eq(st.head_flops, e->x.flops);
        ck_assert_int_eq(st.head_flops_baseline, e->x.flops_base);
        ck_assert_int_eq(st.head_bytes, e->x.bytes);
        ck_assert_int_eq(st.head_bytes_baseline, e->x.bytes_base);
    }
    h[e->L] = -77; /* n = L: nothing past it is written */
    ck_assert_int_eq(eevp_ctx_exit_histogram(e->ctx, h, e->L), EEVP_OK);
    for (l = 0; l < e->L; l++)
        ck_assert_msg(h[l] == e->x.hist[l], "histogram[%d] = %lld, expected %lld", l,
                      (long long)h[l], (long long)e->x.hist[l]);
    ck_assert_int_eq(h[e->L], -77);
    free(h);
}

/* ------------------------------------------------------------------------ */
/* Driving the library through one token                                    */
/* ------------------------------------------------------------------------ */

typedef struct tok_opts {
    int stop_layer;     /* >= 0: after handing this layer, stop the step */
    int stop_by_reset;  /* stop with eevp_ctx_reset instead of abandon */
    int n_bad;
    int bad_seq[2];
    float bad_val[2];
} tok_opts;

static void get_result(const env *e, int s, eevp_result *res)
{
    memset(res, 0x5a, sizeof *res);
    res->struct_size = (uint32_t)sizeof *res;
    ck_assert_int_eq(eevp_step_result(e->ctx, s, res), EEVP_OK);
}

/* First layer the library must process for a running sequence. */
static int first_processed(const env *e)
{
    int l;

    for (l = 0; l < e->L; l++)
        if (e->checked[l] || (e->prune && l == e->p))
            return l;
    return e->L - 1;
}

/* Rows for `layer` from the library's own running set; returns n_rows and
 * sets *map (NULL unless ROWS_MAP).  junk: NaN rows (unrequired layer). */
static int build_rows(env *e, int layer, int junk, const int32_t **map)
{
    const int n_seq = e->c.n_seq;
    int n_run = 0, s, i;

    for (i = 0; i < n_seq * e->ld; i++)
        e->rows[i] = NAN; /* finished sequences' rows and the pads: never read */
    for (s = 0; s < n_seq; s++) {
        eevp_result res;
        get_result(e, s, &res);
        if (res.reason == EEVP_REASON_RUNNING)
            e->run[n_run++] = s;
    }
    *map = NULL;
    if (e->c.rows == ROWS_MAP) {
        for (i = n_run - 1; i > 0; i--) {
            int j = (int)(ref_rand_u32(&e->rng) % (uint32_t)(i + 1));
            int32_t t = e->run[i];
            e->run[i] = e->run[j];
            e->run[j] = t;
        }
        memcpy(e->map, e->run, (size_t)n_run * sizeof(int32_t));
        *map = e->map;
    }
    for (i = 0; i < n_run; i++) {
        int row = e->c.rows == ROWS_ALL ? e->run[i] : i;
        if (!junk)
            memcpy(e->rows + (size_t)row * e->ld, HID(e, layer, e->run[i]),
                   (size_t)e->d * sizeof(float));
    }
    return e->c.rows == ROWS_ALL ? n_seq : n_run;
}

static void check_candidates(env *e, int s, const sim_seq *r)
{
    int32_t cap, n_exp, n_out = -1, j;
    float *lg;
    int32_t *ids;
    char *seen = xcalloc((size_t)e->V, 1);

    switch (s % 3) {
    case 0: cap = r->n + 3; break;
    case 1: cap = r->n < 5 ? r->n : 5; break;
    default: cap = 1; break;
    }
    n_exp = cap < r->n ? cap : r->n;
    lg = canary_alloc((size_t)cap);
    ids = canary_alloc_i32((size_t)cap);
    for (j = 0; j < e->V; j++)
        e->idx_of[j] = -1;
    for (j = 0; j < r->n; j++)
        e->idx_of[r->ids[j] - e->offset] = j;

    ck_assert_int_eq(eevp_step_candidates(e->ctx, s, cap, lg, ids, &n_out), EEVP_OK);
    ck_assert_int_eq(n_out, n_exp);
    ck_assert(canary_ok(lg, (size_t)cap));
    ck_assert(canary_ok_i32(ids, (size_t)cap));
    for (j = 0; j < n_out; j++) {
        int32_t id = ids[j], k;
        ck_assert_msg(id >= e->offset && id < e->offset + e->V, "seq %d cand %d id %d", s, j, id);
        k = e->idx_of[id - e->offset];
        ck_assert_msg(k >= 0, "seq %d: candidate %d (id %d) not in the reference's set", s, j, id);
        ck_assert_msg(!seen[id - e->offset], "seq %d: id %d listed twice", s, id);
        seen[id - e->offset] = 1;
        ck_assert_msg(ref_close(lg[j], r->z[k], e->d, r->ab[k]),
                      "seq %d cand %d id %d: logit %.9g, reference %.9g", s, j, id,
                      (double)lg[j], r->z[k]);
        if (j > 0)
            ck_assert_msg(lg[j - 1] > lg[j] || (lg[j - 1] == lg[j] && ids[j - 1] < id),
                          "seq %d: candidates %d and %d out of order", s, j - 1, j);
        /* where rounding cannot swap neighbours, the id is the reference's */
        if ((j == 0 || !near_tie(e, r->z[j - 1], r->ab[j - 1], r->z[j], r->ab[j])) &&
            (j + 1 >= r->n || !near_tie(e, r->z[j], r->ab[j], r->z[j + 1], r->ab[j + 1])))
            ck_assert_msg(id == r->ids[j], "seq %d cand %d: id %d, reference %d", s, j, id,
                          r->ids[j]);
    }
    canary_free(lg);
    canary_free_i32(ids);
    free(seen);
}

static double lambda_of(const env *e, int32_t t)
{
    if (e->c.calm)
        return ref_threshold_calm((double)e->c.threshold, (double)CALM_TAU, t, CALM_N);
    return (double)e->c.threshold;
}

/* One token: simulate, drive the library, compare.  Returns 1 when the
 * step was completed (ended), 0 when stopped on purpose. */
static int run_token(env *e, int t, const tok_opts *o)
{
    const int n_seq = e->c.n_seq;
    int s, l, b, first = first_processed(e);

    make_hidden(e, t);
    for (s = 0; s < n_seq; s++) {
        e->pos[s] = (t * 37 + s * 11) % (CALM_N + 1);
        e->sim[s].lambda = lambda_of(e, e->pos[s]);
        e->sim[s].bad = 0;
    }
    for (b = 0; o && b < o->n_bad; b++) {
        HID(e, first, o->bad_seq[b])[e->d / 2] = o->bad_val[b];
        e->sim[o->bad_seq[b]].bad = 1;
    }
    for (s = 0; s < n_seq; s++)
        if (!e->sim[s].bad)
            sim_sequence(e, s, &e->sim[s]);

    ck_assert_int_eq(eevp_step_begin(e->ctx, n_seq, e->pos), EEVP_OK);
    ck_assert_int_eq(eevp_step_n_running(e->ctx), n_seq);
    for (l = 0; l < e->L; l++) {
        int req = eevp_ctx_layer_required(e->ctx, l), rc, n_rows, n_run = 0;
        const int32_t *map;

        ck_assert_msg(req == 0 || req == 1, "layer_required(%d) = %d", l, req);
        if (e->checked[l] || (e->prune && l == e->p))
            ck_assert_msg(req == 1, "layer %d must be required", l);
        else if (l != e->p)
            ck_assert_msg(req == 0, "layer %d must not be required", l);
        if (!req && !e->c.all_layers)
            continue;
        n_rows = build_rows(e, l, !req && l != e->p, &map);
        rc = eevp_step_layer(e->ctx, l, e->rows, e->ld, n_rows, map);
        if (o && o->n_bad > 0 && l == first)
            ck_assert_int_eq(rc, EEVP_ENONFINITE);
        else
            ck_assert_msg(rc == EEVP_OK, "step_layer(%d) = %d: %s", l, rc,
                          eevp_ctx_errmsg(e->ctx));
        for (s = 0; s < n_seq; s++) {
            eevp_result res;
            const sim_seq *r = &e->sim[s];
            get_result(e, s, &res);
            if (res.reason == EEVP_REASON_RUNNING) {
                n_run++;
                ck_assert_int_eq(res.token, -1);
                ck_assert_int_eq(res.layer, -1);
            }
            if (!r->bad && !r->skip)
                ck_assert_msg((res.reason == EEVP_REASON_RUNNING) == (r->layer > l),
                              "seq %d after layer %d: reason %d, reference resolves at %d",
                              s, l, res.reason, r->layer);
        }
        ck_assert_int_eq(eevp_step_n_running(e->ctx), n_run);
        if (o && o->stop_layer == l) {
            if (o->stop_by_reset)
                ck_assert_int_eq(eevp_ctx_reset(e->ctx), EEVP_OK);
            else
                ck_assert_int_eq(eevp_step_abandon(e->ctx), EEVP_OK);
            return 0;
        }
        if (n_run == 0)
            break;
    }
    ck_assert_int_eq(eevp_step_n_running(e->ctx), 0);
    ck_assert_int_eq(eevp_step_end(e->ctx), EEVP_OK);
    ck_assert_int_eq(eevp_step_n_running(e->ctx), 0);

    for (s = 0; s < n_seq; s++) {
        eevp_result res;
        const sim_seq *r = &e->sim[s];

        get_result(e, s, &res);
        expect_path(e, &res, r);
        if (r->bad) {
            ck_assert_int_eq(res.reason, EEVP_REASON_ERROR);
            ck_assert_int_eq(res.status, EEVP_ENONFINITE);
            ck_assert_int_eq(res.token, -1);
            continue;
        }
        e->n_seen++;
        ck_assert_int_ne(res.reason, EEVP_REASON_RUNNING);
        ck_assert_int_ne(res.reason, EEVP_REASON_ERROR);
        ck_assert_int_eq(res.status, EEVP_OK);
        ck_assert_msg(fabs((double)res.threshold - r->lambda) <= 1e-6 * (1.0 + fabs(r->lambda)),
                      "seq %d threshold %.9g, reference %.9g", s, (double)res.threshold,
                      r->lambda);
        if (res.reason == EEVP_REASON_CONFIDENT)
            e->n_early++;
        else
            e->n_last++;
        if (r->skip) {
            if (getenv("EEVP_TEST_VERBOSE"))
                fprintf(stderr, "  token %d seq %d skipped (check_step.c:%d, c %.6g, lambda %.6g)\n",
                        t, s, r->skip, r->conf, r->lambda);
            e->n_skip++;
            continue;
        }
        ck_assert_msg(res.reason == r->reason && res.layer == r->layer,
                      "seq %d: reason %d at layer %d, reference %d at %d (c %.6g, lambda %.6g)",
                      s, res.reason, res.layer, r->reason, r->layer, r->conf, r->lambda);
        ck_assert_msg(res.token == r->token, "seq %d: token %d, reference %d", s, res.token,
                      r->token);
        ck_assert_msg(res.pruned == r->pruned, "seq %d: pruned %d, reference %d", s,
                      res.pruned, r->pruned);
        ck_assert_msg(fabs((double)res.confidence - r->conf) <= r->tol,
                      "seq %d: confidence %.9g, reference %.9g (tol %.3g)", s,
                      (double)res.confidence, r->conf, r->tol);
        check_candidates(e, s, r);
    }
    return 1;
}

static void check_not_vacuous(const env *e)
{
    ck_assert_msg(e->n_skip * 10 < e->n_seen, "%d of %d sequences undecidable", e->n_skip,
                  e->n_seen);
    if (e->c.mix) {
        ck_assert_msg(e->n_early > 0, "no early exit in this configuration");
        ck_assert_msg(e->n_last > 0, "no last-layer resolution in this configuration");
    }
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                    */
/* ------------------------------------------------------------------------ */

START_TEST(test_step_table)
{
    env e;
    int t;

    env_init(&e, &step_table[_i], 0x9e3779b9u + 977u * (uint32_t)_i);
    for (t = 0; t < e.c.n_tokens; t++)
        run_token(&e, t, NULL);
    check_stats(&e);
    if (getenv("EEVP_TEST_VERBOSE"))
        fprintf(stderr, "step cfg %d: %d seen, %d skipped, %d early, %d last\n", _i, e.n_seen,
                e.n_skip, e.n_early, e.n_last);
    check_not_vacuous(&e);
    env_free(&e);
}
END_TEST

/* A step stopped half-way (abandon, or context reset) counts nothing; the
 * next step starts clean and is decided exactly as from scratch. */
START_TEST(test_step_abandon)
{
    static const int stop_layers[2] = {1, 3};
    env e;
    tok_opts o;
    int t;

    env_init(&e, &step_table[_i % 2 ? 12 : 0], 4242u + (uint32_t)_i);
    memset(&o, 0, sizeof o);
    o.stop_by_reset = _i >= 2;
    o.stop_layer = stop_layers[_i % 2];

    run_token(&e, 0, NULL);
    check_stats(&e);
    ck_assert_int_eq(run_token(&e, 1, &o), 0);
    check_stats(&e); /* unchanged */
    ck_assert_int_eq(eevp_step_abandon(e.ctx), EEVP_OK); /* no step: fine */
    for (t = 2; t < 4; t++) {
        ck_assert_int_eq(run_token(&e, t, NULL), 1);
        check_stats(&e);
    }
    /* stopped before any layer */
    ck_assert_int_eq(eevp_step_begin(e.ctx, e.c.n_seq, NULL), EEVP_OK);
    ck_assert_int_eq(o.stop_by_reset ? eevp_ctx_reset(e.ctx) : eevp_step_abandon(e.ctx), EEVP_OK);
    check_stats(&e);
    run_token(&e, 4, NULL);
    check_stats(&e);
    check_not_vacuous(&e);
    env_free(&e);
}
END_TEST

/* eevp_ctx_reset keeps the statistics; eevp_ctx_stats_reset zeroes them and
 * the histogram, and counting starts again from there. */
START_TEST(test_step_stats_reset)
{
    env e;
    eevp_stats st;
    int64_t h[16];
    int l;

    env_init(&e, &step_table[1], 777u);
    run_token(&e, 0, NULL);
    ck_assert_int_eq(eevp_ctx_reset(e.ctx), EEVP_OK);
    check_stats(&e);
    ck_assert_int_gt(e.x.tokens, 0);

    ck_assert_int_eq(eevp_ctx_stats_reset(e.ctx), EEVP_OK);
    memset(&st, 0x5a, sizeof st);
    st.struct_size = (uint32_t)sizeof st;
    ck_assert_int_eq(eevp_ctx_stats(e.ctx, &st), EEVP_OK);
    ck_assert_int_eq(st.n_layers, e.L);
    ck_assert_int_eq(st.tokens, 0);
    ck_assert_int_eq(st.exited_early, 0);
    ck_assert_int_eq(st.reached_last, 0);
    ck_assert_int_eq(st.failed, 0);
    ck_assert_int_eq(st.checks, 0);
    ck_assert_int_eq(st.pruned_decisions, 0);
    ck_assert_int_eq(st.k_coverage_hits, 0);
    ck_assert_int_eq(st.k_coverage_total, 0);
    ck_assert(st.k_coverage_final == 0.0);
    ck_assert_int_eq(st.head_flops, 0);
    ck_assert_int_eq(st.head_flops_baseline, 0);
    ck_assert_int_eq(st.head_bytes, 0);
    ck_assert_int_eq(st.head_bytes_baseline, 0);
    for (l = 0; l < 16; l++)
        h[l] = -1;
    ck_assert_int_eq(eevp_ctx_exit_histogram(e.ctx, h, 16), EEVP_OK);
    for (l = 0; l < e.L; l++)
        ck_assert_int_eq(h[l], 0);

    /* counting again from zero */
    memset(&e.x, 0, offsetof(exp_stats, hist));
    memset(e.x.hist, 0, (size_t)e.L * sizeof(int64_t));
    run_token(&e, 1, NULL);
    run_token(&e, 2, NULL);
    check_stats(&e);
    check_not_vacuous(&e);
    env_free(&e);
}
END_TEST

/* NaN in one sequence's row, +Inf in another's: those two fail with
 * EEVP_ENONFINITE, the others are decided as usual, and the next token is
 * fine for everybody. */
static const int nonfinite_cfgs[] = {0, 1, 5, 11, 14, 19};

START_TEST(test_step_nonfinite)
{
    env e;
    tok_opts o;
    eevp_stats st;

    env_init(&e, &step_table[nonfinite_cfgs[_i]], 31337u + (uint32_t)_i);
    memset(&o, 0, sizeof o);
    o.stop_layer = -1;
    o.n_bad = e.c.n_seq >= 4 ? 2 : 1;
    o.bad_seq[0] = 1 % e.c.n_seq;
    o.bad_val[0] = NAN;
    o.bad_seq[1] = 3;
    o.bad_val[1] = INFINITY;
    run_token(&e, 0, &o);
    run_token(&e, 1, NULL);
    check_stats(&e);
    memset(&st, 0, sizeof st);
    st.struct_size = (uint32_t)sizeof st;
    ck_assert_int_eq(eevp_ctx_stats(e.ctx, &st), EEVP_OK);
    ck_assert_int_eq(st.failed, o.n_bad);
    ck_assert_int_eq(st.tokens, 2 * e.c.n_seq);
    ck_assert_int_eq(st.exited_early + st.reached_last, 2 * e.c.n_seq - o.n_bad);
    env_free(&e);
}
END_TEST

/* Every layer handed over, the unrequired ones full of NaN: they are
 * ignored, whatever the way the rows are handed. */
START_TEST(test_step_unrequired)
{
    step_cfg c = step_table[1]; /* p = 0 < f = 2, interval 2: layers 1, 3, 5 unrequired */
    env e;

    c.rows = _i;
    c.all_layers = 1;
    c.n_tokens = 2;
    env_init(&e, &c, 555u + (uint32_t)_i);
    ck_assert_int_eq(eevp_ctx_layer_required(e.ctx, 1), 0);
    ck_assert_int_eq(eevp_ctx_layer_required(e.ctx, 3), 0);
    ck_assert_int_eq(eevp_ctx_layer_required(e.ctx, 0), 1);
    ck_assert_int_eq(eevp_ctx_layer_required(e.ctx, 2), 1);
    ck_assert_int_eq(eevp_ctx_layer_required(e.ctx, 7), 1);
    ck_assert_int_eq(eevp_ctx_layer_required(e.ctx, -1), EEVP_ERANGE);
    ck_assert_int_eq(eevp_ctx_layer_required(e.ctx, 8), EEVP_ERANGE);
    run_token(&e, 0, NULL);
    run_token(&e, 1, NULL);
    check_stats(&e);
    check_not_vacuous(&e);
    env_free(&e);
}
END_TEST

/* eevp_step_n_running follows the exits layer by layer (run_token checks it
 * after every layer); here the edges: a batch smaller than max_batch, the
 * count right after begin, after end, and results kept after end. */
START_TEST(test_step_n_running)
{
    step_cfg c = step_table[0];
    env e;
    eevp_result res;
    int s;

    c.n_seq = 5;
    env_init(&e, &c, 2024u);
    run_token(&e, 0, NULL);
    ck_assert_int_eq(eevp_step_n_running(e.ctx), 0);
    for (s = 0; s < c.n_seq; s++) {
        get_result(&e, s, &res);
        ck_assert_int_ne(res.reason, EEVP_REASON_RUNNING);
    }
    /* a smaller batch in the same context */
    ck_assert_int_eq(eevp_step_begin(e.ctx, 2, NULL), EEVP_OK);
    ck_assert_int_eq(eevp_step_n_running(e.ctx), 2);
    get_result(&e, 0, &res);
    ck_assert_int_eq(res.reason, EEVP_REASON_RUNNING);
    ck_assert_int_eq(res.token, -1);
    ck_assert_int_eq(res.layer, -1);
    ck_assert(isnan(res.confidence));
    memset(&res, 0, sizeof res);
    res.struct_size = (uint32_t)sizeof res;
    ck_assert_int_eq(eevp_step_result(e.ctx, 2, &res), EEVP_ERANGE);
    ck_assert_int_eq(eevp_step_end(e.ctx), EEVP_ESTATE); /* nobody resolved yet */
    ck_assert_int_eq(eevp_step_abandon(e.ctx), EEVP_OK);
    run_token(&e, 1, NULL);
    check_stats(&e);
    env_free(&e);
}
END_TEST

Suite *make_step_suite(void)
{
    Suite *s = suite_create("step");
    TCase *tc = tcase_create("reference");

    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_step_table, 0, N_STEP_CFG);
    suite_add_tcase(s, tc);

    tc = tcase_create("lifecycle");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_step_abandon, 0, 4);
    tcase_add_test(tc, test_step_stats_reset);
    tcase_add_loop_test(tc, test_step_nonfinite, 0,
                        (int)(sizeof nonfinite_cfgs / sizeof nonfinite_cfgs[0]));
    tcase_add_loop_test(tc, test_step_unrequired, 0, 3);
    tcase_add_test(tc, test_step_n_running);
    suite_add_tcase(s, tc);
    return s;
}
