/* SPDX-License-Identifier: MIT */
/* dot_avx2.c - the fixed-order dot kernels for AVX2/FMA/F16C, compiled for
 * those instructions through target attributes and run only when the CPU
 * reports them (eevpi_dotk_select).
 *
 * One (row, vector) dot product always runs the same way: one 8-lane
 * accumulator, lane j takes the FMAs of elements c = j (mod 8) in increasing
 * c, a fixed horizontal sum, then the scalar tail in increasing c.  The tile
 * shapes below only decide how many such accumulators run side by side. */
#include "internal.h"
#include "dot_x86.h"

#include <string.h>

#if defined(EEVPI_HAVE_AVX2_KERNELS)
#include <immintrin.h>

#define AVXF EEVPI_AVX2_TARGET
#define INLINE EEVPI_INLINE



AVXF INLINE __m256 load8(int32_t wt, const void *W, int64_t i)
{
    if (wt == EEVP_WEIGHT_F16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)W + i)));
    if (wt == EEVP_WEIGHT_BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)W + i))),
            16));
    return _mm256_loadu_ps((const float *)W + i);
}

/* R rows rp[0..R-1] times G vectors xp[0..G-1]: zp[b][a]. */
AVXF INLINE void tile(int32_t wt, const void *const *rp, int R, int G, int64_t d,
                      const float *const *xp, float *const *zp)
{
    const int64_t d8 = d & ~(int64_t)7;
    __m256 acc[8][4];
    int64_t c;
    int a, b;
#pragma GCC unroll 8
    for (a = 0; a < R; a++)
#pragma GCC unroll 4
        for (b = 0; b < G; b++)
            acc[a][b] = _mm256_setzero_ps();
    for (c = 0; c < d8; c += 8) {
        __m256 xv[4];
#pragma GCC unroll 4
        for (b = 0; b < G; b++)
            xv[b] = _mm256_loadu_ps(xp[b] + c);
#pragma GCC unroll 8
        for (a = 0; a < R; a++) {
            const __m256 w = load8(wt, rp[a], c);
#pragma GCC unroll 4
            for (b = 0; b < G; b++)
                acc[a][b] = _mm256_fmadd_ps(w, xv[b], acc[a][b]);
        }
    }
#pragma GCC unroll 8
    for (a = 0; a < R; a++)
#pragma GCC unroll 4
        for (b = 0; b < G; b++) {
            float s = dotx_hsum(acc[a][b]);
            int64_t t;
            for (t = d8; t < d; t++)
                s += dotx_load1(wt, rp[a], t) * xp[b][t];
            zp[b][a] = s;
        }
}

/* Rows [0, nr) for one group of G vectors: R-row tiles, then single rows. */
AVXF INLINE void sweep(int32_t wt, const void *W, int64_t stride, int64_t nr, int64_t d, int R,
                       int G, const float *const *xp, float *const *zp)
{
    const int64_t esz = wt == EEVP_WEIGHT_F32 ? 4 : 2;
    int64_t r = 0;
    float *zr[4];
    const void *rp[8];
    int a, b;
    for (; r + R <= nr; r += R) {
        for (b = 0; b < G; b++)
            zr[b] = zp[b] + r;
        for (a = 0; a < R; a++)
            rp[a] = (const char *)W + (r + a) * stride * esz;
        tile(wt, rp, R, G, d, xp, zr);
    }
    for (; r < nr; r++) {
        for (b = 0; b < G; b++)
            zr[b] = zp[b] + r;
        rp[0] = (const char *)W + r * stride * esz;
        tile(wt, rp, 1, G, d, xp, zr);
    }
}

/* One vector against rows anywhere (fp32): the n = 1 path of dot with row
 * pointers instead of a stride, so the same bits. */
AVXF static void dot_rows_avx2(const float *const *rows, int64_t nr, int64_t d, const float *x,
                               float *z)
{
    const float *xp[1];
    float *zp[1];
    int64_t r = 0;
    xp[0] = x;
    for (; r + 8 <= nr; r += 8) {
        zp[0] = z + r;
        tile(EEVP_WEIGHT_F32, (const void *const *)(rows + r), 8, 1, d, xp, zp);
    }
    for (; r < nr; r++) {
        zp[0] = z + r;
        tile(EEVP_WEIGHT_F32, (const void *const *)(rows + r), 1, 1, d, xp, zp);
    }
}

/* Eight columns of an R x G tile: each accumulator takes one FMA. */
AVXF INLINE void tile_step(int32_t wt, const void *W, int64_t stride, int R, int G, int64_t c,
                           const float *const *xp, __m256 (*acc)[4], int64_t pf)
{
    __m256 xv[4];
    int a, b;
#pragma GCC unroll 4
    for (b = 0; b < G; b++) {
        xv[b] = _mm256_loadu_ps(xp[b] + c);
        /* Pin x in a register: otherwise GCC folds its load into every
         * FMA (R loads instead of one) and the loop is load-bound. */
        if (G > 1)
            __asm__("" : "+x"(xv[b]));
    }
#pragma GCC unroll 8
    for (a = 0; a < R; a++) {
        const __m256 w = load8(wt, W, a * stride + c);
        /* Into L2, not L1: a T0 prefetch of W here made B = 4 about 1.7x
         * slower (measured on Zen 4), the L1 being busy with the chunks. */
        if (pf)
            _mm_prefetch((const char *)W + ((a * stride + c) * (wt == EEVP_WEIGHT_F32 ? 4 : 2) + pf),
                         _MM_HINT_T1);
#pragma GCC unroll 4
        for (b = 0; b < G; b++)
            acc[a][b] = _mm256_fmadd_ps(w, xv[b], acc[a][b]);
    }
}

/* Accumulators kept in memory between column chunks: tile_c continues the
 * lanes exactly where they stopped, so chunking changes no result.  pf, in
 * bytes, is how far ahead of each W row to prefetch (0: none); steps go in
 * pairs so that one prefetch covers 16 columns. */
AVXF INLINE void tile_c(int32_t wt, const void *W, int64_t stride, int R, int G, int64_t c0,
                        int64_t c1, const float *const *xp, float *const *st, int64_t pf)
{
    __m256 acc[8][4];
    int64_t c;
    int a, b;
#pragma GCC unroll 8
    for (a = 0; a < R; a++)
#pragma GCC unroll 4
        for (b = 0; b < G; b++)
            acc[a][b] = _mm256_loadu_ps(st[a * 4 + b]);
    if (pf) {
        for (c = c0; c + 16 <= c1; c += 16) {
            tile_step(wt, W, stride, R, G, c, xp, acc, pf);
            tile_step(wt, W, stride, R, G, c + 8, xp, acc, 0);
        }
    } else {
        for (c = c0; c + 16 <= c1; c += 16) {
            tile_step(wt, W, stride, R, G, c, xp, acc, 0);
            tile_step(wt, W, stride, R, G, c + 8, xp, acc, 0);
        }
    }
    if (c < c1)
        tile_step(wt, W, stride, R, G, c, xp, acc, pf);
#pragma GCC unroll 8
    for (a = 0; a < R; a++)
#pragma GCC unroll 4
        for (b = 0; b < G; b++)
            _mm256_storeu_ps(st[a * 4 + b], acc[a][b]);
}

/* Blocking for several vectors: RB rows of W at a time, swept in column
 * chunks of CB while every vector group passes over the chunk.  W is read
 * from memory once per VB vectors; x never leaves L1/L2.  While a block is
 * computed, the first vector group prefetches the next block (the same
 * columns RB rows further) into L2, so memory streams behind the FMAs.
 * RB and CB were picked by measurement (V x d = 32000 x 4096, B = 2..16):
 * 8/512 and 8/2048 were slower, 16/1024 and 8/1024 close. */
#define RB 16
#define CB 1024
#define VB 16

AVXF INLINE void drive_multi(int32_t wt, const void *W, int64_t stride, int64_t nr, int64_t d,
                             int32_t n, const float *x, int64_t ldx, float *z, int64_t ldz)
{
    const int64_t esz = wt == EEVP_WEIGHT_F32 ? 4 : 2;
    const int64_t d8 = d & ~(int64_t)7;
    float state[RB * VB * 8];
    int32_t v0;
    for (v0 = 0; v0 < n; v0 += VB) {
        const int32_t nv = n - v0 < VB ? n - v0 : VB;
        int64_t r0;
        for (r0 = 0; r0 < nr; r0 += RB) {
            const int rr = nr - r0 < RB ? (int)(nr - r0) : RB;
            const char *Wb = (const char *)W + r0 * stride * esz;
            int64_t c0;
            int a, i;
            memset(state, 0, sizeof(float) * 8 * (size_t)(rr * nv));
            for (c0 = 0; c0 < d8; c0 += CB) {
                const int64_t c1 = d8 - c0 < CB ? d8 : c0 + CB;
                for (i = 0; i < nv;) {
                    const int G = nv - i >= 4 ? 4 : nv - i;
                    /* Prefetch distance in bytes (the first group asks):
                     * the same place in the next row block. */
                    const int64_t pf = i == 0 && r0 + RB < nr ? RB * stride * esz : 0;
                    const int R = G >= 3 ? 2 : G == 2 ? 4 : 8;
                    const float *xp[4];
                    float *st[32];
                    int b, a0;
                    for (b = 0; b < G; b++)
                        xp[b] = x + (int64_t)(v0 + i + b) * ldx;
                    for (a0 = 0; a0 < rr; a0 += R) {
                        const int Rn = rr - a0 < R ? rr - a0 : R;
                        const char *Wa = Wb + a0 * stride * esz;
                        for (a = 0; a < Rn; a++)
                            for (b = 0; b < G; b++)
                                st[a * 4 + b] = state + ((a0 + a) * nv + i + b) * 8;
#define TC(RR, GG) tile_c(wt, Wa, stride, RR, GG, c0, c1, xp, st, pf)
                        if (Rn == R) {
                            switch (G) {
                            case 4: TC(2, 4); break;
                            case 3: TC(2, 3); break;
                            case 2: TC(4, 2); break;
                            default: TC(8, 1); break;
                            }
                        } else {
                            /* Leftover rows of the last block, one at a time. */
                            int a1;
                            for (a1 = 0; a1 < Rn; a1++) {
                                const char *Wr = Wa + a1 * stride * esz;
                                float *st1[4];
                                for (b = 0; b < G; b++)
                                    st1[b] = st[a1 * 4 + b];
#define TC1(GG) tile_c(wt, Wr, stride, 1, GG, c0, c1, xp, st1, pf)
                                switch (G) {
                                case 4: TC1(4); break;
                                case 3: TC1(3); break;
                                case 2: TC1(2); break;
                                default: TC1(1); break;
                                }
#undef TC1
                            }
                        }
#undef TC
                    }
                    i += G;
                }
            }
            /* The same horizontal sum and scalar tail as tile(). */
            for (a = 0; a < rr; a++)
                for (i = 0; i < nv; i++) {
                    float sum = dotx_hsum(_mm256_loadu_ps(state + (a * nv + i) * 8));
                    const float *xr = x + (int64_t)(v0 + i) * ldx;
                    int64_t t;
                    for (t = d8; t < d; t++)
                        sum += dotx_load1(wt, Wb, a * stride + t) * xr[t];
                    z[(int64_t)(v0 + i) * ldz + r0 + a] = sum;
                }
        }
    }
}

AVXF INLINE void drive(int32_t wt, const void *W, int64_t stride, int64_t nr, int64_t d,
                       int32_t n, const float *x, int64_t ldx, float *z, int64_t ldz)
{
    if (n == 1 && wt == EEVP_WEIGHT_F32) {
        /* One fp32 vector: 8 rows side by side, nothing to block.  Half
         * precision goes through drive_multi (same bits), whose prefetch
         * makes it about 15-25% faster there; for fp32 it was not. */
        const float *xp[1];
        float *zp[1];
        xp[0] = x;
        zp[0] = z;
        sweep(wt, W, stride, nr, d, 8, 1, xp, zp);
        return;
    }
    drive_multi(wt, W, stride, nr, d, n, x, ldx, z, ldz);
}

AVXF static void dot_avx2(int32_t wtype, const void *W, int64_t stride, int64_t nr, int64_t d,
                          int32_t n, const float *x, int64_t ldx, float *z, int64_t ldz)
{
    /* One instance per storage type: the loads are resolved at compile time. */
    if (wtype == EEVP_WEIGHT_F16)
        drive(EEVP_WEIGHT_F16, W, stride, nr, d, n, x, ldx, z, ldz);
    else if (wtype == EEVP_WEIGHT_BF16)
        drive(EEVP_WEIGHT_BF16, W, stride, nr, d, n, x, ldx, z, ldz);
    else
        drive(EEVP_WEIGHT_F32, W, stride, nr, d, n, x, ldx, z, ldz);
}

AVXF INLINE int64_t hsum_epi32(__m256i v)
{
    int32_t t[8];
    int64_t s = 0;
    int j;
    _mm256_storeu_si256((__m256i *)t, v);
    for (j = 0; j < 8; j++)
        s += t[j];
    return s;
}

/* int8 x int8 through maddubs: |x| (unsigned) times sign(x) * w (signed),
 * pairs summed to 16 bits (|pair| <= 2 * 127 * 127, no saturation since
 * neither side holds -128), then to 32 bits.  A 32-bit lane gains at most
 * 4 * 127 * 127 per step: flushed to 64 bits every 2^12 steps.
 *
 * Rows one after the other, four accumulators per row over interleaved
 * 32-byte chunks: the int8 copy is read as one linear stream, which the
 * hardware prefetchers follow best (several short row streams, each a page
 * or less, left bandwidth unused). */
AVXF INLINE __m256i q8_step(__m256i acc, const int8_t *w, const int8_t *xq, int64_t c,
                            __m256i ones)
{
    const __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + c));
    const __m256i wv = _mm256_loadu_si256((const __m256i *)(w + c));
    return _mm256_add_epi32(
        acc, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(xv), _mm256_sign_epi8(wv, xv)),
                               ones));
}

AVXF static void dot_q8_avx2(const int8_t *Wq, int64_t nr, int64_t d, const int8_t *xq,
                             const float *scale, float xs, float *z)
{
    const int64_t dp = (d + 31) & ~(int64_t)31;
    const __m256i ones = _mm256_set1_epi16(1);
    int64_t r;
    for (r = 0; r < nr; r++) {
        const int8_t *w = Wq + r * d;
        int64_t tot = 0, c = 0;
        while (c < dp) {
            const int64_t end = dp - c > ((int64_t)128 << 12) ? c + ((int64_t)128 << 12) : dp;
            __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
            for (; c + 128 <= end; c += 128) {
                a0 = q8_step(a0, w, xq, c, ones);
                a1 = q8_step(a1, w, xq, c + 32, ones);
                a2 = q8_step(a2, w, xq, c + 64, ones);
                a3 = q8_step(a3, w, xq, c + 96, ones);
            }
            for (; c < end; c += 32)
                a0 = q8_step(a0, w, xq, c, ones);
            tot += hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(a0, a1), _mm256_add_epi32(a2, a3)));
        }
        z[r] = (float)tot * scale[r] * xs;
    }
}

AVXF static void to_f32_avx2(int32_t wtype, const uint16_t *src, int64_t n, float *dst)
{
    int64_t i = 0;
    if (wtype == EEVP_WEIGHT_BF16)
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, load8(EEVP_WEIGHT_BF16, src, i));
    else
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, load8(EEVP_WEIGHT_F16, src, i));
    for (; i < n; i++)
        dst[i] = wtype == EEVP_WEIGHT_BF16 ? eevpi_bf16_to_f32(src[i]) : _cvtsh_ss(src[i]);
}

const eevpi_dotk eevpi_dotk_avx2 = {"avx2", dot_avx2, dot_q8_avx2, to_f32_avx2, dot_rows_avx2};
#else
/* ISO C forbids an empty translation unit. */
typedef int eevpi_no_avx2_dot_kernels;
#endif
