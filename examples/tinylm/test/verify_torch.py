#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Cross-check the C runtime against the training script's own PyTorch module.

Loads the same checkpoint into examples/tinylm/train/tinylm_model.py (an
independent implementation, not a port of the C code) and compares:
  1. the full-depth logits at every prompt position (max abs diff <= 1e-3);
  2. the greedy continuation (identical tokens);
  3. for a token that exits early, the exit hidden state against PyTorch's
     hidden state at that layer, and the K/V the runtime propagated into each
     skipped layer against PyTorch's projections of the exit hidden state;
  4. the batched prefill (every prompt position through each layer
     together): its logits at every position and the K/V it stored at every
     layer and position, against PyTorch's full-depth pass;
  5. a spec round (lossless early exit): the final states the runtime
     completed for the round's positions (drafted with early exits, then
     completed from min(e_0 .. e_i) batched per layer) against PyTorch's
     full-depth states of the same tokens, and the emitted token against
     PyTorch's greedy choice.

    /usr/bin/python3 examples/tinylm/test/verify_torch.py [--model DIR]

Skipped, with a message and exit 0, when torch or numpy is missing.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))

try:
    import numpy as np
    import torch
except ImportError as e:
    print(f"verify_torch: SKIPPED: PyTorch/numpy not available ({e}); "
          "install Debian's python3-torch and run with /usr/bin/python3")
    print("0 passed, 0 failed, 1 skipped")
    sys.exit(0)

sys.path.insert(0, os.path.join(HERE, "..", "train"))
from tinylm_model import load_checkpoint  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "examples/tinylm/model"))
    ap.add_argument("--bin", default=os.path.join(ROOT, "examples/tinylm/tinylm"))
    ap.add_argument("--prompt", default="violin: a bowed stringed instrument")
    ap.add_argument("--gen", type=int, default=16)
    ap.add_argument("--first", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)

    passed = failed = 0

    def check(name, ok, detail):
        nonlocal passed, failed
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
        if ok:
            passed += 1
        else:
            failed += 1

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "dump.json")
        subprocess.run([args.bin, "verify", "--model", args.model, "--out", out,
                        "--gen", str(args.gen), "--first", str(args.first), args.prompt],
                       check=True)
        with open(out) as f:
            dump = json.load(f)

    model = load_checkpoint(args.model)
    ids = torch.tensor(dump["prompt_ids"])[None]
    T = ids.shape[1]
    with torch.no_grad():
        ref = model(ids)[0]                      # (T, V)
        c_logits = torch.tensor(dump["logits"])  # (T, V)
        diff = (ref - c_logits).abs().max().item()
        check("full-depth logits", diff <= 1e-3,
              f"max abs diff {diff:.2e} over {T} positions x {ref.shape[1]} (bound 1e-3)")

        seq = ids
        greedy = []
        for _ in range(args.gen):
            nxt = model(seq)[0, -1].argmax().item()
            greedy.append(nxt)
            seq = torch.cat([seq, torch.tensor([[nxt]])], dim=1)
        same = greedy == dump["greedy"]
        check("greedy continuation", same,
              f"{args.gen} tokens {'identical' if same else 'differ'}: torch {greedy} "
              f"C {dump['greedy']}")

        ex = dump["exit"]
        pos, layer = ex["position"], ex["layer"]
        L = model.cfg.num_hidden_layers
        check("a token exits early", layer < L - 1, f"position {pos} exited at layer "
              f"{layer} of 0..{L - 1}")
        h_c = torch.tensor(ex["hidden"])
        hs = model.hidden_states(ids)
        dh = (hs[layer][0, pos] - h_c).abs().max().item()
        check("exit hidden state", dh <= 1e-3,
              f"layer {layer}, position {pos}: max abs diff {dh:.2e} (bound 1e-3)")
        worst_k = worst_v = 0.0
        n_layers = 0
        for l in range(layer + 1, L):
            k_ref, v_ref = model.skipped_kv(l, h_c, pos)
            k_c = torch.tensor(ex["k"][str(l)])
            v_c = torch.tensor(ex["v"][str(l)])
            worst_k = max(worst_k, (k_ref - k_c).abs().max().item())
            worst_v = max(worst_v, (v_ref - v_c).abs().max().item())
            n_layers += 1
            # The propagated entry must differ from what full depth would store
            # (else the check would not tell propagation from a full pass).
        k_full, _ = model.skipped_kv(L - 1, hs[L - 2][0, pos], pos)
        k_c_last = torch.tensor(ex["k"][str(L - 1)])
        distinct = (k_full - k_c_last).abs().max().item()
        check("propagated K/V in skipped layers",
              n_layers == L - 1 - layer and worst_k <= 1e-4 and worst_v <= 1e-4,
              f"{n_layers} skipped layers, max abs diff K {worst_k:.2e} V {worst_v:.2e} "
              f"(bound 1e-4)")
        check("propagated K differs from the full-depth K", distinct > 1e-3,
              f"layer {L - 1}: max abs diff {distinct:.2e} between propagated and full-depth K")

        pf = dump["prefill"]
        p_logits = torch.tensor(pf["logits"])
        dp = (ref - p_logits).abs().max().item()
        check("batched prefill logits", dp <= 1e-3,
              f"max abs diff {dp:.2e} over {T} positions (bound 1e-3)")
        kvd = model.cfg.num_key_value_heads * (model.cfg.hidden_size //
                                               model.cfg.num_attention_heads)
        pk = torch.tensor(pf["k"]).view(L, T, kvd)
        pv = torch.tensor(pf["v"]).view(L, T, kvd)
        emb = model.model.embed_tokens(ids)
        wk = wv = 0.0
        for l in range(L):
            inp = emb if l == 0 else hs[l - 1]
            for p in range(T):
                k_ref, v_ref = model.skipped_kv(l, inp[0, p], p)
                wk = max(wk, (k_ref - pk[l, p]).abs().max().item())
                wv = max(wv, (v_ref - pv[l, p]).abs().max().item())
        check("batched prefill K/V", wk <= 1e-4 and wv <= 1e-4,
              f"{L} layers x {T} positions: max abs diff K {wk:.2e} V {wv:.2e} (bound 1e-4)")

        sp = dump["spec"]
        P, toks, acc = sp["position"], sp["tokens"], sp["accepted"]
        seq = torch.tensor(dump["prompt_ids"][:P + 1] + toks[1:])[None]
        hs3 = model.hidden_states(seq)
        fin = torch.tensor(sp["final"])
        n = len(toks) - 1
        ds = max((hs3[-1][0, P + i] - fin[i]).abs().max().item() for i in range(n + 1))
        check("spec round: completed final states", n >= 1 and ds <= 1e-3,
              f"{n} drafts, {acc} accepted; positions {P}..{P + n}: max abs diff {ds:.2e} "
              f"against full depth (bound 1e-3)")
        logits_a = model.logits(hs3[-1][0, P + acc])
        want = [t for t in toks[1:acc + 1]] + [int(logits_a.argmax().item())]
        ok = all(model.logits(hs3[-1][0, P + i]).argmax().item() == toks[i + 1]
                 for i in range(acc)) and want[-1] == sp["next"]
        check("spec round: the emitted tokens are full depth's greedy ones", ok,
              f"emitted {want[:-1]} + {sp['next']}, torch's next {want[-1]}")

    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
