/* SPDX-License-Identifier: MIT */
/*
 * check_policies.c - the candidate-set policies (issue 7) against an
 * independent double-precision reference.
 *
 * The simulation below re-implements, from the header's contract, what the
 * pruned set of a sequence is under every policy: the top-K of the pruning
 * layer's full logits (or the adaptive prefix holding a share of the FULL
 * softmax mass, clamped to [k_min, k]) united with the static list
 * (EEVP_STATIC_UNION) and the always-included ids, without duplicates, ids
 * outside the head's range dropped; EEVP_STATIC_ONLY: static u always,
 * fixed; re-pruning at reprune_layer and every reprune_every-th checked
 * layer after p (not the last): that layer is decided on the full
 * vocabulary, then the set is rebuilt from it; EEVP_CTX_EXACT_EXIT: a pruned
 * exit before the last layer emits the full argmax.  The library must agree
 * on reason, token, layer, pruned, pruned_token, set_size, confidence and
 * the candidate list of every sequence, and on the per-policy statistics and
 * the set-size histogram of every token the reference can call exactly.
 *
 * A decision the reference cannot call (confidence within rounding of
 * lambda, a top-1/top-2 near-tie, a near-tie at the K-th place, an adaptive
 * mass boundary within rounding) removes that sequence from the comparison
 * (and its token from the statistics comparison); each configuration
 * asserts that few were removed.
 */
#include <check.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eevp.h"
#include "ref.h"

Suite *make_policies_suite(void);

/* ------------------------------------------------------------------------ */
/* Configurations                                                           */
/* ------------------------------------------------------------------------ */

typedef struct pcfg {
    int V, d, L, f, i, p, k, n_seq;
    int crit;
    float thr;
    int final_policy;
    int offset, norm;
    const int32_t *always;
    int n_always;
    int static_mode;
    const int32_t *statics;
    int n_static;
    int rl, re;          /* reprune_layer, reprune_every */
    float mass;
    int kmin;
    uint32_t flags;
    int n_tokens;
} pcfg;

#define T2 EEVP_CRITERION_TOP2_GAP
#define MP EEVP_CRITERION_MAX_PROB
#define EN EEVP_CRITERION_ENTROPY
#define FF EEVP_FINAL_FULL
#define FP EEVP_FINAL_PRUNED
#define SN EEVP_STATIC_NONE
#define SU EEVP_STATIC_UNION
#define SO EEVP_STATIC_ONLY
#define BI EEVP_CTX_BATCH_INVARIANT
#define EX EEVP_CTX_EXACT_EXIT
#define NN EEVP_NORM_NONE
#define RMS EEVP_NORM_RMS
#define NL(a) (a), (int)(sizeof(a) / sizeof((a)[0]))

/* Lists for offset 0 (V = 300). */
static const int32_t al_a[] = {3, 77, 150};
/* Duplicates inside the list, and with al_a. */
static const int32_t st_a[] = {0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 5, 8, 77, 1, 0};
/* Static-only: ids with duplicates and two foreign ones. */
static const int32_t st_b[] = {10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140,
                               150, 160, 170, 180, 190, 200, 10, 20, -5, 100000};
/* For offset 500, V = 300: in range are 500 .. 799. */
static const int32_t al_off[] = {499, 500, 799, 800, 7, 600, 600, 2147483647, -1};
static const int32_t st_off[] = {501, 502, 503, 600, 650, 700, 750, 799, 800, 0, 502};
/* Nothing in range (offset 0, V = 300). */
static const int32_t none_in[] = {300, 301, 5000, -3};

/* V, d, L, f, i, p, k, n_seq, crit, thr, final, offset, norm, always, n_always,
 * static_mode, statics, n_static, rl, re, mass, kmin, flags, n_tokens */
static const pcfg pol_table[] = {
    /* 0: no policy: the plain method */
    {300, 16, 6, 1, 1, -1, 16, 8, T2, 0.8f, FF, 0, NN, NULL, 0, SN, NULL, 0, -1, 0, 0.0f, 1, 0u, 3},
    /* 1: always-included ids, p < f */
    {300, 16, 6, 1, 1, 0, 12, 8, T2, 0.8f, FF, 0, RMS, NL(al_a), SN, NULL, 0, -1, 0, 0.0f, 1, 0u, 3},
    /* 2: static union with duplicates (inside the list and with the
     * dynamic top-K), max prob, pruned final */
    {300, 16, 7, 2, 1, 1, 16, 8, MP, 0.7f, FP, 0, NN, NULL, 0, SU, NL(st_a), -1, 0, 0.0f, 1, 0u, 3},
    /* 3: static union + always with overlap, offset 500, foreign ids in both */
    {300, 16, 6, 1, 1, -1, 8, 8, T2, 0.8f, FF, 500, RMS, NL(al_off), SU, NL(st_off), -1, 0, 0.0f, 1, 0u, 3},
    /* 4: static only, p (0) < f (2): the pruning layer is not required */
    {300, 16, 7, 2, 1, 0, 16, 8, T2, 0.6f, FF, 0, NN, NL(al_a), SO, NL(st_b), -1, 0, 0.0f, 1, 0u, 3},
    /* 5: static only, p == f: the pruning layer is checked on the full head */
    {300, 16, 6, 1, 1, -1, 16, 8, MP, 0.6f, FF, 0, NN, NULL, 0, SO, NL(st_b), -1, 0, 0.0f, 1, 0u, 3},
    /* 6: static only, pruned final */
    {300, 16, 6, 1, 2, 0, 16, 6, EN, 0.5f, FP, 0, RMS, NL(al_a), SO, NL(st_b), -1, 0, 0.0f, 1, 0u, 2},
    /* 7: re-pruning at one layer */
    {300, 16, 8, 1, 1, -1, 12, 8, T2, 0.85f, FF, 0, NN, NULL, 0, SN, NULL, 0, 3, 0, 0.0f, 1, 0u, 3},
    /* 8: re-pruning every 2nd checked layer, p < f */
    {300, 16, 9, 1, 1, 0, 12, 8, T2, 0.85f, FF, 0, RMS, NULL, 0, SN, NULL, 0, -1, 2, 0.0f, 1, 0u, 3},
    /* 9: both, interval 2, with always ids and a static union */
    {300, 16, 10, 1, 2, 0, 10, 8, MP, 0.75f, FP, 0, NN, NL(al_a), SU, NL(st_a), 5, 3, 0.0f, 1, 0u, 3},
    /* 10: adaptive K, mass 0.9, k_min 2 */
    {300, 16, 6, 1, 1, -1, 24, 8, T2, 0.8f, FF, 0, NN, NULL, 0, SN, NULL, 0, -1, 0, 0.9f, 2, 0u, 3},
    /* 11: adaptive K with k_min = k: always k */
    {300, 16, 6, 1, 1, 0, 16, 8, T2, 0.8f, FF, 0, RMS, NULL, 0, SN, NULL, 0, -1, 0, 0.5f, 16, 0u, 3},
    /* 12: adaptive K, mass 0.3, k_min 1, with always ids and re-pruning */
    {300, 16, 8, 1, 1, -1, 20, 8, MP, 0.7f, FP, 0, NN, NL(al_a), SN, NULL, 0, 3, 0, 0.3f, 1, 0u, 3},
    /* 13: adaptive K, mass 1 (never reached: k) */
    {300, 16, 6, 1, 1, -1, 8, 4, T2, 0.8f, FF, 0, NN, NULL, 0, SN, NULL, 0, -1, 0, 1.0f, 3, 0u, 2},
    /* 14: exact-token exits, plain set */
    {300, 16, 6, 1, 1, 0, 8, 8, T2, 0.6f, FF, 0, NN, NULL, 0, SN, NULL, 0, -1, 0, 0.0f, 1, EX, 3},
    /* 15: everything at once, batch invariant */
    {300, 16, 9, 1, 1, 0, 10, 8, MP, 0.6f, FP, 500, RMS, NL(al_off), SU, NL(st_off), 4, 2, 0.8f, 2, EX | BI, 3},
    /* 16: k >= V: no pruning, the lists have nothing to join */
    {97, 16, 5, 0, 1, -1, 97, 6, T2, 0.8f, FF, 0, NN, NL(al_a), SU, NL(st_a), -1, 0, 0.0f, 1, EX, 2},
    /* 17: static only, nothing in range: no set at all */
    {300, 16, 5, 1, 1, 0, 16, 6, T2, 0.8f, FF, 0, NN, NL(none_in), SO, NL(none_in), -1, 0, 0.0f, 1, 0u, 2},
    /* 18: always ids all foreign: the plain method */
    {300, 16, 6, 1, 1, -1, 16, 6, T2, 0.8f, FP, 0, NN, NL(none_in), SU, NL(none_in), -1, 0, 0.0f, 1, 0u, 2},
    /* 19: single sequence, V = 500, d = 32, static union, re-pruning every 2nd */
    {500, 32, 6, 1, 1, -1, 16, 1, T2, 0.8f, FP, 0, RMS, NL(al_a), SU, NL(st_b), -1, 2, 0.0f, 1, EX, 6},
    /* 20: d = 8, V = 100, batch 2, adaptive with always and exact exits */
    {100, 8, 6, 2, 1, 0, 10, 2, T2, 0.3f, FF, 0, NN, NL(al_a), SN, NULL, 0, -1, 0, 0.6f, 2, EX, 8},
};

#define N_POL_CFG ((int)(sizeof pol_table / sizeof pol_table[0]))

/* ------------------------------------------------------------------------ */
/* Environment                                                              */
/* ------------------------------------------------------------------------ */

/* The reference outcome of one sequence at one token. */
typedef struct pres {
    int skip;
    int reason, token, layer, pruned, pruned_token, set_size;
    double conf, tol;
    int n;            /* candidates */
    int32_t *ids;     /* in the order */
    double *z, *ab;
} pres;

/* Expected statistics of one token (all sequences). */
typedef struct pexp {
    int64_t exited, last, pruned, sets, size_sum, reprunes, changed;
    int64_t always_em, static_em, exact, exact_changed;
    int64_t *hist;    /* V + 2 */
} pexp;

typedef struct penv {
    pcfg c;
    int V, d, L, p, K, static_only, kmax, n_shared;
    float *W;
    float *nw;
    ref_head rh;
    eevp_head *head;
    eevp_ctx *ctx;
    int *checked;
    float *hid;                     /* L x n_seq x d, packed */
    unsigned char *is_always, *is_static, *mem, *old;
    double *z, *ab, *cz, *cab, *xn;
    int32_t *perm, *cid, *set;
    int set_n;
    pres *r;
    pexp x;
    float *cl;                      /* candidate buffers, V */
    int32_t *ci;
    uint32_t rng;
    /* counters */
    int n_seen, n_skip, n_stat_tokens, n_tokens;
    int n_early, n_last, n_pruned_exit, n_reprunes, n_changed, n_exact_changed;
    int n_full_exit_late;
} penv;

#define HID(e, l, s) \
    ((e)->hid + ((size_t)(l) * (size_t)(e)->c.n_seq + (size_t)(s)) * (size_t)(e)->d)

static void *xcalloc(size_t n, size_t size)
{
    void *q = calloc(n ? n : 1, size ? size : 1);
    ck_assert_ptr_nonnull(q);
    return q;
}

static void fill_options(const pcfg *c, eevp_ctx_options *co, int max_batch)
{
    ck_assert_int_eq(eevp_ctx_options_init(co), EEVP_OK);
    co->n_layers = c->L;
    co->max_batch = max_batch;
    co->k = c->k;
    co->first_layer = c->f;
    co->interval = c->i;
    co->prune_layer = c->p;
    co->final_policy = c->final_policy;
    co->criterion = c->crit;
    co->threshold = c->thr;
    co->flags = c->flags;
    co->always_ids = c->always;
    co->n_always = c->n_always;
    co->static_mode = c->static_mode;
    co->static_ids = c->statics;
    co->n_static = c->n_static;
    co->reprune_layer = c->rl;
    co->reprune_every = c->re;
    co->adaptive_mass = c->mass;
    co->k_min = c->kmin;
}

/* W random in [-1, 1) (or the caller's when W is not NULL: taken over). */
static void penv_init(penv *e, const pcfg *c, uint32_t seed, float *W, int max_batch)
{
    eevp_head_options ho;
    eevp_ctx_options co;
    char msg[256];
    int l, j, V = c->V;
    int rc;

    memset(e, 0, sizeof *e);
    e->c = *c;
    e->V = c->V;
    e->d = c->d;
    e->L = c->L;
    e->p = c->p < 0 ? c->f : c->p;
    e->rng = seed;
    e->static_only = c->static_mode == SO;
    e->K = (c->k > 0 && c->k < V && !e->static_only) ? c->k : 0;
    if (W) {
        e->W = W;
    } else {
        e->W = xcalloc((size_t)V * (size_t)c->d, sizeof(float));
        fill_random(e->W, (int64_t)V * c->d, &e->rng, -1.0f, 1.0f);
    }
    if (c->norm == RMS) {
        e->nw = xcalloc((size_t)c->d, sizeof(float));
        fill_random(e->nw, c->d, &e->rng, 0.5f, 1.5f);
    }
    e->rh.V = V;
    e->rh.d = c->d;
    e->rh.stride = c->d;
    e->rh.offset = c->offset;
    e->rh.W = e->W;
    e->rh.norm = c->norm;
    e->rh.eps = (double)1e-5f;
    e->rh.nw = e->nw;
    e->rh.scale = 1.0;

    ck_assert_int_eq(eevp_head_options_init(&ho), EEVP_OK);
    ho.n_vocab = V;
    ho.dim = c->d;
    ho.weights = e->W;
    ho.vocab_offset = c->offset;
    ho.norm = c->norm;
    ho.norm_eps = 1e-5f;
    ho.norm_weight = e->nw;
    rc = eevp_head_create(&e->head, &ho, msg, sizeof msg);
    ck_assert_msg(rc == EEVP_OK, "eevp_head_create: %d %s", rc, msg);

    fill_options(c, &co, max_batch);
    rc = eevp_ctx_create(&e->ctx, e->head, &co, msg, sizeof msg);
    ck_assert_msg(rc == EEVP_OK, "eevp_ctx_create: %d %s", rc, msg);

    /* The lists as the reference reads the header: foreign ids dropped,
     * duplicates once; the static list only when a static mode is set. */
    e->is_always = xcalloc((size_t)V, 1);
    e->is_static = xcalloc((size_t)V, 1);
    e->mem = xcalloc((size_t)V, 1);
    e->old = xcalloc((size_t)V, 1);
    for (j = 0; j < c->n_always; j++)
        if (c->always[j] >= c->offset && c->always[j] < c->offset + V)
            e->is_always[c->always[j] - c->offset] = 1;
    if (c->static_mode != SN)
        for (j = 0; j < c->n_static; j++)
            if (c->statics[j] >= c->offset && c->statics[j] < c->offset + V)
                e->is_static[c->statics[j] - c->offset] = 1;
    for (j = 0; j < V; j++)
        e->n_shared += e->is_always[j] || e->is_static[j];
    /* A set exists: a dynamic top-K, or a non-empty static-only set. */
    e->kmax = e->static_only ? e->n_shared : (e->K > 0 ? 1 : 0);

    e->checked = xcalloc((size_t)c->L, sizeof(int));
    for (l = c->f; l < c->L; l += c->i)
        e->checked[l] = 1;
    e->checked[c->L - 1] = 1;
    e->hid = xcalloc((size_t)c->L * (size_t)c->n_seq * (size_t)c->d, sizeof(float));
    e->z = xcalloc((size_t)V, sizeof(double));
    e->ab = xcalloc((size_t)V, sizeof(double));
    e->cz = xcalloc((size_t)V, sizeof(double));
    e->cab = xcalloc((size_t)V, sizeof(double));
    e->xn = xcalloc((size_t)c->d, sizeof(double));
    e->perm = xcalloc((size_t)V, sizeof(int32_t));
    e->cid = xcalloc((size_t)V, sizeof(int32_t));
    e->set = xcalloc((size_t)V, sizeof(int32_t));
    e->cl = xcalloc((size_t)V, sizeof(float));
    e->ci = xcalloc((size_t)V, sizeof(int32_t));
    e->x.hist = xcalloc((size_t)V + 2, sizeof(int64_t));
    e->r = xcalloc((size_t)c->n_seq, sizeof(pres));
    for (j = 0; j < c->n_seq; j++) {
        e->r[j].ids = xcalloc((size_t)V, sizeof(int32_t));
        e->r[j].z = xcalloc((size_t)V, sizeof(double));
        e->r[j].ab = xcalloc((size_t)V, sizeof(double));
    }
}

static void penv_free(penv *e)
{
    int j;

    eevp_ctx_free(e->ctx);
    eevp_head_free(e->head);
    free(e->W);
    free(e->nw);
    free(e->checked);
    free(e->hid);
    free(e->is_always);
    free(e->is_static);
    free(e->mem);
    free(e->old);
    free(e->z);
    free(e->ab);
    free(e->cz);
    free(e->cab);
    free(e->xn);
    free(e->perm);
    free(e->cid);
    free(e->set);
    free(e->cl);
    free(e->ci);
    free(e->x.hist);
    for (j = 0; j < e->c.n_seq; j++) {
        free(e->r[j].ids);
        free(e->r[j].z);
        free(e->r[j].ab);
    }
    free(e->r);
}

/* Hidden states of one token: per sequence a target token and a sharpness
 * (0: noise), and for some a second target taking over half-way, so that
 * the early layers rank poorly (what re-pruning is for). */
static void make_hidden(penv *e, int t)
{
    static const float sharp[6] = {0.0f, 0.35f, 0.7f, 1.4f, 3.0f, 1.4f};
    const int d = e->d, L = e->L;
    float *base = xcalloc((size_t)d, sizeof(float));
    float *jit = xcalloc((size_t)d, sizeof(float));
    int s, l, col;

    e->rng ^= (uint32_t)(t + 1) * 2654435761u;
    for (s = 0; s < e->c.n_seq; s++) {
        int tok1 = (int)(ref_rand_u32(&e->rng) % (uint32_t)e->V);
        int tok2 = (int)(ref_rand_u32(&e->rng) % (uint32_t)e->V);
        int kind = (int)(ref_rand_u32(&e->rng) % 6u);
        double a = sharp[kind];

        fill_random(base, d, &e->rng, -1.0f, 1.0f);
        for (l = 0; l < L; l++) {
            float *h = HID(e, l, s);
            double frac = (double)(l + 1) / L;
            const float *w = e->W + (size_t)((kind == 5 && 2 * l >= L) ? tok2 : tok1) * d;
            double rms = 0.0;
            for (col = 0; col < d; col++)
                rms += (double)w[col] * w[col];
            rms = sqrt(rms / d);
            if (rms == 0.0)
                rms = 1.0;
            if (kind == 0)
                fill_random(base, d, &e->rng, -1.0f, 1.0f);
            fill_random(jit, d, &e->rng, -0.25f, 0.25f);
            for (col = 0; col < d; col++)
                h[col] = (float)((double)base[col] + jit[col] +
                                 a * frac * 4.0 * (double)w[col] / rms);
        }
    }
    free(base);
    free(jit);
}

/* ------------------------------------------------------------------------ */
/* Reference                                                                */
/* ------------------------------------------------------------------------ */

static int near_tie(const penv *e, double za, double aa, double zb, double abb)
{
    if (isinf(za) || isinf(zb))
        return 0;
    return fabs(za - zb) <= ref_bound(e->d, aa, za) + ref_bound(e->d, abb, zb);
}

static double max_bound(const penv *e, const double *z, const double *ab, int n)
{
    double m = 0.0;
    int j;

    for (j = 0; j < n; j++) {
        double b = ref_bound(e->d, ab[j], z[j]);
        if (b > m)
            m = b;
    }
    return m;
}

static double ref_conf(const penv *e, const double *z, int n)
{
    switch (e->c.crit) {
    case T2:
        return ref_conf_top2(z, n);
    case MP:
        return ref_conf_maxprob(z, n);
    case EN:
        return ref_conf_entropy(z, n);
    default:
        ck_abort_msg("criterion %d", e->c.crit);
    }
    return 0.0;
}

static int sim_reprunes(const penv *e, int l)
{
    int n = 0, m;

    if (l == e->c.rl)
        return 1;
    if (e->c.re <= 0)
        return 0;
    for (m = e->p + 1; m <= l; m++)
        n += e->checked[m];
    return n % e->c.re == 0;
}

static void count_set(penv *e, int n)
{
    e->x.sets++;
    e->x.size_sum += n;
    e->x.hist[n <= e->V ? n : e->V + 1]++;
}

/* Build the set from full logits z (local rows) into e->mem / e->set. */
static void sim_build(penv *e, pres *r, int rebuild)
{
    const int V = e->V, K = e->K;
    int j, n_dyn = K, n = 0, changed = 0;

    ref_order(e->z, NULL, V, e->perm);
    if (near_tie(e, e->z[e->perm[K - 1]], e->ab[e->perm[K - 1]], e->z[e->perm[K]],
                 e->ab[e->perm[K]]))
        r->skip = __LINE__;
    if (e->c.mass > 0.0f) {
        const double mass = (double)e->c.mass;
        const double zmax = e->z[e->perm[0]];
        const double tolr = 1e-7 + 4.0 * max_bound(e, e->z, e->ab, V);
        double total = 0.0, cum = 0.0;
        int found = 0;
        for (j = 0; j < V; j++)
            total += exp(e->z[j] - zmax);
        for (j = 0; j < K && !found; j++) {
            cum += exp(e->z[e->perm[j]] - zmax);
            if (j + 1 >= e->c.kmin) {
                if (fabs(cum / total - mass) <= tolr)
                    r->skip = __LINE__;
                if (cum >= mass * total) {
                    n_dyn = j + 1;
                    found = 1;
                }
            }
        }
        if (n_dyn < K && near_tie(e, e->z[e->perm[n_dyn - 1]], e->ab[e->perm[n_dyn - 1]],
                                  e->z[e->perm[n_dyn]], e->ab[e->perm[n_dyn]]))
            r->skip = __LINE__;
    }
    if (rebuild)
        memcpy(e->old, e->mem, (size_t)V);
    memset(e->mem, 0, (size_t)V);
    for (j = 0; j < n_dyn; j++)
        e->mem[e->perm[j]] = 1;
    for (j = 0; j < V; j++) {
        if (e->is_always[j] || (e->c.static_mode == SU && e->is_static[j]))
            e->mem[j] = 1;
        if (e->mem[j])
            e->set[n++] = j;
        if (rebuild && e->mem[j] != e->old[j])
            changed = 1;
    }
    e->set_n = n;
    if (rebuild) {
        e->x.reprunes++;
        e->x.changed += changed;
    }
    count_set(e, n);
}

/* Candidates cz/cab/cid (n) into r in the order. */
static void sim_record(penv *e, pres *r, int n)
{
    int j;

    ref_order(e->cz, e->cid, n, e->perm);
    r->n = n;
    for (j = 0; j < n; j++) {
        r->ids[j] = e->cid[e->perm[j]];
        r->z[j] = e->cz[e->perm[j]];
        r->ab[j] = e->cab[e->perm[j]];
    }
    if (n > 1 && near_tie(e, r->z[0], r->ab[0], r->z[1], r->ab[1]))
        r->skip = __LINE__;
}

static void load_full(penv *e)
{
    int v;

    for (v = 0; v < e->V; v++) {
        e->cz[v] = e->z[v];
        e->cab[v] = e->ab[v];
        e->cid[v] = v + e->c.offset;
    }
}

static void sim_sequence(penv *e, int s, pres *r)
{
    const double lam = (double)e->c.thr;
    int has_set = 0, l, j;

    r->skip = 0;
    r->reason = EEVP_REASON_RUNNING;
    e->set_n = 0;
    if (e->static_only && e->n_shared > 0) {
        for (j = 0; j < e->V; j++) {
            e->mem[j] = e->is_always[j] || e->is_static[j];
            if (e->mem[j])
                e->set[e->set_n++] = j;
        }
        has_set = 1;
        count_set(e, e->set_n);
    }
    for (l = 0; l < e->L; l++) {
        const float *h = HID(e, l, s);
        const int chk = e->checked[l], last = l == e->L - 1;
        const int isp = e->K > 0 && l == e->p;
        const int rep = e->K > 0 && has_set && chk && l > e->p && !last && sim_reprunes(e, l);
        double c, tol;
        int n;

        if (!chk && !isp)
            continue;
        if (!has_set || l == e->p || rep || (last && e->c.final_policy == FF)) {
            ref_logits(&e->rh, h, e->z, e->ab);
            if (chk) {
                load_full(e);
                c = ref_conf(e, e->cz, e->V);
                tol = 2e-5 + 3.0 * max_bound(e, e->cz, e->cab, e->V);
                if (!last && fabs(c - lam) <= tol)
                    r->skip = __LINE__;
                if (last || c > lam) {
                    sim_record(e, r, e->V);
                    r->reason = last ? EEVP_REASON_LAST_LAYER : EEVP_REASON_CONFIDENT;
                    r->token = r->ids[0];
                    r->layer = l;
                    r->pruned = 0;
                    r->pruned_token = -1;
                    r->set_size = has_set ? e->set_n : 0;
                    r->conf = c;
                    r->tol = tol;
                    return;
                }
            }
            if (isp || rep) {
                sim_build(e, r, has_set);
                has_set = 1;
            }
            continue;
        }
        /* over the set */
        ref_norm(&e->rh, h, e->xn);
        n = e->set_n;
        for (j = 0; j < n; j++) {
            e->cz[j] = ref_logit(&e->rh, e->xn, e->set[j], &e->cab[j]);
            e->cid[j] = e->set[j] + e->c.offset;
        }
        c = ref_conf(e, e->cz, n);
        tol = 2e-5 + 3.0 * max_bound(e, e->cz, e->cab, n);
        if (!last && fabs(c - lam) <= tol)
            r->skip = __LINE__;
        if (last || c > lam) {
            sim_record(e, r, n);
            r->reason = last ? EEVP_REASON_LAST_LAYER : EEVP_REASON_CONFIDENT;
            r->token = r->ids[0];
            r->pruned_token = r->ids[0];
            r->layer = l;
            r->pruned = 1;
            r->set_size = n;
            r->conf = c;
            r->tol = tol;
            if (!last && (e->c.flags & EX)) {
                ref_logits(&e->rh, h, e->z, e->ab);
                load_full(e);
                sim_record(e, r, e->V);
                r->token = r->ids[0];
                e->x.exact++;
                e->x.exact_changed += r->token != r->pruned_token;
            }
            return;
        }
    }
    ck_abort_msg("simulation did not resolve");
}

/* ------------------------------------------------------------------------ */
/* Library run and comparison                                               */
/* ------------------------------------------------------------------------ */

static void get_result(const penv *e, int s, eevp_result *res)
{
    memset(res, 0, sizeof *res);
    res->struct_size = (uint32_t)sizeof *res;
    ck_assert_int_eq(eevp_step_result(e->ctx, s, res), EEVP_OK);
}

/* One token through the library, every sequence's row at its index. */
static void lib_run(penv *e)
{
    int l, rc;

    ck_assert_int_eq(eevp_ctx_stats_reset(e->ctx), EEVP_OK);
    ck_assert_int_eq(eevp_step_begin(e->ctx, e->c.n_seq, NULL), EEVP_OK);
    for (l = 0; l < e->L && eevp_step_n_running(e->ctx) > 0; l++) {
        if (eevp_ctx_layer_required(e->ctx, l) != 1)
            continue;
        rc = eevp_step_layer(e->ctx, l, HID(e, l, 0), e->d, e->c.n_seq, NULL);
        ck_assert_msg(rc == EEVP_OK, "layer %d: %d %s", l, rc, eevp_ctx_errmsg(e->ctx));
    }
    ck_assert_int_eq(eevp_step_n_running(e->ctx), 0);
    ck_assert_int_eq(eevp_step_end(e->ctx), EEVP_OK);
}

/* Check writes every assertion's location to its pipe: loops test quietly
 * and assert once. */
static void check_candidates(penv *e, int s, const pres *r)
{
    int32_t n_out = -1;
    int j, k;
    char why[200];

    why[0] = '\0';
    ck_assert_int_eq(eevp_step_candidates(e->ctx, s, e->V, e->cl, e->ci, &n_out), EEVP_OK);
    ck_assert_msg(n_out == r->n, "seq %d: %d candidates, expected %d", s, (int)n_out, r->n);
    for (j = 0; j < r->n && !why[0]; j++) {
        const int id = e->ci[j];
        int at = -1;
        if (id < e->c.offset || id >= e->c.offset + e->V) {
            snprintf(why, sizeof why, "foreign id %d", id);
            break;
        }
        for (k = 0; k < r->n; k++)
            if (r->ids[k] == id)
                at = k;
        for (k = 0; k < j; k++)
            if (e->ci[k] == id)
                snprintf(why, sizeof why, "id %d twice among the candidates", id);
        if (at < 0)
            snprintf(why, sizeof why, "candidate %d (id %d) not in the reference set", j, id);
        else if (!ref_close(e->cl[j], r->z[at], e->d, r->ab[at]))
            snprintf(why, sizeof why, "logit of %d %.9g vs %.9g", id, (double)e->cl[j],
                     r->z[at]);
        /* same place, or a rounding tie with the one the reference has there */
        else if (id != r->ids[j] && !near_tie(e, r->z[j], r->ab[j], r->z[at], r->ab[at]))
            snprintf(why, sizeof why, "candidate %d is %d, expected %d", j, id, r->ids[j]);
    }
    ck_assert_msg(!why[0], "seq %d: %s", s, why);
}

static void compare_seq(penv *e, int s)
{
    const pres *r = &e->r[s];
    eevp_result res;

    get_result(e, s, &res);
    ck_assert_int_eq(res.status, EEVP_OK);
    e->n_seen++;
    if (r->skip) {
        e->n_skip++;
        return;
    }
    ck_assert_msg(res.reason == r->reason && res.layer == r->layer && res.pruned == r->pruned,
                  "seq %d: reason %d layer %d pruned %d, expected %d %d %d", s, res.reason,
                  res.layer, res.pruned, r->reason, r->layer, r->pruned);
    ck_assert_msg(res.token == r->token, "seq %d: token %d, expected %d", s, res.token,
                  r->token);
    ck_assert_msg(res.pruned_token == r->pruned_token, "seq %d: pruned_token %d, expected %d",
                  s, res.pruned_token, r->pruned_token);
    ck_assert_msg(res.set_size == r->set_size, "seq %d: set_size %d, expected %d", s,
                  res.set_size, r->set_size);
    ck_assert(res.threshold == e->c.thr);
    ck_assert_msg(fabs((double)res.confidence - r->conf) <= r->tol,
                  "seq %d: confidence %.9g, expected %.9g", s, (double)res.confidence, r->conf);
    check_candidates(e, s, r);
    e->n_early += r->reason == EEVP_REASON_CONFIDENT;
    e->n_last += r->reason == EEVP_REASON_LAST_LAYER;
    e->n_pruned_exit += r->pruned && r->reason == EEVP_REASON_CONFIDENT;
    /* an exit on the full head after the pruning layer: a re-pruning layer */
    e->n_full_exit_late += !r->pruned && r->reason == EEVP_REASON_CONFIDENT && r->layer > e->p;
}

static void compare_stats(penv *e)
{
    eevp_stats st;
    int64_t *h = xcalloc((size_t)e->V + 2, sizeof(int64_t));
    int j;

    memset(&st, 0, sizeof st);
    st.struct_size = (uint32_t)sizeof st;
    ck_assert_int_eq(eevp_ctx_stats(e->ctx, &st), EEVP_OK);
    ck_assert_int_eq(st.tokens, e->c.n_seq);
    ck_assert_int_eq(st.exited_early, e->x.exited);
    ck_assert_int_eq(st.reached_last, e->x.last);
    ck_assert_int_eq(st.pruned_decisions, e->x.pruned);
    ck_assert_int_eq(st.pruned_sets, e->x.sets);
    ck_assert_int_eq(st.set_size_sum, e->x.size_sum);
    ck_assert_int_eq(st.reprunes, e->x.reprunes);
    ck_assert_int_eq(st.reprune_changed, e->x.changed);
    ck_assert_int_eq(st.always_emitted, e->x.always_em);
    ck_assert_int_eq(st.static_emitted, e->x.static_em);
    ck_assert_int_eq(st.exact_exits, e->x.exact);
    ck_assert_int_eq(st.exact_exit_changed, e->x.exact_changed);
    ck_assert_int_eq(eevp_ctx_set_size_histogram(e->ctx, h, e->V + 2), EEVP_OK);
    for (j = 0; j < e->V + 2 && h[j] == e->x.hist[j]; j++)
        ;
    ck_assert_msg(j == e->V + 2, "set-size histogram[%d] = %lld, expected %lld", j,
                  (long long)h[j % (e->V + 2)], (long long)e->x.hist[j % (e->V + 2)]);
    free(h);
    e->n_stat_tokens++;
}

/* One token: library, reference, comparison.  Returns the number of
 * sequences the reference could not call. */
static int run_token(penv *e, int t)
{
    int s, skipped = 0;
    int64_t *hist = e->x.hist;

    make_hidden(e, t);
    lib_run(e);
    memset(&e->x, 0, sizeof e->x);
    e->x.hist = hist;
    memset(hist, 0, ((size_t)e->V + 2) * sizeof(int64_t));
    for (s = 0; s < e->c.n_seq; s++) {
        pres *r = &e->r[s];
        sim_sequence(e, s, r);
        skipped += r->skip != 0;
        e->x.exited += r->reason == EEVP_REASON_CONFIDENT;
        e->x.last += r->reason == EEVP_REASON_LAST_LAYER;
        e->x.pruned += r->pruned;
        e->x.always_em += e->is_always[r->token - e->c.offset];
        e->x.static_em += e->is_static[r->token - e->c.offset];
        compare_seq(e, s);
    }
    e->n_tokens++;
    if (!skipped) {
        compare_stats(e);
        e->n_reprunes += (int)e->x.reprunes;
        e->n_changed += (int)e->x.changed;
        e->n_exact_changed += (int)e->x.exact_changed;
    }
    return skipped;
}

/* ------------------------------------------------------------------------ */
/* Every policy against the reference                                       */
/* ------------------------------------------------------------------------ */

START_TEST(test_pol_table)
{
    const pcfg *c = &pol_table[_i];
    penv e;
    int t, g;
    uint32_t seed = 7001u + 97u * (uint32_t)_i;

    /* Up to 4 rounds of tokens: enough comparisons for each configuration. */
    for (g = 0; g < 4; g++) {
        penv_init(&e, c, seed + 13u * (uint32_t)g, NULL, c->n_seq + (_i % 2));
        for (t = 0; t < c->n_tokens; t++)
            run_token(&e, t);
        ck_assert_msg(e.n_skip * 10 <= e.n_seen, "cfg %d: %d of %d sequences not callable",
                      _i, e.n_skip, e.n_seen);
        ck_assert_msg(e.n_stat_tokens * 2 >= e.n_tokens, "cfg %d: statistics compared on %d "
                      "of %d tokens", _i, e.n_stat_tokens, e.n_tokens);
        /* not vacuous: some early exits (pruned ones where a set exists)
         * and some last-layer ones over the rounds */
        if (e.n_early > 0 && e.n_last > 0 && (e.kmax == 0 || e.n_pruned_exit > 0) &&
            /* re-pruning: sets rebuilt, and (without exact exits) some
             * exit on the full head of a re-pruning layer */
            (c->rl < 0 && c->re == 0
                 ? 1
                 : e.n_reprunes > 0 && ((c->flags & EX) || e.n_full_exit_late > 0)) &&
            (!(c->flags & EX) || e.kmax == 0 || e.n_exact_changed > 0)) {
            penv_free(&e);
            return;
        }
        penv_free(&e);
    }
    ck_abort_msg("cfg %d: no round had early, last-layer and pruned exits, re-prunings and "
                 "changed exact exits (where configured)", _i);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Constructed heads                                                        */
/* ------------------------------------------------------------------------ */

/* W whose row `eos` is 6 e_0 and whose other rows are random in [-0.5, 0.5)
 * over dimensions 1..d-1 with 0 along e_0: the e_0 component of a hidden
 * state speaks for `eos` alone. */
static float *eos_head(int V, int d, int eos, uint32_t seed)
{
    float *W = xcalloc((size_t)V * (size_t)d, sizeof(float));
    int v;

    for (v = 0; v < V; v++) {
        if (v == eos) {
            W[(size_t)v * d] = 6.0f;
            continue;
        }
        fill_random(W + (size_t)v * d + 1, d - 1, &seed, -0.5f, 0.5f);
    }
    return W;
}

/* h = a * e_0 + b * w_tok / |w_tok| (+ tiny noise) */
static void eos_state(const penv *e, float *h, double a, int tok, double b, uint32_t *seed)
{
    const float *w = e->W + (size_t)tok * e->d;
    double nrm = 0.0;
    int c;

    for (c = 0; c < e->d; c++)
        nrm += (double)w[c] * w[c];
    nrm = sqrt(nrm);
    fill_random(h, e->d, seed, -0.01f, 0.01f);
    h[0] = (float)(h[0] + a);
    for (c = 1; c < e->d; c++)
        h[c] = (float)(h[c] + b * w[c] / nrm);
}

/* The reference set of sequence s at the pruning layer (full top-K). */
static int in_ref_topk(penv *e, int s, int id)
{
    int j;

    ref_logits(&e->rh, HID(e, e->p, s), e->z, e->ab);
    ref_order(e->z, NULL, e->V, e->perm);
    for (j = 0; j < e->K; j++)
        if (e->perm[j] + e->c.offset == id)
            return 1;
    return 0;
}

enum { EOS_ID = 42 };

/* Three sequences over L = 4, p = 0 (unchecked), f = 1:
 *  0: at p towards token b (EOS far below the top-K), later pure EOS
 *     direction: over a set without EOS the candidates are flat;
 *  1: at p towards token a, later EOS direction plus a: a dominates the
 *     set, EOS the full head (18 against about 8);
 *  2: at p and later towards a only: full argmax == pruned argmax. */
static void eos_hidden(penv *e, int a, int b)
{
    uint32_t seed = 99u;
    int l;

    for (l = 0; l < e->L; l++) {
        /* after p pure EOS: nothing of b left */
        eos_state(e, HID(e, l, 0), l == 0 ? -2.0 : 3.0, b, l == 0 ? 8.0 : 0.0, &seed);
        eos_state(e, HID(e, l, 1), l == 0 ? -2.0 : 3.0, a, 8.0, &seed);
        eos_state(e, HID(e, l, 2), -2.0, a, 8.0, &seed);
    }
}

static const pcfg eos_cfg = {100, 16, 4, 1, 1, 0, 8, 3, T2, 0.5f, FF, 0, NN, NULL, 0, SN,
                             NULL, 0, -1, 0, 0.0f, 1, 0u, 1};

/* Run the constructed token and compare with the reference; returns the
 * results. */
static void eos_run(penv *e, eevp_result *res)
{
    int s;
    int64_t *hist = e->x.hist;

    lib_run(e);
    memset(&e->x, 0, sizeof e->x);
    e->x.hist = hist;
    memset(hist, 0, ((size_t)e->V + 2) * sizeof(int64_t));
    for (s = 0; s < e->c.n_seq; s++) {
        sim_sequence(e, s, &e->r[s]);
        ck_assert_msg(e->r[s].skip == 0, "constructed sequence %d not callable (line %d)", s,
                      e->r[s].skip);
        e->x.exited += e->r[s].reason == EEVP_REASON_CONFIDENT;
        e->x.last += e->r[s].reason == EEVP_REASON_LAST_LAYER;
        e->x.pruned += e->r[s].pruned;
        e->x.always_em += e->is_always[e->r[s].token - e->c.offset];
        e->x.static_em += e->is_static[e->r[s].token - e->c.offset];
        compare_seq(e, s);
        get_result(e, s, &res[s]);
    }
    compare_stats(e);
}

/* The EOS case of the issue, exactly: EOS not in the early top-K. */
START_TEST(test_pol_eos)
{
    static const int32_t eos_list[] = {EOS_ID};
    pcfg c = eos_cfg;
    penv e;
    eevp_result res[3];
    const int a = 7, b = 11;

    /* Plain: a pruned exit can never emit EOS. */
    penv_init(&e, &c, 1u, eos_head(c.V, c.d, EOS_ID, 5u), 3);
    eos_hidden(&e, a, b);
    ck_assert(!in_ref_topk(&e, 0, EOS_ID));
    ck_assert(!in_ref_topk(&e, 1, EOS_ID));
    ck_assert(in_ref_topk(&e, 1, a));
    eos_run(&e, res);
    /* 0: flat over the set, no early exit: the last layer's full head
     * finds EOS, but not on a pruned exit */
    ck_assert_int_eq(res[0].reason, EEVP_REASON_LAST_LAYER);
    ck_assert_int_eq(res[0].token, EOS_ID);
    ck_assert_int_eq(res[0].pruned, 0);
    ck_assert_int_eq(res[0].set_size, 8);
    /* 1: exits on the pruned set with something else */
    ck_assert_int_eq(res[1].reason, EEVP_REASON_CONFIDENT);
    ck_assert_int_eq(res[1].pruned, 1);
    ck_assert_int_eq(res[1].token, a);
    ck_assert_int_eq(res[1].pruned_token, a);
    penv_free(&e);

    /* EOS always included: both exit at the first check on EOS. */
    c.always = eos_list;
    c.n_always = 1;
    penv_init(&e, &c, 1u, eos_head(c.V, c.d, EOS_ID, 5u), 3);
    eos_hidden(&e, a, b);
    eos_run(&e, res);
    ck_assert_int_eq(res[0].reason, EEVP_REASON_CONFIDENT);
    ck_assert_int_eq(res[0].layer, 1);
    ck_assert_int_eq(res[0].pruned, 1);
    ck_assert_int_eq(res[0].token, EOS_ID);
    ck_assert_int_eq(res[0].set_size, 9);
    ck_assert_int_eq(res[1].reason, EEVP_REASON_CONFIDENT);
    ck_assert_int_eq(res[1].token, EOS_ID);
    ck_assert_int_eq(e.x.always_em, 2);
    penv_free(&e);
}
END_TEST

/* Exact-token exits where the full argmax is outside the set. */
START_TEST(test_pol_exact_exit)
{
    pcfg c = eos_cfg;
    penv e;
    eevp_result res[3];
    eevp_stats st;
    int32_t n_out = 0;
    const int a = 7, b = 11;

    c.flags = EX | (uint32_t)_i * BI;
    penv_init(&e, &c, 1u, eos_head(c.V, c.d, EOS_ID, 5u), 3);
    eos_hidden(&e, a, b);
    eos_run(&e, res);
    /* 1: the pruned decision exits on a, the full head says EOS */
    ck_assert_int_eq(res[1].reason, EEVP_REASON_CONFIDENT);
    ck_assert_int_eq(res[1].layer, 1);
    ck_assert_int_eq(res[1].pruned, 1);
    ck_assert_int_eq(res[1].pruned_token, a);
    ck_assert_int_eq(res[1].token, EOS_ID);
    ck_assert_int_eq(res[1].set_size, 8);
    /* candidates: the full vocabulary, EOS first */
    ck_assert_int_eq(eevp_step_candidates(e.ctx, 1, c.V, e.cl, e.ci, &n_out), EEVP_OK);
    ck_assert_int_eq(n_out, c.V);
    ck_assert_int_eq(e.ci[0], EOS_ID);
    /* 2: both agree */
    ck_assert_int_eq(res[2].reason, EEVP_REASON_CONFIDENT);
    ck_assert_int_eq(res[2].pruned, 1);
    ck_assert_int_eq(res[2].token, a);
    ck_assert_int_eq(res[2].pruned_token, a);
    /* 0: no pruned exit, nothing re-decided */
    ck_assert_int_eq(res[0].reason, EEVP_REASON_LAST_LAYER);
    ck_assert_int_eq(res[0].pruned_token, -1);
    memset(&st, 0, sizeof st);
    st.struct_size = (uint32_t)sizeof st;
    ck_assert_int_eq(eevp_ctx_stats(e.ctx, &st), EEVP_OK);
    ck_assert_int_eq(st.exact_exits, 2);
    ck_assert_int_eq(st.exact_exit_changed, 1);
    ck_assert_int_eq(st.pruned_decisions, 2);
    penv_free(&e);
}
END_TEST

/* Random tokens, plain method, EOS never in the early top-K by
 * construction (its row points away from every state at p): no pruned exit
 * emits it; with EOS always included some do. */
START_TEST(test_pol_eos_random)
{
    static const int32_t eos_list[] = {EOS_ID};
    pcfg c = eos_cfg;
    penv e;
    int t, s, l, pass, n_eos_pruned = 0;
    uint32_t seed = 31u;

    c.n_seq = 8;
    c.L = 5;
    c.thr = 0.7f;
    for (pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            c.always = eos_list;
            c.n_always = 1;
        }
        penv_init(&e, &c, 3u, eos_head(c.V, c.d, EOS_ID, 5u), c.n_seq);
        for (t = 0; t < 6; t++) {
            for (s = 0; s < c.n_seq; s++) {
                int tok = (int)(ref_rand_u32(&seed) % (uint32_t)c.V);
                double bb = 2.0 + 6.0 * ref_rand_unit(&seed);
                double aa = 4.0 * ref_rand_unit(&seed);
                if (tok == EOS_ID)
                    tok++;
                for (l = 0; l < c.L; l++)
                    eos_state(&e, HID(&e, l, s), l == 0 ? -2.0 : aa * l / (c.L - 1), tok, bb,
                              &seed);
            }
            lib_run(&e);
            for (s = 0; s < c.n_seq; s++) {
                eevp_result res;
                ck_assert(!in_ref_topk(&e, s, EOS_ID));
                get_result(&e, s, &res);
                if (res.reason == EEVP_REASON_CONFIDENT && res.pruned && res.token == EOS_ID) {
                    ck_assert_msg(pass == 1, "plain method: pruned exit on EOS, seq %d", s);
                    n_eos_pruned++;
                }
            }
        }
        penv_free(&e);
    }
    ck_assert_int_gt(n_eos_pruned, 0);
}
END_TEST

/* Duplicates between the static list and the dynamic top-K (and inside
 * the lists, and between static and always) count once. */
START_TEST(test_pol_duplicates)
{
    pcfg c = pol_table[0];
    penv e;
    int32_t stat[40], alw[4];
    int j, s, n_st = 0, expect;
    int extra[3] = {-1, -1, -1};
    int64_t hist[64];
    eevp_stats st;

    c.n_seq = 4;
    c.k = 16;
    c.thr = 2.0f; /* never exits early: every set is built and held */
    /* a probe environment to learn sequence 0's top-K at p */
    penv_init(&e, &c, 4242u, NULL, c.n_seq);
    make_hidden(&e, 0);
    ref_logits(&e.rh, HID(&e, e.p, 0), e.z, e.ab);
    ref_order(e.z, NULL, e.V, e.perm);
    for (j = 0; j < 16; j++) {
        stat[n_st++] = e.perm[j];
        stat[n_st++] = e.perm[j]; /* twice */
    }
    for (j = 0; j < 3; j++) /* three far below the top-K */
        stat[n_st++] = extra[j] = e.perm[e.V - 1 - 20 * j];
    alw[0] = e.perm[0];       /* in the top-K and in the static list */
    alw[1] = extra[0];        /* in the static list only */
    alw[2] = e.perm[e.V / 2]; /* new */
    alw[3] = e.perm[e.V / 2];
    {
        float *W = xcalloc((size_t)e.V * (size_t)e.d, sizeof(float));
        float *hid = xcalloc((size_t)e.L * (size_t)c.n_seq * (size_t)e.d, sizeof(float));
        memcpy(W, e.W, (size_t)e.V * (size_t)e.d * sizeof(float));
        memcpy(hid, e.hid, (size_t)e.L * (size_t)c.n_seq * (size_t)e.d * sizeof(float));
        penv_free(&e);
        c.static_mode = SU;
        c.statics = stat;
        c.n_static = n_st;
        c.always = alw;
        c.n_always = 4;
        penv_init(&e, &c, 4242u, W, c.n_seq);
        memcpy(e.hid, hid, (size_t)e.L * (size_t)c.n_seq * (size_t)e.d * sizeof(float));
        free(hid);
    }
    lib_run(&e);
    /* sequence 0: top-16 + 3 extras + 1 new always id, each once */
    {
        eevp_result res;
        get_result(&e, 0, &res);
        ck_assert_int_eq(res.reason, EEVP_REASON_LAST_LAYER);
        ck_assert_int_eq(res.set_size, 16 + 3 + 1);
    }
    /* every sequence: the union counted independently */
    expect = 0;
    for (s = 0; s < c.n_seq; s++) {
        eevp_result res;
        int n = 16;
        ref_logits(&e.rh, HID(&e, e.p, s), e.z, e.ab);
        ref_order(e.z, NULL, e.V, e.perm);
        memset(e.mem, 0, (size_t)e.V);
        for (j = 0; j < 16; j++)
            e.mem[e.perm[j]] = 1;
        for (j = 0; j < n_st; j++)
            n += !e.mem[stat[j]], e.mem[stat[j]] = 1;
        for (j = 0; j < 4; j++)
            n += !e.mem[alw[j]], e.mem[alw[j]] = 1;
        get_result(&e, s, &res);
        ck_assert_int_eq(res.set_size, n);
        expect += n;
    }
    memset(&st, 0, sizeof st);
    st.struct_size = (uint32_t)sizeof st;
    ck_assert_int_eq(eevp_ctx_stats(e.ctx, &st), EEVP_OK);
    ck_assert_int_eq(st.pruned_sets, c.n_seq);
    ck_assert_int_eq(st.set_size_sum, expect);
    ck_assert_int_eq(eevp_ctx_set_size_histogram(e.ctx, hist, 64), EEVP_OK);
    ck_assert_int_ge(hist[20], 1); /* at least sequence 0 */
    for (j = 0; j < 16; j++)
        ck_assert_int_eq(hist[j], 0);
    /* and the whole thing against the reference, candidates without
     * duplicates included */
    for (j = 0; j < 2; j++)
        run_token(&e, 100 + j);
    penv_free(&e);
}
END_TEST

/* Always-included ids outside the shard (a head with vocab_offset 1000). */
START_TEST(test_pol_foreign_ids)
{
    static const int32_t alw[] = {-1, 0, 999, 1200, 1205, 2147483647, 1017, 1017, 1199};
    pcfg c = pol_table[0];
    penv e;
    int s, t, j;

    c.V = 200;
    c.offset = 1000;
    c.k = 8;
    c.always = alw;
    c.n_always = (int)(sizeof alw / sizeof alw[0]);
    c.thr = 0.6f;
    penv_init(&e, &c, 77u, NULL, c.n_seq);
    for (t = 0; t < 4; t++) {
        run_token(&e, t);
        for (s = 0; s < c.n_seq; s++) {
            eevp_result res;
            int32_t n_out = 0;
            int expect = 8;
            get_result(&e, s, &res);
            if (e.r[s].skip)
                continue;
            expect += !in_ref_topk(&e, s, 1017);
            expect += !in_ref_topk(&e, s, 1199);
            ck_assert_int_eq(res.set_size, res.layer == e.p && !res.pruned ? 0 : expect);
            ck_assert_int_eq(eevp_step_candidates(e.ctx, s, c.V, e.cl, e.ci, &n_out), EEVP_OK);
            for (j = 0; j < n_out && e.ci[j] >= 1000 && e.ci[j] < 1200; j++)
                ;
            ck_assert_msg(j == n_out, "seq %d: foreign candidate id %d", s, (int)e.ci[j % c.V]);
        }
    }
    ck_assert_int_lt(e.n_skip * 10, e.n_seen + 1);
    penv_free(&e);
}
END_TEST

/* K_min = K_max: the adaptive rule always keeps k, so results are those of
 * the fixed-K context, bit for bit, and every set has size k. */
START_TEST(test_pol_kmin_kmax)
{
    static const float masses[3] = {0.01f, 0.5f, 1.0f};
    pcfg c = pol_table[0];
    penv e, f;
    int t, s, j;
    int64_t hist[40];

    c.k = 12;
    c.kmin = 12;
    c.mass = masses[_i];
    penv_init(&e, &c, 555u, NULL, c.n_seq);
    c.mass = 0.0f;
    c.kmin = 1;
    {
        float *W = xcalloc((size_t)e.V * (size_t)e.d, sizeof(float));
        memcpy(W, e.W, (size_t)e.V * (size_t)e.d * sizeof(float));
        penv_init(&f, &c, 555u, W, c.n_seq);
    }
    for (t = 0; t < 3; t++) {
        run_token(&e, t);
        memcpy(f.hid, e.hid, (size_t)e.L * (size_t)c.n_seq * (size_t)e.d * sizeof(float));
        lib_run(&f);
        ck_assert_int_eq(eevp_ctx_set_size_histogram(e.ctx, hist, 40), EEVP_OK);
        for (j = 0; j < 40; j++)
            ck_assert_int_eq(hist[j], j == 12 ? e.x.sets : 0);
        for (s = 0; s < c.n_seq; s++) {
            eevp_result ra, rb;
            int32_t na = 0, nb = 0;
            get_result(&e, s, &ra);
            get_result(&f, s, &rb);
            ck_assert_int_eq(ra.token, rb.token);
            ck_assert_int_eq(ra.layer, rb.layer);
            ck_assert_int_eq(ra.set_size, rb.set_size);
            ck_assert(ra.confidence == rb.confidence);
            ck_assert_int_eq(eevp_step_candidates(e.ctx, s, c.V, e.cl, e.ci, &na), EEVP_OK);
            ck_assert_int_eq(eevp_step_candidates(f.ctx, s, c.V, f.cl, f.ci, &nb), EEVP_OK);
            ck_assert_int_eq(na, nb);
            ck_assert(memcmp(e.ci, f.ci, (size_t)na * sizeof(int32_t)) == 0);
            ck_assert(memcmp(e.cl, f.cl, (size_t)na * sizeof(float)) == 0);
        }
    }
    ck_assert_int_le(e.n_skip * 10, e.n_seen);
    penv_free(&e);
    penv_free(&f);
}
END_TEST

/* Static only: the pruning layer is not required when unchecked (NaN there
 * is never read), required and decided on the full head when checked; one
 * set per sequence per step, of size |static u always|. */
START_TEST(test_pol_static_only)
{
    pcfg c = pol_table[_i ? 5 : 4];
    penv e;
    int t, s, l, rc;
    eevp_stats st;
    int64_t hist[64];
    float *nan_rows;
    const int shared = 20 + 2; /* st_b: 20 distinct in range; al_a adds 3 and 77 */

    penv_init(&e, &c, 808u, NULL, c.n_seq);
    ck_assert_int_eq(e.n_shared, _i ? 20 : shared);
    if (_i == 0) {
        ck_assert_int_eq(eevp_ctx_layer_required(e.ctx, 0), 0); /* p, unchecked */
        ck_assert_int_eq(eevp_ctx_layer_required(e.ctx, 1), 0);
        ck_assert_int_eq(eevp_ctx_layer_required(e.ctx, 2), 1);
    } else {
        ck_assert_int_eq(eevp_ctx_layer_required(e.ctx, 1), 1); /* p == f */
        ck_assert_int_eq(eevp_ctx_layer_required(e.ctx, 0), 0);
    }
    nan_rows = xcalloc((size_t)c.n_seq * (size_t)c.d, sizeof(float));
    for (s = 0; s < c.n_seq * c.d; s++)
        nan_rows[s] = NAN;
    for (t = 0; t < 4; t++)
        run_token(&e, t);
    ck_assert_int_le(e.n_skip * 10, e.n_seen);
    /* NaN handed over at the unrequired layers (p among them) is ignored */
    ck_assert_int_eq(eevp_ctx_stats_reset(e.ctx), EEVP_OK);
    make_hidden(&e, 9);
    ck_assert_int_eq(eevp_step_begin(e.ctx, c.n_seq, NULL), EEVP_OK);
    for (l = 0; l < c.L && eevp_step_n_running(e.ctx) > 0; l++) {
        int req = eevp_ctx_layer_required(e.ctx, l);
        rc = eevp_step_layer(e.ctx, l, req ? HID(&e, l, 0) : nan_rows, c.d, c.n_seq, NULL);
        ck_assert_msg(rc == EEVP_OK, "layer %d: %d %s", l, rc, eevp_ctx_errmsg(e.ctx));
    }
    ck_assert_int_eq(eevp_step_end(e.ctx), EEVP_OK);
    memset(&st, 0, sizeof st);
    st.struct_size = (uint32_t)sizeof st;
    ck_assert_int_eq(eevp_ctx_stats(e.ctx, &st), EEVP_OK);
    ck_assert_int_eq(st.failed, 0);
    ck_assert_int_eq(st.pruned_sets, c.n_seq);
    ck_assert_int_eq(st.set_size_sum, (int64_t)c.n_seq * e.n_shared);
    ck_assert_int_eq(st.reprunes, 0);
    ck_assert_int_eq(eevp_ctx_set_size_histogram(e.ctx, hist, 64), EEVP_OK);
    for (s = 0; s < 64; s++)
        ck_assert_int_eq(hist[s], s == e.n_shared ? c.n_seq : 0);
    for (s = 0; s < c.n_seq; s++) {
        eevp_result res;
        int32_t n_out = 0, j;
        get_result(&e, s, &res);
        ck_assert_int_eq(res.set_size, e.n_shared);
        if (res.pruned) {
            ck_assert_int_eq(eevp_step_candidates(e.ctx, s, c.V, e.cl, e.ci, &n_out), EEVP_OK);
            ck_assert_int_eq(n_out, e.n_shared);
            for (j = 0; j < n_out; j++)
                ck_assert(e.is_static[e.ci[j]] || e.is_always[e.ci[j]]);
            ck_assert_int_gt(res.layer, e.p);
        }
    }
    free(nan_rows);
    penv_free(&e);
}
END_TEST

/* Re-pruning with the same hidden state at every layer never changes the
 * set; with states whose target moves it does (as often as the reference
 * says). */
START_TEST(test_pol_reprune)
{
    pcfg c = pol_table[_i ? 7 : 8]; /* 8: every 2nd; 7: layer 3 */
    penv e;
    int s, l, n_rep_layers = 0;
    eevp_stats st;

    c.thr = 2.0f; /* never exits early: all re-prunings happen */
    penv_init(&e, &c, 321u, NULL, c.n_seq);
    for (l = e.p + 1; l < c.L - 1; l++)
        n_rep_layers += e.checked[l] && sim_reprunes(&e, l);
    ck_assert_int_gt(n_rep_layers, 0);
    make_hidden(&e, 0);
    for (s = 0; s < c.n_seq; s++)
        for (l = 0; l < c.L; l++)
            memcpy(HID(&e, l, s), HID(&e, c.L - 1, s), (size_t)c.d * sizeof(float));
    lib_run(&e);
    memset(&st, 0, sizeof st);
    st.struct_size = (uint32_t)sizeof st;
    ck_assert_int_eq(eevp_ctx_stats(e.ctx, &st), EEVP_OK);
    ck_assert_int_eq(st.reached_last, c.n_seq);
    ck_assert_int_eq(st.reprunes, (int64_t)n_rep_layers * c.n_seq);
    ck_assert_int_eq(st.reprune_changed, 0);
    ck_assert_int_eq(st.pruned_sets, (int64_t)(n_rep_layers + 1) * c.n_seq);
    ck_assert_int_eq(st.set_size_sum, (int64_t)(n_rep_layers + 1) * c.n_seq * c.k);
    /* changing states: against the reference, until a set has changed */
    for (s = 0; s < 8 && e.n_changed == 0; s++)
        run_token(&e, 1 + s);
    ck_assert_int_gt(e.n_changed, 0);
    ck_assert_int_gt(e.n_reprunes, e.n_changed - 1);
    penv_free(&e);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Batch invariance                                                         */
/* ------------------------------------------------------------------------ */

typedef struct snap {
    eevp_result r;
    int32_t n;
    float *z;
    int32_t *ids;
} snap;

/* Run the sequences in hid order through the library: hid holds n
 * sequences' states (L x n x d, as HID with n_seq = n); rows handed in the
 * order perm (row r = sequence perm-filtered running ones). */
static void bi_run(penv *e, const float *hid, int n, uint32_t *seed, int shuffle)
{
    float *rows = xcalloc((size_t)n * (size_t)e->d, sizeof(float));
    int32_t *map = xcalloc((size_t)n, sizeof(int32_t));
    int l, s, m, rc;

    ck_assert_int_eq(eevp_step_begin(e->ctx, n, NULL), EEVP_OK);
    for (l = 0; l < e->L && eevp_step_n_running(e->ctx) > 0; l++) {
        if (eevp_ctx_layer_required(e->ctx, l) != 1)
            continue;
        m = 0;
        for (s = 0; s < n; s++) {
            eevp_result res;
            memset(&res, 0, sizeof res);
            res.struct_size = (uint32_t)sizeof res;
            if (eevp_step_result(e->ctx, s, &res) != EEVP_OK)
                ck_abort_msg("eevp_step_result %d", s);
            if (res.reason == EEVP_REASON_RUNNING)
                map[m++] = s;
        }
        for (s = m - 1; shuffle && s > 0; s--) {
            int k = (int)(ref_rand_u32(seed) % (uint32_t)(s + 1));
            int32_t tmp = map[s];
            map[s] = map[k];
            map[k] = tmp;
        }
        for (s = 0; s < m; s++)
            memcpy(rows + (size_t)s * e->d, hid + ((size_t)l * n + (size_t)map[s]) * e->d,
                   (size_t)e->d * sizeof(float));
        rc = eevp_step_layer(e->ctx, l, rows, e->d, m, map);
        ck_assert_msg(rc == EEVP_OK, "layer %d: %d %s", l, rc, eevp_ctx_errmsg(e->ctx));
    }
    ck_assert_int_eq(eevp_step_end(e->ctx), EEVP_OK);
    free(rows);
    free(map);
}

static void bi_snap(penv *e, int s, snap *out)
{
    memset(&out->r, 0, sizeof out->r);
    out->r.struct_size = (uint32_t)sizeof out->r;
    ck_assert_int_eq(eevp_step_result(e->ctx, s, &out->r), EEVP_OK);
    ck_assert_int_eq(eevp_step_candidates(e->ctx, s, e->V, out->z, out->ids, &out->n), EEVP_OK);
}

/* A sequence alone and in batches of 2..16 (other sequences random, its row
 * shuffled): bitwise the same result and candidates. */
START_TEST(test_pol_batch_invariant)
{
    pcfg c = pol_table[15];
    penv e;
    const int NMAX = 16, NX = 4;
    float *all, *hid;
    snap alone, other;
    int x, n, s, l, sx;
    uint32_t seed = 4711u + (uint32_t)_i;
    int n_early = 0, n_full = 0;

    if (_i == 1) { /* no policy but the flag, all sequences on full layers */
        c = pol_table[0];
        c.flags = BI;
        c.k = 0;
    }
    c.n_seq = NMAX;
    penv_init(&e, &c, 99u + (uint32_t)_i, NULL, NMAX);
    all = xcalloc((size_t)c.L * NMAX * (size_t)c.d, sizeof(float));
    hid = xcalloc((size_t)c.L * NMAX * (size_t)c.d, sizeof(float));
    alone.z = xcalloc((size_t)c.V, sizeof(float));
    alone.ids = xcalloc((size_t)c.V, sizeof(int32_t));
    other.z = xcalloc((size_t)c.V, sizeof(float));
    other.ids = xcalloc((size_t)c.V, sizeof(int32_t));
    for (x = 0; x < NX; x++) {
        make_hidden(&e, x);
        memcpy(all, e.hid, (size_t)c.L * NMAX * (size_t)c.d * sizeof(float));
        /* sequence 0 of the generated batch is X: alone */
        for (l = 0; l < c.L; l++)
            memcpy(hid + (size_t)l * c.d, all + (size_t)l * NMAX * c.d,
                   (size_t)c.d * sizeof(float));
        bi_run(&e, hid, 1, &seed, 0);
        bi_snap(&e, 0, &alone);
        n_early += alone.r.reason == EEVP_REASON_CONFIDENT;
        n_full += !alone.r.pruned;
        for (n = 2; n <= NMAX; n++) {
            sx = (int)(ref_rand_u32(&seed) % (uint32_t)n);
            for (l = 0; l < c.L; l++)
                for (s = 0; s < n; s++) {
                    /* X at sx, the others from rows 1.. of the generated
                     * batch, rotated by n */
                    int from = s == sx ? 0 : 1 + (s + n) % (NMAX - 1);
                    memcpy(hid + ((size_t)l * n + (size_t)s) * c.d,
                           all + ((size_t)l * NMAX + (size_t)from) * c.d,
                           (size_t)c.d * sizeof(float));
                }
            bi_run(&e, hid, n, &seed, 1);
            bi_snap(&e, sx, &other);
            ck_assert_msg(other.r.reason == alone.r.reason && other.r.token == alone.r.token &&
                              other.r.layer == alone.r.layer &&
                              other.r.pruned == alone.r.pruned &&
                              other.r.pruned_token == alone.r.pruned_token &&
                              other.r.set_size == alone.r.set_size,
                          "X %d in a batch of %d at %d: result differs", x, n, sx);
            ck_assert_msg(memcmp(&other.r.confidence, &alone.r.confidence, sizeof(float)) == 0,
                          "X %d in a batch of %d: confidence %.9g vs %.9g", x, n,
                          (double)other.r.confidence, (double)alone.r.confidence);
            ck_assert_int_eq(other.n, alone.n);
            ck_assert_msg(memcmp(other.ids, alone.ids, (size_t)alone.n * sizeof(int32_t)) == 0,
                          "X %d in a batch of %d: candidate ids differ", x, n);
            ck_assert_msg(memcmp(other.z, alone.z, (size_t)alone.n * sizeof(float)) == 0,
                          "X %d in a batch of %d: candidate logits differ", x, n);
        }
    }
    free(all);
    free(hid);
    free(alone.z);
    free(alone.ids);
    free(other.z);
    free(other.ids);
    penv_free(&e);
    /* not vacuous: early exits, and with the policies some pruned ones */
    ck_assert_int_gt(n_early, 0);
    if (_i == 0)
        ck_assert_int_lt(n_full, NX);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Options: errors and the struct_size rule                                 */
/* ------------------------------------------------------------------------ */

static eevp_head *small_head(float **W)
{
    eevp_head_options ho;
    eevp_head *h = NULL;
    uint32_t seed = 5u;

    *W = xcalloc(300 * 8, sizeof(float));
    fill_random(*W, 300 * 8, &seed, -1.0f, 1.0f);
    eevp_head_options_init(&ho);
    ho.n_vocab = 300;
    ho.dim = 8;
    ho.weights = *W;
    ck_assert_int_eq(eevp_head_create(&h, &ho, NULL, 0), EEVP_OK);
    return h;
}

static void base_opts(eevp_ctx_options *o)
{
    eevp_ctx_options_init(o);
    o->n_layers = 8;
    o->first_layer = 2;
    o->interval = 2;
    o->prune_layer = 1;
    o->k = 16;
    o->max_batch = 2;
}

/* Options mutated into an error, the code the header/ctx.c give. */
START_TEST(test_pol_option_errors)
{
    static const int32_t ids[2] = {1, 2};
    float *W;
    eevp_head *h = small_head(&W);
    eevp_ctx_options o;
    eevp_ctx *ctx;
    char msg[256];
    int i, rc, expect;
    int64_t bytes;

    for (i = 0;; i++) {
        base_opts(&o);
        switch (i) {
        case 0: o.n_always = -1; o.always_ids = ids; expect = EEVP_ERANGE; break;
        case 1: o.n_always = EEVP_MAX_LIST + 1; o.always_ids = ids; expect = EEVP_ERANGE; break;
        case 2: o.n_always = 2; o.always_ids = NULL; expect = EEVP_EINVAL; break;
        case 3: o.static_mode = 3; o.static_ids = ids; o.n_static = 2; expect = EEVP_EINVAL; break;
        case 4: o.static_mode = -1; expect = EEVP_EINVAL; break;
        case 5: o.static_mode = SU; o.n_static = -1; o.static_ids = ids; expect = EEVP_ERANGE; break;
        case 6: o.static_mode = SU; o.n_static = EEVP_MAX_LIST + 1; o.static_ids = ids;
            expect = EEVP_ERANGE; break;
        case 7: o.static_mode = SU; o.n_static = 2; o.static_ids = NULL; expect = EEVP_EINVAL; break;
        case 8: o.static_mode = SO; o.n_static = 2; o.static_ids = NULL; expect = EEVP_EINVAL; break;
        case 9: o.reprune_layer = 3; expect = EEVP_ERANGE; break;   /* not checked */
        case 10: o.reprune_layer = 1; expect = EEVP_ERANGE; break;  /* == p */
        case 11: o.reprune_layer = 0; expect = EEVP_ERANGE; break;  /* < p */
        case 12: o.reprune_layer = 7; expect = EEVP_ERANGE; break;  /* the last */
        case 13: o.reprune_layer = 8; expect = EEVP_ERANGE; break;
        case 14: o.reprune_layer = -2; expect = EEVP_ERANGE; break;
        case 15: o.prune_layer = 2; o.reprune_layer = 2; expect = EEVP_ERANGE; break; /* == p == f */
        case 16: o.reprune_every = -1; expect = EEVP_ERANGE; break;
        case 17: o.adaptive_mass = NAN; expect = EEVP_ERANGE; break;
        case 18: o.adaptive_mass = -0.1f; expect = EEVP_ERANGE; break;
        case 19: o.adaptive_mass = 1.01f; expect = EEVP_ERANGE; break;
        case 20: o.adaptive_mass = INFINITY; expect = EEVP_ERANGE; break;
        case 21: o.adaptive_mass = 0.5f; o.k_min = 0; expect = EEVP_ERANGE; break;
        case 22: o.adaptive_mass = 0.5f; o.k_min = 17; expect = EEVP_ERANGE; break;
        case 23: o.adaptive_mass = 0.5f; o.k_min = -1; expect = EEVP_ERANGE; break;
        case 24: o.static_mode = SO; o.static_ids = ids; o.n_static = 2; o.reprune_layer = 4;
            expect = EEVP_EINVAL; break;
        case 25: o.static_mode = SO; o.static_ids = ids; o.n_static = 2; o.reprune_every = 1;
            expect = EEVP_EINVAL; break;
        case 26: o.static_mode = SO; o.static_ids = ids; o.n_static = 2; o.adaptive_mass = 0.5f;
            expect = EEVP_EINVAL; break;
        case 27: o.flags = 4u; expect = EEVP_EINVAL; break;
        case 28: o.flags = 0x80000000u | EX; expect = EEVP_EINVAL; break;
        case 29: o.flags = ~0u; expect = EEVP_EINVAL; break;
        case 30: o.n_threads = -1; expect = EEVP_ERANGE; break;
        case 31: o.n_threads = EEVP_MAX_THREADS + 1; expect = EEVP_ERANGE; break;
        default: expect = 1; break;
        }
        if (expect == 1)
            break;
        ctx = (eevp_ctx *)W; /* non-NULL garbage: must become NULL */
        msg[0] = '\0';
        rc = eevp_ctx_create(&ctx, h, &o, msg, sizeof msg);
        ck_assert_msg(rc == expect, "case %d: %d, expected %d (%s)", i, rc, expect, msg);
        ck_assert_msg(ctx == NULL, "case %d: *out not NULL", i);
        ck_assert_msg(msg[0] != '\0' && strlen(msg) < sizeof msg, "case %d: no message", i);
        bytes = 12345;
        ck_assert_int_eq(eevp_ctx_memory_estimate(&bytes, h, &o), expect);
        ck_assert_int_eq(bytes, 0);
    }
    /* the limits themselves and the edges that are valid */
    for (i = 0;; i++) {
        int32_t *big = NULL;
        base_opts(&o);
        switch (i) {
        case 0: big = xcalloc(EEVP_MAX_LIST, sizeof(int32_t));
            o.always_ids = big; o.n_always = EEVP_MAX_LIST; break;
        case 1: o.static_mode = SN; o.static_ids = NULL; o.n_static = 5; break; /* ignored */
        case 2: o.reprune_layer = 2; break;          /* first checked after p */
        case 3: o.reprune_layer = 6; o.reprune_every = 1; break;
        case 4: o.adaptive_mass = 1.0f; o.k_min = 16; break;
        case 5: o.adaptive_mass = 1e-30f; o.k_min = 1; break;
        case 6: o.static_mode = SO; o.static_ids = ids; o.n_static = 2; o.k = 0; break;
        case 7: o.flags = EX | BI; break;
        case 8: o.static_mode = SU; o.static_ids = ids; o.n_static = 0; break;
        case 9: o.n_threads = 1; break;
        case 10: o.n_threads = 4; break;
        /* Named tail padding (1.0 and 1.1 layouts): never read. */
        case 11: o.reserved_1_0 = 0xdeadbeefu; o.reserved_1_1 = 0xfeedu; break;
        default: i = -1; break;
        }
        if (i < 0)
            break;
        ctx = NULL;
        rc = eevp_ctx_create(&ctx, h, &o, msg, sizeof msg);
        ck_assert_msg(rc == EEVP_OK, "valid case %d: %d (%s)", i, rc, msg);
        ck_assert_ptr_nonnull(ctx);
        ck_assert_int_eq(eevp_ctx_memory_estimate(&bytes, h, &o), EEVP_OK);
        ck_assert_int_eq(bytes, eevp_ctx_memory(ctx));
        eevp_ctx_free(ctx);
        free(big);
    }
    eevp_head_free(h);
    free(W);
}
END_TEST

/* eevp_ctx_set_size_histogram's own arguments. */
START_TEST(test_pol_histogram_args)
{
    float *W;
    eevp_head *h = small_head(&W);
    eevp_ctx_options o;
    eevp_ctx *ctx = NULL;
    int64_t counts[4] = {7, 7, 7, 7};

    base_opts(&o);
    ck_assert_int_eq(eevp_ctx_create(&ctx, h, &o, NULL, 0), EEVP_OK);
    ck_assert_int_eq(eevp_ctx_set_size_histogram(NULL, counts, 4), EEVP_EINVAL);
    ck_assert_int_eq(eevp_ctx_set_size_histogram(ctx, NULL, 4), EEVP_EINVAL);
    ck_assert_int_eq(eevp_ctx_set_size_histogram(ctx, counts, -1), EEVP_ERANGE);
    ck_assert_int_eq(eevp_ctx_set_size_histogram(ctx, counts, 0), EEVP_OK);
    ck_assert_int_eq(counts[0], 7);
    ck_assert_int_eq(eevp_ctx_set_size_histogram(ctx, counts, 3), EEVP_OK);
    ck_assert_int_eq(counts[0], 0);
    ck_assert_int_eq(counts[2], 0);
    ck_assert_int_eq(counts[3], 7); /* nothing past n */
    eevp_ctx_free(ctx);
    eevp_head_free(h);
    free(W);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Suite                                                                    */
/* ------------------------------------------------------------------------ */

Suite *make_policies_suite(void)
{
    Suite *s = suite_create("policies");
    TCase *tc = tcase_create("reference");

    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_pol_table, 0, N_POL_CFG);
    tcase_add_test(tc, test_pol_eos);
    tcase_add_loop_test(tc, test_pol_exact_exit, 0, 2);
    tcase_add_test(tc, test_pol_eos_random);
    tcase_add_test(tc, test_pol_duplicates);
    tcase_add_test(tc, test_pol_foreign_ids);
    tcase_add_loop_test(tc, test_pol_kmin_kmax, 0, 3);
    tcase_add_loop_test(tc, test_pol_static_only, 0, 2);
    tcase_add_loop_test(tc, test_pol_reprune, 0, 2);
    tcase_add_loop_test(tc, test_pol_batch_invariant, 0, 2);
    suite_add_tcase(s, tc);

    tc = tcase_create("options");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_pol_option_errors);
    tcase_add_test(tc, test_pol_histogram_args);
    suite_add_tcase(s, tc);

    suite_add_tcase(s, tc);
    return s;
}
