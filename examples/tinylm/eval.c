/* SPDX-License-Identifier: MIT */
/*
 * eval.c - the evaluation of tinylm: WordNet text as token streams,
 * teacher-forced decoding over a stream in chunks (with the timings per
 * position), the bigram baseline, and the measurements the reports use
 * (agreement with full depth, layers used, medians of the faster of two
 * runs, the most frequent tokens).
 */
#include "runtime.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- text ---------------------------------------------------------------- */

static void stream_push(stream *s, int32_t id)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 4096;
        s->ids = realloc(s->ids, (size_t)s->cap * sizeof(int32_t));
        if (s->ids == NULL)
            die("out of memory");
    }
    s->ids[s->n++] = id;
}

/* BOS + pieces of each line, concatenated (the training script's stream). */
static void encode_lines(runner *r, char **lines, int64_t n_lines, int64_t max_tokens,
                         stream *s)
{
    int64_t i, k, n;
    int32_t buf[4096];
    for (i = 0; i < n_lines && (max_tokens <= 0 || s->n < max_tokens); i++) {
        stream_push(s, tl_tok_bos(r->tok));
        n = tl_tok_encode(r->tok, lines[i], buf, 4096);
        if (n < 0)
            die("sentencepiece failed on a line");
        for (k = 0; k < n && k < 4096; k++)
            stream_push(s, buf[k]);
    }
}

void load_split(runner *r, const char *wn, int split, int64_t max_tokens, stream *s)
{
    char msg[512];
    int64_t n;
    char **lines = tl_wordnet_lines(wn, split, &n, msg, sizeof msg);
    if (lines == NULL)
        die("%s", msg);
    encode_lines(r, lines, n, max_tokens, s);
    tl_lines_free(lines, n);
}

/* ---- teacher-forced evaluation ---------------------------------------------- */

void eval_free(eval_out *e)
{
    free(e->pred);
    free(e->layer);
    free(e->in_set);
    free(e->tok_sec);
    free(e->eevp_sec);
    free(e->first_sec);
    memset(e, 0, sizeof *e);
}

/* Decode n_pos positions of s in chunks of CHUNK predictions (a fresh cache
 * per chunk).  For the full mode with oracle_k > 0, also records whether the
 * full-depth token is inside the top oracle_k at layer oracle_layer (an
 * untimed extra pass over that layer's hidden state). */
void evaluate(decoder *dc, const stream *s, int64_t n_pos, int32_t oracle_k,
              int32_t oracle_layer, eval_out *e)
{
    runner *r = dc->r;
    int64_t c, i, p = 0;
    step_out so;
    int32_t *top = NULL;
    void *tw = NULL;

    memset(e, 0, sizeof *e);
    e->pred = xmalloc((size_t)n_pos * sizeof(int32_t));
    e->layer = xmalloc((size_t)n_pos * sizeof(int32_t));
    e->in_set = xmalloc((size_t)n_pos);
    e->tok_sec = xmalloc((size_t)n_pos * sizeof(double));
    e->eevp_sec = xmalloc((size_t)n_pos * sizeof(double));
    e->first_sec = xmalloc((size_t)n_pos * sizeof(double));
    if (oracle_k > 0) {
        top = xmalloc((size_t)oracle_k * sizeof(int32_t));
        tw = xmalloc((size_t)eevp_topk_workspace_size(r->V, oracle_k));
    }
    decoder_reset_stats(dc);
    for (c = 0; p < n_pos && (c + 1) * CHUNK < s->n; c++) {
        const int32_t *ids = s->ids + c * CHUNK;
        float *hp = NULL;
        for (i = 0; i < CHUNK && p < n_pos; i++, p++) {
            double tt = dc->t_tokens, te = dc->t_eevp, tf = dc->t_first;
            if (dc->cfg.mode == MODE_FULL && oracle_k > 0) {
                /* Full depth with the hidden state at oracle_layer kept. */
                int32_t l;
                double t0 = now(), t1;
                if (hp == NULL)
                    hp = xmalloc((size_t)r->d * sizeof(float));
                tl_embed(&r->st, ids[i], r->x);
                for (l = 0; l < r->L; l++) {
                    if (tl_layer_forward(&r->st, l, (int32_t)i, r->x) != 0)
                        die("layer %d failed at position %d", (int)l, (int)i);
                    if (l == oracle_layer)
                        memcpy(hp, r->x, (size_t)r->d * sizeof(float));
                }
                t1 = now();
                if (eevp_head_logits(r->head, 1, r->x, r->d, r->logits, r->V, r->work))
                    die("eevp_head_logits failed");
                so.token = argmax(r->logits, r->V);
                so.layer = r->L - 1;
                dc->t_eevp += now() - t1;
                dc->t_tokens += now() - t0;
                dc->tokens++;
            } else {
                decode_step(dc, ids[i], (int32_t)i, 0, NULL, &so);
            }
            e->tok_sec[p] = dc->t_tokens - tt;
            e->eevp_sec[p] = dc->t_eevp - te;
            e->first_sec[p] = dc->t_first - tf;
            e->pred[p] = so.token;
            e->layer[p] = so.layer;
            e->in_set[p] = 0;
            if (so.token == ids[i + 1])
                e->correct++;
            if (dc->cfg.mode == MODE_FULL) {
                double mx = r->logits[argmax(r->logits, r->V)], sum = 0;
                int32_t v;
                for (v = 0; v < r->V; v++)
                    sum += exp((double)r->logits[v] - mx);
                e->nll += mx + log(sum) - r->logits[ids[i + 1]];
                if (oracle_k > 0) {
                    int32_t j;
                    float *lg = dc->cand_logits;
                    if (eevp_head_logits(r->head, 1, hp, r->d, lg, r->V, r->work) ||
                        eevp_topk(lg, r->V, oracle_k, 0, top, NULL, tw))
                        die("oracle top-K failed");
                    for (j = 0; j < oracle_k; j++)
                        if (top[j] == so.token)
                            e->in_set[p] = 1;
                }
            }
        }
        free(hp);
    }
    e->n = p;
    e->seconds = dc->t_tokens;
    e->eevp_seconds = dc->t_eevp;
    free(top);
    free(tw);
}

/* ---- bigram baseline --------------------------------------------------------- */

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Held-out perplexity of 0.9 * bigram + 0.1 * add-one unigram, counted on the
 * training split (train.py's bigram_eval), over the same positions. */
double bigram_ppl(const stream *train, const stream *test, int64_t n_pos, int32_t V,
                  double *acc)
{
    uint32_t *keys = xmalloc((size_t)train->n * sizeof(uint32_t));
    double *uni = calloc((size_t)V, sizeof(double)), *prev_tot = calloc((size_t)V, sizeof(double));
    int32_t *best = xmalloc((size_t)V * sizeof(int32_t));
    int64_t *bestc = calloc((size_t)V, sizeof(int64_t));
    int64_t i, nk = train->n - 1, c, p = 0, hits = 0;
    double ll = 0, utot = 0;
    int32_t argu = 0, v;

    if (uni == NULL || prev_tot == NULL || bestc == NULL)
        die("out of memory");
    for (i = 0; i < train->n; i++)
        uni[train->ids[i]] += 1;
    for (i = 0; i < nk; i++) {
        keys[i] = (uint32_t)train->ids[i] * (uint32_t)V + (uint32_t)train->ids[i + 1];
        prev_tot[train->ids[i]] += 1;
    }
    qsort(keys, (size_t)nk, sizeof *keys, cmp_u32);
    for (v = 0; v < V; v++) {
        utot += uni[v];
        if (uni[v] > uni[argu])
            argu = v;
    }
    for (v = 0; v < V; v++)
        best[v] = argu;
    for (i = 0; i < nk; i = c) {
        uint32_t prev = keys[i] / (uint32_t)V;
        for (c = i; c < nk && keys[c] == keys[i]; c++)
            ;
        if (c - i > bestc[prev]) {
            bestc[prev] = c - i;
            best[prev] = (int32_t)(keys[i] % (uint32_t)V);
        }
    }
    for (c = 0; p < n_pos && (c + 1) * CHUNK < test->n; c++)
        for (i = 0; i < CHUNK && p < n_pos; i++, p++) {
            int32_t a = test->ids[c * CHUNK + i], b = test->ids[c * CHUNK + i + 1];
            uint32_t key = (uint32_t)a * (uint32_t)V + (uint32_t)b;
            int64_t lo = 0, hi = nk, cnt = 0;
            double pb;
            while (lo < hi) {
                int64_t mid = (lo + hi) / 2;
                if (keys[mid] < key)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            while (lo + cnt < nk && keys[lo + cnt] == key)
                cnt++;
            pb = prev_tot[a] > 0 ? (double)cnt / prev_tot[a] : 0;
            ll += log(0.9 * pb + 0.1 * (uni[b] + 1) / (utot + V));
            hits += best[a] == b;
        }
    free(keys);
    free(uni);
    free(prev_tot);
    free(best);
    free(bestc);
    *acc = p ? (double)hits / (double)p : 0;
    return exp(-ll / (double)(p ? p : 1));
}

/* ---- measurements for demo / sweep / policies -------------------------------- */

double layers_used(const eval_out *e)
{
    double s = 0;
    int64_t i;
    for (i = 0; i < e->n; i++)
        s += e->layer[i] + 1;
    return e->n ? s / (double)e->n : 0;
}

double agreement(const eval_out *a, const eval_out *full)
{
    int64_t i, same = 0;
    for (i = 0; i < a->n; i++)
        same += a->pred[i] == full->pred[i];
    return a->n ? (double)same / (double)a->n : 0;
}

point run_point(runner *r, const dec_cfg *cfg, const stream *s, int64_t n,
                const eval_out *full, eval_out *keep)
{
    decoder dc;
    eval_out e;
    point pt;
    decoder_open(&dc, r, cfg);
    evaluate(&dc, s, n, 0, 0, &e);
    decoder_close(&dc);
    pt.cfg = *cfg;
    pt.agreement = agreement(&e, full);
    pt.mean_layers = layers_used(&e);
    pt.saved = 1.0 - pt.mean_layers / r->L;
    if (keep != NULL)
        *keep = e;
    else
        eval_free(&e);
    return pt;
}

double min_sum(const double *a, const double *b, int64_t n)
{
    double t = 0;
    int64_t i;
    for (i = 0; i < n; i++)
        t += a[i] < b[i] ? a[i] : b[i];
    return t;
}

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median over positions of min(a[i] - a2[i], b[i] - b2[i]) (a2/b2 may be NULL). */
double med_min(const double *a, const double *b, const double *a2, const double *b2,
               int64_t n)
{
    double *v = xmalloc((size_t)n * sizeof(double)), m;
    int64_t i;
    for (i = 0; i < n; i++) {
        double x = a[i] - (a2 ? a2[i] : 0), y = b[i] - (b2 ? b2[i] : 0);
        v[i] = x < y ? x : y;
    }
    qsort(v, (size_t)n, sizeof *v, cmp_dbl);
    m = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
    free(v);
    return m;
}

double conf_time(const eval_out *a, const eval_out *b, double head, int64_t n)
{
    double later = 0, excess = med_min(a->first_sec, b->first_sec, NULL, NULL, n) - head;
    int64_t i;
    for (i = 0; i < n; i++) {
        double x = a->eevp_sec[i] - a->first_sec[i], y = b->eevp_sec[i] - b->first_sec[i];
        later += x < y ? x : y;
    }
    return later + (excess > 0 ? excess : 0) * (double)n;
}

static int cmp_count_desc(const void *a, const void *b)
{
    const int64_t *x = (const int64_t *)a, *y = (const int64_t *)b;
    return (x[0] < y[0]) - (x[0] > y[0]);
}

/* The n most frequent token ids of a stream (ties: smaller id). */
int32_t *frequent_ids(const stream *s, int32_t V, int32_t n)
{
    int64_t *cnt = xmalloc((size_t)V * 2 * sizeof(int64_t)), i;
    int32_t *ids = xmalloc((size_t)n * sizeof(int32_t)), v;
    for (v = 0; v < V; v++) {
        cnt[2 * v] = 0;
        cnt[2 * v + 1] = v;
    }
    for (i = 0; i < s->n; i++)
        cnt[2 * s->ids[i]]++;
    qsort(cnt, (size_t)V, 2 * sizeof(int64_t), cmp_count_desc);
    for (v = 0; v < n; v++)
        ids[v] = (int32_t)cnt[2 * v + 1];
    free(cnt);
    return ids;
}

/* ---- free-running agreement ----------------------------------------------------- */

int32_t *freerun_prompts(runner *r, const char *wn, int split, int32_t n_prompts, int32_t plen)
{
    char msg[512];
    int64_t n_lines, k;
    int32_t p, buf[4096], *out = xmalloc((size_t)n_prompts * (size_t)(plen + 1) * sizeof(int32_t));
    char **lines = tl_wordnet_lines(wn, split, &n_lines, msg, sizeof msg);
    if (lines == NULL)
        die("%s", msg);
    if (n_lines < n_prompts)
        die("the test split has %lld lines, %d prompts asked", (long long)n_lines,
            (int)n_prompts);
    for (p = 0; p < n_prompts; p++) {
        /* The line's tokens as the test stream holds them: a line shorter
         * than plen continues with BOS and the next line. */
        int32_t *o = out + (size_t)p * (size_t)(plen + 1), got = 0;
        int64_t q = p;
        o[0] = tl_tok_bos(r->tok);
        while (got < plen) {
            int64_t n;
            if (q >= n_lines)
                die("the test split ends inside prompt %d", (int)p);
            if (q > p)
                o[1 + got++] = tl_tok_bos(r->tok);
            n = tl_tok_encode(r->tok, lines[q++], buf, 4096);
            if (n < 0)
                die("sentencepiece failed on a line");
            for (k = 0; k < n && k < 4096 && got < plen; k++)
                o[1 + got++] = buf[k];
        }
    }
    tl_lines_free(lines, n_lines);
    return out;
}

double freerun_sampled(decoder *dc, const int32_t *prompts, int32_t n_prompts, int32_t len,
                       int32_t n_new, float temp, uint64_t seed, int32_t *out)
{
    double t0 = now();
    int32_t p, j;
    for (p = 0; p < n_prompts; p++) {
        uint64_t rng = seed + (uint64_t)p * 0x9e3779b97f4a7c15ull;
        int32_t *o = out + (size_t)p * (size_t)n_new;
        step_out so;
        prefill_prompt(dc, prompts + (size_t)p * (size_t)len, len, temp, &rng, &so);
        for (j = 0; j < n_new; j++) {
            o[j] = so.token;
            if (j + 1 < n_new)
                decode_step(dc, so.token, len + j, temp, &rng, &so);
        }
    }
    return now() - t0;
}

double freerun(decoder *dc, const int32_t *prompts, int32_t n_prompts, int32_t len,
               int32_t n_new, int32_t *out)
{
    return freerun_sampled(dc, prompts, n_prompts, len, n_new, 0.0f, 0u, out);
}

void freerun_agreement(const int32_t *a, const int32_t *full, int32_t n_prompts, int32_t n_new,
                       double *mean_prefix, double *share_identical)
{
    int64_t prefix = 0, same = 0;
    int32_t p, j;
    for (p = 0; p < n_prompts; p++) {
        const int32_t *x = a + (size_t)p * (size_t)n_new, *y = full + (size_t)p * (size_t)n_new;
        for (j = 0; j < n_new && x[j] == y[j]; j++)
            ;
        prefix += j;
        same += j == n_new;
    }
    *mean_prefix = (double)prefix / n_prompts;
    *share_identical = (double)same / n_prompts;
}
