# SPDX-License-Identifier: MIT
"""The binding against numpy computing the same things independently: full
and pruned logits against W[idx] @ norm(h), top-K against np.lexsort (the
library's order: value descending, then index ascending), every built-in
criterion against its formula, a whole multi-layer batched step against a
numpy loop; and the zero-copy rules for arrays (dtype, shape, strides,
read-only, alignment).

Skipped when numpy is not installed.
Run: PYTHONPATH=src/python /usr/bin/python3 -m unittest discover -s tests/python
"""
import math
import os
import sys
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
try:
    import eevp
except ImportError:
    sys.path.insert(0, os.path.join(ROOT, "src", "python"))
    import eevp

try:
    import numpy as np
except ImportError:
    np = None

needs_numpy = unittest.skipUnless(np is not None, "numpy is not installed")


class NumpyPresent(unittest.TestCase):
    @unittest.skipUnless(os.environ.get("EEVP_REQUIRE_NUMPY"), "numpy is optional here")
    def test_numpy_is_installed_where_required(self):
        # `make check-python` sets EEVP_REQUIRE_NUMPY for /usr/bin/python3
        # (python3-numpy), so that the cross-checks cannot silently skip.
        self.assertIsNotNone(np, "numpy is required (EEVP_REQUIRE_NUMPY) but not importable "
                                 "by %s" % sys.executable)


# ---- the reference, in float64 -------------------------------------------

def ref_norm(h, kind, eps, w=None, b=None):
    h = np.asarray(h, np.float64)
    if kind == "rms":
        y = h / np.sqrt(np.mean(h * h, axis=-1, keepdims=True) + eps)
    elif kind == "layer":
        mu = h.mean(axis=-1, keepdims=True)
        y = (h - mu) / np.sqrt(((h - mu) ** 2).mean(axis=-1, keepdims=True) + eps)
    else:
        y = h
    if w is not None:
        y = y * np.asarray(w, np.float64)
    if b is not None:
        y = y + np.asarray(b, np.float64)
    return y


def ref_logits(W, h, idx=None, norm="none", eps=1e-6, nw=None, nb=None, bias=None, scale=1.0,
               cap=0.0):
    W = np.asarray(W, np.float64)
    if idx is not None:
        W = W[idx]
    z = scale * (ref_norm(h, norm, eps, nw, nb) @ W.T)
    if bias is not None:
        bb = np.asarray(bias, np.float64)
        z = z + (bb[idx] if idx is not None else bb)
    if cap:
        z = cap * np.tanh(z / cap)
    return z


def ref_order(x, k=None):
    """Indices in the library's order: value descending, index ascending."""
    x = np.asarray(x, np.float64)
    order = np.lexsort((np.arange(len(x)), -x))
    return order if k is None else order[:k]


def softmax(z):
    z = np.asarray(z, np.float64)
    fin = np.isfinite(z)
    p = np.zeros_like(z)
    if fin.any():
        m = z[fin].max()
        e = np.where(fin, np.exp(np.where(fin, z - m, 0.0)), 0.0)
        p = e / e.sum()
    return p


def c_top2(z):
    p = np.sort(softmax(z))[::-1]
    return p[0] - (p[1] if len(p) > 1 else 0.0)


def c_maxprob(z):
    return softmax(z).max()


def c_entropy(z):
    p = softmax(z)
    n = int(np.isfinite(np.asarray(z, np.float64)).sum())
    if n <= 1:
        return 1.0
    q = p[p > 0]
    return min(1.0, max(0.0, 1.0 - (-(q * np.log(q)).sum()) / math.log(n)))


def c_js(z_prev, z):
    p, q = softmax(z_prev), softmax(z)
    m = (p + q) / 2

    def kl(a):
        nz = a > 0
        return (a[nz] * np.log(a[nz] / m[nz])).sum()

    return min(1.0, max(0.0, 1.0 - (0.5 * kl(p) + 0.5 * kl(q)) / math.log(2)))


def c_cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return 0.0 if na == 0 or nb == 0 else float(a @ b / (na * nb))


def rng_head(seed, V, d):
    rng = np.random.default_rng(seed)
    return rng, (rng.standard_normal((V, d)) / math.sqrt(d)).astype(np.float32)


# ---- tests -----------------------------------------------------------------

@needs_numpy
class ZeroCopy(unittest.TestCase):
    def test_arrays_are_used_in_place(self):
        W = np.ones((6, 4), np.float32)
        m = eevp._matrix(W, 4, "W")
        self.assertEqual((m.addr, m.rows, m.ld), (W.ctypes.data, 6, 4))
        big = np.zeros((6, 10), np.float32)
        sub = big[:, 2:6]  # row stride 40 bytes: passed as ld = 10
        m = eevp._matrix(sub, 4, "W", convert=False)
        self.assertEqual((m.addr, m.ld), (sub.ctypes.data, 10))
        ro = np.ones((3, 4), np.float32)
        ro.setflags(write=False)
        m = eevp._matrix(ro, 4, "h", convert=False)
        self.assertEqual(m.addr, ro.ctypes.data)
        every_other_row = big[::2, :4]
        m = eevp._matrix(every_other_row, 4, "h", convert=False)
        self.assertEqual((m.rows, m.ld), (3, 20))

    def test_borrowed_weights_are_read_in_place(self):
        rng, W = rng_head(1, 20, 8)
        big = np.zeros((20, 13), np.float32)
        big[:, 3:11] = W
        h = rng.standard_normal(8).astype(np.float32)
        for w in (W, big[:, 3:11]):
            with self.subTest(strided=w is not W):
                with eevp.Head(w) as head:
                    np.testing.assert_allclose(head.logits(h)[0], ref_logits(w, h), rtol=1e-5,
                                               atol=1e-5)
                    w[3] *= 2  # borrowed: the head sees the change
                    np.testing.assert_allclose(head.logits(h)[0], ref_logits(w, h), rtol=1e-5,
                                               atol=1e-5)

    def test_read_only_weights(self):
        rng, W = rng_head(2, 10, 4)
        W.setflags(write=False)
        h = rng.standard_normal((2, 4)).astype(np.float32)
        with eevp.Head(W) as head:
            np.testing.assert_allclose(head.logits(h), ref_logits(W, h), rtol=1e-5, atol=1e-5)

    def test_layouts_that_cannot_be_borrowed(self):
        _, W = rng_head(3, 10, 4)
        for bad, exc in ((W.astype(np.float64), TypeError), (np.asfortranarray(W), ValueError),
                         (W[:, ::2], ValueError), (W[::-1], ValueError),
                         (W.astype(">f4"), TypeError), (W.reshape(2, 5, 4), ValueError),
                         (W.astype(np.complex64), TypeError)):
            with self.subTest(layout=str(bad.dtype) + str(bad.strides)):
                with self.assertRaises(exc):
                    eevp.Head(bad)
        # A copy head converts what it can.
        with eevp.Head(np.asfortranarray(W).astype(np.float64), copy=True) as head:
            np.testing.assert_allclose(head.logits(np.eye(4, dtype=np.float32)),
                                       W.T, rtol=1e-6)
        # Misaligned float32 data.
        raw = np.zeros(W.size * 4 + 1, np.uint8)
        mis = np.frombuffer(raw.data, np.float32, count=W.size, offset=1).reshape(W.shape)
        with self.assertRaises(ValueError):
            eevp.Head(mis)

    def test_hidden_states_are_converted_when_needed(self):
        rng, W = rng_head(4, 12, 6)
        h = rng.standard_normal((3, 6))
        want = ref_logits(W, h)
        with eevp.Head(W) as head:
            for hh in (h.astype(np.float32), h, h.astype(">f4"), np.asfortranarray(h),
                       np.repeat(h, 2, axis=1)[:, ::2], h.astype(np.float32)[::-1][::-1]):
                with self.subTest(dtype=str(hh.dtype), strides=hh.strides):
                    np.testing.assert_allclose(head.logits(hh), want, rtol=1e-5, atol=1e-5)
            with self.assertRaises(ValueError):
                head.logits(h[:, :5])
            with self.assertRaises(ValueError):
                head.logits(np.zeros((2, 3, 6), np.float32))
            with self.assertRaises(TypeError):
                head.logits(np.array(["x"] * 6))
            out = np.empty((3, 12), np.float32)
            self.assertIs(head.logits(h, out=out), out)
            ro = np.empty((3, 12), np.float32)
            ro.setflags(write=False)
            with self.assertRaises(ValueError):
                head.logits(h, out=ro)
            with self.assertRaises(TypeError):
                head.logits(h, out=np.empty((3, 12)))
            wide = np.zeros((3, 20), np.float32)
            head.logits(h, out=wide[:, 4:16])  # written through ld = 20
            np.testing.assert_allclose(wide[:, 4:16], want, rtol=1e-5, atol=1e-5)
            self.assertFalse(wide[:, :4].any() or wide[:, 16:].any())

    def test_int_arrays(self):
        _, W = rng_head(5, 12, 6)
        with eevp.Head(W, vocab_offset=7) as head:
            for ids in (np.array([9, 7, 18]), np.array([9, 7, 18], np.int32),
                        np.array([9, 7, 18], np.uint16), [9, 7, 18]):
                np.testing.assert_array_equal(np.asarray(head.gather(ids)).reshape(3, 6),
                                              W[[2, 0, 11]])
            with self.assertRaises(OverflowError):
                head.gather(np.array([2**33]))
            with self.assertRaises(TypeError):
                head.gather(np.array([1.5, 2.0]))


@needs_numpy
class Kernels(unittest.TestCase):
    def head_variants(self, W, rng):
        V, d = W.shape
        nw = (1 + 0.3 * rng.standard_normal(d)).astype(np.float32)
        nb = (0.1 * rng.standard_normal(d)).astype(np.float32)
        bias = (0.5 * rng.standard_normal(V)).astype(np.float32)
        yield {}, {}
        yield dict(norm="rms", norm_eps=1e-5, norm_weight=nw), dict(norm="rms", eps=1e-5, nw=nw)
        yield (dict(norm="layer", norm_eps=1e-4, norm_weight=nw, norm_bias=nb, logit_bias=bias,
                    logit_scale=1.7, softcap=3.0),
               dict(norm="layer", eps=1e-4, nw=nw, nb=nb, bias=bias, scale=1.7, cap=3.0))
        yield (dict(norm="rms", logit_bias=bias, copy=True, simd=False),
               dict(norm="rms", eps=1e-6, bias=bias))

    def test_full_and_pruned_logits(self):
        rng, W = rng_head(10, 300, 24)
        h = (3 * rng.standard_normal((5, 24))).astype(np.float32)
        for hopts, ropts in self.head_variants(W, rng):
            with self.subTest(**{k: str(v)[:12] for k, v in hopts.items()}):
                with eevp.Head(W, vocab_offset=1000, **hopts) as head:
                    z = head.logits(h)
                    self.assertEqual(z.shape, (5, 300))
                    np.testing.assert_allclose(z, ref_logits(W, h, **ropts), rtol=2e-5,
                                               atol=2e-5)
                    idx = rng.choice(300, 17, replace=False)
                    rows, gb = head.gather(idx + 1000, with_bias=True)
                    np.testing.assert_array_equal(rows, W[idx])
                    want_b = ropts["bias"][idx] if "bias" in ropts else np.zeros(17)
                    np.testing.assert_array_equal(gb, want_b)
                    zp = head.pruned_logits(rows, h, bias=gb if "bias" in ropts else None)
                    self.assertEqual(zp.shape, (5, 17))
                    np.testing.assert_allclose(zp, ref_logits(W, h, idx=idx, **ropts),
                                               rtol=2e-5, atol=2e-5)

    def test_topk_against_lexsort(self):
        rng = np.random.default_rng(11)
        for n, k in ((1, 1), (10, 10), (1000, 7), (5000, 256)):
            x = rng.integers(-5, 5, n).astype(np.float32)  # many ties
            x[rng.choice(n, min(n, 3), replace=False)] = -np.inf
            ids, vals = eevp.topk(x, k, id_offset=3)
            self.assertEqual(ids.dtype, np.int32)
            order = ref_order(x, k)
            np.testing.assert_array_equal(ids, order + 3)
            np.testing.assert_array_equal(vals, x[order])

    def test_screened_top_k(self):
        rng, W = rng_head(13, 500, 32)
        h = rng.standard_normal(32).astype(np.float32)
        try:
            head = eevp.Head(W, screen_mult=4)
        except (eevp.InvalidArgument, eevp.OutOfRange, eevp.StructSizeError) as e:
            self.skipTest("library without screening: %s" % e)
        with head:
            ids, z = head.screen(h, 8)
            exact = ref_logits(W, h)
            np.testing.assert_allclose(z, exact[ids], rtol=1e-4, atol=1e-4)
            self.assertTrue(np.all(np.diff(z) <= 0))
            # The exact top-8 is almost surely inside the 32 screened rows here.
            self.assertEqual(list(ids), list(ref_order(exact, 8)))
        with eevp.Head(W) as plain:
            with self.assertRaises(eevp.InvalidArgument):
                plain.screen(h, 8)

    def test_half_precision_weights(self):
        rng, W = rng_head(12, 40, 16)
        h = rng.standard_normal((2, 16)).astype(np.float32)
        W16 = W.astype(np.float16)
        bf = (W.view(np.uint32) >> 16).astype(np.uint16)  # bfloat16 by truncation
        Wbf = (bf.astype(np.uint32) << 16).view(np.float32)
        for weights, kw, ref in ((W16, {}, W16.astype(np.float32)),
                                 (bf, dict(weight_type="bf16"), Wbf)):
            with self.subTest(kind=kw.get("weight_type", "f16")):
                try:
                    head = eevp.Head(weights, **kw)
                except (eevp.InvalidArgument, eevp.StructSizeError) as e:
                    self.skipTest("library without half-precision heads: %s" % e)
                with head:
                    self.assertIn(head.weight_type, (eevp.Weight.F16, eevp.Weight.BF16))
                    np.testing.assert_allclose(head.logits(h), ref_logits(ref, h), rtol=1e-4,
                                               atol=1e-4)
        with self.assertRaises(TypeError):
            eevp.Head(W, weight_type="f16")  # float32 data is not half


@needs_numpy
class BuiltinCriteria(unittest.TestCase):
    V, d = 30, 8

    def setUp(self):
        rng, W = rng_head(20, self.V, self.d)
        self.W = 3 * W
        h0 = rng.standard_normal(self.d).astype(np.float32)
        self.H = np.stack([h0, h0 + 0.6 * rng.standard_normal(self.d).astype(np.float32),
                           h0 + 0.9 * rng.standard_normal(self.d).astype(np.float32)])

    def run_step(self, head, L, **opts):
        with eevp.Context(head, L, threshold=2.0, **opts) as ctx:
            with ctx.step(1) as step:
                for l in ctx.required_layers:
                    if step.n_running == 0:
                        break
                    step.layer(l, self.H[l])
            return step.result(0)

    def test_full_vocabulary(self):
        bias = np.zeros(self.V, np.float32)
        bias[[3, 17]] = -np.inf  # masked tokens
        for with_bias in (False, True):
            b = bias if with_bias else None
            z0, z1 = (ref_logits(self.W, self.H[l], bias=b) for l in (0, 1))
            want = {"top2_gap": c_top2(z1), "max_prob": c_maxprob(z1), "entropy": c_entropy(z1),
                    "js": c_js(z0, z1), "saturation": c_cos(self.H[1], self.H[0]),
                    "stability": float(ref_order(z0)[0] == ref_order(z1)[0])}
            with eevp.Head(self.W, logit_bias=b) as head:
                for name, c in want.items():
                    with self.subTest(criterion=name, bias=with_bias):
                        r = self.run_step(head, 2, k=0, criterion=name)
                        self.assertEqual(r.reason, eevp.Reason.LAST_LAYER)
                        self.assertEqual(r.token, ref_order(z1)[0])
                        self.assertAlmostEqual(r.confidence, c, places=5)

    def test_pruned_set(self):
        K = 6
        z = [ref_logits(self.W, self.H[l]) for l in range(3)]
        S = ref_order(z[0], K)
        zs1, zs2 = z[1][S], z[2][S]
        with eevp.Head(self.W) as head:
            want = {"top2_gap": c_top2(zs2), "max_prob": c_maxprob(zs2),
                    "entropy": c_entropy(zs2), "js": c_js(zs1, zs2),
                    "stability": float(S[ref_order(zs1)[0]] == S[ref_order(zs2)[0]])}
            for name, c in want.items():
                with self.subTest(criterion=name):
                    r = self.run_step(head, 3, k=K, criterion=name, final_policy="pruned")
                    self.assertTrue(r.pruned)
                    self.assertEqual(r.token, S[ref_order(zs2)[0]])
                    self.assertAlmostEqual(r.confidence, c, places=5)
            # JS at a full last layer compares over the set.
            r = self.run_step(head, 3, k=K, criterion="js")
            self.assertFalse(r.pruned)
            self.assertEqual(r.token, ref_order(z[2])[0])
            self.assertAlmostEqual(r.confidence, c_js(zs1, zs2), places=5)

    def test_custom_criterion_sees_what_numpy_computes(self):
        K = 5
        z = [ref_logits(self.W, self.H[l]) for l in range(3)]
        S = ref_order(z[0], K)
        seen = {}

        def decide(view):
            seen[view.layer] = (np.asarray(view.ids), np.asarray(view.logits), view.top1_id,
                                view.top2_id, view.log_sum_exp, np.asarray(view.hidden))
            return 0.0

        with eevp.Head(self.W) as head, eevp.Context(head, 3, k=K) as ctx:
            ctx.set_criterion(decide)
            with ctx.step(1) as step:
                for l in range(3):
                    step.layer(l, self.H[l])
        ids, logits, t1, t2, lse, hid = seen[1]
        np.testing.assert_array_equal(ids, S)  # the set, in its order at the pruning layer
        np.testing.assert_allclose(logits, z[1][S], rtol=1e-5, atol=1e-5)
        o = ref_order(z[1][S])
        self.assertEqual((t1, t2), (S[o[0]], S[o[1]]))
        self.assertAlmostEqual(lse, np.log(np.exp(z[1][S]).sum()), places=4)
        np.testing.assert_array_equal(hid, self.H[1])
        ids0 = seen[0][0]
        np.testing.assert_array_equal(ids0, np.arange(self.V))


@needs_numpy
class BatchedStep(unittest.TestCase):
    """A whole decoding loop: several tokens of a batch of sequences, pruning
    below the first check, checks every other layer, compacted rows, the
    CALM schedule; against the same loop written in numpy."""

    V, d, L, B, K = 60, 16, 8, 5, 7
    f, interval, p = 2, 2, 1  # checks 2, 4, 6 and 7; pruning at 1
    lam, tau, N = 0.55, 4.0, 16

    def hidden_states(self, rng, W):
        """H[t][l][s]: each sequence drifts towards its own target token."""
        H = np.zeros((3, self.L, self.B, self.d), np.float32)
        for t in range(3):
            for s in range(self.B):
                target = rng.integers(self.V)
                base = rng.standard_normal(self.d)
                speed = rng.uniform(0.2, 1.6)
                u = W[target] / np.linalg.norm(W[target])
                for l in range(self.L):
                    H[t, l, s] = base + 0.3 * rng.standard_normal(self.d) + \
                        speed * l * u * math.sqrt(self.d)
        return H

    def reference(self, W, nw, H, positions):
        V, d, L, K = self.V, self.d, self.L, self.K
        checked = [l == L - 1 or (l >= self.f and (l - self.f) % self.interval == 0)
                   for l in range(L)]
        out, st = [], dict(checks=0, flops=0, base=0, bytes=0, base_bytes=0, exits=0, cov=0,
                           cov_hits=0, pruned=0)
        margin = 1.0
        for t in range(H.shape[0]):
            res = []
            for s in range(self.B):
                lam = self.lam * (9 + math.exp(-self.tau * positions[t][s] / self.N)) / 10
                S = None
                for l in range(L):
                    h = H[t, l, s]
                    if l == self.p:
                        z = ref_logits(W, h, norm="rms", eps=1e-5, nw=nw)
                        st["flops"] += (2 * d - 1) * V
                        st["bytes"] += 4 * V * d
                        S = ref_order(z, K)
                        st["bytes"] += 4 * K * d
                        continue
                    if not checked[l]:
                        continue
                    st["checks"] += 1
                    st["base"] += (2 * d - 1) * V
                    st["base_bytes"] += 4 * V * d
                    if l == L - 1:
                        z = ref_logits(W, h, norm="rms", eps=1e-5, nw=nw)
                        st["flops"] += (2 * d - 1) * V
                        st["bytes"] += 4 * V * d
                        tok = int(ref_order(z)[0])
                        st["cov"] += 1
                        st["cov_hits"] += int(tok in S)
                        res.append((tok, l, eevp.Reason.LAST_LAYER, False, c_top2(z)))
                        break
                    zs = ref_logits(W, h, idx=S, norm="rms", eps=1e-5, nw=nw)
                    st["flops"] += (2 * d - 1) * K
                    st["bytes"] += 4 * K * d
                    c = c_top2(zs)
                    margin = min(margin, abs(c - lam))
                    if c > lam:
                        res.append((int(S[ref_order(zs)[0]]), l, eevp.Reason.CONFIDENT, True, c))
                        st["exits"] += 1
                        st["pruned"] += 1
                        break
            out.append(res)
        return out, st, margin

    def test_against_numpy_loop(self):
        rng, W = rng_head(30, self.V, self.d)
        nw = (1 + 0.2 * rng.standard_normal(self.d)).astype(np.float32)
        H = self.hidden_states(rng, W)
        positions = [[3 * t + s for s in range(self.B)] for t in range(3)]
        want, st, margin = self.reference(W, nw, H, positions)
        self.assertGreater(margin, 1e-3, "a confidence too close to the threshold")
        layers = {r[1] for res in want for r in res}
        self.assertGreaterEqual(len(layers), 3, "the data should exit at several layers")

        with eevp.Head(W, norm="rms", norm_eps=1e-5, norm_weight=nw) as head, \
                eevp.Context(head, self.L, max_batch=self.B, k=self.K, first_layer=self.f,
                             interval=self.interval, prune_layer=self.p, threshold=self.lam,
                             schedule="calm", schedule_tau=self.tau, max_length=self.N) as ctx:
            self.assertEqual(ctx.required_layers, (1, 2, 4, 6, 7))
            for t in range(3):
                with ctx.step(self.B, positions=positions[t]) as step:
                    for l in range(self.L):
                        running = step.running
                        if not running:
                            break
                        # The host computes only the running rows: compacted.
                        rows = H[t, l, running]
                        if ctx.layer_required(l):
                            step.layer(l, rows)
                got = step.results()
                for s, (r, w) in enumerate(zip(got, want[t])):
                    with self.subTest(token=t, seq=s):
                        self.assertEqual((r.token, r.layer, r.reason, r.pruned), w[:4])
                        self.assertAlmostEqual(r.confidence, w[4], places=5)
                        lam = self.lam * (9 + math.exp(-self.tau * positions[t][s] / self.N)) / 10
                        self.assertAlmostEqual(r.threshold, lam, places=6)
                        cand = ctx.candidates(s, 3)
                        self.assertEqual(cand.ids[0], r.token)
                        if r.pruned:
                            S = ref_order(ref_logits(W, H[t, self.p, s], norm="rms", eps=1e-5,
                                                     nw=nw), self.K)
                            zs = ref_logits(W, H[t, r.layer, s], idx=S, norm="rms", eps=1e-5,
                                            nw=nw)
                            o = ref_order(zs, 3)
                            np.testing.assert_array_equal(np.asarray(cand.ids), S[o])
                            np.testing.assert_allclose(np.asarray(cand.logits), zs[o], rtol=1e-5,
                                                       atol=1e-5)
            s = ctx.stats()
        self.assertEqual(s.tokens, 3 * self.B)
        self.assertEqual(s.exited_early, st["exits"])
        self.assertEqual(s.reached_last, 3 * self.B - st["exits"])
        self.assertEqual(s.pruned_decisions, st["pruned"])
        self.assertEqual(s.checks, st["checks"])
        self.assertEqual((s.k_coverage_total, s.k_coverage_hits), (st["cov"], st["cov_hits"]))
        self.assertEqual(s.head_flops, st["flops"])
        self.assertEqual(s.head_flops_baseline, st["base"])
        self.assertEqual(s.head_bytes, st["bytes"])
        self.assertEqual(s.head_bytes_baseline, st["base_bytes"])
        hist = np.bincount([r[1] for res in want for r in res], minlength=self.L)
        self.assertEqual(list(s.exit_histogram), list(hist))

    def test_row_forms_agree(self):
        """In place, compacted and mapped rows give the same results."""
        rng, W = rng_head(31, self.V, self.d)
        H = self.hidden_states(rng, W)[0]
        outcomes = []
        for form in ("in_place", "compacted", "mapped"):
            with eevp.Head(W) as head, eevp.Context(head, self.L, max_batch=self.B, k=self.K,
                                                    first_layer=self.f, threshold=0.5) as ctx:
                with ctx.step(self.B) as step:
                    for l in ctx.required_layers:
                        running = step.running
                        if not running:
                            break
                        if form == "in_place":
                            x = H[l].copy()
                            done = [s for s in range(self.B) if s not in running]
                            x[done] = np.nan  # rows of finished sequences are not read
                            step.layer(l, x)
                        elif form == "compacted":
                            step.layer(l, H[l, running])
                        else:
                            rev = running[::-1]
                            step.layer(l, H[l, rev], row_seq=np.array(rev, np.int64))
                outcomes.append([(r.token, r.layer, r.reason) for r in step.results()])
        self.assertEqual(outcomes[0], outcomes[1])
        self.assertEqual(outcomes[0], outcomes[2])


if __name__ == "__main__":
    unittest.main()
