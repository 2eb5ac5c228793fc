#!/usr/bin/env python3
"""Numeric cross-check: the PyTorch model of bench/peer_train.py computes the same function
as our model (src/model). On the CPU, for small configurations:

  1. `moba train` trains a few steps on synthetic:assoc_recall with full attention and
     validates at the end; metrics.jsonl keeps the validation loss (mean over every position
     of the validation windows) and its buckets, checkpoint/model.safetensors the weights
     that produced it.
  2. This script rebuilds the same validation windows (src/train/synthetic.cpp: splitmix64
     and std::mt19937_64, reimplemented here), loads the checkpoint into peer_train.Model
     (tensor names = ours + ".weight"), evaluates in float64 and compares the loss and the
     bucket losses. Our figures are float32; they agree to 1e-8 here, and the check passes
     under --tol (1e-5).
  3. Controls show that the check can fail: the same weights with an interleaved RoPE
     (pairs 2i, 2i+1), and with the kv heads swapped (a wrong GQA mapping), must miss.

Two configurations: untied head with GQA (Hkv < Hq), and tied head with head_dim != C/Hq.

  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release && ninja -C build moba
  python3 bench/peer_check.py --moba build/src/cli/moba

Needs torch (the CPU wheel is enough); exit 0 when every configuration agrees, 1 if not.
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_train  # noqa: E402

M64 = (1 << 64) - 1


class MT19937_64:
    """std::mt19937_64 (C++11 [rand.predef]), seeded as std::mt19937_64(seed)."""

    def __init__(self, seed):
        mt = [seed & M64]
        for i in range(1, 312):
            mt.append((6364136223846793005 * (mt[-1] ^ (mt[-1] >> 62)) + i) & M64)
        self.mt, self.i = mt, 312

    def __call__(self):
        if self.i >= 312:
            mt = self.mt
            for i in range(312):
                x = (mt[i] & 0xFFFFFFFF80000000) | (mt[(i + 1) % 312] & 0x7FFFFFFF)
                mt[i] = mt[(i + 156) % 312] ^ (x >> 1) ^ (0xB5026F5AA96619E9 if x & 1 else 0)
            self.i = 0
        x = self.mt[self.i]
        self.i += 1
        x ^= (x >> 29) & 0x5555555555555555
        x ^= (x << 17) & 0x71D67FFFEDA60000
        x ^= (x << 37) & 0xFFF7EEE000000000
        x ^= x >> 43
        return x & M64


def mix(x):
    """splitmix64 of src/train/synthetic.cpp."""
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def recall_window(V, T, seed, stream):
    """AssocRecallSource::window(stream): T+1 tokens."""
    n = 0
    while 2 * (n + 1) + (n + 1) ** 2 < V:
        n += 1
    gen = MT19937_64(mix(seed ^ mix(stream)))
    uniform = lambda k: gen() % k  # noqa: E731
    first_filler = 2 * n + n * n
    L = T + 1
    context = L // 2
    w = [0] * L
    for p in range(context):
        w[p] = first_filler + uniform(V - first_filler)
    pos = list(range(context))
    value = [0] * n
    for k in range(n):
        j = k + uniform(context - k)
        pos[k], pos[j] = pos[j], pos[k]
        value[k] = uniform(n)
        w[pos[k]] = 2 * n + k * n + value[k]
    for p in range(context, L, 2):
        k = uniform(n)
        w[p] = k
        if p + 1 < L:
            w[p + 1] = n + value[k]
    return w


def read_safetensors(path):
    """F32 safetensors as written by src/train/safetensors.cpp -> {name: tensor}."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        assert h["dtype"] == "F32", f"{name}: {h['dtype']}"
        b, e = h["data_offsets"]
        out[name] = torch.frombuffer(bytearray(data[b:e]), dtype=torch.float32).view(h["shape"])
    return out


CONFIGS = {
    # untied head, GQA (4 query heads on 2 kv heads), F given
    "untied-gqa": dict(vocab=64, width=48, layers=2, heads=4, kv_heads=2, head_dim=12,
                       mlp_hidden=80, tied=False, T=64),
    # tied head, head_dim (16) != width / heads (24)
    "tied-hd16": dict(vocab=48, width=48, layers=2, heads=2, kv_heads=2, head_dim=16,
                      mlp_hidden=96, tied=True, T=48),
}
SEED, WINDOWS, BUCKET = 3, 6, 16


def toml_for(name, c, steps):
    return f"""name = "peer-check-{name}"
data = "synthetic:assoc_recall"
[model]
vocab_size = {c['vocab']}
width = {c['width']}
layers = {c['layers']}
heads = {c['heads']}
kv_heads = {c['kv_heads']}
head_dim = {c['head_dim']}
mlp_hidden = {c['mlp_hidden']}
seq_len = {c['T']}
tied_embeddings = {'true' if c['tied'] else 'false'}
init_std = 0.1
[attention]
kind = "full"
[train]
batch_size = 4
steps = {steps}
lr = 3e-3
seed = {SEED}
[eval]
windows = {WINDOWS}
batch_size = 4
bucket_size = {BUCKET}
[log]
every = {steps}
"""


def torch_losses(c, params, tokens, rope=None):
    """Per-position losses (W, T) of the PyTorch model in float64 with our weights."""
    cfg = types.SimpleNamespace(
        vocab=c["vocab"], width=c["width"], layers=c["layers"], heads=c["heads"],
        kv_heads=c["kv_heads"], head_dim=c["head_dim"], mlp_hidden=c["mlp_hidden"],
        tied=c["tied"], norm_eps=1e-5, rope_theta=10000.0, init_std=0.02, max_T=c["T"],
        gqa="native")
    model = peer_train.Model(cfg, rope_dtype=torch.float64).double()
    state = {k + ".weight": v.double() for k, v in params.items()}
    model.load_state_dict(state, strict=True)
    saved = peer_train.apply_rope
    if rope is not None:
        peer_train.apply_rope = rope
    try:
        with torch.no_grad():
            return model(tokens[:, :-1], tokens[:, 1:], reduction="none")
    finally:
        peer_train.apply_rope = saved


def rope_interleaved(x, cos, sin):
    """The other RoPE convention (GPT-J, Meta's Llama): pairs (2i, 2i+1). A control."""
    a, b = x[..., 0::2], x[..., 1::2]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack((a * c - b * s, b * c + a * s), dim=-1).flatten(-2)


def summary(losses):
    T = losses.shape[1]
    pos = losses.mean(0)
    buckets = [pos[i:i + BUCKET].mean().item() for i in range(0, T, BUCKET)]
    return losses.mean().item(), buckets


def check(name, c, moba, workdir, steps, tol):
    run = os.path.join(workdir, name)
    cfg_path = os.path.join(workdir, name + ".toml")
    with open(cfg_path, "w") as f:
        f.write(toml_for(name, c, steps))
    p = subprocess.run([moba, "train", "--config", cfg_path, "--out", run],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if p.returncode != 0:
        sys.exit(f"peer_check.py: error: `moba train` failed:\n{p.stdout}{p.stderr}")
    val = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    val = [r for r in val if r["kind"] == "val"][-1]
    params = read_safetensors(os.path.join(run, "checkpoint", "model.safetensors"))

    # Parameter counts: the checkpoint (our layout) against peer_train's formula.
    cfg = types.SimpleNamespace(vocab=c["vocab"], width=c["width"], layers=c["layers"],
                                heads=c["heads"], kv_heads=c["kv_heads"],
                                head_dim=c["head_dim"], mlp_hidden=c["mlp_hidden"],
                                tied=c["tied"])
    pc = peer_train.param_counts(cfg)
    stored = sum(t.numel() for t in params.values())
    emb = params["embed"].numel() + (0 if c["tied"] else params["lm_head"].numel())
    counts_ok = stored == pc["total"] and stored - emb == pc["non_embedding"]

    tokens = torch.tensor([recall_window(c["vocab"], c["T"], SEED, (1 << 62) + i)
                           for i in range(WINDOWS)], dtype=torch.long)
    loss, buckets = summary(torch_losses(c, params, tokens))
    diff = max([abs(loss - val["loss"])] +
               [abs(a - b) for a, b in zip(buckets, val["bucket_losses"])])
    ok = diff <= tol and counts_ok and len(buckets) == len(val["bucket_losses"])
    print(f"{name}: moba val loss {val['loss']:.6f}, PyTorch {loss:.6f}, max |diff| "
          f"(loss and {len(buckets)} buckets) {diff:.1e} -> {'agree' if ok else 'DIFFER'}; "
          f"parameters {stored:,} stored, {pc['total']:,} by the formula "
          f"({'same' if counts_ok else 'DIFFERENT'})")
    # Controls: each must move the loss well beyond the tolerance.
    controls = {"interleaved RoPE": torch_losses(c, params, tokens, rope=rope_interleaved)}
    if c["kv_heads"] >= 2:
        swapped = dict(params)
        for key in ("wk", "wv"):
            for l in range(c["layers"]):
                n = f"layers.{l}.attn.{key}"
                w = params[n].view(c["kv_heads"], c["head_dim"], c["width"])
                swapped[n] = w.roll(1, dims=0).reshape(params[n].shape)
        controls["kv heads rolled (wrong head map)"] = torch_losses(c, swapped, tokens)
    for what, losses in controls.items():
        l, _ = summary(losses)
        caught = abs(l - val["loss"]) > 10 * tol
        ok = ok and caught
        print(f"  control, {what}: loss {l:.6f} (|diff| {abs(l - val['loss']):.1e}) -> "
              f"{'differs, as it must' if caught else 'NOT DETECTED'}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moba", default="build/src/cli/moba", help="the moba executable")
    ap.add_argument("--steps", type=int, default=30, help="training steps before validation")
    ap.add_argument("--tol", type=float, default=1e-5, help="max |loss difference|")
    ap.add_argument("--workdir", default=None, help="keep the runs here (default: a temp dir)")
    a = ap.parse_args()
    if not os.access(a.moba, os.X_OK):
        print(f"peer_check.py: error: {a.moba} is not an executable; build moba first "
              "(ninja -C build moba) or pass --moba", file=sys.stderr)
        return 2
    gen = MT19937_64(5489)  # the standard's check: the 10000th draw of the default seed
    for _ in range(9999):
        gen()
    assert gen() == 9981545732273789042, "MT19937_64 is wrong"
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = a.workdir or tmp
        os.makedirs(workdir, exist_ok=True)
        ok = all([check(n, c, a.moba, workdir, a.steps, a.tol) for n, c in CONFIGS.items()])
    print("PyTorch reference and moba agree" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
