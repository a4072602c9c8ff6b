#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""numpy_loop.py - the batched decoding loop of python_demo.py, with numpy.

Four sequences decode 5 tokens each through a toy model of 10 layers whose
hidden states are float32 arrays of shape (B, d).  Between layers the host
compacts its batch: it computes, and hands over, only the rows of the
sequences still running, which the binding reads in place.  Each token is
sampled from the resolved sequence's candidates (temperature, then top-p)
with numpy, and the statistics are printed at the end.

The program also checks the library against numpy, computed independently in
float64: every candidate's logit against W[ids] @ rmsnorm(h), the greedy
token against the argmax, and each pruned set against the top K of the
pruning layer's full logits.  It exits 1 on a mismatch.  Without numpy it
says so and exits 0 (skipped), or 1 when EEVP_REQUIRE_NUMPY is set, as
`make check-examples` does.

    PYTHONPATH=src/python python3 examples/numpy_loop.py     # from a checkout
    python3 examples/numpy_loop.py                           # after make install
"""
import os
import sys

try:
    import numpy as np
except ImportError:
    np = None

try:
    import eevp
except ImportError:  # run from a source checkout without PYTHONPATH
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src",
                                    "python"))
    import eevp

V, D, L, BATCH, TOKENS = 64, 16, 10, 4, 5
K, PRUNE, FIRST, EPS = 8, 2, 3, 1e-5
TEMPERATURE, TOP_P = 0.8, 0.9


class Mismatch(Exception):
    """The library and numpy disagree."""


def rmsnorm(h):
    h = np.asarray(h, dtype=np.float64)
    return h / np.sqrt(np.mean(h * h, axis=-1, keepdims=True) + EPS)


class ToyModel:
    """Token v has the row W[v] in the LM head and the embedding E[v].  A
    layer moves each row's residual stream towards W[next token] at the
    sequence's pace, plus noise, so that a slow sequence decides late."""

    def __init__(self, seed):
        init = np.random.default_rng(seed)
        self.W = (init.standard_normal((V, D)) * 0.5).astype(np.float32)
        self.E = (init.standard_normal((V, D)) * 0.5).astype(np.float32)
        self.noise = np.random.default_rng(seed + 1)

    def layer(self, h, targets, pace):
        """One layer on the rows it is given (the running rows only)."""
        noise = self.noise.standard_normal(h.shape, dtype=np.float32)
        return h + pace[:, None] * self.W[targets] + 0.15 * noise


def sample(logits, ids, rng):
    """Temperature, softmax (max subtracted), sort by probability, cut at
    cumulative TOP_P, renormalise, draw.  Returns (token, nucleus size)."""
    z = np.asarray(logits, dtype=np.float64) / TEMPERATURE
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")  # ties keep the library's order
    p, ids = p[order], np.asarray(ids)[order]
    n = min(int(np.searchsorted(np.cumsum(p), TOP_P)) + 1, p.size)
    return int(rng.choice(ids[:n], p=p[:n] / p[:n].sum())), n


def cross_check(W, r, cand, h_row, h_prune, counts):
    """The library's candidates and token against numpy, in float64."""
    ids = np.asarray(cand.ids)
    got = np.asarray(cand.logits, dtype=np.float64)
    ref = W[ids].astype(np.float64) @ rmsnorm(h_row)
    err = float(np.abs(got - ref).max())
    tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    if ids.size != (K if r.pruned else V) or err > tol:
        raise Mismatch("seq %d: %d candidates, logits off by %.3g (tolerance %.3g)" % (
            r.seq, ids.size, err, tol))
    counts["logits"] += ids.size
    if r.token != ids[0] or ref[0] < ref.max() - tol:
        raise Mismatch("seq %d: token %d, numpy's argmax over the candidates %d" % (
            r.seq, r.token, ids[int(np.argmax(ref))]))
    counts["tokens"] += 1
    if r.pruned:  # the set is the top K of the full logits at the pruning layer
        full = W.astype(np.float64) @ rmsnorm(h_prune)
        inside = np.zeros(V, dtype=bool)
        inside[ids] = True
        if full[inside].min() < full[~inside].max() - tol:
            raise Mismatch("seq %d: the pruned set is not numpy's top %d" % (r.seq, K))
        counts["sets"] += 1


def decode(ctx, model, rng, counts):
    """TOKENS steps of the batch; returns (model rows computed, samples that
    differ from the argmax, nucleus sizes summed)."""
    last = np.array([3, 17, 40, 58])
    pace = np.array([0.6, 0.35, 0.2, 0.08], dtype=np.float32)
    logits_out = np.empty(V, dtype=np.float32)  # the candidates are written here
    ids_out = np.empty(V, dtype=np.int32)
    rows_computed = differ = nucleus_sum = 0
    for t in range(TOKENS):
        targets = (last * 7 + 5) % V
        h = model.E[last]                     # (B, d) float32, a copy: every row runs
        seqs = np.arange(BATCH)               # the sequence each row of h holds
        h_prune = np.zeros((BATCH, D), dtype=np.float32)
        with ctx.step(BATCH, positions=[t] * BATCH) as step:
            for layer in range(L):
                if seqs.size == 0:
                    break
                h = model.layer(h, targets[seqs], pace[seqs])
                rows_computed += seqs.size
                if layer == PRUNE:
                    h_prune[seqs] = h
                if not ctx.layer_required(layer):
                    continue
                assert h.dtype == np.float32 and h.flags.c_contiguous  # read in place
                for r in step.layer(layer, h):  # compacted rows, in sequence order
                    cand = step.candidates(r.seq, logits_out=logits_out, ids_out=ids_out)
                    cross_check(model.W, r, cand, h[np.searchsorted(seqs, r.seq)],
                                h_prune[r.seq], counts)
                    token, n = sample(cand.logits, cand.ids, rng)
                    print("token %d seq %d: layer %d (%s, %2d candidates)  greedy %2d  "
                          "sampled %2d  nucleus %2d" % (
                              t, r.seq, r.layer,
                              "early exit" if r.exited_early else "last layer",
                              len(cand.ids), r.token, token, n))
                    last[r.seq] = token
                    differ += token != r.token
                    nucleus_sum += n
                # Compact: keep the rows of the sequences still running.
                keep = np.isin(seqs, step.running)
                h, seqs = h[keep], seqs[keep]
    return rows_computed, differ, nucleus_sum


def main():
    if np is None:
        if os.environ.get("EEVP_REQUIRE_NUMPY"):
            print("numpy_loop: numpy is required (EEVP_REQUIRE_NUMPY) but %s cannot import it"
                  % sys.executable, file=sys.stderr)
            return 1
        print("numpy_loop: skipped: numpy not available for %s" % sys.executable,
              file=sys.stderr)
        return 0
    model = ToyModel(seed=1)
    rng = np.random.default_rng(7)  # the sampler's
    counts = {"logits": 0, "tokens": 0, "sets": 0}
    head = eevp.Head(model.W, norm="rms", norm_eps=EPS)  # W borrowed, not copied
    with head, eevp.Context(head, L, max_batch=BATCH, k=K, prune_layer=PRUNE,
                            first_layer=FIRST, threshold=0.6) as ctx:
        print("libeevp %s, numpy %s; layers handed over: %s" % (
            eevp.library_version(), np.__version__, list(ctx.required_layers)))
        try:
            rows, differ, nucleus_sum = decode(ctx, model, rng, counts)
        except Mismatch as e:
            print("numpy_loop: mismatch with numpy: %s" % e, file=sys.stderr)
            return 1
        st = ctx.stats()
        n = BATCH * TOKENS
        print("%d tokens, %d exited early, %d checks; head FLOPs %.0f%% of the baseline" % (
            st.tokens, st.exited_early, st.checks, 100 * st.flops_ratio))
        print("exit layers:", st.exit_histogram)
        print("model rows computed: %d of %d without compaction" % (rows, n * L))
        print("sampled: %d of %d differ from the argmax, mean nucleus %.2f" % (
            differ, n, nucleus_sum / n))
        print("numpy agrees: %d candidate logits, %d tokens, %d pruned sets" % (
            counts["logits"], counts["tokens"], counts["sets"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
