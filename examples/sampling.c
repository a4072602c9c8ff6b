/* SPDX-License-Identifier: MIT */
/*
 * sampling.c - host-side sampling: instead of taking result.token (the
 * argmax), the host draws each token from the resolved sequence's
 * candidates with a temperature and top-p (nucleus) filtering.  A batch of
 * 3 sequences decodes 6 tokens each through a toy model of 8 layers.
 *
 *   cc sampling.c $(pkg-config --cflags --libs eevp) -lm -o sampling && ./sampling
 *
 * The candidates of a sequence are the K tokens of its pruned set when it
 * was decided on that set (an early exit here), and the whole vocabulary
 * when it was decided on the full head (here: at the last layer), so the
 * sampler draws from the distribution renormalised over what it is given.
 * The random numbers come from a seeded splitmix64: the output is the same
 * on every run.  The program checks the sampler on every token (the draw is
 * a candidate, the distributions sum to 1, a tiny temperature or top-p
 * gives back the greedy token) and exits 1 when a check fails.
 *
 * The "model": token v of the 32-token vocabulary has the row
 * 3 e_(v%8) + 2 e_(8+v/8) in W; a sequence's hidden state after layer l
 * points towards its next token more sharply with depth, at a pace of its
 * own, plus noise.  The slowest sequence reaches the last layer undecided.
 */
#include <eevp.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

enum { V = 32, D = 12, L = 8, BATCH = 3, TOKENS = 6, K = 6 };

static const double TEMPERATURE = 0.8, TOP_P = 0.9;

/* splitmix64: a small, seedable generator, good enough for sampling. */
static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

/* Uniform in [0, 1), from the top 53 bits. */
static double uniform(uint64_t *state)
{
    return (double)(splitmix64(state) >> 11) * (1.0 / 9007199254740992.0);
}

/* Layer l of the toy model for one sequence about to emit `next`. */
static void model_layer(int32_t l, int32_t next, float pace, uint64_t *noise, float *h)
{
    int32_t c;
    for (c = 0; c < D; c++)
        h[c] = (float)(0.8 * uniform(noise) - 0.4);
    h[next % 8] += 3.0f * pace * (float)(l + 1);
    h[8 + next / 8] += 2.0f * pace * (float)(l + 1);
}

typedef struct cand {
    double p;
    int32_t id;
} cand;

/* Probability descending, then id ascending: the library's order. */
static int by_prob(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    if (x->p > y->p)
        return -1;
    if (x->p < y->p)
        return 1;
    return (x->id > y->id) - (x->id < y->id);
}

static int sums_to_one(const cand *c, int32_t n, const char *what)
{
    double sum = 0.0;
    int32_t i;
    for (i = 0; i < n; i++)
        sum += c[i].p;
    if (!(fabs(sum - 1.0) <= 1e-5)) { /* NaN fails too */
        fprintf(stderr, "sampling: check failed: %s sums to %.9f\n", what, sum);
        return 0;
    }
    return 1;
}

/* Draw one of n candidates (logits and global ids) with a temperature and
 * top-p; work holds n entries.  Writes the token and the nucleus size.
 * Returns 0, or 1 when a check fails. */
static int sample(const float *logits, const int32_t *ids, int32_t n, double temperature,
                  double top_p, uint64_t *rng, cand *work, int32_t *token, int32_t *nucleus)
{
    double zmax = -HUGE_VAL, sum = 0.0, mass = 0.0, u, acc = 0.0;
    int32_t i, m = 0;

    for (i = 0; i < n; i++)
        if ((double)logits[i] > zmax)
            zmax = (double)logits[i];
    if (!isfinite(zmax)) {
        fprintf(stderr, "sampling: check failed: no candidate with a finite logit\n");
        return 1;
    }
    /* Softmax of z / T.  Subtracting the largest logit first keeps every
     * exp() in (0, 1], however small T is; a masked (-inf) logit gives 0. */
    for (i = 0; i < n; i++) {
        work[i].p = exp(((double)logits[i] - zmax) / temperature);
        work[i].id = ids[i];
        sum += work[i].p;
    }
    for (i = 0; i < n; i++)
        work[i].p /= sum;
    if (!sums_to_one(work, n, "softmax"))
        return 1;
    /* The library hands the candidates over sorted already; a host that
     * edits logits first (penalties, bans) has to sort, so sort anyway. */
    qsort(work, (size_t)n, sizeof *work, by_prob);
    /* The nucleus: the smallest prefix holding at least top_p of the mass
     * (never empty), renormalised. */
    do
        mass += work[m++].p;
    while (m < n && mass < top_p);
    for (i = 0; i < m; i++)
        work[i].p /= mass;
    if (!sums_to_one(work, m, "nucleus"))
        return 1;
    u = uniform(rng);
    for (i = 0; i < m - 1; i++) { /* the last one takes rounding's leftover */
        acc += work[i].p;
        if (u < acc)
            break;
    }
    *token = work[i].id;
    *nucleus = m;
    return 0;
}

static int die(const eevp_ctx *ctx, const char *what, int rc)
{
    fprintf(stderr, "sampling: %s: %s: %s\n", what, eevp_strerror(rc), eevp_ctx_errmsg(ctx));
    return 1;
}

/* The sampler's checks on one resolved sequence; 0 when they pass. */
static int check_token(const eevp_result *res, const float *logits, const int32_t *ids,
                       int32_t n, int32_t sampled, int32_t nucleus, uint64_t *rng, cand *work)
{
    int32_t i, tok, m;
    if (n != (res->pruned ? K : V) || ids[0] != res->token) {
        fprintf(stderr, "sampling: check failed: %d candidates led by %d for token %d\n",
                (int)n, (int)ids[0], (int)res->token);
        return 1;
    }
    for (i = 0; i < n && ids[i] != sampled; i++)
        ;
    if (i == n || nucleus < 1 || nucleus > n) {
        fprintf(stderr, "sampling: check failed: token %d, nucleus %d of %d candidates\n",
                (int)sampled, (int)nucleus, (int)n);
        return 1;
    }
    /* Temperature -> 0, and top-p -> 0, both leave the greedy token. */
    if (sample(logits, ids, n, 1e-4, TOP_P, rng, work, &tok, &m) != 0)
        return 1;
    if (tok != res->token) {
        fprintf(stderr, "sampling: check failed: temperature 1e-4 drew %d, greedy %d\n",
                (int)tok, (int)res->token);
        return 1;
    }
    if (sample(logits, ids, n, TEMPERATURE, 1e-6, rng, work, &tok, &m) != 0)
        return 1;
    if (tok != res->token || m != 1) {
        fprintf(stderr, "sampling: check failed: top-p 1e-6 drew %d (nucleus %d), greedy %d\n",
                (int)tok, (int)m, (int)res->token);
        return 1;
    }
    return 0;
}

int main(void)
{
    static float W[V * D], x[BATCH * D], logits[V];
    static int32_t ids[V];
    static cand work[V];
    eevp_head_options ho = EEVP_HEAD_OPTIONS_INIT;
    eevp_ctx_options co = EEVP_CTX_OPTIONS_INIT;
    eevp_head *head = NULL;
    eevp_ctx *ctx = NULL;
    char msg[256];
    int32_t prev[BATCH] = {4, 17, 26}, pos[BATCH] = {0, 0, 0};
    const float pace[BATCH] = {0.35f, 0.2f, 0.06f};
    uint64_t rng = 2024, noise = 7; /* the sampler's and the model's streams */
    int32_t v, t, differ = 0, nucleus_sum = 0, status = 1;

    for (v = 0; v < V; v++) {
        W[v * D + v % 8] = 1.5f;
        W[v * D + 8 + v / 8] = 1.0f;
    }
    ho.n_vocab = V;
    ho.dim = D;
    ho.weights = W; /* borrowed */
    ho.norm = EEVP_NORM_RMS;
    ho.norm_eps = 1e-5f;
    if (eevp_head_create(&head, &ho, msg, sizeof msg) != EEVP_OK) {
        fprintf(stderr, "sampling: eevp_head_create: %s\n", msg);
        return 1;
    }
    co.n_layers = L;
    co.max_batch = BATCH;
    co.first_layer = 2; /* checks at layers 2..7 */
    co.prune_layer = 1; /* pruned at layer 1: the checks see K tokens */
    co.k = K;
    co.threshold = 0.5f;
    if (eevp_ctx_create(&ctx, head, &co, msg, sizeof msg) != EEVP_OK) {
        fprintf(stderr, "sampling: eevp_ctx_create: %s\n", msg);
        goto done;
    }

    printf("temperature %.1f, top-p %.2f\n", TEMPERATURE, TOP_P);
    printf("token seq  layer             greedy sampled  nucleus/candidates\n");
    for (t = 0; t < TOKENS; t++) {
        int32_t resolved[BATCH] = {0}, l, s, rc, running = BATCH;
        if ((rc = eevp_step_begin(ctx, BATCH, pos)) != EEVP_OK) {
            die(ctx, "eevp_step_begin", rc);
            goto done;
        }
        for (l = 0; l < L && running > 0; l++) {
            int req;
            for (s = 0; s < BATCH; s++) /* one row per sequence, in place */
                if (!resolved[s])
                    model_layer(l, (prev[s] * 7 + 3 + s) % V, pace[s], &noise, x + s * D);
            if ((req = eevp_ctx_layer_required(ctx, l)) < 0) {
                die(ctx, "eevp_ctx_layer_required", req);
                goto done;
            }
            if (req == 0)
                continue;
            if ((rc = eevp_step_layer(ctx, l, x, D, BATCH, NULL)) != EEVP_OK) {
                die(ctx, "eevp_step_layer", rc);
                goto done;
            }
            for (s = 0; s < BATCH; s++) {
                eevp_result res = {0};
                int32_t n, sampled, nucleus;
                if (resolved[s])
                    continue;
                res.struct_size = sizeof res;
                if ((rc = eevp_step_result(ctx, s, &res)) != EEVP_OK) {
                    die(ctx, "eevp_step_result", rc);
                    goto done;
                }
                if (res.reason == EEVP_REASON_RUNNING)
                    continue;
                resolved[s] = 1;
                running--;
                if ((rc = eevp_step_candidates(ctx, s, V, logits, ids, &n)) != EEVP_OK) {
                    die(ctx, "eevp_step_candidates", rc);
                    goto done;
                }
                if (sample(logits, ids, n, TEMPERATURE, TOP_P, &rng, work, &sampled,
                           &nucleus) != 0 ||
                    check_token(&res, logits, ids, n, sampled, nucleus, &rng, work) != 0)
                    goto done;
                printf("%5d %3d  %d (%-10s)  %7d %7d  %7d/%d\n", (int)t, (int)s,
                       (int)res.layer,
                       res.reason == EEVP_REASON_CONFIDENT ? "early exit" : "last layer",
                       (int)res.token, (int)sampled, (int)nucleus, (int)n);
                differ += sampled != res.token;
                nucleus_sum += nucleus;
                prev[s] = sampled;
            }
        }
        if ((rc = eevp_step_end(ctx)) != EEVP_OK) {
            die(ctx, "eevp_step_end", rc);
            goto done;
        }
        for (s = 0; s < BATCH; s++)
            pos[s]++;
    }
    printf("%d tokens: %d sampled other than the argmax, mean nucleus %.2f; checks passed\n",
           TOKENS * BATCH, (int)differ, (double)nucleus_sum / (TOKENS * BATCH));
    status = 0;
done:
    eevp_ctx_free(ctx);
    eevp_head_free(head);
    return status;
}
