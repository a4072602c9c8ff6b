#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""peer.py - the peers' side of the benchmark: the same algorithm as the
method's authors' code path, in PyTorch or numpy, used the way their users
would (each at its best):

  pruning layer:  logits = F.linear(x, W) / x @ W.T over the whole head,
                  top-K (torch.topk / np.argpartition), rows gathered once
                  per token (W[idx]);
  later layers:   logits = F.linear(x, W_k) (torch.bmm for B > 1) /
                  W_k @ x (np.matmul), softmax over the candidates, top-2
                  gap as the confidence;
  full check:     the same over the whole head.

The final norm (RMS, with a weight) is applied as the library applies it.
Prints `R <shape> <threads> <lib>_<metric> <ms>` lines like bench.c, and
`I` lines naming the BLAS library each peer actually loaded (from
/proc/self/maps).  Cold figures write a 128 MB buffer before each repetition
(untimed), as bench.c does.

Usage: peer.py torch|numpy --threads N [--quick] [--shapes a,b] [--reps n]
Set OPENBLAS_NUM_THREADS / OMP_NUM_THREADS to N in the environment too
(run_bench.py does): numpy's OpenBLAS reads them at load time.
"""
import argparse
import os
import statistics
import sys
import time

SHAPES = [("llama2", 32000, 4096), ("llama3", 128256, 4096),
          ("qwen", 151936, 896), ("gpt2", 50257, 768)]
K_DEFAULT = 256
LAYERS = 32


def loaded_blas():
    libs = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                p = line.split()[-1]
                base = os.path.basename(p)
                if any(s in base for s in ("blas", "mkl", "lapack", "dnnl", "gomp", "omp")):
                    libs.add(p)
    except OSError:
        pass
    return " ".join(sorted(libs)) or "(none found)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("lib", choices=["torch", "numpy"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--shapes", default="llama2,llama3,qwen,gpt2")
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    reps = 5 if a.quick else max(5, a.reps)

    import numpy as np
    evict_buf = np.ones(32 << 20, dtype=np.float32)  # 128 MB

    def evict():
        evict_buf.__iadd__(1.0)

    if a.lib == "torch":
        import torch
        import torch.nn.functional as F
        torch.set_num_threads(a.threads)
        torch.set_grad_enabled(False)
        print("I torch_version %s" % torch.__version__)
        print("I torch_blas %s" % loaded_blas())
        print("I torch_threads %d" % torch.get_num_threads())
    else:
        print("I numpy_version %s" % np.__version__)
        print("I numpy_blas %s" % loaded_blas())
    sys.stdout.flush()

    def med(fn, cold, setup=None):
        ts = []
        fn()
        for _ in range(reps):
            if setup:
                setup()
            if cold:
                evict()
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ts)

    def out(shape, metric, v):
        print("R %s %d %s_%s %.6g" % (shape, a.threads, a.lib, metric, v))
        sys.stdout.flush()

    for name, V, d in SHAPES:
        if name not in a.shapes.split(","):
            continue
        rng = np.random.default_rng(1)
        Wn = ((rng.random((V, d), dtype=np.float32) * 2 - 1) * (1.7 / np.sqrt(d))).astype(np.float32)
        nw_n = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)
        Hn = rng.standard_normal((64, d)).astype(np.float32)
        Bs = [16] if a.quick else [1, 4, 16, 64]
        Ks = [K_DEFAULT] if a.quick else [64, 256, 1024]

        if a.lib == "torch":
            W = torch.from_numpy(Wn)
            nw = torch.from_numpy(nw_n)
            H = torch.from_numpy(Hn)

            def norm(h):
                return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * nw

            def lin(x, M):
                # One row: torch.mv (BLAS SGEMV); F.linear on a 1 x d input
                # goes through SGEMM and is several times slower here, so
                # the peer at its best uses mv.
                if x.shape[0] == 1:
                    return torch.mv(M, x[0]).unsqueeze(0)
                return F.linear(x, M)

            def prune(h, K):
                z = lin(norm(h), W)
                idx = torch.topk(z, K, dim=-1).indices
                return W[idx]  # B x K x d, gathered once per token

            def check(h, Wk):
                x = norm(h)
                if x.shape[0] == 1:
                    z = torch.mv(Wk[0], x[0]).unsqueeze(0)
                else:
                    z = torch.bmm(Wk, x.unsqueeze(-1)).squeeze(-1)
                p = torch.softmax(z, dim=-1)
                t2 = torch.topk(p, 2, dim=-1).values
                return t2[..., 0] - t2[..., 1]

            def full_check(h):
                p = torch.softmax(lin(norm(h), W), dim=-1)
                t2 = torch.topk(p, 2, dim=-1).values
                return t2[..., 0] - t2[..., 1]

            def full(h):
                return lin(h, W)

            def full_linear(h):
                return F.linear(h, W)
        else:
            W, nw, H = Wn, nw_n, Hn

            def norm(h):
                return h / np.sqrt((h * h).mean(-1, keepdims=True) + 1e-6) * nw

            def lin(x, M):
                if x.shape[0] == 1:
                    return (M @ x[0])[None, :]  # SGEMV
                return x @ M.T

            def prune(h, K):
                z = lin(norm(h), W)
                idx = np.argpartition(z, -K, axis=-1)[:, -K:]
                return W[idx]

            def softmax_gap(z):
                e = np.exp(z - z.max(-1, keepdims=True))
                p = e / e.sum(-1, keepdims=True)
                t2 = np.partition(p, -2, axis=-1)[..., -2:]
                return t2[..., 1] - t2[..., 0]

            def check(h, Wk):
                x = norm(h)
                if x.shape[0] == 1:
                    z = (Wk[0] @ x[0])[None, :]
                else:
                    z = np.matmul(Wk, x[:, :, None])[:, :, 0]
                return softmax_gap(z)

            def full_check(h):
                return softmax_gap(lin(norm(h), W))

            def full(h):
                return lin(h, W)

            full_linear = None

        h1 = H[0:1]
        out(name, "full_b1", med(lambda: full(h1), True))
        if full_linear is not None and not a.quick:
            out(name, "linear_full_b1", med(lambda: full_linear(h1), True))
        out(name, "prune_step_b1", med(lambda: prune(h1, K_DEFAULT), True))
        for K in Ks:
            Wk = prune(h1, K)
            out(name, "check_k%d_cold" % K, med(lambda: check(h1, Wk), True))
            if K == K_DEFAULT:
                out(name, "check_k%d_warm" % K, med(lambda: check(h1, Wk), False))
        out(name, "check_full_cold", med(lambda: full_check(h1), True))

        # The token: the pruning step, then 31 checks, eviction before each
        # layer (untimed), as in bench.c.
        for B in ([1] + Bs if a.quick else Bs):
            hb = H[:B]

            def token():
                t = 0.0
                evict()
                t0 = time.perf_counter()
                Wk = prune(hb, K_DEFAULT)
                t += time.perf_counter() - t0
                for _ in range(LAYERS - 1):
                    evict()
                    t0 = time.perf_counter()
                    check(hb, Wk)
                    t += time.perf_counter() - t0
                return t * 1e3

            token()
            ts = sorted(token() for _ in range(reps))
            out(name, "token_b%d" % B, statistics.median(ts))
            if B > 1:
                out(name, "prune_step_b%d" % B, med(lambda: prune(hb, K_DEFAULT), True))
        del W, Wn
    return 0


if __name__ == "__main__":
    sys.exit(main())
