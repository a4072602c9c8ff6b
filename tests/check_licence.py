#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Every file of the source tree names its licence: an SPDX-License-Identifier
line near its top, or a Files: pattern of .reuse/dep5 for what cannot carry a
comment.  Fails, listing them, on any file covered by neither, on any licence
other than the project's, and on a dep5 pattern that matches nothing.

The tree is `git ls-files` in a checkout, else every file below the top
except build output (a release tarball).  A self-test on a made-up tree runs
first, so that the check is seen to fail when it should.
    python3 tests/check_licence.py [TOP]
"""
import fnmatch
import os
import re
import subprocess
import sys
import tempfile

ALLOWED = {"MIT", "MIT AND LicenseRef-WordNet-3.0"}
HEAD_LINES = 5
SKIP_DIRS = {".git", "build", "lib", "__pycache__"}
TAG = re.compile(r"SPDX-License-Identifier:\s*(.+?)\s*(?:\*/|-->)?\s*$")


def dep5_stanzas(path):
    """[(patterns, licence)] of a dep5 file's Files: stanzas."""
    out, fields, key = [], {}, None
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for para in text.split("\n\n"):
        fields, key = {}, None
        for line in para.splitlines():
            if line.startswith((" ", "\t")) and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, val = line.split(":", 1)
                fields[key] = val.strip()
        if "Files" in fields:
            out.append((fields["Files"].split(), fields.get("License", "")))
    return out


def tree_files(top):
    if os.path.isdir(os.path.join(top, ".git")):
        r = subprocess.run(["git", "-C", top, "ls-files", "-z"], capture_output=True)
        if r.returncode == 0:
            return [p for p in r.stdout.decode().split("\0") if p]
    files = []
    for d, dirs, names in os.walk(top):
        dirs[:] = [x for x in dirs if x not in SKIP_DIRS]
        for n in names:
            if n.endswith((".o", ".so", ".a", ".pyc")):
                continue
            p = os.path.relpath(os.path.join(d, n), top)
            # executables built in place (examples, tests) have no extension
            # and no SPDX line; sources always have one or the other
            if os.access(os.path.join(top, p), os.X_OK) and "." not in n and \
                    not open(os.path.join(top, p), "rb").read(2) == b"#!":
                continue
            files.append(p)
    return files


def check(top, files):
    """Problems found, as lines of text."""
    problems = []
    stanzas = dep5_stanzas(os.path.join(top, ".reuse", "dep5"))
    used = set()
    for p in files:
        lic = None
        try:
            with open(os.path.join(top, p), encoding="utf-8") as f:
                for _ in range(HEAD_LINES):
                    m = TAG.search(f.readline())
                    if m:
                        lic = m.group(1)
                        break
        except (UnicodeDecodeError, OSError):
            pass
        if lic is None:
            for pats, slic in stanzas:
                hit = [q for q in pats if fnmatch.fnmatchcase(p, q)]
                if hit:
                    lic = slic
                    used.update(hit)
        if lic is None:
            problems.append(f"no licence: {p}")
        elif lic not in ALLOWED:
            problems.append(f"unexpected licence {lic!r}: {p}")
    for pats, _ in stanzas:
        for q in pats:
            if q not in used and not any(fnmatch.fnmatchcase(p, q) for p in files):
                problems.append(f".reuse/dep5 pattern matches nothing: {q}")
    return problems


def selftest():
    with tempfile.TemporaryDirectory() as t:
        os.makedirs(os.path.join(t, ".reuse"))
        with open(os.path.join(t, ".reuse", "dep5"), "w") as f:
            f.write("Format: x\n\nFiles: data/*\nCopyright: x\nLicense: MIT\n")
        os.makedirs(os.path.join(t, "data"))
        body = {"a.c": "/* SPDX-License-Identifier: MIT */\nint x;\n",
                "b.c": "int y;\n",
                "c.py": "#!/usr/bin/env python3\n# SPDX-License-Identifier: GPL-2.0\n",
                "data/blob": "\x00\x01"}
        for k, v in body.items():
            with open(os.path.join(t, k), "w") as f:
                f.write(v)
        got = sorted(check(t, sorted(body)))
        want = ["no licence: b.c", "unexpected licence 'GPL-2.0': c.py"]
        if got != want:
            sys.exit(f"check_licence self-test failed: {got} != {want}")


def main():
    top = sys.argv[1] if len(sys.argv) > 1 else \
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    top = os.path.abspath(top)
    selftest()
    files = tree_files(top)
    problems = check(top, files)
    for line in problems:
        print("FAIL:", line)
    print(f"licence check: {len(files)} files, {len(problems)} problems")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
