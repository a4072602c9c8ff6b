# SPDX-License-Identifier: MIT
"""eevp - Python binding for libeevp (early-exit confidence with dynamic
vocabulary pruning), pure standard library over ctypes.

    import eevp
    head = eevp.Head(W, norm="rms", norm_weight=w)      # W: V x d float32, borrowed
    ctx = eevp.Context(head, n_layers=L, first_layer=4, k=256)
    with ctx.step(n_seq) as step:
        for layer in ctx.required_layers:
            if step.n_running == 0:
                break
            for r in step.layer(layer, hidden_after(layer)):
                ...                                     # r.seq resolved: r.token
    tokens = [r.token for r in step.results()]

The C header include/eevp.h is the reference for what every call computes;
docs/PYTHON.md describes this binding: how the library is found, the objects,
the zero-copy rules for arrays and buffers, callbacks and exceptions.

numpy is optional: float32 numpy arrays are used in place (no copy); without
numpy any buffer of C floats (array.array('f'), memoryview format 'f') works.
"""

from __future__ import annotations

import array
import ctypes
import dataclasses
import enum
import operator
import os
import sys
import threading
from ctypes import (CFUNCTYPE, POINTER, Structure, byref, c_char_p, c_double,
                    c_float, c_int, c_int32, c_int64, c_size_t, c_ssize_t,
                    c_uint32, c_void_p)
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

__version__ = "1.1.0"

#: The library major version this binding mirrors (soname libeevp.so.1).
ABI_MAJOR = 1
_SONAME = "libeevp.so.%d" % ABI_MAJOR
# `make install` rewrites this line with the libdir it installs the library to.
_INSTALL_LIBDIR = None

__all__ = [
    "Head", "Context", "Step", "Result", "Stats", "ExitView", "CustomCriterion",
    "Candidates", "Norm", "Weight", "Criterion", "Schedule", "Final", "Static", "Reason", "topk",
    "topk_workspace_size", "strerror", "library_version", "library_version_number",
    "library_path", "error_for", "EevpError", "InvalidArgument", "OutOfRange", "Overflow",
    "OutOfMemory", "StructSizeError", "StateError", "UserCallbackError",
    "CallbackResultError", "NonFiniteError", "BusyError",
]

# --------------------------------------------------------------------------
# Constants (include/eevp.h)
# --------------------------------------------------------------------------

OK = 0
EINVAL = -1
ERANGE = -2
EOVERFLOW = -3
ENOMEM = -4
ESTRUCT = -5
ESTATE = -6
EUSER = -7
ECALLBACK = -8
ENONFINITE = -9
EBUSY = -10

MAX_VOCAB = 2**31 - 1
MAX_DIM = 1 << 24
MAX_BATCH = 4096
MAX_LAYERS = 4096

MAX_LIST = 65536
MAX_THREADS = 64

HEAD_COPY = 1
HEAD_NO_SIMD = 2
CTX_BATCH_INVARIANT = 1
CTX_EXACT_EXIT = 2
CTX_SCREEN = 4
NEEDS_LOGITS = 1
NEEDS_PREV_HIDDEN = 2


class Norm(enum.IntEnum):
    NONE = 0
    RMS = 1
    LAYER = 2


class Weight(enum.IntEnum):
    """Storage of W (eevp_weight)."""
    F32 = 0
    F16 = 1
    BF16 = 2


class Criterion(enum.IntEnum):
    """The built-in exit criteria (eevp_criterion)."""
    TOP2_GAP = 0
    MAX_PROB = 1
    ENTROPY = 2
    SATURATION = 3
    STABILITY = 4
    JS = 5
    CUSTOM = 6


class Schedule(enum.IntEnum):
    CONSTANT = 0
    CALM = 1


class Final(enum.IntEnum):
    FULL = 0
    PRUNED = 1


class Static(enum.IntEnum):
    """Use of the static candidate list (eevp_static)."""
    NONE = 0
    UNION = 1
    ONLY = 2


class Reason(enum.IntEnum):
    RUNNING = 0
    CONFIDENT = 1
    LAST_LAYER = 2
    ERROR = 3


# --------------------------------------------------------------------------
# Structs: field for field the header's, struct_size first
# --------------------------------------------------------------------------

_alloc_fn = CFUNCTYPE(c_void_p, c_void_p, c_size_t)
_free_fn = CFUNCTYPE(None, c_void_p, c_void_p)


class eevp_allocator(Structure):
    _fields_ = [("alloc", _alloc_fn), ("free", _free_fn), ("opaque", c_void_p)]


class eevp_head_options(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("flags", c_uint32),
        ("n_vocab", c_int64),
        ("dim", c_int64),
        ("row_stride", c_int64),
        ("weights", POINTER(c_float)),
        ("vocab_offset", c_int64),
        ("norm", c_int32),
        ("norm_eps", c_float),
        ("norm_weight", POINTER(c_float)),
        ("norm_bias", POINTER(c_float)),
        ("logit_bias", POINTER(c_float)),
        ("logit_scale", c_float),
        ("softcap", c_float),
        ("allocator", POINTER(eevp_allocator)),
        ("weight_type", c_int32),
        ("weights_half", POINTER(ctypes.c_uint16)),
        ("screen_mult", c_int32),
    ]


class eevp_ctx_options(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("n_layers", c_int32),
        ("max_batch", c_int32),
        ("k", c_int32),
        ("first_layer", c_int32),
        ("interval", c_int32),
        ("prune_layer", c_int32),
        ("final_policy", c_int32),
        ("criterion", c_int32),
        ("threshold", c_float),
        ("schedule", c_int32),
        ("schedule_tau", c_float),
        ("max_length", c_int32),
        ("patience", c_int32),
        ("allocator", POINTER(eevp_allocator)),
        ("flags", c_uint32),
        ("always_ids", POINTER(c_int32)),
        ("n_always", c_int32),
        ("static_mode", c_int32),
        ("static_ids", POINTER(c_int32)),
        ("n_static", c_int32),
        ("reprune_layer", c_int32),
        ("reprune_every", c_int32),
        ("adaptive_mass", c_float),
        ("k_min", c_int32),
        ("reserved_1_0", c_uint32),
        ("n_threads", c_int32),
        ("reserved_1_1", c_uint32),
    ]


class eevp_result(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("reason", c_int32),
        ("status", c_int32),
        ("token", c_int32),
        ("layer", c_int32),
        ("pruned", c_int32),
        ("confidence", c_float),
        ("threshold", c_float),
        ("pruned_token", c_int32),
        ("set_size", c_int32),
    ]


class eevp_exit_view(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("seq", c_int32),
        ("layer", c_int32),
        ("n_layers", c_int32),
        ("position", c_int32),
        ("dim", c_int32),
        ("hidden", POINTER(c_float)),
        ("prev_hidden", POINTER(c_float)),
        ("n", c_int32),
        ("pruned", c_int32),
        ("logits", POINTER(c_float)),
        ("ids", POINTER(c_int32)),
        ("top1_id", c_int32),
        ("top2_id", c_int32),
        ("top1_logit", c_float),
        ("top2_logit", c_float),
        ("log_sum_exp", c_float),
        ("threshold", c_float),
    ]


_decide_fn = CFUNCTYPE(c_int, c_void_p, POINTER(eevp_exit_view), POINTER(c_float),
                       POINTER(c_int32))
_reset_fn = CFUNCTYPE(None, c_void_p, c_int32)
_destroy_fn = CFUNCTYPE(None, c_void_p)


class eevp_criterion_vtbl(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("name", c_char_p),
        ("needs", c_uint32),
        ("decide", _decide_fn),
        ("reset", _reset_fn),
        ("destroy", _destroy_fn),
    ]


class eevp_stats(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("n_layers", c_int32),
        ("tokens", c_int64),
        ("exited_early", c_int64),
        ("reached_last", c_int64),
        ("failed", c_int64),
        ("checks", c_int64),
        ("pruned_decisions", c_int64),
        ("k_coverage_hits", c_int64),
        ("k_coverage_total", c_int64),
        ("k_coverage_final", c_double),
        ("head_flops", c_int64),
        ("head_flops_baseline", c_int64),
        ("head_bytes", c_int64),
        ("head_bytes_baseline", c_int64),
        ("pruned_sets", c_int64),
        ("set_size_sum", c_int64),
        ("reprunes", c_int64),
        ("reprune_changed", c_int64),
        ("always_emitted", c_int64),
        ("static_emitted", c_int64),
        ("exact_exits", c_int64),
        ("exact_exit_changed", c_int64),
    ]


# --------------------------------------------------------------------------
# Loading the library
# --------------------------------------------------------------------------

_P = c_void_p  # handles and data pointers cross as plain addresses
_FUNCTIONS = {
    "eevp_version_number": (c_uint32, []),
    "eevp_version_string": (c_char_p, []),
    "eevp_strerror": (c_char_p, [c_int]),
    "eevp_head_options_init": (c_int, [POINTER(eevp_head_options)]),
    "eevp_head_create": (c_int, [POINTER(c_void_p), POINTER(eevp_head_options), c_char_p,
                                 c_size_t]),
    "eevp_head_free": (None, [_P]),
    "eevp_head_n_vocab": (c_int64, [_P]),
    "eevp_head_dim": (c_int64, [_P]),
    "eevp_head_vocab_offset": (c_int64, [_P]),
    "eevp_head_memory": (c_int64, [_P]),
    "eevp_ctx_options_init": (c_int, [POINTER(eevp_ctx_options)]),
    "eevp_ctx_memory_estimate": (c_int, [POINTER(c_int64), _P, POINTER(eevp_ctx_options)]),
    "eevp_ctx_create": (c_int, [POINTER(c_void_p), _P, POINTER(eevp_ctx_options), c_char_p,
                                c_size_t]),
    "eevp_ctx_free": (None, [_P]),
    "eevp_ctx_errmsg": (c_char_p, [_P]),
    "eevp_ctx_reset": (c_int, [_P]),
    "eevp_ctx_layer_required": (c_int, [_P, c_int32]),
    "eevp_ctx_memory": (c_int64, [_P]),
    "eevp_step_begin": (c_int, [_P, c_int32, _P]),
    "eevp_step_layer": (c_int, [_P, c_int32, _P, c_int64, c_int32, _P]),
    "eevp_step_n_running": (c_int32, [_P]),
    "eevp_step_end": (c_int, [_P]),
    "eevp_step_abandon": (c_int, [_P]),
    "eevp_step_result": (c_int, [_P, c_int32, POINTER(eevp_result)]),
    "eevp_step_candidates": (c_int, [_P, c_int32, c_int32, _P, _P, POINTER(c_int32)]),
    "eevp_ctx_set_criterion": (c_int, [_P, POINTER(eevp_criterion_vtbl), _P]),
    "eevp_ctx_threshold": (c_int, [_P, c_int32, POINTER(c_float)]),
    "eevp_head_workspace_size": (c_int64, [_P, c_int32]),
    "eevp_head_logits": (c_int, [_P, c_int32, _P, c_int64, _P, c_int64, _P]),
    "eevp_head_gather": (c_int, [_P, _P, c_int32, _P, c_int64, _P]),
    "eevp_head_pruned_logits": (c_int, [_P, c_int32, _P, c_int64, _P, c_int32, _P, c_int64,
                                        _P, c_int64, _P]),
    "eevp_head_screen_workspace_size": (c_int64, [_P, c_int32]),
    "eevp_head_screen": (c_int, [_P, _P, c_int32, _P, _P, _P]),
    "eevp_topk_workspace_size": (c_int64, [c_int64, c_int32]),
    "eevp_topk": (c_int, [_P, c_int64, c_int32, c_int64, _P, _P, _P]),
    "eevp_ctx_stats": (c_int, [_P, POINTER(eevp_stats)]),
    "eevp_ctx_exit_histogram": (c_int, [_P, _P, c_int32]),
    "eevp_ctx_set_size_histogram": (c_int, [_P, _P, c_int32]),
    "eevp_ctx_stats_reset": (c_int, [_P]),
}


def _library_candidates():
    """(path, origin) pairs in search order; EEVP_LIBRARY alone when set."""
    env = os.environ.get("EEVP_LIBRARY")
    if env:
        if os.path.isdir(env):
            env = os.path.join(env, _SONAME)
        return [(env, "EEVP_LIBRARY")], True
    out = []
    here = os.path.dirname(os.path.abspath(__file__))
    in_tree = os.path.normpath(os.path.join(here, "..", "..", "..", "lib", _SONAME))
    if os.path.exists(in_tree):
        out.append((in_tree, "the source checkout"))
    if _INSTALL_LIBDIR:
        installed = os.path.join(_INSTALL_LIBDIR, _SONAME)
        if os.path.exists(installed):
            out.append((installed, "the install libdir"))
    out.append((_SONAME, "the system loader path"))
    return out, False


def _missing(name, path, version):
    def call(*args):
        raise NotImplementedError("%s: the loaded libeevp %s (%s) does not have it"
                                  % (name, version, path))
    call.__name__ = name
    return call


def _load():
    candidates, strict = _library_candidates()
    errors = []
    for path, origin in candidates:
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            if strict:
                raise ImportError("eevp: cannot load EEVP_LIBRARY=%s: %s" % (path, e)) from None
            errors.append("%s (%s): %s" % (path, origin, e))
            continue
        try:
            fn = lib.eevp_version_number
            fn.restype, fn.argtypes = c_uint32, []
            sfn = lib.eevp_version_string
            sfn.restype, sfn.argtypes = c_char_p, []
        except AttributeError:
            raise ImportError("eevp: %s (%s) is not libeevp: no eevp_version_number"
                              % (path, origin)) from None
        number, text = fn(), sfn().decode()
        if number // 10000 != ABI_MAJOR:
            raise ImportError(
                "eevp: %s (%s) is libeevp %s (major version %d), but this binding (eevp %s) "
                "needs major version %d" % (path, origin, text, number // 10000, __version__,
                                            ABI_MAJOR))
        for name, (restype, argtypes) in _FUNCTIONS.items():
            try:
                f = getattr(lib, name)
            except AttributeError:
                # An older minor version: the call fails, the rest works.
                setattr(lib, name, _missing(name, path, text))
                continue
            f.restype, f.argtypes = restype, argtypes
        return lib, path
    raise ImportError("eevp: libeevp not found; tried:\n  " + "\n  ".join(errors) +
                      "\nBuild it (make), install it (make install), or point EEVP_LIBRARY "
                      "at libeevp.so.%d." % ABI_MAJOR)


lib, _lib_path = _load()


def library_path() -> str:
    """The path (or name) the library was loaded from."""
    return _lib_path


def library_version() -> str:
    """Version of the loaded library, "MAJOR.MINOR.PATCH"."""
    return lib.eevp_version_string().decode()


def library_version_number() -> int:
    """Version of the loaded library, MAJOR*10000 + MINOR*100 + PATCH."""
    return int(lib.eevp_version_number())


def strerror(code: int) -> str:
    """The library's static text for a status code (also for unknown codes)."""
    return lib.eevp_strerror(_i32(code, "code")).decode()


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------

class EevpError(Exception):
    """A libeevp status code.  .code is the EEVP_E* value, .message the detail
    (the context's message, or the creation message), possibly ""."""

    code = None

    def __init__(self, code: int, message: str = ""):
        self.code = code
        self.message = message
        text = strerror(code)
        super().__init__("%s: %s" % (text, message) if message else text)


class InvalidArgument(EevpError, ValueError):
    code = EINVAL


class OutOfRange(EevpError, ValueError):
    code = ERANGE


class Overflow(EevpError, OverflowError):
    code = EOVERFLOW


class OutOfMemory(EevpError, MemoryError):
    code = ENOMEM


class StructSizeError(EevpError):
    code = ESTRUCT


class StateError(EevpError, RuntimeError):
    code = ESTATE


class UserCallbackError(EevpError):
    code = EUSER


class CallbackResultError(EevpError):
    code = ECALLBACK


class NonFiniteError(EevpError, ValueError):
    code = ENONFINITE


class BusyError(EevpError, RuntimeError):
    code = EBUSY


_ERRORS = {c.code: c for c in (InvalidArgument, OutOfRange, Overflow, OutOfMemory,
                               StructSizeError, StateError, UserCallbackError,
                               CallbackResultError, NonFiniteError, BusyError)}


def error_for(code: int, message: str = "") -> EevpError:
    """The exception instance for a (negative) status code."""
    return _ERRORS.get(code, EevpError)(code, message)


def _check(rc: int, message: str = "") -> int:
    if rc < 0:
        raise error_for(rc, message)
    return rc


# --------------------------------------------------------------------------
# Arguments: integers, enums, arrays and buffers
# --------------------------------------------------------------------------

def _int(v, name: str, lo: int, hi: int) -> int:
    try:
        v = operator.index(v)
    except TypeError:
        raise TypeError("%s must be an integer, got %s" % (name, type(v).__name__)) from None
    if not lo <= v <= hi:
        raise OverflowError("%s = %d does not fit the C type (%d .. %d)" % (name, v, lo, hi))
    return v


def _i32(v, name: str) -> int:
    return _int(v, name, -2**31, 2**31 - 1)


def _i64(v, name: str) -> int:
    return _int(v, name, -2**63, 2**63 - 1)


def _enum(v, cls, name: str) -> int:
    if isinstance(v, str):
        try:
            return int(cls[v.upper()])
        except KeyError:
            raise ValueError("%s: unknown %s %r (one of %s)" % (
                name, cls.__name__, v, ", ".join(m.name.lower() for m in cls))) from None
    return _i32(v, name)  # unknown integers are the library's to judge


_LITTLE = sys.byteorder == "little"
_I32_CODE = next(t for t in "ilh" if array.array(t).itemsize == 4)

_np_module = None


def _numpy():
    """numpy, or None when it is not installed (imported once, lazily)."""
    global _np_module
    if _np_module is None:
        try:
            import numpy
            _np_module = numpy
        except ImportError:
            _np_module = False
    return _np_module or None


class _Py_buffer(Structure):
    _fields_ = [("buf", c_void_p), ("obj", c_void_p), ("len", c_ssize_t),
                ("itemsize", c_ssize_t), ("readonly", c_int), ("ndim", c_int),
                ("format", c_char_p), ("shape", c_void_p), ("strides", c_void_p),
                ("suboffsets", c_void_p), ("internal", c_void_p)]


_PyBUF_WRITABLE = 0x0001
_PyBUF_STRIDES = 0x0010 | 0x0008
try:
    _GetBuffer = ctypes.pythonapi.PyObject_GetBuffer
    _GetBuffer.argtypes = [ctypes.py_object, POINTER(_Py_buffer), c_int]
    _GetBuffer.restype = c_int
    _ReleaseBuffer = ctypes.pythonapi.PyBuffer_Release
    _ReleaseBuffer.argtypes = [POINTER(_Py_buffer)]
    _ReleaseBuffer.restype = None
except (AttributeError, OSError):  # not CPython
    _GetBuffer = _ReleaseBuffer = None


class _Export:
    """A buffer export held open: the exporter's memory stays where it is
    (array.array and bytearray refuse to resize while exported) and alive
    until this object goes.  Works for read-only buffers too."""

    __slots__ = ("view", "addr", "_release", "__weakref__")

    def __init__(self, obj, writable: bool):
        self._release = None
        if _GetBuffer is not None:
            self.view = _Py_buffer()
            flags = _PyBUF_STRIDES | (_PyBUF_WRITABLE if writable else 0)
            _GetBuffer(obj, byref(self.view), flags)
            self._release = _ReleaseBuffer
            self.addr = self.view.buf or 0
        else:
            mv = memoryview(obj)
            if mv.readonly:
                if writable:
                    raise ValueError("buffer is read-only")
                mv = memoryview(bytearray(mv.tobytes()))
            self.view = (ctypes.c_char * mv.nbytes).from_buffer(mv)
            self.addr = ctypes.addressof(self.view)

    def __del__(self):
        rel, self._release = self._release, None
        if rel is not None:
            try:
                rel(byref(self.view))
            except Exception:
                pass


class _Mat:
    """A float32 (or int32) matrix as the library sees it: address, rows,
    columns, leading dimension in elements, the number of dimensions of the
    object, and what keeps the memory alive."""

    __slots__ = ("addr", "rows", "cols", "ld", "ndim", "keep", "numpy")

    def __init__(self, addr, rows, cols, ld, ndim, keep, numpy):
        self.addr, self.rows, self.cols, self.ld, self.ndim = addr, rows, cols, ld, ndim
        self.keep, self.numpy = keep, numpy


def _flatten(x):
    if isinstance(x, (list, tuple)):
        out = []
        for e in x:
            out.extend(_flatten(e)) if isinstance(e, (list, tuple)) else out.append(e)
        return out
    return [x]


def _nested_cols(x):
    """Columns of a list of rows, or None for a flat list."""
    if x and isinstance(x[0], (list, tuple)):
        return len(x[0])
    return None


def _layout(shape, strides, itemsize, cols, name):
    """(rows, cols, ld, layout_problem) for a 1-D or 2-D shape; raises
    ValueError for shapes no conversion can fix."""
    if len(shape) == 1:
        m = shape[0]
        if cols is None:
            cols = m
        if m == 0:
            raise ValueError("%s is empty" % name)
        if m % cols:
            raise ValueError("%s: %d values are not whole rows of %d" % (name, m, cols))
        bad = strides is not None and m > 1 and strides[0] != itemsize
        return m // cols, cols, cols, "is not contiguous" if bad else None
    if len(shape) == 2:
        r, c = shape
        if cols is not None and c != cols:
            raise ValueError("%s: rows of %d values, expected %d" % (name, c, cols))
        if r == 0 or c == 0:
            raise ValueError("%s is empty" % name)
        if strides is None:
            return r, c, c, None
        s0, s1 = strides
        unit = s1 == itemsize or c == 1
        if r == 1:
            return r, c, c, None if unit else "has a non-unit column stride"
        if not unit:
            return r, c, c, "has a non-unit column stride"
        if s0 <= 0 or s0 % itemsize or s0 // itemsize < c:
            return r, c, c, "has a row stride (%d bytes) that is not a multiple of %d " \
                            "at least as long as a row" % (s0, itemsize)
        return r, c, s0 // itemsize, None
    raise ValueError("%s: expected 1 or 2 dimensions, got %d" % (name, len(shape)))


class _Elem:
    """An element type the library takes: accepted numpy typestrs and
    buffer formats, size, and how to convert into it (None: no conversion)."""

    def __init__(self, name, typestrs, formats, itemsize, np_dtype, typecode, kinds):
        self.name, self.typestrs, self.formats = name, typestrs, formats
        self.itemsize, self.np_dtype, self.typecode, self.kinds = \
            itemsize, np_dtype, typecode, kinds


_E = "<" if _LITTLE else ">"
_FLOAT = _Elem("float32", (_E + "f4",), ("f",), 4, "float32", "f", "fiu")
_INT32 = _Elem("int32", (_E + "i4",), ("i", "l"), 4, "int32", _I32_CODE, "iu")
_HALF = _Elem("16-bit (float16, or uint16 holding bfloat16)", (_E + "f2", _E + "u2", _E + "i2"),
              ("e", "H", "h"), 2, None, None, "")


def _format_of(obj):
    """The numpy typestr or buffer format of obj, or None."""
    ai = getattr(obj, "__array_interface__", None)
    if isinstance(ai, dict):
        return ai.get("typestr")
    try:
        return memoryview(obj).format
    except TypeError:
        return None


def _matrix(obj, cols, name, *, convert=True, writable=False, elem=_FLOAT):
    """Describe obj as a matrix of `cols` columns (None: whatever it has; a
    1-D object is then one row) of `elem`, in place when possible;
    otherwise converted when `convert`, else a clear TypeError/ValueError."""
    ai = None if isinstance(obj, (memoryview, array.array, bytes, bytearray)) else \
        getattr(obj, "__array_interface__", None)
    if isinstance(ai, dict) and isinstance(ai.get("data"), tuple):
        shape = tuple(ai["shape"])
        typestr = ai["typestr"]
        addr, readonly = ai["data"]
        rows, cols2, ld, problem = _layout(shape, ai.get("strides"), elem.itemsize, cols, name)
        if typestr not in elem.typestrs:
            problem = "has dtype %s, not %s" % (getattr(obj, "dtype", typestr), elem.name)
            convertible = typestr[1:2] in elem.kinds
        else:
            convertible = True
            if problem is None and addr % elem.itemsize:
                problem = "is not %d-byte aligned" % elem.itemsize
        if writable and readonly:
            raise ValueError("%s is read-only; an output array must be writable" % name)
        if problem is None:
            return _Mat(addr, rows, cols2, ld, len(shape), obj, True)
        np = _numpy()
        if not convert or writable or not convertible or np is None or elem.np_dtype is None:
            how = "pass a C-contiguous %s array" % elem.name
            exc = TypeError if "dtype" in problem else ValueError
            raise exc("%s %s: %s" % (name, problem, how))
        dtype = getattr(np, elem.np_dtype)
        conv = np.ascontiguousarray(obj, dtype=dtype)
        if elem is _INT32 and conv.size and (np.asarray(obj) != conv).any():
            raise OverflowError("%s: values do not fit in int32" % name)
        return _matrix(conv, cols, name, convert=False, elem=elem)

    if isinstance(obj, (list, tuple)):
        if not convert or writable or elem.typecode is None:
            raise TypeError("%s: expected a %s array or buffer, got a %s" %
                            (name, elem.name, type(obj).__name__))
        flat = _flatten(obj)
        ncols = _nested_cols(obj)
        if cols is None:
            cols = ncols if ncols is not None else len(flat)
        elif ncols is not None and ncols != cols:
            raise ValueError("%s: rows of %d values, expected %d" % (name, ncols, cols))
        try:
            conv = array.array(elem.typecode, flat)
        except TypeError as e:
            raise TypeError("%s: %s" % (name, e)) from None
        except OverflowError as e:
            raise OverflowError("%s: %s" % (name, e)) from None
        m = _matrix(conv, cols, name, convert=False, elem=elem)
        m.ndim = 1 if ncols is None else 2
        return m

    try:
        mv = memoryview(obj)
    except TypeError:
        raise TypeError("%s: expected a %s numpy array or a buffer of %s, got %s" % (
            name, elem.name, elem.name, type(obj).__name__)) from None
    fmt = mv.format
    if _LITTLE and fmt[:1] == "<":
        fmt = fmt[1:]
    if fmt[:1] in ("@", "="):
        fmt = fmt[1:]
    good_fmt = mv.itemsize == elem.itemsize and fmt in elem.formats
    if mv.ndim == 0:
        raise ValueError("%s: expected 1 or 2 dimensions, got 0" % name)
    if good_fmt:
        rows, cols2, ld, problem = _layout(mv.shape, mv.strides, elem.itemsize, cols, name)
        if mv.suboffsets:
            problem = "uses suboffsets"
    else:
        problem = "has format %r, not %s" % (mv.format, elem.name)
    if writable and mv.readonly:
        raise ValueError("%s is read-only; an output buffer must be writable" % name)
    if problem is None:
        exp = _Export(obj, writable)
        return _Mat(exp.addr, rows, cols2, ld, mv.ndim, exp, False)
    if fmt in ("B", "b", "c"):  # raw bytes: converting each byte would be garbage
        raise TypeError("%s is a buffer of bytes (format %r): memoryview(x).cast(%r) "
                        "reinterprets it" % (name, mv.format, elem.formats[0]))
    if not convert or writable or elem.typecode is None:
        exc = TypeError if "format" in problem else ValueError
        raise exc("%s %s: pass a C-contiguous buffer of %s" % (name, problem, elem.name))
    try:
        items = mv.tolist()
    except (NotImplementedError, TypeError, ValueError) as e:
        raise TypeError("%s %s and cannot be converted: %s" % (name, problem, e)) from None
    if mv.ndim == 2 and cols is None:
        cols = mv.shape[1]
    return _matrix(items, cols, name, convert=True, elem=elem)


def _vector(obj, name, length=None, **kw):
    m = _matrix(obj, None, name, **kw)
    n = m.rows * m.cols
    if m.rows != 1 and m.ld != m.cols:
        raise ValueError("%s: expected a contiguous vector" % name)
    if length is not None and n != length:
        raise ValueError("%s: %d values, expected %d" % (name, n, length))
    return m, n


def _new_float(shape, numpy):
    np = _numpy() if numpy else None
    if np is not None:
        return np.empty(shape, dtype=np.float32)
    n = 1
    for s in shape:
        n *= s
    return array.array("f", bytes(4 * n))


def _new_int32(n, numpy):
    np = _numpy() if numpy else None
    if np is not None:
        return np.empty(n, dtype=np.int32)
    return array.array(_I32_CODE, bytes(4 * n))


def _int32_array(values, name):
    """A small int32 array (row maps, positions, ids) for one call."""
    if values is None:
        return None, 0, None
    m, n = _vector(values, name, elem=_INT32)
    return m.addr, n, m


class _Workspace:
    """Scratch of `size` bytes aligned to 64, as the kernels require."""

    __slots__ = ("buf", "addr")

    def __init__(self, size):
        self.buf = ctypes.create_string_buffer(max(int(size), 1) + 64)
        base = ctypes.addressof(self.buf)
        self.addr = (base + 63) & ~63


# --------------------------------------------------------------------------
# Head
# --------------------------------------------------------------------------

class Head:
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

    def __enter__(self) -> "Head":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

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


# --------------------------------------------------------------------------
# Results, statistics, exit views
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


def _enum_member(cls, v):
    try:
        return cls(v)
    except ValueError:
        return v


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


class Context:
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
            rc = lib.eevp_ctx_create(byref(handle), hh, byref(o), msg, len(msg))
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
    def _enter(self):
        """Lock the context for one call; the handle."""
        if not self._lock.acquire(blocking=False):
            raise BusyError(EBUSY, "the context is in use: called from its own criterion "
                                   "callback, or from two threads at once")
        if self._handle is None:
            self._lock.release()
            raise StateError(ESTATE, "the context is closed")
        return self._handle

    class _Call:
        __slots__ = ("ctx",)

        def __init__(self, ctx):
            self.ctx = ctx

        def __enter__(self):
            return self.ctx._enter()

        def __exit__(self, *exc):
            self.ctx._lock.release()

    def _call(self):
        return Context._Call(self)

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

    def layer(self, layer: int, hidden, row_seq: Optional[Sequence[int]] = None) -> List[Result]:
        """Hand over the raw hidden states after `layer` (eevp_step_layer):
        n_rows x d, one row per sequence (n_seq rows), or only the running
        sequences' rows (compacted, increasing order), or rows mapped by
        row_seq.  Returns the results of the sequences this call resolved,
        by sequence: exits, last-layer resolutions and per-sequence
        failures (reason ERROR, .error).  An exception raised by a Python
        criterion is re-raised after the call (the step stays in progress)."""
        ly = _i32(layer, "layer")
        head = self._head
        if head is None:
            raise StateError(ESTATE, "the context is closed")
        x = _matrix(hidden, head.dim, "hidden")
        raddr, rlen, rkeep = _int32_array(row_seq, "row_seq")
        if row_seq is not None and rlen != x.rows:
            raise ValueError("row_seq has %d entries, hidden %d rows" % (rlen, x.rows))
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
