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
    int32_t cand_full;  /* 1: slot holds V logits by local row; 0: K over set */
    int32_t has_set;    /* pruned set gathered this step */
    int32_t has_prev_h; /* prev_hidden holds the previous check's row */
    int32_t has_prev_p; /* prev_dist holds the previous check's distribution */
    int32_t last_top1;  /* stability: top-1 id and how many checks it held */
    int32_t run;
} eevpi_seq;

/* Statistics counters (the public struct minus its derived fields). */
typedef struct eevpi_counts {
    int64_t tokens, exited_early, reached_last, failed, checks, pruned_decisions;
    int64_t cov_hits, cov_total;
    int64_t flops, flops_base, bytes, bytes_base;
} eevpi_counts;

struct eevp_ctx {
    eevpi_mem mem;
    const eevp_head *head;
    eevp_ctx_options o;
    int32_t p;          /* pruning layer */
    int32_t k;          /* pruned set size, 0 when pruning is off */
    int32_t criterion;  /* eevp_criterion */
    int32_t needs;      /* EEVP_NEEDS_* of the criterion in use */
    eevp_criterion_vtbl user;
    void *user_state;

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
    int32_t *set;         /* max_batch x K global ids */
    float *rows;          /* max_batch x K x d gathered rows */
    float *set_bias;      /* max_batch x K, NULL without a logit bias */
    float *prev_hidden;   /* max_batch x d */
    float *prev_dist;     /* max_batch x dist_len, JS only */
    int64_t dist_len;
    float *xn;            /* max_batch x d normalised rows */
    int32_t *iota;        /* V global ids */
    eevpi_pair *pairs;    /* max(V, max_batch): top-K, sorting and other scratch */
    int64_t *hist;        /* n_layers committed */

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
int eevpi_ctx_is_checked(const eevp_ctx *ctx, int32_t layer);
int eevpi_ctx_required(const eevp_ctx *ctx, int32_t layer);
float eevpi_ctx_lambda(const eevp_ctx *ctx, int32_t t);

#endif
