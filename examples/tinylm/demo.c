/* SPDX-License-Identifier: MIT */
/*
 * demo.c - the reports of tinylm built on the evaluation: the demo (operating
 * point on validation, the three modes on test), the sweep over thresholds
 * and K, and the candidate-set policies against the plain method.
 */
#include "runtime.h"

#include <eevp.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- demo / sweep -------------------------------------------------------------- */

static const float thresholds[] = { 0.9f, 0.7f, 0.5f, 0.4f, 0.3f, 0.25f, 0.2f, 0.175f,
                                    0.15f, 0.125f, 0.1f, 0.085f, 0.07f, 0.06f, 0.05f, 0.04f,
                                    0.03f, 0.02f, 0.01f };
#define N_THRESHOLDS ((int)(sizeof thresholds / sizeof *thresholds))

/* Free-running agreement of the three modes at base, from the held-out
 * prompts: prefix[m] and share[m] against full depth, tps[m] tokens/s. */
typedef struct freerun_fig {
    double prefix[3], share[3], tps[3];
} freerun_fig;

static void freerun_modes(runner *r, const dec_cfg *base, const int32_t *prompts,
                          freerun_fig *f)
{
    const int32_t np = FREERUN_PROMPTS, len = FREERUN_PROMPT_TOKENS + 1, nn = FREERUN_NEW;
    int32_t *out[3];
    int m;
    for (m = 0; m < 3; m++) {
        decoder dc;
        dec_cfg cfg = *base;
        cfg.mode = m;
        out[m] = xmalloc((size_t)np * (size_t)nn * sizeof(int32_t));
        decoder_open(&dc, r, &cfg);
        f->tps[m] = (double)np * nn / freerun(&dc, prompts, np, len, nn, out[m]);
        decoder_close(&dc);
    }
    for (m = 0; m < 3; m++)
        freerun_agreement(out[m], out[0], np, nn, &f->prefix[m], &f->share[m]);
    for (m = 0; m < 3; m++)
        free(out[m]);
}

void run_demo(runner *r, const opts *o)
{
    stream val = { 0 }, test = { 0 }, train = { 0 };
    eval_out fv, ft, ee[2], pr[2], full2;
    dec_cfg best, cfg;
    point bp;
    decoder dfull, dee, dpr;
    int32_t firsts[2], nf = 0, fi, l;
    int found = 0, rep;
    double t_full, t_ee, t_pr, head_per_tok, cs_pr, cs_ee, bacc, bppl;
    int64_t i, n_val = o->val_tokens, n_test = o->test_tokens;
    double t_start = now();

    load_split(r, o->wordnet, 1, n_val + 2 * CHUNK + n_val / CHUNK + 8, &val);
    load_split(r, o->wordnet, 2, n_test + 2 * CHUNK + n_test / CHUNK + 8, &test);

    /* 1. Generation in the three modes (at the default operating point). */
    memset(&cfg, 0, sizeof cfg);
    cfg.k = o->k;
    cfg.first = o->first >= 0 ? o->first : 2;
    cfg.threshold = o->threshold >= 0 ? o->threshold : 0.1f;
    cfg.final_policy = o->final_policy;
    {
        opts g = *o;
        g.max_new = 24;
        g.n_args = 0;
        g.mode = NULL;
        run_generate(r, &g, &cfg);
    }

    /* 2. The operating point, chosen on the validation split: for each first
     * checked layer, the threshold that saves the most layers while agreement
     * with full depth stays >= 0.90. */
    {
        decoder d;
        dec_cfg fc = cfg;
        fc.mode = MODE_FULL;
        decoder_open(&d, r, &fc);
        evaluate(&d, &val, n_val, 0, 0, &fv);
        decoder_close(&d);
    }
    if (o->first >= 0) {
        firsts[nf++] = o->first;
    } else {
        firsts[nf++] = 1;
        firsts[nf++] = 2;
    }
    printf("\noperating point on the validation split (%lld positions, K=%d, top-2 gap):\n",
           (long long)fv.n, (int)o->k);
    printf("  first  threshold  agreement  layers_saved\n");
    memset(&bp, 0, sizeof bp);
    /* Agreement falls and savings rise as the threshold falls: bisect the
     * threshold grid for the lowest threshold that keeps agreement >= 0.90. */
    for (fi = 0; fi < nf; fi++) {
        int lo = -1, hi = N_THRESHOLDS; /* ok(lo) (or none), !ok(hi) (or none) */
        point lo_pt;
        memset(&lo_pt, 0, sizeof lo_pt);
        if (o->threshold >= 0) {
            lo = 0;
            hi = 1;
        }
        while (hi - lo > 1) {
            int mid = (lo + hi) / 2;
            point pt;
            cfg.mode = MODE_PRUNED;
            cfg.first = firsts[fi];
            cfg.threshold = thresholds[mid];
            pt = run_point(r, &cfg, &val, n_val, &fv, NULL);
            printf("  %5d  %9.3f  %9.4f  %12.3f\n", (int)cfg.first, (double)cfg.threshold,
                   pt.agreement, pt.saved);
            if (pt.agreement >= 0.90) {
                lo = mid;
                lo_pt = pt;
            } else {
                hi = mid;
            }
        }
        if (o->threshold >= 0) {
            cfg.mode = MODE_PRUNED;
            cfg.first = firsts[fi];
            cfg.threshold = o->threshold;
            lo_pt = run_point(r, &cfg, &val, n_val, &fv, NULL);
            printf("  %5d  %9.3f  %9.4f  %12.3f  (given)\n", (int)cfg.first,
                   (double)cfg.threshold, lo_pt.agreement, lo_pt.saved);
        }
        if (lo >= 0 && (!found || lo_pt.saved > bp.saved)) {
            bp = lo_pt;
            found = 1;
        }
    }
    if (!found) {
        printf("  no threshold keeps agreement >= 0.90 on validation; using the highest\n");
        bp.cfg = cfg;
        bp.cfg.first = firsts[nf - 1];
        bp.cfg.threshold = thresholds[0];
    }
    best = bp.cfg;
    printf("  chosen: first checked layer %d, threshold %.3f, K %d\n", (int)best.first,
           (double)best.threshold, (int)best.k);

    /* 3. The test split at that point: three modes, each timed twice
     * (interleaved; the faster run counts, the machine is shared). */
    cfg = best;
    cfg.mode = MODE_FULL;
    decoder_open(&dfull, r, &cfg);
    cfg.mode = MODE_EE;
    decoder_open(&dee, r, &cfg);
    cfg.mode = MODE_PRUNED;
    decoder_open(&dpr, r, &cfg);
    evaluate(&dfull, &test, n_test, best.k, best.first, &ft);
    evaluate(&dee, &test, n_test, 0, 0, &ee[0]);
    evaluate(&dpr, &test, n_test, 0, 0, &pr[0]);
    evaluate(&dfull, &test, n_test, 0, 0, &full2);
    evaluate(&dee, &test, n_test, 0, 0, &ee[1]);
    evaluate(&dpr, &test, n_test, 0, 0, &pr[1]);
    {
        eevp_stats st;
        int64_t *hist = xmalloc((size_t)r->L * sizeof(int64_t));
        double agr = agreement(&pr[0], &ft), agr_ee = agreement(&ee[0], &ft), kcov = 0;
        int64_t n = ft.n;

        memset(&st, 0, sizeof st);
        st.struct_size = sizeof st;
        eevp_ctx_stats(dpr.ctx, &st);
        eevp_ctx_exit_histogram(dpr.ctx, hist, r->L);
        for (i = 0; i < n; i++)
            kcov += ft.in_set[i];
        kcov /= (double)n;
        /* Each mode ran twice, interleaved; every position counts its faster
         * run (the machine is shared, contention only ever adds time). */
        t_full = min_sum(ft.tok_sec, full2.tok_sec, n);
        t_ee = min_sum(ee[0].tok_sec, ee[1].tok_sec, n);
        t_pr = min_sum(pr[0].tok_sec, pr[1].tok_sec, n);
        /* Confidence cost: libeevp's time at the checked layers after the
         * first (pure confidence: K-row or full-vocabulary projections and
         * the criterion), plus, at the first checked layer, what the call
         * costs beyond one full projection, the model's own output head
         * (median call minus median full-head time of the full mode). */
        head_per_tok = med_min(ft.eevp_sec, full2.eevp_sec, NULL, NULL, n);
        cs_pr = conf_time(&pr[0], &pr[1], head_per_tok, n) / t_pr;
        cs_ee = conf_time(&ee[0], &ee[1], head_per_tok, n) / t_ee;
        bppl = 0;
        load_split(r, o->wordnet, 0, 0, &train);
        bppl = bigram_ppl(&train, &test, n, r->V, &bacc);

        printf("\nheld-out test split, teacher-forced, %lld positions (chunks of %d):\n",
               (long long)n, CHUNK);
        printf("  %-20s %10s %11s %10s %12s %12s\n", "mode", "tokens/s", "agreement",
               "mean_exit", "layers_saved", "conf_share");
        printf("  %-20s %10.1f %11.4f %10.2f %12.3f %12s\n", mode_name[0], (double)n / t_full,
               1.0, (double)r->L, 0.0, "-");
        printf("  %-20s %10.1f %11.4f %10.2f %12.3f %12.4f\n", mode_name[1], (double)n / t_ee,
               agr_ee, layers_used(&ee[0]), 1.0 - layers_used(&ee[0]) / r->L, cs_ee);
        printf("  %-20s %10.1f %11.4f %10.2f %12.3f %12.4f\n", mode_name[2], (double)n / t_pr,
               agr, layers_used(&pr[0]), 1.0 - layers_used(&pr[0]) / r->L, cs_pr);
        printf("\n  pruned mode per exit layer:\n  layer  tokens   share  agreement\n");
        for (l = 0; l < r->L; l++) {
            int64_t cnt = 0, same = 0;
            for (i = 0; i < n; i++)
                if (pr[0].layer[i] == l) {
                    cnt++;
                    same += pr[0].pred[i] == ft.pred[i];
                }
            if (cnt == 0)
                continue;
            printf("  %5d %7lld %7.3f  %9.4f\n", (int)l, (long long)cnt, (double)cnt / n,
                   (double)same / (double)cnt);
        }
        printf("\n  full depth: accuracy %.4f, perplexity %.2f; bigram baseline: accuracy "
               "%.4f, perplexity %.2f\n", (double)ft.correct / n, exp(ft.nll / n), bacc, bppl);
        printf("  libeevp statistics (pruned, second run): %lld tokens, %lld exited early, mean set "
               "size %.1f\n", (long long)st.tokens, (long long)st.exited_early,
               st.pruned_sets ? (double)st.set_size_sum / (double)st.pruned_sets : 0.0);
        printf("  per token (median, us): full head %.0f; libeevp at the first check: "
               "pruned %.0f, K=0 %.0f; token: full %.0f, K=0 %.0f, pruned %.0f\n",
               1e6 * head_per_tok, 1e6 * med_min(pr[0].first_sec, pr[1].first_sec, NULL, NULL, n),
               1e6 * med_min(ee[0].first_sec, ee[1].first_sec, NULL, NULL, n),
               1e6 * med_min(ft.tok_sec, full2.tok_sec, NULL, NULL, n),
               1e6 * med_min(ee[0].tok_sec, ee[1].tok_sec, NULL, NULL, n),
               1e6 * med_min(pr[0].tok_sec, pr[1].tok_sec, NULL, NULL, n));
        printf("  demo wall time: %.1f s\n\n", now() - t_start);

        printf("threshold: %.3f\n", (double)best.threshold);
        printf("k: %d\n", (int)best.k);
        printf("first_layer: %d\n", (int)best.first);
        printf("agreement: %.4f\n", agr);
        printf("mean_exit_layer: %.3f\n", layers_used(&pr[0]) - 1.0);
        printf("layers_saved: %.4f\n", 1.0 - layers_used(&pr[0]) / r->L);
        printf("k_coverage_oracle: %.4f\n", kcov);
        printf("speedup_pruned_vs_full_depth: %.3f\n", t_full / t_pr);
        printf("speedup_pruned_vs_ee_full_vocab: %.3f\n", t_ee / t_pr);
        printf("confidence_share_pruned: %.4f\n", cs_pr);
        printf("confidence_share_full_vocab: %.4f\n", cs_ee);
        printf("heldout_ppl_full: %.3f\n", exp(ft.nll / n));
        printf("heldout_ppl_bigram: %.3f\n", bppl);
        free(hist);
    }
    /* 4. Free-running: the held-out prompts, 32 greedy tokens in each mode. */
    {
        int32_t *prompts = freerun_prompts(r, o->wordnet, 2, FREERUN_PROMPTS,
                                           FREERUN_PROMPT_TOKENS);
        freerun_fig fr;
        int m;
        freerun_modes(r, &best, prompts, &fr);
        printf("\nfree-running, %d held-out prompts (BOS + the first %d tokens of test lines "
               "0..%d), %d greedy tokens each:\n", FREERUN_PROMPTS, FREERUN_PROMPT_TOKENS,
               FREERUN_PROMPTS - 1, FREERUN_NEW);
        printf("  %-20s %22s %22s %10s\n", "mode", "mean_identical_prefix",
               "identical_continuations", "tokens/s");
        for (m = 0; m < 3; m++)
            printf("  %-20s %22.2f %22.4f %10.1f\n", mode_name[m], fr.prefix[m], fr.share[m],
                   fr.tps[m]);
        printf("freerun_mean_prefix_pruned: %.3f\n", fr.prefix[MODE_PRUNED]);
        printf("freerun_identical_share_pruned: %.4f\n", fr.share[MODE_PRUNED]);
        printf("freerun_mean_prefix_ee: %.3f\n", fr.prefix[MODE_EE]);
        printf("freerun_identical_share_ee: %.4f\n", fr.share[MODE_EE]);
        free(prompts);
    }
    /* 5. The batched prefill against position-by-position prefill (8 prompts
     * of 128 test tokens), and the fixed-order products against OpenBLAS. */
    {
        enum { NP = 8, PL = 128 };
        double ms_seq = 0, ms_b = 0, r_gemv = 0, r_gemm = 0;
        stream pf = { 0 };
        load_split(r, o->wordnet, 2, (int64_t)NP * PL, &pf);
        if (pf.n < (int64_t)NP * PL)
            die("the test split is too short for the prefill measurement");
        if (tl_measure_prefill(&r->m, pf.ids, NP, PL, &ms_seq, &ms_b) != 0 ||
            tl_measure_matmul(&r->m, PL, &r_gemv, &r_gemm) != 0)
            die("prefill / matmul measurement failed");
        printf("\nprefill of %d-token prompts (median of %d): position by position %.2f ms, "
               "batched %.2f ms\n", PL, NP, ms_seq, ms_b);
        printf("prefill_speedup_vs_sequential: %.3f\n", ms_seq / ms_b);
        printf("matmul_fixed_vs_sgemv_b1: %.3f\n", r_gemv);
        printf("matmul_fixed_vs_sgemm_b128: %.3f\n", r_gemm);
        free(pf.ids);
    }
    decoder_close(&dfull);
    decoder_close(&dee);
    decoder_close(&dpr);
    eval_free(&fv);
    eval_free(&ft);
    eval_free(&full2);
    for (rep = 0; rep < 2; rep++) {
        eval_free(&ee[rep]);
        eval_free(&pr[rep]);
    }
    free(val.ids);
    free(test.ids);
    free(train.ids);
    /* 6. Lossless early exit (demo_spec.c). */
    run_demo_spec(r, o);
}

/* Quality/speed over thresholds and K on the test split, as CSV. */
void run_sweep(runner *r, const opts *o)
{
    static const int32_t ks[] = { 0, 16, 64, 256 };
    stream test = { 0 };
    eval_out ft;
    decoder d;
    dec_cfg cfg;
    int ki, ti;
    int64_t n = o->test_tokens;
    FILE *csv = o->out ? fopen(o->out, "w") : NULL;
    static const char header[] = "k,threshold,agreement,layers_saved,tokens_per_s,"
                                 "speedup_vs_full,freerun_prefix,freerun_identical";
    int32_t *prompts, *fr_full, *fr;
    double prefix, same;

    if (o->out && csv == NULL)
        die("%s: cannot write", o->out);
    load_split(r, o->wordnet, 2, n + 2 * CHUNK + n / CHUNK + 8, &test);
    memset(&cfg, 0, sizeof cfg);
    cfg.first = o->first >= 0 ? o->first : 2;
    cfg.final_policy = o->final_policy;
    cfg.mode = MODE_FULL;
    decoder_open(&d, r, &cfg);
    evaluate(&d, &test, n, 0, 0, &ft);
    prompts = freerun_prompts(r, o->wordnet, 2, FREERUN_PROMPTS, FREERUN_PROMPT_TOKENS);
    fr_full = xmalloc((size_t)FREERUN_PROMPTS * FREERUN_NEW * sizeof(int32_t));
    fr = xmalloc((size_t)FREERUN_PROMPTS * FREERUN_NEW * sizeof(int32_t));
    freerun(&d, prompts, FREERUN_PROMPTS, FREERUN_PROMPT_TOKENS + 1, FREERUN_NEW, fr_full);
    decoder_close(&d);
    /* teacher-forced agreement and speed, then the free-running agreement
     * (mean identical prefix of 32 greedy tokens, share identical) */
    printf("%s\n", header);
    if (csv)
        fprintf(csv, "%s\n", header);
    for (ki = 0; ki < (int)(sizeof ks / sizeof *ks); ki++)
        for (ti = 0; ti < N_THRESHOLDS; ti++) {
            eval_out e;
            point pt;
            cfg.mode = ks[ki] ? MODE_PRUNED : MODE_EE;
            cfg.k = ks[ki];
            cfg.threshold = thresholds[ti];
            pt = run_point(r, &cfg, &test, n, &ft, &e);
            decoder_open(&d, r, &cfg);
            freerun(&d, prompts, FREERUN_PROMPTS, FREERUN_PROMPT_TOKENS + 1, FREERUN_NEW, fr);
            decoder_close(&d);
            freerun_agreement(fr, fr_full, FREERUN_PROMPTS, FREERUN_NEW, &prefix, &same);
            printf("%d,%.3f,%.4f,%.4f,%.1f,%.3f,%.3f,%.4f\n", (int)cfg.k,
                   (double)cfg.threshold, pt.agreement, pt.saved, (double)e.n / e.seconds,
                   ft.seconds / e.seconds, prefix, same);
            if (csv)
                fprintf(csv, "%d,%.3f,%.4f,%.4f,%.1f,%.3f,%.3f,%.4f\n", (int)cfg.k,
                        (double)cfg.threshold, pt.agreement, pt.saved,
                        (double)e.n / e.seconds, ft.seconds / e.seconds, prefix, same);
            eval_free(&e);
        }
    if (csv)
        fclose(csv);
    eval_free(&ft);
    free(test.ids);
    free(prompts);
    free(fr_full);
    free(fr);
}

/* ---- policies: candidate-set policies against the plain method (docs/POLICIES.md) -- */

void run_policies(runner *r, const opts *o)
{
    enum { N_POL = 7 };
    static const char *names[N_POL] = {
        "plain method", "always-included EOS", "static 256 most frequent, union",
        "static 256 most frequent, alone", "re-prune every 2nd check", "adaptive K (mass 0.9, K 8..k)",
        "exact-token exits" };
    stream test = { 0 }, train = { 0 };
    eval_out ft;
    decoder d;
    dec_cfg cfg;
    int32_t eos = tl_tok_eos(r->tok), *freq;
    int64_t n = o->test_tokens;
    int i;

    load_split(r, o->wordnet, 2, n + 2 * CHUNK + n / CHUNK + 8, &test);
    load_split(r, o->wordnet, 0, 1 << 20, &train);
    freq = frequent_ids(&train, r->V, 256);
    memset(&cfg, 0, sizeof cfg);
    cfg.first = o->first >= 0 ? o->first : 2;
    cfg.final_policy = o->final_policy;
    cfg.mode = MODE_FULL;
    decoder_open(&d, r, &cfg);
    evaluate(&d, &test, n, 0, 0, &ft);
    decoder_close(&d);
    cfg.mode = MODE_PRUNED;
    cfg.k = o->k;
    cfg.threshold = o->threshold >= 0 ? o->threshold : 0.10f;
    printf("%lld test positions; K = %d, first checked layer %d, threshold %.3f, top-2 gap, "
           "final layer %s\n\n", (long long)n, (int)cfg.k, (int)cfg.first,
           (double)cfg.threshold, cfg.final_policy == EEVP_FINAL_FULL ? "full" : "pruned");
    printf("| policy | agreement with full depth | layers saved | mean set size | "
           "head FLOPs / baseline | libeevp ms per token | policy counter |\n");
    printf("|---|---:|---:|---:|---:|---:|---|\n");
    for (i = 0; i < N_POL; i++) {
        eevp_ctx_options p = EEVP_CTX_OPTIONS_INIT;
        eevp_stats st;
        eval_out e;
        char extra[96] = "";
        cfg.policy = &p;
        if (i == 1) {
            p.always_ids = &eos;
            p.n_always = 1;
        } else if (i == 2 || i == 3) {
            p.static_mode = i == 2 ? EEVP_STATIC_UNION : EEVP_STATIC_ONLY;
            p.static_ids = freq;
            p.n_static = 256;
        } else if (i == 4) {
            p.reprune_every = 2;
        } else if (i == 5) {
            p.adaptive_mass = 0.9f;
            p.k_min = cfg.k < 8 ? cfg.k : 8;
        } else if (i == 6) {
            p.flags = EEVP_CTX_EXACT_EXIT;
        }
        decoder_open(&d, r, &cfg);
        evaluate(&d, &test, n, 0, 0, &e);
        memset(&st, 0, sizeof st);
        st.struct_size = sizeof st;
        if (eevp_ctx_stats(d.ctx, &st) != EEVP_OK)
            die("eevp_ctx_stats failed");
        decoder_close(&d);
        if (i == 1)
            snprintf(extra, sizeof extra, "EOS emitted %lld", (long long)st.always_emitted);
        else if (i == 2 || i == 3)
            snprintf(extra, sizeof extra, "static emitted %lld", (long long)st.static_emitted);
        else if (i == 4)
            snprintf(extra, sizeof extra, "%lld re-prunings, %lld changed",
                     (long long)st.reprunes, (long long)st.reprune_changed);
        else if (i == 6)
            snprintf(extra, sizeof extra, "%lld exact exits, %lld changed",
                     (long long)st.exact_exits, (long long)st.exact_exit_changed);
        printf("| %s | %.4f | %.1f %% | %.1f | %.3f | %.3f | %s |\n", names[i],
               agreement(&e, &ft), 100.0 * (1.0 - layers_used(&e) / r->L),
               st.pruned_sets ? (double)st.set_size_sum / (double)st.pruned_sets : 0.0,
               st.head_flops_baseline ? (double)st.head_flops / (double)st.head_flops_baseline
                                      : 0.0,
               e.n ? 1e3 * e.eevp_seconds / (double)e.n : 0.0, extra);
        eval_free(&e);
    }
    eval_free(&ft);
    free(freq);
    free(test.ids);
    free(train.ids);
}
