/* SPDX-License-Identifier: MIT */
/* head.c - the LM head: weights view, final norm, logit transform, full and
 * pruned projections (OpenBLAS), row gather. */
#include "internal.h"

#include <cblas.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

/* The first published eevp_head_options ends after `allocator`; callers
 * built against it get the defaults for the fields added since. */
#define HEAD_OPTIONS_V1 offsetof(eevp_head_options, weight_type)

EEVP_API int eevp_head_options_init(eevp_head_options *opts)
{
    static const eevp_head_options defaults = EEVP_HEAD_OPTIONS_INIT;
    if (!opts)
        return EEVP_EINVAL;
    *opts = defaults;
    return EEVP_OK;
}

static int check_options(const eevp_head_options *o, char *msg, size_t msg_size)
{
    int64_t stride = o->row_stride ? o->row_stride : o->dim, span;
    if (o->weight_type < EEVP_WEIGHT_F32 || o->weight_type > EEVP_WEIGHT_BF16) {
        eevpi_msg(msg, msg_size, "unknown weight_type %d", (int)o->weight_type);
        return EEVP_EINVAL;
    }
    if (o->weight_type == EEVP_WEIGHT_F32 ? (!o->weights || o->weights_half)
                                          : (!o->weights_half || o->weights)) {
        eevpi_msg(msg, msg_size, o->weight_type == EEVP_WEIGHT_F32
                                     ? "weights is NULL (or weights_half set for fp32)"
                                     : "half-precision head: weights_half is required and "
                                       "weights must be NULL");
        return EEVP_EINVAL;
    }
    if (o->screen_mult != 0 && (o->screen_mult < 2 || o->screen_mult > 64)) {
        eevpi_msg(msg, msg_size, "screen_mult %d: 0, or 2..64", (int)o->screen_mult);
        return EEVP_ERANGE;
    }
    if (o->n_vocab < 1 || o->n_vocab > EEVP_MAX_VOCAB) {
        eevpi_msg(msg, msg_size, "n_vocab %lld outside 1..%lld", (long long)o->n_vocab,
                  (long long)EEVP_MAX_VOCAB);
        return EEVP_ERANGE;
    }
    if (o->dim < 1 || o->dim > EEVP_MAX_DIM) {
        eevpi_msg(msg, msg_size, "dim %lld outside 1..%lld", (long long)o->dim,
                  (long long)EEVP_MAX_DIM);
        return EEVP_ERANGE;
    }
    /* BLAS takes the leading dimension as a 32-bit int. */
    if (stride < o->dim || stride > INT32_MAX) {
        eevpi_msg(msg, msg_size, "row_stride %lld outside dim (%lld)..%d",
                  (long long)o->row_stride, (long long)o->dim, INT32_MAX);
        return EEVP_ERANGE;
    }
    if (o->vocab_offset < 0 || o->vocab_offset > (int64_t)INT32_MAX - o->n_vocab + 1) {
        eevpi_msg(msg, msg_size, "vocab_offset %lld: global ids must stay within 0..%d",
                  (long long)o->vocab_offset, INT32_MAX);
        return EEVP_ERANGE;
    }
    if (o->norm < EEVP_NORM_NONE || o->norm > EEVP_NORM_LAYER) {
        eevpi_msg(msg, msg_size, "unknown norm %d", (int)o->norm);
        return EEVP_EINVAL;
    }
    if (!(o->norm_eps >= 0.0f) || isinf(o->norm_eps)) {
        eevpi_msg(msg, msg_size, "norm_eps must be finite and >= 0");
        return EEVP_ERANGE;
    }
    if (o->norm_bias && o->norm != EEVP_NORM_LAYER) {
        eevpi_msg(msg, msg_size, "norm_bias is only for EEVP_NORM_LAYER");
        return EEVP_EINVAL;
    }
    if (!(o->logit_scale >= 0.0f) || isinf(o->logit_scale)) {
        eevpi_msg(msg, msg_size, "logit_scale must be finite and > 0 (0 means 1)");
        return EEVP_ERANGE;
    }
    if (!(o->softcap >= 0.0f) || isinf(o->softcap)) {
        eevpi_msg(msg, msg_size, "softcap must be finite and >= 0 (0 means none)");
        return EEVP_ERANGE;
    }
    if (o->flags & ~(EEVP_HEAD_COPY | EEVP_HEAD_NO_SIMD)) {
        eevpi_msg(msg, msg_size, "unknown flags 0x%x", (unsigned)o->flags);
        return EEVP_EINVAL;
    }
    /* The last row ends at (V-1)*stride + d: it must be addressable. */
    if (!eevpi_mul(o->n_vocab - 1, stride, &span) || !eevpi_add(span, o->dim, &span) ||
        !eevpi_mul(span, o->weight_type == EEVP_WEIGHT_F32 ? 4 : 2, &span) ||
        span > (int64_t)(SIZE_MAX / 2)) {
        eevpi_msg(msg, msg_size, "n_vocab x row_stride overflows");
        return EEVP_EOVERFLOW;
    }
    return EEVP_OK;
}

static float row_elem(const eevp_head *h, int64_t v, int64_t c)
{
    if (h->wtype == EEVP_WEIGHT_F32)
        return h->W[v * h->stride + c];
    if (h->wtype == EEVP_WEIGHT_F16)
        return eevpi_f16_to_f32(h->W16[v * h->stride + c]);
    return eevpi_bf16_to_f32(h->W16[v * h->stride + c]);
}

/* The int8 screening copy: per row, scale = max|w| / 127 and q = round(w /
 * scale) in -127..127.  One block: V scales, then the V x d bytes plus 32
 * bytes of slack (the vector kernel reads whole 32-byte chunks). */
static int build_screen(eevp_head *h, char *msg, size_t msg_size)
{
    int64_t bytes, v, c;
    unsigned char *p;
    if (!eevpi_mul(h->V, h->d, &bytes) || !eevpi_add(bytes, h->V * 4 + 32 + EEVPI_ALIGN, &bytes) ||
        bytes > (int64_t)(SIZE_MAX / 2)) {
        eevpi_msg(msg, msg_size, "int8 screening copy overflows");
        return EEVP_EOVERFLOW;
    }
    p = (unsigned char *)eevpi_alloc(&h->mem, (size_t)bytes);
    if (!p) {
        eevpi_msg(msg, msg_size, "out of memory for the int8 screening copy (%lld bytes)",
                  (long long)bytes);
        return EEVP_ENOMEM;
    }
    h->bytes += bytes;
    h->qblock = p;
    h->qscale = (float *)(void *)(p + (EEVPI_ALIGN - (uintptr_t)p % EEVPI_ALIGN) % EEVPI_ALIGN);
    h->Wq = (int8_t *)(h->qscale + h->V);
    {
        int8_t *q = h->Wq;
        for (v = 0; v < h->V; v++) {
            float amax = 0.0f, s, inv;
            for (c = 0; c < h->d; c++) {
                const float a = fabsf(row_elem(h, v, c));
                if (a > amax)
                    amax = a;
            }
            s = amax > 0.0f && isfinite(amax) ? amax / 127.0f : 1.0f;
            inv = 1.0f / s;
            h->qscale[v] = s;
            for (c = 0; c < h->d; c++) {
                float t = row_elem(h, v, c) * inv;
                t = t > 127.0f ? 127.0f : t < -127.0f ? -127.0f : t;
                q[v * h->d + c] = (int8_t)lrintf(t == t ? t : 0.0f);
            }
        }
        memset(q + h->V * h->d, 0, 32);
    }
    return EEVP_OK;
}

EEVP_API int eevp_head_create(eevp_head **out, const eevp_head_options *opts, char *msg,
                              size_t msg_size)
{
    eevp_head_options o;
    eevpi_mem mem;
    eevp_head *h;
    int rc;

    eevpi_msg(msg, msg_size, "%s", "");
    if (!out) {
        eevpi_msg(msg, msg_size, "out is NULL");
        return EEVP_EINVAL;
    }
    *out = NULL;
    if (!opts) {
        eevpi_msg(msg, msg_size, "opts is NULL");
        return EEVP_EINVAL;
    }
    eevp_head_options_init(&o);
    if ((rc = eevpi_read_struct(&o, sizeof o, opts, HEAD_OPTIONS_V1)) != EEVP_OK) {
        eevpi_msg(msg, msg_size, "eevp_head_options.struct_size %u: expected %u, or larger "
                  "with a zero tail", (unsigned)opts->struct_size, (unsigned)sizeof o);
        return rc;
    }
    if ((rc = check_options(&o, msg, msg_size)) != EEVP_OK)
        return rc;
    if ((rc = eevpi_mem_init(&mem, o.allocator, msg, msg_size)) != EEVP_OK)
        return rc;

    h = (eevp_head *)eevpi_alloc(&mem, sizeof *h);
    if (!h) {
        eevpi_msg(msg, msg_size, "out of memory for the head");
        return EEVP_ENOMEM;
    }
    memset(h, 0, sizeof *h);
    h->mem = mem;
    h->bytes = (int64_t)sizeof *h;
    h->kern = eevpi_kernels_select((o.flags & EEVP_HEAD_NO_SIMD) != 0);
    h->dk = eevpi_dotk_select((o.flags & EEVP_HEAD_NO_SIMD) != 0);
    h->wtype = o.weight_type;
    h->W16 = o.weights_half;
    h->screen_mult = o.screen_mult;
    h->V = o.n_vocab;
    h->d = o.dim;
    h->stride = o.row_stride ? o.row_stride : o.dim;
    h->offset = o.vocab_offset;
    h->W = o.weights;
    h->norm = o.norm;
    h->eps = o.norm_eps;
    h->nw = o.norm_weight;
    h->nb = o.norm_bias;
    h->bias = o.logit_bias;
    h->scale = o.logit_scale == 0.0f ? 1.0f : o.logit_scale;
    h->cap = o.softcap;

    if (o.flags & EEVP_HEAD_COPY) {
        /* Plan the block, then carve it: the copies are packed (stride d). */
        eevpi_arena a = {NULL, 0, 0};
        float *W, *nw, *nb, *bias;
        void *block;
        int64_t v;
        const int64_t esz = h->wtype == EEVP_WEIGHT_F32 ? 4 : 2;
        eevpi_arena_take(&a, h->V * h->d, esz);
        eevpi_arena_take(&a, h->nw ? h->d : 0, sizeof(float));
        eevpi_arena_take(&a, h->nb ? h->d : 0, sizeof(float));
        eevpi_arena_take(&a, h->bias ? h->V : 0, sizeof(float));
        if (a.overflow || a.used + EEVPI_ALIGN > (int64_t)(SIZE_MAX / 2)) {
            eevpi_free(&mem, h);
            eevpi_msg(msg, msg_size, "copy of the head overflows");
            return EEVP_EOVERFLOW;
        }
        block = eevpi_alloc(&mem, (size_t)(a.used + EEVPI_ALIGN));
        if (!block) {
            eevpi_free(&mem, h);
            eevpi_msg(msg, msg_size, "out of memory copying the head (%lld bytes)",
                      (long long)a.used);
            return EEVP_ENOMEM;
        }
        h->copy = block;
        h->bytes += a.used + EEVPI_ALIGN;
        a.base = (unsigned char *)block + (EEVPI_ALIGN - (uintptr_t)block % EEVPI_ALIGN) % EEVPI_ALIGN;
        a.used = 0;
        W = (float *)eevpi_arena_take(&a, h->V * h->d, esz);
        nw = (float *)eevpi_arena_take(&a, h->nw ? h->d : 0, sizeof(float));
        nb = (float *)eevpi_arena_take(&a, h->nb ? h->d : 0, sizeof(float));
        bias = (float *)eevpi_arena_take(&a, h->bias ? h->V : 0, sizeof(float));
        if (h->wtype == EEVP_WEIGHT_F32)
            for (v = 0; v < h->V; v++)
                memcpy(W + v * h->d, h->W + v * h->stride, (size_t)h->d * sizeof(float));
        else
            for (v = 0; v < h->V; v++)
                memcpy((uint16_t *)(void *)W + v * h->d, h->W16 + v * h->stride,
                       (size_t)h->d * 2);
        if (nw)
            memcpy(nw, h->nw, (size_t)h->d * sizeof(float));
        if (nb)
            memcpy(nb, h->nb, (size_t)h->d * sizeof(float));
        if (bias)
            memcpy(bias, h->bias, (size_t)h->V * sizeof(float));
        if (h->wtype == EEVP_WEIGHT_F32)
            h->W = W;
        else
            h->W16 = (const uint16_t *)(void *)W;
        h->stride = h->d;
        h->nw = nw;
        h->nb = nb;
        h->bias = bias;
    }
    if (h->screen_mult && (rc = build_screen(h, msg, msg_size)) != EEVP_OK) {
        eevpi_free(&mem, h->copy);
        eevpi_free(&mem, h);
        return rc;
    }
    *out = h;
    return EEVP_OK;
}

EEVP_API void eevp_head_free(eevp_head *h)
{
    if (!h)
        return;
    eevpi_free(&h->mem, h->qblock);
    eevpi_free(&h->mem, h->copy);
    eevpi_free(&h->mem, h);
}

EEVP_API int64_t eevp_head_n_vocab(const eevp_head *h)
{
    return h ? h->V : EEVP_EINVAL;
}

EEVP_API int64_t eevp_head_dim(const eevp_head *h)
{
    return h ? h->d : EEVP_EINVAL;
}

EEVP_API int64_t eevp_head_vocab_offset(const eevp_head *h)
{
    return h ? h->offset : EEVP_EINVAL;
}

EEVP_API int64_t eevp_head_memory(const eevp_head *h)
{
    return h ? h->bytes : EEVP_EINVAL;
}

/* out = ((x - mean) * inv) * nw + nb, element by element in double, one
 * loop per combination of the optional vectors: each free of branches and,
 * out overlapping none of the inputs, vectorised; the same operations in the
 * same order as for one element alone. */
static void norm_rows(const float *restrict x, const float *restrict nw,
                      const float *restrict nb, float *restrict out, int64_t d, double mean,
                      double inv)
{
    int64_t c;
    if (nw && nb) {
        for (c = 0; c < d; c++)
            out[c] = (float)(((double)x[c] - mean) * inv * nw[c] + nb[c]);
    } else if (nw) {
        for (c = 0; c < d; c++)
            out[c] = (float)(((double)x[c] - mean) * inv * nw[c]);
    } else if (nb) {
        for (c = 0; c < d; c++)
            out[c] = (float)(((double)x[c] - mean) * inv + nb[c]);
    } else {
        for (c = 0; c < d; c++)
            out[c] = (float)(((double)x[c] - mean) * inv);
    }
}

int eevpi_head_norm(const eevp_head *h, const float *x, float *out)
{
    const int64_t d = h->d;
    double sum, sumsq, mean = 0.0, inv;
    h->kern->sums(x, d, &sum, &sumsq);
    /* Float squares cannot overflow a double sum: a non-finite sum means a
     * non-finite element. */
    if (!isfinite(sumsq) || !isfinite(sum))
        return EEVP_ENONFINITE;
    switch (h->norm) {
    case EEVP_NORM_RMS:
        inv = 1.0 / sqrt(sumsq / (double)d + h->eps);
        break;
    case EEVP_NORM_LAYER: {
        double var;
        mean = sum / (double)d;
        var = sumsq / (double)d - mean * mean;
        if (var < 0.0)
            var = 0.0;
        inv = 1.0 / sqrt(var + h->eps);
        break;
    }
    default:
        memcpy(out, x, (size_t)d * sizeof(float));
        return EEVP_OK;
    }
    /* A zero row with eps = 0 has no scale: it normalises to zero. */
    if (!isfinite(inv))
        inv = 0.0;
    norm_rows(x, h->nw, h->nb, out, d, mean, inv);
    return EEVP_OK;
}

/* The kernel rule, fixed and never timed (a choice by timing would make the
 * bits depend on the machine's load): every half-precision head and every
 * projection of 1..EEVPI_FIXED_MAX rows goes through the head's fixed-order
 * kernel, which reads W once for all rows, is at the bandwidth floor with
 * SGEMV single-threaded at B = 1 (20 % ahead on one machine measured, 6 %
 * behind on another: docs/BENCHMARKS.md) and gives a row the same bits
 * whatever the batch or the rows the head holds; only fp32 batches of more than EEVPI_FIXED_MAX rows go to
 * SGEMM (batch invariance keeps them on the fixed kernel too:
 * eevpi_head_project_pool). */
void eevpi_head_project(const eevp_head *h, int32_t n, const float *xn, float *z, int64_t ldz)
{
    int32_t r;
    if (h->wtype != EEVP_WEIGHT_F32 || n <= EEVPI_FIXED_MAX) {
        eevpi_head_project_inv(h, n, xn, z, ldz);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, (int)h->V, (int)h->d, 1.0f, xn,
                (int)h->d, h->W, (int)h->stride, 0.0f, z, (int)ldz);
    for (r = 0; r < n; r++)
        eevpi_head_transform(h, z + r * ldz, h->V, h->bias);
}

typedef struct proj_job {
    const eevp_head *h;
    int32_t n;
    const float *xn;
    float *z;
    int64_t ldz;
} proj_job;

static void proj_part(void *arg, int part, int parts)
{
    const proj_job *j = (const proj_job *)arg;
    int64_t r0, r1;
    eevpi_split(j->h->V, part, parts, 64, &r0, &r1);
    eevpi_head_project_range(j->h, r0, r1, j->n, j->xn, j->z, j->ldz);
}

void eevpi_head_project_pool(const eevp_head *h, eevpi_pool *pool, int32_t n, const float *xn,
                             float *z, int64_t ldz, int fixed)
{
    const int64_t bytes = h->V * h->d * (h->wtype == EEVP_WEIGHT_F32 ? 4 : 2);
    proj_job j;
    if (eevpi_pool_parts(pool, bytes) < 2 ||
        (!fixed && h->wtype == EEVP_WEIGHT_F32 && n > EEVPI_FIXED_MAX)) {
        /* Batch invariance without threads: the fixed-order kernel for any
         * number of rows (W read once per 16 of them). */
        if (fixed)
            eevpi_head_project_inv(h, n, xn, z, ldz);
        else
            eevpi_head_project(h, n, xn, z, ldz);
        return;
    }
    j.h = h;
    j.n = n;
    j.xn = xn;
    j.z = z;
    j.ldz = ldz;
    eevpi_pool_run(pool, bytes, proj_part, &j);
}

/* The library's own single-threaded kernel rather than SGEMV: a K x d block
 * is too small for OpenBLAS's threads (with 2 threads on a busy machine the
 * wake-up costs ten times the work), and the fixed order makes a pruned
 * check bit-identical per sequence and through the union plan (batch.c). */
void eevpi_head_project_rows(const eevp_head *h, int32_t k, const float *rows, int64_t ld_rows,
                             const float *bias, const float *xn, float *z)
{
    eevpi_head_project_rows_inv(h, k, rows, ld_rows, bias, xn, z);
}

void eevpi_head_gather(const eevp_head *h, const int32_t *ids, int32_t k, float *out,
                       int64_t ld_out, float *bias_out)
{
    int32_t j;
    for (j = 0; j < k; j++) {
        int64_t v = ids[j] - h->offset;
        if (h->wtype == EEVP_WEIGHT_F32)
            memcpy(out + j * ld_out, h->W + v * h->stride, (size_t)h->d * sizeof(float));
        else
            h->dk->to_f32(h->wtype, h->W16 + v * h->stride, h->d, out + j * ld_out);
        if (bias_out)
            bias_out[j] = h->bias ? h->bias[v] : 0.0f;
    }
}

/* ---- public kernels ---- */

EEVP_API int64_t eevp_head_workspace_size(const eevp_head *h, int32_t n)
{
    if (!h)
        return EEVP_EINVAL;
    if (n < 1 || n > EEVP_MAX_BATCH)
        return EEVP_ERANGE;
    return (int64_t)n * h->d * (int64_t)sizeof(float);
}

static int check_rows(const eevp_head *h, int32_t n, const float *hidden, int64_t ld_hidden,
                      const float *logits, int64_t ld_logits, int64_t width, const void *work)
{
    if (!h || !hidden || !logits || !work)
        return EEVP_EINVAL;
    if (n < 1 || n > EEVP_MAX_BATCH || ld_hidden < h->d || ld_logits < width ||
        ld_logits > INT32_MAX)
        return EEVP_ERANGE;
    return EEVP_OK;
}

static int normalise_rows(const eevp_head *h, int32_t n, const float *hidden, int64_t ld,
                          float *xn)
{
    int32_t r;
    for (r = 0; r < n; r++)
        if (eevpi_head_norm(h, hidden + r * ld, xn + r * h->d) != EEVP_OK)
            return EEVP_ENONFINITE;
    return EEVP_OK;
}

EEVP_API int eevp_head_logits(const eevp_head *h, int32_t n, const float *hidden,
                              int64_t ld_hidden, float *logits, int64_t ld_logits, void *work)
{
    int rc = check_rows(h, n, hidden, ld_hidden, logits, ld_logits, h ? h->V : 0, work);
    if (rc != EEVP_OK)
        return rc;
    if ((rc = normalise_rows(h, n, hidden, ld_hidden, (float *)work)) != EEVP_OK)
        return rc;
    eevpi_head_project(h, n, (const float *)work, logits, ld_logits);
    return EEVP_OK;
}

static int check_ids(const eevp_head *h, const int32_t *ids, int32_t k)
{
    int32_t j;
    for (j = 0; j < k; j++)
        if (ids[j] < h->offset || ids[j] - h->offset >= h->V)
            return EEVP_ERANGE;
    return EEVP_OK;
}

EEVP_API int eevp_head_gather(const eevp_head *h, const int32_t *ids, int32_t k, float *out,
                              int64_t ld_out, float *bias_out)
{
    if (!h || !ids || !out)
        return EEVP_EINVAL;
    if (k < 1 || k > h->V || ld_out < h->d)
        return EEVP_ERANGE;
    if (check_ids(h, ids, k) != EEVP_OK)
        return EEVP_ERANGE;
    eevpi_head_gather(h, ids, k, out, ld_out, bias_out);
    return EEVP_OK;
}

EEVP_API int eevp_head_pruned_logits(const eevp_head *h, int32_t k, const float *rows,
                                     int64_t ld_rows, const float *bias, int32_t n,
                                     const float *hidden, int64_t ld_hidden, float *logits,
                                     int64_t ld_logits, void *work)
{
    int32_t r;
    int rc = check_rows(h, n, hidden, ld_hidden, logits, ld_logits, k, work);
    if (rc != EEVP_OK)
        return rc;
    if (!rows)
        return EEVP_EINVAL;
    if (k < 1 || k > h->V || ld_rows < h->d || ld_rows > INT32_MAX)
        return EEVP_ERANGE;
    if ((rc = normalise_rows(h, n, hidden, ld_hidden, (float *)work)) != EEVP_OK)
        return rc;
    for (r = 0; r < n; r++)
        eevpi_head_project_rows(h, k, rows, ld_rows, bias, (const float *)work + r * h->d,
                                logits + r * ld_logits);
    return EEVP_OK;
}
