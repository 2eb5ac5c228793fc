#!/usr/bin/env python3
"""Issue 16's bars from one device call's JSON files, as a Markdown table: each bar, what was
measured, and whether it holds. Reads whatever of these it is given (each optional; a bar
whose file is missing says "not measured"):

  --d128 FILE    moba bench attention --peer ... at B 1, H 16, D 128, S 512, K 3, T 8K/32K/128K
                 (bench/perf_session.sh STEPS="peer d128": d128-TAG.json)
  --d64 FILE     the same at H 12, D 64 (d64-TAG.json)
  --chunk FILE   the same with --fwd-chunk C at D 128 (chunk-C-d128-TAG.json): MoBA's peak with
                 the chunked forward (repeatable)
  --long FILE    MoBA alone from 128K to 2M (long-d128-TAG.json, STEPS=long)
  --dense1m FILE MoBA and our dense forward at 1M (dense1m-TAG.json, STEPS=dense1m; --fwd-only)
  --train FILE   moba bench train --peer peer_train.json at 8K and 32K, full and MoBA

    scripts/issue16-bars.py --d128 d128-s23.json --d64 d64-s23.json --long long-d128-s23.json ...

The thresholds are the issue's (docs/kernel_notes.md quotes them)."""
import argparse
import json
import math


def rows_by_T(path):
    if not path:
        return None
    with open(path) as f:
        doc = json.load(f)
    return {r["T"]: r for r in doc["rows"]}


def fmt(x, d=3):
    return "-" if x is None else f"{x:.{d}f}"


class Table:
    def __init__(self):
        self.lines = ["| bar | measured | holds |", "|---|---|---|"]

    def add(self, bar, measured, ok):
        verdict = "not measured" if ok is None else ("**yes**" if ok else "no")
        self.lines.append(f"| {bar} | {measured} | {verdict} |")

    def text(self):
        return "\n".join(self.lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d128")
    ap.add_argument("--d64")
    ap.add_argument("--chunk", action="append", default=[])
    ap.add_argument("--long")
    ap.add_argument("--dense1m")
    ap.add_argument("--train")
    a = ap.parse_args()
    t = Table()

    d128 = rows_by_T(a.d128)
    for T, bar_ms in ((32768, 2.6), (131072, 11.0)):
        r = (d128 or {}).get(T)
        ms = r.get("moba_fwd_bwd_ms") if r else None
        t.add(f"MoBA fwd+bwd at {T // 1024}K, D 128 <= {bar_ms} ms", fmt(ms),
              None if ms is None else ms <= bar_ms)
        # Attended throughput against cuDNN dense's in the same call.
        peer = r.get("peer") if r else None
        if r and peer and peer.get("cudnn_fwd_bwd_ms") and r.get("dense_fwd_bwd_ms"):
            # cuDNN's TFLOP/s in the bench's own FLOP count: ours x our time / cuDNN's time.
            cudnn_tflops = r["dense_tflops_fwd_bwd"] * r["dense_fwd_bwd_ms"] / peer["cudnn_fwd_bwd_ms"]
            ours = r["moba_attended_tflops_fwd_bwd"]
            t.add(f"MoBA attended TFLOP/s at {T // 1024}K >= 85% of cuDNN dense's",
                  f"{ours:.0f} / {cudnn_tflops:.0f} = {ours / cudnn_tflops:.0%}",
                  ours >= 0.85 * cudnn_tflops)
        else:
            t.add(f"MoBA attended TFLOP/s at {T // 1024}K >= 85% of cuDNN dense's", "-", None)
    r = (d128 or {}).get(131072)
    share = r.get("gate_share_of_fwd") if r else None
    t.add("gate <= 10% of MoBA's forward at 128K", "-" if share is None else f"{share:.1%}",
          None if share is None else share <= 0.10)

    # Memory: the single pass, then each chunk size given.
    for label, rows in [("one pass", d128)] + [(f"--fwd-chunk file {i + 1}", rows_by_T(p))
                                               for i, p in enumerate(a.chunk)]:
        r = (rows or {}).get(32768)
        base = (d128 or {}).get(32768)
        if r and base and base.get("dense_peak_mib"):
            ratio = r["moba_peak_mib"] / base["dense_peak_mib"]
            chunk = r.get("fwd_chunk_tokens", 0)
            t.add(f"MoBA peak <= dense's + 10% at 32K ({label}, C {chunk})",
                  f"{r['moba_peak_mib']:.0f} / {base['dense_peak_mib']:.0f} MiB = {ratio:.3f}",
                  ratio <= 1.10)
        elif label == "one pass":
            t.add("MoBA peak <= dense's + 10% at 32K", "-", None)

    for name, rows in (("128", d128), ("64", rows_by_T(a.d64))):
        for T in (8192, 32768, 131072):
            r = (rows or {}).get(T)
            x = r.get("dense_vs_cudnn_fwd_bwd") if r else None
            t.add(f"our dense fwd+bwd >= 1.0x cuDNN at {T // 1024}K, D {name}",
                  "-" if x is None else f"{x:.2f}x", None if x is None else x >= 1.0)

    longr = rows_by_T(a.long)
    if longr:
        Ts = sorted(longr)
        worst = 0.0
        steps = []
        for T0, T1 in zip(Ts, Ts[1:]):
            grow = longr[T1]["moba_fwd_bwd_ms"] / longr[T0]["moba_fwd_bwd_ms"]
            allowed = (T1 * math.log(T1)) / (T0 * math.log(T0))
            steps.append(f"{T1 // 1024}K: {grow:.2f}x (T log T: {allowed:.2f}x)")
            worst = max(worst, grow / allowed)
        t.add("MoBA fwd+bwd growing no faster than T log T (128K..2M)", "; ".join(steps),
              worst <= 1.0)
    else:
        t.add("MoBA fwd+bwd growing no faster than T log T (128K..2M)", "-", None)

    r = (rows_by_T(a.dense1m) or {}).get(1048576)
    if r and r.get("speedup_fwd"):
        t.add("MoBA against our dense forward at 1M (reported)",
              f"{r['moba_fwd_ms']:.1f} vs {r['dense_fwd_ms']:.1f} ms: {r['speedup_fwd']:.1f}x", True)
    else:
        t.add("MoBA against our dense forward at 1M (reported)", "-", None)

    train = None
    if a.train:
        with open(a.train) as f:
            train = {(r["T"], r["attention"]): r for r in json.load(f)["rows"]}
    full8 = (train or {}).get((8192, "full"))
    full32 = (train or {}).get((32768, "full"))
    moba32 = (train or {}).get((32768, "moba"))
    t.add("trainer, full at 8K: MFU >= 45%", "-" if not full8 else f"{full8['mfu_peers']:.1%}",
          None if not full8 else full8["mfu_peers"] >= 0.45)
    vc = full8.get("vs_torch_compile") if full8 else None
    t.add("trainer, full at 8K: >= 1.25x torch.compile", "-" if vc is None else f"{vc:.2f}x",
          None if vc is None else vc >= 1.25)
    vc = full32.get("vs_torch_compile") if full32 else None
    t.add("trainer, full at 32K: >= 1.15x torch.compile", "-" if vc is None else f"{vc:.2f}x",
          None if vc is None else vc >= 1.15)
    x = (full32["ms_per_step"] / moba32["ms_per_step"]) if full32 and moba32 else None
    t.add("trainer, MoBA at 32K >= 4x our full attention", "-" if x is None else f"{x:.2f}x",
          None if x is None else x >= 4.0)
    print(t.text())


if __name__ == "__main__":
    main()
