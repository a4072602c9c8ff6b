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
    int32_t L, batch, k, f, i, p, crit, final_, schedule;
} ccfg;

static const ccfg ccfgs[] = {
    { "top2 default", 0, 6, 1, 8, 0, 1, -1, EEVP_CRITERION_TOP2_GAP, EEVP_FINAL_FULL,
      EEVP_SCHEDULE_CONSTANT },
    { "js, batch 4, bias", 1, 8, 4, 8, 2, 2, 1, EEVP_CRITERION_JS, EEVP_FINAL_FULL,
      EEVP_SCHEDULE_CONSTANT },
    { "saturation", 0, 5, 3, 8, 1, 1, -1, EEVP_CRITERION_SATURATION, EEVP_FINAL_FULL,
      EEVP_SCHEDULE_CONSTANT },
    { "stability, pruned final, calm", 1, 7, 2, 5, 1, 2, 0, EEVP_CRITERION_STABILITY,
      EEVP_FINAL_PRUNED, EEVP_SCHEDULE_CALM },
    { "entropy, no pruning", 1, 4, 5, 0, 0, 1, -1, EEVP_CRITERION_ENTROPY, EEVP_FINAL_FULL,
      EEVP_SCHEDULE_CONSTANT },
    { "maxprob, k >= V", 0, 3, 2, 1000, 1, 1, -1, EEVP_CRITERION_MAX_PROB, EEVP_FINAL_PRUNED,
      EEVP_SCHEDULE_CONSTANT },
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

Suite *make_oom_suite(void)
{
    Suite *s = suite_create("oom");
    TCase *tc;

    tc = tcase_create("create");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_oom_head, 0, N_HCFG);
    tcase_add_loop_test(tc, test_oom_ctx, 0, N_CCFG);
    suite_add_tcase(s, tc);

    tc = tcase_create("steady");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_steps_no_alloc, 0, 2 * N_CCFG);
    suite_add_tcase(s, tc);

    return s;
}
