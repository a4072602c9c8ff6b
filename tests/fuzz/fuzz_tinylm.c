/* SPDX-License-Identifier: MIT */
/*
 * fuzz_tinylm.c - the demo runtime's checkpoint loader (examples/tinylm/
 * ckpt.c): config.json, a safetensors file's header and data offsets, and
 * model.safetensors.index.json with its shards.
 *
 * The loader reads a directory, so each input is written out as one:
 *   byte 0      mode: bit 0 index + shards instead of model.safetensors,
 *               bit 1 no tokenizer.model, bit 2 also tl_safetensors_list
 *   then parts separated by the 4 bytes "\n@@\n":
 *   part 1      config.json
 *   part 2      model.safetensors, or model.safetensors.index.json
 *   part 3, 4   shards a.safetensors, b.safetensors (index mode)
 * tl_model_load must either succeed with a model whose tensors have the
 * shapes config.json implies (then tl_model_free), or fail with a message;
 * ASan and UBSan watch the parsing, LeakSanitizer the failure paths.  Only
 * ckpt.c and matmul.c (which packs the loaded matrices) are built with the
 * sanitizers; Debian's libjansson is not fuzzed.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tinylm.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "%s:%d: invariant violated: %s\n", __FILE__,     \
                    __LINE__, #cond);                                        \
            abort();                                                         \
        }                                                                    \
    } while (0)

static char dir[64];

static void put(const char *name, const uint8_t *p, size_t n)
{
    char path[128];
    FILE *fp;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    fp = fopen(path, "wb");
    CHECK(fp != NULL);
    CHECK(n == 0 || fwrite(p, 1, n, fp) == n);
    CHECK(fclose(fp) == 0);
}

static void clear(void)
{
    static const char *const names[] = { "config.json", "model.safetensors",
                                         "model.safetensors.index.json", "a.safetensors",
                                         "b.safetensors", "tokenizer.model" };
    char path[128];
    size_t i;
    for (i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
}

static void cleanup(void)
{
    clear();
    rmdir(dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *part[5] = { 0 };
    size_t len[5] = { 0 }, i, at = size ? 1 : 0;
    int n = 1, mode = size ? data[0] : 0;
    tl_model m;
    char msg[512];
    int rc;

    if (!dir[0]) {
        const char *tmp = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/eevp-fuzz-XXXXXX", tmp && strlen(tmp) < 40 ? tmp : "/tmp");
        CHECK(mkdtemp(dir) != NULL);
        atexit(cleanup);
    }
    /* Split on "\n@@\n" into parts 1 .. 4; missing parts are empty. */
    part[1] = data + at;
    for (i = at; i + 4 <= size && n < 4; i++)
        if (memcmp(data + i, "\n@@\n", 4) == 0) {
            len[n] = i - at;
            at = i + 4;
            part[++n] = data + at;
            i += 3;
        }
    len[n] = size > at ? size - at : 0;

    clear();
    put("config.json", part[1] ? part[1] : data, len[1]);
    if (mode & 1) {
        put("model.safetensors.index.json", part[2] ? part[2] : data, len[2]);
        put("a.safetensors", part[3] ? part[3] : data, len[3]);
        put("b.safetensors", part[4] ? part[4] : data, len[4]);
    } else {
        put("model.safetensors", part[2] ? part[2] : data, len[2]);
    }
    if (!(mode & 2))
        put("tokenizer.model", (const uint8_t *)"", 0);

    memset(msg, 0, sizeof msg);
    rc = tl_model_load(&m, dir, msg, sizeof msg);
    CHECK(rc == 0 || rc == -1);
#ifdef FUZZ_DEBUG
    fprintf(stderr, "tl_model_load: %d %s\n", rc, msg);
#endif
    if (rc == 0) {
        const tl_config *c = &m.cfg;
        int32_t l;
        CHECK(c->vocab_size > 0 && c->hidden_size > 0 && c->n_layers > 0);
        CHECK(c->n_heads > 0 && c->n_kv_heads > 0 && c->head_dim > 0);
        CHECK(m.embed && m.lm_head && m.final_norm && m.layers);
        /* Every tensor is readable in full (ASan checks the reads). */
        {
            volatile float acc = 0.0f;
            int64_t j, vd = (int64_t)c->vocab_size * c->hidden_size;
            for (j = 0; j < vd; j += 7)
                acc += m.embed[j] + m.lm_head[j];
            acc += m.embed[vd - 1] + m.lm_head[vd - 1] + m.final_norm[c->hidden_size - 1];
            for (l = 0; l < c->n_layers; l++) {
                const tl_layer *L = &m.layers[l];
                CHECK(L->attn_norm && L->wq && L->wk && L->wv && L->wo && L->ffn_norm &&
                      L->w_gate && L->w_up && L->w_down);
                acc += L->w_down[(int64_t)c->hidden_size * c->intermediate_size - 1];
                acc += L->wo[(int64_t)c->hidden_size * c->n_heads * c->head_dim - 1];
            }
            (void)acc;
        }
        tl_model_free(&m);
    } else {
        CHECK(msg[0] != '\0');
    }
    if (mode & 4) {
        /* The listing prints every tensor: keep it off the output. */
        int saved = dup(1), devnull = open("/dev/null", O_WRONLY);
        char path[128];
        snprintf(path, sizeof path, "%s/%s", dir, mode & 1 ? "a.safetensors" : "model.safetensors");
        fflush(stdout);
        if (saved >= 0 && devnull >= 0)
            dup2(devnull, 1);
        rc = tl_safetensors_list(path, msg, sizeof msg);
        fflush(stdout);
        if (saved >= 0) {
            dup2(saved, 1);
            close(saved);
        }
        if (devnull >= 0)
            close(devnull);
        CHECK(rc == 0 || rc == -1);
    }
    return 0;
}
