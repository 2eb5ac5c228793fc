"""moba: MoBA (Mixture of Block Attention) and dense causal attention as PyTorch ops.

CUDA bf16 tensors run the project's kernels (sm_90a wgmma on Hopper, mma.sync on Ampere
and Ada); CPU float32/float64 tensors run the C++ reference. docs/python.md has the
details, docs/moba.md the exact semantics. The ops are also torch.ops.moba.<name>.

Shapes: q (N, Hq, D), k and v (N, Hkv, D) with Hkv dividing Hq (grouped-query attention,
K/V never repeated), packed sequences cu_seqlens int32 (B + 1) on q's device.
Non-contiguous inputs are made contiguous (a copy).
"""
from __future__ import annotations

import torch

from . import _check, _lib
from . import ops as _ops
from ._lib import MobaOpsError

__all__ = ["moba_attn_varlen", "flash_attn_varlen", "moba_gate", "moba_attn", "flash_attn",
           "wgmma_available", "clear_plan_cache", "build_info", "HAS_CUDA", "MobaOpsError"]
__version__ = "0.1.0"

HAS_CUDA = _lib.HAS_CUDA


def moba_attn_varlen(q, k, v, cu_seqlens, max_seqlen, moba_chunk_size, moba_topk, *,
                     softmax_scale=None, return_lse=False):
    """MoBA attention over packed sequences, MoonshotAI's moba_attn_varlen signature.

    q (N, Hq, D), k/v (N, Hkv, D), cu_seqlens int32 (B + 1). Each query attends to its
    current block of moba_chunk_size tokens causally and to the moba_topk - 1 past blocks
    of its sequence with the highest q . mean(k_block) (ties to the more recent block).
    Returns out (N, Hq, D) [, lse (N, Hq): natural log-sum-exp of the scaled scores, fp32
    on CUDA, q's dtype on the CPU, without gradient]. Differentiable w.r.t. q, k, v.
    """
    fn = "moba_attn_varlen"
    q, k, v = _check.check_qkv(fn, q, k, v)
    _check.check_cu(fn, q, cu_seqlens, max_seqlen)
    _check.check_moba(fn, q, moba_chunk_size, moba_topk)
    scale = _check.softmax_scale_of(fn, softmax_scale, q.shape[2])
    out, lse = _ops.moba_attn(q, k, v, cu_seqlens, max_seqlen, moba_chunk_size, moba_topk,
                              scale)
    return (out, lse) if return_lse else out


def flash_attn_varlen(q, k, v, cu_seqlens, max_seqlen, causal=True, softmax_scale=None,
                      return_lse=False):
    """Dense causal attention over packed sequences (FlashAttention's varlen names, one
    cu_seqlens for queries and keys). causal=False is not supported."""
    fn = "flash_attn_varlen"
    if causal is not True:
        raise ValueError(f"{fn}: causal={causal!r} is not supported (causal attention only)")
    q, k, v = _check.check_qkv(fn, q, k, v)
    _check.check_cu(fn, q, cu_seqlens, max_seqlen)
    scale = _check.softmax_scale_of(fn, softmax_scale, q.shape[2])
    out, lse = _ops.dense_attn(q, k, v, cu_seqlens, max_seqlen, scale)
    return (out, lse) if return_lse else out


def moba_gate(q, k, cu_seqlens, max_seqlen, moba_chunk_size, moba_topk):
    """MoBA's block selection, int32 (N, Hq, K): block ids local to each sequence,
    ascending, the current block last, padded with -1 (docs/moba.md). No gradient."""
    fn = "moba_gate"
    q, k, _ = _check.check_qkv(fn, q, k)
    _check.check_cu(fn, q, cu_seqlens, max_seqlen)
    _check.check_moba(fn, q, moba_chunk_size, moba_topk)
    return _ops.moba_gate_op(q.detach(), k.detach(), cu_seqlens, max_seqlen,
                             moba_chunk_size, moba_topk)


def _batched(fn, q, k, v):
    """(B, T, H, D) -> packed (B*T, H, D) with host cu_seqlens {0, T, ..., B*T}."""
    q = _check.tensor_arg(fn, "q", q, 4, "(B, T, Hq, D)")
    k = _check.tensor_arg(fn, "k", k, 4, "(B, T, Hkv, D)")
    v = _check.tensor_arg(fn, "v", v, 4, "(B, T, Hkv, D)")
    B, T = q.shape[0], q.shape[1]
    if B < 1 or T < 1:
        raise ValueError(f"{fn}: q must have B >= 1 and T >= 1, got shape {tuple(q.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.shape[0] != B or t.shape[1] != T:
            raise ValueError(f"{fn}: {name} has shape {tuple(t.shape)}; expected (B, T) = "
                             f"({B}, {T}) to match q {tuple(q.shape)}")
    pack = lambda t: t.reshape(B * T, t.shape[2], t.shape[3])
    # The offsets are known here: a host tensor spares the op a device-to-host copy.
    cu = torch.arange(0, (B + 1) * T, T, dtype=torch.int32)
    return pack(q), pack(k), pack(v), cu, B, T


def moba_attn(q, k, v, moba_chunk_size, moba_topk, *, softmax_scale=None):
    """MoBA attention for a batch of equal-length sequences: q (B, T, Hq, D), k/v
    (B, T, Hkv, D) -> (B, T, Hq, D)."""
    fn = "moba_attn"
    qp, kp, vp, cu, B, T = _batched(fn, q, k, v)
    qp, kp, vp = _check.check_qkv(fn, qp, kp, vp)
    _check.check_moba(fn, qp, moba_chunk_size, moba_topk)
    scale = _check.softmax_scale_of(fn, softmax_scale, qp.shape[2])
    out, _ = _ops.moba_attn(qp, kp, vp, cu, T, moba_chunk_size, moba_topk, scale)
    return out.view(B, T, out.shape[1], out.shape[2])


def flash_attn(q, k, v, causal=True, softmax_scale=None):
    """Dense causal attention for (B, T, H, D) batches -> (B, T, Hq, D)."""
    fn = "flash_attn"
    if causal is not True:
        raise ValueError(f"{fn}: causal={causal!r} is not supported (causal attention only)")
    qp, kp, vp, cu, B, T = _batched(fn, q, k, v)
    qp, kp, vp = _check.check_qkv(fn, qp, kp, vp)
    scale = _check.softmax_scale_of(fn, softmax_scale, qp.shape[2])
    out, _ = _ops.dense_attn(qp, kp, vp, cu, T, scale)
    return out.view(B, T, out.shape[1], out.shape[2])


def wgmma_available(head_dim: int = 128, device=None) -> bool:
    """Whether the sm_90a (wgmma) kernels run on `device` (default: the current CUDA
    device) for this head dim; False means the mma.sync kernels run."""
    if not HAS_CUDA or not torch.cuda.is_available():
        return False
    with torch.cuda.device(device if device is not None else torch.cuda.current_device()):
        return bool(_lib.lib.moba_cuda_wgmma_available(int(head_dim)))


def clear_plan_cache() -> int:
    """Frees the cached CUDA plans (their device scratch). Returns how many there were."""
    return int(_lib.lib.moba_cuda_clear_plans())


def build_info() -> str:
    return _lib.build_info()
