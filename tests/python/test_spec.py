# SPDX-License-Identifier: MIT
"""Lossless early exit in Python (eevp.Verifier): greedy verification
against argmaxes computed here in pure Python from the same W and hidden
rows (RMS norm as the head applies it), rounds drafted from a Context's
step, sampling's determinism and its top_k = 1 limit (greedy), statistics,
errors (exceptions, per-slot failures that keep the round), lifetimes; and,
when numpy is installed, numpy rows in place (strided included).

Run: PYTHONPATH=src/python python3 -m unittest discover -s tests/python
"""
import array
import gc
import math
import os
import random
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

V, D, OFF, EPS = 40, 8, 100, 1e-5


def f32(values):
    """values rounded to float32, as the library sees them."""
    return list(array.array("f", values))


class Model:
    """A head V x D (RMS norm with a weight, vocab_offset OFF) and its
    reference logits in double precision."""

    def __init__(self, seed):
        rng = random.Random(seed)
        self.W = [f32([rng.gauss(0.0, 1.0) for _ in range(D)]) for _ in range(V)]
        self.nw = f32([rng.uniform(0.5, 1.5) for _ in range(D)])
        self.rng = rng

    def head(self, **kw):
        return eevp.Head(array.array("f", [x for r in self.W for x in r]), dim=D, norm="rms",
                         norm_eps=EPS, norm_weight=array.array("f", self.nw), vocab_offset=OFF,
                         **kw)

    def logits(self, h):
        inv = 1.0 / math.sqrt(sum(x * x for x in h) / D + EPS)
        y = [x * inv * w for x, w in zip(h, self.nw)]
        return [sum(a * b for a, b in zip(row, y)) for row in self.W]

    def argmax(self, h):
        """(global id of the argmax, ties to the lowest, and its gap to the
        runner-up)."""
        z = self.logits(h)
        best = max(range(V), key=lambda v: (z[v], -v))
        gap = min(z[best] - z[v] for v in range(V) if v != best)
        return best + OFF, gap

    def clear_rows(self, n):
        """n random hidden rows whose argmax float32 cannot get wrong."""
        rows = []
        while len(rows) < n:
            h = f32([self.rng.gauss(0.0, 2.0) for _ in range(D)])
            if self.argmax(h)[1] > 1e-3:
                rows.append(h)
        return rows


def other(token):
    return token + 1 if token + 1 < OFF + V else OFF


class Greedy(unittest.TestCase):
    def setUp(self):
        self.m = Model(7)
        self.head = self.m.head()

    def tearDown(self):
        self.head.close()

    def test_defaults(self):
        with eevp.Verifier(self.head) as ver:
            self.assertEqual((ver.max_batch, ver.max_draft, ver.n_layers, ver.temperature),
                             (1, 4, 0, 0.0))
            self.assertEqual(ver.options["max_set"], V)  # 256 fitted to the head
            self.assertGreater(ver.memory, 0)
            self.assertIn("greedy", repr(ver))

    def test_against_the_python_argmax(self):
        rows = self.m.clear_rows(eevp.MAX_DRAFT + 1)
        best = [self.m.argmax(h)[0] for h in rows]
        checked = 0
        with eevp.Verifier(self.head, max_draft=eevp.MAX_DRAFT, n_layers=4) as ver:
            for n in range(0, eevp.MAX_DRAFT + 1):
                for wrong in range(n + 1):
                    ver.round(0, 5, 10)
                    drafts = [other(best[i]) if i == wrong else best[i] for i in range(n)]
                    for i, t in enumerate(drafts):
                        ver.add_draft(0, t, layer=i % 4)
                    self.assertEqual(ver.n_drafts(0), n)
                    self.assertEqual(ver.drafts(0), tuple(drafts))
                    # rows as a list of lists, an array.array and a 2-D memoryview
                    flat = array.array("f", [x for h in rows[:n + 1] for x in h])
                    hidden = (rows[:n + 1], flat,
                              memoryview(flat).cast("B").cast("f", (n + 1, D)))[checked % 3]
                    res, = ver.verify(0, hidden)
                    a = min(wrong, n)
                    self.assertTrue(res.ok)
                    self.assertIsNone(res.error)
                    self.assertEqual((res.seq, res.status, res.n_drafted, res.n_accepted),
                                     (0, eevp.OK, n, a))
                    self.assertEqual(res.token, best[a])
                    self.assertEqual(res.emitted, tuple(best[:a + 1]))
                    with self.assertRaises(eevp.StateError):  # the round is over
                        ver.n_drafts(0)
                    checked += 1
            st = ver.stats()
            self.assertEqual(st.rounds, checked)
            self.assertEqual(st.emitted, st.accepted + st.rounds)
            self.assertEqual(sum(st.layer_drafted), st.drafted)
            self.assertEqual(sum(st.layer_accepted), st.accepted)

    def test_slots_together_as_alone(self):
        rows = self.m.clear_rows(12)
        best = [self.m.argmax(h)[0] for h in rows]
        plan = {2: 3, 0: 0, 1: 5}  # slot: drafts (all right, then one wrong in slot 1)
        with eevp.Verifier(self.head, max_batch=3, max_draft=6) as ver:
            def start():
                r = 0
                for s, n in plan.items():
                    ver.round(s, s, 0)
                    for i in range(n):
                        ver.add_draft(s, other(best[r + i]) if (s, i) == (1, 2) else best[r + i])
                    r += n + 1

            start()
            alone, r = [], 0
            for s, n in plan.items():
                alone += ver.verify([s], rows[r:r + n + 1])
                r += n + 1
            start()
            together = ver.verify(list(plan), rows[:r])
            self.assertEqual(alone, together)
            self.assertEqual([x.n_accepted for x in together], [3, 0, 2])
            self.assertEqual(together[2].token, best[5 + 2])  # slot 1's rows from 5


class Drafting(unittest.TestCase):
    """Rounds drafted by a Context on the same head: layer 0 drafts (exits
    when its top-2 gap allows), layer 1 is the draft-depth limit."""

    def setUp(self):
        self.m = Model(11)
        self.head = self.m.head()

    def tearDown(self):
        self.head.close()

    def test_a_round_from_a_context_step(self):
        early = self.m.clear_rows(4)
        final = self.m.clear_rows(5)
        with eevp.Verifier(self.head, max_draft=4, n_layers=2) as ver, \
                eevp.Context(self.head, 2, k=16, threshold=0.0) as ctx:
            ver.round(0, 1, 20)
            drafts = []
            for i in range(4):
                with ctx.step(1, positions=[21 + i]) as step:
                    r, = step.layer(0, early[i])
                    self.assertTrue(r.exited_early)
                    tok, more = ver.draft(0, step, 0)
                self.assertEqual(tok, r.token)
                self.assertEqual(more, i < 3)
                drafts.append(tok)
            self.assertEqual(ver.drafts(0), tuple(drafts))
            res, = ver.verify(0, final)
            best = [self.m.argmax(h)[0] for h in final]
            a = next((i for i in range(4) if drafts[i] != best[i]), 4)
            self.assertEqual((res.n_drafted, res.n_accepted, res.token), (4, a, best[a]))
            self.assertEqual(res.emitted, tuple(best[:a + 1]))
            drafted, accepted = ver.layer_stats()
            self.assertEqual((drafted, accepted), ([4, 0], [a, 0]))
            # a full round: the next draft does not fit
            ver.round(0, 1, 30)
            for i in range(4):
                ver.add_draft(0, OFF)
            with ctx.step(1) as step:
                step.layer(0, early[0])
            with self.assertRaises(eevp.OutOfRange):
                ver.draft(0, ctx, 0)
            self.assertEqual(ver.n_drafts(0), 4)

    def test_the_last_layer_is_no_draft(self):
        rows = self.m.clear_rows(2)
        with eevp.Verifier(self.head) as ver, \
                eevp.Context(self.head, 2, k=16, threshold=0.999) as ctx:
            ver.round(0, 1, 0)
            with ctx.step(1) as step:
                step.layer(0, rows[0])
                r, = step.layer(1, rows[1])
            self.assertEqual(r.reason, eevp.Reason.LAST_LAYER)
            self.assertEqual(ver.draft(0, ctx, 0), (None, False))
            self.assertEqual(ver.draft(0, step, 0), (None, False))  # ended: still readable
            self.assertEqual(ver.n_drafts(0), 0)
            ctx.begin(1)
            with self.assertRaises(eevp.StateError):  # another step began: stale
                ver.draft(0, step, 0)
            with self.assertRaises(eevp.StateError):  # no result yet
                ver.draft(0, ctx, 0)
            ctx.abandon()
            with self.assertRaises(TypeError):
                ver.draft(0, self.head, 0)

    def test_drafting_from_the_contexts_own_callback_is_refused(self):
        rows = self.m.clear_rows(1)
        with eevp.Verifier(self.head) as ver, eevp.Context(self.head, 2, k=16) as ctx:
            ver.round(0, 1, 0)

            def decide(view):
                ver.draft(0, ctx, 0)
                return 1.0

            ctx.set_criterion(decide)
            with self.assertRaises(eevp.BusyError):
                with ctx.step(1) as step:
                    step.layer(0, rows[0])
            self.assertEqual(ver.n_drafts(0), 0)


class Sampling(unittest.TestCase):
    def setUp(self):
        self.m = Model(3)
        self.head = self.m.head()

    def tearDown(self):
        self.head.close()

    def run_round(self, ver, rows, drafts, key, position):
        ver.round(0, key, position)
        for t in drafts:
            ver.add_draft(0, t)
        return ver.verify(0, rows)[0]

    def test_top_k_one_is_greedy(self):
        rows = self.m.clear_rows(4)
        best = [self.m.argmax(h)[0] for h in rows]
        with eevp.Verifier(self.head, temperature=0.7, top_k=1, max_draft=3, seed=9) as ver:
            self.assertIn("T=0.7", repr(ver))
            for wrong in range(4):
                drafts = [other(best[i]) if i == wrong else best[i] for i in range(3)]
                res = self.run_round(ver, rows, drafts, key=wrong, position=3)
                a = min(wrong, 3)
                self.assertEqual((res.n_accepted, res.token), (a, best[a]))

    def test_deterministic_in_seed_key_and_position(self):
        rows = self.m.clear_rows(3)
        drafts = [OFF + 1, OFF + 2]
        with eevp.Verifier(self.head, temperature=1.5, top_p=0.95, max_draft=2, seed=4) as a, \
                eevp.Verifier(self.head, temperature=1.5, top_p=0.95, max_draft=2, seed=4) as b:
            seen = set()
            for key in range(20):
                ra = self.run_round(a, rows, drafts, key, 7)
                rb = self.run_round(b, rows, drafts, key, 7)
                self.assertEqual(ra, rb)
                self.assertTrue(OFF <= ra.token < OFF + V)
                self.assertLessEqual(ra.n_accepted, 2)
                seen.add(ra.emitted)
            self.assertGreater(len(seen), 1)  # the keys give different draws

    def test_sampled_drafts_from_a_context(self):
        # pruned to 16 at layer 0, drafts decided on those 16 at layer 1
        rows = self.m.clear_rows(3)
        opts = dict(k=16, prune_layer=0, first_layer=1, threshold=0.0)
        with eevp.Verifier(self.head, temperature=1.0, max_draft=2, max_set=16,
                           n_layers=3) as ver, eevp.Context(self.head, 3, **opts) as ctx:
            ver.round(0, 3, 0)
            for i in range(2):
                with ctx.step(1) as step:
                    step.layer(0, rows[i])
                    r, = step.layer(1, rows[i + 1])
                    self.assertTrue(r.exited_early and r.pruned)
                    ids = set(step.candidates(0).ids)
                    tok, more = ver.draft(0, step, 0)
                self.assertIn(tok, ids)  # drawn from the step's candidates
                self.assertEqual(more, i == 0)
            res, = ver.verify(0, rows)
            self.assertTrue(res.ok and OFF <= res.token < OFF + V)
            self.assertEqual(len(res.emitted), res.n_accepted + 1)
            self.assertEqual(ver.layer_stats()[0], [0, 2, 0])
        with eevp.Verifier(self.head, temperature=1.0, max_set=8) as ver, \
                eevp.Context(self.head, 3, **opts) as ctx:
            ver.round(0, 3, 0)
            with ctx.step(1) as step:
                step.layer(0, rows[0])
                step.layer(1, rows[1])
                with self.assertRaises(eevp.OutOfRange):  # a set of 16 > max_set
                    ver.draft(0, step, 0)
            self.assertEqual(ver.n_drafts(0), 0)


class Errors(unittest.TestCase):
    def setUp(self):
        self.m = Model(5)
        self.head = self.m.head()
        self.ver = eevp.Verifier(self.head, max_batch=2, max_draft=2, n_layers=3)

    def tearDown(self):
        self.ver.close()
        self.head.close()

    def test_options(self):
        for kw, exc, word in ((dict(max_draft=eevp.MAX_DRAFT + 1), eevp.OutOfRange, "max_draft"),
                              (dict(max_batch=0), eevp.OutOfRange, "max_batch"),
                              (dict(max_set=V + 1), eevp.OutOfRange, "max_set"),
                              (dict(top_k=5), eevp.InvalidArgument, "top_k"),
                              (dict(temperature=float("nan")), eevp.OutOfRange, "temperature"),
                              (dict(temperature=1.0, top_p=0.0), eevp.OutOfRange, "top_p")):
            with self.subTest(**kw):
                with self.assertRaises(exc) as cm:
                    eevp.Verifier(self.head, **kw)
                self.assertIn(word, str(cm.exception))
        with self.assertRaises(TypeError):
            eevp.Verifier(self.head, k=4)
        with self.assertRaises(TypeError):
            eevp.Verifier(array.array("f", [1.0]))
        with self.assertRaises(OverflowError):
            eevp.Verifier(self.head, seed=-1)
        with self.assertRaises(OverflowError):
            eevp.Verifier(self.head, max_batch=2**31)

    def test_no_round(self):
        rows = self.m.clear_rows(1)
        with self.assertRaises(eevp.StateError) as cm:
            self.ver.verify(0, rows)
        self.assertIn("round", str(cm.exception))
        with self.assertRaises(eevp.StateError):
            self.ver.n_drafts(1)
        with self.assertRaises(eevp.StateError):
            self.ver.add_draft(0, OFF)
        with self.assertRaises(eevp.StateError):
            self.ver.drafts(0)

    def test_bad_drafts_slots_and_rows(self):
        ver = self.ver
        rows = self.m.clear_rows(6)
        ver.round(0, 1, 0)
        for bad in (OFF - 1, OFF + V, -1):
            with self.assertRaises(eevp.OutOfRange):
                ver.add_draft(0, bad)
        ver.add_draft(0, OFF)
        ver.add_draft(0, OFF + V - 1)
        with self.assertRaises(eevp.OutOfRange):  # max_draft = 2
            ver.add_draft(0, OFF + 1)
        self.assertEqual(ver.drafts(0), (OFF, OFF + V - 1))
        for seq in (-1, 2):
            with self.assertRaises(eevp.OutOfRange):
                ver.round(seq, 1, 0)
            with self.assertRaises(eevp.OutOfRange):
                ver.n_drafts(seq)
            with self.assertRaises(eevp.OutOfRange):
                ver.verify(seq, rows[:1])
        with self.assertRaises(eevp.OutOfRange):
            ver.round(1, 1, -1)
        with self.assertRaises(OverflowError):
            ver.round(1, -1, 0)
        ver.round(1, 2**64 - 1, 0)
        with self.assertRaises(eevp.InvalidArgument):
            ver.verify([1, 1], rows[:2])
        with self.assertRaises(ValueError):  # slot 0 needs 3 rows
            ver.verify(0, rows[:2])
        with self.assertRaises(ValueError):  # slots 0 and 1 need 4
            ver.verify([0, 1], rows[:5])
        with self.assertRaises(ValueError):  # rows of D values
            ver.verify(1, [1.0] * (D + 1))
        with self.assertRaises(ValueError):
            ver.verify([], rows[:1])
        with self.assertRaises(TypeError):
            ver.verify("0", rows[:1])
        self.assertEqual((ver.n_drafts(0), ver.n_drafts(1)), (2, 0))
        self.assertEqual(ver.stats().rounds, 0)

    def test_nonfinite_row_fails_its_slot_and_keeps_the_round(self):
        ver = self.ver
        rows = self.m.clear_rows(4)
        best = [self.m.argmax(h)[0] for h in rows]
        ver.round(0, 1, 0)
        ver.add_draft(0, best[0], layer=1)
        ver.add_draft(0, best[1], layer=2)
        ver.round(1, 2, 0)
        bad = [list(h) for h in rows]
        bad[1][3] = float("nan")
        r0, r1 = ver.verify([0, 1], bad)
        self.assertEqual((r0.status, r0.token, r0.emitted, r0.n_drafted), (eevp.ENONFINITE, -1,
                                                                            (), 2))
        self.assertTrue(r0.failed)
        self.assertIsInstance(r0.error, eevp.NonFiniteError)
        self.assertTrue(r1.ok)
        self.assertEqual(r1.emitted, (self.m.argmax(bad[3])[0],))
        self.assertEqual(ver.drafts(0), (best[0], best[1]))  # kept for a retry
        with self.assertRaises(eevp.StateError):
            ver.n_drafts(1)
        bad[0][0] = float("inf")
        r0, = ver.verify(0, bad[:3])
        self.assertEqual(r0.status, eevp.ENONFINITE)
        r0, = ver.verify(0, rows[:3])  # the retry with finite rows
        self.assertEqual((r0.n_accepted, r0.token, r0.emitted), (2, best[2], tuple(best[:3])))
        st = ver.stats()
        self.assertEqual((st.rounds, st.failed, st.drafted, st.accepted, st.emitted,
                          st.verify_rows), (2, 2, 2, 2, 4, 4))
        self.assertEqual((st.layer_drafted, st.layer_accepted), ((0, 1, 1), (0, 1, 1)))
        self.assertEqual(st.mean_accepted, 1.0)
        self.assertEqual(st.acceptance_rate, 1.0)
        self.assertEqual(st.tokens_per_round, 2.0)
        self.assertEqual(st.as_dict()["failed"], 2)
        ver.reset_stats()
        st = ver.stats()
        self.assertEqual((st.rounds, st.failed, st.emitted, st.n_layers), (0, 0, 0, 3))
        self.assertEqual(ver.layer_stats(), ([0, 0, 0], [0, 0, 0]))
        self.assertEqual((st.mean_accepted, st.acceptance_rate, st.tokens_per_round),
                         (0.0, 0.0, 0.0))


class Lifetimes(unittest.TestCase):
    def test_verifier_keeps_its_head_alive(self):
        m = Model(13)
        head = m.head()
        ver = eevp.Verifier(head)
        head.close()
        self.assertIsNotNone(head._handle)  # the C head stays while ver uses it
        with self.assertRaises(eevp.StateError):
            eevp.Verifier(head)
        del head
        gc.collect()
        rows = m.clear_rows(1)
        ver.round(0, 0, 0)
        self.assertEqual(ver.verify(0, rows)[0].token, m.argmax(rows[0])[0])
        h = ver.head
        ver.close()
        ver.close()
        self.assertTrue(ver.closed)
        self.assertIsNone(h._handle)  # freed with its last user
        self.assertIn("closed", repr(ver))
        for call in (lambda: ver.round(0, 0, 0), lambda: ver.verify(0, rows),
                     lambda: ver.stats(), lambda: ver.memory, lambda: ver.n_drafts(0),
                     lambda: ver.add_draft(0, OFF), lambda: ver.reset_stats()):
            with self.assertRaises(eevp.StateError):
                call()

    def test_garbage_collector_frees_it(self):
        m = Model(17)
        head = m.head()
        ver = eevp.Verifier(head)
        ver.cycle = ver
        del ver
        gc.collect()
        head.close()
        self.assertIsNone(head._handle)


@needs_numpy
class Numpy(unittest.TestCase):
    def test_numpy_rows_in_place_and_strided(self):
        m = Model(19)
        rows = m.clear_rows(3)
        best = [m.argmax(h)[0] for h in rows]
        wide = np.zeros((3, D + 5), dtype=np.float32)
        wide[:, :D] = np.array(rows, dtype=np.float32)
        with m.head() as head, eevp.Verifier(head, max_draft=2) as ver:
            for hidden in (wide[:, :D], np.array(rows, dtype=np.float64),
                           np.array(rows, dtype=np.float32).ravel()):
                ver.round(0, 0, 0)
                ver.add_draft(0, np.int32(best[0]))
                ver.add_draft(0, best[1])
                res, = ver.verify(np.array([0]), hidden)
                self.assertEqual(res.emitted, tuple(best))
            Wn = np.array(m.W, dtype=np.float64)
            y = np.array(rows, dtype=np.float64)
            y = y / np.sqrt((y * y).mean(axis=1, keepdims=True) + EPS) * np.array(m.nw)
            self.assertEqual([int(v) + OFF for v in np.argmax(y @ Wn.T, axis=1)], best)


if __name__ == "__main__":
    unittest.main()
