/* SPDX-License-Identifier: MIT */
/*
 * tinylm.c - reference early-exit decoding runtime on libeevp.
 *
 * Loads a Llama-architecture checkpoint directory (Hugging Face layout) and
 * decodes one token at a time in one of three modes:
 *   full    full depth, the model's own output (no early exit);
 *   ee      early exit, confidence on the full vocabulary (K = 0);
 *   pruned  early exit with dynamic vocabulary pruning (K > 0).
 * libeevp is used through its public header only.  When a token exits at
 * layer l, every deeper layer computes only its K/V from the exit hidden
 * state (state propagation), so later tokens attend to a complete cache.
 *
 *   tinylm generate [options] PROMPT...   text in the three modes (or --mode)
 *   tinylm demo [options]                 the main job: choose the operating
 *                                         point on validation, evaluate on test
 *   tinylm sweep [options]                trade-off over thresholds and K
 *   tinylm verify [options]               dumps for the PyTorch cross-check
 *   tinylm inspect --model DIR            load a checkpoint and summarise it
 *   tinylm tensors FILE.safetensors       list a safetensors file
 *   tinylm lines SPLIT                    the WordNet text of a split
 */
#include "tinylm.h"

#include <cblas.h>
#include <eevp.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_SEQ 512
#define CHUNK 128

enum { MODE_FULL = 0, MODE_EE = 1, MODE_PRUNED = 2 };
static const char *mode_name[] = { "full depth", "early exit, K=0", "early exit, pruned" };

/* ---- small helpers -------------------------------------------------------- */

static void die(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "tinylm: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    exit(1);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *xmalloc(size_t n)
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

typedef struct runner {
    tl_model m;
    tl_state st;
    tl_tok *tok;
    eevp_head *head;
    void *work;
    float *logits, *x;
    int32_t L, d, V;
} runner;

static void runner_open(runner *r, const char *dir)
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

static void runner_close(runner *r)
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

typedef struct dec_cfg {
    const eevp_ctx_options *policy; /* candidate-set policy fields, or NULL */
    int mode;
    int32_t k;          /* pruned set size (MODE_PRUNED) */
    int32_t first;      /* first checked layer */
    float threshold;
    int32_t final_policy;
} dec_cfg;

typedef struct decoder {
    runner *r;
    dec_cfg cfg;
    eevp_ctx *ctx;
    uint8_t *required;
    float *cand_logits;
    int32_t *cand_ids;
    /* time accounting */
    double t_tokens;    /* whole decode steps */
    double t_eevp;      /* inside libeevp (step calls; full mode: the head) */
    double t_first;     /* ... of which the call at the first checked layer */
    int64_t tokens;
} decoder;

typedef struct step_out {
    int32_t token, layer, pruned;
    float confidence;
} step_out;

static void decoder_open(decoder *dc, runner *r, const dec_cfg *cfg)
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

static void decoder_close(decoder *dc)
{
    eevp_ctx_free(dc->ctx);
    free(dc->cand_logits);
    free(dc->cand_ids);
    free(dc->required);
}

static void decoder_reset_stats(decoder *dc)
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

static int32_t argmax(const float *x, int32_t n)
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
static void decode_step(decoder *dc, int32_t token, int32_t pos, float temp, uint64_t *rng,
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
            tl_layer_forward(&r->st, l, pos, r->x);
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
            tl_layer_forward(&r->st, l, pos, r->x);
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
            tl_layer_kv_only(&r->st, j, pos, r->x);
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

/* ---- text ---------------------------------------------------------------- */

typedef struct stream {
    int32_t *ids;
    int64_t n, cap;
} stream;

static void stream_push(stream *s, int32_t id)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 4096;
        s->ids = realloc(s->ids, (size_t)s->cap * sizeof(int32_t));
        if (s->ids == NULL)
            die("out of memory");
    }
    s->ids[s->n++] = id;
}

/* BOS + pieces of each line, concatenated (the training script's stream). */
static void encode_lines(runner *r, char **lines, int64_t n_lines, int64_t max_tokens,
                         stream *s)
{
    int64_t i, k, n;
    int32_t buf[4096];
    for (i = 0; i < n_lines && (max_tokens <= 0 || s->n < max_tokens); i++) {
        stream_push(s, tl_tok_bos(r->tok));
        n = tl_tok_encode(r->tok, lines[i], buf, 4096);
        if (n < 0)
            die("sentencepiece failed on a line");
        for (k = 0; k < n && k < 4096; k++)
            stream_push(s, buf[k]);
    }
}

static void load_split(runner *r, const char *wn, int split, int64_t max_tokens, stream *s)
{
    char msg[512];
    int64_t n;
    char **lines = tl_wordnet_lines(wn, split, &n, msg, sizeof msg);
    if (lines == NULL)
        die("%s", msg);
    encode_lines(r, lines, n, max_tokens, s);
    tl_lines_free(lines, n);
}

/* ---- teacher-forced evaluation ---------------------------------------------- */

typedef struct eval_out {
    int64_t n;
    int32_t *pred, *layer;
    uint8_t *in_set;     /* full mode: full-depth token inside top-K at `first` */
    double *tok_sec, *eevp_sec; /* per position: the step, and libeevp's part */
    double *first_sec;          /* ... libeevp at the first checked layer */
    double nll;          /* full mode only */
    int64_t correct;     /* prediction == next token */
    double seconds, eevp_seconds;
} eval_out;

static void eval_free(eval_out *e)
{
    free(e->pred);
    free(e->layer);
    free(e->in_set);
    free(e->tok_sec);
    free(e->eevp_sec);
    free(e->first_sec);
    memset(e, 0, sizeof *e);
}

/* Decode n_pos positions of s in chunks of CHUNK predictions (a fresh cache
 * per chunk).  For the full mode with oracle_k > 0, also records whether the
 * full-depth token is inside the top oracle_k at layer oracle_layer (an
 * untimed extra pass over that layer's hidden state). */
static void evaluate(decoder *dc, const stream *s, int64_t n_pos, int32_t oracle_k,
                     int32_t oracle_layer, eval_out *e)
{
    runner *r = dc->r;
    int64_t c, i, p = 0;
    step_out so;
    int32_t *top = NULL;
    void *tw = NULL;

    memset(e, 0, sizeof *e);
    e->pred = xmalloc((size_t)n_pos * sizeof(int32_t));
    e->layer = xmalloc((size_t)n_pos * sizeof(int32_t));
    e->in_set = xmalloc((size_t)n_pos);
    e->tok_sec = xmalloc((size_t)n_pos * sizeof(double));
    e->eevp_sec = xmalloc((size_t)n_pos * sizeof(double));
    e->first_sec = xmalloc((size_t)n_pos * sizeof(double));
    if (oracle_k > 0) {
        top = xmalloc((size_t)oracle_k * sizeof(int32_t));
        tw = xmalloc((size_t)eevp_topk_workspace_size(r->V, oracle_k));
    }
    decoder_reset_stats(dc);
    for (c = 0; p < n_pos && (c + 1) * CHUNK < s->n; c++) {
        const int32_t *ids = s->ids + c * CHUNK;
        float *hp = NULL;
        for (i = 0; i < CHUNK && p < n_pos; i++, p++) {
            double tt = dc->t_tokens, te = dc->t_eevp, tf = dc->t_first;
            if (dc->cfg.mode == MODE_FULL && oracle_k > 0) {
                /* Full depth with the hidden state at oracle_layer kept. */
                int32_t l;
                double t0 = now(), t1;
                if (hp == NULL)
                    hp = xmalloc((size_t)r->d * sizeof(float));
                tl_embed(&r->st, ids[i], r->x);
                for (l = 0; l < r->L; l++) {
                    tl_layer_forward(&r->st, l, (int32_t)i, r->x);
                    if (l == oracle_layer)
                        memcpy(hp, r->x, (size_t)r->d * sizeof(float));
                }
                t1 = now();
                if (eevp_head_logits(r->head, 1, r->x, r->d, r->logits, r->V, r->work))
                    die("eevp_head_logits failed");
                so.token = argmax(r->logits, r->V);
                so.layer = r->L - 1;
                dc->t_eevp += now() - t1;
                dc->t_tokens += now() - t0;
                dc->tokens++;
            } else {
                decode_step(dc, ids[i], (int32_t)i, 0, NULL, &so);
            }
            e->tok_sec[p] = dc->t_tokens - tt;
            e->eevp_sec[p] = dc->t_eevp - te;
            e->first_sec[p] = dc->t_first - tf;
            e->pred[p] = so.token;
            e->layer[p] = so.layer;
            e->in_set[p] = 0;
            if (so.token == ids[i + 1])
                e->correct++;
            if (dc->cfg.mode == MODE_FULL) {
                double mx = r->logits[argmax(r->logits, r->V)], sum = 0;
                int32_t v;
                for (v = 0; v < r->V; v++)
                    sum += exp((double)r->logits[v] - mx);
                e->nll += mx + log(sum) - r->logits[ids[i + 1]];
                if (oracle_k > 0) {
                    int32_t j;
                    float *lg = dc->cand_logits;
                    if (eevp_head_logits(r->head, 1, hp, r->d, lg, r->V, r->work) ||
                        eevp_topk(lg, r->V, oracle_k, 0, top, NULL, tw))
                        die("oracle top-K failed");
                    for (j = 0; j < oracle_k; j++)
                        if (top[j] == so.token)
                            e->in_set[p] = 1;
                }
            }
        }
        free(hp);
    }
    e->n = p;
    e->seconds = dc->t_tokens;
    e->eevp_seconds = dc->t_eevp;
    free(top);
    free(tw);
}

/* ---- bigram baseline --------------------------------------------------------- */

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Held-out perplexity of 0.9 * bigram + 0.1 * add-one unigram, counted on the
 * training split (train.py's bigram_eval), over the same positions. */
static double bigram_ppl(const stream *train, const stream *test, int64_t n_pos, int32_t V,
                         double *acc)
{
    uint32_t *keys = xmalloc((size_t)train->n * sizeof(uint32_t));
    double *uni = calloc((size_t)V, sizeof(double)), *prev_tot = calloc((size_t)V, sizeof(double));
    int32_t *best = xmalloc((size_t)V * sizeof(int32_t));
    int64_t *bestc = calloc((size_t)V, sizeof(int64_t));
    int64_t i, nk = train->n - 1, c, p = 0, hits = 0;
    double ll = 0, utot = 0;
    int32_t argu = 0, v;

    if (uni == NULL || prev_tot == NULL || bestc == NULL)
        die("out of memory");
    for (i = 0; i < train->n; i++)
        uni[train->ids[i]] += 1;
    for (i = 0; i < nk; i++) {
        keys[i] = (uint32_t)train->ids[i] * (uint32_t)V + (uint32_t)train->ids[i + 1];
        prev_tot[train->ids[i]] += 1;
    }
    qsort(keys, (size_t)nk, sizeof *keys, cmp_u32);
    for (v = 0; v < V; v++) {
        utot += uni[v];
        if (uni[v] > uni[argu])
            argu = v;
    }
    for (v = 0; v < V; v++)
        best[v] = argu;
    for (i = 0; i < nk; i = c) {
        uint32_t prev = keys[i] / (uint32_t)V;
        for (c = i; c < nk && keys[c] == keys[i]; c++)
            ;
        if (c - i > bestc[prev]) {
            bestc[prev] = c - i;
            best[prev] = (int32_t)(keys[i] % (uint32_t)V);
        }
    }
    for (c = 0; p < n_pos && (c + 1) * CHUNK < test->n; c++)
        for (i = 0; i < CHUNK && p < n_pos; i++, p++) {
            int32_t a = test->ids[c * CHUNK + i], b = test->ids[c * CHUNK + i + 1];
            uint32_t key = (uint32_t)a * (uint32_t)V + (uint32_t)b;
            int64_t lo = 0, hi = nk, cnt = 0;
            double pb;
            while (lo < hi) {
                int64_t mid = (lo + hi) / 2;
                if (keys[mid] < key)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            while (lo + cnt < nk && keys[lo + cnt] == key)
                cnt++;
            pb = prev_tot[a] > 0 ? (double)cnt / prev_tot[a] : 0;
            ll += log(0.9 * pb + 0.1 * (uni[b] + 1) / (utot + V));
            hits += best[a] == b;
        }
    free(keys);
    free(uni);
    free(prev_tot);
    free(best);
    free(bestc);
    *acc = p ? (double)hits / (double)p : 0;
    return exp(-ll / (double)(p ? p : 1));
}

/* ---- options ------------------------------------------------------------------ */

typedef struct opts {
    const char *model, *wordnet, *out, *mode;
    int32_t k, first, max_new, val_tokens, test_tokens, gen, final_policy;
    float threshold, temp;
    uint64_t seed;
    char **args;
    int n_args;
} opts;

static void parse(opts *o, int argc, char **argv)
{
    int i;
    memset(o, 0, sizeof *o);
    o->model = "examples/tinylm/model";
    o->wordnet = "/usr/share/wordnet";
    o->k = 64;
    o->first = -1;
    o->threshold = -1;
    o->max_new = 32;
    o->val_tokens = 1024;
    o->test_tokens = 2048;
    o->gen = 8;
    o->seed = 42;
    o->final_policy = EEVP_FINAL_PRUNED;
    o->args = xmalloc((size_t)argc * sizeof(char *));
    for (i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define OPT(name) (strcmp(a, name) == 0 && v != NULL && ++i)
        if (OPT("--model")) o->model = v;
        else if (OPT("--wordnet")) o->wordnet = v;
        else if (OPT("--out")) o->out = v;
        else if (OPT("--mode")) o->mode = v;
        else if (OPT("--k")) o->k = atoi(v);
        else if (OPT("--first")) o->first = atoi(v);
        else if (OPT("--threshold")) o->threshold = (float)atof(v);
        else if (OPT("--max-new")) o->max_new = atoi(v);
        else if (OPT("--val-tokens")) o->val_tokens = atoi(v);
        else if (OPT("--test-tokens")) o->test_tokens = atoi(v);
        else if (OPT("--gen")) o->gen = atoi(v);
        else if (OPT("--temp")) o->temp = (float)atof(v);
        else if (OPT("--seed")) o->seed = (uint64_t)strtoull(v, NULL, 10);
        else if (OPT("--final")) o->final_policy = strcmp(v, "full") == 0 ? EEVP_FINAL_FULL
                                                                          : EEVP_FINAL_PRUNED;
        else if (a[0] == '-' && a[1] == '-') die("unknown or incomplete option %s", a);
        else o->args[o->n_args++] = argv[i];
#undef OPT
    }
    if (o->seed == 0)
        o->seed = 42;
}

/* ---- generate ---------------------------------------------------------------- */

static void generate_one(runner *r, decoder *dc, const char *prompt, const opts *o,
                         double *layers_sum, int64_t *n_tok, double *secs)
{
    int32_t ids[MAX_SEQ], n = 0, i, gen[MAX_SEQ], ng = 0;
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
    for (i = 0; i < n; i++)
        decode_step(dc, ids[i], i, o->temp, &rng, &so);
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

static const char *default_prompts[] = {
    "violin:", "river:", "happiness:", "to run:", "bright, shining:", "king:",
};

static void run_generate(runner *r, const opts *o, const dec_cfg *base)
{
    int m, p, n_prompts = o->n_args > 0 ? o->n_args : (int)(sizeof default_prompts /
                                                            sizeof *default_prompts);
    const char **prompts = o->n_args > 0 ? (const char **)o->args : default_prompts;
    printf("generation (%s, max %d new tokens; layers 1..%d, K=%d, first checked layer %d, "
           "threshold %.3f):\n", o->temp > 0 ? "sampling" : "greedy", (int)o->max_new,
           (int)r->L, (int)base->k, (int)base->first, (double)base->threshold);
    for (p = 0; p < n_prompts; p++) {
        for (m = 0; m < 3; m++) {
            decoder dc;
            dec_cfg cfg = *base;
            double ls = 0, secs = 0;
            int64_t nt = 0;
            if (o->mode != NULL && m != (strcmp(o->mode, "full") == 0 ? 0 :
                                          strcmp(o->mode, "ee") == 0 ? 1 : 2))
                continue;
            cfg.mode = m;
            decoder_open(&dc, r, &cfg);
            generate_one(r, &dc, prompts[p], o, &ls, &nt, &secs);
            decoder_close(&dc);
        }
    }
}

/* ---- demo / sweep -------------------------------------------------------------- */

typedef struct point {
    dec_cfg cfg;
    double agreement, mean_layers, saved;
} point;

static double layers_used(const eval_out *e)
{
    double s = 0;
    int64_t i;
    for (i = 0; i < e->n; i++)
        s += e->layer[i] + 1;
    return e->n ? s / (double)e->n : 0;
}

static double agreement(const eval_out *a, const eval_out *full)
{
    int64_t i, same = 0;
    for (i = 0; i < a->n; i++)
        same += a->pred[i] == full->pred[i];
    return a->n ? (double)same / (double)a->n : 0;
}

static point run_point(runner *r, const dec_cfg *cfg, const stream *s, int64_t n,
                       const eval_out *full, eval_out *keep)
{
    decoder dc;
    eval_out e;
    point pt;
    decoder_open(&dc, r, cfg);
    evaluate(&dc, s, n, 0, 0, &e);
    decoder_close(&dc);
    pt.cfg = *cfg;
    pt.agreement = agreement(&e, full);
    pt.mean_layers = layers_used(&e);
    pt.saved = 1.0 - pt.mean_layers / r->L;
    if (keep != NULL)
        *keep = e;
    else
        eval_free(&e);
    return pt;
}

static const float thresholds[] = { 0.9f, 0.7f, 0.5f, 0.4f, 0.3f, 0.2f, 0.15f, 0.1f,
                                    0.07f, 0.05f, 0.03f, 0.02f, 0.01f };
#define N_THRESHOLDS ((int)(sizeof thresholds / sizeof *thresholds))

static double min_sum(const double *a, const double *b, int64_t n)
{
    double t = 0;
    int64_t i;
    for (i = 0; i < n; i++)
        t += a[i] < b[i] ? a[i] : b[i];
    return t;
}

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median over positions of min(a[i] - a2[i], b[i] - b2[i]) (a2/b2 may be NULL). */
static double med_min(const double *a, const double *b, const double *a2, const double *b2,
                      int64_t n)
{
    double *v = xmalloc((size_t)n * sizeof(double)), m;
    int64_t i;
    for (i = 0; i < n; i++) {
        double x = a[i] - (a2 ? a2[i] : 0), y = b[i] - (b2 ? b2[i] : 0);
        v[i] = x < y ? x : y;
    }
    qsort(v, (size_t)n, sizeof *v, cmp_dbl);
    m = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
    free(v);
    return m;
}

static double conf_time(const eval_out *a, const eval_out *b, double head, int64_t n)
{
    double later = 0, excess = med_min(a->first_sec, b->first_sec, NULL, NULL, n) - head;
    int64_t i;
    for (i = 0; i < n; i++) {
        double x = a->eevp_sec[i] - a->first_sec[i], y = b->eevp_sec[i] - b->first_sec[i];
        later += x < y ? x : y;
    }
    return later + (excess > 0 ? excess : 0) * (double)n;
}

static void run_demo(runner *r, const opts *o)
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
}

/* Quality/speed over thresholds and K on the test split, as CSV. */
static void run_sweep(runner *r, const opts *o)
{
    static const int32_t ks[] = { 0, 16, 64, 256 };
    stream test = { 0 };
    eval_out ft;
    decoder d;
    dec_cfg cfg;
    int ki, ti;
    int64_t n = o->test_tokens;
    FILE *csv = o->out ? fopen(o->out, "w") : NULL;

    if (o->out && csv == NULL)
        die("%s: cannot write", o->out);
    load_split(r, o->wordnet, 2, n + 2 * CHUNK + n / CHUNK + 8, &test);
    memset(&cfg, 0, sizeof cfg);
    cfg.first = o->first >= 0 ? o->first : 2;
    cfg.final_policy = o->final_policy;
    cfg.mode = MODE_FULL;
    decoder_open(&d, r, &cfg);
    evaluate(&d, &test, n, 0, 0, &ft);
    decoder_close(&d);
    printf("k,threshold,agreement,layers_saved,tokens_per_s,speedup_vs_full\n");
    if (csv)
        fprintf(csv, "k,threshold,agreement,layers_saved,tokens_per_s,speedup_vs_full\n");
    for (ki = 0; ki < (int)(sizeof ks / sizeof *ks); ki++)
        for (ti = 0; ti < N_THRESHOLDS; ti++) {
            eval_out e;
            point pt;
            cfg.mode = ks[ki] ? MODE_PRUNED : MODE_EE;
            cfg.k = ks[ki];
            cfg.threshold = thresholds[ti];
            pt = run_point(r, &cfg, &test, n, &ft, &e);
            printf("%d,%.3f,%.4f,%.4f,%.1f,%.3f\n", (int)cfg.k, (double)cfg.threshold,
                   pt.agreement, pt.saved, (double)e.n / e.seconds, ft.seconds / e.seconds);
            if (csv)
                fprintf(csv, "%d,%.3f,%.4f,%.4f,%.1f,%.3f\n", (int)cfg.k,
                        (double)cfg.threshold, pt.agreement, pt.saved,
                        (double)e.n / e.seconds, ft.seconds / e.seconds);
            eval_free(&e);
        }
    if (csv)
        fclose(csv);
    eval_free(&ft);
    free(test.ids);
}

/* ---- policies: candidate-set policies against the plain method (docs/POLICIES.md) -- */

static int cmp_count_desc(const void *a, const void *b)
{
    const int64_t *x = (const int64_t *)a, *y = (const int64_t *)b;
    return (x[0] < y[0]) - (x[0] > y[0]);
}

/* The n most frequent token ids of a stream (ties: smaller id). */
static int32_t *frequent_ids(const stream *s, int32_t V, int32_t n)
{
    int64_t *cnt = xmalloc((size_t)V * 2 * sizeof(int64_t)), i;
    int32_t *ids = xmalloc((size_t)n * sizeof(int32_t)), v;
    for (v = 0; v < V; v++) {
        cnt[2 * v] = 0;
        cnt[2 * v + 1] = v;
    }
    for (i = 0; i < s->n; i++)
        cnt[2 * s->ids[i]]++;
    qsort(cnt, (size_t)V, 2 * sizeof(int64_t), cmp_count_desc);
    for (v = 0; v < n; v++)
        ids[v] = (int32_t)cnt[2 * v + 1];
    free(cnt);
    return ids;
}

static void run_policies(runner *r, const opts *o)
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

/* ---- verify: dumps for the PyTorch cross-check ------------------------------------ */

static void print_floats(FILE *f, const float *x, int64_t n)
{
    int64_t i;
    fputc('[', f);
    for (i = 0; i < n; i++)
        fprintf(f, "%s%.9g", i ? "," : "", (double)x[i]);
    fputc(']', f);
}

static void run_verify(runner *r, const opts *o)
{
    const char *prompt = o->n_args > 0 ? o->args[0] : "violin: a bowed stringed instrument";
    int32_t ids[MAX_SEQ], n = 0, i, l;
    int64_t np;
    step_out so;
    decoder dfull, dpr;
    dec_cfg cfg;
    FILE *f;
    float *h = xmalloc((size_t)r->d * sizeof(float));
    int32_t kvd = r->m.cfg.n_kv_heads * r->m.cfg.head_dim, first = o->first >= 0 ? o->first : 2;

    if (o->out == NULL)
        die("verify needs --out FILE.json");
    f = fopen(o->out, "w");
    if (f == NULL)
        die("%s: cannot write", o->out);
    ids[n++] = tl_tok_bos(r->tok);
    np = tl_tok_encode(r->tok, prompt, ids + 1, 64);
    if (np < 1 || np > 64)
        die("prompt must have 1..64 pieces");
    n += (int32_t)np;
    memset(&cfg, 0, sizeof cfg);
    cfg.mode = MODE_FULL;
    decoder_open(&dfull, r, &cfg);
    fprintf(f, "{\"prompt_ids\":[");
    for (i = 0; i < n; i++)
        fprintf(f, "%s%d", i ? "," : "", (int)ids[i]);
    /* 1. Full-depth logits at every prompt position, then greedy continuation. */
    fprintf(f, "],\n\"logits\":[");
    for (i = 0; i < n; i++) {
        decode_step(&dfull, ids[i], i, 0, NULL, &so);
        if (i)
            fputc(',', f);
        print_floats(f, r->logits, r->V);
        fputc('\n', f);
    }
    fprintf(f, "],\n\"greedy\":[");
    for (i = 0; i < o->gen; i++) {
        fprintf(f, "%s%d", i ? "," : "", (int)so.token);
        decode_step(&dfull, so.token, n + i, 0, NULL, &so);
    }
    /* 2. State propagation: positions 0..n-2 at full depth again (fresh cache
     * contents are overwritten position by position), the last prompt token
     * with early exit at threshold 0 so that it exits at `first`. */
    for (i = 0; i < n - 1; i++)
        decode_step(&dfull, ids[i], i, 0, NULL, &so);
    cfg.mode = MODE_PRUNED;
    cfg.k = o->k;
    cfg.first = first;
    cfg.threshold = 0.0f;
    cfg.final_policy = EEVP_FINAL_FULL;
    decoder_open(&dpr, r, &cfg);
    decode_step(&dpr, ids[n - 1], n - 1, 0, NULL, &so);
    memcpy(h, r->x, (size_t)r->d * sizeof(float));
    fprintf(f, "],\n\"exit\":{\"position\":%d,\"layer\":%d,\"token\":%d,\"confidence\":%.9g,"
            "\"hidden\":", (int)(n - 1), (int)so.layer, (int)so.token, (double)so.confidence);
    print_floats(f, h, r->d);
    fprintf(f, ",\n\"k\":{");
    for (l = so.layer + 1; l < r->L; l++) {
        fprintf(f, "%s\"%d\":", l > so.layer + 1 ? "," : "", (int)l);
        print_floats(f, tl_cache_k(&r->st, l, n - 1), kvd);
    }
    fprintf(f, "},\n\"v\":{");
    for (l = so.layer + 1; l < r->L; l++) {
        fprintf(f, "%s\"%d\":", l > so.layer + 1 ? "," : "", (int)l);
        print_floats(f, tl_cache_v(&r->st, l, n - 1), kvd);
    }
    fprintf(f, "}}}\n");
    fclose(f);
    decoder_close(&dfull);
    decoder_close(&dpr);
    free(h);
    printf("wrote %s: %d prompt positions, %d greedy tokens, exit at layer %d of %d\n",
           o->out, (int)n, (int)o->gen, (int)so.layer, (int)r->L);
}

/* ---- main ------------------------------------------------------------------------ */

static void usage(void)
{
    fprintf(stderr,
            "usage: tinylm COMMAND [options]\n"
            "  generate [PROMPT...]   text in the three modes (--mode full|ee|pruned)\n"
            "  demo                   operating point on validation, test evaluation\n"
            "  sweep                  agreement and speed over thresholds and K (CSV)\n"
            "  policies               candidate-set policies against the plain method\n"
            "  verify --out F.json    dumps for the PyTorch cross-check\n"
            "  inspect                load a checkpoint and summarise it\n"
            "  tensors FILE           list a safetensors file\n"
            "  lines SPLIT            WordNet text of split 0 (train), 1 (val), 2 (test)\n"
            "options: --model DIR (examples/tinylm/model)  --k K (64)  --first F\n"
            "  --threshold T  --final pruned|full  --temp T (0: greedy)  --seed S\n"
            "  --max-new N  --val-tokens N  --test-tokens N  --wordnet DIR  --out FILE\n");
    exit(2);
}

int main(int argc, char **argv)
{
    opts o;
    runner r;
    const char *cmd;
    char msg[1024];

    if (argc < 2)
        usage();
    cmd = argv[1];
    parse(&o, argc - 2, argv + 2);
    /* Matrix-vector products of a d=256 model are too small for threads. */
    if (getenv("OPENBLAS_NUM_THREADS") == NULL)
        openblas_set_num_threads(1);
    if (strcmp(cmd, "tensors") == 0) {
        if (o.n_args != 1)
            usage();
        if (tl_safetensors_list(o.args[0], msg, sizeof msg) != 0)
            die("%s", msg);
        free(o.args);
        return 0;
    }
    if (strcmp(cmd, "lines") == 0) {
        int64_t n, i;
        char **lines;
        if (o.n_args != 1)
            usage();
        lines = tl_wordnet_lines(o.wordnet, atoi(o.args[0]), &n, msg, sizeof msg);
        if (lines == NULL)
            die("%s", msg);
        for (i = 0; i < n; i++)
            printf("%s\n", lines[i]);
        tl_lines_free(lines, n);
        free(o.args);
        return 0;
    }
    if (strcmp(cmd, "generate") != 0 && strcmp(cmd, "demo") != 0 &&
        strcmp(cmd, "sweep") != 0 && strcmp(cmd, "verify") != 0 && strcmp(cmd, "inspect") != 0 &&
        strcmp(cmd, "policies") != 0)
        usage();
    runner_open(&r, o.model);
    if (strcmp(cmd, "inspect") == 0) {
        printf("%s: llama, %d layers, d=%d, %d heads (%d K/V heads, head_dim %d), ffn %d, "
               "vocab %d, %s embeddings; %d file(s), %zu floats converted, %zu used in place\n",
               o.model, (int)r.L, (int)r.d, (int)r.m.cfg.n_heads, (int)r.m.cfg.n_kv_heads,
               (int)r.m.cfg.head_dim, (int)r.m.cfg.intermediate_size, (int)r.V,
               r.m.cfg.tie_embeddings ? "tied" : "separate", (int)r.m.n_files,
               r.m.arena_floats, r.m.in_place_floats);
    } else if (strcmp(cmd, "generate") == 0) {
        dec_cfg cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.k = o.k;
        cfg.first = o.first >= 0 ? o.first : 2;
        cfg.threshold = o.threshold >= 0 ? o.threshold : 0.1f;
        cfg.final_policy = o.final_policy;
        run_generate(&r, &o, &cfg);
    } else if (strcmp(cmd, "demo") == 0) {
        run_demo(&r, &o);
    } else if (strcmp(cmd, "sweep") == 0) {
        run_sweep(&r, &o);
    } else if (strcmp(cmd, "policies") == 0) {
        run_policies(&r, &o);
    } else {
        run_verify(&r, &o);
    }
    runner_close(&r);
    free(o.args);
    return 0;
}
