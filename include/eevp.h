/* SPDX-License-Identifier: MIT */
/**
 * @file eevp.h
 * @brief libeevp, early-exit confidence with dynamic vocabulary pruning.
 *
 * This header is the whole public API: what is not declared here is not API.
 *
 * The method (Vincenti et al. 2024, "Dynamic Vocabulary Pruning in Early-Exit
 * LLMs"): for every token, once, at a pruning layer p, project the hidden
 * state through the whole LM head, keep the K best tokens and gather their K
 * rows of W into a contiguous block.  At every later checked layer the exit
 * confidence is computed from those K rows only.
 *
 * Conventions used everywhere in this header:
 *  - layers are numbered from 0 to n_layers-1;
 *  - the checked layers are {f, f+i, f+2i, ...} (below n_layers) plus
 *    n_layers-1, for a first checked layer f and an interval i;
 *  - the candidate order ("the order") is: logit descending, then global token
 *    id ascending.  Top-K, argmax, top-2 and every exposed candidate list
 *    follow it;
 *  - a sequence exits iff its confidence c > lambda (strictly), compared in
 *    float on the values eevp_result reports: its confidence against its
 *    threshold lambda(t), so a threshold equal to a reported confidence does
 *    not exit; threshold +INFINITY never exits before the last layer;
 *  - the logit of token v is z_v = cap * tanh((scale * (W_v . norm(h)) + b_v) / cap),
 *    where the norm, the scale (1 when unset), the bias b (0 when unset) and
 *    the soft-cap (none when unset: z_v = scale * (W_v . norm(h)) + b_v) are
 *    all optional; a bias of -INFINITY gives z_v = -INFINITY (a masked token),
 *    also under the soft-cap (not -cap);
 *  - token ids are global: local row r of a head reports r + vocab_offset;
 *  - arrays the caller passes (W, weights_half, the norm vectors, the logit
 *    bias, hidden states, id lists) need only their element's alignment (4
 *    bytes for float, 2 for uint16_t): a 4-byte-aligned mmap pointer works
 *    for W, and a leading dimension need not be a multiple of anything.  Only
 *    a kernel's `work` area must be 64-byte aligned.
 *
 * Threads: an eevp_head is immutable after creation; any number of threads
 * may use one head at once (kernels and contexts only read it).  An eevp_ctx
 * is used from one thread at a time: one context per thread, never one
 * context from two threads at once.  The library keeps no process-global
 * mutable state, never changes OpenBLAS's (process-global) thread count and
 * starts no threads, except the worker threads a context asks for with
 * eevp_ctx_options.n_threads (docs/THREADS.md).
 *
 * Errors: every fallible function returns int, EEVP_OK (0) or a negative
 * EEVP_E* code.  Output pointers come first; on failure *out is set to NULL
 * (or left untouched when it is a caller-owned buffer); free functions accept
 * NULL.  A failed call leaves the object exactly as it was, except where a
 * function documents a per-sequence failure.
 */
#ifndef EEVP_H
#define EEVP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef EEVP_API
#  if defined(_WIN32)
#    define EEVP_API
#  elif defined(__GNUC__) && __GNUC__ >= 4
#    define EEVP_API __attribute__((visibility("default")))
#  else
#    define EEVP_API
#  endif
#endif

/* ------------------------------------------------------------------------ */
/* Version                                                                  */
/* ------------------------------------------------------------------------ */

/** @name Version of this header
 * The one source of truth for the version: the Makefile and eevp.pc read
 * these three lines. */
/** @{ */
#define EEVP_VERSION_MAJOR 1 /**< major version */
#define EEVP_VERSION_MINOR 2 /**< minor version */
#define EEVP_VERSION_PATCH 0 /**< patch version */
/** @} */

/** Version of this header, MAJOR*10000 + MINOR*100 + PATCH. */
#define EEVP_VERSION_NUMBER \
    (EEVP_VERSION_MAJOR * 10000 + EEVP_VERSION_MINOR * 100 + EEVP_VERSION_PATCH)
#define EEVP_STR_(x) #x
#define EEVP_STR(x) EEVP_STR_(x)
/** Version of this header as a string literal, "MAJOR.MINOR.PATCH". */
#define EEVP_VERSION_STRING \
    EEVP_STR(EEVP_VERSION_MAJOR) "." EEVP_STR(EEVP_VERSION_MINOR) "." EEVP_STR(EEVP_VERSION_PATCH)

/** Version of the library actually loaded, MAJOR*10000 + MINOR*100 + PATCH. */
EEVP_API uint32_t eevp_version_number(void);
/** Version of the library actually loaded as static text "MAJOR.MINOR.PATCH". */
EEVP_API const char *eevp_version_string(void);

/* ------------------------------------------------------------------------ */
/* Constants                                                                */
/* ------------------------------------------------------------------------ */

/** @name Limits
 * Limits.  Vocabulary and dimension are also bounded by the 64-bit size
 * checks: V * row_stride and K * dim must be addressable. */
/** @{ */
#define EEVP_MAX_VOCAB   ((int64_t)INT32_MAX)  /**< token ids are int32_t */
#define EEVP_MAX_DIM     ((int64_t)1 << 24)    /**< largest dim (d) */
#define EEVP_MAX_BATCH   4096                  /**< largest max_batch */
#define EEVP_MAX_LAYERS  4096                  /**< largest n_layers (L) */
/** @} */

/** Final normalisation applied to a hidden state before projection. */
typedef enum eevp_norm {
    EEVP_NORM_NONE = 0,  /**< x' = x */
    EEVP_NORM_RMS = 1,   /**< x' = x / sqrt(mean(x^2) + eps) * w */
    EEVP_NORM_LAYER = 2  /**< x' = (x - mean(x)) / sqrt(var(x) + eps) * w + b */
} eevp_norm;

/** @name Head flags
 * eevp_head_options.flags */
/** @{ */
#define EEVP_HEAD_COPY    1u  /**< copy W, norm weights and logit bias; default borrows */
#define EEVP_HEAD_NO_SIMD 2u  /**< use the portable kernels even where AVX2/FMA exist */
/** @} */

/** eevp_head_options.weight_type: how W is stored.  Half-precision heads keep
 * W in half precision (no fp32 copy of V x d exists); products and sums are
 * fp32, and gathered rows are converted to fp32 once per token. */
typedef enum eevp_weight {
    EEVP_WEIGHT_F32 = 0,  /**< float */
    EEVP_WEIGHT_F16 = 1,  /**< IEEE 754 binary16, as uint16_t */
    EEVP_WEIGHT_BF16 = 2  /**< bfloat16 (upper half of a float), as uint16_t */
} eevp_weight;

/** Built-in exit criteria.  Each yields a confidence c in [0, 1] (saturation
 * in [-1, 1]).  With no candidate of finite logit (all masked) c = 0 for
 * every criterion that reads logits (stability included: its run starts
 * again), and the token is the first candidate in the order, the lowest id
 * (the pruned set is then the K lowest ids). */
typedef enum eevp_criterion {
    /** c = p1 - p2, top-1 minus top-2 probability of the softmax over the
     * candidates (p2 = 0 when there is a single candidate). */
    EEVP_CRITERION_TOP2_GAP = 0,
    /** c = p1, the largest softmax probability over the candidates. */
    EEVP_CRITERION_MAX_PROB = 1,
    /** c = 1 - H / ln n over the n candidates with a finite logit
     * (c = 1 when n == 1). */
    EEVP_CRITERION_ENTROPY = 2,
    /** c = cos(h_l, h_prev), cosine of the raw hidden states (before the
     * norm) at this and at the previous checked layer; 0 at the first checked
     * layer and when either vector is zero.  Needs no logits: no pruning and
     * no projection run until the sequence exits, and the exit computes the
     * full head once.  Use k = 0 with it: the context then allocates no
     * gathered-row buffers. */
    EEVP_CRITERION_SATURATION = 3,
    /** c = 1 when the top-1 token has been the same at the last `patience`
     * checked layers of this token (this one included), else 0. */
    EEVP_CRITERION_STABILITY = 4,
    /** c = 1 - JS(P_prev, P_l) / ln 2, Jensen-Shannon divergence (natural log)
     * between the candidate distributions of this and the previous checked
     * layer, both taken over the sequence's candidate set (the pruned set
     * when pruning is active, else the whole vocabulary); 0 at the first
     * checked layer. */
    EEVP_CRITERION_JS = 5,
    /** Set by eevp_ctx_set_criterion; not valid in eevp_ctx_options. */
    EEVP_CRITERION_CUSTOM = 6
} eevp_criterion;

/** Threshold schedule: lambda(t) for a token at generation index t. */
typedef enum eevp_schedule {
    /** lambda(t) = threshold */
    EEVP_SCHEDULE_CONSTANT = 0,
    /** CALM's decaying threshold as written in the CALM and FREE code:
     * lambda(t) = threshold * (9 + exp(-tau * t / max_length)) / 10,
     * from `threshold` at t = 0 down towards 0.9 * threshold. */
    EEVP_SCHEDULE_CALM = 1
} eevp_schedule;

/** What decides a sequence's token at the last layer when it did not exit
 * earlier.  The trade-off: with pruning, a token that does not exit costs
 * two full projections under EEVP_FINAL_FULL (one at the pruning layer, one
 * at the last), one under EEVP_FINAL_PRUNED, which may then change it
 * (docs/METHOD.md section 5.3). */
typedef enum eevp_final {
    /** The full head's argmax: exactly the model's own output (default). */
    EEVP_FINAL_FULL = 0,
    /** The argmax over the pruned set (falls back to the full head when the
     * sequence has no pruned set, e.g. with the saturation criterion, and
     * when the last layer is the pruning layer itself). */
    EEVP_FINAL_PRUNED = 1
} eevp_final;

/** Why a sequence has (or has not yet) a result in the current step. */
typedef enum eevp_reason {
    EEVP_REASON_RUNNING = 0,    /**< no result yet */
    EEVP_REASON_CONFIDENT = 1,  /**< exited before the last layer: c > lambda */
    EEVP_REASON_LAST_LAYER = 2, /**< reached n_layers-1 and resolved there */
    EEVP_REASON_ERROR = 3       /**< finished with an error, see result.status */
} eevp_reason;

/* ------------------------------------------------------------------------ */
/* Status codes (values pinned forever; new codes are only appended)        */
/* ------------------------------------------------------------------------ */

/** @name Status codes
 * Values pinned forever; new codes are only appended. */
/** @{ */
#define EEVP_OK           0  /**< success */
#define EEVP_EINVAL      -1  /**< NULL pointer or malformed argument */
#define EEVP_ERANGE      -2  /**< a size, index, layer or value out of range */
#define EEVP_EOVERFLOW   -3  /**< a size computation overflows 64 bits */
#define EEVP_ENOMEM      -4  /**< an allocation failed */
#define EEVP_ESTRUCT     -5  /**< bad struct_size, or unknown non-zero tail */
#define EEVP_ESTATE      -6  /**< call out of order for the object's state */
#define EEVP_EUSER       -7  /**< a user callback returned an error */
#define EEVP_ECALLBACK   -8  /**< a user callback returned an invalid result */
#define EEVP_ENONFINITE  -9  /**< NaN or Inf in a hidden state or in logits */
#define EEVP_EBUSY      -10  /**< context re-entered from its own callback */
/** A shard record (eevp_shard_merge, eevp_shard_absorb) is malformed, of
 * another format version or shape, or disagrees with the other ranks'
 * (since 1.2) */
#define EEVP_ERECORD    -11
/** @} */

/** Static English text for a status code; never NULL, also for unknown codes. */
EEVP_API const char *eevp_strerror(int code);

/* ------------------------------------------------------------------------ */
/* Allocator                                                                */
/* ------------------------------------------------------------------------ */

/** @brief Per-object allocator hook.
 *
 * alloc and free must be both set or both NULL;
 * NULL means malloc/free.  The hook is copied at creation and used for every
 * allocation the object makes, until it is freed.  alloc returns NULL on
 * failure; the library aligns inside what it gets. */
typedef struct eevp_allocator {
    void *(*alloc)(void *opaque, size_t size); /**< malloc-like, or NULL */
    void (*free)(void *opaque, void *ptr);     /**< free-like, or NULL */
    void *opaque;                              /**< passed to alloc and free */
} eevp_allocator;

/* ------------------------------------------------------------------------ */
/* Head: the LM head (unembedding), V x d, immutable, shareable             */
/* ------------------------------------------------------------------------ */

/** The LM head (unembedding), V x d, immutable, shareable (opaque). */
typedef struct eevp_head eevp_head;

/** @brief Options of eevp_head_create.
 *
 * Options struct rules (this one and every other): struct_size first, set by
 * the initialiser; the library reads what struct_size covers and defaults the
 * rest; a struct_size larger than the library knows is accepted when the
 * unknown tail is all zero bytes, and refused (EEVP_ESTRUCT) otherwise;
 * struct_size 0 or smaller than the first version's is EEVP_ESTRUCT. */
typedef struct eevp_head_options {
    uint32_t struct_size;     /**< sizeof(eevp_head_options) */
    uint32_t flags;           /**< EEVP_HEAD_* */
    int64_t n_vocab;          /**< V, rows of W, 1 .. EEVP_MAX_VOCAB */
    int64_t dim;              /**< d, columns of W, 1 .. EEVP_MAX_DIM */
    int64_t row_stride;       /**< floats between rows of W, dim .. INT32_MAX
                                 (BLAS's leading dimension); 0 means dim */
    const float *weights;     /**< W, row-major, row v = token v; required;
                                 float alignment suffices (4 bytes) */
    int64_t vocab_offset;     /**< global id of row 0, >= 0; ids stay < 2^31 */
    int32_t norm;             /**< eevp_norm */
    /** Added to the variance / mean square, >= 0 (default 1e-6).  Must match
     * the model's own epsilon: a Llama checkpoint's rms_norm_eps (config.json:
     * 1e-5 or 1e-6 depending on the model); a wrong eps shifts every logit.
     * With 0, a state whose mean square (RMS) or variance (LayerNorm) is 0
     * normalises to zero (plus norm_bias), not to NaN. */
    float norm_eps;
    const float *norm_weight; /**< d floats, NULL means all ones; ignored with
                                 EEVP_NORM_NONE (yet copied under
                                 EEVP_HEAD_COPY) */
    const float *norm_bias;   /**< d floats, EEVP_NORM_LAYER only, NULL means 0 */
    const float *logit_bias;  /**< V floats (-INFINITY masks a token), may be NULL */
    float logit_scale;        /**< > 0; 0 means 1 */
    float softcap;            /**< > 0 applies cap*tanh(z/cap); 0 means none */
    const eevp_allocator *allocator; /**< copied; NULL means malloc/free */
    /** @name Storage of W and screening (issue 4) */
    /** @{ */
    int32_t weight_type;      /**< eevp_weight; EEVP_WEIGHT_F16 / _BF16 read W
                                 from weights_half (weights must be NULL) */
    const uint16_t *weights_half; /**< W as V rows of row_stride half-precision
                                 values; borrowed like weights, or copied
                                 (still half) under EEVP_HEAD_COPY */
    /** Opt-in approximation at the pruning layer: 0 none; m >= 2 makes the
     * head hold an int8 copy of W (V x d bytes plus V scales, one per row)
     * used only to screen m*K candidates, whose exact logits then choose the
     * K (docs/BENCHMARKS.md: cost and measured recall). */
    int32_t screen_mult;
    /** @} */
} eevp_head_options;

/** Initialiser of an eevp_head_options with the defaults. */
#define EEVP_HEAD_OPTIONS_INIT \
    { (uint32_t)sizeof(eevp_head_options), 0u, 0, 0, 0, NULL, 0, EEVP_NORM_NONE, \
      1e-6f, NULL, NULL, NULL, 1.0f, 0.0f, NULL, EEVP_WEIGHT_F32, NULL, 0 }

/** Initialise *opts to the defaults (same as EEVP_HEAD_OPTIONS_INIT).
 * Returns EEVP_EINVAL for NULL. */
EEVP_API int eevp_head_options_init(eevp_head_options *opts);

/** Create a head.  By default W, the norm vectors and the logit bias are
 * borrowed: the caller keeps them alive and unchanged while the head lives
 * (the head reads them in place and never copies them).  With
 * EEVP_HEAD_COPY they are copied (as V x d, packed) and may be freed after
 * the call.  On failure *out is NULL and, when msg is not NULL, a
 * NUL-terminated explanation of at most msg_size bytes is written to msg. */
EEVP_API int eevp_head_create(eevp_head **out, const eevp_head_options *opts,
                              char *msg, size_t msg_size);
/** Free a head (NULL is a no-op).  Every context and kernel call using it must
 * be finished. */
EEVP_API void eevp_head_free(eevp_head *head);

EEVP_API int64_t eevp_head_n_vocab(const eevp_head *head);     /**< V, or EEVP_EINVAL */
EEVP_API int64_t eevp_head_dim(const eevp_head *head);         /**< d, or EEVP_EINVAL */
EEVP_API int64_t eevp_head_vocab_offset(const eevp_head *head);/**< or EEVP_EINVAL */
/** Bytes the head allocated (its struct, plus the copies under
 * EEVP_HEAD_COPY), or EEVP_EINVAL. */
EEVP_API int64_t eevp_head_memory(const eevp_head *head);

/* ------------------------------------------------------------------------ */
/* Context: up to max_batch sequences decoded together, one thread at a time */
/* ------------------------------------------------------------------------ */

/** Up to max_batch sequences decoded together; used from one thread at a
 * time, it may own worker threads (n_threads) (opaque). */
typedef struct eevp_ctx eevp_ctx;

/** @brief Options of eevp_ctx_create; the rules of eevp_head_options apply. */
typedef struct eevp_ctx_options {
    uint32_t struct_size;   /**< sizeof(eevp_ctx_options) */
    int32_t n_layers;       /**< L, 1 .. EEVP_MAX_LAYERS; required */
    int32_t max_batch;      /**< 1 .. EEVP_MAX_BATCH */
    int32_t k;              /**< pruned set size; 0 or >= V: no pruning (full
                               vocabulary at every checked layer); ignored
                               under EEVP_STATIC_ONLY, whose set is the
                               static list (k = 0 included) */
    int32_t first_layer;    /**< f, 0 .. L-1 */
    int32_t interval;       /**< i >= 1 */
    int32_t prune_layer;    /**< p, 0 .. f; -1 means f */
    /** eevp_final.  The default, EEVP_FINAL_FULL, pays two full projections
     * on a token that holds a pruned set and does not exit (at the pruning
     * layer and at the last) and emits the model's own token; EEVP_FINAL_PRUNED
     * pays one and decides on the set, which may change the token. */
    int32_t final_policy;
    int32_t criterion;      /**< eevp_criterion, built-ins only */
    /** lambda: finite, or +INFINITY, "never exit early": no sequence exits
     * before the last layer whatever the criterion (a custom criterion's own
     * exit decision included: it is called at the last layer only), and only
     * the layers still needed are required: the last, plus the pruning and
     * re-pruning layers when EEVP_FINAL_PRUNED decides on their set.  With
     * EEVP_FINAL_FULL every token is then the full head's argmax at the last
     * layer, the model's own output.  -INFINITY and NaN are EEVP_ERANGE. */
    float threshold;
    int32_t schedule;       /**< eevp_schedule */
    float schedule_tau;     /**< tau for EEVP_SCHEDULE_CALM, finite, >= 0 */
    int32_t max_length;     /**< N for EEVP_SCHEDULE_CALM, >= 1 */
    int32_t patience;       /**< N for EEVP_CRITERION_STABILITY, >= 1 */
    const eevp_allocator *allocator; /**< copied; NULL means malloc/free */
    uint32_t flags;         /**< EEVP_CTX_* */

    /** @name Candidate-set policies
     * Candidate-set policies, all off by default (docs/POLICIES.md).  The
     * "pruned set" of a sequence is then: the top-K of the pruning layer
     * (unless static_mode is EEVP_STATIC_ONLY), united with the static list
     * and the always-included ids, without duplicates.  Ids outside the
     * head's range [vocab_offset, vocab_offset + V) are dropped (a shard
     * holds only its own rows). */
    /** @{ */
    const int32_t *always_ids; /**< n_always global ids joined to every set;
                                  copied at creation */
    int32_t n_always;          /**< 0 .. EEVP_MAX_LIST */
    int32_t static_mode;       /**< eevp_static */
    const int32_t *static_ids; /**< n_static global ids; copied at creation */
    int32_t n_static;          /**< 0 .. EEVP_MAX_LIST */
    /** Re-pruning: recompute the top-K from the full head again at the
     * checked layer reprune_layer (> the pruning layer, < L-1; -1: never),
     * and/or at every reprune_every-th checked layer after the pruning layer
     * (0: never).  That layer is then decided on the full vocabulary (the
     * JS criterion there compares over the set held before it).  The last
     * layer never re-prunes: a reprune_every count landing on it is skipped,
     * and EEVP_FINAL_PRUNED decides on the latest set (docs/POLICIES.md). */
    int32_t reprune_layer;
    int32_t reprune_every;     /**< see reprune_layer */
    /** Adaptive K: when adaptive_mass is in (0, 1], the dynamic part of the
     * set is the smallest top set of the pruning layer's softmax holding at
     * least that probability mass, clamped to [k_min, k] (recomputed from
     * its own layer's softmax at each re-pruning).  0: fixed K. */
    float adaptive_mass;
    int32_t k_min;             /**< 1 .. k, used with adaptive_mass */
    /** @} */

    /** Ignored.  The 1.0 layout ended with 4 bytes of tail padding here,
     * which a 1.0 caller may leave uninitialised, so nothing is read from
     * them (docs/ABI.md). */
    uint32_t reserved_1_0;
    /** Threads for this context's kernels (since 1.1): 0 or 1 runs
     * everything on the calling thread, as before; n in 2 ..
     * EEVP_MAX_THREADS starts n - 1 worker threads at creation (joined by
     * eevp_ctx_free) that take shares of the large projections: the full
     * projections of up to 16 hidden states (of any number on a
     * half-precision head or under EEVP_CTX_BATCH_INVARIANT) and the pruned
     * checks.  Results do not depend on n: the shares run the same
     * fixed-order kernel as one thread.  The trade-off at B = 1: one thread
     * of that kernel is at the bandwidth floor with one OpenBLAS thread of
     * SGEMV, SGEMV on two OpenBLAS threads is faster where one core cannot
     * saturate memory; n_threads = 2 wins that back.  The context
     * is still used from one thread at a time; criteria and the allocator
     * are only called on that thread.
     * Not for a context used in a child after fork() (docs/THREADS.md). */
    int32_t n_threads;
    /** Ignored: named so that the 1.1 layout has no tail padding for a
     * later member to land in (docs/ABI.md). */
    uint32_t reserved_1_1;
} eevp_ctx_options;

/** Largest eevp_ctx_options.n_threads. */
#define EEVP_MAX_THREADS 64

/** @name Context flags
 * eevp_ctx_options.flags */
/** @{ */
/** Bitwise batch invariance: a sequence's logits, confidences, tokens and exit
 * layers do not depend on what else shares its batch or on its row.
 *
 * Bits (since 1.2): every projection the library makes of up to 16 hidden
 * states, every projection of a half-precision head, and every pruned
 * check goes through the library's fixed-order kernel, which computes each
 * (row of W, hidden state) dot product in one order that depends only on
 * d and the head's kernel set (AVX2/AVX-512 or, with EEVP_HEAD_NO_SIMD or
 * on other CPUs, portable: a shard and the whole head must use the same
 * set).  On those paths a row's logit is the same bits whatever B, the
 * hidden state's row in the batch,
 * the context's n_threads, and the range of rows the head holds (a head
 * over rows [r0, r1) of W with vocab_offset r0 gives each of those rows the
 * bits the whole head gives it); eevp_head_logits follows the same rule.
 * Without this flag only fp32 full projections of more than 16 hidden
 * states use SGEMM, whose rounding depends on the batch (within the bound
 * of docs/METHOD.md); with it they stay on the fixed-order kernel too
 * (slower for large batches). */
#define EEVP_CTX_BATCH_INVARIANT 1u
/** Exact-token exits: on a pruned exit, compute the full head once at the
 * exit layer and emit its argmax (the exit decision stays the pruned one;
 * eevp_result.pruned_token keeps the pruned argmax). */
#define EEVP_CTX_EXACT_EXIT 2u
/** Screened pruning (since 1.1), an approximation the caller opts into: at
 * the pruning layer each set is chosen by the head's int8 copy (the head
 * needs screen_mult = m): all V rows ranked in int8, the best m*K given
 * their exact logits, the best K of those kept; no full projection there.
 * It equals the exact top-K whenever that lies inside the m*K screened
 * (docs/BENCHMARKS.md measures how often).  A checked pruning layer is then
 * decided on the set, like the later layers.  Needs a plain top-K set: no
 * always-included or static ids, no adaptive K (EEVP_EINVAL otherwise). */
#define EEVP_CTX_SCREEN 4u
/** @} */

/** Largest always-included or static list. */
#define EEVP_MAX_LIST 65536

/** Static candidate list use. */
typedef enum eevp_static {
    EEVP_STATIC_NONE = 0,  /**< no static list (static_ids ignored) */
    EEVP_STATIC_UNION = 1, /**< top-K united with the static list */
    EEVP_STATIC_ONLY = 2   /**< the static list alone: no top-K, no full
                              projection at the pruning layer unless checked.
                              A checked pruning layer is still decided on the
                              full vocabulary: with first_layer = L-1 (and
                              prune_layer -1) that is the last layer, so the
                              set is held but never used; set prune_layer
                              below it to decide there on the list */
} eevp_static;

/** Initialiser of an eevp_ctx_options with the defaults (n_layers to set). */
#define EEVP_CTX_OPTIONS_INIT \
    { (uint32_t)sizeof(eevp_ctx_options), 0, 1, 256, 0, 1, -1, EEVP_FINAL_FULL, \
      EEVP_CRITERION_TOP2_GAP, 0.9f, EEVP_SCHEDULE_CONSTANT, 4.0f, 1024, 2, NULL, \
      0u, NULL, 0, EEVP_STATIC_NONE, NULL, 0, -1, 0, 0.0f, 1, 0u, 0, 0u }

/** Initialise *opts to the defaults (same as EEVP_CTX_OPTIONS_INIT): batch 1,
 * K = 256, f = 0, i = 1, p = f, full final layer, top-2 gap with lambda 0.9,
 * constant threshold (tau 4, N 1024 for the CALM schedule), patience 2.
 * n_layers has no default and must be set.  EEVP_EINVAL for NULL. */
EEVP_API int eevp_ctx_options_init(eevp_ctx_options *opts);

/** Bytes a context with these options on this head would allocate: exactly
 * what eevp_ctx_create asks its allocator for.  On failure *bytes is 0. */
EEVP_API int eevp_ctx_memory_estimate(int64_t *bytes, const eevp_head *head,
                                      const eevp_ctx_options *opts);

/** Create a context on a head.  The head must outlive the context.  All the
 * context's memory, O(max_batch * (K*d + V)) floats, is allocated here;
 * steps allocate nothing.  On failure *out is NULL and msg (if not NULL)
 * receives an explanation, as for eevp_head_create. */
EEVP_API int eevp_ctx_create(eevp_ctx **out, const eevp_head *head,
                             const eevp_ctx_options *opts,
                             char *msg, size_t msg_size);
/** Free a context (NULL is a no-op); destroys a custom criterion's state.
 * Never from inside the context's own callback. */
EEVP_API void eevp_ctx_free(eevp_ctx *ctx);

/** Detail of the last error returned by a function that takes a non-const
 * eevp_ctx *, "" after such a call succeeded (functions taking a const
 * context report through their return code only).  The text is owned by the
 * context and valid until the next call on it.  Never NULL (a NULL ctx gives
 * a fixed text). */
EEVP_API const char *eevp_ctx_errmsg(const eevp_ctx *ctx);

/** Abandon any step in progress and forget every per-sequence state.  The
 * configuration, the criterion and the statistics are kept. */
EEVP_API int eevp_ctx_reset(eevp_ctx *ctx);

/** 1 when the host must hand over `layer` in every step (a checked layer, a
 * re-pruning layer or the pruning layer; with threshold +INFINITY only
 * those still needed), 0 when it need not, EEVP_ERANGE outside 0 .. L-1. */
EEVP_API int eevp_ctx_layer_required(const eevp_ctx *ctx, int32_t layer);

/** Bytes this context allocated (equals eevp_ctx_memory_estimate, except on
 * a shard context: eevp_ctx_create_shard). */
EEVP_API int64_t eevp_ctx_memory(const eevp_ctx *ctx);

/* ------------------------------------------------------------------------ */
/* Step: one token for n_seq sequences                                      */
/* ------------------------------------------------------------------------ */

/** Begin a step for sequences 0 .. n_seq-1 (1 <= n_seq <= max_batch).
 * positions[s] is sequence s's generation index t >= 0: how many tokens it
 * has generated before this one (0 for the token predicted from the last
 * prompt position), not its position in the context.  Only the decaying
 * (CALM) threshold reads it (a custom criterion sees it as view.position);
 * NULL means t = 0 for all.  Prompt tokens need no step: they run through
 * the layers without one (docs/INTEGRATION.md).  EEVP_ESTATE when a step
 * is in progress (finish it with eevp_step_end or eevp_step_abandon). */
EEVP_API int eevp_step_begin(eevp_ctx *ctx, int32_t n_seq, const int32_t *positions);

/** Hand over the hidden states (raw, before the final norm) after `layer`.
 *
 * Layers strictly increase within a step.  Layers for which
 * eevp_ctx_layer_required is 0 may be skipped, or handed over (then they are
 * ignored); skipping a required layer is EEVP_ESTATE.
 *
 * hidden holds n_rows rows of d floats, row r at hidden + r*ld (ld >= d):
 *  - row_seq == NULL, n_rows == n_seq: row s is sequence s; rows of finished
 *    sequences are not read;
 *  - row_seq == NULL, n_rows == running count: the running sequences'
 *    rows, compacted, in increasing sequence order;
 *  - row_seq != NULL: row r is sequence row_seq[r]; the map must name every
 *    running sequence exactly once and nothing else.
 *
 * Each running sequence is then decided independently: it exits (reason
 * EEVP_REASON_CONFIDENT) when its confidence c > lambda(t), both as the
 * floats eevp_result reports; at layer L-1 it resolves with
 * EEVP_REASON_LAST_LAYER.  Query eevp_step_result.
 *
 * Returns EEVP_OK; or an argument/state error with nothing changed; or, when
 * one or more sequences failed on their own (EEVP_ENONFINITE for NaN/Inf in
 * its hidden state or logits, EEVP_EUSER / EEVP_ECALLBACK from a custom
 * criterion), the first such code: those sequences finish with
 * EEVP_REASON_ERROR and that status, the others were processed normally. */
EEVP_API int eevp_step_layer(eevp_ctx *ctx, int32_t layer, const float *hidden,
                             int64_t ld, int32_t n_rows, const int32_t *row_seq);

/** Number of sequences of the current step still running (>= 0), or an error.
 * After eevp_step_end, 0. */
EEVP_API int32_t eevp_step_n_running(const eevp_ctx *ctx);

/** End the step: every sequence must have a result (EEVP_ESTATE otherwise).
 * Commits the step's statistics.  Results and candidates stay readable
 * until the next eevp_step_begin or eevp_ctx_reset. */
EEVP_API int eevp_step_end(eevp_ctx *ctx);

/** Drop the step in progress: its partial results go, its statistics are not
 * counted.  With no step in progress (none begun, or already ended) it does
 * nothing and returns EEVP_OK, so an ended step's results stay readable. */
EEVP_API int eevp_step_abandon(eevp_ctx *ctx);

/** @brief Per-sequence result of the current (or just ended) step. */
typedef struct eevp_result {
    uint32_t struct_size; /**< set by the caller: sizeof(eevp_result) */
    int32_t reason;       /**< eevp_reason */
    int32_t status;       /**< EEVP_OK, or the sequence's own error */
    int32_t token;        /**< global token id; -1 unless resolved */
    int32_t layer;        /**< layer where it resolved; -1 while running */
    int32_t pruned;       /**< 1 when decided on the pruned set, else 0 */
    float confidence;     /**< c at the deciding layer (NaN while running) */
    float threshold;      /**< lambda(t) used for this sequence */
    int32_t pruned_token; /**< argmax over the pruned set when pruned == 1
                             (differs from token only under
                             EEVP_CTX_EXACT_EXIT), else -1 */
    int32_t set_size;     /**< size of the pruned set the sequence held at
                             resolution, 0 without one */
} eevp_result;

/** Read sequence seq's result.  out->struct_size must be set (at least the
 * first version's size, EEVP_ESTRUCT otherwise); the library fills what it
 * knows and zero-fills the rest of what struct_size covers.  The same rule
 * holds for every struct the library writes (eevp_stats). */
EEVP_API int eevp_step_result(const eevp_ctx *ctx, int32_t seq, eevp_result *out);

/** Copy the top min(capacity, n) candidates of a resolved sequence into
 * logits[] and ids[] (global ids), in the order: n is the pruned set's size
 * (eevp_result.set_size: K, or what the candidate-set policies made of it)
 * for a pruned decision, and V for a full-vocabulary one and for an
 * exact-token exit (EEVP_CTX_EXACT_EXIT), whose candidates are the full
 * head's logits at the exit layer.  *n_out receives how many were written.
 * The logits are transformed (norm, scale, bias, soft-cap).  Pointers are
 * the caller's; on failure nothing is written and *n_out is 0. */
EEVP_API int eevp_step_candidates(eevp_ctx *ctx, int32_t seq, int32_t capacity,
                                  float *logits, int32_t *ids, int32_t *n_out);

/* ------------------------------------------------------------------------ */
/* Criteria: user-defined exit criteria                                     */
/* ------------------------------------------------------------------------ */

/** @name Criterion needs
 * What a criterion needs, eevp_criterion_vtbl.needs. */
/** @{ */
#define EEVP_NEEDS_LOGITS      1u /**< logits over the candidates */
#define EEVP_NEEDS_PREV_HIDDEN 2u /**< hidden state at the previous checked layer */
/** @} */

/** @brief One sequence at one checked layer, as shown to a criterion.
 *
 * Every pointer is valid only during the callback. */
typedef struct eevp_exit_view {
    uint32_t struct_size;     /**< sizeof(eevp_exit_view) of the library */
    int32_t seq;              /**< sequence index in the step */
    int32_t layer;            /**< this layer */
    int32_t n_layers;         /**< L */
    int32_t position;         /**< generation index t (eevp_step_begin) */
    int32_t dim;              /**< d */
    const float *hidden;      /**< raw hidden state (before the norm), d floats */
    const float *prev_hidden; /**< previous checked layer's, NULL at the first
                                 check or without EEVP_NEEDS_PREV_HIDDEN */
    int32_t n;                /**< number of candidates; 0 without logits */
    int32_t pruned;           /**< 1 when the candidates are the pruned set */
    const float *logits;      /**< n transformed logits, NULL without logits */
    const int32_t *ids;       /**< n global ids, NULL without logits: the pruned
                                 set in its order at the pruning layer, or
                                 the vocabulary in row order */
    /** @{ */
    int32_t top1_id, top2_id; /**< in the order; -1 when absent */
    /** @} */
    /** @{ */
    float top1_logit, top2_logit; /**< logits of top1_id and top2_id */
    /** @} */
    float log_sum_exp;        /**< log(sum(exp(logits))) */
    float threshold;          /**< lambda(t) */
} eevp_exit_view;

/** @brief A criterion's function table.
 *
 * Copied at registration. */
typedef struct eevp_criterion_vtbl {
    uint32_t struct_size;  /**< sizeof(eevp_criterion_vtbl); first, always */
    const char *name;      /**< may be NULL; not copied, keep it alive */
    uint32_t needs;        /**< EEVP_NEEDS_* */
    /** Required.  Write the confidence (finite) to *confidence.  *exit comes
     * in as -1, meaning "exit iff confidence > threshold" (both floats); set
     * it to 0 or 1 to decide yourself (ignored at the last layer; with
     * threshold +INFINITY decide is only called there).  Return 0, or
     * non-zero for an error (the sequence then finishes with EEVP_EUSER).
     * Must not call back into the context (EEVP_EBUSY). */
    int (*decide)(void *state, const eevp_exit_view *view,
                  float *confidence, int32_t *exit);
    /** May be NULL.  Called for each sequence at every eevp_step_begin. */
    void (*reset)(void *state, int32_t seq);
    /** May be NULL.  Called once with state when the criterion is replaced or
     * the context freed. */
    void (*destroy)(void *state);
} eevp_criterion_vtbl;

/** Register a user criterion (the table is copied, state is taken over).
 * Replaces the criterion in use; the previous custom state, if any, is
 * destroyed.  Not during a step (EEVP_ESTATE).  On failure the context keeps
 * its criterion and the caller keeps state (destroy is not called). */
EEVP_API int eevp_ctx_set_criterion(eevp_ctx *ctx, const eevp_criterion_vtbl *vtbl,
                                    void *state);

/** The threshold lambda(t) the context applies at generation index t >= 0. */
EEVP_API int eevp_ctx_threshold(const eevp_ctx *ctx, int32_t t, float *lambda);

/* ------------------------------------------------------------------------ */
/* Kernels: the building blocks, for runtimes that only want them            */
/* ------------------------------------------------------------------------ */

/** Bytes of workspace eevp_head_logits / eevp_head_pruned_logits need for n
 * hidden states (the normalised copies), or a negative error.  Kernels take
 * 1 <= n <= EEVP_MAX_BATCH hidden states (EEVP_ERANGE otherwise) and report
 * NaN/Inf in a hidden state as EEVP_ENONFINITE. */
EEVP_API int64_t eevp_head_workspace_size(const eevp_head *head, int32_t n);

/** Full logits for n hidden states: logits[r*ld_logits + v] = z_v(hidden row r),
 * v in 0 .. V-1 (local row index; global id = v + vocab_offset).  work holds
 * eevp_head_workspace_size(head, n) bytes, aligned to 64 bytes.  Thread-safe
 * on a shared head. */
EEVP_API int eevp_head_logits(const eevp_head *head, int32_t n,
                              const float *hidden, int64_t ld_hidden,
                              float *logits, int64_t ld_logits, void *work);

/** Gather rows of W: out[j*ld_out + c] = W[ids[j] - vocab_offset][c] for j < k,
 * and bias_out[j] = logit_bias of that token (0 without bias) when bias_out
 * is not NULL.  1 <= k <= V; ids are global and must be inside the head
 * (EEVP_ERANGE otherwise, nothing written). */
EEVP_API int eevp_head_gather(const eevp_head *head, const int32_t *ids, int32_t k,
                              float *out, int64_t ld_out, float *bias_out);

/** Pruned logits: logits[r*ld_logits + j] = z for the token whose row was
 * gathered into rows[j*ld_rows ...] with bias bias[j] (NULL: 0), for n hidden
 * states and 1 <= k <= V rows (ld_rows <= INT32_MAX).  Uses the head's norm,
 * scale and soft-cap.  work as for eevp_head_logits. */
EEVP_API int eevp_head_pruned_logits(const eevp_head *head, int32_t k,
                                     const float *rows, int64_t ld_rows,
                                     const float *bias, int32_t n,
                                     const float *hidden, int64_t ld_hidden,
                                     float *logits, int64_t ld_logits, void *work);

/** Bytes of workspace eevp_head_screen needs for k, or a negative error
 * (EEVP_EINVAL for a head created without screen_mult). */
EEVP_API int64_t eevp_head_screen_workspace_size(const eevp_head *head, int32_t k);

/** Approximate pruning step for one hidden state, on a head created with
 * screen_mult = m >= 2: the head's int8 copy ranks all V rows (the hidden
 * state quantised to int8 as well), the best min(V, m*k) get their exact
 * logits, and the best k of those, in the order, are written: global ids to
 * ids[], their exact transformed logits to logits[] (when not NULL).  Equal
 * to the exact top-k whenever the exact top-k lies inside the screened set;
 * an approximation otherwise (recall measured in docs/BENCHMARKS.md).  work
 * holds eevp_head_screen_workspace_size(head, k) bytes, 64-aligned.
 * 1 <= k <= V (EEVP_ERANGE); EEVP_ENONFINITE for NaN/Inf. */
EEVP_API int eevp_head_screen(const eevp_head *head, const float *hidden, int32_t k,
                              int32_t *ids, float *logits, void *work);

/** Bytes of workspace eevp_topk needs for k of n values. */
EEVP_API int64_t eevp_topk_workspace_size(int64_t n, int32_t k);

/** Exact top-k of x[0..n-1] in the order (value descending, index ascending),
 * by selection, O(n + k log k) expected.  Writes the k indices plus
 * id_offset to ids[] and, when values is not NULL, their values.  1 <= k <= n
 * <= EEVP_MAX_VOCAB and n - 1 + id_offset <= INT32_MAX (EEVP_ERANGE).
 * EEVP_ENONFINITE when x holds a NaN (-Inf and +Inf are ordered values). */
EEVP_API int eevp_topk(const float *x, int64_t n, int32_t k, int64_t id_offset,
                       int32_t *ids, float *values, void *work);

/* ------------------------------------------------------------------------ */
/* Statistics                                                               */
/* ------------------------------------------------------------------------ */

/** @brief Per-context statistics, over the steps ended since creation or the
 * last eevp_ctx_stats_reset (abandoned steps are not counted).
 *
 * FLOPs and bytes are counted analytically: a projection over R rows of W for one hidden
 * state is (2d-1)*R FLOPs and b*R*d bytes of W, b the bytes of one weight as
 * the head stores it (4 in fp32, 2 in fp16 and bf16); a gather of K rows
 * reads b*K*d bytes of W, and a pruned check over them 4*K*d (gathered rows
 * are fp32).  The baseline is a full-vocabulary projection at every check
 * actually performed. */
typedef struct eevp_stats {
    uint32_t struct_size;          /**< set by the caller: sizeof(eevp_stats) */
    int32_t n_layers;              /**< length of the exit histogram */
    int64_t tokens;                /**< sequences resolved (errors included) */
    int64_t exited_early;          /**< EEVP_REASON_CONFIDENT */
    int64_t reached_last;          /**< EEVP_REASON_LAST_LAYER */
    int64_t failed;                /**< EEVP_REASON_ERROR */
    int64_t checks;                /**< confidence evaluations */
    int64_t pruned_decisions;      /**< tokens decided on the pruned set */
    /** Among tokens that reached the last layer and were decided on the full
     * head while holding a pruned set: how many had their token inside it. */
    int64_t k_coverage_hits;
    int64_t k_coverage_total;      /**< the denominator */
    double k_coverage_final;       /**< hits / total, 0 when total == 0 */
    int64_t head_flops;            /**< spent */
    int64_t head_flops_baseline;   /**< full vocabulary at every check */
    int64_t head_bytes;            /**< W bytes read, gathers included */
    int64_t head_bytes_baseline;   /**< W bytes the baseline reads */
    /** @name Candidate-set policies */
    /** @{ */
    int64_t pruned_sets;           /**< sets built (prunings and re-prunings) */
    int64_t set_size_sum;          /**< their sizes summed (mean = / pruned_sets) */
    int64_t reprunes;              /**< re-prunings performed */
    int64_t reprune_changed;       /**< ... whose set differed from the one before */
    int64_t always_emitted;        /**< tokens emitted that are always-included ids */
    int64_t static_emitted;        /**< tokens emitted from the static list */
    int64_t exact_exits;           /**< pruned exits re-decided on the full head */
    int64_t exact_exit_changed;    /**< ... where the full argmax differed */
    /** @} */
    /** @name Vocabulary-parallel exchanges (since 1.2; 0 on an unsharded context)
     * Per token: divide by tokens; per exchange: by shard_exchanges (one per
     * required layer, two at a layer with exact-token exits). */
    /** @{ */
    int64_t shard_exchanges;       /**< records produced (one per exchange) */
    int64_t shard_bytes_sent;      /**< bytes of the records this rank produced */
    int64_t shard_bytes_received;  /**< bytes of the merged records it absorbed */
    /** @} */
} eevp_stats;

/** Read the statistics.  out->struct_size must be set. */
EEVP_API int eevp_ctx_stats(const eevp_ctx *ctx, eevp_stats *out);
/** Copy the exit-layer histogram: counts[l] = tokens resolved at layer l,
 * for l < min(n, L). */
EEVP_API int eevp_ctx_exit_histogram(const eevp_ctx *ctx, int64_t *counts, int32_t n);
/** Copy the histogram of pruned-set sizes: counts[s] = sets built of size s,
 * for s < n (sizes >= n are not copied). */
EEVP_API int eevp_ctx_set_size_histogram(const eevp_ctx *ctx, int64_t *counts, int32_t n);
/** Zero the statistics. */
EEVP_API int eevp_ctx_stats_reset(eevp_ctx *ctx);

/* ------------------------------------------------------------------------ */
/* Lossless early exit: drafts verified by the full head (since 1.2)        */
/* ------------------------------------------------------------------------ */

/** @brief A verifier of drafted tokens (opaque; one per decoding thread).
 *
 * Self-speculative decoding makes early exit lossless: early exits draft a
 * few tokens, the full head verifies all of them in one pass, and the output
 * is exactly the full model's (greedy), or exactly distributed as the full
 * model's (sampling).  A round of sequence slot s starts from t_0, the last
 * token already emitted (eevp_spec_round), collects drafts t_1 .. t_n
 * (eevp_spec_draft from a drafting context's step, or eevp_spec_add_draft),
 * and ends with eevp_spec_verify on n + 1 hidden rows: row i is the raw
 * final-layer hidden state at the position whose input is t_i, so row i
 * verifies t_{i+1} and row n gives the bonus token.  docs/INTEGRATION.md
 * says how the host completes the KV cache of a round's positions. */
typedef struct eevp_spec eevp_spec;

/** Largest eevp_spec_options.max_draft: a round verifies at most 8 rows,
 * which the full projection reads W once for. */
#define EEVP_MAX_DRAFT 7

/** @brief Options of eevp_spec_create (struct rules as eevp_head_options). */
typedef struct eevp_spec_options {
    uint32_t struct_size;   /**< sizeof(eevp_spec_options) */
    int32_t max_batch;      /**< sequence slots, 1 .. EEVP_MAX_BATCH (default 1) */
    int32_t max_draft;      /**< drafts per round, 1 .. EEVP_MAX_DRAFT (default 4) */
    /** Largest candidate set a sampled draft records as its distribution q
     * (1 .. V, default 256): a drafting context's K (or V for a
     * full-vocabulary decision) must fit.  Greedy verifiers record none. */
    int32_t max_set;
    /** Layers of the drafting model, for the acceptance-per-exit-layer
     * statistics (0: none). */
    int32_t n_layers;
    /** 0: greedy (accept the longest prefix equal to the full head's argmax,
     * ties to the lowest id).  > 0: speculative sampling at this
     * temperature: the emitted tokens are distributed exactly as sampling
     * the full head at T (after top_k / top_p, applied the same way to the
     * full head's p and to the drafts' q).  Host-side logit processors
     * (penalties, grammars) are outside the guarantee. */
    float temperature;
    int32_t top_k;          /**< keep the k most likely tokens; 0: off */
    float top_p;            /**< keep the smallest top set of mass >= top_p; 1: off */
    /** Random numbers come from (seed, the round's key, position, use), so
     * a sequence's tokens do not depend on the batch. */
    uint64_t seed;
    const eevp_allocator *allocator; /**< copied; NULL means malloc/free */
} eevp_spec_options;

/** Initialiser of an eevp_spec_options with the defaults. */
#define EEVP_SPEC_OPTIONS_INIT \
    { (uint32_t)sizeof(eevp_spec_options), 1, 4, 256, 0, 0.0f, 0, 1.0f, 0u, NULL }

/** Initialise *opts to the defaults.  EEVP_EINVAL for NULL. */
EEVP_API int eevp_spec_options_init(eevp_spec_options *opts);

/** Create a verifier on the full head.  Every buffer (draft records:
 * max_batch x max_draft x max_set; the rows and logits of a verification)
 * is allocated here; nothing is allocated per token.  On failure *out is
 * NULL and msg says why. */
EEVP_API int eevp_spec_create(eevp_spec **out, const eevp_head *head,
                              const eevp_spec_options *opts, char *msg, size_t msg_size);
/** Free a verifier (NULL is a no-op). */
EEVP_API void eevp_spec_free(eevp_spec *spec);
/** The last error's explanation (never NULL). */
EEVP_API const char *eevp_spec_errmsg(const eevp_spec *spec);
/** Bytes the verifier allocated, or EEVP_EINVAL. */
EEVP_API int64_t eevp_spec_memory(const eevp_spec *spec);

/** Start a round for slot seq (0 .. max_batch-1), dropping any drafts it
 * held: t_0 sits at `position` (>= 0), draft i at position + i.  key names
 * the sequence for the random numbers (any value the host keeps per
 * sequence). */
EEVP_API int eevp_spec_round(eevp_spec *spec, int32_t seq, uint64_t key, int32_t position);

/** Take the next draft of slot seq from sequence ctx_seq of a drafting
 * context's current step, which must hold its result (before
 * eevp_step_end).  When the token exited confidently
 * (EEVP_REASON_CONFIDENT), it becomes draft n + 1 and *token receives it:
 * the result's token when greedy (q is a point mass), else a token drawn
 * from the step's candidates at the verifier's temperature (q is that
 * distribution, truncated by top_k / top_p, zero outside the set).  A token
 * that reached the context's last layer (its draft-depth limit) is no
 * draft: *token is -1, nothing is recorded, and the round should be
 * verified now.  *more (may be NULL) is 1 while another draft fits.
 * EEVP_ESTATE without a round, EEVP_ERANGE when the round is full or the
 * set exceeds max_set, EEVP_ENONFINITE when every candidate is masked; the
 * record is unchanged on any error.  The drafting
 * context may use any head over the same token ids and any policy
 * (pruning, screening, exact-token exits, threads): verification keeps the
 * output exact whatever drafted. */
EEVP_API int eevp_spec_draft(eevp_spec *spec, int32_t seq, eevp_ctx *ctx, int32_t ctx_seq,
                             int32_t *token, int32_t *more);

/** Append a draft the host chose itself, as a point mass q (exact when the
 * host drafted greedily, also under sampling).  layer: where it exited, for
 * the statistics (-1: unknown).  Errors as eevp_spec_draft, and EEVP_ERANGE
 * for a token outside the head. */
EEVP_API int eevp_spec_add_draft(eevp_spec *spec, int32_t seq, int32_t token, int32_t layer);

/** Drafts slot seq holds in its round, or a negative error. */
EEVP_API int32_t eevp_spec_n_drafts(const eevp_spec *spec, int32_t seq);

/** @brief Per-sequence outcome of a verification. */
typedef struct eevp_spec_result {
    uint32_t struct_size; /**< set by the caller: sizeof(eevp_spec_result) */
    int32_t status;       /**< EEVP_OK, or this sequence's error (its round kept) */
    int32_t n_drafted;    /**< n */
    int32_t n_accepted;   /**< drafts accepted, 0 .. n (t_1 .. t_a are emitted) */
    int32_t token;        /**< the token after them: the correction, or the bonus
                             when all were accepted; -1 on error */
    int32_t reserved;     /**< 0 */
} eevp_spec_result;

/** Verify the rounds of n_seq slots seqs[0 .. n_seq-1] (distinct) at once.
 * hidden holds, slot after slot in the order of seqs, n_j + 1 rows each
 * (ld_hidden floats apart; n_j = eevp_spec_n_drafts); the rows go through
 * the full head in chunks of 8 on the fixed-order kernel, so a sequence's
 * outcome does not depend on the others.  results[j] gets slot seqs[j]'s
 * outcome: every element's struct_size set by the caller to the same value,
 * which is also the stride the library walks the array with (so an array
 * of a newer or older layout works).  A slot whose rows hold NaN or
 * Inf gets status EEVP_ENONFINITE and keeps its round for a retry; every
 * other verified slot's round ends (start the next with eevp_spec_round).
 * Logits that overflow to Inf count as non-finite too; a row whose every
 * token is masked (-inf logit bias) gives the lowest id, as a context does.
 * A bad argument (a slot without a round, repeated, out of range) fails the
 * whole call with nothing changed. */
EEVP_API int eevp_spec_verify(eevp_spec *spec, int32_t n_seq, const int32_t *seqs,
                              const float *hidden, int64_t ld_hidden,
                              eevp_spec_result *results);

/** @brief Verifier statistics since creation or the last reset. */
typedef struct eevp_spec_stats {
    uint32_t struct_size;  /**< set by the caller: sizeof(eevp_spec_stats) */
    int32_t n_layers;      /**< length of the per-layer arrays */
    int64_t rounds;        /**< rounds verified (errors excluded) */
    int64_t drafted;       /**< drafts verified */
    int64_t accepted;      /**< ... accepted; mean accepted length = accepted / rounds */
    int64_t emitted;       /**< tokens emitted: accepted + one per round */
    int64_t verify_rows;   /**< rows projected through the full head */
    int64_t failed;        /**< slots that failed verification */
} eevp_spec_stats;

/** Read the statistics.  out->struct_size must be set. */
EEVP_API int eevp_spec_stats_get(const eevp_spec *spec, eevp_spec_stats *out);
/** Acceptance per exit layer of the drafts: drafted[l] and accepted[l] for
 * l < min(n, n_layers) (either pointer may be NULL). */
EEVP_API int eevp_spec_layer_stats(const eevp_spec *spec, int64_t *drafted, int64_t *accepted,
                                   int32_t n);
/** Zero the statistics. */
EEVP_API int eevp_spec_stats_reset(eevp_spec *spec);


/* ------------------------------------------------------------------------ */
/* Vocabulary-parallel heads: one decision from P shards (since 1.2)        */
/* ------------------------------------------------------------------------ */

/** Largest number of shards. */
#define EEVP_MAX_SHARDS 256
/** Version of the shard record format (separate from the library's): a
 * record of another format version is EEVP_ERECORD. */
#define EEVP_SHARD_FORMAT 1

/** @brief Options of eevp_ctx_create_shard (the rules of eevp_head_options
 * apply).
 *
 * Each of P processes (ranks) holds one shard: a head over a block of
 * consecutive rows of the whole W, created with vocab_offset = the block's
 * first row.  The blocks tile [0, total_vocab) in shard-index order (shard 0
 * starts at row 0, shard i+1 where shard i ends); sizes may differ.  Every
 * shard must use the same head transform (norm, eps, scale, soft-cap) and
 * kernel set, and every rank the same context options. */
typedef struct eevp_shard_options {
    uint32_t struct_size;  /**< sizeof(eevp_shard_options) */
    int32_t shard_index;   /**< this rank's shard, 0 .. n_shards-1 */
    int32_t n_shards;      /**< P, 1 .. EEVP_MAX_SHARDS */
    /** Candidates a full-vocabulary summary carries: the merged top entries
     * (the pruned set at the pruning layer, the candidates of a
     * full-vocabulary decision).  0 means max(k, 2); else max(k, 2) ..
     * EEVP_MAX_LIST. */
    int32_t top_k;
    int64_t total_vocab;   /**< V of the whole head, >= 1 */
} eevp_shard_options;

/** Initialiser of an eevp_shard_options: one shard, top_k 0; total_vocab
 * and, for P > 1, shard_index and n_shards to set. */
#define EEVP_SHARD_OPTIONS_INIT { (uint32_t)sizeof(eevp_shard_options), 0, 1, 0, 0 }

/** Initialise *opts to the defaults (same as EEVP_SHARD_OPTIONS_INIT);
 * EEVP_EINVAL for NULL. */
EEVP_API int eevp_shard_options_init(eevp_shard_options *opts);

/** @brief Create a context on one shard of a vocabulary-parallel head.
 *
 * Every rank creates one with the same `opts` on its own shard head.  The
 * context then takes eevp_shard_layer / eevp_shard_absorb instead of
 * eevp_step_layer (EEVP_ESTATE); eevp_step_begin, _result, _candidates,
 * _end, _abandon, eevp_ctx_reset, the statistics and eevp_ctx_threshold work
 * as on any context, and every rank reads the same results, except that the
 * candidates of a full-vocabulary decision (or an exact-token exit) are the
 * merged top_k entries, not V logits.  eevp_ctx_memory counts the shard's
 * buffers too, which eevp_ctx_memory_estimate (of an unsharded context)
 * does not.  What the
 * records can carry decides what is refused here (EEVP_EINVAL, with the
 * reason in msg): the candidate-set policies (always-included and static
 * ids, adaptive K), EEVP_CTX_SCREEN, the JS criterion without pruning
 * (its divergence over the vocabulary does not decompose across shards;
 * with pruning, full summaries carry the held set's logits).  A custom criterion that asks for logits is refused by
 * eevp_ctx_set_criterion unless every check it sees is on the pruned set
 * (pruning layer not checked, no re-pruning, EEVP_FINAL_PRUNED).
 * docs/SCALE_OUT.md has the protocol. */
EEVP_API int eevp_ctx_create_shard(eevp_ctx **out, const eevp_head *shard_head,
                                   const eevp_ctx_options *opts,
                                   const eevp_shard_options *shard, char *msg,
                                   size_t msg_size);

/** Bytes of the largest record this shard context can produce (a full
 * summary of max_batch sequences); a negative error for a context that is
 * not a shard's. */
EEVP_API int64_t eevp_shard_record_capacity(const eevp_ctx *ctx);

/** @brief Hand over the hidden states after `layer` on a shard context.
 *
 * The arguments and the rules for layers and rows are those of
 * eevp_step_layer; every rank passes the same hidden states (they are read
 * during this call only).  On return *size is 0 when the layer is done (not
 * required, or decided without an exchange), or the size of the record
 * written to record[0 .. *size-1] (at most eevp_shard_record_capacity;
 * capacity, the bytes available, must be at least that: EEVP_ERANGE
 * otherwise).  That record must then be merged with every
 * other rank's record of the same exchange (all of the same size) through
 * eevp_shard_merge, in any order or tree, and the merged record handed to
 * eevp_shard_absorb before anything else is done with the context.
 * Criteria that read no logits (saturation, a custom one without
 * EEVP_NEEDS_LOGITS) decide here, the same on every rank, and an exchange
 * follows only for the sequences that exit (or reach the last layer), for
 * the full head's argmax.  Returns like eevp_step_layer; sequences may fail
 * on their own (NaN/Inf in a hidden state) before the exchange. */
EEVP_API int eevp_shard_layer(eevp_ctx *ctx, int32_t layer, const float *hidden, int64_t ld,
                              int32_t n_rows, const int32_t *row_seq, void *record,
                              int64_t capacity, int64_t *size);

/** @brief Merge record `in` into record `acc`, both `size` bytes.
 *
 * Needs no context: a record describes itself (usable as the function of a
 * user-defined MPI_Op over a contiguous type of `size` bytes).  The merge
 * combines no floating-point values, so it is exactly associative and
 * commutative: any order and any tree over the same records gives the same
 * bytes.  Records come from other processes and are checked: a malformed
 * or truncated record, another format version, another shape (kind, K, P,
 * number of sequences), records of another step, layer, configuration or
 * hidden states, and a shard or a set position filled twice turn acc into
 * an error record, which absorbs later merges (an error in either operand
 * stays) and which eevp_shard_absorb reports.  Returns EEVP_OK,
 * EEVP_ERECORD (acc now holds the error), or EEVP_EINVAL / EEVP_ERANGE for
 * NULL pointers or a size below a header's or above INT32_MAX (nothing
 * written). */
EEVP_API int eevp_shard_merge(void *acc, const void *in, int64_t size);

/** @brief Hand the merged record of an exchange back to the shard context.
 *
 * Every rank then makes the same decisions: exits, global tokens,
 * confidences, pruned sets (each rank gathers the rows of the set it owns).
 * When a decision needs a second exchange at the same layer (exact-token
 * exits) *next_size receives the size of the next record, written to
 * record, to be merged and absorbed like the first; else 0 and the layer is
 * done.  The host goes on while *next_size > 0, whatever the return code
 * (eevp_step_end refuses while an exchange is pending).  Returns EEVP_OK,
 * or the first per-sequence error: sequences fail on their own (EEVP_ENONFINITE
 * for NaN/Inf in any shard's logits, EEVP_ERECORD for a sequence whose part
 * of the record is incomplete or inconsistent, a custom criterion's
 * EEVP_EUSER / EEVP_ECALLBACK) and the others are decided.  A merged record
 * that is an error record, is malformed, lacks a shard, or disagrees with
 * this rank's own (step, layer, configuration, hidden states) finishes all
 * the exchange's sequences with EEVP_REASON_ERROR and status EEVP_ERECORD on
 * every rank (*next_size 0) and returns EEVP_ERECORD; a `size` other than
 * the exchange's, or a capacity below eevp_shard_record_capacity, is
 * EEVP_ERANGE with nothing changed. */
EEVP_API int eevp_shard_absorb(eevp_ctx *ctx, const void *merged, int64_t size, void *record,
                               int64_t capacity, int64_t *next_size);

#ifdef __cplusplus
}
#endif

#endif /* EEVP_H */
