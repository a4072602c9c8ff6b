/* SPDX-License-Identifier: MIT */
/*
 * check_contract.c - the API contract: versions, status texts, options
 * initialisers, NULL handles, struct_size rules, argument ranges, calls out
 * of order, required layers, thresholds, borrowed vs copied heads, memory
 * accounting.
 */
#include <check.h>
#include <stddef.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctx.h" /* white box: the worker pool */
#include "eevp.h"
#include "ref.h"

Suite *make_contract_suite(void);

/* A non-NULL pointer that must never be dereferenced. */
#define FAKE_W ((const float *)(uintptr_t)4096)

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

static float *rand_floats(int64_t n, uint32_t seed, float lo, float hi)
{
    float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof *p);
    ck_assert_ptr_nonnull(p);
    fill_random(p, n, &seed, lo, hi);
    return p;
}

/* Borrowed head over W (V x d, packed, no norm). */
static eevp_head *head_on(const float *W, int64_t V, int64_t d, uint32_t flags,
                          const eevp_allocator *a)
{
    eevp_head_options o = EEVP_HEAD_OPTIONS_INIT;
    eevp_head *h = NULL;
    char msg[256] = "";
    o.flags = flags;
    o.n_vocab = V;
    o.dim = d;
    o.weights = W;
    o.allocator = a;
    int rc = eevp_head_create(&h, &o, msg, sizeof msg);
    ck_assert_msg(rc == EEVP_OK, "eevp_head_create: %d (%s)", rc, msg);
    ck_assert_ptr_nonnull(h);
    return h;
}

static eevp_ctx_options ctx_opts(int32_t L, int32_t batch, int32_t k, int32_t f, int32_t i,
                                 int32_t p)
{
    eevp_ctx_options o = EEVP_CTX_OPTIONS_INIT;
    o.n_layers = L;
    o.max_batch = batch;
    o.k = k;
    o.first_layer = f;
    o.interval = i;
    o.prune_layer = p;
    return o;
}

static eevp_ctx *ctx_on(const eevp_head *h, const eevp_ctx_options *o)
{
    eevp_ctx *c = NULL;
    char msg[256] = "";
    int rc = eevp_ctx_create(&c, h, o, msg, sizeof msg);
    ck_assert_msg(rc == EEVP_OK, "eevp_ctx_create: %d (%s)", rc, msg);
    ck_assert_ptr_nonnull(c);
    return c;
}

static int msg_ok(const char *msg, size_t size)
{
    return memchr(msg, '\0', size) != NULL && msg[0] != '\0';
}

static int in2(int rc, int a, int b)
{
    return rc == a || rc == b;
}

/* ------------------------------------------------------------------------ */
/* Version, status texts, initialisers                                      */
/* ------------------------------------------------------------------------ */

START_TEST(test_version)
{
    char buf[64];
    unsigned a = 99, b = 99, c = 99;
    char tail = 0;
    const char *s = eevp_version_string();

    ck_assert_uint_eq(EEVP_VERSION_NUMBER,
                      EEVP_VERSION_MAJOR * 10000 + EEVP_VERSION_MINOR * 100 + EEVP_VERSION_PATCH);
    ck_assert_uint_eq(eevp_version_number(), EEVP_VERSION_NUMBER);
    ck_assert_ptr_nonnull(s);
    ck_assert_str_eq(s, EEVP_VERSION_STRING);
    snprintf(buf, sizeof buf, "%d.%d.%d", EEVP_VERSION_MAJOR, EEVP_VERSION_MINOR,
             EEVP_VERSION_PATCH);
    ck_assert_str_eq(EEVP_VERSION_STRING, buf);
    ck_assert_int_eq(sscanf(s, "%u.%u.%u%c", &a, &b, &c, &tail), 3);
    ck_assert_uint_eq(a * 10000u + b * 100u + c, eevp_version_number());
    ck_assert_uint_eq(a, EEVP_VERSION_MAJOR);
}
END_TEST

START_TEST(test_strerror)
{
    static const int codes[] = { EEVP_OK,     EEVP_EINVAL,  EEVP_ERANGE, EEVP_EOVERFLOW,
                                 EEVP_ENOMEM, EEVP_ESTRUCT, EEVP_ESTATE, EEVP_EUSER,
                                 EEVP_ECALLBACK, EEVP_ENONFINITE, EEVP_EBUSY };
    static const int unknown[] = { -999, 5, 1, -11, INT_MIN, INT_MAX };
    const int n = (int)(sizeof codes / sizeof codes[0]);
    int i, j;

    /* The pinned values. */
    ck_assert_int_eq(EEVP_OK, 0);
    ck_assert_int_eq(EEVP_EINVAL, -1);
    ck_assert_int_eq(EEVP_ERANGE, -2);
    ck_assert_int_eq(EEVP_EOVERFLOW, -3);
    ck_assert_int_eq(EEVP_ENOMEM, -4);
    ck_assert_int_eq(EEVP_ESTRUCT, -5);
    ck_assert_int_eq(EEVP_ESTATE, -6);
    ck_assert_int_eq(EEVP_EUSER, -7);
    ck_assert_int_eq(EEVP_ECALLBACK, -8);
    ck_assert_int_eq(EEVP_ENONFINITE, -9);
    ck_assert_int_eq(EEVP_EBUSY, -10);

    for (i = 0; i < n; i++) {
        const char *s = eevp_strerror(codes[i]);
        ck_assert_msg(s != NULL, "strerror(%d) is NULL", codes[i]);
        ck_assert_msg(s[0] != '\0', "strerror(%d) is empty", codes[i]);
        for (j = 0; j < i; j++)
            ck_assert_msg(strcmp(s, eevp_strerror(codes[j])) != 0,
                          "strerror(%d) == strerror(%d): \"%s\"", codes[i], codes[j], s);
    }
    for (i = 0; i < (int)(sizeof unknown / sizeof unknown[0]); i++) {
        const char *s = eevp_strerror(unknown[i]);
        ck_assert_msg(s != NULL, "strerror(%d) is NULL", unknown[i]);
        ck_assert_msg(s[0] != '\0', "strerror(%d) is empty", unknown[i]);
        /* An unknown code must not claim to be a known one. */
        for (j = 0; j < n; j++)
            ck_assert_msg(strcmp(s, eevp_strerror(codes[j])) != 0,
                          "strerror(%d) reads like code %d: \"%s\"", unknown[i], codes[j], s);
    }
}
END_TEST

START_TEST(test_options_init)
{
    eevp_head_options hm = EEVP_HEAD_OPTIONS_INIT, hf;
    eevp_ctx_options cm = EEVP_CTX_OPTIONS_INIT, cf;

    memset(&hf, 0xff, sizeof hf);
    ck_assert_int_eq(eevp_head_options_init(&hf), EEVP_OK);
    ck_assert_uint_eq(hf.struct_size, sizeof(eevp_head_options));
    ck_assert_uint_eq(hf.struct_size, hm.struct_size);
    ck_assert_uint_eq(hf.flags, hm.flags);
    ck_assert_int_eq(hf.n_vocab, hm.n_vocab);
    ck_assert_int_eq(hf.dim, hm.dim);
    ck_assert_int_eq(hf.row_stride, hm.row_stride);
    ck_assert_ptr_eq(hf.weights, hm.weights);
    ck_assert_int_eq(hf.vocab_offset, hm.vocab_offset);
    ck_assert_int_eq(hf.norm, hm.norm);
    ck_assert(hf.norm_eps == hm.norm_eps);
    ck_assert_ptr_eq(hf.norm_weight, hm.norm_weight);
    ck_assert_ptr_eq(hf.norm_bias, hm.norm_bias);
    ck_assert_ptr_eq(hf.logit_bias, hm.logit_bias);
    ck_assert(hf.logit_scale == hm.logit_scale);
    ck_assert(hf.softcap == hm.softcap);
    ck_assert_ptr_eq(hf.allocator, hm.allocator);
    /* The documented defaults. */
    ck_assert_uint_eq(hm.flags, 0);
    ck_assert_int_eq(hm.norm, EEVP_NORM_NONE);
    ck_assert(hm.norm_eps == 1e-6f);
    ck_assert(hm.logit_scale == 1.0f);
    ck_assert(hm.softcap == 0.0f);
    ck_assert_ptr_null(hm.weights);

    memset(&cf, 0xff, sizeof cf);
    ck_assert_int_eq(eevp_ctx_options_init(&cf), EEVP_OK);
    ck_assert_uint_eq(cf.struct_size, sizeof(eevp_ctx_options));
    ck_assert_uint_eq(cf.struct_size, cm.struct_size);
    ck_assert_int_eq(cf.n_layers, cm.n_layers);
    ck_assert_int_eq(cf.max_batch, cm.max_batch);
    ck_assert_int_eq(cf.k, cm.k);
    ck_assert_int_eq(cf.first_layer, cm.first_layer);
    ck_assert_int_eq(cf.interval, cm.interval);
    ck_assert_int_eq(cf.prune_layer, cm.prune_layer);
    ck_assert_int_eq(cf.final_policy, cm.final_policy);
    ck_assert_int_eq(cf.criterion, cm.criterion);
    ck_assert(cf.threshold == cm.threshold);
    ck_assert_int_eq(cf.schedule, cm.schedule);
    ck_assert(cf.schedule_tau == cm.schedule_tau);
    ck_assert_int_eq(cf.max_length, cm.max_length);
    ck_assert_int_eq(cf.patience, cm.patience);
    ck_assert_ptr_eq(cf.allocator, cm.allocator);
    /* The documented defaults. */
    ck_assert_int_eq(cm.n_layers, 0);
    ck_assert_int_eq(cm.max_batch, 1);
    ck_assert_int_eq(cm.k, 256);
    ck_assert_int_eq(cm.first_layer, 0);
    ck_assert_int_eq(cm.interval, 1);
    ck_assert_int_eq(cm.prune_layer, -1);
    ck_assert_int_eq(cm.final_policy, EEVP_FINAL_FULL);
    ck_assert_int_eq(cm.criterion, EEVP_CRITERION_TOP2_GAP);
    ck_assert(cm.threshold == 0.9f);
    ck_assert_int_eq(cm.schedule, EEVP_SCHEDULE_CONSTANT);
    ck_assert(cm.schedule_tau == 4.0f);
    ck_assert_int_eq(cm.max_length, 1024);
    ck_assert_int_eq(cm.patience, 2);

    ck_assert_int_eq(eevp_head_options_init(NULL), EEVP_EINVAL);
    ck_assert_int_eq(eevp_ctx_options_init(NULL), EEVP_EINVAL);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* NULL handles                                                             */
/* ------------------------------------------------------------------------ */

static int dummy_decide(void *state, const eevp_exit_view *view, float *confidence,
                        int32_t *exit_)
{
    (void)state;
    (void)view;
    (void)exit_;
    *confidence = 0.0f;
    return 0;
}

START_TEST(test_null_handles)
{
    float buf[64];
    int32_t ids[8] = { 0 };
    int32_t n_out = 5;
    int64_t bytes = 77;
    float lambda = 0.0f;
    eevp_result r;
    eevp_stats st;
    int64_t hist[4];
    eevp_criterion_vtbl vt;
    eevp_head_options ho = EEVP_HEAD_OPTIONS_INIT;
    eevp_ctx_options co = ctx_opts(2, 1, 4, 0, 1, -1);
    eevp_head *h = (eevp_head *)&buf; /* sentinel, must be overwritten */
    eevp_ctx *c = (eevp_ctx *)&buf;

    memset(buf, 0, sizeof buf);
    memset(&vt, 0, sizeof vt);
    vt.struct_size = sizeof vt;
    vt.decide = dummy_decide;
    r.struct_size = sizeof r;
    st.struct_size = sizeof st;

    /* Free functions accept NULL. */
    eevp_head_free(NULL);
    eevp_ctx_free(NULL);

    /* Getters. */
    ck_assert_int_eq(eevp_head_n_vocab(NULL), EEVP_EINVAL);
    ck_assert_int_eq(eevp_head_dim(NULL), EEVP_EINVAL);
    ck_assert_int_eq(eevp_head_vocab_offset(NULL), EEVP_EINVAL);
    ck_assert_int_eq(eevp_head_memory(NULL), EEVP_EINVAL);
    ck_assert_int_eq(eevp_ctx_memory(NULL), EEVP_EINVAL);
    ck_assert_int_eq(eevp_ctx_layer_required(NULL, 0), EEVP_EINVAL);
    ck_assert_int_eq(eevp_step_n_running(NULL), EEVP_EINVAL);
    ck_assert_ptr_nonnull(eevp_ctx_errmsg(NULL));
    ck_assert(eevp_head_workspace_size(NULL, 1) == EEVP_EINVAL);

    /* Creation with NULL arguments. */
    ck_assert_int_eq(eevp_head_create(NULL, &ho, NULL, 0), EEVP_EINVAL);
    ck_assert_int_eq(eevp_head_create(&h, NULL, NULL, 0), EEVP_EINVAL);
    ck_assert_ptr_null(h);
    c = (eevp_ctx *)&buf;
    ck_assert_int_eq(eevp_ctx_create(&c, NULL, &co, NULL, 0), EEVP_EINVAL);
    ck_assert_ptr_null(c);
    ck_assert_int_eq(eevp_ctx_memory_estimate(&bytes, NULL, &co), EEVP_EINVAL);
    ck_assert_int_eq(bytes, 0);

    /* Everything on a NULL context. */
    ck_assert_int_eq(eevp_ctx_reset(NULL), EEVP_EINVAL);
    ck_assert_int_eq(eevp_step_begin(NULL, 1, NULL), EEVP_EINVAL);
    ck_assert_int_eq(eevp_step_layer(NULL, 0, buf, 4, 1, NULL), EEVP_EINVAL);
    ck_assert_int_eq(eevp_step_end(NULL), EEVP_EINVAL);
    ck_assert_int_eq(eevp_step_abandon(NULL), EEVP_EINVAL);
    ck_assert_int_eq(eevp_step_result(NULL, 0, &r), EEVP_EINVAL);
    ck_assert_int_eq(eevp_step_candidates(NULL, 0, 4, buf, ids, &n_out), EEVP_EINVAL);
    ck_assert_int_eq(n_out, 0);
    ck_assert_int_eq(eevp_ctx_set_criterion(NULL, &vt, NULL), EEVP_EINVAL);
    ck_assert_int_eq(eevp_ctx_threshold(NULL, 0, &lambda), EEVP_EINVAL);
    ck_assert_int_eq(eevp_ctx_stats(NULL, &st), EEVP_EINVAL);
    ck_assert_int_eq(eevp_ctx_exit_histogram(NULL, hist, 4), EEVP_EINVAL);
    ck_assert_int_eq(eevp_ctx_stats_reset(NULL), EEVP_EINVAL);

    /* Kernels on a NULL head / NULL buffers. */
    ck_assert_int_eq(eevp_head_logits(NULL, 1, buf, 4, buf + 16, 4, buf + 32), EEVP_EINVAL);
    ck_assert_int_eq(eevp_head_gather(NULL, ids, 1, buf, 4, NULL), EEVP_EINVAL);
    ck_assert_int_eq(eevp_head_pruned_logits(NULL, 1, buf, 4, NULL, 1, buf, 4, buf + 16, 4,
                                             buf + 32),
                     EEVP_EINVAL);
    ck_assert_int_eq(eevp_topk(NULL, 4, 1, 0, ids, NULL, buf + 32), EEVP_EINVAL);
    ck_assert_int_eq(eevp_topk(buf, 4, 1, 0, NULL, NULL, buf + 32), EEVP_EINVAL);

    /* NULL out-pointers on valid objects. */
    {
        float *W = rand_floats(8 * 4, 11, -1, 1);
        eevp_head *hh = head_on(W, 8, 4, 0, NULL);
        eevp_ctx *cc = ctx_on(hh, &co);
        ck_assert_int_eq(eevp_ctx_memory_estimate(NULL, hh, &co), EEVP_EINVAL);
        bytes = 77;
        ck_assert_int_eq(eevp_ctx_memory_estimate(&bytes, hh, NULL), EEVP_EINVAL);
        ck_assert_int_eq(bytes, 0);
        c = (eevp_ctx *)&buf;
        ck_assert_int_eq(eevp_ctx_create(&c, hh, NULL, NULL, 0), EEVP_EINVAL);
        ck_assert_ptr_null(c);
        ck_assert_int_eq(eevp_ctx_create(NULL, hh, &co, NULL, 0), EEVP_EINVAL);
        ck_assert_int_eq(eevp_ctx_threshold(cc, 0, NULL), EEVP_EINVAL);
        ck_assert_int_eq(eevp_ctx_stats(cc, NULL), EEVP_EINVAL);
        ck_assert_int_eq(eevp_ctx_exit_histogram(cc, NULL, 4), EEVP_EINVAL);
        ck_assert_int_eq(eevp_ctx_set_criterion(cc, NULL, NULL), EEVP_EINVAL);
        ck_assert(eevp_ctx_errmsg(cc)[0] != '\0');
        ck_assert_int_eq(eevp_step_begin(cc, 1, NULL), EEVP_OK);
        ck_assert_str_eq(eevp_ctx_errmsg(cc), "");
        ck_assert_int_eq(eevp_step_result(cc, 0, NULL), EEVP_EINVAL);
        ck_assert_int_eq(eevp_step_layer(cc, 0, NULL, 4, 1, NULL), EEVP_EINVAL);
        ck_assert(eevp_ctx_errmsg(cc)[0] != '\0');
        /* A vtbl without decide. */
        ck_assert_int_eq(eevp_step_abandon(cc), EEVP_OK);
        vt.decide = NULL;
        ck_assert_int_eq(eevp_ctx_set_criterion(cc, &vt, NULL), EEVP_EINVAL);
        eevp_ctx_free(cc);
        eevp_head_free(hh);
        free(W);
    }
}
END_TEST

/* ------------------------------------------------------------------------ */
/* struct_size rules                                                        */
/* ------------------------------------------------------------------------ */

#define TAIL 32

START_TEST(test_struct_head_options)
{
    float *W = rand_floats(6 * 3, 5, -1, 1);
    union {
        eevp_head_options o;
        unsigned char b[sizeof(eevp_head_options) + TAIL];
    } u;
    eevp_head *h;
    char msg[128];
    /* Below the first published layout (which ends at weight_type). */
    const uint32_t sizes_bad[] = { 0, 4, 8,
                                   (uint32_t)offsetof(eevp_head_options, weight_type) - 8,
                                   (uint32_t)offsetof(eevp_head_options, weight_type) - 1 };
    size_t i;

    for (i = 0; i < sizeof sizes_bad / sizeof sizes_bad[0]; i++) {
        memset(&u, 0, sizeof u);
        eevp_head_options_init(&u.o);
        u.o.n_vocab = 6;
        u.o.dim = 3;
        u.o.weights = W;
        u.o.struct_size = sizes_bad[i];
        h = (eevp_head *)W;
        msg[0] = '\0';
        ck_assert_msg(eevp_head_create(&h, &u.o, msg, sizeof msg) == EEVP_ESTRUCT,
                      "struct_size %u accepted", sizes_bad[i]);
        ck_assert_ptr_null(h);
        ck_assert(msg_ok(msg, sizeof msg));
    }

    /* Larger with a zero tail: accepted. */
    memset(&u, 0, sizeof u);
    eevp_head_options_init(&u.o);
    u.o.n_vocab = 6;
    u.o.dim = 3;
    u.o.weights = W;
    u.o.struct_size = sizeof u;
    h = NULL;
    ck_assert_int_eq(eevp_head_create(&h, &u.o, NULL, 0), EEVP_OK);
    ck_assert_ptr_nonnull(h);
    ck_assert_int_eq(eevp_head_n_vocab(h), 6);
    eevp_head_free(h);

    /* Larger with a non-zero byte anywhere in the tail: refused. */
    for (i = sizeof(eevp_head_options); i < sizeof u; i += 7) {
        u.b[i] = 1;
        h = (eevp_head *)W;
        ck_assert_int_eq(eevp_head_create(&h, &u.o, NULL, 0), EEVP_ESTRUCT);
        ck_assert_ptr_null(h);
        u.b[i] = 0;
    }
    u.b[sizeof u - 1] = 0x80;
    ck_assert_int_eq(eevp_head_create(&h, &u.o, NULL, 0), EEVP_ESTRUCT);
    free(W);
}
END_TEST

START_TEST(test_struct_ctx_options)
{
    float *W = rand_floats(6 * 3, 5, -1, 1);
    eevp_head *h = head_on(W, 6, 3, 0, NULL);
    union {
        eevp_ctx_options o;
        unsigned char b[sizeof(eevp_ctx_options) + TAIL];
    } u;
    eevp_ctx *c;
    int64_t bytes;
    char msg[128];
    /* Below the first published layout, which ends at k_min (sizeof may add
     * tail padding that a caller need not cover). */
    const uint32_t v1 = (uint32_t)(offsetof(eevp_ctx_options, k_min) + sizeof(int32_t));
    const uint32_t sizes_bad[] = { 0, 4, v1 - 8, v1 - 1 };
    size_t i;

    for (i = 0; i < sizeof sizes_bad / sizeof sizes_bad[0]; i++) {
        memset(&u, 0, sizeof u);
        u.o = ctx_opts(3, 1, 2, 0, 1, -1);
        u.o.struct_size = sizes_bad[i];
        c = (eevp_ctx *)W;
        msg[0] = '\0';
        ck_assert_msg(eevp_ctx_create(&c, h, &u.o, msg, sizeof msg) == EEVP_ESTRUCT,
                      "struct_size %u accepted", sizes_bad[i]);
        ck_assert_ptr_null(c);
        ck_assert(msg_ok(msg, sizeof msg));
        bytes = 5;
        ck_assert_int_eq(eevp_ctx_memory_estimate(&bytes, h, &u.o), EEVP_ESTRUCT);
        ck_assert_int_eq(bytes, 0);
    }

    memset(&u, 0, sizeof u);
    u.o = ctx_opts(3, 1, 2, 0, 1, -1);
    u.o.struct_size = sizeof u;
    c = NULL;
    ck_assert_int_eq(eevp_ctx_create(&c, h, &u.o, NULL, 0), EEVP_OK);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(eevp_ctx_memory_estimate(&bytes, h, &u.o), EEVP_OK);
    ck_assert_int_eq(bytes, eevp_ctx_memory(c));
    eevp_ctx_free(c);

    /* A 1.0 caller: struct_size = its sizeof (v1 rounded up to the struct's
     * alignment, padding after k_min included) with garbage in that padding
     * and in what lies beyond: it gets the defaults for what 1.1 appended
     * (no worker threads), which must start past that size. */
    {
        struct align_probe {
            char c;
            eevp_ctx_options o;
        };
        const uint32_t al = (uint32_t)offsetof(struct align_probe, o);
        const uint32_t size_1_0 = (v1 + al - 1) / al * al;
        ck_assert_uint_ge(offsetof(eevp_ctx_options, n_threads), size_1_0);
        u.o.struct_size = size_1_0;
    }
    u.o.reserved_1_0 = 0xa5a5a5a5u;
    u.o.n_threads = 7;
    c = NULL;
    ck_assert_int_eq(eevp_ctx_create(&c, h, &u.o, NULL, 0), EEVP_OK);
    ck_assert_ptr_null(c->pool);
    ck_assert_int_eq(eevp_ctx_memory_estimate(&bytes, h, &u.o), EEVP_OK);
    ck_assert_int_eq(bytes, eevp_ctx_memory(c));
    eevp_ctx_free(c);
    /* v1 exactly (no padding covered) works too. */
    u.o.struct_size = v1;
    ck_assert_int_eq(eevp_ctx_create(&c, h, &u.o, NULL, 0), EEVP_OK);
    eevp_ctx_free(c);
    u.o.struct_size = sizeof u;
    u.o.reserved_1_0 = 0;
    u.o.n_threads = 0;

    for (i = sizeof(eevp_ctx_options); i < sizeof u; i += 5) {
        u.b[i] = 0xff;
        c = (eevp_ctx *)W;
        ck_assert_int_eq(eevp_ctx_create(&c, h, &u.o, NULL, 0), EEVP_ESTRUCT);
        ck_assert_ptr_null(c);
        bytes = 5;
        ck_assert_int_eq(eevp_ctx_memory_estimate(&bytes, h, &u.o), EEVP_ESTRUCT);
        ck_assert_int_eq(bytes, 0);
        u.b[i] = 0;
    }
    eevp_head_free(h);
    free(W);
}
END_TEST

/* One resolved step on a one-layer context, for the output structs. */
static eevp_ctx *resolved_ctx(eevp_head **hp, float **Wp)
{
    float *W = rand_floats(6 * 3, 9, -1, 1);
    float x[3] = { 0.5f, -1.0f, 2.0f };
    eevp_head *h = head_on(W, 6, 3, 0, NULL);
    eevp_ctx_options o = ctx_opts(1, 1, 2, 0, 1, -1);
    eevp_ctx *c = ctx_on(h, &o);
    ck_assert_int_eq(eevp_step_begin(c, 1, NULL), EEVP_OK);
    ck_assert_int_eq(eevp_step_layer(c, 0, x, 3, 1, NULL), EEVP_OK);
    ck_assert_int_eq(eevp_step_end(c), EEVP_OK);
    *hp = h;
    *Wp = W;
    return c;
}

START_TEST(test_struct_result)
{
    eevp_head *h;
    float *W;
    eevp_ctx *c = resolved_ctx(&h, &W);
    union {
        eevp_result r;
        unsigned char b[sizeof(eevp_result) + TAIL];
    } u, ref;
    const uint32_t sizes_bad[] = { 0, 4, (uint32_t)sizeof(eevp_result) - 4 };
    size_t i;

    memset(&ref, 0, sizeof ref);
    ref.r.struct_size = sizeof(eevp_result);
    ck_assert_int_eq(eevp_step_result(c, 0, &ref.r), EEVP_OK);
    ck_assert_int_eq(ref.r.reason, EEVP_REASON_LAST_LAYER);
    ck_assert_int_eq(ref.r.layer, 0);

    for (i = 0; i < sizeof sizes_bad / sizeof sizes_bad[0]; i++) {
        memset(&u, 0x33, sizeof u);
        u.r.struct_size = sizes_bad[i];
        ck_assert_msg(eevp_step_result(c, 0, &u.r) == EEVP_ESTRUCT, "struct_size %u accepted",
                      sizes_bad[i]);
        /* Nothing written past struct_size. */
        ck_assert_uint_eq(u.r.struct_size, sizes_bad[i]);
        ck_assert_uint_eq(u.b[sizeof u - 1], 0x33);
        ck_assert_uint_eq(u.b[sizeof(uint32_t)], 0x33);
    }

    /* Larger, zero tail: accepted, the known part filled, the tail zero. */
    memset(&u, 0, sizeof u);
    u.r.struct_size = sizeof u;
    ck_assert_int_eq(eevp_step_result(c, 0, &u.r), EEVP_OK);
    ck_assert_int_eq(u.r.token, ref.r.token);
    ck_assert_int_eq(u.r.reason, ref.r.reason);
    for (i = sizeof(eevp_result); i < sizeof u; i++)
        ck_assert_uint_eq(u.b[i], 0);

    /* Larger, garbage tail: an output struct, so the library zero-fills
     * what it does not know (header: "zero-fills the rest of what
     * struct_size covers"). */
    memset(&u, 0x5c, sizeof u);
    u.r.struct_size = sizeof u;
    ck_assert_int_eq(eevp_step_result(c, 0, &u.r), EEVP_OK);
    ck_assert_int_eq(u.r.token, ref.r.token);
    for (i = sizeof(eevp_result); i < sizeof u; i++)
        ck_assert_uint_eq(u.b[i], 0);

    /* struct_size smaller than the union: nothing past it is written. */
    memset(&u, 0x5c, sizeof u);
    u.r.struct_size = sizeof(eevp_result) + 4;
    ck_assert_int_eq(eevp_step_result(c, 0, &u.r), EEVP_OK);
    for (i = sizeof(eevp_result); i < sizeof(eevp_result) + 4; i++)
        ck_assert_uint_eq(u.b[i], 0);
    for (i = sizeof(eevp_result) + 4; i < sizeof u; i++)
        ck_assert_uint_eq(u.b[i], 0x5c);

    eevp_ctx_free(c);
    eevp_head_free(h);
    free(W);
}
END_TEST

START_TEST(test_struct_stats)
{
    eevp_head *h;
    float *W;
    eevp_ctx *c = resolved_ctx(&h, &W);
    union {
        eevp_stats s;
        unsigned char b[sizeof(eevp_stats) + TAIL];
    } u;
    /* The last: short of the 1.0 layout, which ends at exact_exit_changed. */
    const uint32_t sizes_bad[] = { 0, 4, (uint32_t)offsetof(eevp_stats, exact_exit_changed) };
    size_t i;

    for (i = 0; i < sizeof sizes_bad / sizeof sizes_bad[0]; i++) {
        memset(&u, 0x33, sizeof u);
        u.s.struct_size = sizes_bad[i];
        ck_assert_msg(eevp_ctx_stats(c, &u.s) == EEVP_ESTRUCT, "struct_size %u accepted",
                      sizes_bad[i]);
        ck_assert_uint_eq(u.b[sizeof u - 1], 0x33);
    }
    memset(&u, 0x77, sizeof u);
    u.s.struct_size = sizeof u;
    ck_assert_int_eq(eevp_ctx_stats(c, &u.s), EEVP_OK);
    ck_assert_int_eq(u.s.tokens, 1);
    ck_assert_int_eq(u.s.n_layers, 1);
    ck_assert_int_eq(u.s.reached_last, 1);
    for (i = sizeof(eevp_stats); i < sizeof u; i++)
        ck_assert_uint_eq(u.b[i], 0);

    eevp_ctx_free(c);
    eevp_head_free(h);
    free(W);
}
END_TEST

static int destroyed;
static void count_destroy(void *state)
{
    (void)state;
    destroyed++;
}

START_TEST(test_struct_vtbl)
{
    float *W = rand_floats(6 * 3, 5, -1, 1);
    eevp_head *h = head_on(W, 6, 3, 0, NULL);
    eevp_ctx_options o = ctx_opts(3, 1, 2, 0, 1, -1);
    eevp_ctx *c = ctx_on(h, &o);
    union {
        eevp_criterion_vtbl v;
        unsigned char b[sizeof(eevp_criterion_vtbl) + TAIL];
    } u;
    const uint32_t sizes_bad[] = { 0, 4, (uint32_t)sizeof(eevp_criterion_vtbl) - 8 };
    size_t i;
    int state = 0;

    destroyed = 0;
    for (i = 0; i < sizeof sizes_bad / sizeof sizes_bad[0]; i++) {
        memset(&u, 0, sizeof u);
        u.v.decide = dummy_decide;
        u.v.destroy = count_destroy;
        u.v.needs = EEVP_NEEDS_LOGITS;
        u.v.struct_size = sizes_bad[i];
        ck_assert_msg(eevp_ctx_set_criterion(c, &u.v, &state) == EEVP_ESTRUCT,
                      "struct_size %u accepted", sizes_bad[i]);
        ck_assert(eevp_ctx_errmsg(c)[0] != '\0');
        ck_assert_int_eq(destroyed, 0);
    }
    memset(&u, 0, sizeof u);
    u.v.decide = dummy_decide;
    u.v.destroy = count_destroy;
    u.v.needs = EEVP_NEEDS_LOGITS;
    u.v.struct_size = sizeof u;
    u.b[sizeof u - 3] = 9;
    ck_assert_int_eq(eevp_ctx_set_criterion(c, &u.v, &state), EEVP_ESTRUCT);
    ck_assert_int_eq(destroyed, 0);
    u.b[sizeof u - 3] = 0;
    ck_assert_int_eq(eevp_ctx_set_criterion(c, &u.v, &state), EEVP_OK);
    ck_assert_str_eq(eevp_ctx_errmsg(c), "");
    ck_assert_int_eq(destroyed, 0);
    /* Replacing it destroys the previous state once. */
    u.v.struct_size = sizeof(eevp_criterion_vtbl);
    ck_assert_int_eq(eevp_ctx_set_criterion(c, &u.v, &state), EEVP_OK);
    ck_assert_int_eq(destroyed, 1);
    eevp_ctx_free(c);
    ck_assert_int_eq(destroyed, 2);
    eevp_head_free(h);
    free(W);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* eevp_head_create argument ranges                                         */
/* ------------------------------------------------------------------------ */

enum { HE_N = 34 };

START_TEST(test_head_create_errors)
{
    static float W[16 * 4], nw[4];
    eevp_head_options o = EEVP_HEAD_OPTIONS_INIT;
    eevp_allocator half = { test_alloc_fn, NULL, NULL };
    int e1, e2 = 0;
    const char *what;
    eevp_head *h;
    char msg[200];
    int rc;

    o.n_vocab = 16;
    o.dim = 4;
    o.weights = W;
    switch (_i) {
    case 0: what = "V = 0"; o.n_vocab = 0; e1 = EEVP_ERANGE; break;
    case 1: what = "V < 0"; o.n_vocab = -5; e1 = EEVP_ERANGE; break;
    case 2: what = "V > MAX_VOCAB"; o.n_vocab = EEVP_MAX_VOCAB + 1; o.weights = FAKE_W;
        e1 = EEVP_ERANGE; break;
    case 3: what = "d = 0"; o.dim = 0; e1 = EEVP_ERANGE; break;
    case 4: what = "d < 0"; o.dim = -1; e1 = EEVP_ERANGE; break;
    case 5: what = "d > MAX_DIM"; o.dim = EEVP_MAX_DIM + 1; o.n_vocab = 1; o.weights = FAKE_W;
        e1 = EEVP_ERANGE; break;
    case 6: what = "row_stride < d"; o.row_stride = 3; e1 = EEVP_ERANGE; break;
    case 7: what = "row_stride < 0"; o.row_stride = -4; e1 = EEVP_ERANGE; break;
    case 8: what = "weights NULL"; o.weights = NULL; e1 = EEVP_EINVAL; break;
    case 9: what = "vocab_offset < 0"; o.vocab_offset = -1; e1 = EEVP_ERANGE; break;
    case 10: what = "offset + V - 1 > INT32_MAX"; o.vocab_offset = (int64_t)INT32_MAX - 14;
        e1 = EEVP_ERANGE; break;
    case 11: what = "offset huge"; o.vocab_offset = INT64_MAX - 4; e1 = EEVP_ERANGE; break;
    case 12: what = "norm 3"; o.norm = 3; e1 = EEVP_EINVAL; break;
    case 13: what = "norm -1"; o.norm = -1; e1 = EEVP_EINVAL; break;
    case 14: what = "eps < 0"; o.norm = EEVP_NORM_RMS; o.norm_eps = -1e-6f; e1 = EEVP_ERANGE;
        break;
    case 15: what = "eps NaN"; o.norm = EEVP_NORM_RMS; o.norm_eps = NAN; e1 = EEVP_ERANGE;
        break;
    case 16: what = "scale < 0"; o.logit_scale = -1.0f; e1 = EEVP_ERANGE; break;
    case 17: what = "scale NaN"; o.logit_scale = NAN; e1 = EEVP_ERANGE; break;
    case 18: what = "softcap < 0"; o.softcap = -2.0f; e1 = EEVP_ERANGE; break;
    case 19: what = "softcap NaN"; o.softcap = NAN; e1 = EEVP_ERANGE; break;
    /* Strides past INT32_MAX are ERANGE by docs/ERRORS.md (BLAS leading
     * dimensions are int) before any product is formed. */
    case 20: what = "V * stride overflows"; o.n_vocab = 1 << 20; o.dim = 1;
        o.row_stride = INT64_MAX / 2; o.weights = FAKE_W; e1 = EEVP_ERANGE; break;
    case 21: what = "V * stride = 2^63"; o.n_vocab = (int64_t)1 << 21; o.dim = 1;
        o.row_stride = (int64_t)1 << 42; o.weights = FAKE_W; e1 = EEVP_ERANGE; break;
    case 22: what = "V * stride * 4 bytes = 2^64"; o.n_vocab = (int64_t)1 << 20; o.dim = 1;
        o.row_stride = (int64_t)1 << 42; o.weights = FAKE_W; e1 = EEVP_ERANGE; break;
    /* Every field in range, only the byte size of W overflows: EOVERFLOW. */
    case 27: what = "V = stride = INT32_MAX: 2^64 bytes"; o.n_vocab = INT32_MAX; o.dim = 1;
        o.row_stride = INT32_MAX; o.weights = FAKE_W; e1 = EEVP_EOVERFLOW; break;
    case 28: what = "vocab_offset INT32_MAX, V 2"; o.n_vocab = 2;
        o.vocab_offset = INT32_MAX; e1 = EEVP_ERANGE; break;
    case 29: what = "unknown flag"; o.flags = 0x100u; e1 = EEVP_EINVAL; break;
    case 23: what = "alloc without free"; half.opaque = NULL; o.allocator = &half;
        e1 = EEVP_EINVAL; break;
    case 24: what = "V = INT64_MAX"; o.n_vocab = INT64_MAX; o.weights = FAKE_W;
        e1 = EEVP_ERANGE; break;
    case 25: what = "eps -inf"; o.norm = EEVP_NORM_LAYER; o.norm_weight = nw;
        o.norm_eps = -INFINITY; e1 = EEVP_ERANGE; break;
    case 26: what = "scale -inf"; o.logit_scale = -INFINITY; e1 = EEVP_ERANGE; break;
    case 30: what = "norm_bias without layer norm"; o.norm = EEVP_NORM_RMS; o.norm_bias = nw;
        e1 = EEVP_EINVAL; break;
    case 31: what = "eps +inf"; o.norm = EEVP_NORM_RMS; o.norm_eps = INFINITY;
        e1 = EEVP_ERANGE; break;
    case 32: what = "softcap +inf"; o.softcap = INFINITY; e1 = EEVP_ERANGE; break;
    default: what = "scale +inf"; o.logit_scale = INFINITY; e1 = EEVP_ERANGE; break;
    }
    if (!e2)
        e2 = e1;
    h = (eevp_head *)W;
    memset(msg, 'x', sizeof msg);
    rc = eevp_head_create(&h, &o, msg, sizeof msg);
    ck_assert_msg(in2(rc, e1, e2), "%s: got %d (%s), want %d", what, rc, eevp_strerror(rc), e1);
    ck_assert_msg(h == NULL, "%s: *out not NULL", what);
    ck_assert_msg(msg_ok(msg, sizeof msg), "%s: no message", what);
    /* Same with msg NULL. */
    h = (eevp_head *)W;
    ck_assert_int_eq(eevp_head_create(&h, &o, NULL, 0), rc);
    ck_assert_ptr_null(h);
}
END_TEST

START_TEST(test_head_create_limits_ok)
{
    static float W[2 * 3 + 4];
    eevp_head_options o = EEVP_HEAD_OPTIONS_INIT;
    eevp_head *h = NULL;

    /* Highest ids allowed: offset + V - 1 == INT32_MAX. */
    o.n_vocab = 2;
    o.dim = 3;
    o.row_stride = 5;
    o.weights = W;
    o.vocab_offset = (int64_t)INT32_MAX - 1;
    ck_assert_int_eq(eevp_head_create(&h, &o, NULL, 0), EEVP_OK);
    ck_assert_int_eq(eevp_head_vocab_offset(h), (int64_t)INT32_MAX - 1);
    ck_assert_int_eq(eevp_head_n_vocab(h), 2);
    ck_assert_int_eq(eevp_head_dim(h), 3);
    eevp_head_free(h);

    /* eps 0, scale 0 (= 1), softcap 0 (= none) are all valid. */
    memset(&o, 0, sizeof o);
    eevp_head_options_init(&o);
    o.n_vocab = 2;
    o.dim = 3;
    o.weights = W;
    o.norm = EEVP_NORM_LAYER;
    o.norm_eps = 0.0f;
    o.logit_scale = 0.0f;
    o.softcap = 0.0f;
    h = NULL;
    ck_assert_int_eq(eevp_head_create(&h, &o, NULL, 0), EEVP_OK);
    eevp_head_free(h);
}
END_TEST

START_TEST(test_create_msg_buffer)
{
    eevp_head_options o = EEVP_HEAD_OPTIONS_INIT;
    eevp_head *h;
    char msg[32];
    size_t i;

    o.n_vocab = 0; /* invalid */
    o.dim = 4;
    o.weights = FAKE_W;
    /* msg_size 8: NUL-terminated within 8 bytes, nothing written beyond. */
    memset(msg, 'x', sizeof msg);
    ck_assert_int_eq(eevp_head_create(&h, &o, msg, 8), EEVP_ERANGE);
    ck_assert_ptr_nonnull(memchr(msg, '\0', 8));
    for (i = 8; i < sizeof msg; i++)
        ck_assert_int_eq(msg[i], 'x');
    /* msg_size 1: just the NUL. */
    memset(msg, 'x', sizeof msg);
    ck_assert_int_eq(eevp_head_create(&h, &o, msg, 1), EEVP_ERANGE);
    ck_assert_int_eq(msg[0], '\0');
    ck_assert_int_eq(msg[1], 'x');
    /* msg_size 0: nothing written. */
    memset(msg, 'x', sizeof msg);
    ck_assert_int_eq(eevp_head_create(&h, &o, msg, 0), EEVP_ERANGE);
    ck_assert_int_eq(msg[0], 'x');
}
END_TEST

/* ------------------------------------------------------------------------ */
/* eevp_ctx_create argument ranges                                          */
/* ------------------------------------------------------------------------ */

enum { CE_N = 33 };

START_TEST(test_ctx_create_errors)
{
    float *W = rand_floats(16 * 4, 3, -1, 1);
    eevp_head *h = head_on(W, 16, 4, 0, NULL);
    eevp_ctx_options o = ctx_opts(6, 2, 4, 1, 2, -1);
    eevp_allocator half = { NULL, test_free_fn, NULL };
    const char *what;
    int e1, e2 = 0, rc;
    eevp_ctx *c;
    int64_t bytes;
    char msg[200];

    switch (_i) {
    case 0: what = "n_layers 0"; o.n_layers = 0; o.first_layer = 0; e1 = EEVP_ERANGE; break;
    case 1: what = "n_layers < 0"; o.n_layers = -3; o.first_layer = 0; e1 = EEVP_ERANGE; break;
    case 2: what = "n_layers > MAX"; o.n_layers = EEVP_MAX_LAYERS + 1; e1 = EEVP_ERANGE; break;
    case 3: what = "max_batch 0"; o.max_batch = 0; e1 = EEVP_ERANGE; break;
    case 4: what = "max_batch > MAX"; o.max_batch = EEVP_MAX_BATCH + 1; e1 = EEVP_ERANGE; break;
    case 5: what = "max_batch < 0"; o.max_batch = -1; e1 = EEVP_ERANGE; break;
    case 6: what = "k < 0"; o.k = -1; e1 = EEVP_ERANGE; break;
    case 7: what = "first_layer == L"; o.first_layer = 6; e1 = EEVP_ERANGE; break;
    case 8: what = "first_layer > L"; o.first_layer = 100; e1 = EEVP_ERANGE; break;
    case 9: what = "first_layer < 0"; o.first_layer = -1; e1 = EEVP_ERANGE; break;
    case 10: what = "interval 0"; o.interval = 0; e1 = EEVP_ERANGE; break;
    case 11: what = "interval < 0"; o.interval = -2; e1 = EEVP_ERANGE; break;
    case 12: what = "prune_layer > first_layer"; o.prune_layer = 2; e1 = EEVP_ERANGE; break;
    case 13: what = "prune_layer < -1"; o.prune_layer = -2; e1 = EEVP_ERANGE; break;
    case 14: what = "final_policy 2"; o.final_policy = 2; e1 = EEVP_EINVAL; break;
    case 15: what = "final_policy -1"; o.final_policy = -1; e1 = EEVP_EINVAL; break;
    case 16: what = "criterion 7"; o.criterion = 7; e1 = EEVP_EINVAL; break;
    case 17: what = "criterion -1"; o.criterion = -1; e1 = EEVP_EINVAL; break;
    case 18: what = "criterion CUSTOM"; o.criterion = EEVP_CRITERION_CUSTOM;
        e1 = EEVP_EINVAL; break;
    case 19: what = "schedule 2"; o.schedule = 2; e1 = EEVP_EINVAL; break;
    case 20: what = "schedule -1"; o.schedule = -1; e1 = EEVP_EINVAL; break;
    case 21: what = "threshold NaN"; o.threshold = NAN; e1 = EEVP_ERANGE; break;
    case 22: what = "threshold -inf"; o.threshold = -INFINITY; e1 = EEVP_ERANGE; break;
    case 23: what = "max_length 0 with CALM"; o.schedule = EEVP_SCHEDULE_CALM;
        o.max_length = 0; e1 = EEVP_ERANGE; break;
    case 24: what = "max_length < 0 with CALM"; o.schedule = EEVP_SCHEDULE_CALM;
        o.max_length = -7; e1 = EEVP_ERANGE; break;
    case 25: what = "tau < 0 with CALM"; o.schedule = EEVP_SCHEDULE_CALM;
        o.schedule_tau = -1.0f; e1 = EEVP_ERANGE; break;
    case 26: what = "tau NaN with CALM"; o.schedule = EEVP_SCHEDULE_CALM;
        o.schedule_tau = NAN; e1 = EEVP_ERANGE; break;
    case 27: what = "patience 0 with STABILITY"; o.criterion = EEVP_CRITERION_STABILITY;
        o.patience = 0; e1 = EEVP_ERANGE; break;
    case 28: what = "patience < 0 with STABILITY"; o.criterion = EEVP_CRITERION_STABILITY;
        o.patience = -1; e1 = EEVP_ERANGE; break;
    case 29: what = "head NULL"; e1 = EEVP_EINVAL; break;
    case 30: what = "free without alloc"; o.allocator = &half; e1 = EEVP_EINVAL; break;
    case 31: what = "prune_layer > first_layer (f = 0)"; o.first_layer = 0; o.prune_layer = 1;
        e1 = EEVP_ERANGE; break;
    default: what = "tau inf with CALM"; o.schedule = EEVP_SCHEDULE_CALM;
        o.schedule_tau = INFINITY; e1 = EEVP_ERANGE; break;
    }
    if (!e2)
        e2 = e1;
    c = (eevp_ctx *)W;
    memset(msg, 'x', sizeof msg);
    rc = eevp_ctx_create(&c, _i == 29 ? NULL : h, &o, msg, sizeof msg);
    ck_assert_msg(in2(rc, e1, e2), "%s: got %d (%s), want %d", what, rc, eevp_strerror(rc), e1);
    ck_assert_msg(c == NULL, "%s: *out not NULL", what);
    ck_assert_msg(msg_ok(msg, sizeof msg), "%s: no message", what);
    bytes = 99;
    rc = eevp_ctx_memory_estimate(&bytes, _i == 29 ? NULL : h, &o);
    ck_assert_msg(in2(rc, e1, e2), "%s: estimate got %d", what, rc);
    ck_assert_int_eq(bytes, 0);
    eevp_head_free(h);
    free(W);
}
END_TEST

START_TEST(test_ctx_create_edges_ok)
{
    float *W = rand_floats(16 * 4, 3, -1, 1);
    eevp_head *h = head_on(W, 16, 4, 0, NULL);
    eevp_ctx_options o;
    eevp_ctx *c;

    /* k = 0 and k >= V: no pruning, valid. */
    o = ctx_opts(4, 1, 0, 0, 1, -1);
    c = ctx_on(h, &o);
    eevp_ctx_free(c);
    o = ctx_opts(4, 1, 1000, 0, 1, -1);
    c = ctx_on(h, &o);
    eevp_ctx_free(c);
    /* The limits themselves. */
    o = ctx_opts(EEVP_MAX_LAYERS, 1, 2, EEVP_MAX_LAYERS - 1, 1, 0);
    c = ctx_on(h, &o);
    eevp_ctx_free(c);
    o = ctx_opts(1, 1, 2, 0, 1000, 0);
    c = ctx_on(h, &o);
    eevp_ctx_free(c);
    /* Threshold: any finite value, and +INFINITY (never exit early). */
    o = ctx_opts(3, 2, 2, 1, 1, 0);
    o.threshold = -3.0f;
    c = ctx_on(h, &o);
    eevp_ctx_free(c);
    o.threshold = 1e30f;
    c = ctx_on(h, &o);
    eevp_ctx_free(c);
    o.threshold = INFINITY;
    c = ctx_on(h, &o);
    eevp_ctx_free(c);
    eevp_head_free(h);
    free(W);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Calls out of order                                                       */
/* ------------------------------------------------------------------------ */

/* V = 50, d = 8, L = 6, f = 2, i = 2, K = 4, batch 3: checked {2, 4, 5},
 * pruning at 2.  Sequence 0 exits at layer 2 (a hidden state along one row
 * of W, scaled up); sequences 1 and 2 (zero / tiny hidden states) run to the
 * last layer. */
#define SV 50
#define SD 8
#define SL 6
#define SB 3
#define SLD (SD + 3)

typedef struct scen {
    float *W;
    eevp_head *h;
    float hid[SL][SB * SLD];
} scen;

typedef struct snap {
    eevp_result r[SB];
    eevp_stats st;
    float cand_z[SB][SV];
    int32_t cand_id[SB][SV];
    int32_t n_cand[SB];
} snap;

static void scen_init(scen *s)
{
    uint32_t seed = 12345;
    int l, r, c;

    s->W = rand_floats(SV * SD, 77, -1, 1);
    s->h = head_on(s->W, SV, SD, 0, NULL);
    for (l = 0; l < SL; l++) {
        for (r = 0; r < SB; r++) {
            float *row = s->hid[l] + r * SLD;
            for (c = 0; c < SLD; c++)
                row[c] = NAN; /* padding between rows must not be read */
            for (c = 0; c < SD; c++) {
                if (r == 0)
                    row[c] = 60.0f * s->W[7 * SD + c];
                else if (r == 1)
                    row[c] = 0.0f;
                else
                    row[c] = (float)(0.001 * (ref_rand_unit(&seed) - 0.5));
            }
        }
    }
    /* Precondition from the reference: sequence 0 is confident at layer 2,
     * sequence 2 is not. */
    {
        ref_head rh = { SV, SD, SD, 0, s->W, EEVP_NORM_NONE, 0, NULL, NULL, NULL, 1, 0 };
        double z[SV];
        ref_logits(&rh, s->hid[2], z, NULL);
        ck_assert(ref_conf_top2(z, SV) > 0.95);
        ref_logits(&rh, s->hid[2] + 2 * SLD, z, NULL);
        ck_assert(ref_conf_top2(z, SV) < 0.5);
    }
}

static void scen_free(scen *s)
{
    eevp_head_free(s->h);
    free(s->W);
}

static eevp_ctx *scen_ctx(const scen *s)
{
    eevp_ctx_options o = ctx_opts(SL, SB, 4, 2, 2, -1);
    return ctx_on(s->h, &o);
}

static void take_snap(eevp_ctx *c, snap *sn)
{
    int s;
    memset(sn, 0, sizeof *sn);
    for (s = 0; s < SB; s++) {
        sn->r[s].struct_size = sizeof(eevp_result);
        ck_assert_int_eq(eevp_step_result(c, s, &sn->r[s]), EEVP_OK);
        ck_assert_int_eq(eevp_step_candidates(c, s, SV, sn->cand_z[s], sn->cand_id[s],
                                              &sn->n_cand[s]),
                         EEVP_OK);
    }
    sn->st.struct_size = sizeof(eevp_stats);
    ck_assert_int_eq(eevp_ctx_stats(c, &sn->st), EEVP_OK);
}

static void snap_eq(const snap *a, const snap *b, const char *what)
{
    int s;
    for (s = 0; s < SB; s++) {
        const eevp_result *x = &a->r[s], *y = &b->r[s];
        ck_assert_msg(x->reason == y->reason && x->status == y->status &&
                          x->token == y->token && x->layer == y->layer &&
                          x->pruned == y->pruned &&
                          memcmp(&x->confidence, &y->confidence, sizeof(float)) == 0 &&
                          memcmp(&x->threshold, &y->threshold, sizeof(float)) == 0,
                      "%s: seq %d result differs (token %d/%d layer %d/%d reason %d/%d)", what,
                      s, x->token, y->token, x->layer, y->layer, x->reason, y->reason);
        ck_assert_msg(a->n_cand[s] == b->n_cand[s] &&
                          memcmp(a->cand_z[s], b->cand_z[s],
                                 (size_t)a->n_cand[s] * sizeof(float)) == 0 &&
                          memcmp(a->cand_id[s], b->cand_id[s],
                                 (size_t)a->n_cand[s] * sizeof(int32_t)) == 0,
                      "%s: seq %d candidates differ", what, s);
    }
    ck_assert_msg(a->st.tokens == b->st.tokens && a->st.exited_early == b->st.exited_early &&
                      a->st.reached_last == b->st.reached_last &&
                      a->st.failed == b->st.failed && a->st.checks == b->st.checks &&
                      a->st.pruned_decisions == b->st.pruned_decisions &&
                      a->st.k_coverage_hits == b->st.k_coverage_hits &&
                      a->st.k_coverage_total == b->st.k_coverage_total &&
                      a->st.head_flops == b->st.head_flops &&
                      a->st.head_flops_baseline == b->st.head_flops_baseline &&
                      a->st.head_bytes == b->st.head_bytes &&
                      a->st.head_bytes_baseline == b->st.head_bytes_baseline,
                  "%s: statistics differ", what);
}

/* The correct sequence from phase `from` on (0 before begin, 1 after begin,
 * 2 after layer 2, 3 after layer 4). */
static void scen_run(eevp_ctx *c, const scen *s, int from)
{
    if (from <= 0)
        ck_assert_int_eq(eevp_step_begin(c, SB, NULL), EEVP_OK);
    if (from <= 1) {
        ck_assert_int_eq(eevp_step_layer(c, 2, s->hid[2], SLD, SB, NULL), EEVP_OK);
        ck_assert_str_eq(eevp_ctx_errmsg(c), "");
        ck_assert_int_eq(eevp_step_n_running(c), 2);
    }
    if (from <= 2)
        ck_assert_int_eq(eevp_step_layer(c, 4, s->hid[4], SLD, SB, NULL), EEVP_OK);
    ck_assert_int_eq(eevp_step_layer(c, 5, s->hid[5], SLD, SB, NULL), EEVP_OK);
    ck_assert_int_eq(eevp_step_n_running(c), 0);
    ck_assert_int_eq(eevp_step_end(c), EEVP_OK);
    ck_assert_str_eq(eevp_ctx_errmsg(c), "");
}

typedef struct inject {
    const char *what;
    int phase;
    int e1, e2;
    int is_const; /* a const-context function: no errmsg */
} inject;

static const inject injects[] = {
    /* 0 */ { "layer before begin", 0, EEVP_ESTATE, 0, 0 },
    /* 1 */ { "end before begin", 0, EEVP_ESTATE, 0, 0 },
    /* 2 */ { "begin n_seq 0", 0, EEVP_ERANGE, 0, 0 },
    /* 3 */ { "begin n_seq > max_batch", 0, EEVP_ERANGE, 0, 0 },
    /* 4 */ { "begin negative position", 0, EEVP_ERANGE, 0, 0 },
    /* 5 */ { "begin twice", 1, EEVP_ESTATE, 0, 0 },
    /* 6 */ { "layer -1", 1, EEVP_ERANGE, 0, 0 },
    /* 7 */ { "layer L", 1, EEVP_ERANGE, 0, 0 },
    /* 8 */ { "skip required layer 2", 1, EEVP_ESTATE, 0, 0 },
    /* 9 */ { "hidden NULL", 1, EEVP_EINVAL, 0, 0 },
    /* 10 */ { "ld < d", 1, EEVP_ERANGE, 0, 0 },
    /* 11 */ { "n_rows 2 of 3", 1, EEVP_ERANGE, 0, 0 },
    /* 12 */ { "n_rows 0", 1, EEVP_ERANGE, 0, 0 },
    /* 13 */ { "layer repeated", 2, EEVP_ESTATE, 0, 0 },
    /* 14 */ { "layer decreasing", 2, EEVP_ESTATE, 0, 0 },
    /* 15 */ { "skip required layer 4", 2, EEVP_ESTATE, 0, 0 },
    /* 16 */ { "row_seq {0, 1, 2}: 3 rows, 2 running", 2, EEVP_ERANGE, 0, 0 },
    /* 17 */ { "row_seq names an unknown sequence", 2, EEVP_ERANGE, 0, 0 },
    /* 18 */ { "row_seq duplicate", 2, EEVP_EINVAL, 0, 0 },
    /* 19 */ { "row_seq misses one", 2, EEVP_ERANGE, 0, 0 },
    /* 20 */ { "row_seq negative", 2, EEVP_ERANGE, 0, 0 },
    /* 21 */ { "n_rows matches neither n_seq nor running", 2, EEVP_ERANGE, 0, 0 },
    /* 22 */ { "end with running sequences", 2, EEVP_ESTATE, 0, 0 },
    /* 23 */ { "layer 4 repeated", 3, EEVP_ESTATE, 0, 0 },
    /* 24 */ { "layer 3 after 4", 3, EEVP_ESTATE, 0, 0 },
    /* 25 */ { "set_criterion during a step", 2, EEVP_ESTATE, 0, 0 },
    /* 26 */ { "result of an unknown sequence", 2, EEVP_ERANGE, 0, 1 },
    /* 27 */ { "candidates of a running sequence", 2, EEVP_ESTATE, 0, 0 },
    /* 28 */ { "candidates of an unknown sequence", 2, EEVP_ERANGE, 0, 0 },
    /* 29 */ { "candidates with negative capacity", 2, EEVP_ERANGE, 0, 0 },
    /* 30 */ { "end with running sequences (after 4)", 3, EEVP_ESTATE, 0, 0 },
    /* 31 */ { "ld < d after pruning", 3, EEVP_ERANGE, 0, 0 },
    /* 32 */ { "result of a negative sequence", 1, EEVP_ERANGE, 0, 1 },
    /* 33 */ { "row_seq {0, 2}: 0 finished, right count", 2, EEVP_EINVAL, 0, 0 },
    /* 34 */ { "row_seq {2, 1, 2}: too many rows", 2, EEVP_ERANGE, 0, 0 },
};
#define N_INJECT ((int)(sizeof injects / sizeof injects[0]))

static int do_inject(eevp_ctx *c, const scen *s, int k)
{
    int32_t pos[SB + 1] = { 0, 0, 0, 0 };
    int32_t map[3];
    float z[4];
    int32_t id[4];
    int32_t n_out = 9;
    eevp_result r;
    eevp_criterion_vtbl vt;
    int rc;

    switch (k) {
    case 0: return eevp_step_layer(c, 2, s->hid[2], SLD, SB, NULL);
    case 1: return eevp_step_end(c);
    case 2: return eevp_step_begin(c, 0, NULL);
    case 3: return eevp_step_begin(c, SB + 1, pos);
    case 4: pos[1] = -1; return eevp_step_begin(c, SB, pos);
    case 5: return eevp_step_begin(c, 2, NULL);
    case 6: return eevp_step_layer(c, -1, s->hid[2], SLD, SB, NULL);
    case 7: return eevp_step_layer(c, SL, s->hid[2], SLD, SB, NULL);
    case 8: return eevp_step_layer(c, 4, s->hid[4], SLD, SB, NULL);
    case 9: return eevp_step_layer(c, 2, NULL, SLD, SB, NULL);
    case 10: return eevp_step_layer(c, 2, s->hid[2], SD - 1, SB, NULL);
    case 11: return eevp_step_layer(c, 2, s->hid[2], SLD, 2, NULL);
    case 12: return eevp_step_layer(c, 2, s->hid[2], SLD, 0, NULL);
    case 13: return eevp_step_layer(c, 2, s->hid[2], SLD, SB, NULL);
    case 14: return eevp_step_layer(c, 1, s->hid[1], SLD, SB, NULL);
    case 15: return eevp_step_layer(c, 5, s->hid[5], SLD, SB, NULL);
    case 16: map[0] = 0; map[1] = 1; map[2] = 2;
        return eevp_step_layer(c, 4, s->hid[4], SLD, 3, map);
    case 17: map[0] = 1; map[1] = 3;
        return eevp_step_layer(c, 4, s->hid[4], SLD, 2, map);
    case 18: map[0] = 1; map[1] = 1;
        return eevp_step_layer(c, 4, s->hid[4], SLD, 2, map);
    case 19: map[0] = 2;
        return eevp_step_layer(c, 4, s->hid[4], SLD, 1, map);
    case 20: map[0] = 2; map[1] = -1;
        return eevp_step_layer(c, 4, s->hid[4], SLD, 2, map);
    case 21: return eevp_step_layer(c, 4, s->hid[4], SLD, 1, NULL);
    case 22: return eevp_step_end(c);
    case 23: return eevp_step_layer(c, 4, s->hid[4], SLD, SB, NULL);
    case 24: return eevp_step_layer(c, 3, s->hid[3], SLD, SB, NULL);
    case 25:
        memset(&vt, 0, sizeof vt);
        vt.struct_size = sizeof vt;
        vt.decide = dummy_decide;
        vt.destroy = count_destroy;
        destroyed = 0;
        rc = eevp_ctx_set_criterion(c, &vt, NULL);
        ck_assert_int_eq(destroyed, 0);
        return rc;
    case 26: r.struct_size = sizeof r; return eevp_step_result(c, SB, &r);
    case 27:
        rc = eevp_step_candidates(c, 1, 4, z, id, &n_out);
        ck_assert_int_eq(n_out, 0);
        return rc;
    case 28:
        rc = eevp_step_candidates(c, SB, 4, z, id, &n_out);
        ck_assert_int_eq(n_out, 0);
        return rc;
    case 29:
        rc = eevp_step_candidates(c, 0, -1, z, id, &n_out);
        ck_assert_int_eq(n_out, 0);
        return rc;
    case 30: return eevp_step_end(c);
    case 31: return eevp_step_layer(c, 5, s->hid[5], SD - 1, SB, NULL);
    case 32: r.struct_size = sizeof r; return eevp_step_result(c, -1, &r);
    case 33: map[0] = 0; map[1] = 2;
        return eevp_step_layer(c, 4, s->hid[4], SLD, 2, map);
    default: map[0] = 2; map[1] = 1; map[2] = 2;
        return eevp_step_layer(c, 4, s->hid[4], SLD, 3, map);
    }
}

START_TEST(test_out_of_order)
{
    const inject *in = &injects[_i];
    scen s;
    snap fresh, got;
    eevp_ctx *c0, *c;
    int rc, phase, running_before;

    scen_init(&s);
    c0 = scen_ctx(&s);
    scen_run(c0, &s, 0);
    take_snap(c0, &fresh);
    eevp_ctx_free(c0);

    c = scen_ctx(&s);
    for (phase = 0; phase <= 3; phase++) {
        if (phase == in->phase) {
            running_before = eevp_step_n_running(c);
            rc = do_inject(c, &s, _i);
            ck_assert_msg(in2(rc, in->e1, in->e2 ? in->e2 : in->e1),
                          "%s: got %d (%s), want %d (%s)", in->what, rc, eevp_strerror(rc),
                          in->e1, eevp_strerror(in->e1));
            if (!in->is_const)
                ck_assert_msg(eevp_ctx_errmsg(c)[0] != '\0', "%s: empty errmsg", in->what);
            ck_assert_msg(eevp_step_n_running(c) == running_before,
                          "%s: running count changed", in->what);
            scen_run(c, &s, phase);
            break;
        }
        switch (phase) {
        case 0: ck_assert_int_eq(eevp_step_begin(c, SB, NULL), EEVP_OK); break;
        case 1: ck_assert_int_eq(eevp_step_layer(c, 2, s.hid[2], SLD, SB, NULL), EEVP_OK); break;
        case 2: ck_assert_int_eq(eevp_step_layer(c, 4, s.hid[4], SLD, SB, NULL), EEVP_OK); break;
        default: break;
        }
    }
    take_snap(c, &got);
    snap_eq(&got, &fresh, in->what);
    /* A second, clean step on the same context gives the same decisions. */
    scen_run(c, &s, 0);
    {
        snap again;
        take_snap(c, &again);
        ck_assert_int_eq(again.st.tokens, 2 * SB);
        for (phase = 0; phase < SB; phase++)
            ck_assert_int_eq(again.r[phase].token, fresh.r[phase].token);
    }
    eevp_ctx_free(c);
    scen_free(&s);
}
END_TEST

/* Equivalent ways of handing over the same rows give the same results. */
START_TEST(test_row_forms)
{
    scen s;
    snap fresh, got;
    eevp_ctx *c0, *c;
    float compact[2 * SLD], perm[2 * SLD];
    int32_t map[2] = { 2, 1 };
    int l;

    scen_init(&s);
    c0 = scen_ctx(&s);
    scen_run(c0, &s, 0);
    take_snap(c0, &fresh);
    eevp_ctx_free(c0);
    ck_assert_int_eq(fresh.r[0].reason, EEVP_REASON_CONFIDENT);
    ck_assert_int_eq(fresh.r[0].layer, 2);
    {
        ref_head rh = { SV, SD, SD, 0, s.W, EEVP_NORM_NONE, 0, NULL, NULL, NULL, 1, 0 };
        double z[SV];
        int32_t order[SV];
        ref_logits(&rh, s.hid[2], z, NULL);
        ref_order(z, NULL, SV, order);
        ck_assert_int_eq(fresh.r[0].token, order[0]);
    }
    ck_assert_int_eq(fresh.r[1].reason, EEVP_REASON_LAST_LAYER);
    ck_assert_int_eq(fresh.r[2].reason, EEVP_REASON_LAST_LAYER);
    ck_assert_int_eq(fresh.r[2].layer, SL - 1);

    c = scen_ctx(&s);
    ck_assert_int_eq(eevp_step_begin(c, SB, NULL), EEVP_OK);
    /* Layers 0 and 1 are not required: handed over, ignored. */
    ck_assert_int_eq(eevp_ctx_layer_required(c, 0), 0);
    ck_assert_int_eq(eevp_step_layer(c, 0, s.hid[0], SLD, SB, NULL), EEVP_OK);
    ck_assert_int_eq(eevp_step_layer(c, 2, s.hid[2], SLD, SB, NULL), EEVP_OK);
    ck_assert_int_eq(eevp_step_n_running(c), 2);
    /* Layer 3 (not required) compacted; layer 4 by a permuted map; layer 5
     * compacted. */
    for (l = 3; l <= 5; l++) {
        memcpy(compact, s.hid[l] + 1 * SLD, SLD * sizeof(float));
        memcpy(compact + SLD, s.hid[l] + 2 * SLD, SLD * sizeof(float));
        memcpy(perm, s.hid[l] + 2 * SLD, SLD * sizeof(float));
        memcpy(perm + SLD, s.hid[l] + 1 * SLD, SLD * sizeof(float));
        if (l == 4)
            ck_assert_int_eq(eevp_step_layer(c, l, perm, SLD, 2, map), EEVP_OK);
        else
            ck_assert_int_eq(eevp_step_layer(c, l, compact, SLD, 2, NULL), EEVP_OK);
    }
    ck_assert_int_eq(eevp_step_end(c), EEVP_OK);
    take_snap(c, &got);
    snap_eq(&got, &fresh, "compacted / mapped rows");
    eevp_ctx_free(c);
    scen_free(&s);
}
END_TEST

/* Results stay readable after the step ends and after an abandon with no
 * step in progress; a reset forgets them. */
START_TEST(test_results_lifetime)
{
    eevp_head *h;
    float *W;
    eevp_ctx *c = resolved_ctx(&h, &W);
    eevp_result r;
    float z[6];
    int32_t id[6], n_out = 7;
    int64_t hist[2];

    r.struct_size = sizeof r;
    ck_assert_int_eq(eevp_step_result(c, 0, &r), EEVP_OK);
    ck_assert_int_eq(eevp_step_result(c, 1, &r), EEVP_ERANGE);
    ck_assert_int_eq(eevp_step_abandon(c), EEVP_OK);
    ck_assert_int_eq(eevp_step_result(c, 0, &r), EEVP_OK);
    ck_assert_int_eq(r.reason, EEVP_REASON_LAST_LAYER);
    ck_assert_int_eq(eevp_step_candidates(c, 0, 6, z, id, &n_out), EEVP_OK);
    ck_assert_int_eq(n_out, 6);
    ck_assert_int_eq(eevp_ctx_exit_histogram(c, hist, -1), EEVP_ERANGE);
    ck_assert_int_eq(eevp_ctx_exit_histogram(c, hist, 0), EEVP_OK);
    ck_assert_int_eq(eevp_ctx_exit_histogram(c, hist, 2), EEVP_OK);
    ck_assert_int_eq(hist[0], 1);
    ck_assert_int_eq(eevp_step_end(c), EEVP_ESTATE); /* already ended */
    ck_assert(eevp_ctx_errmsg(c)[0] != '\0');
    ck_assert_int_eq(eevp_ctx_reset(c), EEVP_OK);
    ck_assert_str_eq(eevp_ctx_errmsg(c), "");
    ck_assert_int_eq(eevp_step_result(c, 0, &r), EEVP_ERANGE);
    n_out = 7;
    ck_assert_int_eq(eevp_step_candidates(c, 0, 6, z, id, &n_out), EEVP_ERANGE);
    ck_assert_int_eq(n_out, 0);
    ck_assert_int_eq(eevp_step_n_running(c), 0);
    eevp_ctx_free(c);
    eevp_head_free(h);
    free(W);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Required layers                                                          */
/* ------------------------------------------------------------------------ */

typedef struct lrcase {
    int32_t L, f, i, p, k, crit;
} lrcase;

static const lrcase lrcases[] = {
    { 6, 2, 2, -1, 4, EEVP_CRITERION_TOP2_GAP },
    { 10, 3, 3, 1, 4, EEVP_CRITERION_TOP2_GAP },
    { 10, 3, 4, 1, 0, EEVP_CRITERION_TOP2_GAP },        /* k = 0: no pruning */
    { 10, 3, 4, 0, 64, EEVP_CRITERION_MAX_PROB },       /* k >= V: no pruning */
    { 10, 3, 3, 1, 4, EEVP_CRITERION_SATURATION },      /* no pruning */
    { 10, 5, 2, 5, 4, EEVP_CRITERION_SATURATION },
    { 1, 0, 1, -1, 4, EEVP_CRITERION_TOP2_GAP },
    { 8, 0, 100, 0, 4, EEVP_CRITERION_ENTROPY },
    { 12, 7, 1, 2, 4, EEVP_CRITERION_JS },
    { 12, 11, 1, 0, 8, EEVP_CRITERION_STABILITY },
    { 40, 5, 7, 4, 16, EEVP_CRITERION_TOP2_GAP },
};

START_TEST(test_layer_required)
{
    const lrcase *lc = &lrcases[_i];
    float *W = rand_floats(64 * 4, 8, -1, 1);
    eevp_head *h = head_on(W, 64, 4, 0, NULL);
    eevp_ctx_options o = ctx_opts(lc->L, 1, lc->k, lc->f, lc->i, lc->p);
    eevp_ctx *c;
    int32_t l, p = lc->p < 0 ? lc->f : lc->p;
    int pruning = lc->k > 0 && lc->k < 64 && lc->crit != EEVP_CRITERION_SATURATION;

    o.criterion = lc->crit;
    c = ctx_on(h, &o);
    for (l = 0; l < lc->L; l++) {
        int want = l == lc->L - 1 || (l >= lc->f && (l - lc->f) % lc->i == 0) ||
                   (pruning && l == p);
        ck_assert_msg(eevp_ctx_layer_required(c, l) == want,
                      "case %d: layer %d required %d, want %d", _i, l,
                      eevp_ctx_layer_required(c, l), want);
    }
    ck_assert_int_eq(eevp_ctx_layer_required(c, -1), EEVP_ERANGE);
    ck_assert_int_eq(eevp_ctx_layer_required(c, lc->L), EEVP_ERANGE);
    ck_assert_int_eq(eevp_ctx_layer_required(c, INT32_MAX), EEVP_ERANGE);
    eevp_ctx_free(c);
    eevp_head_free(h);
    free(W);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Threshold schedules                                                      */
/* ------------------------------------------------------------------------ */

START_TEST(test_threshold)
{
    static const int32_t ts[] = { 0, 1, 2, 17, 100, 511, 1023, 1024, 5000, INT32_MAX };
    static const struct { float thr, tau; int32_t N; } cases[] = {
        { 0.9f, 4.0f, 1024 }, { 0.5f, 0.0f, 10 }, { 0.99f, 10.0f, 1 }, { -0.25f, 2.5f, 300 },
        { 0.0f, 4.0f, 64 }, { 1.5f, 1.0f, 1000000 },
    };
    float *W = rand_floats(8 * 2, 8, -1, 1);
    eevp_head *h = head_on(W, 8, 2, 0, NULL);
    size_t ci, ti;

    for (ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        eevp_ctx_options o = ctx_opts(4, 1, 2, 0, 1, -1);
        eevp_ctx *c;
        float lambda;

        o.threshold = cases[ci].thr;
        o.schedule_tau = cases[ci].tau;
        o.max_length = cases[ci].N;
        /* Constant. */
        c = ctx_on(h, &o);
        for (ti = 0; ti < sizeof ts / sizeof ts[0]; ti++) {
            lambda = NAN;
            ck_assert_int_eq(eevp_ctx_threshold(c, ts[ti], &lambda), EEVP_OK);
            ck_assert_msg(lambda == cases[ci].thr, "constant: t=%d %g != %g", ts[ti],
                          (double)lambda, (double)cases[ci].thr);
        }
        lambda = 7.0f;
        ck_assert_int_eq(eevp_ctx_threshold(c, -1, &lambda), EEVP_ERANGE);
        ck_assert(lambda == 7.0f);
        eevp_ctx_free(c);
        /* CALM: lambda * (9 + exp(-tau t / N)) / 10. */
        o.schedule = EEVP_SCHEDULE_CALM;
        c = ctx_on(h, &o);
        for (ti = 0; ti < sizeof ts / sizeof ts[0]; ti++) {
            double want = ref_threshold_calm(cases[ci].thr, cases[ci].tau, ts[ti], cases[ci].N);
            lambda = NAN;
            ck_assert_int_eq(eevp_ctx_threshold(c, ts[ti], &lambda), EEVP_OK);
            ck_assert_msg(fabs((double)lambda - want) <= 8 * FLT_EPSILON * fabs(want) + 1e-30,
                          "CALM thr %g tau %g N %d t %d: %.9g, want %.9g",
                          (double)cases[ci].thr, (double)cases[ci].tau, cases[ci].N, ts[ti],
                          (double)lambda, want);
        }
        ck_assert_int_eq(eevp_ctx_threshold(c, -5, &lambda), EEVP_ERANGE);
        eevp_ctx_free(c);
    }
    eevp_head_free(h);
    free(W);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Borrowed and copied heads                                                */
/* ------------------------------------------------------------------------ */

static void head_logits_or_die(const eevp_head *h, const float *x, int64_t d, float *z)
{
    int64_t ws = eevp_head_workspace_size(h, 1);
    void *work;
    ck_assert(ws >= 0);
    work = canary_alloc_bytes((size_t)ws);
    ck_assert_int_eq(eevp_head_logits(h, 1, x, d, z, eevp_head_n_vocab(h), work), EEVP_OK);
    ck_assert(canary_ok_bytes(work, (size_t)ws));
    canary_free_bytes(work);
}

START_TEST(test_borrowed_vs_copy)
{
    enum { V = 9, D = 5 };
    float *W = rand_floats(V * D, 21, -1, 1);
    float *nw = rand_floats(D, 22, 0.5f, 1.5f);
    float *nb = rand_floats(D, 23, -0.5f, 0.5f);
    float *bias = rand_floats(V, 24, -1, 1);
    float keepW[V * D], keepnw[D], keepnb[D], keepbias[V];
    float x[D], z0[V], zb[V], zc[V];
    double zr[V], as[V];
    uint32_t seed = 5;
    eevp_head_options o = EEVP_HEAD_OPTIONS_INIT;
    eevp_head *hb = NULL, *hc = NULL;
    ref_head rh;
    int v;

    fill_random(x, D, &seed, -2, 2);
    o.n_vocab = V;
    o.dim = D;
    o.weights = W;
    o.norm = EEVP_NORM_LAYER;
    o.norm_weight = nw;
    o.norm_bias = nb;
    o.logit_bias = bias;
    ck_assert_int_eq(eevp_head_create(&hb, &o, NULL, 0), EEVP_OK);
    o.flags = EEVP_HEAD_COPY;
    ck_assert_int_eq(eevp_head_create(&hc, &o, NULL, 0), EEVP_OK);
    memcpy(keepW, W, sizeof keepW);
    memcpy(keepnw, nw, sizeof keepnw);
    memcpy(keepnb, nb, sizeof keepnb);
    memcpy(keepbias, bias, sizeof keepbias);

    head_logits_or_die(hb, x, D, z0);
    /* Change the caller's arrays: the borrowed head sees it. */
    W[2 * D + 1] += 3.0f;
    nw[0] *= 2.0f;
    nb[3] += 1.0f;
    bias[6] -= 4.0f;
    head_logits_or_die(hb, x, D, zb);
    rh = (ref_head){ V, D, D, 0, W, EEVP_NORM_LAYER, (double)1e-6f, nw, nb, bias, 1, 0 };
    ref_logits(&rh, x, zr, as);
    for (v = 0; v < V; v++) {
        ck_assert_msg(ref_close(zb[v], zr[v], D, as[v]), "borrowed v=%d: %.9g vs %.9g", v,
                      (double)zb[v], zr[v]);
        ck_assert_msg(zb[v] != z0[v], "borrowed head did not see the change at v=%d", v);
    }
    /* The copying head does not, even after the caller's arrays are gone. */
    free(W);
    free(nw);
    free(nb);
    free(bias);
    head_logits_or_die(hc, x, D, zc);
    rh = (ref_head){ V, D, D, 0, keepW, EEVP_NORM_LAYER, (double)1e-6f, keepnw, keepnb,
                     keepbias, 1, 0 };
    ref_logits(&rh, x, zr, as);
    for (v = 0; v < V; v++) {
        ck_assert_msg(ref_close(zc[v], zr[v], D, as[v]), "copy v=%d: %.9g vs %.9g", v,
                      (double)zc[v], zr[v]);
        ck_assert(memcmp(&zc[v], &z0[v], sizeof(float)) == 0 ||
                  fabs((double)zc[v] - (double)z0[v]) <= ref_bound(D, as[v], zr[v]));
    }
    eevp_head_free(hb);
    eevp_head_free(hc);
}
END_TEST

START_TEST(test_borrowed_no_big_alloc)
{
    enum { V = 4096, D = 64 };
    const int64_t wbytes = (int64_t)V * D * 4;
    float *W = rand_floats((int64_t)V * D, 31, -1, 1);
    float *bias = rand_floats(V, 32, -1, 1);
    float *nw = rand_floats(D, 33, -1, 1);
    test_alloc t = { 0, 0, 0, 0, 0 };
    eevp_allocator a = test_allocator(&t);
    eevp_head_options o = EEVP_HEAD_OPTIONS_INIT;
    eevp_head *h = NULL;

    o.n_vocab = V;
    o.dim = D;
    o.weights = W;
    o.logit_bias = bias;
    o.norm = EEVP_NORM_RMS;
    o.norm_weight = nw;
    o.allocator = &a;
    ck_assert_int_eq(eevp_head_create(&h, &o, NULL, 0), EEVP_OK);
    ck_assert_msg(t.max_single < wbytes, "borrowed head allocated %lld bytes at once",
                  (long long)t.max_single);
    ck_assert_msg(t.bytes_live < V * 4, "borrowed head holds %lld bytes",
                  (long long)t.bytes_live);
    ck_assert_int_eq(eevp_head_memory(h), t.bytes_live);
    eevp_head_free(h);
    ck_assert_int_eq(t.live, 0);
    ck_assert_int_eq(t.bytes_live, 0);

    /* The copy holds at least W, the bias and the norm weight. */
    o.flags = EEVP_HEAD_COPY;
    h = NULL;
    ck_assert_int_eq(eevp_head_create(&h, &o, NULL, 0), EEVP_OK);
    ck_assert(t.bytes_live >= wbytes + V * 4 + D * 4);
    ck_assert_int_eq(eevp_head_memory(h), t.bytes_live);
    eevp_head_free(h);
    ck_assert_int_eq(t.live, 0);
    free(W);
    free(bias);
    free(nw);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Memory accounting                                                        */
/* ------------------------------------------------------------------------ */

START_TEST(test_ctx_memory)
{
    static const struct { int32_t L, batch, k, crit, final_; int bias; } cases[] = {
        { 4, 1, 16, EEVP_CRITERION_TOP2_GAP, EEVP_FINAL_FULL, 0 },
        { 12, 8, 64, EEVP_CRITERION_JS, EEVP_FINAL_FULL, 1 },
        { 6, 3, 0, EEVP_CRITERION_ENTROPY, EEVP_FINAL_FULL, 0 },
        { 24, 16, 256, EEVP_CRITERION_SATURATION, EEVP_FINAL_PRUNED, 1 },
        { 5, 2, 8, EEVP_CRITERION_STABILITY, EEVP_FINAL_PRUNED, 1 },
        { 2, 64, 1000, EEVP_CRITERION_MAX_PROB, EEVP_FINAL_FULL, 0 },
    };
    enum { V = 300, D = 24 };
    float *W = rand_floats(V * D, 41, -1, 1);
    float *bias = rand_floats(V, 42, -1, 1);
    size_t i;

    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        test_alloc t = { 0, 0, 0, 0, 0 };
        eevp_allocator a = test_allocator(&t);
        eevp_head_options ho = EEVP_HEAD_OPTIONS_INIT;
        eevp_head *h = NULL;
        eevp_ctx_options o = ctx_opts(cases[i].L, cases[i].batch, cases[i].k, 1, 1, -1);
        eevp_ctx *c;
        int64_t est = -1;

        ho.n_vocab = V;
        ho.dim = D;
        ho.weights = W;
        ho.logit_bias = cases[i].bias ? bias : NULL;
        ck_assert_int_eq(eevp_head_create(&h, &ho, NULL, 0), EEVP_OK);
        o.criterion = cases[i].crit;
        o.final_policy = cases[i].final_;
        o.allocator = &a;
        ck_assert_int_eq(eevp_ctx_memory_estimate(&est, h, &o), EEVP_OK);
        ck_assert_int_eq(t.n_calls, 0);
        c = ctx_on(h, &o);
        ck_assert_msg(est == eevp_ctx_memory(c) && est == t.bytes_live,
                      "case %zu: estimate %lld, memory %lld, allocator saw %lld", i,
                      (long long)est, (long long)eevp_ctx_memory(c), (long long)t.bytes_live);
        /* O(max_batch * (K*d + V)) floats, so at least the logits. */
        ck_assert(est >= (int64_t)cases[i].batch * V * 4);
        eevp_ctx_free(c);
        ck_assert_int_eq(t.live, 0);
        ck_assert_int_eq(t.bytes_live, 0);
        eevp_head_free(h);
    }
    free(W);
    free(bias);
}
END_TEST

/* ------------------------------------------------------------------------ */

Suite *make_contract_suite(void)
{
    Suite *s = suite_create("contract");
    TCase *tc;

    tc = tcase_create("basics");
    tcase_add_test(tc, test_version);
    tcase_add_test(tc, test_strerror);
    tcase_add_test(tc, test_options_init);
    tcase_add_test(tc, test_null_handles);
    suite_add_tcase(s, tc);

    tc = tcase_create("struct_size");
    tcase_add_test(tc, test_struct_head_options);
    tcase_add_test(tc, test_struct_ctx_options);
    tcase_add_test(tc, test_struct_result);
    tcase_add_test(tc, test_struct_stats);
    tcase_add_test(tc, test_struct_vtbl);
    suite_add_tcase(s, tc);

    tc = tcase_create("create_args");
    tcase_add_loop_test(tc, test_head_create_errors, 0, HE_N);
    tcase_add_test(tc, test_head_create_limits_ok);
    tcase_add_test(tc, test_create_msg_buffer);
    tcase_add_loop_test(tc, test_ctx_create_errors, 0, CE_N);
    tcase_add_test(tc, test_ctx_create_edges_ok);
    suite_add_tcase(s, tc);

    tc = tcase_create("order");
    tcase_add_loop_test(tc, test_out_of_order, 0, N_INJECT);
    tcase_add_test(tc, test_row_forms);
    tcase_add_test(tc, test_results_lifetime);
    tcase_add_loop_test(tc, test_layer_required, 0,
                        (int)(sizeof lrcases / sizeof lrcases[0]));
    tcase_add_test(tc, test_threshold);
    suite_add_tcase(s, tc);

    tc = tcase_create("memory");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_borrowed_vs_copy);
    tcase_add_test(tc, test_borrowed_no_big_alloc);
    tcase_add_test(tc, test_ctx_memory);
    suite_add_tcase(s, tc);

    return s;
}
