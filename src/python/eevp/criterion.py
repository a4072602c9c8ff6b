# SPDX-License-Identifier: MIT
"""Exit criteria written in Python (docs/PYTHON.md, section 5): the
CustomCriterion base class, the ExitView a criterion's decide() reads, and
the C callback table that carries a criterion into the library."""

from __future__ import annotations

import array
import ctypes
from ctypes import c_void_p
from typing import Optional

from ._arrays import _I32_CODE, _i32
from ._ffi import (ESTATE, _decide_fn, _destroy_fn, _reset_fn, eevp_criterion_vtbl,
                   eevp_exit_view)
from .errors import StateError


def _copy_floats(ptr, n):
    a = array.array("f")
    if n > 0 and ptr:
        a.frombytes(ctypes.string_at(ptr, 4 * n))
    return a


def _copy_ints(ptr, n):
    a = array.array(_I32_CODE)
    if n > 0 and ptr:
        a.frombytes(ctypes.string_at(ptr, 4 * n))
    return a


class ExitView:
    """One sequence at one checked layer, as shown to a custom criterion.

    Scalars are plain attributes.  hidden, prev_hidden, logits and ids are
    copies (array.array, made on first access; numpy.asarray() turns them
    into arrays), because the library's pointers are valid only during the
    call: the view refuses them once decide() has returned."""

    __slots__ = ("struct_size", "seq", "layer", "n_layers", "position", "dim", "n", "pruned",
                 "top1_id", "top2_id", "top1_logit", "top2_logit", "log_sum_exp",
                 "threshold", "_v", "_cache")

    def __init__(self, v: eevp_exit_view):
        self._v = v
        self._cache = {}
        self.struct_size = v.struct_size
        self.seq = v.seq
        self.layer = v.layer
        self.n_layers = v.n_layers
        self.position = v.position
        self.dim = v.dim
        self.n = v.n
        self.pruned = bool(v.pruned)
        self.top1_id = v.top1_id
        self.top2_id = v.top2_id
        self.top1_logit = v.top1_logit
        self.top2_logit = v.top2_logit
        self.log_sum_exp = v.log_sum_exp
        self.threshold = v.threshold

    def _get(self, field, n, copy):
        if field in self._cache:
            return self._cache[field]
        if self._v is None:
            raise StateError(ESTATE, "ExitView.%s read after decide() returned" % field)
        ptr = ctypes.cast(getattr(self._v, field), c_void_p).value
        val = copy(ptr, n) if ptr else None
        self._cache[field] = val
        return val

    @property
    def hidden(self):
        """The raw hidden state (before the norm), d floats."""
        return self._get("hidden", self.dim, _copy_floats)

    @property
    def prev_hidden(self):
        """The previous checked layer's hidden state, or None."""
        return self._get("prev_hidden", self.dim, _copy_floats)

    @property
    def logits(self):
        """The n candidate logits, or None without NEEDS_LOGITS."""
        return self._get("logits", self.n, _copy_floats)

    @property
    def ids(self):
        """The n candidates' global ids, or None without NEEDS_LOGITS."""
        return self._get("ids", self.n, _copy_ints)

    def __repr__(self):
        return "<eevp.ExitView seq=%d layer=%d n=%d pruned=%s>" % (
            self.seq, self.layer, self.n, self.pruned)


class CustomCriterion:
    """Base class for an exit criterion written in Python.

    decide(view) returns the confidence (a finite float), or a pair
    (confidence, exit) where exit is None ("exit iff confidence >
    view.threshold"), True or False (ignored at the last layer).  reset(seq)
    is called for each sequence at every step begin, destroy() once when
    the criterion is replaced or the context closed.  An exception raised by
    any of them fails the sequence (EEVP_EUSER for decide) and is re-raised
    from the Context call that ran the callback.

    The class attributes say what the view carries: needs_logits (the
    candidates' logits and ids; also turns pruning on) and
    needs_prev_hidden."""

    name: Optional[str] = None
    needs_logits: bool = True
    needs_prev_hidden: bool = False

    def decide(self, view: ExitView):
        raise NotImplementedError

    def reset(self, seq: int) -> None:
        pass

    def destroy(self) -> None:
        pass


def _method(obj, method):
    """obj.method when it does something (not CustomCriterion's no-op)."""
    fn = getattr(obj, method, None)
    if fn is None or not callable(fn):
        return None
    if getattr(fn, "__func__", None) is getattr(CustomCriterion, method):
        return None
    return fn


def _exit_flag(ex) -> int:
    if isinstance(ex, bool) or type(ex).__name__ == "bool_":
        return int(bool(ex))
    return _i32(ex, "exit")


class _Registration:
    """Everything the C side points into while a criterion is registered:
    the table, the C callbacks and the name bytes.  The context holds it
    until the library destroys the criterion (replaced, or context freed)."""

    def __init__(self, user, decide, reset, destroy, name, needs, pending: list):
        self.user = user
        self.name = None if name is None else str(name).encode()

        def c_decide(state, view_p, conf_p, exit_p):
            try:
                view = ExitView(view_p.contents)
                try:
                    r = decide(view)
                finally:
                    view._v = None
                ex = None
                if isinstance(r, tuple):
                    if len(r) != 2:
                        raise TypeError("decide() returned a tuple of %d items; expected "
                                        "(confidence, exit)" % len(r))
                    r, ex = r
                conf = float(r)
                if ex is not None:
                    exit_p[0] = _exit_flag(ex)
                conf_p[0] = conf
                return 0
            except BaseException as e:  # everything, KeyboardInterrupt included
                pending.append(e)
                return 1

        def c_reset(state, seq):
            try:
                reset(seq)
            except BaseException as e:
                pending.append(e)

        def c_destroy(state):
            try:
                destroy()
            except BaseException as e:
                pending.append(e)

        self.c_decide = _decide_fn(c_decide)
        self.c_reset = _reset_fn(c_reset) if reset else _reset_fn()
        self.c_destroy = _destroy_fn(c_destroy) if destroy else _destroy_fn()
        self.vtbl = eevp_criterion_vtbl()
        self.vtbl.struct_size = ctypes.sizeof(eevp_criterion_vtbl)
        self.vtbl.name = self.name
        self.vtbl.needs = needs
        self.vtbl.decide = self.c_decide
        self.vtbl.reset = self.c_reset
        self.vtbl.destroy = self.c_destroy

