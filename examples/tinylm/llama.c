/* SPDX-License-Identifier: MIT */
/*
 * llama.c - a Llama-architecture decoder, fp32: RMSNorm, rotary embeddings
 * in the Hugging Face layout (rotate_half: pairs (i, i + head_dim/2)),
 * grouped-query attention over a KV cache, SwiGLU; one position or a batch of
 * consecutive positions at a time (causal attention inside the batch).
 *
 * Batch invariance: a position gets the same bits alone or inside any batch.
 * Every matrix product goes through the runtime's fixed-order product
 * (matmul.c: one FMA chain per output over the columns in order, whatever
 * the batch); norms, rotary embeddings and attention run per position with
 * the same code whatever the batch.  docs/TINYLM.md gives the cost against
 * SGEMV and SGEMM.
 */
#include "tinylm.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int64_t kv_dim(const tl_config *c)
{
    return (int64_t)c->n_kv_heads * c->head_dim;
}

/* 0 when the n rows of x (cols floats, ldx apart) are all finite, else -1:
 * each product's input is checked once, before the products that share it. */
static int finite_rows(const float *x, int32_t n, int64_t cols, int64_t ldx)
{
    int32_t i;
    int64_t c;
    for (i = 0; i < n; i++)
        for (c = 0; c < cols; c++)
            if (!isfinite(x[(size_t)i * (size_t)ldx + (size_t)c]))
                return -1;
    return 0;
}

/* y[i*ldy + r] = W_r . x_i for n rows of x through the batch-invariant
 * product (matmul.c). */
static void matmul(tl_state *s, int32_t which, int32_t l, int32_t n, const float *x,
                   int64_t ldx, float *y, int64_t ldy)
{
    tl_matmul(&s->m->layers[l].mm[which], n, x, ldx, y, ldy);
}

int tl_state_init(tl_state *s, const tl_model *m, int32_t max_seq)
{
    const tl_config *c = &m->cfg;
    size_t kvn = (size_t)c->n_layers * (size_t)max_seq * (size_t)kv_dim(c);
    const size_t B = TL_MAX_BATCH, d = (size_t)c->hidden_size, ff = (size_t)c->intermediate_size;
    int64_t qd = (int64_t)c->n_heads * c->head_dim;
    int32_t p, i, half = c->head_dim / 2;

    memset(s, 0, sizeof *s);
    s->m = m;
    s->max_seq = max_seq;
    s->kcache = calloc(kvn, sizeof(float));
    s->vcache = calloc(kvn, sizeof(float));
    s->rope_cos = malloc((size_t)max_seq * (size_t)half * sizeof(float));
    s->rope_sin = malloc((size_t)max_seq * (size_t)half * sizeof(float));
    s->xn = malloc(B * d * sizeof(float));
    s->q = malloc(B * (size_t)qd * sizeof(float));
    s->att = malloc(B * (size_t)qd * sizeof(float));
    s->scores = malloc((size_t)max_seq * sizeof(float));
    s->hb = malloc(B * ff * sizeof(float));
    s->hb2 = malloc(B * ff * sizeof(float));
    s->tmp = malloc(B * d * sizeof(float));
    s->xb = malloc(B * d * sizeof(float));
    if (!s->kcache || !s->vcache || !s->rope_cos || !s->rope_sin || !s->xn || !s->q ||
        !s->att || !s->scores || !s->hb || !s->hb2 || !s->tmp || !s->xb) {
        tl_state_free(s);
        return -1;
    }
    /* Angles in double, as Hugging Face and the PyTorch reference compute them. */
    for (p = 0; p < max_seq; p++)
        for (i = 0; i < half; i++) {
            double inv = 1.0 / pow(c->rope_theta, (double)(2 * i) / (double)c->head_dim);
            double a = (double)p * inv;
            s->rope_cos[(size_t)p * half + i] = (float)cos(a);
            s->rope_sin[(size_t)p * half + i] = (float)sin(a);
        }
    return 0;
}

void tl_state_free(tl_state *s)
{
    free(s->xb);
    free(s->kcache);
    free(s->vcache);
    free(s->rope_cos);
    free(s->rope_sin);
    free(s->xn);
    free(s->q);
    free(s->att);
    free(s->scores);
    free(s->hb);
    free(s->hb2);
    free(s->tmp);
    memset(s, 0, sizeof *s);
}

void tl_embed(const tl_state *s, int32_t token, float *x)
{
    const tl_config *c = &s->m->cfg;
    memcpy(x, s->m->embed + (size_t)token * (size_t)c->hidden_size,
           (size_t)c->hidden_size * sizeof(float));
}

static void rmsnorm(float *out, const float *x, const float *w, int32_t n, float eps)
{
    double ss = 0;
    int32_t i;
    float r;
    for (i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    r = 1.0f / sqrtf((float)(ss / n) + eps);
    for (i = 0; i < n; i++)
        out[i] = x[i] * r * w[i];
}

static void rope(float *v, int32_t n_heads, int32_t hd, const float *cs, const float *sn)
{
    int32_t h, i, half = hd / 2;
    for (h = 0; h < n_heads; h++) {
        float *p = v + (size_t)h * hd;
        for (i = 0; i < half; i++) {
            float a = p[i], b = p[i + half];
            p[i] = a * cs[i] - b * sn[i];
            p[i + half] = b * cs[i] + a * sn[i];
        }
    }
}

static float *cache_row(float *cache, const tl_state *s, int32_t l, int32_t pos)
{
    return cache + ((size_t)l * (size_t)s->max_seq + (size_t)pos) * (size_t)kv_dim(&s->m->cfg);
}

const float *tl_cache_k(const tl_state *s, int32_t l, int32_t pos)
{
    return cache_row(s->kcache, s, l, pos);
}

const float *tl_cache_v(const tl_state *s, int32_t l, int32_t pos)
{
    return cache_row(s->vcache, s, l, pos);
}

/* K/V of layer l for n normalised inputs s->xn (rows d apart), stored at
 * pos0 .. pos0 + n - 1. */
static int store_kv(tl_state *s, int32_t l, int32_t pos0, int32_t n)
{
    const tl_config *c = &s->m->cfg;
    const int64_t kvd = kv_dim(c), d = c->hidden_size;
    int32_t half = c->head_dim / 2, i;
    /* Consecutive positions are consecutive cache rows: the products write
     * straight into the cache, after the input is checked (a non-finite
     * one leaves the cache as it was). */
    if (finite_rows(s->xn, n, d, d) != 0)
        return -1;
    matmul(s, TL_MM_K, l, n, s->xn, d, cache_row(s->kcache, s, l, pos0), kvd);
    matmul(s, TL_MM_V, l, n, s->xn, d, cache_row(s->vcache, s, l, pos0), kvd);
    for (i = 0; i < n; i++) {
        const int32_t pos = pos0 + i;
        rope(cache_row(s->kcache, s, l, pos), c->n_kv_heads, c->head_dim,
             s->rope_cos + (size_t)pos * half, s->rope_sin + (size_t)pos * half);
    }
    return 0;
}

int tl_layer_kv_only_batch(tl_state *s, int32_t l, int32_t pos0, int32_t n, const float *x,
                           int64_t ldx)
{
    const tl_config *c = &s->m->cfg;
    int32_t i;
    if (n < 1 || n > TL_MAX_BATCH || pos0 < 0 || pos0 + n > s->max_seq)
        return -1;
    for (i = 0; i < n; i++)
        rmsnorm(s->xn + (size_t)i * (size_t)c->hidden_size, x + (size_t)i * (size_t)ldx,
                s->m->layers[l].attn_norm, c->hidden_size, c->rms_eps);
    return store_kv(s, l, pos0, n);
}

int tl_layer_kv_only(tl_state *s, int32_t l, int32_t pos, const float *x)
{
    return tl_layer_kv_only_batch(s, l, pos, 1, x, s->m->cfg.hidden_size);
}

/* a . b in a fixed order: lane j of eight takes the elements i = j (mod 8)
 * in increasing i, then a fixed pairwise sum and the tail.  Independent
 * lanes let the compiler vectorise it; the order never depends on the batch. */
static float dot_fixed(const float *a, const float *b, int32_t n)
{
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0}, s;
    int32_t i, j;
    for (i = 0; i + 8 <= n; i += 8)
        for (j = 0; j < 8; j++)
            acc[j] += a[i + j] * b[i + j];
    s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* Attention of one query row (position pos) over the cache rows 0 .. pos. */
static void attend(tl_state *s, int32_t l, int32_t pos, const float *q, float *att)
{
    const tl_config *c = &s->m->cfg;
    int32_t hd = c->head_dim, group = c->n_heads / c->n_kv_heads, h, t, i;
    float scale = 1.0f / sqrtf((float)hd);
    for (h = 0; h < c->n_heads; h++) {
        const float *qh = q + (size_t)h * hd;
        size_t koff = (size_t)(h / group) * hd;
        float mx = -INFINITY, sum = 0;
        float *out = att + (size_t)h * hd;
        for (t = 0; t <= pos; t++) {
            s->scores[t] = dot_fixed(qh, cache_row(s->kcache, s, l, t) + koff, hd) * scale;
            if (s->scores[t] > mx)
                mx = s->scores[t];
        }
        for (t = 0; t <= pos; t++) {
            s->scores[t] = expf(s->scores[t] - mx);
            sum += s->scores[t];
        }
        for (t = 0; t <= pos; t++)
            s->scores[t] /= sum;
        /* Eight outputs at a time, kept in registers over the whole cache;
         * each output adds its terms in increasing t. */
        for (i = 0; i < hd; i += 8) {
            const int32_t w = hd - i < 8 ? hd - i : 8;
            float o[8] = { 0, 0, 0, 0, 0, 0, 0, 0 };
            int32_t j;
            if (w == 8)
                for (t = 0; t <= pos; t++) {
                    const float *vr = cache_row(s->vcache, s, l, t) + koff + i;
                    for (j = 0; j < 8; j++)
                        o[j] += s->scores[t] * vr[j];
                }
            else
                for (t = 0; t <= pos; t++)
                    for (j = 0; j < w; j++)
                        o[j] += s->scores[t] * cache_row(s->vcache, s, l, t)[koff + i + j];
            memcpy(out + i, o, (size_t)w * sizeof(float));
        }
    }
}

int tl_layer_forward_batch(tl_state *s, int32_t l, int32_t pos0, int32_t n, float *x,
                           int64_t ldx)
{
    const tl_config *c = &s->m->cfg;
    const tl_layer *L = &s->m->layers[l];
    const int64_t d = c->hidden_size, ff = c->intermediate_size;
    const int64_t qd = (int64_t)c->n_heads * c->head_dim;
    int32_t half = c->head_dim / 2, i;
    int64_t j;

    if (n < 1 || n > TL_MAX_BATCH || pos0 < 0 || pos0 + n > s->max_seq)
        return -1;
    for (i = 0; i < n; i++)
        rmsnorm(s->xn + (size_t)i * (size_t)d, x + (size_t)i * (size_t)ldx, L->attn_norm,
                (int32_t)d, c->rms_eps);
    if (store_kv(s, l, pos0, n) != 0) /* checks xn, which Q shares */
        return -1;
    matmul(s, TL_MM_Q, l, n, s->xn, d, s->q, qd);
    /* Causal attention inside the batch: row i sees the cache up to its
     * own position, which store_kv has just filled for the whole batch. */
    for (i = 0; i < n; i++) {
        float *q = s->q + (size_t)i * (size_t)qd;
        rope(q, c->n_heads, c->head_dim, s->rope_cos + (size_t)(pos0 + i) * half,
             s->rope_sin + (size_t)(pos0 + i) * half);
        attend(s, l, pos0 + i, q, s->att + (size_t)i * (size_t)qd);
    }
    if (finite_rows(s->att, n, qd, qd) != 0)
        return -1;
    matmul(s, TL_MM_O, l, n, s->att, qd, s->tmp, d);
    for (i = 0; i < n; i++)
        for (j = 0; j < d; j++)
            x[(size_t)i * (size_t)ldx + (size_t)j] += s->tmp[(size_t)i * (size_t)d + (size_t)j];

    for (i = 0; i < n; i++)
        rmsnorm(s->xn + (size_t)i * (size_t)d, x + (size_t)i * (size_t)ldx, L->ffn_norm,
                (int32_t)d, c->rms_eps);
    if (finite_rows(s->xn, n, d, d) != 0)
        return -1;
    matmul(s, TL_MM_GATE, l, n, s->xn, d, s->hb, ff);
    matmul(s, TL_MM_UP, l, n, s->xn, d, s->hb2, ff);
    for (j = 0; j < (int64_t)n * ff; j++) {
        float g = s->hb[j];
        s->hb[j] = g / (1.0f + expf(-g)) * s->hb2[j];
    }
    if (finite_rows(s->hb, n, ff, ff) != 0)
        return -1;
    matmul(s, TL_MM_DOWN, l, n, s->hb, ff, s->tmp, d);
    for (i = 0; i < n; i++)
        for (j = 0; j < d; j++)
            x[(size_t)i * (size_t)ldx + (size_t)j] += s->tmp[(size_t)i * (size_t)d + (size_t)j];
    return 0;
}

int tl_layer_forward(tl_state *s, int32_t l, int32_t pos, float *x)
{
    return tl_layer_forward_batch(s, l, pos, 1, x, s->m->cfg.hidden_size);
}

int tl_prefill(tl_state *s, const int32_t *ids, int32_t pos0, int32_t n, float *x_last)
{
    const int32_t d = s->m->cfg.hidden_size;
    int32_t i0, i, l;
    for (i0 = 0; i0 < n; i0 += TL_MAX_BATCH) {
        const int32_t m = n - i0 < TL_MAX_BATCH ? n - i0 : TL_MAX_BATCH;
        for (i = 0; i < m; i++) {
            if (ids[i0 + i] < 0 || ids[i0 + i] >= s->m->cfg.vocab_size)
                return -1;
            tl_embed(s, ids[i0 + i], s->xb + (size_t)i * (size_t)d);
        }
        for (l = 0; l < s->m->cfg.n_layers; l++)
            if (tl_layer_forward_batch(s, l, pos0 + i0, m, s->xb, d) != 0)
                return -1;
        if (i0 + m == n && x_last != NULL)
            memcpy(x_last, s->xb + (size_t)(m - 1) * (size_t)d, (size_t)d * sizeof(float));
    }
    return 0;
}
