/* SPDX-License-Identifier: MIT */
/*
 * custom_criterion.c - a user-defined exit criterion: a linear probe on the
 * hidden state, c = sigmoid(w . h + b), registered through the callback
 * table.  The probe needs no logits, so the context projects nothing while
 * a sequence runs: the full head is computed once, when it exits.
 *
 *   cc custom_criterion.c $(pkg-config --cflags --libs eevp) -lm -o custom_criterion
 *
 * In a real model w and b come from a logistic regression trained on
 * hidden states labelled "the token at this layer already equals the final
 * one".  Here the toy model carries its certainty in its last hidden
 * coordinate, and the probe reads that coordinate.
 */
#include <eevp.h>

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

enum { V = 32, D = 17, L = 8, TOKENS = 5 };

/* The criterion's state, owned by the context once registered. */
typedef struct probe {
    float w[D];
    float b;
    long calls;
} probe;

static int probe_decide(void *state, const eevp_exit_view *v, float *confidence,
                        int32_t *do_exit)
{
    probe *p = state;
    double z = p->b;
    int32_t c;
    (void)do_exit; /* -1 on entry: exit iff confidence > threshold */
    /* A criterion built against a newer header would check v->struct_size
     * before reading fields this library might not have. */
    if (v->struct_size < offsetof(eevp_exit_view, threshold) + sizeof v->threshold ||
        v->dim != D)
        return 1; /* an error: the sequence fails with EEVP_EUSER */
    for (c = 0; c < v->dim; c++)
        z += (double)p->w[c] * v->hidden[c];
    *confidence = (float)(1.0 / (1.0 + exp(-z)));
    p->calls++;
    return 0;
}

static void probe_destroy(void *state)
{
    probe *p = state;
    printf("probe: %ld checks, state freed by the context\n", p->calls);
    free(p);
}

/* Hidden state after layer l while the model works on token `next`: the
 * direction of W[next] grows with depth, and the last coordinate (the
 * model's "certainty", which no row of W reads) rises from -3 by `pace` per
 * layer. */
static void model_layer(int32_t l, int32_t next, float pace, float *h)
{
    int32_t c;
    for (c = 0; c < D - 1; c++)
        h[c] = 0.1f * (float)((c * 5 + l + next) % 7) - 0.3f;
    h[next % (V / 2)] += (next < V / 2 ? 0.6f : -0.6f) * (float)(l + 1);
    h[D - 1] = -3.0f + pace * (float)l;
}

int main(void)
{
    static float W[V * D];
    eevp_head_options ho = EEVP_HEAD_OPTIONS_INIT;
    eevp_ctx_options co = EEVP_CTX_OPTIONS_INIT;
    eevp_criterion_vtbl vt = {0};
    eevp_head *head = NULL;
    eevp_ctx *ctx = NULL;
    eevp_stats st = {0};
    probe *p;
    char msg[256];
    int32_t v, t, next = 3, status = 1, rc;

    for (v = 0; v < V; v++) /* token v: +e_v, or -e_(v-16) for v >= 16 */
        W[v * D + v % (V / 2)] = v < V / 2 ? 1.0f : -1.0f;
    ho.n_vocab = V;
    ho.dim = D;
    ho.weights = W;
    if (eevp_head_create(&head, &ho, msg, sizeof msg) != EEVP_OK) {
        fprintf(stderr, "custom_criterion: eevp_head_create: %s\n", msg);
        return 1;
    }
    co.n_layers = L;
    co.first_layer = 1;
    co.k = 0;            /* the probe needs no pruned set */
    co.threshold = 0.8f; /* exit when the probe says p > 0.8 */
    if (eevp_ctx_create(&ctx, head, &co, msg, sizeof msg) != EEVP_OK) {
        fprintf(stderr, "custom_criterion: eevp_ctx_create: %s\n", msg);
        goto done;
    }

    if (!(p = calloc(1, sizeof *p)))
        goto done;
    p->w[D - 1] = 1.5f; /* the "trained" probe: reads the certainty coordinate */
    p->b = 0.5f;
    vt.struct_size = sizeof vt;
    vt.name = "linear-probe";
    vt.needs = 0; /* neither logits nor the previous hidden state */
    vt.decide = probe_decide;
    vt.destroy = probe_destroy;
    if ((rc = eevp_ctx_set_criterion(ctx, &vt, p)) != EEVP_OK) {
        fprintf(stderr, "custom_criterion: %s: %s\n", eevp_strerror(rc), eevp_ctx_errmsg(ctx));
        free(p); /* on failure the caller keeps the state */
        goto done;
    }

    for (t = 0; t < TOKENS; t++) {
        const float pace = 0.5f + 0.35f * (float)t; /* later tokens are easier */
        float h[D];
        eevp_result r = {0};
        int32_t l;
        if ((rc = eevp_step_begin(ctx, 1, &t)) != EEVP_OK)
            goto fail;
        for (l = 0; l < L && eevp_step_n_running(ctx) > 0; l++) {
            model_layer(l, next, pace, h);
            if (eevp_ctx_layer_required(ctx, l) == 1 &&
                (rc = eevp_step_layer(ctx, l, h, D, 1, NULL)) != EEVP_OK)
                goto fail;
        }
        r.struct_size = sizeof r;
        if ((rc = eevp_step_result(ctx, 0, &r)) != EEVP_OK || (rc = eevp_step_end(ctx)) != EEVP_OK)
            goto fail;
        printf("token %d: %2d at layer %d (%s, probe %.3f)\n", (int)t, (int)r.token,
               (int)r.layer, r.reason == EEVP_REASON_CONFIDENT ? "early exit" : "last layer",
               (double)r.confidence);
        next = (r.token * 5 + 7) % V; /* the toy language model */
    }
    if ((rc = eevp_ctx_stats(ctx, (st.struct_size = sizeof st, &st))) != EEVP_OK)
        goto fail;
    printf("head FLOPs: %lld spent, %lld for a full projection at every check (%.0f%%)\n",
           (long long)st.head_flops, (long long)st.head_flops_baseline,
           100.0 * (double)st.head_flops / (double)st.head_flops_baseline);
    status = 0;
    goto done;
fail:
    fprintf(stderr, "custom_criterion: %s: %s\n", eevp_strerror(rc), eevp_ctx_errmsg(ctx));
done:
    eevp_ctx_free(ctx); /* destroys the probe */
    eevp_head_free(head);
    return status;
}
