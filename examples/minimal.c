/* SPDX-License-Identifier: MIT */
/*
 * minimal.c - the smallest complete decoding loop: a batch of 2 sequences,
 * 4 tokens each, through a toy model of 6 layers.  The host compacts its
 * batch: between layers it keeps only the rows of the sequences still
 * running, and hands those rows over in increasing sequence order.
 *
 *   cc minimal.c $(pkg-config --cflags --libs eevp) -o minimal && ./minimal
 *
 * The "model": token v of the 16-token vocabulary has the row 2.5 e_(v%8)
 * (negated for v >= 8) in W; a sequence's hidden state after layer l points
 * towards its next token more and more sharply with depth, at a speed of
 * its own, so the two sequences exit at different layers.
 */
#include <eevp.h>

#include <stdio.h>
#include <string.h>

enum { V = 16, D = 8, L = 6, BATCH = 2, TOKENS = 4 };

/* Layer l of the toy model for one sequence about to emit `next`. */
static void model_layer(int32_t l, int32_t next, float speed, float *h)
{
    int32_t c;
    for (c = 0; c < D; c++)
        h[c] = 0.3f * (float)((c * 7 + l * 3 + next) % 5) - 0.6f; /* "noise" */
    h[next % D] += (next < D ? 1.0f : -1.0f) * speed * (float)(l + 1);
}

static int die(const eevp_ctx *ctx, const char *what, int rc)
{
    fprintf(stderr, "minimal: %s: %s: %s\n", what, eevp_strerror(rc), eevp_ctx_errmsg(ctx));
    return 1;
}

int main(void)
{
    static float W[V * D];
    eevp_head_options ho = EEVP_HEAD_OPTIONS_INIT;
    eevp_ctx_options co = EEVP_CTX_OPTIONS_INIT;
    eevp_head *head = NULL;
    eevp_ctx *ctx = NULL;
    char msg[256];
    int32_t prev[BATCH] = {3, 12}, pos[BATCH] = {0, 0};
    const float speed[BATCH] = {0.4f, 0.2f};
    int32_t v, t, status = 1;

    for (v = 0; v < V; v++)
        W[v * D + v % D] = v < D ? 2.5f : -2.5f;
    ho.n_vocab = V;
    ho.dim = D;
    ho.weights = W; /* borrowed */
    ho.norm = EEVP_NORM_RMS;
    if (eevp_head_create(&head, &ho, msg, sizeof msg) != EEVP_OK) {
        fprintf(stderr, "minimal: eevp_head_create: %s\n", msg);
        return 1;
    }
    co.n_layers = L;
    co.max_batch = BATCH;
    co.first_layer = 1; /* checks at layers 1..5 */
    co.k = 4;           /* pruned at layer 1 to the 4 best tokens */
    if (eevp_ctx_create(&ctx, head, &co, msg, sizeof msg) != EEVP_OK) {
        fprintf(stderr, "minimal: eevp_ctx_create: %s\n", msg);
        goto done;
    }

    for (t = 0; t < TOKENS; t++) {
        float x[BATCH * D];           /* the host's batch: running rows only */
        int32_t active[BATCH], n_active = BATCH, l, s, rc;
        for (s = 0; s < BATCH; s++)
            active[s] = s;
        if ((rc = eevp_step_begin(ctx, BATCH, pos)) != EEVP_OK) {
            die(ctx, "eevp_step_begin", rc);
            goto done;
        }
        for (l = 0; l < L && n_active > 0; l++) {
            int32_t r, kept = 0;
            for (r = 0; r < n_active; r++) /* the model runs on running rows */
                model_layer(l, (prev[active[r]] * 5 + 3) % V, speed[active[r]], x + r * D);
            if (eevp_ctx_layer_required(ctx, l) != 1)
                continue;
            if ((rc = eevp_step_layer(ctx, l, x, D, n_active, NULL)) != EEVP_OK) {
                die(ctx, "eevp_step_layer", rc);
                goto done;
            }
            /* Compact: keep the rows of the sequences still running. */
            for (r = 0; r < n_active; r++) {
                eevp_result res = {0};
                res.struct_size = sizeof res;
                if ((rc = eevp_step_result(ctx, active[r], &res)) != EEVP_OK) {
                    die(ctx, "eevp_step_result", rc);
                    goto done;
                }
                if (res.reason == EEVP_REASON_RUNNING) {
                    if (kept != r)
                        memmove(x + kept * D, x + r * D, sizeof(float) * D);
                    active[kept++] = active[r];
                } else {
                    /* A real host would now fill the K/V caches of layers
                     * l+1 .. L-1 for this sequence from its exit state. */
                    printf("token %d, sequence %d: %2d at layer %d (%s, confidence %.3f)\n",
                           (int)t, (int)active[r], (int)res.token, (int)res.layer,
                           res.reason == EEVP_REASON_CONFIDENT ? "early exit" : "last layer",
                           (double)res.confidence);
                    prev[active[r]] = res.token;
                }
            }
            n_active = kept;
        }
        if ((rc = eevp_step_end(ctx)) != EEVP_OK) {
            die(ctx, "eevp_step_end", rc);
            goto done;
        }
        for (s = 0; s < BATCH; s++)
            pos[s]++;
    }
    status = 0;
done:
    eevp_ctx_free(ctx);
    eevp_head_free(head);
    return status;
}
