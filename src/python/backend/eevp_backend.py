# SPDX-License-Identifier: MIT
"""The build backend of the eevp Python package (PEP 517 and PEP 660),
written with the standard library only, so that

    pip install --no-build-isolation --no-index .

works offline under any interpreter that has pip, with neither setuptools nor
wheel installed.  pyproject.toml names it (build-backend, backend-path).

It builds a pure-Python wheel (py3-none-any) of src/python/eevp: the
package's modules and py.typed, with _version.py replaced by the version of
include/eevp.h (EEVP_VERSION_MAJOR/MINOR/PATCH) read at build time, and the
metadata of pyproject.toml's [project] table.  The one config setting,
libdir (pip install --config-settings libdir=/opt/eevp/lib), writes that
directory into eevp/_install.py, where the package looks for libeevp.so.1
after the loader.

`make install` uses the same code to install the package into a site
directory without pip (the dist-info included, so pip knows about it):

    python3 src/python/backend/eevp_backend.py install --sitedir DIR \
        [--root DESTDIR] [--libdir LIBDIR]
"""

import base64
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
import time
import zipfile

TOP = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
PACKAGE = "eevp"
PACKAGE_DIR = os.path.join("src", "python", "eevp")
HEADER = os.path.join("include", "eevp.h")
# What an sdist carries besides the package: enough to build the wheel again.
SDIST_FILES = ("pyproject.toml", "LICENSE", HEADER, os.path.join("src", "python", "backend",
                                                                  "eevp_backend.py"))
WHEEL_TAG = "py3-none-any"
PROJECT_KEYS = {"name", "version", "dynamic", "description", "requires-python", "license",
                "authors", "keywords", "classifiers", "dependencies", "optional-dependencies",
                "urls"}


# --------------------------------------------------------------------------
# Inputs: the header's version, pyproject.toml, the package's files
# --------------------------------------------------------------------------

def header_version(top=TOP):
    """"MAJOR.MINOR.PATCH" from include/eevp.h."""
    with open(os.path.join(top, HEADER), encoding="utf-8") as f:
        text = f.read()
    parts = []
    for key in ("MAJOR", "MINOR", "PATCH"):
        m = re.search(r"^#define EEVP_VERSION_%s (\d+)" % key, text, re.M)
        if m is None:
            raise RuntimeError("%s: no EEVP_VERSION_%s" % (HEADER, key))
        parts.append(str(int(m.group(1))))
    return ".".join(parts)


_TOKEN = re.compile(r"""
    (?P<ws>[ \t]+) | (?P<nl>\r?\n) | (?P<comment>\#[^\n]*)
  | (?P<basic>"(?:[^"\\\n]|\\.)*") | (?P<literal>'[^'\n]*')
  | (?P<punct>[\[\]{}=,.]) | (?P<bare>[A-Za-z0-9_+-]+)
""", re.X)


def parse_toml_subset(text):
    """The part of TOML that pyproject.toml uses, for Python < 3.11 (no
    tomllib): [tables] (dotted names), one key per line (bare or quoted),
    values that are one-line strings (basic or literal), integers,
    booleans, arrays (over several lines, trailing comma allowed) and
    inline tables.  Anything else is a ValueError naming the line."""
    toks, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ValueError("pyproject.toml line %d: unsupported TOML"
                             % (text.count("\n", 0, pos) + 1))
        if m.lastgroup not in ("ws", "comment"):
            toks.append((m.lastgroup, m.group(), text.count("\n", 0, pos) + 1))
        pos = m.end()
    toks.append(("nl", "", -1))
    i = 0

    def take(kind=None, value=None):
        nonlocal i
        k, v, line = toks[i] if i < len(toks) else ("eof", "", -1)
        if (kind and k != kind) or (value and v != value):
            raise ValueError("pyproject.toml line %d: unexpected %r" % (line, v))
        i += 1
        return k, v

    def peek():
        return toks[i][:2] if i < len(toks) else ("eof", "")

    def skip_nl():
        while peek()[0] == "nl":
            take()

    def key():
        k, v = take()
        if k == "bare":
            return v
        if k == "basic":
            return json.loads(v)
        if k == "literal":
            return v[1:-1]
        raise ValueError("pyproject.toml: expected a key, got %r" % v)

    def value():
        k, v = take()
        if k == "basic":
            return json.loads(v)
        if k == "literal":
            return v[1:-1]
        if k == "bare" and v in ("true", "false"):
            return v == "true"
        if k == "bare" and re.fullmatch(r"[+-]?\d+", v):
            return int(v)
        if v == "[":
            out = []
            while True:
                skip_nl()
                if peek()[1] == "]":
                    take()
                    return out
                out.append(value())
                skip_nl()
                if peek()[1] != "]":
                    take("punct", ",")
        if v == "{":
            out = {}
            while peek()[1] != "}":
                name = key()
                take("punct", "=")
                out[name] = value()
                if peek()[1] != "}":
                    take("punct", ",")
            take()
            return out
        raise ValueError("pyproject.toml: unsupported value %r" % v)

    data = {}
    table = data
    while i < len(toks):
        skip_nl()
        if i >= len(toks):
            break
        if peek()[1] == "[":
            take()
            names = [key()]
            while peek()[1] == ".":
                take()
                names.append(key())
            take("punct", "]")
            table = data
            for name in names:
                table = table.setdefault(name, {})
        else:
            name = key()
            take("punct", "=")
            if name in table:
                raise ValueError("pyproject.toml: %s given twice" % name)
            table[name] = value()
        take("nl")
    return data


def read_pyproject(top=TOP):
    with open(os.path.join(top, "pyproject.toml"), encoding="utf-8") as f:
        text = f.read()
    try:
        import tomllib
    except ImportError:
        return parse_toml_subset(text)
    return tomllib.loads(text)


def project(top=TOP):
    """pyproject.toml's [project] table, checked, with the version filled in."""
    proj = dict(read_pyproject(top).get("project", {}))
    unknown = set(proj) - PROJECT_KEYS
    if unknown:
        raise RuntimeError("pyproject.toml: [project] keys this backend does not write: %s"
                           % ", ".join(sorted(unknown)))
    if proj.get("name") != PACKAGE:
        raise RuntimeError("pyproject.toml: the project is %r, not %r" % (proj.get("name"),
                                                                          PACKAGE))
    if "version" in proj or "version" not in proj.get("dynamic", []):
        raise RuntimeError("pyproject.toml: the version must be dynamic (from %s)" % HEADER)
    proj["version"] = header_version(top)
    return proj


def metadata(proj):
    """The METADATA (core metadata 2.1) text."""
    lines = ["Metadata-Version: 2.1", "Name: " + proj["name"], "Version: " + proj["version"]]
    if proj.get("description"):
        lines.append("Summary: " + proj["description"])
    authors = [a["name"] for a in proj.get("authors", []) if "name" in a]
    if authors:
        lines.append("Author: " + ", ".join(authors))
    lic = proj.get("license")
    if isinstance(lic, dict) and "text" in lic:
        lines.append("License: " + lic["text"])
    if proj.get("keywords"):
        lines.append("Keywords: " + ",".join(proj["keywords"]))
    for label, url in proj.get("urls", {}).items():
        lines.append("Project-URL: %s, %s" % (label, url))
    if proj.get("requires-python"):
        lines.append("Requires-Python: " + proj["requires-python"])
    lines += ["Classifier: " + c for c in proj.get("classifiers", [])]
    lines += ["Requires-Dist: " + d for d in proj.get("dependencies", [])]
    for extra, deps in proj.get("optional-dependencies", {}).items():
        lines.append("Provides-Extra: " + extra)
        lines += ['Requires-Dist: %s; extra == "%s"' % (d, extra) for d in deps]
    return "\n".join(lines) + "\n"


def package_files(top=TOP, libdir=None, version=None):
    """[(path in the wheel, bytes)]: the package's modules and py.typed, with
    _version.py (and _install.py when libdir is given) generated."""
    src = os.path.join(top, PACKAGE_DIR)
    version = version or header_version(top)
    out = []
    for name in sorted(os.listdir(src)):
        path = os.path.join(src, name)
        if not os.path.isfile(path) or not (name.endswith(".py") or name == "py.typed"):
            continue
        if name == "_version.py":
            data = ("# SPDX-License-Identifier: MIT\n"
                    "# Written by the build from include/eevp.h; the source tree's copy reads "
                    "the header.\n__version__ = %r\n" % version).encode()
        elif name == "_install.py" and libdir:
            data = ("# SPDX-License-Identifier: MIT\n"
                    "# Written by the build: where libeevp.so.1 was installed.\n"
                    "LIBDIR = %r\n" % libdir).encode()
        else:
            with open(path, "rb") as f:
                data = f.read()
        out.append(("%s/%s" % (PACKAGE, name), data))
    for need in ("__init__.py", "_version.py", "_install.py", "py.typed"):
        if ("%s/%s" % (PACKAGE, need)) not in dict(out):
            raise RuntimeError("%s/%s is missing" % (PACKAGE_DIR, need))
    return out


def _dist_info(proj):
    return "%s-%s.dist-info" % (proj["name"].replace("-", "_"), proj["version"])


def dist_info_files(proj, top=TOP, installer=None):
    """[(path, bytes)] of the .dist-info directory, RECORD excepted."""
    di = _dist_info(proj)
    wheel = ("Wheel-Version: 1.0\nGenerator: eevp_backend (%s)\nRoot-Is-Purelib: true\n"
             "Tag: %s\n" % (proj["version"], WHEEL_TAG))
    with open(os.path.join(top, "LICENSE"), "rb") as f:
        lic = f.read()
    out = [(di + "/METADATA", metadata(proj).encode()), (di + "/WHEEL", wheel.encode()),
           (di + "/LICENSE", lic)]
    if installer:
        out.append((di + "/INSTALLER", (installer + "\n").encode()))
    return out


def _record(files, di):
    rows = []
    for path, data in files:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append("%s,sha256=%s,%d" % (path, digest, len(data)))
    rows.append("%s/RECORD,," % di)
    return ("\n".join(rows) + "\n").encode()


def _config_libdir(config_settings):
    libdir = (config_settings or {}).get("libdir")
    if isinstance(libdir, list):
        libdir = libdir[-1]
    return libdir or None


def _timestamp():
    """Zip/tar entry time: SOURCE_DATE_EPOCH when set (reproducible builds),
    else a fixed 2020-01-01."""
    t = int(os.environ.get("SOURCE_DATE_EPOCH", "1577836800"))
    return max(t, 315532800)  # zip cannot go before 1980


def _write_wheel(directory, proj, files):
    di = _dist_info(proj)
    files = files + dist_info_files(proj)
    files.append((di + "/RECORD", _record(files, di)))
    name = "%s-%s-%s.whl" % (proj["name"].replace("-", "_"), proj["version"], WHEEL_TAG)
    when = time.gmtime(_timestamp())[:6]
    os.makedirs(directory, exist_ok=True)
    with zipfile.ZipFile(os.path.join(directory, name), "w", zipfile.ZIP_DEFLATED) as z:
        for path, data in files:
            info = zipfile.ZipInfo(path, when)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    return name


# --------------------------------------------------------------------------
# PEP 517 and PEP 660 hooks
# --------------------------------------------------------------------------

def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def get_requires_for_build_editable(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    proj = project()
    for path, data in dist_info_files(proj):
        dest = os.path.join(metadata_directory, path)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb") as f:
            f.write(data)
    return _dist_info(proj)


prepare_metadata_for_build_editable = prepare_metadata_for_build_wheel


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    proj = project()
    files = package_files(libdir=_config_libdir(config_settings), version=proj["version"])
    return _write_wheel(wheel_directory, proj, files)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    """A wheel whose eevp.pth puts this checkout's src/python on sys.path:
    the package then runs from the tree (its version read from the header,
    the library found as for any copy, the checkout's lib/ last)."""
    proj = project()
    pth = (os.path.join(TOP, "src", "python") + "\n").encode()
    return _write_wheel(wheel_directory, proj, [(PACKAGE + ".pth", pth)])


def build_sdist(sdist_directory, config_settings=None):
    proj = project()
    base = "%s-%s" % (proj["name"], proj["version"])
    members = [("PKG-INFO", metadata(proj).encode())]
    for rel in SDIST_FILES:
        with open(os.path.join(TOP, rel), "rb") as f:
            members.append((rel.replace(os.sep, "/"), f.read()))
    src = os.path.join(TOP, PACKAGE_DIR)
    for name in sorted(os.listdir(src)):
        if name.endswith(".py") or name == "py.typed":
            with open(os.path.join(src, name), "rb") as f:
                members.append(("%s/%s" % (PACKAGE_DIR.replace(os.sep, "/"), name), f.read()))
    name = base + ".tar.gz"
    os.makedirs(sdist_directory, exist_ok=True)
    with tarfile.open(os.path.join(sdist_directory, name), "w:gz",
                      format=tarfile.PAX_FORMAT) as tar:
        for rel, data in members:
            info = tarfile.TarInfo("%s/%s" % (base, rel))
            info.size, info.mode, info.mtime = len(data), 0o644, _timestamp()
            tar.addfile(info, io.BytesIO(data))
    return name


# --------------------------------------------------------------------------
# make install: the wheel's files written into a site directory
# --------------------------------------------------------------------------

def install(sitedir, root="", libdir=None, installer="make"):
    """Install the package into root + sitedir as pip would install the
    wheel (the package, its .dist-info with RECORD and INSTALLER), after
    removing any eevp package and eevp .dist-info already there."""
    proj = project()
    target = os.path.join(root, sitedir.lstrip(os.sep)) if root else sitedir
    os.makedirs(target, exist_ok=True)
    for name in os.listdir(target):
        if name == PACKAGE or re.fullmatch(r"%s-[0-9][^-]*\.dist-info" % PACKAGE, name):
            shutil.rmtree(os.path.join(target, name))
    di = _dist_info(proj)
    files = package_files(libdir=libdir, version=proj["version"]) + \
        dist_info_files(proj, installer=installer)
    files.append((di + "/RECORD", _record(files, di)))
    for path, data in files:
        dest = os.path.join(target, path)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb") as f:
            f.write(data)
        os.chmod(dest, 0o644)
    return [os.path.join(target, p) for p, _ in files]


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(prog="eevp_backend.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ins = sub.add_parser("install", help="install the package into a site directory")
    ins.add_argument("--sitedir", required=True)
    ins.add_argument("--root", default="", help="staging directory (DESTDIR)")
    ins.add_argument("--libdir", default=None, help="where libeevp.so.1 is installed")
    for name in ("wheel", "sdist"):
        b = sub.add_parser(name, help="build a %s into a directory" % name)
        b.add_argument("directory")
    sub.add_parser("version", help="print the version read from include/eevp.h")
    args = ap.parse_args(argv)
    if args.cmd == "install":
        for path in install(args.sitedir, args.root, args.libdir):
            print("installed", path)
    elif args.cmd == "wheel":
        print(build_wheel(args.directory))
    elif args.cmd == "sdist":
        print(build_sdist(args.directory))
    else:
        print(header_version())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
