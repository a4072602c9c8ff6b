/* SPDX-License-Identifier: MIT */
/*
 * demo.c - a decoding loop with early exit, once on the full vocabulary at
 * every check (K = 0) and once with dynamic vocabulary pruning (K = 256),
 * over a synthetic LM head and synthetic hidden states.
 *
 *   usage: demo [V [d]]        defaults: V = 32000, d = 4096
 *
 * The "model" has L = 32 layers; exits are checked at every layer from 4 on
 * (the pruning layer is 4 as well), with the default criterion: top-1 minus
 * top-2 probability > 0.9.  W (V x d, about 524 MB at the default size) is
 * filled with a fast PRNG.  Each generated token has a target row; its hidden
 * state after layer l is
 *
 *     h_l = n + 0.3 * e_l + beta(l) * u,    u = W[target] / rms(W[target]),
 *
 * with n a per-token Gaussian vector, e_l fresh Gaussian noise per layer,
 * and beta(l) chosen so that the target's logit rises above the noise
 * logits by g(l) = g0 + slope * l / L: confidence grows with depth, at a
 * different pace per token.  One token (the last) is a late decider: at the
 * default size its target is not yet among the top 256 at the pruning
 * layer, which shows what the pruned set can and cannot do.
 *
 * Between layers the demo sweeps a 64 MB buffer, a stand-in for the memory
 * traffic of the transformer layer a real host would run there: it evicts
 * the gathered rows from the caches, so the pruned checks are timed cold,
 * as they would run in a model.  Only eevp_step_layer is timed.
 *
 * A real host would, after a sequence exits at layer l, still run the
 * layers above l for that position with the exit hidden state copied up
 * (state propagation), so that their key/value caches have an entry; here
 * there are no caches, and the loop just moves on to the next token.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <eevp.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum {
    N_LAYERS = 32,
    FIRST_CHECK = 4,
    N_TOKENS = 8,
    K_PRUNED = 256,
    MAX_CHECKS = N_TOKENS * N_LAYERS
};

#define LAYER_NOISE 0.3       /* weight of the fresh per-layer noise e_l */
#define EVICT_BYTES ((size_t)64 << 20)

/* How one token's target emerges: g(l) = g0 + slope * l / L (logit units,
 * the noise logits having standard deviation about 1). */
typedef struct token_plan {
    int32_t target;
    double g0, slope;
} token_plan;

static const double plan_lifts[N_TOKENS][2] = {
    {3.0, 30.0}, {3.0, 22.0}, {3.0, 16.0}, {2.5, 12.0},
    {4.0, 26.0}, {3.0, 19.0}, {3.0, 10.0}, {-2.0, 22.0}
};

/* What one run (one value of K) produced. */
typedef struct run_out {
    int32_t token[N_TOKENS], layer[N_TOKENS], pruned[N_TOKENS], reason[N_TOKENS];
    float conf[N_TOKENS];
    double ms[MAX_CHECKS]; /* eevp_step_layer time of every required layer */
    int n_ms;
    int64_t ctx_bytes;
    eevp_stats st;
} run_out;

/* ---- a small deterministic PRNG (splitmix64) ---- */

static uint64_t next_u64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in (0, 1]. */
static double next_unit(uint64_t *s)
{
    return ((double)(next_u64(s) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
}

static double next_gauss(uint64_t *s)
{
    double u1 = next_unit(s), u2 = next_unit(s);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* W entries uniform in [-a, a) with a = sqrt(3/d): variance 1/d, so that
 * a row dotted with a unit-RMS vector has standard deviation about 1. */
static void fill_weights(float *w, size_t count, int64_t d)
{
    uint64_t s = 12345;
    float a = (float)sqrt(3.0 / (double)d);
    float scale = 2.0f * a / 16777216.0f;
    size_t i;
    for (i = 0; i + 1 < count; i += 2) {
        uint64_t x = next_u64(&s);
        w[i] = (float)((x >> 40) & 0xFFFFFF) * scale - a;
        w[i + 1] = (float)((x >> 8) & 0xFFFFFF) * scale - a;
    }
    if (i < count)
        w[i] = (float)((next_u64(&s) >> 40) & 0xFFFFFF) * scale - a;
}

/* The synthetic hidden state of token j after layer l, in h (d floats).
 * Deterministic in (j, l), so both runs see exactly the same states. */
static void make_hidden(float *h, int64_t d, const float *base, const float *w_target,
                        const token_plan *p, int j, int l)
{
    uint64_t s = 0xC0FFEEull * (uint64_t)(j + 1) + 7919ull * (uint64_t)(l + 1);
    double g = p->g0 + p->slope * (double)l / (double)N_LAYERS;
    double gmax = 0.9 * sqrt((double)d);
    double beta, wrms = 0.0;
    int64_t c;

    if (g < 0.0)
        g = 0.0;
    if (g > gmax)
        g = gmax;
    /* After the RMS norm the target's logit is lifted by about
     * beta * sqrt(d) / sqrt(1 + LAYER_NOISE^2 + beta^2); solve that for g. */
    beta = g * sqrt(1.0 + LAYER_NOISE * LAYER_NOISE) / sqrt((double)d - g * g);
    for (c = 0; c < d; c++)
        wrms += (double)w_target[c] * w_target[c];
    wrms = sqrt(wrms / (double)d);
    for (c = 0; c < d; c++)
        h[c] = (float)(base[c] + LAYER_NOISE * next_gauss(&s) + beta * w_target[c] / wrms);
}

/* Read a large buffer, one load per cache line: the stand-in for a
 * transformer layer's memory traffic. */
static volatile float evict_sink;

static void evict_caches(const float *buf, size_t n_floats)
{
    float acc = 0.0f;
    size_t i;
    for (i = 0; i < n_floats; i += 16)
        acc += buf[i];
    evict_sink = acc;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(const double *v, int n)
{
    double *tmp, m;
    if (n <= 0)
        return 0.0;
    tmp = malloc((size_t)n * sizeof *tmp);
    if (!tmp)
        return 0.0;
    memcpy(tmp, v, (size_t)n * sizeof *tmp);
    qsort(tmp, (size_t)n, sizeof *tmp, cmp_double);
    m = (n % 2) ? tmp[n / 2] : 0.5 * (tmp[n / 2 - 1] + tmp[n / 2]);
    free(tmp);
    return m;
}

static double mean(const double *v, int n)
{
    double s = 0.0;
    int i;
    for (i = 0; i < n; i++)
        s += v[i];
    return n > 0 ? s / n : 0.0;
}

/* Report a failed library call on a context and return 1. */
static int fail(const eevp_ctx *ctx, const char *what, int rc)
{
    fprintf(stderr, "demo: %s: %s (%d): %s\n", what, eevp_strerror(rc), rc,
            eevp_ctx_errmsg(ctx));
    return 1;
}

/* Decode N_TOKENS tokens for one sequence with pruned-set size k. */
static int run(const eevp_head *head, int32_t k, const float *w, const float *base,
               const token_plan *plan, float *hidden, const float *evict_buf,
               run_out *out)
{
    int64_t d = eevp_head_dim(head);
    eevp_ctx_options o;
    eevp_ctx *ctx = NULL;
    char msg[256];
    int rc, j, l, status = 1;

    memset(out, 0, sizeof *out);
    if ((rc = eevp_ctx_options_init(&o)) != EEVP_OK) {
        fprintf(stderr, "demo: eevp_ctx_options_init: %s\n", eevp_strerror(rc));
        return 1;
    }
    o.n_layers = N_LAYERS;
    o.max_batch = 1;
    o.k = k;
    o.first_layer = FIRST_CHECK;
    o.interval = 1;
    /* prune_layer -1 (the default): prune at the first checked layer. */
    if ((rc = eevp_ctx_create(&ctx, head, &o, msg, sizeof msg)) != EEVP_OK) {
        fprintf(stderr, "demo: eevp_ctx_create: %s (%d): %s\n", eevp_strerror(rc), rc, msg);
        return 1;
    }
    out->ctx_bytes = eevp_ctx_memory(ctx);
    if (out->ctx_bytes < 0) {
        fail(ctx, "eevp_ctx_memory", (int)out->ctx_bytes);
        goto done;
    }

    for (j = 0; j < N_TOKENS; j++) {
        int32_t position = j;
        int32_t running = 1;
        eevp_result r;

        if ((rc = eevp_step_begin(ctx, 1, &position)) != EEVP_OK) {
            fail(ctx, "eevp_step_begin", rc);
            goto done;
        }
        for (l = 0; l < N_LAYERS && running > 0; l++) {
            double t0, t1;
            int req;

            evict_caches(evict_buf, EVICT_BYTES / sizeof(float)); /* "layer l" */
            req = eevp_ctx_layer_required(ctx, l);
            if (req < 0) {
                fail(ctx, "eevp_ctx_layer_required", req);
                goto done;
            }
            if (!req)
                continue;
            make_hidden(hidden, d, base + (size_t)j * (size_t)d,
                        w + (size_t)plan[j].target * (size_t)d, &plan[j], j, l);
            t0 = now_ms();
            rc = eevp_step_layer(ctx, l, hidden, d, 1, NULL);
            t1 = now_ms();
            if (rc != EEVP_OK) {
                fail(ctx, "eevp_step_layer", rc);
                goto done;
            }
            if (out->n_ms < MAX_CHECKS)
                out->ms[out->n_ms++] = t1 - t0;
            running = eevp_step_n_running(ctx);
            if (running < 0) {
                fail(ctx, "eevp_step_n_running", running);
                goto done;
            }
        }

        memset(&r, 0, sizeof r);
        r.struct_size = (uint32_t)sizeof r;
        if ((rc = eevp_step_result(ctx, 0, &r)) != EEVP_OK) {
            fail(ctx, "eevp_step_result", rc);
            goto done;
        }
        if ((rc = eevp_step_end(ctx)) != EEVP_OK) {
            fail(ctx, "eevp_step_end", rc);
            goto done;
        }
        out->token[j] = r.token;
        out->layer[j] = r.layer;
        out->pruned[j] = r.pruned;
        out->reason[j] = r.reason;
        out->conf[j] = r.confidence;
    }

    out->st.struct_size = (uint32_t)sizeof out->st;
    if ((rc = eevp_ctx_stats(ctx, &out->st)) != EEVP_OK) {
        fail(ctx, "eevp_ctx_stats", rc);
        goto done;
    }
    status = 0;
done:
    eevp_ctx_free(ctx);
    return status;
}

static int parse_size(const char *s, long lo, long hi, long *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end != '\0' || v < lo || v > hi)
        return 0;
    *out = v;
    return 1;
}

static const char *reason_name(int32_t reason)
{
    switch (reason) {
    case EEVP_REASON_CONFIDENT: return "exit";
    case EEVP_REASON_LAST_LAYER: return "last";
    case EEVP_REASON_ERROR: return "error";
    default: return "running";
    }
}

static void print_run(const char *mode, int32_t k, const run_out *r)
{
    double exit_sum = 0.0;
    int j;
    for (j = 0; j < N_TOKENS; j++)
        exit_sum += r->layer[j];
    printf("%-7s %5d %7lld %9.3f %9.3f %11.3f / %7.3f (%5.1f%%) %8.1f %8.2f\n", mode, (int)k,
           (long long)r->st.checks, mean(r->ms, r->n_ms), median(r->ms, r->n_ms),
           (double)r->st.head_flops * 1e-9, (double)r->st.head_flops_baseline * 1e-9,
           r->st.head_flops_baseline
               ? 100.0 * (double)r->st.head_flops / (double)r->st.head_flops_baseline
               : 0.0,
           exit_sum / N_TOKENS, (double)r->ctx_bytes / 1048576.0);
}

int main(int argc, char **argv)
{
    long V = 32000, d = 4096;
    int32_t k;
    eevp_head_options ho;
    eevp_head *head = NULL;
    float *w = NULL, *base = NULL, *hidden = NULL, *evict_buf = NULL;
    token_plan plan[N_TOKENS];
    static run_out full, pruned;
    char msg[256];
    double t0, med_full, med_pruned;
    uint64_t s = 2024;
    int rc, j, agree = 0, status = 1;
    size_t c;

    if (argc > 3 || (argc > 1 && !parse_size(argv[1], 16, 4000000, &V)) ||
        (argc > 2 && !parse_size(argv[2], 16, 65536, &d))) {
        fprintf(stderr, "usage: %s [V [d]]   (16 <= V <= 4000000, 16 <= d <= 65536;"
                        " defaults 32000 4096)\n", argv[0]);
        return 2;
    }
    k = K_PRUNED < V ? K_PRUNED : (int32_t)(V / 4);

    printf("libeevp %s demo: V = %ld, d = %ld, L = %d layers, checks at layers %d..%d,"
           " %d tokens, batch 1\n", eevp_version_string(), V, d, N_LAYERS, FIRST_CHECK,
           N_LAYERS - 1, N_TOKENS);

    w = malloc((size_t)V * (size_t)d * sizeof *w);
    base = malloc((size_t)N_TOKENS * (size_t)d * sizeof *base);
    hidden = malloc((size_t)d * sizeof *hidden);
    evict_buf = malloc(EVICT_BYTES);
    if (!w || !base || !hidden || !evict_buf) {
        fprintf(stderr, "demo: out of memory (W needs %.1f MB)\n",
                (double)V * (double)d * 4.0 / 1e6);
        goto done;
    }
    t0 = now_ms();
    fill_weights(w, (size_t)V * (size_t)d, d);
    printf("W: %.1f MB, filled in %.2f s; RMS norm; borrowed by the head (no copy)\n",
           (double)V * (double)d * 4.0 / 1e6, (now_ms() - t0) * 1e-3);
    for (c = 0; c < (size_t)N_TOKENS * (size_t)d; c++)
        base[c] = (float)next_gauss(&s);
    for (c = 0; c < EVICT_BYTES / sizeof(float); c++)
        evict_buf[c] = (float)(c & 7);
    for (j = 0; j < N_TOKENS; j++) {
        plan[j].target = (int32_t)(next_u64(&s) % (uint64_t)V);
        plan[j].g0 = plan_lifts[j][0];
        plan[j].slope = plan_lifts[j][1];
    }

    if ((rc = eevp_head_options_init(&ho)) != EEVP_OK) {
        fprintf(stderr, "demo: eevp_head_options_init: %s\n", eevp_strerror(rc));
        goto done;
    }
    ho.n_vocab = V;
    ho.dim = d;
    ho.weights = w;
    ho.norm = EEVP_NORM_RMS;
    ho.norm_eps = 1e-5f;
    if ((rc = eevp_head_create(&head, &ho, msg, sizeof msg)) != EEVP_OK) {
        fprintf(stderr, "demo: eevp_head_create: %s (%d): %s\n", eevp_strerror(rc), rc, msg);
        goto done;
    }
    printf("criterion: top-1 minus top-2 probability > 0.90; last layer: full head;"
           " OPENBLAS_NUM_THREADS=%s\n\n",
           getenv("OPENBLAS_NUM_THREADS") ? getenv("OPENBLAS_NUM_THREADS") : "(unset)");

    if (run(head, 0, w, base, plan, hidden, evict_buf, &full) ||
        run(head, k, w, base, plan, hidden, evict_buf, &pruned))
        goto done;

    printf("                          ms per check    head GFLOP            mean exit    ctx\n");
    printf("mode        K  checks      mean    median    spent / baseline       layer    MiB\n");
    print_run("full", 0, &full);
    print_run("pruned", k, &pruned);
    printf("The pruned run's mean includes its full projections (at the pruning layer, and at"
           " the last\nlayer for tokens that reach it); its median is the cost of a pruned"
           " check.\n");

    printf("\n               | full run                     | pruned run (K = %d)\n", (int)k);
    printf("token   target | end    layer    token   conf | end    layer    token   conf\n");
    for (j = 0; j < N_TOKENS; j++) {
        agree += full.token[j] == pruned.token[j];
        printf("%5d %8d | %-6s %5d %8d  %5.3f | %-6s %5d %8d  %5.3f%s%s\n", j,
               (int)plan[j].target, reason_name(full.reason[j]), (int)full.layer[j],
               (int)full.token[j], (double)full.conf[j], reason_name(pruned.reason[j]),
               (int)pruned.layer[j], (int)pruned.token[j], (double)pruned.conf[j],
               pruned.pruned[j] ? "  on S" : "",
               full.token[j] == pruned.token[j] ? "" : "  DIFFERENT");
    }
    med_full = median(full.ms, full.n_ms);
    med_pruned = median(pruned.ms, pruned.n_ms);
    printf("\ntokens agree between the runs: %d of %d\n", agree, N_TOKENS);
    printf("K-coverage (pruned run, tokens decided by the full head at the last layer):"
           " %lld of %lld\n", (long long)pruned.st.k_coverage_hits,
           (long long)pruned.st.k_coverage_total);
    printf("per-check cost, full / pruned (median over checks): %.1fx"
           " (analytic, one check: V/K = %.1fx)\n",
           med_pruned > 0.0 ? med_full / med_pruned : 0.0, (double)V / (double)k);
    status = 0;
done:
    eevp_head_free(head);
    free(evict_buf);
    free(hidden);
    free(base);
    free(w);
    return status;
}
