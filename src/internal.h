/*
 * internal.h - declarations shared between libeevp's sources; not API.
 *
 * Everything that crosses files carries the eevpi_ prefix so that the static
 * library cannot clash with a host's symbols; the shared object exports
 * only eevp_* (src/libeevp.vers, -fvisibility=hidden).
 *
 * Layering, top to bottom: step.c (per-token flow) > ctx.c (context,
 * statistics) > head.c (weights, norm, projections) and criteria.c >
 * topk.c, simd*.c (kernels) > util.c (errors, allocation, struct sizes).
 */
#ifndef EEVP_INTERNAL_H
#define EEVP_INTERNAL_H

#include "eevp.h"

#include <stdint.h>
#include <stddef.h>

#define EEVPI_ALIGN 64
#define EEVPI_MSG_SIZE 256

/* ---- util.c: allocation, messages, struct sizes ---- */

typedef struct eevpi_mem {
    eevp_allocator a; /* both members set (defaults filled in) */
} eevpi_mem;

int eevpi_mem_init(eevpi_mem *m, const eevp_allocator *user, char *msg, size_t msg_size);
void *eevpi_alloc(const eevpi_mem *m, size_t size);
void eevpi_free(const eevpi_mem *m, void *p);

/* printf-style message into a caller buffer (NULL/0 ignored). */
void eevpi_msg(char *buf, size_t size, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Read a versioned input struct: copy the caller's known prefix over the
 * defaults already in dst.  EEVP_ESTRUCT for a size below min_size or an
 * unknown tail that is not all zero. */
int eevpi_read_struct(void *dst, size_t known, const void *src, size_t min_size);
/* Write a versioned output struct: the known part, zero past it up to the
 * caller's struct_size.  EEVP_ESTRUCT for a size below min_size. */
int eevpi_write_struct(void *dst, const void *src, size_t known, size_t min_size);

/* a * b and a + b for non-negative 64-bit sizes; 0 on overflow. */
int eevpi_mul(int64_t a, int64_t b, int64_t *out);
int eevpi_add(int64_t a, int64_t b, int64_t *out);

/* Arena planning: the same code computes the size and carves the block, so
 * the memory figure the library reports is the one it allocates. */
typedef struct eevpi_arena {
    unsigned char *base; /* NULL while sizing */
    int64_t used;
    int overflow;
} eevpi_arena;

void *eevpi_arena_take(eevpi_arena *a, int64_t count, int64_t elem_size);

/* ---- simd.c: kernels chosen at run time ---- */

typedef struct eevpi_kernels {
    const char *name;
    /* First index i in [i0, n) with !(x[i] <= t) (greater than t, or NaN);
     * n when none. */
    int64_t (*scan_gt)(const float *x, int64_t i0, int64_t n, float t);
    /* Sum and sum of squares of x[0..n-1], accumulated in double. */
    void (*sums)(const float *x, int64_t n, double *sum, double *sumsq);
} eevpi_kernels;

const eevpi_kernels *eevpi_kernels_select(int portable_only);
extern const eevpi_kernels eevpi_kernels_portable;
#if defined(__x86_64__) || defined(__i386__)
extern const eevpi_kernels eevpi_kernels_avx2;
#define EEVPI_HAVE_AVX2_KERNELS 1
#endif

/* ---- topk.c ---- */

typedef struct eevpi_pair {
    float v;
    int32_t i;
} eevpi_pair;

/* a comes before b in the order: value descending, then id ascending. */
static inline int eevpi_before(float av, int32_t ai, float bv, int32_t bi)
{
    return av > bv || (av == bv && ai < bi);
}

/* Pairs the selection needs for k of n. */
int64_t eevpi_topk_pairs(int64_t n, int32_t k);
/* Top-k of x in the order; writes idx[j] = index + id_offset (and val[j]
 * when val is not NULL).  work holds eevpi_topk_pairs(n, k) pairs.
 * EEVP_ENONFINITE on NaN. */
int eevpi_topk(const eevpi_kernels *kern, const float *x, int64_t n, int32_t k,
               int64_t id_offset, int32_t *idx, float *val, eevpi_pair *work);
/* Rearrange p[0..n-1] so that its first m pairs are the best m, sorted. */
void eevpi_select_sorted(eevpi_pair *p, int64_t n, int64_t m);

/* ---- head.c ---- */

struct eevp_head {
    eevpi_mem mem;
    const eevpi_kernels *kern;
    int64_t V, d, stride, offset;
    const float *W;
    int32_t norm;
    float eps;
    const float *nw, *nb, *bias;
    float scale, cap;
    void *copy;     /* block holding the copies under EEVP_HEAD_COPY */
    int64_t bytes;  /* allocated through mem */
};

/* Normalise hidden row x into out (d floats).  Returns 0, or
 * EEVP_ENONFINITE when x holds NaN or Inf. */
int eevpi_head_norm(const eevp_head *h, const float *x, float *out);
/* Full logits for n normalised rows xn (packed, d apart): z rows ldz apart. */
void eevpi_head_project(const eevp_head *h, int32_t n, const float *xn, float *z, int64_t ldz);
/* Pruned logits for one normalised row over k gathered rows. */
void eevpi_head_project_rows(const eevp_head *h, int32_t k, const float *rows, int64_t ld_rows,
                             const float *bias, const float *xn, float *z);
/* Copy rows of W (global ids) and their biases. */
void eevpi_head_gather(const eevp_head *h, const int32_t *ids, int32_t k, float *out,
                       int64_t ld_out, float *bias_out);

/* ---- criteria.c ---- */

/* What one set of candidate logits says, in the order. */
typedef struct eevpi_dist {
    int32_t n;        /* candidates */
    int32_t n_finite; /* candidates with a finite logit */
    int32_t top1, top2;       /* positions in the arrays, -1 when absent */
    float z1, z2;
    double max, sumexp;       /* sum of exp(z - max) over finite logits */
} eevpi_dist;

/* Scan logits z[0..n-1] with ids (or ids NULL: id = id0 + j).  Returns
 * EEVP_ENONFINITE for NaN or +Inf.  With need_sum, fills max and sumexp. */
int eevpi_dist_scan(const float *z, const int32_t *ids, int32_t id0, int32_t n, int need_sum,
                    eevpi_dist *out);
double eevpi_conf_top2(const eevpi_dist *d);
double eevpi_conf_maxprob(const eevpi_dist *d);
double eevpi_conf_entropy(const float *z, const eevpi_dist *d);
/* 1 - JS/ln 2 between distribution p (probabilities) and softmax of z. */
double eevpi_conf_js(const float *p, const float *z, const eevpi_dist *d);
/* Softmax probabilities of z into p. */
void eevpi_softmax(const float *z, const eevpi_dist *d, float *p);
double eevpi_cosine(const eevpi_kernels *kern, const float *a, const float *b, int64_t n);

#endif /* EEVP_INTERNAL_H */
