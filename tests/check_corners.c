/* SPDX-License-Identifier: MIT */
/*
 * check_corners.c - the contract's corners: threshold +INFINITY ("never
 * exit early"), the exit decision on the reported float values, head_bytes
 * of half-precision heads, the alignment W and hidden states need, and the
 * corners the documentation pins (every token masked, soft-cap with a -inf
 * bias, eps = 0 with a zero state, norm_weight without a norm, a static-only
 * set checked only at the last layer, Jensen-Shannon at a re-pruning layer,
 * adaptive K when re-pruning, reprune_every landing on the last layer,
 * static-only with k = 0).
 *
 * Expected tokens, sets, confidences and byte counts come from tests/ref.c
 * (double precision) or from the formulas of the header, never from the
 * library itself.  A decision the reference cannot call (a near-tie within
 * the rounding bound) is left out and counted; each test asserts that few
 * were.
 */
#include <check.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eevp.h"
#include "ref.h"

Suite *make_corners_suite(void);

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    ck_assert_ptr_nonnull(p);
    return p;
}

static float *rand_floats(int64_t n, uint32_t seed, float lo, float hi)
{
    float *x = (float *)xmalloc((size_t)n * sizeof(float));
    fill_random(x, n, &seed, lo, hi);
    return x;
}

static int32_t rand_int(uint32_t *seed, int32_t lo, int32_t hi) /* lo .. hi */
{
    return lo + (int32_t)(ref_rand_u32(seed) % (uint32_t)(hi - lo + 1));
}

static eevp_head *head_make(const eevp_head_options *o)
{
    eevp_head *h = NULL;
    char msg[256] = "";
    int rc = eevp_head_create(&h, o, msg, sizeof msg);
    ck_assert_msg(rc == EEVP_OK, "eevp_head_create: %d (%s)", rc, msg);
    return h;
}

static eevp_head *head_f32(const float *W, int64_t V, int64_t d, int norm, const float *bias,
                           float cap, int64_t offset)
{
    eevp_head_options o = EEVP_HEAD_OPTIONS_INIT;
    o.n_vocab = V;
    o.dim = d;
    o.weights = W;
    o.norm = norm;
    o.logit_bias = bias;
    o.softcap = cap;
    o.vocab_offset = offset;
    return head_make(&o);
}

static ref_head rhead(const float *W, int64_t V, int64_t d, int norm, const float *bias,
                      float cap)
{
    ref_head r;
    memset(&r, 0, sizeof r);
    r.V = V;
    r.d = d;
    r.W = W;
    r.norm = norm;
    r.eps = (double)1e-6f; /* the head's default norm_eps */
    r.bias = bias;
    r.cap = cap;
    return r;
}

static eevp_ctx *ctx_make(const eevp_head *h, const eevp_ctx_options *o)
{
    eevp_ctx *c = NULL;
    char msg[256] = "";
    int rc = eevp_ctx_create(&c, h, o, msg, sizeof msg);
    ck_assert_msg(rc == EEVP_OK, "eevp_ctx_create: %d (%s)", rc, msg);
    return c;
}

static eevp_result get_result(const eevp_ctx *ctx, int32_t s)
{
    eevp_result r;
    memset(&r, 0, sizeof r);
    r.struct_size = sizeof r;
    ck_assert_int_eq(eevp_step_result(ctx, s, &r), EEVP_OK);
    return r;
}

static eevp_stats get_stats(const eevp_ctx *ctx)
{
    eevp_stats st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    ck_assert_int_eq(eevp_ctx_stats(ctx, &st), EEVP_OK);
    return st;
}

/* One step of one sequence at position t: the required layers (every layer
 * when all_layers) from hid, layer l at hid + l*d.  Returns the result. */
static eevp_result one_step(eevp_ctx *ctx, int32_t L, int64_t d, const float *hid, int32_t t,
                            int all_layers)
{
    int32_t l;
    eevp_result r;
    ck_assert_int_eq(eevp_step_begin(ctx, 1, &t), EEVP_OK);
    for (l = 0; l < L && eevp_step_n_running(ctx) > 0; l++) {
        int rc;
        if (!all_layers && eevp_ctx_layer_required(ctx, l) != 1)
            continue;
        rc = eevp_step_layer(ctx, l, hid + l * d, d, 1, NULL);
        ck_assert_msg(rc == EEVP_OK, "layer %d: %d %s", (int)l, rc, eevp_ctx_errmsg(ctx));
    }
    r = get_result(ctx, 0);
    ck_assert_int_eq(eevp_step_end(ctx), EEVP_OK);
    return r;
}

/* Reference logits of x (V doubles each into z and ab). */
static void ref_z(const ref_head *rh, const float *x, double *z, double *ab)
{
    ref_logits(rh, x, z, ab);
}

/* The best of the n candidates cand[] (local rows; NULL: rows 0 .. n-1) in
 * the order; *clear = 0 when the runner-up is within rounding. */
static int32_t ref_best(const double *z, const double *ab, const int32_t *cand, int32_t n,
                        int64_t d, int *clear)
{
    int32_t j, b = -1, s = -1;
    for (j = 0; j < n; j++) {
        const int32_t v = cand ? cand[j] : j;
        if (b < 0 || z[v] > z[b] || (z[v] == z[b] && v < b)) {
            s = b;
            b = v;
        } else if (s < 0 || z[v] > z[s] || (z[v] == z[s] && v < s)) {
            s = v;
        }
    }
    *clear = s < 0 || isinf(z[b]) ||
             z[b] - z[s] > ref_bound(d, ab[b], z[b]) + ref_bound(d, ab[s], z[s]);
    return b;
}

/* The K best local rows of z in the order; 1 when the K-th and (K+1)-th
 * are apart by more than rounding. */
static int ref_topk_set(const double *z, const double *ab, int64_t V, int32_t K, int64_t d,
                        int32_t *set)
{
    int32_t *perm = (int32_t *)xmalloc((size_t)V * sizeof(int32_t));
    int32_t j, a, b;
    int clear;
    ref_order(z, NULL, (int32_t)V, perm);
    for (j = 0; j < K; j++)
        set[j] = perm[j];
    a = perm[K - 1];
    b = perm[K];
    clear = z[a] - z[b] > ref_bound(d, ab[a], z[a]) + ref_bound(d, ab[b], z[b]);
    free(perm);
    return clear;
}

/* ------------------------------------------------------------------------ */
/* threshold = +INFINITY: never exit early, output = full depth            */
/* ------------------------------------------------------------------------ */

/* A custom criterion that always asks to exit, counting its calls per layer. */
typedef struct always_exit {
    int32_t calls[64];
} always_exit;

static int always_decide(void *state, const eevp_exit_view *v, float *conf, int32_t *ex)
{
    always_exit *a = (always_exit *)state;
    if (v->layer >= 0 && v->layer < 64)
        a->calls[v->layer]++;
    *conf = 1.0f;
    *ex = 1;
    return 0;
}

static void set_always_exit(eevp_ctx *ctx, always_exit *st, uint32_t needs)
{
    eevp_criterion_vtbl vt;
    memset(&vt, 0, sizeof vt);
    vt.struct_size = sizeof vt;
    vt.name = "always-exit";
    vt.needs = needs;
    vt.decide = always_decide;
    ck_assert_int_eq(eevp_ctx_set_criterion(ctx, &vt, st), EEVP_OK);
}

typedef struct inf_cfg {
    int32_t V, d, L, f, i, p, k, B, T, crit; /* crit 6, 7: always-exit with / without logits */
    int32_t final_policy, variant;           /* 0 plain, 1 CALM, 2 re-pruning, 3 static-only */
    int32_t reprune_every, n_static, all_layers;
    int32_t statics[10];
} inf_cfg;

enum { N_INF = 64 };

static int inf_needs_logits(const inf_cfg *c)
{
    return c->crit != EEVP_CRITERION_SATURATION && c->crit != 7;
}

static int inf_configured_check(const inf_cfg *c, int32_t l)
{
    return l == c->L - 1 || (l >= c->f && (l - c->f) % c->i == 0);
}

/* 1 when l re-prunes as configured: a configured checked layer after p,
 * before the last, every reprune_every-th of them. */
static int inf_reprune(const inf_cfg *c, int32_t l)
{
    int32_t j, n = 0;
    if (c->variant != 2 || c->reprune_every <= 0 || l <= c->p || l >= c->L - 1 ||
        !inf_configured_check(c, l))
        return 0;
    for (j = c->p + 1; j <= l; j++)
        n += inf_configured_check(c, j);
    return n % c->reprune_every == 0;
}

/* The layers the header says are still needed: the last, and, when the
 * final policy decides on a set, where the set is built (p, re-prunings). */
static int inf_expect_required(const inf_cfg *c, int32_t l)
{
    const int dyn = c->k > 0 && c->k < c->V && c->variant != 3;
    if (l == c->L - 1)
        return 1;
    if (c->final_policy != EEVP_FINAL_PRUNED || !inf_needs_logits(c) || !dyn)
        return 0;
    return l == c->p || inf_reprune(c, l);
}

static void inf_make_cfg(inf_cfg *c, int case_i)
{
    uint32_t seed = 7001u + (uint32_t)case_i * 131u;
    int32_t j;
    memset(c, 0, sizeof *c);
    c->crit = case_i % 8;
    c->final_policy = (case_i / 8) % 2;
    c->variant = (case_i / 16) % 4;
    c->all_layers = (case_i / 2) % 2;
    c->V = rand_int(&seed, 40, 160);
    c->d = rand_int(&seed, 6, 40);
    c->L = rand_int(&seed, 2, 7);
    c->f = rand_int(&seed, 0, c->L - 1);
    c->i = rand_int(&seed, 1, 2);
    c->p = rand_int(&seed, 0, c->f);
    c->k = (ref_rand_u32(&seed) & 3) == 0 && c->variant != 2 ? 0 : rand_int(&seed, 2, c->V / 4);
    c->B = rand_int(&seed, 1, 3);
    c->T = 6;
    c->reprune_every = 1;
    c->n_static = 10;
    for (j = 0; j < c->n_static; j++)
        c->statics[j] = (int32_t)(j * 7 + 3) % c->V;
}

/* The hidden state of sequence s after layer l at step t, input token x: a
 * tied "embedding" (row x of W) plus noise, so a shallow layer sees its
 * input token. */
static void inf_hidden(const inf_cfg *c, const float *W, int32_t x, int32_t l, int32_t t,
                       int32_t s, uint32_t case_seed, float *h)
{
    uint32_t seed = case_seed ^ ((uint32_t)x * 2654435761u) ^ ((uint32_t)l * 40503u) ^
                    ((uint32_t)t * 97u + (uint32_t)s * 7919u);
    int32_t j;
    fill_random(h, c->d, &seed, -1.0f, 1.0f);
    for (j = 0; j < c->d; j++)
        h[j] += W[(int64_t)x * c->d + j] * (1.5f / (float)(l + 1));
}

START_TEST(test_inf_full_depth)
{
    inf_cfg c;
    uint32_t seed;
    float *W, *hid;
    double *z, *ab, *zs;
    int32_t *set, *tok, l, t, s, j, compared = 0, unclear = 0;
    eevp_head *head;
    eevp_ctx *ctx;
    eevp_ctx_options o = EEVP_CTX_OPTIONS_INIT;
    always_exit ae;
    ref_head rh;
    eevp_stats st;
    float lambda;
    static const int32_t ts[4] = {0, 1, 500, 100000};

    inf_make_cfg(&c, _i);
    seed = 99u + (uint32_t)_i;
    W = rand_floats((int64_t)c.V * c.d, seed, -1.0f, 1.0f);
    hid = (float *)xmalloc((size_t)c.B * (size_t)c.d * sizeof(float));
    z = (double *)xmalloc((size_t)c.V * sizeof(double));
    zs = (double *)xmalloc((size_t)c.V * sizeof(double));
    ab = (double *)xmalloc((size_t)c.V * sizeof(double));
    set = (int32_t *)xmalloc((size_t)c.V * sizeof(int32_t));
    tok = (int32_t *)xmalloc((size_t)c.B * sizeof(int32_t));
    head = head_f32(W, c.V, c.d, EEVP_NORM_RMS, NULL, 0.0f, 0);
    rh = rhead(W, c.V, c.d, EEVP_NORM_RMS, NULL, 0.0f);

    o.n_layers = c.L;
    o.max_batch = c.B;
    o.k = c.k;
    o.first_layer = c.f;
    o.interval = c.i;
    o.prune_layer = c.p;
    o.final_policy = c.final_policy;
    o.criterion = c.crit < 6 ? c.crit : EEVP_CRITERION_TOP2_GAP;
    o.threshold = INFINITY;
    if (c.variant == 1) {
        o.schedule = EEVP_SCHEDULE_CALM;
        o.max_length = 64;
    } else if (c.variant == 2) {
        o.reprune_every = c.reprune_every;
    } else if (c.variant == 3) {
        o.static_mode = EEVP_STATIC_ONLY;
        o.static_ids = c.statics;
        o.n_static = c.n_static;
    }
    ctx = ctx_make(head, &o);
    memset(&ae, 0, sizeof ae);
    if (c.crit >= 6)
        set_always_exit(ctx, &ae, c.crit == 6 ? EEVP_NEEDS_LOGITS : 0u);
    for (l = 0; l < c.L; l++)
        ck_assert_msg(eevp_ctx_layer_required(ctx, l) == inf_expect_required(&c, l),
                      "case %d: layer %d required %d, expected %d", _i, (int)l,
                      eevp_ctx_layer_required(ctx, l), inf_expect_required(&c, l));
    for (j = 0; j < 4; j++) {
        ck_assert_int_eq(eevp_ctx_threshold(ctx, ts[j], &lambda), EEVP_OK);
        ck_assert(isinf(lambda) && lambda > 0.0f);
    }

    for (s = 0; s < c.B; s++)
        tok[s] = (s * 11 + 1) % c.V;
    for (t = 0; t < c.T; t++) {
        int32_t pos[4] = {t, t + 3, t + 100, t};
        ck_assert_int_eq(eevp_step_begin(ctx, c.B, pos), EEVP_OK);
        for (l = 0; l < c.L && eevp_step_n_running(ctx) > 0; l++) {
            int rc;
            if (!c.all_layers && eevp_ctx_layer_required(ctx, l) != 1)
                continue;
            for (s = 0; s < c.B; s++)
                inf_hidden(&c, W, tok[s], l, t, s, seed, hid + (int64_t)s * c.d);
            rc = eevp_step_layer(ctx, l, hid, c.d, c.B, NULL);
            ck_assert_msg(rc == EEVP_OK, "case %d layer %d: %s", _i, (int)l,
                          eevp_ctx_errmsg(ctx));
            if (l < c.L - 1)
                ck_assert_int_eq(eevp_step_n_running(ctx), c.B);
        }
        for (s = 0; s < c.B; s++) {
            eevp_result r = get_result(ctx, s);
            int32_t set_layer = -1, n_set = 0, n_static = 0, best;
            int clear = 1, pruned_expected = 0, held;
            float x[64];
            ck_assert_int_eq(r.reason, EEVP_REASON_LAST_LAYER);
            ck_assert_int_eq(r.layer, c.L - 1);
            ck_assert(isinf(r.threshold) && r.threshold > 0.0f);
            /* Where the reference's set comes from, when the final policy
             * decides on one (not at a last layer that is p itself). */
            if (c.final_policy == EEVP_FINAL_PRUNED && inf_needs_logits(&c) && c.p < c.L - 1) {
                if (c.variant == 3) {
                    for (j = 0; j < c.n_static; j++) {
                        int32_t v = c.statics[j], dup = 0, m;
                        for (m = 0; m < n_set; m++)
                            dup |= set[m] == v;
                        if (!dup)
                            set[n_set++] = v;
                    }
                    n_static = n_set;
                } else if (c.k > 0 && c.k < c.V) {
                    set_layer = c.p;
                    for (l = c.p + 1; l < c.L - 1; l++)
                        if (inf_reprune(&c, l))
                            set_layer = l;
                    inf_hidden(&c, W, tok[s], set_layer, t, s, seed, x);
                    ref_z(&rh, x, zs, ab);
                    clear &= ref_topk_set(zs, ab, c.V, c.k, c.d, set);
                    n_set = c.k;
                }
                pruned_expected = n_set > 0;
            }
            inf_hidden(&c, W, tok[s], c.L - 1, t, s, seed, x);
            ref_z(&rh, x, z, ab);
            {
                int clear2;
                best = ref_best(z, ab, n_set ? set : NULL, n_set ? n_set : c.V, c.d, &clear2);
                clear &= clear2;
            }
            /* A set is held only where the final policy decides on one
             * (a static-only set also when the last layer is p itself). */
            held = pruned_expected ? n_set : 0;
            if (c.variant == 3 && c.final_policy == EEVP_FINAL_PRUNED && inf_needs_logits(&c) &&
                c.p == c.L - 1) {
                for (j = 0; j < c.n_static; j++) {
                    int32_t m, dup = 0;
                    for (m = 0; m < j; m++)
                        dup |= c.statics[m] == c.statics[j];
                    n_static += !dup;
                }
                held = n_static;
            }
            ck_assert_int_eq(r.pruned, pruned_expected);
            ck_assert_msg(r.set_size == held, "case %d: set_size %d, expected %d", _i,
                          (int)r.set_size, (int)held);
            if (clear) {
                ck_assert_msg(r.token == best, "case %d t %d seq %d: token %d, full depth %d",
                              _i, (int)t, (int)s, (int)r.token, (int)best);
                compared++;
            } else {
                unclear++;
            }
            tok[s] = r.token; /* free-running: the next input is this token */
        }
        ck_assert_int_eq(eevp_step_end(ctx), EEVP_OK);
    }
    st = get_stats(ctx);
    ck_assert_int_eq(st.tokens, c.B * c.T);
    ck_assert_int_eq(st.exited_early, 0);
    ck_assert_int_eq(st.reached_last, c.B * c.T);
    ck_assert_int_eq(st.checks, c.B * c.T); /* the criterion runs at the last layer only */
    if (c.crit >= 6) {
        for (l = 0; l < c.L - 1; l++)
            ck_assert_msg(ae.calls[l] == 0, "case %d: custom criterion called at layer %d", _i,
                          (int)l);
        ck_assert_int_eq(ae.calls[c.L - 1], c.B * c.T);
    }
    ck_assert_msg(unclear * 5 <= compared + unclear, "case %d: %d of %d unclear", _i,
                  (int)unclear, (int)(compared + unclear));
    eevp_ctx_free(ctx);
    eevp_head_free(head);
    free(W);
    free(hid);
    free(z);
    free(zs);
    free(ab);
    free(set);
    free(tok);
}
END_TEST

/* The same always-exit criterion exits at the first check with a finite
 * threshold (so the test above can fail), and not before the last layer
 * with +INFINITY, also after eevp_ctx_set_criterion changed what is
 * required. */
START_TEST(test_inf_custom_override)
{
    enum { V = 50, D = 12, L = 6 };
    float *W = rand_floats(V * D, 5, -1, 1), *hid = rand_floats(L * D, 6, -2, 2);
    eevp_head *head = head_f32(W, V, D, EEVP_NORM_NONE, NULL, 0.0f, 0);
    eevp_ctx_options o = EEVP_CTX_OPTIONS_INIT;
    const float thr[2] = {0.5f, INFINITY};
    int32_t j, l;
    for (j = 0; j < 4; j++) {
        always_exit ae;
        eevp_ctx *ctx;
        eevp_result r;
        memset(&ae, 0, sizeof ae);
        o.n_layers = L;
        o.k = 8;
        o.first_layer = 2;
        o.threshold = thr[j & 1];
        ctx = ctx_make(head, &o);
        /* Built-in top-2 gap: layer 2 (p = f) is required either way with a
         * finite threshold, only the last layer with +INFINITY. */
        ck_assert_int_eq(eevp_ctx_layer_required(ctx, 2), (j & 1) ? 0 : 1);
        set_always_exit(ctx, &ae, (j & 2) ? EEVP_NEEDS_LOGITS : 0u);
        for (l = 0; l < L - 1; l++)
            ck_assert_int_eq(eevp_ctx_layer_required(ctx, l), (j & 1) ? 0 : l >= 2);
        r = one_step(ctx, L, D, hid, 0, 1);
        if (j & 1) {
            ck_assert_int_eq(r.reason, EEVP_REASON_LAST_LAYER);
            ck_assert_int_eq(r.layer, L - 1);
            ck_assert_int_eq(ae.calls[2], 0);
            ck_assert_int_eq(ae.calls[L - 1], 1);
        } else {
            ck_assert_int_eq(r.reason, EEVP_REASON_CONFIDENT);
            ck_assert_int_eq(r.layer, 2);
            ck_assert_int_eq(ae.calls[2], 1);
        }
        eevp_ctx_free(ctx);
    }
    /* -INFINITY and NaN stay refused. */
    {
        eevp_ctx *ctx = (eevp_ctx *)W;
        int64_t bytes = 1;
        o.threshold = -INFINITY;
        ck_assert_int_eq(eevp_ctx_create(&ctx, head, &o, NULL, 0), EEVP_ERANGE);
        ck_assert_ptr_null(ctx);
        ck_assert_int_eq(eevp_ctx_memory_estimate(&bytes, head, &o), EEVP_ERANGE);
        o.threshold = NAN;
        ck_assert_int_eq(eevp_ctx_create(&ctx, head, &o, NULL, 0), EEVP_ERANGE);
        o.threshold = INFINITY;
        ck_assert_int_eq(eevp_ctx_memory_estimate(&bytes, head, &o), EEVP_OK);
    }
    eevp_head_free(head);
    free(W);
    free(hid);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* The exit decision agrees with the reported values: c > lambda in float  */
/* ------------------------------------------------------------------------ */

enum { FC_CUSTOM_LOGITS = 6, FC_CUSTOM_HIDDEN = 7, N_FC_CRIT = 7, N_FC_CASES = 120 };

static const int32_t fc_crits[N_FC_CRIT] = {
    EEVP_CRITERION_TOP2_GAP, EEVP_CRITERION_MAX_PROB, EEVP_CRITERION_ENTROPY,
    EEVP_CRITERION_SATURATION, EEVP_CRITERION_JS, FC_CUSTOM_LOGITS, FC_CUSTOM_HIDDEN};

/* Custom confidences: deterministic floats of what the view shows. */
static int fc_decide_logits(void *state, const eevp_exit_view *v, float *conf, int32_t *ex)
{
    (void)state;
    (void)ex;
    *conf = fabsf(sinf(v->top1_logit * 3.1f + v->log_sum_exp + (float)v->layer));
    return 0;
}

static int fc_decide_hidden(void *state, const eevp_exit_view *v, float *conf, int32_t *ex)
{
    (void)state;
    (void)ex;
    *conf = fabsf(sinf(v->hidden[0] * 5.3f + v->hidden[1] + (float)v->layer));
    return 0;
}

typedef struct fc_case {
    int32_t crit, V, d, L, f, p, k, calm, t, N;
    float tau;
} fc_case;

static eevp_ctx *fc_ctx(const fc_case *c, const eevp_head *head, float thr)
{
    eevp_ctx_options o = EEVP_CTX_OPTIONS_INIT;
    eevp_ctx *ctx;
    o.n_layers = c->L;
    o.k = c->k;
    o.first_layer = c->f;
    o.prune_layer = c->p;
    o.criterion = c->crit < FC_CUSTOM_LOGITS ? c->crit : EEVP_CRITERION_TOP2_GAP;
    o.threshold = thr;
    if (c->calm) {
        o.schedule = EEVP_SCHEDULE_CALM;
        o.schedule_tau = c->tau;
        o.max_length = c->N;
    }
    ctx = ctx_make(head, &o);
    if (c->crit >= FC_CUSTOM_LOGITS) {
        eevp_criterion_vtbl vt;
        memset(&vt, 0, sizeof vt);
        vt.struct_size = sizeof vt;
        vt.needs = c->crit == FC_CUSTOM_LOGITS ? EEVP_NEEDS_LOGITS : 0u;
        vt.decide = c->crit == FC_CUSTOM_LOGITS ? fc_decide_logits : fc_decide_hidden;
        ck_assert_int_eq(eevp_ctx_set_criterion(ctx, &vt, NULL), EEVP_OK);
    }
    return ctx;
}

static eevp_result fc_run(const fc_case *c, const eevp_head *head, const float *hid, float thr)
{
    eevp_ctx *ctx = fc_ctx(c, head, thr);
    eevp_result r = one_step(ctx, c->L, c->d, hid, c->t, 0);
    eevp_ctx_free(ctx);
    return r;
}

/* lambda(t) of the context for threshold thr. */
static float fc_lambda(const fc_case *c, const eevp_head *head, float thr)
{
    eevp_ctx *ctx = fc_ctx(c, head, thr);
    float lambda = NAN;
    ck_assert_int_eq(eevp_ctx_threshold(ctx, c->t, &lambda), EEVP_OK);
    eevp_ctx_free(ctx);
    return lambda;
}

/* A threshold whose lambda(t) is exactly `want` (*found 0 when the schedule
 * never lands on it), searched float by float from the analytic inverse. */
static float fc_threshold_for(const fc_case *c, const eevp_head *head, float want, int *found)
{
    float thr, lam;
    int n;
    *found = 1;
    if (!c->calm)
        return want;
    thr = (float)((double)want * 10.0 / (9.0 + exp(-(double)c->tau * c->t / c->N)));
    for (n = 0; n < 64; n++) {
        lam = fc_lambda(c, head, thr);
        if (lam == want)
            return thr;
        thr = nextafterf(thr, lam < want ? INFINITY : -INFINITY);
    }
    *found = 0;
    return thr;
}

START_TEST(test_float_decision)
{
    const int32_t crit = fc_crits[_i];
    int32_t n, tested = 0, skipped = 0;
    for (n = 0; n < N_FC_CASES; n++) {
        uint32_t seed = 31337u + (uint32_t)_i * 100003u + (uint32_t)n * 7919u;
        fc_case c;
        float *W, *hid, base, cf, thr, below, lam_below;
        eevp_head *head;
        eevp_result r0, r1, r2;
        int32_t l, e;
        int found;
        memset(&c, 0, sizeof c);
        c.crit = crit;
        c.V = rand_int(&seed, 8, 120);
        c.d = rand_int(&seed, 4, 24);
        c.L = rand_int(&seed, 3, 5);
        c.f = rand_int(&seed, 0, c.L - 3);
        c.p = rand_int(&seed, 0, c.f);
        c.k = (ref_rand_u32(&seed) & 1) ? 0 : rand_int(&seed, 2, c.V - 1);
        c.calm = (n % 3) == 2;
        c.t = rand_int(&seed, 0, 3000);
        c.N = rand_int(&seed, 1, 2048);
        c.tau = (float)rand_int(&seed, 0, 8);
        W = rand_floats((int64_t)c.V * c.d, seed + 1u, -1.0f, 1.0f);
        hid = rand_floats((int64_t)c.L * c.d, seed + 2u, -2.0f, 2.0f);
        /* Correlated layers, so that a saturation or JS check may exit. */
        for (l = 1; l < c.L; l++) {
            int32_t j;
            for (j = 0; j < c.d; j++)
                hid[l * c.d + j] = 0.3f * hid[l * c.d + j] + hid[(l - 1) * c.d + j];
        }
        head = head_f32(W, c.V, c.d, EEVP_NORM_RMS, NULL, 0.0f, 0);
        /* 1. Find the exit layer e and the confidence c reported there: a
         * threshold below every confidence (0 for the criteria that report 0
         * at their first check). */
        base = (crit == EEVP_CRITERION_SATURATION || crit == EEVP_CRITERION_JS) ? 0.0f : -1.0f;
        {
            fc_case c0 = c;
            c0.calm = 0;
            r0 = fc_run(&c0, head, hid, base);
        }
        if (r0.reason != EEVP_REASON_CONFIDENT || !(fabsf(r0.confidence) > 1e-30f)) {
            skipped++;
            goto next;
        }
        e = r0.layer;
        cf = r0.confidence;
        /* 2. lambda(t) == c: c > lambda is false, no exit at e. */
        thr = fc_threshold_for(&c, head, cf, &found);
        if (!found) {
            skipped++;
            goto next;
        }
        r1 = fc_run(&c, head, hid, thr);
        ck_assert_msg(r1.threshold == cf, "crit %d case %d: threshold %a, wanted %a", crit, n,
                      (double)r1.threshold, (double)cf);
        ck_assert_msg(r1.layer > e, "crit %d case %d: exited at %d with lambda == c == %a", crit,
                      n, (int)r1.layer, (double)cf);
        /* 3. lambda(t) the float below c: exits at e, with c reported. */
        below = thr;
        do {
            below = nextafterf(below, -INFINITY);
            lam_below = c.calm ? fc_lambda(&c, head, below) : below;
        } while (!(lam_below < cf));
        r2 = fc_run(&c, head, hid, below);
        ck_assert_msg(r2.reason == EEVP_REASON_CONFIDENT && r2.layer == e,
                      "crit %d case %d: lambda %a below c %a: reason %d layer %d, wanted exit "
                      "at %d", crit, n, (double)lam_below, (double)cf, (int)r2.reason,
                      (int)r2.layer, (int)e);
        ck_assert(memcmp(&r2.confidence, &cf, sizeof cf) == 0);
        ck_assert(r2.threshold == lam_below);
        ck_assert(r2.confidence > r2.threshold);
        ck_assert(r1.reason != EEVP_REASON_CONFIDENT || r1.confidence > r1.threshold);
        tested++;
    next:
        eevp_head_free(head);
        free(W);
        free(hid);
    }
    ck_assert_msg(tested >= N_FC_CASES / 2, "crit %d: %d of %d cases tested", crit, (int)tested,
                  N_FC_CASES);
    (void)skipped;
}
END_TEST

/* ------------------------------------------------------------------------ */
/* head_bytes counts W as stored: 2 bytes a weight in fp16 and bf16        */
/* ------------------------------------------------------------------------ */

START_TEST(test_head_bytes_half)
{
    static const int32_t types[3] = {EEVP_WEIGHT_F32, EEVP_WEIGHT_F16, EEVP_WEIGHT_BF16};
    enum { V = 96, D = 20, L = 4, K = 8, B = 2, T = 3 };
    const int32_t wt = types[_i % 3];
    const int screen = _i >= 3;
    const int64_t wb = wt == EEVP_WEIGHT_F32 ? 4 : 2, d = D;
    uint32_t seed = 404u + (uint32_t)_i;
    float *W = rand_floats(V * D, seed, -1, 1), *hid = rand_floats(L * B * D, seed + 9u, -1, 1);
    uint16_t *Wh = (uint16_t *)xmalloc(V * D * sizeof(uint16_t));
    eevp_head_options ho = EEVP_HEAD_OPTIONS_INIT;
    eevp_ctx_options o = EEVP_CTX_OPTIONS_INIT;
    eevp_head *head;
    eevp_ctx *ctx;
    eevp_stats st;
    int64_t sm, bytes, flops;
    int32_t j, t, l;
    for (j = 0; j < V * D; j++) /* finite half values of either kind */
        Wh[j] = (uint16_t)(((ref_rand_u32(&seed) & 1u) << 15) |
                           (wt == EEVP_WEIGHT_F16 ? (uint32_t)rand_int(&seed, 10, 15) << 10
                                                  : (uint32_t)rand_int(&seed, 118, 127) << 7) |
                           (ref_rand_u32(&seed) & (wt == EEVP_WEIGHT_F16 ? 0x3ffu : 0x7fu)));
    ho.n_vocab = V;
    ho.dim = D;
    ho.weight_type = wt;
    if (wt == EEVP_WEIGHT_F32)
        ho.weights = W;
    else
        ho.weights_half = Wh;
    ho.screen_mult = screen ? 2 : 0;
    head = head_make(&ho);
    o.n_layers = L;
    o.max_batch = B;
    o.k = K;
    o.prune_layer = 0;
    o.first_layer = 1;
    o.threshold = 2.0f; /* the top-2 gap never exceeds 1: no exit */
    o.flags = screen ? EEVP_CTX_SCREEN : 0u;
    ctx = ctx_make(head, &o);
    for (t = 0; t < T; t++) {
        ck_assert_int_eq(eevp_step_begin(ctx, B, NULL), EEVP_OK);
        for (l = 0; l < L; l++)
            ck_assert_int_eq(eevp_step_layer(ctx, l, hid + l * B * D, D, B, NULL), EEVP_OK);
        ck_assert_int_eq(eevp_step_end(ctx), EEVP_OK);
    }
    st = get_stats(ctx);
    /* Per token and sequence: layer 0 (the pruning layer) a full projection
     * (or, screened, the int8 pass at 1 byte a weight and 2K exact rows)
     * and a gather of K rows, both from W as stored; layers 1 and 2 pruned
     * checks on the gathered fp32 rows; layer 3 a full projection.  The
     * baseline: a full projection at each of the 3 checks. */
    sm = 2 * K < V ? 2 * K : V;
    bytes = screen ? V * d + wb * (sm + K) * d : wb * V * d + wb * K * d;
    bytes += 2 * 4 * K * d + wb * V * d;
    flops = screen ? (2 * d - 1) * (V + sm) : (2 * d - 1) * V;
    flops += (2 * d - 1) * (2 * K + V);
    ck_assert_int_eq(st.checks, 3 * B * T);
    ck_assert_int_eq(st.head_bytes, bytes * B * T);
    ck_assert_int_eq(st.head_bytes_baseline, 3 * wb * V * d * B * T);
    ck_assert_int_eq(st.head_flops, flops * B * T);
    ck_assert_int_eq(st.head_flops_baseline, 3 * (2 * d - 1) * V * B * T);
    eevp_ctx_free(ctx);
    eevp_head_free(head);
    free(W);
    free(Wh);
    free(hid);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Alignment: W and hidden states need only their element's alignment      */
/* ------------------------------------------------------------------------ */

START_TEST(test_alignment)
{
    static const int32_t types[3] = {EEVP_WEIGHT_F32, EEVP_WEIGHT_F16, EEVP_WEIGHT_BF16};
    static const int64_t dims[3] = {37, 64, 9};
    const int32_t wt = types[_i % 3];
    const int64_t V = 70, d = dims[_i / 3], ld = d + 1;
    const int32_t nmax = 9;
    uint32_t seed = 77u + (uint32_t)_i;
    /* Aligned copies, and copies 4 bytes (fp32) or 2 bytes (half) past a
     * 64-byte boundary: aligned to their element, to nothing more. */
    unsigned char *blk_w = (unsigned char *)xmalloc((size_t)(V * d * 4 + 128));
    unsigned char *blk_h = (unsigned char *)xmalloc((size_t)(nmax * ld * 4 + 128));
    float *Wa = rand_floats(V * d, seed, -1, 1), *ha = rand_floats(nmax * ld, seed + 1u, -2, 2);
    uint16_t *Wha = (uint16_t *)xmalloc((size_t)(V * d) * sizeof(uint16_t));
    unsigned char *wbase = blk_w + (64 - (uintptr_t)blk_w % 64) % 64;
    unsigned char *hbase = blk_h + (64 - (uintptr_t)blk_h % 64) % 64;
    float *Wm = (float *)(void *)(wbase + 4), *hm = (float *)(void *)(hbase + 4);
    uint16_t *Whm = (uint16_t *)(void *)(wbase + 2);
    eevp_head_options ho = EEVP_HEAD_OPTIONS_INIT;
    eevp_head *ha_head, *hm_head;
    float *za = (float *)xmalloc((size_t)(nmax * V) * sizeof(float));
    float *zm = (float *)xmalloc((size_t)(nmax * V) * sizeof(float));
    void *work;
    int32_t n, j;

    for (j = 0; j < V * d; j++)
        Wha[j] = (uint16_t)(wt == EEVP_WEIGHT_F16 ? 0x3000u + (ref_rand_u32(&seed) & 0x0fffu)
                                                  : 0x3e00u + (ref_rand_u32(&seed) & 0x01ffu)) |
                 (uint16_t)((ref_rand_u32(&seed) & 1u) << 15);
    if (wt == EEVP_WEIGHT_F32) /* Wm and Whm share the block */
        memcpy(Wm, Wa, (size_t)(V * d) * sizeof(float));
    else
        memcpy(Whm, Wha, (size_t)(V * d) * sizeof(uint16_t));
    memcpy(hm, ha, (size_t)(nmax * ld) * sizeof(float));
    ho.n_vocab = V;
    ho.dim = d;
    ho.norm = EEVP_NORM_RMS;
    ho.weight_type = wt;
    if (wt == EEVP_WEIGHT_F32)
        ho.weights = Wa;
    else
        ho.weights_half = Wha;
    ha_head = head_make(&ho);
    if (wt == EEVP_WEIGHT_F32)
        ho.weights = Wm;
    else
        ho.weights_half = Whm;
    hm_head = head_make(&ho);
    ck_assert_int_eq(posix_memalign(&work, 64, (size_t)eevp_head_workspace_size(ha_head, nmax)),
                     0);
    /* 1 .. 9 hidden states: every width of the fixed-order kernel. */
    for (n = 1; n <= nmax; n++) {
        ck_assert_int_eq(eevp_head_logits(ha_head, n, ha, ld, za, V, work), EEVP_OK);
        ck_assert_int_eq(eevp_head_logits(hm_head, n, hm, ld, zm, V, work), EEVP_OK);
        ck_assert_msg(memcmp(za, zm, (size_t)(n * V) * sizeof(float)) == 0,
                      "type %d d %lld n %d: logits differ with unaligned W and states", (int)wt,
                      (long long)d, (int)n);
    }
    /* A pruned step: tokens, confidences and candidates the same bits. */
    {
        eevp_ctx_options o = EEVP_CTX_OPTIONS_INIT;
        eevp_ctx *ca, *cm;
        eevp_result ra, rm;
        float la[16], lm[16];
        int32_t ia[16], im[16], na, nm;
        o.n_layers = 4;
        o.k = 12;
        o.threshold = 2.0f;
        ca = ctx_make(ha_head, &o);
        cm = ctx_make(hm_head, &o);
        ck_assert_int_eq(eevp_step_begin(ca, 1, NULL), EEVP_OK);
        ck_assert_int_eq(eevp_step_begin(cm, 1, NULL), EEVP_OK);
        for (j = 0; j < 4; j++) {
            ck_assert_int_eq(eevp_step_layer(ca, j, ha + j * ld, d, 1, NULL), EEVP_OK);
            ck_assert_int_eq(eevp_step_layer(cm, j, hm + j * ld, d, 1, NULL), EEVP_OK);
        }
        ra = get_result(ca, 0);
        rm = get_result(cm, 0);
        ck_assert_int_eq(ra.token, rm.token);
        ck_assert(memcmp(&ra.confidence, &rm.confidence, sizeof(float)) == 0);
        ck_assert_int_eq(eevp_step_candidates(ca, 0, 16, la, ia, &na), EEVP_OK);
        ck_assert_int_eq(eevp_step_candidates(cm, 0, 16, lm, im, &nm), EEVP_OK);
        ck_assert_int_eq(na, nm);
        ck_assert(memcmp(la, lm, (size_t)na * sizeof(float)) == 0);
        ck_assert(memcmp(ia, im, (size_t)na * sizeof(int32_t)) == 0);
        eevp_ctx_free(ca);
        eevp_ctx_free(cm);
    }
    free(work);
    eevp_head_free(ha_head);
    eevp_head_free(hm_head);
    free(blk_w);
    free(blk_h);
    free(Wa);
    free(ha);
    free(Wha);
    free(za);
    free(zm);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Every token masked                                                       */
/* ------------------------------------------------------------------------ */

typedef struct masked_view {
    int32_t calls, bad;
} masked_view;

static int masked_decide(void *state, const eevp_exit_view *v, float *conf, int32_t *ex)
{
    masked_view *m = (masked_view *)state;
    int32_t j;
    (void)ex;
    m->calls++;
    /* The view of an all-masked candidate set: the two first ids in the
     * order (the lowest), logits and log-sum-exp -inf. */
    if (v->n < 2 || v->top1_id != v->ids[0] || !(v->top1_logit == -INFINITY) ||
        !(v->top2_logit == -INFINITY) || !(v->log_sum_exp == -INFINITY))
        m->bad++;
    for (j = 0; j < v->n; j++)
        m->bad += !(v->logits[j] == -INFINITY);
    if (v->top2_id != (v->pruned ? v->ids[1] : v->top1_id + 1))
        m->bad++;
    *conf = 0.0f;
    return 0;
}

START_TEST(test_all_masked)
{
    /* _i: criterion (0..5 built-in, 6 custom with logits) x k (0, 4) x
     * soft-cap (none, 2) x final policy. */
    enum { V = 24, D = 6, L = 4, OFF = 5 };
    const int32_t crit = _i % 7, k = (_i / 7) % 2 ? 4 : 0;
    const float cap = (_i / 14) % 2 ? 2.0f : 0.0f;
    const int32_t final_policy = (_i / 28) % 2;
    float *W = rand_floats(V * D, 3u + (uint32_t)_i, -1, 1);
    float *hid = rand_floats(L * D, 4u + (uint32_t)_i, -2, 2);
    float bias[V], cl[V];
    int32_t ci[V], n, j;
    const float thr[2] = {0.0f, -0.5f};
    eevp_head *head;
    for (j = 0; j < V; j++)
        bias[j] = -INFINITY;
    head = head_f32(W, V, D, EEVP_NORM_RMS, bias, cap, OFF);
    for (j = 0; j < 2; j++) {
        eevp_ctx_options o = EEVP_CTX_OPTIONS_INIT;
        eevp_ctx *ctx;
        eevp_result r;
        masked_view mv = {0, 0};
        int32_t m;
        o.n_layers = L;
        o.k = k;
        o.first_layer = 1;
        o.final_policy = final_policy;
        o.criterion = crit < 6 ? crit : EEVP_CRITERION_TOP2_GAP;
        o.threshold = thr[j];
        ctx = ctx_make(head, &o);
        if (crit == 6) {
            eevp_criterion_vtbl vt;
            memset(&vt, 0, sizeof vt);
            vt.struct_size = sizeof vt;
            vt.needs = EEVP_NEEDS_LOGITS;
            vt.decide = masked_decide;
            ck_assert_int_eq(eevp_ctx_set_criterion(ctx, &vt, &mv), EEVP_OK);
        }
        r = one_step(ctx, L, D, hid, 0, 0);
        ck_assert_int_eq(r.status, EEVP_OK);
        /* The token: the first in the order, the lowest id. */
        ck_assert_int_eq(r.token, OFF);
        if (crit != EEVP_CRITERION_SATURATION) {
            /* c = 0 at every check: lambda 0 never exits (the stability
             * criterion included), lambda -0.5 exits at the first check. */
            ck_assert_msg(r.confidence == 0.0f, "crit %d: confidence %g", (int)crit,
                          (double)r.confidence);
            ck_assert_int_eq(r.layer, j == 0 ? L - 1 : 1);
        }
        ck_assert_int_eq(eevp_step_candidates(ctx, 0, V, cl, ci, &n), EEVP_OK);
        ck_assert_int_eq(n, r.pruned ? k : V);
        for (m = 0; m < n; m++) {
            ck_assert(cl[m] == -INFINITY);
            ck_assert_int_eq(ci[m], OFF + m); /* the pruned set: the k lowest ids */
        }
        if (k > 0 && r.layer > 1 && crit != EEVP_CRITERION_SATURATION)
            ck_assert_int_eq(r.set_size, k);
        if (crit == 6) {
            ck_assert_int_gt(mv.calls, 0);
            ck_assert_int_eq(mv.bad, 0);
        }
        eevp_ctx_free(ctx);
    }
    eevp_head_free(head);
    free(W);
    free(hid);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Soft-cap with a -inf bias: the logit stays -inf, not -cap               */
/* ------------------------------------------------------------------------ */

START_TEST(test_softcap_masked)
{
    enum { V = 40, D = 10, L = 3 };
    const float cap = 1.5f;
    float *W = rand_floats(V * D, 21u + (uint32_t)_i, -1, 1);
    float *hid = rand_floats(L * D, 22u + (uint32_t)_i, -2, 2);
    float bias[V], cl[V];
    int32_t ci[V], n, j, n_masked = 0, best, top_raw;
    double z[V], ab[V], zraw[V], pm, denom_cap = 0.0, zmax = -INFINITY;
    ref_head rh;
    eevp_head *head;
    eevp_ctx *ctx;
    eevp_ctx_options o = EEVP_CTX_OPTIONS_INIT;
    eevp_result r;
    int clear;
    /* Mask every third token, and the one the unbiased head likes best. */
    rh = rhead(W, V, D, EEVP_NORM_NONE, NULL, cap);
    ref_z(&rh, hid + (L - 1) * D, zraw, ab);
    top_raw = ref_best(zraw, ab, NULL, V, D, &clear);
    for (j = 0; j < V; j++) {
        bias[j] = (j % 3 == 0 || j == top_raw) ? -INFINITY : 0.1f * (float)(j % 5);
        n_masked += bias[j] == -INFINITY;
    }
    head = head_f32(W, V, D, EEVP_NORM_NONE, bias, cap, 0);
    rh.bias = bias;
    o.n_layers = L;
    o.k = 0;
    o.criterion = EEVP_CRITERION_MAX_PROB;
    o.threshold = 2.0f;
    ctx = ctx_make(head, &o);
    r = one_step(ctx, L, D, hid, 0, 0);
    ref_z(&rh, hid + (L - 1) * D, z, ab);
    best = ref_best(z, ab, NULL, V, D, &clear);
    ck_assert(bias[best] > -INFINITY);
    if (clear)
        ck_assert_int_eq(r.token, best);
    ck_assert(bias[r.token] > -INFINITY);
    ck_assert(fabs((double)r.confidence - ref_conf_maxprob(z, V)) < 1e-5);
    /* Had the masked tokens -cap as logits, p1 would be visibly lower. */
    for (j = 0; j < V; j++)
        if (z[j] > zmax)
            zmax = z[j];
    for (j = 0; j < V; j++)
        denom_cap += exp((bias[j] == -INFINITY ? -(double)cap : z[j]) - zmax);
    pm = 1.0 / denom_cap;
    ck_assert(fabs((double)r.confidence - pm) > 1e-3);
    ck_assert_int_eq(eevp_step_candidates(ctx, 0, V, cl, ci, &n), EEVP_OK);
    ck_assert_int_eq(n, V);
    for (j = 0; j < V; j++) {
        const int masked = bias[ci[j]] == -INFINITY;
        ck_assert_int_eq(masked, j >= V - n_masked); /* masked last, at -inf */
        if (masked)
            ck_assert(cl[j] == -INFINITY);
        else
            ck_assert(cl[j] >= -cap && cl[j] <= cap);
    }
    eevp_ctx_free(ctx);
    eevp_head_free(head);
    free(W);
    free(hid);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* eps = 0 with a zero (or, for LayerNorm, constant) state                  */
/* ------------------------------------------------------------------------ */

START_TEST(test_eps0_zero_state)
{
    /* _i: 0 RMS zero, 1 LayerNorm zero, 2 LayerNorm constant with norm_bias;
     * +3: with a logit bias. */
    enum { V = 30, D = 8, L = 2 };
    const int norm = _i % 3 == 0 ? EEVP_NORM_RMS : EEVP_NORM_LAYER;
    const int with_bias = _i >= 3;
    float *W = rand_floats(V * D, 41u, -1, 1), *nb = rand_floats(D, 42u, -1, 1);
    float *lb = rand_floats(V, 43u, -1, 1), hid[L * D], z[V];
    double zexp[V];
    eevp_head_options ho = EEVP_HEAD_OPTIONS_INIT;
    eevp_head *head;
    eevp_ctx *ctx;
    eevp_ctx_options o = EEVP_CTX_OPTIONS_INIT;
    eevp_result r;
    void *work;
    int32_t j, c, best = 0;
    for (j = 0; j < L * D; j++)
        hid[j] = _i % 3 == 2 ? 0.75f : 0.0f;
    ho.n_vocab = V;
    ho.dim = D;
    ho.weights = W;
    ho.norm = norm;
    ho.norm_eps = 0.0f;
    ho.norm_bias = _i % 3 == 2 ? nb : NULL;
    ho.logit_bias = with_bias ? lb : NULL;
    head = head_make(&ho);
    /* Expected: the state normalises to zero (plus norm_bias), so z_v is
     * W_v . norm_bias + b_v. */
    for (j = 0; j < V; j++) {
        double s = 0.0;
        for (c = 0; c < D; c++)
            s += _i % 3 == 2 ? (double)W[j * D + c] * nb[c] : 0.0;
        zexp[j] = s + (with_bias ? (double)lb[j] : 0.0);
        if (zexp[j] > zexp[best])
            best = j;
    }
    ck_assert_int_eq(posix_memalign(&work, 64, (size_t)eevp_head_workspace_size(head, 1)), 0);
    ck_assert_int_eq(eevp_head_logits(head, 1, hid, D, z, V, work), EEVP_OK);
    for (j = 0; j < V; j++)
        ck_assert_msg(fabs((double)z[j] - zexp[j]) < 1e-5, "z[%d] = %g, expected %g", (int)j,
                      (double)z[j], zexp[j]);
    o.n_layers = L;
    o.k = 4;
    o.criterion = EEVP_CRITERION_MAX_PROB;
    o.threshold = 2.0f;
    ctx = ctx_make(head, &o);
    r = one_step(ctx, L, D, hid, 0, 0);
    ck_assert_int_eq(r.status, EEVP_OK);
    ck_assert_int_eq(r.reason, EEVP_REASON_LAST_LAYER);
    ck_assert_int_eq(r.token, best); /* all ties (no bias, zero state): the lowest id, 0 */
    if (_i == 0 || _i == 1)
        ck_assert(fabs((double)r.confidence - 1.0 / V) < 1e-6);
    eevp_ctx_free(ctx);
    free(work);
    eevp_head_free(head);
    free(W);
    free(nb);
    free(lb);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* norm_weight given without a norm                                         */
/* ------------------------------------------------------------------------ */

START_TEST(test_norm_weight_without_norm)
{
    enum { V = 33, D = 12 };
    float *W = rand_floats(V * D, 51u, -1, 1), *nw = rand_floats(D, 52u, 0.5f, 2);
    float *h = rand_floats(3 * D, 53u, -2, 2), za[3 * V], zb[3 * V];
    eevp_head_options ho = EEVP_HEAD_OPTIONS_INIT;
    eevp_head *a, *b;
    void *work;
    ho.n_vocab = V;
    ho.dim = D;
    ho.weights = W;
    ho.norm = EEVP_NORM_NONE;
    a = head_make(&ho);
    ho.norm_weight = nw; /* accepted, and ignored */
    b = head_make(&ho);
    ck_assert_int_eq(posix_memalign(&work, 64, (size_t)eevp_head_workspace_size(a, 3)), 0);
    ck_assert_int_eq(eevp_head_logits(a, 3, h, D, za, V, work), EEVP_OK);
    ck_assert_int_eq(eevp_head_logits(b, 3, h, D, zb, V, work), EEVP_OK);
    ck_assert(memcmp(za, zb, sizeof za) == 0);
    eevp_head_free(a);
    eevp_head_free(b);
    /* Under EEVP_HEAD_COPY it is still copied, and counted. */
    ho.flags = EEVP_HEAD_COPY;
    ho.norm_weight = NULL;
    a = head_make(&ho);
    ho.norm_weight = nw;
    b = head_make(&ho);
    ck_assert_int_ge(eevp_head_memory(b) - eevp_head_memory(a), (int64_t)(D * sizeof(float)));
    ck_assert_int_eq(eevp_head_logits(b, 3, h, D, zb, V, work), EEVP_OK);
    ck_assert(memcmp(za, zb, sizeof za) == 0);
    /* norm_bias without LayerNorm, by contrast, is refused. */
    ho.norm_bias = nw;
    {
        eevp_head *c = NULL;
        ck_assert_int_eq(eevp_head_create(&c, &ho, NULL, 0), EEVP_EINVAL);
    }
    eevp_head_free(a);
    eevp_head_free(b);
    free(work);
    free(W);
    free(nw);
    free(h);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Candidate-set corners                                                    */
/* ------------------------------------------------------------------------ */

static const int32_t corner_static[] = {4, 9, 15, 22, 30, 31, 40, 47, 9, 4, 100, -3};
enum { N_CORNER_STATIC = 12, N_CORNER_STATIC_IN = 8 }; /* ids inside V = 50, deduplicated */

/* A static-only set whose only check is the last layer: p = f = L-1 is the
 * last layer, decided on the full head whatever final_policy; the set is
 * held (set_size, pruned_sets, K-coverage) but not used.  With p < f the
 * last layer decides on the static set under EEVP_FINAL_PRUNED. */
START_TEST(test_static_only_last_check)
{
    enum { V = 50, D = 10, L = 4, T = 5 };
    const int32_t final_policy = _i % 2, p = _i >= 2 ? 0 : -1;
    float *W = rand_floats(V * D, 61u, -1, 1);
    float *hid = (float *)xmalloc(L * D * sizeof(float));
    int32_t set[N_CORNER_STATIC_IN], n_set = 0, j, t, l, compared = 0;
    double z[V], ab[V];
    eevp_head *head = head_f32(W, V, D, EEVP_NORM_RMS, NULL, 0.0f, 0);
    ref_head rh = rhead(W, V, D, EEVP_NORM_RMS, NULL, 0.0f);
    eevp_ctx_options o = EEVP_CTX_OPTIONS_INIT;
    eevp_ctx *ctx;
    eevp_stats st;
    const int on_set = p == 0 && final_policy == EEVP_FINAL_PRUNED;
    for (j = 0; j < N_CORNER_STATIC; j++) {
        int32_t v = corner_static[j], m, dup = 0;
        for (m = 0; m < n_set; m++)
            dup |= set[m] == v;
        if (!dup && v >= 0 && v < V)
            set[n_set++] = v;
    }
    ck_assert_int_eq(n_set, N_CORNER_STATIC_IN);
    o.n_layers = L;
    o.k = 16;
    o.first_layer = L - 1;
    o.prune_layer = p;
    o.final_policy = final_policy;
    o.threshold = 0.0f;
    o.static_mode = EEVP_STATIC_ONLY;
    o.static_ids = corner_static;
    o.n_static = N_CORNER_STATIC;
    ctx = ctx_make(head, &o);
    for (l = 0; l < L - 1; l++)
        ck_assert_int_eq(eevp_ctx_layer_required(ctx, l), 0);
    ck_assert_int_eq(eevp_ctx_layer_required(ctx, L - 1), 1);
    for (t = 0; t < T; t++) {
        eevp_result r;
        int32_t best;
        int clear;
        uint32_t seed = 62u + (uint32_t)t;
        fill_random(hid, L * D, &seed, -2, 2);
        r = one_step(ctx, L, D, hid, t, 0);
        ref_z(&rh, hid + (L - 1) * D, z, ab);
        best = ref_best(z, ab, on_set ? set : NULL, on_set ? n_set : V, D, &clear);
        ck_assert_int_eq(r.reason, EEVP_REASON_LAST_LAYER);
        ck_assert_int_eq(r.pruned, on_set);
        ck_assert_int_eq(r.set_size, N_CORNER_STATIC_IN);
        if (clear) {
            ck_assert_int_eq(r.token, best);
            compared++;
        }
    }
    ck_assert_int_ge(compared, T - 1);
    st = get_stats(ctx);
    ck_assert_int_eq(st.pruned_sets, T);
    ck_assert_int_eq(st.set_size_sum, T * N_CORNER_STATIC_IN);
    ck_assert_int_eq(st.pruned_decisions, on_set ? T : 0);
    ck_assert_int_eq(st.k_coverage_total, on_set ? 0 : T);
    ck_assert_int_eq(st.checks, T);
    eevp_ctx_free(ctx);
    eevp_head_free(head);
    free(W);
    free(hid);
}
END_TEST

/* Static-only ignores k: k = 0, 3 and > V give the same results and memory,
 * the set being the static list. */
START_TEST(test_static_only_k0)
{
    enum { V = 50, D = 10, L = 4 };
    static const int32_t ks[3] = {0, 3, 1000};
    float *W = rand_floats(V * D, 71u, -1, 1), *hid = rand_floats(L * D, 72u, -2, 2);
    eevp_head *head = head_f32(W, V, D, EEVP_NORM_RMS, NULL, 0.0f, 0);
    ref_head rh = rhead(W, V, D, EEVP_NORM_RMS, NULL, 0.0f);
    int32_t set[N_CORNER_STATIC_IN], n_set = 0, j, best;
    double z[V], ab[V];
    int64_t mem0 = -1;
    int clear;
    for (j = 0; j < N_CORNER_STATIC; j++) {
        int32_t v = corner_static[j], m, dup = 0;
        for (m = 0; m < n_set; m++)
            dup |= set[m] == v;
        if (!dup && v >= 0 && v < V)
            set[n_set++] = v;
    }
    ref_z(&rh, hid + (L - 1) * D, z, ab);
    best = ref_best(z, ab, set, n_set, D, &clear);
    ck_assert(clear);
    for (j = 0; j < 3; j++) {
        eevp_ctx_options o = EEVP_CTX_OPTIONS_INIT;
        eevp_ctx *ctx;
        eevp_result r;
        float cl[V];
        int32_t ci[V], n, m;
        o.n_layers = L;
        o.k = ks[j];
        o.first_layer = 1;
        o.prune_layer = 0;
        o.final_policy = EEVP_FINAL_PRUNED;
        o.threshold = 2.0f;
        o.static_mode = EEVP_STATIC_ONLY;
        o.static_ids = corner_static;
        o.n_static = N_CORNER_STATIC;
        ctx = ctx_make(head, &o);
        if (mem0 < 0)
            mem0 = eevp_ctx_memory(ctx);
        ck_assert_int_eq(eevp_ctx_memory(ctx), mem0);
        ck_assert_int_eq(eevp_ctx_layer_required(ctx, 0), 0);
        r = one_step(ctx, L, D, hid, 0, 0);
        ck_assert_int_eq(r.pruned, 1);
        ck_assert_int_eq(r.set_size, N_CORNER_STATIC_IN);
        ck_assert_int_eq(r.token, best);
        ck_assert_int_eq(eevp_step_candidates(ctx, 0, V, cl, ci, &n), EEVP_OK);
        ck_assert_int_eq(n, N_CORNER_STATIC_IN);
        for (m = 0; m < n; m++) {
            int32_t q, in = 0;
            for (q = 0; q < n_set; q++)
                in |= set[q] == ci[m];
            ck_assert(in);
        }
        eevp_ctx_free(ctx);
    }
    eevp_head_free(head);
    free(W);
    free(hid);
}
END_TEST

/* Reference distribution helpers over a set of local rows. */
static void restrict_z(const double *z, const int32_t *set, int32_t n, double *out)
{
    int32_t j;
    for (j = 0; j < n; j++)
        out[j] = z[set[j]];
}

/* Jensen-Shannon at a re-pruning layer: the check there compares over the
 * set held before it (the previous check's distribution against this
 * layer's logits restricted to that set); the next check compares against
 * the re-pruning layer's distribution over the new set.  L = 4, p = f = 0,
 * re-pruning at 2, EEVP_FINAL_PRUNED. */
START_TEST(test_js_reprune)
{
    enum { V = 60, D = 12, L = 4, K = 6, CASES = 40 };
    int32_t n, exits_tested = 0, last_tested = 0;
    for (n = 0; n < CASES; n++) {
        uint32_t seed = 8100u + (uint32_t)n * 17u + (uint32_t)_i * 7777u;
        float *W = rand_floats(V * D, seed, -1, 1), *hid = rand_floats(L * D, seed + 1u, -2, 2);
        eevp_head *head = head_f32(W, V, D, EEVP_NORM_RMS, NULL, 0.0f, 0);
        ref_head rh = rhead(W, V, D, EEVP_NORM_RMS, NULL, 0.0f);
        double z[L][V], ab[L][V], a[K], b[K], c1, c2, c3, c2_full, c2_new;
        int32_t S0[K], S2[K], l, best;
        int clear = 1, cl2;
        eevp_ctx_options o = EEVP_CTX_OPTIONS_INIT;
        eevp_ctx *ctx;
        eevp_result r;
        for (l = 1; l < L; l++) { /* correlated layers */
            int32_t j;
            for (j = 0; j < D; j++)
                hid[l * D + j] = 0.5f * hid[l * D + j] + hid[(l - 1) * D + j];
        }
        for (l = 0; l < L; l++)
            ref_z(&rh, hid + l * D, z[l], ab[l]);
        clear &= ref_topk_set(z[0], ab[0], V, K, D, S0);
        clear &= ref_topk_set(z[2], ab[2], V, K, D, S2);
        restrict_z(z[0], S0, K, a);
        restrict_z(z[1], S0, K, b);
        c1 = ref_js(a, b, K);
        restrict_z(z[1], S0, K, a);
        restrict_z(z[2], S0, K, b);
        c2 = ref_js(a, b, K);                 /* over the old set */
        c2_full = ref_js(z[1], z[2], V);      /* what a full-vocabulary JS would give */
        restrict_z(z[1], S2, K, a);
        restrict_z(z[2], S2, K, b);
        c2_new = ref_js(a, b, K);             /* ... and one over the new set */
        restrict_z(z[2], S2, K, a);
        restrict_z(z[3], S2, K, b);
        c3 = ref_js(a, b, K);
        o.n_layers = L;
        o.k = K;
        o.criterion = EEVP_CRITERION_JS;
        o.final_policy = EEVP_FINAL_PRUNED;
        o.reprune_layer = 2;
        /* No exit: the last layer's confidence compares over S2 with the
         * re-pruning layer's distribution. */
        o.threshold = 2.0f;
        ctx = ctx_make(head, &o);
        r = one_step(ctx, L, D, hid, 0, 0);
        eevp_ctx_free(ctx);
        best = ref_best(z[3], ab[3], S2, K, D, &cl2);
        if (clear && cl2) {
            ck_assert_int_eq(r.pruned, 1);
            ck_assert_int_eq(r.token, best);
            ck_assert_msg(fabs((double)r.confidence - c3) < 1e-4, "case %d: last %g, ref %g",
                          n, (double)r.confidence, c3);
            last_tested++;
        }
        /* An exit at the re-pruning layer reports c2, over the old set. */
        if (clear && c2 > c1 + 1e-3 && fabs(c2 - c2_full) > 1e-3 && fabs(c2 - c2_new) > 1e-3) {
            o.threshold = (float)((c1 + c2) / 2.0);
            ctx = ctx_make(head, &o);
            r = one_step(ctx, L, D, hid, 0, 0);
            eevp_ctx_free(ctx);
            best = ref_best(z[2], ab[2], NULL, V, D, &cl2);
            ck_assert_int_eq(r.reason, EEVP_REASON_CONFIDENT);
            ck_assert_int_eq(r.layer, 2);
            ck_assert_int_eq(r.pruned, 0);
            if (cl2)
                ck_assert_int_eq(r.token, best);
            ck_assert_msg(fabs((double)r.confidence - c2) < 1e-4, "case %d: %g, ref %g", n,
                          (double)r.confidence, c2);
            exits_tested++;
        }
        eevp_head_free(head);
        free(W);
        free(hid);
    }
    ck_assert_int_ge(last_tested, CASES / 2);
    ck_assert_int_ge(exits_tested, 3);
}
END_TEST

/* Adaptive K when re-pruning: each re-pruning recomputes the adaptive size
 * from its own layer's full softmax; result.set_size is the size held at
 * resolution, the histogram counts every build. */
START_TEST(test_adaptive_reprune)
{
    enum { V = 50, D = 10, L = 5, K = 12, KMIN = 2, CASES = 30 };
    const float mass = 0.6f;
    int32_t n, tested = 0;
    for (n = 0; n < CASES; n++) {
        uint32_t seed = 9100u + (uint32_t)n * 13u;
        float *W = rand_floats(V * D, seed, -1, 1), *hid = rand_floats(L * D, seed + 1u, -3, 3);
        eevp_head *head = head_f32(W, V, D, EEVP_NORM_NONE, NULL, 0.0f, 0);
        ref_head rh = rhead(W, V, D, EEVP_NORM_NONE, NULL, 0.0f);
        double z[V], ab[V];
        int32_t perm[V], sizes[L - 1], l, j, best;
        int clear = 1, cl2;
        int64_t hist[K + 1];
        eevp_ctx_options o = EEVP_CTX_OPTIONS_INIT;
        eevp_ctx *ctx;
        eevp_result r;
        eevp_stats st;
        /* Sizes at layers 0 (p) .. 3 (re-prunings at 1, 2, 3; 4 is last). */
        for (l = 0; l < L - 1; l++) {
            double total = 0.0, cum = 0.0, zmax;
            ref_z(&rh, hid + l * D, z, ab);
            ref_order(z, NULL, V, perm);
            zmax = z[perm[0]];
            for (j = 0; j < V; j++)
                total += exp(z[j] - zmax);
            sizes[l] = K;
            for (j = 0; j < K; j++) {
                cum += exp(z[perm[j]] - zmax);
                if (fabs(cum - (double)mass * total) < 1e-5 * total)
                    clear = 0;
                if (j + 1 >= KMIN && cum >= (double)mass * total) {
                    sizes[l] = j + 1;
                    break;
                }
            }
            clear &= ref_topk_set(z, ab, V, sizes[l], D, perm);
        }
        ref_z(&rh, hid + (L - 2) * D, z, ab);
        ref_topk_set(z, ab, V, sizes[L - 2], D, perm);
        ref_z(&rh, hid + (L - 1) * D, z, ab);
        best = ref_best(z, ab, perm, sizes[L - 2], D, &cl2);
        o.n_layers = L;
        o.k = K;
        o.k_min = KMIN;
        o.adaptive_mass = mass;
        o.reprune_every = 1;
        o.final_policy = EEVP_FINAL_PRUNED;
        o.threshold = 2.0f;
        ctx = ctx_make(head, &o);
        r = one_step(ctx, L, D, hid, 0, 0);
        st = get_stats(ctx);
        ck_assert_int_eq(eevp_ctx_set_size_histogram(ctx, hist, K + 1), EEVP_OK);
        ck_assert_int_eq(st.reprunes, L - 2);
        ck_assert_int_eq(st.pruned_sets, L - 1);
        if (clear) {
            int64_t want[K + 1];
            memset(want, 0, sizeof want);
            for (l = 0; l < L - 1; l++)
                want[sizes[l]]++;
            ck_assert_int_eq(r.set_size, sizes[L - 2]);
            for (j = 0; j <= K; j++)
                ck_assert_int_eq(hist[j], want[j]);
            if (cl2)
                ck_assert_int_eq(r.token, best);
            tested++;
        }
        eevp_ctx_free(ctx);
        eevp_head_free(head);
        free(W);
        free(hid);
    }
    ck_assert_int_ge(tested, CASES / 2);
}
END_TEST

/* reprune_every landing on the last layer: the last layer never re-prunes;
 * EEVP_FINAL_PRUNED decides on the set of the latest (re-)pruning before
 * it.  _i 0: L = 4, every 3 (the 3rd check after p is the last: no
 * re-pruning); _i 1: L = 5, every 2 (layer 2 re-prunes, layer 4 is last). */
START_TEST(test_reprune_every_last)
{
    enum { V = 60, D = 10, K = 5, T = 6 };
    const int32_t L = _i == 0 ? 4 : 5, every = _i == 0 ? 3 : 2, set_layer = _i == 0 ? 0 : 2;
    float *W = rand_floats(V * D, 111u + (uint32_t)_i, -1, 1);
    float *hid = (float *)xmalloc((size_t)(L * D) * sizeof(float));
    eevp_head *head = head_f32(W, V, D, EEVP_NORM_RMS, NULL, 0.0f, 0);
    ref_head rh = rhead(W, V, D, EEVP_NORM_RMS, NULL, 0.0f);
    eevp_ctx_options o = EEVP_CTX_OPTIONS_INIT;
    eevp_ctx *ctx;
    eevp_stats st;
    int32_t t, compared = 0;
    o.n_layers = L;
    o.k = K;
    o.reprune_every = every;
    o.final_policy = EEVP_FINAL_PRUNED;
    o.threshold = 2.0f;
    ctx = ctx_make(head, &o);
    for (t = 0; t < T; t++) {
        uint32_t seed = 112u + (uint32_t)t;
        double z[V], ab[V];
        int32_t S[K], best;
        int clear, cl2;
        eevp_result r;
        fill_random(hid, L * D, &seed, -2, 2);
        r = one_step(ctx, L, D, hid, t, 0);
        ref_z(&rh, hid + set_layer * D, z, ab);
        clear = ref_topk_set(z, ab, V, K, D, S);
        ref_z(&rh, hid + (L - 1) * D, z, ab);
        best = ref_best(z, ab, S, K, D, &cl2);
        ck_assert_int_eq(r.layer, L - 1);
        ck_assert_int_eq(r.pruned, 1);
        if (clear && cl2) {
            ck_assert_int_eq(r.token, best);
            compared++;
        }
    }
    ck_assert_int_ge(compared, T - 2);
    st = get_stats(ctx);
    ck_assert_int_eq(st.reprunes, (_i == 0 ? 0 : 1) * T);
    ck_assert_int_eq(st.pruned_sets, (_i == 0 ? 1 : 2) * T);
    eevp_ctx_free(ctx);
    /* reprune_layer itself cannot name the last layer. */
    {
        eevp_ctx *c = NULL;
        o.reprune_every = 0;
        o.reprune_layer = L - 1;
        ck_assert_int_eq(eevp_ctx_create(&c, head, &o, NULL, 0), EEVP_ERANGE);
    }
    eevp_head_free(head);
    free(W);
    free(hid);
}
END_TEST

Suite *make_corners_suite(void)
{
    Suite *s = suite_create("corners");
    TCase *tc = tcase_create("never_exit");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_inf_full_depth, 0, N_INF);
    tcase_add_test(tc, test_inf_custom_override);
    suite_add_tcase(s, tc);

    tc = tcase_create("decision");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_float_decision, 0, N_FC_CRIT);
    tcase_add_loop_test(tc, test_head_bytes_half, 0, 6);
    tcase_add_loop_test(tc, test_alignment, 0, 9);
    suite_add_tcase(s, tc);

    tc = tcase_create("corners");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_all_masked, 0, 56);
    tcase_add_loop_test(tc, test_softcap_masked, 0, 4);
    tcase_add_loop_test(tc, test_eps0_zero_state, 0, 6);
    tcase_add_test(tc, test_norm_weight_without_norm);
    tcase_add_loop_test(tc, test_static_only_last_check, 0, 4);
    tcase_add_test(tc, test_static_only_k0);
    tcase_add_loop_test(tc, test_js_reprune, 0, 2);
    tcase_add_test(tc, test_adaptive_reprune);
    tcase_add_loop_test(tc, test_reprune_every_last, 0, 2);
    suite_add_tcase(s, tc);
    return s;
}
