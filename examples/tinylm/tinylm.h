/* SPDX-License-Identifier: MIT */
/*
 * tinylm.h - internal interfaces of the tinylm reference runtime: a
 * Llama-architecture decoder (fp32 compute) that loads Hugging Face checkpoint
 * directories and decodes with libeevp's early exit.  Not part of libeevp.
 */
#ifndef TINYLM_H
#define TINYLM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- checkpoint (ckpt.c) ------------------------------------------------ */

typedef struct tl_config {
    int32_t vocab_size, hidden_size, intermediate_size, n_layers;
    int32_t n_heads, n_kv_heads, head_dim, max_pos;
    float rms_eps;
    double rope_theta;
    int32_t tie_embeddings;
    int32_t bos_id, eos_id;
} tl_config;

/* A weight matrix packed for tl_matmul (matmul.c). */
typedef struct tl_matrix {
    float *panels;         /* 16-row panels, column by column, zero-padded */
    int32_t rows, cols;
    int32_t portable;      /* 1: the portable kernel even on AVX2 (tests) */
} tl_matrix;

enum { TL_MM_Q, TL_MM_K, TL_MM_V, TL_MM_O, TL_MM_GATE, TL_MM_UP, TL_MM_DOWN, TL_MM_N };

typedef struct tl_layer {
    const float *attn_norm, *wq, *wk, *wv, *wo;
    const float *ffn_norm, *w_gate, *w_up, *w_down;
    tl_matrix mm[TL_MM_N]; /* the seven matrices packed (tl_model_load) */
} tl_layer;

typedef struct tl_file tl_file; /* one mapped safetensors file */

typedef struct tl_model {
    tl_config cfg;
    const float *embed;      /* V x d */
    const float *lm_head;    /* V x d (== embed when tied) */
    const float *final_norm; /* d */
    tl_layer *layers;
    /* ownership */
    tl_file *files;
    int32_t n_files;
    float *arena;            /* fp32 copies of half / unaligned tensors */
    size_t arena_floats;
    size_t in_place_floats;  /* fp32 tensors used straight from the map */
    char tokenizer_path[4096];
} tl_model;

/* Load the checkpoint directory `dir`.  0 on success; otherwise -1 and a
 * message naming the file (and tensor) in msg. */
int tl_model_load(tl_model *m, const char *dir, char *msg, size_t msg_size);
void tl_model_free(tl_model *m);

/* Parse one safetensors file into a list (for tests/inspection): prints the
 * tensors to stdout.  0 or -1 with msg. */
int tl_safetensors_list(const char *path, char *msg, size_t msg_size);

/* ---- batch-invariant matrix product (matmul.c) --------------------------- */

/* Pack W (rows x cols, row-major) into mx.  0, or -1 (bad shape, no memory). */
int tl_matrix_pack(tl_matrix *mx, const float *w, int32_t rows, int32_t cols);
void tl_matrix_free(tl_matrix *mx);
/* y[i*ldy + r] = W_r . x_i for the n >= 1 rows x_i (ldx apart): each output
 * one chain of FMAs over the columns in order, so the same bits whatever n,
 * the row and the kernel (AVX2/FMA or portable). */
void tl_matmul(const tl_matrix *mx, int32_t n, const float *x, int64_t ldx, float *y,
               int64_t ldy);
/* 1 when tl_matmul runs its AVX2/FMA kernel on this CPU. */
int tl_matmul_simd(void);

/* ---- forward pass (llama.c) --------------------------------------------- */

/* Largest batch of positions one layer call takes (prefill chunks). */
#define TL_MAX_BATCH 128

struct eevp_head;

typedef struct tl_state {
    const tl_model *m;
    int32_t max_seq;
    float *kcache, *vcache;  /* [layer][pos][n_kv_heads*head_dim] */
    float *rope_cos, *rope_sin; /* [pos][head_dim/2] */
    /* per-position scratch, TL_MAX_BATCH rows each */
    float *xn, *q, *att, *scores, *hb, *hb2, *tmp, *xb;
} tl_state;

int tl_state_init(tl_state *s, const tl_model *m, int32_t max_seq);
void tl_state_free(tl_state *s);
/* x = embedding of token */
void tl_embed(const tl_state *s, int32_t token, float *x);
/* Run layer l on the residual streams x (n rows of d floats, ldx apart) of
 * the tokens at positions pos0 .. pos0 + n - 1 (1 <= n <= TL_MAX_BATCH),
 * storing their K/V in the cache; attention is causal inside the batch.  A
 * position's results are bitwise the same whatever n (batch invariance).
 * 0, or -1 for a bad range or a non-finite state. */
int tl_layer_forward_batch(tl_state *s, int32_t l, int32_t pos0, int32_t n, float *x,
                           int64_t ldx);
/* The same for one token at pos. */
int tl_layer_forward(tl_state *s, int32_t l, int32_t pos, float *x);
/* State propagation: layer l computes only its K/V for the tokens at
 * pos0 .. pos0 + n - 1, taking x (their exit hidden states) as its input. */
int tl_layer_kv_only_batch(tl_state *s, int32_t l, int32_t pos0, int32_t n, const float *x,
                           int64_t ldx);
int tl_layer_kv_only(tl_state *s, int32_t l, int32_t pos, const float *x);
/* Batched prefill: the n tokens ids[] at positions pos0 .. pos0 + n - 1 go
 * through every layer together, in chunks of TL_MAX_BATCH positions; x_last
 * (d floats, may be NULL) receives the last position's final hidden state
 * (before the final norm).  0, or -1 on a bad id, range or state. */
int tl_prefill(tl_state *s, const int32_t *ids, int32_t pos0, int32_t n, float *x_last);
/* The batch-invariance test (batchtest.c): 0 when every position's hidden
 * states, K/V and logits (through lm, the model's libeevp head) are bitwise
 * equal alone and in batches of 2..16 and a prefill; 1 (and FAIL lines)
 * otherwise. */
int tl_check_batch(const tl_model *m, struct eevp_head *lm);
/* Measurements (measure.c).  Prefill: n_prompts prompts of len tokens
 * (ids, one after the other), each prefilled position by position through
 * tl_layer_forward and in one tl_prefill, interleaved; the median times in
 * ms.  Matmul: every weight matrix of every layer, the runtime's
 * fixed-order products over OpenBLAS's at B = 1 (SGEMV) and at B = batch
 * (SGEMM), medians of interleaved repetitions.  0, or -1. */
int tl_measure_prefill(const tl_model *m, const int32_t *ids, int32_t n_prompts, int32_t len,
                       double *ms_seq, double *ms_batch);
int tl_measure_matmul(const tl_model *m, int32_t batch, double *fixed_vs_sgemv_b1,
                      double *fixed_vs_sgemm_bn);
/* K or V cache row of layer l at pos (n_kv_heads*head_dim floats). */
const float *tl_cache_k(const tl_state *s, int32_t l, int32_t pos);
const float *tl_cache_v(const tl_state *s, int32_t l, int32_t pos);

/* ---- tokenizer (tok.cc, Debian's libsentencepiece) ---------------------- */

typedef struct tl_tok tl_tok;
tl_tok *tl_tok_load(const char *path, char *msg, size_t msg_size);
void tl_tok_free(tl_tok *t);
/* Encode text (no BOS); returns the number of ids (may exceed cap: only cap
 * are written), or -1. */
int64_t tl_tok_encode(tl_tok *t, const char *text, int32_t *ids, int64_t cap);
/* Decode ids into a malloc'd string (caller frees). */
char *tl_tok_decode(tl_tok *t, const int32_t *ids, int64_t n);
int32_t tl_tok_vocab(const tl_tok *t);
int32_t tl_tok_bos(const tl_tok *t);
int32_t tl_tok_eos(const tl_tok *t);

/* ---- WordNet text (text.c) ------------------------------------------------ */

/* The glosses of Debian's wordnet-base, one line per synset, split like
 * train/wordnet_text.py: split 0 = train, 1 = validation, 2 = test.
 * Returns a malloc'd array of malloc'd lines, count in *n; NULL on error. */
char **tl_wordnet_lines(const char *dir, int split, int64_t *n, char *msg, size_t msg_size);
void tl_lines_free(char **lines, int64_t n);

#ifdef __cplusplus
}
#endif

#endif
