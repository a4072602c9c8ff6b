# SPDX-License-Identifier: MIT
"""The package as it is built and installed: the in-tree build backend
(wheel, sdist, the TOML it reads, make install's writer), the version taken
from include/eevp.h, and the order in which an installed copy looks for the
library (EEVP_LIBRARY, the loader, make install's libdir, pkg-config, the
checkout's lib/).  No pip, no venv: make check-pip does those.

Run: PYTHONPATH=src/python python3 -m unittest discover -s tests/python
"""
import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import unittest
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
try:
    import eevp
except ImportError:
    sys.path.insert(0, os.path.join(ROOT, "src", "python"))
    import eevp
sys.path.insert(0, os.path.join(ROOT, "src", "python", "backend"))
import eevp_backend  # noqa: E402

PKG = os.path.join(ROOT, "src", "python", "eevp")
LIB = os.path.join(ROOT, "lib", "libeevp.so.1")


def header_version():
    with open(os.path.join(ROOT, "include", "eevp.h")) as f:
        text = f.read()
    return ".".join(re.search(r"^#define EEVP_VERSION_%s (\d+)" % k, text, re.M).group(1)
                    for k in ("MAJOR", "MINOR", "PATCH"))


def package_sources():
    return sorted(n for n in os.listdir(PKG) if n.endswith(".py") or n == "py.typed")


class Version(unittest.TestCase):
    def test_the_version_is_the_headers(self):
        self.assertEqual(eevp.__version__, header_version())
        self.assertEqual(eevp_backend.header_version(), header_version())

    def test_the_library_has_the_bindings_major_version(self):
        self.assertEqual(eevp.__version__.split(".")[0], str(eevp.ABI_MAJOR))


class Wheel(unittest.TestCase):
    def build(self, **settings):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        name = eevp_backend.build_wheel(tmp, settings or None)
        return name, zipfile.ZipFile(os.path.join(tmp, name))

    def test_contents_and_metadata(self):
        v = header_version()
        name, z = self.build()
        self.assertEqual(name, "eevp-%s-py3-none-any.whl" % v)
        di = "eevp-%s.dist-info" % v
        names = z.namelist()
        self.assertEqual(sorted(n for n in names if n.startswith("eevp/")),
                         ["eevp/" + n for n in package_sources()])
        self.assertIn("eevp/py.typed", names)
        self.assertFalse([n for n in names if "__pycache__" in n or n.endswith(".pyc")])
        self.assertEqual(sorted(n for n in names if n.startswith(di)),
                         sorted(di + "/" + n for n in ("METADATA", "WHEEL", "LICENSE", "RECORD")))
        meta = z.read(di + "/METADATA").decode()
        self.assertIn("\nName: eevp\n", meta)
        self.assertIn("\nVersion: %s\n" % v, meta)
        self.assertIn("\nRequires-Python: >=3.8\n", meta)
        self.assertNotIn("Requires-Dist: numpy\n", meta)  # optional only
        self.assertIn("Root-Is-Purelib: true", z.read(di + "/WHEEL").decode())
        ver = z.read("eevp/_version.py").decode()
        self.assertIn("__version__ = %r" % v, ver)
        self.assertTrue(ver.startswith("# SPDX-License-Identifier: MIT"))
        self.assertIn("LIBDIR = None", z.read("eevp/_install.py").decode())
        with open(os.path.join(PKG, "head.py"), "rb") as f:
            self.assertEqual(z.read("eevp/head.py"), f.read())

    def test_record_lists_every_file_with_its_hash(self):
        _, z = self.build()
        rows = [l.split(",") for l in z.read(
            [n for n in z.namelist() if n.endswith("/RECORD")][0]).decode().splitlines()]
        listed = {r[0] for r in rows}
        self.assertEqual(listed, set(z.namelist()))
        for path, digest, size in rows:
            if path.endswith("/RECORD"):
                self.assertEqual((digest, size), ("", ""))
                continue
            data = z.read(path)
            want = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            self.assertEqual(digest, "sha256=" + want.decode(), path)
            self.assertEqual(int(size), len(data), path)

    def test_reproducible(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        a = eevp_backend.build_wheel(os.path.join(tmp, "a"))
        b = eevp_backend.build_wheel(os.path.join(tmp, "b"))
        with open(os.path.join(tmp, "a", a), "rb") as fa, open(os.path.join(tmp, "b", b),
                                                               "rb") as fb:
            self.assertEqual(fa.read(), fb.read())

    def test_libdir_setting_is_written_into_install_py(self):
        _, z = self.build(libdir="/opt/eevp/lib")
        self.assertIn("LIBDIR = '/opt/eevp/lib'", z.read("eevp/_install.py").decode())

    def test_metadata_hook_agrees_with_the_wheel(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        di = eevp_backend.prepare_metadata_for_build_wheel(tmp)
        _, z = self.build()
        with open(os.path.join(tmp, di, "METADATA"), "rb") as f:
            self.assertEqual(f.read(), z.read(di + "/METADATA"))

    def test_editable_wheel_points_at_the_tree(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        name = eevp_backend.build_editable(tmp)
        z = zipfile.ZipFile(os.path.join(tmp, name))
        self.assertEqual(z.read("eevp.pth").decode().strip(), os.path.join(ROOT, "src", "python"))
        self.assertFalse([n for n in z.namelist() if n.startswith("eevp/")])


class Sdist(unittest.TestCase):
    def test_sdist_builds_the_same_wheel(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        name = eevp_backend.build_sdist(tmp)
        base = "eevp-%s" % header_version()
        self.assertEqual(name, base + ".tar.gz")
        with tarfile.open(os.path.join(tmp, name)) as tar:
            members = tar.getnames()
            for m in members:
                self.assertTrue(m.startswith(base + "/"), m)
            tar.extractall(os.path.join(tmp, "x"))
        for need in ("PKG-INFO", "pyproject.toml", "LICENSE", "include/eevp.h",
                     "src/python/backend/eevp_backend.py", "src/python/eevp/py.typed"):
            self.assertIn(base + "/" + need, members)
        src = os.path.join(tmp, "x", base)
        r = subprocess.run([sys.executable, os.path.join(src, "src", "python", "backend",
                                                         "eevp_backend.py"), "wheel",
                            os.path.join(tmp, "w1")], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        w2 = eevp_backend.build_wheel(os.path.join(tmp, "w2"))
        with open(os.path.join(tmp, "w1", r.stdout.strip()), "rb") as a, \
                open(os.path.join(tmp, "w2", w2), "rb") as b:
            self.assertEqual(a.read(), b.read())


class Toml(unittest.TestCase):
    def test_the_fallback_parser_reads_pyproject_as_tomllib_does(self):
        try:
            import tomllib
        except ImportError:
            self.skipTest("no tomllib (Python < 3.11)")
        with open(os.path.join(ROOT, "pyproject.toml")) as f:
            text = f.read()
        self.assertEqual(eevp_backend.parse_toml_subset(text), tomllib.loads(text))

    def test_the_fallback_parser(self):
        got = eevp_backend.parse_toml_subset(
            '# c\n[a]\nx = "s\\"1" # c\ny = \'lit\'\nz = [\n  "p",\n  { n = "q" },\n]\n'
            '[a.b]\nt = true\nn = -3\n"k k" = {}\n')
        self.assertEqual(got, {"a": {"x": 's"1', "y": "lit", "z": ["p", {"n": "q"}],
                                     "b": {"t": True, "n": -3, "k k": {}}}})
        for bad in ('x = """a"""\n', "x = 1.5\n", "x = 1\nx = 2\n", "[[t]]\n", "x = [1\n"):
            with self.subTest(bad=bad), self.assertRaises(ValueError):
                eevp_backend.parse_toml_subset(bad)

    def test_project_table_is_checked(self):
        proj = eevp_backend.project()
        self.assertEqual((proj["name"], proj["version"]), ("eevp", header_version()))


def run_python(code, env_update, pythonpath):
    env = dict(os.environ)
    for k in ("EEVP_LIBRARY", "LD_LIBRARY_PATH", "PKG_CONFIG_PATH", "PKG_CONFIG_SYSROOT_DIR"):
        env.pop(k, None)
    env["PKG_CONFIG"] = "false"
    env["PYTHONPATH"] = pythonpath
    env.update(env_update)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, cwd=tempfile.gettempdir())


def system_copy():
    """True when the loader alone finds a libeevp.so.1 (an installed one)."""
    r = run_python("import ctypes; ctypes.CDLL('libeevp.so.1')", {}, "")
    return r.returncode == 0


@unittest.skipUnless(os.path.exists(LIB), "not a built source checkout")
class Lookup(unittest.TestCase):
    """Each place the library is looked for, and their order, on copies of
    the package outside the tree and copies of the library."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp)

    def libcopy(self, name):
        d = os.path.join(self.tmp, name)
        os.makedirs(d)
        shutil.copy(LIB, os.path.join(d, "libeevp.so.1"))
        return d

    def pkgcopy(self, libdir=None):
        """The package installed outside the tree by make install's code."""
        site = os.path.join(self.tmp, "site")
        eevp_backend.install(site, libdir=libdir)
        return site

    def pcfile(self, libdir):
        d = os.path.join(self.tmp, "pc")
        os.makedirs(d)
        with open(os.path.join(d, "eevp.pc"), "w") as f:
            f.write("libdir=%s\nName: eevp\nDescription: x\nVersion: %s\nLibs: -L${libdir} "
                    "-leevp\n" % (libdir, header_version()))
        return {"PKG_CONFIG": "pkg-config", "PKG_CONFIG_PATH": d}

    def where(self, env, pythonpath):
        r = run_python("import eevp; print(eevp.library_path())", env, pythonpath)
        self.assertEqual(r.returncode, 0, r.stderr)
        return os.path.dirname(r.stdout.strip())

    def test_loader(self):
        if system_copy():
            self.skipTest("a libeevp.so.1 is installed where the loader finds it")
        a = self.libcopy("a")
        self.assertEqual(self.where({"LD_LIBRARY_PATH": a}, self.pkgcopy()), a)

    @unittest.skipUnless(shutil.which("pkg-config"), "no pkg-config")
    def test_pkg_config(self):
        if system_copy():
            self.skipTest("a libeevp.so.1 is installed where the loader finds it")
        a = self.libcopy("a")
        self.assertEqual(self.where(self.pcfile(a), self.pkgcopy()), a)

    def test_make_install_libdir(self):
        if system_copy():
            self.skipTest("a libeevp.so.1 is installed where the loader finds it")
        a = self.libcopy("a")
        self.assertEqual(self.where({}, self.pkgcopy(libdir=a)), a)

    @unittest.skipUnless(shutil.which("pkg-config"), "no pkg-config")
    def test_order(self):
        """EEVP_LIBRARY > loader > make install's libdir > pkg-config > lib/."""
        a, b, c, d = (self.libcopy(n) for n in "abcd")
        site = self.pkgcopy(libdir=c)
        env = dict(self.pcfile(d), LD_LIBRARY_PATH=b, EEVP_LIBRARY=a)
        self.assertEqual(self.where(env, site), a)
        del env["EEVP_LIBRARY"]
        self.assertEqual(self.where(env, site), b)
        if system_copy():
            self.skipTest("a libeevp.so.1 is installed where the loader finds it")
        del env["LD_LIBRARY_PATH"]
        self.assertEqual(self.where(env, site), c)
        self.assertEqual(self.where(env, self.pkgcopy()), d)
        # the checkout's lib/ comes last
        tree = os.path.join(ROOT, "src", "python")
        self.assertEqual(self.where(env, tree), d)
        self.assertEqual(self.where({}, tree), os.path.join(ROOT, "lib"))

    def test_nothing_found_names_every_place(self):
        if system_copy():
            self.skipTest("a libeevp.so.1 is installed where the loader finds it")
        r = run_python("import eevp", {}, self.pkgcopy(libdir=os.path.join(self.tmp, "none")))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("libeevp not found", r.stderr)
        for origin in ("the loader", "the libdir of make install", "pkg-config"):
            self.assertIn(origin, r.stderr)


class MakeInstallWriter(unittest.TestCase):
    def test_install_writes_a_dist_info_pip_can_read(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        site = "/usr/lib/python3/dist-packages"
        os.makedirs(tmp + site + "/eevp")
        with open(tmp + site + "/eevp/stale.py", "w") as f:
            f.write("")
        os.makedirs(tmp + site + "/eevp-0.9.0.dist-info")
        eevp_backend.install(site, root=tmp, libdir="/usr/lib/x86_64-linux-gnu")
        names = sorted(os.listdir(tmp + site))
        di = "eevp-%s.dist-info" % header_version()
        self.assertEqual(names, ["eevp", di])
        self.assertEqual(sorted(os.listdir(tmp + site + "/eevp")), package_sources())
        with open(tmp + site + "/" + di + "/INSTALLER") as f:
            self.assertEqual(f.read(), "make\n")
        with open(tmp + site + "/" + di + "/RECORD") as f:
            listed = {l.split(",")[0] for l in f}
        on_disk = {os.path.relpath(os.path.join(d, n), tmp + site)
                   for d, _, ns in os.walk(tmp + site) for n in ns}
        self.assertEqual(listed, on_disk)
        r = run_python("import importlib.metadata as m; print(m.version('eevp'))",
                       {"EEVP_LIBRARY": LIB}, tmp + site)
        self.assertEqual(r.stdout.strip(), header_version(), r.stderr)
        r = run_python("import eevp._install as i; print(i.LIBDIR)", {"EEVP_LIBRARY": LIB},
                       tmp + site)
        self.assertEqual(r.stdout.strip(), "/usr/lib/x86_64-linux-gnu", r.stderr)


if __name__ == "__main__":
    unittest.main()
