/* SPDX-License-Identifier: MIT */
/*
 * fuzz_api.c - the input is a program of API calls on one small head and
 * one context: steps begun, layers handed over in any order (repeated,
 * skipped, out of range), rows given whole, compacted, through a row map or
 * malformed, hidden states with NaN, Inf, denormals and 1e30, results and
 * candidates read at any time, abandons, resets, statistics, and custom
 * criteria that misbehave (NaN confidence, exit flag out of range, errors,
 * calls back into the context).
 *
 * Invariants checked after every call: the status is a known code; a
 * resolved sequence has a token inside the head, a layer inside the model
 * and a status that matches its reason; candidate lists are in the order;
 * statistics add up; re-entry from a callback is EEVP_EBUSY; nothing leaks
 * (a counting allocator under both objects) and the hidden buffers are
 * exactly as long as the call may read (ASan catches a read past them).
 *
 * Layout: head bytes, context bytes, then one opcode byte per call followed
 * by its arguments.  Missing bytes read as zero.
 */
#include "fuzz_common.h"

/* -DFUZZ_DEBUG prints the decoded program (to turn a crash into a test). */
#ifdef FUZZ_DEBUG
#define TRACE(...) fprintf(stderr, __VA_ARGS__)
#else
#define TRACE(...) ((void)0)
#endif

enum { MAXV = 64, MAXD = 16, MAXL = 8, MAXB = 8 };

typedef struct crit_state {
    eevp_ctx *ctx;
    int mode;
    int calls;
    int *destroyed;
} crit_state;

static void check_busy(eevp_ctx *ctx)
{
    eevp_result r;
    float z[4], lambda;
    int32_t ids[4], n_out = -1;
    eevp_stats st;
    eevp_criterion_vtbl vt;

    memset(&vt, 0, sizeof vt);
    FUZZ_CHECK(eevp_step_begin(ctx, 1, NULL) == EEVP_EBUSY);
    FUZZ_CHECK(eevp_step_layer(ctx, 0, z, 1, 1, NULL) == EEVP_EBUSY);
    FUZZ_CHECK(eevp_step_end(ctx) == EEVP_EBUSY);
    FUZZ_CHECK(eevp_step_abandon(ctx) == EEVP_EBUSY);
    FUZZ_CHECK(eevp_ctx_reset(ctx) == EEVP_EBUSY);
    FUZZ_CHECK(eevp_ctx_stats_reset(ctx) == EEVP_EBUSY);
    FUZZ_CHECK(eevp_ctx_set_criterion(ctx, &vt, NULL) == EEVP_EBUSY);
    FUZZ_CHECK(eevp_step_candidates(ctx, 0, 4, z, ids, &n_out) == EEVP_EBUSY);
    FUZZ_CHECK(n_out == 0);
    FUZZ_CHECK(eevp_step_n_running(ctx) == EEVP_EBUSY);
    r.struct_size = sizeof r;
    FUZZ_CHECK(fz_known_status(eevp_step_result(ctx, 0, &r)));
    st.struct_size = sizeof st;
    FUZZ_CHECK(fz_known_status(eevp_ctx_stats(ctx, &st)));
    FUZZ_CHECK(fz_known_status(eevp_ctx_threshold(ctx, 0, &lambda)));
}

static int crit_decide(void *state, const eevp_exit_view *v, float *confidence,
                       int32_t *exit_)
{
    crit_state *cs = (crit_state *)state;
    int mode = cs->mode == 9 ? cs->calls % 9 : cs->mode;

    cs->calls++;
    FUZZ_CHECK(v != NULL && v->struct_size >= sizeof(eevp_exit_view));
    FUZZ_CHECK(*exit_ == -1);
    FUZZ_CHECK(v->n >= 0 && (v->n == 0 || (v->logits && v->ids)));
    FUZZ_CHECK(v->hidden != NULL);
    if (v->n > 0) {
        /* The view's arrays are readable in full (ASan checks the reads). */
        volatile float acc = 0.0f;
        int32_t j;
        for (j = 0; j < v->n; j++)
            acc += v->logits[j] + (float)v->ids[j];
        (void)acc;
    }
    switch (mode) {
    case 1: *confidence = NAN; return 0;
    case 2: *confidence = 0.5f; *exit_ = 5; return 0;
    case 3: *confidence = 0.5f; *exit_ = -7; return 0;
    case 4: return 1;
    case 5: check_busy(cs->ctx); *confidence = 0.25f; return 0;
    case 6: *confidence = INFINITY; return 0;
    case 7: *confidence = 0.0f; *exit_ = 1; return 0;
    case 8: *confidence = 1e30f; *exit_ = 0; return 0;
    default:
        *confidence = v->n > 1 ? (v->top1_logit - v->top2_logit) / 8.0f : 0.5f;
        if (!(*confidence >= 0.0f) || *confidence > 1.0f)
            *confidence = 1.0f;
        return 0;
    }
}

static void crit_reset(void *state, int32_t seq)
{
    crit_state *cs = (crit_state *)state;
    FUZZ_CHECK(seq >= 0 && seq < MAXB);
    if (cs->mode == 5)
        check_busy(cs->ctx);
}

static void crit_destroy(void *state)
{
    crit_state *cs = (crit_state *)state;
    (*cs->destroyed)++;
    free(cs);
}

static int32_t clamp_id(int64_t id)
{
    return id > INT32_MAX ? INT32_MAX : (int32_t)id;
}

/* Candidates of a resolved sequence, in the order, ids inside the head. */
static void check_candidates(eevp_ctx *ctx, int32_t seq, int32_t cap, int64_t off, int64_t V)
{
    float *z = malloc(sizeof(float) * (size_t)(cap > 0 ? cap : 1));
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(cap > 0 ? cap : 1));
    int32_t n_out = -1, j;
    int rc;

    FUZZ_CHECK(z && ids);
    rc = eevp_step_candidates(ctx, seq, cap, z, ids, &n_out);
    FUZZ_CHECK(fz_known_status(rc));
    if (rc != EEVP_OK) {
        FUZZ_CHECK(n_out == 0);
    } else {
        FUZZ_CHECK(n_out >= 0 && n_out <= cap && n_out <= V);
        for (j = 0; j < n_out; j++) {
            FUZZ_CHECK(ids[j] >= off && ids[j] < off + V);
            FUZZ_CHECK(!isnan(z[j]) && z[j] != INFINITY);
            if (j > 0)
                FUZZ_CHECK(z[j - 1] > z[j] || (z[j - 1] == z[j] && ids[j - 1] < ids[j]));
        }
    }
    free(z);
    free(ids);
}

static void check_result(const eevp_ctx *ctx, int32_t seq, int64_t off, int64_t V, int32_t L)
{
    eevp_result r;
    int rc;
    memset(&r, 0xa5, sizeof r);
    r.struct_size = sizeof r;
    rc = eevp_step_result(ctx, seq, &r);
    FUZZ_CHECK(fz_known_status(rc));
    if (rc != EEVP_OK)
        return;
    switch (r.reason) {
    case EEVP_REASON_RUNNING:
        FUZZ_CHECK(r.token == -1 && r.layer == -1 && r.status == EEVP_OK);
        break;
    case EEVP_REASON_CONFIDENT:
    case EEVP_REASON_LAST_LAYER:
        FUZZ_CHECK(r.status == EEVP_OK);
        FUZZ_CHECK(r.token >= off && r.token < off + V);
        FUZZ_CHECK(r.layer >= 0 && r.layer < L);
        FUZZ_CHECK(r.reason != EEVP_REASON_LAST_LAYER || r.layer == L - 1);
        FUZZ_CHECK(r.pruned == 0 || r.pruned == 1);
        FUZZ_CHECK(!isnan(r.confidence));
        break;
    case EEVP_REASON_ERROR:
        FUZZ_CHECK(r.status == EEVP_ENONFINITE || r.status == EEVP_EUSER ||
                   r.status == EEVP_ECALLBACK);
        FUZZ_CHECK(r.layer >= -1 && r.layer < L);
        break;
    default:
        FUZZ_CHECK(!"unknown reason");
    }
}

static void check_stats(const eevp_ctx *ctx, int32_t L)
{
    eevp_stats st;
    int64_t hist[MAXL + 2], sum = 0;
    int32_t l;
    st.struct_size = sizeof st;
    FUZZ_CHECK(eevp_ctx_stats(ctx, &st) == EEVP_OK);
    FUZZ_CHECK(st.n_layers == L);
    FUZZ_CHECK(st.tokens == st.exited_early + st.reached_last + st.failed);
    FUZZ_CHECK(st.tokens >= 0 && st.checks >= 0 && st.pruned_decisions >= 0);
    FUZZ_CHECK(st.k_coverage_hits >= 0 && st.k_coverage_hits <= st.k_coverage_total);
    FUZZ_CHECK(st.head_flops >= 0 && st.head_bytes >= 0);
    FUZZ_CHECK(eevp_ctx_exit_histogram(ctx, hist, MAXL + 2) == EEVP_OK);
    for (l = 0; l < L; l++) {
        FUZZ_CHECK(hist[l] >= 0);
        sum += hist[l];
    }
#ifdef FUZZ_DEBUG
    fprintf(stderr, "stats: tokens %lld early %lld last %lld failed %lld hist sum %lld\n",
            (long long)st.tokens, (long long)st.exited_early, (long long)st.reached_last,
            (long long)st.failed, (long long)sum);
#endif
    /* Failed sequences have no exit layer: the histogram counts the others. */
    FUZZ_CHECK(sum == st.exited_early + st.reached_last);
    {
        /* Every set built has a size below V + the lists: the histogram holds them all. */
        int64_t sizes[MAXV + 16], n_sets = 0, total = 0;
        FUZZ_CHECK(eevp_ctx_set_size_histogram(ctx, sizes, MAXV + 16) == EEVP_OK);
        for (l = 0; l < MAXV + 16; l++) {
            FUZZ_CHECK(sizes[l] >= 0);
            n_sets += sizes[l];
            total += sizes[l] * l;
        }
        FUZZ_CHECK(n_sets == st.pruned_sets && total == st.set_size_sum);
    }
}

/* Fill rows with values chosen by the input: plain, one hostile value,
 * huge, all equal, all zero. */
static void fill_hidden(fz *f, float *h, int32_t n_rows, int64_t ld, int32_t d, uint32_t *seed)
{
    uint8_t mode = fz_u8(f);
    int32_t r, c;
    for (r = 0; r < n_rows; r++)
        for (c = 0; c < d; c++) {
            float *x = &h[(int64_t)r * ld + c];
            *seed = *seed * 1664525u + 1013904223u;
            switch (mode & 7) {
            case 1: *x = 1e30f * ((float)(*seed >> 9) / 8388608.0f - 1.0f); break;
            case 2: *x = 0.75f; break;
            case 3: *x = 0.0f; break;
            case 4: *x = 1e-41f; break;
            default: *x = 4.0f * ((float)(*seed >> 9) / 8388608.0f - 1.0f);
            }
        }
    if ((mode & 8) && n_rows > 0) {
        /* one read per statement: the order of reads inside one expression
         * is unspecified, and gcc and clang would decode an input apart */
        r = fz_range(f, 0, n_rows - 1);
        c = fz_range(f, 0, d - 1);
        h[(int64_t)r * ld + c] = fz_float(f);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz f = { data, size, 0 };
    fz_alloc ha = { 0, 0, 0, (size_t)1 << 24 }, ca = { 0, 0, 0, (size_t)1 << 24 };
    eevp_allocator hal = { fz_alloc_fn, fz_free_fn, &ha }, cal = { fz_alloc_fn, fz_free_fn, &ca };
    eevp_head_options ho;
    eevp_ctx_options co;
    eevp_head *head = NULL;
    eevp_ctx *ctx = NULL;
    float W[MAXV * (MAXD + 3)], nw[MAXD], nb[MAXD], bias[MAXV];
    uint16_t Wh[MAXV * (MAXD + 3)];
    int32_t always[4], statics[5], pos[MAXB];
    int64_t V, d, stride, off;
    int32_t L, B, i, n_seq = 0, ops = 0;
    int step = 0; /* 0 none, 1 in progress, 2 ended */
    int destroyed = 0, registered = 0;
    uint32_t seed;
    char msg[64];
    int rc;

    /* ---- head ---- */
    eevp_head_options_init(&ho);
    V = fz_range(&f, 1, MAXV);
    d = fz_range(&f, 1, MAXD);
    stride = d + fz_range(&f, 0, 3);
    seed = fz_u32(&f) | 1u;
    for (i = 0; i < V * stride; i++) {
        seed = seed * 1664525u + 1013904223u;
        W[i] = ((float)(seed >> 9) / 8388608.0f - 1.0f);
    }
    {
        uint8_t b = fz_u8(&f);
        ho.flags = b & 3u;
        ho.norm = (b >> 2) % 3;
        if (b & 0x20) {
            for (i = 0; i < d; i++) {
                nw[i] = fz_plain(&f);
                nb[i] = fz_plain(&f);
            }
            ho.norm_weight = nw;
            ho.norm_bias = ho.norm == EEVP_NORM_LAYER ? nb : NULL;
        }
        if (b & 0x40) {
            for (i = 0; i < V; i++)
                bias[i] = (fz_u8(&f) & 3) == 0 ? -INFINITY : fz_plain(&f);
            ho.logit_bias = bias;
        }
        if (b & 0x80) /* all logits equal: every row the same */
            for (i = 0; i < V * stride; i++)
                W[i] = W[i % stride];
    }
    {
        uint8_t b = fz_u8(&f);
        static const float scales[4] = { 0.0f, 1.0f, 0.01f, 30.0f };
        static const float caps[4] = { 0.0f, 0.0f, 5.0f, 30.0f };
        ho.logit_scale = scales[b & 3];
        ho.softcap = caps[(b >> 2) & 3];
        off = (b >> 4) & 1 ? 1000 : (b >> 5) & 1 ? (int64_t)INT32_MAX - V + 1 : 0;
        /* Half-precision storage (W rounded to halves) and int8 screening. */
        ho.weight_type = ((b >> 6) & 3) % 3;
        ho.screen_mult = (b >> 6) == 3 ? 2 : 0;
        if (ho.weight_type != EEVP_WEIGHT_F32) {
            for (i = 0; i < V * stride; i++) {
                float x = W[i];
                uint32_t bits;
                memcpy(&bits, &x, 4);
                if (ho.weight_type == EEVP_WEIGHT_BF16) {
                    Wh[i] = (uint16_t)(bits >> 16);
                } else { /* |x| <= 1: a normal half, or zero */
                    int32_t e = (int32_t)((bits >> 23) & 0xff) - 127 + 15;
                    Wh[i] = (uint16_t)(((bits >> 16) & 0x8000u) |
                                       (e > 0 ? ((uint32_t)e << 10) | ((bits >> 13) & 0x3ffu) : 0));
                }
            }
        }
    }
    ho.n_vocab = V;
    ho.dim = d;
    ho.row_stride = stride;
    ho.weights = ho.weight_type == EEVP_WEIGHT_F32 ? W : NULL;
    ho.weights_half = ho.weight_type == EEVP_WEIGHT_F32 ? NULL : Wh;
    ho.vocab_offset = off;
    ho.norm_eps = 1e-6f;
    ho.allocator = &hal;
    TRACE("head V %lld d %lld stride %lld flags %u norm %d nw %d bias %d scale %g cap %g "
          "offset %lld wtype %d screen %d\n", (long long)V, (long long)d, (long long)stride,
          ho.flags, ho.norm, ho.norm_weight != NULL, ho.logit_bias != NULL,
          (double)ho.logit_scale, (double)ho.softcap, (long long)off, ho.weight_type,
          ho.screen_mult);
    rc = eevp_head_create(&head, &ho, msg, sizeof msg);
    FUZZ_CHECK(fz_known_status(rc));
    if (rc != EEVP_OK) {
        FUZZ_CHECK(head == NULL && ha.live == 0);
        return 0;
    }
    if (ho.flags & EEVP_HEAD_COPY) { /* the copy must not read the caller's arrays again */
        memset(W, 0xff, sizeof W);
        memset(Wh, 0xff, sizeof Wh);
    }

    /* ---- context ---- */
    eevp_ctx_options_init(&co);
    L = fz_range(&f, 1, MAXL);
    B = fz_range(&f, 1, MAXB);
    co.n_layers = L;
    co.max_batch = B;
    co.k = fz_range(&f, 0, (int32_t)V + 2);
    co.first_layer = fz_range(&f, 0, L - 1);
    co.interval = fz_range(&f, 1, 3);
    co.prune_layer = fz_range(&f, -1, co.first_layer);
    co.criterion = fz_u8(&f) % 6;
    co.final_policy = fz_u8(&f) & 1;
    {
        static const float th[8] = { 0.9f, 0.5f, 0.0f, 1.0f, -1.0f, 2.0f, 0.999f, 0.1f };
        uint8_t b = fz_u8(&f);
        co.threshold = th[b & 7];
        co.schedule = (b >> 3) & 1;
        co.schedule_tau = (float)((b >> 4) & 7);
    }
    co.max_length = fz_range(&f, 1, 200);
    co.patience = fz_range(&f, 1, 3);
    co.allocator = &cal;
    {
        uint8_t b = fz_u8(&f);
        static const float mass[4] = { 0.0f, 0.5f, 0.9f, 1.0f };
        co.flags = b & 3u;
#ifdef FUZZ_CTX_FLAGS_MASK /* to fuzz past a known bug in one flag's path */
        co.flags &= FUZZ_CTX_FLAGS_MASK;
#endif
        co.n_always = (b >> 2) & 3;
        co.static_mode = ((b >> 4) & 3) % 3;
        co.adaptive_mass = mass[(b >> 6) & 3];
        for (i = 0; i < co.n_always; i++)
            always[i] = clamp_id(off + fz_range(&f, -2, (int32_t)V + 1));
        co.always_ids = co.n_always ? always : NULL;
        co.n_static = fz_range(&f, 0, 4);
        for (i = 0; i < co.n_static; i++)
            statics[i] = clamp_id(off + fz_range(&f, -2, (int32_t)V + 1));
        co.static_ids = co.n_static ? statics : NULL;
        co.reprune_layer = fz_range(&f, -1, L);
        co.reprune_every = fz_range(&f, 0, 2);
        co.k_min = fz_range(&f, 1, co.k > 0 ? co.k : 1);
    }
    TRACE("ctx L %d B %d k %d f %d i %d p %d crit %d final %d lambda %g sched %d tau %g N %d "
          "patience %d flags %u always %d static %d/%d reprune %d/%d mass %g k_min %d\n", L, B,
          co.k, co.first_layer, co.interval, co.prune_layer, co.criterion, co.final_policy,
          (double)co.threshold, co.schedule, (double)co.schedule_tau, co.max_length, co.patience,
          co.flags, co.n_always, co.static_mode, co.n_static, co.reprune_layer, co.reprune_every,
          (double)co.adaptive_mass, co.k_min);
    for (i = 0; i < co.n_always; i++)
        TRACE("  always %d\n", always[i]);
    for (i = 0; i < co.n_static; i++)
        TRACE("  static %d\n", statics[i]);
    rc = eevp_ctx_create(&ctx, head, &co, msg, sizeof msg);
    FUZZ_CHECK(fz_known_status(rc));
    if (rc != EEVP_OK) {
        FUZZ_CHECK(ctx == NULL && ca.live == 0);
        eevp_head_free(head);
        FUZZ_CHECK(ha.live == 0);
        return 0;
    }
    {
        int64_t est = -1;
        FUZZ_CHECK(eevp_ctx_memory_estimate(&est, head, &co) == EEVP_OK);
        FUZZ_CHECK(est == eevp_ctx_memory(ctx));
    }

    /* ---- the program ---- */
    while (fz_left(&f) && ops++ < 200) {
        uint8_t op = fz_u8(&f) % 13;
        int64_t calls_before = ca.calls + ha.calls;
        TRACE("op %d\n", op);
        switch (op) {
        case 0: { /* step_begin */
            int32_t n = fz_range(&f, 0, B + 1);
            int with_pos = fz_u8(&f) & 1;
            for (i = 0; i < MAXB; i++)
                pos[i] = fz_range(&f, -1, 100);
            rc = eevp_step_begin(ctx, n, with_pos ? pos : NULL);
            TRACE("  step_begin(%d, %s) = %d\n", n, with_pos ? "pos" : "NULL", rc);
            FUZZ_CHECK(fz_known_status(rc));
            if (step == 1)
                FUZZ_CHECK(rc == EEVP_ESTATE);
            if (n < 1 || n > B)
                FUZZ_CHECK(rc != EEVP_OK);
            if (rc == EEVP_OK) {
                step = 1;
                n_seq = n;
            }
            break;
        }
        case 1:
        case 2:
        case 3: { /* step_layer */
            int32_t layer = fz_range(&f, -1, L);
            uint8_t how = fz_u8(&f);
            int32_t running = eevp_step_n_running(ctx);
            int32_t n_rows, map[MAXB + 1], *mp = NULL;
            int64_t ld = d + (how >> 6);
            float *h;
            size_t nf;

            FUZZ_CHECK(running >= 0 && running <= B);
            switch (how & 3) {
            case 0: n_rows = n_seq > 0 ? n_seq : 1; break;
            case 1: n_rows = running > 0 ? running : 1; break;
            case 2: { /* a row map over the running sequences, rotated */
                eevp_result r;
                int32_t s, k = 0, rot = fz_u8(&f);
                n_rows = 0;
                for (s = 0; s < n_seq && step == 1; s++) {
                    r.struct_size = sizeof r;
                    if (eevp_step_result(ctx, s, &r) == EEVP_OK &&
                        r.reason == EEVP_REASON_RUNNING)
                        map[n_rows++] = s;
                }
                if (n_rows > 1)
                    for (s = 0; s < rot % n_rows; s++) {
                        int32_t t = map[0];
                        for (k = 0; k + 1 < n_rows; k++)
                            map[k] = map[k + 1];
                        map[n_rows - 1] = t;
                    }
                if (n_rows == 0)
                    n_rows = 1, map[0] = 0;
                mp = map;
                break;
            }
            default: /* anything */
                n_rows = fz_range(&f, 0, B + 1);
                for (i = 0; i < n_rows; i++)
                    map[i] = fz_range(&f, -1, B);
                mp = (how & 4) ? map : NULL;
            }
            if (how & 0x20)
                ld = fz_range(&f, 0, (int32_t)d + 1);
            /* Exactly what n_rows rows of ld may need. */
            nf = n_rows > 0 && ld >= d ? (size_t)((n_rows - 1) * ld + d) : 1;
            h = malloc(nf * sizeof(float));
            FUZZ_CHECK(h != NULL);
            for (i = 0; i < (int32_t)nf; i++)
                h[i] = NAN; /* padding and unwritten rows */
            if (n_rows > 0 && ld >= d)
                fill_hidden(&f, h, n_rows, ld, (int32_t)d, &seed);
            rc = eevp_step_layer(ctx, layer, (how & 0x10) && !(how & 3) ? NULL : h, ld, n_rows,
                                 mp);
            TRACE("  step_layer(%d, ld %lld, n_rows %d, map %s) = %d\n", layer, (long long)ld,
                  n_rows, mp ? "yes" : "NULL", rc);
            for (i = 0; i < n_rows && ld >= d; i++) {
                int32_t c;
                TRACE("    row %d (seq %d):", i, mp ? mp[i] : i);
                for (c = 0; c < d; c++)
                    TRACE(" %a", (double)h[(int64_t)i * ld + c]);
                TRACE("\n");
            }
            FUZZ_CHECK(fz_known_status(rc));
            FUZZ_CHECK(rc != EEVP_EBUSY);
            if (step != 1)
                FUZZ_CHECK(rc == EEVP_ESTATE || rc == EEVP_EINVAL || rc == EEVP_ERANGE);
            free(h);
            if (step == 1)
                for (i = 0; i < n_seq; i++)
                    check_result(ctx, i, off, V, L);
            break;
        }
        case 4: { /* run the rest of the step with plain rows */
            int32_t l;
            if (step != 1)
                break;
            for (l = 0; l < L && eevp_step_n_running(ctx) > 0; l++) {
                float *h = malloc(sizeof(float) * (size_t)(n_seq * d));
                FUZZ_CHECK(h != NULL);
                fill_hidden(&f, h, n_seq, d, (int32_t)d, &seed);
                rc = eevp_step_layer(ctx, l, h, d, n_seq, NULL);
                TRACE("  step_layer(%d, all %d rows) = %d\n", l, n_seq, rc);
                FUZZ_CHECK(fz_known_status(rc));
                free(h);
            }
            break;
        }
        case 5: /* step_end */
            rc = eevp_step_end(ctx);
            FUZZ_CHECK(fz_known_status(rc));
            if (rc == EEVP_OK) {
                FUZZ_CHECK(step == 1);
                step = 2;
                FUZZ_CHECK(eevp_step_n_running(ctx) == 0);
            } else if (step == 1) {
                FUZZ_CHECK(eevp_step_n_running(ctx) > 0);
            }
            break;
        case 6: /* abandon */
            FUZZ_CHECK(eevp_step_abandon(ctx) == EEVP_OK);
            if (step == 1)
                step = 0;
            break;
        case 7: /* reset */
            FUZZ_CHECK(eevp_ctx_reset(ctx) == EEVP_OK);
            step = 0;
            break;
        case 8: { /* read results and candidates */
            int32_t s = fz_range(&f, -1, B);
            check_result(ctx, s, off, V, L);
            check_candidates(ctx, s, fz_range(&f, -1, (int32_t)V + 1), off, V);
            break;
        }
        case 9: /* statistics */
            check_stats(ctx, L);
            if (fz_u8(&f) & 1)
                FUZZ_CHECK(eevp_ctx_stats_reset(ctx) == EEVP_OK);
            break;
        case 10: { /* a custom criterion, possibly hostile */
            eevp_criterion_vtbl vt;
            crit_state *cs = malloc(sizeof *cs);
            uint8_t b = fz_u8(&f);
            FUZZ_CHECK(cs != NULL);
            cs->ctx = ctx;
            cs->mode = b % 10;
            cs->calls = 0;
            cs->destroyed = &destroyed;
            memset(&vt, 0, sizeof vt);
            vt.struct_size = sizeof vt;
            vt.needs = (b >> 4) & 3;
            vt.decide = (b & 0x40) ? NULL : crit_decide;
            vt.reset = crit_reset;
            vt.destroy = crit_destroy;
            rc = eevp_ctx_set_criterion(ctx, &vt, cs);
            FUZZ_CHECK(fz_known_status(rc));
            if (step == 1 || !vt.decide)
                FUZZ_CHECK(rc != EEVP_OK);
            if (rc == EEVP_OK)
                registered++;
            else
                free(cs);
            break;
        }
        case 11: { /* queries */
            float lambda = -5.0f;
            int32_t l = fz_range(&f, -1, L);
            rc = eevp_ctx_layer_required(ctx, l);
            FUZZ_CHECK(l >= 0 && l < L ? (rc == 0 || rc == 1) : rc == EEVP_ERANGE);
            rc = eevp_ctx_threshold(ctx, fz_range(&f, -1, 250), &lambda);
            FUZZ_CHECK(fz_known_status(rc));
            if (rc == EEVP_OK)
                FUZZ_CHECK(isfinite(lambda));
            FUZZ_CHECK(eevp_ctx_memory(ctx) > 0);
            FUZZ_CHECK(eevp_ctx_errmsg(ctx) != NULL);
            break;
        }
        default: { /* the kernels on the same head */
            int32_t n = fz_range(&f, 1, 3), k = fz_range(&f, 1, (int32_t)V), ids[MAXV];
            int64_t ws = eevp_head_workspace_size(head, n);
            float *hid = malloc(sizeof(float) * (size_t)(n * d));
            float *z = malloc(sizeof(float) * (size_t)(n * V));
            float *rows = malloc(sizeof(float) * (size_t)(k * d));
            void *work;
            FUZZ_CHECK(ws > 0 && hid && z && rows);
            work = fz_aligned((size_t)ws);
            FUZZ_CHECK(work != NULL);
            fill_hidden(&f, hid, n, d, (int32_t)d, &seed);
            rc = eevp_head_logits(head, n, hid, d, z, V, work);
            FUZZ_CHECK(rc == EEVP_OK || rc == EEVP_ENONFINITE);
            for (i = 0; i < k; i++)
                ids[i] = (int32_t)off + fz_range(&f, 0, (int32_t)V - 1);
            FUZZ_CHECK(eevp_head_gather(head, ids, k, rows, d, NULL) == EEVP_OK);
            rc = eevp_head_pruned_logits(head, k, rows, d, NULL, n, hid, d, z, V, work);
            FUZZ_CHECK(rc == EEVP_OK || rc == EEVP_ENONFINITE);
            if (ho.screen_mult) { /* the screened top-k: ids inside the head, in the order */
                int64_t sws = eevp_head_screen_workspace_size(head, k);
                void *sw = fz_aligned((size_t)(sws > 0 ? sws : 1));
                FUZZ_CHECK(sws > 0 && sw != NULL);
                rc = eevp_head_screen(head, hid, k, ids, z, sw);
                FUZZ_CHECK(rc == EEVP_OK || rc == EEVP_ENONFINITE);
                if (rc == EEVP_OK)
                    for (i = 0; i < k; i++) {
                        FUZZ_CHECK(ids[i] >= off && ids[i] < off + V);
                        FUZZ_CHECK(i == 0 || z[i - 1] > z[i] ||
                                   (z[i - 1] == z[i] && ids[i - 1] < ids[i]));
                    }
                free(sw);
            } else {
                FUZZ_CHECK(eevp_head_screen_workspace_size(head, k) == EEVP_EINVAL);
            }
            free(work);
            free(hid);
            free(z);
            free(rows);
        }
        }
        /* Steps, queries and kernels never allocate. */
        FUZZ_CHECK(ca.calls + ha.calls == calls_before);
        FUZZ_CHECK(fz_known_status(eevp_step_n_running(ctx)) ||
                   eevp_step_n_running(ctx) > 0);
    }
    check_stats(ctx, L);
    eevp_ctx_free(ctx);
    eevp_head_free(head);
    FUZZ_CHECK(destroyed == registered);
    FUZZ_CHECK(ca.live == 0 && ha.live == 0);
    return 0;
}
