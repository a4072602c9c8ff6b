/* SPDX-License-Identifier: MIT */
/* dot_avx512.c - the multi-vector full projection for 5 to 8 vectors with
 * AVX-512F registers, chosen at run time (eevpi_dotk_select) on CPUs that
 * report AVX-512F; everything else is the AVX2 kernel set (dot_avx2.c).
 *
 * Why: with 5-8 hidden states the AVX2 kernel has 16 registers, so it
 * sweeps the vectors in groups of at most 4 over W blocks kept in L2, and
 * its FMAs wait on loads (B = 8 cost about 1.6x B = 1 on Zen 4).  Here one
 * tile holds 3 row pairs x 8 vectors in 24 accumulators: each 8-column
 * step loads 6 row pieces and 8 vector pieces for 24 FMAs of 16 lanes, and
 * W streams from memory once, with no block re-reads.
 *
 * The same bits as dot_avx2.c: a zmm accumulator is two of that file's
 * 8-lane accumulators side by side (row 2p in the low half, row 2p+1 in the
 * high half, the vector broadcast to both), each lane takes the FMAs of
 * elements c = j (mod 8) in increasing c, and each half gets the same
 * horizontal sum and scalar tail.  tests/check_dot.c compares the two
 * kernels bit for bit. */
#include "internal.h"
#include "dot_x86.h"

#include <string.h>

#if defined(EEVPI_HAVE_AVX512_KERNELS)
#include <immintrin.h>

#define AVX512F_ __attribute__((target("avx512f,avx2,fma,f16c")))

/* Rows a and b's elements [c, c+8) as fp32: a in the low half. */
AVX512F_ EEVPI_INLINE __m512 load_pair(int32_t wt, const void *A, const void *B, int64_t c)
{
    if (wt == EEVP_WEIGHT_F32)
        return _mm512_castpd_ps(_mm512_insertf64x4(
            _mm512_castpd256_pd512(_mm256_loadu_pd((const double *)((const float *)A + c))),
            _mm256_loadu_pd((const double *)((const float *)B + c)), 1));
    {
        const __m256i h = _mm256_inserti128_si256(
            _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)((const uint16_t *)A + c))),
            _mm_loadu_si128((const __m128i *)((const uint16_t *)B + c)), 1);
        if (wt == EEVP_WEIGHT_F16)
            return _mm512_cvtph_ps(h);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
}

AVX512F_ EEVPI_INLINE __m512 bcast8(const float *x)
{
    return _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_loadu_pd((const double *)x)));
}

#define NP 3 /* row pairs per tile: 24 accumulators for 8 vectors */
/* Tiles per row block, columns per chunk and how many blocks ahead to
 * prefetch, by measurement (32000 x 4096, fp32 and fp16, B = 5 and 8, Zen 4):
 * 4/1024/2 was the best of RT 2-8, CB 256-2048, 1-4 blocks ahead; prefetching
 * into L1 (T0) or with NTA was slower, T1 and T2 alike. */
#define RT 4
#define CB 1024
#define PF_BLOCKS 2

/* Columns [c0, c1) of rows rp[0..2P-1] (a pair may repeat a row, whose
 * high half is then dropped) times G vectors, continuing the accumulators
 * saved in st.  pf: bytes ahead of each row to prefetch into L2 (0: none),
 * one line every 16 columns. */
AVX512F_ EEVPI_INLINE void tile512(int32_t wt, const void *const *rp, int P, int G, int64_t c0,
                               int64_t c1, const float *x, int64_t ldx, float *st, int64_t pf)
{
    const int64_t esz = wt == EEVP_WEIGHT_F32 ? 4 : 2;
    __m512 acc[NP][8];
    int64_t c;
    int p, b;
#pragma GCC unroll 3
    for (p = 0; p < P; p++)
#pragma GCC unroll 8
        for (b = 0; b < G; b++)
            acc[p][b] = _mm512_loadu_ps(st + (p * 8 + b) * 16);
    for (c = c0; c < c1; c += 8) {
        __m512 w[NP];
#pragma GCC unroll 3
        for (p = 0; p < P; p++) {
            w[p] = load_pair(wt, rp[2 * p], rp[2 * p + 1], c);
            if (pf && (c & 15) == 0) {
                _mm_prefetch((const char *)rp[2 * p] + c * esz + pf, _MM_HINT_T1);
                _mm_prefetch((const char *)rp[2 * p + 1] + c * esz + pf, _MM_HINT_T1);
            }
        }
#pragma GCC unroll 8
        for (b = 0; b < G; b++) {
            const __m512 xv = bcast8(x + b * ldx + c);
#pragma GCC unroll 3
            for (p = 0; p < P; p++)
                acc[p][b] = _mm512_fmadd_ps(w[p], xv, acc[p][b]);
        }
    }
#pragma GCC unroll 3
    for (p = 0; p < P; p++)
#pragma GCC unroll 8
        for (b = 0; b < G; b++)
            _mm512_storeu_ps(st + (p * 8 + b) * 16, acc[p][b]);
}

/* Blocks of RT tiles (6 * RT rows) swept in column chunks of CB, the
 * vectors' chunk staying in L1 while the block's tiles pass over it, and
 * the rows PF_BLOCKS blocks further on prefetched into L2 meanwhile: the memory pattern of
 * dot_avx2.c's drive_multi, with all the vectors in one pass. */
AVX512F_ EEVPI_INLINE void drive512(int32_t wt, const void *W, int64_t stride, int64_t nr, int64_t d,
                                int32_t n, const float *x, int64_t ldx, float *z, int64_t ldz)
{
    const int64_t esz = wt == EEVP_WEIGHT_F32 ? 4 : 2;
    const int64_t rowb = stride * esz;
    const int64_t d8 = d & ~(int64_t)7;
    float state[RT * NP * 8 * 16];
    int64_t r0;
    for (r0 = 0; r0 < nr; r0 += 2 * NP * RT) {
        const int64_t rr = nr - r0 < 2 * NP * RT ? nr - r0 : 2 * NP * RT;
        const int64_t pf =
            r0 + PF_BLOCKS * 2 * NP * RT < nr ? PF_BLOCKS * 2 * NP * RT * rowb : 0;
        const int ntile = (int)((rr + 2 * NP - 1) / (2 * NP));
        int64_t c0;
        int t, p, h, b;
        memset(state, 0, sizeof state);
        for (c0 = 0; c0 < d8; c0 += CB) {
            const int64_t c1 = d8 - c0 < CB ? d8 : c0 + CB;
            for (t = 0; t < ntile; t++) {
                const int64_t a0 = (int64_t)t * 2 * NP;
                const int64_t nrow = rr - a0 < 2 * NP ? rr - a0 : 2 * NP;
                const void *rp[2 * NP];
                float *st = state + t * NP * 8 * 16;
                int a;
                for (a = 0; a < 2 * NP; a++)
                    rp[a] = (const char *)W + (r0 + a0 + (a < nrow ? a : nrow - 1)) * rowb;
#define T(P, G) tile512(wt, rp, P, G, c0, c1, x, ldx, st, pf); break
#define TG(P)                                                                                  \
    switch (n) {                                                                               \
    case 5: T(P, 5);                                                                           \
    case 6: T(P, 6);                                                                           \
    case 7: T(P, 7);                                                                           \
    default: T(P, 8);                                                                          \
    }
                /* A block's last 1-5 rows: pairs, the last row paired
                 * with itself when they are odd. */
                if (nrow > 4) {
                    TG(3)
                } else if (nrow > 2) {
                    TG(2)
                } else {
                    TG(1)
                }
#undef TG
#undef T
            }
        }
        /* Per row and vector: dot_avx2.c's horizontal sum and scalar tail. */
        for (t = 0; t < ntile; t++)
            for (p = 0; p < NP; p++)
                for (h = 0; h < 2; h++) {
                    const int64_t row = (int64_t)t * 2 * NP + 2 * p + h;
                    const char *Wr;
                    if (row >= rr)
                        break;
                    Wr = (const char *)W + (r0 + row) * rowb;
                    for (b = 0; b < n; b++) {
                        const float *sv = state + ((t * NP + p) * 8 + b) * 16 + h * 8;
                        float s = dotx_hsum(_mm256_loadu_ps(sv));
                        int64_t c;
                        for (c = d8; c < d; c++)
                            s += dotx_load1(wt, Wr, c) * x[b * ldx + c];
                        z[b * ldz + r0 + row] = s;
                    }
                }
    }
}

AVX512F_ static void dot_avx512(int32_t wtype, const void *W, int64_t stride, int64_t nr,
                                int64_t d, int32_t n, const float *x, int64_t ldx, float *z,
                                int64_t ldz)
{
    if (n < 5 || n > 8) {
        eevpi_dotk_avx2.dot(wtype, W, stride, nr, d, n, x, ldx, z, ldz);
        return;
    }
    if (wtype == EEVP_WEIGHT_F16)
        drive512(EEVP_WEIGHT_F16, W, stride, nr, d, n, x, ldx, z, ldz);
    else if (wtype == EEVP_WEIGHT_BF16)
        drive512(EEVP_WEIGHT_BF16, W, stride, nr, d, n, x, ldx, z, ldz);
    else
        drive512(EEVP_WEIGHT_F32, W, stride, nr, d, n, x, ldx, z, ldz);
}

static void dot_q8_avx512(const int8_t *Wq, int64_t nr, int64_t d, const int8_t *xq,
                          const float *scale, float xs, float *z)
{
    eevpi_dotk_avx2.dot_q8(Wq, nr, d, xq, scale, xs, z);
}

static void to_f32_avx512(int32_t wtype, const uint16_t *src, int64_t n, float *dst)
{
    eevpi_dotk_avx2.to_f32(wtype, src, n, dst);
}

static void dot_rows_avx512(const float *const *rows, int64_t nr, int64_t d, const float *x,
                            float *z)
{
    eevpi_dotk_avx2.dot_rows(rows, nr, d, x, z);
}

const eevpi_dotk eevpi_dotk_avx512 = {"avx512", dot_avx512, dot_q8_avx512, to_f32_avx512,
                                      dot_rows_avx512};
#else
/* ISO C forbids an empty translation unit. */
typedef int eevpi_no_avx512_dot_kernels;
#endif
