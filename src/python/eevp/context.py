# SPDX-License-Identifier: MIT
"""The decoding context (Context) and its step (Step): options, the step
loop (begin, layer, result, candidates, end), criteria, statistics, and the
values they return (Result, Stats, Candidates)."""

from __future__ import annotations

import array
import ctypes
import dataclasses
import threading
from ctypes import POINTER, byref, c_float, c_int32, c_int64, c_void_p
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

from ._arrays import (_I32_CODE, _INT32, _enum, _enum_member, _i32, _int, _int32_array,
                      _matrix, _vector)
from ._ffi import (CTX_BATCH_INVARIANT, CTX_EXACT_EXIT, CTX_SCREEN, EBUSY, ECALLBACK, ENONFINITE,
                   ESTATE, EUSER, NEEDS_LOGITS, NEEDS_PREV_HIDDEN, OK, Criterion, Final, Reason,
                   Schedule, Static, eevp_ctx_options, eevp_result, eevp_stats, lib)
from .criterion import _method, _Registration
from .errors import BusyError, EevpError, StateError, _check, error_for
from ._handles import _Exclusive
from .head import Head


# --------------------------------------------------------------------------
# Results, statistics, candidates
# --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Result:
    """One sequence's result in the current (or just ended) step."""
    seq: int
    reason: Reason
    status: int
    token: int
    layer: int
    pruned: bool
    confidence: float
    threshold: float
    pruned_token: int = -1
    set_size: int = 0

    @property
    def running(self) -> bool:
        return self.reason == Reason.RUNNING

    @property
    def exited_early(self) -> bool:
        return self.reason == Reason.CONFIDENT

    @property
    def failed(self) -> bool:
        return self.reason == Reason.ERROR

    @property
    def error(self) -> Optional[EevpError]:
        """The sequence's own failure as an exception instance, else None."""
        if self.status == OK:
            return None
        return error_for(self.status, "sequence %d at layer %d" % (self.seq, self.layer))



@dataclasses.dataclass(frozen=True)
class Stats:
    """Context statistics over the steps ended since creation or the last
    reset_stats() (include/eevp.h, eevp_stats), plus the exit histogram."""
    n_layers: int
    tokens: int
    exited_early: int
    reached_last: int
    failed: int
    checks: int
    pruned_decisions: int
    k_coverage_hits: int
    k_coverage_total: int
    k_coverage_final: float
    head_flops: int
    head_flops_baseline: int
    head_bytes: int
    head_bytes_baseline: int
    pruned_sets: int = 0
    set_size_sum: int = 0
    reprunes: int = 0
    reprune_changed: int = 0
    always_emitted: int = 0
    static_emitted: int = 0
    exact_exits: int = 0
    exact_exit_changed: int = 0
    shard_exchanges: int = 0
    shard_bytes_sent: int = 0
    shard_bytes_received: int = 0
    exit_histogram: Tuple[int, ...] = ()

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def mean_set_size(self) -> float:
        """set_size_sum / pruned_sets (0 without sets)."""
        return self.set_size_sum / self.pruned_sets if self.pruned_sets else 0.0

    @property
    def flops_ratio(self) -> float:
        """head_flops / head_flops_baseline (0 without checks)."""
        return self.head_flops / self.head_flops_baseline if self.head_flops_baseline else 0.0


class Candidates(NamedTuple):
    logits: Any
    ids: Any


# --------------------------------------------------------------------------
# Context and Step
# --------------------------------------------------------------------------

_CTX_FIELDS = ("max_batch", "k", "first_layer", "interval", "prune_layer", "final_policy",
               "criterion", "threshold", "schedule", "schedule_tau", "max_length", "patience",
               "flags", "static_mode", "reprune_layer", "reprune_every", "adaptive_mass",
               "k_min", "n_threads")
_CTX_EXTRA = ("batch_invariant", "exact_exit", "screen", "always_ids", "static_ids")


def _ctx_options(n_layers, kw):
    """(eevp_ctx_options, what must live until the create call returns)."""
    unknown = set(kw) - set(_CTX_FIELDS) - set(_CTX_EXTRA)
    if unknown:
        raise TypeError("unknown context option(s): %s" % ", ".join(sorted(unknown)))
    o = eevp_ctx_options()
    _check(lib.eevp_ctx_options_init(byref(o)))
    o.n_layers = _i32(n_layers, "n_layers")
    keep = []
    for name, value in kw.items():
        if value is None or name in _CTX_EXTRA:
            continue  # None: the library's default
        if name == "final_policy":
            value = _enum(value, Final, name)
        elif name == "criterion":
            value = _enum(value, Criterion, name)
        elif name == "schedule":
            value = _enum(value, Schedule, name)
        elif name == "static_mode":
            value = _enum(value, Static, name)
        elif name in ("threshold", "schedule_tau", "adaptive_mass"):
            value = float(value)
        elif name == "flags":
            value = _int(value, name, 0, 2**32 - 1)
        else:
            value = _i32(value, name)
        setattr(o, name, value)
    for name, bit in (("batch_invariant", CTX_BATCH_INVARIANT), ("exact_exit", CTX_EXACT_EXIT),
                      ("screen", CTX_SCREEN)):
        if kw.get(name) is not None:
            o.flags = (o.flags | bit) if kw[name] else (o.flags & ~bit)
    for name, count in (("always_ids", "n_always"), ("static_ids", "n_static")):
        ids = kw.get(name)
        if ids is None:
            continue
        if len(ids) == 0:
            setattr(o, count, 0)
            continue
        addr, n, m = _int32_array(ids, name)
        keep.append(m)
        setattr(o, name, ctypes.cast(c_void_p(addr), POINTER(c_int32)))
        setattr(o, count, n)
    return o, keep


class Context(_Exclusive):
    """Up to max_batch sequences decoded together on one head; use it from
    one thread at a time.  Options are eevp_ctx_options' fields; those left
    None take the library's defaults (batch 1, k 256, first_layer 0,
    interval 1, prune_layer = first_layer, full final layer, top-2 gap with
    threshold 0.9, constant schedule, patience 2).  Enumerations take their
    IntEnum, int or name ("rms", "js", "calm", ...).

    A context keeps its head alive (and open at the C level) until it is
    closed.  Use it as a context manager, or call close(); the garbage
    collector frees it otherwise."""

    def __init__(self, head: Head, n_layers: int, *, max_batch=None, k=None, first_layer=None,
                 interval=None, prune_layer=None, final_policy=None, criterion=None,
                 threshold=None, schedule=None, schedule_tau=None, max_length=None,
                 patience=None, flags=None, batch_invariant=None, exact_exit=None, screen=None,
                 always_ids=None, static_mode=None, static_ids=None, reprune_layer=None,
                 reprune_every=None, adaptive_mass=None, k_min=None, n_threads=None):
        self._handle = None
        self._lock = threading.Lock()
        self._head = None
        self._reg = None
        self._pending: List[BaseException] = []
        self._free = lib.eevp_ctx_free
        if not isinstance(head, Head):
            raise TypeError("head must be an eevp.Head, got %s" % type(head).__name__)
        o, keep = _ctx_options(n_layers, dict(
            max_batch=max_batch, k=k, first_layer=first_layer, interval=interval,
            prune_layer=prune_layer, final_policy=final_policy, criterion=criterion,
            threshold=threshold, schedule=schedule, schedule_tau=schedule_tau,
            max_length=max_length, patience=patience, flags=flags,
            batch_invariant=batch_invariant, exact_exit=exact_exit, screen=screen,
            always_ids=always_ids,
            static_mode=static_mode, static_ids=static_ids, reprune_layer=reprune_layer,
            reprune_every=reprune_every, adaptive_mass=adaptive_mass, k_min=k_min,
            n_threads=n_threads))
        hh = head._acquire()  # held for the context's whole life
        try:
            handle = c_void_p()
            msg = ctypes.create_string_buffer(512)
            rc = self._create(byref(handle), hh, o, msg)
            _check(rc, msg.value.decode(errors="replace"))
        except BaseException:
            head._release()
            raise
        self._head = head
        self._handle = handle.value
        self.n_layers = int(o.n_layers)
        self.max_batch = int(o.max_batch)
        self.options = {f: getattr(o, f) for f in ("n_layers",) + _CTX_FIELDS}
        self.options["n_always"], self.options["n_static"] = o.n_always, o.n_static
        del keep  # the library copied the id lists
        self._active = False
        self._gen = 0
        self._n_seq = 0
        self._running = bytearray()
        self._n_running = 0

    def _create(self, out, hh, o, msg) -> int:
        """The C creation call (a ShardContext makes a shard's)."""
        return lib.eevp_ctx_create(out, hh, byref(o), msg, len(msg))

    @staticmethod
    def memory_estimate(head: Head, n_layers: int, **options) -> int:
        """Bytes a context with these options on this head would allocate."""
        o, keep = _ctx_options(n_layers, options)
        out = c_int64()
        with head._use() as hh:
            _check(lib.eevp_ctx_memory_estimate(byref(out), hh, byref(o)),
                   "eevp_ctx_memory_estimate")
        return out.value

    # -- lifetime -----------------------------------------------------------
    _busy_msg = ("the context is in use: called from its own criterion callback, or from two "
                 "threads at once")
    _closed_msg = "the context is closed"

    def _fail(self, h, rc, what=""):
        """Raise for rc < 0 with the context's message."""
        if rc < 0:
            msg = lib.eevp_ctx_errmsg(h)
            msg = msg.decode(errors="replace") if msg else ""
            raise error_for(rc, msg or what)
        return rc

    def _raise_pending(self):
        if self._pending:
            exc = self._pending[0]
            del self._pending[:]
            raise exc

    def close(self) -> None:
        """Free the context (idempotent) and release its head.  An exception
        raised by the criterion's destroy() is re-raised here."""
        self._close(raise_pending=True)

    def _close(self, raise_pending):
        lock = getattr(self, "_lock", None)
        if lock is None or getattr(self, "_handle", None) is None:
            return
        if not lock.acquire(blocking=False):
            raise BusyError(EBUSY, "close() from the context's own callback, or while "
                                   "another thread uses it")
        try:
            h, self._handle = self._handle, None
            if h is not None:
                self._free(h)  # calls the criterion's destroy
            self._reg = None
            self._active = False
        finally:
            lock.release()
        head, self._head = self._head, None
        if head is not None:
            head._release()
        if raise_pending:
            self._raise_pending()
        else:
            del self._pending[:]

    @property
    def closed(self) -> bool:
        return self._handle is None

    @property
    def head(self) -> Head:
        return self._head

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self._close(raise_pending=False)
        except Exception:
            pass

    def __repr__(self):
        if self.closed:
            return "<eevp.Context closed>"
        return "<eevp.Context L=%d max_batch=%d k=%d>" % (self.n_layers, self.max_batch,
                                                          self.options["k"])

    # -- queries ------------------------------------------------------------
    @property
    def memory(self) -> int:
        with self._call() as h:
            return self._fail(h, int(lib.eevp_ctx_memory(h)))

    def layer_required(self, layer: int) -> bool:
        """Whether `layer` must be handed over in every step."""
        with self._call() as h:
            return bool(self._fail(h, lib.eevp_ctx_layer_required(h, _i32(layer, "layer"))))

    @property
    def required_layers(self) -> Tuple[int, ...]:
        """The layers to hand over in every step, increasing (they change
        with set_criterion)."""
        with self._call() as h:
            return tuple(l for l in range(self.n_layers)
                         if self._fail(h, lib.eevp_ctx_layer_required(h, l)))

    def threshold_at(self, t: int) -> float:
        """lambda(t), the threshold applied at generation index t."""
        out = c_float()
        with self._call() as h:
            self._fail(h, lib.eevp_ctx_threshold(h, _i32(t, "t"), byref(out)))
        return out.value

    def reset(self) -> None:
        """Abandon any step and forget every per-sequence state."""
        with self._call() as h:
            self._fail(h, lib.eevp_ctx_reset(h))
            self._after_abandon()

    # -- criteria -----------------------------------------------------------
    def set_criterion(self, criterion, *, name: Optional[str] = None,
                      needs_logits: Optional[bool] = None,
                      needs_prev_hidden: Optional[bool] = None) -> None:
        """Install a criterion written in Python: a CustomCriterion (or any
        object with decide(view), and optionally reset(seq), destroy(),
        name, needs_logits, needs_prev_hidden), or a plain function
        view -> confidence.  The keyword arguments override the object's
        attributes; logits are needed unless said otherwise.  Not during a
        step (StateError).  The context keeps the criterion alive until it
        is replaced or the context closed."""
        if hasattr(criterion, "decide"):
            decide = criterion.decide
            reset, destroy = _method(criterion, "reset"), _method(criterion, "destroy")
        elif callable(criterion):
            decide, reset, destroy = criterion, None, None
        else:
            raise TypeError("criterion must have a decide(view) method or be callable")
        if not callable(decide):
            raise TypeError("criterion.decide is not callable")
        if name is None:
            name = getattr(criterion, "name", None)
            if name is None and not hasattr(criterion, "decide"):
                name = getattr(criterion, "__name__", None)
        if needs_logits is None:
            needs_logits = getattr(criterion, "needs_logits", True)
        if needs_prev_hidden is None:
            needs_prev_hidden = getattr(criterion, "needs_prev_hidden", False)
        needs = (NEEDS_LOGITS if needs_logits else 0) | \
            (NEEDS_PREV_HIDDEN if needs_prev_hidden else 0)
        reg = _Registration(criterion, decide, reset, destroy, name, needs, self._pending)
        with self._call() as h:
            self._fail(h, lib.eevp_ctx_set_criterion(h, byref(reg.vtbl), None))
            self._reg = reg  # the library destroyed the previous one
        self._raise_pending()

    @property
    def criterion(self):
        """The Python criterion installed (as given), else the built-in
        Criterion chosen at creation."""
        if self._reg is not None:
            return self._reg.user
        return _enum_member(Criterion, self.options["criterion"])

    # -- the step -----------------------------------------------------------
    def step(self, n_seq: int = 1, positions: Optional[Sequence[int]] = None) -> "Step":
        """Begin a step for sequences 0 .. n_seq-1 and return it.  As a
        context manager the step ends on leaving the block (or is abandoned
        when the block raises)."""
        self.begin(n_seq, positions)
        return Step(self, self._gen, self._n_seq)

    def begin(self, n_seq: int = 1, positions: Optional[Sequence[int]] = None) -> None:
        """eevp_step_begin.  positions[s] is sequence s's generation index."""
        n = _i32(n_seq, "n_seq")
        paddr, plen, pkeep = _int32_array(positions, "positions")
        if positions is not None and plen != n:
            raise ValueError("positions has %d entries, n_seq is %d" % (plen, n))
        with self._call() as h:
            self._fail(h, lib.eevp_step_begin(h, n, paddr))
            self._active = True
            self._gen += 1
            self._n_seq = n
            self._running = bytearray(b"\x01") * n
            self._n_running = n
            if self._pending:  # a reset() callback raised: the call did not happen
                lib.eevp_step_abandon(h)
                self._after_abandon()
        self._raise_pending()

    def _layer_args(self, layer, hidden, row_seq):
        """The arguments of a layer call, checked: (layer, the hidden rows,
        the row map's address and the object keeping it alive)."""
        ly = _i32(layer, "layer")
        head = self._head
        if head is None:
            raise StateError(ESTATE, "the context is closed")
        x = _matrix(hidden, head.dim, "hidden")
        raddr, rlen, rkeep = _int32_array(row_seq, "row_seq")
        if row_seq is not None and rlen != x.rows:
            raise ValueError("row_seq has %d entries, hidden %d rows" % (rlen, x.rows))
        return ly, x, raddr, rkeep

    def layer(self, layer: int, hidden, row_seq: Optional[Sequence[int]] = None) -> List[Result]:
        """Hand over the raw hidden states after `layer` (eevp_step_layer):
        n_rows x d, one row per sequence (n_seq rows), or only the running
        sequences' rows (compacted, increasing order), or rows mapped by
        row_seq.  Returns the results of the sequences this call resolved,
        by sequence: exits, last-layer resolutions and per-sequence
        failures (reason ERROR, .error).  An exception raised by a Python
        criterion is re-raised after the call (the step stays in progress)."""
        ly, x, raddr, rkeep = self._layer_args(layer, hidden, row_seq)
        with self._call() as h:
            rc = lib.eevp_step_layer(h, ly, x.addr, x.ld, _i32(x.rows, "n_rows"), raddr)
            if rc < 0 and rc not in (ENONFINITE, EUSER, ECALLBACK):
                del self._pending[:]
                self._fail(h, rc)
            resolved = self._collect(h)
        self._raise_pending()
        return resolved

    def _collect(self, h) -> List[Result]:
        n = lib.eevp_step_n_running(h)
        if n < 0 or n >= self._n_running:
            return []
        out = []
        r = eevp_result()
        r.struct_size = ctypes.sizeof(eevp_result)
        for s in range(self._n_seq):
            if not self._running[s]:
                continue
            self._fail(h, lib.eevp_step_result(h, s, byref(r)))
            if r.reason != Reason.RUNNING:
                self._running[s] = 0
                out.append(self._result(s, r))
        self._n_running = n
        return out

    @staticmethod
    def _result(s, r) -> Result:
        return Result(s, _enum_member(Reason, r.reason), r.status, r.token, r.layer,
                      bool(r.pruned), r.confidence, r.threshold, r.pruned_token, r.set_size)

    @property
    def n_running(self) -> int:
        """Sequences of the current step still running (0 after end)."""
        with self._call() as h:
            return self._fail(h, int(lib.eevp_step_n_running(h)))

    @property
    def running(self) -> List[int]:
        """The sequence indices still running, increasing."""
        return [s for s in range(self._n_seq) if self._running[s]] if self._active else []

    @property
    def n_seq(self) -> int:
        return self._n_seq

    @property
    def in_step(self) -> bool:
        return self._active

    def result(self, seq: int) -> Result:
        """Sequence seq's result (also after end(), until the next begin)."""
        r = eevp_result()
        r.struct_size = ctypes.sizeof(eevp_result)
        with self._call() as h:
            self._fail(h, lib.eevp_step_result(h, _i32(seq, "seq"), byref(r)))
        return self._result(seq, r)

    def results(self) -> List[Result]:
        return [self.result(s) for s in range(self._n_seq)]

    def candidates(self, seq: int, capacity: Optional[int] = None, *, logits_out=None,
                   ids_out=None) -> Candidates:
        """The best min(capacity, n) candidates of a resolved sequence, in
        the order (n = K for a pruned decision, V for a full one; capacity
        None: all) -> Candidates(logits, ids), array.array('f') and int32
        array.array, or numpy arrays / views of logits_out and ids_out when
        those are given (both writable, float32 and int32)."""
        head = self._head
        if head is None:
            raise StateError(ESTATE, "the context is closed")
        cap = head.n_vocab if capacity is None else _i32(capacity, "capacity")
        if (logits_out is None) != (ids_out is None):
            raise ValueError("give both logits_out and ids_out, or neither")
        own = logits_out is None
        if own:
            logits_out = array.array("f", bytes(4 * max(cap, 0)))
            ids_out = array.array(_I32_CODE, bytes(4 * max(cap, 0)))
        la, ln = _vector(logits_out, "logits_out", writable=True) if cap > 0 else (None, 0)
        ia, inn = _vector(ids_out, "ids_out", writable=True, elem=_INT32) if cap > 0 else (None, 0)
        if cap > 0 and (ln < cap or inn < cap):
            raise ValueError("logits_out and ids_out must hold capacity (%d) values" % cap)
        n_out = c_int32()
        with self._call() as h:
            self._fail(h, lib.eevp_step_candidates(h, _i32(seq, "seq"), cap,
                                                   la.addr if la else None,
                                                   ia.addr if ia else None, byref(n_out)))
        n = n_out.value
        del la, ia  # the buffer exports, before the arrays are shrunk
        if own:
            del logits_out[n:]
            del ids_out[n:]
            return Candidates(logits_out, ids_out)
        return Candidates(logits_out[:n], ids_out[:n])

    def end(self) -> None:
        """End the step: every sequence must have a result (StateError
        otherwise, and the step stays in progress)."""
        with self._call() as h:
            self._fail(h, lib.eevp_step_end(h))
            self._active = False
            self._running = bytearray(self._n_seq)
            self._n_running = 0

    def abandon(self) -> None:
        """Drop the step in progress (nothing counted); a no-op without one,
        so an ended step's results stay readable."""
        with self._call() as h:
            self._fail(h, lib.eevp_step_abandon(h))
            if self._active:
                self._after_abandon()

    def _after_abandon(self):
        self._active = False
        self._gen += 1
        self._n_seq = 0
        self._running = bytearray()
        self._n_running = 0

    # -- statistics ---------------------------------------------------------
    def stats(self) -> Stats:
        st = eevp_stats()
        st.struct_size = ctypes.sizeof(eevp_stats)
        with self._call() as h:
            self._fail(h, lib.eevp_ctx_stats(h, byref(st)))
            hist = (c_int64 * self.n_layers)()
            self._fail(h, lib.eevp_ctx_exit_histogram(h, hist, self.n_layers))
        fields = {name: getattr(st, name) for name, _ in eevp_stats._fields_
                  if name != "struct_size"}
        return Stats(exit_histogram=tuple(hist), **fields)

    def exit_histogram(self) -> List[int]:
        """counts[l] = tokens resolved at layer l."""
        return list(self.stats().exit_histogram)

    def set_size_histogram(self, n: Optional[int] = None) -> List[int]:
        """counts[s] = pruned sets built of size s, for s < n (default: up
        to the largest set the options allow)."""
        if n is None:
            n = self.options["k"] + self.options["n_always"] + self.options["n_static"] + 1
        n = _i32(n, "n")
        hist = (c_int64 * max(n, 1))()
        with self._call() as h:
            self._fail(h, lib.eevp_ctx_set_size_histogram(h, hist, n))
        return list(hist)[:n]

    def reset_stats(self) -> None:
        with self._call() as h:
            self._fail(h, lib.eevp_ctx_stats_reset(h))


class Step:
    """One token for n_seq sequences: Context.step() begins it.  Its
    methods are the Context's, valid until the next step begins (or the
    context is reset); results stay readable after end()."""

    def __init__(self, ctx: Context, gen: int, n_seq: int):
        self.ctx = ctx
        self._gen = gen
        self.n_seq = n_seq

    def _live(self) -> Context:
        ctx = self.ctx
        if ctx._gen != self._gen:
            raise StateError(ESTATE, "this step is over: the context began another step, "
                                     "or was reset, or the step was abandoned")
        return ctx

    def layer(self, layer: int, hidden, row_seq=None) -> List[Result]:
        return self._live().layer(layer, hidden, row_seq)

    def result(self, seq: int) -> Result:
        return self._live().result(seq)

    def results(self) -> List[Result]:
        return self._live().results()

    def candidates(self, seq: int, capacity: Optional[int] = None, **kw) -> Candidates:
        return self._live().candidates(seq, capacity, **kw)

    @property
    def n_running(self) -> int:
        return self._live().n_running

    @property
    def running(self) -> List[int]:
        return self._live().running

    @property
    def active(self) -> bool:
        return self.ctx._gen == self._gen and self.ctx._active

    def end(self) -> None:
        self._live().end()

    def abandon(self) -> None:
        if self.ctx._gen == self._gen:
            self.ctx.abandon()

    def __enter__(self) -> "Step":
        return self

    def __exit__(self, et, ev, tb) -> bool:
        if not self.active or self.ctx.closed:
            return False
        if et is not None:
            self.ctx.abandon()
            return False
        try:
            self.ctx.end()
        except BaseException:
            self.ctx.abandon()
            raise
        return False
