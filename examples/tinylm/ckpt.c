/* SPDX-License-Identifier: MIT */
/*
 * ckpt.c - Hugging Face checkpoint directories for Llama-architecture models:
 * config.json, model.safetensors or model.safetensors.index.json + shards,
 * tokenizer.model.  The safetensors files are memory-mapped; aligned fp32
 * tensors are used in place, fp16/bf16 (and unaligned fp32) ones are
 * converted once into one fp32 arena.  Every check names the file and the
 * tensor it refused.
 *
 * safetensors: 8 bytes little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "F16", "shape": [..], "data_offsets": [a, b]}, ...,
 * "__metadata__": {...}}, then the data; offsets are relative to 8 + N.
 */
#include "tinylm.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_HEADER ((uint64_t)100 << 20) /* 100 MB of JSON is already absurd */
#define MAX_DIMS 8

enum { DT_F32 = 0, DT_F16 = 1, DT_BF16 = 2 };

typedef struct tl_tensor {
    const char *name;    /* points into the file's JSON (kept alive) */
    int dtype;
    int ndim;
    int64_t shape[MAX_DIMS];
    const unsigned char *data;
    uint64_t nbytes;
} tl_tensor;

struct tl_file {
    char path[4096];
    unsigned char *map;
    size_t size;
    json_t *header;
    tl_tensor *tensors;
    int64_t n_tensors;
};

static void set_msg(char *msg, size_t n, const char *fmt, ...)
{
    va_list ap;
    if (msg == NULL || n == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, n, fmt, ap);
    va_end(ap);
}

static void file_close(tl_file *f)
{
    if (f->map != NULL && f->map != MAP_FAILED)
        munmap(f->map, f->size);
    json_decref(f->header);
    free(f->tensors);
    memset(f, 0, sizeof *f);
}

static int dtype_of(const char *s, int *dt, int *size)
{
    if (strcmp(s, "F32") == 0) { *dt = DT_F32; *size = 4; return 0; }
    if (strcmp(s, "F16") == 0) { *dt = DT_F16; *size = 2; return 0; }
    if (strcmp(s, "BF16") == 0) { *dt = DT_BF16; *size = 2; return 0; }
    return -1;
}

/* Map and parse one safetensors file; checks every tensor's entry. */
static int file_open(tl_file *f, const char *path, char *msg, size_t msg_size)
{
    int fd;
    struct stat st;
    uint64_t hlen = 0;
    json_error_t jerr;
    const char *key;
    json_t *val;
    int64_t i = 0;
    int b;

    memset(f, 0, sizeof *f);
    snprintf(f->path, sizeof f->path, "%s", path);
    fd = open(path, O_RDONLY);
    if (fd < 0) {
        set_msg(msg, msg_size, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) != 0) {
        set_msg(msg, msg_size, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (st.st_size < 8) {
        set_msg(msg, msg_size, "%s: truncated: %lld bytes, a safetensors file starts "
                "with an 8-byte header length", path, (long long)st.st_size);
        close(fd);
        return -1;
    }
    f->size = (size_t)st.st_size;
    f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (f->map == MAP_FAILED) {
        set_msg(msg, msg_size, "%s: cannot map: %s", path, strerror(errno));
        f->map = NULL;
        return -1;
    }
    for (b = 7; b >= 0; b--)
        hlen = (hlen << 8) | f->map[b];
    if (hlen < 2 || hlen > MAX_HEADER || hlen > (uint64_t)f->size - 8) {
        set_msg(msg, msg_size, "%s: bad header length %llu (file has %zu bytes)",
                path, (unsigned long long)hlen, f->size);
        goto fail;
    }
    f->header = json_loadb((const char *)f->map + 8, (size_t)hlen, 0, &jerr);
    if (f->header == NULL || !json_is_object(f->header)) {
        set_msg(msg, msg_size, "%s: header is not a JSON object (%s at byte %d)",
                path, f->header ? "not an object" : jerr.text, jerr.position);
        goto fail;
    }
    f->tensors = calloc(json_object_size(f->header) + 1, sizeof *f->tensors);
    if (f->tensors == NULL) {
        set_msg(msg, msg_size, "%s: out of memory", path);
        goto fail;
    }
    json_object_foreach(f->header, key, val) {
        tl_tensor *t = &f->tensors[i];
        json_t *dt, *shape, *offs, *e;
        uint64_t a, bb, base = 8 + hlen, numel = 1;
        int esize = 0;
        size_t j;

        if (strcmp(key, "__metadata__") == 0)
            continue;
        dt = json_object_get(val, "dtype");
        shape = json_object_get(val, "shape");
        offs = json_object_get(val, "data_offsets");
        if (!json_is_object(val) || !json_is_string(dt) || !json_is_array(shape) ||
            !json_is_array(offs) || json_array_size(offs) != 2) {
            set_msg(msg, msg_size, "%s: tensor %s: malformed entry (needs dtype, shape, "
                    "data_offsets)", path, key);
            goto fail;
        }
        if (dtype_of(json_string_value(dt), &t->dtype, &esize) != 0) {
            set_msg(msg, msg_size, "%s: tensor %s: dtype %s is not supported "
                    "(F32, F16 and BF16 are)", path, key, json_string_value(dt));
            goto fail;
        }
        if (json_array_size(shape) > MAX_DIMS) {
            set_msg(msg, msg_size, "%s: tensor %s: %zu dimensions", path, key,
                    json_array_size(shape));
            goto fail;
        }
        t->ndim = (int)json_array_size(shape);
        json_array_foreach(shape, j, e) {
            json_int_t v = json_is_integer(e) ? json_integer_value(e) : -1;
            if (v < 0 || v > ((json_int_t)1 << 40) ||
                (v > 0 && numel > ((uint64_t)1 << 50) / (uint64_t)v)) {
                set_msg(msg, msg_size, "%s: tensor %s: bad shape", path, key);
                goto fail;
            }
            t->shape[j] = v;
            numel *= (uint64_t)v;
        }
        if (!json_is_integer(json_array_get(offs, 0)) ||
            !json_is_integer(json_array_get(offs, 1)) ||
            json_integer_value(json_array_get(offs, 0)) < 0 ||
            json_integer_value(json_array_get(offs, 1)) < 0) {
            set_msg(msg, msg_size, "%s: tensor %s: bad data_offsets", path, key);
            goto fail;
        }
        a = (uint64_t)json_integer_value(json_array_get(offs, 0));
        bb = (uint64_t)json_integer_value(json_array_get(offs, 1));
        if (a > bb || bb > (uint64_t)f->size - base) {
            set_msg(msg, msg_size, "%s: tensor %s: data_offsets [%llu, %llu] outside the "
                    "%llu data bytes (truncated file?)", path, key, (unsigned long long)a,
                    (unsigned long long)bb, (unsigned long long)((uint64_t)f->size - base));
            goto fail;
        }
        if (bb - a != numel * (uint64_t)esize) {
            set_msg(msg, msg_size, "%s: tensor %s: %llu data bytes for %llu elements of %s",
                    path, key, (unsigned long long)(bb - a), (unsigned long long)numel,
                    json_string_value(dt));
            goto fail;
        }
        t->name = key;
        t->data = f->map + base + a;
        t->nbytes = bb - a;
        i++;
    }
    f->n_tensors = i;
    return 0;
fail:
    file_close(f);
    return -1;
}

static const tl_tensor *file_find(const tl_file *f, const char *name)
{
    int64_t i;
    for (i = 0; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0)
            return &f->tensors[i];
    return NULL;
}

int tl_safetensors_list(const char *path, char *msg, size_t msg_size)
{
    static const char *names[] = { "F32", "F16", "BF16" };
    tl_file f;
    int64_t i;
    int j;
    if (file_open(&f, path, msg, msg_size) != 0)
        return -1;
    for (i = 0; i < f.n_tensors; i++) {
        printf("%s %s [", f.tensors[i].name, names[f.tensors[i].dtype]);
        for (j = 0; j < f.tensors[i].ndim; j++)
            printf("%s%lld", j ? ", " : "", (long long)f.tensors[i].shape[j]);
        printf("]\n");
    }
    file_close(&f);
    return 0;
}

static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    uint32_t bits;
    float out;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {                     /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while ((man & 0x400u) == 0) {
                man <<= 1;
                exp--;
            }
            bits = sign | (exp << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    memcpy(&out, &bits, 4);
    return out;
}

/* ---- the model ------------------------------------------------------------ */

typedef struct want {
    const char *name;   /* full tensor name */
    int64_t rows, cols; /* cols 0: a vector of rows */
    const float **dst;
    int optional;
} want;

static json_t *cfg_get(json_t *cfg, const char *key)
{
    json_t *v = json_object_get(cfg, key);
    return json_is_null(v) ? NULL : v;
}

static int cfg_int(json_t *cfg, const char *key, int32_t *out, int32_t dflt, int required,
                   const char *path, char *msg, size_t msg_size)
{
    json_t *v = cfg_get(cfg, key);
    if (v == NULL) {
        if (required) {
            set_msg(msg, msg_size, "%s: missing \"%s\"", path, key);
            return -1;
        }
        *out = dflt;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        json_integer_value(v) > INT32_MAX) {
        set_msg(msg, msg_size, "%s: \"%s\" is not a non-negative 32-bit integer", path, key);
        return -1;
    }
    *out = (int32_t)json_integer_value(v);
    return 0;
}

static int cfg_num(json_t *cfg, const char *key, double *out, double dflt,
                   const char *path, char *msg, size_t msg_size)
{
    json_t *v = cfg_get(cfg, key);
    if (v == NULL) {
        *out = dflt;
        return 0;
    }
    if (!json_is_number(v)) {
        set_msg(msg, msg_size, "%s: \"%s\" is not a number", path, key);
        return -1;
    }
    *out = json_number_value(v);
    return 0;
}

static int read_config(tl_config *c, const char *dir, char *msg, size_t msg_size)
{
    char path[4200];
    json_error_t jerr;
    json_t *cfg, *v;
    double eps, theta;
    int rc = -1;

    snprintf(path, sizeof path, "%s/config.json", dir);
    cfg = json_load_file(path, 0, &jerr);
    if (cfg == NULL) {
        set_msg(msg, msg_size, "%s: %s (line %d)", path, jerr.text, jerr.line);
        return -1;
    }
    if (!json_is_object(cfg)) {
        set_msg(msg, msg_size, "%s: not a JSON object", path);
        goto out;
    }
    v = cfg_get(cfg, "model_type");
    if (v != NULL && (!json_is_string(v) || (strcmp(json_string_value(v), "llama") != 0 &&
                                             strcmp(json_string_value(v), "mistral") != 0))) {
        set_msg(msg, msg_size, "%s: model_type %s is not a Llama-architecture model",
                path, json_is_string(v) ? json_string_value(v) : "(not a string)");
        goto out;
    }
    v = cfg_get(cfg, "hidden_act");
    if (v != NULL && (!json_is_string(v) || strcmp(json_string_value(v), "silu") != 0)) {
        set_msg(msg, msg_size, "%s: hidden_act must be \"silu\"", path);
        goto out;
    }
    if (json_is_true(cfg_get(cfg, "attention_bias")) || json_is_true(cfg_get(cfg, "mlp_bias"))) {
        set_msg(msg, msg_size, "%s: attention_bias / mlp_bias are not supported", path);
        goto out;
    }
    if (cfg_get(cfg, "rope_scaling") != NULL) {
        set_msg(msg, msg_size, "%s: rope_scaling is not supported (plain rotary only)", path);
        goto out;
    }
    if (cfg_get(cfg, "sliding_window") != NULL) {
        set_msg(msg, msg_size, "%s: sliding_window attention is not supported", path);
        goto out;
    }
    if (cfg_int(cfg, "vocab_size", &c->vocab_size, 0, 1, path, msg, msg_size) ||
        cfg_int(cfg, "hidden_size", &c->hidden_size, 0, 1, path, msg, msg_size) ||
        cfg_int(cfg, "intermediate_size", &c->intermediate_size, 0, 1, path, msg, msg_size) ||
        cfg_int(cfg, "num_hidden_layers", &c->n_layers, 0, 1, path, msg, msg_size) ||
        cfg_int(cfg, "num_attention_heads", &c->n_heads, 0, 1, path, msg, msg_size) ||
        cfg_int(cfg, "num_key_value_heads", &c->n_kv_heads, c->n_heads, 0, path, msg,
                msg_size) ||
        cfg_int(cfg, "max_position_embeddings", &c->max_pos, 2048, 0, path, msg, msg_size) ||
        cfg_int(cfg, "bos_token_id", &c->bos_id, 1, 0, path, msg, msg_size) ||
        cfg_int(cfg, "eos_token_id", &c->eos_id, 2, 0, path, msg, msg_size) ||
        cfg_num(cfg, "rms_norm_eps", &eps, 1e-6, path, msg, msg_size) ||
        cfg_num(cfg, "rope_theta", &theta, 10000.0, path, msg, msg_size))
        goto out;
    if (c->n_heads == 0 || c->hidden_size == 0 || c->vocab_size == 0 || c->n_layers == 0 ||
        c->intermediate_size == 0 || c->n_kv_heads == 0 || c->n_heads % c->n_kv_heads != 0) {
        set_msg(msg, msg_size, "%s: sizes must be positive and num_attention_heads a "
                "multiple of num_key_value_heads", path);
        goto out;
    }
    if (cfg_int(cfg, "head_dim", &c->head_dim, c->hidden_size / c->n_heads, 0, path, msg,
                msg_size))
        goto out;
    if (c->head_dim == 0 || c->head_dim % 2 != 0 || c->n_layers > 4096) {
        set_msg(msg, msg_size, "%s: head_dim must be even and positive", path);
        goto out;
    }
    if (!(eps >= 0) || !(theta > 0)) {
        set_msg(msg, msg_size, "%s: rms_norm_eps or rope_theta out of range", path);
        goto out;
    }
    c->rms_eps = (float)eps;
    c->rope_theta = theta;
    /* Hugging Face's LlamaConfig defaults tie_word_embeddings to false. */
    c->tie_embeddings = json_is_true(cfg_get(cfg, "tie_word_embeddings"));
    rc = 0;
out:
    json_decref(cfg);
    return rc;
}

/* Open model.safetensors, or the shards named by model.safetensors.index.json. */
static int open_weights(tl_model *m, const char *dir, char *msg, size_t msg_size)
{
    char path[4200];
    json_error_t jerr;
    json_t *idx, *map, *v;
    const char *key;
    struct stat st;
    int32_t i;

    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (stat(path, &st) == 0) {
        m->files = calloc(1, sizeof *m->files);
        if (m->files == NULL) {
            set_msg(msg, msg_size, "out of memory");
            return -1;
        }
        m->n_files = 1;
        return file_open(&m->files[0], path, msg, msg_size);
    }
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    if (stat(path, &st) != 0) {
        set_msg(msg, msg_size, "%s: neither model.safetensors nor "
                "model.safetensors.index.json found (only safetensors weights are read)", dir);
        return -1;
    }
    idx = json_load_file(path, 0, &jerr);
    map = idx ? json_object_get(idx, "weight_map") : NULL;
    if (!json_is_object(map)) {
        set_msg(msg, msg_size, "%s: %s", path, idx ? "no \"weight_map\" object" : jerr.text);
        json_decref(idx);
        return -1;
    }
    /* Distinct shard names, in first-seen order. */
    m->files = calloc(json_object_size(map) + 1, sizeof *m->files);
    if (m->files == NULL) {
        json_decref(idx);
        set_msg(msg, msg_size, "out of memory");
        return -1;
    }
    json_object_foreach(map, key, v) {
        char shard[4200];
        int seen = 0;
        if (!json_is_string(v) || strchr(json_string_value(v), '/') != NULL) {
            set_msg(msg, msg_size, "%s: tensor %s: bad shard name", path, key);
            json_decref(idx);
            return -1;
        }
        snprintf(shard, sizeof shard, "%s/%s", dir, json_string_value(v));
        for (i = 0; i < m->n_files; i++)
            if (strcmp(m->files[i].path, shard) == 0)
                seen = 1;
        if (seen)
            continue;
        if (file_open(&m->files[m->n_files], shard, msg, msg_size) != 0) {
            json_decref(idx);
            return -1;
        }
        m->n_files++;
    }
    json_decref(idx);
    return 0;
}

static const tl_tensor *find_tensor(const tl_model *m, const char *name, const tl_file **in)
{
    int32_t i;
    for (i = 0; i < m->n_files; i++) {
        const tl_tensor *t = file_find(&m->files[i], name);
        if (t != NULL) {
            *in = &m->files[i];
            return t;
        }
    }
    return NULL;
}

int tl_model_load(tl_model *m, const char *dir, char *msg, size_t msg_size)
{
    tl_config *c = &m->cfg;
    want *w = NULL;
    int32_t nw = 0, l;
    size_t need = 0, used = 0;
    int64_t i;
    char (*names)[128] = NULL;
    struct stat st;
    char path[4200];

    memset(m, 0, sizeof *m);
    if (read_config(c, dir, msg, msg_size) != 0)
        return -1;
    snprintf(m->tokenizer_path, sizeof m->tokenizer_path, "%s/tokenizer.model", dir);
    if (stat(m->tokenizer_path, &st) != 0) {
        snprintf(path, sizeof path, "%s/tokenizer.json", dir);
        if (stat(path, &st) == 0)
            set_msg(msg, msg_size, "%s: only tokenizer.json is present; tinylm reads "
                    "sentencepiece tokenizer.model files only (libsentencepiece)", dir);
        else
            set_msg(msg, msg_size, "%s: no tokenizer.model", dir);
        return -1;
    }
    if (open_weights(m, dir, msg, msg_size) != 0)
        goto fail;

    {
        int64_t d = c->hidden_size, qd = (int64_t)c->n_heads * c->head_dim;
        int64_t kvd = (int64_t)c->n_kv_heads * c->head_dim, ff = c->intermediate_size;
        int32_t cap = 4 + 9 * c->n_layers;
        m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
        w = calloc((size_t)cap, sizeof *w);
        names = calloc((size_t)cap, sizeof *names);
        if (m->layers == NULL || w == NULL || names == NULL) {
            set_msg(msg, msg_size, "out of memory");
            goto fail;
        }
#define WANT(nm, r_, c_, dst_, opt_) do { \
            snprintf(names[nw], sizeof names[nw], "%s", nm); \
            w[nw].name = names[nw]; w[nw].rows = (r_); w[nw].cols = (c_); \
            w[nw].dst = (dst_); w[nw].optional = (opt_); nw++; } while (0)
        WANT("model.embed_tokens.weight", c->vocab_size, d, &m->embed, 0);
        WANT("model.norm.weight", d, 0, &m->final_norm, 0);
        WANT("lm_head.weight", c->vocab_size, d, &m->lm_head, c->tie_embeddings);
        for (l = 0; l < c->n_layers; l++) {
            tl_layer *L = &m->layers[l];
            char b[128];
#define LW(suffix, r_, c_, field) do { \
                snprintf(b, sizeof b, "model.layers.%d.%s", (int)l, suffix); \
                WANT(b, r_, c_, &L->field, 0); } while (0)
            LW("input_layernorm.weight", d, 0, attn_norm);
            LW("self_attn.q_proj.weight", qd, d, wq);
            LW("self_attn.k_proj.weight", kvd, d, wk);
            LW("self_attn.v_proj.weight", kvd, d, wv);
            LW("self_attn.o_proj.weight", d, qd, wo);
            LW("post_attention_layernorm.weight", d, 0, ffn_norm);
            LW("mlp.gate_proj.weight", ff, d, w_gate);
            LW("mlp.up_proj.weight", ff, d, w_up);
            LW("mlp.down_proj.weight", d, ff, w_down);
#undef LW
        }
#undef WANT
    }

    /* Check every tensor first, then size the arena, then convert. */
    for (i = 0; i < nw; i++) {
        const tl_file *f = NULL;
        const tl_tensor *t = find_tensor(m, w[i].name, &f);
        int ndim = w[i].cols ? 2 : 1;
        if (t == NULL) {
            if (w[i].optional)
                continue;
            set_msg(msg, msg_size, "%s: missing tensor %s", m->n_files == 1 ?
                    m->files[0].path : dir, w[i].name);
            goto fail;
        }
        if (t->ndim != ndim || t->shape[0] != w[i].rows || (ndim == 2 && t->shape[1] != w[i].cols)) {
            char got[96] = "", exp[64];
            int j;
            size_t o = 0;
            for (j = 0; j < t->ndim && o < sizeof got - 24; j++)
                o += (size_t)snprintf(got + o, sizeof got - o, "%s%lld", j ? ", " : "",
                                      (long long)t->shape[j]);
            if (ndim == 2)
                snprintf(exp, sizeof exp, "%lld, %lld", (long long)w[i].rows, (long long)w[i].cols);
            else
                snprintf(exp, sizeof exp, "%lld", (long long)w[i].rows);
            set_msg(msg, msg_size, "%s: tensor %s has shape [%s], config.json implies [%s]",
                    f->path, w[i].name, got, exp);
            goto fail;
        }
        if (t->dtype != DT_F32 || ((uintptr_t)t->data % sizeof(float)) != 0)
            need += (size_t)(t->nbytes / (t->dtype == DT_F32 ? 4 : 2));
    }
    if (need > 0) {
        m->arena = malloc(need * sizeof(float));
        if (m->arena == NULL) {
            set_msg(msg, msg_size, "%s: out of memory converting %zu MB of weights to fp32",
                    dir, need * sizeof(float) >> 20);
            goto fail;
        }
        m->arena_floats = need;
    }
    for (i = 0; i < nw; i++) {
        const tl_file *f = NULL;
        const tl_tensor *t = find_tensor(m, w[i].name, &f);
        uint64_t n, j;
        float *dst;
        if (t == NULL)
            continue;
        if (t->dtype == DT_F32 && ((uintptr_t)t->data % sizeof(float)) == 0) {
            *w[i].dst = (const float *)(const void *)t->data;
            m->in_place_floats += (size_t)(t->nbytes / 4);
            continue;
        }
        n = t->nbytes / (t->dtype == DT_F32 ? 4 : 2);
        dst = m->arena + used;
        if (t->dtype == DT_F32) {
            memcpy(dst, t->data, (size_t)t->nbytes);
        } else {
            for (j = 0; j < n; j++) {
                uint16_t h = (uint16_t)(t->data[2 * j] | (t->data[2 * j + 1] << 8));
                if (t->dtype == DT_F16) {
                    dst[j] = half_to_float(h);
                } else {
                    uint32_t bits = (uint32_t)h << 16;
                    memcpy(&dst[j], &bits, 4);
                }
            }
        }
        used += (size_t)n;
        *w[i].dst = dst;
    }
    if (m->lm_head == NULL)
        m->lm_head = m->embed;
    /* The seven matrices of each layer packed for tl_matmul. */
    for (l = 0; l < m->cfg.n_layers; l++) {
        tl_layer *L = &m->layers[l];
        const int32_t d = m->cfg.hidden_size, ff = m->cfg.intermediate_size;
        const int32_t qd = m->cfg.n_heads * m->cfg.head_dim;
        const int32_t kvd = m->cfg.n_kv_heads * m->cfg.head_dim;
        if (tl_matrix_pack(&L->mm[TL_MM_Q], L->wq, qd, d) != 0 ||
            tl_matrix_pack(&L->mm[TL_MM_K], L->wk, kvd, d) != 0 ||
            tl_matrix_pack(&L->mm[TL_MM_V], L->wv, kvd, d) != 0 ||
            tl_matrix_pack(&L->mm[TL_MM_O], L->wo, d, qd) != 0 ||
            tl_matrix_pack(&L->mm[TL_MM_GATE], L->w_gate, ff, d) != 0 ||
            tl_matrix_pack(&L->mm[TL_MM_UP], L->w_up, ff, d) != 0 ||
            tl_matrix_pack(&L->mm[TL_MM_DOWN], L->w_down, d, ff) != 0) {
            set_msg(msg, msg_size, "out of memory packing layer %d", (int)l);
            goto fail;
        }
    }
    free(w);
    free(names);
    return 0;
fail:
    free(w);
    free(names);
    tl_model_free(m);
    return -1;
}

void tl_model_free(tl_model *m)
{
    int32_t i, k;
    if (m == NULL)
        return;
    for (i = 0; i < m->n_files; i++)
        file_close(&m->files[i]);
    free(m->files);
    if (m->layers != NULL)
        for (i = 0; i < m->cfg.n_layers; i++)
            for (k = 0; k < TL_MM_N; k++)
                tl_matrix_free(&m->layers[i].mm[k]);
    free(m->layers);
    free(m->arena);
    memset(m, 0, sizeof *m);
}
