/* SPDX-License-Identifier: MIT */
/*
 * fuzz_shard.c - the shard record boundary: records from other processes
 * are untrusted.  A world of P = 1..4 shard contexts over a small head
 * (options from a menu) produces genuine records of a layer; the input then
 * corrupts them (flipped bits, overwritten bytes, a header field set to a
 * chosen value, another size) and merges them in an order it chooses, and
 * every rank absorbs the result.  A second mode hands raw input bytes to
 * eevp_shard_merge as both operands.
 *
 * Invariants: merge returns EEVP_OK or EEVP_ERECORD (EEVP_ERANGE only for a
 * size below a header); genuine records merge the same both ways round and
 * through any order; an error record stays one whatever is merged into it;
 * absorb returns a known code and, unless it refused its arguments, leaves
 * no exchange pending; after an error the context still begins, abandons
 * and ends steps; nothing is allocated after creation and nothing leaks.
 *
 * Layout: mode byte, world bytes, then one opcode byte per action and its
 * arguments.  Missing bytes read as zero.
 */
#include "fuzz_common.h"

enum { MAXP = 4, MAXV = 40, D = 8, L = 4, B = 3 };

typedef struct world {
    int32_t P, V, n_seq;
    float W[MAXV * D], hid[B * D];
    eevp_head *h[MAXP];
    eevp_ctx *c[MAXP];
    int64_t cap, size;
    unsigned char *rec[MAXP], *acc, *tmp;
} world;

static int known(int rc)
{
    return rc <= 0 && rc >= EEVP_ERECORD;
}

static void world_free(world *w)
{
    int32_t i;
    for (i = 0; i < w->P; i++) {
        eevp_ctx_free(w->c[i]);
        eevp_head_free(w->h[i]);
        free(w->rec[i]);
    }
    free(w->acc);
    free(w->tmp);
}

/* Create the world; 0 when the options are refused (fine: nothing to do). */
static int world_make(world *w, fz *f)
{
    eevp_ctx_options o;
    int32_t i, r0 = 0;
    memset(w, 0, sizeof *w);
    w->P = fz_range(f, 1, MAXP);
    w->V = fz_range(f, w->P + 1, MAXV);
    w->n_seq = fz_range(f, 1, B);
    for (i = 0; i < MAXV * D; i++)
        w->W[i] = (float)((int)fz_u8(f) - 128) / 64.0f;
    for (i = 0; i < B * D; i++)
        w->hid[i] = fz_float(f);
    eevp_ctx_options_init(&o);
    o.n_layers = L;
    o.max_batch = B;
    o.k = fz_range(f, 0, 12);
    o.criterion = fz_range(f, 0, 5);
    o.first_layer = fz_range(f, 0, L - 1);
    o.final_policy = fz_range(f, 0, 1);
    o.flags = (uint32_t)fz_range(f, 0, 3) & (EEVP_CTX_BATCH_INVARIANT | EEVP_CTX_EXACT_EXIT);
    o.threshold = fz_range(f, 0, 10) / 10.0f;
    for (i = 0; i < w->P; i++) {
        eevp_head_options ho = EEVP_HEAD_OPTIONS_INIT;
        eevp_shard_options so = EEVP_SHARD_OPTIONS_INIT;
        const int32_t left = w->V - r0 - (w->P - 1 - i);
        const int32_t n = i == w->P - 1 ? w->V - r0 : fz_range(f, 1, left < 200 ? left : 200);
        ho.n_vocab = n;
        ho.dim = D;
        ho.weights = w->W + (int64_t)r0 * D;
        ho.vocab_offset = r0;
        ho.norm = EEVP_NORM_RMS;
        FUZZ_CHECK(eevp_head_create(&w->h[i], &ho, NULL, 0) == EEVP_OK);
        so.shard_index = i;
        so.n_shards = w->P;
        so.total_vocab = w->V;
        if (eevp_ctx_create_shard(&w->c[i], w->h[i], &o, &so, NULL, 0) != EEVP_OK) {
            w->P = i + 1;
            return 0;
        }
        r0 += n;
    }
    w->cap = eevp_shard_record_capacity(w->c[0]);
    FUZZ_CHECK(w->cap > 64);
    for (i = 0; i < w->P; i++) {
        FUZZ_CHECK(eevp_shard_record_capacity(w->c[i]) == w->cap);
        w->rec[i] = (unsigned char *)malloc((size_t)w->cap);
        FUZZ_CHECK(w->rec[i] != NULL);
    }
    w->acc = (unsigned char *)malloc((size_t)w->cap);
    w->tmp = (unsigned char *)malloc((size_t)w->cap);
    FUZZ_CHECK(w->acc && w->tmp);
    return 1;
}

/* Every rank hands over `layer`; 1 when an exchange follows. */
static int produce(world *w, int32_t layer)
{
    int32_t i;
    for (i = 0; i < w->P; i++) {
        int64_t sz = -1;
        const int rc = eevp_shard_layer(w->c[i], layer, w->hid, D, w->n_seq, NULL, w->rec[i],
                                        w->cap, &sz);
        FUZZ_CHECK(known(rc));
        FUZZ_CHECK(sz >= 0 && sz <= w->cap);
        FUZZ_CHECK(i == 0 || sz == w->size);
        w->size = sz;
    }
    return w->size > 0;
}

/* Genuine records: both ways round and any order give the same bytes. */
static void check_order(world *w, fz *f)
{
    int32_t i;
    if (w->P < 2)
        return;
    memcpy(w->acc, w->rec[0], (size_t)w->size);
    FUZZ_CHECK(eevp_shard_merge(w->acc, w->rec[1], w->size) == EEVP_OK);
    memcpy(w->tmp, w->rec[1], (size_t)w->size);
    FUZZ_CHECK(eevp_shard_merge(w->tmp, w->rec[0], w->size) == EEVP_OK);
    FUZZ_CHECK(memcmp(w->acc, w->tmp, (size_t)w->size) == 0);
    for (i = 2; i < w->P; i++)
        FUZZ_CHECK(eevp_shard_merge(w->acc, w->rec[i], w->size) == EEVP_OK);
    /* The reverse fold from a rank the input picks. */
    {
        const int32_t s = fz_range(f, 0, w->P - 1);
        memcpy(w->tmp, w->rec[s], (size_t)w->size);
        for (i = w->P - 1; i >= 0; i--)
            if (i != s)
                FUZZ_CHECK(eevp_shard_merge(w->tmp, w->rec[i], w->size) == EEVP_OK);
        FUZZ_CHECK(memcmp(w->acc, w->tmp, (size_t)w->size) == 0);
    }
}

static void corrupt(world *w, fz *f, unsigned char *r)
{
    const uint8_t op = fz_u8(f);
    const int64_t at = (int64_t)fz_u32(f) % w->size;
    switch (op % 4) {
    case 0:
        r[at] ^= (unsigned char)(1u << (op >> 5));
        break;
    case 1:
        r[at] = fz_u8(f);
        break;
    case 2: { /* a 32-bit field of the header or the ranges */
        const uint32_t v = fz_u32(f);
        const int64_t o = 4 * (at % 24);
        if (o + 4 <= w->size)
            memcpy(r + o, &v, 4);
        break;
    }
    default: /* another rank's bytes over a stretch */
        memcpy(r + at, w->rec[fz_range(f, 0, w->P - 1)] + at,
               (size_t)((w->size - at) < 16 ? w->size - at : 16));
        break;
    }
}

static void absorb_all(world *w, fz *f)
{
    int32_t i;
    int64_t next = 0, size = w->size;
    for (i = 0; i < w->P; i++) {
        const int64_t sz = fz_u8(f) == 7 ? size - 1 : size;
        int rc = eevp_shard_absorb(w->c[i], w->acc, sz, w->rec[i], w->cap, &next);
        FUZZ_CHECK(known(rc));
        if (sz != size) {
            FUZZ_CHECK(rc == EEVP_ERANGE && next == 0);
            rc = eevp_shard_absorb(w->c[i], w->acc, size, w->rec[i], w->cap, &next);
            FUZZ_CHECK(known(rc));
        }
        FUZZ_CHECK(next >= 0 && next <= w->cap);
        /* A second exchange, if any, is dropped: the step is abandoned. */
        if (next > 0)
            FUZZ_CHECK(eevp_step_abandon(w->c[i]) == EEVP_OK);
        /* No exchange pending any more. */
        FUZZ_CHECK(eevp_shard_absorb(w->c[i], w->acc, size, w->rec[i], w->cap, &next) ==
                   EEVP_ESTATE);
    }
}

static void raw_mode(const uint8_t *data, size_t n)
{
    const int64_t half = (int64_t)n / 2;
    unsigned char *a, *b;
    int rc;
    if (half < 1)
        return;
    a = (unsigned char *)malloc((size_t)half);
    b = (unsigned char *)malloc((size_t)half);
    FUZZ_CHECK(a && b);
    memcpy(a, data, (size_t)half);
    memcpy(b, data + half, (size_t)half);
    rc = eevp_shard_merge(a, b, half);
    FUZZ_CHECK(half < 64 ? rc == EEVP_ERANGE : (rc == EEVP_OK || rc == EEVP_ERECORD));
    if (rc == EEVP_ERECORD)
        FUZZ_CHECK(eevp_shard_merge(a, b, half) == EEVP_ERECORD);
    free(a);
    free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz f = {data, size, 0};
    world w;
    int32_t layer, i, rounds = 0;
    if (size > 0 && data[0] == 0xff) {
        raw_mode(data + 1, size - 1);
        return 0;
    }
    (void)fz_u8(&f);
    if (!world_make(&w, &f)) {
        world_free(&w);
        return 0;
    }
    for (i = 0; i < w.P; i++)
        FUZZ_CHECK(eevp_step_begin(w.c[i], w.n_seq, NULL) == EEVP_OK);
    for (layer = 0; layer < L && rounds < 6; layer++) {
        if (eevp_step_n_running(w.c[0]) <= 0 || !produce(&w, layer))
            continue;
        rounds++;
        check_order(&w, &f);
        /* Corrupt some records, then merge in the input's order. */
        while (fz_u8(&f) & 1)
            corrupt(&w, &f, w.rec[fz_range(&f, 0, w.P - 1)]);
        memcpy(w.acc, w.rec[fz_range(&f, 0, w.P - 1)], (size_t)w.size);
        for (i = 0; i < w.P + (int32_t)fz_range(&f, 0, 2); i++) {
            const int rc = eevp_shard_merge(w.acc, w.rec[fz_range(&f, 0, w.P - 1)], w.size);
            FUZZ_CHECK(rc == EEVP_OK || rc == EEVP_ERECORD);
            if (rc == EEVP_ERECORD) /* absorbs whatever follows */
                FUZZ_CHECK(eevp_shard_merge(w.acc, w.rec[0], w.size) == EEVP_ERECORD);
        }
        if (fz_u8(&f) & 1)
            corrupt(&w, &f, w.acc);
        absorb_all(&w, &f);
        for (i = 0; i < w.P; i++)
            FUZZ_CHECK(eevp_step_n_running(w.c[i]) >= 0);
    }
    for (i = 0; i < w.P; i++) {
        const int rc = eevp_step_end(w.c[i]);
        FUZZ_CHECK(rc == EEVP_OK || rc == EEVP_ESTATE);
        FUZZ_CHECK(eevp_step_abandon(w.c[i]) == EEVP_OK);
        FUZZ_CHECK(eevp_step_begin(w.c[i], 1, NULL) == EEVP_OK);
        FUZZ_CHECK(eevp_step_abandon(w.c[i]) == EEVP_OK);
    }
    world_free(&w);
    return 0;
}
