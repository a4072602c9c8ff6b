/* SPDX-License-Identifier: MIT */
/*
 * tsan_shard.c - vocabulary-parallel ranks as threads.
 *
 * P = 4 threads each hold one shard of a head (uneven blocks of one shared
 * W) and a shard context (rank 1 with worker threads of its own); they
 * decode together: per layer each writes its record into a shared slot,
 * waits at a barrier, merges all the records in its own order (rotated by
 * rank) into its own buffer and absorbs it, and waits again before the
 * slots are reused.  The next token's hidden states are derived from the
 * token just emitted (a feedback loop).  Every rank must read the same
 * decisions, and they must equal an unsharded context's on the main thread
 * afterwards (tokens, exit layers; confidences of pruned decisions
 * bitwise).
 *
 * Built with -fsanitize=thread (`make check-tsan`); run with
 * OPENBLAS_NUM_THREADS=1.
 *
 * Usage: tsan_shard [tokens]   (default 120)
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eevp.h"

enum { P = 4, V = 900, D = 48, L = 6, B = 3, MAXTOK = 400 };

static float g_W[V * D], g_nw[D];
static int g_tokens = 120;
static const int32_t g_r0[P + 1] = {0, 90, 400, 410, V};
static unsigned char *g_slot[P];
static int64_t g_size[P];
static pthread_barrier_t g_bar;

typedef struct decision {
    int32_t token, layer, reason, pruned;
    float conf;
} decision;

static decision g_dec[P][MAXTOK][B];

static void options(eevp_ctx_options *o)
{
    eevp_ctx_options_init(o);
    o->n_layers = L;
    o->max_batch = B;
    o->k = 32;
    o->first_layer = 1;
    o->prune_layer = 0;
    o->threshold = 0.35f;
    o->flags = EEVP_CTX_EXACT_EXIT;
}

/* Hidden state of sequence s at layer l for token t, from the previous
 * token (the same on every rank). */
static void hidden(float *x, int32_t prev, int32_t s, int32_t l, int32_t t)
{
    int32_t c;
    uint32_t h = (uint32_t)(prev * 2654435761u) ^ (uint32_t)(s * 40503 + l * 977 + t);
    for (c = 0; c < D; c++) {
        h = h * 1103515245u + 12345u;
        x[c] = ((float)(h >> 8) / 16777216.0f - 0.5f) +
               0.35f * (float)l * g_W[(int64_t)((prev + 7 * s) % V) * D + c];
    }
}

static int run_token(eevp_ctx *c, int rank, int32_t *prev, int32_t t, unsigned char *acc,
                     decision *out)
{
    float x[B * D];
    int32_t s, l;
    int64_t cap = eevp_shard_record_capacity(c), size, next;
    if (eevp_step_begin(c, B, NULL) != EEVP_OK)
        return 1;
    for (l = 0; l < L; l++) {
        for (s = 0; s < B; s++)
            hidden(x + s * D, prev[s], s, l, t);
        if (rank < 0) { /* the unsharded reference */
            if (eevp_step_n_running(c) > 0)
                eevp_step_layer(c, l, x, D, B, NULL);
            continue;
        }
        size = 0;
        if (eevp_step_n_running(c) > 0)
            eevp_shard_layer(c, l, x, D, B, NULL, g_slot[rank], cap, &size);
        for (;;) {
            int32_t i, j;
            int same = 1;
            g_size[rank] = size;
            pthread_barrier_wait(&g_bar); /* sizes written */
            for (i = 0; i < P; i++)
                same &= g_size[i] == size;
            pthread_barrier_wait(&g_bar); /* sizes read */
            if (!same)
                return 1;
            if (size == 0)
                break;
            memcpy(acc, g_slot[rank], (size_t)size);
            for (j = 1; j < P; j++)
                if (eevp_shard_merge(acc, g_slot[(rank + j) % P], size) != EEVP_OK)
                    return 1;
            pthread_barrier_wait(&g_bar); /* slots read: absorb may write the next */
            next = 0;
            eevp_shard_absorb(c, acc, size, g_slot[rank], cap, &next);
            size = next;
        }
    }
    for (s = 0; s < B; s++) {
        eevp_result r;
        memset(&r, 0, sizeof r);
        r.struct_size = sizeof r;
        if (eevp_step_result(c, s, &r) != EEVP_OK)
            return 1;
        out[s].token = r.token;
        out[s].layer = r.layer;
        out[s].reason = r.reason;
        out[s].pruned = r.pruned;
        out[s].conf = r.confidence;
        prev[s] = r.token >= 0 ? r.token : 0;
    }
    return eevp_step_end(c) != EEVP_OK;
}

static void *rank_main(void *arg)
{
    const int rank = (int)(intptr_t)arg;
    eevp_head_options ho = EEVP_HEAD_OPTIONS_INIT;
    eevp_shard_options so = EEVP_SHARD_OPTIONS_INIT;
    eevp_ctx_options o;
    eevp_head *h = NULL;
    eevp_ctx *c = NULL;
    unsigned char *acc;
    int32_t prev[B] = {1, 2, 3}, t;
    char msg[256];
    intptr_t bad = 0;
    ho.n_vocab = g_r0[rank + 1] - g_r0[rank];
    ho.dim = D;
    ho.weights = g_W + (int64_t)g_r0[rank] * D;
    ho.vocab_offset = g_r0[rank];
    ho.norm = EEVP_NORM_RMS;
    ho.norm_weight = g_nw;
    so.shard_index = rank;
    so.n_shards = P;
    so.total_vocab = V;
    options(&o);
    o.n_threads = rank == 1 ? 2 : 0;
    if (eevp_head_create(&h, &ho, msg, sizeof msg) != EEVP_OK ||
        eevp_ctx_create_shard(&c, h, &o, &so, msg, sizeof msg) != EEVP_OK) {
        fprintf(stderr, "rank %d: %s\n", rank, msg);
        exit(1);
    }
    /* Each rank's slot, written before the first barrier. */
    g_slot[rank] = (unsigned char *)malloc((size_t)eevp_shard_record_capacity(c));
    acc = (unsigned char *)malloc((size_t)eevp_shard_record_capacity(c));
    for (t = 0; t < g_tokens && !bad; t++)
        bad = run_token(c, rank, prev, t, acc, g_dec[rank][t]);
    free(acc);
    eevp_ctx_free(c);
    eevp_head_free(h);
    return (void *)bad;
}

int main(int argc, char **argv)
{
    pthread_t th[P];
    eevp_head_options ho = EEVP_HEAD_OPTIONS_INIT;
    eevp_ctx_options o;
    eevp_head *h = NULL;
    eevp_ctx *c = NULL;
    int32_t prev[B] = {1, 2, 3}, t, s, i, early = 0, pruned = 0;
    uint32_t seed = 12345u;
    char msg[256];
    if (argc > 1)
        g_tokens = atoi(argv[1]);
    if (g_tokens < 1 || g_tokens > MAXTOK)
        g_tokens = 120;
    for (i = 0; i < V * D; i++) {
        seed = seed * 1664525u + 1013904223u;
        g_W[i] = (float)(seed >> 8) / 16777216.0f - 0.5f;
    }
    for (i = 0; i < D; i++)
        g_nw[i] = 0.8f + 0.01f * (float)i;
    ho.n_vocab = V;
    ho.dim = D;
    ho.weights = g_W;
    ho.norm = EEVP_NORM_RMS;
    ho.norm_weight = g_nw;
    options(&o);
    if (eevp_head_create(&h, &ho, msg, sizeof msg) != EEVP_OK) {
        fprintf(stderr, "%s\n", msg);
        return 1;
    }
    pthread_barrier_init(&g_bar, NULL, P);
    for (i = 0; i < P; i++)
        pthread_create(&th[i], NULL, rank_main, (void *)(intptr_t)i);
    for (i = 0; i < P; i++) {
        void *bad = NULL;
        pthread_join(th[i], &bad);
        if (bad) {
            fprintf(stderr, "tsan_shard: rank %d failed\n", (int)i);
            return 1;
        }
    }
    pthread_barrier_destroy(&g_bar);
    /* The unsharded reference, alone on this thread. */
    if (eevp_ctx_create(&c, h, &o, msg, sizeof msg) != EEVP_OK) {
        fprintf(stderr, "%s\n", msg);
        return 1;
    }
    for (t = 0; t < g_tokens; t++) {
        decision ref[B];
        if (run_token(c, -1, prev, t, NULL, ref))
            return 1;
        for (s = 0; s < B; s++) {
            for (i = 0; i < P; i++) {
                const decision *d = &g_dec[i][t][s];
                if (d->token != ref[s].token || d->layer != ref[s].layer ||
                    d->reason != ref[s].reason || d->pruned != ref[s].pruned ||
                    (d->pruned ? memcmp(&d->conf, &ref[s].conf, 4) != 0
                               : fabsf(d->conf - ref[s].conf) > 1e-6f)) {
                    fprintf(stderr, "tsan_shard: token %d seq %d rank %d: %d@%d (%g) vs %d@%d (%g)\n",
                            (int)t, (int)s, (int)i, (int)d->token, (int)d->layer,
                            (double)d->conf, (int)ref[s].token, (int)ref[s].layer,
                            (double)ref[s].conf);
                    return 1;
                }
            }
            early += ref[s].reason == EEVP_REASON_CONFIDENT;
            pruned += ref[s].pruned;
        }
    }
    eevp_ctx_free(c);
    eevp_head_free(h);
    for (i = 0; i < P; i++)
        free(g_slot[i]);
    if (early == 0 || early == g_tokens * B || pruned == 0) {
        fprintf(stderr, "tsan_shard: no mix of exits (%d early, %d pruned)\n", (int)early,
                (int)pruned);
        return 1;
    }
    printf("tsan_shard: %d ranks x %d tokens x %d sequences agree with the unsharded context "
           "(%d early exits, %d pruned decisions)\n", P, (int)g_tokens, B, (int)early,
           (int)pruned);
    return 0;
}
