# SPDX-License-Identifier: MIT
"""Mixins shared by the objects that own a library handle: closing on
leaving a with block and on collection, and use by one thread at a time."""
from __future__ import annotations

from ._ffi import EBUSY, ESTATE
from .errors import BusyError, StateError


class _Closeable:
    """close() when a with block ends and when the object is collected."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class _Exclusive:
    """A handle that one thread uses at a time (self._lock, self._handle):
    `with self._call() as h:` holds the lock, or raises BusyError, or
    StateError once closed.  _busy_msg and _closed_msg word the errors."""

    _busy_msg = "the object is in use by another thread"
    _closed_msg = "the object is closed"

    def _enter(self):
        """Lock for one call; the handle."""
        if not self._lock.acquire(blocking=False):
            raise BusyError(EBUSY, self._busy_msg)
        if self._handle is None:
            self._lock.release()
            raise StateError(ESTATE, self._closed_msg)
        return self._handle

    def _call(self):
        return _Call(self)


class _Call:
    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __enter__(self):
        return self.obj._enter()

    def __exit__(self, *exc):
        self.obj._lock.release()
