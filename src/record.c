/* SPDX-License-Identifier: MIT */
/* record.c - the shard record: its little-endian encoding, the checks every
 * record from another process goes through, and the merge.  The merge
 * combines no floating-point values (top entries are selected, shard sums
 * are placed by shard index, set logits by position), so it is exactly
 * associative and commutative.  docs/SCALE_OUT.md describes the bytes. */
#include "record.h"

#include <string.h>

#define MAGIC 0x52564545u /* "EEVR" */

/* Header offsets. */
enum {
    H_MAGIC = 0, H_VERSION = 4, H_KIND = 6, H_SIZE = 8, H_NSEQ = 12, H_KTOP = 16,
    H_KSET = 20, H_NSHARDS = 24, H_WHY = 26, H_LAYER = 28, H_ROUND = 32, H_ERROR = 36,
    H_CONFIG = 40, H_STEP = 48, H_HASH = 56
};
/* Slot offsets. */
enum { S_MAX = 0, S_NFIN = 4, S_SUM = 8, S_SUMU = 16, S_FLAGS = 24 };
#define SLOT_FILLED 1u
#define SLOT_NONFINITE 2u

static inline void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static inline uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void put16(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static inline uint32_t get16(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8;
}

static inline void put64(unsigned char *p, uint64_t v)
{
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}

static inline uint64_t get64(const unsigned char *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static void putf(unsigned char *p, float f)
{
    uint32_t v;
    memcpy(&v, &f, 4);
    put32(p, v);
}

static float getf(const unsigned char *p)
{
    const uint32_t v = get32(p);
    float f;
    memcpy(&f, &v, 4);
    return f;
}

static void putd(unsigned char *p, double f)
{
    uint64_t v;
    memcpy(&v, &f, 8);
    put64(p, v);
}

static double getd(const unsigned char *p)
{
    const uint64_t v = get64(p);
    double f;
    memcpy(&f, &v, 8);
    return f;
}

static int all_zero(const unsigned char *p, int64_t n)
{
    uint64_t acc = 0, w;
    int64_t i;
    for (i = 0; i + 8 <= n; i += 8) {
        memcpy(&w, p + i, 8);
        acc |= w;
    }
    for (; i < n; i++)
        acc |= p[i];
    return acc == 0;
}

/* Index of the lowest set bit of v != 0. */
static int lowest_bit(uint32_t v)
{
#if defined(__GNUC__)
    return __builtin_ctz(v);
#else
    int n = 0;
    while (!(v & 1u)) {
        v >>= 1;
        n++;
    }
    return n;
#endif
}

/* Bits of word w of a kset-position bitmap that name positions. */
static uint32_t valid_bits(int32_t kset, int64_t w)
{
    const int64_t n = kset - 32 * w;
    return n >= 32 ? 0xffffffffu : (1u << n) - 1u;
}

/* FNV-1a style over 64-bit little-endian pairs of words in four
 * independent lanes (a d = 4096 hidden state hashes in well under a
 * microsecond), folded into h; an odd last word goes alone. */
uint64_t eevpi_hash_words(uint64_t h, const void *p, int64_t n_words)
{
    const unsigned char *b = (const unsigned char *)p;
    const uint64_t prime = 0x100000001b3ull;
    uint64_t l0 = h, l1 = h + 1, l2 = h + 2, l3 = h + 3;
    int64_t i;
    for (i = 0; i + 8 <= n_words; i += 8) {
        l0 = (l0 ^ get64(b + 4 * i)) * prime;
        l1 = (l1 ^ get64(b + 4 * i + 8)) * prime;
        l2 = (l2 ^ get64(b + 4 * i + 16)) * prime;
        l3 = (l3 ^ get64(b + 4 * i + 24)) * prime;
    }
    for (; i < n_words; i++)
        l0 = (l0 ^ get32(b + 4 * i)) * prime;
    h = (h ^ l0) * prime;
    h = (h ^ l1) * prime;
    h = (h ^ l2) * prime;
    return (h ^ l3) * prime;
}

/* ---- layout ---- */

static int64_t words(int32_t k)
{
    return ((int64_t)k + 31) / 32;
}

int64_t eevpi_rec_seq_size(int32_t kind, int32_t ktop, int32_t kset, int32_t n_shards)
{
    const int64_t set = kset > 0 ? 4 * (int64_t)kset + 4 * words(kset) : 0;
    if (n_shards < 1 || n_shards > EEVP_MAX_SHARDS || ktop < 0 || ktop > EEVP_MAX_LIST ||
        kset < 0 || kset > EEVP_MAX_LIST)
        return -1;
    if (kind == EEVPI_REC_FULL)
        return ktop >= 1 ? 8 + 8 * (int64_t)ktop + (int64_t)EEVPI_REC_SLOT * n_shards + set : -1;
    if (kind == EEVPI_REC_SET)
        return ktop == 0 && kset >= 1 ? 8 + set : -1;
    return -1;
}

int64_t eevpi_rec_size(const eevpi_rec_info *info)
{
    const int64_t q = eevpi_rec_seq_size(info->kind, info->ktop, info->kset, info->n_shards);
    if (q < 0 || info->n_seq < 1 || info->n_seq > EEVP_MAX_BATCH)
        return -1;
    return EEVPI_REC_HDR + 8 * (int64_t)info->n_shards + q * info->n_seq;
}

static unsigned char *seq_part(void *rec, const eevpi_rec_info *info, int32_t s)
{
    return (unsigned char *)rec + EEVPI_REC_HDR + 8 * (int64_t)info->n_shards +
           info->seq_size * s;
}

void eevpi_rec_start(void *rec, eevpi_rec_info *info)
{
    unsigned char *p = (unsigned char *)rec;
    info->size = eevpi_rec_size(info);
    info->seq_size = eevpi_rec_seq_size(info->kind, info->ktop, info->kset, info->n_shards);
    memset(p, 0, (size_t)info->size);
    put32(p + H_MAGIC, MAGIC);
    put16(p + H_VERSION, EEVP_SHARD_FORMAT);
    put16(p + H_KIND, (uint32_t)info->kind);
    put32(p + H_SIZE, (uint32_t)info->size);
    put32(p + H_NSEQ, (uint32_t)info->n_seq);
    put32(p + H_KTOP, (uint32_t)info->ktop);
    put32(p + H_KSET, (uint32_t)info->kset);
    put16(p + H_NSHARDS, (uint32_t)info->n_shards);
    put32(p + H_LAYER, (uint32_t)info->layer);
    put32(p + H_ROUND, (uint32_t)info->round);
    put64(p + H_CONFIG, info->config);
    put64(p + H_STEP, info->step);
    put64(p + H_HASH, info->hash);
}

void eevpi_rec_put_range(void *rec, int32_t index, int64_t r0, int64_t r1)
{
    unsigned char *p = (unsigned char *)rec + EEVPI_REC_HDR + 8 * (int64_t)index;
    put32(p, (uint32_t)r0);
    put32(p + 4, (uint32_t)r1);
}

static void put_set(unsigned char *q, int32_t kset, const int32_t *pos, const float *z,
                    int32_t n)
{
    unsigned char *bits = q + 4 * (int64_t)kset;
    int32_t j;
    for (j = 0; j < n; j++) {
        unsigned char *w = bits + 4 * (pos[j] / 32);
        putf(q + 4 * (int64_t)pos[j], z[j]);
        put32(w, get32(w) | 1u << (pos[j] % 32));
    }
}

void eevpi_rec_put_full(void *rec, const eevpi_rec_info *info, int32_t s, int32_t index,
                        const eevpi_pair *top, int32_t n_top, const eevpi_slot *slot,
                        const int32_t *pos, const float *z, int32_t n_set)
{
    unsigned char *q = seq_part(rec, info, s);
    unsigned char *e = q + 8, *sl = e + 8 * (int64_t)info->ktop + EEVPI_REC_SLOT * index;
    int32_t j;
    put32(q, 1);
    if (slot->nonfinite) {
        /* A NaN or +Inf logit: the sequence fails on every rank; nothing
         * else of this shard is sent. */
        put32(sl + S_FLAGS, SLOT_FILLED | SLOT_NONFINITE);
        return;
    }
    put32(q + 4, (uint32_t)n_top);
    for (j = 0; j < n_top; j++) {
        putf(e + 8 * j, top[j].v);
        put32(e + 8 * j + 4, (uint32_t)top[j].i);
    }
    putf(sl + S_MAX, slot->max);
    put32(sl + S_NFIN, (uint32_t)slot->n_finite);
    putd(sl + S_SUM, slot->sumexp);
    putd(sl + S_SUMU, slot->sumu);
    put32(sl + S_FLAGS, SLOT_FILLED);
    if (info->kset > 0)
        put_set(e + 8 * (int64_t)info->ktop + EEVPI_REC_SLOT * (int64_t)info->n_shards,
                info->kset, pos, z, n_set);
}

void eevpi_rec_put_set(void *rec, const eevpi_rec_info *info, int32_t s, const int32_t *pos,
                       const float *z, int32_t n)
{
    unsigned char *q = seq_part(rec, info, s);
    put32(q, 1);
    put_set(q + 8, info->kset, pos, z, n);
}

/* ---- checks ---- */

/* The set section: bits only below kset, logits only where a bit is set
 * (and not NaN's other payloads: any float is data there, NaN included). */
static int check_set(const unsigned char *q, int32_t kset)
{
    const unsigned char *bits = q + 4 * (int64_t)kset;
    int64_t w;
    for (w = 0; w < words(kset); w++) {
        const uint32_t b = get32(bits + 4 * w), valid = valid_bits(kset, w);
        uint32_t unset = ~b & valid;
        if (b & ~valid)
            return EEVPI_WHY_MALFORMED;
        if (unset == valid) { /* a word of positions this record does not fill */
            const int64_t n = kset - 32 * w < 32 ? kset - 32 * w : 32;
            if (!all_zero(q + 128 * w, 4 * n))
                return EEVPI_WHY_MALFORMED;
            continue;
        }
        while (unset) {
            const int j = lowest_bit(unset);
            unset &= unset - 1u;
            if (get32(q + 128 * w + 4 * j))
                return EEVPI_WHY_MALFORMED;
        }
    }
    return 0;
}

/* Index of the filled range holding id, or -1. */
static int32_t owner(const int64_t *r0, const int64_t *r1, int32_t n, int64_t id)
{
    int32_t lo = 0, hi = n;
    while (lo < hi) { /* filled ranges increase with the index */
        const int32_t mid = lo + (hi - lo) / 2;
        if (r1[mid] <= id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && r0[lo] <= id && id < r1[lo] ? lo : -1;
}

static int check_full(const unsigned char *q, const eevpi_rec_info *info, const int64_t *fr0,
                      const int64_t *fr1, int32_t nf, const unsigned char *filled)
{
    const unsigned char *e = q + 8, *sl = e + 8 * (int64_t)info->ktop;
    const uint32_t n_top = get32(q + 4);
    uint32_t j;
    int32_t i;
    if (n_top > (uint32_t)info->ktop)
        return EEVPI_WHY_MALFORMED;
    for (j = 0; j < n_top; j++) {
        const float v = getf(e + 8 * j);
        const int32_t id = (int32_t)get32(e + 8 * j + 4);
        if (v != v || v == INFINITY || id < 0 || owner(fr0, fr1, nf, id) < 0)
            return EEVPI_WHY_MALFORMED;
        if (j > 0 && !eevpi_before(getf(e + 8 * (j - 1)), (int32_t)get32(e + 8 * (j - 1) + 4),
                                   v, id))
            return EEVPI_WHY_MALFORMED;
    }
    if (!all_zero(e + 8 * (int64_t)n_top, 8 * ((int64_t)info->ktop - n_top)))
        return EEVPI_WHY_MALFORMED;
    for (i = 0; i < info->n_shards; i++) {
        const unsigned char *t = sl + EEVPI_REC_SLOT * (int64_t)i;
        const uint32_t fl = get32(t + S_FLAGS);
        if (!filled[i]) {
            if (!all_zero(t, EEVPI_REC_SLOT))
                return EEVPI_WHY_MALFORMED;
            continue;
        }
        if (get32(t + 28) != 0 || (fl != SLOT_FILLED && fl != (SLOT_FILLED | SLOT_NONFINITE)))
            return EEVPI_WHY_MALFORMED;
        if (fl & SLOT_NONFINITE) {
            if (!all_zero(t, S_FLAGS))
                return EEVPI_WHY_MALFORMED;
        } else {
            const float mx = getf(t + S_MAX);
            const uint32_t nfin = get32(t + S_NFIN);
            const double sum = getd(t + S_SUM), su = getd(t + S_SUMU);
            /* Each term of the sum is in (0, 1] and the max's is 1; each of
             * sumu's is in [-1/e, 0]. */
            if (nfin == 0 ? !(mx == -INFINITY && sum == 0.0 && su == 0.0)
                          : !(mx > -INFINITY && mx < INFINITY && sum >= 1.0 &&
                              sum <= (double)nfin && su <= 0.0 && su >= -(double)nfin))
                return EEVPI_WHY_MALFORMED;
        }
    }
    if (info->kset > 0)
        return check_set(sl + EEVPI_REC_SLOT * (int64_t)info->n_shards, info->kset);
    return 0;
}

int eevpi_rec_check(const void *rec, int64_t size, eevpi_rec_info *info)
{
    const unsigned char *p = (const unsigned char *)rec;
    int64_t r0[EEVP_MAX_SHARDS], r1[EEVP_MAX_SHARDS], fr0[EEVP_MAX_SHARDS],
        fr1[EEVP_MAX_SHARDS];
    unsigned char filled[EEVP_MAX_SHARDS];
    int32_t i, s, nf = 0;
    memset(info, 0, sizeof *info);
    if (size < EEVPI_REC_HDR || get32(p + H_MAGIC) != MAGIC)
        return EEVPI_WHY_MALFORMED;
    if (get16(p + H_VERSION) != EEVP_SHARD_FORMAT)
        return EEVPI_WHY_VERSION;
    info->kind = (int32_t)get16(p + H_KIND);
    info->size = get32(p + H_SIZE);
    if (info->size != size)
        return EEVPI_WHY_MALFORMED;
    if (info->kind == EEVPI_REC_ERROR) {
        info->why = (int32_t)get16(p + H_WHY);
        if (info->why < 1 || info->why >= EEVPI_WHY_COUNT ||
            (int32_t)get32(p + H_ERROR) != EEVP_ERECORD || !all_zero(p + 12, H_WHY - 12) ||
            !all_zero(p + H_LAYER, H_ERROR - H_LAYER) || !all_zero(p + H_CONFIG, size - H_CONFIG))
            return EEVPI_WHY_MALFORMED;
        return 0;
    }
    info->n_seq = (int32_t)get32(p + H_NSEQ);
    info->ktop = (int32_t)get32(p + H_KTOP);
    info->kset = (int32_t)get32(p + H_KSET);
    info->n_shards = (int32_t)get16(p + H_NSHARDS);
    info->layer = (int32_t)get32(p + H_LAYER);
    info->round = (int32_t)get32(p + H_ROUND);
    info->config = get64(p + H_CONFIG);
    info->step = get64(p + H_STEP);
    info->hash = get64(p + H_HASH);
    if (get32(p + H_NSEQ) > EEVP_MAX_BATCH || get32(p + H_KTOP) > EEVP_MAX_LIST ||
        get32(p + H_KSET) > EEVP_MAX_LIST || get16(p + H_WHY) != 0 || get32(p + H_ERROR) != 0 ||
        get32(p + H_LAYER) >= EEVP_MAX_LAYERS || get32(p + H_ROUND) > 1)
        return EEVPI_WHY_MALFORMED;
    info->seq_size = eevpi_rec_seq_size(info->kind, info->ktop, info->kset, info->n_shards);
    if (info->seq_size < 0 || eevpi_rec_size(info) != size)
        return EEVPI_WHY_MALFORMED;
    eevpi_rec_ranges(rec, info, r0, r1);
    for (i = 0; i < info->n_shards; i++) {
        filled[i] = r1[i] > r0[i];
        if (!filled[i] && (r0[i] || r1[i]))
            return EEVPI_WHY_MALFORMED;
        if (!filled[i])
            continue;
        if (r1[i] > INT32_MAX || (nf > 0 && r0[i] < fr1[nf - 1]))
            return EEVPI_WHY_MALFORMED; /* ranges increase with the index */
        fr0[nf] = r0[i];
        fr1[nf++] = r1[i];
    }
    if (nf == 0)
        return EEVPI_WHY_MALFORMED;
    for (s = 0; s < info->n_seq; s++) {
        const unsigned char *q = p + EEVPI_REC_HDR + 8 * (int64_t)info->n_shards +
                                 info->seq_size * s;
        const uint32_t fl = get32(q);
        int why;
        if (fl > 1 || (fl == 0 && !all_zero(q, info->seq_size)))
            return EEVPI_WHY_MALFORMED;
        if (fl == 0)
            continue;
        if (info->kind == EEVPI_REC_FULL)
            why = check_full(q, info, fr0, fr1, nf, filled);
        else
            why = get32(q + 4) ? EEVPI_WHY_MALFORMED : check_set(q + 8, info->kset);
        if (why)
            return why;
    }
    return 0;
}

void eevpi_rec_ranges(const void *rec, const eevpi_rec_info *info, int64_t *r0, int64_t *r1)
{
    const unsigned char *p = (const unsigned char *)rec + EEVPI_REC_HDR;
    int32_t i;
    for (i = 0; i < info->n_shards; i++) {
        r0[i] = get32(p + 8 * i);
        r1[i] = get32(p + 8 * i + 4);
    }
}

int eevpi_rec_takes_part(const void *rec, const eevpi_rec_info *info, int32_t s)
{
    return get32(seq_part((void *)(uintptr_t)rec, info, s)) == 1;
}

static int32_t get_set(const unsigned char *q, int32_t kset, float *z)
{
    const unsigned char *bits = q + 4 * (int64_t)kset;
    int32_t j, n = 0;
    for (j = 0; j < kset; j++) {
        const int on = get32(bits + 4 * (j / 32)) >> (j % 32) & 1u;
        z[j] = on ? getf(q + 4 * (int64_t)j) : 0.0f;
        n += on;
    }
    return n;
}

void eevpi_rec_get_full(const void *rec, const eevpi_rec_info *info, int32_t s,
                        eevpi_pair *top, int32_t *n_top, eevpi_slot *slots, float *setz,
                        int32_t *n_set)
{
    const unsigned char *q = seq_part((void *)(uintptr_t)rec, info, s);
    const unsigned char *e = q + 8, *sl = e + 8 * (int64_t)info->ktop;
    int32_t j;
    *n_top = (int32_t)get32(q + 4);
    for (j = 0; j < *n_top; j++) {
        top[j].v = getf(e + 8 * j);
        top[j].i = (int32_t)get32(e + 8 * j + 4);
    }
    for (j = 0; j < info->n_shards; j++) {
        const unsigned char *t = sl + EEVPI_REC_SLOT * (int64_t)j;
        slots[j].max = getf(t + S_MAX);
        slots[j].n_finite = (int32_t)get32(t + S_NFIN);
        slots[j].sumexp = getd(t + S_SUM);
        slots[j].sumu = getd(t + S_SUMU);
        slots[j].nonfinite = (get32(t + S_FLAGS) & SLOT_NONFINITE) != 0;
    }
    *n_set = info->kset > 0 ? get_set(sl + EEVPI_REC_SLOT * (int64_t)info->n_shards,
                                      info->kset, setz)
                            : 0;
}

int32_t eevpi_rec_get_set(const void *rec, const eevpi_rec_info *info, int32_t s, float *z)
{
    return get_set(seq_part((void *)(uintptr_t)rec, info, s) + 8, info->kset, z);
}

const char *eevpi_rec_why(int32_t why)
{
    switch (why) {
    case EEVPI_WHY_MALFORMED: return "a record is malformed or truncated";
    case EEVPI_WHY_VERSION: return "a record has another format version";
    case EEVPI_WHY_SHAPE: return "records of another kind, K, P or number of sequences";
    case EEVPI_WHY_STEP: return "ranks out of step (step, layer, round or configuration differ)";
    case EEVPI_WHY_HIDDEN: return "ranks handed over different hidden states or positions";
    case EEVPI_WHY_SHARD_TWICE: return "a shard's slot filled twice, or shard ranges overlap";
    case EEVPI_WHY_SEQS: return "the sequences taking part differ between ranks";
    case EEVPI_WHY_SET_TWICE: return "a position of a pruned set filled twice";
    default: return "unknown record error";
    }
}

/* ---- merge ---- */

/* Turn acc into the error record for `why` (the smaller reason when acc is
 * one already). */
static int make_error(unsigned char *acc, int64_t size, int32_t why)
{
    eevpi_rec_info a;
    if (eevpi_rec_check(acc, size, &a) == 0 && a.kind == EEVPI_REC_ERROR && a.why < why)
        why = a.why;
    memset(acc, 0, (size_t)size);
    put32(acc + H_MAGIC, MAGIC);
    put16(acc + H_VERSION, EEVP_SHARD_FORMAT);
    put16(acc + H_KIND, EEVPI_REC_ERROR);
    put32(acc + H_SIZE, (uint32_t)size);
    put16(acc + H_WHY, (uint32_t)why);
    put32(acc + H_ERROR, (uint32_t)EEVP_ERECORD);
    return EEVP_ERECORD;
}

/* Whether entry i of list a (logit, id; 8 bytes each) comes before entry j
 * of list b in the order. */
static int entry_before(const unsigned char *a, uint32_t i, const unsigned char *b, uint32_t j)
{
    return eevpi_before(getf(a + 8 * i), (int32_t)get32(a + 8 * i + 4), getf(b + 8 * j),
                        (int32_t)get32(b + 8 * j + 4));
}

/* acc's n_a best pairs at e_a and in's n_b at e_b (both in the order) become
 * the best min(ktop, n_a + n_b) at e_a: count what each list gives, then
 * merge backwards so that no pair of acc is overwritten before it is read. */
static void merge_top(unsigned char *e_a, uint32_t n_a, const unsigned char *e_b, uint32_t n_b,
                      uint32_t ktop, unsigned char *count)
{
    const uint32_t n = n_a + n_b < ktop ? n_a + n_b : ktop;
    uint32_t ia = 0, ib = 0, k;
    for (k = 0; k < n; k++) {
        if (ib >= n_b || (ia < n_a && entry_before(e_a, ia, e_b, ib)))
            ia++;
        else
            ib++;
    }
    for (k = n; k-- > 0;) {
        if (ia == 0 || (ib > 0 && entry_before(e_a, ia - 1, e_b, ib - 1))) {
            ib--;
            memcpy(e_a + 8 * k, e_b + 8 * ib, 8);
        } else {
            ia--;
            memmove(e_a + 8 * k, e_a + 8 * ia, 8);
        }
    }
    memset(e_a + 8 * n, 0, 8 * (size_t)(ktop - n));
    put32(count, n);
}

/* in's set section into acc's: positions must not be filled in both. */
static int merge_set(unsigned char *a, const unsigned char *b, int32_t kset)
{
    unsigned char *ba = a + 4 * (int64_t)kset;
    const unsigned char *bb = b + 4 * (int64_t)kset;
    int64_t w;
    for (w = 0; w < words(kset); w++)
        if (get32(ba + 4 * w) & get32(bb + 4 * w))
            return EEVPI_WHY_SET_TWICE;
    for (w = 0; w < words(kset); w++) {
        uint32_t in = get32(bb + 4 * w);
        put32(ba + 4 * w, get32(ba + 4 * w) | in);
        while (in) {
            const int j = lowest_bit(in);
            in &= in - 1u;
            memcpy(a + 128 * w + 4 * j, b + 128 * w + 4 * j, 4);
        }
    }
    return 0;
}

EEVP_API int eevp_shard_merge(void *acc, const void *in, int64_t size)
{
    unsigned char *a = (unsigned char *)acc;
    const unsigned char *b = (const unsigned char *)in;
    eevpi_rec_info ia, ib;
    int64_t ar0[EEVP_MAX_SHARDS], ar1[EEVP_MAX_SHARDS], br0[EEVP_MAX_SHARDS],
        br1[EEVP_MAX_SHARDS];
    int32_t i, s, why, last = -1;
    if (!acc || !in)
        return EEVP_EINVAL;
    if (size < EEVPI_REC_HDR || size > INT32_MAX)
        return EEVP_ERANGE;
    if ((why = eevpi_rec_check(a, size, &ia)) != 0)
        return make_error(a, size, why);
    if ((why = eevpi_rec_check(b, size, &ib)) != 0)
        return make_error(a, size, why);
    if (ia.kind == EEVPI_REC_ERROR || ib.kind == EEVPI_REC_ERROR)
        return make_error(a, size, ib.kind == EEVPI_REC_ERROR ? ib.why : ia.why);
    if (ia.kind != ib.kind || ia.n_seq != ib.n_seq || ia.ktop != ib.ktop ||
        ia.kset != ib.kset || ia.n_shards != ib.n_shards)
        return make_error(a, size, EEVPI_WHY_SHAPE);
    if (ia.layer != ib.layer || ia.round != ib.round || ia.config != ib.config ||
        ia.step != ib.step)
        return make_error(a, size, EEVPI_WHY_STEP);
    if (ia.hash != ib.hash)
        return make_error(a, size, EEVPI_WHY_HIDDEN);
    eevpi_rec_ranges(a, &ia, ar0, ar1);
    eevpi_rec_ranges(b, &ib, br0, br1);
    /* Shards: each slot filled once, filled ranges still increasing. */
    for (i = 0; i < ia.n_shards; i++) {
        const int fa = ar1[i] > ar0[i], fb = br1[i] > br0[i];
        if (fa && fb)
            return make_error(a, size, EEVPI_WHY_SHARD_TWICE);
        if (fa || fb) {
            const int64_t r0 = fa ? ar0[i] : br0[i], r1 = fa ? ar1[i] : br1[i];
            if (last >= 0 && r0 < last)
                return make_error(a, size, EEVPI_WHY_SHARD_TWICE);
            last = (int32_t)r1;
        }
    }
    for (s = 0; s < ia.n_seq; s++)
        if (eevpi_rec_takes_part(a, &ia, s) != eevpi_rec_takes_part(b, &ib, s))
            return make_error(a, size, EEVPI_WHY_SEQS);
    /* Set positions first (the only conflict left), then the rest. */
    for (s = 0; s < ia.n_seq; s++) {
        unsigned char *qa = seq_part(a, &ia, s);
        const unsigned char *qb = seq_part((void *)(uintptr_t)b, &ib, s);
        const int64_t off = ia.kind == EEVPI_REC_FULL
                                ? 8 + 8 * (int64_t)ia.ktop + EEVPI_REC_SLOT * (int64_t)ia.n_shards
                                : 8;
        const unsigned char *bb = qb + off + 4 * (int64_t)ia.kset;
        const unsigned char *ba = qa + off + 4 * (int64_t)ia.kset;
        int64_t w;
        if (!get32(qa) || ia.kset == 0)
            continue;
        for (w = 0; w < words(ia.kset); w++)
            if (get32(ba + 4 * w) & get32(bb + 4 * w))
                return make_error(a, size, EEVPI_WHY_SET_TWICE);
    }
    for (i = 0; i < ia.n_shards; i++)
        if (br1[i] > br0[i])
            eevpi_rec_put_range(a, i, br0[i], br1[i]);
    for (s = 0; s < ia.n_seq; s++) {
        unsigned char *qa = seq_part(a, &ia, s);
        const unsigned char *qb = seq_part((void *)(uintptr_t)b, &ib, s);
        unsigned char *sa;
        const unsigned char *sb;
        if (!get32(qa))
            continue;
        if (ia.kind == EEVPI_REC_SET) {
            merge_set(qa + 8, qb + 8, ia.kset);
            continue;
        }
        merge_top(qa + 8, get32(qa + 4), qb + 8, get32(qb + 4), (uint32_t)ia.ktop, qa + 4);
        sa = qa + 8 + 8 * (int64_t)ia.ktop;
        sb = qb + 8 + 8 * (int64_t)ia.ktop;
        for (i = 0; i < ia.n_shards; i++)
            if (br1[i] > br0[i])
                memcpy(sa + EEVPI_REC_SLOT * i, sb + EEVPI_REC_SLOT * i, EEVPI_REC_SLOT);
        if (ia.kset > 0)
            merge_set(sa + EEVPI_REC_SLOT * (int64_t)ia.n_shards,
                      sb + EEVPI_REC_SLOT * (int64_t)ia.n_shards, ia.kset);
    }
    return EEVP_OK;
}
