/* SPDX-License-Identifier: MIT */
/*
 * check_dot.c - the issue-4 kernels against the plain reference: the
 * fixed-order dot kernels (fp32, fp16, bf16; AVX2 and portable) and their
 * batch invariance, half-precision heads, int8 screening, and the batched
 * pruned checks (per sequence and over the union, bit-identical).
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eevp.h"
#include "ref.h"

/* The plain build links the shared library, whose internal symbols are
 * hidden: the internal kernels under test are built into this file.  The
 * sanitizer build (check-asan) links the library's sources themselves. */
#if !defined(__SANITIZE_ADDRESS__)
#include "../src/dot.c"
#include "../src/dot_avx2.c"
#include "../src/dot_avx512.c"
#include "../src/batch.c"
#include "../src/pool.c"
#include "../src/util.c"
#else
#include "internal.h"
#endif

Suite *make_dot_suite(void);

#define EXPECT(cond, ...)              \
    do {                               \
        if (!(cond))                   \
            ck_abort_msg(__VA_ARGS__); \
    } while (0)

static const int32_t wtypes[] = {EEVP_WEIGHT_F32, EEVP_WEIGHT_F16, EEVP_WEIGHT_BF16};

/* Weights as the caller holds them (half or float) and as floats. */
typedef struct hw {
    int32_t wtype;
    int64_t V, d, stride;
    float *Wf;     /* the values actually stored, as floats */
    uint16_t *Wh;  /* half storage, or NULL */
    float *Worig;  /* the fp32 values before rounding */
} hw;

static void hw_init(hw *w, int32_t wtype, int64_t V, int64_t d, int64_t stride, uint32_t *seed)
{
    int64_t i, n = V * stride;
    w->wtype = wtype;
    w->V = V;
    w->d = d;
    w->stride = stride;
    w->Wf = (float *)malloc((size_t)n * sizeof(float));
    w->Worig = (float *)malloc((size_t)n * sizeof(float));
    w->Wh = wtype == EEVP_WEIGHT_F32 ? NULL : (uint16_t *)malloc((size_t)n * 2);
    ck_assert(w->Wf && w->Worig && (wtype == EEVP_WEIGHT_F32 || w->Wh));
    fill_random(w->Worig, n, seed, -1.0f, 1.0f);
    for (i = 0; i < n; i++) {
        if (wtype == EEVP_WEIGHT_F16) {
            w->Wh[i] = eevpi_f32_to_f16(w->Worig[i]);
            w->Wf[i] = eevpi_f16_to_f32(w->Wh[i]);
        } else if (wtype == EEVP_WEIGHT_BF16) {
            w->Wh[i] = eevpi_f32_to_bf16(w->Worig[i]);
            w->Wf[i] = eevpi_bf16_to_f32(w->Wh[i]);
        } else {
            w->Wf[i] = w->Worig[i];
        }
    }
}

static void hw_free(hw *w)
{
    free(w->Wf);
    free(w->Wh);
    free(w->Worig);
}

static eevp_head *hw_head(const hw *w, uint32_t flags, int norm, const float *bias, float scale,
                          float cap, int32_t screen)
{
    eevp_head_options o = EEVP_HEAD_OPTIONS_INIT;
    eevp_head *h = NULL;
    char msg[256];
    o.flags = flags;
    o.n_vocab = w->V;
    o.dim = w->d;
    o.row_stride = w->stride;
    o.weight_type = w->wtype;
    if (w->wtype == EEVP_WEIGHT_F32)
        o.weights = w->Wf;
    else
        o.weights_half = w->Wh;
    o.norm = norm;
    o.logit_bias = bias;
    o.logit_scale = scale;
    o.softcap = cap;
    o.screen_mult = screen;
    ck_assert_msg(eevp_head_create(&h, &o, msg, sizeof msg) == EEVP_OK, "%s", msg);
    return h;
}

static ref_head hw_ref(const hw *w, int norm, const float *bias, float scale, float cap)
{
    ref_head r;
    memset(&r, 0, sizeof r);
    r.V = w->V;
    r.d = w->d;
    r.stride = w->stride;
    r.W = w->Wf;
    r.norm = norm;
    r.eps = 1e-6;
    r.bias = bias;
    r.scale = scale == 0.0f ? 1.0 : scale;
    r.cap = cap;
    return r;
}

/* ------------------------------------------------------------------------ */
/* Half-precision conversions                                               */
/* ------------------------------------------------------------------------ */

static double f16_ref(uint16_t h)
{
    const int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v;
    if (e == 31)
        return m ? NAN : (s ? -INFINITY : INFINITY);
    v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
    return s ? -v : v;
}

START_TEST(test_f16_convert)
{
    uint32_t u;
    for (u = 0; u < 65536; u++) {
        const uint16_t h = (uint16_t)u;
        const double r = f16_ref(h);
        const float f = eevpi_f16_to_f32(h);
        if (r != r) {
            EXPECT(f != f, "f16 %04x: NaN expected", u);
            continue;
        }
        EXPECT((double)f == r, "f16 %04x -> %g, expected %g", u, f, r);
        EXPECT(eevpi_f32_to_f16(f) == h, "f16 %04x does not round-trip", u);
        /* Midpoints to the next value up: ties to even, and either side of
         * the tie to the nearer value. */
        if ((u & 0x7fff) < 0x7bff) {
            const float g = eevpi_f16_to_f32((uint16_t)(u + 1));
            const float mid = (float)(((double)f + (double)g) / 2.0);
            const uint16_t even = (u & 1) ? (uint16_t)(u + 1) : h;
            EXPECT(eevpi_f32_to_f16(mid) == even, "tie after %04x", u);
            EXPECT(eevpi_f32_to_f16(nextafterf(mid, f)) == h, "below tie after %04x", u);
            EXPECT(eevpi_f32_to_f16(nextafterf(mid, g)) == (uint16_t)(u + 1),
                   "above tie after %04x", u);
        }
    }
    ck_assert_uint_eq(eevpi_f32_to_f16(65520.0f), 0x7c00);
    ck_assert_uint_eq(eevpi_f32_to_f16(nextafterf(65520.0f, 0.0f)), 0x7bff);
    ck_assert_uint_eq(eevpi_f32_to_f16(-INFINITY), 0xfc00);
    ck_assert_uint_eq(eevpi_f32_to_f16(1e-10f), 0);
}
END_TEST

START_TEST(test_bf16_convert)
{
    uint32_t u;
    uint32_t seed = 7;
    for (u = 0; u < 65536; u++) {
        const float f = eevpi_bf16_to_f32((uint16_t)u);
        uint32_t bits;
        memcpy(&bits, &f, 4);
        EXPECT(bits == u << 16, "bf16 %04x", u);
        if (f == f)
            EXPECT(eevpi_f32_to_bf16(f) == u, "bf16 %04x does not round-trip", u);
    }
    for (u = 0; u < 100000; u++) {
        /* Against the double-rounded reference on random finite floats. */
        uint32_t bits = ref_rand_u32(&seed);
        float f, lo, hi, back;
        memcpy(&f, &bits, 4);
        if (!isfinite(f) || fabsf(f) > 3.0e38f)
            continue;
        bits &= 0xffff0000u;
        memcpy(&lo, &bits, 4);
        bits += 0x10000u;
        memcpy(&hi, &bits, 4);
        back = eevpi_bf16_to_f32(eevpi_f32_to_bf16(f));
        if (fabs((double)f - lo) < fabs((double)hi - f))
            EXPECT(back == lo, "bf16 rounding of %a", f);
        else if (fabs((double)f - lo) > fabs((double)hi - f))
            EXPECT(back == hi, "bf16 rounding of %a", f);
        else
            EXPECT(back == lo || back == hi, "bf16 tie of %a", f);
    }
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Dot kernels                                                              */
/* ------------------------------------------------------------------------ */

typedef struct dshape {
    int64_t nr, d, stride;
    int32_t n;
} dshape;

static const dshape dshapes[] = {
    {1, 1, 1, 1},   {5, 7, 9, 2},     {8, 8, 8, 3},     {13, 9, 16, 4},  {67, 31, 31, 5},
    {9, 64, 70, 6}, {17, 257, 260, 7}, {33, 600, 600, 8}, {7, 1030, 1030, 9},
    {40, 130, 131, 17}, {3, 2049, 2049, 33},
};
#define N_DSHAPES ((int)(sizeof dshapes / sizeof dshapes[0]))

/* Loop index: shape x storage type x kernel set. */
START_TEST(test_dot_reference)
{
    const dshape *s = &dshapes[_i / 6];
    const int32_t wt = wtypes[(_i / 2) % 3];
    const uint32_t flags = (_i % 2) ? EEVP_HEAD_NO_SIMD : 0u;
    uint32_t seed = 1234u + (uint32_t)_i;
    hw w;
    eevp_head *h;
    float *x, *z;
    int64_t r, c;
    int32_t i;

    hw_init(&w, wt, s->nr, s->d, s->stride, &seed);
    h = hw_head(&w, flags, EEVP_NORM_NONE, NULL, 0.0f, 0.0f, 0);
    x = (float *)malloc((size_t)(s->n * s->d) * 4);
    z = (float *)malloc((size_t)(s->n * s->nr) * 4);
    ck_assert(x && z);
    fill_random(x, s->n * s->d, &seed, -2.0f, 2.0f);
    h->dk->dot(wt, wt == EEVP_WEIGHT_F32 ? (const void *)w.Wf : (const void *)w.Wh, s->stride,
               s->nr, s->d, s->n, x, s->d, z, s->nr);
    for (i = 0; i < s->n; i++)
        for (r = 0; r < s->nr; r++) {
            double ref = 0.0, abs_sum = 0.0;
            for (c = 0; c < s->d; c++) {
                ref += (double)w.Wf[r * s->stride + c] * x[i * s->d + c];
                abs_sum += fabs((double)w.Wf[r * s->stride + c] * x[i * s->d + c]);
            }
            EXPECT(ref_close(z[i * s->nr + r], ref, s->d, abs_sum),
                   "%s wt %d vec %d row %lld: %.9g vs %.9g", h->dk->name, (int)wt, (int)i,
                   (long long)r, z[i * s->nr + r], ref);
        }
    free(x);
    free(z);
    eevp_head_free(h);
    hw_free(&w);
}
END_TEST

/* A vector's results do not depend on the batch around it, nor on which
 * rows are computed together: the same bits alone and in any company. */
START_TEST(test_dot_invariant)
{
    const dshape *s = &dshapes[_i / 6];
    const int32_t wt = wtypes[(_i / 2) % 3];
    const uint32_t flags = (_i % 2) ? EEVP_HEAD_NO_SIMD : 0u;
    const int32_t nmax = 20;
    uint32_t seed = 99u + (uint32_t)_i;
    hw w;
    eevp_head *h;
    float *x, *z1, *zn;
    const void *W;
    int32_t n, i;

    hw_init(&w, wt, s->nr, s->d, s->stride, &seed);
    W = wt == EEVP_WEIGHT_F32 ? (const void *)w.Wf : (const void *)w.Wh;
    h = hw_head(&w, flags, EEVP_NORM_NONE, NULL, 0.0f, 0.0f, 0);
    x = (float *)malloc((size_t)(nmax * s->d) * 4);
    z1 = (float *)malloc((size_t)(nmax * s->nr) * 4);
    zn = (float *)malloc((size_t)(nmax * s->nr) * 4);
    ck_assert(x && z1 && zn);
    fill_random(x, nmax * s->d, &seed, -1.0f, 1.0f);
    for (i = 0; i < nmax; i++)
        h->dk->dot(wt, W, s->stride, s->nr, s->d, 1, x + i * s->d, s->d, z1 + i * s->nr, s->nr);
    for (n = 2; n <= nmax; n++) {
        h->dk->dot(wt, W, s->stride, s->nr, s->d, n, x, s->d, zn, s->nr);
        EXPECT(memcmp(zn, z1, (size_t)(n * s->nr) * 4) == 0, "%s: batch of %d differs",
               h->dk->name, (int)n);
    }
    if (s->nr > 2) {
        /* Rows 1 .. nr-2 on their own. */
        const char *W1 = (const char *)W + s->stride * (wt == EEVP_WEIGHT_F32 ? 4 : 2);
        h->dk->dot(wt, W1, s->stride, s->nr - 2, s->d, 5, x, s->d, zn, s->nr);
        for (i = 0; i < 5; i++)
            EXPECT(memcmp(zn + i * s->nr, z1 + i * s->nr + 1, (size_t)(s->nr - 2) * 4) == 0,
                   "%s: row subset differs", h->dk->name);
    }
    free(x);
    free(z1);
    free(zn);
    eevp_head_free(h);
    hw_free(&w);
}
END_TEST

/* The AVX-512 kernel (5-8 vectors) gives the AVX2 kernel's bits: both
 * called directly on the same data, every n from 1 to 12, shapes with
 * several row blocks, leftover rows and column chunks.  Loop index: shape
 * x storage type. */
START_TEST(test_dot_avx512_same_bits)
{
#if defined(EEVPI_HAVE_AVX512_KERNELS) && defined(__GNUC__)
    static const dshape sh[] = {{1, 8, 8, 0},     {5, 7, 9, 0},      {25, 1030, 1030, 0},
                                {100, 2055, 2056, 0}, {151, 64, 64, 0}, {53, 4096, 4100, 0}};
    const dshape *s = &sh[_i / 3];
    const int32_t wt = wtypes[_i % 3];
    uint32_t seed = 777u + (uint32_t)_i;
    hw w;
    float *x, *za, *zb;
    const void *W;
    int32_t n;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx2") ||
        !__builtin_cpu_supports("fma")) {
        fprintf(stderr, "check_dot: this CPU has no AVX-512F: its kernel is not compared\n");
        return;
    }
    hw_init(&w, wt, s->nr, s->d, s->stride, &seed);
    W = wt == EEVP_WEIGHT_F32 ? (const void *)w.Wf : (const void *)w.Wh;
    x = (float *)malloc((size_t)(12 * s->d) * 4);
    za = (float *)malloc((size_t)(12 * s->nr) * 4);
    zb = (float *)malloc((size_t)(12 * s->nr) * 4);
    ck_assert(x && za && zb);
    fill_random(x, 12 * s->d, &seed, -1.0f, 1.0f);
    for (n = 1; n <= 12; n++) {
        memset(za, 0xa5, (size_t)(n * s->nr) * 4);
        memset(zb, 0x5a, (size_t)(n * s->nr) * 4);
        eevpi_dotk_avx2.dot(wt, W, s->stride, s->nr, s->d, n, x, s->d, za, s->nr);
        eevpi_dotk_avx512.dot(wt, W, s->stride, s->nr, s->d, n, x, s->d, zb, s->nr);
        EXPECT(memcmp(za, zb, (size_t)(n * s->nr) * 4) == 0,
               "avx512 differs from avx2: wt %d, %lld x %lld, n %d", (int)wt, (long long)s->nr,
               (long long)s->d, (int)n);
    }
    free(x);
    free(za);
    free(zb);
    hw_free(&w);
#else
    fprintf(stderr, "check_dot: built without the AVX-512 kernel: nothing to compare\n");
#endif
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Half-precision heads through the public API                              */
/* ------------------------------------------------------------------------ */

/* Loop index: storage type (f16, bf16) x flags (none, no-simd, copy). */
START_TEST(test_half_head)
{
    const int32_t wt = _i < 3 ? EEVP_WEIGHT_F16 : EEVP_WEIGHT_BF16;
    static const uint32_t fl[] = {0u, EEVP_HEAD_NO_SIMD, EEVP_HEAD_COPY};
    const uint32_t flags = fl[_i % 3];
    /* Documented tolerance against the fp32 head on the unrounded weights:
     * half a unit in the last place of the storage format per product,
     * |z16 - z32| <= u * sum |w x| (u = 2^-11 fp16, 2^-8 bf16), plus the
     * float rounding of the sums. */
    const double u = wt == EEVP_WEIGHT_F16 ? ldexp(1.0, -11) : ldexp(1.0, -8);
    const int64_t V = 301, d = 72, stride = 75;
    const int32_t n = 6, K = 17;
    uint32_t seed = 4242u + (uint32_t)_i;
    hw w;
    eevp_head *h, *h32;
    eevp_head_options o32 = EEVP_HEAD_OPTIONS_INIT;
    float *bias, *hid, *z, *z32, *rows, *rbias, *zr, *work;
    double *zref, *asum, *xn;
    int32_t ids[17], r, j;
    int64_t v;
    ref_head rh;

    hw_init(&w, wt, V, d, stride, &seed);
    bias = (float *)malloc((size_t)V * 4);
    hid = (float *)malloc((size_t)(n * d) * 4);
    z = (float *)malloc((size_t)(n * V) * 4);
    z32 = (float *)malloc((size_t)(n * V) * 4);
    zref = (double *)malloc((size_t)V * 8);
    asum = (double *)malloc((size_t)V * 8);
    xn = (double *)malloc((size_t)d * 8);
    rows = (float *)malloc((size_t)(K * d) * 4);
    rbias = (float *)malloc((size_t)K * 4);
    zr = (float *)malloc((size_t)(n * K) * 4);
    work = (float *)malloc((size_t)(n * d) * 4 + 64);
    ck_assert(bias && hid && z && z32 && zref && asum && xn && rows && rbias && zr && work);
    fill_random(bias, V, &seed, -0.5f, 0.5f);
    fill_random(hid, n * d, &seed, -1.0f, 1.0f);

    h = hw_head(&w, flags, EEVP_NORM_RMS, bias, 0.75f, 4.0f, 0);
    if (flags & EEVP_HEAD_COPY)
        ck_assert_int_ge(eevp_head_memory(h), V * d * 2);
    else
        ck_assert_int_lt(eevp_head_memory(h), 4096); /* nothing of size V x d */
    o32.n_vocab = V;
    o32.dim = d;
    o32.row_stride = stride;
    o32.weights = w.Worig;
    o32.norm = EEVP_NORM_RMS;
    o32.logit_bias = bias;
    o32.logit_scale = 0.75f;
    o32.softcap = 4.0f;
    ck_assert_int_eq(eevp_head_create(&h32, &o32, NULL, 0), EEVP_OK);

    ck_assert_int_eq(eevp_head_logits(h, n, hid, d, z, V, work), EEVP_OK);
    ck_assert_int_eq(eevp_head_logits(h32, n, hid, d, z32, V, work), EEVP_OK);
    rh = hw_ref(&w, EEVP_NORM_RMS, bias, 0.75f, 4.0f);
    for (r = 0; r < n; r++) {
        ref_logits(&rh, hid + r * d, zref, asum);
        for (v = 0; v < V; v++) {
            EXPECT(ref_close(z[r * V + v], zref[v], d, asum[v]), "row %d tok %lld: %g vs %g",
                   (int)r, (long long)v, z[r * V + v], zref[v]);
            EXPECT(fabs((double)z[r * V + v] - z32[r * V + v]) <=
                       u * asum[v] * 1.01 + ref_bound(d, asum[v], zref[v]) * 2,
                   "vs fp32 head, row %d tok %lld: %g vs %g", (int)r, (long long)v,
                   z[r * V + v], z32[r * V + v]);
        }
    }

    /* Gathered rows are the stored values, converted to fp32 exactly. */
    for (j = 0; j < K; j++)
        ids[j] = (int32_t)((j * 37 + 5) % V);
    ck_assert_int_eq(eevp_head_gather(h, ids, K, rows, d, rbias), EEVP_OK);
    for (j = 0; j < K; j++) {
        EXPECT(memcmp(rows + j * d, w.Wf + (int64_t)ids[j] * stride, (size_t)d * 4) == 0,
               "gathered row %d", (int)j);
        EXPECT(rbias[j] == bias[ids[j]], "gathered bias %d", (int)j);
    }
    /* Pruned logits on those rows equal the full ones (both fp32 products
     * of the same values; within the float bound). */
    ck_assert_int_eq(eevp_head_pruned_logits(h, K, rows, d, rbias, n, hid, d, zr, K, work),
                     EEVP_OK);
    for (r = 0; r < n; r++) {
        ref_logits(&rh, hid + r * d, zref, asum);
        for (j = 0; j < K; j++)
            EXPECT(ref_close(zr[r * K + j], zref[ids[j]], d, asum[ids[j]]), "pruned %d %d",
                   (int)r, (int)j);
    }
    (void)xn;
    eevp_head_free(h);
    eevp_head_free(h32);
    free(bias);
    free(hid);
    free(z);
    free(z32);
    free(zref);
    free(asum);
    free(xn);
    free(rows);
    free(rbias);
    free(zr);
    free(work);
    hw_free(&w);
}
END_TEST

START_TEST(test_half_options)
{
    eevp_head_options o = EEVP_HEAD_OPTIONS_INIT;
    eevp_head *h = (eevp_head *)&o;
    static const float Wf[8] = {0};
    static const uint16_t Wh[8] = {0};
    o.n_vocab = 2;
    o.dim = 4;
    ck_assert_int_eq(o.weight_type, EEVP_WEIGHT_F32);
    ck_assert_ptr_null(o.weights_half);
    ck_assert_int_eq(o.screen_mult, 0);
    o.weight_type = 3;
    o.weights = Wf;
    ck_assert_int_eq(eevp_head_create(&h, &o, NULL, 0), EEVP_EINVAL);
    ck_assert_ptr_null(h);
    o.weight_type = EEVP_WEIGHT_F16; /* weights set, weights_half not */
    ck_assert_int_eq(eevp_head_create(&h, &o, NULL, 0), EEVP_EINVAL);
    o.weights_half = Wh; /* both set */
    ck_assert_int_eq(eevp_head_create(&h, &o, NULL, 0), EEVP_EINVAL);
    o.weights = NULL;
    ck_assert_int_eq(eevp_head_create(&h, &o, NULL, 0), EEVP_OK);
    eevp_head_free(h);
    o.weight_type = EEVP_WEIGHT_F32; /* fp32 with only weights_half */
    ck_assert_int_eq(eevp_head_create(&h, &o, NULL, 0), EEVP_EINVAL);
    o.weights = Wf;
    o.weights_half = NULL;
    o.screen_mult = 1;
    ck_assert_int_eq(eevp_head_create(&h, &o, NULL, 0), EEVP_ERANGE);
    o.screen_mult = 65;
    ck_assert_int_eq(eevp_head_create(&h, &o, NULL, 0), EEVP_ERANGE);
    o.screen_mult = 2;
    ck_assert_int_eq(eevp_head_create(&h, &o, NULL, 0), EEVP_OK);
    ck_assert_int_gt(eevp_head_screen_workspace_size(h, 1), 0);
    ck_assert_int_eq(eevp_head_screen_workspace_size(h, 0), EEVP_ERANGE);
    ck_assert_int_eq(eevp_head_screen_workspace_size(h, 3), EEVP_ERANGE);
    eevp_head_free(h);
    o.screen_mult = 0;
    ck_assert_int_eq(eevp_head_create(&h, &o, NULL, 0), EEVP_OK);
    ck_assert_int_eq(eevp_head_screen_workspace_size(h, 1), EEVP_EINVAL);
    ck_assert_int_eq(eevp_head_screen_workspace_size(NULL, 1), EEVP_EINVAL);
    eevp_head_free(h);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* int8 screening                                                           */
/* ------------------------------------------------------------------------ */

/* Loop index: 0, 1 screen everything (m*k >= V): the exact top-k, AVX2 and
 * portable; 2, 3 screen 2k: every returned logit is exact for its id, in
 * the order, ids distinct, and on structured states the exact top-1 found. */
START_TEST(test_screen)
{
    const uint32_t flags = (_i % 2) ? EEVP_HEAD_NO_SIMD : 0u;
    const int64_t V = 2000, d = 96;
    const int32_t K = _i < 2 ? 40 : 25, M = _i < 2 ? 64 : 2, n_states = 20;
    uint32_t seed = 77u + (uint32_t)_i;
    hw w;
    eevp_head *h;
    float *bias = (float *)malloc((size_t)V * 4), *hid = (float *)malloc((size_t)d * 4);
    float *zs = (float *)malloc((size_t)K * 4);
    double *zref = (double *)malloc((size_t)V * 8), *asum = (double *)malloc((size_t)V * 8);
    int32_t *perm = (int32_t *)malloc((size_t)V * 4), ids[40], t, j, top1_hits = 0;
    void *work, *work_block;
    int64_t c;
    ref_head rh;

    ck_assert(bias && hid && zs && zref && asum && perm);
    hw_init(&w, EEVP_WEIGHT_F32, V, d, d, &seed);
    fill_random(bias, V, &seed, -0.2f, 0.2f);
    bias[17] = -INFINITY;
    h = hw_head(&w, flags, EEVP_NORM_RMS, bias, 1.0f, 0.0f, M);
    work_block = malloc((size_t)eevp_head_screen_workspace_size(h, K) + 64);
    ck_assert_ptr_nonnull(work_block);
    work = (void *)(((uintptr_t)work_block + 63) & ~(uintptr_t)63);
    rh = hw_ref(&w, EEVP_NORM_RMS, bias, 1.0f, 0.0f);
    for (t = 0; t < n_states; t++) {
        const int64_t tok = (int64_t)(ref_rand_unit(&seed) * (V - 1));
        fill_random(hid, d, &seed, -0.3f, 0.3f);
        for (c = 0; c < d; c++)
            hid[c] += 4.0f * w.Wf[tok * d + c];
        ck_assert_int_eq(eevp_head_screen(h, hid, K, ids, zs, work), EEVP_OK);
        ref_logits(&rh, hid, zref, asum);
        ref_order(zref, NULL, (int32_t)V, perm);
        for (j = 0; j < K; j++) {
            EXPECT(ids[j] >= 0 && ids[j] < V, "id %d", (int)ids[j]);
            EXPECT(ref_close(zs[j], zref[ids[j]], d, asum[ids[j]]), "logit of %d", (int)ids[j]);
            if (j > 0)
                EXPECT(zs[j - 1] > zs[j] || (zs[j - 1] == zs[j] && ids[j - 1] < ids[j]),
                       "order at %d", (int)j);
            if (_i < 2)
                EXPECT(ids[j] == perm[j] || zref[ids[j]] == zref[perm[j]],
                       "screening everything: exact top-k, %d: %d vs %d", (int)j, (int)ids[j],
                       (int)perm[j]);
        }
        top1_hits += ids[0] == perm[0];
    }
    ck_assert_int_ge(top1_hits, n_states - 1);
    ck_assert_int_eq(eevp_head_screen(h, hid, 0, ids, zs, work), EEVP_ERANGE);
    ck_assert_int_eq(eevp_head_screen(h, NULL, K, ids, zs, work), EEVP_EINVAL);
    hid[3] = NAN;
    ck_assert_int_eq(eevp_head_screen(h, hid, K, ids, zs, work), EEVP_ENONFINITE);
    eevp_head_free(h);
    hw_free(&w);
    free(work_block);
    free(bias);
    free(hid);
    free(zs);
    free(zref);
    free(asum);
    free(perm);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Batched pruned checks: per sequence and over the union                   */
/* ------------------------------------------------------------------------ */

/* Loop index: overlap pattern x head options x kernel set. */
START_TEST(test_pruned_union)
{
    const int pattern = _i / 4;                 /* 0 disjoint, 1 shared core, 2 identical */
    const int opts = (_i / 2) % 2;              /* 0 plain, 1 bias + scale + cap */
    const uint32_t flags = (_i % 2) ? EEVP_HEAD_NO_SIMD : 0u;
    const int64_t V = 700, d = 45;
    const int32_t B = 11;
    uint32_t seed = 555u + (uint32_t)_i;
    hw w;
    eevp_head *h;
    float *bias = (float *)malloc((size_t)V * 4), *hid = (float *)malloc((size_t)(B * d) * 4);
    float *xn = (float *)malloc((size_t)(B * d) * 4);
    int32_t k_of[11], *ids[11];
    const int32_t *cids[11];
    float *rows[11], *rb[11], *z1[11], *z2[11];
    const float *crows[11], *crb[11];
    int64_t sum_k = 0, *keys;
    void *umem;
    float *work;
    eevpi_union u;
    double *zref = (double *)malloc((size_t)V * 8), *asum = (double *)malloc((size_t)V * 8);
    int32_t i, j;
    ref_head rh;

    ck_assert(bias && hid && xn && zref && asum);
    hw_init(&w, EEVP_WEIGHT_F32, V, d, d, &seed);
    fill_random(bias, V, &seed, -0.5f, 0.5f);
    bias[3] = -INFINITY;
    fill_random(hid, B * d, &seed, -1.0f, 1.0f);
    h = hw_head(&w, flags, EEVP_NORM_RMS, opts ? bias : NULL, opts ? 0.5f : 0.0f,
                opts ? 3.0f : 0.0f, 0);
    rh = hw_ref(&w, EEVP_NORM_RMS, opts ? bias : NULL, opts ? 0.5f : 0.0f, opts ? 3.0f : 0.0f);
    for (i = 0; i < B; i++) {
        k_of[i] = 5 + (int32_t)(ref_rand_u32(&seed) % 40); /* sizes differ */
        ids[i] = (int32_t *)malloc((size_t)k_of[i] * 4);
        rows[i] = (float *)malloc((size_t)(k_of[i] * d) * 4);
        rb[i] = (float *)malloc((size_t)k_of[i] * 4);
        z1[i] = (float *)malloc((size_t)k_of[i] * 4);
        z2[i] = (float *)malloc((size_t)k_of[i] * 4);
        ck_assert(ids[i] && rows[i] && rb[i] && z1[i] && z2[i]);
        for (j = 0; j < k_of[i]; j++)
            ids[i][j] = pattern == 0   ? (int32_t)((i * 50 + j) % V)
                        : pattern == 2 ? (int32_t)((j * 13) % V)
                        : j < 4        ? (int32_t)(j * 7)
                                       : (int32_t)(100 + (ref_rand_u32(&seed) % 600));
        /* Ids within a set are distinct (a pruned set is a set). */
        for (j = 1; j < k_of[i]; j++) {
            int32_t q;
            for (q = 0; q < j; q++)
                if (ids[i][q] == ids[i][j]) {
                    ids[i][j] = (ids[i][j] + 1) % (int32_t)V;
                    q = -1;
                }
        }
        eevp_head_gather(h, ids[i], k_of[i], rows[i], d, rb[i]);
        cids[i] = ids[i];
        crows[i] = rows[i];
        crb[i] = opts ? rb[i] : NULL;
        sum_k += k_of[i];
        {
            /* The normalised row both kernels take (the reference's norm,
             * rounded to float). */
            double xd[45];
            int64_t c;
            ref_norm(&rh, hid + i * d, xd);
            for (c = 0; c < d; c++)
                xn[i * d + c] = (float)xd[c];
        }
    }
    keys = (int64_t *)malloc((size_t)sum_k * 16);
    umem = malloc((size_t)eevpi_union_size(h, B, sum_k));
    work = (float *)malloc((size_t)(B * sum_k) * 4);
    ck_assert(keys && umem && work);
    eevpi_union_build(h, B, k_of, cids, &u, umem, keys);
    ck_assert_int_le(u.n_union, sum_k);
    ck_assert_int_le(u.n_dense, u.n_union);
    if (pattern == 0)
        ck_assert_int_eq(u.n_union, sum_k);
    if (pattern == 0)
        ck_assert_int_eq(u.n_dense, 0);
    else
        ck_assert_int_gt(u.n_dense, 0);
    for (i = 0; i < u.n_union; i++)
        EXPECT(i == 0 || i == u.n_dense || u.ids[i - 1] < u.ids[i], "union ids order at %d",
               (int)i);
    eevpi_pruned_each(h, B, k_of, crows, crb, xn, z1);
    {
        int32_t act[11];
        for (i = 0; i < B; i++)
            act[i] = i;
        eevpi_pruned_union(h, &u, NULL, B, act, k_of, xn, z2, work);
    }
    for (i = 0; i < B; i++) {
        EXPECT(memcmp(z1[i], z2[i], (size_t)k_of[i] * 4) == 0, "seq %d: union differs",
               (int)i);
        ref_logits(&rh, hid + i * d, zref, asum);
        for (j = 0; j < k_of[i]; j++)
            EXPECT(ref_close(z1[i][j], zref[ids[i][j]], d, asum[ids[i][j]]),
                   "seq %d cand %d: %g vs %g", (int)i, (int)j, z1[i][j], zref[ids[i][j]]);
    }
    /* The pick: disjoint sets never take the union; identical ones do. */
    if (pattern == 0)
        ck_assert_int_eq(eevpi_union_pick(h, &u, k_of), 0);
    if (pattern == 2)
        ck_assert_int_eq(eevpi_union_pick(h, &u, k_of), 1);
    {
        /* A subset of the sequences (those still running) through the plan
         * gives the same bits as well. */
        int32_t act[3] = {1, 4, 9};
        float *zs[3];
        float *xs = (float *)malloc((size_t)(3 * d) * 4);
        ck_assert_ptr_nonnull(xs);
        for (i = 0; i < 3; i++) {
            memcpy(xs + i * d, xn + act[i] * d, (size_t)d * 4);
            zs[i] = z2[act[i]];
            memset(zs[i], 0, (size_t)k_of[act[i]] * 4);
        }
        eevpi_pruned_union(h, &u, NULL, 3, act, k_of, xs, zs, work);
        for (i = 0; i < 3; i++)
            EXPECT(memcmp(z1[act[i]], zs[i], (size_t)k_of[act[i]] * 4) == 0,
                   "subset seq %d differs", (int)act[i]);
        free(xs);
    }
    for (i = 0; i < B; i++) {
        free(ids[i]);
        free(rows[i]);
        free(rb[i]);
        free(z1[i]);
        free(z2[i]);
    }
    free(keys);
    free(umem);
    free(work);
    free(bias);
    free(hid);
    free(xn);
    free(zref);
    free(asum);
    eevp_head_free(h);
    hw_free(&w);
}
END_TEST

Suite *make_dot_suite(void)
{
    Suite *s = suite_create("dot");
    TCase *tc = tcase_create("convert");
    tcase_add_test(tc, test_f16_convert);
    tcase_add_test(tc, test_bf16_convert);
    suite_add_tcase(s, tc);

    tc = tcase_create("dot");
    tcase_add_loop_test(tc, test_dot_reference, 0, N_DSHAPES * 6);
    tcase_add_loop_test(tc, test_dot_invariant, 0, N_DSHAPES * 6);
    tcase_add_loop_test(tc, test_dot_avx512_same_bits, 0, 18);
    suite_add_tcase(s, tc);

    tc = tcase_create("half");
    tcase_add_loop_test(tc, test_half_head, 0, 6);
    tcase_add_test(tc, test_half_options);
    suite_add_tcase(s, tc);

    tc = tcase_create("screen");
    tcase_add_loop_test(tc, test_screen, 0, 4);
    suite_add_tcase(s, tc);

    tc = tcase_create("union");
    tcase_add_loop_test(tc, test_pruned_union, 0, 12);
    suite_add_tcase(s, tc);
    return s;
}
