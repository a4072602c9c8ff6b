/* SPDX-License-Identifier: MIT */
/* simd_avx2.c - AVX2/FMA kernels, compiled for those instructions through
 * target attributes (the rest of the library stays baseline x86-64) and run
 * only when the CPU reports them (eevpi_kernels_select). */
#include "internal.h"

#if defined(EEVPI_HAVE_AVX2_KERNELS)
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,fma")))

AVX2 static int64_t scan_gt_avx2(const float *x, int64_t i0, int64_t n, float t)
{
    const __m256 tv = _mm256_set1_ps(t);
    int64_t i = i0;
    for (; i + 32 <= n; i += 32) {
        /* Not-less-or-equal, unordered: true for x > t and for NaN. */
        __m256 a = _mm256_cmp_ps(_mm256_loadu_ps(x + i), tv, _CMP_NLE_UQ);
        __m256 b = _mm256_cmp_ps(_mm256_loadu_ps(x + i + 8), tv, _CMP_NLE_UQ);
        __m256 c = _mm256_cmp_ps(_mm256_loadu_ps(x + i + 16), tv, _CMP_NLE_UQ);
        __m256 d = _mm256_cmp_ps(_mm256_loadu_ps(x + i + 24), tv, _CMP_NLE_UQ);
        __m256 any = _mm256_or_ps(_mm256_or_ps(a, b), _mm256_or_ps(c, d));
        if (_mm256_movemask_ps(any))
            break;
    }
    for (; i + 8 <= n; i += 8) {
        int m = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), tv, _CMP_NLE_UQ));
        if (m)
            return i + __builtin_ctz((unsigned)m);
    }
    for (; i < n; i++)
        if (!(x[i] <= t))
            return i;
    return n;
}

AVX2 static void sums_avx2(const float *x, int64_t n, double *sum, double *sumsq)
{
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    __m256d q0 = _mm256_setzero_pd(), q1 = _mm256_setzero_pd();
    double s, q;
    double buf[4];
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
        __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
        s0 = _mm256_add_pd(s0, lo);
        s1 = _mm256_add_pd(s1, hi);
        q0 = _mm256_fmadd_pd(lo, lo, q0);
        q1 = _mm256_fmadd_pd(hi, hi, q1);
    }
    _mm256_storeu_pd(buf, _mm256_add_pd(s0, s1));
    s = (buf[0] + buf[1]) + (buf[2] + buf[3]);
    _mm256_storeu_pd(buf, _mm256_add_pd(q0, q1));
    q = (buf[0] + buf[1]) + (buf[2] + buf[3]);
    for (; i < n; i++) {
        s += x[i];
        q += (double)x[i] * x[i];
    }
    *sum = s;
    *sumsq = q;
}

const eevpi_kernels eevpi_kernels_avx2 = {"avx2", scan_gt_avx2, sums_avx2};
#else
/* ISO C forbids an empty translation unit. */
typedef int eevpi_no_avx2_kernels;
#endif
