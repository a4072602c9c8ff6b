#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""python_demo.py - the eevp Python binding in a batched decoding loop.

Three sequences decode 4 tokens each through a toy model of 8 layers.  The
host computes only the rows of the sequences still running (compacted rows,
as a host that shrinks its batch would), samples each token from the exited
sequence's candidates (temperature, then top-p), and prints the statistics.

Standard library only: the hidden states are array.array('f').  With numpy
the same calls take float32 arrays, in place (docs/PYTHON.md).

    PYTHONPATH=src/python python3 examples/python_demo.py     # from a checkout
    python3 examples/python_demo.py                           # after make install
"""
import array
import math
import os
import random
import sys

try:
    import eevp
except ImportError:  # run from a source checkout without PYTHONPATH
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src",
                                    "python"))
    import eevp

V, D, L, BATCH, TOKENS = 48, 12, 8, 3, 4


def make_weights():
    """Token v: axis v % 8, plus group axis 8 + v // 12 (so every token has
    its own direction)."""
    w = array.array("f", bytes(4 * V * D))
    for v in range(V):
        w[v * D + v % 8] = 3.0
        w[v * D + 8 + v // 12] = 2.0
    return w


def model_layer(layer, target, pace, rng):
    """The toy model's hidden state after `layer` on its way to `target`."""
    h = [rng.uniform(-0.3, 0.3) for _ in range(D)]
    h[target % 8] += pace * layer
    h[8 + target // 12] += pace * layer
    return h


def sample(logits, ids, rng, temperature=1.2, top_p=0.9):
    """Temperature, then nucleus sampling over candidates in the library's
    order (best first)."""
    m = logits[0]
    p = [math.exp((z - m) / temperature) for z in logits]
    total, mass, keep = sum(p), 0.0, 0
    while keep < len(p) and mass < top_p * total:
        mass += p[keep]
        keep += 1
    return rng.choices(ids[:keep], weights=p[:keep])[0]


def main():
    rng = random.Random(7)
    weights = make_weights()  # borrowed by the head: it keeps it alive
    head = eevp.Head(weights, dim=D, norm="rms", norm_eps=1e-5)
    with head, eevp.Context(head, L, max_batch=BATCH, k=8, first_layer=2,
                            threshold=0.7) as ctx:
        print("libeevp %s from %s" % (eevp.library_version(), eevp.library_path()))
        print("layers handed over:", ctx.required_layers)
        last = [1, 20, 33]
        pace = [0.5, 0.3, 0.2]  # how fast each sequence becomes sure
        for t in range(TOKENS):
            targets = [(tok * 5 + 11) % V for tok in last]
            with ctx.step(BATCH, positions=[t] * BATCH) as step:
                for layer in range(L):
                    running = step.running
                    if not running:
                        break
                    # The model runs the running rows only, compacted.
                    rows = [model_layer(layer, targets[s], pace[s], rng) for s in running]
                    if not ctx.layer_required(layer):
                        continue
                    for r in step.layer(layer, rows):
                        cand = step.candidates(r.seq, 8)
                        last[r.seq] = sample(cand.logits, cand.ids, rng)
                        print("token %d seq %d: argmax %2d sampled %2d at layer %d%s" % (
                            t, r.seq, r.token, last[r.seq], r.layer,
                            " (early exit)" if r.exited_early else ""))
        st = ctx.stats()
        print("%d tokens, %d exited early, %d checks; head FLOPs %.0f%% of the baseline" % (
            st.tokens, st.exited_early, st.checks, 100 * st.flops_ratio))
        print("exit layers:", st.exit_histogram)
    return 0


if __name__ == "__main__":
    sys.exit(main())
