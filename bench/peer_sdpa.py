#!/usr/bin/env python3
"""Peer timings for `moba bench attention --device cuda`: PyTorch SDPA, causal, bf16, on the
same shapes, with the cuDNN and the flash (FlashAttention-2) backends. Median of --repeats
runs after 3 warm-ups, CUDA events, as the project's peer figures are measured (results/attention/README.md). Writes JSON that
`moba bench attention --peer FILE` reads.

  python3 bench/peer_sdpa.py -T 8192 32768 131072 --heads 16 -D 128 --json peer.json
"""
import argparse
import json

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def time_ms(fn, repeats):
    for _ in range(3):
        fn()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def bench(backend, B, H, T, D, repeats):
    gen = torch.Generator(device="cuda").manual_seed(T)
    shape = (B, H, T, D)
    q, k, v, do = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen)
                   for _ in range(4))
    for x in (q, k, v):
        x.requires_grad_(True)
    with sdpa_kernel(backend):
        def fwd():
            with torch.no_grad():
                F.scaled_dot_product_attention(q, k, v, is_causal=True)

        def fwd_bwd():
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            o.backward(do)
        f = time_ms(fwd, repeats)
        fb = time_ms(fwd_bwd, repeats)
    return f, fb


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-T", "--seq-len", type=int, nargs="+", default=[8192, 32768, 131072])
    ap.add_argument("-B", "--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("-D", "--head-dim", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--json", default="peer_sdpa.json")
    a = ap.parse_args()
    rows = []
    for T in a.seq_len:
        row = {"T": T}
        for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION),
                              ("flash", SDPBackend.FLASH_ATTENTION)):
            try:
                f, fb = bench(backend, a.batch, a.heads, T, a.head_dim, a.repeats)
                row[f"{name}_fwd_ms"], row[f"{name}_fwd_bwd_ms"] = f, fb
            except RuntimeError as e:  # a backend may refuse a shape
                row[f"{name}_error"] = str(e).splitlines()[0]
            torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "batch": a.batch, "heads": a.heads, "head_dim": a.head_dim, "rows": rows}
    with open(a.json, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
