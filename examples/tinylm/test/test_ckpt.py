#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""The runtime's checkpoint reader must refuse corrupt, truncated and
mismatched checkpoint directories with a message naming the file and the
tensor (exit status 1, never a crash), and must load the other layouts a
published checkpoint uses (fp32 in place, bf16, sharded with an index).

    python3 examples/tinylm/test/test_ckpt.py [--model DIR] [--bin PATH]

Needs only the standard library; the fp32/bf16/shard cases use numpy when
it is there.
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))

try:
    import numpy as np
except ImportError:
    np = None


def read_st(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def write_st(path, header, payload):
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + payload)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "examples/tinylm/model"))
    ap.add_argument("--bin", default=os.path.join(ROOT, "examples/tinylm/tinylm"))
    args = ap.parse_args()
    passed = failed = 0
    tmp = tempfile.mkdtemp(prefix="tinylm_ckpt_")
    st_name = "model.safetensors"
    header, payload = read_st(os.path.join(args.model, st_name))
    victim = "model.layers.1.mlp.up_proj.weight"
    assert victim in header, "the test expects a Llama checkpoint with >= 2 layers"

    def fresh(name):
        d = os.path.join(tmp, name)
        os.makedirs(d)
        for f in ("config.json", "tokenizer.model"):
            shutil.copy(os.path.join(args.model, f), d)
        return d

    def run(d, *extra):
        return subprocess.run([args.bin, "inspect", "--model", d] + list(extra),
                              capture_output=True, text=True)

    def expect_fail(name, d, *needles):
        nonlocal passed, failed
        r = run(d)
        msg = r.stderr.strip()
        ok = r.returncode == 1 and all(n in msg for n in needles)
        why = f"exit {r.returncode}: {msg or r.stdout.strip()}"
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {why}")
        if ok:
            passed += 1
        else:
            failed += 1

    def expect_ok(name, d, *needles):
        nonlocal passed, failed
        r = run(d)
        ok = r.returncode == 0 and all(n in r.stdout for n in needles)
        print(f"{'ok  ' if ok else 'FAIL'} {name}: exit {r.returncode}: "
              f"{(r.stdout + r.stderr).strip()}")
        if ok:
            passed += 1
        else:
            failed += 1

    # As shipped.
    d = fresh("ok")
    write_st(os.path.join(d, st_name), header, payload)
    expect_ok("shipped layout loads", d, "8 layers" if "model.layers.7.mlp.up_proj.weight"
              in header else "layers")

    # Truncated: the last tensors' data is cut off.
    d = fresh("truncated")
    write_st(os.path.join(d, st_name), header, payload[:len(payload) // 2])
    expect_fail("truncated file", d, st_name, "tensor model.", "truncated")

    d = fresh("tiny")
    with open(os.path.join(d, st_name), "wb") as f:
        f.write(b"\x10\x00\x00")
    expect_fail("3-byte file", d, st_name, "truncated")

    d = fresh("empty")
    open(os.path.join(d, st_name), "wb").close()
    expect_fail("empty file", d, st_name, "truncated")

    # Header length larger than the file.
    d = fresh("badlen")
    with open(os.path.join(d, st_name), "wb") as f:
        f.write(struct.pack("<Q", 1 << 40) + b"{}")
    expect_fail("bad header length", d, st_name, "bad header length")

    # Header length pointing inside the JSON: not parseable.
    d = fresh("cutjson")
    h = json.dumps(header).encode()
    with open(os.path.join(d, st_name), "wb") as f:
        f.write(struct.pack("<Q", len(h) // 2) + h + payload)
    expect_fail("header length cuts the JSON", d, st_name, "JSON")

    # Wrong dtype.
    d = fresh("dtype")
    h2 = json.loads(json.dumps(header))
    h2[victim]["dtype"] = "I16"
    write_st(os.path.join(d, st_name), h2, payload)
    expect_fail("unsupported dtype", d, st_name, victim, "I16")

    # Missing tensor.
    d = fresh("missing")
    h2 = json.loads(json.dumps(header))
    h2[victim.replace("up_proj", "up_prok")] = h2.pop(victim)
    write_st(os.path.join(d, st_name), h2, payload)
    expect_fail("missing tensor", d, st_name, "missing tensor " + victim)

    # Shape mismatch with config.json (same number of elements).
    d = fresh("shape")
    h2 = json.loads(json.dumps(header))
    h2[victim]["shape"] = list(reversed(h2[victim]["shape"]))
    write_st(os.path.join(d, st_name), h2, payload)
    expect_fail("shape mismatch", d, st_name, victim, "config.json implies")

    # Shape that does not match the tensor's byte count.
    d = fresh("bytes")
    h2 = json.loads(json.dumps(header))
    h2[victim]["shape"][0] -= 1
    write_st(os.path.join(d, st_name), h2, payload)
    expect_fail("shape vs data bytes", d, st_name, victim, "data bytes")

    # Offsets past the end of the data.
    d = fresh("offsets")
    h2 = json.loads(json.dumps(header))
    a, b = h2[victim]["data_offsets"]
    h2[victim]["data_offsets"] = [a + len(payload), b + len(payload)]
    write_st(os.path.join(d, st_name), h2, payload)
    expect_fail("offsets outside the data", d, st_name, victim, "outside")

    # config.json that does not match the weights.
    d = fresh("config")
    write_st(os.path.join(d, st_name), header, payload)
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    cfg["num_hidden_layers"] += 1
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    expect_fail("config with one layer too many", d, st_name,
                f"missing tensor model.layers.{cfg['num_hidden_layers'] - 1}.")

    d = fresh("config2")
    write_st(os.path.join(d, st_name), header, payload)
    cfg["num_hidden_layers"] -= 1
    cfg["hidden_size"] = 128
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    expect_fail("config with another hidden size", d, st_name,
                "model.embed_tokens.weight", "config.json implies")

    d = fresh("config3")
    write_st(os.path.join(d, st_name), header, payload)
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write("{\"hidden_size\": 256,")
    expect_fail("config.json not JSON", d, "config.json")

    # A checkpoint with only tokenizer.json.
    d = fresh("tokjson")
    write_st(os.path.join(d, st_name), header, payload)
    os.remove(os.path.join(d, "tokenizer.model"))
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        f.write("{}")
    expect_fail("tokenizer.json only", d, "only tokenizer.json")

    # A sharded index naming a shard that is not there.
    d = fresh("shardmissing")
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": {k: "model-00001-of-00002.safetensors"
                                  for k in header if k != "__metadata__"}}, f)
    expect_fail("index names a missing shard", d, "model-00001-of-00002.safetensors")

    if np is not None:
        names = [k for k in header if k != "__metadata__"]

        def tensor(name):
            info = header[name]
            a, b = info["data_offsets"]
            dt = {"F16": np.float16, "F32": np.float32}[info["dtype"]]
            return np.frombuffer(payload[a:b], dtype=dt).astype(np.float32)

        def pack(dtype, subset):
            hdr, blobs, off = {}, [], 0
            for name in subset:
                x = tensor(name)
                if dtype == "BF16":
                    u = x.view(np.uint32)
                    raw = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16).tobytes()
                elif dtype == "F32":
                    raw = x.tobytes()
                else:
                    raw = x.astype(np.float16).tobytes()
                hdr[name] = {"dtype": dtype, "shape": header[name]["shape"],
                             "data_offsets": [off, off + len(raw)]}
                blobs.append(raw)
                off += len(raw)
            return hdr, b"".join(blobs)

        d = fresh("f32")
        write_st(os.path.join(d, st_name), *pack("F32", names))
        expect_ok("fp32 checkpoint, used in place", d, "0 floats converted")

        d = fresh("bf16")
        write_st(os.path.join(d, st_name), *pack("BF16", names))
        expect_ok("bf16 checkpoint", d, "floats converted")

        d = fresh("sharded")
        half = len(names) // 2
        wm = {}
        for i, part in enumerate((names[:half], names[half:])):
            fn = f"model-{i + 1:05d}-of-00002.safetensors"
            write_st(os.path.join(d, fn), *pack("F16", part))
            wm.update({k: fn for k in part})
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": wm}, f)
        expect_ok("sharded checkpoint", d, "2 file(s)")
        # Same logits as the single file.
        outs = []
        for dd in (os.path.join(tmp, "ok"), d, os.path.join(tmp, "f32")):
            o = os.path.join(dd, "dump.json")
            subprocess.run([args.bin, "verify", "--model", dd, "--out", o, "--gen", "2"],
                           check=True, capture_output=True)
            with open(o) as f:
                outs.append(json.load(f)["logits"])
        same = outs[0] == outs[1] == outs[2]
        print(f"{'ok  ' if same else 'FAIL'} fp16, sharded and fp32 checkpoints give "
              f"identical logits")
        passed, failed = passed + same, failed + (not same)
    else:
        print("fp32/bf16/shard cases skipped: numpy not available")

    shutil.rmtree(tmp)
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
