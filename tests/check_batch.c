/* SPDX-License-Identifier: MIT */
/*
 * check_batch.c - batch invariance.
 *
 * A pool of 16 sequences, each with its own hidden states for every layer,
 * built so that they exit at different depths.  The reference for each is
 * its run alone, in a batch of one.  Then batches of 1 to 16 sequences drawn
 * from the pool in shuffled orders, handed over in every row form (all rows,
 * compacted, a shuffled row map):
 *  - with EEVP_CTX_BATCH_INVARIANT, every sequence's result (reason, token,
 *    exit layer, pruned flag, confidence, threshold) and candidate list
 *    (logits and ids) must equal its reference bit for bit;
 *  - without it, the logits of the same decision stay within twice the
 *    rounding bound of a float dot product (ref_bound in ref.h:
 *    4 d eps sum|W_v,c x_c| + 4 eps |z|, each side within it of the exact
 *    value), and a decision may differ only where the reference's own
 *    confidence is within 1e-4 of lambda or its top-2 within that bound.
 * Configurations cover pruned and full-vocabulary decisions, every
 * criterion family, a wide head (SGEMM's blocking at work) and re-pruning;
 * in two of them the sequences share most of their hidden state, so their
 * pruned sets overlap and the step gathers them through the union plan
 * (batch.c), which must give the same bits as the per-sequence blocks; the
 * test looks inside the context to make sure that path really ran.
 */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctx.h" /* white box: did the step use the union plan? */
#include "eevp.h"
#include "ref.h"

Suite *make_batch_suite(void);

enum { POOL = 16, SHUFFLES = 3 };

/* Threaded contexts here share out jobs from 2 x 256 KB of rows on (the
 * library's grain, EEVPI_POOL_GRAIN, is sized for wake-up costs on real
 * heads; these heads are small so that the suite stays fast under
 * sanitizers). */
#define TEST_GRAIN ((int64_t)256 << 10)

static void lower_grain(eevp_ctx *ctx)
{
    if (ctx->pool)
        ctx->pool->grain = TEST_GRAIN;
}

typedef struct bcfg {
    const char *name;
    int V, d, L, f, k, crit, final_, norm, reprune_every;
    float threshold;
    int shared; /* 1: a hidden-state component common to every sequence */
} bcfg;

static const bcfg bcfgs[] = {
    { "top2, pruned", 400, 64, 6, 1, 16, EEVP_CRITERION_TOP2_GAP, EEVP_FINAL_FULL,
      EEVP_NORM_RMS, 0, 0.8f, 0 },
    { "maxprob, no pruning", 300, 48, 5, 0, 0, EEVP_CRITERION_MAX_PROB, EEVP_FINAL_FULL,
      EEVP_NORM_LAYER, 0, 0.95f, 0 },
    { "js, pruned final", 257, 40, 6, 1, 12, EEVP_CRITERION_JS, EEVP_FINAL_PRUNED,
      EEVP_NORM_NONE, 0, 0.97f, 0 },
    { "saturation", 300, 33, 6, 1, 0, EEVP_CRITERION_SATURATION, EEVP_FINAL_FULL,
      EEVP_NORM_RMS, 0, 0.98f, 0 },
    { "entropy, re-pruning", 500, 96, 7, 1, 20, EEVP_CRITERION_ENTROPY, EEVP_FINAL_FULL,
      EEVP_NORM_RMS, 2, 0.97f, 0 },
    { "top2, overlapping sets", 400, 64, 6, 1, 24, EEVP_CRITERION_TOP2_GAP, EEVP_FINAL_PRUNED,
      EEVP_NORM_RMS, 0, 0.9f, 1 },
    { "js, overlapping sets, re-pruning", 300, 40, 7, 1, 16, EEVP_CRITERION_JS,
      EEVP_FINAL_FULL, EEVP_NORM_LAYER, 2, 0.97f, 1 },
};
#define N_BCFG ((int)(sizeof bcfgs / sizeof bcfgs[0]))

typedef struct outcome {
    eevp_result r;
    int32_t n;
    float *z;
    int32_t *ids;
} outcome;

typedef struct fixture {
    const bcfg *c;
    float *W;
    float *hid; /* [L][POOL][d]: layer l, sequence p */
    eevp_head *h;
    ref_head rh;
} fixture;

static void fixture_make(fixture *fx, const bcfg *c, uint32_t seed)
{
    int32_t l, p, j;
    size_t nW = (size_t)c->V * (size_t)c->d;
    fx->c = c;
    fx->W = malloc(nW * sizeof(float));
    fx->hid = malloc((size_t)c->L * POOL * (size_t)c->d * sizeof(float));
    ck_assert(fx->W && fx->hid);
    fill_random(fx->W, (int64_t)nW, &seed, -1, 1);
    /* h_l = noise + a_p (l+1)/L W[target]: sequence p sharpens towards its
     * target at rate a_p (0 for some: they reach the last layer).  With
     * `shared`, a component common to all (one per layer) dominates the
     * noise, so the sets overlap; the targets are then among few tokens. */
    for (l = 0; l < c->L; l++)
        for (j = 0; j < c->d; j++)
            fx->hid[(size_t)l * POOL * c->d + j] = (float)(ref_rand_unit(&seed) - 0.5);
    for (p = POOL - 1; p >= 0; p--) {
        double a = (p % 4) * 0.9;
        int32_t target = (c->shared ? p % 3 * 37 : p * 37) % c->V;
        for (l = 0; l < c->L; l++) {
            float *x = fx->hid + ((size_t)l * POOL + p) * c->d;
            for (j = 0; j < c->d; j++)
                x[j] = (c->shared ? 4.0f * fx->hid[(size_t)l * POOL * c->d + j] : 0.0f) +
                       (float)(ref_rand_unit(&seed) - 0.5) +
                       (float)(a * (l + 1) / c->L * fx->W[(size_t)target * c->d + j] * 3.0);
        }
    }
    {
        eevp_head_options o = EEVP_HEAD_OPTIONS_INIT;
        o.n_vocab = c->V;
        o.dim = c->d;
        o.weights = fx->W;
        o.norm = c->norm;
        o.vocab_offset = 10;
        fx->h = NULL;
        ck_assert_int_eq(eevp_head_create(&fx->h, &o, NULL, 0), EEVP_OK);
        memset(&fx->rh, 0, sizeof fx->rh);
        fx->rh.V = c->V;
        fx->rh.d = c->d;
        fx->rh.stride = c->d;
        fx->rh.offset = 10;
        fx->rh.W = fx->W;
        fx->rh.norm = c->norm;
        fx->rh.eps = (double)o.norm_eps;
        fx->rh.scale = 1;
    }
}

static void fixture_free(fixture *fx)
{
    eevp_head_free(fx->h);
    free(fx->W);
    free(fx->hid);
}

static eevp_ctx *make_ctx_t(const fixture *fx, uint32_t flags, int32_t n_threads)
{
    const bcfg *c = fx->c;
    eevp_ctx_options o = EEVP_CTX_OPTIONS_INIT;
    eevp_ctx *ctx = NULL;
    char msg[160];
    int rc;
    o.n_layers = c->L;
    o.max_batch = POOL;
    o.k = c->k;
    o.first_layer = c->f;
    o.prune_layer = c->k ? 0 : -1;
    o.criterion = c->crit;
    o.final_policy = c->final_;
    o.threshold = c->threshold;
    o.reprune_every = c->reprune_every;
    o.flags = flags;
    o.n_threads = n_threads;
    rc = eevp_ctx_create(&ctx, fx->h, &o, msg, sizeof msg);
    ck_assert_msg(rc == EEVP_OK, "%s: %s", c->name, msg);
    lower_grain(ctx);
    return ctx;
}

static eevp_ctx *make_ctx(const fixture *fx, uint32_t flags)
{
    return make_ctx_t(fx, flags, 0);
}

/* Run one step with members[0..n-1] (pool indices) in batch rows 0..n-1,
 * handing rows over in form `form` (0 all rows, 1 compacted, 2 a shuffled
 * row map); fill out[i] for batch row i. */
static void run_batch(const fixture *fx, eevp_ctx *ctx, const int32_t *members, int32_t n,
                      int form, uint32_t *seed, outcome *out)
{
    const bcfg *c = fx->c;
    const int64_t d = c->d;
    float *rows = malloc((size_t)n * (size_t)d * sizeof(float));
    int32_t map[POOL], l, i, m, cap = c->V;

    ck_assert_ptr_nonnull(rows);
    ck_assert_int_eq(eevp_step_begin(ctx, n, NULL), EEVP_OK);
    for (l = 0; l < c->L && eevp_step_n_running(ctx) > 0; l++) {
        int rc;
        m = 0;
        for (i = 0; i < n; i++) {
            eevp_result r;
            r.struct_size = sizeof r;
            ck_assert_int_eq(eevp_step_result(ctx, i, &r), EEVP_OK);
            if (form == 0 || r.reason == EEVP_REASON_RUNNING)
                map[m++] = i;
        }
        if (form == 2) /* shuffle the row order */
            for (i = m - 1; i > 0; i--) {
                int32_t j = (int32_t)(ref_rand_u32(seed) % (uint32_t)(i + 1)), t = map[i];
                map[i] = map[j];
                map[j] = t;
            }
        for (i = 0; i < m; i++)
            memcpy(rows + (size_t)i * d, fx->hid + ((size_t)l * POOL + members[map[i]]) * d,
                   (size_t)d * sizeof(float));
        rc = eevp_step_layer(ctx, l, rows, d, m, form == 2 ? map : NULL);
        ck_assert_msg(rc == EEVP_OK, "%s: layer %d: %d %s", c->name, l, rc,
                      eevp_ctx_errmsg(ctx));
    }
    ck_assert_int_eq(eevp_step_end(ctx), EEVP_OK);
    for (i = 0; i < n; i++) {
        out[i].r.struct_size = sizeof out[i].r;
        ck_assert_int_eq(eevp_step_result(ctx, i, &out[i].r), EEVP_OK);
        out[i].z = malloc((size_t)cap * sizeof(float));
        out[i].ids = malloc((size_t)cap * sizeof(int32_t));
        ck_assert(out[i].z && out[i].ids);
        ck_assert_int_eq(eevp_step_candidates(ctx, i, cap, out[i].z, out[i].ids, &out[i].n),
                         EEVP_OK);
    }
    free(rows);
}

static void outcome_free(outcome *o, int32_t n)
{
    int32_t i;
    for (i = 0; i < n; i++) {
        free(o[i].z);
        free(o[i].ids);
    }
}

static int bitwise_same(const outcome *a, const outcome *b)
{
    return a->r.reason == b->r.reason && a->r.status == b->r.status &&
           a->r.token == b->r.token && a->r.layer == b->r.layer && a->r.pruned == b->r.pruned &&
           memcmp(&a->r.confidence, &b->r.confidence, sizeof(float)) == 0 &&
           memcmp(&a->r.threshold, &b->r.threshold, sizeof(float)) == 0 && a->n == b->n &&
           memcmp(a->z, b->z, (size_t)a->n * sizeof(float)) == 0 &&
           memcmp(a->ids, b->ids, (size_t)a->n * sizeof(int32_t)) == 0;
}

/* Without the flag: the same decision's logits within twice the bound. */
static int within_bound(const fixture *fx, int32_t p, const outcome *a, const outcome *b)
{
    const bcfg *c = fx->c;
    double *z = malloc((size_t)c->V * sizeof(double)), *as = malloc((size_t)c->V * sizeof(double));
    int32_t j;
    int ok = 1;
    ck_assert(z && as);
    ref_logits(&fx->rh, fx->hid + ((size_t)a->r.layer * POOL + p) * c->d, z, as);
    for (j = 0; j < a->n && ok; j++) {
        int32_t v = a->ids[j] - 10;
        /* Ids may swap places on a tie within the bound: compare by id. */
        int32_t k;
        for (k = 0; k < b->n && b->ids[k] != a->ids[j]; k++)
            ;
        if (k == b->n)
            continue;
        ok = fabs((double)a->z[j] - (double)b->z[k]) <= 2.0 * ref_bound(c->d, as[v], z[v]);
    }
    free(z);
    free(as);
    return ok;
}

/* A decision the rounding may flip: the solo run's confidence within 1e-4
 * of lambda at its deciding layer, or its top-2 logits within the bound. */
static int fragile(const outcome *solo)
{
    return fabsf(solo->r.confidence - solo->r.threshold) < 1e-4f ||
           (solo->n > 1 && fabsf(solo->z[0] - solo->z[1]) < 1e-4f * (1.0f + fabsf(solo->z[0])));
}

/* members[0..POOL-1]: the pool's indices in a random order. */
static void shuffled_members(int32_t *members, uint32_t *seed)
{
    int32_t i;
    for (i = 0; i < POOL; i++)
        members[i] = i;
    for (i = POOL - 1; i > 0; i--) {
        int32_t j = (int32_t)(ref_rand_u32(seed) % (uint32_t)(i + 1)), t = members[i];
        members[i] = members[j];
        members[j] = t;
    }
}

/* got against the sequence's reference run: the same decision with logits
 * within the bound, or a different one only where a tie makes it fragile
 * (counted in *flips). */
static void check_near(const fixture *fx, int32_t member, const outcome *got,
                       const outcome *ref, int32_t n, int64_t *flips)
{
    const char *name = fx->c->name;
    if (got->r.token == ref->r.token && got->r.layer == ref->r.layer &&
        got->r.reason == ref->r.reason) {
        ck_assert_msg(within_bound(fx, member, got, ref),
                      "%s: batch %d: sequence %d's logits beyond the bound", name, n, member);
        ck_assert(fabsf(got->r.confidence - ref->r.confidence) < 1e-3f);
    } else {
        (*flips)++;
        ck_assert_msg(fragile(ref), "%s: batch %d: sequence %d decided differently (token "
                      "%d/%d, layer %d/%d) far from any tie", name, n, member, got->r.token,
                      ref->r.token, got->r.layer, ref->r.layer);
    }
}

START_TEST(test_batch_invariant)
{
    const bcfg *c = &bcfgs[_i];
    fixture fx;
    eevp_ctx *solo_ctx, *inv, *plain;
    outcome solo[POOL], got[POOL];
    uint32_t seed = 2024u + (uint32_t)_i;
    int32_t p, n, s, i, members[POOL];
    int64_t compared = 0, flips = 0, exits[2] = { 0, 0 }, unions = 0, batches = 0;

    fixture_make(&fx, c, 600u + (uint32_t)_i);
    solo_ctx = make_ctx(&fx, EEVP_CTX_BATCH_INVARIANT);
    inv = make_ctx(&fx, EEVP_CTX_BATCH_INVARIANT);
    plain = make_ctx(&fx, 0);
    for (p = 0; p < POOL; p++) {
        run_batch(&fx, solo_ctx, &p, 1, 0, &seed, &solo[p]);
        exits[solo[p].r.reason == EEVP_REASON_CONFIDENT]++;
    }
    /* The pool must mix early exits and last-layer ones to mean anything. */
    ck_assert_msg(exits[0] > 0 && exits[1] > 0, "%s: %lld early, %lld last", c->name,
                  (long long)exits[1], (long long)exits[0]);

    for (n = 1; n <= POOL; n++)
        for (s = 0; s < SHUFFLES; s++) {
            const int form = (n + s) % 3;
            shuffled_members(members, &seed); /* the first n are the batch */
            run_batch(&fx, inv, members, n, form, &seed, got);
            /* Left set until the next step: the last sets' gather. */
            unions += inv->uni_on;
            batches += n >= 2;
            ck_assert(n >= 2 || !inv->uni_on);
            for (i = 0; i < n; i++)
                ck_assert_msg(bitwise_same(&got[i], &solo[members[i]]),
                              "%s: batch %d (shuffle %d, form %d): sequence %d in row %d "
                              "differs from its run alone (token %d/%d, layer %d/%d, c %a/%a)",
                              c->name, n, s, form, members[i], i, got[i].r.token,
                              solo[members[i]].r.token, got[i].r.layer, solo[members[i]].r.layer,
                              (double)got[i].r.confidence,
                              (double)solo[members[i]].r.confidence);
            outcome_free(got, n);

            run_batch(&fx, plain, members, n, form, &seed, got);
            for (i = 0; i < n; i++) {
                const outcome *ref = &solo[members[i]];
                compared++;
                check_near(&fx, members[i], &got[i], ref, n, &flips);
            }
            outcome_free(got, n);
        }
    ck_assert(flips * 10 <= compared);
    if (c->shared)
        ck_assert_msg(unions * 2 >= batches, "%s: the union plan ran in %lld of %lld batches",
                      c->name, (long long)unions, (long long)batches);
    outcome_free(solo, POOL);
    eevp_ctx_free(solo_ctx);
    eevp_ctx_free(inv);
    eevp_ctx_free(plain);
    fixture_free(&fx);
}
END_TEST

/* The flag changes how, not what: one sequence alone gives the same token
 * and exit layer with and without it. */
START_TEST(test_flag_same_decisions_alone)
{
    const bcfg *c = &bcfgs[_i];
    fixture fx;
    eevp_ctx *a, *b;
    outcome oa, ob;
    uint32_t seed = 5;
    int32_t p;

    fixture_make(&fx, c, 900u + (uint32_t)_i);
    a = make_ctx(&fx, EEVP_CTX_BATCH_INVARIANT);
    b = make_ctx(&fx, 0);
    for (p = 0; p < POOL; p++) {
        run_batch(&fx, a, &p, 1, 0, &seed, &oa);
        run_batch(&fx, b, &p, 1, 0, &seed, &ob);
        ck_assert_msg((oa.r.token == ob.r.token && oa.r.layer == ob.r.layer) || fragile(&oa),
                      "%s: sequence %d", c->name, p);
        outcome_free(&oa, 1);
        outcome_free(&ob, 1);
    }
    eevp_ctx_free(a);
    eevp_ctx_free(b);
    fixture_free(&fx);
}
END_TEST

/* Worker threads (n_threads >= 2) on heads large enough for the kernels to
 * share their work out (the library runs small jobs inline): with the
 * batch-invariance flag, two and three threads give the same bits in every
 * batch, with and without the overlap that selects the union plan, and
 * without the flag four threads give those bits too in batches of up to 16
 * (the library's fixed-order kernel for every projection), and so does one
 * thread with the sequence alone; in larger batches (SGEMM for the full
 * projections without the flag) the decisions agree and the logits stay
 * within the rounding bound. */
static const bcfg tcfgs[] = {
    { "threads: top2, pruned", 3000, 128, 5, 1, 256, EEVP_CRITERION_TOP2_GAP,
      EEVP_FINAL_PRUNED, EEVP_NORM_RMS, 0, 0.8f, 0 },
    { "threads: overlapping sets, re-pruning", 2500, 128, 6, 1, 192, EEVP_CRITERION_ENTROPY,
      EEVP_FINAL_FULL, EEVP_NORM_RMS, 2, 0.97f, 1 },
    /* One sequence's set alone is shared out (per-sequence kernel). */
    { "threads: large sets", 2048, 256, 4, 1, 512, EEVP_CRITERION_TOP2_GAP, EEVP_FINAL_PRUNED,
      EEVP_NORM_RMS, 0, 0.9f, 0 },
    { "threads: no pruning", 3000, 80, 4, 0, 0, EEVP_CRITERION_MAX_PROB, EEVP_FINAL_FULL,
      EEVP_NORM_LAYER, 0, 0.95f, 0 },
};

START_TEST(test_threads_same_bits)
{
    const bcfg *c = &tcfgs[_i];
    fixture fx;
    eevp_ctx *one, *two, *three, *four;
    outcome solo[POOL], got2[POOL], got3[POOL], got4[POOL];
    uint32_t seed = 4242u + (uint32_t)_i;
    int32_t p, n, i, members[POOL];
    int64_t compared = 0, flips = 0;

    /* Large enough to be shared out: the full head, and (pruned) the sets
     * of a batch of 6. */
    ck_assert((int64_t)c->V * c->d * 4 >= 2 * TEST_GRAIN);
    ck_assert(c->k == 0 || (int64_t)6 * c->k * c->d * 4 >= 2 * TEST_GRAIN);
    fixture_make(&fx, c, 1300u + (uint32_t)_i);
    one = make_ctx_t(&fx, 0, 1);
    two = make_ctx_t(&fx, EEVP_CTX_BATCH_INVARIANT, 2);
    three = make_ctx_t(&fx, EEVP_CTX_BATCH_INVARIANT, 3);
    four = make_ctx_t(&fx, 0, 4);
    ck_assert_ptr_null(one->pool);
    ck_assert_ptr_nonnull(two->pool);
    for (p = 0; p < POOL; p++)
        run_batch(&fx, one, &p, 1, 0, &seed, &solo[p]);
    for (n = 1; n <= POOL; n += 3) {
        shuffled_members(members, &seed);
        run_batch(&fx, two, members, n, n % 3, &seed, got2);
        run_batch(&fx, three, members, n, (n + 1) % 3, &seed, got3);
        run_batch(&fx, four, members, n, (n + 2) % 3, &seed, got4);
        for (i = 0; i < n; i++) {
            const outcome *ref = &solo[members[i]];
            ck_assert_msg(bitwise_same(&got2[i], &got3[i]),
                          "%s: batch %d: sequence %d differs between 2 and 3 threads",
                          c->name, n, members[i]);
            /* Up to 16 rows every path is the fixed-order kernel: the flag
             * and the threads change nothing, not even against one thread
             * and the sequence alone. */
            if (n <= EEVPI_FIXED_MAX) {
                ck_assert_msg(bitwise_same(&got2[i], &got4[i]),
                              "%s: batch %d: sequence %d differs between 2 and 4 threads",
                              c->name, n, members[i]);
                ck_assert_msg(bitwise_same(&got4[i], ref),
                              "%s: batch %d: sequence %d differs from itself alone",
                              c->name, n, members[i]);
            }
            compared++;
            check_near(&fx, members[i], &got3[i], ref, n, &flips);
        }
        outcome_free(got2, n);
        outcome_free(got3, n);
        outcome_free(got4, n);
    }
    ck_assert(flips * 10 <= compared);
    /* Alone, and as row 1 of a batch of 2, with the flag. */
    for (p = 0; p < 3; p++) {
        outcome a;
        run_batch(&fx, three, &p, 1, 0, &seed, &a);
        members[0] = (p + 1) % POOL;
        members[1] = p;
        run_batch(&fx, three, members, 2, 1, &seed, got3);
        ck_assert(bitwise_same(&a, &got3[1]));
        outcome_free(&a, 1);
        outcome_free(got3, 2);
    }
    outcome_free(solo, POOL);
    eevp_ctx_free(one);
    eevp_ctx_free(two);
    eevp_ctx_free(three);
    eevp_ctx_free(four);
    fixture_free(&fx);
}
END_TEST

/* Screened pruning (EEVP_CTX_SCREEN) on a head with an int8 copy.  With
 * m*K >= V every row is screened, so the sets are the exact top-K: the
 * results must be those of the plain flow computed with the same kernels
 * (batch invariance and worker threads: the library's fixed-order kernel
 * for the full projection, as the screen's exact rows).  With m = 2 the
 * set is an approximation: on these structured states the exact top-1 must
 * still be inside it and the decisions mostly agree.  The int8 pass shared
 * out between threads gives the same sets.  A checked pruning layer is
 * decided on the set. */
static eevp_head *screen_head(const fixture *fx, int32_t mult)
{
    eevp_head_options o = EEVP_HEAD_OPTIONS_INIT;
    eevp_head *h = NULL;
    o.n_vocab = fx->c->V;
    o.dim = fx->c->d;
    o.weights = fx->W;
    o.norm = fx->c->norm;
    o.vocab_offset = 10;
    o.screen_mult = mult;
    ck_assert_int_eq(eevp_head_create(&h, &o, NULL, 0), EEVP_OK);
    return h;
}

static eevp_ctx *screen_ctx(const fixture *fx, const eevp_head *h, uint32_t flags,
                            int32_t n_threads, int32_t prune_layer)
{
    const bcfg *c = fx->c;
    eevp_ctx_options o = EEVP_CTX_OPTIONS_INIT;
    eevp_ctx *ctx = NULL;
    char msg[200];
    o.n_layers = c->L;
    o.max_batch = POOL;
    o.k = c->k;
    o.first_layer = c->f;
    o.prune_layer = prune_layer;
    o.criterion = c->crit;
    o.final_policy = c->final_;
    o.threshold = c->threshold;
    o.flags = flags;
    o.n_threads = n_threads;
    ck_assert_msg(eevp_ctx_create(&ctx, h, &o, msg, sizeof msg) == EEVP_OK, "%s", msg);
    lower_grain(ctx);
    return ctx;
}

START_TEST(test_screened_flow)
{
    static const bcfg c = { "screened", 4096, 128, 6, 2, 64, EEVP_CRITERION_TOP2_GAP,
                            EEVP_FINAL_PRUNED, EEVP_NORM_RMS, 0, 0.8f, 0 };
    const uint32_t BI = EEVP_CTX_BATCH_INVARIANT, SC = EEVP_CTX_SCREEN;
    fixture fx;
    eevp_head *all, *two;
    eevp_ctx *exact, *scr, *scr_t, *approx, *approx_t, *checked;
    outcome a[POOL], b[POOL], e[POOL];
    uint32_t seed = 77;
    int32_t p, n, i, members[POOL], agree = 0, total = 0;

    fixture_make(&fx, &c, 2024u);
    /* The int8 copy (one byte a weight) is large enough to be shared out. */
    ck_assert((int64_t)c.V * c.d >= 2 * TEST_GRAIN);
    all = screen_head(&fx, 64); /* 64 * 64 >= 4096: every row screened */
    two = screen_head(&fx, 2);
    exact = screen_ctx(&fx, fx.h, BI, 2, 0);
    scr = screen_ctx(&fx, all, BI | SC, 0, 0);
    scr_t = screen_ctx(&fx, all, BI | SC, 2, 0);
    approx = screen_ctx(&fx, two, SC, 0, 0);
    approx_t = screen_ctx(&fx, two, SC, 3, 0);
    checked = screen_ctx(&fx, two, SC, 0, 2); /* p = f = 2: decided on the set */

    for (p = 0; p < POOL; p++) {
        run_batch(&fx, exact, &p, 1, 0, &seed, &e[p]);
        run_batch(&fx, scr, &p, 1, 0, &seed, &a[p]);
        ck_assert_msg(bitwise_same(&a[p], &e[p]), "sequence %d: all screened != exact", p);
        outcome_free(&a[p], 1);
    }
    for (n = 2; n <= POOL; n += 7) {
        for (i = 0; i < n; i++)
            members[i] = (i * 5 + n) % POOL;
        run_batch(&fx, scr_t, members, n, n % 3, &seed, a);
        for (i = 0; i < n; i++)
            ck_assert_msg(bitwise_same(&a[i], &e[members[i]]),
                          "batch %d, threads: sequence %d: all screened != exact", n, members[i]);
        outcome_free(a, n);
        run_batch(&fx, approx, members, n, 0, &seed, a);
        run_batch(&fx, approx_t, members, n, 1, &seed, b);
        for (i = 0; i < n; i++) {
            static double z[4096], as[4096];
            int32_t v, best = 0, j, found = 0;
            ck_assert_msg(bitwise_same(&a[i], &b[i]), "batch %d: threads changed sequence %d",
                          n, members[i]);
            agree += a[i].r.token == e[members[i]].r.token;
            total++;
            /* The exact top-1 of the pruning layer (0) is in the set. */
            ref_logits(&fx.rh, fx.hid + (size_t)members[i] * c.d, z, as);
            for (v = 1; v < c.V; v++)
                if (z[v] > z[best])
                    best = v;
            for (j = 0; j < a[i].n; j++)
                found += a[i].ids[j] == best + 10;
            ck_assert_msg(!a[i].r.pruned || found == 1, "batch %d: sequence %d: exact top-1 %d "
                          "not screened", n, members[i], best + 10);
        }
        outcome_free(a, n);
        outcome_free(b, n);
    }
    ck_assert_msg(agree * 10 >= total * 9, "m = 2: %d of %d tokens agree", agree, total);
    for (p = 0; p < POOL; p++) {
        run_batch(&fx, checked, &p, 1, 0, &seed, &a[p]);
        ck_assert(a[p].r.reason == EEVP_REASON_CONFIDENT ||
                  a[p].r.reason == EEVP_REASON_LAST_LAYER);
        ck_assert(a[p].r.pruned == 1 && a[p].n == c.k);
        outcome_free(&a[p], 1);
    }
    outcome_free(e, POOL);
    eevp_ctx_free(exact);
    eevp_ctx_free(scr);
    eevp_ctx_free(scr_t);
    eevp_ctx_free(approx);
    eevp_ctx_free(approx_t);
    eevp_ctx_free(checked);
    eevp_head_free(all);
    eevp_head_free(two);
    fixture_free(&fx);
}
END_TEST

/* The combinations EEVP_CTX_SCREEN refuses, each with a message. */
START_TEST(test_screened_options)
{
    static const bcfg c = { "screened options", 300, 16, 4, 1, 8, EEVP_CRITERION_TOP2_GAP,
                            EEVP_FINAL_FULL, EEVP_NORM_RMS, 0, 0.8f, 0 };
    static const int32_t ids[2] = { 11, 12 };
    fixture fx;
    eevp_head *sh;
    int i;
    fixture_make(&fx, &c, 5u);
    sh = screen_head(&fx, 4);
    for (i = 0; i < 5; i++) {
        eevp_ctx_options o = EEVP_CTX_OPTIONS_INIT;
        const eevp_head *h = sh;
        eevp_ctx *ctx = (eevp_ctx *)&fx;
        char msg[200] = "";
        o.n_layers = 4;
        o.k = 8;
        o.flags = EEVP_CTX_SCREEN;
        switch (i) {
        case 0: h = fx.h; break; /* no int8 copy */
        case 1: o.always_ids = ids; o.n_always = 2; break;
        case 2: o.static_mode = EEVP_STATIC_UNION; o.static_ids = ids; o.n_static = 2; break;
        case 3: o.adaptive_mass = 0.5f; o.k_min = 2; break;
        default: break; /* valid */
        }
        if (i < 4) {
            ck_assert_int_eq(eevp_ctx_create(&ctx, h, &o, msg, sizeof msg), EEVP_EINVAL);
            ck_assert_ptr_null(ctx);
            ck_assert(strstr(msg, "EEVP_CTX_SCREEN") != NULL);
        } else {
            ck_assert_int_eq(eevp_ctx_create(&ctx, h, &o, msg, sizeof msg), EEVP_OK);
            eevp_ctx_free(ctx);
        }
    }
    eevp_head_free(sh);
    fixture_free(&fx);
}
END_TEST

Suite *make_batch_suite(void)
{
    Suite *s = suite_create("batch");
    TCase *tc = tcase_create("invariance");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_batch_invariant, 0, N_BCFG);
    tcase_add_loop_test(tc, test_flag_same_decisions_alone, 0, N_BCFG);
    tcase_add_loop_test(tc, test_threads_same_bits, 0,
                        (int)(sizeof tcfgs / sizeof tcfgs[0]));
    tcase_add_test(tc, test_screened_flow);
    tcase_add_test(tc, test_screened_options);
    suite_add_tcase(s, tc);
    return s;
}
