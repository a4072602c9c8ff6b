/* SPDX-License-Identifier: MIT */
/*
 * check_shard.c - vocabulary-parallel shard contexts (eevp_ctx_create_shard,
 * eevp_shard_layer / _merge / _absorb) simulated in one process.
 *
 * The reference for every decision is an unsharded context on the whole
 * head, run on the same hidden states: tokens, exit layers, reasons, pruned
 * sets and candidates must be identical, confidences of pruned decisions
 * bitwise equal and those of full-vocabulary ones within 1e-6 (a decision
 * whose confidence lies within 1e-6 of the threshold is counted, not
 * compared; each test asserts that few were).  The merge's properties are
 * checked on the bytes: any order and any tree of merges gives the same
 * record; bad records give errors, never crashes.
 */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eevp.h"
#include "ref.h"

Suite *make_shard_suite(void);

#define MAXP 8
#define D 24
#define L 6

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    ck_assert_ptr_nonnull(p);
    return p;
}

/* P shards of a V x D head, with the unsharded context beside them. */
typedef struct sim {
    int32_t P, V;
    float *W;
    eevp_head *full, *sh[MAXP];
    eevp_ctx *ref, *ctx[MAXP];
    int64_t cap;
    unsigned char *rec[MAXP], *work[MAXP];
    int32_t r0[MAXP + 1];
    int64_t exchanges;
    int near; /* decisions within 1e-6 of the threshold, not compared */
} sim;

static eevp_head *make_head(const float *W, int32_t r0, int32_t r1, const float *nw)
{
    eevp_head_options o = EEVP_HEAD_OPTIONS_INIT;
    eevp_head *h = NULL;
    char msg[256];
    o.n_vocab = r1 - r0;
    o.dim = D;
    o.weights = W + (int64_t)r0 * D;
    o.vocab_offset = r0;
    o.norm = EEVP_NORM_RMS;
    o.norm_weight = nw;
    ck_assert_msg(eevp_head_create(&h, &o, msg, sizeof msg) == EEVP_OK, "%s", msg);
    return h;
}

/* Shard boundaries: uneven, every shard at least one row. */
static void split(sim *m, uint32_t *seed)
{
    int32_t i;
    m->r0[0] = 0;
    m->r0[m->P] = m->V;
    for (i = 1; i < m->P; i++) {
        const int32_t lo = m->r0[i - 1] + 1, hi = m->V - (m->P - i);
        m->r0[i] = lo + (int32_t)(ref_rand_u32(seed) % (uint32_t)(hi - lo + 1));
        if (i == 1 && m->P > 2 && hi - lo > 4)
            m->r0[i] = lo; /* one shard of a single row */
    }
}

static float nw[D];

static void sim_open(sim *m, int32_t P, int32_t V, const eevp_ctx_options *o, int32_t top_k,
                     uint32_t seed, int dup_boundary)
{
    char msg[256];
    int32_t i;
    memset(m, 0, sizeof *m);
    m->P = P;
    m->V = V;
    m->W = (float *)xmalloc((size_t)V * D * sizeof(float));
    fill_random(m->W, (int64_t)V * D, &seed, -1.0f, 1.0f);
    for (i = 0; i < D; i++)
        nw[i] = 0.5f + (float)i / D;
    split(m, &seed);
    if (dup_boundary)
        /* Ties across shard boundaries: the last row of each shard equals
         * the first of the next, so their logits tie and the id decides. */
        for (i = 1; i < P; i++)
            memcpy(m->W + (int64_t)m->r0[i] * D, m->W + (int64_t)(m->r0[i] - 1) * D,
                   D * sizeof(float));
    m->full = make_head(m->W, 0, V, nw);
    ck_assert_msg(eevp_ctx_create(&m->ref, m->full, o, msg, sizeof msg) == EEVP_OK, "%s", msg);
    for (i = 0; i < P; i++) {
        eevp_shard_options so = EEVP_SHARD_OPTIONS_INIT;
        int rc;
        so.shard_index = i;
        so.n_shards = P;
        so.total_vocab = V;
        so.top_k = top_k;
        m->sh[i] = make_head(m->W, m->r0[i], m->r0[i + 1], nw);
        rc = eevp_ctx_create_shard(&m->ctx[i], m->sh[i], o, &so, msg, sizeof msg);
        ck_assert_msg(rc == EEVP_OK, "shard %d: %d %s", i, rc, msg);
    }
    m->cap = eevp_shard_record_capacity(m->ctx[0]);
    ck_assert_int_gt(m->cap, 64);
    for (i = 0; i < P; i++) {
        ck_assert_int_eq(eevp_shard_record_capacity(m->ctx[i]), m->cap);
        m->rec[i] = (unsigned char *)xmalloc((size_t)m->cap);
        m->work[i] = (unsigned char *)xmalloc((size_t)m->cap);
    }
}

static void sim_close(sim *m)
{
    int32_t i;
    for (i = 0; i < m->P; i++) {
        eevp_ctx_free(m->ctx[i]);
        eevp_head_free(m->sh[i]);
        free(m->rec[i]);
        free(m->work[i]);
    }
    eevp_ctx_free(m->ref);
    eevp_head_free(m->full);
    free(m->W);
}

/* Merge n records of `size` bytes through a random tree: pick two, merge
 * one into the other (either way round), until one is left; out gets it. */
static int merge_tree(unsigned char **recs, int32_t n, int64_t size, uint32_t *seed,
                      unsigned char **work, unsigned char *out)
{
    int32_t live[MAXP], nl = n, i;
    int rc = EEVP_OK;
    for (i = 0; i < n; i++) {
        memcpy(work[i], recs[i], (size_t)size);
        live[i] = i;
    }
    while (nl > 1) {
        const int32_t a = (int32_t)(ref_rand_u32(seed) % (uint32_t)nl);
        int32_t b = (int32_t)(ref_rand_u32(seed) % (uint32_t)(nl - 1));
        int r;
        if (b >= a)
            b++;
        r = eevp_shard_merge(work[live[a]], work[live[b]], size);
        if (r != EEVP_OK)
            rc = r;
        live[b] = live[--nl]; /* b is spent; a stays (or moves into b's place) */
    }
    memcpy(out, work[live[0]], (size_t)size);
    return rc;
}

/* One layer on the reference and every shard, exchanges until done. */
static void sim_layer(sim *m, int32_t layer, const float *hidden, int32_t n_rows,
                      uint32_t *seed)
{
    int64_t size[MAXP], next[MAXP];
    int rc[MAXP] = {0}, i;
    int rref = eevp_step_layer(m->ref, layer, hidden, D, n_rows, NULL);
    for (i = 0; i < m->P; i++) {
        rc[i] = eevp_shard_layer(m->ctx[i], layer, hidden, D, n_rows, NULL, m->rec[i], m->cap,
                                 &size[i]);
        ck_assert_int_eq(rc[i], rc[0]);
        ck_assert_int_eq(size[i], size[0]);
    }
    ck_assert_msg(rc[0] == rref || rc[0] == EEVP_OK, "layer %d: shard %d, unsharded %d", layer,
                  rc[0], rref);
    while (size[0] > 0) {
        unsigned char *merged = (unsigned char *)xmalloc((size_t)size[0]);
        ck_assert_int_eq(merge_tree(m->rec, m->P, size[0], seed, m->work, merged), EEVP_OK);
        m->exchanges++;
        for (i = 0; i < m->P; i++) {
            int r = eevp_shard_absorb(m->ctx[i], merged, size[0], m->rec[i], m->cap, &next[i]);
            ck_assert_msg(r == EEVP_OK || r == EEVP_ENONFINITE, "absorb %d: %s", r,
                          eevp_ctx_errmsg(m->ctx[i]));
            ck_assert_int_eq(next[i], next[0]);
            if (next[i] > 0) /* even with every sequence resolved */
                ck_assert_int_eq(eevp_step_end(m->ctx[i]), EEVP_ESTATE);
        }
        free(merged);
        for (i = 0; i < m->P; i++)
            size[i] = next[i];
    }
}

static void compare_results(sim *m, int32_t n_seq)
{
    int32_t s, i;
    for (s = 0; s < n_seq; s++) {
        eevp_result a, b;
        memset(&a, 0, sizeof a);
        memset(&b, 0, sizeof b);
        a.struct_size = b.struct_size = sizeof a;
        float la[64], lb[64];
        int32_t ia[64], ib[64], na = 0, nb = 0, j;
        ck_assert_int_eq(eevp_step_result(m->ref, s, &a), EEVP_OK);
        for (i = 0; i < m->P; i++) {
            ck_assert_int_eq(eevp_step_result(m->ctx[i], s, &b), EEVP_OK);
            if (!b.pruned && fabsf(b.confidence - b.threshold) <= 1e-6f) {
                m->near++;
                continue;
            }
            ck_assert_int_eq(b.reason, a.reason);
            ck_assert_int_eq(b.status, a.status);
            ck_assert_int_eq(b.token, a.token);
            ck_assert_int_eq(b.layer, a.layer);
            ck_assert_int_eq(b.pruned, a.pruned);
            ck_assert_int_eq(b.pruned_token, a.pruned_token);
            ck_assert_int_eq(b.set_size, a.set_size);
            if (a.reason == EEVP_REASON_ERROR)
                continue;
            if (a.pruned)
                ck_assert_msg(memcmp(&a.confidence, &b.confidence, 4) == 0,
                              "pruned confidence %.9g vs %.9g", (double)b.confidence,
                              (double)a.confidence);
            else
                ck_assert_msg(fabs((double)a.confidence - b.confidence) <= 1e-6,
                              "confidence %.9g vs %.9g", (double)b.confidence,
                              (double)a.confidence);
            ck_assert_int_eq(eevp_step_candidates(m->ref, s, 64, la, ia, &na), EEVP_OK);
            ck_assert_int_eq(eevp_step_candidates(m->ctx[i], s, 64, lb, ib, &nb), EEVP_OK);
            ck_assert_int_le(nb, na);
            {
                /* The set, or the merged top entries (exact exits too). */
                const int32_t want = a.pruned && na == a.set_size ? na : (2 < na ? 2 : na);
                ck_assert_msg(nb >= want, "nb %d want %d pruned %d reason %d layer %d set %d", (int)nb, (int)want, (int)a.pruned, (int)a.reason, (int)a.layer, (int)a.set_size);
            }
            for (j = 0; j < nb; j++) {
                ck_assert_int_eq(ib[j], ia[j]);
                ck_assert_msg(memcmp(&la[j], &lb[j], 4) == 0, "candidate %d logit", (int)j);
            }
        }
    }
}

/* Steps of random hidden states; the batch and the hidden states differ
 * per step, some rows scaled so that confident exits happen. */
static void run_steps(sim *m, int32_t n_steps, int32_t max_batch, uint32_t seed)
{
    float *hid = (float *)xmalloc((size_t)max_batch * D * sizeof(float));
    int32_t t, l, i;
    for (t = 0; t < n_steps; t++) {
        const int32_t n_seq = 1 + (int32_t)(ref_rand_u32(&seed) % (uint32_t)max_batch);
        int32_t pos[64];
        for (i = 0; i < n_seq; i++)
            pos[i] = (int32_t)(ref_rand_u32(&seed) % 50u);
        ck_assert_int_eq(eevp_step_begin(m->ref, n_seq, pos), EEVP_OK);
        for (i = 0; i < m->P; i++)
            ck_assert_int_eq(eevp_step_begin(m->ctx[i], n_seq, pos), EEVP_OK);
        for (l = 0; l < L && eevp_step_n_running(m->ref) > 0; l++) {
            fill_random(hid, (int64_t)n_seq * D, &seed, -1.0f, 1.0f);
            for (i = 0; i < n_seq; i++) {
                /* Later layers lean towards one row of W: confident. */
                const int64_t v = (int64_t)(ref_rand_u32(&seed) % (uint32_t)m->V);
                int32_t c;
                for (c = 0; c < D; c++)
                    hid[i * D + c] += (float)l * 0.4f * m->W[v * D + c];
            }
            sim_layer(m, l, hid, n_seq, &seed);
            for (i = 0; i < m->P; i++)
                ck_assert_int_eq(eevp_step_n_running(m->ctx[i]), eevp_step_n_running(m->ref));
        }
        compare_results(m, n_seq);
        ck_assert_int_eq(eevp_step_end(m->ref), EEVP_OK);
        for (i = 0; i < m->P; i++)
            ck_assert_int_eq(eevp_step_end(m->ctx[i]), EEVP_OK);
    }
    free(hid);
}

/* ------------------------------------------------------------------------ */

typedef struct config {
    int32_t criterion, k, final_policy, first, prune, reprune;
    uint32_t flags;
    float threshold;
} config;

static const config configs[] = {
    {EEVP_CRITERION_TOP2_GAP, 8, EEVP_FINAL_FULL, 1, -1, -1, 0, 0.3f},
    {EEVP_CRITERION_TOP2_GAP, 8, EEVP_FINAL_PRUNED, 2, 1, -1, 0, 0.3f},
    {EEVP_CRITERION_MAX_PROB, 12, EEVP_FINAL_FULL, 1, 0, 3, 0, 0.9f},
    {EEVP_CRITERION_ENTROPY, 8, EEVP_FINAL_FULL, 1, -1, -1, 0, 0.2f},
    {EEVP_CRITERION_ENTROPY, 0, EEVP_FINAL_FULL, 1, -1, -1, 0, 0.2f},
    {EEVP_CRITERION_STABILITY, 8, EEVP_FINAL_PRUNED, 1, -1, -1, 0, 0.5f},
    {EEVP_CRITERION_JS, 8, EEVP_FINAL_FULL, 1, -1, -1, 0, 0.9f},
    {EEVP_CRITERION_JS, 8, EEVP_FINAL_PRUNED, 2, 0, -1, 0, 0.9f},
    {EEVP_CRITERION_JS, 8, EEVP_FINAL_FULL, 1, 0, 3, 0, 0.95f},
    {EEVP_CRITERION_SATURATION, 0, EEVP_FINAL_FULL, 1, -1, -1, 0, 0.2f},
    {EEVP_CRITERION_TOP2_GAP, 8, EEVP_FINAL_FULL, 2, 1, -1, EEVP_CTX_EXACT_EXIT, 0.2f},
    {EEVP_CRITERION_MAX_PROB, 30, EEVP_FINAL_PRUNED, 1, -1, -1, EEVP_CTX_EXACT_EXIT, 0.3f},
    {EEVP_CRITERION_TOP2_GAP, 0, EEVP_FINAL_FULL, 0, -1, -1, 0, INFINITY},
};

static void set_options(eevp_ctx_options *o, const config *c, int32_t max_batch)
{
    eevp_ctx_options_init(o);
    o->n_layers = L;
    o->max_batch = max_batch;
    o->k = c->k;
    o->criterion = c->criterion;
    o->final_policy = c->final_policy;
    o->first_layer = c->first;
    o->prune_layer = c->prune;
    o->reprune_layer = c->reprune;
    o->flags = c->flags | EEVP_CTX_BATCH_INVARIANT;
    o->threshold = c->threshold;
}

/* Every configuration, P = 1..4 and 7, with shards smaller than K and a
 * shard of one row: decisions identical to the unsharded context's. */
START_TEST(test_shard_matches_unsharded)
{
    const int32_t Ps[] = {1, 2, 3, 4, 7};
    int64_t decisions = 0, early = 0, pruned = 0, exact = 0, reprunes = 0;
    int near = 0;
    size_t ci, pi;
    for (ci = 0; ci < sizeof configs / sizeof configs[0]; ci++) {
        for (pi = 0; pi < sizeof Ps / sizeof Ps[0]; pi++) {
            eevp_ctx_options o;
            eevp_stats st;
            sim m;
            set_options(&o, &configs[ci], 5);
            sim_open(&m, Ps[pi], 61 + 7 * (int32_t)ci, &o, 0,
                     (uint32_t)(100 * ci + pi + 1), (int)(ci % 2));
            run_steps(&m, 12, 5, (uint32_t)(7 + ci * 31 + pi));
            memset(&st, 0, sizeof st);
            st.struct_size = sizeof st;
            ck_assert_int_eq(eevp_ctx_stats(m.ctx[0], &st), EEVP_OK);
            ck_assert_int_eq(st.shard_exchanges, m.exchanges);
            ck_assert_int_gt(st.shard_bytes_sent, 0);
            ck_assert_int_eq(st.shard_bytes_received, st.shard_bytes_sent);
            decisions += st.tokens;
            early += st.exited_early;
            pruned += st.pruned_decisions;
            exact += st.exact_exits;
            reprunes += st.reprunes;
            near += m.near;
            sim_close(&m);
        }
    }
    /* The mix the comparison covers: early exits, pruned decisions, exact
     * exits, re-prunings. */
    ck_assert_int_gt(decisions, 1000);
    ck_assert_int_gt(early * 5, decisions);
    ck_assert_int_gt(pruned * 5, decisions);
    ck_assert_int_gt(exact, 20);
    ck_assert_int_gt(reprunes, 20);
    ck_assert_msg(near * 100 < decisions, "%d near-threshold decisions of %lld", near,
                  (long long)decisions);
}
END_TEST

/* Merging is exactly associative and commutative: every tree over the same
 * records gives the same bytes, P = 2..8, with and without ties. */
START_TEST(test_merge_any_tree)
{
    int32_t P;
    for (P = 2; P <= MAXP; P++) {
        eevp_ctx_options o;
        config c = configs[0];
        float hid[3 * D];
        int64_t size[MAXP], nx;
        unsigned char *first, *other;
        uint32_t seed = 77u + (uint32_t)P;
        int32_t i, trial, l;
        sim m;
        c.k = 16;
        c.first = 0;
        set_options(&o, &c, 3);
        sim_open(&m, P, 150, &o, 20, (uint32_t)P, P % 2);
        for (i = 0; i < P; i++)
            ck_assert_int_eq(eevp_step_begin(m.ctx[i], 3, NULL), EEVP_OK);
        fill_random(hid, 3 * D, &seed, -1.0f, 1.0f);
        for (l = 0; l <= 1; l++) {
            for (i = 0; i < P; i++)
                ck_assert_int_eq(eevp_shard_layer(m.ctx[i], l, hid, D, 3, NULL, m.rec[i], m.cap,
                                                  &size[i]),
                                 EEVP_OK);
            ck_assert_int_gt(size[0], 0);
            first = (unsigned char *)xmalloc((size_t)size[0]);
            other = (unsigned char *)xmalloc((size_t)size[0]);
            ck_assert_int_eq(merge_tree(m.rec, P, size[0], &seed, m.work, first), EEVP_OK);
            for (trial = 0; trial < 30; trial++) {
                ck_assert_int_eq(merge_tree(m.rec, P, size[0], &seed, m.work, other), EEVP_OK);
                ck_assert_msg(memcmp(first, other, (size_t)size[0]) == 0, "P %d trial %d",
                              (int)P, (int)trial);
            }
            /* A left fold in rank order gives the same bytes too. */
            memcpy(other, m.rec[0], (size_t)size[0]);
            for (i = 1; i < P; i++)
                ck_assert_int_eq(eevp_shard_merge(other, m.rec[i], size[0]), EEVP_OK);
            ck_assert_int_eq(memcmp(first, other, (size_t)size[0]), 0);
            for (i = 0; i < P; i++)
                ck_assert_int_eq(eevp_shard_absorb(m.ctx[i], first, size[0], m.rec[i], m.cap,
                                                   &nx),
                                 EEVP_OK);
            free(first);
            free(other);
        }
        sim_close(&m);
    }
}
END_TEST

/* A corrupt row (NaN) in one shard's W: the same error on every rank. */
START_TEST(test_nan_row_same_error_everywhere)
{
    eevp_ctx_options o;
    config c = configs[0];
    float hid[2 * D];
    int64_t size[4], nx;
    c.first = 0;
    unsigned char merged[1 << 16];
    uint32_t seed = 5;
    int32_t i;
    sim m;
    set_options(&o, &c, 2);
    sim_open(&m, 4, 90, &o, 0, 9, 0);
    m.W[(int64_t)(m.r0[2] + 1 < m.r0[3] ? m.r0[2] + 1 : m.r0[2]) * D + 3] = NAN;
    fill_random(hid, 2 * D, &seed, -1.0f, 1.0f);
    for (i = 0; i < 4; i++) {
        ck_assert_int_eq(eevp_step_begin(m.ctx[i], 2, NULL), EEVP_OK);
        ck_assert_int_eq(eevp_shard_layer(m.ctx[i], 0, hid, D, 2, NULL, m.rec[i], m.cap,
                                          &size[i]),
                         EEVP_OK);
    }
    ck_assert_int_le(size[0], (int64_t)sizeof merged);
    ck_assert_int_eq(merge_tree(m.rec, 4, size[0], &seed, m.work, merged), EEVP_OK);
    for (i = 0; i < 4; i++) {
        eevp_result r;
        memset(&r, 0, sizeof r);
        r.struct_size = sizeof r;
        ck_assert_int_eq(eevp_shard_absorb(m.ctx[i], merged, size[0], m.rec[i], m.cap, &nx),
                         EEVP_ENONFINITE);
        ck_assert_int_eq(eevp_step_result(m.ctx[i], 0, &r), EEVP_OK);
        ck_assert_int_eq(r.reason, EEVP_REASON_ERROR);
        ck_assert_int_eq(r.status, EEVP_ENONFINITE);
        ck_assert_int_eq(eevp_step_n_running(m.ctx[i]), 0);
        ck_assert_int_eq(eevp_step_end(m.ctx[i]), EEVP_OK);
    }
    sim_close(&m);
}
END_TEST

/* Ranks out of step, other hidden states, a shard missing or twice, bad
 * records: errors on merge and on absorb, every rank alike; the context
 * stays usable. */
START_TEST(test_records_disagree)
{
    eevp_ctx_options o;
    config c = configs[0];
    float hid[2 * D], hid2[2 * D];
    c.first = 0;
    int64_t size[3], nx;
    unsigned char *acc;
    uint32_t seed = 11;
    int32_t i;
    sim m;
    set_options(&o, &c, 2);
    sim_open(&m, 3, 80, &o, 0, 3, 0);
    fill_random(hid, 2 * D, &seed, -1.0f, 1.0f);
    memcpy(hid2, hid, sizeof hid);
    hid2[5] += 1e-3f;
    acc = (unsigned char *)xmalloc((size_t)m.cap);

    /* Rank 2 saw other hidden states. */
    for (i = 0; i < 3; i++) {
        ck_assert_int_eq(eevp_step_begin(m.ctx[i], 2, NULL), EEVP_OK);
        ck_assert_int_eq(eevp_shard_layer(m.ctx[i], 0, i == 2 ? hid2 : hid, D, 2, NULL,
                                          m.rec[i], m.cap, &size[i]),
                         EEVP_OK);
    }
    memcpy(acc, m.rec[0], (size_t)size[0]);
    ck_assert_int_eq(eevp_shard_merge(acc, m.rec[1], size[0]), EEVP_OK);
    ck_assert_int_eq(eevp_shard_merge(acc, m.rec[2], size[0]), EEVP_ERECORD);
    /* The error absorbs later merges. */
    ck_assert_int_eq(eevp_shard_merge(acc, m.rec[1], size[0]), EEVP_ERECORD);
    for (i = 0; i < 3; i++) {
        eevp_result r;
        memset(&r, 0, sizeof r);
        r.struct_size = sizeof r;
        ck_assert_int_eq(eevp_shard_absorb(m.ctx[i], acc, size[0], m.rec[i], m.cap, &nx),
                         EEVP_ERECORD);
        ck_assert_ptr_nonnull(strstr(eevp_ctx_errmsg(m.ctx[i]), "hidden"));
        ck_assert_int_eq(eevp_step_result(m.ctx[i], 1, &r), EEVP_OK);
        ck_assert_int_eq(r.status, EEVP_ERECORD);
        ck_assert_int_eq(eevp_step_end(m.ctx[i]), EEVP_OK);
    }

    /* Rank 0 a step ahead: its record's step differs. */
    ck_assert_int_eq(eevp_step_begin(m.ctx[0], 2, NULL), EEVP_OK);
    ck_assert_int_eq(eevp_step_abandon(m.ctx[0]), EEVP_OK);
    for (i = 0; i < 3; i++) {
        ck_assert_int_eq(eevp_step_begin(m.ctx[i], 2, NULL), EEVP_OK);
        ck_assert_int_eq(eevp_shard_layer(m.ctx[i], 0, hid, D, 2, NULL, m.rec[i], m.cap,
                                          &size[i]),
                         EEVP_OK);
    }
    memcpy(acc, m.rec[1], (size_t)size[0]);
    ck_assert_int_eq(eevp_shard_merge(acc, m.rec[0], size[0]), EEVP_ERECORD);
    /* A shard merged twice. */
    memcpy(acc, m.rec[1], (size_t)size[0]);
    ck_assert_int_eq(eevp_shard_merge(acc, m.rec[2], size[0]), EEVP_OK);
    ck_assert_int_eq(eevp_shard_merge(acc, m.rec[2], size[0]), EEVP_ERECORD);
    /* A shard missing: absorb refuses; wrong size: nothing changes. */
    memcpy(acc, m.rec[1], (size_t)size[0]);
    ck_assert_int_eq(eevp_shard_merge(acc, m.rec[2], size[0]), EEVP_OK);
    ck_assert_int_eq(eevp_shard_absorb(m.ctx[1], acc, size[0] - 1, m.rec[1], m.cap, &nx),
                     EEVP_ERANGE);
    ck_assert_int_eq(eevp_step_n_running(m.ctx[1]), 2);
    ck_assert_int_eq(eevp_shard_absorb(m.ctx[1], acc, size[0], m.rec[1], m.cap, &nx),
                     EEVP_ERECORD);
    ck_assert_ptr_nonnull(strstr(eevp_ctx_errmsg(m.ctx[1]), "missing"));
    ck_assert_int_eq(eevp_step_n_running(m.ctx[1]), 0);
    /* Layer calls while an exchange is pending; absorb with none. */
    ck_assert_int_eq(eevp_shard_layer(m.ctx[2], 1, hid, D, 2, NULL, m.rec[2], m.cap, &nx),
                     EEVP_ESTATE);
    ck_assert_int_eq(eevp_step_layer(m.ctx[2], 1, hid, D, 2, NULL), EEVP_ESTATE);
    ck_assert_int_eq(eevp_step_end(m.ctx[2]), EEVP_ESTATE);
    ck_assert_int_eq(eevp_step_abandon(m.ctx[2]), EEVP_OK);
    ck_assert_int_eq(eevp_shard_absorb(m.ctx[2], acc, size[0], m.rec[2], m.cap, &nx),
                     EEVP_ESTATE);
    ck_assert_int_eq(eevp_shard_layer(m.ctx[2], 0, hid, D, 2, NULL, m.rec[2], m.cap, &nx),
                     EEVP_ESTATE); /* no step */
    free(acc);
    sim_close(&m);
}
END_TEST

/* Malformed and truncated records, other versions, K and P: EEVP_ERECORD
 * from merge (acc becomes an error record), never a crash; flipped bytes
 * anywhere. */
START_TEST(test_malformed_records)
{
    eevp_ctx_options o;
    config c = configs[0];
    float hid[D];
    c.first = 0;
    int64_t size[2], pos;
    unsigned char *acc, *bad;
    uint32_t seed = 19;
    int32_t i, nerr = 0, nok = 0;
    sim m, m2;
    set_options(&o, &c, 1);
    sim_open(&m, 2, 70, &o, 0, 4, 0);
    fill_random(hid, D, &seed, -1.0f, 1.0f);
    for (i = 0; i < 2; i++) {
        ck_assert_int_eq(eevp_step_begin(m.ctx[i], 1, NULL), EEVP_OK);
        ck_assert_int_eq(eevp_shard_layer(m.ctx[i], 0, hid, D, 1, NULL, m.rec[i], m.cap,
                                          &size[i]),
                         EEVP_OK);
    }
    acc = (unsigned char *)xmalloc((size_t)size[0]);
    bad = (unsigned char *)xmalloc((size_t)size[0]);
    ck_assert_int_eq(eevp_shard_merge(NULL, m.rec[1], size[0]), EEVP_EINVAL);
    ck_assert_int_eq(eevp_shard_merge(acc, NULL, size[0]), EEVP_EINVAL);
    ck_assert_int_eq(eevp_shard_merge(acc, m.rec[1], 10), EEVP_ERANGE);
    /* Truncated: the size field no longer matches. */
    memcpy(acc, m.rec[0], (size_t)size[0]);
    ck_assert_int_eq(eevp_shard_merge(acc, m.rec[1], size[0] - 8), EEVP_ERECORD);
    /* Another format version. */
    memcpy(acc, m.rec[0], (size_t)size[0]);
    memcpy(bad, m.rec[1], (size_t)size[0]);
    bad[4] = 2;
    ck_assert_int_eq(eevp_shard_merge(acc, bad, size[0]), EEVP_ERECORD);
    /* Every single byte flipped, in turn: an error or a valid merge, and
     * then absorb must not crash either. */
    for (pos = 0; pos < size[0]; pos++) {
        int64_t nx;
        int r;
        memcpy(acc, m.rec[0], (size_t)size[0]);
        memcpy(bad, m.rec[1], (size_t)size[0]);
        bad[pos] ^= (unsigned char)(1u << (pos % 8));
        r = eevp_shard_merge(acc, bad, size[0]);
        ck_assert(r == EEVP_OK || r == EEVP_ERECORD);
        nerr += r == EEVP_ERECORD;
        nok += r == EEVP_OK;
        /* Absorb leaves the exchange done: begin again each time. */
        r = eevp_shard_absorb(m.ctx[0], acc, size[0], m.rec[0], m.cap, &nx);
        ck_assert(r == EEVP_OK || r == EEVP_ERECORD || r == EEVP_ENONFINITE);
        eevp_step_abandon(m.ctx[0]);
        ck_assert_int_eq(eevp_step_begin(m.ctx[0], 1, NULL), EEVP_OK);
        ck_assert_int_eq(eevp_shard_layer(m.ctx[0], 0, hid, D, 1, NULL, m.rec[0], m.cap, &nx),
                         EEVP_OK);
        /* rec[1]'s step count matches again only if both begin anew */
        eevp_step_abandon(m.ctx[1]);
        ck_assert_int_eq(eevp_step_begin(m.ctx[1], 1, NULL), EEVP_OK);
        ck_assert_int_eq(eevp_shard_layer(m.ctx[1], 0, hid, D, 1, NULL, m.rec[1], m.cap, &nx),
                         EEVP_OK);
    }
    ck_assert_int_gt(nerr, size[0] / 2);
    /* Another K, another P: records of another shape. */
    c.k = 9;
    set_options(&o, &c, 1);
    sim_open(&m2, 3, 70, &o, 0, 4, 0);
    for (i = 0; i < 3; i++) {
        int64_t sz;
        ck_assert_int_eq(eevp_step_begin(m2.ctx[i], 1, NULL), EEVP_OK);
        ck_assert_int_eq(eevp_shard_layer(m2.ctx[i], 0, hid, D, 1, NULL, m2.rec[i], m2.cap,
                                          &sz),
                         EEVP_OK);
        if (sz == size[0]) {
            memcpy(acc, m.rec[0], (size_t)size[0]);
            ck_assert_int_eq(eevp_shard_merge(acc, m2.rec[i], size[0]), EEVP_ERECORD);
        }
    }
    free(acc);
    free(bad);
    sim_close(&m2);
    sim_close(&m);
}
END_TEST

static int decide_never(void *state, const eevp_exit_view *v, float *conf, int32_t *ex)
{
    (void)state;
    (void)v;
    (void)ex;
    *conf = 0.0f;
    return 0;
}

/* What a shard context refuses, with a reason. */
START_TEST(test_shard_refusals)
{
    float W[10 * D];
    eevp_head *h;
    eevp_ctx *ctx = NULL;
    eevp_ctx_options o;
    eevp_shard_options so = EEVP_SHARD_OPTIONS_INIT;
    eevp_criterion_vtbl vt;
    char msg[256];
    uint32_t seed = 1;
    int32_t ids[2] = {1, 2};
    memset(&vt, 0, sizeof vt);
    vt.struct_size = sizeof vt;
    fill_random(W, 10 * D, &seed, -1.0f, 1.0f);
    h = make_head(W, 0, 10, NULL);
    eevp_ctx_options_init(&o);
    o.n_layers = L;
    o.k = 4;
    so.total_vocab = 20;
    so.n_shards = 2;
    ck_assert_int_eq(eevp_ctx_create_shard(&ctx, h, &o, NULL, msg, sizeof msg), EEVP_EINVAL);
    so.shard_index = 2;
    ck_assert_int_eq(eevp_ctx_create_shard(&ctx, h, &o, &so, msg, sizeof msg), EEVP_ERANGE);
    so.shard_index = 0;
    so.total_vocab = 5; /* rows beyond the vocabulary */
    ck_assert_int_eq(eevp_ctx_create_shard(&ctx, h, &o, &so, msg, sizeof msg), EEVP_ERANGE);
    so.total_vocab = 20;
    so.top_k = 3;
    ck_assert_int_eq(eevp_ctx_create_shard(&ctx, h, &o, &so, msg, sizeof msg), EEVP_ERANGE);
    so.top_k = 0;
    o.n_always = 2;
    o.always_ids = ids;
    ck_assert_int_eq(eevp_ctx_create_shard(&ctx, h, &o, &so, msg, sizeof msg), EEVP_EINVAL);
    ck_assert_ptr_nonnull(strstr(msg, "always"));
    o.n_always = 0;
    o.criterion = EEVP_CRITERION_JS;
    o.k = 0;
    ck_assert_int_eq(eevp_ctx_create_shard(&ctx, h, &o, &so, msg, sizeof msg), EEVP_EINVAL);
    ck_assert_ptr_nonnull(strstr(msg, "JS"));
    ck_assert_ptr_null(ctx);
    o.criterion = EEVP_CRITERION_TOP2_GAP;
    o.k = 4;
    so.struct_size = 4;
    ck_assert_int_eq(eevp_ctx_create_shard(&ctx, h, &o, &so, msg, sizeof msg), EEVP_ESTRUCT);
    so.struct_size = sizeof so;
    ck_assert_int_eq(eevp_ctx_create_shard(&ctx, h, &o, &so, msg, sizeof msg), EEVP_OK);
    /* A custom criterion on logits would see a full-vocabulary layer. */
    vt.needs = EEVP_NEEDS_LOGITS;
    vt.decide = decide_never;
    ck_assert_int_eq(eevp_ctx_set_criterion(ctx, &vt, NULL), EEVP_EINVAL);
    ck_assert_ptr_nonnull(strstr(eevp_ctx_errmsg(ctx), "custom"));
    ck_assert_int_eq(eevp_step_begin(ctx, 1, NULL), EEVP_OK);
    ck_assert_int_eq(eevp_step_layer(ctx, 0, W, D, 1, NULL), EEVP_ESTATE);
    ck_assert_int_lt(eevp_shard_record_capacity(NULL), 0);
    eevp_ctx_free(ctx);
    /* The shard API on an unsharded context. */
    ck_assert_int_eq(eevp_ctx_create(&ctx, h, &o, msg, sizeof msg), EEVP_OK);
    ck_assert_int_eq(eevp_shard_record_capacity(ctx), EEVP_EINVAL);
    eevp_ctx_free(ctx);
    eevp_head_free(h);
}
END_TEST

Suite *make_shard_suite(void)
{
    Suite *s = suite_create("shard");
    TCase *tc = tcase_create("shard");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_shard_matches_unsharded);
    tcase_add_test(tc, test_merge_any_tree);
    tcase_add_test(tc, test_nan_row_same_error_everywhere);
    tcase_add_test(tc, test_records_disagree);
    tcase_add_test(tc, test_malformed_records);
    tcase_add_test(tc, test_shard_refusals);
    suite_add_tcase(s, tc);
    return s;
}
