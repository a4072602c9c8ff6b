/* SPDX-License-Identifier: MIT */
/* dot.c - fixed-order dot kernels (portable versions and the run-time
 * choice), half-precision conversions and the multi-vector full projection.
 *
 * Why the library has its own projection kernels next to OpenBLAS:
 *  - with several hidden states, OpenBLAS's SGEMM packs W (a copy of the
 *    whole head) and costs about 4x one SGEMV at B = 2; these kernels read
 *    each row of W once for all the vectors;
 *  - half-precision heads: Debian's OpenBLAS has no fp16/bf16 GEMV;
 *  - each (row, vector) dot product follows one fixed sequence of operations,
 *    so a hidden state gets the same bits alone or in any batch. */
#include "internal.h"

#include <math.h>
#include <string.h>

/* ---- half precision ---- */

float eevpi_f16_to_f32(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    uint32_t bits;
    float f;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp == 0) {
        /* Subnormal or zero: man * 2^-24, exact in float. */
        f = (float)man * (1.0f / 16777216.0f);
        return sign ? -f : f;
    } else {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    }
    memcpy(&f, &bits, sizeof f);
    return f;
}

uint16_t eevpi_f32_to_f16(float f)
{
    uint32_t x, sign, absx;
    memcpy(&x, &f, sizeof x);
    sign = (x >> 16) & 0x8000u;
    absx = x & 0x7fffffffu;
    if (absx > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u); /* NaN */
    if (absx >= 0x477ff000u)               /* rounds to >= 65536: Inf */
        return (uint16_t)(sign | 0x7c00u);
    if (absx < 0x38800000u) {
        /* Below the smallest normal: round absx * 2^24 to an integer, ties
         * to even (the float product is exact). */
        float a;
        memcpy(&a, &absx, sizeof a);
        return (uint16_t)(sign | (uint32_t)lrintf(a * 16777216.0f));
    }
    {
        /* Normal: drop 13 mantissa bits, round to nearest even; a carry
         * into the exponent is the right result. */
        const uint32_t r = absx - 0x38000000u; /* rebias 127 -> 15 */
        const uint32_t lsb = (r >> 13) & 1u;
        return (uint16_t)(sign | ((r + 0xfffu + lsb) >> 13));
    }
}

float eevpi_bf16_to_f32(uint16_t h)
{
    const uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

uint16_t eevpi_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40u); /* quiet NaN */
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

/* ---- portable kernels ---- */

static float load_one(int32_t wtype, const void *W, int64_t i)
{
    switch (wtype) {
    case EEVP_WEIGHT_F16:
        return eevpi_f16_to_f32(((const uint16_t *)W)[i]);
    case EEVP_WEIGHT_BF16:
        return eevpi_bf16_to_f32(((const uint16_t *)W)[i]);
    default:
        return ((const float *)W)[i];
    }
}

/* Eight lanes, element c into lane c % 8, lanes summed pairwise: the same
 * shape as the vector kernels, so the portable results are close to theirs. */
static float dot_one(int32_t wtype, const void *W, int64_t off, const float *x, int64_t d)
{
    float lane[8] = {0};
    float s;
    int64_t c, d8 = d & ~(int64_t)7;
    int j;
    for (c = 0; c < d8; c += 8)
        for (j = 0; j < 8; j++)
            lane[j] += load_one(wtype, W, off + c + j) * x[c + j];
    s = ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
    for (; c < d; c++)
        s += load_one(wtype, W, off + c) * x[c];
    return s;
}

static void dot_portable(int32_t wtype, const void *W, int64_t stride, int64_t nr, int64_t d,
                         int32_t n, const float *x, int64_t ldx, float *z, int64_t ldz)
{
    int64_t r;
    int32_t i;
    /* Row outer: the row stays in cache while every vector uses it. */
    for (r = 0; r < nr; r++)
        for (i = 0; i < n; i++)
            z[i * ldz + r] = dot_one(wtype, W, r * stride, x + i * ldx, d);
}

static void dot_q8_portable(const int8_t *Wq, int64_t nr, int64_t d, const int8_t *xq,
                            const float *scale, float xs, float *z)
{
    int64_t r, c;
    for (r = 0; r < nr; r++) {
        int64_t acc = 0;
        for (c = 0; c < d; c++)
            acc += (int32_t)Wq[r * d + c] * xq[c];
        z[r] = (float)acc * scale[r] * xs;
    }
}

static void to_f32_portable(int32_t wtype, const uint16_t *src, int64_t n, float *dst)
{
    int64_t i;
    for (i = 0; i < n; i++)
        dst[i] = wtype == EEVP_WEIGHT_BF16 ? eevpi_bf16_to_f32(src[i]) : eevpi_f16_to_f32(src[i]);
}

static void dot_rows_portable(const float *const *rows, int64_t nr, int64_t d, const float *x,
                              float *z)
{
    int64_t r;
    for (r = 0; r < nr; r++)
        z[r] = dot_one(EEVP_WEIGHT_F32, rows[r], 0, x, d);
}

const eevpi_dotk eevpi_dotk_portable = {"portable", dot_portable, dot_q8_portable,
                                        to_f32_portable, dot_rows_portable};

#if defined(EEVPI_HAVE_AVX2_KERNELS) && defined(__GNUC__)
#include <cpuid.h>
/* CPUID.1:ECX bit 29.  Asked directly: clang 14's __builtin_cpu_supports
 * does not know "f16c". */
static int has_f16c(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
}
#endif

const eevpi_dotk *eevpi_dotk_select(int portable_only)
{
#if defined(EEVPI_HAVE_AVX2_KERNELS) && defined(__GNUC__)
    if (!portable_only) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c()) {
#if defined(EEVPI_HAVE_AVX512_KERNELS)
            if (__builtin_cpu_supports("avx512f"))
                return &eevpi_dotk_avx512;
#endif
            return &eevpi_dotk_avx2;
        }
    }
#else
    (void)portable_only;
#endif
    return &eevpi_dotk_portable;
}

/* ---- projections with the head's kernels ---- */

static const void *head_rows(const eevp_head *h)
{
    return h->wtype == EEVP_WEIGHT_F32 ? (const void *)h->W : (const void *)h->W16;
}

void eevpi_head_project_range(const eevp_head *h, int64_t r0, int64_t r1, int32_t n,
                              const float *xn, float *z, int64_t ldz)
{
    const int64_t esz = h->wtype == EEVP_WEIGHT_F32 ? 4 : 2;
    int32_t r;
    if (r1 <= r0)
        return;
    h->dk->dot(h->wtype, (const char *)head_rows(h) + r0 * h->stride * esz, h->stride, r1 - r0,
               h->d, n, xn, h->d, z + r0, ldz);
    for (r = 0; r < n; r++)
        eevpi_head_transform(h, z + r * ldz + r0, r1 - r0, h->bias ? h->bias + r0 : NULL);
}

void eevpi_head_project_inv(const eevp_head *h, int32_t n, const float *xn, float *z,
                            int64_t ldz)
{
    eevpi_head_project_range(h, 0, h->V, n, xn, z, ldz);
}

void eevpi_head_project_rows_inv(const eevp_head *h, int32_t k, const float *rows,
                                 int64_t ld_rows, const float *bias, const float *xn, float *z)
{
    h->dk->dot(EEVP_WEIGHT_F32, rows, ld_rows, k, h->d, 1, xn, h->d, z, k);
    eevpi_head_transform(h, z, k, bias);
}
