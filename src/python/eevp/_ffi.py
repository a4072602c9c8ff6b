# SPDX-License-Identifier: MIT
"""The C layer: include/eevp.h's constants, enumerations and structs
mirrored field for field, every function's ctypes signature, and the
loading of libeevp.so.1.

Everything here is re-exported by the package (eevp.lib, eevp.EINVAL,
eevp.eevp_head_options, ...); tests/python/test_abi.py checks it against the
header.  Where the library is looked for: docs/PYTHON.md, section 1.
"""

from __future__ import annotations

import ctypes
import enum
import os
import shlex
import subprocess
from ctypes import (CFUNCTYPE, POINTER, Structure, c_char_p, c_double, c_float, c_int,
                    c_int32, c_int64, c_size_t, c_uint32, c_uint64, c_void_p)

from . import _install
from ._version import __version__

#: The library major version this binding mirrors (soname libeevp.so.1).
ABI_MAJOR = 1
_SONAME = "libeevp.so.%d" % ABI_MAJOR

# --------------------------------------------------------------------------
# Constants (include/eevp.h)
# --------------------------------------------------------------------------

OK = 0
EINVAL = -1
ERANGE = -2
EOVERFLOW = -3
ENOMEM = -4
ESTRUCT = -5
ESTATE = -6
EUSER = -7
ECALLBACK = -8
ENONFINITE = -9
EBUSY = -10
ERECORD = -11

MAX_VOCAB = 2**31 - 1
MAX_DIM = 1 << 24
MAX_BATCH = 4096
MAX_LAYERS = 4096

MAX_LIST = 65536
MAX_THREADS = 64
MAX_DRAFT = 7
MAX_SHARDS = 256
SHARD_FORMAT = 1

HEAD_COPY = 1
HEAD_NO_SIMD = 2
CTX_BATCH_INVARIANT = 1
CTX_EXACT_EXIT = 2
CTX_SCREEN = 4
NEEDS_LOGITS = 1
NEEDS_PREV_HIDDEN = 2


class Norm(enum.IntEnum):
    NONE = 0
    RMS = 1
    LAYER = 2


class Weight(enum.IntEnum):
    """Storage of W (eevp_weight)."""
    F32 = 0
    F16 = 1
    BF16 = 2


class Criterion(enum.IntEnum):
    """The built-in exit criteria (eevp_criterion)."""
    TOP2_GAP = 0
    MAX_PROB = 1
    ENTROPY = 2
    SATURATION = 3
    STABILITY = 4
    JS = 5
    CUSTOM = 6


class Schedule(enum.IntEnum):
    CONSTANT = 0
    CALM = 1


class Final(enum.IntEnum):
    FULL = 0
    PRUNED = 1


class Static(enum.IntEnum):
    """Use of the static candidate list (eevp_static)."""
    NONE = 0
    UNION = 1
    ONLY = 2


class Reason(enum.IntEnum):
    RUNNING = 0
    CONFIDENT = 1
    LAST_LAYER = 2
    ERROR = 3


# --------------------------------------------------------------------------
# Structs: field for field the header's, struct_size first
# --------------------------------------------------------------------------

_alloc_fn = CFUNCTYPE(c_void_p, c_void_p, c_size_t)
_free_fn = CFUNCTYPE(None, c_void_p, c_void_p)


class eevp_allocator(Structure):
    _fields_ = [("alloc", _alloc_fn), ("free", _free_fn), ("opaque", c_void_p)]


class eevp_head_options(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("flags", c_uint32),
        ("n_vocab", c_int64),
        ("dim", c_int64),
        ("row_stride", c_int64),
        ("weights", POINTER(c_float)),
        ("vocab_offset", c_int64),
        ("norm", c_int32),
        ("norm_eps", c_float),
        ("norm_weight", POINTER(c_float)),
        ("norm_bias", POINTER(c_float)),
        ("logit_bias", POINTER(c_float)),
        ("logit_scale", c_float),
        ("softcap", c_float),
        ("allocator", POINTER(eevp_allocator)),
        ("weight_type", c_int32),
        ("weights_half", POINTER(ctypes.c_uint16)),
        ("screen_mult", c_int32),
    ]


class eevp_ctx_options(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("n_layers", c_int32),
        ("max_batch", c_int32),
        ("k", c_int32),
        ("first_layer", c_int32),
        ("interval", c_int32),
        ("prune_layer", c_int32),
        ("final_policy", c_int32),
        ("criterion", c_int32),
        ("threshold", c_float),
        ("schedule", c_int32),
        ("schedule_tau", c_float),
        ("max_length", c_int32),
        ("patience", c_int32),
        ("allocator", POINTER(eevp_allocator)),
        ("flags", c_uint32),
        ("always_ids", POINTER(c_int32)),
        ("n_always", c_int32),
        ("static_mode", c_int32),
        ("static_ids", POINTER(c_int32)),
        ("n_static", c_int32),
        ("reprune_layer", c_int32),
        ("reprune_every", c_int32),
        ("adaptive_mass", c_float),
        ("k_min", c_int32),
        ("reserved_1_0", c_uint32),
        ("n_threads", c_int32),
        ("reserved_1_1", c_uint32),
    ]


class eevp_result(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("reason", c_int32),
        ("status", c_int32),
        ("token", c_int32),
        ("layer", c_int32),
        ("pruned", c_int32),
        ("confidence", c_float),
        ("threshold", c_float),
        ("pruned_token", c_int32),
        ("set_size", c_int32),
    ]


class eevp_exit_view(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("seq", c_int32),
        ("layer", c_int32),
        ("n_layers", c_int32),
        ("position", c_int32),
        ("dim", c_int32),
        ("hidden", POINTER(c_float)),
        ("prev_hidden", POINTER(c_float)),
        ("n", c_int32),
        ("pruned", c_int32),
        ("logits", POINTER(c_float)),
        ("ids", POINTER(c_int32)),
        ("top1_id", c_int32),
        ("top2_id", c_int32),
        ("top1_logit", c_float),
        ("top2_logit", c_float),
        ("log_sum_exp", c_float),
        ("threshold", c_float),
    ]


_decide_fn = CFUNCTYPE(c_int, c_void_p, POINTER(eevp_exit_view), POINTER(c_float),
                       POINTER(c_int32))
_reset_fn = CFUNCTYPE(None, c_void_p, c_int32)
_destroy_fn = CFUNCTYPE(None, c_void_p)


class eevp_criterion_vtbl(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("name", c_char_p),
        ("needs", c_uint32),
        ("decide", _decide_fn),
        ("reset", _reset_fn),
        ("destroy", _destroy_fn),
    ]


class eevp_stats(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("n_layers", c_int32),
        ("tokens", c_int64),
        ("exited_early", c_int64),
        ("reached_last", c_int64),
        ("failed", c_int64),
        ("checks", c_int64),
        ("pruned_decisions", c_int64),
        ("k_coverage_hits", c_int64),
        ("k_coverage_total", c_int64),
        ("k_coverage_final", c_double),
        ("head_flops", c_int64),
        ("head_flops_baseline", c_int64),
        ("head_bytes", c_int64),
        ("head_bytes_baseline", c_int64),
        ("pruned_sets", c_int64),
        ("set_size_sum", c_int64),
        ("reprunes", c_int64),
        ("reprune_changed", c_int64),
        ("always_emitted", c_int64),
        ("static_emitted", c_int64),
        ("exact_exits", c_int64),
        ("exact_exit_changed", c_int64),
        ("shard_exchanges", c_int64),
        ("shard_bytes_sent", c_int64),
        ("shard_bytes_received", c_int64),
    ]


class eevp_spec_options(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("max_batch", c_int32),
        ("max_draft", c_int32),
        ("max_set", c_int32),
        ("n_layers", c_int32),
        ("temperature", c_float),
        ("top_k", c_int32),
        ("top_p", c_float),
        ("seed", c_uint64),
        ("allocator", POINTER(eevp_allocator)),
    ]


class eevp_spec_result(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("status", c_int32),
        ("n_drafted", c_int32),
        ("n_accepted", c_int32),
        ("token", c_int32),
        ("reserved", c_int32),
    ]


class eevp_spec_stats(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("n_layers", c_int32),
        ("rounds", c_int64),
        ("drafted", c_int64),
        ("accepted", c_int64),
        ("emitted", c_int64),
        ("verify_rows", c_int64),
        ("failed", c_int64),
    ]


class eevp_shard_options(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("shard_index", c_int32),
        ("n_shards", c_int32),
        ("top_k", c_int32),
        ("total_vocab", c_int64),
    ]


# --------------------------------------------------------------------------
# Loading the library
# --------------------------------------------------------------------------

_P = c_void_p  # handles and data pointers cross as plain addresses
_FUNCTIONS = {
    "eevp_version_number": (c_uint32, []),
    "eevp_version_string": (c_char_p, []),
    "eevp_strerror": (c_char_p, [c_int]),
    "eevp_head_options_init": (c_int, [POINTER(eevp_head_options)]),
    "eevp_head_create": (c_int, [POINTER(c_void_p), POINTER(eevp_head_options), c_char_p,
                                 c_size_t]),
    "eevp_head_free": (None, [_P]),
    "eevp_head_n_vocab": (c_int64, [_P]),
    "eevp_head_dim": (c_int64, [_P]),
    "eevp_head_vocab_offset": (c_int64, [_P]),
    "eevp_head_memory": (c_int64, [_P]),
    "eevp_ctx_options_init": (c_int, [POINTER(eevp_ctx_options)]),
    "eevp_ctx_memory_estimate": (c_int, [POINTER(c_int64), _P, POINTER(eevp_ctx_options)]),
    "eevp_ctx_create": (c_int, [POINTER(c_void_p), _P, POINTER(eevp_ctx_options), c_char_p,
                                c_size_t]),
    "eevp_ctx_free": (None, [_P]),
    "eevp_ctx_errmsg": (c_char_p, [_P]),
    "eevp_ctx_reset": (c_int, [_P]),
    "eevp_ctx_layer_required": (c_int, [_P, c_int32]),
    "eevp_ctx_memory": (c_int64, [_P]),
    "eevp_step_begin": (c_int, [_P, c_int32, _P]),
    "eevp_step_layer": (c_int, [_P, c_int32, _P, c_int64, c_int32, _P]),
    "eevp_step_n_running": (c_int32, [_P]),
    "eevp_step_end": (c_int, [_P]),
    "eevp_step_abandon": (c_int, [_P]),
    "eevp_step_result": (c_int, [_P, c_int32, POINTER(eevp_result)]),
    "eevp_step_candidates": (c_int, [_P, c_int32, c_int32, _P, _P, POINTER(c_int32)]),
    "eevp_ctx_set_criterion": (c_int, [_P, POINTER(eevp_criterion_vtbl), _P]),
    "eevp_ctx_threshold": (c_int, [_P, c_int32, POINTER(c_float)]),
    "eevp_head_workspace_size": (c_int64, [_P, c_int32]),
    "eevp_head_logits": (c_int, [_P, c_int32, _P, c_int64, _P, c_int64, _P]),
    "eevp_head_gather": (c_int, [_P, _P, c_int32, _P, c_int64, _P]),
    "eevp_head_pruned_logits": (c_int, [_P, c_int32, _P, c_int64, _P, c_int32, _P, c_int64,
                                        _P, c_int64, _P]),
    "eevp_head_screen_workspace_size": (c_int64, [_P, c_int32]),
    "eevp_head_screen": (c_int, [_P, _P, c_int32, _P, _P, _P]),
    "eevp_topk_workspace_size": (c_int64, [c_int64, c_int32]),
    "eevp_topk": (c_int, [_P, c_int64, c_int32, c_int64, _P, _P, _P]),
    "eevp_ctx_stats": (c_int, [_P, POINTER(eevp_stats)]),
    "eevp_ctx_exit_histogram": (c_int, [_P, _P, c_int32]),
    "eevp_ctx_set_size_histogram": (c_int, [_P, _P, c_int32]),
    "eevp_ctx_stats_reset": (c_int, [_P]),
    # lossless early exit (since 1.2)
    "eevp_spec_options_init": (c_int, [POINTER(eevp_spec_options)]),
    "eevp_spec_create": (c_int, [POINTER(c_void_p), _P, POINTER(eevp_spec_options), c_char_p,
                                 c_size_t]),
    "eevp_spec_free": (None, [_P]),
    "eevp_spec_errmsg": (c_char_p, [_P]),
    "eevp_spec_memory": (c_int64, [_P]),
    "eevp_spec_round": (c_int, [_P, c_int32, c_uint64, c_int32]),
    "eevp_spec_draft": (c_int, [_P, c_int32, _P, c_int32, POINTER(c_int32), POINTER(c_int32)]),
    "eevp_spec_add_draft": (c_int, [_P, c_int32, c_int32, c_int32]),
    "eevp_spec_n_drafts": (c_int32, [_P, c_int32]),
    "eevp_spec_verify": (c_int, [_P, c_int32, _P, _P, c_int64, POINTER(eevp_spec_result)]),
    "eevp_spec_stats_get": (c_int, [_P, POINTER(eevp_spec_stats)]),
    "eevp_spec_layer_stats": (c_int, [_P, _P, _P, c_int32]),
    "eevp_spec_stats_reset": (c_int, [_P]),
    # vocabulary-parallel heads (since 1.2)
    "eevp_shard_options_init": (c_int, [POINTER(eevp_shard_options)]),
    "eevp_ctx_create_shard": (c_int, [POINTER(c_void_p), _P, POINTER(eevp_ctx_options),
                                      POINTER(eevp_shard_options), c_char_p, c_size_t]),
    "eevp_shard_record_capacity": (c_int64, [_P]),
    "eevp_shard_layer": (c_int, [_P, c_int32, _P, c_int64, c_int32, _P, _P, c_int64,
                                 POINTER(c_int64)]),
    "eevp_shard_merge": (c_int, [_P, _P, c_int64]),
    "eevp_shard_absorb": (c_int, [_P, _P, c_int64, _P, c_int64, POINTER(c_int64)]),
}


def _pkg_config_libdir():
    """(libdir, None) from `pkg-config --variable=libdir eevp` ($PKG_CONFIG
    when set), or (None, why not)."""
    cmd = shlex.split(os.environ.get("PKG_CONFIG") or "pkg-config")
    what = "pkg-config (%s)" % " ".join(cmd + ["--variable=libdir", "eevp"])
    try:
        r = subprocess.run(cmd + ["--variable=libdir", "eevp"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           universal_newlines=True, timeout=30)
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        return None, "%s: %s" % (what, e)
    libdir = r.stdout.strip()
    if r.returncode != 0 or not libdir:
        return None, "%s: no libdir, no eevp.pc on its path (PKG_CONFIG_PATH)" % what
    return libdir, None


def _library_candidates():
    """(path, origin) pairs in search order, made lazily (pkg-config runs only
    when the loader failed); EEVP_LIBRARY alone when it is set.  A path of
    None: pkg-config gave none, and origin says why."""
    env = os.environ.get("EEVP_LIBRARY")
    if env:
        if os.path.isdir(env):
            env = os.path.join(env, _SONAME)
        yield env, "EEVP_LIBRARY"
        return
    yield _SONAME, "the loader"
    if _install.LIBDIR:
        yield os.path.join(_install.LIBDIR, _SONAME), "the libdir of make install"
    libdir, why_not = _pkg_config_libdir()
    yield (os.path.join(libdir, _SONAME) if libdir else None), why_not or "pkg-config's libdir"
    here = os.path.dirname(os.path.abspath(__file__))
    in_tree = os.path.normpath(os.path.join(here, "..", "..", "..", "lib", _SONAME))
    if os.path.exists(in_tree):
        yield in_tree, "the source checkout"


class _Dl_info(Structure):
    _fields_ = [("dli_fname", c_char_p), ("dli_fbase", c_void_p), ("dli_sname", c_char_p),
                ("dli_saddr", c_void_p)]


def _loaded_from(lib, name):
    """The file the loader opened for `lib` (dladdr), else `name`."""
    try:
        dladdr = ctypes.CDLL(None).dladdr
        dladdr.argtypes, dladdr.restype = [c_void_p, POINTER(_Dl_info)], c_int
        info = _Dl_info()
        addr = ctypes.cast(lib.eevp_version_number, c_void_p).value
        if dladdr(addr, ctypes.byref(info)) and info.dli_fname:
            return os.fsdecode(info.dli_fname)
    except (AttributeError, OSError, ValueError):
        pass
    return name


def _missing(name, path, version):
    def call(*args):
        raise NotImplementedError("%s: the loaded libeevp %s (%s) does not have it"
                                  % (name, version, path))
    call.__name__ = name
    return call


def _load():
    errors = []
    for path, origin in _library_candidates():
        if path is None:  # a place that gave no path: say why
            errors.append(origin)
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            if origin == "EEVP_LIBRARY":
                raise ImportError("eevp: cannot load EEVP_LIBRARY=%s: %s" % (path, e)) from None
            errors.append("%s (%s): %s" % (path, origin, e))
            continue
        try:
            fn = lib.eevp_version_number
            fn.restype, fn.argtypes = c_uint32, []
            sfn = lib.eevp_version_string
            sfn.restype, sfn.argtypes = c_char_p, []
        except AttributeError:
            raise ImportError("eevp: %s (%s) is not libeevp: no eevp_version_number"
                              % (path, origin)) from None
        path = _loaded_from(lib, path)
        number, text = fn(), sfn().decode()
        if number // 10000 != ABI_MAJOR:
            raise ImportError(
                "eevp: %s (%s) is libeevp %s (major version %d), but this binding (eevp %s) "
                "needs major version %d" % (path, origin, text, number // 10000, __version__,
                                            ABI_MAJOR))
        for name, (restype, argtypes) in _FUNCTIONS.items():
            try:
                f = getattr(lib, name)
            except AttributeError:
                # An older minor version: the call fails, the rest works.
                setattr(lib, name, _missing(name, path, text))
                continue
            f.restype, f.argtypes = restype, argtypes
        return lib, path
    raise ImportError("eevp: libeevp not found; tried:\n  " + "\n  ".join(errors) +
                      "\nInstall it (make install, or a distribution package), point "
                      "EEVP_LIBRARY at libeevp.so.%d, or build a checkout (make)." % ABI_MAJOR)


#: The loaded library, every function's argtypes/restype set.
lib, _lib_path = _load()


def library_path() -> str:
    """The path (or name) the library was loaded from."""
    return _lib_path


def library_version() -> str:
    """Version of the loaded library, "MAJOR.MINOR.PATCH"."""
    return lib.eevp_version_string().decode()


def library_version_number() -> int:
    """Version of the loaded library, MAJOR*10000 + MINOR*100 + PATCH."""
    return int(lib.eevp_version_number())

