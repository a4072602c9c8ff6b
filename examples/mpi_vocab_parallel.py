#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""mpi_vocab_parallel.py - one early-exit decision from P vocabulary shards,
one per MPI rank (mpi4py), checked against the unsharded head: the loop of
examples/mpi_vocab_parallel.c in Python, on its synthetic source.

Every rank holds a block of consecutive rows of a synthetic LM head W
(V x d: RMS norm with a weight, a logit bias with a few ids masked, a
soft-cap, and rows of the upper half repeating rows of the lower half, so
that exact ties cross shard boundaries) and makes an eevp.Head over it
(vocab_offset = the block's first row) and an eevp.ShardContext on it, with
the same options on every rank.  Per token, for each layer the context
requires: ShardContext.layer() gives this rank's record; while there is
one, the ranks merge their records and every rank hands the merged one to
absorb(), which may return the record of a second exchange at the same
layer (exact-token exits, saturation exits).  The exchange is either

  allreduce  comm.Allreduce with an MPI.Op (commutative) whose function
             calls eevp.merge record by record, over a contiguous datatype
             of the record's size, so that MPI never splits a record; or
  allgather  comm.allgather of the records (bytes), then eevp.merge_all in
             rank order on every rank (and, as a check, in reverse rank
             order: the merge gives the same bytes in any order).

The split: rank r of P holds rows [V T(r) / T(P), V T(r+1) / T(P)),
T(n) = n (n + 1) / 2, rounded down (uneven on purpose: P = 4 gives 10 %,
20 %, 30 %, 40 %), as in the C example.

Every rank also runs an ordinary eevp.Context on the whole head with the
same options and hidden states, and compares: tokens, exit layers, reasons,
set sizes, pruned tokens, thresholds and candidates identical; confidences
equal on a pruned decision and within 1e-6 on a full-vocabulary one (a
decision that differs while a confidence lies within 1e-6 of its threshold
is reported, not failed on).  Every rank must read the same decisions
(checked through MPI after every token).  Rank 0 prints each token's
decision and, per configuration, each rank's exchanges and bytes.  The exit
status is 1 on any mismatch on any rank.

    OPENBLAS_NUM_THREADS=1 mpirun -n 3 python3 examples/mpi_vocab_parallel.py [options]

With Open MPI as root add --allow-run-as-root, and --oversubscribe for more
ranks than cores.  `make check-mpi-python` runs 1 .. 4 ranks both ways.
Without mpi4py the program says so and exits 0 (skipped), or 1 when
EEVP_REQUIRE_MPI is set.

Options:
  --allgather             exchange by allgather + merge_all (default: Allreduce)
  --config NAME           one configuration (default: every one; --list)
  --tokens N              tokens per sequence (8); two sequences decode together
  --quiet                 no per-token lines
  --vocab V --dim D --layers L --seed S    the synthetic head (4099 64 10 1)
  --fault hidden|drop     a deliberate fault, to see the checks fail (P >= 2):
                          the last rank hands its shard context a hidden state
                          one ulp off, or (--allgather) the merge leaves out
                          the last rank's record
"""
import argparse
import array
import math
import os
import random
import struct
import sys

try:
    import mpi4py
    from mpi4py import MPI
except ImportError:
    MPI = None

try:
    import eevp
except ImportError:  # run from a source checkout without PYTHONPATH
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src",
                                    "python"))
    import eevp

CONF_TOL = 1e-6
BATCH = 2  # sequences decoded together

# name, options (eevp_ctx_options' fields), shard top_k: the C example's
# configurations, with its thresholds for the synthetic source.
CONFIGS = [
    ("gap-k64", dict(criterion="top2_gap", k=64, threshold=0.5), 0),
    ("gap-k0", dict(criterion="top2_gap", k=0, threshold=0.5), 0),
    ("gap-k64-pruned", dict(criterion="top2_gap", k=64, final_policy="pruned", threshold=0.5), 0),
    ("gap-k64-exact", dict(criterion="top2_gap", k=64, exact_exit=True, threshold=0.3), 0),
    ("maxprob-k64", dict(criterion="max_prob", k=64, final_policy="pruned", threshold=0.6), 0),
    ("maxprob-k0-calm", dict(criterion="max_prob", k=0, schedule="calm", threshold=0.6), 0),
    ("entropy-k0", dict(criterion="entropy", k=0, threshold=0.55), 16),
    ("entropy-k64", dict(criterion="entropy", k=64, threshold=0.4), 0),
    ("stability-k64", dict(criterion="stability", k=64, final_policy="pruned", patience=2), 0),
    ("stability-k0", dict(criterion="stability", k=0, patience=3), 0),
    ("js-k64", dict(criterion="js", k=64, threshold=0.95), 0),
    ("saturation-k0", dict(criterion="saturation", k=0, threshold=0.6), 0),
    ("gap-k32-p1-reprune", dict(criterion="top2_gap", k=32, final_policy="pruned",
                                prune_layer=1, reprune_every=2, threshold=0.5), 0),
]
FIRST = {"gap-k32-p1-reprune": 3}  # first checked layer; 2 otherwise


def block_of(V, P, r):
    """Rank r's rows [r0, r1): about (r + 1) / T(P) of the vocabulary."""
    tp = P * (P + 1) // 2
    return V * (r * (r + 1) // 2) // tp, V * ((r + 1) * (r + 2) // 2) // tp


def f32_bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0]


class Source:
    """The synthetic head and hidden states, the same on every rank (drawn
    from string seeds, which do not depend on the process)."""

    def __init__(self, V, d, L, seed):
        self.V, self.d, self.L, self.seed = V, d, L, seed
        rng = random.Random("head:%d" % seed)
        scale = 3.0 / math.sqrt(d)
        W = [scale * rng.gauss(0.0, 1.0) for _ in range(V * d)]
        self.norm_w = array.array("f", [1.0 + 0.1 * rng.gauss(0.0, 1.0) for _ in range(d)])
        bias = [-math.inf if v % 1009 == 7 else 0.2 * rng.gauss(0.0, 1.0) for v in range(V)]
        # Exact ties across shards: every 16th row of the upper half repeats
        # a row of the lower half (bias included); the order breaks them by id.
        half = V // 2
        for v in range(V - half, V, 16):
            W[v * d:(v + 1) * d] = W[(v - half) * d:(v - half + 1) * d]
            bias[v] = bias[v - half]
        self.W = array.array("f", W)
        self.bias = array.array("f", bias)

    def head(self, r0, r1):
        """A head over rows [r0, r1) (borrowed, in place), the one transform."""
        return eevp.Head(memoryview(self.W)[r0 * self.d:r1 * self.d], dim=self.d,
                         vocab_offset=r0, norm="rms", norm_eps=1e-5, norm_weight=self.norm_w,
                         logit_bias=memoryview(self.bias)[r0:r1], softcap=30.0)

    def target(self, token, pos):
        """The token to predict after `token` at `pos`, and its pace."""
        rng = random.Random("target:%d:%d:%d" % (self.seed, token, pos))
        t = rng.randrange(self.V)
        if t % 4 == 0:  # a quarter of the targets have a twin row: an exact tie
            half = self.V // 2
            t = (self.V - half) + 16 * (t // 4 % max(half // 16, 1)) - half
        while self.bias[t] == -math.inf:
            t = (t + 1) % self.V
        return t, 0.02 + 0.3 * rng.random()

    def hidden(self, token, pos, layer):
        """The hidden state after `layer`: noise plus a drift towards the
        target's row at the target's pace."""
        t, pace = self.target(token, pos)
        rng = random.Random("hidden:%d:%d:%d:%d" % (self.seed, token, pos, layer))
        drift = pace * (layer + 1) * math.sqrt(self.d) / 3.0
        row = self.W[t * self.d:(t + 1) * self.d]
        return [rng.gauss(0.0, 1.0) + drift * w for w in row]


class Exchange:
    """Merging every rank's record of an exchange, by Allreduce or allgather."""

    def __init__(self, comm, allgather, fault):
        self.comm, self.allgather, self.fault = comm, allgather, fault
        self.types = {}            # record size -> committed contiguous datatype
        self.size = 0              # the record size of the Allreduce in progress
        self.order_mismatches = 0
        self.op = MPI.Op.Create(self._merge_op, commute=True)

    def _merge_op(self, inbuf, inoutbuf, datatype):
        # inout[i] = merge(inout[i], in[i]) for each record; no MPI call here.
        a, b, n = memoryview(inoutbuf).cast("B"), memoryview(inbuf).cast("B"), self.size
        for i in range(0, len(a), n):
            eevp.merge(a[i:i + n], b[i:i + n])  # an error record is absorbed later

    def __call__(self, rec):
        P = self.comm.Get_size()
        if not self.allgather:
            n = self.size = len(rec)
            dt = self.types.get(n)
            if dt is None:
                dt = self.types[n] = MPI.BYTE.Create_contiguous(n).Commit()
            merged = bytearray(n)
            self.comm.Allreduce([rec, 1, dt], [merged, 1, dt], op=self.op)
            return bytes(merged)
        recs = self.comm.allgather(rec)
        if self.fault == "drop" and P > 1:
            recs = recs[:-1]
        merged = eevp.merge_all(recs)
        if eevp.merge_all(reversed(recs)) != merged:
            self.order_mismatches += 1
        return merged

    def free(self):
        for dt in self.types.values():
            dt.Free()
        self.op.Free()


def agree(comm, value, what):
    """Every rank must hold the same value, else they would no longer call
    the same collectives."""
    values = comm.allgather(value)
    if any(v != values[0] for v in values):
        sys.stderr.write("mpi_vocab_parallel: rank %d: the ranks disagree on %s: %r\n"
                         % (comm.Get_rank(), what, values))
        comm.Abort(3)


def read_cands(step, seq):
    """The best 4096 candidates of a resolved sequence (None after its error)."""
    try:
        return step.candidates(seq, 4096)
    except eevp.EevpError:
        return None


def compare(rs, ru, cs, cu, exact_exit):
    """(verdict, why, near): 0 the same, 1 different where a confidence is
    within 1e-6 of the threshold (reported only), 2 a mismatch."""
    near = (abs(rs.confidence - rs.threshold) <= CONF_TOL or
            abs(ru.confidence - ru.threshold) <= CONF_TOL)
    if rs.failed or ru.failed:
        return 2, "error: shard %s, unsharded %s" % (eevp.strerror(rs.status),
                                                     eevp.strerror(ru.status)), near
    key = ("token", "layer", "reason", "pruned", "set_size", "pruned_token")
    if any(getattr(rs, f) != getattr(ru, f) for f in key):
        return (1 if near else 2), "unsharded: %s" % ", ".join(
            "%s %s" % (f, getattr(ru, f)) for f in key + ("confidence",)), near
    if cs is None or cu is None:
        return 2, "no candidates", near
    if f32_bits(rs.threshold) != f32_bits(ru.threshold):
        return 2, "thresholds %r and %r" % (rs.threshold, ru.threshold), near
    if (f32_bits(rs.confidence) != f32_bits(ru.confidence) if rs.pruned
            else not abs(rs.confidence - ru.confidence) <= CONF_TOL):
        return 2, "confidence %.9g, unsharded %.9g" % (rs.confidence, ru.confidence), near
    # The candidates: the pruned set for a pruned decision (but the full
    # head's for an exact-token exit); else the shard's merged top entries.
    set_cands = rs.pruned and not (exact_exit and rs.exited_early)
    if set_cands and not len(cs.ids) == len(cu.ids) == rs.set_size:
        return 2, "candidates: %d and %d of a set of %d" % (len(cs.ids), len(cu.ids),
                                                            rs.set_size), near
    for j in range(min(len(cs.ids), len(cu.ids))):
        zs, zu = cs.logits[j], cu.logits[j]
        same = (f32_bits(zs) == f32_bits(zu) if set_cands
                else abs(zs - zu) <= CONF_TOL * max(1.0, abs(zu)))
        if cs.ids[j] != cu.ids[j] or not same:
            return 2, "candidate %d: id %d z=%.9g, unsharded id %d z=%.9g" % (
                j, cs.ids[j], zs, cu.ids[j], zu), near
    return 0, "", near


def run_config(comm, src, shard_head, full_head, name, options, top_k, args, ex):
    """One configuration: BATCH sequences, args.tokens tokens each, every
    emitted token fed back.  Returns (tokens, early, mismatches, near)."""
    rank, P = comm.Get_rank(), comm.Get_size()
    L = src.L
    opts = dict(options, max_batch=BATCH, first_layer=FIRST.get(name, 2),
                max_length=args.tokens)
    sctx = eevp.ShardContext(shard_head, L, shard_index=rank, n_shards=P, total_vocab=src.V,
                             top_k=top_k, **opts)
    uctx = eevp.Context(full_head, L, **opts)
    if sctx.required_layers != uctx.required_layers:
        raise SystemExit("the shard and the unsharded context require other layers")
    if rank == 0:
        print("\n== %s: %s, k %d, first layer %d, threshold %g%s, shard top_k %s"
              % (name, eevp.Criterion(sctx.options["criterion"]).name.lower(),
                 sctx.options["k"], sctx.options["first_layer"], sctx.options["threshold"],
                 ", exact exits" if options.get("exact_exit") else "", top_k or "max(k, 2)"))
        if not args.quiet:
            print("      t  seq  token  layer  reason       confidence   pruned  set  check")
    exact = bool(options.get("exact_exit"))
    tokens = [src.target(1000 + s, 0)[0] for s in range(BATCH)]  # each sequence's first input
    tally = dict(tokens=0, early=0, mismatches=0, near=0)
    for i in range(args.tokens):
        positions = [i] * BATCH
        with sctx.step(BATCH, positions) as ss, uctx.step(BATCH, positions) as su:
            for layer in range(L):
                if not ss.running and not su.running:
                    break
                x = [src.hidden(tokens[s], i, layer) for s in range(BATCH)]
                if ss.running:
                    xs = x
                    if args.fault == "hidden" and P > 1 and rank == P - 1:
                        xs = [list(row) for row in x]
                        xs[0][0] = f32_up(xs[0][0])
                    rec = ss.layer(layer, xs)
                    while True:
                        agree(comm, len(rec) if rec else 0, "the size of a record")
                        if not rec:
                            break
                        try:
                            rec = ss.absorb(ex(rec))
                        except eevp.RecordError as e:
                            if rank == 0:
                                print("  absorb (layer %d): RecordError: %s" % (layer, e))
                            rec = None
                if su.running:
                    su.layer(layer, x)
                agree(comm, (ss.running, su.running), "which sequences are still running")
            rs_all, ru_all = ss.results(), su.results()
            cands = [(read_cands(ss, s), read_cands(su, s)) for s in range(BATCH)]
        # Every rank reads the same decisions.
        agree(comm, [(r.token, r.layer, int(r.reason), f32_bits(r.confidence), r.pruned,
                      r.set_size, r.pruned_token, r.status) for r in rs_all],
              "the decisions of a token")
        for s, (rs, ru) in enumerate(zip(rs_all, ru_all)):
            verdict, why, near = compare(rs, ru, cands[s][0], cands[s][1], exact)
            tally["tokens"] += 1
            tally["early"] += rs.exited_early
            tally["mismatches"] += verdict == 2
            tally["near"] += near
            if rank == 0 and (not args.quiet or verdict or near):
                print("    %3d  %3d  %5d  %5d  %-11s  %.9f  %6d  %3d  %s%s%s" % (
                    i, s, rs.token, rs.layer, rs.reason.name.lower().replace("_", "-"),
                    rs.confidence, rs.pruned, rs.set_size,
                    ("ok", "NEAR-THRESHOLD", "MISMATCH")[verdict],
                    " (confidence within 1e-6 of the threshold)" if near and not verdict else "",
                    ": " + why if why else ""))
            # The emitted token is fed back (the unsharded one if the shard
            # context failed, so that the run goes on).
            tokens[s] = ru.token if rs.failed else rs.token
    sst, ust = sctx.stats(), uctx.stats()
    if ust.shard_exchanges != 0 or sst.tokens != tally["tokens"] or ust.tokens != tally["tokens"]:
        print("  rank %d: statistics: unsharded exchanges %d, tokens %d and %d of %d"
              % (rank, ust.shard_exchanges, sst.tokens, ust.tokens, tally["tokens"]))
        tally["mismatches"] += 1
    r0 = shard_head.vocab_offset
    mine = (r0, r0 + shard_head.n_vocab, sst.tokens, sst.shard_exchanges, sst.shard_bytes_sent,
            sst.shard_bytes_received, sst.head_bytes, ust.head_bytes)
    every = comm.gather(mine, root=0)
    all_mm = comm.reduce(tally["mismatches"], op=MPI.SUM, root=0)
    if rank == 0:
        print("  %d tokens, %d exited early, exit layers %s; mismatches %d (all ranks), "
              "near-threshold %d" % (tally["tokens"], tally["early"],
                                     " ".join("%d:%d" % (l, c) for l, c in
                                              enumerate(sst.exit_histogram) if c),
                                     all_mm, tally["near"]))
        print("  rank  rows              exchanges/token  sent B/token  received B/token  "
              "W read KB/token (unsharded)")
        for r, (a, b, t, nx, sent, recv, wb, wu) in enumerate(every):
            t = max(t, 1)
            print("  %4d  %-16s  %15.2f  %12.1f  %16.1f  %8.1f (%.1f)" % (
                r, "[%d, %d)" % (a, b), nx / t, sent / t, recv / t, wb / t / 1024,
                wu / t / 1024))
    sctx.close()
    uctx.close()
    return tally


def f32_up(x):
    """The float32 after x (x rounded to float32 first), towards +inf."""
    b = f32_bits(x)
    b = b + 1 if b < 0x80000000 else (b - 1 if b != 0x80000000 else 1)
    return struct.unpack("<f", struct.pack("<I", b))[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--allgather", action="store_true")
    ap.add_argument("--config")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--vocab", type=int, default=4099)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--fault", choices=("hidden", "drop"))
    args = ap.parse_args()
    if args.list:
        print("configurations: " + " ".join(c[0] for c in CONFIGS))
        return 0
    if MPI is None:
        print("mpi_vocab_parallel.py: mpi4py is not installed (Debian: python3-mpi4py, for "
              "/usr/bin/python3): skipped")
        return 1 if os.environ.get("EEVP_REQUIRE_MPI") else 0
    comm = MPI.COMM_WORLD
    rank, P = comm.Get_rank(), comm.Get_size()
    configs = [c for c in CONFIGS if args.config in (None, c[0])]
    if (not configs or args.tokens < 1 or args.layers < 4 or args.dim < 1
            or args.vocab < P * (P + 1) // 2 or (args.fault == "drop" and not args.allgather)):
        if rank == 0:
            ap.print_usage()
        return 2
    ex = Exchange(comm, args.allgather, args.fault)
    if rank == 0:
        print("mpi_vocab_parallel.py: libeevp %s, mpi4py %s, %d rank(s), exchange by %s%s"
              % (eevp.library_version(), mpi4py.__version__, P,
                 "allgather + merge_all" if args.allgather else "Allreduce (eevp.merge as MPI.Op)",
                 ", FAULT: " + args.fault if args.fault else ""))
    src = Source(args.vocab, args.dim, args.layers, args.seed)
    r0, r1 = block_of(src.V, P, rank)
    shard_head, full_head = src.head(r0, r1), src.head(0, src.V)
    if rank == 0:
        print("synthetic head: V %d, d %d, %d layers; rank r holds rows [V T(r)/T(P), "
              "V T(r+1)/T(P)), T(n) = n(n+1)/2" % (src.V, src.d, src.L))
    total = dict(tokens=0, early=0, mismatches=0, near=0)
    for name, options, top_k in configs:
        t = run_config(comm, src, shard_head, full_head, name, options, top_k, args, ex)
        for k in total:
            total[k] += t[k]
    if ex.order_mismatches and rank == 0:
        print("eevp.merge_all gave other bytes in reverse rank order %d time(s)"
              % ex.order_mismatches)
    total["mismatches"] += ex.order_mismatches
    all_mm = comm.allreduce(total["mismatches"], op=MPI.SUM)
    if rank == 0:
        print("\nmpi_vocab_parallel.py: %d rank(s), %s: %d configuration(s), %d tokens per "
              "rank, %d exited early; %d mismatch(es) over all ranks, %d near-threshold: %s"
              % (P, "allgather" if args.allgather else "allreduce", len(configs),
                 total["tokens"], total["early"], all_mm, total["near"],
                 "FAILED" if all_mm else "the shards decide as the whole head"))
    ex.free()
    return 1 if all_mm else 0


if __name__ == "__main__":
    sys.exit(main())
