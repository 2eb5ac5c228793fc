#!/usr/bin/env python3
"""PyTorch reference of our model's training step, timed beside `moba train` on the GPU.

The model is the one of docs/trainer.md (src/model): a Llama-style decoder, pre-norm blocks
of RMSNorm (weight only, eps 1e-5), attention with RoPE ("rotate half", theta 10000) and
optional GQA, RMSNorm, SwiGLU MLP; final RMSNorm; LM head (untied by default). The step is
what the project's training peer measures (results/trainer_gpu/README.md): batch 1 of random tokens, bf16 autocast
over fp32 master weights, SDPA causal attention, mean cross-entropy, fused AdamW (lr 1e-4,
weight decay 0.1 on matrices, betas 0.9/0.95); a step = zero_grad + forward + backward +
optimizer.step; mean step time over --steps steps after --warmup steps, CUDA events.
Eager and torch.compile (of the model, loss included) run one after the other in the same
process, each on a fresh model.

  python3 bench/peer_train.py -T 8192 32768 --json peer_train.json      # the bar's model
  python3 bench/peer_train.py --device cpu --layers 2 --width 64 --heads 2 -T 128 \\
      --steps 2 --warmup 1 --mode eager                                  # smoke test

MFU, two conventions (both against --peak-tflops, 989 = H100 SXM dense bf16):
  peers:    6 x matmul parameters + 6*L*C*T FLOPs per token (PEERS.md's convention)
  executed: 6 x matmul parameters + 3.5*4*pairs*D*Hq*L / tokens, pairs = T(T+1)/2 per
            sequence and head (causal): our `flops_exec` for full attention (docs/trainer.md)
Matmul parameters = every linear weight per token, the LM head included (tied or not), not
the embedding gather: `ParamCounts::matmul` of src/model/config.cpp.
"""
import argparse
import contextlib
import gc
import json
import math
import platform
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

BACKENDS = ("default", "flash", "cudnn", "efficient", "math")


# ---------------------------------------------------------------- the model (src/model)

def rope_tables(T, D, theta, dtype):
    """cos, sin of pos * theta^(-2i/D), pos < T, i < D/2: (T, D/2) each, computed in float64
    as src/model/rope.h does, then stored in `dtype`."""
    half = D // 2
    freq = theta ** (-2.0 * torch.arange(half, dtype=torch.float64) / D)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * freq[None, :]
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x, cos, sin):
    """x (B, T, H, D); "rotate half": element i < D/2 pairs with i + D/2 (src/model/rope.h).
    Computed in the tables' precision (fp32), returned in x's dtype."""
    half = x.shape[-1] // 2
    c, s = cos[None, :, None, :], sin[None, :, None, :]  # (1, T, 1, D/2)
    a, b = x[..., :half].to(c.dtype), x[..., half:].to(c.dtype)
    return torch.cat((a * c - b * s, b * c + a * s), dim=-1).to(x.dtype)


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * w over the last axis (src/model/rmsnorm.h)."""

    def __init__(self, C, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(C))

    def forward(self, x):
        if hasattr(F, "rms_norm"):
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        r = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return (x.float() * r).to(x.dtype) * self.weight


class Attention(nn.Module):
    def __init__(self, C, Hq, Hkv, D, gqa):
        super().__init__()
        self.Hq, self.Hkv, self.D, self.gqa = Hq, Hkv, D, gqa
        self.wq = nn.Linear(C, Hq * D, bias=False)   # (Hq*D, C), as our (out, in)
        self.wk = nn.Linear(C, Hkv * D, bias=False)
        self.wv = nn.Linear(C, Hkv * D, bias=False)
        self.wo = nn.Linear(Hq * D, C, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = apply_rope(self.wq(x).view(B, T, self.Hq, self.D), cos, sin)
        k = apply_rope(self.wk(x).view(B, T, self.Hkv, self.D), cos, sin)
        v = self.wv(x).view(B, T, self.Hkv, self.D)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if self.Hkv == self.Hq:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif self.gqa == "native":
            # Query head h reads kv head h // (Hq/Hkv), as src/attention/layout.h.
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:  # "repeat": the same mapping, k and v copied per query head
            g = self.Hq // self.Hkv
            o = F.scaled_dot_product_attention(q, k.repeat_interleave(g, dim=1),
                                               v.repeat_interleave(g, dim=1), is_causal=True)
        return self.wo(o.transpose(1, 2).reshape(B, T, self.Hq * self.D))


class MLP(nn.Module):
    def __init__(self, C, Fh):
        super().__init__()
        self.w_gate = nn.Linear(C, Fh, bias=False)
        self.w_up = nn.Linear(C, Fh, bias=False)
        self.w_down = nn.Linear(Fh, C, bias=False)

    def forward(self, x):
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.attn = Attention(cfg.width, cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.gqa)
        self.mlp_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.mlp = MLP(cfg.width, cfg.mlp_hidden)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class Model(nn.Module):
    """Parameter names are ours (src/model/params.cpp) + ".weight": embed.weight,
    layers.0.attn_norm.weight, layers.0.attn.wq.weight, ..., final_norm.weight,
    lm_head.weight (untied only)."""

    def __init__(self, cfg, rope_dtype=torch.float32):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.width)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.final_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.lm_head = None if cfg.tied else nn.Linear(cfg.width, cfg.vocab, bias=False)
        cos, sin = rope_tables(cfg.max_T, cfg.head_dim, cfg.rope_theta, rope_dtype)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters(cfg.init_std)

    @torch.no_grad()
    def reset_parameters(self, std):
        # As src/model/params.cpp: N(0, std); W_o and W_down N(0, std / sqrt(2L)); norms 1.
        std_out = std / math.sqrt(2.0 * self.cfg.layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(("attn.wo.weight", "mlp.w_down.weight")):
                p.normal_(0.0, std_out)
            else:
                p.normal_(0.0, std)

    def forward(self, inputs, targets, reduction="mean"):
        """inputs, targets (B, T) -> mean cross-entropy (or (B, T) losses: reduction="none")."""
        T = inputs.shape[1]
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.embed(inputs)  # (B, T, C), the residual stream in the master dtype
        for layer in self.layers:
            x = layer(x, cos, sin)
        x = self.final_norm(x)
        w = self.embed.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(x, w)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction=reduction)
        return loss if reduction != "none" else loss.view(targets.shape)


def param_counts(cfg):
    """src/model/config.cpp param_counts, same formula:
    non_embedding = L * (C*Hq*D + 2*C*Hkv*D + Hq*D*C + 3*C*F + 2C) + C  (norms included;
                    not the token embedding, not an untied LM head)
    total         = non_embedding + V*C (embedding) + V*C (untied LM head only)
    matmul        = L * (attention + MLP weights) + V*C (the LM head, tied or not)."""
    C, V, D, Fh = cfg.width, cfg.vocab, cfg.head_dim, cfg.mlp_hidden
    attn = C * cfg.heads * D + 2 * C * cfg.kv_heads * D + cfg.heads * D * C
    mlp = 3 * C * Fh
    non_emb = cfg.layers * (attn + mlp + 2 * C) + C
    return {"non_embedding": non_emb,
            "total": non_emb + V * C + (0 if cfg.tied else V * C),
            "matmul": cfg.layers * (attn + mlp) + V * C}


def module_param_counts(model):
    """The same three numbers counted on the nn.Module (a tied head is one tensor)."""
    total = sum(p.numel() for p in model.parameters())
    emb = model.embed.weight.numel()
    head = 0 if model.lm_head is None else model.lm_head.weight.numel()
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return {"non_embedding": total - emb - head, "total": total,
            "matmul": linear - head + emb}  # + the LM head's V*C, counted once either way


def flops_per_token(cfg, T):
    """(peers, executed) FLOPs per training token, forward + backward."""
    mm = 6.0 * param_counts(cfg)["matmul"]
    peers = mm + 6.0 * cfg.layers * cfg.width * T
    pairs = T * (T + 1) / 2.0  # causal (query, key) pairs per sequence and head
    executed = mm + 3.5 * 4.0 * pairs * cfg.head_dim * cfg.heads * cfg.layers / T
    return peers, executed


# ---------------------------------------------------------------- timing

def make_optimizer(model, a, device):
    # Decay on matrices only, as our trainer (docs/trainer.md): not norms, not the embedding
    # (nor so a tied head).
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() == 2 and not name.startswith("embed") else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": a.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kw = dict(lr=a.lr, betas=(a.beta1, a.beta2), eps=1e-8)
    try:
        return torch.optim.AdamW(groups, fused=True, **kw), True
    except (RuntimeError, ValueError):
        if device.type == "cuda":
            raise
        return torch.optim.AdamW(groups, foreach=False, **kw), False  # CPU without fused


def backend_context(name):
    if name == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel({"flash": SDPBackend.FLASH_ATTENTION,
                        "cudnn": SDPBackend.CUDNN_ATTENTION,
                        "efficient": SDPBackend.EFFICIENT_ATTENTION,
                        "math": SDPBackend.MATH}[name])


def run_one(cfg, a, T, mode, steps, device):
    """Times one (T, mode); returns the figures. Raises on errors (OOM included)."""
    torch.manual_seed(a.seed)
    model = Model(cfg).to(device)
    opt, fused = make_optimizer(model, a, device)
    fwd = model
    if mode == "compile":
        fwd = torch.compile(model, mode=None if a.compile_mode == "default" else a.compile_mode)
    gen = torch.Generator(device=device).manual_seed(a.seed + T)
    tokens = torch.randint(0, cfg.vocab, (a.batch, T + 1), device=device, generator=gen)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]  # one random batch, every step
    cuda = device.type == "cuda"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            loss = fwd(inputs, targets)
        loss.backward()
        opt.step()
        return loss

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with backend_context(a.sdpa_backend):
        t0 = time.perf_counter()
        for _ in range(a.warmup):
            step()
        sync()
        warmup_s = time.perf_counter() - t0
        if cuda:
            events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
            events[0].record()
            for i in range(steps):
                loss = step()
                events[i + 1].record()
            events[-1].synchronize()
            times = [events[i].elapsed_time(events[i + 1]) for i in range(steps)]
        else:
            times = []
            for _ in range(steps):
                t = time.perf_counter()
                loss = step()
                times.append((time.perf_counter() - t) * 1e3)
    ms = sum(times) / len(times)
    peak = torch.cuda.max_memory_allocated(device) if cuda else None
    return {"ms_per_step": ms, "ms_min": min(times), "ms_max": max(times),
            "warmup_s": warmup_s, "final_loss": float(loss.item()), "fused_adamw": fused,
            "peak_memory_bytes": peak}


def free_memory(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    if hasattr(torch, "_dynamo"):
        torch._dynamo.reset()  # a fresh compile for each model and T


def is_oom(e):
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


# ---------------------------------------------------------------- output

def fmt_int(x):
    return f"{x:,.0f}"


def pct(x):
    return f"{100 * x:.1f}%" if x >= 0.01 else f"{100 * x:.2g}%"  # CPU smoke tests: tiny


def table(records):
    lines = ["| T | mode | ms/step | tokens/s | MFU (peers) | MFU (executed) | peak memory |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        head = f"| {r['T']:,} | {r['mode']} |"
        if r["status"] != "ok":
            err = r["error"] if len(r["error"]) <= 80 else r["error"][:77] + "..."
            lines.append(f"{head} {r['status']}: {err} | | | | |")
            continue
        mem = "-" if r["peak_memory_gb"] is None else f"{r['peak_memory_gb']:.1f} GB"
        lines.append(f"{head} {r['ms_per_step']:.2f} | {fmt_int(r['tokens_per_s'])} | "
                     f"{pct(r['mfu_peers'])} | {pct(r['mfu_executed'])} | {mem} |")
    return "\n".join(lines)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("-T", "--seq-len", type=int, nargs="+", default=[8192],
                    help="sequence lengths, each timed")
    ap.add_argument("--mode", choices=("eager", "compile", "both"), default="both")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--kv-heads", type=int, default=None, help="default: --heads")
    ap.add_argument("--head-dim", type=int, default=None, help="default: width / heads")
    ap.add_argument("--mlp-hidden", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--tied", action="store_true", help="LM head = token embedding")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps (default 20, 10 when T >= 32768)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--sdpa-backend", choices=BACKENDS, default="default",
                    help="SDPA backend (torch.nn.attention.sdpa_kernel); default: PyTorch's choice")
    ap.add_argument("--gqa", choices=("native", "repeat"), default="native",
                    help="when kv-heads < heads: SDPA enable_gqa, or k/v repeat_interleave")
    ap.add_argument("--compile-mode", default="default",
                    help="torch.compile mode (default, max-autotune, ...)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.95)
    ap.add_argument("--norm-eps", type=float, default=1e-5)
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    ap.add_argument("--init-std", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="dense bf16 peak for MFU (H100 SXM: 989)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: a smoke test only (bf16 autocast on the CPU)")
    ap.add_argument("--json", default=None, help="write the records here")
    a = ap.parse_args(argv)
    a.kv_heads = a.kv_heads or a.heads
    if a.head_dim is None:
        if a.width % a.heads:
            ap.error(f"--width {a.width} is not a multiple of --heads {a.heads}; give --head-dim")
        a.head_dim = a.width // a.heads
    for name in ("layers", "width", "heads", "kv_heads", "mlp_hidden", "batch", "head_dim"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.vocab < 2:
        ap.error(f"--vocab must be >= 2, got {a.vocab}")
    if a.heads % a.kv_heads:
        ap.error(f"--heads {a.heads} is not a multiple of --kv-heads {a.kv_heads}")
    if a.head_dim % 2:
        ap.error(f"--head-dim must be even (RoPE rotates pairs), got {a.head_dim}")
    if min(a.seq_len) < 1 or a.warmup < 0 or (a.steps is not None and a.steps < 1):
        ap.error("-T and --steps must be >= 1, --warmup >= 0")
    a.max_T = max(a.seq_len)
    return a


def main(argv=None):
    a = parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        print(f"peer_train.py: error: CUDA is not available (torch {torch.__version__}, "
              f"CUDA build {torch.version.cuda}); use --device cpu for a smoke test",
              file=sys.stderr)
        return 2
    device = torch.device(a.device)
    device_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"CPU ({platform.processor() or platform.machine()}, "
                        f"{torch.get_num_threads()} threads)")
    cfg = a  # the model reads its sizes from the parsed options
    pc = param_counts(cfg)
    with torch.device("meta"):  # count on a weightless model
        mc = module_param_counts(Model(cfg))
    assert mc == pc, f"module parameter counts {mc} differ from the formula {pc}"
    print(f"torch {torch.__version__} on {device_name}")
    print(f"model: L={a.layers} C={a.width} Hq={a.heads} Hkv={a.kv_heads} D={a.head_dim} "
          f"F={a.mlp_hidden} V={a.vocab} {'tied' if a.tied else 'untied'} head; "
          f"batch {a.batch}; SDPA backend {a.sdpa_backend}")
    print(f"parameters: {pc['non_embedding']:,} non-embedding, {pc['total']:,} total, "
          f"{pc['matmul']:,} in matmuls per token (src/model/config.cpp param_counts)",
          flush=True)

    modes = ["eager", "compile"] if a.mode == "both" else [a.mode]
    records = []
    for T in a.seq_len:
        steps = a.steps or (10 if T >= 32768 else 20)
        for mode in modes:
            rec = {"T": T, "mode": mode, "batch": a.batch, "layers": a.layers, "width": a.width,
                   "heads": a.heads, "kv_heads": a.kv_heads, "head_dim": a.head_dim,
                   "mlp_hidden": a.mlp_hidden, "vocab": a.vocab, "tied": a.tied,
                   "sdpa_backend": a.sdpa_backend, "gqa": a.gqa,
                   "compile_mode": a.compile_mode if mode == "compile" else None,
                   "steps": steps, "warmup": a.warmup, "lr": a.lr,
                   "weight_decay": a.weight_decay, "betas": [a.beta1, a.beta2], "eps": 1e-8,
                   "norm_eps": a.norm_eps, "rope_theta": a.rope_theta, "init_std": a.init_std,
                   "seed": a.seed, "precision": "bf16 autocast, fp32 master weights",
                   "params": pc, "peak_tflops": a.peak_tflops,
                   "torch": torch.__version__, "device": device_name}
            free_memory(device)
            error = None
            try:
                rec.update(run_one(cfg, a, T, mode, steps, device))
                rec["status"] = "ok"
            except Exception as e:  # noqa: BLE001 - a size or a backend may fail; go on
                error = ("oom", "out of memory") if is_oom(e) else \
                    ("error", f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}")
            if error:
                rec["status"], rec["error"] = error
            free_memory(device)
            if rec["status"] == "ok":
                tok_s = a.batch * T / (rec["ms_per_step"] * 1e-3)
                fp, fe = flops_per_token(cfg, T)
                peak = a.peak_tflops * 1e12
                rec.update({"tokens_per_s": tok_s, "flops_per_token_peers": fp,
                            "flops_per_token_executed": fe, "mfu_peers": fp * tok_s / peak,
                            "mfu_executed": fe * tok_s / peak,
                            "peak_memory_gb": None if rec["peak_memory_bytes"] is None
                            else rec["peak_memory_bytes"] / 1e9})
                print(f"T={T} {mode}: {rec['ms_per_step']:.2f} ms/step, "
                      f"{fmt_int(tok_s)} tokens/s, MFU {pct(rec['mfu_peers'])} (peers) "
                      f"{pct(rec['mfu_executed'])} (executed), loss "
                      f"{rec['final_loss']:.4f}, warm-up {rec['warmup_s']:.1f} s", flush=True)
            else:
                print(f"T={T} {mode}: {rec['status']}: {rec['error']}", flush=True)
            records.append(rec)

    print()
    print(table(records))
    print("\nMFU (peers) = (6 x matmul params + 6*L*C*T) x tokens/s / peak; MFU (executed) = "
          "(6 x matmul params + 14*D*Hq*L*(T+1)/2) x tokens/s / peak; "
          f"peak {a.peak_tflops:g} TFLOP/s; memory = torch.cuda.max_memory_allocated, GB = 1e9 B")
    for T in a.seq_len:
        comp = [r for r in records if r["T"] == T and r["mode"] == "compile" and r["status"] == "ok"]
        if comp:
            print(f"bar for moba at T = {T:,}: MFU (peers) >= 30% and tokens/s >= 0.8 x "
                  f"torch.compile = {fmt_int(0.8 * comp[0]['tokens_per_s'])}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(records, f, indent=2)
        print(f"wrote {a.json}")
    return 0 if any(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
