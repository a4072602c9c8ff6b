/* SPDX-License-Identifier: MIT */
/* step.c - the per-token flow: begin, hand over layers, decide per
 * sequence, end.  Pruning happens once per token at the pruning layer; later
 * checks run on the gathered rows only. */
#include "ctx.h"

#include <math.h>
#include <string.h>

int eevpi_step_running(const eevpi_seq *q)
{
    return q->res.reason == EEVP_REASON_RUNNING;
}

static void clear_pending(eevp_ctx *ctx)
{
    memset(&ctx->pending, 0, sizeof ctx->pending);
    memset(ctx->size_hist_pending, 0, (size_t)(ctx->kmax + 1) * sizeof(int64_t));
}

EEVP_API int eevp_step_begin(eevp_ctx *ctx, int32_t n_seq, const int32_t *positions)
{
    int32_t s;
    int rc = eevpi_ctx_enter(ctx);
    if (rc != EEVP_OK)
        return rc;
    if (ctx->active)
        return eevpi_ctx_fail(ctx, EEVP_ESTATE, "a step is in progress: finish it with "
                              "eevp_step_end or eevp_step_abandon");
    if (n_seq < 1 || n_seq > ctx->o.max_batch)
        return eevpi_ctx_fail(ctx, EEVP_ERANGE, "n_seq %d outside 1..max_batch (%d)",
                              (int)n_seq, (int)ctx->o.max_batch);
    for (s = 0; positions && s < n_seq; s++)
        if (positions[s] < 0)
            return eevpi_ctx_fail(ctx, EEVP_ERANGE, "positions[%d] = %d is negative", (int)s,
                                  (int)positions[s]);
    ctx->active = 1;
    ctx->n_seq = n_seq;
    ctx->last_layer = -1;
    ctx->sh_step++;
    ctx->sh_kind = 0;
    ctx->uni_on = 0;
    clear_pending(ctx);
    for (s = 0; s < ctx->o.max_batch; s++)
        ctx->slot_owner[s] = -1;
    for (s = 0; s < n_seq; s++) {
        eevpi_seq *q = &ctx->seq[s];
        memset(q, 0, sizeof *q);
        q->res.struct_size = sizeof q->res;
        q->res.reason = EEVP_REASON_RUNNING;
        q->res.status = EEVP_OK;
        q->res.token = -1;
        q->res.layer = -1;
        q->res.confidence = NAN;
        q->position = positions ? positions[s] : 0;
        q->res.threshold = eevpi_ctx_lambda(ctx, q->position);
        q->res.pruned_token = -1;
        q->slot = -1;
        q->last_top1 = -1;
        if (ctx->shared_n > 0 && eevpi_ctx_pruning(ctx)) {
            /* EEVP_STATIC_ONLY: the one set, gathered at creation. */
            q->has_set = 1;
            q->set_n = ctx->shared_n;
            q->set_ids = ctx->shared_ids;
            q->set_rows = ctx->shared_rows;
            q->set_bias = ctx->head->bias ? ctx->shared_bias : NULL;
            ctx->pending.pruned_sets++;
            ctx->pending.set_size_sum += q->set_n;
            ctx->size_hist_pending[q->set_n]++;
        }
    }
    if (ctx->criterion == EEVP_CRITERION_CUSTOM && ctx->user.reset) {
        ctx->busy = 1;
        for (s = 0; s < n_seq; s++)
            ctx->user.reset(ctx->user_state, s);
        ctx->busy = 0;
    }
    return EEVP_OK;
}

EEVP_API int32_t eevp_step_n_running(const eevp_ctx *ctx)
{
    int32_t s, n = 0;
    if (!ctx)
        return EEVP_EINVAL;
    if (ctx->busy)
        return EEVP_EBUSY;
    if (!ctx->active)
        return 0;
    for (s = 0; s < ctx->n_seq; s++)
        n += eevpi_step_running(&ctx->seq[s]);
    return n;
}

EEVP_API int eevp_step_end(eevp_ctx *ctx)
{
    eevpi_counts *st, *pd;
    int32_t s;
    int rc = eevpi_ctx_enter(ctx);
    if (rc != EEVP_OK)
        return rc;
    if (!ctx->active)
        return eevpi_ctx_fail(ctx, EEVP_ESTATE, "no step in progress");
    if (ctx->sh_kind)
        return eevpi_ctx_fail(ctx, EEVP_ESTATE, "an exchange is pending: hand its merged "
                              "record to eevp_shard_absorb first");
    if (eevp_step_n_running(ctx) > 0)
        return eevpi_ctx_fail(ctx, EEVP_ESTATE, "%d sequence(s) still running: hand over "
                              "more layers, or call eevp_step_abandon",
                              (int)eevp_step_n_running(ctx));
    st = &ctx->stats;
    pd = &ctx->pending;
    for (s = 0; s < ctx->n_seq; s++) {
        const eevp_result *r = &ctx->seq[s].res;
        st->tokens++;
        st->exited_early += r->reason == EEVP_REASON_CONFIDENT;
        st->reached_last += r->reason == EEVP_REASON_LAST_LAYER;
        st->failed += r->reason == EEVP_REASON_ERROR;
        st->pruned_decisions += r->reason != EEVP_REASON_ERROR && r->pruned;
        if (r->reason != EEVP_REASON_ERROR) {
            ctx->hist[r->layer]++;
            st->always_emitted += eevpi_contains(ctx->always, ctx->n_always, r->token);
            st->static_emitted += eevpi_contains(ctx->statics, ctx->n_static, r->token);
        }
    }
    for (s = 0; s <= ctx->kmax; s++)
        ctx->size_hist[s] += ctx->size_hist_pending[s];
    st->pruned_sets += pd->pruned_sets;
    st->set_size_sum += pd->set_size_sum;
    st->reprunes += pd->reprunes;
    st->reprune_changed += pd->reprune_changed;
    st->exact_exits += pd->exact_exits;
    st->exact_exit_changed += pd->exact_exit_changed;
    st->checks += pd->checks;
    st->cov_hits += pd->cov_hits;
    st->cov_total += pd->cov_total;
    st->flops += pd->flops;
    st->flops_base += pd->flops_base;
    st->bytes += pd->bytes;
    st->bytes_base += pd->bytes_base;
    st->shard_exchanges += pd->shard_exchanges;
    st->shard_sent += pd->shard_sent;
    st->shard_received += pd->shard_received;
    clear_pending(ctx);
    ctx->active = 0;
    return EEVP_OK;
}

EEVP_API int eevp_step_abandon(eevp_ctx *ctx)
{
    int rc = eevpi_ctx_enter(ctx);
    if (rc != EEVP_OK)
        return rc;
    if (!ctx->active)
        return EEVP_OK; /* an ended step's results stay readable */
    ctx->active = 0;
    ctx->n_seq = 0;
    ctx->sh_kind = 0;
    clear_pending(ctx);
    return EEVP_OK;
}

/* ---- one layer ---- */

/* Sequence s finishes with its own error; the others go on. */
void eevpi_step_fail_seq(eevp_ctx *ctx, int32_t s, int32_t layer, int code, int *first)
{
    eevpi_seq *q = &ctx->seq[s];
    q->res.reason = EEVP_REASON_ERROR;
    q->res.status = code;
    q->res.token = -1;
    q->res.layer = layer;
    q->res.pruned = 0;
    q->res.confidence = NAN;
    if (*first == EEVP_OK) {
        *first = code;
        eevpi_ctx_fail(ctx, code, "sequence %d at layer %d: %s", (int)s, (int)layer,
                       eevp_strerror(code));
    }
}

void eevpi_step_resolve(eevp_ctx *ctx, int32_t s, int32_t reason, int32_t token,
                        int32_t layer, int32_t pruned, double conf, int32_t cand_full,
                        int32_t cand_n)
{
    eevpi_seq *q = &ctx->seq[s];
    q->res.reason = reason;
    q->res.token = token;
    q->res.layer = layer;
    q->res.pruned = pruned;
    q->res.confidence = (float)conf;
    q->res.pruned_token = pruned ? token : -1;
    q->res.set_size = q->has_set ? q->set_n : 0;
    q->cand_full = cand_full;
    q->cand_n = cand_n;
}

/* Bytes of one weight of W as the head stores it: 4 in fp32, 2 in fp16 and
 * bf16.  Gathered rows are fp32 whatever the head's storage. */
static int64_t w_bytes(const eevp_head *h)
{
    return h->wtype == EEVP_WEIGHT_F32 ? 4 : 2;
}

/* A projection over `rows` rows of `bytes_per_weight` each: W's own rows
 * (w_bytes) or gathered fp32 rows (4). */
void eevpi_step_count_projection(eevp_ctx *ctx, int64_t rows, int64_t bytes_per_weight)
{
    const int64_t d = ctx->head->d;
    ctx->pending.flops += (2 * d - 1) * rows;
    ctx->pending.bytes += bytes_per_weight * rows * d;
}

void eevpi_step_count_check(eevp_ctx *ctx)
{
    const int64_t d = ctx->head->d, V = ctx->head->V;
    ctx->pending.checks++;
    ctx->pending.flops_base += (2 * d - 1) * V;
    ctx->pending.bytes_base += w_bytes(ctx->head) * V * d;
}

static float *slot_logits(const eevp_ctx *ctx, int32_t slot)
{
    return ctx->logits + (int64_t)slot * ctx->head->V;
}

static int slot_valid(const eevp_ctx *ctx, int32_t s)
{
    const int32_t slot = ctx->seq[s].slot;
    return slot >= 0 && ctx->slot_owner[slot] == s;
}

/* A slot holding nothing anybody needs: unowned, or owned by a running
 * sequence that is not among the first `keep` list entries being served. */
static int32_t free_slot(const eevp_ctx *ctx, int32_t from)
{
    int32_t f;
    for (f = from; f < ctx->o.max_batch; f++) {
        const int32_t o = ctx->slot_owner[f];
        if (o < 0 || o >= ctx->n_seq || eevpi_step_running(&ctx->seq[o]))
            return f;
    }
    return -1; /* unreachable: max_batch slots, and the m sequences being
                  projected own none of those beyond m that are taken */
}

static void ensure_slot(eevp_ctx *ctx, int32_t s)
{
    int32_t f;
    if (slot_valid(ctx, s))
        return;
    for (f = 0; f < ctx->o.max_batch && ctx->slot_owner[f] >= 0; f++)
        ;
    ctx->slot_owner[f] = s;
    ctx->seq[s].slot = f;
}

/* Full logits for the m sequences list[0..m-1] whose normalised rows are
 * xn rows xrow[0..m-1] (ascending): one BLAS call over slots 0..m-1. */
static void project_full(eevp_ctx *ctx, const int32_t *list, const int32_t *xrow, int32_t m)
{
    const int64_t d = ctx->head->d, V = ctx->head->V;
    int32_t i;
    /* Pack the rows in place: xrow[i] >= i, so each row moves down onto a
     * row already consumed. */
    for (i = 0; i < m; i++)
        if (xrow[i] != i)
            memmove(ctx->xn + i * d, ctx->xn + (int64_t)xrow[i] * d, (size_t)d * sizeof(float));
    /* Slots 0..m-1 are needed: move resolved sequences' candidates out. */
    for (i = 0; i < m; i++) {
        const int32_t o = ctx->slot_owner[i];
        if (o >= 0 && o < ctx->n_seq && !eevpi_step_running(&ctx->seq[o]) &&
            ctx->seq[o].slot == i) {
            const int32_t f = free_slot(ctx, m);
            memcpy(slot_logits(ctx, f), slot_logits(ctx, i),
                   (size_t)ctx->seq[o].cand_n * sizeof(float));
            ctx->slot_owner[f] = o;
            ctx->seq[o].slot = f;
        }
    }
    for (i = 0; i < m; i++) {
        eevpi_seq *q = &ctx->seq[list[i]];
        if (q->slot >= 0 && q->slot != i && ctx->slot_owner[q->slot] == list[i])
            ctx->slot_owner[q->slot] = -1;
        q->slot = i;
        ctx->slot_owner[i] = list[i];
    }
    /* Under batch invariance, each row with the reduction order it would
     * get alone, whatever the batch. */
    eevpi_head_project_pool(ctx->head, ctx->pool, m, ctx->xn, ctx->logits, V,
                            (ctx->o.flags & EEVP_CTX_BATCH_INVARIANT) != 0);
    eevpi_step_count_projection(ctx, (int64_t)m * V, w_bytes(ctx->head));
}

/* The exit rule, c > lambda, on the values eevp_result reports: the
 * confidence rounded to float (as resolve stores it) against the float
 * lambda(t).  Comparing the double would let a threshold set to a reported
 * confidence exit whenever the double lay above its float. */
int32_t eevpi_step_exits(double conf, float lambda)
{
    return (float)conf > lambda;
}

/* Restrict full-vocabulary logits to the sequence's pruned set. */
static const float *restrict_to_set(eevp_ctx *ctx, int32_t s, const float *z)
{
    const eevpi_seq *q = &ctx->seq[s];
    float *out = (float *)ctx->pairs;
    int32_t j;
    for (j = 0; j < q->set_n; j++)
        out[j] = z[q->set_ids[j] - ctx->head->offset];
    return out;
}

/* Store P over the sequence's set, from the set's logits in set order, as
 * the distribution the next JS check compares against. */
void eevpi_step_remember_set_dist(eevp_ctx *ctx, int32_t s, const float *zs)
{
    eevpi_seq *q = &ctx->seq[s];
    eevpi_dist dist;
    eevpi_dist_scan(zs, q->set_ids, 0, q->set_n, 1, &dist);
    eevpi_softmax(zs, &dist, ctx->prev_dist + (int64_t)s * ctx->dist_len);
    q->has_prev_p = 1;
}

static int call_user(eevp_ctx *ctx, const eevp_exit_view *v, eevpi_check *c)
{
    float conf = NAN;
    int32_t ex = -1;
    int r;
    ctx->busy = 1;
    r = ctx->user.decide(ctx->user_state, v, &conf, &ex);
    ctx->busy = 0;
    if (r != 0)
        return EEVP_EUSER;
    if (!isfinite(conf) || ex < -1 || ex > 1)
        return EEVP_ECALLBACK;
    c->conf = conf;
    /* Both floats: the values eevp_result reports. */
    c->exit = ex < 0 ? conf > v->threshold : ex;
    return EEVP_OK;
}

static void fill_view(const eevp_ctx *ctx, int32_t s, int32_t layer, const float *h,
                      eevp_exit_view *v)
{
    const eevpi_seq *q = &ctx->seq[s];
    memset(v, 0, sizeof *v);
    v->struct_size = sizeof *v;
    v->seq = s;
    v->layer = layer;
    v->n_layers = ctx->o.n_layers;
    v->position = q->position;
    v->dim = (int32_t)ctx->head->d;
    v->hidden = h;
    v->prev_hidden = (ctx->needs & EEVP_NEEDS_PREV_HIDDEN) && q->has_prev_h
                         ? ctx->prev_hidden + (int64_t)s * ctx->head->d
                         : NULL;
    v->top1_id = v->top2_id = -1;
    v->threshold = q->res.threshold;
}

/* The criterion on candidate logits z[0..n-1] (ids NULL: the whole
 * vocabulary in row order).  `full_with_set`: z is the full vocabulary of a
 * sequence that holds a pruned set (JS compares over the set). */
int eevpi_step_check_logits(eevp_ctx *ctx, int32_t s, int32_t layer, const float *h,
                            const float *z, const int32_t *ids, int32_t n, int pruned,
                            int full_with_set, eevpi_check *c)
{
    eevpi_seq *q = &ctx->seq[s];
    const int32_t id0 = (int32_t)ctx->head->offset;
    const int need_sum = ctx->criterion != EEVP_CRITERION_STABILITY;
    eevpi_dist dist;
    int rc = eevpi_dist_scan(z, ids, id0, n, need_sum, &dist);
    if (rc != EEVP_OK)
        return rc;
    eevpi_step_count_check(ctx);
    c->token = ids ? ids[dist.top1] : id0 + dist.top1;
    switch (ctx->criterion) {
    case EEVP_CRITERION_TOP2_GAP:
        c->conf = eevpi_conf_top2(&dist);
        break;
    case EEVP_CRITERION_MAX_PROB:
        c->conf = eevpi_conf_maxprob(&dist);
        break;
    case EEVP_CRITERION_ENTROPY:
        c->conf = eevpi_conf_entropy(z, &dist);
        break;
    case EEVP_CRITERION_STABILITY:
        if (dist.n_finite == 0) {
            /* Every candidate masked: no top-1 to hold (c = 0, as for the
             * other logit criteria), and the run starts again. */
            q->run = 0;
            q->last_top1 = -1;
            c->conf = 0.0;
            break;
        }
        q->run = q->last_top1 == c->token ? q->run + 1 : 1;
        q->last_top1 = c->token;
        c->conf = q->run >= ctx->o.patience ? 1.0 : 0.0;
        break;
    case EEVP_CRITERION_JS: {
        float *prev = ctx->prev_dist + (int64_t)s * ctx->dist_len;
        if (eevpi_ctx_pruning(ctx) && !pruned && !full_with_set) {
            /* At the pruning layer: first check, the set does not exist yet;
             * the set's distribution is stored once it does. */
            c->conf = 0.0;
            break;
        }
        if (full_with_set) {
            z = restrict_to_set(ctx, s, z);
            n = q->set_n;
            eevpi_dist_scan(z, q->set_ids, 0, n, 1, &dist);
        }
        c->conf = q->has_prev_p ? eevpi_conf_js(prev, z, &dist) : 0.0;
        eevpi_softmax(z, &dist, prev);
        q->has_prev_p = 1;
        break;
    }
    default: { /* EEVP_CRITERION_CUSTOM */
        eevp_exit_view v;
        fill_view(ctx, s, layer, h, &v);
        v.n = n;
        v.pruned = pruned;
        v.logits = z;
        v.ids = ids ? ids : ctx->iota;
        v.top1_id = c->token;
        v.top1_logit = dist.z1;
        if (dist.top2 >= 0) {
            v.top2_id = ids ? ids[dist.top2] : id0 + dist.top2;
            v.top2_logit = dist.z2;
        }
        v.log_sum_exp = dist.n_finite ? (float)(dist.max + log(dist.sumexp)) : -INFINITY;
        return call_user(ctx, &v, c);
    }
    }
    c->exit = eevpi_step_exits(c->conf, q->res.threshold);
    return EEVP_OK;
}

/* The criterion without logits (saturation, or a custom one not asking). */
int eevpi_step_check_hidden(eevp_ctx *ctx, int32_t s, int32_t layer, const float *h,
                            eevpi_check *c)
{
    eevpi_seq *q = &ctx->seq[s];
    const float *prev = ctx->prev_hidden + (int64_t)s * ctx->head->d;
    eevpi_step_count_check(ctx);
    if (ctx->criterion == EEVP_CRITERION_CUSTOM) {
        eevp_exit_view v;
        fill_view(ctx, s, layer, h, &v);
        return call_user(ctx, &v, c);
    }
    c->conf = q->has_prev_h ? eevpi_cosine(ctx->head->kern, h, prev, ctx->head->d) : 0.0;
    c->exit = eevpi_step_exits(c->conf, q->res.threshold);
    return EEVP_OK;
}

void eevpi_step_remember_hidden(eevp_ctx *ctx, int32_t s, const float *h)
{
    if (ctx->needs & EEVP_NEEDS_PREV_HIDDEN) {
        memcpy(ctx->prev_hidden + (int64_t)s * ctx->head->d, h,
               (size_t)ctx->head->d * sizeof(float));
        ctx->seq[s].has_prev_h = 1;
    }
}

/* Size of the dynamic part under adaptive K: the smallest prefix of the
 * sorted top-k holding `mass` of the full softmax, within [k_min, k]. */
static int32_t adaptive_k(const eevp_ctx *ctx, const float *z, const int32_t *top)
{
    const int64_t V = ctx->head->V, off = ctx->head->offset;
    const double zmax = z[top[0] - off];
    double total = 0.0, cum = 0.0;
    int64_t v;
    int32_t j;
    for (v = 0; v < V; v++)
        total += exp((double)z[v] - zmax);
    for (j = 0; j < ctx->k; j++) {
        cum += exp((double)z[top[j] - off] - zmax);
        if (j + 1 >= ctx->o.k_min && cum >= ctx->o.adaptive_mass * total)
            return j + 1;
    }
    return ctx->k;
}

/* Build sequence s's pruned set from full logits z: the top-K (or the
 * adaptive prefix), the static list under EEVP_STATIC_UNION and the
 * always-included ids, without duplicates, in the order of z.  Its rows are
 * gathered afterwards (gather_sets).  A rebuild (re-pruning) counts whether
 * the set changed. */
static int build_set(eevp_ctx *ctx, int32_t s, const float *z)
{
    const eevp_head *h = ctx->head;
    eevpi_seq *q = &ctx->seq[s];
    int32_t *ids = ctx->set + (int64_t)s * ctx->kmax;
    const int rebuild = q->has_set;
    int32_t n, n_dyn, j, old_n = q->set_n;
    unsigned char *mark = ctx->mark;
    int rc;

    if (rebuild)
        for (j = 0; j < old_n; j++)
            mark[ids[j] - h->offset] = 2;
    rc = eevpi_topk(h->kern, z, h->V, ctx->k, h->offset, ids, NULL, ctx->pairs);
    if (rc != EEVP_OK) {
        if (rebuild)
            memset(mark, 0, (size_t)h->V);
        return rc;
    }
    n = n_dyn = ctx->o.adaptive_mass > 0.0f ? adaptive_k(ctx, z, ids) : ctx->k;
    for (j = 0; j < n; j++)
        mark[ids[j] - h->offset] |= 1;
    for (j = 0; j < ctx->n_static; j++)
        if (!(mark[ctx->statics[j] - h->offset] & 1)) {
            mark[ctx->statics[j] - h->offset] |= 1;
            ids[n++] = ctx->statics[j];
        }
    for (j = 0; j < ctx->n_always; j++)
        if (!(mark[ctx->always[j] - h->offset] & 1)) {
            mark[ctx->always[j] - h->offset] |= 1;
            ids[n++] = ctx->always[j];
        }
    if (rebuild) {
        int32_t same = 0;
        for (j = 0; j < n; j++)
            same += mark[ids[j] - h->offset] == 3;
        ctx->pending.reprunes++;
        ctx->pending.reprune_changed += !(same == n && n == old_n);
        memset(mark, 0, (size_t)h->V);
    } else {
        for (j = 0; j < n; j++)
            mark[ids[j] - h->offset] = 0;
    }
    if (n > n_dyn) {
        /* Joined ids go into the order of z too. */
        for (j = 0; j < n; j++) {
            ctx->pairs[j].v = z[ids[j] - h->offset];
            ctx->pairs[j].i = ids[j];
        }
        eevpi_select_sorted(ctx->pairs, n, n);
        for (j = 0; j < n; j++)
            ids[j] = ctx->pairs[j].i;
    }
    q->set_ids = ids;
    q->set_n = n;
    q->has_set = 1;
    /* Counted per set, as the per-sequence path reads it, whichever way the
     * rows are gathered (a union gather reads shared rows once). */
    ctx->pending.bytes += w_bytes(h) * (int64_t)n * h->d;
    ctx->pending.pruned_sets++;
    ctx->pending.set_size_sum += n;
    ctx->size_hist_pending[n]++;
    return EEVP_OK;
}

typedef struct gather_job {
    eevp_ctx *ctx;
    const int32_t *built;
    int32_t nb;
} gather_job;

/* One block per sequence, for sequences built[lo..hi-1] of this part. */
static void gather_part(void *arg, int part, int parts)
{
    const gather_job *j = (const gather_job *)arg;
    eevp_ctx *ctx = j->ctx;
    const eevp_head *h = ctx->head;
    int64_t lo, hi, i;
    eevpi_split(j->nb, part, parts, 1, &lo, &hi);
    for (i = lo; i < hi; i++) {
        const int32_t s = j->built[i];
        eevpi_seq *q = &ctx->seq[s];
        float *rows = ctx->rows + (int64_t)s * ctx->kmax * h->d;
        float *bias = ctx->set_bias ? ctx->set_bias + (int64_t)s * ctx->kmax : NULL;
        eevpi_head_gather(h, q->set_ids, q->set_n, rows, h->d, bias);
        q->set_rows = rows;
        q->set_bias = bias;
    }
}

/* Gather the rows of the sets just built for sequences built[0..nb-1]:
 * through one union plan when eevpi_union_pick expects the later checks to
 * cost less that way (batch.c; rows shared by several sets are read once),
 * otherwise one block per sequence.  Both give the same bits. */
static void gather_sets(eevp_ctx *ctx, const int32_t *built, int32_t nb)
{
    const eevp_head *h = ctx->head;
    int32_t i;
    ctx->uni_on = 0;
    if (nb >= 2 && ctx->uni_idx) {
        eevpi_union *u = &ctx->uni;
        for (i = 0; i < ctx->n_seq; i++)
            ctx->uni_idx[i] = -1;
        for (i = 0; i < nb; i++) {
            ctx->uni_idx[built[i]] = i;
            ctx->uni_k[i] = ctx->seq[built[i]].set_n;
            ctx->uni_ids[i] = ctx->seq[built[i]].set_ids;
        }
        u->rows = ctx->rows;
        u->bias = ctx->set_bias;
        eevpi_union_plan(h, nb, ctx->uni_k, ctx->uni_ids, u, ctx->uni_keys);
        if (eevpi_union_pick(h, u, ctx->uni_k)) {
            eevpi_union_gather(h, u);
            ctx->uni_on = 1;
            return;
        }
    }
    {
        gather_job j;
        int64_t total = 0;
        j.ctx = ctx;
        j.built = built;
        j.nb = nb;
        for (i = 0; i < nb; i++)
            total += ctx->seq[built[i]].set_n;
        /* Shared out by sequences with the context's threads (8 sets of
         * 256 rows of 4096 floats are 32 MB to read and write). */
        eevpi_pool_run(ctx->pool, total * h->d * (h->wtype == EEVP_WEIGHT_F32 ? 4 : 2),
                       gather_part, &j);
    }
}

static int in_set(const eevpi_seq *q, int32_t token)
{
    int32_t j;
    for (j = 0; j < q->set_n; j++)
        if (q->set_ids[j] == token)
            return 1;
    return 0;
}

/* Full-vocabulary layer: the pruning layer, a re-pruning layer, the last
 * layer under EEVP_FINAL_FULL, or any checked layer without pruning. */
static void layer_full(eevp_ctx *ctx, int32_t layer, int32_t m, const int32_t *list,
                       const float *const *hrow, int *first)
{
    const eevp_head *h = ctx->head;
    const int last = layer == ctx->o.n_layers - 1;
    const int checked = eevpi_ctx_is_checked(ctx, layer);
    const int builds = eevpi_ctx_pruning(ctx) && ctx->k > 0 &&
                       (layer == ctx->p || eevpi_ctx_reprunes(ctx, layer));
    int32_t *xrow = ctx->row_of_seq; /* identity: xn rows match the list */
    int32_t i, nb = 0;
    eevpi_check c;

    for (i = 0; i < m; i++)
        xrow[i] = i;
    project_full(ctx, list, xrow, m);
    for (i = 0; i < m; i++) {
        const int32_t s = list[i];
        eevpi_seq *q = &ctx->seq[s];
        const float *z = slot_logits(ctx, q->slot);
        int rc;
        if (checked) {
            rc = eevpi_step_check_logits(ctx, s, layer, hrow[i], z, NULL, (int32_t)h->V, 0, q->has_set,
                              &c);
            if (rc != EEVP_OK) {
                eevpi_step_fail_seq(ctx, s, layer, rc, first);
                continue;
            }
            eevpi_step_remember_hidden(ctx, s, hrow[i]);
            if (last) {
                if (q->has_set) {
                    ctx->pending.cov_total++;
                    ctx->pending.cov_hits += in_set(q, c.token);
                }
                eevpi_step_resolve(ctx, s, EEVP_REASON_LAST_LAYER, c.token, layer, 0, c.conf, 1,
                        (int32_t)h->V);
                continue;
            }
            if (c.exit) {
                eevpi_step_resolve(ctx, s, EEVP_REASON_CONFIDENT, c.token, layer, 0, c.conf, 1,
                        (int32_t)h->V);
                continue;
            }
        }
        if (builds) {
            if ((rc = build_set(ctx, s, z)) != EEVP_OK) {
                eevpi_step_fail_seq(ctx, s, layer, rc, first);
                continue;
            }
            xrow[nb++] = s; /* xrow[j] for j < nb is no longer read */
        }
        /* The next JS check compares against this layer over the set. */
        if (ctx->criterion == EEVP_CRITERION_JS && checked && q->has_set)
            eevpi_step_remember_set_dist(ctx, s, restrict_to_set(ctx, s, z));
    }
    if (nb > 0)
        gather_sets(ctx, xrow, nb);
}

/* Per-sequence pruned projections of list[0..m-1], split between the
 * context's threads by rows of the concatenated sets (one sequence's set
 * may be shared out too).  Each row's logit is computed the same way
 * whoever computes it. */
typedef struct pruned_job {
    eevp_ctx *ctx;
    int32_t m;
    const int32_t *list;
    int64_t total;
} pruned_job;

static void pruned_part(void *arg, int part, int parts)
{
    const pruned_job *j = (const pruned_job *)arg;
    const eevp_head *h = j->ctx->head;
    int64_t t0, t1, base = 0;
    int32_t i;
    eevpi_split(j->total, part, parts, 8, &t0, &t1);
    for (i = 0; i < j->m && base < t1; i++) {
        const eevpi_seq *q = &j->ctx->seq[j->list[i]];
        const int64_t a = t0 > base ? t0 - base : 0;
        const int64_t b = t1 - base < q->set_n ? t1 - base : q->set_n;
        if (a < b)
            eevpi_head_project_rows(h, (int32_t)(b - a), q->set_rows + a * h->d, h->d,
                                    q->set_bias ? q->set_bias + a : NULL,
                                    j->ctx->xn + (int64_t)i * h->d,
                                    slot_logits(j->ctx, q->slot) + a);
        base += q->set_n;
    }
}

/* Pruned layer: the K-row projections of every sequence, through the union
 * plan when the sets were gathered that way, else one per sequence on its
 * own block; then the checks. */
static void layer_pruned(eevp_ctx *ctx, int32_t layer, int32_t m, int32_t *list,
                         const float *const *hrow, int *first)
{
    const eevp_head *h = ctx->head;
    const int last = layer == ctx->o.n_layers - 1;
    const int exact = (ctx->o.flags & EEVP_CTX_EXACT_EXIT) && !last;
    int32_t *xrow = ctx->row_of_seq;
    int32_t i, n_exact = 0;
    eevpi_check c;

    for (i = 0; i < m; i++)
        ensure_slot(ctx, list[i]);
    if (ctx->uni_on) {
        for (i = 0; i < m; i++) {
            ctx->uni_act[i] = ctx->uni_idx[list[i]];
            ctx->uni_z[i] = slot_logits(ctx, ctx->seq[list[i]].slot);
        }
        eevpi_pruned_union(h, &ctx->uni, ctx->pool, m, ctx->uni_act, ctx->uni_k, ctx->xn,
                           ctx->uni_z, ctx->uni_work);
    } else {
        pruned_job j;
        j.ctx = ctx;
        j.m = m;
        j.list = list;
        j.total = 0;
        for (i = 0; i < m; i++)
            j.total += ctx->seq[list[i]].set_n;
        eevpi_pool_run(ctx->pool, 4 * j.total * h->d, pruned_part, &j);
    }
    for (i = 0; i < m; i++) {
        const int32_t s = list[i];
        eevpi_seq *q = &ctx->seq[s];
        const float *z = slot_logits(ctx, q->slot);
        int rc;
        eevpi_step_count_projection(ctx, q->set_n, 4);
        rc = eevpi_step_check_logits(ctx, s, layer, hrow[i], z, q->set_ids, q->set_n, 1, 0, &c);
        if (rc != EEVP_OK) {
            eevpi_step_fail_seq(ctx, s, layer, rc, first);
            continue;
        }
        eevpi_step_remember_hidden(ctx, s, hrow[i]);
        if (last || c.exit) {
            eevpi_step_resolve(ctx, s, last ? EEVP_REASON_LAST_LAYER : EEVP_REASON_CONFIDENT, c.token,
                    layer, 1, c.conf, 0, q->set_n);
            if (exact && c.exit) {
                xrow[n_exact] = i;
                list[n_exact++] = s;
            }
        }
    }
    if (n_exact == 0)
        return;
    /* Exact-token exits: the full head once for the sequences that exited.
     * Their pruned logits are no longer wanted: release their slots so that
     * project_full does not try to keep them. */
    for (i = 0; i < n_exact; i++) {
        eevpi_seq *q = &ctx->seq[list[i]];
        if (slot_valid(ctx, list[i]))
            ctx->slot_owner[q->slot] = -1;
        q->slot = -1;
    }
    project_full(ctx, list, xrow, n_exact);
    for (i = 0; i < n_exact; i++) {
        eevpi_seq *q = &ctx->seq[list[i]];
        eevpi_dist dist;
        if (eevpi_dist_scan(slot_logits(ctx, q->slot), NULL, (int32_t)h->offset,
                            (int32_t)h->V, 0, &dist) != EEVP_OK) {
            eevpi_step_fail_seq(ctx, list[i], layer, EEVP_ENONFINITE, first);
            continue;
        }
        q->res.token = (int32_t)h->offset + dist.top1;
        q->cand_full = 1;
        q->cand_n = (int32_t)h->V;
        ctx->pending.exact_exits++;
        ctx->pending.exact_exit_changed += q->res.token != q->res.pruned_token;
    }
}

/* Screened pruning layer (EEVP_CTX_SCREEN): each running sequence's set
 * comes from the head's int8 copy (eevpi_head_screen: the int8 pass over V
 * rows, exact logits for m*K rows, the best K kept), then the rows are
 * gathered as for any set; a checked layer is then decided on the set. */
static void layer_screened(eevp_ctx *ctx, int32_t layer, int32_t m, int32_t *list, int *first)
{
    const eevp_head *h = ctx->head;
    const int64_t d = h->d;
    const int64_t sm = (int64_t)h->screen_mult * ctx->k < h->V ? (int64_t)h->screen_mult * ctx->k
                                                                : h->V;
    int32_t *built = ctx->row_of_seq; /* scratch until gather_sets returns */
    int32_t i, nb = 0;
    for (i = 0; i < m; i++) {
        const int32_t s = list[i];
        eevpi_seq *q = &ctx->seq[s];
        int32_t *ids = ctx->set + (int64_t)s * ctx->kmax;
        int rc = eevpi_head_screen(h, ctx->pool, ctx->xn + (int64_t)i * d, ctx->k, ids, NULL,
                                   ctx->screen_work);
        if (rc != EEVP_OK) {
            eevpi_step_fail_seq(ctx, s, layer, rc, first);
            continue;
        }
        q->set_ids = ids;
        q->set_n = ctx->k;
        q->has_set = 1;
        /* The int8 pass reads one byte a weight; then m*K exact rows, and
         * the K rows gathered, from W as stored. */
        ctx->pending.flops += (2 * d - 1) * (h->V + sm);
        ctx->pending.bytes += h->V * d + w_bytes(h) * (sm + ctx->k) * d;
        ctx->pending.pruned_sets++;
        ctx->pending.set_size_sum += ctx->k;
        ctx->size_hist_pending[ctx->k]++;
        /* Keep the survivors' rows, hidden rows and list entries together. */
        if (nb != i) {
            memmove(ctx->xn + (int64_t)nb * d, ctx->xn + (int64_t)i * d,
                    (size_t)d * sizeof(float));
            ctx->hrow[nb] = ctx->hrow[i];
        }
        list[nb] = s;
        built[nb++] = s;
    }
    if (nb == 0)
        return;
    gather_sets(ctx, built, nb);
    if (eevpi_ctx_is_checked(ctx, layer))
        layer_pruned(ctx, layer, nb, list, ctx->hrow, first);
}

/* Checks on logits: every running sequence is on the same footing at a
 * given layer (all full-vocabulary, or all pruned). */
static void layer_logits(eevp_ctx *ctx, int32_t layer, int32_t m, int32_t *list,
                         const float *const *hrow, int *first)
{
    const int last = layer == ctx->o.n_layers - 1;
    int any_set = 0, full;
    int32_t i;
    for (i = 0; i < m; i++)
        any_set |= ctx->seq[list[i]].has_set;
    if (layer == ctx->p && !last && (ctx->o.flags & EEVP_CTX_SCREEN) && ctx->k > 0 &&
        eevpi_ctx_pruning(ctx)) {
        layer_screened(ctx, layer, m, list, first);
        return;
    }
    full = !any_set || layer == ctx->p || eevpi_ctx_reprunes(ctx, layer) ||
           (last && ctx->o.final_policy == EEVP_FINAL_FULL);
    if (full)
        layer_full(ctx, layer, m, list, hrow, first);
    else
        layer_pruned(ctx, layer, m, list, hrow, first);
}

/* Checks without logits: decide first, then one full projection for the
 * sequences that exit (or all, at the last layer). */
static void layer_hidden(eevp_ctx *ctx, int32_t layer, int32_t m, int32_t *list,
                         const float *const *hrow, int *first)
{
    const eevp_head *h = ctx->head;
    const int last = layer == ctx->o.n_layers - 1;
    int32_t *xrow = ctx->row_of_seq;
    double *conf = (double *)ctx->pairs; /* m doubles of scratch */
    int32_t i, n_out = 0;
    eevpi_check c;

    for (i = 0; i < m; i++) {
        const int32_t s = list[i];
        int rc = eevpi_step_check_hidden(ctx, s, layer, hrow[i], &c);
        if (rc != EEVP_OK) {
            eevpi_step_fail_seq(ctx, s, layer, rc, first);
            continue;
        }
        eevpi_step_remember_hidden(ctx, s, hrow[i]);
        if (last || c.exit) {
            conf[n_out] = c.conf;
            xrow[n_out] = i;
            list[n_out++] = s;
        }
    }
    if (n_out == 0)
        return;
    project_full(ctx, list, xrow, n_out);
    for (i = 0; i < n_out; i++) {
        const int32_t s = list[i];
        const float *z = slot_logits(ctx, ctx->seq[s].slot);
        eevpi_dist dist;
        if (eevpi_dist_scan(z, NULL, (int32_t)h->offset, (int32_t)h->V, 0, &dist) != EEVP_OK) {
            eevpi_step_fail_seq(ctx, s, layer, EEVP_ENONFINITE, first);
            continue;
        }
        eevpi_step_resolve(ctx, s, last ? EEVP_REASON_LAST_LAYER : EEVP_REASON_CONFIDENT,
                (int32_t)h->offset + dist.top1, layer, 0, conf[i], 1, (int32_t)h->V);
    }
}

/* Next layer after `after` that must be handed over, or n_layers. */
static int32_t next_required(const eevp_ctx *ctx, int32_t after)
{
    int32_t l;
    for (l = after + 1; l < ctx->o.n_layers; l++)
        if (eevpi_ctx_required(ctx, l))
            return l;
    return ctx->o.n_layers;
}

/* Map rows to sequences into row_of_seq; nothing else changes. */
static int map_rows(eevp_ctx *ctx, int32_t n_rows, const int32_t *row_seq, int32_t n_running)
{
    int32_t s, r;
    for (s = 0; s < ctx->n_seq; s++)
        ctx->row_of_seq[s] = -1;
    if (!row_seq) {
        if (n_rows == ctx->n_seq) {
            for (s = 0; s < ctx->n_seq; s++)
                if (eevpi_step_running(&ctx->seq[s]))
                    ctx->row_of_seq[s] = s;
        } else if (n_rows == n_running) {
            for (s = 0, r = 0; s < ctx->n_seq; s++)
                if (eevpi_step_running(&ctx->seq[s]))
                    ctx->row_of_seq[s] = r++;
        } else {
            return eevpi_ctx_fail(ctx, EEVP_ERANGE, "n_rows %d: expected n_seq (%d) or the "
                                  "running count (%d)", (int)n_rows, (int)ctx->n_seq,
                                  (int)n_running);
        }
        return EEVP_OK;
    }
    if (n_rows != n_running)
        return eevpi_ctx_fail(ctx, EEVP_ERANGE, "n_rows %d with a row map: expected the "
                              "running count (%d)", (int)n_rows, (int)n_running);
    for (r = 0; r < n_rows; r++) {
        s = row_seq[r];
        if (s < 0 || s >= ctx->n_seq)
            return eevpi_ctx_fail(ctx, EEVP_ERANGE, "row_seq[%d] = %d outside 0..n_seq-1 (%d)",
                                  (int)r, (int)s, (int)ctx->n_seq - 1);
        if (!eevpi_step_running(&ctx->seq[s]))
            return eevpi_ctx_fail(ctx, EEVP_EINVAL, "row_seq[%d] names sequence %d, which "
                                  "already has a result", (int)r, (int)s);
        if (ctx->row_of_seq[s] >= 0)
            return eevpi_ctx_fail(ctx, EEVP_EINVAL, "row_seq names sequence %d twice",
                                  (int)s);
        ctx->row_of_seq[s] = r;
    }
    return EEVP_OK;
}

int eevpi_step_layer_args(eevp_ctx *ctx, int32_t layer, const float *hidden, int64_t ld,
                          int32_t n_rows, const int32_t *row_seq, int32_t *need)
{
    int32_t n_running;
    int rc;
    if (!ctx->active)
        return eevpi_ctx_fail(ctx, EEVP_ESTATE, "no step in progress (eevp_step_begin)");
    if (layer < 0 || layer >= ctx->o.n_layers)
        return eevpi_ctx_fail(ctx, EEVP_ERANGE, "layer %d outside 0..%d", (int)layer,
                              (int)ctx->o.n_layers - 1);
    if (layer <= ctx->last_layer)
        return eevpi_ctx_fail(ctx, EEVP_ESTATE, "layer %d after layer %d: layers must "
                              "strictly increase within a step", (int)layer,
                              (int)ctx->last_layer);
    n_running = eevp_step_n_running(ctx);
    if (n_running == 0)
        return eevpi_ctx_fail(ctx, EEVP_ESTATE, "every sequence already has a result: "
                              "call eevp_step_end");
    *need = next_required(ctx, ctx->last_layer);
    if (layer > *need)
        return eevpi_ctx_fail(ctx, EEVP_ESTATE, "layer %d is required before layer %d",
                              (int)*need, (int)layer);
    if (!hidden)
        return eevpi_ctx_fail(ctx, EEVP_EINVAL, "hidden is NULL");
    if (ld < ctx->head->d)
        return eevpi_ctx_fail(ctx, EEVP_ERANGE, "ld %lld is smaller than dim %lld",
                              (long long)ld, (long long)ctx->head->d);
    if (n_rows < 1 || ld > INT64_MAX / (int64_t)sizeof(float) / n_rows)
        return eevpi_ctx_fail(ctx, n_rows < 1 ? EEVP_ERANGE : EEVP_EOVERFLOW,
                              "n_rows %d with ld %lld", (int)n_rows, (long long)ld);
    if ((rc = map_rows(ctx, n_rows, row_seq, n_running)) != EEVP_OK)
        return rc;
    ctx->last_layer = layer;
    return EEVP_OK;
}

EEVP_API int eevp_step_layer(eevp_ctx *ctx, int32_t layer, const float *hidden, int64_t ld,
                             int32_t n_rows, const int32_t *row_seq)
{
    const float **hrow = ctx ? ctx->hrow : NULL;
    int32_t s, m = 0, need = 0;
    int first = EEVP_OK;
    int rc = eevpi_ctx_enter(ctx);
    if (rc != EEVP_OK)
        return rc;
    if (ctx->sh.n_shards > 0)
        return eevpi_ctx_fail(ctx, EEVP_ESTATE, "a shard context takes eevp_shard_layer");
    if ((rc = eevpi_step_layer_args(ctx, layer, hidden, ld, n_rows, row_seq, &need)) != EEVP_OK)
        return rc;
    if (layer != need)
        return EEVP_OK; /* not required: ignored */

    /* Normalise every running row (and catch NaN/Inf) in sequence order. */
    for (s = 0; s < ctx->n_seq; s++) {
        const float *x;
        if (!eevpi_step_running(&ctx->seq[s]))
            continue;
        x = hidden + (int64_t)ctx->row_of_seq[s] * ld;
        if (eevpi_head_norm(ctx->head, x, ctx->xn + (int64_t)m * ctx->head->d) != EEVP_OK) {
            eevpi_step_fail_seq(ctx, s, layer, EEVP_ENONFINITE, &first);
            continue;
        }
        hrow[m] = x;
        ctx->list[m++] = s;
    }
    if (m > 0) {
        if (ctx->needs & EEVP_NEEDS_LOGITS)
            layer_logits(ctx, layer, m, ctx->list, hrow, &first);
        else
            layer_hidden(ctx, layer, m, ctx->list, hrow, &first);
    }
    return first;
}

EEVP_API int eevp_step_candidates(eevp_ctx *ctx, int32_t seq, int32_t capacity, float *logits,
                                  int32_t *ids, int32_t *n_out)
{
    const eevpi_seq *q;
    const float *z;
    int32_t j, n, m;
    int rc = eevpi_ctx_enter(ctx);
    if (n_out)
        *n_out = 0;
    if (rc != EEVP_OK)
        return rc;
    if (!logits || !ids || !n_out)
        return eevpi_ctx_fail(ctx, EEVP_EINVAL, "logits, ids and n_out are required");
    if (seq < 0 || seq >= ctx->n_seq)
        return eevpi_ctx_fail(ctx, EEVP_ERANGE, "seq %d outside 0..n_seq-1 (%d)", (int)seq,
                              (int)ctx->n_seq - 1);
    if (capacity < 1)
        return eevpi_ctx_fail(ctx, EEVP_ERANGE, "capacity %d must be >= 1", (int)capacity);
    q = &ctx->seq[seq];
    if (q->res.reason != EEVP_REASON_CONFIDENT && q->res.reason != EEVP_REASON_LAST_LAYER)
        return eevpi_ctx_fail(ctx, EEVP_ESTATE, "sequence %d has no resolved token", (int)seq);
    z = q->cand_z ? q->cand_z : slot_logits(ctx, q->slot);
    n = q->cand_n;
    for (j = 0; j < n; j++) {
        ctx->pairs[j].v = z[j];
        ctx->pairs[j].i = q->cand_ids ? q->cand_ids[j] : q->cand_full ? ctx->iota[j]
                                                                       : q->set_ids[j];
    }
    m = capacity < n ? capacity : n;
    eevpi_select_sorted(ctx->pairs, n, m);
    for (j = 0; j < m; j++) {
        logits[j] = ctx->pairs[j].v;
        ids[j] = ctx->pairs[j].i;
    }
    *n_out = m;
    return EEVP_OK;
}
