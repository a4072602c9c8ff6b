# SPDX-License-Identifier: MIT
"""Where `make install` put the C library.

In the source tree and in a pip-installed copy LIBDIR is None: the library
is then found through the loader or pkg-config (docs/PYTHON.md, section 1).
`make install` (install-python) writes this file with the libdir it
installed libeevp.so.1 to, which the package tries after the loader.
"""

LIBDIR = None
