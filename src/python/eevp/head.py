# SPDX-License-Identifier: MIT
"""The LM head (Head): its creation from borrowed or copied arrays, its
lifetime rules, and the kernels that run on it (logits, gather,
pruned_logits, screen), plus the free-standing top-k (topk)."""

from __future__ import annotations

import ctypes
import threading
from ctypes import POINTER, byref, c_float, c_void_p
from typing import Optional

from ._arrays import (_FLOAT, _HALF, _INT32, _enum, _enum_member, _format_of, _i32, _i64,
                      _int32_array, _matrix, _new_float, _new_int32, _vector, _Workspace)
from ._ffi import ESTATE, HEAD_COPY, HEAD_NO_SIMD, Norm, Weight, eevp_head_options, lib
from ._handles import _Closeable
from .errors import StateError, _check

class Head(_Closeable):
    """The LM head (unembedding), V x d, immutable; share it between threads.

    weights: a float32 matrix V x d (numpy, or a buffer; a flat buffer needs
    `dim`).  A numpy row stride that is a multiple of the element size is
    passed as the row stride, without a copy.  By default W, the norm
    vectors and the logit bias are borrowed: the head reads them in place
    and keeps the Python objects alive (and, for array.array or bytearray,
    exported, so they cannot be resized) until it is freed; do not change
    them meanwhile.  With copy=True the library copies them and the objects
    are released at once (other dtypes are then converted to float32 first).

    Half-precision W: a float16 numpy array (or buffer of format 'e') is
    taken as Weight.F16; bfloat16 goes as a uint16 array with
    weight_type="bf16".  The head then never holds an fp32 copy of W.
    screen_mult (issue 4) is passed through as is.
    """

    def __init__(self, weights, *, dim: Optional[int] = None, n_vocab: Optional[int] = None,
                 row_stride: Optional[int] = None, norm="none", norm_eps: float = 1e-6,
                 norm_weight=None, norm_bias=None, logit_bias=None, logit_scale: float = 1.0,
                 softcap: float = 0.0, vocab_offset: int = 0, copy: bool = False,
                 simd: bool = True, weight_type=None, screen_mult: Optional[int] = None):
        self._handle = None
        self._closed = True
        self._users = 0
        self._lock = threading.Lock()
        self._keep = ()
        self._free = lib.eevp_head_free

        conv = bool(copy)
        if row_stride is not None and dim is None:
            raise ValueError("row_stride needs dim")
        cols = None if row_stride is not None else (None if dim is None else _i64(dim, "dim"))
        if weight_type is None:
            fmt = _format_of(weights) or ""
            wt = Weight.F16 if fmt.lstrip("<>=@|") in ("f2", "e") else Weight.F32
        else:
            wt = _enum(weight_type, Weight, "weight_type")
        welem = _FLOAT if wt == Weight.F32 else _HALF
        w = _matrix(weights, cols, "weights", convert=conv, elem=welem)
        if row_stride is not None:
            # A flat buffer of rows of `dim` floats every `row_stride` floats.
            stride = _i64(row_stride, "row_stride")
            n_all = w.rows * w.cols if (w.rows == 1 or w.ld == w.cols) else None
            if n_all is None:
                raise ValueError("weights: with row_stride, pass a flat buffer")
            if n_vocab is None:
                if stride < dim:
                    raise ValueError("row_stride %d is smaller than dim %d" % (stride, dim))
                n_vocab = (n_all - dim) // stride + 1
            nv = _i64(n_vocab, "n_vocab")
            if nv >= 1 and (nv - 1) * stride + dim > n_all:
                raise ValueError("weights: %d floats, but %d rows of stride %d need %d"
                                 % (n_all, nv, stride, (nv - 1) * stride + dim))
            v_rows, d, ld = nv, _i64(dim, "dim"), stride
        else:
            v_rows, d, ld = w.rows, w.cols, w.ld
            if n_vocab is not None and _i64(n_vocab, "n_vocab") != v_rows:
                raise ValueError("weights has %d rows, but n_vocab = %d" % (v_rows, n_vocab))
        if w.ndim == 1 and dim is None:
            raise ValueError("weights is flat: give dim (and n_vocab or row_stride if needed)")
        keep = [w]

        o = eevp_head_options()
        _check(lib.eevp_head_options_init(byref(o)))
        o.flags = (HEAD_COPY if copy else 0) | (0 if simd else HEAD_NO_SIMD)
        o.n_vocab = _i64(v_rows, "n_vocab")
        o.dim = _i64(d, "dim")
        o.row_stride = _i64(ld, "row_stride")
        if wt == Weight.F32:
            o.weights = ctypes.cast(c_void_p(w.addr), POINTER(c_float))
        else:
            o.weight_type = wt
            o.weights_half = ctypes.cast(c_void_p(w.addr), POINTER(ctypes.c_uint16))
        if screen_mult is not None:
            o.screen_mult = _i32(screen_mult, "screen_mult")
        o.vocab_offset = _i64(vocab_offset, "vocab_offset")
        o.norm = _enum(norm, Norm, "norm")
        o.norm_eps = float(norm_eps)
        for field, value, length in (("norm_weight", norm_weight, d),
                                     ("norm_bias", norm_bias, d),
                                     ("logit_bias", logit_bias, v_rows)):
            if value is not None:
                m, _ = _vector(value, field, length, convert=conv)
                setattr(o, field, ctypes.cast(c_void_p(m.addr), POINTER(c_float)))
                keep.append(m)
        o.logit_scale = float(logit_scale)
        o.softcap = float(softcap)

        handle = c_void_p()
        msg = ctypes.create_string_buffer(512)
        rc = lib.eevp_head_create(byref(handle), byref(o), msg, len(msg))
        _check(rc, msg.value.decode(errors="replace"))
        self._handle = handle.value
        self._closed = False
        self._keep = () if copy else tuple(keep)
        self.n_vocab = int(lib.eevp_head_n_vocab(self._handle))
        self.dim = int(lib.eevp_head_dim(self._handle))
        self.vocab_offset = int(lib.eevp_head_vocab_offset(self._handle))
        self.borrowed = not copy
        self.weight_type = _enum_member(Weight, wt)

    # -- lifetime: the C head is freed when the Head is closed and nothing
    #    (context, kernel call in flight) uses it any more.
    def _acquire(self):
        with self._lock:
            if self._closed:
                raise StateError(ESTATE, "the head is closed")
            self._users += 1
            return self._handle

    def _release(self):
        with self._lock:
            self._users -= 1
            h = self._take_if_unused()
        self._destroy(h)

    def _take_if_unused(self):
        if self._closed and self._users == 0 and self._handle is not None:
            h, self._handle = self._handle, None
            return h
        return None

    def _destroy(self, h):
        if h is not None:
            self._free(h)
            self._keep = ()

    def close(self) -> None:
        """Release the head (idempotent).  Contexts still open on it keep the
        C head (and the borrowed buffers) alive until they close; the Head
        itself refuses new contexts and kernel calls from now on."""
        lock = getattr(self, "_lock", None)
        if lock is None:
            return
        with lock:
            self._closed = True
            h = self._take_if_unused()
        self._destroy(h)

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self):
        state = "closed" if self._closed else "V=%d d=%d offset=%d" % (
            self.n_vocab, self.dim, self.vocab_offset)
        return "<eevp.Head %s>" % state

    class _Use:
        __slots__ = ("head", "handle")

        def __init__(self, head):
            self.head = head

        def __enter__(self):
            self.handle = self.head._acquire()
            return self.handle

        def __exit__(self, *exc):
            self.head._release()

    def _use(self):
        return Head._Use(self)

    @property
    def memory(self) -> int:
        """Bytes the head allocated (its struct, plus copies under copy=True)."""
        with self._use() as h:
            return _check(int(lib.eevp_head_memory(h)))

    def workspace_size(self, n: int) -> int:
        """Bytes of workspace the logit kernels need for n hidden states."""
        with self._use() as h:
            return _check(int(lib.eevp_head_workspace_size(h, _i32(n, "n"))))

    # -- kernels ------------------------------------------------------------
    def logits(self, hidden, out=None):
        """Full logits of n raw hidden states (n x d) -> n x V (local row
        order: column v is token v + vocab_offset).  Returns `out` when
        given, else a new float32 numpy array when `hidden` is numpy, else an
        array.array('f') of n*V values."""
        with self._use() as h:
            x = _matrix(hidden, self.dim, "hidden")
            if out is None:
                out = _new_float((x.rows, self.n_vocab), x.numpy)
            o = _matrix(out, self.n_vocab, "out", writable=True)
            if o.rows != x.rows:
                raise ValueError("out has %d rows, hidden %d" % (o.rows, x.rows))
            ws = _Workspace(_check(int(lib.eevp_head_workspace_size(h, _i32(x.rows, "n")))))
            _check(lib.eevp_head_logits(h, x.rows, x.addr, x.ld, o.addr, o.ld, ws.addr),
                   "eevp_head_logits")
        return out

    def gather(self, ids, out=None, *, with_bias: bool = False):
        """Rows of W for global token ids -> k x d (and the k logit biases
        when with_bias, 0 without a bias)."""
        with self._use() as h:
            addr, k, keep = _int32_array(ids, "ids")
            if k == 0:
                raise ValueError("ids is empty")
            np_out = keep.numpy
            if out is None:
                out = _new_float((k, self.dim), np_out)
            o = _matrix(out, self.dim, "out", writable=True)
            if o.rows != k:
                raise ValueError("out has %d rows, expected %d" % (o.rows, k))
            bias = _new_float((k,), np_out) if with_bias else None
            b = _vector(bias, "bias_out", k, writable=True)[0] if with_bias else None
            _check(lib.eevp_head_gather(h, addr, k, o.addr, o.ld, b.addr if b else None),
                   "eevp_head_gather")
        return (out, bias) if with_bias else out

    def pruned_logits(self, rows, hidden, bias=None, out=None):
        """Logits over k gathered rows (k x d, with their k biases or None)
        for n raw hidden states (n x d) -> n x k, with the head's norm,
        scale and soft-cap."""
        with self._use() as h:
            r = _matrix(rows, self.dim, "rows")
            k = r.rows
            b = _vector(bias, "bias", k)[0] if bias is not None else None
            x = _matrix(hidden, self.dim, "hidden")
            if out is None:
                out = _new_float((x.rows, k), x.numpy)
            o = _matrix(out, k, "out", writable=True)
            if o.rows != x.rows:
                raise ValueError("out has %d rows, hidden %d" % (o.rows, x.rows))
            ws = _Workspace(_check(int(lib.eevp_head_workspace_size(h, _i32(x.rows, "n")))))
            _check(lib.eevp_head_pruned_logits(h, _i32(k, "k"), r.addr, r.ld,
                                               b.addr if b else None, x.rows, x.addr, x.ld,
                                               o.addr, o.ld, ws.addr),
                   "eevp_head_pruned_logits")
        return out

    def screen(self, hidden, k: int, *, logits: bool = True):
        """Approximate top-k for one raw hidden state on a head created with
        screen_mult >= 2 (the head's int8 copy screens screen_mult*k rows,
        whose exact logits pick the k) -> (ids, logits), or ids alone with
        logits=False.  numpy in, numpy out; otherwise array.array."""
        with self._use() as h:
            x, n = _vector(hidden, "hidden", self.dim)
            k = _i32(k, "k")
            ids = _new_int32(max(k, 0), x.numpy)
            vals = _new_float((max(k, 0),), x.numpy) if logits else None
            ws = _Workspace(_check(int(lib.eevp_head_screen_workspace_size(h, k)),
                                   "eevp_head_screen_workspace_size"))
            ia = _vector(ids, "ids", writable=True, elem=_INT32)[0] if k > 0 else None
            va = _vector(vals, "logits", writable=True)[0] if logits and k > 0 else None
            _check(lib.eevp_head_screen(h, x.addr, k, ia.addr if ia else None,
                                        va.addr if va else None, ws.addr), "eevp_head_screen")
        return (ids, vals) if logits else ids


def topk_workspace_size(n: int, k: int) -> int:
    return _check(int(lib.eevp_topk_workspace_size(_i64(n, "n"), _i32(k, "k"))))


def topk(x, k: int, id_offset: int = 0, *, values: bool = True):
    """Exact top-k of the float32 vector x in the library's order (value
    descending, index ascending) -> (ids, values), or ids alone with
    values=False.  ids are indices + id_offset, int32.  numpy in, numpy
    out; otherwise array.array."""
    m, n = _vector(x, "x")
    k = _i32(k, "k")
    ids = _new_int32(max(k, 0), m.numpy)
    vals = _new_float((max(k, 0),), m.numpy) if values else None
    ws = _Workspace(_check(int(lib.eevp_topk_workspace_size(n, k))))
    ia = _vector(ids, "ids", writable=True, elem=_INT32)[0] if k > 0 else None
    va = _vector(vals, "values", writable=True)[0] if values and k > 0 else None
    _check(lib.eevp_topk(m.addr, n, k, _i64(id_offset, "id_offset"),
                         ia.addr if ia else None, va.addr if va else None, ws.addr),
           "eevp_topk")
    return (ids, vals) if values else ids

