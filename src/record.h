/* SPDX-License-Identifier: MIT */
/* record.h - the shard record format (record.c), shared with shard.c; not
 * API.  docs/SCALE_OUT.md describes the bytes. */
#ifndef EEVP_RECORD_H
#define EEVP_RECORD_H

#include "internal.h"

/* Record kinds. */
#define EEVPI_REC_FULL 1  /* full-vocabulary summaries: top entries + shard sums */
#define EEVPI_REC_SET 2   /* logits of the pruned sets, by position */
#define EEVPI_REC_ERROR 3 /* an error record: header only, the rest zero */

#define EEVPI_REC_HDR 64  /* fixed header; then P shard ranges of 8 bytes */
#define EEVPI_REC_SLOT 32 /* one shard's sums in a full summary */

/* Why a record is an error record (smaller wins when two meet). */
enum {
    EEVPI_WHY_MALFORMED = 1, /* bad magic, size or field; truncated */
    EEVPI_WHY_VERSION,       /* another format version */
    EEVPI_WHY_SHAPE,         /* another kind, K, P or number of sequences */
    EEVPI_WHY_STEP,          /* another step, layer, round or configuration */
    EEVPI_WHY_HIDDEN,        /* other hidden states or positions */
    EEVPI_WHY_SHARD_TWICE,   /* a shard's slot filled twice, or ranges overlap */
    EEVPI_WHY_SEQS,          /* the sequences taking part differ */
    EEVPI_WHY_SET_TWICE,     /* a set position filled twice */
    EEVPI_WHY_COUNT
};

/* The header's fields. */
typedef struct eevpi_rec_info {
    int32_t kind, n_seq, ktop, kset, n_shards, layer, round;
    int32_t why;                 /* error records: EEVPI_WHY_* */
    int64_t size, seq_size;      /* whole record, one sequence's part */
    uint64_t config, step, hash; /* the fingerprint */
} eevpi_rec_info;

/* One shard's sums over its rows: max, sum exp(z - max), sum exp(z - max)
 * (z - max) in double, finite logits, and whether it saw NaN or +Inf. */
typedef struct eevpi_slot {
    float max;
    int32_t n_finite;
    double sumexp, sumu;
    int32_t nonfinite;
} eevpi_slot;

/* Size of one sequence's part and of a record; -1 when out of range. */
int64_t eevpi_rec_seq_size(int32_t kind, int32_t ktop, int32_t kset, int32_t n_shards);
int64_t eevpi_rec_size(const eevpi_rec_info *info);
/* Zero size bytes and write the header of info (info->size is computed). */
void eevpi_rec_start(void *rec, eevpi_rec_info *info);
/* Mark shard `index` as holding rows [r0, r1). */
void eevpi_rec_put_range(void *rec, int32_t index, int64_t r0, int64_t r1);
/* Sequence s's part of a full summary from shard `index`: its n_top best
 * (logit, global id) pairs in the order, its sums, and (kset > 0) the
 * logits z[j] of set positions pos[j], j < n_set. */
void eevpi_rec_put_full(void *rec, const eevpi_rec_info *info, int32_t s, int32_t index,
                        const eevpi_pair *top, int32_t n_top, const eevpi_slot *slot,
                        const int32_t *pos, const float *z, int32_t n_set);
/* Sequence s's part of a set record: logits z[j] at set positions pos[j]. */
void eevpi_rec_put_set(void *rec, const eevpi_rec_info *info, int32_t s, const int32_t *pos,
                       const float *z, int32_t n);

/* Check a record of `size` bytes completely and read its header.  Returns
 * 0, or the EEVPI_WHY_* reason it is malformed (an error record is well
 * formed: info->kind is EEVPI_REC_ERROR and info->why its reason). */
int eevpi_rec_check(const void *rec, int64_t size, eevpi_rec_info *info);
/* Shard ranges of a checked record: r0[i], r1[i] (0, 0 when unfilled). */
void eevpi_rec_ranges(const void *rec, const eevpi_rec_info *info, int64_t *r0, int64_t *r1);
/* Whether sequence s takes part. */
int eevpi_rec_takes_part(const void *rec, const eevpi_rec_info *info, int32_t s);
/* Read sequence s of a checked full summary: *n_top pairs, the P slots,
 * and (kset > 0) the set logits into setz (positions not filled: 0) with
 * their count in *n_set. */
void eevpi_rec_get_full(const void *rec, const eevpi_rec_info *info, int32_t s,
                        eevpi_pair *top, int32_t *n_top, eevpi_slot *slots, float *setz,
                        int32_t *n_set);
/* Read sequence s of a checked set record: logits into z, filled count. */
int32_t eevpi_rec_get_set(const void *rec, const eevpi_rec_info *info, int32_t s, float *z);
/* Text of a reason. */
const char *eevpi_rec_why(int32_t why);

/* The fingerprint's hash: FNV-1a style, four lanes of 64-bit words. */
uint64_t eevpi_hash_words(uint64_t h, const void *p, int64_t n_words);
#define EEVPI_HASH_SEED 0xcbf29ce484222325ull

#endif
