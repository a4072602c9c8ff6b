/* SPDX-License-Identifier: MIT */
/*
 * bench.c - libeevp's side of the benchmark (issue 4; docs/BENCHMARKS.md).
 *
 * Prints one machine-readable line per figure,
 *     R <shape> <threads> <metric> <value>
 * (times in ms, medians of `reps` repetitions after a warm-up), plus
 *     I <key> <text>
 * for the environment.  tests/bench/run_bench.py runs this, the peers, and
 * prints the table and the RATIO lines.
 *
 * "cold": before each repetition a buffer larger than the last-level cache is
 * written, as the transformer layer between two checks would do; the time of
 * that eviction is not counted.  Targets are held on the cold figures.
 *
 * Usage: bench [--quick] [--threads 1,2] [--shapes llama2,llama3,qwen,gpt2]
 *              [--reps n] [--parts ksbq] [--hidden FILE]
 * --parts: k kernels, s step API, b batched pruned checks, q int8 screening,
 * v vocabulary-parallel shards (the protocol's share and message sizes);
 * --hidden: a real model's hidden states (tests/bench/real_hidden.py) for
 * the screening recall and the overlap of candidate sets.
 */
#include "internal.h"
#include "ctx.h" /* bench_shard times a shard's own projection */

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

/* OpenBLAS extensions, declared by its cblas.h; repeated for other BLAS
 * headers. */
void openblas_set_num_threads(int);
char *openblas_get_corename(void);
char *openblas_get_config(void);

#define MAXREP 31
#define EVICT_BYTES ((size_t)128 << 20) /* 4x the 32 MB L3 */

typedef struct shape {
    const char *name;
    int64_t V, d;
} shape;

static const shape SHAPES[] = {
    {"llama2", 32000, 4096},
    {"llama3", 128256, 4096},
    {"qwen", 151936, 896},
    {"gpt2", 50257, 768},
};

static int reps = 7;
static const char *parts = "ksbqv"; /* kernels, steps, batch, screen, vocab-parallel */
static int quick = 0;
static volatile unsigned char *evict_buf;
static const char *cur_shape = "";
static int cur_threads = 1;

/* BENCH_CPUTIME=1: this thread's CPU time instead of wall time, to see
 * through a machine shared with other jobs (single-threaded figures only). */
static clockid_t clock_id = CLOCK_MONOTONIC;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(clock_id, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static void evict(void)
{
    size_t i;
    for (i = 0; i < EVICT_BYTES; i += 64)
        evict_buf[i]++;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *t, int n)
{
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

static void report(const char *metric, double v)
{
    printf("R %s %d %s %.6g\n", cur_shape, cur_threads, metric, v);
    fflush(stdout);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static double urand(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) * (1.0 / 9007199254740992.0);
}

static float nrand(void)
{
    double u1 = urand(), u2 = urand();
    if (u1 < 1e-300)
        u1 = 1e-300;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static void *xmalloc(size_t n)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? n : 64) != 0) {
        fprintf(stderr, "bench: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

/* ---- a timed closure ---- */

typedef void (*bench_fn)(void *arg);

static double measure(bench_fn f, void *arg, int cold)
{
    double t[MAXREP];
    int r;
    f(arg); /* warm-up */
    for (r = 0; r < reps; r++) {
        double t0;
        if (cold)
            evict();
        t0 = now_ms();
        f(arg);
        t[r] = now_ms() - t0;
    }
    return median(t, reps);
}

/* ---- the head and its inputs ---- */

typedef struct world {
    const shape *s;
    float *W;         /* V x d */
    uint16_t *W16;    /* fp16 copy, V x d */
    uint16_t *Wb16;   /* bf16 copy */
    float *nw;        /* RMS norm weight */
    float *hidden;    /* 68 x d: rows l % 4 .. l % 4 + 63 feed layer l */
    eevp_head *head, *head_f16, *head_bf16, *head_q8;
} world;

static eevp_head *make_head(world *w, int32_t wtype, int32_t screen)
{
    eevp_head_options o = EEVP_HEAD_OPTIONS_INIT;
    eevp_head *h = NULL;
    char msg[256];
    o.n_vocab = w->s->V;
    o.dim = w->s->d;
    o.norm = EEVP_NORM_RMS;
    o.norm_weight = w->nw;
    o.weight_type = wtype;
    if (wtype == EEVP_WEIGHT_F32)
        o.weights = w->W;
    else
        o.weights_half = wtype == EEVP_WEIGHT_F16 ? w->W16 : w->Wb16;
    o.screen_mult = screen;
    if (eevp_head_create(&h, &o, msg, sizeof msg) != EEVP_OK) {
        fprintf(stderr, "bench: head: %s\n", msg);
        exit(1);
    }
    return h;
}

static void world_init(world *w, const shape *s)
{
    const int64_t n = s->V * s->d;
    const float sc = 1.0f / sqrtf((float)s->d);
    int64_t i;
    memset(w, 0, sizeof *w);
    w->s = s;
    w->W = (float *)xmalloc((size_t)n * 4);
    w->W16 = (uint16_t *)xmalloc((size_t)n * 2);
    w->Wb16 = (uint16_t *)xmalloc((size_t)n * 2);
    w->nw = (float *)xmalloc((size_t)s->d * 4);
    w->hidden = (float *)xmalloc((size_t)(68 * s->d) * 4);
    /* Cheap structured-enough weights for the dense costs: uniform noise. */
    for (i = 0; i < n; i++) {
        const float v = ((float)urand() * 2.0f - 1.0f) * 1.7f * sc;
        w->W[i] = v;
        w->W16[i] = eevpi_f32_to_f16(v);
        w->Wb16[i] = eevpi_f32_to_bf16(v);
    }
    for (i = 0; i < s->d; i++)
        w->nw[i] = 1.0f + 0.1f * nrand();
    for (i = 0; i < 68 * s->d; i++)
        w->hidden[i] = nrand();
    w->head = make_head(w, EEVP_WEIGHT_F32, 0);
    w->head_f16 = make_head(w, EEVP_WEIGHT_F16, 0);
    w->head_bf16 = make_head(w, EEVP_WEIGHT_BF16, 0);
    w->head_q8 = NULL; /* built on demand (V x d bytes) */
}

static void world_free(world *w)
{
    eevp_head_free(w->head);
    eevp_head_free(w->head_f16);
    eevp_head_free(w->head_bf16);
    eevp_head_free(w->head_q8);
    free(w->W);
    free(w->W16);
    free(w->Wb16);
    free(w->nw);
    free(w->hidden);
}

/* ---- kernel-level closures ---- */

typedef struct proj_arg {
    const eevp_head *h;
    const world *w;
    int32_t n, k;
    float *xn, *z, *rows, *bias;
    int32_t *ids;
    void *work;
    int mode; /* see below */
} proj_arg;

static void run_sgemv(void *p)
{
    proj_arg *a = (proj_arg *)p;
    cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)a->w->s->V, (int)a->w->s->d, 1.0f, a->w->W,
                (int)a->w->s->d, a->xn, 1, 0.0f, a->z, 1);
}

static void run_sgemm(void *p)
{
    proj_arg *a = (proj_arg *)p;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, a->n, (int)a->w->s->V,
                (int)a->w->s->d, 1.0f, a->xn, (int)a->w->s->d, a->w->W, (int)a->w->s->d, 0.0f,
                a->z, (int)a->w->s->V);
}

static void run_project(void *p)
{
    proj_arg *a = (proj_arg *)p;
    eevpi_head_project(a->h, a->n, a->xn, a->z, a->h->V);
}

static void run_project_inv(void *p)
{
    proj_arg *a = (proj_arg *)p;
    eevpi_head_project_inv(a->h, a->n, a->xn, a->z, a->h->V);
}

/* Greedy verification of a full round: 7 drafts, 8 rows (eevp_spec_verify,
 * norms and argmaxes included). */
typedef struct spec_arg {
    eevp_spec *sp;
    const float *rows;
    int64_t d;
} spec_arg;

static void run_verify8(void *p)
{
    spec_arg *a = (spec_arg *)p;
    eevp_spec_result r;
    int32_t i, seq = 0;
    r.struct_size = sizeof r;
    if (eevp_spec_round(a->sp, 0, 1u, 0) != EEVP_OK)
        abort();
    for (i = 0; i < 7; i++)
        if (eevp_spec_add_draft(a->sp, 0, i, -1) != EEVP_OK)
            abort();
    if (eevp_spec_verify(a->sp, 1, &seq, a->rows, a->d, &r) != EEVP_OK)
        abort();
}

static void run_topk(void *p)
{
    proj_arg *a = (proj_arg *)p;
    eevpi_topk(a->h->kern, a->z, a->h->V, a->k, 0, a->ids, NULL, (eevpi_pair *)a->work);
}

/* The pruning step at kernel level: logits, top-K, gather. */
static void run_prune_kernels(void *p)
{
    proj_arg *a = (proj_arg *)p;
    eevpi_head_project(a->h, 1, a->xn, a->z, a->h->V);
    eevpi_topk(a->h->kern, a->z, a->h->V, a->k, 0, a->ids, NULL, (eevpi_pair *)a->work);
    eevpi_head_gather(a->h, a->ids, a->k, a->rows, a->h->d, a->bias);
}

static void run_screen(void *p)
{
    proj_arg *a = (proj_arg *)p;
    eevpi_head_screen(a->h, NULL, a->xn, a->k, a->ids, a->z, a->work);
    eevpi_head_gather(a->h, a->ids, a->k, a->rows, a->h->d, a->bias);
}

/* ---- step-level closures (the public API, as a host uses it) ---- */

typedef struct step_arg {
    eevp_ctx *ctx;
    const world *w;
    int32_t B, layers, ctx_layers; /* layers run per token; the context's L */
    int cold;
    double layer_ms[64];
} step_arg;

static eevp_ctx *make_ctx_f(const eevp_head *h, int32_t B, int32_t k, int32_t layers,
                            uint32_t flags)
{
    eevp_ctx_options o = EEVP_CTX_OPTIONS_INIT;
    eevp_ctx *c = NULL;
    char msg[256];
    o.n_layers = layers;
    o.max_batch = B;
    o.k = k;
    /* Layer 0 prunes and is not checked; layers 1..L-1 are checked on the
     * pruned set: one pruning step plus L-1 pruned checks per token. */
    o.prune_layer = 0;
    o.first_layer = k > 0 ? 1 : 0;
    o.interval = 1;
    o.final_policy = EEVP_FINAL_PRUNED;
    o.criterion = EEVP_CRITERION_TOP2_GAP;
    o.threshold = 2.0f; /* never exits: every layer is paid */
    /* The context's own threads follow the configuration's thread count,
     * as OpenBLAS's do. */
    o.n_threads = cur_threads;
    o.flags = flags;
    if (eevp_ctx_create(&c, h, &o, msg, sizeof msg) != EEVP_OK) {
        fprintf(stderr, "bench: ctx: %s\n", msg);
        exit(1);
    }
    return c;
}

static eevp_ctx *make_ctx(const eevp_head *h, int32_t B, int32_t k, int32_t layers)
{
    return make_ctx_f(h, B, k, layers, 0);
}

/* One token for B sequences over `layers` layers; per-layer times into
 * layer_ms, eviction (when cold) before each layer, untimed. */
static void step_token(step_arg *a)
{
    const int64_t d = a->w->s->d;
    int32_t l;
    if (eevp_step_begin(a->ctx, a->B, NULL) != EEVP_OK)
        abort();
    for (l = 0; l < a->layers; l++) {
        double t0;
        if (a->cold)
            evict();
        t0 = now_ms();
        if (eevp_step_layer(a->ctx, l, a->w->hidden + (l % 4) * d, d, a->B, NULL) != EEVP_OK) {
            fprintf(stderr, "bench: step_layer: %s\n", eevp_ctx_errmsg(a->ctx));
            abort();
        }
        a->layer_ms[l] = now_ms() - t0;
    }
    /* A partial token (warm figures run only the first layers). */
    if (a->layers < a->ctx_layers)
        eevp_step_abandon(a->ctx);
    else if (eevp_step_end(a->ctx) != EEVP_OK)
        abort();
}

/* Medians over reps tokens: of the whole token, of layer 0 (the pruning
 * step, or the full check without pruning) and of one later layer (the
 * median over layers 1.. of each token, then over tokens). */
static void measure_token(step_arg *a, double *token, double *first, double *later)
{
    double tt[MAXREP], tf[MAXREP], tl[MAXREP], per[64];
    int r;
    int32_t l;
    step_token(a); /* warm-up */
    for (r = 0; r < reps; r++) {
        double sum = 0.0;
        step_token(a);
        for (l = 0; l < a->layers; l++)
            sum += a->layer_ms[l];
        for (l = 1; l < a->layers; l++)
            per[l - 1] = a->layer_ms[l];
        tt[r] = sum;
        tf[r] = a->layer_ms[0];
        tl[r] = a->layers > 1 ? median(per, a->layers - 1) : 0.0;
    }
    *token = median(tt, reps);
    *first = median(tf, reps);
    *later = median(tl, reps);
}

/* ---- the figures ---- */

static void bench_kernels(world *w)
{
    const shape *s = w->s;
    const int32_t K = 256;
    proj_arg a;
    char name[64];
    int32_t n;
    memset(&a, 0, sizeof a);
    a.w = w;
    a.h = w->head;
    a.k = K;
    a.xn = (float *)xmalloc((size_t)(64 * s->d) * 4);
    a.z = (float *)xmalloc((size_t)(64 * s->V) * 4);
    a.rows = (float *)xmalloc((size_t)(1024 * s->d) * 4);
    a.bias = NULL;
    a.ids = (int32_t *)xmalloc(1024 * 4);
    a.work = xmalloc((size_t)(eevpi_topk_pairs(s->V, 1024) * 8 + 4096));
    for (n = 0; n < 64; n++)
        eevpi_head_norm(w->head, w->hidden + n * s->d, a.xn + n * s->d);

    /* The memory-bandwidth floor: bare SGEMV of the head. */
    a.n = 1;
    report("blas_full_b1", measure(run_sgemv, &a, 1));
    report("lib_full_b1", measure(run_project, &a, 1));
    report("lib_full_inv_b1", measure(run_project_inv, &a, 1));
    {
        eevp_spec_options so = EEVP_SPEC_OPTIONS_INIT;
        spec_arg sa;
        char msg[256];
        so.max_draft = 7;
        if (eevp_spec_create(&sa.sp, w->head, &so, msg, sizeof msg) != EEVP_OK) {
            fprintf(stderr, "eevp_spec_create: %s\n", msg);
            exit(1);
        }
        sa.rows = w->hidden;
        sa.d = s->d;
        report("verify_rows8", measure(run_verify8, &sa, 1));
        eevp_spec_free(sa.sp);
    }
    report("prune_kernels_b1", measure(run_prune_kernels, &a, 1));
    eevpi_head_project(w->head, 1, a.xn, a.z, s->V);
    report("topk_k256", measure(run_topk, &a, 0));

    /* Several hidden states at the pruning layer. */
    {
        static const int32_t Bs[] = {2, 3, 4, 5, 6, 7, 8, 16};
        size_t i;
        for (i = 0; i < sizeof Bs / sizeof Bs[0]; i++) {
            const int odd = Bs[i] == 3 || (Bs[i] >= 5 && Bs[i] <= 7);
            if (quick && Bs[i] != 8)
                continue;
            a.n = Bs[i];
            if (!odd) {
                snprintf(name, sizeof name, "blas_full_b%d", (int)Bs[i]);
                report(name, measure(run_sgemm, &a, 1));
            }
            snprintf(name, sizeof name, "lib_full_b%d", (int)Bs[i]);
            report(name, measure(run_project, &a, 1));
            if (!odd) {
                snprintf(name, sizeof name, "lib_full_inv_b%d", (int)Bs[i]);
                report(name, measure(run_project_inv, &a, 1));
            }
        }
#if defined(EEVPI_HAVE_AVX512_KERNELS)
        /* The AVX2 kernel on the same call, side by side with the AVX-512
         * one the head chose (5-8 vectors). */
        if (w->head->dk == &eevpi_dotk_avx512) {
            w->head->dk = &eevpi_dotk_avx2;
            a.n = 8;
            report("lib_full_avx2_b8", measure(run_project, &a, 1));
            a.n = 5;
            if (!quick)
                report("lib_full_avx2_b5", measure(run_project, &a, 1));
            w->head->dk = &eevpi_dotk_avx512;
        }
#endif
    }

    /* Half-precision heads. */
    a.n = 1;
    a.h = w->head_f16;
    report("f16_full_b1", measure(run_project, &a, 1));
    a.h = w->head_bf16;
    report("bf16_full_b1", measure(run_project, &a, 1));
    if (!quick) {
        a.n = 8;
        a.h = w->head_f16;
        report("f16_full_b8", measure(run_project, &a, 1));
#if defined(EEVPI_HAVE_AVX512_KERNELS)
        if (w->head_f16->dk == &eevpi_dotk_avx512) {
            w->head_f16->dk = &eevpi_dotk_avx2;
            report("f16_full_avx2_b8", measure(run_project, &a, 1));
            w->head_f16->dk = &eevpi_dotk_avx512;
        }
#endif
    }

    free(a.xn);
    free(a.z);
    free(a.rows);
    free(a.ids);
    free(a.work);
}

static void bench_steps(world *w, int all_k)
{
    static const int32_t Ks[] = {64, 256, 1024};
    static const int32_t Bs[] = {1, 4, 8, 16, 64};
    const int32_t L = 32;
    char name[64];
    size_t i;
    step_arg a;
    double tok, first, later;
    memset(&a, 0, sizeof a);
    a.w = w;
    a.layers = L;

    /* Pruned checks against K, warm and cold (B = 1), and the token. */
    for (i = 0; i < sizeof Ks / sizeof Ks[0]; i++) {
        if (!all_k && Ks[i] != 256)
            continue;
        a.B = 1;
        a.ctx = make_ctx(w->head, 1, Ks[i], L);
        a.ctx_layers = L;
        a.cold = 1;
        measure_token(&a, &tok, &first, &later);
        snprintf(name, sizeof name, "check_k%d_cold", (int)Ks[i]);
        report(name, later);
        if (Ks[i] == 256) {
            report("token_b1", tok);
            report("prune_step_b1", first);
        }
        a.cold = 0;
        a.layers = 3;
        measure_token(&a, &tok, &first, &later);
        a.layers = L;
        snprintf(name, sizeof name, "check_k%d_warm", (int)Ks[i]);
        report(name, later);
        if (Ks[i] == 256) {
            int64_t bytes = eevp_ctx_memory(a.ctx);
            report("ctx_bytes_b1_k256", (double)bytes);
        }
        eevp_ctx_free(a.ctx);
    }

    /* The full-vocabulary check (no pruning): layer 1's cost. */
    a.B = 1;
    a.layers = 3;
    a.cold = 1;
    a.ctx = make_ctx(w->head, 1, 0, a.layers);
    a.ctx_layers = a.layers;
    measure_token(&a, &tok, &first, &later);
    report("check_full_cold", later);
    eevp_ctx_free(a.ctx);

    /* Per-sequence cost as B grows (K = 256). */
    a.layers = L;
    for (i = 0; i < sizeof Bs / sizeof Bs[0]; i++) {
        if (quick && Bs[i] != 16)
            continue;
        if (Bs[i] == 1)
            continue; /* measured above */
        a.B = Bs[i];
        a.cold = 1;
        a.ctx = make_ctx(w->head, a.B, 256, L);
        a.ctx_layers = L;
        measure_token(&a, &tok, &first, &later);
        snprintf(name, sizeof name, "token_b%d", (int)a.B);
        report(name, tok);
        snprintf(name, sizeof name, "prune_step_b%d", (int)a.B);
        report(name, first);
        snprintf(name, sizeof name, "check_b%d_cold", (int)a.B);
        report(name, later);
        if (a.B == 16)
            report("ctx_bytes_b16_k256", (double)eevp_ctx_memory(a.ctx));
        eevp_ctx_free(a.ctx);
    }

    /* A half-precision head, whole token, B = 1. */
    a.B = 1;
    a.cold = 1;
    a.ctx = make_ctx(w->head_f16, 1, 256, L);
    a.ctx_layers = L;
    measure_token(&a, &tok, &first, &later);
    report("token_f16_b1", tok);
    report("prune_step_f16_b1", first);
    eevp_ctx_free(a.ctx);
}

/* ---- batched pruned checks against the overlap of the sets ---- */

typedef struct batch_arg {
    const eevp_head *h;
    int32_t n, k_of[64], act[64];
    const float *rows[64], *bias[64];
    float *z[64];
    const float *xn;
    eevpi_union u;
    float *work;
} batch_arg;

static void run_each(void *p)
{
    batch_arg *a = (batch_arg *)p;
    eevpi_pruned_each(a->h, a->n, a->k_of, a->rows, a->bias, a->xn, a->z);
}

static void run_union(void *p)
{
    batch_arg *a = (batch_arg *)p;
    eevpi_pruned_union(a->h, &a->u, NULL, a->n, a->act, a->k_of, a->xn, a->z, a->work);
}

typedef struct build_arg {
    const eevp_head *h;
    int32_t n;
    const int32_t *k_of;
    const int32_t *const *ids;
    eevpi_union *u;
    void *mem;
    int64_t *keys;
} build_arg;

static void run_build(void *p)
{
    build_arg *a = (build_arg *)p;
    eevpi_union_build(a->h, a->n, a->k_of, a->ids, a->u, a->mem, a->keys);
}

/* Sets of K for B sequences: a shared core of round(ov * K) ids plus
 * private ids.  Reports the measured overlap (mean pairwise |A n B| / K). */
static void bench_batch(world *w)
{
    static const double OV[] = {0.0, 0.2, 0.5, 0.8, 0.95};
    const int32_t B = 16, K = 256;
    const int64_t d = w->s->d, V = w->s->V;
    batch_arg a;
    int32_t *ids = (int32_t *)xmalloc((size_t)B * K * 4);
    const int32_t *idp[64];
    float *rows = (float *)xmalloc((size_t)B * K * d * 4);
    float *z = (float *)xmalloc((size_t)B * K * 4);
    float *xn = (float *)xmalloc((size_t)B * d * 4);
    float *zu = (float *)xmalloc((size_t)B * K * 4);
    int64_t *keys = (int64_t *)xmalloc((size_t)B * K * 16);
    void *umem = xmalloc((size_t)eevpi_union_size(w->head, B, (int64_t)B * K));
    char name[64];
    size_t o;
    int32_t i, j;

    memset(&a, 0, sizeof a);
    a.h = w->head;
    a.n = B;
    a.xn = xn;
    a.work = (float *)xmalloc((size_t)B * B * K * 4);
    for (i = 0; i < B; i++)
        eevpi_head_norm(w->head, w->hidden + i * d, xn + i * d);

    /* B = 1 reference: one sequence's check, cold. */
    for (j = 0; j < K; j++)
        ids[j] = (int32_t)((j * 7919) % V);
    eevpi_head_gather(w->head, ids, K, rows, d, NULL);
    a.n = 1;
    a.k_of[0] = K;
    a.rows[0] = rows;
    a.bias[0] = NULL;
    a.z[0] = z;
    report("batch_check_b1_cold", measure(run_each, &a, 1));
    a.n = B;

    for (o = 0; o < sizeof OV / sizeof OV[0]; o++) {
        const int32_t core = (int32_t)lround(OV[o] * K);
        double ov_sum = 0.0, t_each, t_union, t_build;
        int32_t pairs = 0, x, y, next = 1000;
        int same = 1;
        if (quick && OV[o] != 0.8)
            continue;
        for (i = 0; i < B; i++) {
            for (j = 0; j < K; j++)
                ids[i * K + j] = j < core ? (int32_t)((j * 7919) % V)
                                          : (int32_t)(((int64_t)(next++) * 104729) % V);
            idp[i] = ids + i * K;
            a.k_of[i] = K;
            a.rows[i] = rows + (int64_t)i * K * d;
            a.bias[i] = NULL;
            a.z[i] = z + i * K;
            eevpi_head_gather(w->head, idp[i], K, rows + (int64_t)i * K * d, d, NULL);
        }
        for (x = 0; x < B; x++)
            for (y = x + 1; y < B; y++) {
                int32_t c = 0, p, q;
                for (p = 0; p < K; p++)
                    for (q = 0; q < K; q++)
                        c += ids[x * K + p] == ids[y * K + q];
                ov_sum += (double)c / K;
                pairs++;
            }
        {
            build_arg ba;
            ba.h = w->head;
            ba.n = B;
            ba.k_of = a.k_of;
            ba.ids = idp;
            ba.u = &a.u;
            ba.mem = umem;
            ba.keys = keys;
            t_build = measure(run_build, &ba, 1);
        }
        for (i = 0; i < B; i++)
            a.act[i] = i;
        t_each = measure(run_each, &a, 1);
        memcpy(zu, z, (size_t)B * K * 4);
        t_union = measure(run_union, &a, 1);
        same = memcmp(zu, z, (size_t)B * K * 4) == 0;
        snprintf(name, sizeof name, "ov%02d_measured", (int)lround(OV[o] * 100));
        report(name, ov_sum / pairs);
        snprintf(name, sizeof name, "ov%02d_union_rows", (int)lround(OV[o] * 100));
        report(name, a.u.n_union);
        snprintf(name, sizeof name, "ov%02d_each", (int)lround(OV[o] * 100));
        report(name, t_each);
        snprintf(name, sizeof name, "ov%02d_union", (int)lround(OV[o] * 100));
        report(name, t_union);
        snprintf(name, sizeof name, "ov%02d_build", (int)lround(OV[o] * 100));
        report(name, t_build);
        snprintf(name, sizeof name, "ov%02d_pick_union", (int)lround(OV[o] * 100));
        report(name, eevpi_union_pick(w->head, &a.u, a.k_of));
        snprintf(name, sizeof name, "ov%02d_dense_rows", (int)lround(OV[o] * 100));
        report(name, a.u.n_dense);
        snprintf(name, sizeof name, "ov%02d_identical", (int)lround(OV[o] * 100));
        report(name, same);
    }
    free(ids);
    free(rows);
    free(z);
    free(zu);
    free(xn);
    free(keys);
    free(umem);
    free(a.work);
}

/* ---- int8 screening: cost and recall ---- */

/* Hidden states with structure: a few token directions with decaying
 * weights plus isotropic noise, normalised.  Real hidden states (the demo
 * model's) replace these when available. */
static void structured_hidden(const world *w, float *x)
{
    const int64_t d = w->s->d, V = w->s->V;
    int64_t c;
    int j;
    for (c = 0; c < d; c++)
        x[c] = 0.6f * nrand();
    for (j = 0; j < 8; j++) {
        const int64_t t = (int64_t)(urand() * V) % V;
        const float a = 6.0f / (float)(j + 1);
        for (c = 0; c < d; c++)
            x[c] += a * w->W[t * d + c] * sqrtf((float)d);
    }
}

static void bench_screen(world *w)
{
    const shape *s = w->s;
    const int32_t K = 256, n_states = quick ? 50 : 200;
    proj_arg a;
    int32_t *exact = (int32_t *)xmalloc(K * 4);
    float *x = (float *)xmalloc((size_t)s->d * 4);
    int64_t top1_hits = 0, overlap = 0;
    int32_t t, j, q;
    double t_screen;

    if (!w->head_q8)
        w->head_q8 = make_head(w, EEVP_WEIGHT_F32, 2);
    memset(&a, 0, sizeof a);
    a.w = w;
    a.h = w->head_q8;
    a.k = K;
    a.n = 1;
    a.xn = (float *)xmalloc((size_t)s->d * 4);
    a.z = (float *)xmalloc((size_t)s->V * 4);
    a.rows = (float *)xmalloc((size_t)K * s->d * 4);
    a.ids = (int32_t *)xmalloc((size_t)s->V * 4);
    a.work = xmalloc((size_t)eevpi_screen_work_size(w->head_q8, K) + 64);
    {
        void *tw = xmalloc((size_t)eevpi_topk_pairs(s->V, K) * 8 + 64);
        float *zf = (float *)xmalloc((size_t)s->V * 4);
        for (t = 0; t < n_states; t++) {
            structured_hidden(w, x);
            eevpi_head_norm(w->head, x, a.xn);
            eevpi_head_project(w->head, 1, a.xn, zf, s->V);
            eevpi_topk(w->head->kern, zf, s->V, K, 0, exact, NULL, (eevpi_pair *)tw);
            eevpi_head_screen(w->head_q8, NULL, a.xn, K, a.ids, a.z, a.work);
            for (j = 0; j < K; j++) {
                top1_hits += a.ids[j] == exact[0];
                for (q = 0; q < K; q++)
                    overlap += a.ids[j] == exact[q];
            }
        }
        free(tw);
        free(zf);
    }
    report("screen_top1_recall", (double)top1_hits / n_states);
    report("screen_topk_overlap", (double)overlap / ((double)n_states * K));
    t_screen = measure(run_screen, &a, 1);
    report("screen_prune_b1", t_screen);
    {
        /* The same through the step API (EEVP_CTX_SCREEN), cold, with the
         * context's threads: the pruning step a host gets. */
        step_arg sa;
        double tok, first, later;
        memset(&sa, 0, sizeof sa);
        sa.w = w;
        sa.B = 1;
        sa.layers = 3;
        sa.ctx_layers = 3;
        sa.cold = 1;
        sa.ctx = make_ctx_f(w->head_q8, 1, K, 3, EEVP_CTX_SCREEN);
        measure_token(&sa, &tok, &first, &later);
        report("screen_step_b1", first);
        eevp_ctx_free(sa.ctx);
    }
    report("head_q8_extra_bytes", (double)(eevp_head_memory(w->head_q8) -
                                           eevp_head_memory(w->head)));
    free(exact);
    free(x);
    free(a.xn);
    free(a.z);
    free(a.rows);
    free(a.ids);
    free(a.work);
}

/* ---- hidden states of a real model (tests/bench/real_hidden.py) ---- */

/* Screening recall per layer and the overlap of 16 sequences' pruned sets,
 * on the demo model's hidden states. */
static void bench_real(const char *path)
{
    FILE *f = fopen(path, "rb");
    int32_t hdr[4], V, d, L, N, l, t, j, q;
    float eps;
    float *W, *nw, *H;
    eevp_head_options o = EEVP_HEAD_OPTIONS_INIT;
    eevp_head *h, *hq;
    const int32_t K = 256;
    if (!f || fread(hdr, 4, 4, f) != 4 || fread(&eps, 4, 1, f) != 1) {
        fprintf(stderr, "bench: cannot read %s\n", path);
        exit(1);
    }
    V = hdr[0];
    d = hdr[1];
    L = hdr[2];
    N = hdr[3];
    W = (float *)xmalloc((size_t)V * d * 4);
    nw = (float *)xmalloc((size_t)d * 4);
    H = (float *)xmalloc((size_t)L * N * d * 4);
    if (fread(W, 4, (size_t)V * d, f) != (size_t)V * d || fread(nw, 4, (size_t)d, f) != (size_t)d ||
        fread(H, 4, (size_t)L * N * d, f) != (size_t)L * N * d) {
        fprintf(stderr, "bench: short file %s\n", path);
        exit(1);
    }
    fclose(f);
    o.n_vocab = V;
    o.dim = d;
    o.weights = W;
    o.norm = EEVP_NORM_RMS;
    o.norm_eps = eps;
    o.norm_weight = nw;
    if (eevp_head_create(&h, &o, NULL, 0) != EEVP_OK)
        exit(1);
    o.screen_mult = 2;
    if (eevp_head_create(&hq, &o, NULL, 0) != EEVP_OK)
        exit(1);
    cur_shape = "tinylm";
    printf("I real_model V=%d d=%d layers=%d positions=%d\n", (int)V, (int)d, (int)L, (int)N);
    {
        float *xn = (float *)xmalloc((size_t)d * 4), *z = (float *)xmalloc((size_t)V * 4);
        int32_t *exact = (int32_t *)xmalloc((size_t)K * 4), *ids = (int32_t *)xmalloc((size_t)K * 4);
        void *tw = xmalloc((size_t)eevpi_topk_pairs(V, K) * 8 + 64);
        void *sw = xmalloc((size_t)eevpi_screen_work_size(hq, K) + 64);
        int64_t all_hit = 0, all_ov = 0, all_n = 0;
        double worst_top1 = 1.0, worst_ov = 1.0;
        char name[64];
        for (l = 0; l < L; l++) {
            int64_t hit = 0, ov = 0;
            for (t = 0; t < N; t++) {
                eevpi_head_norm(h, H + ((int64_t)l * N + t) * d, xn);
                eevpi_head_project(h, 1, xn, z, V);
                eevpi_topk(h->kern, z, V, K, 0, exact, NULL, (eevpi_pair *)tw);
                eevpi_head_screen(hq, NULL, xn, K, ids, NULL, sw);
                for (j = 0; j < K; j++) {
                    hit += ids[j] == exact[0];
                    for (q = 0; q < K; q++)
                        ov += ids[j] == exact[q];
                }
            }
            snprintf(name, sizeof name, "real_l%d_top1_recall", (int)l);
            report(name, (double)hit / N);
            snprintf(name, sizeof name, "real_l%d_topk_overlap", (int)l);
            report(name, (double)ov / ((double)N * K));
            if ((double)hit / N < worst_top1)
                worst_top1 = (double)hit / N;
            if ((double)ov / ((double)N * K) < worst_ov)
                worst_ov = (double)ov / ((double)N * K);
            all_hit += hit;
            all_ov += ov;
            all_n += N;
        }
        report("real_top1_recall", (double)all_hit / all_n);
        report("real_topk_overlap", (double)all_ov / ((double)all_n * K));
        report("real_worst_layer_top1_recall", worst_top1);
        report("real_worst_layer_topk_overlap", worst_ov);

        /* Overlap of 16 sequences' sets (positions far apart) at each layer. */
        for (l = 0; l < L; l++) {
            const int32_t B = 16;
            int32_t sets[16][256], x, y;
            double sum = 0.0;
            int32_t pairs = 0;
            for (x = 0; x < B; x++) {
                eevpi_head_norm(h, H + ((int64_t)l * N + (int64_t)x * (N / B) + N / (2 * B)) * d,
                                xn);
                eevpi_head_project(h, 1, xn, z, V);
                eevpi_topk(h->kern, z, V, K, 0, sets[x], NULL, (eevpi_pair *)tw);
            }
            for (x = 0; x < B; x++)
                for (y = x + 1; y < B; y++) {
                    int32_t c = 0;
                    for (j = 0; j < K; j++)
                        for (q = 0; q < K; q++)
                            c += sets[x][j] == sets[y][q];
                    sum += (double)c / K;
                    pairs++;
                }
            snprintf(name, sizeof name, "real_l%d_set_overlap_b16", (int)l);
            report(name, sum / pairs);
        }
        free(xn);
        free(z);
        free(exact);
        free(ids);
        free(tw);
        free(sw);
    }
    eevp_head_free(h);
    eevp_head_free(hq);
    free(W);
    free(nw);
    free(H);
}

/* ---- environment ---- */

static void info(void)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    const char *ct = getenv("OPENBLAS_CORETYPE");
    if (f) {
        while (fgets(line, sizeof line, f))
            if (strncmp(line, "model name", 10) == 0) {
                char *p = strchr(line, ':');
                if (p) {
                    p[strcspn(p, "\n")] = 0;
                    printf("I cpu %s\n", p + 2);
                }
                break;
            }
        fclose(f);
    }
    printf("I openblas_corename %s\n", openblas_get_corename());
    printf("I openblas_config %s\n", openblas_get_config());
    printf("I OPENBLAS_CORETYPE %s\n", ct ? ct : "(unset)");
    printf("I eevp_kernels %s\n", eevpi_dotk_select(0)->name);
    printf("I eevp_version %s\n", eevp_version_string());
}


/* ---- vocabulary-parallel shards ---- */

#define SH_P 4
#define SH_L 18

typedef struct shard_world {
    int32_t P;
    eevp_head *h[8];
    eevp_ctx *c[8];
    int64_t cap;
    unsigned char *rec[8], *acc;
} shard_world;

static void shard_open(shard_world *sw, const float *W, int64_t V, int64_t d, const float *nw,
                       int32_t P, const eevp_ctx_options *o)
{
    int32_t i;
    char msg[256];
    memset(sw, 0, sizeof *sw);
    sw->P = P;
    for (i = 0; i < P; i++) {
        eevp_head_options ho = EEVP_HEAD_OPTIONS_INIT;
        eevp_shard_options so = EEVP_SHARD_OPTIONS_INIT;
        const int64_t r0 = V * i / P, r1 = V * (i + 1) / P;
        ho.n_vocab = r1 - r0;
        ho.dim = d;
        ho.weights = W + r0 * d;
        ho.vocab_offset = r0;
        ho.norm = EEVP_NORM_RMS;
        ho.norm_weight = nw;
        so.shard_index = i;
        so.n_shards = P;
        so.total_vocab = V;
        if (eevp_head_create(&sw->h[i], &ho, msg, sizeof msg) != EEVP_OK ||
            eevp_ctx_create_shard(&sw->c[i], sw->h[i], o, &so, msg, sizeof msg) != EEVP_OK) {
            fprintf(stderr, "bench_shard: %s\n", msg);
            exit(1);
        }
    }
    sw->cap = eevp_shard_record_capacity(sw->c[0]);
    for (i = 0; i < P; i++)
        sw->rec[i] = (unsigned char *)xmalloc((size_t)sw->cap);
    sw->acc = (unsigned char *)xmalloc((size_t)sw->cap);
}

static void shard_close(shard_world *sw)
{
    int32_t i;
    for (i = 0; i < sw->P; i++) {
        eevp_ctx_free(sw->c[i]);
        eevp_head_free(sw->h[i]);
        free(sw->rec[i]);
    }
    free(sw->acc);
}

/* One layer on every shard, merged in rank order.  With t, rank 0's view
 * is timed as a real rank lives it: the caches evicted once (the model's
 * layer runs between two checks), then its layer call (t[0]), the P - 1
 * merges an all-gather leaves to it (t[3]) and its absorb (t[2]); the
 * projection of its own set rows inside the layer call is timed apart, cold
 * too (t[1]).  The other ranks run untimed. */
static int64_t shard_layer(shard_world *sw, int32_t layer, const float *x, int64_t d,
                           double *t)
{
    int64_t size = 0, next = 0, sz;
    int32_t i;
    double t0;
    if (t) {
        const eevpi_seq *q = &sw->c[0]->seq[0];
        static float xn[1 << 14], z[256];
        if (q->has_set && q->own_n > 0 && q->own_n <= 256 && d <= (1 << 14)) {
            eevpi_head_norm(sw->h[0], x, xn);
            evict();
            t0 = now_ms();
            eevpi_head_project_rows(sw->h[0], q->own_n, q->set_rows, d, q->set_bias, xn, z);
            t[1] += now_ms() - t0;
        }
    }
    for (i = sw->P - 1; i >= 0; i--) { /* rank 0 last: its data stays warm */
        if (t && i == 0)
            evict();
        t0 = now_ms();
        if (eevp_shard_layer(sw->c[i], layer, x, d, 1, NULL, sw->rec[i], sw->cap, &sz) !=
            EEVP_OK) {
            fprintf(stderr, "bench_shard: %s\n", eevp_ctx_errmsg(sw->c[i]));
            exit(1);
        }
        if (t && i == 0)
            t[0] += now_ms() - t0;
        size = sz;
    }
    while (size > 0) {
        t0 = now_ms();
        memcpy(sw->acc, sw->rec[0], (size_t)size);
        for (i = 1; i < sw->P; i++)
            eevp_shard_merge(sw->acc, sw->rec[i], size);
        if (t)
            t[3] += now_ms() - t0;
        for (i = 0; i < sw->P; i++) {
            t0 = now_ms();
            eevp_shard_absorb(sw->c[i], sw->acc, size, sw->rec[i], sw->cap, &next);
            if (t && i == 0)
                t[2] += now_ms() - t0;
        }
        size = next;
    }
    return sz;
}

static void bench_shard(world *w)
{
    const shape *s = w->s;
    eevp_ctx_options o;
    shard_world sw;
    eevp_ctx *ref = NULL;
    double share[MAXREP], check[MAXREP], t[4];
    char msg[256];
    int r;
    int32_t l;
    eevp_ctx_options_init(&o);
    o.n_layers = SH_L;
    o.k = 256;
    o.first_layer = 0;
    o.threshold = 2.0f; /* the top-2 gap never exceeds 1: every layer is checked */
    shard_open(&sw, w->W, s->V, s->d, w->nw, SH_P, &o);
    if (eevp_ctx_create(&ref, w->head, &o, msg, sizeof msg) != EEVP_OK) {
        fprintf(stderr, "bench_shard: %s\n", msg);
        exit(1);
    }
    /* One step per repetition: the pruning layer, then SH_L - 2 pruned
     * checks; per checked layer, the protocol's work on rank 0 (its layer
     * call less its own projection, the merges, its absorb) against the
     * unsharded context's pruned check, both from evicted caches. */
    for (r = 0; r < reps; r++) {
        double t0, tref = 0.0;
        memset(t, 0, sizeof t);
        eevp_step_begin(ref, 1, NULL);
        for (l = 0; l < SH_P; l++)
            eevp_step_begin(sw.c[l], 1, NULL);
        eevp_step_layer(ref, 0, w->hidden, s->d, 1, NULL);
        shard_layer(&sw, 0, w->hidden, s->d, NULL);
        for (l = 1; l < SH_L - 1; l++) {
            const float *x = w->hidden + (int64_t)(l % 64) * s->d;
            evict();
            t0 = now_ms();
            eevp_step_layer(ref, l, x, s->d, 1, NULL);
            tref += now_ms() - t0;
            shard_layer(&sw, l, x, s->d, t);
        }
        eevp_step_abandon(ref);
        for (l = 0; l < SH_P; l++)
            eevp_step_abandon(sw.c[l]);
        check[r] = tref / (SH_L - 2);
        share[r] = (t[0] - t[1] + t[2] + t[3]) / (SH_L - 2);
    }
    report("shard_protocol_k256_p4", median(share, reps));
    report("shard_check_k256_unsharded", median(check, reps));
    eevp_ctx_free(ref);
    shard_close(&sw);
}

/* Bytes per token of the sharded protocol against gathering full fp32
 * logits at every checked layer: V = 128256, P = 8, K = 256, 32 checked
 * layers, counted from the records a real exchange produces (d does not
 * change their size). */
static void bench_shard_bytes(void)
{
    const int64_t V = 128256, d = 8;
    float *W = (float *)xmalloc((size_t)(V * d) * 4), x[8];
    eevp_ctx_options o;
    eevp_stats st;
    shard_world sw;
    int64_t i;
    int32_t l;
    for (i = 0; i < V * d; i++)
        W[i] = (float)urand() - 0.5f;
    for (i = 0; i < d; i++)
        x[i] = nrand();
    eevp_ctx_options_init(&o);
    o.n_layers = 32;
    o.k = 256;
    o.first_layer = 0;
    o.threshold = 2.0f;
    shard_open(&sw, W, V, d, NULL, 8, &o);
    for (l = 0; l < 8; l++)
        eevp_step_begin(sw.c[l], 1, NULL);
    for (l = 0; l < 32; l++)
        shard_layer(&sw, l, x, d, NULL);
    for (l = 0; l < 8; l++)
        eevp_step_end(sw.c[l]);
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    eevp_ctx_stats(sw.c[0], &st);
    cur_shape = "llama3";
    report("shard_bytes_per_token_p8", (double)st.shard_bytes_received);
    report("full_logits_bytes_per_token", (double)(32 * V * 4));
    shard_close(&sw);
    free(W);
}

int main(int argc, char **argv)
{
    const char *threads = "1,2", *shapes = "llama2,llama3,qwen,gpt2", *hidden = NULL;
    int i;
    struct rusage ru;
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) {
            quick = 1;
        } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            threads = argv[++i];
        } else if (!strcmp(argv[i], "--shapes") && i + 1 < argc) {
            shapes = argv[++i];
        } else if (!strcmp(argv[i], "--hidden") && i + 1 < argc) {
            hidden = argv[++i];
        } else if (!strcmp(argv[i], "--parts") && i + 1 < argc) {
            parts = argv[++i];
        } else if (!strcmp(argv[i], "--reps") && i + 1 < argc) {
            reps = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: bench [--quick] [--threads 1,2] [--shapes a,b] [--reps n] [--parts ksbq] [--hidden FILE]\n");
            return 2;
        }
    }
    if (reps < 5)
        reps = 5;
    if (reps > MAXREP)
        reps = MAXREP;
    if (quick)
        reps = 5;
    if (getenv("BENCH_CPUTIME") && atoi(getenv("BENCH_CPUTIME")))
        clock_id = CLOCK_THREAD_CPUTIME_ID;
    evict_buf = (volatile unsigned char *)xmalloc(EVICT_BYTES);
    memset((void *)evict_buf, 1, EVICT_BYTES);
    info();
    printf("I reps %d\n", reps);

    for (i = 0; i < (int)(sizeof SHAPES / sizeof SHAPES[0]); i++) {
        const shape *s = &SHAPES[i];
        const char *t;
        world w;
        if (!strstr(shapes, s->name))
            continue;
        world_init(&w, s);
        cur_shape = s->name;
        for (t = threads; *t; t++) {
            if (*t < '1' || *t > '9')
                continue;
            cur_threads = *t - '0';
            openblas_set_num_threads(cur_threads);
            if (strchr(parts, 'k'))
                bench_kernels(&w);
            if (strchr(parts, 's'))
                bench_steps(&w, !quick && (i == 0 || i == 1 || cur_threads == 1));
            if (!strcmp(s->name, "llama2")) {
                if (strchr(parts, 'b'))
                    bench_batch(&w);
                if (strchr(parts, 'q'))
                    bench_screen(&w);
                if (strchr(parts, 'v') && cur_threads == 1)
                    bench_shard(&w);
            }
        }
        world_free(&w);
    }
    if (strchr(parts, 'v')) {
        cur_threads = 1;
        bench_shard_bytes();
    }
    if (hidden) {
        cur_threads = 1;
        openblas_set_num_threads(1);
        bench_real(hidden);
    }
    getrusage(RUSAGE_SELF, &ru);
    cur_shape = "all";
    cur_threads = 0;
    report("peak_rss_mb", ru.ru_maxrss / 1024.0);
    return 0;
}
