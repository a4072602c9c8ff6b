/* SPDX-License-Identifier: MIT */
/*
 * matmul.c - the runtime's batch-invariant matrix product: y_i = W x_i for
 * n positions x_i.
 *
 * Every output element is one chain of fused multiply-adds over the columns
 * in increasing order, starting from +0.  Its bits therefore do not depend on
 * n, on the position's row in the batch or on the tile that computes it: the
 * tiles (up to 6 positions x 16 outputs) only decide how many chains run side
 * by side.  The AVX2/FMA kernel and the portable one (C99 fmaf, one rounding
 * per step like the instruction) give the same bits.
 *
 * W is packed once, at load, into panels of 16 rows stored column by column
 * (panel p, column c: rows 16p .. 16p + 15, zero past the last row), so a
 * tile reads one contiguous stream and no horizontal sum is needed.  Each
 * panel is swept by every position tile while it sits in L1/L2: W comes from
 * memory once per call whatever n.  docs/TINYLM.md gives the cost against
 * OpenBLAS's SGEMV and SGEMM.
 */
#include "tinylm.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NR 16 /* outputs per panel */
#define MR 6  /* positions per tile at most */

static int64_t n_panels(int32_t rows)
{
    return ((int64_t)rows + NR - 1) / NR;
}

int tl_matrix_pack(tl_matrix *mx, const float *w, int32_t rows, int32_t cols)
{
    const int64_t np = n_panels(rows);
    void *p = NULL;
    int64_t k, c, j;
    memset(mx, 0, sizeof *mx);
    if (rows < 1 || cols < 1 || posix_memalign(&p, 64, (size_t)(np * cols * NR) * sizeof(float)) != 0)
        return -1;
    mx->panels = p;
    mx->rows = rows;
    mx->cols = cols;
    for (k = 0; k < np; k++)
        for (c = 0; c < cols; c++)
            for (j = 0; j < NR; j++) {
                const int64_t r = k * NR + j;
                mx->panels[(k * cols + c) * NR + j] = r < rows ? w[r * cols + c] : 0.0f;
            }
    return 0;
}

void tl_matrix_free(tl_matrix *mx)
{
    free(mx->panels);
    memset(mx, 0, sizeof *mx);
}

/* Outputs [16k, 16k + 16) of a tile's position i into y, rows past the
 * matrix's last dropped. */
static void put(const tl_matrix *mx, int64_t k, const float *t, float *y)
{
    const int64_t r0 = k * NR, m = mx->rows - r0 < NR ? mx->rows - r0 : NR;
    memcpy(y + r0, t, (size_t)m * sizeof(float));
}

/* Portable kernel: one position, one panel, the same chains. */
static void panel_portable(const tl_matrix *mx, int64_t k, const float *x, float *y)
{
    const float *pw = mx->panels + k * (int64_t)mx->cols * NR;
    float acc[NR] = { 0 };
    int64_t c;
    int j;
    for (c = 0; c < mx->cols; c++)
        for (j = 0; j < NR; j++)
            acc[j] = fmaf(pw[c * NR + j], x[c], acc[j]);
    put(mx, k, acc, y);
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define HAVE_AVX2_TILES 1
#define AVX2F __attribute__((target("avx2,fma")))

/* P positions (rows of x, ldx apart) x Q panels starting at panel k: 2PQ
 * accumulators of 8 outputs, each one FMA per column. */
AVX2F static inline __attribute__((always_inline)) void
tile(const tl_matrix *mx, int64_t k, const int P, const int Q, const float *x, int64_t ldx,
     float *y, int64_t ldy)
{
    const int64_t cols = mx->cols, ps = cols * NR;
    const float *pw = mx->panels + k * ps;
    __m256 acc[MR][8];
    int64_t c;
    int i, q;
#pragma GCC unroll 6
    for (i = 0; i < P; i++)
#pragma GCC unroll 8
        for (q = 0; q < 2 * Q; q++)
            acc[i][q] = _mm256_setzero_ps();
    for (c = 0; c < cols; c++) {
        __m256 w[8];
#pragma GCC unroll 8
        for (q = 0; q < 2 * Q; q++)
            w[q] = _mm256_load_ps(pw + (q / 2) * ps + c * NR + (q % 2) * 8);
#pragma GCC unroll 6
        for (i = 0; i < P; i++) {
            const __m256 b = _mm256_broadcast_ss(x + i * ldx + c);
#pragma GCC unroll 8
            for (q = 0; q < 2 * Q; q++)
                acc[i][q] = _mm256_fmadd_ps(w[q], b, acc[i][q]);
        }
    }
#pragma GCC unroll 6
    for (i = 0; i < P; i++)
#pragma GCC unroll 4
        for (q = 0; q < Q; q++) {
            float t[NR], *yq = y + i * ldy + (k + q) * NR;
            if ((k + q + 1) * NR <= mx->rows) {
                _mm256_storeu_ps(yq, acc[i][2 * q]);
                _mm256_storeu_ps(yq + 8, acc[i][2 * q + 1]);
                continue;
            }
            _mm256_storeu_ps(t, acc[i][2 * q]);
            _mm256_storeu_ps(t + 8, acc[i][2 * q + 1]);
            put(mx, k + q, t, y + i * ldy);
        }
}

AVX2F static void matmul_avx2(const tl_matrix *mx, int32_t n, const float *x, int64_t ldx,
                              float *y, int64_t ldy)
{
    const int64_t np = n_panels(mx->rows);
    int64_t k = 0;
    int32_t i;
    if (n <= 3) {
        /* Few positions: several panels per tile, so that at least eight
         * chains hide the FMA latency. */
        const int Q = n == 1 ? 4 : 2;
        for (; k + Q <= np; k += Q)
            switch (n) {
            case 1: tile(mx, k, 1, 4, x, ldx, y, ldy); break;
            case 2: tile(mx, k, 2, 2, x, ldx, y, ldy); break;
            default: tile(mx, k, 3, 2, x, ldx, y, ldy); break;
            }
        for (; k < np; k++)
            switch (n) {
            case 1: tile(mx, k, 1, 1, x, ldx, y, ldy); break;
            case 2: tile(mx, k, 2, 1, x, ldx, y, ldy); break;
            default: tile(mx, k, 3, 1, x, ldx, y, ldy); break;
            }
        return;
    }
    /* One panel at a time, swept by every position tile while in cache. */
    for (; k < np; k++)
        for (i = 0; i < n; i += MR) {
            const float *xi = x + i * ldx;
            float *yi = y + i * ldy;
            switch (n - i < MR ? n - i : MR) {
            case 1: tile(mx, k, 1, 1, xi, ldx, yi, ldy); break;
            case 2: tile(mx, k, 2, 1, xi, ldx, yi, ldy); break;
            case 3: tile(mx, k, 3, 1, xi, ldx, yi, ldy); break;
            case 4: tile(mx, k, 4, 1, xi, ldx, yi, ldy); break;
            case 5: tile(mx, k, 5, 1, xi, ldx, yi, ldy); break;
            default: tile(mx, k, 6, 1, xi, ldx, yi, ldy); break;
            }
        }
}
#endif

int tl_matmul_simd(void)
{
#ifdef HAVE_AVX2_TILES
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

void tl_matmul(const tl_matrix *mx, int32_t n, const float *x, int64_t ldx, float *y,
               int64_t ldy)
{
    const int64_t np = n_panels(mx->rows);
    int64_t k;
    int32_t i;
#ifdef HAVE_AVX2_TILES
    if (!mx->portable && tl_matmul_simd()) {
        matmul_avx2(mx, n, x, ldx, y, ldy);
        return;
    }
#endif
    for (k = 0; k < np; k++)
        for (i = 0; i < n; i++)
            panel_portable(mx, k, x + i * ldx, y + i * ldy);
}
