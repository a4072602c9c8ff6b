#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Train tinylm: a sentencepiece vocabulary and a small Llama-style early-exit
LM on WordNet's glosses (Debian wordnet-base), written in the Hugging Face
layout to examples/tinylm/model/.

    /usr/bin/python3 examples/tinylm/train/train.py [--steps N] [--threads T]

The recipe follows LayerSkip (Elhoushi et al., 2024), made for early exit:

- layer dropout rising with depth: each sequence of a batch skips layer l
  with probability p_max * (2^(l/(L-1)) - 1), from 0 at the first layer to
  p_max at the last (--layer-dropout);
- an early-exit loss over all layers: a cross-entropy at every layer through
  the shared final norm and tied head, with scales rising with depth,
  e(l) = e_scale * (l+1) for l < L-1 and e(L-1) = L (--exit-scale), the
  intermediate layers' losses on a random subset of positions to keep the
  step affordable on a 2-core machine (--sub);
- a gradual curriculum: the exit losses are switched on from the deepest
  layer to the shallowest over the first --curriculum share of the steps;
  the weights are normalised over the layers switched on.

Optionally a second stage continues from a checkpoint (--init DIR, its
tokenizer reused) with self-distillation (--distill a): each intermediate
layer's loss becomes (1 - a) * cross-entropy + a * KL(last layer || layer),
the last layer's distribution held fixed (detached), which trains the early
layers to predict what the last one will say: what an early exit needs.

Fixed seed; a log goes to model/train_log.json, with each layer's top-1
agreement with the last layer on the validation split.
"""
import argparse
import json
import math
import os
import random
import shutil
import sys
import time

import numpy as np
import sentencepiece as spm
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import wordnet_text  # noqa: E402
from tinylm_model import Config, TinyLM, save_checkpoint  # noqa: E402


def train_tokenizer(args, out, train_l):
    """Llama-style BPE with byte fallback (unk 0, bos 1, eos 2) on the
    training split, written to out/tokenizer.model."""
    tmp = os.path.join(out, ".train_text.txt")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(train_l) + "\n")
    spm.SentencePieceTrainer.train(
        input=tmp, model_prefix=os.path.join(out, "tokenizer"), vocab_size=args.vocab,
        model_type="bpe", byte_fallback=True, character_coverage=1.0,
        split_digits=True, num_threads=args.threads, seed_sentencepiece_size=200000,
        input_sentence_size=0, shuffle_input_sentence=False, minloglevel=2,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    os.remove(tmp)
    os.remove(os.path.join(out, "tokenizer.vocab"))


def encode_stream(sp, lines, bos):
    ids = []
    for line in lines:
        ids.append(bos)
        ids.extend(sp.encode(line))
    return np.array(ids, dtype=np.int64)


def bigram_eval(train, test, V):
    """Held-out perplexity and accuracy of an add-one... interpolated bigram
    (0.9 bigram + 0.1 add-one unigram), counted on the training stream."""
    pair = train[:-1] * V + train[1:]
    keys, counts = np.unique(pair, return_counts=True)
    uni = np.bincount(train, minlength=V).astype(np.float64)
    puni = (uni + 1) / (uni.sum() + V)
    prev_tot = np.bincount(train[:-1], minlength=V).astype(np.float64)
    # best next token per previous token
    best = np.zeros(V, dtype=np.int64)
    bestc = np.zeros(V, dtype=np.int64)
    prev = keys // V
    order = np.lexsort((-counts, prev))
    seen = np.zeros(V, dtype=bool)
    for i in order:
        p = prev[i]
        if not seen[p]:
            seen[p] = True
            best[p] = keys[i] % V
            bestc[p] = counts[i]
    best[~seen] = int(np.argmax(uni))
    q = test[:-1] * V + test[1:]
    idx = np.searchsorted(keys, q)
    idx[idx >= len(keys)] = 0
    c = np.where(keys[idx] == q, counts[idx], 0).astype(np.float64)
    tot = prev_tot[test[:-1]]
    pb = np.where(tot > 0, c / np.maximum(tot, 1), 0.0)
    p = 0.9 * pb + 0.1 * puni[test[1:]]
    ppl = float(np.exp(-np.mean(np.log(p))))
    acc = float(np.mean(best[test[:-1]] == test[1:]))
    return ppl, acc


@torch.no_grad()
def evaluate(model, stream, seq, max_tokens):
    model.eval()
    L = model.cfg.num_hidden_layers
    nll = np.zeros(L)
    hit = np.zeros(L)
    agree = np.zeros(L)
    n = 0
    for start in range(0, min(len(stream) - 1, max_tokens), seq):
        x = torch.from_numpy(stream[start:start + seq + 1])
        if len(x) < 2:
            break
        inp, tgt = x[:-1][None], x[1:]
        hs = model.hidden_states(inp)
        final = model.logits(hs[-1])[0].argmax(-1)
        for l, h in enumerate(hs):
            lg = model.logits(h)[0]
            nll[l] += F.cross_entropy(lg, tgt, reduction="sum").item()
            hit[l] += (lg.argmax(-1) == tgt).sum().item()
            agree[l] += (lg.argmax(-1) == final).sum().item()
        n += len(tgt)
    model.train()
    return ([float(math.exp(v / n)) for v in nll], [float(v / n) for v in hit], n,
            [float(v / n) for v in agree])


def layer_drop_rates(L, p_max):
    """LayerSkip's rates rising with depth: 0 at layer 0, p_max at layer L-1."""
    return [p_max * (2.0 ** (l / (L - 1)) - 1.0) for l in range(L)]


def exit_weights(L, e_scale, step, steps, share):
    """Normalised early-exit loss weights at a step.  The gradual curriculum
    switches layer l's loss on once step >= (L-1-l) * share * steps / (L-1):
    the last layer from the start, the first after `share` of the steps."""
    w = []
    for l in range(L):
        on = share <= 0 or step >= (L - 1 - l) * share * steps / (L - 1)
        e = float(L) if l == L - 1 else e_scale * (l + 1)
        w.append(e if on else 0.0)
    tot = sum(w)
    return [v / tot for v in w]


def exit_rule(model, first, thr):
    """The runtime's exit decision for hidden_states(exit_at=...): from layer
    `first` on, a position exits once its top-2 probability gap reaches thr."""
    def exit_at(l, h):
        if l < first:
            return None
        with torch.no_grad():
            top = model.logits(h).float().softmax(-1).topk(2, -1).values
            return top[..., 0] - top[..., 1] >= thr
    return exit_at


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "..", "model"))
    ap.add_argument("--steps", type=int, default=3600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--sub", type=float, default=0.25,
                    help="share of positions for the intermediate exit losses")
    ap.add_argument("--layer-dropout", type=float, default=0.1,
                    help="p_max: layer dropout at the last layer, rising from 0 at the first")
    ap.add_argument("--exit-scale", type=float, default=1.0,
                    help="e_scale of the intermediate layers' exit losses")
    ap.add_argument("--curriculum", type=float, default=0.4,
                    help="share of the steps over which the exit losses are switched on, "
                         "deepest layer first (0: all from the start)")
    ap.add_argument("--init", default=None, metavar="DIR",
                    help="continue from this checkpoint (and reuse its tokenizer)")
    ap.add_argument("--distill", type=float, default=0.0,
                    help="weight a of KL(last || layer) in the intermediate losses")
    ap.add_argument("--propagate", type=float, default=0.0,
                    help="weight of the state-propagation loss: a second pass in which "
                         "positions exit as the runtime's top-2 gap criterion says, later "
                         "layers take their K/V from the exit state, and each position's "
                         "exit prediction is pulled towards the --init model's last layer "
                         "(KL; that model frozen)")
    ap.add_argument("--prop-seqs", type=int, default=4,
                    help="sequences of the batch that take that pass")
    ap.add_argument("--prop-first", type=int, default=2,
                    help="first layer checked in that pass (0-based)")
    ap.add_argument("--prop-thr", default="0.05,0.2", metavar="LO,HI",
                    help="that pass's top-2 gap threshold, drawn uniformly each step")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--amp", default="bf16", choices=["bf16", "off"],
                    help="bf16 autocast for the forward pass (weights, gradients and the "
                         "optimizer stay fp32); about 3x faster on CPUs with AVX512_BF16")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--dtype", default="F16", choices=["F16", "BF16", "F32"])
    ap.add_argument("--stop-at", type=int, default=0,
                    help="stop after this step (the schedule still spans --steps)")
    ap.add_argument("--eval-only", metavar="TRAIN_LOG", default=None,
                    help="only evaluate the checkpoint in --out; TRAIN_LOG is the text "
                         "log of the run that wrote it (its step lines are kept)")
    args = ap.parse_args()
    stop = args.stop_at if args.stop_at > 0 else args.steps

    t0 = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)

    lines = wordnet_text.read_lines()
    train_l, val_l, test_l = wordnet_text.split(lines)
    print(f"synsets: train {len(train_l)} val {len(val_l)} test {len(test_l)}", flush=True)

    # Tokenizer: Llama-style BPE with byte fallback (unk 0, bos 1, eos 2).
    if args.eval_only:
        return evaluate_only(args, out, train_l, val_l, test_l, t0)
    if args.init:
        if os.path.abspath(args.init) != out:
            shutil.copy(os.path.join(args.init, "tokenizer.model"), out)
    else:
        train_tokenizer(args, out, train_l)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(out, "tokenizer.model"))
    t_tok = time.time() - t0
    print(f"tokenizer trained in {t_tok:.0f} s", flush=True)

    bos = sp.bos_id()
    train_s = encode_stream(sp, train_l, bos)
    val_s = encode_stream(sp, val_l, bos)
    test_s = encode_stream(sp, test_l, bos)
    print(f"tokens: train {len(train_s)} val {len(val_s)} test {len(test_s)}", flush=True)

    if args.init:
        from tinylm_model import load_checkpoint
        model = load_checkpoint(args.init)
        model.train()
        cfg = model.cfg
    else:
        cfg = Config(vocab_size=args.vocab)
        model = TinyLM(cfg)
    L = cfg.num_hidden_layers
    # The state-propagation loss's teacher: the starting model's last layer,
    # frozen.  Against the model's own (moving) last layer the cheapest way
    # to agree is to make the deep layers do less: perplexity 112 -> 159 in
    # 200 steps at weight 2.
    anchor = None
    if args.propagate > 0:
        if not args.init:
            sys.exit("--propagate needs --init (its last layer is the teacher)")
        anchor = load_checkpoint(args.init)
        anchor.requires_grad_(False)
    nparam = sum(p.numel() for p in model.parameters())
    print(f"parameters: {nparam}", flush=True)
    drop = layer_drop_rates(L, args.layer_dropout)
    print(f"layer dropout: {[round(p, 4) for p in drop]}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(args.seed)
    B, T = args.batch, args.seq
    nsub = max(1, int(args.sub * B * T))
    log = []
    t_train = time.time()
    for step in range(1, stop + 1):
        if step <= args.warmup:
            lr = args.lr * step / args.warmup
        else:
            pr = (step - args.warmup) / max(1, args.steps - args.warmup)
            lr = args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * pr)))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(train_s) - T - 1, (B,), generator=gen)
        x = torch.stack([torch.from_numpy(train_s[s:s + T + 1]) for s in starts.tolist()])
        inp, tgt = x[:, :-1], x[:, 1:].reshape(-1)
        sub = torch.randperm(B * T, generator=gen)[:nsub]
        w = exit_weights(L, args.exit_scale, step, args.steps, args.curriculum)
        losses = []
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp == "bf16"):
            hs = model.hidden_states(inp, drop, gen)
            final = model.logits(hs[-1].reshape(B * T, -1)).float()
            teacher = F.log_softmax(final[sub].detach(), -1) if args.distill > 0 else None
            for l, h in enumerate(hs):
                hf = h.reshape(B * T, -1)
                if l == L - 1:
                    losses.append(F.cross_entropy(final, tgt))
                elif w[l] > 0:
                    lg = model.logits(hf[sub]).float()
                    ce = F.cross_entropy(lg, tgt[sub])
                    if teacher is not None:
                        kl = F.kl_div(F.log_softmax(lg, -1), teacher, log_target=True,
                                      reduction="batchmean")
                        ce = (1 - args.distill) * ce + args.distill * kl
                    losses.append(ce)
                else:
                    losses.append(torch.zeros(()))
            loss = sum(wl * ll for wl, ll in zip(w, losses) if wl > 0)
            if args.propagate > 0:
                lo, hi = (float(v) for v in args.prop_thr.split(","))
                thr = lo + (hi - lo) * torch.rand((), generator=gen).item()
                npr = min(B, args.prop_seqs)
                hp = model.hidden_states(inp[:npr],
                                         exit_at=exit_rule(model, args.prop_first, thr))
                pred = model.logits(hp[-1].reshape(npr * T, -1)).float()
                with torch.no_grad():
                    clean = anchor.logits(anchor.hidden_states(inp[:npr])[-1]).float()
                    clean = clean.reshape(npr * T, -1)
                prop_kl = F.kl_div(F.log_softmax(pred, -1), F.log_softmax(clean, -1),
                                   log_target=True, reduction="batchmean")
                prop_agree = (pred.argmax(-1) == clean.argmax(-1)).float().mean().item()
                loss = loss + args.propagate * prop_kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        per = [round(v.item(), 4) for v in losses]
        if step % 10 == 0 or step == 1:
            el = time.time() - t_train
            extra = ""
            entry = {"step": step, "loss": loss.item(), "per_layer": per}
            if args.propagate > 0:
                extra = f" prop kl {prop_kl.item():.4f} agree {prop_agree:.4f}"
                entry.update(prop_kl=round(prop_kl.item(), 4), prop_agree=round(prop_agree, 4))
            print(f"step {step} lr {lr:.2e} loss {loss.item():.4f} per-layer {per}{extra} "
                  f"{el / step:.2f} s/step", flush=True)
            log.append(entry)
        if step % 50 == 0 or step == stop:
            save_checkpoint(model, out, args.dtype)
    train_time = time.time() - t_train

    result = {
        "command": " ".join(["/usr/bin/python3"] + sys.argv),
        "seed": args.seed, "steps_schedule": args.steps, "steps_done": stop, "batch": B,
        "seq": T, "lr": args.lr, "intermediate_loss_positions": args.sub,
        "recipe": "LayerSkip", "init": args.init, "distill": args.distill,
        "layer_dropout_max": args.layer_dropout,
        "layer_dropout": drop, "exit_scale": args.exit_scale,
        "curriculum_share": args.curriculum,
        "propagate": args.propagate, "prop_seqs": args.prop_seqs,
        "prop_first": args.prop_first, "prop_thr": args.prop_thr,
        "threads": args.threads, "amp": args.amp, "parameters": nparam, "dtype": args.dtype,
        "tokenizer_seconds": round(t_tok, 1), "train_seconds": round(train_time, 1),
        "log": log,
    }
    finish(result, out, sp, train_s, val_s, test_s, T, t0)


def finish(result, out, sp, train_s, val_s, test_s, T, t0):
    """Evaluate the saved (half precision) weights, as shipped; write the log."""
    from tinylm_model import load_checkpoint
    t_eval = time.time()
    shipped = load_checkpoint(out)
    ppl_val, acc_val, n_val, agree_val = evaluate(shipped, val_s, T, 8192)
    ppl_test, acc_test, n_test, agree_test = evaluate(shipped, test_s, T, 8192)
    V = shipped.cfg.vocab_size
    big_ppl_test, big_acc_test = bigram_eval(train_s, test_s[:n_test + 1], V)
    big_ppl_val, big_acc_val = bigram_eval(train_s, val_s[:n_val + 1], V)
    log = result.get("log", [])
    result.update({
        "tokens": {"train": int(len(train_s)), "val": int(len(val_s)), "test": int(len(test_s))},
        "final_train_loss_per_layer": log[-1]["per_layer"] if log else [],
        "val": {"tokens": n_val, "ppl_per_layer": ppl_val, "acc_per_layer": acc_val,
                "agree_with_last_per_layer": agree_val,
                "bigram_ppl": big_ppl_val, "bigram_acc": big_acc_val},
        "test": {"tokens": n_test, "ppl_per_layer": ppl_test, "acc_per_layer": acc_test,
                 "agree_with_last_per_layer": agree_test,
                 "bigram_ppl": big_ppl_test, "bigram_acc": big_acc_test},
        "eval_seconds": round(time.time() - t_eval, 1),
    })
    with open(os.path.join(out, "train_log.json"), "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(json.dumps({k: v for k, v in result.items() if k != "log"}, indent=1), flush=True)


def evaluate_only(args, out, train_l, val_l, test_l, t0):
    import re
    sp = spm.SentencePieceProcessor(model_file=os.path.join(out, "tokenizer.model"))
    bos = sp.bos_id()
    train_s = encode_stream(sp, train_l, bos)
    val_s = encode_stream(sp, val_l, bos)
    test_s = encode_stream(sp, test_l, bos)
    log, header = [], {}
    pat = re.compile(r"step (\d+) lr \S+ loss (\S+) per-layer \[([^\]]*)\] (\S+) s/step")
    with open(args.eval_only) as f:
        for line in f:
            m = pat.match(line)
            if m:
                log.append({"step": int(m.group(1)), "loss": float(m.group(2)),
                            "per_layer": [float(x) for x in m.group(3).split(",")],
                            "mean_s_per_step": float(m.group(4))})
            elif line.startswith("tokenizer trained in"):
                header["tokenizer_seconds"] = float(line.split()[3])
    result = dict(header)
    result.update({"eval_only": True, "train_log": os.path.basename(args.eval_only),
                   "log": log})
    if log:
        result["train_seconds"] = round(log[-1]["step"] * log[-1]["mean_s_per_step"], 1)
    finish(result, out, sp, train_s, val_s, test_s, args.seq, t0)


if __name__ == "__main__":
    main()
