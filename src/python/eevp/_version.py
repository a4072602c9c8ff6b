# SPDX-License-Identifier: MIT
"""The package version, which is the C library's: EEVP_VERSION_MAJOR,
_MINOR and _PATCH of include/eevp.h.

This copy, in the source tree, reads the checkout's header at import.  The
build backend (src/python/backend/eevp_backend.py, for pip) and `make
install` replace it with one line, __version__ = "MAJOR.MINOR.PATCH", read
from the header at build time.
"""

import os
import re


def _from_header():
    here = os.path.dirname(os.path.abspath(__file__))
    header = os.path.join(here, "..", "..", "..", "include", "eevp.h")
    try:
        with open(header, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return "0+unknown"
    parts = []
    for key in ("MAJOR", "MINOR", "PATCH"):
        m = re.search(r"^#define EEVP_VERSION_%s (\d+)" % key, text, re.M)
        if m is None:
            return "0+unknown"
        parts.append(m.group(1))
    return ".".join(parts)


__version__ = _from_header()
