# SPDX-License-Identifier: MIT
"""The Pythonic layer with the standard library only (no numpy): heads,
contexts, the step flow, results, candidates, statistics, errors, buffers,
Python criteria and their exceptions, lifetimes and memory.

Run: PYTHONPATH=src/python python3 -m unittest discover -s tests/python
"""
import array
import gc
import math
import os
import random
import sys
import threading
import unittest
import weakref

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
try:
    import eevp
except ImportError:
    sys.path.insert(0, os.path.join(ROOT, "src", "python"))
    import eevp

# The hello example: token v < 4 along +e_v, token v >= 4 along -e_(v-4).
HELLO_W = [4, 0, 0, 0, 0, 4, 0, 0, 0, 0, 4, 0, 0, 0, 0, 4,
           -4, 0, 0, 0, 0, -4, 0, 0, 0, 0, -4, 0, 0, 0, 0, -4]
HELLO_H = [[0.1, 0.2, 0.0, 0.0], [0.2, 1.5, 0.0, 0.0], [0.1, 3.0, 0.0, 0.0]]


def hello_head(**kw):
    return eevp.Head(array.array("f", HELLO_W), dim=4, **kw)


def rand_matrix(rng, rows, cols, scale=1.0):
    return [[rng.gauss(0.0, scale) for _ in range(cols)] for _ in range(rows)]


def ref_logits(W, h):
    return [sum(w * x for w, x in zip(row, h)) for row in W]


def f32(x):
    return array.array("f", [x])[0]


def rss_bytes():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Basics(unittest.TestCase):
    def test_hello_decodes_like_the_c_example(self):
        with hello_head() as head, eevp.Context(head, 3, k=4) as ctx:
            self.assertEqual(ctx.required_layers, (0, 1, 2))
            with ctx.step(1) as step:
                resolved = []
                for layer in ctx.required_layers:
                    if step.n_running == 0:
                        break
                    resolved += step.layer(layer, HELLO_H[layer])
            self.assertEqual(len(resolved), 1)
            r = step.result(0)
            self.assertEqual(r, resolved[0])
            self.assertEqual((r.token, r.layer, r.reason, r.pruned), (1, 1, eevp.Reason.CONFIDENT,
                                                                      True))
            self.assertTrue(r.exited_early and not r.running and not r.failed)
            self.assertIsNone(r.error)
            self.assertGreater(r.confidence, r.threshold)
            st = ctx.stats()
            self.assertEqual((st.tokens, st.exited_early, st.checks), (1, 1, 2))
            self.assertEqual(st.exit_histogram, (0, 1, 0))
            self.assertEqual(st.as_dict()["tokens"], 1)
            self.assertLess(st.flops_ratio, 1.0)

    def test_head_properties_and_kernels(self):
        rng = random.Random(1)
        V, d = 9, 5
        W = rand_matrix(rng, V, d)
        h = rand_matrix(rng, 3, d)
        flat = array.array("f", [x for r in W for x in r])
        with eevp.Head(flat, dim=d, vocab_offset=100) as head:
            self.assertEqual((head.n_vocab, head.dim, head.vocab_offset), (V, d, 100))
            self.assertTrue(head.borrowed)
            self.assertGreater(head.workspace_size(3), 0)
            z = head.logits(h)
            self.assertIsInstance(z, array.array)
            self.assertEqual(len(z), 3 * V)
            for r in range(3):
                want = ref_logits(W, h[r])
                for v in range(V):
                    self.assertAlmostEqual(z[r * V + v], want[v], places=4)
            ids = [107, 100, 103]
            rows, bias = head.gather(ids, with_bias=True)
            self.assertEqual(list(bias), [0.0, 0.0, 0.0])
            for j, t in enumerate(ids):
                for c in range(d):
                    self.assertEqual(rows[j * d + c], f32(W[t - 100][c]))
            zp = head.pruned_logits(rows, h)
            for r in range(3):
                for j, t in enumerate(ids):
                    self.assertAlmostEqual(zp[r * 3 + j], z[r * V + t - 100], places=5)
            with self.assertRaises(eevp.OutOfRange):
                head.gather([99])

    def test_copy_head_and_memory(self):
        W = array.array("f", HELLO_W)
        borrowed = eevp.Head(W, dim=4)
        copied = eevp.Head(W, dim=4, copy=True)
        self.assertGreaterEqual(copied.memory, borrowed.memory + 8 * 4 * 4)
        self.assertFalse(copied.borrowed)
        W[0] = 100.0  # the copy does not see it; the borrowing head does
        self.assertAlmostEqual(copied.logits([1, 0, 0, 0])[0], 4.0)
        self.assertAlmostEqual(borrowed.logits([1, 0, 0, 0])[0], 100.0)

    def test_topk_tie_rule(self):
        x = array.array("f", [1, 3, 2, 3, -math.inf, 3, math.inf, 0])
        ids, vals = eevp.topk(x, 5, id_offset=10)
        order = sorted(range(len(x)), key=lambda i: (-x[i], i))[:5]
        self.assertEqual(list(ids), [i + 10 for i in order])
        self.assertEqual(list(vals), [x[i] for i in order])
        self.assertEqual(list(eevp.topk(x, 2, values=False)), [6, 1])
        with self.assertRaises(eevp.NonFiniteError):
            eevp.topk([1.0, float("nan")], 1)
        with self.assertRaises(eevp.OutOfRange):
            eevp.topk([1.0, 2.0], 3)

    def test_threshold_schedule(self):
        with hello_head() as head, eevp.Context(head, 3, threshold=0.9, schedule="calm",
                                               schedule_tau=4.0, max_length=1024) as ctx:
            for t in (0, 64, 256, 1024, 10**6):
                want = 0.9 * (9 + math.exp(-4.0 * t / 1024)) / 10
                self.assertAlmostEqual(ctx.threshold_at(t), want, places=6)
            with self.assertRaises(eevp.OutOfRange):
                ctx.threshold_at(-1)

    def test_candidate_set_policy_options_reach_the_library(self):
        with hello_head() as head:
            with eevp.Context(head, 3, k=4, static_mode="only", static_ids=[5, 6, 7]) as ctx:
                self.assertEqual((ctx.options["static_mode"], ctx.options["n_static"]), (2, 3))
                with ctx.step(1) as step:
                    for l in range(3):
                        if step.n_running == 0:
                            break
                        step.layer(l, HELLO_H[l])
                r = step.result(0)
                self.assertEqual(r.set_size, 3)
                st = ctx.stats()
                self.assertEqual((st.pruned_sets, st.set_size_sum), (1, 3))
                self.assertEqual(ctx.set_size_histogram()[3], 1)
            with eevp.Context(head, 3, k=4, always_ids=[7], exact_exit=True,
                              batch_invariant=True) as ctx:
                self.assertEqual(ctx.options["flags"],
                                 eevp.CTX_EXACT_EXIT | eevp.CTX_BATCH_INVARIANT)
                self.assertEqual(ctx.options["n_always"], 1)
                with ctx.step(1) as step:
                    step.layer(0, HELLO_H[0])
                    step.layer(1, HELLO_H[1])
                r = step.result(0)
                self.assertEqual((r.token, r.pruned_token, r.set_size), (1, 1, 5))
            with self.assertRaises(eevp.OutOfRange):
                eevp.Context(head, 3, static_mode="union", static_ids=[0] * 70000)

    def test_memory_estimate(self):
        with hello_head() as head:
            est = eevp.Context.memory_estimate(head, 3, k=4, max_batch=2)
            with eevp.Context(head, 3, k=4, max_batch=2) as ctx:
                self.assertEqual(ctx.memory, est)

    def test_worker_threads(self):
        with hello_head() as head:
            one = eevp.Context.memory_estimate(head, 3, k=4)
            est = eevp.Context.memory_estimate(head, 3, k=4, n_threads=3)
            self.assertGreater(est, one)  # the pool's bookkeeping
            with eevp.Context(head, 3, k=4, n_threads=3) as ctx:
                self.assertEqual(ctx.memory, est)
                self.assertEqual(ctx.options["n_threads"], 3)
                with ctx.step(1) as step:
                    step.layer(0, HELLO_H[0])
                    step.layer(1, HELLO_H[1])
                self.assertEqual(step.result(0).token, 1)
            for bad in (-1, eevp.MAX_THREADS + 1):
                with self.assertRaises(eevp.OutOfRange):
                    eevp.Context(head, 3, n_threads=bad)


class StepFlow(unittest.TestCase):
    def setUp(self):
        self.head = hello_head()
        self.ctx = eevp.Context(self.head, 3, k=4, max_batch=3)

    def tearDown(self):
        self.ctx.close()
        self.head.close()

    def test_three_row_forms(self):
        H0 = [HELLO_H[0], [0.0, 0.0, 3.0, 0.0], [0.1, 0.1, 0.1, 0.1]]
        # Form 1: one row per sequence; sequence 1 exits at layer 0.
        step = self.ctx.step(3)
        got = step.layer(0, H0)
        self.assertEqual([r.seq for r in got], [1])
        self.assertEqual(step.running, [0, 2])
        # Form 2: compacted rows of the running sequences 0 and 2.
        got = step.layer(1, [HELLO_H[1], [0.0, 0.0, 0.0, 0.5]])
        self.assertEqual([r.seq for r in got], [0])
        # Form 3: mapped.
        got = step.layer(2, [[0.0, 0.0, 0.0, 0.7]], row_seq=[2])
        self.assertEqual([(r.seq, r.reason) for r in got], [(2, eevp.Reason.LAST_LAYER)])
        step.end()
        self.assertEqual([r.token for r in step.results()], [1, 2, 3])
        self.assertFalse(step.active)

    def test_candidates(self):
        with self.ctx.step(1) as step:
            step.layer(0, HELLO_H[0])
            step.layer(1, HELLO_H[1])
        c = self.ctx.candidates(0)
        self.assertEqual(len(c.ids), 4)  # the pruned set, K = 4
        self.assertEqual(c.ids[0], 1)
        self.assertEqual(list(c.logits), sorted(c.logits, reverse=True))
        c2 = self.ctx.candidates(0, 2)
        self.assertEqual(list(c2.ids), list(c.ids[:2]))
        lo, io = array.array("f", [0] * 8), array.array("i", [0] * 8)
        c3 = self.ctx.candidates(0, 8, logits_out=lo, ids_out=io)
        self.assertEqual(list(c3.ids), list(c.ids))
        self.assertEqual(list(io[:4]), list(c.ids))

    def test_state_errors_carry_the_context_message(self):
        with self.assertRaises(eevp.StateError) as cm:
            self.ctx.layer(0, HELLO_H[0])
        self.assertIn("no step", cm.exception.message)
        self.ctx.begin(1)
        with self.assertRaises(eevp.StateError):
            self.ctx.begin(1)
        with self.assertRaises(eevp.StateError) as cm:
            self.ctx.layer(1, HELLO_H[1])  # layer 0 is required first
        self.assertIn("layer 0", str(cm.exception))
        with self.assertRaises(eevp.StateError):
            self.ctx.end()  # still running: the step stays in progress
        self.assertTrue(self.ctx.in_step)
        self.ctx.layer(0, HELLO_H[0])
        with self.assertRaises(eevp.StateError):
            self.ctx.layer(0, HELLO_H[0])
        with self.assertRaises(eevp.OutOfRange):
            self.ctx.layer(1, [HELLO_H[1]] * 2)  # neither n_seq nor running rows
        with self.assertRaises(eevp.OutOfRange):
            self.ctx.result(5)
        self.ctx.abandon()
        self.assertFalse(self.ctx.in_step)
        self.ctx.abandon()  # no step: a no-op

    def test_step_object_goes_stale(self):
        old = self.ctx.step(1)
        old.abandon()
        with self.assertRaises(eevp.StateError):
            old.layer(0, HELLO_H[0])
        new = self.ctx.step(1)
        with self.assertRaises(eevp.StateError):
            old.result(0)
        new.abandon()

    def test_with_block_abandons_on_exception(self):
        with self.assertRaises(KeyError):
            with self.ctx.step(1) as step:
                step.layer(0, HELLO_H[0])
                raise KeyError("host failure")
        self.assertFalse(self.ctx.in_step)
        self.assertEqual(self.ctx.stats().tokens, 0)

    def test_with_block_end_refused_leaves_context_idle(self):
        with self.assertRaises(eevp.StateError):
            with self.ctx.step(1) as step:
                step.layer(0, HELLO_H[0])
        self.assertFalse(self.ctx.in_step)
        self.ctx.step(1).abandon()

    def test_nonfinite_row_fails_only_its_sequence(self):
        with self.ctx.step(2) as step:
            got = step.layer(0, [[float("nan"), 0, 0, 0], [0.0, 0.0, 3.0, 0.0]])
            self.assertEqual(sorted(r.seq for r in got), [0, 1])
        r0, r1 = self.ctx.results()
        self.assertEqual((r0.reason, r0.status, r0.token),
                         (eevp.Reason.ERROR, eevp.ENONFINITE, -1))
        self.assertIsInstance(r0.error, eevp.NonFiniteError)
        self.assertEqual((r1.reason, r1.token), (eevp.Reason.CONFIDENT, 2))
        self.assertEqual(self.ctx.stats().failed, 1)

    def test_reset_and_stats_reset(self):
        with self.ctx.step(1) as step:
            for l in range(3):
                if step.n_running == 0:
                    break
                step.layer(l, HELLO_H[l])
        self.assertEqual(self.ctx.stats().tokens, 1)
        self.ctx.begin(1)
        self.ctx.reset()
        self.assertFalse(self.ctx.in_step)
        self.assertEqual(self.ctx.stats().tokens, 1)
        self.ctx.reset_stats()
        self.assertEqual(self.ctx.stats().tokens, 0)


class Arguments(unittest.TestCase):
    def test_option_errors(self):
        with hello_head() as head:
            with self.assertRaises(eevp.OutOfRange) as cm:
                eevp.Context(head, 0)
            self.assertIn("n_layers", cm.exception.message)
            with self.assertRaises(eevp.OutOfRange):
                eevp.Context(head, 3, threshold=float("nan"))
            with self.assertRaises(eevp.InvalidArgument):
                eevp.Context(head, 3, criterion=eevp.Criterion.CUSTOM)
            with self.assertRaises(ValueError):
                eevp.Context(head, 3, criterion="no-such")
            with self.assertRaises(TypeError):
                eevp.Context(head, 3, no_such_option=1)
            with self.assertRaises(OverflowError):
                eevp.Context(head, 2**40)
            with self.assertRaises(TypeError):
                eevp.Context(head, 3.5)
            with self.assertRaises(TypeError):
                eevp.Context("not a head", 3)
            for name in ("top2_gap", "max_prob", "entropy", "saturation", "stability", "js"):
                k = 0 if name == "saturation" else 4
                with eevp.Context(head, 3, criterion=name, k=k) as c:
                    self.assertEqual(c.criterion, eevp.Criterion[name.upper()])

    def test_head_errors(self):
        with self.assertRaises(eevp.OutOfRange) as cm:
            eevp.Head(array.array("f", HELLO_W), dim=4, softcap=-1.0)
        self.assertTrue(cm.exception.message)
        with self.assertRaises(ValueError):
            eevp.Head(array.array("f", HELLO_W), dim=5)  # 32 floats are not rows of 5
        with self.assertRaises(ValueError):
            eevp.Head(array.array("f", HELLO_W))  # flat without dim
        with self.assertRaises(TypeError):
            eevp.Head(array.array("d", HELLO_W), dim=4)  # borrowed: no silent conversion
        with self.assertRaises(TypeError):
            eevp.Head(object(), dim=4)
        with self.assertRaises(TypeError):
            eevp.Head(HELLO_W, dim=4)  # a list cannot be borrowed
        with self.assertRaises(ValueError):
            eevp.Head(array.array("f", HELLO_W), dim=4, norm_weight=[1.0] * 3, copy=True)
        with self.assertRaises(ValueError):
            eevp.Head(array.array("f", HELLO_W), dim=4, norm="no-such")
        with self.assertRaises(ValueError):
            eevp.Head(memoryview(array.array("f", HELLO_W))[::2], dim=4)  # strided
        with eevp.Head(array.array("d", HELLO_W), dim=4, copy=True) as h:
            self.assertAlmostEqual(h.logits([0, 1, 0, 0])[1], 4.0)
        with eevp.Head(HELLO_W, dim=4, copy=True) as h:
            self.assertEqual(h.n_vocab, 8)

    def test_row_stride_on_a_flat_buffer(self):
        padded = array.array("f", [])
        for v in range(8):
            padded.extend(HELLO_W[4 * v:4 * v + 4] + [99.0, 99.0])
        with eevp.Head(padded, dim=4, row_stride=6, n_vocab=8) as h:
            self.assertEqual((h.n_vocab, h.dim), (8, 4))
            z = h.logits([0.0, 1.0, 0.0, 0.0])
            self.assertEqual(list(z), [0, 4, 0, 0, 0, -4, 0, 0])
        with self.assertRaises(ValueError):
            eevp.Head(padded, dim=4, row_stride=6, n_vocab=9)

    def test_hidden_buffers_and_conversions(self):
        with hello_head() as head:
            want = list(head.logits([0.5, 1.0, 0.0, 0.0]))
            for h in (array.array("f", [0.5, 1, 0, 0]), array.array("d", [0.5, 1, 0, 0]),
                      memoryview(array.array("f", [0.5, 1, 0, 0])),
                      memoryview(bytes(array.array("f", [0.5, 1, 0, 0]))).cast("f"),
                      memoryview(array.array("f", [0.5, 9, 1, 9, 0, 9, 0, 9]))[::2],
                      (0.5, 1, 0, 0), [[0.5, 1, 0, 0]],
                      bytearray(array.array("f", [0.5, 1, 0, 0]))):
                with self.subTest(h=type(h).__name__):
                    if isinstance(h, bytearray):
                        h = memoryview(h).cast("f")
                    self.assertEqual(list(head.logits(h)), want)
            with self.assertRaises(ValueError):
                head.logits([1.0, 2.0, 3.0])  # not whole rows of d = 4
            with self.assertRaises(TypeError):
                head.logits(["a", "b", "c", "d"])
            with self.assertRaises(TypeError):
                head.logits(memoryview(b"\0" * 16))  # bytes: format 'B'
            with self.assertRaises(TypeError):
                head.logits(12)
            with self.assertRaises(ValueError):
                head.logits([])
            out = array.array("f", [0.0] * 8)
            self.assertIs(head.logits([0.5, 1, 0, 0], out=out), out)
            self.assertEqual(list(out), want)
            with self.assertRaises(ValueError):
                head.logits([0.5, 1, 0, 0], out=memoryview(bytes(32)).cast("f"))  # read-only
            with self.assertRaises(TypeError):
                head.logits([0.5, 1, 0, 0], out=array.array("d", [0.0] * 8))
            with self.assertRaises(ValueError):
                head.logits([0.5, 1, 0, 0], out=array.array("f", [0.0] * 16))  # 2 rows
            with self.assertRaises(eevp.NonFiniteError):
                head.logits([float("inf"), 0, 0, 0])

    def test_integer_arguments_are_checked(self):
        with hello_head() as head, eevp.Context(head, 3, k=4) as ctx:
            ctx.begin(1)
            with self.assertRaises(OverflowError):
                ctx.layer(2**32, HELLO_H[0])  # would wrap to 0 in C
            with self.assertRaises(TypeError):
                ctx.layer(0.0, HELLO_H[0])
            with self.assertRaises(eevp.OutOfRange):
                ctx.layer(-1, HELLO_H[0])
            with self.assertRaises(ValueError):
                ctx.layer(0, HELLO_H[0], row_seq=[0, 1])
            ctx.abandon()
            with self.assertRaises(eevp.OutOfRange):
                ctx.begin(1, positions=[-3])
            with self.assertRaises(ValueError):
                ctx.begin(2, positions=[1])
            with self.assertRaises(OverflowError):
                ctx.begin(1, positions=[2**31])


class Lifetimes(unittest.TestCase):
    def test_close_twice_and_use_after_close(self):
        head = hello_head()
        ctx = eevp.Context(head, 3, k=4)
        ctx.close()
        ctx.close()
        self.assertTrue(ctx.closed)
        for call in (lambda: ctx.begin(1), lambda: ctx.stats(), lambda: ctx.n_running,
                     lambda: ctx.layer(0, HELLO_H[0]), lambda: ctx.result(0),
                     lambda: ctx.candidates(0), lambda: ctx.set_criterion(lambda v: 0.0),
                     lambda: ctx.memory, lambda: ctx.required_layers):
            with self.assertRaises(eevp.StateError):
                call()
        head.close()
        head.close()
        self.assertTrue(head.closed)
        with self.assertRaises(eevp.StateError):
            head.logits(HELLO_H[0])
        with self.assertRaises(eevp.StateError):
            eevp.Context(head, 3)
        with self.assertRaises(eevp.StateError):
            head.memory

    def test_context_keeps_its_head_alive(self):
        head = hello_head()
        ctx = eevp.Context(head, 3, k=4)
        head.close()  # the C head stays while ctx uses it
        self.assertTrue(head.closed)
        self.assertIsNotNone(head._handle)
        with ctx.step(1) as step:
            step.layer(0, HELLO_H[0])
            step.layer(1, HELLO_H[1])
        self.assertEqual(ctx.result(0).token, 1)
        del head
        gc.collect()
        with ctx.step(1) as step:
            for l in range(3):
                if step.n_running == 0:
                    break
                step.layer(l, HELLO_H[l])
        h = ctx.head
        ctx.close()
        self.assertIsNone(h._handle)  # freed with the last user

    def test_borrowed_buffer_kept_alive_and_pinned(self):
        W = array.array("f", HELLO_W)
        ref = weakref.ref(W) if hasattr(W, "__weakref__") else None
        head = eevp.Head(W, dim=4)
        with self.assertRaises(BufferError):
            W.append(1.0)  # exported: cannot move under the head
        del W
        gc.collect()
        for _ in range(3):
            [bytearray(1 << 16) for _ in range(64)]  # churn the allocator
        self.assertEqual(list(head.logits([0, 0, 1, 0])), [0, 0, 4, 0, 0, 0, -4, 0])
        if ref is not None:
            self.assertIsNotNone(ref())
        head.close()
        gc.collect()
        if ref is not None:
            self.assertIsNone(ref())

    def test_read_only_buffer_borrowed(self):
        ro = memoryview(array.array("f", HELLO_W).tobytes()).cast("f")
        self.assertTrue(ro.readonly)
        with eevp.Head(ro, dim=4) as head:
            self.assertEqual(list(head.logits([0, 1, 0, 0])), [0, 4, 0, 0, 0, -4, 0, 0])

    def test_read_only_mmap_borrowed_and_pinned(self):
        import mmap
        import tempfile
        with tempfile.TemporaryFile() as f:
            f.write(array.array("f", HELLO_W).tobytes())
            f.flush()
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            head = eevp.Head(memoryview(m).cast("f"), dim=4)
            two_rows = memoryview(array.array("f", [0, 0, 0, 1] * 2)).cast("B").cast("f", (2, 4))
            self.assertEqual(list(head.logits(two_rows)), [0, 0, 0, 4, 0, 0, 0, -4] * 2)
            with self.assertRaises(BufferError):
                m.close()  # the head still reads it
            head.close()
            gc.collect()
            m.close()

    def test_garbage_collector_frees_cycles_in_any_order(self):
        for order in range(2):
            head = hello_head()
            ctx = eevp.Context(head, 3, k=4)
            ctx.set_criterion(lambda v: 0.0)
            if order:
                head.cycle = ctx
            ctx.cycle = ctx
            head.self_ref = head
            del head, ctx
            gc.collect()

    def test_create_free_cycles_do_not_grow_memory(self):
        W = array.array("f", HELLO_W)

        def cycle():
            head = eevp.Head(W, dim=4)
            ctx = eevp.Context(head, 3, k=4)
            ctx.set_criterion(lambda v: v.top1_logit)
            with ctx.step(1) as step:
                step.layer(0, HELLO_H[0])
                if step.n_running:
                    step.layer(1, HELLO_H[1])
                if step.n_running:
                    step.layer(2, HELLO_H[2])
            ctx.candidates(0)
            ctx.close()
            head.close()
            h2 = eevp.Head(W, dim=4)  # and one left to the garbage collector
            eevp.Context(h2, 3, k=4)

        for _ in range(300):
            cycle()
        gc.collect()
        before = rss_bytes()
        for _ in range(3000):
            cycle()
        gc.collect()
        growth = rss_bytes() - before
        self.assertLess(growth, 2 << 20, "RSS grew by %d bytes over 3000 cycles" % growth)


class Criteria(unittest.TestCase):
    def setUp(self):
        self.head = hello_head()
        self.ctx = eevp.Context(self.head, 3, k=4, max_batch=2, threshold=0.5)

    def tearDown(self):
        self.ctx.close()
        self.head.close()

    def run_step(self, n=1, rows=None):
        rows = rows or [[HELLO_H[l]] * n for l in range(3)]
        with self.ctx.step(n) as step:
            for l in self.ctx.required_layers:
                if step.n_running == 0:
                    break
                step.layer(l, rows[l])
        return self.ctx.results()

    def test_view_contents(self):
        seen = []

        class Probe(eevp.CustomCriterion):
            name = "probe"
            needs_prev_hidden = True

            def decide(self, view):
                seen.append((view.seq, view.layer, view.n_layers, view.dim, view.n, view.pruned,
                             list(view.hidden), view.prev_hidden and list(view.prev_hidden),
                             list(view.ids), list(view.logits), view.top1_id, view.threshold))
                return 0.0

        self.ctx.set_criterion(Probe())
        self.assertIsInstance(self.ctx.criterion, Probe)
        self.run_step()
        self.assertEqual([s[1] for s in seen], [0, 1, 2])
        s0, s1, s2 = seen
        self.assertEqual(s0[:6], (0, 0, 3, 4, 8, False))  # pruning layer: full vocabulary
        self.assertEqual(s0[8], list(range(8)))
        self.assertIsNone(s0[7])
        self.assertEqual(s1[:6], (0, 1, 3, 4, 4, True))  # the pruned set
        self.assertEqual(sorted(s1[8]), [0, 1, 2, 3][:0] + sorted(s1[8]))
        self.assertEqual(s1[6], [f32(x) for x in HELLO_H[1]])
        self.assertEqual(s1[7], [f32(x) for x in HELLO_H[0]])
        self.assertEqual(s1[10], 1)
        self.assertAlmostEqual(s1[11], 0.5)
        for ids, logits in ((s1[8], s1[9]),):
            want = dict(zip(range(8), ref_logits([HELLO_W[4 * v:4 * v + 4] for v in range(8)],
                                                 HELLO_H[1])))
            for t, z in zip(ids, logits):
                self.assertAlmostEqual(z, want[t], places=5)

    def test_confidence_and_exit_decisions(self):
        # A "linear probe": confidence = hidden[1] / 2, default exit rule.
        self.ctx.set_criterion(lambda v: v.hidden[1] / 2, needs_logits=False)
        self.assertEqual(self.ctx.required_layers, (0, 1, 2))
        r = self.run_step()[0]
        self.assertEqual((r.layer, r.reason, r.pruned), (1, eevp.Reason.CONFIDENT, False))
        self.assertAlmostEqual(r.confidence, 0.75)
        self.assertEqual(r.token, 1)  # the full head once, at the exit
        # Deciding explicitly: never exit before the last layer.
        self.ctx.set_criterion(lambda v: (1.0, False))
        r = self.run_step()[0]
        self.assertEqual((r.layer, r.reason), (2, eevp.Reason.LAST_LAYER))
        # Always exit at once, even with a low confidence.
        self.ctx.set_criterion(lambda v: (0.0, True))
        r = self.run_step()[0]
        self.assertEqual((r.layer, r.reason, r.confidence), (0, eevp.Reason.CONFIDENT, 0.0))

    def test_invalid_results_fail_the_sequence_only(self):
        self.ctx.set_criterion(lambda v: float("nan") if v.seq == 0 else 1.0)
        r0, r1 = self.run_step(2)
        self.assertEqual((r0.reason, r0.status), (eevp.Reason.ERROR, eevp.ECALLBACK))
        self.assertIsInstance(r0.error, eevp.CallbackResultError)
        self.assertEqual(r1.reason, eevp.Reason.CONFIDENT)
        self.ctx.set_criterion(lambda v: (0.5, 7))
        self.assertEqual(self.run_step()[0].status, eevp.ECALLBACK)

    def test_exception_in_decide_is_reraised_after_the_call(self):
        class Boom(Exception):
            pass

        def decide(view):
            if view.seq == 1:
                raise Boom("seq 1")
            return 1.0

        self.ctx.set_criterion(decide)
        step = self.ctx.step(2)
        with self.assertRaises(Boom) as cm:
            step.layer(0, [HELLO_H[0], HELLO_H[0]])
        self.assertEqual(str(cm.exception), "seq 1")
        r0, r1 = step.results()
        self.assertEqual(r0.reason, eevp.Reason.CONFIDENT)  # processed normally
        self.assertEqual((r1.reason, r1.status), (eevp.Reason.ERROR, eevp.EUSER))
        self.assertIsInstance(r1.error, eevp.UserCallbackError)
        step.end()  # the context is fully usable
        self.assertEqual(self.ctx.stats().failed, 1)

    def test_base_exceptions_too(self):
        class Stop(BaseException):
            pass

        for exc in (Stop, KeyboardInterrupt, SystemExit):
            def decide(view, exc=exc):
                raise exc()

            self.ctx.set_criterion(decide)
            with self.assertRaises(exc):
                with self.ctx.step(1) as step:
                    step.layer(0, HELLO_H[0])
            self.assertFalse(self.ctx.in_step)  # the with-block abandoned it
        self.ctx.set_criterion(lambda v: 1.0)
        self.assertEqual(self.run_step()[0].reason, eevp.Reason.CONFIDENT)

    def test_bad_return_types_are_reraised(self):
        self.ctx.set_criterion(lambda v: "high")
        with self.assertRaises(ValueError):
            self.run_step()
        self.ctx.set_criterion(lambda v: (1.0, 2.0, 3.0))
        with self.assertRaises(TypeError):
            self.run_step()
        self.ctx.set_criterion(lambda v: None)
        with self.assertRaises(TypeError):
            self.run_step()

    def test_reentering_the_context_is_refused(self):
        ctx = self.ctx

        def decide(view):
            ctx.n_running  # calls into its own context
            return 1.0

        ctx.set_criterion(decide)
        with self.assertRaises(eevp.BusyError):
            self.run_step()

        def closer(view):
            ctx.close()
            return 1.0

        ctx.set_criterion(closer)
        with self.assertRaises(eevp.BusyError):
            self.run_step()
        self.assertFalse(ctx.closed)

    def test_view_is_dead_after_the_callback(self):
        kept = []
        self.ctx.set_criterion(lambda v: kept.append(v) or 1.0)
        self.run_step()
        with self.assertRaises(eevp.StateError):
            kept[0].hidden
        self.assertEqual(kept[0].layer, 0)

    def test_reset_and_destroy(self):
        log = []

        class C(eevp.CustomCriterion):
            def __init__(self, tag, fail_reset=False, fail_destroy=False):
                self.tag, self.fail_reset, self.fail_destroy = tag, fail_reset, fail_destroy

            def decide(self, view):
                return 1.0

            def reset(self, seq):
                log.append((self.tag, "reset", seq))
                if self.fail_reset:
                    raise RuntimeError("reset failed")

            def destroy(self):
                log.append((self.tag, "destroy"))
                if self.fail_destroy:
                    raise RuntimeError("destroy failed")

        self.ctx.set_criterion(C("a"))
        self.run_step(2)
        self.assertEqual(log, [("a", "reset", 0), ("a", "reset", 1)])
        del log[:]
        self.ctx.set_criterion(C("b", fail_reset=True))
        self.assertEqual(log, [("a", "destroy")])
        with self.assertRaises(RuntimeError):
            self.ctx.begin(1)
        self.assertFalse(self.ctx.in_step)  # begin did not happen
        self.ctx.set_criterion(C("c", fail_destroy=True))
        with self.assertRaises(RuntimeError):
            self.ctx.close()
        self.assertTrue(self.ctx.closed)
        self.assertEqual(log[-1], ("c", "destroy"))

    def test_registration_keeps_callbacks_alive(self):
        class Counter(eevp.CustomCriterion):
            calls = 0

            def decide(self, view):
                Counter.calls += 1
                return 1.0

        c = Counter()
        ref = weakref.ref(c)
        self.ctx.set_criterion(c)
        del c
        gc.collect()
        self.assertIsNotNone(ref())
        self.run_step()
        self.assertEqual(Counter.calls, 1)
        self.ctx.set_criterion(lambda v: 1.0)  # replaced: released
        gc.collect()
        self.assertIsNone(ref())

    def test_set_criterion_refused_during_a_step(self):
        self.ctx.begin(1)
        with self.assertRaises(eevp.StateError):
            self.ctx.set_criterion(lambda v: 1.0)
        with self.assertRaises(TypeError):
            self.ctx.set_criterion(42)


class Threads(unittest.TestCase):
    def test_shared_head_from_threads(self):
        rng = random.Random(5)
        V, d = 64, 16
        W = rand_matrix(rng, V, d)
        H = rand_matrix(rng, 8, d)
        head = eevp.Head(array.array("f", [x for r in W for x in r]), dim=d)
        want = [list(head.logits(h)) for h in H]
        errors = []
        ready = threading.Barrier(5)

        def work(i):
            try:
                with eevp.Context(head, 4, k=8, first_layer=1) as ctx:
                    for _ in range(50):  # kernels on the shared head, concurrently
                        if list(head.logits(H[i])) != want[i]:
                            errors.append("logits differ")
                    ready.wait(10)
                    for _ in range(50):  # the head is closed now: contexts keep it
                        with ctx.step(1) as step:
                            for l in ctx.required_layers:
                                if step.n_running == 0:
                                    break
                                step.layer(l, H[(i + l) % 8])
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        ready.wait(10)
        head.close()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        self.assertIsNone(head._handle)

    def test_context_busy_in_another_thread(self):
        head = hello_head()
        ctx = eevp.Context(head, 3, k=4)
        inside, release = threading.Event(), threading.Event()

        def decide(view):
            inside.set()
            release.wait(5)
            return 1.0

        ctx.set_criterion(decide)
        ctx.begin(1)
        t = threading.Thread(target=ctx.layer, args=(0, HELLO_H[0]))
        t.start()
        self.assertTrue(inside.wait(5))
        try:
            with self.assertRaises(eevp.BusyError):
                ctx.stats()
        finally:
            release.set()
            t.join()
        self.assertEqual(ctx.n_running, 0)
        ctx.close()
        head.close()


if __name__ == "__main__":
    unittest.main()
