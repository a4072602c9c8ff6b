/* SPDX-License-Identifier: MIT */
/*
 * fuzz_common.h - helpers shared by the libFuzzer targets in tests/fuzz/.
 *
 * The targets use the public API only, so that the same sources build three
 * ways: with libFuzzer (clang -fsanitize=fuzzer,address,undefined), with the
 * plain replay driver replay.c (any C99 compiler, for `make check`), and
 * under both sanitizers without libFuzzer.  A violated invariant calls
 * fuzz_fail, which prints and aborts: libFuzzer then keeps the input as a
 * crash artifact, and the replay driver fails.
 */
#ifndef EEVP_FUZZ_COMMON_H
#define EEVP_FUZZ_COMMON_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eevp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                     \
    do {                                                                     \
        if (!(cond))                                                         \
            fuzz_fail(__FILE__, __LINE__, #cond);                            \
    } while (0)

static inline void fuzz_fail(const char *file, int line, const char *what)
{
    fprintf(stderr, "%s:%d: invariant violated: %s\n", file, line, what);
    fflush(stderr);
    abort();
}

/* Input reader: past the end every read gives 0, so any input is a program. */
typedef struct fz {
    const uint8_t *p;
    size_t n, at;
} fz;

static inline uint8_t fz_u8(fz *f)
{
    return f->at < f->n ? f->p[f->at++] : 0;
}

static inline uint32_t fz_u32(fz *f)
{
    uint32_t v = 0;
    int i;
    for (i = 0; i < 4; i++)
        v |= (uint32_t)fz_u8(f) << (8 * i);
    return v;
}

/* lo .. hi inclusive, from one byte (hi - lo < 256). */
static inline int32_t fz_range(fz *f, int32_t lo, int32_t hi)
{
    return lo + (int32_t)(fz_u8(f) % (uint32_t)(hi - lo + 1));
}

static inline int fz_left(const fz *f)
{
    return f->at < f->n;
}

/* A float from a small menu of hostile values or a plain value. */
static inline float fz_float(fz *f)
{
    uint8_t c = fz_u8(f);
    switch (c & 15) {
    case 0: return NAN;
    case 1: return INFINITY;
    case 2: return -INFINITY;
    case 3: return 1e30f;
    case 4: return -1e30f;
    case 5: return 1e-40f; /* denormal */
    case 6: return 0.0f;
    case 7: return -0.0f;
    case 8: return 3.4e38f;
    case 9: {
        uint32_t b = fz_u32(f);
        float x;
        memcpy(&x, &b, sizeof x);
        return x;
    }
    default: return ((float)fz_u8(f) - 128.0f) / 32.0f * (float)(c >> 4 ? c >> 4 : 1);
    }
}

/* A float that is finite and of moderate size (for weights). */
static inline float fz_plain(fz *f)
{
    return ((float)fz_u8(f) - 128.0f) / 64.0f;
}

/* Allocator that counts, can fail, and refuses anything big. */
typedef struct fz_alloc {
    int64_t live, calls, fail_at;
    size_t limit;
} fz_alloc;

static inline void *fz_alloc_fn(void *opaque, size_t size)
{
    fz_alloc *a = (fz_alloc *)opaque;
    void *p;
    a->calls++;
    if ((a->fail_at && a->calls == a->fail_at) || size > a->limit)
        return NULL;
    p = malloc(size);
    if (p)
        a->live++;
    return p;
}

static inline void fz_free_fn(void *opaque, void *ptr)
{
    fz_alloc *a = (fz_alloc *)opaque;
    if (ptr) {
        a->live--;
        free(ptr);
    }
}

/* A 64-byte aligned block of n bytes (the kernels' workspace rule), freed
 * with free(). */
static inline void *fz_aligned(size_t n)
{
    void *p = NULL;
    return posix_memalign(&p, 64, n ? n : 1) == 0 ? p : NULL;
}

/* Every status the library may return. */
static inline int fz_known_status(int rc)
{
    return rc <= 0 && rc >= EEVP_EBUSY;
}

#endif
