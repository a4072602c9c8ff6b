/* SPDX-License-Identifier: MIT */
/* spec.c - lossless early exit: rounds of drafted tokens verified by the
 * full head (self-speculative decoding).  Beside step.c, on the same floor:
 * it reads a drafting context only through the public step API and
 * projects through the head's kernels; nothing below uses it.
 *
 * Greedy: the longest prefix of drafts equal to the full head's argmax
 * (ties to the lowest id, the library's order), then that argmax.
 * Sampling (speculative sampling): draft x drawn from q is accepted with
 * probability min(1, p(x) / q(x)); on rejection the token is drawn from the
 * normalised max(p - q, 0) (from p when that has no mass left through
 * rounding); after n accepted drafts the bonus is drawn from p of row n.
 * Each emitted token is then distributed exactly as p, whatever q was, as
 * long as q is the distribution the draft was drawn from: the record keeps
 * q over the draft's candidate set (zero outside), or a point mass for a
 * greedy draft. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

/* The options struct as 1.2 first shipped it (its size is the minimum). */
#define SPEC_OPTIONS_V1 sizeof(eevp_spec_options)
#define SPEC_RESULT_V1 sizeof(eevp_spec_result)
#define SPEC_STATS_V1 sizeof(eevp_spec_stats)
/* Rows per projection: W read once for them (fixed-order kernel). */
#define SPEC_CHUNK 8

typedef struct spec_slot {
    int32_t active;   /* a round is open */
    int32_t n;        /* drafts held */
    int32_t position; /* of t_0 */
    uint64_t key;
} spec_slot;

/* A value and its index, for ordering by (value descending, index
 * ascending). */
typedef struct zid {
    float z;
    int32_t id;
} zid;

typedef struct spec_draft {
    int32_t token;
    int32_t layer;
    int32_t n_set;    /* 0: point mass on token */
} spec_draft;

struct eevp_spec {
    eevpi_mem mem;
    const eevp_head *head;
    eevp_spec_options o;
    void *block;
    int64_t bytes;
    spec_slot *slot;        /* max_batch */
    spec_draft *draft;      /* max_batch x max_draft */
    int32_t *set_ids;       /* max_batch x max_draft x max_set: q's support */
    double *set_q;          /* ... and q there */
    float *cand;            /* max_set: candidate logits of a draft */
    int32_t *cand_ids;      /* max_set */
    double *cand_p;         /* max_set */
    float *xn;              /* max_batch x (max_draft + 1) x d normalised rows */
    float *z;               /* SPEC_CHUNK x V logits */
    double *p;              /* V: the full head's distribution of one row */
    double *qd;             /* V: q spread out over the vocabulary (zeros elsewhere) */
    zid *order;             /* max(V, max_set): ranking scratch for top_k / top_p */
    uint8_t *bad;           /* max_batch: slot flagged in the current call */
    eevp_spec_result *res;  /* max_batch: a verification's outcomes before they are written */
    int64_t *layer_drafted, *layer_accepted; /* n_layers */
    eevp_spec_stats st;
    char msg[EEVPI_MSG_SIZE];
};

/* ---- random numbers: a counter-based generator ---- */

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Uniform in [0, 1) from (seed, key, position, use): the same for a sequence
 * whatever the batch or the order of calls.  Positions are unsigned: a round
 * may start at INT32_MAX and its drafts' positions wrap (no overflow). */
static double spec_uniform(const eevp_spec *sp, uint64_t key, uint32_t position, uint32_t use)
{
    uint64_t x = mix64(sp->o.seed ^ mix64(key ^ mix64(((uint64_t)position << 8) | use)));
    return (double)(x >> 11) * (1.0 / 9007199254740992.0);
}

enum { USE_DRAFT = 1, USE_ACCEPT = 2, USE_RESIDUAL = 3, USE_BONUS = 4 };

/* ---- truncation and distributions ---- */

static int cmp_zid(const void *a, const void *b)
{
    const zid *x = (const zid *)a, *y = (const zid *)b;
    if (x->z != y->z)
        return x->z > y->z ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* p[i] = softmax(z / T) over n values, then the top_k / top_p truncation,
 * renormalised.  rank[] (n entries, scratch) receives the indices in the
 * library's order (value descending, index ascending) when truncating; z is
 * finite or -inf (a masked token: probability 0).  Returns 0, or -1 when no
 * value is finite. */
static int distribution(const eevp_spec *sp, const float *z, int64_t n, double *p, zid *rank)
{
    const double T = (double)sp->o.temperature;
    double mx = -INFINITY, sum = 0.0;
    int64_t i;
    for (i = 0; i < n; i++)
        if ((double)z[i] > mx)
            mx = (double)z[i];
    if (!(mx > -INFINITY))
        return -1;
    for (i = 0; i < n; i++) {
        p[i] = z[i] > -INFINITY ? exp(((double)z[i] - mx) / T) : 0.0;
        sum += p[i];
    }
    for (i = 0; i < n; i++)
        p[i] /= sum;
    if (sp->o.top_k > 0 || sp->o.top_p < 1.0f) {
        int64_t keep = n, j;
        double mass = 0.0;
        for (i = 0; i < n; i++) {
            rank[i].z = z[i];
            rank[i].id = (int32_t)i;
        }
        qsort(rank, (size_t)n, sizeof *rank, cmp_zid);
        if (sp->o.top_k > 0 && sp->o.top_k < keep)
            keep = sp->o.top_k;
        if (sp->o.top_p < 1.0f) {
            for (j = 0; j < keep; j++) {
                mass += p[rank[j].id];
                if (mass >= (double)sp->o.top_p) {
                    keep = j + 1;
                    break;
                }
            }
        }
        sum = 0.0;
        for (j = keep; j < n; j++)
            p[rank[j].id] = 0.0;
        for (j = 0; j < keep; j++)
            sum += p[rank[j].id];
        for (j = 0; j < keep; j++)
            p[rank[j].id] /= sum;
    }
    return 0;
}

/* The index drawn from n weights w (summing to about total) by u in [0, 1):
 * the first index whose running sum exceeds u * total; the last positive
 * one when rounding leaves u * total unreached. */
static int64_t draw(const double *w, int64_t n, double total, double u)
{
    double t = u * total, acc = 0.0;
    int64_t i, last = -1;
    for (i = 0; i < n; i++) {
        if (w[i] <= 0.0)
            continue;
        acc += w[i];
        last = i;
        if (acc > t)
            return i;
    }
    return last;
}

/* ---- creation ---- */

static int64_t plan(eevp_spec *sp, eevpi_arena *a)
{
    const int64_t B = sp->o.max_batch, D = sp->o.max_draft, S = sp->o.max_set;
    const int64_t V = sp->head->V, d = sp->head->d;
    const int64_t sets = sp->o.temperature > 0.0f ? B * D * S : 0;
    const int64_t need_p = sp->o.temperature > 0.0f;
    const int64_t rank_n = need_p && (sp->o.top_k > 0 || sp->o.top_p < 1.0f) ? (V > S ? V : S) : 0;
    sp->slot = (spec_slot *)eevpi_arena_take(a, B, sizeof(spec_slot));
    sp->draft = (spec_draft *)eevpi_arena_take(a, B * D, sizeof(spec_draft));
    sp->set_ids = (int32_t *)eevpi_arena_take(a, sets, sizeof(int32_t));
    sp->set_q = (double *)eevpi_arena_take(a, sets, sizeof(double));
    sp->cand = (float *)eevpi_arena_take(a, need_p ? S : 0, sizeof(float));
    sp->cand_ids = (int32_t *)eevpi_arena_take(a, need_p ? S : 0, sizeof(int32_t));
    sp->cand_p = (double *)eevpi_arena_take(a, need_p ? S : 0, sizeof(double));
    sp->xn = (float *)eevpi_arena_take(a, B * (D + 1) * d, sizeof(float));
    sp->z = (float *)eevpi_arena_take(a, SPEC_CHUNK * V, sizeof(float));
    sp->p = (double *)eevpi_arena_take(a, need_p ? V : 0, sizeof(double));
    sp->qd = (double *)eevpi_arena_take(a, need_p ? V : 0, sizeof(double));
    sp->order = (zid *)eevpi_arena_take(a, rank_n, sizeof(zid));
    sp->bad = (uint8_t *)eevpi_arena_take(a, B, 1);
    sp->res = (eevp_spec_result *)eevpi_arena_take(a, B, sizeof(eevp_spec_result));
    sp->layer_drafted = (int64_t *)eevpi_arena_take(a, sp->o.n_layers, sizeof(int64_t));
    sp->layer_accepted = (int64_t *)eevpi_arena_take(a, sp->o.n_layers, sizeof(int64_t));
    return a->overflow ? -1 : a->used;
}

EEVP_API int eevp_spec_options_init(eevp_spec_options *opts)
{
    const eevp_spec_options d = EEVP_SPEC_OPTIONS_INIT;
    if (!opts)
        return EEVP_EINVAL;
    *opts = d;
    return EEVP_OK;
}

static int check_options(const eevp_spec_options *o, const eevp_head *h, char *msg,
                         size_t msg_size)
{
    if (o->max_batch < 1 || o->max_batch > EEVP_MAX_BATCH) {
        eevpi_msg(msg, msg_size, "max_batch %d outside 1..%d", (int)o->max_batch,
                  EEVP_MAX_BATCH);
        return EEVP_ERANGE;
    }
    if (o->max_draft < 1 || o->max_draft > EEVP_MAX_DRAFT) {
        eevpi_msg(msg, msg_size, "max_draft %d outside 1..%d", (int)o->max_draft,
                  EEVP_MAX_DRAFT);
        return EEVP_ERANGE;
    }
    if (o->max_set < 1 || (int64_t)o->max_set > h->V) {
        eevpi_msg(msg, msg_size, "max_set %d outside 1..V (%lld)", (int)o->max_set,
                  (long long)h->V);
        return EEVP_ERANGE;
    }
    if (o->n_layers < 0 || o->n_layers > EEVP_MAX_LAYERS) {
        eevpi_msg(msg, msg_size, "n_layers %d outside 0..%d", (int)o->n_layers,
                  EEVP_MAX_LAYERS);
        return EEVP_ERANGE;
    }
    if (!(o->temperature >= 0.0f) || isinf(o->temperature)) {
        eevpi_msg(msg, msg_size, "temperature must be 0 (greedy) or finite and > 0");
        return EEVP_ERANGE;
    }
    if (o->top_k < 0 || (int64_t)o->top_k > h->V) {
        eevpi_msg(msg, msg_size, "top_k %d outside 0..V", (int)o->top_k);
        return EEVP_ERANGE;
    }
    if (!(o->top_p > 0.0f && o->top_p <= 1.0f)) {
        eevpi_msg(msg, msg_size, "top_p must lie in (0, 1]");
        return EEVP_ERANGE;
    }
    if (o->temperature == 0.0f && (o->top_k > 0 || o->top_p < 1.0f)) {
        eevpi_msg(msg, msg_size, "top_k / top_p need sampling (temperature > 0)");
        return EEVP_EINVAL;
    }
    return EEVP_OK;
}

EEVP_API int eevp_spec_create(eevp_spec **out, const eevp_head *head,
                              const eevp_spec_options *opts, char *msg, size_t msg_size)
{
    eevp_spec_options o = EEVP_SPEC_OPTIONS_INIT;
    eevpi_mem mem;
    eevp_spec *sp;
    eevpi_arena a = {NULL, 0, 0};
    int64_t arena;
    int rc;

    eevpi_msg(msg, msg_size, "%s", "");
    if (!out || !head || !opts) {
        eevpi_msg(msg, msg_size, "out, head and opts must not be NULL");
        if (out)
            *out = NULL;
        return EEVP_EINVAL;
    }
    *out = NULL;
    if ((rc = eevpi_read_struct(&o, sizeof o, opts, SPEC_OPTIONS_V1)) != EEVP_OK) {
        eevpi_msg(msg, msg_size, "eevp_spec_options: bad struct_size %u or unknown tail",
                  (unsigned)opts->struct_size);
        return rc;
    }
    if ((rc = check_options(&o, head, msg, msg_size)) != EEVP_OK)
        return rc;
    if ((rc = eevpi_mem_init(&mem, o.allocator, msg, msg_size)) != EEVP_OK)
        return rc;
    o.allocator = NULL;
    sp = (eevp_spec *)eevpi_alloc(&mem, sizeof *sp);
    if (!sp) {
        eevpi_msg(msg, msg_size, "out of memory for the verifier");
        return EEVP_ENOMEM;
    }
    memset(sp, 0, sizeof *sp);
    sp->mem = mem;
    sp->head = head;
    sp->o = o;
    if ((arena = plan(sp, &a)) < 0) {
        eevpi_free(&mem, sp);
        eevpi_msg(msg, msg_size, "verifier size overflows");
        return EEVP_EOVERFLOW;
    }
    sp->block = eevpi_alloc(&mem, (size_t)arena + EEVPI_ALIGN);
    if (!sp->block) {
        eevpi_free(&mem, sp);
        eevpi_msg(msg, msg_size, "out of memory for the verifier's buffers (%lld bytes)",
                  (long long)arena);
        return EEVP_ENOMEM;
    }
    sp->bytes = arena + EEVPI_ALIGN + (int64_t)sizeof *sp;
    a.base = (unsigned char *)sp->block +
             (EEVPI_ALIGN - (uintptr_t)sp->block % EEVPI_ALIGN) % EEVPI_ALIGN;
    a.used = 0;
    plan(sp, &a);
    memset(sp->slot, 0, (size_t)o.max_batch * sizeof *sp->slot);
    if (o.n_layers > 0) {
        memset(sp->layer_drafted, 0, (size_t)o.n_layers * sizeof(int64_t));
        memset(sp->layer_accepted, 0, (size_t)o.n_layers * sizeof(int64_t));
    }
    sp->st.struct_size = sizeof sp->st;
    sp->st.n_layers = o.n_layers;
    *out = sp;
    return EEVP_OK;
}

EEVP_API void eevp_spec_free(eevp_spec *sp)
{
    eevpi_mem mem;
    if (!sp)
        return;
    mem = sp->mem;
    eevpi_free(&mem, sp->block);
    eevpi_free(&mem, sp);
}

EEVP_API const char *eevp_spec_errmsg(const eevp_spec *sp)
{
    return sp ? sp->msg : "spec is NULL";
}

EEVP_API int64_t eevp_spec_memory(const eevp_spec *sp)
{
    return sp ? sp->bytes : EEVP_EINVAL;
}

/* ---- rounds and drafts ---- */

static int fail(eevp_spec *sp, int rc, const char *what)
{
    eevpi_msg(sp->msg, sizeof sp->msg, "%s", what);
    return rc;
}

static int open_slot(eevp_spec *sp, int32_t seq, spec_slot **out)
{
    if (seq < 0 || seq >= sp->o.max_batch) {
        eevpi_msg(sp->msg, sizeof sp->msg, "slot %d outside 0..%d", (int)seq,
                  (int)sp->o.max_batch - 1);
        return EEVP_ERANGE;
    }
    if (!sp->slot[seq].active) {
        eevpi_msg(sp->msg, sizeof sp->msg, "slot %d has no round (eevp_spec_round)", (int)seq);
        return EEVP_ESTATE;
    }
    if (sp->slot[seq].n >= sp->o.max_draft) {
        eevpi_msg(sp->msg, sizeof sp->msg, "slot %d: the round already holds max_draft = %d "
                  "drafts", (int)seq, (int)sp->o.max_draft);
        return EEVP_ERANGE;
    }
    *out = &sp->slot[seq];
    return EEVP_OK;
}

EEVP_API int eevp_spec_round(eevp_spec *sp, int32_t seq, uint64_t key, int32_t position)
{
    if (!sp)
        return EEVP_EINVAL;
    if (seq < 0 || seq >= sp->o.max_batch)
        return fail(sp, EEVP_ERANGE, "slot outside 0..max_batch-1");
    if (position < 0)
        return fail(sp, EEVP_ERANGE, "position must be >= 0");
    sp->slot[seq].active = 1;
    sp->slot[seq].n = 0;
    sp->slot[seq].position = position;
    sp->slot[seq].key = key;
    return EEVP_OK;
}

EEVP_API int32_t eevp_spec_n_drafts(const eevp_spec *sp, int32_t seq)
{
    if (!sp)
        return EEVP_EINVAL;
    if (seq < 0 || seq >= sp->o.max_batch)
        return EEVP_ERANGE;
    if (!sp->slot[seq].active)
        return EEVP_ESTATE;
    return sp->slot[seq].n;
}

static int in_head(const eevp_spec *sp, int32_t token)
{
    return token >= sp->head->offset && (int64_t)token - sp->head->offset < sp->head->V;
}

EEVP_API int eevp_spec_add_draft(eevp_spec *sp, int32_t seq, int32_t token, int32_t layer)
{
    spec_slot *s;
    spec_draft *dr;
    int rc;
    if (!sp)
        return EEVP_EINVAL;
    if ((rc = open_slot(sp, seq, &s)) != EEVP_OK)
        return rc;
    if (!in_head(sp, token))
        return fail(sp, EEVP_ERANGE, "draft token outside the head's ids");
    dr = &sp->draft[(int64_t)seq * sp->o.max_draft + s->n];
    dr->token = token;
    dr->layer = layer;
    dr->n_set = 0;
    s->n++;
    return EEVP_OK;
}

EEVP_API int eevp_spec_draft(eevp_spec *sp, int32_t seq, eevp_ctx *ctx, int32_t ctx_seq,
                             int32_t *token, int32_t *more)
{
    eevp_result r;
    spec_slot *s;
    spec_draft *dr;
    int rc;
    if (!sp || !ctx || !token)
        return EEVP_EINVAL;
    *token = -1;
    if (more)
        *more = 0;
    if ((rc = open_slot(sp, seq, &s)) != EEVP_OK)
        return rc;
    memset(&r, 0, sizeof r);
    r.struct_size = sizeof r;
    if ((rc = eevp_step_result(ctx, ctx_seq, &r)) != EEVP_OK)
        return fail(sp, rc, "eevp_step_result on the drafting context failed");
    if (r.reason == EEVP_REASON_RUNNING)
        return fail(sp, EEVP_ESTATE, "the drafting sequence has no result yet");
    if (r.reason == EEVP_REASON_ERROR)
        return fail(sp, r.status, "the drafting sequence failed");
    if (r.reason != EEVP_REASON_CONFIDENT) {
        /* The draft-depth limit: not a draft; the round ends here. */
        if (more)
            *more = 0;
        return EEVP_OK;
    }
    dr = &sp->draft[(int64_t)seq * sp->o.max_draft + s->n];
    if (sp->o.temperature == 0.0f) {
        if (!in_head(sp, r.token))
            return fail(sp, EEVP_ERANGE, "the drafting context's token is outside the head");
        dr->token = r.token;
        dr->n_set = 0;
    } else {
        const int64_t base = ((int64_t)seq * sp->o.max_draft + s->n) * sp->o.max_set;
        int32_t n = 0, i;
        int64_t pick;
        const int32_t size = r.pruned ? r.set_size : (int32_t)(sp->head->V < INT32_MAX
                                                                    ? sp->head->V
                                                                    : INT32_MAX);
        if (size > sp->o.max_set) {
            eevpi_msg(sp->msg, sizeof sp->msg, "the draft's candidate set (%d) exceeds max_set "
                      "(%d)", (int)size, (int)sp->o.max_set);
            return EEVP_ERANGE;
        }
        rc = eevp_step_candidates(ctx, ctx_seq, sp->o.max_set, sp->cand, sp->cand_ids, &n);
        if (rc != EEVP_OK || n < 1)
            return fail(sp, rc != EEVP_OK ? rc : EEVP_ESTATE,
                        "eevp_step_candidates on the drafting context failed");
        for (i = 0; i < n; i++)
            if (!in_head(sp, sp->cand_ids[i]))
                return fail(sp, EEVP_ERANGE, "a draft candidate is outside the head's ids");
        if (distribution(sp, sp->cand, n, sp->cand_p, sp->order) != 0)
            return fail(sp, EEVP_ENONFINITE, "the draft's candidates have no finite logit");
        pick = draw(sp->cand_p, n, 1.0, spec_uniform(sp, s->key,
                                                       (uint32_t)s->position + (uint32_t)s->n + 1u,
                                                       USE_DRAFT));
        for (i = 0; i < n; i++) {
            sp->set_ids[base + i] = sp->cand_ids[i];
            sp->set_q[base + i] = sp->cand_p[i];
        }
        dr->token = sp->cand_ids[pick];
        dr->n_set = n;
    }
    dr->layer = r.layer;
    s->n++;
    *token = dr->token;
    if (more)
        *more = s->n < sp->o.max_draft;
    return EEVP_OK;
}

/* ---- verification ---- */

/* Outcome of row i of a slot with logits z (V, local ids) and their scan
 * (eevpi_dist_scan: the top-1 in the library's order).  Returns 1 when the
 * round ends at this row (token set), 0 when the draft is accepted. */
static int judge_row(eevp_spec *sp, int32_t slot, int32_t i, const float *z,
                     const eevpi_dist *dist, eevp_spec_result *res)
{
    const eevp_head *h = sp->head;
    spec_slot *s = &sp->slot[slot];
    const int32_t off = (int32_t)h->offset;
    const int64_t V = h->V;
    const spec_draft *dr = i < s->n ? &sp->draft[(int64_t)slot * sp->o.max_draft + i] : NULL;
    const uint32_t pos = (uint32_t)s->position + (uint32_t)i; /* wraps, never overflows */
    int64_t v;

    if (sp->o.temperature == 0.0f) {
        if (dr && dr->token == dist->top1 + off)
            return 0;
        res->token = dist->top1 + off;
        return 1;
    }
    if (distribution(sp, z, V, sp->p, sp->order) != 0) {
        /* every token masked: the greedy rule's token (ties to the lowest
         * id, as a context resolves it) as a point mass */
        memset(sp->p, 0, (size_t)V * sizeof(double));
        sp->p[dist->top1] = 1.0;
    }
    if (dr == NULL) {
        res->token = (int32_t)draw(sp->p, V, 1.0,
                                   spec_uniform(sp, s->key, pos, USE_BONUS)) + off;
        return 1;
    }
    {
        const int64_t x = dr->token - off;
        const int64_t base = ((int64_t)slot * sp->o.max_draft + i) * sp->o.max_set;
        const double px = sp->p[x];
        double qx = 1.0, total = 0.0;
        int32_t j;
        if (dr->n_set > 0) {
            qx = 0.0;
            for (j = 0; j < dr->n_set; j++)
                if (sp->set_ids[base + j] == dr->token)
                    qx = sp->set_q[base + j];
        }
        /* accept with probability min(1, p(x) / q(x)); q(x) > 0 since x was
         * drawn from q.  The test-only mutation (tests/spec_dist.c must
         * catch it) accepts with probability p(x). */
#if defined(EEVPI_TEST_MUTATE_ACCEPT)
        qx = qx > 0.0 ? 1.0 : 0.0;
#endif
        if (qx > 0.0 && spec_uniform(sp, s->key, pos, USE_ACCEPT) * qx < px)
            return 0;
        /* the residual max(p - q, 0), normalised */
        memcpy(sp->qd, sp->p, (size_t)V * sizeof(double));
        if (dr->n_set > 0) {
            for (j = 0; j < dr->n_set; j++) {
                const int64_t y = sp->set_ids[base + j] - off;
                sp->qd[y] = sp->p[y] - sp->set_q[base + j];
            }
        } else {
            sp->qd[x] = sp->p[x] - 1.0;
        }
        for (v = 0; v < V; v++) {
            if (sp->qd[v] < 0.0)
                sp->qd[v] = 0.0;
            total += sp->qd[v];
        }
        if (!(total > 0.0)) {
            memcpy(sp->qd, sp->p, (size_t)V * sizeof(double));
            total = 1.0;
        }
        res->token = (int32_t)draw(sp->qd, V, total,
                                   spec_uniform(sp, s->key, pos, USE_RESIDUAL)) + off;
        return 1;
    }
}

EEVP_API int eevp_spec_verify(eevp_spec *sp, int32_t n_seq, const int32_t *seqs,
                              const float *hidden, int64_t ld_hidden,
                              eevp_spec_result *results)
{
    const eevp_head *h;
    int64_t total_rows = 0, r, d;
    uint32_t stride;
    int32_t j;
    int rc;

    if (!sp || !seqs || !hidden || !results)
        return EEVP_EINVAL;
    /* The caller's array is indexed with its own struct_size, so that a
     * caller built against another minor version walks it correctly. */
    stride = results[0].struct_size;
    if (stride < SPEC_RESULT_V1)
        return fail(sp, EEVP_ESTRUCT, "results[0].struct_size must be set");
    h = sp->head;
    d = h->d;
    if (n_seq < 1 || n_seq > sp->o.max_batch)
        return fail(sp, EEVP_ERANGE, "n_seq outside 1..max_batch");
    if (ld_hidden < d)
        return fail(sp, EEVP_ERANGE, "ld_hidden smaller than d");
    memset(sp->bad, 0, (size_t)sp->o.max_batch);
    for (j = 0; j < n_seq; j++) {
        const int32_t s = seqs[j];
        if (((const eevp_spec_result *)((const char *)results + (size_t)j * stride))
                ->struct_size != stride)
            return fail(sp, EEVP_ESTRUCT, "every results[].struct_size must be set, equal");
        if (s < 0 || s >= sp->o.max_batch)
            return fail(sp, EEVP_ERANGE, "a slot outside 0..max_batch-1");
        if (!sp->slot[s].active)
            return fail(sp, EEVP_ESTATE, "a slot without a round (eevp_spec_round)");
        if (sp->bad[s])
            return fail(sp, EEVP_EINVAL, "a slot listed twice");
        sp->bad[s] = 1;
        total_rows += sp->slot[s].n + 1;
    }
    /* Normalise every row; a slot with a non-finite row is set aside. */
    memset(sp->bad, 0, (size_t)sp->o.max_batch);
    for (j = 0, r = 0; j < n_seq; j++) {
        const spec_slot *s = &sp->slot[seqs[j]];
        int32_t i;
        for (i = 0; i <= s->n; i++, r++)
            if (eevpi_head_norm(h, hidden + r * ld_hidden, sp->xn + r * d) != 0) {
                sp->bad[seqs[j]] = 1;
                memset(sp->xn + r * d, 0, (size_t)d * sizeof(float));
            }
    }
    /* Rows through the full head, SPEC_CHUNK at a time (fixed-order kernel:
     * each row's bits independent of the chunk), judged in order; a slot
     * with a row of non-finite logits is set aside too. */
    {
        int32_t cur = 0, row_in = 0, done = 0;
        int64_t c0;
        for (j = 0; j < n_seq; j++) {
            memset(&sp->res[j], 0, sizeof sp->res[j]);
            sp->res[j].struct_size = sizeof sp->res[j];
            sp->res[j].status = EEVP_OK;
            sp->res[j].n_drafted = sp->slot[seqs[j]].n;
            sp->res[j].token = -1;
        }
        for (c0 = 0; c0 < total_rows; c0 += SPEC_CHUNK) {
            const int32_t m = (int32_t)(total_rows - c0 < SPEC_CHUNK ? total_rows - c0 : SPEC_CHUNK);
            int32_t k;
            eevpi_head_project(h, m, sp->xn + c0 * d, sp->z, h->V);
            for (k = 0; k < m; k++) {
                const int32_t s = seqs[cur];
                const float *zr = sp->z + (int64_t)k * h->V;
                eevpi_dist dist;
                /* NaN or +Inf logits (finite rows can overflow) fail the
                 * slot, as a context fails such a sequence; the same scan
                 * gives the greedy top-1. */
                if (!sp->bad[s] && eevpi_dist_scan(zr, NULL, 0, (int32_t)h->V, 0, &dist) != EEVP_OK)
                    sp->bad[s] = 1;
                if (!sp->bad[s] && !done) {
                    if (judge_row(sp, s, row_in, zr, &dist, &sp->res[cur]))
                        done = 1;
                    else
                        sp->res[cur].n_accepted++;
                }
                if (++row_in > sp->slot[s].n) {
                    cur++;
                    row_in = 0;
                    done = 0;
                }
            }
        }
    }
    rc = EEVP_OK;
    for (j = 0; j < n_seq; j++) {
        const int32_t s = seqs[j];
        spec_slot *sl = &sp->slot[s];
        eevp_spec_result res = sp->res[j];
        int32_t i;
        if (sp->bad[s]) {
            res.status = EEVP_ENONFINITE;
            res.n_accepted = 0;
            res.token = -1;
            sp->st.failed++;
        } else {
            sp->st.rounds++;
            sp->st.drafted += sl->n;
            sp->st.accepted += res.n_accepted;
            sp->st.emitted += res.n_accepted + 1;
            sp->st.verify_rows += sl->n + 1;
            for (i = 0; i < sl->n; i++) {
                const int32_t l = sp->draft[(int64_t)s * sp->o.max_draft + i].layer;
                if (l >= 0 && l < sp->o.n_layers) {
                    sp->layer_drafted[l]++;
                    if (i < res.n_accepted)
                        sp->layer_accepted[l]++;
                }
            }
            sl->active = 0;
            sl->n = 0;
        }
        if ((rc = eevpi_write_struct((char *)results + (size_t)j * stride, &res, sizeof res,
                                     SPEC_RESULT_V1)) != EEVP_OK)
            return rc;
    }
    return EEVP_OK;
}

/* ---- statistics ---- */

EEVP_API int eevp_spec_stats_get(const eevp_spec *sp, eevp_spec_stats *out)
{
    if (!sp || !out)
        return EEVP_EINVAL;
    return eevpi_write_struct(out, &sp->st, sizeof sp->st, SPEC_STATS_V1);
}

EEVP_API int eevp_spec_layer_stats(const eevp_spec *sp, int64_t *drafted, int64_t *accepted,
                                   int32_t n)
{
    int32_t m;
    if (!sp || n < 0)
        return EEVP_EINVAL;
    m = n < sp->o.n_layers ? n : sp->o.n_layers;
    if (drafted && m > 0)
        memcpy(drafted, sp->layer_drafted, (size_t)m * sizeof(int64_t));
    if (accepted && m > 0)
        memcpy(accepted, sp->layer_accepted, (size_t)m * sizeof(int64_t));
    return EEVP_OK;
}

EEVP_API int eevp_spec_stats_reset(eevp_spec *sp)
{
    if (!sp)
        return EEVP_EINVAL;
    memset(&sp->st, 0, sizeof sp->st);
    sp->st.struct_size = sizeof sp->st;
    sp->st.n_layers = sp->o.n_layers;
    if (sp->o.n_layers > 0) {
        memset(sp->layer_drafted, 0, (size_t)sp->o.n_layers * sizeof(int64_t));
        memset(sp->layer_accepted, 0, (size_t)sp->o.n_layers * sizeof(int64_t));
    }
    return EEVP_OK;
}
