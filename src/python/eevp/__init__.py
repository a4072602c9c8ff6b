# SPDX-License-Identifier: MIT
"""eevp - Python binding for libeevp (early-exit confidence with dynamic
vocabulary pruning), pure standard library over ctypes.

    import eevp
    head = eevp.Head(W, norm="rms", norm_weight=w)      # W: V x d float32, borrowed
    ctx = eevp.Context(head, n_layers=L, first_layer=4, k=256)
    with ctx.step(n_seq) as step:
        for layer in ctx.required_layers:
            if step.n_running == 0:
                break
            for r in step.layer(layer, hidden_after(layer)):
                ...                                     # r.seq resolved: r.token
    tokens = [r.token for r in step.results()]

The C header include/eevp.h is the reference for what every call computes;
docs/PYTHON.md describes this binding: how the library is found, the objects,
the zero-copy rules for arrays and buffers, callbacks and exceptions.

numpy is optional: float32 numpy arrays are used in place (no copy); without
numpy any buffer of C floats (array.array('f'), memoryview format 'f') works.

Modules: _ffi (the header's constants, enums and structs, the function
signatures, loading the library), _arrays (arguments: integers, arrays and
buffers), errors, head (Head, topk), criterion (criteria written in Python),
context (Context, Step and the results), spec (Verifier: lossless early
exit, drafts verified by the full head), shard (ShardContext, merge,
merge_all: vocabulary-parallel heads, one decision from P shards).  Every public name is re-exported
here: use them as eevp.Head, eevp.StateError, eevp.lib, ...
"""

from ._version import __version__
from ._ffi import (ABI_MAJOR, CTX_BATCH_INVARIANT, CTX_EXACT_EXIT, CTX_SCREEN, EBUSY, ECALLBACK,
                   EINVAL, ENOMEM, ENONFINITE, EOVERFLOW, ERANGE, ERECORD, ESTATE, ESTRUCT, EUSER,
                   HEAD_COPY, HEAD_NO_SIMD, MAX_BATCH, MAX_DIM, MAX_DRAFT, MAX_LAYERS, MAX_LIST,
                   MAX_SHARDS, MAX_THREADS, MAX_VOCAB, NEEDS_LOGITS, NEEDS_PREV_HIDDEN, OK,
                   SHARD_FORMAT, Criterion, Final, Norm, Reason, Schedule, Static, Weight,
                   eevp_allocator, eevp_criterion_vtbl, eevp_ctx_options, eevp_exit_view,
                   eevp_head_options, eevp_result, eevp_shard_options, eevp_spec_options,
                   eevp_spec_result, eevp_spec_stats, eevp_stats, lib, library_path,
                   library_version, library_version_number)
from .errors import (BusyError, CallbackResultError, EevpError, InvalidArgument, NonFiniteError,
                     OutOfMemory, OutOfRange, Overflow, RecordError, StateError, StructSizeError,
                     UserCallbackError, error_for, strerror)
from .head import Head, topk, topk_workspace_size
from .criterion import CustomCriterion, ExitView
from .context import Candidates, Context, Result, Stats, Step
from .spec import SpecResult, SpecStats, Verifier
from .shard import ShardContext, ShardStep, merge, merge_all
# Internals that tests/python reads: the bound signatures, the array describer.
from ._ffi import _FUNCTIONS
from ._arrays import _matrix

__all__ = [
    "Head", "Context", "Step", "Result", "Stats", "ExitView", "CustomCriterion",
    "Candidates", "Verifier", "SpecResult", "SpecStats", "ShardContext", "ShardStep", "merge",
    "merge_all", "Norm", "Weight", "Criterion",
    "Schedule", "Final", "Static", "Reason", "topk", "topk_workspace_size", "strerror", "library_version", "library_version_number",
    "library_path", "error_for", "EevpError", "InvalidArgument", "OutOfRange", "Overflow",
    "OutOfMemory", "StructSizeError", "StateError", "UserCallbackError",
    "CallbackResultError", "NonFiniteError", "BusyError", "RecordError",
]
