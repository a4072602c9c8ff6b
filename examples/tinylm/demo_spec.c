/* SPDX-License-Identifier: MIT */
/*
 * demo_spec.c - the demo's lossless part (tinylm demo, or tinylm demo-spec
 * alone): the spec mode against full depth, free-running from the held-out
 * prompts, greedy and sampled.  The drafting settings are chosen on
 * validation prompts, one parameter at a time (depth limit, maximum draft
 * length, threshold, drafting policy: K, full vocabulary, or a static list
 * of frequent tokens alone), which also gives the trade-off curves; the test
 * prompts then run every mode twice, interleaved, and each counts its faster
 * run (the machine is shared).
 */
#include "runtime.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { SEARCH_PROMPTS = 16 };

typedef struct spec_point {
    spec_cfg cfg;
    double speedup, mean_accepted, acceptance;
} spec_point;

static double full_time(runner *r, const int32_t *prompts, int32_t np, int32_t *out)
{
    decoder d;
    dec_cfg fc;
    double t;
    memset(&fc, 0, sizeof fc);
    fc.mode = MODE_FULL;
    decoder_open(&d, r, &fc);
    t = freerun(&d, prompts, np, FREERUN_PROMPT_TOKENS + 1, FREERUN_NEW, out);
    decoder_close(&d);
    return t;
}

static spec_point measure_point(runner *r, const spec_cfg *cfg, const int32_t *prompts,
                                int32_t np, double t_full, int32_t *out)
{
    spec_dec s;
    spec_point pt;
    double t;
    spec_open(&s, r, cfg);
    t = spec_freerun(&s, prompts, np, FREERUN_PROMPT_TOKENS + 1, FREERUN_NEW, out);
    pt.cfg = *cfg;
    pt.speedup = t_full / t;
    pt.mean_accepted = s.rounds ? (double)s.accepted / (double)s.rounds : 0;
    pt.acceptance = s.drafted ? (double)s.accepted / (double)s.drafted : 0;
    spec_close(&s);
    return pt;
}

static const char *policy_name(const spec_cfg *c)
{
    return c->policy ? "static list" : c->k > 0 ? "pruned" : "full vocab";
}

static void print_point(const char *param, const spec_point *p)
{
    printf("  %-10s %-11s %4d %5d %5d %5d %9.3f %10.3f %11.3f %8.3f\n", param,
           policy_name(&p->cfg), (int)p->cfg.k, (int)p->cfg.first, (int)p->cfg.depth_limit,
           (int)p->cfg.max_draft, (double)p->cfg.threshold, p->acceptance, p->mean_accepted,
           p->speedup);
}

/* Measure c and keep it in *bp when it is faster. */
static void try_point(runner *r, const spec_cfg *c, const char *label, const int32_t *prompts,
                      double t_full, int32_t *out, spec_point *bp)
{
    spec_point p = measure_point(r, c, prompts, SEARCH_PROMPTS, t_full, out);
    print_point(label, &p);
    if (p.speedup > bp->speedup)
        *bp = p;
}

void run_demo_spec(runner *r, const opts *o)
{
    static const float thr[] = {0.02f, 0.05f, 0.1f, 0.2f, 0.4f};
    static const int32_t drafts[] = {2, 3, 4, 5, 7};
    const int32_t L = r->L, np = FREERUN_PROMPTS, nn = FREERUN_NEW;
    int32_t *val = freerun_prompts(r, o->wordnet, 1, SEARCH_PROMPTS, FREERUN_PROMPT_TOKENS);
    int32_t *test = freerun_prompts(r, o->wordnet, 2, np, FREERUN_PROMPT_TOKENS);
    int32_t *ref = xmalloc((size_t)np * nn * sizeof(int32_t));
    int32_t *got = xmalloc((size_t)np * nn * sizeof(int32_t));
    eevp_ctx_options stat = EEVP_CTX_OPTIONS_INIT;
    stream train = {0};
    spec_cfg best;
    spec_point bp;
    double t_full_val;
    int32_t i, lim;

    /* 1. the drafting settings, on validation prompts */
    load_split(r, o->wordnet, 0, 0, &train);
    stat.static_mode = EEVP_STATIC_ONLY;
    stat.n_static = 256;
    stat.static_ids = frequent_ids(&train, r->V, 256);
    memset(&best, 0, sizeof best);
    best.k = o->k;
    best.first = 2;
    best.depth_limit = L - 2;
    best.max_draft = 4;
    best.threshold = 0.1f;
    best.seed = o->seed;
    t_full_val = full_time(r, val, SEARCH_PROMPTS, got);
    {
        double t2 = full_time(r, val, SEARCH_PROMPTS, got);
        t_full_val = t2 < t_full_val ? t2 : t_full_val;
    }
    printf("\nlossless early exit (spec): drafting settings on %d validation prompts, %d tokens "
           "each, one parameter at a time (speedup: full depth's time over spec's)\n",
           SEARCH_PROMPTS, nn);
    printf("  %-10s %-11s %4s %5s %5s %5s %9s %10s %11s %8s\n", "varied", "policy", "K", "first",
           "limit", "draft", "threshold", "acceptance", "mean_accept", "speedup");
    bp = measure_point(r, &best, val, SEARCH_PROMPTS, t_full_val, got);
    print_point("start", &bp);
    for (lim = 2; lim <= L - 1; lim++) {
        spec_cfg c = bp.cfg;
        if (lim < c.first || lim == bp.cfg.depth_limit)
            continue;
        c.depth_limit = lim;
        try_point(r, &c, "limit", val, t_full_val, got, &bp);
    }
    for (i = 0; i < (int32_t)(sizeof drafts / sizeof *drafts); i++) {
        spec_cfg c = bp.cfg;
        if (drafts[i] == c.max_draft)
            continue;
        c.max_draft = drafts[i];
        try_point(r, &c, "max_draft", val, t_full_val, got, &bp);
    }
    for (i = 0; i < (int32_t)(sizeof thr / sizeof *thr); i++) {
        spec_cfg c = bp.cfg;
        if (thr[i] == c.threshold)
            continue;
        c.threshold = thr[i];
        try_point(r, &c, "threshold", val, t_full_val, got, &bp);
    }
    for (i = 0; i < 4; i++) {
        spec_cfg c = bp.cfg;
        c.policy = NULL;
        c.k = i == 0 ? 16 : i == 1 ? 256 : 0;
        if (i == 3) {
            c.policy = &stat; /* the static list alone: no full projection */
            c.k = 0;
            c.first = c.first < 1 ? 1 : c.first;
        }
        if (c.policy == bp.cfg.policy && c.k == bp.cfg.k)
            continue;
        try_point(r, &c, "policy", val, t_full_val, got, &bp);
    }
    best = bp.cfg;
    printf("  chosen: %s, K %d, first checked layer %d, depth limit %d, max_draft %d, threshold "
           "%.3f\n", policy_name(&best), (int)best.k, (int)best.first, (int)best.depth_limit,
           (int)best.max_draft, (double)best.threshold);

    /* 2. the test prompts, greedy: full depth and spec twice, interleaved */
    {
        spec_dec s;
        double tf[2], ts[2], t_f, t_s, same = 0;
        int64_t j, rounds;
        spec_open(&s, r, &best);
        for (i = 0; i < 2; i++) {
            tf[i] = full_time(r, test, np, ref);
            spec_reset_stats(&s);
            ts[i] = spec_freerun(&s, test, np, FREERUN_PROMPT_TOKENS + 1, nn, got);
        }
        for (j = 0; j < (int64_t)np * nn; j++)
            same += ref[j] == got[j];
        t_f = tf[0] < tf[1] ? tf[0] : tf[1];
        t_s = ts[0] < ts[1] ? ts[0] : ts[1];
        rounds = s.rounds;
        printf("\nspec on %d held-out prompts (BOS + the first %d tokens of test lines 0..%d), %d "
               "greedy tokens each:\n", np, FREERUN_PROMPT_TOKENS, np - 1, nn);
        printf("  full depth %.1f tokens/s, spec %.1f tokens/s; %lld rounds, %.2f tokens per "
               "round\n", (double)np * nn / t_f, (double)np * nn / t_s, (long long)rounds,
               (double)s.emitted / (double)rounds);
        printf("  per round (us, second run): drafting %.0f, completion %.0f, verification %.0f; "
               "full depth per token %.0f\n", 1e6 * s.t_draft / (double)rounds,
               1e6 * s.t_complete / (double)rounds, 1e6 * s.t_verify / (double)rounds,
               1e6 * t_f / ((double)np * nn));
        printf("  bound: a round costs %.2f full-depth tokens and emits %.2f: at most %.2fx\n",
               (s.t_draft + s.t_complete + s.t_verify) / (double)rounds /
                   (t_f / ((double)np * nn)),
               (double)s.emitted / (double)rounds,
               ((double)s.emitted / (double)rounds) /
                   ((s.t_draft + s.t_complete + s.t_verify) / (double)rounds /
                    (t_f / ((double)np * nn))));
        printf("  acceptance per exit layer of the drafts:");
        {
            int64_t *dr = xmalloc((size_t)L * sizeof(int64_t)), *ac = xmalloc((size_t)L * sizeof(int64_t));
            int32_t l;
            eevp_spec_layer_stats(s.sp, dr, ac, L);
            for (l = 0; l < L; l++)
                if (dr[l] > 0)
                    printf(" layer %d %.3f (%lld)", (int)l, (double)ac[l] / (double)dr[l],
                           (long long)dr[l]);
            printf("\n");
            free(dr);
            free(ac);
        }
        printf("spec_agreement: %.4f\n", same / ((double)np * nn));
        printf("spec_acceptance: %.4f\n", s.drafted ? (double)s.accepted / (double)s.drafted : 0);
        printf("spec_mean_accepted: %.3f\n", (double)s.accepted / (double)rounds);
        printf("speedup_spec_vs_full_depth: %.3f\n", t_f / t_s);
        spec_close(&s);
    }

    /* 3. sampled at T = 0.8: full depth against spec (exact in law) */
    {
        spec_cfg c = best;
        spec_dec s;
        decoder d;
        dec_cfg fc;
        double tf[2], ts[2], t_f, t_s;
        c.temp = 0.8f;
        memset(&fc, 0, sizeof fc);
        fc.mode = MODE_FULL;
        decoder_open(&d, r, &fc);
        spec_open(&s, r, &c);
        for (i = 0; i < 2; i++) {
            tf[i] = freerun_sampled(&d, test, np, FREERUN_PROMPT_TOKENS + 1, nn, 0.8f, o->seed,
                                    ref);
            spec_reset_stats(&s);
            ts[i] = spec_freerun(&s, test, np, FREERUN_PROMPT_TOKENS + 1, nn, got);
        }
        t_f = tf[0] < tf[1] ? tf[0] : tf[1];
        t_s = ts[0] < ts[1] ? ts[0] : ts[1];
        printf("  sampled at T = 0.8: full depth %.1f tokens/s, spec %.1f tokens/s, acceptance "
               "%.3f, %.2f tokens per round\n", (double)np * nn / t_f, (double)np * nn / t_s,
               s.drafted ? (double)s.accepted / (double)s.drafted : 0,
               (double)s.emitted / (double)s.rounds);
        printf("speedup_spec_sampled_vs_full_depth: %.3f\n", t_f / t_s);
        spec_close(&s);
        decoder_close(&d);
    }
    free((void *)stat.static_ids);
    free(train.ids);
    free(val);
    free(test);
    free(ref);
    free(got);
}
