/* SPDX-License-Identifier: MIT */
/*
 * prefill.c - what to do with the prompt.  Prompt (prefill) tokens need no
 * exit decision, only their K/V in every layer: they run through all the
 * layers with no eevp_step_* call at all.  Here the prompt positions go
 * through each layer together, as a batched prefill does (tl_prefill in
 * examples/tinylm/llama.c).  The last prompt token then goes through an
 * ordinary decoding step: its exit decision gives the first generated token,
 * at generation index t = 0 (positions[] counts generated tokens, not the
 * position in the context).  Decoding goes on from there, filling the K/V of
 * the layers an early exit skipped.  The same prompt is then decoded by a
 * context with threshold = INFINITY ("never exit early"), which asks for the
 * last layer only and gives the full-depth tokens.
 *
 *   cc prefill.c $(pkg-config --cflags --libs eevp) -lm -o prefill && ./prefill
 *
 * The toy model: a layer reads the mean of its cache (causal "attention")
 * and pushes the state towards the token that follows its input token, more
 * sharply with depth.
 */
#include <eevp.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

enum { V = 16, D = 8, L = 6, MAX_POS = 32, PROMPT = 5, GENERATE = 4 };

static float cache[L][MAX_POS][D]; /* the "K/V" of layer l at each position */

static void embed(int32_t tok, float *h)
{
    int32_t c;
    for (c = 0; c < D; c++)
        h[c] = 0.3f * (float)((c * 7 + tok) % 5) - 0.6f;
}

/* State propagation's half of a layer: its K/V at pos from its input x. */
static void layer_kv(int32_t l, int32_t pos, const float *x)
{
    memcpy(cache[l][pos], x, sizeof cache[l][pos]);
}

/* Layer l for the token `tok` at position pos (its K/V first, then causal
 * attention over positions 0 .. pos, then the push). */
static void layer_forward(int32_t l, int32_t pos, int32_t tok, float *h)
{
    const int32_t next = (tok * 5 + 3) % V;
    float mean[D] = {0};
    int32_t c, j;
    layer_kv(l, pos, h);
    for (j = 0; j <= pos; j++)
        for (c = 0; c < D; c++)
            mean[c] += cache[l][j][c] / (float)(pos + 1);
    for (c = 0; c < D; c++)
        h[c] += 0.05f * mean[c];
    h[next % D] += (next < D ? 0.35f : -0.35f) * (float)(l + 1);
}

/* Prefill positions 0 .. n-1: layer by layer, all positions together. */
static void prefill(const int32_t *ids, int32_t n, float (*x)[D])
{
    int32_t l, i;
    for (i = 0; i < n; i++)
        embed(ids[i], x[i]);
    for (l = 0; l < L; l++)
        for (i = 0; i < n; i++)
            layer_forward(l, i, ids[i], x[i]);
}

/* Decode GENERATE tokens after the prompt with ctx; 0 or 1 on error. */
static int decode(eevp_ctx *ctx, const int32_t *prompt, const char *label)
{
    float x[PROMPT][D];
    int32_t tok = prompt[PROMPT - 1], pos = PROMPT - 1, t;
    memset(cache, 0, sizeof cache);
    prefill(prompt, PROMPT - 1, x);     /* no eevp call for prompt tokens */
    printf("%s:", label);
    for (t = 0; t < GENERATE; t++, pos++) {
        float h[D];
        eevp_result res = {0};
        int32_t l, j;
        int rc = eevp_step_begin(ctx, 1, &t); /* t: generation index, 0 first */
        res.struct_size = sizeof res;
        embed(tok, h);
        for (l = 0; rc == EEVP_OK && l < L && eevp_step_n_running(ctx) > 0; l++) {
            layer_forward(l, pos, tok, h);
            if (eevp_ctx_layer_required(ctx, l) == 1)
                rc = eevp_step_layer(ctx, l, h, D, 1, NULL);
        }
        if (rc == EEVP_OK)
            rc = eevp_step_result(ctx, 0, &res);
        if (rc == EEVP_OK)
            rc = eevp_step_end(ctx);
        if (rc != EEVP_OK) {
            fprintf(stderr, "prefill: %s: %s\n", eevp_strerror(rc), eevp_ctx_errmsg(ctx));
            return 1;
        }
        for (j = res.layer + 1; j < L; j++) /* layers an early exit skipped */
            layer_kv(j, pos, h);
        printf(" %2d (layer %d)", (int)res.token, (int)res.layer);
        tok = res.token;
    }
    printf("\n");
    return 0;
}

int main(void)
{
    static float W[V * D];
    static const int32_t prompt[PROMPT] = {3, 12, 7, 1, 9};
    eevp_head_options ho = EEVP_HEAD_OPTIONS_INIT;
    eevp_ctx_options co = EEVP_CTX_OPTIONS_INIT;
    eevp_head *head = NULL;
    eevp_ctx *early = NULL, *full = NULL;
    char msg[256];
    int32_t v, l, status = 1;

    for (v = 0; v < V; v++)
        W[v * D + v % D] = v < D ? 2.5f : -2.5f;
    ho.n_vocab = V;
    ho.dim = D;
    ho.weights = W;
    ho.norm = EEVP_NORM_RMS;
    ho.norm_eps = 1e-5f; /* must match the model's rms_norm_eps */
    if (eevp_head_create(&head, &ho, msg, sizeof msg) != EEVP_OK) {
        fprintf(stderr, "prefill: eevp_head_create: %s\n", msg);
        return 1;
    }
    co.n_layers = L;
    co.first_layer = 2; /* checks at layers 2..5, pruned to the 4 best at 2 */
    co.k = 4;
    if (eevp_ctx_create(&early, head, &co, msg, sizeof msg) != EEVP_OK) {
        fprintf(stderr, "prefill: eevp_ctx_create: %s\n", msg);
        goto done;
    }
    co.threshold = INFINITY; /* never exit early: full depth */
    if (eevp_ctx_create(&full, head, &co, msg, sizeof msg) != EEVP_OK) {
        fprintf(stderr, "prefill: eevp_ctx_create: %s\n", msg);
        goto done;
    }
    printf("prompt of %d tokens: positions 0..%d prefilled through %d layers with no eevp "
           "call,\nthe last prompt token decoded at position %d as generation index 0\n",
           PROMPT, PROMPT - 2, L, PROMPT - 1);
    printf("layers the never-exit context requires:");
    for (l = 0; l < L; l++)
        if (eevp_ctx_layer_required(full, l) == 1)
            printf(" %d", (int)l);
    printf("\n");
    if (decode(early, prompt, "early exit ") != 0 || decode(full, prompt, "full depth ") != 0)
        goto done;
    status = 0;
done:
    eevp_ctx_free(early);
    eevp_ctx_free(full);
    eevp_head_free(head);
    return status;
}
