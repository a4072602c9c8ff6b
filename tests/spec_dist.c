/* SPDX-License-Identifier: MIT */
/*
 * spec_dist.c - speculative sampling keeps the full head's distribution
 * exactly (make check-spec-dist).
 *
 * A synthetic head (V = 8, d = 6).  Position p has a final hidden state H[p]
 * and an early one G[p], drawn independently, so the drafts' distribution q
 * (the pruned set of K = 3 at the early state, softmax at T) differs from
 * the full head's p and misses likely tokens.  The states do not depend on
 * the tokens, so the first two emitted tokens must follow p(H[0]) x p(H[1]).
 * Every sample starts a round at position 0 with up to 2 drafts from a
 * drafting context (pruned at layer 0, a draft when confident at layer 1,
 * layer 2 its depth limit); when the first round emits only one token, a second
 * round at position 1 gives the second.
 *
 * Chi-square tests: the first token's marginal and the joint law of the
 * first two, N = 400000 samples each configuration, cells with an expected
 * count under 5 pooled, critical values at alpha = 1e-3 (Wilson-Hilferty).
 * Power: shifting 0.01 of probability between two tokens with 0.05 <= p <=
 * 0.5 adds at least N * 0.01^2 * (1/0.5 + 1/0.5) = 160 to the expected
 * statistic, against critical values of 24.3 (df 7) and at most 104 (df <=
 * 63): such a change fails the test.  Configurations: T = 0.8; and T = 1
 * with top_k = 5 and top_p = 0.9 (the target then is the truncated p).
 *
 * Built a second time with -DEEVPI_TEST_MUTATE_ACCEPT (spec.c then accepts a
 * draft with probability p(x) instead of min(1, p(x)/q(x))): that build must
 * fail, which the Makefile checks.  Prints "N passed, M failed".
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eevp.h"
#include "ref.h"

enum { V = 8, D = 6, NPOS = 4, K = 3 };
#define N_SAMPLES 400000L

static float W[V * D], H[NPOS * D], G[NPOS * D];

/* The target: softmax(z / T), truncated to the top_k and the smallest top
 * set of mass >= top_p (ties by lower id), renormalised. */
static void target(const ref_head *rh, const float *h, double T, int top_k, double top_p,
                   double *p)
{
    double z[V], as[V], sum = 0, mass = 0, mx = -INFINITY;
    int order[V], i, j, keep = V;
    ref_logits(rh, h, z, as);
    for (i = 0; i < V; i++)
        mx = z[i] > mx ? z[i] : mx;
    for (i = 0; i < V; i++)
        sum += p[i] = exp((z[i] - mx) / T);
    for (i = 0; i < V; i++)
        p[i] /= sum;
    for (i = 0; i < V; i++)
        order[i] = i;
    for (i = 1; i < V; i++) /* insertion sort: z descending, id ascending */
        for (j = i; j > 0 && (z[order[j]] > z[order[j - 1]]); j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    if (top_k > 0 && top_k < keep)
        keep = top_k;
    for (i = 0; i < keep; i++) {
        mass += p[order[i]];
        if (mass >= top_p) {
            keep = i + 1;
            break;
        }
    }
    sum = 0;
    for (i = keep; i < V; i++)
        p[order[i]] = 0;
    for (i = 0; i < keep; i++)
        sum += p[order[i]];
    for (i = 0; i < V; i++)
        p[i] /= sum;
}

static double chi2_critical(int df)
{
    const double z = 3.090232; /* upper 1e-3 point of the normal */
    double a = 2.0 / (9.0 * df);
    return df * pow(1.0 - a + z * sqrt(a), 3.0);
}

/* Chi-square of counts against probabilities (n cells), pooling cells with
 * an expected count under 5; returns the statistic, *df the degrees. */
static double chi2(const long *count, const double *prob, int n, long total, int *df)
{
    double stat = 0, pool_e = 0, pool_o = 0;
    int i, cells = 0;
    for (i = 0; i < n; i++) {
        double e = prob[i] * (double)total;
        if (e < 5.0) {
            pool_e += e;
            pool_o += (double)count[i];
            continue;
        }
        stat += ((double)count[i] - e) * ((double)count[i] - e) / e;
        cells++;
    }
    if (pool_e >= 5.0) {
        stat += (pool_o - pool_e) * (pool_o - pool_e) / pool_e;
        cells++;
    } else if (pool_o > 0 && pool_e == 0) {
        stat = INFINITY; /* tokens of probability 0 were emitted */
    }
    *df = cells - 1;
    return stat;
}

static void fail_at(int line, const eevp_spec *sp, const eevp_ctx *ctx)
{
    fprintf(stderr, "spec_dist.c:%d: a call failed: %s / %s\n", line, eevp_spec_errmsg(sp),
            eevp_ctx_errmsg(ctx));
    exit(2);
}

/* One round for slot 0 at `pos` with up to two drafts from ctx at G[pos],
 * G[pos+1] and the rows H[pos ..]: writes the emitted tokens (the accepted
 * drafts, then the correction or bonus) to em, returns how many. */
static int run_round(eevp_spec *sp, eevp_ctx *ctx, uint64_t key, int32_t pos, int32_t *em)
{
    float rows[3 * D];
    eevp_spec_result res;
    int32_t i, n = 0, tok, more = 1, seq = 0, drafts[2];
    if (eevp_spec_round(sp, 0, key, pos) != EEVP_OK)
        fail_at(__LINE__, sp, ctx);
    for (i = 0; i < 2 && more; i++) {
        int32_t p = pos + i;
        int32_t l;
        if (eevp_step_begin(ctx, 1, &p) != EEVP_OK)
            fail_at(__LINE__, sp, ctx);
        /* the early state at every layer of the drafting context: pruned at
         * layer 0, checked at 1 (the draft), 2 is the depth limit */
        for (l = 0; l < 3 && eevp_step_n_running(ctx) > 0; l++)
            if (eevp_step_layer(ctx, l, G + (size_t)p * D, D, 1, NULL) != EEVP_OK)
                fail_at(__LINE__, sp, ctx);
        if (eevp_spec_draft(sp, 0, ctx, 0, &tok, &more) != EEVP_OK ||
            eevp_step_end(ctx) != EEVP_OK)
            fail_at(__LINE__, sp, ctx);
        if (tok < 0)
            break;
        drafts[n++] = tok;
    }
    for (i = 0; i <= n; i++)
        memcpy(rows + (size_t)i * D, H + (size_t)(pos + i) * D, D * sizeof(float));
    res.struct_size = sizeof res;
    if (eevp_spec_verify(sp, 1, &seq, rows, D, &res) != EEVP_OK || res.status != EEVP_OK)
        fail_at(__LINE__, sp, ctx);
    for (i = 0; i < res.n_accepted; i++)
        em[i] = drafts[i];
    em[res.n_accepted] = res.token;
    return res.n_accepted + 1;
}

int main(void)
{
    static const struct { double T; int top_k; double top_p; } cfgs[2] = {
        {0.8, 0, 1.0}, {1.0, 5, 0.9}};
    uint32_t seed = 20261205u;
    eevp_head *h = NULL;
    eevp_head_options ho = EEVP_HEAD_OPTIONS_INIT;
    ref_head rh;
    char msg[256];
    int c, passed = 0, failed = 0;

    fill_random(W, V * D, &seed, -1.5f, 1.5f);
    fill_random(H, NPOS * D, &seed, -2.0f, 2.0f);
    fill_random(G, NPOS * D, &seed, -2.0f, 2.0f);
    ho.n_vocab = V;
    ho.dim = D;
    ho.weights = W;
    if (eevp_head_create(&h, &ho, msg, sizeof msg) != EEVP_OK) {
        fprintf(stderr, "head: %s\n", msg);
        return 2;
    }
    memset(&rh, 0, sizeof rh);
    rh.V = V;
    rh.d = D;
    rh.stride = D;
    rh.W = W;
    rh.norm = EEVP_NORM_NONE;
    rh.scale = 1.0;
    for (c = 0; c < 2; c++) {
        eevp_spec_options so = EEVP_SPEC_OPTIONS_INIT;
        eevp_ctx_options co = EEVP_CTX_OPTIONS_INIT;
        eevp_spec *sp = NULL;
        eevp_ctx *ctx = NULL;
        double p0[V], p1[V], pj[V * V];
        long first[V] = {0}, joint[V * V] = {0}, s;
        int i, j, df1, dfj;
        double x1, xj, crit1, critj;

        so.max_draft = 2;
        so.max_set = K;
        so.temperature = (float)cfgs[c].T;
        so.top_k = cfgs[c].top_k;
        so.top_p = (float)cfgs[c].top_p;
        so.seed = 7u + (uint64_t)c;
        co.n_layers = 3;
        co.prune_layer = 0;
        co.first_layer = 1;
        co.k = K;
        co.threshold = 0.0f;
        if (eevp_spec_create(&sp, h, &so, msg, sizeof msg) != EEVP_OK ||
            eevp_ctx_create(&ctx, h, &co, msg, sizeof msg) != EEVP_OK) {
            fprintf(stderr, "create: %s\n", msg);
            return 2;
        }
        target(&rh, H, cfgs[c].T, cfgs[c].top_k, cfgs[c].top_p, p0);
        target(&rh, H + D, cfgs[c].T, cfgs[c].top_k, cfgs[c].top_p, p1);
        for (i = 0; i < V; i++)
            for (j = 0; j < V; j++)
                pj[i * V + j] = p0[i] * p1[j];
        for (s = 0; s < N_SAMPLES; s++) {
            int32_t em[6];
            /* the first round emits 1..3 tokens; after a single one, a
             * second round from position 1 gives the next */
            if (run_round(sp, ctx, (uint64_t)s, 0, em) < 2)
                run_round(sp, ctx, (uint64_t)s, 1, em + 1);
            first[em[0]]++;
            joint[em[0] * V + em[1]]++;
        }
        x1 = chi2(first, p0, V, N_SAMPLES, &df1);
        xj = chi2(joint, pj, V * V, N_SAMPLES, &dfj);
        crit1 = chi2_critical(df1);
        critj = chi2_critical(dfj);
        printf("T %.1f top_k %d top_p %.2f: N %ld; first token chi2 %.1f (df %d, critical %.1f); "
               "first two chi2 %.1f (df %d, critical %.1f)\n", cfgs[c].T, cfgs[c].top_k,
               cfgs[c].top_p, N_SAMPLES, x1, df1, crit1, xj, dfj, critj);
        if (x1 <= crit1)
            passed++;
        else
            failed++, printf("FAIL: the first token's law differs from the full head's\n");
        if (xj <= critj)
            passed++;
        else
            failed++, printf("FAIL: the first two tokens' joint law differs\n");
        eevp_ctx_free(ctx);
        eevp_spec_free(sp);
    }
    eevp_head_free(h);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
