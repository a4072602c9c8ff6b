/* SPDX-License-Identifier: MIT */
/*
 * llama.c - one token at a time through a Llama-architecture decoder, fp32:
 * RMSNorm, rotary embeddings in the Hugging Face layout (rotate_half: pairs
 * (i, i + head_dim/2)), grouped-query attention over a KV cache, SwiGLU.
 * Matrix-vector products go through OpenBLAS's SGEMV.
 */
#include "tinylm.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static int64_t kv_dim(const tl_config *c)
{
    return (int64_t)c->n_kv_heads * c->head_dim;
}

int tl_state_init(tl_state *s, const tl_model *m, int32_t max_seq)
{
    const tl_config *c = &m->cfg;
    size_t kvn = (size_t)c->n_layers * (size_t)max_seq * (size_t)kv_dim(c);
    int64_t qd = (int64_t)c->n_heads * c->head_dim;
    int32_t p, i, half = c->head_dim / 2;

    memset(s, 0, sizeof *s);
    s->m = m;
    s->max_seq = max_seq;
    s->kcache = calloc(kvn, sizeof(float));
    s->vcache = calloc(kvn, sizeof(float));
    s->rope_cos = malloc((size_t)max_seq * (size_t)half * sizeof(float));
    s->rope_sin = malloc((size_t)max_seq * (size_t)half * sizeof(float));
    s->xn = malloc((size_t)c->hidden_size * sizeof(float));
    s->q = malloc((size_t)qd * sizeof(float));
    s->k = malloc((size_t)kv_dim(c) * sizeof(float));
    s->v = malloc((size_t)kv_dim(c) * sizeof(float));
    s->att = malloc((size_t)qd * sizeof(float));
    s->scores = malloc((size_t)max_seq * sizeof(float));
    s->hb = malloc((size_t)c->intermediate_size * sizeof(float));
    s->hb2 = malloc((size_t)c->intermediate_size * sizeof(float));
    s->tmp = malloc((size_t)c->hidden_size * sizeof(float));
    if (!s->kcache || !s->vcache || !s->rope_cos || !s->rope_sin || !s->xn || !s->q ||
        !s->k || !s->v || !s->att || !s->scores || !s->hb || !s->hb2 || !s->tmp) {
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
    free(s->kcache);
    free(s->vcache);
    free(s->rope_cos);
    free(s->rope_sin);
    free(s->xn);
    free(s->q);
    free(s->k);
    free(s->v);
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

/* y = W x, W rows x cols row-major */
static void matvec(float *y, const float *w, const float *x, int64_t rows, int64_t cols)
{
    cblas_sgemv(CblasRowMajor, CblasNoTrans, (blasint)rows, (blasint)cols, 1.0f, w,
                (blasint)cols, x, 1, 0.0f, y, 1);
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

/* K/V of layer l for the normalised input s->xn, stored at pos. */
static void store_kv(tl_state *s, int32_t l, int32_t pos)
{
    const tl_config *c = &s->m->cfg;
    const tl_layer *L = &s->m->layers[l];
    int32_t half = c->head_dim / 2;
    float *kr = cache_row(s->kcache, s, l, pos), *vr = cache_row(s->vcache, s, l, pos);
    matvec(kr, L->wk, s->xn, kv_dim(c), c->hidden_size);
    matvec(vr, L->wv, s->xn, kv_dim(c), c->hidden_size);
    rope(kr, c->n_kv_heads, c->head_dim, s->rope_cos + (size_t)pos * half,
         s->rope_sin + (size_t)pos * half);
}

void tl_layer_kv_only(tl_state *s, int32_t l, int32_t pos, const float *x)
{
    const tl_config *c = &s->m->cfg;
    rmsnorm(s->xn, x, s->m->layers[l].attn_norm, c->hidden_size, c->rms_eps);
    store_kv(s, l, pos);
}

void tl_layer_forward(tl_state *s, int32_t l, int32_t pos, float *x)
{
    const tl_config *c = &s->m->cfg;
    const tl_layer *L = &s->m->layers[l];
    int32_t d = c->hidden_size, hd = c->head_dim, half = hd / 2;
    int32_t group = c->n_heads / c->n_kv_heads, h, t, i;
    int64_t qd = (int64_t)c->n_heads * hd;
    float scale = 1.0f / sqrtf((float)hd);

    rmsnorm(s->xn, x, L->attn_norm, d, c->rms_eps);
    matvec(s->q, L->wq, s->xn, qd, d);
    rope(s->q, c->n_heads, hd, s->rope_cos + (size_t)pos * half,
         s->rope_sin + (size_t)pos * half);
    store_kv(s, l, pos);

    for (h = 0; h < c->n_heads; h++) {
        const float *qh = s->q + (size_t)h * hd;
        size_t koff = (size_t)(h / group) * hd;
        float mx = -INFINITY, sum = 0;
        float *out = s->att + (size_t)h * hd;
        for (t = 0; t <= pos; t++) {
            const float *kr = cache_row(s->kcache, s, l, t) + koff;
            float dot = 0;
            for (i = 0; i < hd; i++)
                dot += qh[i] * kr[i];
            s->scores[t] = dot * scale;
            if (s->scores[t] > mx)
                mx = s->scores[t];
        }
        for (t = 0; t <= pos; t++) {
            s->scores[t] = expf(s->scores[t] - mx);
            sum += s->scores[t];
        }
        memset(out, 0, (size_t)hd * sizeof(float));
        for (t = 0; t <= pos; t++) {
            const float *vr = cache_row(s->vcache, s, l, t) + koff;
            float a = s->scores[t] / sum;
            for (i = 0; i < hd; i++)
                out[i] += a * vr[i];
        }
    }
    matvec(s->tmp, L->wo, s->att, d, qd);
    for (i = 0; i < d; i++)
        x[i] += s->tmp[i];

    rmsnorm(s->xn, x, L->ffn_norm, d, c->rms_eps);
    matvec(s->hb, L->w_gate, s->xn, c->intermediate_size, d);
    matvec(s->hb2, L->w_up, s->xn, c->intermediate_size, d);
    for (i = 0; i < c->intermediate_size; i++) {
        float g = s->hb[i];
        s->hb[i] = g / (1.0f + expf(-g)) * s->hb2[i];
    }
    matvec(s->tmp, L->w_down, s->hb, d, c->intermediate_size);
    for (i = 0; i < d; i++)
        x[i] += s->tmp[i];
}
