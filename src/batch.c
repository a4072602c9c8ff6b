/* SPDX-License-Identifier: MIT */
/* batch.c - pruned checks for several sequences: per sequence (each reads
 * its own gathered block), or through a union plan (the distinct rows of all
 * sets gathered once per token), with bit-identical results: both use the
 * fixed-order dot kernel (see internal.h).
 *
 * The union plan splits its rows: "dense" rows, held by at least half of the
 * sets (and by two or more), go through one multi-vector pass for every
 * sequence (W read once, some products unused); "sparse" rows get one dot
 * per sequence holding them.  So high overlap pays arithmetic on rows read
 * once, and low overlap degrades to the per-sequence work without its
 * duplicate reads.
 *
 * The choice per call (eevpi_union_pick) compares modelled costs, in bytes
 * of memory traffic.  Between two checks a transformer layer evicts the rows,
 * so rows come from memory:
 *  - per sequence: sum_k rows read, 4 d sum_k bytes (memory-bound);
 *  - union: the U rows read once, 4 d U bytes, overlapped with the dense
 *    pass's 2 d n n_dense FLOPs (max of the two; FLOPs count 1 / BALANCE
 *    byte), plus the repeated sparse dots, which re-read rows from the last
 *    level cache at about half the cost of memory.
 * BALANCE is the machine's FLOPs per byte of memory bandwidth for this
 * kernel; nothing else is tuned, and no shape enters. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* FLOPs per byte of DRAM traffic the multi-vector kernel sustains on one
 * core: about 70 GFLOP/s against about 20 GB/s on the project's machines. */
#define BALANCE 3.5

static int64_t align64(int64_t x)
{
    return (x + 63) & ~(int64_t)63;
}

int64_t eevpi_union_size(const eevp_head *h, int32_t n, int64_t sum_k)
{
    (void)n;
    return 64 + align64(sum_k * 4) + align64(sum_k * 4) + align64(sum_k * h->d * 4) +
           (h->bias ? align64(sum_k * 4) : 0);
}

static int cmp_key(const void *a, const void *b)
{
    const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

void eevpi_union_layout(const eevp_head *h, int64_t sum_k, eevpi_union *u, void *mem)
{
    unsigned char *p = (unsigned char *)mem;
    p += (64 - (uintptr_t)p % 64) % 64;
    u->ids = (int32_t *)(void *)p;
    p += align64(sum_k * 4);
    u->pos = (int32_t *)(void *)p;
    p += align64(sum_k * 4);
    u->rows = (float *)(void *)p;
    p += align64(sum_k * h->d * 4);
    u->bias = h->bias ? (float *)(void *)p : NULL;
}

void eevpi_union_plan(const eevp_head *h, int32_t n, const int32_t *k_of,
                      const int32_t *const *ids, eevpi_union *u, int64_t *work)
{
    int64_t sum_k = 0, t = 0, j;
    int32_t i, nu = 0, nd = 0, nsp, r, dense_min;
    int32_t *count, *slot, *tmp_ids;
    (void)h;
    for (i = 0; i < n; i++)
        sum_k += k_of[i];
    u->n_seq = n;
    u->sum_k = sum_k;
    count = (int32_t *)(void *)(work + sum_k); /* scratch after the keys */
    slot = count + sum_k;
    tmp_ids = (int32_t *)(void *)u->rows;      /* scratch until the gather */

    /* Sort (id, candidate index) keys: equal ids become neighbours. */
    for (i = 0; i < n; i++)
        for (j = 0; j < k_of[i]; j++, t++)
            work[t] = ((int64_t)ids[i][j] << 32) | t;
    qsort(work, (size_t)sum_k, sizeof *work, cmp_key);
    for (t = 0; t < sum_k; t++) {
        const int32_t id = (int32_t)(work[t] >> 32);
        if (nu == 0 || tmp_ids[nu - 1] != id) {
            tmp_ids[nu] = id;
            count[nu++] = 0;
        }
        count[nu - 1]++;
    }
    /* Dense rows first, then sparse, ids ascending within each. */
    dense_min = n / 2 + n % 2 > 2 ? n / 2 + n % 2 : 2;
    u->dense_cand = 0;
    for (r = 0; r < nu; r++)
        if (count[r] >= dense_min) {
            u->dense_cand += count[r];
            slot[r] = nd++;
        }
    nsp = nd;
    for (r = 0; r < nu; r++)
        if (count[r] < dense_min)
            slot[r] = nsp++;
    for (t = 0, r = -1; t < sum_k; t++) {
        if (t == 0 || (int32_t)(work[t] >> 32) != (int32_t)(work[t - 1] >> 32))
            r++;
        u->pos[work[t] & 0xffffffff] = slot[r];
    }
    for (r = 0; r < nu; r++)
        u->ids[slot[r]] = tmp_ids[r];
    u->n_union = nu;
    u->n_dense = nd;
}

void eevpi_union_gather(const eevp_head *h, eevpi_union *u)
{
    int32_t r;
    /* Here rather than through head.c so that this file needs only the dot
     * kernels (the tests build it on its own). */
    for (r = 0; r < u->n_union; r++) {
        const int64_t v = u->ids[r] - h->offset;
        if (h->wtype == EEVP_WEIGHT_F32)
            memcpy(u->rows + r * h->d, h->W + v * h->stride, (size_t)h->d * sizeof(float));
        else
            h->dk->to_f32(h->wtype, h->W16 + v * h->stride, h->d, u->rows + r * h->d);
        if (u->bias)
            u->bias[r] = h->bias[v];
    }
}

void eevpi_union_build(const eevp_head *h, int32_t n, const int32_t *k_of,
                       const int32_t *const *ids, eevpi_union *u, void *mem, int64_t *work)
{
    int64_t sum_k = 0;
    int32_t i;
    for (i = 0; i < n; i++)
        sum_k += k_of[i];
    eevpi_union_layout(h, sum_k, u, mem);
    eevpi_union_plan(h, n, k_of, ids, u, work);
    eevpi_union_gather(h, u);
}

int eevpi_union_pick(const eevp_head *h, const eevpi_union *u, const int32_t *k_of)
{
    const double d = (double)h->d;
    const double each = 4.0 * d * (double)u->sum_k;
    const double sparse_rows = (double)(u->n_union - u->n_dense);
    const double sparse_dots = (double)(u->sum_k - u->dense_cand);
    const double uni = fmax(4.0 * d * u->n_union, 2.0 * d * u->n_seq * (double)u->n_dense / BALANCE) +
                       0.5 * 4.0 * d * (sparse_dots - sparse_rows);
    (void)k_of;
    return u->n_seq > 1 && uni < each;
}

/* The two phases of a check through the plan, each split between the
 * context's threads: the dense pass by rows, then the candidates of the
 * concatenated sets (copied from the dense products, or one dot per sparse
 * row, eight rows side by side) by ranges. */
typedef struct union_job {
    const eevp_head *h;
    const eevpi_union *u;
    int32_t n_act, nd;
    const int32_t *act, *k_of;
    const float *xn;
    float *const *z;
    float *work;
    int64_t total;
} union_job;

static void union_dense_part(void *arg, int part, int parts)
{
    const union_job *j = (const union_job *)arg;
    const int64_t d = j->h->d;
    int64_t r0, r1;
    eevpi_split(j->nd, part, parts, 8, &r0, &r1);
    if (r0 < r1)
        j->h->dk->dot(EEVP_WEIGHT_F32, j->u->rows + r0 * d, d, r1 - r0, d, j->n_act, j->xn, d,
                      j->work + r0, j->nd);
}

static void flush_sparse(const eevp_head *h, const float *const *rp, const int32_t *jp,
                         int32_t q, const float *x, float *zi)
{
    float zz[8];
    int32_t e;
    h->dk->dot_rows(rp, q, h->d, x, zz);
    for (e = 0; e < q; e++)
        zi[jp[e]] = zz[e];
}

static void union_cand_part(void *arg, int part, int parts)
{
    const union_job *j = (const union_job *)arg;
    const eevp_head *h = j->h;
    const eevpi_union *u = j->u;
    const int64_t d = h->d;
    int64_t t0, t1, base = 0;
    int32_t i;
    eevpi_split(j->total, part, parts, 8, &t0, &t1);
    for (i = 0; i < j->n_act && base < t1; i++) {
        const int32_t s = j->act[i], k = j->k_of[s];
        const float *x = j->xn + i * d;
        const int32_t a = (int32_t)(t0 > base ? t0 - base : 0);
        const int32_t b = (int32_t)(t1 - base < k ? t1 - base : k);
        float *zi = j->z[i];
        const float *rp[8];
        int32_t jp[8], q = 0, c, m;
        int64_t off = 0;
        base += k;
        if (a >= b)
            continue;
        for (m = 0; m < s; m++)
            off += j->k_of[m];
        for (c = a; c < b; c++) {
            const int32_t r = u->pos[off + c];
            if (r < j->nd) {
                zi[c] = j->work[(int64_t)i * j->nd + r];
                continue;
            }
            rp[q] = u->rows + r * d;
            jp[q++] = c;
            if (q == 8) {
                flush_sparse(h, rp, jp, q, x, zi);
                q = 0;
            }
        }
        if (q > 0)
            flush_sparse(h, rp, jp, q, x, zi);
        for (c = a; c < b; c++) {
            const int32_t r = u->pos[off + c];
            /* The library's one logit transform, so both kernels give the
             * same bits. */
            eevpi_head_transform(h, zi + c, 1, u->bias ? u->bias + r : NULL);
        }
    }
}

void eevpi_pruned_union(const eevp_head *h, const eevpi_union *u, eevpi_pool *pool,
                        int32_t n_act, const int32_t *act, const int32_t *k_of, const float *xn,
                        float *const *z, float *work)
{
    union_job j;
    int32_t i;
    j.h = h;
    j.u = u;
    j.n_act = n_act;
    /* One sequence left: its dense rows go through dot_rows too, rather
     * than a pass over every dense row of the plan (same bits either way). */
    j.nd = n_act >= 2 ? u->n_dense : 0;
    j.act = act;
    j.k_of = k_of;
    j.xn = xn;
    j.z = z;
    j.work = work;
    j.total = 0;
    for (i = 0; i < n_act; i++)
        j.total += k_of[act[i]];
    if (j.nd > 0)
        eevpi_pool_run(pool, 4 * (int64_t)j.nd * h->d, union_dense_part, &j);
    eevpi_pool_run(pool, 4 * (j.total - (int64_t)n_act * j.nd / 2) * h->d, union_cand_part,
                   &j);
}

void eevpi_pruned_each(const eevp_head *h, int32_t n, const int32_t *k_of,
                       const float *const *rows, const float *const *bias, const float *xn,
                       float *const *z)
{
    int32_t i;
    for (i = 0; i < n; i++) {
        h->dk->dot(EEVP_WEIGHT_F32, rows[i], h->d, k_of[i], h->d, 1, xn + (int64_t)i * h->d,
                   h->d, z[i], k_of[i]);
        eevpi_head_transform(h, z[i], k_of[i], bias ? bias[i] : NULL);
    }
}
