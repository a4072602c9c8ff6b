/* SPDX-License-Identifier: MIT */
/*
 * check_kernels.c - the public kernels against the reference: full logits,
 * exact top-K, row gather, pruned logits.  Table-driven over shapes; canary
 * guards around every output buffer and workspace; the padding of strided
 * inputs holds NaN so that a kernel reading it shows.
 */
#include <check.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eevp.h"
#include "ref.h"

Suite *make_kernels_suite(void);

/* ck_assert_msg records a mark point (a write to the runner) even when the
 * check passes; over millions of values that dominates the run time, so
 * the value loops call Check only on a failure. */
#define EXPECT(cond, ...)                 \
    do {                                  \
        if (!(cond))                      \
            ck_abort_msg(__VA_ARGS__);    \
    } while (0)

/* ------------------------------------------------------------------------ */
/* Shapes                                                                   */
/* ------------------------------------------------------------------------ */

enum { BIAS_NONE = 0, BIAS_RANDOM = 1, BIAS_MASKED = 2 };

typedef struct kshape {
    int64_t V, d, stride, offset;
    int norm;
    int has_nw, has_nb;
    int bias;        /* BIAS_* */
    float eps, scale, cap;
    int32_t n;       /* hidden states */
    int64_t ld_pad;  /* ld_hidden = d + ld_pad */
} kshape;

/* Every head <= 1M floats. */
static const kshape shapes[] = {
    { 1, 1, 1, 0, EEVP_NORM_NONE, 0, 0, BIAS_NONE, 1e-6f, 1.0f, 0.0f, 1, 1 },
    { 2, 3, 5, 7, EEVP_NORM_RMS, 1, 0, BIAS_RANDOM, 1e-6f, 1.0f, 0.0f, 2, 2 },
    { 7, 64, 64, 0, EEVP_NORM_LAYER, 1, 1, BIAS_RANDOM, 1e-5f, 1.0f, 0.0f, 3, 5 },
    { 97, 130, 133, 1000, EEVP_NORM_RMS, 0, 0, BIAS_MASKED, 1e-6f, 0.5f, 0.0f, 5, 3 },
    { 1000, 64, 70, 0, EEVP_NORM_NONE, 0, 0, BIAS_NONE, 1e-6f, 1.0f, 30.0f, 16, 1 },
    { 4099, 130, 131, 0, EEVP_NORM_LAYER, 1, 1, BIAS_MASKED, 1e-6f, 2.0f, 5.0f, 7, 9 },
    { 1000, 3, 3, 123456, EEVP_NORM_LAYER, 0, 1, BIAS_RANDOM, 1e-5f, 0.0f, 0.0f, 16, 4 },
    { 97, 1, 4, 0, EEVP_NORM_RMS, 1, 0, BIAS_NONE, 1e-6f, 1.0f, 0.0f, 4, 2 },
    { 4099, 64, 64, 50000, EEVP_NORM_NONE, 0, 0, BIAS_RANDOM, 1e-6f, 1.0f, 0.0f, 1, 64 },
    { 7, 130, 130, 0, EEVP_NORM_LAYER, 0, 0, BIAS_MASKED, 0.0f, 1.0f, 1.0f, 9, 3 },
    { 1000, 130, 130, 0, EEVP_NORM_RMS, 1, 0, BIAS_NONE, 1e-6f, 0.125f, 0.0f, 16, 7 },
    { 2, 64, 65, 0, EEVP_NORM_NONE, 0, 0, BIAS_MASKED, 1e-6f, 1.0f, 0.0f, 1, 0 },
    { 4099, 1, 1, 0, EEVP_NORM_LAYER, 1, 1, BIAS_RANDOM, 1e-6f, 1.0f, 0.0f, 3, 1 },
    { 97, 3, 7, (int64_t)INT32_MAX - 200, EEVP_NORM_RMS, 1, 0, BIAS_NONE, 1e-6f, 3.0f, 0.0f, 2,
      1 },
    { 33, 17, 17, 5, EEVP_NORM_NONE, 0, 0, BIAS_MASKED, 1e-6f, 1.5f, 2.0f, 12, 0 },
};
#define N_SHAPES ((int)(sizeof shapes / sizeof shapes[0]))

static const uint32_t flag_sets[] = { 0, EEVP_HEAD_NO_SIMD, EEVP_HEAD_COPY,
                                      EEVP_HEAD_COPY | EEVP_HEAD_NO_SIMD };

/* The caller's data for one shape. */
typedef struct kdata {
    const kshape *s;
    float *W;   /* V rows, stride apart; padding NaN */
    float *nw, *nb, *bias;
    float *hid; /* n rows, ld apart; padding NaN */
    int64_t ld;
    ref_head rh;
} kdata;

static void kdata_init(kdata *k, const kshape *s, uint32_t seed)
{
    int64_t v, c;
    int32_t r;

    memset(k, 0, sizeof *k);
    k->s = s;
    k->W = malloc((size_t)(s->V * s->stride) * sizeof(float));
    ck_assert_ptr_nonnull(k->W);
    for (v = 0; v < s->V; v++) {
        fill_random(k->W + v * s->stride, s->d, &seed, -1.0f, 1.0f);
        for (c = s->d; c < s->stride; c++)
            k->W[v * s->stride + c] = NAN;
    }
    if (s->has_nw) {
        k->nw = malloc((size_t)s->d * sizeof(float));
        ck_assert_ptr_nonnull(k->nw);
        fill_random(k->nw, s->d, &seed, -1.5f, 1.5f);
    }
    if (s->has_nb) {
        k->nb = malloc((size_t)s->d * sizeof(float));
        ck_assert_ptr_nonnull(k->nb);
        fill_random(k->nb, s->d, &seed, -0.5f, 0.5f);
    }
    if (s->bias != BIAS_NONE) {
        k->bias = malloc((size_t)s->V * sizeof(float));
        ck_assert_ptr_nonnull(k->bias);
        fill_random(k->bias, s->V, &seed, -3.0f, 3.0f);
        if (s->bias == BIAS_MASKED) {
            for (v = 0; v < s->V; v += 5)
                k->bias[v] = -INFINITY;
        }
    }
    k->ld = s->d + s->ld_pad;
    k->hid = malloc((size_t)(s->n * k->ld) * sizeof(float));
    ck_assert_ptr_nonnull(k->hid);
    for (r = 0; r < s->n; r++) {
        float *x = k->hid + r * k->ld;
        /* Spread the magnitudes: large, tiny, ordinary. */
        float mag = r % 3 == 0 ? 1.0f : r % 3 == 1 ? 40.0f : 1e-3f;
        fill_random(x, s->d, &seed, -2.0f * mag, 2.0f * mag);
        for (c = s->d; c < k->ld; c++)
            x[c] = NAN;
    }
    k->rh.V = s->V;
    k->rh.d = s->d;
    k->rh.stride = s->stride;
    k->rh.offset = s->offset;
    k->rh.W = k->W;
    k->rh.norm = s->norm;
    k->rh.eps = (double)s->eps;
    k->rh.nw = k->nw;
    k->rh.nb = k->nb;
    k->rh.bias = k->bias;
    k->rh.scale = (double)s->scale;
    k->rh.cap = (double)s->cap;
}

static void kdata_free(kdata *k)
{
    free(k->W);
    free(k->nw);
    free(k->nb);
    free(k->bias);
    free(k->hid);
}

static eevp_head *kdata_head(const kdata *k, uint32_t flags)
{
    const kshape *s = k->s;
    eevp_head_options o = EEVP_HEAD_OPTIONS_INIT;
    eevp_head *h = NULL;
    char msg[256] = "";
    int rc;

    o.flags = flags;
    o.n_vocab = s->V;
    o.dim = s->d;
    o.row_stride = s->stride;
    o.weights = k->W;
    o.vocab_offset = s->offset;
    o.norm = s->norm;
    o.norm_eps = s->eps;
    o.norm_weight = k->nw;
    o.norm_bias = k->nb;
    o.logit_bias = k->bias;
    o.logit_scale = s->scale;
    o.softcap = s->cap;
    rc = eevp_head_create(&h, &o, msg, sizeof msg);
    EXPECT(rc == EEVP_OK, "head create: %d (%s)", rc, msg);
    ck_assert_int_eq(eevp_head_n_vocab(h), s->V);
    ck_assert_int_eq(eevp_head_dim(h), s->d);
    ck_assert_int_eq(eevp_head_vocab_offset(h), s->offset);
    return h;
}

static void *work_for(const eevp_head *h, int32_t n, int64_t *size)
{
    int64_t ws = eevp_head_workspace_size(h, n);
    EXPECT(ws >= 0, "workspace size %lld", (long long)ws);
    *size = ws;
    return canary_alloc_bytes((size_t)ws);
}

/* ------------------------------------------------------------------------ */
/* Full logits                                                              */
/* ------------------------------------------------------------------------ */

START_TEST(test_logits)
{
    const kshape *s = &shapes[_i];
    kdata k;
    size_t fi;
    int64_t ldz = s->V + 3;
    size_t nz = (size_t)((s->n - 1) * ldz + s->V);
    double *zr = malloc((size_t)(s->n * s->V) * sizeof(double));
    double *as = malloc((size_t)(s->n * s->V) * sizeof(double));
    float *hid_copy;
    int32_t r;
    int64_t v;

    ck_assert(zr && as);
    kdata_init(&k, s, 1000u + (uint32_t)_i);
    hid_copy = malloc((size_t)(s->n * k.ld) * sizeof(float));
    ck_assert_ptr_nonnull(hid_copy);
    memcpy(hid_copy, k.hid, (size_t)(s->n * k.ld) * sizeof(float));
    for (r = 0; r < s->n; r++)
        ref_logits(&k.rh, k.hid + r * k.ld, zr + r * s->V, as + r * s->V);

    for (fi = 0; fi < sizeof flag_sets / sizeof flag_sets[0]; fi++) {
        eevp_head *h = kdata_head(&k, flag_sets[fi]);
        int64_t ws;
        void *work = work_for(h, s->n, &ws);
        float *z = canary_alloc(nz);
        int rc = eevp_head_logits(h, s->n, k.hid, k.ld, z, ldz, work);

        EXPECT(rc == EEVP_OK, "shape %d flags %u: %d", _i, flag_sets[fi], rc);
        EXPECT(canary_ok(z, nz), "shape %d flags %u: logits canary", _i, flag_sets[fi]);
        EXPECT(canary_ok_bytes(work, (size_t)ws), "shape %d flags %u: work canary", _i,
                      flag_sets[fi]);
        for (r = 0; r < s->n; r++) {
            for (v = 0; v < s->V; v++) {
                float got = z[r * ldz + v];
                double want = zr[r * s->V + v];
                EXPECT(ref_close(got, want, s->d, as[r * s->V + v]),
                              "shape %d flags %u row %d v %lld: %.9g, want %.12g (bound %.3g)",
                              _i, flag_sets[fi], r, (long long)v, (double)got, want,
                              ref_bound(s->d, as[r * s->V + v], want));
            }
            if (r + 1 < s->n)
                for (v = s->V; v < ldz; v++)
                    EXPECT(canary_is_poison(z, (size_t)(r * ldz + v)),
                                  "shape %d: gap between logit rows written", _i);
        }
        EXPECT(memcmp(hid_copy, k.hid, (size_t)(s->n * k.ld) * sizeof(float)) == 0,
                      "hidden states modified");
        canary_free(z);
        canary_free_bytes(work);
        eevp_head_free(h);
    }
    free(hid_copy);
    free(zr);
    free(as);
    kdata_free(&k);
}
END_TEST

/* The same hidden state gives the same logits alone or in a batch, and the
 * portable kernels stay within the bound of the SIMD ones. */
START_TEST(test_logits_batch_consistent)
{
    const kshape *s = &shapes[_i];
    kdata k;
    eevp_head *h, *hp;
    int64_t ws1, wsn;
    void *w1, *wn;
    float *zb, *z1, *zp;
    double *zr, *as;
    int32_t r;
    int64_t v;

    kdata_init(&k, s, 2000u + (uint32_t)_i);
    h = kdata_head(&k, 0);
    hp = kdata_head(&k, EEVP_HEAD_NO_SIMD);
    w1 = work_for(h, 1, &ws1);
    wn = work_for(h, s->n, &wsn);
    zb = canary_alloc((size_t)(s->n * s->V));
    z1 = canary_alloc((size_t)s->V);
    zp = canary_alloc((size_t)s->V);
    zr = malloc((size_t)s->V * sizeof(double));
    as = malloc((size_t)s->V * sizeof(double));
    ck_assert(zr && as);
    ck_assert_int_eq(eevp_head_logits(h, s->n, k.hid, k.ld, zb, s->V, wn), EEVP_OK);
    for (r = 0; r < s->n; r++) {
        ck_assert_int_eq(eevp_head_logits(h, 1, k.hid + r * k.ld, k.ld, z1, s->V, w1), EEVP_OK);
        ck_assert_int_eq(eevp_head_logits(hp, 1, k.hid + r * k.ld, k.ld, zp, s->V, w1),
                         EEVP_OK);
        ref_logits(&k.rh, k.hid + r * k.ld, zr, as);
        for (v = 0; v < s->V; v++) {
            double bound = 2 * ref_bound(s->d, as[v], zr[v]);
            float a = zb[r * s->V + v], b = z1[v], c = zp[v];
            EXPECT(a == b || fabs((double)a - (double)b) <= bound,
                          "shape %d row %d v %lld: batch %.9g vs single %.9g", _i, r,
                          (long long)v, (double)a, (double)b);
            EXPECT(c == b || fabs((double)c - (double)b) <= bound,
                          "shape %d row %d v %lld: portable %.9g vs simd %.9g", _i, r,
                          (long long)v, (double)c, (double)b);
        }
    }
    ck_assert(canary_ok(zb, (size_t)(s->n * s->V)));
    ck_assert(canary_ok(z1, (size_t)s->V) && canary_ok(zp, (size_t)s->V));
    ck_assert(canary_ok_bytes(w1, (size_t)ws1) && canary_ok_bytes(wn, (size_t)wsn));
    canary_free(zb);
    canary_free(z1);
    canary_free(zp);
    canary_free_bytes(w1);
    canary_free_bytes(wn);
    free(zr);
    free(as);
    eevp_head_free(h);
    eevp_head_free(hp);
    kdata_free(&k);
}
END_TEST

/* The fixed-order rule (eevp.h, "Bits"): for up to 16 hidden states, a row's
 * logits are bitwise the same alone, at any row of a batch, and through a
 * head holding only a range of the rows (a vocabulary shard), for every
 * storage type.  Batches of 1..16 rows drawn in shuffled order. */
START_TEST(test_logits_invariant)
{
    static const int32_t wtypes[] = { EEVP_WEIGHT_F32, EEVP_WEIGHT_F16, EEVP_WEIGHT_BF16 };
    const int32_t wtype = wtypes[_i % 3];
    const int64_t V = 517, d = _i < 3 ? 131 : 4096, r0 = 133, r1 = 390;
    const int32_t N = 16;
    uint32_t seed = 4242u + (uint32_t)_i;
    float *W = malloc((size_t)(V * d) * sizeof(float));
    uint16_t *W16 = malloc((size_t)(V * d) * sizeof(uint16_t));
    float *bias = malloc((size_t)V * sizeof(float));
    float *hid = malloc((size_t)(N * d) * sizeof(float));
    float *xb = malloc((size_t)(N * d) * sizeof(float));
    float *alone = malloc((size_t)(N * V) * sizeof(float));
    float *zb = malloc((size_t)(N * V) * sizeof(float));
    float *zs = malloc((size_t)(N * V) * sizeof(float));
    eevp_head *full = NULL, *shard = NULL;
    eevp_head_options o = EEVP_HEAD_OPTIONS_INIT;
    char msg[256] = "";
    void *work;
    int32_t n, r, order[16];
    int64_t v;

    ck_assert(W && W16 && bias && hid && xb && alone && zb && zs);
    fill_random(W, V * d, &seed, -1.0f, 1.0f);
    fill_random(bias, V, &seed, -2.0f, 2.0f);
    fill_random(hid, N * d, &seed, -3.0f, 3.0f);
    for (v = 0; v < V * d; v++) {
        /* Any bit pattern of the right range is valid storage: bf16 by
         * truncating the float, fp16 from random sign, exponent, mantissa. */
        uint32_t u, e = 10u + ref_rand_u32(&seed) % 8u;
        memcpy(&u, &W[v], sizeof u);
        W16[v] = wtype == EEVP_WEIGHT_BF16
                     ? (uint16_t)(u >> 16)
                     : (uint16_t)((ref_rand_u32(&seed) & 0x8000u) | (e << 10) |
                                  (ref_rand_u32(&seed) & 0x3ffu));
    }
    o.n_vocab = V;
    o.dim = d;
    o.weight_type = wtype;
    if (wtype == EEVP_WEIGHT_F32)
        o.weights = W;
    else
        o.weights_half = W16;
    o.vocab_offset = 1000;
    o.norm = EEVP_NORM_RMS;
    o.logit_bias = bias;
    o.softcap = _i % 2 ? 30.0f : 0.0f;
    EXPECT(eevp_head_create(&full, &o, msg, sizeof msg) == EEVP_OK, "full head: %s", msg);
    /* The shard: rows r0 .. r1-1 of the same W, their own ids and biases. */
    o.n_vocab = r1 - r0;
    if (wtype == EEVP_WEIGHT_F32)
        o.weights = W + r0 * d;
    else
        o.weights_half = W16 + r0 * d;
    o.vocab_offset = 1000 + r0;
    o.logit_bias = bias + r0;
    EXPECT(eevp_head_create(&shard, &o, msg, sizeof msg) == EEVP_OK, "shard head: %s", msg);
    work = malloc((size_t)eevp_head_workspace_size(full, N));
    ck_assert_ptr_nonnull(work);
    for (r = 0; r < N; r++)
        ck_assert_int_eq(eevp_head_logits(full, 1, hid + r * d, d, alone + r * V, V, work),
                         EEVP_OK);
    for (n = 1; n <= N; n++) {
        for (r = 0; r < N; r++)
            order[r] = r;
        for (r = N - 1; r > 0; r--) {
            int32_t j = (int32_t)(ref_rand_u32(&seed) % (uint32_t)(r + 1)), t = order[r];
            order[r] = order[j];
            order[j] = t;
        }
        for (r = 0; r < n; r++)
            memcpy(xb + r * d, hid + order[r] * d, (size_t)d * sizeof(float));
        ck_assert_int_eq(eevp_head_logits(full, n, xb, d, zb, V, work), EEVP_OK);
        ck_assert_int_eq(eevp_head_logits(shard, n, xb, d, zs, r1 - r0, work), EEVP_OK);
        for (r = 0; r < n; r++) {
            const float *a = alone + order[r] * V;
            EXPECT(memcmp(zb + r * V, a, (size_t)V * sizeof(float)) == 0,
                   "wtype %d d %lld: row %d differs at position %d of a batch of %d",
                   (int)wtype, (long long)d, order[r], r, n);
            EXPECT(memcmp(zs + r * (r1 - r0), a + r0, (size_t)(r1 - r0) * sizeof(float)) == 0,
                   "wtype %d d %lld: row %d differs through the shard [%lld, %lld), batch %d",
                   (int)wtype, (long long)d, order[r], (long long)r0, (long long)r1, n);
        }
    }
    eevp_head_free(full);
    eevp_head_free(shard);
    free(W);
    free(W16);
    free(bias);
    free(hid);
    free(xb);
    free(alone);
    free(zb);
    free(zs);
    free(work);
}
END_TEST

/* One head, several threads computing at once (run it under TSan too). */
typedef struct thr_arg {
    const eevp_head *h;
    const kdata *k;
    int32_t row;
    float *z;
    int rc;
} thr_arg;

static void *thr_logits(void *p)
{
    thr_arg *a = p;
    int64_t ws = eevp_head_workspace_size(a->h, 1);
    void *work = canary_alloc_bytes((size_t)(ws > 0 ? ws : 0));
    int it;
    a->rc = EEVP_OK;
    for (it = 0; it < 20 && a->rc == EEVP_OK; it++)
        a->rc = eevp_head_logits(a->h, 1, a->k->hid + a->row * a->k->ld, a->k->ld, a->z,
                                 a->k->s->V, work);
    if (!canary_ok_bytes(work, (size_t)ws))
        a->rc = -1000;
    canary_free_bytes(work);
    return NULL;
}

START_TEST(test_logits_threads)
{
    const kshape *s = &shapes[5]; /* 4099 x 130, layer norm, masked bias, cap */
    enum { NT = 4 };
    kdata k;
    eevp_head *h;
    pthread_t th[NT];
    thr_arg args[NT];
    float *zs;
    int64_t ws;
    void *work;
    int t;

    kdata_init(&k, s, 4242);
    h = kdata_head(&k, 0);
    zs = malloc((size_t)s->V * sizeof(float));
    work = work_for(h, 1, &ws);
    for (t = 0; t < NT; t++) {
        args[t].h = h;
        args[t].k = &k;
        args[t].row = t % s->n;
        args[t].z = canary_alloc((size_t)s->V);
        ck_assert_int_eq(pthread_create(&th[t], NULL, thr_logits, &args[t]), 0);
    }
    for (t = 0; t < NT; t++)
        ck_assert_int_eq(pthread_join(th[t], NULL), 0);
    for (t = 0; t < NT; t++) {
        ck_assert_int_eq(args[t].rc, EEVP_OK);
        ck_assert(canary_ok(args[t].z, (size_t)s->V));
        ck_assert_int_eq(eevp_head_logits(h, 1, k.hid + args[t].row * k.ld, k.ld, zs, s->V,
                                          work),
                         EEVP_OK);
        EXPECT(memcmp(zs, args[t].z, (size_t)s->V * sizeof(float)) == 0,
                      "thread %d got other logits than a lone call", t);
        canary_free(args[t].z);
    }
    canary_free_bytes(work);
    free(zs);
    eevp_head_free(h);
    kdata_free(&k);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Top-K                                                                    */
/* ------------------------------------------------------------------------ */

enum { TK_CONT = 0, TK_ASC = -1, TK_DESC = -2 };

typedef struct tkcase {
    int64_t n;
    int levels;      /* > 0: values quantised to this many levels (ties);
                        TK_CONT continuous; TK_ASC / TK_DESC sorted input */
    int n_neginf, n_posinf, negzero;
    int64_t id_offset;
} tkcase;

static const tkcase tkcases[] = {
    { 1, 1, 0, 0, 0, 0 },
    { 1, 1, 1, 0, 0, 5 },
    { 2, 1, 0, 0, 0, 0 },
    { 2, 2, 0, 0, 1, 100 },
    { 3, TK_CONT, 1, 1, 0, 0 },
    { 7, 2, 2, 0, 0, 0 },
    { 97, 3, 5, 0, 1, 1000 },
    { 97, TK_CONT, 0, 0, 0, 0 },
    { 1000, 4, 0, 0, 0, 7 },
    { 1000, TK_CONT, 100, 3, 0, 0 },
    { 1000, 1, 0, 0, 0, 0 },             /* all equal: ids ascending */
    { 4099, 5, 17, 2, 1, 0 },
    { 4099, TK_ASC, 0, 0, 0, 0 },
    { 4099, TK_DESC, 0, 0, 0, 0 },
    { 4099, 2, 4000, 0, 0, 0 },          /* mostly -inf */
    { 65539, 7, 30, 1, 0, 123 },
    { 200003, TK_CONT, 0, 0, 0, (int64_t)INT32_MAX - 200003 },
    { 200003, TK_ASC, 10, 0, 0, 0 },
    { 300, 1, 300, 0, 0, 0 },            /* all -inf */
};
#define N_TK ((int)(sizeof tkcases / sizeof tkcases[0]))

static float *tk_values(const tkcase *tc, uint32_t seed)
{
    float *x = malloc((size_t)tc->n * sizeof(float));
    int64_t i;
    int j;

    ck_assert_ptr_nonnull(x);
    for (i = 0; i < tc->n; i++) {
        if (tc->levels == TK_ASC)
            x[i] = (float)i * 0.25f;
        else if (tc->levels == TK_DESC)
            x[i] = (float)(tc->n - i) * 0.25f;
        else if (tc->levels > 0)
            x[i] = (float)(ref_rand_u32(&seed) % (uint32_t)tc->levels) - (float)(tc->levels / 2);
        else
            x[i] = (float)(ref_rand_unit(&seed) * 20.0 - 10.0);
    }
    for (j = 0; j < tc->n_neginf; j++)
        x[tc->n_neginf >= tc->n ? j : (int64_t)(ref_rand_u32(&seed) % (uint32_t)tc->n)] =
            -INFINITY;
    for (j = 0; j < tc->n_posinf; j++)
        x[ref_rand_u32(&seed) % (uint32_t)tc->n] = INFINITY;
    if (tc->negzero)
        for (i = 0; i < tc->n; i += 2)
            if (x[i] == 0.0f)
                x[i] = -0.0f;
    return x;
}

static void check_topk(const float *x, const tkcase *tc, const int32_t *perm, int32_t K,
                       int with_values)
{
    int64_t ws = eevp_topk_workspace_size(tc->n, K);
    void *work;
    int32_t *ids = canary_alloc_i32((size_t)K);
    float *vals = with_values ? canary_alloc((size_t)K) : NULL;
    int32_t j;
    int rc;

    EXPECT(ws >= 0, "topk workspace n %lld k %d: %lld", (long long)tc->n, K,
                  (long long)ws);
    work = canary_alloc_bytes((size_t)ws);
    rc = eevp_topk(x, tc->n, K, tc->id_offset, ids, vals, work);
    EXPECT(rc == EEVP_OK, "topk n %lld k %d: %d", (long long)tc->n, K, rc);
    EXPECT(canary_ok_i32(ids, (size_t)K), "topk n %lld k %d: ids canary",
                  (long long)tc->n, K);
    EXPECT(canary_ok_bytes(work, (size_t)ws), "topk n %lld k %d: work canary",
                  (long long)tc->n, K);
    for (j = 0; j < K; j++) {
        EXPECT((int64_t)ids[j] == (int64_t)perm[j] + tc->id_offset,
                      "topk n %lld k %d: ids[%d] = %d, want %lld (value %g)", (long long)tc->n,
                      K, j, ids[j], (long long)((int64_t)perm[j] + tc->id_offset),
                      (double)x[perm[j]]);
        if (vals)
            EXPECT(memcmp(&vals[j], &x[perm[j]], sizeof(float)) == 0,
                          "topk n %lld k %d: values[%d] = %g, want %g", (long long)tc->n, K, j,
                          (double)vals[j], (double)x[perm[j]]);
    }
    if (vals) {
        ck_assert(canary_ok(vals, (size_t)K));
        canary_free(vals);
    }
    canary_free_i32(ids);
    canary_free_bytes(work);
}

START_TEST(test_topk)
{
    const tkcase *tc = &tkcases[_i];
    float *x = tk_values(tc, 77u + (uint32_t)_i);
    float *xcopy = malloc((size_t)tc->n * sizeof(float));
    double *xd = malloc((size_t)tc->n * sizeof(double));
    int32_t *perm = malloc((size_t)tc->n * sizeof(int32_t));
    int32_t ks[6];
    int nk = 0, a, b;
    int64_t i;

    ck_assert(xcopy && xd && perm);
    memcpy(xcopy, x, (size_t)tc->n * sizeof(float));
    for (i = 0; i < tc->n; i++)
        xd[i] = (double)x[i];
    ref_order(xd, NULL, (int32_t)tc->n, perm);

    /* K = 1, 2, 256, n/2, n-1, n (the valid, distinct ones). */
    {
        int64_t cand[6] = { 1, 2, 256, tc->n / 2, tc->n - 1, tc->n };
        for (a = 0; a < 6; a++) {
            int dup = 0;
            if (cand[a] < 1 || cand[a] > tc->n)
                continue;
            for (b = 0; b < nk; b++)
                dup |= ks[b] == (int32_t)cand[a];
            if (!dup)
                ks[nk++] = (int32_t)cand[a];
        }
    }
    for (a = 0; a < nk; a++) {
        check_topk(x, tc, perm, ks[a], 1);
        check_topk(x, tc, perm, ks[a], 0);
    }
    EXPECT(memcmp(x, xcopy, (size_t)tc->n * sizeof(float)) == 0, "topk modified x");
    free(x);
    free(xcopy);
    free(xd);
    free(perm);
}
END_TEST

START_TEST(test_topk_nan)
{
    static const int64_t ns[] = { 1, 2, 7, 97, 4099 };
    size_t ni;

    for (ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
        int64_t n = ns[ni];
        int64_t where[3] = { 0, n / 2, n - 1 };
        uint32_t seed = 9;
        float *x = malloc((size_t)n * sizeof(float));
        int w;

        for (w = 0; w < 3; w++) {
            int32_t K = n > 3 ? 3 : 1;
            int64_t ws = eevp_topk_workspace_size(n, K);
            void *work = canary_alloc_bytes((size_t)(ws > 0 ? ws : 0));
            int32_t *ids = canary_alloc_i32((size_t)K);
            float *vals = canary_alloc((size_t)K);
            int32_t j;
            int rc;

            /* The NaN sits among small values, far from the top. */
            fill_random(x, n, &seed, 0.0f, 1.0f);
            x[where[w]] = NAN;
            if (where[w] != 0)
                x[0] = 100.0f;
            rc = eevp_topk(x, n, K, 0, ids, vals, work);
            EXPECT(rc == EEVP_ENONFINITE, "NaN at %lld of %lld: %d", (long long)where[w],
                          (long long)n, rc);
            ck_assert(canary_ok_i32(ids, (size_t)K) && canary_ok(vals, (size_t)K));
            ck_assert(canary_ok_bytes(work, (size_t)ws));
            for (j = 0; j < K; j++) {
                uint32_t u;
                memcpy(&u, &ids[j], 4);
                EXPECT(u == CANARY_POISON && canary_is_poison(vals, (size_t)j),
                              "NaN at %lld of %lld: output written on failure",
                              (long long)where[w], (long long)n);
            }
            canary_free_bytes(work);
            canary_free_i32(ids);
            canary_free(vals);
        }
        free(x);
    }
}
END_TEST

START_TEST(test_topk_errors)
{
    float x[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
    int32_t ids[8];
    float vals[8];
    int64_t ws = eevp_topk_workspace_size(8, 8);
    void *work = canary_alloc_bytes((size_t)(ws > 0 ? ws : 0));

    ck_assert(ws >= 0);
    ck_assert(eevp_topk_workspace_size(0, 1) < 0);
    ck_assert(eevp_topk_workspace_size(-1, 1) < 0);
    ck_assert(eevp_topk_workspace_size(8, 0) < 0);
    ck_assert(eevp_topk_workspace_size(8, 9) < 0);
    ck_assert(eevp_topk_workspace_size(8, -1) < 0);
    ck_assert_int_eq(eevp_topk(x, 8, 0, 0, ids, vals, work), EEVP_ERANGE);
    ck_assert_int_eq(eevp_topk(x, 8, -1, 0, ids, vals, work), EEVP_ERANGE);
    ck_assert_int_eq(eevp_topk(x, 8, 9, 0, ids, vals, work), EEVP_ERANGE);
    ck_assert_int_eq(eevp_topk(x, 0, 1, 0, ids, vals, work), EEVP_ERANGE);
    ck_assert_int_eq(eevp_topk(x, -3, 1, 0, ids, vals, work), EEVP_ERANGE);
    ck_assert_int_eq(eevp_topk(NULL, 8, 2, 0, ids, vals, work), EEVP_EINVAL);
    ck_assert_int_eq(eevp_topk(x, 8, 2, 0, NULL, vals, work), EEVP_EINVAL);
    ck_assert_int_eq(eevp_topk(x, 8, 2, 0, ids, vals, NULL), EEVP_EINVAL);
    /* id_offset taking ids past INT32_MAX (the largest id here is 7 + offset). */
    ck_assert_int_eq(eevp_topk(x, 8, 2, (int64_t)INT32_MAX - 6, ids, vals, work), EEVP_ERANGE);
    ck_assert_int_eq(eevp_topk(x, 8, 2, (int64_t)INT32_MAX - 7, ids, vals, work), EEVP_OK);
    ck_assert_int_eq(ids[0], INT32_MAX);
    ck_assert_int_eq(eevp_topk(x, 8, 2, 0, ids, vals, work), EEVP_OK);
    ck_assert_int_eq(ids[0], 7);
    ck_assert(canary_ok_bytes(work, (size_t)ws));
    canary_free_bytes(work);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Gather                                                                   */
/* ------------------------------------------------------------------------ */

/* k global ids inside the head: first, last, a duplicate, random others. */
static int32_t *pick_ids(const kshape *s, int32_t k, uint32_t seed)
{
    int32_t *ids = malloc((size_t)k * sizeof(int32_t));
    int32_t j;

    ck_assert_ptr_nonnull(ids);
    for (j = 0; j < k; j++)
        ids[j] = (int32_t)(s->offset + (int64_t)(ref_rand_u32(&seed) % (uint32_t)s->V));
    ids[0] = (int32_t)(s->offset + s->V - 1);
    if (k > 1)
        ids[1] = (int32_t)s->offset;
    if (k > 3)
        ids[3] = ids[2];
    return ids;
}

START_TEST(test_gather)
{
    const kshape *s = &shapes[_i];
    int32_t k = s->V < 37 ? (int32_t)s->V : 37; /* (k > V: test_gather_k_over_v) */
    int64_t ldo = s->d + 2;
    size_t nout = (size_t)((k - 1) * ldo + s->d);
    kdata kd;
    int32_t *ids;
    size_t fi;
    int32_t j;
    int64_t c;

    kdata_init(&kd, s, 3000u + (uint32_t)_i);
    ids = pick_ids(s, k, 31u + (uint32_t)_i);
    for (fi = 0; fi < sizeof flag_sets / sizeof flag_sets[0]; fi++) {
        eevp_head *h = kdata_head(&kd, flag_sets[fi]);
        float *out = canary_alloc(nout);
        float *bo = canary_alloc((size_t)k);
        float *out2 = canary_alloc(nout);

        ck_assert_int_eq(eevp_head_gather(h, ids, k, out, ldo, bo), EEVP_OK);
        ck_assert(canary_ok(out, nout) && canary_ok(bo, (size_t)k));
        for (j = 0; j < k; j++) {
            int64_t v = ids[j] - s->offset;
            EXPECT(memcmp(out + j * ldo, kd.W + v * s->stride,
                                 (size_t)s->d * sizeof(float)) == 0,
                          "shape %d flags %u: gathered row %d (id %d) differs", _i,
                          flag_sets[fi], j, ids[j]);
            if (j + 1 < k)
                for (c = s->d; c < ldo; c++)
                    EXPECT(canary_is_poison(out, (size_t)(j * ldo + c)),
                                  "shape %d: gap between gathered rows written", _i);
            if (kd.bias)
                EXPECT(memcmp(&bo[j], &kd.bias[v], sizeof(float)) == 0,
                              "shape %d: bias_out[%d] = %g, want %g", _i, j, (double)bo[j],
                              (double)kd.bias[v]);
            else
                EXPECT(bo[j] == 0.0f, "shape %d: bias_out[%d] = %g without bias", _i, j,
                              (double)bo[j]);
        }
        /* bias_out NULL: same rows. */
        ck_assert_int_eq(eevp_head_gather(h, ids, k, out2, ldo, NULL), EEVP_OK);
        ck_assert(canary_ok(out2, nout));
        for (j = 0; j < k; j++)
            ck_assert(memcmp(out2 + j * ldo, out + j * ldo, (size_t)s->d * sizeof(float)) == 0);
        canary_free(out);
        canary_free(out2);
        canary_free(bo);
        eevp_head_free(h);
    }
    free(ids);
    kdata_free(&kd);
}
END_TEST

/* gather and pruned logits take k in 1 .. V (docs/ERRORS.md): even with
 * valid, repeated ids, k > V is EEVP_ERANGE and nothing is written. */
START_TEST(test_gather_k_over_v)
{
    static float W[3 * 4] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 };
    eevp_head_options o = EEVP_HEAD_OPTIONS_INIT;
    eevp_head *h = NULL;
    int32_t ids[5] = { 12, 10, 12, 11, 10 };
    float *out = canary_alloc(5 * 4);
    float x[4] = { 1, 1, 1, 1 }, *z = canary_alloc(5);
    int64_t ws;
    void *work;
    size_t i;

    o.n_vocab = 3;
    o.dim = 4;
    o.weights = W;
    o.vocab_offset = 10;
    ck_assert_int_eq(eevp_head_create(&h, &o, NULL, 0), EEVP_OK);
    ws = eevp_head_workspace_size(h, 1);
    work = canary_alloc_bytes((size_t)ws);
    ck_assert_int_eq(eevp_head_gather(h, ids, 5, out, 4, NULL), EEVP_ERANGE);
    ck_assert_int_eq(eevp_head_gather(h, ids, 4, out, 4, NULL), EEVP_ERANGE);
    ck_assert_int_eq(eevp_head_gather(h, ids, 3, out, 4, NULL), EEVP_OK);
    for (i = 0; i < 3; i++)
        ck_assert(memcmp(out + 4 * i, W + 4 * (ids[i] - 10), 4 * sizeof(float)) == 0);
    for (i = 12; i < 20; i++)
        ck_assert(canary_is_poison(out, i));
    ck_assert_int_eq(eevp_head_pruned_logits(h, 4, out, 4, NULL, 1, x, 4, z, 5, work),
                     EEVP_ERANGE);
    for (i = 0; i < 5; i++)
        ck_assert(canary_is_poison(z, i));
    ck_assert(canary_ok(out, 5 * 4) && canary_ok(z, 5) && canary_ok_bytes(work, (size_t)ws));
    canary_free(out);
    canary_free(z);
    canary_free_bytes(work);
    eevp_head_free(h);
}
END_TEST

/* A NaN or an infinity in a hidden row: EEVP_ENONFINITE, logits not written
 * (docs/ERRORS.md). */
START_TEST(test_logits_nonfinite)
{
    const kshape *s = &shapes[_i % 3 == 0 ? 3 : _i % 3 == 1 ? 2 : 4];
    const float bad = _i < 3 ? NAN : _i < 6 ? INFINITY : -INFINITY;
    kdata kd;
    eevp_head *h;
    int64_t ws;
    void *work;
    int32_t k = 4, r = s->n - 1;
    size_t nz = (size_t)(s->n * s->V), i;
    float *z, *rows;

    kdata_init(&kd, s, 8);
    h = kdata_head(&kd, 0);
    work = work_for(h, s->n, &ws);
    z = canary_alloc(nz);
    rows = malloc((size_t)(k * s->d) * sizeof(float));
    ck_assert_ptr_nonnull(rows);
    fill_random(rows, k * s->d, &(uint32_t){ 4 }, -1, 1);
    kd.hid[r * kd.ld + s->d / 2] = bad; /* in the last row */
    EXPECT(eevp_head_logits(h, s->n, kd.hid, kd.ld, z, s->V, work) == EEVP_ENONFINITE,
           "logits with %g in the hidden state", (double)bad);
    EXPECT(eevp_head_pruned_logits(h, k, rows, s->d, NULL, s->n, kd.hid, kd.ld, z, k, work) ==
               EEVP_ENONFINITE,
           "pruned logits with %g in the hidden state", (double)bad);
    ck_assert(canary_ok(z, nz) && canary_ok_bytes(work, (size_t)ws));
    for (i = 0; i < nz; i++)
        EXPECT(canary_is_poison(z, i), "logits[%zu] written on ENONFINITE", i);
    free(rows);
    canary_free(z);
    canary_free_bytes(work);
    eevp_head_free(h);
    kdata_free(&kd);
}
END_TEST

/* "-INFINITY masks a token": it stays -inf under a soft-cap too (the
 * formula cap * tanh(-inf / cap) would give -cap, a finite logit that the
 * softmax, the entropy's finite count and the candidates would then see). */
START_TEST(test_mask_softcap)
{
    enum { V = 6, D = 4 };
    static const float W[V * D] = { 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0,
                                    0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 0 };
    static const float bias[V] = { 0.5f, -INFINITY, 0.0f, -INFINITY, 1.0f, 0.0f };
    const float x[D] = { 1.0f, -2.0f, 0.5f, 3.0f };
    eevp_head_options o = EEVP_HEAD_OPTIONS_INIT;
    eevp_head *h = NULL;
    float z[V], pz[2], rows[2 * D], rb[2];
    int32_t ids[2] = { 1, 3 };
    int64_t ws;
    void *work;
    int v;

    o.n_vocab = V;
    o.dim = D;
    o.weights = W;
    o.logit_bias = bias;
    o.softcap = 5.0f;
    ck_assert_int_eq(eevp_head_create(&h, &o, NULL, 0), EEVP_OK);
    ws = eevp_head_workspace_size(h, 1);
    work = canary_alloc_bytes((size_t)ws);
    ck_assert_int_eq(eevp_head_logits(h, 1, x, D, z, V, work), EEVP_OK);
    for (v = 0; v < V; v++) {
        if (isinf(bias[v]))
            EXPECT(isinf(z[v]) && z[v] < 0,
                          "masked token %d under softcap 5: logit %g, want -inf", v,
                          (double)z[v]);
        else
            ck_assert(isfinite(z[v]) && fabsf(z[v]) < 5.0f);
    }
    ck_assert_int_eq(eevp_head_gather(h, ids, 2, rows, D, rb), EEVP_OK);
    ck_assert(isinf(rb[0]) && isinf(rb[1]));
    ck_assert_int_eq(eevp_head_pruned_logits(h, 2, rows, D, rb, 1, x, D, pz, 2, work), EEVP_OK);
    EXPECT(isinf(pz[0]) && pz[0] < 0 && isinf(pz[1]) && pz[1] < 0,
                  "masked pruned logits under softcap: %g %g, want -inf", (double)pz[0],
                  (double)pz[1]);
    ck_assert(canary_ok_bytes(work, (size_t)ws));
    canary_free_bytes(work);
    eevp_head_free(h);
}
END_TEST

START_TEST(test_gather_errors)
{
    const kshape *s = &shapes[3]; /* 97 x 130, offset 1000 */
    kdata kd;
    eevp_head *h;
    int32_t ids[3] = { 1000, 1050, 1096 };
    size_t nout = (size_t)(3 * s->d);
    float *out, *bo;
    size_t i;

    kdata_init(&kd, s, 5);
    h = kdata_head(&kd, 0);
    out = canary_alloc(nout);
    bo = canary_alloc(3);
    ck_assert_int_eq(eevp_head_gather(h, ids, 3, out, s->d, bo), EEVP_OK);
    canary_poison(out, nout);
    canary_poison(bo, 3);

    ids[1] = 999; /* below the head */
    ck_assert_int_eq(eevp_head_gather(h, ids, 3, out, s->d, bo), EEVP_ERANGE);
    ids[1] = 1097; /* past the head */
    ck_assert_int_eq(eevp_head_gather(h, ids, 3, out, s->d, bo), EEVP_ERANGE);
    ids[1] = -1;
    ck_assert_int_eq(eevp_head_gather(h, ids, 3, out, s->d, bo), EEVP_ERANGE);
    ids[1] = 1050;
    ck_assert_int_eq(eevp_head_gather(h, ids, 3, out, s->d - 1, bo), EEVP_ERANGE);
    ck_assert_int_eq(eevp_head_gather(h, ids, -1, out, s->d, bo), EEVP_ERANGE);
    ck_assert_int_eq(eevp_head_gather(h, NULL, 3, out, s->d, bo), EEVP_EINVAL);
    ck_assert_int_eq(eevp_head_gather(h, ids, 3, NULL, s->d, bo), EEVP_EINVAL);
    ck_assert(canary_ok(out, nout) && canary_ok(bo, 3));
    for (i = 0; i < nout; i++)
        EXPECT(canary_is_poison(out, i), "failed gather wrote out[%zu]", i);
    for (i = 0; i < 3; i++)
        EXPECT(canary_is_poison(bo, i), "failed gather wrote bias_out[%zu]", i);
    canary_free(out);
    canary_free(bo);
    eevp_head_free(h);
    kdata_free(&kd);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Pruned logits                                                            */
/* ------------------------------------------------------------------------ */

START_TEST(test_pruned_logits)
{
    const kshape *s = &shapes[_i];
    int32_t k = s->V < 40 ? (int32_t)s->V : 40;
    int64_t ldr = s->d + 1, ldz = k + 2;
    size_t nz = (size_t)((s->n - 1) * ldz + k);
    kdata kd;
    int32_t *ids;
    float *rows, *bias;
    double *zr, *as;
    int use_bias;
    int32_t j, r;
    int64_t c;
    size_t fi;

    kdata_init(&kd, s, 4000u + (uint32_t)_i);
    ids = pick_ids(s, k, 17u + (uint32_t)_i);
    /* The test gathers by itself (independent of eevp_head_gather). */
    rows = malloc((size_t)(k * ldr) * sizeof(float));
    bias = malloc((size_t)k * sizeof(float));
    zr = malloc((size_t)k * sizeof(double));
    as = malloc((size_t)k * sizeof(double));
    ck_assert(rows && bias && zr && as);
    for (j = 0; j < k; j++) {
        int64_t v = ids[j] - s->offset;
        memcpy(rows + j * ldr, kd.W + v * s->stride, (size_t)s->d * sizeof(float));
        for (c = s->d; c < ldr; c++)
            rows[j * ldr + c] = NAN;
        bias[j] = kd.bias ? kd.bias[v] : 0.0f;
    }
    for (fi = 0; fi < sizeof flag_sets / sizeof flag_sets[0]; fi++) {
        eevp_head *h = kdata_head(&kd, flag_sets[fi]);
        for (use_bias = 0; use_bias < 2; use_bias++) {
            ref_head rr = kd.rh;
            int64_t ws;
            void *work = work_for(h, s->n, &ws);
            float *z = canary_alloc(nz);
            int rc;

            /* The reference over the gathered block itself. */
            rr.V = k;
            rr.W = rows;
            rr.stride = ldr;
            rr.bias = use_bias ? bias : NULL;
            rc = eevp_head_pruned_logits(h, k, rows, ldr, use_bias ? bias : NULL, s->n, kd.hid,
                                         kd.ld, z, ldz, work);
            EXPECT(rc == EEVP_OK, "shape %d: %d", _i, rc);
            EXPECT(canary_ok(z, nz), "shape %d: pruned logits canary", _i);
            EXPECT(canary_ok_bytes(work, (size_t)ws), "shape %d: work canary", _i);
            for (r = 0; r < s->n; r++) {
                ref_logits(&rr, kd.hid + r * kd.ld, zr, as);
                for (j = 0; j < k; j++) {
                    float got = z[r * ldz + j];
                    EXPECT(ref_close(got, zr[j], s->d, as[j]),
                                  "shape %d flags %u bias %d row %d j %d (id %d): %.9g, want "
                                  "%.12g",
                                  _i, flag_sets[fi], use_bias, r, j, ids[j], (double)got, zr[j]);
                }
                if (r + 1 < s->n)
                    for (j = k; j < ldz; j++)
                        ck_assert(canary_is_poison(z, (size_t)(r * ldz + j)));
            }
            /* The gathered rows of the head itself: same as the full logits'
             * entries, within the bound. */
            if (use_bias) {
                double *zf = malloc((size_t)s->V * sizeof(double));
                double *af = malloc((size_t)s->V * sizeof(double));
                ck_assert(zf && af);
                ref_logits(&kd.rh, kd.hid, zf, af);
                for (j = 0; j < k; j++) {
                    int64_t v = ids[j] - s->offset;
                    ck_assert(ref_close(z[j], zf[v], s->d, af[v]));
                }
                free(zf);
                free(af);
            }
            canary_free(z);
            canary_free_bytes(work);
        }
        eevp_head_free(h);
    }
    free(ids);
    free(rows);
    free(bias);
    free(zr);
    free(as);
    kdata_free(&kd);
}
END_TEST

START_TEST(test_kernel_errors)
{
    const kshape *s = &shapes[2]; /* 7 x 64, layer norm */
    kdata kd;
    eevp_head *h;
    int64_t ws;
    void *work;
    float *z, *rows;
    size_t nz = (size_t)(s->n * s->V);
    size_t i;

    kdata_init(&kd, s, 6);
    h = kdata_head(&kd, 0);
    work = work_for(h, s->n, &ws);
    z = canary_alloc(nz);
    rows = malloc((size_t)(s->V * s->d) * sizeof(float));
    ck_assert_ptr_nonnull(rows);
    fill_random(rows, s->V * s->d, &(uint32_t){ 3 }, -1, 1);

    ck_assert(eevp_head_workspace_size(h, 0) < 0);
    ck_assert(eevp_head_workspace_size(h, -1) < 0);
    /* Full logits. */
    ck_assert_int_eq(eevp_head_logits(h, 0, kd.hid, kd.ld, z, s->V, work), EEVP_ERANGE);
    ck_assert_int_eq(eevp_head_logits(h, -1, kd.hid, kd.ld, z, s->V, work), EEVP_ERANGE);
    ck_assert_int_eq(eevp_head_logits(h, s->n, NULL, kd.ld, z, s->V, work), EEVP_EINVAL);
    ck_assert_int_eq(eevp_head_logits(h, s->n, kd.hid, kd.ld, NULL, s->V, work), EEVP_EINVAL);
    ck_assert_int_eq(eevp_head_logits(h, s->n, kd.hid, s->d - 1, z, s->V, work), EEVP_ERANGE);
    ck_assert_int_eq(eevp_head_logits(h, s->n, kd.hid, kd.ld, z, s->V - 1, work), EEVP_ERANGE);
    ck_assert_int_eq(eevp_head_logits(h, s->n, kd.hid, kd.ld, z, s->V, NULL), EEVP_EINVAL);
    ck_assert_int_eq(eevp_head_logits(h, EEVP_MAX_BATCH + 1, kd.hid, kd.ld, z, s->V, work),
                     EEVP_ERANGE);
    ck_assert(eevp_head_workspace_size(h, EEVP_MAX_BATCH + 1) < 0);
    /* Pruned logits. */
    ck_assert_int_eq(eevp_head_pruned_logits(h, 0, rows, s->d, NULL, s->n, kd.hid, kd.ld, z,
                                             s->V, work),
                     EEVP_ERANGE);
    ck_assert_int_eq(eevp_head_pruned_logits(h, -2, rows, s->d, NULL, s->n, kd.hid, kd.ld, z,
                                             s->V, work),
                     EEVP_ERANGE);
    ck_assert_int_eq(eevp_head_pruned_logits(h, 3, NULL, s->d, NULL, s->n, kd.hid, kd.ld, z,
                                             s->V, work),
                     EEVP_EINVAL);
    ck_assert_int_eq(eevp_head_pruned_logits(h, 3, rows, s->d - 1, NULL, s->n, kd.hid, kd.ld, z,
                                             s->V, work),
                     EEVP_ERANGE);
    ck_assert_int_eq(eevp_head_pruned_logits(h, 3, rows, s->d, NULL, 0, kd.hid, kd.ld, z, s->V,
                                             work),
                     EEVP_ERANGE);
    ck_assert_int_eq(eevp_head_pruned_logits(h, 3, rows, s->d, NULL, s->n, NULL, kd.ld, z, s->V,
                                             work),
                     EEVP_EINVAL);
    ck_assert_int_eq(eevp_head_pruned_logits(h, 3, rows, s->d, NULL, s->n, kd.hid, s->d - 1, z,
                                             s->V, work),
                     EEVP_ERANGE);
    ck_assert_int_eq(eevp_head_pruned_logits(h, 3, rows, s->d, NULL, s->n, kd.hid, kd.ld, NULL,
                                             s->V, work),
                     EEVP_EINVAL);
    ck_assert_int_eq(eevp_head_pruned_logits(h, 3, rows, s->d, NULL, s->n, kd.hid, kd.ld, z, 2,
                                             work),
                     EEVP_ERANGE);
    ck_assert_int_eq(eevp_head_pruned_logits(h, 3, rows, s->d, NULL, s->n, kd.hid, kd.ld, z,
                                             s->V, NULL),
                     EEVP_EINVAL);
    ck_assert_int_eq(eevp_head_pruned_logits(h, (int32_t)s->V + 1, rows, s->d, NULL, 1, kd.hid,
                                             kd.ld, z, s->V + 1, work),
                     EEVP_ERANGE);
    ck_assert_int_eq(eevp_head_pruned_logits(h, 3, rows, s->d, NULL, EEVP_MAX_BATCH + 1, kd.hid,
                                             kd.ld, z, s->V, work),
                     EEVP_ERANGE);
    /* Nothing written by any failed call. */
    ck_assert(canary_ok(z, nz));
    for (i = 0; i < nz; i++)
        EXPECT(canary_is_poison(z, i), "a failed kernel call wrote logits[%zu]", i);
    ck_assert(canary_ok_bytes(work, (size_t)ws));

    free(rows);
    canary_free(z);
    canary_free_bytes(work);
    eevp_head_free(h);
    kdata_free(&kd);
}
END_TEST

Suite *make_kernels_suite(void)
{
    Suite *s = suite_create("kernels");
    TCase *tc;

    tc = tcase_create("logits");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_logits, 0, N_SHAPES);
    tcase_add_loop_test(tc, test_logits_batch_consistent, 0, N_SHAPES);
    tcase_add_test(tc, test_logits_threads);
    tcase_add_loop_test(tc, test_logits_invariant, 0, 6);
    tcase_add_loop_test(tc, test_logits_nonfinite, 0, 9);
    suite_add_tcase(s, tc);

    tc = tcase_create("topk");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_topk, 0, N_TK);
    tcase_add_test(tc, test_topk_nan);
    tcase_add_test(tc, test_topk_errors);
    suite_add_tcase(s, tc);

    tc = tcase_create("gather");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_gather, 0, N_SHAPES);
    tcase_add_test(tc, test_gather_errors);
    tcase_add_test(tc, test_gather_k_over_v);
    tcase_add_test(tc, test_mask_softcap);
    tcase_add_loop_test(tc, test_pruned_logits, 0, N_SHAPES);
    tcase_add_test(tc, test_kernel_errors);
    suite_add_tcase(s, tc);

    return s;
}
