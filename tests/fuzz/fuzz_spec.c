/* SPDX-License-Identifier: MIT */
/*
 * fuzz_spec.c - lossless early exit (eevp_spec_*) driven by the input: a
 * verifier on a small head (any norm, masked tokens, scale, soft-cap,
 * offsets up to the id limit, F32/F16/BF16) with options from menus that
 * reach every bound (sizes, temperature from denormal to 3e38 and NaN,
 * top_k, top_p, max_set, struct_size too small or larger with a zero or
 * non-zero tail, an allocator that fails), one drafting context (on the
 * same head or on a second one with other ids) whose steps end anywhere,
 * then a program of rounds (positions up to INT32_MAX), drafts from the
 * context and added by hand (ids in and out of the head, any layer),
 * verifications of any subset of slots (repeated, out of range, without a
 * round) with rows that may hold NaN, Inf, 1e30 or 3.4e38, statistics and
 * their resets.
 *
 * Invariants: known status codes; a shadow model of every slot (round
 * open, drafts held, their tokens and layers) agrees with
 * eevp_spec_n_drafts after every call; a failed call changes nothing
 * (slots, statistics, results not written); a verified slot has 0 <=
 * n_accepted <= n_drafted and a token inside the head, or status
 * EEVP_ENONFINITE with its round kept, exactly when one of its rows or
 * their logits is not finite (eevp_head_logits on the same rows); greedy
 * verification (and sampling with top_k = 1, which must equal it) gives the
 * longest prefix of drafts equal to the argmax and then the argmax, ties
 * to the lowest id; a draft is the drafting result's token (greedy) or one
 * of its candidates (sampling), none at the last layer; statistics equal
 * the shadow's counts; nothing is allocated after creation and nothing
 * leaks.  Every buffer is exactly as long as the call may read.
 *
 * Layout: head bytes, verifier option bytes, drafting-context bytes, then
 * one opcode byte per call and its arguments.  Missing bytes read as zero.
 */
#include "fuzz_common.h"

#ifdef FUZZ_DEBUG
#define TRACE(...) fprintf(stderr, __VA_ARGS__)
#else
#define TRACE(...) ((void)0)
#endif

enum { MAXV = 64, MAXD = 16, MAXL = 4, MAXB = 6, MAXCB = 4, TAIL = 8 };

typedef struct slot_model {
    int active;
    int32_t n;
    int32_t tok[EEVP_MAX_DRAFT];
    int32_t layer[EEVP_MAX_DRAFT];
} slot_model;

typedef struct model {
    slot_model slot[MAXB];
    int64_t rounds, drafted, accepted, emitted, verify_rows, failed;
    int64_t layer_drafted[MAXL + 2], layer_accepted[MAXL + 2];
} model;

typedef struct world {
    eevp_spec *sp;
    const eevp_head *head;      /* the verifier's */
    eevp_ctx *ctx;              /* the drafting context, or NULL */
    int64_t V, off, d;
    int32_t B, max_draft, n_layers, max_set;
    int greedy;                 /* verification equals the argmax rule */
    int sampling;               /* temperature > 0 */
    int32_t CB, L;              /* the drafting context's batch and layers */
    int step;                   /* drafting step: 0 none, 1 begun */
    int32_t n_seq;
    int64_t ctx_V, ctx_off;
    uint32_t seed;
    model m;
} world;

static void fill_rows(fz *f, float *h, int32_t n_rows, int64_t ld, int32_t d, uint32_t *seed)
{
    uint8_t mode = fz_u8(f);
    int32_t r, c, k;
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
    /* up to four hostile values anywhere (reads sequenced: the same
     * program under every compiler) */
    if ((mode & 8) && n_rows > 0)
        for (k = 0; k < 1 + (mode >> 6); k++) {
            const int32_t row = fz_range(f, 0, n_rows - 1);
            const int32_t col = fz_range(f, 0, d - 1);
            h[(int64_t)row * ld + col] = fz_float(f);
        }
}

/* The slot's model against the library. */
static void check_slots(const world *w)
{
    int32_t s;
    for (s = 0; s < w->B; s++) {
        int32_t n = eevp_spec_n_drafts(w->sp, s);
        FUZZ_CHECK(w->m.slot[s].active ? n == w->m.slot[s].n : n == EEVP_ESTATE);
    }
    FUZZ_CHECK(eevp_spec_n_drafts(w->sp, -1) == EEVP_ERANGE);
    FUZZ_CHECK(eevp_spec_n_drafts(w->sp, w->B) == EEVP_ERANGE);
    FUZZ_CHECK(eevp_spec_n_drafts(NULL, 0) == EEVP_EINVAL);
}

static void get_stats(const world *w, eevp_spec_stats *st)
{
    memset(st, 0x5a, sizeof *st);
    st->struct_size = sizeof *st;
    FUZZ_CHECK(eevp_spec_stats_get(w->sp, st) == EEVP_OK);
}

static void check_stats(const world *w, fz *f)
{
    struct {
        eevp_spec_stats st;
        unsigned char tail[TAIL];
    } big;
    eevp_spec_stats st;
    int64_t dr[MAXL + 4], ac[MAXL + 4];
    int32_t n = fz_range(f, -1, MAXL + 3), l, i;

    get_stats(w, &st);
    FUZZ_CHECK(st.struct_size == sizeof st && st.n_layers == w->n_layers);
    FUZZ_CHECK(st.rounds == w->m.rounds && st.failed == w->m.failed);
    FUZZ_CHECK(st.drafted == w->m.drafted && st.accepted == w->m.accepted);
    FUZZ_CHECK(st.emitted == w->m.emitted && st.verify_rows == w->m.verify_rows);
    FUZZ_CHECK(st.emitted == st.accepted + st.rounds);
    FUZZ_CHECK(st.verify_rows == st.drafted + st.rounds);
    FUZZ_CHECK(st.accepted <= st.drafted);
    /* a newer caller's larger struct: the tail zero-filled */
    memset(&big, 0x77, sizeof big);
    big.st.struct_size = sizeof big;
    FUZZ_CHECK(eevp_spec_stats_get(w->sp, &big.st) == EEVP_OK);
    FUZZ_CHECK(big.st.rounds == st.rounds && big.st.failed == st.failed);
    for (i = 0; i < TAIL; i++)
        FUZZ_CHECK(big.tail[i] == 0);
    st.struct_size = 4;
    FUZZ_CHECK(eevp_spec_stats_get(w->sp, &st) == EEVP_ESTRUCT);
    FUZZ_CHECK(eevp_spec_stats_get(NULL, &st) == EEVP_EINVAL);
    /* per layer: min(n, n_layers) entries written, nothing else */
    for (l = 0; l < MAXL + 4; l++)
        dr[l] = ac[l] = -7;
    FUZZ_CHECK(eevp_spec_layer_stats(w->sp, dr, (n & 1) ? ac : NULL, n) ==
               (n < 0 ? EEVP_EINVAL : EEVP_OK));
    for (l = 0; l < MAXL + 4; l++) {
        int written = n >= 0 && l < n && l < w->n_layers;
        FUZZ_CHECK(written ? dr[l] == w->m.layer_drafted[l] : dr[l] == -7);
        FUZZ_CHECK(written && (n & 1) ? ac[l] == w->m.layer_accepted[l] : ac[l] == -7);
        if (written)
            FUZZ_CHECK(ac[l] == -7 || ac[l] <= dr[l]);
    }
    FUZZ_CHECK(eevp_spec_layer_stats(w->sp, NULL, NULL, MAXL) == EEVP_OK);
}

/* Logits of one row through eevp_head_logits (the same kernel rule as the
 * verifier's projection, so the same bits): 1 when the row or its logits
 * are not finite, else 0 and the argmax (local, ties to the lowest). */
static int row_argmax(const world *w, const float *row, int64_t *best)
{
    float z[MAXV], work[MAXD + 16]; /* the workspace: d floats, 64-byte aligned */
    int64_t v;
    int rc = eevp_head_logits(w->head, 1, row, w->d, z, w->V,
                              (void *)(((uintptr_t)work + 63) & ~(uintptr_t)63));
    FUZZ_CHECK(rc == EEVP_OK || rc == EEVP_ENONFINITE);
    if (rc != EEVP_OK)
        return 1;
    *best = 0;
    for (v = 0; v < w->V; v++) {
        if (z[v] != z[v] || z[v] == INFINITY)
            return 1;
        if (z[v] > z[*best])
            *best = v;
    }
    return 0;
}

static void op_round(world *w, fz *f)
{
    static const int32_t pos_menu[8] = { 0, 1, 17, INT32_MAX, INT32_MAX - 1, INT32_MAX - 7,
                                         -1, INT32_MIN };
    int32_t s = fz_range(f, -1, w->B);
    uint8_t b = fz_u8(f);
    int32_t pos = (b & 8) ? pos_menu[b & 7] : (int32_t)fz_u8(f);
    uint64_t key = fz_u32(f);
    int rc;
    key |= (uint64_t)fz_u32(f) << 32;
    rc = eevp_spec_round(w->sp, s, key, pos);
    TRACE("round(%d, key %llu, pos %d) = %d\n", s, (unsigned long long)key, pos, rc);
    FUZZ_CHECK(rc == ((s < 0 || s >= w->B || pos < 0) ? EEVP_ERANGE : EEVP_OK));
    if (rc == EEVP_OK) {
        w->m.slot[s].active = 1;
        w->m.slot[s].n = 0;
    }
    FUZZ_CHECK(eevp_spec_errmsg(w->sp) != NULL);
}

static void op_add(world *w, fz *f)
{
    int32_t s = fz_range(f, -1, w->B);
    int64_t t64 = w->off + fz_range(f, -2, (int32_t)w->V + 1);
    int32_t t = t64 > INT32_MAX ? INT32_MAX : (int32_t)t64;
    int32_t layer = fz_range(f, -2, MAXL + 1);
    int ok, rc;
    if (w->off > 0 && (fz_u8(f) & 15) == 0)
        t = fz_u8(f) & 1 ? INT32_MIN : -1;
    rc = eevp_spec_add_draft(w->sp, s, t, layer);
    TRACE("add_draft(%d, %d, layer %d) = %d\n", s, t, layer, rc);
    FUZZ_CHECK(fz_known_status(rc));
    ok = s >= 0 && s < w->B && w->m.slot[s].active && w->m.slot[s].n < w->max_draft &&
         t >= w->off && (int64_t)t < w->off + w->V;
    FUZZ_CHECK((rc == EEVP_OK) == ok);
    if (ok) {
        slot_model *sm = &w->m.slot[s];
        sm->tok[sm->n] = t;
        sm->layer[sm->n] = layer;
        sm->n++;
    } else if (s >= 0 && s < w->B && !w->m.slot[s].active) {
        FUZZ_CHECK(rc == EEVP_ESTATE);
    } else {
        FUZZ_CHECK(rc == EEVP_ERANGE);
    }
}

/* Run a drafting step: begin n sequences, hand over `layers` layers. */
static void draft_step(world *w, fz *f)
{
    int32_t pos[MAXCB], n = fz_range(f, 1, w->CB), layers = fz_range(f, 0, w->L), l, i;
    int rc;
    FUZZ_CHECK(eevp_step_abandon(w->ctx) == EEVP_OK);
    for (i = 0; i < MAXCB; i++)
        pos[i] = fz_range(f, 0, 50);
    rc = eevp_step_begin(w->ctx, n, pos);
    FUZZ_CHECK(rc == EEVP_OK);
    w->step = 1;
    w->n_seq = n;
    for (l = 0; l < layers && eevp_step_n_running(w->ctx) > 0; l++) {
        float *h = malloc(sizeof(float) * (size_t)(n * w->d));
        FUZZ_CHECK(h != NULL);
        fill_rows(f, h, n, w->d, (int32_t)w->d, &w->seed);
        rc = eevp_step_layer(w->ctx, l, h, w->d, n, NULL);
        TRACE("  drafting step_layer(%d, %d rows) = %d\n", l, n, rc);
        FUZZ_CHECK(fz_known_status(rc));
        free(h);
    }
}

static void op_draft(world *w, fz *f)
{
    uint8_t b = fz_u8(f);
    int32_t s, cs, tok = 12345, more = 12345, n_before;
    eevp_result r;
    int rrc, rc, open;

    if (!w->ctx) {
        s = fz_range(f, 0, w->B - 1);
        FUZZ_CHECK(eevp_spec_draft(w->sp, s, NULL, 0, &tok, &more) == EEVP_EINVAL);
        return;
    }
    if ((b & 1) || !w->step)
        draft_step(w, f);
    s = fz_range(f, -1, w->B);
    cs = fz_range(f, -1, w->CB);
    memset(&r, 0, sizeof r);
    r.struct_size = sizeof r;
    rrc = eevp_step_result(w->ctx, cs, &r);
    open = s >= 0 && s < w->B && w->m.slot[s].active;
    n_before = open ? w->m.slot[s].n : -1;
    if (b & 4) {
        FUZZ_CHECK(eevp_spec_draft(w->sp, s, w->ctx, cs, NULL, &more) == EEVP_EINVAL);
        FUZZ_CHECK(eevp_spec_draft(NULL, s, w->ctx, cs, &tok, &more) == EEVP_EINVAL);
    }
    rc = eevp_spec_draft(w->sp, s, w->ctx, cs, &tok, (b & 2) ? NULL : &more);
    TRACE("draft(%d, ctx seq %d) = %d: token %d more %d (result rc %d reason %d token %d "
          "pruned %d set %d)\n", s, cs, rc, tok, more, rrc, r.reason, r.token, r.pruned,
          r.set_size);
    FUZZ_CHECK(fz_known_status(rc));
    if (rc != EEVP_OK) {
        FUZZ_CHECK(tok == -1);
        FUZZ_CHECK((b & 2) || more == 0);
        if (!(s >= 0 && s < w->B))
            FUZZ_CHECK(rc == EEVP_ERANGE);
        else if (!open)
            FUZZ_CHECK(rc == EEVP_ESTATE);
        else if (n_before >= w->max_draft)
            FUZZ_CHECK(rc == EEVP_ERANGE);
        else if (rrc != EEVP_OK)
            FUZZ_CHECK(rc == rrc);
        else if (r.reason == EEVP_REASON_RUNNING)
            FUZZ_CHECK(rc == EEVP_ESTATE);
        else if (r.reason == EEVP_REASON_ERROR)
            FUZZ_CHECK(rc == r.status);
        else if (!w->sampling) /* a token outside the verifier's head */
            FUZZ_CHECK(r.reason == EEVP_REASON_CONFIDENT && rc == EEVP_ERANGE &&
                       !(r.token >= w->off && (int64_t)r.token < w->off + w->V));
        else /* a set larger than max_set, a candidate outside the head, or
              * candidates all masked (no distribution to draw from) */
            FUZZ_CHECK(r.reason == EEVP_REASON_CONFIDENT &&
                       (rc == EEVP_ERANGE || rc == EEVP_ENONFINITE));
        return;
    }
    FUZZ_CHECK(open && n_before < w->max_draft && rrc == EEVP_OK);
    if (r.reason != EEVP_REASON_CONFIDENT) {
        FUZZ_CHECK(r.reason == EEVP_REASON_LAST_LAYER);
        FUZZ_CHECK(tok == -1 && ((b & 2) || more == 0));
        return;
    }
    FUZZ_CHECK(tok >= w->off && (int64_t)tok < w->off + w->V);
    FUZZ_CHECK((b & 2) || more == (n_before + 1 < w->max_draft));
    if (!w->sampling) {
        FUZZ_CHECK(tok == r.token);
    } else { /* one of the step's candidates, the set within max_set */
        float z[MAXV + 2];
        int32_t ids[MAXV + 2], n_out = 0, j, found = 0;
        FUZZ_CHECK(eevp_step_candidates(w->ctx, cs, MAXV + 2, z, ids, &n_out) == EEVP_OK);
        for (j = 0; j < n_out && j < w->max_set; j++)
            found |= ids[j] == tok;
        FUZZ_CHECK(found);
        FUZZ_CHECK(!r.pruned || r.set_size <= w->max_set);
    }
    w->m.slot[s].tok[n_before] = tok;
    w->m.slot[s].layer[n_before] = r.layer;
    w->m.slot[s].n++;
}

static void op_verify(world *w, fz *f)
{
    struct {
        eevp_spec_result res;
        unsigned char tail[TAIL];
    } big;
    eevp_spec_result *res;
    eevp_spec_stats before, after;
    int32_t n = fz_range(f, 0, w->B + 1), seqs[MAXB + 2], j, i, k;
    int32_t first[MAXB + 2], rows_of[MAXB + 2];
    int32_t total = 0;
    uint8_t how = fz_u8(f);
    int64_t ld = w->d + (how >> 6);
    int valid = n >= 1 && n <= w->B, use_big = 0;
    int64_t expect_a[MAXB + 2], expect_tok[MAXB + 2];
    int expect_bad[MAXB + 2];
    size_t nf;
    float *h;
    int rc;

    /* the slots: distinct open ones, or anything */
    if (how & 1) {
        int32_t cand[MAXB], nc = 0;
        for (i = 0; i < w->B; i++)
            if (w->m.slot[i].active)
                cand[nc++] = i;
        for (i = nc - 1; i > 0; i--) {
            int32_t t, r = fz_range(f, 0, i);
            t = cand[i], cand[i] = cand[r], cand[r] = t;
        }
        n = nc > 0 ? fz_range(f, 1, nc) : 1;
        for (j = 0; j < n; j++)
            seqs[j] = nc > 0 ? cand[j] : 0;
        valid = nc > 0;
    } else {
        for (j = 0; j < n; j++)
            seqs[j] = fz_range(f, -1, w->B);
    }
    if (how & 2)
        ld = fz_range(f, 0, (int32_t)w->d + 1);
    if (ld < w->d)
        valid = 0;
    for (j = 0; j < n; j++) {
        const int32_t s = seqs[j];
        int ok = s >= 0 && s < w->B && w->m.slot[s].active;
        for (k = 0; k < j; k++)
            ok &= seqs[k] != s;
        valid &= ok;
        first[j] = total;
        rows_of[j] = ok ? w->m.slot[s].n + 1 : 1;
        total += rows_of[j];
    }
    /* exactly the floats the rows may need */
    nf = total > 0 ? (size_t)((total - 1) * (ld > w->d ? ld : w->d) + w->d) : 1;
    h = malloc(nf * sizeof(float));
    FUZZ_CHECK(h != NULL);
    for (i = 0; i < (int32_t)nf; i++)
        h[i] = NAN; /* padding */
    if (total > 0)
        fill_rows(f, h, total, ld > w->d ? ld : w->d, (int32_t)w->d, &w->seed);
    if (ld < w->d)
        ld = fz_u8(f) & 1 ? ld : -1;
    res = malloc(sizeof *res * (size_t)(n > 0 ? n : 1));
    FUZZ_CHECK(res != NULL);
    for (j = 0; j < (n > 0 ? n : 1); j++) {
        memset(&res[j], 0x5a, sizeof res[j]);
        res[j].struct_size = sizeof res[j];
    }
    if ((how & 0x0c) == 0x04 && n > 0) { /* a struct_size too small */
        const int32_t which = fz_range(f, 0, n - 1);
        res[which].struct_size = (fz_u8(f) & 1) ? 0 : 8;
        valid = 0;
    }
    if ((how & 0x0c) == 0x08 && n == 1) { /* a newer caller's larger struct */
        memset(&big, 0x5a, sizeof big);
        big.res.struct_size = sizeof big;
        use_big = 1;
    }
    /* what the argmax rule gives, and which slots must fail */
    for (j = 0; j < n && valid; j++) {
        const slot_model *sm = &w->m.slot[seqs[j]];
        expect_bad[j] = 0;
        expect_a[j] = -1;
        expect_tok[j] = -1;
        for (i = 0; i <= sm->n; i++) {
            int64_t best = -1;
            if (row_argmax(w, h + (int64_t)(first[j] + i) * ld, &best)) {
                expect_bad[j] = 1;
                continue;
            }
            if (expect_a[j] < 0 && (i == sm->n || sm->tok[i] != best + w->off)) {
                expect_a[j] = i;
                expect_tok[j] = best + w->off;
            }
        }
    }
    get_stats(w, &before);
    if ((how & 0x30) == 0x30) {
        FUZZ_CHECK(eevp_spec_verify(w->sp, n, NULL, h, ld, res) == EEVP_EINVAL);
        FUZZ_CHECK(eevp_spec_verify(w->sp, n, seqs, NULL, ld, res) == EEVP_EINVAL);
        FUZZ_CHECK(eevp_spec_verify(w->sp, n, seqs, h, ld, NULL) == EEVP_EINVAL);
        FUZZ_CHECK(eevp_spec_verify(NULL, n, seqs, h, ld, res) == EEVP_EINVAL);
    }
    rc = eevp_spec_verify(w->sp, n, seqs, h, ld, use_big ? &big.res : res);
    TRACE("verify(n %d, ld %lld, valid %d) = %d\n", n, (long long)ld, valid, rc);
    FUZZ_CHECK(fz_known_status(rc));
    FUZZ_CHECK((rc == EEVP_OK) == valid);
    get_stats(w, &after);
    if (rc != EEVP_OK) {
        unsigned char *p;
        FUZZ_CHECK(memcmp(&before, &after, sizeof before) == 0);
        for (j = 0; j < (n > 0 ? n : 1); j++) {
            p = (unsigned char *)&res[j];
            for (k = (int)sizeof res[j].struct_size; k < (int)sizeof res[j]; k++)
                FUZZ_CHECK(p[k] == 0x5a);
        }
        free(h);
        free(res);
        return;
    }
    if (use_big) {
        for (i = 0; i < TAIL; i++)
            FUZZ_CHECK(big.tail[i] == 0);
        res[0] = big.res;
    }
    for (j = 0; j < n; j++) {
        const eevp_spec_result *r = &res[j];
        slot_model *sm = &w->m.slot[seqs[j]];
        TRACE("  slot %d: status %d drafted %d accepted %d token %d (expected bad %d a %lld "
              "token %lld)\n", seqs[j], r->status, r->n_drafted, r->n_accepted, r->token,
              expect_bad[j], (long long)expect_a[j], (long long)expect_tok[j]);
        FUZZ_CHECK(r->struct_size == sizeof *r || use_big);
        FUZZ_CHECK(r->reserved == 0);
        FUZZ_CHECK(r->n_drafted == sm->n);
        if (expect_bad[j]) {
            FUZZ_CHECK(r->status == EEVP_ENONFINITE && r->token == -1 && r->n_accepted == 0);
            w->m.failed++;
            continue; /* the round is kept */
        }
        FUZZ_CHECK(r->status == EEVP_OK);
        FUZZ_CHECK(r->n_accepted >= 0 && r->n_accepted <= sm->n);
        FUZZ_CHECK(r->token >= w->off && (int64_t)r->token < w->off + w->V);
        if (w->greedy)
            FUZZ_CHECK(r->n_accepted == expect_a[j] && r->token == expect_tok[j]);
        w->m.rounds++;
        w->m.drafted += sm->n;
        w->m.accepted += r->n_accepted;
        w->m.emitted += r->n_accepted + 1;
        w->m.verify_rows += sm->n + 1;
        for (i = 0; i < sm->n; i++) {
            const int32_t l = sm->layer[i];
            if (l >= 0 && l < w->n_layers) {
                w->m.layer_drafted[l]++;
                if (i < r->n_accepted)
                    w->m.layer_accepted[l]++;
            }
        }
        sm->active = 0;
        sm->n = 0;
    }
    free(h);
    free(res);
}

static int make_head(fz *f, eevp_head **out, const float *W, uint16_t *Wh, int64_t V, int64_t d,
                     int64_t stride, int64_t off, uint8_t b, uint8_t c, float *nw, float *bias,
                     const eevp_allocator *al)
{
    static const float scales[4] = { 0.0f, 1.0f, 0.01f, 30.0f };
    static const float caps[4] = { 0.0f, 0.0f, 5.0f, 30.0f };
    eevp_head_options ho;
    char msg[64];
    int64_t i;
    eevp_head_options_init(&ho);
    ho.flags = b & 3u;
    ho.norm = (b >> 2) % 3;
    if (b & 0x20) {
        for (i = 0; i < d; i++)
            nw[i] = ((float)fz_u8(f) - 128.0f) / 64.0f;
        ho.norm_weight = nw;
    }
    if (b & 0x40) { /* masked tokens; all of them when b has 0x80 too */
        for (i = 0; i < V; i++)
            bias[i] = (b & 0x80) || (fz_u8(f) & 3) == 0 ? -INFINITY
                                                        : ((float)fz_u8(f) - 128.0f) / 64.0f;
        ho.logit_bias = bias;
    }
    ho.logit_scale = scales[c & 3];
    ho.softcap = caps[(c >> 2) & 3];
    ho.weight_type = ((c >> 6) & 3) % 3;
    if (ho.weight_type != EEVP_WEIGHT_F32) {
        for (i = 0; i < V * stride; i++) {
            uint32_t bits;
            memcpy(&bits, &W[i], 4);
            if (ho.weight_type == EEVP_WEIGHT_BF16) {
                Wh[i] = (uint16_t)(bits >> 16);
            } else { /* |x| <= 1: a normal half, or zero */
                int32_t e = (int32_t)((bits >> 23) & 0xff) - 127 + 15;
                Wh[i] = (uint16_t)(((bits >> 16) & 0x8000u) |
                                   (e > 0 ? ((uint32_t)e << 10) | ((bits >> 13) & 0x3ffu) : 0));
            }
        }
    }
    ho.n_vocab = V;
    ho.dim = d;
    ho.row_stride = stride;
    ho.weights = ho.weight_type == EEVP_WEIGHT_F32 ? W : NULL;
    ho.weights_half = ho.weight_type == EEVP_WEIGHT_F32 ? NULL : Wh;
    ho.vocab_offset = off;
    ho.norm_eps = (b & 0x10) ? 0.0f : 1e-6f;
    ho.allocator = al;
    TRACE("head V %lld d %lld offset %lld flags %u norm %d nw %d bias %d scale %g cap %g "
          "wtype %d\n", (long long)V, (long long)d, (long long)off, ho.flags, ho.norm,
          ho.norm_weight != NULL, ho.logit_bias ? ((b & 0x80) ? 2 : 1) : 0,
          (double)ho.logit_scale, (double)ho.softcap, ho.weight_type);
    return eevp_head_create(out, &ho, msg, sizeof msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const float temps[16] = { 0.0f, 0.0f, 0.0f, 0.0f, 1.0f, 0.5f, 2.0f, 1e-30f,
                                     1e-40f, 100.0f, 3e38f, -0.0f, 0.7f, NAN, INFINITY, -1.0f };
    static const float top_ps[8] = { 1.0f, 1.0f, 0.9f, 0.5f, 1e-9f, 0.0f, 1.5f, NAN };
    static const float thresholds[8] = { 0.0f, 0.5f, 0.9f, -1.0f, 0.999f, 0.1f, 2.0f, 0.3f };
    fz f = { data, size, 0 };
    fz_alloc ha = { 0, 0, 0, (size_t)1 << 24 }, sa = { 0, 0, 0, (size_t)1 << 24 },
             ca = { 0, 0, 0, (size_t)1 << 24 };
    eevp_allocator hal = { fz_alloc_fn, fz_free_fn, &ha }, sal = { fz_alloc_fn, fz_free_fn, &sa },
                   cal = { fz_alloc_fn, fz_free_fn, &ca }, half_set = { fz_alloc_fn, NULL, &sa };
    static float W[MAXV * (MAXD + 3)], nw[MAXD], nw2[MAXD], bias[MAXV], bias2[MAXV];
    static uint16_t Wh[MAXV * (MAXD + 3)], Wh2[MAXV * (MAXD + 3)];
    struct {
        eevp_spec_options o;
        unsigned char tail[TAIL];
    } sbuf;
    eevp_spec_options so;
    eevp_ctx_options co;
    eevp_head *head = NULL, *head2 = NULL;
    world w;
    int64_t V, d, stride, off;
    int32_t i, ops = 0;
    int valid, rc, bad_alloc = 0;
    uint8_t hb, hc, sb;
    char msg[128];

    memset(&w, 0, sizeof w);
    /* ---- head ---- */
    V = fz_range(&f, 1, MAXV);
    d = fz_range(&f, 1, MAXD);
    stride = d + fz_range(&f, 0, 3);
    w.seed = fz_u32(&f) | 1u;
    for (i = 0; i < MAXV * (MAXD + 3); i++) {
        w.seed = w.seed * 1664525u + 1013904223u;
        W[i] = ((float)(w.seed >> 9) / 8388608.0f - 1.0f);
    }
    hb = fz_u8(&f);
    hc = fz_u8(&f);
    off = (hc >> 4) & 1 ? 1000 : (hc >> 5) & 1 ? (int64_t)INT32_MAX - V + 1 : 0;
    rc = make_head(&f, &head, W, Wh, V, d, stride, off, hb, hc, nw, bias, &hal);
    FUZZ_CHECK(fz_known_status(rc));
    if (rc != EEVP_OK) {
        FUZZ_CHECK(head == NULL && ha.live == 0);
        return 0;
    }
    w.head = head;
    w.V = V;
    w.d = d;
    w.off = off;

    /* ---- verifier options ---- */
    eevp_spec_options_init(&so);
    sb = fz_u8(&f);
    so.max_batch = (sb & 7) == 7 ? ((sb & 8) ? 0 : EEVP_MAX_BATCH + 1) : 1 + (sb & 7) % MAXB;
    so.max_draft = fz_range(&f, 0, EEVP_MAX_DRAFT + 1);
    so.max_set = (sb & 0x10) ? fz_range(&f, -1, (int32_t)V + 1) : (int32_t)V;
    so.n_layers = fz_range(&f, -1, MAXL + 1);
    {
        uint8_t t = fz_u8(&f);
        so.temperature = temps[t & 15];
        so.top_k = (t & 0x10) ? fz_range(&f, -1, (int32_t)V + 1) : 0;
        so.top_p = (t & 0x20) ? top_ps[fz_u8(&f) & 7] : 1.0f;
        if ((t & 0x30) == 0x30 && (fz_u8(&f) & 1)) /* top_k = 1: sampling equals greedy */
            so.top_k = 1;
    }
    so.seed = fz_u32(&f);
    so.seed |= (uint64_t)fz_u32(&f) << 32;
    so.allocator = &sal;
    sa.fail_at = (sb >> 5) == 7 ? fz_range(&f, 1, 4) : 0;
    if (sa.fail_at == 4) { /* alloc without free: refused */
        so.allocator = &half_set;
        sa.fail_at = 0;
        bad_alloc = 1;
    }
    valid = so.max_batch >= 1 && so.max_batch <= EEVP_MAX_BATCH && so.max_draft >= 1 &&
            so.max_draft <= EEVP_MAX_DRAFT && so.max_set >= 1 && so.max_set <= V &&
            so.n_layers >= 0 && so.n_layers <= EEVP_MAX_LAYERS && so.temperature >= 0.0f &&
            !isinf(so.temperature) && so.top_k >= 0 && so.top_k <= V && so.top_p > 0.0f &&
            so.top_p <= 1.0f && !(so.temperature == 0.0f && (so.top_k > 0 || so.top_p < 1.0f));
    memset(&sbuf, 0, sizeof sbuf);
    sbuf.o = so;
    switch ((sb >> 5) & 3) {
    case 1: sbuf.o.struct_size = sizeof sbuf; break; /* zero tail: accepted */
    case 2:
        if (sb & 0x80) { /* non-zero tail: refused */
            sbuf.o.struct_size = sizeof sbuf;
            sbuf.tail[fz_u8(&f) % TAIL] = 1;
        } else {
            sbuf.o.struct_size = (fz_u8(&f) & 1) ? 0 : 4;
        }
        valid = 0;
        break;
    default: break;
    }
    TRACE("spec max_batch %d max_draft %d max_set %d n_layers %d T %g top_k %d top_p %g size %u "
          "fail_at %lld valid %d\n", so.max_batch, so.max_draft, so.max_set, so.n_layers,
          (double)so.temperature, so.top_k, (double)so.top_p, sbuf.o.struct_size,
          (long long)sa.fail_at, valid);
    w.sp = (eevp_spec *)&w; /* must be overwritten */
    rc = eevp_spec_create(&w.sp, head, &sbuf.o, msg, sizeof msg);
    FUZZ_CHECK(fz_known_status(rc));
    if (rc != EEVP_OK) {
        FUZZ_CHECK(w.sp == NULL && sa.live == 0 && msg[0] != '\0');
        FUZZ_CHECK(!valid || (rc == EEVP_ENOMEM && sa.fail_at > 0) ||
                   (rc == EEVP_EINVAL && bad_alloc));
        eevp_head_free(head);
        FUZZ_CHECK(ha.live == 0);
        return 0;
    }
    FUZZ_CHECK(valid && !bad_alloc && sa.live == 2);
    FUZZ_CHECK(eevp_spec_memory(w.sp) > 0);
    w.B = so.max_batch;
    w.max_draft = so.max_draft;
    w.n_layers = so.n_layers;
    w.max_set = so.max_set;
    w.sampling = so.temperature > 0.0f;
    w.greedy = !w.sampling || so.top_k == 1 || so.top_p < 1e-6f;
    FUZZ_CHECK(eevp_spec_create(NULL, head, &so, NULL, 0) == EEVP_EINVAL);
    {
        eevp_spec *none = (eevp_spec *)&w;
        FUZZ_CHECK(eevp_spec_create(&none, NULL, &so, msg, sizeof msg) == EEVP_EINVAL);
        FUZZ_CHECK(none == NULL);
    }
    FUZZ_CHECK(eevp_spec_options_init(NULL) == EEVP_EINVAL);
    eevp_spec_free(NULL);
    FUZZ_CHECK(eevp_spec_memory(NULL) == EEVP_EINVAL);
    FUZZ_CHECK(eevp_spec_errmsg(NULL) != NULL);
    FUZZ_CHECK(eevp_spec_round(NULL, 0, 0, 0) == EEVP_EINVAL);
    FUZZ_CHECK(eevp_spec_add_draft(NULL, 0, (int32_t)off, 0) == EEVP_EINVAL);
    FUZZ_CHECK(eevp_spec_stats_reset(NULL) == EEVP_EINVAL);
    FUZZ_CHECK(eevp_spec_layer_stats(NULL, NULL, NULL, 0) == EEVP_EINVAL);

    /* ---- drafting context: on the same head, or on one with other ids ---- */
    {
        uint8_t b = fz_u8(&f);
        const eevp_head *ch = head;
        w.ctx_V = V;
        w.ctx_off = off;
        if (b & 1) {
            const int64_t V2 = fz_range(&f, 1, MAXV);
            int64_t off2 = off + fz_range(&f, -2, 2);
            const uint8_t hb2 = fz_u8(&f), hc2 = fz_u8(&f);
            if (off2 < 0)
                off2 = 0;
            rc = make_head(&f, &head2, W, Wh2, V2, d, stride, off2, hb2, hc2, nw2, bias2, &hal);
            FUZZ_CHECK(fz_known_status(rc));
            if (rc == EEVP_OK) {
                ch = head2;
                w.ctx_V = V2;
                w.ctx_off = off2;
            }
        }
        eevp_ctx_options_init(&co);
        w.L = fz_range(&f, 1, MAXL);
        w.CB = fz_range(&f, 1, MAXCB);
        co.n_layers = w.L;
        co.max_batch = w.CB;
        co.k = fz_range(&f, 0, (int32_t)w.ctx_V + 2);
        co.first_layer = fz_range(&f, 0, w.L - 1);
        co.prune_layer = fz_range(&f, -1, co.first_layer);
        co.criterion = fz_u8(&f) % 6;
        co.final_policy = fz_u8(&f) & 1;
        co.threshold = thresholds[fz_u8(&f) & 7];
        co.flags = (b >> 1) & 3u;
        co.allocator = &cal;
        rc = eevp_ctx_create(&w.ctx, ch, &co, msg, sizeof msg);
        TRACE("ctx on head %d (V %lld off %lld): L %d B %d k %d f %d p %d crit %d final %d "
              "lambda %g flags %u = %d\n", ch == head2 ? 2 : 1, (long long)w.ctx_V,
              (long long)w.ctx_off, w.L, w.CB, co.k, co.first_layer, co.prune_layer,
              co.criterion, co.final_policy, (double)co.threshold, co.flags, rc);
        FUZZ_CHECK(fz_known_status(rc));
        if (rc != EEVP_OK)
            FUZZ_CHECK(w.ctx == NULL);
    }

    /* ---- the program ---- */
    while (fz_left(&f) && ops++ < 200) {
        uint8_t op = fz_u8(&f) % 10;
        int64_t calls_before = ha.calls + sa.calls + ca.calls;
        switch (op) {
        case 0:
        case 1: op_round(&w, &f); break;
        case 2: op_add(&w, &f); break;
        case 3:
        case 4: op_draft(&w, &f); break;
        case 5:
        case 6: op_verify(&w, &f); break;
        case 7:
            check_stats(&w, &f);
            if (fz_u8(&f) & 1) {
                FUZZ_CHECK(eevp_spec_stats_reset(w.sp) == EEVP_OK);
                w.m.rounds = w.m.drafted = w.m.accepted = w.m.emitted = 0;
                w.m.verify_rows = w.m.failed = 0;
                memset(w.m.layer_drafted, 0, sizeof w.m.layer_drafted);
                memset(w.m.layer_accepted, 0, sizeof w.m.layer_accepted);
            }
            break;
        case 8: /* the drafting context moves on */
            if (w.ctx) {
                uint8_t b = fz_u8(&f);
                if ((b & 3) == 0) {
                    rc = eevp_step_end(w.ctx);
                    FUZZ_CHECK(rc == EEVP_OK || rc == EEVP_ESTATE);
                } else if ((b & 3) == 1) {
                    FUZZ_CHECK(eevp_step_abandon(w.ctx) == EEVP_OK);
                    w.step = 0;
                } else if ((b & 3) == 2) {
                    FUZZ_CHECK(eevp_ctx_reset(w.ctx) == EEVP_OK);
                    w.step = 0;
                } else {
                    draft_step(&w, &f);
                }
            }
            break;
        default: /* queries */
            FUZZ_CHECK(eevp_spec_memory(w.sp) > 0);
            FUZZ_CHECK(eevp_spec_errmsg(w.sp) != NULL);
            FUZZ_CHECK(eevp_spec_n_drafts(w.sp, fz_range(&f, -2, w.B + 1)) >= EEVP_ESTATE);
        }
        check_slots(&w);
        /* Rounds, drafts, verification and statistics never allocate. */
        FUZZ_CHECK(ha.calls + sa.calls + ca.calls == calls_before);
    }
    check_stats(&w, &f);
    eevp_spec_free(w.sp);
    eevp_ctx_free(w.ctx);
    eevp_head_free(head2);
    eevp_head_free(head);
    FUZZ_CHECK(ha.live == 0 && sa.live == 0 && ca.live == 0);
    return 0;
}
