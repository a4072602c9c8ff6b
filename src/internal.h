/* SPDX-License-Identifier: MIT */
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

#include <math.h>
#include <stdint.h>
#include <pthread.h>
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

/* A context's worker threads (pool.c). */
typedef void (*eevpi_pool_fn)(void *arg, int part, int n_parts);
typedef struct eevpi_worker {
    struct eevpi_pool *pool;
    int part;
} eevpi_worker;
typedef struct eevpi_pool {
    eevpi_mem mem;
    int n;                 /* parts: workers + 1 */
    int started;           /* workers running */
    int64_t grain;         /* bytes of rows per share (EEVPI_POOL_GRAIN; tests lower it) */
    pthread_t *th;
    eevpi_worker *w;
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    unsigned long gen;     /* job number */
    int parts;             /* parts of the current job */
    int pending;           /* workers still on the current job */
    int quit;
    eevpi_pool_fn fn;
    void *arg;
} eevpi_pool;
/* n_threads >= 2 parts (n_threads - 1 threads), memory through mem.
 * EEVP_ENOMEM (message in msg) when memory or a thread is refused. */
int eevpi_pool_create(eevpi_pool **out, int n_threads, const eevpi_mem *mem, char *msg,
                      size_t msg_size);
void eevpi_pool_free(eevpi_pool *pool);
/* Bytes eevpi_pool_create asks the allocator for (0 below 2 threads). */
int64_t eevpi_pool_size(int n_threads);
/* Shares of a job of `bytes` bytes of rows: one per grain, at most the
 * pool's parts; 1 (run inline) below two grains or without a pool.  Waking
 * a sleeping worker costs about 0.1 ms on the project's machines (a 1 MB
 * pruned check went from 0.06 to 0.20 ms when shared out), about what 2 MB
 * take to read: a share is worth it from several times that. */
#define EEVPI_POOL_GRAIN ((int64_t)16 << 20)
int eevpi_pool_parts(const eevpi_pool *pool, int64_t bytes);
/* fn(arg, part, parts) for part = 0 .. parts-1 (eevpi_pool_parts), part 0
 * on the calling thread; returns when all are done.  Inline (fn(arg, 0, 1))
 * for a small job or a NULL pool. */
void eevpi_pool_run(eevpi_pool *pool, int64_t bytes, eevpi_pool_fn fn, void *arg);
/* Part `part` of `parts` of [0, n) in whole units of `align`: [*lo, *hi). */
static inline void eevpi_split(int64_t n, int part, int parts, int64_t align, int64_t *lo,
                               int64_t *hi)
{
    const int64_t units = (n + align - 1) / align;
    const int64_t a = units * part / parts * align, b = units * (part + 1) / parts * align;
    *lo = a < n ? a : n;
    *hi = b < n ? b : n;
}

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
#if defined(__x86_64__)
#define EEVPI_HAVE_AVX512_KERNELS 1
#endif
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
    /* issue 4: storage type and the kernels that read it. */
    int32_t wtype;              /* eevp_weight; W is NULL unless EEVP_WEIGHT_F32 */
    const uint16_t *W16;        /* fp16 / bf16 rows, `stride` elements apart */
    const struct eevpi_dotk *dk;/* dot kernels for this head (chosen at run time) */
    int8_t *Wq;                 /* int8 screening copy, V x d packed, or NULL */
    float *qscale;              /* V per-row scales of Wq */
    void *qblock;               /* block holding qscale and Wq */
    int32_t screen_mult;        /* screen screen_mult*K candidates; 0: no screening */
};

/* Normalise hidden row x into out (d floats).  Returns 0, or
 * EEVP_ENONFINITE when x holds NaN or Inf. */
int eevpi_head_norm(const eevp_head *h, const float *x, float *out);
/* The logit transform in place: z = cap * tanh((scale * z + bias) / cap),
 * each part optional.  A -INFINITY bias masks its token: the cap must not
 * bring it back.  Inline so that every projection path (and the tests that
 * compile a kernel file on its own) shares the one definition. */
static inline void eevpi_head_transform(const eevp_head *h, float *z, int64_t n,
                                        const float *bias)
{
    int64_t j;
    for (j = 0; j < n; j++) {
        float v = z[j];
        if (h->scale != 1.0f)
            v *= h->scale;
        if (bias)
            v += bias[j];
        if (h->cap > 0.0f && v > -INFINITY)
            v = h->cap * tanhf(v / h->cap);
        z[j] = v;
    }
}

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
/* The entropy confidence from acc = sum of exp(z - max) (z - max) over the
 * finite logits (a shard context adds it up from the shards' parts). */
double eevpi_conf_entropy_acc(const eevpi_dist *d, double acc);
/* 1 - JS/ln 2 between distribution p (probabilities) and softmax of z. */
double eevpi_conf_js(const float *p, const float *z, const eevpi_dist *d);
/* Softmax probabilities of z into p. */
void eevpi_softmax(const float *z, const eevpi_dist *d, float *p);
double eevpi_cosine(const eevpi_kernels *kern, const float *a, const float *b, int64_t n);

/* ==== issue 4: dot kernels, multi-vector projections, half precision,
 * int8 screening, batched pruned checks (dot.c, dot_avx2.c, batch.c) ==== */

/* Every kernel below computes each (row, vector) dot product with one fixed
 * sequence of operations that depends only on d and the head's kernel
 * choice: never on how many vectors or rows are processed together, nor on
 * where they sit in the batch.  So results are bit-identical between a
 * batch and its members alone (EEVP_CTX_BATCH_INVARIANT), and between the
 * per-sequence and the union pruned kernels. */
typedef struct eevpi_dotk {
    const char *name;
    /* z[i*ldz + r] = W_r . x_i for r < nr, i < n, W rows of `wtype`
     * elements `stride` apart, x rows ldx apart.  Reads each row of W once
     * from memory for all n vectors (rows are tiled to stay in cache while
     * the vectors are swept). */
    void (*dot)(int32_t wtype, const void *W, int64_t stride, int64_t nr, int64_t d,
                int32_t n, const float *x, int64_t ldx, float *z, int64_t ldz);
    /* z[r] = scale[r] * xs * (Wq_r . xq), int8 rows d apart, xq padded
     * with zeros to a multiple of 32. */
    void (*dot_q8)(const int8_t *Wq, int64_t nr, int64_t d, const int8_t *xq,
                   const float *scale, float xs, float *z);
    /* Convert n half-precision values to fp32. */
    void (*to_f32)(int32_t wtype, const uint16_t *src, int64_t n, float *dst);
    /* z[r] = rows[r] . x for r < nr, fp32 rows anywhere: bit-identical to
     * dot() with n = 1 on the same rows. */
    void (*dot_rows)(const float *const *rows, int64_t nr, int64_t d, const float *x, float *z);
} eevpi_dotk;

const eevpi_dotk *eevpi_dotk_select(int portable_only);
extern const eevpi_dotk eevpi_dotk_portable;
#if defined(EEVPI_HAVE_AVX2_KERNELS)
extern const eevpi_dotk eevpi_dotk_avx2;
#endif
#if defined(EEVPI_HAVE_AVX512_KERNELS)
/* AVX-512F for 5-8 vectors, the AVX2 set otherwise (dot_avx512.c). */
extern const eevpi_dotk eevpi_dotk_avx512;
#endif

/* fp16 / bf16 <-> fp32, round to nearest even (portable, exact). */
float eevpi_f16_to_f32(uint16_t h);
uint16_t eevpi_f32_to_f16(float f);
float eevpi_bf16_to_f32(uint16_t h);
uint16_t eevpi_f32_to_bf16(float f);

/* Full logits (dot + transform) for n normalised rows with the head's own
 * fixed-order kernel, whatever n (W read once per 16 rows): the
 * batch-invariant full projection.  eevpi_head_project uses it for
 * n <= EEVPI_FIXED_MAX and for every half-precision head.  Up to 16 rows it
 * is faster than SGEMM single-threaded (67 against 139 ms at B = 16,
 * 32000 x 4096, docs/bench_results.txt), which packs W before use. */
#define EEVPI_MULTI_MAX 8
#define EEVPI_FIXED_MAX 16
void eevpi_head_project_inv(const eevp_head *h, int32_t n, const float *xn, float *z,
                            int64_t ldz);
/* The same for local rows [r0, r1) only: z[r * ldz + v], r0 <= v < r1. */
void eevpi_head_project_range(const eevp_head *h, int64_t r0, int64_t r1, int32_t n,
                              const float *xn, float *z, int64_t ldz);
/* Full logits with a context's worker threads: the fixed-order kernel split
 * by rows when the pool is worth waking, the same bits whatever the number
 * of parts; otherwise (pool NULL or a small head) eevpi_head_project.  fp32
 * with more than EEVPI_FIXED_MAX rows stays on SGEMM unless `fixed` (batch
 * invariance): then the fixed-order kernel, with or without the pool. */
void eevpi_head_project_pool(const eevp_head *h, eevpi_pool *pool, int32_t n, const float *xn,
                             float *z, int64_t ldz, int fixed);

/* Pruned logits for one row with the fixed-order kernel (bit-identical to
 * the union kernel below). */
void eevpi_head_project_rows_inv(const eevp_head *h, int32_t k, const float *rows,
                                 int64_t ld_rows, const float *bias, const float *xn, float *z);

/* int8 screening (head option screen_mult): bytes of work for k. */
int64_t eevpi_screen_work_size(const eevp_head *h, int32_t k);
/* Pruned set of one normalised row by screening: the int8 copy ranks all V
 * rows, the best min(V, screen_mult*k) get their exact logits from W, and
 * the best k of those (in the order) are written to ids (global) and, when
 * not NULL, their exact transformed logits to z.  An approximation the
 * caller opts into: the exact top-k is only recovered when it lies inside
 * the screened set.  EEVP_ENONFINITE for NaN logits.  pool (may be NULL):
 * the int8 pass is shared out between a context's threads. */
int eevpi_head_screen(const eevp_head *h, eevpi_pool *pool, const float *xn, int32_t k,
                      int32_t *ids, float *z, void *work);

/* Batched pruned checks (batch.c).  n sequences, sequence i with k_of[i]
 * candidates whose global ids are ids[i] and whose gathered rows are
 * rows[i] (d floats apart), biases bias[i] (NULL: none); normalised rows xn
 * (d apart); logits out to z[i] (k_of[i] floats, transformed).
 *
 * The union plan: the distinct ids of all sets, their rows gathered once
 * (per token, since the sets are fixed for the token) into one block, and
 * per sequence the position of each of its candidates in that block.  Then
 * every check is one multi-vector pass over the block, and the logits are
 * picked out.  Results are bit-identical to the per-sequence path. */
typedef struct eevpi_union {
    int32_t n_seq, n_union;
    int32_t n_dense;   /* the first n_dense rows are in at least half of the
                          sets (and in 2 or more): computed for every vector
                          in one multi-vector pass; the others only for the
                          sequences holding them */
    int64_t sum_k;     /* candidates over all sets */
    int64_t dense_cand;/* candidates whose row is dense */
    int32_t *ids;      /* n_union distinct global ids (capacity: sum of k) */
    int32_t *pos;      /* per candidate of every sequence, concatenated: its
                          row in the block */
    float *rows;       /* n_union x d gathered rows */
    float *bias;       /* n_union biases, or NULL when the head has none */
} eevpi_union;

/* Bytes for a union plan of n sets of total size sum_k (one block). */
int64_t eevpi_union_size(const eevp_head *h, int32_t n, int64_t sum_k);
/* Point u's ids, pos, rows and bias into mem (eevpi_union_size bytes). */
void eevpi_union_layout(const eevp_head *h, int64_t sum_k, eevpi_union *u, void *mem);
/* Plan into u's arrays (room for sum_k entries each, sum_k rows): dedupe the
 * ids, order the rows (dense, then sparse; ids ascending in each).  u->rows
 * serves as scratch until the gather.  work: 2 * sum_k int64_t.  Plan first
 * to decide (eevpi_union_pick needs no rows), gather only when the plan is
 * used; u->rows has room for sum_k rows, so per-sequence blocks may be
 * gathered there instead when it is not. */
void eevpi_union_plan(const eevp_head *h, int32_t n, const int32_t *k_of,
                      const int32_t *const *ids, eevpi_union *u, int64_t *work);
void eevpi_union_gather(const eevp_head *h, eevpi_union *u);
/* layout + plan + gather, in one block. */
void eevpi_union_build(const eevp_head *h, int32_t n, const int32_t *k_of,
                       const int32_t *const *ids, eevpi_union *u, void *mem,
                       int64_t *work);
/* 1 when checks through the plan are expected to be cheaper than n
 * per-sequence passes over separate blocks (rule in docs/BENCHMARKS.md:
 * memory traffic versus arithmetic; only the machine balance enters). */
int eevpi_union_pick(const eevp_head *h, const eevpi_union *u, const int32_t *k_of);
/* Checks through the plan for the n_act sequences act[0..n_act-1] (indices
 * into the plan's sequences, e.g. those still running), normalised rows xn
 * (d apart, in act order), logits to z[i] (k_of[act[i]] floats).  The dense
 * pass runs when n_act >= 2; a lone sequence reads only its own rows.  With
 * a pool, both phases are shared out between its threads (same bits).
 * k_of: the plan's set sizes.  work: n_act * n_dense floats (a dense row is
 * in at least half of the sets, so n_dense <= 2 * max k). */
void eevpi_pruned_union(const eevp_head *h, const eevpi_union *u, eevpi_pool *pool,
                        int32_t n_act, const int32_t *act, const int32_t *k_of, const float *xn,
                        float *const *z, float *work);
/* Checks per sequence (each reads its own rows). */
void eevpi_pruned_each(const eevp_head *h, int32_t n, const int32_t *k_of,
                       const float *const *rows, const float *const *bias, const float *xn,
                       float *const *z);

#endif /* EEVP_INTERNAL_H */
