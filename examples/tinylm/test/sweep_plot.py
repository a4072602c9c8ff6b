#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""make demo-sweep: agreement with full depth and speed over exit thresholds
and K on the held-out test split, printed as CSV and drawn as
docs/tinylm_sweep.png (layers saved against agreement, one curve per K, the
shape of the method's published quality/speed figures).

    /usr/bin/python3 examples/tinylm/test/sweep_plot.py [--tokens N] [--plot-only]

--plot-only draws the plot from the CSV already written, without a new sweep.
"""
import argparse
import csv
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--first", type=int, default=2)
    ap.add_argument("--csv", default=os.path.join(ROOT, "docs", "tinylm_sweep.csv"))
    ap.add_argument("--png", default=os.path.join(ROOT, "docs", "tinylm_sweep.png"))
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args()
    if not args.plot_only:
        subprocess.run([os.path.join(ROOT, "examples/tinylm/tinylm"), "sweep",
                        "--model", os.path.join(ROOT, "examples/tinylm/model"),
                        "--test-tokens", str(args.tokens), "--first", str(args.first),
                        "--out", args.csv], check=True)
    rows = list(csv.DictReader(open(args.csv)))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("sweep_plot: matplotlib not available (Debian python3-matplotlib); "
              f"CSV written to {args.csv}, no plot")
        return 0
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for k in sorted({int(r["k"]) for r in rows}):
        rs = [r for r in rows if int(r["k"]) == k]
        lab = "K=0 (full vocabulary)" if k == 0 else f"K={k}"
        saved = [float(r["layers_saved"]) for r in rs]
        agr = [float(r["agreement"]) for r in rs]
        spd = [float(r["speedup_vs_full"]) for r in rs]
        a1.plot(saved, agr, marker="o", label=lab)
        a2.plot(agr, spd, marker="o", label=lab)
        for r, x, y in zip(rs, saved, agr):
            if k == 64:
                a1.annotate(r["threshold"], (x, y), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
    a1.axhline(0.9, color="grey", lw=0.8, ls="--")
    a1.set_xlabel("share of layers saved")
    a1.set_ylabel("agreement with full depth (greedy token)")
    a1.set_title("quality vs layers saved (labels: threshold, K=64)")
    a2.axhline(1.0, color="grey", lw=0.8, ls="--")
    a2.set_xlabel("agreement with full depth")
    a2.set_ylabel("tokens/s relative to full depth")
    a2.set_title("speed vs quality")
    a2.invert_xaxis()
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle(f"tinylm (WordNet glosses), top-2 gap, first checked layer {args.first}, "
                 f"{args.tokens} held-out test positions")
    fig.tight_layout()
    fig.savefig(args.png, dpi=110)
    print(f"wrote {args.csv} and {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
