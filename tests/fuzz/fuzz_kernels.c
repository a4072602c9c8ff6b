/* SPDX-License-Identifier: MIT */
/*
 * fuzz_kernels.c - the kernels with any shapes, strides, indices and values:
 * eevp_topk (checked against a sort), eevp_head_logits, eevp_head_gather
 * and eevp_head_pruned_logits (checked against each other), the workspace
 * queries.  Every buffer is exactly as long as its shape and leading
 * dimension require, so ASan sees a read or write past it; on an error the
 * outputs must be untouched.
 */
#include "fuzz_common.h"

enum { MAXN = 300, MAXV = 48, MAXD = 12 };

static int before(float av, int32_t ai, float bv, int32_t bi)
{
    return av > bv || (av == bv && ai < bi);
}

static void fuzz_topk(fz *f)
{
    int64_t n = fz_range(f, 0, 255);
    n += fz_range(f, 0, 45); /* one read per statement: a defined order */
    int32_t k = fz_range(f, -1, 255), j;
    static const int64_t offs[5] = { 0, 7, -1, 0, 0 };
    int64_t off = offs[fz_u8(f) % 5], ws;
    uint8_t mode = fz_u8(f);
    float *x = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    int32_t *ids, *ref;
    float *vals;
    void *work;
    int has_nan = 0, rc;
    int64_t i;

    FUZZ_CHECK(x != NULL);
    if (mode & 1)
        off = (int64_t)INT32_MAX - n + 1 + (mode >> 7); /* at or just past the limit */
    for (i = 0; i < n; i++) {
        /* Few distinct values make ties; the menu adds NaN and infinities. */
        x[i] = (mode & 2) ? (float)(fz_u8(f) % 4) : (mode & 4) ? fz_float(f) : fz_plain(f);
        has_nan |= isnan(x[i]);
    }
    ws = eevp_topk_workspace_size(n, k);
    if (n < 1 || k < 1 || k > n) {
        FUZZ_CHECK(ws < 0);
        free(x);
        return;
    }
    FUZZ_CHECK(ws >= 0);
    work = malloc((size_t)(ws > 0 ? ws : 1));
    ids = malloc(sizeof(int32_t) * (size_t)k);
    vals = malloc(sizeof(float) * (size_t)k);
    ref = malloc(sizeof(int32_t) * (size_t)n);
    FUZZ_CHECK(work && ids && vals && ref);
    for (j = 0; j < k; j++) {
        ids[j] = -5;
        vals[j] = -5.0f;
    }
    rc = eevp_topk(x, n, k, off, ids, (mode & 8) ? NULL : vals, work);
    if (off < 0 || n - 1 + off > INT32_MAX) {
        FUZZ_CHECK(rc == EEVP_ERANGE);
    } else if (has_nan) {
        FUZZ_CHECK(rc == EEVP_ENONFINITE);
    } else {
        /* Reference: insertion sort of all indices in the order. */
        FUZZ_CHECK(rc == EEVP_OK);
        for (i = 0; i < n; i++) {
            int64_t m = i;
            while (m > 0 && before(x[i], (int32_t)i, x[ref[m - 1]], ref[m - 1])) {
                ref[m] = ref[m - 1];
                m--;
            }
            ref[m] = (int32_t)i;
        }
        for (j = 0; j < k; j++) {
            FUZZ_CHECK(ids[j] == ref[j] + off);
            if (!(mode & 8))
                FUZZ_CHECK(memcmp(&vals[j], &x[ref[j]], sizeof(float)) == 0);
        }
    }
    if (rc != EEVP_OK)
        for (j = 0; j < k; j++)
            FUZZ_CHECK(ids[j] == -5 && vals[j] == -5.0f);
    free(x);
    free(work);
    free(ids);
    free(vals);
    free(ref);
}

static void fuzz_head(fz *f)
{
    eevp_head_options o;
    eevp_head *h = NULL;
    int64_t V = fz_range(f, 1, MAXV), d = fz_range(f, 1, MAXD);
    int64_t stride = d + fz_range(f, 0, 2), span = (V - 1) * stride + d;
    int32_t n = fz_range(f, -1, 5), k = fz_range(f, 0, (int32_t)V + 1), j;
    int64_t ldh = d + fz_range(f, -1, 2), ldz = V + fz_range(f, -1, 2), ldr = d + fz_range(f, -1, 1);
    int64_t ldp = k + fz_range(f, -1, 1), ws, off, r, c;
    uint8_t mode = fz_u8(f);
    float *W = malloc(sizeof(float) * (size_t)span), *bias = malloc(sizeof(float) * (size_t)V);
    float *hid = NULL, *z = NULL, *zp = NULL, *rows = NULL, *rb = NULL;
    int32_t *ids = NULL;
    void *work = NULL;
    double hmax = 0.0;
    int rc, rc2, hidden_ok = 1;

    FUZZ_CHECK(W && bias);
    for (r = 0; r < span; r++)
        W[r] = fz_plain(f);
    for (r = 0; r < V; r++)
        bias[r] = (fz_u8(f) & 7) == 0 ? -INFINITY : fz_plain(f);
    off = (mode & 1) ? 100 : 0;
    eevp_head_options_init(&o);
    o.n_vocab = V;
    o.dim = d;
    o.row_stride = stride;
    o.weights = W;
    o.vocab_offset = off;
    o.norm = (mode >> 1) % 3;
    o.logit_bias = (mode & 8) ? bias : NULL;
    o.softcap = (mode & 16) ? 10.0f : 0.0f;
    o.flags = (mode >> 5) & 3u;
    FUZZ_CHECK(eevp_head_create(&h, &o, NULL, 0) == EEVP_OK);

    ws = eevp_head_workspace_size(h, n);
    if (n < 1) {
        FUZZ_CHECK(ws == EEVP_ERANGE);
        goto done;
    }
    FUZZ_CHECK(ws > 0);
    work = fz_aligned((size_t)ws);
    hid = malloc(sizeof(float) * (size_t)((n - 1) * (ldh > 0 ? ldh : 0) + d));
    z = malloc(sizeof(float) * (size_t)((n - 1) * (ldz > 0 ? ldz : 0) + V));
    FUZZ_CHECK(work && hid && z);
    for (r = 0; r < n; r++)
        for (c = 0; c < d && (ldh >= d || r == 0); c++) {
            float x = (mode & 128) ? fz_float(f) : fz_plain(f);
            hid[r * (ldh >= d ? ldh : 0) + c] = x;
            if (!isfinite(x))
                hidden_ok = 0;
            else if (fabs(x) > hmax)
                hmax = fabs(x);
        }
    for (r = 0; r < (n - 1) * (ldz > 0 ? ldz : 0) + V; r++)
        z[r] = -7.0f;

    rc = eevp_head_logits(h, n, hid, ldh, z, ldz, work);
    if (ldh < d || ldz < V) {
        FUZZ_CHECK(rc == EEVP_ERANGE || rc == EEVP_EINVAL);
    } else if (!hidden_ok) {
        FUZZ_CHECK(rc == EEVP_ENONFINITE);
    } else {
        FUZZ_CHECK(rc == EEVP_OK);
        /* Without the chance of overflow no logit is NaN or +Inf, and only
         * masked tokens are -Inf. */
        if (o.norm != EEVP_NORM_NONE || hmax < 1e30)
            for (r = 0; r < n; r++)
                for (c = 0; c < V; c++) {
                    float v = z[r * ldz + c];
                    FUZZ_CHECK(!isnan(v) && v != INFINITY);
                    FUZZ_CHECK((v == -INFINITY) == (o.logit_bias && bias[c] == -INFINITY));
                }
    }
    if (rc != EEVP_OK)
        for (r = 0; r < (n - 1) * (ldz > 0 ? ldz : 0) + V; r++)
            FUZZ_CHECK(z[r] == -7.0f);

    /* Gather k rows (some ids possibly outside the head). */
    ids = malloc(sizeof(int32_t) * (size_t)(k > 0 ? k : 1));
    rows = malloc(sizeof(float) * (size_t)(k > 0 ? (k - 1) * (ldr > 0 ? ldr : 0) + d : 1));
    rb = malloc(sizeof(float) * (size_t)(k > 0 ? k : 1));
    FUZZ_CHECK(ids && rows && rb);
    {
        int bad_id = 0;
        for (j = 0; j < k; j++) {
            uint8_t b = fz_u8(f);
            ids[j] = (int32_t)off + (b & 0x80 ? (int32_t)(b & 3) - 2 + (b & 4 ? (int32_t)V + 2 : 0)
                                               : (int32_t)(b % V));
            bad_id |= ids[j] < off || ids[j] >= off + V;
        }
        for (j = 0; j < k; j++)
            rb[j] = -9.0f;
        rc2 = eevp_head_gather(h, ids, k, rows, ldr, (mode & 4) ? NULL : rb);
        if (k < 1 || k > V || bad_id || ldr < d) {
            FUZZ_CHECK(rc2 == EEVP_ERANGE || rc2 == EEVP_EINVAL);
            for (j = 0; j < k; j++)
                FUZZ_CHECK(rb[j] == -9.0f);
            goto done;
        }
        FUZZ_CHECK(rc2 == EEVP_OK);
        for (j = 0; j < k; j++) {
            FUZZ_CHECK(memcmp(rows + j * ldr, W + (ids[j] - off) * stride,
                              sizeof(float) * (size_t)d) == 0);
            if (!(mode & 4))
                FUZZ_CHECK(rb[j] == (o.logit_bias ? bias[ids[j] - off] : 0.0f) ||
                           (isnan(rb[j]) && isnan(bias[ids[j] - off])));
        }
    }
    zp = malloc(sizeof(float) * (size_t)((n - 1) * (ldp > 0 ? ldp : 0) + k));
    FUZZ_CHECK(zp != NULL);
    rc2 = eevp_head_pruned_logits(h, k, rows, ldr, (mode & 4) ? NULL : rb, n, hid, ldh, zp, ldp,
                                  work);
    if (ldh < d || ldp < k) {
        FUZZ_CHECK(rc2 == EEVP_ERANGE || rc2 == EEVP_EINVAL);
    } else if (!hidden_ok) {
        FUZZ_CHECK(rc2 == EEVP_ENONFINITE);
    } else {
        FUZZ_CHECK(rc2 == EEVP_OK);
        /* The same logits as the full projection, up to rounding. */
        double X = o.norm == EEVP_NORM_NONE ? hmax : sqrt((double)d);
        if (rc == EEVP_OK && !(mode & 4) && hmax < 1e15)
            for (r = 0; r < n; r++)
                for (j = 0; j < k; j++) {
                    float a = zp[r * ldp + j], b = z[r * ldz + (ids[j] - off)];
                    FUZZ_CHECK(a == b || fabs((double)a - (double)b) <=
                                             1e-5 * (1.0 + fabs((double)b) + 2.0 * (double)d * X));
                }
    }
done:
    free(work);
    free(hid);
    free(z);
    free(zp);
    free(ids);
    free(rows);
    free(rb);
    eevp_head_free(h);
    free(W);
    free(bias);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz f = { data, size, 0 };
    int calls = 0;
    while (fz_left(&f) && calls++ < 8) {
        if (fz_u8(&f) & 1)
            fuzz_topk(&f);
        else
            fuzz_head(&f);
    }
    return 0;
}
