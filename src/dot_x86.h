/* SPDX-License-Identifier: MIT */
/* dot_x86.h - the pieces of a dot product that the AVX2 and AVX-512 dot
 * kernels (dot_avx2.c, dot_avx512.c) share, so that both end every (row,
 * vector) sum with the same operations and therefore the same bits. */
#ifndef EEVP_DOT_X86_H
#define EEVP_DOT_X86_H

#include "internal.h"

#if defined(EEVPI_HAVE_AVX2_KERNELS)
#include <immintrin.h>

#define EEVPI_AVX2_TARGET __attribute__((target("avx2,fma,f16c")))
#define EEVPI_INLINE static inline __attribute__((always_inline))

/* The fixed horizontal sum of one 8-lane accumulator. */
EEVPI_AVX2_TARGET EEVPI_INLINE float dotx_hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Element i of a row of storage type wt, as fp32 (the scalar tail). */
EEVPI_AVX2_TARGET EEVPI_INLINE float dotx_load1(int32_t wt, const void *W, int64_t i)
{
    if (wt == EEVP_WEIGHT_F16)
        return _cvtsh_ss(((const uint16_t *)W)[i]);
    if (wt == EEVP_WEIGHT_BF16)
        return eevpi_bf16_to_f32(((const uint16_t *)W)[i]);
    return ((const float *)W)[i];
}
#endif

#endif
