"""Times our ops against PyTorch's attention in one process, on one GPU.

    python -m moba.bench -T 8192 32768 131072 --heads 16 -D 128 -S 512 -K 3 --json bench.json
    python -m moba.bench ... --moba-bin build/src/cli/moba   # also `moba bench attention` (same call)

Per T: our MoBA op (moba.moba_attn_varlen, gate included) and our dense op
(moba.flash_attn_varlen), forward and forward+backward; PyTorch SDPA with the cuDNN and the
flash (FlashAttention-2) backends, dense causal; FlexAttention with the exact MoBA mask (the
selection of moba.moba_gate on the same inputs, so it computes the same function as our op;
the block mask is built outside the timed region). Median of --repeats runs after 3 warm-ups,
CUDA events, fresh random bf16 inputs per T (the method of PEERS.md and bench/peer_sdpa.py).
Ratios are peer ms / our ms (> 1: we are faster). It prints figures; it never passes or fails.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

import torch


def _time_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def _fwd_and_fwd_bwd(forward, inputs, dout, repeats):
    def fwd():
        with torch.no_grad():
            forward()

    def fwd_bwd():
        # autograd.grad returns dq, dk, dv without accumulating them into .grad (an extra
        # read-modify-write of every gradient per call that `moba bench attention` does not do).
        out = forward()
        torch.autograd.grad(out, inputs, dout)

    return _time_ms(fwd, repeats), _time_ms(fwd_bwd, repeats)


def _flex_moba(q, k, v, sel, S, dout, repeats):
    """FlexAttention with the exact MoBA mask of `sel` ((T, H, K) block ids)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    T, H, K = sel.shape
    nb = (T + S - 1) // S
    chosen = torch.zeros(H, T, nb + 1, dtype=torch.bool, device=q.device)  # column nb: padding
    idx = torch.where(sel >= 0, sel, nb).long().permute(1, 0, 2)  # (H, T, K)
    chosen.scatter_(2, idx, True)

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & chosen[h, q_idx, kv_idx // S]

    block_mask = create_block_mask(mask_mod, B=None, H=H, Q_LEN=T, KV_LEN=T, device=q.device,
                                   _compile=True)
    flex = torch.compile(flex_attention, dynamic=False)
    qt, kt, vt = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))  # (1, H, T, D) views
    do = dout.transpose(0, 1).unsqueeze(0)
    return _fwd_and_fwd_bwd(lambda: flex(qt, kt, vt, block_mask=block_mask), (q, k, v), do,
                            repeats)


def _sdpa(q, k, v, backend, dout, repeats):
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    qt, kt, vt = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
    do = dout.transpose(0, 1).unsqueeze(0)
    with sdpa_kernel(backend):
        return _fwd_and_fwd_bwd(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True),
                                (q, k, v), do, repeats)


def bench_one(T: int, H: int, Hkv: int, D: int, S: int, K: int, repeats: int, peers: list[str]):
    import moba
    from torch.nn.attention import SDPBackend

    gen = torch.Generator(device="cuda").manual_seed(T)
    def randn(h):
        return torch.randn(T, h, D, device="cuda", dtype=torch.bfloat16, generator=gen)
    q, k, v = randn(H).requires_grad_(), randn(Hkv).requires_grad_(), randn(Hkv).requires_grad_()
    dout = randn(H)
    cu = torch.tensor([0, T], dtype=torch.int32, device="cuda")
    row: dict = {"T": T}
    row["moba_fwd_ms"], row["moba_fwd_bwd_ms"] = _fwd_and_fwd_bwd(
        lambda: moba.moba_attn_varlen(q, k, v, cu, T, S, K), (q, k, v), dout, repeats)
    row["dense_fwd_ms"], row["dense_fwd_bwd_ms"] = _fwd_and_fwd_bwd(
        lambda: moba.flash_attn_varlen(q, k, v, cu, T), (q, k, v), dout, repeats)
    with torch.no_grad():
        sel = moba.moba_gate(q, k, cu, T, S, K)
        row["gate_ms"] = _time_ms(lambda: moba.moba_gate(q, k, cu, T, S, K), repeats)
        valid = (sel >= 0).sum().item()
    # Attended pairs over dense causal pairs: every selected past block is a full block of S
    # keys; the current block (one slot per query and head) adds positions t % S + 1.
    current = (torch.arange(T, device="cuda") % S + 1).sum().item() * H
    row["density"] = ((valid - T * H) * S + current) / (H * T * (T + 1) / 2)
    for name in peers:
        try:
            if name == "cudnn":
                f, fb = _sdpa(q, k, v, SDPBackend.CUDNN_ATTENTION, dout, repeats)
            elif name == "flash":
                f, fb = _sdpa(q, k, v, SDPBackend.FLASH_ATTENTION, dout, repeats)
            elif name == "flex":
                f, fb = _flex_moba(q, k, v, sel, S, dout, repeats)
            else:
                raise ValueError(f"unknown peer {name!r}")
            row[f"{name}_fwd_ms"], row[f"{name}_fwd_bwd_ms"] = f, fb
        except (RuntimeError, torch.OutOfMemoryError) as e:
            row[f"{name}_error"] = str(e).splitlines()[0][:200]
        torch.cuda.empty_cache()
    return row


def _cli_rows(moba_bin, a) -> dict:
    """`moba bench attention --device cuda` on the same shapes, in a subprocess after ours."""
    with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
        cmd = [moba_bin, "bench", "attention", "--device", "cuda", "-T", *map(str, a.seq_len),
               "--heads", str(a.heads), "--kv-heads", str(a.kv_heads or a.heads),
               "-D", str(a.head_dim), "-S", str(a.block_size), "-K", str(a.top_k),
               "--repeats", str(a.repeats), "--out", tmp.name]
        subprocess.run(cmd, check=True, stdout=sys.stderr)
        with open(tmp.name) as f:
            data = json.load(f)
    rows = data.get("rows", data if isinstance(data, list) else [])
    return {int(r["T"]): r for r in rows}


def _fmt(x):
    return "-" if x is None else (f"{x:.3f}" if x < 100 else f"{x:.1f}")


def _ratio(a, b):
    return "-" if a is None or b is None else f"{a / b:.2f}x"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m moba.bench", description=__doc__.splitlines()[0])
    ap.add_argument("-T", "--seq-len", type=int, nargs="+", default=[8192, 32768, 131072])
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=0, help="0: same as --heads")
    ap.add_argument("-D", "--head-dim", type=int, default=128)
    ap.add_argument("-S", "--block-size", type=int, default=512)
    ap.add_argument("-K", "--top-k", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--peers", default="cudnn,flash,flex", help="comma list of cudnn, flash, flex")
    ap.add_argument("--moba-bin", help="also run `moba bench attention` with this binary")
    ap.add_argument("--json", help="write every figure here")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        ap.error("no CUDA device: the benchmark times GPU kernels")
    peers = [p for p in a.peers.split(",") if p]
    rows = []
    for T in a.seq_len:
        row = bench_one(T, a.heads, a.kv_heads or a.heads, a.head_dim, a.block_size, a.top_k,
                        a.repeats, peers)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        torch.cuda.empty_cache()
    cli = _cli_rows(a.moba_bin, a) if a.moba_bin else {}
    for r in rows:
        c = cli.get(r["T"], {})
        for key in ("moba_fwd_bwd_ms", "moba_fwd_ms"):
            if key in c:
                r["cli_" + key] = c[key]
    head = (f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}: B=1 Hq={a.heads} "
            f"Hkv={a.kv_heads or a.heads} D={a.head_dim} S={a.block_size} K={a.top_k} bf16, "
            f"median of {a.repeats} after 3 warm-ups (CUDA events); ratios = peer ms / our MoBA ms")
    print(head)
    print()
    print("| T | MoBA op fwd / fwd+bwd ms | dense op fwd / fwd+bwd ms | gate ms | density "
          "| SDPA cuDNN fwd / fwd+bwd | SDPA flash fwd / fwd+bwd | Flex MoBA mask fwd / fwd+bwd "
          "| cuDNN / MoBA (fwd+bwd) | Flex / MoBA (fwd+bwd) | `moba bench` MoBA fwd+bwd | op / CLI |")
    print("|" + "---|" * 12)
    for r in rows:
        g = r.get
        print(f"| {r['T']} | {_fmt(g('moba_fwd_ms'))} / {_fmt(g('moba_fwd_bwd_ms'))} "
              f"| {_fmt(g('dense_fwd_ms'))} / {_fmt(g('dense_fwd_bwd_ms'))} | {_fmt(g('gate_ms'))} "
              f"| {g('density'):.3f} | {_fmt(g('cudnn_fwd_ms'))} / {_fmt(g('cudnn_fwd_bwd_ms'))} "
              f"| {_fmt(g('flash_fwd_ms'))} / {_fmt(g('flash_fwd_bwd_ms'))} "
              f"| {_fmt(g('flex_fwd_ms'))} / {_fmt(g('flex_fwd_bwd_ms'))} "
              f"| {_ratio(g('cudnn_fwd_bwd_ms'), g('moba_fwd_bwd_ms'))} "
              f"| {_ratio(g('flex_fwd_bwd_ms'), g('moba_fwd_bwd_ms'))} "
              f"| {_fmt(g('cli_moba_fwd_bwd_ms'))} "
              f"| {_ratio(g('moba_fwd_bwd_ms'), g('cli_moba_fwd_bwd_ms'))} |")
    errors = [f"T={r['T']} {k}: {v}" for r in rows for k, v in r.items() if k.endswith("_error")]
    for e in errors:
        print(f"\n{e}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                       "args": vars(a), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
