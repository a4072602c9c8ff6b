/* SPDX-License-Identifier: MIT */
/*
 * integration.c - harness for the fragments of docs/INTEGRATION.md: a toy
 * host model (V = 16 tokens in D = 8 dimensions, L = 6 layers, minimal.c's
 * head) in which sequence s's state points to token target(s) more sharply
 * with depth, at a speed of its own.
 */
#include "doc_harness.h"

#include "doc_fragment_top.h"

enum { V = 16, D = 8, L = 6, MAX_BATCH = 3 };

typedef struct host_model {
    int32_t n_layers, dim;
    int32_t propagated[MAX_BATCH]; /* exit layer + 1 of the sequences propagated */
} host_model;

static float W[V * D];

static inline int32_t target(int32_t s) { return (3 + 5 * s) % V; }

static inline void state(int32_t l, int32_t s, float *h)
{
    int32_t c, t = target(s);
    for (c = 0; c < D; c++)
        h[c] = 0.3f * (float)((c * 7 + l * 3 + t) % 5) - 0.6f;
    h[t % D] += (t < D ? 1.0f : -1.0f) * (0.15f + 0.1f * (float)s) * (float)(l + 1);
}

/* Layer l on the running rows: row r is sequence active[r]. */
static inline void model_layer(host_model *m, int32_t l, const int32_t *pos,
                               const int32_t *active, int32_t n_active, float *x, int64_t ld)
{
    int32_t r;
    (void)m;
    (void)pos;
    for (r = 0; r < n_active; r++)
        state(l, active[r], x + r * ld);
}

static inline void propagate_state(host_model *m, int32_t s, int32_t pos, int32_t l,
                                   const float *h)
{
    (void)pos;
    DOC_CHECK(h[0] == h[0]);
    m->propagated[s] = l + 1;
}

static inline eevp_head *make_head(void)
{
    eevp_head_options ho = EEVP_HEAD_OPTIONS_INIT;
    eevp_head *head = NULL;
    char msg[256];
    int32_t v;
    for (v = 0; v < V; v++)
        W[v * D + v % D] = v < D ? 2.5f : -2.5f;
    ho.n_vocab = V;
    ho.dim = D;
    ho.weights = W;
    ho.norm = EEVP_NORM_RMS;
    DOC_CHECK(eevp_head_create(&head, &ho, msg, sizeof msg) == EEVP_OK);
    return head;
}

static inline eevp_ctx_options options(void)
{
    eevp_ctx_options co = EEVP_CTX_OPTIONS_INIT;
    co.n_layers = L;
    co.max_batch = MAX_BATCH;
    co.first_layer = 1;
    co.k = 4;
    return co;
}

#if defined(DOC_SECTION_decode)
#include "doc_fragment.h"
#endif

int main(void)
{
    eevp_head *head = make_head();
    eevp_ctx_options co = options();
    eevp_ctx *ctx = NULL;
    char msg[256];
#if defined(DOC_SECTION_decode)
    /* decode_token over 3 tokens of 3 sequences, rows ld = D + 3 apart. */
    host_model m = {L, D, {0, 0, 0}};
    float x[MAX_BATCH * (D + 3)];
    int32_t pos[MAX_BATCH] = {0, 0, 0}, next[MAX_BATCH], t, s, early = 0;
    DOC_CHECK(eevp_ctx_create(&ctx, head, &co, msg, sizeof msg) == EEVP_OK);
    for (t = 0; t < 3; t++) {
        DOC_CHECK(decode_token(ctx, &m, MAX_BATCH, pos, x, D + 3, next) == EEVP_OK);
        for (s = 0; s < MAX_BATCH; s++) {
            DOC_CHECK(next[s] == target(s));
            early += m.propagated[s] > 0;
            pos[s]++;
        }
    }
    DOC_CHECK(early > 0);
#elif defined(DOC_SECTION_candidates)
    float h[D], logits[4];
    int32_t ids[4], capacity = 4, s = 0, l;
    eevp_result res = {0};
    int rc;
    DOC_CHECK(eevp_ctx_create(&ctx, head, &co, msg, sizeof msg) == EEVP_OK);
    DOC_CHECK(eevp_step_begin(ctx, 1, NULL) == EEVP_OK);
    for (l = 0; l < L && eevp_step_n_running(ctx) > 0; l++) {
        state(l, s, h);
        DOC_CHECK(eevp_step_layer(ctx, l, h, D, 1, NULL) == EEVP_OK);
    }
    res.struct_size = sizeof res;
    DOC_CHECK(eevp_step_result(ctx, s, &res) == EEVP_OK);
#include "doc_fragment.h"
    DOC_CHECK(rc == EEVP_OK && n_out == 4 && ids[0] == res.token && logits[0] >= logits[1]);
    DOC_CHECK(eevp_step_end(ctx) == EEVP_OK);
#elif defined(DOC_SECTION_memory)
    {
#include "doc_fragment.h"
        DOC_CHECK(eevp_ctx_create(&ctx, head, &co, msg, sizeof msg) == EEVP_OK);
        DOC_CHECK(eevp_ctx_memory(ctx) == bytes);
    }
#elif defined(DOC_SECTION_blas)
    {
#include "doc_fragment.h"
    }
    DOC_CHECK(openblas_get_num_threads() == 1);
    DOC_CHECK(eevp_ctx_create(&ctx, head, &co, msg, sizeof msg) == EEVP_OK);
#elif defined(DOC_SECTION_alloc)
    {
#include "doc_fragment.h"
        /* "A context makes two allocations at creation ... and none afterwards" */
        DOC_CHECK(eevp_ctx_create(&ctx, head, &co, msg, sizeof msg) == EEVP_OK);
        DOC_CHECK(counts.live_blocks == 2);
        eevp_ctx_free(ctx);
        ctx = NULL;
        DOC_CHECK(counts.live_blocks == 0);
    }
#else
#error "integration.c: unknown section"
#endif
    eevp_ctx_free(ctx);
    eevp_head_free(head);
    return 0;
}
