/* SPDX-License-Identifier: MIT */
/*
 * check_criteria.c - the built-in exit criteria on cases whose answer is
 * known by hand, the strict c > lambda rule, the CALM schedule, and the
 * custom criterion interface (view fields, decisions, failures, re-entrancy,
 * reset and destroy calls, registration errors).
 *
 * Most cases use an identity head: d = V, W = I, no norm, no scale, no
 * bias, so the logits are the hidden state itself, exactly (every product is
 * x * 1 or x * 0).  Hand-computed constants:
 *   softmax(ln 3, 0) = (0.75, 0.25): top-2 gap 0.5, max prob 0.75;
 *   1 - H(0.75, 0.25) / ln 2 = 0.18872187554086717;
 *   1 - JS((.75, .25), (.25, .75)) / ln 2 = H2(0.25) = 0.8112781244591328;
 *   max prob of softmax(ln 3, 0, -1, -2) = 0.6661907511848323;
 *   CALM 0.8 * (9 + exp(-4 t / 100)) / 10 at t = 0, 50, 100, 200:
 *     0.8, 0.7308268226589291, 0.7214652511110987, 0.7200268370102322.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eevp.h"
#include "ref.h"

Suite *make_criteria_suite(void);

#define LN3 1.0986122886681098f
#define TOL 2e-6

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct ihead {
    float *W;
    eevp_head *head;
} ihead;

/* Identity head of size V (d = V), optional bias and vocab offset. */
static void ihead_make(ihead *h, int V, const float *bias, int64_t offset)
{
    eevp_head_options ho;
    char msg[256];
    int v, rc;

    h->W = calloc((size_t)V * (size_t)V, sizeof(float));
    ck_assert_ptr_nonnull(h->W);
    for (v = 0; v < V; v++)
        h->W[(size_t)v * (size_t)V + (size_t)v] = 1.0f;
    ck_assert_int_eq(eevp_head_options_init(&ho), EEVP_OK);
    ho.n_vocab = V;
    ho.dim = V;
    ho.weights = h->W;
    ho.logit_bias = bias;
    ho.vocab_offset = offset;
    rc = eevp_head_create(&h->head, &ho, msg, sizeof msg);
    ck_assert_msg(rc == EEVP_OK, "eevp_head_create: %d %s", rc, msg);
}

static void ihead_free(ihead *h)
{
    eevp_head_free(h->head);
    free(h->W);
}

static void opts(eevp_ctx_options *co, int L, int crit, float thr)
{
    ck_assert_int_eq(eevp_ctx_options_init(co), EEVP_OK);
    co->n_layers = L;
    co->max_batch = 4;
    co->k = 0;
    co->criterion = crit;
    co->threshold = thr;
}

static eevp_ctx *mk_ctx(const eevp_head *head, const eevp_ctx_options *co)
{
    eevp_ctx *ctx = NULL;
    char msg[256];
    int rc = eevp_ctx_create(&ctx, head, co, msg, sizeof msg);
    ck_assert_msg(rc == EEVP_OK, "eevp_ctx_create: %d %s", rc, msg);
    return ctx;
}

static eevp_result res_of(const eevp_ctx *ctx, int s)
{
    eevp_result r;
    memset(&r, 0x5a, sizeof r);
    r.struct_size = (uint32_t)sizeof r;
    ck_assert_int_eq(eevp_step_result(ctx, s, &r), EEVP_OK);
    return r;
}

/* One token: rows holds L layers of n_seq rows of d floats (row s of layer
 * l at rows + (l * n_seq + s) * d).  Every layer is handed over (row s is
 * sequence s) until nobody runs; each call must return rc[l] (rc NULL: all
 * EEVP_OK).  The step is ended. */
static void run_token_rc(eevp_ctx *ctx, int L, int n_seq, int d, const float *rows,
                         const int32_t *pos, const int *rc)
{
    int l;

    ck_assert_int_eq(eevp_step_begin(ctx, n_seq, pos), EEVP_OK);
    for (l = 0; l < L && eevp_step_n_running(ctx) > 0; l++) {
        int got = eevp_step_layer(ctx, l, rows + (size_t)l * (size_t)n_seq * (size_t)d, d,
                                  n_seq, NULL);
        int want = rc ? rc[l] : EEVP_OK;
        ck_assert_msg(got == want, "step_layer(%d) = %d, expected %d (%s)", l, got, want,
                      eevp_ctx_errmsg(ctx));
    }
    ck_assert_int_eq(eevp_step_n_running(ctx), 0);
    ck_assert_int_eq(eevp_step_end(ctx), EEVP_OK);
}

static void run_token(eevp_ctx *ctx, int L, int n_seq, int d, const float *rows,
                      const int32_t *pos)
{
    run_token_rc(ctx, L, n_seq, d, rows, pos, NULL);
}

static void expect(const eevp_ctx *ctx, int s, int reason, int layer, int token, int pruned,
                   double conf, double tol)
{
    eevp_result r = res_of(ctx, s);
    ck_assert_msg(r.reason == reason && r.layer == layer && r.token == token &&
                      r.pruned == pruned,
                  "seq %d: reason %d layer %d token %d pruned %d; expected %d %d %d %d", s,
                  r.reason, r.layer, r.token, r.pruned, reason, layer, token, pruned);
    ck_assert_int_eq(r.status, EEVP_OK);
    ck_assert_msg(fabs((double)r.confidence - conf) <= tol,
                  "seq %d: confidence %.9g, expected %.9g", s, (double)r.confidence, conf);
}

/* ------------------------------------------------------------------------ */
/* Top-2 gap                                                                */
/* ------------------------------------------------------------------------ */

START_TEST(test_top2_gap)
{
    ihead h;
    eevp_ctx *ctx;
    eevp_ctx_options co;
    /* L = 2, 2 sequences: (ln 3, 0) then (0, ln 3); (1, 1) then (1, 1) */
    const float rows[] = {LN3, 0.0f, 1.0f, 1.0f, 0.0f, LN3, 1.0f, 1.0f};

    ihead_make(&h, 2, NULL, 0);
    opts(&co, 2, EEVP_CRITERION_TOP2_GAP, 0.49f);
    ctx = mk_ctx(h.head, &co);
    run_token(ctx, 2, 2, 2, rows, NULL);
    expect(ctx, 0, EEVP_REASON_CONFIDENT, 0, 0, 0, 0.5, TOL);
    expect(ctx, 1, EEVP_REASON_LAST_LAYER, 1, 0, 0, 0.0, TOL); /* tie: smaller id */
    eevp_ctx_free(ctx);

    /* 0.5 < 0.51: no exit; the last layer decides (0, ln 3) -> token 1 */
    opts(&co, 2, EEVP_CRITERION_TOP2_GAP, 0.51f);
    ctx = mk_ctx(h.head, &co);
    run_token(ctx, 2, 2, 2, rows, NULL);
    expect(ctx, 0, EEVP_REASON_LAST_LAYER, 1, 1, 0, 0.5, TOL);
    eevp_ctx_free(ctx);

    /* equal logits give c = 0 exactly: 0 > 0 is false, no exit at lambda 0 */
    opts(&co, 2, EEVP_CRITERION_TOP2_GAP, 0.0f);
    ctx = mk_ctx(h.head, &co);
    run_token(ctx, 2, 2, 2, rows, NULL);
    expect(ctx, 0, EEVP_REASON_CONFIDENT, 0, 0, 0, 0.5, TOL);
    expect(ctx, 1, EEVP_REASON_LAST_LAYER, 1, 0, 0, 0.0, 0.0);
    eevp_ctx_free(ctx);
    ihead_free(&h);
}
END_TEST

/* One finite candidate: p1 - 0 = 1.  Ties go to the smaller global id, also
 * with a vocabulary offset. */
START_TEST(test_top2_single_and_ties)
{
    const float bias[3] = {-INFINITY, 0.0f, -INFINITY};
    const float rows[] = {5.0f, 1.0f, 7.0f, 2.0f, 2.0f, 2.0f};
    ihead h;
    eevp_ctx *ctx;
    eevp_ctx_options co;

    ihead_make(&h, 3, bias, 0);
    opts(&co, 2, EEVP_CRITERION_TOP2_GAP, 0.99f);
    ctx = mk_ctx(h.head, &co);
    run_token(ctx, 2, 1, 3, rows, NULL);
    expect(ctx, 0, EEVP_REASON_CONFIDENT, 0, 1, 0, 1.0, TOL);
    eevp_ctx_free(ctx);
    ihead_free(&h);

    ihead_make(&h, 3, NULL, 40);
    opts(&co, 1, EEVP_CRITERION_TOP2_GAP, 0.5f);
    ctx = mk_ctx(h.head, &co);
    run_token(ctx, 1, 1, 3, rows + 3, NULL);
    expect(ctx, 0, EEVP_REASON_LAST_LAYER, 0, 40, 0, 0.0, TOL);
    eevp_ctx_free(ctx);
    ihead_free(&h);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Max prob, and renormalisation over the pruned set                        */
/* ------------------------------------------------------------------------ */

START_TEST(test_max_prob)
{
    ihead h;
    eevp_ctx *ctx;
    eevp_ctx_options co;
    const float r1[] = {LN3, 0.0f, 0.0f, LN3};
    const float r2[] = {1.0f, 1.0f, 1.0f, 1.0f}; /* 0.5 exactly at both layers */

    ihead_make(&h, 2, NULL, 0);
    opts(&co, 2, EEVP_CRITERION_MAX_PROB, 0.74f);
    ctx = mk_ctx(h.head, &co);
    run_token(ctx, 2, 1, 2, r1, NULL);
    expect(ctx, 0, EEVP_REASON_CONFIDENT, 0, 0, 0, 0.75, TOL);
    eevp_ctx_free(ctx);

    opts(&co, 2, EEVP_CRITERION_MAX_PROB, 0.76f);
    ctx = mk_ctx(h.head, &co);
    run_token(ctx, 2, 1, 2, r1, NULL);
    expect(ctx, 0, EEVP_REASON_LAST_LAYER, 1, 1, 0, 0.75, TOL);
    eevp_ctx_free(ctx);

    /* c = 0.5 exactly: lambda 0.5 does not exit, just below it does */
    opts(&co, 2, EEVP_CRITERION_MAX_PROB, 0.5f);
    ctx = mk_ctx(h.head, &co);
    run_token(ctx, 2, 1, 2, r2, NULL);
    expect(ctx, 0, EEVP_REASON_LAST_LAYER, 1, 0, 0, 0.5, 0.0);
    eevp_ctx_free(ctx);
    opts(&co, 2, EEVP_CRITERION_MAX_PROB, 0.4999f);
    ctx = mk_ctx(h.head, &co);
    run_token(ctx, 2, 1, 2, r2, NULL);
    expect(ctx, 0, EEVP_REASON_CONFIDENT, 0, 0, 0, 0.5, 0.0);
    eevp_ctx_free(ctx);
    ihead_free(&h);
}
END_TEST

/* Logits (ln 3, 0, -1, -2) at every layer, K = 2, p = f = 0: the full
 * softmax gives 0.666 at layer 0 (no exit at 0.7), the renormalised one over
 * {0, 1} gives 0.75 at layer 1: a pruned exit there. */
START_TEST(test_max_prob_renormalised)
{
    const float row[4] = {LN3, 0.0f, -1.0f, -2.0f};
    float rows[12];
    float lg[3];
    int32_t ids[3], n = -1;
    ihead h;
    eevp_ctx *ctx;
    eevp_ctx_options co;
    int l;

    for (l = 0; l < 3; l++)
        memcpy(rows + 4 * l, row, sizeof row);
    ihead_make(&h, 4, NULL, 0);
    opts(&co, 3, EEVP_CRITERION_MAX_PROB, 0.7f);
    co.k = 2;
    ctx = mk_ctx(h.head, &co);
    run_token(ctx, 3, 1, 4, rows, NULL);
    expect(ctx, 0, EEVP_REASON_CONFIDENT, 1, 0, 1, 0.75, TOL);
    ck_assert_int_eq(eevp_step_candidates(ctx, 0, 3, lg, ids, &n), EEVP_OK);
    ck_assert_int_eq(n, 2);
    ck_assert_int_eq(ids[0], 0);
    ck_assert_int_eq(ids[1], 1);
    ck_assert(fabsf(lg[0] - LN3) <= 1e-6f && lg[1] == 0.0f);
    eevp_ctx_free(ctx);

    /* just above 0.666 at layer 0: the full-vocabulary exit at p */
    opts(&co, 3, EEVP_CRITERION_MAX_PROB, 0.666f);
    co.k = 2;
    ctx = mk_ctx(h.head, &co);
    run_token(ctx, 3, 1, 4, rows, NULL);
    expect(ctx, 0, EEVP_REASON_CONFIDENT, 0, 0, 0, 0.6661907511848323, TOL);
    ck_assert_int_eq(eevp_step_candidates(ctx, 0, 3, lg, ids, &n), EEVP_OK);
    ck_assert_int_eq(n, 3); /* min(capacity 3, V 4) */
    ck_assert(ids[0] == 0 && ids[1] == 1 && ids[2] == 2);
    eevp_ctx_free(ctx);
    ihead_free(&h);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Entropy                                                                  */
/* ------------------------------------------------------------------------ */

START_TEST(test_entropy)
{
    /* seq 0 uniform, seq 1 one huge logit */
    const float rows[] = {0, 0, 0, 0, 100, 0, 0, 0, 0, 0, 0, 0, 100, 0, 0, 0};
    ihead h;
    eevp_ctx *ctx;
    eevp_ctx_options co;

    ihead_make(&h, 4, NULL, 0);
    opts(&co, 2, EEVP_CRITERION_ENTROPY, 0.999f);
    ctx = mk_ctx(h.head, &co);
    run_token(ctx, 2, 2, 4, rows, NULL);
    expect(ctx, 0, EEVP_REASON_LAST_LAYER, 1, 0, 0, 0.0, 1e-6);
    expect(ctx, 1, EEVP_REASON_CONFIDENT, 0, 0, 0, 1.0, 1e-6);
    eevp_ctx_free(ctx);
    ihead_free(&h);
}
END_TEST

/* Masked tokens (-INFINITY bias) are not among the n of 1 - H / ln n. */
START_TEST(test_entropy_masked)
{
    const float bias[4] = {0.0f, 0.0f, -INFINITY, -INFINITY};
    const float bias1[4] = {-INFINITY, 0.0f, -INFINITY, -INFINITY};
    /* seq 0: (ln 3, 0 | masked): 0.1887 (0.594 with n = 4);
     * seq 1: equal finite logits: 0 (0.5 with n = 4) */
    const float rows[] = {LN3, 0, 5, 5, 1, 1, 9, -9};
    ihead h;
    eevp_ctx *ctx;
    eevp_ctx_options co;

    ihead_make(&h, 4, bias, 0);
    opts(&co, 1, EEVP_CRITERION_ENTROPY, 0.5f);
    ctx = mk_ctx(h.head, &co);
    run_token(ctx, 1, 2, 4, rows, NULL);
    expect(ctx, 0, EEVP_REASON_LAST_LAYER, 0, 0, 0, 0.18872187554086717, 1e-5);
    expect(ctx, 1, EEVP_REASON_LAST_LAYER, 0, 0, 0, 0.0, 1e-6);
    eevp_ctx_free(ctx);

    /* decisions: 0.1887 > 0.18 exits, 0 does not */
    opts(&co, 2, EEVP_CRITERION_ENTROPY, 0.18f);
    ctx = mk_ctx(h.head, &co);
    {
        float r2[16];
        memcpy(r2, rows, sizeof rows);
        memcpy(r2 + 8, rows, sizeof rows);
        run_token(ctx, 2, 2, 4, r2, NULL);
    }
    expect(ctx, 0, EEVP_REASON_CONFIDENT, 0, 0, 0, 0.18872187554086717, 1e-5);
    expect(ctx, 1, EEVP_REASON_LAST_LAYER, 1, 0, 0, 0.0, 1e-6);
    eevp_ctx_free(ctx);
    ihead_free(&h);

    /* one finite candidate: c = 1 */
    ihead_make(&h, 4, bias1, 0);
    opts(&co, 2, EEVP_CRITERION_ENTROPY, 0.99f);
    ctx = mk_ctx(h.head, &co);
    {
        const float r3[] = {3, 1, 2, 0, 3, 1, 2, 0};
        run_token(ctx, 2, 1, 4, r3, NULL);
    }
    expect(ctx, 0, EEVP_REASON_CONFIDENT, 0, 1, 0, 1.0, 0.0);
    eevp_ctx_free(ctx);
    ihead_free(&h);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Saturation                                                               */
/* ------------------------------------------------------------------------ */

/* seq 0: (3,4,0,0) twice -> cos 1; seq 1: (1,0,0,0), (0,1,0,0) -> cos 0;
 * then layer 2: (0,0,5,0) for both. */
static const float sat_rows[] = {
    3, 4, 0, 0, 1, 0, 0, 0, /* layer 0 */
    3, 4, 0, 0, 0, 1, 0, 0, /* layer 1 */
    0, 0, 5, 0, 0, 0, 5, 0, /* layer 2 */
};

START_TEST(test_saturation)
{
    ihead h;
    eevp_ctx *ctx;
    eevp_ctx_options co;
    eevp_stats st;

    ihead_make(&h, 4, NULL, 0);
    opts(&co, 3, EEVP_CRITERION_SATURATION, 0.99f);
    co.k = 2; /* saturation never prunes */
    ctx = mk_ctx(h.head, &co);
    run_token(ctx, 3, 2, 4, sat_rows, NULL);
    expect(ctx, 0, EEVP_REASON_CONFIDENT, 1, 1, 0, 1.0, 1e-6);
    expect(ctx, 1, EEVP_REASON_LAST_LAYER, 2, 2, 0, 0.0, 1e-6);
    /* one full projection per token, none before the exit */
    memset(&st, 0, sizeof st);
    st.struct_size = (uint32_t)sizeof st;
    ck_assert_int_eq(eevp_ctx_stats(ctx, &st), EEVP_OK);
    ck_assert_int_eq(st.head_flops, 2 * (2 * 4 - 1) * 4);
    ck_assert_int_eq(st.head_bytes, 2 * 4 * 4 * 4);
    ck_assert_int_eq(st.checks, 2 + 3);
    ck_assert_int_eq(st.head_flops_baseline, 5 * (2 * 4 - 1) * 4);
    ck_assert_int_eq(st.pruned_decisions, 0);
    ck_assert_int_eq(st.k_coverage_total, 0);
    eevp_ctx_free(ctx);

    /* c = 1 exactly (a 3-4-5 vector) against lambda = 1: no exit */
    opts(&co, 3, EEVP_CRITERION_SATURATION, 1.0f);
    ctx = mk_ctx(h.head, &co);
    run_token(ctx, 3, 2, 4, sat_rows, NULL);
    expect(ctx, 0, EEVP_REASON_LAST_LAYER, 2, 2, 0, 0.0, 1e-6);
    eevp_ctx_free(ctx);

    /* c = 0 (orthogonal) against lambda = 0: no exit either */
    opts(&co, 3, EEVP_CRITERION_SATURATION, 0.0f);
    co.first_layer = 0;
    ctx = mk_ctx(h.head, &co);
    run_token(ctx, 3, 2, 4, sat_rows, NULL);
    expect(ctx, 0, EEVP_REASON_CONFIDENT, 1, 1, 0, 1.0, 1e-6);
    expect(ctx, 1, EEVP_REASON_LAST_LAYER, 2, 2, 0, 0.0, 1e-6);
    eevp_ctx_free(ctx);
    ihead_free(&h);
}
END_TEST

/* The previous hidden state is the previous *checked* layer's, not the
 * previous layer's; a zero vector gives 0. */
START_TEST(test_saturation_interval)
{
    /* layers 0..4, checked 0, 2, 4: seq 0 = a, x, a, x, b; seq 1 = 0, a, 0, a, a */
    const float rows[] = {
        3, 4, 0, 0, 0, 0, 0, 0,
        0, 0, 1, 0, 3, 4, 0, 0,
        3, 4, 0, 0, 0, 0, 0, 0,
        0, 0, 1, 0, 3, 4, 0, 0,
        0, 0, 0, 7, 3, 4, 0, 0,
    };
    ihead h;
    eevp_ctx *ctx;
    eevp_ctx_options co;

    ihead_make(&h, 4, NULL, 0);
    opts(&co, 5, EEVP_CRITERION_SATURATION, 0.5f);
    co.interval = 2;
    ctx = mk_ctx(h.head, &co);
    run_token(ctx, 5, 2, 4, rows, NULL);
    expect(ctx, 0, EEVP_REASON_CONFIDENT, 2, 1, 0, 1.0, 1e-6);
    expect(ctx, 1, EEVP_REASON_LAST_LAYER, 4, 1, 0, 0.0, 1e-6);
    eevp_ctx_free(ctx);
    ihead_free(&h);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Stability                                                                */
/* ------------------------------------------------------------------------ */

/* Four sequences over 5 layers, by top-1: A A A A A; A B B B B;
 * A B A B B; A A B B B (the top-1 is the position of the 5). */
#define S_A 5, 1, 0, 0
#define S_B 1, 5, 0, 0
static const float stab_rows[] = {
    S_A, S_A, S_A, S_A, /* layer 0 */
    S_A, S_B, S_B, S_A, /* layer 1 */
    S_A, S_B, S_A, S_B, /* layer 2 */
    S_A, S_B, S_B, S_B, /* layer 3 */
    S_A, S_B, S_B, S_B, /* layer 4 */
};

START_TEST(test_stability)
{
    /* first exit layer per sequence for patience 1, 2, 3 (-1: none) */
    static const int exit_at[3][4] = {
        {0, 0, 0, 0},
        {1, 2, 4, 1},
        {2, 3, 5, 4}, /* seq 2: B B B only at layer 5, the last */
    };
    /* top-1 per layer and sequence, as built in stab_rows */
    static const int top1[5][4] = {
        {0, 0, 0, 0}, {0, 1, 1, 0}, {0, 1, 0, 1}, {0, 1, 1, 1}, {0, 1, 1, 1}};
    ihead h;
    eevp_ctx *ctx;
    eevp_ctx_options co;
    int patience = _i + 1, s;
    float rows[6 * 16];

    ihead_make(&h, 4, NULL, 0);
    opts(&co, 6, EEVP_CRITERION_STABILITY, 0.5f);
    co.patience = patience;
    co.n_layers = 5 + (patience == 3); /* room for an exit at layer 4 */
    ctx = mk_ctx(h.head, &co);
    memcpy(rows, stab_rows, sizeof stab_rows);
    memcpy(rows + 5 * 16, stab_rows + 4 * 16, 16 * sizeof(float));
    run_token(ctx, co.n_layers, 4, 4, rows, NULL);
    for (s = 0; s < 4; s++) {
        int l = exit_at[_i][s];
        if (l < 0 || l == co.n_layers - 1) {
            eevp_result r = res_of(ctx, s);
            ck_assert_int_eq(r.reason, EEVP_REASON_LAST_LAYER);
            ck_assert_int_eq(r.layer, co.n_layers - 1);
            ck_assert_int_eq(r.token, top1[4][s]);
            ck_assert(r.confidence == (l < 0 ? 0.0f : 1.0f));
        } else {
            expect(ctx, s, EEVP_REASON_CONFIDENT, l, top1[l][s], 0, 1.0, 0.0);
        }
    }
    eevp_ctx_free(ctx);
    ihead_free(&h);
}
END_TEST

/* With pruning the top-1 at later layers is taken over the set: a token
 * outside it cannot break the streak. */
START_TEST(test_stability_pruned)
{
    /* layer 0 (p = f): top-2 = {0, 1}; layer 1: token 3 huge but outside */
    const float rows[] = {5, 4, 0, 0, 5, 4, 0, 99, 5, 4, 0, 99};
    ihead h;
    eevp_ctx *ctx;
    eevp_ctx_options co;

    ihead_make(&h, 4, NULL, 0);
    opts(&co, 3, EEVP_CRITERION_STABILITY, 0.5f);
    co.k = 2;
    ctx = mk_ctx(h.head, &co);
    run_token(ctx, 3, 1, 4, rows, NULL);
    expect(ctx, 0, EEVP_REASON_CONFIDENT, 1, 0, 1, 1.0, 0.0);
    eevp_ctx_free(ctx);
    ihead_free(&h);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Jensen-Shannon                                                           */
/* ------------------------------------------------------------------------ */

START_TEST(test_js)
{
    /* seq 0: identical distributions; seq 1: (.75, .25) then (.25, .75) */
    const float rows[] = {LN3, 0, LN3, 0, LN3, 0, 0, LN3};
    ihead h;
    eevp_ctx *ctx;
    eevp_ctx_options co;

    ihead_make(&h, 2, NULL, 0);
    opts(&co, 2, EEVP_CRITERION_JS, 0.99f);
    ctx = mk_ctx(h.head, &co);
    run_token(ctx, 2, 2, 2, rows, NULL);
    /* layer 1 is the last: both resolve there with their confidence */
    expect(ctx, 0, EEVP_REASON_LAST_LAYER, 1, 0, 0, 1.0, 1e-6);
    expect(ctx, 1, EEVP_REASON_LAST_LAYER, 1, 1, 0, 0.8112781244591328, 1e-5);
    eevp_ctx_free(ctx);

    /* L = 3: identical at layers 0 and 1 exits at 1 (0 at the first check) */
    opts(&co, 3, EEVP_CRITERION_JS, 0.8f);
    ctx = mk_ctx(h.head, &co);
    {
        float r3[12];
        memcpy(r3, rows, sizeof rows);
        memcpy(r3 + 8, rows + 4, 4 * sizeof(float));
        run_token(ctx, 3, 2, 2, r3, NULL);
    }
    expect(ctx, 0, EEVP_REASON_CONFIDENT, 1, 0, 0, 1.0, 1e-6);
    expect(ctx, 1, EEVP_REASON_CONFIDENT, 1, 1, 0, 0.8112781244591328, 1e-5);
    eevp_ctx_free(ctx);
    ihead_free(&h);
}
END_TEST

/* With pruning (K = 2, p = f = 0) the previous distribution is p's full
 * logits restricted to the set and renormalised: (ln 3, 0 | -5, -5) ->
 * (.75, .25); layer 1 over the set (0, ln 3) -> (.25, .75); token 3 (99)
 * is outside the set.  With p < f the first check is f: c = 0 there. */
START_TEST(test_js_pruned)
{
    const float rows[] = {LN3, 0, -5, -5, 0, LN3, -5, 99, 0, LN3, -5, 99};
    ihead h;
    eevp_ctx *ctx;
    eevp_ctx_options co;

    ihead_make(&h, 4, NULL, 0);
    opts(&co, 3, EEVP_CRITERION_JS, 0.5f);
    co.k = 2;
    ctx = mk_ctx(h.head, &co);
    run_token(ctx, 3, 1, 4, rows, NULL);
    expect(ctx, 0, EEVP_REASON_CONFIDENT, 1, 1, 1, 0.8112781244591328, 1e-5);
    eevp_ctx_free(ctx);

    /* p = 0 < f = 1: no check at 0; layer 1 is the first check (c = 0),
     * layer 2 compares (0, ln 3) with itself: c = 1, pruned exit... at the
     * last layer (L = 3), so: full head, token 3 */
    opts(&co, 3, EEVP_CRITERION_JS, 0.5f);
    co.k = 2;
    co.first_layer = 1;
    co.prune_layer = 0;
    ctx = mk_ctx(h.head, &co);
    run_token(ctx, 3, 1, 4, rows, NULL);
    expect(ctx, 0, EEVP_REASON_LAST_LAYER, 2, 3, 0, 1.0, 1e-6);
    eevp_ctx_free(ctx);

    /* the same with a pruned final layer: token 1, pruned */
    opts(&co, 3, EEVP_CRITERION_JS, 0.5f);
    co.k = 2;
    co.first_layer = 1;
    co.prune_layer = 0;
    co.final_policy = EEVP_FINAL_PRUNED;
    ctx = mk_ctx(h.head, &co);
    run_token(ctx, 3, 1, 4, rows, NULL);
    expect(ctx, 0, EEVP_REASON_LAST_LAYER, 2, 1, 1, 1.0, 1e-6);
    eevp_ctx_free(ctx);
    ihead_free(&h);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* CALM schedule                                                            */
/* ------------------------------------------------------------------------ */

START_TEST(test_calm_schedule)
{
    static const int32_t ts[4] = {0, 50, 100, 200};
    static const double lam[4] = {0.8, 0.7308268226589291, 0.7214652511110987,
                                  0.7200268370102322};
    /* max prob 0.75 for all four sequences at both layers */
    const float row[2] = {LN3, 0.0f};
    float rows[16];
    ihead h;
    eevp_ctx *ctx;
    eevp_ctx_options co;
    float lambda;
    int s;

    for (s = 0; s < 8; s++)
        memcpy(rows + 2 * s, row, sizeof row);
    ihead_make(&h, 2, NULL, 0);
    opts(&co, 2, EEVP_CRITERION_MAX_PROB, 0.8f);
    co.schedule = EEVP_SCHEDULE_CALM;
    co.schedule_tau = 4.0f;
    co.max_length = 100;
    ctx = mk_ctx(h.head, &co);
    for (s = 0; s < 4; s++) {
        ck_assert_int_eq(eevp_ctx_threshold(ctx, ts[s], &lambda), EEVP_OK);
        ck_assert_msg(fabs((double)lambda - lam[s]) < 1e-6, "lambda(%d) = %.9g, expected %.9g",
                      ts[s], (double)lambda, lam[s]);
        ck_assert(fabs(ref_threshold_calm(0.8, 4.0, ts[s], 100) - lam[s]) < 1e-7);
    }
    run_token(ctx, 2, 4, 2, rows, ts);
    /* t = 0: lambda 0.8 > 0.75, no exit; later: 0.75 > lambda, exit */
    expect(ctx, 0, EEVP_REASON_LAST_LAYER, 1, 0, 0, 0.75, TOL);
    for (s = 1; s < 4; s++)
        expect(ctx, s, EEVP_REASON_CONFIDENT, 0, 0, 0, 0.75, TOL);
    for (s = 0; s < 4; s++) {
        eevp_result r = res_of(ctx, s);
        ck_assert(fabs((double)r.threshold - lam[s]) < 1e-6);
    }
    /* no positions: t = 0 for all */
    run_token(ctx, 2, 4, 2, rows, NULL);
    for (s = 0; s < 4; s++)
        expect(ctx, s, EEVP_REASON_LAST_LAYER, 1, 0, 0, 0.75, TOL);
    eevp_ctx_free(ctx);

    /* constant schedule: the same lambda at every t */
    opts(&co, 2, EEVP_CRITERION_MAX_PROB, 0.8f);
    ctx = mk_ctx(h.head, &co);
    ck_assert_int_eq(eevp_ctx_threshold(ctx, 200, &lambda), EEVP_OK);
    ck_assert(lambda == 0.8f);
    eevp_ctx_free(ctx);
    ihead_free(&h);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Custom criteria                                                          */
/* ------------------------------------------------------------------------ */

/* A random head for the custom-criterion tests, with its reference twin. */
typedef struct rhead {
    int V, d;
    float *W, *nw, *bias;
    eevp_head *head;
    ref_head rh;
} rhead;

static void rhead_make(rhead *h, int V, int d, int64_t offset, uint32_t seed)
{
    eevp_head_options ho;
    char msg[256];
    int rc;

    memset(h, 0, sizeof *h);
    h->V = V;
    h->d = d;
    h->W = calloc((size_t)V * (size_t)d, sizeof(float));
    h->nw = calloc((size_t)d, sizeof(float));
    h->bias = calloc((size_t)V, sizeof(float));
    ck_assert(h->W && h->nw && h->bias);
    fill_random(h->W, (int64_t)V * d, &seed, -1.0f, 1.0f);
    fill_random(h->nw, d, &seed, 0.5f, 1.5f);
    fill_random(h->bias, V, &seed, -0.3f, 0.3f);
    ck_assert_int_eq(eevp_head_options_init(&ho), EEVP_OK);
    ho.n_vocab = V;
    ho.dim = d;
    ho.weights = h->W;
    ho.vocab_offset = offset;
    ho.norm = EEVP_NORM_RMS;
    ho.norm_eps = 1e-5f;
    ho.norm_weight = h->nw;
    ho.logit_bias = h->bias;
    rc = eevp_head_create(&h->head, &ho, msg, sizeof msg);
    ck_assert_msg(rc == EEVP_OK, "eevp_head_create: %d %s", rc, msg);
    h->rh.V = V;
    h->rh.d = d;
    h->rh.offset = offset;
    h->rh.W = h->W;
    h->rh.norm = EEVP_NORM_RMS;
    h->rh.eps = (double)1e-5f;
    h->rh.nw = h->nw;
    h->rh.bias = h->bias;
}

static void rhead_free(rhead *h)
{
    eevp_head_free(h->head);
    free(h->W);
    free(h->nw);
    free(h->bias);
}

/* Reference full argmax (global id) of hidden state x. */
static int32_t ref_argmax(const rhead *h, const float *x)
{
    double *z = calloc((size_t)h->V, sizeof(double));
    int32_t *perm = calloc((size_t)h->V, sizeof(int32_t));
    int32_t tok;

    ck_assert(z && perm);
    ref_logits(&h->rh, x, z, NULL);
    ref_order(z, NULL, h->V, perm);
    tok = perm[0] + (int32_t)h->rh.offset;
    free(z);
    free(perm);
    return tok;
}

/* --- a linear probe on hidden[0], without logits --------------------------- */

typedef struct probe_state {
    int calls, bad_view, override;
} probe_state;

static int probe_decide(void *state, const eevp_exit_view *v, float *confidence, int32_t *exit)
{
    probe_state *p = state;

    p->calls++;
    if (v->logits != NULL || v->ids != NULL || v->n != 0 || v->pruned != 0 ||
        *exit != -1 || v->prev_hidden != NULL || v->top1_id != -1 || v->top2_id != -1)
        p->bad_view++;
    *confidence = v->hidden[0];
    if (p->override) {
        *confidence = 0.25f; /* below any threshold used here */
        *exit = v->hidden[0] > 0.5f ? 1 : 0;
    }
    return 0;
}

/* hidden[0] per layer for 3 sequences over 4 layers; d = 8, the rest random */
static void probe_rows(float *rows, int d, uint32_t seed)
{
    static const float h0[4][3] = {
        {0.1f, 0.6f, 0.0f}, {0.3f, 0.0f, 0.0f}, {0.6f, 0.0f, 0.2f}, {0.9f, 0.0f, 0.4f}};
    int l, s;

    fill_random(rows, 4 * 3 * d, &seed, -1.0f, 1.0f);
    for (l = 0; l < 4; l++)
        for (s = 0; s < 3; s++)
            rows[(l * 3 + s) * d] = h0[l][s];
}

START_TEST(test_custom_probe)
{
    const int d = 8, V = 50;
    eevp_criterion_vtbl vt;
    probe_state ps;
    rhead h;
    eevp_ctx *ctx;
    eevp_ctx_options co;
    eevp_stats st;
    float rows[4 * 3 * 8];
    float lg[60];
    int32_t ids[60], n = 0;
    eevp_result r;

    rhead_make(&h, V, d, 7, 99u);
    probe_rows(rows, d, 5u);
    memset(&ps, 0, sizeof ps);
    ps.override = _i;
    memset(&vt, 0, sizeof vt);
    vt.struct_size = (uint32_t)sizeof vt;
    vt.name = "probe";
    vt.needs = 0; /* no logits: no pruning, one projection at the exit */
    vt.decide = probe_decide;
    opts(&co, 4, EEVP_CRITERION_TOP2_GAP, _i ? 0.95f : 0.5f);
    co.k = 5;
    ctx = mk_ctx(h.head, &co);
    ck_assert_int_eq(eevp_ctx_set_criterion(ctx, &vt, &ps), EEVP_OK);
    run_token(ctx, 4, 3, d, rows, NULL);

    ck_assert_int_eq(ps.bad_view, 0);
    ck_assert_int_eq(ps.calls, 3 + 1 + 4); /* exits at 2, 0, and the last layer 3 */
    r = res_of(ctx, 0);
    ck_assert(r.reason == EEVP_REASON_CONFIDENT && r.layer == 2 && r.pruned == 0);
    ck_assert_int_eq(r.token, ref_argmax(&h, rows + (2 * 3 + 0) * d));
    ck_assert(r.confidence == (_i ? 0.25f : 0.6f));
    r = res_of(ctx, 1);
    ck_assert(r.reason == EEVP_REASON_CONFIDENT && r.layer == 0 && r.pruned == 0);
    ck_assert_int_eq(r.token, ref_argmax(&h, rows + (0 * 3 + 1) * d));
    r = res_of(ctx, 2);
    ck_assert(r.reason == EEVP_REASON_LAST_LAYER && r.layer == 3 && r.pruned == 0);
    ck_assert_int_eq(r.token, ref_argmax(&h, rows + (3 * 3 + 2) * d));
    ck_assert(r.confidence == (_i ? 0.25f : 0.4f));
    /* the candidates of a full decision: all V */
    ck_assert_int_eq(eevp_step_candidates(ctx, 2, 60, lg, ids, &n), EEVP_OK);
    ck_assert_int_eq(n, V);
    ck_assert_int_eq(ids[0], r.token);

    memset(&st, 0, sizeof st);
    st.struct_size = (uint32_t)sizeof st;
    ck_assert_int_eq(eevp_ctx_stats(ctx, &st), EEVP_OK);
    ck_assert_int_eq(st.pruned_decisions, 0);
    ck_assert_int_eq(st.checks, 8);
    ck_assert_int_eq(st.head_flops, 3 * (2 * d - 1) * V);
    ck_assert_int_eq(st.head_bytes, 3 * 4 * V * d);
    ck_assert_int_eq(st.head_flops_baseline, 8 * (2 * d - 1) * V);
    ck_assert_int_eq(st.k_coverage_total, 0);
    eevp_ctx_free(ctx);
    rhead_free(&h);
}
END_TEST

/* --- a criterion that checks every field of the view ------------------- */

#define VIEW_L 5
#define VIEW_S 3

typedef struct view_state {
    const rhead *h;
    const float *rows;   /* VIEW_L x VIEW_S x d */
    const int *checked;  /* VIEW_L */
    int L, K, p, prune, final_pruned;
    const int32_t *pos;
    double lambda[VIEW_S];
    int32_t set[VIEW_S][64];  /* reference pruned set (local rows) */
    int last_layer[VIEW_S];
    int calls[VIEW_S][VIEW_L];
    int exit_seq, exit_layer;
    int errors;
    char first_error[256];
} view_state;

#define VFAIL(...)                                                                   \
    do {                                                                             \
        if (vs->errors++ == 0)                                                       \
            snprintf(vs->first_error, sizeof vs->first_error, __VA_ARGS__);          \
    } while (0)

static int view_decide(void *state, const eevp_exit_view *v, float *confidence, int32_t *exit)
{
    view_state *vs = state;
    const rhead *h = vs->h;
    const int d = h->d, V = h->V, s = v->seq, l = v->layer;
    double z[64], ab[64], lse = 0.0, m = -INFINITY;
    int32_t perm[64];
    char seen[64];
    int j, exp_n, exp_pruned, prev_l;

    *confidence = 0.5f;
    if (v->struct_size < offsetof(eevp_exit_view, threshold) + sizeof(float)) {
        VFAIL("struct_size %u", v->struct_size);
        return 0;
    }
    if (s < 0 || s >= VIEW_S || l < 0 || l >= vs->L) {
        VFAIL("seq %d layer %d", s, l);
        return 0;
    }
    vs->calls[s][l]++;
    if (!vs->checked[l])
        VFAIL("seq %d: called at unchecked layer %d", s, l);
    if (l <= vs->last_layer[s])
        VFAIL("seq %d: layer %d after %d", s, l, vs->last_layer[s]);
    prev_l = vs->last_layer[s];
    vs->last_layer[s] = l;
    if (v->n_layers != vs->L || v->dim != d || v->position != vs->pos[s])
        VFAIL("seq %d layer %d: n_layers %d dim %d position %d", s, l, v->n_layers, v->dim,
              v->position);
    if (fabs((double)v->threshold - vs->lambda[s]) > 1e-6)
        VFAIL("seq %d: threshold %g, expected %g", s, (double)v->threshold, vs->lambda[s]);
    if (*exit != -1)
        VFAIL("seq %d layer %d: *exit comes in as %d", s, l, *exit);
    if (!v->hidden ||
        memcmp(v->hidden, vs->rows + ((size_t)l * VIEW_S + (size_t)s) * (size_t)d,
               (size_t)d * sizeof(float)) != 0)
        VFAIL("seq %d layer %d: hidden is not the row handed over", s, l);
    if (prev_l < 0) {
        if (v->prev_hidden != NULL)
            VFAIL("seq %d layer %d: prev_hidden at the first check", s, l);
    } else if (!v->prev_hidden ||
               memcmp(v->prev_hidden, vs->rows + ((size_t)prev_l * VIEW_S + (size_t)s) * (size_t)d,
                      (size_t)d * sizeof(float)) != 0) {
        VFAIL("seq %d layer %d: prev_hidden is not layer %d's row", s, l, prev_l);
    }

    /* the candidates */
    exp_pruned = vs->prune && l > vs->p && !(l == vs->L - 1 && !vs->final_pruned);
    exp_n = exp_pruned ? vs->K : V;
    if (v->n != exp_n || v->pruned != exp_pruned || !v->logits || !v->ids) {
        VFAIL("seq %d layer %d: n %d pruned %d, expected %d %d", s, l, v->n, v->pruned, exp_n,
              exp_pruned);
        return 0;
    }
    ref_logits(&h->rh, v->hidden, z, ab);
    memset(seen, 0, sizeof seen);
    for (j = 0; j < v->n; j++) {
        int32_t id = v->ids[j], loc = id - (int32_t)h->rh.offset;
        if (loc < 0 || loc >= V || seen[loc]) {
            VFAIL("seq %d layer %d: bad or repeated id %d", s, l, id);
            return 0;
        }
        seen[loc] = 1;
        if (!ref_close(v->logits[j], z[loc], d, ab[loc]))
            VFAIL("seq %d layer %d: logit of %d is %.9g, reference %.9g", s, l, id,
                  (double)v->logits[j], z[loc]);
    }
    if (exp_pruned)
        for (j = 0; j < vs->K; j++)
            if (!seen[vs->set[s][j]])
                VFAIL("seq %d layer %d: row %d of the pruned set missing", s, l,
                      vs->set[s][j]);
    /* top-1/top-2 and log-sum-exp over the candidates, by the reference */
    {
        double cz[64];
        int32_t cid[64];
        for (j = 0; j < v->n; j++) {
            cid[j] = v->ids[j];
            cz[j] = z[v->ids[j] - (int32_t)h->rh.offset];
            if (cz[j] > m)
                m = cz[j];
        }
        for (j = 0; j < v->n; j++)
            lse += exp(cz[j] - m);
        lse = m + log(lse);
        ref_order(cz, cid, v->n, perm);
        if (v->top1_id != cid[perm[0]] || v->top2_id != cid[perm[1]])
            VFAIL("seq %d layer %d: top ids %d %d, reference %d %d", s, l, v->top1_id,
                  v->top2_id, cid[perm[0]], cid[perm[1]]);
        if (fabs((double)v->top1_logit - cz[perm[0]]) > 1e-4 ||
            fabs((double)v->top2_logit - cz[perm[1]]) > 1e-4)
            VFAIL("seq %d layer %d: top logits", s, l);
        if (fabs((double)v->log_sum_exp - lse) > 1e-4 * (1.0 + fabs(lse)))
            VFAIL("seq %d layer %d: log_sum_exp %.9g, reference %.9g", s, l,
                  (double)v->log_sum_exp, lse);
    }
    if (s == vs->exit_seq && l == vs->exit_layer)
        *exit = 1;
    else
        *exit = 0;
    return 0;
}

/* (L 5, f, p, K, final, CALM) */
static const int view_cfgs[][5] = {
    {1, 0, 5, EEVP_FINAL_FULL, 0},
    {0, 0, 5, EEVP_FINAL_PRUNED, 1},
    {2, 2, 5, EEVP_FINAL_FULL, 1},
    {1, 1, 0, EEVP_FINAL_FULL, 0}, /* no pruning */
};

START_TEST(test_custom_view)
{
    const int d = 8, V = 50, f = view_cfgs[_i][0], p = view_cfgs[_i][1], K = view_cfgs[_i][2];
    const int32_t pos[VIEW_S] = {0, 17, 64};
    static int checked[VIEW_L];
    static view_state vs;
    float rows[VIEW_L * VIEW_S * 8];
    eevp_criterion_vtbl vt;
    rhead h;
    eevp_ctx *ctx;
    eevp_ctx_options co;
    eevp_result r;
    int s, l, token;
    uint32_t seed = 1234u + (uint32_t)_i;

    rhead_make(&h, V, d, 100, 4321u);
    fill_random(rows, VIEW_L * VIEW_S * d, &seed, -1.0f, 1.0f);
    memset(&vs, 0, sizeof vs);
    memset(checked, 0, sizeof checked);
    for (l = f; l < VIEW_L; l++)
        checked[l] = 1;
    vs.h = &h;
    vs.rows = rows;
    vs.checked = checked;
    vs.L = VIEW_L;
    vs.K = K;
    vs.p = p;
    vs.prune = K > 0;
    vs.final_pruned = view_cfgs[_i][3] == EEVP_FINAL_PRUNED;
    vs.pos = pos;
    vs.exit_seq = 1;
    vs.exit_layer = f + 1;
    for (s = 0; s < VIEW_S; s++) {
        double z[64];
        int32_t perm[64];
        vs.last_layer[s] = -1;
        vs.lambda[s] = view_cfgs[_i][4] ? ref_threshold_calm((double)0.9f, (double)4.0f, pos[s], 64)
                                        : (double)0.9f;
        ref_logits(&h.rh, rows + ((size_t)p * VIEW_S + (size_t)s) * (size_t)d, z, NULL);
        ref_order(z, NULL, V, perm);
        memcpy(vs.set[s], perm, sizeof vs.set[s][0] * (size_t)(K > 0 ? K : 1));
    }
    memset(&vt, 0, sizeof vt);
    vt.struct_size = (uint32_t)sizeof vt;
    vt.needs = EEVP_NEEDS_LOGITS | EEVP_NEEDS_PREV_HIDDEN;
    vt.decide = view_decide;

    opts(&co, VIEW_L, EEVP_CRITERION_TOP2_GAP, 0.9f);
    co.first_layer = f;
    co.prune_layer = p;
    co.k = K;
    co.final_policy = view_cfgs[_i][3];
    if (view_cfgs[_i][4]) {
        co.schedule = EEVP_SCHEDULE_CALM;
        co.schedule_tau = 4.0f;
        co.max_length = 64;
    }
    ctx = mk_ctx(h.head, &co);
    ck_assert_int_eq(eevp_ctx_set_criterion(ctx, &vt, &vs), EEVP_OK);
    run_token(ctx, VIEW_L, VIEW_S, d, rows, pos);
    ck_assert_msg(vs.errors == 0, "%d errors, first: %s", vs.errors, vs.first_error);
    for (s = 0; s < VIEW_S; s++)
        for (l = 0; l < VIEW_L; l++) {
            int want = checked[l] && !(s == vs.exit_seq && l > vs.exit_layer);
            ck_assert_msg(vs.calls[s][l] == want, "seq %d layer %d: %d calls", s, l,
                          vs.calls[s][l]);
        }
    /* seq 1 exited by *exit = 1 despite its confidence 0.5 < 0.9 */
    r = res_of(ctx, 1);
    ck_assert_int_eq(r.reason, EEVP_REASON_CONFIDENT);
    ck_assert_int_eq(r.layer, vs.exit_layer);
    ck_assert(r.confidence == 0.5f);
    ck_assert_int_eq(r.pruned, vs.prune && vs.exit_layer > p);
    /* the others: *exit = 0 at the last layer is ignored */
    r = res_of(ctx, 0);
    ck_assert_int_eq(r.reason, EEVP_REASON_LAST_LAYER);
    ck_assert_int_eq(r.layer, VIEW_L - 1);
    token = ref_argmax(&h, rows + ((size_t)(VIEW_L - 1) * VIEW_S) * (size_t)d);
    if (!(vs.prune && vs.final_pruned))
        ck_assert_int_eq(r.token, token);
    eevp_ctx_free(ctx);
    rhead_free(&h);
}
END_TEST

/* --- failures: EEVP_EUSER and EEVP_ECALLBACK -------------------------------- */

typedef struct fail_state {
    int mode;        /* 0 return 1, 1 NaN, 2 exit 7, 3 exit -2, 4 +Inf */
    int armed;
    int bad_seq, bad_layer;
} fail_state;

static int fail_decide(void *state, const eevp_exit_view *v, float *confidence, int32_t *exit)
{
    fail_state *fs = state;

    *confidence = v->hidden[0];
    if (!fs->armed || v->seq != fs->bad_seq || v->layer != fs->bad_layer)
        return 0;
    switch (fs->mode) {
    case 0: return 1;
    case 1: *confidence = NAN; return 0;
    case 2: *exit = 7; return 0;
    case 3: *exit = -2; return 0;
    default: *confidence = INFINITY; return 0;
    }
}

START_TEST(test_custom_failure)
{
    const int d = 8, V = 50;
    static const int codes[5] = {EEVP_EUSER, EEVP_ECALLBACK, EEVP_ECALLBACK, EEVP_ECALLBACK,
                                 EEVP_ECALLBACK};
    eevp_criterion_vtbl vt;
    fail_state fs;
    rhead h;
    eevp_ctx *ctx;
    eevp_ctx_options co;
    eevp_stats st;
    eevp_result r;
    float rows[4 * 3 * 8];
    int rc[4] = {EEVP_OK, EEVP_OK, EEVP_OK, EEVP_OK};
    int tok, round;
    float lg[4];
    int32_t ids[4], n = 5;

    rhead_make(&h, V, d, 0, 77u);
    probe_rows(rows, d, 6u);
    memset(&vt, 0, sizeof vt);
    vt.struct_size = (uint32_t)sizeof vt;
    vt.needs = EEVP_NEEDS_LOGITS;
    vt.decide = fail_decide;
    opts(&co, 4, EEVP_CRITERION_TOP2_GAP, 0.5f);
    co.k = 5;
    ctx = mk_ctx(h.head, &co);
    memset(&fs, 0, sizeof fs);
    fs.mode = _i;
    fs.bad_seq = 0;
    fs.bad_layer = 1;
    ck_assert_int_eq(eevp_ctx_set_criterion(ctx, &vt, &fs), EEVP_OK);

    for (round = 0; round < 2; round++) {
        /* round 0 fails seq 0 at layer 1; round 1 runs clean */
        fs.armed = round == 0;
        rc[1] = round == 0 ? codes[_i] : EEVP_OK;
        run_token_rc(ctx, 4, 3, d, rows, NULL, rc);
        r = res_of(ctx, 0);
        if (round == 0) {
            ck_assert_int_eq(r.reason, EEVP_REASON_ERROR);
            ck_assert_int_eq(r.status, codes[_i]);
            ck_assert_int_eq(r.token, -1);
            ck_assert_int_ne(eevp_step_candidates(ctx, 0, 4, lg, ids, &n), EEVP_OK);
            ck_assert_int_eq(n, 0);
        } else {
            ck_assert_int_eq(r.reason, EEVP_REASON_CONFIDENT);
            ck_assert_int_eq(r.layer, 2);
            ck_assert_int_eq(r.status, EEVP_OK);
        }
        /* the others go on as usual: seq 1 exits at 0, seq 2 at the end */
        r = res_of(ctx, 1);
        ck_assert(r.reason == EEVP_REASON_CONFIDENT && r.layer == 0 && r.status == EEVP_OK);
        tok = ref_argmax(&h, rows + 1 * d);
        ck_assert_int_eq(r.token, tok);
        r = res_of(ctx, 2);
        ck_assert(r.reason == EEVP_REASON_LAST_LAYER && r.layer == 3 && r.status == EEVP_OK);
        tok = ref_argmax(&h, rows + (3 * 3 + 2) * d);
        ck_assert_int_eq(r.token, tok);
    }
    memset(&st, 0, sizeof st);
    st.struct_size = (uint32_t)sizeof st;
    ck_assert_int_eq(eevp_ctx_stats(ctx, &st), EEVP_OK);
    ck_assert_int_eq(st.tokens, 6);
    ck_assert_int_eq(st.failed, 1);
    ck_assert_int_eq(st.exited_early, 3);
    ck_assert_int_eq(st.reached_last, 2);
    eevp_ctx_free(ctx);
    rhead_free(&h);
}
END_TEST

/* --- re-entrancy --------------------------------------------------------- */

typedef struct busy_state {
    eevp_ctx *ctx;
    const float *row;
    int calls, not_busy;
    char which[256];
} busy_state;

static void busy_expect(busy_state *bs, int rc, const char *name)
{
    if (rc != EEVP_EBUSY) {
        if (bs->not_busy++ == 0)
            snprintf(bs->which, sizeof bs->which, "%s returned %d", name, rc);
    }
}

static int busy_decide(void *state, const eevp_exit_view *v, float *confidence, int32_t *exit)
{
    busy_state *bs = state;
    eevp_ctx *ctx = bs->ctx;
    eevp_criterion_vtbl vt;
    eevp_result r;
    eevp_stats st;
    int64_t hist[4];
    float lg[2], lambda;
    int32_t ids[2], n;

    (void)exit;
    bs->calls++;
    memset(&vt, 0, sizeof vt);
    vt.struct_size = (uint32_t)sizeof vt;
    vt.decide = busy_decide;
    r.struct_size = (uint32_t)sizeof r;
    st.struct_size = (uint32_t)sizeof st;
    busy_expect(bs, eevp_step_begin(ctx, 1, NULL), "eevp_step_begin");
    busy_expect(bs, eevp_step_layer(ctx, v->layer + 1, bs->row, v->dim, 1, NULL),
                "eevp_step_layer");
    busy_expect(bs, eevp_step_end(ctx), "eevp_step_end");
    busy_expect(bs, eevp_step_abandon(ctx), "eevp_step_abandon");
    busy_expect(bs, eevp_ctx_reset(ctx), "eevp_ctx_reset");
    busy_expect(bs, eevp_ctx_set_criterion(ctx, &vt, NULL), "eevp_ctx_set_criterion");
    busy_expect(bs, eevp_ctx_stats_reset(ctx), "eevp_ctx_stats_reset");
    busy_expect(bs, eevp_step_candidates(ctx, 0, 2, lg, ids, &n), "eevp_step_candidates");
    busy_expect(bs, eevp_step_result(ctx, 0, &r), "eevp_step_result");
    busy_expect(bs, eevp_step_n_running(ctx), "eevp_step_n_running");
    busy_expect(bs, eevp_ctx_stats(ctx, &st), "eevp_ctx_stats");
    busy_expect(bs, eevp_ctx_exit_histogram(ctx, hist, 4), "eevp_ctx_exit_histogram");
    busy_expect(bs, eevp_ctx_threshold(ctx, 0, &lambda), "eevp_ctx_threshold");
    busy_expect(bs, eevp_ctx_layer_required(ctx, 0), "eevp_ctx_layer_required");
    *confidence = v->hidden[0];
    return 0;
}

START_TEST(test_custom_reentry)
{
    const int d = 8, V = 50;
    eevp_criterion_vtbl vt;
    busy_state bs;
    rhead h;
    eevp_ctx *ctx;
    eevp_ctx_options co;
    eevp_result r;
    eevp_stats st;
    float rows[4 * 3 * 8];

    rhead_make(&h, V, d, 0, 78u);
    probe_rows(rows, d, 7u);
    opts(&co, 4, EEVP_CRITERION_TOP2_GAP, 0.5f);
    co.k = 5;
    ctx = mk_ctx(h.head, &co);
    memset(&bs, 0, sizeof bs);
    bs.ctx = ctx;
    bs.row = rows;
    memset(&vt, 0, sizeof vt);
    vt.struct_size = (uint32_t)sizeof vt;
    vt.needs = EEVP_NEEDS_LOGITS;
    vt.decide = busy_decide;
    ck_assert_int_eq(eevp_ctx_set_criterion(ctx, &vt, &bs), EEVP_OK);
    run_token(ctx, 4, 3, d, rows, NULL);
    ck_assert_int_eq(bs.calls, 3 + 1 + 4);
    ck_assert_msg(bs.not_busy == 0, "%d calls not refused, first: %s", bs.not_busy, bs.which);
    /* the refused calls changed nothing: the step went on as without them */
    r = res_of(ctx, 0);
    ck_assert(r.reason == EEVP_REASON_CONFIDENT && r.layer == 2);
    r = res_of(ctx, 1);
    ck_assert(r.reason == EEVP_REASON_CONFIDENT && r.layer == 0);
    r = res_of(ctx, 2);
    ck_assert(r.reason == EEVP_REASON_LAST_LAYER && r.layer == 3);
    ck_assert_int_eq(r.token, ref_argmax(&h, rows + (3 * 3 + 2) * d));
    memset(&st, 0, sizeof st);
    st.struct_size = (uint32_t)sizeof st;
    ck_assert_int_eq(eevp_ctx_stats(ctx, &st), EEVP_OK);
    ck_assert_int_eq(st.tokens, 3);
    /* and the context is usable afterwards */
    run_token(ctx, 4, 3, d, rows, NULL);
    ck_assert_int_eq(bs.calls, 16);
    eevp_ctx_free(ctx);
    rhead_free(&h);
}
END_TEST

/* --- reset and destroy ------------------------------------------------------ */

typedef struct life_state {
    int resets[8];
    int n_resets, destroyed, bad_seq;
} life_state;

static int life_decide(void *state, const eevp_exit_view *v, float *confidence, int32_t *exit)
{
    (void)state;
    (void)exit;
    *confidence = v->hidden[0];
    return 0;
}

static void life_reset(void *state, int32_t seq)
{
    life_state *ls = state;
    ls->n_resets++;
    if (seq >= 0 && seq < 8)
        ls->resets[seq]++;
    else
        ls->bad_seq++;
}

static void life_destroy(void *state)
{
    ((life_state *)state)->destroyed++;
}

START_TEST(test_custom_reset_destroy)
{
    const int d = 8, V = 50;
    eevp_criterion_vtbl vt;
    life_state a, b;
    rhead h;
    eevp_ctx *ctx;
    eevp_ctx_options co;
    float rows[4 * 3 * 8];
    int s;

    rhead_make(&h, V, d, 0, 79u);
    probe_rows(rows, d, 8u);
    opts(&co, 4, EEVP_CRITERION_TOP2_GAP, 0.5f);
    co.max_batch = 6;
    ctx = mk_ctx(h.head, &co);
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    memset(&vt, 0, sizeof vt);
    vt.struct_size = (uint32_t)sizeof vt;
    vt.name = "life";
    vt.decide = life_decide;
    vt.reset = life_reset;
    vt.destroy = life_destroy;
    ck_assert_int_eq(eevp_ctx_set_criterion(ctx, &vt, &a), EEVP_OK);
    ck_assert_int_eq(a.n_resets, 0);

    run_token(ctx, 4, 3, d, rows, NULL);
    ck_assert_int_eq(a.n_resets, 3);
    for (s = 0; s < 3; s++)
        ck_assert_int_eq(a.resets[s], 1);
    /* an abandoned step's begin counts too; a batch of 2: seqs 0 and 1 */
    ck_assert_int_eq(eevp_step_begin(ctx, 2, NULL), EEVP_OK);
    ck_assert_int_eq(a.n_resets, 5);
    ck_assert_int_eq(a.resets[2], 1);
    ck_assert_int_eq(eevp_step_abandon(ctx), EEVP_OK);
    run_token(ctx, 4, 3, d, rows, NULL);
    ck_assert_int_eq(a.n_resets, 8);
    ck_assert_int_eq(a.bad_seq, 0);
    ck_assert_int_eq(a.destroyed, 0);

    /* a refused registration destroys nothing and keeps the criterion */
    vt.struct_size = 0;
    ck_assert_int_eq(eevp_ctx_set_criterion(ctx, &vt, &b), EEVP_ESTRUCT);
    vt.struct_size = (uint32_t)sizeof vt;
    vt.decide = NULL;
    ck_assert_int_eq(eevp_ctx_set_criterion(ctx, &vt, &b), EEVP_EINVAL);
    vt.decide = life_decide;
    ck_assert_int_eq(a.destroyed + b.destroyed, 0);
    run_token(ctx, 4, 3, d, rows, NULL);
    ck_assert_int_eq(a.n_resets, 11);
    ck_assert_int_eq(b.n_resets, 0);

    /* replacing destroys the old state once, and only it */
    ck_assert_int_eq(eevp_ctx_set_criterion(ctx, &vt, &b), EEVP_OK);
    ck_assert_int_eq(a.destroyed, 1);
    ck_assert_int_eq(b.destroyed, 0);
    run_token(ctx, 4, 3, d, rows, NULL);
    ck_assert_int_eq(b.n_resets, 3);
    ck_assert_int_eq(a.n_resets, 11);
    /* reset outside a step: no reset callback, no destroy */
    ck_assert_int_eq(eevp_ctx_reset(ctx), EEVP_OK);
    ck_assert_int_eq(b.n_resets, 3);
    ck_assert_int_eq(b.destroyed, 0);

    eevp_ctx_free(ctx);
    ck_assert_int_eq(a.destroyed, 1);
    ck_assert_int_eq(b.destroyed, 1);

    /* a context freed with its first custom criterion; destroy NULL is fine */
    ctx = mk_ctx(h.head, &co);
    ck_assert_int_eq(eevp_ctx_set_criterion(ctx, &vt, &a), EEVP_OK);
    vt.destroy = NULL;
    vt.reset = NULL;
    ck_assert_int_eq(eevp_ctx_set_criterion(ctx, &vt, &b), EEVP_OK);
    ck_assert_int_eq(a.destroyed, 2);
    run_token(ctx, 4, 3, d, rows, NULL);
    ck_assert_int_eq(b.n_resets, 3);
    eevp_ctx_free(ctx);
    ck_assert_int_eq(b.destroyed, 1);
    rhead_free(&h);
}
END_TEST

/* --- registration errors ---------------------------------------------------- */

START_TEST(test_custom_register_errors)
{
    const int d = 8, V = 50;
    struct {
        eevp_criterion_vtbl vt;
        unsigned char tail[16];
    } big;
    eevp_criterion_vtbl vt;
    life_state a;
    rhead h;
    eevp_ctx *ctx;
    eevp_ctx_options co;
    float rows[4 * 3 * 8];

    rhead_make(&h, V, d, 0, 80u);
    probe_rows(rows, d, 9u);
    opts(&co, 4, EEVP_CRITERION_TOP2_GAP, 0.5f);
    ctx = mk_ctx(h.head, &co);
    memset(&a, 0, sizeof a);
    memset(&vt, 0, sizeof vt);
    vt.decide = life_decide;
    vt.destroy = life_destroy;

    ck_assert_int_eq(eevp_ctx_set_criterion(NULL, &vt, &a), EEVP_EINVAL);
    ck_assert_int_eq(eevp_ctx_set_criterion(ctx, NULL, &a), EEVP_EINVAL);
    vt.struct_size = 0;
    ck_assert_int_eq(eevp_ctx_set_criterion(ctx, &vt, &a), EEVP_ESTRUCT);
    vt.struct_size = 4;
    ck_assert_int_eq(eevp_ctx_set_criterion(ctx, &vt, &a), EEVP_ESTRUCT);
    vt.struct_size = (uint32_t)offsetof(eevp_criterion_vtbl, decide);
    ck_assert_int_eq(eevp_ctx_set_criterion(ctx, &vt, &a), EEVP_ESTRUCT);
    vt.struct_size = (uint32_t)sizeof vt - 1;
    ck_assert_int_eq(eevp_ctx_set_criterion(ctx, &vt, &a), EEVP_ESTRUCT);
    vt.struct_size = (uint32_t)sizeof vt;
    vt.decide = NULL;
    ck_assert_int_eq(eevp_ctx_set_criterion(ctx, &vt, &a), EEVP_EINVAL);
    vt.decide = life_decide;
    /* larger than known: a non-zero tail is refused, a zero one accepted */
    memset(&big, 0, sizeof big);
    big.vt = vt;
    big.vt.struct_size = (uint32_t)sizeof big;
    big.tail[5] = 1;
    ck_assert_int_eq(eevp_ctx_set_criterion(ctx, &big.vt, &a), EEVP_ESTRUCT);
    ck_assert_int_eq(a.destroyed, 0);

    /* during a step: EEVP_ESTATE, and the step goes on */
    ck_assert_int_eq(eevp_step_begin(ctx, 1, NULL), EEVP_OK);
    ck_assert_int_eq(eevp_ctx_set_criterion(ctx, &vt, &a), EEVP_ESTATE);
    ck_assert_int_eq(eevp_step_layer(ctx, 0, rows, d, 1, NULL), EEVP_OK);
    ck_assert_int_eq(eevp_ctx_set_criterion(ctx, &vt, &a), EEVP_ESTATE);
    ck_assert_int_eq(eevp_step_abandon(ctx), EEVP_OK);
    ck_assert_int_eq(a.destroyed, 0);

    big.tail[5] = 0;
    ck_assert_int_eq(eevp_ctx_set_criterion(ctx, &big.vt, &a), EEVP_OK);
    run_token(ctx, 4, 3, d, rows, NULL);
    ck_assert_int_eq(res_of(ctx, 0).layer, 2); /* hidden[0] > 0.5 at layer 2 */
    eevp_ctx_free(ctx);
    ck_assert_int_eq(a.destroyed, 1);
    rhead_free(&h);
}
END_TEST

Suite *make_criteria_suite(void)
{
    Suite *s = suite_create("criteria");
    TCase *tc = tcase_create("builtin");

    tcase_add_test(tc, test_top2_gap);
    tcase_add_test(tc, test_top2_single_and_ties);
    tcase_add_test(tc, test_max_prob);
    tcase_add_test(tc, test_max_prob_renormalised);
    tcase_add_test(tc, test_entropy);
    tcase_add_test(tc, test_entropy_masked);
    tcase_add_test(tc, test_saturation);
    tcase_add_test(tc, test_saturation_interval);
    tcase_add_loop_test(tc, test_stability, 0, 3);
    tcase_add_test(tc, test_stability_pruned);
    tcase_add_test(tc, test_js);
    tcase_add_test(tc, test_js_pruned);
    tcase_add_test(tc, test_calm_schedule);
    suite_add_tcase(s, tc);

    tc = tcase_create("custom");
    tcase_add_loop_test(tc, test_custom_probe, 0, 2);
    tcase_add_loop_test(tc, test_custom_view, 0,
                        (int)(sizeof view_cfgs / sizeof view_cfgs[0]));
    tcase_add_loop_test(tc, test_custom_failure, 0, 5);
    tcase_add_test(tc, test_custom_reentry);
    tcase_add_test(tc, test_custom_reset_destroy);
    tcase_add_test(tc, test_custom_register_errors);
    suite_add_tcase(s, tc);
    return s;
}
