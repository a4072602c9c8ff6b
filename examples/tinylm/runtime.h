/* SPDX-License-Identifier: MIT */
/*
 * runtime.h - what the files of the tinylm runtime share: the runner (model,
 * tokenizer and libeevp head), the decoder of one mode, the text streams, the
 * teacher-forced evaluation and its measurements, and the command-line
 * options.  decode.c holds the decoding loops, eval.c the evaluation, demo.c
 * the reports built on it, main.c the command line.  Not part of libeevp.
 */
#ifndef TINYLM_RUNTIME_H
#define TINYLM_RUNTIME_H

#include "tinylm.h"

#include <eevp.h>
#include <stddef.h>
#include <stdint.h>

#define MAX_SEQ 512
#define CHUNK 128

enum { MODE_FULL = 0, MODE_EE = 1, MODE_PRUNED = 2 };
extern const char *const mode_name[3]; /* indexed by MODE_* (decode.c) */

/* ---- options (main.c) ------------------------------------------------------- */

typedef struct opts {
    const char *model, *wordnet, *out, *mode;
    int32_t k, first, max_new, val_tokens, test_tokens, gen, final_policy;
    float threshold, temp;
    uint64_t seed;
    char **args;
    int n_args;
} opts;

/* ---- small helpers (decode.c) ---------------------------------------------- */

/* "tinylm: " + message on stderr, then exit(1). */
void die(const char *fmt, ...);
double now(void);               /* CLOCK_MONOTONIC, in seconds */
void *xmalloc(size_t n);        /* malloc or die */

/* ---- the runner: model + tokenizer + libeevp head (decode.c) ---------------- */

typedef struct runner {
    tl_model m;
    tl_state st;
    tl_tok *tok;
    eevp_head *head;
    void *work;
    float *logits, *x;
    int32_t L, d, V;
} runner;

void runner_open(runner *r, const char *dir);
void runner_close(runner *r);

/* ---- a decoder: one mode on a runner (decode.c) ------------------------------ */

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

void decoder_open(decoder *dc, runner *r, const dec_cfg *cfg);
void decoder_close(decoder *dc);
void decoder_reset_stats(decoder *dc);
/* Index of the largest of n values (ties: the lowest index). */
int32_t argmax(const float *x, int32_t n);
/* Decode one token: feed `token` at `pos`; the next token in out, greedy, or
 * sampled at temperature temp > 0 from the deciding candidates. */
void decode_step(decoder *dc, int32_t token, int32_t pos, float temp, uint64_t *rng,
                 step_out *out);
/* A prompt of n tokens at positions 0 .. n-1: the first n - 1 through the
 * batched prefill (every layer, no exits, whatever the mode), the last
 * through decode_step in dc's mode; out gets the first generated token. */
void prefill_prompt(decoder *dc, const int32_t *ids, int32_t n, float temp, uint64_t *rng,
                    step_out *out);
/* Generate from one prompt and print the line; adds to the layer, token and
 * time totals. */
void generate_one(runner *r, decoder *dc, const char *prompt, const opts *o,
                  double *layers_sum, int64_t *n_tok, double *secs);

/* ---- lossless early exit: the spec mode (spec.c) ------------------------------ */

typedef struct spec_cfg {
    const eevp_ctx_options *policy; /* drafting candidate-set policy fields, or NULL */
    int32_t k;           /* the drafting context's pruned set */
    int32_t first;       /* its first checked layer */
    int32_t depth_limit; /* a draft not confident by this layer ends the round */
    int32_t max_draft;   /* 1 .. EEVP_MAX_DRAFT */
    float threshold;
    float temp;          /* 0: greedy; > 0: speculative sampling */
    uint64_t seed;
} spec_cfg;

typedef struct spec_dec {
    runner *r;
    spec_cfg cfg;
    eevp_ctx *dctx;      /* drafting: layers 0 .. depth_limit */
    eevp_spec *sp;
    uint8_t *required;
    float *xs;           /* (max_draft + 1) x d: kept, then completed states */
    int32_t toks[EEVP_MAX_DRAFT + 1]; /* the last round's t_0 .. t_n */
    int32_t n;           /* ... its number of drafts */
    int32_t *m;          /* per round position: exact up to this layer */
    /* time accounting */
    double t_draft, t_complete, t_verify;
    int64_t rounds, emitted, drafted, accepted;
} spec_dec;

void spec_open(spec_dec *s, runner *r, const spec_cfg *cfg);
void spec_close(spec_dec *s);
void spec_reset_stats(spec_dec *s);
/* One round from t0 (the last emitted token, at pos): drafts, completes the
 * round's positions through every layer (batched per layer), verifies;
 * writes the emitted tokens (accepted drafts, then the correction or bonus)
 * to out (max_draft + 1 room) and returns how many. */
int32_t spec_round(spec_dec *s, int32_t t0, int32_t pos, uint64_t key, int32_t *out);
/* Free-running from prompts of len ids (prefill, then rounds), n_new tokens
 * each into out[p * n_new + j]; seconds taken. */
double spec_freerun(spec_dec *s, const int32_t *prompts, int32_t n_prompts, int32_t len,
                    int32_t n_new, int32_t *out);

/* The demo's lossless part (demo_spec.c): settings on validation, the spec
 * figures on the test prompts. */
void run_demo_spec(runner *r, const opts *o);
/* Greedy spec against full depth on the given prompts and the free-running
 * ones; 0 when every continuation is identical (tinylm check-spec). */
int run_check_spec(runner *r, const opts *o, const char *const *prompts, int n_prompts);

/* ---- text (eval.c) ----------------------------------------------------------- */

typedef struct stream {
    int32_t *ids;
    int64_t n, cap;
} stream;

/* BOS + pieces of each line of WordNet split `split` (0 train, 1 validation,
 * 2 test), appended to s until it holds max_tokens ids (<= 0: every line). */
void load_split(runner *r, const char *wn, int split, int64_t max_tokens, stream *s);

/* ---- teacher-forced evaluation (eval.c) -------------------------------------- */

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

void eval_free(eval_out *e);
void evaluate(decoder *dc, const stream *s, int64_t n_pos, int32_t oracle_k,
              int32_t oracle_layer, eval_out *e);
/* Held-out perplexity (and accuracy in *acc) of the bigram baseline. */
double bigram_ppl(const stream *train, const stream *test, int64_t n_pos, int32_t V,
                  double *acc);

/* ---- measurements for demo / sweep / policies (eval.c) ------------------------ */

/* Free-running agreement: n_prompts held-out prompts, BOS plus the first
 * plen tokens of lines 0 .. n_prompts-1 of a split (2: test; 1: validation,
 * for choosing settings), a shorter line continuing
 * into the next as in the test stream (plen + 1 ids each, one after the
 * other; malloc'd).  freerun generates n_new greedy tokens from each
 * (prompts of len ids) in dc's mode into out[p * n_new + j] and returns the
 * seconds taken; freerun_agreement gives the mean length of the prefix
 * identical to full depth's and the share of identical continuations. */
#define FREERUN_PROMPTS 64
#define FREERUN_PROMPT_TOKENS 8
#define FREERUN_NEW 32
int32_t *freerun_prompts(runner *r, const char *wn, int split, int32_t n_prompts, int32_t plen);
double freerun(decoder *dc, const int32_t *prompts, int32_t n_prompts, int32_t len,
               int32_t n_new, int32_t *out);
/* The same sampled at temp (> 0), prompt p's generator seeded from seed and
 * p: the baseline of the sampled spec mode. */
double freerun_sampled(decoder *dc, const int32_t *prompts, int32_t n_prompts, int32_t len,
                       int32_t n_new, float temp, uint64_t seed, int32_t *out);
void freerun_agreement(const int32_t *a, const int32_t *full, int32_t n_prompts, int32_t n_new,
                       double *mean_prefix, double *share_identical);

typedef struct point {
    dec_cfg cfg;
    double agreement, mean_layers, saved;
} point;

double layers_used(const eval_out *e);
double agreement(const eval_out *a, const eval_out *full);
point run_point(runner *r, const dec_cfg *cfg, const stream *s, int64_t n,
                const eval_out *full, eval_out *keep);
double min_sum(const double *a, const double *b, int64_t n);
double med_min(const double *a, const double *b, const double *a2, const double *b2,
               int64_t n);
double conf_time(const eval_out *a, const eval_out *b, double head, int64_t n);
int32_t *frequent_ids(const stream *s, int32_t V, int32_t n);

/* ---- the commands (demo.c, main.c) -------------------------------------------- */

void run_generate(runner *r, const opts *o, const dec_cfg *base);
void run_demo(runner *r, const opts *o);
void run_sweep(runner *r, const opts *o);
void run_policies(runner *r, const opts *o);

#endif
