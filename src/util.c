/* SPDX-License-Identifier: MIT */
/* util.c - the ground: version, status texts, allocation, struct sizes. */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

EEVP_API uint32_t eevp_version_number(void)
{
    return EEVP_VERSION_NUMBER;
}

EEVP_API const char *eevp_version_string(void)
{
    return EEVP_VERSION_STRING;
}

EEVP_API const char *eevp_strerror(int code)
{
    switch (code) {
    case EEVP_OK: return "success";
    case EEVP_EINVAL: return "invalid argument (NULL pointer or malformed value)";
    case EEVP_ERANGE: return "size, index, layer or value out of range";
    case EEVP_EOVERFLOW: return "size computation overflows";
    case EEVP_ENOMEM: return "out of memory";
    case EEVP_ESTRUCT: return "bad struct_size or non-zero unknown struct tail";
    case EEVP_ESTATE: return "call out of order for the object's state";
    case EEVP_EUSER: return "user callback returned an error";
    case EEVP_ECALLBACK: return "user callback returned an invalid result";
    case EEVP_ENONFINITE: return "NaN or infinity in a hidden state or in logits";
    case EEVP_EBUSY: return "context re-entered from its own callback";
    case EEVP_ERECORD: return "a shard record is malformed, or the ranks' records disagree";
    default: return "unknown status code";
    }
}

static void *default_alloc(void *opaque, size_t size)
{
    (void)opaque;
    return malloc(size);
}

static void default_free(void *opaque, void *p)
{
    (void)opaque;
    free(p);
}

int eevpi_mem_init(eevpi_mem *m, const eevp_allocator *user, char *msg, size_t msg_size)
{
    if (user && (!user->alloc) != (!user->free)) {
        eevpi_msg(msg, msg_size, "allocator: alloc and free must be both set or both NULL");
        return EEVP_EINVAL;
    }
    if (user && user->alloc) {
        m->a = *user;
    } else {
        m->a.alloc = default_alloc;
        m->a.free = default_free;
        m->a.opaque = NULL;
    }
    return EEVP_OK;
}

void *eevpi_alloc(const eevpi_mem *m, size_t size)
{
    return size ? m->a.alloc(m->a.opaque, size) : NULL;
}

void eevpi_free(const eevpi_mem *m, void *p)
{
    if (p)
        m->a.free(m->a.opaque, p);
}

void eevpi_msg(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    if (!buf || !size)
        return;
    va_start(ap, fmt);
    vsnprintf(buf, size, fmt, ap);
    va_end(ap);
}

int eevpi_read_struct(void *dst, size_t known, const void *src, size_t min_size)
{
    uint32_t size;
    memcpy(&size, src, sizeof size);
    if (size < min_size)
        return EEVP_ESTRUCT;
    if (size > known) {
        const unsigned char *tail = (const unsigned char *)src + known;
        size_t i;
        for (i = 0; i < size - known; i++)
            if (tail[i])
                return EEVP_ESTRUCT;
    }
    memcpy(dst, src, size < known ? size : known);
    memcpy(dst, &size, sizeof size);
    return EEVP_OK;
}

int eevpi_write_struct(void *dst, const void *src, size_t known, size_t min_size)
{
    uint32_t size;
    memcpy(&size, dst, sizeof size);
    if (size < min_size)
        return EEVP_ESTRUCT;
    memcpy((unsigned char *)dst + sizeof size, (const unsigned char *)src + sizeof size,
           (size < known ? size : known) - sizeof size);
    if (size > known)
        memset((unsigned char *)dst + known, 0, size - known);
    return EEVP_OK;
}

int eevpi_mul(int64_t a, int64_t b, int64_t *out)
{
    if (a < 0 || b < 0 || (a && b > INT64_MAX / a))
        return 0;
    *out = a * b;
    return 1;
}

int eevpi_add(int64_t a, int64_t b, int64_t *out)
{
    if (a < 0 || b < 0 || a > INT64_MAX - b)
        return 0;
    *out = a + b;
    return 1;
}

void *eevpi_arena_take(eevpi_arena *a, int64_t count, int64_t elem_size)
{
    int64_t bytes, start, end;
    if (a->overflow || !eevpi_mul(count, elem_size, &bytes) ||
        !eevpi_add(a->used, EEVPI_ALIGN - 1, &start)) {
        a->overflow = 1;
        return NULL;
    }
    start -= start % EEVPI_ALIGN;
    if (!eevpi_add(start, bytes, &end)) {
        a->overflow = 1;
        return NULL;
    }
    a->used = end;
    return a->base && count ? a->base + start : NULL;
}
