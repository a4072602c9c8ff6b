/* SPDX-License-Identifier: MIT */
/*
 * tsan_decode.c - one head shared by 8 contexts on 8 threads.
 *
 * Each thread owns one context (its own configuration: criterion, K,
 * batch, flags, a custom criterion on some) and runs complete decoding
 * loops: for every token, a step over all layers until every sequence has
 * exited, where the next token's hidden states are derived from the tokens
 * just emitted (a feedback loop, as a runtime's), then the results,
 * candidates and statistics are read; between tokens it also calls the
 * kernels on the shared head.  Three of the contexts have worker threads of
 * their own (n_threads 2 and 3).  Every emitted token, exit layer and
 * confidence is folded into a digest.  The same work is then done again on
 * the main thread alone, with fresh contexts, and every digest must be
 * identical.
 *
 * Built with -fsanitize=thread (`make check-tsan`), which reports any data
 * race on the shared head; run with OPENBLAS_NUM_THREADS=1 (OpenBLAS's own
 * workers are not instrumented, and the thread count is process-global).
 *
 * Usage: tsan_decode [tokens]   (default 200 tokens per thread)
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctx.h" /* white box: the worker pool's grain */
#include "eevp.h"

/* With the grain lowered to 128 KB, the head (V x D floats, 537 KB) is
 * shared out by the contexts with worker threads, and so are thread 5's
 * pruned sets (B 6 x K 256). */
enum { NT = 8, V = 1200, D = 112, L = 8, MAXB = 6 };

static float g_W[V * D], g_nw[D], g_bias[V];
static const eevp_head *g_head;
static int g_tokens = 200;

typedef struct job {
    int id;
    uint64_t digest;
    int64_t exits_early, exits_last, errors, steps;
    int failed;
    char why[160];
} job;

static uint64_t mix(uint64_t h, uint64_t v)
{
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    return h;
}

static uint32_t rnd(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

static int custom_decide(void *state, const eevp_exit_view *v, float *conf, int32_t *ex)
{
    (void)state;
    (void)ex;
    *conf = v->n > 1 ? (float)(1.0 - exp((double)v->top2_logit - (double)v->top1_logit)) : 1.0f;
    return 0;
}

#define FAIL(j, ...)                                               \
    do {                                                           \
        if (!(j)->failed)                                          \
            snprintf((j)->why, sizeof (j)->why, __VA_ARGS__);      \
        (j)->failed = 1;                                           \
        goto out;                                                  \
    } while (0)

static void *worker(void *arg)
{
    job *j = arg;
    const int id = j->id;
    eevp_ctx_options o = EEVP_CTX_OPTIONS_INIT;
    eevp_ctx *ctx = NULL;
    const int32_t B = 1 + id % MAXB;
    static const int crits[NT] = { EEVP_CRITERION_TOP2_GAP, EEVP_CRITERION_MAX_PROB,
                                   EEVP_CRITERION_ENTROPY, EEVP_CRITERION_JS,
                                   EEVP_CRITERION_STABILITY, EEVP_CRITERION_SATURATION,
                                   EEVP_CRITERION_TOP2_GAP, EEVP_CRITERION_MAX_PROB };
    float hid[MAXB * D], z[V], lg[V], *work = NULL;
    int32_t prev[MAXB], ids[V], n_out, s, l, t, c, pos[MAXB];
    uint32_t seed = 1000u + (uint32_t)id;
    int64_t ws;
    char msg[128];
    int rc;

    o.n_layers = L;
    o.max_batch = B;
    o.criterion = crits[id];
    o.k = o.criterion == EEVP_CRITERION_SATURATION ? 0 : id == 5 ? 256 : 8 + 4 * id;
    o.n_threads = id % 3 == 2 ? 3 : id == 4 ? 2 : 0;
    o.first_layer = id % 3;
    o.interval = 1 + id % 2;
    o.threshold = o.criterion == EEVP_CRITERION_SATURATION ? 0.97f
                  : o.criterion == EEVP_CRITERION_JS     ? 0.95f
                                                         : 0.9f;
    o.schedule = id & 1 ? EEVP_SCHEDULE_CALM : EEVP_SCHEDULE_CONSTANT;
    o.max_length = 32;
    o.flags = id >= 4 ? EEVP_CTX_BATCH_INVARIANT : 0;
    if ((rc = eevp_ctx_create(&ctx, g_head, &o, msg, sizeof msg)) != EEVP_OK)
        FAIL(j, "thread %d: ctx_create %d %s", id, rc, msg);
    /* This small head's jobs are shared out too (the library's grain is
     * sized for real heads). */
    if (ctx->pool)
        ctx->pool->grain = (int64_t)128 << 10;
    if (id == 6) {
        eevp_criterion_vtbl vt;
        memset(&vt, 0, sizeof vt);
        vt.struct_size = sizeof vt;
        vt.needs = EEVP_NEEDS_LOGITS;
        vt.decide = custom_decide;
        if (eevp_ctx_set_criterion(ctx, &vt, NULL) != EEVP_OK)
            FAIL(j, "thread %d: set_criterion", id);
    }
    ws = eevp_head_workspace_size(g_head, 1);
    if (ws <= 0 || posix_memalign((void **)&work, 64, (size_t)ws) != 0)
        FAIL(j, "thread %d: workspace", id);
    for (s = 0; s < B; s++)
        prev[s] = (int32_t)(rnd(&seed) % V);

    for (t = 0; t < g_tokens; t++) {
        for (s = 0; s < B; s++)
            pos[s] = t;
        if ((rc = eevp_step_begin(ctx, B, pos)) != EEVP_OK)
            FAIL(j, "thread %d: step_begin %d", id, rc);
        for (l = 0; l < L && eevp_step_n_running(ctx) > 0; l++) {
            /* Feedback: the state drifts towards the previous token's row. */
            for (s = 0; s < B; s++)
                for (c = 0; c < D; c++)
                    hid[s * D + c] = 1.0f * (float)((int32_t)(rnd(&seed) % 2001) - 1000) / 1000.0f +
                                     (float)(l + 1) / L * 1.5f * g_W[prev[s] * D + c];
            rc = eevp_step_layer(ctx, l, hid, D, B, NULL);
            if (rc != EEVP_OK)
                FAIL(j, "thread %d: step_layer %d: %d %s", id, l, rc, eevp_ctx_errmsg(ctx));
        }
        if ((rc = eevp_step_end(ctx)) != EEVP_OK)
            FAIL(j, "thread %d: step_end %d", id, rc);
        j->steps++;
        for (s = 0; s < B; s++) {
            eevp_result r;
            uint32_t cb;
            r.struct_size = sizeof r;
            if (eevp_step_result(ctx, s, &r) != EEVP_OK)
                FAIL(j, "thread %d: result", id);
            memcpy(&cb, &r.confidence, 4);
            j->digest = mix(j->digest, (uint64_t)(uint32_t)r.token);
            j->digest = mix(j->digest, (uint64_t)(uint32_t)r.layer);
            j->digest = mix(j->digest, cb);
            j->exits_early += r.reason == EEVP_REASON_CONFIDENT;
            j->exits_last += r.reason == EEVP_REASON_LAST_LAYER;
            j->errors += r.reason == EEVP_REASON_ERROR;
            if (eevp_step_candidates(ctx, s, 16, lg, ids, &n_out) != EEVP_OK)
                FAIL(j, "thread %d: candidates", id);
            for (c = 0; c < n_out; c++) {
                uint32_t zb;
                memcpy(&zb, &lg[c], 4);
                j->digest = mix(j->digest, zb ^ (uint32_t)ids[c]);
            }
            prev[s] = r.token >= 0 ? r.token % V : 0;
        }
        /* The kernels on the shared head, in between. */
        if (eevp_head_logits(g_head, 1, hid, D, z, V, work) != EEVP_OK)
            FAIL(j, "thread %d: head_logits", id);
        {
            int32_t top[4];
            int64_t tws = eevp_topk_workspace_size(V, 4);
            void *tw = malloc((size_t)tws);
            if (!tw || eevp_topk(z, V, 4, 0, top, NULL, tw) != EEVP_OK) {
                free(tw);
                FAIL(j, "thread %d: topk", id);
            }
            for (c = 0; c < 4; c++)
                j->digest = mix(j->digest, (uint64_t)top[c]);
            free(tw);
        }
    }
    {
        eevp_stats st;
        st.struct_size = sizeof st;
        if (eevp_ctx_stats(ctx, &st) != EEVP_OK ||
            st.tokens != (int64_t)g_tokens * B)
            FAIL(j, "thread %d: stats", id);
        j->digest = mix(j->digest, (uint64_t)st.checks);
        j->digest = mix(j->digest, (uint64_t)st.head_flops);
    }
out:
    free(work);
    eevp_ctx_free(ctx);
    return NULL;
}

int main(int argc, char **argv)
{
    eevp_head_options ho = EEVP_HEAD_OPTIONS_INIT;
    eevp_head *head = NULL;
    pthread_t th[NT];
    job par[NT], ser[NT];
    uint32_t seed = 99;
    int i, bad = 0;
    int64_t early = 0, last = 0;

    if (argc > 1)
        g_tokens = atoi(argv[1]);
    if (g_tokens < 1)
        g_tokens = 1;
    for (i = 0; i < V * D; i++)
        g_W[i] = (float)((int32_t)(rnd(&seed) % 2001) - 1000) / 1000.0f;
    for (i = 0; i < D; i++)
        g_nw[i] = 0.5f + (float)(rnd(&seed) % 1000) / 1000.0f;
    for (i = 0; i < V; i++)
        g_bias[i] = i % 97 == 5 ? -INFINITY : (float)(rnd(&seed) % 100) / 100.0f;
    ho.n_vocab = V;
    ho.dim = D;
    ho.weights = g_W;
    ho.norm = EEVP_NORM_RMS;
    ho.norm_weight = g_nw;
    ho.logit_bias = g_bias;
    if (eevp_head_create(&head, &ho, NULL, 0) != EEVP_OK) {
        fprintf(stderr, "head_create failed\n");
        return 1;
    }
    g_head = head;

    memset(par, 0, sizeof par);
    memset(ser, 0, sizeof ser);
    for (i = 0; i < NT; i++) {
        par[i].id = ser[i].id = i;
        if (pthread_create(&th[i], NULL, worker, &par[i]) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 1;
        }
    }
    for (i = 0; i < NT; i++)
        pthread_join(th[i], NULL);
    for (i = 0; i < NT; i++)
        worker(&ser[i]);

    for (i = 0; i < NT; i++) {
        if (par[i].failed || ser[i].failed) {
            fprintf(stderr, "FAIL: %s%s\n", par[i].why, ser[i].why);
            bad = 1;
        } else if (par[i].digest != ser[i].digest || par[i].exits_early != ser[i].exits_early ||
                   par[i].exits_last != ser[i].exits_last) {
            fprintf(stderr, "FAIL: thread %d: results differ from the same work on one thread "
                    "(%016llx vs %016llx)\n", i, (unsigned long long)par[i].digest,
                    (unsigned long long)ser[i].digest);
            bad = 1;
        }
        early += par[i].exits_early;
        last += par[i].exits_last;
    }
    /* The loops must exercise exits of both kinds to mean anything. */
    if (!bad && (early == 0 || last == 0)) {
        fprintf(stderr, "FAIL: %lld early exits, %lld last-layer ones\n", (long long)early,
                (long long)last);
        bad = 1;
    }
    printf("%s: %d threads x %d tokens on one head: %lld early exits, %lld at the last layer, "
           "identical to one thread: %s\n", argv[0], NT, g_tokens, (long long)early,
           (long long)last, bad ? "NO" : "yes");
    eevp_head_free(head);
    return bad;
}
