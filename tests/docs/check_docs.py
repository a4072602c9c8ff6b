#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Tested docs: the guides' ```c, ```cpp and ```python blocks are extracted,
built against the in-tree library and run (tests/docs/README.md).

Every such block carries a marker, an HTML comment on the line before its
fence:

    <!-- test: c-program -->                 a complete program: build, run
    <!-- test: c-fragment harness=H[:S] -->  pasted into tests/docs/H.c (section S)
    <!-- test: cpp-program -->  / cpp-fragment harness=H[:S]   (tests/docs/H.cpp)
    <!-- test: python -->                    a complete program: run
    <!-- test: python-fragment harness=H[:S] -->  run by tests/docs/H.py (section S)
    <!-- untested: REASON -->                 a block that cannot run, and why

A test marker may add expect="TEXT": the program's output must contain TEXT.
An unmarked block, or a marker on no block, fails the check.  Each block is
reported with its file and line; the last line is "N passed, M failed", and
the exit status is 1 on any failure.  Then a self-test breaks one C and one
Python block and requires both to fail, so that the check is seen to fail.

    python3 tests/docs/check_docs.py [--cc CC] [--cflags F] [--cxx CXX]
        [--cxxflags F] [--libs L] [--python PY] [--jobs N] [--keep] [DOC.md ...]
"""
import argparse
import concurrent.futures
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
GUIDES = ["README.md", "docs/START_C.md", "docs/START_CPP.md", "docs/START_PYTHON.md",
          "docs/INTEGRATION.md", "docs/API.md", "docs/PYTHON.md", "docs/SCALE_OUT.md"]
LANGS = {"c": "c", "cpp": "cpp", "c++": "cpp", "python": "python", "py": "python"}
KINDS = {"c-program": "c", "c-fragment": "c", "cpp-program": "cpp", "cpp-fragment": "cpp",
         "python": "python", "python-fragment": "python"}
MARKER = re.compile(r"^\s*<!--\s*(test|untested)\s*:\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})\s*([^\s`]*)")
ELISION = re.compile(r"\{\s*\.\.\.\s*\}")
SEPARATOR = "/* ... */"
TIMEOUT = 60


class Block:
    def __init__(self, path, line, lang, text, marker):
        self.path, self.line, self.lang, self.text = path, line, lang, text
        self.kind, self.opts, self.reason, self.error = None, {}, None, None
        if marker is None:
            self.error = "```%s block without a marker (<!-- test: ... --> or " \
                         "<!-- untested: REASON -->)" % lang
            return
        what, rest = marker
        if what == "untested":
            self.reason = rest
            if not rest:
                self.error = "untested marker without a reason"
            return
        try:
            words = shlex.split(rest)
        except ValueError as e:
            self.error = "bad marker: %s" % e
            return
        self.kind = words[0] if words else ""
        for w in words[1:]:
            key, eq, val = w.partition("=")
            if not eq or key not in ("harness", "expect"):
                self.error = "bad marker option %r" % w
            self.opts[key] = val
        if self.kind not in KINDS:
            self.error = "unknown marker kind %r (one of %s)" % (self.kind, ", ".join(KINDS))
        elif KINDS[self.kind] != lang:
            self.error = "marker %s on a ```%s block" % (self.kind, lang)
        elif self.kind.endswith("fragment") and not self.opts.get("harness"):
            self.error = "%s needs harness=NAME" % self.kind
        elif not self.kind.endswith("fragment") and "harness" in self.opts:
            self.error = "%s takes no harness" % self.kind

    @property
    def where(self):
        return "%s:%d" % (self.path, self.line)

    @property
    def label(self):
        if self.reason is not None:
            return "untested: " + self.reason
        h = self.opts.get("harness")
        return self.kind + (" harness=" + h if h else "")


def parse(path, text):
    """The fenced blocks of a Markdown file, and errors about stray markers."""
    blocks, errors = [], []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = len(m.group(1)), m.group(2), m.group(3).lower()
        j = i + 1
        while j < len(lines):
            s = lines[j].strip()
            if s.startswith(fence[0] * len(fence)) and not s.strip(fence[0]):
                break
            j += 1
        body = [ln[indent:] if ln[:indent].strip() == "" else ln.lstrip()
                for ln in lines[i + 1:j]]
        mm = MARKER.match(lines[i - 1]) if i > 0 else None
        marker = (mm.group(1), mm.group(2)) if mm else None
        if lang in LANGS:
            blocks.append(Block(path, i + 1, LANGS[lang], "\n".join(body) + "\n", marker))
        elif marker:
            errors.append("%s:%d: marker on a ```%s block, which is not checked"
                          % (path, i + 1, lang or "(no language)"))
        i = j + 1
    for n, ln in enumerate(lines):
        if MARKER.match(ln) and not (n + 1 < len(lines) and FENCE.match(lines[n + 1])):
            errors.append("%s:%d: marker not followed by a code fence" % (path, n + 1))
    return blocks, errors


def split_fragment(text):
    """(file-scope part, body part) of a fragment: leading preprocessor lines,
    or everything before a line `/* ... */`, go to file scope."""
    lines = text.split("\n")
    if SEPARATOR in [ln.strip() for ln in lines]:
        k = [ln.strip() for ln in lines].index(SEPARATOR)
        return lines[:k], k + 1, lines[k + 1:]
    k = 0
    while k < len(lines) and (not lines[k].strip() or lines[k].lstrip().startswith("#")):
        k += 1
    return lines[:k], k, lines[k:]


def line_directive(path, line):
    return '#line %d "%s"\n' % (line, path)


def run(cmd, cwd, env=None, timeout=TIMEOUT):
    try:
        p = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=timeout)
        return p.returncode, p.stdout.decode("utf-8", "replace")
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode("utf-8", "replace")
        return -1, out + "\ntimed out after %d s" % timeout
    except OSError as e:
        return -1, str(e)


def check_block(b, work, cfg):
    """(ok, log) for one tested block."""
    os.makedirs(work, exist_ok=True)
    harness, section = (b.opts.get("harness", "") + ":").split(":")[:2]
    first = b.line + 1                        # the block's first line in the doc
    if b.lang in ("c", "cpp"):
        ext = ".c" if b.lang == "c" else ".cpp"
        if harness:
            src = os.path.join(HERE, harness + ext)
            if not os.path.exists(src):
                return False, "no harness %s" % os.path.relpath(src, TOP)
            text = ELISION.sub("{ DOC_ELIDED(); }", b.text)
            top, k, body = split_fragment(text)
            with open(os.path.join(work, "doc_fragment_top.h"), "w") as f:
                f.write(line_directive(b.path, first) + "\n".join(top) + "\n")
            with open(os.path.join(work, "doc_fragment.h"), "w") as f:
                f.write(line_directive(b.path, first + k) + "\n".join(body) + "\n")
            defs = ["-I" + work, "-I" + HERE]
            if section:
                defs.append("-DDOC_SECTION_" + re.sub(r"\W", "_", section))
        else:
            src = os.path.join(work, "program" + ext)
            with open(src, "w") as f:
                f.write(line_directive(b.path, first) + b.text)
            defs = []
        exe = os.path.join(work, "program")
        compiler, flags = (cfg.cc, cfg.cflags) if b.lang == "c" else (cfg.cxx, cfg.cxxflags)
        cmd = (shlex.split(compiler) + shlex.split(flags) + ["-I" + os.path.join(TOP, "include")]
               + defs + ["-o", exe, src, "-L" + os.path.join(TOP, "lib"), "-leevp",
                         "-Wl,-rpath," + os.path.join(TOP, "lib")] + shlex.split(cfg.libs)
               + ["-lm"])
        rc, out = run(cmd, TOP)               # relative -I flags are the tree's
        if rc != 0:
            return False, "build failed: %s\n%s" % (" ".join(cmd), out)
        rc, out = run([exe], work)
    else:
        frag = os.path.join(work, "fragment.py")
        with open(frag, "w") as f:
            f.write(b.text)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(TOP, "src", "python"),
                                                           HERE]),
                   EEVP_LIBRARY=os.path.join(TOP, "lib", "libeevp.so.1"),
                   DOC_FRAGMENT=frag, DOC_SOURCE=b.path, DOC_LINE=str(first),
                   DOC_SECTION=section, PYTHONDONTWRITEBYTECODE="1")
        script = os.path.join(HERE, harness + ".py") if harness else \
            os.path.join(HERE, "docfrag.py")
        if not os.path.exists(script):
            return False, "no harness %s" % os.path.relpath(script, TOP)
        rc, out = run(shlex.split(cfg.python) + [script], work, env)
    if rc != 0:
        return False, "exit status %d\n%s" % (rc, out)
    want = b.opts.get("expect")
    if want and want not in out:
        return False, "output lacks %r\n%s" % (want, out)
    return True, out


def mutate(b):
    """A copy of block b with its first library call renamed: it must fail."""
    pat = r"\beevp_(?!head_options|ctx_options|result\b)[a-z_]+\(" if b.lang != "python" \
        else r"\beevp\.\w+\("
    new = re.sub(pat, "eevp_no_such_function(" if b.lang != "python"
                 else "eevp.no_such_function(", b.text, count=1)
    if new == b.text:
        return None
    m = Block(b.path, b.line, b.lang, new, ("test", ""))
    m.kind, m.opts, m.error = b.kind, dict(b.opts), None
    return m


def indent(text, n=40):
    lines = text.rstrip().split("\n")
    if len(lines) > n:
        lines = lines[:n] + ["... (%d more lines)" % (len(lines) - n)]
    return "\n".join("    " + ln for ln in lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("docs", nargs="*")
    ap.add_argument("--cc", default=os.environ.get("CC", "cc"))
    ap.add_argument("--cflags", default="-std=c99 -D_POSIX_C_SOURCE=200809L -O2 -Wall -Wextra "
                    "-Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wvla -Werror")
    ap.add_argument("--cxx", default=os.environ.get("CXX", "c++"))
    ap.add_argument("--cxxflags", default="-std=c++17 -O2 -Wall -Wextra -Werror")
    ap.add_argument("--libs", default="", help="extra link flags (OpenBLAS for <cblas.h>)")
    ap.add_argument("--python", default="/usr/bin/python3")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--work", default=os.path.join(TOP, "build", "check-docs"))
    ap.add_argument("--keep", action="store_true", help="keep the build directory")
    ap.add_argument("--no-self-test", action="store_true")
    cfg = ap.parse_args()
    if not cfg.libs:
        try:
            cfg.libs = subprocess.run(["pkg-config", "--libs", "openblas"], check=True,
                                      stdout=subprocess.PIPE).stdout.decode().strip()
        except (OSError, subprocess.CalledProcessError):
            cfg.libs = "-lopenblas"
    docs = cfg.docs or [os.path.join(TOP, d) for d in GUIDES]
    shutil.rmtree(cfg.work, ignore_errors=True)

    blocks, failures, per_doc = [], [], {}
    for d in docs:
        rel = os.path.relpath(d, TOP) if os.path.abspath(d).startswith(TOP + os.sep) else d
        with open(d, encoding="utf-8") as f:
            bs, errs = parse(rel, f.read())
        for e in errs:
            failures.append(e)
            print("FAIL " + e)
        blocks += bs
        per_doc[rel] = [0, 0]
    tested = []
    for b in blocks:
        if b.error:
            failures.append(b.where)
            print("FAIL %s: %s" % (b.where, b.error))
        elif b.reason is not None:
            per_doc[b.path][1] += 1
            print("SKIP %s  %s" % (b.where, b.label))
        else:
            tested.append(b)

    def job(b, tag=""):
        name = re.sub(r"\W", "_", "%s_%d%s" % (os.path.basename(b.path), b.line, tag))
        start = time.monotonic()
        ok, log = check_block(b, os.path.join(cfg.work, name), cfg)
        return ok, log, time.monotonic() - start

    passed = 0
    with concurrent.futures.ThreadPoolExecutor(max(1, cfg.jobs)) as pool:
        results = list(pool.map(job, tested))
        for b, (ok, log, secs) in zip(tested, results):
            per_doc[b.path][0] += 1
            if ok:
                passed += 1
                print("PASS %s  %s  (%.1f s)" % (b.where, b.label, secs))
            else:
                failures.append(b.where)
                print("FAIL %s  %s  (%.1f s)\n%s" % (b.where, b.label, secs, indent(log)))
        # Self-test: a broken C block and a broken Python block must fail.
        if not cfg.no_self_test:
            picks = [next((b for b in tested if b.lang == lang and mutate(b)), None)
                     for lang in ("c", "python")]
            muts = [mutate(b) for b in picks if b]
            outcomes = list(pool.map(lambda m: job(m, "_mutated"), muts))
            for m, (ok, _, _) in zip(muts, outcomes):
                if ok:
                    failures.append("self-test")
                    print("FAIL self-test: %s with its first library call renamed still "
                          "passes: the check cannot fail" % m.where)
            if muts and not any(o[0] for o in outcomes):
                print("self-test: %s with a library call renamed fail, as they must"
                      % " and ".join(m.where for m in muts))
    if not cfg.keep and not failures:
        shutil.rmtree(cfg.work, ignore_errors=True)
    print("\n%-26s %7s %9s" % ("doc", "tested", "untested"))
    for d, (t, u) in per_doc.items():
        print("%-26s %7d %9d" % (d, t, u))
    print("%d passed, %d failed" % (passed, len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
