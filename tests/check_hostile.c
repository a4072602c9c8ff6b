/* SPDX-License-Identifier: MIT */
/*
 * check_hostile.c - hostile and careless callers, and numeric corner cases.
 *
 * Callbacks: a custom criterion that returns a NaN or infinite confidence,
 * an exit flag out of range or an error, or calls back into its own context
 * (from decide and from reset).  Each must give its documented code for
 * that sequence only, leave the other sequences' results exactly as a clean
 * run gives them, and leave the context usable: the next step is bitwise
 * the same as on a fresh context.
 *
 * Numbers: all logits equal, masked tokens (-inf bias, some or all), V = 1,
 * K = V, d = 1, hidden states of magnitude 1e30 and beyond float range,
 * denormal and zero hidden states.  docs/RELIABILITY.md states the
 * behaviour each test pins.
 */
#include <check.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eevp.h"
#include "ref.h"

Suite *make_hostile_suite(void);

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

static eevp_head *head_of(const float *W, int64_t V, int64_t d, const float *bias, int norm,
                          int64_t offset)
{
    eevp_head_options o = EEVP_HEAD_OPTIONS_INIT;
    eevp_head *h = NULL;
    char msg[128];
    int rc;
    o.n_vocab = V;
    o.dim = d;
    o.weights = W;
    o.logit_bias = bias;
    o.norm = norm;
    o.vocab_offset = offset;
    rc = eevp_head_create(&h, &o, msg, sizeof msg);
    ck_assert_msg(rc == EEVP_OK, "head: %d %s", rc, msg);
    return h;
}

static eevp_ctx_options ctx_opts(int32_t L, int32_t B, int32_t k, int32_t crit, float lambda)
{
    eevp_ctx_options o = EEVP_CTX_OPTIONS_INIT;
    o.n_layers = L;
    o.max_batch = B;
    o.k = k;
    o.criterion = crit;
    o.threshold = lambda;
    return o;
}

static eevp_ctx *ctx_of(const eevp_head *h, const eevp_ctx_options *o)
{
    eevp_ctx *c = NULL;
    char msg[128];
    int rc = eevp_ctx_create(&c, h, o, msg, sizeof msg);
    ck_assert_msg(rc == EEVP_OK, "ctx: %d %s", rc, msg);
    return c;
}

/* One step: layer l gets rows hid + l*B*d (B rows of d); returns the first
 * non-OK code of eevp_step_layer (or EEVP_OK) and fills res[0..n-1]. */
static int run_step(eevp_ctx *c, int32_t L, int32_t n, int64_t d, int32_t B, const float *hid,
                    eevp_result *res)
{
    int first = EEVP_OK, rc;
    int32_t l, s;
    ck_assert_int_eq(eevp_step_begin(c, n, NULL), EEVP_OK);
    for (l = 0; l < L && eevp_step_n_running(c) > 0; l++) {
        rc = eevp_step_layer(c, l, hid + (size_t)l * (size_t)B * (size_t)d, d, n, NULL);
        if (rc != EEVP_OK && first == EEVP_OK)
            first = rc;
    }
    ck_assert_int_eq(eevp_step_n_running(c), 0);
    ck_assert_int_eq(eevp_step_end(c), EEVP_OK);
    for (s = 0; s < n; s++) {
        res[s].struct_size = sizeof res[s];
        ck_assert_int_eq(eevp_step_result(c, s, &res[s]), EEVP_OK);
    }
    return first;
}

/* Results equal bit for bit (confidence and threshold compared as bits). */
static int same_result(const eevp_result *a, const eevp_result *b)
{
    return a->reason == b->reason && a->status == b->status && a->token == b->token &&
           a->layer == b->layer && a->pruned == b->pruned &&
           memcmp(&a->confidence, &b->confidence, sizeof(float)) == 0 &&
           memcmp(&a->threshold, &b->threshold, sizeof(float)) == 0;
}

/* ------------------------------------------------------------------------ */
/* Hostile callbacks                                                        */
/* ------------------------------------------------------------------------ */

enum {
    H_SANE, H_NAN, H_PINF, H_NINF, H_EXIT2, H_EXITM2, H_EXITMIN, H_EXITMAX, H_ERR1, H_ERRM1,
    H_REENTER, H_N
};

typedef struct hostile {
    eevp_ctx *ctx;
    int mode;        /* for sequence bad_seq at layer bad_layer */
    int32_t bad_seq, bad_layer;
    int calls, not_busy, resets;
    int reenter_in_reset;
} hostile;

/* Every call on the context from inside its callback: all EEVP_EBUSY. */
static int reenter_all(eevp_ctx *ctx)
{
    eevp_criterion_vtbl vt;
    eevp_result r;
    eevp_stats st;
    int64_t hist[4];
    float z[2] = { 0, 0 }, lambda;
    int32_t ids[2], n = 7;
    int bad = 0;

    memset(&vt, 0, sizeof vt);
    vt.struct_size = sizeof vt;
    r.struct_size = sizeof r;
    st.struct_size = sizeof st;
    bad += eevp_step_begin(ctx, 1, NULL) != EEVP_EBUSY;
    bad += eevp_step_layer(ctx, 0, z, 1, 1, NULL) != EEVP_EBUSY;
    bad += eevp_step_end(ctx) != EEVP_EBUSY;
    bad += eevp_step_abandon(ctx) != EEVP_EBUSY;
    bad += eevp_ctx_reset(ctx) != EEVP_EBUSY;
    bad += eevp_ctx_stats_reset(ctx) != EEVP_EBUSY;
    bad += eevp_ctx_set_criterion(ctx, &vt, NULL) != EEVP_EBUSY;
    bad += eevp_step_candidates(ctx, 0, 2, z, ids, &n) != EEVP_EBUSY;
    bad += n != 0;
    bad += eevp_step_result(ctx, 0, &r) != EEVP_EBUSY;
    bad += eevp_step_n_running(ctx) != EEVP_EBUSY;
    bad += eevp_ctx_stats(ctx, &st) != EEVP_EBUSY;
    bad += eevp_ctx_exit_histogram(ctx, hist, 4) != EEVP_EBUSY;
    bad += eevp_ctx_threshold(ctx, 0, &lambda) != EEVP_EBUSY;
    bad += eevp_ctx_layer_required(ctx, 0) != EEVP_EBUSY;
    return bad;
}

static int hostile_decide(void *state, const eevp_exit_view *v, float *conf, int32_t *ex)
{
    hostile *hs = state;
    hs->calls++;
    /* The sane rule: the top-2 gap of the view's logits. */
    *conf = v->n > 1 ? (float)(1.0 - exp((double)v->top2_logit - (double)v->top1_logit)) : 1.0f;
    if (v->seq != hs->bad_seq || v->layer != hs->bad_layer)
        return 0;
    switch (hs->mode) {
    case H_NAN: *conf = NAN; return 0;
    case H_PINF: *conf = INFINITY; return 0;
    case H_NINF: *conf = -INFINITY; return 0;
    case H_EXIT2: *ex = 2; return 0;
    case H_EXITM2: *ex = -2; return 0;
    case H_EXITMIN: *ex = INT32_MIN; return 0;
    case H_EXITMAX: *ex = INT32_MAX; return 0;
    case H_ERR1: return 1;
    case H_ERRM1: return -1;
    case H_REENTER: hs->not_busy += reenter_all(hs->ctx); return 0;
    default: return 0;
    }
}

static void hostile_reset(void *state, int32_t seq)
{
    hostile *hs = state;
    (void)seq;
    hs->resets++;
    if (hs->reenter_in_reset)
        hs->not_busy += reenter_all(hs->ctx);
}

static const int hostile_code[H_N] = {
    EEVP_OK, EEVP_ECALLBACK, EEVP_ECALLBACK, EEVP_ECALLBACK, EEVP_ECALLBACK, EEVP_ECALLBACK,
    EEVP_ECALLBACK, EEVP_ECALLBACK, EEVP_EUSER, EEVP_EUSER, EEVP_OK
};

enum { HV = 40, HD = 8, HL = 5, HB = 4 };

static void hostile_fixture(float *W, float *hid)
{
    uint32_t seed = 4242;
    int32_t l, s, c;
    fill_random(W, HV * HD, &seed, -1, 1);
    /* Sequence s sharpens towards token 3s: some exit early, some not. */
    for (l = 0; l < HL; l++)
        for (s = 0; s < HB; s++)
            for (c = 0; c < HD; c++)
                hid[((size_t)l * HB + s) * HD + c] =
                    (float)(0.3 * (ref_rand_unit(&seed) - 0.5)) +
                    (float)(l + 1) * (float)s * W[(3 * s) * HD + c];
}

/* destroy calling back into its context: refused like decide and reset,
 * both when the criterion is replaced and when the context is freed. */
static void reentering_destroy(void *state)
{
    hostile *hs = state;
    hs->calls++;
    hs->not_busy += reenter_all(hs->ctx);
}

START_TEST(test_destroy_reenters)
{
    float W[HV * HD];
    eevp_head *h;
    eevp_ctx *c;
    eevp_ctx_options o;
    eevp_criterion_vtbl vt;
    hostile a, b;
    uint32_t seed = 5;

    fill_random(W, HV * HD, &seed, -1, 1);
    h = head_of(W, HV, HD, NULL, EEVP_NORM_RMS, 0);
    o = ctx_opts(HL, HB, 6, EEVP_CRITERION_TOP2_GAP, 0.9f);
    c = ctx_of(h, &o);
    memset(&vt, 0, sizeof vt);
    vt.struct_size = sizeof vt;
    vt.needs = EEVP_NEEDS_LOGITS;
    vt.decide = hostile_decide;
    vt.destroy = reentering_destroy;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    a.ctx = b.ctx = c;
    a.bad_seq = b.bad_seq = -1;
    ck_assert_int_eq(eevp_ctx_set_criterion(c, &vt, &a), EEVP_OK);
    ck_assert_int_eq(eevp_ctx_set_criterion(c, &vt, &b), EEVP_OK); /* destroys a */
    ck_assert_int_eq(a.calls, 1);
    ck_assert_int_eq(a.not_busy, 0);
    /* The context is usable afterwards: not left busy. */
    ck_assert_int_eq(eevp_step_begin(c, 1, NULL), EEVP_OK);
    ck_assert_int_eq(eevp_step_abandon(c), EEVP_OK);
    eevp_ctx_free(c); /* destroys b */
    ck_assert_int_eq(b.calls, 1);
    ck_assert_int_eq(b.not_busy, 0);
    eevp_head_free(h);
}
END_TEST

/* _i: the misbehaviour, at sequence 1, layer 2. */
START_TEST(test_hostile_callback)
{
    float W[HV * HD], hid[HL * HB * HD];
    eevp_head *h;
    eevp_ctx *c, *fresh;
    eevp_ctx_options o;
    eevp_criterion_vtbl vt;
    hostile hs, hf;
    eevp_result bad[HB], ref[HB], again[HB], clean[HB];
    eevp_stats st;
    int32_t s;
    int rc;

    hostile_fixture(W, hid);
    h = head_of(W, HV, HD, NULL, EEVP_NORM_RMS, 0);
    o = ctx_opts(HL, HB, 6, EEVP_CRITERION_TOP2_GAP, 0.9f);
    c = ctx_of(h, &o);
    fresh = ctx_of(h, &o);
    memset(&vt, 0, sizeof vt);
    vt.struct_size = sizeof vt;
    vt.needs = EEVP_NEEDS_LOGITS;
    vt.decide = hostile_decide;
    vt.reset = hostile_reset;
    memset(&hs, 0, sizeof hs);
    hs.ctx = c;
    hs.mode = _i;
    hs.bad_seq = 1;
    hs.bad_layer = 2;
    hs.reenter_in_reset = _i == H_REENTER;
    hf = hs;
    hf.ctx = fresh;
    hf.mode = H_SANE;
    hf.reenter_in_reset = 0;
    ck_assert_int_eq(eevp_ctx_set_criterion(c, &vt, &hs), EEVP_OK);
    ck_assert_int_eq(eevp_ctx_set_criterion(fresh, &vt, &hf), EEVP_OK);

    rc = run_step(fresh, HL, HB, HD, HB, hid, ref);
    ck_assert_int_eq(rc, EEVP_OK);
    /* The fixture must reach the bad layer with sequence 1 still running. */
    ck_assert_msg(ref[1].layer >= 2, "fixture: sequence 1 resolved at %d", ref[1].layer);

    rc = run_step(c, HL, HB, HD, HB, hid, bad);
    ck_assert_msg(rc == hostile_code[_i], "mode %d: step_layer gave %d (%s), expected %d", _i,
                  rc, eevp_ctx_errmsg(c), hostile_code[_i]);
    ck_assert_int_eq(hs.not_busy, 0);
    ck_assert_int_eq(hs.resets, HB);
    for (s = 0; s < HB; s++) {
        if (s == 1 && hostile_code[_i] != EEVP_OK) {
            ck_assert_int_eq(bad[s].reason, EEVP_REASON_ERROR);
            ck_assert_int_eq(bad[s].status, hostile_code[_i]);
            ck_assert_int_eq(bad[s].token, -1);
            ck_assert_int_eq(bad[s].layer, 2);
            ck_assert(isnan(bad[s].confidence));
        } else {
            ck_assert_msg(same_result(&bad[s], &ref[s]), "mode %d: sequence %d disturbed", _i,
                          s);
        }
    }
    st.struct_size = sizeof st;
    ck_assert_int_eq(eevp_ctx_stats(c, &st), EEVP_OK);
    ck_assert_int_eq(st.tokens, HB);
    ck_assert_int_eq(st.failed, hostile_code[_i] != EEVP_OK);

    /* Usable afterwards: a clean step is the fresh context's, bit for bit. */
    hs.mode = H_SANE;
    hs.reenter_in_reset = 0;
    ck_assert_int_eq(run_step(c, HL, HB, HD, HB, hid, again), EEVP_OK);
    ck_assert_int_eq(run_step(fresh, HL, HB, HD, HB, hid, clean), EEVP_OK);
    for (s = 0; s < HB; s++)
        ck_assert_msg(same_result(&again[s], &clean[s]), "mode %d: after, sequence %d", _i, s);
    eevp_ctx_free(c);
    eevp_ctx_free(fresh);
    eevp_head_free(h);
}
END_TEST

/* A finite confidence outside [0, 1] is the criterion's business: accepted,
 * reported as given, compared with lambda as usual.  The exit flag decides
 * before the last layer and is ignored at it. */
typedef struct fixed_cb {
    float conf;
    int32_t ex;
} fixed_cb;

static int fixed_decide(void *state, const eevp_exit_view *v, float *conf, int32_t *ex)
{
    const fixed_cb *f = state;
    (void)v;
    *conf = f->conf;
    *ex = f->ex;
    return 0;
}

START_TEST(test_callback_values)
{
    static const fixed_cb cases[] = {
        { 5.0f, -1 }, { -3.0f, -1 }, { FLT_MAX, -1 }, { -FLT_MAX, -1 }, { 0.99f, 0 },
        { 0.0f, 1 }, { 1e-45f, -1 },
    };
    float W[HV * HD], hid[HL * HB * HD];
    eevp_head *h;
    eevp_ctx *c;
    eevp_ctx_options o;
    eevp_criterion_vtbl vt;
    eevp_result r[HB];
    fixed_cb f = cases[_i];
    int32_t s, want_layer;

    hostile_fixture(W, hid);
    h = head_of(W, HV, HD, NULL, EEVP_NORM_NONE, 0);
    o = ctx_opts(HL, HB, 6, EEVP_CRITERION_TOP2_GAP, 0.5f);
    o.first_layer = 1;
    c = ctx_of(h, &o);
    memset(&vt, 0, sizeof vt);
    vt.struct_size = sizeof vt;
    vt.decide = fixed_decide;
    ck_assert_int_eq(eevp_ctx_set_criterion(c, &vt, &f), EEVP_OK);
    ck_assert_int_eq(run_step(c, HL, HB, HD, HB, hid, r), EEVP_OK);
    want_layer = f.ex == 1 || (f.ex == -1 && f.conf > 0.5f) ? 1 : HL - 1;
    for (s = 0; s < HB; s++) {
        ck_assert_int_eq(r[s].status, EEVP_OK);
        ck_assert_int_eq(r[s].layer, want_layer);
        ck_assert_int_eq(r[s].reason, want_layer == HL - 1 ? EEVP_REASON_LAST_LAYER
                                                           : EEVP_REASON_CONFIDENT);
        ck_assert(memcmp(&r[s].confidence, &f.conf, sizeof(float)) == 0);
    }
    eevp_ctx_free(c);
    eevp_head_free(h);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Numeric corner cases                                                     */
/* ------------------------------------------------------------------------ */

/* All logits equal (every row of W the same): ties go to the lowest id in
 * every list; the top-2 gap and the entropy are 0, max-prob is 1/n, so no
 * probability criterion exits below lambda 1/n; JS and saturation see
 * identical layers (c = 1 from the second check), stability holds. */
START_TEST(test_all_equal)
{
    enum { V = 30, d = 6, L = 5, B = 2 };
    const int32_t crit = _i;
    float W[V * d], hid[L * B * d], z[V];
    int32_t ids[V], n_out, s, j;
    eevp_head *h;
    eevp_ctx *c;
    eevp_ctx_options o;
    eevp_result r[B];
    uint32_t seed = 9;
    int32_t want_layer;
    float want_conf;

    fill_random(W, d, &seed, -1, 1);
    for (j = 1; j < V; j++)
        memcpy(W + j * d, W, sizeof(float) * d);
    for (j = 0; j < L; j++)
        fill_random(hid + j * B * d, d, &seed, -1, 1);
    for (j = 0; j < L; j++) /* both sequences see the same state */
        memcpy(hid + (j * B + 1) * d, hid + j * B * d, sizeof(float) * d);
    if (crit == EEVP_CRITERION_SATURATION) /* the same state at every layer */
        for (j = 1; j < L; j++)
            memcpy(hid + j * B * d, hid, sizeof(float) * 2 * d);
    h = head_of(W, V, d, NULL, EEVP_NORM_RMS, 100);
    o = ctx_opts(L, B, crit == EEVP_CRITERION_SATURATION ? 0 : 8, crit, 0.5f);
    c = ctx_of(h, &o);
    ck_assert_int_eq(run_step(c, L, B, d, B, hid, r), EEVP_OK);
    switch (crit) {
    case EEVP_CRITERION_TOP2_GAP: want_layer = L - 1; want_conf = 0.0f; break;
    case EEVP_CRITERION_MAX_PROB: want_layer = L - 1; want_conf = 1.0f / V; break;
    case EEVP_CRITERION_ENTROPY: want_layer = L - 1; want_conf = 0.0f; break;
    case EEVP_CRITERION_STABILITY: want_layer = 1; want_conf = 1.0f; break; /* patience 2 */
    default: want_layer = 1; want_conf = 1.0f; break; /* JS, saturation */
    }
    for (s = 0; s < B; s++) {
        ck_assert_msg(r[s].token == 100, "criterion %d: token %d", crit, r[s].token);
        ck_assert_msg(r[s].layer == want_layer, "criterion %d: layer %d", crit, r[s].layer);
        /* The last layer's confidence; pruned decisions are over K = 8. */
        if (crit == EEVP_CRITERION_MAX_PROB)
            want_conf = r[s].pruned ? 1.0f / 8 : 1.0f / V;
        ck_assert_msg(fabsf(r[s].confidence - want_conf) < 1e-5f, "criterion %d: c = %g", crit,
                      (double)r[s].confidence);
        ck_assert_int_eq(eevp_step_candidates(c, s, V, z, ids, &n_out), EEVP_OK);
        for (j = 0; j < n_out; j++) {
            ck_assert_int_eq(ids[j], 100 + j);
            ck_assert(z[j] == z[0]);
        }
    }
    eevp_ctx_free(c);
    eevp_head_free(h);
}
END_TEST

/* Masked tokens (bias -inf): never chosen while a finite logit exists, last
 * in every candidate list; the probability criteria ignore them.  With
 * every token masked, c = 0 and the token is the lowest id. */
START_TEST(test_masked)
{
    enum { V = 20, d = 4, L = 3, B = 3 };
    float W[V * d], bias[V], hid[L * B * d], z[V];
    int32_t ids[V], n_out, j, s;
    eevp_head *h;
    eevp_ctx *c;
    eevp_ctx_options o;
    eevp_result r[B];
    uint32_t seed = 5;
    const int all = _i == 1;

    fill_random(W, V * d, &seed, -1, 1);
    /* Token 7 would win by far; mask it and every odd token (or all). */
    for (j = 0; j < V; j++)
        bias[j] = all || j == 7 || (j & 1) ? -INFINITY : 0.0f;
    for (j = 0; j < L * B; j++)
        memcpy(hid + j * d, W + 7 * d, sizeof(float) * d);
    h = head_of(W, V, d, bias, EEVP_NORM_NONE, 0);
    o = ctx_opts(L, B, 12, EEVP_CRITERION_TOP2_GAP, 0.99f); /* K > unmasked count */
    c = ctx_of(h, &o);
    ck_assert_int_eq(run_step(c, L, B, d, B, hid, r), EEVP_OK);
    for (s = 0; s < B; s++) {
        ck_assert_int_eq(r[s].status, EEVP_OK);
        if (all) {
            ck_assert_int_eq(r[s].token, 0);
            ck_assert(r[s].confidence == 0.0f);
            ck_assert_int_eq(r[s].layer, L - 1);
        } else {
            ck_assert_msg(r[s].token != 7 && !(r[s].token & 1), "masked token %d", r[s].token);
        }
        ck_assert_int_eq(eevp_step_candidates(c, s, V, z, ids, &n_out), EEVP_OK);
        for (j = 0; j < n_out; j++) {
            int masked = all || ids[j] == 7 || (ids[j] & 1);
            ck_assert_msg((z[j] == -INFINITY) == masked, "candidate %d (id %d) = %g", j, ids[j],
                          (double)z[j]);
            if (j > 0 && z[j] == -INFINITY && z[j - 1] == -INFINITY)
                ck_assert_int_lt(ids[j - 1], ids[j]);
        }
    }
    eevp_ctx_free(c);
    eevp_head_free(h);
}
END_TEST

/* V = 1: one token, always chosen; the top-2 gap is 1 (p2 = 0), so it exits
 * at the first checked layer for lambda < 1 and never for lambda = 1
 * (strict c > lambda).  k = 1 = V means no pruning. */
START_TEST(test_v1)
{
    enum { d = 5, L = 4, B = 2 };
    float W[d], hid[L * B * d];
    eevp_head *h;
    eevp_ctx *c;
    eevp_ctx_options o;
    eevp_result r[B];
    uint32_t seed = 77;
    int32_t s;
    const int lambda_one = _i & 1, k = (_i >> 1) & 1;

    fill_random(W, d, &seed, -1, 1);
    fill_random(hid, L * B * d, &seed, -1, 1);
    h = head_of(W, 1, d, NULL, EEVP_NORM_LAYER, 41);
    o = ctx_opts(L, B, k, EEVP_CRITERION_TOP2_GAP, lambda_one ? 1.0f : 0.9f);
    o.first_layer = 1;
    c = ctx_of(h, &o);
    ck_assert_int_eq(run_step(c, L, B, d, B, hid, r), EEVP_OK);
    for (s = 0; s < B; s++) {
        ck_assert_int_eq(r[s].token, 41);
        ck_assert_int_eq(r[s].pruned, 0);
        ck_assert(r[s].confidence == 1.0f);
        ck_assert_int_eq(r[s].layer, lambda_one ? L - 1 : 1);
    }
    eevp_ctx_free(c);
    eevp_head_free(h);
}
END_TEST

/* K = V is no pruning: the same results as K = 0, bit for bit, full
 * candidate lists of V. */
START_TEST(test_k_equals_v)
{
    enum { V = 25, d = 7, L = 4, B = 3 };
    float W[V * d], hid[L * B * d], z[V];
    int32_t ids[V], n_out, s;
    eevp_head *h;
    eevp_ctx *cv, *c0;
    eevp_ctx_options o;
    eevp_result rv[B], r0[B];
    uint32_t seed = 31;

    fill_random(W, V * d, &seed, -1, 1);
    fill_random(hid, L * B * d, &seed, -2, 2);
    h = head_of(W, V, d, NULL, EEVP_NORM_RMS, 0);
    o = ctx_opts(L, B, V, _i, 0.3f);
    if (_i == EEVP_CRITERION_SATURATION)
        o.threshold = 0.5f;
    cv = ctx_of(h, &o);
    o.k = 0;
    c0 = ctx_of(h, &o);
    run_step(cv, L, B, d, B, hid, rv);
    run_step(c0, L, B, d, B, hid, r0);
    for (s = 0; s < B; s++) {
        ck_assert_msg(same_result(&rv[s], &r0[s]), "criterion %d, sequence %d", _i, s);
        ck_assert_int_eq(rv[s].pruned, 0);
        ck_assert_int_eq(eevp_step_candidates(cv, s, V, z, ids, &n_out), EEVP_OK);
        ck_assert_int_eq(n_out, V);
    }
    eevp_ctx_free(cv);
    eevp_ctx_free(c0);
    eevp_head_free(h);
}
END_TEST

/* d = 1.  RMS: x' = x / sqrt(x^2 + eps), the sign of x, so the token is the
 * largest (x > 0) or smallest (x < 0) weight.  Layer norm: x - mean(x) = 0,
 * every logit is equal, the token is the lowest id.  No norm: z = W x. */
START_TEST(test_d1)
{
    enum { V = 5, L = 2 };
    const float W[V] = { -2, 1, 3, -1, 0.5f };
    float hid[L * 2] = { 0.3f, -4.0f, 0.3f, -4.0f };
    static const int norms[3] = { EEVP_NORM_RMS, EEVP_NORM_LAYER, EEVP_NORM_NONE };
    static const int32_t want[3][2] = { { 2, 0 }, { 0, 0 }, { 2, 0 } };
    eevp_head *h = head_of(W, V, 1, NULL, norms[_i], 0);
    eevp_ctx_options o = ctx_opts(L, 2, 3, EEVP_CRITERION_TOP2_GAP, 2.0f);
    eevp_ctx *c = ctx_of(h, &o);
    eevp_result r[2];

    ck_assert_int_eq(run_step(c, L, 2, 1, 2, hid, r), EEVP_OK);
    ck_assert_int_eq(r[0].token, want[_i][0]);
    ck_assert_int_eq(r[1].token, want[_i][1]);
    if (norms[_i] == EEVP_NORM_LAYER)
        ck_assert(r[0].confidence == 0.0f && r[1].confidence == 0.0f);
    eevp_ctx_free(c);
    eevp_head_free(h);
}
END_TEST

/* Hidden states of magnitude 1e30.  With a norm, the result is the one of
 * the same direction at unit scale (the norm removes the scale; eps is
 * negligible at both).  Without a norm the logits are about 1e30, finite:
 * the top-2 gap is 1 and the token is the reference argmax.  Beyond float
 * range (a logit overflows to +inf) the sequence fails with
 * EEVP_ENONFINITE and the others are untouched. */
START_TEST(test_huge_hidden)
{
    enum { V = 50, d = 16, L = 3, B = 3 };
    float W[V * d], hid[L * B * d], big[L * B * d], out[L * B * d];
    eevp_head *h;
    eevp_ctx *c;
    eevp_ctx_options o;
    eevp_result r[B], rb[B];
    uint32_t seed = 1234;
    int32_t s, j;
    const int norm = _i == 0 ? EEVP_NORM_RMS : _i == 1 ? EEVP_NORM_LAYER : EEVP_NORM_NONE;

    fill_random(W, V * d, &seed, -1, 1);
    fill_random(hid, L * B * d, &seed, -1, 1);
    for (j = 0; j < L * B * d; j++)
        big[j] = hid[j] * 1e30f;
    h = head_of(W, V, d, NULL, norm, 0);
    o = ctx_opts(L, B, 10, EEVP_CRITERION_TOP2_GAP, 0.95f);
    c = ctx_of(h, &o);
    ck_assert_int_eq(run_step(c, L, B, d, B, hid, r), EEVP_OK);
    ck_assert_int_eq(run_step(c, L, B, d, B, big, rb), EEVP_OK);
    for (s = 0; s < B; s++) {
        ck_assert_int_eq(rb[s].status, EEVP_OK);
        if (norm != EEVP_NORM_NONE) {
            ck_assert_int_eq(rb[s].token, r[s].token);
            ck_assert_int_eq(rb[s].layer, r[s].layer);
            ck_assert(fabsf(rb[s].confidence - r[s].confidence) < 1e-3f);
        } else {
            ref_head rh = { V, d, d, 0, W, EEVP_NORM_NONE, 0, NULL, NULL, NULL, 1, 0 };
            double zr[V];
            int32_t best = 0;
            ref_logits(&rh, big + s * d, zr, NULL);
            for (j = 1; j < V; j++)
                if (zr[j] > zr[best])
                    best = j;
            ck_assert_int_eq(rb[s].layer, 0);
            ck_assert_int_eq(rb[s].token, best);
            ck_assert(rb[s].confidence == 1.0f);
        }
    }
    if (norm == EEVP_NORM_NONE) {
        /* Sequence 1 beyond float range: W . h overflows. */
        memcpy(out, hid, sizeof out);
        for (j = 0; j < L; j++) {
            int32_t cidx;
            for (cidx = 0; cidx < d; cidx++)
                out[(j * B + 1) * d + cidx] = W[cidx] > 0 ? 3e38f : -3e38f;
        }
        ck_assert_int_eq(run_step(c, L, B, d, B, out, rb), EEVP_ENONFINITE);
        ck_assert_int_eq(rb[1].reason, EEVP_REASON_ERROR);
        ck_assert_int_eq(rb[1].status, EEVP_ENONFINITE);
        ck_assert(same_result(&rb[0], &r[0]) && same_result(&rb[2], &r[2]));
    }
    eevp_ctx_free(c);
    eevp_head_free(h);
}
END_TEST

/* Denormal and zero hidden states under RMS norm: x' is about 0, every
 * logit is the bias (here 0), a tie, the lowest id; nothing fails. */
START_TEST(test_tiny_hidden)
{
    enum { V = 12, d = 6, L = 2, B = 2 };
    float W[V * d], hid[L * B * d];
    eevp_head *h;
    eevp_ctx *c;
    eevp_ctx_options o;
    eevp_result r[B];
    uint32_t seed = 8;
    int32_t j;

    fill_random(W, V * d, &seed, -1, 1);
    for (j = 0; j < L * B * d; j++)
        hid[j] = (j / d) % 2 ? 0.0f : 1e-41f;
    h = head_of(W, V, d, NULL, EEVP_NORM_RMS, 0);
    o = ctx_opts(L, B, 4, EEVP_CRITERION_TOP2_GAP, 0.5f);
    c = ctx_of(h, &o);
    ck_assert_int_eq(run_step(c, L, B, d, B, hid, r), EEVP_OK);
    ck_assert_int_eq(r[1].token, 0);
    ck_assert(r[1].confidence == 0.0f);
    ck_assert_int_eq(r[0].status, EEVP_OK);
    ck_assert(isfinite(r[0].confidence));
    eevp_ctx_free(c);
    eevp_head_free(h);
}
END_TEST

Suite *make_hostile_suite(void)
{
    Suite *s = suite_create("hostile");
    TCase *tc;

    tc = tcase_create("callbacks");
    tcase_add_loop_test(tc, test_hostile_callback, 0, H_N);
    tcase_add_test(tc, test_destroy_reenters);
    tcase_add_loop_test(tc, test_callback_values, 0, 7);
    suite_add_tcase(s, tc);

    tc = tcase_create("numbers");
    tcase_add_loop_test(tc, test_all_equal, 0, 6);
    tcase_add_loop_test(tc, test_masked, 0, 2);
    tcase_add_loop_test(tc, test_v1, 0, 4);
    tcase_add_loop_test(tc, test_k_equals_v, 0, 6);
    tcase_add_loop_test(tc, test_d1, 0, 3);
    tcase_add_loop_test(tc, test_huge_hidden, 0, 3);
    tcase_add_test(tc, test_tiny_hidden);
    suite_add_tcase(s, tc);
    return s;
}
