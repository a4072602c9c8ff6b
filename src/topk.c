/* SPDX-License-Identifier: MIT */
/* topk.c - exact top-K by selection, in the order (value descending, then
 * index ascending).
 *
 * A buffer of 2k candidates fills with the values that beat the current
 * threshold (the k-th best kept so far); each time it is full a quickselect
 * keeps the best k and raises the threshold.  Every element costs one
 * comparison in the (vectorised) scan, and every refill O(k) expected, so
 * the whole is O(n + k log k) expected even on adversarial (ascending)
 * input, without sorting the vocabulary. */
#include "internal.h"

static int pair_before(const eevpi_pair *a, const eevpi_pair *b)
{
    return eevpi_before(a->v, a->i, b->v, b->i);
}

static void swap_pairs(eevpi_pair *a, eevpi_pair *b)
{
    eevpi_pair t = *a;
    *a = *b;
    *b = t;
}

/* Partition so that p[0..m-1] are the best m of p[0..n-1] (unordered).
 * Keys are distinct (ids differ), so there is no equal-key degeneracy. */
static void select_best(eevpi_pair *p, int64_t n, int64_t m)
{
    int64_t lo = 0, hi = n - 1;
    if (m <= 0 || m >= n)
        return;
    while (hi > lo) {
        int64_t mid = lo + (hi - lo) / 2, i, j;
        eevpi_pair pivot;
        /* Median of three into p[hi]. */
        if (pair_before(&p[mid], &p[lo]))
            swap_pairs(&p[mid], &p[lo]);
        if (pair_before(&p[hi], &p[lo]))
            swap_pairs(&p[hi], &p[lo]);
        if (pair_before(&p[mid], &p[hi]))
            swap_pairs(&p[mid], &p[hi]);
        pivot = p[hi];
        for (i = lo, j = lo; j < hi; j++)
            if (pair_before(&p[j], &pivot))
                swap_pairs(&p[i++], &p[j]);
        swap_pairs(&p[i], &p[hi]);
        /* p[lo..i-1] before pivot, p[i] pivot, p[i+1..hi] after. */
        if (i == m || i == m - 1)
            return;
        if (i > m)
            hi = i - 1;
        else
            lo = i + 1;
    }
}

static void sift_down(eevpi_pair *p, int64_t root, int64_t n)
{
    /* Max-heap on "after": the root is the pair that comes last. */
    for (;;) {
        int64_t c = 2 * root + 1;
        if (c >= n)
            return;
        if (c + 1 < n && pair_before(&p[c], &p[c + 1]))
            c++;
        if (!pair_before(&p[root], &p[c]))
            return;
        swap_pairs(&p[root], &p[c]);
        root = c;
    }
}

/* Heapsort into the order: O(m log m), no recursion, no allocation. */
static void sort_pairs(eevpi_pair *p, int64_t m)
{
    int64_t i;
    for (i = m / 2 - 1; i >= 0; i--)
        sift_down(p, i, m);
    for (i = m - 1; i > 0; i--) {
        swap_pairs(&p[0], &p[i]);
        sift_down(p, 0, i);
    }
}

void eevpi_select_sorted(eevpi_pair *p, int64_t n, int64_t m)
{
    if (m > n)
        m = n;
    select_best(p, n, m);
    sort_pairs(p, m);
}

/* Keep the best k of work[0..cnt-1] in work[0..k-1]; returns the threshold
 * a later (larger-index) value must exceed: the k-th best value. */
static float keep_best(eevpi_pair *work, int64_t cnt, int32_t k)
{
    float t;
    int32_t j;
    select_best(work, cnt, k);
    t = work[0].v;
    for (j = 1; j < k; j++)
        if (work[j].v < t)
            t = work[j].v;
    return t;
}

int64_t eevpi_topk_pairs(int64_t n, int32_t k)
{
    int64_t two_k = 2 * (int64_t)k;
    return two_k < n ? two_k : n;
}

int eevpi_topk(const eevpi_kernels *kern, const float *x, int64_t n, int32_t k,
               int64_t id_offset, int32_t *idx, float *val, eevpi_pair *work)
{
    const int64_t cap = eevpi_topk_pairs(n, k);
    int64_t i, cnt = 0;
    float t;

    for (i = 0; i < cap; i++) {
        if (x[i] != x[i])
            return EEVP_ENONFINITE;
        work[cnt].v = x[i];
        work[cnt].i = (int32_t)i;
        cnt++;
    }
    t = keep_best(work, cnt, k);
    cnt = k;
    /* Every later element has a larger index than all kept ones, so it
     * enters only by a strictly larger value. */
    i = cap;
    while ((i = kern->scan_gt(x, i, n, t)) < n) {
        if (x[i] != x[i])
            return EEVP_ENONFINITE;
        work[cnt].v = x[i];
        work[cnt].i = (int32_t)i;
        cnt++;
        i++;
        if (cnt == cap) {
            t = keep_best(work, cnt, k);
            cnt = k;
        }
    }
    eevpi_select_sorted(work, cnt, k);
    for (i = 0; i < k; i++) {
        idx[i] = (int32_t)(work[i].i + id_offset);
        if (val)
            val[i] = work[i].v;
    }
    return EEVP_OK;
}

EEVP_API int64_t eevp_topk_workspace_size(int64_t n, int32_t k)
{
    if (n < 1 || n > EEVP_MAX_VOCAB || k < 1 || k > n)
        return EEVP_ERANGE;
    return eevpi_topk_pairs(n, k) * (int64_t)sizeof(eevpi_pair);
}

EEVP_API int eevp_topk(const float *x, int64_t n, int32_t k, int64_t id_offset,
                       int32_t *ids, float *values, void *work)
{
    if (!x || !ids || !work)
        return EEVP_EINVAL;
    if (n < 1 || n > EEVP_MAX_VOCAB || k < 1 || k > n || id_offset < 0 ||
        id_offset > (int64_t)INT32_MAX - n + 1)
        return EEVP_ERANGE;
    return eevpi_topk(eevpi_kernels_select(0), x, n, k, id_offset, ids, values,
                      (eevpi_pair *)work);
}
