# SPDX-License-Identifier: MIT
"""Errors: one exception class per negative status code of the library
(docs/PYTHON.md, section 6), all derived from EevpError, and the helpers
that raise them."""

from __future__ import annotations

from ._arrays import _i32
from ._ffi import (EBUSY, ECALLBACK, EINVAL, ENOMEM, ENONFINITE, EOVERFLOW, ERANGE, ERECORD,
                   ESTATE, ESTRUCT, EUSER, lib)


def strerror(code: int) -> str:
    """The library's static text for a status code (also for unknown codes)."""
    return lib.eevp_strerror(_i32(code, "code")).decode()


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


class RecordError(EevpError, ValueError):
    """A shard record (eevp_shard_merge, eevp_shard_absorb) is malformed, of
    another format version or shape, or disagrees with the other ranks'."""
    code = ERECORD


_ERRORS = {c.code: c for c in (InvalidArgument, OutOfRange, Overflow, OutOfMemory,
                               StructSizeError, StateError, UserCallbackError,
                               CallbackResultError, NonFiniteError, BusyError, RecordError)}


def error_for(code: int, message: str = "") -> EevpError:
    """The exception instance for a (negative) status code."""
    return _ERRORS.get(code, EevpError)(code, message)


def _check(rc: int, message: str = "") -> int:
    if rc < 0:
        raise error_for(rc, message)
    return rc

