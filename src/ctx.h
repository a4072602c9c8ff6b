/* SPDX-License-Identifier: MIT */
/* ctx.h - the context object, shared by ctx.c and step.c; not API. */
#ifndef EEVP_CTX_H
#define EEVP_CTX_H

#include "internal.h"

/* Per-sequence state of the current step. */
typedef struct eevpi_seq {
    eevp_result res;
    int32_t position;
    int32_t slot;       /* logits slot holding this sequence's logits */
    int32_t cand_n;     /* logits in the slot for a resolved sequence */
    int32_t cand_full;  /* 1: slot holds V logits by local row; 0: over the set */
    int32_t has_set;    /* a pruned set is held */
    int32_t has_prev_h; /* prev_hidden holds the previous check's row */
    int32_t has_prev_p; /* prev_dist holds the previous check's distribution */
    int32_t last_top1;  /* stability: top-1 id and how many checks it held */
    int32_t run;
    /* The pruned set: its own block, or the context's shared static one. */
    int32_t set_n;
    const int32_t *set_ids;
    const float *set_rows; /* set_n x d, packed */
    const float *set_bias; /* set_n, or NULL without a logit bias */
    /* Shard contexts (shard.c): the candidates of the decision, merged from
     * every shard (NULL otherwise: the slot's logits), and the set members
     * this shard owns: their rows are set_rows[0 .. own_n-1]. */
    const float *cand_z;
    const int32_t *cand_ids;
    int32_t own_n;
} eevpi_seq;

/* Statistics counters (the public struct minus its derived fields). */
typedef struct eevpi_counts {
    int64_t tokens, exited_early, reached_last, failed, checks, pruned_decisions;
    int64_t cov_hits, cov_total;
    int64_t flops, flops_base, bytes, bytes_base;
    int64_t pruned_sets, set_size_sum, reprunes, reprune_changed;
    int64_t always_emitted, static_emitted, exact_exits, exact_exit_changed;
    int64_t shard_exchanges, shard_sent, shard_received;
} eevpi_counts;

/* A vocabulary-parallel shard's configuration (eevp_shard_options, checked). */
typedef struct eevpi_shard_cfg {
    int32_t index, n_shards, ktop;
    int64_t total_vocab;
} eevpi_shard_cfg;

struct eevp_ctx {
    eevpi_mem mem;
    const eevp_head *head;
    eevp_ctx_options o;
    int32_t p;          /* pruning layer */
    int32_t k;          /* dynamic top-K (fixed, or the adaptive maximum); 0: none */
    int32_t kmax;       /* largest set a sequence can hold; 0: pruning off */
    int32_t criterion;  /* eevp_criterion */
    int32_t needs;      /* EEVP_NEEDS_* of the criterion in use */
    int32_t never_exit; /* threshold +INFINITY: no check before the last layer */
    eevp_criterion_vtbl user;
    void *user_state;

    /* Candidate-set policies: sorted, de-duplicated, inside the head. */
    int32_t n_always, n_static;
    int32_t *always, *statics;
    int32_t shared_n;       /* EEVP_STATIC_ONLY: the one set, gathered once */
    int32_t *shared_ids;
    float *shared_rows, *shared_bias;

    /* Union plan (batch.c) of the sets built at the latest pruning or
     * re-pruning layer of this step, when eevpi_union_pick chose it: its
     * rows live in `rows`, and the per-sequence blocks are not gathered.
     * Arrays exist only with per-sequence sets and max_batch >= 2. */
    int32_t uni_on;
    eevpi_union uni;
    int32_t *uni_idx;        /* max_batch: each sequence's index in the plan, -1 */
    int32_t *uni_k;          /* max_batch: set sizes in plan order */
    const int32_t **uni_ids; /* max_batch: set ids in plan order */
    float **uni_z;           /* max_batch: logits per checked sequence */
    int32_t *uni_act;        /* max_batch: plan index per checked sequence */
    int64_t *uni_keys;       /* 2 max_batch K: the plan's sort scratch */
    float *uni_work;         /* 2 max_batch K: the dense pass's products */

    eevpi_pool *pool;        /* n_threads >= 2: the worker threads; else NULL */

    /* step */
    int32_t active, n_seq, last_layer, busy;
    eevpi_seq *seq;       /* max_batch */
    int32_t *row_of_seq;  /* max_batch, scratch for one layer call */
    int32_t *list;        /* max_batch, scratch: sequences to project */
    int32_t *slot_owner;  /* max_batch: sequence owning each logits slot, -1 */
    const float **hrow;   /* max_batch, scratch: raw hidden row of list[i] */

    /* arena */
    void *block;
    int64_t bytes;        /* everything allocated */
    float *logits;        /* max_batch slots x V */
    int32_t *set;         /* max_batch x kmax global ids */
    float *rows;          /* max_batch x kmax x d gathered rows */
    float *set_bias;      /* max_batch x kmax, NULL without a logit bias */
    float *prev_hidden;   /* max_batch x d */
    void *screen_work;    /* EEVP_CTX_SCREEN: eevpi_screen_work_size(head, k) */
    float *prev_dist;     /* max_batch x dist_len, JS only */
    int64_t dist_len;
    float *xn;            /* max_batch x d normalised rows */
    int32_t *iota;        /* V global ids */
    eevpi_pair *pairs;    /* max(V, max_batch): top-K, sorting and other scratch */
    unsigned char *mark;  /* V: set membership scratch, all zero between uses */
    int64_t *hist;        /* n_layers committed */
    int64_t *size_hist, *size_hist_pending; /* kmax + 1 each */

    /* Vocabulary-parallel shard (shard.c); sh.n_shards 0 otherwise. */
    eevpi_shard_cfg sh;
    uint64_t sh_step;      /* steps begun: part of the records' fingerprint */
    int32_t sh_kind;       /* pending exchange: EEVPI_REC_FULL / _SET, 0 none */
    int32_t sh_round, sh_setsec;
    int64_t sh_size;       /* its record's size */
    uint64_t sh_hash;      /* its hidden states' hash */
    unsigned char *sh_part;/* max_batch: sequence takes part in it */
    float *sh_h;           /* max_batch x d: the layer's raw hidden rows, kept
                              only for criteria that read them later */
    int32_t *sh_xi;        /* max_batch: each sequence's row in xn */
    float *sh_topz;        /* max_batch x ktop merged candidates ... */
    int32_t *sh_topi;      /* ... and their ids */
    float *sh_setz;        /* max_batch x kmax merged set logits */
    int32_t *sh_own;       /* max_batch x kmax positions of owned set members */
    int32_t *sh_ids;       /* max(ktop, kmax) ids scratch */
    eevpi_pair *sh_pairs;  /* ktop + P pairs scratch */
    void *sh_slots;        /* n_shards eevpi_slot scratch */
    double *sh_conf;       /* max_batch confidences of hidden checks */

    eevpi_counts stats, pending;
    char msg[EEVPI_MSG_SIZE];
};

/* Set the context's message and return code. */
int eevpi_ctx_fail(eevp_ctx *ctx, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
/* Clear the message; EEVP_EINVAL / EEVP_EBUSY for an unusable context. */
int eevpi_ctx_enter(eevp_ctx *ctx);
/* 1 when the criterion runs at `layer`: a configured checked layer, or
 * under threshold +INFINITY the last layer only. */
int eevpi_ctx_is_checked(const eevp_ctx *ctx, int32_t layer);
int eevpi_ctx_required(const eevp_ctx *ctx, int32_t layer);
/* 1 when `layer` re-prunes (a configured checked layer after p, not the
 * last; under threshold +INFINITY only when the final policy needs the set). */
int eevpi_ctx_reprunes(const eevp_ctx *ctx, int32_t layer);
/* 1 when pruning is active: a logits criterion and a set to hold (under
 * threshold +INFINITY only for EEVP_FINAL_PRUNED, the one use of the set). */
int eevpi_ctx_pruning(const eevp_ctx *ctx);
float eevpi_ctx_lambda(const eevp_ctx *ctx, int32_t t);
/* Create a context; shard NULL for an unsharded one (ctx.c). */
int eevpi_ctx_create(eevp_ctx **out, const eevp_head *head, const eevp_ctx_options *opts,
                     const eevpi_shard_cfg *shard, char *msg, size_t msg_size);
/* Read and check options against the head (defaults for what struct_size
 * does not cover); EEVP_OK or an error with msg set. */
int eevpi_ctx_read_options(eevp_ctx_options *o, const eevp_head *head,
                           const eevp_ctx_options *opts, char *msg, size_t msg_size);

/* Shared by step.c and shard.c. */
typedef struct eevpi_check {
    double conf;
    int32_t exit;  /* 0 or 1 */
    int32_t token; /* global id of the top-1 candidate */
} eevpi_check;
int eevpi_step_running(const eevpi_seq *q);
void eevpi_step_fail_seq(eevp_ctx *ctx, int32_t s, int32_t layer, int code, int *first);
void eevpi_step_resolve(eevp_ctx *ctx, int32_t s, int32_t reason, int32_t token,
                        int32_t layer, int32_t pruned, double conf, int32_t cand_full,
                        int32_t cand_n);
int32_t eevpi_step_exits(double conf, float lambda);
void eevpi_step_count_projection(eevp_ctx *ctx, int64_t rows, int64_t bytes_per_weight);
void eevpi_step_count_check(eevp_ctx *ctx);
/* The criterion on candidate logits z[0..n-1] over ids (NULL: the head's
 * rows) for a pruned decision or a full one. */
int eevpi_step_check_logits(eevp_ctx *ctx, int32_t s, int32_t layer, const float *h,
                            const float *z, const int32_t *ids, int32_t n, int pruned,
                            int full_with_set, eevpi_check *c);
int eevpi_step_check_hidden(eevp_ctx *ctx, int32_t s, int32_t layer, const float *h,
                            eevpi_check *c);
void eevpi_step_remember_hidden(eevp_ctx *ctx, int32_t s, const float *h);
/* Store the softmax over sequence s's set, from the set's logits zs in set
 * order, as the distribution the next JS check compares against. */
void eevpi_step_remember_set_dist(eevp_ctx *ctx, int32_t s, const float *zs);
/* Map rows to sequences into row_of_seq, check the layer's order; *need
 * receives the next required layer.  EEVP_OK or an error with nothing
 * changed. */
int eevpi_step_layer_args(eevp_ctx *ctx, int32_t layer, const float *hidden, int64_t ld,
                          int32_t n_rows, const int32_t *row_seq, int32_t *need);

/* Binary search in a sorted id list. */
int eevpi_contains(const int32_t *ids, int32_t n, int32_t id);

#endif
