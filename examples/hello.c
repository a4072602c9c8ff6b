/* SPDX-License-Identifier: MIT */
/*
 * hello.c - the smallest complete libeevp program: a head of 8 tokens in
 * 4 dimensions, one sequence, one token, a model of 3 layers.
 *
 *   cc hello.c $(pkg-config --cflags --libs eevp) -o hello && ./hello
 */
#include <eevp.h>

#include <stdio.h>

static int check(int rc, const char *what, const eevp_ctx *ctx)
{
    if (rc != EEVP_OK)
        fprintf(stderr, "hello: %s: %s (%s)\n", what, eevp_strerror(rc),
                ctx ? eevp_ctx_errmsg(ctx) : "");
    return rc != EEVP_OK;
}

int main(void)
{
    /* Token v < 4 points along +e_v, token v >= 4 along -e_(v-4). */
    static const float W[8 * 4] = {
        4, 0, 0, 0,   0, 4, 0, 0,   0, 0, 4, 0,   0, 0, 0, 4,
        -4, 0, 0, 0,  0, -4, 0, 0,  0, 0, -4, 0,  0, 0, 0, -4
    };
    /* Hidden states after layers 0, 1 and 2, drifting towards token 1. */
    static const float H[3][4] = {
        {0.1f, 0.2f, 0.0f, 0.0f}, {0.2f, 1.5f, 0.0f, 0.0f}, {0.1f, 3.0f, 0.0f, 0.0f}
    };
    eevp_head_options ho = EEVP_HEAD_OPTIONS_INIT;
    eevp_ctx_options co = EEVP_CTX_OPTIONS_INIT;
    eevp_head *head = NULL;
    eevp_ctx *ctx = NULL;
    eevp_result r = {0};
    char msg[256];
    int32_t layer;
    int status = 1;

    ho.n_vocab = 8;
    ho.dim = 4;
    ho.weights = W; /* borrowed: W outlives the head */
    if (eevp_head_create(&head, &ho, msg, sizeof msg) != EEVP_OK) {
        fprintf(stderr, "hello: eevp_head_create: %s\n", msg);
        return 1;
    }

    co.n_layers = 3; /* checks at layers 0, 1, 2 (f = 0, i = 1) */
    co.k = 4;        /* prune to the 4 best tokens at layer 0 */
    if (eevp_ctx_create(&ctx, head, &co, msg, sizeof msg) != EEVP_OK) {
        fprintf(stderr, "hello: eevp_ctx_create: %s\n", msg);
        goto done;
    }

    if (check(eevp_step_begin(ctx, 1, NULL), "eevp_step_begin", ctx))
        goto done;
    for (layer = 0; layer < 3; layer++) {
        int32_t running = eevp_step_n_running(ctx);
        if (running <= 0) { /* 0: resolved (exited early); < 0: an error */
            if (running < 0 && check(running, "eevp_step_n_running", ctx))
                goto done;
            break;
        }
        if (check(eevp_step_layer(ctx, layer, H[layer], 4, 1, NULL), "eevp_step_layer", ctx))
            goto done;
    }
    r.struct_size = (uint32_t)sizeof r;
    if (check(eevp_step_result(ctx, 0, &r), "eevp_step_result", ctx) ||
        check(eevp_step_end(ctx), "eevp_step_end", ctx))
        goto done;

    printf("libeevp %s: token %d at layer %d (%s, confidence %.3f%s)\n",
           eevp_version_string(), (int)r.token, (int)r.layer,
           r.reason == EEVP_REASON_CONFIDENT ? "early exit" : "last layer",
           (double)r.confidence, r.pruned ? ", pruned set" : "");
    status = 0;
done:
    eevp_ctx_free(ctx);
    eevp_head_free(head);
    return status;
}
