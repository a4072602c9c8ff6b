/* SPDX-License-Identifier: MIT */
/*
 * main.c - the command line of tinylm, the reference early-exit decoding
 * runtime on libeevp.
 *
 * Loads a Llama-architecture checkpoint directory (Hugging Face layout) and
 * decodes in one of three modes (prompts go through every layer together,
 * the batched prefill; generated tokens one at a time):
 *   full    full depth, the model's own output (no early exit);
 *   ee      early exit, confidence on the full vocabulary (K = 0);
 *   pruned  early exit with dynamic vocabulary pruning (K > 0).
 * libeevp is used through its public header only.  When a token exits at
 * layer l, every deeper layer computes only its K/V from the exit hidden
 * state (state propagation), so later tokens attend to a complete cache.
 *
 *   tinylm generate [options] PROMPT...   text in the three modes (or --mode)
 *   tinylm demo [options]                 the main job: choose the operating
 *                                         point on validation, evaluate on test
 *   tinylm sweep [options]                trade-off over thresholds and K
 *   tinylm policies [options]             candidate-set policies against the plain method
 *   tinylm verify [options]               dumps for the PyTorch cross-check
 *   tinylm check-batch                    batch-invariance test (exit 1 on failure)
 *   tinylm check-spec                     greedy spec equals full depth (exit 1 on failure)
 *   tinylm inspect --model DIR            load a checkpoint and summarise it
 *   tinylm tensors FILE.safetensors       list a safetensors file
 *   tinylm lines SPLIT                    the WordNet text of a split
 */
#include "runtime.h"

#include <cblas.h>
#include <eevp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- options ------------------------------------------------------------------ */

static void parse(opts *o, int argc, char **argv)
{
    int i;
    memset(o, 0, sizeof *o);
    o->model = "examples/tinylm/model";
    o->wordnet = "/usr/share/wordnet";
    o->k = 64;
    o->first = -1;
    o->threshold = -1;
    o->max_new = 32;
    o->val_tokens = 1024;
    o->test_tokens = 2048;
    o->gen = 8;
    o->seed = 42;
    o->final_policy = EEVP_FINAL_PRUNED;
    o->args = xmalloc((size_t)argc * sizeof(char *));
    for (i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define OPT(name) (strcmp(a, name) == 0 && v != NULL && ++i)
        if (OPT("--model")) o->model = v;
        else if (OPT("--wordnet")) o->wordnet = v;
        else if (OPT("--out")) o->out = v;
        else if (OPT("--mode")) o->mode = v;
        else if (OPT("--k")) o->k = atoi(v);
        else if (OPT("--first")) o->first = atoi(v);
        else if (OPT("--threshold")) o->threshold = (float)atof(v);
        else if (OPT("--max-new")) o->max_new = atoi(v);
        else if (OPT("--val-tokens")) o->val_tokens = atoi(v);
        else if (OPT("--test-tokens")) o->test_tokens = atoi(v);
        else if (OPT("--gen")) o->gen = atoi(v);
        else if (OPT("--temp")) o->temp = (float)atof(v);
        else if (OPT("--seed")) o->seed = (uint64_t)strtoull(v, NULL, 10);
        else if (OPT("--final")) o->final_policy = strcmp(v, "full") == 0 ? EEVP_FINAL_FULL
                                                                          : EEVP_FINAL_PRUNED;
        else if (a[0] == '-' && a[1] == '-') die("unknown or incomplete option %s", a);
        else o->args[o->n_args++] = argv[i];
#undef OPT
    }
    if (o->seed == 0)
        o->seed = 42;
}

/* ---- generate ---------------------------------------------------------------- */

static const char *default_prompts[] = {
    "violin:", "river:", "happiness:", "to run:", "bright, shining:", "king:",
};

void run_generate(runner *r, const opts *o, const dec_cfg *base)
{
    int m, p, n_prompts = o->n_args > 0 ? o->n_args : (int)(sizeof default_prompts /
                                                            sizeof *default_prompts);
    const char **prompts = o->n_args > 0 ? (const char **)o->args : default_prompts;
    printf("generation (%s, max %d new tokens; layers 1..%d, K=%d, first checked layer %d, "
           "threshold %.3f):\n", o->temp > 0 ? "sampling" : "greedy", (int)o->max_new,
           (int)r->L, (int)base->k, (int)base->first, (double)base->threshold);
    for (p = 0; p < n_prompts; p++) {
        for (m = 0; m < 3; m++) {
            decoder dc;
            dec_cfg cfg = *base;
            double ls = 0, secs = 0;
            int64_t nt = 0;
            if (o->mode != NULL && m != (strcmp(o->mode, "full") == 0 ? 0 :
                                          strcmp(o->mode, "ee") == 0 ? 1 : 2))
                continue;
            cfg.mode = m;
            decoder_open(&dc, r, &cfg);
            generate_one(r, &dc, prompts[p], o, &ls, &nt, &secs);
            decoder_close(&dc);
        }
    }
}

/* ---- verify: dumps for the PyTorch cross-check ------------------------------------ */

static void print_floats(FILE *f, const float *x, int64_t n)
{
    int64_t i;
    fputc('[', f);
    for (i = 0; i < n; i++)
        fprintf(f, "%s%.9g", i ? "," : "", (double)x[i]);
    fputc(']', f);
}

static void run_verify(runner *r, const opts *o)
{
    const char *prompt = o->n_args > 0 ? o->args[0] : "violin: a bowed stringed instrument";
    int32_t ids[MAX_SEQ], n = 0, i, l;
    int64_t np;
    step_out so;
    decoder dfull, dpr;
    dec_cfg cfg;
    FILE *f;
    float *h = xmalloc((size_t)r->d * sizeof(float));
    int32_t kvd = r->m.cfg.n_kv_heads * r->m.cfg.head_dim, first = o->first >= 0 ? o->first : 2;

    if (o->out == NULL)
        die("verify needs --out FILE.json");
    f = fopen(o->out, "w");
    if (f == NULL)
        die("%s: cannot write", o->out);
    ids[n++] = tl_tok_bos(r->tok);
    np = tl_tok_encode(r->tok, prompt, ids + 1, 64);
    if (np < 1 || np > 64)
        die("prompt must have 1..64 pieces");
    n += (int32_t)np;
    memset(&cfg, 0, sizeof cfg);
    cfg.mode = MODE_FULL;
    decoder_open(&dfull, r, &cfg);
    fprintf(f, "{\"prompt_ids\":[");
    for (i = 0; i < n; i++)
        fprintf(f, "%s%d", i ? "," : "", (int)ids[i]);
    /* 1. Full-depth logits at every prompt position, then greedy continuation. */
    fprintf(f, "],\n\"logits\":[");
    for (i = 0; i < n; i++) {
        decode_step(&dfull, ids[i], i, 0, NULL, &so);
        if (i)
            fputc(',', f);
        print_floats(f, r->logits, r->V);
        fputc('\n', f);
    }
    fprintf(f, "],\n\"greedy\":[");
    for (i = 0; i < o->gen; i++) {
        fprintf(f, "%s%d", i ? "," : "", (int)so.token);
        decode_step(&dfull, so.token, n + i, 0, NULL, &so);
    }
    /* 2. State propagation: positions 0..n-2 at full depth again (fresh cache
     * contents are overwritten position by position), the last prompt token
     * with early exit at threshold 0 so that it exits at `first`. */
    for (i = 0; i < n - 1; i++)
        decode_step(&dfull, ids[i], i, 0, NULL, &so);
    cfg.mode = MODE_PRUNED;
    cfg.k = o->k;
    cfg.first = first;
    cfg.threshold = 0.0f;
    cfg.final_policy = EEVP_FINAL_FULL;
    decoder_open(&dpr, r, &cfg);
    decode_step(&dpr, ids[n - 1], n - 1, 0, NULL, &so);
    memcpy(h, r->x, (size_t)r->d * sizeof(float));
    fprintf(f, "],\n\"exit\":{\"position\":%d,\"layer\":%d,\"token\":%d,\"confidence\":%.9g,"
            "\"hidden\":", (int)(n - 1), (int)so.layer, (int)so.token, (double)so.confidence);
    print_floats(f, h, r->d);
    fprintf(f, ",\n\"k\":{");
    for (l = so.layer + 1; l < r->L; l++) {
        fprintf(f, "%s\"%d\":", l > so.layer + 1 ? "," : "", (int)l);
        print_floats(f, tl_cache_k(&r->st, l, n - 1), kvd);
    }
    fprintf(f, "},\n\"v\":{");
    for (l = so.layer + 1; l < r->L; l++) {
        fprintf(f, "%s\"%d\":", l > so.layer + 1 ? "," : "", (int)l);
        print_floats(f, tl_cache_v(&r->st, l, n - 1), kvd);
    }
    /* 3. The batched prefill: every prompt position through each layer
     * together; its logits at every position and its K/V. */
    {
        float *xb = xmalloc((size_t)n * (size_t)r->d * sizeof(float));
        fprintf(f, "}},\n\"prefill\":{\"logits\":[");
        for (i = 0; i < n; i++)
            tl_embed(&r->st, ids[i], xb + (size_t)i * (size_t)r->d);
        for (l = 0; l < r->L; l++)
            if (tl_layer_forward_batch(&r->st, l, 0, n, xb, r->d) != 0)
                die("batched layer %d failed", (int)l);
        for (i = 0; i < n; i++) {
            if (eevp_head_logits(r->head, 1, xb + (size_t)i * (size_t)r->d, r->d, r->logits,
                                 r->V, r->work) != EEVP_OK)
                die("eevp_head_logits failed");
            if (i)
                fputc(',', f);
            print_floats(f, r->logits, r->V);
            fputc('\n', f);
        }
        fprintf(f, "],\n\"k\":[");
        for (l = 0; l < r->L; l++)
            for (i = 0; i < n; i++) {
                fputs(l || i ? "," : "", f);
                print_floats(f, tl_cache_k(&r->st, l, i), kvd);
            }
        fprintf(f, "],\n\"v\":[");
        for (l = 0; l < r->L; l++)
            for (i = 0; i < n; i++) {
                fputs(l || i ? "," : "", f);
                print_floats(f, tl_cache_v(&r->st, l, i), kvd);
            }
        fprintf(f, "]},\n");
        free(xb);
    }
    /* 4. A spec round from the last prompt token (positions 0 .. n-2
     * prefilled): its drafts, the accepted count and the completed final
     * states of the round's positions. */
    {
        spec_dec sd;
        spec_cfg sc;
        int32_t emitted[EEVP_MAX_DRAFT + 1], e;
        memset(&sc, 0, sizeof sc);
        sc.k = o->k;
        sc.first = first;
        sc.depth_limit = r->L - 2;
        sc.max_draft = 4;
        sc.threshold = 0.0f; /* every draft exits at the first check: the longest round */
        spec_open(&sd, r, &sc);
        if (tl_prefill(&r->st, ids, 0, n - 1, NULL) != 0)
            die("prefill failed");
        e = spec_round(&sd, ids[n - 1], n - 1, 1u, emitted);
        fprintf(f, "\"spec\":{\"position\":%d,\"tokens\":[", (int)(n - 1));
        for (i = 0; i <= sd.n; i++)
            fprintf(f, "%s%d", i ? "," : "", (int)sd.toks[i]);
        fprintf(f, "],\"accepted\":%d,\"next\":%d,\"final\":[", (int)(e - 1),
                (int)emitted[e - 1]);
        for (i = 0; i <= sd.n; i++) {
            if (i)
                fputc(',', f);
            print_floats(f, sd.xs + (size_t)i * (size_t)r->d, r->d);
        }
        fprintf(f, "]}}\n");
        spec_close(&sd);
    }
    fclose(f);
    decoder_close(&dfull);
    decoder_close(&dpr);
    free(h);
    printf("wrote %s: %d prompt positions, %d greedy tokens, exit at layer %d of %d\n",
           o->out, (int)n, (int)o->gen, (int)so.layer, (int)r->L);
}

/* ---- main ------------------------------------------------------------------------ */

static void usage(void)
{
    fprintf(stderr,
            "usage: tinylm COMMAND [options]\n"
            "  generate [PROMPT...]   text in the three modes (--mode full|ee|pruned)\n"
            "  demo                   operating point on validation, test evaluation\n"
            "  sweep                  agreement and speed over thresholds and K (CSV)\n"
            "  policies               candidate-set policies against the plain method\n"
            "  verify --out F.json    dumps for the PyTorch cross-check\n"
            "  check-batch            batch-invariance test of the runtime (exit 1 on failure)\n"
            "  check-spec             greedy spec output equals full depth (exit 1 on failure)\n"
            "  demo-spec              the demo's lossless part alone (spec against full depth)\n"
            "  inspect                load a checkpoint and summarise it\n"
            "  tensors FILE           list a safetensors file\n"
            "  lines SPLIT            WordNet text of split 0 (train), 1 (val), 2 (test)\n"
            "options: --model DIR (examples/tinylm/model)  --k K (64)  --first F\n"
            "  --threshold T  --final pruned|full  --temp T (0: greedy)  --seed S\n"
            "  --max-new N  --val-tokens N  --test-tokens N  --wordnet DIR  --out FILE\n");
    exit(2);
}

int main(int argc, char **argv)
{
    opts o;
    runner r;
    const char *cmd;
    char msg[1024];

    if (argc < 2)
        usage();
    cmd = argv[1];
    parse(&o, argc - 2, argv + 2);
    /* Matrix-vector products of a d=256 model are too small for threads. */
    if (getenv("OPENBLAS_NUM_THREADS") == NULL)
        openblas_set_num_threads(1);
    if (strcmp(cmd, "tensors") == 0) {
        if (o.n_args != 1)
            usage();
        if (tl_safetensors_list(o.args[0], msg, sizeof msg) != 0)
            die("%s", msg);
        free(o.args);
        return 0;
    }
    if (strcmp(cmd, "lines") == 0) {
        int64_t n, i;
        char **lines;
        if (o.n_args != 1)
            usage();
        lines = tl_wordnet_lines(o.wordnet, atoi(o.args[0]), &n, msg, sizeof msg);
        if (lines == NULL)
            die("%s", msg);
        for (i = 0; i < n; i++)
            printf("%s\n", lines[i]);
        tl_lines_free(lines, n);
        free(o.args);
        return 0;
    }
    if (strcmp(cmd, "generate") != 0 && strcmp(cmd, "demo") != 0 &&
        strcmp(cmd, "sweep") != 0 && strcmp(cmd, "verify") != 0 && strcmp(cmd, "inspect") != 0 &&
        strcmp(cmd, "policies") != 0 && strcmp(cmd, "check-batch") != 0 &&
        strcmp(cmd, "check-spec") != 0 && strcmp(cmd, "demo-spec") != 0)
        usage();
    runner_open(&r, o.model);
    if (strcmp(cmd, "inspect") == 0) {
        printf("%s: llama, %d layers, d=%d, %d heads (%d K/V heads, head_dim %d), ffn %d, "
               "vocab %d, %s embeddings; %d file(s), %zu floats converted, %zu used in place\n",
               o.model, (int)r.L, (int)r.d, (int)r.m.cfg.n_heads, (int)r.m.cfg.n_kv_heads,
               (int)r.m.cfg.head_dim, (int)r.m.cfg.intermediate_size, (int)r.V,
               r.m.cfg.tie_embeddings ? "tied" : "separate", (int)r.m.n_files,
               r.m.arena_floats, r.m.in_place_floats);
    } else if (strcmp(cmd, "generate") == 0) {
        dec_cfg cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.k = o.k;
        cfg.first = o.first >= 0 ? o.first : 2;
        cfg.threshold = o.threshold >= 0 ? o.threshold : 0.1f;
        cfg.final_policy = o.final_policy;
        run_generate(&r, &o, &cfg);
    } else if (strcmp(cmd, "demo") == 0) {
        run_demo(&r, &o);
    } else if (strcmp(cmd, "sweep") == 0) {
        run_sweep(&r, &o);
    } else if (strcmp(cmd, "policies") == 0) {
        run_policies(&r, &o);
    } else if (strcmp(cmd, "demo-spec") == 0) {
        run_demo_spec(&r, &o);
    } else if (strcmp(cmd, "check-spec") == 0) {
        int bad = run_check_spec(&r, &o, default_prompts,
                                 (int)(sizeof default_prompts / sizeof *default_prompts));
        runner_close(&r);
        free(o.args);
        return bad;
    } else if (strcmp(cmd, "check-batch") == 0) {
        int bad = tl_check_batch(&r.m, r.head);
        runner_close(&r);
        free(o.args);
        return bad;
    } else {
        run_verify(&r, &o);
    }
    runner_close(&r);
    free(o.args);
    return 0;
}
