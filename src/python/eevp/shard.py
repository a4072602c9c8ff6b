# SPDX-License-Identifier: MIT
"""Vocabulary-parallel heads (include/eevp.h, eevp_ctx_create_shard and
eevp_shard_*): P ranks each hold a block of rows of W; a ShardContext on
each rank turns every required layer into an exchange of records, which
the host merges across ranks (merge, merge_all: in any order or tree) and
hands back (absorb), so that every rank makes the decisions an unsharded
Context makes.  Also ShardStep, the step of a ShardContext."""

from __future__ import annotations

import ctypes
from ctypes import byref, c_int64
from typing import Callable, Iterable, List, Optional

from ._arrays import _Export, _i32, _i64
from ._ffi import (ECALLBACK, ENONFINITE, ERECORD, ESTATE, EUSER, OK, eevp_shard_options, lib)
from .context import Context, Result, Step
from .errors import EevpError, StateError, _check, error_for
from .head import Head


# --------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------

def _bytes_arg(obj, name: str, writable: bool = False):
    """(address, length in bytes, what keeps the memory) of a bytes-like
    object: bytes, bytearray, memoryview, array.array, a numpy array, ...
    A non-contiguous input is copied; an output (writable) must be a
    contiguous writable buffer."""
    if isinstance(obj, str):
        raise TypeError("%s: expected bytes or a buffer, got str" % name)
    try:
        mv = memoryview(obj)
    except TypeError:
        raise TypeError("%s: expected bytes or a buffer, got %s" % (name, type(obj).__name__)) \
            from None
    if writable and mv.readonly:
        raise TypeError("%s is read-only: pass a bytearray (or another writable buffer)" % name)
    if not mv.c_contiguous:
        if writable:
            raise ValueError("%s is not contiguous" % name)
        obj = mv.tobytes()
        mv = memoryview(obj)
    n = mv.nbytes
    exp = _Export(obj, writable)
    return exp.addr, n, exp


def merge(acc, rec) -> bool:
    """Merge record `rec` into record `acc` in place (eevp_shard_merge).

    acc is a writable buffer (a bytearray) holding a record; rec any
    bytes-like object.  The merge is exactly associative and commutative:
    any order or tree over the same records gives the same bytes.  Records
    come from other processes and are checked: a malformed or truncated one
    (a rec of another length than acc included), another format version or
    shape, records of another step, layer, configuration or hidden states,
    a shard filled twice, turn acc into an error record, which stays one
    through later merges and which ShardContext.absorb reports
    (RecordError).  Returns True when acc holds a merged record, False when
    it holds an error record.  Raises only for arguments that are no
    records at all (not a buffer: TypeError; acc shorter than a record's
    header: OutOfRange), with acc unchanged."""
    aaddr, an, akeep = _bytes_arg(acc, "acc", writable=True)
    raddr, rn, rkeep = _bytes_arg(rec, "rec")
    if rn != an:
        # Read as a record of acc's size it would be truncated or padded:
        # the library sees a malformed record (no valid record is empty).
        rkeep = ctypes.create_string_buffer(max(an, 1))
        raddr = ctypes.addressof(rkeep)
    rc = lib.eevp_shard_merge(aaddr, raddr, an)
    del akeep, rkeep
    if rc == OK:
        return True
    if rc == ERECORD:
        return False
    raise error_for(rc, "eevp_shard_merge: %d bytes are no record" % an)


def merge_all(records: Iterable) -> bytes:
    """The merge of records (any iterable of bytes-like objects, at least
    one), in the order given: a copy of the first, then merge() of each
    other into it.  What `comm.allgather(record)` returns gives the same
    bytes on every rank.  An error record when any record is bad (absorb
    raises RecordError); never raises for bad record contents."""
    it = iter(records)
    try:
        first = next(it)
    except StopIteration:
        raise ValueError("merge_all: no records") from None
    if isinstance(first, str):
        raise TypeError("records: expected bytes or buffers, got str")
    try:
        acc = bytearray(memoryview(first).tobytes())
    except TypeError:
        raise TypeError("records: expected bytes or buffers, got %s"
                        % type(first).__name__) from None
    for rec in it:
        merge(acc, rec)
    return bytes(acc)


# --------------------------------------------------------------------------
# ShardContext and ShardStep
# --------------------------------------------------------------------------

class ShardContext(Context):
    """A context on one shard of a vocabulary-parallel head
    (eevp_ctx_create_shard).

    Each of P ranks creates one on its own shard head: a Head over a block
    of consecutive rows of the whole W, with vocab_offset = the block's
    first row; the blocks tile [0, total_vocab) in shard-index order and
    may differ in size.  Every rank passes the same context options (those
    of Context), the same shard options except shard_index, the same
    hidden states, and a head with the same transform (norm, eps, scale,
    soft-cap) and kernel set.  top_k: the candidates a full-vocabulary
    summary carries (0: max(k, 2)).

    A required layer is an exchange: layer() returns this rank's record
    (bytes), which every rank merges with all the others' of the same
    exchange (merge_all over an allgather, or an allreduce with merge as
    its operation), and hands to absorb(), which returns the next record
    when the decision needs a second exchange at that layer (exact-token
    exits), else None; with a hidden-state criterion (saturation) layer()
    returns a record only when some sequence exits.  exchange() runs that loop with a
    function doing the cross-rank merge.  Everything else (step, results,
    candidates, statistics, criteria, thresholds) works as on a Context,
    and every rank reads the same results.  Options that records cannot
    carry are refused at creation (InvalidArgument): always-included and
    static ids, adaptive K, screen, the JS criterion without pruning or
    with re-pruning."""

    def __init__(self, head: Head, n_layers: int, *, total_vocab: int, shard_index: int = 0,
                 n_shards: int = 1, top_k: int = 0, **options):
        so = eevp_shard_options()
        _check(lib.eevp_shard_options_init(byref(so)))
        so.shard_index = _i32(shard_index, "shard_index")
        so.n_shards = _i32(n_shards, "n_shards")
        so.top_k = _i32(top_k, "top_k")
        so.total_vocab = _i64(total_vocab, "total_vocab")
        self._shard_o = so
        self._rec = None           # the record buffer, record_capacity bytes
        self._exchanging = False   # an exchange waits for its merged record
        self._resolved: List[Result] = []
        self._deferred: List[BaseException] = []
        super().__init__(head, n_layers, **options)
        self.shard_index = int(so.shard_index)
        self.n_shards = int(so.n_shards)
        self.total_vocab = int(so.total_vocab)
        self.shard_options = {f: getattr(so, f) for f, _ in eevp_shard_options._fields_
                              if f != "struct_size"}

    def _create(self, out, hh, o, msg) -> int:
        return lib.eevp_ctx_create_shard(out, hh, byref(o), byref(self._shard_o), msg, len(msg))

    @staticmethod
    def memory_estimate(head: Head, n_layers: int, **options) -> int:
        """Not available for a shard context (the library has no estimate
        for one): create it and read .memory."""
        raise NotImplementedError("the library estimates unsharded contexts only "
                                  "(eevp_ctx_memory_estimate): create the ShardContext and "
                                  "read .memory")

    def __repr__(self):
        if self.closed:
            return "<eevp.ShardContext closed>"
        return "<eevp.ShardContext shard %d/%d rows [%d, %d) of %d L=%d max_batch=%d k=%d>" % (
            self.shard_index, self.n_shards, self._head.vocab_offset,
            self._head.vocab_offset + self._head.n_vocab, self.total_vocab, self.n_layers,
            self.max_batch, self.options["k"])

    # -- queries ------------------------------------------------------------
    @property
    def record_capacity(self) -> int:
        """Bytes of the largest record this context can produce (a full
        summary of max_batch sequences)."""
        with self._call() as h:
            return self._fail(h, int(lib.eevp_shard_record_capacity(h)))

    @property
    def in_exchange(self) -> bool:
        """Whether an exchange waits for its merged record (absorb)."""
        return self._exchanging

    @property
    def resolved(self) -> List[Result]:
        """The results of the sequences resolved by the last layer() and
        the absorb() calls after it (what Context.layer returns)."""
        return list(self._resolved)

    def _buffer(self, h):
        if self._rec is None:
            cap = self._fail(h, int(lib.eevp_shard_record_capacity(h)))
            self._rec = ctypes.create_string_buffer(max(cap, 1))
        return self._rec

    def _finish_call(self, rec: Optional[bytes], error: Optional[EevpError]):
        """After a C call that ran: the exceptions raised by Python callbacks
        (and a record error) wait while an exchange is pending, so that this
        rank still sends its records; they are raised when it is over."""
        errs = ([error] if error is not None else []) + self._deferred + self._pending
        self._deferred = []
        del self._pending[:]
        self._exchanging = rec is not None
        if self._exchanging:
            self._deferred = errs
        elif errs:
            raise errs[0]
        return rec

    # -- the step -----------------------------------------------------------
    def step(self, n_seq: int = 1, positions=None) -> "ShardStep":
        """Begin a step for sequences 0 .. n_seq-1 and return it (see
        Context.step)."""
        self.begin(n_seq, positions)
        return ShardStep(self, self._gen, self._n_seq)

    def begin(self, n_seq: int = 1, positions=None) -> None:
        super().begin(n_seq, positions)
        self._exchanging = False
        self._deferred = []
        self._resolved = []

    def end(self) -> None:
        """End the step (see Context.end); StateError while an exchange
        waits for its merged record, which may still change results (an
        exact-token exit's second exchange)."""
        if self._exchanging:
            raise StateError(ESTATE, "an exchange is pending: hand its merged record to "
                                     "absorb() first")
        super().end()

    def _after_abandon(self):
        super()._after_abandon()
        self._exchanging = False
        self._deferred = []
        self._resolved = []

    def layer(self, layer: int, hidden, row_seq=None) -> Optional[bytes]:
        """Hand over the raw hidden states after `layer` (eevp_shard_layer;
        rows as for Context.layer, the same on every rank) -> this rank's
        record of the layer's exchange (bytes), or None when there is none
        (the layer is not required, or was decided without an exchange).
        Merge the record with every other rank's and pass the result to
        absorb() before anything else is done with the context.  Sequences
        whose rows hold NaN or Inf fail here, on their own (see
        .resolved)."""
        ly, x, raddr, rkeep = self._layer_args(layer, hidden, row_seq)
        size = c_int64(0)
        with self._call() as h:
            buf = self._buffer(h)
            rc = lib.eevp_shard_layer(h, ly, x.addr, x.ld, _i32(x.rows, "n_rows"), raddr, buf,
                                      len(buf), byref(size))
            if rc < 0 and rc not in (ENONFINITE, EUSER, ECALLBACK):
                del self._pending[:]
                self._fail(h, rc)
            self._resolved = self._collect(h)
            rec = ctypes.string_at(buf, size.value) if size.value > 0 else None
        del x, rkeep
        return self._finish_call(rec, None)

    def absorb(self, merged) -> Optional[bytes]:
        """Hand the merged record of the pending exchange back
        (eevp_shard_absorb): every rank then makes the same decisions.
        Returns the record of a second exchange at the same layer, to be
        merged and absorbed like the first, or None when the layer is done.

        A merged record that is an error record, is malformed, lacks a
        shard, or disagrees with this rank's own (step, layer,
        configuration, hidden states) finishes the exchange's sequences
        with reason ERROR and status ERECORD and raises RecordError (the
        step goes on: end() it, or abandon it).  A record of another size
        than the exchange's raises OutOfRange and changes nothing; so does
        a call without a pending exchange (StateError)."""
        addr, n, keep = _bytes_arg(merged, "merged")
        nxt = c_int64(0)
        error = None
        with self._call() as h:
            buf = self._buffer(h)
            rc = lib.eevp_shard_absorb(h, addr, n, buf, len(buf), byref(nxt))
            if rc < 0 and rc not in (ERECORD, ENONFINITE, EUSER, ECALLBACK):
                self._fail(h, rc)  # nothing changed: the exchange still waits
            if rc == ERECORD:
                msg = lib.eevp_ctx_errmsg(h)
                error = error_for(rc, msg.decode(errors="replace") if msg else "")
            self._resolved += self._collect(h)
            rec = ctypes.string_at(buf, nxt.value) if nxt.value > 0 else None
        del keep
        return self._finish_call(rec, error)

    def exchange(self, layer: int, hidden, allmerge: Callable[[bytes], object],
                 row_seq=None) -> List[Result]:
        """layer(), then as long as there is a record: absorb(allmerge(record)).
        allmerge takes this rank's record and returns the merge of every
        rank's record of the same exchange, e.g. with mpi4py
        `lambda rec: eevp.merge_all(comm.allgather(rec))`.  Returns the
        results of the sequences resolved at this layer, as Context.layer."""
        rec = self.layer(layer, hidden, row_seq)
        while rec is not None:
            rec = self.absorb(allmerge(rec))
        return list(self._resolved)

    def candidates(self, seq: int, capacity: Optional[int] = None, **kw):
        """As Context.candidates (capacity None: total_vocab, as an
        unsharded context's V).  A full-vocabulary decision on a shard
        context has the merged summary's top_k candidates, not V."""
        if capacity is None:
            capacity = self.total_vocab
        return super().candidates(seq, capacity, **kw)


class ShardStep(Step):
    """The step of a ShardContext (ShardContext.step()): its layer() returns
    a record, absorb() and exchange() complete the exchange."""

    def layer(self, layer: int, hidden, row_seq=None) -> Optional[bytes]:
        return self._live().layer(layer, hidden, row_seq)

    def absorb(self, merged) -> Optional[bytes]:
        return self._live().absorb(merged)

    def exchange(self, layer: int, hidden, allmerge, row_seq=None) -> List[Result]:
        return self._live().exchange(layer, hidden, allmerge, row_seq)

    @property
    def resolved(self) -> List[Result]:
        return self._live().resolved

    @property
    def in_exchange(self) -> bool:
        return self._live().in_exchange
