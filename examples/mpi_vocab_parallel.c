/* SPDX-License-Identifier: MIT */
/*
 * mpi_vocab_parallel.c - one early-exit decision from P vocabulary shards,
 * one per MPI rank, checked against the unsharded head.
 *
 * Every rank holds a block of consecutive rows of the LM head W (V x d) and
 * creates a head over it (vocab_offset = the block's first row) and a shard
 * context on that head (eevp_ctx_create_shard, the same eevp_ctx_options on
 * every rank).  Per token: eevp_step_begin, then for each required layer
 * eevp_shard_layer; while it reports a record (*size > 0), the ranks merge
 * their records and every rank hands the merged one to eevp_shard_absorb,
 * which may ask for a second exchange at the same layer (exact-token exits);
 * the host goes on while one is asked for.  The exchange is either
 *   allreduce: MPI_Allreduce with a user-defined commutative MPI_Op whose
 *              function calls eevp_shard_merge element by element, over an
 *              MPI_Type_contiguous(size, MPI_BYTE) type (cached per size), or
 *   allgather: MPI_Allgather of the records, then eevp_shard_merge in rank
 *              order on every rank (and, as a check, in reverse rank order:
 *              the merge must give the same bytes in any order).
 *
 * The split (the explicit rule, uneven on purpose): rank r of P holds rows
 *   [ V * T(r) / T(P), V * T(r+1) / T(P) ),  T(n) = n (n + 1) / 2,
 * rounded down, so rank r's block is about (r + 1) / T(P) of the vocabulary
 * (P = 4: 10 %, 20 %, 30 %, 40 %); every block is non-empty when V >= T(P).
 *
 * Two sources of hidden states, both the same on every rank:
 *   synth   a synthetic head: W, the norm weight and the logit bias (a few
 *           ids masked with -INFINITY) drawn from a seed, a soft-cap, and
 *           rows repeated across the blocks (exact ties, broken by id); the
 *           hidden state after each layer is noise plus a drift towards a
 *           target token that depends on the token fed back, at a pace of
 *           its own, so that tokens exit at different layers;
 *   tinylm  the small Llama-style model shipped in examples/tinylm/model
 *           (docs/TINYLM.md), replicated on every rank: every rank runs the
 *           forward pass (the tinylm runtime's own code: decode.c's runner,
 *           llama.c, ckpt.c, tok.cc) and builds its shard head from its
 *           block of the model's LM head rows, with the model's final RMS
 *           norm weight and eps.  A prompt goes through the batched prefill,
 *           then greedy decoding with the emitted token fed back; layers
 *           after an exit compute only their K/V from the exit state, as
 *           the runtime does.
 *
 * Verification, on every rank and every token: the same hidden states also
 * go through an ordinary context (eevp_ctx_create, same options) on the
 * unsharded head (all rows).  Tokens, exit layers, reasons, set sizes, pruned
 * tokens, thresholds and the candidates (eevp_step_candidates: the pruned
 * set's ids and logits for a pruned decision, the shard context's top
 * entries for a full-vocabulary one, logits bitwise) must be identical;
 * confidences equal bitwise for a pruned decision and within 1e-6 for a
 * full-vocabulary one.
 * A confidence within 1e-6 of its threshold is counted and printed, and a
 * decision that differs there is reported, not failed on.  Every rank must
 * also read the same decisions (checked through MPI after every token), and
 * every rank must agree on every record size before an exchange.  The exit
 * status is non-zero on any mismatch.
 *
 *   make examples/mpi_vocab_parallel
 *   OPENBLAS_NUM_THREADS=1 mpirun -n 3 examples/mpi_vocab_parallel [options]
 *
 * Options:
 *   --source synth|tinylm|both    (both)
 *   --allgather                   exchange by MPI_Allgather (default: allreduce)
 *   --config NAME                 one configuration (default: every one; --list)
 *   --tokens N                    tokens generated per prompt (16)
 *   --quiet                       no per-token lines
 *   --model DIR                   (examples/tinylm/model)
 *   --vocab V --dim D --layers L --seed S   the synthetic head (12007 96 10 1)
 *   --fault hidden|drop           a deliberate fault, to see the checks fail:
 *                                 the last rank hands its shard context a
 *                                 hidden state one ulp off (P >= 2), or the
 *                                 merge leaves out the last rank's record
 *                                 (--allgather, P >= 2)
 */
#include "runtime.h" /* the tinylm runtime: runner, tl_* (examples/tinylm) */

#include <eevp.h>
#include <mpi.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONF_TOL 1e-6

/* ---- small helpers -------------------------------------------------------- */

static int g_rank, g_size;

static void fatal(const char *fmt, const char *a, int code)
{
    fprintf(stderr, "mpi_vocab_parallel: rank %d: ", g_rank);
    fprintf(stderr, fmt, a);
    fprintf(stderr, "\n");
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    exit(code);
}

static void *xalloc(size_t n)
{
    void *p = calloc(n ? n : 1, 1);
    if (p == NULL)
        fatal("out of memory%s", "", 2);
    return p;
}

/* splitmix64, and a normal deviate by Box-Muller. */
static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

static double uniform(uint64_t *state)
{
    return ((double)(splitmix64(state) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static double gauss(uint64_t *state)
{
    const double u = uniform(state), v = uniform(state);
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

static uint64_t mix(uint64_t a, uint64_t b)
{
    uint64_t s = a ^ (b * UINT64_C(0xD1B54A32D192ED03));
    return splitmix64(&s);
}

static uint32_t float_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* The split rule: rank r of P holds rows [V T(r) / T(P), V T(r+1) / T(P)). */
static void block_of(int64_t V, int P, int r, int64_t *r0, int64_t *r1)
{
    const int64_t tp = (int64_t)P * (P + 1) / 2;
    *r0 = V * ((int64_t)r * (r + 1) / 2) / tp;
    *r1 = V * ((int64_t)(r + 1) * (r + 2) / 2) / tp;
}

/* Every rank must hold the same n values: checked through MPI (max of v and
 * of -v), else the ranks would no longer call the same collectives. */
static void agree(const int64_t *v, int n, const char *what)
{
    int64_t buf[16], out[16];
    int i;
    for (i = 0; i < n; i++) {
        buf[i] = v[i];
        buf[n + i] = -v[i];
    }
    MPI_Allreduce(buf, out, 2 * n, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD);
    for (i = 0; i < n; i++)
        if (out[i] != -out[n + i])
            fatal("the ranks disagree on %s: the library gave them different answers", what,
                  3);
}

/* ---- the exchange --------------------------------------------------------- */

/* The contiguous byte types, one per record size, and the merge operator. */
#define TYPE_CACHE 32
static struct {
    MPI_Datatype type;
    int size;
} g_types[TYPE_CACHE];
static int g_n_types;
static MPI_Op g_merge_op;
static int g_merge_bad; /* eevp_shard_merge said EINVAL / ERANGE */

static MPI_Datatype record_type(int size)
{
    int i;
    for (i = 0; i < g_n_types; i++)
        if (g_types[i].size == size)
            return g_types[i].type;
    if (g_n_types == TYPE_CACHE) {
        for (i = 0; i < g_n_types; i++)
            MPI_Type_free(&g_types[i].type);
        g_n_types = 0;
    }
    MPI_Type_contiguous(size, MPI_BYTE, &g_types[g_n_types].type);
    MPI_Type_commit(&g_types[g_n_types].type);
    g_types[g_n_types].size = size;
    return g_types[g_n_types++].type;
}

/* The MPI_Op's function: inout[i] = merge(inout[i], in[i]) for each of the
 * *len records; their size comes from the cached type (no MPI call here). */
static void merge_records(void *in, void *inout, int *len, MPI_Datatype *type)
{
    int i, size = -1;
    for (i = 0; i < g_n_types; i++)
        if (g_types[i].type == *type)
            size = g_types[i].size;
    if (size < 0) {
        g_merge_bad = EEVP_EINVAL;
        return;
    }
    for (i = 0; i < *len; i++) {
        const int rc = eevp_shard_merge((char *)inout + (size_t)i * (size_t)size,
                                        (const char *)in + (size_t)i * (size_t)size, size);
        if (rc != EEVP_OK && rc != EEVP_ERECORD) /* an error record is absorbed later */
            g_merge_bad = rc;
    }
}

enum { FAULT_NONE = 0, FAULT_HIDDEN, FAULT_DROP };

typedef struct exchange {
    int allgather, fault;
    int64_t capacity;
    unsigned char *rec, *merged, *all, *other;
    int64_t order_mismatches; /* allgather: rank order and reverse order differ */
} exchange;

/* Merge every rank's record `rec` of `size` bytes into ex->merged. */
static void exchange_records(exchange *ex, int64_t size)
{
    const int P = g_size;
    int r;
    if (!ex->allgather) {
        MPI_Allreduce(ex->rec, ex->merged, 1, record_type((int)size), g_merge_op,
                      MPI_COMM_WORLD);
    } else {
        const int used = ex->fault == FAULT_DROP && P > 1 ? P - 1 : P;
        MPI_Allgather(ex->rec, (int)size, MPI_BYTE, ex->all, (int)size, MPI_BYTE,
                      MPI_COMM_WORLD);
        memcpy(ex->merged, ex->all, (size_t)size);
        for (r = 1; r < used; r++)
            if (eevp_shard_merge(ex->merged, ex->all + (size_t)r * (size_t)size, size) ==
                    EEVP_EINVAL)
                g_merge_bad = EEVP_EINVAL;
        /* The merge selects and places, it never adds: any order gives the
         * same bytes.  Check it with the reverse order. */
        memcpy(ex->other, ex->all + (size_t)(used - 1) * (size_t)size, (size_t)size);
        for (r = used - 2; r >= 0; r--)
            eevp_shard_merge(ex->other, ex->all + (size_t)r * (size_t)size, size);
        if (memcmp(ex->other, ex->merged, (size_t)size) != 0)
            ex->order_mismatches++;
    }
    if (g_merge_bad)
        fatal("eevp_shard_merge: %s", eevp_strerror(g_merge_bad), 2);
}

/* ---- sources of hidden states ----------------------------------------------- */

typedef struct source {
    const char *name;
    int32_t L, d;
    int64_t V;
    const float *W;          /* V x d: every row */
    eevp_head_options ho;    /* the head's transform (weights: the whole W) */
    eevp_head *full;         /* the unsharded head */
    int n_prompts;
    /* synth */
    float *wbuf, *norm_w, *bias;
    uint64_t seed;
    /* tinylm */
    int is_tinylm;
    runner r;
    int32_t *prompt_ids[2];
    int32_t prompt_len[2];
} source;

static const char *const tinylm_prompts[2] = { "violin:", "river:" };

static void synth_open(source *s, int64_t V, int32_t d, int32_t L, uint64_t seed)
{
    uint64_t st = mix(seed, 0x5eed);
    const double wscale = 3.0 / sqrt((double)d);
    char msg[256];
    int64_t v;
    int32_t c;
    memset(s, 0, sizeof *s);
    s->name = "synth";
    s->V = V;
    s->d = d;
    s->L = L;
    s->seed = seed;
    s->n_prompts = 2;
    s->wbuf = xalloc((size_t)V * (size_t)d * sizeof(float));
    s->norm_w = xalloc((size_t)d * sizeof(float));
    s->bias = xalloc((size_t)V * sizeof(float));
    for (v = 0; v < V * d; v++)
        s->wbuf[v] = (float)(wscale * gauss(&st));
    for (c = 0; c < d; c++)
        s->norm_w[c] = (float)(1.0 + 0.1 * gauss(&st));
    for (v = 0; v < V; v++)
        s->bias[v] = v % 1009 == 7 ? -INFINITY : (float)(0.2 * gauss(&st));
    /* Exact ties across shards: every 16th row of the upper half repeats a
     * row of the lower half (bias included); the order breaks them by id. */
    for (v = V - V / 2; v < V; v += 16) {
        memcpy(s->wbuf + v * d, s->wbuf + (v - V / 2) * d, (size_t)d * sizeof(float));
        s->bias[v] = s->bias[v - V / 2];
    }
    s->W = s->wbuf;
    eevp_head_options_init(&s->ho);
    s->ho.n_vocab = V;
    s->ho.dim = d;
    s->ho.weights = s->W;
    s->ho.norm = EEVP_NORM_RMS;
    s->ho.norm_eps = 1e-5f;
    s->ho.norm_weight = s->norm_w;
    s->ho.logit_bias = s->bias;
    s->ho.softcap = 30.0f;
    if (eevp_head_create(&s->full, &s->ho, msg, sizeof msg) != EEVP_OK)
        fatal("eevp_head_create (synthetic): %s", msg, 2);
}

static void tinylm_open(source *s, const char *dir)
{
    int p;
    memset(s, 0, sizeof *s);
    s->name = "tinylm";
    s->is_tinylm = 1;
    runner_open(&s->r, dir); /* the model, its tokenizer, the whole head */
    s->V = s->r.V;
    s->d = s->r.d;
    s->L = s->r.L;
    s->W = s->r.m.lm_head;
    s->full = s->r.head;
    /* The same transform as runner_open's head. */
    eevp_head_options_init(&s->ho);
    s->ho.n_vocab = s->V;
    s->ho.dim = s->d;
    s->ho.weights = s->W;
    s->ho.norm = EEVP_NORM_RMS;
    s->ho.norm_eps = s->r.m.cfg.rms_eps;
    s->ho.norm_weight = s->r.m.final_norm;
    s->n_prompts = 2;
    for (p = 0; p < 2; p++) {
        int32_t *ids = xalloc(64 * sizeof(int32_t));
        int64_t n = tl_tok_encode(s->r.tok, tinylm_prompts[p], ids + 1, 62);
        if (n < 1 || n > 62)
            fatal("cannot encode the prompt \"%s\"", tinylm_prompts[p], 2);
        ids[0] = tl_tok_bos(s->r.tok);
        s->prompt_ids[p] = ids;
        s->prompt_len[p] = (int32_t)n + 1;
    }
}

static void source_close(source *s)
{
    if (s->is_tinylm) {
        free(s->prompt_ids[0]);
        free(s->prompt_ids[1]);
        runner_close(&s->r); /* frees the whole head too */
    } else {
        eevp_head_free(s->full);
        free(s->wbuf);
        free(s->norm_w);
        free(s->bias);
    }
}

/* Start prompt p: *token is fed at position *pos to predict the first
 * generated token (tinylm: the prompt's other tokens are prefilled). */
static void source_prompt(source *s, int p, int32_t *token, int32_t *pos)
{
    if (s->is_tinylm) {
        const int32_t n = s->prompt_len[p];
        if (n > 1 && tl_prefill(&s->r.st, s->prompt_ids[p], 0, n - 1, NULL) != 0)
            fatal("tl_prefill failed%s", "", 2);
        *token = s->prompt_ids[p][n - 1];
        *pos = n - 1;
    } else {
        *token = (int32_t)(mix(s->seed, (uint64_t)p + 100) % (uint64_t)s->V);
        *pos = 0;
    }
}

/* Synthetic: the token about to be predicted from `token` at `pos`. */
static int64_t synth_target(const source *s, int32_t token, int32_t pos, double *pace)
{
    uint64_t h = mix(mix(s->seed, (uint64_t)token), (uint64_t)pos + 7);
    int64_t t = (int64_t)(splitmix64(&h) % (uint64_t)s->V);
    if (t % 4 == 0 && s->V >= 32) /* a quarter of the targets have a twin: an exact tie */
        t = (s->V - s->V / 2) + 16 * (t / 4 % ((s->V / 2) / 16)) - s->V / 2;
    while (!(s->bias[t] > -INFINITY))
        t = (t + 1) % s->V;
    *pace = 0.02 + 0.3 * uniform(&h);
    return t;
}

/* x = the embedding of token (the state before layer 0). */
static void source_embed(source *s, int32_t token, float *x)
{
    if (s->is_tinylm)
        tl_embed(&s->r.st, token, x);
    else
        memset(x, 0, (size_t)s->d * sizeof(float));
}

/* x = the hidden state after layer l (from the state before it). */
static void source_layer(source *s, int32_t l, int32_t token, int32_t pos, float *x)
{
    if (s->is_tinylm) {
        if (tl_layer_forward(&s->r.st, l, pos, x) != 0)
            fatal("tl_layer_forward failed%s", "", 2);
    } else {
        double pace;
        const int64_t t = synth_target(s, token, pos, &pace);
        const float *w = s->W + t * s->d;
        uint64_t st = mix(mix(s->seed, (uint64_t)pos * 4099u + (uint64_t)token), (uint64_t)l);
        const double drift = pace * (double)(l + 1) * sqrt((double)s->d) / 3.0;
        int32_t c;
        for (c = 0; c < s->d; c++)
            x[c] = (float)(gauss(&st) + drift * w[c]);
    }
}

/* The token was decided at layer `exit_layer` from x_exit: the deeper
 * layers compute only their K/V from it (state propagation). */
static void source_finish(source *s, int32_t exit_layer, int32_t pos, const float *x_exit)
{
    int32_t j;
    if (!s->is_tinylm)
        return;
    for (j = exit_layer + 1; j < s->L; j++)
        if (tl_layer_kv_only(&s->r.st, j, pos, x_exit) != 0)
            fatal("tl_layer_kv_only failed%s", "", 2);
}

/* ---- configurations ----------------------------------------------------------- */

typedef struct config {
    const char *name;
    int32_t criterion, k, final_policy;
    uint32_t flags;
    float threshold;        /* synth */
    float threshold_tinylm;
    int32_t first, prune_layer; /* first checked layer (synth; tinylm: min(first, 2)) */
    int32_t patience, schedule, reprune_every, shard_topk;
} config;

#define C_GAP EEVP_CRITERION_TOP2_GAP
#define C_MAX EEVP_CRITERION_MAX_PROB
#define C_ENT EEVP_CRITERION_ENTROPY
#define C_STA EEVP_CRITERION_STABILITY
#define C_JS EEVP_CRITERION_JS
#define C_SAT EEVP_CRITERION_SATURATION
#define F_FULL EEVP_FINAL_FULL
#define F_PRUNED EEVP_FINAL_PRUNED
#define EXACT EEVP_CTX_EXACT_EXIT
#define S_CONST EEVP_SCHEDULE_CONSTANT
#define S_CALM EEVP_SCHEDULE_CALM

static const config configs[] = {
    /* name, criterion, k, final policy, flags, threshold (synth, tinylm), first checked
     * layer, pruning layer (-1: the first checked), patience, schedule, re-pruning
     * interval, shard top_k (0: max(k, 2)) */
    { "gap-k64",            C_GAP, 64, F_FULL,   0u,    0.50f, 0.20f, 2, -1, 2, S_CONST, 0, 0 },
    { "gap-k0",             C_GAP, 0,  F_FULL,   0u,    0.50f, 0.20f, 2, -1, 2, S_CONST, 0, 0 },
    { "gap-k64-pruned",     C_GAP, 64, F_PRUNED, 0u,    0.50f, 0.20f, 2, -1, 2, S_CONST, 0, 0 },
    { "gap-k64-exact",      C_GAP, 64, F_FULL,   EXACT, 0.30f, 0.10f, 2, -1, 2, S_CONST, 0, 0 },
    { "maxprob-k64",        C_MAX, 64, F_PRUNED, 0u,    0.60f, 0.40f, 2, -1, 2, S_CONST, 0, 0 },
    { "maxprob-k0-calm",    C_MAX, 0,  F_FULL,   0u,    0.60f, 0.40f, 2, -1, 2, S_CALM,  0, 0 },
    { "entropy-k0",         C_ENT, 0,  F_FULL,   0u,    0.55f, 0.55f, 2, -1, 2, S_CONST, 0, 16 },
    { "entropy-k64",        C_ENT, 64, F_FULL,   0u,    0.40f, 0.40f, 2, -1, 2, S_CONST, 0, 0 },
    { "stability-k64",      C_STA, 64, F_PRUNED, 0u,    0.50f, 0.50f, 2, -1, 2, S_CONST, 0, 0 },
    { "stability-k0",       C_STA, 0,  F_FULL,   0u,    0.50f, 0.50f, 2, -1, 3, S_CONST, 0, 0 },
    { "js-k64",             C_JS,  64, F_FULL,   0u,    0.95f, 0.99f, 2, -1, 2, S_CONST, 0, 0 },
    { "saturation-k0",      C_SAT, 0,  F_FULL,   0u,    0.60f, 0.97f, 2, -1, 2, S_CONST, 0, 0 },
    { "gap-k32-p1-reprune", C_GAP, 32, F_PRUNED, 0u,    0.50f, 0.20f, 3, 1,  2, S_CONST, 2, 0 },
};
#define N_CONFIGS ((int)(sizeof configs / sizeof configs[0]))

static const char *criterion_name(int32_t c)
{
    static const char *const n[] = { "top2-gap", "max-prob", "entropy", "saturation",
                                     "stability", "js" };
    return c >= 0 && c < 6 ? n[c] : "?";
}

static const char *reason_name(int32_t r)
{
    static const char *const n[] = { "running", "confident", "last-layer", "error" };
    return r >= 0 && r < 4 ? n[r] : "?";
}

/* ---- one configuration on one source ---------------------------------------- */

typedef struct tally {
    int64_t tokens, mismatches, near, early, layers_sum;
    double full_diff; /* largest |confidence difference| of a full-vocabulary decision */
} tally;

typedef struct cands {
    float *z;
    int32_t *ids;
    int32_t n;
} cands;

static void read_cands(eevp_ctx *ctx, int32_t cap, cands *c)
{
    if (eevp_step_candidates(ctx, 0, cap, c->z, c->ids, &c->n) != EEVP_OK)
        c->n = -1;
}

/* Compare the shard context's decision with the unsharded one's.  0: the
 * same; 1: they differ where a confidence is within 1e-6 of the threshold
 * (reported, not failed on); 2: a mismatch.  *near: a confidence lies that
 * close to its threshold. */
static int compare(const eevp_result *s, const eevp_result *u, const cands *cs,
                   const cands *cu, int exact_exit, char *why, size_t why_size, int *near,
                   double *full_diff)
{
    /* The candidates are the pruned set's for a pruned decision, except for
     * an exact-token exit: the full head's at the exit layer. */
    const int set_cands = s->pruned && !(exact_exit && s->reason == EEVP_REASON_CONFIDENT);
    int32_t j, n;
    *near = fabs((double)s->confidence - (double)s->threshold) <= CONF_TOL ||
            fabs((double)u->confidence - (double)u->threshold) <= CONF_TOL;
    why[0] = 0;
    if (s->reason == EEVP_REASON_ERROR || u->reason == EEVP_REASON_ERROR) {
        snprintf(why, why_size, "error: shard %s, unsharded %s", eevp_strerror(s->status),
                 eevp_strerror(u->status));
        return 2;
    }
    if (s->token != u->token || s->layer != u->layer || s->reason != u->reason ||
        s->pruned != u->pruned || s->set_size != u->set_size ||
        s->pruned_token != u->pruned_token) {
        snprintf(why, why_size, "unsharded: token %d layer %d %s pruned %d set %d c=%.9g",
                 (int)u->token, (int)u->layer, reason_name(u->reason), (int)u->pruned,
                 (int)u->set_size, (double)u->confidence);
        return *near ? 1 : 2;
    }
    if (float_bits(s->threshold) != float_bits(u->threshold)) {
        snprintf(why, why_size, "thresholds %.9g vs %.9g", (double)s->threshold,
                 (double)u->threshold);
        return 2;
    }
    if (!s->pruned)
        *full_diff = fabs((double)s->confidence - (double)u->confidence);
    if (s->pruned ? float_bits(s->confidence) != float_bits(u->confidence)
                  : !(fabs((double)s->confidence - (double)u->confidence) <= CONF_TOL)) {
        snprintf(why, why_size, "confidence %.9g, unsharded %.9g (%s)", (double)s->confidence,
                 (double)u->confidence, s->pruned ? "pruned: must be bitwise" : "> 1e-6");
        return 2;
    }
    if (cs->n < 1 || cu->n < 1) {
        snprintf(why, why_size, "eevp_step_candidates failed");
        return 2;
    }
    if (set_cands && (cs->n != s->set_size || cu->n != u->set_size)) {
        snprintf(why, why_size, "candidates: %d and %d for a set of %d", (int)cs->n,
                 (int)cu->n, (int)s->set_size);
        return 2;
    }
    /* A full-vocabulary decision (or an exact-token exit): the shard context
     * holds the merged top entries only (shard top_k of them); compare those.
     * Logits are bitwise equal either way: a head over rows [r0, r1) gives
     * each row the bits the whole head gives it (EEVP_CTX_BATCH_INVARIANT's
     * note in eevp.h). */
    n = cs->n < cu->n ? cs->n : cu->n;
    for (j = 0; j < n; j++) {
        if (cs->ids[j] != cu->ids[j] || float_bits(cs->z[j]) != float_bits(cu->z[j])) {
            snprintf(why, why_size, "candidate %d: id %d z=%.9g, unsharded id %d z=%.9g",
                     (int)j, (int)cs->ids[j], (double)cs->z[j], (int)cu->ids[j],
                     (double)cu->z[j]);
            return 2;
        }
    }
    return 0;
}

typedef struct run_opts {
    int32_t n_tokens;
    int quiet;
    exchange *ex;
} run_opts;

/* Statistics one rank sends to rank 0 after a configuration. */
enum { ST_R0, ST_R1, ST_TOKENS, ST_EXCH, ST_SENT, ST_RECV, ST_WBYTES, ST_WBYTES_FULL, ST_N };

static void run_config(source *src, eevp_head *shead, int64_t r0, int64_t r1,
                       const config *cf, const run_opts *ro, tally *total)
{
    const int32_t L = src->L, d = src->d;
    const int P = g_size;
    exchange *ex = ro->ex;
    eevp_ctx_options co = EEVP_CTX_OPTIONS_INIT;
    eevp_shard_options so = EEVP_SHARD_OPTIONS_INIT;
    eevp_ctx *sctx = NULL, *uctx = NULL;
    char msg[512], why[256];
    float *x = xalloc((size_t)d * sizeof(float)), *xs = xalloc((size_t)d * sizeof(float));
    float *x_exit = xalloc((size_t)d * sizeof(float));
    int32_t *gen = xalloc((size_t)ro->n_tokens * sizeof(int32_t));
    uint8_t *req_s = xalloc((size_t)L), *req_u = xalloc((size_t)L);
    const int32_t cand_cap = (int32_t)(src->V < 4096 ? src->V : 4096);
    cands cs, cu;
    tally t;
    eevp_stats sst, ust;
    double st[ST_N], *all_st = NULL;
    int64_t cap;
    int32_t l, p, i;
    int rc;

    memset(&t, 0, sizeof t);
    cs.z = xalloc((size_t)cand_cap * sizeof(float));
    cs.ids = xalloc((size_t)cand_cap * sizeof(int32_t));
    cu.z = xalloc((size_t)cand_cap * sizeof(float));
    cu.ids = xalloc((size_t)cand_cap * sizeof(int32_t));

    co.n_layers = L;
    co.max_batch = 1;
    co.k = cf->k;
    co.first_layer = src->is_tinylm && cf->first > 2 ? 2 : cf->first;
    co.prune_layer = cf->prune_layer;
    co.interval = 1;
    co.final_policy = cf->final_policy;
    co.criterion = cf->criterion;
    co.threshold = src->is_tinylm ? cf->threshold_tinylm : cf->threshold;
    co.patience = cf->patience;
    co.schedule = cf->schedule;
    co.max_length = ro->n_tokens;
    co.reprune_every = cf->reprune_every;
    co.flags = cf->flags;
    so.shard_index = g_rank;
    so.n_shards = P;
    so.total_vocab = src->V;
    so.top_k = cf->shard_topk;
    if ((rc = eevp_ctx_create_shard(&sctx, shead, &co, &so, msg, sizeof msg)) != EEVP_OK)
        fatal("eevp_ctx_create_shard: %s", msg, 2);
    if ((rc = eevp_ctx_create(&uctx, src->full, &co, msg, sizeof msg)) != EEVP_OK)
        fatal("eevp_ctx_create: %s", msg, 2);
    /* Record buffers: eevp_shard_record_capacity bytes each, P of them for
     * MPI_Allgather. */
    cap = eevp_shard_record_capacity(sctx);
    if (cap <= 0 || cap > INT32_MAX / P)
        fatal("eevp_shard_record_capacity: %s", cap <= 0 ? eevp_strerror((int)cap)
                                                        : "too large for MPI counts", 2);
    ex->capacity = cap;
    ex->rec = xalloc((size_t)cap);
    ex->merged = xalloc((size_t)cap);
    ex->other = xalloc((size_t)cap);
    ex->all = xalloc((size_t)cap * (size_t)P);
    for (l = 0; l < L; l++) {
        req_s[l] = (uint8_t)(eevp_ctx_layer_required(sctx, l) == 1);
        req_u[l] = (uint8_t)(eevp_ctx_layer_required(uctx, l) == 1);
        if (req_s[l] != req_u[l])
            fatal("eevp_ctx_layer_required differs between the shard and the unsharded "
                  "context%s", "", 1);
    }
    if (g_rank == 0)
        printf("\n== %s / %s: %s, k %d, first layer %d, pruning layer %d, threshold %g%s%s%s"
               "%s, shard top_k %d\n", src->name, cf->name, criterion_name(cf->criterion),
               (int)co.k, (int)co.first_layer,
               (int)(co.prune_layer >= 0 ? co.prune_layer : co.first_layer),
               (double)co.threshold,
               co.final_policy == EEVP_FINAL_PRUNED ? ", final pruned" : ", final full",
               co.flags & EEVP_CTX_EXACT_EXIT ? ", EEVP_CTX_EXACT_EXIT" : "",
               co.schedule == EEVP_SCHEDULE_CALM ? ", CALM schedule" : "",
               co.reprune_every ? ", re-pruning every 2nd check" : "",
               (int)(so.top_k ? so.top_k : co.k > 2 ? co.k : 2));

    for (p = 0; p < src->n_prompts; p++) {
        int32_t token, pos, n_gen = 0;
        source_prompt(src, p, &token, &pos);
        if (g_rank == 0 && !ro->quiet)
            printf("  prompt %d%s%s%s\n      t  token  layer  reason       confidence   "
                   "pruned  set  check\n", p, src->is_tinylm ? " \"" : "",
                   src->is_tinylm ? tinylm_prompts[p] : "", src->is_tinylm ? "\"" : "");
        for (i = 0; i < ro->n_tokens; i++) {
            eevp_result rs, ru;
            int s_run = 1, u_run = 1, verdict, near;
            double diff;
            int64_t v[8];
            int32_t exit_layer = L - 1;
            memset(&rs, 0, sizeof rs);
            memset(&ru, 0, sizeof ru);
            rs.struct_size = ru.struct_size = sizeof rs;
            /* The generation index i: what the CALM schedule reads. */
            if (eevp_step_begin(sctx, 1, &i) != EEVP_OK ||
                eevp_step_begin(uctx, 1, &i) != EEVP_OK)
                fatal("eevp_step_begin: %s", eevp_ctx_errmsg(sctx), 2);
            source_embed(src, token, x);
            for (l = 0; l < L && (s_run || u_run); l++) {
                source_layer(src, l, token, pos, x);
                if (s_run && req_s[l]) {
                    int64_t size = 0, next = 0;
                    memcpy(xs, x, (size_t)d * sizeof(float));
                    if (ex->fault == FAULT_HIDDEN && P > 1 && g_rank == P - 1)
                        xs[0] = nextafterf(xs[0], INFINITY);
                    rc = eevp_shard_layer(sctx, l, xs, d, 1, NULL, ex->rec, ex->capacity,
                                          &size);
                    if (rc != EEVP_OK && rc != EEVP_ENONFINITE)
                        fatal("eevp_shard_layer: %s", eevp_ctx_errmsg(sctx), 2);
                    for (;;) {
                        agree(&size, 1, "the size of a record");
                        if (size == 0)
                            break;
                        exchange_records(ex, size);
                        rc = eevp_shard_absorb(sctx, ex->merged, size, ex->rec, ex->capacity,
                                               &next);
                        if (rc != EEVP_OK && rc != EEVP_ERECORD && rc != EEVP_ENONFINITE)
                            fatal("eevp_shard_absorb: %s", eevp_ctx_errmsg(sctx), 2);
                        if (rc == EEVP_ERECORD && g_rank == 0)
                            printf("  eevp_shard_absorb (layer %d): EEVP_ERECORD: %s\n", (int)l,
                                   eevp_ctx_errmsg(sctx));
                        size = next;
                    }
                    eevp_step_result(sctx, 0, &rs);
                    if (rs.reason != EEVP_REASON_RUNNING) {
                        s_run = 0;
                        memcpy(x_exit, x, (size_t)d * sizeof(float));
                        exit_layer = l;
                    }
                }
                if (u_run && req_u[l]) {
                    rc = eevp_step_layer(uctx, l, x, d, 1, NULL);
                    if (rc != EEVP_OK && rc != EEVP_ENONFINITE)
                        fatal("eevp_step_layer: %s", eevp_ctx_errmsg(uctx), 2);
                    eevp_step_result(uctx, 0, &ru);
                    u_run = ru.reason == EEVP_REASON_RUNNING;
                }
                v[0] = s_run;
                v[1] = u_run;
                agree(v, 2, "which contexts are still running");
            }
            if (s_run || u_run)
                fatal("a context is still running after the last layer%s", "", 1);
            /* Every rank reads the same decision. */
            v[0] = rs.token;
            v[1] = rs.layer;
            v[2] = rs.reason;
            v[3] = float_bits(rs.confidence);
            v[4] = rs.pruned;
            v[5] = rs.set_size;
            v[6] = rs.pruned_token;
            v[7] = rs.status;
            agree(v, 8, "the decision of a token");
            read_cands(sctx, cand_cap, &cs);
            read_cands(uctx, cand_cap, &cu);
            diff = 0.0;
            verdict = compare(&rs, &ru, &cs, &cu, (co.flags & EEVP_CTX_EXACT_EXIT) != 0, why,
                              sizeof why, &near, &diff);
            if (diff > t.full_diff)
                t.full_diff = diff;
            if (eevp_step_end(sctx) != EEVP_OK)
                fatal("eevp_step_end: %s", eevp_ctx_errmsg(sctx), 2);
            if (eevp_step_end(uctx) != EEVP_OK)
                fatal("eevp_step_end: %s", eevp_ctx_errmsg(uctx), 2);
            t.tokens++;
            t.near += near;
            t.mismatches += verdict == 2;
            if (rs.reason == EEVP_REASON_CONFIDENT)
                t.early++;
            t.layers_sum += rs.layer + 1;
            if (g_rank == 0 && (!ro->quiet || verdict != 0 || near)) {
                char piece[64] = "";
                if (src->is_tinylm && rs.token >= 0) {
                    char *txt = tl_tok_decode(src->r.tok, &rs.token, 1);
                    snprintf(piece, sizeof piece, " %-10s", txt ? txt : "?");
                    free(txt);
                }
                printf("    %3d  %5d%s  %5d  %-11s  %.9f  %6d  %3d  %s%s%s%s\n", (int)i,
                       (int)rs.token, piece, (int)rs.layer, reason_name(rs.reason),
                       (double)rs.confidence, (int)rs.pruned, (int)rs.set_size,
                       verdict == 0 ? "ok" : verdict == 1 ? "NEAR-THRESHOLD" : "MISMATCH",
                       near && verdict == 0 ? " (confidence within 1e-6 of the threshold)"
                                            : "",
                       why[0] ? ": " : "", why);
            }
            /* The emitted token is fed back (the unsharded one if the shard
             * context failed, so that the run goes on). */
            token = rs.reason == EEVP_REASON_ERROR ? ru.token : rs.token;
            gen[n_gen++] = token;
            source_finish(src, exit_layer, pos, x_exit);
            pos++;
        }
        if (g_rank == 0 && src->is_tinylm) {
            int32_t *ids = xalloc((size_t)(src->prompt_len[p] + n_gen) * sizeof(int32_t));
            char *txt;
            memcpy(ids, src->prompt_ids[p] + 1,
                   (size_t)(src->prompt_len[p] - 1) * sizeof(int32_t));
            memcpy(ids + src->prompt_len[p] - 1, gen, (size_t)n_gen * sizeof(int32_t));
            txt = tl_tok_decode(src->r.tok, ids, src->prompt_len[p] - 1 + n_gen);
            printf("  text: %s\n", txt ? txt : "?");
            free(txt);
            free(ids);
        }
    }

    /* Statistics: every rank's exchanges and W traffic, printed by rank 0. */
    memset(&sst, 0, sizeof sst);
    memset(&ust, 0, sizeof ust);
    sst.struct_size = ust.struct_size = sizeof sst;
    eevp_ctx_stats(sctx, &sst);
    eevp_ctx_stats(uctx, &ust);
    st[ST_R0] = (double)r0;
    st[ST_R1] = (double)r1;
    st[ST_TOKENS] = (double)sst.tokens;
    st[ST_EXCH] = (double)sst.shard_exchanges;
    st[ST_SENT] = (double)sst.shard_bytes_sent;
    st[ST_RECV] = (double)sst.shard_bytes_received;
    st[ST_WBYTES] = (double)sst.head_bytes;
    st[ST_WBYTES_FULL] = (double)ust.head_bytes;
    if (ust.shard_exchanges != 0 || sst.tokens != t.tokens || ust.tokens != t.tokens) {
        printf("  rank %d: statistics: unsharded exchanges %lld, tokens %lld and %lld of "
               "%lld\n", g_rank, (long long)ust.shard_exchanges, (long long)sst.tokens,
               (long long)ust.tokens, (long long)t.tokens);
        t.mismatches++;
    }
    if (g_rank == 0)
        all_st = xalloc((size_t)P * ST_N * sizeof(double));
    MPI_Gather(st, ST_N, MPI_DOUBLE, all_st, ST_N, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    {
        int64_t mm = t.mismatches, all_mm = 0;
        MPI_Reduce(&mm, &all_mm, 1, MPI_INT64_T, MPI_SUM, 0, MPI_COMM_WORLD);
        if (g_rank == 0) {
            printf("  %lld tokens, %lld exited early, mean layers %.2f of %d; mismatches %lld "
                   "(all ranks), near-threshold %lld; full-vocabulary confidences within "
                   "%.1e of the unsharded\n", (long long)t.tokens, (long long)t.early,
                   t.tokens ? (double)t.layers_sum / (double)t.tokens : 0.0, (int)L,
                   (long long)all_mm, (long long)t.near, t.full_diff);
            {
                int64_t hist[EEVP_MAX_LAYERS];
                if (eevp_ctx_exit_histogram(sctx, hist, L) == EEVP_OK) {
                    printf("  exit layers:");
                    for (l = 0; l < L; l++)
                        if (hist[l] > 0)
                            printf(" %d:%lld", (int)l, (long long)hist[l]);
                    printf("\n");
                }
            }
            printf("  rank  rows                exchanges/token  sent B/token  received "
                   "B/token  W read KB/token (unsharded)\n");
            for (i = 0; i < P; i++) {
                const double *q = all_st + (size_t)i * ST_N;
                const double n = q[ST_TOKENS] > 0 ? q[ST_TOKENS] : 1;
                char rows[48];
                snprintf(rows, sizeof rows, "[%.0f, %.0f)", q[ST_R0], q[ST_R1]);
                printf("  %4d  %-18s  %15.2f  %12.1f  %16.1f  %8.1f (%.1f)\n", (int)i, rows,
                       q[ST_EXCH] / n, q[ST_SENT] / n, q[ST_RECV] / n, q[ST_WBYTES] / n / 1024.0,
                       q[ST_WBYTES_FULL] / n / 1024.0);
            }
        }
    }
    free(all_st);
    total->tokens += t.tokens;
    total->mismatches += t.mismatches;
    total->near += t.near;
    total->early += t.early;
    total->layers_sum += t.layers_sum;
    if (t.full_diff > total->full_diff)
        total->full_diff = t.full_diff;
    eevp_ctx_free(sctx);
    eevp_ctx_free(uctx);
    free(ex->rec);
    free(ex->merged);
    free(ex->other);
    free(ex->all);
    free(x);
    free(xs);
    free(x_exit);
    free(gen);
    free(req_s);
    free(req_u);
    free(cs.z);
    free(cs.ids);
    free(cu.z);
    free(cu.ids);
}

/* ---- main ------------------------------------------------------------------------- */

static void usage(void)
{
    int i;
    if (g_rank == 0) {
        printf("usage: mpirun -n P mpi_vocab_parallel [--source synth|tinylm|both] "
               "[--allgather] [--config NAME] [--tokens N] [--quiet] [--model DIR] "
               "[--vocab V] [--dim D] [--layers L] [--seed S] [--fault hidden|drop]\n"
               "configurations:");
        for (i = 0; i < N_CONFIGS; i++)
            printf(" %s", configs[i].name);
        printf("\n");
    }
}

int main(int argc, char **argv)
{
    const char *which = "both", *model = "examples/tinylm/model", *only = NULL;
    int64_t V = 12007;
    int32_t d = 96, L = 10;
    uint64_t seed = 1;
    run_opts ro;
    exchange ex;
    tally total;
    int i, si, n_run = 0;
    int64_t all_mm = 0;

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    memset(&ro, 0, sizeof ro);
    memset(&ex, 0, sizeof ex);
    memset(&total, 0, sizeof total);
    ro.n_tokens = 16;
    ro.ex = &ex;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--allgather") == 0)
            ex.allgather = 1;
        else if (strcmp(a, "--quiet") == 0)
            ro.quiet = 1;
        else if (strcmp(a, "--list") == 0) {
            usage();
            MPI_Finalize();
            return 0;
        } else if (v && strcmp(a, "--source") == 0 && ++i)
            which = v;
        else if (v && strcmp(a, "--config") == 0 && ++i)
            only = v;
        else if (v && strcmp(a, "--tokens") == 0 && ++i)
            ro.n_tokens = atoi(v);
        else if (v && strcmp(a, "--model") == 0 && ++i)
            model = v;
        else if (v && strcmp(a, "--vocab") == 0 && ++i)
            V = atoll(v);
        else if (v && strcmp(a, "--dim") == 0 && ++i)
            d = atoi(v);
        else if (v && strcmp(a, "--layers") == 0 && ++i)
            L = atoi(v);
        else if (v && strcmp(a, "--seed") == 0 && ++i)
            seed = strtoull(v, NULL, 10);
        else if (v && strcmp(a, "--fault") == 0 && ++i)
            ex.fault = strcmp(v, "hidden") == 0 ? FAULT_HIDDEN
                       : strcmp(v, "drop") == 0 ? FAULT_DROP : -1;
        else {
            usage();
            MPI_Finalize();
            return 2;
        }
    }
    if (ex.fault < 0 || ro.n_tokens < 1 || ro.n_tokens > 256 || L < 4 || d < 1 ||
        V < (int64_t)g_size * (g_size + 1) / 2 ||
        (strcmp(which, "synth") && strcmp(which, "tinylm") && strcmp(which, "both")) ||
        (ex.fault == FAULT_DROP && !ex.allgather)) {
        usage();
        MPI_Finalize();
        return 2;
    }
    for (i = 0; only && i < N_CONFIGS && strcmp(configs[i].name, only) != 0; i++)
        ;
    if (only && i == N_CONFIGS) {
        usage();
        MPI_Finalize();
        return 2;
    }
    MPI_Op_create(merge_records, 1 /* commutative */, &g_merge_op);
    if (g_rank == 0)
        printf("mpi_vocab_parallel: libeevp %s, %d rank(s), exchange by %s%s\n",
               eevp_version_string(), g_size, ex.allgather ? "MPI_Allgather" : "MPI_Allreduce",
               ex.fault ? (ex.fault == FAULT_HIDDEN ? ", FAULT: the last rank's hidden "
                                                      "state is one ulp off"
                                                    : ", FAULT: the last rank's record is "
                                                      "left out of the merge")
                        : "");

    for (si = 0; si < 2; si++) {
        source src;
        eevp_head *shead = NULL;
        eevp_head_options ho;
        int64_t r0, r1;
        char msg[256];
        if (si == 0 && strcmp(which, "tinylm") == 0)
            continue;
        if (si == 1 && strcmp(which, "synth") == 0)
            continue;
        if (si == 0)
            synth_open(&src, V, d, L, seed);
        else
            tinylm_open(&src, model);
        /* This rank's shard head: its block of rows, the same transform. */
        block_of(src.V, g_size, g_rank, &r0, &r1);
        ho = src.ho;
        ho.n_vocab = r1 - r0;
        ho.weights = src.W + r0 * src.d;
        ho.vocab_offset = r0;
        if (ho.logit_bias)
            ho.logit_bias += r0;
        if (eevp_head_create(&shead, &ho, msg, sizeof msg) != EEVP_OK)
            fatal("eevp_head_create (shard): %s", msg, 2);
        if (g_rank == 0)
            printf("\n%s: V %lld, d %d, %d layers; rank r holds rows [V T(r)/T(P), "
                   "V T(r+1)/T(P)), T(n) = n(n+1)/2\n", src.name, (long long)src.V,
                   (int)src.d, (int)src.L);
        for (i = 0; i < N_CONFIGS; i++) {
            if (only && strcmp(configs[i].name, only) != 0)
                continue;
            if (configs[i].criterion == EEVP_CRITERION_JS && configs[i].k >= src.V) {
                /* k >= V: no pruning, and JS over the whole vocabulary does
                 * not decompose across shards (eevp_ctx_create_shard refuses). */
                if (g_rank == 0)
                    printf("\n== %s / %s: skipped, k %d >= V\n", src.name, configs[i].name,
                           (int)configs[i].k);
                continue;
            }
            run_config(&src, shead, r0, r1, &configs[i], &ro, &total);
            n_run++;
        }
        eevp_head_free(shead);
        source_close(&src);
    }

    if (ex.order_mismatches && g_rank == 0)
        printf("eevp_shard_merge gave other bytes in reverse rank order %lld time(s)\n",
               (long long)ex.order_mismatches);
    total.mismatches += ex.order_mismatches;
    MPI_Allreduce(&total.mismatches, &all_mm, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    if (g_rank == 0)
        printf("\nmpi_vocab_parallel: %d rank(s), %s: %d run(s), %lld tokens per rank, "
               "%lld exited early; %lld mismatch(es) over all ranks, %lld near-threshold: "
               "%s\n", g_size, ex.allgather ? "allgather" : "allreduce", n_run,
               (long long)total.tokens, (long long)total.early, (long long)all_mm,
               (long long)total.near, all_mm ? "FAILED" : "the shards decide as the whole head");
    for (i = 0; i < g_n_types; i++)
        MPI_Type_free(&g_types[i].type);
    MPI_Op_free(&g_merge_op);
    MPI_Finalize();
    return all_mm ? 1 : 0;
}
