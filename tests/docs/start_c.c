/* SPDX-License-Identifier: MIT */
/*
 * start_c.c - harness for the fragments of docs/START_C.md, section 3 (the
 * steps of examples/minimal.c) and sections 4 and 5.  The setup is
 * minimal.c's: V = 16 tokens in D = 8 dimensions, L = 6 layers, a batch of 2.
 */
#include "doc_harness.h"

#include "doc_fragment_top.h"

enum { V = 16, D = 8, L = 6, BATCH = 2 };

static float W[V * D];

static inline void make_w(void)
{
    int32_t v;
    for (v = 0; v < V; v++)
        W[v * D + v % D] = v < D ? 2.5f : -2.5f;
}

/* minimal.c's toy layer: sequence s's state points to token 3 + 5 s more
 * sharply with depth. */
static inline void model_layer(int32_t l, int32_t s, float *h)
{
    int32_t c, next = 3 + 5 * s;
    for (c = 0; c < D; c++)
        h[c] = 0.3f * (float)((c * 7 + l * 3 + next) % 5) - 0.6f;
    h[next % D] += (next < D ? 1.0f : -1.0f) * 0.3f * (float)(l + 1);
}

#if defined(DOC_SECTION_die)
#include "doc_fragment.h"
#endif

#if !defined(DOC_SECTION_head)
/* minimal.c's head and context, created by the harness. */
static inline eevp_ctx *make_ctx(eevp_head **head)
{
    eevp_head_options ho = EEVP_HEAD_OPTIONS_INIT;
    eevp_ctx_options co = EEVP_CTX_OPTIONS_INIT;
    eevp_ctx *ctx = NULL;
    char msg[256];
    make_w();
    ho.n_vocab = V;
    ho.dim = D;
    ho.weights = W;
    ho.norm = EEVP_NORM_RMS;
    DOC_CHECK(eevp_head_create(head, &ho, msg, sizeof msg) == EEVP_OK);
    co.n_layers = L;
    co.max_batch = BATCH;
    co.first_layer = 1;
    co.k = 4;
#if defined(DOC_SECTION_loop)
    /* The fragment leaves out the compaction (a comment): no early exits,
     * so that the batch keeps its 2 rows to the last layer. */
    co.threshold = INFINITY;
#endif
    DOC_CHECK(eevp_ctx_create(&ctx, *head, &co, msg, sizeof msg) == EEVP_OK);
    return ctx;
}

/* Runs every layer of a step begun on ctx, rows in fixed slots. */
static inline void run_layers(eevp_ctx *ctx)
{
    float x[BATCH * D];
    int32_t l, s;
    for (l = 0; l < L && eevp_step_n_running(ctx) > 0; l++) {
        for (s = 0; s < BATCH; s++)
            model_layer(l, s, x + s * D);
        if (eevp_ctx_layer_required(ctx, l) == 1)
            DOC_CHECK(eevp_step_layer(ctx, l, x, D, BATCH, NULL) == EEVP_OK);
    }
}
#endif

int main(void)
{
#if defined(DOC_SECTION_head)
    eevp_head *head = NULL;
    char msg[256];
    make_w();
    {
#include "doc_fragment.h"
    }
    DOC_CHECK(eevp_head_n_vocab(head) == V && eevp_head_dim(head) == D);
    eevp_head_free(head);
#elif defined(DOC_SECTION_ctx)
    eevp_head *head = NULL;
    eevp_ctx *ctx = make_ctx(&head), *made;
    eevp_ctx_options co = EEVP_CTX_OPTIONS_INIT;
    char msg[256];
    eevp_ctx_free(ctx);
    {
#include "doc_fragment.h"
    }
    made = ctx;
    DOC_CHECK(made != NULL);
    DOC_CHECK(eevp_ctx_layer_required(made, 0) == 0 && eevp_ctx_layer_required(made, 1) == 1);
    eevp_ctx_free(made);
    eevp_head_free(head);
#elif defined(DOC_SECTION_begin) || defined(DOC_SECTION_loop) || defined(DOC_SECTION_result) \
    || defined(DOC_SECTION_end)
    eevp_head *head = NULL;
    eevp_ctx *ctx = make_ctx(&head);
    int32_t pos[BATCH] = {0, 0};
    int rc = EEVP_OK;
#if defined(DOC_SECTION_begin)
    {
#include "doc_fragment.h"
    }
    DOC_CHECK(eevp_step_n_running(ctx) == BATCH);
    run_layers(ctx);
#elif defined(DOC_SECTION_loop)
    DOC_CHECK(eevp_step_begin(ctx, BATCH, pos) == EEVP_OK);
    {
        float x[BATCH * D];
        int32_t active[BATCH] = {0, 1}, n_active = BATCH, l, r;
#include "doc_fragment.h"
        DOC_CHECK(l == L);
    }
#elif defined(DOC_SECTION_result)
    DOC_CHECK(eevp_step_begin(ctx, BATCH, pos) == EEVP_OK);
    run_layers(ctx);
    {
        int32_t active[BATCH] = {0, 1}, r;
        for (r = 0; r < BATCH; r++) {
#include "doc_fragment.h"
            DOC_CHECK(res.reason != EEVP_REASON_RUNNING && res.token == 3 + 5 * r);
        }
    }
#else
    DOC_CHECK(eevp_step_begin(ctx, BATCH, pos) == EEVP_OK);
    run_layers(ctx);
    {
#include "doc_fragment.h"
    }
#endif
    DOC_CHECK(rc == EEVP_OK && eevp_step_n_running(ctx) == 0);
#if defined(DOC_SECTION_end)
    DOC_CHECK(eevp_step_end(ctx) == EEVP_ESTATE); /* the fragment ended it */
#else
    DOC_CHECK(eevp_step_end(ctx) == EEVP_OK);
#endif
    eevp_ctx_free(ctx);
    eevp_head_free(head);
#elif defined(DOC_SECTION_die)
    /* The text's example: first_layer 9 of 6 layers. */
    eevp_head *head = NULL;
    eevp_ctx *ctx = make_ctx(&head), *bad = NULL;
    eevp_ctx_options co = EEVP_CTX_OPTIONS_INIT;
    char msg[256];
    co.n_layers = 6;
    co.first_layer = 9;
    DOC_CHECK(eevp_ctx_create(&bad, head, &co, msg, sizeof msg) == EEVP_ERANGE && !bad);
    DOC_CHECK(strcmp(msg, "first_layer 9 outside 0..n_layers-1 (5)") == 0);
    DOC_CHECK(die(ctx, "eevp_step_end", eevp_step_end(ctx)) == 1);
    eevp_ctx_free(ctx);
    eevp_head_free(head);
#elif defined(DOC_SECTION_version)
#include "doc_fragment.h"
    DOC_CHECK(eevp_version_number() / 10000 == EEVP_VERSION_MAJOR);
#else
#error "start_c.c: unknown section"
#endif
    return 0;
}
