/* SPDX-License-Identifier: MIT */
/*
 * ref.c - plain reference implementations and helpers for the Check suites.
 * Clarity over speed; double accumulation throughout.
 */
#include "ref.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Reference LM head                                                        */
/* ------------------------------------------------------------------------ */

void ref_norm(const ref_head *h, const float *x, double *out)
{
    int64_t d = h->d;
    int64_t c;

    if (h->norm == EEVP_NORM_RMS) {
        double ms = 0.0;
        for (c = 0; c < d; c++)
            ms += (double)x[c] * (double)x[c];
        ms /= (double)d;
        double inv = 1.0 / sqrt(ms + h->eps);
        for (c = 0; c < d; c++) {
            double w = h->nw ? (double)h->nw[c] : 1.0;
            out[c] = (double)x[c] * inv * w;
        }
    } else if (h->norm == EEVP_NORM_LAYER) {
        double mean = 0.0, var = 0.0;
        for (c = 0; c < d; c++)
            mean += (double)x[c];
        mean /= (double)d;
        for (c = 0; c < d; c++) {
            double t = (double)x[c] - mean;
            var += t * t;
        }
        var /= (double)d;
        double inv = 1.0 / sqrt(var + h->eps);
        for (c = 0; c < d; c++) {
            double w = h->nw ? (double)h->nw[c] : 1.0;
            double b = h->nb ? (double)h->nb[c] : 0.0;
            out[c] = ((double)x[c] - mean) * inv * w + b;
        }
    } else {
        for (c = 0; c < d; c++)
            out[c] = (double)x[c];
    }
}

double ref_logit(const ref_head *h, const double *xn, int64_t v, double *abs_sum)
{
    int64_t stride = h->stride ? h->stride : h->d;
    const float *row = h->W + v * stride;
    double scale = h->scale != 0.0 ? h->scale : 1.0;
    double dot = 0.0, sabs = 0.0;
    int64_t c;

    for (c = 0; c < h->d; c++) {
        double t = (double)row[c] * xn[c];
        dot += t;
        sabs += fabs(t);
    }
    if (abs_sum)
        *abs_sum = fabs(scale) * sabs;

    double b = h->bias ? (double)h->bias[v] : 0.0;
    if (isinf(b) && b < 0)
        return -INFINITY; /* a masked token stays masked */
    double u = scale * dot + b;
    if (h->cap > 0.0)
        u = h->cap * tanh(u / h->cap);
    return u;
}

void ref_logits(const ref_head *h, const float *x, double *z, double *abs_sum)
{
    double *xn = malloc((size_t)h->d * sizeof *xn);
    int64_t v;

    if (!xn)
        abort();
    ref_norm(h, x, xn);
    for (v = 0; v < h->V; v++)
        z[v] = ref_logit(h, xn, v, abs_sum ? &abs_sum[v] : NULL);
    free(xn);
}

double ref_bound(int64_t d, double abs_sum, double z)
{
    return 4.0 * (double)d * FLT_EPSILON * abs_sum + 4.0 * FLT_EPSILON * fabs(z) + 1e-30;
}

int ref_close(float z, double zref, int64_t d, double abs_sum)
{
    if (isnan(z) || isnan(zref))
        return 0;
    if (isinf(zref) || isinf(z))
        return (double)z == zref;
    return fabs((double)z - zref) <= ref_bound(d, abs_sum, zref);
}

/* qsort has no context argument: the comparison reads these two. */
static const double *order_z;
static const int32_t *order_ids;

static int order_cmp(const void *pa, const void *pb)
{
    int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    double za = order_z[a], zb = order_z[b];
    int32_t ia = order_ids ? order_ids[a] : a;
    int32_t ib = order_ids ? order_ids[b] : b;

    if (za > zb)
        return -1;
    if (za < zb)
        return 1;
    return (ia > ib) - (ia < ib);
}

void ref_order(const double *z, const int32_t *ids, int32_t n, int32_t *perm)
{
    int32_t i;

    for (i = 0; i < n; i++)
        perm[i] = i;
    order_z = z;
    order_ids = ids;
    qsort(perm, (size_t)n, sizeof *perm, order_cmp);
    order_z = NULL;
    order_ids = NULL;
}

/* ------------------------------------------------------------------------ */
/* Reference confidences                                                    */
/* ------------------------------------------------------------------------ */

/* Softmax of z into p (n doubles, caller's); returns the number of finite
 * logits.  All -inf gives all zeros. */
static int32_t softmax(const double *z, int32_t n, double *p)
{
    double m = -INFINITY, s = 0.0;
    int32_t i, n_finite = 0;

    for (i = 0; i < n; i++) {
        if (isfinite(z[i]))
            n_finite++;
        if (z[i] > m)
            m = z[i];
    }
    for (i = 0; i < n; i++) {
        p[i] = isinf(z[i]) && z[i] < 0 ? 0.0 : exp(z[i] - m);
        s += p[i];
    }
    for (i = 0; i < n; i++)
        p[i] = s > 0.0 ? p[i] / s : 0.0;
    return n_finite;
}

static double *alloc_doubles(int32_t n)
{
    double *p = malloc((size_t)(n > 0 ? n : 1) * sizeof *p);
    if (!p)
        abort();
    return p;
}

double ref_conf_top2(const double *z, int32_t n)
{
    double *p = alloc_doubles(n);
    double p1 = 0.0, p2 = 0.0;
    int32_t i;

    softmax(z, n, p);
    for (i = 0; i < n; i++) {
        if (p[i] > p1) {
            p2 = p1;
            p1 = p[i];
        } else if (p[i] > p2) {
            p2 = p[i];
        }
    }
    free(p);
    return p1 - p2;
}

double ref_conf_maxprob(const double *z, int32_t n)
{
    double *p = alloc_doubles(n);
    double p1 = 0.0;
    int32_t i;

    softmax(z, n, p);
    for (i = 0; i < n; i++)
        if (p[i] > p1)
            p1 = p[i];
    free(p);
    return p1;
}

double ref_conf_entropy(const double *z, int32_t n)
{
    double *p = alloc_doubles(n);
    double H = 0.0;
    int32_t i, n_finite = softmax(z, n, p);

    for (i = 0; i < n; i++)
        if (p[i] > 0.0)
            H -= p[i] * log(p[i]);
    free(p);
    if (n_finite == 0)
        return 0.0; /* all masked */
    if (n_finite == 1)
        return 1.0;
    return 1.0 - H / log((double)n_finite);
}

double ref_js(const double *za, const double *zb, int32_t n)
{
    double *p = alloc_doubles(n), *q = alloc_doubles(n);
    double js = 0.0;
    int32_t i;

    if (softmax(za, n, p) == 0 || softmax(zb, n, q) == 0) {
        free(p);
        free(q);
        return 0.0; /* all masked on one side */
    }
    for (i = 0; i < n; i++) {
        double m = 0.5 * (p[i] + q[i]);
        if (p[i] > 0.0)
            js += 0.5 * p[i] * log(p[i] / m);
        if (q[i] > 0.0)
            js += 0.5 * q[i] * log(q[i] / m);
    }
    free(p);
    free(q);
    return 1.0 - js / log(2.0);
}

double ref_cos(const float *a, const float *b, int64_t d)
{
    double ab = 0.0, aa = 0.0, bb = 0.0;
    int64_t c;

    for (c = 0; c < d; c++) {
        ab += (double)a[c] * (double)b[c];
        aa += (double)a[c] * (double)a[c];
        bb += (double)b[c] * (double)b[c];
    }
    if (aa == 0.0 || bb == 0.0)
        return 0.0;
    return ab / (sqrt(aa) * sqrt(bb));
}

double ref_threshold_calm(double threshold, double tau, int32_t t, int32_t max_length)
{
    return threshold * (9.0 + exp(-tau * (double)t / (double)max_length)) / 10.0;
}

/* ------------------------------------------------------------------------ */
/* Deterministic random numbers                                             */
/* ------------------------------------------------------------------------ */

uint32_t ref_rand_u32(uint32_t *seed)
{
    uint32_t x = *seed ? *seed : 2463534242u;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *seed = x;
    return x;
}

double ref_rand_unit(uint32_t *seed)
{
    return (double)(ref_rand_u32(seed) >> 8) / 16777216.0; /* 24 bits */
}

void fill_random(float *x, int64_t n, uint32_t *seed, float lo, float hi)
{
    int64_t i;

    for (i = 0; i < n; i++) {
        float v = (float)((double)lo + ((double)hi - (double)lo) * ref_rand_unit(seed));
        x[i] = v < hi ? v : lo; /* rounding may land on hi */
    }
}

/* ------------------------------------------------------------------------ */
/* Canary buffers                                                           */
/* ------------------------------------------------------------------------ */

#define GUARD_BYTES 64 /* also the inner alignment */

static void *guarded_alloc(size_t inner_bytes)
{
    void *base = NULL;
    if (posix_memalign(&base, GUARD_BYTES, inner_bytes + 2 * GUARD_BYTES) != 0)
        abort();
    return (unsigned char *)base + GUARD_BYTES;
}

static void guarded_free(void *inner)
{
    if (inner)
        free((unsigned char *)inner - GUARD_BYTES);
}

static void fill_u32(void *p, size_t n, uint32_t bits)
{
    size_t i;
    for (i = 0; i < n; i++)
        memcpy((unsigned char *)p + 4 * i, &bits, 4);
}

static int check_u32(const void *p, size_t n, uint32_t bits)
{
    size_t i;
    for (i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, (const unsigned char *)p + 4 * i, 4);
        if (u != bits)
            return 0;
    }
    return 1;
}

float *canary_alloc(size_t n_floats)
{
    float *p = guarded_alloc(n_floats * sizeof(float));
    fill_u32(p - CANARY_PAD, CANARY_PAD, CANARY_BITS);
    fill_u32(p + n_floats, CANARY_PAD, CANARY_BITS);
    fill_u32(p, n_floats, CANARY_POISON);
    return p;
}

int canary_ok(const float *p, size_t n_floats)
{
    return check_u32(p - CANARY_PAD, CANARY_PAD, CANARY_BITS) &&
           check_u32(p + n_floats, CANARY_PAD, CANARY_BITS);
}

void canary_free(float *p)
{
    guarded_free(p);
}

void canary_poison(float *p, size_t n_floats)
{
    fill_u32(p, n_floats, CANARY_POISON);
}

int canary_is_poison(const float *p, size_t i)
{
    return check_u32(p + i, 1, CANARY_POISON);
}

int32_t *canary_alloc_i32(size_t n)
{
    int32_t *p = guarded_alloc(n * sizeof(int32_t));
    fill_u32(p - CANARY_PAD, CANARY_PAD, CANARY_BITS);
    fill_u32(p + n, CANARY_PAD, CANARY_BITS);
    fill_u32(p, n, CANARY_POISON);
    return p;
}

int canary_ok_i32(const int32_t *p, size_t n)
{
    return check_u32(p - CANARY_PAD, CANARY_PAD, CANARY_BITS) &&
           check_u32(p + n, CANARY_PAD, CANARY_BITS);
}

void canary_free_i32(int32_t *p)
{
    guarded_free(p);
}

void *canary_alloc_bytes(size_t n_bytes)
{
    unsigned char *p = guarded_alloc(n_bytes);
    memset(p - GUARD_BYTES, 0xa5, GUARD_BYTES);
    memset(p + n_bytes, 0xa5, GUARD_BYTES);
    memset(p, 0x5a, n_bytes);
    return p;
}

int canary_ok_bytes(const void *p, size_t n_bytes)
{
    const unsigned char *b = p;
    size_t i;
    for (i = 0; i < GUARD_BYTES; i++)
        if (b[-(ptrdiff_t)GUARD_BYTES + (ptrdiff_t)i] != 0xa5 || b[n_bytes + i] != 0xa5)
            return 0;
    return 1;
}

void canary_free_bytes(void *p)
{
    guarded_free(p);
}

/* ------------------------------------------------------------------------ */
/* Counting, failing allocator                                              */
/* ------------------------------------------------------------------------ */

/* A size header in front of every block, padded to keep the block aligned
 * like malloc's. */
#define HDR 16

void *test_alloc_fn(void *opaque, size_t size)
{
    test_alloc *t = opaque;
    unsigned char *base;

    t->n_calls++;
    if ((int64_t)size > t->max_single)
        t->max_single = (int64_t)size;
    if (t->fail_at != 0 && t->n_calls == t->fail_at)
        return NULL;
    if (size > SIZE_MAX - HDR)
        return NULL;
    base = malloc(size + HDR);
    if (!base)
        return NULL;
    memcpy(base, &size, sizeof size);
    t->live++;
    t->bytes_live += (int64_t)size;
    return base + HDR;
}

void test_free_fn(void *opaque, void *ptr)
{
    test_alloc *t = opaque;
    unsigned char *base;
    size_t size;

    if (!ptr)
        return;
    base = (unsigned char *)ptr - HDR;
    memcpy(&size, base, sizeof size);
    t->live--;
    t->bytes_live -= (int64_t)size;
    free(base);
}

eevp_allocator test_allocator(test_alloc *t)
{
    eevp_allocator a;
    a.alloc = test_alloc_fn;
    a.free = test_free_fn;
    a.opaque = t;
    return a;
}
