/* SPDX-License-Identifier: MIT */
/* ctx.c - the context: options, memory plan, criterion registration,
 * threshold schedule, statistics. */
#include "ctx.h"
#include "record.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The first published (1.0) layouts end at these members: a caller's
 * struct_size must cover at least that much, whatever is appended later. */
#define END_OF(type, member) (offsetof(type, member) + sizeof(((type *)0)->member))
#define CTX_OPTIONS_V1 END_OF(eevp_ctx_options, k_min)
#define VTBL_V1 END_OF(eevp_criterion_vtbl, destroy)
#define RESULT_V1 END_OF(eevp_result, set_size)
#define STATS_V1 END_OF(eevp_stats, exact_exit_changed)

EEVP_API int eevp_ctx_options_init(eevp_ctx_options *opts)
{
    static const eevp_ctx_options defaults = EEVP_CTX_OPTIONS_INIT;
    if (!opts)
        return EEVP_EINVAL;
    *opts = defaults;
    return EEVP_OK;
}

int eevpi_ctx_fail(eevp_ctx *ctx, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->msg, sizeof ctx->msg, fmt, ap);
    va_end(ap);
    return code;
}

int eevpi_ctx_enter(eevp_ctx *ctx)
{
    if (!ctx)
        return EEVP_EINVAL;
    if (ctx->busy)
        return EEVP_EBUSY;
    ctx->msg[0] = '\0';
    return EEVP_OK;
}

EEVP_API const char *eevp_ctx_errmsg(const eevp_ctx *ctx)
{
    return ctx ? ctx->msg : "no context (NULL)";
}

/* Read and check options against the head.  Writes the message to msg. */
int eevpi_ctx_read_options(eevp_ctx_options *o, const eevp_head *head,
                           const eevp_ctx_options *opts, char *msg, size_t msg_size)
{
    int rc;
    eevp_ctx_options_init(o);
    if (!head || !opts) {
        eevpi_msg(msg, msg_size, "%s is NULL", head ? "opts" : "head");
        return EEVP_EINVAL;
    }
    if ((rc = eevpi_read_struct(o, sizeof *o, opts, CTX_OPTIONS_V1)) != EEVP_OK) {
        eevpi_msg(msg, msg_size, "eevp_ctx_options.struct_size %u: expected %u, or larger "
                  "with a zero tail", (unsigned)opts->struct_size, (unsigned)sizeof *o);
        return rc;
    }
#define CHECK(cond, code, ...)                    \
    do {                                          \
        if (!(cond)) {                            \
            eevpi_msg(msg, msg_size, __VA_ARGS__); \
            return code;                          \
        }                                         \
    } while (0)
#define RANGE(cond, ...) CHECK(cond, EEVP_ERANGE, __VA_ARGS__)
#define ENUM(cond, ...) CHECK(cond, EEVP_EINVAL, __VA_ARGS__)
    RANGE(o->n_layers >= 1 && o->n_layers <= EEVP_MAX_LAYERS, "n_layers %d outside 1..%d",
          (int)o->n_layers, EEVP_MAX_LAYERS);
    RANGE(o->max_batch >= 1 && o->max_batch <= EEVP_MAX_BATCH, "max_batch %d outside 1..%d",
          (int)o->max_batch, EEVP_MAX_BATCH);
    RANGE(o->k >= 0, "k %d is negative", (int)o->k);
    RANGE(o->n_threads >= 0 && o->n_threads <= EEVP_MAX_THREADS, "n_threads %d outside 0..%d",
          (int)o->n_threads, EEVP_MAX_THREADS);
    RANGE(o->first_layer >= 0 && o->first_layer < o->n_layers,
          "first_layer %d outside 0..n_layers-1 (%d)", (int)o->first_layer,
          (int)o->n_layers - 1);
    RANGE(o->interval >= 1, "interval %d must be >= 1", (int)o->interval);
    RANGE(o->prune_layer >= -1 && o->prune_layer <= o->first_layer,
          "prune_layer %d outside -1..first_layer (%d)", (int)o->prune_layer,
          (int)o->first_layer);
    ENUM(o->final_policy == EEVP_FINAL_FULL || o->final_policy == EEVP_FINAL_PRUNED,
         "unknown final_policy %d", (int)o->final_policy);
    ENUM(o->criterion >= EEVP_CRITERION_TOP2_GAP && o->criterion <= EEVP_CRITERION_JS,
         "criterion %d is not a built-in criterion (custom ones go through "
         "eevp_ctx_set_criterion)", (int)o->criterion);
    /* +INFINITY is the documented "never exit early"; -INFINITY and NaN
     * stay refused. */
    RANGE(isfinite(o->threshold) || o->threshold == INFINITY,
          "threshold must be finite, or +INFINITY (never exit early)");
    ENUM(o->schedule == EEVP_SCHEDULE_CONSTANT || o->schedule == EEVP_SCHEDULE_CALM,
         "unknown schedule %d", (int)o->schedule);
    RANGE(isfinite(o->schedule_tau) && o->schedule_tau >= 0.0f,
          "schedule_tau must be finite and >= 0");
    RANGE(o->max_length >= 1 || o->schedule != EEVP_SCHEDULE_CALM,
          "max_length %d must be >= 1 for the CALM schedule", (int)o->max_length);
    RANGE(o->patience >= 1 || o->criterion != EEVP_CRITERION_STABILITY,
          "patience %d must be >= 1", (int)o->patience);
    ENUM(!(o->flags & ~(EEVP_CTX_BATCH_INVARIANT | EEVP_CTX_EXACT_EXIT | EEVP_CTX_SCREEN)),
         "unknown flags 0x%x", (unsigned)o->flags);
    ENUM(!(o->flags & EEVP_CTX_SCREEN) || head->screen_mult > 0,
         "EEVP_CTX_SCREEN needs a head created with screen_mult (its int8 copy)");
    ENUM(!(o->flags & EEVP_CTX_SCREEN) ||
             (o->n_always == 0 && o->static_mode == EEVP_STATIC_NONE && o->adaptive_mass == 0.0f),
         "EEVP_CTX_SCREEN works on a plain top-K set: no always-included or static ids, "
         "no adaptive K");
    RANGE(o->n_always >= 0 && o->n_always <= EEVP_MAX_LIST, "n_always %d outside 0..%d",
          (int)o->n_always, EEVP_MAX_LIST);
    ENUM(o->n_always == 0 || o->always_ids, "always_ids is NULL with n_always %d",
         (int)o->n_always);
    ENUM(o->static_mode >= EEVP_STATIC_NONE && o->static_mode <= EEVP_STATIC_ONLY,
         "unknown static_mode %d", (int)o->static_mode);
    RANGE(o->n_static >= 0 && o->n_static <= EEVP_MAX_LIST, "n_static %d outside 0..%d",
          (int)o->n_static, EEVP_MAX_LIST);
    ENUM(o->n_static == 0 || o->static_ids || o->static_mode == EEVP_STATIC_NONE,
         "static_ids is NULL with n_static %d", (int)o->n_static);
    {
        const int32_t p = o->prune_layer < 0 ? o->first_layer : o->prune_layer;
        const int32_t r = o->reprune_layer;
        RANGE(r == -1 || (r > p && r < o->n_layers - 1 && r >= o->first_layer &&
                          (r - o->first_layer) % o->interval == 0),
              "reprune_layer %d must be -1 or a checked layer after the pruning layer (%d) "
              "and before the last", (int)r, (int)p);
    }
    RANGE(o->reprune_every >= 0, "reprune_every %d is negative", (int)o->reprune_every);
    RANGE(isfinite(o->adaptive_mass) && o->adaptive_mass >= 0.0f && o->adaptive_mass <= 1.0f,
          "adaptive_mass must be in [0, 1]");
    RANGE(o->adaptive_mass == 0.0f || (o->k > 0 && o->k_min >= 1 && o->k_min <= o->k),
          "adaptive K needs k > 0 and k_min in 1..k (k_min %d, k %d)", (int)o->k_min,
          (int)o->k);
    ENUM(o->static_mode != EEVP_STATIC_ONLY ||
             (o->reprune_layer == -1 && o->reprune_every == 0 && o->adaptive_mass == 0.0f),
         "re-pruning and adaptive K need a dynamic top-K (not EEVP_STATIC_ONLY)");
#undef RANGE
#undef ENUM
#undef CHECK
    if (o->allocator && (!o->allocator->alloc) != (!o->allocator->free)) {
        eevpi_msg(msg, msg_size, "allocator: alloc and free must be both set or both NULL");
        return EEVP_EINVAL;
    }
    return EEVP_OK;
}

/* The one memory plan: sizes the arena (c->block NULL) or carves it.  List
 * sizes are the caller's counts: duplicates and foreign ids are dropped
 * later, so these are upper bounds, and exactly what is allocated. */
static void plan(eevp_ctx *c, eevpi_arena *a)
{
    const int64_t B = c->o.max_batch, V = c->head->V, d = c->head->d;
    const int64_t shared = c->o.static_mode == EEVP_STATIC_ONLY ? c->kmax : 0;
    const int64_t K = shared ? 0 : c->kmax;
    c->always = (int32_t *)eevpi_arena_take(a, c->o.n_always, sizeof(int32_t));
    c->statics = (int32_t *)eevpi_arena_take(
        a, c->o.static_mode != EEVP_STATIC_NONE ? c->o.n_static : 0, sizeof(int32_t));
    c->shared_ids = (int32_t *)eevpi_arena_take(a, shared, sizeof(int32_t));
    c->shared_rows = (float *)eevpi_arena_take(a, shared * d, sizeof(float));
    c->shared_bias = (float *)eevpi_arena_take(a, c->head->bias ? shared : 0, sizeof(float));
    c->seq = (eevpi_seq *)eevpi_arena_take(a, B, sizeof(eevpi_seq));
    c->row_of_seq = (int32_t *)eevpi_arena_take(a, B, sizeof(int32_t));
    c->list = (int32_t *)eevpi_arena_take(a, B, sizeof(int32_t));
    c->slot_owner = (int32_t *)eevpi_arena_take(a, B, sizeof(int32_t));
    c->hrow = (const float **)eevpi_arena_take(a, B, sizeof(const float *));
    c->logits = (float *)eevpi_arena_take(a, B * V, sizeof(float));
    c->set = (int32_t *)eevpi_arena_take(a, B * K, sizeof(int32_t));
    c->rows = (float *)eevpi_arena_take(a, B * K * d, sizeof(float));
    c->set_bias = (float *)eevpi_arena_take(a, c->head->bias ? B * K : 0, sizeof(float));
    {
        /* The union plan: ids and positions per candidate, 16 bytes of sort
         * keys per candidate, and the dense pass's products (a dense row is
         * in at least half of the sets, so at most 2 K of them). */
        const int64_t U = B >= 2 ? K : 0, Bu = U ? B : 0;
        c->uni.ids = (int32_t *)eevpi_arena_take(a, B * U, sizeof(int32_t));
        c->uni.pos = (int32_t *)eevpi_arena_take(a, B * U, sizeof(int32_t));
        c->uni_idx = (int32_t *)eevpi_arena_take(a, Bu, sizeof(int32_t));
        c->uni_k = (int32_t *)eevpi_arena_take(a, Bu, sizeof(int32_t));
        c->uni_ids = (const int32_t **)eevpi_arena_take(a, Bu, sizeof(const int32_t *));
        c->uni_z = (float **)eevpi_arena_take(a, Bu, sizeof(float *));
        c->uni_act = (int32_t *)eevpi_arena_take(a, Bu, sizeof(int32_t));
        c->uni_keys = (int64_t *)eevpi_arena_take(a, 2 * B * U, sizeof(int64_t));
        c->uni_work = (float *)eevpi_arena_take(a, 2 * B * U, sizeof(float));
    }
    {
        /* A shard's merged candidates, set logits and owned positions. */
        const int64_t Bs = c->sh.n_shards ? B : 0, T = c->sh.ktop;
        c->sh_part = (unsigned char *)eevpi_arena_take(a, Bs, 1);
        c->sh_h = (float *)eevpi_arena_take(a, Bs * d, sizeof(float));
        c->sh_xi = (int32_t *)eevpi_arena_take(a, Bs, sizeof(int32_t));
        c->sh_topz = (float *)eevpi_arena_take(a, Bs * T, sizeof(float));
        c->sh_topi = (int32_t *)eevpi_arena_take(a, Bs * T, sizeof(int32_t));
        c->sh_setz = (float *)eevpi_arena_take(a, Bs * c->kmax, sizeof(float));
        c->sh_own = (int32_t *)eevpi_arena_take(a, Bs * c->kmax, sizeof(int32_t));
        c->sh_ids = (int32_t *)eevpi_arena_take(a, Bs ? (T > c->kmax ? T : c->kmax) : 0,
                                                sizeof(int32_t));
        c->sh_pairs = (eevpi_pair *)eevpi_arena_take(a, Bs ? T + c->sh.n_shards : 0,
                                                     sizeof(eevpi_pair));
        c->sh_slots = eevpi_arena_take(a, Bs ? c->sh.n_shards : 0, sizeof(eevpi_slot));
        c->sh_conf = (double *)eevpi_arena_take(a, Bs, sizeof(double));
    }
    c->prev_hidden = (float *)eevpi_arena_take(a, B * d, sizeof(float));
    /* Screened pruning: one work area, used by one sequence at a time. */
    c->screen_work = eevpi_arena_take(
        a, (c->o.flags & EEVP_CTX_SCREEN) && c->k > 0 ? eevpi_screen_work_size(c->head, c->k) : 0,
        1);
    c->dist_len = c->o.criterion == EEVP_CRITERION_JS ? (c->kmax ? c->kmax : V) : 0;
    c->prev_dist = (float *)eevpi_arena_take(a, B * c->dist_len, sizeof(float));
    c->xn = (float *)eevpi_arena_take(a, B * d, sizeof(float));
    c->iota = (int32_t *)eevpi_arena_take(a, V, sizeof(int32_t));
    {
        /* Candidates are sorted here: V of them, or a shard's merged ones. */
        int64_t np = V > B ? V : B;
        if (c->sh.n_shards && np < c->sh.ktop)
            np = c->sh.ktop;
        if (c->sh.n_shards && np < c->kmax)
            np = c->kmax;
        c->pairs = (eevpi_pair *)eevpi_arena_take(a, np, sizeof(eevpi_pair));
    }
    c->mark = (unsigned char *)eevpi_arena_take(a, c->kmax ? V : 0, 1);
    c->hist = (int64_t *)eevpi_arena_take(a, c->o.n_layers, sizeof(int64_t));
    c->size_hist = (int64_t *)eevpi_arena_take(a, c->kmax + 1, sizeof(int64_t));
    c->size_hist_pending = (int64_t *)eevpi_arena_take(a, c->kmax + 1, sizeof(int64_t));
}

static int cmp_id(const void *a, const void *b)
{
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Copy the ids inside the head, sorted and without duplicates. */
static int32_t copy_ids(int32_t *dst, const int32_t *src, int32_t n, const eevp_head *h)
{
    int32_t i, m = 0, u = 0;
    for (i = 0; i < n; i++)
        if (src[i] >= h->offset && src[i] - h->offset < h->V)
            dst[m++] = src[i];
    if (m == 0)
        return 0;
    qsort(dst, (size_t)m, sizeof *dst, cmp_id);
    for (i = 1; i < m; i++)
        if (dst[i] != dst[u])
            dst[++u] = dst[i];
    return u + 1;
}

/* Union of two sorted, duplicate-free lists, sorted. */
static int32_t merge_ids(int32_t *dst, const int32_t *a, int32_t na, const int32_t *b,
                         int32_t nb)
{
    int32_t i = 0, j = 0, m = 0;
    while (i < na || j < nb) {
        if (j >= nb || (i < na && a[i] < b[j]))
            dst[m++] = a[i++];
        else if (i >= na || b[j] < a[i])
            dst[m++] = b[j++];
        else
            dst[m++] = a[i++], j++;
    }
    return m;
}

int eevpi_contains(const int32_t *ids, int32_t n, int32_t id)
{
    int32_t lo = 0, hi = n;
    while (lo < hi) {
        const int32_t mid = lo + (hi - lo) / 2;
        if (ids[mid] < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && ids[lo] == id;
}

/* Fill the configuration part of c from checked options; returns the arena
 * size (or -1 on overflow). */
static int64_t configure(eevp_ctx *c, const eevp_head *head, const eevp_ctx_options *o,
                         const eevpi_shard_cfg *shard)
{
    eevpi_arena a = {NULL, 0, 0};
    /* The vocabulary the sets are drawn from: the whole head's on a shard. */
    const int64_t V = shard ? shard->total_vocab : head->V;
    memset(c, 0, sizeof *c);
    c->head = head;
    c->o = *o;
    c->o.allocator = NULL;
    if (shard)
        c->sh = *shard;
    c->p = o->prune_layer < 0 ? o->first_layer : o->prune_layer;
    c->k = (o->k > 0 && o->k < V) ? o->k : 0;
    {
        int64_t m;
        if (o->static_mode == EEVP_STATIC_ONLY)
            m = (int64_t)o->n_static + o->n_always;
        else if (c->k > 0)
            m = (int64_t)c->k + o->n_always +
                (o->static_mode == EEVP_STATIC_UNION ? o->n_static : 0);
        else
            m = 0; /* no pruning: the lists have nothing to join */
        c->kmax = (int32_t)(m < V ? m : V);
        if (o->static_mode == EEVP_STATIC_ONLY)
            c->k = 0;
    }
    c->never_exit = o->threshold == INFINITY;
    c->criterion = o->criterion;
    c->needs = o->criterion == EEVP_CRITERION_SATURATION ? EEVP_NEEDS_PREV_HIDDEN
                                                         : EEVP_NEEDS_LOGITS;
    plan(c, &a);
    if (a.overflow || !eevpi_add(a.used, EEVPI_ALIGN, &a.used) ||
        a.used > (int64_t)(SIZE_MAX / 2))
        return -1;
    return a.used;
}

EEVP_API int eevp_ctx_memory_estimate(int64_t *bytes, const eevp_head *head,
                                      const eevp_ctx_options *opts)
{
    eevp_ctx_options o;
    eevp_ctx c;
    int64_t arena;
    int rc;
    if (!bytes)
        return EEVP_EINVAL;
    *bytes = 0;
    if ((rc = eevpi_ctx_read_options(&o, head, opts, NULL, 0)) != EEVP_OK)
        return rc;
    if ((arena = configure(&c, head, &o, NULL)) < 0)
        return EEVP_EOVERFLOW;
    *bytes = arena + (int64_t)sizeof(eevp_ctx) + eevpi_pool_size(o.n_threads);
    return EEVP_OK;
}

EEVP_API int eevp_ctx_create(eevp_ctx **out, const eevp_head *head,
                             const eevp_ctx_options *opts, char *msg, size_t msg_size)
{
    return eevpi_ctx_create(out, head, opts, NULL, msg, msg_size);
}

int eevpi_ctx_create(eevp_ctx **out, const eevp_head *head, const eevp_ctx_options *opts,
                     const eevpi_shard_cfg *shard, char *msg, size_t msg_size)
{
    eevp_ctx_options o;
    eevpi_mem mem;
    eevp_ctx *c;
    eevpi_arena a = {NULL, 0, 0};
    int64_t arena, i;
    int rc;

    eevpi_msg(msg, msg_size, "%s", "");
    if (!out) {
        eevpi_msg(msg, msg_size, "out is NULL");
        return EEVP_EINVAL;
    }
    *out = NULL;
    if ((rc = eevpi_ctx_read_options(&o, head, opts, msg, msg_size)) != EEVP_OK)
        return rc;
    if ((rc = eevpi_mem_init(&mem, o.allocator, msg, msg_size)) != EEVP_OK)
        return rc;
    c = (eevp_ctx *)eevpi_alloc(&mem, sizeof *c);
    if (!c) {
        eevpi_msg(msg, msg_size, "out of memory for the context");
        return EEVP_ENOMEM;
    }
    if ((arena = configure(c, head, &o, shard)) < 0) {
        eevpi_free(&mem, c);
        eevpi_msg(msg, msg_size, "context size overflows");
        return EEVP_EOVERFLOW;
    }
    c->mem = mem;
    c->block = eevpi_alloc(&mem, (size_t)arena);
    if (!c->block) {
        eevpi_free(&mem, c);
        eevpi_msg(msg, msg_size, "out of memory for the context buffers (%lld bytes)",
                  (long long)arena);
        return EEVP_ENOMEM;
    }
    c->bytes = arena + (int64_t)sizeof *c + eevpi_pool_size(o.n_threads);
    c->pool = NULL;
    if (o.n_threads >= 2 &&
        (rc = eevpi_pool_create(&c->pool, o.n_threads, &mem, msg, msg_size)) != EEVP_OK) {
        eevpi_free(&mem, c->block);
        eevpi_free(&mem, c);
        return rc;
    }
    a.base = (unsigned char *)c->block +
             (EEVPI_ALIGN - (uintptr_t)c->block % EEVPI_ALIGN) % EEVPI_ALIGN;
    plan(c, &a);
    for (i = 0; i < head->V; i++)
        c->iota[i] = (int32_t)(i + head->offset);
    memset(c->hist, 0, (size_t)c->o.n_layers * sizeof(int64_t));
    memset(c->size_hist, 0, (size_t)(c->kmax + 1) * sizeof(int64_t));
    if (c->mark)
        memset(c->mark, 0, (size_t)head->V);
    c->n_always = copy_ids(c->always, o.always_ids, o.n_always, head);
    c->n_static = o.static_mode != EEVP_STATIC_NONE
                      ? copy_ids(c->statics, o.static_ids, o.n_static, head)
                      : 0;
    if (c->shared_ids) {
        c->shared_n = merge_ids(c->shared_ids, c->statics, c->n_static, c->always, c->n_always);
        if (c->shared_n > 0)
            eevpi_head_gather(head, c->shared_ids, c->shared_n, c->shared_rows, head->d,
                              c->shared_bias);
    }
    /* The caller's lists are copied: keep no pointer to them. */
    c->o.always_ids = NULL;
    c->o.static_ids = NULL;
    *out = c;
    return EEVP_OK;
}

static void drop_user(eevp_ctx *ctx)
{
    if (ctx->criterion == EEVP_CRITERION_CUSTOM && ctx->user.destroy) {
        /* Calls into this context from destroy are refused (EEVP_EBUSY),
         * as from decide and reset. */
        ctx->busy = 1;
        ctx->user.destroy(ctx->user_state);
        ctx->busy = 0;
    }
    ctx->user_state = NULL;
}

EEVP_API void eevp_ctx_free(eevp_ctx *ctx)
{
    eevpi_mem mem;
    if (!ctx)
        return;
    drop_user(ctx);
    eevpi_pool_free(ctx->pool);
    mem = ctx->mem;
    eevpi_free(&mem, ctx->block);
    eevpi_free(&mem, ctx);
}

EEVP_API int eevp_ctx_reset(eevp_ctx *ctx)
{
    int rc = eevpi_ctx_enter(ctx);
    if (rc != EEVP_OK)
        return rc;
    ctx->active = 0;
    ctx->n_seq = 0;
    ctx->sh_kind = 0;
    memset(&ctx->pending, 0, sizeof ctx->pending);
    memset(ctx->size_hist_pending, 0, (size_t)(ctx->kmax + 1) * sizeof(int64_t));
    return EEVP_OK;
}

/* The checked layers as configured: {f, f+i, ...} and L-1. */
static int configured_check(const eevp_ctx *ctx, int32_t layer)
{
    if (layer == ctx->o.n_layers - 1)
        return 1;
    return layer >= ctx->o.first_layer && (layer - ctx->o.first_layer) % ctx->o.interval == 0;
}

int eevpi_ctx_is_checked(const eevp_ctx *ctx, int32_t layer)
{
    /* threshold +INFINITY: nothing can exit before the last layer, so the
     * criterion (a custom one's own exit decision included) runs there only. */
    if (ctx->never_exit)
        return layer == ctx->o.n_layers - 1;
    return configured_check(ctx, layer);
}

int eevpi_ctx_pruning(const eevp_ctx *ctx)
{
    /* Without early exits the set serves only a pruned final decision. */
    return ctx->kmax > 0 && (ctx->needs & EEVP_NEEDS_LOGITS) &&
           (!ctx->never_exit || ctx->o.final_policy == EEVP_FINAL_PRUNED);
}

int eevpi_ctx_required(const eevp_ctx *ctx, int32_t layer)
{
    if (eevpi_ctx_is_checked(ctx, layer) || eevpi_ctx_reprunes(ctx, layer))
        return 1;
    /* A static-only set is known before the step: nothing to prune at p. */
    return layer == ctx->p && eevpi_ctx_pruning(ctx) && ctx->o.static_mode != EEVP_STATIC_ONLY;
}

int eevpi_ctx_reprunes(const eevp_ctx *ctx, int32_t layer)
{
    int32_t l, n = 0;
    if (!eevpi_ctx_pruning(ctx) || ctx->k == 0 || layer <= ctx->p ||
        layer >= ctx->o.n_layers - 1 || !configured_check(ctx, layer))
        return 0;
    if (layer == ctx->o.reprune_layer)
        return 1;
    if (ctx->o.reprune_every <= 0)
        return 0;
    for (l = ctx->p + 1; l <= layer; l++)
        n += configured_check(ctx, l);
    return n % ctx->o.reprune_every == 0;
}

EEVP_API int eevp_ctx_layer_required(const eevp_ctx *ctx, int32_t layer)
{
    if (!ctx)
        return EEVP_EINVAL;
    if (ctx->busy)
        return EEVP_EBUSY;
    if (layer < 0 || layer >= ctx->o.n_layers)
        return EEVP_ERANGE;
    return eevpi_ctx_required(ctx, layer);
}

EEVP_API int64_t eevp_ctx_memory(const eevp_ctx *ctx)
{
    return ctx ? ctx->bytes : EEVP_EINVAL;
}

float eevpi_ctx_lambda(const eevp_ctx *ctx, int32_t t)
{
    const double lambda = ctx->o.threshold;
    if (ctx->o.schedule == EEVP_SCHEDULE_CALM)
        return (float)(lambda * (9.0 + exp(-(double)ctx->o.schedule_tau * t /
                                            ctx->o.max_length)) / 10.0);
    return (float)lambda;
}

EEVP_API int eevp_ctx_threshold(const eevp_ctx *ctx, int32_t t, float *lambda)
{
    if (!ctx || !lambda)
        return EEVP_EINVAL;
    if (ctx->busy)
        return EEVP_EBUSY;
    if (t < 0)
        return EEVP_ERANGE;
    *lambda = eevpi_ctx_lambda(ctx, t);
    return EEVP_OK;
}

/* On a shard context, whether every check a criterion sees is on a pruned
 * set (whose K logits every rank holds); a full-vocabulary layer gives it
 * only the merged top entries and sums, not the V logits. */
static int shard_sees_sets_only(const eevp_ctx *ctx)
{
    return ctx->kmax > 0 && !eevpi_ctx_is_checked(ctx, ctx->p) && ctx->o.reprune_layer < 0 &&
           ctx->o.reprune_every == 0 && ctx->o.final_policy == EEVP_FINAL_PRUNED;
}

EEVP_API int eevp_ctx_set_criterion(eevp_ctx *ctx, const eevp_criterion_vtbl *vtbl, void *state)
{
    eevp_criterion_vtbl v;
    int rc = eevpi_ctx_enter(ctx);
    if (rc != EEVP_OK)
        return rc;
    if (!vtbl)
        return eevpi_ctx_fail(ctx, EEVP_EINVAL, "vtbl is NULL");
    if (ctx->active)
        return eevpi_ctx_fail(ctx, EEVP_ESTATE, "cannot change the criterion during a step");
    memset(&v, 0, sizeof v);
    if ((rc = eevpi_read_struct(&v, sizeof v, vtbl, VTBL_V1)) != EEVP_OK)
        return eevpi_ctx_fail(ctx, rc, "eevp_criterion_vtbl.struct_size %u: expected %u, or "
                              "larger with a zero tail", (unsigned)vtbl->struct_size,
                              (unsigned)sizeof v);
    if (!v.decide)
        return eevpi_ctx_fail(ctx, EEVP_EINVAL, "vtbl->decide is required");
    if (v.needs & ~(EEVP_NEEDS_LOGITS | EEVP_NEEDS_PREV_HIDDEN))
        return eevpi_ctx_fail(ctx, EEVP_EINVAL, "unknown needs flags 0x%x", (unsigned)v.needs);
    if (ctx->sh.n_shards > 0 && (v.needs & EEVP_NEEDS_LOGITS) && !shard_sees_sets_only(ctx))
        return eevpi_ctx_fail(ctx, EEVP_EINVAL,
                              "a custom criterion asking for logits sees only pruned sets on "
                              "a shard context: prune (k > 0) at a layer that is not checked, "
                              "no re-pruning, EEVP_FINAL_PRUNED");
    drop_user(ctx);
    ctx->user = v;
    ctx->user_state = state;
    ctx->criterion = EEVP_CRITERION_CUSTOM;
    ctx->needs = (int32_t)v.needs;
    return EEVP_OK;
}

EEVP_API int eevp_ctx_stats(const eevp_ctx *ctx, eevp_stats *out)
{
    eevp_stats s;
    const eevpi_counts *c;
    if (!ctx || !out)
        return EEVP_EINVAL;
    if (ctx->busy)
        return EEVP_EBUSY;
    c = &ctx->stats;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    s.n_layers = ctx->o.n_layers;
    s.tokens = c->tokens;
    s.exited_early = c->exited_early;
    s.reached_last = c->reached_last;
    s.failed = c->failed;
    s.checks = c->checks;
    s.pruned_decisions = c->pruned_decisions;
    s.k_coverage_hits = c->cov_hits;
    s.k_coverage_total = c->cov_total;
    s.k_coverage_final = c->cov_total ? (double)c->cov_hits / (double)c->cov_total : 0.0;
    s.head_flops = c->flops;
    s.head_flops_baseline = c->flops_base;
    s.head_bytes = c->bytes;
    s.head_bytes_baseline = c->bytes_base;
    s.pruned_sets = c->pruned_sets;
    s.set_size_sum = c->set_size_sum;
    s.reprunes = c->reprunes;
    s.reprune_changed = c->reprune_changed;
    s.always_emitted = c->always_emitted;
    s.static_emitted = c->static_emitted;
    s.exact_exits = c->exact_exits;
    s.exact_exit_changed = c->exact_exit_changed;
    s.shard_exchanges = c->shard_exchanges;
    s.shard_bytes_sent = c->shard_sent;
    s.shard_bytes_received = c->shard_received;
    return eevpi_write_struct(out, &s, sizeof s, STATS_V1);
}

EEVP_API int eevp_ctx_exit_histogram(const eevp_ctx *ctx, int64_t *counts, int32_t n)
{
    if (!ctx || !counts)
        return EEVP_EINVAL;
    if (ctx->busy)
        return EEVP_EBUSY;
    if (n < 0)
        return EEVP_ERANGE;
    memcpy(counts, ctx->hist, (size_t)(n < ctx->o.n_layers ? n : ctx->o.n_layers) *
                                  sizeof(int64_t));
    return EEVP_OK;
}

EEVP_API int eevp_ctx_set_size_histogram(const eevp_ctx *ctx, int64_t *counts, int32_t n)
{
    int32_t s;
    if (!ctx || !counts)
        return EEVP_EINVAL;
    if (ctx->busy)
        return EEVP_EBUSY;
    if (n < 0)
        return EEVP_ERANGE;
    for (s = 0; s < n; s++)
        counts[s] = s <= ctx->kmax ? ctx->size_hist[s] : 0;
    return EEVP_OK;
}

EEVP_API int eevp_ctx_stats_reset(eevp_ctx *ctx)
{
    int rc = eevpi_ctx_enter(ctx);
    if (rc != EEVP_OK)
        return rc;
    memset(&ctx->stats, 0, sizeof ctx->stats);
    memset(ctx->hist, 0, (size_t)ctx->o.n_layers * sizeof(int64_t));
    memset(ctx->size_hist, 0, (size_t)(ctx->kmax + 1) * sizeof(int64_t));
    return EEVP_OK;
}

EEVP_API int eevp_step_result(const eevp_ctx *ctx, int32_t seq, eevp_result *out)
{
    if (!ctx || !out)
        return EEVP_EINVAL;
    if (ctx->busy)
        return EEVP_EBUSY;
    if (seq < 0 || seq >= ctx->n_seq)
        return EEVP_ERANGE;
    return eevpi_write_struct(out, &ctx->seq[seq].res, sizeof(eevp_result), RESULT_V1);
}
