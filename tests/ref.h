/* SPDX-License-Identifier: MIT */
/*
 * ref.h - plain reference implementations and helpers for the Check suites.
 *
 * Everything here is written for clarity, not speed, and accumulates in
 * double.  Expected values in the tests come from here, never from the
 * library under test.
 */
#ifndef EEVP_TESTS_REF_H
#define EEVP_TESTS_REF_H

#include <stddef.h>
#include <stdint.h>

#include "eevp.h"

/* ------------------------------------------------------------------------ */
/* Reference LM head                                                        */
/* ------------------------------------------------------------------------ */

/* A head as the reference sees it.  norm uses the EEVP_NORM_* values;
 * nw, nb and bias may be NULL; stride 0 means d; scale 0 means 1; cap 0
 * means no soft-cap. */
typedef struct ref_head {
    int64_t V, d, stride, offset;
    const float *W;
    int norm;
    double eps;
    const float *nw, *nb, *bias;
    double scale;
    double cap;
} ref_head;

/* Normalise one hidden state x (d floats) into out (d doubles). */
void ref_norm(const ref_head *h, const float *x, double *out);

/* z_v for local row v from the normalised state xn.  When abs_sum is not
 * NULL it receives |scale| * sum_c |W[v][c] * xn[c]|, the magnitude that
 * scales the rounding error of the dot product (see ref_bound).  A bias of
 * -INFINITY masks the token: z_v = -INFINITY, also under a soft-cap. */
double ref_logit(const ref_head *h, const double *xn, int64_t v, double *abs_sum);

/* All V logits of hidden state x into z; abs_sum (V doubles) may be NULL. */
void ref_logits(const ref_head *h, const float *x, double *z, double *abs_sum);

/* Allowed |z - z_ref| for a float computation of a d-term dot product:
 * 4*d*FLT_EPSILON*abs_sum + 4*FLT_EPSILON*|z| + 1e-30. */
double ref_bound(int64_t d, double abs_sum, double z);

/* 1 when the float z is within ref_bound of the reference (infinities
 * must be equal exactly), else 0. */
int ref_close(float z, double zref, int64_t d, double abs_sum);

/* perm[0..n-1] = indices 0..n-1 sorted by (z descending, ids ascending);
 * ids NULL means ids[i] = i.  z must not hold NaN. */
void ref_order(const double *z, const int32_t *ids, int32_t n, int32_t *perm);

/* ------------------------------------------------------------------------ */
/* Reference confidences                                                    */
/* ------------------------------------------------------------------------ */

/* Every probability-based one is 0 when no logit is finite (all masked). */

/* p1 - p2 of softmax(z[0..n-1]) (p2 = 0 with a single finite logit). */
double ref_conf_top2(const double *z, int32_t n);
/* p1 of softmax(z[0..n-1]). */
double ref_conf_maxprob(const double *z, int32_t n);
/* 1 - H / ln n_finite over the finite logits; 1 when n_finite == 1, 0 when
 * n_finite == 0. */
double ref_conf_entropy(const double *z, int32_t n);
/* 1 - JS(softmax(za), softmax(zb)) / ln 2, natural log; 0 when either side
 * has no finite logit. */
double ref_js(const double *za, const double *zb, int32_t n);
/* Cosine of a and b; 0 when either norm is 0. */
double ref_cos(const float *a, const float *b, int64_t d);

/* CALM threshold: threshold * (9 + exp(-tau * t / max_length)) / 10. */
double ref_threshold_calm(double threshold, double tau, int32_t t, int32_t max_length);

/* ------------------------------------------------------------------------ */
/* Deterministic random numbers                                             */
/* ------------------------------------------------------------------------ */

/* xorshift32; *seed 0 is replaced by a fixed non-zero value. */
uint32_t ref_rand_u32(uint32_t *seed);
/* Uniform in [lo, hi). */
double ref_rand_unit(uint32_t *seed);
void fill_random(float *x, int64_t n, uint32_t *seed, float lo, float hi);

/* ------------------------------------------------------------------------ */
/* Canary buffers                                                           */
/* ------------------------------------------------------------------------ */

#define CANARY_PAD 16              /* elements on each side */
#define CANARY_BITS 0x7fc0deadu    /* NaN payload in the guard zones */
#define CANARY_POISON 0x7fc0beefu  /* NaN payload in the fresh inner area */

/* n floats (n may be 0) between two guard zones of CANARY_PAD elements; the
 * inner area is filled with CANARY_POISON so unwritten outputs show. */
float *canary_alloc(size_t n_floats);
/* 1 when both guard zones are intact. */
int canary_ok(const float *p, size_t n_floats);
void canary_free(float *p);
/* Re-poison the inner area. */
void canary_poison(float *p, size_t n_floats);
/* 1 when p[i] still holds the poison bit pattern. */
int canary_is_poison(const float *p, size_t i);

int32_t *canary_alloc_i32(size_t n);
int canary_ok_i32(const int32_t *p, size_t n);
void canary_free_i32(int32_t *p);

/* Byte buffer (workspace) with guards; the inner pointer is 64-byte aligned. */
void *canary_alloc_bytes(size_t n_bytes);
int canary_ok_bytes(const void *p, size_t n_bytes);
void canary_free_bytes(void *p);

/* ------------------------------------------------------------------------ */
/* Counting, failing allocator                                              */
/* ------------------------------------------------------------------------ */

typedef struct test_alloc {
    int64_t fail_at;    /* 1-based number of the call that fails; 0 = never */
    int64_t n_calls;    /* alloc calls so far (failed ones included) */
    int64_t live;       /* blocks allocated and not yet freed */
    int64_t bytes_live; /* requested bytes of those blocks */
    int64_t max_single; /* largest single request seen */
} test_alloc;

void *test_alloc_fn(void *opaque, size_t size);
void test_free_fn(void *opaque, void *ptr);
/* {test_alloc_fn, test_free_fn, t} */
eevp_allocator test_allocator(test_alloc *t);

#endif /* EEVP_TESTS_REF_H */
