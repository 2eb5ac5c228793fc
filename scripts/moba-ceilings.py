#!/usr/bin/env python3
"""Issue 16's ceilings: each MoBA phase of `moba bench attention` against its floor.

    scripts/moba-ceilings.py BENCH.json [--T T ...] [--peak-tflops X] [--hbm-tbps Y]
                             [--md FILE] [--json FILE]

For every row (T) of a `moba bench attention --device cuda` JSON (with its `phases_ms`, as
results/attention/v17/d128-s23.json), prints a Markdown table: per phase of MoBA's forward
and backward, the measured time, the work the phase cannot avoid (FLOPs of its matrix
products; bytes it must move through HBM at least once), and its floor

    floor = max(FLOPs / peak FLOP/s, bytes / HBM bandwidth)

with the limiter named ("compute" or "memory") and measured / floor. Defaults: the H200's
nominal dense bf16 rate, 989 TFLOP/s, and HBM bandwidth, 4.8 TB/s; a second FLOP floor uses
the rate cuDNN's dense attention reached in the same call (the row's `peer`, when the file
has one): the "85% of cuDNN's TFLOP/s" of issue 16's bars is a statement about that one.

The work model (docs/moba.md's semantics; B sequences of T tokens, Hq query and Hkv kv heads,
head dim D, block S, top-k K; nb = T // S full blocks, r = T % S):
  pairs        current block: Hq B (nb S (S+1)/2 + r (r+1)/2); all MoBA pairs: density x
               dense causal pairs (the bench's own density, measured on its selection);
               past = all - current
  gate_means   reads K (B T Hkv D 2 bytes), writes the means' three bf16 terms
  gate_scores  3 products (the means' hi, mid, lo terms) of 2 D FLOPs per score, one score
               per (query, head, earlier full block): Hq B (S nb (nb-1)/2 + r nb) scores;
               reads q, writes the selection (int32, K per row)
  gather_index reads the selection twice (count, fill), writes the entries (int32)
  fwd_past     4 D FLOPs per past pair; reads each entry's q row (K-1 per row), writes the
               fp32 partial output and lse of each entry
  fwd_current  4 D FLOPs per current-block pair; reads q, k, v, the partials and lse,
               writes out (bf16) and lse
  bwd_delta    reads o, dO; writes delta and zeroes the fp32 dq accumulator
  bwd_moba     2.5 x the forward's FLOPs (4 D per pair forward: S = Q K^T and O = P V;
               backward: S, dP, dV, dK, dQ = 10 D); reads q, dO, k, v once, writes dk, dv,
               and the fp32 dq accumulator once (its atomics are L2 traffic, not counted)
  bwd_dq_convert reads the fp32 accumulator, writes dq (bf16)
Bytes are lower bounds (each tensor once); FLOPs are the products the algorithm needs, so a
phase at 1.0x of its floor runs at the hardware's nominal rate.
"""
import argparse
import json
import math
import sys

PHASES = [  # (phase key in phases_ms, name in the table, forward?)
    ("moba.gate_means", "gate: block means", True),
    ("moba.gate_scores_topk", "gate: scores + top-k", True),
    ("moba.gather_index", "gather index", True),
    ("moba.fwd_past_blocks_wgmma", "fwd: past blocks", True),
    ("moba.fwd_past_blocks", "fwd: past blocks", True),
    ("moba.fwd_current_block_merge_wgmma", "fwd: current block + merge", True),
    ("moba.fwd_current_block_merge", "fwd: current block + merge", True),
    ("moba.bwd_delta_zero_dq", "bwd: delta, zero dq", False),
    ("moba.bwd_moba_wgmma", "bwd: MoBA kernel", False),
    ("moba.bwd_moba", "bwd: MoBA kernel", False),
    ("moba.bwd_dq_convert", "bwd: dq convert", False),
]


def die(msg):
    print(f"moba-ceilings: {msg}", file=sys.stderr)
    sys.exit(1)


def work(shape, T, density):
    """FLOPs and bytes per phase key for one row."""
    B, Hq, Hkv, D, S, K = (shape[k] for k in ("batch", "heads", "kv_heads", "head_dim",
                                             "block_size", "top_k"))
    N = B * T
    nb, r = T // S, T % S
    dense_pairs = Hq * B * T * (T + 1) / 2
    pairs = density * dense_pairs
    cur = Hq * B * (nb * S * (S + 1) / 2 + r * (r + 1) / 2)
    past = max(0.0, pairs - cur)
    scores = Hq * B * (S * nb * (nb - 1) / 2 + r * nb)
    kp = K - 1
    q = N * Hq * D * 2  # bytes of q (and of o, dO, dq in bf16)
    kv = N * Hkv * D * 2
    sel = N * Hq * K * 4
    partials = N * Hq * kp * (D + 1) * 4
    w = {
        "moba.gate_means": (0.0, kv + B * nb * Hkv * 3 * D * 2),
        "moba.gate_scores_topk": (3 * 2 * D * scores, q + sel),
        "moba.gather_index": (0.0, 2 * sel + N * Hq * kp * 4),
        "moba.fwd_past_blocks_wgmma": (4 * D * past, N * Hq * kp * D * 2 + partials),
        "moba.fwd_current_block_merge_wgmma": (4 * D * cur, q + 2 * kv + partials + sel + q + N * Hq * 4),
        "moba.bwd_delta_zero_dq": (0.0, 2 * q + N * Hq * 4 + 2 * q),
        "moba.bwd_moba_wgmma": (10 * D * pairs, 2 * q + 2 * kv + 2 * kv + 2 * q),
        "moba.bwd_dq_convert": (0.0, 2 * q + q),
    }
    w["moba.fwd_past_blocks"] = w["moba.fwd_past_blocks_wgmma"]
    w["moba.fwd_current_block_merge"] = w["moba.fwd_current_block_merge_wgmma"]
    w["moba.bwd_moba"] = w["moba.bwd_moba_wgmma"]
    return w, {"pairs": pairs, "current_pairs": cur, "past_pairs": past, "scores": scores}


def analyse(doc, row, peak, bw):
    shape = doc
    T = row["T"]
    phases = row.get("phases_ms")
    if not phases:
        die(f"row T = {T} has no phases_ms (run the bench without --skip-moba)")
    w, counts = work(shape, T, row["density"])
    peer_rate = None
    peer = row.get("peer") or {}
    if peer.get("cudnn_fwd_bwd_ms"):
        D, Hq, B = shape["head_dim"], shape["heads"], shape["batch"]
        dense_flops = 3.5 * 4 * D * Hq * B * T * (T + 1) / 2
        peer_rate = dense_flops / (peer["cudnn_fwd_bwd_ms"] * 1e-3)
    out = []
    for key, name, fwd in PHASES:
        if key not in phases:
            continue
        flops, byts = w[key]
        ms = phases[key]
        tc, tm = flops / peak * 1e3, byts / bw * 1e3
        floor = max(tc, tm)
        tpeer = flops / peer_rate * 1e3 if peer_rate else None
        out.append({
            "phase": name, "key": key, "forward": fwd, "ms": ms, "gflop": flops / 1e9,
            "mb": byts / 1e6, "floor_ms": floor, "limiter": "compute" if tc >= tm else "memory",
            "x_floor": ms / floor if floor > 0 else math.inf,
            "floor_cudnn_rate_ms": max(tpeer, tm) if tpeer is not None else None,
        })
    return out, counts, peer_rate


def table(doc, rows_out, peak, bw):
    D, Hq, S, K = doc["head_dim"], doc["heads"], doc["block_size"], doc["top_k"]
    lines = [f"Floors at {peak / 1e12:.0f} TFLOP/s (bf16, dense) and {bw / 1e12:.1f} TB/s; "
             f"floor = max(FLOPs / rate, bytes / bandwidth); x floor = measured / floor. "
             f"D {D}, Hq {Hq}, S {S}, K {K} (scripts/moba-ceilings.py: the work model).", ""]
    for T, (out, counts, peer_rate) in rows_out:
        peer_txt = (f"; at cuDNN's rate in this call ({peer_rate / 1e12:.0f} TFLOP/s)"
                    if peer_rate else "")
        lines.append(f"T {T}: {counts['pairs'] / 1e9:.3f}G attended pairs "
                     f"({counts['current_pairs'] / 1e9:.3f}G in current blocks), "
                     f"{counts['scores'] / 1e9:.3f}G gate scores{peer_txt}")
        lines.append("")
        head = "| phase | ms | GFLOP | MB | floor ms | limiter | x floor |"
        sep = "|---|---|---|---|---|---|---|"
        if peer_rate:
            head += " floor at cuDNN's rate |"
            sep += "---|"
        lines += [head, sep]
        tot = {"fwd": [0.0, 0.0, 0.0], "bwd": [0.0, 0.0, 0.0]}
        for p in out:
            cell = (f"| {p['phase']} | {p['ms']:.3f} | {p['gflop']:.1f} | {p['mb']:.0f} | "
                    f"{p['floor_ms']:.3f} | {p['limiter']} | {p['x_floor']:.2f} |")
            if peer_rate:
                cell += f" {p['floor_cudnn_rate_ms']:.3f} |"
            lines.append(cell)
            t = tot["fwd" if p["forward"] else "bwd"]
            t[0] += p["ms"]
            t[1] += p["floor_ms"]
            t[2] += p["floor_cudnn_rate_ms"] or 0.0
        for name, keys in (("forward (sum of phases)", ["fwd"]), ("backward", ["bwd"]),
                           ("forward + backward", ["fwd", "bwd"])):
            ms = sum(tot[k][0] for k in keys)
            fl = sum(tot[k][1] for k in keys)
            fp = sum(tot[k][2] for k in keys)
            cell = f"| **{name}** | {ms:.3f} | | | {fl:.3f} | | {ms / fl:.2f} |"
            if peer_rate:
                cell += f" {fp:.3f} |"
            lines.append(cell)
        lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bench", help="a moba bench attention JSON with phases_ms")
    ap.add_argument("--T", type=int, nargs="*", help="only these rows")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--hbm-tbps", type=float, default=4.8)
    ap.add_argument("--md")
    ap.add_argument("--json")
    a = ap.parse_args()
    try:
        with open(a.bench) as f:
            doc = json.load(f)
    except OSError as e:
        die(f"cannot read {a.bench}: {e.strerror}")
    except json.JSONDecodeError as e:
        die(f"{a.bench} is not JSON: {e}")
    for k in ("batch", "heads", "kv_heads", "head_dim", "block_size", "top_k", "rows"):
        if k not in doc:
            die(f"{a.bench}: no '{k}' (not a moba bench attention JSON?)")
    if a.peak_tflops <= 0 or a.hbm_tbps <= 0:
        die("--peak-tflops and --hbm-tbps must be > 0")
    peak, bw = a.peak_tflops * 1e12, a.hbm_tbps * 1e12
    rows = [r for r in doc["rows"] if not a.T or r["T"] in a.T]
    if not rows:
        die(f"{a.bench}: no row with T in {a.T}")
    res = [(r["T"], analyse(doc, r, peak, bw)) for r in rows]
    text = table(doc, res, peak, bw)
    print(text)
    if a.md:
        with open(a.md, "w") as f:
            f.write(text + "\n")
    if a.json:
        with open(a.json, "w") as f:
            json.dump([{"T": T, "phases": out, "counts": c, "cudnn_tflops": pr and pr / 1e12}
                       for T, (out, c, pr) in res], f, indent=1)


if __name__ == "__main__":
    main()
