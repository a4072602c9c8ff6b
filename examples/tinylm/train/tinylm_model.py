# SPDX-License-Identifier: MIT
"""The tinylm model in PyTorch: a Llama-architecture decoder with Hugging Face
tensor names, plus the checkpoint reader/writer (Hugging Face layout:
config.json, model.safetensors, tokenizer.model).

This is the training script's own module and the independent reference the
C runtime is checked against (examples/tinylm/test/verify_torch.py).  It is
written for clarity, not from the C code.
"""
import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Config:
    def __init__(self, **kw):
        self.vocab_size = kw.get("vocab_size", 8192)
        self.hidden_size = kw.get("hidden_size", 256)
        self.intermediate_size = kw.get("intermediate_size", 688)
        self.num_hidden_layers = kw.get("num_hidden_layers", 8)
        self.num_attention_heads = kw.get("num_attention_heads", 8)
        self.num_key_value_heads = kw.get("num_key_value_heads", 4)
        self.max_position_embeddings = kw.get("max_position_embeddings", 512)
        self.rms_norm_eps = kw.get("rms_norm_eps", 1e-5)
        self.rope_theta = kw.get("rope_theta", 10000.0)
        self.tie_word_embeddings = kw.get("tie_word_embeddings", True)
        self.bos_token_id = kw.get("bos_token_id", 1)
        self.eos_token_id = kw.get("eos_token_id", 2)

    def to_hf(self):
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "hidden_act": "silu",
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "torch_dtype": "float16",
        }


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight).to(x.dtype)


def rope_cos_sin(cfg, positions):
    hd = cfg.hidden_size // cfg.num_attention_heads
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    ang = positions.to(torch.float64)[:, None] * inv[None, :]
    ang = torch.cat([ang, ang], dim=-1)          # Hugging Face layout: halves
    return ang.cos().float(), ang.sin().float()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def apply_rope(x, cos, sin):
    # x: (..., T, hd); cos/sin: (T, hd)
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, nh, nkv = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
        self.nh, self.nkv, self.hd = nh, nkv, d // nh
        self.q_proj = nn.Linear(d, nh * self.hd, bias=False)
        self.k_proj = nn.Linear(d, nkv * self.hd, bias=False)
        self.v_proj = nn.Linear(d, nkv * self.hd, bias=False)
        self.o_proj = nn.Linear(nh * self.hd, d, bias=False)

    def kv(self, x, cos, sin):
        """K (after rotary) and V for normalised inputs x: (B, T, d)."""
        B, T, _ = x.shape
        k = self.k_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        return apply_rope(k, cos, sin), v

    def forward(self, x, cos, sin, xkv=None):
        """xkv: the normalised inputs K/V come from, if not x (state
        propagation: an exited position's K/V come from its exit state)."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.nh, self.hd).transpose(1, 2)
        q = apply_rope(q, cos, sin)
        k, v = self.kv(x if xkv is None else xkv, cos, sin)
        rep = self.nh // self.nkv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd)
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)
        att = att.masked_fill(mask, float("-inf")).softmax(-1)
        y = att @ v
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.nh * self.hd))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, kvin=None):
        hk = None if kvin is None else self.input_layernorm(kvin)
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, hk)
        return x + self.mlp(self.post_attention_layernorm(x))


class Inner(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([Layer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class TinyLM(nn.Module):
    """Attribute names give the Hugging Face tensor names (model.layers.0...)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.model = Inner(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def head_weight(self):
        return self.model.embed_tokens.weight if self.cfg.tie_word_embeddings \
            else self.lm_head.weight

    def logits(self, h):
        return F.linear(self.model.norm(h), self.head_weight())

    def hidden_states(self, ids, drop=None, gen=None, exit_at=None):
        """Raw hidden state after every layer: list of L tensors (B, T, d).

        drop: optional per-layer skip probabilities (layer dropout, training
        only): each sequence of the batch skips layer l with probability
        drop[l], its state passing through unchanged; only the kept
        sequences are computed.

        exit_at: optional callable (l, x) -> (B, T) bool tensor or None, the
        positions that exit after layer l.  Every later layer then takes
        such a position's K/V from its state after layer l (state
        propagation, as the C runtime does; layer dropout stops once a
        position has exited).  The list gets one more entry: each
        position's state at its exit (the last layer's if none)."""
        B, T = ids.shape
        cos, sin = rope_cos_sin(self.cfg, torch.arange(T))
        x = self.model.embed_tokens(ids)
        out = []
        done, xe = None, None           # exited positions, their exit states
        for l, layer in enumerate(self.model.layers):
            if done is not None:
                x = layer(x, cos, sin, torch.where(done[..., None], xe, x))
            elif drop is None or drop[l] <= 0.0:
                x = layer(x, cos, sin)
            else:
                keep = torch.rand(B, generator=gen) >= drop[l]
                if bool(keep.all()):
                    x = layer(x, cos, sin)
                elif bool(keep.any()):
                    idx = keep.nonzero().squeeze(1)
                    x = x.index_copy(0, idx, layer(x[idx], cos, sin))
            out.append(x)
            e = exit_at(l, x) if exit_at is not None and l < len(self.model.layers) - 1 else None
            if e is not None:
                new = e if done is None else e & ~done
                xe = torch.where(new[..., None], x, x if xe is None else xe)
                done = new if done is None else done | new
        if exit_at is not None:
            out.append(x if done is None else torch.where(done[..., None], xe, x))
        return out

    def forward(self, ids):
        return self.logits(self.hidden_states(ids)[-1])

    def skipped_kv(self, layer, h, position):
        """K/V that layer `layer` stores for a token at `position` whose input
        is taken to be h (d floats): state propagation of an early exit."""
        cos, sin = rope_cos_sin(self.cfg, torch.tensor([position]))
        blk = self.model.layers[layer]
        x = blk.input_layernorm(h.view(1, 1, -1))
        k, v = blk.self_attn.kv(x, cos, sin)
        return k.reshape(-1), v.reshape(-1)


# ---- safetensors ------------------------------------------------------------

_DT = {"F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (None, 2)}


def save_safetensors(path, tensors, dtype="F16"):
    """tensors: name -> torch tensor.  Written in sorted name order."""
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().float().contiguous()
        if dtype == "F16":
            b = t.numpy().astype(np.float16).tobytes()
        elif dtype == "BF16":
            b = t.to(torch.bfloat16).view(torch.int16).numpy().tobytes()
        else:
            b = t.numpy().astype(np.float32).tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape),
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        raw = data[base + a:base + b]
        if info["dtype"] == "BF16":
            u = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            arr = u.view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=_DT[info["dtype"]][0]).astype(np.float32)
        out[name] = torch.from_numpy(arr.copy()).view(*info["shape"])
    return out


def save_checkpoint(model, directory, dtype="F16"):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(model.cfg.to_hf(), f, indent=2)
        f.write("\n")
    sd = {k: v for k, v in model.state_dict().items()}
    save_safetensors(os.path.join(directory, "model.safetensors"), sd, dtype)


def load_checkpoint(directory):
    with open(os.path.join(directory, "config.json")) as f:
        hf = json.load(f)
    keys = ("vocab_size hidden_size intermediate_size num_hidden_layers "
            "num_attention_heads num_key_value_heads max_position_embeddings "
            "rms_norm_eps rope_theta tie_word_embeddings bos_token_id "
            "eos_token_id").split()
    cfg = Config(**{k: hf[k] for k in keys if k in hf})
    model = TinyLM(cfg)
    sd = load_safetensors(os.path.join(directory, "model.safetensors"))
    model.load_state_dict(sd, strict=True)
    model.eval()
    return model
