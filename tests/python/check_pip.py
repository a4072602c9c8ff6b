#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The eevp package as users install it (make check-pip, run by
make check-python).  For each interpreter given:

  - a fresh venv; `pip install --no-build-isolation --no-index TOP` (offline,
    through the in-tree build backend: no setuptools, no wheel needed);
  - from outside the tree: eevp.__version__ is include/eevp.h's, py.typed is
    installed, and the library is found through EEVP_LIBRARY, through the
    loader (LD_LIBRARY_PATH) and through pkg-config, the last two on a
    library-only staged install (make install-lib DESTDIR=...), which must
    hold no Python file;
  - without any of them the import fails, naming what it tried;
  - `pip uninstall -y eevp` removes every file it installed;
  - once per run: an install from the sdist, an editable install (-e), and
    make install-python / uninstall-python into a staging directory, which
    pip must list and be able to uninstall.

    python3 tests/python/check_pip.py [--make make] [--libdir DIR]
        [--sitedir DIR] PYTHON...
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SONAME = "libeevp.so.1"

PROBE = r"""
import json, os, eevp
d = os.path.dirname(eevp.__file__)
print(json.dumps({
    "version": eevp.__version__, "file": eevp.__file__,
    "library": os.path.realpath(eevp.library_path()),
    "library_version": eevp.library_version(),
    "py_typed": os.path.isfile(os.path.join(d, "py.typed")),
    "modules": sorted(n for n in os.listdir(d) if n.endswith(".py")),
    "topk": list(eevp.topk([0.5, 3.0, -1.0, 2.0], 2, values=False)),
}))
"""


class Failed(Exception):
    pass


def header_version():
    with open(os.path.join(TOP, "include", "eevp.h")) as f:
        text = f.read()
    return ".".join(re.search(r"^#define EEVP_VERSION_%s (\d+)" % k, text, re.M).group(1)
                    for k in ("MAJOR", "MINOR", "PATCH"))


def clean_env(**extra):
    """The environment without anything that would find the library or the
    package for the child: each check adds back the one route it tests."""
    env = dict(os.environ)
    for k in ("EEVP_LIBRARY", "LD_LIBRARY_PATH", "PYTHONPATH", "PKG_CONFIG_PATH",
              "PKG_CONFIG_SYSROOT_DIR", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(k, None)
    env["PKG_CONFIG"] = "false"  # no pkg-config unless a check asks for it
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    env.update(extra)
    return env


def run(cmd, env=None, cwd="/", ok=True):
    r = subprocess.run(cmd, env=env or clean_env(), cwd=cwd, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True)
    if ok and r.returncode != 0:
        raise Failed("%s exited %d:\n%s%s" % (" ".join(cmd), r.returncode, r.stdout, r.stderr))
    return r


def check(cond, what):
    if not cond:
        raise Failed(what)
    print("  ok: " + what)


def probe(py, env):
    import json
    r = run([py, "-c", PROBE], env=env)
    return json.loads(r.stdout.strip().splitlines()[-1])


def site_dir(py):
    return run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
               ).stdout.strip()


def eevp_files(site):
    return sorted(glob.glob(os.path.join(site, "eevp*")))


def check_install(py, site, stage_lib, pc_dir, stage, version, expected_modules):
    """The installed package imports from outside the tree, by each route."""
    intree = os.path.realpath(os.path.join(TOP, "lib", SONAME))
    staged = os.path.realpath(os.path.join(stage_lib, SONAME))
    p = probe(py, clean_env(EEVP_LIBRARY=os.path.join(TOP, "lib", SONAME)))
    check(p["file"].startswith(site + os.sep), "imported from the venv (%s)" % p["file"])
    check(p["version"] == version, "eevp.__version__ %s is the header's %s"
          % (p["version"], version))
    check(p["library_version"] == version, "the library loaded is %s" % version)
    check(p["py_typed"], "py.typed is installed")
    check(p["modules"] == expected_modules, "every module is installed: %s"
          % " ".join(p["modules"]))
    check(p["topk"] == [1, 3], "topk runs")
    check(p["library"] == intree, "EEVP_LIBRARY: %s" % p["library"])
    p = probe(py, clean_env(LD_LIBRARY_PATH=stage_lib))
    check(p["library"] == staged, "the loader (LD_LIBRARY_PATH), staged: %s" % p["library"])
    p = probe(py, clean_env(PKG_CONFIG="pkg-config", PKG_CONFIG_PATH=pc_dir,
                            PKG_CONFIG_SYSROOT_DIR=stage))
    check(p["library"] == staged, "pkg-config's libdir, staged: %s" % p["library"])
    r = run([py, "-c", "import eevp"], ok=False)
    check(r.returncode != 0 and "libeevp not found" in r.stderr and "the loader" in r.stderr
          and "pkg-config" in r.stderr, "nothing to find: the import fails, naming what it tried")


def pip_uninstall(py, site, extra=(), env=None):
    before = eevp_files(site)
    check(before, "installed: %s" % " ".join(os.path.basename(f) for f in before))
    run([py, "-m", "pip", "uninstall", "-y"] + list(extra) + ["eevp"], env=env)
    left = eevp_files(site)
    check(not left, "pip uninstall removed them%s" % (": left " + " ".join(left) if left else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--make", default="make")
    ap.add_argument("--libdir", default="/usr/local/lib")
    ap.add_argument("--sitedir", default=None,
                    help="PYTHON_SITEDIR of the Makefile, for make install-python")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("pythons", nargs="+")
    args = ap.parse_args()
    t0 = time.time()
    version = header_version()
    expected_modules = sorted(n for n in os.listdir(os.path.join(TOP, "src", "python", "eevp"))
                              if n.endswith(".py"))
    make = args.make.split()
    work = tempfile.mkdtemp(prefix="eevp-check-pip-")
    try:
        print("== make install-lib into a staging directory")
        stage = os.path.join(work, "stage")
        run(make + ["-C", TOP, "--no-print-directory", "install-lib", "DESTDIR=" + stage],
            env=dict(os.environ))
        stage_lib = stage + args.libdir
        pc_dir = os.path.join(stage_lib, "pkgconfig")
        check(os.path.exists(os.path.join(stage_lib, SONAME)), "the library is staged")
        check(os.path.exists(os.path.join(pc_dir, "eevp.pc")), "eevp.pc is staged")
        pyfiles = [os.path.join(d, n) for d, _, ns in os.walk(stage) for n in ns
                   if n.endswith((".py", ".typed")) or ".dist-info" in d]
        check(not pyfiles, "install-lib installs no Python file %s" % (pyfiles or ""))

        seen = set()
        for i, py in enumerate(args.pythons):
            real = os.path.realpath(shutil.which(py) or py)
            exe = run([py, "-c", "import sys; print(sys.executable)"]).stdout.strip()
            if os.path.realpath(exe) in seen:
                print("== %s: the same interpreter as before, skipped" % py)
                continue
            seen.add(os.path.realpath(exe))
            print("== %s (%s): a fresh venv" % (py, real))
            venv = os.path.join(work, "venv%d" % i)
            run([py, "-m", "venv", venv])
            vpy = os.path.join(venv, "bin", "python")
            site = site_dir(vpy)
            check(not eevp_files(site), "the venv has no eevp")
            run([vpy, "-m", "pip", "install", "--no-build-isolation", "--no-index", TOP],
                cwd=work)
            check_install(vpy, site, stage_lib, pc_dir, stage, version, expected_modules)
            r = run([vpy, "-m", "pip", "show", "-f", "eevp"])
            check("eevp/py.typed" in r.stdout and "Version: " + version in r.stdout,
                  "pip show lists eevp %s and its py.typed" % version)
            pip_uninstall(vpy, site)
            if i == 0:
                print("== %s: from the sdist" % py)
                sd = os.path.join(work, "sdist")
                r = run([vpy, os.path.join(TOP, "src", "python", "backend", "eevp_backend.py"),
                         "sdist", sd])
                tarball = os.path.join(sd, r.stdout.strip())
                run([vpy, "-m", "pip", "install", "--no-build-isolation", "--no-index", tarball],
                    cwd=work)
                p = probe(vpy, clean_env(EEVP_LIBRARY=os.path.join(TOP, "lib", SONAME)))
                check(p["version"] == version and p["py_typed"]
                      and p["modules"] == expected_modules, "the sdist installs the same")
                pip_uninstall(vpy, site)
            else:
                print("== %s: editable (pip install -e)" % py)
                run([vpy, "-m", "pip", "install", "--no-build-isolation", "--no-index", "-e",
                     TOP], cwd=work)
                p = probe(vpy, clean_env(EEVP_LIBRARY=os.path.join(TOP, "lib", SONAME)))
                check(p["file"] == os.path.join(TOP, "src", "python", "eevp", "__init__.py"),
                      "editable: eevp runs from the tree")
                check(p["version"] == version, "editable: the version is the header's")
                pip_uninstall(vpy, site)

        if args.sitedir:
            py = args.pythons[-1]
            print("== make install-python / uninstall-python with %s, staged" % py)
            root = os.path.join(work, "pyroot")
            run(make + ["-C", TOP, "--no-print-directory", "install-python", "DESTDIR=" + root,
                        "PYTHON=" + py, "PYTHON_SITEDIR=" + args.sitedir], env=dict(os.environ))
            site = root + args.sitedir
            p = probe(py, clean_env(PYTHONPATH=site, LD_LIBRARY_PATH=stage_lib))
            check(p["file"].startswith(site + os.sep) and p["version"] == version
                  and p["py_typed"] and p["library"] == os.path.realpath(
                      os.path.join(stage_lib, SONAME)), "make install-python: eevp imports")
            r = run([py, "-c", "import eevp._install as i; print(i.LIBDIR)"],
                    env=clean_env(PYTHONPATH=site, EEVP_LIBRARY=os.path.join(TOP, "lib")))
            check(r.stdout.strip() == args.libdir, "it records libdir %s" % args.libdir)
            r = run([py, "-m", "pip", "list", "--path", site])
            check(re.search(r"^eevp\s+%s\s*$" % re.escape(version), r.stdout, re.M),
                  "pip lists it")
            pip_uninstall(py, site, ["--break-system-packages"],
                          env=clean_env(PYTHONPATH=site))
            run(make + ["-C", TOP, "--no-print-directory", "install-python", "DESTDIR=" + root,
                        "PYTHON=" + py, "PYTHON_SITEDIR=" + args.sitedir], env=dict(os.environ))
            run(make + ["-C", TOP, "--no-print-directory", "uninstall-python",
                        "DESTDIR=" + root, "PYTHON=" + py, "PYTHON_SITEDIR=" + args.sitedir],
                env=dict(os.environ))
            left = [os.path.join(d, n) for d, _, ns in os.walk(root) for n in ns]
            check(not left and not eevp_files(site), "make uninstall-python removes it all")
    except Failed as e:
        print("check_pip: FAILED: %s" % e, file=sys.stderr)
        print("  (work directory kept: %s)" % work, file=sys.stderr)
        return 1
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print("check_pip: all passed in %.1f s" % (time.time() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
