#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""run_bench.py - one benchmark run: libeevp (tests/bench/bench), then the
numpy and PyTorch peers (tests/bench/peer.py), for 1 and 2 OpenBLAS threads;
prints the table and the RATIO lines (defined in docs/BENCHMARKS.md).

  --quick       one shape (32000 x 4096), one thread, B in {1, 16}: < 60 s
  --out DIR     also write DIR/bench_results.txt and the plots
                DIR/bench_k.png, DIR/bench_v.png (gnuplot)
  --threads, --shapes, --reps   passed through

Every figure is a median of >= 5 repetitions after a warm-up; "cold" ones
evict the caches before each repetition (untimed).  The RATIO lines use
the 1-thread figures; RATIO_2T lines repeat them with 2 threads.
"""
import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SHAPE_VD = {"llama2": (32000, 4096), "llama3": (128256, 4096),
            "qwen": (151936, 896), "gpt2": (50257, 768)}


def run(cmd, env=None, log=None):
    sys.stderr.write("+ %s\n" % " ".join(cmd))
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    if p.returncode != 0:
        sys.stderr.write("run_bench: %s failed (%d)\n" % (cmd[0], p.returncode))
    if log is not None:
        log.append(p.stdout)
    return p.stdout


def parse(text, R, info):
    for line in text.splitlines():
        f = line.split(" ", 1)
        if f[0] == "R":
            shape, threads, metric, value = line.split()[1:5]
            R[(shape, int(threads), metric)] = float(value)
        elif f[0] == "I" and len(f) > 1:
            k, _, v = f[1].partition(" ")
            info[k] = v


# (label, our metric, numpy metric, torch metric); None: not measured.
ROWS = [
    ("full projection B=1 (bare BLAS SGEMV)", "blas_full_b1", "numpy_full_b1", "torch_full_b1"),
    ("full projection B=1 (libeevp)", "lib_full_b1", None, None),
    ("full projection B=1, fixed-order kernel", "lib_full_inv_b1", None, None),
    ("greedy verification of 8 rows (eevp_spec_verify)", "verify_rows8", None, None),
    ("full projection B=2 (SGEMM | libeevp)", "blas_full_b2", None, None),
    ("  libeevp B=2", "lib_full_b2", None, None),
    ("  libeevp B=3", "lib_full_b3", None, None),
    ("full projection B=4 (SGEMM)", "blas_full_b4", None, None),
    ("  libeevp B=4", "lib_full_b4", None, None),
    ("  libeevp B=5", "lib_full_b5", None, None),
    ("  libeevp B=5, AVX2 kernel", "lib_full_avx2_b5", None, None),
    ("  libeevp B=6", "lib_full_b6", None, None),
    ("  libeevp B=7", "lib_full_b7", None, None),
    ("full projection B=8 (SGEMM)", "blas_full_b8", None, None),
    ("  libeevp B=8", "lib_full_b8", None, None),
    ("  libeevp B=8, AVX2 kernel", "lib_full_avx2_b8", None, None),
    ("full projection B=16 (SGEMM)", "blas_full_b16", None, None),
    ("  libeevp B=16 / fixed-order", "lib_full_b16", None, None),
    ("  fixed-order B=16", "lib_full_inv_b16", None, None),
    ("fp16 head, full B=1", "f16_full_b1", None, None),
    ("bf16 head, full B=1", "bf16_full_b1", None, None),
    ("fp16 head, full B=8", "f16_full_b8", None, None),
    ("fp16 head, full B=8, AVX2 kernel", "f16_full_avx2_b8", None, None),
    ("top-K (K=256) of V logits", "topk_k256", None, None),
    ("pruning step B=1 (kernels)", "prune_kernels_b1", None, None),
    ("pruning step B=1 (step API)", "prune_step_b1", "numpy_prune_step_b1", "torch_prune_step_b1"),
    ("pruning step B=4", "prune_step_b4", "numpy_prune_step_b4", "torch_prune_step_b4"),
    ("pruning step B=8", "prune_step_b8", None, None),
    ("pruning step B=16", "prune_step_b16", "numpy_prune_step_b16", "torch_prune_step_b16"),
    ("pruning step B=64", "prune_step_b64", "numpy_prune_step_b64", "torch_prune_step_b64"),
    ("pruned check K=64 cold", "check_k64_cold", "numpy_check_k64_cold", "torch_check_k64_cold"),
    ("pruned check K=256 cold", "check_k256_cold", "numpy_check_k256_cold", "torch_check_k256_cold"),
    ("pruned check K=1024 cold", "check_k1024_cold", "numpy_check_k1024_cold", "torch_check_k1024_cold"),
    ("pruned check K=64 warm", "check_k64_warm", None, None),
    ("pruned check K=256 warm", "check_k256_warm", "numpy_check_k256_warm", "torch_check_k256_warm"),
    ("pruned check K=1024 warm", "check_k1024_warm", None, None),
    ("full-vocabulary check cold", "check_full_cold", "numpy_check_full_cold", "torch_check_full_cold"),
    ("token, 32 layers, B=1", "token_b1", "numpy_token_b1", "torch_token_b1"),
    ("token, 32 layers, B=4 (per seq)", "token_b4/4", "numpy_token_b4/4", "torch_token_b4/4"),
    ("token, 32 layers, B=8 (per seq)", "token_b8/8", None, None),
    ("token, 32 layers, B=16 (per seq)", "token_b16/16", "numpy_token_b16/16", "torch_token_b16/16"),
    ("token, 32 layers, B=64 (per seq)", "token_b64/64", "numpy_token_b64/64", "torch_token_b64/64"),
    ("token, fp16 head, B=1", "token_f16_b1", None, None),
    ("pruned check B=16 cold (step API, per step)", "check_b16_cold", None, None),
    ("int8 screened pruning step B=1 (kernels)", "screen_prune_b1", None, None),
    ("int8 screened pruning step B=1 (step API)", "screen_step_b1", None, None),
    ("context bytes, B=1 K=256", "ctx_bytes_b1_k256", None, None),
    ("context bytes, B=16 K=256", "ctx_bytes_b16_k256", None, None),
]


def get(R, shape, t, metric):
    if metric is None:
        return None
    div = 1.0
    if "/" in metric:
        metric, d = metric.split("/")
        div = float(d)
    v = R.get((shape, t, metric))
    return None if v is None else v / div


def fmt(v):
    if v is None:
        return "-"
    if v >= 1e5:
        return "%.0f" % v
    if v >= 100:
        return "%.1f" % v
    if v >= 1:
        return "%.2f" % v
    return "%.4f" % v


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def ratios(R, t):
    g = lambda s, m: get(R, s, t, m)
    pick80 = g("llama2", "ov80_pick_union")
    b16 = None
    if pick80 is not None:
        b16 = g("llama2", "ov80_union" if pick80 else "ov80_each")
    return [
        ("prune_step_overhead", ratio(g("llama2", "prune_step_b1"), g("llama2", "blas_full_b1"))),
        ("lib_full_b1_vs_sgemv", ratio(g("llama2", "lib_full_b1"), g("llama2", "blas_full_b1"))),
        ("verify_rows8_vs_full_b1", ratio(g("llama2", "verify_rows8"), g("llama2", "lib_full_b1"))),
        ("pruned_vs_full_check_32k", ratio(g("llama2", "check_full_cold"), g("llama2", "check_k256_cold"))),
        ("pruned_vs_full_check_128k", ratio(g("llama3", "check_full_cold"), g("llama3", "check_k256_cold"))),
        ("token_cost_vs_one_full", ratio(g("llama2", "token_b1"), g("llama2", "blas_full_b1"))),
        ("check_vs_torch_b1", ratio(g("llama2", "torch_check_k256_cold"), g("llama2", "check_k256_cold"))),
        ("check_vs_numpy_b1", ratio(g("llama2", "numpy_check_k256_cold"), g("llama2", "check_k256_cold"))),
        ("token_vs_torch_b16", ratio(g("llama2", "torch_token_b16"), g("llama2", "token_b16"))),
        ("token_f16_vs_torch_b1", ratio(g("llama2", "torch_token_b1"), g("llama2", "token_f16_b1"))),
        ("prune_step_b8_vs_b1", ratio(g("llama2", "prune_step_b8"), g("llama2", "prune_step_b1"))),
        ("batch16_per_seq_vs_b1_overlap80",
         ratio(None if b16 is None else b16 / 16.0, g("llama2", "batch_check_b1_cold"))),
        ("f16_full_speedup", ratio(g("llama2", "lib_full_b1"), g("llama2", "f16_full_b1"))),
        ("bf16_full_speedup", ratio(g("llama2", "lib_full_b1"), g("llama2", "bf16_full_b1"))),
        ("topk_share_152k", ratio(g("qwen", "topk_k256"), g("qwen", "lib_full_b1"))),
        ("shard_merge_share_k256",
         ratio(g("llama2", "shard_protocol_k256_p4"), g("llama2", "shard_check_k256_unsharded"))),
        ("full_logits_bytes_vs_shard_bytes_128k_p8",
         ratio(get(R, "llama3", 1, "full_logits_bytes_per_token"),
               get(R, "llama3", 1, "shard_bytes_per_token_p8"))),
        ("int8_screen_speedup", ratio(g("llama2", "blas_full_b1"), g("llama2", "screen_step_b1"))),
        # The demo model's hidden states when available, else the synthetic ones.
        ("int8_screen_top1_recall",
         get(R, "tinylm", t, "real_top1_recall") if get(R, "tinylm", t, "real_top1_recall")
         is not None else g("llama2", "screen_top1_recall")),
    ]


def table(R, shapes, threads, out):
    for s in shapes:
        for t in threads:
            if not any(k[0] == s and k[1] == t for k in R):
                continue
            V, d = SHAPE_VD[s]
            out.append("")
            out.append("### %s, V x d = %d x %d, %d OpenBLAS thread%s (ms unless bytes)"
                       % (s, V, d, t, "s" if t > 1 else ""))
            out.append("")
            out.append("| figure | libeevp | numpy | PyTorch |")
            out.append("|---|---:|---:|---:|")
            for label, ours, np_, th in ROWS:
                v = [get(R, s, t, ours), get(R, s, t, np_), get(R, s, t, th)]
                if all(x is None for x in v):
                    continue
                out.append("| %s | %s | %s | %s |" % (label, fmt(v[0]), fmt(v[1]), fmt(v[2])))
            if get(R, s, t, "ov80_each") is not None:
                out.append("")
                out.append("Pruned checks, B = 16, K = 256, cold (ms per call of the 16; per "
                           "sequence = / 16); B = 1 reference %s ms:"
                           % fmt(get(R, s, t, "batch_check_b1_cold")))
                out.append("")
                out.append("| set overlap (measured) | union rows | per-sequence kernel | "
                           "union kernel | union build (per token) | picked | identical |")
                out.append("|---:|---:|---:|---:|---:|---|---|")
                for ov in ("00", "20", "50", "80", "95"):
                    m = get(R, s, t, "ov%s_measured" % ov)
                    if m is None:
                        continue
                    out.append("| %.2f | %d | %s | %s | %s | %s | %s |" % (
                        m, get(R, s, t, "ov%s_union_rows" % ov),
                        fmt(get(R, s, t, "ov%s_each" % ov)), fmt(get(R, s, t, "ov%s_union" % ov)),
                        fmt(get(R, s, t, "ov%s_build" % ov)),
                        "union" if get(R, s, t, "ov%s_pick_union" % ov) else "per-seq",
                        "yes" if get(R, s, t, "ov%s_identical" % ov) else "NO"))
            if get(R, s, t, "screen_top1_recall") is not None:
                out.append("")
                out.append("int8 screening (2K screened, structured synthetic states): top-1 "
                           "recall %.4f, top-K overlap %.4f, extra head memory %.0f MB"
                           % (get(R, s, t, "screen_top1_recall"),
                              get(R, s, t, "screen_topk_overlap"),
                              get(R, s, t, "head_q8_extra_bytes") / 1e6))


def plots(R, outdir, t=1):
    """bench_k.png: check cost against K; bench_v.png: against V (cold)."""
    import tempfile
    tmp = tempfile.mkdtemp()
    ks = [64, 256, 1024]
    lines = []
    for s in ("llama2", "llama3", "qwen", "gpt2"):
        rows = []
        for k in ks:
            v = get(R, s, t, "check_k%d_cold" % k)
            if v is not None:
                rows.append("%d %g %g" % (k, v, get(R, s, t, "check_full_cold") or 0))
        if rows:
            fn = os.path.join(tmp, "k_%s.dat" % s)
            open(fn, "w").write("\n".join(rows) + "\n")
            lines.append((s, fn))
    vrows = []
    for s in ("gpt2", "llama2", "llama3", "qwen"):
        V, d = SHAPE_VD[s]
        a, b = get(R, s, t, "check_k256_cold"), get(R, s, t, "check_full_cold")
        if a is not None and b is not None:
            vrows.append("%d %g %g \"%s d=%d\"" % (V, a, b, s, d))
    vfn = os.path.join(tmp, "v.dat")
    open(vfn, "w").write("\n".join(vrows) + "\n")
    gp = ["set terminal pngcairo size 900,500",
          "set logscale xy", "set grid", "set key outside right top",
          "set output '%s'" % os.path.join(outdir, "bench_k.png"),
          "set title 'Check cost against K (cold, B = 1, %d thread)'" % t,
          "set xlabel 'K'", "set ylabel 'ms'"]
    plot = []
    for s, fn in lines:
        plot.append("'%s' using 1:2 with linespoints title '%s pruned'" % (fn, s))
        plot.append("'%s' using 1:3 with lines dashtype 2 title '%s full'" % (fn, s))
    if plot:
        gp.append("plot " + ", ".join(plot))
    gp += ["set output '%s'" % os.path.join(outdir, "bench_v.png"),
           "set title 'Check cost against V (cold, K = 256, B = 1, %d thread)'" % t,
           "set xlabel 'V'", "set ylabel 'ms'",
           "plot '%s' using 1:2 with points pointsize 1.5 title 'pruned (K = 256)', "
           "'%s' using 1:3 with points pointsize 1.5 title 'full vocabulary', "
           "'%s' using 1:3:4 with labels offset 0,1 notitle" % (vfn, vfn, vfn)]
    subprocess.run(["gnuplot"], input="\n".join(gp) + "\n", text=True, check=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--threads", default=None)
    ap.add_argument("--shapes", default=None)
    ap.add_argument("--reps", default="7")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--from", dest="from_file",
                    help="no measuring: re-make the table, ratios and plots from the raw "
                         "output kept in a bench_results.txt")
    a = ap.parse_args()
    threads = a.threads or ("1" if a.quick else "1,2")
    shapes = a.shapes or ("llama2" if a.quick else "llama2,llama3,qwen,gpt2")
    R, info, log = {}, {}, []

    cmd = [os.path.join(HERE, "bench"), "--threads", threads, "--shapes", shapes,
           "--reps", a.reps]
    if a.quick:
        cmd.append("--quick")
    elif not a.from_file:
        # Hidden states of the demo model for the screening recall (skipped
        # when the model or a module is missing).
        import tempfile
        hfile = os.path.join(tempfile.mkdtemp(), "hidden.bin")
        run(["/usr/bin/python3", os.path.join(HERE, "real_hidden.py"), hfile])
        if os.path.exists(hfile):
            cmd += ["--hidden", hfile]
    if a.from_file:
        raw = open(a.from_file).read().split("\n## Raw output\n", 1)[-1]
        parse(raw, R, info)
        log.append(raw.lstrip("\n"))
    else:
        parse(run(cmd, log=log), R, info)
    if not a.no_peers and not a.from_file:
        for lib in ("numpy", "torch"):
            for t in threads.split(","):
                env = dict(os.environ, OPENBLAS_NUM_THREADS=t, OMP_NUM_THREADS=t)
                pc = ["/usr/bin/python3", os.path.join(HERE, "peer.py"), lib, "--threads", t,
                      "--shapes", shapes, "--reps", a.reps]
                if a.quick:
                    pc.append("--quick")
                parse(run(pc, env=env, log=log), R, info)

    out = ["## Machine and libraries", ""]
    for k in ("cpu", "openblas_corename", "openblas_config", "OPENBLAS_CORETYPE",
              "eevp_kernels", "eevp_version", "real_model", "numpy_version", "numpy_blas", "torch_version",
              "torch_blas", "reps"):
        if k in info:
            out.append("- %s: %s" % (k, info[k]))
    if ("all", 0, "peak_rss_mb") in R:
        out.append("- bench peak resident memory: %.0f MB" % R[("all", 0, "peak_rss_mb")])
    tl = [int(x) for x in threads.split(",")]
    table(R, shapes.split(","), tl, out)
    if get(R, "tinylm", 1, "real_top1_recall") is not None:
        out.append("")
        out.append("### The demo model's hidden states (%s)" % info.get("real_model", ""))
        out.append("")
        out.append("int8 screening, K = 256, 2K screened: top-1 recall %.4f, top-K overlap %.4f "
                   "(worst layer: %.4f, %.4f)" % (
                       get(R, "tinylm", 1, "real_top1_recall"),
                       get(R, "tinylm", 1, "real_topk_overlap"),
                       get(R, "tinylm", 1, "real_worst_layer_top1_recall"),
                       get(R, "tinylm", 1, "real_worst_layer_topk_overlap")))
        out.append("")
        out.append("| layer | top-1 recall | top-K overlap | mean pairwise overlap of 16 "
                   "positions' top-256 sets |")
        out.append("|---:|---:|---:|---:|")
        l = 0
        while get(R, "tinylm", 1, "real_l%d_top1_recall" % l) is not None:
            out.append("| %d | %.4f | %.4f | %.3f |" % (
                l, get(R, "tinylm", 1, "real_l%d_top1_recall" % l),
                get(R, "tinylm", 1, "real_l%d_topk_overlap" % l),
                get(R, "tinylm", 1, "real_l%d_set_overlap_b16" % l) or 0.0))
            l += 1
    out.append("")
    for t in tl:
        tag = "RATIO" if t == 1 else "RATIO_%dT" % t
        for name, v in ratios(R, t):
            out.append("%s %s %s" % (tag, name, "n/a" if v is None else "%.4g" % v))
    text = "\n".join(out) + "\n"
    sys.stdout.write(text)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "bench_results.txt"), "w") as f:
            f.write(text)
            f.write("\n## Raw output\n\n")
            f.write("".join(log))
        plots(R, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
