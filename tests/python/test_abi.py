# SPDX-License-Identifier: MIT
"""The binding against the header it mirrors: structs (field names, order,
types, and with a C compiler the offsets and sizes), constants, enums,
every exported function; and how the library is found and version-checked.

Run: PYTHONPATH=src/python python3 -m unittest discover -s tests/python
"""
import ctypes
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
try:
    import eevp
except ImportError:
    sys.path.insert(0, os.path.join(ROOT, "src", "python"))
    import eevp

HEADER = os.path.join(ROOT, "include", "eevp.h")
CC = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def header_text():
    with open(HEADER) as f:
        text = f.read()
    return re.sub(r"/\*.*?\*/", " ", text, flags=re.S)


def header_structs():
    """{name: [(field, ctype text), ...]} for every typedef struct."""
    out = {}
    for m in re.finditer(r"typedef struct (\w+)\s*\{(.*?)\}\s*(\w+)\s*;", header_text(), re.S):
        fields = []
        for decl in m.group(2).split(";"):
            decl = " ".join(decl.split())
            if not decl:
                continue
            fp = re.match(r"(.*?)\(\s*\*\s*(\w+)\s*\)\s*\((.*)\)$", decl)
            if fp:
                fields.append((fp.group(2), "fnptr"))
                continue
            base, _, names = decl.rpartition(" ")
            # "int32_t top1_id, top2_id" and "const float *hidden"
            parts = re.match(r"(.*?)((?:\*?\s*\w+\s*,\s*)*\*?\s*\w+)$", decl)
            base, names = parts.group(1).strip(), parts.group(2)
            for name in names.split(","):
                name = name.strip()
                star = name.startswith("*")
                fields.append((name.lstrip("* "), base + (" *" if star else "")))
        out[m.group(1)] = fields
    return out


C_TYPES = {
    "uint32_t": ctypes.c_uint32, "int32_t": ctypes.c_int32, "int64_t": ctypes.c_int64,
    "float": ctypes.c_float, "double": ctypes.c_double, "uint16_t": ctypes.c_uint16,
    "uint64_t": ctypes.c_uint64,
}


def expected_ctype(text):
    text = text.replace("const ", "").strip()
    if text == "fnptr":
        return "fnptr"
    if text == "char *":
        return ctypes.c_char_p
    if text == "void *":
        return ctypes.c_void_p
    if text.endswith(" *"):
        return ("ptr", text[:-2].strip())
    return C_TYPES[text]


class StructMirror(unittest.TestCase):
    def test_every_struct_mirrored_field_for_field(self):
        structs = header_structs()
        self.assertGreaterEqual(len(structs), 7, structs.keys())
        for name, fields in structs.items():
            with self.subTest(struct=name):
                cls = getattr(eevp, name, None)
                self.assertIsNotNone(cls, "eevp.%s missing" % name)
                mine = cls._fields_
                self.assertEqual([f for f, _ in fields], [f for f, _ in mine])
                for (field, ctext), (_, ctype) in zip(fields, mine):
                    want = expected_ctype(ctext)
                    if want == "fnptr":
                        self.assertTrue(issubclass(ctype, ctypes._CFuncPtr), field)
                    elif isinstance(want, tuple):
                        self.assertTrue(issubclass(ctype, ctypes._Pointer), field)
                        target = want[1]
                        pointee = ctype._type_
                        if target in C_TYPES:
                            self.assertIs(pointee, C_TYPES[target], field)
                        else:
                            self.assertEqual(pointee.__name__, target, field)
                    else:
                        self.assertIs(ctype, want, field)
                if fields and name != "eevp_allocator":
                    self.assertEqual(fields[0][0], "struct_size")

    @unittest.skipUnless(CC, "no C compiler")
    def test_offsets_and_sizes_match_the_compiler(self):
        structs = header_structs()
        lines = ["#include <stddef.h>", "#include <stdio.h>", "#include <eevp.h>",
                 "int main(void) {"]
        for name, fields in structs.items():
            lines.append('printf("%s %%zu\\n", sizeof(%s));' % (name, name))
            for f, _ in fields:
                lines.append('printf("%s.%s %%zu\\n", offsetof(%s, %s));' % (name, f, name, f))
        lines += ["return 0;", "}"]
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "layout.c")
            exe = os.path.join(tmp, "layout")
            with open(src, "w") as f:
                f.write("\n".join(lines))
            subprocess.run([CC, "-std=c99", "-I" + os.path.join(ROOT, "include"), src, "-o", exe],
                           check=True)
            out = subprocess.run([exe], check=True, capture_output=True, text=True).stdout
        for line in out.splitlines():
            key, value = line.split()
            if "." in key:
                s, f = key.split(".")
                got = getattr(getattr(eevp, s), f).offset
            else:
                got = ctypes.sizeof(getattr(eevp, key))
            self.assertEqual(got, int(value), key)

    def test_library_initialisers_fill_the_mirrors(self):
        ho = eevp.eevp_head_options()
        self.assertEqual(eevp.lib.eevp_head_options_init(ctypes.byref(ho)), 0)
        self.assertEqual(ho.struct_size, ctypes.sizeof(ho))
        self.assertAlmostEqual(ho.norm_eps, 1e-6)
        self.assertEqual(ho.logit_scale, 1.0)
        co = eevp.eevp_ctx_options()
        self.assertEqual(eevp.lib.eevp_ctx_options_init(ctypes.byref(co)), 0)
        self.assertEqual(co.struct_size, ctypes.sizeof(co))
        self.assertEqual((co.max_batch, co.k, co.interval, co.prune_layer, co.patience),
                         (1, 256, 1, -1, 2))
        self.assertAlmostEqual(co.threshold, 0.9, places=6)
        so = eevp.eevp_spec_options()
        self.assertEqual(eevp.lib.eevp_spec_options_init(ctypes.byref(so)), 0)
        self.assertEqual(so.struct_size, ctypes.sizeof(so))
        self.assertEqual((so.max_batch, so.max_draft, so.max_set, so.n_layers, so.top_k, so.seed),
                         (1, 4, 256, 0, 0, 0))
        self.assertEqual((so.temperature, so.top_p), (0.0, 1.0))
        self.assertFalse(so.allocator)


class Constants(unittest.TestCase):
    def defines(self):
        out = {}
        for m in re.finditer(r"^#define (EEVP_\w+)\s+\(?(-?\d+)u?\)?\s*$", header_text(), re.M):
            out[m.group(1)] = int(m.group(2))
        return out

    def test_status_codes_and_flags(self):
        d = self.defines()
        self.assertIn("EEVP_EBUSY", d)
        for name, value in d.items():
            short = name[len("EEVP_"):]
            if short.startswith("VERSION_"):
                continue
            with self.subTest(name=name):
                self.assertEqual(getattr(eevp, short), value)

    def test_enums(self):
        enums = {"eevp_norm": eevp.Norm, "eevp_criterion": eevp.Criterion,
                 "eevp_schedule": eevp.Schedule, "eevp_final": eevp.Final,
                 "eevp_reason": eevp.Reason, "eevp_static": getattr(eevp, "Static", None),
                 "eevp_weight": getattr(eevp, "Weight", None)}
        found = re.findall(r"typedef enum (\w+)\s*\{(.*?)\}\s*\w+\s*;", header_text(), re.S)
        self.assertTrue(found)
        for name, body in found:
            with self.subTest(enum=name):
                cls = enums.get(name)
                self.assertIsNotNone(cls, "no Python enum for %s" % name)
                prefix = "EEVP_" + name[len("eevp_"):].upper() + "_"
                members = dict(re.findall(r"(EEVP_\w+)\s*=\s*(-?\d+)", body))
                self.assertTrue(members)
                for cname, value in members.items():
                    short = cname[len(prefix):] if cname.startswith(prefix) else cname
                    self.assertEqual(int(cls[short]), int(value), cname)
                self.assertEqual(len(cls), len(members))

    def test_every_status_code_has_its_exception(self):
        classes = {eevp.EINVAL: eevp.InvalidArgument, eevp.ERANGE: eevp.OutOfRange,
                   eevp.EOVERFLOW: eevp.Overflow, eevp.ENOMEM: eevp.OutOfMemory,
                   eevp.ESTRUCT: eevp.StructSizeError, eevp.ESTATE: eevp.StateError,
                   eevp.EUSER: eevp.UserCallbackError, eevp.ECALLBACK: eevp.CallbackResultError,
                   eevp.ENONFINITE: eevp.NonFiniteError, eevp.EBUSY: eevp.BusyError,
                   eevp.ERECORD: eevp.RecordError}
        for code, cls in classes.items():
            e = eevp.error_for(code, "detail")
            self.assertIs(type(e), cls)
            self.assertIsInstance(e, eevp.EevpError)
            self.assertEqual(e.code, code)
            self.assertEqual(e.message, "detail")
            self.assertIn(eevp.strerror(code), str(e))
            self.assertIn("detail", str(e))
        unknown = eevp.error_for(-99)
        self.assertIs(type(unknown), eevp.EevpError)
        self.assertTrue(eevp.strerror(-99))


class Functions(unittest.TestCase):
    def test_every_api_function_is_bound_with_its_arity(self):
        text = header_text()
        decls = re.findall(r"\bEEVP_API\b([^;{}]*?)\b(eevp_\w+)\s*\(([^)]*)\)\s*;", text)
        self.assertGreater(len(decls), 30)
        for _, name, params in decls:
            with self.subTest(function=name):
                self.assertTrue(name in eevp._FUNCTIONS, "%s is not bound" % name)
                params = params.strip()
                n = 0 if params in ("", "void") else params.count(",") + 1
                self.assertEqual(len(eevp._FUNCTIONS[name][1]), n)

    def test_symbols_list_matches(self):
        path = os.path.join(ROOT, "tests", "symbols.txt")
        if not os.path.exists(path):
            self.skipTest("no tests/symbols.txt")
        with open(path) as f:
            names = {l.strip() for l in f if l.strip()}
        self.assertEqual(set(eevp._FUNCTIONS) - names, set())
        self.assertEqual(names - set(eevp._FUNCTIONS), set())


def run_python(code, env_update, cwd=None):
    env = dict(os.environ)
    env.pop("EEVP_LIBRARY", None)
    env["PYTHONPATH"] = os.path.join(ROOT, "src", "python")
    env.update(env_update)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, cwd=cwd or tempfile.gettempdir())


class Loading(unittest.TestCase):
    def test_version(self):
        self.assertEqual(eevp.library_version_number() // 10000, eevp.ABI_MAJOR)
        major, minor, patch = map(int, eevp.library_version().split("."))
        self.assertEqual(major * 10000 + minor * 100 + patch, eevp.library_version_number())
        with open(HEADER) as f:
            text = f.read()
        hdr = [int(re.search(r"#define EEVP_VERSION_%s (\d+)" % k, text).group(1))
               for k in ("MAJOR", "MINOR", "PATCH")]
        self.assertEqual(hdr[0], eevp.ABI_MAJOR)

    def test_in_tree_library_found_without_the_variable(self):
        intree = os.path.join(ROOT, "lib", "libeevp.so.1")
        if not os.path.exists(intree):
            self.skipTest("not a built source checkout")
        # The loader and pkg-config come first (test_packaging.Lookup): without
        # either finding an installed copy, a checkout uses its own lib/.
        env = {"PKG_CONFIG": "false", "LD_LIBRARY_PATH": ""}
        if run_python("import ctypes; ctypes.CDLL('libeevp.so.1')", env).returncode == 0:
            self.skipTest("an installed libeevp.so.1 is on the loader's path")
        r = run_python("import eevp; print(eevp.library_path())", env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(os.path.realpath(r.stdout.strip()), os.path.realpath(intree))

    def test_variable_may_name_a_directory(self):
        libdir = os.path.dirname(eevp.library_path())
        if not os.path.isdir(libdir):
            self.skipTest("library loaded by name")
        r = run_python("import eevp; print(eevp.library_path())", {"EEVP_LIBRARY": libdir})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), os.path.join(libdir, "libeevp.so.1"))

    def test_variable_naming_nothing_fails_clearly(self):
        r = run_python("import eevp", {"EEVP_LIBRARY": "/nonexistent/libeevp.so.1"})
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("ImportError", r.stderr)
        self.assertIn("EEVP_LIBRARY=/nonexistent/libeevp.so.1", r.stderr)

    @unittest.skipUnless(CC, "no C compiler")
    def test_other_major_version_refused_naming_both(self):
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "fake.c")
            so = os.path.join(tmp, "libeevp.so.2")
            with open(src, "w") as f:
                f.write(textwrap.dedent("""\
                    #include <stdint.h>
                    uint32_t eevp_version_number(void) { return 20301; }
                    const char *eevp_version_string(void) { return "2.3.1"; }
                    """))
            subprocess.run([CC, "-shared", "-fPIC", src, "-o", so], check=True)
            r = run_python("import eevp", {"EEVP_LIBRARY": so})
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("ImportError", r.stderr)
        self.assertIn("2.3.1", r.stderr)
        self.assertIn("major version 1", r.stderr)
        self.assertIn(eevp.__version__, r.stderr)


if __name__ == "__main__":
    unittest.main()
