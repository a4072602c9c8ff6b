/* SPDX-License-Identifier: MIT */
/*
 * fuzz_options.c - eevp_head_options and eevp_ctx_options with any sizes and
 * values: the bytes of both structs come from the input (struct_size from a
 * menu of too small, first version, exact, larger with a zero tail and
 * larger with a non-zero tail), only the pointers are replaced by valid ones
 * or NULL.  Creation must either fail with a known code, *out NULL and
 * nothing allocated, or give objects whose queries agree with the options;
 * when the shapes are small enough to back with real arrays, one decoding
 * step runs on them.
 *
 * Arrays are only as long as the options say (ASan sees any read past
 * them).  Shapes too large for that are still created in borrowing mode,
 * which reads nothing, and exercise the size arithmetic, the memory
 * estimate and context creation under an allocator that refuses more than
 * 4 MiB.
 */
#include "fuzz_common.h"

#include <stddef.h>

enum { CAP_FLOATS = 1 << 14, TAIL = 16 };

static const uint8_t zeros[TAIL];

/* struct_size from a menu; writes the tail past sizeof when larger. */
static uint32_t pick_size(fz *f, size_t real, size_t first, unsigned char *tail)
{
    uint8_t c = fz_u8(f);
    memset(tail, 0, TAIL);
    switch (c % 7) {
    case 0: return 0;
    case 1: return (uint32_t)(first - 4);
    case 2: return (uint32_t)first;
    case 3: return (uint32_t)(real + TAIL); /* zero tail: accepted */
    case 4: {
        const int at = fz_u8(f) % TAIL; /* one read per statement: a defined order */
        tail[at] = (uint8_t)(fz_u8(f) | 1); /* non-zero tail: refused */
        return (uint32_t)(real + TAIL);
    }
    case 5: return (uint32_t)(real + 2); /* odd size, zero tail */
    default: return (uint32_t)real;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz f = { data, size, 0 };
    fz_alloc ha = { 0, 0, 0, (size_t)1 << 22 }, ca = { 0, 0, 0, (size_t)1 << 22 };
    eevp_allocator hal = { fz_alloc_fn, fz_free_fn, &ha }, cal = { fz_alloc_fn, fz_free_fn, &ca };
    eevp_allocator bad = { fz_alloc_fn, NULL, &ha };
    /* Each options struct lives in a buffer long enough for its tail. */
    unsigned char hbuf[sizeof(eevp_head_options) + TAIL], cbuf[sizeof(eevp_ctx_options) + TAIL];
    eevp_head_options ho;
    eevp_ctx_options co;
    eevp_head *head = NULL;
    eevp_ctx *ctx = NULL;
    float *W = NULL, *nw = NULL, *nb = NULL, *bias = NULL;
    uint16_t *Wh = NULL;
    int32_t *always = NULL, *statics = NULL;
    int64_t V, d, stride, span = 0, est = -1;
    int small, i, rc;
    uint32_t hsize, csize;
    uint8_t ptrs;
    char msg[48];

    /* ---- head options: raw bytes, then valid pointers ---- */
    memset(&ho, 0, sizeof ho);
    for (i = 0; i < (int)sizeof ho; i++)
        ((unsigned char *)&ho)[i] = fz_u8(&f);
    ptrs = fz_u8(&f);
    /* Keep the interesting small values frequent. */
    if (ptrs & 0x80) {
        ho.n_vocab = (int64_t)(fz_u8(&f) % 70) - 2;
        ho.dim = (int64_t)(fz_u8(&f) % 20) - 2;
        ho.row_stride = (fz_u8(&f) & 1) ? 0 : ho.dim + (int64_t)(fz_u8(&f) % 4) - 1;
        ho.weight_type = fz_range(&f, -1, 3);
        ho.screen_mult = fz_range(&f, -1, 4);
        /* Mostly valid scalars, so that creation gets past the checks. */
        if (fz_u8(&f) & 1) {
            ho.flags = fz_u8(&f) & 7u;
            ho.norm = fz_range(&f, -1, 3);
            ho.norm_eps = (fz_u8(&f) & 3) ? 1e-6f : fz_float(&f);
            ho.logit_scale = (fz_u8(&f) & 3) ? 0.0f : fz_float(&f);
            ho.softcap = (fz_u8(&f) & 3) ? 0.0f : fz_float(&f);
            ho.vocab_offset = (fz_u8(&f) & 3) ? 0 : (int64_t)fz_u32(&f) - 5;
        }
    }
    V = ho.n_vocab;
    d = ho.dim;
    stride = ho.row_stride ? ho.row_stride : ho.dim;
    small = V >= 1 && d >= 1 && stride >= d && V <= 4096 && d <= 4096 && stride <= 4096 &&
            (span = (V - 1) * stride + d) <= CAP_FLOATS;
    if (small) {
        uint32_t seed = fz_u32(&f) | 1u;
        W = malloc((size_t)span * sizeof(float));
        Wh = malloc((size_t)span * sizeof(uint16_t));
        FUZZ_CHECK(Wh != NULL);
        for (i = 0; i < span; i++) /* any bit pattern: NaN and Inf halves included */
            Wh[i] = (uint16_t)(fz_u8(&f) & 1 ? 0x3c00u ^ (uint16_t)(i * 2654435761u >> 20)
                                              : (uint16_t)fz_u32(&f));
        nw = malloc((size_t)d * sizeof(float));
        nb = malloc((size_t)d * sizeof(float));
        bias = malloc((size_t)V * sizeof(float));
        FUZZ_CHECK(W && nw && nb && bias);
        for (i = 0; i < span; i++) {
            seed = seed * 1664525u + 1013904223u;
            W[i] = (float)(seed >> 9) / 8388608.0f - 1.0f;
        }
        for (i = 0; i < d; i++) {
            nw[i] = fz_float(&f);
            nb[i] = fz_float(&f);
        }
        for (i = 0; i < V; i++)
            bias[i] = (fz_u8(&f) & 7) ? (float)i / (float)V : fz_float(&f);
    } else {
        /* Borrowed and never read: a token array is enough.  A copy would
         * read V x d floats, which no caller could back here. */
        W = malloc(sizeof(float));
        Wh = malloc(sizeof(uint16_t));
        FUZZ_CHECK(W != NULL && Wh != NULL);
        ho.flags &= ~(uint32_t)EEVP_HEAD_COPY;
        ho.screen_mult = 0; /* the int8 copy reads all of W */
    }
    /* Every pointer member is set here: a new one in the header must be
     * added, or the raw bytes would make it a wild pointer. */
    ho.weights = (ptrs & 1) ? W : NULL;
    ho.weights_half = (ptrs & 0x20) ? Wh : NULL;
    ho.norm_weight = (ptrs & 2) && small ? nw : NULL;
    ho.norm_bias = (ptrs & 4) && small ? nb : NULL;
    ho.logit_bias = (ptrs & 8) && small ? bias : NULL;
    ho.allocator = (ptrs & 0x10) ? &bad : &hal;
    hsize = pick_size(&f, sizeof ho, offsetof(eevp_head_options, allocator) + sizeof(void *),
                      hbuf + sizeof ho);
    ho.struct_size = hsize;
    memcpy(hbuf, &ho, sizeof ho);

    head = (eevp_head *)&f;
    memset(msg, 'x', sizeof msg);
    rc = eevp_head_create(&head, (const eevp_head_options *)(void *)hbuf, msg, sizeof msg);
    FUZZ_CHECK(fz_known_status(rc));
    FUZZ_CHECK(memchr(msg, '\0', sizeof msg) != NULL);
    if (rc != EEVP_OK) {
        FUZZ_CHECK(head == NULL && ha.live == 0 && msg[0] != '\0');
        goto out;
    }
    FUZZ_CHECK(msg[0] == '\0');
    FUZZ_CHECK((ho.weights || ho.weights_half) && !(ptrs & 0x10));
    /* A non-zero unknown tail is never accepted. */
    FUZZ_CHECK(hsize <= sizeof ho || memcmp(hbuf + sizeof ho, zeros, TAIL) == 0);
    FUZZ_CHECK(eevp_head_n_vocab(head) == V && eevp_head_dim(head) == d);
    FUZZ_CHECK(V >= 1 && V <= EEVP_MAX_VOCAB && d >= 1 && d <= EEVP_MAX_DIM);
    FUZZ_CHECK(eevp_head_vocab_offset(head) >= 0 &&
               eevp_head_vocab_offset(head) + V - 1 <= INT32_MAX);
    FUZZ_CHECK(eevp_head_memory(head) > 0);
    {
        int64_t ws = eevp_head_workspace_size(head, fz_range(&f, -1, 5));
        FUZZ_CHECK(ws > 0 || ws == EEVP_ERANGE || ws == EEVP_EOVERFLOW);
    }

    /* ---- context options ---- */
    memset(&co, 0, sizeof co);
    for (i = 0; i < (int)sizeof co; i++)
        ((unsigned char *)&co)[i] = fz_u8(&f);
    ptrs = fz_u8(&f);
    if (ptrs & 0x80) {
        co.n_layers = fz_range(&f, -1, 9);
        co.max_batch = fz_range(&f, -1, 9);
        co.k = fz_range(&f, -1, 80);
        co.first_layer = fz_range(&f, -1, 9);
        co.interval = fz_range(&f, -1, 4);
        co.prune_layer = fz_range(&f, -2, 9);
        co.final_policy = fz_range(&f, -1, 2);
        co.criterion = fz_range(&f, -1, 7);
        co.threshold = fz_float(&f);
        co.schedule = fz_range(&f, -1, 2);
        co.schedule_tau = fz_float(&f);
        co.max_length = fz_range(&f, -1, 100);
        co.patience = fz_range(&f, -1, 4);
        co.flags = fz_u8(&f) & 7u;
        co.n_always = fz_range(&f, -1, 6);
        co.static_mode = fz_range(&f, -1, 3);
        co.n_static = fz_range(&f, -1, 6);
        co.reprune_layer = fz_range(&f, -2, 9);
        co.reprune_every = fz_range(&f, -1, 3);
        co.adaptive_mass = fz_float(&f);
        co.k_min = fz_range(&f, -1, 80);
    }
    /* The lists: as long as their counts say, when those are sane. */
    if (co.n_always > 0 && co.n_always <= EEVP_MAX_LIST && (ptrs & 1)) {
        always = malloc((size_t)co.n_always * sizeof(int32_t));
        FUZZ_CHECK(always != NULL);
        for (i = 0; i < co.n_always; i++)
            always[i] = (int32_t)fz_u32(&f) % 100;
    }
    if (co.n_static > 0 && co.n_static <= EEVP_MAX_LIST && (ptrs & 2)) {
        statics = malloc((size_t)co.n_static * sizeof(int32_t));
        FUZZ_CHECK(statics != NULL);
        for (i = 0; i < co.n_static; i++)
            statics[i] = (int32_t)fz_u32(&f) % 100;
    }
    /* A non-NULL list pointer with a bad count would be the caller's bug. */
    co.always_ids = always;
    if (!always && co.n_always > 0 && !(ptrs & 4))
        co.n_always = 0;
    co.static_ids = statics;
    if (!statics && co.n_static > 0 && !(ptrs & 4))
        co.n_static = 0;
    co.allocator = (ptrs & 0x10) ? &bad : &cal;
    csize = pick_size(&f, sizeof co, offsetof(eevp_ctx_options, allocator) + sizeof(void *),
                      cbuf + sizeof co);
    co.struct_size = csize;
    memcpy(cbuf, &co, sizeof co);

    rc = eevp_ctx_memory_estimate(&est, head, (const eevp_ctx_options *)(void *)cbuf);
    FUZZ_CHECK(fz_known_status(rc));
    FUZZ_CHECK(rc == EEVP_OK ? est > 0 : est == 0);
    ctx = (eevp_ctx *)&f;
    memset(msg, 'x', sizeof msg);
    i = eevp_ctx_create(&ctx, head, (const eevp_ctx_options *)(void *)cbuf, msg, sizeof msg);
    FUZZ_CHECK(fz_known_status(i));
    FUZZ_CHECK(memchr(msg, '\0', sizeof msg) != NULL);
    FUZZ_CHECK(i != EEVP_OK || csize <= sizeof co || memcmp(cbuf + sizeof co, zeros, TAIL) == 0);
    if (i != EEVP_OK) {
        FUZZ_CHECK(ctx == NULL && ca.live == 0 && msg[0] != '\0');
        /* The estimate and the creation agree on what is valid. */
        FUZZ_CHECK(rc != EEVP_OK ? i == rc : i == EEVP_ENOMEM || (ptrs & 0x10));
        goto out_head;
    }
    FUZZ_CHECK(rc == EEVP_OK && eevp_ctx_memory(ctx) == est);
    FUZZ_CHECK(co.n_layers >= 1 && co.n_layers <= EEVP_MAX_LAYERS);
    FUZZ_CHECK(co.max_batch >= 1 && co.max_batch <= EEVP_MAX_BATCH);
    for (i = 0; i < co.n_layers && i < 64; i++)
        FUZZ_CHECK(eevp_ctx_layer_required(ctx, i) == 0 || eevp_ctx_layer_required(ctx, i) == 1);
    FUZZ_CHECK(eevp_ctx_layer_required(ctx, co.n_layers - 1) == 1);
    {
        float lambda;
        rc = eevp_ctx_threshold(ctx, fz_range(&f, 0, 255), &lambda);
        /* +INFINITY is a valid threshold (never exit early). */
        FUZZ_CHECK(rc == EEVP_OK && (isfinite(lambda) || lambda == INFINITY));
    }

    /* ---- one step, when the arrays are real ---- */
    if (small && co.n_layers <= 64 && co.max_batch <= 64) {
        int32_t n_seq = fz_range(&f, 1, co.max_batch < 255 ? co.max_batch : 255), l, s;
        float *h = malloc((size_t)(n_seq * d) * sizeof(float));
        FUZZ_CHECK(h != NULL);
        FUZZ_CHECK(eevp_step_begin(ctx, n_seq, NULL) == EEVP_OK);
        for (l = 0; l < co.n_layers && eevp_step_n_running(ctx) > 0; l++) {
            for (i = 0; i < n_seq * d; i++)
                h[i] = (fz_u8(&f) & 31) ? (float)((i * 7 + l * 3) % 11) - 5.0f : fz_float(&f);
            rc = eevp_step_layer(ctx, l, h, d, n_seq, NULL);
            FUZZ_CHECK(rc == EEVP_OK || rc == EEVP_ENONFINITE);
        }
        FUZZ_CHECK(eevp_step_n_running(ctx) == 0);
        FUZZ_CHECK(eevp_step_end(ctx) == EEVP_OK);
        for (s = 0; s < n_seq; s++) {
            eevp_result r;
            r.struct_size = sizeof r;
            FUZZ_CHECK(eevp_step_result(ctx, s, &r) == EEVP_OK);
            FUZZ_CHECK(r.reason != EEVP_REASON_RUNNING);
            if (r.reason != EEVP_REASON_ERROR)
                FUZZ_CHECK(r.token >= ho.vocab_offset && r.token < ho.vocab_offset + V);
        }
        free(h);
    }
    eevp_ctx_free(ctx);
    FUZZ_CHECK(ca.live == 0);
out_head:
    eevp_head_free(head);
    FUZZ_CHECK(ha.live == 0);
out:
    free(W);
    free(Wh);
    free(nw);
    free(nb);
    free(bias);
    free(always);
    free(statics);
    return 0;
}
