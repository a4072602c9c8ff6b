#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""The C runtime and the training script must extract the same WordNet text
and split it the same way (the held-out splits are never trained on)."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(HERE, "..", "train"))
import wordnet_text  # noqa: E402

splits = wordnet_text.split(wordnet_text.read_lines())
passed = failed = 0
for i, name in enumerate(("train", "validation", "test")):
    out = subprocess.run([os.path.join(ROOT, "examples/tinylm/tinylm"), "lines", str(i)],
                         check=True, capture_output=True, text=True).stdout.split("\n")[:-1]
    ok = out == splits[i]
    print(f"{'ok  ' if ok else 'FAIL'} {name} split: {len(out)} lines from C, "
          f"{len(splits[i])} from Python{'' if ok else ', they differ'}")
    passed, failed = passed + ok, failed + (not ok)
print(f"{passed} passed, {failed} failed")
sys.exit(0 if failed == 0 else 1)
