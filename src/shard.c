/* SPDX-License-Identifier: MIT */
/* shard.c - the step flow of one shard of a vocabulary-parallel head.  Each
 * required layer ends in an exchange: the shard summarises its rows into a
 * record (record.c), the host merges every rank's records, and each rank
 * decides from the merged record, the same way on every rank: at
 * full-vocabulary layers from the merged top entries and the shards' sums,
 * at pruned layers from the set's K logits, each sent by the shard owning
 * the row (so the criterion sees the bits an unsharded context computes). */
#include "ctx.h"
#include "record.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SHARD_OPTIONS_V1 sizeof(eevp_shard_options)

EEVP_API int eevp_shard_options_init(eevp_shard_options *opts)
{
    static const eevp_shard_options defaults = EEVP_SHARD_OPTIONS_INIT;
    if (!opts)
        return EEVP_EINVAL;
    *opts = defaults;
    return EEVP_OK;
}

static int is_shard(const eevp_ctx *ctx)
{
    return ctx->sh.n_shards > 0;
}

/* The set size a record's set section carries: full summaries carry the
 * set's logits only where JS compares over the set at a full layer. */
static int32_t full_kset(const eevp_ctx *ctx)
{
    return ctx->criterion == EEVP_CRITERION_JS ? ctx->kmax : 0;
}

static int64_t record_size(const eevp_ctx *ctx, int32_t kind, int32_t n_seq, int32_t kset)
{
    eevpi_rec_info info;
    memset(&info, 0, sizeof info);
    info.kind = kind;
    info.n_seq = n_seq;
    info.ktop = kind == EEVPI_REC_FULL ? ctx->sh.ktop : 0;
    info.kset = kset;
    info.n_shards = ctx->sh.n_shards;
    return eevpi_rec_size(&info);
}

static int64_t capacity_of(const eevp_ctx *ctx)
{
    const int64_t full = record_size(ctx, EEVPI_REC_FULL, ctx->o.max_batch, full_kset(ctx));
    const int64_t set =
        ctx->kmax > 0 ? record_size(ctx, EEVPI_REC_SET, ctx->o.max_batch, ctx->kmax) : 0;
    return full > set ? full : set;
}

/* What a shard context refuses, after the options were checked: EEVP_OK
 * or an error with msg set; fills in sh->ktop. */
static int refuse(const eevp_ctx_options *o, const eevp_head *head, eevpi_shard_cfg *sh,
                  char *msg, size_t msg_size)
{
    const int32_t k = o->k > 0 && o->k < sh->total_vocab ? o->k : 0;
    const int32_t need = k > 2 ? k : 2;
    const int js = o->criterion == EEVP_CRITERION_JS;
#define REFUSE(cond, code, ...)                    \
    do {                                           \
        if (cond) {                                \
            eevpi_msg(msg, msg_size, __VA_ARGS__); \
            return code;                           \
        }                                          \
    } while (0)
    REFUSE(head->offset + head->V > sh->total_vocab, EEVP_ERANGE,
           "the shard's rows [%lld, %lld) end beyond total_vocab %lld",
           (long long)head->offset, (long long)(head->offset + head->V),
           (long long)sh->total_vocab);
    REFUSE(sh->n_shards == 1 && (head->offset != 0 || head->V != sh->total_vocab), EEVP_ERANGE,
           "a single shard holds the whole head: rows [0, %lld)", (long long)sh->total_vocab);
    REFUSE(sh->ktop != 0 && (sh->ktop < need || sh->ktop > EEVP_MAX_LIST), EEVP_ERANGE,
           "top_k %d outside max(k, 2) (%d) .. %d", (int)sh->ktop, (int)need, EEVP_MAX_LIST);
    REFUSE(o->flags & EEVP_CTX_SCREEN, EEVP_EINVAL,
           "a shard context cannot screen (EEVP_CTX_SCREEN): the int8 pass ranks each "
           "shard's rows alone");
    REFUSE(o->n_always > 0 || o->static_mode != EEVP_STATIC_NONE || o->adaptive_mass > 0.0f,
           EEVP_EINVAL,
           "a shard context takes a plain top-K set: no always-included or static ids, no "
           "adaptive K");
    REFUSE(js && k == 0, EEVP_EINVAL,
           "JS without pruning compares distributions over the whole vocabulary, which does "
           "not decompose across shards: set k");
#undef REFUSE
    sh->ktop = sh->ktop ? sh->ktop : need;
    if (sh->ktop > sh->total_vocab)
        sh->ktop = (int32_t)sh->total_vocab;
    {
        /* Records carry sizes in 32 bits. */
        eevpi_rec_info info;
        memset(&info, 0, sizeof info);
        info.kind = EEVPI_REC_FULL;
        info.n_seq = o->max_batch;
        info.ktop = sh->ktop;
        info.kset = js ? k : 0;
        info.n_shards = sh->n_shards;
        if (eevpi_rec_size(&info) > INT32_MAX) {
            eevpi_msg(msg, msg_size, "a record of max_batch %d sequences would exceed 2 GiB",
                      (int)o->max_batch);
            return EEVP_EOVERFLOW;
        }
    }
    return EEVP_OK;
}

EEVP_API int eevp_ctx_create_shard(eevp_ctx **out, const eevp_head *shard_head,
                                   const eevp_ctx_options *opts,
                                   const eevp_shard_options *shard, char *msg,
                                   size_t msg_size)
{
    eevp_shard_options so;
    eevp_ctx_options o;
    eevpi_shard_cfg cfg;
    int rc;
    eevpi_msg(msg, msg_size, "%s", "");
    if (!out) {
        eevpi_msg(msg, msg_size, "out is NULL");
        return EEVP_EINVAL;
    }
    *out = NULL;
    if (!shard || !shard_head) {
        eevpi_msg(msg, msg_size, "%s is NULL", shard ? "shard_head" : "shard");
        return EEVP_EINVAL;
    }
    eevp_shard_options_init(&so);
    if ((rc = eevpi_read_struct(&so, sizeof so, shard, SHARD_OPTIONS_V1)) != EEVP_OK) {
        eevpi_msg(msg, msg_size, "eevp_shard_options.struct_size %u: expected %u, or larger "
                  "with a zero tail", (unsigned)shard->struct_size, (unsigned)sizeof so);
        return rc;
    }
    if (so.n_shards < 1 || so.n_shards > EEVP_MAX_SHARDS || so.shard_index < 0 ||
        so.shard_index >= so.n_shards) {
        eevpi_msg(msg, msg_size, "shard_index %d, n_shards %d: need 0 <= shard_index < "
                  "n_shards <= %d", (int)so.shard_index, (int)so.n_shards, EEVP_MAX_SHARDS);
        return EEVP_ERANGE;
    }
    if (so.total_vocab < 1 || so.total_vocab > EEVP_MAX_VOCAB) {
        eevpi_msg(msg, msg_size, "total_vocab %lld outside 1..%lld", (long long)so.total_vocab,
                  (long long)EEVP_MAX_VOCAB);
        return EEVP_ERANGE;
    }
    cfg.index = so.shard_index;
    cfg.n_shards = so.n_shards;
    cfg.ktop = so.top_k;
    cfg.total_vocab = so.total_vocab;
    if ((rc = eevpi_ctx_read_options(&o, shard_head, opts, msg, msg_size)) != EEVP_OK ||
        (rc = refuse(&o, shard_head, &cfg, msg, msg_size)) != EEVP_OK)
        return rc;
    return eevpi_ctx_create(out, shard_head, opts, &cfg, msg, msg_size);
}

EEVP_API int64_t eevp_shard_record_capacity(const eevp_ctx *ctx)
{
    if (!ctx)
        return EEVP_EINVAL;
    if (!is_shard(ctx))
        return EEVP_EINVAL;
    return capacity_of(ctx);
}

/* ---- fingerprint ---- */

static uint64_t config_hash(const eevp_ctx *ctx)
{
    const eevp_head *h = ctx->head;
    const eevp_ctx_options *o = &ctx->o;
    uint32_t w[24];
    int n = 0;
    memset(w, 0, sizeof w);
    w[n++] = (uint32_t)ctx->sh.n_shards;
    w[n++] = (uint32_t)ctx->sh.ktop;
    w[n++] = (uint32_t)ctx->sh.total_vocab;
    w[n++] = (uint32_t)h->d;
    w[n++] = (uint32_t)h->norm;
    memcpy(&w[n++], &h->eps, 4);
    memcpy(&w[n++], &h->scale, 4);
    memcpy(&w[n++], &h->cap, 4);
    w[n++] = h->bias != NULL;
    w[n++] = (uint32_t)o->n_layers;
    w[n++] = (uint32_t)o->max_batch;
    w[n++] = (uint32_t)ctx->k;
    w[n++] = (uint32_t)o->first_layer;
    w[n++] = (uint32_t)o->interval;
    w[n++] = (uint32_t)ctx->p;
    w[n++] = (uint32_t)o->final_policy;
    w[n++] = (uint32_t)ctx->criterion;
    memcpy(&w[n++], &o->threshold, 4);
    w[n++] = (uint32_t)o->schedule;
    memcpy(&w[n++], &o->schedule_tau, 4);
    w[n++] = (uint32_t)o->max_length ^ (uint32_t)o->patience << 16;
    w[n++] = o->flags;
    w[n++] = (uint32_t)o->reprune_layer;
    w[n++] = (uint32_t)o->reprune_every;
    return eevpi_hash_words(EEVPI_HASH_SEED, w, n);
}

/* The hidden states' part of the fingerprint: every sequence handed over
 * at this layer (its index, position and raw row, ctx->hrow[s] during the
 * layer call). */
static uint64_t hidden_hash(const eevp_ctx *ctx, const int32_t *list, int32_t m)
{
    uint64_t hash = EEVPI_HASH_SEED;
    int32_t i;
    for (i = 0; i < m; i++) {
        const int32_t s = list[i];
        uint32_t w[2];
        w[0] = (uint32_t)s;
        w[1] = (uint32_t)ctx->seq[s].position;
        hash = eevpi_hash_words(hash, w, 2);
        hash = eevpi_hash_words(hash, ctx->hrow[s], ctx->head->d);
    }
    return hash;
}

/* Whether the raw rows are read after the layer call: by a custom
 * criterion's view, or kept as the previous checked layer's. */
static int keeps_rows(const eevp_ctx *ctx)
{
    return ctx->criterion == EEVP_CRITERION_CUSTOM || (ctx->needs & EEVP_NEEDS_PREV_HIDDEN);
}

/* Sequence s's raw row after the layer call, or NULL when not kept (no
 * criterion in use reads it). */
static const float *raw_row(const eevp_ctx *ctx, int32_t s)
{
    return keeps_rows(ctx) ? ctx->sh_h + (int64_t)s * ctx->head->d : NULL;
}

static void start_record(eevp_ctx *ctx, void *record, int32_t kind, int32_t round,
                         int32_t kset, eevpi_rec_info *info)
{
    memset(info, 0, sizeof *info);
    info->kind = kind;
    info->n_seq = ctx->n_seq;
    info->ktop = kind == EEVPI_REC_FULL ? ctx->sh.ktop : 0;
    info->kset = kset;
    info->n_shards = ctx->sh.n_shards;
    info->layer = ctx->last_layer;
    info->round = round;
    info->config = config_hash(ctx);
    info->step = ctx->sh_step;
    info->hash = ctx->sh_hash; /* the layer's, for every round */
    eevpi_rec_start(record, info);
    eevpi_rec_put_range(record, ctx->sh.index, ctx->head->offset,
                        ctx->head->offset + ctx->head->V);
    ctx->sh_kind = kind;
    ctx->sh_round = round;
    ctx->sh_setsec = kset;
    ctx->sh_size = info->size;
    ctx->pending.shard_exchanges++;
    ctx->pending.shard_sent += info->size;
}

/* ---- summaries ---- */

/* This shard's sums over its full logits z (V local rows). */
static void shard_sums(const eevp_ctx *ctx, const float *z, eevpi_slot *slot)
{
    const eevp_head *h = ctx->head;
    eevpi_dist d;
    int64_t v;
    memset(slot, 0, sizeof *slot);
    if (eevpi_dist_scan(z, NULL, (int32_t)h->offset, (int32_t)h->V, 0, &d) != EEVP_OK) {
        slot->nonfinite = 1;
        return;
    }
    slot->max = d.z1;
    slot->n_finite = d.n_finite;
    if (d.n_finite == 0)
        return;
    for (v = 0; v < h->V; v++) {
        if (z[v] > -INFINITY) {
            const double u = (double)z[v] - d.z1, e = exp(u);
            slot->sumexp += e;
            slot->sumu += e * u;
        }
    }
}

/* Full summaries of sequences list[0..m-1] (in increasing order, their
 * normalised rows in xn at sh_xi) into a new record. */
static void produce_full(eevp_ctx *ctx, const int32_t *list, int32_t m, int32_t round,
                         void *record)
{
    const eevp_head *h = ctx->head;
    const int64_t d = h->d, V = h->V;
    const int32_t kset = full_kset(ctx);
    const int32_t nt = ctx->sh.ktop < V ? ctx->sh.ktop : (int32_t)V;
    eevpi_rec_info info;
    int32_t i, j;
    for (i = 0; i < m; i++) {
        /* Pack the rows: a row moves down onto one already consumed. */
        const int32_t src = ctx->sh_xi[list[i]];
        if (src != i)
            memmove(ctx->xn + (int64_t)i * d, ctx->xn + (int64_t)src * d,
                    (size_t)d * sizeof(float));
        ctx->sh_xi[list[i]] = i;
    }
    eevpi_head_project_pool(h, ctx->pool, m, ctx->xn, ctx->logits, V,
                            (ctx->o.flags & EEVP_CTX_BATCH_INVARIANT) != 0);
    eevpi_step_count_projection(ctx, (int64_t)m * V, h->wtype == EEVP_WEIGHT_F32 ? 4 : 2);
    for (i = 0; i < m; i++)
        ctx->sh_part[list[i]] = 1;
    start_record(ctx, record, EEVPI_REC_FULL, round, kset, &info);
    for (i = 0; i < m; i++) {
        const int32_t s = list[i];
        const eevpi_seq *q = &ctx->seq[s];
        const float *z = ctx->logits + (int64_t)i * V;
        eevpi_pair *top = ctx->sh_pairs;
        float *zs = ctx->kmax ? ctx->sh_setz + (int64_t)s * ctx->kmax : NULL;
        const int32_t *own = ctx->kmax ? ctx->sh_own + (int64_t)s * ctx->kmax : NULL;
        int32_t n_set = 0;
        eevpi_slot slot;
        shard_sums(ctx, z, &slot);
        if (!slot.nonfinite) {
            /* s's candidate buffers are free until its decision. */
            int32_t *ids = ctx->sh_topi + (int64_t)s * ctx->sh.ktop;
            float *val = ctx->sh_topz + (int64_t)s * ctx->sh.ktop;
            eevpi_topk(h->kern, z, V, nt, h->offset, ids, val, ctx->pairs);
            for (j = 0; j < nt; j++) {
                top[j].v = val[j];
                top[j].i = ids[j];
            }
            if (kset > 0 && q->has_set) {
                for (j = 0; j < q->own_n; j++)
                    zs[j] = z[q->set_ids[own[j]] - h->offset];
                n_set = q->own_n;
            }
        }
        eevpi_rec_put_full(record, &info, s, ctx->sh.index, top, nt, &slot, own, zs, n_set);
    }
}

/* The logits of the set members this shard owns, for list[0..m-1] (their
 * normalised rows in xn rows 0..m-1), into a new set record. */
static void produce_set(eevp_ctx *ctx, const int32_t *list, int32_t m, void *record)
{
    const eevp_head *h = ctx->head;
    eevpi_rec_info info;
    int32_t i;
    for (i = 0; i < m; i++)
        ctx->sh_part[list[i]] = 1;
    start_record(ctx, record, EEVPI_REC_SET, 0, ctx->kmax, &info);
    for (i = 0; i < m; i++) {
        const eevpi_seq *q = &ctx->seq[list[i]];
        float *z = ctx->logits; /* own_n <= V floats of scratch */
        if (q->own_n > 0)
            eevpi_head_project_rows(h, q->own_n, q->set_rows, h->d, q->set_bias,
                                    ctx->xn + (int64_t)i * h->d, z);
        eevpi_step_count_projection(ctx, q->own_n, 4);
        eevpi_rec_put_set(record, &info, list[i], ctx->sh_own + (int64_t)list[i] * ctx->kmax,
                          z, q->own_n);
    }
}

/* ---- the layer ---- */

static int full_layer(const eevp_ctx *ctx, int32_t layer, int any_set)
{
    const int last = layer == ctx->o.n_layers - 1;
    return !any_set || layer == ctx->p || eevpi_ctx_reprunes(ctx, layer) ||
           (last && ctx->o.final_policy == EEVP_FINAL_FULL);
}

EEVP_API int eevp_shard_layer(eevp_ctx *ctx, int32_t layer, const float *hidden, int64_t ld,
                              int32_t n_rows, const int32_t *row_seq, void *record,
                              int64_t capacity, int64_t *size)
{
    const eevp_head *h;
    int32_t s, m = 0, need = 0, any_set = 0, i;
    int first = EEVP_OK;
    int rc = eevpi_ctx_enter(ctx);
    if (size)
        *size = 0;
    if (rc != EEVP_OK)
        return rc;
    if (!is_shard(ctx))
        return eevpi_ctx_fail(ctx, EEVP_EINVAL, "not a shard context (eevp_ctx_create_shard)");
    if (ctx->sh_kind)
        return eevpi_ctx_fail(ctx, EEVP_ESTATE, "an exchange is pending: hand its merged "
                              "record to eevp_shard_absorb first");
    if (!record || !size)
        return eevpi_ctx_fail(ctx, EEVP_EINVAL, "record and size are required");
    if (capacity < capacity_of(ctx))
        return eevpi_ctx_fail(ctx, EEVP_ERANGE, "capacity %lld is below "
                              "eevp_shard_record_capacity (%lld)", (long long)capacity,
                              (long long)capacity_of(ctx));
    if ((rc = eevpi_step_layer_args(ctx, layer, hidden, ld, n_rows, row_seq, &need)) != EEVP_OK)
        return rc;
    if (layer != need)
        return EEVP_OK; /* not required: ignored */
    h = ctx->head;
    /* Normalise and catch NaN/Inf; keep the raw rows only where a criterion
     * reads them after this call. */
    for (s = 0; s < ctx->n_seq; s++) {
        const float *x;
        ctx->sh_part[s] = 0;
        if (!eevpi_step_running(&ctx->seq[s]))
            continue;
        x = hidden + (int64_t)ctx->row_of_seq[s] * ld;
        if (eevpi_head_norm(h, x, ctx->xn + (int64_t)m * h->d) != EEVP_OK) {
            eevpi_step_fail_seq(ctx, s, layer, EEVP_ENONFINITE, &first);
            continue;
        }
        if (keeps_rows(ctx)) {
            memcpy(ctx->sh_h + (int64_t)s * h->d, x, (size_t)h->d * sizeof(float));
            x = ctx->sh_h + (int64_t)s * h->d;
        }
        ctx->hrow[s] = x;
        ctx->sh_xi[s] = m;
        any_set |= ctx->seq[s].has_set;
        ctx->list[m++] = s;
    }
    if (m == 0)
        return first;
    ctx->sh_hash = hidden_hash(ctx, ctx->list, m);
    if (ctx->needs & EEVP_NEEDS_LOGITS) {
        if (full_layer(ctx, layer, any_set))
            produce_full(ctx, ctx->list, m, 0, record);
        else
            produce_set(ctx, ctx->list, m, record);
        *size = ctx->sh_size;
        return first;
    }
    /* Criteria without logits decide here, the same on every rank; the
     * sequences that exit (all, at the last layer) need the full argmax. */
    {
        const int last = layer == ctx->o.n_layers - 1;
        int32_t n_out = 0;
        for (i = 0; i < m; i++) {
            const int32_t t = ctx->list[i];
            const float *x = ctx->hrow[t];
            eevpi_check c;
            rc = eevpi_step_check_hidden(ctx, t, layer, x, &c);
            if (rc != EEVP_OK) {
                eevpi_step_fail_seq(ctx, t, layer, rc, &first);
                continue;
            }
            eevpi_step_remember_hidden(ctx, t, x);
            if (last || c.exit) {
                ctx->sh_conf[t] = c.conf;
                ctx->list[n_out++] = t;
            }
        }
        if (n_out > 0) {
            produce_full(ctx, ctx->list, n_out, 0, record);
            *size = ctx->sh_size;
        }
    }
    return first;
}

/* ---- decisions ---- */

static int cmp_i32(const void *a, const void *b)
{
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* The merged candidates of sequence s become its pruned set (the best k):
 * ids in the order, this shard's members gathered. */
static void build_set(eevp_ctx *ctx, int32_t s, const eevpi_pair *top)
{
    const eevp_head *h = ctx->head;
    eevpi_seq *q = &ctx->seq[s];
    int32_t *ids = ctx->set + (int64_t)s * ctx->kmax, *own = ctx->sh_own + (int64_t)s * ctx->kmax;
    float *rows = ctx->rows + (int64_t)s * ctx->kmax * h->d;
    float *bias = ctx->set_bias ? ctx->set_bias + (int64_t)s * ctx->kmax : NULL;
    const int32_t n = ctx->k;
    int32_t j, n_own = 0;
    if (q->has_set) {
        /* Re-pruning: did the set change? */
        int32_t same = 0, old_n = q->set_n;
        memcpy(ctx->sh_ids, ids, (size_t)old_n * sizeof(int32_t));
        qsort(ctx->sh_ids, (size_t)old_n, sizeof(int32_t), cmp_i32);
        for (j = 0; j < n; j++)
            same += eevpi_contains(ctx->sh_ids, old_n, top[j].i);
        ctx->pending.reprunes++;
        ctx->pending.reprune_changed += !(same == n && n == old_n);
    }
    for (j = 0; j < n; j++) {
        ids[j] = top[j].i;
        if (top[j].i >= h->offset && top[j].i - h->offset < h->V) {
            own[n_own] = j;
            ctx->sh_ids[n_own++] = top[j].i;
        }
    }
    if (n_own > 0)
        eevpi_head_gather(h, ctx->sh_ids, n_own, rows, h->d, bias);
    q->set_ids = ids;
    q->set_n = n;
    q->set_rows = rows;
    q->set_bias = bias;
    q->own_n = n_own;
    q->has_set = 1;
    ctx->pending.bytes += (h->wtype == EEVP_WEIGHT_F32 ? 4 : 2) * (int64_t)n_own * h->d;
    ctx->pending.pruned_sets++;
    ctx->pending.set_size_sum += n;
    ctx->size_hist_pending[n]++;
}

/* The criterion at a full-vocabulary layer, from the merged summary: the
 * top entries give the token and the top-2, the shards' sums (combined
 * here, in shard order) the softmax's normaliser and entropy. */
static int check_summary(eevp_ctx *ctx, int32_t s, int32_t layer, const float *x,
                         const float *topz, const int32_t *topi, int32_t n_top,
                         const eevpi_slot *slots, const float *setz, eevpi_check *c)
{
    eevpi_seq *q = &ctx->seq[s];
    eevpi_dist d;
    double acc = 0.0;
    int32_t i;
    if (ctx->criterion == EEVP_CRITERION_STABILITY ||
        (ctx->criterion == EEVP_CRITERION_JS && !q->has_set))
        /* The top-1 is all these read (JS: the pruning layer's c = 0). */
        return eevpi_step_check_logits(ctx, s, layer, x, topz, topi, n_top, 0, 0, c);
    eevpi_step_count_check(ctx);
    c->token = topi[0];
    if (ctx->criterion == EEVP_CRITERION_JS) {
        /* The set's logits at this layer, as the unsharded context
         * restricts its full logits to the set. */
        float *prev = ctx->prev_dist + (int64_t)s * ctx->dist_len;
        eevpi_dist_scan(setz, q->set_ids, 0, q->set_n, 1, &d);
        c->conf = q->has_prev_p ? eevpi_conf_js(prev, setz, &d) : 0.0;
        eevpi_softmax(setz, &d, prev);
        q->has_prev_p = 1;
        c->exit = eevpi_step_exits(c->conf, q->res.threshold);
        return EEVP_OK;
    }
    memset(&d, 0, sizeof d);
    d.n = (int32_t)ctx->sh.total_vocab;
    d.top1 = 0;
    d.top2 = n_top >= 2 ? 1 : -1;
    d.z1 = topz[0];
    d.z2 = n_top >= 2 ? topz[1] : -INFINITY;
    d.max = d.z1;
    for (i = 0; i < ctx->sh.n_shards; i++) {
        const eevpi_slot *t = &slots[i];
        if (t->n_finite == 0)
            continue;
        {
            const double u = (double)t->max - d.max, e = exp(u);
            d.n_finite += t->n_finite;
            d.sumexp += e * t->sumexp;
            acc += e * (t->sumu + u * t->sumexp);
        }
    }
    switch (ctx->criterion) {
    case EEVP_CRITERION_TOP2_GAP:
        c->conf = eevpi_conf_top2(&d);
        break;
    case EEVP_CRITERION_MAX_PROB:
        c->conf = eevpi_conf_maxprob(&d);
        break;
    default: /* EEVP_CRITERION_ENTROPY; custom ones never see a full layer */
        c->conf = eevpi_conf_entropy_acc(&d, acc);
        break;
    }
    c->exit = eevpi_step_exits(c->conf, q->res.threshold);
    return EEVP_OK;
}

static void set_candidates(eevp_ctx *ctx, int32_t s, const float *z, const int32_t *ids,
                           int32_t n)
{
    eevpi_seq *q = &ctx->seq[s];
    q->cand_z = z;
    q->cand_ids = ids;
    q->cand_n = n;
}

/* A full summary of sequence s: its candidates checked (unique ids, as many
 * as the vocabulary allows) and kept; 0 or a status for the sequence. */
static int read_full(eevp_ctx *ctx, const void *rec, const eevpi_rec_info *info, int32_t s,
                     int32_t *n_top, eevpi_slot *slots, float *setz)
{
    eevpi_pair *top = ctx->sh_pairs;
    float *tz = ctx->sh_topz + (int64_t)s * ctx->sh.ktop;
    int32_t *ti = ctx->sh_topi + (int64_t)s * ctx->sh.ktop;
    int32_t j, n_set;
    eevpi_rec_get_full(rec, info, s, top, n_top, slots, setz, &n_set);
    for (j = 0; j < ctx->sh.n_shards; j++)
        if (slots[j].nonfinite)
            return EEVP_ENONFINITE;
    if (*n_top != ctx->sh.ktop)
        return EEVP_ERECORD;
    for (j = 0; j < *n_top; j++) {
        tz[j] = top[j].v;
        ti[j] = top[j].i;
        ctx->sh_ids[j] = top[j].i;
    }
    qsort(ctx->sh_ids, (size_t)*n_top, sizeof(int32_t), cmp_i32);
    for (j = 1; j < *n_top; j++)
        if (ctx->sh_ids[j] == ctx->sh_ids[j - 1])
            return EEVP_ERECORD;
    if (info->kset > 0 && ctx->seq[s].has_set && n_set != ctx->seq[s].set_n)
        return EEVP_ERECORD;
    return EEVP_OK;
}

/* A full-vocabulary layer's decision for sequence s (as the unsharded
 * context's full layer). */
static void decide_full(eevp_ctx *ctx, int32_t s, int32_t layer, const void *rec,
                        const eevpi_rec_info *info, int *first)
{
    eevpi_seq *q = &ctx->seq[s];
    const int last = layer == ctx->o.n_layers - 1;
    const int checked = eevpi_ctx_is_checked(ctx, layer);
    const int builds = eevpi_ctx_pruning(ctx) && ctx->k > 0 &&
                       (layer == ctx->p || eevpi_ctx_reprunes(ctx, layer));
    const float *x = raw_row(ctx, s);
    const float *tz = ctx->sh_topz + (int64_t)s * ctx->sh.ktop;
    const int32_t *ti = ctx->sh_topi + (int64_t)s * ctx->sh.ktop;
    float *setz = ctx->kmax ? ctx->sh_setz + (int64_t)s * ctx->kmax : NULL;
    eevpi_slot *slots = (eevpi_slot *)ctx->sh_slots;
    int32_t n_top;
    eevpi_check c;
    int rc = read_full(ctx, rec, info, s, &n_top, slots, setz);
    if (rc != EEVP_OK) {
        eevpi_step_fail_seq(ctx, s, layer, rc, first);
        return;
    }
    if (!(ctx->needs & EEVP_NEEDS_LOGITS) || info->round == 1) {
        /* A hidden-state exit, or an exact-token exit: the full argmax. */
        if (info->round == 1) {
            q->res.token = ti[0];
            ctx->pending.exact_exits++;
            ctx->pending.exact_exit_changed += q->res.token != q->res.pruned_token;
        } else {
            eevpi_step_resolve(ctx, s, last ? EEVP_REASON_LAST_LAYER : EEVP_REASON_CONFIDENT,
                               ti[0], layer, 0, ctx->sh_conf[s], 1, n_top);
        }
        q->cand_full = 1;
        set_candidates(ctx, s, tz, ti, n_top);
        return;
    }
    if (checked) {
        rc = check_summary(ctx, s, layer, x, tz, ti, n_top, slots, setz, &c);
        if (rc != EEVP_OK) {
            eevpi_step_fail_seq(ctx, s, layer, rc, first);
            return;
        }
        eevpi_step_remember_hidden(ctx, s, x);
        if (last || c.exit) {
            if (last && q->has_set) {
                int32_t j, hit = 0;
                for (j = 0; j < q->set_n; j++)
                    hit |= q->set_ids[j] == c.token;
                ctx->pending.cov_total++;
                ctx->pending.cov_hits += hit;
            }
            eevpi_step_resolve(ctx, s, last ? EEVP_REASON_LAST_LAYER : EEVP_REASON_CONFIDENT,
                               c.token, layer, 0, c.conf, 1, n_top);
            set_candidates(ctx, s, tz, ti, n_top);
            return;
        }
    }
    if (builds) {
        build_set(ctx, s, ctx->sh_pairs);
        /* The new set is the first K merged entries: their logits, in set
         * order, are tz's first K. */
        if (ctx->criterion == EEVP_CRITERION_JS && checked)
            eevpi_step_remember_set_dist(ctx, s, tz);
    }
}

EEVP_API int eevp_shard_absorb(eevp_ctx *ctx, const void *merged, int64_t size, void *record,
                               int64_t capacity, int64_t *next_size)
{
    const int32_t layer = ctx ? ctx->last_layer : 0;
    eevpi_rec_info info;
    int32_t s, why, n_exact = 0;
    int first = EEVP_OK;
    int rc = eevpi_ctx_enter(ctx);
    if (next_size)
        *next_size = 0;
    if (rc != EEVP_OK)
        return rc;
    if (!is_shard(ctx))
        return eevpi_ctx_fail(ctx, EEVP_EINVAL, "not a shard context (eevp_ctx_create_shard)");
    if (!ctx->sh_kind)
        return eevpi_ctx_fail(ctx, EEVP_ESTATE, "no exchange pending (eevp_shard_layer)");
    if (!merged || !record || !next_size)
        return eevpi_ctx_fail(ctx, EEVP_EINVAL, "merged, record and next_size are required");
    if (size != ctx->sh_size)
        return eevpi_ctx_fail(ctx, EEVP_ERANGE, "size %lld: this exchange's records are %lld "
                              "bytes", (long long)size, (long long)ctx->sh_size);
    if (capacity < capacity_of(ctx))
        return eevpi_ctx_fail(ctx, EEVP_ERANGE, "capacity %lld is below "
                              "eevp_shard_record_capacity (%lld)", (long long)capacity,
                              (long long)capacity_of(ctx));
    why = eevpi_rec_check(merged, size, &info);
    if (!why && info.kind == EEVPI_REC_ERROR)
        why = info.why;
    if (!why && (info.kind != ctx->sh_kind || info.n_seq != ctx->n_seq ||
                 info.kset != ctx->sh_setsec ||
                 info.ktop != (info.kind == EEVPI_REC_FULL ? ctx->sh.ktop : 0) ||
                 info.n_shards != ctx->sh.n_shards))
        why = EEVPI_WHY_SHAPE;
    if (!why && (info.layer != layer || info.round != ctx->sh_round ||
                 info.step != ctx->sh_step || info.config != config_hash(ctx)))
        why = EEVPI_WHY_STEP;
    if (!why && info.hash != ctx->sh_hash)
        why = EEVPI_WHY_HIDDEN;
    for (s = 0; !why && s < ctx->n_seq; s++)
        if (eevpi_rec_takes_part(merged, &info, s) != ctx->sh_part[s])
            why = EEVPI_WHY_SEQS;
    if (!why) {
        /* Every shard, tiling [0, total_vocab) in index order. */
        int64_t r0[EEVP_MAX_SHARDS], r1[EEVP_MAX_SHARDS], end = 0;
        int32_t i;
        eevpi_rec_ranges(merged, &info, r0, r1);
        for (i = 0; i < info.n_shards && !why; i++) {
            if (r1[i] <= r0[i] || r0[i] != end)
                why = -1;
            end = r1[i];
        }
        if (!why && end != ctx->sh.total_vocab)
            why = -1;
    }
    ctx->sh_kind = 0;
    ctx->pending.shard_received += size;
    if (why) {
        for (s = 0; s < ctx->n_seq; s++)
            if (ctx->sh_part[s])
                eevpi_step_fail_seq(ctx, s, layer, EEVP_ERECORD, &first);
        return eevpi_ctx_fail(ctx, EEVP_ERECORD, "layer %d: %s", (int)layer,
                              why < 0 ? "a shard is missing, or the shards do not tile the "
                                        "vocabulary"
                                      : eevpi_rec_why(why));
    }
    for (s = 0; s < ctx->n_seq; s++) {
        eevpi_seq *q = &ctx->seq[s];
        eevpi_check c;
        float *z;
        if (!ctx->sh_part[s])
            continue;
        if (info.kind == EEVPI_REC_FULL) {
            decide_full(ctx, s, layer, merged, &info, &first);
            continue;
        }
        /* A pruned layer: the set's K logits, as the unsharded context
         * computes them, through the same check. */
        z = ctx->sh_setz + (int64_t)s * ctx->kmax;
        if (eevpi_rec_get_set(merged, &info, s, z) != q->set_n) {
            eevpi_step_fail_seq(ctx, s, layer, EEVP_ERECORD, &first);
            continue;
        }
        rc = eevpi_step_check_logits(ctx, s, layer, raw_row(ctx, s), z, q->set_ids, q->set_n,
                                     1, 0, &c);
        if (rc != EEVP_OK) {
            eevpi_step_fail_seq(ctx, s, layer, rc, &first);
            continue;
        }
        eevpi_step_remember_hidden(ctx, s, raw_row(ctx, s));
        if (layer == ctx->o.n_layers - 1 || c.exit) {
            eevpi_step_resolve(ctx, s,
                               c.exit && layer < ctx->o.n_layers - 1 ? EEVP_REASON_CONFIDENT
                                                                     : EEVP_REASON_LAST_LAYER,
                               c.token, layer, 1, c.conf, 0, q->set_n);
            set_candidates(ctx, s, z, q->set_ids, q->set_n);
            if ((ctx->o.flags & EEVP_CTX_EXACT_EXIT) && layer < ctx->o.n_layers - 1)
                ctx->list[n_exact++] = s;
        }
    }
    for (s = 0; s < ctx->n_seq; s++)
        ctx->sh_part[s] = 0;
    if (n_exact > 0) {
        /* Exact-token exits: a second exchange, the full argmax. */
        produce_full(ctx, ctx->list, n_exact, 1, record);
        *next_size = ctx->sh_size;
    }
    return first;
}
