#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""real_hidden.py - hidden states with real structure for the screening
recall: the demo model (examples/tinylm, docs/TINYLM.md) run by its own
PyTorch module over WordNet text, every layer's raw hidden state kept.

Writes one little-endian file:
    int32 V, d, L, N;  float eps;
    float W[V*d] (the LM head, fp32), float norm_weight[d],
    float hidden[L*N*d] (layer-major: N positions per layer)
which `bench --hidden FILE` reads (docs/BENCHMARKS.md).

Usage: real_hidden.py OUT [--model DIR] [--tokens N]
Exits 0 with a message, writing nothing, when the model or a module is
missing (the benchmark then reports the synthetic states only).
"""
import argparse
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TINY = os.path.join(ROOT, "examples", "tinylm")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--model", default=os.path.join(TINY, "model"))
    ap.add_argument("--tokens", type=int, default=1024)
    a = ap.parse_args()
    try:
        import numpy as np
        import torch
        import sentencepiece as spm
        sys.path.insert(0, os.path.join(TINY, "train"))
        from tinylm_model import load_checkpoint
        from wordnet_text import read_lines, split
    except ImportError as e:
        print("real_hidden: skipped, %s" % e)
        return 0
    if not os.path.exists(os.path.join(a.model, "model.safetensors")):
        print("real_hidden: skipped, no model in %s" % a.model)
        return 0
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    model = load_checkpoint(a.model)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(a.model, "tokenizer.model"))
    parts = split(read_lines())
    test = parts[-1] if isinstance(parts, (tuple, list)) else parts
    cfg = model.cfg
    seq = 128
    hid = [[] for _ in range(cfg.num_hidden_layers)]
    n = 0
    for line in test:
        ids = [cfg.bos_token_id] + sp.encode(line)[: seq - 1]
        if len(ids) < 8:
            continue
        hs = model.hidden_states(torch.tensor([ids]))
        for l, h in enumerate(hs):
            hid[l].append(h[0].float().numpy())
        n += len(ids)
        if n >= a.tokens:
            break
    N = min(n, a.tokens)
    H = np.stack([np.concatenate(x)[:N] for x in hid]).astype(np.float32)
    W = model.head_weight().float().numpy().astype(np.float32)
    nw = model.model.norm.weight.float().numpy().astype(np.float32)
    V, d = W.shape
    with open(a.out, "wb") as f:
        f.write(struct.pack("<iiiif", V, d, cfg.num_hidden_layers, N, float(cfg.rms_norm_eps)))
        f.write(W.tobytes())
        f.write(nw.tobytes())
        f.write(H.tobytes())
    print("real_hidden: V=%d d=%d L=%d N=%d -> %s" % (V, d, cfg.num_hidden_layers, N, a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
