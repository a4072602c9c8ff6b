# SPDX-License-Identifier: MIT
"""Harness for the Python fragments of docs/PYTHON.md (tests/docs/docfrag.py).

A random head of V = 512 tokens in d = 32 dimensions, and a toy model whose
hidden state for a token is that token's row of W plus noise that fades with
depth, so that early layers are unsure and later ones confident.
Sections: loop (§2), verifier (§3, lossless early exit), shard (§3,
vocabulary-parallel heads: P ranks as threads), criterion (§5).
"""
import math
import threading

import numpy as np

import docfrag
import eevp

V, D = 512, 32
rng = np.random.default_rng(1)
W = rng.standard_normal((V, D)).astype(np.float32)


def state(token, layer, noise, fade=16):
    """Hidden state pointing to token, noise fading out by layer `fade`."""
    return (W[token] + noise * 3.0 * max(0.0, 1.0 - layer / fade)).astype(np.float32)


def loop():
    np.save("lm_head.npy", W)                  # the block loads it from the cwd
    targets = [7, 100, 300]
    noise = rng.standard_normal((len(targets), D)).astype(np.float32)

    class Model:
        propagated = []

        def layer(self, layer, rows):
            return np.stack([state(targets[s], layer, noise[s]) for s in rows])

        def propagate_state(self, seq, layer):
            self.propagated.append((seq, layer))

    model = Model()
    ns = docfrag.run(dict(model=model, n_seq=len(targets), positions=[0] * len(targets),
                          final_norm_w=np.ones(D, np.float32)))
    docfrag.check(ns["tokens"] == targets, "tokens %r, not %r" % (ns["tokens"], targets))
    docfrag.check(model.propagated, "no sequence exited early")
    docfrag.check(all(layer >= 8 for _, layer in model.propagated), "an exit before layer 8")


def verifier():
    L, limit = 12, 6
    truth = [11, 22, 33, 44, 55]              # full depth's tokens after positions P ..
    drafted = [11, 22, 99, 44, 55]            # the early exits' tokens: the third is wrong
    head = eevp.Head(W)

    class Model:
        i = -1                                # position P + i being drafted

        def layer(self, layer):
            if layer == 0:
                self.i += 1
            return state(drafted[self.i], layer, rng.standard_normal(D), fade=2)[None, :]

        def complete_round(self, *args):
            n = ns["ver"].n_drafts(ns["slot"])
            return np.stack([state(truth[j], L - 1, 0.0) for j in range(n + 1)])

    ns = dict(eevp=eevp, np=np, head=head, L=L, limit=limit, slot=0, key=1, P=10,
              model=Model(), out=[])
    docfrag.run(ns)
    docfrag.check(ns["out"] == truth[:3], "emitted %r, not %r" % (ns["out"], truth[:3]))
    st = ns["ver"].stats()
    docfrag.check(st.drafted == 4 and st.accepted == 2, "stats %r" % (st,))


def shard():
    """The block runs once per rank, P = 3 ranks as threads, with a comm
    whose allgather meets at a barrier; every rank's token must be the
    unsharded context's on the same states."""
    P, L, target = 3, 12, 300
    noise = [0.3 * rng.standard_normal(D).astype(np.float32) for _ in range(L)]
    barrier = threading.Barrier(P, timeout=60)
    slots = [None] * P

    class Comm:
        def __init__(self, rank):
            self.rank = rank

        def Get_rank(self):
            return self.rank

        def Get_size(self):
            return P

        def allgather(self, obj):
            slots[self.rank] = obj
            barrier.wait()
            out = list(slots)
            barrier.wait()
            return out

    class Model:
        def layer(self, layer):
            return state(target, layer, noise[layer])[None, :]

    spaces, errors = [dict(eevp=eevp, W=W, V=V, L=L, comm=Comm(r), model=Model())
                      for r in range(P)], []

    def rank_main(ns):
        try:
            docfrag.run(ns)
        except BaseException as e:  # reported after the join
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=rank_main, args=(ns,)) for ns in spaces]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    ctx = eevp.Context(eevp.Head(W), L, k=64, first_layer=2)
    with ctx.step(1) as step:
        for layer in range(L):
            if step.layer(layer, Model().layer(layer)):
                break
    want = step.result(0)
    got = [ns["step"].result(0) for ns in spaces]
    docfrag.check(all(r == want for r in got), "ranks %r, unsharded %r" % (got, want))
    docfrag.check(want.token == target and want.exited_early, "unsharded %r" % (want,))
    st = spaces[0]["ctx"].stats()
    docfrag.check(st.shard_exchanges > 0 and st.shard_bytes_sent == st.shard_bytes_received,
                  "stats %r" % (st,))


def criterion():
    head = eevp.Head(W)
    w, b = np.zeros(D, np.float32), -1.0
    w[0] = 1.0
    ctx = eevp.Context(head, 4, k=0)
    ns = docfrag.run(dict(np=np, math=math, eevp=eevp, w=w, b=b, ctx=ctx))
    with ctx.step(1) as step:                 # the lambda, registered last
        for layer in range(4):
            if not step.running:
                break
            step.layer(layer, state(5, layer, 0.0)[None, :])
    r = step.result(0)
    docfrag.check(r.token == 5, "lambda criterion: %r" % (r,))
    ctx2 = eevp.Context(head, 3, k=0)         # the probe: sigmoid(h[0] - 1)
    ctx2.set_criterion(ns["Probe"](w, b))
    hs = np.zeros((3, D), np.float32)
    hs[:, 0] = [0.5, 5.0, 6.0]
    with ctx2.step(1) as step:
        for layer in range(3):
            if step.layer(layer, hs[layer][None, :]):
                break
    r = step.result(0)
    docfrag.check(r.layer == 1 and abs(r.confidence - 1 / (1 + math.exp(-4.0))) < 1e-6,
                  "probe: %r" % (r,))


{"loop": loop, "verifier": verifier, "shard": shard,
 "criterion": criterion}[docfrag.section()]()
