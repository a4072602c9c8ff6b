/* SPDX-License-Identifier: MIT */
/*
 * decode.c - the decoding loops of tinylm: the runner (checkpoint, tokenizer
 * and libeevp head), a decoder per mode (full depth, early exit with K = 0,
 * early exit with a pruned set), one token through the model with libeevp's
 * exit decision and state propagation (decode_step), and generation.
 */
#include "runtime.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *const mode_name[3] = { "full depth", "early exit, K=0", "early exit, pruned" };

/* ---- small helpers -------------------------------------------------------- */

void die(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "tinylm: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    exit(1);
}

double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        die("out of memory (%zu bytes)", n);
    return p;
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

static double rng_unif(uint64_t *s)
{
    return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

/* ---- the runner: model + tokenizer + libeevp head -------------------------- */

void runner_open(runner *r, const char *dir)
{
    char msg[1024];
    eevp_head_options ho = EEVP_HEAD_OPTIONS_INIT;
    int64_t ws;

    memset(r, 0, sizeof *r);
    if (tl_model_load(&r->m, dir, msg, sizeof msg) != 0)
        die("%s", msg);
    r->tok = tl_tok_load(r->m.tokenizer_path, msg, sizeof msg);
    if (r->tok == NULL)
        die("%s", msg);
    if (tl_tok_vocab(r->tok) > r->m.cfg.vocab_size)
        die("%s: %d pieces, but the model's vocab_size is %d", r->m.tokenizer_path,
            (int)tl_tok_vocab(r->tok), (int)r->m.cfg.vocab_size);
    r->L = r->m.cfg.n_layers;
    r->d = r->m.cfg.hidden_size;
    r->V = r->m.cfg.vocab_size;
    if (tl_state_init(&r->st, &r->m, MAX_SEQ) != 0)
        die("out of memory for the KV cache");
    ho.n_vocab = r->V;
    ho.dim = r->d;
    ho.weights = r->m.lm_head;          /* borrowed from the fp32 arena / map */
    ho.norm = EEVP_NORM_RMS;
    ho.norm_eps = r->m.cfg.rms_eps;
    ho.norm_weight = r->m.final_norm;
    if (eevp_head_create(&r->head, &ho, msg, sizeof msg) != EEVP_OK)
        die("eevp_head_create: %s", msg);
    ws = eevp_head_workspace_size(r->head, 1);
    if (ws < 0)
        die("eevp_head_workspace_size: %s", eevp_strerror((int)ws));
    if (posix_memalign(&r->work, 64, (size_t)ws + 64) != 0)
        r->work = NULL;
    r->logits = xmalloc((size_t)r->V * sizeof(float));
    r->x = xmalloc((size_t)r->d * sizeof(float));
    if (r->work == NULL)
        die("out of memory");
}

void runner_close(runner *r)
{
    eevp_head_free(r->head);
    free(r->work);
    free(r->logits);
    free(r->x);
    tl_state_free(&r->st);
    tl_tok_free(r->tok);
    tl_model_free(&r->m);
}

/* ---- a decoder: one mode on a runner ---------------------------------------- */

void decoder_open(decoder *dc, runner *r, const dec_cfg *cfg)
{
    char msg[512];
    eevp_ctx_options co = EEVP_CTX_OPTIONS_INIT;
    int32_t l;

    memset(dc, 0, sizeof *dc);
    dc->r = r;
    dc->cfg = *cfg;
    dc->cand_logits = xmalloc((size_t)r->V * sizeof(float));
    dc->cand_ids = xmalloc((size_t)r->V * sizeof(int32_t));
    dc->required = xmalloc((size_t)r->L);
    if (cfg->mode == MODE_FULL)
        return;
    co.n_layers = r->L;
    co.max_batch = 1;
    co.k = cfg->mode == MODE_PRUNED ? cfg->k : 0;
    co.first_layer = cfg->first;
    co.interval = 1;
    co.criterion = EEVP_CRITERION_TOP2_GAP;
    co.threshold = cfg->threshold;
    co.final_policy = cfg->final_policy;
    if (cfg->policy != NULL) {
        const eevp_ctx_options *p = cfg->policy;
        co.flags = p->flags;
        co.always_ids = p->always_ids;
        co.n_always = p->n_always;
        co.static_mode = p->static_mode;
        co.static_ids = p->static_ids;
        co.n_static = p->n_static;
        co.reprune_layer = p->reprune_layer;
        co.reprune_every = p->reprune_every;
        co.adaptive_mass = p->adaptive_mass;
        co.k_min = p->k_min;
    }
    if (eevp_ctx_create(&dc->ctx, r->head, &co, msg, sizeof msg) != EEVP_OK)
        die("eevp_ctx_create: %s", msg);
    for (l = 0; l < r->L; l++)
        dc->required[l] = (uint8_t)(eevp_ctx_layer_required(dc->ctx, l) == 1);
}

void decoder_close(decoder *dc)
{
    eevp_ctx_free(dc->ctx);
    free(dc->cand_logits);
    free(dc->cand_ids);
    free(dc->required);
}

void decoder_reset_stats(decoder *dc)
{
    dc->t_tokens = dc->t_eevp = dc->t_first = 0;
    dc->tokens = 0;
    if (dc->ctx != NULL)
        eevp_ctx_stats_reset(dc->ctx);
}

/* Sample from n logits at temperature temp (> 0). */
static int32_t sample(const float *logits, const int32_t *ids, int32_t n, float temp,
                      uint64_t *rng)
{
    double mx = -INFINITY, sum = 0, u, acc = 0;
    int32_t i;
    for (i = 0; i < n; i++)
        if (logits[i] > mx)
            mx = logits[i];
    for (i = 0; i < n; i++)
        sum += exp((logits[i] - mx) / temp);
    u = rng_unif(rng) * sum;
    for (i = 0; i < n; i++) {
        acc += exp((logits[i] - mx) / temp);
        if (acc >= u)
            return ids ? ids[i] : i;
    }
    return ids ? ids[n - 1] : n - 1;
}

int32_t argmax(const float *x, int32_t n)
{
    int32_t i, best = 0;
    for (i = 1; i < n; i++)
        if (x[i] > x[best])     /* ties: the lowest id, libeevp's order */
            best = i;
    return best;
}

/* Decode one token: feed `token` at `pos`, return the next token.  With
 * temp > 0 the next token is sampled from the deciding candidates (the
 * pruned set for a pruned decision, else the whole vocabulary). */
void decode_step(decoder *dc, int32_t token, int32_t pos, float temp, uint64_t *rng,
                 step_out *out)
{
    runner *r = dc->r;
    int32_t l, j;
    double t0 = now(), t1;
    int rc;

    tl_embed(&r->st, token, r->x);
    out->pruned = 0;
    out->confidence = NAN;
    if (dc->cfg.mode == MODE_FULL) {
        for (l = 0; l < r->L; l++)
            if (tl_layer_forward(&r->st, l, pos, r->x) != 0)
                die("layer %d failed at position %d", (int)l, (int)pos);
        t1 = now();
        rc = eevp_head_logits(r->head, 1, r->x, r->d, r->logits, r->V, r->work);
        if (rc != EEVP_OK)
            die("eevp_head_logits: %s", eevp_strerror(rc));
        out->token = temp > 0 ? sample(r->logits, NULL, r->V, temp, rng)
                              : argmax(r->logits, r->V);
        out->layer = r->L - 1;
        dc->t_eevp += now() - t1;
    } else {
        eevp_result res;
        double te = now();
        rc = eevp_step_begin(dc->ctx, 1, &pos);
        dc->t_eevp += now() - te;
        if (rc != EEVP_OK)
            die("eevp_step_begin: %s", eevp_ctx_errmsg(dc->ctx));
        memset(&res, 0, sizeof res);
        res.struct_size = sizeof res;
        for (l = 0; l < r->L; l++) {
            if (tl_layer_forward(&r->st, l, pos, r->x) != 0)
                die("layer %d failed at position %d", (int)l, (int)pos);
            if (!dc->required[l])
                continue;
            te = now();
            rc = eevp_step_layer(dc->ctx, l, r->x, r->d, 1, NULL);
            if (rc == EEVP_OK)
                rc = eevp_step_result(dc->ctx, 0, &res);
            te = now() - te;
            dc->t_eevp += te;
            if (l == dc->cfg.first)
                dc->t_first += te;
            if (rc != EEVP_OK)
                die("eevp_step_layer (layer %d): %s: %s", (int)l, eevp_strerror(rc),
                    eevp_ctx_errmsg(dc->ctx));
            if (res.reason != EEVP_REASON_RUNNING)
                break;
        }
        if (res.reason == EEVP_REASON_ERROR)
            die("token at position %d failed: %s", (int)pos, eevp_strerror(res.status));
        /* State propagation: the skipped layers compute only their K/V, from
         * the exit hidden state. */
        for (j = res.layer + 1; j < r->L; j++)
            if (tl_layer_kv_only(&r->st, j, pos, r->x) != 0)
                die("layer %d (K/V) failed at position %d", (int)j, (int)pos);
        te = now();
        out->token = res.token;
        if (temp > 0) {
            int32_t n = 0;
            rc = eevp_step_candidates(dc->ctx, 0, r->V, dc->cand_logits, dc->cand_ids, &n);
            if (rc != EEVP_OK || n < 1)
                die("eevp_step_candidates: %s", eevp_ctx_errmsg(dc->ctx));
            out->token = sample(dc->cand_logits, dc->cand_ids, n, temp, rng);
        }
        rc = eevp_step_end(dc->ctx);
        dc->t_eevp += now() - te;
        if (rc != EEVP_OK)
            die("eevp_step_end: %s", eevp_ctx_errmsg(dc->ctx));
        out->layer = res.layer;
        out->pruned = res.pruned;
        out->confidence = res.confidence;
    }
    dc->t_tokens += now() - t0;
    dc->tokens++;
}

/* ---- prompts ----------------------------------------------------------------- */

void prefill_prompt(decoder *dc, const int32_t *ids, int32_t n, float temp, uint64_t *rng,
                    step_out *out)
{
    if (n > 1 && tl_prefill(&dc->r->st, ids, 0, n - 1, NULL) != 0)
        die("prefill of %d positions failed", (int)(n - 1));
    decode_step(dc, ids[n - 1], n - 1, temp, rng, out);
}

/* ---- generate ---------------------------------------------------------------- */

void generate_one(runner *r, decoder *dc, const char *prompt, const opts *o,
                  double *layers_sum, int64_t *n_tok, double *secs)
{
    int32_t ids[MAX_SEQ], n = 0, gen[MAX_SEQ], ng = 0;
    int64_t np;
    uint64_t rng = o->seed;
    step_out so;
    char *text;
    double t0;

    ids[n++] = tl_tok_bos(r->tok);
    np = tl_tok_encode(r->tok, prompt, ids + 1, MAX_SEQ / 2);
    if (np < 0 || np > MAX_SEQ / 2)
        die("prompt too long");
    n += (int32_t)np;
    decoder_reset_stats(dc);
    t0 = now();
    prefill_prompt(dc, ids, n, o->temp, &rng, &so);
    /* so holds the first generated token */
    while (ng < o->max_new && n + ng < MAX_SEQ - 1) {
        if (so.token == tl_tok_bos(r->tok) || so.token == tl_tok_eos(r->tok))
            break;
        gen[ng++] = so.token;
        *layers_sum += so.layer + 1;
        (*n_tok)++;
        decode_step(dc, so.token, n + ng - 1, o->temp, &rng, &so);
    }
    *secs += now() - t0;
    /* Decode prompt and continuation together: sentencepiece drops the
     * leading space of a text's first piece. */
    memcpy(ids + n, gen, (size_t)ng * sizeof(int32_t));
    text = tl_tok_decode(r->tok, ids + 1, n - 1 + ng);
    printf("  %-20s| %s\n", mode_name[dc->cfg.mode], text ? text : "?");
    free(text);
}
