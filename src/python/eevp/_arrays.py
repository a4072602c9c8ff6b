# SPDX-License-Identifier: MIT
"""Arguments on their way to C: integers checked against their C type,
enumerations by name, and arrays and buffers described as the matrices the
library reads (address, rows, columns, leading dimension), in place when
their layout allows and converted otherwise (docs/PYTHON.md, section 4).

Standard library only; numpy is imported lazily when an argument is a numpy
array or an output should be one.
"""

from __future__ import annotations

import array
import ctypes
import operator
import sys
from ctypes import POINTER, Structure, byref, c_char_p, c_int, c_ssize_t, c_void_p

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


def _enum_member(cls, v):
    """The enumeration member for v, or v itself when cls has none."""
    try:
        return cls(v)
    except ValueError:
        return v
