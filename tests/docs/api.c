/* SPDX-License-Identifier: MIT */
/*
 * api.c - harness for the fragments of docs/API.md: minimal.c's head
 * (V = 16 tokens in D = 8 dimensions), 6 layers, and a host model in
 * which sequence s's state points to token target(s) more sharply with depth.
 */
#include "doc_harness.h"

enum { V = 16, D = 8, LAYERS = 6, MAX_BATCH = 3 };

static float W[V * D];

static inline int32_t target(int32_t s) { return (3 + 5 * s) % V; }

static inline void state(int32_t l, int32_t s, float *h)
{
    int32_t c, t = target(s);
    for (c = 0; c < D; c++)
        h[c] = 0.3f * (float)((c * 7 + l * 3 + t) % 5) - 0.6f;
    h[t % D] += (t < D ? 1.0f : -1.0f) * (0.15f + 0.1f * (float)s) * (float)(l + 1);
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

#if defined(DOC_SECTION_decode)
/* The host of §2: rows in fixed slots, done[s] marks finished sequences. */
static int32_t propagated[MAX_BATCH];

static void model_layer(int32_t l, float *x, int64_t ld, int32_t n, const uint8_t *done)
{
    int32_t s;
    for (s = 0; s < n; s++)
        if (!done[s])
            state(l, s, x + s * ld);
}

static void propagate_state(int32_t s, int32_t l, const float *h)
{
    DOC_CHECK(h[0] == h[0]);
    propagated[s] = l + 1;
}

#include "doc_fragment.h"

#elif defined(DOC_SECTION_setup)
static void die(const char *fmt, const char *msg)
{
    fprintf(stderr, fmt, msg);
    fputc('\n', stderr);
    exit(1);
}

#elif defined(DOC_SECTION_criterion)
typedef struct my_probe {
    float bias;
} my_probe;

/* A logistic probe on the hidden state's first component. */
static float my_probe_score(const my_probe *p, const float *h, int32_t dim, int32_t layer)
{
    (void)dim;
    (void)layer;
    return 1.0f / (1.0f + expf(-(h[0] + p->bias)));
}

#elif defined(DOC_SECTION_alloc)
typedef struct arena {
    int live;
} arena;

static void *my_alloc(void *opaque, size_t size)
{
    ((arena *)opaque)->live++;
    return malloc(size);
}

static void my_free(void *opaque, void *ptr)
{
    if (ptr)
        ((arena *)opaque)->live--;
    free(ptr);
}
#endif

#include "doc_fragment_top.h"

int main(void)
{
#if defined(DOC_SECTION_decode)
    /* decode_one over 3 tokens of 3 sequences, rows ld = D + 3 apart. */
    eevp_head *head = make_head();
    eevp_ctx_options co = EEVP_CTX_OPTIONS_INIT;
    eevp_ctx *ctx = NULL;
    char msg[256];
    float x[MAX_BATCH * (D + 3)];
    int32_t positions[MAX_BATCH] = {0, 0, 0}, tokens[MAX_BATCH], t, s, early = 0;
    co.n_layers = LAYERS;
    co.max_batch = MAX_BATCH;
    co.first_layer = 1;
    co.k = 4;
    DOC_CHECK(eevp_ctx_create(&ctx, head, &co, msg, sizeof msg) == EEVP_OK);
    for (t = 0; t < 3; t++) {
        DOC_CHECK(decode_one(ctx, LAYERS, MAX_BATCH, positions, x, D + 3, tokens) == EEVP_OK);
        for (s = 0; s < MAX_BATCH; s++) {
            DOC_CHECK(tokens[s] == target(s));
            early += propagated[s] > 0;
            positions[s]++;
        }
    }
    DOC_CHECK(early > 0);
    eevp_ctx_free(ctx);
    eevp_head_free(head);
#elif defined(DOC_SECTION_setup)
    /* A head of 300 tokens in 16 dimensions, 12 layers, a batch of 2. */
    enum { B = 2, L12 = 12 };
    static float W300[300 * 16];
    float final_norm_weight[16];
    const int32_t V300 = 300, d = 16;
    int32_t i;
    for (i = 0; i < 300 * 16; i++)
        W300[i] = (float)((i * 37) % 11) / 11.0f - 0.5f;
    for (i = 0; i < 16; i++)
        final_norm_weight[i] = 1.0f;
    {
#define V V300
#define W W300
#define L L12
#include "doc_fragment.h"
#undef V
#undef W
#undef L
    }
#elif defined(DOC_SECTION_criterion)
    /* The probe decides alone (K = 0): c = sigmoid(h[0]) at layers 0, 1, 2. */
    eevp_head *head = make_head();
    eevp_ctx_options co = EEVP_CTX_OPTIONS_INIT;
    eevp_ctx *ctx = NULL;
    my_probe *probe = malloc(sizeof *probe);
    const float h[3][D] = {{0.5f}, {3.0f}, {3.5f}};
    eevp_result r = {0};
    char msg[256];
    int32_t l;
    int rc;
    DOC_CHECK(probe != NULL);
    probe->bias = 0.0f;
    co.n_layers = 3;
    co.k = 0;
    DOC_CHECK(eevp_ctx_create(&ctx, head, &co, msg, sizeof msg) == EEVP_OK);
    {
#include "doc_fragment.h"
    }
    DOC_CHECK(rc == EEVP_OK);
    DOC_CHECK(eevp_step_begin(ctx, 1, NULL) == EEVP_OK);
    for (l = 0; l < 3 && eevp_step_n_running(ctx) > 0; l++)
        DOC_CHECK(eevp_step_layer(ctx, l, h[l], D, 1, NULL) == EEVP_OK);
    r.struct_size = sizeof r;
    DOC_CHECK(eevp_step_result(ctx, 0, &r) == EEVP_OK && eevp_step_end(ctx) == EEVP_OK);
    DOC_CHECK(r.reason == EEVP_REASON_CONFIDENT && r.layer == 1);
    DOC_CHECK(fabsf(r.confidence - 1.0f / (1.0f + expf(-3.0f))) < 1e-6f);
    eevp_ctx_free(ctx);
    free(probe); /* the table has no destroy: the state stays the caller's to free */
    eevp_head_free(head);
#elif defined(DOC_SECTION_alloc)
    arena counts = {0};
    void *my_arena = &counts;
    eevp_head_options ho = EEVP_HEAD_OPTIONS_INIT;
    eevp_head *head = NULL;
    char msg[256];
    ho.n_vocab = V;
    ho.dim = D;
    ho.weights = W;
    ho.flags = EEVP_HEAD_COPY;
    {
#include "doc_fragment.h"
        DOC_CHECK(eevp_head_create(&head, &ho, msg, sizeof msg) == EEVP_OK);
    }
    DOC_CHECK(counts.live == 2); /* the struct and the copies */
    eevp_head_free(head);
    DOC_CHECK(counts.live == 0);
#elif defined(DOC_SECTION_kernels)
    eevp_head *head = make_head();
    const int32_t d = D, K = 4;
    float h_p[D], h_l[D], zl[V];
    int32_t i;
    void *work2;
    state(1, 1, h_p);
    state(3, 1, h_l);
    {
#include "doc_fragment.h"
        /* The pruned logits are the full ones at the set's ids. */
        DOC_CHECK(posix_memalign(&work2, 64, (size_t)ws) == 0);
        DOC_CHECK(eevp_head_logits(head, 1, h_l, d, zl, V, work2) == EEVP_OK);
        DOC_CHECK(S[0] == target(1));
        for (i = 0; i < K; i++)
            DOC_CHECK(fabsf(zs[i] - zl[S[i]]) <= 1e-4f * (1.0f + fabsf(zl[S[i]])));
        free(work2);
        free(work);
        free(z);
        free(zs);
        free(bias);
        free(rows);
        free(S);
        free(tw);
    }
    eevp_head_free(head);
#else
#error "api.c: unknown section"
#endif
    return 0;
}
