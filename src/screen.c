/* SPDX-License-Identifier: MIT */
/* screen.c - the opt-in approximate pruning step: an int8 copy of W (one
 * scale per row, built at head creation) ranks the whole vocabulary, the
 * best screen_mult * K rows get their exact logits from W, and the best K of
 * those form the pruned set.  The hidden state is quantised to int8 too
 * (one scale), so the ranking costs one byte of W per element instead of
 * four.  Recall is measured in docs/BENCHMARKS.md. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>


static int cmp_id(const void *a, const void *b)
{
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static int64_t pad32(int64_t d)
{
    return (d + 31) & ~(int64_t)31;
}

/* Work layout: xq (padded), approximate logits (V), screened ids and exact
 * logits (m each), top-k pairs (for V and m). */
int64_t eevpi_screen_work_size(const eevp_head *h, int32_t k)
{
    const int64_t m = (int64_t)h->screen_mult * k < h->V ? (int64_t)h->screen_mult * k : h->V;
    return pad32(h->d) + 64 + (h->V + 2 * m + 16) * 4 +
           (eevpi_topk_pairs(h->V, (int32_t)m) + 2) * (int64_t)sizeof(eevpi_pair);
}

/* The int8 pass over all V rows, shared out by rows. */
typedef struct q8_job {
    const eevp_head *h;
    const int8_t *xq;
    float xs, *za;
} q8_job;

static void q8_part(void *arg, int part, int parts)
{
    const q8_job *j = (const q8_job *)arg;
    int64_t r0, r1;
    eevpi_split(j->h->V, part, parts, 64, &r0, &r1);
    if (r0 < r1)
        j->h->dk->dot_q8(j->h->Wq + r0 * j->h->d, r1 - r0, j->h->d, j->xq, j->h->qscale + r0,
                         j->xs, j->za + r0);
}

int eevpi_head_screen(const eevp_head *h, eevpi_pool *pool, const float *xn, int32_t k,
                      int32_t *ids, float *z, void *work)
{
    const int64_t d = h->d, V = h->V;
    const int32_t m = (int32_t)((int64_t)h->screen_mult * k < V ? (int64_t)h->screen_mult * k : V);
    unsigned char *p = (unsigned char *)work;
    int8_t *xq = (int8_t *)p;
    float *za, *ze, amax = 0.0f, xs, inv;
    int32_t *sid, j;
    eevpi_pair *pairs;
    int64_t c;
    int rc;

    p += pad32(d) + 64;
    p += (64 - (uintptr_t)p % 64) % 64;
    za = (float *)p;
    sid = (int32_t *)(za + V);
    ze = (float *)(sid + m);
    pairs = (eevpi_pair *)(void *)(ze + m + 8);
    pairs = (eevpi_pair *)(void *)((unsigned char *)pairs +
                                   (8 - (uintptr_t)pairs % 8) % 8);

    for (c = 0; c < d; c++)
        if (fabsf(xn[c]) > amax)
            amax = fabsf(xn[c]);
    xs = amax > 0.0f ? amax / 127.0f : 1.0f;
    inv = 1.0f / xs;
    for (c = 0; c < d; c++)
        xq[c] = (int8_t)lrintf(xn[c] * inv);
    memset(xq + d, 0, (size_t)(pad32(d) - d));

    /* Rank by scale * dot + bias; the soft-cap is monotone.  Integer sums:
     * the same values however the rows are shared out. */
    {
        q8_job job;
        job.h = h;
        job.xq = xq;
        job.xs = xs * h->scale;
        job.za = za;
        eevpi_pool_run(pool, V * d, q8_part, &job);
    }
    if (h->bias)
        for (c = 0; c < V; c++)
            za[c] += h->bias[c];
    if ((rc = eevpi_topk(h->kern, za, V, m, 0, sid, NULL, pairs)) != EEVP_OK)
        return rc;
    /* Ascending ids: rows read in memory order, and the selection's index
     * tie-break becomes the id tie-break of the order. */
    qsort(sid, (size_t)m, sizeof *sid, cmp_id);
    if (h->wtype == EEVP_WEIGHT_F32) {
        /* Eight rows side by side: eight independent accumulator chains and
         * eight memory streams, where one row at a time waits on both.  The
         * same bits as one dot per row (dot_rows' contract). */
        for (j = 0; j < m; j += 8) {
            const float *rp[8];
            const int32_t q = m - j < 8 ? m - j : 8;
            int32_t e;
            for (e = 0; e < q; e++)
                rp[e] = h->W + (int64_t)sid[j + e] * h->stride;
            h->dk->dot_rows(rp, q, d, xn, ze + j);
        }
    } else {
        for (j = 0; j < m; j++)
            h->dk->dot(h->wtype, h->W16 + (int64_t)sid[j] * h->stride, h->stride, 1, d, 1, xn,
                       d, ze + j, 1);
    }
    for (j = 0; j < m; j++) {
        const int64_t v = sid[j];
        eevpi_head_transform(h, ze + j, 1, h->bias ? h->bias + v : NULL);
    }
    if ((rc = eevpi_topk(h->kern, ze, m, k, 0, ids, z, pairs)) != EEVP_OK)
        return rc;
    for (j = 0; j < k; j++)
        ids[j] = (int32_t)(sid[ids[j]] + h->offset);
    return EEVP_OK;
}

/* ---- public kernel ---- */

EEVP_API int64_t eevp_head_screen_workspace_size(const eevp_head *h, int32_t k)
{
    if (!h)
        return EEVP_EINVAL;
    if (!h->screen_mult)
        return EEVP_EINVAL;
    if (k < 1 || k > h->V)
        return EEVP_ERANGE;
    return h->d * 4 + 64 + eevpi_screen_work_size(h, k);
}

EEVP_API int eevp_head_screen(const eevp_head *h, const float *hidden, int32_t k, int32_t *ids,
                              float *logits, void *work)
{
    float *xn;
    if (!h || !hidden || !ids || !work || !h->screen_mult)
        return EEVP_EINVAL;
    if (k < 1 || k > h->V)
        return EEVP_ERANGE;
    xn = (float *)work;
    if (eevpi_head_norm(h, hidden, xn) != EEVP_OK)
        return EEVP_ENONFINITE;
    return eevpi_head_screen(h, NULL, xn, k, ids, logits,
                             (unsigned char *)work + ((h->d * 4 + 63) & ~(int64_t)63));
}
