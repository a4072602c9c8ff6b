/* SPDX-License-Identifier: MIT */
/* simd.c - portable kernels and the run-time choice of the CPU-specific ones.
 * The choice is made per head from what the CPU reports, never at build
 * time, and stored in the head: no process-global state. */
#include "internal.h"

static int64_t scan_gt_portable(const float *x, int64_t i0, int64_t n, float t)
{
    int64_t i;
    for (i = i0; i < n; i++)
        if (!(x[i] <= t))
            return i;
    return n;
}

static void sums_portable(const float *x, int64_t n, double *sum, double *sumsq)
{
    double s = 0.0, q = 0.0;
    int64_t i;
    for (i = 0; i < n; i++) {
        s += x[i];
        q += (double)x[i] * x[i];
    }
    *sum = s;
    *sumsq = q;
}

const eevpi_kernels eevpi_kernels_portable = {"portable", scan_gt_portable, sums_portable};

const eevpi_kernels *eevpi_kernels_select(int portable_only)
{
#if defined(EEVPI_HAVE_AVX2_KERNELS) && defined(__GNUC__)
    if (!portable_only) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
            return &eevpi_kernels_avx2;
    }
#else
    (void)portable_only;
#endif
    return &eevpi_kernels_portable;
}
