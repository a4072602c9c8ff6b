/* SPDX-License-Identifier: MIT */
/*
 * check_spec.c - lossless early exit (eevp_spec_*): greedy verification
 * against argmaxes computed independently in double (tests/ref.c), rounds of
 * different lengths in one call against each alone, drafts taken from a
 * drafting context, statistics, and every bad input (the state left intact).
 * The sampling law is tested apart, in tests/spec_dist.c (many samples).
 */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eevp.h"
#include "ref.h"

Suite *make_spec_suite(void);

#define EXPECT(cond, ...)              \
    do {                               \
        if (!(cond))                   \
            ck_abort_msg(__VA_ARGS__); \
    } while (0)

enum { V = 300, D = 48, ROWS = 8, OFF = 1000 };

typedef struct fix {
    float W[V * D];
    float hid[4 * ROWS * D];
    eevp_head *h;
    ref_head rh;
    int32_t best[4 * ROWS];  /* reference argmax (global id) of each row */
    int clear[4 * ROWS];     /* top-2 gap large enough to trust float */
} fix;

static void fix_init(fix *f, uint32_t seed)
{
    eevp_head_options o = EEVP_HEAD_OPTIONS_INIT;
    char msg[256];
    double z[V], as[V];
    int32_t r, v;
    fill_random(f->W, V * D, &seed, -1.0f, 1.0f);
    fill_random(f->hid, 4 * ROWS * D, &seed, -2.0f, 2.0f);
    o.n_vocab = V;
    o.dim = D;
    o.weights = f->W;
    o.vocab_offset = OFF;
    o.norm = EEVP_NORM_RMS;
    EXPECT(eevp_head_create(&f->h, &o, msg, sizeof msg) == EEVP_OK, "head: %s", msg);
    memset(&f->rh, 0, sizeof f->rh);
    f->rh.V = V;
    f->rh.d = D;
    f->rh.stride = D;
    f->rh.offset = OFF;
    f->rh.W = f->W;
    f->rh.norm = EEVP_NORM_RMS;
    f->rh.eps = 1e-6;
    f->rh.scale = 1.0;
    for (r = 0; r < 4 * ROWS; r++) {
        int32_t b = 0, s = -1;
        ref_logits(&f->rh, f->hid + r * D, z, as);
        for (v = 1; v < V; v++)
            if (z[v] > z[b])
                b = v;
        for (v = 0; v < V; v++)
            if (v != b && (s < 0 || z[v] > z[s]))
                s = v;
        f->best[r] = b + OFF;
        f->clear[r] = z[b] - z[s] > 1e-3;
    }
}

static eevp_spec *make_spec(const fix *f, int32_t max_batch, int32_t max_draft)
{
    eevp_spec_options o = EEVP_SPEC_OPTIONS_INIT;
    eevp_spec *sp = NULL;
    char msg[256];
    o.max_batch = max_batch;
    o.max_draft = max_draft;
    o.n_layers = 6;
    EXPECT(eevp_spec_create(&sp, f->h, &o, msg, sizeof msg) == EEVP_OK, "spec: %s", msg);
    return sp;
}

/* Greedy: drafts equal to the rows' argmax up to `wrong` (then a different
 * token): accepted = wrong, token = argmax of row `wrong`; all right: the
 * bonus is row n's argmax. */
START_TEST(test_greedy_against_reference)
{
    fix *f = malloc(sizeof *f);
    eevp_spec *sp;
    int32_t n, wrong, checked = 0;
    ck_assert_ptr_nonnull(f);
    fix_init(f, 77u + (uint32_t)_i);
    sp = make_spec(f, 1, EEVP_MAX_DRAFT);
    for (n = 1; n <= EEVP_MAX_DRAFT; n++)
        for (wrong = 0; wrong <= n; wrong++) {
            eevp_spec_result res = {sizeof res, 0, 0, 0, 0, 0};
            const int32_t seq = 0;
            int32_t i, ok = 1;
            for (i = 0; i <= n; i++)
                ok &= f->clear[i];
            if (!ok)
                continue;
            ck_assert_int_eq(eevp_spec_round(sp, 0, 5u, 10), EEVP_OK);
            for (i = 0; i < n; i++) {
                int32_t t = f->best[i];
                if (i == wrong)
                    t = t == OFF ? OFF + 1 : t - 1;
                ck_assert_int_eq(eevp_spec_add_draft(sp, 0, t, i % 6), EEVP_OK);
            }
            ck_assert_int_eq(eevp_spec_n_drafts(sp, 0), n);
            ck_assert_int_eq(eevp_spec_verify(sp, 1, &seq, f->hid, D, &res), EEVP_OK);
            ck_assert_int_eq(res.status, EEVP_OK);
            ck_assert_int_eq(res.n_drafted, n);
            ck_assert_int_eq(res.n_accepted, wrong < n ? wrong : n);
            ck_assert_int_eq(res.token, f->best[wrong < n ? wrong : n]);
            /* the round is over */
            ck_assert_int_eq(eevp_spec_n_drafts(sp, 0), EEVP_ESTATE);
            checked++;
        }
    ck_assert_int_gt(checked, 10);
    eevp_spec_free(sp);
    eevp_head_free(f->h);
    free(f);
}
END_TEST

/* Four slots with different round lengths verified together give what each
 * gives alone; the statistics add up. */
START_TEST(test_batch_independent)
{
    fix *f = malloc(sizeof *f);
    eevp_spec *sp;
    const int32_t nd[4] = {3, 0, 7, 1}, seqs[4] = {2, 0, 3, 1};
    eevp_spec_result alone[4], both[4];
    eevp_spec_stats st = {sizeof st, 0, 0, 0, 0, 0, 0, 0};
    int64_t drafted[6], accepted[6];
    float rows[4 * ROWS * D];
    int32_t j, i, r = 0, total_rows = 0, total_acc = 0;
    ck_assert_ptr_nonnull(f);
    fix_init(f, 99u);
    sp = make_spec(f, 4, EEVP_MAX_DRAFT);
    for (j = 0; j < 4; j++) {
        /* slot seqs[j] drafts the argmax of its rows, one wrong at the end */
        for (i = 0; i <= nd[j]; i++, r++)
            memcpy(rows + r * D, f->hid + (j * ROWS + i) * D, D * sizeof(float));
    }
    for (int pass = 0; pass < 2; pass++) {
        for (j = 0; j < 4; j++) {
            ck_assert_int_eq(eevp_spec_round(sp, seqs[j], 100u + (uint64_t)j, 3 * j), EEVP_OK);
            for (i = 0; i < nd[j]; i++)
                ck_assert_int_eq(eevp_spec_add_draft(sp, seqs[j],
                                                     i == 4 ? OFF + 7 : f->best[j * ROWS + i],
                                                     i),
                                 EEVP_OK);
        }
        if (pass == 0) {
            for (j = 0, r = 0; j < 4; j++) {
                alone[j].struct_size = sizeof alone[j];
                ck_assert_int_eq(eevp_spec_verify(sp, 1, &seqs[j], rows + r * D, D, &alone[j]),
                                 EEVP_OK);
                r += nd[j] + 1;
            }
        } else {
            for (j = 0; j < 4; j++)
                both[j].struct_size = sizeof both[j];
            ck_assert_int_eq(eevp_spec_verify(sp, 4, seqs, rows, D, both), EEVP_OK);
        }
    }
    for (j = 0; j < 4; j++) {
        ck_assert_int_eq(both[j].status, EEVP_OK);
        ck_assert_int_eq(both[j].n_drafted, nd[j]);
        ck_assert_int_eq(both[j].n_accepted, alone[j].n_accepted);
        ck_assert_int_eq(both[j].token, alone[j].token);
        total_rows += nd[j] + 1;
        total_acc += alone[j].n_accepted;
    }
    /* slot 3's 7 drafts: the fifth is wrong unless it happens to be right */
    ck_assert_int_le(alone[2].n_accepted, 7);
    ck_assert_int_eq(eevp_spec_stats_get(sp, &st), EEVP_OK);
    ck_assert_int_eq(st.rounds, 8);
    ck_assert_int_eq(st.drafted, 2 * (3 + 0 + 7 + 1));
    ck_assert_int_eq(st.verify_rows, 2 * total_rows);
    ck_assert_int_eq(st.accepted, 2 * total_acc);
    ck_assert_int_eq(st.emitted, 2 * total_acc + 8);
    ck_assert_int_eq(eevp_spec_layer_stats(sp, drafted, accepted, 6), EEVP_OK);
    ck_assert_int_eq(drafted[0], 2 * 3); /* every round with a draft has one at layer 0 */
    ck_assert_int_le(accepted[0], drafted[0]);
    ck_assert_int_eq(eevp_spec_stats_reset(sp), EEVP_OK);
    ck_assert_int_eq(eevp_spec_stats_get(sp, &st), EEVP_OK);
    ck_assert_int_eq(st.rounds, 0);
    eevp_spec_free(sp);
    eevp_head_free(f->h);
    free(f);
}
END_TEST

/* Drafts from a drafting context: a confident exit becomes a draft (the
 * result's token when greedy), a token that reached the context's last layer
 * (the draft-depth limit) is none. */
START_TEST(test_draft_from_context)
{
    fix *f = malloc(sizeof *f);
    eevp_spec *sp;
    eevp_ctx *ctx = NULL;
    eevp_ctx_options co = EEVP_CTX_OPTIONS_INIT;
    eevp_result r;
    char msg[256];
    int32_t pos = 0, tok = 0, more = 0;
    ck_assert_ptr_nonnull(f);
    fix_init(f, 5u);
    sp = make_spec(f, 1, 2);
    co.n_layers = 2;       /* the draft-depth limit: layer 1 */
    co.first_layer = 0;
    co.k = 16;
    co.threshold = 0.0f;   /* exit at layer 0 unless the top two tie */
    EXPECT(eevp_ctx_create(&ctx, f->h, &co, msg, sizeof msg) == EEVP_OK, "ctx: %s", msg);
    ck_assert_int_eq(eevp_spec_draft(sp, 0, ctx, 0, &tok, &more), EEVP_ESTATE); /* no round */
    ck_assert_int_eq(eevp_spec_round(sp, 0, 1u, 0), EEVP_OK);
    ck_assert_int_eq(eevp_step_begin(ctx, 1, &pos), EEVP_OK);
    ck_assert_int_eq(eevp_step_layer(ctx, 0, f->hid, D, 1, NULL), EEVP_OK);
    memset(&r, 0, sizeof r);
    r.struct_size = sizeof r;
    ck_assert_int_eq(eevp_step_result(ctx, 0, &r), EEVP_OK);
    ck_assert_int_eq(r.reason, EEVP_REASON_CONFIDENT);
    ck_assert_int_eq(eevp_spec_draft(sp, 0, ctx, 0, &tok, &more), EEVP_OK);
    ck_assert_int_eq(tok, r.token);
    ck_assert_int_eq(more, 1);
    ck_assert_int_eq(eevp_step_end(ctx), EEVP_OK);
    /* a sequence resolved at the last layer is not a draft */
    eevp_ctx_free(ctx);
    co.threshold = 0.999f;
    EXPECT(eevp_ctx_create(&ctx, f->h, &co, msg, sizeof msg) == EEVP_OK, "ctx: %s", msg);
    ck_assert_int_eq(eevp_step_begin(ctx, 1, &pos), EEVP_OK);
    ck_assert_int_eq(eevp_step_layer(ctx, 0, f->hid, D, 1, NULL), EEVP_OK);
    ck_assert_int_eq(eevp_step_layer(ctx, 1, f->hid + D, D, 1, NULL), EEVP_OK);
    ck_assert_int_eq(eevp_step_result(ctx, 0, &r), EEVP_OK);
    ck_assert_int_eq(r.reason, EEVP_REASON_LAST_LAYER);
    ck_assert_int_eq(eevp_spec_draft(sp, 0, ctx, 0, &tok, &more), EEVP_OK);
    ck_assert_int_eq(tok, -1);
    ck_assert_int_eq(more, 0);
    ck_assert_int_eq(eevp_spec_n_drafts(sp, 0), 1);
    ck_assert_int_eq(eevp_step_end(ctx), EEVP_OK);
    eevp_ctx_free(ctx);
    eevp_spec_free(sp);
    eevp_head_free(f->h);
    free(f);
}
END_TEST

/* Bad input: a clear error and the state intact. */
START_TEST(test_bad_input)
{
    fix *f = malloc(sizeof *f);
    eevp_spec *sp, *bad = NULL;
    eevp_spec_options o = EEVP_SPEC_OPTIONS_INIT;
    eevp_spec_result res[2];
    float rows[2 * 3 * D];
    const int32_t one = 0, two[2] = {0, 1}, dup[2] = {1, 1}, far = 9;
    char msg[256];
    ck_assert_ptr_nonnull(f);
    fix_init(f, 11u);
    sp = make_spec(f, 2, 2);
    /* options */
    o.max_draft = EEVP_MAX_DRAFT + 1;
    ck_assert_int_eq(eevp_spec_create(&bad, f->h, &o, msg, sizeof msg), EEVP_ERANGE);
    ck_assert_ptr_null(bad);
    ck_assert(strstr(msg, "max_draft") != NULL);
    o = (eevp_spec_options)EEVP_SPEC_OPTIONS_INIT;
    o.top_k = 5; /* greedy */
    ck_assert_int_eq(eevp_spec_create(&bad, f->h, &o, msg, sizeof msg), EEVP_EINVAL);
    o = (eevp_spec_options)EEVP_SPEC_OPTIONS_INIT;
    o.temperature = NAN;
    ck_assert_int_eq(eevp_spec_create(&bad, f->h, &o, msg, sizeof msg), EEVP_ERANGE);
    o = (eevp_spec_options)EEVP_SPEC_OPTIONS_INIT;
    o.max_set = V + 1;
    ck_assert_int_eq(eevp_spec_create(&bad, f->h, &o, msg, sizeof msg), EEVP_ERANGE);
    o = (eevp_spec_options)EEVP_SPEC_OPTIONS_INIT;
    o.struct_size = 4;
    ck_assert_int_eq(eevp_spec_create(&bad, f->h, &o, msg, sizeof msg), EEVP_ESTRUCT);
    ck_assert_int_eq(eevp_spec_create(&bad, NULL, &o, msg, sizeof msg), EEVP_EINVAL);
    /* verification with no round */
    res[0].struct_size = sizeof res[0];
    res[1].struct_size = sizeof res[1];
    memcpy(rows, f->hid, sizeof rows);
    ck_assert_int_eq(eevp_spec_verify(sp, 1, &one, rows, D, res), EEVP_ESTATE);
    ck_assert(strstr(eevp_spec_errmsg(sp), "round") != NULL);
    /* draft ids outside the head, too many drafts, slots out of range */
    ck_assert_int_eq(eevp_spec_round(sp, 0, 1u, 0), EEVP_OK);
    ck_assert_int_eq(eevp_spec_add_draft(sp, 0, OFF - 1, 0), EEVP_ERANGE);
    ck_assert_int_eq(eevp_spec_add_draft(sp, 0, OFF + V, 0), EEVP_ERANGE);
    ck_assert_int_eq(eevp_spec_n_drafts(sp, 0), 0);
    ck_assert_int_eq(eevp_spec_add_draft(sp, 0, f->best[0], 0), EEVP_OK);
    ck_assert_int_eq(eevp_spec_add_draft(sp, 0, f->best[1], 0), EEVP_OK);
    ck_assert_int_eq(eevp_spec_add_draft(sp, 0, f->best[2], 0), EEVP_ERANGE);
    ck_assert_int_eq(eevp_spec_n_drafts(sp, 0), 2);
    ck_assert_int_eq(eevp_spec_round(sp, far, 1u, 0), EEVP_ERANGE);
    ck_assert_int_eq(eevp_spec_round(sp, 0, 1u, -1), EEVP_ERANGE);
    ck_assert_int_eq(eevp_spec_n_drafts(sp, 0), 2);
    /* a repeated slot, a slot without a round: nothing changes */
    ck_assert_int_eq(eevp_spec_round(sp, 1, 2u, 0), EEVP_OK);
    ck_assert_int_eq(eevp_spec_verify(sp, 2, dup, rows, D, res), EEVP_EINVAL);
    ck_assert_int_eq(eevp_spec_verify(sp, 1, &far, rows, D, res), EEVP_ERANGE);
    ck_assert_int_eq(eevp_spec_verify(sp, 1, &one, rows, D - 1, res), EEVP_ERANGE);
    res[0].struct_size = 0;
    ck_assert_int_eq(eevp_spec_verify(sp, 1, &one, rows, D, res), EEVP_ESTRUCT);
    res[0].struct_size = sizeof res[0];
    ck_assert_int_eq(eevp_spec_n_drafts(sp, 0), 2);
    /* NaN in slot 0's rows: its error, its round kept; slot 1 verified */
    rows[D + 3] = NAN;
    ck_assert_int_eq(eevp_spec_verify(sp, 2, two, rows, D, res), EEVP_OK);
    ck_assert_int_eq(res[0].status, EEVP_ENONFINITE);
    ck_assert_int_eq(res[0].token, -1);
    ck_assert_int_eq(res[1].status, EEVP_OK);
    ck_assert_int_eq(eevp_spec_n_drafts(sp, 0), 2);
    ck_assert_int_eq(eevp_spec_n_drafts(sp, 1), EEVP_ESTATE);
    /* the retry with finite rows succeeds */
    memcpy(rows, f->hid, 3 * D * sizeof(float));
    ck_assert_int_eq(eevp_spec_verify(sp, 1, &one, rows, D, res), EEVP_OK);
    ck_assert_int_eq(res[0].status, EEVP_OK);
    if (f->clear[0] && f->clear[1] && f->clear[2]) {
        ck_assert_int_eq(res[0].n_accepted, 2);
        ck_assert_int_eq(res[0].token, f->best[2]);
    }
    /* NULLs */
    ck_assert_int_eq(eevp_spec_verify(NULL, 1, &one, rows, D, res), EEVP_EINVAL);
    ck_assert_int_eq(eevp_spec_round(NULL, 0, 0u, 0), EEVP_EINVAL);
    ck_assert_int_eq(eevp_spec_add_draft(NULL, 0, OFF, 0), EEVP_EINVAL);
    ck_assert_int_eq(eevp_spec_n_drafts(NULL, 0), EEVP_EINVAL);
    ck_assert_int_eq(eevp_spec_stats_get(sp, NULL), EEVP_EINVAL);
    ck_assert_int_eq(eevp_spec_memory(NULL), EEVP_EINVAL);
    ck_assert_int_gt(eevp_spec_memory(sp), 0);
    ck_assert_str_eq(eevp_spec_errmsg(NULL), "spec is NULL");
    eevp_spec_free(NULL);
    eevp_spec_free(sp);
    eevp_head_free(f->h);
    free(f);
}
END_TEST

/* Regressions found by tests/fuzz/fuzz_spec.c.  (1) A round may start at any
 * position up to INT32_MAX: its drafts' positions wrap in the random
 * numbers instead of overflowing int32_t (UBSan, make check-asan, fails the
 * old code here).  (2) A head whose tokens are all masked has no
 * distribution: sampling takes the greedy rule's token (the lowest id, as a
 * context does) instead of reading an uninitialised one and emitting an id
 * outside the head.  (3) Finite rows whose logits overflow to +Inf fail
 * their slot with EEVP_ENONFINITE and keep its round, as a context fails
 * such a sequence, instead of emitting an arbitrary token. */
START_TEST(test_regress_positions_masks_overflow)
{
    fix *f = malloc(sizeof *f);
    eevp_spec_options so = EEVP_SPEC_OPTIONS_INIT;
    eevp_head_options ho = EEVP_HEAD_OPTIONS_INIT;
    eevp_ctx_options co = EEVP_CTX_OPTIONS_INIT;
    eevp_spec *sp = NULL;
    eevp_ctx *ctx = NULL;
    eevp_head *h2 = NULL;
    static float bias[V];
    eevp_spec_stats st = {sizeof st, 0, 0, 0, 0, 0, 0, 0};
    char msg[256];
    const int32_t seq = 0;
    int32_t run, p, i, t;
    ck_assert_ptr_nonnull(f);
    fix_init(f, 31u);

    /* (1) sampled drafts and verification at the largest positions */
    so.temperature = 1.0f;
    so.max_set = V;
    so.max_draft = EEVP_MAX_DRAFT;
    EXPECT(eevp_spec_create(&sp, f->h, &so, msg, sizeof msg) == EEVP_OK, "spec: %s", msg);
    co.n_layers = 2;
    co.k = 16;
    co.threshold = 0.0f;
    EXPECT(eevp_ctx_create(&ctx, f->h, &co, msg, sizeof msg) == EEVP_OK, "ctx: %s", msg);
    for (p = 0; p < 2; p++) {
        const int32_t position = p ? INT32_MAX - 3 : INT32_MAX;
        eevp_spec_result res[2];
        int32_t first[2] = {-1, -1};
        for (run = 0; run < 2; run++) {
            int32_t tok = -1, more = 0;
            res[run].struct_size = sizeof res[run];
            ck_assert_int_eq(eevp_spec_round(sp, 0, 77u, position), EEVP_OK);
            ck_assert_int_eq(eevp_step_begin(ctx, 1, NULL), EEVP_OK);
            ck_assert_int_eq(eevp_step_layer(ctx, 0, f->hid, D, 1, NULL), EEVP_OK);
            ck_assert_int_eq(eevp_spec_draft(sp, 0, ctx, 0, &tok, &more), EEVP_OK);
            ck_assert_int_eq(eevp_step_end(ctx), EEVP_OK);
            ck_assert(tok >= OFF && tok < OFF + V);
            first[run] = tok;
            for (i = 1; i < EEVP_MAX_DRAFT; i++)
                ck_assert_int_eq(eevp_spec_add_draft(sp, 0, f->best[i], i % 6), EEVP_OK);
            ck_assert_int_eq(eevp_spec_verify(sp, 1, &seq, f->hid, D, &res[run]), EEVP_OK);
            ck_assert_int_eq(res[run].status, EEVP_OK);
            ck_assert_int_le(res[run].n_accepted, EEVP_MAX_DRAFT);
            ck_assert(res[run].token >= OFF && res[run].token < OFF + V);
        }
        /* the same (seed, key, position) gives the same round */
        ck_assert_int_eq(first[0], first[1]);
        ck_assert_int_eq(res[0].n_accepted, res[1].n_accepted);
        ck_assert_int_eq(res[0].token, res[1].token);
    }
    eevp_ctx_free(ctx);
    eevp_spec_free(sp);

    /* (2) every token masked: the lowest id, greedy and sampled alike */
    for (i = 0; i < V; i++)
        bias[i] = -INFINITY;
    ho.n_vocab = V;
    ho.dim = D;
    ho.weights = f->W;
    ho.vocab_offset = OFF;
    ho.norm = EEVP_NORM_RMS;
    ho.logit_bias = bias;
    EXPECT(eevp_head_create(&h2, &ho, msg, sizeof msg) == EEVP_OK, "head: %s", msg);
    for (t = 0; t < 2; t++) {
        eevp_spec_result res = {sizeof res, 0, 0, 0, 0, 0};
        so = (eevp_spec_options)EEVP_SPEC_OPTIONS_INIT;
        so.temperature = t ? 0.8f : 0.0f;
        EXPECT(eevp_spec_create(&sp, h2, &so, msg, sizeof msg) == EEVP_OK, "spec: %s", msg);
        for (run = 0; run < 20; run++) {
            ck_assert_int_eq(eevp_spec_round(sp, 0, (uint64_t)run, run), EEVP_OK);
            ck_assert_int_eq(eevp_spec_add_draft(sp, 0, OFF, 0), EEVP_OK);
            ck_assert_int_eq(eevp_spec_add_draft(sp, 0, OFF + 3, 0), EEVP_OK);
            ck_assert_int_eq(eevp_spec_verify(sp, 1, &seq, f->hid, D, &res), EEVP_OK);
            ck_assert_int_eq(res.status, EEVP_OK);
            ck_assert_int_eq(res.n_accepted, 1);
            ck_assert_int_eq(res.token, OFF);
        }
        eevp_spec_free(sp);
    }
    eevp_head_free(h2);

    /* (3) logits that overflow: the slot fails and keeps its round */
    ho.logit_bias = NULL;
    ho.logit_scale = 3e38f;
    EXPECT(eevp_head_create(&h2, &ho, msg, sizeof msg) == EEVP_OK, "head: %s", msg);
    for (t = 0; t < 2; t++) {
        eevp_spec_result res = {sizeof res, 0, 0, 0, 0, 0};
        so = (eevp_spec_options)EEVP_SPEC_OPTIONS_INIT;
        so.temperature = t ? 1.0f : 0.0f;
        EXPECT(eevp_spec_create(&sp, h2, &so, msg, sizeof msg) == EEVP_OK, "spec: %s", msg);
        ck_assert_int_eq(eevp_spec_round(sp, 0, 1u, 0), EEVP_OK);
        ck_assert_int_eq(eevp_spec_add_draft(sp, 0, OFF + 1, 0), EEVP_OK);
        ck_assert_int_eq(eevp_spec_verify(sp, 1, &seq, f->hid, D, &res), EEVP_OK);
        ck_assert_int_eq(res.status, EEVP_ENONFINITE);
        ck_assert_int_eq(res.token, -1);
        ck_assert_int_eq(eevp_spec_n_drafts(sp, 0), 1);
        ck_assert_int_eq(eevp_spec_stats_get(sp, &st), EEVP_OK);
        ck_assert_int_eq(st.failed, 1);
        ck_assert_int_eq(st.rounds, 0);
        eevp_spec_free(sp);
    }
    eevp_head_free(h2);
    eevp_head_free(f->h);
    free(f);
}
END_TEST

/* The results array is walked with the caller's struct_size: a caller whose
 * eevp_spec_result is larger (a later layout) gets each outcome in place. */
START_TEST(test_results_stride)
{
    typedef struct bigger {
        eevp_spec_result r;
        int64_t later_member;
    } bigger;
    fix *f = malloc(sizeof *f);
    eevp_spec *sp;
    bigger out[2];
    eevp_spec_result alone;
    const int32_t seqs[2] = {1, 0}, one = 0;
    float rows[3 * D];
    int j;
    ck_assert_ptr_nonnull(f);
    fix_init(f, 21u);
    sp = make_spec(f, 2, 2);
    memcpy(rows, f->hid, 2 * D * sizeof(float));      /* slot 1: one draft */
    memcpy(rows + 2 * D, f->hid, D * sizeof(float));  /* slot 0: none */
    ck_assert_int_eq(eevp_spec_round(sp, 1, 3u, 0), EEVP_OK);
    ck_assert_int_eq(eevp_spec_add_draft(sp, 1, f->best[0], 0), EEVP_OK);
    ck_assert_int_eq(eevp_spec_round(sp, 0, 4u, 0), EEVP_OK);
    for (j = 0; j < 2; j++) {
        memset(&out[j], 0x5a, sizeof out[j]);
        out[j].r.struct_size = sizeof(bigger);
    }
    ck_assert_int_eq(eevp_spec_verify(sp, 2, seqs, rows, D, &out[0].r), EEVP_OK);
    ck_assert_int_eq(out[0].r.status, EEVP_OK);
    ck_assert_int_eq(out[0].r.n_drafted, 1);
    ck_assert_int_eq(out[1].r.status, EEVP_OK);
    ck_assert_int_eq(out[1].r.n_drafted, 0);
    ck_assert_int_eq(out[1].later_member, 0); /* zero-filled up to struct_size */
    ck_assert_int_eq(eevp_spec_round(sp, 0, 4u, 0), EEVP_OK);
    alone.struct_size = sizeof alone;
    ck_assert_int_eq(eevp_spec_verify(sp, 1, &one, rows + 2 * D, D, &alone), EEVP_OK);
    ck_assert_int_eq(alone.token, out[1].r.token);
    /* mixed sizes are refused */
    ck_assert_int_eq(eevp_spec_round(sp, 0, 4u, 0), EEVP_OK);
    ck_assert_int_eq(eevp_spec_round(sp, 1, 3u, 0), EEVP_OK);
    out[0].r.struct_size = sizeof(bigger);
    out[1].r.struct_size = sizeof(eevp_spec_result);
    ck_assert_int_eq(eevp_spec_verify(sp, 2, seqs, rows + D, D, &out[0].r), EEVP_ESTRUCT);
    eevp_spec_free(sp);
    eevp_head_free(f->h);
    free(f);
}
END_TEST

Suite *make_spec_suite(void)
{
    Suite *s = suite_create("spec");
    TCase *tc = tcase_create("spec");
    tcase_add_loop_test(tc, test_greedy_against_reference, 0, 3);
    tcase_add_test(tc, test_batch_independent);
    tcase_add_test(tc, test_draft_from_context);
    tcase_add_test(tc, test_bad_input);
    tcase_add_test(tc, test_results_stride);
    tcase_add_test(tc, test_regress_positions_masks_overflow);
    suite_add_tcase(s, tc);
    return s;
}
