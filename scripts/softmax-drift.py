#!/usr/bin/env python3
"""Emulates, in numpy, the fp32 arithmetic of our online-softmax forward step
(src/attention/cuda/fwd_wgmma_step.cuh) on one query row over N keys, and prints the lse's
error against float64 (docs/kernel_notes.md, "v17"). Two rescales per key tile:
  fmaf   alpha = exp2(fma(m_old, c, -m_use))          (before v17: 2^residual while the max holds)
  exact  alpha = exp2(fl(m_old * c) - m_use)          (v17: exactly 1 while the max holds)
with c = scale * log2(e), m_use = fl(m_new * c), tiles of 128 keys, each row's sum kept as
four per-thread partials that add the thread's pairs of probabilities one pair at a time.
    scripts/softmax-drift.py [--keys 2097152] [--dim 128] [--seed 1]
Needs numpy (the .venv that scripts/setup.sh makes has it)."""
import argparse
import math

import numpy as np


def bf16(x):
    b = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    return b.astype(np.uint32).view(np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=2 * 1024 * 1024)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    n, d, bc = a.keys, a.dim, 128
    if n % bc:
        ap.error("--keys must be a multiple of 128")
    rng = np.random.default_rng(a.seed)
    q = bf16(rng.standard_normal(d).astype(np.float32)).astype(np.float64)
    s = np.empty(n, np.float64)
    step = 1 << 16
    for i in range(0, n, step):
        k = bf16(rng.standard_normal((min(step, n - i), d)).astype(np.float32))
        s[i:i + len(k)] = k.astype(np.float64) @ q
    scale = 1.0 / math.sqrt(d)
    sd = s * scale
    m = sd.max()
    ref = m + math.log(np.exp(sd - m).sum())
    s32 = s.astype(np.float32).reshape(-1, bc)  # the MMA's fp32 scores
    tile_max = s32.max(axis=1)
    c = np.float32(scale * math.log2(math.e))
    cols = [np.array([8 * i + 2 * t for i in range(bc // 8)]) for t in range(4)]
    print(f"one row over {n} keys, D {d}: lse (fp64) {ref:.6f}")
    for mode in ("fmaf", "exact"):
        row_max = np.float32(-np.inf)
        part = [np.float32(0)] * 4
        for j in range(len(s32)):
            m_new = max(row_max, tile_max[j])
            m_use = np.float32(m_new * c)
            if mode == "fmaf":  # one rounding of the exact m_old * c - m_use
                arg = np.float32(float(row_max) * float(c) - float(m_use))
            else:
                arg = np.float32(np.float32(row_max * c) - m_use)
            alpha = np.float32(2.0 ** float(arg))
            row_max = m_new
            p = np.exp2((s32[j].astype(np.float64) * float(c) - float(m_use)).astype(np.float32))
            for t in range(4):
                acc = np.float32(part[t] * alpha)
                for x in (p[cols[t]] + p[cols[t] + 1]).astype(np.float32):
                    acc = np.float32(acc + x)
                part[t] = acc
        l = np.float32(np.float32(part[0] + part[1]) + np.float32(part[2] + part[3]))
        lse = (float(row_max) * float(c) + math.log2(float(l))) * math.log(2)
        print(f"  {mode:5s} rescale: lse {lse:.6f}, error {lse - ref:+.3e} nats")


if __name__ == "__main__":
    main()
