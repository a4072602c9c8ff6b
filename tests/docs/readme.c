/* SPDX-License-Identifier: MIT */
/*
 * readme.c - harness for the loop of README.md's "Use": a head of V = 64
 * random-free toy rows in d = 8 dimensions with an RMS final norm, a model
 * of L = 8 layers whose state points to token 5 more sharply with depth.
 */
#include "doc_harness.h"

#include "doc_fragment_top.h"

enum { V = 64, L = 8 };

static int32_t layers_run;

static void run_layer(int32_t l, float *h)
{
    int32_t c;
    layers_run++;
    for (c = 0; c < 8; c++)
        h[c] = 0.2f * (float)((c * 5 + l) % 3) - 0.2f;
    h[5] += 0.5f * (float)(l + 1);
}

int main(void)
{
    static float W[V * 8];
    const int32_t d = 8, n_tokens = 3;
    float final_norm_w[8], h[8];
    char msg[256];
    int32_t v;
    for (v = 0; v < V; v++)
        W[v * d + v % d] = (v < d ? 3.0f : -3.0f) / (float)(1 + v / (2 * d));
    for (v = 0; v < d; v++)
        final_norm_w[v] = 1.0f;
    {
#include "doc_fragment.h"
    }
    DOC_CHECK(layers_run >= n_tokens * 5); /* checks from layer 4: every token ran */
    return 0;
}
