#!/usr/bin/env python3
"""Peer timings for `moba bench decode`: PyTorch SDPA decoding one query token per sequence
against a bf16 KV cache of the same shapes (B, T, Hkv, D: the cache layout of
attention/cuda/decode_cuda.h, viewed as (B, Hkv, T, D)), with the flash and cuDNN backends
(torch.nn.attention.sdpa_kernel). Not causal: the one query is the last token and sees the
whole cache. GQA: `enable_gqa=True` first; where a backend refuses it, K and V are
`repeat_interleave`d to Hq heads outside the timed region (the `gqa` field says which was
timed), which needs Hq/Hkv times the cache's memory. Shapes that do not fit are skipped with a
note. Median of --repeats runs after --warmup, CUDA events. Prints the table of
`moba bench decode` (peer columns) and writes JSON that `moba bench decode --peer` reads.

  python3 bench/decode_peers.py -T 8192 32768 131072 524288 -B 1 16 --kv-heads 16 4 --json peers.json
"""
import argparse
import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def time_ms(fn, warmup, repeats):
    for _ in range(warmup):
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


def bench_backend(backend, q, k, v, hq, warmup, repeats):
    """(ms, gqa mode) or raises; k, v are (B, Hkv, T, D) views."""
    hkv = k.shape[1]
    with sdpa_kernel(backend):
        if hkv == hq:
            return time_ms(lambda: F.scaled_dot_product_attention(q, k, v), warmup, repeats), "none"
        try:
            fn = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)  # noqa: E731
            fn()
            torch.cuda.synchronize()
            return time_ms(fn, warmup, repeats), "enable_gqa"
        except RuntimeError:
            pass
        free, _ = torch.cuda.mem_get_info()
        need = 2 * k.numel() * k.element_size() * (hq // hkv)
        if need > 0.9 * free:
            raise RuntimeError("enable_gqa refused and repeat_interleave needs %.1f GiB" % (need / 2**30))
        kr = k.repeat_interleave(hq // hkv, dim=1)
        vr = v.repeat_interleave(hq // hkv, dim=1)
        try:
            return time_ms(lambda: F.scaled_dot_product_attention(q, kr, vr), warmup, repeats), "repeat"
        finally:
            del kr, vr
            torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-T", "--context", type=int, nargs="+", default=[8192, 32768, 131072, 524288])
    ap.add_argument("-B", "--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--kv-heads", type=int, nargs="+", default=[16, 4])
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("-D", "--head-dim", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--json", default="decode_peers.json")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("decode_peers.py: no CUDA device", file=sys.stderr)
        sys.exit(2)
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
    print("PyTorch %s SDPA decode on %s: one query token, Hq=%d D=%d bf16, median of %d after %d "
          "warm-ups (CUDA events)\n" % (torch.__version__, torch.cuda.get_device_name(), a.heads,
                                       a.head_dim, a.repeats, a.warmup))
    print("| Hkv | B | context | flash ms | flash GB/s (GQA) | cuDNN ms | cuDNN GB/s (GQA) |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for hkv in a.kv_heads:
        for B in a.batch:
            for T in a.context:
                row = {"kv_heads": hkv, "batch": B, "context": T}
                kv_bytes = 2 * B * T * hkv * a.head_dim * 2
                free, _ = torch.cuda.mem_get_info()
                if kv_bytes + (1 << 30) > free:
                    row["skipped"] = "cache of %.1f GiB does not fit (%.1f GiB free)" % (
                        kv_bytes / 2**30, free / 2**30)
                    rows.append(row)
                    print("| %d | %d | %d | skipped: %s | | | |" % (hkv, B, T, row["skipped"]), flush=True)
                    continue
                gen = torch.Generator(device="cuda").manual_seed(T + 7 * B + hkv)
                # The cache layout (B, T, Hkv, D), viewed as (B, Hkv, T, D) for SDPA.
                k = torch.randn((B, T, hkv, a.head_dim), device="cuda", dtype=torch.bfloat16,
                                generator=gen).transpose(1, 2)
                v = torch.randn((B, T, hkv, a.head_dim), device="cuda", dtype=torch.bfloat16,
                                generator=gen).transpose(1, 2)
                q = torch.randn((B, 1, a.heads, a.head_dim), device="cuda", dtype=torch.bfloat16,
                                generator=gen).transpose(1, 2)
                cells = []
                for name, be in backends.items():
                    try:
                        ms, gqa = bench_backend(be, q, k, v, a.heads, a.warmup, a.repeats)
                        row[name + "_ms"] = ms
                        row[name + "_gbps"] = kv_bytes / (ms * 1e6)
                        row[name + "_gqa"] = gqa
                        cells += ["%.4f" % ms, "%.0f (%s)" % (kv_bytes / (ms * 1e6), gqa)]
                    except RuntimeError as e:
                        msg = str(e).splitlines()[0][:120]
                        row[name + "_error"] = msg
                        cells += ["-", "error: " + msg]
                        torch.cuda.synchronize()
                print("| %d | %d | %d | %s |" % (hkv, B, T, " | ".join(cells)), flush=True)
                rows.append(row)
                del k, v, q
                torch.cuda.empty_cache()
    with open(a.json, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                   "heads": a.heads, "head_dim": a.head_dim, "repeats": a.repeats,
                   "warmup": a.warmup, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
