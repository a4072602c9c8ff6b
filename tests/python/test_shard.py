# SPDX-License-Identifier: MIT
"""Vocabulary-parallel heads in Python (eevp.ShardContext, eevp.merge,
eevp.merge_all): P = 1 .. 4 shards simulated in one process, over uneven
splits of a random head, decide exactly as an unsharded Context on the same
hidden states (tokens, layers, reasons, candidates; confidences equal on
pruned decisions and within 1e-6 on full-vocabulary ones), for every
criterion a shard takes, pruning, re-pruning, exact-token exits, the CALM
schedule and a Python criterion; merging is order-independent to the byte;
a corrupted, missing, repeated or foreign record raises RecordError on
absorb (the exchange's sequences fail, the step goes on); malformed bytes
never crash; the statistics count the exchanges.  Standard library only.

Run: PYTHONPATH=src/python python3 -m unittest discover -s tests/python
"""
import array
import itertools
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

V, D, L = 97, 16, 7
MASKED = 13  # a token with logit bias -inf


class Model:
    """A random head V x D, as one flat float32 array, with the transform
    every shard must share: RMS norm with a weight, a logit bias (one token
    masked), a scale and a soft-cap (transform=True), or none of them."""

    def __init__(self, seed, transform=True):
        rng = random.Random(seed)
        self.rng = rng
        self.W = array.array("f", [rng.gauss(0.0, 1.0) for _ in range(V * D)])
        self.transform = transform
        if transform:
            self.nw = array.array("f", [rng.uniform(0.5, 1.5) for _ in range(D)])
            self.bias = array.array("f", [rng.uniform(-0.5, 0.5) for _ in range(V)])
            self.bias[MASKED] = -math.inf

    def _kw(self, r0, r1):
        if not self.transform:
            return {}
        return dict(norm="rms", norm_eps=1e-5, norm_weight=self.nw,
                    logit_bias=memoryview(self.bias)[r0:r1], logit_scale=1.25, softcap=30.0)

    def head(self, r0=0, r1=V):
        """A head over rows [r0, r1) of W (borrowed, in place)."""
        return eevp.Head(memoryview(self.W)[r0 * D:r1 * D], dim=D, vocab_offset=r0,
                         **self._kw(r0, r1))

    def row(self, t):
        return self.W[t * D:(t + 1) * D]

    def hidden(self, target, noise, layer):
        """A hidden state drifting from noise towards token target's row."""
        a = ((layer + 1) / L) ** 2
        return [a * w + (1.0 - a) * n for w, n in zip(self.row(target), noise)]


def splits(rng, P):
    """Two uneven tilings of [0, V) into P blocks: random cuts, and one
    with 1-row blocks first."""
    if P == 1:
        return [[0, V]]
    cuts = sorted(rng.sample(range(1, V), P - 1))
    return [[0] + cuts + [V], list(range(P)) + [V]]


def shard_contexts(model, bounds, **options):
    P = len(bounds) - 1
    heads = [model.head(bounds[i], bounds[i + 1]) for i in range(P)]
    ctxs = [eevp.ShardContext(heads[i], L, shard_index=i, n_shards=P, total_vocab=V, **options)
            for i in range(P)]
    return heads, ctxs


# Context options that a shard takes, each with a row form: "compact" (the
# running sequences' rows), "all" (n_seq rows) or "map" (rows reversed, with
# row_seq).
CONFIGS = [
    ("top2 pruned", dict(k=8, first_layer=1, threshold=0.6), "compact"),
    ("max_prob full", dict(k=0, first_layer=1, criterion="max_prob", threshold=0.5), "all"),
    ("entropy, final pruned", dict(k=8, first_layer=2, prune_layer=1, criterion="entropy",
                                   threshold=0.4, final_policy="pruned"), "map"),
    ("exact exits", dict(k=8, first_layer=1, threshold=0.3, exact_exit=True), "compact"),
    ("saturation", dict(k=0, first_layer=1, criterion="saturation", threshold=0.99), "all"),
    ("stability", dict(k=8, first_layer=1, criterion="stability", patience=2), "compact"),
    ("js", dict(k=8, first_layer=1, criterion="js", threshold=0.98), "map"),
    ("re-pruning", dict(k=8, first_layer=1, reprune_every=2, threshold=0.7), "compact"),
    ("calm, interval 2", dict(k=6, first_layer=1, interval=2, schedule="calm", threshold=0.8,
                              max_length=8, top_k=12), "all"),
    ("never exit", dict(k=8, threshold=math.inf), "compact"),
    ("batch invariant", dict(k=5, first_layer=0, threshold=0.5, batch_invariant=True), "map"),
]
N_SEQ, STEPS = 3, 3


def step_inputs(model, rng):
    targets = [rng.randrange(V) for _ in range(N_SEQ)]
    noises = [[rng.gauss(0.0, 1.0) for _ in range(D)] for _ in range(N_SEQ)]
    positions = [rng.randrange(8) for _ in range(N_SEQ)]
    return targets, noises, positions


def rows_for(model, form, targets, noises, layer, running):
    """(hidden, row_seq) for `layer` in row form `form`."""
    if form == "compact":
        return [model.hidden(targets[s], noises[s], layer) for s in running], None
    if form == "all":
        return [model.hidden(targets[s], noises[s], layer) for s in range(N_SEQ)], None
    seqs = list(reversed(running))
    return [model.hidden(targets[s], noises[s], layer) for s in seqs], seqs


def run_unsharded(ctx, model, form, targets, noises, positions):
    with ctx.step(N_SEQ, positions) as step:
        for layer in range(L):
            running = step.running
            if not running:
                break
            hidden, row_seq = rows_for(model, form, targets, noises, layer, running)
            step.layer(layer, hidden, row_seq)
    return step.results(), [step.candidates(s) for s in range(N_SEQ)]


def run_sharded(test, ctxs, model, form, targets, noises, positions, exchanges=None):
    """Every rank through one step, records merged in rank order; returns
    each rank's results and candidates.  exchanges (a list) receives each
    exchange's records."""
    steps = [c.step(N_SEQ, positions) for c in ctxs]
    for layer in range(L):
        running = steps[0].running
        for st in steps:
            test.assertEqual(st.running, running)
        if not running:
            break
        hidden, row_seq = rows_for(model, form, targets, noises, layer, running)
        recs = [st.layer(layer, hidden, row_seq) for st in steps]
        while recs[0] is not None:
            test.assertTrue(all(r is not None and len(r) == len(recs[0]) for r in recs))
            test.assertTrue(all(st.in_exchange for st in steps))
            if exchanges is not None:
                exchanges.append(recs)
            merged = eevp.merge_all(recs)
            recs = [st.absorb(merged) for st in steps]
        test.assertTrue(all(r is None for r in recs))
        test.assertFalse(any(st.in_exchange for st in steps))
        for st in steps[1:]:
            test.assertEqual(st.resolved, steps[0].resolved)
    out = []
    for st in steps:
        out.append((st.results(), [st.candidates(s) for s in range(N_SEQ)]))
        st.end()
    return out


class Decisions(unittest.TestCase):
    def check_same(self, ref, got, what):
        ref_results, ref_cands = ref
        results, cands = got
        for r, g, rc, gc in zip(ref_results, results, ref_cands, cands):
            with self.subTest(what=what, seq=r.seq):
                self.assertEqual((g.reason, g.status, g.token, g.layer, g.pruned, g.pruned_token,
                                  g.set_size),
                                 (r.reason, r.status, r.token, r.layer, r.pruned, r.pruned_token,
                                  r.set_size), "%r\n%r" % (r, g))
                self.assertEqual(g.threshold, r.threshold)
                if r.pruned:
                    self.assertEqual(g.confidence, r.confidence)
                else:
                    self.assertLessEqual(abs(g.confidence - r.confidence), 1e-6, (r, g))
                # Candidates: the pruned set, or the full head's best top_k.
                n = len(gc.ids)
                self.assertGreater(n, 0)
                if len(rc.ids) < V:  # a pruned set: all of it
                    self.assertEqual(n, len(rc.ids))
                self.assertEqual(list(gc.ids), list(rc.ids)[:n])
                self.assertEqual(list(gc.logits), list(rc.logits)[:n])

    def test_p_shards_decide_as_the_unsharded_context(self):
        rng = random.Random(2024)
        compared = exited = 0
        for transform in (True, False):
            model = Model(11 if transform else 12, transform)
            full = model.head()
            for name, options, form in CONFIGS:
                ref_opts = {k: v for k, v in options.items() if k != "top_k"}
                for P in (1, 2, 3, 4):
                    for bounds in splits(rng, P):
                        what = "%s, %s transform, P=%d %r" % (
                            name, "with" if transform else "no", P, bounds)
                        ref_ctx = eevp.Context(full, L, max_batch=N_SEQ, **ref_opts)
                        heads, ctxs = shard_contexts(model, bounds, max_batch=N_SEQ, **options)
                        for c in ctxs:
                            self.assertEqual(c.required_layers, ref_ctx.required_layers)
                        for _ in range(STEPS):
                            targets, noises, positions = step_inputs(model, rng)
                            ref = run_unsharded(ref_ctx, model, form, targets, noises, positions)
                            got = run_sharded(self, ctxs, model, form, targets, noises,
                                              positions)
                            for rank in range(P):
                                self.check_same(ref, got[rank], "%s, rank %d" % (what, rank))
                            for rank in range(1, P):  # every rank: the same bits
                                self.assertEqual(got[rank][0], got[0][0], what)
                            compared += N_SEQ
                            exited += sum(r.exited_early for r in ref[0])
                        self.check_stats(ref_ctx.stats(), [c.stats() for c in ctxs], what)
                        for c in ctxs:
                            c.close()
                        ref_ctx.close()
        self.assertGreater(exited, compared // 10)           # the cases exit early ...
        self.assertLess(exited, compared - compared // 10)  # ... and not always

    def check_stats(self, ref, stats, what):
        same = ("tokens", "exited_early", "reached_last", "failed", "checks", "pruned_decisions",
                "k_coverage_hits", "k_coverage_total", "pruned_sets", "set_size_sum",
                "reprunes", "reprune_changed", "exact_exits", "exact_exit_changed",
                "exit_histogram")
        self.assertEqual((ref.shard_exchanges, ref.shard_bytes_sent, ref.shard_bytes_received),
                         (0, 0, 0))
        for st in stats:
            with self.subTest(what=what):
                self.assertEqual({f: getattr(st, f) for f in same},
                                 {f: getattr(ref, f) for f in same})
                self.assertGreater(st.shard_exchanges, 0)
                self.assertEqual(st.shard_bytes_sent, st.shard_bytes_received)
                self.assertGreater(st.shard_bytes_sent, 0)
                self.assertEqual(st.shard_exchanges, stats[0].shard_exchanges)
                self.assertEqual(st.shard_bytes_sent, stats[0].shard_bytes_sent)
                self.assertEqual(st.as_dict()["shard_exchanges"], st.shard_exchanges)

    def test_python_criterion_on_pruned_sets(self):
        # A criterion asking for logits sees only pruned sets on a shard:
        # pruning layer not checked, no re-pruning, final decision pruned.
        def gap(view):
            return min(1.0, (view.top1_logit - view.top2_logit) / 2.0)

        model = Model(5)
        rng = random.Random(5)
        opts = dict(max_batch=N_SEQ, k=8, prune_layer=0, first_layer=1, final_policy="pruned",
                    threshold=0.5)
        ref_ctx = eevp.Context(model.head(), L, **opts)
        ref_ctx.set_criterion(gap)
        heads, ctxs = shard_contexts(model, [0, 30, 31, V], **opts)
        for c in ctxs:
            c.set_criterion(gap)
        for _ in range(4):
            targets, noises, positions = step_inputs(model, rng)
            ref = run_unsharded(ref_ctx, model, "compact", targets, noises, positions)
            for got in run_sharded(self, ctxs, model, "compact", targets, noises, positions):
                self.check_same(ref, got, "python criterion")
        # Checked at the pruning layer it would see the full vocabulary: refused.
        bad, = shard_contexts(model, [0, V], k=8, first_layer=0, final_policy="pruned")[1]
        with self.assertRaises(eevp.InvalidArgument) as cm:
            bad.set_criterion(gap)
        self.assertIn("pruned sets", str(cm.exception))
        self.assertIs(bad.criterion, eevp.Criterion.TOP2_GAP)

    def test_criterion_exception_waits_for_the_end_of_the_exchange(self):
        class Boom(Exception):
            pass

        def decide(view):
            if view.seq == 1:
                raise Boom("seq 1")
            return 1.0

        model = Model(6)
        rng = random.Random(6)
        for exact in (False, True):
            heads, ctxs = shard_contexts(model, [0, 40, V], max_batch=N_SEQ, k=8, prune_layer=0,
                                         first_layer=1, final_policy="pruned", threshold=0.5,
                                         exact_exit=exact)
            for c in ctxs:
                c.set_criterion(decide)
            targets, noises, positions = step_inputs(model, rng)
            hidden = [[model.hidden(targets[s], noises[s], layer) for s in range(N_SEQ)]
                      for layer in range(2)]
            steps = [c.step(N_SEQ, positions) for c in ctxs]
            recs = [st.layer(0, hidden[0]) for st in steps]
            self.assertEqual([st.absorb(eevp.merge_all(recs)) for st in steps], [None, None])
            recs = [st.layer(1, hidden[1]) for st in steps]
            merged = eevp.merge_all(recs)
            if exact:  # the exact-token exits' exchange first: this rank's record comes out
                recs = [st.absorb(merged) for st in steps]
                self.assertTrue(all(recs))
                merged = eevp.merge_all(recs)
            for st in steps:
                with self.assertRaises(Boom):
                    st.absorb(merged)
                self.assertFalse(st.in_exchange)
                r = st.result(1)
                self.assertEqual((r.reason, r.status), (eevp.Reason.ERROR, eevp.EUSER))
                self.assertEqual([st.result(s).token for s in (0, 2)],
                                 [steps[0].result(s).token for s in (0, 2)])
                self.assertTrue(st.result(0).exited_early)
                st.end()
                self.assertEqual(st.ctx.stats().exact_exits, 2 if exact else 0)

    def test_exchange_helper_and_resolved(self):
        model = Model(8)
        rng = random.Random(8)
        heads, ctxs = shard_contexts(model, [0, 50, V], max_batch=N_SEQ, k=8, first_layer=1,
                                     threshold=0.5, exact_exit=True)
        ref_ctx = eevp.Context(model.head(), L, max_batch=N_SEQ, k=8, first_layer=1,
                               threshold=0.5, exact_exit=True)
        targets, noises, positions = step_inputs(model, rng)
        ref = run_unsharded(ref_ctx, model, "compact", targets, noises, positions)
        # Two ranks in one thread: each rank's allmerge returns the merge of
        # both records, the other's made beforehand by a twin context.
        twin_heads, twins = shard_contexts(model, [0, 50, V], max_batch=N_SEQ, k=8,
                                           first_layer=1, threshold=0.5, exact_exit=True)
        step, twin = ctxs[0].step(N_SEQ, positions), twins[1].step(N_SEQ, positions)
        resolved = []
        for layer in range(L):
            running = step.running
            if not running:
                break
            hidden = [model.hidden(targets[s], noises[s], layer) for s in running]
            other = [twin.layer(layer, hidden)]

            def allmerge(rec):
                merged = eevp.merge_all([rec, other[0]])
                other[0] = twin.absorb(merged)
                return merged
            got = step.exchange(layer, hidden, allmerge)
            self.assertEqual(got, step.resolved)
            self.assertIsNone(other[0])
            resolved += got
        self.assertEqual(sorted(r.seq for r in resolved), list(range(N_SEQ)))
        self.check_same(ref, (step.results(), [step.candidates(s) for s in range(N_SEQ)]),
                        "exchange()")
        step.end()


class Merging(unittest.TestCase):
    def exchanges(self, options, P=4):
        """The records of every exchange of a few steps on P shards."""
        model = Model(21)
        rng = random.Random(21)
        bounds = splits(rng, P)[0]
        heads, ctxs = shard_contexts(model, bounds, max_batch=N_SEQ, **options)
        out = []
        for _ in range(2):
            targets, noises, positions = step_inputs(model, rng)
            run_sharded(self, ctxs, model, "compact", targets, noises, positions, out)
        return out

    def test_any_order_and_tree_gives_the_same_bytes(self):
        records = self.exchanges(dict(k=8, first_layer=1, threshold=0.4, exact_exit=True))
        self.assertGreater(len(records), 4)
        for recs in records:
            want = eevp.merge_all(recs)
            for perm in itertools.permutations(recs):
                self.assertEqual(eevp.merge_all(perm), want)
            left, right = bytearray(recs[3]), bytearray(recs[0])
            self.assertTrue(eevp.merge(left, recs[1]))
            self.assertTrue(eevp.merge(right, memoryview(recs[2])))
            self.assertTrue(eevp.merge(left, right))
            self.assertEqual(bytes(left), want)
            # Inputs of any buffer type; merge_all takes any iterable.
            self.assertEqual(eevp.merge_all(bytearray(r) for r in recs), want)
            self.assertEqual(eevp.merge_all([array.array("B", r) for r in recs]), want)

    def test_merge_arguments(self):
        recs = self.exchanges(dict(k=8, first_layer=1), P=2)[0]
        with self.assertRaises(ValueError):
            eevp.merge_all([])
        with self.assertRaises(TypeError):
            eevp.merge(recs[0], recs[1])            # bytes: acc must be writable
        with self.assertRaises(TypeError):
            eevp.merge(bytearray(recs[0]), "text")
        with self.assertRaises(TypeError):
            eevp.merge_all([5, recs[0]])
        with self.assertRaises(eevp.OutOfRange):  # below a header: nothing written
            eevp.merge(bytearray(8), bytes(8))
        acc = bytearray(8)
        with self.assertRaises(eevp.OutOfRange):
            eevp.merge(acc, recs[0])
        self.assertEqual(acc, bytearray(8))
        # Another length: a truncated record, so acc becomes an error record,
        # and stays one.
        for other in (recs[1][:-1], recs[1] + b"\0", b""):
            acc = bytearray(recs[0])
            self.assertFalse(eevp.merge(acc, other))
            self.assertNotEqual(bytes(acc), recs[0])
            err = bytes(acc)
            self.assertFalse(eevp.merge(acc, recs[1]))
            self.assertEqual(bytes(acc), err)
            acc2 = bytearray(recs[1])
            self.assertFalse(eevp.merge(acc2, err))
            self.assertEqual(bytes(acc2), err)


class RecordErrors(unittest.TestCase):
    def setUp(self):
        self.model = Model(31)
        self.rng = random.Random(31)
        self.bounds = [0, 20, 60, V]
        # Layer 0 prunes (a full summary), layer 1 is checked on the sets.
        self.heads, self.ctxs = shard_contexts(self.model, self.bounds, max_batch=N_SEQ, k=8,
                                               prune_layer=0, first_layer=1, threshold=0.99)
        self.targets, self.noises, self.positions = step_inputs(self.model, self.rng)

    def tearDown(self):
        for c in self.ctxs:
            c.close()

    def hidden(self, layer):
        return [self.model.hidden(self.targets[s], self.noises[s], layer) for s in range(N_SEQ)]

    def begin(self, layer=0):
        """Every rank begun, through the layers before `layer`; returns the
        steps and their records of `layer`."""
        for c in self.ctxs:
            c.reset_stats()
        steps = [c.step(N_SEQ, self.positions) for c in self.ctxs]
        for ly in range(layer):
            recs = [st.layer(ly, self.hidden(ly)) for st in steps]
            while recs[0] is not None:
                merged = eevp.merge_all(recs)
                recs = [st.absorb(merged) for st in steps]
        return steps, [st.layer(layer, self.hidden(layer)) for st in steps]

    def assert_all_fail(self, steps, merged, why):
        for st in steps:
            with self.assertRaises(eevp.RecordError) as cm:
                st.absorb(merged)
            self.assertEqual(cm.exception.code, eevp.ERECORD)
            self.assertIn(why, str(cm.exception))
            self.assertFalse(st.in_exchange)
            self.assertEqual(st.running, [])
            self.assertEqual(len(st.resolved), N_SEQ)
            for r in st.results():
                self.assertEqual((r.reason, r.status, r.token), (eevp.Reason.ERROR,
                                                                 eevp.ERECORD, -1))
                self.assertIsInstance(r.error, eevp.RecordError)
            st.end()
        for c in self.ctxs:
            st = c.stats()
            self.assertEqual((st.tokens, st.failed), (N_SEQ, N_SEQ))
            self.assertGreater(st.shard_bytes_received, 0)

    def test_corrupted_header(self):
        for layer in (0, 1):  # a full summary, and a pruned layer's set record
            steps, recs = self.begin(layer)
            merged = bytearray(eevp.merge_all(recs))
            merged[0] ^= 0xFF  # the magic
            self.assert_all_fail(steps, bytes(merged), "malformed")

    def test_other_format_version(self):
        steps, recs = self.begin()
        merged = bytearray(eevp.merge_all(recs))
        merged[4] += 1
        self.assert_all_fail(steps, bytes(merged), "format version")

    def test_missing_and_repeated_shard(self):
        steps, recs = self.begin()
        self.assert_all_fail(steps, eevp.merge_all(recs[:2]), "missing")
        steps, recs = self.begin()
        self.assert_all_fail(steps, eevp.merge_all(recs + [recs[1]]), "twice")

    def test_ranks_with_other_hidden_states(self):
        steps = [c.step(N_SEQ, self.positions) for c in self.ctxs]
        hidden = self.hidden(0)
        recs = [st.layer(0, hidden) for st in steps[:2]]
        hidden[1][3] += 1.0
        recs.append(steps[2].layer(0, hidden))
        self.assert_all_fail(steps, eevp.merge_all(recs), "different hidden states")

    def test_record_of_another_step(self):
        steps, old = self.begin()
        for st in steps:
            st.abandon()
            self.assertFalse(st.ctx.in_exchange)
        steps, recs = self.begin()
        self.assertNotEqual(old, recs)
        self.assert_all_fail(steps, eevp.merge_all(old), "out of step")

    def test_mismatched_sizes_in_merge_reach_absorb_as_an_error(self):
        steps, recs = self.begin()
        acc = bytearray(recs[0])
        self.assertTrue(eevp.merge(acc, recs[1]))
        self.assertFalse(eevp.merge(acc, recs[2][:100]))
        self.assert_all_fail(steps, bytes(acc), "malformed")

    def test_state_and_size_errors_change_nothing(self):
        steps, recs = self.begin()
        st = steps[0]
        with self.assertRaises(eevp.StateError):      # the exchange is pending
            st.layer(1, self.hidden(1))
        merged = eevp.merge_all(recs)
        with self.assertRaises(eevp.OutOfRange):      # another size
            st.absorb(merged[:-4])
        with self.assertRaises(eevp.OutOfRange):
            st.absorb(b"")
        with self.assertRaises(TypeError):
            st.absorb(None)
        with self.assertRaises(eevp.StateError):      # sequences still run
            st.end()
        self.assertTrue(st.in_exchange)
        self.assertIsNone(st.absorb(merged))          # still waiting: completes
        with self.assertRaises(eevp.StateError):      # nothing pending now
            st.absorb(merged)
        self.assertEqual(self.ctxs[0].resolved, [])
        # The record capacity holds the largest record; a layer not required
        # gives no record.
        self.assertGreaterEqual(self.ctxs[0].record_capacity, max(len(r) for r in recs))
        ctx = eevp.ShardContext(self.heads[0], L, shard_index=0, n_shards=3, total_vocab=V,
                                k=8, first_layer=3, interval=3)
        self.assertFalse(ctx.layer_required(1))
        with ctx.step(1) as step:
            self.assertIsNone(step.layer(1, self.hidden(1)[0]))
            self.assertFalse(step.in_exchange)
            step.abandon()

    def test_end_refused_while_a_second_exchange_waits(self):
        # Exact-token exits: every sequence exits on the pruned set at the
        # first absorb, and the full argmax needs a second exchange.
        heads, ctxs = shard_contexts(self.model, self.bounds, max_batch=N_SEQ, k=8,
                                     prune_layer=0, first_layer=1, threshold=0.0,
                                     exact_exit=True)
        steps = [c.step(N_SEQ, self.positions) for c in ctxs]
        for layer in (0, 1):
            recs = [st.layer(layer, self.hidden(layer)) for st in steps]
            recs = [st.absorb(eevp.merge_all(recs)) for st in steps]
        self.assertTrue(all(recs))
        self.assertEqual(steps[0].running, [])
        with self.assertRaises(eevp.StateError):
            steps[0].end()
        recs = [st.absorb(eevp.merge_all(recs)) for st in steps]
        self.assertEqual(recs, [None] * len(steps))
        for st in steps:
            st.end()
            self.assertEqual(st.ctx.stats().exact_exits, N_SEQ)

    def test_nonfinite_rows_fail_on_their_own(self):
        steps = [c.step(N_SEQ, self.positions) for c in self.ctxs]
        hidden = self.hidden(0)
        hidden[1][0] = math.nan
        recs = [st.layer(0, hidden) for st in steps]
        for st in steps:
            r, = st.resolved
            self.assertEqual((r.seq, r.status), (1, eevp.ENONFINITE))
            self.assertEqual(st.running, [0, 2])
        merged = eevp.merge_all(recs)
        for st in steps:
            self.assertIsNone(st.absorb(merged))
            self.assertEqual(st.running, [0, 2])
            st.abandon()

    def test_malformed_bytes_never_crash(self):
        rng = random.Random(99)
        outcomes = {"ok": 0, "record": 0}
        for layer in (0, 1):
            steps, recs = self.begin(layer)
            good = eevp.merge_all(recs)
            for st in steps:
                st.abandon()
            ctx = self.ctxs[0]
            for i in range(150):
                bad = bytearray(good)
                for _ in range(rng.choice((1, 1, 2, 4))):
                    pos = rng.randrange(len(bad)) if rng.random() < 0.7 else rng.randrange(64)
                    bad[pos] = rng.randrange(256)
                if i % 10 == 0:
                    bad = bytearray(rng.randrange(256) for _ in range(len(good)))
                # merge in both directions, and against itself
                for a, b in ((good, bad), (bad, good), (bad, bad), (recs[1], bad)):
                    acc = bytearray(a)
                    self.assertIn(eevp.merge(acc, b), (True, False))
                # absorb on a fresh exchange
                steps, recs = self.begin(layer)
                try:
                    steps[0].absorb(bytes(bad))
                    outcomes["ok"] += 1
                except eevp.RecordError:
                    outcomes["record"] += 1
                for st in steps:
                    st.abandon()
                self.assertFalse(ctx.in_exchange)
        self.assertGreater(outcomes["record"], 100)


class Options(unittest.TestCase):
    def setUp(self):
        self.model = Model(41)
        self.heads = [self.model.head(0, 40), self.model.head(40, V)]

    def make(self, i=0, **kw):
        opts = dict(shard_index=i, n_shards=2, total_vocab=V)
        opts.update(kw)
        return eevp.ShardContext(self.heads[i], L, **opts)

    def test_properties(self):
        ctx = self.make(1, k=8, top_k=10, max_batch=2)
        self.assertIsInstance(ctx, eevp.Context)
        self.assertEqual((ctx.shard_index, ctx.n_shards, ctx.total_vocab), (1, 2, V))
        self.assertEqual(ctx.shard_options, dict(shard_index=1, n_shards=2, top_k=10,
                                                 total_vocab=V))
        self.assertIn("shard 1/2", repr(ctx))
        self.assertIn("rows [40, %d)" % V, repr(ctx))
        self.assertGreater(ctx.record_capacity, 0)
        self.assertGreater(ctx.memory, 0)
        self.assertEqual(ctx.options["k"], 8)
        self.assertIsInstance(ctx.step(1), eevp.ShardStep)
        ctx.close()
        self.assertEqual(repr(ctx), "<eevp.ShardContext closed>")
        with self.assertRaises(eevp.StateError):
            ctx.record_capacity
        with self.assertRaises(NotImplementedError):
            eevp.ShardContext.memory_estimate(self.heads[0], L, k=8)

    def test_refused_at_creation(self):
        cases = [
            (dict(shard_index=2), eevp.OutOfRange, "shard_index"),
            (dict(n_shards=eevp.MAX_SHARDS + 1), eevp.OutOfRange, "n_shards"),
            (dict(i=1, total_vocab=V - 1), eevp.OutOfRange, "total_vocab"),
            (dict(total_vocab=0), eevp.OutOfRange, "total_vocab"),
            (dict(n_shards=1), eevp.OutOfRange, "whole head"),
            (dict(k=8, top_k=4), eevp.OutOfRange, "top_k"),
            (dict(k=0, criterion="js"), eevp.InvalidArgument, "JS"),
            (dict(k=8, always_ids=[1, 2]), eevp.InvalidArgument, "plain top-K"),
            (dict(k=8, adaptive_mass=0.9, k_min=2), eevp.InvalidArgument, "adaptive"),
        ]
        for kw, exc, text in cases:
            with self.subTest(kw=kw):
                with self.assertRaises(exc) as cm:
                    self.make(**kw)
                self.assertIn(text, str(cm.exception))
        with self.assertRaises(TypeError):
            self.make(no_such_option=1)
        with self.assertRaises(TypeError):
            eevp.ShardContext(self.heads[0], L, shard_index=0, n_shards=2)  # total_vocab
        with self.assertRaises(OverflowError):
            self.make(total_vocab=2**70)
        with self.assertRaises(TypeError):
            eevp.ShardContext("head", L, total_vocab=V)

    def test_a_shard_context_takes_no_step_layer(self):
        ctx = self.make(k=8)
        with ctx.step(1):
            with self.assertRaises(eevp.StateError):
                eevp.Context.layer(ctx, 0, [0.5] * D)
            ctx.abandon()
        # and an unsharded context no shard call
        plain = eevp.Context(self.heads[0], L, k=8)
        size = eevp.lib.eevp_shard_record_capacity(plain._handle)
        self.assertEqual(size, eevp.EINVAL)


if __name__ == "__main__":
    unittest.main()
