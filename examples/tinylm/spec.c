/* SPDX-License-Identifier: MIT */
/*
 * spec.c - the spec mode: lossless early exit by self-speculative decoding
 * on libeevp's verifier (eevp_spec_*).  A round starts from t_0, the last
 * emitted token, at position P:
 *
 *  1. drafting: position P + i (input t_i) runs layers 0, 1, ... with a
 *     drafting context whose last layer is the draft-depth limit; a
 *     confident exit at layer e_i gives draft t_{i+1}, and the layers
 *     e_i + 1 .. limit get K/V from the exit state (state propagation) so
 *     that the next draft can attend to them.  A token that reaches the
 *     limit, the round's max_draft, or a stop id ends drafting;
 *  2. completion: position P + i's state is exact only up to layer
 *     m_i = min(e_0, ..., e_i), since a deeper layer attended to propagated
 *     K/V.  Each position runs on from its state kept after layer m_i
 *     (the last draft, never run, from its embedding) through every later
 *     layer, batched per layer over the positions that need it, which
 *     overwrites the K/V of every layer it recomputes.  The products are
 *     batch-invariant, so the final states are bitwise those of full depth;
 *  3. verification: the n + 1 final states through the full head at once
 *     (eevp_spec_verify); a drafts accepted, then the correction or bonus.
 *     The K/V of positions after P + a belong to rejected drafts: the next
 *     round, at P + a + 1, overwrites them (attention never reads past its
 *     own position), which is the rollback.
 */
#include "runtime.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void spec_open(spec_dec *s, runner *r, const spec_cfg *cfg)
{
    char msg[512];
    eevp_ctx_options co = EEVP_CTX_OPTIONS_INIT;
    eevp_spec_options so = EEVP_SPEC_OPTIONS_INIT;
    int32_t l;

    memset(s, 0, sizeof *s);
    s->r = r;
    s->cfg = *cfg;
    if (cfg->depth_limit < cfg->first || cfg->depth_limit > r->L - 1)
        die("spec: the draft-depth limit %d must lie in first layer %d .. %d",
            (int)cfg->depth_limit, (int)cfg->first, (int)r->L - 1);
    co.n_layers = cfg->depth_limit + 1;
    co.max_batch = 1;
    co.k = cfg->k;
    co.first_layer = cfg->first;
    co.interval = 1;
    co.criterion = EEVP_CRITERION_TOP2_GAP;
    co.threshold = cfg->threshold;
    co.final_policy = EEVP_FINAL_PRUNED; /* the limit's token is no draft */
    if (cfg->policy != NULL) {
        co.static_mode = cfg->policy->static_mode;
        co.static_ids = cfg->policy->static_ids;
        co.n_static = cfg->policy->n_static;
        co.flags = cfg->policy->flags;
    }
    if (eevp_ctx_create(&s->dctx, r->head, &co, msg, sizeof msg) != EEVP_OK)
        die("spec: drafting context: %s", msg);
    so.max_batch = 1;
    so.max_draft = cfg->max_draft;
    so.max_set = r->V; /* a draft decided on the whole vocabulary fits too */
    so.n_layers = r->L;
    so.temperature = cfg->temp;
    so.seed = cfg->seed;
    if (eevp_spec_create(&s->sp, r->head, &so, msg, sizeof msg) != EEVP_OK)
        die("spec: verifier: %s", msg);
    s->required = xmalloc((size_t)co.n_layers);
    for (l = 0; l < co.n_layers; l++)
        s->required[l] = (uint8_t)(eevp_ctx_layer_required(s->dctx, l) == 1);
    s->xs = xmalloc((size_t)(cfg->max_draft + 1) * (size_t)r->d * sizeof(float));
    s->m = xmalloc((size_t)(cfg->max_draft + 1) * sizeof(int32_t));
}

void spec_close(spec_dec *s)
{
    eevp_spec_free(s->sp);
    eevp_ctx_free(s->dctx);
    free(s->required);
    free(s->xs);
    free(s->m);
}

void spec_reset_stats(spec_dec *s)
{
    s->t_draft = s->t_complete = s->t_verify = 0;
    s->rounds = s->emitted = s->drafted = s->accepted = 0;
    eevp_spec_stats_reset(s->sp);
    eevp_ctx_stats_reset(s->dctx);
}

/* Draft step for position pos with input token: runs layers up to the exit
 * (or the limit), keeps the state after layer `keep` (or the exit state when
 * it exits earlier) in kept, propagates K/V to the limit.  Returns the exit
 * layer; *draft gets the draft (-1: none, the limit was reached). */
static int32_t draft_step(spec_dec *s, int32_t token, int32_t pos, int32_t keep, float *kept,
                          int32_t *draft, int32_t *more)
{
    runner *r = s->r;
    const int32_t lim = s->cfg.depth_limit;
    eevp_result res;
    int32_t l, j, e = lim;
    int rc;

    tl_embed(&r->st, token, r->x);
    if (eevp_step_begin(s->dctx, 1, &pos) != EEVP_OK)
        die("spec: eevp_step_begin: %s", eevp_ctx_errmsg(s->dctx));
    memset(&res, 0, sizeof res);
    res.struct_size = sizeof res;
    for (l = 0; l <= lim; l++) {
        if (tl_layer_forward(&r->st, l, pos, r->x) != 0)
            die("spec: layer %d failed at position %d", (int)l, (int)pos);
        if (l == keep)
            memcpy(kept, r->x, (size_t)r->d * sizeof(float));
        if (!s->required[l])
            continue;
        rc = eevp_step_layer(s->dctx, l, r->x, r->d, 1, NULL);
        if (rc == EEVP_OK)
            rc = eevp_step_result(s->dctx, 0, &res);
        if (rc != EEVP_OK)
            die("spec: eevp_step_layer (layer %d): %s", (int)l, eevp_ctx_errmsg(s->dctx));
        if (res.reason != EEVP_REASON_RUNNING) {
            e = res.layer;
            break;
        }
    }
    if (e < keep)
        memcpy(kept, r->x, (size_t)r->d * sizeof(float));
    if (eevp_spec_draft(s->sp, 0, s->dctx, 0, draft, more) != EEVP_OK)
        die("spec: eevp_spec_draft: %s", eevp_spec_errmsg(s->sp));
    if (eevp_step_end(s->dctx) != EEVP_OK)
        die("spec: eevp_step_end: %s", eevp_ctx_errmsg(s->dctx));
    /* the next drafts attend to this position up to the limit */
    if (*draft >= 0)
        for (j = e + 1; j <= lim; j++)
            if (tl_layer_kv_only(&r->st, j, pos, r->x) != 0)
                die("spec: K/V of layer %d failed at position %d", (int)j, (int)pos);
    return e;
}

int32_t spec_round(spec_dec *s, int32_t t0, int32_t pos, uint64_t key, int32_t *out)
{
    runner *r = s->r;
    const int32_t d = r->d, L = r->L;
    const int32_t bos = tl_tok_bos(r->tok), eos = tl_tok_eos(r->tok);
    int32_t *toks = s->toks, n = 0, i, l, m = L - 1, more = 1, seq = 0;
    eevp_spec_result res;
    double t0s = now(), t1;

    if (pos + s->cfg.max_draft + 1 > MAX_SEQ)
        die("spec: the sequence outgrows the cache (%d positions)", MAX_SEQ);
    if (eevp_spec_round(s->sp, 0, key, pos) != EEVP_OK)
        die("spec: eevp_spec_round: %s", eevp_spec_errmsg(s->sp));
    toks[0] = t0;
    /* 1. drafting */
    for (;;) {
        int32_t draft, e;
        e = draft_step(s, toks[n], pos + n, m, s->xs + (size_t)n * d, &draft, &more);
        if (e < m)
            m = e;
        s->m[n] = m;
        if (draft < 0)
            break;
        toks[++n] = draft;
        if (!more || draft == eos || draft == bos) {
            /* the last draft's position has not run at all */
            s->m[n] = -1;
            tl_embed(&r->st, draft, s->xs + (size_t)n * d);
            break;
        }
    }
    t1 = now();
    s->t_draft += t1 - t0s;
    /* 2. completion: layer by layer, the positions whose state is exact only
     * below it (a suffix of the round, since m_i never grows) */
    for (l = 0; l < L; l++) {
        int32_t first = n + 1;
        for (i = n; i >= 0 && s->m[i] < l; i--)
            first = i;
        if (first > n)
            continue;
        if (tl_layer_forward_batch(&r->st, l, pos + first, n + 1 - first,
                                   s->xs + (size_t)first * d, d) != 0)
            die("spec: completion of layer %d failed", (int)l);
    }
    s->t_complete += now() - t1;
    /* 3. verification */
    t1 = now();
    res.struct_size = sizeof res;
    if (eevp_spec_verify(s->sp, 1, &seq, s->xs, d, &res) != EEVP_OK || res.status != EEVP_OK)
        die("spec: eevp_spec_verify: %s (status %d)", eevp_spec_errmsg(s->sp), (int)res.status);
    s->t_verify += now() - t1;
    for (i = 0; i < res.n_accepted; i++)
        out[i] = toks[i + 1];
    out[res.n_accepted] = res.token;
    s->n = n;
    s->rounds++;
    s->drafted += n;
    s->accepted += res.n_accepted;
    s->emitted += res.n_accepted + 1;
    return res.n_accepted + 1;
}

double spec_freerun(spec_dec *s, const int32_t *prompts, int32_t n_prompts, int32_t len,
                    int32_t n_new, int32_t *out)
{
    runner *r = s->r;
    int32_t buf[EEVP_MAX_DRAFT + 1], p;
    double t0 = now();
    for (p = 0; p < n_prompts; p++) {
        const int32_t *pr = prompts + (size_t)p * (size_t)len;
        int32_t *o = out + (size_t)p * (size_t)n_new, got = 0, pos = len - 1, last = pr[len - 1];
        if (len > 1 && tl_prefill(&r->st, pr, 0, len - 1, NULL) != 0)
            die("spec: prefill failed");
        while (got < n_new) {
            int32_t k, e = spec_round(s, last, pos, (uint64_t)p, buf);
            for (k = 0; k < e && got < n_new; k++)
                o[got++] = buf[k];
            pos += e;
            last = buf[e - 1];
        }
    }
    return now() - t0;
}

/* ---- the identity check (tinylm check-spec) ------------------------------------ */

/* Greedy spec output against full depth, token for token: the prompts given
 * (24 new tokens each) and the free-running prompts (BOS plus 8 tokens of
 * test lines 0..63, 32 new tokens), under two drafting configurations.
 * Returns the number of differing continuations. */
int run_check_spec(runner *r, const opts *o, const char *const *prompts, int n_prompts)
{
    const spec_cfg cfgs[2] = {
        {NULL, o->k, 2, r->L - 2, 4, 0.1f, 0.0f, 1u},
        {NULL, 0, 1, 3, EEVP_MAX_DRAFT, 0.02f, 0.0f, 1u},
    };
    int32_t *held = freerun_prompts(r, o->wordnet, 2, FREERUN_PROMPTS, FREERUN_PROMPT_TOKENS);
    int32_t ids[MAX_SEQ], a[FREERUN_NEW], b[FREERUN_NEW];
    int64_t bad = 0, tokens = 0, conts = 0;
    int c, p;

    for (c = 0; c < 2; c++) {
        decoder full;
        dec_cfg fc;
        spec_dec s;
        memset(&fc, 0, sizeof fc);
        fc.mode = MODE_FULL;
        decoder_open(&full, r, &fc);
        spec_open(&s, r, &cfgs[c]);
        for (p = 0; p < n_prompts + FREERUN_PROMPTS; p++) {
            const int32_t *pr;
            int32_t len, nn, j;
            if (p < n_prompts) {
                int64_t np = tl_tok_encode(r->tok, prompts[p], ids + 1, MAX_SEQ / 2);
                if (np < 0 || np > MAX_SEQ / 2)
                    die("check-spec: prompt too long");
                ids[0] = tl_tok_bos(r->tok);
                pr = ids;
                len = (int32_t)np + 1;
                nn = 24;
            } else {
                pr = held + (size_t)(p - n_prompts) * (FREERUN_PROMPT_TOKENS + 1);
                len = FREERUN_PROMPT_TOKENS + 1;
                nn = FREERUN_NEW;
            }
            freerun(&full, pr, 1, len, nn, a);
            spec_freerun(&s, pr, 1, len, nn, b);
            tokens += nn;
            conts++;
            for (j = 0; j < nn && a[j] == b[j]; j++)
                ;
            if (j < nn && bad++ < 5)
                printf("FAIL: configuration %d, prompt %d: token %d differs (full %d, spec %d)\n",
                       c, p, (int)j, (int)a[j], (int)b[j]);
        }
        printf("check-spec: configuration %d (K %d, first %d, depth limit %d, max_draft %d, "
               "threshold %.2f): %lld rounds, %lld drafted, %lld accepted\n", c,
               (int)cfgs[c].k, (int)cfgs[c].first, (int)cfgs[c].depth_limit,
               (int)cfgs[c].max_draft, (double)cfgs[c].threshold, (long long)s.rounds,
               (long long)s.drafted, (long long)s.accepted);
        spec_close(&s);
        decoder_close(&full);
    }
    free(held);
    printf("check-spec: %lld continuations, %lld tokens: greedy spec equals full depth in %lld, "
           "differs in %lld\n", (long long)conts, (long long)tokens, (long long)(conts - bad),
           (long long)bad);
    printf("%lld passed, %lld failed\n", (long long)(conts - bad), (long long)bad);
    return bad > 0;
}
