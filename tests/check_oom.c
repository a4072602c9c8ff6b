/* SPDX-License-Identifier: MIT */
/*
 * check_oom.c - out-of-memory torture through the allocator hook: fail the
 * Nth allocation for every N until creation succeeds; every failure must
 * be a clean EEVP_ENOMEM with nothing leaked.  And the steady state: a
 * whole step sequence allocates nothing.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eevp.h"
#include "ref.h"

Suite *make_oom_suite(void);

#define MAX_TRIES 1000

/* ------------------------------------------------------------------------ */
/* Head creation                                                            */
/* ------------------------------------------------------------------------ */

typedef struct hcfg {
    const char *name;
    uint32_t flags;
    int64_t V, d, stride;
    int norm, nw, nb, bias;
} hcfg;

static const hcfg hcfgs[] = {
    { "borrowed plain", 0, 50, 16, 16, EEVP_NORM_NONE, 0, 0, 0 },
    { "borrowed rms+bias", 0, 50, 16, 20, EEVP_NORM_RMS, 1, 0, 1 },
    { "copy plain", EEVP_HEAD_COPY, 50, 16, 16, EEVP_NORM_NONE, 0, 0, 0 },
    { "copy layer+bias, strided", EEVP_HEAD_COPY, 77, 9, 13, EEVP_NORM_LAYER, 1, 1, 1 },
    { "copy rms, no simd", EEVP_HEAD_COPY | EEVP_HEAD_NO_SIMD, 33, 5, 5, EEVP_NORM_RMS, 0, 0,
      1 },
};
#define N_HCFG ((int)(sizeof hcfgs / sizeof hcfgs[0]))

typedef struct hdata {
    float *W, *nw, *nb, *bias;
    eevp_head_options o;
} hdata;

static void hdata_init(hdata *d, const hcfg *c, uint32_t seed)
{
    memset(d, 0, sizeof *d);
    d->W = malloc((size_t)(c->V * c->stride) * sizeof(float));
    ck_assert_ptr_nonnull(d->W);
    fill_random(d->W, c->V * c->stride, &seed, -1, 1);
    if (c->nw) {
        d->nw = malloc((size_t)c->d * sizeof(float));
        fill_random(d->nw, c->d, &seed, 0.5f, 1.5f);
    }
    if (c->nb) {
        d->nb = malloc((size_t)c->d * sizeof(float));
        fill_random(d->nb, c->d, &seed, -0.5f, 0.5f);
    }
    if (c->bias) {
        d->bias = malloc((size_t)c->V * sizeof(float));
        fill_random(d->bias, c->V, &seed, -1, 1);
        d->bias[3] = -INFINITY;
    }
    eevp_head_options_init(&d->o);
    d->o.flags = c->flags;
    d->o.n_vocab = c->V;
    d->o.dim = c->d;
    d->o.row_stride = c->stride;
    d->o.weights = d->W;
    d->o.norm = c->norm;
    d->o.norm_weight = d->nw;
    d->o.norm_bias = d->nb;
    d->o.logit_bias = d->bias;
}

static void hdata_free(hdata *d)
{
    free(d->W);
    free(d->nw);
    free(d->nb);
    free(d->bias);
}

/* The head computes what the reference says (so a "successful" creation
 * after failures is a usable head). */
static void head_works(const eevp_head *h, const hcfg *c, const hdata *d)
{
    ref_head rh = { c->V, c->d, c->stride, 0, d->W, c->norm, (double)d->o.norm_eps,
                    d->nw, d->nb, d->bias, 1, 0 };
    float *x = malloc((size_t)c->d * sizeof(float));
    float *z = malloc((size_t)c->V * sizeof(float));
    double *zr = malloc((size_t)c->V * sizeof(double));
    double *as = malloc((size_t)c->V * sizeof(double));
    int64_t ws = eevp_head_workspace_size(h, 1);
    void *work = canary_alloc_bytes((size_t)(ws > 0 ? ws : 0));
    uint32_t seed = 3;
    int64_t v;

    ck_assert(x && z && zr && as && ws >= 0);
    fill_random(x, c->d, &seed, -1, 1);
    ck_assert_int_eq(eevp_head_logits(h, 1, x, c->d, z, c->V, work), EEVP_OK);
    ref_logits(&rh, x, zr, as);
    for (v = 0; v < c->V; v++)
        ck_assert_msg(ref_close(z[v], zr[v], c->d, as[v]), "%s: logit %lld", c->name,
                      (long long)v);
    canary_free_bytes(work);
    free(x);
    free(z);
    free(zr);
    free(as);
}

START_TEST(test_oom_head)
{
    const hcfg *c = &hcfgs[_i];
    hdata d;
    test_alloc t;
    eevp_allocator a;
    eevp_head *h = NULL;
    int64_t n, baseline;
    char msg[200];
    int rc;

    hdata_init(&d, c, 100u + (uint32_t)_i);
    /* How many allocations a successful creation makes. */
    memset(&t, 0, sizeof t);
    a = test_allocator(&t);
    d.o.allocator = &a;
    ck_assert_int_eq(eevp_head_create(&h, &d.o, NULL, 0), EEVP_OK);
    baseline = t.n_calls;
    ck_assert_msg(baseline >= 1, "%s: the head allocated nothing through its hook", c->name);
    eevp_head_free(h);
    ck_assert_int_eq(t.live, 0);

    for (n = 1; n <= MAX_TRIES; n++) {
        memset(&t, 0, sizeof t);
        t.fail_at = n;
        a = test_allocator(&t);
        d.o.allocator = &a;
        h = (eevp_head *)&t; /* must become NULL on failure */
        memset(msg, 'x', sizeof msg);
        rc = eevp_head_create(&h, &d.o, msg, sizeof msg);
        if (rc == EEVP_OK) {
            ck_assert_msg(t.n_calls < n, "%s: success although allocation %lld failed",
                          c->name, (long long)n);
            break;
        }
        ck_assert_msg(rc == EEVP_ENOMEM, "%s: fail_at %lld gave %d (%s)", c->name, (long long)n,
                      rc, eevp_strerror(rc));
        ck_assert_msg(t.n_calls >= n, "%s: ENOMEM without a failed allocation", c->name);
        ck_assert_msg(h == NULL, "%s: fail_at %lld: *out not NULL", c->name, (long long)n);
        ck_assert_msg(t.live == 0 && t.bytes_live == 0,
                      "%s: fail_at %lld leaked %lld blocks (%lld bytes)", c->name, (long long)n,
                      (long long)t.live, (long long)t.bytes_live);
        ck_assert_msg(memchr(msg, '\0', sizeof msg) && msg[0] != '\0', "%s: no message",
                      c->name);
    }
    ck_assert_msg(n == baseline + 1, "%s: succeeded at fail_at %lld, baseline %lld calls",
                  c->name, (long long)n, (long long)baseline);
    ck_assert_ptr_nonnull(h);
    ck_assert_int_eq(eevp_head_memory(h), t.bytes_live);
    head_works(h, c, &d);
    eevp_head_free(h);
    ck_assert_int_eq(t.live, 0);
    ck_assert_int_eq(t.bytes_live, 0);
    hdata_free(&d);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Context creation                                                         */
/* ------------------------------------------------------------------------ */

typedef struct ccfg {
    const char *name;
    int head_bias;
    int32_t L, batch, k, f, i, p, crit, final_, schedule, n_threads;
} ccfg;

static const ccfg ccfgs[] = {
    { "top2 default", 0, 6, 1, 8, 0, 1, -1, EEVP_CRITERION_TOP2_GAP, EEVP_FINAL_FULL,
      EEVP_SCHEDULE_CONSTANT, 0 },
    { "js, batch 4, bias", 1, 8, 4, 8, 2, 2, 1, EEVP_CRITERION_JS, EEVP_FINAL_FULL,
      EEVP_SCHEDULE_CONSTANT, 0 },
    { "saturation", 0, 5, 3, 8, 1, 1, -1, EEVP_CRITERION_SATURATION, EEVP_FINAL_FULL,
      EEVP_SCHEDULE_CONSTANT, 0 },
    { "stability, pruned final, calm", 1, 7, 2, 5, 1, 2, 0, EEVP_CRITERION_STABILITY,
      EEVP_FINAL_PRUNED, EEVP_SCHEDULE_CALM, 0 },
    { "entropy, no pruning", 1, 4, 5, 0, 0, 1, -1, EEVP_CRITERION_ENTROPY, EEVP_FINAL_FULL,
      EEVP_SCHEDULE_CONSTANT, 0 },
    { "maxprob, k >= V", 0, 3, 2, 1000, 1, 1, -1, EEVP_CRITERION_MAX_PROB, EEVP_FINAL_PRUNED,
      EEVP_SCHEDULE_CONSTANT, 0 },
    /* Worker threads: the pool's blocks are allocations of the context too. */
    { "js, batch 4, bias, 3 threads", 1, 8, 4, 8, 2, 2, 1, EEVP_CRITERION_JS,
      EEVP_FINAL_FULL, EEVP_SCHEDULE_CONSTANT, 3 },
    { "top2, 2 threads", 0, 6, 1, 8, 0, 1, -1, EEVP_CRITERION_TOP2_GAP, EEVP_FINAL_PRUNED,
      EEVP_SCHEDULE_CONSTANT, 2 },
};
#define N_CCFG ((int)(sizeof ccfgs / sizeof ccfgs[0]))

enum { CV = 60, CD = 12 };

static eevp_head *plain_head(float **Wp, float **bp, int with_bias, const eevp_allocator *a)
{
    uint32_t seed = 71;
    float *W = malloc(CV * CD * sizeof(float));
    float *b = NULL;
    eevp_head_options o = EEVP_HEAD_OPTIONS_INIT;
    eevp_head *h = NULL;

    ck_assert_ptr_nonnull(W);
    fill_random(W, CV * CD, &seed, -1, 1);
    if (with_bias) {
        b = malloc(CV * sizeof(float));
        ck_assert_ptr_nonnull(b);
        fill_random(b, CV, &seed, -1, 1);
        b[5] = -INFINITY;
    }
    o.n_vocab = CV;
    o.dim = CD;
    o.weights = W;
    o.logit_bias = b;
    o.norm = EEVP_NORM_RMS;
    o.allocator = a;
    ck_assert_int_eq(eevp_head_create(&h, &o, NULL, 0), EEVP_OK);
    *Wp = W;
    *bp = b;
    return h;
}

static eevp_ctx_options cfg_opts(const ccfg *c, const eevp_allocator *a)
{
    eevp_ctx_options o = EEVP_CTX_OPTIONS_INIT;
    o.n_layers = c->L;
    o.max_batch = c->batch;
    o.k = c->k;
    o.first_layer = c->f;
    o.interval = c->i;
    o.prune_layer = c->p;
    o.criterion = c->crit;
    o.final_policy = c->final_;
    o.schedule = c->schedule;
    o.threshold = 0.6f;
    o.allocator = a;
    o.n_threads = c->n_threads;
    return o;
}

/* Hidden states for every layer and sequence: L x batch rows of CD + 2. */
#define HLD (CD + 2)
static float *make_hidden(const ccfg *c, uint32_t seed)
{
    size_t n = (size_t)c->L * (size_t)c->batch * HLD;
    float *hid = malloc(n * sizeof(float));
    ck_assert_ptr_nonnull(hid);
    fill_random(hid, (int64_t)n, &seed, -3, 3);
    return hid;
}

/* One full step through every layer; returns the number of resolved
 * sequences. */
static int run_step(eevp_ctx *ctx, const ccfg *c, const float *hid, int32_t n_seq,
                    const int32_t *pos)
{
    int32_t l, s;
    int resolved = 0;

    ck_assert_int_eq(eevp_step_begin(ctx, n_seq, pos), EEVP_OK);
    for (l = 0; l < c->L; l++) {
        const float *H = hid + (size_t)l * (size_t)c->batch * HLD;
        int rc;
        if (eevp_step_n_running(ctx) == 0)
            break;
        rc = eevp_step_layer(ctx, l, H, HLD, n_seq, NULL);
        ck_assert_msg(rc == EEVP_OK, "%s: step_layer %d: %d (%s)", c->name, l, rc,
                      eevp_ctx_errmsg(ctx));
    }
    ck_assert_int_eq(eevp_step_n_running(ctx), 0);
    ck_assert_int_eq(eevp_step_end(ctx), EEVP_OK);
    for (s = 0; s < n_seq; s++) {
        eevp_result r;
        r.struct_size = sizeof r;
        ck_assert_int_eq(eevp_step_result(ctx, s, &r), EEVP_OK);
        ck_assert(r.reason == EEVP_REASON_CONFIDENT || r.reason == EEVP_REASON_LAST_LAYER);
        ck_assert(r.token >= 0 && r.token < CV);
        resolved++;
    }
    return resolved;
}

START_TEST(test_oom_ctx)
{
    const ccfg *c = &ccfgs[_i];
    float *W, *b;
    eevp_head *h = plain_head(&W, &b, c->head_bias, NULL);
    float *hid = make_hidden(c, 500u + (uint32_t)_i);
    test_alloc t;
    eevp_allocator a;
    eevp_ctx_options o;
    eevp_ctx *ctx = NULL;
    int64_t n, baseline, est;
    char msg[200];
    int rc;

    memset(&t, 0, sizeof t);
    a = test_allocator(&t);
    o = cfg_opts(c, &a);
    ck_assert_int_eq(eevp_ctx_create(&ctx, h, &o, NULL, 0), EEVP_OK);
    baseline = t.n_calls;
    ck_assert_msg(baseline >= 1, "%s: the context allocated nothing through its hook", c->name);
    eevp_ctx_free(ctx);
    ck_assert_int_eq(t.live, 0);

    for (n = 1; n <= MAX_TRIES; n++) {
        memset(&t, 0, sizeof t);
        t.fail_at = n;
        a = test_allocator(&t);
        o = cfg_opts(c, &a);
        ctx = (eevp_ctx *)&t;
        memset(msg, 'x', sizeof msg);
        rc = eevp_ctx_create(&ctx, h, &o, msg, sizeof msg);
        if (rc == EEVP_OK)
            break;
        ck_assert_msg(rc == EEVP_ENOMEM, "%s: fail_at %lld gave %d (%s)", c->name, (long long)n,
                      rc, eevp_strerror(rc));
        ck_assert_msg(t.n_calls >= n, "%s: ENOMEM without a failed allocation", c->name);
        ck_assert_msg(ctx == NULL, "%s: fail_at %lld: *out not NULL", c->name, (long long)n);
        ck_assert_msg(t.live == 0 && t.bytes_live == 0,
                      "%s: fail_at %lld leaked %lld blocks (%lld bytes)", c->name, (long long)n,
                      (long long)t.live, (long long)t.bytes_live);
        ck_assert_msg(memchr(msg, '\0', sizeof msg) && msg[0] != '\0', "%s: no message",
                      c->name);
    }
    ck_assert_msg(n == baseline + 1, "%s: succeeded at fail_at %lld, baseline %lld calls",
                  c->name, (long long)n, (long long)baseline);
    ck_assert_int_eq(eevp_ctx_memory_estimate(&est, h, &o), EEVP_OK);
    ck_assert_int_eq(eevp_ctx_memory(ctx), est);
    ck_assert_int_eq(t.bytes_live, est);
    /* The context that finally came up works. */
    ck_assert_int_eq(run_step(ctx, c, hid, c->batch, NULL), c->batch);
    eevp_ctx_free(ctx);
    ck_assert_int_eq(t.live, 0);
    ck_assert_int_eq(t.bytes_live, 0);
    eevp_head_free(h);
    free(W);
    free(b);
    free(hid);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Steps allocate nothing                                                   */
/* ------------------------------------------------------------------------ */

static int custom_decide(void *state, const eevp_exit_view *v, float *confidence,
                         int32_t *exit_)
{
    (void)state;
    (void)exit_;
    *confidence = v->n > 0 ? (float)(v->top1_logit - v->top2_logit) / 10.0f : 0.5f;
    if (!(*confidence >= 0.0f))
        *confidence = 0.0f;
    if (*confidence > 1.0f)
        *confidence = 1.0f;
    return 0;
}

START_TEST(test_steps_no_alloc)
{
    const ccfg *c = &ccfgs[_i % N_CCFG];
    int custom = _i >= N_CCFG;
    float *W, *b;
    test_alloc t;
    eevp_allocator a;
    eevp_head *h;
    float *hid = make_hidden(c, 900u + (uint32_t)_i);
    eevp_ctx_options o;
    eevp_ctx *ctx = NULL;
    int64_t calls, hist[16];
    int32_t pos[8] = { 0, 5, 100, 3000, 1, 2, 7, 9 };
    float cz[CV], lambda;
    int32_t cid[CV], n_out, s, l;
    eevp_stats st;
    int step;

    memset(&t, 0, sizeof t);
    a = test_allocator(&t);
    h = plain_head(&W, &b, c->head_bias, &a);
    o = cfg_opts(c, &a);
    ck_assert_int_eq(eevp_ctx_create(&ctx, h, &o, NULL, 0), EEVP_OK);
    if (custom) {
        eevp_criterion_vtbl vt;
        memset(&vt, 0, sizeof vt);
        vt.struct_size = sizeof vt;
        vt.name = "custom";
        vt.needs = EEVP_NEEDS_LOGITS | EEVP_NEEDS_PREV_HIDDEN;
        vt.decide = custom_decide;
        ck_assert_int_eq(eevp_ctx_set_criterion(ctx, &vt, NULL), EEVP_OK);
    }
    calls = t.n_calls;

    for (step = 0; step < 4; step++) {
        int32_t n_seq = step == 1 && c->batch > 1 ? c->batch - 1 : c->batch;
        ck_assert_int_eq(run_step(ctx, c, hid, n_seq, step >= 2 ? pos : NULL), n_seq);
        for (s = 0; s < n_seq; s++)
            ck_assert_int_eq(eevp_step_candidates(ctx, s, CV, cz, cid, &n_out), EEVP_OK);
        st.struct_size = sizeof st;
        ck_assert_int_eq(eevp_ctx_stats(ctx, &st), EEVP_OK);
        ck_assert_int_eq(eevp_ctx_exit_histogram(ctx, hist, 16), EEVP_OK);
        ck_assert_int_eq(eevp_ctx_threshold(ctx, 17, &lambda), EEVP_OK);
        for (l = 0; l < c->L; l++)
            ck_assert(eevp_ctx_layer_required(ctx, l) >= 0);
        (void)eevp_ctx_memory(ctx);
        (void)eevp_ctx_errmsg(ctx);
    }
    /* Abandon, reset, stats reset. */
    ck_assert_int_eq(eevp_step_begin(ctx, 1, NULL), EEVP_OK);
    /* Skipping the first checked layer: an error, which must not allocate
     * either (every configuration here has f < L-1). */
    ck_assert_int_eq(eevp_step_layer(ctx, c->L - 1, hid, HLD, 1, NULL), EEVP_ESTATE);
    ck_assert_int_eq(eevp_step_abandon(ctx), EEVP_OK);
    ck_assert_int_eq(eevp_step_begin(ctx, 1, NULL), EEVP_OK);
    ck_assert_int_eq(eevp_ctx_reset(ctx), EEVP_OK);
    ck_assert_int_eq(eevp_ctx_stats_reset(ctx), EEVP_OK);
    ck_assert_int_eq(run_step(ctx, c, hid, 1, NULL), 1);

    /* The kernels on the same head. */
    {
        int64_t ws = eevp_head_workspace_size(h, 2);
        void *work = canary_alloc_bytes((size_t)ws);
        float *z = malloc(2 * CV * sizeof(float));
        float rows[4 * CD], rb[4];
        int32_t ids[4] = { 0, 7, 59, 7 }, tk[5];
        int64_t tws = eevp_topk_workspace_size(CV, 5);
        void *twork = canary_alloc_bytes((size_t)tws);

        ck_assert_int_eq(eevp_head_logits(h, 2, hid, HLD, z, CV, work), EEVP_OK);
        ck_assert_int_eq(eevp_head_gather(h, ids, 4, rows, CD, rb), EEVP_OK);
        ck_assert_int_eq(eevp_head_pruned_logits(h, 4, rows, CD, rb, 2, hid, HLD, z, CV, work),
                         EEVP_OK);
        ck_assert_int_eq(eevp_topk(z, CV, 5, 0, tk, NULL, twork), EEVP_OK);
        canary_free_bytes(work);
        canary_free_bytes(twork);
        free(z);
    }

    ck_assert_msg(t.n_calls == calls, "%s%s: %lld allocations during steps", c->name,
                  custom ? " (custom)" : "", (long long)(t.n_calls - calls));
    eevp_ctx_free(ctx);
    eevp_head_free(h);
    ck_assert_int_eq(t.live, 0);
    ck_assert_int_eq(t.bytes_live, 0);
    free(W);
    free(b);
    free(hid);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Creation with every option that adds to the allocations                  */
/* ------------------------------------------------------------------------ */

/* Head storage and screening: half-precision W (copied as half), the int8
 * screening copy (its own allocation). */
typedef struct h2cfg {
    const char *name;
    int32_t weight_type, screen_mult;
    uint32_t flags;
} h2cfg;

static const h2cfg h2cfgs[] = {
    { "f16 borrowed", EEVP_WEIGHT_F16, 0, 0 },
    { "bf16 copied", EEVP_WEIGHT_BF16, 0, EEVP_HEAD_COPY },
    { "f32 screen x2", EEVP_WEIGHT_F32, 2, 0 },
    { "f32 copied, screen x4", EEVP_WEIGHT_F32, 4, EEVP_HEAD_COPY },
    { "f16 copied, screen x3", EEVP_WEIGHT_F16, 3, EEVP_HEAD_COPY },
};
#define N_H2CFG ((int)(sizeof h2cfgs / sizeof h2cfgs[0]))

static int h2_create(eevp_head **h, const h2cfg *c, const float *W, const uint16_t *Wh,
                     const eevp_allocator *a, char *msg, size_t msg_size)
{
    eevp_head_options o = EEVP_HEAD_OPTIONS_INIT;
    o.n_vocab = CV;
    o.dim = CD;
    o.flags = c->flags;
    o.weight_type = c->weight_type;
    o.weights = c->weight_type == EEVP_WEIGHT_F32 ? W : NULL;
    o.weights_half = c->weight_type == EEVP_WEIGHT_F32 ? NULL : Wh;
    o.screen_mult = c->screen_mult;
    o.norm = EEVP_NORM_RMS;
    o.allocator = a;
    return eevp_head_create(h, &o, msg, msg_size);
}

START_TEST(test_oom_head_storage)
{
    const h2cfg *c = &h2cfgs[_i];
    float W[CV * CD], x[CD], z0[CV], z1[CV];
    uint16_t Wh[CV * CD];
    uint32_t seed = 300u + (uint32_t)_i;
    test_alloc t;
    eevp_allocator a;
    eevp_head *h = NULL, *plain = NULL;
    int64_t n, baseline, ws;
    void *work;
    char msg[200];
    int rc, j;

    fill_random(W, CV * CD, &seed, -1, 1);
    fill_random(x, CD, &seed, -1, 1);
    for (j = 0; j < CV * CD; j++) /* small halves of either kind: 1 + j mod 64 steps */
        Wh[j] = (uint16_t)(c->weight_type == EEVP_WEIGHT_BF16 ? 0x3f80u + (j % 64)
                                                               : 0x3c00u + (j % 64));
    /* The right answer: the same head created with malloc/free. */
    ck_assert_int_eq(h2_create(&plain, c, W, Wh, NULL, NULL, 0), EEVP_OK);
    ws = eevp_head_workspace_size(plain, 1);
    work = canary_alloc_bytes((size_t)ws);
    ck_assert_int_eq(eevp_head_logits(plain, 1, x, CD, z0, CV, work), EEVP_OK);

    memset(&t, 0, sizeof t);
    a = test_allocator(&t);
    ck_assert_int_eq(h2_create(&h, c, W, Wh, &a, NULL, 0), EEVP_OK);
    baseline = t.n_calls;
    eevp_head_free(h);
    ck_assert_int_eq(t.live, 0);
    for (n = 1; n <= MAX_TRIES; n++) {
        memset(&t, 0, sizeof t);
        t.fail_at = n;
        a = test_allocator(&t);
        h = (eevp_head *)&t;
        rc = h2_create(&h, c, W, Wh, &a, msg, sizeof msg);
        if (rc == EEVP_OK)
            break;
        ck_assert_msg(rc == EEVP_ENOMEM, "%s: fail_at %lld gave %d", c->name, (long long)n, rc);
        ck_assert_ptr_null(h);
        ck_assert_msg(t.live == 0, "%s: fail_at %lld leaked %lld blocks", c->name,
                      (long long)n, (long long)t.live);
        ck_assert(msg[0] != '\0');
    }
    ck_assert_msg(n == baseline + 1, "%s: succeeded at %lld, baseline %lld", c->name,
                  (long long)n, (long long)baseline);
    ck_assert_int_eq(eevp_head_memory(h), t.bytes_live);
    ck_assert_int_eq(eevp_head_logits(h, 1, x, CD, z1, CV, work), EEVP_OK);
    ck_assert(memcmp(z0, z1, sizeof z0) == 0);
    if (c->screen_mult) {
        int32_t ids0[4], ids1[4];
        int64_t sws = eevp_head_screen_workspace_size(h, 4);
        void *sw = canary_alloc_bytes((size_t)sws);
        ck_assert_int_eq(eevp_head_screen(plain, x, 4, ids0, NULL, sw), EEVP_OK);
        ck_assert_int_eq(eevp_head_screen(h, x, 4, ids1, NULL, sw), EEVP_OK);
        ck_assert(memcmp(ids0, ids1, sizeof ids0) == 0);
        canary_free_bytes(sw);
    }
    eevp_head_free(h);
    eevp_head_free(plain);
    ck_assert_int_eq(t.live, 0);
    canary_free_bytes(work);
}
END_TEST

/* Contexts with the candidate-set policies and flags: the lists are copied
 * at creation.  After every failed attempt the head is untouched; the
 * context that finally comes up decodes exactly like one created with
 * malloc/free (the right answer, compared bit for bit). */
typedef struct pcfg {
    const char *name;
    int n_always, static_mode, n_static, reprune_layer, reprune_every;
    float mass;
    uint32_t flags;
} pcfg;

static const pcfg pcfgs[] = {
    { "always ids", 3, EEVP_STATIC_NONE, 0, -1, 0, 0.0f, 0 },
    { "static union", 0, EEVP_STATIC_UNION, 5, -1, 0, 0.0f, 0 },
    { "static only + always", 2, EEVP_STATIC_ONLY, 6, -1, 0, 0.0f, 0 },
    { "re-pruning, adaptive K", 0, EEVP_STATIC_NONE, 0, 3, 2, 0.8f, 0 },
    { "batch invariant, exact exit", 1, EEVP_STATIC_UNION, 2, -1, 0, 0.0f,
      EEVP_CTX_BATCH_INVARIANT | EEVP_CTX_EXACT_EXIT },
};
#define N_PCFG ((int)(sizeof pcfgs / sizeof pcfgs[0]))

static eevp_ctx_options pol_opts(const pcfg *p, const eevp_allocator *a, const int32_t *always,
                                 const int32_t *statics)
{
    static const ccfg base = { "policies", 1, 6, 3, 8, 1, 1, 0, EEVP_CRITERION_TOP2_GAP,
                               EEVP_FINAL_FULL, EEVP_SCHEDULE_CONSTANT, 0 };
    eevp_ctx_options o = cfg_opts(&base, a);
    o.always_ids = p->n_always ? always : NULL;
    o.n_always = p->n_always;
    o.static_mode = p->static_mode;
    o.static_ids = p->n_static ? statics : NULL;
    o.n_static = p->n_static;
    o.reprune_layer = p->reprune_layer;
    o.reprune_every = p->reprune_every;
    o.adaptive_mass = p->mass;
    o.k_min = 2;
    o.flags = p->flags;
    return o;
}

static void step_results(eevp_ctx *ctx, const float *hid, int32_t L, int32_t n,
                         eevp_result *res)
{
    int32_t l, s;
    ck_assert_int_eq(eevp_step_begin(ctx, n, NULL), EEVP_OK);
    for (l = 0; l < L && eevp_step_n_running(ctx) > 0; l++)
        ck_assert_int_eq(eevp_step_layer(ctx, l, hid + (size_t)l * (size_t)n * HLD, HLD, n,
                                         NULL), EEVP_OK);
    ck_assert_int_eq(eevp_step_end(ctx), EEVP_OK);
    for (s = 0; s < n; s++) {
        memset(&res[s], 0, sizeof res[s]);
        res[s].struct_size = sizeof res[s];
        ck_assert_int_eq(eevp_step_result(ctx, s, &res[s]), EEVP_OK);
    }
}

START_TEST(test_oom_ctx_policies)
{
    const pcfg *p = &pcfgs[_i];
    const int32_t always[3] = { 7, 59, 3 }, statics[6] = { 1, 2, 58, 40, 41, 2 };
    float *W, *b;
    eevp_head *h = plain_head(&W, &b, 1, NULL);
    float hid[6 * 3 * HLD];
    uint32_t seed = 77u + (uint32_t)_i;
    test_alloc t;
    eevp_allocator a;
    eevp_ctx_options o;
    eevp_ctx *ctx = NULL, *ref = NULL;
    eevp_result want[3], got[3];
    int64_t n, baseline, est;
    int rc, s;

    fill_random(hid, 6 * 3 * HLD, &seed, -3, 3);
    o = pol_opts(p, NULL, always, statics);
    ck_assert_int_eq(eevp_ctx_create(&ref, h, &o, NULL, 0), EEVP_OK);
    step_results(ref, hid, 6, 3, want);

    memset(&t, 0, sizeof t);
    a = test_allocator(&t);
    o = pol_opts(p, &a, always, statics);
    ck_assert_int_eq(eevp_ctx_create(&ctx, h, &o, NULL, 0), EEVP_OK);
    baseline = t.n_calls;
    eevp_ctx_free(ctx);
    for (n = 1; n <= MAX_TRIES; n++) {
        memset(&t, 0, sizeof t);
        t.fail_at = n;
        a = test_allocator(&t);
        o = pol_opts(p, &a, always, statics);
        ctx = (eevp_ctx *)&t;
        rc = eevp_ctx_create(&ctx, h, &o, NULL, 0);
        if (rc == EEVP_OK)
            break;
        ck_assert_msg(rc == EEVP_ENOMEM, "%s: fail_at %lld gave %d", p->name, (long long)n, rc);
        ck_assert_ptr_null(ctx);
        ck_assert_msg(t.live == 0, "%s: fail_at %lld leaked", p->name, (long long)n);
    }
    ck_assert_int_eq(n, baseline + 1);
    ck_assert_int_eq(eevp_ctx_memory_estimate(&est, h, &o), EEVP_OK);
    ck_assert_int_eq(t.bytes_live, est);
    /* Two steps, then a reset and a third: all the right answer. */
    for (rc = 0; rc < 3; rc++) {
        if (rc == 2)
            ck_assert_int_eq(eevp_ctx_reset(ctx), EEVP_OK);
        step_results(ctx, hid, 6, 3, got);
        for (s = 0; s < 3; s++)
            ck_assert_msg(got[s].token == want[s].token && got[s].layer == want[s].layer &&
                              got[s].reason == want[s].reason &&
                              memcmp(&got[s].confidence, &want[s].confidence, 4) == 0,
                          "%s: sequence %d differs from the malloc-created context", p->name, s);
    }
    eevp_ctx_free(ctx);
    eevp_ctx_free(ref);
    ck_assert_int_eq(t.live, 0);
    eevp_head_free(h);
    free(W);
    free(b);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Which entry points allocate: exactly the two creators                    */
/* ------------------------------------------------------------------------ */

/* Every public function other than eevp_head_create and eevp_ctx_create is
 * called here once, under an allocator that fails every request from then
 * on; none may ask it for memory.  The names called are then checked
 * against tests/symbols.txt, so a new entry point must be added here (or to
 * the creation sweeps above) before `make check` passes. */
#define MAX_SEEN 128
static const char *seen[MAX_SEEN];
static int n_seen;
#define CALLED(name) (n_seen < MAX_SEEN ? (void)(seen[n_seen++] = (name)) : (void)0)

static int crit_decide_noalloc(void *state, const eevp_exit_view *v, float *c, int32_t *e)
{
    (void)state;
    (void)v;
    (void)e;
    *c = 0.5f;
    return 0;
}

START_TEST(test_only_creators_allocate)
{
    float *W, *b;
    test_alloc t;
    eevp_allocator a;
    eevp_head *h, *hs = NULL;
    eevp_ctx *ctx = NULL;
    eevp_spec *spec = NULL;
    eevp_spec_options so2;
    eevp_spec_result sres;
    eevp_spec_stats sst;
    int32_t stok, smore, sseq = 0;
    eevp_ctx_options o, o2;
    eevp_head_options ho;
    eevp_criterion_vtbl vt;
    eevp_result r;
    eevp_stats st;
    float hid[3 * HLD], z[CV], lambda, Wf[CV * CD];
    int32_t ids[CV], n_out;
    int64_t est, hist[8], calls;
    void *work, *sw;
    FILE *fp;
    char line[128];
    int missing = 0, i;
    static const char *const creators[] = { "eevp_head_create", "eevp_ctx_create",
                                            "eevp_spec_create", "eevp_ctx_create_shard" };
    eevp_head *sh[2];
    eevp_ctx *shc[2];
    unsigned char *rec[2], *acc;
    int64_t cap, rsize[2];
    uint32_t seed = 5;

    memset(&t, 0, sizeof t);
    a = test_allocator(&t);
    h = plain_head(&W, &b, 1, &a);
    {
        h2cfg sc = { "screen", EEVP_WEIGHT_F32, 2, 0 };
        fill_random(Wf, CV * CD, &seed, -1, 1);
        ck_assert_int_eq(h2_create(&hs, &sc, Wf, NULL, &a, NULL, 0), EEVP_OK);
    }
    o = cfg_opts(&ccfgs[1], &a);
    ck_assert_int_eq(eevp_ctx_create(&ctx, h, &o, NULL, 0), EEVP_OK);
    {
        eevp_spec_options so = EEVP_SPEC_OPTIONS_INIT;
        so.allocator = &a;
        so.temperature = 1.0f;
        so.max_set = CV;
        so.n_layers = 4;
        ck_assert_int_eq(eevp_spec_create(&spec, h, &so, NULL, 0), EEVP_OK);
    }
    {
        /* Two shards of h's rows. */
        eevp_shard_options sso = EEVP_SHARD_OPTIONS_INIT;
        eevp_ctx_options sco;
        for (i = 0; i < 2; i++) {
            eevp_head_options hso = EEVP_HEAD_OPTIONS_INIT;
            hso.n_vocab = i ? CV - CV / 2 : CV / 2;
            hso.dim = CD;
            hso.weights = W + (i ? CV / 2 * CD : 0);
            hso.vocab_offset = i ? CV / 2 : 0;
            hso.logit_bias = b + (i ? CV / 2 : 0);
            hso.norm = EEVP_NORM_RMS;
            hso.allocator = &a;
            ck_assert_int_eq(eevp_head_create(&sh[i], &hso, NULL, 0), EEVP_OK);
            eevp_ctx_options_init(&sco);
            sco.n_layers = 4;
            sco.k = 5;
            sco.first_layer = 1;
            sco.threshold = 2.0f; /* never confident: every layer exchanges */
            sco.flags = EEVP_CTX_EXACT_EXIT;
            sco.allocator = &a;
            sso.shard_index = i;
            sso.n_shards = 2;
            sso.total_vocab = CV;
            ck_assert_int_eq(eevp_ctx_create_shard(&shc[i], sh[i], &sco, &sso, NULL, 0), EEVP_OK);
        }
        cap = eevp_shard_record_capacity(shc[0]);
        rec[0] = canary_alloc_bytes((size_t)cap);
        rec[1] = canary_alloc_bytes((size_t)cap);
        acc = canary_alloc_bytes((size_t)cap);
    }
    fill_random(hid, 3 * HLD, &seed, -1, 1);
    work = canary_alloc_bytes((size_t)eevp_head_workspace_size(h, 2));
    sw = canary_alloc_bytes((size_t)eevp_head_screen_workspace_size(hs, 4));
    calls = t.n_calls;
    t.fail_at = calls + 1; /* any request from here on fails */
    n_seen = 0;

    CALLED("eevp_version_number"); (void)eevp_version_number();
    CALLED("eevp_version_string"); (void)eevp_version_string();
    CALLED("eevp_strerror"); (void)eevp_strerror(EEVP_ENOMEM);
    CALLED("eevp_head_options_init"); ck_assert_int_eq(eevp_head_options_init(&ho), EEVP_OK);
    CALLED("eevp_ctx_options_init"); ck_assert_int_eq(eevp_ctx_options_init(&o2), EEVP_OK);
    CALLED("eevp_head_n_vocab"); ck_assert_int_eq(eevp_head_n_vocab(h), CV);
    CALLED("eevp_head_dim"); ck_assert_int_eq(eevp_head_dim(h), CD);
    CALLED("eevp_head_vocab_offset"); ck_assert_int_eq(eevp_head_vocab_offset(h), 0);
    CALLED("eevp_head_memory"); ck_assert_int_gt(eevp_head_memory(h), 0);
    /* The estimate takes the caller's allocator in opts and must not use it. */
    CALLED("eevp_ctx_memory_estimate"); ck_assert_int_eq(eevp_ctx_memory_estimate(&est, h, &o),
                                                         EEVP_OK);
    CALLED("eevp_ctx_memory"); ck_assert_int_eq(eevp_ctx_memory(ctx), est);
    CALLED("eevp_ctx_errmsg"); (void)eevp_ctx_errmsg(ctx);
    CALLED("eevp_ctx_layer_required"); ck_assert_int_ge(eevp_ctx_layer_required(ctx, 0), 0);
    CALLED("eevp_ctx_threshold"); ck_assert_int_eq(eevp_ctx_threshold(ctx, 3, &lambda), EEVP_OK);
    memset(&vt, 0, sizeof vt);
    vt.struct_size = sizeof vt;
    vt.needs = EEVP_NEEDS_LOGITS | EEVP_NEEDS_PREV_HIDDEN;
    vt.decide = crit_decide_noalloc;
    CALLED("eevp_ctx_set_criterion"); ck_assert_int_eq(eevp_ctx_set_criterion(ctx, &vt, NULL),
                                                       EEVP_OK);
    CALLED("eevp_step_begin"); ck_assert_int_eq(eevp_step_begin(ctx, 1, NULL), EEVP_OK);
    CALLED("eevp_step_layer");
    for (i = 0; i < ccfgs[1].L && eevp_step_n_running(ctx) > 0; i++)
        ck_assert_int_eq(eevp_step_layer(ctx, i, hid, HLD, 1, NULL), EEVP_OK);
    CALLED("eevp_step_n_running"); ck_assert_int_eq(eevp_step_n_running(ctx), 0);
    /* the verifier takes its draft from the finished step */
    CALLED("eevp_spec_options_init"); ck_assert_int_eq(eevp_spec_options_init(&so2), EEVP_OK);
    CALLED("eevp_spec_round"); ck_assert_int_eq(eevp_spec_round(spec, 0, 1u, 0), EEVP_OK);
    CALLED("eevp_spec_draft");
        ck_assert_int_eq(eevp_spec_draft(spec, 0, ctx, 0, &stok, &smore), EEVP_OK);
    CALLED("eevp_spec_add_draft"); ck_assert_int_eq(eevp_spec_add_draft(spec, 0, 3, 1), EEVP_OK);
    CALLED("eevp_spec_n_drafts"); ck_assert_int_ge(eevp_spec_n_drafts(spec, 0), 1);
    CALLED("eevp_step_end"); ck_assert_int_eq(eevp_step_end(ctx), EEVP_OK);
    {
        float srows[(EEVP_MAX_DRAFT + 1) * HLD];
        int32_t k;
        for (k = 0; k <= eevp_spec_n_drafts(spec, 0); k++)
            memcpy(srows + k * HLD, hid, HLD * sizeof(float));
        sres.struct_size = sizeof sres;
        CALLED("eevp_spec_verify");
            ck_assert_int_eq(eevp_spec_verify(spec, 1, &sseq, srows, HLD, &sres), EEVP_OK);
        ck_assert_int_eq(sres.status, EEVP_OK);
    }
    sst.struct_size = sizeof sst;
    CALLED("eevp_spec_stats_get"); ck_assert_int_eq(eevp_spec_stats_get(spec, &sst), EEVP_OK);
    CALLED("eevp_spec_layer_stats"); ck_assert_int_eq(eevp_spec_layer_stats(spec, hist, hist, 4),
                                                      EEVP_OK);
    CALLED("eevp_spec_stats_reset"); ck_assert_int_eq(eevp_spec_stats_reset(spec), EEVP_OK);
    CALLED("eevp_spec_memory"); ck_assert_int_gt(eevp_spec_memory(spec), 0);
    CALLED("eevp_spec_errmsg"); (void)eevp_spec_errmsg(spec);
    r.struct_size = sizeof r;
    CALLED("eevp_step_result"); ck_assert_int_eq(eevp_step_result(ctx, 0, &r), EEVP_OK);
    CALLED("eevp_step_candidates");
        ck_assert_int_eq(eevp_step_candidates(ctx, 0, CV, z, ids, &n_out), EEVP_OK);
    CALLED("eevp_step_abandon"); ck_assert_int_eq(eevp_step_abandon(ctx), EEVP_OK);
    st.struct_size = sizeof st;
    CALLED("eevp_ctx_stats"); ck_assert_int_eq(eevp_ctx_stats(ctx, &st), EEVP_OK);
    CALLED("eevp_ctx_exit_histogram"); ck_assert_int_eq(eevp_ctx_exit_histogram(ctx, hist, 8),
                                                        EEVP_OK);
    CALLED("eevp_ctx_set_size_histogram");
        ck_assert_int_eq(eevp_ctx_set_size_histogram(ctx, hist, 8), EEVP_OK);
    CALLED("eevp_ctx_stats_reset"); ck_assert_int_eq(eevp_ctx_stats_reset(ctx), EEVP_OK);
    CALLED("eevp_ctx_reset"); ck_assert_int_eq(eevp_ctx_reset(ctx), EEVP_OK);
    CALLED("eevp_head_workspace_size"); ck_assert_int_gt(eevp_head_workspace_size(h, 2), 0);
    CALLED("eevp_head_logits"); ck_assert_int_ne(eevp_head_logits(h, 2, hid, HLD, z, CV / 2, work),
                                                  EEVP_OK); /* an error allocates nothing either */
    ck_assert_int_eq(eevp_head_logits(h, 1, hid, HLD, z, CV, work), EEVP_OK);
    {
        float rows[4 * CD], rb[4];
        int32_t g[4] = { 0, 9, 59, 9 };
        CALLED("eevp_head_gather"); ck_assert_int_eq(eevp_head_gather(h, g, 4, rows, CD, rb),
                                                     EEVP_OK);
        CALLED("eevp_head_pruned_logits");
            ck_assert_int_eq(eevp_head_pruned_logits(h, 4, rows, CD, rb, 1, hid, HLD, z, 4, work),
                             EEVP_OK);
    }
    {
        int64_t tws = eevp_topk_workspace_size(CV, 5);
        void *tw = canary_alloc_bytes((size_t)tws);
        CALLED("eevp_topk_workspace_size");
        CALLED("eevp_topk"); ck_assert_int_eq(eevp_topk(z, CV, 5, 0, ids, NULL, tw), EEVP_OK);
        canary_free_bytes(tw);
    }
    CALLED("eevp_head_screen_workspace_size");
        ck_assert_int_gt(eevp_head_screen_workspace_size(hs, 4), 0);
    CALLED("eevp_head_screen"); ck_assert_int_eq(eevp_head_screen(hs, hid, 4, ids, z, sw), EEVP_OK);
    {
        eevp_shard_options sso2;
        int32_t l;
        CALLED("eevp_shard_options_init"); ck_assert_int_eq(eevp_shard_options_init(&sso2),
                                                            EEVP_OK);
        CALLED("eevp_shard_record_capacity");
            ck_assert_int_eq(eevp_shard_record_capacity(shc[1]), cap);
        for (i = 0; i < 2; i++)
            ck_assert_int_eq(eevp_step_begin(shc[i], 1, NULL), EEVP_OK);
        for (l = 0; l < 4 && eevp_step_n_running(shc[0]) > 0; l++) {
            for (i = 0; i < 2; i++) {
                CALLED("eevp_shard_layer");
                ck_assert_int_eq(eevp_shard_layer(shc[i], l, hid, HLD, 1, NULL, rec[i], cap,
                                                  &rsize[i]),
                                 EEVP_OK);
            }
            while (rsize[0] > 0) {
                const int64_t size = rsize[0];
                memcpy(acc, rec[0], (size_t)size);
                CALLED("eevp_shard_merge");
                ck_assert_int_eq(eevp_shard_merge(acc, rec[1], size), EEVP_OK);
                for (i = 0; i < 2; i++) {
                    CALLED("eevp_shard_absorb");
                    ck_assert_int_eq(eevp_shard_absorb(shc[i], acc, size, rec[i], cap,
                                                       &rsize[i]),
                                     EEVP_OK);
                }
            }
        }
        ck_assert_int_eq(eevp_step_n_running(shc[1]), 0);
    }
    ck_assert_msg(t.n_calls == calls, "%lld allocation requests outside the creators",
                  (long long)(t.n_calls - calls));
    for (i = 0; i < 2; i++) {
        eevp_ctx_free(shc[i]);
        eevp_head_free(sh[i]);
        canary_free_bytes(rec[i]);
    }
    canary_free_bytes(acc);
    CALLED("eevp_spec_free"); eevp_spec_free(spec);
    CALLED("eevp_ctx_free"); eevp_ctx_free(ctx);
    CALLED("eevp_head_free"); eevp_head_free(h);
    eevp_head_free(hs);
    ck_assert_int_eq(t.n_calls, calls);
    ck_assert_int_eq(t.live, 0);
    canary_free_bytes(work);
    canary_free_bytes(sw);
    free(W);
    free(b);

    /* Every exported function is a creator (swept above) or was called. */
    fp = fopen("tests/symbols.txt", "r");
    ck_assert_msg(fp != NULL, "tests/symbols.txt not found (run from the source root)");
    while (fgets(line, sizeof line, fp)) {
        int found = 0, k;
        line[strcspn(line, "\r\n")] = '\0';
        if (!line[0])
            continue;
        for (k = 0; k < 4; k++)
            found |= strcmp(line, creators[k]) == 0;
        for (k = 0; k < n_seen; k++)
            found |= strcmp(line, seen[k]) == 0;
        if (!found) {
            fprintf(stderr, "check_oom: %s is neither swept nor checked not to allocate\n", line);
            missing++;
        }
    }
    fclose(fp);
    ck_assert_msg(missing == 0, "%d public functions not covered by the allocation tests",
                  missing);
}
END_TEST

/* eevp_ctx_create_shard with its n-th allocation failing, for every n until
 * it succeeds: EEVP_ENOMEM, *out NULL, nothing left allocated. */
START_TEST(test_oom_shard)
{
    float *W, *b;
    test_alloc t;
    eevp_allocator a;
    eevp_head *h;
    eevp_ctx_options o;
    eevp_shard_options so = EEVP_SHARD_OPTIONS_INIT;
    eevp_ctx *c = NULL;
    int64_t n, base;
    int rc = EEVP_ENOMEM;
    char msg[256];

    memset(&t, 0, sizeof t);
    a = test_allocator(&t);
    h = plain_head(&W, &b, 1, NULL);
    eevp_ctx_options_init(&o);
    o.n_layers = 4;
    o.k = 6;
    o.max_batch = 3;
    o.n_threads = _i ? 2 : 0;
    o.criterion = _i ? EEVP_CRITERION_JS : EEVP_CRITERION_TOP2_GAP;
    o.allocator = &a;
    so.total_vocab = CV;
    for (n = 1; rc != EEVP_OK; n++) {
        base = t.live;
        t.fail_at = t.n_calls + n;
        c = (eevp_ctx *)&t; /* must be reset to NULL on failure */
        rc = eevp_ctx_create_shard(&c, h, &o, &so, msg, sizeof msg);
        if (rc == EEVP_OK)
            break;
        ck_assert_int_eq(rc, EEVP_ENOMEM);
        ck_assert_ptr_null(c);
        ck_assert_int_eq(t.live, base);
        ck_assert(strstr(msg, "memory") != NULL);
    }
    ck_assert_int_ge(n, 3);
    eevp_ctx_free(c);
    ck_assert_int_eq(t.live, 0);
    eevp_head_free(h);
    free(W);
    free(b);
}
END_TEST

/* eevp_spec_create with its n-th allocation failing, for every n until it
 * succeeds: EEVP_ENOMEM, *out NULL, nothing left allocated. */
START_TEST(test_oom_spec)
{
    float *W, *b;
    test_alloc t;
    eevp_allocator a;
    eevp_head *h;
    eevp_spec_options so = EEVP_SPEC_OPTIONS_INIT;
    eevp_spec *sp = NULL;
    int64_t n, base;
    int rc = EEVP_ENOMEM;
    char msg[256];

    memset(&t, 0, sizeof t);
    a = test_allocator(&t);
    h = plain_head(&W, &b, 1, NULL);
    so.allocator = &a;
    so.max_batch = 3;
    so.temperature = _i ? 0.7f : 0.0f;
    so.top_k = _i ? 5 : 0;
    so.max_set = 16;
    for (n = 1; rc != EEVP_OK; n++) {
        base = t.live;
        t.fail_at = t.n_calls + n;
        sp = (eevp_spec *)&t; /* must be reset to NULL on failure */
        rc = eevp_spec_create(&sp, h, &so, msg, sizeof msg);
        if (rc == EEVP_OK)
            break;
        ck_assert_int_eq(rc, EEVP_ENOMEM);
        ck_assert_ptr_null(sp);
        ck_assert_int_eq(t.live, base);
        ck_assert(strstr(msg, "memory") != NULL);
    }
    ck_assert_int_ge(n, 3); /* the struct, the buffers, and one that succeeds */
    eevp_spec_free(sp);
    ck_assert_int_eq(t.live, 0);
    eevp_head_free(h);
    free(W);
    free(b);
}
END_TEST

Suite *make_oom_suite(void)
{
    Suite *s = suite_create("oom");
    TCase *tc;

    tc = tcase_create("create");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_oom_head, 0, N_HCFG);
    tcase_add_loop_test(tc, test_oom_ctx, 0, N_CCFG);
    suite_add_tcase(s, tc);

    tc = tcase_create("options");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_oom_head_storage, 0, N_H2CFG);
    tcase_add_loop_test(tc, test_oom_ctx_policies, 0, N_PCFG);
    tcase_add_test(tc, test_only_creators_allocate);
    tcase_add_loop_test(tc, test_oom_spec, 0, 2);
    tcase_add_loop_test(tc, test_oom_shard, 0, 2);
    suite_add_tcase(s, tc);

    tc = tcase_create("steady");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_steps_no_alloc, 0, 2 * N_CCFG);
    suite_add_tcase(s, tc);

    return s;
}
