# SPDX-License-Identifier: MIT
"""Runs a Python block of the docs for tests/docs/check_docs.py.

The checker writes the block to $DOC_FRAGMENT and names its place in the doc
($DOC_SOURCE, $DOC_LINE: its first line), so that a traceback points at the
doc's own lines.  Run as a script, it runs a complete program (`test:
python`); a harness for `python-fragment` imports it, prepares a namespace and
calls run(namespace), then checks what the block left there.  $DOC_SECTION
names the harness's section (harness=NAME:SECTION), or is empty.
"""
import os
import sys


def section():
    return os.environ.get("DOC_SECTION", "")


def run(namespace):
    """Executes the block in namespace (a dict) and returns namespace."""
    with open(os.environ["DOC_FRAGMENT"], encoding="utf-8") as f:
        text = f.read()
    pad = "\n" * (int(os.environ.get("DOC_LINE", "1")) - 1)
    code = compile(pad + text, os.environ.get("DOC_SOURCE", "<doc>"), "exec")
    namespace.setdefault("__name__", "__doc_fragment__")
    exec(code, namespace)
    return namespace


def check(cond, what):
    """Fails the harness with a message unless cond holds."""
    if not cond:
        sys.stderr.write("harness check failed: %s\n" % what)
        sys.exit(1)


if __name__ == "__main__":
    sys.argv = [os.environ.get("DOC_SOURCE", "<doc>")]
    run({"__name__": "__main__"})
