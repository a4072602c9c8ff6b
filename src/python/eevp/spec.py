# SPDX-License-Identifier: MIT
"""Lossless early exit (include/eevp.h, eevp_spec_*): a Verifier collects
the tokens that early exits drafted, one round per sequence slot, and
verifies them all with the full head in one pass, so that the output is
exactly the full model's (greedy) or exactly distributed as it (sampling).
Also the values it returns (SpecResult, SpecStats)."""

from __future__ import annotations

import ctypes
import dataclasses
import operator
import threading
from ctypes import byref, c_int32, c_int64, c_void_p
from typing import List, Optional, Tuple

from ._arrays import _i32, _int, _int32_array, _matrix
from ._ffi import (EBUSY, EINVAL, ESTATE, OK, eevp_spec_options, eevp_spec_result,
                   eevp_spec_stats, lib)
from .context import Context, Step
from .errors import BusyError, EevpError, _check, error_for
from ._handles import _Closeable, _Exclusive
from .head import Head


@dataclasses.dataclass(frozen=True)
class SpecResult:
    """One slot's outcome of Verifier.verify (eevp_spec_result).

    n_accepted of the n_drafted drafts were accepted, and `token` follows
    them (the correction, or the bonus when all were accepted): `emitted`
    is the tokens to append, accepted drafts then `token`.  A slot that
    failed (status != OK: NaN or Inf in its rows) kept its round for a
    retry; its token is -1 and emitted is empty."""
    seq: int
    status: int
    n_drafted: int
    n_accepted: int
    token: int
    emitted: Tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def failed(self) -> bool:
        return self.status != OK

    @property
    def error(self) -> Optional[EevpError]:
        """The slot's own failure as an exception instance, else None."""
        if self.status == OK:
            return None
        return error_for(self.status, "slot %d: verification failed, its round is kept"
                         % self.seq)


@dataclasses.dataclass(frozen=True)
class SpecStats:
    """Verifier statistics since creation or the last reset_stats()
    (eevp_spec_stats), with the acceptance per exit layer of the drafts."""
    n_layers: int
    rounds: int
    drafted: int
    accepted: int
    emitted: int
    verify_rows: int
    failed: int
    layer_drafted: Tuple[int, ...] = ()
    layer_accepted: Tuple[int, ...] = ()

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def mean_accepted(self) -> float:
        """Drafts accepted per round (0 without rounds)."""
        return self.accepted / self.rounds if self.rounds else 0.0

    @property
    def acceptance_rate(self) -> float:
        """accepted / drafted (0 without drafts)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_round(self) -> float:
        """emitted / rounds: tokens per full-head pass (0 without rounds)."""
        return self.emitted / self.rounds if self.rounds else 0.0


_SPEC_FIELDS = ("max_batch", "max_draft", "max_set", "n_layers", "temperature", "top_k",
                "top_p", "seed")


def _spec_options(n_vocab, kw):
    o = eevp_spec_options()
    _check(lib.eevp_spec_options_init(byref(o)))
    for name, value in kw.items():
        if value is None:
            continue  # the library's default
        if name in ("temperature", "top_p"):
            value = float(value)
        elif name == "seed":
            value = _int(value, name, 0, 2**64 - 1)
        else:
            value = _i32(value, name)
        setattr(o, name, value)
    if kw.get("max_set") is None and o.max_set > n_vocab:
        o.max_set = n_vocab  # the default (256) fitted to a smaller head
    return o


def _seq_list(seqs) -> List[int]:
    try:
        return [_i32(operator.index(seqs), "seqs")]
    except TypeError:
        pass
    try:
        return [_i32(s, "seqs") for s in seqs]
    except TypeError:
        raise TypeError("seqs must be a slot or a sequence of slots, got %s"
                        % type(seqs).__name__) from None


class Verifier(_Exclusive, _Closeable):
    """Verifies drafted tokens with the full head (eevp_spec_*): one round
    per sequence slot (0 .. max_batch-1) at a time.

    Options are eevp_spec_options' fields; those left None take the
    library's defaults (max_batch 1, max_draft 4, max_set 256 or V when the
    head is smaller, n_layers 0, greedy: temperature 0, no top_k / top_p,
    seed 0).  temperature > 0 verifies by speculative sampling at that
    temperature, after top_k / top_p.

    A round: round(seq, key, position) from t_0, the last token emitted;
    drafts t_1 .. t_n from draft(seq, ctx, ctx_seq) (a drafting context's
    step) or add_draft(seq, token); then verify([seq, ...], hidden) with
    n + 1 raw final-layer hidden rows per slot, row i at the position whose
    input is t_i.  A verifier keeps its head alive (and open at the C level)
    until it is closed; use it from one thread at a time (BusyError
    otherwise)."""

    def __init__(self, head: Head, *, max_batch=None, max_draft=None, max_set=None,
                 n_layers=None, temperature=None, top_k=None, top_p=None, seed=None):
        self._handle = None
        self._lock = threading.Lock()
        self._head = None
        self._free = lib.eevp_spec_free
        if not isinstance(head, Head):
            raise TypeError("head must be an eevp.Head, got %s" % type(head).__name__)
        o = _spec_options(head.n_vocab, dict(
            max_batch=max_batch, max_draft=max_draft, max_set=max_set, n_layers=n_layers,
            temperature=temperature, top_k=top_k, top_p=top_p, seed=seed))
        hh = head._acquire()  # held for the verifier's whole life
        try:
            handle = c_void_p()
            msg = ctypes.create_string_buffer(512)
            rc = lib.eevp_spec_create(byref(handle), hh, byref(o), msg, len(msg))
            _check(rc, msg.value.decode(errors="replace"))
        except BaseException:
            head._release()
            raise
        self._head = head
        self._handle = handle.value
        self._dim = head.dim
        self.options = {f: getattr(o, f) for f in _SPEC_FIELDS}
        self.max_batch = int(o.max_batch)
        self.max_draft = int(o.max_draft)
        self.n_layers = int(o.n_layers)
        self.temperature = float(o.temperature)
        # Each slot's drafts in its round (None: no round), for SpecResult.emitted.
        self._rounds: List[Optional[List[int]]] = [None] * self.max_batch

    # -- lifetime -----------------------------------------------------------
    _busy_msg = "the verifier is in use by another thread"
    _closed_msg = "the verifier is closed"

    @staticmethod
    def _fail(h, rc, what=""):
        """Raise for rc < 0 with the verifier's message."""
        if rc < 0:
            msg = lib.eevp_spec_errmsg(h)
            msg = msg.decode(errors="replace") if msg else ""
            raise error_for(rc, msg or what)
        return rc

    def close(self) -> None:
        """Free the verifier (idempotent) and release its head."""
        lock = getattr(self, "_lock", None)
        if lock is None or getattr(self, "_handle", None) is None:
            return
        if not lock.acquire(blocking=False):
            raise BusyError(EBUSY, "close() while another thread uses the verifier")
        try:
            h, self._handle = self._handle, None
            if h is not None:
                self._free(h)
        finally:
            lock.release()
        head, self._head = self._head, None
        if head is not None:
            head._release()

    @property
    def closed(self) -> bool:
        return self._handle is None

    @property
    def head(self) -> Head:
        return self._head

    def __repr__(self):
        if self.closed:
            return "<eevp.Verifier closed>"
        return "<eevp.Verifier max_batch=%d max_draft=%d %s>" % (
            self.max_batch, self.max_draft,
            "greedy" if self.temperature == 0.0 else "T=%g" % self.temperature)

    @property
    def memory(self) -> int:
        """Bytes the verifier allocated."""
        with self._call() as h:
            return self._fail(h, int(lib.eevp_spec_memory(h)))

    # -- rounds and drafts --------------------------------------------------
    def round(self, seq: int, key: int, position: int) -> None:
        """Start a round for slot seq, dropping any drafts it held: t_0 (the
        last token emitted) sits at `position` (>= 0), draft i at position
        + i.  key (0 .. 2**64-1) names the sequence for the random numbers
        of sampling: keep one per sequence."""
        s = _i32(seq, "seq")
        k = _int(key, "key", 0, 2**64 - 1)
        p = _i32(position, "position")
        with self._call() as h:
            self._fail(h, lib.eevp_spec_round(h, s, k, p))
            self._rounds[s] = []

    def draft(self, seq: int, ctx, ctx_seq: int) -> Tuple[Optional[int], bool]:
        """Take slot seq's next draft from sequence ctx_seq of a drafting
        context's current step (a Context or its Step), which must hold
        that sequence's result -> (token, more).  token is the draft when
        the sequence exited confidently (the result's token when greedy,
        else drawn from its candidates at the verifier's temperature), None
        when it reached the context's last layer: no draft, verify now.
        more says whether another draft fits in the round."""
        if isinstance(ctx, Step):
            ctx = ctx._live()
        if not isinstance(ctx, Context):
            raise TypeError("ctx must be an eevp.Context or Step, got %s" % type(ctx).__name__)
        s = _i32(seq, "seq")
        cs = _i32(ctx_seq, "ctx_seq")
        tok, more = c_int32(-1), c_int32(0)
        with self._call() as h, ctx._call() as ch:
            self._fail(h, lib.eevp_spec_draft(h, s, ch, cs, byref(tok), byref(more)))
            if tok.value >= 0:
                self._rounds[s].append(tok.value)
        return (tok.value if tok.value >= 0 else None), bool(more.value)

    def add_draft(self, seq: int, token: int, layer: int = -1) -> None:
        """Append a draft chosen by the host (a point mass: exact when it was
        drafted greedily).  layer: where it exited, for the statistics
        (-1: unknown)."""
        s = _i32(seq, "seq")
        t = _i32(token, "token")
        ly = _i32(layer, "layer")
        with self._call() as h:
            self._fail(h, lib.eevp_spec_add_draft(h, s, t, ly))
            self._rounds[s].append(t)

    def _n_drafts(self, h, s) -> int:
        n = int(lib.eevp_spec_n_drafts(h, s))
        if n < 0:
            if n == ESTATE:
                raise error_for(n, "slot %d has no round (call round() first)" % s)
            raise error_for(n, "slot %d outside 0..%d" % (s, self.max_batch - 1))
        return n

    def n_drafts(self, seq: int) -> int:
        """Drafts slot seq holds in its round (StateError without a round)."""
        s = _i32(seq, "seq")
        with self._call() as h:
            return self._n_drafts(h, s)

    def drafts(self, seq: int) -> Tuple[int, ...]:
        """The drafts t_1 .. t_n of slot seq's round (StateError without one)."""
        s = _i32(seq, "seq")
        with self._call() as h:
            self._n_drafts(h, s)
            return tuple(self._rounds[s])

    # -- verification -------------------------------------------------------
    def verify(self, seqs, hidden) -> List[SpecResult]:
        """Verify the rounds of the slots seqs (one slot, or distinct slots)
        at once -> one SpecResult per slot, in the order of seqs.  hidden
        holds, slot after slot, n + 1 raw final-layer hidden rows for a slot
        with n drafts (d columns; any float32 array or buffer, converted
        when needed).  A slot whose rows hold NaN or Inf fails on its own
        (status ENONFINITE, round kept, no exception); every other slot's
        round ends.  A bad argument raises and changes nothing."""
        seq_list = _seq_list(seqs)
        n = len(seq_list)
        if n == 0:
            raise ValueError("seqs is empty")
        seen = set()
        for s in seq_list:
            if s in seen:
                raise error_for(EINVAL, "seqs lists slot %d twice" % s)
            seen.add(s)
        x = _matrix(hidden, self._dim, "hidden")
        addr, _, keep = _int32_array(seq_list, "seqs")
        results = (eevp_spec_result * n)()
        for r in results:
            r.struct_size = ctypes.sizeof(eevp_spec_result)
        with self._call() as h:
            need = sum(self._n_drafts(h, s) + 1 for s in seq_list)
            if x.rows != need:
                raise ValueError("hidden has %d rows; the rounds of seqs need %d (n_drafts + 1 "
                                 "per slot, slot after slot)" % (x.rows, need))
            self._fail(h, lib.eevp_spec_verify(h, n, addr, x.addr, x.ld, results))
            out = []
            for s, r in zip(seq_list, results):
                emitted = ()
                if r.status == OK:
                    emitted = tuple(self._rounds[s][:r.n_accepted]) + (r.token,)
                    self._rounds[s] = None
                out.append(SpecResult(s, r.status, r.n_drafted, r.n_accepted, r.token, emitted))
        del keep, x
        return out

    # -- statistics ---------------------------------------------------------
    def stats(self) -> SpecStats:
        st = eevp_spec_stats()
        st.struct_size = ctypes.sizeof(eevp_spec_stats)
        with self._call() as h:
            self._fail(h, lib.eevp_spec_stats_get(h, byref(st)))
            drafted, accepted = self._layer_stats(h)
        fields = {name: getattr(st, name) for name, _ in eevp_spec_stats._fields_
                  if name != "struct_size"}
        return SpecStats(layer_drafted=tuple(drafted), layer_accepted=tuple(accepted), **fields)

    def _layer_stats(self, h):
        n = self.n_layers
        d, a = (c_int64 * max(n, 1))(), (c_int64 * max(n, 1))()
        self._fail(h, lib.eevp_spec_layer_stats(h, d, a, n))
        return list(d)[:n], list(a)[:n]

    def layer_stats(self) -> Tuple[List[int], List[int]]:
        """(drafted, accepted): the drafts verified and accepted per exit
        layer, for the n_layers layers given at creation."""
        with self._call() as h:
            return self._layer_stats(h)

    def reset_stats(self) -> None:
        with self._call() as h:
            self._fail(h, lib.eevp_spec_stats_reset(h))
